//! Reading a message body: size, JSON, schema id, contract validation.
//! Pure; every failure becomes a [`Rejection`] a support desk can read.

use las_contracts::{
    Change, CouplingAction, CouplingV1, ErasureV1, LasChangeV1, MAX_MESSAGE_BYTES, ParentEditV1,
    PortalLinkV1, RejectReason, is_valid_brin,
};
use serde::Deserialize;

/// A message the worker understood.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    Change(Box<LasChangeV1>),
    Link(Box<PortalLinkV1>),
    ParentEdit(Box<ParentEditV1>),
    /// R13: the school's decision about a LAS record that waits to be coupled.
    Coupling(Box<CouplingV1>),
    /// R12: the school granted an erasure request (seed 004).
    Erasure(Box<ErasureV1>),
}

impl Inbound {
    pub fn message_id(&self) -> uuid::Uuid {
        match self {
            Inbound::Change(c) => c.message_id,
            Inbound::Link(l) => l.message_id,
            Inbound::ParentEdit(e) => e.message_id,
            Inbound::Coupling(c) => c.message_id,
            Inbound::Erasure(e) => e.message_id,
        }
    }

    pub fn brin(&self) -> &str {
        match self {
            Inbound::Change(c) => &c.brin,
            Inbound::Link(l) => &l.brin,
            Inbound::ParentEdit(e) => &e.brin,
            Inbound::Coupling(c) => &c.brin,
            Inbound::Erasure(e) => &e.brin,
        }
    }

    /// The message type as used in metric labels and logs.
    pub fn type_name(&self) -> &'static str {
        match self {
            Inbound::Change(c) => c.change.type_name(),
            Inbound::Link(_) => "portal.link",
            Inbound::ParentEdit(_) => "portal.parent_edit",
            Inbound::Coupling(_) => "portal.coupling",
            Inbound::Erasure(_) => "portal.erasure",
        }
    }
}

/// Why a message cannot be applied, in plain words (never personal data).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub text: String,
    pub message_id: Option<uuid::Uuid>,
    /// The BRIN, when the message could be read far enough to have one.
    pub brin: Option<String>,
}

impl Rejection {
    pub fn new(reason: RejectReason, text: impl Into<String>) -> Self {
        Rejection {
            reason,
            text: text.into(),
            message_id: None,
            brin: None,
        }
    }

    pub fn with_message_id(mut self, id: uuid::Uuid) -> Self {
        self.message_id = Some(id);
        self
    }

    /// The portal database refused this message for good (a data or
    /// constraint error, `error` says which): kept for a person to look at
    /// and replay, never retried for ever.
    pub fn database_refused(message_id: uuid::Uuid, error: impl std::fmt::Display) -> Self {
        Rejection::new(
            RejectReason::DatabaseRejected,
            format!("the portal database refused this message ({error}); it is kept here for a person to look at and replay"),
        )
        .with_message_id(message_id)
    }
}

#[derive(Deserialize)]
struct Probe {
    schema: Option<serde_json::Value>,
    message_id: Option<uuid::Uuid>,
    brin: Option<serde_json::Value>,
}

const KNOWN_SCHEMAS: [&str; 5] = [
    "las.change.v1",
    "portal.link.v1",
    "portal.parent_edit.v1",
    "portal.coupling.v1",
    "portal.erasure.v1",
];

/// Reads a message body.
pub fn parse(body: &[u8]) -> Result<Inbound, Rejection> {
    if body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            format!(
                "message is {} bytes; the limit is {} bytes (1 MiB)",
                body.len(),
                MAX_MESSAGE_BYTES
            ),
        ));
    }
    // The common case in one pass: a valid LAS change. Anything else (a
    // link, a parent edit, an invalid message) takes the path below, which
    // reads the schema first and names the reason of a rejection.
    if let Ok(m) = serde_json::from_slice::<LasChangeV1>(body)
        && validate_change(&m).is_ok()
    {
        return Ok(Inbound::Change(Box::new(m)));
    }
    let probe: Probe = match serde_json::from_slice(body) {
        Ok(p) => p,
        Err(e) if e.is_syntax() || e.is_eof() => {
            return Err(Rejection::new(
                RejectReason::InvalidJson,
                format!(
                    "message is not valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                ),
            ));
        }
        Err(_) => {
            return Err(Rejection::new(
                RejectReason::ValidationFailed,
                "message must be a JSON object with a `schema` field and a valid `message_id`",
            ));
        }
    };
    let schema = match &probe.schema {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(_) => {
            return Err(Rejection::new(
                RejectReason::UnknownSchema,
                "the `schema` field must be a string such as \"las.change.v1\"",
            ));
        }
        None => {
            return Err(Rejection::new(
                RejectReason::UnknownSchema,
                "the message has no `schema` field; expected \"las.change.v1\" or \"portal.link.v1\"",
            ));
        }
    };
    let result = match schema {
        "las.change.v1" => decode::<LasChangeV1>(body)
            .and_then(|m| validate_change(&m).map(|_| Inbound::Change(Box::new(m)))),
        "portal.link.v1" => decode::<PortalLinkV1>(body)
            .and_then(|m| validate_link(&m).map(|_| Inbound::Link(Box::new(m)))),
        "portal.parent_edit.v1" => decode::<ParentEditV1>(body)
            .and_then(|m| validate_parent_edit(&m).map(|_| Inbound::ParentEdit(Box::new(m)))),
        "portal.coupling.v1" => decode::<CouplingV1>(body)
            .and_then(|m| validate_coupling(&m).map(|_| Inbound::Coupling(Box::new(m)))),
        "portal.erasure.v1" => decode::<ErasureV1>(body)
            .and_then(|m| validate_erasure(&m).map(|_| Inbound::Erasure(Box::new(m)))),
        other => Err(Rejection::new(
            RejectReason::UnknownSchema,
            format!(
                "unknown schema {:?}; this worker reads {}",
                truncate(other, 64),
                KNOWN_SCHEMAS.join(", ")
            ),
        )),
    };
    let brin = probe
        .brin
        .as_ref()
        .and_then(|b| b.as_str())
        .filter(|b| is_valid_brin(b))
        .map(str::to_owned);
    match (result, probe.message_id) {
        (Err(r), Some(id)) => Err(Rejection {
            brin,
            ..r.with_message_id(id)
        }),
        (Err(r), None) => Err(Rejection { brin, ..r }),
        (r, _) => r,
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn decode<T: for<'de> Deserialize<'de>>(body: &[u8]) -> Result<T, Rejection> {
    // Plain serde first: path tracking costs a fifth of the worker's CPU and
    // only matters for the rare invalid message, which is decoded again below.
    if let Ok(v) = serde_json::from_slice(body) {
        return Ok(v);
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        // serde's own text names the problem (missing field, unknown variant,
        // wrong type) but may quote the offending value, which can be personal
        // data. Keep the classification and field path, drop quoted values.
        let inner = e.into_inner();
        // Internally tagged enums hide the path below `change`; look deeper.
        let (path, what) = match (path.as_str(), diagnose_change(body)) {
            ("change", Some((p, w))) => (format!("change.{p}"), w),
            _ => (path, describe_serde_error(&inner)),
        };
        Rejection::new(
            RejectReason::ValidationFailed,
            format!("field `{path}`: {what}"),
        )
    })
}

/// Finds the field inside `change` that failed, by decoding the change body
/// as the record type its `type` names.
fn diagnose_change(body: &[u8]) -> Option<(String, String)> {
    use las_contracts::{
        GroupRecord, GuardianRecord, Removed, SchoolYear, StaffRecord, StudentRecord,
    };
    fn probe<T: for<'de> Deserialize<'de>>(v: serde_json::Value) -> Option<(String, String)> {
        match serde_path_to_error::deserialize::<_, T>(v) {
            Ok(_) => None,
            Err(e) => Some((e.path().to_string(), describe_serde_error(e.inner()))),
        }
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut change = v.get("change")?.clone();
    let ty = change.get("type")?.as_str()?.to_owned();
    change.as_object_mut()?.remove("type");
    match ty.as_str() {
        "student.upserted" => probe::<StudentRecord>(change),
        "guardian.upserted" => probe::<GuardianRecord>(change),
        "staff.upserted" => probe::<StaffRecord>(change),
        "group.upserted" => probe::<GroupRecord>(change),
        "student.removed" | "guardian.removed" | "staff.removed" | "group.removed" => {
            probe::<Removed>(change)
        }
        "school_year.rolled_over" => probe::<SchoolYear>(change),
        _ => None,
    }
}

fn describe_serde_error(e: &serde_json::Error) -> String {
    let msg = strip_position(&e.to_string());
    // Field names and type tags are safe to repeat; any other quoted value may
    // be personal data (a name, a phone number), so quoted spans are dropped.
    if msg.starts_with("missing field") || msg.starts_with("unknown variant") {
        return truncate(&msg, 200).to_owned();
    }
    let mut out = String::with_capacity(msg.len());
    let mut quoted = false;
    for c in msg.chars() {
        if c == '`' {
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out.replace(" ,", ",").replace("  ", " ").trim().to_owned()
}

fn strip_position(msg: &str) -> String {
    match msg.find(" at line") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

fn bad(text: impl Into<String>) -> Rejection {
    Rejection::new(RejectReason::ValidationFailed, text)
}

fn check_brin(brin: &str) -> Result<(), Rejection> {
    if is_valid_brin(brin) {
        Ok(())
    } else {
        Err(bad(
            "field `brin` must be a BRIN: 2 digits and 2 capital letters or digits, e.g. 12AB",
        ))
    }
}

/// Contract checks serde cannot express.
pub fn validate_change(m: &LasChangeV1) -> Result<(), Rejection> {
    check_brin(&m.brin)?;
    if m.version == 0 || m.version > i64::MAX as u64 {
        return Err(bad(format!(
            "field `version` must be between 1 and {}",
            i64::MAX
        )));
    }
    if m.source.environment_id.trim().is_empty() {
        return Err(bad("field `source.environment_id` is empty"));
    }
    if let Some(key) = m.change.las_key()
        && key.trim().is_empty()
    {
        return Err(bad(format!(
            "field `change.las_key` is empty in a {} message",
            m.change.type_name()
        )));
    }
    let lists: Vec<&Option<Vec<String>>> = match &m.change {
        Change::StudentUpserted(r) => vec![&r.group_keys],
        Change::GuardianUpserted(r) => vec![&r.student_keys],
        Change::StaffUpserted(r) => vec![&r.group_keys],
        Change::GroupUpserted(r) => vec![&r.year_group_keys, &r.student_keys],
        _ => vec![],
    };
    let reserved = m
        .change
        .las_key()
        .is_some_and(|k| k.trim_start().starts_with('@'))
        || lists
            .iter()
            .flat_map(|l| l.iter().flatten())
            .any(|k| k.trim_start().starts_with('@'));
    if reserved {
        return Err(bad(
            "LAS keys must not start with `@`; that prefix is reserved for portal groups such as the intake group",
        ));
    }
    if let Change::SchoolYearRolledOver(y) = &m.change {
        if y.school_year.trim().is_empty() {
            return Err(bad("field `change.school_year` is empty"));
        }
        if crate::domain::rules::rollover::SchoolYear::parse(&y.school_year).is_none() {
            return Err(bad(format!(
                "field `change.school_year` must be two consecutive years like 2026-2027, not {:?} (R11)",
                truncate(&y.school_year, 40)
            )));
        }
    }
    Ok(())
}

pub fn validate_parent_edit(m: &ParentEditV1) -> Result<(), Rejection> {
    check_brin(&m.brin)?;
    let key = m
        .guardian_las_key
        .as_deref()
        .map(str::trim)
        .filter(|k| !k.is_empty());
    if key.is_none() && m.guardian_profile_id.is_none() {
        return Err(bad(
            "name the guardian: `guardian_las_key` or `guardian_profile_id`",
        ));
    }
    if m.changes.is_empty() {
        return Err(bad("field `changes` is empty"));
    }
    if m.changes.len() > 50 {
        return Err(bad("field `changes` has more than 50 entries"));
    }
    Ok(())
}

/// R13: a coupling decision names the LAS record (kind and key) and, to
/// couple, the portal profile.
pub fn validate_coupling(m: &CouplingV1) -> Result<(), Rejection> {
    check_brin(&m.brin)?;
    if !matches!(m.entity_kind.trim(), "student" | "guardian" | "staff") {
        return Err(bad(
            "field `entity_kind` must be student, guardian or staff",
        ));
    }
    if m.las_key.trim().is_empty() {
        return Err(bad("field `las_key` is empty"));
    }
    if m.action == CouplingAction::Couple && m.portal_profile_id.is_none() {
        return Err(bad(
            "action `couple` needs `portal_profile_id`: the portal profile to couple the LAS record to",
        ));
    }
    Ok(())
}

/// R12: an erasure request names the profile (kind and LAS key).
pub fn validate_erasure(m: &ErasureV1) -> Result<(), Rejection> {
    check_brin(&m.brin)?;
    if !matches!(m.entity_kind.trim(), "student" | "guardian" | "staff") {
        return Err(bad(
            "field `entity_kind` must be student, guardian or staff",
        ));
    }
    if m.las_key.trim().is_empty() {
        return Err(bad("field `las_key` is empty"));
    }
    Ok(())
}

pub fn validate_link(m: &PortalLinkV1) -> Result<(), Rejection> {
    check_brin(&m.brin)?;
    if m.environment_id.trim().is_empty() {
        return Err(bad("field `environment_id` is empty"));
    }
    if let Some(role) = &m.default_staff_role
        && role.trim().is_empty()
    {
        return Err(bad(
            "field `default_staff_role` is empty; leave it out for the default",
        ));
    }
    if m.intake_weeks_ahead.is_some_and(|w| w > 52) {
        return Err(bad("field `intake_weeks_ahead` must be at most 52 weeks"));
    }
    if m.year_records_kept_years
        .is_some_and(|y| y > crate::domain::model::MAX_YEAR_RECORDS_KEPT_YEARS)
    {
        return Err(bad(
            "field `year_records_kept_years` must be at most 5: absence data is kept five years, in the school's LAS (seed 003)",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn change(extra: serde_json::Value) -> Vec<u8> {
        let mut v = serde_json::json!({
            "schema": "las.change.v1",
            "message_id": "7f1c6a52-3f39-4c38-9a1b-0d7e0c1a0001",
            "brin": "12AB",
            "source": {"system": "parnassys", "environment_id": "env-1", "label": null},
            "emitted_at": "2026-11-20T08:00:00Z",
            "version": 1,
            "change": {"type": "student.upserted", "las_key": "S1", "first_name": "Jan"}
        });
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            for (k, x) in e {
                o.insert(k.clone(), x.clone());
            }
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn reads_a_valid_change() {
        let m = parse(&change(serde_json::json!({}))).unwrap();
        assert_eq!(m.type_name(), "student.upserted");
        assert_eq!(m.brin(), "12AB");
    }

    #[test]
    fn invalid_json() {
        let r = parse(b"{not json").unwrap_err();
        assert_eq!(r.reason, RejectReason::InvalidJson);
    }

    #[test]
    fn unknown_schema() {
        let r = parse(&change(serde_json::json!({"schema": "las.change.v9"}))).unwrap_err();
        assert_eq!(r.reason, RejectReason::UnknownSchema);
        assert!(r.text.contains("las.change.v9"));
        assert!(r.message_id.is_some());
    }

    #[test]
    fn too_large() {
        let body = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(parse(&body).unwrap_err().reason, RejectReason::TooLarge);
    }

    #[test]
    fn bad_brin() {
        let r = parse(&change(serde_json::json!({"brin": "12ab"}))).unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
        assert!(r.text.contains("brin"));
    }

    #[test]
    fn missing_las_key_names_the_field() {
        let r = parse(&change(
            serde_json::json!({"change": {"type": "guardian.upserted"}}),
        ))
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
        assert!(r.text.contains("las_key"), "{}", r.text);
    }

    #[test]
    fn unknown_change_type() {
        let r = parse(&change(
            serde_json::json!({"change": {"type": "pet.upserted", "las_key": "x"}}),
        ))
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
        assert!(r.text.contains("pet.upserted"), "{}", r.text);
    }

    #[test]
    fn bad_birth_date_does_not_echo_the_value() {
        let r = parse(&change(serde_json::json!({"change": {"type": "student.upserted", "las_key": "S1", "birth_date": "2019-02-30"}}))).unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
        assert!(r.text.contains("birth_date"), "{}", r.text);
        assert!(!r.text.contains("2019-02-30"), "{}", r.text);
    }

    #[test]
    fn wrong_type_does_not_echo_the_value() {
        let r = parse(&change(serde_json::json!({"change": {"type": "guardian.upserted", "las_key": "G1", "email": 12345678}}))).unwrap_err();
        assert!(!r.text.contains("12345678"), "{}", r.text);
    }

    #[test]
    fn version_zero_is_invalid() {
        let r = parse(&change(serde_json::json!({"version": 0}))).unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
    }

    #[test]
    fn blank_las_key_is_invalid() {
        let r = parse(&change(
            serde_json::json!({"change": {"type": "student.removed", "las_key": "  "}}),
        ))
        .unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
    }

    #[test]
    fn reserved_key_prefix_is_refused() {
        let r = parse(&change(serde_json::json!({"change": {"type": "student.upserted", "las_key": "S1", "group_keys": ["@intake"]}}))).unwrap_err();
        assert_eq!(r.reason, RejectReason::ValidationFailed);
    }

    #[test]
    fn reads_a_link() {
        let body = serde_json::json!({
            "schema": "portal.link.v1", "message_id": "7f1c6a52-3f39-4c38-9a1b-0d7e0c1a0002",
            "brin": "12AB", "system": "esis", "environment_id": "e", "label": "BasisOnline Ouderportaal"
        });
        let m = parse(&serde_json::to_vec(&body).unwrap()).unwrap();
        assert_eq!(m.type_name(), "portal.link");
    }
}
