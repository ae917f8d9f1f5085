//! Test-only fault injection. With `LAS_WORKER_FAULTPOINT=<name>` the worker
//! aborts, as `kill -9` would, when it reaches the point of that name, so the
//! reliability tests can kill it at an exact moment instead of a random one.
//! Unset (as in production) a point costs one check of a value read once.
//!
//! Points:
//! - `dead-letter-before-commit`: a batch's dead letters are published and
//!   its ack sent on the transactional channel, `tx.commit` is not.

use std::sync::OnceLock;
use std::time::Duration;

pub const ENV: &str = "LAS_WORKER_FAULTPOINT";

fn armed() -> Option<&'static str> {
    static POINT: OnceLock<Option<String>> = OnceLock::new();
    POINT
        .get_or_init(|| std::env::var(ENV).ok().filter(|p| !p.is_empty()))
        .as_deref()
}

/// Aborts the process at point `name` when it is armed, after a pause that
/// lets what was written so far reach the broker and the database.
pub async fn hit(name: &str) {
    if armed() == Some(name) {
        tracing::error!(faultpoint = name, "fault point reached; aborting");
        tokio::time::sleep(Duration::from_millis(500)).await;
        std::process::abort();
    }
}
