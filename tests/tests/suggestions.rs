//! End-to-end for R10: parent edits become suggestion e-mails to the school,
//! through RabbitMQ, the outbox and the file transport.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use las_e2e::*;
use serde_json::{Value, json};

const P: &str = "parnassys-prod";

fn edit(brin: &str, guardian: &str, changes: Value) -> Value {
    json!({"schema": "portal.parent_edit.v1", "message_id": uuid::Uuid::new_v4(), "brin": brin,
        "guardian_las_key": guardian, "edited_at": chrono::Utc::now().to_rfc3339(), "changes": changes})
}

/// A school with a guardian of one student, and three portal users: a link
/// administrator, a teacher with the notify right, a teacher without it; and
/// a parent account that has the right by mistake.
async fn school(env: &TestEnv) {
    env.link(parnassys_link("12AB", P)).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "last_name": "Dijk", "birth_date": "2018-01-01"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Anna", "name_prefix": "van", "last_name": "Dijk",
            "phone": "030-1234567", "email": "anna@example.org", "student_keys": ["S1"]})),
    ])
    .await;
    env.wait_handled(3).await;
    env.add_user(
        "12AB",
        "Koppelbeheerder",
        "beheer@school.example",
        "link_admin",
        false,
    )
    .await;
    env.add_user("12AB", "Juf Ans", "ans@school.example", "teacher", true)
        .await;
    env.add_user(
        "12AB",
        "Meester Bob",
        "bob@school.example",
        "teacher",
        false,
    )
    .await;
    env.add_user("12AB", "Een ouder", "ouder@example.org", "parent", true)
        .await;
}

async fn wait_mails(env: &TestEnv, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let mails = env.mails();
        if mails.len() >= n {
            return mails;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} e-mails, found {}; log:\n{}",
            mails.len(),
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn r10_parent_edit_mails_each_recipient_once_and_a_las_import_resolves_it() {
    let env = TestEnv::start().await;
    school(&env).await;
    let (code, out) = env.cli(&["school", "recipients", "--brin", "12AB"]);
    assert_eq!(code, 0);
    assert_eq!(out.lines().count(), 2, "{out}");
    env.publish(&[edit("12AB", "G1", json!([{"field": "phone", "proposed": "06-12345678"}, {"field": "allergies", "proposed": "pinda"}]))]).await;
    env.wait_handled(4).await;
    let mails = wait_mails(&env, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.mails().len(), 2, "exactly one e-mail per recipient");
    let to: Vec<&str> = mails
        .iter()
        .map(|m| m.lines().find(|l| l.starts_with("To: ")).unwrap())
        .collect();
    assert!(
        to.contains(&"To: beheer@school.example") && to.contains(&"To: ans@school.example"),
        "{to:?}"
    );
    assert!(
        mails
            .iter()
            .all(|m| !m.contains("To: ouder@") && !m.contains("To: bob@")),
        "never to parents or to users without the right"
    );
    let m = &mails[0];
    assert!(m.contains("Anna van Dijk"), "names the guardian");
    assert!(
        m.contains("ouder/verzorger van Piet Dijk"),
        "names the student"
    );
    assert!(
        m.contains("Telefoonnummer: 030-1234567 -> 06-12345678"),
        "current -> proposed"
    );
    assert!(
        !m.contains("pinda"),
        "a portal-only field is not a suggestion (R5)"
    );
    assert!(
        m.contains("Content-Type: text/html"),
        "plain text plus HTML"
    );
    // The portal value is not changed by the edit (R1).
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["phone"],
        "030-1234567"
    );
    let (_, list) = env.cli(&["suggestions", "list", "--brin", "12AB", "--status", "open"]);
    assert!(
        list.contains("\"fields\":[\"phone\"]") && list.contains("\"emails_sent\":2"),
        "{list}"
    );

    // An edit proposing what the portal already has is ignored.
    env.publish(&[edit(
        "12AB",
        "G1",
        json!([{"field": "phone", "proposed": "030-1234567"}]),
    )])
    .await;
    env.wait_handled(5).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(env.mails().len(), 2);

    // The LAS brings the proposed value: resolved.
    env.publish(&[change("12AB", parnassys(P), 2, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Anna", "name_prefix": "van",
        "last_name": "Dijk", "phone": "06-12345678", "student_keys": ["S1"]}))])
    .await;
    env.wait_handled(6).await;
    let (_, list) = env.cli(&["suggestions", "list", "--brin", "12AB"]);
    assert!(
        list.contains("\"status\":\"resolved\"")
            && list.contains("\"closed_reason\":\"las_import\""),
        "{list}"
    );
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("las_suggestions_total{event=\"opened\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("las_suggestions_total{event=\"resolved\"} 1"));
    assert!(metrics.contains("las_suggestion_resolution_seconds_count 1"));
    assert!(metrics.contains("las_emails_total{outcome=\"sent\",reason=\"ok\"} 2"));
    for secret in [
        "06-12345678",
        "030-1234567",
        "anna@example.org",
        "beheer@school.example",
    ] {
        assert!(
            !env.log().contains(secret),
            "no personal data in the logs (R12): {secret}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn r10_killed_between_commit_and_send_each_email_goes_out_once() {
    let mut env = TestEnv::start_with(&[("MAIL_DISPATCH", "false")]).await;
    school(&env).await;
    env.publish(&[edit(
        "12AB",
        "G1",
        json!([{"field": "street", "proposed": "Dorpsstraat 2"}]),
    )])
    .await;
    env.wait_handled(4).await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE status = 'pending'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(pending, 2, "committed with the message, not sent yet");
    env.kill_worker();
    env.extra_env_set("MAIL_DISPATCH", "true");
    env.spawn_worker().await;
    wait_mails(&env, 2).await;
    env.kill_worker();
    env.spawn_worker().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        env.mails().len(),
        2,
        "each e-mail once, also after another restart"
    );
    let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM email_outbox WHERE status = 'sent'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(sent, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn r10_school_without_recipients_keeps_the_suggestion_and_unknown_guardian_is_rejected() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    env.publish(&[change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Anna", "phone": "030-1"}))]).await;
    env.wait_handled(2).await;
    env.publish(&[
        edit(
            "12AB",
            "G1",
            json!([{"field": "phone", "proposed": "06-2"}]),
        ),
        edit(
            "12AB",
            "NOBODY",
            json!([{"field": "phone", "proposed": "06-3"}]),
        ),
    ])
    .await;
    env.wait_handled(4).await;
    let (_, list) = env.cli(&["suggestions", "list", "--brin", "12AB", "--status", "open"]);
    assert!(list.contains("\"recipients\":0"), "{list}");
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(metrics.contains("las_suggestions_total{event=\"no_recipients\"} 1"));
    assert!(env.log().contains("no recipients"), "a clear warning");
    let dl = env.wait_dead_letters(1).await;
    assert_eq!(dl[0].0["x-las-reason-code"], "validation_failed");
    assert!(dl[0].0["x-las-reason"].contains("NOBODY"));
    // An operator discards it.
    let id = list
        .split("\"id\":")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_owned();
    let (code, _) = env.cli(&["suggestions", "discard", "--id", &id]);
    assert_eq!(code, 0);
    let (code, _) = env.cli(&["suggestions", "discard", "--id", &id]);
    assert_eq!(code, 1, "only an open suggestion can be discarded");
}
