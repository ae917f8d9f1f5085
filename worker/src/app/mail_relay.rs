//! Sending the e-mail outbox (R10). The dispatcher claims due e-mails, sends
//! them through a transport, and records the outcome: 2xx is sent (with the
//! provider's id, never sent again), 408/429/5xx/time-outs are retried with
//! exponential backoff and jitter until they succeed, other 4xx are given up
//! with a recorded reason. Consuming LAS messages never waits for it.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use sqlx::Postgres;
use sqlx::pool::PoolConnection;
use tokio::sync::{Mutex, watch};
use tracing::{info, warn};

use crate::adapters::db::{Store, StoreError};
use crate::adapters::mail::{SendError, Transport};
use crate::adapters::metrics::Metrics;

/// How the dispatcher paces itself.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Pause between polls when the outbox is empty.
    pub idle: Duration,
    /// E-mails claimed per round.
    pub batch: i64,
    /// How long a claim holds before another dispatcher may take the e-mail over.
    pub lease: Duration,
    pub backoff: ExponentialBuilder,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            idle: Duration::from_millis(500),
            batch: 20,
            lease: Duration::from_secs(120),
            backoff: ExponentialBuilder::default()
                .with_min_delay(Duration::from_secs(2))
                .with_max_delay(Duration::from_secs(900))
                .with_factor(2.0)
                .with_jitter()
                .without_max_times(),
        }
    }
}

/// What one round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
}

#[derive(Clone)]
pub struct Dispatcher {
    store: Store,
    transport: Transport,
    metrics: Metrics,
    settings: DispatchSettings,
    /// The database session whose pid marks this dispatcher's claims as alive.
    session: Arc<Mutex<Option<PoolConnection<Postgres>>>>,
}

impl Dispatcher {
    pub fn new(
        store: Store,
        transport: Transport,
        metrics: Metrics,
        settings: DispatchSettings,
    ) -> Self {
        Dispatcher {
            store,
            transport,
            metrics,
            settings,
            session: Arc::new(Mutex::new(None)),
        }
    }

    /// Claims due e-mails and sends them once each.
    pub async fn round(&self) -> Result<Round, StoreError> {
        let claimed = {
            let mut session = self.session.lock().await;
            self.store
                .claim_emails(&mut session, self.settings.batch, self.settings.lease)
                .await?
        };
        let mut round = Round::default();
        for e in &claimed {
            match self.transport.send(e).await {
                Ok(provider_id) => {
                    self.store.email_sent(e.id, &provider_id).await?;
                    self.metrics.emails.with_label_values(&["sent", "ok"]).inc();
                    round.sent += 1;
                }
                Err(err @ SendError::Retryable { .. }) => {
                    let SendError::Retryable { retry_after, .. } = &err else {
                        continue;
                    };
                    let attempt = e.attempts.max(1) as usize;
                    let backoff = self
                        .settings
                        .backoff
                        .build()
                        .nth(attempt - 1)
                        .unwrap_or(Duration::from_secs(900));
                    let delay = retry_after.map_or(backoff, |r| r.max(backoff));
                    warn!(email_id = e.id, attempt, retry_in_ms = delay.as_millis() as u64, error = %err, "e-mail not sent yet; will retry");
                    self.store
                        .email_retry(e.id, delay, &err.to_string())
                        .await?;
                    self.metrics
                        .emails
                        .with_label_values(&["retry", err.label()])
                        .inc();
                    round.retried += 1;
                }
                Err(err @ SendError::Permanent(_)) => {
                    warn!(email_id = e.id, error = %err, "e-mail given up: the provider refused it; an operator must look at it");
                    self.store.email_failed(e.id, &err.to_string()).await?;
                    self.metrics
                        .emails
                        .with_label_values(&["failed", err.label()])
                        .inc();
                    round.failed += 1;
                }
            }
        }
        if let Ok(depth) = self.store.outbox_depth().await {
            self.metrics.outbox_depth.set(depth);
        }
        Ok(round)
    }

    /// Runs until shutdown; the send in flight is finished first.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        info!(transport = %self.transport.describe(), "e-mail dispatcher started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let busy = match self.round().await {
                Ok(r) => r.sent + r.retried + r.failed > 0,
                Err(e) => {
                    warn!(error = %e, "e-mail dispatcher cannot reach the database; retrying");
                    false
                }
            };
            if !busy {
                tokio::select! {
                    _ = tokio::time::sleep(self.settings.idle) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
        info!("e-mail dispatcher stopped");
    }
}
