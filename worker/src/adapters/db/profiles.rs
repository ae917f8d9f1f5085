//! The `profiles` table: lock the batch's profiles, run the rules in version
//! order, insert the new ones and update the rest, each in one statement.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use las_contracts::LasChangeV1;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::batch::School;
use crate::domain::batch::{self, ProfileKey, ProfileSlot};
use crate::domain::outcome::Journal;
use crate::domain::outcome::{BatchEffects, Events, MessageOutcome};
use crate::domain::rules::{self, Contact, Profile, ProfileKind, Status};

pub(super) type Key = ProfileKey;

pub(super) fn status_of(s: &str) -> Option<Status> {
    Status::parse(s)
}

pub(super) const CONTACT_COLUMNS: &str = "first_name, name_prefix, last_name, birth_date, street, postcode, city, phone, mobile, emergency_phone, email";

/// The imported fields of a profile row (the columns of `CONTACT_COLUMNS`).
pub(crate) fn contact_from_row(row: &sqlx::postgres::PgRow) -> Result<Contact, sqlx::Error> {
    Ok(Contact {
        first_name: row.try_get("first_name")?,
        name_prefix: row.try_get("name_prefix")?,
        last_name: row.try_get("last_name")?,
        birth_date: row.try_get("birth_date")?,
        street: row.try_get("street")?,
        postcode: row.try_get("postcode")?,
        city: row.try_get("city")?,
        phone: row.try_get("phone")?,
        mobile: row.try_get("mobile")?,
        emergency_phone: row.try_get("emergency_phone")?,
        email: row.try_get("email")?,
    })
}

/// Profiles: lock every row the batch touches (creating placeholder rows for
/// new keys, in key order, so two replicas never deadlock on inserts), run the
/// rules on the current state in version order, write the results back.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply_profiles(
    tx: &mut Transaction<'_, Postgres>,
    msgs: &[(usize, &LasChangeV1, i64)],
    schools: &HashMap<i64, &School>,
    today: NaiveDate,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
    forced: &HashMap<Key, coupling::Forced>,
) -> Result<(), StoreError> {
    let keys: Vec<Key> = msgs
        .iter()
        .filter_map(|(_, c, s)| batch::profile_key(c, *s))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let k_school: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let k_kind: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let k_key: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    // One index probe per key. On statistics from when the table was small
    // (a first run, between two `ANALYZE`s) the planner hashes the whole of
    // `profiles` instead, a cost that grows with the table: 4.7 ms for 94
    // keys over 5,343 profiles in the bench's latency run (issue #19).
    sqlx::raw_sql(PROBES_ONLY).execute(&mut **tx).await?;
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT p.id, p.school_id, p.kind, p.las_key, p.status, p.version, p.data_version, p.email_version, p.role,
                p.las_group_keys, p.in_intake,
                (p.purged_at IS NOT NULL AND p.purged_at >= COALESCE(p.deactivated_at, p.purged_at)) AS purged,
                p.shown,
                {CONTACT_COLUMNS}
         FROM profiles p
         JOIN UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, l)
           ON p.school_id = t.s AND p.kind = t.k AND p.las_key = t.l
         ORDER BY p.id
         FOR UPDATE OF p"
    )))
    .bind(&k_school)
    .bind(&k_kind)
    .bind(&k_key)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::raw_sql(PLANNER_DEFAULTS).execute(&mut **tx).await?;
    let mut slots: HashMap<Key, ProfileSlot> = HashMap::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let Some(kind) = ProfileKind::parse(&kind) else {
            continue;
        };
        let status: String = row.try_get("status")?;
        let current = match status_of(&status) {
            Some(st) => Some(Profile {
                contact: contact_from_row(&row)?,
                status: st,
                version: row.try_get("version")?,
                data_version: row.try_get("data_version")?,
                email_version: row.try_get("email_version")?,
                role: row.try_get("role")?,
                las_group_keys: row.try_get("las_group_keys")?,
                in_intake: row.try_get("in_intake")?,
                purged: row.try_get("purged")?,
                shown: row.try_get("shown")?,
            }),
            None => None,
        };
        slots.insert(
            (row.try_get("school_id")?, kind, row.try_get("las_key")?),
            ProfileSlot::existing(row.try_get("id")?, current),
        );
    }

    // R13: keys the portal does not have yet are coupled to an existing
    // portal profile, wait for the school's decision (their messages are
    // settled there), or are new.
    let missing: Vec<Key> = keys
        .iter()
        .filter(|k| !slots.contains_key(*k))
        .cloned()
        .collect();
    let waiting = coupling::resolve(
        tx, msgs, &missing, schools, forced, &mut slots, outcomes, journal, effects,
    )
    .await?;

    // The other new keys are inserted with their final values after the
    // rules ran (id 0 until then).
    for key in &keys {
        if !waiting.contains(key) {
            slots
                .entry(key.clone())
                .or_insert_with(ProfileSlot::new_key);
        }
    }

    // The rules, in version order per profile (domain::batch).
    batch::fold_profiles(msgs, &mut slots, schools, today, outcomes, journal);

    // New profiles in one statement, in key order (as concurrent writers
    // insert them), with their final values. A key another transaction
    // inserted since this one looked conflicts: the batch is retried, and
    // then sees that row.
    let mut new_rows = ProfileWrite::default();
    for (key, slot) in &slots {
        if slot.id == 0
            && slot.message_id.is_some()
            && let Some(state) = &slot.state
        {
            new_rows.push_new(key, slot, state);
        }
    }
    if !new_rows.id.is_empty() {
        for (id, school_id, kind, key) in new_rows.insert(tx).await? {
            if let Some(kind) = ProfileKind::parse(&kind)
                && let Some(slot) = slots.get_mut(&(school_id, kind, key))
            {
                slot.id = id;
                slot.inserted = true;
            }
        }
    }

    // R13: the coupled portal profiles get their LAS key.
    let coupled: Vec<(i64, String)> = slots
        .iter()
        .filter(|(_, s)| s.coupled.is_some() && s.message_id.is_some())
        .map(|(k, s)| (s.id, k.2.clone()))
        .collect();
    coupling::set_keys(tx, &coupled).await?;

    // Write back every changed profile in one statement.
    let mut w = ProfileWrite::default();
    let mut members = Members::default();
    let mut links = Links::default();
    let mut students_changed: Vec<i64> = Vec::new();
    let mut touched_guardians: Vec<i64> = Vec::new();
    // R10: the profiles whose open suggestions a LAS import may resolve.
    let mut touched_for_suggestions: Vec<i64> = Vec::new();
    let mut intake_schools: HashSet<i64> = HashSet::new();
    let mut pending_guardians: Vec<batch::PendingGuardian> = Vec::new();
    for ((school_id, kind, key), slot) in &slots {
        let Some(state) = &slot.state else { continue };
        if slot.message_id.is_none() {
            continue;
        }
        let change = batch::profile_change(slot.was_status, slot.current.as_ref(), state);
        if *kind == ProfileKind::Guardian {
            // Counted and announced once R9/R12 settled its status.
            let mut g = batch::PendingGuardian {
                id: slot.id,
                change,
                events: Events::default(),
            };
            if let Some(school) = schools.get(school_id) {
                batch::profile_events(&mut g.events, &school.brin, *kind, key, slot, change);
            }
            pending_guardians.push(g);
        } else {
            if let Some(change) = change {
                *effects
                    .profiles
                    .entry((kind.as_str(), change.label()))
                    .or_default() += 1;
            }
            if let Some(school) = schools.get(school_id) {
                batch::profile_events(&mut effects.events, &school.brin, *kind, key, slot, change);
            }
        }
        if !slot.inserted {
            w.push(slot, state);
        }
        if let Some(groups) = &slot.group_keys {
            if groups.iter().any(|g| g == rules::INTAKE_GROUP_KEY) {
                intake_schools.insert(*school_id);
            }
            // A removed profile new to the portal still clears the
            // memberships an ESIS group gave it (R12), so it replaces.
            if slot.inserted && !slot.removed {
                members.add(*school_id, *kind, key, groups);
            } else {
                members.replace(*school_id, *kind, key, groups, slot.removed);
            }
        }
        if let Some(students) = &slot.student_keys {
            if slot.inserted {
                links.add(*school_id, key, students);
            } else {
                links.replace(*school_id, key, students);
            }
        }
        if !slot.inserted && matches!(kind, ProfileKind::Student | ProfileKind::Guardian) {
            touched_for_suggestions.push(slot.id);
        }
        match kind {
            ProfileKind::Student if slot.was_status != Some(state.status) => {
                students_changed.push(slot.id)
            }
            ProfileKind::Guardian => touched_guardians.push(slot.id),
            _ => {}
        }
    }
    w.write(tx).await?;
    // R12: a record the portal never showed is purged at its removal
    // (`rules::purge_at_once`): its portal-only fields and purge mark too.
    let purge_now: Vec<i64> = slots
        .values()
        .filter(|s| {
            s.message_id.is_some()
                && s.state.as_ref().is_some_and(|p| p.purged)
                && !s.current.as_ref().is_some_and(|c| c.purged)
        })
        .map(|s| s.id)
        .collect();
    if !purge_now.is_empty() {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE profiles SET {PURGED_FIELDS} WHERE id = ANY($1)"
        )))
        .bind(&purge_now)
        .execute(&mut **tx)
        .await?;
        purge_copies(tx, &purge_now).await?;
    }
    ensure_intake_groups(tx, &intake_schools.into_iter().collect::<Vec<_>>()).await?;
    members.write(tx).await?;
    links.write(tx).await?;
    reconcile_guardians(
        tx,
        &students_changed,
        &touched_guardians,
        pending_guardians,
        effects,
    )
    .await?;
    // R12: `reconcile_guardians` also marks the guardians it leaves active
    // as shown (held ones, whose children are all under 4, have not been:
    // `rules::purge_at_once`), in its one update.
    resolve_suggestions(tx, &touched_for_suggestions, effects).await?;
    Ok(())
}

#[derive(Default)]
pub(super) struct ProfileWrite {
    pub(super) id: Vec<i64>,
    // Only for new profiles.
    pub(super) school_id: Vec<i64>,
    pub(super) kind: Vec<&'static str>,
    pub(super) las_key: Vec<String>,
    pub(super) las_group_keys: Vec<String>,
    pub(super) in_intake: Vec<bool>,
    pub(super) status: Vec<&'static str>,
    pub(super) version: Vec<i64>,
    pub(super) data_version: Vec<i64>,
    pub(super) email_version: Vec<i64>,
    pub(super) role: Vec<Option<String>>,
    pub(super) message_id: Vec<Option<Uuid>>,
    pub(super) first_name: Vec<Option<String>>,
    pub(super) name_prefix: Vec<Option<String>>,
    pub(super) last_name: Vec<Option<String>>,
    pub(super) birth_date: Vec<Option<NaiveDate>>,
    pub(super) street: Vec<Option<String>>,
    pub(super) postcode: Vec<Option<String>>,
    pub(super) city: Vec<Option<String>>,
    pub(super) phone: Vec<Option<String>>,
    pub(super) mobile: Vec<Option<String>>,
    pub(super) emergency_phone: Vec<Option<String>>,
    pub(super) email: Vec<Option<String>>,
}

impl ProfileWrite {
    pub(super) fn push_new(&mut self, key: &Key, slot: &ProfileSlot, p: &Profile) {
        self.school_id.push(key.0);
        self.kind.push(key.1.as_str());
        self.las_key.push(key.2.clone());
        self.push(slot, p);
    }

    /// Inserts new profiles in key order; returns (id, school, kind, key) of
    /// the rows inserted. A key another transaction inserted since this one
    /// looked is `StoreError::Conflict`: a plain insert, because `ON CONFLICT
    /// DO NOTHING` probes the unique index once more for every row, a cost
    /// paid by every new profile for a race that is rare.
    pub(super) async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Vec<(i64, i64, String, String)>, StoreError> {
        let q = sqlx::query_as(
            "INSERT INTO profiles (school_id, kind, las_key, status, version, role, last_message_id,
                first_name, name_prefix, last_name, birth_date, street, postcode, city,
                phone, mobile, emergency_phone, email, data_version, email_version,
                las_group_keys, in_intake, deactivated_at, deactivation_reason, shown)
             SELECT sc, kd, lk, status, version, role, message_id,
                first_name, name_prefix, last_name, birth_date, street, postcode, city,
                phone, mobile, emergency_phone, email, data_version, email_version,
                CASE WHEN lg = '' THEN '{}'::text[] ELSE string_to_array(lg, chr(31)) END, in_intake,
                CASE WHEN status = 'deactivated' THEN now() END,
                CASE WHEN status = 'deactivated' THEN 'removed_in_las' END,
                status = 'active' AND kd <> 'guardian'
             FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                         $8::date[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                         $16::int8[], $17::int8[], $18::text[], $19::bool[], $20::int8[], $21::text[], $22::text[])
                  AS t(status, version, role, message_id, first_name, name_prefix, last_name,
                       birth_date, street, postcode, city, phone, mobile, emergency_phone, email, data_version, email_version,
                       lg, in_intake, sc, kd, lk)
             ORDER BY sc, kd, lk
             RETURNING id, school_id, kind, las_key",
        );
        self.bind_columns(q)
            .bind(&self.school_id)
            .bind(&self.kind)
            .bind(&self.las_key)
            .fetch_all(&mut **tx)
            .await
            .map_err(lost_insert_race)
    }

    pub(super) fn push(&mut self, slot: &ProfileSlot, p: &Profile) {
        self.id.push(slot.id);
        self.las_group_keys.push(p.las_group_keys.join(KEY_SEP));
        self.in_intake.push(p.in_intake);
        self.status.push(p.status.as_str());
        self.version.push(p.version);
        self.data_version.push(p.data_version);
        self.email_version.push(p.email_version);
        self.role.push(p.role.clone());
        self.message_id.push(slot.message_id);
        let c = &p.contact;
        self.first_name.push(c.first_name.clone());
        self.name_prefix.push(c.name_prefix.clone());
        self.last_name.push(c.last_name.clone());
        self.birth_date.push(c.birth_date);
        self.street.push(c.street.clone());
        self.postcode.push(c.postcode.clone());
        self.city.push(c.city.clone());
        self.phone.push(c.phone.clone());
        self.mobile.push(c.mobile.clone());
        self.emergency_phone.push(c.emergency_phone.clone());
        self.email.push(c.email.clone());
    }

    pub(super) async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let q = sqlx::query(
            "UPDATE profiles p SET
                status = t.status, version = t.version, role = t.role, last_message_id = t.message_id,
                first_name = t.first_name, name_prefix = t.name_prefix, last_name = t.last_name,
                birth_date = t.birth_date, street = t.street, postcode = t.postcode, city = t.city,
                phone = t.phone, mobile = t.mobile, emergency_phone = t.emergency_phone, email = t.email,
                data_version = t.data_version, email_version = t.email_version,
                las_group_keys = CASE WHEN t.lg = '' THEN '{}'::text[] ELSE string_to_array(t.lg, chr(31)) END,
                in_intake = t.in_intake,
                shown = p.shown OR (t.status = 'active' AND p.kind <> 'guardian'),
                deactivated_at = CASE WHEN t.status = 'deactivated' THEN COALESCE(p.deactivated_at, now()) END,
                deactivation_reason = CASE WHEN t.status = 'deactivated' THEN
                    CASE WHEN p.status = 'deactivated' AND p.version = t.version THEN p.deactivation_reason ELSE 'removed_in_las' END END,
                updated_at = now()
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],
                         $9::date[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                         $17::int8[], $18::int8[], $19::text[], $20::bool[])
                  AS t(id, status, version, role, message_id, first_name, name_prefix, last_name,
                       birth_date, street, postcode, city, phone, mobile, emergency_phone, email, data_version, email_version,
                       lg, in_intake)
             WHERE p.id = t.id",
        )
        .bind(&self.id);
        self.bind_columns(q).execute(&mut **tx).await?;
        Ok(())
    }

    /// Binds the imported and bookkeeping columns, in the order both
    /// statements list them (status .. in_intake).
    pub(super) fn bind_columns<'q, Q: BindColumns<'q>>(&'q self, q: Q) -> Q {
        q.bind_col(&self.status)
            .bind_col(&self.version)
            .bind_col(&self.role)
            .bind_col(&self.message_id)
            .bind_col(&self.first_name)
            .bind_col(&self.name_prefix)
            .bind_col(&self.last_name)
            .bind_col(&self.birth_date)
            .bind_col(&self.street)
            .bind_col(&self.postcode)
            .bind_col(&self.city)
            .bind_col(&self.phone)
            .bind_col(&self.mobile)
            .bind_col(&self.emergency_phone)
            .bind_col(&self.email)
            .bind_col(&self.data_version)
            .bind_col(&self.email_version)
            .bind_col(&self.las_group_keys)
            .bind_col(&self.in_intake)
    }
}

/// `bind` of both of sqlx's statement kinds, so that one column list
/// (`ProfileWrite::bind_columns`) serves the insert and the update.
pub(super) trait BindColumns<'q>: Sized {
    fn bind_col<T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self;
}

impl<'q> BindColumns<'q> for sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn bind_col<T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self {
        self.bind(v)
    }
}

impl<'q, O> BindColumns<'q> for sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_col<T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self {
        self.bind(v)
    }
}
