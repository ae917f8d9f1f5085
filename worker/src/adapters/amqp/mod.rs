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

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use lapin::types::{AMQPValue, LongString, ShortString};
use lapin::{Connection, ConnectionProperties};
use las_contracts::{CHANGES_QUEUE, PORTAL_QUEUE};

pub mod consumer;
pub mod dead_letters;
pub mod event_tap;
pub mod publish;
pub mod queue_stats;
pub mod topology;

pub use consumer::{BatchHandler, session};
pub use publish::{publish_all, publish_dead_letter};
pub use topology::declare_topology;

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

    pub fn label(self) -> &'static str {
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
    pub fn set(&self, kind: QueueKind, up: bool) {
        match kind {
            QueueKind::Changes => self.changes_up.store(up, Ordering::SeqCst),
            QueueKind::Portal => self.portal_up.store(up, Ordering::SeqCst),
        }
    }

    pub fn consumers_up(&self) -> bool {
        self.changes_up.load(Ordering::SeqCst) && self.portal_up.load(Ordering::SeqCst)
    }
}

pub(crate) fn s(v: &str) -> ShortString {
    v.into()
}

pub(crate) fn ls(v: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
}

pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(name.as_bytes().to_vec()));
    Connection::connect(url, props).await
}
