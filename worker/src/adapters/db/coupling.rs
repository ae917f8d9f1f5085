//! R13 in the database: LAS records with a key the portal does not know are
//! coupled to existing portal profiles (`profiles.las_key IS NULL`), get a
//! new profile, or wait in `coupling_waits`; the school's decisions
//! (`portal.coupling.v1`) couple, create or uncouple. The rules are in
//! `domain::rules::coupling`; this file reads and writes what a batch of LAS
//! changes needs, `coupling_decisions` carries out the school's decisions.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use las_contracts::{Change, LasChangeV1};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::batch::{self, ProfileKey, ProfileSlot, School};
use crate::domain::model::{Action, LasProfile, Profile, ProfileKind};
use crate::domain::outcome::Journal;
use crate::domain::rules::coupling::{self as rule, MatchKey, Plan, WaitFold, WaitReason};

/// A profile the school's decision settles before the rules run.
#[derive(Debug, Clone)]
pub(super) enum Forced {
    /// Apply the LAS record to this portal profile (its state as the rules see it).
    Couple { id: i64, state: Box<Profile> },
    /// A new profile.
    New,
}

/// The LAS record of a change, as the rules read it (upserts only).
fn record_of(c: &LasChangeV1) -> Option<LasProfile> {
    match &c.change {
        Change::StudentUpserted(r) => Some(LasProfile::from_student(r)),
        Change::GuardianUpserted(r) => Some(LasProfile::from_guardian(r)),
        Change::StaffUpserted(r) => Some(LasProfile::from_staff(r)),
        _ => None,
    }
}

fn is_removal(c: &LasChangeV1) -> bool {
    matches!(
        c.change,
        Change::StudentRemoved(_) | Change::GuardianRemoved(_) | Change::StaffRemoved(_)
    )
}

/// R13 for the keys of a batch the portal has no profile for (`missing`):
/// the school's decisions (`forced`), records that already wait, and
/// matching against uncoupled portal profiles. Fills `slots` for keys that
/// couple; returns the keys whose messages were taken by a wait (no slot:
/// the rules do not run on them now).
#[allow(clippy::too_many_arguments)]
pub(super) async fn resolve(
    tx: &mut Transaction<'_, Postgres>,
    msgs: &[(usize, &LasChangeV1, i64)],
    missing: &[ProfileKey],
    schools: &HashMap<i64, &School>,
    forced: &HashMap<ProfileKey, Forced>,
    slots: &mut HashMap<ProfileKey, ProfileSlot>,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
) -> Result<HashSet<ProfileKey>, StoreError> {
    let mut waiting: HashSet<ProfileKey> = HashSet::new();
    if missing.is_empty() {
        return Ok(waiting);
    }
    // The batch's messages per key, in version order.
    let mut per_key: BTreeMap<&ProfileKey, Vec<(usize, &LasChangeV1)>> = BTreeMap::new();
    let keyed: Vec<(ProfileKey, usize, &LasChangeV1)> = msgs
        .iter()
        .filter_map(|(i, c, s)| batch::profile_key(c, *s).map(|k| (k, *i, *c)))
        .collect();
    for (k, i, c) in &keyed {
        per_key.entry(k).or_default().push((*i, *c));
    }
    for v in per_key.values_mut() {
        v.sort_by_key(|(i, c)| (c.version, *i));
    }

    let mut searchable: Vec<ProfileKey> = Vec::new();
    for key in missing {
        match forced.get(key) {
            Some(Forced::Couple { id, state }) => {
                let mut slot = ProfileSlot::existing(*id, Some((**state).clone()));
                slot.coupled = Some("manual");
                slot.lead_decision = Some(rule::decision(Action::Coupled));
                slots.insert(key.clone(), slot);
            }
            Some(Forced::New) => {
                let mut slot = ProfileSlot::new_key();
                slot.lead_decision = Some(rule::decision(Action::CreateDecided));
                slots.insert(key.clone(), slot);
            }
            None => searchable.push(key.clone()),
        }
    }
    if searchable.is_empty() {
        return Ok(waiting);
    }
    // After go-live most schools have no uncoupled portal profile left and
    // nothing waiting: one probe per batch instead of the lookups below
    // (issue #19; a new key of such a school is simply new).
    let mut probe: Vec<i64> = searchable.iter().map(|k| k.0).collect();
    probe.sort_unstable();
    probe.dedup();
    let open: HashSet<i64> = sqlx::query_scalar::<_, i64>(
        "SELECT u.s FROM UNNEST($1::int8[]) AS u(s)
         WHERE EXISTS (SELECT 1 FROM profiles p
                       WHERE p.school_id = u.s AND p.las_key IS NULL AND p.status = 'active')
            OR EXISTS (SELECT 1 FROM coupling_waits w WHERE w.school_id = u.s)",
    )
    .bind(&probe)
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .collect();
    searchable.retain(|k| open.contains(&k.0));
    if searchable.is_empty() {
        return Ok(waiting);
    }

    // Records that wait already.
    let w_school: Vec<i64> = searchable.iter().map(|k| k.0).collect();
    let w_kind: Vec<&str> = searchable.iter().map(|k| k.1.as_str()).collect();
    let w_key: Vec<&str> = searchable.iter().map(|k| k.2.as_str()).collect();
    let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
        "SELECT w.school_id, w.kind, w.las_key, w.version
         FROM coupling_waits w
         JOIN UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, l)
           ON w.school_id = t.s AND w.kind = t.k AND w.las_key = t.l
         ORDER BY w.school_id, w.kind, w.las_key
         FOR UPDATE OF w",
    )
    .bind(&w_school)
    .bind(&w_kind)
    .bind(&w_key)
    .fetch_all(&mut **tx)
    .await?;
    let mut released: HashSet<ProfileKey> = HashSet::new();
    let mut upd = WaitRows::default();
    let mut del: Vec<ProfileKey> = Vec::new();
    for (school_id, kind, las_key, version) in rows {
        let Some(kind) = ProfileKind::parse(&kind) else {
            continue;
        };
        let key = (school_id, kind, las_key);
        let Some(list) = per_key.get(&key) else {
            continue;
        };
        let folded: Vec<(i64, bool)> = list
            .iter()
            .map(|(_, c)| (c.version as i64, is_removal(c)))
            .collect();
        match rule::fold_wait(version, &folded) {
            WaitFold::Removed => {
                // R12: the LAS removed a record the portal never showed:
                // nothing of it stays; its messages run as for a new key.
                del.push(key.clone());
                released.insert(key);
            }
            WaitFold::Waits {
                newest,
                applied,
                stale,
            } => {
                let decisions = [rule::decision(Action::AwaitingCoupling)];
                for j in applied {
                    let (i, c) = list[j];
                    journal.push(
                        school_id,
                        c.message_id,
                        kind.as_str(),
                        &key.2,
                        c.version as i64,
                        &decisions,
                    );
                    outcomes[i] = Some(MessageOutcome::Applied {
                        decisions: decisions.to_vec(),
                    });
                }
                for j in stale {
                    outcomes[list[j].0] = Some(MessageOutcome::Stale);
                }
                if let Some(j) = newest {
                    upd.push(&key, list[j].1, None, &[])?;
                }
                waiting.insert(key);
            }
        }
    }
    delete_waits(tx, &del).await?;
    upd.update(tx).await?;

    // Match the rest against the portal's uncoupled profiles.
    let mut match_keys: BTreeMap<ProfileKey, MatchKey> = BTreeMap::new();
    for key in &searchable {
        if waiting.contains(key) || released.contains(key) {
            continue;
        }
        // The newest message decides: a record the LAS removed is not coupled.
        let Some((_, newest)) = per_key.get(key).and_then(|l| l.last()) else {
            continue;
        };
        if let Some(mk) = record_of(newest).as_ref().and_then(rule::match_key) {
            match_keys.insert(key.clone(), mk);
        }
    }
    if match_keys.is_empty() {
        return Ok(waiting);
    }
    let candidates = load_candidates(tx, &match_keys).await?;
    let mut matches: BTreeMap<ProfileKey, (las_contracts::CouplingMode, Vec<i64>)> =
        BTreeMap::new();
    for (key, mk) in &match_keys {
        let ids = candidates
            .iter()
            .filter(|c| c.school_id == key.0 && c.kind == key.1 && rule::is_match(mk, &c.contact))
            .map(|c| c.id)
            .collect();
        let mode = schools
            .get(&key.0)
            .map(|s| s.settings.coupling)
            .unwrap_or_default();
        matches.insert(key.clone(), (mode, ids));
    }
    let mut ins = WaitRows::default();
    for (key, plan) in rule::plan(&matches) {
        match plan {
            Plan::New => {}
            Plan::Couple(id) => {
                let Some(c) = candidates.iter().find(|c| c.id == id) else {
                    continue;
                };
                let mut slot = ProfileSlot::existing(
                    id,
                    Some(rule::coupled_state(c.contact.clone(), c.role.clone())),
                );
                slot.coupled = Some("auto");
                slot.lead_decision = Some(rule::decision(Action::Coupled));
                slots.insert(key.clone(), slot);
                *effects.couplings.entry("auto").or_default() += 1;
            }
            Plan::Wait { reason, candidates } => {
                let Some(list) = per_key.get(&key) else {
                    continue;
                };
                let decisions = [rule::decision(Action::AwaitingCoupling)];
                for (i, c) in list {
                    journal.push(
                        key.0,
                        c.message_id,
                        key.1.as_str(),
                        &key.2,
                        c.version as i64,
                        &decisions,
                    );
                    outcomes[*i] = Some(MessageOutcome::Applied {
                        decisions: decisions.to_vec(),
                    });
                }
                if let Some((_, newest)) = list.last() {
                    ins.push(&key, newest, Some(reason), &candidates)?;
                }
                *effects.couplings.entry("waiting").or_default() += 1;
                waiting.insert(key);
            }
        }
    }
    ins.insert(tx).await?;
    Ok(waiting)
}

/// An uncoupled portal profile that may match.
struct Candidate {
    id: i64,
    school_id: i64,
    kind: ProfileKind,
    role: Option<String>,
    contact: crate::domain::model::Contact,
}

/// Uncoupled, active portal profiles of the keys' schools and kinds with the
/// same e-mail or birth date, locked (a concurrent batch that couples one
/// first makes it drop out here). The rule's exact match is the domain's.
async fn load_candidates(
    tx: &mut Transaction<'_, Postgres>,
    keys: &BTreeMap<ProfileKey, MatchKey>,
) -> Result<Vec<Candidate>, StoreError> {
    let mut e_school = Vec::new();
    let mut e_kind = Vec::new();
    let mut e_mail = Vec::new();
    let mut b_school = Vec::new();
    let mut b_kind = Vec::new();
    let mut b_date: Vec<NaiveDate> = Vec::new();
    for ((school, kind, _), mk) in keys {
        match mk {
            MatchKey::Email(e) => {
                e_school.push(*school);
                e_kind.push(kind.as_str());
                e_mail.push(e.clone());
            }
            MatchKey::Student { birth_date, .. } => {
                b_school.push(*school);
                b_kind.push(kind.as_str());
                b_date.push(*birth_date);
            }
        }
    }
    let mut rows = Vec::new();
    if !e_school.is_empty() {
        rows.extend(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT p.id, p.school_id, p.kind, p.role, {CONTACT_COLUMNS}
                 FROM profiles p
                 JOIN (SELECT DISTINCT * FROM UNNEST($1::int8[], $2::text[], $3::text[])) AS t(s, k, e)
                   ON p.school_id = t.s AND p.kind = t.k AND lower(btrim(p.email)) = t.e
                 WHERE p.las_key IS NULL AND p.status = 'active'
                 ORDER BY p.id
                 FOR UPDATE OF p"
            )))
            .bind(&e_school)
            .bind(&e_kind)
            .bind(&e_mail)
            .fetch_all(&mut **tx)
            .await?,
        );
    }
    if !b_school.is_empty() {
        rows.extend(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT p.id, p.school_id, p.kind, p.role, {CONTACT_COLUMNS}
                 FROM profiles p
                 JOIN (SELECT DISTINCT * FROM UNNEST($1::int8[], $2::text[], $3::date[])) AS t(s, k, b)
                   ON p.school_id = t.s AND p.kind = t.k AND p.birth_date = t.b
                 WHERE p.las_key IS NULL AND p.status = 'active'
                 ORDER BY p.id
                 FOR UPDATE OF p"
            )))
            .bind(&b_school)
            .bind(&b_kind)
            .bind(&b_date)
            .fetch_all(&mut **tx)
            .await?,
        );
    }
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let Some(kind) = ProfileKind::parse(&kind) else {
            continue;
        };
        out.push(Candidate {
            id: row.try_get("id")?,
            school_id: row.try_get("school_id")?,
            kind,
            role: row.try_get("role")?,
            contact: contact_from_row(&row)?,
        });
    }
    Ok(out)
}

/// A stored LAS record that cannot be written or read back as the contract's
/// change: refused for good (the decision is dead-lettered for a person).
pub(super) fn unreadable_wait() -> StoreError {
    StoreError::Permanent {
        code: "22P02".to_owned(),
        constraint: Some("coupling_waits.change".to_owned()),
    }
}

/// Rows of `coupling_waits` to insert or update.
#[derive(Default)]
pub(super) struct WaitRows {
    school: Vec<i64>,
    kind: Vec<&'static str>,
    key: Vec<String>,
    version: Vec<i64>,
    message_id: Vec<Uuid>,
    change: Vec<String>,
    reason: Vec<&'static str>,
    candidates: Vec<String>,
}

impl WaitRows {
    pub(super) fn push(
        &mut self,
        key: &ProfileKey,
        c: &LasChangeV1,
        reason: Option<WaitReason>,
        candidates: &[i64],
    ) -> Result<(), StoreError> {
        self.school.push(key.0);
        self.kind.push(key.1.as_str());
        self.key.push(key.2.clone());
        self.version.push(c.version as i64);
        self.message_id.push(c.message_id);
        self.change
            .push(serde_json::to_string(c).map_err(|_| unreadable_wait())?);
        self.reason
            .push(reason.unwrap_or(WaitReason::Ambiguous).as_str());
        self.candidates.push(
            candidates
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
        Ok(())
    }

    pub(super) async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<(), StoreError> {
        if self.school.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO coupling_waits (school_id, kind, las_key, version, message_id, change, reason, candidate_ids)
             SELECT s, k, l, v, m, c::jsonb, r,
                    CASE WHEN ids = '' THEN '{}'::int8[] ELSE string_to_array(ids, ',')::int8[] END
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::uuid[], $6::text[], $7::text[], $8::text[])
                  AS t(s, k, l, v, m, c, r, ids)
             ORDER BY s, k, l",
        )
        .bind(&self.school)
        .bind(&self.kind)
        .bind(&self.key)
        .bind(&self.version)
        .bind(&self.message_id)
        .bind(&self.change)
        .bind(&self.reason)
        .bind(&self.candidates)
        .execute(&mut **tx)
        .await
        .map_err(lost_insert_race)?;
        Ok(())
    }

    /// Stores a newer LAS record for records that wait (reason and
    /// candidates stay).
    async fn update(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.school.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "UPDATE coupling_waits w SET version = t.v, message_id = t.m, change = t.c::jsonb, updated_at = now()
             FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::int8[], $5::uuid[], $6::text[]) AS t(s, k, l, v, m, c)
             WHERE w.school_id = t.s AND w.kind = t.k AND w.las_key = t.l",
        )
        .bind(&self.school)
        .bind(&self.kind)
        .bind(&self.key)
        .bind(&self.version)
        .bind(&self.message_id)
        .bind(&self.change)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

pub(super) async fn delete_waits(
    tx: &mut Transaction<'_, Postgres>,
    keys: &[ProfileKey],
) -> Result<(), StoreError> {
    if keys.is_empty() {
        return Ok(());
    }
    let s: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let k: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let l: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    sqlx::query(
        "DELETE FROM coupling_waits w USING UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, l)
         WHERE w.school_id = t.s AND w.kind = t.k AND w.las_key = t.l",
    )
    .bind(&s)
    .bind(&k)
    .bind(&l)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets the LAS key of the portal profiles this batch coupled.
pub(super) async fn set_keys(
    tx: &mut Transaction<'_, Postgres>,
    coupled: &[(i64, String)],
) -> Result<(), StoreError> {
    if coupled.is_empty() {
        return Ok(());
    }
    let (ids, keys): (Vec<i64>, Vec<String>) = coupled.iter().cloned().unzip();
    sqlx::query(
        "UPDATE profiles p SET las_key = t.k
         FROM UNNEST($1::int8[], $2::text[]) AS t(id, k)
         WHERE p.id = t.id AND p.las_key IS NULL",
    )
    .bind(&ids)
    .bind(&keys)
    .execute(&mut **tx)
    .await
    .map_err(lost_insert_race)?;
    Ok(())
}
