//! The school year rollover (R11).

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::*;
use crate::domain::batch::School;
use crate::domain::outcome::BatchEffects;
use crate::domain::rules::rollover::{
    SchoolYear, UNLINKED_GROUP_TYPES, YEAR_BOUND_RECORDS, plan, rollover_action,
    year_records_kept_from,
};
use crate::domain::rules::{self, ProfileKind};

pub(super) fn static_kind(kind: &str) -> &'static str {
    ProfileKind::parse(kind)
        .map(ProfileKind::as_str)
        .unwrap_or("unknown")
}

/// R11: the school year rolled over to `school_year` (e.g. `2026-2027`): every
/// group-bound item is unlinked from its group (kept, unpublished), and the
/// absence reports, leave requests and after-school-care registrations of
/// earlier years are deleted. Once per school and year; `None` (stale) for a
/// year older than the newest one applied (`rules::rollover::plan`).
pub(super) async fn rollover(
    tx: &mut Transaction<'_, Postgres>,
    school: &School,
    school_year: &str,
    message_id: Uuid,
    effects: &mut BatchEffects,
) -> Result<Option<rules::Action>, StoreError> {
    // Validated with the message; kept total here.
    let Some(parsed) = SchoolYear::parse(school_year) else {
        return Ok(None);
    };
    let year = parsed.label();
    // The school's row serializes rollovers of one school across batches.
    let applied: Vec<String> = sqlx::query_scalar(
        "SELECT r.school_year FROM schools s
         LEFT JOIN school_year_rollovers r ON r.school_id = s.id
         WHERE s.id = $1 AND r.school_year IS NOT NULL
         FOR UPDATE OF s",
    )
    .bind(school.id)
    .fetch_all(&mut **tx)
    .await?;
    let newest = applied.iter().filter_map(|y| SchoolYear::parse(y)).max();
    match plan(parsed, newest) {
        Some(rules::Action::RolledOver) => {}
        other => return Ok(other),
    }
    let first = sqlx::query(
        "INSERT INTO school_year_rollovers (school_id, school_year, message_id, items_unlinked, records_deleted)
         VALUES ($1, $2, $3, 0, 0) ON CONFLICT DO NOTHING",
    )
    .bind(school.id)
    .bind(&year)
    .bind(message_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if first == 0 {
        return Ok(Some(rollover_action(false)));
    }
    let unlinked = sqlx::query(
        "UPDATE group_items i SET unlinked_from_group_id = i.group_id, unlinked_at = now(), group_id = NULL
         FROM portal_groups g
         WHERE i.group_id = g.id AND g.school_id = $1 AND g.group_type = ANY($2)",
    )
    .bind(school.id)
    .bind(&UNLINKED_GROUP_TYPES[..])
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let kept_from = year_records_kept_from(parsed, school.settings.year_records_kept_years).label();
    let mut deleted = 0;
    for table in YEAR_BOUND_RECORDS {
        deleted += sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE school_id = $1 AND school_year < $2"
        )))
        .bind(school.id)
        .bind(&kept_from)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    }
    sqlx::query("UPDATE school_year_rollovers SET items_unlinked = $3, records_deleted = $4 WHERE school_id = $1 AND school_year = $2")
        .bind(school.id)
        .bind(&year)
        .bind(unlinked as i32)
        .bind(deleted as i32)
        .execute(&mut **tx)
        .await?;
    tracing::info!(brin = %school.brin, school_year = %year, items_unlinked = unlinked, records_deleted = deleted, "school year rolled over (R11)");
    effects.rollovers.push((year, unlinked, deleted));
    Ok(Some(rollover_action(true)))
}
