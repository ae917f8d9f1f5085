//! End-to-end for R7 (groups), R8 (staff) and R9 (children under 4 and the
//! intake group). Dates are pinned with LAS_TODAY and `tick --date`; no test
//! depends on the real clock.

#![allow(clippy::unwrap_used)]

use las_e2e::*;
use serde_json::{Value, json};

const P: &str = "parnassys-12AB-prod";

fn group_keys(v: &Value) -> Vec<String> {
    v["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["las_key"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn r9_example_school_with_intake_then_ticks_promote() {
    // Bram (L1008) turns 4 on 2027-01-15; with 8 weeks ahead his window opens on 2026-11-20.
    let env = TestEnv::start_with(&[("LAS_TODAY", "2026-11-01"), ("DAILY_JOB", "false")]).await;
    let mut link = TestEnv::example("link.parnassys.json");
    link["intake_weeks_ahead"] = json!(8);
    env.link(link).await;
    let n = env.publish_example("school-12AB.ndjson").await;
    env.wait_handled(1 + n as u64).await;

    let bram = env.show("12AB", "student", "L1008").unwrap();
    assert_eq!(bram["status"], "held", "R9: too young, window not open yet");
    assert_eq!(bram["groups"], json!([]));
    assert_eq!(
        env.show("12AB", "guardian", "O2008").unwrap()["status"],
        "held",
        "R9: guardian held back with the child"
    );
    let older = env.show("12AB", "student", "L1001").unwrap();
    assert_eq!(older["status"], "active");
    assert!(!group_keys(&older).is_empty());

    let (code, out) = env.cli(&["tick", "--date", "2026-11-19"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"still_held\":1"), "{out}");
    assert_eq!(
        env.show("12AB", "student", "L1008").unwrap()["status"],
        "held",
        "the day before the window"
    );

    let (_, out) = env.cli(&["tick", "--date", "2026-11-20"]);
    assert!(out.contains("\"placed_in_intake\":1"), "{out}");
    let bram = env.show("12AB", "student", "L1008").unwrap();
    assert_eq!(bram["status"], "active");
    assert_eq!(
        bram["groups"],
        json!([{"las_key": "@intake", "name": "Instroomgroep"}]),
        "R9: in the intake group, not the LAS group"
    );
    assert_eq!(
        env.show("12AB", "guardian", "O2008").unwrap()["status"],
        "active",
        "guardian imported with the child"
    );
    assert!(
        bram["guardians"]
            .as_array()
            .unwrap()
            .contains(&json!({"las_key": "O2008", "status": "active"})),
        "{}",
        bram["guardians"]
    );

    let (_, out) = env.cli(&["tick", "--date", "2027-01-15"]);
    assert!(out.contains("\"promoted\":1"), "{out}");
    let bram = env.show("12AB", "student", "L1008").unwrap();
    assert_eq!(
        group_keys(&bram),
        ["G12"],
        "R9: on the 4th birthday into the LAS group"
    );
    let (_, out) = env.cli(&["tick", "--date", "2027-01-15"]);
    assert!(
        out.contains("\"promoted\":0"),
        "a second tick changes nothing: {out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r9_without_the_setting_a_child_under_4_is_not_imported_and_a_birthday_without_group_stays_in_intake()
 {
    let env = TestEnv::start_with(&[("LAS_TODAY", "2026-11-22"), ("DAILY_JOB", "false")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
        "environment_id": P, "intake_weeks_ahead": 4})).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "K1", "birth_date": "2022-12-01", "group_keys": []})),
        change("12AB", parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": "O1", "first_name": "Ouder", "student_keys": ["K1"]})),
    ])
    .await;
    env.wait_handled(3).await;
    let k1 = env.show("12AB", "student", "K1").unwrap();
    assert_eq!(
        k1["groups"],
        json!([{"las_key": "@intake", "name": "Instroomgroep"}])
    );
    // Birthday passes, the LAS has no group yet: stays in intake.
    let (_, out) = env.cli(&["tick", "--date", "2026-12-01"]);
    assert!(out.contains("\"stays_in_intake\":1"), "{out}");
    assert_eq!(
        group_keys(&env.show("12AB", "student", "K1").unwrap()),
        ["@intake"]
    );
    // The LAS assigns a group: the next import moves the child.
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "group.upserted", "las_key": "G12", "name": "Groep 1/2", "kind": "year"})),
        change("12AB", parnassys(P), 2, json!({"type": "student.upserted", "las_key": "K1", "birth_date": "2022-12-01", "group_keys": ["G12"]})),
    ])
    .await;
    env.wait_handled(5).await;
    // The worker's own date is still pinned before the birthday: in intake until the birthday.
    assert_eq!(
        group_keys(&env.show("12AB", "student", "K1").unwrap()),
        ["@intake"]
    );
    let (_, out) = env.cli(&["tick", "--date", "2026-12-02"]);
    assert!(out.contains("\"promoted\":1"), "{out}");
    assert_eq!(
        group_keys(&env.show("12AB", "student", "K1").unwrap()),
        ["G12"]
    );

    // A school without the setting: a child under 4 and its only guardian are not imported.
    env.link(parnassys_link("34CD", "p-34")).await;
    env.publish(&[
        change(
            "34CD",
            parnassys("p-34"),
            1,
            json!({"type": "student.upserted", "las_key": "K2", "birth_date": "2024-05-05"}),
        ),
        change(
            "34CD",
            parnassys("p-34"),
            1,
            json!({"type": "guardian.upserted", "las_key": "O2", "student_keys": ["K2"]}),
        ),
    ])
    .await;
    env.wait_handled(8).await;
    assert_eq!(env.show("34CD", "student", "K2").unwrap()["status"], "held");
    assert_eq!(
        env.show("34CD", "guardian", "O2").unwrap()["status"],
        "held"
    );
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert!(
        metrics.contains("las_intake_events_total{event=\"held_back\"}"),
        "intake metrics exported:\n{metrics}"
    );
    assert!(metrics.contains("las_intake_events_total{event=\"placed_in_intake\"} 1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn r7_classes_subclasses_and_group_moves() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(parnassys_link("12AB", P)).await;
    let g = |key: &str, name: &str, kind: &str, extra: Value| {
        let mut c = json!({"type": "group.upserted", "las_key": key, "name": name, "kind": kind});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        change("12AB", parnassys(P), 1, c)
    };
    env.publish(&[
        g("G3", "Groep 3", "year", json!({})),
        g("G4", "Groep 4", "year", json!({})),
        g("C34", "Combi 3/4", "class", json!({"year_group_keys": ["G3", "G4"]})),
        g("C3", "Klas 3a", "class", json!({"year_group_keys": ["G3"]})),
        g("SUB", "Plusklas", "subclass", json!({"student_keys": ["S1"]})),
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "birth_date": "2018-01-01", "group_keys": ["G3", "C3"]})),
    ])
    .await;
    env.wait_handled(7).await;
    let rows: Vec<(String, String, String, bool, Option<String>)> =
        sqlx::query_as("SELECT las_key, group_type, status, parents_see_other_groups, maps_to_key FROM portal_groups ORDER BY las_key").fetch_all(&env.db).await.unwrap();
    let find = |k: &str| rows.iter().find(|r| r.0 == k).unwrap().clone();
    assert_eq!(
        find("C34").1,
        "composite",
        "class of two year groups is a composite group"
    );
    assert!(
        !find("C34").3,
        "a new composite group starts with parents-see-other-groups off"
    );
    assert_eq!(
        find("C3").1,
        "alias",
        "class of one year group maps to the year group"
    );
    assert_eq!(find("C3").4.as_deref(), Some("G3"));
    assert_eq!(
        find("SUB").1,
        "composite",
        "subclass is a composite group of students"
    );
    assert_eq!(find("G3").1, "year");
    let s1 = env.show("12AB", "student", "S1").unwrap();
    assert_eq!(
        group_keys(&s1),
        ["G3", "SUB"],
        "the class of one shows as its year group; the subclass lists the student"
    );

    // The school turns visibility on; a later import never turns it back off.
    sqlx::query("UPDATE portal_groups SET parents_see_other_groups = true WHERE las_key = 'C34'")
        .execute(&env.db)
        .await
        .unwrap();
    // The student moves from group 3 to group 4 in one message.
    env.publish(&[
        change("12AB", parnassys(P), 2, json!({"type": "group.upserted", "las_key": "C34", "name": "Combi 3/4", "kind": "class", "year_group_keys": ["G3", "G4"]})),
        change("12AB", parnassys(P), 2, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Piet", "birth_date": "2018-01-01", "group_keys": ["G4"]})),
        change("12AB", parnassys(P), 2, json!({"type": "group.removed", "las_key": "SUB"})),
    ])
    .await;
    env.wait_handled(10).await;
    let visible: bool = sqlx::query_scalar(
        "SELECT parents_see_other_groups FROM portal_groups WHERE las_key = 'C34'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert!(visible, "R7: the worker never turns visibility back off");
    assert_eq!(
        group_keys(&env.show("12AB", "student", "S1").unwrap()),
        ["G4"],
        "left 3, joined 4, subclass removed"
    );
    let groups: i64 = sqlx::query_scalar("SELECT count(*) FROM portal_groups")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(groups, 5, "R7: a removed group is never deleted");
    let (_, out) = env.cli(&["groups", "leftovers", "--brin", "12AB"]);
    assert!(
        out.contains("\"las_key\":\"SUB\"") && out.contains("removed_in_las"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r7_esis_school_with_and_without_composite_groups() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    let mut link = TestEnv::example("link.esis.json");
    env.link(link.clone()).await;
    let n = env.publish_example("school-34CD.ndjson").await;
    env.wait_handled(1 + n as u64).await;
    let e = env.show("34CD", "student", "E-4101").unwrap();
    assert_eq!(e["status"], "active");
    assert_eq!(e["groups"].as_array().unwrap().len(), 1);
    let label = las_contracts::ESIS_PORTAL_LABEL;
    let env_id = link["environment_id"].as_str().unwrap().to_owned();
    let combi = |v: u64| {
        change(
            "34CD",
            esis(&env_id, label),
            v,
            json!({"type": "group.upserted", "las_key": "COMBI", "name": "Combinatie 5/6", "kind": "group", "year_group_keys": ["GRP-5", "GRP-6"]}),
        )
    };
    env.publish(&[combi(1)]).await;
    env.wait_handled(2 + n as u64).await;
    let st: String = sqlx::query_scalar("SELECT status FROM portal_groups WHERE las_key = 'COMBI'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(st, "skipped", "no ESIS composite group without the setting");
    link["message_id"] = json!(uuid::Uuid::new_v4());
    link["esis_composite_groups"] = json!(true);
    env.publish(&[link]).await;
    env.publish(&[combi(2)]).await;
    env.wait_handled(4 + n as u64).await;
    let (st, ty): (String, String) =
        sqlx::query_as("SELECT status, group_type FROM portal_groups WHERE las_key = 'COMBI'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!((st.as_str(), ty.as_str()), ("active", "composite"));
    // A ParnasSys kind from an ESIS school is refused, not guessed.
    env.publish(&[change(
        "34CD",
        esis(&env_id, label),
        1,
        json!({"type": "group.upserted", "las_key": "X", "name": "X", "kind": "class"}),
    )])
    .await;
    let dl = env.wait_dead_letters(1).await;
    assert_eq!(dl[0].0["x-las-reason-code"], "validation_failed");
}

#[tokio::test(flavor = "multi_thread")]
async fn r7_first_run_maps_existing_groups_and_r8_staff_settings() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
        "environment_id": P, "default_staff_role": "Groepsleerkracht", "link_staff_to_groups": false})).await;
    // Groups the school made in the portal before linking, one with a news item.
    let school: i64 = sqlx::query_scalar("SELECT id FROM schools WHERE brin = '12AB'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    let old3: i64 = sqlx::query_scalar(
        "INSERT INTO portal_groups (school_id, name) VALUES ($1, 'groep drie') RETURNING id",
    )
    .bind(school)
    .fetch_one(&env.db)
    .await
    .unwrap();
    let other: i64 = sqlx::query_scalar(
        "INSERT INTO portal_groups (school_id, name) VALUES ($1, 'Oude groep') RETURNING id",
    )
    .bind(school)
    .fetch_one(&env.db)
    .await
    .unwrap();
    sqlx::query("INSERT INTO group_items (school_id, group_id, item_type, title) VALUES ($1, $2, 'news', 'Welkom')").bind(school).bind(old3).execute(&env.db).await.unwrap();
    // A mapping to a group that does not exist is refused with a reason.
    env.publish(&[json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
        "environment_id": P, "group_mapping": [{"las_group_key": "G3", "portal_group_id": 999999}]})]).await;
    let dl = env.wait_dead_letters(1).await;
    assert!(dl[0].0["x-las-reason"].contains("999999"));
    env.publish(&[json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
        "environment_id": P, "default_staff_role": "Groepsleerkracht", "link_staff_to_groups": false,
        "group_mapping": [{"las_group_key": "G3", "portal_group_id": old3}]})]).await;
    env.publish(&[
        change("12AB", parnassys(P), 1, json!({"type": "group.upserted", "las_key": "G3", "name": "Groep 3", "kind": "year"})),
        change("12AB", parnassys(P), 1, json!({"type": "group.upserted", "las_key": "G4", "name": "Groep 4", "kind": "year"})),
        change("12AB", parnassys(P), 1, json!({"type": "staff.upserted", "las_key": "T1", "first_name": "Juf", "group_keys": ["G3"]})),
    ])
    .await;
    env.wait_handled(6).await;
    let (id, name): (i64, String) =
        sqlx::query_as("SELECT id, name FROM portal_groups WHERE las_key = 'G3'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(
        id, old3,
        "R7: the mapped portal group is used, not a new one"
    );
    assert_eq!(name, "Groep 3", "R7: renamed to the LAS name");
    let items: i64 = sqlx::query_scalar("SELECT count(*) FROM group_items WHERE group_id = $1")
        .bind(old3)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(items, 1, "R7: it keeps its group-bound items");
    let first_run: bool =
        sqlx::query_scalar("SELECT first_run_at IS NOT NULL FROM schools WHERE id = $1")
            .bind(school)
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert!(first_run, "the first run is recorded");
    let (_, out) = env.cli(&["groups", "leftovers", "--brin", "12AB"]);
    assert!(
        out.contains(&format!("\"portal_group_id\":{other}"))
            && out.contains("unmapped_at_first_run"),
        "{out}"
    );
    assert!(
        !out.contains(&format!("\"portal_group_id\":{old3},")),
        "{out}"
    );
    let t1 = env.show("12AB", "staff", "T1").unwrap();
    assert_eq!(
        t1["role"], "Groepsleerkracht",
        "R8: the school's default role"
    );
    assert_eq!(
        t1["groups"],
        json!([]),
        "R8: link_staff_to_groups off: new staff not put in groups"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn r9_daily_job_imports_a_waiting_child_without_a_message_once_per_day() {
    let mut env = TestEnv::start_with(&[("LAS_TODAY", "2026-11-01")]).await;
    env.link(json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
        "environment_id": P, "intake_weeks_ahead": 8})).await;
    env.publish(&[change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "K1", "birth_date": "2023-01-15", "group_keys": ["G12"]}))]).await;
    env.wait_handled(2).await;
    assert_eq!(env.show("12AB", "student", "K1").unwrap()["status"], "held");
    // The next "day" (a restart with a later date): the job at start-up imports the child.
    env.stop_worker();
    env.extra_env_set("LAS_TODAY", "2026-11-20");
    env.spawn_worker().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while env.show("12AB", "student", "K1").unwrap()["status"] != "active" {
        assert!(
            std::time::Instant::now() < deadline,
            "the daily job did not import the child; log:\n{}",
            env.log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        group_keys(&env.show("12AB", "student", "K1").unwrap()),
        ["@intake"]
    );
    // Another start on the same day (a second replica, a restart) does not run it again.
    env.stop_worker();
    env.spawn_worker().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let (_, metrics) = env.http_get("/metrics").await.unwrap();
        if metrics.contains("las_daily_job_runs_total{outcome=\"skipped\"} 1") {
            assert!(
                metrics.contains("las_daily_job_runs_total{outcome=\"ran\"} 0"),
                "{metrics}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no skipped daily run reported:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
