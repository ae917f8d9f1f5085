//! R1-R5 and R8: applying a LAS profile record (or its removal) to the
//! portal's profile. R1 the LAS leads, R2 blank clears, R3 which fields are
//! imported per kind and system, R4 the e-mail is kept when the LAS has none,
//! R5 portal-only fields are never touched, R8 a new staff member's role.

use chrono::NaiveDate;
use las_contracts::LasSystem;

use crate::domain::model::*;
use crate::domain::rules::intake::place_student;

/// How a field of a kind of profile is imported from a LAS system (R3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// LAS value replaces the portal value; blank clears it (R1, R2).
    Import,
    /// LAS value replaces the portal value; blank keeps it; invalid is blank (R4).
    ImportKeepOnBlank,
    /// Never imported, and the portal value is cleared at import (R3: student phones).
    Clear,
    /// Not an imported field: never touched (R3 ParnasSys emergency phone, R5).
    NotImported,
}

/// R3 with the school's choices: the phones a school publishes for its
/// staff are imported (and a blank one clears it), the others never.
pub fn school_policy(kind: ProfileKind, school: &SchoolSettings, field: Field) -> Policy {
    let published = |p: las_contracts::StaffPhone| school.staff_phones.contains(&p);
    match (kind, field) {
        (ProfileKind::Staff, Field::Phone) if published(las_contracts::StaffPhone::Phone) => {
            Policy::Import
        }
        (ProfileKind::Staff, Field::Mobile) if published(las_contracts::StaffPhone::Mobile) => {
            Policy::Import
        }
        _ => policy(kind, school.system, field),
    }
}

/// R3: which fields are imported, per kind of profile and LAS system.
pub fn policy(kind: ProfileKind, system: LasSystem, field: Field) -> Policy {
    use Field::*;
    match (kind, field) {
        // Privacy: the portal shows staff to parents (seed 002, "Medewerkers");
        // only their name, work e-mail and published phones are imported. A
        // home address and private phones are cleared at import.
        (ProfileKind::Staff, Street | Postcode | City | Phone | Mobile | EmergencyPhone) => {
            Policy::Clear
        }
        (_, FirstName | NamePrefix | LastName | Street | Postcode | City) => Policy::Import,
        (ProfileKind::Student, BirthDate) => Policy::Import,
        (_, BirthDate) => Policy::NotImported,
        (ProfileKind::Student, Phone | Mobile | EmergencyPhone) => Policy::Clear,
        (ProfileKind::Student, Email) => Policy::NotImported,
        (_, Phone | Mobile) => Policy::Import,
        (_, EmergencyPhone) => match system {
            LasSystem::Esis => Policy::Import,
            LasSystem::Parnassys => Policy::NotImported,
        },
        (_, Email) => Policy::ImportKeepOnBlank,
    }
}

/// R4: a plausible e-mail address. Deliberately simple: one `@`, a local
/// part, a domain with a dot, no spaces, at most 254 characters.
pub fn is_valid_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.starts_with('-')
}

/// What an upsert or removal does to a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub profile: Profile,
    pub decisions: Vec<Decision>,
    /// New group memberships, or `None` to leave them as they are.
    pub group_keys: Option<Vec<String>>,
    /// New linked students (guardians), or `None` to leave them as they are.
    pub student_keys: Option<Vec<String>>,
}

/// The result of offering a versioned LAS record to a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(Box<Applied>),
    /// The version is not newer than the one applied: nothing changes.
    Stale,
}

/// R1-R5, R8, R12: apply one LAS profile record at `version` to the portal's profile.
///
/// Order independence: the result equals applying every record in version
/// order, whatever order they arrive in. The imported fields come from the
/// newest upsert, the e-mail from the newest upsert that had one (R4), the
/// status and groups from the newest upsert or removal. So an older upsert
/// that arrives late can still supply the e-mail a newer one left blank.
pub fn apply_profile(
    current: Option<&Profile>,
    las: &LasProfile,
    version: i64,
    school: &SchoolSettings,
    today: NaiveDate,
) -> Outcome {
    let base = current.cloned().unwrap_or_else(Profile::empty);
    let newer_status = version > base.version;
    let newer_data = version > base.data_version;
    let email_policy = school_policy(las.kind, school, Field::Email);
    let las_email = las.contact.email.as_deref();
    let email_valid = las_email.is_some_and(is_valid_email);
    let newer_email =
        email_policy == Policy::ImportKeepOnBlank && email_valid && version > base.email_version;
    if !newer_status && !newer_data && !newer_email {
        return Outcome::Stale;
    }
    // R12: a purged profile stays purged. A record older than the removal
    // (a late replica, a replayed dead letter) must not write personal data
    // back; only a re-enrolment (newer than the removal) brings it back.
    if base.purged && base.status == Status::Deactivated && !newer_status {
        return Outcome::Stale;
    }

    let mut decisions = Vec::new();
    let mut p = base.clone();
    if newer_data && base.data_version == 0 {
        decisions.push(Decision::new(Rule::R1, Action::Created, None));
    }
    if las.kind == ProfileKind::Staff && p.role.is_none() {
        decisions.push(Decision::new(Rule::R8, Action::RoleAssigned, None));
        p.role = Some(school.default_staff_role.clone());
    }
    if newer_status && base.version > 0 && base.status == Status::Deactivated {
        // Reactivation; a student's placement below may still hold it (R9).
        decisions.push(Decision::new(Rule::R1, Action::Reactivated, None));
    }

    for field in Field::ALL {
        let old = p.contact.get(field);
        let new = las.contact.get(field);
        match school_policy(las.kind, school, field) {
            Policy::Import if newer_data && new != old => {
                let (rule, action) = if new.is_some() {
                    (Rule::R1, Action::Overwritten)
                } else {
                    (Rule::R2, Action::Cleared)
                };
                decisions.push(Decision::new(rule, action, Some(field)));
                p.contact.set(field, new);
            }
            Policy::ImportKeepOnBlank => {
                if las_email.is_some() && !email_valid {
                    decisions.push(Decision::new(Rule::R4, Action::InvalidEmail, Some(field)));
                }
                if newer_email {
                    if new != old {
                        decisions.push(Decision::new(Rule::R1, Action::Overwritten, Some(field)));
                        p.contact.set(field, new);
                    }
                    p.email_version = version;
                } else if newer_data && !email_valid && old.is_some() {
                    decisions.push(Decision::new(Rule::R4, Action::Kept, Some(field)));
                }
            }
            Policy::Clear if newer_data => {
                if new.is_some() {
                    decisions.push(Decision::new(Rule::R3, Action::Ignored, Some(field)));
                }
                if old.is_some() {
                    decisions.push(Decision::new(Rule::R3, Action::Cleared, Some(field)));
                    p.contact.set(field, Value::Text(None));
                }
            }
            Policy::NotImported if newer_data && new.is_some() => {
                let rule = if field == Field::EmergencyPhone {
                    Rule::R3
                } else {
                    Rule::R5
                };
                decisions.push(Decision::new(rule, Action::Ignored, Some(field)));
            }
            _ => {}
        }
    }
    if newer_data {
        p.data_version = version;
    }

    let group_keys = match las.kind {
        _ if !newer_status => None,
        ProfileKind::Student => {
            let (placement, decision) = place_student(
                p.contact.birth_date,
                &las.group_keys,
                base.in_intake,
                school,
                today,
            );
            decisions.extend(decision);
            decisions.push(Decision::new(Rule::R1, Action::GroupsReplaced, None));
            p.las_group_keys = las.group_keys.clone();
            p.in_intake = placement.in_intake;
            p.status = placement.status;
            Some(placement.groups)
        }
        ProfileKind::Guardian => None,
        ProfileKind::Staff if !school.link_staff_to_groups => {
            decisions.push(Decision::new(Rule::R8, Action::GroupsLeftAlone, None));
            None
        }
        _ => {
            decisions.push(Decision::new(Rule::R1, Action::GroupsReplaced, None));
            Some(las.group_keys.clone())
        }
    };
    let student_keys = match las.kind {
        ProfileKind::Guardian if newer_data => Some(las.student_keys.clone()),
        _ => None,
    };
    if newer_status {
        if las.kind != ProfileKind::Student {
            p.status = Status::Active;
        }
        p.version = version;
    }

    Outcome::Applied(Box::new(Applied {
        profile: p,
        decisions,
        group_keys,
        student_keys,
    }))
}

/// R12: a profile removed in the LAS is deactivated and leaves all its groups.
/// Its data stays until the retention period ends. A removal of a profile the
/// portal never saw is remembered (a tombstone) so that an older upsert that
/// arrives later cannot bring it back.
pub fn apply_removal(current: Option<&Profile>, version: i64) -> Outcome {
    if current.is_some_and(|c| version <= c.version) {
        return Outcome::Stale;
    }
    let mut p = current.cloned().unwrap_or_else(Profile::empty);
    let mut decisions = Vec::new();
    p.in_intake = false;
    // R12: a removed profile leaves every group; its LAS group keys go too, so
    // a removal ends in the same state whether or not an upsert came first.
    p.las_group_keys.clear();
    if p.status != Status::Deactivated {
        decisions.push(Decision::new(Rule::R12, Action::Deactivated, None));
    }
    if crate::domain::rules::retention::purge_at_once(p.status, Status::Deactivated, p.shown) {
        p.contact = Contact::default();
        p.purged = true;
        decisions.push(Decision::new(Rule::R12, Action::PurgedAtOnce, None));
    }
    p.status = Status::Deactivated;
    p.version = version;
    Outcome::Applied(Box::new(Applied {
        profile: p,
        decisions,
        group_keys: Some(vec![]),
        student_keys: None,
    }))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::rules::test_support::*;

    #[test]
    fn r12_a_held_child_removed_by_the_las_is_purged_at_once() {
        let held = Profile {
            contact: Contact {
                first_name: s("Pim"),
                birth_date: chrono::NaiveDate::from_ymd_opt(2024, 1, 1),
                ..Contact::default()
            },
            status: Status::Held,
            version: 1,
            ..Profile::empty()
        };
        let a = applied(apply_removal(Some(&held), 2));
        assert_eq!(a.profile.status, Status::Deactivated);
        assert_eq!(
            a.profile.contact,
            Contact::default(),
            "nothing of a child nobody saw stays"
        );
        assert!(
            a.profile.purged,
            "and a late older upsert cannot bring it back"
        );
        assert!(has(&a, Rule::R12, Action::PurgedAtOnce, None));
        let active = Profile {
            status: Status::Active,
            ..held.clone()
        };
        let a = applied(apply_removal(Some(&active), 2));
        assert_eq!(
            a.profile.contact.first_name.as_deref(),
            Some("Pim"),
            "a shown profile keeps its term"
        );
        assert!(!has(&a, Rule::R12, Action::PurgedAtOnce, None));
        let once_shown = Profile {
            shown: true,
            ..held.clone()
        };
        let a = applied(apply_removal(Some(&once_shown), 2));
        assert_eq!(
            a.profile.contact.first_name.as_deref(),
            Some("Pim"),
            "held now but shown before (a guardian whose visible child left): its term applies"
        );
    }

    #[test]
    fn r1_new_profile_is_created_with_las_values() {
        let a = applied(ap(
            None,
            &guardian(s("a@b.nl"), s("0301234567")),
            1,
            &school(LasSystem::Parnassys),
        ));
        assert!(has(&a, Rule::R1, Action::Created, None));
        assert_eq!(a.profile.contact.first_name.as_deref(), Some("Anna"));
        assert_eq!(a.profile.contact.email.as_deref(), Some("a@b.nl"));
        assert_eq!(a.profile.status, Status::Active);
        assert_eq!(a.student_keys, Some(vec!["S1".to_owned()]));
    }

    #[test]
    fn r1_las_value_overwrites_portal_edit() {
        let cur = existing(
            Contact {
                first_name: s("Annie"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(None, None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.first_name.as_deref(), Some("Anna"));
        assert!(has(
            &a,
            Rule::R1,
            Action::Overwritten,
            Some(Field::FirstName)
        ));
        assert!(!has(&a, Rule::R1, Action::Created, None));
    }

    #[test]
    fn r2_blank_field_clears_portal_value() {
        let cur = existing(
            Contact {
                phone: s("0301234567"),
                name_prefix: s("van"),
                ..Contact::default()
            },
            1,
        );
        let mut las = guardian(None, s("   "));
        las.contact.name_prefix = None;
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(a.profile.contact.phone, None);
        assert_eq!(a.profile.contact.name_prefix, None);
        assert!(has(&a, Rule::R2, Action::Cleared, Some(Field::Phone)));
        assert!(has(&a, Rule::R2, Action::Cleared, Some(Field::NamePrefix)));
    }

    #[test]
    fn r2_whitespace_and_empty_are_blank() {
        assert_eq!(normalize(&s("  ")), None);
        assert_eq!(normalize(&s("")), None);
        assert_eq!(normalize(&None), None);
        assert_eq!(normalize(&s(" Jan ")), s("Jan"));
    }

    #[test]
    fn r3_student_phone_is_never_imported_and_cleared() {
        let cur = existing(
            Contact {
                phone: s("0612345678"),
                mobile: s("0687654321"),
                ..Contact::default()
            },
            1,
        );
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            first_name: s("Piet"),
            phone: s("0611111111"),
            ..StudentRecord::default()
        });
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Esis)));
        assert_eq!(a.profile.contact.phone, None);
        assert_eq!(a.profile.contact.mobile, None);
        assert!(has(&a, Rule::R3, Action::Ignored, Some(Field::Phone)));
        assert!(has(&a, Rule::R3, Action::Cleared, Some(Field::Phone)));
        assert!(has(&a, Rule::R3, Action::Cleared, Some(Field::Mobile)));
    }

    #[test]
    fn r3_student_birth_date_and_address_are_imported() {
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            birth_date: NaiveDate::from_ymd_opt(2019, 5, 1),
            street: s("Kerkstraat 2"),
            ..StudentRecord::default()
        });
        let a = applied(ap(None, &las, 1, &school(LasSystem::Parnassys)));
        assert_eq!(
            a.profile.contact.birth_date,
            NaiveDate::from_ymd_opt(2019, 5, 1)
        );
        assert_eq!(a.profile.contact.street.as_deref(), Some("Kerkstraat 2"));
        assert_eq!(a.group_keys, Some(vec![]));
    }

    #[test]
    fn r3_emergency_phone_imported_from_esis() {
        let cur = existing(
            Contact {
                emergency_phone: s("112233"),
                ..Contact::default()
            },
            1,
        );
        let mut las = guardian(None, None);
        las.contact.emergency_phone = s("0699999999");
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Esis)));
        assert_eq!(
            a.profile.contact.emergency_phone.as_deref(),
            Some("0699999999")
        );
        las.contact.emergency_phone = None;
        let b = applied(ap(Some(&a.profile), &las, 3, &school(LasSystem::Esis)));
        assert_eq!(b.profile.contact.emergency_phone, None);
        assert!(has(
            &b,
            Rule::R2,
            Action::Cleared,
            Some(Field::EmergencyPhone)
        ));
    }

    #[test]
    fn r3_emergency_phone_not_imported_from_parnassys() {
        let cur = existing(
            Contact {
                emergency_phone: s("112233"),
                ..Contact::default()
            },
            1,
        );
        let mut las = guardian(None, None);
        las.contact.emergency_phone = s("0699999999");
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(a.profile.contact.emergency_phone.as_deref(), Some("112233"));
        assert!(has(
            &a,
            Rule::R3,
            Action::Ignored,
            Some(Field::EmergencyPhone)
        ));
        las.contact.emergency_phone = None;
        let b = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(b.profile.contact.emergency_phone.as_deref(), Some("112233"));
    }

    #[test]
    fn r4_blank_email_keeps_portal_email() {
        let cur = existing(
            Contact {
                email: s("ouder@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(s(" "), None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.email.as_deref(), Some("ouder@example.nl"));
        assert!(has(&a, Rule::R4, Action::Kept, Some(Field::Email)));
    }

    #[test]
    fn r4_las_email_replaces_portal_email() {
        let cur = existing(
            Contact {
                email: s("oud@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(s("nieuw@example.nl"), None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.email.as_deref(), Some("nieuw@example.nl"));
        assert!(has(&a, Rule::R1, Action::Overwritten, Some(Field::Email)));
    }

    #[test]
    fn r4_invalid_email_is_treated_as_blank_and_reported() {
        let cur = existing(
            Contact {
                email: s("ouder@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(s("not-an-address"), None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.email.as_deref(), Some("ouder@example.nl"));
        assert!(has(&a, Rule::R4, Action::InvalidEmail, Some(Field::Email)));
        assert!(has(&a, Rule::R4, Action::Kept, Some(Field::Email)));
        let new = applied(ap(
            None,
            &guardian(s("a@b"), None),
            1,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(new.profile.contact.email, None);
    }

    #[test]
    fn r4_email_validation() {
        assert!(is_valid_email("jan.de.vries@school.nl"));
        assert!(is_valid_email("a+b@sub.example.com"));
        for bad in [
            "", "a@", "@b.nl", "a b@c.nl", "a@b", "a@@b.nl", "a@.nl", "a@b..nl", "a@b.nl.",
        ] {
            assert!(!is_valid_email(bad), "{bad} must be invalid");
        }
    }

    #[test]
    fn r5_student_email_is_not_imported() {
        let cur = existing(
            Contact {
                email: s("kind@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            ..StudentRecord::default()
        });
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(a.profile.contact.email.as_deref(), Some("kind@example.nl"));
    }

    #[test]
    fn r5_guardian_birth_date_is_not_imported() {
        let cur = existing(
            Contact {
                birth_date: NaiveDate::from_ymd_opt(1980, 1, 1),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(None, None),
            2,
            &school(LasSystem::Esis),
        ));
        assert_eq!(
            a.profile.contact.birth_date,
            NaiveDate::from_ymd_opt(1980, 1, 1)
        );
    }

    #[test]
    fn r8_new_staff_gets_default_role_at_creation_only() {
        let mut sch = school(LasSystem::Parnassys);
        sch.default_staff_role = "Intern begeleider".into();
        let las = LasProfile::from_staff(&StaffRecord {
            las_key: "T1".into(),
            group_keys: Some(vec!["G3".into()]),
            ..StaffRecord::default()
        });
        let a = applied(ap(None, &las, 1, &sch));
        assert_eq!(a.profile.role.as_deref(), Some("Intern begeleider"));
        assert!(has(&a, Rule::R8, Action::RoleAssigned, None));
        let mut changed = a.profile.clone();
        changed.role = Some("Directeur".into());
        assert_eq!(changed.version, 1);
        let b = applied(ap(Some(&changed), &las, 2, &sch));
        assert_eq!(b.profile.role.as_deref(), Some("Directeur"));
        assert!(!has(&b, Rule::R8, Action::RoleAssigned, None));
    }

    #[test]
    fn r8_staff_groups_left_alone_when_linking_is_off() {
        let mut sch = school(LasSystem::Parnassys);
        sch.link_staff_to_groups = false;
        let las = LasProfile::from_staff(&StaffRecord {
            las_key: "T1".into(),
            group_keys: Some(vec!["G3".into()]),
            ..StaffRecord::default()
        });
        let a = applied(ap(None, &las, 1, &sch));
        assert_eq!(a.group_keys, None);
        assert!(has(&a, Rule::R8, Action::GroupsLeftAlone, None));
        let on = applied(ap(None, &las, 1, &school(LasSystem::Parnassys)));
        assert_eq!(on.group_keys, Some(vec!["G3".to_owned()]));
    }

    #[test]
    fn r12_removal_deactivates_and_leaves_groups() {
        let cur = existing(
            Contact {
                first_name: s("Piet"),
                ..Contact::default()
            },
            3,
        );
        let cur = Profile {
            las_group_keys: vec!["G3".to_owned()],
            ..cur
        };
        let a = applied(apply_removal(Some(&cur), 4));
        assert_eq!(a.profile.status, Status::Deactivated);
        assert_eq!(a.group_keys, Some(vec![]));
        assert!(
            a.profile.las_group_keys.is_empty(),
            "the same state as a removal that arrives before the upsert"
        );
        assert!(has(&a, Rule::R12, Action::Deactivated, None));
        assert_eq!(a.profile.contact.first_name.as_deref(), Some("Piet"));
    }

    #[test]
    fn r12_removal_before_upsert_leaves_a_tombstone_that_wins() {
        let tomb = applied(apply_removal(None, 5)).profile;
        assert_eq!(tomb.status, Status::Deactivated);
        // An older upsert arriving late fills the data, as in-order arrival
        // would have, but the profile stays deactivated and out of groups.
        let late = applied(ap(
            Some(&tomb),
            &guardian(s("a@b.nl"), None),
            4,
            &school(LasSystem::Esis),
        ));
        assert_eq!(late.profile.status, Status::Deactivated);
        assert_eq!(late.profile.contact.first_name.as_deref(), Some("Anna"));
        assert_eq!(late.group_keys, None);
        let back = applied(ap(
            Some(&late.profile),
            &guardian(None, None),
            6,
            &school(LasSystem::Esis),
        ));
        assert_eq!(back.profile.status, Status::Active);
        assert!(has(&back, Rule::R1, Action::Reactivated, None));
    }

    #[test]
    fn r4_older_email_arriving_after_a_newer_blank_is_still_kept() {
        let sch = school(LasSystem::Parnassys);
        // In order: v1 sets the e-mail, v2 has none -> e-mail of v1.
        let v1 = applied(ap(None, &guardian(s("a@b.nl"), None), 1, &sch)).profile;
        let in_order = applied(ap(Some(&v1), &guardian(None, None), 2, &sch)).profile;
        // Reversed: v2 first, then v1 arrives late.
        let v2 = applied(ap(None, &guardian(None, None), 2, &sch)).profile;
        let reversed = applied(ap(Some(&v2), &guardian(s("a@b.nl"), None), 1, &sch)).profile;
        assert_eq!(in_order, reversed);
        assert_eq!(reversed.contact.email.as_deref(), Some("a@b.nl"));
        // But a late older e-mail never beats a newer one.
        let v3 = applied(ap(Some(&reversed), &guardian(s("new@b.nl"), None), 3, &sch)).profile;
        assert_eq!(
            ap(Some(&v3), &guardian(s("old@b.nl"), None), 2, &sch),
            Outcome::Stale
        );
    }

    #[test]
    fn older_or_equal_version_is_stale() {
        let cur = existing(Contact::default(), 7);
        let sch = school(LasSystem::Parnassys);
        assert_eq!(
            ap(Some(&cur), &guardian(None, None), 7, &sch),
            Outcome::Stale
        );
        assert_eq!(
            ap(Some(&cur), &guardian(None, None), 3, &sch),
            Outcome::Stale
        );
        assert_eq!(apply_removal(Some(&cur), 6), Outcome::Stale);
    }

    #[test]
    fn applying_the_same_record_twice_equals_once() {
        let sch = school(LasSystem::Esis);
        let las = guardian(s("a@b.nl"), s("0301234567"));
        let once = applied(ap(None, &las, 1, &sch));
        assert_eq!(ap(Some(&once.profile), &las, 1, &sch), Outcome::Stale);
        let again = applied(ap(Some(&once.profile), &las, 2, &sch));
        assert_eq!(again.profile.contact, once.profile.contact);
        assert!(again.decisions.iter().all(|d| d.field.is_none()));
    }

    #[test]
    fn decisions_never_carry_values() {
        let a = applied(ap(
            None,
            &guardian(s("a@b.nl"), s("0301234567")),
            1,
            &school(LasSystem::Esis),
        ));
        for d in &a.decisions {
            let code = d.code();
            assert!(
                !code.contains("Anna") && !code.contains("a@b.nl") && !code.contains("0301234567")
            );
        }
    }

    #[test]
    fn decision_codes_are_rule_action_and_field() {
        let a = applied(ap(
            None,
            &guardian(s("a@b.nl"), s("0301234567")),
            1,
            &school(LasSystem::Esis),
        ));
        for d in &a.decisions {
            let want = match d.field {
                Some(f) => format!("{}:{}:{}", d.rule.as_str(), d.action.as_str(), f.as_str()),
                None => format!("{}:{}", d.rule.as_str(), d.action.as_str()),
            };
            assert_eq!(d.code(), want);
        }
        assert!(a.decisions.iter().any(|d| d.field.is_some()));
    }

    #[test]
    fn r12_a_purged_profile_stays_purged_until_the_las_re_enrols_it() {
        let sch = school(LasSystem::Parnassys);
        let mut purged = existing(Contact::default(), 3);
        purged.version = 5; // removed at version 5, purged after the term
        purged.status = Status::Deactivated;
        purged.purged = true;
        let late = guardian(s("a@example.org"), s("0611"));
        assert_eq!(
            ap(Some(&purged), &late, 4, &sch),
            Outcome::Stale,
            "an upsert older than the removal writes nothing back"
        );
        let back = applied(ap(Some(&purged), &late, 6, &sch));
        assert_eq!(back.profile.status, Status::Active, "re-enrolled");
        assert_eq!(back.profile.contact.phone, s("0611"));
        // Not purged yet: a late upsert still updates the deactivated profile's data.
        let mut removed = purged.clone();
        removed.purged = false;
        assert!(matches!(
            ap(Some(&removed), &late, 4, &sch),
            Outcome::Applied(_)
        ));
    }

    #[test]
    fn r3_staff_keep_only_name_work_email_and_published_phones() {
        let staff = |street: Option<String>| {
            LasProfile::from_staff(&StaffRecord {
                las_key: "M1".into(),
                first_name: s("Juf"),
                last_name: s("Jansen"),
                street,
                postcode: s("1234 AB"),
                city: s("Utrecht"),
                phone: s("030-1234567"),
                mobile: s("06-12345678"),
                email: s("juf@school.example"),
                ..StaffRecord::default()
            })
        };
        let mut home = existing(Contact::default(), 1);
        home.contact.street = s("Thuisweg 1");
        home.contact.phone = s("030-0000000");
        let sch = school(LasSystem::Parnassys);
        let a = applied(ap(Some(&home), &staff(s("Thuisweg 2")), 2, &sch));
        assert_eq!(a.profile.contact.first_name, s("Juf"));
        assert_eq!(
            a.profile.contact.email,
            s("juf@school.example"),
            "work e-mail"
        );
        for (field, value) in [
            ("street", &a.profile.contact.street),
            ("postcode", &a.profile.contact.postcode),
            ("city", &a.profile.contact.city),
            ("phone", &a.profile.contact.phone),
            ("mobile", &a.profile.contact.mobile),
        ] {
            assert_eq!(
                value, &None,
                "staff {field} is not shown to parents, so not imported"
            );
        }
        assert!(
            has(&a, Rule::R3, Action::Cleared, Some(Field::Street)),
            "the home address the portal held is cleared"
        );
        let mut publishing = sch.clone();
        publishing.staff_phones = vec![las_contracts::StaffPhone::Mobile];
        let a = applied(ap(None, &staff(None), 1, &publishing));
        assert_eq!(
            a.profile.contact.mobile,
            s("06-12345678"),
            "the school publishes mobiles"
        );
        assert_eq!(a.profile.contact.phone, None);
    }
}
