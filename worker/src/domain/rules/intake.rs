//! R9: children under 4, the intake group and the 4th birthday.

use chrono::NaiveDate;

use crate::domain::model::*;

/// The day a child born on `birth` turns 4. A child born on 29 February
/// turns 4 on 1 March in a year without 29 February (Dutch civil law).
pub fn fourth_birthday(birth: NaiveDate) -> NaiveDate {
    use chrono::Datelike;
    let year = birth.year() + 4;
    birth
        .with_year(year)
        .or_else(|| NaiveDate::from_ymd_opt(year, 3, 1))
        .unwrap_or(NaiveDate::MAX)
}

/// Where a student belongs today (R9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `Active` or `Held`.
    pub status: Status,
    pub in_intake: bool,
    /// Effective memberships: the LAS groups, the intake group, or none.
    pub groups: Vec<String>,
}

/// R9: children under 4 are held back, or placed in the intake group from
/// `intake_weeks_ahead` weeks before their 4th birthday; on the birthday they
/// move to their LAS groups, or stay in intake while the LAS assigns none.
/// `today` is the school's local date (Europe/Amsterdam).
pub fn place_student(
    birth: Option<NaiveDate>,
    las_groups: &[String],
    was_in_intake: bool,
    school: &SchoolSettings,
    today: NaiveDate,
) -> (Placement, Option<Decision>) {
    let groups = Placement {
        status: Status::Active,
        in_intake: false,
        groups: las_groups.to_vec(),
    };
    let intake = Placement {
        status: Status::Active,
        in_intake: true,
        groups: vec![INTAKE_GROUP_KEY.to_owned()],
    };
    // Without a birth date the age is unknown: import as usual.
    let Some(birth) = birth else {
        return (groups, None);
    };
    let turns_four = fourth_birthday(birth);
    if today >= turns_four {
        return match (was_in_intake, las_groups.is_empty()) {
            (true, true) => (
                intake,
                Some(Decision::new(Rule::R9, Action::StaysInIntake, None)),
            ),
            (true, false) => (
                groups,
                Some(Decision::new(Rule::R9, Action::Promoted, None)),
            ),
            (false, _) => (groups, None),
        };
    }
    let window_opens = school
        .intake_weeks_ahead
        .and_then(|w| turns_four.checked_sub_days(chrono::Days::new(7 * u64::from(w))));
    match window_opens {
        Some(opens) if today >= opens => {
            let d = (!was_in_intake).then(|| Decision::new(Rule::R9, Action::PlacedInIntake, None));
            (intake, d)
        }
        _ => (
            Placement {
                status: Status::Held,
                in_intake: false,
                groups: vec![],
            },
            Some(Decision::new(Rule::R9, Action::HeldBack, None)),
        ),
    }
}

/// What the daily job does with one held or intake student (R9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DailyStep {
    /// Where the child belongs today.
    pub placement: Placement,
    /// The R9 decision of the day, for the job's counts.
    pub decision: Option<Decision>,
    /// Whether status or intake membership changes (else nothing is written).
    pub changed: bool,
    /// The sync event: `profile.created` when a held child becomes visible,
    /// `profile.moved_from_intake` on the 4th birthday.
    pub event: Option<las_contracts::SyncEventType>,
}

/// R9, daily: places a held or intake student for `today`.
pub fn daily_step(
    status: Status,
    in_intake: bool,
    birth: Option<NaiveDate>,
    las_groups: &[String],
    school: &SchoolSettings,
    today: NaiveDate,
) -> DailyStep {
    use las_contracts::SyncEventType as E;
    let (placement, decision) = place_student(birth, las_groups, in_intake, school, today);
    let changed = placement.status != status || placement.in_intake != in_intake;
    let event = match (status, placement.status, in_intake, placement.in_intake) {
        _ if !changed => None,
        (Status::Held, Status::Active, _, _) => Some(E::ProfileCreated),
        (Status::Active, Status::Active, true, false) => Some(E::ProfileMovedFromIntake),
        _ => None,
    };
    DailyStep {
        placement,
        decision,
        changed,
        event,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::domain::rules::test_support::*;

    #[test]
    fn r9_fourth_birthday_and_29_february() {
        assert_eq!(fourth_birthday(d(2022, 6, 15)), d(2026, 6, 15));
        assert_eq!(
            fourth_birthday(d(2020, 2, 29)),
            d(2024, 2, 29),
            "leap year to leap year"
        );
        assert_eq!(fourth_birthday(d(2023, 2, 28)), d(2027, 2, 28));
        assert_eq!(fourth_birthday(d(2024, 2, 29)), d(2028, 2, 29));
        // Four years after a leap year is a leap year, except across a century
        // that is not one: born 29 February 2096, no 29 February in 2100.
        assert_eq!(
            fourth_birthday(d(2096, 2, 29)),
            d(2100, 3, 1),
            "turns 4 on 1 March"
        );
    }

    #[test]
    fn r9_under_4_is_held_back_by_default() {
        let (p, dec) = place_student(
            Some(d(2023, 1, 15)),
            &groups(&["G12"]),
            false,
            &intake_school(None),
            d(2026, 11, 22),
        );
        assert_eq!(p.status, Status::Held);
        assert!(p.groups.is_empty());
        assert_eq!(dec.map(|x| x.action), Some(Action::HeldBack));
    }

    #[test]
    fn r9_intake_window_edges() {
        // Turns 4 on 2027-01-15; 8 weeks ahead the window opens on 2026-11-20.
        let sch = intake_school(Some(8));
        let birth = Some(d(2023, 1, 15));
        let g = groups(&["G12"]);
        let (before, _) = place_student(birth, &g, false, &sch, d(2026, 11, 19));
        assert_eq!(before.status, Status::Held, "the day before the window");
        let (first, dec) = place_student(birth, &g, false, &sch, d(2026, 11, 20));
        assert_eq!(first.status, Status::Active, "the first day of the window");
        assert!(first.in_intake);
        assert_eq!(first.groups, groups(&[INTAKE_GROUP_KEY]));
        assert_eq!(dec.map(|x| x.action), Some(Action::PlacedInIntake));
        let (eve, _) = place_student(birth, &g, true, &sch, d(2027, 1, 14));
        assert!(eve.in_intake, "still in intake the day before the birthday");
        let (birthday, dec) = place_student(birth, &g, true, &sch, d(2027, 1, 15));
        assert!(!birthday.in_intake, "the birthday itself");
        assert_eq!(birthday.groups, g);
        assert_eq!(dec.map(|x| x.action), Some(Action::Promoted));
    }

    #[test]
    fn r9_birthday_without_las_group_stays_in_intake() {
        let sch = intake_school(Some(8));
        let (p, dec) = place_student(Some(d(2022, 1, 1)), &[], true, &sch, d(2026, 11, 22));
        assert!(p.in_intake);
        assert_eq!(dec.map(|x| x.action), Some(Action::StaysInIntake));
        // A 4-year-old never in intake and without groups is simply imported.
        let (p, dec) = place_student(Some(d(2022, 1, 1)), &[], false, &sch, d(2026, 11, 22));
        assert!(!p.in_intake);
        assert_eq!(p.status, Status::Active);
        assert_eq!(dec, None);
    }

    #[test]
    fn r9_29_february_child_enters_on_1_march_in_a_non_leap_year() {
        let sch = intake_school(Some(0));
        let birth = Some(d(2096, 2, 29));
        assert_eq!(
            place_student(birth, &groups(&["G1"]), false, &sch, d(2100, 2, 28))
                .0
                .status,
            Status::Held
        );
        assert!(
            place_student(birth, &groups(&["G1"]), false, &sch, d(2100, 3, 1))
                .0
                .status
                == Status::Active
        );
    }

    #[test]
    fn r9_student_upsert_uses_placement() {
        let sch = intake_school(None);
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            birth_date: Some(d(2023, 1, 15)),
            group_keys: Some(vec!["G12".into()]),
            ..StudentRecord::default()
        });
        let a = applied(ap(None, &las, 1, &sch));
        assert_eq!(a.profile.status, Status::Held);
        assert_eq!(a.group_keys, Some(vec![]));
        assert_eq!(a.profile.las_group_keys, groups(&["G12"]));
        assert!(has(&a, Rule::R9, Action::HeldBack, None));
    }

    #[test]
    fn r9_daily_a_held_child_enters_intake_n_weeks_before_the_4th_birthday_and_becomes_visible() {
        let birth = d(2023, 3, 1);
        let school = intake_school(Some(6));
        let before = daily_step(
            Status::Held,
            false,
            Some(birth),
            &groups(&["G1"]),
            &school,
            d(2027, 1, 17),
        );
        assert!(!before.changed, "more than 6 weeks ahead: still held");
        assert_eq!(before.decision.map(|d| d.action), Some(Action::HeldBack));
        let step = daily_step(
            Status::Held,
            false,
            Some(birth),
            &groups(&["G1"]),
            &school,
            d(2027, 1, 18),
        );
        assert!(step.changed && step.placement.in_intake);
        assert_eq!(
            step.event,
            Some(las_contracts::SyncEventType::ProfileCreated)
        );
        assert_eq!(
            step.decision.map(|d| d.action),
            Some(Action::PlacedInIntake)
        );
    }

    #[test]
    fn r9_daily_on_the_4th_birthday_the_child_moves_to_its_group() {
        let birth = d(2023, 3, 1);
        let school = intake_school(Some(6));
        let step = daily_step(
            Status::Active,
            true,
            Some(birth),
            &groups(&["G1"]),
            &school,
            d(2027, 3, 1),
        );
        assert!(step.changed && !step.placement.in_intake);
        assert_eq!(step.placement.groups, groups(&["G1"]));
        assert_eq!(
            step.event,
            Some(las_contracts::SyncEventType::ProfileMovedFromIntake)
        );
        assert_eq!(step.decision.map(|d| d.action), Some(Action::Promoted));
        let stays = daily_step(
            Status::Active,
            true,
            Some(birth),
            &[],
            &school,
            d(2027, 3, 1),
        );
        assert!(
            !stays.changed && stays.event.is_none(),
            "no LAS group yet: stays in intake"
        );
    }
}
