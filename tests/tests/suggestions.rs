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

/// A parent's correction of a child's data (v1.3): the edit names the child.
fn child_edit(brin: &str, guardian: &str, student: &str, changes: Value) -> Value {
    let mut e = edit(brin, guardian, changes);
    e["student_las_key"] = json!(student);
    e
}

/// The suggestions' references: the parent edits' message ids (the portal's
/// own ids for the edits), used in the link into the portal.
fn suggestion_ids(list: &str) -> Vec<String> {
    list.lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["message_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// R10, seed 003: a school whose policy keeps pupil data out of e-mail sets
/// `notice`; its suggestion e-mails say only that a suggestion waits and link
/// into the portal: no names, no values, no LAS keys of persons.
#[tokio::test(flavor = "multi_thread")]
async fn r10_a_notice_school_gets_no_names_or_values_only_a_link_into_the_portal() {
    let env = TestEnv::start_with(&[("PORTAL_BASE_URL", "https://ouderportaal.example/")]).await;
    school(&env).await;
    let (code, out, err) = env.cli_output(&[
        "school",
        "configure",
        "--brin",
        "12AB",
        "--system",
        "parnassys",
        "--environment-id",
        P,
        "--suggestion-detail",
        "notice",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (_, show) = env.cli(&["school", "show", "--brin", "12AB"]);
    let show: Value = serde_json::from_str(&show).unwrap();
    assert_eq!(show["suggestion_detail"], "notice");
    env.publish(&[
        edit(
            "12AB",
            "G1",
            json!([{"field": "phone", "proposed": "06-12345678"}, {"field": "street", "proposed": "Dorpsstraat 2"}]),
        ),
        child_edit(
            "12AB",
            "G1",
            "S1",
            json!([{"field": "last_name", "proposed": "Dijkstra"}]),
        ),
    ])
    .await;
    env.wait_handled(5).await;
    let mails = wait_mails(&env, 4).await;
    let (_, list) = env.cli(&["suggestions", "list", "--brin", "12AB", "--status", "open"]);
    let ids = suggestion_ids(&list);
    assert_eq!(ids.len(), 2, "{list}");
    for m in &mails {
        // The body and subject, without the recipient's own address.
        let content: String = m
            .lines()
            .filter(|l| !l.starts_with("To: ") && !l.starts_with("From: "))
            .collect::<Vec<_>>()
            .join("\n");
        for personal in [
            "Anna",
            "Dijk",
            "Piet",
            "06-12345678",
            "030-1234567",
            "Dorpsstraat",
            "anna@example.org",
            "G1",
            "S1",
            "Telefoonnummer",
            "Achternaam",
        ] {
            assert!(
                !content.contains(personal),
                "a notice names nobody and shows no value: {personal} in\n{m}"
            );
        }
        assert!(content.contains("wacht een wijzigingsvoorstel"), "{m}");
        assert!(
            ids.iter()
                .any(|id| content
                    .contains(&format!("https://ouderportaal.example/suggestions/{id}"))),
            "links into the portal: {m}"
        );
    }
    assert!(
        mails
            .iter()
            .any(|m| m.contains("de gegevens van een leerling")),
        "says a child's data is concerned, not whose"
    );
    // The values rest in the database for the portal, not in the e-mail.
    let proposed: Vec<String> =
        sqlx::query_scalar("SELECT proposed_value FROM suggestion_fields ORDER BY proposed_value")
            .fetch_all(&env.db)
            .await
            .unwrap();
    assert_eq!(proposed, ["06-12345678", "Dijkstra", "Dorpsstraat 2"]);
    for secret in ["Dijkstra", "06-12345678", "Piet"] {
        assert!(!env.log().contains(secret), "no personal data in the logs");
    }
}

/// R10, seed 002 ("Melding ouder-/kindgegevens"): a parent proposes a
/// correction of their child's last name; it becomes a suggestion about the
/// student, is e-mailed naming the student, and is resolved by the LAS
/// import of that student that brings the name.
#[tokio::test(flavor = "multi_thread")]
async fn r10_a_parents_correction_of_a_childs_name_is_a_suggestion_about_the_student() {
    let env = TestEnv::start().await;
    school(&env).await;
    env.publish(&[child_edit(
        "12AB",
        "G1",
        "S1",
        json!([{"field": "last_name", "proposed": "Dijkstra"}, {"field": "phone", "proposed": "06-55555555"}]),
    )])
    .await;
    env.wait_handled(4).await;
    let mails = wait_mails(&env, 2).await;
    let m = &mails[0];
    assert!(
        m.contains("Subject: Wijzigingsvoorstel gegevens leerling: Piet Dijk"),
        "the student is the subject: {m}"
    );
    assert!(m.contains("Achternaam: Dijk -> Dijkstra"), "{m}");
    assert!(
        m.contains("Anna van Dijk"),
        "names the guardian who proposed it"
    );
    assert!(
        !m.contains("06-55555555"),
        "a phone is never a student field (R3)"
    );
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["last_name"],
        "Dijk",
        "the portal value is not changed by the edit (R1)"
    );
    let (_, list) = env.cli(&["suggestions", "list", "--brin", "12AB", "--status", "open"]);
    let s: Value = serde_json::from_str(list.lines().next().unwrap()).unwrap();
    assert_eq!(s["student_las_key"], "S1", "{list}");
    assert_eq!(s["guardian_las_key"], "G1");
    assert_eq!(s["fields"], json!(["last_name"]));

    // An import of the guardian does not resolve a suggestion about the child.
    env.publish(&[change("12AB", parnassys(P), 2, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Anna", "name_prefix": "van",
        "last_name": "Dijk", "phone": "030-1234567", "email": "anna@example.org", "student_keys": ["S1"]}))])
    .await;
    env.wait_handled(5).await;
    let (_, open) = env.cli(&["suggestions", "list", "--brin", "12AB", "--status", "open"]);
    assert_eq!(open.lines().count(), 1, "{open}");

    // The LAS brings the child's new name: resolved.
    env.publish(&[change("12AB", parnassys(P), 2, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "last_name": "Dijkstra", "birth_date": "2018-01-01"}))]).await;
    env.wait_handled(6).await;
    let (_, list) = env.cli(&["suggestions", "list", "--brin", "12AB"]);
    assert!(
        list.contains("\"status\":\"resolved\"")
            && list.contains("\"closed_reason\":\"las_import\""),
        "{list}"
    );
    assert!(
        !env.log().contains("Dijkstra"),
        "no personal data in the logs"
    );
}

/// R10: a parent can only correct their own children's data. A correction
/// naming another family's child, or a child of another school, is
/// dead-lettered with a readable reason; nothing is suggested or e-mailed.
#[tokio::test(flavor = "multi_thread")]
async fn r10_a_correction_naming_another_familys_child_is_dead_lettered() {
    let env = TestEnv::start().await;
    school(&env).await;
    env.link(parnassys_link("34CD", "parnassys-34CD")).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S2", "first_name": "Kees", "last_name": "Bakker", "birth_date": "2017-05-05"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G2", "first_name": "Bram", "last_name": "Bakker", "student_keys": ["S2"]})),
        change("34CD", parnassys("parnassys-34CD"), 1, json!({"type": "student.upserted", "las_key": "S3", "first_name": "Lot", "last_name": "Visser", "birth_date": "2016-03-03"})),
    ])
    .await;
    env.wait_handled(7).await;
    let other_family: i64 =
        sqlx::query_scalar("SELECT id FROM profiles WHERE kind = 'student' AND las_key = 'S2'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    let mut by_id = edit(
        "12AB",
        "G1",
        json!([{"field": "last_name", "proposed": "Jansen"}]),
    );
    by_id["student_profile_id"] = json!(other_family);
    env.publish(&[
        child_edit(
            "12AB",
            "G1",
            "S2",
            json!([{"field": "last_name", "proposed": "Jansen"}]),
        ),
        by_id,
        child_edit(
            "12AB",
            "G1",
            "S3",
            json!([{"field": "city", "proposed": "Delft"}]),
        ),
    ])
    .await;
    let dl = env.wait_dead_letters(3).await;
    for (headers, _) in &dl {
        assert_eq!(headers["x-las-reason-code"], "validation_failed");
        let reason = &headers["x-las-reason"];
        assert!(
            reason.contains("is not a child of guardian G1 in the portal of BRIN 12AB"),
            "{reason}"
        );
        for name in ["Kees", "Bakker", "Lot", "Visser", "Anna"] {
            assert!(!reason.contains(name), "no names in a reason: {reason}");
        }
    }
    let reasons: Vec<&str> = dl.iter().map(|(h, _)| h["x-las-reason"].as_str()).collect();
    assert!(
        reasons.iter().any(|r| r.contains("LAS key S2")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("profile id {other_family}"))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("LAS key S3")),
        "{reasons:?}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM suggestions")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing suggested");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(env.mails().is_empty(), "nothing e-mailed");
}
