//! End-to-end, operations (issue #6): what an operator relies on. The
//! `/metrics` exposition passes `promtool check metrics` and exports every
//! family the README documents; SIGTERM under load loses and duplicates
//! nothing; a broker that drops the worker's connections mid-stream costs
//! nothing but a reconnect; `deploy/rabbitmq/definitions.json` is exactly the
//! topology the worker declares.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use las_e2e::*;
use serde_json::{Value, json};

fn workspace_file(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel)
}

/// Runs `promtool check metrics` on an exposition; panics on any problem,
/// and when promtool is missing (never a skip).
fn promtool_check_metrics(exposition: &str) {
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool is not installed ({e}); it checks the /metrics exposition. \
             Install it: apt-get install prometheus (Debian; .ci/run does this), \
             then run the tests again"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics found problems (exit {:?}):\n{report}\n--- exposition ---\n{exposition}",
        out.status.code()
    );
}

/// The `las_*` families named in the first column of the README's metrics table.
fn readme_metric_families() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(workspace_file("README.md")).unwrap();
    let mut out = BTreeSet::new();
    for line in readme.lines().filter(|l| l.starts_with("| `")) {
        let first_cell = line.trim_start_matches('|').split('|').next().unwrap_or("");
        for (i, token) in first_cell.split('`').enumerate() {
            if i % 2 == 1 && token.starts_with("las_") {
                out.insert(token.to_owned());
            }
        }
    }
    assert!(
        out.len() >= 10,
        "README's metrics table not found or changed shape; found only {out:?}"
    );
    out
}

/// Every `"las_..."` string literal in the worker's sources: the metric
/// names it defines.
fn worker_metric_literals() -> BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, chunk) in text.split('"').enumerate() {
                    if i % 2 == 1
                        && chunk.starts_with("las_")
                        && chunk.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                    {
                        out.insert(chunk.to_owned());
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&workspace_file("worker/src"), &mut out);
    out
}

/// The families an exposition declares (`# TYPE name kind`).
fn exported_families(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

async fn wait_ready(env: &TestEnv, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some((200, _)) = env.http_get("/readyz").await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz did not return 200 within {timeout:?}; log: {}",
            env.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(env: &TestEnv) -> String {
    let (status, body) = env.http_get("/metrics").await.expect("GET /metrics");
    assert_eq!(status, 200, "GET /metrics: {body}");
    body
}

async fn guardian_count(env: &TestEnv, brin: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM profiles p JOIN schools s ON s.id = p.school_id
         WHERE s.brin = $1 AND p.kind = 'guardian' AND p.status <> 'pending'",
    )
    .bind(brin)
    .fetch_one(&env.db)
    .await
    .unwrap()
}

async fn processed_count(env: &TestEnv, ids: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM processed_messages WHERE message_id = ANY($1)")
        .bind(ids)
        .fetch_one(&env.db)
        .await
        .unwrap()
}

fn message_ids(msgs: &[Value]) -> Vec<uuid::Uuid> {
    msgs.iter()
        .map(|m| m["message_id"].as_str().unwrap().parse().unwrap())
        .collect()
}

/// JSON text with object keys sorted, whatever serde_json's map order.
fn canonical(v: &Value) -> String {
    match v {
        Value::Object(o) => {
            let sorted: std::collections::BTreeMap<_, _> =
                o.iter().map(|(k, v)| (k.clone(), canonical(v))).collect();
            let fields: Vec<String> = sorted
                .iter()
                .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(a) => format!(
            "[{}]",
            a.iter().map(canonical).collect::<Vec<_>>().join(",")
        ),
        other => other.to_string(),
    }
}

/// A small valid guardian without students.
fn guardian(brin: &str, env_id: &str, key: &str, version: u64, last_name: &str) -> Value {
    change(
        brin,
        parnassys(env_id),
        version,
        json!({"type": "guardian.upserted", "las_key": key, "first_name": "Test",
               "last_name": last_name, "email": null, "student_keys": []}),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_pass_promtool_and_match_the_readme_table() {
    let env = TestEnv::start().await;
    env.link(TestEnv::example("link.parnassys.json")).await;
    let n = env.publish_example("school-12AB.ndjson").await;
    let counts = env.wait_handled(n as u64 + 1).await;
    assert_eq!(
        counts.get("applied").copied().unwrap_or(0),
        n as u64 + 1,
        "the example school applies whole: {counts:?}"
    );

    // The families that exist only after an event: a dead letter, and a
    // broker reconnect (a transient retry).
    env.publish_raw(
        las_contracts::LAS_CHANGES_EXCHANGE,
        "las.12AB.guardian.upserted",
        &[b"not json".to_vec()],
    )
    .await;
    let dead = env.wait_dead_letters(1).await;
    assert_eq!(dead[0].0["x-las-reason-code"], "invalid_json");
    assert!(
        env.kill_worker_connections("operations test: reconnect") >= 2,
        "the worker's connections (one per queue at least) were found"
    );
    env.wait_metrics(
        "a reconnect of both consumers",
        Duration::from_secs(60),
        |b| {
            metric_sample(b, "las_broker_connections_total{queue=\"changes\"}") >= Some(2.0)
                && metric_sample(b, "las_broker_connections_total{queue=\"portal\"}") >= Some(2.0)
        },
    )
    .await;
    wait_ready(&env, Duration::from_secs(60)).await;
    // The queue gauges (a passive declare every 15 s) see a dead letter
    // left in its queue, and one consumer on each of the worker's queues.
    env.publish_raw(
        las_contracts::LAS_CHANGES_EXCHANGE,
        "las.12AB.guardian.upserted",
        &[b"still not json".to_vec()],
    )
    .await;
    env.wait_metrics("the queue gauges", Duration::from_secs(60), |b| {
        metric_sample(b, "las_queue_messages{queue=\"dead_letter\"}") == Some(1.0)
            && metric_sample(b, "las_queue_messages{queue=\"changes\"}") == Some(0.0)
            && metric_sample(b, "las_queue_consumers{queue=\"changes\"}") == Some(1.0)
            && metric_sample(b, "las_queue_consumers{queue=\"portal\"}") == Some(1.0)
    })
    .await;

    let body = metrics(&env).await;
    promtool_check_metrics(&body);

    let exported = exported_families(&body);
    let documented = readme_metric_families();
    // A counter vector appears once a label set is used. The families this
    // test provokes are listed below and must be there; any other documented
    // family that is missing must at least be defined by the worker (a README
    // row for a metric that does not exist fails).
    let defined = worker_metric_literals();
    let missing: Vec<_> = documented.difference(&exported).collect();
    let undefined: Vec<_> = missing.iter().filter(|f| !defined.contains(**f)).collect();
    assert!(
        undefined.is_empty(),
        "README's metrics table names families the worker does not define: {undefined:?}"
    );
    if !missing.is_empty() {
        eprintln!(
            "note: documented families not used in this test (they appear on first use): {missing:?}"
        );
    }
    let undocumented: Vec<_> = exported
        .iter()
        .filter(|f| f.starts_with("las_") && !documented.contains(*f))
        .collect();
    if !undocumented.is_empty() {
        // Not a failure (metrics land before their README rows), but say so.
        eprintln!("note: families in /metrics but not in README's metrics table: {undocumented:?}");
    }
    for family in [
        "las_messages_total",
        "las_rule_decisions_total",
        "las_profiles_total",
        "las_batch_processing_seconds",
        "las_batch_size_messages",
        "las_sync_lag_seconds",
        "las_consumer_up",
        "las_queue_messages",
        "las_queue_consumers",
        "las_last_commit_timestamp_seconds",
        "las_batches_in_flight",
        "las_db_pool_connections",
        "las_db_pool_max_connections",
        "las_db_pool_acquire_seconds",
        "las_settings_info",
        "las_schools_linked",
        "las_schools_snapshot_overdue",
        "las_build_info",
        "las_dead_letters_total",
        "las_transient_retries_total",
        "las_broker_connections_total",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
    ] {
        assert!(exported.contains(family), "{family} missing from /metrics");
    }

    // Values an alert or a dashboard panel relies on.
    for q in ["changes", "portal"] {
        assert_eq!(
            metric_sample(&body, &format!("las_consumer_up{{queue=\"{q}\"}}")),
            Some(1.0),
            "consumer {q} up after the reconnect"
        );
    }
    // Issue #16: no series per school any more; progress, backlog and pool.
    assert!(
        !body.contains("brin="),
        "no metric carries a school's BRIN as a label"
    );
    let last_commit = metric_sample(&body, "las_last_commit_timestamp_seconds").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - 3600.0..=now + 60.0).contains(&last_commit),
        "last commit {last_commit} is not about now ({now})"
    );
    assert_eq!(metric_sample(&body, "las_batches_in_flight"), Some(0.0));
    assert_eq!(metric_sample(&body, "las_schools_linked"), Some(1.0));
    assert_eq!(
        metric_sample(&body, "las_schools_snapshot_overdue"),
        Some(0.0)
    );
    assert_eq!(
        metric_sample(&body, "las_db_pool_max_connections"),
        Some(8.0)
    );
    assert!(metric_sum(&body, "las_db_pool_acquire_seconds_count", &[]) >= 1.0);
    assert!(
        body.lines().any(|l| l.starts_with("las_settings_info{")
            && l.contains("batch_size=\"400\"")
            && l.contains("prefetch=\"1000\"")
            && l.contains("pool_size=\"8\"")
            && l.ends_with(" 1")),
        "las_settings_info carries the settings"
    );
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(workspace_file(""))
        .output()
        .expect("git runs")
        .stdout;
    let revision = String::from_utf8_lossy(&revision).trim().to_owned();
    assert!(
        body.lines()
            .any(|l| l.starts_with("las_build_info{")
                && l.contains(&format!("revision=\"{revision}\""))),
        "las_build_info names the git revision {revision}"
    );
    assert_eq!(
        metric_sum(
            &body,
            "las_dead_letters_total",
            &[("reason", "invalid_json")]
        ),
        2.0
    );
    assert!(
        metric_sum(
            &body,
            "las_transient_retries_total",
            &[("component", "broker")]
        ) >= 1.0
    );
    assert!(metric_sum(&body, "las_sync_lag_seconds_count", &[]) >= n as f64);
    assert!(
        body.lines().any(|l| l.starts_with("las_build_info{")
            && l.contains("version=\"")
            && l.ends_with(" 1")),
        "las_build_info with a version label, value 1"
    );
}

/// SIGTERM while a backlog of 5,000 messages drains: the worker stops within
/// 30 s, commits and acknowledges exactly what it applied, and a restarted
/// worker applies the rest: nothing lost, nothing applied twice.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_loses_nothing_and_applies_nothing_twice() {
    const N: usize = 5_000;
    const BRIN: &str = "56EF";
    const ENV_ID: &str = "parnassys-load";
    let mut env = TestEnv::start().await;
    env.link(parnassys_link(BRIN, ENV_ID)).await;
    // Queue the whole backlog while no worker runs (the worker declared the
    // topology), so the SIGTERM surely lands mid-stream.
    env.stop_worker().expect("first worker stops");
    let msgs: Vec<Value> = (0..N)
        .map(|i| guardian(BRIN, ENV_ID, &format!("O{i:05}"), 1, &format!("Load{i}")))
        .collect();
    let ids = message_ids(&msgs);
    env.publish_many(&msgs).await;
    env.wait_queue_depth(
        las_contracts::CHANGES_QUEUE,
        N as u64,
        Duration::from_secs(30),
    )
    .await;

    env.spawn_worker().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let handled: u64 = env.message_counts().await.values().sum();
        if handled >= 500 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker handled only {handled} messages in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = env
        .stop_worker()
        .expect("the worker did not exit within 30 s of SIGTERM");
    assert!(took < Duration::from_secs(30), "SIGTERM took {took:?}");
    assert!(
        env.log().contains("shutdown requested"),
        "the worker logged its drain"
    );

    // What the first run committed it acknowledged, and nothing else.
    let applied_first = guardian_count(&env, BRIN).await;
    assert!(
        applied_first > 0 && applied_first < N as i64,
        "SIGTERM should land mid-stream; the first run applied {applied_first} of {N}"
    );
    assert_eq!(processed_count(&env, &ids).await, applied_first);
    // (Quorum queue counts in rabbitmqctl lag a few seconds behind.)
    env.wait_queue_depth(
        las_contracts::CHANGES_QUEUE,
        N as u64 - applied_first as u64,
        Duration::from_secs(30),
    )
    .await;

    env.spawn_worker().await;
    let rest = (N as i64 - applied_first) as u64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while guardian_count(&env, BRIN).await < N as i64 {
        assert!(
            Instant::now() < deadline,
            "the restarted worker applied {} of {N} in 120 s; log: {}",
            guardian_count(&env, BRIN).await,
            env.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_queue_depth(las_contracts::CHANGES_QUEUE, 0, Duration::from_secs(30))
        .await;
    assert_eq!(guardian_count(&env, BRIN).await, N as i64);
    assert_eq!(processed_count(&env, &ids).await, N as i64);

    // Reconcile: the second run's metrics (they start at zero) account for
    // exactly the rest; applied + duplicate + stale == published over both runs.
    let counts = env.wait_handled(rest).await;
    let get = |k: &str| counts.get(k).copied().unwrap_or(0);
    assert_eq!(get("rejected"), 0, "{counts:?}");
    assert_eq!(
        applied_first as u64 + get("applied") + get("duplicate") + get("stale"),
        N as u64,
        "applied in run 1 ({applied_first}) + handled in run 2 {counts:?} == published"
    );
    assert_eq!(get("applied"), rest, "{counts:?}");
    let depths = env.queue_depths();
    assert_eq!(
        depths.get(las_contracts::DEAD_LETTER_QUEUE).copied(),
        Some(0),
        "{depths:?}"
    );
    let took = env.stop_worker().expect("second worker stops");
    assert!(took < Duration::from_secs(30), "idle SIGTERM took {took:?}");
}

/// The broker closes the worker's connections twice while a stream of
/// versioned changes arrives: the worker reconnects (readyz 200 again, a
/// second and third connection per queue), every change is applied exactly
/// once in effect, every profile ends at its final version, and nothing is
/// dead-lettered.
#[tokio::test(flavor = "multi_thread")]
async fn broker_connections_killed_mid_stream_cost_only_a_reconnect() {
    const KEYS: usize = 300;
    const VERSIONS: u64 = 5;
    const BRIN: &str = "78GH";
    const ENV_ID: &str = "parnassys-chaos";
    let env = TestEnv::start().await;
    env.link(parnassys_link(BRIN, ENV_ID)).await;

    let mut msgs = Vec::new();
    for v in 1..=VERSIONS {
        for k in 0..KEYS {
            msgs.push(guardian(
                BRIN,
                ENV_ID,
                &format!("O{k:04}"),
                v,
                &format!("V{v}"),
            ));
        }
    }
    let total = msgs.len();
    let ids = message_ids(&msgs);
    let url = env.amqp_url();
    let publisher = tokio::spawn(async move {
        for chunk in msgs.chunks(50) {
            publish_many_to(&url, chunk).await;
            tokio::time::sleep(Duration::from_millis(60)).await;
        }
    });

    for (after, kill) in [(total as u64 / 5, 1), (total as u64 / 2, 2)] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let handled: u64 = env.message_counts().await.values().sum();
            if handled >= after {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "worker handled only {handled} messages before kill {kill}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let closed = env.kill_worker_connections(&format!("operations test: kill {kill}"));
        assert!(
            closed >= 2,
            "kill {kill}: the worker's connections (one per queue at least) found, closed {closed}"
        );
        // Back to ready before the next kill.
        tokio::time::sleep(Duration::from_millis(200)).await;
        wait_ready(&env, Duration::from_secs(60)).await;
    }
    publisher.await.unwrap();

    // Every profile at its final version, with the final version's fields.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM profiles p JOIN schools s ON s.id = p.school_id
             WHERE s.brin = $1 AND p.kind = 'guardian' AND p.version = $2 AND p.last_name = $3",
        )
        .bind(BRIN)
        .bind(VERSIONS as i64)
        .bind(format!("V{VERSIONS}"))
        .fetch_one(&env.db)
        .await
        .unwrap();
        if done == KEYS as i64 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{done} of {KEYS} guardians at their final version; log: {}",
            env.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(guardian_count(&env, BRIN).await, KEYS as i64);
    env.wait_queue_depth(las_contracts::CHANGES_QUEUE, 0, Duration::from_secs(30))
        .await;
    env.wait_queue_depth(las_contracts::PORTAL_QUEUE, 0, Duration::from_secs(30))
        .await;
    let depths = env.queue_depths();
    assert_eq!(
        depths.get(las_contracts::DEAD_LETTER_QUEUE).copied(),
        Some(0),
        "nothing dead-lettered: {depths:?}"
    );
    // Exactly once in effect: every message id recorded once, and no change
    // journalled twice.
    assert_eq!(processed_count(&env, &ids).await, total as i64);
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT message_id) FROM change_journal WHERE message_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(rows, distinct, "a change was journalled twice");

    let body = metrics(&env).await;
    assert_reconnected_twice(&body);
    assert!(
        metric_sum(
            &body,
            "las_transient_retries_total",
            &[("component", "broker")]
        ) >= 4.0
    );
    assert_eq!(metric_sum(&body, "las_dead_letters_total", &[]), 0.0);
    assert_eq!(
        metric_sum(&body, "las_messages_total", &[("outcome", "rejected")]),
        0.0
    );
    let handled = metric_sum(
        &body,
        "las_messages_total",
        &[("type", "guardian.upserted")],
    );
    assert!(
        handled >= total as f64,
        "every message handled at least once (redeliveries count as duplicate): {handled}"
    );
    assert!(
        env.log().contains("broker connection lost; reconnecting"),
        "the worker logged the reconnect"
    );
}

/// `deploy/rabbitmq/definitions.json` (topology as code) is exactly what the
/// worker declares: imported into an empty vhost, the worker starts on it
/// (a queue declared with other arguments would be refused), and what the
/// worker declares on another empty vhost equals the file.
#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_definitions_match_the_declared_topology() {
    let file: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_file("deploy/rabbitmq/definitions.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(file["vhosts"], json!([{"name": "/"}]));
    assert!(
        file.get("users").is_none() && file.get("permissions").is_none(),
        "definitions.json must hold no users or passwords"
    );

    // 1. What the worker declares on an empty vhost equals the file.
    let env = TestEnv::start().await;
    let exported: Value =
        serde_json::from_str(&rabbitmqctl_output(&["export_definitions", "-", "-q"]).unwrap())
            .unwrap();
    let normalise = |defs: &Value, vhost: &str, kind: &str| -> BTreeSet<String> {
        defs[kind]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["vhost"] == vhost)
            .map(|e| {
                let mut e = e.clone();
                let o = e.as_object_mut().unwrap();
                o.remove("vhost");
                if kind == "exchanges" && o.get("internal") == Some(&json!(false)) {
                    // RabbitMQ 3.13 exports `internal`, 3.10 does not.
                    o.remove("internal");
                }
                if kind == "queues" {
                    // Exported queues also carry their type; the file sets it
                    // through x-queue-type, as the worker does.
                    o.remove("type");
                }
                canonical(&e)
            })
            .collect()
    };
    for kind in ["exchanges", "queues", "bindings"] {
        let want = normalise(&file, "/", kind);
        let got = normalise(&exported, &env.vhost, kind);
        assert_eq!(
            got, want,
            "{kind}: declared by the worker (left) differ from deploy/rabbitmq/definitions.json (right)"
        );
    }
    drop(env);

    // 2. The file imported into an empty vhost: the worker accepts it as is.
    let mut env = TestEnv::start_without_worker().await;
    let mut defs = file.clone();
    // Policies too: imported with their own vhost they would land in `/` of
    // the shared broker.
    for kind in ["exchanges", "queues", "bindings", "policies"] {
        for e in defs[kind].as_array_mut().unwrap() {
            e["vhost"] = json!(env.vhost);
        }
    }
    defs["vhosts"] = json!([{"name": env.vhost}]);
    let path = std::env::temp_dir().join(format!("las-defs-{}.json", env.id));
    std::fs::write(&path, serde_json::to_vec(&defs).unwrap()).unwrap();
    let imported = rabbitmqctl_output(&["import_definitions", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    imported.unwrap();
    env.spawn_worker().await;
    env.link(parnassys_link("90IJ", "parnassys-defs")).await;
    env.publish(&[guardian("90IJ", "parnassys-defs", "O1", 1, "Defs")])
        .await;
    env.wait_handled(2).await;
    assert!(env.show("90IJ", "guardian", "O1").is_some());
    assert!(
        !env.log().contains("PRECONDITION_FAILED"),
        "the worker found a queue declared differently"
    );
    // The policies of the file apply to the worker's queues (delivery limit
    // and dead-lettering as policy, issue #16).
    let listed = rabbitmqctl_output(&["list_queues", "-p", &env.vhost, "name", "policy"]).unwrap();
    for q in [
        las_contracts::CHANGES_QUEUE,
        las_contracts::PORTAL_QUEUE,
        las_contracts::DEAD_LETTER_QUEUE,
    ] {
        let line = listed
            .lines()
            .find(|l| l.split_whitespace().next() == Some(q))
            .unwrap_or_else(|| panic!("{q} not listed: {listed}"));
        assert!(
            line.split_whitespace()
                .nth(1)
                .is_some_and(|p| !p.is_empty()),
            "a policy of deploy/rabbitmq/definitions.json applies to {q}: {line}"
        );
    }
}

/// Issue #16, silent failures: a stuck outbox need not grow, and a broken
/// event publisher must not leave its gauge stale. With the e-mail dispatcher
/// and the event publisher off, an e-mail and the sync events wait: the
/// gauges (refreshed from the database every 15 s by every replica) show them
/// and the age of the oldest, and the daily job's last success is exported.
#[tokio::test(flavor = "multi_thread")]
async fn stuck_outboxes_show_their_depth_and_age_and_the_daily_job_its_last_success() {
    let env = TestEnv::start_with(&[("MAIL_DISPATCH", "false"), ("EVENTS_PUBLISH", "false")]).await;
    env.link(parnassys_link("12AB", "env-ops")).await;
    env.add_user(
        "12AB",
        "Koppelbeheerder",
        "beheer@school.example",
        "link_admin",
        false,
    )
    .await;
    env.publish(&[change(
        "12AB",
        parnassys("env-ops"),
        1,
        json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "phone": "0301112233"}),
    )])
    .await;
    env.wait_handled(2).await;
    env.publish(&[json!({"schema": "portal.parent_edit.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB",
        "guardian_las_key": "G1", "edited_at": "2026-11-22T10:00:00Z", "changes": [{"field": "phone", "proposed": "0309998877"}]})])
    .await;
    env.wait_handled(3).await;
    let body = env
        .wait_metrics(
            "aging outboxes and the daily job's success",
            Duration::from_secs(60),
            |b| {
                metric_sample(b, "las_email_outbox_oldest_seconds").is_some_and(|v| v >= 1.0)
                    && metric_sample(b, "las_event_outbox_oldest_seconds").is_some_and(|v| v >= 1.0)
                    && metric_sample(b, "las_event_outbox_depth").is_some_and(|v| v >= 1.0)
                    && metric_sample(b, "las_daily_job_last_success_timestamp_seconds")
                        .is_some_and(|v| v > 0.0)
            },
        )
        .await;
    assert_eq!(metric_sample(&body, "las_email_outbox_depth"), Some(1.0));
    let last = metric_sample(&body, "las_daily_job_last_success_timestamp_seconds").unwrap();
    let now = chrono::Utc::now().timestamp() as f64;
    assert!(
        (now - last).abs() < 600.0,
        "the daily job ran at start: {last} vs {now}"
    );
}

/// Issue #16: the endpoints come up before the database wait, so an outage of
/// PostgreSQL at start shows as "database not ready" with retries counted,
/// not as a worker that does not answer (which would page as LasWorkerDown).
#[tokio::test(flavor = "multi_thread")]
async fn endpoints_answer_while_the_database_is_not_there_yet() {
    let env = TestEnv::start_without_worker().await;
    let port = env.metrics_port;
    let log = std::env::temp_dir().join(format!("las-no-db-{port}.log"));
    // A port nothing listens on: the worker keeps retrying the database.
    let mut child = Command::new(worker_bin())
        .arg("run")
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/nowhere")
        .env("AMQP_URL", env.amqp_url())
        .env("METRICS_ADDR", format!("127.0.0.1:{port}"))
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::from(std::fs::File::create(&log).unwrap()))
        .stderr(Stdio::from(
            std::fs::OpenOptions::new().append(true).open(&log).unwrap(),
        ))
        .spawn()
        .unwrap();
    // The first retry comes after the pool's connect timeout (5 s), later
    // on a busy machine.
    let deadline = Instant::now() + Duration::from_secs(150);
    let mut seen = false;
    while Instant::now() < deadline {
        let health = http_get_port(port, "/healthz").await;
        let ready = http_get_port(port, "/readyz").await;
        let metrics = http_get_port(port, "/metrics").await;
        if let (Some((200, _)), Some((503, why)), Some((200, body))) = (health, ready, metrics) {
            assert!(why.contains("database not ready"), "{why}");
            if metric_sample(&body, "las_transient_retries_total{component=\"database\"}")
                .is_some_and(|v| v >= 1.0)
            {
                seen = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let _ = std::fs::remove_file(&log);
    assert!(
        seen,
        "the endpoints did not answer during the database wait; log:\n{text}"
    );
    assert!(text.contains("database not ready; retrying"), "{text}");
}

/// Issue #16: freshness per school is not one series per school and replica
/// any more, but two aggregates based on what the contract promises (a
/// connector that sends full snapshots ends each with `snapshot.completed`):
/// `las_schools_linked` and `las_schools_snapshot_overdue`; and the operator
/// finds the overdue schools with `las-worker school overdue`.
#[tokio::test(flavor = "multi_thread")]
async fn schools_whose_full_snapshots_stopped_are_counted_and_named() {
    let env = TestEnv::start_with(&[("SNAPSHOT_OVERDUE_HOURS", "26")]).await;
    env.link(parnassys_link("12AB", "env-snap")).await;
    env.link(parnassys_link("34CD", "env-none")).await;
    env.link(parnassys_link("56EF", "env-late")).await;
    // 12AB and 56EF send a full snapshot of one pupil; 34CD never sends one
    // (it only sends changes: not overdue, the contract does not oblige it).
    for (brin, env_id) in [("12AB", "env-snap"), ("56EF", "env-late")] {
        let snap = uuid::Uuid::new_v4();
        let mut pupil = change(
            brin,
            parnassys(env_id),
            1,
            json!({"type": "student.upserted", "las_key": "S1", "first_name": "Kind", "birth_date": "2018-01-01"}),
        );
        pupil["snapshot_id"] = json!(snap);
        env.publish(&[
            change(
                brin,
                parnassys(env_id),
                1,
                json!({"type": "snapshot.started", "snapshot_id": snap}),
            ),
            pupil,
            change(
                brin,
                parnassys(env_id),
                1,
                json!({"type": "snapshot.completed", "snapshot_id": snap, "records_sent": 1}),
            ),
        ])
        .await;
    }
    env.wait_handled(3 + 6).await;
    // 56EF's last snapshot completed 30 hours ago.
    sqlx::query(
        "UPDATE snapshots SET completed_at = now() - interval '30 hours'
         WHERE school_id = (SELECT id FROM schools WHERE brin = '56EF')",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let body = env
        .wait_metrics(
            "one school overdue of three linked",
            Duration::from_secs(60),
            |b| {
                metric_sample(b, "las_schools_linked") == Some(3.0)
                    && metric_sample(b, "las_schools_snapshot_overdue") == Some(1.0)
            },
        )
        .await;
    assert!(!body.contains("brin="), "no series per school");
    let (code, out) = env.cli(&["school", "overdue", "--hours", "26"]);
    assert_eq!(code, 0, "{out}");
    let rows: Vec<Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["brin"], "56EF");
    assert!(rows[0]["last_snapshot_completed_at"].is_string());
    // With a longer term nobody is overdue.
    let (code, out) = env.cli(&["school", "overdue", "--hours", "48"]);
    assert_eq!(code, 0);
    assert!(!out.lines().any(|l| l.starts_with('{')), "{out}");
}

/// Issue #17: `AMQP_URL` may list several broker nodes. A worker whose list
/// starts with (or, from its random start, meets) a node that refuses
/// connections connects to the next one and works; the startup log shows
/// the list without any password.
#[tokio::test(flavor = "multi_thread")]
async fn a_list_of_broker_nodes_skips_the_one_that_is_down() {
    let mut env = TestEnv::start_without_worker().await;
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let good = env.amqp_url();
    let dead = good.replace(":5672/", &format!(":{dead_port}/"));
    assert_ne!(dead, good, "the test's broker URL names port 5672: {good}");
    env.extra_env_set("AMQP_URL", &format!("{dead},{good},{dead}"));
    env.spawn_worker().await;
    env.link(parnassys_link("12AB", "env-nodes")).await;
    env.publish(&[guardian("12AB", "env-nodes", "G1", 1, "Knoop")])
        .await;
    let counts = env.wait_handled(2).await;
    assert_eq!(counts.get("applied").copied(), Some(2), "{counts:?}");
    assert!(env.show("12AB", "guardian", "G1").is_some());
    let log = env.log();
    assert!(
        log.contains(&format!("127.0.0.1:{dead_port}")),
        "the startup log names every node"
    );
    assert!(
        !log.contains("guest:guest@"),
        "no password of any node in the log"
    );
}

/// Issue #19: lapin keeps 32 frames of buffer per direction and connection,
/// 8 MiB per connection at RabbitMQ's default `frame_max` of 128 KiB. Issue
/// #17: at RabbitMQ's default heartbeat of 60 s a silent partition stalls a
/// session for two minutes. Every connection of the worker (two consumers,
/// the event publisher, the queue gauges) asks for 32 KiB frames and a 10 s
/// heartbeat, as the broker reports them.
#[tokio::test(flavor = "multi_thread")]
async fn every_worker_connection_uses_small_frames_and_a_short_heartbeat() {
    let env = TestEnv::start().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = env
            .broker
            .ctl(&[
                "list_connections",
                "-q",
                "-s",
                "vhost",
                "frame_max",
                "timeout",
                "client_properties",
            ])
            .unwrap();
        let ours: Vec<(String, String, String)> = out
            .lines()
            .filter_map(|l| {
                let mut c = l.splitn(4, '\t');
                let (vhost, frame_max, heartbeat, props) =
                    (c.next()?, c.next()?, c.next()?, c.next()?);
                (vhost.trim() == env.vhost && props.contains("las-worker")).then(|| {
                    (
                        frame_max.trim().to_owned(),
                        heartbeat.trim().to_owned(),
                        props.to_owned(),
                    )
                })
            })
            .collect();
        if ours.len() >= 4 {
            for (frame_max, heartbeat, props) in &ours {
                assert_eq!(frame_max, "32768", "{props}");
                assert_eq!(heartbeat, "10", "heartbeat: {props}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the worker's four connections did not all open: {ours:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
