//! The depth and consumer count of the worker's own queues, read with a
//! passive `queue.declare` (no management plugin needed), for
//! `las_queue_messages` and `las_queue_consumers` (issue #16). The dead-letter
//! queue is among them, so the letters the broker dead-letters itself (after
//! the delivery limit, with `x-death`) are seen too.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use las_contracts::{CHANGES_QUEUE, DEAD_LETTER_QUEUE, PORTAL_QUEUE};

use super::{BusError, connect, s};

/// The worker's queues by the role label the metrics use.
pub const QUEUES: [(&str, &str); 3] = [
    ("changes", CHANGES_QUEUE),
    ("portal", PORTAL_QUEUE),
    ("dead_letter", DEAD_LETTER_QUEUE),
];

/// Ready messages and consumers of one queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueStats {
    pub role: &'static str,
    pub messages: u32,
    pub consumers: u32,
}

/// A connection kept between rounds; reopened when the broker closed it.
#[derive(Default)]
pub struct QueueWatcher {
    open: Option<(Connection, Channel)>,
}

impl QueueWatcher {
    /// One round: the stats of every queue that exists. A queue that does
    /// not exist yet (a fresh broker before the first consumer declared it)
    /// is left out; the channel the broker closed for it is reopened.
    pub async fn read(&mut self, url: &str) -> Result<Vec<QueueStats>, BusError> {
        let mut out = Vec::with_capacity(QUEUES.len());
        for (role, name) in QUEUES {
            let ch = self.channel(url).await?;
            let passive = QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            };
            match ch
                .queue_declare(s(name), passive, FieldTable::default())
                .await
            {
                Ok(q) => out.push(QueueStats {
                    role,
                    messages: q.message_count(),
                    consumers: q.consumer_count(),
                }),
                Err(e) => {
                    // 404 closes the channel; anything else may be the
                    // connection: start over next time.
                    let conn_ok = self
                        .open
                        .as_ref()
                        .is_some_and(|(c, _)| c.status().connected());
                    if conn_ok {
                        if let Some((c, _)) = self.open.take() {
                            match c.create_channel().await {
                                Ok(ch) => self.open = Some((c, ch)),
                                Err(e) => return Err(e.into()),
                            }
                        }
                    } else {
                        self.open = None;
                        return Err(e.into());
                    }
                }
            }
        }
        Ok(out)
    }

    async fn channel(&mut self, url: &str) -> Result<Channel, BusError> {
        if let Some((c, ch)) = &self.open
            && c.status().connected()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        let conn = connect(url, "las-worker queue stats").await?;
        let ch = conn.create_channel().await?;
        self.open = Some((conn, ch.clone()));
        Ok(ch)
    }

    /// Closes the connection at shutdown.
    pub async fn close(&mut self) {
        if let Some((c, _)) = self.open.take() {
            let _ = c.close(200, s("shutdown")).await;
        }
    }
}
