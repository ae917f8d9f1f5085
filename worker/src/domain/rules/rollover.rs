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

/// The school year as the rollover keeps it: `2026-2027`, without the
/// whitespace a LAS may send around it.
pub fn school_year(raw: &str) -> &str {
    raw.trim()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(school_year(" 2026-2027 "), "2026-2027");
    }
}
