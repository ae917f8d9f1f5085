//! THE OPERATOR SURFACE: the clap command tree and one handler per command.
//! `main` parses, then hands over to [`dispatch`]. Commands print ids, LAS
//! keys, rule ids and field names; personal values only when asked for
//! (`--show-values`), as R12 asks of everything the worker emits.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::bail;
use clap::{Args, Parser, Subcommand};
use tracing::info;

use crate::adapters::telemetry::LogFormat;
use crate::app::clock::local_today;
use crate::app::runtime::{self, open_store};
use crate::app::settings::{BrokerArgs, RunArgs, SecretUrl};
use crate::domain::model::ProfileKind;

pub mod dlq;
pub mod explain;
pub mod import;
pub mod publish;
pub mod school;

/// How a command prints its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// Plain lines for people.
    #[default]
    Text,
    /// JSON lines for scripts.
    Json,
}

/// Prints one JSON value on its own line.
pub(crate) fn json_line<T: serde::Serialize>(
    out: &mut impl std::io::Write,
    value: &T,
) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, value)?;
    out.write_all(b"\n")
}

#[derive(Debug, Parser)]
#[command(
    name = "las-worker",
    version,
    about = "Keeps school-parent portals in sync with ParnasSys and ESIS (LAS -> portal)."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Common {
    /// PostgreSQL URL of the portal database.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/las_worker",
        global = true
    )]
    pub database_url: SecretUrl,
    /// Log format: json (default, for log shippers) or pretty.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `las_worker=debug`.
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the consumer: apply LAS changes and portal requests from RabbitMQ.
    #[command(
        after_help = "Example:\n  AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f las-worker run"
    )]
    Run(RunArgs),
    /// Create the database if needed and apply the migrations, then exit.
    Migrate,
    /// Print the portal profile for one LAS key as JSON (exit 1 when there is none).
    #[command(
        after_help = "Example:\n  las-worker show --brin 12AB --kind guardian --las-key G-1001"
    )]
    Show(ShowArgs),
    /// Publish JSON messages (one per file, or one per line in .ndjson files) with publisher confirms.
    #[command(
        after_help = "Example:\n  las-worker publish contracts/examples/link.parnassys.json contracts/examples/school-12AB.ndjson"
    )]
    Publish(PublishArgs),
    /// Print profile counts per school, kind and status.
    Summary,
    /// Run the daily job now (R9: import children whose intake window opened,
    /// move 4-year-olds from intake to their groups). Idempotent.
    #[command(after_help = "Examples:\n  las-worker tick\n  las-worker tick --date 2027-03-01")]
    Tick(TickArgs),
    /// Portal groups (R7).
    #[command(subcommand)]
    Groups(GroupsCommand),
    /// A school's link (R6) and suggestion recipients (R10).
    #[command(subcommand)]
    School(SchoolCommand),
    /// Suggestions from parents' edits (R10).
    #[command(subcommand)]
    Suggestions(SuggestionsCommand),
    /// Full snapshots and the deletion guard (R12).
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Apply a file of LAS messages (.json: one, .ndjson: one per line) through
    /// the rules without a broker, or --dry-run it: what would change and why.
    #[command(
        after_help = "Examples:\n  las-worker import contracts/examples/link.parnassys.json\n  las-worker import --dry-run contracts/examples/school-12AB.ndjson\n  las-worker import --dry-run --format json --show-values export.ndjson\n  las-worker import export.ndjson\n\nExit codes: 0 every line applied (or duplicate/stale), 1 some lines rejected (listed with line number and reason), 2 usage, file or database error."
    )]
    Import(crate::cli::import::ImportArgs),
    /// The decisions the import rules took for one profile or group, oldest
    /// first, from the change journal (rule ids and field names, no values).
    #[command(
        after_help = "Example:\n  las-worker explain --brin 12AB --kind guardian --las-key O2001\n\nExit codes: 0 printed, 1 no school or nothing in the journal, 2 error."
    )]
    Explain(crate::cli::explain::ExplainArgs),
    /// The change journal behind `explain`.
    #[command(subcommand)]
    Journal(crate::cli::explain::JournalCommand),
    /// Inspect, replay and purge dead letters (queue las-worker.dead-letter).
    #[command(subcommand)]
    Dlq(crate::cli::dlq::DlqCommand),
}

#[derive(Debug, Clone, Subcommand)]
pub enum SchoolCommand {
    /// Who receives suggestion e-mails: active link administrators and users
    /// with the notify-contact-changes right. JSON lines.
    #[command(after_help = "Example:\n  las-worker school recipients --brin 12AB")]
    Recipients {
        #[arg(long)]
        brin: String,
    },
    /// Link a school to its LAS environment or change its link settings (R6),
    /// as a portal.link.v1 message would. Options left out keep their value.
    #[command(
        after_help = "Examples:\n  las-worker school configure --brin 12AB --system parnassys --environment-id parnassys-12AB-prod\n  las-worker school configure --brin 34CD --system esis --environment-id esis-34CD --label \"BasisOnline Ouderportaal\" --intake-weeks-ahead 6\n\nExit codes: 0 applied, 1 refused (R6: another LAS environment, ESIS label), 2 invalid option or error."
    )]
    Configure(crate::cli::school::ConfigureArgs),
    /// A school's link settings as JSON, with first_run_at and last_sync_at
    /// (exit code 1 and no output when the school is not linked).
    #[command(after_help = "Example:\n  las-worker school show --brin 12AB")]
    Show {
        #[arg(long)]
        brin: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SnapshotCommand {
    /// A school's snapshots, newest first, with why a held one is held. JSON lines.
    #[command(after_help = "Example:\n  las-worker snapshot list --brin 12AB")]
    List {
        #[arg(long)]
        brin: String,
    },
    /// Apply the school's held snapshot: deactivate the profiles it did not
    /// include, as they stand now. Exit code 1 when nothing is held.
    #[command(after_help = "Example:\n  las-worker snapshot release --brin 12AB")]
    Release {
        #[arg(long)]
        brin: String,
    },
    /// Drop the school's held snapshot: nothing is deactivated. Exit code 1 when nothing is held.
    #[command(after_help = "Example:\n  las-worker snapshot discard --brin 12AB")]
    Discard {
        #[arg(long)]
        brin: String,
    },
}

#[derive(Debug, Clone, Subcommand)]
pub enum SuggestionsCommand {
    /// Suggestions of a school with their e-mail state, newest first. JSON lines.
    #[command(after_help = "Example:\n  las-worker suggestions list --brin 12AB --status open")]
    List {
        #[arg(long)]
        brin: String,
        #[arg(long, value_parser = ["open", "resolved", "discarded"])]
        status: Option<String>,
    },
    /// Discard an open suggestion (the school decided against it); its unsent
    /// e-mails are cancelled. Exit code 1 when there is no such open suggestion.
    #[command(
        after_help = "Example:\n  las-worker suggestions discard --id 42 --reason \"school contacted the parent\""
    )]
    Discard {
        #[arg(long)]
        id: i64,
        #[arg(long, default_value = "discarded by an operator")]
        reason: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct TickArgs {
    /// The school-local date to run for (default: today in Europe/Amsterdam).
    #[arg(long)]
    pub date: Option<chrono::NaiveDate>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum GroupsCommand {
    /// Portal groups no LAS group feeds any more: removed in the LAS or not
    /// mapped at the first run. Never deleted; printed as JSON lines.
    #[command(after_help = "Example:\n  las-worker groups leftovers --brin 12AB")]
    Leftovers {
        #[arg(long)]
        brin: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[arg(long)]
    pub brin: String,
    #[arg(long, value_parser = ["student", "guardian", "staff"])]
    pub kind: String,
    #[arg(long)]
    pub las_key: String,
}

#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// JSON files (one message each) or NDJSON files (one message per line).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = &cli.common.database_url;
    match cli.command {
        Command::Run(args) => runtime::run(db, args).await,
        Command::Migrate => {
            let store = open_store(db, 2, true).await?;
            store.migrate().await?;
            info!(database = %db, "migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Show(args) => {
            let store = open_store(db, 1, false).await?;
            let Some(kind) = ProfileKind::parse(&args.kind) else {
                bail!("unknown kind {}", args.kind)
            };
            match store.show_profile(&args.brin, kind, &args.las_key).await? {
                Some(view) => {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(ExitCode::from(1)),
            }
        }
        Command::Publish(args) => publish::run(args).await,
        Command::Tick(args) => {
            let store = open_store(db, 1, false).await?;
            let today = args.date.unwrap_or_else(local_today);
            let report = store.run_daily(today, true).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Groups(GroupsCommand::Leftovers { brin }) => {
            let store = open_store(db, 1, false).await?;
            for l in store.leftovers(&brin).await? {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::School(SchoolCommand::Recipients { brin }) => {
            let store = open_store(db, 1, false).await?;
            match store.recipients(&brin).await? {
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
        Command::Suggestions(SuggestionsCommand::List { brin, status }) => {
            let store = open_store(db, 1, false).await?;
            for s in store.suggestions(&brin, status.as_deref()).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Suggestions(SuggestionsCommand::Discard { id, reason }) => {
            let store = open_store(db, 1, false).await?;
            if store.discard_suggestion(id, &reason).await? {
                println!("suggestion {id} discarded");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no open suggestion with id {id}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Snapshot(SnapshotCommand::List { brin }) => {
            let store = open_store(db, 1, false).await?;
            for s in store.snapshots(&brin).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(
            cmd @ (SnapshotCommand::Release { .. } | SnapshotCommand::Discard { .. }),
        ) => {
            let (brin, release) = match cmd {
                SnapshotCommand::Release { brin } => (brin, true),
                SnapshotCommand::Discard { brin } | SnapshotCommand::List { brin } => (brin, false),
            };
            let store = open_store(db, 1, false).await?;
            match store.resolve_held_snapshot(&brin, release).await? {
                Some((id, n, _)) if release => {
                    info!(brin = %brin, snapshot_id = %id, deactivated = n, "held snapshot released by an operator");
                    println!("snapshot {id} released: {n} profile(s) deactivated");
                    Ok(ExitCode::SUCCESS)
                }
                Some((id, _, _)) => {
                    info!(brin = %brin, snapshot_id = %id, "held snapshot discarded by an operator");
                    println!("snapshot {id} discarded: nothing deactivated");
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("BRIN {brin} has no held snapshot");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Summary => {
            let store = open_store(db, 1, false).await?;
            println!(
                "{:<6} {:<9} {:<12} {:>6}",
                "brin", "kind", "status", "count"
            );
            for (brin, kind, status, n) in store.summary().await? {
                println!("{brin:<6} {kind:<9} {status:<12} {n:>6}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import(args) => {
            // A dry run writes nothing, not even a database or its schema.
            let store = open_store(db, 2, !args.dry_run).await?;
            if !args.dry_run {
                store.migrate().await?;
            }
            crate::cli::import::run(&store, &args).await
        }
        Command::Explain(args) => {
            let store = open_store(db, 1, false).await?;
            crate::cli::explain::run(store.pool(), &args).await
        }
        Command::Journal(cmd) => {
            let store = open_store(db, 1, false).await?;
            crate::cli::explain::journal(store.pool(), &cmd).await
        }
        Command::Dlq(cmd) => crate::cli::dlq::run(&cmd).await,
        Command::School(SchoolCommand::Configure(args)) => {
            let store = open_store(db, 1, true).await?;
            store.migrate().await?;
            let today = local_today();
            crate::cli::school::configure(&store, &args, today).await
        }
        Command::School(SchoolCommand::Show { brin }) => {
            let store = open_store(db, 1, false).await?;
            crate::cli::school::show(&store, &brin).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_larger_than_prefetch_is_refused() {
        let cli = Cli::try_parse_from([
            "las-worker",
            "run",
            "--prefetch",
            "10",
            "--batch-size",
            "50",
        ])
        .expect("parses");
        let Command::Run(run) = cli.command else {
            panic!("run expected")
        };
        assert!(run.validate().is_err());
    }

    #[test]
    fn api_token_is_never_shown() {
        let cli = Cli::try_parse_from([
            "las-worker",
            "run",
            "--mail-api-url",
            "https://mail.example",
            "--mail-api-token",
            "tok-123",
        ])
        .expect("parses");
        assert!(!format!("{cli:?}").contains("tok-123"));
        let Command::Run(run) = cli.command else {
            panic!("run expected")
        };
        assert!(run.validate().is_ok());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
