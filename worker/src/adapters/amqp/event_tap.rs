//! A queue of one's own on `las.sync-events`, as a service that follows the
//! portal's data has: `las-worker events bind|take` (the demo and support use
//! it to see what other services receive).

use lapin::options::{BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use las_contracts::SYNC_EVENTS_EXCHANGE;

use super::{BusError, connect, declare_topology, s};

/// Declares durable queue `queue` and binds it to the sync events with
/// `routing_key` (`#` for all, `sync.12AB.#` for one school).
pub async fn bind(
    url: &str,
    delivery_limit: i64,
    queue: &str,
    routing_key: &str,
) -> Result<(), BusError> {
    let conn = connect(url, "las-worker events bind").await?;
    let ch = conn.create_channel().await?;
    declare_topology(&ch, delivery_limit).await?;
    ch.queue_declare(
        s(queue),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_bind(
        s(queue),
        s(SYNC_EVENTS_EXCHANGE),
        s(routing_key),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let _ = conn.close(200, "done".into()).await;
    Ok(())
}

/// Takes (and acknowledges) up to `max` messages from `queue`: their bodies.
pub async fn take(url: &str, queue: &str, max: usize) -> Result<Vec<Vec<u8>>, BusError> {
    let conn = connect(url, "las-worker events take").await?;
    let ch = conn.create_channel().await?;
    let mut out = Vec::new();
    while out.len() < max {
        let Some(m) = ch
            .basic_get(s(queue), BasicGetOptions { no_ack: true })
            .await?
        else {
            break;
        };
        out.push(m.delivery.data);
    }
    let _ = conn.close(200, "done".into()).await;
    Ok(out)
}
