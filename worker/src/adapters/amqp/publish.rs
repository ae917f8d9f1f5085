//! Publishing: dead letters (on the consuming, transactional channel) and
//! messages with publisher confirms (the `publish` command, demo and tests).

use lapin::BasicProperties;
use lapin::Channel;
use lapin::message::Delivery;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use las_contracts::{DEAD_LETTER_EXCHANGE, dead_letter};

use super::{BusError, connect, ls, s};
use crate::domain::message::Rejection;

/// Publishes a dead letter on the (transactional) consuming channel: the
/// body unchanged, the original headers, and the reason headers.
pub async fn publish_dead_letter(
    ch: &Channel,
    d: &Delivery,
    r: &Rejection,
) -> Result<(), BusError> {
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

/// A connection and a channel in confirm mode, the topology declared.
pub async fn confirm_channel(
    url: &str,
    name: &str,
    delivery_limit: i64,
) -> Result<(lapin::Connection, Channel), BusError> {
    let conn = connect(url, name).await?;
    let ch = conn.create_channel().await?;
    super::declare_topology(&ch, delivery_limit).await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok((conn, ch))
}

/// Publishes sync events (routing key, JSON body) on `las.sync-events` and
/// waits for every confirm; a nack fails the whole round.
pub async fn sync_events(ch: &Channel, events: &[&(String, String)]) -> Result<usize, BusError> {
    let mut confirms = Vec::with_capacity(events.len());
    for (key, payload) in events {
        let props = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_type("las.sync_event.v1".into());
        confirms.push(
            ch.basic_publish(
                las_contracts::SYNC_EVENTS_EXCHANGE.into(),
                key.as_str().into(),
                BasicPublishOptions::default(),
                payload.as_bytes(),
                props,
            )
            .await?,
        );
    }
    let published = confirms.len();
    for c in confirms {
        if c.await?.is_nack() {
            return Err(BusError::Nacked);
        }
    }
    Ok(published)
}
