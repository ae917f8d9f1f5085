//! The vocabulary of the import rules: rule ids, decisions, profile kinds,
//! fields, statuses, a profile as the portal has it, a LAS record, a school's
//! link settings. Data only; the rules themselves are in `rules/`.

use chrono::NaiveDate;
use las_contracts::{GuardianRecord, LasSystem, StaffRecord, StudentRecord};
use serde::Serialize;

/// Rule ids of RULES.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Rule {
    R1,
    R2,
    R3,
    R4,
    R5,
    R6,
    R7,
    R8,
    R9,
    R10,
    R11,
    R12,
    R13,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::R1 => "R1",
            Rule::R2 => "R2",
            Rule::R3 => "R3",
            Rule::R4 => "R4",
            Rule::R5 => "R5",
            Rule::R6 => "R6",
            Rule::R7 => "R7",
            Rule::R8 => "R8",
            Rule::R9 => "R9",
            Rule::R10 => "R10",
            Rule::R11 => "R11",
            Rule::R12 => "R12",
            Rule::R13 => "R13",
        }
    }
}

/// What a rule did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// A new profile was created (R1).
    Created,
    /// A field got the LAS value, replacing another value (R1).
    Overwritten,
    /// A blank LAS field removed the portal value (R2), or a student phone was removed (R3).
    Cleared,
    /// The LAS e-mail was blank, the portal e-mail stays (R4).
    Kept,
    /// The LAS e-mail was not a valid address: treated as blank, reported (R4).
    InvalidEmail,
    /// The LAS sent a value for a field that is not imported from it (R3/R5): left as it is.
    Ignored,
    /// The profile was deactivated (R12).
    Deactivated,
    /// A deactivated profile came back in the LAS (R1).
    Reactivated,
    /// Group memberships were replaced by the LAS's (R1).
    GroupsReplaced,
    /// Staff group links were left alone: the school turned `link_staff_to_groups` off (R8).
    GroupsLeftAlone,
    /// New staff got the school's default role (R8).
    RoleAssigned,
    /// A child under 4 is not imported (yet) (R9).
    HeldBack,
    /// A child under 4 inside the school's window is placed in the intake group (R9).
    PlacedInIntake,
    /// On the 4th birthday the child moved from intake to its LAS groups (R9).
    Promoted,
    /// 4 years old but the LAS assigns no group yet: stays in intake (R9).
    StaysInIntake,
    /// A ParnasSys year group or ESIS group became a portal year group (R7).
    YearGroup,
    /// A class over year groups or a subclass of students became a composite group (R7).
    CompositeGroup,
    /// A class of exactly one year group maps to that year group (R7).
    MappedToYearGroup,
    /// An ESIS composite group while the school's `esis_composite_groups` is off (R7).
    CompositeSkipped,
    /// A group the LAS removed is detached and emptied, never deleted (R7).
    Detached,
    /// First run: a LAS group was mapped onto an existing portal group, which
    /// takes the LAS group's key (and, when known, its name, kind and shape) and
    /// keeps its group-bound items (R7).
    FirstRunMapped,
    /// The school changed `esis_composite_groups`: its existing groups were
    /// planned again (R7).
    GroupsReplanned,
    /// A parent's edit of this field became a suggestion to the school (R10).
    SuggestionOpened,
    /// A parent's edit that is no suggestion: portal-only field or unchanged value (R10).
    NotASuggestion,
    /// The school year rolled over: items unlinked, closed year's records deleted (R11).
    RolledOver,
    /// The rollover for this school year already happened: nothing changed (R11).
    AlreadyRolledOver,
    /// A full snapshot started (R12).
    SnapshotStarted,
    /// A full snapshot completed; profiles it did not include were deactivated (R12).
    SnapshotApplied,
    /// A full snapshot was held by the deletion guard or a count mismatch (R12).
    SnapshotHeld,
    /// The profile's personal data was erased on request (the right to
    /// erasure, AVG art. 17): purged now, deactivated (R12).
    Erased,
    /// A LAS record was coupled to an existing portal profile, by itself
    /// (an unambiguous match) or by the school's decision (R13).
    Coupled,
    /// A LAS record waits for the school's coupling decision: invisible,
    /// applied to no portal profile (R13).
    AwaitingCoupling,
    /// The school decided a waiting LAS record gets a new profile (R13).
    CreateDecided,
    /// A coupling was undone: the portal profile keeps its data, the LAS
    /// record waits again (R13).
    Uncoupled,
    /// A record the portal never showed (a child held back, R9, or its
    /// guardian) was removed: its personal data is purged at once, not after
    /// the retention term (R12).
    PurgedAtOnce,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Overwritten => "overwritten",
            Action::Cleared => "cleared",
            Action::Kept => "kept",
            Action::InvalidEmail => "invalid_email",
            Action::Ignored => "ignored",
            Action::Deactivated => "deactivated",
            Action::Reactivated => "reactivated",
            Action::GroupsReplaced => "groups_replaced",
            Action::GroupsLeftAlone => "groups_left_alone",
            Action::RoleAssigned => "role_assigned",
            Action::HeldBack => "held_back",
            Action::PlacedInIntake => "placed_in_intake",
            Action::Promoted => "promoted",
            Action::StaysInIntake => "stays_in_intake",
            Action::YearGroup => "year_group",
            Action::CompositeGroup => "composite_group",
            Action::MappedToYearGroup => "mapped_to_year_group",
            Action::CompositeSkipped => "composite_skipped",
            Action::Detached => "detached",
            Action::FirstRunMapped => "first_run_mapped",
            Action::GroupsReplanned => "groups_replanned",
            Action::SuggestionOpened => "suggestion_opened",
            Action::NotASuggestion => "not_a_suggestion",
            Action::RolledOver => "rolled_over",
            Action::AlreadyRolledOver => "already_rolled_over",
            Action::SnapshotStarted => "snapshot_started",
            Action::SnapshotApplied => "snapshot_applied",
            Action::SnapshotHeld => "snapshot_held",
            Action::Erased => "erased",
            Action::Coupled => "coupled",
            Action::AwaitingCoupling => "awaiting_coupling",
            Action::CreateDecided => "create_decided",
            Action::Uncoupled => "uncoupled",
            Action::PurgedAtOnce => "purged_at_once",
        }
    }
}

/// One decision: which rule did what to which field. Never carries a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub rule: Rule,
    pub action: Action,
    pub field: Option<Field>,
}

impl Decision {
    pub(crate) fn new(rule: Rule, action: Action, field: Option<Field>) -> Self {
        Decision {
            rule,
            action,
            field,
        }
    }

    /// `R2:cleared:phone`, the form kept in the change journal.
    pub fn code(&self) -> String {
        let mut code = String::with_capacity(32);
        self.write_code(&mut code);
        code
    }

    /// Appends [`Decision::code`] to `out` (the journal writes many).
    pub fn write_code(&self, out: &mut String) {
        out.push_str(self.rule.as_str());
        out.push(':');
        out.push_str(self.action.as_str());
        if let Some(f) = self.field {
            out.push(':');
            out.push_str(f.as_str());
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProfileKind {
    Student,
    Guardian,
    Staff,
}

impl ProfileKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProfileKind::Student => "student",
            ProfileKind::Guardian => "guardian",
            ProfileKind::Staff => "staff",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "student" => Some(ProfileKind::Student),
            "guardian" => Some(ProfileKind::Guardian),
            "staff" => Some(ProfileKind::Staff),
            _ => None,
        }
    }
}

/// The contact fields of a profile (R3), by their contract names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Field {
    FirstName,
    NamePrefix,
    LastName,
    BirthDate,
    Street,
    Postcode,
    City,
    Phone,
    Mobile,
    EmergencyPhone,
    Email,
}

impl Field {
    pub const ALL: [Field; 11] = [
        Field::FirstName,
        Field::NamePrefix,
        Field::LastName,
        Field::BirthDate,
        Field::Street,
        Field::Postcode,
        Field::City,
        Field::Phone,
        Field::Mobile,
        Field::EmergencyPhone,
        Field::Email,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Field::FirstName => "first_name",
            Field::NamePrefix => "name_prefix",
            Field::LastName => "last_name",
            Field::BirthDate => "birth_date",
            Field::Street => "street",
            Field::Postcode => "postcode",
            Field::City => "city",
            Field::Phone => "phone",
            Field::Mobile => "mobile",
            Field::EmergencyPhone => "emergency_phone",
            Field::Email => "email",
        }
    }
}
/// The contact data of a profile: the portal's copy of the imported fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Contact {
    pub first_name: Option<String>,
    pub name_prefix: Option<String>,
    pub last_name: Option<String>,
    pub birth_date: Option<NaiveDate>,
    pub street: Option<String>,
    pub postcode: Option<String>,
    pub city: Option<String>,
    pub phone: Option<String>,
    pub mobile: Option<String>,
    pub emergency_phone: Option<String>,
    pub email: Option<String>,
}

/// A value of one field. Dates are compared as dates, the rest as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    Text(Option<String>),
    Date(Option<NaiveDate>),
}

impl Value {
    pub(crate) fn is_some(&self) -> bool {
        match self {
            Value::Text(t) => t.is_some(),
            Value::Date(d) => d.is_some(),
        }
    }
}

impl Contact {
    /// A field's value as text (dates as YYYY-MM-DD), for suggestions and
    /// `import --show-values`.
    pub fn text(&self, f: Field) -> Option<String> {
        match self.get(f) {
            Value::Text(t) => t,
            Value::Date(d) => d.map(|d| d.to_string()),
        }
    }

    /// The fields whose values differ (names only ever leave the worker).
    pub fn changed_fields(&self, other: &Contact) -> Vec<Field> {
        Field::ALL
            .into_iter()
            .filter(|f| self.get(*f) != other.get(*f))
            .collect()
    }

    pub(crate) fn get(&self, f: Field) -> Value {
        match f {
            Field::FirstName => Value::Text(self.first_name.clone()),
            Field::NamePrefix => Value::Text(self.name_prefix.clone()),
            Field::LastName => Value::Text(self.last_name.clone()),
            Field::BirthDate => Value::Date(self.birth_date),
            Field::Street => Value::Text(self.street.clone()),
            Field::Postcode => Value::Text(self.postcode.clone()),
            Field::City => Value::Text(self.city.clone()),
            Field::Phone => Value::Text(self.phone.clone()),
            Field::Mobile => Value::Text(self.mobile.clone()),
            Field::EmergencyPhone => Value::Text(self.emergency_phone.clone()),
            Field::Email => Value::Text(self.email.clone()),
        }
    }

    pub(crate) fn set(&mut self, f: Field, v: Value) {
        match (f, v) {
            (Field::BirthDate, Value::Date(d)) => self.birth_date = d,
            (Field::BirthDate, Value::Text(_)) => self.birth_date = None,
            (_, Value::Date(_)) => {}
            (f, Value::Text(t)) => match f {
                Field::FirstName => self.first_name = t,
                Field::NamePrefix => self.name_prefix = t,
                Field::LastName => self.last_name = t,
                Field::Street => self.street = t,
                Field::Postcode => self.postcode = t,
                Field::City => self.city = t,
                Field::Phone => self.phone = t,
                Field::Mobile => self.mobile = t,
                Field::EmergencyPhone => self.emergency_phone = t,
                Field::Email => self.email = t,
                Field::BirthDate => {}
            },
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    /// Known to the worker but not imported: a child under 4 before its
    /// intake window, or a guardian whose only children are held (R9).
    Held,
    Deactivated,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Held => "held",
            Status::Deactivated => "deactivated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(Status::Active),
            "held" => Some(Status::Held),
            "deactivated" => Some(Status::Deactivated),
            _ => None,
        }
    }
}
/// A profile as the portal has it, as far as the import rules are concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    pub contact: Contact,
    pub status: Status,
    /// Highest LAS version applied (upsert or removal): decides the status and
    /// the group memberships. 0 when none yet.
    pub version: i64,
    /// Version of the upsert the imported fields and links come from.
    pub data_version: i64,
    /// Version of the upsert the e-mail comes from (R4 keeps it across blanks).
    pub email_version: i64,
    /// Portal role (staff). Set at creation only (R8).
    pub role: Option<String>,
    /// The student's LAS groups, effective once out of intake (R9).
    pub las_group_keys: Vec<String>,
    /// The student is in the school's intake group (R9).
    pub in_intake: bool,
    /// R12: the personal data of this deactivation's term was purged. The
    /// profile stays purged until the LAS re-enrols it with a newer version
    /// than its removal.
    pub purged: bool,
    /// R12: the portal has shown this profile (it was active at some time).
    /// A record never shown is purged at its removal (`purge_at_once`).
    pub shown: bool,
}

impl Profile {
    /// A profile the portal has never seen.
    pub fn empty() -> Self {
        Profile {
            contact: Contact::default(),
            status: Status::Active,
            version: 0,
            data_version: 0,
            email_version: 0,
            role: None,
            las_group_keys: vec![],
            in_intake: false,
            purged: false,
            shown: false,
        }
    }
}

/// The reserved membership key of the school's intake group (R9). LAS keys
/// never start with `@` (the contract validation refuses them).
pub const INTAKE_GROUP_KEY: &str = "@intake";
/// Name of the intake group when the worker creates it.
pub const INTAKE_GROUP_NAME: &str = "Instroomgroep";

/// The school's link settings, with the defaults of RULES.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchoolSettings {
    pub system: LasSystem,
    pub environment_id: String,
    pub label: Option<String>,
    pub intake_weeks_ahead: Option<u32>,
    pub default_staff_role: String,
    pub link_staff_to_groups: bool,
    pub esis_composite_groups: bool,
    pub retention_days: u32,
    /// Deletion guard of full snapshots, in percent of active profiles.
    pub snapshot_guard_percent: u32,
    /// Staff phone numbers the school publishes to parents (R3 for staff,
    /// privacy); none by default.
    pub staff_phones: Vec<las_contracts::StaffPhone>,
    /// R13: couple LAS records to existing portal profiles by itself
    /// (`auto`, default) or only by the school's decision (`review`).
    pub coupling: las_contracts::CouplingMode,
    /// R12: days after deactivation before a staff member's data is purged.
    pub staff_retention_days: u32,
    /// R11/R12: school years the year-bound records stay after a rollover.
    pub year_records_kept_years: u32,
    /// R7: composite groups are listed first and lead ("samengestelde groepen
    /// en jaargroepen omdraaien"); stored for the portal, off by default.
    pub composite_groups_lead: bool,
    /// R10: what a suggestion e-mail says: `full` (names, values) or
    /// `notice` (only that a suggestion waits, with a link into the portal).
    pub suggestion_detail: las_contracts::SuggestionDetail,
}

pub const DEFAULT_STAFF_ROLE: &str = "Leerkracht";
/// R12: two years after leaving, the term of the pupil file in the schools'
/// privacy statements (seed 003); for pupils, their guardians and staff.
pub const DEFAULT_RETENTION_DAYS: u32 = 730;
/// R11/R12: year-bound records are deleted at the rollover (seed 000) unless
/// the school keeps them longer, at most five years (seed 003).
pub const MAX_YEAR_RECORDS_KEPT_YEARS: u32 = 5;
pub const DEFAULT_SNAPSHOT_GUARD_PERCENT: u32 = 10;

/// A LAS profile record, the same shape for the three kinds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LasProfile {
    pub kind: ProfileKind,
    pub las_key: String,
    pub contact: Contact,
    /// Group keys (students, staff).
    pub group_keys: Vec<String>,
    /// Student keys (guardians).
    pub student_keys: Vec<String>,
}

/// R2: absent, null, empty or only whitespace is blank. Non-blank values are trimmed.
pub fn normalize(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

pub(crate) fn normalize_keys(keys: &Option<Vec<String>>) -> Vec<String> {
    let mut out: Vec<String> = keys
        .iter()
        .flatten()
        .filter_map(|k| normalize(&Some(k.clone())))
        .collect();
    out.sort();
    out.dedup();
    out
}

impl LasProfile {
    pub fn from_student(r: &StudentRecord) -> Self {
        LasProfile {
            kind: ProfileKind::Student,
            las_key: r.las_key.trim().to_owned(),
            contact: Contact {
                first_name: normalize(&r.first_name),
                name_prefix: normalize(&r.name_prefix),
                last_name: normalize(&r.last_name),
                birth_date: r.birth_date,
                street: normalize(&r.street),
                postcode: normalize(&r.postcode),
                city: normalize(&r.city),
                phone: normalize(&r.phone),
                ..Contact::default()
            },
            group_keys: normalize_keys(&r.group_keys),
            student_keys: vec![],
        }
    }

    pub fn from_guardian(r: &GuardianRecord) -> Self {
        LasProfile {
            kind: ProfileKind::Guardian,
            las_key: r.las_key.trim().to_owned(),
            contact: Contact {
                first_name: normalize(&r.first_name),
                name_prefix: normalize(&r.name_prefix),
                last_name: normalize(&r.last_name),
                birth_date: None,
                street: normalize(&r.street),
                postcode: normalize(&r.postcode),
                city: normalize(&r.city),
                phone: normalize(&r.phone),
                mobile: normalize(&r.mobile),
                emergency_phone: normalize(&r.emergency_phone),
                email: normalize(&r.email),
            },
            group_keys: vec![],
            student_keys: normalize_keys(&r.student_keys),
        }
    }

    pub fn from_staff(r: &StaffRecord) -> Self {
        LasProfile {
            kind: ProfileKind::Staff,
            las_key: r.las_key.trim().to_owned(),
            contact: Contact {
                first_name: normalize(&r.first_name),
                name_prefix: normalize(&r.name_prefix),
                last_name: normalize(&r.last_name),
                birth_date: None,
                street: normalize(&r.street),
                postcode: normalize(&r.postcode),
                city: normalize(&r.city),
                phone: normalize(&r.phone),
                mobile: normalize(&r.mobile),
                emergency_phone: normalize(&r.emergency_phone),
                email: normalize(&r.email),
            },
            group_keys: normalize_keys(&r.group_keys),
            student_keys: vec![],
        }
    }
}
