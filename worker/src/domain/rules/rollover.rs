//! R11: the school year rolls over once per school and year. Every
//! group-bound item is unlinked from its year or composite group (kept,
//! unpublished), and the year-bound records of earlier years are deleted.

use crate::domain::model::Action;

/// The records that belong to one school year and are deleted for earlier
/// years at the rollover (R11), by table.
pub const YEAR_BOUND_RECORDS: [&str; 3] = [
    "absence_reports",
    "leave_requests",
    "after_school_care_registrations",
];

/// R11 happens once per school and year: the first rollover message for a
/// year rolls over, every later one (a replay, a second replica) is told so.
pub fn rollover_action(first_for_this_year: bool) -> Action {
    if first_for_this_year {
        Action::RolledOver
    } else {
        Action::AlreadyRolledOver
    }
}

/// Group types whose items are unlinked at the rollover: every group the
/// portal has, the intake group included (seed `000`: at the year rollover
/// *all* links between groups and their items are broken, so next year's
/// parents never see last year's group items).
pub const UNLINKED_GROUP_TYPES: [&str; 4] = ["year", "composite", "alias", "intake"];

/// A school year as the contract writes it: two consecutive years,
/// `2026-2027`. Ordered by its first year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SchoolYear {
    pub first: u16,
}

impl SchoolYear {
    /// Reads `2026-2027` (surrounding whitespace ignored); `None` for any
    /// other spelling (`2026/2027`, `2026-2028`, `26-27`).
    pub fn parse(raw: &str) -> Option<SchoolYear> {
        let (a, b) = raw.trim().split_once('-')?;
        let digits = |s: &str| s.len() == 4 && s.bytes().all(|c| c.is_ascii_digit());
        if !digits(a) || !digits(b) {
            return None;
        }
        let (first, second): (u16, u16) = (a.parse().ok()?, b.parse().ok()?);
        (second == first.checked_add(1)?).then_some(SchoolYear { first })
    }

    /// The canonical spelling, `2026-2027`.
    pub fn label(self) -> String {
        format!("{}-{}", self.first, u32::from(self.first) + 1)
    }
}

/// R11/R12: at the rollover to `year`, the year-bound records of school
/// years before the returned one are deleted. By default (`kept_years` 0)
/// every earlier year's (seed 000: deleted at the rollover); a school that
/// keeps them `kept_years` more school years (at most five, seed 003) keeps
/// that many earlier years too.
pub fn year_records_kept_from(year: SchoolYear, kept_years: u32) -> SchoolYear {
    let kept = kept_years.min(crate::domain::model::MAX_YEAR_RECORDS_KEPT_YEARS) as u16;
    SchoolYear {
        first: year.first.saturating_sub(kept),
    }
}

/// R11 for a rollover to `year`, given the newest year already applied to
/// the school: roll over when it is newer (or the first), say so once more
/// when it is that same year, and `None` (stale: nothing unlinked, nothing
/// deleted) when it is older: a replayed or late `2025-2026` after
/// `2026-2027` must not unlink what the school republished since.
pub fn plan(year: SchoolYear, newest_applied: Option<SchoolYear>) -> Option<Action> {
    match newest_applied {
        Some(n) if year < n => None,
        Some(n) if year == n => Some(rollover_action(false)),
        _ => Some(rollover_action(true)),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn r11_r12_year_bound_records_go_at_the_rollover_unless_the_school_keeps_them() {
        let y = SchoolYear::parse("2026-2027").unwrap();
        assert_eq!(
            year_records_kept_from(y, 0).label(),
            "2026-2027",
            "seed 000: earlier years go"
        );
        assert_eq!(year_records_kept_from(y, 2).label(), "2024-2025");
        assert_eq!(
            year_records_kept_from(y, 9).label(),
            "2021-2022",
            "seed 003: never more than five years"
        );
    }

    #[test]
    fn r11_rolls_over_once_per_school_year() {
        assert_eq!(rollover_action(true), Action::RolledOver);
        assert_eq!(
            rollover_action(false),
            Action::AlreadyRolledOver,
            "a second message for the same year changes nothing"
        );
    }

    #[test]
    fn r11_deletes_absences_leave_and_after_school_care_of_earlier_years() {
        assert_eq!(
            YEAR_BOUND_RECORDS,
            [
                "absence_reports",
                "leave_requests",
                "after_school_care_registrations"
            ]
        );
    }

    #[test]
    fn r11_school_years_are_two_consecutive_years_compared_as_numbers() {
        let y = |s| SchoolYear::parse(s);
        assert_eq!(y(" 2026-2027 "), Some(SchoolYear { first: 2026 }));
        assert_eq!(
            y("2026-2027").map(|y| y.label()).as_deref(),
            Some("2026-2027")
        );
        for bad in [
            "2026/2027",
            "2026-2028",
            "2027-2026",
            "26-27",
            "2026-2027-2028",
            "",
            "abcd-efgh",
        ] {
            assert_eq!(y(bad), None, "{bad:?} is not a school year");
        }
        assert!(y("2099-2100") > y("2026-2027"));
    }

    #[test]
    fn r11_an_older_year_is_stale_the_same_year_is_said_once_more() {
        let y = |s| SchoolYear::parse(s).unwrap();
        assert_eq!(plan(y("2026-2027"), None), Some(Action::RolledOver));
        assert_eq!(
            plan(y("2027-2028"), Some(y("2026-2027"))),
            Some(Action::RolledOver)
        );
        assert_eq!(
            plan(y("2026-2027"), Some(y("2026-2027"))),
            Some(Action::AlreadyRolledOver)
        );
        assert_eq!(
            plan(y("2025-2026"), Some(y("2026-2027"))),
            None,
            "a replayed old year is stale"
        );
    }

    #[test]
    fn r11_every_group_loses_its_items_the_intake_group_too() {
        assert!(UNLINKED_GROUP_TYPES.contains(&"intake"));
    }
}
