//! The daily job (R9 promotions, R12 purge), planner statistics, retention.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use las_contracts::RejectReason;
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::outcome::BatchEffects;
pub use crate::domain::outcome::DailyReport;
use crate::domain::rules::{self, ProfileKind, Status};

/// Advisory lock key of the daily job ("lasdaily").
pub(super) const DAILY_LOCK: i64 = 0x6c61_7364_6169_6c79;

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
                    s.link_staff_to_groups, s.esis_composite_groups, s.retention_days, s.snapshot_guard_percent, s.staff_phones,
                    s.coupling, s.composite_groups_lead, s.staff_retention_days, s.year_records_kept_years,
                    s.suggestion_detail
             FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE p.kind = 'student' AND p.las_key IS NOT NULL
               AND (p.status = 'held' OR (p.status = 'active' AND p.in_intake))
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
            let step = rules::daily_step(
                status,
                in_intake,
                row.try_get("birth_date")?,
                &las_groups,
                &settings,
                today,
            );
            report.count(step.decision.as_ref());
            if !step.changed {
                continue;
            }
            let placement = step.placement;
            let school_id: i64 = row.try_get("school_id")?;
            let key: String = row.try_get("las_key")?;
            let brin: String = row.try_get("brin")?;
            if let Some(ty) = step.event {
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
            "UPDATE profiles p SET status = t.st, in_intake = t.i, shown = p.shown OR t.st = 'active', updated_at = now()
             FROM UNNEST($1::int8[], $2::text[], $3::bool[]) AS t(id, st, i) WHERE p.id = t.id",
        )
        .bind(&ids)
        .bind(&statuses)
        .bind(&intakes)
        .execute(&mut *tx)
        .await?;
        ensure_intake_groups(&mut tx, &intake_schools.into_iter().collect::<Vec<_>>()).await?;
        members.write(&mut tx).await?;
        reconcile_guardians(&mut tx, &ids, &[], vec![], &mut effects).await?;
        report.purged = self.purge_expired(&mut tx, today).await?;
        // R12/R13: a LAS record that waited for the school's coupling
        // decision and stayed untouched for the school's retention term.
        report.waits_expired = sqlx::query(
            "DELETE FROM coupling_waits w USING schools s
             WHERE s.id = w.school_id
               AND w.updated_at < (($1::date - s.retention_days) AT TIME ZONE 'Europe/Amsterdam')",
        )
        .bind(today)
        .execute(&mut *tx)
        .await?
        .rows_affected();
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
        event_outbox::write(&mut tx, &mut effects.events).await?;
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
}

impl Store {
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
        event_outbox::write(&mut tx, &mut events).await?;
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
        let purged: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE profiles p SET {PURGED_FIELDS}
             FROM schools s
             WHERE s.id = p.school_id AND p.status = 'deactivated'
               AND (p.purged_at IS NULL OR p.purged_at < p.deactivated_at)
               AND p.deactivated_at IS NOT NULL
               AND p.deactivated_at < (($1::date - CASE WHEN p.kind = 'staff' THEN s.staff_retention_days ELSE s.retention_days END)
                                       AT TIME ZONE 'Europe/Amsterdam')
             RETURNING p.id"
        )))
        .bind(today)
        .fetch_all(&mut **tx)
        .await?;
        // R12 (RULES.md, issue #18): a record the portal does not show (a
        // child held back, R9, or a guardian of only such children) that the
        // LAS left untouched for the school's term is not kept for ever: it
        // is deactivated (`held_past_term`) and purged. The LAS brings it back
        // with its next record of the child (a newer version re-enrols it).
        let expired_held: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "UPDATE profiles p SET {PURGED_FIELDS}, status = 'deactivated', deactivated_at = now(),
                    deactivation_reason = 'held_past_term', in_intake = FALSE
             FROM schools s
             WHERE s.id = p.school_id AND p.status = 'held'
               AND p.updated_at < (($1::date - s.retention_days) AT TIME ZONE 'Europe/Amsterdam')
             RETURNING p.id"
        )))
        .bind(today)
        .fetch_all(&mut **tx)
        .await?;
        if !expired_held.is_empty() {
            sqlx::query(
                "DELETE FROM memberships m USING profiles p
                 WHERE p.id = ANY($1) AND m.school_id = p.school_id AND m.member_kind = p.kind AND m.member_key = p.las_key",
            )
            .bind(&expired_held)
            .execute(&mut **tx)
            .await?;
        }
        purge_copies(tx, &purged).await?;
        purge_copies(tx, &expired_held).await?;
        Ok((purged.len() + expired_held.len()) as u64)
    }
}

/// What the statistics keeper remembers between rounds
/// (`Store::analyze_stale_tables`): per table, PostgreSQL's count of changes
/// since the last full `ANALYZE`, and its count of analyses, just after the
/// keeper last analyzed it.
#[derive(Debug, Default)]
pub struct AnalyzeMarks(HashMap<String, (i64, i64)>);

/// R12: the copies of purged profiles' personal data: the values in their
/// suggestions, and the e-mails about them or naming them.
pub(super) async fn purge_copies(
    tx: &mut Transaction<'_, Postgres>,
    purged: &[i64],
) -> Result<(), StoreError> {
    if purged.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE suggestion_fields f SET current_value = NULL, proposed_value = NULL
             FROM suggestions s WHERE f.suggestion_id = s.id
               AND (s.guardian_profile_id = ANY($1) OR s.student_profile_id = ANY($1))",
    )
    .bind(purged)
    .execute(&mut **tx)
    .await?;
    // E-mails about a purged guardian, and about the guardians of a
    // purged child (they name the child): only what the audit needs
    // is kept (ids, times, status, recipient id).
    sqlx::query(
            "UPDATE email_outbox e SET subject = '(verwijderd na de bewaartermijn)', to_address = '',
                    body_text = '(verwijderd na de bewaartermijn)', body_html = '(verwijderd na de bewaartermijn)',
                    last_error = NULL,
                    status = CASE WHEN e.status IN ('pending', 'sending') THEN 'cancelled' ELSE e.status END
             FROM suggestions s
             WHERE e.suggestion_id = s.id AND (s.guardian_profile_id = ANY($1) OR s.student_profile_id = ANY($1) OR s.named_student_ids && $1 OR s.guardian_profile_id IN (
                 SELECT g.id FROM profiles c
                 JOIN guardian_students gs ON gs.school_id = c.school_id AND gs.student_key = c.las_key
                 JOIN profiles g ON g.school_id = gs.school_id AND g.kind = 'guardian' AND g.las_key = gs.guardian_key
                 WHERE c.id = ANY($1) AND c.kind = 'student'))",
        )
        .bind(purged)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The fields an erasure or a purge clears on a profile row.
pub(super) const PURGED_FIELDS: &str = "first_name = NULL, name_prefix = NULL, last_name = NULL, birth_date = NULL,
                    street = NULL, postcode = NULL, city = NULL, phone = NULL, mobile = NULL,
                    emergency_phone = NULL, email = NULL, allergies = NULL, general_practitioner = NULL,
                    preferences = '{}'::jsonb, last_login_at = NULL, purged_at = now(), updated_at = now()";

/// What an erasure did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub brin: String,
    pub kind: String,
    pub las_key: String,
    /// The profile was visible until now (a `profile.deactivated` event says so).
    pub was_active: bool,
}

impl Store {
    /// The right to erasure: purges one profile now, with every copy (R12),
    /// and deactivates it. The journal records that it happened (rule and
    /// action, no data). The LAS brings the profile back only with a record
    /// newer than the one the portal has. `None` when there is no such profile.
    pub async fn erase_profile(
        &self,
        brin: &str,
        kind: ProfileKind,
        las_key: &str,
    ) -> Result<Option<Erased>, StoreError> {
        let mut tx = self.pool.begin().await?;
        let mut journal = crate::domain::outcome::Journal::default();
        let mut events = crate::domain::outcome::Events::default();
        let erased = erase_in(
            &mut tx,
            brin,
            kind,
            las_key,
            uuid::Uuid::new_v4(),
            &mut journal,
            &mut events,
        )
        .await?;
        journal::write(&mut tx, &journal).await?;
        event_outbox::write(&mut tx, &mut events).await?;
        tx.commit().await?;
        Ok(erased)
    }
}

/// The right to erasure inside the caller's transaction (the CLI's own, or a
/// batch applying `portal.erasure.v1`): purges the profile now with every
/// copy, deactivates it, takes it out of its groups, and records the
/// decision (`R12:erased`, no data) under `message_id`. `None`: no such profile.
pub(super) async fn erase_in(
    tx: &mut Transaction<'_, Postgres>,
    brin: &str,
    kind: ProfileKind,
    las_key: &str,
    message_id: uuid::Uuid,
    journal: &mut crate::domain::outcome::Journal,
    events: &mut crate::domain::outcome::Events,
) -> Result<Option<Erased>, StoreError> {
    let row: Option<(i64, i64, String, i64)> = sqlx::query_as(
        "SELECT p.id, p.school_id, p.status, p.version FROM profiles p JOIN schools s ON s.id = p.school_id
         WHERE s.brin = $1 AND p.kind = $2 AND p.las_key = $3 FOR UPDATE OF p",
    )
    .bind(brin)
    .bind(kind.as_str())
    .bind(las_key.trim())
    .fetch_optional(&mut **tx)
    .await?;
    let Some((id, school_id, status, version)) = row else {
        return Ok(None);
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE profiles SET {PURGED_FIELDS}, status = 'deactivated',
                deactivated_at = COALESCE(deactivated_at, now()),
                deactivation_reason = COALESCE(deactivation_reason, 'erased')
         WHERE id = $1"
    )))
    .bind(id)
    .execute(&mut **tx)
    .await?;
    purge_copies(tx, &[id]).await?;
    // Out of every group, as a removal would leave it.
    sqlx::query(
        "DELETE FROM memberships WHERE school_id = $1 AND member_kind = $2 AND member_key = $3",
    )
    .bind(school_id)
    .bind(kind.as_str())
    .bind(las_key.trim())
    .execute(&mut **tx)
    .await?;
    journal.push(
        school_id,
        message_id,
        kind.as_str(),
        las_key.trim(),
        version,
        &[rules::Decision {
            rule: rules::Rule::R12,
            action: rules::Action::Erased,
            field: None,
        }],
    );
    let was_active = status == "active";
    if was_active {
        events.push(
            las_contracts::SyncEventType::ProfileDeactivated,
            brin,
            Some(message_id),
            Some(kind.as_str()),
            Some(las_key.trim()),
            vec![],
            Some("erased".to_owned()),
        );
    }
    Ok(Some(Erased {
        brin: brin.to_owned(),
        kind: kind.as_str().to_owned(),
        las_key: las_key.trim().to_owned(),
        was_active,
    }))
}

/// `portal.erasure.v1`: the school granted an erasure request (R12, seed
/// 004); the same as `las-worker profile erase`. A request for a profile the
/// portal does not have is refused with a reason; a redelivery is a duplicate.
pub(super) async fn apply_erasure(
    tx: &mut Transaction<'_, Postgres>,
    msg: &las_contracts::ErasureV1,
    journal: &mut crate::domain::outcome::Journal,
    effects: &mut BatchEffects,
) -> Result<MessageOutcome, StoreError> {
    use crate::domain::message::Rejection;
    use las_contracts::RejectReason;
    let reject = |reason: RejectReason, text: String| {
        Ok(MessageOutcome::Rejected(
            Rejection::new(reason, text).with_message_id(msg.message_id),
        ))
    };
    let Some(school_id): Option<i64> = sqlx::query_scalar("SELECT id FROM schools WHERE brin = $1")
        .bind(&msg.brin)
        .fetch_optional(&mut **tx)
        .await?
    else {
        return reject(
            RejectReason::UnknownBrin,
            format!("no portal is linked to BRIN {} (R6)", msg.brin),
        );
    };
    if already_applied(tx, msg.message_id).await? {
        return Ok(MessageOutcome::Duplicate);
    }
    let Some(kind) = ProfileKind::parse(msg.entity_kind.trim()) else {
        return reject(
            RejectReason::ValidationFailed,
            "field `entity_kind` must be student, guardian or staff".to_owned(),
        );
    };
    let key = msg.las_key.trim();
    match erase_in(
        tx,
        &msg.brin,
        kind,
        key,
        msg.message_id,
        journal,
        &mut effects.events,
    )
    .await?
    {
        None => reject(
            RejectReason::ValidationFailed,
            format!(
                "no {} with LAS key {key} in the portal of BRIN {}; nothing was erased (R12)",
                kind.as_str(),
                msg.brin
            ),
        ),
        Some(_) => {
            mark_applied(tx, msg.message_id, school_id).await?;
            Ok(MessageOutcome::Applied {
                decisions: vec![rules::Decision {
                    rule: rules::Rule::R12,
                    action: rules::Action::Erased,
                    field: None,
                }],
            })
        }
    }
}
