//! Pure batch planning: which messages of a batch are applied, in which
//! order, what changed and which sync events say so. `adapters::db::batch`
//! sequences the statements around these decisions and feeds them the rows
//! it read; nothing here reads a clock, makes an id or touches IO.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use las_contracts::{Change, LasChangeV1, SyncEventType};
use uuid::Uuid;

use crate::domain::message::{Inbound, Rejection};
use crate::domain::model::{Decision, LasProfile, Profile, ProfileKind, SchoolSettings, Status};
use crate::domain::outcome::{Events, Journal, MessageOutcome};
use crate::domain::rules::{self, Applied, Outcome};

/// A linked school as the batch sees it.
#[derive(Debug, Clone)]
pub struct School {
    pub id: i64,
    pub brin: String,
    pub settings: SchoolSettings,
}

/// A change message accepted into the batch: its position in the batch, the
/// message, and its school's id.
pub type Accepted<'a> = (usize, &'a LasChangeV1, i64);

/// A profile of the batch: (school id, kind, trimmed LAS key).
pub type ProfileKey = (i64, ProfileKind, String);

/// The kind of profile a change is about, or `None` for other changes.
pub fn profile_kind(c: &Change) -> Option<ProfileKind> {
    match c {
        Change::StudentUpserted(_) | Change::StudentRemoved(_) => Some(ProfileKind::Student),
        Change::GuardianUpserted(_) | Change::GuardianRemoved(_) => Some(ProfileKind::Guardian),
        Change::StaffUpserted(_) | Change::StaffRemoved(_) => Some(ProfileKind::Staff),
        _ => None,
    }
}

/// The profile a change is about, or `None` for other changes.
pub fn profile_key(c: &LasChangeV1, school_id: i64) -> Option<ProfileKey> {
    Some((
        school_id,
        profile_kind(&c.change)?,
        c.change.las_key()?.trim().to_owned(),
    ))
}

/// R6 and support checks of a batch's change messages, then de-duplication
/// by message id within the batch. Refused and duplicate messages get their
/// outcome; the rest are returned, in batch order, for the database's
/// de-duplication across batches.
pub fn precheck<'a>(
    msgs: &'a [Inbound],
    schools: &HashMap<String, School>,
    outcomes: &mut [Option<MessageOutcome>],
) -> Vec<Accepted<'a>> {
    let mut accepted = Vec::new();
    let mut seen = HashSet::new();
    for (i, m) in msgs.iter().enumerate() {
        let Inbound::Change(c) = m else { continue };
        let school = schools.get(&c.brin);
        // R6: a known school, its one LAS environment.
        if let Err(r) = rules::check_source(&c.brin, school.map(|s| &s.settings), &c.source) {
            outcomes[i] = Some(MessageOutcome::Rejected(
                Rejection::new(r.reason, r.text).with_message_id(c.message_id),
            ));
            continue;
        }
        // R7: a group shape the portal supports for this system.
        if let (Change::GroupUpserted(g), Some(school)) = (&c.change, school)
            && let Err(r) = rules::plan_group(g, &school.settings)
        {
            outcomes[i] = Some(MessageOutcome::Rejected(
                Rejection::new(r.reason, r.text).with_message_id(c.message_id),
            ));
            continue;
        }
        if !seen.insert(c.message_id) {
            outcomes[i] = Some(MessageOutcome::Duplicate);
            continue;
        }
        let school_id = school.map(|s| s.id).unwrap_or_default();
        accepted.push((i, &**c, school_id));
    }
    accepted
}

/// One profile of the batch: as the portal had it, and as the rules left it.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfileSlot {
    /// Database id; 0 while the profile is new to the portal.
    pub id: i64,
    /// As the portal had it when the batch began (`None`: new).
    pub current: Option<Profile>,
    /// As the rules left it so far.
    pub state: Option<Profile>,
    pub was_status: Option<Status>,
    /// Memberships to write, when a message set them.
    pub group_keys: Option<Vec<String>>,
    /// Guardian-student links to write, when a message set them.
    pub student_keys: Option<Vec<String>>,
    pub removed: bool,
    /// The last message applied to it (`None`: nothing to write).
    pub message_id: Option<Uuid>,
    /// Inserted by this batch with its final values (no update needed).
    pub inserted: bool,
    /// R13: this batch couples the LAS key to this existing portal profile,
    /// `auto` (an unambiguous match) or `manual` (the school's decision).
    pub coupled: Option<&'static str>,
    /// R13: a decision that goes before the rules' decisions of the first
    /// message applied to this slot (coupled, create decided).
    pub lead_decision: Option<Decision>,
}

impl ProfileSlot {
    /// A profile the portal has, locked by the batch.
    pub fn existing(id: i64, current: Option<Profile>) -> Self {
        ProfileSlot {
            id,
            was_status: current.as_ref().map(|c| c.status),
            state: current.clone(),
            current,
            group_keys: None,
            student_keys: None,
            removed: false,
            message_id: None,
            inserted: false,
            coupled: None,
            lead_decision: None,
        }
    }

    /// A key the portal does not have yet.
    pub fn new_key() -> Self {
        ProfileSlot::existing(0, None)
    }
}

/// Applies the batch's profile messages to their slots in version order per
/// profile (so the result equals in-order arrival), through the rules of
/// `rules::profile`. Each message gets its outcome (applied or stale) and,
/// when applied, a journal entry.
pub fn fold_profiles(
    msgs: &[Accepted<'_>],
    slots: &mut HashMap<ProfileKey, ProfileSlot>,
    schools: &HashMap<i64, &School>,
    today: NaiveDate,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
) {
    let mut order: Vec<&Accepted<'_>> = msgs.iter().collect();
    order.sort_by_key(|(i, c, _)| (c.version, *i));
    for (i, c, school_id) in order {
        let Some(kind) = profile_kind(&c.change) else {
            continue;
        };
        let Some(key) = c.change.las_key().map(|k| k.trim().to_owned()) else {
            continue;
        };
        let Some(school) = schools.get(school_id) else {
            continue;
        };
        let Some(slot) = slots.get_mut(&(*school_id, kind, key.clone())) else {
            continue;
        };
        let version = c.version as i64;
        let outcome = match &c.change {
            Change::StudentUpserted(r) => rules::apply_profile(
                slot.state.as_ref(),
                &LasProfile::from_student(r),
                version,
                &school.settings,
                today,
            ),
            Change::GuardianUpserted(r) => rules::apply_profile(
                slot.state.as_ref(),
                &LasProfile::from_guardian(r),
                version,
                &school.settings,
                today,
            ),
            Change::StaffUpserted(r) => rules::apply_profile(
                slot.state.as_ref(),
                &LasProfile::from_staff(r),
                version,
                &school.settings,
                today,
            ),
            _ => rules::apply_removal(slot.state.as_ref(), version),
        };
        match outcome {
            Outcome::Stale => outcomes[*i] = Some(MessageOutcome::Stale),
            Outcome::Applied(applied) => {
                let Applied {
                    profile,
                    mut decisions,
                    group_keys,
                    student_keys,
                } = *applied;
                if let Some(lead) = slot.lead_decision.take() {
                    decisions.insert(0, lead);
                }
                journal.push(
                    *school_id,
                    c.message_id,
                    kind.as_str(),
                    &key,
                    version,
                    &decisions,
                );
                slot.removed = profile.status == Status::Deactivated;
                let mut profile = profile;
                // A guardian's visibility is settled after the batch, from
                // its students (R9): the shell marks it then.
                profile.shown |= profile.status == Status::Active && kind != ProfileKind::Guardian;
                slot.state = Some(profile);
                if group_keys.is_some() {
                    slot.group_keys = group_keys;
                }
                if student_keys.is_some() {
                    slot.student_keys = student_keys;
                }
                slot.message_id = Some(c.message_id);
                outcomes[*i] = Some(MessageOutcome::Applied { decisions });
            }
        }
    }
}

/// What a batch did to a profile, as the metrics and sync events count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProfileChange {
    /// Visible in the portal for the first time (new, or a held child imported).
    Created,
    /// R9: stored, not visible (a child under 4).
    Held,
    Reactivated,
    Deactivated,
    /// Imported fields changed.
    Updated,
}

impl ProfileChange {
    /// The `change` label of `las_profiles_total`.
    pub fn label(self) -> &'static str {
        match self {
            ProfileChange::Created => "created",
            ProfileChange::Held => "held",
            ProfileChange::Reactivated => "reactivated",
            ProfileChange::Deactivated => "deactivated",
            ProfileChange::Updated => "updated",
        }
    }
}

/// What the batch did to a profile: from its status before and after, and
/// for an active one whether its imported fields changed. `None`: nothing a
/// metric or an event reports (unchanged, stale, a held child updated).
pub fn profile_change(
    was: Option<Status>,
    current: Option<&Profile>,
    state: &Profile,
) -> Option<ProfileChange> {
    match (was, state.status) {
        (None | Some(Status::Held), Status::Active) => Some(ProfileChange::Created),
        (None, Status::Held) => Some(ProfileChange::Held),
        (Some(Status::Deactivated), Status::Active) => Some(ProfileChange::Reactivated),
        // R9/R12: a held record was never shown nor announced; its removal
        // is not news to anyone either (issue #18).
        (None | Some(Status::Active), Status::Deactivated) => Some(ProfileChange::Deactivated),
        (Some(Status::Active), Status::Active)
            if current.map(|c| &c.contact) != Some(&state.contact) =>
        {
            Some(ProfileChange::Updated)
        }
        _ => None,
    }
}

/// The sync events of one profile the batch changed: `profile.created`,
/// `.reactivated`, `.deactivated` (reason `removed_in_las`) or `.updated`
/// (the names of the changed fields, never values), then
/// `profile.moved_from_intake` when an active child left the intake group
/// (R9). A held child is not announced (R9: not visible in the portal).
pub fn profile_events(
    events: &mut Events,
    brin: &str,
    kind: ProfileKind,
    las_key: &str,
    slot: &ProfileSlot,
    change: Option<ProfileChange>,
) {
    let Some(state) = &slot.state else { return };
    use SyncEventType as E;
    // R13: a coupled profile is new to other services under its LAS key:
    // `profile.coupled` says which portal profile it is (ids only).
    if let Some(how) = slot.coupled {
        events.push_coupling(
            E::ProfileCoupled,
            brin,
            slot.message_id,
            kind.as_str(),
            las_key,
            slot.id,
            Some(how),
        );
    }
    let change = match change {
        Some(ProfileChange::Updated) if slot.coupled.is_some() => None,
        other => other,
    };
    let event = match change {
        Some(ProfileChange::Created) => Some((E::ProfileCreated, vec![], None)),
        Some(ProfileChange::Reactivated) => Some((E::ProfileReactivated, vec![], None)),
        Some(ProfileChange::Deactivated) => Some((
            E::ProfileDeactivated,
            vec![],
            Some("removed_in_las".to_owned()),
        )),
        Some(ProfileChange::Updated) => {
            let fields = slot
                .current
                .as_ref()
                .map(|c| c.contact.changed_fields(&state.contact))
                .unwrap_or_default();
            Some((
                E::ProfileUpdated,
                fields.iter().map(|f| f.as_str().to_owned()).collect(),
                None,
            ))
        }
        Some(ProfileChange::Held) | None => None,
    };
    if let Some((ty, fields, reason)) = event {
        events.push(
            ty,
            brin,
            slot.message_id,
            Some(kind.as_str()),
            Some(las_key),
            fields,
            reason,
        );
    }
    let was_in_intake = slot.current.as_ref().is_some_and(|c| c.in_intake);
    if was_in_intake && !state.in_intake && state.status == Status::Active {
        events.push(
            E::ProfileMovedFromIntake,
            brin,
            slot.message_id,
            Some(kind.as_str()),
            Some(las_key),
            vec![],
            None,
        );
    }
}

/// R9/R12 for a guardian whose status follows its students, from `was` to
/// `target` (`rules::guardian_status`): the `change` label of
/// `las_profiles_total`, and the sync event with its reason, if any. A
/// guardian that becomes visible (held to active) is `profile.created`.
pub fn guardian_transition(
    was: Status,
    target: Status,
) -> (&'static str, Option<(SyncEventType, Option<String>)>) {
    use SyncEventType as E;
    let label = match target {
        Status::Active => "activated",
        Status::Held => "held",
        Status::Deactivated => "deactivated",
    };
    let event = match (was, target) {
        (Status::Held, Status::Active) => Some((E::ProfileCreated, None)),
        (Status::Deactivated, Status::Active) => Some((E::ProfileReactivated, None)),
        (Status::Active, Status::Deactivated) => Some((
            E::ProfileDeactivated,
            Some(rules::ALL_STUDENTS_REMOVED.to_owned()),
        )),
        _ => None,
    };
    (label, event)
}

/// What the batch says about a guardian (its change and sync events), held
/// back until R9/R12 have retargeted its status from its students.
#[derive(Debug, Default)]
pub struct PendingGuardian {
    pub id: i64,
    pub change: Option<ProfileChange>,
    pub events: Events,
}

/// R9 (issue #18): a guardian that ends the batch held (all its known
/// children are under 4 and not imported) is invisible in the portal, so
/// other services must not learn of it: its counts and events are dropped.
/// It is announced (`profile.created`) when it becomes visible. The others
/// are released in batch order.
pub fn release_guardians(
    pending: Vec<PendingGuardian>,
    ended_held: &HashSet<i64>,
    effects: &mut crate::domain::outcome::BatchEffects,
) {
    for mut g in pending {
        if ended_held.contains(&g.id) {
            continue;
        }
        if let Some(change) = g.change {
            *effects
                .profiles
                .entry((ProfileKind::Guardian.as_str(), change.label()))
                .or_default() += 1;
        }
        effects.events.append(&mut g.events);
    }
}

/// A group of the batch: (school id, trimmed LAS key).
pub type GroupKey = (i64, String);

/// R7: the newest version per group in this batch wins; older messages of
/// the same group in the batch are stale. Returned in key order (the order
/// rows are written and locked).
pub fn newest_per_group<'a>(
    msgs: &[Accepted<'a>],
    outcomes: &mut [Option<MessageOutcome>],
) -> Vec<(GroupKey, (usize, &'a LasChangeV1))> {
    let mut newest: HashMap<GroupKey, (usize, &'a LasChangeV1)> = HashMap::new();
    for (i, c, s) in msgs {
        let Some(key) = c.change.las_key() else {
            continue;
        };
        let k = (*s, key.trim().to_owned());
        match newest.get(&k) {
            Some((_, prev)) if prev.version >= c.version => {
                outcomes[*i] = Some(MessageOutcome::Stale);
            }
            Some((j, _)) => {
                outcomes[*j] = Some(MessageOutcome::Stale);
                newest.insert(k, (*i, *c));
            }
            None => {
                newest.insert(k, (*i, *c));
            }
        }
    }
    let mut rows: Vec<(GroupKey, (usize, &'a LasChangeV1))> = newest.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows
}

/// The rule of a school-level message's decision: R11 for the year
/// rollover, R12 for full snapshots.
pub fn school_message_rule(c: &Change) -> rules::Rule {
    if matches!(c, Change::SchoolYearRolledOver(_)) {
        rules::Rule::R11
    } else {
        rules::Rule::R12
    }
}

/// A decision with no field, as school-level messages record them.
pub fn school_decision(c: &Change, action: rules::Action) -> Vec<Decision> {
    vec![Decision {
        rule: school_message_rule(c),
        action,
        field: None,
    }]
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::model::{Action, Contact, DEFAULT_RETENTION_DAYS, DEFAULT_STAFF_ROLE};
    use crate::domain::model::{DEFAULT_SNAPSHOT_GUARD_PERCENT, Field, Rule};
    use las_contracts::{LasSystem, RejectReason};

    fn settings(system: LasSystem, env: &str) -> SchoolSettings {
        SchoolSettings {
            system,
            environment_id: env.into(),
            label: None,
            intake_weeks_ahead: None,
            default_staff_role: DEFAULT_STAFF_ROLE.into(),
            link_staff_to_groups: true,
            esis_composite_groups: false,
            retention_days: DEFAULT_RETENTION_DAYS,
            snapshot_guard_percent: DEFAULT_SNAPSHOT_GUARD_PERCENT,
            staff_phones: vec![],
            coupling: Default::default(),
            staff_retention_days: 730,
            year_records_kept_years: 0,
            composite_groups_lead: false,
            suggestion_detail: las_contracts::SuggestionDetail::Full,
        }
    }

    fn schools() -> HashMap<String, School> {
        HashMap::from([(
            "12AB".to_owned(),
            School {
                id: 7,
                brin: "12AB".into(),
                settings: settings(LasSystem::Parnassys, "env-12AB"),
            },
        )])
    }

    fn change(id: u128, brin: &str, env: &str, version: u64, change: serde_json::Value) -> Inbound {
        let v = serde_json::json!({
            "schema": "las.change.v1",
            "message_id": Uuid::from_u128(id),
            "brin": brin,
            "source": {"system": "parnassys", "environment_id": env, "label": null},
            "emitted_at": "2026-09-14T07:16:00Z",
            "version": version,
            "change": change,
        });
        Inbound::Change(Box::new(serde_json::from_value(v).unwrap()))
    }

    fn guardian(key: &str, email: &str) -> serde_json::Value {
        serde_json::json!({"type": "guardian.upserted", "las_key": key, "first_name": "Petra",
            "last_name": "Proef", "email": email, "student_keys": ["L1"]})
    }

    fn accepted<'a>(
        msgs: &'a [Inbound],
        outcomes: &mut [Option<MessageOutcome>],
    ) -> Vec<Accepted<'a>> {
        precheck(msgs, &schools(), outcomes)
    }

    #[test]
    fn r6_precheck_refuses_an_unknown_school_and_another_environment() {
        let msgs = vec![
            change(1, "99ZZ", "env-99ZZ", 1, guardian("G1", "a@example.org")),
            change(2, "12AB", "other-env", 1, guardian("G1", "a@example.org")),
            change(3, "12AB", "env-12AB", 1, guardian("G1", "a@example.org")),
        ];
        let mut out = vec![None; msgs.len()];
        let acc = accepted(&msgs, &mut out);
        assert!(
            matches!(&out[0], Some(MessageOutcome::Rejected(r)) if r.reason == RejectReason::UnknownBrin),
            "{:?}",
            out[0]
        );
        assert!(
            matches!(&out[1], Some(MessageOutcome::Rejected(r)) if r.reason == RejectReason::EnvironmentMismatch && r.message_id == Some(Uuid::from_u128(2))),
            "{:?}",
            out[1]
        );
        assert_eq!(out[2], None, "the good one waits for the database's dedupe");
        assert_eq!(acc.len(), 1);
        assert_eq!((acc[0].0, acc[0].2), (2, 7), "position and school id");
    }

    #[test]
    fn r7_precheck_refuses_a_group_kind_the_system_does_not_have() {
        let esis_group = serde_json::json!({"type": "group.upserted", "las_key": "X",
            "name": "X", "kind": "group", "year_group_keys": null, "student_keys": null});
        let msgs = vec![change(1, "12AB", "env-12AB", 1, esis_group)];
        let mut out = vec![None; 1];
        assert!(accepted(&msgs, &mut out).is_empty());
        assert!(
            matches!(&out[0], Some(MessageOutcome::Rejected(r)) if r.reason == RejectReason::ValidationFailed && r.text.contains("R7"))
        );
    }

    #[test]
    fn a_message_id_twice_in_one_batch_is_applied_once() {
        let msgs = vec![
            change(1, "12AB", "env-12AB", 1, guardian("G1", "a@example.org")),
            change(1, "12AB", "env-12AB", 1, guardian("G1", "a@example.org")),
        ];
        let mut out = vec![None; 2];
        let acc = accepted(&msgs, &mut out);
        assert_eq!(acc.len(), 1);
        assert_eq!(out[1], Some(MessageOutcome::Duplicate));
    }

    fn fold(
        msgs: &[Inbound],
        slots: &mut HashMap<ProfileKey, ProfileSlot>,
    ) -> (Vec<Option<MessageOutcome>>, Journal) {
        let mut out = vec![None; msgs.len()];
        let acc = accepted(msgs, &mut out);
        let all = schools();
        let by_id: HashMap<i64, &School> = all.values().map(|s| (s.id, s)).collect();
        for a in &acc {
            if let Some(k) = profile_key(a.1, a.2) {
                slots.entry(k).or_insert_with(ProfileSlot::new_key);
            }
        }
        let mut journal = Journal::default();
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        fold_profiles(&acc, slots, &by_id, today, &mut out, &mut journal);
        (out, journal)
    }

    #[test]
    fn r1_versions_in_one_batch_are_applied_in_version_order_whatever_the_arrival() {
        // Version 3 arrives before version 2: the result equals in-order
        // arrival (the LAS's newest record leads), and the journal says so.
        let msgs = vec![
            change(
                1,
                "12AB",
                "env-12AB",
                3,
                guardian(" G1 ", "new@example.org"),
            ),
            change(2, "12AB", "env-12AB", 2, guardian("G1", "old@example.org")),
        ];
        let mut slots = HashMap::new();
        let (out, journal) = fold(&msgs, &mut slots);
        let slot = &slots[&(7, ProfileKind::Guardian, "G1".to_owned())];
        let state = slot.state.as_ref().unwrap();
        assert_eq!(state.contact.email.as_deref(), Some("new@example.org"));
        assert_eq!(state.version, 3);
        assert_eq!(slot.message_id, Some(Uuid::from_u128(1)));
        assert!(matches!(out[0], Some(MessageOutcome::Applied { .. })));
        assert!(
            matches!(out[1], Some(MessageOutcome::Applied { .. })),
            "v2 first, then v3"
        );
        assert_eq!(journal.version, vec![2, 3]);
        assert_eq!(journal.las_key, vec!["G1", "G1"], "keys are trimmed");
    }

    #[test]
    fn an_older_version_than_the_portal_has_is_stale_and_not_journaled() {
        let msgs = vec![change(
            1,
            "12AB",
            "env-12AB",
            2,
            guardian("G1", "a@example.org"),
        )];
        let mut current = Profile::empty();
        current.version = 5;
        current.data_version = 5;
        current.email_version = 5;
        let mut slots = HashMap::from([(
            (7, ProfileKind::Guardian, "G1".to_owned()),
            ProfileSlot::existing(11, Some(current)),
        )]);
        let (out, journal) = fold(&msgs, &mut slots);
        assert_eq!(out[0], Some(MessageOutcome::Stale));
        assert!(journal.school_id.is_empty());
        assert_eq!(
            slots[&(7, ProfileKind::Guardian, "G1".to_owned())].message_id,
            None,
            "nothing to write"
        );
    }

    fn profile(status: Status, email: &str) -> Profile {
        let mut p = Profile::empty();
        p.status = status;
        p.contact = Contact {
            email: Some(email.into()),
            ..Contact::default()
        };
        p
    }

    #[test]
    fn r9_r12_profile_changes_are_classified_from_status_before_and_after() {
        use ProfileChange as C;
        use Status::{Active, Deactivated, Held};
        let a = profile(Active, "a@example.org");
        let b = profile(Active, "b@example.org");
        let held = profile(Held, "a@example.org");
        let gone = profile(Deactivated, "a@example.org");
        assert_eq!(profile_change(None, None, &a), Some(C::Created));
        assert_eq!(
            profile_change(Some(Held), Some(&held), &a),
            Some(C::Created),
            "R9: a held child becomes visible"
        );
        assert_eq!(profile_change(None, None, &held), Some(C::Held));
        assert_eq!(
            profile_change(Some(Held), Some(&held), &held),
            None,
            "a held child updated is not announced"
        );
        assert_eq!(
            profile_change(Some(Deactivated), Some(&gone), &a),
            Some(C::Reactivated)
        );
        assert_eq!(
            profile_change(Some(Active), Some(&a), &gone),
            Some(C::Deactivated),
            "R12"
        );
        assert_eq!(
            profile_change(None, None, &gone),
            Some(C::Deactivated),
            "a removal of a key the portal never had"
        );
        assert_eq!(
            profile_change(Some(Active), Some(&a), &a),
            None,
            "unchanged"
        );
        assert_eq!(profile_change(Some(Active), Some(&a), &b), Some(C::Updated));
        assert_eq!(profile_change(Some(Deactivated), Some(&gone), &gone), None);
    }

    #[test]
    fn r12_events_carry_field_names_never_values() {
        let mut slot = ProfileSlot::existing(11, Some(profile(Status::Active, "a@example.org")));
        slot.state = Some(profile(Status::Active, "b@example.org"));
        slot.message_id = Some(Uuid::from_u128(9));
        let mut events = Events::default();
        profile_events(
            &mut events,
            "12AB",
            ProfileKind::Guardian,
            "G1",
            &slot,
            Some(ProfileChange::Updated),
        );
        let e: Vec<_> = events.iter().collect();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].event_type, SyncEventType::ProfileUpdated);
        assert_eq!(e[0].changed_fields, vec![Field::Email.as_str().to_owned()]);
        assert_eq!(e[0].message_id, Some(Uuid::from_u128(9)));
        assert_eq!(e[0].routing_key(), "sync.12AB.profile.updated");
        assert!(
            !format!("{e:?}").contains("example.org"),
            "no values in events"
        );
    }

    #[test]
    fn r9_a_held_child_is_not_announced_and_leaving_intake_is() {
        let mut held = ProfileSlot::new_key();
        held.state = Some(profile(Status::Held, "x@example.org"));
        let mut events = Events::default();
        profile_events(
            &mut events,
            "12AB",
            ProfileKind::Student,
            "L1",
            &held,
            Some(ProfileChange::Held),
        );
        assert!(events.is_empty());

        let mut in_intake = profile(Status::Active, "x@example.org");
        in_intake.in_intake = true;
        let mut slot = ProfileSlot::existing(3, Some(in_intake));
        slot.state = Some(profile(Status::Active, "x@example.org"));
        profile_events(&mut events, "12AB", ProfileKind::Student, "L1", &slot, None);
        let types: Vec<_> = events.iter().map(|e| e.event_type).collect();
        assert_eq!(types, vec![SyncEventType::ProfileMovedFromIntake]);
    }

    #[test]
    fn r12_a_deactivated_profile_is_announced_as_removed_in_las() {
        let mut slot = ProfileSlot::existing(3, Some(profile(Status::Active, "x@example.org")));
        slot.state = Some(profile(Status::Deactivated, "x@example.org"));
        let mut events = Events::default();
        profile_events(
            &mut events,
            "12AB",
            ProfileKind::Staff,
            "M1",
            &slot,
            Some(ProfileChange::Deactivated),
        );
        let e: Vec<_> = events.iter().collect();
        assert_eq!(e[0].event_type, SyncEventType::ProfileDeactivated);
        assert_eq!(e[0].reason.as_deref(), Some("removed_in_las"));
        assert_eq!(e[0].entity_kind.as_deref(), Some("staff"));
    }

    #[test]
    fn r9_r12_guardian_transitions_name_their_event() {
        use Status::*;
        assert_eq!(
            guardian_transition(Held, Active),
            ("activated", Some((SyncEventType::ProfileCreated, None))),
            "R9: visible once a child is 4"
        );
        assert_eq!(
            guardian_transition(Deactivated, Active),
            ("activated", Some((SyncEventType::ProfileReactivated, None)))
        );
        assert_eq!(
            guardian_transition(Active, Deactivated),
            (
                "deactivated",
                Some((
                    SyncEventType::ProfileDeactivated,
                    Some(rules::ALL_STUDENTS_REMOVED.to_owned())
                ))
            )
        );
        assert_eq!(
            guardian_transition(Active, Held),
            ("held", None),
            "R9: only children under 4 left"
        );
        assert_eq!(
            guardian_transition(Held, Deactivated),
            ("deactivated", None),
            "never visible, never announced"
        );
    }

    #[test]
    fn r7_the_newest_version_of_a_group_in_a_batch_wins() {
        let g = |name: &str| {
            serde_json::json!({"type": "group.upserted", "las_key": "G3 ",
            "name": name, "kind": "year", "year_group_keys": null, "student_keys": null})
        };
        let other = serde_json::json!({"type": "group.upserted", "las_key": "A1",
            "name": "A", "kind": "year", "year_group_keys": null, "student_keys": null});
        let msgs = vec![
            change(1, "12AB", "env-12AB", 5, g("new")),
            change(2, "12AB", "env-12AB", 4, g("old")),
            change(3, "12AB", "env-12AB", 1, other),
        ];
        let mut out = vec![None; 3];
        let acc = accepted(&msgs, &mut out);
        let rows = newest_per_group(&acc, &mut out);
        assert_eq!(out[1], Some(MessageOutcome::Stale));
        let keys: Vec<_> = rows.iter().map(|(k, (i, _))| (k.1.as_str(), *i)).collect();
        assert_eq!(keys, vec![("A1", 2), ("G3", 0)], "key order, trimmed keys");
    }

    #[test]
    fn r11_and_r12_school_messages_record_their_rule() {
        let rollover: Change = serde_json::from_value(
            serde_json::json!({"type": "school_year.rolled_over", "school_year": "2026-2027"}),
        )
        .unwrap();
        assert_eq!(
            school_decision(&rollover, Action::RolledOver)[0].rule,
            Rule::R11
        );
        let started: Change = serde_json::from_value(
            serde_json::json!({"type": "snapshot.started", "snapshot_id": Uuid::from_u128(1)}),
        )
        .unwrap();
        assert_eq!(school_message_rule(&started), Rule::R12);
    }

    #[test]
    fn r9_a_guardian_that_ends_the_batch_held_is_not_announced() {
        let pending = |id: i64| {
            let mut events = Events::default();
            events.push(
                SyncEventType::ProfileCreated,
                "12AB",
                None,
                Some("guardian"),
                Some("G"),
                vec![],
                None,
            );
            PendingGuardian {
                id,
                change: Some(ProfileChange::Created),
                events,
            }
        };
        let mut effects = crate::domain::outcome::BatchEffects::default();
        release_guardians(
            vec![pending(1), pending(2)],
            &HashSet::from([1]),
            &mut effects,
        );
        assert_eq!(effects.events.len(), 1, "only the visible guardian");
        assert_eq!(effects.profiles.get(&("guardian", "created")), Some(&1));
    }
}
