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

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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

/// The node addresses of `AMQP_URL`: one URL, or several separated by
/// commas, one per node of a cluster (issue #17), e.g.
/// `amqps://u:p@rmq-0:5671/v,amqps://u:p@rmq-1:5671/v,amqps://u:p@rmq-2:5671/v`.
pub fn node_urls(url: &str) -> Vec<&str> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect()
}

/// The AMQP frame size the worker asks for when the URL sets none. lapin
/// keeps a receive and a send buffer of 32 frames per connection: at
/// RabbitMQ's default `frame_max` of 128 KiB that is 8 MiB of resident
/// memory per connection, and the worker holds four (two consumers, the
/// event publisher, the queue gauges). LAS messages are about 0.5 KB; a
/// larger body is carried in several frames. Measured in issue #19: the
/// fourth connection (the queue gauges) took the 100k drain's peak RSS from
/// 56 to 64 MiB. `?frame_max=` in `AMQP_URL` overrides it.
pub const FRAME_MAX: u32 = 32 * 1024;

/// The heartbeat (seconds) the worker asks for when the URL sets none.
/// lapin closes a connection that read nothing for two heartbeats, so a
/// silent partition (a dead path without FIN or RST) ends a session after
/// about 20 s and the worker reconnects; at RabbitMQ's default of 60 s it
/// would stall two minutes. RabbitMQ's guide advises 5-20 s. `?heartbeat=`
/// in `AMQP_URL` overrides it.
pub const HEARTBEAT_SECS: u16 = 10;

/// One node's URL with `frame_max` ([`FRAME_MAX`]) and `heartbeat`
/// ([`HEARTBEAT_SECS`]) unless it sets them.
pub fn with_connection_defaults(node: &str) -> String {
    let mut url = node.to_owned();
    for (key, value) in [
        ("frame_max", FRAME_MAX.to_string()),
        ("heartbeat", HEARTBEAT_SECS.to_string()),
    ] {
        if !url.contains(&format!("{key}=")) {
            let sep = if url.contains('?') { '&' } else { '?' };
            url = format!("{url}{sep}{key}={value}");
        }
    }
    url
}

/// How long one node may take to accept a connection before the next is
/// tried (a node behind a dead network path may never answer).
const NODE_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to the broker: with several node addresses, tries them in turn,
/// starting at a random one so that replicas spread over the nodes, and
/// returns the first connection that opens (or the last error). Every
/// connection is watched for `connection.blocked` ([`blocked_connections`]).
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let nodes: Vec<String> = node_urls(url)
        .into_iter()
        .map(with_connection_defaults)
        .collect();
    let props = || {
        ConnectionProperties::default()
            .with_connection_name(LongString::from(name.as_bytes().to_vec()))
    };
    if nodes.len() <= 1 {
        let node = nodes
            .first()
            .cloned()
            .unwrap_or_else(|| with_connection_defaults(url));
        let conn = Connection::connect(&node, props()).await?;
        watch_blocked(conn.status().clone());
        return Ok(conn);
    }
    let start = (uuid::Uuid::new_v4().as_u128() % nodes.len() as u128) as usize;
    let mut last = None;
    for i in 0..nodes.len() {
        let node = &nodes[(start + i) % nodes.len()];
        match tokio::time::timeout(NODE_CONNECT_TIMEOUT, Connection::connect(node, props())).await {
            Ok(Ok(conn)) => {
                tracing::debug!(node = i, connection = name, "connected to a broker node");
                watch_blocked(conn.status().clone());
                return Ok(conn);
            }
            Ok(Err(e)) => last = Some(e),
            Err(_) => {
                last = Some(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the broker node did not accept the connection in time",
                )))
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        lapin::Error::from(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "AMQP_URL names no broker node",
        ))
    }))
}

/// Connections of this process the broker blocks right now
/// (`connection.blocked`: a memory or disk alarm). Publishing on them waits
/// until the alarm clears; the worker acknowledges nothing whose dead letter
/// or event is not confirmed, so it only waits (issue #17).
static BLOCKED: AtomicUsize = AtomicUsize::new(0);

pub fn blocked_connections() -> usize {
    BLOCKED.load(Ordering::SeqCst)
}

/// Follows one connection's blocked state until it is no longer connected.
fn watch_blocked(status: lapin::ConnectionStatus) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    rt.spawn(async move {
        let mut was = false;
        loop {
            let connected = status.connected();
            let now = connected && status.blocked();
            if now != was {
                if now {
                    BLOCKED.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(
                        "the broker blocks publishing on a connection (resource alarm); waiting"
                    );
                } else {
                    BLOCKED.fetch_sub(1, Ordering::SeqCst);
                    if connected {
                        tracing::info!("the broker unblocked the connection");
                    }
                }
                was = now;
            }
            // Watched from Connected on: any end state ends the watch.
            if status.closing() || status.closed() || status.errored() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_url_or_a_comma_separated_list_of_nodes() {
        assert_eq!(
            node_urls("amqp://g:g@127.0.0.1:5672/%2f"),
            vec!["amqp://g:g@127.0.0.1:5672/%2f"]
        );
        assert_eq!(
            node_urls("amqp://a:5672/v, amqp://b:5672/v,,amqp://c:5672/v "),
            vec!["amqp://a:5672/v", "amqp://b:5672/v", "amqp://c:5672/v"]
        );
        assert!(node_urls(" , ").is_empty());
    }

    #[test]
    fn each_node_asks_for_small_frames_and_a_short_heartbeat_unless_its_url_sets_them() {
        assert_eq!(
            with_connection_defaults("amqp://g:g@a:5672/%2f"),
            "amqp://g:g@a:5672/%2f?frame_max=32768&heartbeat=10"
        );
        assert_eq!(
            with_connection_defaults("amqps://g:g@a:5671/v?heartbeat=30"),
            "amqps://g:g@a:5671/v?heartbeat=30&frame_max=32768"
        );
        assert_eq!(
            with_connection_defaults("amqp://a/v?frame_max=131072&heartbeat=5"),
            "amqp://a/v?frame_max=131072&heartbeat=5"
        );
    }

    #[tokio::test]
    async fn when_no_node_answers_connect_fails_without_hanging() {
        // Two addresses where nothing listens: connect tries both and
        // returns an error, it does not hang or panic.
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or(1)
        };
        let url = format!(
            "amqp://g:g@127.0.0.1:{}/%2f,amqp://g:g@127.0.0.1:{}/%2f",
            free(),
            free()
        );
        assert!(connect(&url, "test").await.is_err());
    }
}
