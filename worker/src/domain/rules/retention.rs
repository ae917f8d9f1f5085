//! R12 (and R9 for guardians): a guardian's status follows its students.

use crate::domain::model::*;

/// R9 and R12 for guardians, from the statuses of their students the portal
/// knows (students it has not seen yet do not count): with an active student
/// or no known student a guardian is active; with only held students (under
/// 4, not imported) it is held; with only removed students it is deactivated
/// (reason `all_students_removed`).
pub fn guardian_status(students: &[Status]) -> Status {
    if students.is_empty() || students.contains(&Status::Active) {
        Status::Active
    } else if students.contains(&Status::Held) {
        Status::Held
    } else {
        Status::Deactivated
    }
}

/// Whether R9/R12 may change a guardian's status from its students: not when
/// the LAS removed the guardian itself (it stays deactivated until the LAS
/// sends it again).
pub fn guardian_follows_students(status: Status, deactivation_reason: Option<&str>) -> bool {
    match status {
        Status::Active | Status::Held => true,
        Status::Deactivated => deactivation_reason == Some(ALL_STUDENTS_REMOVED),
    }
}

/// R12 (issue #18): a record the portal never showed (held back, R9) has no
/// purpose once it is deactivated: nobody saw it, nobody needs it for the
/// leaving child's last weeks. Its personal data is purged at once instead
/// of after the retention term.
/// `shown`: the profile was ever active (a guardian may go from active to
/// held when its last visible child leaves; it keeps its term then).
pub fn purge_at_once(was: Status, now: Status, shown: bool) -> bool {
    was == Status::Held && now == Status::Deactivated && !shown
}

/// Deactivation reason of a guardian whose students were all removed (R12).
pub const ALL_STUDENTS_REMOVED: &str = "all_students_removed";

/// Where a dead letter stands against its term (R12: a dead letter is a
/// copy of a message, personal data included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterTerm {
    /// Past the term: dropped.
    Expired,
    /// Within a week of its term: an operator is warned (a metric).
    Expiring,
    Kept,
}

/// Days before the term from which a dead letter counts as expiring.
pub const DEAD_LETTER_WARNING_DAYS: i64 = 7;

/// A dead letter `age` old against a term of `term_days` (0: kept for ever).
/// One without a known age is kept: nothing is dropped on a guess.
pub fn dead_letter_term(age: Option<chrono::Duration>, term_days: u32) -> DeadLetterTerm {
    let Some(age) = age else {
        return DeadLetterTerm::Kept;
    };
    if term_days == 0 {
        return DeadLetterTerm::Kept;
    }
    let term = chrono::Duration::days(i64::from(term_days));
    if age > term {
        DeadLetterTerm::Expired
    } else if age > term - chrono::Duration::days(DEAD_LETTER_WARNING_DAYS) {
        DeadLetterTerm::Expiring
    } else {
        DeadLetterTerm::Kept
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn r9_r12_guardian_status_follows_known_students() {
        use Status::*;
        assert_eq!(guardian_status(&[]), Active, "no known student yet");
        assert_eq!(guardian_status(&[Held, Active]), Active);
        assert_eq!(guardian_status(&[Deactivated, Active]), Active);
        assert_eq!(
            guardian_status(&[Held, Held]),
            Held,
            "R9: only children under 4"
        );
        assert_eq!(guardian_status(&[Held, Deactivated]), Held);
        assert_eq!(
            guardian_status(&[Deactivated]),
            Deactivated,
            "R12: all removed"
        );
        assert!(guardian_follows_students(Active, None));
        assert!(guardian_follows_students(Held, None));
        assert!(guardian_follows_students(
            Deactivated,
            Some(ALL_STUDENTS_REMOVED)
        ));
        assert!(
            !guardian_follows_students(Deactivated, Some("removed_in_las")),
            "R12: a guardian the LAS removed stays removed"
        );
    }

    #[test]
    fn r12_dead_letters_are_dropped_after_their_term_and_warned_a_week_before() {
        let d = |n: i64| Some(chrono::Duration::days(n));
        assert_eq!(dead_letter_term(d(31), 30), DeadLetterTerm::Expired);
        assert_eq!(dead_letter_term(d(29), 30), DeadLetterTerm::Expiring);
        assert_eq!(dead_letter_term(d(24), 30), DeadLetterTerm::Expiring);
        assert_eq!(
            dead_letter_term(d(23), 30),
            DeadLetterTerm::Kept,
            "exactly a week before its term"
        );

        assert_eq!(
            dead_letter_term(d(400), 0),
            DeadLetterTerm::Kept,
            "0 keeps them"
        );
        assert_eq!(
            dead_letter_term(None, 30),
            DeadLetterTerm::Kept,
            "no date: never dropped on a guess"
        );
    }
}
