//! THE OPERATOR SURFACE: the clap command tree and one handler per command.
//! `main` parses, then hands over to [`dispatch`]. Commands print ids, LAS
//! keys, rule ids and field names; personal values only when asked for
//! (`--show-values`), as R12 asks of everything the worker emits.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use las_contracts::CouplingAction;
use tracing::info;

use crate::adapters::telemetry::LogFormat;
use crate::app::runtime::{self, open_store};
use crate::app::settings::{BrokerArgs, RunArgs, SecretUrl};

pub mod dlq;
pub mod events;
pub mod explain;
pub mod groups;
pub mod import;
pub mod profiles;
pub mod publish;
pub mod school;
pub mod snapshot;
pub mod suggestions;
pub mod tick;

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
    /// A queue of one's own on the sync events, as another service binds it:
    /// see what the worker announced.
    #[command(subcommand)]
    Events(crate::cli::events::EventsCommand),
    /// Profiles: coupling LAS records to existing portal profiles (R13,
    /// go-live) and the right to erasure (AVG art. 17).
    #[command(subcommand, visible_alias = "profiles")]
    Profile(ProfileCommand),
}

/// The LAS record a coupling decision is about (R13).
#[derive(Debug, Clone, clap::Args)]
pub struct CouplingRecordArgs {
    #[arg(long)]
    pub brin: String,
    #[arg(long, value_parser = ["student", "guardian", "staff"])]
    pub kind: String,
    #[arg(long)]
    pub las_key: String,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ProfileCommand {
    /// R13, "Niet gekoppelde profielen": the school's LAS records that wait
    /// for a coupling decision (kind, key, why, the matching portal profiles)
    /// and its portal profiles no LAS record has claimed (never synced), as JSON.
    #[command(
        after_help = "Example:\n  las-worker profiles unlinked --brin 12AB\n\nExit codes: 0 printed, 1 no such school, 2 error."
    )]
    Unlinked {
        #[arg(long)]
        brin: String,
    },
    /// R13: couple a waiting LAS record to an existing portal profile (same
    /// school and kind, not coupled yet): the LAS record is applied to it,
    /// its portal-only data and role stay. The same as a portal.coupling.v1
    /// message with action `couple`.
    #[command(
        after_help = "Example:\n  las-worker profiles couple --brin 12AB --kind guardian --las-key O2001 --profile-id 42\n\nExit codes: 0 coupled, 1 refused (the reason is printed), 2 error."
    )]
    Couple {
        #[command(flatten)]
        record: CouplingRecordArgs,
        /// The portal profile's id.
        #[arg(long)]
        profile_id: i64,
    },
    /// R13: give a waiting LAS record a new portal profile.
    #[command(
        after_help = "Example:\n  las-worker profiles create --brin 12AB --kind student --las-key L1001\n\nExit codes: 0 created, 1 refused, 2 error."
    )]
    Create {
        #[command(flatten)]
        record: CouplingRecordArgs,
    },
    /// R13: undo a wrong coupling. The portal profile keeps its data and role
    /// but loses the LAS key; the LAS record waits for a decision again.
    #[command(
        after_help = "Example:\n  las-worker profiles uncouple --brin 12AB --kind guardian --las-key O2001\n\nExit codes: 0 uncoupled, 1 refused, 2 error."
    )]
    Uncouple {
        #[command(flatten)]
        record: CouplingRecordArgs,
        /// Only when the LAS record is coupled to this portal profile.
        #[arg(long)]
        profile_id: Option<i64>,
    },
    /// Erase a profile's personal data now, with every copy (suggestions,
    /// e-mails), and deactivate it; the change journal keeps that it happened,
    /// without the data. The LAS brings the profile back only with a newer
    /// record. Asks for the LAS key again unless --yes is given.
    #[command(
        after_help = "Example:\n  las-worker profile erase --brin 12AB --kind student --las-key L1001\n\nExit codes: 0 erased, 1 no such profile or not confirmed, 2 error."
    )]
    Erase {
        #[arg(long)]
        brin: String,
        #[arg(long, value_parser = ["student", "guardian", "staff"])]
        kind: String,
        #[arg(long)]
        las_key: String,
        /// Do not ask: the request was checked elsewhere.
        #[arg(long)]
        yes: bool,
    },
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
    Configure(Box<crate::cli::school::ConfigureArgs>),
    /// A school's link settings as JSON, with first_run_at and last_sync_at
    /// (to the minute) (exit code 1 and no output when the school is not
    /// linked).
    #[command(after_help = "Example:\n  las-worker school show --brin 12AB")]
    Show {
        #[arg(long)]
        brin: String,
    },
    /// Schools that sent full snapshots before but completed none within the
    /// last HOURS hours (the `LasSchoolsSnapshotOverdue` alert), oldest
    /// first. JSON lines: brin, last_snapshot_completed_at, last_sync_at.
    #[command(after_help = "Example:\n  las-worker school overdue --hours 26")]
    Overdue {
        #[arg(long, env = "SNAPSHOT_OVERDUE_HOURS", default_value_t = 26)]
        hours: u32,
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
        Command::Show(args) => profiles::show(db, &args).await,
        Command::Summary => profiles::summary(db).await,
        Command::Publish(args) => publish::run(args).await,
        Command::Tick(args) => tick::run(db, &args).await,
        Command::Groups(GroupsCommand::Leftovers { brin }) => groups::leftovers(db, &brin).await,
        Command::School(cmd) => school::run(db, cmd).await,
        Command::Suggestions(cmd) => suggestions::run(db, cmd).await,
        Command::Snapshot(cmd) => snapshot::run(db, cmd).await,
        Command::Import(args) => {
            // A dry run writes nothing, not even a database or its schema.
            let store = open_store(db, 2, !args.dry_run)
                .await?
                .with_portal_base_url(args.portal_base_url.clone());
            if !args.dry_run {
                store.migrate().await?;
            }
            import::run(&store, &args).await
        }
        Command::Explain(args) => {
            let store = open_store(db, 1, false).await?;
            explain::run(store.pool(), &args).await
        }
        Command::Journal(cmd) => {
            let store = open_store(db, 1, false).await?;
            explain::journal(store.pool(), &cmd).await
        }
        Command::Dlq(cmd) => dlq::run(&cmd).await,
        Command::Events(cmd) => events::run(&cmd).await,
        Command::Profile(ProfileCommand::Unlinked { brin }) => profiles::unlinked(db, &brin).await,
        Command::Profile(ProfileCommand::Couple { record, profile_id }) => {
            profiles::decide(db, &record, CouplingAction::Couple, Some(profile_id)).await
        }
        Command::Profile(ProfileCommand::Create { record }) => {
            profiles::decide(db, &record, CouplingAction::Create, None).await
        }
        Command::Profile(ProfileCommand::Uncouple { record, profile_id }) => {
            profiles::decide(db, &record, CouplingAction::Uncouple, profile_id).await
        }
        Command::Profile(ProfileCommand::Erase {
            brin,
            kind,
            las_key,
            yes,
        }) => profiles::erase(db, &brin, &kind, &las_key, yes).await,
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
