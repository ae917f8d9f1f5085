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

/// The portal groups (by name) a student is shown in, from the portal's view.
async fn shown_in(env: &TestEnv, brin: &str, student: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT DISTINCT m.group_name FROM portal_group_members m JOIN schools s ON s.id = m.school_id
         WHERE s.brin = $1 AND m.member_kind = 'student' AND m.member_key = $2 ORDER BY 1",
    )
    .bind(brin)
    .bind(student)
    .fetch_all(&env.db)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn r7_first_run_renames_mapped_groups_at_the_mapping_and_keeps_their_items() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    env.link(parnassys_link("12AB", P)).await;
    let school: i64 = sqlx::query_scalar("SELECT id FROM schools WHERE brin = '12AB'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    let portal_group = |name: &'static str, ty: &'static str, visible: bool| {
        let db = env.db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "INSERT INTO portal_groups (school_id, name, group_type, parents_see_other_groups)
                 VALUES ($1, $2, $3, $4) RETURNING id",
            )
            .bind(school)
            .bind(name)
            .bind(ty)
            .bind(visible)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    // Seed 001: the school's own groups before the link: Groep 1A, and
    // Groep 1/2A as a composite group whose parents see the other year groups.
    let g1a = portal_group("Groep 1A", "year", false).await;
    let combi = portal_group("Groep 1/2A", "composite", true).await;
    let old = portal_group("Oude groep", "year", false).await;
    for (g, title) in [(g1a, "Welkom in groep 1"), (combi, "Kleuterfeest")] {
        sqlx::query("INSERT INTO group_items (school_id, group_id, item_type, title) VALUES ($1, $2, 'news', $3)")
            .bind(school).bind(g).bind(title).execute(&env.db).await.unwrap();
    }
    // The LAS groups arrive before the school maps them.
    let g = |key: &str, name: &str, kind: &str, years: &[&str], v: u64| {
        change(
            "12AB",
            parnassys(P),
            v,
            json!({"type": "group.upserted", "las_key": key, "name": name, "kind": kind, "year_group_keys": years}),
        )
    };
    env.publish(&[
        g("G1", "Groep 1", "year", &[], 1),
        g("G2", "Groep 2", "year", &[], 1),
        g("C12", "Kleuters 1/2", "class", &["G1", "G2"], 1),
        change("12AB", parnassys(P), 1, json!({"type": "student.upserted", "las_key": "S1", "first_name": "Sam", "birth_date": "2020-03-01", "group_keys": ["G1", "C12"]})),
    ])
    .await;
    env.wait_handled(5).await;
    let made_for_g1: i64 = sqlx::query_scalar("SELECT id FROM portal_groups WHERE las_key = 'G1'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    // The school already published an album to the group the link made.
    sqlx::query("INSERT INTO group_items (school_id, group_id, item_type, title) VALUES ($1, $2, 'photo_album', 'Eerste schooldag')")
        .bind(school).bind(made_for_g1).execute(&env.db).await.unwrap();

    let first_run = json!({"schema": "portal.link.v1", "message_id": uuid::Uuid::new_v4(), "brin": "12AB", "system": "parnassys",
        "environment_id": P, "group_mapping": [{"las_group_key": "G1", "portal_group_id": g1a}, {"las_group_key": "C12", "portal_group_id": combi}]});
    env.publish(std::slice::from_ref(&first_run)).await;
    env.wait_handled(6).await;

    // (a) Renamed at the mapping, not at the LAS's next version.
    type Row = (
        Option<String>,
        String,
        String,
        Option<String>,
        String,
        bool,
        Vec<String>,
        i64,
    );
    let row = |id: i64| {
        let db = env.db.clone();
        async move {
            sqlx::query_as::<_, Row>(
                "SELECT las_key, name, group_type, las_kind, status, parents_see_other_groups, year_group_keys, version
                 FROM portal_groups WHERE id = $1",
            )
            .bind(id)
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        row(g1a).await,
        (
            Some("G1".into()),
            "Groep 1".into(),
            "year".into(),
            Some("year".into()),
            "active".into(),
            false,
            vec![],
            1
        ),
        "R7/seed 001: the mapped group takes the LAS group's name, kind and shape at the first run"
    );
    let items: Vec<String> =
        sqlx::query_scalar("SELECT title FROM group_items WHERE group_id = $1 ORDER BY title")
            .bind(g1a)
            .fetch_all(&env.db)
            .await
            .unwrap();
    assert_eq!(
        items,
        ["Eerste schooldag", "Welkom in groep 1"],
        "R7: keeps its group-bound items, and gets those of the group the link had made"
    );
    assert_eq!(
        shown_in(&env, "12AB", "S1").await,
        ["Groep 1", "Kleuters 1/2"],
        "the LAS members are in the mapped groups"
    );
    let in_g1a: Vec<i64> = sqlx::query_scalar(
        "SELECT DISTINCT group_id FROM portal_group_members WHERE member_key = 'S1' AND group_key = 'G1'",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(
        in_g1a,
        [g1a],
        "shown in the school's own group, not the one the link made"
    );
    let (_, out) = env.cli(&["groups", "leftovers", "--brin", "12AB"]);
    assert!(
        out.contains(&format!("{{\"portal_group_id\":{made_for_g1},\"name\":\"Groep 1\",\"las_key\":null,\"reason\":\"replaced_at_first_run\",\"group_items\":0}}")),
        "the group the link made steps aside, empty, never deleted: {out}"
    );
    assert!(
        out.contains(&format!("\"portal_group_id\":{old},"))
            && out.contains("unmapped_at_first_run"),
        "{out}"
    );

    // (b) The school's composite group: LAS shape, visibility off at the mapping.
    let c = row(combi).await;
    assert_eq!(
        (
            c.0.as_deref(),
            c.1.as_str(),
            c.2.as_str(),
            c.3.as_deref(),
            c.6.clone()
        ),
        (
            Some("C12"),
            "Kleuters 1/2",
            "composite",
            Some("class"),
            vec!["G1".to_owned(), "G2".to_owned()]
        )
    );
    assert!(
        !c.5,
        "R7: a composite the first run touches starts with parents-see-other-groups off"
    );
    // The school turns it on again; a newer LAS version never turns it off.
    sqlx::query("UPDATE portal_groups SET parents_see_other_groups = true WHERE id = $1")
        .bind(combi)
        .execute(&env.db)
        .await
        .unwrap();
    env.publish(&[g("C12", "Kleuters 1/2 (nieuw)", "class", &["G1", "G2"], 2)])
        .await;
    env.wait_handled(7).await;
    let c = row(combi).await;
    assert_eq!(
        (c.1.as_str(), c.5),
        ("Kleuters 1/2 (nieuw)", true),
        "R7: the worker never turns it back off"
    );

    // (e) The same link again (the portal sends its whole link) is applied;
    // another mapping after the first run is refused with a readable reason.
    let mut again = first_run.clone();
    again["message_id"] = json!(uuid::Uuid::new_v4());
    again["default_staff_role"] = json!("Juf");
    env.publish(&[again]).await;
    env.wait_handled(8).await;
    let role: String = sqlx::query_scalar("SELECT default_staff_role FROM schools WHERE id = $1")
        .bind(school)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(
        role, "Juf",
        "settings change; the first run's mapping repeated is no error"
    );
    let mut other = first_run.clone();
    other["message_id"] = json!(uuid::Uuid::new_v4());
    other["group_mapping"] = json!([{"las_group_key": "G2", "portal_group_id": old}]);
    env.publish(&[other]).await;
    let dl = env.wait_dead_letters(1).await;
    assert_eq!(dl[0].0["x-las-reason-code"], "mapping_refused");
    let reason = &dl[0].0["x-las-reason"];
    assert!(
        reason.contains("BRIN 12AB")
            && reason.contains("first run happens once")
            && reason.contains("G2")
            && reason.contains("(R7)"),
        "{reason}"
    );
    assert_eq!(
        row(old).await.0,
        None,
        "nothing of a refused mapping is applied"
    );
    assert_eq!(row(g1a).await.0.as_deref(), Some("G1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn r7_esis_combination_groups_place_students_in_their_year_groups_and_the_setting_replans() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    let env_id = "esis-34CD";
    env.link(esis_link("34CD", env_id)).await;
    let label = las_contracts::ESIS_PORTAL_LABEL;
    let c = |v: u64, body: Value| change("34CD", esis(env_id, label), v, body);
    env.publish(&[
        c(1, json!({"type": "group.upserted", "las_key": "GRP-5", "name": "Groep 5", "kind": "group"})),
        c(1, json!({"type": "group.upserted", "las_key": "GRP-6", "name": "Groep 6", "kind": "group"})),
        c(1, json!({"type": "group.upserted", "las_key": "COMBI", "name": "Combinatie 5/6", "kind": "group", "year_group_keys": ["GRP-5", "GRP-6"]})),
        // Only in the combination: the LAS does not say which year.
        c(1, json!({"type": "student.upserted", "las_key": "E1", "first_name": "Eva", "birth_date": "2017-02-02", "group_keys": ["COMBI"]})),
        // In the combination and in its year group 6.
        c(1, json!({"type": "student.upserted", "las_key": "E2", "first_name": "Ali", "birth_date": "2016-02-02", "group_keys": ["COMBI", "GRP-6"]})),
    ])
    .await;
    env.wait_handled(6).await;
    // (c) Setting off: never in no group at all.
    assert_eq!(
        shown_in(&env, "34CD", "E1").await,
        ["Groep 5", "Groep 6"],
        "R7: a combination's student is in the year groups it is made of"
    );
    assert_eq!(
        shown_in(&env, "34CD", "E2").await,
        ["Groep 6"],
        "a student the LAS puts in one of them is only there"
    );
    let e1 = env.show("34CD", "student", "E1").unwrap();
    assert_eq!(group_keys(&e1), ["GRP-5", "GRP-6"], "{e1}");

    // (d) The school turns ESIS composite groups on: re-planned at once,
    // without a new group.upserted.
    let mut link = esis_link("34CD", env_id);
    link["esis_composite_groups"] = json!(true);
    env.publish(&[link.clone()]).await;
    env.wait_handled(7).await;
    let combi = || async {
        sqlx::query_as::<_, (String, String, bool)>(
            "SELECT group_type, status, parents_see_other_groups FROM portal_groups WHERE las_key = 'COMBI'",
        )
        .fetch_one(&env.db)
        .await
        .unwrap()
    };
    assert_eq!(
        combi().await,
        ("composite".into(), "active".into(), false),
        "R7: a composite group of the link, parents-see-other-groups off"
    );
    assert_eq!(shown_in(&env, "34CD", "E1").await, ["Combinatie 5/6"]);
    assert_eq!(
        shown_in(&env, "34CD", "E2").await,
        ["Combinatie 5/6", "Groep 6"]
    );
    let (_, out) = env.cli(&[
        "explain",
        "--brin",
        "34CD",
        "--kind",
        "group",
        "--las-key",
        "COMBI",
    ]);
    assert!(
        out.contains("esis_composite_groups"),
        "the re-plan is journaled: {out}"
    );

    // The school opens the composite group; turning the setting off and on
    // again never turns that back off.
    sqlx::query("UPDATE portal_groups SET parents_see_other_groups = true WHERE las_key = 'COMBI'")
        .execute(&env.db)
        .await
        .unwrap();
    link["message_id"] = json!(uuid::Uuid::new_v4());
    link["esis_composite_groups"] = json!(false);
    env.publish(&[link.clone()]).await;
    env.wait_handled(8).await;
    assert_eq!(combi().await.1, "skipped");
    assert_eq!(shown_in(&env, "34CD", "E1").await, ["Groep 5", "Groep 6"]);
    link["message_id"] = json!(uuid::Uuid::new_v4());
    link["esis_composite_groups"] = json!(true);
    env.publish(&[link]).await;
    env.wait_handled(9).await;
    assert_eq!(combi().await, ("composite".into(), "active".into(), true));
}

#[tokio::test(flavor = "multi_thread")]
async fn r7_composite_groups_lead_is_stored_and_shown() {
    let env = TestEnv::start_with(&[("DAILY_JOB", "false")]).await;
    let mut link = parnassys_link("12AB", P);
    link["composite_groups_lead"] = json!(true);
    env.link(link).await;
    let show = || {
        let (code, out, err) = env.cli_output(&["school", "show", "--brin", "12AB"]);
        assert_eq!(code, 0, "{err}");
        serde_json::from_str::<Value>(&out).unwrap()
    };
    assert_eq!(show()["composite_groups_lead"], true, "seed 001: omdraaien");
    let stored: bool =
        sqlx::query_scalar("SELECT composite_groups_lead FROM schools WHERE brin = '12AB'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert!(stored, "exposed to the portal on the school");
    // Left out, like every setting, it takes its default: off.
    env.publish(&[parnassys_link("12AB", P)]).await;
    env.wait_handled(2).await;
    assert_eq!(show()["composite_groups_lead"], false);
    let (code, out) = env.cli(&[
        "school",
        "configure",
        "--brin",
        "12AB",
        "--system",
        "parnassys",
        "--environment-id",
        P,
        "--composite-groups-lead",
        "true",
    ]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(show()["composite_groups_lead"], true);
}
