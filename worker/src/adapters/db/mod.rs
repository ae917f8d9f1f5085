//! PostgreSQL, the portal's database: THE IMPERATIVE SHELL for data. The pool
//! and migrations here; [`batch`] orders a batch's statements; one file per
//! table group holds its SQL. Nothing here decides a rule: decisions come
//! from `crate::domain`.

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

pub mod batch;
pub mod coupling;
pub mod coupling_decisions;
pub mod email_outbox;
pub mod error;
pub mod event_outbox;
pub mod groups;
pub mod guardians;
pub mod journal;
pub mod maintenance;
pub mod memberships;
pub mod profiles;
pub mod rollover;
pub mod schools;
pub mod snapshots;
pub mod suggestions;
pub mod views;

pub use crate::domain::outcome::{BatchEffects, Events, MessageOutcome};
pub use coupling_decisions::{UnclaimedProfile, Unlinked, WaitingRecord, unclaimed_profiles};
pub use email_outbox::OutboxEmail;
use error::lost_insert_race;
pub use error::{StoreError, classify};
pub use maintenance::{AnalyzeMarks, DailyReport, Erased};
pub use schools::SchoolView;
pub use snapshots::SnapshotView;
pub use suggestions::SuggestionView;
pub use views::{GroupRef, Leftover, LinkRef, OverdueSchool, ProfileView};

// The table groups share their helpers (row mappers, column lists, the
// profile slots of a batch) through this module.
#[allow(unused_imports)]
use {
    coupling::*, coupling_decisions::*, email_outbox::*, event_outbox::*, groups::*, guardians::*,
    journal::*, maintenance::*, memberships::*, profiles::*, rollover::*, schools::*, snapshots::*,
    suggestions::*,
};

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// The portal's address (`PORTAL_BASE_URL`) for the link in suggestion
    /// e-mails (R10); without it the e-mail names the suggestion number only.
    portal_base_url: Option<String>,
    /// Observes how long a batch waited for its connection and `BEGIN`
    /// (`las_db_pool_acquire_seconds`); none in the operator tools.
    acquire_seconds: Option<prometheus::Histogram>,
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse().map_err(StoreError::Transient)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(classify)?;
        Ok(Store {
            pool,
            portal_base_url: None,
            acquire_seconds: None,
        })
    }

    /// The portal's address for the links in suggestion e-mails (R10).
    pub fn with_portal_base_url(mut self, url: Option<String>) -> Self {
        self.portal_base_url = url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        self
    }

    /// Times every batch's wait for a pooled connection into `h`.
    pub fn with_acquire_histogram(mut self, h: prometheus::Histogram) -> Self {
        self.acquire_seconds = Some(h);
        self
    }

    /// Starts a batch's transaction, timing the wait for the connection.
    pub(crate) async fn begin_timed(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        let started = std::time::Instant::now();
        let tx = self.pool.begin().await;
        if let Some(h) = &self.acquire_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        tx
    }

    /// Connections of the pool in use and idle, for the pool gauges.
    pub fn pool_usage(&self) -> (i64, i64) {
        let size = i64::from(self.pool.size());
        let idle = self.pool.num_idle() as i64;
        ((size - idle).max(0), idle)
    }

    /// Creates the database of `url` when it does not exist yet; returns
    /// whether it did. A server that cannot tell is left alone.
    pub async fn create_database_if_missing(url: &str) -> Result<bool, StoreError> {
        use sqlx::migrate::MigrateDatabase;
        if sqlx::Postgres::database_exists(url).await.unwrap_or(true) {
            return Ok(false);
        }
        sqlx::Postgres::create_database(url).await?;
        Ok(true)
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Store {
            pool,
            portal_base_url: None,
            acquire_seconds: None,
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `worker/migrations`; safe to run at every start
    /// and from several replicas at once (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
