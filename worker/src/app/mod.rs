//! USE CASES: wiring the functional core (`domain`) to the shell
//! (`adapters`). The batch pipeline (used by the consumers and by `import`),
//! the one retry policy, the clock, the runtime of `las-worker run`, its
//! background jobs and its relays (e-mail outbox, sync-event outbox).

pub mod clock;
pub mod consumers;
pub mod event_relay;
pub mod jobs;
pub mod mail_relay;
pub mod pipeline;
pub mod retry;
pub mod runtime;
pub mod settings;
