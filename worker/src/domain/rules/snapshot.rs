//! R12: the deletion guard of full snapshots.

/// A snapshot may always deactivate this many profiles, whatever the percentage.
pub const SNAPSHOT_GUARD_MINIMUM: u64 = 5;

/// R12 deletion guard: a full snapshot may deactivate at most `percent` of the
/// school's active profiles, and always at least 5; more looks like a bad or
/// partial export, and is held for an operator. Returns the limit when exceeded.
pub fn snapshot_guard(active: u64, would_deactivate: u64, percent: u32) -> Result<(), u64> {
    let limit = (active * u64::from(percent))
        .div_ceil(100)
        .max(SNAPSHOT_GUARD_MINIMUM);
    if would_deactivate > limit {
        Err(limit)
    } else {
        Ok(())
    }
}

/// R12: why a completed full snapshot is held for an operator instead of
/// applied, or `None` to apply it: not every record the connector sent
/// arrived (a partial export), or it would deactivate more than the
/// deletion guard allows.
pub fn held_reason(
    records_sent: u64,
    records_arrived: u64,
    active: u64,
    would_deactivate: u64,
    guard_percent: u32,
) -> Option<String> {
    if records_arrived != records_sent {
        return Some(format!(
            "count mismatch: the connector sent {records_sent} records, {records_arrived} arrived"
        ));
    }
    snapshot_guard(active, would_deactivate, guard_percent)
        .err()
        .map(|limit| format!("deletion guard: the snapshot would deactivate {would_deactivate} of {active} active profiles; at most {limit} may go ({guard_percent}%, at least {SNAPSHOT_GUARD_MINIMUM})"))
}

/// R12: what a second `snapshot.completed` for a snapshot that is no longer
/// open (a redelivery, a replay) records: the decision already taken.
pub fn already_completed(status: &str) -> crate::domain::model::Action {
    if status == "held" {
        crate::domain::model::Action::SnapshotHeld
    } else {
        crate::domain::model::Action::SnapshotApplied
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn r12_snapshot_guard_allows_10_percent_and_at_least_5() {
        assert_eq!(snapshot_guard(1000, 100, 10), Ok(()));
        assert_eq!(snapshot_guard(1000, 101, 10), Err(100));
        assert_eq!(
            snapshot_guard(20, 5, 10),
            Ok(()),
            "at least 5 may always go"
        );
        assert_eq!(snapshot_guard(20, 6, 10), Err(5));
        assert_eq!(
            snapshot_guard(10, 5, 10),
            Ok(()),
            "50% of a tiny school is still within the minimum"
        );
        assert_eq!(snapshot_guard(40, 20, 10), Err(5), "half a school is held");
        assert_eq!(snapshot_guard(1000, 300, 30), Ok(()));
    }

    #[test]
    fn r12_a_partial_export_is_held_whatever_it_would_deactivate() {
        let r = held_reason(100, 99, 1000, 0, 10).unwrap();
        assert!(r.starts_with("count mismatch"), "{r}");
        assert!(r.contains("sent 100") && r.contains("99 arrived"), "{r}");
    }

    #[test]
    fn r12_the_guard_holds_a_snapshot_that_would_deactivate_too_many() {
        assert_eq!(held_reason(50, 50, 100, 10, 10), None, "10% of 100 may go");
        let r = held_reason(50, 50, 100, 11, 10).unwrap();
        assert!(r.starts_with("deletion guard"), "{r}");
        assert!(r.contains("11 of 100") && r.contains("at most 10"), "{r}");
    }

    #[test]
    fn r12_a_second_completion_repeats_the_decision_taken() {
        use crate::domain::model::Action;
        assert_eq!(already_completed("held"), Action::SnapshotHeld);
        assert_eq!(already_completed("applied"), Action::SnapshotApplied);
    }
}
