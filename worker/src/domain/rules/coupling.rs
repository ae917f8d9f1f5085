//! R13: coupling LAS records to the portal profiles a school already has
//! (go-live, seed 001 "ParnasSys / ESIS is altijd leidend": *Wanneer je start
//! met de koppeling heb je zowel Ouderportaal- als ParnasSys / ESIS
//! Profielen. Deze ga je (middels de first-run of via 'Niet gekoppelde
//! profielen') aan elkaar koppelen.*).
//!
//! A portal profile without a LAS key is the portal's. A LAS record with a
//! key the portal does not know is matched against those profiles of the
//! same school and kind:
//! - guardian and staff: the same e-mail address (trimmed, case-insensitive);
//! - student: the same birth date and the same first and last name (case-
//!   and whitespace-insensitive; the name prefix is ignored).
//!
//! Exactly one match, claimed by no other record of the batch, and the
//! school's `coupling` is `auto`: the record is coupled (applied to that
//! profile, R1-R5 as for any update). No match: a new profile. Several
//! matches, or `review`: the record waits for the school's decision.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use las_contracts::{
    Change, CouplingMode, GuardianRecord, RejectReason, StaffRecord, StudentRecord,
};

use crate::domain::model::*;
use crate::domain::rules::source::{SourceRefusal, refuse};

/// What a LAS record is matched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchKey {
    /// Guardian, staff: the normalised e-mail address.
    Email(String),
    /// Student: birth date and normalised first and last name.
    Student {
        birth_date: NaiveDate,
        first_name: String,
        last_name: String,
    },
}

/// E-mail for matching: trimmed, lower case.
pub fn match_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A name for matching: lower case, without any whitespace.
pub fn match_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect()
}

/// What `record` is matched on; `None` when it has nothing to match on (no
/// e-mail, or a student without birth date or name): it never couples by
/// itself.
pub fn match_key(record: &LasProfile) -> Option<MatchKey> {
    let c = &record.contact;
    match record.kind {
        ProfileKind::Guardian | ProfileKind::Staff => c
            .email
            .as_deref()
            .map(match_email)
            .filter(|e| !e.is_empty())
            .map(MatchKey::Email),
        ProfileKind::Student => {
            let first = c.first_name.as_deref().map(match_name)?;
            let last = c.last_name.as_deref().map(match_name)?;
            if first.is_empty() || last.is_empty() {
                return None;
            }
            Some(MatchKey::Student {
                birth_date: c.birth_date?,
                first_name: first,
                last_name: last,
            })
        }
    }
}

/// Does the portal profile with contact data `c` match?
pub fn is_match(key: &MatchKey, c: &Contact) -> bool {
    match key {
        MatchKey::Email(e) => c.email.as_deref().map(match_email).as_deref() == Some(e.as_str()),
        MatchKey::Student {
            birth_date,
            first_name,
            last_name,
        } => {
            c.birth_date == Some(*birth_date)
                && c.first_name.as_deref().map(match_name).as_deref() == Some(first_name.as_str())
                && c.last_name.as_deref().map(match_name).as_deref() == Some(last_name.as_str())
        }
    }
}

/// Why a LAS record waits for the school.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    /// Several portal profiles match (or one is matched by several records).
    Ambiguous,
    /// The school's `coupling` is `review`.
    Review,
    /// The school undid a coupling.
    Uncoupled,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Ambiguous => "ambiguous",
            WaitReason::Review => "review",
            WaitReason::Uncoupled => "uncoupled",
        }
    }
}

/// What happens to a LAS record with a key the portal does not know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Apply it to this portal profile, which gets its key.
    Couple(i64),
    /// A new portal profile.
    New,
    /// Store it, invisible, until the school decides.
    Wait {
        reason: WaitReason,
        candidates: Vec<i64>,
    },
}

/// R13 for the new keys of a batch: `matches` holds, per key, its school's
/// setting and the ids of the portal profiles that match it. A profile
/// matched by several keys is ambiguous for each of them.
pub fn plan<K: Ord + Clone>(matches: &BTreeMap<K, (CouplingMode, Vec<i64>)>) -> BTreeMap<K, Plan> {
    let mut claims: HashMap<i64, usize> = HashMap::new();
    for (_, ids) in matches.values() {
        for id in ids {
            *claims.entry(*id).or_default() += 1;
        }
    }
    matches
        .iter()
        .map(|(k, (mode, ids))| {
            let mut ids = ids.clone();
            ids.sort_unstable();
            ids.dedup();
            let plan = match ids.as_slice() {
                [] => Plan::New,
                [one] if claims.get(one) == Some(&1) && *mode == CouplingMode::Auto => {
                    Plan::Couple(*one)
                }
                [one] if claims.get(one) == Some(&1) => Plan::Wait {
                    reason: WaitReason::Review,
                    candidates: ids,
                },
                _ => Plan::Wait {
                    reason: WaitReason::Ambiguous,
                    candidates: ids,
                },
            };
            (k.clone(), plan)
        })
        .collect()
}

/// What a batch's messages do to a LAS record that already waits (stored
/// with `version`): newer upserts replace the stored record (the newest is
/// kept), a newer removal ends the wait (the LAS removed the record; R12:
/// nothing of it stays), older or equal versions are stale.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitFold {
    /// Still waiting; `newest`: the index (into the given messages) of the
    /// upsert to store now, if any is newer; `applied`/`stale`: indexes.
    Waits {
        newest: Option<usize>,
        applied: Vec<usize>,
        stale: Vec<usize>,
    },
    /// A removal newer than the stored record: the wait ends; the messages
    /// go through the rules as for a key the portal does not know.
    Removed,
}

/// R13 + R12: fold `msgs` (version, is removal) into a wait stored at
/// `version`.
pub fn fold_wait(version: i64, msgs: &[(i64, bool)]) -> WaitFold {
    if msgs.iter().any(|(v, removal)| *removal && *v > version) {
        return WaitFold::Removed;
    }
    let mut newest: Option<(i64, usize)> = None;
    let mut applied = Vec::new();
    let mut stale = Vec::new();
    for (i, (v, _)) in msgs.iter().enumerate() {
        if *v > version {
            applied.push(i);
            if newest.is_none_or(|(nv, _)| *v > nv) {
                newest = Some((*v, i));
            }
        } else {
            stale.push(i);
        }
    }
    WaitFold::Waits {
        newest: newest.map(|(_, i)| i),
        applied,
        stale,
    }
}

/// A portal profile a coupling decision names, as the database has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: i64,
    pub school_id: i64,
    pub kind: Option<ProfileKind>,
    /// The LAS key it is coupled to, if any.
    pub las_key: Option<String>,
    pub status: String,
}

fn refused(text: String) -> SourceRefusal {
    refuse(RejectReason::CouplingRefused, text)
}

/// R13: may the waiting LAS record (`kind`, `key`, of school `school_id`)
/// be coupled to `target`? `waiting`: the record waits for a decision.
pub fn check_couple(
    brin: &str,
    school_id: i64,
    kind: ProfileKind,
    key: &str,
    waiting: bool,
    target_id: i64,
    target: Option<&Target>,
) -> Result<(), SourceRefusal> {
    let Some(t) = target else {
        return Err(refused(format!(
            "portal profile {target_id} does not exist; nothing was coupled (R13)"
        )));
    };
    if t.school_id != school_id {
        return Err(refused(format!(
            "portal profile {target_id} belongs to another school than BRIN {brin}; a LAS record is only coupled within its own school (R13)"
        )));
    }
    if t.kind != Some(kind) {
        return Err(refused(format!(
            "portal profile {target_id} is a {}, the LAS record {key} a {}; a coupling keeps the kind (R13)",
            t.kind
                .map(ProfileKind::as_str)
                .unwrap_or("profile of unknown kind"),
            kind.as_str()
        )));
    }
    if let Some(other) = &t.las_key {
        return Err(refused(format!(
            "portal profile {target_id} is already coupled to LAS record {other}; uncouple it first (R13)"
        )));
    }
    if t.status != "active" {
        return Err(refused(format!(
            "portal profile {target_id} is {}; only an active portal profile is coupled (R13)",
            t.status
        )));
    }
    if !waiting {
        return Err(refused(format!(
            "the {} LAS record {key} of BRIN {brin} does not wait for a coupling decision (it is coupled already, or the LAS never sent it); see `las-worker profiles unlinked --brin {brin}` (R13)",
            kind.as_str()
        )));
    }
    Ok(())
}

/// R13: a `create` decision needs a waiting record.
pub fn check_create(
    brin: &str,
    kind: ProfileKind,
    key: &str,
    waiting: bool,
) -> Result<(), SourceRefusal> {
    if waiting {
        return Ok(());
    }
    Err(refused(format!(
        "the {} LAS record {key} of BRIN {brin} does not wait for a coupling decision; nothing was created (R13)",
        kind.as_str()
    )))
}

/// R13: an `uncouple` decision needs a profile coupled to the key (and,
/// when the decision names one, that profile).
pub fn check_uncouple(
    brin: &str,
    kind: ProfileKind,
    key: &str,
    coupled_to: Option<i64>,
    named: Option<i64>,
) -> Result<i64, SourceRefusal> {
    match (coupled_to, named) {
        (None, _) => Err(refused(format!(
            "no portal profile of BRIN {brin} is coupled to the {} LAS record {key}; nothing was uncoupled (R13)",
            kind.as_str()
        ))),
        (Some(id), Some(n)) if id != n => Err(refused(format!(
            "the {} LAS record {key} is coupled to portal profile {id}, not {n}; nothing was uncoupled (R13)",
            kind.as_str()
        ))),
        (Some(id), _) => Ok(id),
    }
}

/// R13 uncouple: the LAS record as the portal last had it, stored again as
/// a waiting record until the school decides. The portal profile keeps its
/// data; the record is the LAS's copy of it.
pub fn record_from_profile(
    kind: ProfileKind,
    key: &str,
    c: &Contact,
    group_keys: Vec<String>,
    student_keys: Vec<String>,
) -> Change {
    match kind {
        ProfileKind::Student => Change::StudentUpserted(StudentRecord {
            las_key: key.to_owned(),
            first_name: c.first_name.clone(),
            name_prefix: c.name_prefix.clone(),
            last_name: c.last_name.clone(),
            birth_date: c.birth_date,
            street: c.street.clone(),
            postcode: c.postcode.clone(),
            city: c.city.clone(),
            phone: None,
            group_keys: Some(group_keys),
        }),
        ProfileKind::Guardian => Change::GuardianUpserted(GuardianRecord {
            las_key: key.to_owned(),
            first_name: c.first_name.clone(),
            name_prefix: c.name_prefix.clone(),
            last_name: c.last_name.clone(),
            street: c.street.clone(),
            postcode: c.postcode.clone(),
            city: c.city.clone(),
            phone: c.phone.clone(),
            mobile: c.mobile.clone(),
            emergency_phone: c.emergency_phone.clone(),
            email: c.email.clone(),
            student_keys: Some(student_keys),
        }),
        ProfileKind::Staff => Change::StaffUpserted(StaffRecord {
            las_key: key.to_owned(),
            first_name: c.first_name.clone(),
            name_prefix: c.name_prefix.clone(),
            last_name: c.last_name.clone(),
            email: c.email.clone(),
            phone: c.phone.clone(),
            mobile: c.mobile.clone(),
            street: None,
            postcode: None,
            city: None,
            emergency_phone: None,
            group_keys: Some(group_keys),
        }),
    }
}

/// The portal profile as the rules see it when a LAS record is coupled to
/// it: its data and role as the portal has them, and no LAS version yet, so
/// the record applies as an update (R1-R5).
pub fn coupled_state(contact: Contact, role: Option<String>) -> Profile {
    Profile {
        contact,
        status: Status::Active,
        role,
        shown: true,
        ..Profile::empty()
    }
}

/// The R13 decision that goes with a coupling.
pub fn decision(action: Action) -> Decision {
    Decision::new(Rule::R13, action, None)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap()
    }

    fn guardian(email: Option<&str>) -> LasProfile {
        LasProfile {
            kind: ProfileKind::Guardian,
            las_key: "G1".into(),
            contact: Contact {
                email: email.map(str::to_owned),
                ..Contact::default()
            },
            group_keys: vec![],
            student_keys: vec![],
        }
    }

    fn student(first: &str, prefix: Option<&str>, last: &str, born: &str) -> Contact {
        Contact {
            first_name: Some(first.into()),
            name_prefix: prefix.map(str::to_owned),
            last_name: Some(last.into()),
            birth_date: Some(d(born)),
            ..Contact::default()
        }
    }

    #[test]
    fn guardians_and_staff_match_on_email_trimmed_and_case_insensitive() {
        let key = match_key(&guardian(Some("Ouder@Example.NL"))).unwrap();
        let portal = Contact {
            email: Some("  ouder@example.nl ".into()),
            ..Contact::default()
        };
        assert!(is_match(&key, &portal));
        let other = Contact {
            email: Some("ouder2@example.nl".into()),
            ..Contact::default()
        };
        assert!(!is_match(&key, &other));
        assert!(!is_match(&key, &Contact::default()), "no e-mail, no match");
    }

    #[test]
    fn a_record_without_email_never_couples_by_itself() {
        assert_eq!(match_key(&guardian(None)), None);
        assert_eq!(match_key(&guardian(Some("  "))), None);
    }

    #[test]
    fn students_match_on_birth_date_and_name_ignoring_prefix_case_and_spaces() {
        let record = LasProfile {
            kind: ProfileKind::Student,
            las_key: "S1".into(),
            contact: student("Anne Marie", Some("van"), "Dijk", "2019-03-01"),
            group_keys: vec![],
            student_keys: vec![],
        };
        let key = match_key(&record).unwrap();
        assert!(is_match(
            &key,
            &student("annemarie", None, "DIJK ", "2019-03-01")
        ));
        assert!(is_match(
            &key,
            &student("Anne  Marie", Some("Van"), "dijk", "2019-03-01")
        ));
        assert!(
            !is_match(
                &key,
                &student("Anne Marie", Some("van"), "Dijk", "2019-03-02")
            ),
            "another birth date is another child"
        );
        assert!(!is_match(
            &key,
            &student("Anne", Some("van"), "Dijk", "2019-03-01")
        ));
    }

    #[test]
    fn a_student_without_birth_date_or_name_has_no_match_key() {
        let mut c = student("A", None, "B", "2019-03-01");
        c.birth_date = None;
        let record = LasProfile {
            kind: ProfileKind::Student,
            las_key: "S1".into(),
            contact: c,
            group_keys: vec![],
            student_keys: vec![],
        };
        assert_eq!(match_key(&record), None);
    }

    #[test]
    fn one_unclaimed_match_couples_when_the_school_allows_it() {
        let m = BTreeMap::from([
            ("A", (CouplingMode::Auto, vec![7])),
            ("B", (CouplingMode::Auto, vec![])),
            ("C", (CouplingMode::Review, vec![8])),
        ]);
        let p = plan(&m);
        assert_eq!(p["A"], Plan::Couple(7));
        assert_eq!(p["B"], Plan::New, "no match: a new profile");
        assert_eq!(
            p["C"],
            Plan::Wait {
                reason: WaitReason::Review,
                candidates: vec![8]
            },
            "review: never couples by itself"
        );
    }

    #[test]
    fn several_matches_or_a_shared_match_wait() {
        let m = BTreeMap::from([
            ("A", (CouplingMode::Auto, vec![9, 7])),
            ("B", (CouplingMode::Auto, vec![5])),
            ("C", (CouplingMode::Auto, vec![5])),
        ]);
        let p = plan(&m);
        assert_eq!(
            p["A"],
            Plan::Wait {
                reason: WaitReason::Ambiguous,
                candidates: vec![7, 9]
            }
        );
        for k in ["B", "C"] {
            assert_eq!(
                p[k],
                Plan::Wait {
                    reason: WaitReason::Ambiguous,
                    candidates: vec![5]
                },
                "two LAS records claim one portal profile: neither couples"
            );
        }
    }

    #[test]
    fn a_wait_keeps_the_newest_record_and_ends_with_a_newer_removal() {
        assert_eq!(
            fold_wait(3, &[(2, false), (5, false), (4, false)]),
            WaitFold::Waits {
                newest: Some(1),
                applied: vec![1, 2],
                stale: vec![0]
            }
        );
        assert_eq!(fold_wait(3, &[(4, false), (5, true)]), WaitFold::Removed);
        assert_eq!(
            fold_wait(3, &[(2, true)]),
            WaitFold::Waits {
                newest: None,
                applied: vec![],
                stale: vec![0]
            },
            "an older removal is stale"
        );
    }

    fn target(school_id: i64, kind: ProfileKind, key: Option<&str>) -> Target {
        Target {
            id: 7,
            school_id,
            kind: Some(kind),
            las_key: key.map(str::to_owned),
            status: "active".into(),
        }
    }

    #[test]
    fn coupling_is_refused_across_schools_kinds_and_to_a_coupled_profile() {
        let g = ProfileKind::Guardian;
        let ok = target(1, g, None);
        assert!(check_couple("12AB", 1, g, "G1", true, 7, Some(&ok)).is_ok());
        let other_school =
            check_couple("12AB", 1, g, "G1", true, 7, Some(&target(2, g, None))).unwrap_err();
        assert_eq!(other_school.reason, RejectReason::CouplingRefused);
        assert!(other_school.text.contains("another school"));
        let other_kind = check_couple(
            "12AB",
            1,
            g,
            "G1",
            true,
            7,
            Some(&target(1, ProfileKind::Staff, None)),
        )
        .unwrap_err();
        assert!(other_kind.text.contains("staff"));
        let coupled =
            check_couple("12AB", 1, g, "G1", true, 7, Some(&target(1, g, Some("G9")))).unwrap_err();
        assert!(coupled.text.contains("already coupled to LAS record G9"));
        assert!(check_couple("12AB", 1, g, "G1", true, 7, None).is_err());
        let not_waiting = check_couple("12AB", 1, g, "G1", false, 7, Some(&ok)).unwrap_err();
        assert!(not_waiting.text.contains("does not wait"));
    }

    #[test]
    fn uncouple_needs_the_coupled_profile() {
        let g = ProfileKind::Guardian;
        assert_eq!(check_uncouple("12AB", g, "G1", Some(7), None).unwrap(), 7);
        assert_eq!(
            check_uncouple("12AB", g, "G1", Some(7), Some(7)).unwrap(),
            7
        );
        assert!(check_uncouple("12AB", g, "G1", Some(7), Some(8)).is_err());
        assert!(check_uncouple("12AB", g, "G1", None, None).is_err());
        assert!(check_create("12AB", g, "G1", false).is_err());
    }

    #[test]
    fn an_uncoupled_record_round_trips_through_the_rules_input() {
        let c = student("Jan", Some("de"), "Vries", "2018-01-02");
        let change = record_from_profile(ProfileKind::Student, "S1", &c, vec!["Y3".into()], vec![]);
        let Change::StudentUpserted(r) = change else {
            panic!("a student record")
        };
        let back = LasProfile::from_student(&r);
        assert_eq!(back.contact, c);
        assert_eq!(back.group_keys, vec!["Y3".to_owned()]);
    }
}
