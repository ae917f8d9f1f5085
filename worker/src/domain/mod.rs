//! THE FUNCTIONAL CORE. Every decision of the import, as pure functions of
//! (state, message, school settings, today): no sqlx, lapin, reqwest or
//! tokio, no clock, no random ids, no IO. `make lint` checks it
//! (`scripts/check-layers.sh`).
//!
//! * [`model`]: the vocabulary (rule ids, decisions, profiles, settings);
//! * [`message`]: reading a message body (parse, validate, reject);
//! * [`rules`]: one file per rule of `RULES.md`, with its unit tests;
//! * [`batch`]: planning a batch (pre-checks, de-duplication, version order,
//!   what changed, which sync events);
//! * [`outcome`]: what happened to each message and what a batch emits.

pub mod batch;
pub mod message;
pub mod model;
pub mod outcome;
pub mod rules;
