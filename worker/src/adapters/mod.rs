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

/// How every adapter classifies its failures, in one vocabulary: transient
/// (the outside system is away or busy: retry the same work later with
/// backoff, never dead-letter or give up a message because of it) or
/// permanent (the data itself was refused: retrying will not help; dead-letter
/// or give up with a reason a person can read).
pub trait Failure: std::error::Error {
    fn is_transient(&self) -> bool;

    fn is_permanent(&self) -> bool {
        !self.is_transient()
    }
}

impl Failure for db::StoreError {
    fn is_transient(&self) -> bool {
        db::StoreError::is_transient(self)
    }
}

impl Failure for amqp::BusError {
    /// Every broker failure ends the session; the app reconnects and the
    /// broker redelivers what was not acknowledged.
    fn is_transient(&self) -> bool {
        true
    }
}

impl Failure for mail::SendError {
    fn is_transient(&self) -> bool {
        matches!(self, mail::SendError::Retryable { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_adapter_failure_says_whether_to_retry() {
        assert!(Failure::is_transient(&db::StoreError::Conflict));
        assert!(
            db::StoreError::Permanent {
                code: "23505".into(),
                constraint: None
            }
            .is_permanent()
        );
        assert!(Failure::is_transient(&amqp::BusError::Nacked));
        let busy = mail::SendError::Retryable {
            reason: "HTTP 503".into(),
            retry_after: None,
        };
        assert!(Failure::is_transient(&busy));
        assert!(mail::SendError::Permanent("HTTP 401".into()).is_permanent());
    }
}
