//! The import rules of `RULES.md` as pure functions: no IO, no clock, no ids.
//!
//! Input: the profile as the portal has it now, the LAS record, the school's
//! link settings and today's local date. Output: the new profile and the
//! decisions taken, each naming its rule id, so metrics, logs and `explain`
//! can say why a field changed. One file per rule (group), its unit tests
//! beside it; the shell applies the result and decides nothing itself.
//!
//! | rule | file |
//! |---|---|
//! | R1-R5, R8 (profile fields, e-mail, roles) | [`profile`] |
//! | R6 (one LAS environment per school) | [`source`] |
//! | R7 (groups, first run) | [`groups`] |
//! | R9 (intake, 4th birthday) | [`intake`] |
//! | R10 (parent edits become suggestions) | [`suggestions`] |
//! | R11 (year rollover) | [`rollover`] |
//! | R12 (removal, retention, guardians follow students) | [`retention`], [`snapshot`] |
//! | R13 (coupling existing portal profiles at go-live) | [`coupling`] |

pub mod coupling;
pub mod groups;
pub mod intake;
pub mod profile;
pub mod retention;
pub mod rollover;
pub mod snapshot;
pub mod source;
pub mod suggestions;
#[cfg(test)]
pub(crate) mod test_support;

pub use crate::domain::model::*;
pub use groups::*;
pub use intake::*;
pub use profile::*;
pub use retention::*;
pub use snapshot::*;
pub use source::*;
