//! Guardian-student links and the guardians' status (R9, R12).

use std::collections::{HashMap, HashSet};

use sqlx::{Postgres, Transaction};

use super::*;
use crate::domain::batch;
use crate::domain::outcome::BatchEffects;
use crate::domain::rules::{self, Status};

/// Guardian to student links by LAS key.
#[derive(Default)]
pub(super) struct Links {
    pub(super) del_school: Vec<i64>,
    pub(super) del_guardian: Vec<String>,
    pub(super) ins_school: Vec<i64>,
    pub(super) ins_guardian: Vec<String>,
    pub(super) ins_student: Vec<String>,
}

impl Links {
    pub(super) fn replace(&mut self, school_id: i64, guardian: &str, students: &[String]) {
        self.del_school.push(school_id);
        self.del_guardian.push(guardian.to_owned());
        self.add(school_id, guardian, students);
    }

    /// The students of a guardian this transaction inserted: links are only
    /// written by the guardian's own changes, so it has none to delete.
    pub(super) fn add(&mut self, school_id: i64, guardian: &str, students: &[String]) {
        for s in students {
            self.ins_school.push(school_id);
            self.ins_guardian.push(guardian.to_owned());
            self.ins_student.push(s.clone());
        }
    }

    pub(super) async fn write(&self, tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
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
pub(super) const PROBES_ONLY: &str = "SET LOCAL enable_seqscan = off; SET LOCAL enable_hashjoin = off; \
                           SET LOCAL enable_mergejoin = off";
pub(super) const PLANNER_DEFAULTS: &str =
    "RESET enable_seqscan; RESET enable_hashjoin; RESET enable_mergejoin";

/// R9 and R12 for guardians, from their students: a guardian with an active
/// student is active; one whose known students are all held (under 4, not
/// imported) is held; one whose students are all removed is deactivated with
/// reason `all_students_removed`, and comes back with a student. Students the
/// portal has not seen yet do not count. A guardian the LAS removed itself
/// stays deactivated.
pub(super) async fn reconcile_guardians(
    tx: &mut Transaction<'_, Postgres>,
    students: &[i64],
    guardians: &[i64],
    pending: Vec<batch::PendingGuardian>,
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    if students.is_empty() && guardians.is_empty() {
        batch::release_guardians(pending, &HashSet::new(), effects);
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
    // (id, school, LAS key, status, deactivation reason, BRIN, shown)
    type GuardianRow = (i64, i64, String, String, Option<String>, String, bool);
    let rows: Vec<GuardianRow> = sqlx::query_as(
        "SELECT g.id, g.school_id, g.las_key, g.status, g.deactivation_reason, s.brin, g.shown
         FROM UNNEST($1::int8[], $4::text[], $2::text[]) AS u(s, kd, k)
         JOIN profiles g ON g.school_id = u.s AND g.kind = u.kd AND g.las_key = u.k
         JOIN schools s ON s.id = g.school_id
         UNION
         SELECT g.id, g.school_id, g.las_key, g.status, g.deactivation_reason, s.brin, g.shown
         FROM profiles g JOIN schools s ON s.id = g.school_id
         WHERE g.id = ANY($3) AND g.kind = 'guardian'",
    )
    .bind(&l_school)
    .bind(&l_key)
    .bind(guardians)
    .bind(&l_kind)
    .fetch_all(&mut **tx)
    .await?;
    let shown: HashSet<i64> = rows.iter().filter(|r| r.6).map(|r| r.0).collect();
    let mut cands: Vec<(i64, i64, String, Status, String)> = rows
        .into_iter()
        .filter_map(|(id, school, key, status, reason, brin, _)| {
            let status = status_of(&status)?;
            rules::guardian_follows_students(status, reason.as_deref())
                .then_some((id, school, key, status, brin))
        })
        .collect();
    // Updated in id order, as rows are locked everywhere else.
    cands.sort_by_key(|c| c.0);
    if cands.is_empty() {
        sqlx::raw_sql(PLANNER_DEFAULTS).execute(&mut **tx).await?;
        batch::release_guardians(pending, &HashSet::new(), effects);
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
    let mut changed: Vec<(Status, Status, String, String)> = Vec::new();
    let mut changed_id: Vec<i64> = Vec::new();
    // Updated: the guardians whose status changes, and (R12) the active
    // ones not marked shown yet (new guardians: inserted unshown until this
    // settles whether they are held), in the same statement.
    let (mut u_id, mut u_status): (Vec<i64>, Vec<&'static str>) = (Vec::new(), Vec::new());
    for (id, school, key, was, brin) in &cands {
        // A guardian without links keeps its status.
        let target = match students_of.get(&(*school, key.as_str())) {
            Some(statuses) => rules::guardian_status(statuses),
            None => *was,
        };
        if target != *was {
            u_id.push(*id);
            u_status.push(target.as_str());
            changed.push((target, *was, key.clone(), brin.clone()));
            changed_id.push(*id);
        } else if target == Status::Active && !shown.contains(id) {
            u_id.push(*id);
            u_status.push(target.as_str());
        }
    }
    if !u_id.is_empty() {
        sqlx::query(
            "UPDATE profiles g SET status = t.st, shown = g.shown OR t.st = 'active',
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
        // R12: a guardian the portal never showed (only held children) whose
        // children the LAS removed is purged at once (`rules::purge_at_once`).
        let purge_now: Vec<i64> = changed
            .iter()
            .zip(&changed_id)
            .filter(|((target, was, _, _), id)| {
                rules::purge_at_once(*was, *target, shown.contains(*id))
            })
            .map(|(_, id)| *id)
            .collect();
        if !purge_now.is_empty() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE profiles SET {PURGED_FIELDS} WHERE id = ANY($1)"
            )))
            .bind(&purge_now)
            .execute(&mut **tx)
            .await?;
            purge_copies(tx, &purge_now).await?;
        }
    }
    sqlx::raw_sql(PLANNER_DEFAULTS).execute(&mut **tx).await?;
    let ended_held: HashSet<i64> = u_id
        .iter()
        .zip(&u_status)
        .filter(|(_, st)| **st == Status::Held.as_str())
        .map(|(id, _)| *id)
        .collect();
    batch::release_guardians(pending, &ended_held, effects);
    for (target, was, key, brin) in changed {
        let (label, event) = batch::guardian_transition(was, target);
        *effects.profiles.entry(("guardian", label)).or_default() += 1;
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
