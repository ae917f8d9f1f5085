//! Group memberships of profiles and the school's intake group (R9).

use sqlx::{Postgres, Transaction};

use super::*;
use crate::domain::rules::{self, ProfileKind};

/// R9: the school's intake group, created when first needed.
pub(super) async fn ensure_intake_groups(
    tx: &mut Transaction<'_, Postgres>,
    schools: &[i64],
) -> Result<(), StoreError> {
    if schools.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO portal_groups (school_id, las_key, name, group_type, status)
         SELECT s, $2, $3, 'intake', 'active' FROM UNNEST($1::int8[]) AS t(s)
         ON CONFLICT (school_id, las_key) DO NOTHING",
    )
    .bind(schools)
    .bind(rules::INTAKE_GROUP_KEY)
    .bind(rules::INTAKE_GROUP_NAME)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Group memberships by LAS key.
#[derive(Default)]
pub(super) struct Members {
    pub(super) del_school: Vec<i64>,
    pub(super) del_kind: Vec<&'static str>,
    pub(super) del_key: Vec<String>,
    pub(super) del_all_sources: Vec<bool>,
    pub(super) ins_school: Vec<i64>,
    pub(super) ins_kind: Vec<&'static str>,
    pub(super) ins_key: Vec<String>,
    pub(super) ins_group: Vec<String>,
}

impl Members {
    pub(super) fn replace(
        &mut self,
        school_id: i64,
        kind: ProfileKind,
        key: &str,
        groups: &[String],
        removed: bool,
    ) {
        if kind == ProfileKind::Guardian {
            return;
        }
        self.del_school.push(school_id);
        self.del_kind.push(kind.as_str());
        self.del_key.push(key.to_owned());
        // R12: a removed profile leaves every group, also those a subclass put it in.
        self.del_all_sources.push(removed);
        self.add(school_id, kind, key, groups);
    }

    /// The groups of a profile this transaction inserted: it has no
    /// memberships of its own yet (only the profile's own writes add source
    /// `profile` rows), so nothing needs deleting first.
    pub(super) fn add(&mut self, school_id: i64, kind: ProfileKind, key: &str, groups: &[String]) {
        if kind == ProfileKind::Guardian {
            return;
        }
        for g in groups {
            self.ins_school.push(school_id);
            self.ins_kind.push(kind.as_str());
            self.ins_key.push(key.to_owned());
            self.ins_group.push(g.clone());
        }
    }

    pub(super) async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if !self.del_school.is_empty() {
            sqlx::query(
                "DELETE FROM memberships m
                 USING UNNEST($1::int8[], $2::text[], $3::text[], $4::bool[]) AS t(s, k, l, a)
                 WHERE m.school_id = t.s AND m.member_kind = t.k AND m.member_key = t.l
                   AND (t.a OR m.source = 'profile')",
            )
            .bind(&self.del_school)
            .bind(&self.del_kind)
            .bind(&self.del_key)
            .bind(&self.del_all_sources)
            .execute(&mut **tx)
            .await?;
        }
        if !self.ins_school.is_empty() {
            sqlx::query(
                "INSERT INTO memberships (school_id, member_kind, member_key, group_key, source)
                 SELECT s, k, l, g, 'profile' FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[]) AS t(s, k, l, g)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.ins_school)
            .bind(&self.ins_kind)
            .bind(&self.ins_key)
            .bind(&self.ins_group)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}
