//! The `schools` table: link settings (R6) and the first run's group mapping
//! (R7: checked here, applied by `groups::first_run`, once).

use std::collections::HashMap;

use las_contracts::{LasSystem, PortalLinkV1};
use sqlx::{Postgres, Row, Transaction};

use super::*;
use crate::domain::batch::School;
use crate::domain::message::Rejection;
use crate::domain::outcome::MessageOutcome;
use crate::domain::rules::{self, Decision, SchoolSettings};

pub(super) fn settings_from_row(
    row: &sqlx::postgres::PgRow,
) -> Result<SchoolSettings, sqlx::Error> {
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
        staff_phones: row
            .try_get::<Vec<String>, _>("staff_phones")?
            .iter()
            .filter_map(|p| las_contracts::StaffPhone::parse(p))
            .collect(),
        coupling: las_contracts::CouplingMode::parse(&row.try_get::<String, _>("coupling")?)
            .unwrap_or_default(),
        composite_groups_lead: row.try_get("composite_groups_lead")?,
        staff_retention_days: row.try_get::<i32, _>("staff_retention_days")?.max(0) as u32,
        year_records_kept_years: row
            .try_get::<i32, _>("year_records_kept_years")?
            .clamp(0, 5) as u32,
        suggestion_detail: las_contracts::SuggestionDetail::parse(
            &row.try_get::<String, _>("suggestion_detail")?,
        )
        .unwrap_or_default(),
    })
}

pub(super) const SCHOOL_COLUMNS: &str = "id, brin, las_system, environment_id, environment_label, intake_weeks_ahead, default_staff_role, link_staff_to_groups, esis_composite_groups, retention_days, snapshot_guard_percent, staff_phones, coupling, composite_groups_lead, staff_retention_days, year_records_kept_years, suggestion_detail";

pub(super) async fn load_schools(
    tx: &mut Transaction<'_, Postgres>,
    brins: &[String],
) -> Result<HashMap<String, School>, StoreError> {
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
            School {
                id: row.try_get("id")?,
                brin,
                settings: settings_from_row(&row)?,
            },
        );
    }
    Ok(out)
}

/// R6: link a school to its one LAS environment, or change its settings.
pub(super) async fn apply_link(
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
    // R7 first run: a mapping the worker can apply, once.
    let mapping_entries = link.group_mapping.clone().unwrap_or_default();
    let school_id: Option<i64> = match &row {
        Some(r) => Some(r.try_get("id")?),
        None => None,
    };
    let first_run: Option<serde_json::Value> = match school_id {
        Some(id) => {
            sqlx::query_scalar(
                "SELECT group_mapping FROM schools WHERE id = $1 AND first_run_at IS NOT NULL",
            )
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
        }
        None => None,
    };
    let first_run_done = first_run.is_some();
    let checked = match (&first_run, school_id) {
        _ if mapping_entries.is_empty() => Ok(()),
        (Some(done), _) => {
            let done: Vec<las_contracts::GroupMapping> =
                serde_json::from_value(done.clone()).unwrap_or_default();
            rules::check_mapping_after_first_run(&link.brin, &done, &mapping_entries)
        }
        (None, id) => {
            let ids: Vec<i64> = mapping_entries.iter().map(|m| m.portal_group_id).collect();
            let found = match id {
                Some(id) => super::groups::load_groups(tx, id, &ids, &[]).await?,
                None => vec![],
            };
            rules::check_first_run_mapping(&link.brin, &mapping_entries, &found)
        }
    };
    if let Err(r) = checked {
        return Ok(MessageOutcome::Rejected(
            Rejection::new(r.reason, r.text).with_message_id(link.message_id),
        ));
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
    // `group_mapping` is stored by the first run (`groups::first_run`), once.
    sqlx::query(
        "INSERT INTO schools (brin, las_system, environment_id, environment_label, intake_weeks_ahead,
             default_staff_role, link_staff_to_groups, esis_composite_groups, retention_days,
             snapshot_guard_percent, staff_phones, coupling, composite_groups_lead,
             staff_retention_days, year_records_kept_years, suggestion_detail)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
         ON CONFLICT (brin) DO UPDATE SET
             environment_label = EXCLUDED.environment_label,
             intake_weeks_ahead = EXCLUDED.intake_weeks_ahead,
             default_staff_role = EXCLUDED.default_staff_role,
             link_staff_to_groups = EXCLUDED.link_staff_to_groups,
             esis_composite_groups = EXCLUDED.esis_composite_groups,
             retention_days = EXCLUDED.retention_days,
             snapshot_guard_percent = EXCLUDED.snapshot_guard_percent,
             staff_phones = EXCLUDED.staff_phones,
             coupling = EXCLUDED.coupling,
             composite_groups_lead = EXCLUDED.composite_groups_lead,
             staff_retention_days = EXCLUDED.staff_retention_days,
             year_records_kept_years = EXCLUDED.year_records_kept_years,
             suggestion_detail = EXCLUDED.suggestion_detail,
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
    .bind(settings.snapshot_guard_percent.min(100) as i32)
    .bind(
        settings
            .staff_phones
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>(),
    )
    .bind(settings.coupling.as_str())
    .bind(settings.composite_groups_lead)
    .bind(settings.staff_retention_days.min(i32::MAX as u32) as i32)
    .bind(settings.year_records_kept_years as i32)
    .bind(settings.suggestion_detail.as_str())
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
        && !first_run_done
    {
        super::groups::first_run(tx, id, &mapping_entries, link.message_id).await?;
        decisions.push(Decision {
            rule: rules::Rule::R7,
            action: rules::Action::FirstRunMapped,
            field: None,
        });
    }
    if let (Some(id), Some(old)) = (school_id, &existing)
        && rules::settings_replan_groups(old, &settings)
        && super::groups::replan(tx, id, &settings, link.message_id).await? > 0
    {
        decisions.push(Decision {
            rule: rules::Rule::R7,
            action: rules::Action::GroupsReplanned,
            field: None,
        });
    }
    Ok(MessageOutcome::Applied { decisions })
}

type Timestamp = Option<chrono::DateTime<chrono::Utc>>;

/// A school's link settings (the `portal.link.v1` field names) and sync times.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct SchoolView {
    pub brin: String,
    pub system: String,
    pub environment_id: String,
    pub label: Option<String>,
    pub intake_weeks_ahead: Option<i32>,
    pub default_staff_role: String,
    pub link_staff_to_groups: bool,
    pub esis_composite_groups: bool,
    pub retention_days: i32,
    pub snapshot_guard_percent: i32,
    /// Staff phones published to parents (`phone`, `mobile`).
    pub staff_phones: Vec<String>,
    /// R13: `auto` or `review`.
    pub coupling: String,
    /// R7: composite groups are listed first and lead (v1.3).
    pub composite_groups_lead: bool,
    /// R12: staff's term in days.
    pub staff_retention_days: i32,
    /// R11/R12: school years the year-bound records stay after a rollover.
    pub year_records_kept_years: i32,
    /// R10: what suggestion e-mails say: `full` or `notice` (v1.3).
    pub suggestion_detail: String,
    /// The first run's mapping (empty until it happened).
    pub group_mapping: serde_json::Value,
    pub first_run_at: Timestamp,
    pub last_sync_at: Timestamp,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Store {
    /// The settings a school has now.
    pub async fn school_view(&self, brin: &str) -> Result<Option<SchoolView>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT brin, las_system AS system, environment_id, environment_label AS label,
                intake_weeks_ahead, default_staff_role, link_staff_to_groups,
                esis_composite_groups, retention_days, snapshot_guard_percent, staff_phones,
                coupling, composite_groups_lead, staff_retention_days, year_records_kept_years,
                suggestion_detail, group_mapping, first_run_at,
                last_sync_at, created_at, updated_at
         FROM schools WHERE brin = $1",
        )
        .bind(brin)
        .fetch_optional(&self.pool)
        .await?)
    }
}
