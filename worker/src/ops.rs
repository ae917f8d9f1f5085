//! Operator tools for support desks and ops teams (issue #9):
//!
//! * [`import`]: apply a file of LAS messages without a broker, or dry-run it;
//! * [`explain`]: the decisions taken for one profile, from the change journal,
//!   and the journal's retention ([`prune_journal`]);
//! * [`dlq`]: inspect, replay and purge dead letters;
//! * [`school`]: link a school (R6) and show its link settings.
//!
//! They print ids, LAS keys, rule ids and field names; personal values only
//! when asked for (`--show-values`), as R12 asks of everything the worker emits.

pub mod dlq;
pub mod explain;
pub mod import;
pub mod school;

pub use explain::{JournalRetentionArgs, prune_journal};

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Plain lines for people.
    #[default]
    Text,
    /// JSON lines for scripts.
    Json,
}

/// Prints one JSON value on its own line.
pub(crate) fn json_line<T: serde::Serialize>(
    out: &mut impl std::io::Write,
    value: &T,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}
