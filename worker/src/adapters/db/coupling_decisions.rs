//! R13: the school's decisions about LAS records that wait to be coupled
//! (`portal.coupling.v1`, `las-worker profiles couple|create|uncouple`), and
//! the "Niet gekoppelde profielen" view. The rules are in
//! `domain::rules::coupling`.

use std::collections::HashMap;

use chrono::NaiveDate;
use las_contracts::{CouplingAction, CouplingV1, LasChangeV1, RejectReason};
use sqlx::{Postgres, Row, Transaction};

use super::*;
use crate::domain::batch::{ProfileKey, School};
use crate::domain::message::Rejection;
use crate::domain::model::{Action, ProfileKind};
use crate::domain::outcome::Journal;
use crate::domain::rules::coupling::{self as rule, WaitReason};

/// A school's decision about a LAS record (`portal.coupling.v1`, R13):
/// couple it to a portal profile, give it a new profile, or undo a coupling.
/// A decision the worker cannot carry out is rejected with a readable reason
/// and changes nothing.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_coupling(
    tx: &mut Transaction<'_, Postgres>,
    msg: &CouplingV1,
    index: usize,
    today: NaiveDate,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    let reject = |reason: RejectReason, text: String| {
        Some(MessageOutcome::Rejected(
            Rejection::new(reason, text).with_message_id(msg.message_id),
        ))
    };
    let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHOOL_COLUMNS} FROM schools WHERE brin = $1"
    )))
    .bind(&msg.brin)
    .fetch_optional(&mut **tx)
    .await?
    else {
        outcomes[index] = reject(
            RejectReason::UnknownBrin,
            format!("no portal is linked to BRIN {} (R6)", msg.brin),
        );
        return Ok(());
    };
    let school = School {
        id: row.try_get("id")?,
        brin: msg.brin.clone(),
        settings: settings_from_row(&row)?,
    };
    // A redelivered decision changes nothing (checked before the rules, so
    // a redelivery is a duplicate, not a refusal).
    if already_applied(tx, msg.message_id).await? {
        outcomes[index] = Some(MessageOutcome::Duplicate);
        return Ok(());
    }
    let Some(kind) = ProfileKind::parse(msg.entity_kind.trim()) else {
        outcomes[index] = reject(
            RejectReason::ValidationFailed,
            "field `entity_kind` must be student, guardian or staff".to_owned(),
        );
        return Ok(());
    };
    let key = msg.las_key.trim().to_owned();
    let wait: Option<(i64, serde_json::Value)> = sqlx::query_as(
        "SELECT version, change FROM coupling_waits
         WHERE school_id = $1 AND kind = $2 AND las_key = $3 FOR UPDATE",
    )
    .bind(school.id)
    .bind(kind.as_str())
    .bind(&key)
    .fetch_optional(&mut **tx)
    .await?;
    let check = match msg.action {
        CouplingAction::Couple => {
            let target_id = msg.portal_profile_id.unwrap_or_default();
            let target = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT id, school_id, kind, las_key, status, role, {CONTACT_COLUMNS}
                 FROM profiles WHERE id = $1 FOR UPDATE"
            )))
            .bind(target_id)
            .fetch_optional(&mut **tx)
            .await?;
            let t = target
                .as_ref()
                .map(|r| -> Result<rule::Target, sqlx::Error> {
                    Ok(rule::Target {
                        id: r.try_get("id")?,
                        school_id: r.try_get("school_id")?,
                        kind: ProfileKind::parse(&r.try_get::<String, _>("kind")?),
                        las_key: r.try_get("las_key")?,
                        status: r.try_get("status")?,
                    })
                })
                .transpose()?;
            rule::check_couple(
                &school.brin,
                school.id,
                kind,
                &key,
                wait.is_some(),
                target_id,
                t.as_ref(),
            )
            .and(Ok(target))
        }
        CouplingAction::Create => {
            rule::check_create(&school.brin, kind, &key, wait.is_some()).map(|_| None)
        }
        CouplingAction::Uncouple => Ok(None),
    };
    let target = match check {
        Ok(t) => t,
        Err(r) => {
            outcomes[index] = reject(r.reason, r.text);
            return Ok(());
        }
    };
    if msg.action == CouplingAction::Uncouple {
        return uncouple(
            tx, msg, index, &school, kind, &key, outcomes, journal, effects,
        )
        .await;
    }
    mark_applied(tx, msg.message_id, school.id).await?;
    let Some((_, stored)) = wait else {
        return Ok(());
    };
    let mut change: LasChangeV1 = serde_json::from_value(stored).map_err(|_| unreadable_wait())?;
    // The decision is what applies the stored record now: the journal, the
    // profile's last message and the sync event name the decision's message.
    change.message_id = msg.message_id;
    let pk: ProfileKey = (school.id, kind, key.clone());
    delete_waits(tx, std::slice::from_ref(&pk)).await?;
    let (forced, label) = match &target {
        Some(r) => (
            Forced::Couple {
                id: r.try_get("id")?,
                state: Box::new(rule::coupled_state(
                    contact_from_row(r)?,
                    r.try_get("role")?,
                )),
            },
            "manual",
        ),
        None => (Forced::New, "created"),
    };
    *effects.couplings.entry(label).or_default() += 1;
    let schools: HashMap<i64, &School> = HashMap::from([(school.id, &school)]);
    apply_profiles(
        tx,
        &[(index, &change, school.id)],
        &schools,
        today,
        outcomes,
        journal,
        effects,
        &HashMap::from([(pk, forced)]),
    )
    .await?;
    Ok(())
}

/// R13 uncouple: the portal profile keeps its data, role and portal-only
/// data but loses the LAS key (and so its LAS groups and links); the LAS
/// record, as the portal last had it, waits for the school's decision again.
#[allow(clippy::too_many_arguments)]
async fn uncouple(
    tx: &mut Transaction<'_, Postgres>,
    msg: &CouplingV1,
    index: usize,
    school: &School,
    kind: ProfileKind,
    key: &str,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, version, las_group_keys, {CONTACT_COLUMNS} FROM profiles
         WHERE school_id = $1 AND kind = $2 AND las_key = $3 FOR UPDATE"
    )))
    .bind(school.id)
    .bind(kind.as_str())
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?;
    let coupled_to: Option<i64> = row.as_ref().map(|r| r.try_get("id")).transpose()?;
    let id = match rule::check_uncouple(&school.brin, kind, key, coupled_to, msg.portal_profile_id)
    {
        Ok(id) => id,
        Err(r) => {
            outcomes[index] = Some(MessageOutcome::Rejected(
                Rejection::new(r.reason, r.text).with_message_id(msg.message_id),
            ));
            return Ok(());
        }
    };
    let Some(row) = row else { return Ok(()) };
    mark_applied(tx, msg.message_id, school.id).await?;
    let version: i64 = row.try_get("version")?;
    let group_keys: Vec<String> = match kind {
        ProfileKind::Student => row.try_get("las_group_keys")?,
        _ => {
            sqlx::query_scalar(
                "SELECT group_key FROM memberships
             WHERE school_id = $1 AND member_kind = $2 AND member_key = $3 AND source = 'profile'
             ORDER BY group_key",
            )
            .bind(school.id)
            .bind(kind.as_str())
            .bind(key)
            .fetch_all(&mut **tx)
            .await?
        }
    };
    let student_keys: Vec<String> = if kind == ProfileKind::Guardian {
        sqlx::query_scalar(
            "SELECT student_key FROM guardian_students WHERE school_id = $1 AND guardian_key = $2 ORDER BY student_key",
        )
        .bind(school.id)
        .bind(key)
        .fetch_all(&mut **tx)
        .await?
    } else {
        vec![]
    };
    let record = rule::record_from_profile(
        kind,
        key,
        &contact_from_row(&row)?,
        group_keys,
        student_keys,
    );
    let change = LasChangeV1 {
        schema: las_contracts::LasChangeSchema::V1,
        message_id: msg.message_id,
        brin: school.brin.clone(),
        source: las_contracts::LasSource {
            system: school.settings.system,
            environment_id: school.settings.environment_id.clone(),
            label: school.settings.label.clone(),
        },
        emitted_at: msg.decided_at.unwrap_or_else(chrono::Utc::now),
        version: version.max(0) as u64,
        change: record,
        snapshot_id: None,
    };
    let pk: ProfileKey = (school.id, kind, key.to_owned());
    let mut rows = WaitRows::default();
    rows.push(&pk, &change, Some(WaitReason::Uncoupled), &[id])?;
    sqlx::query(
        "UPDATE profiles SET las_key = NULL, version = 0, data_version = 0, email_version = 0,
             in_intake = FALSE, las_group_keys = '{}', updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut **tx)
    .await?;
    rows.insert(tx).await?;
    let decisions = [rule::decision(Action::Uncoupled)];
    journal.push(
        school.id,
        msg.message_id,
        kind.as_str(),
        key,
        version,
        &decisions,
    );
    effects.events.push_coupling(
        las_contracts::SyncEventType::ProfileUncoupled,
        &school.brin,
        Some(msg.message_id),
        kind.as_str(),
        key,
        id,
        None,
    );
    *effects.couplings.entry("uncoupled").or_default() += 1;
    outcomes[index] = Some(MessageOutcome::Applied {
        decisions: decisions.to_vec(),
    });
    Ok(())
}

/// A LAS record that waits for the school's coupling decision (R13): ids
/// only, no personal data.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct WaitingRecord {
    pub kind: String,
    pub las_key: String,
    /// `ambiguous`, `review` or `uncoupled`.
    pub reason: String,
    /// Portal profiles it matches (or, after an uncoupling, was coupled to).
    pub candidate_ids: Vec<i64>,
    pub waiting_since: chrono::DateTime<chrono::Utc>,
}

/// A portal profile no LAS record has claimed (R13): the LAS will never sync it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct UnclaimedProfile {
    pub portal_profile_id: i64,
    pub kind: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// Both sides of the portal's "Niet gekoppelde profielen" (R13).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Unlinked {
    pub brin: String,
    pub waiting: Vec<WaitingRecord>,
    pub unclaimed: Vec<UnclaimedProfile>,
}

impl Store {
    /// LAS records waiting for a school's coupling decision, all schools.
    pub async fn coupling_waits(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar("SELECT count(*) FROM coupling_waits")
            .fetch_one(&self.pool)
            .await?)
    }

    /// R13: the LAS records of a school that wait for a decision, and its
    /// active portal profiles no LAS record has claimed. `None`: no such school.
    pub async fn unlinked(&self, brin: &str) -> Result<Option<Unlinked>, StoreError> {
        let Some(school_id): Option<i64> =
            sqlx::query_scalar("SELECT id FROM schools WHERE brin = $1")
                .bind(brin)
                .fetch_optional(&self.pool)
                .await?
        else {
            return Ok(None);
        };
        let waiting = sqlx::query_as(
            "SELECT kind, las_key, reason, candidate_ids, created_at AS waiting_since
             FROM coupling_waits WHERE school_id = $1 ORDER BY kind, las_key",
        )
        .bind(school_id)
        .fetch_all(&self.pool)
        .await?;
        let unclaimed = sqlx::query_as(
            "SELECT id AS portal_profile_id, kind, created_at
             FROM profiles WHERE school_id = $1 AND las_key IS NULL AND status = 'active'
             ORDER BY kind, id",
        )
        .bind(school_id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(Unlinked {
            brin: brin.to_owned(),
            waiting,
            unclaimed,
        }))
    }
}

/// R13: active portal profiles of these schools that no LAS record claimed,
/// on the caller's connection (so `import --dry-run` counts inside its
/// transaction).
pub async fn unclaimed_profiles(
    conn: &mut sqlx::PgConnection,
    brins: &[String],
) -> Result<i64, StoreError> {
    if brins.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM profiles p JOIN schools s ON s.id = p.school_id
         WHERE s.brin = ANY($1) AND p.las_key IS NULL AND p.status = 'active'",
    )
    .bind(brins)
    .fetch_one(&mut *conn)
    .await?)
}
