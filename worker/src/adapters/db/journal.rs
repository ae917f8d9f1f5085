//! The change journal: one row per applied message, its decisions (rule ids).

use sqlx::{PgPool, Postgres, Transaction};

use super::*;
use crate::domain::outcome::Journal;

/// Writes a batch's journal entries in one statement.
pub async fn write(
    tx: &mut Transaction<'_, Postgres>,
    journal: &Journal,
) -> Result<(), StoreError> {
    if journal.school_id.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO change_journal (school_id, message_id, entity_kind, las_key, version, decisions)
         SELECT s, m, k, l, v, CASE WHEN d = '' THEN '{}'::text[] ELSE string_to_array(d, ',') END
         FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[]) AS t(s, m, k, l, v, d)",
    )
    .bind(&journal.school_id)
    .bind(&journal.message_id)
    .bind(&journal.kind)
    .bind(&journal.las_key)
    .bind(&journal.version)
    .bind(&journal.decisions)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes change-journal entries older than `days` days, in slices so no
/// statement holds many locks for long; returns how many it deleted. `0`
/// keeps everything (deletes nothing).
pub async fn prune(pool: &PgPool, days: u32) -> Result<u64, StoreError> {
    if days == 0 {
        return Ok(0);
    }
    let days = i32::try_from(days).unwrap_or(i32::MAX);
    let mut total = 0;
    loop {
        let n = sqlx::query(
            "DELETE FROM change_journal WHERE id IN (
                 SELECT id FROM change_journal
                 WHERE applied_at < now() - make_interval(days => $1)
                 LIMIT 5000)",
        )
        .bind(days)
        .execute(pool)
        .await?
        .rows_affected();
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

/// The school's id for a BRIN, or `None` when it is not linked.
pub async fn school_id(pool: &PgPool, brin: &str) -> Result<Option<i64>, StoreError> {
    Ok(sqlx::query_scalar("SELECT id FROM schools WHERE brin = $1")
        .bind(brin)
        .fetch_optional(pool)
        .await?)
}

/// One journal entry: message id, when applied, version, decision codes.
pub type JournalRow = (uuid::Uuid, chrono::DateTime<chrono::Utc>, i64, Vec<String>);

/// The journal of one profile or group, oldest first.
pub async fn history(
    pool: &PgPool,
    school_id: i64,
    kind: &str,
    las_key: &str,
) -> Result<Vec<JournalRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT message_id, applied_at, version, decisions FROM change_journal
             WHERE school_id = $1 AND entity_kind = $2 AND las_key = $3
             ORDER BY applied_at, id",
    )
    .bind(school_id)
    .bind(kind)
    .bind(las_key)
    .fetch_all(pool)
    .await?)
}

/// Whether a portal decision (coupling, erasure) with this message id was
/// applied already: a redelivery is a duplicate, checked before the rules so
/// it is never reported as a refusal.
pub(super) async fn already_applied(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    message_id: uuid::Uuid,
) -> Result<bool, StoreError> {
    let seen: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM processed_messages WHERE message_id = $1")
            .bind(message_id)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(seen.is_some())
}

/// Records a portal decision as applied (its dedupe record), in the
/// transaction that applies it.
pub(super) async fn mark_applied(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    message_id: uuid::Uuid,
    school_id: i64,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO processed_messages (message_id, school_id) VALUES ($1, $2)")
        .bind(message_id)
        .bind(school_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
