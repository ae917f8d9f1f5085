//! Issue #16, "prove it live": a real Prometheus server (Debian package
//! `prometheus`, installed by scripts/ensure-test-tools.sh) scrapes the worker
//! under test and evaluates the rules of deploy/k8s/base/prometheusrule.yaml.
//! The worker runs the example school, a poison message and a parent's edit
//! whose suggestion e-mails meet a mail API that answers 401 (a revoked
//! token). Then, through Prometheus' HTTP API:
//! * every query of the generated dashboard (deploy/grafana/las-worker.json)
//!   returns data,
//! * every recording and alerting rule evaluates without error,
//! * the dead-letter alert and the given-up e-mail alert fire.
//!
//! Never skipped: a missing `prometheus` binary fails the test with the
//! command that installs it.

// A test: a failed unwrap is a failed test, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use las_e2e::mailapi::{MailApi, MailMode};
use las_e2e::*;
use serde_json::{Value, json};

fn workspace_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// The namespace label a kube-prometheus-stack scrape adds; the rules and the
/// dashboard aggregate by it.
const NAMESPACE: &str = "las-e2e";

/// A Prometheus server in a temporary folder, killed and removed on drop.
struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The rule groups of the PrometheusRule as a Prometheus rule file: its
/// `spec` (`groups:` and what follows), one indentation level less.
fn rule_file_from_prometheusrule(text: &str) -> String {
    let mut out = String::new();
    let mut in_spec = false;
    for line in text.lines() {
        if line == "spec:" {
            in_spec = true;
            continue;
        }
        if in_spec {
            if !line.is_empty() && !line.starts_with(' ') {
                break;
            }
            out.push_str(line.strip_prefix("  ").unwrap_or(line));
            out.push('\n');
        }
    }
    assert!(
        out.trim_start().starts_with("groups:") || out.contains("\ngroups:"),
        "deploy/k8s/base/prometheusrule.yaml has a spec.groups"
    );
    out
}

impl Prometheus {
    fn start(worker_metrics_port: u16, rules: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("las-prometheus-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        let check = Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.join("rules.yml"))
            .output()
            .expect("promtool runs (bash scripts/ensure-test-tools.sh installs it)");
        assert!(
            check.status.success(),
            "the PrometheusRule's groups are a valid rule file: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files: [rules.yml]\n\
             scrape_configs:\n  - job_name: las-worker\n    static_configs:\n\
             \x20     - targets: ['127.0.0.1:{worker_metrics_port}']\n\
             \x20       labels: {{namespace: {NAMESPACE}}}\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start prometheus ({e}): install it with `bash scripts/ensure-test-tools.sh` \
                     (Debian: apt-get install prometheus)"
                )
            });
        Prometheus { child, port, dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    async fn api(&self, path: &str) -> Value {
        let (status, body) = http_get_port(self.port, path)
            .await
            .unwrap_or_else(|| panic!("Prometheus answers {path}; log:\n{}", self.log()));
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"))
    }

    /// An instant query's result (a vector's samples, or a scalar as one).
    async fn query(&self, q: &str) -> Vec<Value> {
        let v = self
            .api(&format!("/api/v1/query?query={}", encode(q)))
            .await;
        assert_eq!(v["status"], "success", "{q}: {v}");
        match v["data"]["resultType"].as_str() {
            Some("vector") | Some("matrix") => v["data"]["result"].as_array().cloned().unwrap(),
            Some("scalar") | Some("string") => vec![v["data"]["result"].clone()],
            other => panic!("{q}: result type {other:?}"),
        }
    }

    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while http_get_port(self.port, "/-/ready")
            .await
            .is_none_or(|(s, _)| s != 200)
        {
            assert!(
                Instant::now() < deadline,
                "Prometheus not ready in 60 s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every target `expr` of the dashboard, with Grafana's variables replaced as
/// Grafana would for "all namespaces" and a 1 s scrape interval.
fn dashboard_queries(path: &Path) -> BTreeSet<String> {
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = BTreeSet::new();
    let mut stack: Vec<&Value> = vec![&dash["panels"]];
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(a) => stack.extend(a),
            Value::Object(o) => {
                if let Some(targets) = o.get("targets").and_then(Value::as_array) {
                    for t in targets {
                        if let Some(e) = t["expr"].as_str() {
                            out.insert(
                                e.replace("$namespace", ".*")
                                    .replace("$__rate_interval", "1m"),
                            );
                        }
                    }
                }
                if let Some(p) = o.get("panels") {
                    stack.push(p);
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_live_prometheus_sees_every_dashboard_query_every_rule_and_the_alerts_fire() {
    let dashboard = dashboard_queries(&workspace_file("deploy/grafana/las-worker.json"));
    assert!(
        dashboard.len() >= 30,
        "the dashboard has its queries: {}",
        dashboard.len()
    );
    let rules = rule_file_from_prometheusrule(
        &std::fs::read_to_string(workspace_file("deploy/k8s/base/prometheusrule.yaml")).unwrap(),
    );

    // A revoked token: the mail API refuses every e-mail with 401.
    let api = MailApi::start(MailMode::Fail(401)).await;
    let env = TestEnv::start_with(&[
        ("MAIL_API_URL", &api.url()),
        ("MAIL_API_TOKEN", "revoked-token"),
    ])
    .await;
    let prom = Prometheus::start(env.metrics_port, &rules);
    prom.wait_until_ready().await;

    // Prometheus scrapes the worker before the traffic, so rates see it.
    let deadline = Instant::now() + Duration::from_secs(60);
    while prom.query("up{job=\"las-worker\"} == 1").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the worker; log:\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // The example school, a poison message, and a parent's edit whose
    // suggestion e-mails the mail API refuses for good.
    env.link(TestEnv::example("link.parnassys.json")).await;
    let n = env.publish_example("school-12AB.ndjson").await;
    env.wait_handled(n as u64 + 1).await;
    env.add_user(
        "12AB",
        "Koppelbeheerder",
        "beheer@school.example",
        "link_admin",
        false,
    )
    .await;
    env.publish(&[TestEnv::example("parent_edit.json")]).await;
    env.publish_raw(
        las_contracts::LAS_CHANGES_EXCHANGE,
        "las.12AB.guardian.upserted",
        &[b"not json".to_vec()],
    )
    .await;
    env.wait_handled(n as u64 + 3).await;
    let body = env
        .wait_metrics(
            "the 401 giving an e-mail up",
            Duration::from_secs(90),
            |b| metric_sum(b, "las_emails_total", &[("outcome", "failed")]) >= 1.0,
        )
        .await;
    assert!(api.calls().iter().all(|c| c.status == 401), "only 401s");
    assert_eq!(
        metric_sum(
            &body,
            "las_dead_letters_total",
            &[("reason", "invalid_json")]
        ),
        1.0
    );

    // 1. Every dashboard query returns data (the worker's gauges refresh
    // every 15 s: give them a few rounds).
    let deadline = Instant::now() + Duration::from_secs(90);
    let empty = loop {
        let mut empty = Vec::new();
        for q in &dashboard {
            if prom.query(q).await.is_empty() {
                empty.push(q.clone());
            }
        }
        if empty.is_empty() || Instant::now() > deadline {
            break empty;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    assert!(
        empty.is_empty(),
        "{} of {} dashboard queries return no data:\n{}",
        empty.len(),
        dashboard.len(),
        empty.join("\n")
    );

    // 2. Every rule evaluates, without error.
    let deadline = Instant::now() + Duration::from_secs(60);
    let (bad, count) = loop {
        let v = prom.api("/api/v1/rules").await;
        let mut bad = Vec::new();
        let mut count = 0;
        let mut unknown = false;
        for g in v["data"]["groups"].as_array().unwrap() {
            for r in g["rules"].as_array().unwrap() {
                count += 1;
                match r["health"].as_str() {
                    Some("ok") => {}
                    Some("unknown") => unknown = true,
                    _ => bad.push(
                        json!({"name": r["name"], "health": r["health"], "error": r["lastError"]}),
                    ),
                }
            }
        }
        if !unknown || Instant::now() > deadline {
            break (bad, count);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!(count >= 20, "the rules were loaded: {count}");
    assert!(bad.is_empty(), "rules that fail to evaluate: {bad:?}");

    // 3. The dead-letter and e-mail alerts fire.
    let want = ["LasWorkerDeadLetters", "LasEmailsGivenUp"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = prom.api("/api/v1/alerts").await;
        let firing: BTreeSet<String> = v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .filter_map(|a| a["labels"]["alertname"].as_str().map(str::to_owned))
            .collect();
        if want.iter().all(|a| firing.contains(*a)) {
            let alerts = v["data"]["alerts"].as_array().unwrap();
            let dl = alerts
                .iter()
                .find(|a| a["labels"]["alertname"] == "LasWorkerDeadLetters")
                .unwrap();
            assert_eq!(dl["labels"]["reason"], "invalid_json");
            assert_eq!(dl["labels"]["namespace"], NAMESPACE);
            for a in alerts {
                assert!(
                    a["annotations"]["runbook_url"]
                        .as_str()
                        .is_some_and(|u| u.starts_with("https://")),
                    "alert {} links its runbook",
                    a["labels"]["alertname"]
                );
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts firing: {firing:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
