//! THE one place that orders a batch's statements. A batch of messages is
//! applied in one transaction with set-based statements, in this order:
//! links, parent edits, coupling decisions (R13) and erasures (R12), schools, R6 pre-checks and de-duplication,
//! profiles (lock, rules, insert, update, memberships, links, guardians,
//! suggestions), groups, snapshots and rollovers, events, journal, last sync.
//! The domain decides (`domain::batch`, `domain::rules`); this file sequences.

use std::collections::{HashMap, HashSet};

use chrono::NaiveDate;
use las_contracts::{Change, LasChangeV1};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::batch::{self, School, profile_kind};
use crate::domain::message::Inbound;
use crate::domain::outcome::{BatchEffects, Journal, MessageOutcome};
use crate::domain::rules::{self};

impl Store {
    /// Applies a batch in one transaction. Returns one outcome per message, in
    /// order. Fails as a whole (nothing written) on a database error.
    pub async fn apply_batch(
        &self,
        msgs: &[Inbound],
        today: NaiveDate,
    ) -> Result<(Vec<MessageOutcome>, BatchEffects), StoreError> {
        let tx = self.begin_timed().await?;
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
        let mut journal = Journal::default();
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
                    outcomes[i] = Some(
                        apply_parent_edit(
                            &mut tx,
                            edit,
                            self.portal_base_url.as_deref(),
                            &mut effects,
                        )
                        .await?,
                    )
                }
                Inbound::Coupling(decision) => {
                    apply_coupling(
                        &mut tx,
                        decision,
                        i,
                        today,
                        &mut outcomes,
                        &mut journal,
                        &mut effects,
                    )
                    .await?
                }
                Inbound::Erasure(request) => {
                    outcomes[i] =
                        Some(apply_erasure(&mut tx, request, &mut journal, &mut effects).await?)
                }
                Inbound::Change(_) => {}
            }
        }

        let brins: Vec<String> = msgs
            .iter()
            .filter_map(|m| match m {
                Inbound::Change(c) => Some(c.brin.clone()),
                Inbound::Link(_)
                | Inbound::ParentEdit(_)
                | Inbound::Coupling(_)
                | Inbound::Erasure(_) => None,
            })
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let schools = load_schools(&mut tx, &brins).await?;

        // R6 and support checks, then dedupe by message id: within the
        // batch (domain), then across batches (processed_messages).
        let mut accepted = batch::precheck(msgs, &schools, &mut outcomes);

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

        let by_id: HashMap<i64, &School> = schools.values().map(|s| (s.id, s)).collect();

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
                &HashMap::new(),
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
                Change::SchoolYearRolledOver(y) => {
                    rollover(&mut tx, school, &y.school_year, c.message_id, &mut effects).await?
                }
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
                let decisions = batch::school_decision(&c.change, action);
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
        event_outbox::write(&mut tx, &mut effects.events).await?;

        journal::write(&mut tx, &journal).await?;

        let synced: Vec<i64> = accepted
            .iter()
            .map(|(_, _, s)| *s)
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        // To the minute: a school's row is written (and locked until the
        // commit) once a minute, not by every batch. Concurrent batches of one
        // school used to queue on that row lock at the end of each
        // transaction (3.5% of PostgreSQL's statement time in the 1M drain,
        // 1.3 ms per batch; issue #19).
        if !synced.is_empty() {
            sqlx::query(
                "UPDATE schools SET last_sync_at = now() WHERE id = ANY($1)
                   AND (last_sync_at IS NULL OR last_sync_at < now() - interval '1 minute')",
            )
            .bind(&synced)
            .execute(&mut *tx)
            .await?;
        }

        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or(MessageOutcome::Stale))
            .collect();
        Ok((tx, outcomes, effects))
    }
}
