//! Typed settings of the long-running worker: every setting is a flag with
//! an environment variable behind it and a default that works on a developer
//! machine. Validated at start; passwords never appear in Debug output or logs.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

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

/// Replaces the password part of `scheme://user:password@host` with `***`;
/// in a list of node URLs (`AMQP_URL` of a cluster, issue #17) in each.
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        return url
            .split(',')
            .map(|u| redact_one(u.trim()))
            .collect::<Vec<_>>()
            .join(",");
    }
    redact_one(url)
}

fn redact_one(url: &str) -> String {
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
    /// The portal's address, e.g. `https://ouderportaal.example`: suggestion
    /// e-mails link to `{PORTAL_BASE_URL}/suggestions/{id}` (R10). Unset:
    /// the e-mail names the suggestion's number without a link.
    #[arg(long, env = "PORTAL_BASE_URL")]
    pub portal_base_url: Option<String>,
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
        if let Some(u) = &self.portal_base_url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            return Err("PORTAL_BASE_URL must start with http:// or https://".into());
        }
        if self.mail_timeout_ms == 0 {
            return Err("MAIL_TIMEOUT_MS must be at least 1".into());
        }
        Ok(())
    }
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
    pub journal: JournalRetentionArgs,
    /// Publish the sync-event outbox on las.sync-events from this process.
    #[arg(long, env = "EVENTS_PUBLISH", default_value_t = true, action = clap::ArgAction::Set)]
    pub events_publish: bool,
    /// Run the daily job (R9 intake) at start and just after local midnight.
    #[arg(long, env = "DAILY_JOB", default_value_t = true, action = clap::ArgAction::Set)]
    pub daily_job: bool,
    /// Days a dead letter is kept (its body holds personal data, R12); the
    /// worker drops older ones and warns a week ahead. 0 keeps them for ever.
    #[arg(long, env = "DEAD_LETTER_RETENTION_DAYS", default_value_t = 30)]
    pub dead_letter_retention_days: u32,
    /// How often the worker sweeps the dead-letter queue for expired letters
    /// (milliseconds); 0 turns the sweep off.
    #[arg(
        long,
        env = "DEAD_LETTER_SWEEP_INTERVAL_MS",
        default_value_t = 3_600_000
    )]
    pub dead_letter_sweep_interval_ms: u64,
    /// How often to look for tables whose planner statistics are stale and
    /// `ANALYZE` them (autovacuum's threshold); 0 turns it off.
    #[arg(long, env = "DB_ANALYZE_INTERVAL_MS", default_value_t = 5000)]
    pub db_analyze_interval_ms: u64,
    /// A school that sent full snapshots before counts as overdue
    /// (`las_schools_snapshot_overdue`, `school overdue`) when none completed
    /// within this many hours.
    #[arg(long, env = "SNAPSHOT_OVERDUE_HOURS", default_value_t = 26)]
    pub snapshot_overdue_hours: u32,
    /// All of shutdown (the batches in flight, the relays' last round, the
    /// pool) shares this one deadline; keep it below the pod's
    /// terminationGracePeriodSeconds (30 s) so SIGKILL never comes first.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_MS", default_value_t = 25_000)]
    pub shutdown_timeout_ms: u64,
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
        if self.snapshot_overdue_hours == 0 {
            return Err("SNAPSHOT_OVERDUE_HOURS must be at least 1".into());
        }
        if !(1_000..=600_000).contains(&self.shutdown_timeout_ms) {
            return Err("SHUTDOWN_TIMEOUT_MS must be between 1000 and 600000".into());
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

/// Days the change journal is kept unless JOURNAL_RETENTION_DAYS says otherwise.
pub const DEFAULT_JOURNAL_RETENTION_DAYS: u32 = 90;

/// The journal retention setting, for `#[command(flatten)]` into the
/// consumer's arguments (the daily job prunes with it).
#[derive(Debug, Clone, Args)]
pub struct JournalRetentionArgs {
    /// Days the change journal (`explain`) is kept; the daily job deletes
    /// older entries. 0 keeps it forever.
    #[arg(long, env = "JOURNAL_RETENTION_DAYS", default_value_t = DEFAULT_JOURNAL_RETENTION_DAYS)]
    pub journal_retention_days: u32,
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
    fn every_node_of_a_cluster_url_is_redacted() {
        let u: SecretUrl =
            "amqps://w:pw1@rmq-0:5671/v, amqps://w:pw2@rmq-1:5671/v,amqps://w:pw3@rmq-2:5671/v"
                .parse()
                .expect("url");
        let shown = format!("{u:?} {u}");
        for pw in ["pw1", "pw2", "pw3"] {
            assert!(!shown.contains(pw), "{shown}");
        }
        assert_eq!(
            u.redacted(),
            "amqps://w:***@rmq-0:5671/v,amqps://w:***@rmq-1:5671/v,amqps://w:***@rmq-2:5671/v"
        );
    }
}
