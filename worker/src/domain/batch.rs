//! Pure batch planning: which messages of a batch are applied, in which
//! order, what changed and which sync events say so. `adapters::db::batch`
//! sequences the statements around these decisions.

use las_contracts::Change;

use crate::domain::model::ProfileKind;

/// The kind of profile a change is about, or `None` for other changes.
pub fn profile_kind(c: &Change) -> Option<ProfileKind> {
    match c {
        Change::StudentUpserted(_) | Change::StudentRemoved(_) => Some(ProfileKind::Student),
        Change::GuardianUpserted(_) | Change::GuardianRemoved(_) => Some(ProfileKind::Guardian),
        Change::StaffUpserted(_) | Change::StaffRemoved(_) => Some(ProfileKind::Staff),
        _ => None,
    }
}
