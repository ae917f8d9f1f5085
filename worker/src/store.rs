//! PostgreSQL: the portal database. A batch of messages is applied in one
//! transaction with set-based statements; the rules decide, the store writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::NaiveDate;
use las_contracts::{Change, LasChangeV1, LasSystem, PortalLinkV1, RejectReason};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};
use uuid::Uuid;

use crate::inbound::{Inbound, Rejection};
use crate::rules::{
    self, Applied, Contact, Decision, LasProfile, Outcome, Profile, ProfileKind, SchoolSettings,
    Status,
};

/// A store failure, classified.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database is unreachable, overloaded, or a transaction lost a race:
    /// retry the same work later; never dead-letter because of it.
    #[error("database unavailable: {0}")]
    Transient(#[source] sqlx::Error),
    /// A concurrent batch created a profile this batch was about to create:
    /// the batch is rolled back and applied again, and then sees that row.
    #[error("a concurrent batch created the same profile; the batch is applied again")]
    Conflict,
    /// The database refused the data itself; retrying will not help.
    #[error("database refused the change: SQLSTATE {code}{}", constraint.as_deref().map(|c| format!(", constraint {c}")).unwrap_or_default())]
    Permanent {
        code: String,
        constraint: Option<String>,
    },
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Transient(_) | StoreError::Conflict)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

/// A unique violation of the profiles' key (school, kind, LAS key) while
/// inserting new profiles: a concurrent transaction inserted the same key
/// since this one looked. The batch is applied again and then sees that row,
/// so this is never repeated for good. Every other error is classified as
/// usual.
fn lost_insert_race(e: sqlx::Error) -> StoreError {
    if let sqlx::Error::Database(db) = &e
        && db.code().as_deref() == Some("23505")
        && db.constraint() == Some(PROFILES_KEY)
    {
        return StoreError::Conflict;
    }
    classify(e)
}

/// The unique constraint on profiles (school_id, kind, las_key) (migration 0001).
const PROFILES_KEY: &str = "profiles_school_id_kind_las_key_key";

/// Which database errors are worth retrying. Only the data a message carries
/// can make the database refuse it for good: SQLSTATE class 22 (data
/// exception, e.g. a NUL character) and 23 (integrity constraint violation).
/// Everything else — connection loss, a database that refuses connections
/// (`55000` while `ALLOW_CONNECTIONS` is off), shutdowns, serialization
/// failures, deadlocks, resource shortages, even a missing table during a
/// deployment — is the infrastructure's problem: retried with backoff, never
/// a reason to dead-letter a good message.
pub fn classify(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
            let permanent = code.starts_with("22") || code.starts_with("23");
            if permanent {
                StoreError::Permanent {
                    constraint: db.constraint().map(str::to_owned),
                    code,
                }
            } else {
                StoreError::Transient(e)
            }
        }
        sqlx::Error::Decode(_)
        | sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::RowNotFound
        | sqlx::Error::Encode(_) => StoreError::Permanent {
            code: "decode".into(),
            constraint: None,
        },
        _ => StoreError::Transient(e),
    }
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
    /// BRINs whose data changed, for the last-sync gauge.
    pub schools_synced: Vec<String>,
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
    /// Sync events written to the outbox in this transaction.
    pub events: Events,
}

/// Sync events for the outbox (ids, LAS keys, field names; never values).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Events {
    /// (routing key, event as JSON), in the order they happened.
    rows: Vec<(String, String)>,
}

impl Events {
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        event_type: las_contracts::SyncEventType,
        brin: &str,
        message_id: Option<Uuid>,
        entity_kind: Option<&str>,
        las_key: Option<&str>,
        changed_fields: Vec<String>,
        reason: Option<String>,
    ) {
        let event = las_contracts::SyncEventV1 {
            schema: las_contracts::SyncEventSchema::V1,
            event_id: Uuid::now_v7(),
            event_type,
            brin: brin.to_owned(),
            occurred_at: chrono::Utc::now(),
            message_id,
            entity_kind: entity_kind.map(str::to_owned),
            las_key: las_key.map(str::to_owned),
            changed_fields,
            reason,
        };
        let key = format!(
            "sync.{}.{}",
            if brin.is_empty() { "unknown" } else { brin },
            event_type.as_str()
        );
        if let Ok(payload) = serde_json::to_string(&event) {
            self.rows.push((key, payload));
        }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Writes the events into the outbox, in the caller's transaction: one
    /// row holding all of them, in order (one row and one update per batch,
    /// not per change).
    pub async fn write(&mut self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.rows.is_empty() {
            return Ok(());
        }
        let keys: Vec<&str> = self.rows.iter().map(|r| r.0.as_str()).collect();
        let events: Vec<&str> = self.rows.iter().map(|r| r.1.as_str()).collect();
        sqlx::query(
            "INSERT INTO event_outbox (routing_keys, events) VALUES ($1, $2::text[]::json[])",
        )
        .bind(&keys)
        .bind(&events)
        .execute(&mut **tx)
        .await?;
        self.rows.clear();
        Ok(())
    }
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

#[derive(Debug, Clone)]
struct SchoolRow {
    id: i64,
    brin: String,
    settings: SchoolSettings,
}

type Key = (i64, ProfileKind, String);

struct ProfileSlot {
    id: i64,
    current: Option<Profile>,
    state: Option<Profile>,
    was_status: Option<Status>,
    group_keys: Option<Vec<String>>,
    student_keys: Option<Vec<String>>,
    removed: bool,
    message_id: Option<Uuid>,
    /// Inserted by this batch with its final values (no update needed).
    inserted: bool,
}

impl Store {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url.parse().map_err(StoreError::Transient)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(classify)?;
        Ok(Store { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Store { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the migrations in `worker/migrations`; safe to run at every start
    /// and from several replicas at once (sqlx takes an advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("./migrations").run(&self.pool).await?;
        Ok(())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Applies a batch in one transaction. Returns one outcome per message, in
    /// order. Fails as a whole (nothing written) on a database error.
    pub async fn apply_batch(
        &self,
        msgs: &[Inbound],
        today: NaiveDate,
    ) -> Result<(Vec<MessageOutcome>, BatchEffects), StoreError> {
        let tx = self.pool.begin().await?;
        let (tx, outcomes, effects) = self.apply_batch_in(tx, msgs, today).await?;
        tx.commit().await?;
        Ok((outcomes, effects))
    }

    /// `apply_batch` inside a transaction (or savepoint) the caller owns and
    /// then commits or rolls back: `import --dry-run` rolls it back.
    pub async fn apply_batch_in<'c>(
        &self,
        mut tx: Transaction<'c, Postgres>,
        msgs: &[Inbound],
        today: NaiveDate,
    ) -> Result<(Transaction<'c, Postgres>, Vec<MessageOutcome>, BatchEffects), StoreError> {
        let mut outcomes: Vec<Option<MessageOutcome>> = vec![None; msgs.len()];
        let mut effects = BatchEffects::default();
        // Statements use PostgreSQL's plan cache. Its generic plans are only
        // as good as the tables' statistics: `analyze_stale_tables` keeps
        // them fresh during a large first run (a plan cached while the
        // portal was small once took a 1M-message drain from 6,000 to 750
        // msg/s).

        // Links first: a school linked in this batch is known to its changes.
        for (i, m) in msgs.iter().enumerate() {
            match m {
                Inbound::Link(link) => outcomes[i] = Some(apply_link(&mut tx, link).await?),
                Inbound::ParentEdit(edit) => {
                    outcomes[i] = Some(apply_parent_edit(&mut tx, edit, &mut effects).await?)
                }
                Inbound::Change(_) => {}
            }
        }

        let brins: Vec<String> = msgs
            .iter()
            .filter_map(|m| match m {
                Inbound::Change(c) => Some(c.brin.clone()),
                Inbound::Link(_) | Inbound::ParentEdit(_) => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let schools = load_schools(&mut tx, &brins).await?;

        // R6 and support checks, then dedupe by message id.
        let mut accepted: Vec<(usize, &LasChangeV1, i64)> = Vec::new();
        let mut seen = HashSet::new();
        for (i, m) in msgs.iter().enumerate() {
            let Inbound::Change(c) = m else { continue };
            let school = schools.get(&c.brin);
            if let Err(r) = rules::check_source(&c.brin, school.map(|s| &s.settings), &c.source) {
                outcomes[i] = Some(MessageOutcome::Rejected(
                    Rejection::new(r.reason, r.text).with_message_id(c.message_id),
                ));
                continue;
            }
            if let (Change::GroupUpserted(g), Some(school)) = (&c.change, school)
                && let Err(r) = rules::plan_group(g, &school.settings)
            {
                outcomes[i] = Some(MessageOutcome::Rejected(
                    Rejection::new(r.reason, r.text).with_message_id(c.message_id),
                ));
                continue;
            }
            if !seen.insert(c.message_id) {
                outcomes[i] = Some(MessageOutcome::Duplicate);
                continue;
            }
            let school_id = school.map(|s| s.id).unwrap_or_default();
            accepted.push((i, c, school_id));
        }

        let ids: Vec<Uuid> = accepted.iter().map(|(_, c, _)| c.message_id).collect();
        let school_ids: Vec<i64> = accepted.iter().map(|(_, _, s)| *s).collect();
        let fresh: HashSet<Uuid> = sqlx::query_scalar(
            "INSERT INTO processed_messages (message_id, school_id)
             SELECT * FROM UNNEST($1::uuid[], $2::int8[])
             ON CONFLICT (message_id) DO NOTHING
             RETURNING message_id",
        )
        .bind(&ids)
        .bind(&school_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .collect();
        accepted.retain(|(i, c, _)| {
            if fresh.contains(&c.message_id) {
                true
            } else {
                outcomes[*i] = Some(MessageOutcome::Duplicate);
                false
            }
        });

        let by_id: HashMap<i64, &SchoolRow> = schools.values().map(|s| (s.id, s)).collect();
        let mut journal = Journal::default();

        // Profiles.
        let profile_msgs: Vec<(usize, &LasChangeV1, i64)> = accepted
            .iter()
            .filter(|(_, c, _)| profile_kind(&c.change).is_some())
            .copied()
            .collect();
        if !profile_msgs.is_empty() {
            apply_profiles(
                &mut tx,
                &profile_msgs,
                &by_id,
                today,
                &mut outcomes,
                &mut journal,
                &mut effects,
            )
            .await?;
        }

        // Groups.
        let group_msgs: Vec<(usize, &LasChangeV1, i64)> = accepted
            .iter()
            .filter(|(_, c, _)| {
                matches!(c.change, Change::GroupUpserted(_) | Change::GroupRemoved(_))
            })
            .copied()
            .collect();
        if !group_msgs.is_empty() {
            apply_groups(
                &mut tx,
                &group_msgs,
                &by_id,
                &mut outcomes,
                &mut journal,
                &mut effects,
            )
            .await?;
        }

        // Full snapshots (R12) and the year rollover (R11).
        record_snapshot_members(&mut tx, &accepted).await?;
        for (i, c, school_id) in &accepted {
            let Some(school) = by_id.get(school_id) else {
                continue;
            };
            let decision = match &c.change {
                Change::SchoolYearRolledOver(y) => Some(
                    rollover(&mut tx, school, &y.school_year, c.message_id, &mut effects).await?,
                ),
                Change::SnapshotStarted(sn) => {
                    sqlx::query("INSERT INTO snapshots (id, school_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
                        .bind(sn.snapshot_id)
                        .bind(school.id)
                        .execute(&mut *tx)
                        .await?;
                    Some(rules::Action::SnapshotStarted)
                }
                Change::SnapshotCompleted(sn) => {
                    Some(complete_snapshot(&mut tx, school, sn, c.message_id, &mut effects).await?)
                }
                _ => None,
            };
            if let Some(action) = decision {
                let rule = if matches!(c.change, Change::SchoolYearRolledOver(_)) {
                    rules::Rule::R11
                } else {
                    rules::Rule::R12
                };
                let decisions = vec![Decision {
                    rule,
                    action,
                    field: None,
                }];
                journal.push(
                    *school_id,
                    c.message_id,
                    "school",
                    &school.brin,
                    c.version as i64,
                    &decisions,
                );
                outcomes[*i] = Some(MessageOutcome::Applied { decisions });
            }
        }

        // R12 privacy: a rejected message is an event too (reason code only).
        for (m, o) in msgs.iter().zip(&outcomes) {
            if let Some(MessageOutcome::Rejected(r)) = o {
                effects.events.push(
                    las_contracts::SyncEventType::MessageRejected,
                    m.brin(),
                    Some(m.message_id()),
                    None,
                    None,
                    vec![],
                    Some(r.reason.as_str().to_owned()),
                );
            }
        }
        effects.events.write(&mut tx).await?;

        journal.write(&mut tx).await?;

        let synced: Vec<i64> = accepted
            .iter()
            .map(|(_, _, s)| *s)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !synced.is_empty() {
            sqlx::query("UPDATE schools SET last_sync_at = now() WHERE id = ANY($1)")
                .bind(&synced)
                .execute(&mut *tx)
                .await?;
            effects.schools_synced = synced
                .iter()
                .filter_map(|id| by_id.get(id).map(|s| s.brin.clone()))
                .collect();
        }

        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(MessageOutcome::Stale))
            .collect();
        Ok((tx, outcomes, effects))
    }
}

fn profile_kind(c: &Change) -> Option<ProfileKind> {
    match c {
        Change::StudentUpserted(_) | Change::StudentRemoved(_) => Some(ProfileKind::Student),
        Change::GuardianUpserted(_) | Change::GuardianRemoved(_) => Some(ProfileKind::Guardian),
        Change::StaffUpserted(_) | Change::StaffRemoved(_) => Some(ProfileKind::Staff),
        _ => None,
    }
}

fn settings_from_row(row: &sqlx::postgres::PgRow) -> Result<SchoolSettings, sqlx::Error> {
    let system: String = row.try_get("las_system")?;
    Ok(SchoolSettings {
        system: LasSystem::parse(&system).unwrap_or(LasSystem::Parnassys),
        environment_id: row.try_get("environment_id")?,
        label: row.try_get("environment_label")?,
        intake_weeks_ahead: row
            .try_get::<Option<i32>, _>("intake_weeks_ahead")?
            .map(|w| w.max(0) as u32),
        default_staff_role: row.try_get("default_staff_role")?,
        link_staff_to_groups: row.try_get("link_staff_to_groups")?,
        esis_composite_groups: row.try_get("esis_composite_groups")?,
        retention_days: row.try_get::<i32, _>("retention_days")?.max(0) as u32,
        snapshot_guard_percent: row
            .try_get::<i32, _>("snapshot_guard_percent")?
            .clamp(0, 100) as u32,
    })
}

const SCHOOL_COLUMNS: &str = "id, brin, las_system, environment_id, environment_label, intake_weeks_ahead, default_staff_role, link_staff_to_groups, esis_composite_groups, retention_days, snapshot_guard_percent";

async fn load_schools(
    tx: &mut Transaction<'_, Postgres>,
    brins: &[String],
) -> Result<HashMap<String, SchoolRow>, StoreError> {
    if brins.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHOOL_COLUMNS} FROM schools WHERE brin = ANY($1)"
    )))
    .bind(brins)
    .fetch_all(&mut **tx)
    .await?;
    let mut out = HashMap::new();
    for row in rows {
        let brin: String = row.try_get("brin")?;
        out.insert(
            brin.clone(),
            SchoolRow {
                id: row.try_get("id")?,
                brin,
                settings: settings_from_row(&row)?,
            },
        );
    }
    Ok(out)
}

/// R6: link a school to its one LAS environment, or change its settings.
async fn apply_link(
    tx: &mut Transaction<'_, Postgres>,
    link: &PortalLinkV1,
) -> Result<MessageOutcome, StoreError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHOOL_COLUMNS} FROM schools WHERE brin = $1 FOR UPDATE"
    )))
    .bind(&link.brin)
    .fetch_optional(&mut **tx)
    .await?;
    let existing = row.as_ref().map(settings_from_row).transpose()?;
    let settings = match rules::link_settings(existing.as_ref(), link) {
        Ok(s) => s,
        Err(r) => {
            return Ok(MessageOutcome::Rejected(
                Rejection::new(r.reason, r.text).with_message_id(link.message_id),
            ));
        }
    };
    // R7 first run: the mapping must name portal groups of this school.
    let mapping_entries = link.group_mapping.clone().unwrap_or_default();
    let school_id: Option<i64> = match &row {
        Some(r) => Some(r.try_get("id")?),
        None => None,
    };
    let first_run_done: bool = match school_id {
        Some(id) => {
            sqlx::query_scalar("SELECT first_run_at IS NOT NULL FROM schools WHERE id = $1")
                .bind(id)
                .fetch_one(&mut **tx)
                .await?
        }
        None => false,
    };
    if !mapping_entries.is_empty() && !first_run_done {
        let ids: Vec<i64> = mapping_entries.iter().map(|m| m.portal_group_id).collect();
        let found: Vec<i64> = match school_id {
            Some(id) => {
                sqlx::query_scalar(
                    "SELECT id FROM portal_groups WHERE school_id = $1 AND id = ANY($2)",
                )
                .bind(id)
                .bind(&ids)
                .fetch_all(&mut **tx)
                .await?
            }
            None => vec![],
        };
        let missing: Vec<String> = ids
            .iter()
            .filter(|i| !found.contains(i))
            .map(|i| i.to_string())
            .collect();
        if !missing.is_empty() {
            return Ok(MessageOutcome::Rejected(
                Rejection::new(
                    RejectReason::ValidationFailed,
                    format!(
                        "group_mapping names portal group(s) {} that do not exist in the portal of BRIN {}; correct the mapping and send the link again (R7)",
                        missing.join(", "),
                        link.brin
                    ),
                )
                .with_message_id(link.message_id),
            ));
        }
    }
    let fresh = sqlx::query(
        "INSERT INTO processed_messages (message_id) VALUES ($1) ON CONFLICT DO NOTHING",
    )
    .bind(link.message_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if fresh == 0 {
        return Ok(MessageOutcome::Duplicate);
    }
    let mapping =
        serde_json::to_value(link.group_mapping.clone().unwrap_or_default()).unwrap_or_default();
    sqlx::query(
        "INSERT INTO schools (brin, las_system, environment_id, environment_label, intake_weeks_ahead,
             default_staff_role, link_staff_to_groups, esis_composite_groups, retention_days, group_mapping,
             snapshot_guard_percent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         ON CONFLICT (brin) DO UPDATE SET
             environment_label = EXCLUDED.environment_label,
             intake_weeks_ahead = EXCLUDED.intake_weeks_ahead,
             default_staff_role = EXCLUDED.default_staff_role,
             link_staff_to_groups = EXCLUDED.link_staff_to_groups,
             esis_composite_groups = EXCLUDED.esis_composite_groups,
             retention_days = EXCLUDED.retention_days,
             group_mapping = EXCLUDED.group_mapping,
             snapshot_guard_percent = EXCLUDED.snapshot_guard_percent,
             updated_at = now()",
    )
    .bind(&link.brin)
    .bind(settings.system.as_str())
    .bind(&settings.environment_id)
    .bind(&settings.label)
    .bind(settings.intake_weeks_ahead.map(|w| w as i32))
    .bind(&settings.default_staff_role)
    .bind(settings.link_staff_to_groups)
    .bind(settings.esis_composite_groups)
    .bind(settings.retention_days.min(i32::MAX as u32) as i32)
    .bind(mapping)
    .bind(settings.snapshot_guard_percent.min(100) as i32)
    .execute(&mut **tx)
    .await?;
    let decision = if existing.is_some() {
        rules::Action::Overwritten
    } else {
        rules::Action::Created
    };
    let mut decisions = vec![Decision {
        rule: rules::Rule::R6,
        action: decision,
        field: None,
    }];
    if let Some(id) = school_id
        && !mapping_entries.is_empty()
    {
        if first_run_done {
            tracing::warn!(brin = %link.brin, "group_mapping ignored: the first run of this school already happened");
        } else {
            first_run(tx, id, &mapping_entries).await?;
            decisions.push(Decision {
                rule: rules::Rule::R7,
                action: rules::Action::MappedToYearGroup,
                field: None,
            });
        }
    }
    Ok(MessageOutcome::Applied { decisions })
}

/// R7 first run: each mapped portal group takes its LAS key (a later
/// `group.upserted` renames it and it keeps its group-bound items); portal
/// groups no LAS group maps to are detached and listed as leftovers. When the
/// LAS group already arrived, the group the worker made for it steps aside.
async fn first_run(
    tx: &mut Transaction<'_, Postgres>,
    school_id: i64,
    mapping: &[las_contracts::GroupMapping],
) -> Result<(), StoreError> {
    let keys: Vec<String> = mapping
        .iter()
        .map(|m| m.las_group_key.trim().to_owned())
        .collect();
    let ids: Vec<i64> = mapping.iter().map(|m| m.portal_group_id).collect();
    sqlx::query(
        "UPDATE portal_groups g SET las_key = NULL, status = 'detached', updated_at = now()
         FROM UNNEST($2::text[], $3::int8[]) AS t(k, id)
         WHERE g.school_id = $1 AND g.las_key = t.k AND g.id <> t.id",
    )
    .bind(school_id)
    .bind(&keys)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE portal_groups g SET las_key = t.k, status = 'active', updated_at = now()
         FROM UNNEST($2::text[], $3::int8[]) AS t(k, id)
         WHERE g.school_id = $1 AND g.id = t.id",
    )
    .bind(school_id)
    .bind(&keys)
    .bind(&ids)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE portal_groups SET status = 'detached', updated_at = now()
         WHERE school_id = $1 AND las_key IS NULL AND group_type <> 'intake' AND status = 'active'",
    )
    .bind(school_id)
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE schools SET first_run_at = now() WHERE id = $1")
        .bind(school_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[derive(Default)]
struct Journal {
    school_id: Vec<i64>,
    message_id: Vec<Uuid>,
    kind: Vec<String>,
    las_key: Vec<String>,
    version: Vec<i64>,
    decisions: Vec<String>,
}

impl Journal {
    fn push(
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

    async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.school_id.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO change_journal (school_id, message_id, entity_kind, las_key, version, decisions)
             SELECT s, m, k, l, v, CASE WHEN d = '' THEN '{}'::text[] ELSE string_to_array(d, ',') END
             FROM UNNEST($1::int8[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::text[]) AS t(s, m, k, l, v, d)",
        )
        .bind(&self.school_id)
        .bind(&self.message_id)
        .bind(&self.kind)
        .bind(&self.las_key)
        .bind(&self.version)
        .bind(&self.decisions)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}

fn status_of(s: &str) -> Option<Status> {
    Status::parse(s)
}

const CONTACT_COLUMNS: &str = "first_name, name_prefix, last_name, birth_date, street, postcode, city, phone, mobile, emergency_phone, email";

/// The imported fields of a profile row (the columns of `CONTACT_COLUMNS`).
pub(crate) fn contact_from_row(row: &sqlx::postgres::PgRow) -> Result<Contact, sqlx::Error> {
    Ok(Contact {
        first_name: row.try_get("first_name")?,
        name_prefix: row.try_get("name_prefix")?,
        last_name: row.try_get("last_name")?,
        birth_date: row.try_get("birth_date")?,
        street: row.try_get("street")?,
        postcode: row.try_get("postcode")?,
        city: row.try_get("city")?,
        phone: row.try_get("phone")?,
        mobile: row.try_get("mobile")?,
        emergency_phone: row.try_get("emergency_phone")?,
        email: row.try_get("email")?,
    })
}

/// Profiles: lock every row the batch touches (creating placeholder rows for
/// new keys, in key order, so two replicas never deadlock on inserts), run the
/// rules on the current state in version order, write the results back.
#[allow(clippy::too_many_arguments)]
async fn apply_profiles(
    tx: &mut Transaction<'_, Postgres>,
    msgs: &[(usize, &LasChangeV1, i64)],
    schools: &HashMap<i64, &SchoolRow>,
    today: NaiveDate,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    let keys: Vec<Key> = msgs
        .iter()
        .filter_map(|(_, c, s)| {
            Some((
                *s,
                profile_kind(&c.change)?,
                c.change.las_key()?.trim().to_owned(),
            ))
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let k_school: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let k_kind: Vec<&str> = keys.iter().map(|k| k.1.as_str()).collect();
    let k_key: Vec<&str> = keys.iter().map(|k| k.2.as_str()).collect();
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT p.id, p.school_id, p.kind, p.las_key, p.status, p.version, p.data_version, p.email_version, p.role,
                p.las_group_keys, p.in_intake, {CONTACT_COLUMNS}
         FROM profiles p
         JOIN UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, l)
           ON p.school_id = t.s AND p.kind = t.k AND p.las_key = t.l
         ORDER BY p.id
         FOR UPDATE OF p"
    )))
    .bind(&k_school)
    .bind(&k_kind)
    .bind(&k_key)
    .fetch_all(&mut **tx)
    .await?;
    let mut slots: HashMap<Key, ProfileSlot> = HashMap::with_capacity(rows.len());
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let Some(kind) = ProfileKind::parse(&kind) else {
            continue;
        };
        let status: String = row.try_get("status")?;
        let current = match status_of(&status) {
            Some(st) => Some(Profile {
                contact: contact_from_row(&row)?,
                status: st,
                version: row.try_get("version")?,
                data_version: row.try_get("data_version")?,
                email_version: row.try_get("email_version")?,
                role: row.try_get("role")?,
                las_group_keys: row.try_get("las_group_keys")?,
                in_intake: row.try_get("in_intake")?,
            }),
            None => None,
        };
        slots.insert(
            (row.try_get("school_id")?, kind, row.try_get("las_key")?),
            ProfileSlot {
                id: row.try_get("id")?,
                was_status: current.as_ref().map(|c| c.status),
                state: current.clone(),
                current,
                group_keys: None,
                student_keys: None,
                removed: false,
                message_id: None,
                inserted: false,
            },
        );
    }

    // Keys the portal does not have yet: inserted with their final values
    // after the rules ran (id 0 until then).
    for key in &keys {
        slots.entry(key.clone()).or_insert(ProfileSlot {
            id: 0,
            current: None,
            state: None,
            was_status: None,
            group_keys: None,
            student_keys: None,
            removed: false,
            message_id: None,
            inserted: false,
        });
    }

    // Version order per entity: the result equals in-order arrival.
    let mut order: Vec<&(usize, &LasChangeV1, i64)> = msgs.iter().collect();
    order.sort_by_key(|(i, c, _)| (c.version, *i));
    for (i, c, school_id) in order {
        let Some(kind) = profile_kind(&c.change) else {
            continue;
        };
        let Some(key) = c.change.las_key().map(|k| k.trim().to_owned()) else {
            continue;
        };
        let Some(school) = schools.get(school_id) else {
            continue;
        };
        let Some(slot) = slots.get_mut(&(*school_id, kind, key.clone())) else {
            continue;
        };
        let version = c.version as i64;
        let outcome = match &c.change {
            Change::StudentUpserted(r) => rules::apply_profile(
                slot.state.as_ref(),
                &LasProfile::from_student(r),
                version,
                &school.settings,
                today,
            ),
            Change::GuardianUpserted(r) => rules::apply_profile(
                slot.state.as_ref(),
                &LasProfile::from_guardian(r),
                version,
                &school.settings,
                today,
            ),
            Change::StaffUpserted(r) => rules::apply_profile(
                slot.state.as_ref(),
                &LasProfile::from_staff(r),
                version,
                &school.settings,
                today,
            ),
            _ => rules::apply_removal(slot.state.as_ref(), version),
        };
        match outcome {
            Outcome::Stale => outcomes[*i] = Some(MessageOutcome::Stale),
            Outcome::Applied(applied) => {
                let Applied {
                    profile,
                    decisions,
                    group_keys,
                    student_keys,
                } = *applied;
                journal.push(
                    *school_id,
                    c.message_id,
                    kind.as_str(),
                    &key,
                    version,
                    &decisions,
                );
                slot.removed = profile.status == Status::Deactivated;
                slot.state = Some(profile);
                if group_keys.is_some() {
                    slot.group_keys = group_keys;
                }
                if student_keys.is_some() {
                    slot.student_keys = student_keys;
                }
                slot.message_id = Some(c.message_id);
                outcomes[*i] = Some(MessageOutcome::Applied { decisions });
            }
        }
    }

    // New profiles in one statement, in key order (as concurrent writers
    // insert them), with their final values. A key another transaction
    // inserted since this one looked conflicts: the batch is retried, and
    // then sees that row.
    let mut new_rows = ProfileWrite::default();
    for (key, slot) in &slots {
        if slot.id == 0
            && slot.message_id.is_some()
            && let Some(state) = &slot.state
        {
            new_rows.push_new(key, slot, state);
        }
    }
    if !new_rows.id.is_empty() {
        for (id, school_id, kind, key) in new_rows.insert(tx).await? {
            if let Some(kind) = ProfileKind::parse(&kind)
                && let Some(slot) = slots.get_mut(&(school_id, kind, key))
            {
                slot.id = id;
                slot.inserted = true;
            }
        }
    }

    // Write back every changed profile in one statement.
    let mut w = ProfileWrite::default();
    let mut members = Members::default();
    let mut links = Links::default();
    let mut students_changed: Vec<i64> = Vec::new();
    let mut touched_guardians: Vec<i64> = Vec::new();
    let mut intake_schools: HashSet<i64> = HashSet::new();
    for ((school_id, kind, key), slot) in &slots {
        let Some(state) = &slot.state else { continue };
        if slot.message_id.is_none() {
            continue;
        }
        let change = match (slot.was_status, state.status) {
            (None | Some(Status::Held), Status::Active) => Some("created"),
            (None, Status::Held) => Some("held"),
            (Some(Status::Deactivated), Status::Active) => Some("reactivated"),
            (None | Some(Status::Active) | Some(Status::Held), Status::Deactivated) => {
                Some("deactivated")
            }
            (Some(Status::Active), Status::Active)
                if slot.current.as_ref().map(|c| &c.contact) != Some(&state.contact) =>
            {
                Some("updated")
            }
            _ => None,
        };
        if let Some(change) = change {
            *effects.profiles.entry((kind.as_str(), change)).or_default() += 1;
        }
        if let Some(school) = schools.get(school_id) {
            use las_contracts::SyncEventType as E;
            let was_in_intake = slot.current.as_ref().is_some_and(|c| c.in_intake);
            let event = match change {
                Some("created") => Some((E::ProfileCreated, vec![], None)),
                Some("reactivated") => Some((E::ProfileReactivated, vec![], None)),
                Some("deactivated") => Some((
                    E::ProfileDeactivated,
                    vec![],
                    Some("removed_in_las".to_owned()),
                )),
                Some("updated") => {
                    let fields = slot
                        .current
                        .as_ref()
                        .map(|c| c.contact.changed_fields(&state.contact))
                        .unwrap_or_default();
                    Some((
                        E::ProfileUpdated,
                        fields.iter().map(|f| f.as_str().to_owned()).collect(),
                        None,
                    ))
                }
                _ => None,
            };
            if let Some((ty, fields, reason)) = event {
                effects.events.push(
                    ty,
                    &school.brin,
                    slot.message_id,
                    Some(kind.as_str()),
                    Some(key),
                    fields,
                    reason,
                );
            }
            if was_in_intake && !state.in_intake && state.status == Status::Active {
                effects.events.push(
                    E::ProfileMovedFromIntake,
                    &school.brin,
                    slot.message_id,
                    Some(kind.as_str()),
                    Some(key),
                    vec![],
                    None,
                );
            }
        }
        if !slot.inserted {
            w.push(slot, state);
        }
        if let Some(groups) = &slot.group_keys {
            if groups.iter().any(|g| g == rules::INTAKE_GROUP_KEY) {
                intake_schools.insert(*school_id);
            }
            // A removed profile new to the portal still clears the
            // memberships an ESIS group gave it (R12), so it replaces.
            if slot.inserted && !slot.removed {
                members.add(*school_id, *kind, key, groups);
            } else {
                members.replace(*school_id, *kind, key, groups, slot.removed);
            }
        }
        if let Some(students) = &slot.student_keys {
            if slot.inserted {
                links.add(*school_id, key, students);
            } else {
                links.replace(*school_id, key, students);
            }
        }
        match kind {
            ProfileKind::Student if slot.was_status != Some(state.status) => {
                students_changed.push(slot.id)
            }
            ProfileKind::Guardian => touched_guardians.push(slot.id),
            _ => {}
        }
    }
    w.write(tx).await?;
    ensure_intake_groups(tx, &intake_schools.into_iter().collect::<Vec<_>>()).await?;
    members.write(tx).await?;
    links.write(tx).await?;
    reconcile_guardians(tx, &students_changed, &touched_guardians, effects).await?;
    resolve_suggestions(tx, &touched_guardians, effects).await?;
    Ok(())
}

/// R9: the school's intake group, created when first needed.
async fn ensure_intake_groups(
    tx: &mut Transaction<'_, Postgres>,
    schools: &[i64],
) -> Result<(), StoreError> {
    if schools.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO portal_groups (school_id, las_key, name, group_type, status)
         SELECT s, $2, $3, 'intake', 'active' FROM UNNEST($1::int8[]) AS t(s)
         ON CONFLICT (school_id, las_key) DO NOTHING",
    )
    .bind(schools)
    .bind(rules::INTAKE_GROUP_KEY)
    .bind(rules::INTAKE_GROUP_NAME)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Default)]
struct ProfileWrite {
    id: Vec<i64>,
    // Only for new profiles.
    school_id: Vec<i64>,
    kind: Vec<&'static str>,
    las_key: Vec<String>,
    las_group_keys: Vec<String>,
    in_intake: Vec<bool>,
    status: Vec<&'static str>,
    version: Vec<i64>,
    data_version: Vec<i64>,
    email_version: Vec<i64>,
    role: Vec<Option<String>>,
    message_id: Vec<Option<Uuid>>,
    first_name: Vec<Option<String>>,
    name_prefix: Vec<Option<String>>,
    last_name: Vec<Option<String>>,
    birth_date: Vec<Option<NaiveDate>>,
    street: Vec<Option<String>>,
    postcode: Vec<Option<String>>,
    city: Vec<Option<String>>,
    phone: Vec<Option<String>>,
    mobile: Vec<Option<String>>,
    emergency_phone: Vec<Option<String>>,
    email: Vec<Option<String>>,
}

impl ProfileWrite {
    fn push_new(&mut self, key: &Key, slot: &ProfileSlot, p: &Profile) {
        self.school_id.push(key.0);
        self.kind.push(key.1.as_str());
        self.las_key.push(key.2.clone());
        self.push(slot, p);
    }

    /// Inserts new profiles in key order; returns (id, school, kind, key) of
    /// the rows inserted. A key another transaction inserted since this one
    /// looked is `StoreError::Conflict`: a plain insert, because `ON CONFLICT
    /// DO NOTHING` probes the unique index once more for every row, a cost
    /// paid by every new profile for a race that is rare.
    async fn insert(
        &self,
        tx: &mut Transaction<'_, Postgres>,
    ) -> Result<Vec<(i64, i64, String, String)>, StoreError> {
        let q = sqlx::query_as(
            "INSERT INTO profiles (school_id, kind, las_key, status, version, role, last_message_id,
                first_name, name_prefix, last_name, birth_date, street, postcode, city,
                phone, mobile, emergency_phone, email, data_version, email_version,
                las_group_keys, in_intake, deactivated_at, deactivation_reason)
             SELECT sc, kd, lk, status, version, role, message_id,
                first_name, name_prefix, last_name, birth_date, street, postcode, city,
                phone, mobile, emergency_phone, email, data_version, email_version,
                CASE WHEN lg = '' THEN '{}'::text[] ELSE string_to_array(lg, chr(31)) END, in_intake,
                CASE WHEN status = 'deactivated' THEN now() END,
                CASE WHEN status = 'deactivated' THEN 'removed_in_las' END
             FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::uuid[], $5::text[], $6::text[], $7::text[],
                         $8::date[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[],
                         $16::int8[], $17::int8[], $18::text[], $19::bool[], $20::int8[], $21::text[], $22::text[])
                  AS t(status, version, role, message_id, first_name, name_prefix, last_name,
                       birth_date, street, postcode, city, phone, mobile, emergency_phone, email, data_version, email_version,
                       lg, in_intake, sc, kd, lk)
             ORDER BY sc, kd, lk
             RETURNING id, school_id, kind, las_key",
        );
        self.bind_columns(q)
            .bind(&self.school_id)
            .bind(&self.kind)
            .bind(&self.las_key)
            .fetch_all(&mut **tx)
            .await
            .map_err(lost_insert_race)
    }

    fn push(&mut self, slot: &ProfileSlot, p: &Profile) {
        self.id.push(slot.id);
        self.las_group_keys.push(p.las_group_keys.join(KEY_SEP));
        self.in_intake.push(p.in_intake);
        self.status.push(p.status.as_str());
        self.version.push(p.version);
        self.data_version.push(p.data_version);
        self.email_version.push(p.email_version);
        self.role.push(p.role.clone());
        self.message_id.push(slot.message_id);
        let c = &p.contact;
        self.first_name.push(c.first_name.clone());
        self.name_prefix.push(c.name_prefix.clone());
        self.last_name.push(c.last_name.clone());
        self.birth_date.push(c.birth_date);
        self.street.push(c.street.clone());
        self.postcode.push(c.postcode.clone());
        self.city.push(c.city.clone());
        self.phone.push(c.phone.clone());
        self.mobile.push(c.mobile.clone());
        self.emergency_phone.push(c.emergency_phone.clone());
        self.email.push(c.email.clone());
    }

    async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if self.id.is_empty() {
            return Ok(());
        }
        let q = sqlx::query(
            "UPDATE profiles p SET
                status = t.status, version = t.version, role = t.role, last_message_id = t.message_id,
                first_name = t.first_name, name_prefix = t.name_prefix, last_name = t.last_name,
                birth_date = t.birth_date, street = t.street, postcode = t.postcode, city = t.city,
                phone = t.phone, mobile = t.mobile, emergency_phone = t.emergency_phone, email = t.email,
                data_version = t.data_version, email_version = t.email_version,
                las_group_keys = CASE WHEN t.lg = '' THEN '{}'::text[] ELSE string_to_array(t.lg, chr(31)) END,
                in_intake = t.in_intake,
                deactivated_at = CASE WHEN t.status = 'deactivated' THEN COALESCE(p.deactivated_at, now()) END,
                deactivation_reason = CASE WHEN t.status = 'deactivated' THEN
                    CASE WHEN p.status = 'deactivated' AND p.version = t.version THEN p.deactivation_reason ELSE 'removed_in_las' END END,
                updated_at = now()
             FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::text[], $5::uuid[], $6::text[], $7::text[], $8::text[],
                         $9::date[], $10::text[], $11::text[], $12::text[], $13::text[], $14::text[], $15::text[], $16::text[],
                         $17::int8[], $18::int8[], $19::text[], $20::bool[])
                  AS t(id, status, version, role, message_id, first_name, name_prefix, last_name,
                       birth_date, street, postcode, city, phone, mobile, emergency_phone, email, data_version, email_version,
                       lg, in_intake)
             WHERE p.id = t.id",
        )
        .bind(&self.id);
        self.bind_columns(q).execute(&mut **tx).await?;
        Ok(())
    }

    /// Binds the imported and bookkeeping columns, in the order both
    /// statements list them (status .. in_intake).
    fn bind_columns<'q, Q: BindColumns<'q>>(&'q self, q: Q) -> Q {
        q.bind_col(&self.status)
            .bind_col(&self.version)
            .bind_col(&self.role)
            .bind_col(&self.message_id)
            .bind_col(&self.first_name)
            .bind_col(&self.name_prefix)
            .bind_col(&self.last_name)
            .bind_col(&self.birth_date)
            .bind_col(&self.street)
            .bind_col(&self.postcode)
            .bind_col(&self.city)
            .bind_col(&self.phone)
            .bind_col(&self.mobile)
            .bind_col(&self.emergency_phone)
            .bind_col(&self.email)
            .bind_col(&self.data_version)
            .bind_col(&self.email_version)
            .bind_col(&self.las_group_keys)
            .bind_col(&self.in_intake)
    }
}

/// `bind` of both of sqlx's statement kinds, so that one column list
/// (`ProfileWrite::bind_columns`) serves the insert and the update.
trait BindColumns<'q>: Sized {
    fn bind_col<T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self;
}

impl<'q> BindColumns<'q> for sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    fn bind_col<T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self {
        self.bind(v)
    }
}

impl<'q, O> BindColumns<'q> for sqlx::query::QueryAs<'q, Postgres, O, sqlx::postgres::PgArguments> {
    fn bind_col<T: 'q + sqlx::Encode<'q, Postgres> + sqlx::Type<Postgres>>(self, v: T) -> Self {
        self.bind(v)
    }
}

/// Group memberships by LAS key.
#[derive(Default)]
struct Members {
    del_school: Vec<i64>,
    del_kind: Vec<&'static str>,
    del_key: Vec<String>,
    del_all_sources: Vec<bool>,
    ins_school: Vec<i64>,
    ins_kind: Vec<&'static str>,
    ins_key: Vec<String>,
    ins_group: Vec<String>,
}

impl Members {
    fn replace(
        &mut self,
        school_id: i64,
        kind: ProfileKind,
        key: &str,
        groups: &[String],
        removed: bool,
    ) {
        if kind == ProfileKind::Guardian {
            return;
        }
        self.del_school.push(school_id);
        self.del_kind.push(kind.as_str());
        self.del_key.push(key.to_owned());
        // R12: a removed profile leaves every group, also those a subclass put it in.
        self.del_all_sources.push(removed);
        self.add(school_id, kind, key, groups);
    }

    /// The groups of a profile this transaction inserted: it has no
    /// memberships of its own yet (only the profile's own writes add source
    /// `profile` rows), so nothing needs deleting first.
    fn add(&mut self, school_id: i64, kind: ProfileKind, key: &str, groups: &[String]) {
        if kind == ProfileKind::Guardian {
            return;
        }
        for g in groups {
            self.ins_school.push(school_id);
            self.ins_kind.push(kind.as_str());
            self.ins_key.push(key.to_owned());
            self.ins_group.push(g.clone());
        }
    }

    async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if !self.del_school.is_empty() {
            sqlx::query(
                "DELETE FROM memberships m
                 USING UNNEST($1::int8[], $2::text[], $3::text[], $4::bool[]) AS t(s, k, l, a)
                 WHERE m.school_id = t.s AND m.member_kind = t.k AND m.member_key = t.l
                   AND (t.a OR m.source = 'profile')",
            )
            .bind(&self.del_school)
            .bind(&self.del_kind)
            .bind(&self.del_key)
            .bind(&self.del_all_sources)
            .execute(&mut **tx)
            .await?;
        }
        if !self.ins_school.is_empty() {
            sqlx::query(
                "INSERT INTO memberships (school_id, member_kind, member_key, group_key, source)
                 SELECT s, k, l, g, 'profile' FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[]) AS t(s, k, l, g)
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.ins_school)
            .bind(&self.ins_kind)
            .bind(&self.ins_key)
            .bind(&self.ins_group)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Guardian to student links by LAS key.
#[derive(Default)]
struct Links {
    del_school: Vec<i64>,
    del_guardian: Vec<String>,
    ins_school: Vec<i64>,
    ins_guardian: Vec<String>,
    ins_student: Vec<String>,
}

impl Links {
    fn replace(&mut self, school_id: i64, guardian: &str, students: &[String]) {
        self.del_school.push(school_id);
        self.del_guardian.push(guardian.to_owned());
        self.add(school_id, guardian, students);
    }

    /// The students of a guardian this transaction inserted: links are only
    /// written by the guardian's own changes, so it has none to delete.
    fn add(&mut self, school_id: i64, guardian: &str, students: &[String]) {
        for s in students {
            self.ins_school.push(school_id);
            self.ins_guardian.push(guardian.to_owned());
            self.ins_student.push(s.clone());
        }
    }

    async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
        if !self.del_school.is_empty() {
            sqlx::query(
                "DELETE FROM guardian_students g USING UNNEST($1::int8[], $2::text[]) AS t(s, k)
                 WHERE g.school_id = t.s AND g.guardian_key = t.k",
            )
            .bind(&self.del_school)
            .bind(&self.del_guardian)
            .execute(&mut **tx)
            .await?;
        }
        if !self.ins_school.is_empty() {
            sqlx::query(
                "INSERT INTO guardian_students (school_id, guardian_key, student_key)
                 SELECT * FROM UNNEST($1::int8[], $2::text[], $3::text[])
                 ON CONFLICT DO NOTHING",
            )
            .bind(&self.ins_school)
            .bind(&self.ins_guardian)
            .bind(&self.ins_student)
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }
}

/// Planner settings for key-driven statements (transaction-local).
const PROBES_ONLY: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
                           SET LOCAL enable_mergejoin = off";
const PLANNER_DEFAULTS: &str =
    "RESET enable_seqscan; RESET enable_hashjoin; RESET enable_mergejoin";

/// R9 and R12 for guardians, from their students: a guardian with an active
/// student is active; one whose known students are all held (under 4, not
/// imported) is held; one whose students are all removed is deactivated with
/// reason `all_students_removed`, and comes back with a student. Students the
/// portal has not seen yet do not count. A guardian the LAS removed itself
/// stays deactivated.
async fn reconcile_guardians(
    tx: &mut Transaction<'_, Postgres>,
    students: &[i64],
    guardians: &[i64],
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    if students.is_empty() && guardians.is_empty() {
        return Ok(());
    }
    // Every statement is driven by the batch's ids or keys through an index.
    // A fresh portal database has no statistics (and autovacuum may be off);
    // then the planner may scan all guardians per batch, a cost that grows
    // with the table. The rule itself is `rules::guardian_status`.
    sqlx::raw_sql(PROBES_ONLY).execute(&mut **tx).await?;
    // The guardians of the students that changed.
    let linked: Vec<(i64, String)> = sqlx::query_as(
        "SELECT DISTINCT gs.school_id, gs.guardian_key
         FROM profiles s
         JOIN guardian_students gs ON gs.school_id = s.school_id AND gs.student_key = s.las_key
         WHERE s.id = ANY($1) AND s.kind = 'student'",
    )
    .bind(students)
    .fetch_all(&mut **tx)
    .await?;
    let (l_school, l_key): (Vec<i64>, Vec<String>) = linked.into_iter().unzip();
    // The kind comes from the UNNEST too (not a constant): a constant makes an
    // unanalyzed planner guess "one guardian" and scan them all.
    let l_kind = vec!["guardian"; l_key.len()];
    let rows: Vec<(i64, i64, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT g.id, g.school_id, g.las_key, g.status, g.deactivation_reason, s.brin
         FROM UNNEST($1::int8[], $4::text[], $2::text[]) AS u(s, kd, k)
         JOIN profiles g ON g.school_id = u.s AND g.kind = u.kd AND g.las_key = u.k
         JOIN schools s ON s.id = g.school_id
         UNION
         SELECT g.id, g.school_id, g.las_key, g.status, g.deactivation_reason, s.brin
         FROM profiles g JOIN schools s ON s.id = g.school_id
         WHERE g.id = ANY($3) AND g.kind = 'guardian'",
    )
    .bind(&l_school)
    .bind(&l_key)
    .bind(guardians)
    .bind(&l_kind)
    .fetch_all(&mut **tx)
    .await?;
    let mut cands: Vec<(i64, i64, String, Status, String)> = rows
        .into_iter()
        .filter_map(|(id, school, key, status, reason, brin)| {
            let status = status_of(&status)?;
            rules::guardian_follows_students(status, reason.as_deref())
                .then_some((id, school, key, status, brin))
        })
        .collect();
    // Updated in id order, as rows are locked everywhere else.
    cands.sort_by_key(|c| c.0);
    if cands.is_empty() {
        sqlx::raw_sql(PLANNER_DEFAULTS).execute(&mut **tx).await?;
        return Ok(());
    }
    let c_school: Vec<i64> = cands.iter().map(|c| c.1).collect();
    let c_key: Vec<&str> = cands.iter().map(|c| c.2.as_str()).collect();
    let links: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT gs.school_id, gs.guardian_key, gs.student_key
         FROM UNNEST($1::int8[], $2::text[]) AS u(s, k)
         JOIN guardian_students gs ON gs.school_id = u.s AND gs.guardian_key = u.k",
    )
    .bind(&c_school)
    .bind(&c_key)
    .fetch_all(&mut **tx)
    .await?;
    let s_school: Vec<i64> = links.iter().map(|l| l.0).collect();
    let s_key: Vec<&str> = links.iter().map(|l| l.2.as_str()).collect();
    let known: HashMap<(i64, String), Status> = sqlx::query_as::<_, (i64, String, String)>(
        "SELECT p.school_id, p.las_key, p.status
         FROM UNNEST($1::int8[], $3::text[], $2::text[]) AS u(s, kd, k)
         JOIN profiles p ON p.school_id = u.s AND p.kind = u.kd AND p.las_key = u.k",
    )
    .bind(&s_school)
    .bind(&s_key)
    .bind(vec!["student"; s_key.len()])
    .fetch_all(&mut **tx)
    .await?
    .into_iter()
    .filter_map(|(school, key, status)| Some(((school, key), status_of(&status)?)))
    .collect();
    let mut students_of: HashMap<(i64, &str), Vec<Status>> = HashMap::new();
    for (school, guardian, student) in &links {
        let entry = students_of.entry((*school, guardian.as_str())).or_default();
        if let Some(st) = known.get(&(*school, student.clone())) {
            entry.push(*st);
        }
    }
    let mut changed: Vec<(String, String, String, String)> = Vec::new();
    let (mut u_id, mut u_status): (Vec<i64>, Vec<&'static str>) = (Vec::new(), Vec::new());
    for (id, school, key, was, brin) in &cands {
        // A guardian without links keeps its status.
        let Some(statuses) = students_of.get(&(*school, key.as_str())) else {
            continue;
        };
        let target = rules::guardian_status(statuses);
        if target != *was {
            u_id.push(*id);
            u_status.push(target.as_str());
            changed.push((
                target.as_str().to_owned(),
                was.as_str().to_owned(),
                key.clone(),
                brin.clone(),
            ));
        }
    }
    if !u_id.is_empty() {
        sqlx::query(
            "UPDATE profiles g SET status = t.st,
                    deactivated_at = CASE WHEN t.st = 'deactivated' THEN COALESCE(g.deactivated_at, now()) END,
                    deactivation_reason = CASE WHEN t.st = 'deactivated' THEN $3 END,
                    updated_at = now()
             FROM UNNEST($1::int8[], $2::text[]) AS t(id, st)
             WHERE g.id = t.id",
        )
        .bind(&u_id)
        .bind(&u_status)
        .bind(rules::ALL_STUDENTS_REMOVED)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::raw_sql(PLANNER_DEFAULTS).execute(&mut **tx).await?;
    for (st, was, key, brin) in changed {
        use las_contracts::SyncEventType as E;
        let label = match st.as_str() {
            "active" => "activated",
            "held" => "held",
            _ => "deactivated",
        };
        *effects.profiles.entry(("guardian", label)).or_default() += 1;
        let event = match (was.as_str(), st.as_str()) {
            ("held", "active") => Some((E::ProfileCreated, None)),
            ("deactivated", "active") => Some((E::ProfileReactivated, None)),
            ("active", "deactivated") => Some((
                E::ProfileDeactivated,
                Some(rules::ALL_STUDENTS_REMOVED.to_owned()),
            )),
            _ => None,
        };
        if let Some((ty, reason)) = event {
            effects.events.push(
                ty,
                &brin,
                None,
                Some("guardian"),
                Some(&key),
                vec![],
                reason,
            );
        }
    }
    Ok(())
}

/// Groups (R7): the newest version per group wins; the rules decide the
/// shape (year group, composite, alias of a year group, skipped). A removed
/// group is detached and emptied, never deleted. A subclass's students are its
/// members (source `group`).
async fn apply_groups(
    tx: &mut Transaction<'_, Postgres>,
    msgs: &[(usize, &LasChangeV1, i64)],
    schools: &HashMap<i64, &SchoolRow>,
    outcomes: &mut [Option<MessageOutcome>],
    journal: &mut Journal,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    // Newest per (school, key) in this batch; older ones in the batch are stale.
    let mut newest: HashMap<(i64, String), (usize, &LasChangeV1)> = HashMap::new();
    for (i, c, s) in msgs {
        let Some(key) = c.change.las_key() else {
            continue;
        };
        let k = (*s, key.trim().to_owned());
        match newest.get(&k) {
            Some((_, prev)) if prev.version >= c.version => {
                outcomes[*i] = Some(MessageOutcome::Stale);
            }
            Some((j, _)) => {
                outcomes[*j] = Some(MessageOutcome::Stale);
                newest.insert(k, (*i, c));
            }
            None => {
                newest.insert(k, (*i, c));
            }
        }
    }
    type Newest<'a> = ((i64, String), (usize, &'a LasChangeV1));
    let mut rows: Vec<Newest> = newest.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut school = Vec::new();
    let mut key = Vec::new();
    let mut name: Vec<Option<String>> = Vec::new();
    let mut las_kind: Vec<Option<&'static str>> = Vec::new();
    let mut group_type: Vec<Option<&'static str>> = Vec::new();
    let mut maps_to: Vec<Option<String>> = Vec::new();
    let mut status = Vec::new();
    let mut years: Vec<String> = Vec::new();
    let mut students: Vec<String> = Vec::new();
    let mut version = Vec::new();
    let mut message = Vec::new();
    let mut decisions_of: HashMap<(i64, String), Decision> = HashMap::new();
    for ((s, k), (_, c)) in &rows {
        school.push(*s);
        key.push(k.clone());
        version.push(c.version as i64);
        message.push(c.message_id);
        match (&c.change, schools.get(s)) {
            (Change::GroupUpserted(g), Some(sch)) => {
                let (shape, decision) = match rules::plan_group(g, &sch.settings) {
                    Ok(p) => p,
                    // Checked before the message was accepted; kept total here.
                    Err(_) => (
                        rules::GroupShape::Skipped,
                        Decision {
                            rule: rules::Rule::R7,
                            action: rules::Action::CompositeSkipped,
                            field: None,
                        },
                    ),
                };
                decisions_of.insert((*s, k.clone()), decision);
                name.push(rules::normalize(&g.name));
                las_kind.push(Some(g.kind.as_str()));
                group_type.push(Some(shape.group_type()));
                maps_to.push(match &shape {
                    rules::GroupShape::Alias(y) => Some(y.clone()),
                    _ => None,
                });
                status.push(if shape == rules::GroupShape::Skipped {
                    "skipped"
                } else {
                    "active"
                });
                years.push(join_keys(&g.year_group_keys));
                students.push(if g.kind == las_contracts::GroupKind::Subclass {
                    join_keys(&g.student_keys)
                } else {
                    String::new()
                });
            }
            _ => {
                decisions_of.insert(
                    (*s, k.clone()),
                    Decision {
                        rule: rules::Rule::R7,
                        action: rules::Action::Detached,
                        field: None,
                    },
                );
                name.push(None);
                las_kind.push(None);
                group_type.push(None);
                maps_to.push(None);
                status.push("detached");
                years.push(String::new());
                students.push(String::new());
            }
        }
    }
    let applied: Vec<(i64, String, String, bool)> = sqlx::query_as(
        "INSERT INTO portal_groups (school_id, las_key, name, las_kind, group_type, maps_to_key, status, year_group_keys, student_keys, version, last_message_id)
         SELECT s, k, n, lk, COALESCE(gt, 'year'), mt, st,
                CASE WHEN y = '' THEN '{}'::text[] ELSE string_to_array(y, chr(31)) END,
                CASE WHEN sk = '' THEN '{}'::text[] ELSE string_to_array(sk, chr(31)) END, v, m
         FROM UNNEST($1::int8[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::int8[], $11::uuid[])
              AS t(s, k, n, lk, gt, mt, st, y, sk, v, m)
         ORDER BY s, k
         ON CONFLICT (school_id, las_key) DO UPDATE SET
             name = CASE WHEN EXCLUDED.status = 'detached' THEN portal_groups.name ELSE EXCLUDED.name END,
             las_kind = COALESCE(EXCLUDED.las_kind, portal_groups.las_kind),
             group_type = CASE WHEN EXCLUDED.las_kind IS NULL THEN portal_groups.group_type ELSE EXCLUDED.group_type END,
             maps_to_key = CASE WHEN EXCLUDED.las_kind IS NULL THEN portal_groups.maps_to_key ELSE EXCLUDED.maps_to_key END,
             status = EXCLUDED.status,
             year_group_keys = EXCLUDED.year_group_keys,
             student_keys = EXCLUDED.student_keys,
             version = EXCLUDED.version,
             last_message_id = EXCLUDED.last_message_id,
             updated_at = now()
         WHERE portal_groups.version < EXCLUDED.version
         RETURNING school_id, las_key, status, (xmax = 0) AS inserted",
    )
    .bind(&school)
    .bind(&key)
    .bind(&name)
    .bind(&las_kind)
    .bind(&group_type)
    .bind(&maps_to)
    .bind(&status)
    .bind(&years)
    .bind(&students)
    .bind(&version)
    .bind(&message)
    .fetch_all(&mut **tx)
    .await?;
    for (s, k, st, inserted) in &applied {
        if *inserted
            && st == "active"
            && let Some(school) = schools.get(s)
        {
            effects.events.push(
                las_contracts::SyncEventType::GroupCreated,
                &school.brin,
                None,
                Some("group"),
                Some(k),
                vec![],
                None,
            );
        }
    }
    let applied_keys: HashMap<(i64, String), String> = applied
        .into_iter()
        .map(|(s, k, st, _)| ((s, k), st))
        .collect();
    let mut replace_school = Vec::new();
    let mut replace_key = Vec::new();
    let mut ins_school = Vec::new();
    let mut ins_key = Vec::new();
    let mut ins_student = Vec::new();
    for (idx, (k, (i, c))) in rows.iter().enumerate() {
        if !applied_keys.contains_key(k) {
            outcomes[*i] = Some(MessageOutcome::Stale);
            continue;
        }
        let decisions: Vec<Decision> = decisions_of.get(k).copied().into_iter().collect();
        journal.push(
            k.0,
            c.message_id,
            "group",
            &k.1,
            c.version as i64,
            &decisions,
        );
        outcomes[*i] = Some(MessageOutcome::Applied { decisions });
        // Members that come from the group itself: emptied on removal,
        // replaced by a subclass's student list.
        replace_school.push(k.0);
        replace_key.push(k.1.clone());
        if status[idx] == "detached" {
            // R7: a removed group is emptied of every member, whatever the source.
            continue;
        }
        for st in students[idx].split(KEY_SEP).filter(|s| !s.is_empty()) {
            ins_school.push(k.0);
            ins_key.push(k.1.clone());
            ins_student.push(st.to_owned());
        }
    }
    if !replace_school.is_empty() {
        sqlx::query(
            "DELETE FROM memberships m USING UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, st)
             WHERE m.school_id = t.s AND m.group_key = t.k AND (m.source = 'group' OR t.st = 'detached')",
        )
        .bind(&replace_school)
        .bind(&replace_key)
        .bind(
            rows.iter()
                .enumerate()
                .filter(|(_, (k, _))| applied_keys.contains_key(k))
                .map(|(idx, _)| status[idx])
                .collect::<Vec<_>>(),
        )
        .execute(&mut **tx)
        .await?;
    }
    if !ins_school.is_empty() {
        sqlx::query(
            "INSERT INTO memberships (school_id, group_key, member_kind, member_key, source)
             SELECT s, k, 'student', st, 'group' FROM UNNEST($1::int8[], $2::text[], $3::text[]) AS t(s, k, st)
             ON CONFLICT DO NOTHING",
        )
        .bind(&ins_school)
        .bind(&ins_key)
        .bind(&ins_student)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Separator for key lists passed as one text per row (`chr(31)` in SQL): the
/// ASCII unit separator, which no LAS key contains.
const KEY_SEP: &str = "\u{1f}";

fn join_keys(keys: &Option<Vec<String>>) -> String {
    let mut v: Vec<String> = keys
        .iter()
        .flatten()
        .filter_map(|k| rules::normalize(&Some(k.clone())))
        .collect();
    v.sort();
    v.dedup();
    v.join(KEY_SEP)
}

/// A portal profile as support staff see it with `las-worker show`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProfileView {
    pub brin: String,
    pub kind: String,
    pub las_key: String,
    pub status: String,
    pub version: i64,
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
    pub role: Option<String>,
    pub deactivation_reason: Option<String>,
    pub groups: Vec<GroupRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guardians: Option<Vec<LinkRef>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub students: Option<Vec<LinkRef>>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct GroupRef {
    pub las_key: String,
    pub name: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct LinkRef {
    pub las_key: String,
    /// active, deactivated, or `unknown` when the LAS has not sent it yet.
    pub status: String,
}

impl Store {
    /// The portal's profile for support staff, or `None`.
    pub async fn show_profile(
        &self,
        brin: &str,
        kind: ProfileKind,
        las_key: &str,
    ) -> Result<Option<ProfileView>, StoreError> {
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT p.school_id, p.status, p.version, p.role, p.deactivation_reason, p.updated_at, {CONTACT_COLUMNS}
             FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE s.brin = $1 AND p.kind = $2 AND p.las_key = $3 AND p.status <> 'pending'"
        )))
        .bind(brin)
        .bind(kind.as_str())
        .bind(las_key)
        .fetch_optional(&self.pool)
        .await?
        else {
            return Ok(None);
        };
        let school_id: i64 = row.try_get("school_id")?;
        let contact = contact_from_row(&row)?;
        let groups: Vec<GroupRef> = sqlx::query_as(
            "SELECT DISTINCT group_key AS las_key, group_name AS name FROM portal_group_members
             WHERE school_id = $1 AND member_kind = $2 AND member_key = $3
             ORDER BY 1",
        )
        .bind(school_id)
        .bind(kind.as_str())
        .bind(las_key)
        .fetch_all(&self.pool)
        .await?;
        let (guardians, students) = match kind {
            ProfileKind::Student => (
                Some(
                    sqlx::query_as(
                        "SELECT gs.guardian_key AS las_key, COALESCE(p.status, 'unknown') AS status
                         FROM guardian_students gs
                         LEFT JOIN profiles p ON p.school_id = gs.school_id AND p.kind = 'guardian' AND p.las_key = gs.guardian_key
                         WHERE gs.school_id = $1 AND gs.student_key = $2 ORDER BY gs.guardian_key",
                    )
                    .bind(school_id)
                    .bind(las_key)
                    .fetch_all(&self.pool)
                    .await?,
                ),
                None,
            ),
            ProfileKind::Guardian => (
                None,
                Some(
                    sqlx::query_as(
                        "SELECT gs.student_key AS las_key, COALESCE(p.status, 'unknown') AS status
                         FROM guardian_students gs
                         LEFT JOIN profiles p ON p.school_id = gs.school_id AND p.kind = 'student' AND p.las_key = gs.student_key
                         WHERE gs.school_id = $1 AND gs.guardian_key = $2 ORDER BY gs.student_key",
                    )
                    .bind(school_id)
                    .bind(las_key)
                    .fetch_all(&self.pool)
                    .await?,
                ),
            ),
            ProfileKind::Staff => (None, None),
        };
        Ok(Some(ProfileView {
            brin: brin.to_owned(),
            kind: kind.as_str().to_owned(),
            las_key: las_key.to_owned(),
            status: row.try_get("status")?,
            version: row.try_get("version")?,
            first_name: contact.first_name,
            name_prefix: contact.name_prefix,
            last_name: contact.last_name,
            birth_date: contact.birth_date,
            street: contact.street,
            postcode: contact.postcode,
            city: contact.city,
            phone: contact.phone,
            mobile: contact.mobile,
            emergency_phone: contact.emergency_phone,
            email: contact.email,
            role: row.try_get("role")?,
            deactivation_reason: row.try_get("deactivation_reason")?,
            groups,
            guardians,
            students,
            updated_at: row.try_get("updated_at")?,
        }))
    }

    /// Counts per school for the demo and support: (brin, kind, status, count).
    pub async fn summary(&self) -> Result<Vec<(String, String, String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.brin, p.kind, p.status, count(*) FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE p.status <> 'pending' GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}

/// What the daily job did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct DailyReport {
    /// False when another replica holds the job or it already ran today.
    pub ran: bool,
    pub date: Option<NaiveDate>,
    pub placed_in_intake: u64,
    pub promoted: u64,
    pub stays_in_intake: u64,
    pub still_held: u64,
    /// R12: profiles whose personal data was purged after the retention period.
    pub purged: u64,
}

/// Advisory lock key of the daily job ("lasdaily").
const DAILY_LOCK: i64 = 0x6c61_7364_6169_6c79;

/// A portal group that no LAS group feeds any more (R7).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Leftover {
    pub portal_group_id: i64,
    pub name: Option<String>,
    pub las_key: Option<String>,
    /// `removed_in_las` or `unmapped_at_first_run`.
    pub reason: String,
    pub group_items: i64,
}

impl Store {
    /// R9 daily job: imports held children whose intake window opened and
    /// moves 4-year-olds from intake to their LAS groups, without any new
    /// message. Exactly once per day across replicas (advisory lock plus the
    /// date of the last run); `force` (the `tick` command) runs it anyway.
    pub async fn run_daily(
        &self,
        today: NaiveDate,
        force: bool,
    ) -> Result<DailyReport, StoreError> {
        let mut tx = self.pool.begin().await?;
        if force {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(DAILY_LOCK)
                .execute(&mut *tx)
                .await?;
        } else {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
                .bind(DAILY_LOCK)
                .fetch_one(&mut *tx)
                .await?;
            let last: Option<NaiveDate> =
                sqlx::query_scalar("SELECT last_run_date FROM daily_jobs WHERE job = 'intake'")
                    .fetch_optional(&mut *tx)
                    .await?;
            if !got || last.is_some_and(|d| d >= today) {
                return Ok(DailyReport::default());
            }
        }
        let rows = sqlx::query(
            "SELECT p.id, p.school_id, p.kind, p.las_key, p.status, p.birth_date, p.las_group_keys, p.in_intake,
                    s.brin, s.las_system, s.environment_id, s.environment_label, s.intake_weeks_ahead, s.default_staff_role,
                    s.link_staff_to_groups, s.esis_composite_groups, s.retention_days, s.snapshot_guard_percent
             FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE p.kind = 'student' AND (p.status = 'held' OR (p.status = 'active' AND p.in_intake))
             ORDER BY p.id
             FOR UPDATE OF p",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut report = DailyReport {
            ran: true,
            date: Some(today),
            ..DailyReport::default()
        };
        let mut members = Members::default();
        let mut effects = BatchEffects::default();
        let mut ids = Vec::new();
        let mut statuses = Vec::new();
        let mut intakes = Vec::new();
        let mut intake_schools = HashSet::new();
        for row in rows {
            let settings = settings_from_row(&row)?;
            let status =
                Status::parse(&row.try_get::<String, _>("status")?).unwrap_or(Status::Held);
            let in_intake: bool = row.try_get("in_intake")?;
            let las_groups: Vec<String> = row.try_get("las_group_keys")?;
            let (placement, decision) = rules::place_student(
                row.try_get("birth_date")?,
                &las_groups,
                in_intake,
                &settings,
                today,
            );
            match decision.map(|d| d.action) {
                Some(rules::Action::PlacedInIntake) => report.placed_in_intake += 1,
                Some(rules::Action::Promoted) => report.promoted += 1,
                Some(rules::Action::StaysInIntake) => report.stays_in_intake += 1,
                Some(rules::Action::HeldBack) => report.still_held += 1,
                _ => {}
            }
            if placement.status == status && placement.in_intake == in_intake {
                continue;
            }
            let school_id: i64 = row.try_get("school_id")?;
            let key: String = row.try_get("las_key")?;
            let brin: String = row.try_get("brin")?;
            let event = match (status, placement.status, in_intake, placement.in_intake) {
                (Status::Held, Status::Active, _, _) => {
                    Some(las_contracts::SyncEventType::ProfileCreated)
                }
                (Status::Active, Status::Active, true, false) => {
                    Some(las_contracts::SyncEventType::ProfileMovedFromIntake)
                }
                _ => None,
            };
            if let Some(ty) = event {
                effects
                    .events
                    .push(ty, &brin, None, Some("student"), Some(&key), vec![], None);
            }
            if placement.in_intake {
                intake_schools.insert(school_id);
            }
            members.replace(
                school_id,
                ProfileKind::Student,
                &key,
                &placement.groups,
                false,
            );
            ids.push(row.try_get::<i64, _>("id")?);
            statuses.push(placement.status.as_str());
            intakes.push(placement.in_intake);
        }
        sqlx::query(
            "UPDATE profiles p SET status = t.st, in_intake = t.i, updated_at = now()
             FROM UNNEST($1::int8[], $2::text[], $3::bool[]) AS t(id, st, i) WHERE p.id = t.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&intakes)
        .execute(&mut *tx)
        .await?;
        ensure_intake_groups(&mut tx, &intake_schools.into_iter().collect::<Vec<_>>()).await?;
        members.write(&mut tx).await?;
        reconcile_guardians(&mut tx, &ids, &[], &mut effects).await?;
        report.purged = self.purge_expired(&mut tx, today).await?;
        // Bookkeeping that must not grow for ever: message ids older than 30 days
        // (a redelivery that late is still caught by the entity versions) and
        // sync events published more than 7 days ago.
        sqlx::query(
            "DELETE FROM processed_messages WHERE processed_at < now() - interval '30 days'",
        )
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM event_outbox WHERE published_at < now() - interval '7 days'")
            .execute(&mut *tx)
            .await?;
        effects.events.write(&mut tx).await?;
        sqlx::query(
            "INSERT INTO daily_jobs (job, last_run_date) VALUES ('intake', $1)
             ON CONFLICT (job) DO UPDATE SET last_run_date = GREATEST(daily_jobs.last_run_date, EXCLUDED.last_run_date), last_run_at = now()",
        )
        .bind(today)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(report)
    }

    /// R7: portal groups no LAS group feeds: removed in the LAS, or not mapped
    /// at the first run. They are never deleted; the school decides.
    pub async fn leftovers(&self, brin: &str) -> Result<Vec<Leftover>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT g.id AS portal_group_id, g.name, g.las_key,
                    CASE WHEN g.las_key IS NULL THEN 'unmapped_at_first_run' ELSE 'removed_in_las' END AS reason,
                    (SELECT count(*) FROM group_items i WHERE i.group_id = g.id) AS group_items
             FROM portal_groups g JOIN schools s ON s.id = g.school_id
             WHERE s.brin = $1 AND g.status = 'detached'
             ORDER BY g.name, g.id",
        )
        .bind(brin)
        .fetch_all(&self.pool)
        .await?)
    }
}

/// R10: a parent's edit becomes a suggestion, with one outbox e-mail per
/// recipient, in the transaction that consumes the message.
async fn apply_parent_edit(
    tx: &mut Transaction<'_, Postgres>,
    edit: &las_contracts::ParentEditV1,
    effects: &mut BatchEffects,
) -> Result<MessageOutcome, StoreError> {
    let reject = |reason: RejectReason, text: String| {
        Ok(MessageOutcome::Rejected(
            Rejection::new(reason, text).with_message_id(edit.message_id),
        ))
    };
    let Some(school) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {SCHOOL_COLUMNS} FROM schools WHERE brin = $1"
    )))
    .bind(&edit.brin)
    .fetch_optional(&mut **tx)
    .await?
    else {
        return reject(
            RejectReason::UnknownBrin,
            format!("no portal is linked to BRIN {} (R6)", edit.brin),
        );
    };
    let school_id: i64 = school.try_get("id")?;
    let settings = settings_from_row(&school)?;
    let key = edit
        .guardian_las_key
        .as_deref()
        .map(str::trim)
        .unwrap_or("");
    let Some(g) = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, las_key, status, {CONTACT_COLUMNS} FROM profiles
         WHERE school_id = $1 AND kind = 'guardian' AND status <> 'pending'
           AND (las_key = $2 OR id = $3)
         ORDER BY (las_key = $2) DESC LIMIT 1"
    )))
    .bind(school_id)
    .bind(key)
    .bind(edit.guardian_profile_id.unwrap_or(-1))
    .fetch_optional(&mut **tx)
    .await?
    else {
        return reject(
            RejectReason::ValidationFailed,
            format!(
                "no guardian {} in the portal of BRIN {}; the edit cannot be matched to a profile",
                if key.is_empty() {
                    format!(
                        "with profile id {}",
                        edit.guardian_profile_id.unwrap_or_default()
                    )
                } else {
                    format!("with LAS key {key}")
                },
                edit.brin
            ),
        );
    };
    let fresh = sqlx::query(
        "INSERT INTO processed_messages (message_id, school_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
    )
    .bind(edit.message_id)
    .bind(school_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if fresh == 0 {
        return Ok(MessageOutcome::Duplicate);
    }
    let guardian_id: i64 = g.try_get("id")?;
    let guardian_key: String = g.try_get("las_key")?;
    let contact = contact_from_row(&g)?;
    let plan = crate::suggestions::plan(settings.system, &contact, &edit.changes);
    if plan.changes.is_empty() {
        return Ok(MessageOutcome::Applied {
            decisions: vec![Decision {
                rule: rules::Rule::R10,
                action: rules::Action::NotASuggestion,
                field: None,
            }],
        });
    }
    let students: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT s.first_name, s.name_prefix, s.last_name FROM guardian_students gs
         JOIN profiles s ON s.school_id = gs.school_id AND s.kind = 'student' AND s.las_key = gs.student_key
         WHERE gs.school_id = $1 AND gs.guardian_key = $2 AND s.status = 'active'
         ORDER BY s.las_key",
    )
    .bind(school_id)
    .bind(&guardian_key)
    .fetch_all(&mut **tx)
    .await?;
    let users = school_users(&mut **tx, school_id).await?;
    let recipients = crate::suggestions::recipients(&users);
    let suggestion_id: i64 = sqlx::query_scalar(
        "INSERT INTO suggestions (school_id, message_id, guardian_profile_id, edited_at, recipients)
         VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(school_id)
    .bind(edit.message_id)
    .bind(guardian_id)
    .bind(edit.edited_at)
    .bind(recipients.len() as i32)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query(
        "INSERT INTO suggestion_fields (suggestion_id, field, current_value, proposed_value)
         SELECT $1, f, c, p FROM UNNEST($2::text[], $3::text[], $4::text[]) AS t(f, c, p)",
    )
    .bind(suggestion_id)
    .bind(
        plan.changes
            .iter()
            .map(|c| c.field.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(
        plan.changes
            .iter()
            .map(|c| c.current.clone())
            .collect::<Vec<_>>(),
    )
    .bind(
        plan.changes
            .iter()
            .map(|c| c.proposed.clone())
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    let ctx = crate::suggestions::EmailContext {
        brin: edit.brin.clone(),
        system: settings.system,
        guardian_name: crate::suggestions::full_name(&contact),
        guardian_las_key: guardian_key.clone(),
        student_names: students
            .into_iter()
            .map(|(f, p, l)| {
                crate::suggestions::full_name(&Contact {
                    first_name: f,
                    name_prefix: p,
                    last_name: l,
                    ..Contact::default()
                })
            })
            .filter(|n| !n.is_empty())
            .collect(),
        changes: plan.changes.clone(),
    };
    for r in &recipients {
        let mail = crate::suggestions::render(&ctx, &r.display_name);
        // Deterministic: the same suggestion and recipient always give the same key.
        let key = Uuid::new_v5(&edit.message_id, &r.id.to_be_bytes());
        sqlx::query(
            "INSERT INTO email_outbox (school_id, suggestion_id, recipient_user_id, to_address, subject, body_text, body_html, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (idempotency_key) DO NOTHING",
        )
        .bind(school_id)
        .bind(suggestion_id)
        .bind(r.id)
        .bind(r.email.trim())
        .bind(&mail.subject)
        .bind(&mail.text)
        .bind(&mail.html)
        .bind(key)
        .execute(&mut **tx)
        .await?;
    }
    effects.suggestions_opened += 1;
    effects.emails_queued += recipients.len() as u64;
    if recipients.is_empty() {
        effects.suggestions_without_recipients += 1;
        tracing::warn!(brin = %edit.brin, suggestion_id, "school has no recipients for suggestions (no link administrator, nobody with the notify-contact-changes right); the suggestion is kept");
    }
    let mut decisions: Vec<Decision> = plan
        .changes
        .iter()
        .map(|c| Decision {
            rule: rules::Rule::R10,
            action: rules::Action::SuggestionOpened,
            field: Some(c.field),
        })
        .collect();
    if !plan.ignored.is_empty() {
        decisions.push(Decision {
            rule: rules::Rule::R10,
            action: rules::Action::NotASuggestion,
            field: None,
        });
    }
    Ok(MessageOutcome::Applied { decisions })
}

async fn school_users<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    school_id: i64,
) -> Result<Vec<crate::suggestions::PortalUser>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT u.id, u.display_name, u.email, u.role, u.active,
                EXISTS (SELECT 1 FROM portal_user_rights r WHERE r.user_id = u.id AND r.\"right\" = 'notify_contact_changes') AS notify_contact_changes
         FROM portal_users u WHERE u.school_id = $1 ORDER BY u.id",
    )
    .bind(school_id)
    .fetch_all(exec)
    .await?)
}

/// R10: an open suggestion is resolved when the LAS brings every proposed value.
async fn resolve_suggestions(
    tx: &mut Transaction<'_, Postgres>,
    guardians: &[i64],
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    if guardians.is_empty() {
        return Ok(());
    }
    let took: Vec<f64> = sqlx::query_scalar(
        "UPDATE suggestions s SET status = 'resolved', closed_at = now(), closed_reason = 'las_import'
         FROM profiles p
         WHERE s.status = 'open' AND p.id = s.guardian_profile_id AND p.id = ANY($1)
           AND NOT EXISTS (
               SELECT 1 FROM suggestion_fields f WHERE f.suggestion_id = s.id
                 AND f.proposed_value IS DISTINCT FROM (CASE f.field
                     WHEN 'first_name' THEN p.first_name WHEN 'name_prefix' THEN p.name_prefix
                     WHEN 'last_name' THEN p.last_name WHEN 'street' THEN p.street
                     WHEN 'postcode' THEN p.postcode WHEN 'city' THEN p.city
                     WHEN 'phone' THEN p.phone WHEN 'mobile' THEN p.mobile
                     WHEN 'emergency_phone' THEN p.emergency_phone WHEN 'email' THEN p.email END))
         RETURNING EXTRACT(EPOCH FROM (now() - s.edited_at))::float8",
    )
    .bind(guardians)
    .fetch_all(&mut **tx)
    .await?;
    effects.suggestions_resolved.extend(took);
    Ok(())
}

/// An e-mail claimed from the outbox for sending.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxEmail {
    pub id: i64,
    pub to_address: String,
    pub subject: String,
    pub body_text: String,
    pub body_html: String,
    pub idempotency_key: Uuid,
    pub attempts: i32,
}

/// A suggestion as support sees it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SuggestionView {
    pub id: i64,
    pub guardian_las_key: String,
    pub status: String,
    pub fields: Vec<String>,
    pub recipients: i32,
    pub emails_sent: i64,
    pub emails_pending: i64,
    pub emails_failed: i64,
    pub edited_at: chrono::DateTime<chrono::Utc>,
    pub closed_at: Option<chrono::DateTime<chrono::Utc>>,
    pub closed_reason: Option<String>,
}

impl Store {
    /// Claims due e-mails: pending ones whose time has come, and ones another
    /// dispatcher claimed but cannot finish: its database session is gone
    /// (its process died, so it is taken over at once) or, as a fallback, its
    /// lease ran out. `SKIP LOCKED` lets replicas share the outbox.
    ///
    /// The claim runs on `session`, a connection the dispatcher keeps for as
    /// long as it lives: its backend pid marks the claims as alive. It is
    /// taken from the pool when empty and dropped after an error.
    pub async fn claim_emails(
        &self,
        session: &mut Option<sqlx::pool::PoolConnection<Postgres>>,
        limit: i64,
        lease: Duration,
    ) -> Result<Vec<OutboxEmail>, StoreError> {
        let conn = match session {
            Some(conn) => conn,
            None => session.insert(self.pool.acquire().await.map_err(classify)?),
        };
        let claimed = sqlx::query_as(
            "UPDATE email_outbox SET status = 'sending', attempts = attempts + 1,
                    claimed_until = now() + make_interval(secs => $2),
                    claimed_by_pid = pg_backend_pid()
             WHERE id IN (
                 SELECT id FROM email_outbox e
                 WHERE (status = 'pending' AND next_attempt_at <= now())
                    OR (status = 'sending' AND (claimed_until < now()
                        OR (claimed_by_pid IS NOT NULL AND NOT EXISTS
                            (SELECT 1 FROM pg_stat_activity a WHERE a.pid = e.claimed_by_pid))))
                 ORDER BY next_attempt_at, id
                 LIMIT $1
                 FOR UPDATE SKIP LOCKED)
             RETURNING id, to_address, subject, body_text, body_html, idempotency_key, attempts",
        )
        .bind(limit)
        .bind(lease.as_secs_f64())
        .fetch_all(&mut **conn)
        .await;
        if claimed.is_err() {
            *session = None;
        }
        Ok(claimed?)
    }

    pub async fn email_sent(&self, id: i64, provider_id: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE email_outbox SET status = 'sent', sent_at = now(), provider_message_id = $2,
                    claimed_until = NULL, claimed_by_pid = NULL, last_error = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(provider_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn email_retry(
        &self,
        id: i64,
        delay: Duration,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE email_outbox SET status = 'pending', claimed_until = NULL, claimed_by_pid = NULL, last_error = $3,
                    next_attempt_at = now() + make_interval(secs => $2)
             WHERE id = $1 AND status = 'sending'",
        )
        .bind(id)
        .bind(delay.as_secs_f64())
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn email_failed(&self, id: i64, reason: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE email_outbox SET status = 'failed', claimed_until = NULL, claimed_by_pid = NULL, last_error = $2 WHERE id = $1",
        )
        .bind(id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// E-mails waiting to be sent (pending or being sent).
    pub async fn outbox_depth(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM email_outbox WHERE status IN ('pending', 'sending')",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// R10: who receives suggestions for a school.
    pub async fn recipients(
        &self,
        brin: &str,
    ) -> Result<Option<Vec<crate::suggestions::PortalUser>>, StoreError> {
        let Some(id): Option<i64> = sqlx::query_scalar("SELECT id FROM schools WHERE brin = $1")
            .bind(brin)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let users = school_users(&self.pool, id).await?;
        Ok(Some(
            crate::suggestions::recipients(&users)
                .into_iter()
                .cloned()
                .collect(),
        ))
    }

    /// Suggestions of a school, newest first.
    pub async fn suggestions(
        &self,
        brin: &str,
        status: Option<&str>,
    ) -> Result<Vec<SuggestionView>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.id, p.las_key AS guardian_las_key, s.status,
                    ARRAY(SELECT f.field FROM suggestion_fields f WHERE f.suggestion_id = s.id ORDER BY f.field) AS fields,
                    s.recipients,
                    (SELECT count(*) FROM email_outbox e WHERE e.suggestion_id = s.id AND e.status = 'sent') AS emails_sent,
                    (SELECT count(*) FROM email_outbox e WHERE e.suggestion_id = s.id AND e.status IN ('pending', 'sending')) AS emails_pending,
                    (SELECT count(*) FROM email_outbox e WHERE e.suggestion_id = s.id AND e.status = 'failed') AS emails_failed,
                    s.edited_at, s.closed_at, s.closed_reason
             FROM suggestions s JOIN schools sc ON sc.id = s.school_id JOIN profiles p ON p.id = s.guardian_profile_id
             WHERE sc.brin = $1 AND ($2::text IS NULL OR s.status = $2)
             ORDER BY s.id DESC",
        )
        .bind(brin)
        .bind(status)
        .fetch_all(&self.pool)
        .await?)
    }

    /// An operator discards an open suggestion; its unsent e-mails are cancelled.
    /// Returns false when there is no such open suggestion.
    pub async fn discard_suggestion(&self, id: i64, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE suggestions SET status = 'discarded', closed_at = now(), closed_reason = $2
             WHERE id = $1 AND status = 'open'",
        )
        .bind(id)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE email_outbox SET status = 'cancelled' WHERE suggestion_id = $1 AND status = 'pending'")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(n == 1)
    }
}

/// R12: upserts that belong to a full snapshot are remembered as included.
async fn record_snapshot_members(
    tx: &mut Transaction<'_, Postgres>,
    accepted: &[(usize, &LasChangeV1, i64)],
) -> Result<(), StoreError> {
    let mut snap = Vec::new();
    let mut school = Vec::new();
    let mut kind = Vec::new();
    let mut key = Vec::new();
    for (_, c, s) in accepted {
        let (Some(id), Some(k)) = (c.snapshot_id, profile_kind(&c.change)) else {
            continue;
        };
        if matches!(
            c.change,
            Change::StudentRemoved(_) | Change::GuardianRemoved(_) | Change::StaffRemoved(_)
        ) {
            continue;
        }
        let Some(las_key) = c.change.las_key() else {
            continue;
        };
        snap.push(id);
        school.push(*s);
        kind.push(k.as_str());
        key.push(las_key.trim().to_owned());
    }
    if snap.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO snapshots (id, school_id) SELECT DISTINCT i, s FROM UNNEST($1::uuid[], $2::int8[]) AS t(i, s)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&snap)
    .bind(&school)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "WITH m AS (SELECT * FROM UNNEST($1::uuid[], $2::text[], $3::text[]) AS t(i, k, l)),
              ins AS (INSERT INTO snapshot_members (snapshot_id, kind, las_key) SELECT i, k, l FROM m ON CONFLICT DO NOTHING)
         UPDATE snapshots s SET records_arrived = records_arrived + n.c
         FROM (SELECT i, count(*) AS c FROM m GROUP BY i) n WHERE s.id = n.i",
    )
    .bind(&snap)
    .bind(&kind)
    .bind(&key)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// R12: at `snapshot.completed`, every profile of the school the snapshot did
/// not include is deactivated, unless that is more than the deletion guard
/// allows or the count does not match what arrived: then it is held for an
/// operator (`las-worker snapshot release|discard`).
async fn complete_snapshot(
    tx: &mut Transaction<'_, Postgres>,
    school: &SchoolRow,
    sn: &las_contracts::SnapshotCompleted,
    message_id: Uuid,
    effects: &mut BatchEffects,
) -> Result<rules::Action, StoreError> {
    sqlx::query(
        "INSERT INTO snapshots (id, school_id) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
    )
    .bind(sn.snapshot_id)
    .bind(school.id)
    .execute(&mut **tx)
    .await?;
    let (status, arrived): (String, i64) =
        sqlx::query_as("SELECT status, records_arrived FROM snapshots WHERE id = $1 FOR UPDATE")
            .bind(sn.snapshot_id)
            .fetch_one(&mut **tx)
            .await?;
    if status != "open" {
        return Ok(if status == "held" {
            rules::Action::SnapshotHeld
        } else {
            rules::Action::SnapshotApplied
        });
    }
    let (active, missing) = snapshot_counts(tx, school.id, sn.snapshot_id).await?;
    let held = if arrived as u64 != sn.records_sent {
        Some(format!(
            "count mismatch: the connector sent {} records, {} arrived",
            sn.records_sent, arrived
        ))
    } else {
        rules::snapshot_guard(active as u64, missing as u64, school.settings.snapshot_guard_percent)
            .err()
            .map(|limit| format!("deletion guard: the snapshot would deactivate {missing} of {active} active profiles; at most {limit} may go ({}%, at least {})", school.settings.snapshot_guard_percent, rules::SNAPSHOT_GUARD_MINIMUM))
    };
    sqlx::query("UPDATE snapshots SET records_sent = $2, would_deactivate = $3, completed_at = now() WHERE id = $1")
        .bind(sn.snapshot_id)
        .bind(sn.records_sent as i64)
        .bind(missing)
        .execute(&mut **tx)
        .await?;
    if let Some(reason) = held {
        sqlx::query("UPDATE snapshots SET status = 'held', held_reason = $2 WHERE id = $1")
            .bind(sn.snapshot_id)
            .bind(&reason)
            .execute(&mut **tx)
            .await?;
        tracing::error!(brin = %school.brin, snapshot_id = %sn.snapshot_id, reason = %reason, "full snapshot held: nothing deactivated; an operator must release or discard it (las-worker snapshot release|discard)");
        effects.snapshots_held += 1;
        return Ok(rules::Action::SnapshotHeld);
    }
    deactivate_missing(tx, school, sn.snapshot_id, Some(message_id), effects).await?;
    effects.snapshots_applied += 1;
    Ok(rules::Action::SnapshotApplied)
}

/// (active profiles of the school, of which not in the snapshot).
async fn snapshot_counts(
    tx: &mut Transaction<'_, Postgres>,
    school_id: i64,
    snapshot: Uuid,
) -> Result<(i64, i64), StoreError> {
    Ok(sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE NOT EXISTS (
                    SELECT 1 FROM snapshot_members m WHERE m.snapshot_id = $2 AND m.kind = p.kind AND m.las_key = p.las_key))
         FROM profiles p WHERE p.school_id = $1 AND p.status IN ('active', 'held')",
    )
    .bind(school_id)
    .bind(snapshot)
    .fetch_one(&mut **tx)
    .await?)
}

async fn deactivate_missing(
    tx: &mut Transaction<'_, Postgres>,
    school: &SchoolRow,
    snapshot: Uuid,
    message_id: Option<Uuid>,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    let gone: Vec<(i64, String, String)> = sqlx::query_as(
        "UPDATE profiles p SET status = 'deactivated', deactivated_at = now(), deactivation_reason = 'missing_from_snapshot',
                in_intake = false, updated_at = now()
         WHERE p.school_id = $1 AND p.status IN ('active', 'held')
           AND NOT EXISTS (SELECT 1 FROM snapshot_members m WHERE m.snapshot_id = $2 AND m.kind = p.kind AND m.las_key = p.las_key)
         RETURNING p.id, p.kind, p.las_key",
    )
    .bind(school.id)
    .bind(snapshot)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM memberships m USING profiles p
         WHERE p.id = ANY($1) AND m.school_id = p.school_id AND m.member_kind = p.kind AND m.member_key = p.las_key",
    )
    .bind(gone.iter().map(|g| g.0).collect::<Vec<_>>())
    .execute(&mut **tx)
    .await?;
    sqlx::query("UPDATE snapshots SET status = 'applied', closed_at = now() WHERE id = $1")
        .bind(snapshot)
        .execute(&mut **tx)
        .await?;
    for (_, kind, key) in &gone {
        *effects
            .profiles
            .entry((static_kind(kind), "deactivated"))
            .or_default() += 1;
        effects.events.push(
            las_contracts::SyncEventType::ProfileDeactivated,
            &school.brin,
            message_id,
            Some(kind),
            Some(key),
            vec![],
            Some("missing_from_snapshot".to_owned()),
        );
    }
    let students: Vec<i64> = gone
        .iter()
        .filter(|g| g.1 == "student")
        .map(|g| g.0)
        .collect();
    reconcile_guardians(tx, &students, &[], effects).await?;
    Ok(())
}

fn static_kind(kind: &str) -> &'static str {
    ProfileKind::parse(kind)
        .map(ProfileKind::as_str)
        .unwrap_or("unknown")
}

/// R11: the school year rolled over to `school_year` (e.g. `2026-2027`): every
/// group-bound item is unlinked from its year or composite group (kept,
/// unpublished), and the absence reports, leave requests and after-school-care
/// registrations of earlier years are deleted. Once per school and year.
async fn rollover(
    tx: &mut Transaction<'_, Postgres>,
    school: &SchoolRow,
    school_year: &str,
    message_id: Uuid,
    effects: &mut BatchEffects,
) -> Result<rules::Action, StoreError> {
    let year = school_year.trim();
    let first = sqlx::query(
        "INSERT INTO school_year_rollovers (school_id, school_year, message_id, items_unlinked, records_deleted)
         VALUES ($1, $2, $3, 0, 0) ON CONFLICT DO NOTHING",
    )
    .bind(school.id)
    .bind(year)
    .bind(message_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if first == 0 {
        return Ok(rules::Action::AlreadyRolledOver);
    }
    let unlinked = sqlx::query(
        "UPDATE group_items i SET unlinked_from_group_id = i.group_id, unlinked_at = now(), group_id = NULL
         FROM portal_groups g
         WHERE i.group_id = g.id AND g.school_id = $1 AND g.group_type IN ('year', 'composite', 'alias')",
    )
    .bind(school.id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let mut deleted = 0;
    for table in [
        "absence_reports",
        "leave_requests",
        "after_school_care_registrations",
    ] {
        deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE school_id = $1 AND school_year < $2"
        )))
        .bind(school.id)
        .bind(year)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    }
    sqlx::query("UPDATE school_year_rollovers SET items_unlinked = $3, records_deleted = $4 WHERE school_id = $1 AND school_year = $2")
        .bind(school.id)
        .bind(year)
        .bind(unlinked as i32)
        .bind(deleted as i32)
        .execute(&mut **tx)
        .await?;
    tracing::info!(brin = %school.brin, school_year = year, items_unlinked = unlinked, records_deleted = deleted, "school year rolled over (R11)");
    effects.rollovers.push((year.to_owned(), unlinked, deleted));
    Ok(rules::Action::RolledOver)
}

/// A held full snapshot, for operators.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SnapshotView {
    pub snapshot_id: Uuid,
    pub status: String,
    pub records_sent: Option<i64>,
    pub records_arrived: i64,
    pub would_deactivate: Option<i64>,
    pub held_reason: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub completed_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl Store {
    /// Snapshots of a school, newest first.
    pub async fn snapshots(&self, brin: &str) -> Result<Vec<SnapshotView>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.id AS snapshot_id, s.status, s.records_sent, s.records_arrived, s.would_deactivate, s.held_reason, s.started_at, s.completed_at
             FROM snapshots s JOIN schools sc ON sc.id = s.school_id WHERE sc.brin = $1 ORDER BY s.started_at DESC",
        )
        .bind(brin)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Last sync per school as unix seconds (the staleness gauge after a restart).
    pub async fn last_syncs(&self) -> Result<Vec<(String, i64)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT brin, extract(epoch FROM last_sync_at)::int8 FROM schools WHERE last_sync_at IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Held snapshots over all schools (the `las_snapshots_held` gauge).
    pub async fn held_snapshots(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM snapshots WHERE status = 'held'")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// An operator releases the school's held snapshot (its deactivations are
    /// applied as they stand now) or discards it. Returns the number of
    /// profiles deactivated, or `None` when the school has no held snapshot.
    pub async fn resolve_held_snapshot(
        &self,
        brin: &str,
        release: bool,
    ) -> Result<Option<(Uuid, u64, BatchEffects)>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let schools = load_schools(&mut tx, &[brin.to_owned()]).await?;
        let Some(school) = schools.get(brin) else {
            return Ok(None);
        };
        let Some(id): Option<Uuid> = sqlx::query_scalar(
            "SELECT id FROM snapshots WHERE school_id = $1 AND status = 'held' ORDER BY completed_at DESC NULLS LAST LIMIT 1 FOR UPDATE",
        )
        .bind(school.id)
        .fetch_optional(&mut *tx)
        .await?
        else {
            return Ok(None);
        };
        let mut effects = BatchEffects::default();
        if release {
            deactivate_missing(&mut tx, school, id, None, &mut effects).await?;
        } else {
            sqlx::query(
                "UPDATE snapshots SET status = 'discarded', closed_at = now() WHERE id = $1",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        let n = effects.profiles.values().sum();
        effects.events.write(&mut tx).await?;
        tx.commit().await?;
        Ok(Some((id, n, effects)))
    }

    /// Refreshes the planner statistics of the worker's tables that changed
    /// by more than autovacuum's analyze threshold (50 rows + 10%) since the
    /// keeper last analyzed them, and returns their names. Cached generic
    /// plans are re-planned from the new statistics. Where autovacuum runs, it
    /// usually got there first and this finds nothing; where it is off or
    /// slower than a first run of a school board, this keeps the plans right.
    ///
    /// Only the columns plans depend on are analyzed: those of the table's
    /// indexes (keys, expressions, partial-index predicates) and `status`.
    /// That gives the planner the table's size and the distributions it
    /// filters and joins on at about a sixth of the cost of a full `ANALYZE`
    /// of `profiles` (names, addresses and e-mails are many distinct strings
    /// to sort): 0.1 s against 0.7 s at 30,000 profiles, CPU taken from the
    /// batches of a drain under way. Such an `ANALYZE` does not reset
    /// PostgreSQL's change counter, so `marks` remembers it per table (per
    /// process).
    ///
    /// One replica at a time (an advisory lock); a table the database user
    /// does not own is skipped by PostgreSQL with a warning.
    pub async fn analyze_stale_tables(
        &self,
        marks: &mut AnalyzeMarks,
    ) -> Result<Vec<String>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mine: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_xact_lock(hashtext('las-worker analyze'))")
                .fetch_one(&mut *tx)
                .await?;
        if !mine {
            return Ok(Vec::new());
        }
        let tables: Vec<(String, i64, i64, i64, Vec<String>)> = sqlx::query_as(
            "SELECT t.relname::text, t.n_mod_since_analyze, t.n_live_tup,
                    t.analyze_count + t.autoanalyze_count,
                    ARRAY(SELECT a.attname::text FROM pg_attribute a
                          WHERE a.attrelid = t.relid AND a.attnum > 0 AND NOT a.attisdropped
                            AND (a.attname = 'status'
                                 OR EXISTS (SELECT 1 FROM pg_index i
                                            WHERE i.indrelid = t.relid AND a.attnum = ANY (i.indkey))
                                 OR EXISTS (SELECT 1 FROM pg_index i
                                            JOIN pg_depend d ON d.classid = 'pg_class'::regclass
                                                            AND d.objid = i.indexrelid
                                            WHERE i.indrelid = t.relid AND d.refobjid = t.relid
                                              AND d.refobjsubid = a.attnum))
                          ORDER BY a.attnum)
             FROM pg_stat_user_tables t
             WHERE t.schemaname = current_schema()
             ORDER BY t.n_mod_since_analyze DESC",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut analyzed = Vec::new();
        for (table, changed, live, analyses, columns) in tables {
            // Changes since this keeper's last ANALYZE of the table; when
            // anyone else analyzed it since (autovacuum, a person, another
            // replica), PostgreSQL's own counter is taken as it is.
            let since = match marks.0.get(&table) {
                Some(&(mark, seen)) if seen == analyses && changed >= mark => changed - mark,
                _ => changed,
            };
            if since as f64 <= 50.0 + 0.1 * live.max(0) as f64 {
                continue;
            }
            let quote = |n: &str| format!("\"{}\"", n.replace('"', "\"\""));
            let sql = if columns.is_empty() {
                format!("ANALYZE {}", quote(&table))
            } else {
                let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
                format!("ANALYZE {} ({})", quote(&table), cols.join(", "))
            };
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await?;
            marks.0.insert(table.clone(), (changed, analyses + 1));
            analyzed.push(table);
        }
        tx.commit().await?;
        Ok(analyzed)
    }

    /// Events for messages rejected before they reached a transaction
    /// (unreadable or invalid): reason codes only.
    pub async fn record_rejections(
        &self,
        rejected: &[(Option<String>, Option<Uuid>, RejectReason)],
    ) -> Result<(), StoreError> {
        if rejected.is_empty() {
            return Ok(());
        }
        let mut events = Events::default();
        for (brin, id, reason) in rejected {
            let brin = brin
                .as_deref()
                .filter(|b| las_contracts::is_valid_brin(b))
                .unwrap_or("");
            events.push(
                las_contracts::SyncEventType::MessageRejected,
                brin,
                *id,
                None,
                None,
                vec![],
                Some(reason.as_str().to_owned()),
            );
        }
        let mut tx = self.pool.begin().await?;
        events.write(&mut tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// R12: purges the personal data of profiles deactivated longer ago than
    /// their school's retention period (names, address, phones, e-mail, birth
    /// date), and the values in their suggestions and e-mails. Returns how many.
    pub async fn purge_expired(
        &self,
        tx: &mut Transaction<'_, Postgres>,
        today: NaiveDate,
    ) -> Result<u64, StoreError> {
        let purged: Vec<i64> = sqlx::query_scalar(
            "UPDATE profiles p SET first_name = NULL, name_prefix = NULL, last_name = NULL, birth_date = NULL,
                    street = NULL, postcode = NULL, city = NULL, phone = NULL, mobile = NULL,
                    emergency_phone = NULL, email = NULL, purged_at = now(), updated_at = now()
             FROM schools s
             WHERE s.id = p.school_id AND p.status = 'deactivated' AND p.purged_at IS NULL
               AND p.deactivated_at IS NOT NULL
               AND p.deactivated_at < (($1::date - s.retention_days) AT TIME ZONE 'Europe/Amsterdam')
             RETURNING p.id",
        )
        .bind(today)
        .fetch_all(&mut **tx)
        .await?;
        if !purged.is_empty() {
            sqlx::query(
                "UPDATE suggestion_fields f SET current_value = NULL, proposed_value = NULL
                 FROM suggestions s WHERE f.suggestion_id = s.id AND s.guardian_profile_id = ANY($1)",
            )
            .bind(&purged)
            .execute(&mut **tx)
            .await?;
            sqlx::query(
                "UPDATE email_outbox e SET body_text = '(verwijderd na de bewaartermijn)', body_html = '(verwijderd na de bewaartermijn)',
                        status = CASE WHEN e.status IN ('pending', 'sending') THEN 'cancelled' ELSE e.status END
                 FROM suggestions s WHERE e.suggestion_id = s.id AND s.guardian_profile_id = ANY($1)",
            )
            .bind(&purged)
            .execute(&mut **tx)
            .await?;
        }
        Ok(purged.len() as u64)
    }
}

/// What the statistics keeper remembers between rounds
/// (`Store::analyze_stale_tables`): per table, PostgreSQL's count of changes
/// since the last full `ANALYZE`, and its count of analyses, just after the
/// keeper last analyzed it.
#[derive(Debug, Default)]
pub struct AnalyzeMarks(HashMap<String, (i64, i64)>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_data_errors_are_permanent() {
        // Errors without a database code (I/O, pool time-out) are transient.
        assert!(classify(sqlx::Error::PoolTimedOut).is_transient());
        assert!(classify(sqlx::Error::Io(std::io::Error::other("reset"))).is_transient());
        assert!(!classify(sqlx::Error::RowNotFound).is_transient());
    }

    #[test]
    fn a_lost_insert_race_is_retried_and_not_called_an_outage() {
        assert!(StoreError::Conflict.is_transient());
        assert!(!StoreError::Conflict.to_string().contains("unavailable"));
    }
}
