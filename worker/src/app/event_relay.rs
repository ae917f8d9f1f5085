//! Publishes the sync-event outbox on `las.sync-events` with publisher
//! confirms. Events are written in the transaction of the change they
//! describe (`adapters::db::event_outbox`); this relay claims unpublished
//! rows (replicas share the work), publishes them, waits for the broker's
//! confirms and only then marks them published in the same transaction. A
//! crash in between publishes them again: delivery is at least once,
//! consumers deduplicate by `event_id`. Reconnects with the one retry policy.

use std::time::Duration;

use lapin::Channel;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::adapters::amqp::{self, BusError};
use crate::adapters::db::{Store, StoreError, event_outbox};
use crate::adapters::metrics::Metrics;
use crate::app::retry;

#[derive(Debug, thiserror::Error)]
enum PublishError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<lapin::Error> for PublishError {
    fn from(e: lapin::Error) -> Self {
        PublishError::Bus(BusError::Amqp(e))
    }
}

impl From<sqlx::Error> for PublishError {
    fn from(e: sqlx::Error) -> Self {
        PublishError::Store(StoreError::from(e))
    }
}

/// How many events one round publishes (it finishes the row it is in).
const ROUND: usize = 1000;
/// Outbox rows one round looks at.
const ROUND_ROWS: i64 = 64;

pub struct EventPublisher {
    store: Store,
    url: String,
    delivery_limit: i64,
    metrics: Metrics,
    idle: Duration,
}

impl EventPublisher {
    pub fn new(store: Store, url: String, delivery_limit: i64, metrics: Metrics) -> Self {
        EventPublisher {
            store,
            url,
            delivery_limit,
            metrics,
            idle: Duration::from_millis(200),
        }
    }

    /// Runs until shutdown; a round in flight is finished first.
    pub async fn run(self, shutdown: watch::Receiver<bool>) {
        retry::keep_running(
            &shutdown,
            || self.session(shutdown.clone()),
            |e, delay| {
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "event publisher interrupted; events stay in the outbox, retrying");
            },
        )
        .await;
        info!("event publisher stopped");
    }

    async fn session(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), PublishError> {
        let (conn, ch) =
            amqp::publish::confirm_channel(&self.url, "las-worker events", self.delivery_limit)
                .await?;
        info!("event publisher connected");
        loop {
            if *shutdown.borrow() {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
            let n = self.round(&ch).await?;
            if let Ok(depth) = event_outbox::depth(self.store.pool()).await {
                self.metrics.event_outbox_depth.set(depth);
            }
            if n == 0 {
                tokio::select! {
                    _ = tokio::time::sleep(self.idle) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }

    /// Publishes one round; returns how many events went out. A round takes
    /// outbox rows in order until it holds `ROUND` events (a row holds the
    /// events of one transaction; rows from before migration 0006 hold one).
    async fn round(&self, ch: &Channel) -> Result<usize, PublishError> {
        let mut tx = self.store.pool().begin().await?;
        let rows = event_outbox::claim(&mut tx, ROUND_ROWS).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut events: Vec<&(String, String)> = Vec::new();
        for row in &rows {
            if events.len() >= ROUND {
                // The rest stays unpublished (and unlocked at commit) for the next round.
                break;
            }
            events.extend(row.events.iter());
            ids.push(row.id);
        }
        // Nothing is marked on a nack: the whole round is published again.
        let published = amqp::publish::sync_events(ch, &events).await?;
        event_outbox::mark_published(&mut tx, &ids).await?;
        tx.commit().await?;
        self.metrics.events_published.inc_by(published as u64);
        Ok(published)
    }
}
