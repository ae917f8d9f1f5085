//! One consumer session on one queue: batching, up to `batch_concurrency`
//! batches in flight, dead letters and the multiple ack in one AMQP
//! transaction on the delivering channel. The reconnect loop around it is the
//! application's (`app::consumers`).

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::sync::watch;
use tracing::info;

use super::{BROKER_REPLY_TIMEOUT, BusError, BusSettings, Health, QueueKind, connect, s};
use super::{declare_topology, publish_dead_letter};
use crate::adapters::metrics::Metrics;
use crate::domain::message::Rejection;
use crate::domain::outcome::{Disposition, Interrupted};

/// What applies a batch of message bodies: one disposition per body, in
/// order, once the batch is committed; `Interrupted` when shutdown came
/// first (nothing may be acknowledged). The application's pipeline.
pub trait BatchHandler: Sync {
    fn process(
        &self,
        bodies: &[&[u8]],
        shutdown: &watch::Receiver<bool>,
    ) -> impl Future<Output = Result<Vec<Disposition>, Interrupted>> + Send;
}

pub async fn session<H: BatchHandler>(
    kind: QueueKind,
    settings: &BusSettings,
    handler: &H,
    metrics: &Metrics,
    health: &Health,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let conn = connect(&settings.url, &format!("las-worker {}", kind.label())).await?;
    metrics.connections.with_label_values(&[kind.label()]).inc();
    let ch = conn.create_channel().await?;
    declare_topology(&ch, settings.delivery_limit).await?;
    ch.basic_qos(settings.prefetch, BasicQosOptions::default())
        .await?;
    // Dead letters and acks take effect together, at `tx.commit`.
    ch.tx_select().await?;
    let tag = format!("las-worker-{}-{}", kind.label(), uuid::Uuid::new_v4());
    let mut consumer = ch
        .basic_consume(
            s(kind.queue()),
            s(&tag),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    health.set(kind, true);
    metrics
        .consumer_up
        .with_label_values(&[kind.label()])
        .set(1);
    info!(
        queue = kind.queue(),
        prefetch = settings.prefetch,
        batch_size = settings.batch_size,
        "consuming"
    );

    // Batches fill while earlier ones are applied: up to `batch_concurrency`
    // transactions are in flight. They finish in any order, but `in_flight`
    // yields them in delivery order, and a batch is acknowledged (one
    // multiple ack up to its last tag, on this channel) only when it and all
    // earlier batches are committed: a multiple ack never covers a delivery
    // that is not applied yet.
    let batch_size = settings.batch_size.max(1);
    let concurrency = settings.batch_concurrency.max(1);
    let mut batch: Vec<Delivery> = Vec::with_capacity(batch_size);
    let mut deadline: Option<tokio::time::Instant> = None;
    let batch_shutdown = shutdown.clone();
    let mut in_flight = FuturesOrdered::new();
    loop {
        let due =
            batch.len() >= batch_size || deadline.is_some_and(|d| d <= tokio::time::Instant::now());
        if !batch.is_empty() && due && in_flight.len() < concurrency {
            let deliveries: Vec<Delivery> = if batch.len() > batch_size {
                // Deliveries read while every slot was busy: the rest starts
                // the next batch, whose fill time starts now.
                let rest = batch.split_off(batch_size);
                let full = std::mem::replace(&mut batch, rest);
                deadline = Some(tokio::time::Instant::now() + settings.batch_max_wait);
                full
            } else {
                deadline = None;
                std::mem::replace(&mut batch, Vec::with_capacity(batch_size))
            };
            in_flight.push_back(run_batch(
                deliveries,
                kind,
                handler,
                metrics,
                &batch_shutdown,
            ));
            continue;
        }
        let wait_for_deadline = !batch.is_empty() && in_flight.len() < concurrency;
        let sleep_until = deadline.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                // Stop deliveries; let the batches in flight finish (they give
                // up by themselves while the database is away) and acknowledge
                // what committed. The partial batch and everything prefetched
                // go back to the queue when the channel closes.
                let _ = ch.basic_cancel(s(&tag), BasicCancelOptions::default()).await;
                while let Some((deliveries, applied)) = in_flight.next().await {
                    match applied {
                        Some(dead) => settle_batch(&ch, conn.status(), &deliveries, &dead).await?,
                        None => break,
                    }
                }
                close_quietly(&ch, &conn).await;
                return Ok(());
            }
            Some((deliveries, applied)) = in_flight.next(), if !in_flight.is_empty() => {
                match applied {
                    Some(dead) => {
                        if let Err(e) = settle_batch(&ch, conn.status(), &deliveries, &dead).await {
                            finish_in_flight(&mut in_flight).await;
                            return Err(e);
                        }
                    }
                    None => {
                        // Interrupted by shutdown while the database was down:
                        // nothing of it (or after it) is acknowledged; the
                        // broker redelivers.
                        close_quietly(&ch, &conn).await;
                        return Ok(());
                    }
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if wait_for_deadline && deadline.is_some() => {}
            // Always read: deliveries beyond a full batch wait in it (the
            // prefetch bounds them), and a dead connection shows up here even
            // while every batch slot is busy.
            d = consumer.next() => {
                match d {
                    None => {
                        finish_in_flight(&mut in_flight).await;
                        return Err(BusError::ConsumerEnded);
                    }
                    Some(Err(e)) => {
                        finish_in_flight(&mut in_flight).await;
                        return Err(e.into());
                    }
                    Some(Ok(d)) => batch.push(d),
                }
                if batch.len() == 1 {
                    deadline = Some(tokio::time::Instant::now() + settings.batch_max_wait);
                }
            }
        }
    }
}

/// The session ends (the channel died): the batches in flight may already
/// have committed. They run to the end, so what they applied is counted and
/// recorded, but nothing is acknowledged (the channel that delivered them is
/// gone): the broker redelivers them, and the redeliveries are duplicates.
/// Dropping them instead could cancel a batch between its commit and its
/// accounting.
async fn finish_in_flight<F: Future>(in_flight: &mut FuturesOrdered<F>) {
    while in_flight.next().await.is_some() {}
}

/// Closes channel and connection at shutdown, without waiting long for a
/// broker that is gone.
async fn close_quietly(ch: &Channel, conn: &Connection) {
    let close = async {
        let _ = ch.close(200, s("shutdown")).await;
        let _ = conn.close(200, s("shutdown")).await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), close).await;
}

/// The dead letters of an applied batch: index of the delivery, and why.
type DeadLetters = Vec<(usize, Rejection)>;

/// Applies one batch in one database transaction; settling it with the broker
/// is the caller's, in delivery order. Returns the deliveries and their dead
/// letters, or None when shutdown interrupted it before commit (nothing may be
/// acknowledged).
async fn run_batch<H: BatchHandler>(
    deliveries: Vec<Delivery>,
    kind: QueueKind,
    handler: &H,
    metrics: &Metrics,
    shutdown: &watch::Receiver<bool>,
) -> (Vec<Delivery>, Option<DeadLetters>) {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&metrics.batches_in_flight);
    let bodies: Vec<&[u8]> = deliveries.iter().map(|d| d.data.as_slice()).collect();
    let applied = handler
        .process(&bodies, shutdown)
        .await
        .ok()
        .map(|dispositions| {
            dispositions
                .into_iter()
                .enumerate()
                .filter_map(|(i, disp)| match disp {
                    Disposition::DeadLetter(r) => Some((i, r)),
                    Disposition::Done(_) => None,
                })
                .collect()
        });
    metrics
        .batch_size
        .with_label_values(&[kind.label()])
        .observe(deliveries.len() as f64);
    metrics
        .batch_seconds
        .with_label_values(&[kind.label()])
        .observe(started.elapsed().as_secs_f64());
    (deliveries, applied)
}

/// Counts a batch in `las_batches_in_flight` while it lives, also when
/// its future is dropped at shutdown.
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn enter(g: &prometheus::IntGauge) -> Self {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Settles an applied batch on the channel that delivered it, in one AMQP
/// transaction: its dead letters, one multiple ack up to its last delivery
/// (through that delivery's own acker), then `tx.commit`. The commit-ok comes
/// once the dead-letter queue has the dead letters; until then the broker
/// holds both, and a lost connection discards both.
///
/// While the broker blocks the connection (a resource alarm: the dead
/// letters cannot be published), the commit waits as long as the alarm
/// lasts instead of timing out: nothing is acknowledged meanwhile, and the
/// batch settles by itself when the alarm clears (issue #17).
async fn settle_batch(
    ch: &Channel,
    conn: &lapin::ConnectionStatus,
    deliveries: &[Delivery],
    dead: &[(usize, Rejection)],
) -> Result<(), BusError> {
    let Some(last) = deliveries.last() else {
        return Ok(());
    };
    let settle = async {
        for (i, r) in dead {
            publish_dead_letter(ch, &deliveries[*i], r).await?;
        }
        last.acker.ack(BasicAckOptions { multiple: true }).await?;
        if !dead.is_empty() {
            crate::adapters::faultpoint::hit("dead-letter-before-commit").await;
        }
        ch.tx_commit().await?;
        Ok::<(), BusError>(())
    };
    let mut settle = std::pin::pin!(settle);
    loop {
        match tokio::time::timeout(BROKER_REPLY_TIMEOUT, &mut settle).await {
            Ok(done) => return done,
            Err(_) if conn.blocked() && conn.connected() => {
                info!("the broker still blocks the connection; the batch waits to settle");
            }
            Err(_) => {
                return Err(BusError::Timeout(
                    BROKER_REPLY_TIMEOUT,
                    "acknowledgement commit",
                ));
            }
        }
    }
}
