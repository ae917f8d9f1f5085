//! R10: parent edits become suggestions with their e-mails, in the transaction
//! that consumes the edit; operators list and discard them.

use las_contracts::RejectReason;
use sqlx::{Postgres, Row, Transaction};

use super::*;
use crate::domain::message::Rejection;
use crate::domain::outcome::{BatchEffects, MessageOutcome};
use crate::domain::rules::Contact;
use crate::domain::rules::ProfileKind;
use crate::domain::rules::suggestions::{
    AboutStudent, Child, PortalUser, child_of, full_name, suggestion_link,
};

/// R10: a parent's edit becomes a suggestion, with one outbox e-mail per
/// recipient, in the transaction that consumes the message.
pub(super) async fn apply_parent_edit(
    tx: &mut Transaction<'_, Postgres>,
    edit: &las_contracts::ParentEditV1,
    portal_base_url: Option<&str>,
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
    let guardian_id: i64 = g.try_get("id")?;
    let guardian_key = g.try_get::<Option<String>, _>("las_key")?;
    // v1.3: a correction of one of the guardian's own children's data.
    let names_student = edit
        .student_las_key
        .as_deref()
        .is_some_and(|k| !k.trim().is_empty())
        || edit.student_profile_id.is_some();
    let student = match (&guardian_key, names_student) {
        (Some(gkey), true) => {
            let children: Vec<Child> = sqlx::query_as::<_, (i64, String)>(
                "SELECT s.id, s.las_key FROM guardian_students gs
                 JOIN profiles s ON s.school_id = gs.school_id AND s.kind = 'student' AND s.las_key = gs.student_key
                 WHERE gs.school_id = $1 AND gs.guardian_key = $2 AND s.status = 'active'
                 ORDER BY s.id",
            )
            .bind(school_id)
            .bind(gkey)
            .fetch_all(&mut **tx)
            .await?
            .into_iter()
            .map(|(profile_id, las_key)| Child {
                profile_id,
                las_key,
            })
            .collect();
            match child_of(
                &edit.brin,
                gkey,
                &children,
                edit.student_las_key.as_deref(),
                edit.student_profile_id,
            ) {
                Ok(c) => Some(c.clone()),
                Err(text) => return reject(RejectReason::ValidationFailed, text),
            }
        }
        _ => None,
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
    let Some(guardian_key) = guardian_key else {
        // R13: the portal owns an uncoupled profile; its edits are the
        // portal's own changes, not suggestions to the school.
        return Ok(MessageOutcome::Applied {
            decisions: vec![crate::domain::model::Decision {
                rule: crate::domain::model::Rule::R10,
                action: crate::domain::model::Action::NotASuggestion,
                field: None,
            }],
        });
    };
    let contact = contact_from_row(&g)?;
    // The profile the suggestion is about: the guardian, or the child.
    let (kind, current) = match &student {
        Some(child) => {
            let row = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {CONTACT_COLUMNS} FROM profiles WHERE id = $1"
            )))
            .bind(child.profile_id)
            .fetch_one(&mut **tx)
            .await?;
            (ProfileKind::Student, contact_from_row(&row)?)
        }
        None => (ProfileKind::Guardian, contact.clone()),
    };
    let plan =
        crate::domain::rules::suggestions::plan(kind, settings.system, &current, &edit.changes);
    if plan.changes.is_empty() {
        return Ok(MessageOutcome::Applied {
            decisions: plan.decisions(),
        });
    }
    // (first name, name prefix, last name, profile id) of the children.
    type NamedChild = (Option<String>, Option<String>, Option<String>, i64);
    let students: Vec<NamedChild> = sqlx::query_as(
        "SELECT s.first_name, s.name_prefix, s.last_name, s.id FROM guardian_students gs
         JOIN profiles s ON s.school_id = gs.school_id AND s.kind = 'student' AND s.las_key = gs.student_key
         WHERE gs.school_id = $1 AND gs.guardian_key = $2 AND s.status = 'active'
         ORDER BY s.las_key",
    )
    .bind(school_id)
    .bind(&guardian_key)
    .fetch_all(&mut **tx)
    .await?;
    let users = school_users(&mut **tx, school_id).await?;
    let recipients = crate::domain::rules::suggestions::recipients(&users);
    let suggestion_id: i64 = sqlx::query_scalar(
        "INSERT INTO suggestions (school_id, message_id, guardian_profile_id, student_profile_id, edited_at, recipients,
                                  named_student_ids)
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(school_id)
    .bind(edit.message_id)
    .bind(guardian_id)
    .bind(student.as_ref().map(|c| c.profile_id))
    .bind(edit.edited_at)
    .bind(recipients.len() as i32)
    // R12: the children the e-mails name, so a purge finds them even after
    // the LAS removed the guardian's link to a child.
    .bind(students.iter().map(|s| s.3).collect::<Vec<i64>>())
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
    let ctx = crate::domain::rules::suggestions::EmailContext {
        brin: edit.brin.clone(),
        system: settings.system,
        detail: settings.suggestion_detail,
        edit_id: edit.message_id,
        link: suggestion_link(portal_base_url, edit.message_id),
        about_student: student.as_ref().map(|c| AboutStudent {
            name: full_name(&current),
            las_key: c.las_key.clone(),
        }),
        guardian_name: crate::domain::rules::suggestions::full_name(&contact),
        guardian_las_key: guardian_key.clone(),
        student_names: students
            .into_iter()
            .map(|(f, p, l, _)| {
                crate::domain::rules::suggestions::full_name(&Contact {
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
        let mail = crate::domain::rules::suggestions::render(&ctx, &r.display_name);
        // Deterministic: the same suggestion and recipient always give the same key.
        let key = crate::domain::rules::suggestions::email_key(edit.message_id, r.id);
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
    Ok(MessageOutcome::Applied {
        decisions: plan.decisions(),
    })
}

pub(super) async fn school_users<'e, E: sqlx::PgExecutor<'e>>(
    exec: E,
    school_id: i64,
) -> Result<Vec<PortalUser>, StoreError> {
    let rows: Vec<(i64, String, String, String, bool, bool)> = sqlx::query_as(
        "SELECT u.id, u.display_name, u.email, u.role, u.active,
                EXISTS (SELECT 1 FROM portal_user_rights r WHERE r.user_id = u.id AND r.\"right\" = 'notify_contact_changes') AS notify_contact_changes
         FROM portal_users u WHERE u.school_id = $1 ORDER BY u.id",
    )
    .bind(school_id)
    .fetch_all(exec)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(id, display_name, email, role, active, notify_contact_changes)| PortalUser {
                id,
                display_name,
                email,
                role,
                active,
                notify_contact_changes,
            },
        )
        .collect())
}

/// R10: an open suggestion is resolved when the LAS brings every proposed
/// value to the profile it is about: the guardian, or the child whose data
/// the guardian corrected. `profiles`: the guardians and students a batch wrote.
pub(super) async fn resolve_suggestions(
    tx: &mut Transaction<'_, Postgres>,
    profiles: &[i64],
    effects: &mut BatchEffects,
) -> Result<(), StoreError> {
    if profiles.is_empty() {
        return Ok(());
    }
    let took: Vec<f64> = sqlx::query_scalar(
        "UPDATE suggestions s SET status = 'resolved', closed_at = now(), closed_reason = 'las_import'
         FROM profiles p
         WHERE s.status = 'open' AND p.id = COALESCE(s.student_profile_id, s.guardian_profile_id)
           AND (s.student_profile_id = ANY($1) OR (s.student_profile_id IS NULL AND s.guardian_profile_id = ANY($1)))
           AND NOT EXISTS (
               SELECT 1 FROM suggestion_fields f WHERE f.suggestion_id = s.id
                 AND f.proposed_value IS DISTINCT FROM (CASE f.field
                     WHEN 'first_name' THEN p.first_name WHEN 'name_prefix' THEN p.name_prefix
                     WHEN 'last_name' THEN p.last_name WHEN 'birth_date' THEN p.birth_date::text
                     WHEN 'street' THEN p.street
                     WHEN 'postcode' THEN p.postcode WHEN 'city' THEN p.city
                     WHEN 'phone' THEN p.phone WHEN 'mobile' THEN p.mobile
                     WHEN 'emergency_phone' THEN p.emergency_phone WHEN 'email' THEN p.email END))
         RETURNING EXTRACT(EPOCH FROM (now() - s.edited_at))::float8",
    )
    .bind(profiles)
    .fetch_all(&mut **tx)
    .await?;
    effects.suggestions_resolved.extend(took);
    Ok(())
}

/// A suggestion as support sees it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SuggestionView {
    pub id: i64,
    /// The parent edit's message id: the suggestion's reference in e-mails
    /// and in the portal link.
    pub message_id: uuid::Uuid,
    /// `None` once the guardian was uncoupled (R13).
    pub guardian_las_key: Option<String>,
    /// Set when the suggestion is about a child's data (v1.3), not the
    /// guardian's own.
    pub student_las_key: Option<String>,
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
    /// R10: who receives suggestions for a school.
    pub async fn recipients(&self, brin: &str) -> Result<Option<Vec<PortalUser>>, StoreError> {
        let Some(id): Option<i64> = sqlx::query_scalar("SELECT id FROM schools WHERE brin = $1")
            .bind(brin)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let users = school_users(&self.pool, id).await?;
        Ok(Some(
            crate::domain::rules::suggestions::recipients(&users)
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
            "SELECT s.id, s.message_id, p.las_key AS guardian_las_key, st.las_key AS student_las_key, s.status,
                    ARRAY(SELECT f.field FROM suggestion_fields f WHERE f.suggestion_id = s.id ORDER BY f.field) AS fields,
                    s.recipients,
                    (SELECT count(*) FROM email_outbox e WHERE e.suggestion_id = s.id AND e.status = 'sent') AS emails_sent,
                    (SELECT count(*) FROM email_outbox e WHERE e.suggestion_id = s.id AND e.status IN ('pending', 'sending')) AS emails_pending,
                    (SELECT count(*) FROM email_outbox e WHERE e.suggestion_id = s.id AND e.status = 'failed') AS emails_failed,
                    s.edited_at, s.closed_at, s.closed_reason
             FROM suggestions s JOIN schools sc ON sc.id = s.school_id JOIN profiles p ON p.id = s.guardian_profile_id
             LEFT JOIN profiles st ON st.id = s.student_profile_id
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
