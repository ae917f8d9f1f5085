//! Reliability under faults (#8): the database goes away mid-stream.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use las_e2e::*;
use serde_json::json;

const P: &str = "parnassys-prod";

fn guardians(range: std::ops::Range<usize>) -> Vec<serde_json::Value> {
    range
        .map(|i| change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": format!("G{i:04}"), "first_name": "Ouder"})))
        .collect()
}

async fn admin(sql: String) {
    let pool = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn database_outage_mid_stream_dead_letters_nothing_and_resumes_by_itself() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    env.publish(&guardians(0..100)).await;
    env.wait_handled(101).await;

    // The database refuses connections and the worker's sessions are cut.
    let db = env.database.clone();
    admin(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS false")).await;
    admin(format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()")).await;
    env.publish(&guardians(100..300)).await;
    let outage = Instant::now();
    let mut saw_unready = false;
    while outage.elapsed() < Duration::from_secs(10) {
        if let Some((503, _)) = env.http_get("/readyz").await {
            saw_unready = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    admin(format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true")).await;

    let counts = env.wait_handled(301).await;
    assert_eq!(
        counts.get("rejected"),
        None,
        "no message dead-lettered because of the outage: {counts:?}"
    );
    assert!(
        saw_unready,
        "/readyz said the database was unreachable during the outage"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM profiles WHERE kind = 'guardian' AND status = 'active'",
        )
        .fetch_one(&env.db)
        .await
        .unwrap_or_default();
        if n == 300 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of 300 guardians after the outage"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    let retries = metric_sum(
        &metrics,
        "las_transient_retries_total",
        &[("component", "database")],
    );
    assert!(retries > 0.0, "the outage was retried: {retries}");
    assert!(env.dead_letters().await.is_empty());
    let (code, _) = env.cli(&[
        "show",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "G0299",
    ]);
    assert_eq!(code, 0);
}
