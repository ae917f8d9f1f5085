//! The import rules of `RULES.md` as pure functions: no IO, no clock.
//!
//! Input: the profile as the portal has it now, the LAS record, the school's
//! link settings and today's local date. Output: the new profile and the
//! decisions taken, each naming its rule id, so metrics, logs and `explain`
//! can say why a field changed. The store applies the result; it decides
//! nothing itself.

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
            Action::SuggestionOpened => "suggestion_opened",
            Action::NotASuggestion => "not_a_suggestion",
            Action::RolledOver => "rolled_over",
            Action::AlreadyRolledOver => "already_rolled_over",
            Action::SnapshotStarted => "snapshot_started",
            Action::SnapshotApplied => "snapshot_applied",
            Action::SnapshotHeld => "snapshot_held",
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
    fn new(rule: Rule, action: Action, field: Option<Field>) -> Self {
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

/// How a field of a kind of profile is imported from a LAS system (R3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// LAS value replaces the portal value; blank clears it (R1, R2).
    Import,
    /// LAS value replaces the portal value; blank keeps it; invalid is blank (R4).
    ImportKeepOnBlank,
    /// Never imported, and the portal value is cleared at import (R3: student phones).
    Clear,
    /// Not an imported field: never touched (R3 ParnasSys emergency phone, R5).
    NotImported,
}

/// R3: which fields are imported, per kind of profile and LAS system.
pub fn policy(kind: ProfileKind, system: LasSystem, field: Field) -> Policy {
    use Field::*;
    match (kind, field) {
        (_, FirstName | NamePrefix | LastName | Street | Postcode | City) => Policy::Import,
        (ProfileKind::Student, BirthDate) => Policy::Import,
        (_, BirthDate) => Policy::NotImported,
        (ProfileKind::Student, Phone | Mobile | EmergencyPhone) => Policy::Clear,
        (ProfileKind::Student, Email) => Policy::NotImported,
        (_, Phone | Mobile) => Policy::Import,
        (_, EmergencyPhone) => match system {
            LasSystem::Esis => Policy::Import,
            LasSystem::Parnassys => Policy::NotImported,
        },
        (_, Email) => Policy::ImportKeepOnBlank,
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
enum Value {
    Text(Option<String>),
    Date(Option<NaiveDate>),
}

impl Value {
    fn is_some(&self) -> bool {
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

    fn get(&self, f: Field) -> Value {
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

    fn set(&mut self, f: Field, v: Value) {
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
        }
    }
}

/// The reserved membership key of the school's intake group (R9). LAS keys
/// never start with `@` (the contract validation refuses them).
pub const INTAKE_GROUP_KEY: &str = "@intake";
/// Name of the intake group when the worker creates it.
pub const INTAKE_GROUP_NAME: &str = "Instroomgroep";

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

/// How a LAS group becomes a portal group (R7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupShape {
    Year,
    Composite,
    /// A class of exactly one year group: its members are in that year group.
    Alias(String),
    /// An ESIS composite group while `esis_composite_groups` is off.
    Skipped,
}

impl GroupShape {
    pub fn group_type(&self) -> &'static str {
        match self {
            GroupShape::Year => "year",
            GroupShape::Composite | GroupShape::Skipped => "composite",
            GroupShape::Alias(_) => "alias",
        }
    }
}

/// R7: the shape of a LAS group in the portal.
pub fn plan_group(
    g: &las_contracts::GroupRecord,
    school: &SchoolSettings,
) -> Result<(GroupShape, Decision), SourceRefusal> {
    use las_contracts::GroupKind;
    let years = normalize_keys(&g.year_group_keys);
    let shape = match (school.system, g.kind) {
        (LasSystem::Parnassys, GroupKind::Year) => GroupShape::Year,
        (LasSystem::Parnassys, GroupKind::Class) if years.len() == 1 => {
            GroupShape::Alias(years[0].clone())
        }
        (LasSystem::Parnassys, GroupKind::Class | GroupKind::Subclass) => GroupShape::Composite,
        (LasSystem::Esis, GroupKind::Group) if years.is_empty() => GroupShape::Year,
        (LasSystem::Esis, GroupKind::Group) if years.len() == 1 => {
            GroupShape::Alias(years[0].clone())
        }
        (LasSystem::Esis, GroupKind::Group) if school.esis_composite_groups => {
            GroupShape::Composite
        }
        (LasSystem::Esis, GroupKind::Group) => GroupShape::Skipped,
        (system, kind) => {
            return Err(refuse(
                las_contracts::RejectReason::ValidationFailed,
                format!(
                    "group kind `{}` does not exist in {}; ParnasSys sends year, class and subclass, ESIS sends group (R7)",
                    kind.as_str(),
                    system.as_str()
                ),
            ));
        }
    };
    let action = match &shape {
        GroupShape::Year => Action::YearGroup,
        GroupShape::Composite => Action::CompositeGroup,
        GroupShape::Alias(_) => Action::MappedToYearGroup,
        GroupShape::Skipped => Action::CompositeSkipped,
    };
    Ok((shape, Decision::new(Rule::R7, action, None)))
}

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
}

pub const DEFAULT_STAFF_ROLE: &str = "Leerkracht";
pub const DEFAULT_RETENTION_DAYS: u32 = 365;
pub const DEFAULT_SNAPSHOT_GUARD_PERCENT: u32 = 10;
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

fn normalize_keys(keys: &Option<Vec<String>>) -> Vec<String> {
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

/// R4: a plausible e-mail address. Deliberately simple: one `@`, a local
/// part, a domain with a dot, no spaces, at most 254 characters.
pub fn is_valid_email(s: &str) -> bool {
    if s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !domain.starts_with('-')
}

/// What an upsert or removal does to a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub profile: Profile,
    pub decisions: Vec<Decision>,
    /// New group memberships, or `None` to leave them as they are.
    pub group_keys: Option<Vec<String>>,
    /// New linked students (guardians), or `None` to leave them as they are.
    pub student_keys: Option<Vec<String>>,
}

/// The result of offering a versioned LAS record to a profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied(Box<Applied>),
    /// The version is not newer than the one applied: nothing changes.
    Stale,
}

/// R1-R5, R8, R12: apply one LAS profile record at `version` to the portal's profile.
///
/// Order independence: the result equals applying every record in version
/// order, whatever order they arrive in. The imported fields come from the
/// newest upsert, the e-mail from the newest upsert that had one (R4), the
/// status and groups from the newest upsert or removal. So an older upsert
/// that arrives late can still supply the e-mail a newer one left blank.
pub fn apply_profile(
    current: Option<&Profile>,
    las: &LasProfile,
    version: i64,
    school: &SchoolSettings,
    today: NaiveDate,
) -> Outcome {
    let base = current.cloned().unwrap_or_else(Profile::empty);
    let newer_status = version > base.version;
    let newer_data = version > base.data_version;
    let email_policy = policy(las.kind, school.system, Field::Email);
    let las_email = las.contact.email.as_deref();
    let email_valid = las_email.is_some_and(is_valid_email);
    let newer_email =
        email_policy == Policy::ImportKeepOnBlank && email_valid && version > base.email_version;
    if !newer_status && !newer_data && !newer_email {
        return Outcome::Stale;
    }

    let mut decisions = Vec::new();
    let mut p = base.clone();
    if newer_data && base.data_version == 0 {
        decisions.push(Decision::new(Rule::R1, Action::Created, None));
    }
    if las.kind == ProfileKind::Staff && p.role.is_none() {
        decisions.push(Decision::new(Rule::R8, Action::RoleAssigned, None));
        p.role = Some(school.default_staff_role.clone());
    }
    if newer_status && base.version > 0 && base.status == Status::Deactivated {
        // Reactivation; a student's placement below may still hold it (R9).
        decisions.push(Decision::new(Rule::R1, Action::Reactivated, None));
    }

    for field in Field::ALL {
        let old = p.contact.get(field);
        let new = las.contact.get(field);
        match policy(las.kind, school.system, field) {
            Policy::Import if newer_data && new != old => {
                let (rule, action) = if new.is_some() {
                    (Rule::R1, Action::Overwritten)
                } else {
                    (Rule::R2, Action::Cleared)
                };
                decisions.push(Decision::new(rule, action, Some(field)));
                p.contact.set(field, new);
            }
            Policy::ImportKeepOnBlank => {
                if las_email.is_some() && !email_valid {
                    decisions.push(Decision::new(Rule::R4, Action::InvalidEmail, Some(field)));
                }
                if newer_email {
                    if new != old {
                        decisions.push(Decision::new(Rule::R1, Action::Overwritten, Some(field)));
                        p.contact.set(field, new);
                    }
                    p.email_version = version;
                } else if newer_data && !email_valid && old.is_some() {
                    decisions.push(Decision::new(Rule::R4, Action::Kept, Some(field)));
                }
            }
            Policy::Clear if newer_data => {
                if new.is_some() {
                    decisions.push(Decision::new(Rule::R3, Action::Ignored, Some(field)));
                }
                if old.is_some() {
                    decisions.push(Decision::new(Rule::R3, Action::Cleared, Some(field)));
                    p.contact.set(field, Value::Text(None));
                }
            }
            Policy::NotImported if newer_data && new.is_some() => {
                let rule = if field == Field::EmergencyPhone {
                    Rule::R3
                } else {
                    Rule::R5
                };
                decisions.push(Decision::new(rule, Action::Ignored, Some(field)));
            }
            _ => {}
        }
    }
    if newer_data {
        p.data_version = version;
    }

    let group_keys = match las.kind {
        _ if !newer_status => None,
        ProfileKind::Student => {
            let (placement, decision) = place_student(
                p.contact.birth_date,
                &las.group_keys,
                base.in_intake,
                school,
                today,
            );
            decisions.extend(decision);
            decisions.push(Decision::new(Rule::R1, Action::GroupsReplaced, None));
            p.las_group_keys = las.group_keys.clone();
            p.in_intake = placement.in_intake;
            p.status = placement.status;
            Some(placement.groups)
        }
        ProfileKind::Guardian => None,
        ProfileKind::Staff if !school.link_staff_to_groups => {
            decisions.push(Decision::new(Rule::R8, Action::GroupsLeftAlone, None));
            None
        }
        _ => {
            decisions.push(Decision::new(Rule::R1, Action::GroupsReplaced, None));
            Some(las.group_keys.clone())
        }
    };
    let student_keys = match las.kind {
        ProfileKind::Guardian if newer_data => Some(las.student_keys.clone()),
        _ => None,
    };
    if newer_status {
        if las.kind != ProfileKind::Student {
            p.status = Status::Active;
        }
        p.version = version;
    }

    Outcome::Applied(Box::new(Applied {
        profile: p,
        decisions,
        group_keys,
        student_keys,
    }))
}

/// R12: a profile removed in the LAS is deactivated and leaves all its groups.
/// Its data stays until the retention period ends. A removal of a profile the
/// portal never saw is remembered (a tombstone) so that an older upsert that
/// arrives later cannot bring it back.
pub fn apply_removal(current: Option<&Profile>, version: i64) -> Outcome {
    if current.is_some_and(|c| version <= c.version) {
        return Outcome::Stale;
    }
    let mut p = current.cloned().unwrap_or_else(Profile::empty);
    let mut decisions = Vec::new();
    p.in_intake = false;
    // R12: a removed profile leaves every group; its LAS group keys go too, so
    // a removal ends in the same state whether or not an upsert came first.
    p.las_group_keys.clear();
    if p.status != Status::Deactivated {
        decisions.push(Decision::new(Rule::R12, Action::Deactivated, None));
    }
    p.status = Status::Deactivated;
    p.version = version;
    Outcome::Applied(Box::new(Applied {
        profile: p,
        decisions,
        group_keys: Some(vec![]),
        student_keys: None,
    }))
}

/// Why R6 refuses a message or a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceRefusal {
    pub reason: las_contracts::RejectReason,
    pub text: String,
}

fn refuse(reason: las_contracts::RejectReason, text: String) -> SourceRefusal {
    SourceRefusal { reason, text }
}

/// R6: an ESIS environment feeds the portal only when it is labelled
/// `BasisOnline Ouderportaal`.
fn check_esis_label(system: LasSystem, label: Option<&str>) -> Result<(), SourceRefusal> {
    let label = label.map(str::trim).unwrap_or("");
    if system == LasSystem::Esis && label != las_contracts::ESIS_PORTAL_LABEL {
        let shown = if label.is_empty() {
            "no label".to_owned()
        } else {
            format!("label {label:?}")
        };
        return Err(refuse(
            las_contracts::RejectReason::EsisLabel,
            format!(
                "ESIS environment has {shown}; only the ESIS environment labelled {:?} may feed this portal (R6)",
                las_contracts::ESIS_PORTAL_LABEL
            ),
        ));
    }
    Ok(())
}

/// R6: a change is accepted only from the one LAS environment the school is linked to.
pub fn check_source(
    brin: &str,
    school: Option<&SchoolSettings>,
    source: &las_contracts::LasSource,
) -> Result<(), SourceRefusal> {
    use las_contracts::RejectReason;
    let Some(school) = school else {
        return Err(refuse(
            RejectReason::UnknownBrin,
            format!(
                "no portal is linked to BRIN {brin}; link the school first (a portal.link.v1 message), then publish this message again from the dead-letter queue (R6)"
            ),
        ));
    };
    check_esis_label(source.system, source.label.as_deref())?;
    if source.system != school.system || source.environment_id != school.environment_id {
        return Err(refuse(
            RejectReason::EnvironmentMismatch,
            format!(
                "message comes from {} environment {:?}, but BRIN {brin} is linked to {} environment {:?}; a portal takes data from one LAS environment only (R6)",
                source.system.as_str(),
                source.environment_id,
                school.system.as_str(),
                school.environment_id
            ),
        ));
    }
    Ok(())
}

/// R6: the settings a link request gives a school. A school keeps its one LAS
/// environment: a request that names another system or environment is refused.
pub fn link_settings(
    existing: Option<&SchoolSettings>,
    link: &las_contracts::PortalLinkV1,
) -> Result<SchoolSettings, SourceRefusal> {
    check_esis_label(link.system, link.label.as_deref())?;
    if let Some(cur) = existing
        && (cur.system != link.system || cur.environment_id != link.environment_id)
    {
        return Err(refuse(
            las_contracts::RejectReason::RelinkRefused,
            format!(
                "BRIN {} is already linked to {} environment {:?}; a portal is linked to one LAS environment only, so a link to {} environment {:?} is refused (R6). Unlink the school in the portal first.",
                link.brin,
                cur.system.as_str(),
                cur.environment_id,
                link.system.as_str(),
                link.environment_id
            ),
        ));
    }
    Ok(SchoolSettings {
        system: link.system,
        environment_id: link.environment_id.clone(),
        label: normalize(&link.label),
        intake_weeks_ahead: link.intake_weeks_ahead,
        default_staff_role: normalize(&link.default_staff_role)
            .unwrap_or_else(|| DEFAULT_STAFF_ROLE.to_owned()),
        link_staff_to_groups: link.link_staff_to_groups.unwrap_or(true),
        esis_composite_groups: link.esis_composite_groups.unwrap_or(false),
        retention_days: link.retention_days.unwrap_or(DEFAULT_RETENTION_DAYS),
        snapshot_guard_percent: link
            .snapshot_guard_percent
            .unwrap_or(DEFAULT_SNAPSHOT_GUARD_PERCENT),
    })
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

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 22).unwrap()
    }

    /// `apply_profile` on a pinned date (no test depends on the real clock).
    fn ap(
        current: Option<&Profile>,
        las: &LasProfile,
        version: i64,
        school: &SchoolSettings,
    ) -> Outcome {
        apply_profile(current, las, version, school, today())
    }

    fn school(system: LasSystem) -> SchoolSettings {
        SchoolSettings {
            system,
            environment_id: "env".into(),
            label: None,
            intake_weeks_ahead: None,
            default_staff_role: DEFAULT_STAFF_ROLE.into(),
            link_staff_to_groups: true,
            esis_composite_groups: false,
            retention_days: DEFAULT_RETENTION_DAYS,
            snapshot_guard_percent: DEFAULT_SNAPSHOT_GUARD_PERCENT,
        }
    }

    fn s(v: &str) -> Option<String> {
        Some(v.to_owned())
    }

    fn guardian(email: Option<String>, phone: Option<String>) -> LasProfile {
        LasProfile::from_guardian(&GuardianRecord {
            las_key: "G1".into(),
            first_name: s("Anna"),
            last_name: s("Jansen"),
            street: s("Dorpsstraat 1"),
            postcode: s("1234 AB"),
            city: s("Utrecht"),
            phone,
            email,
            student_keys: Some(vec!["S1".into()]),
            ..GuardianRecord::default()
        })
    }

    fn applied(o: Outcome) -> Applied {
        match o {
            Outcome::Applied(a) => *a,
            Outcome::Stale => panic!("expected an applied outcome"),
        }
    }

    fn has(a: &Applied, rule: Rule, action: Action, field: Option<Field>) -> bool {
        a.decisions.contains(&Decision::new(rule, action, field))
    }

    fn existing(contact: Contact, version: i64) -> Profile {
        Profile {
            contact,
            status: Status::Active,
            version,
            data_version: version,
            email_version: version,
            role: None,
            las_group_keys: vec![],
            in_intake: false,
        }
    }

    #[test]
    fn r1_new_profile_is_created_with_las_values() {
        let a = applied(ap(
            None,
            &guardian(s("a@b.nl"), s("0301234567")),
            1,
            &school(LasSystem::Parnassys),
        ));
        assert!(has(&a, Rule::R1, Action::Created, None));
        assert_eq!(a.profile.contact.first_name.as_deref(), Some("Anna"));
        assert_eq!(a.profile.contact.email.as_deref(), Some("a@b.nl"));
        assert_eq!(a.profile.status, Status::Active);
        assert_eq!(a.student_keys, Some(vec!["S1".to_owned()]));
    }

    #[test]
    fn r1_las_value_overwrites_portal_edit() {
        let cur = existing(
            Contact {
                first_name: s("Annie"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(None, None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.first_name.as_deref(), Some("Anna"));
        assert!(has(
            &a,
            Rule::R1,
            Action::Overwritten,
            Some(Field::FirstName)
        ));
        assert!(!has(&a, Rule::R1, Action::Created, None));
    }

    #[test]
    fn r2_blank_field_clears_portal_value() {
        let cur = existing(
            Contact {
                phone: s("0301234567"),
                name_prefix: s("van"),
                ..Contact::default()
            },
            1,
        );
        let mut las = guardian(None, s("   "));
        las.contact.name_prefix = None;
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(a.profile.contact.phone, None);
        assert_eq!(a.profile.contact.name_prefix, None);
        assert!(has(&a, Rule::R2, Action::Cleared, Some(Field::Phone)));
        assert!(has(&a, Rule::R2, Action::Cleared, Some(Field::NamePrefix)));
    }

    #[test]
    fn r2_whitespace_and_empty_are_blank() {
        assert_eq!(normalize(&s("  ")), None);
        assert_eq!(normalize(&s("")), None);
        assert_eq!(normalize(&None), None);
        assert_eq!(normalize(&s(" Jan ")), s("Jan"));
    }

    #[test]
    fn r3_student_phone_is_never_imported_and_cleared() {
        let cur = existing(
            Contact {
                phone: s("0612345678"),
                mobile: s("0687654321"),
                ..Contact::default()
            },
            1,
        );
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            first_name: s("Piet"),
            phone: s("0611111111"),
            ..StudentRecord::default()
        });
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Esis)));
        assert_eq!(a.profile.contact.phone, None);
        assert_eq!(a.profile.contact.mobile, None);
        assert!(has(&a, Rule::R3, Action::Ignored, Some(Field::Phone)));
        assert!(has(&a, Rule::R3, Action::Cleared, Some(Field::Phone)));
        assert!(has(&a, Rule::R3, Action::Cleared, Some(Field::Mobile)));
    }

    #[test]
    fn r3_student_birth_date_and_address_are_imported() {
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            birth_date: NaiveDate::from_ymd_opt(2019, 5, 1),
            street: s("Kerkstraat 2"),
            ..StudentRecord::default()
        });
        let a = applied(ap(None, &las, 1, &school(LasSystem::Parnassys)));
        assert_eq!(
            a.profile.contact.birth_date,
            NaiveDate::from_ymd_opt(2019, 5, 1)
        );
        assert_eq!(a.profile.contact.street.as_deref(), Some("Kerkstraat 2"));
        assert_eq!(a.group_keys, Some(vec![]));
    }

    #[test]
    fn r3_emergency_phone_imported_from_esis() {
        let cur = existing(
            Contact {
                emergency_phone: s("112233"),
                ..Contact::default()
            },
            1,
        );
        let mut las = guardian(None, None);
        las.contact.emergency_phone = s("0699999999");
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Esis)));
        assert_eq!(
            a.profile.contact.emergency_phone.as_deref(),
            Some("0699999999")
        );
        las.contact.emergency_phone = None;
        let b = applied(ap(Some(&a.profile), &las, 3, &school(LasSystem::Esis)));
        assert_eq!(b.profile.contact.emergency_phone, None);
        assert!(has(
            &b,
            Rule::R2,
            Action::Cleared,
            Some(Field::EmergencyPhone)
        ));
    }

    #[test]
    fn r3_emergency_phone_not_imported_from_parnassys() {
        let cur = existing(
            Contact {
                emergency_phone: s("112233"),
                ..Contact::default()
            },
            1,
        );
        let mut las = guardian(None, None);
        las.contact.emergency_phone = s("0699999999");
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(a.profile.contact.emergency_phone.as_deref(), Some("112233"));
        assert!(has(
            &a,
            Rule::R3,
            Action::Ignored,
            Some(Field::EmergencyPhone)
        ));
        las.contact.emergency_phone = None;
        let b = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(b.profile.contact.emergency_phone.as_deref(), Some("112233"));
    }

    #[test]
    fn r4_blank_email_keeps_portal_email() {
        let cur = existing(
            Contact {
                email: s("ouder@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(s(" "), None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.email.as_deref(), Some("ouder@example.nl"));
        assert!(has(&a, Rule::R4, Action::Kept, Some(Field::Email)));
    }

    #[test]
    fn r4_las_email_replaces_portal_email() {
        let cur = existing(
            Contact {
                email: s("oud@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(s("nieuw@example.nl"), None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.email.as_deref(), Some("nieuw@example.nl"));
        assert!(has(&a, Rule::R1, Action::Overwritten, Some(Field::Email)));
    }

    #[test]
    fn r4_invalid_email_is_treated_as_blank_and_reported() {
        let cur = existing(
            Contact {
                email: s("ouder@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(s("not-an-address"), None),
            2,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(a.profile.contact.email.as_deref(), Some("ouder@example.nl"));
        assert!(has(&a, Rule::R4, Action::InvalidEmail, Some(Field::Email)));
        assert!(has(&a, Rule::R4, Action::Kept, Some(Field::Email)));
        let new = applied(ap(
            None,
            &guardian(s("a@b"), None),
            1,
            &school(LasSystem::Parnassys),
        ));
        assert_eq!(new.profile.contact.email, None);
    }

    #[test]
    fn r4_email_validation() {
        assert!(is_valid_email("jan.de.vries@school.nl"));
        assert!(is_valid_email("a+b@sub.example.com"));
        for bad in [
            "", "a@", "@b.nl", "a b@c.nl", "a@b", "a@@b.nl", "a@.nl", "a@b..nl", "a@b.nl.",
        ] {
            assert!(!is_valid_email(bad), "{bad} must be invalid");
        }
    }

    #[test]
    fn r5_student_email_is_not_imported() {
        let cur = existing(
            Contact {
                email: s("kind@example.nl"),
                ..Contact::default()
            },
            1,
        );
        let las = LasProfile::from_student(&StudentRecord {
            las_key: "S1".into(),
            ..StudentRecord::default()
        });
        let a = applied(ap(Some(&cur), &las, 2, &school(LasSystem::Parnassys)));
        assert_eq!(a.profile.contact.email.as_deref(), Some("kind@example.nl"));
    }

    #[test]
    fn r5_guardian_birth_date_is_not_imported() {
        let cur = existing(
            Contact {
                birth_date: NaiveDate::from_ymd_opt(1980, 1, 1),
                ..Contact::default()
            },
            1,
        );
        let a = applied(ap(
            Some(&cur),
            &guardian(None, None),
            2,
            &school(LasSystem::Esis),
        ));
        assert_eq!(
            a.profile.contact.birth_date,
            NaiveDate::from_ymd_opt(1980, 1, 1)
        );
    }

    #[test]
    fn r8_new_staff_gets_default_role_at_creation_only() {
        let mut sch = school(LasSystem::Parnassys);
        sch.default_staff_role = "Intern begeleider".into();
        let las = LasProfile::from_staff(&StaffRecord {
            las_key: "T1".into(),
            group_keys: Some(vec!["G3".into()]),
            ..StaffRecord::default()
        });
        let a = applied(ap(None, &las, 1, &sch));
        assert_eq!(a.profile.role.as_deref(), Some("Intern begeleider"));
        assert!(has(&a, Rule::R8, Action::RoleAssigned, None));
        let mut changed = a.profile.clone();
        changed.role = Some("Directeur".into());
        assert_eq!(changed.version, 1);
        let b = applied(ap(Some(&changed), &las, 2, &sch));
        assert_eq!(b.profile.role.as_deref(), Some("Directeur"));
        assert!(!has(&b, Rule::R8, Action::RoleAssigned, None));
    }

    #[test]
    fn r8_staff_groups_left_alone_when_linking_is_off() {
        let mut sch = school(LasSystem::Parnassys);
        sch.link_staff_to_groups = false;
        let las = LasProfile::from_staff(&StaffRecord {
            las_key: "T1".into(),
            group_keys: Some(vec!["G3".into()]),
            ..StaffRecord::default()
        });
        let a = applied(ap(None, &las, 1, &sch));
        assert_eq!(a.group_keys, None);
        assert!(has(&a, Rule::R8, Action::GroupsLeftAlone, None));
        let on = applied(ap(None, &las, 1, &school(LasSystem::Parnassys)));
        assert_eq!(on.group_keys, Some(vec!["G3".to_owned()]));
    }

    #[test]
    fn r12_removal_deactivates_and_leaves_groups() {
        let cur = existing(
            Contact {
                first_name: s("Piet"),
                ..Contact::default()
            },
            3,
        );
        let cur = Profile {
            las_group_keys: vec!["G3".to_owned()],
            ..cur
        };
        let a = applied(apply_removal(Some(&cur), 4));
        assert_eq!(a.profile.status, Status::Deactivated);
        assert_eq!(a.group_keys, Some(vec![]));
        assert!(
            a.profile.las_group_keys.is_empty(),
            "the same state as a removal that arrives before the upsert"
        );
        assert!(has(&a, Rule::R12, Action::Deactivated, None));
        assert_eq!(a.profile.contact.first_name.as_deref(), Some("Piet"));
    }

    #[test]
    fn r12_removal_before_upsert_leaves_a_tombstone_that_wins() {
        let tomb = applied(apply_removal(None, 5)).profile;
        assert_eq!(tomb.status, Status::Deactivated);
        // An older upsert arriving late fills the data, as in-order arrival
        // would have, but the profile stays deactivated and out of groups.
        let late = applied(ap(
            Some(&tomb),
            &guardian(s("a@b.nl"), None),
            4,
            &school(LasSystem::Esis),
        ));
        assert_eq!(late.profile.status, Status::Deactivated);
        assert_eq!(late.profile.contact.first_name.as_deref(), Some("Anna"));
        assert_eq!(late.group_keys, None);
        let back = applied(ap(
            Some(&late.profile),
            &guardian(None, None),
            6,
            &school(LasSystem::Esis),
        ));
        assert_eq!(back.profile.status, Status::Active);
        assert!(has(&back, Rule::R1, Action::Reactivated, None));
    }

    #[test]
    fn r4_older_email_arriving_after_a_newer_blank_is_still_kept() {
        let sch = school(LasSystem::Parnassys);
        // In order: v1 sets the e-mail, v2 has none -> e-mail of v1.
        let v1 = applied(ap(None, &guardian(s("a@b.nl"), None), 1, &sch)).profile;
        let in_order = applied(ap(Some(&v1), &guardian(None, None), 2, &sch)).profile;
        // Reversed: v2 first, then v1 arrives late.
        let v2 = applied(ap(None, &guardian(None, None), 2, &sch)).profile;
        let reversed = applied(ap(Some(&v2), &guardian(s("a@b.nl"), None), 1, &sch)).profile;
        assert_eq!(in_order, reversed);
        assert_eq!(reversed.contact.email.as_deref(), Some("a@b.nl"));
        // But a late older e-mail never beats a newer one.
        let v3 = applied(ap(Some(&reversed), &guardian(s("new@b.nl"), None), 3, &sch)).profile;
        assert_eq!(
            ap(Some(&v3), &guardian(s("old@b.nl"), None), 2, &sch),
            Outcome::Stale
        );
    }

    #[test]
    fn older_or_equal_version_is_stale() {
        let cur = existing(Contact::default(), 7);
        let sch = school(LasSystem::Parnassys);
        assert_eq!(
            ap(Some(&cur), &guardian(None, None), 7, &sch),
            Outcome::Stale
        );
        assert_eq!(
            ap(Some(&cur), &guardian(None, None), 3, &sch),
            Outcome::Stale
        );
        assert_eq!(apply_removal(Some(&cur), 6), Outcome::Stale);
    }

    #[test]
    fn applying_the_same_record_twice_equals_once() {
        let sch = school(LasSystem::Esis);
        let las = guardian(s("a@b.nl"), s("0301234567"));
        let once = applied(ap(None, &las, 1, &sch));
        assert_eq!(ap(Some(&once.profile), &las, 1, &sch), Outcome::Stale);
        let again = applied(ap(Some(&once.profile), &las, 2, &sch));
        assert_eq!(again.profile.contact, once.profile.contact);
        assert!(again.decisions.iter().all(|d| d.field.is_none()));
    }

    #[test]
    fn decisions_never_carry_values() {
        let a = applied(ap(
            None,
            &guardian(s("a@b.nl"), s("0301234567")),
            1,
            &school(LasSystem::Esis),
        ));
        for d in &a.decisions {
            let code = d.code();
            assert!(
                !code.contains("Anna") && !code.contains("a@b.nl") && !code.contains("0301234567")
            );
        }
    }

    #[test]
    fn decision_codes_are_rule_action_and_field() {
        let a = applied(ap(
            None,
            &guardian(s("a@b.nl"), s("0301234567")),
            1,
            &school(LasSystem::Esis),
        ));
        for d in &a.decisions {
            let want = match d.field {
                Some(f) => format!("{}:{}:{}", d.rule.as_str(), d.action.as_str(), f.as_str()),
                None => format!("{}:{}", d.rule.as_str(), d.action.as_str()),
            };
            assert_eq!(d.code(), want);
        }
        assert!(a.decisions.iter().any(|d| d.field.is_some()));
    }

    fn source(system: LasSystem, env: &str, label: Option<&str>) -> las_contracts::LasSource {
        las_contracts::LasSource {
            system,
            environment_id: env.into(),
            label: label.map(str::to_owned),
        }
    }

    #[test]
    fn r6_unknown_brin_is_refused() {
        let r = check_source("99ZZ", None, &source(LasSystem::Parnassys, "env", None)).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::UnknownBrin);
        assert!(r.text.contains("99ZZ"));
    }

    #[test]
    fn r6_other_environment_is_refused() {
        let sch = school(LasSystem::Parnassys);
        assert!(
            check_source(
                "12AB",
                Some(&sch),
                &source(LasSystem::Parnassys, "env", None)
            )
            .is_ok()
        );
        let r = check_source(
            "12AB",
            Some(&sch),
            &source(LasSystem::Parnassys, "other", None),
        )
        .unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::EnvironmentMismatch);
        let r = check_source(
            "12AB",
            Some(&sch),
            &source(LasSystem::Esis, "env", Some("BasisOnline Ouderportaal")),
        )
        .unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::EnvironmentMismatch);
    }

    #[test]
    fn r6_esis_label_must_be_basisonline_ouderportaal() {
        let mut sch = school(LasSystem::Esis);
        sch.label = Some("BasisOnline Ouderportaal".into());
        assert!(
            check_source(
                "12AB",
                Some(&sch),
                &source(LasSystem::Esis, "env", Some("BasisOnline Ouderportaal"))
            )
            .is_ok()
        );
        for bad in [Some("ParentCom"), Some("BasisschoolApps"), None] {
            let r =
                check_source("12AB", Some(&sch), &source(LasSystem::Esis, "env", bad)).unwrap_err();
            assert_eq!(r.reason, las_contracts::RejectReason::EsisLabel);
            assert!(r.text.contains("BasisOnline Ouderportaal"));
        }
    }

    fn link(system: LasSystem, env: &str, label: Option<&str>) -> las_contracts::PortalLinkV1 {
        las_contracts::PortalLinkV1 {
            schema: las_contracts::PortalLinkSchema::V1,
            message_id: uuid::Uuid::nil(),
            brin: "12AB".into(),
            system,
            environment_id: env.into(),
            label: label.map(str::to_owned),
            intake_weeks_ahead: None,
            default_staff_role: None,
            link_staff_to_groups: None,
            esis_composite_groups: None,
            retention_days: None,
            group_mapping: None,
            snapshot_guard_percent: None,
            emitted_at: None,
        }
    }

    #[test]
    fn r6_link_takes_defaults_and_refuses_a_second_environment() {
        let s1 = link_settings(None, &link(LasSystem::Parnassys, "env", None)).unwrap();
        assert_eq!(s1.default_staff_role, "Leerkracht");
        assert!(s1.link_staff_to_groups);
        assert!(!s1.esis_composite_groups);
        assert_eq!(s1.intake_weeks_ahead, None);
        assert!(link_settings(Some(&s1), &link(LasSystem::Parnassys, "env", None)).is_ok());
        let r = link_settings(Some(&s1), &link(LasSystem::Parnassys, "env-2", None)).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::RelinkRefused);
        let r = link_settings(None, &link(LasSystem::Esis, "env", Some("ParentCom"))).unwrap_err();
        assert_eq!(r.reason, las_contracts::RejectReason::EsisLabel);
    }

    fn d(y: i32, m: u32, day: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, day).unwrap()
    }

    fn intake_school(weeks: Option<u32>) -> SchoolSettings {
        let mut sch = school(LasSystem::Parnassys);
        sch.intake_weeks_ahead = weeks;
        sch
    }

    fn groups(keys: &[&str]) -> Vec<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

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

    fn group(kind: las_contracts::GroupKind, years: &[&str]) -> las_contracts::GroupRecord {
        las_contracts::GroupRecord {
            las_key: "K".into(),
            name: Some("Groep".into()),
            kind,
            year_group_keys: Some(groups(years)),
            student_keys: None,
        }
    }

    #[test]
    fn r7_parnassys_group_shapes() {
        use las_contracts::GroupKind::*;
        let p = school(LasSystem::Parnassys);
        assert_eq!(
            plan_group(&group(Year, &[]), &p).unwrap().0,
            GroupShape::Year
        );
        assert_eq!(
            plan_group(&group(Class, &["G3"]), &p).unwrap().0,
            GroupShape::Alias("G3".into()),
            "class of one year group"
        );
        let (shape, dec) = plan_group(&group(Class, &["G3", "G4"]), &p).unwrap();
        assert_eq!(shape, GroupShape::Composite, "class of two year groups");
        assert_eq!(dec, Decision::new(Rule::R7, Action::CompositeGroup, None));
        assert_eq!(
            plan_group(&group(Subclass, &[]), &p).unwrap().0,
            GroupShape::Composite
        );
        assert_eq!(
            plan_group(&group(Group, &[]), &p).unwrap_err().reason,
            las_contracts::RejectReason::ValidationFailed
        );
    }

    #[test]
    fn r7_esis_composite_groups_only_when_the_school_opted_in() {
        use las_contracts::GroupKind::*;
        let mut e = school(LasSystem::Esis);
        assert_eq!(
            plan_group(&group(Group, &[]), &e).unwrap().0,
            GroupShape::Year
        );
        assert_eq!(
            plan_group(&group(Group, &["A", "B"]), &e).unwrap().0,
            GroupShape::Skipped
        );
        e.esis_composite_groups = true;
        assert_eq!(
            plan_group(&group(Group, &["A", "B"]), &e).unwrap().0,
            GroupShape::Composite
        );
        assert!(plan_group(&group(Year, &[]), &e).is_err());
    }

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
