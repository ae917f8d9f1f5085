//! End-to-end: the operator tools of issue #9 (`import`, `explain`,
//! `journal prune`, `dlq`, `school configure|show`), run as the real binary
//! against the real RabbitMQ and PostgreSQL of the test world.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use las_e2e::*;
use serde_json::{Value, json};

const P_ENV: &str = "parnassys-prod";
const DLQ: &str = "las-worker.dead-letter";

fn json_lines(stdout: &str) -> Vec<Value> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn totals(lines: &[Value]) -> &Value {
    let t = lines.last().unwrap();
    assert_eq!(t["record"], "totals", "the last line is the totals: {t}");
    t
}

async fn count(env: &TestEnv, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(&env.db)
        .await
        .unwrap()
}

fn guardian(key: &str, phone: &str, email: &str) -> Value {
    json!({"type": "guardian.upserted", "las_key": key, "first_name": "Anna", "last_name": "Dijk",
        "phone": phone, "email": email, "student_keys": ["S1"]})
}

/// Waits until `show` finds the profile.
async fn wait_profile(env: &TestEnv, brin: &str, kind: &str, key: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(p) = env.show(brin, kind, key) {
            return p;
        }
        assert!(
            Instant::now() < deadline,
            "{kind} {key} of {brin} never arrived; log:\n{}",
            env.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn import_dry_run_writes_nothing_and_import_applies_the_same_decisions() {
    let env = TestEnv::start_without_worker().await;
    let school = example_path("school-12AB.ndjson");

    // The link file is a single-message .json file; a real import migrates
    // the empty database first.
    let (code, out, err) = env.cli_output(&["import", &example_path("link.parnassys.json")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("school link 12AB"), "{out}");
    assert!(out.contains("R6 created"), "{out}");

    // Dry run, text: the decisions per profile, no personal values.
    let (code, text, err) = env.cli_output(&["import", "--dry-run", &school]);
    assert_eq!(code, 0, "{text}{err}");
    assert!(
        text.contains(
            "school-12AB.ndjson:4: student L1001 (12AB, v1, student.upserted): would be applied"
        ),
        "{text}"
    );
    assert!(text.contains("    R1 created"), "{text}");
    assert!(text.contains("    R1 changed first_name"), "{text}");
    assert!(text.contains("R9 held_back"), "{text}");
    assert!(text.contains("dry run: nothing was written"), "{text}");
    assert!(text.contains("messages 21, applied 21"), "{text}");
    for value in [
        "Sanne",
        "Marieke",
        "020-0002001",
        "marieke.voorbeeld@example.org",
    ] {
        assert!(
            !text.contains(value),
            "{value} printed without --show-values"
        );
    }
    assert_eq!(
        count(&env, "SELECT count(*) FROM profiles").await,
        0,
        "a dry run writes nothing"
    );

    // With --show-values: old -> new.
    let (code, text, _) = env.cli_output(&["import", "--dry-run", "--show-values", &school]);
    assert_eq!(code, 0);
    assert!(
        text.contains(r#"R1 changed first_name: (blank) -> "Sanne""#),
        "{text}"
    );

    // Dry run, JSON lines.
    let (code, out, err) = env.cli_output(&["import", "--dry-run", "--format", "json", &school]);
    assert_eq!(code, 0, "{err}");
    let dry = json_lines(&out);
    assert_eq!(dry.len(), 22, "21 messages and the totals");
    let l1004 = dry.iter().find(|r| r["las_key"] == "L1004").unwrap();
    assert_eq!(l1004["outcome"], "applied");
    assert_eq!(l1004["dry_run"], true);
    assert_eq!(l1004["line"], 7);
    let codes: Vec<&str> = l1004["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"R1:overwritten:first_name"), "{codes:?}");
    assert!(
        codes.contains(&"R3:ignored:phone"),
        "R3: a student's phone is not imported: {codes:?}"
    );
    assert!(
        l1004["decisions"][1].get("old").is_none(),
        "no values without --show-values"
    );
    let dry_totals = totals(&dry).clone();
    assert_eq!(dry_totals["dry_run"], true);
    assert_eq!(dry_totals["messages"], 21);
    assert_eq!(dry_totals["applied"], 21);
    assert_eq!(dry_totals["rejected"], 0);
    assert_eq!(count(&env, "SELECT count(*) FROM profiles").await, 0);
    assert_eq!(count(&env, "SELECT count(*) FROM change_journal").await, 0);
    assert_eq!(
        count(&env, "SELECT count(*) FROM processed_messages").await,
        1,
        "only the link"
    );

    // The real import takes exactly the decisions the dry run announced.
    let (code, out, err) = env.cli_output(&["import", "--format", "json", &school]);
    assert_eq!(code, 0, "{err}");
    let real = json_lines(&out);
    let real_totals = totals(&real);
    assert_eq!(real_totals["dry_run"], false);
    assert_eq!(real_totals["applied"], 21);
    assert_eq!(real_totals["rules"], dry_totals["rules"]);
    assert_eq!(real_totals["actions"], dry_totals["actions"]);
    assert_eq!(real_totals["profiles"], dry_totals["profiles"]);
    let decisions = |lines: &[Value]| -> Vec<Value> {
        lines[..lines.len() - 1]
            .iter()
            .map(|r| json!([r["line"], r["decisions"]]))
            .collect()
    };
    assert_eq!(decisions(&real), decisions(&dry), "same decisions per line");
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM profiles WHERE kind = 'student' AND status <> 'pending'"
        )
        .await,
        8
    );
    assert_eq!(
        count(
            &env,
            "SELECT count(*) FROM profiles WHERE kind = 'guardian' AND status <> 'pending'"
        )
        .await,
        8
    );
    assert_eq!(
        count(&env, "SELECT count(*) FROM profiles WHERE kind = 'staff'").await,
        2
    );
    let g = env.show("12AB", "guardian", "O2001").unwrap();
    assert_eq!(g["first_name"], "Marieke");

    // Again: every message is a duplicate, nothing is rejected.
    let (code, out, _) = env.cli_output(&["import", "--summary-only", &school]);
    assert_eq!(code, 0);
    assert!(out.contains("applied 0, duplicate 21"), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn import_reports_rejected_lines_and_exits_1() {
    let env = TestEnv::start_without_worker().await;
    let (code, _, err) = env.cli_output(&["import", &example_path("link.parnassys.json")]);
    assert_eq!(code, 0, "{err}");
    let src =
        json!({"system": "parnassys", "environment_id": "parnassys-12AB-prod", "label": null});
    let ok = change(
        "12AB",
        src.clone(),
        1,
        guardian("G1", "0612345678", "anna@example.org"),
    );
    let unknown = change("99ZZ", src.clone(), 1, guardian("G2", "", ""));
    let path = env.write_file(
        "mixed.ndjson",
        &[
            ok.to_string(),
            "{not json".to_owned(),
            String::new(),
            unknown.to_string(),
        ],
    );
    let (code, out, err) = env.cli_output(&["import", &path]);
    assert_eq!(code, 1, "some lines were rejected: {out}{err}");
    assert!(
        out.contains("mixed.ndjson:1: guardian G1 (12AB, v1, guardian.upserted): applied"),
        "{out}"
    );
    assert!(
        out.contains("mixed.ndjson:2: message: rejected [invalid_json]"),
        "{out}"
    );
    assert!(
        out.contains("mixed.ndjson:4: guardian G2 (99ZZ, v1, guardian.upserted): rejected [unknown_brin] no portal is linked to BRIN 99ZZ"),
        "{out}"
    );
    assert!(
        out.contains("messages 3, applied 1, duplicate 0, stale 0, rejected 2"),
        "{out}"
    );
    assert!(
        out.contains("rejected by reason: invalid_json 1, unknown_brin 1"),
        "{out}"
    );
    assert!(env.show("12AB", "guardian", "G1").is_some());

    let (code, out, _) = env.cli_output(&["import", "--format", "json", "--summary-only", &path]);
    assert_eq!(code, 1);
    let lines = json_lines(&out);
    assert_eq!(
        lines.len(),
        3,
        "only the rejected lines and the totals: {out}"
    );
    assert_eq!(lines[0]["line"], 2);
    assert_eq!(lines[0]["reason_code"], "invalid_json");
    assert_eq!(lines[1]["reason_code"], "unknown_brin");
    assert_eq!(totals(&lines)["duplicate"], 1);

    let (code, _, err) = env.cli_output(&["import", "/nonexistent/export.ndjson"]);
    assert_eq!(code, 2, "an unreadable file is a usage error: {err}");
    let (code, _, _) = env.cli_output(&["import", "--batch-size", "0", &path]);
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn explain_names_the_rules_that_fired_and_the_journal_is_pruned() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P_ENV)).await;
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        guardian("G1", "0612345678", "anna@example.org"),
    )])
    .await;
    env.wait_handled(2).await;
    env.publish(&[change("12AB", parnassys(P_ENV), 2, guardian("G1", " ", ""))])
        .await;
    env.wait_handled(3).await;

    let args = [
        "explain",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "G1",
    ];
    let (code, text, err) = env.cli_output(&args);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("2 applied message(s)"), "{text}");
    assert!(text.contains("R1: profile created"), "{text}");
    assert!(
        text.contains("R2: phone cleared (blank in the LAS)"),
        "{text}"
    );
    assert!(text.contains("R4: email kept (the LAS had none)"), "{text}");
    assert!(
        !text.contains("0612345678") && !text.contains("anna@example.org"),
        "explain never prints values: {text}"
    );
    let first_v2 = text.find("  v2  ").unwrap();
    assert!(
        text.find("R1: profile created").unwrap() < first_v2,
        "newest last: {text}"
    );

    let mut json_args = args.to_vec();
    json_args.extend(["--format", "json"]);
    let (code, out, _) = env.cli_output(&json_args);
    assert_eq!(code, 0);
    let entries = json_lines(&out);
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["version"], 1);
    assert_eq!(entries[0]["rules"][0], "R1");
    assert_eq!(entries[1]["version"], 2);
    assert_eq!(entries[1]["rules"], json!(["R2", "R4"]));
    assert_eq!(entries[1]["fields"], json!(["phone", "email"]));
    assert!(
        entries[1]["decisions"]
            .as_array()
            .unwrap()
            .contains(&json!("R2:cleared:phone"))
    );

    let (code, _, _) = env.cli_output(&[
        "explain",
        "--brin",
        "12AB",
        "--kind",
        "guardian",
        "--las-key",
        "G404",
    ]);
    assert_eq!(code, 1, "nothing in the journal");
    let (code, _, _) = env.cli_output(&[
        "explain",
        "--brin",
        "99ZZ",
        "--kind",
        "guardian",
        "--las-key",
        "G1",
    ]);
    assert_eq!(code, 1, "no such school");

    // Retention: entries older than JOURNAL_RETENTION_DAYS (90) are deleted.
    let (code, out, _) = env.cli_output(&["journal", "prune"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 0 "), "{out}");
    sqlx::query(
        "UPDATE change_journal SET applied_at = now() - interval '100 days' WHERE version = 1",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let (code, out, _) = env.cli_output(&["journal", "prune"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("deleted 1 change-journal entries older than 90 days"),
        "{out}"
    );
    let (_, out, _) = env.cli_output(&json_args);
    assert_eq!(json_lines(&out).len(), 1, "only v2 is left");
    let (code, out, _) = env.cli_output(&["journal", "prune", "--days", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("deleted 0 "), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letter_for_an_unknown_school_is_replayed_after_school_configure() {
    let env = TestEnv::start().await;
    env.publish(&[change(
        "99ZZ",
        parnassys(P_ENV),
        1,
        guardian("G9", "0612345678", "g9@example.org"),
    )])
    .await;
    env.wait_handled(1).await;
    env.wait_queue_depth(DLQ, 1, Duration::from_secs(30)).await;

    // list and show give the message back to the queue.
    for _ in 0..2 {
        let (code, out, err) = env.cli_output(&["dlq", "list"]);
        assert_eq!(code, 0, "{err}");
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(out.contains("unknown_brin"), "{out}");
        assert!(out.contains("las.99ZZ.guardian.upserted"), "{out}");
    }
    let (_, out, _) = env.cli_output(&["dlq", "list", "--format", "json"]);
    let letters = json_lines(&out);
    assert_eq!(letters.len(), 1);
    let l = &letters[0];
    assert_eq!(l["reason_code"], "unknown_brin");
    assert_eq!(l["original_exchange"], "las.changes");
    assert_eq!(l["dead_lettered_by"], "worker");
    let id = l["id"].as_str().unwrap().to_owned();
    assert_eq!(l["message_id"].as_str(), Some(id.as_str()));
    let (_, out, _) = env.cli_output(&["dlq", "list", "--reason", "invalid_json"]);
    assert!(out.is_empty(), "{out}");

    let (code, out, err) = env.cli_output(&["dlq", "show", &id]);
    assert_eq!(code, 0, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["body"]["change"]["las_key"], "G9");
    assert_eq!(
        shown["body"]["change"]["first_name"], "***",
        "values are masked"
    );
    assert!(!out.contains("0612345678"), "{out}");
    let (_, out, _) = env.cli_output(&["dlq", "show", &id, "--show-values"]);
    assert!(out.contains("0612345678"), "{out}");
    let (code, _, _) = env.cli_output(&["dlq", "show", "no-such-id"]);
    assert_eq!(code, 1);
    env.wait_queue_depth(DLQ, 1, Duration::from_secs(10)).await;

    // The cause: no school. Fix it, then replay.
    let (code, out, err) = env.cli_output(&[
        "school",
        "configure",
        "--brin",
        "99ZZ",
        "--system",
        "parnassys",
        "--environment-id",
        P_ENV,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = env.cli_output(&["dlq", "replay", "--all"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("replayed 1 dead letter(s); 0 could not be replayed"),
        "{out}"
    );
    let g = wait_profile(&env, "99ZZ", "guardian", "G9").await;
    assert_eq!(g["phone"], "0612345678");
    let (code, out, _) = env.cli_output(&["dlq", "list"]);
    assert_eq!(code, 0);
    assert!(out.is_empty(), "the dead-letter queue is empty: {out}");
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn dlq_purge_by_reason_and_by_id() {
    let env = TestEnv::start().await;
    env.publish_raw(
        las_contracts::LAS_CHANGES_EXCHANGE,
        "las.12AB.student.upserted",
        &[b"{oops".to_vec()],
    )
    .await;
    env.publish(&[change("99ZZ", parnassys(P_ENV), 1, guardian("G9", "", ""))])
        .await;
    env.wait_handled(2).await;
    env.wait_queue_depth(DLQ, 2, Duration::from_secs(30)).await;

    let (code, _, _) = env.cli_output(&["dlq", "replay", "--reason", "environment_mismatch"]);
    assert_eq!(code, 1, "nothing matched");
    let (code, _, _) = env.cli_output(&["dlq", "purge"]);
    assert_eq!(code, 2, "purge needs an id, --all or --reason");
    env.wait_queue_depth(DLQ, 2, Duration::from_secs(10)).await;

    let (code, out, err) = env.cli_output(&["dlq", "purge", "--reason", "invalid_json"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("purged 1 dead letter(s)"), "{out}");
    let (_, out, _) = env.cli_output(&["dlq", "list", "--format", "json"]);
    let letters = json_lines(&out);
    assert_eq!(letters.len(), 1, "{out}");
    assert_eq!(letters[0]["reason_code"], "unknown_brin");

    let id = letters[0]["id"].as_str().unwrap();
    let (code, out, _) = env.cli_output(&["dlq", "purge", id]);
    assert_eq!(code, 0, "{out}");
    let (_, out, _) = env.cli_output(&["dlq", "list"]);
    assert!(out.is_empty(), "{out}");
    let (code, _, _) = env.cli_output(&["dlq", "purge", "--all"]);
    assert_eq!(code, 1, "nothing left to purge");
    assert!(env.dead_letters().await.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn school_configure_links_and_refuses_a_second_environment() {
    let env = TestEnv::start_without_worker().await;
    let configure = |extra: &[&str]| {
        let mut args = vec![
            "school",
            "configure",
            "--brin",
            "12AB",
            "--system",
            "parnassys",
        ];
        args.extend_from_slice(extra);
        env.cli_output(&args)
    };
    let (code, out, err) = configure(&["--environment-id", "env-a", "--default-staff-role", "Juf"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("R6:created"), "{out}");
    let (code, out, _) = env.cli_output(&["school", "show", "--brin", "12AB"]);
    assert_eq!(code, 0);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["environment_id"], "env-a");
    assert_eq!(s["system"], "parnassys");
    assert_eq!(s["default_staff_role"], "Juf");
    assert_eq!(
        s["retention_days"], 730,
        "seed 003: the pupil file's two years"
    );
    assert_eq!(s["staff_retention_days"], 730);
    assert_eq!(
        s["year_records_kept_years"], 0,
        "seed 000: deleted at the rollover"
    );
    assert!(s["first_run_at"].is_null() && s["last_sync_at"].is_null());
    let (code, out, _) = env.cli_output(&["school", "show", "--brin", "56EF"]);
    assert_eq!(
        (code, out.as_str()),
        (1, ""),
        "not linked: exit 1, no output"
    );

    // R6: one LAS environment per portal.
    let (code, out, err) = configure(&["--environment-id", "env-b"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("relink_refused"), "{err}");
    let (code, _, err) = env.cli_output(&[
        "school",
        "configure",
        "--brin",
        "12AB",
        "--system",
        "esis",
        "--environment-id",
        "env-a",
        "--label",
        "BasisOnline Ouderportaal",
    ]);
    assert_eq!(code, 1, "{err}");

    // Settings change; options left out keep their value.
    let (code, _, err) = configure(&[
        "--environment-id",
        "env-a",
        "--retention-days",
        "30",
        "--intake-weeks-ahead",
        "6",
    ]);
    assert_eq!(code, 0, "{err}");
    let (_, out, _) = env.cli_output(&["school", "show", "--brin", "12AB"]);
    let s: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(s["environment_id"], "env-a");
    assert_eq!(s["retention_days"], 30);
    assert_eq!(s["intake_weeks_ahead"], 6);
    assert_eq!(s["default_staff_role"], "Juf");

    // ESIS: only the environment labelled "BasisOnline Ouderportaal".
    let (code, _, err) = env.cli_output(&[
        "school",
        "configure",
        "--brin",
        "34CD",
        "--system",
        "esis",
        "--environment-id",
        "esis-34CD",
        "--label",
        "ParentCom",
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("esis_label"), "{err}");
    let (code, _, err) = env.cli_output(&[
        "school",
        "configure",
        "--brin",
        "34CD",
        "--system",
        "esis",
        "--environment-id",
        "esis-34CD",
        "--intake-weeks-ahead",
        "53",
        "--label",
        "BasisOnline Ouderportaal",
    ]);
    assert_eq!(code, 2, "invalid option: {err}");
    let (code, _, err) = env.cli_output(&[
        "school",
        "configure",
        "--brin",
        "34CD",
        "--system",
        "esis",
        "--environment-id",
        "esis-34CD",
        "--label",
        "BasisOnline Ouderportaal",
    ]);
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn every_new_command_has_help_with_an_example() {
    let env = TestEnv::start_without_worker().await;
    for cmd in [
        vec!["import"],
        vec!["explain"],
        vec!["journal", "prune"],
        vec!["dlq", "list"],
        vec!["dlq", "show"],
        vec!["dlq", "replay"],
        vec!["dlq", "purge"],
        vec!["school", "configure"],
        vec!["school", "show"],
        vec!["profiles", "unlinked"],
        vec!["profiles", "couple"],
        vec!["profiles", "create"],
        vec!["profiles", "uncouple"],
        vec!["events", "bind"],
        vec!["events", "take"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let (code, out, _) = env.cli_output(&args);
        assert_eq!(code, 0, "{cmd:?}");
        assert!(
            out.contains("Example"),
            "{cmd:?} --help has no example:\n{out}"
        );
    }
}

/// Issue #18: dead letters carry message bodies with personal data and have
/// a term (DEAD_LETTER_RETENTION_DAYS): the worker drops older ones, counts
/// the ones due within a week, keeps the rest, and `dlq list` shows the age.
#[tokio::test(flavor = "multi_thread")]
async fn r12_dead_letters_past_their_term_are_dropped_and_the_rest_kept() {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    use lapin::types::{AMQPValue, FieldTable, LongString};
    use lapin::{BasicProperties, Connection, ConnectionProperties};
    let env = TestEnv::start_with(&[
        ("DEAD_LETTER_RETENTION_DAYS", "30"),
        ("DEAD_LETTER_SWEEP_INTERVAL_MS", "300"),
    ])
    .await;
    // Three letters the worker dead-lettered 40, 25 and 2 days ago.
    let conn = Connection::connect(&env.amqp_url(), ConnectionProperties::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for days in [40, 25, 2] {
        let at = (chrono::Utc::now() - chrono::Duration::days(days)).to_rfc3339();
        let mut h = FieldTable::default();
        let ls = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        h.insert("x-las-reason-code".into(), ls("unknown_brin"));
        h.insert(
            "x-las-reason".into(),
            ls("no portal is linked to BRIN 99ZZ (R6)"),
        );
        h.insert("x-las-rejected-at".into(), ls(&at));
        h.insert(
            "x-las-message-id".into(),
            ls(&format!("00000000-0000-0000-0000-0000000000{days:02}")),
        );
        let body = format!(r#"{{"schema":"las.change.v1","brin":"99ZZ","note":"{days} days"}}"#);
        let confirm = ch
            .basic_publish(
                las_contracts::DEAD_LETTER_EXCHANGE.into(),
                "las.99ZZ.guardian.upserted".into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default()
                    .with_headers(h)
                    .with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }
    let _ = conn.close(200, "done".into()).await;

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, metrics) = env.http_get("/metrics").await.unwrap();
        if metrics.contains("las_dead_letters_expired_total 1")
            && metrics.contains("las_dead_letters_expiring 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no sweep seen: {metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.wait_queue_depth(DLQ, 2, Duration::from_secs(30)).await;
    let mut ages = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while ages.len() != 2 {
        // The sweep holds the letters for a moment now and then.
        let (_, out, _) = env.cli_output(&["dlq", "list", "--format", "json"]);
        ages = json_lines(&out)
            .iter()
            .map(|l| l["age_days"].as_i64().unwrap())
            .collect();
        assert!(Instant::now() < deadline, "{out}");
    }
    ages.sort();
    assert_eq!(
        ages,
        vec![2, 25],
        "the 40-day-old letter is gone, the others kept"
    );
}

/// `school show`'s `last_sync_at` is the time of the last applied change, to
/// the minute: the worker writes the school's row at most once a minute
/// (docs/operator-tools.md), so a second change within the minute leaves it,
/// and one after it moves it on.
#[tokio::test]
async fn school_show_last_sync_at_follows_applied_changes_to_the_minute() {
    let env = TestEnv::start().await;
    env.link(parnassys_link("12AB", P_ENV)).await;
    let last_sync = || async {
        let (code, out, err) = env.cli_output(&["school", "show", "--brin", "12AB"]);
        assert_eq!(code, 0, "{out}{err}");
        let s: Value = serde_json::from_str(&out).unwrap();
        s["last_sync_at"].as_str().map(str::to_owned)
    };
    assert_eq!(last_sync().await, None, "linked, nothing applied yet");

    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        1,
        guardian("G1", "0101", "a@example.nl"),
    )])
    .await;
    env.wait_handled(2).await;
    let first = last_sync().await.expect("set by the first applied change");

    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        2,
        guardian("G1", "0102", "a@example.nl"),
    )])
    .await;
    env.wait_handled(3).await;
    assert_eq!(
        last_sync().await.as_deref(),
        Some(first.as_str()),
        "within the minute the row is not written again"
    );

    // A minute later (moved back in the database rather than waited for).
    sqlx::query("UPDATE schools SET last_sync_at = last_sync_at - interval '2 minutes'")
        .execute(&env.db)
        .await
        .unwrap();
    let moved_back = last_sync().await.unwrap();
    env.publish(&[change(
        "12AB",
        parnassys(P_ENV),
        3,
        guardian("G1", "0103", "a@example.nl"),
    )])
    .await;
    env.wait_handled(4).await;
    let now = last_sync().await.unwrap();
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap();
    assert!(
        at(&now) >= at(&first) && at(&moved_back) < at(&first),
        "after the minute the next change sets it again: {moved_back} -> {now} (first {first})"
    );
}
