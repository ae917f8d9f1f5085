//! Typed configuration: every setting is a flag with an environment variable
//! behind it and a default that works on a developer machine. Validated at
//! start; passwords never appear in Debug output or logs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// A connection URL whose password is redacted wherever it is shown.
#[derive(Clone)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl std::str::FromStr for SecretUrl {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains("://") {
            return Err("expected a URL such as scheme://user:password@host:port/path".into());
        }
        Ok(SecretUrl(s.to_owned()))
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl std::fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Replaces the password part of `scheme://user:password@host` with `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
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
    Import(crate::ops::import::ImportArgs),
    /// The decisions the import rules took for one profile or group, oldest
    /// first, from the change journal (rule ids and field names, no values).
    #[command(
        after_help = "Example:\n  las-worker explain --brin 12AB --kind guardian --las-key O2001\n\nExit codes: 0 printed, 1 no school or nothing in the journal, 2 error."
    )]
    Explain(crate::ops::explain::ExplainArgs),
    /// The change journal behind `explain`.
    #[command(subcommand)]
    Journal(crate::ops::explain::JournalCommand),
    /// Inspect, replay and purge dead letters (queue las-worker.dead-letter).
    #[command(subcommand)]
    Dlq(crate::ops::dlq::DlqCommand),
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
    Configure(crate::ops::school::ConfigureArgs),
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

/// A secret value (an API token): never shown.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

#[derive(Debug, Clone, Args)]
pub struct MailArgs {
    /// Base URL of the HTTP e-mail API (`POST {url}/messages`). Unset: e-mails
    /// are written as .eml files into MAIL_DIR.
    #[arg(long, env = "MAIL_API_URL")]
    pub mail_api_url: Option<String>,
    /// Bearer token of the e-mail API (never logged).
    #[arg(long, env = "MAIL_API_TOKEN", hide_env_values = true)]
    pub mail_api_token: Option<Secret>,
    /// Sender address of suggestion e-mails.
    #[arg(
        long,
        env = "MAIL_FROM",
        default_value = "Ouderportaal <noreply@ouderportaal.example>"
    )]
    pub mail_from: String,
    /// Directory for .eml files when no API is configured.
    #[arg(long, env = "MAIL_DIR", default_value = "mail-out")]
    pub mail_dir: std::path::PathBuf,
    /// Time-out of one call to the e-mail API.
    #[arg(long, env = "MAIL_TIMEOUT_MS", default_value_t = 10_000)]
    pub mail_timeout_ms: u64,
    /// Run the e-mail dispatcher in this process.
    #[arg(long, env = "MAIL_DISPATCH", default_value_t = true, action = clap::ArgAction::Set)]
    pub mail_dispatch: bool,
}

impl MailArgs {
    pub fn validate(&self) -> Result<(), String> {
        if self.mail_api_url.is_some() && self.mail_api_token.is_none() {
            return Err("MAIL_API_URL is set but MAIL_API_TOKEN is not".into());
        }
        if let Some(u) = &self.mail_api_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err("MAIL_API_URL must start with http:// or https://".into());
        }
        if self.mail_timeout_ms == 0 {
            return Err("MAIL_TIMEOUT_MS must be at least 1".into());
        }
        Ok(())
    }
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
pub struct BrokerArgs {
    /// RabbitMQ URL; the vhost is the URL path (`%2f` is `/`).
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: SecretUrl,
    /// Deliveries of one message before the broker dead-letters it (x-delivery-limit
    /// on the worker's quorum queues; every process that declares them must agree).
    #[arg(long, env = "DELIVERY_LIMIT", default_value_t = 20)]
    pub delivery_limit: i64,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Address of the HTTP endpoints /metrics, /healthz and /readyz.
    #[arg(long, env = "METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: SocketAddr,
    /// Unacknowledged deliveries the broker may send ahead (per queue).
    #[arg(long, env = "PREFETCH", default_value_t = 1000)]
    pub prefetch: u16,
    /// Messages applied in one transaction at most.
    #[arg(long, env = "BATCH_SIZE", default_value_t = 400)]
    pub batch_size: usize,
    /// How long a batch waits to fill before it is applied anyway.
    #[arg(long, env = "BATCH_MAX_WAIT_MS", default_value_t = 20)]
    pub batch_max_wait_ms: u64,
    /// Batches of one queue applied at the same time, each in its own
    /// transaction on its own connection; acknowledgements stay in delivery
    /// order. 1: strictly one after the other.
    #[arg(long, env = "BATCH_CONCURRENCY", default_value_t = 3)]
    pub batch_concurrency: usize,
    /// Database connections in the pool.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 8)]
    pub db_max_connections: u32,
    /// Pin "today" (YYYY-MM-DD) instead of the local date in Europe/Amsterdam:
    /// for tests and demos of the intake rules (R9). Never set in production.
    #[arg(long, env = "LAS_TODAY")]
    pub today: Option<chrono::NaiveDate>,
    #[command(flatten)]
    pub mail: MailArgs,
    #[command(flatten)]
    pub journal: crate::ops::JournalRetentionArgs,
    /// Publish the sync-event outbox on las.sync-events from this process.
    #[arg(long, env = "EVENTS_PUBLISH", default_value_t = true, action = clap::ArgAction::Set)]
    pub events_publish: bool,
    /// Run the daily job (R9 intake) at start and just after local midnight.
    #[arg(long, env = "DAILY_JOB", default_value_t = true, action = clap::ArgAction::Set)]
    pub daily_job: bool,
    /// How often to look for tables whose planner statistics are stale and
    /// `ANALYZE` them (autovacuum's threshold); 0 turns it off.
    #[arg(long, env = "DB_ANALYZE_INTERVAL_MS", default_value_t = 5000)]
    pub db_analyze_interval_ms: u64,
}

impl RunArgs {
    /// Checks the settings against each other; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.prefetch == 0 {
            return Err("PREFETCH must be at least 1".into());
        }
        if self.batch_size == 0 || self.batch_size > 5000 {
            return Err("BATCH_SIZE must be between 1 and 5000".into());
        }
        if self.batch_size > self.prefetch as usize {
            return Err(format!(
                "BATCH_SIZE ({}) is larger than PREFETCH ({}): a batch could never fill; raise PREFETCH or lower BATCH_SIZE",
                self.batch_size, self.prefetch
            ));
        }
        if self.batch_max_wait_ms > 60_000 {
            return Err("BATCH_MAX_WAIT_MS must be at most 60000".into());
        }
        if self.broker.delivery_limit < 1 {
            return Err("DELIVERY_LIMIT must be at least 1".into());
        }
        if self.db_max_connections == 0 {
            return Err("DB_MAX_CONNECTIONS must be at least 1".into());
        }
        if self.db_analyze_interval_ms != 0 && self.db_analyze_interval_ms < 100 {
            return Err("DB_ANALYZE_INTERVAL_MS must be 0 (off) or at least 100".into());
        }
        if !(1..=16).contains(&self.batch_concurrency) {
            return Err("BATCH_CONCURRENCY must be between 1 and 16".into());
        }
        // Two queues with their batches, plus the e-mail dispatcher, the event
        // publisher and the daily job.
        let needed = 2 * self.batch_concurrency as u32 + 2;
        if self.db_max_connections < needed {
            return Err(format!(
                "DB_MAX_CONNECTIONS ({}) is too small for BATCH_CONCURRENCY {}: at least {needed} (2 queues x batches + 2)",
                self.db_max_connections, self.batch_concurrency
            ));
        }
        self.mail.validate()?;
        Ok(())
    }

    pub fn batch_max_wait(&self) -> Duration {
        Duration::from_millis(self.batch_max_wait_ms)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact("postgres://app:s3cr3t@db/portal"),
            "postgres://app:***@db/portal"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1/x"),
            "postgres://postgres@127.0.0.1/x"
        );
        let u: SecretUrl = "postgres://app:s3cr3t@db/portal".parse().expect("url");
        assert!(!format!("{u:?} {u}").contains("s3cr3t"));
    }

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
