//! Read-only views for operators: one profile, counts per school, leftovers.

use std::collections::HashMap;

use chrono::NaiveDate;
use sqlx::Row;

use super::*;
use crate::domain::rules::{Contact, ProfileKind};

/// A portal profile as support staff see it with `las-worker show`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProfileView {
    pub brin: String,
    pub kind: String,
    pub las_key: String,
    pub status: String,
    pub version: i64,
    pub first_name: Option<String>,
    pub name_prefix: Option<String>,
    pub last_name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub street: Option<String>,
    pub postcode: Option<String>,
    pub city: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub emergency_phone: Option<String>,
    pub email: Option<String>,
    pub role: Option<String>,
    pub deactivation_reason: Option<String>,
    pub groups: Vec<GroupRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardians: Option<Vec<LinkRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub students: Option<Vec<LinkRef>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct GroupRef {
    pub las_key: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LinkRef {
    pub las_key: String,
    /// active, deactivated, or `unknown` when the LAS has not sent it yet.
    pub status: String,
}

impl Store {
    /// The portal's profile for support staff, or `None`.
    pub async fn show_profile(
        &self,
        brin: &str,
        kind: ProfileKind,
        las_key: &str,
    ) -> Result<Option<ProfileView>, StoreError> {
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT p.school_id, p.status, p.version, p.role, p.deactivation_reason, p.updated_at, {CONTACT_COLUMNS}
             FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE s.brin = $1 AND p.kind = $2 AND p.las_key = $3 AND p.status <> 'pending'"
        )))
        .bind(brin)
        .bind(kind.as_str())
        .bind(las_key)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let school_id: i64 = row.try_get("school_id")?;
        let contact = contact_from_row(&row)?;
        let groups: Vec<GroupRef> = sqlx::query_as(
            "SELECT DISTINCT group_key AS las_key, group_name AS name FROM portal_group_members
             WHERE school_id = $1 AND member_kind = $2 AND member_key = $3
             ORDER BY 1",
        )
        .bind(school_id)
        .bind(kind.as_str())
        .bind(las_key)
        .fetch_all(&self.pool)
        .await?;
        let (guardians, students) = match kind {
            ProfileKind::Student => (
                Some(
                    sqlx::query_as(
                        "SELECT gs.guardian_key AS las_key, COALESCE(p.status, 'unknown') AS status
                         FROM guardian_students gs
                         LEFT JOIN profiles p ON p.school_id = gs.school_id AND p.kind = 'guardian' AND p.las_key = gs.guardian_key
                         WHERE gs.school_id = $1 AND gs.student_key = $2 ORDER BY gs.guardian_key",
                    )
                    .bind(school_id)
                    .bind(las_key)
                    .fetch_all(&self.pool)
                    .await?,
                ),
                None,
            ),
            ProfileKind::Guardian => (
                None,
                Some(
                    sqlx::query_as(
                        "SELECT gs.student_key AS las_key, COALESCE(p.status, 'unknown') AS status
                         FROM guardian_students gs
                         LEFT JOIN profiles p ON p.school_id = gs.school_id AND p.kind = 'student' AND p.las_key = gs.student_key
                         WHERE gs.school_id = $1 AND gs.guardian_key = $2 ORDER BY gs.student_key",
                    )
                    .bind(school_id)
                    .bind(las_key)
                    .fetch_all(&self.pool)
                    .await?,
                ),
            ),
            ProfileKind::Staff => (None, None),
        };
        Ok(Some(ProfileView {
            brin: brin.to_owned(),
            kind: kind.as_str().to_owned(),
            las_key: las_key.to_owned(),
            status: row.try_get("status")?,
            version: row.try_get("version")?,
            first_name: contact.first_name,
            name_prefix: contact.name_prefix,
            last_name: contact.last_name,
            birth_date: contact.birth_date,
            street: contact.street,
            postcode: contact.postcode,
            city: contact.city,
            phone: contact.phone,
            mobile: contact.mobile,
            emergency_phone: contact.emergency_phone,
            email: contact.email,
            role: row.try_get("role")?,
            deactivation_reason: row.try_get("deactivation_reason")?,
            groups,
            guardians,
            students,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    /// Counts per school for the demo and support: (brin, kind, status, count).
    pub async fn summary(&self) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.brin, p.kind, p.status, count(*) FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE p.status <> 'pending' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A portal group that no LAS group feeds any more (R7).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Leftover {
    pub portal_group_id: i64,
    pub name: Option<String>,
    pub las_key: Option<String>,
    /// `removed_in_las`, `unmapped_at_first_run`, or `replaced_at_first_run`
    /// (the group the worker made for a LAS group that the first run mapped
    /// onto a group of the school; its items moved there).
    pub reason: String,
    pub group_items: i64,
}

impl Store {
    /// R7: portal groups no LAS group feeds: removed in the LAS, not mapped
    /// at the first run, or replaced by a mapped group at the first run. They are never deleted; the school decides.
    pub async fn leftovers(&self, brin: &str) -> Result<Vec<Leftover>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT g.id AS portal_group_id, g.name, g.las_key,
                    CASE WHEN g.las_key IS NOT NULL THEN 'removed_in_las'
                         WHEN g.las_kind IS NOT NULL THEN 'replaced_at_first_run'
                         ELSE 'unmapped_at_first_run' END AS reason,
                    (SELECT count(*) FROM group_items i WHERE i.group_id = g.id) AS group_items
             FROM portal_groups g JOIN schools s ON s.id = g.school_id
             WHERE s.brin = $1 AND g.status = 'detached'
             ORDER BY g.name, g.id",
        )
        .bind(brin)
        .fetch_all(&self.pool)
        .await?)
    }
}

impl Store {
    /// Linked schools, and those of them overdue: they completed a full
    /// snapshot before (the contract's `snapshot.completed`), but none in
    /// the last `hours` hours. Aggregates, not one series per school (#16).
    pub async fn snapshot_freshness(&self, hours: u32) -> Result<(i64, i64), StoreError> {
        Ok(sqlx::query_as(
            "SELECT count(*), count(*) FILTER (WHERE last_done < now() - make_interval(hours => $1))
             FROM (SELECT s.id, max(sn.completed_at) AS last_done
                   FROM schools s LEFT JOIN snapshots sn ON sn.school_id = s.id
                   GROUP BY s.id) x",
        )
        .bind(hours as i32)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The overdue schools themselves (`school overdue`): BRIN and the time
    /// their last full snapshot completed, oldest first.
    pub async fn snapshots_overdue(&self, hours: u32) -> Result<Vec<OverdueSchool>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.brin, max(sn.completed_at) AS last_snapshot_completed_at, s.last_sync_at
             FROM schools s JOIN snapshots sn ON sn.school_id = s.id
             GROUP BY s.id
             HAVING max(sn.completed_at) < now() - make_interval(hours => $1)
             ORDER BY 2",
        )
        .bind(hours as i32)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// A school whose full snapshots stopped arriving.
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub struct OverdueSchool {
    pub brin: String,
    pub last_snapshot_completed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_sync_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The imported fields of these profiles (BRIN, kind, LAS key) as they are
/// now (`import` compares them with what the rules made of them).
pub async fn current_contacts(
    conn: &mut sqlx::PgConnection,
    keys: &[(String, ProfileKind, String)],
) -> Result<HashMap<(String, ProfileKind, String), Contact>, StoreError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT s.brin, p.kind, p.las_key, {CONTACT_COLUMNS}
         FROM profiles p JOIN schools s ON s.id = p.school_id
         JOIN UNNEST($1::text[], $2::text[], $3::text[]) AS t(b, k, l)
           ON s.brin = t.b AND p.kind = t.k AND p.las_key = t.l
         WHERE p.status <> 'pending'"
    )))
    .bind(keys.iter().map(|k| k.0.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.1.as_str()).collect::<Vec<_>>())
    .bind(keys.iter().map(|k| k.2.as_str()).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    let mut out = HashMap::new();
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let Some(kind) = ProfileKind::parse(&kind) else {
            continue;
        };
        out.insert(
            (row.try_get("brin")?, kind, row.try_get("las_key")?),
            contact_from_row(&row)?,
        );
    }
    Ok(out)
}
