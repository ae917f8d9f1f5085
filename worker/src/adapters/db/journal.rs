//! The change journal: one row per applied message, its decisions (rule ids).

use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::rules::Decision;

#[derive(Default)]
pub(super) struct Journal {
    pub(super) school_id: Vec<i64>,
    pub(super) message_id: Vec<Uuid>,
    pub(super) kind: Vec<String>,
    pub(super) las_key: Vec<String>,
    pub(super) version: Vec<i64>,
    pub(super) decisions: Vec<String>,
}

impl Journal {
    pub(super) fn push(
        &mut self,
        school_id: i64,
        message_id: Uuid,
        kind: &str,
        las_key: &str,
        version: i64,
        decisions: &[Decision],
    ) {
        self.school_id.push(school_id);
        self.message_id.push(message_id);
        self.kind.push(kind.to_owned());
        self.las_key.push(las_key.to_owned());
        self.version.push(version);
        let mut codes = String::with_capacity(decisions.len() * 24);
        for (i, d) in decisions.iter().enumerate() {
            if i > 0 {
                codes.push(',');
            }
            d.write_code(&mut codes);
        }
        self.decisions.push(codes);
    }

    pub(super) async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.school_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO change_journal (school_id, message_id, entity_kind, las_key, version, decisions)
             SELECT s, m, k, l, v, CASE WHEN d = '' THEN '{}'::text[] ELSE string_to_array(d, ',') END
             FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[]) AS t(s, m, k, l, v, d)",
        )
        .bind(&self.school_id)
        .bind(&self.message_id)
        .bind(&self.kind)
        .bind(&self.las_key)
        .bind(&self.version)
        .bind(&self.decisions)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
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
