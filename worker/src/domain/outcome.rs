//! What happened to each message of a batch, what a batch did beyond its
//! messages, and the sync events it emits. Data only: the shell gives each
//! event its id and time when it writes the outbox.

use std::collections::BTreeMap;

use las_contracts::SyncEventType;
use uuid::Uuid;

use crate::domain::message::Rejection;
use crate::domain::model::Decision;

/// What to do with a delivery once its batch is committed.
#[derive(Debug, Clone, PartialEq)]
pub enum Disposition {
    /// Applied, duplicate or stale: acknowledge.
    Done(&'static str),
    /// Move to the dead-letter queue with this reason, then acknowledge.
    DeadLetter(Rejection),
}

/// What happened to one message of a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum MessageOutcome {
    Applied { decisions: Vec<Decision> },
    Duplicate,
    Stale,
    Rejected(Rejection),
}

impl MessageOutcome {
    pub fn label(&self) -> &'static str {
        match self {
            MessageOutcome::Applied { .. } => "applied",
            MessageOutcome::Duplicate => "duplicate",
            MessageOutcome::Stale => "stale",
            MessageOutcome::Rejected(_) => "rejected",
        }
    }
}

/// Counts of what a batch did beyond the messages themselves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchEffects {
    /// (kind, change) -> count, change in created/updated/deactivated/reactivated.
    pub profiles: BTreeMap<(&'static str, &'static str), u64>,
    /// R10: suggestions opened, without recipients, and e-mails queued.
    pub suggestions_opened: u64,
    pub suggestions_without_recipients: u64,
    pub emails_queued: u64,
    /// R10: seconds from edit to resolution, per suggestion resolved.
    pub suggestions_resolved: Vec<f64>,
    /// R11: (school year, items unlinked, records deleted) per rollover.
    pub rollovers: Vec<(String, u64, u64)>,
    /// R12: snapshots applied, held (by the guard or a count mismatch).
    pub snapshots_applied: u64,
    pub snapshots_held: u64,
    /// R13: couplings by outcome (`auto`, `manual`, `waiting`, `created`, `uncoupled`).
    pub couplings: BTreeMap<&'static str, u64>,
    /// Sync events written to the outbox in this transaction.
    pub events: Events,
}

/// One sync event to emit: ids, LAS keys, field names and reason codes,
/// never values (R12 privacy). The shell adds `event_id` and `occurred_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventIntent {
    pub event_type: SyncEventType,
    pub brin: String,
    pub message_id: Option<Uuid>,
    pub entity_kind: Option<String>,
    pub las_key: Option<String>,
    pub changed_fields: Vec<String>,
    pub reason: Option<String>,
    /// R13: the portal profile a coupling event is about.
    pub portal_profile_id: Option<i64>,
}

impl EventIntent {
    /// The routing key on `las.sync-events`: `sync.<brin>.<event type>`.
    pub fn routing_key(&self) -> String {
        format!(
            "sync.{}.{}",
            if self.brin.is_empty() {
                "unknown"
            } else {
                &self.brin
            },
            self.event_type.as_str()
        )
    }
}

/// The sync events of a batch, in the order they happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Events {
    rows: Vec<EventIntent>,
}

impl Events {
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        event_type: SyncEventType,
        brin: &str,
        message_id: Option<Uuid>,
        entity_kind: Option<&str>,
        las_key: Option<&str>,
        changed_fields: Vec<String>,
        reason: Option<String>,
    ) {
        self.rows.push(EventIntent {
            event_type,
            brin: brin.to_owned(),
            message_id,
            entity_kind: entity_kind.map(str::to_owned),
            las_key: las_key.map(str::to_owned),
            changed_fields,
            reason,
            portal_profile_id: None,
        });
    }

    /// R13: `profile.coupled` (reason `auto`/`manual`) or
    /// `profile.uncoupled` about LAS record `las_key` and portal profile
    /// `profile_id`: ids only.
    #[allow(clippy::too_many_arguments)]
    pub fn push_coupling(
        &mut self,
        event_type: SyncEventType,
        brin: &str,
        message_id: Option<Uuid>,
        kind: &str,
        las_key: &str,
        profile_id: i64,
        reason: Option<&str>,
    ) {
        self.push(
            event_type,
            brin,
            message_id,
            Some(kind),
            Some(las_key),
            vec![],
            reason.map(str::to_owned),
        );
        if let Some(e) = self.rows.last_mut() {
            e.portal_profile_id = Some(profile_id);
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Moves `other`'s events to the end of this list, in their order.
    pub fn append(&mut self, other: &mut Events) {
        self.rows.append(&mut other.rows);
    }

    /// The events in order, leaving this list empty (the outbox took them).
    pub fn take(&mut self) -> Vec<EventIntent> {
        std::mem::take(&mut self.rows)
    }

    pub fn iter(&self) -> impl Iterator<Item = &EventIntent> {
        self.rows.iter()
    }
}

/// Shutdown was requested while the batch waited for the database; nothing
/// was committed and nothing may be acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("interrupted by shutdown before the batch could be committed")]
pub struct Interrupted;

/// The change journal entries of a batch, column by column (one row per
/// applied message: its decisions as codes like `R2:cleared:phone`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    pub school_id: Vec<i64>,
    pub message_id: Vec<Uuid>,
    pub kind: Vec<String>,
    pub las_key: Vec<String>,
    pub version: Vec<i64>,
    pub decisions: Vec<String>,
}

impl Journal {
    pub fn push(
        &mut self,
        school_id: i64,
        message_id: Uuid,
        kind: &str,
        las_key: &str,
        version: i64,
        decisions: &[Decision],
    ) {
        self.school_id.push(school_id);
        self.message_id.push(message_id);
        self.kind.push(kind.to_owned());
        self.las_key.push(las_key.to_owned());
        self.version.push(version);
        let mut codes = String::with_capacity(decisions.len() * 24);
        for (i, d) in decisions.iter().enumerate() {
            if i > 0 {
                codes.push(',');
            }
            d.write_code(&mut codes);
        }
        self.decisions.push(codes);
    }
}

/// What the daily job did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DailyReport {
    /// False when another replica holds the job or it already ran today.
    pub ran: bool,
    pub date: Option<chrono::NaiveDate>,
    pub placed_in_intake: u64,
    pub promoted: u64,
    pub stays_in_intake: u64,
    pub still_held: u64,
    /// R12: profiles whose personal data was purged after the retention period.
    pub purged: u64,
    /// R12/R13: LAS records that waited for a coupling decision past the
    /// school's retention term, deleted.
    pub waits_expired: u64,
}

impl DailyReport {
    /// Counts one student's R9 decision of the day.
    pub fn count(&mut self, decision: Option<&Decision>) {
        use crate::domain::model::Action;
        match decision.map(|d| d.action) {
            Some(Action::PlacedInIntake) => self.placed_in_intake += 1,
            Some(Action::Promoted) => self.promoted += 1,
            Some(Action::StaysInIntake) => self.stays_in_intake += 1,
            Some(Action::HeldBack) => self.still_held += 1,
            _ => {}
        }
    }
}
