//! The e-mail dispatcher (R10) against a real HTTP server (wiremock) and the
//! real PostgreSQL: 200, 429 then 200, 500s until success, 400 given up with a
//! reason, and a time-out. Each test uses its own database.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use backon::ExponentialBuilder;
use common::Db;
use las_worker::adapters::db::Store;
use las_worker::adapters::mail::{HttpTransport, Transport};
use las_worker::adapters::metrics::Metrics;
use las_worker::app::mail_relay::{DispatchSettings, Dispatcher};
use wiremock::matchers::{header, header_exists, method, path};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

impl Db {
    /// One school and `n` pending e-mails; returns their ids.
    async fn outbox(&self, n: usize) -> Vec<i64> {
        let school: i64 = sqlx::query_scalar("INSERT INTO schools (brin, las_system, environment_id) VALUES ('12AB', 'parnassys', 'env') RETURNING id")
            .fetch_one(&self.pool)
            .await
            .unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            ids.push(
                sqlx::query_scalar(
                    "INSERT INTO email_outbox (school_id, to_address, subject, body_text, body_html, idempotency_key)
                     VALUES ($1, $2, 'Wijzigingsvoorstel', 'tekst', '<p>tekst</p>', $3) RETURNING id",
                )
                .bind(school)
                .bind(format!("beheer{i}@school.example"))
                .bind(uuid::Uuid::new_v4())
                .fetch_one(&self.pool)
                .await
                .unwrap(),
            );
        }
        ids
    }

    async fn state(&self, id: i64) -> (String, i32, Option<String>, Option<String>) {
        sqlx::query_as("SELECT status, attempts, last_error, provider_message_id FROM email_outbox WHERE id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await
            .unwrap()
    }
}

fn fast() -> DispatchSettings {
    DispatchSettings {
        idle: Duration::from_millis(10),
        batch: 10,
        lease: Duration::from_secs(60),
        backoff: ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(5))
            .with_max_delay(Duration::from_millis(20))
            .with_jitter()
            .without_max_times(),
    }
}

async fn dispatcher(db: &Db, server: &MockServer, timeout: Duration) -> (Dispatcher, Metrics) {
    let transport = HttpTransport::new(
        &server.uri(),
        "secret-token",
        "noreply@portal.example",
        timeout,
    )
    .unwrap();
    let metrics = Metrics::new();
    (
        Dispatcher::new(
            Store::from_pool(db.pool.clone()),
            Transport::Http(transport),
            metrics.clone(),
            fast(),
        ),
        metrics,
    )
}

/// Runs rounds until `done` or 50 rounds.
async fn rounds_until(d: &Dispatcher, db: &Db, id: i64, done: &str) {
    for _ in 0..50 {
        d.round().await.unwrap();
        if db.state(id).await.0 == done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    panic!("e-mail {id} never reached {done}: {:?}", db.state(id).await);
}

#[tokio::test]
async fn r10_200_is_sent_once_with_idempotency_key_and_token() {
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(1).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/messages"))
        .and(header("authorization", "Bearer secret-token"))
        .and(header_exists("idempotency-key"))
        .respond_with(ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "prov-1"})))
        .expect(1)
        .mount(&server)
        .await;
    let (d, metrics) = dispatcher(&db, &server, Duration::from_secs(5)).await;
    rounds_until(&d, &db, ids[0], "sent").await;
    // More rounds never send it again.
    d.round().await.unwrap();
    let (status, attempts, _, provider) = db.state(ids[0]).await;
    assert_eq!(
        (status.as_str(), attempts, provider.as_deref()),
        ("sent", 1, Some("prov-1"))
    );
    let body: serde_json::Value = server.received_requests().await.unwrap()[0]
        .body_json()
        .unwrap();
    assert_eq!(body["to"], serde_json::json!(["beheer0@school.example"]));
    assert!(
        metrics
            .render()
            .contains("las_emails_total{outcome=\"sent\",reason=\"ok\"} 1")
    );
    assert!(metrics.render().contains("las_email_outbox_depth 0"));
}

/// Answers with the given statuses in turn, then 200.
struct Sequence(std::sync::Mutex<Vec<u16>>);

impl Respond for Sequence {
    fn respond(&self, _: &Request) -> ResponseTemplate {
        let mut v = self.0.lock().unwrap();
        if v.is_empty() {
            ResponseTemplate::new(200).set_body_json(serde_json::json!({"id": "prov-ok"}))
        } else {
            ResponseTemplate::new(v.remove(0))
        }
    }
}

#[tokio::test]
async fn r10_429_then_200_is_retried_and_sent() {
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(1).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence(std::sync::Mutex::new(vec![429])))
        .mount(&server)
        .await;
    let (d, metrics) = dispatcher(&db, &server, Duration::from_secs(5)).await;
    d.round().await.unwrap();
    let (status, _, err, _) = db.state(ids[0]).await;
    assert_eq!(status, "pending");
    assert!(err.unwrap().contains("429"));
    rounds_until(&d, &db, ids[0], "sent").await;
    assert_eq!(server.received_requests().await.unwrap().len(), 2);
    assert!(
        metrics
            .render()
            .contains("las_emails_total{outcome=\"retry\",reason=\"rate_limited\"} 1")
    );
}

#[tokio::test]
async fn r10_500s_are_retried_until_success() {
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(1).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(Sequence(std::sync::Mutex::new(vec![500, 502, 503])))
        .mount(&server)
        .await;
    let (d, _) = dispatcher(&db, &server, Duration::from_secs(5)).await;
    rounds_until(&d, &db, ids[0], "sent").await;
    let (_, attempts, _, provider) = db.state(ids[0]).await;
    assert_eq!(attempts, 4);
    assert_eq!(provider.as_deref(), Some("prov-ok"));
    assert_eq!(
        server.received_requests().await.unwrap().len(),
        4,
        "sent exactly once after the 2xx"
    );
    // Every attempt carried the same idempotency key.
    let keys: std::collections::HashSet<String> = server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|r| {
            r.headers
                .get("idempotency-key")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(keys.len(), 1);
}

#[tokio::test]
async fn r10_400_is_given_up_with_a_reason() {
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(1).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(400).set_body_string("invalid recipient beheer0@school.example"),
        )
        .mount(&server)
        .await;
    let (d, metrics) = dispatcher(&db, &server, Duration::from_secs(5)).await;
    rounds_until(&d, &db, ids[0], "failed").await;
    for _ in 0..3 {
        d.round().await.unwrap();
    }
    let (_, attempts, err, _) = db.state(ids[0]).await;
    assert_eq!(attempts, 1, "no retry after a 400");
    let err = err.unwrap();
    assert!(err.contains("HTTP 400"), "{err}");
    assert!(
        !err.contains("beheer0@"),
        "the recorded reason does not copy the provider's body: {err}"
    );
    assert!(
        metrics
            .render()
            .contains("las_emails_total{outcome=\"failed\",reason=\"rejected\"} 1")
    );
}

#[tokio::test]
async fn r10_timeout_is_retried() {
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(1).await;
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(3)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .mount(&server)
        .await;
    let (d, metrics) = dispatcher(&db, &server, Duration::from_millis(300)).await;
    d.round().await.unwrap();
    let (status, _, err, _) = db.state(ids[0]).await;
    assert_eq!(status, "pending");
    assert!(err.unwrap().contains("time-out"));
    assert!(
        metrics
            .render()
            .contains("las_emails_total{outcome=\"retry\",reason=\"timeout\"} 1")
    );
    rounds_until(&d, &db, ids[0], "sent").await;
}

#[tokio::test]
async fn r10_a_claim_abandoned_by_a_crashed_dispatcher_is_taken_over() {
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(1).await;
    // Another dispatcher claimed it and died: its lease has run out.
    sqlx::query("UPDATE email_outbox SET status = 'sending', attempts = 1, claimed_until = now() - interval '1 second' WHERE id = $1")
        .bind(ids[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let (d, _) = dispatcher(&db, &server, Duration::from_secs(5)).await;
    rounds_until(&d, &db, ids[0], "sent").await;
}

/// A claim whose database session is gone (its dispatcher was killed) is
/// taken over at once, long before its lease runs out; a claim whose session
/// lives is left alone.
#[tokio::test]
async fn r10_a_claim_of_a_killed_dispatcher_is_taken_over_at_once_a_live_one_is_not() {
    use sqlx::Connection;
    let db = Db::new("lasw_mail").await;
    let ids = db.outbox(2).await;
    let url = db.url();
    let claim = "UPDATE email_outbox SET status = 'sending', attempts = 1, claimed_until = now() + interval '1 hour', claimed_by_pid = pg_backend_pid() WHERE id = $1";
    let mut dead = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(claim)
        .bind(ids[0])
        .execute(&mut dead)
        .await
        .unwrap();
    let mut alive = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(claim)
        .bind(ids[1])
        .execute(&mut alive)
        .await
        .unwrap();
    // The first claimer's process dies: its session ends with it.
    dead.close().await.unwrap();

    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;
    let (d, _) = dispatcher(&db, &server, Duration::from_secs(5)).await;
    rounds_until(&d, &db, ids[0], "sent").await;
    for _ in 0..5 {
        d.round().await.unwrap();
    }
    assert_eq!(
        db.state(ids[1]).await.0,
        "sending",
        "the live dispatcher's claim stays its own"
    );
    alive.close().await.unwrap();
}
