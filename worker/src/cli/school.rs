//! `las-worker school configure` and `school show`: a school's link settings
//! (R6), applied through the same code as a `portal.link.v1` message.

use std::process::ExitCode;

use super::SchoolCommand;
use crate::adapters::db::{SchoolView, Store};
use crate::app::clock::local_today;
use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;
use crate::domain::message::{self, Inbound};
use crate::domain::outcome::MessageOutcome;
use clap::Args;

/// `--staff-phones`: the published staff phones, or none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaffPhones(pub Vec<las_contracts::StaffPhone>);

fn parse_staff_phones(s: &str) -> Result<StaffPhones, String> {
    if s.trim() == "none" {
        return Ok(StaffPhones(vec![]));
    }
    s.split(',')
        .map(|p| {
            las_contracts::StaffPhone::parse(p.trim())
                .ok_or_else(|| format!("{p:?} is not a staff phone; use phone, mobile or none"))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(StaffPhones)
}

/// `--intake-weeks-ahead`: a number of weeks, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntakeWeeks {
    Off,
    Weeks(u32),
}

fn parse_intake_weeks(s: &str) -> Result<IntakeWeeks, String> {
    match s.trim() {
        "off" | "none" => Ok(IntakeWeeks::Off),
        n => n
            .parse()
            .map(IntakeWeeks::Weeks)
            .map_err(|_| "expected a number of weeks (0-52) or `off`".to_owned()),
    }
}

#[derive(Debug, Clone, Args)]
pub struct ConfigureArgs {
    #[arg(long)]
    pub brin: String,
    /// The school's LAS.
    #[arg(long, value_parser = ["parnassys", "esis"])]
    pub system: String,
    /// The one LAS environment that may feed this portal (R6).
    #[arg(long)]
    pub environment_id: String,
    /// ESIS only: the environment label; must be `BasisOnline Ouderportaal`.
    #[arg(long)]
    pub label: Option<String>,
    /// R9: import children this many weeks before their 4th birthday into
    /// the intake group; `off` to switch off.
    #[arg(long, value_name = "WEEKS|off", value_parser = parse_intake_weeks)]
    pub intake_weeks_ahead: Option<IntakeWeeks>,
    /// R8: the role of new staff profiles (default Leerkracht).
    #[arg(long)]
    pub default_staff_role: Option<String>,
    /// R8: put new staff in their LAS groups (default true).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub link_staff_to_groups: Option<bool>,
    /// R7: create ESIS composite groups (default false).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub esis_composite_groups: Option<bool>,
    /// R12: days after deactivation before a pupil's or guardian's personal
    /// data is purged (default 730: the pupil file's two years, seed 003).
    #[arg(long)]
    pub retention_days: Option<u32>,
    /// R12: the same for staff (default 730).
    #[arg(long)]
    pub staff_retention_days: Option<u32>,
    /// R11/R12: school years that absence reports, leave requests and
    /// after-school-care registrations stay after the rollover (0-5, default 0).
    #[arg(long)]
    pub year_records_kept_years: Option<u32>,
    /// Staff phone numbers published to parents: `phone`, `mobile`, both
    /// (`phone,mobile`) or `none` (the default). Others are never imported.
    #[arg(long, value_name = "phone,mobile|none", value_parser = parse_staff_phones)]
    pub staff_phones: Option<StaffPhones>,
    /// R13: couple LAS records to existing portal profiles by an unambiguous
    /// match (`auto`, the default) or only by the school's decision (`review`).
    #[arg(long, value_parser = ["auto", "review"])]
    pub coupling: Option<String>,
    /// R7: list composite groups first and let them lead ("samengestelde
    /// groepen en jaargroepen omdraaien"; default false).
    #[arg(long, value_name = "true|false", action = clap::ArgAction::Set)]
    pub composite_groups_lead: Option<bool>,
    /// R10: what suggestion e-mails to the school say: `full` (the default:
    /// names, current and proposed values) or `notice` (only that a
    /// suggestion waits, with a link into the portal; seed 003).
    #[arg(long, value_parser = ["full", "notice"])]
    pub suggestion_detail: Option<String>,
}

/// `las-worker school ...`.
pub async fn run(db: &SecretUrl, cmd: SchoolCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SchoolCommand::Recipients { brin } => recipients(db, &brin).await,
        SchoolCommand::Configure(args) => {
            let store = open_store(db, 1, true).await?;
            store.migrate().await?;
            configure(&store, &args, local_today()).await
        }
        SchoolCommand::Show { brin } => {
            let store = open_store(db, 1, false).await?;
            show(&store, &brin).await
        }
        SchoolCommand::Overdue { hours } => {
            let store = open_store(db, 1, false).await?;
            let overdue = store.snapshots_overdue(hours).await?;
            for school in &overdue {
                println!("{}", serde_json::to_string(school)?);
            }
            eprintln!(
                "{} school(s) without a full snapshot in {hours} h",
                overdue.len()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `school recipients`: who receives suggestion e-mails (R10), JSON lines;
/// exit code 1 when the school is not linked.
async fn recipients(db: &SecretUrl, brin: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(db, 1, false).await?;
    match store.recipients(brin).await? {
        Some(users) => {
            for u in users {
                println!("{}", serde_json::to_string(&u)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no school with BRIN {brin}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `school show`: the settings as JSON; exit code 1 and no output when the
/// school is not linked.
pub async fn show(store: &Store, brin: &str) -> anyhow::Result<ExitCode> {
    match store.school_view(brin).await? {
        Some(v) => {
            println!("{}", serde_json::to_string_pretty(&v)?);
            Ok(ExitCode::SUCCESS)
        }
        None => Ok(ExitCode::from(1)),
    }
}

/// The `portal.link.v1` message `configure` applies. Options left out keep
/// the school's current value (the defaults of RULES.md for a new school).
pub fn link_message(args: &ConfigureArgs, current: Option<&SchoolView>) -> serde_json::Value {
    let intake_weeks_ahead = match args.intake_weeks_ahead {
        Some(IntakeWeeks::Weeks(n)) => Some(i64::from(n)),
        Some(IntakeWeeks::Off) => None,
        None => current.and_then(|c| c.intake_weeks_ahead.map(i64::from)),
    };
    serde_json::json!({
        "schema": "portal.link.v1",
        "message_id": uuid::Uuid::new_v4(),
        "brin": args.brin,
        "system": args.system,
        "environment_id": args.environment_id,
        "label": args.label.clone().or_else(|| current.and_then(|c| c.label.clone())),
        "intake_weeks_ahead": intake_weeks_ahead,
        "default_staff_role": args
            .default_staff_role
            .clone()
            .or_else(|| current.map(|c| c.default_staff_role.clone())),
        "link_staff_to_groups": args
            .link_staff_to_groups
            .or_else(|| current.map(|c| c.link_staff_to_groups)),
        "esis_composite_groups": args
            .esis_composite_groups
            .or_else(|| current.map(|c| c.esis_composite_groups)),
        "retention_days": args
            .retention_days
            .map(i64::from)
            .or_else(|| current.map(|c| i64::from(c.retention_days))),
        "snapshot_guard_percent": current.map(|c| i64::from(c.snapshot_guard_percent)),
        "staff_phones": match &args.staff_phones {
            Some(StaffPhones(p)) => p.iter().map(|p| p.as_str().to_owned()).collect::<Vec<_>>(),
            None => current.map(|c| c.staff_phones.clone()).unwrap_or_default(),
        },
        "coupling": args.coupling.clone().or_else(|| current.map(|c| c.coupling.clone())),
        "staff_retention_days": args
            .staff_retention_days
            .map(i64::from)
            .or_else(|| current.map(|c| i64::from(c.staff_retention_days))),
        "year_records_kept_years": args
            .year_records_kept_years
            .map(i64::from)
            .or_else(|| current.map(|c| i64::from(c.year_records_kept_years))),
        "composite_groups_lead": args
            .composite_groups_lead
            .or_else(|| current.map(|c| c.composite_groups_lead)),
        "suggestion_detail": args
            .suggestion_detail
            .clone()
            .or_else(|| current.map(|c| c.suggestion_detail.clone())),
        "emitted_at": chrono::Utc::now(),
    })
}

/// `school configure`: exit code 0 when applied, 1 when R6 refuses it, 2
/// when an option is invalid.
pub async fn configure(
    store: &Store,
    args: &ConfigureArgs,
    today: chrono::NaiveDate,
) -> anyhow::Result<ExitCode> {
    let existing = store.school_view(&args.brin).await?;
    let body = serde_json::to_vec(&link_message(args, existing.as_ref()))?;
    // The consumer's own reading and validation of a portal.link.v1 message.
    let link = match message::parse(&body) {
        Ok(m @ Inbound::Link(_)) => m,
        Ok(_) => anyhow::bail!("internal error: the link message was read as another message"),
        Err(r) => {
            eprintln!(
                "las-worker: invalid settings [{}]: {}",
                r.reason.as_str(),
                r.text
            );
            return Ok(ExitCode::from(2));
        }
    };
    let (outcomes, _) = store
        .apply_batch(std::slice::from_ref(&link), today)
        .await?;
    match outcomes.into_iter().next() {
        Some(MessageOutcome::Applied { decisions }) => {
            let codes: Vec<String> = decisions.iter().map(|d| d.code()).collect();
            let what = if existing.is_some() {
                "link settings updated"
            } else {
                "linked"
            };
            println!(
                "school {}: {what} ({} environment {:?}; {})",
                args.brin,
                args.system,
                args.environment_id,
                codes.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(MessageOutcome::Rejected(r)) => {
            eprintln!("las-worker: refused [{}]: {}", r.reason.as_str(), r.text);
            Ok(ExitCode::from(1))
        }
        other => {
            eprintln!(
                "las-worker: the link was not applied ({})",
                other.map(|o| o.label()).unwrap_or("no outcome")
            );
            Ok(ExitCode::from(1))
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> ConfigureArgs {
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: ConfigureArgs,
        }
        let mut argv = vec![
            "x",
            "--brin",
            "12AB",
            "--system",
            "parnassys",
            "--environment-id",
            "env",
        ];
        argv.extend_from_slice(extra);
        <P as clap::Parser>::try_parse_from(argv).unwrap().a
    }

    #[test]
    fn left_out_options_keep_the_current_value() {
        let cur = SchoolView {
            brin: "12AB".into(),
            system: "parnassys".into(),
            environment_id: "env".into(),
            label: None,
            intake_weeks_ahead: Some(6),
            default_staff_role: "Juf".into(),
            link_staff_to_groups: false,
            esis_composite_groups: false,
            retention_days: 100,
            snapshot_guard_percent: 20,
            staff_phones: vec!["mobile".into()],
            coupling: "review".into(),
            staff_retention_days: 200,
            year_records_kept_years: 3,
            composite_groups_lead: true,
            suggestion_detail: "notice".into(),
            group_mapping: serde_json::json!([]),
            first_run_at: None,
            last_sync_at: None,
            created_at: None,
            updated_at: None,
        };
        let m = link_message(&args(&["--retention-days", "30"]), Some(&cur));
        assert_eq!(m["default_staff_role"], "Juf");
        assert_eq!(m["intake_weeks_ahead"], 6);
        assert_eq!(m["retention_days"], 30);
        assert_eq!(m["link_staff_to_groups"], false);
        assert_eq!(
            m["snapshot_guard_percent"], 20,
            "kept, not reset to the default"
        );
        assert_eq!(m["staff_phones"], serde_json::json!(["mobile"]));
        assert_eq!(m["coupling"], "review", "kept");
        assert_eq!(m["staff_retention_days"], 200, "kept");
        assert_eq!(m["year_records_kept_years"], 3, "kept");
        let m = link_message(&args(&["--coupling", "auto"]), Some(&cur));
        assert_eq!(m["coupling"], "auto");
        assert_eq!(m["composite_groups_lead"], true, "kept");
        let m = link_message(&args(&["--composite-groups-lead", "false"]), Some(&cur));
        assert_eq!(m["composite_groups_lead"], false);
        assert_eq!(m["suggestion_detail"], "notice", "kept");
        let m = link_message(&args(&["--suggestion-detail", "full"]), Some(&cur));
        assert_eq!(m["suggestion_detail"], "full");
        let m = link_message(&args(&["--intake-weeks-ahead", "off"]), Some(&cur));
        assert!(m["intake_weeks_ahead"].is_null());
        let m = link_message(&args(&["--staff-phones", "none"]), Some(&cur));
        assert_eq!(m["staff_phones"], serde_json::json!([]));
        let m = link_message(&args(&["--staff-phones", "phone,mobile"]), Some(&cur));
        assert_eq!(m["staff_phones"], serde_json::json!(["phone", "mobile"]));
        assert!(parse_staff_phones("fax").is_err());
        // A new school: absent options are null, so the rules' defaults apply.
        let m = link_message(&args(&[]), None);
        assert!(m["default_staff_role"].is_null());
        assert!(matches!(
            message::parse(&serde_json::to_vec(&m).unwrap()),
            Ok(Inbound::Link(_))
        ));
    }
}
