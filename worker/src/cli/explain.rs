//! `las-worker explain`: why a profile (or group) looks the way it does, from
//! the change journal (rule ids and field names only, never values), and the
//! journal's retention: `las-worker journal prune`.

use std::process::ExitCode;

use clap::{Args, Subcommand};
use serde::Serialize;
use sqlx::PgPool;

use super::{OutputFormat, json_line};
use crate::adapters::db::journal;
use crate::app::settings::DEFAULT_JOURNAL_RETENTION_DAYS;

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    #[arg(long)]
    pub brin: String,
    #[arg(long, value_parser = ["student", "guardian", "staff", "group"])]
    pub kind: String,
    #[arg(long)]
    pub las_key: String,
    /// Output: text for people, json for scripts (one JSON line per message).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Subcommand)]
pub enum JournalCommand {
    /// Delete change-journal entries older than the retention period
    /// (JOURNAL_RETENTION_DAYS, default 90 days). The daily job does this too.
    #[command(
        after_help = "Examples:\n  las-worker journal prune\n  las-worker journal prune --days 30"
    )]
    Prune(JournalPruneArgs),
}

#[derive(Debug, Clone, Args)]
pub struct JournalPruneArgs {
    /// Keep this many days of journal; older entries are deleted.
    #[arg(
        long,
        env = "JOURNAL_RETENTION_DAYS",
        default_value_t = DEFAULT_JOURNAL_RETENTION_DAYS,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    pub days: u32,
}

/// `las-worker journal ...`.
pub async fn journal(pool: &PgPool, cmd: &JournalCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        JournalCommand::Prune(args) => {
            let n = journal::prune(pool, args.days).await?;
            println!(
                "deleted {n} change-journal entries older than {} days",
                args.days
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// One applied message in the history of a profile.
#[derive(Debug, Serialize)]
struct Entry {
    message_id: uuid::Uuid,
    applied_at: chrono::DateTime<chrono::Utc>,
    version: i64,
    /// Rule ids that fired, in rule order.
    rules: Vec<String>,
    /// Field names touched (never their values).
    fields: Vec<String>,
    /// The decisions as recorded: `R2:cleared:phone`.
    decisions: Vec<String>,
    /// One sentence per decision.
    explanation: Vec<String>,
}

/// `las-worker explain`: exit code 1 when the journal has nothing for it.
pub async fn run(pool: &PgPool, args: &ExplainArgs) -> anyhow::Result<ExitCode> {
    let school = journal::school_id(pool, &args.brin).await?;
    let Some(school_id) = school else {
        eprintln!("no school with BRIN {}", args.brin);
        return Ok(ExitCode::from(1));
    };
    let rows = journal::history(pool, school_id, &args.kind, args.las_key.trim()).await?;
    if rows.is_empty() {
        eprintln!(
            "no decisions recorded for {} {} of BRIN {} (the journal keeps JOURNAL_RETENTION_DAYS days, {} by default)",
            args.kind, args.las_key, args.brin, DEFAULT_JOURNAL_RETENTION_DAYS
        );
        return Ok(ExitCode::from(1));
    }
    let entries: Vec<Entry> = rows
        .into_iter()
        .map(|(message_id, applied_at, version, decisions)| {
            entry(message_id, applied_at, version, decisions)
        })
        .collect();
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.format {
        OutputFormat::Json => {
            for e in &entries {
                json_line(&mut out, e)?;
            }
        }
        OutputFormat::Text => {
            use std::io::Write;
            writeln!(
                out,
                "{} {} of BRIN {}: {} applied message(s), oldest first",
                args.kind,
                args.las_key.trim(),
                args.brin,
                entries.len()
            )?;
            for e in &entries {
                writeln!(
                    out,
                    "{}  v{}  message {}  {}",
                    e.applied_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    e.version,
                    e.message_id,
                    if e.rules.is_empty() {
                        "(no rule fired)".to_owned()
                    } else {
                        e.rules.join(", ")
                    }
                )?;
                for s in &e.explanation {
                    writeln!(out, "    {s}")?;
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn entry(
    message_id: uuid::Uuid,
    applied_at: chrono::DateTime<chrono::Utc>,
    version: i64,
    decisions: Vec<String>,
) -> Entry {
    let parsed: Vec<(&str, &str, Option<&str>)> = decisions
        .iter()
        .map(|d| {
            let mut parts = d.splitn(3, ':');
            (
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
                parts.next(),
            )
        })
        .collect();
    let context = Context {
        created: parsed.iter().any(|(r, a, _)| *r == "R1" && *a == "created"),
        invalid_email: parsed.iter().any(|(_, a, _)| *a == "invalid_email"),
    };
    let mut rules: Vec<String> = parsed.iter().map(|(r, _, _)| (*r).to_owned()).collect();
    rules.sort_by_key(|r| r.trim_start_matches('R').parse::<u32>().unwrap_or(u32::MAX));
    rules.dedup();
    let mut fields: Vec<String> = Vec::new();
    for (_, _, f) in &parsed {
        if let Some(f) = f
            && !fields.iter().any(|x| x == f)
        {
            fields.push((*f).to_owned());
        }
    }
    let explanation = parsed
        .iter()
        .map(|(r, a, f)| sentence(r, a, *f, context))
        .collect();
    Entry {
        message_id,
        applied_at,
        version,
        rules,
        fields,
        decisions,
        explanation,
    }
}

/// What else the same message decided, for the wording.
#[derive(Debug, Clone, Copy, Default)]
pub struct Context {
    /// The message created the profile (R1).
    pub created: bool,
    /// The LAS e-mail was not a valid address (R4).
    pub invalid_email: bool,
}

/// A decision in plain words: `R2: phone cleared (blank in the LAS)`.
pub fn sentence(rule: &str, action: &str, field: Option<&str>, context: Context) -> String {
    let f = field.unwrap_or("field");
    let text = match (rule, action) {
        ("R1", "created") => "profile created (new in the LAS)".to_owned(),
        ("R1", "overwritten") if context.created => format!("{f} set from the LAS"),
        ("R1", "overwritten") => format!("{f} changed (the LAS value replaces the portal's)"),
        ("R1", "reactivated") => "reactivated (back in the LAS)".to_owned(),
        ("R1", "groups_replaced") => "group memberships set to the LAS's".to_owned(),
        ("R2", "cleared") => format!("{f} cleared (blank in the LAS)"),
        ("R3", "cleared") => {
            format!("{f} cleared (phone numbers belong on the guardian, not the student)")
        }
        ("R3", "ignored") => format!("{f} not imported from this LAS (left as it is)"),
        ("R4", "kept") if context.invalid_email => {
            format!("{f} kept (the LAS address was not valid)")
        }
        ("R4", "kept") => format!("{f} kept (the LAS had none)"),
        ("R4", "invalid_email") => {
            format!("{f} in the LAS is not a valid address: treated as blank, not imported")
        }
        ("R5", "ignored") => format!("{f} is portal-only data: never changed by an import"),
        ("R6", "created") => "school linked".to_owned(),
        ("R6", "overwritten") => "link settings changed".to_owned(),
        ("R7", "year_group") => "became a portal year group".to_owned(),
        ("R7", "composite_group") => "became a composite group".to_owned(),
        ("R7", "mapped_to_year_group") => {
            "a class of one year group: its members are shown in that year group".to_owned()
        }
        ("R7", "composite_skipped") => {
            "composite group not shown (the school's esis_composite_groups is off)".to_owned()
        }
        ("R7", "first_run_mapped") => {
            "first run: mapped onto the school's existing portal group, which took the LAS name and kept its group-bound items"
                .to_owned()
        }
        ("R7", "groups_replanned") => {
            "planned again after the school changed esis_composite_groups".to_owned()
        }
        ("R7", "detached") => {
            "removed in the LAS: detached and emptied, never deleted (see groups leftovers)"
                .to_owned()
        }
        ("R8", "role_assigned") => "new staff: got the school's default role".to_owned(),
        ("R8", "groups_left_alone") => {
            "group memberships left alone (the school's link_staff_to_groups is off)".to_owned()
        }
        ("R9", "held_back") => "held back: under 4 and not yet in the intake window".to_owned(),
        ("R9", "placed_in_intake") => "placed in the intake group".to_owned(),
        ("R9", "promoted") => "turned 4: moved from the intake group to the LAS groups".to_owned(),
        ("R9", "stays_in_intake") => {
            "4 years old but without a LAS group yet: stays in the intake group".to_owned()
        }
        ("R10", "suggestion_opened") => format!("the parent's edit of {f} became a suggestion"),
        ("R10", "not_a_suggestion") => {
            "part of the parent's edit is no suggestion (portal-only or unchanged)".to_owned()
        }
        ("R12", "erased") => {
            "personal data erased on request (the right to erasure) and deactivated; the LAS brings it back only with a newer record".to_owned()
        }
        ("R13", "coupled") => {
            "coupled to the school's existing portal profile (its login, portal-only data and role stay)".to_owned()
        }
        ("R13", "awaiting_coupling") => {
            "waits for the school's coupling decision: not applied to any portal profile, not visible".to_owned()
        }
        ("R13", "create_decided") => {
            "the school decided this LAS record gets a new portal profile".to_owned()
        }
        ("R13", "uncoupled") => {
            "uncoupled by the school: the portal profile keeps its data, the LAS record waits again".to_owned()
        }
        ("R12", "deactivated") => {
            "deactivated (removed in the LAS) and out of all groups".to_owned()
        }
        (_, a) => match field {
            Some(f) => format!("{f} {}", a.replace('_', " ")),
            None => a.replace('_', " "),
        },
    };
    format!("{rule}: {text}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_name_rule_and_field() {
        assert_eq!(
            sentence("R2", "cleared", Some("phone"), Context::default()),
            "R2: phone cleared (blank in the LAS)"
        );
        assert_eq!(
            sentence("R4", "kept", Some("email"), Context::default()),
            "R4: email kept (the LAS had none)"
        );
        assert_eq!(
            sentence("R11", "something_new", None, Context::default()),
            "R11: something new"
        );
    }

    #[test]
    fn entry_lists_rules_and_fields() {
        let e = entry(
            uuid::Uuid::nil(),
            chrono::Utc::now(),
            2,
            vec![
                "R2:cleared:phone".into(),
                "R4:invalid_email:email".into(),
                "R4:kept:email".into(),
                "R10:suggestion_opened:city".into(),
            ],
        );
        assert_eq!(e.rules, ["R2", "R4", "R10"]);
        assert_eq!(e.fields, ["phone", "email", "city"]);
        assert_eq!(
            e.explanation[2],
            "R4: email kept (the LAS address was not valid)"
        );
    }
}
