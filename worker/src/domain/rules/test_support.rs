//! Fixtures shared by the rule tests.
#![allow(dead_code, clippy::unwrap_used)]

pub(crate) use chrono::NaiveDate;
pub(crate) use las_contracts::{GuardianRecord, LasSystem, StaffRecord, StudentRecord};

pub(crate) use crate::domain::model::*;
pub(crate) use crate::domain::rules::*;

pub(crate) fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
}

/// `apply_profile` on a pinned date (no test depends on the real clock).
pub(crate) fn ap(
    current: Option<&Profile>,
    las: &LasProfile,
    version: i64,
    school: &SchoolSettings,
) -> Outcome {
    apply_profile(current, las, version, school, today())
}

pub(crate) fn school(system: LasSystem) -> SchoolSettings {
    SchoolSettings {
        system,
        environment_id: "env".into(),
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

pub(crate) fn s(v: &str) -> Option<String> {
    Some(v.to_owned())
}

pub(crate) fn guardian(email: Option<String>, phone: Option<String>) -> LasProfile {
    LasProfile::from_guardian(&GuardianRecord {
        las_key: "G1".into(),
        first_name: s("Anna"),
        last_name: s("Jansen"),
        street: s("Dorpsstraat 1"),
        postcode: s("1234 AB"),
        city: s("Utrecht"),
        phone,
        email,
        student_keys: Some(vec!["S1".into()]),
        ..GuardianRecord::default()
    })
}

pub(crate) fn applied(o: Outcome) -> Applied {
    match o {
        Outcome::Applied(a) => *a,
        Outcome::Stale => panic!("expected an applied outcome"),
    }
}

pub(crate) fn has(a: &Applied, rule: Rule, action: Action, field: Option<Field>) -> bool {
    a.decisions.contains(&Decision::new(rule, action, field))
}

pub(crate) fn existing(contact: Contact, version: i64) -> Profile {
    Profile {
        contact,
        status: Status::Active,
        version,
        data_version: version,
        email_version: version,
        role: None,
        las_group_keys: vec![],
        in_intake: false,
        purged: false,
        shown: true,
    }
}

pub(crate) fn d(y: i32, m: u32, day: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, day).unwrap()
}

pub(crate) fn intake_school(weeks: Option<u32>) -> SchoolSettings {
    let mut sch = school(LasSystem::Parnassys);
    sch.intake_weeks_ahead = weeks;
    sch
}

pub(crate) fn groups(keys: &[&str]) -> Vec<String> {
    keys.iter().map(|k| k.to_string()).collect()
}
