//! Reliability on a three-node RabbitMQ cluster (issue #17): a node lost in
//! the middle of a drain loses nothing.
//!
//! Every test starts its own cluster (`las_e2e::cluster`, one at a time),
//! declares the worker's quorum queues through the worker (a replica on each
//! node), links the schools of the benchmark's load (`las_e2e::load`, fixed
//! seed: several schools, exports, updates, removals, stale versions and
//! duplicates) and publishes it with confirms while no worker runs, with
//! poison messages in between. Then two worker replicas, each given the three
//! node addresses, drain it; parent edits arrive on the portal queue during
//! the drain; and at a set point of the drain the test injects its fault:
//!
//! 1. kill -9 of the node most of the replicas' consumers are connected to;
//! 2. graceful stop of the node leading `las-worker.changes`, then its start;
//! 3. a rolling restart of the three nodes, one after the other;
//! 4. a memory alarm on one node (on 3.10 it blocks publishers cluster-wide)
//!    for a few seconds, then cleared;
//! 5. a network cut between the workers and one node: each node behind a TCP
//!    proxy, the worker given the proxies; one proxy drops every connection
//!    and refuses new ones for a few seconds.
//!
//! Nobody acts after the fault: the drain has to finish by itself. Then every
//! message is accounted for through the database (metrics of a process are
//! only a cross-check): every distinct message id in `processed_messages`
//! (applied or stale), every poison message dead-lettered once with its
//! reason and nothing else dead-lettered, so published = applied + stale +
//! duplicate copies + dead-lettered; no change journalled twice; every
//! profile of the load at its newest version; every suggestion e-mail
//! accepted once by the (fake) e-mail API; every event of the event outbox
//! received on a quorum queue bound to the sync-event exchange.
//!
//! `no_fault_baseline` drains the same load without a fault: the drain time
//! each fault costs is the difference. Each test prints its figures
//! (`cluster-timing:` lines, also appended to
//! `target/e2e-logs/cluster-timings.log`).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use las_contracts::{CHANGES_QUEUE, DEAD_LETTER_QUEUE, LAS_CHANGES_EXCHANGE, PORTAL_QUEUE};
use las_e2e::cluster::{Cluster, ClusterHandle, NODES};
use las_e2e::load::{self, FinalProfile, Load};
use las_e2e::mailapi::{MailApi, MailMode};
use las_e2e::proxy::TcpProxy;
use las_e2e::*;
use serde_json::{Value, json};

/// The load's seed and default size (change messages; `LAS_CLUSTER_MESSAGES`
/// overrides it).
const SEED: u64 = 17;
const MESSAGES: usize = 50_000;
/// Parent edits published during the drain, one every `EDIT_EVERY`.
const EDITS: usize = 10;
const EDIT_EVERY: Duration = Duration::from_millis(1500);
/// Poison messages published between the changes (dead-lettered by reason).
const POISON: usize = 12;
/// Longest a drain may take, fault included, before the test gives up.
const DRAIN_LIMIT: Duration = Duration::from_secs(240);

/// A poison message (exchange, routing key, body) and the reason code it
/// must be dead-lettered with.
type Poison = ((String, String, Vec<u8>), &'static str);

/// A profile as stored: BRIN, kind, LAS key, version, status, first and
/// last name.
type ProfileRow = (
    String,
    String,
    String,
    i64,
    String,
    Option<String>,
    Option<String>,
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    None,
    KillConnectedNode,
    StopLeader,
    RollingRestart,
    MemoryAlarm,
    NetworkCut,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::None => "no fault",
            Fault::KillConnectedNode => "kill -9 of the connected node",
            Fault::StopLeader => "stop and start of the changes queue's leader",
            Fault::RollingRestart => "rolling restart of the three nodes",
            Fault::MemoryAlarm => "memory alarm on one node",
            Fault::NetworkCut => "network cut between the workers and one node",
        }
    }

    /// The share of the load applied when the fault is injected.
    fn at(self) -> f64 {
        match self {
            // Three restarts take longer than the drain: start early.
            Fault::RollingRestart => 0.0,
            _ => 0.25,
        }
    }

    /// How many times the standard load: three graceful stops and starts
    /// take 50-90 s here, so the rolling restart drains a larger load, from
    /// its first message, and more slowly (`worker_settings`), for the last
    /// node's stop to begin well inside the drain.
    fn load_factor(self) -> f64 {
        match self {
            Fault::RollingRestart => 4.0,
            _ => 1.0,
        }
    }

    /// Worker settings for this fault, on top of the defaults. A larger
    /// load alone does not keep the rolling restart inside the drain: a
    /// node's start recovers its quorum logs, so it slows as the backlog
    /// grows (one CI run: a start of 34 s, the drain over before the third
    /// stop). The replicas drain one small batch at a time instead, which
    /// also leaves the nodes CPU to start with. What is checked does not
    /// depend on the rate.
    fn worker_settings(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Fault::RollingRestart => &[
                ("BATCH_CONCURRENCY", "1"),
                ("BATCH_SIZE", "50"),
                ("PREFETCH", "100"),
            ],
            _ => &[],
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn no_fault_baseline() {
    drain_with(Fault::None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_the_connected_node_mid_drain_loses_nothing() {
    drain_with(Fault::KillConnectedNode).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_the_changes_queue_leader_mid_drain_loses_nothing() {
    drain_with(Fault::StopLeader).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rolling_restart_of_all_nodes_mid_drain_loses_nothing() {
    drain_with(Fault::RollingRestart).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_alarm_mid_drain_blocks_then_resumes_and_loses_nothing() {
    drain_with(Fault::MemoryAlarm).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn network_cut_to_one_node_mid_drain_loses_nothing() {
    drain_with(Fault::NetworkCut).await;
}

// ---------------------------------------------------------------------------
// The scenario
// ---------------------------------------------------------------------------

/// What the fault task did and saw.
#[derive(Debug, Default)]
struct FaultReport {
    /// When the fault began and ended, from the start of the drain.
    began: Option<Duration>,
    ended: Option<Duration>,
    /// When the last fault action began (a node's stop or kill, the alarm,
    /// the cut): it must be inside the drain.
    last_hit: Option<Duration>,
    note: String,
    /// A worker reported a blocked connection (metric and /readyz).
    saw_blocked_metric: bool,
    saw_blocked_readyz: bool,
}

async fn drain_with(fault: Fault) {
    let cluster = Cluster::start();
    // From here: the wait for another test's cluster is not this test's time.
    let test_started = Instant::now() - cluster.start_took;
    let cluster_up = cluster.start_took;
    let handle = cluster.handle();
    let mut phases = Phases::new(fault);

    // The worker's view of the broker: the nodes, or a proxy in front of each.
    let proxies: Vec<Arc<TcpProxy>> = if fault == Fault::NetworkCut {
        let mut v = Vec::new();
        for n in 1..=NODES {
            v.push(Arc::new(
                TcpProxy::start(&format!("127.0.0.1:{}", cluster.port(n))).await,
            ));
        }
        v
    } else {
        Vec::new()
    };
    let broker = if proxies.is_empty() {
        cluster.broker()
    } else {
        let bases: Vec<String> = proxies
            .iter()
            .map(|p| format!("amqp://guest:guest@127.0.0.1:{}", p.port))
            .collect();
        cluster.broker_via(&bases)
    };
    let api = MailApi::start(MailMode::Ok).await;
    let mut env = TestEnv::start_without_worker_on(broker).await;
    for (k, v) in [
        ("MAIL_API_URL", api.url().as_str()),
        ("MAIL_API_TOKEN", "test-token"),
        ("LAS_TODAY", load::TODAY),
        // One debug line per message is a lot of log for two replicas.
        (
            "RUST_LOG",
            "info,sqlx=warn,lapin=warn,amq_protocol=warn,hyper=warn",
        ),
    ]
    .into_iter()
    .chain(fault.worker_settings().iter().copied())
    {
        env.extra_env_set(k, v);
    }
    assert!(
        env.amqp_url().split(',').count() == NODES,
        "the worker is given every node: {}",
        env.amqp_url()
    );
    phases.mark("world created");
    env.spawn_worker().await;
    phases.mark("worker ready");

    // The worker declared its quorum queues: a replica on every node.
    let vhost = env.vhost.clone();
    let v = vhost.clone();
    let members = handle.with(move |c| c.members_blocking(&v)).await;
    for q in [CHANGES_QUEUE, PORTAL_QUEUE, DEAD_LETTER_QUEUE] {
        assert_eq!(
            members.get(q),
            Some(&vec![1, 2, 3]),
            "{q}: a replica on each node ({members:?})"
        );
    }
    env.bind_events_queue().await;
    phases.mark("worker started, queue replicas checked");

    // Setup: the schools linked, the guardians of the parent edits and the
    // e-mail recipients in place. Then the worker stops, and the load is
    // published with confirms while nobody consumes.
    let messages = std::env::var("LAS_CLUSTER_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MESSAGES);
    let messages = (messages as f64 * fault.load_factor()) as usize;
    let mut load = Load::generate(SEED, messages, None);
    load::publish(&env.client_url(), &mut load.links, 100)
        .await
        .unwrap();
    let schools = load.links.len() as i64;
    wait_for("every school linked", Duration::from_secs(60), async || {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM schools")
            .fetch_one(&env.db)
            .await
            .unwrap_or(0);
        if n == schools {
            Ok(())
        } else {
            Err(format!("{n} of {schools}"))
        }
    })
    .await;
    let sources = load.sources();
    let (edit_brin, edit_source) = sources
        .iter()
        .find(|(_, s)| s["system"] == "parnassys")
        .cloned()
        .unwrap();
    let parents: Vec<Value> = (0..EDITS)
        .map(|i| change(&edit_brin, edit_source.clone(), 1, json!({"type": "guardian.upserted", "las_key": format!("EDIT{i:02}"), "first_name": "Ouder", "phone": "030-1"})))
        .collect();
    env.publish_many(&parents).await;
    wait_processed(&env, &ids(&parents), Duration::from_secs(60)).await;
    recipients(&env, &edit_brin).await;
    env.stop_worker();
    phases.mark("schools linked, edit guardians and recipients in place");

    let poison = poison_messages(&edit_brin);
    let published_at = Instant::now();
    publish_with_poison(&env.client_url(), &mut load, &poison).await;
    let publish_took = published_at.elapsed();
    let deliveries = load.changes.len() + poison.len();
    phases.mark("load published with confirms");
    let distinct = load.distinct_ids();
    let processed_before: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages")
        .fetch_one(&env.db)
        .await
        .unwrap();

    // The drain: two replicas, the parent edits arriving meanwhile, the fault.
    env.spawn_worker().await;
    let drain_started = Instant::now();
    let second = env.spawn_extra_worker("second").await;
    let edits: Vec<Value> = (0..EDITS)
        .map(|i| {
            edit(
                &edit_brin,
                &format!("EDIT{i:02}"),
                json!([{"field": "phone", "proposed": format!("06-{:08}", 17_000_000 + i)}]),
            )
        })
        .collect();
    let edit_publisher = tokio::spawn(publish_edits(
        cluster
            .bases
            .iter()
            .map(|b| format!("{b}/{vhost}"))
            .collect(),
        edits.clone(),
        drain_started,
    ));

    let progress = Arc::new(AtomicU64::new(0));
    let drained = Arc::new(AtomicBool::new(false));
    let fault_task = tokio::spawn(inject(
        fault,
        handle.clone(),
        vhost.clone(),
        proxies.clone(),
        [env.metrics_port, second.metrics_port],
        progress.clone(),
        distinct.len() as u64,
        drained.clone(),
        drain_started,
    ));

    let want = distinct.len() as i64;
    let mut env = env;
    let mut second = second;
    let drain = loop {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages")
            .fetch_one(&env.db)
            .await
            .unwrap_or(processed_before)
            - processed_before;
        progress.store(n.max(0) as u64, Ordering::SeqCst);
        // Edits are processed too: count the load's own ids once the total
        // says it may be complete.
        if n >= want && processed(&env, &distinct).await == want {
            break drain_started.elapsed();
        }
        assert!(
            env.worker_running() && second.is_running(),
            "a worker process died during the drain; logs: {} {}",
            env.log_path.display(),
            second.log_path.display()
        );
        assert!(
            drain_started.elapsed() < DRAIN_LIMIT,
            "{}: the drain did not finish by itself within {DRAIN_LIMIT:?}: {n} of {want} applied; logs: {} {}",
            fault.name(),
            env.log_path.display(),
            second.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drained.store(true, Ordering::SeqCst);
    phases.mark("drained");
    let report = fault_task.await.unwrap();
    if fault != Fault::None {
        assert!(
            report.last_hit.is_some_and(|t| t < drain),
            "{}: the fault's last action began during the drain (drained at {drain:?}; {report:?})",
            fault.name()
        );
    }
    let edit_attempts = edit_publisher.await.unwrap();
    phases.mark("fault task and edit publisher done");

    verify(
        fault,
        &env,
        &second,
        &api,
        &load,
        &poison,
        &edits,
        edit_attempts,
        &report,
    )
    .await;
    assert!(
        env.worker_running() && second.is_running(),
        "both worker processes ran through"
    );
    phases.mark("verified");

    let total = test_started.elapsed();
    let line = format!(
        "cluster-timing: {:<46} drain {:>6.1} s ({} messages, {:.0}/s; published in {:.1} s){}; cluster up in {:.1} s; test {:.1} s",
        fault.name(),
        drain.as_secs_f64(),
        deliveries,
        deliveries as f64 / drain.as_secs_f64(),
        publish_took.as_secs_f64(),
        match (report.began, report.ended) {
            (Some(b), Some(e)) => format!(
                "; fault from {:.1} s to {:.1} s: {}",
                b.as_secs_f64(),
                e.as_secs_f64(),
                report.note
            ),
            _ => String::new(),
        },
        cluster_up.as_secs_f64(),
        total.as_secs_f64()
    );
    eprintln!("{line}");
    record(&line);
    // Workers first (no reconnect noise), then the proxies and the cluster.
    drop(second);
    drop(env);
    drop(proxies);
    drop(cluster);
}

/// Prints how long each phase of a test took (where the suite's time goes).
struct Phases {
    fault: Fault,
    last: Instant,
}

impl Phases {
    fn new(fault: Fault) -> Phases {
        Phases {
            fault,
            last: Instant::now(),
        }
    }

    fn mark(&mut self, what: &str) {
        eprintln!(
            "cluster: {}: {what} in {:.1} s",
            self.fault.name(),
            self.last.elapsed().as_secs_f64()
        );
        self.last = Instant::now();
    }
}

/// Appends a line to `target/e2e-logs/cluster-timings.log`.
fn record(line: &str) {
    use std::io::Write;
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("target")
        .join("e2e-logs");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("cluster-timings.log"))
    {
        let _ = writeln!(
            f,
            "{} {line}",
            chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ")
        );
    }
}

// ---------------------------------------------------------------------------
// Load: poison and parent edits
// ---------------------------------------------------------------------------

/// Poison messages, each with the reason it must be dead-lettered with.
fn poison_messages(brin: &str) -> Vec<Poison> {
    let x = LAS_CHANGES_EXCHANGE.to_owned();
    let raw = |m: &Value| {
        let (x, k) = route(m);
        (x, k, serde_json::to_vec(m).unwrap())
    };
    (0..POISON)
        .map(|i| match i % 4 {
            0 => (
                (
                    x.clone(),
                    format!("las.{brin}.guardian.upserted"),
                    format!("{{\"broken\": {i},").into_bytes(),
                ),
                "invalid_json",
            ),
            1 => {
                let mut m = change(
                    brin,
                    json!({"system": "parnassys", "environment_id": "x", "label": null}),
                    1,
                    json!({"type": "guardian.upserted", "las_key": format!("X{i}")}),
                );
                m["schema"] = json!("las.change.v9");
                (raw(&m), "unknown_schema")
            }
            2 => (
                raw(&change(
                    "99ZZ",
                    json!({"system": "parnassys", "environment_id": "x", "label": null}),
                    1,
                    json!({"type": "student.upserted", "las_key": format!("U{i}")}),
                )),
                "unknown_brin",
            ),
            _ => (
                raw(&change(
                    brin,
                    json!({"system": "parnassys", "environment_id": "x", "label": null}),
                    1,
                    json!({"type": "guardian.upserted", "first_name": format!("Geen sleutel {i}")}),
                )),
                "validation_failed",
            ),
        })
        .collect()
}

/// Publishes the load's changes with confirms, a poison message after each
/// of `poison.len()` equal chunks (so poison is spread over the drain).
async fn publish_with_poison(url: &str, load: &mut Load, poison: &[Poison]) {
    let chunk = load.changes.len().div_ceil(poison.len().max(1));
    let mut p = poison.iter();
    for part in load.changes.chunks_mut(chunk) {
        load::publish(url, part, 2000).await.unwrap();
        if let Some((msg, _)) = p.next() {
            publish_bytes_to(url, std::slice::from_ref(msg)).await;
        }
    }
    for (msg, _) in p {
        publish_bytes_to(url, std::slice::from_ref(msg)).await;
    }
}

/// Publishes the parent edits one every `EDIT_EVERY` from `from`, each with a
/// confirm, through whichever node takes it (the fault may have one down or
/// blocked): an attempt that fails or is not confirmed within 15 s is made
/// again on the next node, with the same message id. Returns the attempts.
async fn publish_edits(urls: Vec<String>, edits: Vec<Value>, from: Instant) -> usize {
    let mut attempts = 0;
    let mut node = 0;
    for (i, e) in edits.iter().enumerate() {
        tokio::time::sleep_until((from + EDIT_EVERY * i as u32).into()).await;
        let (x, k) = route(e);
        let msg = vec![(x, k, serde_json::to_vec(e).unwrap())];
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            attempts += 1;
            let url = &urls[node % urls.len()];
            let sent = tokio::time::timeout(
                Duration::from_secs(15),
                las_worker::adapters::amqp::publish_all(url, &msg),
            )
            .await;
            if matches!(sent, Ok(Ok(1))) {
                break;
            }
            node += 1;
            assert!(
                Instant::now() < deadline,
                "parent edit {i} not confirmed by any node within 120 s: {sent:?}"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    attempts
}

// ---------------------------------------------------------------------------
// Faults
// ---------------------------------------------------------------------------

/// The node most of the replicas' changes consumers are connected to (ties:
/// the one with more of their other connections, then the lower index), and
/// the worker connections per node and name for the report.
fn busiest_node(c: &ClusterHandle, vhost: &str) -> (usize, BTreeMap<usize, Vec<String>>) {
    let mut per_node: BTreeMap<usize, Vec<String>> = BTreeMap::new();
    for (name, node) in c.connections_blocking(vhost) {
        // ("las-worker publish" is the test's own publisher of parent edits.)
        if let Some(short) = name.strip_prefix("las-worker ").filter(|n| *n != "publish") {
            per_node.entry(node).or_default().push(short.to_owned());
        }
    }
    let score = |names: &Vec<String>| {
        (
            names.iter().filter(|n| *n == "changes").count(),
            names.len(),
        )
    };
    let node = per_node
        .iter()
        .max_by_key(|(n, names)| (score(names), std::cmp::Reverse(**n)))
        .map(|(n, _)| *n)
        .unwrap_or(1);
    (node, per_node)
}

/// Waits until `progress` reaches the fault's point of the drain, injects
/// the fault, and undoes it as the scenario says (a killed node stays down).
#[allow(clippy::too_many_arguments)]
async fn inject(
    fault: Fault,
    c: ClusterHandle,
    vhost: String,
    proxies: Vec<Arc<TcpProxy>>,
    metrics_ports: [u16; 2],
    progress: Arc<AtomicU64>,
    total: u64,
    drained: Arc<AtomicBool>,
    drain_started: Instant,
) -> FaultReport {
    let mut r = FaultReport::default();
    if fault == Fault::None {
        return r;
    }
    let point = (total as f64 * fault.at()) as u64;
    while progress.load(Ordering::SeqCst) < point {
        if drained.load(Ordering::SeqCst) {
            r.note = "the drain ended before the fault point".into();
            return r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.began = Some(drain_started.elapsed());
    let v = vhost.clone();
    let (busiest, per_node) = c.with(move |c| busiest_node(c, &v)).await;
    if matches!(fault, Fault::KillConnectedNode | Fault::NetworkCut) {
        assert!(
            per_node
                .get(&busiest)
                .is_some_and(|names| names.iter().any(|n| n == "changes")),
            "{}: node {busiest} holds a changes consumer of the replicas: {per_node:?}",
            fault.name()
        );
    }
    match fault {
        Fault::None => {}
        Fault::KillConnectedNode => {
            r.last_hit = Some(drain_started.elapsed());
            c.with(move |c| c.kill_blocking(busiest)).await;
            r.note = format!(
                "killed node {busiest} (worker connections per node {per_node:?}); it stays down"
            );
        }
        Fault::StopLeader => {
            let v = vhost.clone();
            let leader = c.with(move |c| c.leader_blocking(CHANGES_QUEUE, &v)).await;
            r.last_hit = Some(drain_started.elapsed());
            c.with(move |c| c.stop_blocking(leader)).await;
            let v = vhost.clone();
            let new_leader = c.with(move |c| c.leader_blocking(CHANGES_QUEUE, &v)).await;
            let stopped = drain_started.elapsed();
            c.with(move |c| c.start_blocking(leader)).await;
            assert_ne!(new_leader, leader, "another node took the lead");
            r.note = format!(
                "stopped node {leader}, the leader (worker connections per node {per_node:?}); node {new_leader} led; node {leader} stopped at {:.1} s, running again at {:.1} s",
                stopped.as_secs_f64(),
                drain_started.elapsed().as_secs_f64()
            );
        }
        Fault::RollingRestart => {
            let mut steps = Vec::new();
            for n in 1..=NODES {
                r.last_hit = Some(drain_started.elapsed());
                c.with(move |c| c.stop_blocking(n)).await;
                let down = drain_started.elapsed();
                c.with(move |c| c.start_blocking(n)).await;
                steps.push(format!(
                    "node {n} down {:.1}-{:.1} s",
                    down.as_secs_f64(),
                    drain_started.elapsed().as_secs_f64()
                ));
            }
            r.note = steps.join(", ");
        }
        Fault::MemoryAlarm => {
            r.last_hit = Some(drain_started.elapsed());
            c.with(move |c| c.alarm_on_blocking(busiest)).await;
            let raised = drain_started.elapsed();
            let hold = Instant::now() + Duration::from_secs(5);
            while Instant::now() < hold {
                for port in metrics_ports {
                    if let Some((_, body)) = http_get_port(port, "/metrics").await
                        && metric_sample(&body, "las_broker_blocked_connections")
                            .is_some_and(|b| b > 0.0)
                    {
                        r.saw_blocked_metric = true;
                    }
                    if let Some((503, body)) = http_get_port(port, "/readyz").await
                        && body.contains("blocks publishing")
                    {
                        r.saw_blocked_readyz = true;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            c.with(move |c| c.alarm_off_blocking(busiest)).await;
            r.note = format!(
                "alarm on node {busiest} from {:.1} s to {:.1} s",
                raised.as_secs_f64(),
                drain_started.elapsed().as_secs_f64()
            );
            // Unblocked again by itself: metric 0 and ready. (A plain loop:
            // this runs in a spawned task, where `wait_for`'s async closure
            // is not Send.)
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let mut seen = Vec::new();
                for port in metrics_ports {
                    let (_, body) = http_get_port(port, "/metrics").await.unwrap_or_default();
                    let blocked = metric_sample(&body, "las_broker_blocked_connections");
                    let ready = http_get_port(port, "/readyz").await;
                    if blocked != Some(0.0) || !matches!(ready, Some((200, _))) {
                        seen.push(format!(
                            "port {port}: blocked {blocked:?}, /readyz {ready:?}"
                        ));
                    }
                }
                if seen.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "both workers unblocked and ready within 60 s of the alarm's end: {seen:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Fault::NetworkCut => {
            let p = &proxies[busiest - 1];
            p.refuse_for(Duration::from_secs(5)).await;
            r.last_hit = Some(drain_started.elapsed());
            p.sever();
            tokio::time::sleep(Duration::from_secs(5)).await;
            r.note = format!(
                "cut node {busiest} (worker connections per node {per_node:?}) for 5 s: {} new connections refused meanwhile",
                p.refused()
            );
        }
    }
    r.ended = Some(drain_started.elapsed());
    r
}

// ---------------------------------------------------------------------------
// Accounting
// ---------------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
async fn verify(
    fault: Fault,
    env: &TestEnv,
    second: &ExtraWorker,
    api: &MailApi,
    load: &Load,
    poison: &[Poison],
    edits: &[Value],
    edit_attempts: usize,
    report: &FaultReport,
) {
    let what = fault.name();
    let distinct = load.distinct_ids();

    // Parent edits: each processed once (they came during the fault).
    wait_processed(env, &ids(edits), Duration::from_secs(90)).await;

    // Queues: the input queues empty, and in the dead-letter queue exactly
    // the poison, each once, with its reason: no good message dead-lettered.
    env.wait_queue_depth(CHANGES_QUEUE, 0, Duration::from_secs(60))
        .await;
    env.wait_queue_depth(PORTAL_QUEUE, 0, Duration::from_secs(60))
        .await;
    let dead = env.wait_dead_letters(poison.len()).await;
    let want: BTreeMap<&[u8], &str> = poison
        .iter()
        .map(|((_, _, body), reason)| (body.as_slice(), *reason))
        .collect();
    let mut seen: BTreeMap<&[u8], usize> = BTreeMap::new();
    for (headers, body) in &dead {
        let reason = want.get(body.as_slice()).unwrap_or_else(|| {
            panic!(
                "{what}: a good message was dead-lettered: {headers:?} {}",
                String::from_utf8_lossy(body)
            )
        });
        assert_eq!(
            headers.get("x-las-reason-code").map(String::as_str),
            Some(*reason),
            "{what}: reason of {headers:?}"
        );
        *seen.entry(body.as_slice()).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let late = env.dead_letters().await;
    let twice: Vec<_> = seen.values().filter(|n| **n > 1).collect();
    assert!(
        late.is_empty() && twice.is_empty() && seen.len() == poison.len(),
        "{what}: each poison message dead-lettered exactly once: {} distinct of {}, {} doubled, {} more later",
        seen.len(),
        poison.len(),
        twice.len(),
        late.len()
    );

    // Applied once in effect: every distinct id processed (applied or
    // stale), no change journalled twice.
    assert_eq!(
        processed(env, &distinct).await,
        distinct.len() as i64,
        "{what}: every distinct message id in processed_messages"
    );
    let (rows, ids_journalled): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM change_journal")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(rows, ids_journalled, "{what}: a change journalled twice");

    // The final state: every profile of the load at its newest version.
    let expected = load.final_profiles();
    let rows: Vec<ProfileRow> = sqlx::query_as(
        "SELECT s.brin, p.kind, p.las_key, p.version, p.status, p.first_name, p.last_name
             FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE p.las_key IS NOT NULL AND p.las_key NOT LIKE 'EDIT%'",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    let mut wrong = Vec::new();
    let mut found = BTreeSet::new();
    for (brin, kind, key, version, status, first, last) in rows {
        let k = (brin, kind, key);
        let Some(want) = expected.get(&k) else {
            wrong.push(format!("{k:?}: not in the load"));
            continue;
        };
        found.insert(k.clone());
        // A removal carries no names: whatever an earlier version left (or
        // nothing, when the removal came first) is right.
        let by_removal = want.first_name.is_none() && want.last_name.is_none();
        let got = FinalProfile {
            version,
            deactivated: status == "deactivated",
            first_name: if by_removal { None } else { first },
            last_name: if by_removal { None } else { last },
        };
        let want = want.clone();
        if got != want {
            wrong.push(format!("{k:?}: {got:?}, expected {want:?}"));
        }
    }
    for k in expected.keys().filter(|k| !found.contains(*k)) {
        wrong.push(format!("{k:?}: missing"));
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} profiles not at their newest version, e.g. {:#?}",
        wrong.len(),
        expected.len(),
        &wrong[..wrong.len().min(10)]
    );

    // The ledger: published = applied + stale (distinct ids) + duplicate
    // copies + dead-lettered (the queue). The workers' counters (both
    // processes ran throughout) agree, plus the redeliveries the fault caused.
    let published = load.changes.len() + poison.len();
    let copies = load.changes.len() - distinct.len();
    assert_eq!(
        published,
        distinct.len() + copies + seen.len(),
        "{what}: published = applied + stale + duplicate + dead-lettered"
    );
    let a = env.message_counts().await;
    let b = second.message_counts().await;
    let mut all: BTreeMap<String, u64> = BTreeMap::new();
    for (k, v) in a.iter().chain(b.iter()) {
        *all.entry(k.clone()).or_default() += v;
    }
    let get = |k: &str| all.get(k).copied().unwrap_or(0);
    assert_eq!(
        get("applied") + get("stale"),
        (distinct.len() + edits.len()) as u64,
        "{what}: each distinct message (load and edits) applied or stale once: {all:?}"
    );
    assert!(
        get("duplicate") >= copies as u64 && get("rejected") >= poison.len() as u64,
        "{what}: every duplicate copy and every poison message counted: {all:?}"
    );
    let counted: u64 = all.values().sum();
    let redelivered = counted as i64 - (published + edit_attempts) as i64;
    assert!(
        a.values().sum::<u64>() > 0 && b.values().sum::<u64>() > 0,
        "both replicas consumed: {a:?} / {b:?}"
    );

    // E-mails: one suggestion per edit, one e-mail per recipient, each
    // accepted once by the API under its own key.
    let want_mails = (edits.len() * 2) as i64;
    wait_emails_sent(
        env,
        api,
        want_mails,
        Duration::from_secs(90),
        "every suggestion e-mail sent",
    )
    .await;
    let (suggestions,): (i64,) = sqlx::query_as("SELECT count(*) FROM suggestions")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(
        suggestions,
        edits.len() as i64,
        "{what}: one suggestion per edit"
    );
    let keys = outbox_keys(env).await;
    let delivered = api.delivered();
    let delivered_keys: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(
        (delivered.len(), &delivered_keys),
        (keys.len(), &keys),
        "{what}: every e-mail accepted once, under its outbox key"
    );

    // Sync events: every event of the outbox published and received on the
    // bound quorum queue, nothing else.
    wait_events_published(env, Duration::from_secs(120)).await;
    let outbox = outbox_event_ids(env).await;
    let (received, deliveries) = collect_events(&env.client_url(), &outbox).await;
    let missing = outbox.difference(&received).count();
    let unknown = received.difference(&outbox).count();
    assert!(
        missing == 0 && unknown == 0,
        "{what}: {missing} of {} outbox events never arrived, {unknown} arrived that are not in the outbox",
        outbox.len()
    );

    // The fault happened and was lived through.
    let metrics = [
        env.http_get("/metrics").await.unwrap_or_default().1,
        http_get_port(second.metrics_port, "/metrics")
            .await
            .unwrap_or_default()
            .1,
    ];
    let connections: f64 = metrics
        .iter()
        .map(|m| metric_sum(m, "las_broker_connections_total", &[("queue", "changes")]))
        .sum();
    match fault {
        Fault::None => {}
        Fault::KillConnectedNode | Fault::NetworkCut => assert!(
            connections >= 3.0,
            "{what}: a changes consumer on the lost node reconnected (changes connections {connections}; {})",
            report.note
        ),
        Fault::RollingRestart => assert!(
            metrics.iter().all(|m| metric_sum(
                m,
                "las_broker_connections_total",
                &[("queue", "changes")]
            ) >= 2.0),
            "{what}: every replica's consumer reconnected at least once"
        ),
        Fault::StopLeader => {}
        Fault::MemoryAlarm => assert!(
            report.saw_blocked_metric && report.saw_blocked_readyz,
            "{what}: the alarm showed in las_broker_blocked_connections ({}) and /readyz ({})",
            report.saw_blocked_metric,
            report.saw_blocked_readyz
        ),
    }
    let ledger = format!(
        "cluster: {what}: published {published} ({} distinct, {copies} duplicate copies, {} poison) + {} edits ({edit_attempts} publish attempts); counted {all:?} = published + {redelivered} redeliveries; {} events in the outbox, {deliveries} deliveries on the tap; {} e-mails; changes connections {connections}",
        distinct.len(),
        poison.len(),
        edits.len(),
        outbox.len(),
        keys.len()
    );
    eprintln!("{ledger}");
    record(&ledger);
}

/// Consumes the bound event queue until every outbox event arrived (or 60 s
/// of trying): the distinct event ids received, and how many deliveries.
async fn collect_events(url: &str, outbox: &BTreeSet<String>) -> (BTreeSet<String>, usize) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(2000, BasicQosOptions::default())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(
            "test-events".into(),
            "collect".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut got = BTreeSet::new();
    let mut deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline && !outbox.is_subset(&got) {
        match tokio::time::timeout(Duration::from_secs(2), consumer.next()).await {
            Ok(Some(Ok(d))) => {
                deliveries += 1;
                let v: Value = serde_json::from_slice(&d.data).unwrap();
                got.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
            }
            Ok(_) => break,
            Err(_) => {}
        }
    }
    // A moment more for stragglers (an event published twice).
    while let Ok(Some(Ok(d))) =
        tokio::time::timeout(Duration::from_millis(500), consumer.next()).await
    {
        deliveries += 1;
        let v: Value = serde_json::from_slice(&d.data).unwrap();
        got.insert(v["event_id"].as_str().unwrap_or_default().to_owned());
    }
    let _ = conn.close(200, "done".into()).await;
    (got, deliveries)
}
