//! A three-node RabbitMQ cluster on this machine for the cluster fault tests
//! (issue #17), through `scripts/rabbitmq-cluster.sh`: started in a folder of
//! its own under /tmp, stopped and removed when the `Cluster` is dropped
//! (also when the test panics). Only one cluster runs at a time in a test
//! process: `Cluster::start` waits for the previous one to be dropped.
//!
//! Node indexes are 1, 2, 3 as in the script; node N listens for AMQP on
//! `base_port + N - 1` (default base 5701, `LAS_CLUSTER_BASE_PORT` to move
//! it when another cluster already uses those ports).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::Broker;

/// The cluster script's default base port.
pub const DEFAULT_BASE_PORT: u16 = 5701;
/// Nodes in the cluster.
pub const NODES: usize = 3;
const DIR_PREFIX: &str = "las-e2e-cluster-";
const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";

/// One cluster at a time per test process (each is three Erlang VMs on a
/// two-core machine, and they would share ports).
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("scripts")
        .join("rabbitmq-cluster.sh")
}

/// What the script printed and said.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn run_script(args: &[&str]) -> Run {
    let out = Command::new("bash")
        .arg(script())
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script().display()));
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The value of a `KEY=VALUE` line of the script's output.
fn value_of(stdout: &str, key: &str) -> Option<String> {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .map(str::to_owned)
}

/// Stops clusters that earlier test processes left behind (killed before
/// their `Drop` ran): folders of this fixture whose process is gone.
fn stop_leftovers() {
    let Ok(dir) = std::fs::read_dir("/tmp") else {
        return;
    };
    for entry in dir.filter_map(Result::ok) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(DIR_PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if pid.parse::<u32>().is_err() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let path = entry.path();
        eprintln!(
            "cluster: stopping a cluster left behind by process {pid}: {}",
            path.display()
        );
        let _ = run_script(&["stop", &path.to_string_lossy()]);
    }
}

/// What a test needs to drive the cluster; cheap to clone into a blocking
/// task or a background fault task.
#[derive(Clone)]
pub struct ClusterHandle {
    pub dir: PathBuf,
    pub base_port: u16,
    /// `amqp://guest:guest@127.0.0.1:PORT` of each node, in node order.
    pub bases: Vec<String>,
    /// Erlang node names, in node order.
    pub node_names: Vec<String>,
    /// Which nodes this fixture believes are running (stopped or killed
    /// ones are asked last).
    up: Arc<Mutex<[bool; NODES]>>,
}

/// A running cluster; stopped and removed on drop.
pub struct Cluster {
    handle: ClusterHandle,
    /// How long `start` waited for the cluster of another test to go.
    pub waited: std::time::Duration,
    /// How long the three nodes took to start and join.
    pub start_took: std::time::Duration,
    _one_at_a_time: MutexGuard<'static, ()>,
}

impl std::ops::Deref for Cluster {
    type Target = ClusterHandle;
    fn deref(&self) -> &ClusterHandle {
        &self.handle
    }
}

impl Cluster {
    /// Starts three nodes and joins them (about 15-30 s here). Panics with
    /// the script's output when it fails, and with the install command when
    /// RabbitMQ is not installed.
    pub fn start() -> Cluster {
        assert!(
            Path::new(RABBITMQ_SERVER).exists(),
            "{RABBITMQ_SERVER} not found: the cluster tests run three nodes of the installed RabbitMQ. Install it: apt-get install -y rabbitmq-server"
        );
        let asked = Instant::now();
        let guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let waited = asked.elapsed();
        stop_leftovers();
        let base_port: u16 = std::env::var("LAS_CLUSTER_BASE_PORT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_BASE_PORT);
        let dir = PathBuf::from(format!(
            "/tmp/{DIR_PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
        ));
        let started = Instant::now();
        let run = run_script(&["start", &dir.to_string_lossy(), &base_port.to_string()]);
        if !run.ok {
            let _ = run_script(&["stop", &dir.to_string_lossy()]);
            panic!(
                "the RabbitMQ cluster did not start (scripts/rabbitmq-cluster.sh start {} {base_port}):\n{}{}",
                dir.display(),
                run.stdout,
                run.stderr
            );
        }
        let urls = value_of(&run.stdout, "URLS").expect("start prints URLS=");
        let nodes = value_of(&run.stdout, "NODES").expect("start prints NODES=");
        let bases: Vec<String> = urls
            .split(',')
            .map(|u| {
                u.rsplit_once('/')
                    .map(|(base, _vhost)| base.to_owned())
                    .unwrap()
            })
            .collect();
        assert_eq!(bases.len(), NODES, "three node URLs: {urls}");
        eprintln!(
            "cluster: {} nodes running in {:.1} s ({})",
            NODES,
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Cluster {
            handle: ClusterHandle {
                dir,
                base_port,
                bases,
                node_names: nodes.split(',').map(str::to_owned).collect(),
                up: Arc::new(Mutex::new([true; NODES])),
            },
            waited,
            start_took: started.elapsed(),
            _one_at_a_time: guard,
        }
    }

    /// The handle (to move into a task).
    pub fn handle(&self) -> ClusterHandle {
        self.handle.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let run = run_script(&["stop", &self.handle.dir.to_string_lossy()]);
        if !run.ok {
            eprintln!(
                "cluster: stop of {} failed: {}",
                self.handle.dir.display(),
                run.stderr
            );
        }
    }
}

impl ClusterHandle {
    fn dir_arg(&self) -> String {
        self.dir.to_string_lossy().into_owned()
    }

    fn check(n: usize) {
        assert!((1..=NODES).contains(&n), "node index 1..={NODES}, got {n}");
    }

    /// Runs a subcommand of the script for node `n`; panics when it fails.
    fn node_cmd(&self, sub: &str, n: usize) -> String {
        Self::check(n);
        let run = run_script(&[sub, &self.dir_arg(), &n.to_string()]);
        assert!(
            run.ok,
            "rabbitmq-cluster.sh {sub} {n} failed:\n{}{}",
            run.stdout, run.stderr
        );
        run.stdout
    }

    fn set_up(&self, n: usize, up: bool) {
        self.up.lock().unwrap_or_else(|e| e.into_inner())[n - 1] = up;
    }

    /// The nodes believed up first, then the others.
    fn nodes_to_ask(&self) -> Vec<usize> {
        let up = *self.up.lock().unwrap_or_else(|e| e.into_inner());
        let mut order: Vec<usize> = (1..=NODES).filter(|n| up[n - 1]).collect();
        order.extend((1..=NODES).filter(|n| !up[n - 1]));
        order
    }

    /// The AMQP port of node `n`.
    pub fn port(&self, n: usize) -> u16 {
        Self::check(n);
        self.base_port + n as u16 - 1
    }

    /// The node listening on an AMQP port of this cluster, if any.
    pub fn node_of_port(&self, port: u16) -> Option<usize> {
        (1..=NODES).find(|&n| self.port(n) == port)
    }

    /// `amqp://guest:guest@127.0.0.1:PORT/VHOST` of node `n`.
    pub fn url(&self, n: usize, vhost: &str) -> String {
        Self::check(n);
        format!("{}/{vhost}", self.bases[n - 1])
    }

    /// rabbitmqctl `args` against node `n`: stdout, or the error.
    pub fn ctl(&self, n: usize, args: &[&str]) -> Result<String, String> {
        Self::check(n);
        let mut all = vec!["ctl", self.dir.to_str().unwrap()];
        let n = n.to_string();
        all.push(&n);
        all.extend_from_slice(args);
        let run = run_script(&all);
        if run.ok {
            Ok(run.stdout)
        } else {
            Err(format!(
                "rabbitmqctl {args:?}: {}{}",
                run.stderr, run.stdout
            ))
        }
    }

    /// rabbitmqctl `args` against the first node that answers (the ones
    /// believed up first).
    pub fn ctl_any(&self, args: &[&str]) -> Result<String, String> {
        let mut err = String::new();
        for n in self.nodes_to_ask() {
            match self.ctl(n, args) {
                Ok(out) => return Ok(out),
                Err(e) => err = format!("node {n}: {e}"),
            }
        }
        Err(err)
    }

    /// The broker for a `TestEnv`: the worker gets the three nodes, the
    /// test connects to the first node that is up.
    pub fn broker(&self) -> Broker {
        self.broker_via(&self.bases)
    }

    /// The same with the worker given other addresses (e.g. a TCP proxy in
    /// front of each node: `amqp://guest:guest@127.0.0.1:PROXY_PORT`).
    pub fn broker_via(&self, worker_bases: &[String]) -> Broker {
        let me = self.clone();
        Broker::nodes(
            worker_bases.to_vec(),
            self.bases.clone(),
            Arc::new(move |args: &[&str]| me.ctl_any(args)),
        )
    }

    /// kill -9 of node `n`'s Erlang VM.
    pub fn kill_blocking(&self, n: usize) {
        self.node_cmd("node-kill", n);
        self.set_up(n, false);
    }

    /// Graceful stop of node `n` (rabbitmqctl stop).
    pub fn stop_blocking(&self, n: usize) {
        self.set_up(n, false);
        self.node_cmd("node-stop", n);
    }

    /// Starts node `n` again; returns once it runs.
    pub fn start_blocking(&self, n: usize) {
        self.node_cmd("node-start", n);
        self.set_up(n, true);
    }

    /// Raises a memory alarm on node `n` (watermark 0); returns once raised.
    /// On 3.10 it blocks publishers on every node of the cluster.
    pub fn alarm_on_blocking(&self, n: usize) {
        self.node_cmd("alarm-on", n);
    }

    /// Clears the memory alarm of node `n`; returns once it is cleared.
    pub fn alarm_off_blocking(&self, n: usize) {
        self.node_cmd("alarm-off", n);
    }

    /// The node leading a quorum queue of `vhost`.
    pub fn leader_blocking(&self, queue: &str, vhost: &str) -> usize {
        let run = run_script(&["leader", &self.dir_arg(), queue, vhost]);
        assert!(run.ok, "leader of {queue}: {}{}", run.stdout, run.stderr);
        value_of(&run.stdout, "LEADER_INDEX")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no LEADER_INDEX in {}", run.stdout))
    }

    /// The nodes holding a replica of each quorum queue of `vhost` (one
    /// `list_queues`, asked of a running node).
    pub fn members_blocking(&self, vhost: &str) -> BTreeMap<String, Vec<usize>> {
        let out = self
            .ctl_any(&["list_queues", "-q", "-s", "-p", vhost, "name", "members"])
            .unwrap();
        out.lines()
            .filter_map(|l| {
                let (name, members) = l.split_once('\t')?;
                let nodes = members
                    .trim_matches(|c: char| c == '[' || c == ']' || c.is_whitespace())
                    .split(',')
                    .filter_map(|m| {
                        self.node_names
                            .iter()
                            .position(|n| n == m.trim())
                            .map(|i| i + 1)
                    })
                    .collect::<std::collections::BTreeSet<usize>>();
                Some((name.trim().to_owned(), nodes.into_iter().collect()))
            })
            .collect()
    }

    /// The client-named connections of `vhost` and the node each is on:
    /// (connection name given by the client, node index).
    pub fn connections_blocking(&self, vhost: &str) -> Vec<(String, usize)> {
        let out = self
            .ctl_any(&[
                "list_connections",
                "-q",
                "-s",
                "port",
                "vhost",
                "client_properties",
            ])
            .unwrap();
        out.lines()
            .filter_map(|l| {
                let mut cols = l.splitn(3, '\t');
                let port: u16 = cols.next()?.trim().parse().ok()?;
                let v = cols.next()?.trim();
                let props = cols.next()?;
                if v != vhost {
                    return None;
                }
                let name = props
                    .split("{\"connection_name\",\"")
                    .nth(1)
                    .and_then(|r| r.split("\"}").next())
                    .unwrap_or("")
                    .to_owned();
                Some((name, self.node_of_port(port)?))
            })
            .collect()
    }

    /// Runs a blocking operation of the handle on tokio's blocking pool, so
    /// that the test's other tasks (publishers, pollers) keep running.
    pub async fn with<T, F>(&self, f: F) -> T
    where
        T: Send + 'static,
        F: FnOnce(&ClusterHandle) -> T + Send + 'static,
    {
        let me = self.clone();
        tokio::task::spawn_blocking(move || f(&me)).await.unwrap()
    }
}
