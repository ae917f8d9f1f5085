//! Wire contract of las-worker, version 1.
//!
//! These types are the public API of the worker: LAS connectors publish
//! [`LasChangeV1`] messages on the `las.changes` exchange and the portal
//! publishes [`PortalLinkV1`] on `portal.requests`. Messages the worker cannot
//! apply are moved to the `las-worker.dead-letter` queue with the headers
//! described by [`dead_letter`]. The JSON Schemas in `contracts/schema/` are
//! generated from these types (`make schema`) and `contracts/asyncapi.yaml`
//! describes the channels.
//!
//! Compatibility: v1 only grows by optional fields. A breaking change gets a
//! new schema id (`las.change.v2`) and lives beside v1.

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Exchange on which LAS connectors publish change messages (topic, durable).
pub const LAS_CHANGES_EXCHANGE: &str = "las.changes";
/// Exchange on which the portal publishes its requests (topic, durable).
pub const PORTAL_REQUESTS_EXCHANGE: &str = "portal.requests";
/// Exchange (fanout) and queue holding messages the worker rejected.
pub const DEAD_LETTER_EXCHANGE: &str = "las-worker.dead-letter";
/// Queue holding messages the worker rejected.
pub const DEAD_LETTER_QUEUE: &str = "las-worker.dead-letter";
/// Exchange (topic, durable) on which the worker publishes sync events
/// ([`SyncEventV1`]), routing key `sync.<brin>.<event type>`.
pub const SYNC_EVENTS_EXCHANGE: &str = "las.sync-events";
/// Queue the worker consumes LAS change messages from.
pub const CHANGES_QUEUE: &str = "las-worker.changes";
/// Queue the worker consumes portal requests from.
pub const PORTAL_QUEUE: &str = "las-worker.portal";
/// The only ESIS environment label a portal may be linked to (R6).
pub const ESIS_PORTAL_LABEL: &str = "BasisOnline Ouderportaal";
/// Largest message body the worker accepts, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// The schema id of a LAS change message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LasChangeSchema {
    #[serde(rename = "las.change.v1")]
    V1,
}

/// One change in a school's LAS, as sent by a LAS connector.
///
/// Routing key: `las.<brin>.<change type>`, e.g. `las.12AB.student.upserted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "las.change.v1")]
pub struct LasChangeV1 {
    pub schema: LasChangeSchema,
    /// Unique per message; a redelivered message with a known id changes nothing.
    pub message_id: Uuid,
    /// The school's BRIN: 2 digits and 2 letters or digits, e.g. `12AB`.
    #[schemars(regex(pattern = r"^[0-9]{2}[A-Z0-9]{2}$"))]
    pub brin: String,
    pub source: LasSource,
    /// When the LAS connector emitted the message.
    pub emitted_at: DateTime<Utc>,
    /// Monotonic per (brin, entity kind, las_key); an older version than the
    /// one applied changes nothing.
    #[schemars(range(min = 1, max = 9_223_372_036_854_775_807u64))]
    pub version: u64,
    pub change: Change,
    /// Added in v1.1 (optional): the full snapshot this upsert belongs to
    /// (between `snapshot.started` and `snapshot.completed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<Uuid>,
}

/// Which LAS environment sent the message (R6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LasSource {
    pub system: LasSystem,
    /// The LAS environment id; one portal is linked to exactly one.
    pub environment_id: String,
    /// ESIS environment label; must be `BasisOnline Ouderportaal` for ESIS.
    #[serde(default)]
    pub label: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LasSystem {
    Parnassys,
    Esis,
}

impl LasSystem {
    pub fn as_str(self) -> &'static str {
        match self {
            LasSystem::Parnassys => "parnassys",
            LasSystem::Esis => "esis",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "parnassys" => Some(LasSystem::Parnassys),
            "esis" => Some(LasSystem::Esis),
            _ => None,
        }
    }
}

/// The change itself, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type")]
pub enum Change {
    #[serde(rename = "student.upserted")]
    StudentUpserted(StudentRecord),
    #[serde(rename = "guardian.upserted")]
    GuardianUpserted(GuardianRecord),
    #[serde(rename = "staff.upserted")]
    StaffUpserted(StaffRecord),
    #[serde(rename = "group.upserted")]
    GroupUpserted(GroupRecord),
    #[serde(rename = "student.removed")]
    StudentRemoved(Removed),
    #[serde(rename = "guardian.removed")]
    GuardianRemoved(Removed),
    #[serde(rename = "staff.removed")]
    StaffRemoved(Removed),
    #[serde(rename = "group.removed")]
    GroupRemoved(Removed),
    #[serde(rename = "school_year.rolled_over")]
    SchoolYearRolledOver(SchoolYear),
    /// A full snapshot of the school starts (added in v1.1).
    #[serde(rename = "snapshot.started")]
    SnapshotStarted(SnapshotStarted),
    /// A full snapshot is complete: profiles it did not include are removed,
    /// unless the deletion guard holds it (added in v1.1).
    #[serde(rename = "snapshot.completed")]
    SnapshotCompleted(SnapshotCompleted),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotStarted {
    pub snapshot_id: Uuid,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotCompleted {
    pub snapshot_id: Uuid,
    /// How many upserts with this `snapshot_id` the connector sent.
    pub records_sent: u64,
}

impl Change {
    /// The `type` tag on the wire.
    pub fn type_name(&self) -> &'static str {
        match self {
            Change::StudentUpserted(_) => "student.upserted",
            Change::GuardianUpserted(_) => "guardian.upserted",
            Change::StaffUpserted(_) => "staff.upserted",
            Change::GroupUpserted(_) => "group.upserted",
            Change::StudentRemoved(_) => "student.removed",
            Change::GuardianRemoved(_) => "guardian.removed",
            Change::StaffRemoved(_) => "staff.removed",
            Change::GroupRemoved(_) => "group.removed",
            Change::SchoolYearRolledOver(_) => "school_year.rolled_over",
            Change::SnapshotStarted(_) => "snapshot.started",
            Change::SnapshotCompleted(_) => "snapshot.completed",
        }
    }

    /// The LAS key of the entity the change is about, if it is about one.
    pub fn las_key(&self) -> Option<&str> {
        match self {
            Change::StudentUpserted(r) => Some(&r.las_key),
            Change::GuardianUpserted(r) => Some(&r.las_key),
            Change::StaffUpserted(r) => Some(&r.las_key),
            Change::GroupUpserted(r) => Some(&r.las_key),
            Change::StudentRemoved(r)
            | Change::GuardianRemoved(r)
            | Change::StaffRemoved(r)
            | Change::GroupRemoved(r) => Some(&r.las_key),
            Change::SchoolYearRolledOver(_)
            | Change::SnapshotStarted(_)
            | Change::SnapshotCompleted(_) => None,
        }
    }

    /// Every type tag, in contract order.
    pub const TYPE_NAMES: [&'static str; 11] = [
        "student.upserted",
        "guardian.upserted",
        "staff.upserted",
        "group.upserted",
        "student.removed",
        "guardian.removed",
        "staff.removed",
        "group.removed",
        "school_year.rolled_over",
        "snapshot.started",
        "snapshot.completed",
    ];
}

/// A student (leerling). Any field but `las_key` may be absent or null: a
/// blank field clears the portal field (R2).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StudentRecord {
    pub las_key: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    /// YYYY-MM-DD.
    #[serde(default)]
    pub birth_date: Option<NaiveDate>,
    #[serde(default)]
    pub street: Option<String>,
    #[serde(default)]
    pub postcode: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    /// Never imported: a student's phone is cleared in the portal (R3).
    #[serde(default)]
    pub phone: Option<String>,
    /// LAS keys of the groups the student is in.
    #[serde(default)]
    pub group_keys: Option<Vec<String>>,
}

/// A guardian (ouder/verzorger).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GuardianRecord {
    pub las_key: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    #[serde(default)]
    pub street: Option<String>,
    #[serde(default)]
    pub postcode: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
    #[serde(default)]
    pub mobile: Option<String>,
    /// Imported from ESIS only; ignored for ParnasSys (R3).
    #[serde(default)]
    pub emergency_phone: Option<String>,
    /// A blank e-mail keeps the portal's e-mail (R4).
    #[serde(default)]
    pub email: Option<String>,
    /// LAS keys of the guardian's students.
    #[serde(default)]
    pub student_keys: Option<Vec<String>>,
}

/// A staff member (medewerker/teamlid).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct StaffRecord {
    pub las_key: String,
    #[serde(default)]
    pub first_name: Option<String>,
    #[serde(default)]
    pub name_prefix: Option<String>,
    #[serde(default)]
    pub last_name: Option<String>,
    /// A blank e-mail keeps the portal's e-mail (R4).
    #[serde(default)]
    pub email: Option<String>,
    /// Imported only when the school publishes staff phones
    /// (`portal.link.v1` `staff_phones`, v1.2); otherwise never (R3).
    #[serde(default)]
    pub phone: Option<String>,
    /// As `phone`.
    #[serde(default)]
    pub mobile: Option<String>,
    /// Added in v1.1 (optional). Accepted, never imported since v1.2: parents
    /// see staff in the portal, so no home address (R3, privacy).
    #[serde(default)]
    pub street: Option<String>,
    #[serde(default)]
    pub postcode: Option<String>,
    #[serde(default)]
    pub city: Option<String>,
    /// Accepted, never imported for staff (R3, privacy).
    #[serde(default)]
    pub emergency_phone: Option<String>,
    /// LAS keys of the groups the staff member teaches.
    #[serde(default)]
    pub group_keys: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupKind {
    /// ParnasSys leerjaar.
    Year,
    /// ParnasSys lesgroep: a class over year groups.
    Class,
    /// ParnasSys sublesgroep: a hand-picked set of students.
    Subclass,
    /// ESIS groep.
    Group,
}

impl GroupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupKind::Year => "year",
            GroupKind::Class => "class",
            GroupKind::Subclass => "subclass",
            GroupKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "year" => Some(GroupKind::Year),
            "class" => Some(GroupKind::Class),
            "subclass" => Some(GroupKind::Subclass),
            "group" => Some(GroupKind::Group),
            _ => None,
        }
    }
}

/// A LAS group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GroupRecord {
    pub las_key: String,
    #[serde(default)]
    pub name: Option<String>,
    pub kind: GroupKind,
    /// For `class`: the year groups the class spans.
    #[serde(default)]
    pub year_group_keys: Option<Vec<String>>,
    /// For `subclass`: its students.
    #[serde(default)]
    pub student_keys: Option<Vec<String>>,
}

/// A removal: the entity with this LAS key is gone from the LAS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Removed {
    pub las_key: String,
}

/// The school year rolled over (R11).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SchoolYear {
    /// Two consecutive years, e.g. `2026-2027`. The worker dead-letters
    /// another spelling (`validation_failed`) and counts a year that is not
    /// newer than the last one applied to the school as stale (R11).
    pub school_year: String,
}

/// The schema id of a portal link message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PortalLinkSchema {
    #[serde(rename = "portal.link.v1")]
    V1,
}

/// One school's link settings, published by the portal.
///
/// Routing key: `portal.<brin>.link`. Settings left out take the defaults of
/// the rules: no intake group, role `Leerkracht`, staff linked to groups, no
/// ESIS composite groups, retention from the schools' privacy statements
/// (seed 003: two years after leaving; year-bound records until the rollover).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "portal.link.v1")]
pub struct PortalLinkV1 {
    pub schema: PortalLinkSchema,
    pub message_id: Uuid,
    #[schemars(regex(pattern = r"^[0-9]{2}[A-Z0-9]{2}$"))]
    pub brin: String,
    pub system: LasSystem,
    /// The one LAS environment this portal is linked to (R6).
    pub environment_id: String,
    /// ESIS only: the environment label, which must be `BasisOnline Ouderportaal`.
    #[serde(default)]
    pub label: Option<String>,
    /// Import children from this many weeks before their 4th birthday into the
    /// intake group (R9); null = off.
    #[serde(default)]
    pub intake_weeks_ahead: Option<u32>,
    /// Role given to new staff profiles (R8); default `Leerkracht`.
    #[serde(default)]
    pub default_staff_role: Option<String>,
    /// Put new staff in their LAS groups (R8); default true.
    #[serde(default)]
    pub link_staff_to_groups: Option<bool>,
    /// Create composite groups for ESIS (R7); default false.
    #[serde(default)]
    pub esis_composite_groups: Option<bool>,
    /// Days after deactivation before the personal data of a pupil or a
    /// guardian is purged (R12); default 730 since v1.3 (seed 003: the pupil
    /// file is kept two years after the child leaves; it was 365).
    #[serde(default)]
    pub retention_days: Option<u32>,
    /// First run: LAS groups mapped onto existing portal groups (R7).
    #[serde(default)]
    pub group_mapping: Option<Vec<GroupMapping>>,
    /// Added in v1.1: a full snapshot that would deactivate more than this
    /// percentage of the school's active profiles (and at least 5) is held for
    /// an operator; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 100))]
    pub snapshot_guard_percent: Option<u32>,
    /// Added in v1.2: which of a staff member's phone numbers the school
    /// publishes to parents (`phone`, `mobile`); default none. Staff home
    /// addresses and unpublished phones are never imported (R3, privacy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff_phones: Option<Vec<StaffPhone>>,
    /// Added in v1.3: how LAS records are coupled to portal profiles that
    /// have no LAS key yet (R13, go-live): `auto` (default) couples an
    /// unambiguous match; `review` never couples by itself, every match waits
    /// for the school's decision (`portal.coupling.v1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coupling: Option<CouplingMode>,
    /// Added in v1.3: days after deactivation before a staff member's
    /// personal data is purged (R12); default 730, like the pupils'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff_retention_days: Option<u32>,
    /// Added in v1.3: school years for which absence reports, leave requests
    /// and after-school-care registrations stay after the year rolls over
    /// (R11/R12); default 0 (deleted at the rollover, seed 000), at most 5
    /// (seed 003: the school keeps absence data five years, in its LAS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(max = 5))]
    pub year_records_kept_years: Option<u32>,
    /// Added in v1.3: "samengestelde groepen en jaargroepen omdraaien":
    /// composite groups are listed first and lead (R7); default false. The
    /// worker stores it (`schools.composite_groups_lead`) for the portal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub composite_groups_lead: Option<bool>,
    /// Added in v1.3: what a suggestion e-mail to the school says (R10):
    /// `full` (default) names the guardian, the student(s) and per field the
    /// current and proposed value; `notice` says only that a suggestion waits,
    /// with a link into the portal: no names, no values, no LAS keys of
    /// persons, for schools whose policy keeps pupil data out of e-mail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suggestion_detail: Option<SuggestionDetail>,
    #[serde(default)]
    pub emitted_at: Option<DateTime<Utc>>,
}

/// R10: the detail of a suggestion e-mail to the school.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SuggestionDetail {
    /// Names, current and proposed values.
    #[default]
    Full,
    /// Only that a suggestion waits, with a link into the portal.
    Notice,
}

impl SuggestionDetail {
    pub fn as_str(self) -> &'static str {
        match self {
            SuggestionDetail::Full => "full",
            SuggestionDetail::Notice => "notice",
        }
    }

    pub fn parse(s: &str) -> Option<SuggestionDetail> {
        match s {
            "full" => Some(SuggestionDetail::Full),
            "notice" => Some(SuggestionDetail::Notice),
            _ => None,
        }
    }
}

/// R13: how a school couples LAS records to its existing portal profiles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouplingMode {
    /// Couple an unambiguous match (same school, kind and e-mail, or for a
    /// student the same birth date and name) by itself.
    #[default]
    Auto,
    /// Never couple by itself: a LAS record with a matching portal profile
    /// waits for the school's decision.
    Review,
}

impl CouplingMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CouplingMode::Auto => "auto",
            CouplingMode::Review => "review",
        }
    }

    pub fn parse(s: &str) -> Option<CouplingMode> {
        match s {
            "auto" => Some(CouplingMode::Auto),
            "review" => Some(CouplingMode::Review),
            _ => None,
        }
    }
}

/// The schema id of a coupling decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum CouplingSchema {
    #[serde(rename = "portal.coupling.v1")]
    V1,
}

/// What the school decided about a LAS record (R13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CouplingAction {
    /// Couple the waiting LAS record to the portal profile
    /// `portal_profile_id` (same school, same kind, not coupled yet): the LAS
    /// record is applied to it (R1-R5), its portal-only data and role stay.
    Couple,
    /// Make a new portal profile for the waiting LAS record.
    Create,
    /// Undo a wrong coupling: the portal profile keeps its data but loses the
    /// LAS key; the LAS record waits for a decision again.
    Uncouple,
}

impl CouplingAction {
    pub fn as_str(self) -> &'static str {
        match self {
            CouplingAction::Couple => "couple",
            CouplingAction::Create => "create",
            CouplingAction::Uncouple => "uncouple",
        }
    }
}

/// Added in contract v1.3. The school's decision about a LAS record that
/// waits to be coupled (the portal's "Niet gekoppelde profielen" screen, or
/// the support desk's `las-worker profiles couple|create|uncouple`), R13.
///
/// Routing key: `portal.<brin>.coupling`. A refused decision (a profile of
/// another school or kind, one already coupled, a LAS record that does not
/// wait) is dead-lettered with reason `coupling_refused`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "portal.coupling.v1")]
pub struct CouplingV1 {
    pub schema: CouplingSchema,
    pub message_id: Uuid,
    #[schemars(regex(pattern = r"^[0-9]{2}[A-Z0-9]{2}$"))]
    pub brin: String,
    pub action: CouplingAction,
    /// `student`, `guardian` or `staff`.
    pub entity_kind: String,
    /// The LAS record's key.
    pub las_key: String,
    /// The portal profile to couple to (`couple` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal_profile_id: Option<i64>,
    #[serde(default)]
    pub decided_at: Option<DateTime<Utc>>,
}

/// The schema id of an erasure request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ErasureSchema {
    #[serde(rename = "portal.erasure.v1")]
    V1,
}

/// Added in contract v1.3. The school granted a request to erase a person's
/// data (the right to erasure, AVG art. 17; seed 004): the worker purges the
/// profile now, with every copy (suggestions, e-mails), deactivates it and
/// takes it out of its groups. The change journal keeps that it happened,
/// without the data. The LAS brings the profile back only with a record newer
/// than the one the portal has. The same as `las-worker profile erase`.
///
/// Routing key: `portal.<brin>.erasure`. A request for a profile the portal
/// does not have is dead-lettered (`validation_failed`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "portal.erasure.v1")]
pub struct ErasureV1 {
    pub schema: ErasureSchema,
    pub message_id: Uuid,
    #[schemars(regex(pattern = r"^[0-9]{2}[A-Z0-9]{2}$"))]
    pub brin: String,
    /// `student`, `guardian` or `staff`.
    pub entity_kind: String,
    pub las_key: String,
    #[serde(default)]
    pub requested_at: Option<DateTime<Utc>>,
}

/// The routing key an erasure request is published with.
pub fn erasure_routing_key(msg: &ErasureV1) -> String {
    format!("portal.{}.erasure", msg.brin)
}

/// The routing key a coupling decision is published with.
pub fn coupling_routing_key(msg: &CouplingV1) -> String {
    format!("portal.{}.coupling", msg.brin)
}

/// A staff phone number a school may publish to parents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StaffPhone {
    Phone,
    Mobile,
}

impl StaffPhone {
    pub fn as_str(self) -> &'static str {
        match self {
            StaffPhone::Phone => "phone",
            StaffPhone::Mobile => "mobile",
        }
    }

    pub fn parse(s: &str) -> Option<StaffPhone> {
        match s {
            "phone" => Some(StaffPhone::Phone),
            "mobile" => Some(StaffPhone::Mobile),
            _ => None,
        }
    }
}

/// The schema id of a parent edit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ParentEditSchema {
    #[serde(rename = "portal.parent_edit.v1")]
    V1,
}

/// A parent edited imported fields of their own profile in the portal (R10).
/// The portal does not change the value (the LAS is leading, R1); the worker
/// e-mails the edit as a suggestion to the school.
///
/// Routing key: `portal.<brin>.parent_edit`. Name the guardian by LAS key or
/// by portal profile id (at least one).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "portal.parent_edit.v1")]
pub struct ParentEditV1 {
    pub schema: ParentEditSchema,
    pub message_id: Uuid,
    #[schemars(regex(pattern = r"^[0-9]{2}[A-Z0-9]{2}$"))]
    pub brin: String,
    #[serde(default)]
    pub guardian_las_key: Option<String>,
    #[serde(default)]
    pub guardian_profile_id: Option<i64>,
    /// Added in v1.3: the edit corrects this child's imported data
    /// ("Melding ouder-/kindgegevens", R10) instead of the guardian's own. It
    /// must name one of the guardian's own children in this school, by LAS
    /// key or by portal profile id; otherwise the edit is rejected
    /// (`validation_failed`). Absent: the edit is about the guardian.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_las_key: Option<String>,
    /// Added in v1.3: the child by portal profile id (see `student_las_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub student_profile_id: Option<i64>,
    pub edited_at: DateTime<Utc>,
    /// The proposed values, per field (contract field names, e.g. `phone`).
    /// `null` or an empty string proposes to remove the value.
    #[schemars(length(min = 1))]
    pub changes: Vec<FieldProposal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldProposal {
    /// For a guardian one of first_name, name_prefix, last_name, street,
    /// postcode, city, phone, mobile, emergency_phone (ESIS), email; for a
    /// child (v1.3, `student_las_key`) one of first_name, name_prefix,
    /// last_name, birth_date (`YYYY-MM-DD`), street, postcode, city. Other
    /// names are portal-only or not imported and are not suggestions (R5).
    pub field: String,
    #[serde(default)]
    pub proposed: Option<String>,
}

/// The schema id of a sync event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SyncEventSchema {
    #[serde(rename = "las.sync_event.v1")]
    V1,
}

/// What happened, for services that follow the portal's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum SyncEventType {
    #[serde(rename = "profile.created")]
    ProfileCreated,
    #[serde(rename = "profile.updated")]
    ProfileUpdated,
    #[serde(rename = "profile.deactivated")]
    ProfileDeactivated,
    #[serde(rename = "profile.reactivated")]
    ProfileReactivated,
    #[serde(rename = "profile.moved_from_intake")]
    ProfileMovedFromIntake,
    #[serde(rename = "group.created")]
    GroupCreated,
    /// Added in v1.3: a LAS record was coupled to an existing portal profile
    /// (R13; `reason` `auto` or `manual`, `portal_profile_id` says which).
    #[serde(rename = "profile.coupled")]
    ProfileCoupled,
    /// Added in v1.3: a coupling was undone; the LAS record waits again (R13).
    #[serde(rename = "profile.uncoupled")]
    ProfileUncoupled,
    #[serde(rename = "message.rejected")]
    MessageRejected,
}

impl SyncEventType {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncEventType::ProfileCreated => "profile.created",
            SyncEventType::ProfileUpdated => "profile.updated",
            SyncEventType::ProfileDeactivated => "profile.deactivated",
            SyncEventType::ProfileReactivated => "profile.reactivated",
            SyncEventType::ProfileMovedFromIntake => "profile.moved_from_intake",
            SyncEventType::GroupCreated => "group.created",
            SyncEventType::ProfileCoupled => "profile.coupled",
            SyncEventType::ProfileUncoupled => "profile.uncoupled",
            SyncEventType::MessageRejected => "message.rejected",
        }
    }
}

/// An event the worker publishes after a committed change, on exchange
/// `las.sync-events` with routing key `sync.<brin>.<event_type>`. It carries
/// ids, LAS keys and the *names* of changed fields, never their values.
/// Delivered at least once: deduplicate by `event_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(title = "las.sync_event.v1")]
pub struct SyncEventV1 {
    pub schema: SyncEventSchema,
    pub event_id: Uuid,
    pub event_type: SyncEventType,
    pub brin: String,
    pub occurred_at: DateTime<Utc>,
    /// The message that caused it, when one did (the daily job and operators act without one).
    #[serde(default)]
    pub message_id: Option<Uuid>,
    /// `student`, `guardian`, `staff` or `group`.
    #[serde(default)]
    pub entity_kind: Option<String>,
    #[serde(default)]
    pub las_key: Option<String>,
    /// Names of the fields that changed (profile.updated).
    #[serde(default)]
    pub changed_fields: Vec<String>,
    /// Why, for profile.deactivated (`removed_in_las`, `all_students_removed`,
    /// `missing_from_snapshot`) and message.rejected (a reason code);
    /// `auto` or `manual` for profile.coupled.
    #[serde(default)]
    pub reason: Option<String>,
    /// Added in v1.3: the portal profile's id, for profile.coupled and
    /// profile.uncoupled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub portal_profile_id: Option<i64>,
}

/// The routing key a parent edit is published with.
pub fn parent_edit_routing_key(msg: &ParentEditV1) -> String {
    format!("portal.{}.parent_edit", msg.brin)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GroupMapping {
    pub las_group_key: String,
    pub portal_group_id: i64,
}

/// Headers the worker puts on a message it moves to the dead-letter queue.
/// The body is the original body, unchanged, so it can be replayed.
pub mod dead_letter {
    /// Machine-readable reason code, one of [`super::RejectReason`].
    pub const REASON_CODE: &str = "x-las-reason-code";
    /// The reason in plain words, for a support desk. Never personal data.
    pub const REASON: &str = "x-las-reason";
    /// Exchange the message was first published on.
    pub const ORIGINAL_EXCHANGE: &str = "x-las-original-exchange";
    /// Routing key the message was first published with.
    pub const ORIGINAL_ROUTING_KEY: &str = "x-las-original-routing-key";
    /// RFC 3339 time of the rejection.
    pub const REJECTED_AT: &str = "x-las-rejected-at";
    /// The message id, when the message could be read far enough to have one.
    pub const MESSAGE_ID: &str = "x-las-message-id";
    /// RFC 3339 time `las-worker dlq replay` republished the message; on a
    /// replayed message, and on its dead letter when it is rejected again.
    pub const REPLAYED_AT: &str = "x-las-replayed-at";
}

/// Why a message was rejected to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The body is not JSON.
    InvalidJson,
    /// The `schema` field names a schema this worker does not know.
    UnknownSchema,
    /// JSON, but a field is missing or has the wrong form.
    ValidationFailed,
    /// Bigger than 1 MiB.
    TooLarge,
    /// No portal is linked to this BRIN (R6).
    UnknownBrin,
    /// The message came from another LAS system or environment than the school's link (R6).
    EnvironmentMismatch,
    /// ESIS environment with a label other than `BasisOnline Ouderportaal` (R6).
    EsisLabel,
    /// A link request that would give a portal a second LAS environment (R6).
    RelinkRefused,
    /// A change type this worker version cannot apply yet.
    Unsupported,
    /// The database refused the change (a constraint); the message is kept for a person to look at.
    DatabaseRejected,
    /// Added in v1.3: a coupling decision the worker cannot carry out (R13):
    /// a profile of another school or kind, one already coupled, or a LAS
    /// record that does not wait for a decision.
    CouplingRefused,
    /// Added in v1.3: a first-run `group_mapping` the worker cannot apply: sent
    /// after the school's first run with another mapping, or mapping onto the
    /// intake group or onto another LAS group's portal group (R7).
    MappingRefused,
}

impl RejectReason {
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::UnknownSchema => "unknown_schema",
            RejectReason::ValidationFailed => "validation_failed",
            RejectReason::TooLarge => "too_large",
            RejectReason::UnknownBrin => "unknown_brin",
            RejectReason::EnvironmentMismatch => "environment_mismatch",
            RejectReason::EsisLabel => "esis_label",
            RejectReason::RelinkRefused => "relink_refused",
            RejectReason::Unsupported => "unsupported",
            RejectReason::DatabaseRejected => "database_rejected",
            RejectReason::CouplingRefused => "coupling_refused",
            RejectReason::MappingRefused => "mapping_refused",
        }
    }

    pub const ALL: [RejectReason; 12] = [
        RejectReason::InvalidJson,
        RejectReason::UnknownSchema,
        RejectReason::ValidationFailed,
        RejectReason::TooLarge,
        RejectReason::UnknownBrin,
        RejectReason::EnvironmentMismatch,
        RejectReason::EsisLabel,
        RejectReason::RelinkRefused,
        RejectReason::Unsupported,
        RejectReason::DatabaseRejected,
        RejectReason::CouplingRefused,
        RejectReason::MappingRefused,
    ];
}

/// True when `brin` has the form of a BRIN: 2 digits, then 2 capital letters or digits.
pub fn is_valid_brin(brin: &str) -> bool {
    let b = brin.as_bytes();
    b.len() == 4
        && b[0].is_ascii_digit()
        && b[1].is_ascii_digit()
        && b[2..]
            .iter()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
}

/// The routing key a change message is published with.
pub fn change_routing_key(msg: &LasChangeV1) -> String {
    format!("las.{}.{}", msg.brin, msg.change.type_name())
}

/// The routing key a link message is published with.
pub fn link_routing_key(msg: &PortalLinkV1) -> String {
    format!("portal.{}.link", msg.brin)
}

/// Every published schema: (file stem, JSON Schema).
///
/// `las.change.v1` and `portal.link.v1` are message bodies (named by their
/// `schema` field); `reject-reason.v1` describes the values of the
/// [`dead_letter::REASON_CODE`] header.
pub fn schemas() -> Vec<(&'static str, schemars::Schema)> {
    let mut reject_reason = schemars::schema_for!(RejectReason);
    reject_reason.insert("title".to_owned(), "reject-reason.v1".into());
    vec![
        ("las.change.v1", schemars::schema_for!(LasChangeV1)),
        ("portal.link.v1", schemars::schema_for!(PortalLinkV1)),
        ("portal.parent_edit.v1", schemars::schema_for!(ParentEditV1)),
        ("portal.coupling.v1", schemars::schema_for!(CouplingV1)),
        ("portal.erasure.v1", schemars::schema_for!(ErasureV1)),
        ("las.sync_event.v1", schemars::schema_for!(SyncEventV1)),
        ("reject-reason.v1", reject_reason),
    ]
}

/// Renders a schema the way it is committed in `contracts/schema/`.
pub fn render_schema(schema: &schemars::Schema) -> String {
    let mut s = serde_json::to_string_pretty(schema).unwrap_or_default();
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brin_form() {
        assert!(is_valid_brin("12AB"));
        assert!(is_valid_brin("0099"));
        assert!(!is_valid_brin("12ab"));
        assert!(!is_valid_brin("AB12"));
        assert!(!is_valid_brin("12ABC"));
        assert!(!is_valid_brin(""));
    }

    #[test]
    fn type_names_match_serde_tags() {
        let v = serde_json::json!({"type": "student.removed", "las_key": "S1"});
        let c: Change = serde_json::from_value(v).expect("parses");
        assert_eq!(c.type_name(), "student.removed");
        assert!(Change::TYPE_NAMES.contains(&c.type_name()));
    }
}
