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
}
