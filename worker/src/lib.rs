//! las-worker: keeps school-parent portals in sync with the schools' LAS
//! (ParnasSys, ESIS). Functional core (`rules`, `inbound`), imperative shell
//! (`bus`, `store`, `http`, `metrics`), glued by `pipeline`.

pub mod bus;
pub mod config;
pub mod events;
pub mod faultpoint;
pub mod http;
pub mod inbound;
pub mod mail;
pub mod metrics;
pub mod ops;
pub mod pipeline;
pub mod rules;
pub mod store;
pub mod suggestions;
pub mod telemetry;
