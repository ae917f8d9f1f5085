//! Properties of the functional core, over generated input (proptest):
//! the parser never panics, the rules are idempotent, and for versioned
//! records the final state does not depend on the arrival order.

#![allow(clippy::unwrap_used)]

use las_contracts::{GuardianRecord, LasSystem, StaffRecord};
use las_worker::domain::message as inbound;
use las_worker::domain::rules::{self, LasProfile, Outcome, Profile, SchoolSettings};
use proptest::prelude::*;

fn school(system: LasSystem) -> SchoolSettings {
    SchoolSettings {
        system,
        environment_id: "env".into(),
        label: None,
        intake_weeks_ahead: Some(8),
        default_staff_role: "Leerkracht".into(),
        link_staff_to_groups: true,
        esis_composite_groups: false,
        retention_days: 365,
        snapshot_guard_percent: 10,
        staff_phones: vec![],
        coupling: Default::default(),
        staff_retention_days: 730,
        year_records_kept_years: 0,
        composite_groups_lead: false,
        suggestion_detail: las_contracts::SuggestionDetail::Full,
    }
}

fn today() -> chrono::NaiveDate {
    chrono::NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
}

/// A field value: absent, blank, whitespace or a value from a small set (so
/// equal values happen).
fn value() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(String::new())),
        Just(Some("  ".to_owned())),
        "[A-D]{1,2}".prop_map(Some),
    ]
}

fn email() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some(" ".to_owned())),
        Just(Some("not valid".to_owned())),
        "[a-c]{1,2}@school\\.nl".prop_map(Some)
    ]
}

#[derive(Debug, Clone)]
enum Msg {
    Upsert(Box<LasProfile>),
    Remove,
}

fn guardian() -> impl Strategy<Value = LasProfile> {
    (
        value(),
        value(),
        value(),
        value(),
        value(),
        email(),
        prop::collection::vec("S[1-3]", 0..3),
    )
        .prop_map(
            |(first_name, last_name, phone, mobile, emergency_phone, email, students)| {
                LasProfile::from_guardian(&GuardianRecord {
                    las_key: "G1".into(),
                    first_name,
                    last_name,
                    phone,
                    mobile,
                    emergency_phone,
                    email,
                    student_keys: Some(students),
                    ..GuardianRecord::default()
                })
            },
        )
}

fn staff() -> impl Strategy<Value = LasProfile> {
    (
        value(),
        value(),
        email(),
        prop::collection::vec("G[1-3]", 0..3),
    )
        .prop_map(|(first_name, phone, email, groups)| {
            LasProfile::from_staff(&StaffRecord {
                las_key: "T1".into(),
                first_name,
                phone,
                email,
                group_keys: Some(groups),
                ..StaffRecord::default()
            })
        })
}

fn messages(p: impl Strategy<Value = LasProfile> + 'static) -> impl Strategy<Value = Vec<Msg>> {
    prop::collection::vec(
        prop_oneof![4 => p.prop_map(|l| Msg::Upsert(Box::new(l))), 1 => Just(Msg::Remove)],
        1..7,
    )
}

/// The result of applying `(version, message)` pairs in the given order:
/// the profile, plus the last memberships and links that were written.
fn apply_all(
    order: &[(i64, Msg)],
    sch: &SchoolSettings,
) -> (Option<Profile>, Option<Vec<String>>, Option<Vec<String>>) {
    let mut cur: Option<Profile> = None;
    let mut groups = None;
    let mut links: Option<(i64, Vec<String>)> = None;
    for (v, m) in order {
        let out = match m {
            Msg::Upsert(las) => rules::apply_profile(cur.as_ref(), las, *v, sch, today()),
            Msg::Remove => rules::apply_removal(cur.as_ref(), *v),
        };
        if let Outcome::Applied(a) = out {
            if a.group_keys.is_some() {
                groups = a.group_keys.clone();
            }
            if let Some(s) = a.student_keys.clone() {
                links = Some((*v, s));
            }
            cur = Some(a.profile);
        }
    }
    (cur, groups, links.map(|l| l.1))
}

fn versioned(msgs: Vec<Msg>) -> Vec<(i64, Msg)> {
    msgs.into_iter()
        .enumerate()
        .map(|(i, m)| (i as i64 + 1, m))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn parser_never_panics_on_bytes(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = inbound::parse(&body);
    }

    #[test]
    fn parser_never_panics_on_near_valid_json(
        schema in prop_oneof![Just("las.change.v1".to_owned()), Just("portal.link.v1".to_owned()), Just("portal.parent_edit.v1".to_owned()), ".{0,12}"],
        brin in ".{0,6}",
        version in any::<i64>(),
        kind in prop_oneof![Just("student.upserted".to_owned()), Just("guardian.upserted".to_owned()), Just("group.upserted".to_owned()), Just("snapshot.completed".to_owned()), ".{0,10}"],
        key in prop_oneof![Just(serde_json::Value::Null), ".{0,8}".prop_map(serde_json::Value::from), any::<i64>().prop_map(serde_json::Value::from)],
        date in ".{0,12}",
    ) {
        let body = serde_json::json!({
            "schema": schema, "message_id": "7f1c6a52-3f39-4c38-9a1b-0d7e0c1a0001", "brin": brin,
            "source": {"system": "esis", "environment_id": "e", "label": "x"},
            "emitted_at": "2026-11-20T08:00:00Z", "version": version,
            "change": {"type": kind, "las_key": key, "birth_date": date, "group_keys": [key.clone()]},
            "system": "parnassys", "environment_id": "e", "edited_at": "2026-11-20T08:00:00Z", "changes": [{"field": "phone", "proposed": date}],
        });
        let _ = inbound::parse(&serde_json::to_vec(&body).unwrap());
    }

    #[test]
    fn applying_the_same_record_twice_equals_once(las in guardian(), esis in any::<bool>()) {
        let sch = school(if esis { LasSystem::Esis } else { LasSystem::Parnassys });
        let Outcome::Applied(once) = rules::apply_profile(None, &las, 1, &sch, today()) else { panic!("first apply") };
        // Redelivered with the same version: nothing changes.
        prop_assert_eq!(rules::apply_profile(Some(&once.profile), &las, 1, &sch, today()), Outcome::Stale);
        // The same record again as a newer version: the same data.
        let Outcome::Applied(twice) = rules::apply_profile(Some(&once.profile), &las, 2, &sch, today()) else { panic!("second apply") };
        prop_assert_eq!(&twice.profile.contact, &once.profile.contact);
        prop_assert_eq!(twice.profile.status, once.profile.status);
        prop_assert_eq!(twice.student_keys, once.student_keys);
    }

    #[test]
    fn guardian_final_state_does_not_depend_on_arrival_order(msgs in messages(guardian()), seed in any::<u64>(), esis in any::<bool>()) {
        let sch = school(if esis { LasSystem::Esis } else { LasSystem::Parnassys });
        let in_order = versioned(msgs);
        let mut shuffled = in_order.clone();
        shuffle(&mut shuffled, seed);
        let a = apply_all(&in_order, &sch);
        let b = apply_all(&shuffled, &sch);
        let (pa, pb) = (a.0.unwrap(), b.0.unwrap());
        prop_assert_eq!(&pa.contact, &pb.contact);
        prop_assert_eq!(pa.status, pb.status);
        prop_assert_eq!(pa.version, pb.version);
        prop_assert_eq!(a.2, b.2, "guardian-student links");
    }

    #[test]
    fn staff_final_state_does_not_depend_on_arrival_order(msgs in messages(staff()), seed in any::<u64>()) {
        let sch = school(LasSystem::Parnassys);
        let in_order = versioned(msgs);
        let mut shuffled = in_order.clone();
        shuffle(&mut shuffled, seed);
        let a = apply_all(&in_order, &sch);
        let b = apply_all(&shuffled, &sch);
        let (pa, pb) = (a.0.unwrap(), b.0.unwrap());
        prop_assert_eq!(&pa.contact, &pb.contact);
        prop_assert_eq!(pa.status, pb.status);
        prop_assert_eq!(pa.role, pb.role);
        prop_assert_eq!(a.1, b.1, "group memberships");
    }
}

/// A deterministic Fisher-Yates shuffle from a seed (xorshift).
fn shuffle<T>(v: &mut [T], mut seed: u64) {
    for i in (1..v.len()).rev() {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let j = (seed % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
}
