//! End-to-end for issue #15, rule R13: go-live at a school that already uses
//! the portal. Seed 001 ("ParnasSys / ESIS is altijd leidend"): *when you
//! start the link you have both portal profiles and LAS profiles; you couple
//! them, in the first run or later through "Niet gekoppelde profielen"*. A
//! parent who already has a portal account must keep it (login, portal-only
//! data, role), never get a second, empty profile.

#![allow(clippy::unwrap_used)]

use las_e2e::*;
use serde_json::{Value, json};

const P: &str = "parnassys-prod";

/// A portal profile made before the link: no LAS key, with portal-only data
/// (allergies, a login, preferences) and a role. Returns its id.
#[allow(clippy::too_many_arguments)]
async fn portal_profile(
    env: &TestEnv,
    brin: &str,
    kind: &str,
    first: &str,
    last: &str,
    email: Option<&str>,
    birth: Option<&str>,
    role: Option<&str>,
) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO profiles (school_id, kind, las_key, status, first_name, last_name, email, birth_date,
                               role, allergies, preferences, last_login_at)
         SELECT id, $2, NULL, 'active', $3, $4, $5, $6::date, $7, 'pinda', '{\"taal\": \"nl\"}', now() - interval '3 days'
         FROM schools WHERE brin = $1 RETURNING id",
    )
    .bind(brin)
    .bind(kind)
    .bind(first)
    .bind(last)
    .bind(email)
    .bind(birth)
    .bind(role)
    .fetch_one(&env.db)
    .await
    .unwrap()
}

fn guardian(brin: &str, key: &str, v: u64, email: &str, last: &str, students: &[&str]) -> Value {
    change(
        brin,
        parnassys(P),
        v,
        json!({"type": "guardian.upserted", "las_key": key, "first_name": "Sanne", "last_name": last,
               "email": email, "phone": "010-1234567", "student_keys": students}),
    )
}

fn student(
    brin: &str,
    key: &str,
    v: u64,
    first: &str,
    prefix: Option<&str>,
    last: &str,
    born: &str,
) -> Value {
    change(
        brin,
        parnassys(P),
        v,
        json!({"type": "student.upserted", "las_key": key, "first_name": first, "name_prefix": prefix,
               "last_name": last, "birth_date": born, "group_keys": ["G3"]}),
    )
}

fn coupling(brin: &str, action: &str, kind: &str, key: &str, profile: Option<i64>) -> Value {
    json!({"schema": "portal.coupling.v1", "message_id": uuid::Uuid::new_v4(), "brin": brin,
           "action": action, "entity_kind": kind, "las_key": key, "portal_profile_id": profile})
}

/// (las_key, first_name, last_name, allergies, role, has login, status) of a profile.
async fn row(
    env: &TestEnv,
    id: i64,
) -> (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    bool,
    String,
) {
    sqlx::query_as(
        "SELECT las_key, first_name, last_name, allergies, role, last_login_at IS NOT NULL, status FROM profiles WHERE id = $1",
    )
    .bind(id)
    .fetch_one(&env.db)
    .await
    .unwrap()
}

async fn profiles_of(env: &TestEnv, brin: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM profiles p JOIN schools s ON s.id = p.school_id WHERE s.brin = $1",
    )
    .bind(brin)
    .fetch_one(&env.db)
    .await
    .unwrap()
}

fn unlinked(env: &TestEnv, brin: &str) -> Value {
    let (code, out, err) = env.cli_output(&["profiles", "unlinked", "--brin", brin]);
    assert_eq!(code, 0, "profiles unlinked: {err}");
    serde_json::from_str(&out).unwrap()
}

fn events_of<'a>(events: &'a [Value], ty: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["event_type"] == ty).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn r13_go_live_couples_existing_profiles_by_email_and_by_birth_date_and_name_keeping_portal_data()
 {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    env.bind_events_queue().await;
    // The portal before go-live: a parent with an account, a teacher the
    // school made a director, a child with an allergy note.
    let parent = portal_profile(
        &env,
        "12AB",
        "guardian",
        "S.",
        "Jansen",
        Some("  Sanne.Jansen@Example.NL "),
        None,
        None,
    )
    .await;
    let teacher = portal_profile(
        &env,
        "12AB",
        "staff",
        "Eva",
        "Bos",
        Some("e.bos@school.nl"),
        None,
        Some("Directeur"),
    )
    .await;
    let child = portal_profile(
        &env,
        "12AB",
        "student",
        "Anne Marie",
        "Dijk",
        None,
        Some("2018-05-01"),
        None,
    )
    .await;

    env.publish(&[
        student("12AB", "L1", 1, "Anne  Marie", Some("van"), "DIJK", "2018-05-01"),
        guardian("12AB", "O1", 1, "sanne.jansen@example.nl", "Jansen", &["L1"]),
        change("12AB", parnassys(P), 1, json!({"type": "staff.upserted", "las_key": "T1", "first_name": "Eva", "last_name": "Bos-de Wit", "email": "E.Bos@school.nl", "group_keys": ["G3"]})),
    ])
    .await;
    env.wait_handled(4).await;

    assert_eq!(profiles_of(&env, "12AB").await, 3, "coupled, not doubled");
    let (key, first, last, allergies, _, login, status) = row(&env, parent).await;
    assert_eq!(key.as_deref(), Some("O1"));
    assert_eq!(
        (first.as_deref(), last.as_deref()),
        (Some("Sanne"), Some("Jansen")),
        "R1: the LAS's imported fields"
    );
    assert!(login, "R13/R5: the parent keeps the login");
    assert_eq!(
        allergies.as_deref(),
        Some("pinda"),
        "R5: portal-only data stays"
    );
    assert_eq!(status, "active");
    let g = env.show("12AB", "guardian", "O1").unwrap();
    assert_eq!(g["phone"], "010-1234567");
    assert_eq!(
        g["email"], "sanne.jansen@example.nl",
        "R4: the LAS's e-mail"
    );

    let (key, _, last, _, role, _, _) = row(&env, teacher).await;
    assert_eq!(key.as_deref(), Some("T1"));
    assert_eq!(last.as_deref(), Some("Bos-de Wit"));
    assert_eq!(
        role.as_deref(),
        Some("Directeur"),
        "R8/R13: the role is never reset to the default"
    );

    let (key, first, _, allergies, _, _, _) = row(&env, child).await;
    assert_eq!(
        key.as_deref(),
        Some("L1"),
        "same birth date and name: prefix, case and spaces ignored"
    );
    assert_eq!(first.as_deref(), Some("Anne  Marie"));
    assert_eq!(allergies.as_deref(), Some("pinda"));
    // The coupled child is in its LAS group, its parent linked to it.
    let members: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM portal_group_members WHERE group_key = 'G3' AND member_key IN ('L1', 'T1')",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(
        members, 0,
        "no group G3 in the portal yet: memberships wait for the group"
    );

    let events = env.wait_events(3).await;
    let coupled = events_of(&events, "profile.coupled");
    assert_eq!(coupled.len(), 3, "{events:?}");
    for (k, id) in [("O1", parent), ("T1", teacher), ("L1", child)] {
        let e = coupled.iter().find(|e| e["las_key"] == k).unwrap();
        assert_eq!(e["portal_profile_id"], id);
        assert_eq!(e["reason"], "auto");
        let text = e.to_string();
        assert!(
            !text.contains("Jansen") && !text.contains("example.nl"),
            "ids only: {text}"
        );
    }
    assert!(
        events_of(&events, "profile.created").is_empty(),
        "nothing new was made: {events:?}"
    );

    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert_eq!(
        metric_sum(&metrics, "las_couplings_total", &[("outcome", "auto")]),
        3.0
    );
    assert_eq!(unlinked(&env, "12AB")["unclaimed"], json!([]));

    // From now on R1-R5 apply to the coupled profile as to any other.
    env.publish(&[guardian(
        "12AB",
        "O1",
        2,
        "sanne@nieuw.nl",
        "Jansen-Smit",
        &["L1"],
    )])
    .await;
    env.wait_handled(5).await;
    let (_, _, last, allergies, _, _, _) = row(&env, parent).await;
    assert_eq!(last.as_deref(), Some("Jansen-Smit"));
    assert_eq!(allergies.as_deref(), Some("pinda"));
    assert_eq!(profiles_of(&env, "12AB").await, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn r13_an_ambiguous_match_waits_invisible_and_is_coupled_by_the_schools_message() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    env.bind_events_queue().await;
    // Two portal accounts with the family's shared e-mail address.
    let mother = portal_profile(
        &env,
        "12AB",
        "guardian",
        "Mama",
        "Visser",
        Some("familie@visser.nl"),
        None,
        None,
    )
    .await;
    let father = portal_profile(
        &env,
        "12AB",
        "guardian",
        "Papa",
        "Visser",
        Some("familie@visser.nl"),
        None,
        None,
    )
    .await;
    let nobody = portal_profile(
        &env,
        "12AB",
        "guardian",
        "Oud",
        "Account",
        Some("oud@account.nl"),
        None,
        None,
    )
    .await;

    env.publish(&[guardian(
        "12AB",
        "O7",
        1,
        "Familie@Visser.nl",
        "Visser",
        &[],
    )])
    .await;
    env.wait_handled(2).await;
    assert_eq!(
        profiles_of(&env, "12AB").await,
        3,
        "no new profile for a waiting record"
    );
    assert!(
        env.show("12AB", "guardian", "O7").is_none(),
        "invisible until the school decides"
    );
    let u = unlinked(&env, "12AB");
    let waiting = u["waiting"].as_array().unwrap();
    assert_eq!(waiting.len(), 1, "{u}");
    assert_eq!(waiting[0]["las_key"], "O7");
    assert_eq!(waiting[0]["kind"], "guardian");
    assert_eq!(waiting[0]["reason"], "ambiguous");
    assert_eq!(waiting[0]["candidate_ids"], json!([mother, father]));
    let unclaimed: Vec<i64> = u["unclaimed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["portal_profile_id"].as_i64().unwrap())
        .collect();
    assert_eq!(unclaimed, vec![mother, father, nobody]);
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert_eq!(
        metric_sum(&metrics, "las_couplings_total", &[("outcome", "waiting")]),
        1.0
    );

    // The LAS keeps sending while the record waits: the newest is kept.
    env.publish(&[guardian(
        "12AB",
        "O7",
        2,
        "familie@visser.nl",
        "Visser-Bakker",
        &[],
    )])
    .await;
    env.wait_handled(3).await;
    assert!(env.show("12AB", "guardian", "O7").is_none());

    env.publish(&[coupling("12AB", "couple", "guardian", "O7", Some(mother))])
        .await;
    env.wait_handled(4).await;
    let (key, _, last, allergies, _, login, _) = row(&env, mother).await;
    assert_eq!(key.as_deref(), Some("O7"));
    assert_eq!(
        last.as_deref(),
        Some("Visser-Bakker"),
        "the newest LAS record is applied"
    );
    assert_eq!(allergies.as_deref(), Some("pinda"));
    assert!(login);
    assert_eq!(
        row(&env, father).await.0,
        None,
        "the other account is left alone"
    );
    let u = unlinked(&env, "12AB");
    assert_eq!(u["waiting"], json!([]));
    let unclaimed: Vec<i64> = u["unclaimed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["portal_profile_id"].as_i64().unwrap())
        .collect();
    assert_eq!(
        unclaimed,
        vec![father, nobody],
        "support sees who the LAS will never sync"
    );

    let events = env.wait_events(1).await;
    let coupled = events_of(&events, "profile.coupled");
    assert_eq!(coupled.len(), 1, "{events:?}");
    assert_eq!(coupled[0]["portal_profile_id"], mother);
    assert_eq!(coupled[0]["reason"], "manual");
    assert!(
        events_of(&events, "profile.created").is_empty(),
        "a waiting record was never announced: {events:?}"
    );

    // A redelivered decision changes nothing.
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    assert_eq!(
        metric_sum(&metrics, "las_couplings_total", &[("outcome", "manual")]),
        1.0
    );
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn r13_refused_couplings_are_dead_lettered_with_a_readable_reason_and_change_nothing() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P)).await;
    env.link(parnassys_link("34CD", "other-env")).await;
    let a = portal_profile(
        &env,
        "12AB",
        "guardian",
        "A",
        "Smit",
        Some("smit@x.nl"),
        None,
        None,
    )
    .await;
    let b = portal_profile(
        &env,
        "12AB",
        "guardian",
        "B",
        "Smit",
        Some("smit@x.nl"),
        None,
        None,
    )
    .await;
    let elsewhere = portal_profile(
        &env,
        "34CD",
        "guardian",
        "C",
        "Smit",
        Some("smit@x.nl"),
        None,
        None,
    )
    .await;
    let staff = portal_profile(
        &env,
        "12AB",
        "staff",
        "D",
        "Smit",
        Some("d@school.nl"),
        None,
        None,
    )
    .await;
    // O1 waits (two matches); O2 couples by itself to its own match.
    let coupled = portal_profile(
        &env,
        "12AB",
        "guardian",
        "E",
        "Jong",
        Some("jong@x.nl"),
        None,
        None,
    )
    .await;
    env.publish(&[
        guardian("12AB", "O1", 1, "smit@x.nl", "Smit", &[]),
        guardian("12AB", "O2", 1, "jong@x.nl", "Jong", &[]),
    ])
    .await;
    env.wait_handled(4).await;
    assert_eq!(row(&env, coupled).await.0.as_deref(), Some("O2"));

    env.publish(&[
        coupling("12AB", "couple", "guardian", "O1", Some(elsewhere)),
        coupling("12AB", "couple", "guardian", "O1", Some(staff)),
        coupling("12AB", "couple", "guardian", "O1", Some(coupled)),
        coupling("12AB", "create", "guardian", "O9", None),
    ])
    .await;
    let letters = env.wait_dead_letters(4).await;
    let reasons: Vec<String> = letters
        .iter()
        .map(|(h, _)| h["x-las-reason"].clone())
        .collect();
    for (h, _) in &letters {
        assert_eq!(h["x-las-reason-code"], "coupling_refused", "{h:?}");
    }
    assert!(
        reasons.iter().any(|r| r.contains(&format!(
            "portal profile {elsewhere} belongs to another school"
        ))),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains(&format!("portal profile {staff} is a staff"))),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains(&format!(
            "portal profile {coupled} is already coupled to LAS record O2"
        ))),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("O9") && r.contains("does not wait")),
        "{reasons:?}"
    );
    for r in &reasons {
        assert!(
            !r.contains("smit@x.nl") && !r.contains("Smit"),
            "no personal data in a reason: {r}"
        );
    }
    // Nothing changed: the record still waits, the profiles are as they were.
    assert_eq!(unlinked(&env, "12AB")["waiting"][0]["las_key"], "O1");
    for id in [a, b, elsewhere, staff] {
        assert_eq!(row(&env, id).await.0, None);
    }
    assert_eq!(row(&env, coupled).await.0.as_deref(), Some("O2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn r13_review_schools_decide_every_match_create_and_uncouple_through_the_cli() {
    let env = TestEnv::start().await;
    let mut link = parnassys_link("12AB", P);
    link["coupling"] = json!("review");
    env.link(link).await;
    env.bind_events_queue().await;
    let p = portal_profile(
        &env,
        "12AB",
        "guardian",
        "Kim",
        "Mol",
        Some("kim@mol.nl"),
        None,
        None,
    )
    .await;
    env.publish(&[
        guardian("12AB", "O1", 1, "kim@mol.nl", "Mol", &[]),
        guardian("12AB", "O2", 1, "ander@mol.nl", "Mol", &[]),
    ])
    .await;
    env.wait_handled(3).await;
    assert!(
        env.show("12AB", "guardian", "O1").is_none(),
        "review: a match waits for the school"
    );
    assert!(
        env.show("12AB", "guardian", "O2").is_some(),
        "no match: a new profile, as before"
    );
    let u = unlinked(&env, "12AB");
    assert_eq!(u["waiting"][0]["reason"], "review");
    assert_eq!(u["waiting"][0]["candidate_ids"], json!([p]));

    // The support desk: the LAS record is not this parent after all.
    let (code, out, err) = env.cli_output(&[
        "profiles",
        "create",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "O1",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("R13:create_decided"), "{out}");
    let created = env.show("12AB", "guardian", "O1").unwrap();
    assert_eq!(created["email"], "kim@mol.nl");
    assert_eq!(
        row(&env, p).await.0,
        None,
        "the portal account was not touched"
    );

    // A second decision about the same record is refused: it waits no more.
    let (code, _, err) = env.cli_output(&[
        "profiles",
        "couple",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "O1",
        "--profile-id",
        &p.to_string(),
    ]);
    assert_eq!(code, 1);
    assert!(
        err.contains("coupling_refused") && err.contains("does not wait"),
        "{err}"
    );

    // Uncouple O2 from the profile the worker made, then couple it to the account.
    let (code, out, err) = env.cli_output(&[
        "profiles",
        "uncouple",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "O2",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(env.show("12AB", "guardian", "O2").is_none());
    let u = unlinked(&env, "12AB");
    assert_eq!(u["waiting"][0]["las_key"], "O2");
    assert_eq!(u["waiting"][0]["reason"], "uncoupled");
    let (code, out, err) = env.cli_output(&[
        "profiles",
        "couple",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "O2",
        "--profile-id",
        &p.to_string(),
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (key, _, _, allergies, _, login, _) = row(&env, p).await;
    assert_eq!(key.as_deref(), Some("O2"));
    assert_eq!(allergies.as_deref(), Some("pinda"));
    assert!(login);
    let g = env.show("12AB", "guardian", "O2").unwrap();
    assert_eq!(
        g["email"], "ander@mol.nl",
        "the LAS record as it was, applied to the account"
    );

    let events = env.wait_events(4).await;
    assert_eq!(
        events_of(&events, "profile.uncoupled").len(),
        1,
        "{events:?}"
    );
    let coupled = events_of(&events, "profile.coupled");
    assert_eq!(coupled.len(), 1, "{events:?}");
    assert_eq!(coupled[0]["portal_profile_id"], p);
}

#[tokio::test(flavor = "multi_thread")]
async fn r13_intake_children_couple_too_and_a_waiting_record_ends_with_its_removal_or_its_term() {
    let env = TestEnv::start().await;
    let mut link = parnassys_link("12AB", P);
    link["intake_weeks_ahead"] = json!(8);
    env.link(link).await;
    // A child turning 4 in two weeks, already in the portal (its parents made it).
    let born = (chrono::Utc::now().date_naive() - chrono::Months::new(48) + chrono::Days::new(14))
        .to_string();
    let child = portal_profile(
        &env,
        "12AB",
        "student",
        "Pim",
        "Kok",
        None,
        Some(&born),
        None,
    )
    .await;
    // Two accounts with one e-mail: the LAS guardian waits.
    portal_profile(
        &env,
        "12AB",
        "guardian",
        "X",
        "Kok",
        Some("kok@x.nl"),
        None,
        None,
    )
    .await;
    portal_profile(
        &env,
        "12AB",
        "guardian",
        "Y",
        "Kok",
        Some("kok@x.nl"),
        None,
        None,
    )
    .await;
    env.publish(&[
        student("12AB", "L5", 1, "Pim", None, "Kok", &born),
        guardian("12AB", "O5", 1, "kok@x.nl", "Kok", &["L5"]),
    ])
    .await;
    env.wait_handled(3).await;
    let s = env.show("12AB", "student", "L5").unwrap();
    assert_eq!(
        s["groups"][0]["las_key"], "@intake",
        "R9: in the intake group until the birthday: {s}"
    );
    assert_eq!(
        row(&env, child).await.0.as_deref(),
        Some("L5"),
        "the intake child is coupled to its portal profile"
    );
    assert_eq!(unlinked(&env, "12AB")["waiting"][0]["las_key"], "O5");

    // The LAS removes the waiting guardian: nothing of it stays (R12).
    env.publish(&[change(
        "12AB",
        parnassys(P),
        2,
        json!({"type": "guardian.removed", "las_key": "O5"}),
    )])
    .await;
    env.wait_handled(4).await;
    assert_eq!(unlinked(&env, "12AB")["waiting"], json!([]));
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM coupling_waits")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE las_key = 'O5' AND (first_name IS NOT NULL OR email IS NOT NULL)")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(kept, 0, "no personal data of a removed record");

    // A record nobody decides about is not kept for ever: after the school's
    // retention term without a LAS update, the daily job deletes it.
    env.publish(&[guardian("12AB", "O6", 1, "kok@x.nl", "Kok", &["L5"])])
        .await;
    env.wait_handled(5).await;
    assert_eq!(unlinked(&env, "12AB")["waiting"][0]["las_key"], "O6");
    // The school's term: 730 days by default (seed 003).
    sqlx::query("UPDATE coupling_waits SET updated_at = now() - interval '731 days'")
        .execute(&env.db)
        .await
        .unwrap();
    let (code, out) = env.cli(&["tick"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"waits_expired\":1"), "{out}");
    assert_eq!(unlinked(&env, "12AB")["waiting"], json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn r13_import_dry_run_shows_the_go_live_coupling_plan_of_the_example_school_and_writes_nothing()
 {
    let env = TestEnv::start().await;
    env.link(TestEnv::example("link.parnassys.json")).await;
    // The example school's portal before go-live: one parent who couples by
    // e-mail, two accounts that share another parent's e-mail (that record
    // waits), and a former teacher no LAS record will claim.
    let marieke = portal_profile(
        &env,
        "12AB",
        "guardian",
        "Marieke",
        "V.",
        Some("Marieke.Voorbeeld@example.org"),
        None,
        None,
    )
    .await;
    portal_profile(
        &env,
        "12AB",
        "guardian",
        "Petra",
        "P.",
        Some("petra.deproef@example.org"),
        None,
        None,
    )
    .await;
    portal_profile(
        &env,
        "12AB",
        "guardian",
        "Piet",
        "P.",
        Some("petra.deproef@example.org"),
        None,
        None,
    )
    .await;
    portal_profile(
        &env,
        "12AB",
        "staff",
        "Oud",
        "Teamlid",
        Some("oud.teamlid@example.org"),
        None,
        Some("Leerkracht"),
    )
    .await;

    let export = example_path("school-12AB.ndjson");
    let (code, out, err) = env.cli_output(&[
        "import",
        "--dry-run",
        "--format",
        "json",
        "--summary-only",
        &export,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let totals: Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(totals["record"], "totals");
    // 18 profiles in the export (8 students, 8 guardians, 2 staff).
    assert_eq!(totals["coupling"]["coupled"], 1, "{totals}");
    assert_eq!(totals["coupling"]["waiting"], 1, "{totals}");
    assert_eq!(totals["coupling"]["new_profiles"], 16, "{totals}");
    assert_eq!(
        totals["coupling"]["unclaimed"], 3,
        "the two accounts of the waiting record and the former teacher: {totals}"
    );

    // A dry run writes nothing.
    assert_eq!(row(&env, marieke).await.0, None);
    assert_eq!(profiles_of(&env, "12AB").await, 4);
    let waits: i64 = sqlx::query_scalar("SELECT count(*) FROM coupling_waits")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(waits, 0);

    // The same plan for people.
    let (code, out, _) = env.cli_output(&["import", "--dry-run", "--summary-only", &export]);
    assert_eq!(code, 0);
    assert!(
        out.contains("coupling (R13): 1 coupled to existing portal profiles, 16 new profiles, 1 waiting for the school, 3 portal profiles no LAS record claimed"),
        "{out}"
    );
}
