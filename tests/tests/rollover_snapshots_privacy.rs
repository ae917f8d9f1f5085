//! End-to-end for issue #5: year rollover (R11), full snapshots with the
//! deletion guard, retention purge and privacy (R12), and the sync-event outbox.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;

use las_e2e::*;
use serde_json::{Value, json};

const P: &str = "parnassys-prod";

fn student(brin: &str, env: &str, key: &str, v: u64, snapshot: Option<uuid::Uuid>) -> Value {
    let mut m = change(
        brin,
        parnassys(env),
        v,
        json!({"type": "student.upserted", "las_key": key, "first_name": "Kind", "birth_date": "2018-01-01", "group_keys": ["G3"]}),
    );
    if let Some(id) = snapshot {
        m["snapshot_id"] = json!(id);
    }
    m
}

/// A suggestion of guardian `guardian` (with a made-up edit) and one e-mail
/// per status about it, naming `child`, not due to be sent yet: what a
/// purge or an erasure must leave without names.
async fn suggestion_emails_naming(env: &TestEnv, guardian: &str, child: &str, statuses: &[&str]) {
    sqlx::query(
        "WITH s AS (
             INSERT INTO suggestions (school_id, message_id, guardian_profile_id, edited_at)
             SELECT school_id, gen_random_uuid(), id, now() FROM profiles WHERE las_key = $1 RETURNING id, school_id)
         INSERT INTO email_outbox (school_id, suggestion_id, to_address, subject, body_text, body_html, idempotency_key, status, next_attempt_at)
         SELECT school_id, id, 'juf@school.example', 'Wijziging van Ouder', 'Ouder van ' || $2, '<p>' || $2 || '</p>', gen_random_uuid(), st, now() + interval '1 day'
         FROM s, unnest($3::text[]) st",
    )
    .bind(guardian)
    .bind(child)
    .bind(statuses)
    .execute(&env.db)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn r11_rollover_unlinks_items_deletes_closed_year_records_once_and_leaves_other_schools() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("11AA", "env-a")).await;
    env.link(parnassys_link("22BB", "env-b")).await;
    let g3 = |brin: &str, e: &str| {
        change(
            brin,
            parnassys(e),
            1,
            json!({"type": "group.upserted", "las_key": "G3", "name": "Groep 3", "kind": "year"}),
        )
    };
    env.publish(&[g3("11AA", "env-a"), g3("22BB", "env-b")])
        .await;
    env.wait_handled(4).await;
    for brin in ["11AA", "22BB"] {
        sqlx::query(
            "INSERT INTO group_items (school_id, group_id, item_type, title)
             SELECT g.school_id, g.id, t, 'x' FROM portal_groups g JOIN schools s ON s.id = g.school_id, unnest(ARRAY['news', 'photo_album', 'calendar_item']) t
             WHERE s.brin = $1 AND g.las_key = 'G3'",
        )
        .bind(brin)
        .execute(&env.db)
        .await
        .unwrap();
        for table in [
            "absence_reports",
            "leave_requests",
            "after_school_care_registrations",
        ] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO {table} (school_id, student_key, school_year) SELECT id, 'S1', y FROM schools, unnest(ARRAY['2025-2026', '2026-2027']) y WHERE brin = $1"
            )))
            .bind(brin)
            .execute(&env.db)
            .await
            .unwrap();
        }
    }
    let rollover = || {
        change(
            "11AA",
            parnassys("env-a"),
            1,
            json!({"type": "school_year.rolled_over", "school_year": "2026-2027"}),
        )
    };
    env.publish(&[rollover()]).await;
    env.wait_handled(5).await;
    let count = |sql: &'static str| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM group_items i JOIN schools s ON s.id = i.school_id WHERE s.brin = '11AA' AND i.group_id IS NULL AND i.unlinked_from_group_id IS NOT NULL").await, 3, "R11: items unlinked, not deleted");
    assert_eq!(count("SELECT count(*) FROM group_items i JOIN schools s ON s.id = i.school_id WHERE s.brin = '22BB' AND i.group_id IS NOT NULL").await, 3, "another school untouched");
    for table in [
        "absence_reports",
        "leave_requests",
        "after_school_care_registrations",
    ] {
        let left: Vec<(String, String)> = sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT s.brin, t.school_year FROM {table} t JOIN schools s ON s.id = t.school_id ORDER BY 1, 2")))
            .fetch_all(&env.db)
            .await
            .unwrap();
        let want = vec![
            ("11AA".to_owned(), "2026-2027".to_owned()),
            ("22BB".to_owned(), "2025-2026".to_owned()),
            ("22BB".to_owned(), "2026-2027".to_owned()),
        ];
        assert_eq!(
            left, want,
            "R11: {table} of the closed year deleted, the new year and other schools kept"
        );
    }
    // Republished in the new year, an item stays linked when the rollover comes again.
    sqlx::query("UPDATE group_items SET group_id = unlinked_from_group_id WHERE id = (SELECT min(id) FROM group_items WHERE group_id IS NULL)").execute(&env.db).await.unwrap();
    env.publish(&[rollover()]).await;
    env.wait_handled(6).await;
    assert_eq!(count("SELECT count(*) FROM group_items i JOIN schools s ON s.id = i.school_id WHERE s.brin = '11AA' AND i.group_id IS NOT NULL").await, 1, "a second run for the same year changes nothing");
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("las_rollover_total{action=\"items_unlinked\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("las_rollover_total{action=\"records_deleted\"} 3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn r12_snapshots_remove_missing_profiles_and_the_guard_holds_bad_exports() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(parnassys_link("12AB", P)).await;
    let keys: Vec<String> = (1..=20).map(|i| format!("S{i:02}")).collect();
    env.publish(
        &keys
            .iter()
            .map(|k| student("12AB", P, k, 1, None))
            .collect::<Vec<_>>(),
    )
    .await;
    env.wait_handled(21).await;

    // A normal snapshot: 19 of 20 included -> the missing one is removed.
    let snap = uuid::Uuid::new_v4();
    let mut msgs = vec![change(
        "12AB",
        parnassys(P),
        1,
        json!({"type": "snapshot.started", "snapshot_id": snap}),
    )];
    msgs.extend(
        keys[..19]
            .iter()
            .map(|k| student("12AB", P, k, 2, Some(snap))),
    );
    msgs.push(change(
        "12AB",
        parnassys(P),
        1,
        json!({"type": "snapshot.completed", "snapshot_id": snap, "records_sent": 19}),
    ));
    env.publish(&msgs).await;
    env.wait_handled(21 + 21).await;
    assert_eq!(
        env.show("12AB", "student", "S20").unwrap()["status"],
        "deactivated"
    );
    assert_eq!(
        env.show("12AB", "student", "S20").unwrap()["deactivation_reason"],
        "missing_from_snapshot"
    );
    assert_eq!(
        env.show("12AB", "student", "S19").unwrap()["status"],
        "active"
    );

    // A snapshot missing half the school: held, nothing deactivated.
    let snap2 = uuid::Uuid::new_v4();
    let mut msgs = vec![change(
        "12AB",
        parnassys(P),
        2,
        json!({"type": "snapshot.started", "snapshot_id": snap2}),
    )];
    msgs.extend(
        keys[..9]
            .iter()
            .map(|k| student("12AB", P, k, 3, Some(snap2))),
    );
    msgs.push(change(
        "12AB",
        parnassys(P),
        2,
        json!({"type": "snapshot.completed", "snapshot_id": snap2, "records_sent": 9}),
    ));
    env.publish(&msgs).await;
    env.wait_handled(42 + 11).await;
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE status = 'active'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(active, 19, "the guard deactivated nothing");
    let (_, list) = env.cli(&["snapshot", "list", "--brin", "12AB"]);
    assert!(
        list.contains("\"status\":\"held\"") && list.contains("deletion guard"),
        "{list}"
    );
    assert!(
        env.log().contains("full snapshot held"),
        "an error log says so"
    );
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(metrics.contains("las_snapshots_total{outcome=\"held\"} 1"));
    let (code, out) = env.cli(&["snapshot", "release", "--brin", "12AB"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("10 profile(s) deactivated"), "{out}");
    let active: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE status = 'active'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(active, 9, "release applies it");
    let (code, _) = env.cli(&["snapshot", "release", "--brin", "12AB"]);
    assert_eq!(code, 1, "nothing held any more");

    // A count mismatch is held too; discard drops it.
    let snap3 = uuid::Uuid::new_v4();
    let mut msgs = vec![change(
        "12AB",
        parnassys(P),
        3,
        json!({"type": "snapshot.started", "snapshot_id": snap3}),
    )];
    msgs.extend(
        keys[..9]
            .iter()
            .map(|k| student("12AB", P, k, 4, Some(snap3))),
    );
    msgs.push(change(
        "12AB",
        parnassys(P),
        3,
        json!({"type": "snapshot.completed", "snapshot_id": snap3, "records_sent": 12}),
    ));
    env.publish(&msgs).await;
    env.wait_handled(53 + 11).await;
    let (_, list) = env.cli(&["snapshot", "list", "--brin", "12AB"]);
    assert!(
        list.contains("count mismatch: the connector sent 12 records, 9 arrived"),
        "{list}"
    );
    let (code, _) = env.cli(&["snapshot", "discard", "--brin", "12AB"]);
    assert_eq!(code, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn r12_personal_data_is_purged_after_the_retention_period() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys", "environment_id": P, "retention_days": 30})).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "OLD", "first_name": "Oud", "phone": "0611", "email": "oud@example.org"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "NEW", "first_name": "Nieuw", "phone": "0622"})),
        change("12AB", parnassys(P), 2, json!({"type": "guardian.removed", "las_key": "OLD"})),
        change("12AB", parnassys(P), 2, json!({"type": "guardian.removed", "las_key": "NEW"})),
    ])
    .await;
    env.wait_handled(5).await;
    sqlx::query(
        "UPDATE profiles SET deactivated_at = '2026-10-01T12:00:00Z' WHERE las_key = 'OLD'",
    )
    .execute(&env.db)
    .await
    .unwrap();
    sqlx::query(
        "UPDATE profiles SET deactivated_at = '2026-11-10T12:00:00Z' WHERE las_key = 'NEW'",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let (code, out) = env.cli(&["tick", "--date", "2026-11-22"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"purged\":1"), "{out}");
    let old = env.show("12AB", "guardian", "OLD").unwrap();
    assert_eq!(old["status"], "deactivated");
    for f in ["first_name", "phone", "email"] {
        assert_eq!(old[f], Value::Null, "R12: {f} purged after 30 days");
    }
    assert_eq!(
        env.show("12AB", "guardian", "NEW").unwrap()["first_name"],
        "Nieuw",
        "not yet past the retention period"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn outbox_events_once_per_committed_change_none_for_rollback_and_they_survive_a_kill() {
    let mut env = TestEnv::start_with(&[("EVENTS_PUBLISH", "false")]).await;
    env.bind_events_queue().await;
    env.link(parnassys_link("12AB", P)).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "group.upserted", "las_key": "G3", "name": "Groep 3", "kind": "year"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "A", "phone": "0611"})),
        change("12AB", parnassys(P), 2, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "A", "phone": "0622", "city": "Utrecht"})),
        // The database refuses a NUL character: this change rolls back and is dead-lettered.
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "BAD", "first_name": "x\u{0}y"})),
        change("12AB", parnassys(P), 3, json!({"type": "guardian.removed", "las_key": "G1"})),
    ])
    .await;
    env.wait_handled(6).await;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM event_outbox_events WHERE published_at IS NULL")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert!(pending >= 5, "events wait in the outbox: {pending}");
    env.kill_worker();
    env.extra_env_set("EVENTS_PUBLISH", "true");
    env.spawn_worker().await;
    let events = env.wait_events(pending as usize).await;
    assert_eq!(
        events.len(),
        pending as usize,
        "each event once: {events:?}"
    );
    let ids: HashSet<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), events.len());
    let kinds: Vec<(String, String)> = events
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_owned(),
                e["las_key"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for want in [
        ("group.created", "G3"),
        ("profile.created", "G1"),
        ("profile.updated", "G1"),
        ("profile.deactivated", "G1"),
        ("message.rejected", ""),
    ] {
        assert!(
            kinds.contains(&(want.0.to_owned(), want.1.to_owned())),
            "missing {want:?} in {kinds:?}"
        );
    }
    assert!(
        !kinds.iter().any(|(_, k)| k == "BAD"),
        "no profile event for the rolled-back change: {kinds:?}"
    );
    let updated = events
        .iter()
        .find(|e| e["event_type"] == "profile.updated")
        .unwrap();
    assert_eq!(updated["changed_fields"], json!(["city", "phone"]));
    let rejected = events
        .iter()
        .find(|e| e["event_type"] == "message.rejected")
        .unwrap();
    assert_eq!(rejected["reason"], "database_rejected");
    let dl = env.wait_dead_letters(1).await;
    assert_eq!(dl[0].0["x-las-reason-code"], "database_rejected");
}

#[tokio::test(flavor = "multi_thread")]
async fn r12_no_personal_data_in_logs_metrics_or_events() {
    let env = TestEnv::start_with(&[("LAS_TODAY", "2026-11-22")]).await;
    env.bind_events_queue().await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "esis",
        "environment_id": "esis-1", "label": las_contracts::ESIS_PORTAL_LABEL, "intake_weeks_ahead": 8})).await;
    let src = esis("esis-1", las_contracts::ESIS_PORTAL_LABEL);
    let secrets = [
        "Zwaantje",
        "Quirijnsma",
        "Ooievaarssteeg 77",
        "9999 ZZ",
        "Kwakkeldorp",
        "0612398745",
        "0206543219",
        "0687412369",
        "zwaantje.q@example.org",
        "2019-04-13",
        "2023-01-15",
    ];
    env.publish(&[
        change("12AB", src.clone(), 1, json!({"type": "group.upserted", "las_key": "G1", "name": "Groep 1", "kind": "group"})),
        change("12AB", src.clone(), 1, json!({"type": "student.upserted", "las_key": "K1", "first_name": "Zwaantje", "last_name": "Quirijnsma",
            "birth_date": "2019-04-13", "street": "Ooievaarssteeg 77", "postcode": "9999 ZZ", "city": "Kwakkeldorp", "phone": "0612398745", "group_keys": ["G1"]})),
        change("12AB", src.clone(), 1, json!({"type": "student.upserted", "las_key": "K2", "first_name": "Zwaantje", "birth_date": "2023-01-15"})),
        change("12AB", src.clone(), 1, json!({"type": "guardian.upserted", "las_key": "O1", "first_name": "Zwaantje", "last_name": "Quirijnsma",
            "street": "Ooievaarssteeg 77", "postcode": "9999 ZZ", "city": "Kwakkeldorp", "phone": "0206543219", "mobile": "0612398745",
            "emergency_phone": "0687412369", "email": "zwaantje.q@example.org", "student_keys": ["K1", "K2"]})),
        change("12AB", src.clone(), 2, json!({"type": "guardian.upserted", "las_key": "O1", "first_name": "Zwaantje", "email": "not valid Kwakkeldorp", "student_keys": ["K1"]})),
        // Bad input that quotes personal data must not echo it in the reason.
        change("12AB", src.clone(), 1, json!({"type": "student.upserted", "las_key": "K3", "first_name": "Zwaantje", "birth_date": "2019-02-30"})),
        change("12AB", src.clone(), 1, json!({"type": "guardian.upserted", "las_key": "O2", "phone": 612398745})),
        change("12AB", src, 2, json!({"type": "student.removed", "las_key": "K1"})),
    ])
    .await;
    env.publish(&[json!({"schema": "portal.parent_edit.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "guardian_las_key": "O1",
        "edited_at": "2026-11-22T10:00:00Z", "changes": [{"field": "city", "proposed": "Kwakkeldorp"}, {"field": "phone", "proposed": "0687412369"}]})])
    .await;
    env.wait_handled(10).await;
    let events = env.wait_events(5).await;
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    let dead = env.wait_dead_letters(2).await;
    let reasons: String = dead.iter().map(|(h, _)| format!("{h:?}")).collect();
    let events_text = serde_json::to_string(&events).unwrap();
    let log = env.log();
    assert!(log.contains("message rejected"), "the log was captured");
    for s in secrets {
        assert!(!log.contains(s), "personal data {s:?} in the logs");
        assert!(!metrics.contains(s), "personal data {s:?} in the metrics");
        assert!(
            !events_text.contains(s),
            "personal data {s:?} in the events"
        );
        assert!(
            !reasons.contains(s),
            "personal data {s:?} in a dead-letter reason"
        );
    }
}

/// Issue #18: a replayed older year, or the same year in another spelling,
/// must not unlink what the school republished, nor delete the current
/// year's records; and the intake group's items are group-bound too.
#[tokio::test(flavor = "multi_thread")]
async fn r11_an_older_or_misspelled_rollover_unlinks_nothing_and_deletes_nothing() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("11AA", "env-a")).await;
    env.publish(&[change(
        "11AA",
        parnassys("env-a"),
        1,
        json!({"type": "group.upserted", "las_key": "G3", "name": "Groep 3", "kind": "year"}),
    )])
    .await;
    env.wait_handled(2).await;
    // The school's intake group, with an item of its own.
    sqlx::query(
        "INSERT INTO portal_groups (school_id, las_key, name, group_type, status)
         SELECT id, '@intake', 'Instroomgroep', 'intake', 'active' FROM schools WHERE brin = '11AA'",
    )
    .execute(&env.db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO group_items (school_id, group_id, item_type, title)
         SELECT g.school_id, g.id, 'news', g.las_key FROM portal_groups g JOIN schools s ON s.id = g.school_id
         WHERE s.brin = '11AA' AND g.las_key IN ('G3', '@intake')",
    )
    .execute(&env.db)
    .await
    .unwrap();
    for table in [
        "absence_reports",
        "leave_requests",
        "after_school_care_registrations",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO {table} (school_id, student_key, school_year) SELECT id, 'S1', y FROM schools, unnest(ARRAY['2025-2026', '2026-2027']) y WHERE brin = '11AA'"
        )))
        .execute(&env.db)
        .await
        .unwrap();
    }
    let rollover = |year: &str| {
        change(
            "11AA",
            parnassys("env-a"),
            1,
            json!({"type": "school_year.rolled_over", "school_year": year}),
        )
    };
    env.publish(&[rollover("2026-2027")]).await;
    env.wait_handled(3).await;
    let linked = || {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT i.title FROM group_items i JOIN schools s ON s.id = i.school_id
                 WHERE s.brin = '11AA' AND i.group_id IS NOT NULL ORDER BY 1",
            )
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        linked().await,
        Vec::<String>::new(),
        "R11: the year group's and the intake group's items are unlinked"
    );
    // The school republishes both items for the new year.
    sqlx::query("UPDATE group_items SET group_id = unlinked_from_group_id")
        .execute(&env.db)
        .await
        .unwrap();

    // A replayed older year is stale, another spelling is refused.
    env.publish(&[rollover("2025-2026"), rollover("2026/2027")])
        .await;
    let counts = env.wait_handled(5).await;
    assert_eq!(counts.get("stale"), Some(&1), "the older year: {counts:?}");
    assert_eq!(counts.get("rejected"), Some(&1), "2026/2027: {counts:?}");
    let dead = env.wait_dead_letters(1).await;
    assert_eq!(dead[0].0["x-las-reason-code"], "validation_failed");
    assert!(
        dead[0].0["x-las-reason"].contains("two consecutive years"),
        "{:?}",
        dead[0].0
    );
    assert_eq!(
        linked().await,
        vec!["@intake".to_owned(), "G3".to_owned()],
        "republished items stay linked"
    );
    for table in [
        "absence_reports",
        "leave_requests",
        "after_school_care_registrations",
    ] {
        let years: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT school_year FROM {table} ORDER BY 1"
        )))
        .fetch_all(&env.db)
        .await
        .unwrap();
        assert_eq!(
            years,
            vec!["2026-2027"],
            "{table}: the current year is kept"
        );
    }
}

/// Issue #18: the purge clears the portal-only data too and the e-mails that
/// name the child; a late older record does not bring data back; a child
/// re-enrolled and removed again is purged again after its new term.
#[tokio::test(flavor = "multi_thread")]
async fn r12_the_purge_is_complete_final_and_repeatable() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys", "environment_id": P, "retention_days": 30})).await;
    let kind = |key: &str, v: u64| {
        change(
            "12AB",
            parnassys(P),
            v,
            json!({"type": "student.upserted", "las_key": key, "first_name": "Vertrokken", "last_name": "Kind", "birth_date": "2018-05-05", "group_keys": ["G3"]}),
        )
    };
    env.publish(&[
        kind("S1", 1),
        kind("S2", 1),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "email": "ouder@example.org", "student_keys": ["S1", "S2"]})),
    ])
    .await;
    env.wait_handled(4).await;
    // Portal-only data of the child, and a suggestion e-mail of its
    // (still active) guardian that names it.
    sqlx::query("UPDATE profiles SET allergies = 'pinda', general_practitioner = 'Dr. Huisarts' WHERE las_key = 'S1'")
        .execute(&env.db)
        .await
        .unwrap();
    suggestion_emails_naming(&env, "G1", "Vertrokken Kind", &["sent", "pending"]).await;
    env.publish(&[change(
        "12AB",
        parnassys(P),
        2,
        json!({"type": "student.removed", "las_key": "S1"}),
    )])
    .await;
    env.wait_handled(5).await;
    let age = |days_ago: &str| {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE profiles SET deactivated_at = now() - interval '{days_ago} days' WHERE las_key = 'S1'"
        )))
    };
    age("40").execute(&env.db).await.unwrap();
    let (code, out) = env.cli(&["tick"]);
    assert_eq!(code, 0, "{out}");
    let state: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT las_key, status, deactivated_at::text, purged_at::text FROM profiles ORDER BY las_key",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert!(out.contains("\"purged\":1"), "{out} {state:?}");

    let personal = || {
        let db = env.db.clone();
        async move {
            sqlx::query_as::<_, (Option<String>, Option<String>, Option<String>, Option<chrono::NaiveDate>)>(
                "SELECT first_name, allergies, general_practitioner, birth_date FROM profiles WHERE las_key = 'S1'",
            )
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        personal().await,
        (None, None, None, None),
        "complete: portal-only data too"
    );
    let mails: Vec<(String, String, String, String, String)> = sqlx::query_as(
        "SELECT to_address, subject, body_text, body_html, status FROM email_outbox ORDER BY id",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert!(
        !format!("{mails:?}").contains("Vertrokken") && !format!("{mails:?}").contains("Ouder"),
        "the e-mails that named the child keep no names: {mails:?}"
    );
    let status: Vec<&str> = mails.iter().map(|m| m.4.as_str()).collect();
    assert_eq!(
        status,
        vec!["sent", "cancelled"],
        "the sent one keeps its status for the audit; the unsent one is not sent any more"
    );

    // Final: a late upsert older than the removal writes nothing back.
    env.publish(&[kind("S1", 1)]).await;
    let counts = env.wait_handled(6).await;
    assert_eq!(counts.get("stale"), Some(&1), "{counts:?}");
    assert_eq!(personal().await, (None, None, None, None), "still purged");

    // Repeatable: re-enrolled (newer than the removal), removed again, and
    // purged again once the new term has passed. The first purge was long
    // ago by then.
    sqlx::query("UPDATE profiles SET purged_at = now() - interval '60 days' WHERE las_key = 'S1'")
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&[kind("S1", 3)]).await;
    env.wait_handled(7).await;
    assert_eq!(
        personal().await.0.as_deref(),
        Some("Vertrokken"),
        "re-enrolled"
    );
    env.publish(&[change(
        "12AB",
        parnassys(P),
        4,
        json!({"type": "student.removed", "las_key": "S1"}),
    )])
    .await;
    env.wait_handled(8).await;
    let (_, out) = env.cli(&["tick"]);
    assert!(
        out.contains("\"purged\":0"),
        "the new term has not passed: {out}"
    );
    age("40").execute(&env.db).await.unwrap();
    let (_, out) = env.cli(&["tick"]);
    assert!(out.contains("\"purged\":1"), "{out}");
    assert_eq!(personal().await, (None, None, None, None), "purged again");
}

/// Issue #18: other services learn of a person when the portal shows it. A
/// guardian whose only child is held (under 4, a school without intake) is
/// invisible in the portal: none of its messages may announce it; the child's
/// 4th birthday does, once.
#[tokio::test(flavor = "multi_thread")]
async fn r9_a_guardian_of_only_held_children_is_announced_when_it_becomes_visible() {
    let env = TestEnv::start_with(&[("EVENTS_PUBLISH", "false"), ("DAILY_JOB", "false")]).await;
    env.link(parnassys_link("12AB", P)).await;
    let guardian = |v: u64, phone: &str| {
        change(
            "12AB",
            parnassys(P),
            v,
            json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "phone": phone, "student_keys": ["S1"]}),
        )
    };
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Klein", "birth_date": "2024-01-10", "group_keys": ["G1A"]})),
        guardian(1, "0611"),
    ])
    .await;
    env.wait_handled(3).await;
    env.publish(&[guardian(2, "0622")]).await;
    env.wait_handled(4).await;
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["status"],
        "held"
    );
    let events_of = |key: &'static str| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT payload ->> 'event_type' FROM event_outbox_events
                 WHERE payload ->> 'las_key' = $1 ORDER BY outbox_id, position",
            )
            .bind(key)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        events_of("G1").await,
        Vec::<String>::new(),
        "a held guardian is not announced"
    );
    assert_eq!(
        events_of("S1").await,
        Vec::<String>::new(),
        "nor its held child"
    );

    let (code, out) = env.cli(&["tick", "--date", "2028-01-10"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        env.show("12AB", "guardian", "G1").unwrap()["status"],
        "active"
    );
    assert_eq!(
        events_of("G1").await,
        vec!["profile.created"],
        "announced once, when visible"
    );
    assert_eq!(events_of("S1").await, vec!["profile.created"]);
}

/// Issue #18: parents see staff in the portal (seed 002, "Medewerkers"), so a
/// staff member's home address and private phones are never imported (and
/// cleared where the portal held them); the school chooses which phones it
/// publishes (`staff_phones`, default none).
#[tokio::test(flavor = "multi_thread")]
async fn r3_staff_keep_only_name_work_email_and_the_phones_the_school_publishes() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    let staff = |v: u64| {
        change(
            "12AB",
            parnassys(P),
            v,
            json!({"type": "staff.upserted", "las_key": "M1", "first_name": "Juf", "last_name": "Jansen",
                   "street": "Thuisweg 1", "postcode": "1234 AB", "city": "Utrecht",
                   "phone": "030-1234567", "mobile": "06-12345678", "email": "juf@school.example"}),
        )
    };
    env.publish(&[staff(1)]).await;
    env.wait_handled(2).await;
    let m1 = env.show("12AB", "staff", "M1").unwrap();
    assert_eq!(m1["first_name"], "Juf");
    assert_eq!(m1["email"], "juf@school.example", "the work e-mail");
    for f in [
        "street",
        "postcode",
        "city",
        "phone",
        "mobile",
        "emergency_phone",
    ] {
        assert_eq!(
            m1[f],
            Value::Null,
            "staff {f} is not shown to parents: {m1}"
        );
    }

    // The school publishes its staff's mobile numbers.
    let (code, out) = env.cli(&[
        "school",
        "configure",
        "--brin",
        "12AB",
        "--system",
        "parnassys",
        "--environment-id",
        P,
        "--staff-phones",
        "mobile",
    ]);
    assert_eq!(code, 0, "{out}");
    let (_, shown) = env.cli(&["school", "show", "--brin", "12AB"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["staff_phones"], json!(["mobile"]));
    env.publish(&[staff(2)]).await;
    env.wait_handled(3).await;
    let m1 = env.show("12AB", "staff", "M1").unwrap();
    assert_eq!(m1["mobile"], "06-12345678", "published");
    assert_eq!(m1["phone"], Value::Null, "not published");
    assert_eq!(m1["street"], Value::Null);
}

/// Issue #18, the right to erasure (seed 004): `las-worker profile erase`
/// purges one profile now, with its copies, after a confirmation; the journal
/// keeps that it happened without the data; the LAS brings the profile back
/// only with a newer record, and `explain` says what happened.
#[tokio::test(flavor = "multi_thread")]
async fn r12_a_profile_is_erased_on_request_and_returns_only_with_a_newer_record() {
    let env = TestEnv::start_with(&[("EVENTS_PUBLISH", "false")]).await;
    env.link(parnassys_link("12AB", P)).await;
    let kind = |v: u64| {
        change(
            "12AB",
            parnassys(P),
            v,
            json!({"type": "student.upserted", "las_key": "S1", "first_name": "Wis", "last_name": "Mij", "birth_date": "2018-05-05", "group_keys": ["G3"]}),
        )
    };
    env.publish(&[
        kind(2),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "email": "ouder@example.org", "student_keys": ["S1"]})),
    ])
    .await;
    env.wait_handled(3).await;
    sqlx::query("UPDATE profiles SET allergies = 'pinda' WHERE las_key = 'S1'")
        .execute(&env.db)
        .await
        .unwrap();
    suggestion_emails_naming(&env, "G1", "Wis Mij", &["pending"]).await;

    let args = [
        "profile",
        "erase",
        "--brin",
        "12AB",
        "--kind",
        "student",
        "--las-key",
        "S1",
    ];
    let (code, out) = env.cli(&args);
    assert_eq!(code, 1, "not confirmed (no terminal, no --yes): {out}");
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        "Wis",
        "nothing erased"
    );
    let (code, out) = env.cli(&[&args[..], &["--yes"]].concat());
    assert_eq!(code, 0, "{out}");

    let s1 = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(s1["status"], "deactivated");
    for f in ["first_name", "last_name", "birth_date"] {
        assert_eq!(s1[f], Value::Null, "{f} erased: {s1}");
    }
    assert_eq!(s1["groups"], json!([]), "out of its groups");
    let allergies: Option<String> =
        sqlx::query_scalar("SELECT allergies FROM profiles WHERE las_key = 'S1'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(allergies, None);
    let mail: (String, String) = sqlx::query_as("SELECT body_text, status FROM email_outbox")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(!mail.0.contains("Wis"), "{mail:?}");
    assert_eq!(mail.1, "cancelled");
    let events: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT payload ->> 'event_type', payload ->> 'reason' FROM event_outbox_events
         WHERE payload ->> 'las_key' = 'S1' ORDER BY outbox_id, position",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(
        events.last(),
        Some(&("profile.deactivated".to_owned(), Some("erased".to_owned()))),
        "other services learn that it is gone: {events:?}"
    );

    // The LAS still sends the child: the same record changes nothing, a
    // newer one brings it back.
    env.publish(&[kind(2)]).await;
    let counts = env.wait_handled(4).await;
    assert_eq!(counts.get("stale"), Some(&1), "{counts:?}");
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        Value::Null
    );
    env.publish(&[kind(3)]).await;
    env.wait_handled(5).await;
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        "Wis"
    );
    let (code, explained) = env.cli(&[
        "explain",
        "--brin",
        "12AB",
        "--kind",
        "student",
        "--las-key",
        "S1",
    ]);
    assert_eq!(code, 0, "{explained}");
    assert!(explained.contains("erased on request"), "{explained}");
    assert!(
        !explained.contains("Wis"),
        "no values in the journal: {explained}"
    );
    let erased = explained.find("erased on request").unwrap();
    let back = explained.rfind("R1").unwrap();
    assert!(
        back > erased,
        "the return comes after the erasure: {explained}"
    );
}

/// Issue #18: retention terms per category, from the schools' own statements.
/// Seed 003 keeps the pupil file two years after a child leaves (the default
/// term of pupils and guardians, 730 days) and absence data five years (in
/// the LAS); seed 000 deletes absence reports and leave requests at the
/// rollover (the default), a school may keep them up to five school years.
#[tokio::test(flavor = "multi_thread")]
async fn r12_retention_terms_per_category_staff_pupils_and_year_bound_records() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
                    "environment_id": P, "staff_retention_days": 10, "year_records_kept_years": 1}))
        .await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "34CD", "system": "parnassys",
                    "environment_id": "other"}))
        .await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Kind", "birth_date": "2018-01-01"})),
        change("12AB", parnassys(P), 1, json!({"type": "staff.upserted", "las_key": "T1", "first_name": "Juf", "email": "juf@school.example"})),
        change("12AB", parnassys(P), 2, json!({"type": "student.removed", "las_key": "S1"})),
        change("12AB", parnassys(P), 2, json!({"type": "staff.removed", "las_key": "T1"})),
    ])
    .await;
    env.wait_handled(6).await;
    sqlx::query("UPDATE profiles SET deactivated_at = '2026-10-01T12:00:00Z'")
        .execute(&env.db)
        .await
        .unwrap();
    // 60 days later: past the staff term (10 days), within the pupils' (730).
    let (code, out) = env.cli(&["tick", "--date", "2026-11-30"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"purged\":1"), "{out}");
    assert_eq!(
        env.show("12AB", "staff", "T1").unwrap()["first_name"],
        Value::Null
    );
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        "Kind",
        "the pupil file's two years"
    );
    // Two years and a day after leaving, the pupil's data goes too.
    let (code, out) = env.cli(&["tick", "--date", "2028-10-02"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"purged\":1"), "{out}");
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        Value::Null
    );

    // Year-bound records: 12AB keeps one more school year, 34CD the default.
    for brin in ["12AB", "34CD"] {
        sqlx::query(
            "INSERT INTO absence_reports (school_id, student_key, school_year)
             SELECT id, 'S1', y FROM schools, unnest(ARRAY['2024-2025', '2025-2026', '2026-2027']) y WHERE brin = $1",
        )
        .bind(brin)
        .execute(&env.db)
        .await
        .unwrap();
    }
    env.publish(&[
        change(
            "12AB",
            parnassys(P),
            1,
            json!({"type": "school_year.rolled_over", "school_year": "2027-2028"}),
        ),
        change(
            "34CD",
            parnassys("other"),
            1,
            json!({"type": "school_year.rolled_over", "school_year": "2027-2028"}),
        ),
    ])
    .await;
    env.wait_handled(8).await;
    let years = |brin: &'static str| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT a.school_year FROM absence_reports a JOIN schools s ON s.id = a.school_id WHERE s.brin = $1 ORDER BY 1",
            )
            .bind(brin)
            .fetch_all(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        years("12AB").await,
        vec!["2026-2027".to_owned()],
        "one school year kept"
    );
    assert!(
        years("34CD").await.is_empty(),
        "seed 000: deleted at the rollover"
    );

    // More than five years is refused with a reason.
    env.publish(&[json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
                         "environment_id": P, "year_records_kept_years": 6})])
        .await;
    let letters = env.wait_dead_letters(1).await;
    assert_eq!(letters[0].0["x-las-reason-code"], "validation_failed");
    assert!(
        letters[0].0["x-las-reason"].contains("at most 5"),
        "{:?}",
        letters[0].0
    );
}

/// Issue #18: a child held back (R9) and its guardian are stored but never
/// shown. When the LAS removes the child, nothing of either is kept for the
/// retention term: nobody saw them, nobody needs them.
#[tokio::test(flavor = "multi_thread")]
async fn r12_a_held_child_and_its_guardian_removed_by_the_las_are_purged_at_once() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.bind_events_queue().await;
    env.link(parnassys_link("12AB", P)).await;
    let born = (chrono::Utc::now().date_naive() - chrono::Months::new(24)).to_string();
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Pim", "last_name": "Kok", "birth_date": born, "street": "Dorpsstraat 1"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "O1", "first_name": "Sanne", "last_name": "Kok", "email": "sanne@kok.example", "student_keys": ["S1"]})),
    ])
    .await;
    env.wait_handled(3).await;
    assert_eq!(env.show("12AB", "student", "S1").unwrap()["status"], "held");
    assert_eq!(
        env.show("12AB", "guardian", "O1").unwrap()["status"],
        "held"
    );

    env.publish(&[change(
        "12AB",
        parnassys(P),
        2,
        json!({"type": "student.removed", "las_key": "S1"}),
    )])
    .await;
    env.wait_handled(4).await;
    let child = env.show("12AB", "student", "S1").unwrap();
    let parent = env.show("12AB", "guardian", "O1").unwrap();
    assert_eq!(child["status"], "deactivated");
    assert_eq!(parent["status"], "deactivated");
    for (who, p) in [("child", &child), ("guardian", &parent)] {
        for f in ["first_name", "last_name", "birth_date", "street", "email"] {
            assert_eq!(
                p[f],
                Value::Null,
                "{who}: {f} purged at once, not after 730 days"
            );
        }
    }
    let marked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM profiles WHERE purged_at IS NOT NULL")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(
        marked, 2,
        "both carry the purge mark: an older upsert cannot bring them back"
    );
    // A late, older upsert of the child changes nothing.
    env.publish(&[change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Pim", "birth_date": born}))]).await;
    env.wait_handled(5).await;
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        Value::Null
    );
    // Never shown, never announced.
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let events = env.take_events().await;
    assert!(
        !events
            .iter()
            .any(|e| e["las_key"] == "S1" || e["las_key"] == "O1"),
        "{events:?}"
    );
}

/// Issue #18: the right to erasure (seed 004) as a portal message, the same
/// as `las-worker profile erase`: purged now with its copies, out of its
/// groups, the journal says so without data; an unknown profile is refused.
#[tokio::test(flavor = "multi_thread")]
async fn r12_an_erasure_request_from_the_portal_purges_the_profile_now() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Wis", "last_name": "Mij", "birth_date": "2018-05-05"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "email": "ouder@example.org", "student_keys": ["S1"]})),
    ])
    .await;
    env.wait_handled(3).await;
    suggestion_emails_naming(&env, "G1", "Wis Mij", &["pending"]).await;
    let erase = |key: &str| json!({"schema": "portal.erasure.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "entity_kind": "student", "las_key": key});
    let request = erase("S1");
    env.publish(&[request.clone(), request, erase("S404")])
        .await;
    env.wait_handled(6).await;
    let counts = env.message_counts().await;
    assert_eq!(
        counts.get("duplicate"),
        Some(&1),
        "a redelivered request changes nothing: {counts:?}"
    );
    let s1 = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(s1["status"], "deactivated");
    for f in ["first_name", "last_name", "birth_date"] {
        assert_eq!(s1[f], Value::Null, "{f} erased: {s1}");
    }
    let mail: String = sqlx::query_scalar("SELECT body_text FROM email_outbox")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(!mail.contains("Wis"), "the e-mail naming the child: {mail}");
    let (code, out) = env.cli(&[
        "explain",
        "--brin",
        "12AB",
        "--kind",
        "student",
        "--las-key",
        "S1",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("erased on request"), "{out}");
    assert!(!out.contains("Wis"), "{out}");
    let letters = env.wait_dead_letters(1).await;
    assert_eq!(letters[0].0["x-las-reason-code"], "validation_failed");
    assert!(
        letters[0].0["x-las-reason"].contains("no student with LAS key S404"),
        "{:?}",
        letters[0].0
    );
}

/// Issue #18, the privacy scan: after a full scenario (a family with a
/// suggestion e-mail, a held child, a LAS record that waited for a coupling
/// decision) whose persons are then removed and purged, *every* table, every
/// queue, every log line and every metric of the test is searched for their
/// names, addresses, phones, e-mails and birth dates. Any hit fails.
#[tokio::test(flavor = "multi_thread")]
async fn r12_after_the_purge_no_personal_data_rests_in_any_table_queue_log_or_metric() {
    use lapin::options::BasicGetOptions;
    let env = TestEnv::start().await;
    env.bind_events_queue().await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
                    "environment_id": P, "retention_days": 30, "staff_retention_days": 30}))
        .await;
    env.add_user(
        "12AB",
        "Koppelbeheerder",
        "beheer@school.example",
        "link_admin",
        false,
    )
    .await;
    // Two portal accounts share an e-mail: the LAS record O3 with that
    // e-mail waits for the school (R13).
    for first in ["Eerste", "Tweede"] {
        sqlx::query(
            "INSERT INTO profiles (school_id, kind, las_key, status, first_name, email)
             SELECT id, 'guardian', NULL, 'active', $1, 'gedeeld@portaal.example' FROM schools WHERE brin = '12AB'",
        )
        .bind(first)
        .execute(&env.db)
        .await
        .unwrap();
    }
    let toddler = (chrono::Utc::now().date_naive() - chrono::Months::new(20)).to_string();
    let secrets: Vec<String> = [
        "Fabiola",
        "Zonnebloemhoeve",
        "Kraanvogelkade 31",
        "8877 QX",
        "Snippendorp",
        "0699887766",
        "0311223344",
        "0655443322",
        "fabiola.z@voorbeeld.example",
        "2017-09-21",
        "Reigerpad 12",
        "Pluisje",
        "Wilgenhofstra",
        "Tamarindelaan 9",
        "Juf Korenbloem",
        "korenbloem@prive.example",
        &toddler,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "K1", "first_name": "Fabiola", "last_name": "Zonnebloemhoeve",
            "birth_date": "2017-09-21", "street": "Kraanvogelkade 31", "postcode": "8877 QX", "city": "Snippendorp"})),
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "K2", "first_name": "Pluisje", "last_name": "Zonnebloemhoeve",
            "birth_date": toddler, "street": "Kraanvogelkade 31"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "O1", "first_name": "Fabiola", "last_name": "Zonnebloemhoeve",
            "street": "Kraanvogelkade 31", "postcode": "8877 QX", "city": "Snippendorp", "phone": "0311223344", "mobile": "0699887766",
            "email": "fabiola.z@voorbeeld.example", "student_keys": ["K1", "K2"]})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "O3", "first_name": "Wilgenhofstra", "street": "Tamarindelaan 9",
            "email": "gedeeld@portaal.example"})),
        change("12AB", parnassys(P), 1, json!({"type": "staff.upserted", "las_key": "T1", "first_name": "Juf Korenbloem", "email": "korenbloem@prive.example",
            "mobile": "0655443322"})),
    ])
    .await;
    env.wait_handled(6).await;
    env.publish(&[json!({"schema": "portal.parent_edit.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "guardian_las_key": "O1",
        "edited_at": "2026-11-22T10:00:00Z", "changes": [{"field": "street", "proposed": "Reigerpad 12"}, {"field": "phone", "proposed": "0655443322"}]})])
    .await;
    env.wait_handled(7).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.mails().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the suggestion e-mail was not sent"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Everyone leaves; a month and more later the daily job purges.
    env.publish(&[
        change(
            "12AB",
            parnassys(P),
            2,
            json!({"type": "student.removed", "las_key": "K1"}),
        ),
        change(
            "12AB",
            parnassys(P),
            2,
            json!({"type": "student.removed", "las_key": "K2"}),
        ),
        change(
            "12AB",
            parnassys(P),
            2,
            json!({"type": "guardian.removed", "las_key": "O1"}),
        ),
        change(
            "12AB",
            parnassys(P),
            2,
            json!({"type": "guardian.removed", "las_key": "O3"}),
        ),
        change(
            "12AB",
            parnassys(P),
            2,
            json!({"type": "staff.removed", "las_key": "T1"}),
        ),
    ])
    .await;
    env.wait_handled(12).await;
    sqlx::query("UPDATE profiles SET deactivated_at = now() - interval '40 days' WHERE status = 'deactivated'")
        .execute(&env.db)
        .await
        .unwrap();
    let (code, out) = env.cli(&["tick"]);
    assert_eq!(code, 0, "{out}");
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;

    // Every table.
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations' ORDER BY 1",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert!(tables.len() > 15, "{tables:?}");
    let mut found = Vec::new();
    for t in &tables {
        let rows: Vec<String> =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT x::text FROM {t} x")))
                .fetch_all(&env.db)
                .await
                .unwrap();
        for r in rows {
            for s in &secrets {
                if r.contains(s.as_str()) {
                    found.push(format!("table {t}: {s:?} in {r}"));
                }
            }
        }
    }
    // Every queue of the test's vhost (read, not removed from the broker's
    // view of the test: it ends here).
    let conn = lapin::Connection::connect(&env.amqp_url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queues = env.queue_depths();
    assert!(queues.contains_key("test-events"), "{queues:?}");
    for q in queues.keys() {
        while let Some(m) = ch
            .basic_get(q.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            let body = String::from_utf8_lossy(&m.delivery.data).into_owned();
            let headers = format!("{:?}", m.delivery.properties.headers());
            for s in &secrets {
                if body.contains(s.as_str()) || headers.contains(s.as_str()) {
                    found.push(format!("queue {q}: {s:?}"));
                }
            }
        }
    }
    // Every log line and every metric.
    let log = env.log();
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    for s in &secrets {
        if log.contains(s.as_str()) {
            found.push(format!("log: {s:?}"));
        }
        if metrics.contains(s.as_str()) {
            found.push(format!("metrics: {s:?}"));
        }
    }
    assert!(
        found.is_empty(),
        "personal data rests after the purge:\n{}",
        found.join("\n")
    );
    // The scan looked at real data: the purged rows are there, without values.
    let purged: i64 =
        sqlx::query_scalar("SELECT count(*) FROM profiles WHERE purged_at IS NOT NULL")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(
        purged, 5,
        "K1, K2 (at once: never shown), O1, T1, and the removal's row of O3, which only ever waited"
    );
}

/// Issue #18: a suggestion e-mail names the guardian's children. When the LAS
/// first drops the link to a child and the child's term ends later, the
/// e-mail that named it is cleared all the same.
#[tokio::test(flavor = "multi_thread")]
async fn r12_an_email_naming_a_child_is_purged_even_after_the_guardian_link_was_dropped() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
                    "environment_id": P, "retention_days": 30}))
        .await;
    env.add_user(
        "12AB",
        "Koppelbeheerder",
        "beheer@school.example",
        "link_admin",
        false,
    )
    .await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Hyacintha", "last_name": "Berk", "birth_date": "2018-02-02"})),
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S2", "first_name": "Bram", "last_name": "Berk", "birth_date": "2019-03-03"})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "last_name": "Berk", "phone": "0301112233", "student_keys": ["S1", "S2"]})),
    ])
    .await;
    env.wait_handled(4).await;
    env.publish(&[json!({"schema": "portal.parent_edit.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "guardian_las_key": "G1",
        "edited_at": "2026-11-22T10:00:00Z", "changes": [{"field": "phone", "proposed": "0309998877"}]})])
    .await;
    env.wait_handled(5).await;
    let body: String = sqlx::query_scalar("SELECT body_text FROM email_outbox")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert!(
        body.contains("Hyacintha"),
        "the e-mail names the child: {body}"
    );
    // The LAS drops the link to S1, then removes S1; its term passes.
    env.publish(&[
        change("12AB", parnassys(P), 2, json!({"type": "guardian.upserted", "las_key": "G1", "first_name": "Ouder", "last_name": "Berk", "phone": "0301112233", "student_keys": ["S2"]})),
        change("12AB", parnassys(P), 2, json!({"type": "student.removed", "las_key": "S1"})),
    ])
    .await;
    env.wait_handled(7).await;
    sqlx::query(
        "UPDATE profiles SET deactivated_at = now() - interval '40 days' WHERE las_key = 'S1'",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let (code, out) = env.cli(&["tick"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"purged\":1"), "{out}");
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT subject, body_text FROM email_outbox")
        .fetch_all(&env.db)
        .await
        .unwrap();
    for (subject, body) in &rows {
        assert!(
            !subject.contains("Hyacintha") && !body.contains("Hyacintha"),
            "{subject} {body}"
        );
    }
}

/// RULES.md R12, issue #18: records the portal does not show are purged when
/// removed (above) *or past the retention term*: a held child (and its
/// guardian of only held children) the LAS left untouched for the school's
/// term is deactivated and purged by the daily job; the LAS's next record of
/// the child brings it back.
#[tokio::test(flavor = "multi_thread")]
async fn r12_a_held_child_untouched_past_the_term_is_purged_and_returns_with_a_newer_record() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(parnassys_link("12AB", P)).await;
    let born = (chrono::Utc::now().date_naive() - chrono::Months::new(12)).to_string();
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Guus", "birth_date": born})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "O1", "first_name": "Ouder", "email": "o@x.example", "student_keys": ["S1"]})),
    ])
    .await;
    env.wait_handled(3).await;
    assert_eq!(env.show("12AB", "student", "S1").unwrap()["status"], "held");
    // Within the term (730 days): kept, R9 needs it when the window opens.
    sqlx::query("UPDATE profiles SET updated_at = now() - interval '700 days'")
        .execute(&env.db)
        .await
        .unwrap();
    let (code, out) = env.cli(&["tick"]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(
        env.show("12AB", "student", "S1").unwrap()["first_name"],
        "Guus"
    );
    // Past the term without a LAS record: purged.
    sqlx::query("UPDATE profiles SET updated_at = now() - interval '740 days'")
        .execute(&env.db)
        .await
        .unwrap();
    let (code, out) = env.cli(&["tick"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"purged\":2"), "{out}");
    for (kind, key) in [("student", "S1"), ("guardian", "O1")] {
        let p = env.show("12AB", kind, key).unwrap();
        assert_eq!(p["status"], "deactivated", "{p}");
        assert_eq!(p["deactivation_reason"], "held_past_term");
        assert_eq!(p["first_name"], Value::Null, "{p}");
    }
    // The LAS sends the child again: it comes back (held, it is still young).
    env.publish(&[change("12AB", parnassys(P), 2, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Guus", "birth_date": born}))]).await;
    env.wait_handled(4).await;
    let s1 = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(
        (s1["status"].as_str(), s1["first_name"].as_str()),
        (Some("held"), Some("Guus")),
        "{s1}"
    );
}
