//! End-to-end: the real `las-worker run` against the real RabbitMQ and
//! PostgreSQL. Each test names the rules it proves.

#![allow(clippy::unwrap_used)]

use las_e2e::*;
use serde_json::{Value, json};

const P_ENV: &str = "parnassys-prod";

async fn parnassys_school(brin: &str) -> TestEnv {
    let env = TestEnv::start().await;
    env.link(parnassys_link(brin, P_ENV)).await;
    env
}

fn guardian(key: &str, extra: Value) -> Value {
    let mut g = json!({"type": "guardian.upserted", "las_key": key, "first_name": "Anna", "name_prefix": "van", "last_name": "Dijk",
        "street": "Dorpsstraat 1", "postcode": "1234 AB", "city": "Utrecht", "phone": "0301234567", "mobile": "0612345678",
        "email": "anna@example.org", "student_keys": ["S1"]});
    for (k, v) in extra.as_object().unwrap() {
        g[k] = v.clone();
    }
    g
}

#[tokio::test(flavor = "multi_thread")]
async fn r1_r2_blank_las_fields_clear_portal_fields() {
    let env = parnassys_school("12AB").await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        guardian("G1", json!({})),
    )])
    .await;
    env.wait_handled(2).await;
    let g = env.show("12AB", "guardian", "G1").unwrap();
    assert_eq!(g["phone"], "0301234567");
    assert_eq!(g["name_prefix"], "van");
    // A school edit in the portal is overwritten by the next import (R1).
    sqlx::query("UPDATE profiles SET first_name = 'Annie' WHERE las_key = 'G1'")
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        2,
        guardian(
            "G1",
            json!({"phone": "  ", "name_prefix": null, "city": ""}),
        ),
    )])
    .await;
    env.wait_handled(3).await;
    let g = env.show("12AB", "guardian", "G1").unwrap();
    assert_eq!(
        g["first_name"], "Anna",
        "R1: the LAS value replaces the portal edit"
    );
    assert_eq!(g["phone"], Value::Null, "R2: blank phone clears");
    assert_eq!(g["name_prefix"], Value::Null, "R2: null prefix clears");
    assert_eq!(g["city"], Value::Null, "R2: empty city clears");
    assert_eq!(g["mobile"], "0612345678");
    assert_eq!(g["status"], "active");
}

#[tokio::test(flavor = "multi_thread")]
async fn r4_email_is_kept_when_the_las_has_none_and_invalid_is_not_imported() {
    let env = parnassys_school("12AB").await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        guardian("G1", json!({})),
    )])
    .await;
    env.wait_handled(2).await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        2,
        guardian("G1", json!({"email": null})),
    )])
    .await;
    env.wait_handled(3).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["email"],
        "anna@example.org",
        "R4: blank keeps"
    );
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        3,
        guardian("G1", json!({"email": "not an address"})),
    )])
    .await;
    env.wait_handled(4).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["email"],
        "anna@example.org",
        "R4: invalid is treated as blank"
    );
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("las_rule_decisions_total{action=\"invalid_email\",rule=\"R4\"} 1"),
        "R4: invalid e-mail reported as a metric"
    );
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        4,
        guardian("G1", json!({"email": "nieuw@example.org"})),
    )])
    .await;
    env.wait_handled(5).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["email"],
        "nieuw@example.org",
        "R4: LAS e-mail replaces"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r3_student_phone_is_cleared_and_r5_portal_only_data_is_untouched() {
    let env = parnassys_school("12AB").await;
    let student = |v: u64, phone: &str| {
        change(
            "12AB",
            parnassys(P_ENV),
            v,
            json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet",
        "last_name": "Jansen", "birth_date": "2018-03-04", "phone": phone, "group_keys": ["G3"]}),
        )
    };
    env.publish(&[student(1, "0611111111")]).await;
    env.wait_handled(2).await;
    let s = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(
        s["phone"],
        Value::Null,
        "R3: a student's phone is never imported"
    );
    assert_eq!(s["birth_date"], "2018-03-04");
    // The portal holds a phone and portal-only data on the student.
    sqlx::query("UPDATE profiles SET phone = '0622222222', allergies = 'pinda', general_practitioner = 'Dr. X' WHERE las_key = 'S1'")
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&[student(2, "")]).await;
    env.wait_handled(3).await;
    let s = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(
        s["phone"],
        Value::Null,
        "R3: the portal's student phone is cleared at import"
    );
    let (allergies, gp): (Option<String>, Option<String>) =
        sqlx::query_as("SELECT allergies, general_practitioner FROM profiles WHERE las_key = 'S1'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(allergies.as_deref(), Some("pinda"), "R5");
    assert_eq!(gp.as_deref(), Some("Dr. X"), "R5");
}

#[tokio::test(flavor = "multi_thread")]
async fn r3_emergency_phone_is_imported_from_esis_only() {
    let env = TestEnv::start().await;
    env.link(esis_link("34CD", "esis-1")).await;
    env.link(parnassys_link("12AB", P_ENV)).await;
    let label = las_contracts::ESIS_PORTAL_LABEL;
    env.publish(&[
        change(
            "34CD",
            esis("esis-1", label),
            1,
            guardian("G1", json!({"emergency_phone": "0699999999"})),
        ),
        change(
            "12AB",
            parnassys(P_ENV),
            1,
            guardian("G1", json!({"emergency_phone": "0699999999"})),
        ),
    ])
    .await;
    env.wait_handled(4).await;
    assert_eq!(
        env.show("34CD", "guardian", "G1").unwrap()["emergency_phone"],
        "0699999999",
        "ESIS imports it"
    );
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["emergency_phone"],
        Value::Null,
        "ParnasSys does not import it"
    );
    // A ParnasSys guardian's portal emergency phone is left as it is, not cleared.
    sqlx::query("UPDATE profiles SET emergency_phone = '0201111111' WHERE las_key = 'G1' AND school_id = (SELECT id FROM schools WHERE brin = '12AB')")
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&[
        change(
            "12AB",
            parnassys(P_ENV),
            2,
            guardian("G1", json!({"emergency_phone": null})),
        ),
        change(
            "34CD",
            esis("esis-1", label),
            2,
            guardian("G1", json!({"emergency_phone": null})),
        ),
    ])
    .await;
    env.wait_handled(6).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["emergency_phone"],
        "0201111111"
    );
    assert_eq!(
        env.show("34CD", "guardian", "G1").unwrap()["emergency_phone"],
        Value::Null,
        "ESIS blank clears (R2)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn duplicate_delivery_changes_nothing() {
    let env = parnassys_school("12AB").await;
    let m = change("12AB", parnassys(P_ENV), 1, guardian("G1", json!({})));
    env.publish(std::slice::from_ref(&m)).await;
    env.wait_handled(2).await;
    // Simulate a later portal edit; a redelivery of the same message must not undo it.
    sqlx::query("UPDATE profiles SET first_name = 'Edited' WHERE las_key = 'G1'")
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&[m.clone(), m]).await;
    let counts = env.wait_handled(4).await;
    assert_eq!(counts.get("duplicate"), Some(&2), "{counts:?}");
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["first_name"],
        "Edited"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_version_changes_nothing_and_is_counted() {
    let env = parnassys_school("12AB").await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        5,
        guardian("G1", json!({"first_name": "Nieuw"})),
    )])
    .await;
    env.wait_handled(2).await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        4,
        guardian("G1", json!({"first_name": "Oud"})),
    )])
    .await;
    let counts = env.wait_handled(3).await;
    assert_eq!(counts.get("stale"), Some(&1), "{counts:?}");
    let g = env.show("12AB", "guardian", "G1").unwrap();
    assert_eq!(g["first_name"], "Nieuw");
    assert_eq!(g["version"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn final_state_does_not_depend_on_arrival_order() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("11AA", "env-a")).await;
    env.link(parnassys_link("22BB", "env-b")).await;
    let msgs = |brin: &str, envid: &str| {
        vec![
            change(
                brin,
                parnassys(envid),
                1,
                json!({"type": "group.upserted", "las_key": "G3", "name": "Groep 3", "kind": "year"}),
            ),
            change(
                brin,
                parnassys(envid),
                1,
                guardian("G1", json!({"student_keys": ["S1", "S2"]})),
            ),
            change(
                brin,
                parnassys(envid),
                2,
                guardian(
                    "G1",
                    json!({"email": null, "phone": null, "student_keys": ["S1", "S2"]}),
                ),
            ),
            change(
                brin,
                parnassys(envid),
                1,
                json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "group_keys": ["G3"]}),
            ),
            change(
                brin,
                parnassys(envid),
                2,
                json!({"type": "student.upserted", "las_key": "S1", "first_name": "Pieter", "group_keys": ["G3"]}),
            ),
            change(
                brin,
                parnassys(envid),
                1,
                json!({"type": "student.upserted", "las_key": "S2", "first_name": "Sara", "group_keys": ["G3"]}),
            ),
            change(
                brin,
                parnassys(envid),
                2,
                json!({"type": "student.removed", "las_key": "S2"}),
            ),
        ]
    };
    let in_order = msgs("11AA", "env-a");
    let mut reversed = msgs("22BB", "env-b");
    reversed.reverse();
    env.publish(&in_order).await;
    env.publish(&reversed).await;
    env.wait_handled(2 + 14).await;
    for (kind, key) in [("guardian", "G1"), ("student", "S1"), ("student", "S2")] {
        let mut a = env.show("11AA", kind, key).unwrap();
        let mut b = env.show("22BB", kind, key).unwrap();
        for v in [&mut a, &mut b] {
            v.as_object_mut().unwrap().remove("brin");
            v.as_object_mut().unwrap().remove("updated_at");
        }
        assert_eq!(
            a, b,
            "{kind} {key} differs between in-order and reversed arrival"
        );
    }
    let g = env.show("22BB", "guardian", "G1").unwrap();
    assert_eq!(
        g["email"], "anna@example.org",
        "R4 kept across versions even when v2 arrived first"
    );
    assert_eq!(g["phone"], Value::Null);
    let s1 = env.show("22BB", "student", "S1").unwrap();
    assert_eq!(s1["first_name"], "Pieter");
    assert_eq!(s1["groups"], json!([{"las_key": "G3", "name": "Groep 3"}]));
    assert_eq!(
        env.show("22BB", "student", "S2").unwrap()["status"],
        "deactivated"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r12_removal_deactivates_leaves_groups_and_takes_the_guardian_along() {
    let env = parnassys_school("12AB").await;
    env.publish(&[
        change("12AB", parnassys(P_ENV), 1, json!({"type": "group.upserted", "las_key": "G3", "name": "Groep 3", "kind": "year"})),
        change("12AB", parnassys(P_ENV), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "group_keys": ["G3"]})),
        change("12AB", parnassys(P_ENV), 1, guardian("G1", json!({"student_keys": ["S1"]}))),
        change("12AB", parnassys(P_ENV), 1, json!({"type": "staff.upserted", "las_key": "T1", "first_name": "Juf", "group_keys": ["G3"]})),
    ])
    .await;
    env.wait_handled(5).await;
    let t = env.show("12AB", "staff", "T1").unwrap();
    assert_eq!(t["role"], "Leerkracht", "R8: default role at creation");
    assert_eq!(t["groups"][0]["las_key"], "G3");
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["students"],
        json!([{"las_key": "S1", "status": "active"}])
    );
    env.publish(&[
        change(
            "12AB",
            parnassys(P_ENV),
            2,
            json!({"type": "student.removed", "las_key": "S1"}),
        ),
        change(
            "12AB",
            parnassys(P_ENV),
            2,
            json!({"type": "staff.removed", "las_key": "T1"}),
        ),
    ])
    .await;
    env.wait_handled(7).await;
    let s = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(s["status"], "deactivated");
    assert_eq!(s["groups"], json!([]), "R12: out of all groups at once");
    assert_eq!(
        s["first_name"], "Piet",
        "data stays until the retention period ends"
    );
    let t = env.show("12AB", "staff", "T1").unwrap();
    assert_eq!(t["status"], "deactivated");
    assert_eq!(t["groups"], json!([]));
    let g = env.show("12AB", "guardian", "G1").unwrap();
    assert_eq!(
        g["status"], "deactivated",
        "R12: a guardian whose students are all gone is deactivated too"
    );
    assert_eq!(g["deactivation_reason"], "all_students_removed");
    // The student comes back: so does the guardian.
    env.publish(&[change("12AB", parnassys(P_ENV), 3, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "group_keys": ["G3"]}))]).await;
    env.wait_handled(8).await;
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["status"],
        "active"
    );
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["status"],
        "active"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn guardian_is_linked_to_a_student_that_arrives_later() {
    let env = parnassys_school("12AB").await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        guardian("G1", json!({"student_keys": ["S9"]})),
    )])
    .await;
    env.wait_handled(2).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["students"],
        json!([{"las_key": "S9", "status": "unknown"}])
    );
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        json!({"type": "student.upserted", "las_key": "S9", "first_name": "Kim"}),
    )])
    .await;
    env.wait_handled(3).await;
    assert_eq!(
        env.show("12AB", "student", "S9").unwrap()["guardians"],
        json!([{"las_key": "G1", "status": "active"}])
    );
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["status"],
        "active"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r12_two_schools_are_isolated() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("11AA", "env-a")).await;
    env.link(parnassys_link("22BB", "env-b")).await;
    env.publish(&[
        change(
            "11AA",
            parnassys("env-a"),
            1,
            guardian("G1", json!({"first_name": "Alpha"})),
        ),
        change(
            "22BB",
            parnassys("env-b"),
            1,
            guardian("G1", json!({"first_name": "Beta"})),
        ),
    ])
    .await;
    env.wait_handled(4).await;
    env.publish(&[
        change(
            "11AA",
            parnassys("env-a"),
            2,
            json!({"type": "guardian.removed", "las_key": "G1"}),
        ),
        // School A's environment cannot write school B (R6).
        change(
            "22BB",
            parnassys("env-a"),
            3,
            guardian("G1", json!({"first_name": "Hijack"})),
        ),
    ])
    .await;
    env.wait_handled(6).await;
    assert_eq!(
        env.show("11AA", "guardian", "G1").unwrap()["status"],
        "deactivated"
    );
    let b = env.show("22BB", "guardian", "G1").unwrap();
    assert_eq!(b["status"], "active");
    assert_eq!(b["first_name"], "Beta");
    let dl = env.wait_dead_letters(1).await;
    assert_eq!(dl[0].0["x-las-reason-code"], "environment_mismatch");
}

#[tokio::test(flavor = "multi_thread")]
async fn show_exits_1_without_output_for_an_unknown_profile() {
    let env = parnassys_school("12AB").await;
    assert!(env.show("12AB", "student", "NOPE").is_none());
    assert!(env.show("99ZZ", "guardian", "G1").is_none());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_rejection_reason_lands_in_the_dead_letter_queue_and_the_worker_goes_on() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P_ENV)).await;
    env.link(esis_link("34CD", "esis-1")).await;
    let changes = las_contracts::LAS_CHANGES_EXCHANGE;
    env.publish_raw(
        changes,
        "las.12AB.student.upserted",
        &[b"{not json".to_vec()],
    )
    .await;
    let mut unknown_schema = change(
        "12AB",
        parnassys(P_ENV),
        1,
        json!({"type": "student.upserted", "las_key": "S1"}),
    );
    unknown_schema["schema"] = json!("las.change.v9");
    let bad_brin = change(
        "12ab",
        parnassys(P_ENV),
        1,
        json!({"type": "student.upserted", "las_key": "S1"}),
    );
    let no_key = change(
        "12AB",
        parnassys(P_ENV),
        1,
        json!({"type": "guardian.upserted", "first_name": "X"}),
    );
    let unknown_brin = change(
        "99ZZ",
        parnassys(P_ENV),
        1,
        json!({"type": "student.upserted", "las_key": "S1"}),
    );
    let other_env = change(
        "12AB",
        parnassys("parnassys-test"),
        1,
        json!({"type": "student.upserted", "las_key": "S1"}),
    );
    let wrong_label = change(
        "34CD",
        esis("esis-1", "ParentCom"),
        1,
        json!({"type": "student.upserted", "las_key": "S1"}),
    );
    let relink = parnassys_link("12AB", "another-env");
    env.publish(&[
        unknown_schema,
        bad_brin,
        no_key,
        unknown_brin,
        other_env,
        wrong_label,
        relink,
    ])
    .await;
    let mut huge = change(
        "12AB",
        parnassys(P_ENV),
        1,
        json!({"type": "student.upserted", "las_key": "S1"}),
    );
    huge["padding"] = json!("x".repeat(1024 * 1024 + 10));
    env.publish_raw(
        changes,
        "las.12AB.student.upserted",
        &[serde_json::to_vec(&huge).unwrap()],
    )
    .await;
    // A good message after all the bad ones is applied.
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        json!({"type": "student.upserted", "las_key": "OK1", "first_name": "Goed"}),
    )])
    .await;
    let counts = env.wait_handled(3 + 9).await;
    assert_eq!(counts.get("rejected"), Some(&9), "{counts:?}");
    assert_eq!(
        env.show("12AB", "student", "OK1").unwrap()["first_name"],
        "Goed"
    );
    let dl = env.wait_dead_letters(9).await;
    let mut reasons: Vec<String> = dl
        .iter()
        .map(|(h, _)| h["x-las-reason-code"].clone())
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "environment_mismatch",
            "esis_label",
            "invalid_json",
            "relink_refused",
            "too_large",
            "unknown_brin",
            "unknown_schema",
            "validation_failed",
            "validation_failed"
        ]
    );
    for (h, body) in &dl {
        assert!(!h["x-las-reason"].is_empty(), "a readable reason");
        assert!(h.contains_key("x-las-original-routing-key"));
        assert!(h.contains_key("x-las-rejected-at"));
        assert!(!body.is_empty(), "the original body is kept for replay");
    }
    let label = dl
        .iter()
        .find(|(h, _)| h["x-las-reason-code"] == "esis_label")
        .unwrap();
    assert!(
        label.0["x-las-reason"].contains("ParentCom")
            && label.0["x-las-reason"].contains("BasisOnline Ouderportaal")
    );
    let brin = dl
        .iter()
        .find(|(h, _)| h["x-las-reason-code"] == "unknown_brin")
        .unwrap();
    assert!(brin.0["x-las-reason"].contains("99ZZ"));
    let missing = dl
        .iter()
        .filter(|(h, _)| h["x-las-reason-code"] == "validation_failed")
        .any(|(h, _)| h["x-las-reason"].contains("las_key"));
    assert!(missing, "a missing field is named");
    // Nothing of the rejected messages was written.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE las_key = 'S1'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(metrics.contains("las_dead_letters_total{reason=\"unknown_brin\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn per_message_mode_and_restart_keep_working() {
    let mut env = TestEnv::start_with(&[("BATCH_SIZE", "1"), ("PREFETCH", "1")]).await;
    env.link(parnassys_link("12AB", P_ENV)).await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        guardian("G1", json!({})),
    )])
    .await;
    env.wait_handled(2).await;
    let took = env.stop_worker().expect("worker exits on SIGTERM");
    assert!(took.as_secs() < 30, "graceful stop took {took:?}");
    // Messages published while the worker is down wait in the queue.
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        2,
        guardian("G1", json!({"first_name": "Later"})),
    )])
    .await;
    env.spawn_worker().await;
    env.wait_handled(1).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["first_name"],
        "Later"
    );
    assert!(
        !env.log().contains("0301234567"),
        "no personal data in the logs (R12)"
    );
    assert!(
        !env.log().contains("anna@example.org"),
        "no personal data in the logs (R12)"
    );
}
