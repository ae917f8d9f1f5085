//! las-worker: keeps school-parent portals in sync with the schools' LAS
//! (ParnasSys, ESIS). `ARCHITECTURE.md` is the map:
//!
//! * [`domain`]: the functional core, every decision as a pure function;
//! * [`adapters`]: the imperative shell (PostgreSQL, RabbitMQ, mail, HTTP, metrics);
//! * [`app`]: use cases wiring the two (pipeline, runtime, jobs, relays);
//! * [`cli`]: the operator surface, one file per command.
//!
//! Dependencies point one way: `domain` <- `adapters` <- `app` <- `cli` <- `main`.

pub mod adapters;
pub mod app;
pub mod cli;
pub mod domain;
