//! Full snapshots (R12): members, completion, the deletion guard's hold.

use las_contracts::{Change, LasChangeV1};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::batch::School;
use crate::domain::batch::profile_kind;
use crate::domain::outcome::BatchEffects;
use crate::domain::rules::{self};

/// R12: upserts that belong to a full snapshot are remembered as included.
pub(super) async fn record_snapshot_members(
    tx: &mut Transaction<'_, Postgres>,
    accepted: &[(usize, &LasChangeV1, i64)],
) -> Result<(), StoreError> {
    let mut snap = Vec::new();
    let mut school = Vec::new();
    let mut kind = Vec::new();
    let mut key = Vec::new();
    for (_, c, s) in accepted {
        let (Some(id), Some(k)) = (c.snapshot_id, profile_kind(&c.change)) else {
            continue;
        };
        if matches!(
            c.change,
            Change::StudentRemoved(_) | Change::GuardianRemoved(_) | Change::StaffRemoved(_)
        ) {
            continue;
        }
        let Some(las_key) = c.change.las_key() else {
            continue;
        };
        snap.push(id);
        school.push(*s);
        kind.push(k.as_str());
        key.push(las_key.trim().to_owned());
    }
    if snap.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO snapshots (id, school_id) SELECT DISTINCT i, s FROM UNNEST($1::uuid[], $2::int8[]) AS t(i, s)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&snap)
    .bind(&school)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "WITH m AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS t(i, k, l)),
              ins AS (INSERT INTO snapshot_members (snapshot_id, kind, las_key) SELECT i, k, l FROM m ON CONFLICT DO NOTHING)
         UPDATE snapshots s SET records_arrived = records_arrived + n.c
         FROM (SELECT i, count(*) AS c FROM m GROUP BY i) n WHERE s.id = n.i",
    )
    .bind(&snap)
    .bind(&kind)
    .bind(&key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// R12: at `snapshot.completed`, every profile of the school the snapshot did
/// not include is deactivated, unless that is more than the deletion guard
/// allows or the count does not match what arrived: then it is held for an
/// operator (`las-worker snapshot release|discard`).
pub(super) async fn complete_snapshot(
    tx: &mut Transaction<'_, Postgres>,
    school: &School,
    sn: &las_contracts::SnapshotCompleted,
    message_id: Uuid,
    effects: &mut BatchEffects,
) -> Result<rules::Action, StoreError> {
    sqlx::query(
        "INSERT INTO snapshots (id, school_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(sn.snapshot_id)
    .bind(school.id)
    .execute(&mut **tx)
    .await?;
    let (status, arrived): (String, i64) =
        sqlx::query_as("SELECT status, records_arrived FROM snapshots WHERE id = $1 FOR UPDATE")
            .bind(sn.snapshot_id)
            .fetch_one(&mut **tx)
            .await?;
    if status != "open" {
        return Ok(rules::already_completed(&status));
    }
    let (active, missing) = snapshot_counts(tx, school.id, sn.snapshot_id).await?;
    let held = rules::held_reason(
        sn.records_sent,
        arrived as u64,
        active as u64,
        missing as u64,
        school.settings.snapshot_guard_percent,
    );
    sqlx::query("UPDATE snapshots SET records_sent = $2, would_deactivate = $3, completed_at = now() WHERE id = $1")
        .bind(sn.snapshot_id)
        .bind(sn.records_sent as i64)
        .bind(missing)
        .execute(&mut **tx)
        .await?;
    if let Some(reason) = held {
        sqlx::query("UPDATE snapshots SET status = 'held', held_reason = $2 WHERE id = $1")
            .bind(sn.snapshot_id)
            .bind(&reason)
            .execute(&mut **tx)
            .await?;
        tracing::error!(brin = %school.brin, snapshot_id = %sn.snapshot_id, reason = %reason, "full snapshot held: nothing deactivated; an operator must release or discard it (las-worker snapshot release|discard)");
        effects.snapshots_held += 1;
        return Ok(rules::Action::SnapshotHeld);
    }
    deactivate_missing(tx, school, sn.snapshot_id, Some(message_id), effects).await?;
    effects.snapshots_applied += 1;
    Ok(rules::Action::SnapshotApplied)
}

/// (active profiles of the school, of which not in the snapshot).
pub(super) async fn snapshot_counts(
    tx: &mut Transaction<'_, Postgres>,
    school_id: i64,
    snapshot: Uuid,
) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE NOT EXISTS (
                    SELECT 1 FROM snapshot_members m WHERE m.snapshot_id = $2 AND m.kind = p.kind AND m.las_key = p.las_key))
         FROM profiles p WHERE p.school_id = $1 AND p.status IN ('active', 'held') AND p.las_key IS NOT NULL",
    )
    .bind(school_id)
    .bind(snapshot)
    .fetch_one(&mut **tx)
    .await?)
}

pub(super) async fn deactivate_missing(
    tx: &mut Transaction<'_, Postgres>,
    school: &School,
    snapshot: Uuid,
    message_id: Option<Uuid>,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    let gone: Vec<(i64, String, String)> = sqlx::query_as(
        "UPDATE profiles p SET status = 'deactivated', deactivated_at = now(), deactivation_reason = 'missing_from_snapshot',
                in_intake = false, updated_at = now()
         WHERE p.school_id = $1 AND p.status IN ('active', 'held')
           -- R13: a portal profile no LAS record claimed is the portal's, never the snapshot's.
           AND p.las_key IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM snapshot_members m WHERE m.snapshot_id = $2 AND m.kind = p.kind AND m.las_key = p.las_key)
         RETURNING p.id, p.kind, p.las_key",
    )
    .bind(school.id)
    .bind(snapshot)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM memberships m USING profiles p
         WHERE p.id = ANY($1) AND m.school_id = p.school_id AND m.member_kind = p.kind AND m.member_key = p.las_key",
    )
    .bind(gone.iter().map(|g| g.0).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE snapshots SET status = 'applied', closed_at = now() WHERE id = $1")
        .bind(snapshot)
        .execute(&mut **tx)
        .await?;
    for (_, kind, key) in &gone {
        *effects
            .profiles
            .entry((static_kind(kind), "deactivated"))
            .or_default() += 1;
        effects.events.push(
            las_contracts::SyncEventType::ProfileDeactivated,
            &school.brin,
            message_id,
            Some(kind),
            Some(key),
            vec![],
            Some("missing_from_snapshot".to_owned()),
        );
    }
    let students: Vec<i64> = gone
        .iter()
        .filter(|g| g.1 == "student")
        .map(|g| g.0)
        .collect();
    reconcile_guardians(tx, &students, &[], vec![], effects).await?;
    Ok(())
}

/// A held full snapshot, for operators.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SnapshotView {
    pub snapshot_id: Uuid,
    pub status: String,
    pub records_sent: Option<i64>,
    pub records_arrived: i64,
    pub would_deactivate: Option<i64>,
    pub held_reason: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Store {
    /// Snapshots of a school, newest first.
    pub async fn snapshots(&self, brin: &str) -> Result<Vec<SnapshotView>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.id AS snapshot_id, s.status, s.records_sent, s.records_arrived, s.would_deactivate, s.held_reason, s.started_at, s.completed_at
             FROM snapshots s JOIN schools sc ON sc.id = s.school_id WHERE sc.brin = $1 ORDER BY s.started_at DESC",
        )
        .bind(brin)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Held snapshots over all schools (the `las_snapshots_held` gauge).
    pub async fn held_snapshots(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE status = 'held'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// An operator releases the school's held snapshot (its deactivations are
    /// applied as they stand now) or discards it. Returns the number of
    /// profiles deactivated, or `None` when the school has no held snapshot.
    pub async fn resolve_held_snapshot(
        &self,
        brin: &str,
        release: bool,
    ) -> Result<Option<(Uuid, u64, BatchEffects)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let schools = load_schools(&mut tx, &[brin.to_owned()]).await?;
        let Some(school) = schools.get(brin) else {
            return Ok(None);
        };
        let Some(id): Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM snapshots WHERE school_id = $1 AND status = 'held' ORDER BY completed_at DESC NULLS LAST LIMIT 1 FOR UPDATE",
        )
        .bind(school.id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let mut effects = BatchEffects::default();
        if release {
            deactivate_missing(&mut tx, school, id, None, &mut effects).await?;
        } else {
            sqlx::query(
                "UPDATE snapshots SET status = 'discarded', closed_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let n = effects.profiles.values().sum();
        event_outbox::write(&mut tx, &mut effects.events).await?;
        tx.commit().await?;
        Ok(Some((id, n, effects)))
    }
}
