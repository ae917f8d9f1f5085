//! End-to-end harness: every test gets its own PostgreSQL database, its own
//! RabbitMQ vhost and its own `las-worker run` process (the real binary), and
//! removes all three when it ends, also when it fails.
//!
//! A missing service is a failure with instructions, never a silent skip.

#![allow(clippy::unwrap_used)]

pub mod cluster;
pub mod load;
pub mod mailapi;
pub mod proxy;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const AMQP_BASE: &str = "amqp://guest:guest@127.0.0.1:5672";

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The worker binary, built once per test run so it is never stale.
pub fn worker_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("LAS_WORKER_BIN") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut build = Command::new(cargo);
        // Not the variables cargo sets for this test binary: a build script
        // that reruns when one changes (ring's, on CARGO_MANIFEST_DIR) would
        // rebuild half the dependency tree here, and again in the next
        // `cargo test` (about 30 s each time on two cores).
        for (k, _) in std::env::vars_os() {
            let k = k.to_string_lossy();
            if k.starts_with("CARGO_PKG_")
                || k.starts_with("CARGO_BIN_")
                || [
                    "CARGO_MANIFEST_DIR",
                    "CARGO_MANIFEST_PATH",
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&k.as_ref())
            {
                build.env_remove(k.as_ref());
            }
        }
        let status = build
            .args(["build", "-q", "-p", "las-worker", "--bin", "las-worker"])
            .current_dir(workspace_root())
            .status()
            .expect("running cargo build for the las-worker binary");
        assert!(status.success(), "building las-worker failed");
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| workspace_root().join("target"));
        let bin = target.join("debug").join("las-worker");
        assert!(
            bin.exists(),
            "las-worker binary not found at {}",
            bin.display()
        );
        bin
    })
    .clone()
}

/// Runs `rabbitmqctl ARGS` against a running node: stdout, or the error.
pub type Ctl = Arc<dyn Fn(&[&str]) -> Result<String, String> + Send + Sync>;

/// The RabbitMQ a `TestEnv` uses: the machine's single broker (`local`) or a
/// cluster (`cluster::Cluster::broker`). Each world gets its own vhost on it.
#[derive(Clone)]
pub struct Broker {
    /// `amqp://user:pass@host:port` (no vhost) of each node the worker is
    /// given, in order: its `AMQP_URL` is these with the world's vhost,
    /// joined by commas (one URL for the local broker).
    worker_bases: Vec<String>,
    /// The same for the test's own connections (publishing, reading
    /// queues): the first that accepts a TCP connection is used.
    client_bases: Vec<String>,
    /// `rabbitmqctl ARGS` against a running node: stdout, or the error.
    ctl: Ctl,
    /// Test queues (the sync-event tap) as quorum queues: on a cluster a
    /// classic queue lives on one node and loses what is routed to it while
    /// that node is down.
    pub quorum_test_queues: bool,
    /// Whether the world's vhost is deleted when the `TestEnv` is dropped
    /// (not on a cluster that is thrown away anyway).
    delete_vhost_on_drop: bool,
}

impl Broker {
    /// The machine's broker on 127.0.0.1:5672, driven by `rabbitmqctl`.
    pub fn local() -> Broker {
        Broker {
            worker_bases: vec![AMQP_BASE.to_owned()],
            client_bases: vec![AMQP_BASE.to_owned()],
            ctl: Arc::new(|args: &[&str]| rabbitmqctl_output(args)),
            quorum_test_queues: false,
            delete_vhost_on_drop: true,
        }
    }

    /// A broker of several nodes: the worker gets `worker_bases`, the test
    /// connects through `client_bases`, `ctl` runs rabbitmqctl on a live node.
    pub fn nodes(worker_bases: Vec<String>, client_bases: Vec<String>, ctl: Ctl) -> Broker {
        Broker {
            worker_bases,
            client_bases,
            ctl,
            quorum_test_queues: true,
            delete_vhost_on_drop: false,
        }
    }

    /// Runs rabbitmqctl with `args` against a running node of this broker.
    pub fn ctl(&self, args: &[&str]) -> Result<String, String> {
        (self.ctl)(args)
    }
}

/// A TCP port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One isolated world: database, vhost, worker.
pub struct TestEnv {
    pub id: String,
    pub database: String,
    pub vhost: String,
    pub metrics_port: u16,
    pub log_path: PathBuf,
    pub db: sqlx::PgPool,
    pub broker: Broker,
    worker: Option<Child>,
    extra_env: Vec<(String, String)>,
}

impl TestEnv {
    /// A fresh world with a running worker.
    pub async fn start() -> TestEnv {
        Self::start_with(&[]).await
    }

    /// A fresh world; `env` adds or overrides worker settings (e.g. BATCH_SIZE).
    pub async fn start_with(env: &[(&str, &str)]) -> TestEnv {
        Self::start_on(Broker::local(), env).await
    }

    /// A fresh world on `broker` (its own vhost there) with a running worker.
    pub async fn start_on(broker: Broker, env: &[(&str, &str)]) -> TestEnv {
        let mut e = Self::new_world(broker).await;
        e.extra_env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        e.spawn_worker().await;
        e
    }

    async fn new_world(broker: Broker) -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let database = format!("lasw_e2e_{id}");
        let vhost = format!("lasw-e2e-{id}");
        let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is not reachable at {PG_ADMIN_URL}: {e}. Start it (pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start) and run the tests again.")
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        broker.ctl(&["add_vhost", &vhost]).unwrap_or_else(|e| {
            panic!("RabbitMQ: {e}. Start it with `rabbitmq-server -detached`.")
        });
        broker
            .ctl(&["set_permissions", "-p", &vhost, "guest", ".*", ".*", ".*"])
            .unwrap();
        let db = sqlx::PgPool::connect(&format!("postgres://postgres@127.0.0.1:5432/{database}"))
            .await
            .unwrap();
        let logs = workspace_root().join("target").join("e2e-logs");
        std::fs::create_dir_all(&logs).unwrap();
        TestEnv {
            log_path: logs.join(format!("{id}.log")),
            id,
            database,
            vhost,
            metrics_port: free_port(),
            db,
            broker,
            worker: None,
            extra_env: vec![],
        }
    }

    pub fn database_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.database)
    }

    /// The worker's `AMQP_URL`: this world's vhost on every node the worker
    /// is given, comma-separated (one URL on the local broker).
    pub fn amqp_url(&self) -> String {
        self.broker
            .worker_bases
            .iter()
            .map(|b| format!("{b}/{}", self.vhost))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One URL of this world's vhost for the test's own connections: the
    /// first node of the broker that accepts a TCP connection (on a cluster
    /// some may be down).
    pub fn client_url(&self) -> String {
        let bases = &self.broker.client_bases;
        let up = bases.iter().find(|b| {
            let addr = b.rsplit('@').next().unwrap_or(b);
            addr.parse::<std::net::SocketAddr>().is_ok_and(|a| {
                std::net::TcpStream::connect_timeout(&a, Duration::from_millis(500)).is_ok()
            })
        });
        format!("{}/{}", up.unwrap_or(&bases[0]), self.vhost)
    }

    /// Starts (or restarts) `las-worker run` and waits until it is ready.
    pub async fn spawn_worker(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap();
        let mut cmd = self.worker_command(self.metrics_port, log);
        self.worker = Some(cmd.spawn().expect("starting las-worker"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = self.http_get("/readyz").await {
                return;
            }
            if let Some(child) = self.worker.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "las-worker exited during start-up with {status}; log: {}\n{}",
                    self.log_path.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "las-worker not ready within 60 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `las-worker run` for this world, with the settings of every worker of
    /// the tests, then `extra_env`; its metrics on `metrics_port`.
    fn worker_command(&self, metrics_port: u16, log: std::fs::File) -> Command {
        let mut cmd = Command::new(worker_bin());
        cmd.arg("run")
            .env("DATABASE_URL", self.database_url())
            .env("AMQP_URL", self.amqp_url())
            .env("METRICS_ADDR", format!("127.0.0.1:{metrics_port}"))
            .env("LOG_FORMAT", "json")
            .env(
                "RUST_LOG",
                "debug,sqlx=warn,lapin=warn,amq_protocol=warn,hyper=warn",
            )
            .env("BATCH_MAX_WAIT_MS", "5")
            .env("MAIL_DIR", self.mail_dir())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log));
        for (k, v) in &self.extra_env {
            cmd.env(k, v);
        }
        cmd
    }

    /// Where this world's worker writes e-mails (the file transport).
    pub fn mail_dir(&self) -> PathBuf {
        workspace_root()
            .join("target")
            .join("e2e-mail")
            .join(&self.id)
    }

    /// The `.eml` files written so far.
    pub fn mails(&self) -> Vec<String> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(self.mail_dir())
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.path().extension().is_some_and(|x| x == "eml"))
                    .map(|e| {
                        (
                            e.file_name().to_string_lossy().into_owned(),
                            std::fs::read_to_string(e.path()).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out.into_iter().map(|(_, body)| body).collect()
    }

    /// Kills the worker with SIGKILL (no graceful stop).
    pub fn kill_worker(&mut self) {
        if let Some(mut child) = self.worker.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Adds a portal user to a school; returns its id.
    pub async fn add_user(
        &self,
        brin: &str,
        name: &str,
        email: &str,
        role: &str,
        notify: bool,
    ) -> i64 {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO portal_users (school_id, display_name, email, role) SELECT id, $2, $3, $4 FROM schools WHERE brin = $1 RETURNING id",
        )
        .bind(brin)
        .bind(name)
        .bind(email)
        .bind(role)
        .fetch_one(&self.db)
        .await
        .unwrap();
        if notify {
            sqlx::query("INSERT INTO portal_user_rights (user_id, \"right\") VALUES ($1, 'notify_contact_changes')").bind(id).execute(&self.db).await.unwrap();
        }
        id
    }

    /// Binds a queue of this test to every sync event (`las.sync-events`, `#`);
    /// a quorum queue on a cluster (`Broker::quorum_test_queues`).
    pub async fn bind_events_queue(&self) {
        let conn = Connection::connect(&self.client_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut args = FieldTable::default();
        if self.broker.quorum_test_queues {
            args.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
        }
        ch.queue_declare(
            "test-events".into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            args,
        )
        .await
        .unwrap();
        ch.queue_bind(
            "test-events".into(),
            las_contracts::SYNC_EVENTS_EXCHANGE.into(),
            "#".into(),
            lapin::options::QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        let _ = conn.close(200, "done".into()).await;
    }

    /// Takes the sync events that arrived in the test queue so far.
    pub async fn take_events(&self) -> Vec<Value> {
        let conn = Connection::connect(&self.client_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get("test-events".into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            out.push(serde_json::from_slice(&m.delivery.data).unwrap());
        }
        let _ = conn.close(200, "done".into()).await;
        out
    }

    /// Waits until at least `n` sync events arrived (and a moment more for stragglers).
    pub async fn wait_events(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut got = Vec::new();
        loop {
            got.extend(self.take_events().await);
            if got.len() >= n {
                tokio::time::sleep(Duration::from_millis(500)).await;
                got.extend(self.take_events().await);
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} sync events, got {}: {got:?}\nlog:\n{}",
                got.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sets a worker environment variable for the next `spawn_worker`.
    pub fn extra_env_set(&mut self, key: &str, value: &str) {
        self.extra_env.retain(|(k, _)| k != key);
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    /// Sends SIGTERM and waits for the worker to exit; returns how long it took.
    pub fn stop_worker(&mut self) -> Option<Duration> {
        terminate(self.worker.take()?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// A minimal HTTP GET against the worker's endpoints: (status, body).
    pub async fn http_get(&self, path: &str) -> Option<(u16, String)> {
        http_get_port(self.metrics_port, path).await
    }

    /// Waits until the worker's `/metrics` satisfies `ok` (polled every
    /// 200 ms); returns the exposition. Fails the test with `what`, the last
    /// body and the log's path after `timeout`.
    pub async fn wait_metrics(
        &self,
        what: &str,
        timeout: Duration,
        ok: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let body = self
                .http_get("/metrics")
                .await
                .map(|(_, b)| b)
                .unwrap_or_default();
            if ok(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "metrics: {what} not seen within {timeout:?}; log: {}\n{body}",
                self.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Sum of `las_messages_total` per outcome.
    pub async fn message_counts(&self) -> BTreeMap<String, u64> {
        message_counts_port(self.metrics_port).await
    }

    /// Waits until the worker has handled at least `n` messages in total.
    pub async fn wait_handled(&self, n: u64) -> BTreeMap<String, u64> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let counts = self.message_counts().await;
            if counts.values().sum::<u64>() >= n {
                return counts;
            }
            assert!(
                Instant::now() < deadline,
                "worker handled {counts:?}, expected {n} messages in total; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes raw bodies to an exchange with a routing key, with confirms.
    pub async fn publish_raw(&self, exchange: &str, routing_key: &str, bodies: &[Vec<u8>]) {
        let conn = Connection::connect(&self.client_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for body in bodies {
            let confirm = ch
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions::default(),
                    body,
                    BasicProperties::default().with_delivery_mode(2),
                )
                .await
                .unwrap()
                .await
                .unwrap();
            assert!(confirm.is_ack(), "broker did not confirm a publish");
        }
        let _ = conn.close(200, "done".into()).await;
    }

    /// Publishes messages to the exchange and routing key their own fields name.
    pub async fn publish(&self, msgs: &[Value]) {
        for m in msgs {
            let (exchange, key) = route(m);
            self.publish_raw(&exchange, &key, &[serde_json::to_vec(m).unwrap()])
                .await;
        }
    }

    /// Runs `las-worker show`; `None` when it exits 1 (no such profile).
    pub fn show(&self, brin: &str, kind: &str, las_key: &str) -> Option<Value> {
        let out = Command::new(worker_bin())
            .args(["show", "--brin", brin, "--kind", kind, "--las-key", las_key])
            .env("DATABASE_URL", self.database_url())
            .env("LOG_FORMAT", "json")
            .output()
            .unwrap();
        match out.status.code() {
            Some(0) => Some(serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
                panic!(
                    "show printed no JSON ({e}): {}",
                    String::from_utf8_lossy(&out.stdout)
                )
            })),
            Some(1) => {
                assert!(
                    out.stdout.is_empty(),
                    "show must print nothing when there is no profile"
                );
                None
            }
            other => panic!(
                "show exited with {other:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ),
        }
    }

    /// Runs a `las-worker` command against this world's database: (exit code, stdout).
    pub fn cli(&self, args: &[&str]) -> (i32, String) {
        let out = Command::new(worker_bin())
            .args(args)
            .env("DATABASE_URL", self.database_url())
            .env("AMQP_URL", self.amqp_url())
            .env("LOG_FORMAT", "json")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// Publishes every message of an example file in `contracts/examples/`
    /// (`.json`: one message, `.ndjson`: one per line); returns how many.
    pub async fn publish_example(&self, name: &str) -> usize {
        let text = std::fs::read_to_string(
            workspace_root()
                .join("contracts")
                .join("examples")
                .join(name),
        )
        .unwrap();
        let msgs: Vec<Value> = if name.ends_with(".ndjson") {
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        } else {
            vec![serde_json::from_str(&text).unwrap()]
        };
        self.publish(&msgs).await;
        msgs.len()
    }

    /// Reads an example message from `contracts/examples/`.
    pub fn example(name: &str) -> Value {
        serde_json::from_str(
            &std::fs::read_to_string(
                workspace_root()
                    .join("contracts")
                    .join("examples")
                    .join(name),
            )
            .unwrap(),
        )
        .unwrap()
    }

    /// Takes every message from the dead-letter queue: (headers, body).
    pub async fn dead_letters(&self) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
        let conn = Connection::connect(&self.client_url(), ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        let mut out = Vec::new();
        while let Some(m) = ch
            .basic_get(
                las_contracts::DEAD_LETTER_QUEUE.into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
        {
            let mut headers = BTreeMap::new();
            if let Some(h) = m.delivery.properties.headers() {
                for (k, v) in h.inner() {
                    let v = match v {
                        AMQPValue::LongString(s) => {
                            String::from_utf8_lossy(s.as_bytes()).into_owned()
                        }
                        other => format!("{other:?}"),
                    };
                    headers.insert(k.to_string(), v);
                }
            }
            out.push((headers, m.delivery.data.clone()));
        }
        let _ = conn.close(200, "done".into()).await;
        out
    }

    /// Waits until `n` dead letters are queued, then takes them.
    pub async fn wait_dead_letters(&self, n: usize) -> Vec<(BTreeMap<String, String>, Vec<u8>)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut got = Vec::new();
        loop {
            got.extend(self.dead_letters().await);
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} dead letters, got {}; log:\n{}",
                got.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Links a school and waits until the worker has stored it.
    pub async fn link(&self, link: Value) {
        let brin = link["brin"].as_str().unwrap().to_owned();
        self.publish(&[link]).await;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schools WHERE brin = $1")
                .bind(&brin)
                .fetch_one(&self.db)
                .await
                .unwrap_or(0);
            if n == 1 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "school {brin} was not linked; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.stop_worker();
        let _ = Command::new("psql")
            .args([
                PG_ADMIN_URL,
                "-q",
                "-c",
                &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if self.broker.delete_vhost_on_drop {
            let _ = self.broker.ctl(&["delete_vhost", &self.vhost]);
        }
        let _ = std::fs::remove_dir_all(self.mail_dir());
    }
}

/// Exchange and routing key of a message, from its own fields.
pub fn route(m: &Value) -> (String, String) {
    let brin = m["brin"].as_str().unwrap_or("0000");
    match m["schema"].as_str() {
        Some("portal.link.v1") => (
            las_contracts::PORTAL_REQUESTS_EXCHANGE.into(),
            format!("portal.{brin}.link"),
        ),
        Some("portal.parent_edit.v1") => (
            las_contracts::PORTAL_REQUESTS_EXCHANGE.into(),
            format!("portal.{brin}.parent_edit"),
        ),
        Some("portal.erasure.v1") => (
            las_contracts::PORTAL_REQUESTS_EXCHANGE.into(),
            format!("portal.{brin}.erasure"),
        ),
        Some("portal.coupling.v1") => (
            las_contracts::PORTAL_REQUESTS_EXCHANGE.into(),
            format!("portal.{brin}.coupling"),
        ),
        _ => (
            las_contracts::LAS_CHANGES_EXCHANGE.into(),
            format!(
                "las.{brin}.{}",
                m["change"]["type"].as_str().unwrap_or("unknown")
            ),
        ),
    }
}

/// A ParnasSys link for `brin` with environment `env`.
pub fn parnassys_link(brin: &str, env: &str) -> Value {
    json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": brin, "system": "parnassys", "environment_id": env})
}

/// An ESIS link labelled `BasisOnline Ouderportaal`.
pub fn esis_link(brin: &str, env: &str) -> Value {
    json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": brin, "system": "esis", "environment_id": env, "label": las_contracts::ESIS_PORTAL_LABEL})
}

/// The source of a ParnasSys environment.
pub fn parnassys(env: &str) -> Value {
    json!({"system": "parnassys", "environment_id": env, "label": null})
}

/// The source of an ESIS environment with a label.
pub fn esis(env: &str, label: &str) -> Value {
    json!({"system": "esis", "environment_id": env, "label": label})
}

/// A change message with a fresh id.
pub fn change(brin: &str, source: Value, version: u64, change: Value) -> Value {
    json!({
        "schema": "las.change.v1",
        "message_id": uuid::Uuid::new_v4(),
        "brin": brin,
        "source": source,
        "emitted_at": chrono::Utc::now().to_rfc3339(),
        "version": version,
        "change": change,
    })
}

/// Reads a header table value as text (for tests that inspect raw headers).
pub fn header_text(h: &FieldTable, key: &str) -> Option<String> {
    h.inner()
        .iter()
        .find(|(k, _)| k.as_str() == key)
        .map(|(_, v)| match v {
            AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => format!("{other:?}"),
        })
}

// ---------------------------------------------------------------------------
// Helpers for the operations tests (tests/tests/operations.rs): broker
// inspection through rabbitmqctl, bulk publishing, metric parsing.
// ---------------------------------------------------------------------------

/// Runs `rabbitmqctl` and returns its standard output, or an error with its
/// standard error.
pub fn rabbitmqctl_output(args: &[&str]) -> Result<String, String> {
    let out = Command::new("rabbitmqctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run rabbitmqctl ({e}): install rabbitmq-server"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "rabbitmqctl {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        ))
    }
}

/// The value of one sample in a Prometheus text exposition: `sample` is the
/// metric name with its labels exactly as rendered (labels sorted by name),
/// e.g. `las_consumer_up{queue="changes"}`.
pub fn metric_sample(body: &str, sample: &str) -> Option<f64> {
    body.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (name, value) = l.rsplit_once(' ')?;
        (name == sample).then(|| value.parse().ok()).flatten()
    })
}

/// Asserts from a `/metrics` body that both consumers connected once and
/// reconnected at least twice, and are up again.
pub fn assert_reconnected_twice(body: &str) {
    for q in ["changes", "portal"] {
        let n = metric_sample(
            body,
            &format!("las_broker_connections_total{{queue=\"{q}\"}}"),
        );
        assert!(
            n >= Some(3.0),
            "{q}: 1 connection + 2 reconnects, got {n:?}"
        );
        assert_eq!(
            metric_sample(body, &format!("las_consumer_up{{queue=\"{q}\"}}")),
            Some(1.0)
        );
    }
}

/// Sum of every sample of a family (`name` or `name{...}`) whose labels
/// contain all of `labels` (e.g. `[("outcome", "applied")]`).
pub fn metric_sum(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = match series.split_once('{') {
                Some((n, rest)) => (n, rest),
                None => (series, ""),
            };
            if n != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

impl TestEnv {
    /// A fresh world (database and vhost) without a worker; start one with
    /// `spawn_worker` (after `extra_env_set`, if needed).
    pub async fn start_without_worker() -> TestEnv {
        Self::new_world(Broker::local()).await
    }

    /// `start_without_worker` on `broker`.
    pub async fn start_without_worker_on(broker: Broker) -> TestEnv {
        Self::new_world(broker).await
    }

    /// `messages` (ready + unacknowledged) per queue of this world's vhost.
    pub fn queue_depths(&self) -> BTreeMap<String, u64> {
        let out = self
            .broker
            .ctl(&[
                "list_queues",
                "-q",
                "-s",
                "-p",
                &self.vhost,
                "name",
                "messages",
            ])
            .unwrap();
        out.lines()
            .filter_map(|l| {
                let mut cols = l.split('\t');
                let name = cols.next()?.trim().to_owned();
                let n = cols.next()?.trim().parse().ok()?;
                Some((name, n))
            })
            .collect()
    }

    /// Waits until a queue of this world's vhost holds `n` messages (ready +
    /// unacknowledged); panics with the depths seen after `timeout`.
    pub async fn wait_queue_depth(&self, queue: &str, n: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let depths = self.queue_depths();
            if depths.get(queue) == Some(&n) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue {queue} should hold {n} messages; depths {depths:?}; log: {}",
                self.log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Closes, through the broker, every connection of the worker in this
    /// vhost (the ones named `las-worker ...`); returns how many it closed.
    /// Other connections in the vhost (a test's publisher) stay open.
    pub fn kill_worker_connections(&self, reason: &str) -> usize {
        let out = self
            .broker
            .ctl(&[
                "list_connections",
                "-q",
                "-s",
                "pid",
                "vhost",
                "client_properties",
            ])
            .unwrap();
        let mut closed = 0;
        for line in out.lines() {
            let mut cols = line.splitn(3, '\t');
            let (Some(pid), Some(vhost), Some(props)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            if vhost.trim() == self.vhost && props.contains("las-worker") {
                self.broker
                    .ctl(&["close_connection", pid.trim(), reason])
                    .unwrap();
                closed += 1;
            }
        }
        closed
    }

    /// Publishes many messages over one connection, with publisher confirms
    /// awaited per chunk (much faster than `publish`); each message goes to
    /// the exchange and routing key its own fields name.
    pub async fn publish_many(&self, msgs: &[Value]) {
        publish_many_to(&self.client_url(), msgs).await;
    }
}

/// `TestEnv::publish_many` without the `TestEnv`, for a publisher running in
/// a background task while the test holds the environment.
pub async fn publish_many_to(amqp_url: &str, msgs: &[Value]) {
    let raw: Vec<(String, String, Vec<u8>)> = msgs
        .iter()
        .map(|m| {
            let (exchange, key) = route(m);
            (exchange, key, serde_json::to_vec(m).unwrap())
        })
        .collect();
    publish_bytes_to(amqp_url, &raw).await;
}

// ---------------------------------------------------------------------------
// Helpers for the operator tools tests (tests/tests/operator_tools.rs).
// ---------------------------------------------------------------------------

/// The path of an example file in `contracts/examples/`.
pub fn example_path(name: &str) -> String {
    workspace_root()
        .join("contracts")
        .join("examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

impl TestEnv {
    /// Runs a `las-worker` command against this world: (exit code, stdout, stderr).
    pub fn cli_output(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(worker_bin())
            .args(args)
            .env("DATABASE_URL", self.database_url())
            .env("AMQP_URL", self.amqp_url())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Writes lines (messages, or anything else) as an NDJSON file of this
    /// world; returns its path.
    pub fn write_file(&self, name: &str, lines: &[String]) -> String {
        let dir = workspace_root()
            .join("target")
            .join("e2e-files")
            .join(&self.id);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        path.to_string_lossy().into_owned()
    }
}

// ---------------------------------------------------------------------------
// Helpers for the fault-injection tests (tests/tests/faults.rs): metrics of
// any worker process, a second worker process on the same world, the
// worker's pid and memory.
// ---------------------------------------------------------------------------

/// A minimal HTTP GET against `127.0.0.1:port`: (status, body).
pub async fn http_get_port(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    let status = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}

/// Sum of `las_messages_total` per outcome of the worker whose metrics are
/// on `port` (empty when it does not answer).
pub async fn message_counts_port(port: u16) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some((_, body)) = http_get_port(port, "/metrics").await else {
        return out;
    };
    for line in body
        .lines()
        .filter(|l| l.starts_with("las_messages_total{"))
    {
        let outcome = line
            .split("outcome=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *out.entry(outcome.to_owned()).or_default() += n as u64;
    }
    out
}

/// Memory of a process from `/proc/<pid>/status`, in KiB: (VmRSS, VmHWM).
pub fn process_memory_kib(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse::<u64>()
            .ok()
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Another `las-worker run` process on the same database and vhost as a
/// `TestEnv`'s worker (a replica), with its own metrics port and log file.
/// Killed (SIGKILL) when dropped.
pub struct ExtraWorker {
    pub metrics_port: u16,
    pub log_path: PathBuf,
    child: Option<Child>,
}

impl ExtraWorker {
    pub async fn message_counts(&self) -> BTreeMap<String, u64> {
        message_counts_port(self.metrics_port).await
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        running(&mut self.child)
    }

    /// Stops the process with SIGTERM and waits for it (at most 90 s).
    pub fn stop(&mut self) {
        if let Some(child) = self.child.take() {
            terminate(child);
        }
    }
}

/// Sends SIGTERM and waits for the process to exit (at most 90 s, then
/// SIGKILL); returns how long it took, or `None` when it had to be killed.
fn terminate(mut child: Child) -> Option<Duration> {
    let started = Instant::now();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// True while the process has not exited.
fn running(child: &mut Option<Child>) -> bool {
    child
        .as_mut()
        .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
}

impl Drop for ExtraWorker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl TestEnv {
    /// The pid of the running worker process, if any.
    pub fn worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(Child::id)
    }

    /// True while the worker process started by `spawn_worker` has not exited.
    pub fn worker_running(&mut self) -> bool {
        running(&mut self.worker)
    }

    /// Starts a second worker process on this world (same database, same
    /// vhost, same `extra_env`), and waits until it is ready.
    pub async fn spawn_extra_worker(&self, name: &str) -> ExtraWorker {
        let log_path = self.log_path.with_extension(format!("{name}.log"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .unwrap();
        let metrics_port = free_port();
        let mut child = self
            .worker_command(metrics_port, log)
            .spawn()
            .expect("starting a second las-worker");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some((200, _)) = http_get_port(metrics_port, "/readyz").await {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "second las-worker exited during start-up with {status}; log: {}",
                    log_path.display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "second las-worker not ready within 60 s; log: {}",
                log_path.display()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        ExtraWorker {
            metrics_port,
            log_path,
            child: Some(child),
        }
    }
}

/// Publishes raw bodies, each to its own exchange and routing key, over one
/// connection with publisher confirms awaited per chunk (for loads that mix
/// bytes that are not JSON into valid messages).
pub async fn publish_bytes_to(amqp_url: &str, msgs: &[(String, String, Vec<u8>)]) {
    // The worker's own `publish` path: one connection, persistent messages,
    // every publisher confirm awaited.
    let confirmed = las_worker::adapters::amqp::publish_all(amqp_url, msgs)
        .await
        .unwrap();
    assert_eq!(confirmed, msgs.len(), "broker did not confirm a publish");
}

// ---------------------------------------------------------------------------
// Helpers of the fault tests (tests/tests/faults.rs, tests/tests/cluster.rs):
// message ids, polling, parent edits and their e-mails.
// ---------------------------------------------------------------------------

/// The message ids of messages, in order.
pub fn ids(msgs: &[Value]) -> Vec<uuid::Uuid> {
    msgs.iter()
        .map(|m| m["message_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// The distinct message ids of messages.
pub fn distinct_ids(msgs: &[Value]) -> Vec<uuid::Uuid> {
    let set: BTreeSet<uuid::Uuid> = ids(msgs).into_iter().collect();
    set.into_iter().collect()
}

/// How many of `ids` are in `processed_messages`.
pub async fn processed(env: &TestEnv, ids: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_messages WHERE message_id = ANY($1)")
        .bind(ids)
        .fetch_one(&env.db)
        .await
        .unwrap_or(-1)
}

/// Polls `check` until it returns `Ok`; panics after `timeout` with what was
/// expected and the last thing seen.
pub async fn wait_for<F>(what: &str, timeout: Duration, mut check: F)
where
    F: AsyncFnMut() -> Result<(), String>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let seen = match check().await {
            Ok(()) => return,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "expected {what} within {timeout:?}; seen: {seen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every id is in `processed_messages`.
pub async fn wait_processed(env: &TestEnv, ids: &[uuid::Uuid], timeout: Duration) {
    let want = ids.len() as i64;
    wait_for(
        &format!("all {want} message ids in processed_messages"),
        timeout,
        async || {
            let n = processed(env, ids).await;
            if n == want {
                Ok(())
            } else {
                Err(format!("{n} (log: {})", env.log_path.display()))
            }
        },
    )
    .await;
}

/// A parent edit of a guardian (portal.parent_edit.v1).
pub fn edit(brin: &str, guardian: &str, changes: Value) -> Value {
    json!({"schema": "portal.parent_edit.v1", "message_id": uuid::Uuid::new_v4(), "brin": brin,
        "guardian_las_key": guardian, "edited_at": "2026-11-20T08:00:00Z", "changes": changes})
}

/// The idempotency keys of every e-mail in the outbox.
pub async fn outbox_keys(env: &TestEnv) -> BTreeSet<String> {
    uuid_column(env, "SELECT idempotency_key FROM email_outbox").await
}

/// Two recipients of suggestion e-mails (R10).
pub async fn recipients(env: &TestEnv, brin: &str) {
    env.add_user(
        brin,
        "Koppelbeheerder",
        "beheer@school.example",
        "link_admin",
        false,
    )
    .await;
    env.add_user(brin, "Juf Ans", "ans@school.example", "teacher", true)
        .await;
}

/// Waits until `want` suggestion e-mails are `sent` in the outbox.
pub async fn wait_emails_sent(
    env: &TestEnv,
    api: &mailapi::MailApi,
    want: i64,
    timeout: Duration,
    what: &str,
) {
    wait_for(what, timeout, async || {
        let sent: i64 =
            sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE status = 'sent'")
                .fetch_one(&env.db)
                .await
                .unwrap_or(-1);
        if sent == want {
            Ok(())
        } else {
            Err(format!(
                "{sent} of {want} sent; API calls {}",
                api.calls().len()
            ))
        }
    })
    .await;
}

/// Waits until every event of the event outbox is published (confirmed by
/// the broker).
pub async fn wait_events_published(env: &TestEnv, timeout: Duration) {
    wait_for("every sync event published", timeout, async || {
        let left: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM event_outbox_events WHERE published_at IS NULL",
        )
        .fetch_one(&env.db)
        .await
        .unwrap_or(-1);
        if left == 0 {
            Ok(())
        } else {
            Err(format!("{left} unpublished"))
        }
    })
    .await;
}

/// The id of every event in the event outbox.
pub async fn outbox_event_ids(env: &TestEnv) -> BTreeSet<String> {
    uuid_column(env, "SELECT event_id FROM event_outbox_events").await
}

/// The distinct values of a query's one uuid column, as text.
async fn uuid_column(env: &TestEnv, sql: &'static str) -> BTreeSet<String> {
    sqlx::query_scalar::<_, uuid::Uuid>(sql)
        .fetch_all(&env.db)
        .await
        .unwrap()
        .into_iter()
        .map(|k| k.to_string())
        .collect()
}
