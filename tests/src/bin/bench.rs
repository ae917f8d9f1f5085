//! `make bench` (issue #7): how close does las-worker drain a school's full
//! LAS export to the broker's own limit, with every message durably applied?
//!
//! One run, same queue type (quorum, `x-delivery-limit` 20, declared by
//! `las_worker::adapters::amqp::declare_topology`) and the same prefetch everywhere:
//!
//! * **raw** (a): a lapin consumer that only acknowledges, with the worker's
//!   ack pattern (one multiple ack per batch of `BATCH_SIZE`, or after
//!   `BATCH_MAX_WAIT_MS`), drains a copy of the load. The broker's limit.
//! * **floor** (a', issue #19): the simplest durable consumer: same queue,
//!   prefetch and batching, and per batch one multi-row `INSERT` of message
//!   id and body into a table with a primary key, `COMMIT`, one multiple
//!   ack; nothing else. The durable floor the worker is measured against
//!   (b/a' next to b/a).
//! * **batch** (b): `las-worker run` with its defaults (BATCH_SIZE 400,
//!   PREFETCH 1000) drains the load, from readiness to the last commit.
//! * **single** (c): the same with BATCH_SIZE 1, PREFETCH 1000 (per-message
//!   transactions) on a smaller load made by the same generator (same mix).
//! * **latency** (d): the worker with its defaults under a fixed offered rate
//!   (default 2,000 msg/s for 15 s), `emitted_at` = send time; the commit time
//!   of every message is taken from a `NOTIFY` that a trigger on
//!   `processed_messages` sends (PostgreSQL delivers it at commit). Run twice:
//!   at `BENCH_RATE` and (issue #19) at a third of what (b) drained in the
//!   same run, each with every process's CPU per message.
//! * **publish only** (issue #19): the offered publishing of the second
//!   latency run with no worker consuming, so the report can say how much
//!   of RabbitMQ's CPU there the producer alone causes.
//!
//! Every worker run has its own database and vhost; all of them, and the
//! worker processes, are removed at the end, also on failure or Ctrl-C. What
//! a run created is also written to `target/bench/leftovers/`, so
//! `bench --cleanup` (run by `make bench` on exit) can remove it after a
//! crash. Progress goes to stderr; the last line on stdout is one JSON object.
//!
//! Load (fixed seed): `las_e2e::load` (schools linked first, their exports
//! interleaved, then a wave of updates, removals, stale versions and
//! duplicates), shared with the cluster fault tests.
//!
//! Settings (flag, environment, default): `--messages`/`BENCH_MESSAGES`
//! (100k; `--scale`/`BENCH_SCALE=1m` for the 1,000,000-message drain),
//! `--schools`/`BENCH_SCHOOLS`, `--seed`/`BENCH_SEED` (7),
//! `--single-messages`/`BENCH_SINGLE_MESSAGES` (messages/50, 1k..2k),
//! `--rate`/`BENCH_RATE` (2000), `--latency-secs`/`BENCH_LATENCY_SECS` (15),
//! `--phases`/`BENCH_PHASES` (raw,floor,batch,single,latency), `LAS_WORKER_BIN`
//! (target/release/las-worker). Diagnostics: `BENCH_PERF=1` (or `all`)
//! records a `perf` profile of the worker (or the whole machine) during the
//! batch drain; `BENCH_DB_SET="name=value;..."` sets per-database settings
//! such as `log_min_duration_statement=0` on the worker databases;
//! `BENCH_RAW_TX=1` puts the raw consumer's channel in AMQP transaction mode
//! with a `tx.commit` per batch, as the worker settles, and `BENCH_RAW_BATCH=N`
//! sets its batch size; `BENCH_ANALYZE_SECS=N` runs `ANALYZE` every N s during the drains, as
//! autovacuum would on a server that has it on; `BENCH_REPLICAS=N` drains
//! the batch phase with N worker processes (what concurrency would gain).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, anyhow, bail, ensure};
use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use las_contracts::{CHANGES_QUEUE, DEAD_LETTER_QUEUE};
use las_e2e::load::{Load, Msg, TODAY, publish};
use las_e2e::{AMQP_BASE, PG_ADMIN_URL};
use serde_json::{Value, json};
use uuid::Uuid;

/// The worker's defaults (README "Configuration"); the raw consumer uses them too.
const PREFETCH: u16 = 1000;
const BATCH_SIZE: usize = 400;
const BATCH_CONCURRENCY: usize = 3;
const BATCH_MAX_WAIT: Duration = Duration::from_millis(20);
const DELIVERY_LIMIT: i64 = 20;

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Config {
    messages: usize,
    schools: Option<usize>,
    seed: u64,
    single_messages: usize,
    rate: u32,
    latency_secs: u64,
    phases: Vec<String>,
    /// BENCH_PERF: `1` records the worker during the batch drain, `all` the whole machine.
    perf: Option<String>,
    /// BENCH_ANALYZE_SECS: run ANALYZE on the worker database this often
    /// during drains (emulates autovacuum where the server has it off).
    analyze_every: Option<Duration>,
    /// BENCH_REPLICAS: worker processes for the batch drain (default 1; the
    /// targets are for one). Shows what concurrency would gain.
    replicas: usize,
    worker_bin: PathBuf,
    out_dir: PathBuf,
}

const PHASES: [&str; 5] = ["raw", "floor", "batch", "single", "latency"];

fn parse_count(s: &str) -> Result<usize> {
    let t = s.trim().to_ascii_lowercase().replace(['_', ','], "");
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1_000),
        Some('m') => (&t[..t.len() - 1], 1_000_000),
        _ => (t.as_str(), 1),
    };
    let n: f64 = num
        .parse()
        .with_context(|| format!("not a count: {s:?} (e.g. 100000, 100k, 1m)"))?;
    ensure!(n > 0.0, "count must be positive: {s:?}");
    Ok((n * mult as f64).round() as usize)
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

const USAGE: &str =
    "usage: bench [--messages N|--scale 1m] [--schools N] [--seed N] [--single-messages N]
             [--rate N] [--latency-secs N] [--phases raw,floor,batch,single,latency]
       bench --cleanup   (remove what an interrupted run left: workers, databases, vhosts)
Environment: BENCH_MESSAGES, BENCH_SCALE, BENCH_SCHOOLS, BENCH_SEED, BENCH_SINGLE_MESSAGES,
BENCH_RATE, BENCH_LATENCY_SECS, BENCH_PHASES, LAS_WORKER_BIN; diagnostics: BENCH_PERF=1|all
(perf profile of the batch drain), BENCH_DB_SET=\"name=value;...\" (per-database settings),
BENCH_ANALYZE_SECS=N (ANALYZE every N s during drains, like autovacuum),
BENCH_REPLICAS=N (N workers in the batch drain), BENCH_RAW_TX=1 (raw consumer in tx mode),
BENCH_RAW_BATCH=N (raw consumer's batch size).
See docs/performance.md.";

impl Config {
    fn from_args(args: &[String]) -> Result<Config> {
        let mut opts: HashMap<String, String> = HashMap::new();
        for (var, key) in [
            ("BENCH_MESSAGES", "messages"),
            ("BENCH_SCALE", "messages"),
            ("BENCH_SCHOOLS", "schools"),
            ("BENCH_SEED", "seed"),
            ("BENCH_SINGLE_MESSAGES", "single-messages"),
            ("BENCH_RATE", "rate"),
            ("BENCH_LATENCY_SECS", "latency-secs"),
            ("BENCH_PHASES", "phases"),
        ] {
            if let Ok(v) = std::env::var(var)
                && !v.trim().is_empty()
            {
                opts.insert(key.to_owned(), v);
            }
        }
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(name) = a.strip_prefix("--") else {
                bail!("unexpected argument {a:?}\n{USAGE}");
            };
            let (name, value) = match name.split_once('=') {
                Some((n, v)) => (n.to_owned(), v.to_owned()),
                None => (
                    name.to_owned(),
                    it.next()
                        .cloned()
                        .ok_or_else(|| anyhow!("--{name} needs a value\n{USAGE}"))?,
                ),
            };
            let key = if name == "scale" {
                "messages".to_owned()
            } else {
                name
            };
            ensure!(
                [
                    "messages",
                    "schools",
                    "seed",
                    "single-messages",
                    "rate",
                    "latency-secs",
                    "phases"
                ]
                .contains(&key.as_str()),
                "unknown option --{key}\n{USAGE}"
            );
            opts.insert(key, value);
        }
        let messages = match opts.get("messages") {
            Some(v) => parse_count(v)?,
            None => 100_000,
        };
        let single_messages = match opts.get("single-messages") {
            Some(v) => parse_count(v)?,
            // Per-message mode slows down as the tables grow (see
            // docs/performance.md), so it gets a small load of the same mix.
            None => (messages / 50).clamp(1_000, 2_000),
        };
        let phases: Vec<String> = match opts.get("phases") {
            Some(v) => v
                .split(',')
                .map(|p| p.trim().to_owned())
                .filter(|p| !p.is_empty())
                .collect(),
            None => PHASES.iter().map(|p| p.to_string()).collect(),
        };
        for p in &phases {
            ensure!(
                PHASES.contains(&p.as_str()),
                "unknown phase {p:?}; phases are {}",
                PHASES.join(",")
            );
        }
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        Ok(Config {
            messages,
            schools: opts.get("schools").map(|v| parse_count(v)).transpose()?,
            seed: opts
                .get("seed")
                .map(|v| v.parse())
                .transpose()
                .context("--seed")?
                .unwrap_or(7),
            single_messages,
            rate: opts
                .get("rate")
                .map(|v| parse_count(v).map(|n| n as u32))
                .transpose()?
                .unwrap_or(2_000),
            latency_secs: opts
                .get("latency-secs")
                .map(|v| v.parse())
                .transpose()
                .context("--latency-secs")?
                .unwrap_or(15),
            phases,
            perf: std::env::var("BENCH_PERF")
                .ok()
                .filter(|v| v == "1" || v == "all"),
            analyze_every: std::env::var("BENCH_ANALYZE_SECS")
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|s| *s > 0.0)
                .map(Duration::from_secs_f64),
            replicas: std::env::var("BENCH_REPLICAS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            worker_bin: std::env::var("LAS_WORKER_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|_| target.join("release").join("las-worker")),
            out_dir: target.join("bench"),
        })
    }

    fn has(&self, phase: &str) -> bool {
        self.phases.iter().any(|p| p == phase)
    }
}

fn say(msg: impl AsRef<str>) {
    eprintln!("bench: {}", msg.as_ref());
}

// ---------------------------------------------------------------------------
// Leftover ledger: what a run created, so `--cleanup` can remove it after a crash.
// ---------------------------------------------------------------------------

fn ledger_dir(cfg_out: &Path) -> PathBuf {
    cfg_out.join("leftovers")
}

fn ledger_add(out: &Path, kind: &str, name: &str) {
    let dir = ledger_dir(out);
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join(format!("{kind}-{name}")), name);
}

fn ledger_remove(out: &Path, kind: &str, name: &str) {
    let _ = std::fs::remove_file(ledger_dir(out).join(format!("{kind}-{name}")));
}

fn rabbitmqctl(args: &[&str]) -> Result<String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .context("running rabbitmqctl (install rabbitmq-server; run as root)")?;
    ensure!(
        out.status.success(),
        "rabbitmqctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn drop_database(name: &str) {
    let _ = Command::new("psql")
        .args([
            PG_ADMIN_URL,
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Whether `pid` is still the `las-worker run` this harness started from
/// `bin` (guards against a reused process id).
fn is_worker_process(pid: u32, bin: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| {
            let args: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.iter().any(|a| a == "run")
                && (args.first().is_some_and(|a| a == bin)
                    || args.iter().any(|a| a.contains("las-worker")))
        })
        .unwrap_or(false)
}

/// SIGTERM, then SIGKILL after `grace`; by pid, only a process this harness started.
fn terminate(pid: u32, bin: &str, grace: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if !is_worker_process(pid, bin) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `bench --cleanup`: removes what the ledger says an earlier run left behind.
fn cleanup_leftovers(out: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(ledger_dir(out)) else {
        return 0;
    };
    let mut files: Vec<(String, String)> = entries
        .flatten()
        .filter_map(|e| {
            let f = e.file_name().to_string_lossy().into_owned();
            let (kind, name) = f.split_once('-')?;
            Some((kind.to_owned(), name.to_owned()))
        })
        .collect();
    // Workers first, then what they used.
    files.sort_by_key(|(k, _)| match k.as_str() {
        "pid" => 0,
        "db" => 1,
        _ => 2,
    });
    let n = files.len();
    for (kind, name) in files {
        match kind.as_str() {
            "pid" => {
                let bin = std::fs::read_to_string(ledger_dir(out).join(format!("pid-{name}")))
                    .unwrap_or_default();
                if let Ok(pid) = name.parse::<u32>()
                    && is_worker_process(pid, &bin)
                {
                    say(format!("cleanup: stopping leftover worker {pid}"));
                    terminate(pid, &bin, Duration::from_secs(10));
                }
            }
            "db" => {
                say(format!("cleanup: dropping database {name}"));
                drop_database(&name);
            }
            "vhost" => {
                say(format!("cleanup: deleting vhost {name}"));
                let _ = rabbitmqctl(&["-q", "delete_vhost", &name]);
            }
            _ => {}
        }
        ledger_remove(out, &kind, &name);
    }
    n
}

// ---------------------------------------------------------------------------
// A world: database, vhost, worker. Drop removes all three.
// ---------------------------------------------------------------------------

struct World {
    tag: String,
    database: String,
    vhost: String,
    log_path: PathBuf,
    out: PathBuf,
    worker_bin: PathBuf,
    /// Running `las-worker run` processes (replicas) and their metrics ports.
    workers: Vec<(Child, u16)>,
    pool: Option<sqlx::PgPool>,
    with_database: bool,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl World {
    async fn new(cfg: &Config, tag: &str, with_database: bool) -> Result<World> {
        let id = Uuid::new_v4().simple().to_string()[..10].to_owned();
        let database = format!("lasw_bench_{tag}_{id}");
        let vhost = format!("lasw-bench-{tag}-{id}");
        std::fs::create_dir_all(&cfg.out_dir)?;
        let w = World {
            tag: tag.to_owned(),
            log_path: cfg.out_dir.join(format!("{tag}-worker.log")),
            database,
            vhost,
            out: cfg.out_dir.clone(),
            worker_bin: cfg.worker_bin.clone(),
            workers: Vec::new(),
            pool: None,
            with_database,
        };
        let _ = std::fs::remove_file(&w.log_path);
        if with_database {
            ledger_add(&w.out, "db", &w.database);
            let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.with_context(|| {
                format!("PostgreSQL at {PG_ADMIN_URL} (run `bash scripts/check-services.sh`)")
            })?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE DATABASE {}",
                w.database
            )))
            .execute(&admin)
            .await?;
            // Diagnostics only, e.g. BENCH_DB_SET="session_preload_libraries=auto_explain;
            // auto_explain.log_min_duration=20" (plans of slow statements in the server log).
            for setting in std::env::var("BENCH_DB_SET").unwrap_or_default().split(';') {
                if let Some((k, v)) = setting.split_once('=') {
                    sqlx::query(sqlx::AssertSqlSafe(format!(
                        "ALTER DATABASE {} SET {} = '{}'",
                        w.database,
                        k.trim(),
                        v.trim().replace('\'', "''")
                    )))
                    .execute(&admin)
                    .await?;
                }
            }
            admin.close().await;
        }
        ledger_add(&w.out, "vhost", &w.vhost);
        rabbitmqctl(&["-q", "add_vhost", &w.vhost])?;
        rabbitmqctl(&[
            "-q",
            "set_permissions",
            "-p",
            &w.vhost,
            "guest",
            ".*",
            ".*",
            ".*",
        ])?;
        // The topology exactly as the worker declares it.
        let conn = w.amqp().await?;
        let ch = conn.create_channel().await?;
        las_worker::adapters::amqp::declare_topology(&ch, DELIVERY_LIMIT).await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(w)
    }

    fn database_url(&self) -> String {
        // BENCH_DB_PARAMS: extra connection parameters of the measured worker,
        // e.g. `sslmode=disable`.
        match std::env::var("BENCH_DB_PARAMS") {
            Ok(p) if !p.is_empty() => {
                format!("postgres://postgres@127.0.0.1:5432/{}?{p}", self.database)
            }
            _ => format!("postgres://postgres@127.0.0.1:5432/{}", self.database),
        }
    }

    fn amqp_url(&self) -> String {
        format!("{AMQP_BASE}/{}", self.vhost)
    }

    async fn amqp(&self) -> Result<Connection> {
        Connection::connect(&self.amqp_url(), ConnectionProperties::default())
            .await
            .with_context(|| format!("RabbitMQ at {}", self.amqp_url()))
    }

    async fn pool(&mut self) -> Result<sqlx::PgPool> {
        if self.pool.is_none() {
            self.pool = Some(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(2)
                    .connect(&self.database_url())
                    .await?,
            );
        }
        self.pool.clone().ok_or_else(|| anyhow!("no pool"))
    }

    fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|(c, _)| c.id()).collect()
    }

    /// Starts one more `las-worker run`; returns when its `/readyz` answers 200.
    async fn spawn_worker(&mut self, env: &[(&str, String)]) -> Result<Instant> {
        let port = free_port()?;
        ensure!(
            self.worker_bin.exists(),
            "{} not found: build it with `cargo build --release -p las-worker` (or set LAS_WORKER_BIN)",
            self.worker_bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(&self.worker_bin);
        cmd.arg("run")
            .env("DATABASE_URL", self.database_url())
            .env("AMQP_URL", self.amqp_url())
            .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .env("LAS_TODAY", TODAY)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().context("starting las-worker")?;
        ledger_add(&self.out, "pid", &child.id().to_string());
        // The ledger file holds the program, so `--cleanup` recognises the process.
        let _ = std::fs::write(
            ledger_dir(&self.out).join(format!("pid-{}", child.id())),
            self.worker_bin.to_string_lossy().as_bytes(),
        );
        self.workers.push((child, port));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get(port, "/readyz").await {
                return Ok(Instant::now());
            }
            if let Some((child, _)) = self.workers.last_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.workers.pop();
                bail!(
                    "las-worker exited during start-up with {status}; log {}:\n{}",
                    self.log_path.display(),
                    tail(&self.log_path, 20)
                );
            }
            ensure!(
                Instant::now() < deadline,
                "las-worker not ready within 60 s; log {}:\n{}",
                self.log_path.display(),
                tail(&self.log_path, 20)
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// SIGTERM (a worker finishes its batch, acks and exits), SIGKILL after 30 s.
    fn stop_workers(&mut self) {
        for (mut child, _) in self.workers.drain(..) {
            let pid = child.id();
            if let Ok(None) = child.try_wait() {
                terminate(
                    pid,
                    &self.worker_bin.to_string_lossy(),
                    Duration::from_secs(30),
                );
            }
            let _ = child.wait();
            ledger_remove(&self.out, "pid", &pid.to_string());
        }
    }

    /// The samples of every running worker, concatenated (sums add up).
    async fn metrics(&self) -> Result<Prom> {
        let mut all = Vec::new();
        for (_, port) in &self.workers {
            let (status, body) = http_get(*port, "/metrics")
                .await
                .ok_or_else(|| anyhow!("worker /metrics not reachable"))?;
            ensure!(status == 200, "/metrics answered {status}");
            all.extend(Prom::parse(&body).0);
        }
        Ok(Prom(all))
    }

    async fn queue_depth(&self, queue: &str) -> Result<u32> {
        let conn = self.amqp().await?;
        let ch = conn.create_channel().await?;
        let q = ch
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = conn.close(200, "done".into()).await;
        Ok(q.message_count())
    }

    /// Publishes the links with the worker running and waits until all schools exist.
    async fn link(&mut self, links: &mut [Msg]) -> Result<()> {
        publish(&self.amqp_url(), links, 1000).await?;
        let pool = self.pool().await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schools")
                .fetch_one(&pool)
                .await
                .unwrap_or(0);
            if n as usize >= links.len() {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "only {n} of {} schools linked; log {}:\n{}",
                links.len(),
                self.log_path.display(),
                tail(&self.log_path, 20)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_workers();
        if let Some(pool) = self.pool.take() {
            drop(pool);
        }
        if self.with_database {
            drop_database(&self.database);
            ledger_remove(&self.out, "db", &self.database);
        }
        let _ = rabbitmqctl(&["-q", "delete_vhost", &self.vhost]);
        ledger_remove(&self.out, "vhost", &self.vhost);
        say(format!("{}: removed database, vhost and worker", self.tag));
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(5), las_e2e::http_get_port(port, path))
        .await
        .ok()
        .flatten()
}

// ---------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------

struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

struct Prom(Vec<Sample>);

impl Prom {
    fn parse(text: &str) -> Prom {
        let mut out = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((n, rest)) => {
                    let rest = rest.trim_end_matches('}');
                    let labels = rest
                        .split("\",")
                        .filter_map(|kv| {
                            let (k, v) = kv.split_once("=\"")?;
                            Some((k.trim().to_owned(), v.trim_end_matches('"').to_owned()))
                        })
                        .collect();
                    (n.to_owned(), labels)
                }
                None => (series.to_owned(), vec![]),
            };
            out.push(Sample {
                name,
                labels,
                value,
            });
        }
        Prom(out)
    }

    fn label<'a>(s: &'a Sample, key: &str) -> Option<&'a str> {
        s.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn sum(&self, name: &str) -> f64 {
        self.0
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Sum per value of one label.
    fn by(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == name) {
            *out.entry(Self::label(s, label).unwrap_or("").to_owned())
                .or_default() += s.value;
        }
        out
    }

    /// Cumulative buckets of a histogram, summed over its other labels.
    fn buckets(&self, name: &str, filter: Option<(&str, &str)>) -> Vec<(f64, f64)> {
        let mut by_le: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
        for s in self.0.iter().filter(|s| s.name == format!("{name}_bucket")) {
            if let Some((k, v)) = filter
                && Self::label(s, k) != Some(v)
            {
                continue;
            }
            let le = match Self::label(s, "le") {
                Some("+Inf") => f64::INFINITY,
                Some(v) => v.parse().unwrap_or(f64::INFINITY),
                None => continue,
            };
            let e = by_le.entry(le.to_bits()).or_insert((le, 0.0));
            e.1 += s.value;
        }
        let mut v: Vec<(f64, f64)> = by_le.into_values().collect();
        v.sort_by(|a, b| a.0.total_cmp(&b.0));
        v
    }
}

/// `histogram_quantile` as Prometheus computes it: linear inside a bucket.
fn bucket_quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for (i, &(le, cum)) in buckets.iter().enumerate() {
        if cum >= rank {
            if le.is_infinite() {
                return buckets.get(i.wrapping_sub(1)).map(|b| b.0);
            }
            let in_bucket = cum - prev.1;
            if in_bucket <= 0.0 {
                return Some(le);
            }
            return Some(prev.0 + (le - prev.0) * (rank - prev.1) / in_bucket);
        }
        prev = (le, cum);
    }
    None
}

fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

// ---------------------------------------------------------------------------
// CPU accounting from /proc (USER_HZ = 100)
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    worker: f64,
    postgres: f64,
    rabbitmq: f64,
    bench: f64,
    busy: f64,
    idle: f64,
}

fn proc_stat(pid: &str) -> Option<(String, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_owned();
    let rest: Vec<&str> = s[close + 2..].split_whitespace().collect();
    let utime: f64 = rest.get(11)?.parse().ok()?;
    let stime: f64 = rest.get(12)?.parse().ok()?;
    Some((comm, (utime + stime) / 100.0))
}

fn cpu_snapshot(workers: &[u32]) -> Cpu {
    let mut c = Cpu::default();
    let me = std::process::id().to_string();
    let workers: Vec<String> = workers.iter().map(u32::to_string).collect();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Some((comm, secs)) = proc_stat(&pid) else {
                continue;
            };
            if workers.contains(&pid) {
                c.worker += secs;
            } else if pid == me {
                c.bench += secs;
            } else if comm == "postgres" {
                c.postgres += secs;
            } else if comm == "beam.smp" {
                c.rabbitmq += secs;
            }
        }
    }
    if let Ok(s) = std::fs::read_to_string("/proc/stat")
        && let Some(line) = s.lines().next()
    {
        let v: Vec<f64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0.0);
        // user nice system idle iowait irq softirq steal
        c.busy = (g(0) + g(1) + g(2) + g(5) + g(6) + g(7)) / 100.0;
        c.idle = (g(3) + g(4)) / 100.0;
    }
    c
}

fn cpu_json(a: Cpu, b: Cpu, wall: f64) -> Value {
    let r = |x: f64| (x * 100.0).round() / 100.0;
    let busy = b.busy - a.busy;
    let idle = b.idle - a.idle;
    json!({
        "worker_s": r(b.worker - a.worker),
        "postgres_s": r(b.postgres - a.postgres),
        "rabbitmq_s": r(b.rabbitmq - a.rabbitmq),
        "bench_s": r(b.bench - a.bench),
        "machine_busy_s": r(busy),
        "machine_idle_s": r(idle),
        "machine_busy_pct": r(100.0 * busy / (busy + idle).max(1e-9)),
        "wall_s": r(wall),
    })
}

fn vm_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

// ---------------------------------------------------------------------------
// Broker side
// ---------------------------------------------------------------------------

/// A consumer of the changes queue with the worker's prefetch and batching:
/// a batch is what arrives within `BATCH_MAX_WAIT` of its first delivery, up
/// to a size. Shared by the raw limit and the durable floor.
struct BatchConsumer {
    conn: Connection,
    ch: lapin::Channel,
    consumer: lapin::Consumer,
    tag: &'static str,
}

impl BatchConsumer {
    /// Connects and starts consuming; with `tx` the channel is put in AMQP
    /// transaction mode first.
    async fn open(url: &str, tag: &'static str, tx: bool) -> Result<BatchConsumer> {
        let conn = Connection::connect(url, ConnectionProperties::default()).await?;
        let ch = conn.create_channel().await?;
        ch.basic_qos(PREFETCH, BasicQosOptions::default()).await?;
        if tx {
            ch.tx_select().await?;
        }
        let consumer = ch
            .basic_consume(
                CHANGES_QUEUE.into(),
                format!("bench-{tag}").as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(BatchConsumer {
            conn,
            ch,
            consumer,
            tag,
        })
    }

    /// The next batch of at most `max` deliveries (`done` of `n` so far, for
    /// the error when none comes for 60 s).
    async fn next_batch(
        &mut self,
        max: usize,
        done: usize,
        n: usize,
    ) -> Result<Vec<lapin::message::Delivery>> {
        let tag = self.tag;
        let first = tokio::time::timeout(Duration::from_secs(60), self.consumer.next())
            .await
            .map_err(|_| anyhow!("{tag} consumer: no delivery for 60 s after {done} of {n}"))?
            .ok_or_else(|| anyhow!("{tag} consumer cancelled"))??;
        let mut batch = Vec::with_capacity(max);
        batch.push(first);
        let deadline = tokio::time::Instant::now() + BATCH_MAX_WAIT;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer.next()).await {
                Err(_) => break,
                Ok(None) => bail!("{tag} consumer cancelled"),
                Ok(Some(d)) => batch.push(d?),
            }
        }
        Ok(batch)
    }

    async fn close(self) {
        let _ = self.ch.close(200, "done".into()).await;
        let _ = self.conn.close(200, "done".into()).await;
    }
}

/// The raw limit: consume and acknowledge only, with the worker's batching
/// and ack pattern (one multiple ack per batch, through the delivery's acker).
///
/// Diagnostic `BENCH_RAW_TX=1`: the channel in AMQP transaction mode and a
/// `tx.commit` after each ack, as the worker settles its batches: what the
/// transaction costs the broker, with nothing else in the way (issue #19).
async fn raw_drain(url: &str, n: usize) -> Result<Duration> {
    let tx = std::env::var("BENCH_RAW_TX").is_ok_and(|v| v == "1");
    // Diagnostic `BENCH_RAW_BATCH=N`: batches of N (the worker's small
    // batches at moderate rates), to see the per-batch cost of `tx.commit`.
    let batch_size = std::env::var("BENCH_RAW_BATCH")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(BATCH_SIZE)
        .clamp(1, PREFETCH as usize);
    let mut c = BatchConsumer::open(url, "raw", tx).await?;
    let started = Instant::now();
    let mut done = 0usize;
    while done < n {
        let batch = c.next_batch(batch_size, done, n).await?;
        if let Some(last) = batch.last() {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
            if tx {
                c.ch.tx_commit().await?;
            }
        }
        done += batch.len();
    }
    let took = started.elapsed();
    c.close().await;
    Ok(took)
}

/// The durable floor (a'): batches as `raw_drain`, each written with one
/// multi-row `INSERT (message_id, body)` and committed before its multiple
/// ack. The message id is read from the body (the contract's field).
async fn floor_drain(url: &str, pool: &sqlx::PgPool, n: usize) -> Result<Duration> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS floor (message_id uuid PRIMARY KEY, body bytea NOT NULL)",
    )
    .execute(pool)
    .await?;
    let mut c = BatchConsumer::open(url, "floor", false).await?;
    let started = Instant::now();
    let mut done = 0usize;
    while done < n {
        let batch = c.next_batch(BATCH_SIZE, done, n).await?;
        let mut ids: Vec<Uuid> = Vec::with_capacity(batch.len());
        let mut bodies: Vec<&[u8]> = Vec::with_capacity(batch.len());
        for d in &batch {
            let id = serde_json::from_slice::<Value>(&d.data)
                .ok()
                .and_then(|v| v["message_id"].as_str().and_then(|m| m.parse().ok()))
                .unwrap_or_else(Uuid::new_v4);
            ids.push(id);
            bodies.push(&d.data);
        }
        let mut tx = pool.begin().await?;
        sqlx::query(
            "INSERT INTO floor (message_id, body) SELECT * FROM UNNEST($1::uuid[], $2::bytea[])
             ON CONFLICT (message_id) DO NOTHING",
        )
        .bind(&ids)
        .bind(&bodies)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if let Some(last) = batch.last() {
            last.acker.ack(BasicAckOptions { multiple: true }).await?;
        }
        done += batch.len();
    }
    let took = started.elapsed();
    c.close().await;
    Ok(took)
}

// ---------------------------------------------------------------------------
// Phases
// ---------------------------------------------------------------------------

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

async fn phase_raw(cfg: &Config, load: &mut Load) -> Result<Value> {
    let w = World::new(cfg, "raw", false).await?;
    let n = load.changes.len();
    say(format!(
        "raw: publishing {n} messages (confirms) into {}",
        w.vhost
    ));
    let pub_took = publish(&w.amqp_url(), &mut load.changes, 2000).await?;
    let depth = w.queue_depth(CHANGES_QUEUE).await?;
    ensure!(
        depth as usize == n,
        "raw: queue holds {depth}, expected {n}"
    );
    say(format!(
        "raw: published in {:.1} s ({:.0} msg/s); draining with an ack-only consumer",
        pub_took.as_secs_f64(),
        n as f64 / pub_took.as_secs_f64()
    ));
    let c0 = cpu_snapshot(&[]);
    let took = raw_drain(&w.amqp_url(), n).await?;
    let c1 = cpu_snapshot(&[]);
    let rate = n as f64 / took.as_secs_f64();
    say(format!(
        "raw: {n} messages in {:.2} s = {rate:.0} msg/s",
        took.as_secs_f64()
    ));
    let left = w.queue_depth(CHANGES_QUEUE).await?;
    ensure!(left == 0, "raw: {left} messages left in the queue");
    Ok(json!({
        "messages": n,
        "seconds": round(took.as_secs_f64(), 3),
        "msgs_per_s": round(rate, 0),
        "publish_msgs_per_s": round(n as f64 / pub_took.as_secs_f64(), 0),
        "cpu": cpu_json(c0, c1, took.as_secs_f64()),
    }))
}

/// (a'): the durable floor drains a copy of the load.
async fn phase_floor(cfg: &Config, load: &mut Load) -> Result<Value> {
    let mut w = World::new(cfg, "floor", true).await?;
    let n = load.changes.len();
    say(format!(
        "floor: publishing {n} messages (confirms) into {}",
        w.vhost
    ));
    publish(&w.amqp_url(), &mut load.changes, 2000).await?;
    let pool = w.pool().await?;
    let c0 = cpu_snapshot(&[]);
    let took = floor_drain(&w.amqp_url(), &pool, n).await?;
    let c1 = cpu_snapshot(&[]);
    let rate = n as f64 / took.as_secs_f64();
    say(format!(
        "floor: {n} messages in {:.2} s = {rate:.0} msg/s (INSERT + COMMIT + ack per batch)",
        took.as_secs_f64()
    ));
    let left = w.queue_depth(CHANGES_QUEUE).await?;
    ensure!(left == 0, "floor: {left} messages left in the queue");
    Ok(json!({
        "messages": n,
        "seconds": round(took.as_secs_f64(), 3),
        "msgs_per_s": round(rate, 0),
        "cpu": cpu_json(c0, c1, took.as_secs_f64()),
    }))
}

/// A worker drains a pre-published load: (b) and (c).
async fn phase_drain(
    cfg: &Config,
    tag: &str,
    load: &mut Load,
    batch_size: usize,
    perf: Option<&str>,
    replicas: usize,
) -> Result<Value> {
    let env = vec![
        ("BATCH_SIZE", batch_size.to_string()),
        ("PREFETCH", PREFETCH.to_string()),
    ];
    let mut w = World::new(cfg, tag, true).await?;
    let n = load.changes.len();
    say(format!(
        "{tag}: linking {} schools (worker running), then stopping the worker",
        load.links.len()
    ));
    w.spawn_worker(&env).await?;
    w.link(&mut load.links).await?;
    w.stop_workers();
    let pool = w.pool().await?;
    let processed_before: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages")
        .fetch_one(&pool)
        .await?;

    say(format!(
        "{tag}: publishing {n} messages (confirms), no worker running"
    ));
    let pub_took = publish(&w.amqp_url(), &mut load.changes, 2000).await?;
    let depth = w.queue_depth(CHANGES_QUEUE).await?;
    ensure!(
        depth as usize == n,
        "{tag}: queue holds {depth}, expected {n}"
    );
    say(format!(
        "{tag}: published in {:.1} s; starting the worker (BATCH_SIZE {batch_size}, PREFETCH {PREFETCH})",
        pub_took.as_secs_f64()
    ));

    let wal0: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(&pool)
        .await?;
    let spawned = Instant::now();
    let ready = w.spawn_worker(&env).await?;
    for _ in 1..replicas.max(1) {
        w.spawn_worker(&env).await?;
    }
    let pids = w.pids();
    let pid_list = pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let c0 = cpu_snapshot(&pids);
    let mut perf_child = if let Some(scope) = perf {
        let data = cfg.out_dir.join(format!("{tag}-{scope}.perf.data"));
        say(format!(
            "{tag}: recording perf profile to {}",
            data.display()
        ));
        let target = if scope == "all" {
            vec!["-a".to_owned()]
        } else {
            vec!["-p".to_owned(), pid_list.clone()]
        };
        Some(
            Command::new("perf")
                .args(["record", "-F", "499", "-g", "-o"])
                .arg(&data)
                .args(&target)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting perf (apt-get install linux-perf)")?,
        )
    } else {
        None
    };
    let mut peak_rss_kib = 0u64;
    let mut last_progress = (0u64, Instant::now());
    let mut last_report = (Instant::now(), 0u64);
    let mut last_analyze = Instant::now();
    let done = loop {
        for pid in &pids {
            if let Some(rss) = vm_kib(*pid, "VmRSS:") {
                peak_rss_kib = peak_rss_kib.max(rss);
            }
        }
        let handled = match w.metrics().await {
            Ok(m) => m.sum("las_messages_total") as u64,
            Err(_) => last_progress.0,
        };
        if handled as usize >= n {
            break Instant::now();
        }
        if handled > last_progress.0 {
            last_progress = (handled, Instant::now());
        }
        if last_report.0.elapsed() > Duration::from_secs(10) {
            say(format!(
                "{tag}: {handled}/{n} handled, {:.0} msg/s in the last {:.0} s, {:.0} msg/s so far",
                (handled - last_report.1) as f64 / last_report.0.elapsed().as_secs_f64(),
                last_report.0.elapsed().as_secs_f64(),
                handled as f64 / ready.elapsed().as_secs_f64()
            ));
            last_report = (Instant::now(), handled);
        }
        if let Some(every) = cfg.analyze_every
            && last_analyze.elapsed() >= every
        {
            // Emulates autovacuum's ANALYZE on a server where it is off.
            sqlx::query("ANALYZE").execute(&pool).await?;
            last_analyze = Instant::now();
        }
        ensure!(
            last_progress.1.elapsed() < Duration::from_secs(60),
            "{tag}: no progress for 60 s at {handled}/{n}; log {}:\n{}",
            w.log_path.display(),
            tail(&w.log_path, 20)
        );
        // Each scrape costs the worker a /metrics render (one series per
        // school for the last-sync gauge): poll less often as the run goes on;
        // the end is still known to within 0.5% of the elapsed time.
        let poll = (ready.elapsed() / 200).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::time::sleep(poll).await;
    };
    let c1 = cpu_snapshot(&pids);
    let took = done - ready;
    if let Some(p) = perf_child.as_mut() {
        let _ = Command::new("kill")
            .args(["-INT", &p.id().to_string()])
            .status();
        let _ = p.wait();
    }
    // Peak RSS of the largest worker process (each replica is its own process).
    let hwm_kib = pids
        .iter()
        .filter_map(|p| vm_kib(*p, "VmHWM:"))
        .max()
        .unwrap_or(0);
    let m = w.metrics().await?;
    w.stop_workers();
    let wal_bytes: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&wal0)
            .fetch_one(&pool)
            .await?;

    // Every message durably applied: outcomes, database, queues.
    let outcomes = m.by("las_messages_total", "outcome");
    let get = |k: &str| outcomes.get(k).copied().unwrap_or(0.0) as usize;
    let e = &load.expect;
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages")
        .fetch_one(&pool)
        .await?;
    let profiles: i64 =
        sqlx::query_scalar("SELECT count(*) FROM profiles WHERE status <> 'pending'")
            .fetch_one(&pool)
            .await?;
    let removed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM profiles WHERE kind = 'student' AND status = 'deactivated'",
    )
    .fetch_one(&pool)
    .await?;
    let left = w.queue_depth(CHANGES_QUEUE).await?;
    let dead = w.queue_depth(DEAD_LETTER_QUEUE).await?;
    let unique = n - e.duplicate;
    let mut problems = Vec::new();
    // One transaction at a time applies in queue order, so every outcome is
    // exact. With replicas or concurrent batches (BATCH_CONCURRENCY > 1, the
    // worker's default) an update may overtake its export (the older one is
    // then the stale one): only applied + stale is fixed; the final state is
    // the same.
    let (applied, stale, want_applied, want_stale) = if replicas > 1 || batch_concurrency() > 1 {
        let sum = get("applied") + get("stale");
        (sum, 0, e.applied + e.stale, 0)
    } else {
        (get("applied"), get("stale"), e.applied, e.stale)
    };
    for (what, got, want) in [
        ("applied", applied, want_applied),
        ("duplicate", get("duplicate"), e.duplicate),
        ("stale", stale, want_stale),
        ("rejected", get("rejected"), 0),
        (
            "processed_messages rows",
            (processed - processed_before) as usize,
            unique,
        ),
        ("profiles", profiles as usize, e.profiles),
        ("removed students", removed as usize, e.removed_students),
        ("messages left in the queue", left as usize, 0),
        ("dead letters", dead as usize, 0),
    ] {
        if got != want {
            problems.push(format!("{what}: {got}, expected {want}"));
        }
    }
    let rate = n as f64 / took.as_secs_f64();
    say(format!(
        "{tag}: {n} messages in {:.2} s = {rate:.0} msg/s; peak RSS {:.1} MiB; {}",
        took.as_secs_f64(),
        hwm_kib as f64 / 1024.0,
        if problems.is_empty() {
            "all applied and verified".to_owned()
        } else {
            format!("VERIFICATION FAILED: {}", problems.join("; "))
        }
    ));
    let lag = m.buckets("las_sync_lag_seconds", None);
    let batch_secs = m.buckets("las_batch_processing_seconds", Some(("queue", "changes")));
    let batches = m
        .0
        .iter()
        .filter(|s| {
            s.name == "las_batch_size_messages_count" && Prom::label(s, "queue") == Some("changes")
        })
        .map(|s| s.value)
        .sum::<f64>();
    let batch_time: f64 =
        m.0.iter()
            .filter(|s| {
                s.name == "las_batch_processing_seconds_sum"
                    && Prom::label(s, "queue") == Some("changes")
            })
            .map(|s| s.value)
            .sum();
    Ok(json!({
        "messages": n,
        "batch_size": batch_size,
        "prefetch": PREFETCH,
        "replicas": replicas.max(1),
        "batch_concurrency": batch_concurrency(),
        "seconds": round(took.as_secs_f64(), 3),
        "msgs_per_s": round(rate, 0),
        "startup_s": round((ready - spawned).as_secs_f64(), 3),
        "outcomes": outcomes,
        "verified": problems.is_empty(),
        "problems": problems,
        "peak_rss_mib": round(hwm_kib as f64 / 1024.0, 1),
        "peak_rss_sampled_mib": round(peak_rss_kib as f64 / 1024.0, 1),
        "batches": batches,
        "mean_batch_messages": round(n as f64 / batches.max(1.0), 1),
        "mean_batch_ms": round(1000.0 * batch_time / batches.max(1.0), 2),
        "batch_share_of_wall": round(batch_time / took.as_secs_f64(), 3),
        "batch_p50_ms": bucket_quantile(0.5, &batch_secs).map(|s| round(s * 1000.0, 1)),
        "batch_p99_ms": bucket_quantile(0.99, &batch_secs).map(|s| round(s * 1000.0, 1)),
        // Commit time minus emitted_at (= publish time): mostly time spent
        // waiting in the pre-published backlog; see the latency phase.
        "lag_p50_s": bucket_quantile(0.5, &lag).map(|s| round(s, 3)),
        "lag_p99_s": bucket_quantile(0.99, &lag).map(|s| round(s, 3)),
        // Cluster-wide WAL, so other databases' writes count too.
        "wal_bytes_per_msg": round(wal_bytes / n as f64, 0),
        "analyze_every_s": cfg.analyze_every.map(|d| d.as_secs_f64()),
        "cpu": cpu_json(c0, c1, took.as_secs_f64()),
    }))
}

const NOTIFY_SQL: &str = r#"
CREATE OR REPLACE FUNCTION bench_notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE r record;
BEGIN
    -- Delivered by PostgreSQL when the inserting transaction commits.
    FOR r IN SELECT string_agg(message_id::text, ',') AS ids
             FROM (SELECT message_id, (row_number() OVER ()) / 150 AS chunk FROM new_rows) t
             GROUP BY chunk
    LOOP
        PERFORM pg_notify('bench_commit', r.ids);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER bench_notify_commit AFTER INSERT ON processed_messages
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION bench_notify_commit();
"#;

/// (d) Latency at a fixed offered rate; `emitted_at` = send time, commit time
/// from the NOTIFY the trigger sends at commit.
async fn phase_latency(cfg: &Config, load: &mut Load, rate: u32) -> Result<Value> {
    let mut w = World::new(cfg, "latency", true).await?;
    let env = vec![
        ("BATCH_SIZE", BATCH_SIZE.to_string()),
        ("PREFETCH", PREFETCH.to_string()),
    ];
    w.spawn_worker(&env).await?;
    w.link(&mut load.links).await?;
    let pool = w.pool().await?;
    sqlx::raw_sql(NOTIFY_SQL).execute(&pool).await?;
    let mut listener = sqlx::postgres::PgListener::connect(&w.database_url()).await?;
    listener.listen("bench_commit").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(SystemTime, String)>();
    let listen_task = tokio::spawn(async move {
        while let Ok(n) = listener.recv().await {
            if tx
                .send((SystemTime::now(), n.payload().to_owned()))
                .is_err()
            {
                break;
            }
        }
    });

    let n = ((rate as u64 * cfg.latency_secs) as usize).min(load.changes.len());
    let mut msgs: Vec<Msg> = load.changes[..n].to_vec();
    let unique: HashSet<Uuid> = msgs.iter().map(|m| m.id).collect();
    say(format!(
        "latency: offering {n} messages at {} msg/s for {} s (worker BATCH_SIZE {BATCH_SIZE}, PREFETCH {PREFETCH})",
        rate, cfg.latency_secs
    ));
    let conn = Connection::connect(&w.amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let pids = w.pids();
    let c0 = cpu_snapshot(&pids);
    let mut sent_at: HashMap<Uuid, SystemTime> = HashMap::with_capacity(n);
    let started = tokio::time::Instant::now();
    let (send_took, nacks) = offer(&ch, &mut msgs, rate, |id, now| {
        sent_at.entry(id).or_insert(now);
    })
    .await?;
    ensure!(nacks == 0, "latency: {nacks} publishes not confirmed");

    let mut committed: HashMap<Uuid, SystemTime> = HashMap::with_capacity(n);
    let deadline = Instant::now() + Duration::from_secs(120);
    while committed.len() < unique.len() && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Some((at, payload))) => {
                for id in payload.split(',').filter_map(|s| Uuid::parse_str(s).ok()) {
                    if unique.contains(&id) {
                        committed.entry(id).or_insert(at);
                    }
                }
            }
            Ok(None) => break,
            Err(_) => {}
        }
    }
    let c1 = cpu_snapshot(&pids);
    let until_committed = started.elapsed();
    listen_task.abort();
    let m = w.metrics().await?;
    let hwm_kib = pids
        .iter()
        .filter_map(|p| vm_kib(*p, "VmHWM:"))
        .max()
        .unwrap_or(0);
    let _ = conn.close(200, "done".into()).await;
    w.stop_workers();

    let mut lat: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| {
            let sent = sent_at.get(id)?;
            Some(at.duration_since(*sent).unwrap_or_default().as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let missing = unique.len() - committed.len();
    let lag = m.buckets("las_sync_lag_seconds", None);
    let p50 = quantile_sorted(&lat, 0.5);
    let p99 = quantile_sorted(&lat, 0.99);
    say(format!(
        "latency: offered {:.0} msg/s; emitted_at to commit p50 {p50:.1} ms, p99 {p99:.1} ms, max {:.1} ms ({missing} not seen)",
        n as f64 / send_took.as_secs_f64(),
        lat.last().copied().unwrap_or(f64::NAN)
    ));
    ensure!(
        missing == 0,
        "latency: {missing} messages never committed; log {}",
        w.log_path.display()
    );
    let batches = m.buckets("las_batch_size_messages", Some(("queue", "changes")));
    Ok(json!({
        "messages": n,
        "offered_msgs_per_s": rate,
        "achieved_send_msgs_per_s": round(n as f64 / send_took.as_secs_f64(), 0),
        "p50_ms": round(p50, 1),
        "p90_ms": round(quantile_sorted(&lat, 0.9), 1),
        "p99_ms": round(p99, 1),
        "p999_ms": round(quantile_sorted(&lat, 0.999), 1),
        "max_ms": round(lat.last().copied().unwrap_or(f64::NAN), 1),
        "hist_p50_s": bucket_quantile(0.5, &lag).map(|s| round(s, 4)),
        "hist_p99_s": bucket_quantile(0.99, &lag).map(|s| round(s, 4)),
        "mean_batch_messages": round(
            m.sum("las_batch_size_messages_sum") / batches.last().map(|b| b.1).unwrap_or(1.0).max(1.0), 1),
        "peak_rss_mib": round(hwm_kib as f64 / 1024.0, 1),
        // From the first send to the last commit.
        "cpu": cpu_json(c0, c1, until_committed.as_secs_f64()),
        "cpu_us_per_msg": cpu_per_msg(c0, c1, n),
    }))
}

/// The same offered publishing as the latency run at `rate`, with no worker
/// consuming (issue #19): the broker's CPU per message for taking the load
/// alone, so the report can say how much of RabbitMQ's CPU in the latency
/// run the worker causes. A worker starts once to declare the topology and
/// stops before the first send.
async fn phase_publish_only(cfg: &Config, load: &mut Load, rate: u32) -> Result<Value> {
    let mut w = World::new(cfg, "publish", true).await?;
    w.spawn_worker(&[]).await?;
    w.stop_workers();
    let n = ((rate as u64 * cfg.latency_secs) as usize).min(load.changes.len());
    let mut msgs: Vec<Msg> = load.changes[..n].to_vec();
    say(format!(
        "publish only: offering {n} messages at {rate} msg/s for {} s with no worker",
        cfg.latency_secs
    ));
    let conn = Connection::connect(&w.amqp_url(), ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let c0 = cpu_snapshot(&[]);
    let started = tokio::time::Instant::now();
    let (send_took, nacks) = offer(&ch, &mut msgs, rate, |_, _| {}).await?;
    let until_confirmed = started.elapsed();
    let c1 = cpu_snapshot(&[]);
    ensure!(nacks == 0, "publish only: {nacks} publishes not confirmed");
    let depth = w.queue_depth(CHANGES_QUEUE).await?;
    let _ = conn.close(200, "done".into()).await;
    say(format!(
        "publish only: {depth} messages queued; RabbitMQ {:.0} µs of CPU per message",
        (c1.rabbitmq - c0.rabbitmq) * 1e6 / n.max(1) as f64
    ));
    Ok(json!({
        "messages": n,
        "offered_msgs_per_s": rate,
        "achieved_send_msgs_per_s": round(n as f64 / send_took.as_secs_f64(), 0),
        "queued": depth,
        "cpu": cpu_json(c0, c1, until_confirmed.as_secs_f64()),
        "cpu_us_per_msg": cpu_per_msg(c0, c1, n),
    }))
}

/// Publishes `msgs` with confirms at `rate` per second, stamping each with
/// its send time (`emitted_at`) and telling `sent` about it; returns how long
/// the sending took and how many publishes the broker did not confirm.
async fn offer(
    ch: &lapin::Channel,
    msgs: &mut [Msg],
    rate: u32,
    mut sent: impl FnMut(Uuid, SystemTime),
) -> Result<(Duration, usize)> {
    let (ctx, mut crx) = tokio::sync::mpsc::unbounded_channel::<lapin::PublisherConfirm>();
    let confirm_task = tokio::spawn(async move {
        let mut nacks = 0usize;
        while let Some(c) = crx.recv().await {
            match c.await {
                Ok(c) if c.is_ack() => {}
                _ => nacks += 1,
            }
        }
        nacks
    });
    let started = tokio::time::Instant::now();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    for (i, m) in msgs.iter_mut().enumerate() {
        let due = started + interval * i as u32;
        if tokio::time::Instant::now() < due {
            tokio::time::sleep_until(due).await;
        }
        let now = SystemTime::now();
        m.stamp(now);
        sent(m.id, now);
        let c = ch
            .basic_publish(
                m.exchange.into(),
                m.routing_key.as_str().into(),
                BasicPublishOptions::default(),
                &m.body,
                BasicProperties::default()
                    .with_content_type("application/json".into())
                    .with_delivery_mode(2),
            )
            .await?;
        let _ = ctx.send(c);
    }
    let send_took = started.elapsed();
    drop(ctx);
    Ok((send_took, confirm_task.await?))
}

/// Each process's CPU per message, in microseconds.
fn cpu_per_msg(a: Cpu, b: Cpu, n: usize) -> Value {
    let us = |x: f64| (x * 1e6 / n.max(1) as f64).round();
    json!({
        "postgres": us(b.postgres - a.postgres),
        "worker": us(b.worker - a.worker),
        "rabbitmq": us(b.rabbitmq - a.rabbitmq),
    })
}

fn machine() -> Value {
    let cmd = |c: &str, a: &[&str]| {
        Command::new(c)
            .args(a)
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_default()
    };
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0);
    json!({
        "nproc": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_gib": round(mem_kib as f64 / 1024.0 / 1024.0, 1),
        "kernel": cmd("uname", &["-r"]),
        "postgres": cmd("psql", &[PG_ADMIN_URL, "-XAtc", "SHOW server_version"]),
        "postgres_settings": cmd("psql", &[PG_ADMIN_URL, "-XAtc",
            "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name IN \
             ('autovacuum', 'fsync', 'synchronous_commit', 'shared_buffers', 'ssl', 'wal_sync_method', 'max_wal_size')"]),
        "rabbitmq": cmd("rabbitmqctl", &["-q", "version"]),
    })
}

async fn run(cfg: Config) -> Result<Value> {
    say(format!(
        "generating the load: ~{} messages, seed {}",
        cfg.messages, cfg.seed
    ));
    let t = Instant::now();
    let mut load = Load::generate(cfg.seed, cfg.messages, cfg.schools);
    let e = load.expect.clone();
    say(format!(
        "load: {} schools, {} change messages ({:.1} MiB, {} applied, {} duplicate, {} stale), {} profiles; generated in {:.1} s",
        e.schools,
        e.changes,
        load.bytes as f64 / 1048576.0,
        e.applied,
        e.duplicate,
        e.stale,
        e.profiles,
        t.elapsed().as_secs_f64()
    ));
    let mut out = serde_json::Map::new();
    out.insert("bench".into(), json!("las-worker drain, issue #7"));
    out.insert("seed".into(), json!(cfg.seed));
    out.insert("schools".into(), json!(e.schools));
    out.insert("messages".into(), json!(e.changes));
    out.insert(
        "avg_message_bytes".into(),
        json!(load.bytes / e.changes.max(1)),
    );
    out.insert("machine".into(), machine());

    let rate = |v: &Option<Value>| v.as_ref().and_then(|v| v["msgs_per_s"].as_f64());
    let raw = if cfg.has("raw") {
        Some(phase_raw(&cfg, &mut load).await?)
    } else {
        None
    };
    let floor = if cfg.has("floor") {
        Some(phase_floor(&cfg, &mut load).await?)
    } else {
        None
    };
    let batch = if cfg.has("batch") {
        Some(
            phase_drain(
                &cfg,
                "batch",
                &mut load,
                BATCH_SIZE,
                cfg.perf.as_deref(),
                cfg.replicas,
            )
            .await?,
        )
    } else {
        None
    };
    let single = if cfg.has("single") {
        say(format!(
            "single: generating a {}-message load with the same generator",
            cfg.single_messages
        ));
        let mut small = Load::generate(cfg.seed, cfg.single_messages, None);
        Some(phase_drain(&cfg, "single", &mut small, 1, None, 1).await?)
    } else {
        None
    };
    // (d) at a fixed rate (BENCH_RATE, 2,000 msg/s by default, comparable
    // across runs) and, issue #19, at a third of what (b) drained in this
    // run: a load that leaves the machine two thirds idle.
    let latency = if cfg.has("latency") {
        Some(phase_latency(&cfg, &mut load, cfg.rate).await?)
    } else {
        None
    };
    let third = rate(&batch).map(|b| (b / 3.0).round().max(1.0) as u32);
    let latency_third = match third {
        Some(r) if cfg.has("latency") => Some(phase_latency(&cfg, &mut load, r).await?),
        _ => None,
    };

    // The same offered publishing with no worker: RabbitMQ's share that
    // the producer alone causes.
    let publish_only = match third {
        Some(r) if cfg.has("latency") => Some(phase_publish_only(&cfg, &mut load, r).await?),
        _ => None,
    };

    let (a, b, c) = (rate(&raw), rate(&batch), rate(&single));
    let b_a = a.zip(b).map(|(a, b)| round(b / a, 3));
    let b_c = c.zip(b).map(|(c, b)| round(b / c, 2));
    let a2 = rate(&floor);
    let b_a2 = a2.zip(b).map(|(a2, b)| round(b / a2, 3));
    let rss = batch.as_ref().and_then(|v| v["peak_rss_mib"].as_f64());
    let p99 = latency.as_ref().and_then(|v| v["p99_ms"].as_f64());
    let verified = [&batch, &single]
        .iter()
        .all(|v| v.as_ref().is_none_or(|v| v["verified"] == json!(true)));
    out.insert("raw_msgs_per_s".into(), json!(a));
    out.insert("worker_msgs_per_s".into(), json!(b));
    out.insert("single_msgs_per_s".into(), json!(c));
    out.insert("ratio_b_a".into(), json!(b_a));
    out.insert("floor_msgs_per_s".into(), json!(a2));
    out.insert("ratio_b_floor".into(), json!(b_a2));
    out.insert("ratio_b_c".into(), json!(b_c));
    out.insert(
        "latency_p50_ms".into(),
        json!(latency.as_ref().and_then(|v| v["p50_ms"].as_f64())),
    );
    out.insert("latency_p99_ms".into(), json!(p99));
    let p99_third = latency_third.as_ref().and_then(|v| v["p99_ms"].as_f64());
    out.insert("latency_third_of_b_offered".into(), json!(third));
    out.insert(
        "latency_third_of_b_p50_ms".into(),
        json!(latency_third.as_ref().and_then(|v| v["p50_ms"].as_f64())),
    );
    out.insert("latency_third_of_b_p99_ms".into(), json!(p99_third));
    out.insert("peak_rss_mib".into(), json!(rss));
    out.insert("verified".into(), json!(verified));
    out.insert(
        "targets".into(),
        json!({
            "b_a_ge_0_25": b_a.map(|r| r >= 0.25),
            "b_a_ge_0_5_long_term": b_a.map(|r| r >= 0.5),
            "b_floor_ge_0_5": b_a2.map(|r| r >= 0.5),
            "b_c_ge_5": b_c.map(|r| r >= 5.0),
            "peak_rss_le_64_mib": rss.map(|r| r <= 64.0),
            "peak_rss_measured_on_messages": batch.as_ref().map(|_| e.changes),
            "p99_le_100_ms": p99.map(|p| p <= 100.0),
            "p99_at_third_of_b_le_100_ms": p99_third.map(|p| p <= 100.0),
        }),
    );
    out.insert("raw".into(), json!(raw));
    out.insert("floor".into(), json!(floor));
    out.insert("batch".into(), json!(batch));
    out.insert("single".into(), json!(single));
    out.insert("latency".into(), json!(latency));
    out.insert("latency_third_of_b".into(), json!(latency_third));
    out.insert("publish_only_third_of_b".into(), json!(publish_only));
    Ok(Value::Object(out))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match Config::from_args(
        &args
            .iter()
            .filter(|a| *a != "--cleanup")
            .cloned()
            .collect::<Vec<_>>(),
    ) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: {e:#}");
            return ExitCode::from(2);
        }
    };
    if args.iter().any(|a| a == "--cleanup") {
        let n = cleanup_leftovers(&cfg.out_dir);
        if n > 0 {
            say(format!("cleanup: removed {n} leftovers"));
        }
        return ExitCode::SUCCESS;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let out_dir = cfg.out_dir.clone();
    let result = rt.block_on(async move {
        let interrupted = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
            }
        };
        // Dropping the run future on a signal drops its worlds: workers
        // stopped, databases and vhosts removed.
        tokio::select! {
            r = run(cfg) => r,
            _ = interrupted => Err(anyhow!("interrupted")),
        }
    });
    // Anything a failed phase could not remove itself.
    cleanup_leftovers(&out_dir);
    match result {
        Ok(v) => {
            let _ = std::fs::write(
                out_dir.join("last.json"),
                serde_json::to_string_pretty(&v).unwrap_or_default(),
            );
            println!("{v}");
            if v["verified"] == json!(true) {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "bench: the worker did not apply every message as expected (see \"problems\")"
                );
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("bench: FAILED: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The worker's BATCH_CONCURRENCY: from the environment the worker inherits,
/// else its default.
fn batch_concurrency() -> usize {
    std::env::var("BATCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(BATCH_CONCURRENCY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_parse() {
        assert_eq!(parse_count("1m").ok(), Some(1_000_000));
        assert_eq!(parse_count("100k").ok(), Some(100_000));
        assert_eq!(parse_count("2500").ok(), Some(2_500));
        assert!(parse_count("lots").is_err());
    }

    #[test]
    fn histogram_quantiles_interpolate() {
        let b = [
            (0.01, 50.0),
            (0.05, 90.0),
            (0.1, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert_eq!(bucket_quantile(0.5, &b), Some(0.01));
        let p99 = bucket_quantile(0.99, &b).unwrap_or_default();
        assert!((p99 - 0.095).abs() < 1e-9);
        assert_eq!(quantile_sorted(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
    }
}
