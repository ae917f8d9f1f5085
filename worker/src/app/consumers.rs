//! The consumers of the worker's two queues: one AMQP session at a time
//! (`adapters::amqp::session`), reconnected with the one retry policy.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::adapters::amqp::{self, BusSettings, Health, QueueKind};
use crate::app::pipeline::Pipeline;
use crate::app::retry;

/// Runs one queue's consumer until shutdown, reconnecting with backoff.
pub async fn run_consumer(
    kind: QueueKind,
    settings: BusSettings,
    pipeline: Pipeline,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = pipeline.metrics().clone();
    retry::keep_running(
        &shutdown,
        || {
            let session = amqp::session(
                kind,
                &settings,
                &pipeline,
                &metrics,
                &health,
                shutdown.clone(),
            );
            let health = &health;
            let metrics = &metrics;
            async move {
                let result = session.await;
                health.set(kind, false);
                metrics
                    .consumer_up
                    .with_label_values(&[kind.label()])
                    .set(0);
                result
            }
        },
        |e, delay| {
            metrics.retries.with_label_values(&["broker"]).inc();
            warn!(queue = kind.queue(), error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost; reconnecting");
        },
    )
    .await;
    info!(queue = kind.queue(), "consumer stopped");
}
