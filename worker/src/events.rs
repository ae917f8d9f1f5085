//! Publishes the sync-event outbox on `las.sync-events` with publisher
//! confirms. Events are written in the transaction of the change they
//! describe, all events of a transaction in one outbox row (view
//! `event_outbox_events` shows one row per event); this publisher claims
//! unpublished ones (`FOR UPDATE SKIP
//! LOCKED`, so replicas share the work), publishes them, waits for the
//! broker's confirms and only then marks them published in the same
//! transaction. A crash in between publishes them again: delivery is at least
//! once, consumers deduplicate by `event_id`. Owns its reconnect loop.

use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use las_contracts::SYNC_EVENTS_EXCHANGE;
use sqlx::Row;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::bus::{self, BusError};
use crate::metrics::Metrics;
use crate::pipeline::transient_backoff;
use crate::store::{Store, StoreError};

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
        PublishError::Store(crate::store::classify(e))
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
        let mut backoff = transient_backoff().build();
        loop {
            if *shutdown.borrow() {
                break;
            }
            let started = Instant::now();
            match self.session(shutdown.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = transient_backoff().build();
                    }
                    let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "event publisher interrupted; events stay in the outbox, retrying");
                    let mut sd = shutdown.clone();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = sd.changed() => {}
                    }
                }
            }
        }
        info!("event publisher stopped");
    }

    async fn session(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), PublishError> {
        let conn = bus::connect(&self.url, "las-worker events").await?;
        let ch = conn.create_channel().await?;
        bus::declare_topology(&ch, self.delivery_limit).await?;
        ch.confirm_select(ConfirmSelectOptions::default()).await?;
        info!("event publisher connected");
        loop {
            if *shutdown.borrow() {
                let _ = conn.close(200, "shutdown".into()).await;
                return Ok(());
            }
            let n = self.round(&ch).await?;
            if let Ok(depth) = sqlx::query_scalar::<_, i64>(
                "SELECT COALESCE(sum(COALESCE(cardinality(events), 1)), 0)::int8
                 FROM event_outbox WHERE published_at IS NULL",
            )
            .fetch_one(self.store.pool())
            .await
            {
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
        let rows = sqlx::query(
            "SELECT id, routing_key, payload::text AS payload, routing_keys, events::text[] AS events
             FROM event_outbox
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(ROUND_ROWS)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut ids = Vec::with_capacity(rows.len());
        let mut confirms = Vec::new();
        for row in &rows {
            if confirms.len() >= ROUND {
                // The rest stays unpublished (and unlocked at commit) for the next round.
                break;
            }
            let id: i64 = row.try_get("id")?;
            let (keys, payloads): (Vec<String>, Vec<String>) =
                match row.try_get::<Option<Vec<String>>, _>("events")? {
                    Some(events) => (
                        row.try_get::<Option<Vec<String>>, _>("routing_keys")?
                            .unwrap_or_default(),
                        events,
                    ),
                    None => (
                        vec![row.try_get::<String, _>("routing_key")?],
                        vec![row.try_get::<String, _>("payload")?],
                    ),
                };
            for (key, payload) in keys.iter().zip(&payloads) {
                let props = BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2)
                    .with_type("las.sync_event.v1".into());
                confirms.push(
                    ch.basic_publish(
                        SYNC_EVENTS_EXCHANGE.into(),
                        key.as_str().into(),
                        BasicPublishOptions::default(),
                        payload.as_bytes(),
                        props,
                    )
                    .await?,
                );
            }
            ids.push(id);
        }
        let published = confirms.len();
        for c in confirms {
            if c.await?.is_nack() {
                // Nothing is marked: the whole round is published again.
                return Err(PublishError::Bus(BusError::Nacked));
            }
        }
        sqlx::query("UPDATE event_outbox SET published_at = now() WHERE id = ANY($1)")
            .bind(&ids)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.metrics.events_published.inc_by(published as u64);
        Ok(published)
    }
}
