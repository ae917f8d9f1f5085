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

/// Deactivation reason of a guardian whose students were all removed (R12).
pub const ALL_STUDENTS_REMOVED: &str = "all_students_removed";

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
}
