//! Database errors, classified: transient (retry, never dead-letter) or
//! permanent (the data itself was refused).

/// A store failure, classified.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, overloaded, or a transaction lost a race:
    /// retry the same work later; never dead-letter because of it.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// A concurrent batch created a profile this batch was about to create:
    /// the batch is rolled back and applied again, and then sees that row.
    #[error("a concurrent batch created the same profile; the batch is applied again")]
    Conflict,
    /// The database refused the data itself; retrying will not help.
    #[error("database refused the change: SQLSTATE {code}{}", constraint.as_deref().map(|c| format!(", constraint {c}")).unwrap_or_default())]
    Permanent {
        code: String,
        constraint: Option<String>,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Conflict)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

/// A unique violation of the profiles' key (school, kind, LAS key) while
/// inserting new profiles: a concurrent transaction inserted the same key
/// since this one looked. The batch is applied again and then sees that row,
/// so this is never repeated for good. Every other error is classified as
/// usual.
pub(super) fn lost_insert_race(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
        && (db.constraint() == Some(PROFILES_KEY) || db.constraint() == Some(COUPLING_WAITS_KEY))
    {
        return StoreError::Conflict;
    }
    classify(e)
}

/// The unique constraint on profiles (school_id, kind, las_key) (migration 0001).
pub(super) const PROFILES_KEY: &str = "profiles_school_id_kind_las_key_key";
/// The primary key of coupling_waits (migration 0012): two replicas that
/// both found a LAS record waiting.
pub(super) const COUPLING_WAITS_KEY: &str = "coupling_waits_pkey";

/// Which database errors are worth retrying. Only the data a message carries
/// can make the database refuse it for good: SQLSTATE class 22 (data
/// exception, e.g. a NUL character) and 23 (integrity constraint violation).
/// Everything else — connection loss, a database that refuses connections
/// (`55000` while `ALLOW_CONNECTIONS` is off), shutdowns, serialization
/// failures, deadlocks, resource shortages, even a missing table during a
/// deployment — is the infrastructure's problem: retried with backoff, never
/// a reason to dead-letter a good message.
pub fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let permanent = code.starts_with("22") || code.starts_with("23");
            if permanent {
                StoreError::Permanent {
                    constraint: db.constraint().map(str::to_owned),
                    code,
                }
            } else {
                StoreError::Transient(e)
            }
        }
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound
        | sqlx::Error::Encode(_) => StoreError::Permanent {
            code: "decode".into(),
            constraint: None,
        },
        _ => StoreError::Transient(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn only_data_errors_are_permanent() {
        // Errors without a database code (I/O, pool time-out) are transient.
        assert!(classify(sqlx::Error::PoolTimedOut).is_transient());
        assert!(classify(sqlx::Error::Io(std::io::Error::other("reset"))).is_transient());
        assert!(!classify(sqlx::Error::RowNotFound).is_transient());
    }

    #[test]
    pub(super) fn a_lost_insert_race_is_retried_and_not_called_an_outage() {
        assert!(StoreError::Conflict.is_transient());
        assert!(!StoreError::Conflict.to_string().contains("unavailable"));
    }
}
