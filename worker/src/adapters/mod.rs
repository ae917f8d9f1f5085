//! THE IMPERATIVE SHELL: one module per outside system. Adapters do IO and
//! translate; they decide no rule (`crate::domain` does) and never use
//! `crate::app` or `crate::cli`.

pub mod amqp;
pub mod db;
pub mod faultpoint;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod telemetry;
