//! The sync-event outbox. Events are written in the transaction of the
//! change they describe, all events of a transaction in one row (view
//! `event_outbox_events` shows one row per event); the relay claims
//! unpublished rows (`FOR UPDATE SKIP LOCKED`, so replicas share the work),
//! publishes them and marks them published in the same transaction.

use sqlx::{PgPool, Postgres, Row, Transaction};

use super::StoreError;
use crate::domain::outcome::Events;

/// Writes the events into the outbox, in the caller's transaction: one row
/// holding all of them, in order (one row and one update per batch, not per
/// change). Each event gets its id (UUIDv7) and time here.
pub async fn write(
    tx: &mut Transaction<'_, Postgres>,
    events: &mut Events,
) -> Result<(), StoreError> {
    if events.is_empty() {
        return Ok(());
    }
    let mut keys: Vec<String> = Vec::with_capacity(events.len());
    let mut payloads: Vec<String> = Vec::with_capacity(events.len());
    for e in events.take() {
        let key = e.routing_key();
        let event = las_contracts::SyncEventV1 {
            schema: las_contracts::SyncEventSchema::V1,
            event_id: uuid::Uuid::now_v7(),
            event_type: e.event_type,
            brin: e.brin,
            occurred_at: chrono::Utc::now(),
            message_id: e.message_id,
            entity_kind: e.entity_kind,
            las_key: e.las_key,
            changed_fields: e.changed_fields,
            reason: e.reason,
            portal_profile_id: e.portal_profile_id,
        };
        if let Ok(payload) = serde_json::to_string(&event) {
            keys.push(key);
            payloads.push(payload);
        }
    }
    sqlx::query("INSERT INTO event_outbox (routing_keys, events) VALUES ($1, $2::text[]::json[])")
        .bind(&keys)
        .bind(&payloads)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// One outbox row: its id and its events as (routing key, JSON body).
pub struct OutboxRow {
    pub id: i64,
    pub events: Vec<(String, String)>,
}

/// Claims up to `rows` unpublished outbox rows, oldest first, locked for the
/// caller's transaction (other replicas skip them).
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    rows: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let rows = sqlx::query(
        "SELECT id, routing_key, payload::text AS payload, routing_keys, events::text[] AS events
             FROM event_outbox
             WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(rows)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        // Rows from before migration 0006 hold one event in routing_key/payload.
        let (keys, payloads): (Vec<String>, Vec<String>) =
            match row.try_get::<Option<Vec<String>>, _>("events")? {
                Some(events) => (
                    row.try_get::<Option<Vec<String>>, _>("routing_keys")?
                        .unwrap_or_default(),
                    events,
                ),
                None => (
                    vec![row.try_get::<String, _>("routing_key")?],
                    vec![row.try_get::<String, _>("payload")?],
                ),
            };
        out.push(OutboxRow {
            id,
            events: keys.into_iter().zip(payloads).collect(),
        });
    }
    Ok(out)
}

/// Marks claimed rows published, in the claiming transaction.
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query("UPDATE event_outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Unpublished events in the outbox.
pub async fn depth(pool: &PgPool) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT COALESCE(sum(COALESCE(cardinality(events), 1)), 0)::int8
                 FROM event_outbox WHERE published_at IS NULL",
    )
    .fetch_one(pool)
    .await?)
}
