//! RabbitMQ through lapin: topology, the consumer with its own reconnect loop,
//! batching, dead-lettering and acknowledgements.
//!
//! Acks only after the batch's database transaction committed, always through
//! the acker of the delivery itself, so a tag is never acknowledged on another
//! channel than the one that delivered it. The consuming channel is in AMQP
//! transaction mode (`tx.select`): a batch's dead letters are published on it
//! and its multiple ack sent, then one `tx.commit` makes both take effect
//! together. A kill or a cut before the commit takes effect leaves neither
//! (the broker redelivers, and the redelivery is dead-lettered once); after
//! it, both. So a message is never dead-lettered twice, and never acked
//! without its dead letter. After a reconnect the old deliveries are dropped
//! and the broker redelivers them; the message-id dedupe makes that harmless.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use futures_util::StreamExt;
use futures_util::stream::FuturesOrdered;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use las_contracts::{
    CHANGES_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, LAS_CHANGES_EXCHANGE, PORTAL_QUEUE,
    PORTAL_REQUESTS_EXCHANGE, SYNC_EVENTS_EXCHANGE, dead_letter,
};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::inbound::Rejection;
use crate::pipeline::{Disposition, Pipeline, transient_backoff};

/// A broker failure. All of them are transient: the consumer reconnects.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("the broker cancelled the consumer")]
    ConsumerEnded,
    #[error("the broker refused a publish (publisher nack)")]
    Nacked,
    #[error("no answer from the broker within {0:?} ({1})")]
    Timeout(Duration, &'static str),
}

/// How long a confirm or an acknowledgement may take before the connection
/// is taken for dead (lapin may leave such a future pending when the
/// connection dies under it): the session reconnects, the broker redelivers.
const BROKER_REPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// Which of the worker's queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueKind {
    Changes,
    Portal,
}

impl QueueKind {
    pub fn queue(self) -> &'static str {
        match self {
            QueueKind::Changes => CHANGES_QUEUE,
            QueueKind::Portal => PORTAL_QUEUE,
        }
    }

    fn label(self) -> &'static str {
        match self {
            QueueKind::Changes => "changes",
            QueueKind::Portal => "portal",
        }
    }
}

#[derive(Debug, Clone)]
pub struct BusSettings {
    pub url: String,
    pub prefetch: u16,
    pub batch_size: usize,
    pub batch_max_wait: Duration,
    /// Batches applied at the same time (separate transactions).
    pub batch_concurrency: usize,
    pub delivery_limit: i64,
}

/// Readiness flags shared with `/readyz`.
#[derive(Debug, Default)]
pub struct Health {
    pub changes_up: AtomicBool,
    pub portal_up: AtomicBool,
    pub draining: AtomicBool,
}

impl Health {
    fn set(&self, kind: QueueKind, up: bool) {
        match kind {
            QueueKind::Changes => self.changes_up.store(up, Ordering::SeqCst),
            QueueKind::Portal => self.portal_up.store(up, Ordering::SeqCst),
        }
    }

    pub fn consumers_up(&self) -> bool {
        self.changes_up.load(Ordering::SeqCst) && self.portal_up.load(Ordering::SeqCst)
    }
}

fn s(v: &str) -> ShortString {
    v.into()
}

fn ls(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

/// Declares exchanges, queues and bindings; idempotent, so the worker runs
/// on an empty broker and every replica may do it at start.
pub async fn declare_topology(ch: &Channel, delivery_limit: i64) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        s(LAS_CHANGES_EXCHANGE),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s(PORTAL_REQUESTS_EXCHANGE),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s(DEAD_LETTER_EXCHANGE),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s(SYNC_EVENTS_EXCHANGE),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;

    let qopts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut dl_args = FieldTable::default();
    dl_args.insert(s("x-queue-type"), ls("quorum"));
    ch.queue_declare(s(DEAD_LETTER_QUEUE), qopts, dl_args)
        .await?;
    ch.queue_bind(
        s(DEAD_LETTER_QUEUE),
        s(DEAD_LETTER_EXCHANGE),
        s(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    for (queue, exchange, key) in [
        (CHANGES_QUEUE, LAS_CHANGES_EXCHANGE, "las.#"),
        (PORTAL_QUEUE, PORTAL_REQUESTS_EXCHANGE, "portal.#"),
    ] {
        let mut args = FieldTable::default();
        args.insert(s("x-queue-type"), ls("quorum"));
        args.insert(
            s("x-delivery-limit"),
            AMQPValue::LongLongInt(delivery_limit),
        );
        args.insert(s("x-dead-letter-exchange"), ls(DEAD_LETTER_EXCHANGE));
        args.insert(s("x-dead-letter-strategy"), ls("at-least-once"));
        args.insert(s("x-overflow"), ls("reject-publish"));
        ch.queue_declare(s(queue), qopts, args).await?;
        ch.queue_bind(
            s(queue),
            s(exchange),
            s(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    Connection::connect(url, props).await
}

/// Runs one queue's consumer until shutdown, reconnecting with backoff.
pub async fn run_consumer(
    kind: QueueKind,
    settings: BusSettings,
    pipeline: Pipeline,
    health: Arc<Health>,
    shutdown: watch::Receiver<bool>,
) {
    let metrics = pipeline.metrics().clone();
    let mut backoff = transient_backoff().build();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        let result = session(kind, &settings, &pipeline, &health, shutdown.clone()).await;
        health.set(kind, false);
        metrics
            .consumer_up
            .with_label_values(&[kind.label()])
            .set(0);
        match result {
            Ok(()) => break,
            Err(e) => {
                if started.elapsed() > Duration::from_secs(30) {
                    backoff = transient_backoff().build();
                }
                metrics.retries.with_label_values(&["broker"]).inc();
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(queue = kind.queue(), error = %e, retry_in_ms = delay.as_millis() as u64, "broker connection lost; reconnecting");
                let mut sd = shutdown.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = sd.changed() => {}
                }
            }
        }
    }
    info!(queue = kind.queue(), "consumer stopped");
}

async fn session(
    kind: QueueKind,
    settings: &BusSettings,
    pipeline: &Pipeline,
    health: &Health,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), BusError> {
    let metrics = pipeline.metrics();
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
            in_flight.push_back(run_batch(deliveries, kind, pipeline, &batch_shutdown));
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
                        Some(dead) => settle_batch(&ch, &deliveries, &dead).await?,
                        None => break,
                    }
                }
                close_quietly(&ch, &conn).await;
                return Ok(());
            }
            Some((deliveries, applied)) = in_flight.next(), if !in_flight.is_empty() => {
                match applied {
                    Some(dead) => settle_batch(&ch, &deliveries, &dead).await?,
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
                    None => return Err(BusError::ConsumerEnded),
                    Some(d) => batch.push(d?),
                }
                if batch.len() == 1 {
                    deadline = Some(tokio::time::Instant::now() + settings.batch_max_wait);
                }
            }
        }
    }
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
async fn run_batch(
    deliveries: Vec<Delivery>,
    kind: QueueKind,
    pipeline: &Pipeline,
    shutdown: &watch::Receiver<bool>,
) -> (Vec<Delivery>, Option<DeadLetters>) {
    let started = Instant::now();
    let bodies: Vec<&[u8]> = deliveries.iter().map(|d| d.data.as_slice()).collect();
    let applied = pipeline
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
    let metrics = pipeline.metrics();
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

/// Settles an applied batch on the channel that delivered it, in one AMQP
/// transaction: its dead letters, one multiple ack up to its last delivery
/// (through that delivery's own acker), then `tx.commit`. The commit-ok comes
/// once the dead-letter queue has the dead letters; until then the broker
/// holds both, and a lost connection discards both.
async fn settle_batch(
    ch: &Channel,
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
            crate::faultpoint::hit("dead-letter-before-commit").await;
        }
        ch.tx_commit().await?;
        Ok::<(), BusError>(())
    };
    tokio::time::timeout(BROKER_REPLY_TIMEOUT, settle)
        .await
        .map_err(|_| BusError::Timeout(BROKER_REPLY_TIMEOUT, "acknowledgement commit"))?
}

/// Publishes a dead letter on the (transactional) consuming channel: the
/// body unchanged, the original headers, and the reason headers.
async fn publish_dead_letter(ch: &Channel, d: &Delivery, r: &Rejection) -> Result<(), BusError> {
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(s(dead_letter::REASON_CODE), ls(r.reason.as_str()));
    headers.insert(s(dead_letter::REASON), ls(&r.text));
    headers.insert(s(dead_letter::ORIGINAL_EXCHANGE), ls(d.exchange.as_str()));
    headers.insert(
        s(dead_letter::ORIGINAL_ROUTING_KEY),
        ls(d.routing_key.as_str()),
    );
    headers.insert(
        s(dead_letter::REJECTED_AT),
        ls(&chrono::Utc::now().to_rfc3339()),
    );
    if let Some(id) = r.message_id {
        headers.insert(s(dead_letter::MESSAGE_ID), ls(&id.to_string()));
    }
    let mut props = BasicProperties::default()
        .with_headers(headers)
        .with_delivery_mode(2);
    if let Some(ct) = d.properties.content_type() {
        props = props.with_content_type(ct.clone());
    }
    ch.basic_publish(
        s(DEAD_LETTER_EXCHANGE),
        d.routing_key.clone(),
        BasicPublishOptions::default(),
        &d.data,
        props,
    )
    .await?;
    Ok(())
}

/// Publishes messages with publisher confirms (the `publish` command, the demo
/// and the tests). Returns how many the broker confirmed.
pub async fn publish_all(
    url: &str,
    messages: &[(String, String, Vec<u8>)],
) -> Result<usize, BusError> {
    let conn = connect(url, "las-worker publish").await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut confirms = Vec::with_capacity(messages.len());
    for (exchange, key, body) in messages {
        let props = BasicProperties::default()
            .with_content_type(s("application/json"))
            .with_delivery_mode(2);
        confirms.push(
            ch.basic_publish(
                s(exchange),
                s(key),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await?,
        );
    }
    let mut n = 0;
    for c in confirms {
        if c.await?.is_ack() {
            n += 1;
        }
    }
    let _ = ch.close(200, s("done")).await;
    let _ = conn.close(200, s("done")).await;
    Ok(n)
}
