//! Dead letters: reading their headers (why, when, from where), and the
//! sweep that drops the ones past their term (R12: message bodies carry
//! personal data; `DEAD_LETTER_RETENTION_DAYS`).

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use las_contracts::{DEAD_LETTER_QUEUE, dead_letter};
use serde::Serialize;

use super::{BusError, connect, declare_topology};
use crate::domain::rules::retention::{DeadLetterTerm, dead_letter_term};

/// What `dlq list` shows of a dead letter: metadata only, no body.
#[derive(Debug, Clone, Serialize)]
pub struct LetterInfo {
    /// `x-las-message-id`, else the first 16 hex digits of the body's FNV-1a hash.
    pub id: String,
    pub message_id: Option<String>,
    /// `worker` (x-las-* headers) or `broker` (x-death).
    pub dead_lettered_by: &'static str,
    pub reason_code: String,
    pub reason: Option<String>,
    pub original_exchange: Option<String>,
    pub original_routing_key: Option<String>,
    pub rejected_at: Option<String>,
    /// Times the dead-letter queue handed the message out before (x-delivery-count).
    pub deliveries: Option<i64>,
    pub bytes: usize,
    /// Whole days since it was dead-lettered (`dlq list`); its term is
    /// `DEAD_LETTER_RETENTION_DAYS`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_days: Option<i64>,
}

impl LetterInfo {
    /// How long ago it was dead-lettered, when the headers say.
    pub fn age(&self, now: chrono::DateTime<chrono::Utc>) -> Option<chrono::Duration> {
        let at = chrono::DateTime::parse_from_rfc3339(self.rejected_at.as_deref()?).ok()?;
        Some(now - at.with_timezone(&chrono::Utc))
    }
}

/// FNV-1a, 64 bits: a stable id for a body without a message id.
pub fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

pub fn text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub fn number(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

pub fn header<'a>(h: &'a FieldTable, key: &str) -> Option<&'a AMQPValue> {
    h.inner().get(key)
}

/// Reads a dead letter's headers: the worker's `x-las-*`, else RabbitMQ's
/// `x-death` (newest death first) and `x-first-death-*`.
pub fn describe(headers: Option<&FieldTable>, routing_key: &str, body: &[u8]) -> LetterInfo {
    let empty = FieldTable::default();
    let h = headers.unwrap_or(&empty);
    let las = |k: &str| header(h, k).and_then(text);
    let death: Option<&FieldTable> = match header(h, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().find_map(|v| match v {
            AMQPValue::FieldTable(t) => Some(t),
            _ => None,
        }),
        _ => None,
    };
    let death_text = |k: &str| death.and_then(|t| header(t, k)).and_then(text);
    let message_id = las(dead_letter::MESSAGE_ID);
    let by_worker = las(dead_letter::REASON_CODE).is_some();
    let reason_code = las(dead_letter::REASON_CODE)
        .or_else(|| death_text("reason"))
        .or_else(|| las("x-first-death-reason"))
        .unwrap_or_else(|| "unknown".to_owned());
    let reason = las(dead_letter::REASON).or_else(|| {
        death_text("queue")
            .map(|q| format!("dead-lettered by RabbitMQ from queue {q} ({reason_code})"))
    });
    let original_exchange = las(dead_letter::ORIGINAL_EXCHANGE)
        .or_else(|| death_text("exchange"))
        .or_else(|| las("x-first-death-exchange"));
    let death_key = death.and_then(|t| match header(t, "routing-keys") {
        Some(AMQPValue::FieldArray(a)) => a.as_slice().iter().find_map(text),
        _ => None,
    });
    let original_routing_key = las(dead_letter::ORIGINAL_ROUTING_KEY)
        .or(death_key)
        .or_else(|| (!routing_key.is_empty()).then(|| routing_key.to_owned()));
    let rejected_at = las(dead_letter::REJECTED_AT).or_else(|| {
        death
            .and_then(|t| header(t, "time"))
            .and_then(number)
            .and_then(|s| chrono::DateTime::from_timestamp(s, 0))
            .map(|t| t.to_rfc3339())
    });
    LetterInfo {
        id: message_id
            .clone()
            .unwrap_or_else(|| format!("{:016x}", fnv1a64(body))),
        message_id,
        dead_lettered_by: if by_worker || death.is_none() {
            "worker"
        } else {
            "broker"
        },
        reason_code,
        reason,
        original_exchange,
        original_routing_key,
        rejected_at,
        deliveries: header(h, "x-delivery-count").and_then(number),
        bytes: body.len(),
        age_days: None,
    }
}

/// A dead letter taken from the queue, not acknowledged yet.
pub struct Letter {
    pub info: LetterInfo,
    pub delivery: Delivery,
}

/// A connection holding every dead letter, unacknowledged: `dlq` commands
/// and the sweep take them all, act on some and give the rest back.
pub struct Taken {
    pub conn: Connection,
    pub ch: Channel,
    pub letters: Vec<Letter>,
}

/// Takes every dead letter with `basic.get` (not acknowledged) on one channel.
pub async fn take_all(url: &str, delivery_limit: i64, name: &str) -> Result<Taken, BusError> {
    let conn = connect(url, name).await?;
    let ch = conn.create_channel().await?;
    declare_topology(&ch, delivery_limit).await?;
    let mut letters = Vec::new();
    while let Some(m) = ch
        .basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false })
        .await?
    {
        let d = m.delivery;
        let info = describe(
            d.properties.headers().as_ref(),
            d.routing_key.as_str(),
            &d.data,
        );
        letters.push(Letter { info, delivery: d });
    }
    Ok(Taken { conn, ch, letters })
}

impl Taken {
    /// Gives the letters back to the queue and closes the connection.
    pub async fn release(self, letters: Vec<Letter>) -> Result<(), BusError> {
        for l in &letters {
            l.delivery
                .acker
                .nack(BasicNackOptions {
                    multiple: false,
                    requeue: true,
                })
                .await?;
        }
        let _ = self.ch.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
        Ok(())
    }
}

/// What one sweep of the dead-letter queue did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Dropped: past their term.
    pub expired: u64,
    /// Kept, but due within the warning window.
    pub expiring: u64,
}

/// Takes every dead letter, drops those past `term_days` (acknowledged, so
/// gone) and gives the others back. A dead letter without a date is kept.
pub async fn sweep(
    url: &str,
    delivery_limit: i64,
    now: chrono::DateTime<chrono::Utc>,
    term_days: u32,
) -> Result<Sweep, BusError> {
    let mut taken = take_all(url, delivery_limit, "las-worker dead-letter sweep").await?;
    let mut out = Sweep::default();
    let mut keep = Vec::new();
    for l in std::mem::take(&mut taken.letters) {
        match dead_letter_term(l.info.age(now), term_days) {
            DeadLetterTerm::Expired => {
                l.delivery.acker.ack(BasicAckOptions::default()).await?;
                out.expired += 1;
            }
            DeadLetterTerm::Expiring => {
                out.expiring += 1;
                keep.push(l);
            }
            DeadLetterTerm::Kept => keep.push(l),
        }
    }
    taken.release(keep).await?;
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString, ShortString};

    fn ls(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v.as_bytes().to_vec()))
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn worker_headers() {
        let mut h = FieldTable::default();
        h.insert(ShortString::from("x-las-reason-code"), ls("unknown_brin"));
        h.insert(
            ShortString::from("x-las-original-exchange"),
            ls("las.changes"),
        );
        h.insert(
            ShortString::from("x-las-original-routing-key"),
            ls("las.99ZZ.student.upserted"),
        );
        h.insert(ShortString::from("x-las-message-id"), ls("m-1"));
        let i = describe(Some(&h), "las.99ZZ.student.upserted", b"{}");
        assert_eq!(i.id, "m-1");
        assert_eq!(i.reason_code, "unknown_brin");
        assert_eq!(i.dead_lettered_by, "worker");
        assert_eq!(i.original_exchange.as_deref(), Some("las.changes"));
    }

    #[test]
    fn broker_x_death() {
        let mut death = FieldTable::default();
        death.insert("reason".into(), ls("delivery_limit"));
        death.insert("queue".into(), ls("las-worker.changes"));
        death.insert("exchange".into(), ls("las.changes"));
        let mut keys = FieldArray::default();
        keys.push(ls("las.12AB.student.upserted"));
        death.insert("routing-keys".into(), AMQPValue::FieldArray(keys));
        death.insert("time".into(), AMQPValue::Timestamp(1_700_000_000));
        let mut arr = FieldArray::default();
        arr.push(AMQPValue::FieldTable(death));
        let mut h = FieldTable::default();
        h.insert("x-death".into(), AMQPValue::FieldArray(arr));
        let i = describe(Some(&h), "", b"body");
        assert_eq!(i.reason_code, "delivery_limit");
        assert_eq!(i.dead_lettered_by, "broker");
        assert_eq!(i.original_exchange.as_deref(), Some("las.changes"));
        assert_eq!(
            i.original_routing_key.as_deref(),
            Some("las.12AB.student.upserted")
        );
        assert_eq!(i.id, format!("{:016x}", fnv1a64(b"body")));
        assert!(i.rejected_at.is_some());
    }
}
