//! Reliability under injected faults (#8): duplicate storms, two consumers
//! racing over out-of-order versions, poison in a load, a TCP cut between
//! worker and broker, kill -9 at random moments, a slow and failing e-mail
//! API, and a soak with all of it at a low rate.
//!
//! "Nothing lost" is checked the same way everywhere: every message the broker
//! confirmed is either applied in effect (its id in `processed_messages`, the
//! state the in-order result) or in the dead-letter queue with its reason, and
//! `published = applied + duplicate + stale + dead-lettered` holds exactly.
//! Where a worker process dies, its metrics die with it; those tests reconcile
//! through the database (`processed_messages`, profile state) and the
//! dead-letter queue instead, and say so. Random choices use fixed seeds, so a
//! failure reproduces.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::{Duration, Instant};

use las_e2e::mailapi::{MailApi, MailMode};
use las_e2e::proxy::TcpProxy;
use las_e2e::*;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde_json::{Value, json};

const P: &str = "parnassys-prod";

/// A raw message: exchange, routing key, body.
type Raw = (String, String, Vec<u8>);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The portal-visible state of a world as sorted text rows: profiles with
/// every imported field and status, groups, effective group members,
/// guardian-student links, suggestions and e-mails. Ids, message ids and
/// timestamps, which legitimately differ between two runs, are left out.
/// Everything else must be equal, also the LAS group keys of a removed profile
/// (R12: a removal clears them, whatever arrived before it).
async fn portal_state(env: &TestEnv) -> Vec<String> {
    let queries = [
        "SELECT 'profile' || ROW(s.brin, p.kind, p.las_key, p.status, p.version, p.data_version, p.email_version,
                p.first_name, p.name_prefix, p.last_name, p.birth_date, p.street, p.postcode, p.city, p.phone,
                p.mobile, p.emergency_phone, p.email, p.role,
                p.las_group_keys, p.in_intake, p.deactivation_reason)::text
         FROM profiles p JOIN schools s ON s.id = p.school_id",
        "SELECT 'group' || ROW(s.brin, g.las_key, g.name, g.group_type, g.las_kind, g.status, g.maps_to_key,
                g.parents_see_other_groups, g.year_group_keys, g.student_keys, g.version)::text
         FROM portal_groups g JOIN schools s ON s.id = g.school_id",
        "SELECT 'member' || ROW(s.brin, m.group_key, m.group_name, m.member_kind, m.member_key)::text
         FROM portal_group_members m JOIN schools s ON s.id = m.school_id",
        "SELECT 'link' || ROW(s.brin, l.guardian_key, l.student_key)::text
         FROM guardian_students l JOIN schools s ON s.id = l.school_id",
        "SELECT 'email' || ROW(e.to_address, e.subject, e.body_text)::text FROM email_outbox e",
    ];
    let mut rows = Vec::new();
    for q in queries {
        let mut r: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(q.to_owned()))
            .fetch_all(&env.db)
            .await
            .unwrap();
        rows.append(&mut r);
    }
    rows.sort();
    rows
}

/// Sums two or more `message_counts` maps.
fn add_counts(maps: &[&BTreeMap<String, u64>]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for m in maps {
        for (k, v) in *m {
            *out.entry(k.clone()).or_default() += v;
        }
    }
    out
}

fn count(c: &BTreeMap<String, u64>, outcome: &str) -> u64 {
    c.get(outcome).copied().unwrap_or(0)
}

/// A ParnasSys guardian upsert at `version`; the e-mail only in odd versions
/// (R4 keeps the newest e-mail the LAS had).
fn versioned_guardian(brin: &str, env_id: &str, key: &str, version: u64) -> Value {
    let email =
        (version % 2 == 1).then(|| format!("{}.v{version}@example.org", key.to_lowercase()));
    change(
        brin,
        parnassys(env_id),
        version,
        json!({"type": "guardian.upserted", "las_key": key, "first_name": "Ouder",
               "last_name": format!("V{version}"), "phone": format!("030-{version:07}"),
               "email": email, "student_keys": []}),
    )
}

/// Asserts every guardian `G0000..` of `brin` is at `version` with that
/// version's fields, waiting up to `timeout`.
async fn wait_guardians_at(
    env: &TestEnv,
    brin: &str,
    keys: usize,
    version: u64,
    timeout: Duration,
) {
    let last_odd = if version % 2 == 1 {
        version
    } else {
        version - 1
    };
    wait_for(
        &format!("{keys} guardians of {brin} at version {version}"),
        timeout,
        async || {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM profiles p JOIN schools s ON s.id = p.school_id
                 WHERE s.brin = $1 AND p.kind = 'guardian' AND p.status = 'active' AND p.version = $2
                   AND p.last_name = $3 AND p.phone = $4 AND p.email = 'g' || lower(substr(p.las_key, 2)) || '.v' || $5 || '@example.org'",
            )
            .bind(brin)
            .bind(version as i64)
            .bind(format!("V{version}"))
            .bind(format!("030-{version:07}"))
            .bind(last_odd.to_string())
            .fetch_one(&env.db)
            .await
            .unwrap_or(-1);
            if n == keys as i64 {
                Ok(())
            } else {
                Err(format!("{n} of {keys} (log: {})", env.log_path.display()))
            }
        },
    )
    .await;
}

/// `keys` guardians `G0000..` with versions `1..=versions`, in version order.
fn guardian_versions(brin: &str, env_id: &str, keys: usize, versions: u64) -> Vec<Value> {
    let mut out = Vec::new();
    for v in 1..=versions {
        for k in 0..keys {
            out.push(versioned_guardian(brin, env_id, &format!("G{k:04}"), v));
        }
    }
    out
}

/// Asserts the dead-letter queue and both input queues are empty.
async fn assert_queues_drained(env: &TestEnv) {
    assert_queues_drained_except_dead_letters(env).await;
    let depths = env.queue_depths();
    assert_eq!(
        depths.get(las_contracts::DEAD_LETTER_QUEUE).copied(),
        Some(0),
        "nothing dead-lettered: {depths:?}"
    );
}

/// A school of the storm test: year groups renamed in v2, students that move
/// group in v2 and partly leave in v3, guardians whose e-mail is only in v1
/// (R4 keeps it) and partly leave, staff. In LAS order (version order).
fn school_load(brin: &str) -> Vec<Value> {
    let s = || parnassys(P);
    let mut v = Vec::new();
    for g in 1..=4 {
        for (ver, name) in [(1, format!("Groep {g}")), (2, format!("Groep {g}a"))] {
            v.push(change(brin, s(), ver, json!({"type": "group.upserted", "las_key": format!("Y{g}"), "name": name, "kind": "year"})));
        }
    }
    for i in 0..80 {
        let key = format!("S{i:03}");
        v.push(change(brin, s(), 1, json!({"type": "student.upserted", "las_key": key, "first_name": format!("Kind{i}"),
            "last_name": "Een", "birth_date": "2017-05-01", "group_keys": [format!("Y{}", i % 4 + 1)]})));
        v.push(change(brin, s(), 2, json!({"type": "student.upserted", "las_key": key, "first_name": format!("Kind{i}"),
            "last_name": "Twee", "birth_date": "2017-05-01", "street": "Schoolstraat 1", "group_keys": [format!("Y{}", (i + 1) % 4 + 1)]})));
        if i % 10 == 0 {
            v.push(change(
                brin,
                s(),
                3,
                json!({"type": "student.removed", "las_key": key}),
            ));
        }
    }
    for i in 0..40 {
        let key = format!("O{i:03}");
        let students = [format!("S{:03}", 2 * i), format!("S{:03}", 2 * i + 1)];
        v.push(change(brin, s(), 1, json!({"type": "guardian.upserted", "las_key": key, "first_name": "Ouder", "last_name": format!("O{i}"),
            "phone": "030-1111111", "email": format!("o{i}@example.org"), "student_keys": students})));
        v.push(change(brin, s(), 2, json!({"type": "guardian.upserted", "las_key": key, "first_name": "Ouder", "last_name": format!("O{i}"),
            "phone": "030-2222222", "email": null, "mobile": "06-22222222", "student_keys": students})));
        if i % 7 == 0 {
            v.push(change(
                brin,
                s(),
                3,
                json!({"type": "guardian.removed", "las_key": key}),
            ));
        }
    }
    for i in 0..5 {
        v.push(change(brin, s(), 1, json!({"type": "staff.upserted", "las_key": format!("T{i}"), "first_name": "Juf",
            "last_name": format!("T{i}"), "email": format!("t{i}@school.example"), "group_keys": [format!("Y{}", i % 4 + 1)]})));
    }
    v
}

/// The parent edits of the storm test: one per guardian that stays active.
fn storm_edits(brin: &str) -> Vec<Value> {
    (1..40)
        .filter(|i| i % 7 != 0)
        .take(6)
        .map(|i| {
            edit(
                brin,
                &format!("O{i:03}"),
                json!([{"field": "phone", "proposed": format!("06-9{i:07}")}]),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 1. Duplicate delivery storm
// ---------------------------------------------------------------------------

/// Every message of a school (versions, moves, removals, parent edits)
/// published two or three times in a shuffled order (seed 8001) ends in the
/// same portal state as one in-order delivery in another world, with the same
/// e-mails (each once) and each sync event delivered once.
#[tokio::test(flavor = "multi_thread")]
async fn duplicate_storm_in_shuffled_order_equals_in_order_and_sends_nothing_twice() {
    const BRIN: &str = "12AB";
    let load = school_load(BRIN);
    let edits = storm_edits(BRIN);
    let mut rng = StdRng::seed_from_u64(8001);

    // Reference: in order, once each.
    let reference = TestEnv::start().await;
    reference.link(parnassys_link(BRIN, P)).await;
    reference.publish_many(&load).await;
    wait_processed(&reference, &ids(&load), Duration::from_secs(90)).await;
    recipients(&reference, BRIN).await;
    reference.publish_many(&edits).await;
    wait_processed(&reference, &ids(&edits), Duration::from_secs(90)).await;

    // The storm: each message 2 or 3 times, shuffled, LAS changes first and
    // the parent edits once the LAS state has settled (an edit is judged
    // against the state it meets, so only its duplicates are shuffled).
    let storm = TestEnv::start().await;
    storm.bind_events_queue().await;
    storm.link(parnassys_link(BRIN, P)).await;
    let multiply = |msgs: &[Value], rng: &mut StdRng| {
        let mut out = Vec::new();
        for m in msgs {
            for _ in 0..rng.random_range(2..=3) {
                out.push(m.clone());
            }
        }
        out.shuffle(rng);
        out
    };
    let stormed_load = multiply(&load, &mut rng);
    let stormed_edits = multiply(&edits, &mut rng);
    storm.publish_many(&stormed_load).await;
    wait_processed(&storm, &ids(&load), Duration::from_secs(90)).await;
    recipients(&storm, BRIN).await;
    storm.publish_many(&stormed_edits).await;
    let deliveries = 1 + stormed_load.len() as u64 + stormed_edits.len() as u64;
    let distinct = 1 + load.len() as u64 + edits.len() as u64;
    let counts = storm.wait_handled(deliveries).await;
    assert_queues_drained(&storm).await;

    // Counts reconcile exactly: every delivery is applied, stale or a
    // duplicate; each distinct message is applied or stale exactly once.
    assert_eq!(count(&counts, "rejected"), 0, "{counts:?}");
    assert_eq!(
        counts.values().sum::<u64>(),
        deliveries,
        "published = applied + duplicate + stale + dead-lettered: {counts:?}"
    );
    assert_eq!(
        count(&counts, "applied") + count(&counts, "stale"),
        distinct,
        "each distinct message applied or stale once: {counts:?}"
    );
    assert_eq!(
        count(&counts, "duplicate"),
        deliveries - distinct,
        "every extra copy is a duplicate: {counts:?}"
    );

    // Same portal state as the in-order run.
    let (a, b) = (portal_state(&reference).await, portal_state(&storm).await);
    let only_ref: Vec<&String> = a.iter().filter(|r| !b.contains(r)).collect();
    let only_storm: Vec<&String> = b.iter().filter(|r| !a.contains(r)).collect();
    assert!(
        only_ref.is_empty() && only_storm.is_empty(),
        "state differs from the in-order run\nonly in-order: {only_ref:#?}\nonly storm: {only_storm:#?}"
    );
    assert_eq!(a.len(), b.len());

    // E-mails: one suggestion per edit, one e-mail per recipient, each once.
    let n_mails = edits.len() * 2;
    let (suggestions, emails, keys): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM suggestions), count(*), count(DISTINCT idempotency_key) FROM email_outbox",
    )
    .fetch_one(&storm.db)
    .await
    .unwrap();
    assert_eq!(
        (suggestions, emails, keys),
        (edits.len() as i64, n_mails as i64, n_mails as i64),
        "(suggestions, e-mails, distinct idempotency keys)"
    );
    wait_for(
        "every e-mail written once",
        Duration::from_secs(60),
        async || {
            let m = storm.mails().len();
            if m == n_mails {
                Ok(())
            } else {
                Err(format!("{m} .eml files"))
            }
        },
    )
    .await;

    // Events: every outbox event delivered, none twice.
    let outbox: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT event_id FROM event_outbox_events")
        .fetch_all(&storm.db)
        .await
        .unwrap();
    let events = storm.wait_events(outbox.len()).await;
    let received: Vec<&str> = events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    let unique: HashSet<&str> = received.iter().copied().collect();
    assert_eq!(unique.len(), received.len(), "an event was delivered twice");
    let outbox_set: HashSet<String> = outbox.iter().map(|u| u.to_string()).collect();
    assert_eq!(
        unique.iter().map(|s| s.to_string()).collect::<HashSet<_>>(),
        outbox_set,
        "received events = outbox events"
    );
    let mut created: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in &events {
        if e["event_type"] == "profile.created" || e["event_type"] == "group.created" {
            *created
                .entry((
                    e["event_type"].as_str().unwrap().to_owned(),
                    e["las_key"].as_str().unwrap_or("").to_owned(),
                ))
                .or_default() += 1;
        }
    }
    let twice: Vec<_> = created.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "created more than once: {twice:?}");
}

// ---------------------------------------------------------------------------
// 2. Out-of-order versions, two worker processes
// ---------------------------------------------------------------------------

/// Two worker processes consume the same queues while 200 guardians x 5
/// versions arrive shuffled (seed 8002): both take part, every guardian ends at
/// its highest version with that version's fields (and the e-mail of the
/// newest version that had one, R4), and the two processes' counts add up to
/// exactly what was published.
#[tokio::test(flavor = "multi_thread")]
async fn out_of_order_versions_across_two_workers_end_at_the_highest_version() {
    const BRIN: &str = "23BC";
    const KEYS: usize = 200;
    const VERSIONS: u64 = 5;
    let env = TestEnv::start_with(&[("BATCH_SIZE", "20"), ("PREFETCH", "40")]).await;
    env.link(parnassys_link(BRIN, P)).await;
    let second = env.spawn_extra_worker("second").await;

    let mut msgs = guardian_versions(BRIN, P, KEYS, VERSIONS);
    msgs.shuffle(&mut StdRng::seed_from_u64(8002));
    let url = env.amqp_url();
    let publisher = {
        let msgs = msgs.clone();
        tokio::spawn(async move {
            for chunk in msgs.chunks(100) {
                publish_many_to(&url, chunk).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    publisher.await.unwrap();
    wait_processed(&env, &ids(&msgs), Duration::from_secs(120)).await;
    wait_guardians_at(&env, BRIN, KEYS, VERSIONS, Duration::from_secs(30)).await;
    assert_queues_drained(&env).await;

    let total = 1 + msgs.len() as u64;
    let mut a = BTreeMap::new();
    let mut b = BTreeMap::new();
    wait_for(
        "both workers' counts to add up",
        Duration::from_secs(30),
        async || {
            a = env.message_counts().await;
            b = second.message_counts().await;
            let sum: u64 = a.values().sum::<u64>() + b.values().sum::<u64>();
            if sum >= total {
                Ok(())
            } else {
                Err(format!("{a:?} + {b:?}"))
            }
        },
    )
    .await;
    let all = add_counts(&[&a, &b]);
    assert!(
        a.values().sum::<u64>() > 0 && b.values().sum::<u64>() > 1,
        "both processes consumed: first {a:?}, second {b:?}"
    );
    assert_eq!(count(&all, "rejected"), 0, "{all:?}");
    assert_eq!(
        count(&all, "duplicate"),
        0,
        "no redelivery without a fault: {all:?}"
    );
    assert_eq!(
        all.values().sum::<u64>(),
        total,
        "published = applied + duplicate + stale + dead-lettered: {all:?}"
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE kind = 'guardian'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(n, KEYS as i64, "one profile per guardian, none doubled");
}

// ---------------------------------------------------------------------------
// 3. Poison in a load
// ---------------------------------------------------------------------------

/// 600 good changes with 60 poison messages mixed in at seeded positions
/// (seed 8003): invalid JSON, an unknown schema, a message over 1 MiB, an
/// unknown BRIN, an ESIS environment with the wrong label, a missing LAS key.
/// Each poison message is in the dead-letter queue, body unchanged, with its
/// own reason; every good message is applied; the worker process and its
/// broker connections stay the same throughout.
#[tokio::test(flavor = "multi_thread")]
async fn poison_messages_in_a_load_are_dead_lettered_with_their_reason_and_the_rest_applied() {
    const BRIN: &str = "34CD";
    const ESIS_BRIN: &str = "45DE";
    let mut env = TestEnv::start().await;
    let pid = env.worker_pid().unwrap();
    env.link(parnassys_link(BRIN, P)).await;
    env.link(esis_link(ESIS_BRIN, "esis-1")).await;
    let mut rng = StdRng::seed_from_u64(8003);
    let changes_x = las_contracts::LAS_CHANGES_EXCHANGE.to_owned();

    let good: Vec<Value> = (0..600)
        .map(|i| {
            if i % 2 == 0 {
                versioned_guardian(BRIN, P, &format!("G{i:04}"), 1)
            } else {
                change(ESIS_BRIN, esis("esis-1", las_contracts::ESIS_PORTAL_LABEL), 1,
                    json!({"type": "student.upserted", "las_key": format!("L{i:04}"), "first_name": "Kind"}))
            }
        })
        .collect();
    let as_bytes = |m: &Value| {
        let (x, k) = route(m);
        (x, k, serde_json::to_vec(m).unwrap())
    };
    // (message, expected reason code)
    let mut poison: Vec<(Raw, &str)> = Vec::new();
    for i in 0..10 {
        poison.push((
            (
                changes_x.clone(),
                format!("las.{BRIN}.guardian.upserted"),
                format!("{{\"broken\": {i},").into_bytes(),
            ),
            "invalid_json",
        ));
        let mut m = versioned_guardian(BRIN, P, &format!("X{i}"), 1);
        m["schema"] = json!("las.change.v9");
        poison.push((as_bytes(&m), "unknown_schema"));
        poison.push((
            as_bytes(&change(
                "99ZZ",
                parnassys(P),
                1,
                json!({"type": "student.upserted", "las_key": format!("U{i}")}),
            )),
            "unknown_brin",
        ));
        poison.push((
            as_bytes(&change(
                ESIS_BRIN,
                esis("esis-1", "ParentCom"),
                1,
                json!({"type": "student.upserted", "las_key": format!("W{i}")}),
            )),
            "esis_label",
        ));
        poison.push((
            as_bytes(&change(
                BRIN,
                parnassys(P),
                1,
                json!({"type": "guardian.upserted", "first_name": format!("Geen sleutel {i}")}),
            )),
            "validation_failed",
        ));
        let mut huge = versioned_guardian(BRIN, P, &format!("H{i}"), 1);
        huge["padding"] = json!("x".repeat(1024 * 1024 + 10 + i));
        poison.push((as_bytes(&huge), "too_large"));
    }
    let mut load: Vec<(Raw, &str)> = good.iter().map(|m| (as_bytes(m), "")).collect();
    for p in poison.iter().cloned() {
        let at = rng.random_range(0..=load.len());
        load.insert(at, p);
    }
    let bytes: Vec<Raw> = load.iter().map(|(m, _)| m.clone()).collect();
    publish_bytes_to(&env.amqp_url(), &bytes).await;

    let total = 2 + load.len() as u64;
    let counts = env.wait_handled(total).await;
    wait_processed(&env, &ids(&good), Duration::from_secs(60)).await;
    let dl = env.wait_dead_letters(poison.len()).await;
    assert_eq!(dl.len(), poison.len(), "one dead letter per poison message");
    let mut expected: BTreeMap<Vec<u8>, &str> = BTreeMap::new();
    for ((_, _, body), reason) in &poison {
        expected.insert(body.clone(), reason);
    }
    for (h, body) in &dl {
        let want = expected
            .get(body)
            .unwrap_or_else(|| panic!("a dead letter that was not published as poison: {h:?}"));
        assert_eq!(&h["x-las-reason-code"], want, "reason of {h:?}");
        assert!(!h["x-las-reason"].is_empty(), "a readable reason: {h:?}");
    }
    let seen: BTreeSet<&Vec<u8>> = dl.iter().map(|(_, b)| b).collect();
    assert_eq!(
        seen.len(),
        poison.len(),
        "each poison message dead-lettered once"
    );

    assert_eq!(
        count(&counts, "rejected"),
        poison.len() as u64,
        "{counts:?}"
    );
    assert_eq!(
        count(&counts, "applied"),
        2 + good.len() as u64,
        "{counts:?}"
    );
    assert_eq!(
        counts.values().sum::<u64>(),
        total,
        "published = applied + duplicate + stale + dead-lettered: {counts:?}"
    );
    let profiles: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE status = 'active'")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(
        profiles,
        good.len() as i64,
        "every good message applied, no poison written"
    );

    // The worker never restarted and never lost its broker connections.
    assert!(env.worker_running(), "the worker process is still running");
    assert_eq!(env.worker_pid(), Some(pid));
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    for q in ["changes", "portal"] {
        assert_eq!(
            metric_sample(
                &metrics,
                &format!("las_broker_connections_total{{queue=\"{q}\"}}")
            ),
            Some(1.0),
            "{q}: one connection, no reconnect"
        );
    }
    assert!(!env.log().contains("reconnecting"), "no reconnect logged");
}

// ---------------------------------------------------------------------------
// 5. Broker connection cut by a TCP proxy
// ---------------------------------------------------------------------------

/// The worker reaches the broker through a TCP proxy. Mid-stream the proxy
/// drops every connection (no AMQP close, just a dead socket), and later drops
/// them again and refuses new ones for 4 s. The worker reconnects and
/// re-declares its topology, every change is applied (a delivery acked on a
/// stale channel would be a message acked without being processed: its id
/// would be missing from processed_messages), every guardian ends at its final
/// version, nothing is dead-lettered, and the counts reconcile.
#[tokio::test(flavor = "multi_thread")]
async fn broker_tcp_cut_mid_stream_reconnects_and_loses_nothing() {
    const BRIN: &str = "56EF";
    const KEYS: usize = 300;
    const VERSIONS: u64 = 5;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let mut env = TestEnv::start_without_worker().await;
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/{}", proxy.port, env.vhost);
    env.extra_env_set("AMQP_URL", &via_proxy);
    env.spawn_worker().await;
    env.link(parnassys_link(BRIN, P)).await;

    let msgs = guardian_versions(BRIN, P, KEYS, VERSIONS);
    let total = msgs.len() as u64;
    let url = env.amqp_url();
    let publisher = {
        let msgs = msgs.clone();
        tokio::spawn(async move {
            for chunk in msgs.chunks(50) {
                publish_many_to(&url, chunk).await;
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
        })
    };
    let mut saw_unready = false;
    for (after, refuse) in [(total / 5, None), (total / 2, Some(Duration::from_secs(4)))] {
        wait_for(
            &format!("{after} messages handled before the cut"),
            Duration::from_secs(60),
            async || {
                let n: u64 = env.message_counts().await.values().sum();
                if n >= after {
                    Ok(())
                } else {
                    Err(format!("{n}"))
                }
            },
        )
        .await;
        if let Some(d) = refuse {
            proxy.refuse_for(d).await;
        }
        proxy.sever();
        if let Some(d) = refuse {
            let until = Instant::now() + d;
            while Instant::now() < until {
                if let Some((503, _)) = env.http_get("/readyz").await {
                    saw_unready = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        wait_for(
            "/readyz 200 after the cut",
            Duration::from_secs(60),
            async || match env.http_get("/readyz").await {
                Some((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            },
        )
        .await;
    }
    publisher.await.unwrap();

    wait_processed(&env, &ids(&msgs), Duration::from_secs(120)).await;
    wait_guardians_at(&env, BRIN, KEYS, VERSIONS, Duration::from_secs(30)).await;
    assert_queues_drained(&env).await;
    assert!(
        saw_unready,
        "/readyz said 503 while the broker was unreachable"
    );
    assert!(
        proxy.refused() > 0,
        "the worker tried to reconnect while refused"
    );
    let (_, body) = env.http_get("/metrics").await.unwrap();
    assert_reconnected_twice(&body);
    // One process throughout, so its counts are complete: every delivery was
    // applied, stale or a duplicate (a redelivery after a cut), none rejected,
    // and each distinct message applied or stale once.
    let counts = env.message_counts().await;
    assert_eq!(count(&counts, "rejected"), 0, "{counts:?}");
    assert_eq!(
        count(&counts, "applied") + count(&counts, "stale"),
        1 + total,
        "each distinct message applied or stale exactly once: {counts:?}"
    );
    let (rows, distinct): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT message_id) FROM change_journal WHERE message_id = ANY($1)",
    )
    .bind(ids(&msgs))
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(rows, distinct, "a change was journalled twice");
    assert!(
        env.log().contains("reconnecting"),
        "the worker logged the reconnect"
    );
}

/// A silent partition (issue #17): the path to the broker goes dead without
/// a FIN or RST, as when a NAT entry or a firewall state is lost; new
/// connections get through. The worker's connections carry a 2 s heartbeat
/// (`?heartbeat=2` in `AMQP_URL`, as docs/reliability.md advises for fast
/// detection): lapin notices the missing heartbeats, the worker reconnects
/// by itself, and every change published after the partition is applied
/// once; nothing is lost and nothing is applied twice.
#[tokio::test(flavor = "multi_thread")]
async fn a_silent_partition_is_noticed_by_heartbeat_and_loses_nothing() {
    const BRIN: &str = "78GH";
    const KEYS: usize = 100;
    const VERSIONS: u64 = 3;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let mut env = TestEnv::start_without_worker().await;
    let via_proxy = format!(
        "amqp://guest:guest@127.0.0.1:{}/{}?heartbeat=2",
        proxy.port, env.vhost
    );
    env.extra_env_set("AMQP_URL", &via_proxy);
    env.spawn_worker().await;
    env.link(parnassys_link(BRIN, P)).await;

    let msgs = guardian_versions(BRIN, P, KEYS, VERSIONS);
    let (before, after) = msgs.split_at(msgs.len() / 2);
    env.publish_many(before).await;
    wait_processed(&env, &ids(before), Duration::from_secs(60)).await;

    proxy.freeze();
    // Published straight to the broker while the worker's path is silent.
    env.publish_many(after).await;
    wait_processed(&env, &ids(after), Duration::from_secs(90)).await;
    wait_guardians_at(&env, BRIN, KEYS, VERSIONS, Duration::from_secs(30)).await;
    assert_queues_drained(&env).await;
    assert!(
        env.log().contains("reconnecting"),
        "the worker logged the reconnect"
    );
    let (_, body) = env.http_get("/metrics").await.unwrap();
    for q in ["changes", "portal"] {
        let n = metric_sample(
            &body,
            &format!("las_broker_connections_total{{queue=\"{q}\"}}"),
        );
        assert!(
            n >= Some(2.0),
            "{q}: a new connection after the partition, got {n:?}"
        );
    }
    let counts = env.message_counts().await;
    assert_eq!(count(&counts, "rejected"), 0, "{counts:?}");
    assert_eq!(
        count(&counts, "applied") + count(&counts, "stale"),
        1 + msgs.len() as u64,
        "each distinct message applied or stale exactly once: {counts:?}"
    );
}

// ---------------------------------------------------------------------------
// 6. kill -9 at random moments
// ---------------------------------------------------------------------------

/// Under a steady load of versioned changes and parent edits, the worker is
/// killed with SIGKILL five times at random moments (seed 8006) and restarted
/// each time. Metrics die with each process, so this test reconciles through
/// the database: every published id is in processed_messages, every guardian
/// is at its final version, the dead-letter queue is empty; every suggestion
/// e-mail reached the (fake) mail API under one idempotency key, no two keys
/// for one recipient of one suggestion; every sync event of the outbox was
/// delivered (at least once; duplicates share their event_id).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_at_random_moments_loses_nothing_and_sends_no_email_twice() {
    const BRIN: &str = "67FA";
    const KEYS: usize = 400;
    const VERSIONS: u64 = 5;
    const EDITS: usize = 10;
    let api = MailApi::start(MailMode::Ok).await;
    let mut env = TestEnv::start_with(&[
        ("MAIL_API_URL", &api.url()),
        ("MAIL_API_TOKEN", "test-token"),
    ])
    .await;
    env.bind_events_queue().await;
    env.link(parnassys_link(BRIN, P)).await;
    let parents: Vec<Value> = (0..EDITS)
        .map(|i| change(BRIN, parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": format!("E{i:02}"), "first_name": "Ouder", "phone": "030-1"})))
        .collect();
    env.publish_many(&parents).await;
    wait_processed(&env, &ids(&parents), Duration::from_secs(60)).await;
    recipients(&env, BRIN).await;

    let mut rng = StdRng::seed_from_u64(8006);
    let mut msgs = guardian_versions(BRIN, P, KEYS, VERSIONS);
    for i in 0..EDITS {
        let at = rng.random_range(0..=msgs.len());
        msgs.insert(
            at,
            edit(
                BRIN,
                &format!("E{i:02}"),
                json!([{"field": "phone", "proposed": format!("06-{i:08}")}]),
            ),
        );
    }
    let url = env.amqp_url();
    let publisher = {
        let msgs = msgs.clone();
        tokio::spawn(async move {
            for chunk in msgs.chunks(50) {
                publish_many_to(&url, chunk).await;
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        })
    };
    let mut moments = Vec::new();
    for _ in 0..5 {
        let ms = rng.random_range(300..2500u64);
        moments.push(ms);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        env.kill_worker();
        env.spawn_worker().await;
    }
    publisher.await.unwrap();

    wait_processed(&env, &distinct_ids(&msgs), Duration::from_secs(120)).await;
    wait_guardians_at(&env, BRIN, KEYS, VERSIONS, Duration::from_secs(30)).await;
    assert_queues_drained(&env).await;
    let journal: (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT message_id) FROM change_journal")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(
        journal.0, journal.1,
        "a change was journalled twice (kills after {moments:?} ms)"
    );

    // E-mails: one per recipient per edit, each delivered under its own key.
    let want = (EDITS * 2) as i64;
    wait_emails_sent(
        &env,
        &api,
        want,
        Duration::from_secs(90),
        "every e-mail sent",
    )
    .await;
    let (rows, pairs, suggestions): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT (suggestion_id, recipient_user_id)), (SELECT count(*) FROM suggestions) FROM email_outbox",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(
        (rows, pairs, suggestions),
        (want, want, EDITS as i64),
        "(e-mails, distinct suggestion x recipient, suggestions)"
    );
    let outbox_keys = outbox_keys(&env).await;
    let delivered = api.delivered();
    let delivered_keys: BTreeSet<String> = delivered.iter().cloned().collect();
    assert_eq!(
        delivered_keys, outbox_keys,
        "the API got every e-mail, under its outbox key"
    );
    eprintln!(
        "kill moments {moments:?} ms; API calls {}, accepted {} for {} e-mails (a repeat carries the same key)",
        api.calls().len(),
        delivered.len(),
        outbox_keys.len()
    );

    // Events: every outbox event published and received at least once.
    let outbox = outbox_event_ids(&env).await;
    let mut received: BTreeSet<String> = BTreeSet::new();
    wait_for(
        "every outbox event received",
        Duration::from_secs(90),
        async || {
            for e in env.take_events().await {
                received.insert(e["event_id"].as_str().unwrap().to_owned());
            }
            let missing = outbox.difference(&received).count();
            if missing == 0 {
                Ok(())
            } else {
                Err(format!("{missing} of {} missing", outbox.len()))
            }
        },
    )
    .await;
    assert!(
        received.is_subset(&outbox),
        "no event that is not in the outbox"
    );
}

// ---------------------------------------------------------------------------
// 7. Slow and failing e-mail API
// ---------------------------------------------------------------------------

/// The e-mail API answers 500, then 429 (with Retry-After), then takes 1.5 s
/// per call. While it fails, 2,000 LAS changes are consumed all the same, and
/// while it is slow another 1,000; when it recovers every suggestion e-mail is
/// delivered, each under one idempotency key, none accepted twice.
#[tokio::test(flavor = "multi_thread")]
async fn slow_and_failing_mail_api_blocks_no_consumption_and_every_email_goes_out_once() {
    const BRIN: &str = "78AB";
    const EDITS: usize = 5;
    let api = MailApi::start(MailMode::Fail(500)).await;
    let env = TestEnv::start_with(&[
        ("MAIL_API_URL", &api.url()),
        ("MAIL_API_TOKEN", "test-token"),
        ("MAIL_TIMEOUT_MS", "3000"),
    ])
    .await;
    env.link(parnassys_link(BRIN, P)).await;
    let parents: Vec<Value> = (0..EDITS)
        .map(|i| change(BRIN, parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": format!("E{i:02}"), "first_name": "Ouder", "phone": "030-1"})))
        .collect();
    env.publish_many(&parents).await;
    wait_processed(&env, &ids(&parents), Duration::from_secs(60)).await;
    recipients(&env, BRIN).await;
    let edits: Vec<Value> = (0..EDITS)
        .map(|i| {
            edit(
                BRIN,
                &format!("E{i:02}"),
                json!([{"field": "phone", "proposed": format!("06-{i:08}")}]),
            )
        })
        .collect();
    env.publish_many(&edits).await;
    wait_processed(&env, &ids(&edits), Duration::from_secs(60)).await;

    // Failing: 500s. The LAS stream is consumed regardless.
    let load = guardian_versions(BRIN, P, 1000, 2);
    let started = Instant::now();
    env.publish_many(&load).await;
    wait_processed(&env, &ids(&load), Duration::from_secs(60)).await;
    let failing_drain = started.elapsed();
    wait_for(
        "the API to be called and fail",
        Duration::from_secs(30),
        async || {
            let calls = api.calls();
            if calls.iter().any(|c| c.status == 500) {
                Ok(())
            } else {
                Err(format!("{calls:?}"))
            }
        },
    )
    .await;
    assert!(api.delivered().is_empty(), "nothing accepted while failing");

    // Rate limited: 429 with Retry-After.
    api.set_mode(MailMode::Fail(429));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !api.calls().iter().any(|c| c.status == 429) {
        assert!(
            Instant::now() < deadline,
            "the API was not called while rate limiting"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Slow: 1.5 s per call. Consumption still goes on at its own pace.
    api.set_mode(MailMode::Slow(Duration::from_millis(1500)));
    let load2 = guardian_versions(BRIN, P, 1000, 3)[2000..].to_vec();
    let started = Instant::now();
    env.publish_many(&load2).await;
    wait_processed(&env, &ids(&load2), Duration::from_secs(60)).await;
    let slow_drain = started.elapsed();

    let want = (EDITS * 2) as i64;
    wait_emails_sent(
        &env,
        &api,
        want,
        Duration::from_secs(180),
        "every e-mail sent once the API answers",
    )
    .await;
    let delivered = api.delivered();
    let keys: BTreeSet<&String> = delivered.iter().collect();
    assert_eq!(
        delivered.len(),
        want as usize,
        "each e-mail accepted once: {delivered:?}"
    );
    assert_eq!(keys.len(), want as usize, "one key per e-mail");
    let (_, metrics) = env.http_get("/metrics").await.unwrap();
    for reason in ["server_error", "rate_limited"] {
        assert!(
            metric_sum(
                &metrics,
                "las_emails_total",
                &[("outcome", "retry"), ("reason", reason)]
            ) >= 1.0,
            "retries counted as {reason}"
        );
    }
    assert_eq!(
        metric_sum(&metrics, "las_emails_total", &[("outcome", "sent")]),
        want as f64
    );
    assert_queues_drained(&env).await;
    eprintln!(
        "drained 2,000 changes in {failing_drain:?} while the API failed, 1,000 in {slow_drain:?} while slow"
    );
}

// ---------------------------------------------------------------------------
// 9. Soak
// ---------------------------------------------------------------------------

/// What the soak's publisher sent.
#[derive(Default)]
struct SoakSent {
    /// Every distinct message id that must end up applied (or stale).
    ids: Vec<uuid::Uuid>,
    /// Deliveries: distinct messages, duplicate copies and poison.
    deliveries: usize,
    duplicates: usize,
    stale: usize,
    /// Poison per expected reason code.
    poison: BTreeMap<String, usize>,
    edits: usize,
}

/// The soak's load, generated chunk by chunk (seed 8009) and published at a
/// steady `rate` per second: `n` good changes of `keys` guardians whose
/// versions rise by one per round; every 50th followed by a duplicate copy,
/// every 100th by a stale version, every 1000th by a poison message; ten
/// parent edits spread over the run. `progress` counts good changes sent.
async fn soak_publisher(
    url: String,
    n: usize,
    keys: usize,
    rate: u64,
    brin: &'static str,
    esis_brin: &'static str,
    progress: std::sync::Arc<std::sync::atomic::AtomicUsize>,
) -> SoakSent {
    let mut rng = StdRng::seed_from_u64(8009);
    let mut sent = SoakSent::default();
    let started = Instant::now();
    let changes_x = las_contracts::LAS_CHANGES_EXCHANGE.to_owned();
    let bytes = |m: &Value| {
        let (x, k) = route(m);
        (x, k, serde_json::to_vec(m).unwrap())
    };
    let edit_at: Vec<usize> = (1..=10).map(|k| n * k / 11).collect();
    let mut poison_n = 0usize;
    let mut i = 0usize;
    while i < n {
        let mut chunk = Vec::with_capacity(600);
        let end = (i + 500).min(n);
        while i < end {
            let key = format!("G{:04}", i % keys);
            let version = (i / keys + 1) as u64;
            let m = versioned_guardian(brin, P, &key, version);
            sent.ids
                .push(m["message_id"].as_str().unwrap().parse().unwrap());
            chunk.push(bytes(&m));
            if i % 50 == 49 {
                chunk.push(bytes(&m));
                sent.duplicates += 1;
            }
            if i % 100 == 99 {
                let old = versioned_guardian(brin, P, &key, version.saturating_sub(1).max(1));
                sent.ids
                    .push(old["message_id"].as_str().unwrap().parse().unwrap());
                chunk.push(bytes(&old));
                sent.stale += 1;
            }
            if i % 1000 == 999 {
                let (body, reason) = match poison_n % 12 {
                    0 | 6 => (
                        (
                            changes_x.clone(),
                            format!("las.{brin}.guardian.upserted"),
                            b"{\"half\": ".to_vec(),
                        ),
                        "invalid_json",
                    ),
                    1 | 7 => {
                        let mut m = versioned_guardian(brin, P, "X1", 1);
                        m["schema"] = json!("las.change.v9");
                        (bytes(&m), "unknown_schema")
                    }
                    2 | 8 => (
                        bytes(&change(
                            "99ZZ",
                            parnassys(P),
                            1,
                            json!({"type": "student.upserted", "las_key": "U1"}),
                        )),
                        "unknown_brin",
                    ),
                    3 | 9 => (
                        bytes(&change(
                            esis_brin,
                            esis("esis-1", "BasisschoolApps"),
                            1,
                            json!({"type": "student.upserted", "las_key": "W1"}),
                        )),
                        "esis_label",
                    ),
                    4 | 10 => (
                        bytes(&change(
                            brin,
                            parnassys(P),
                            1,
                            json!({"type": "guardian.upserted", "first_name": "Geen sleutel"}),
                        )),
                        "validation_failed",
                    ),
                    _ => {
                        let mut m = versioned_guardian(brin, P, "H1", 1);
                        m["padding"] = json!("x".repeat(1024 * 1024 + 10));
                        (bytes(&m), "too_large")
                    }
                };
                chunk.push(body);
                *sent.poison.entry(reason.to_owned()).or_default() += 1;
                poison_n += 1;
            }
            if let Some(k) = edit_at.iter().position(|&at| at == i) {
                let e = edit(
                    brin,
                    &format!("E{k:02}"),
                    json!([{"field": "phone", "proposed": format!("06-{:08}", rng.random_range(0..100_000_000u32))}]),
                );
                sent.ids
                    .push(e["message_id"].as_str().unwrap().parse().unwrap());
                chunk.push(bytes(&e));
                sent.edits += 1;
            }
            i += 1;
        }
        sent.deliveries += chunk.len();
        publish_bytes_to(&url, &chunk).await;
        progress.store(i, std::sync::atomic::Ordering::SeqCst);
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
    sent
}

/// 200,000 changes (SOAK_MESSAGES) at a steady low rate (SOAK_RATE per second,
/// default 1,000) with duplicates, stale versions, poison and parent edits
/// mixed in, and at set points of the run: a kill -9 and restart (10%), a
/// broker cut with 2 s of refused connections through the TCP proxy (30%),
/// every database session of the worker terminated (45%), and the e-mail API
/// answering 503 until 50%, 429 until 70%, then 200.
///
/// Nothing lost: every distinct message id in processed_messages, every
/// guardian at its final version, each poison message dead-lettered with its
/// reason, every e-mail delivered under its own key, every event published.
/// (Metrics restart with the killed process, so counts reconcile through the
/// database and the dead-letter queue.)
///
/// Memory flat: the worker's RSS (from /proc) is sampled every 500 ms. The
/// process measured is the one started after the kill. Warm-up is the run up
/// to 20%; the baseline is the highest RSS between 20% and 45% of the load
/// published, and the highest RSS from 50% to the end of the drain may exceed
/// it by at most 25% (a leak proportional to messages would double it over
/// the second half), and must stay under 128 MiB (a debug build).
#[tokio::test(flavor = "multi_thread")]
async fn soak_200k_messages_with_all_faults_keeps_memory_flat_and_loses_nothing() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const BRIN: &str = "90CD";
    const ESIS_BRIN: &str = "91CD";
    const KEYS: usize = 2000;
    const EDITS: usize = 10;
    let n: usize = std::env::var("SOAK_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let rate: u64 = std::env::var("SOAK_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    assert!(n >= KEYS * 2, "SOAK_MESSAGES must be at least {}", KEYS * 2);
    let test_started = Instant::now();

    let api = MailApi::start(MailMode::Fail(503)).await;
    let proxy = TcpProxy::start("127.0.0.1:5672").await;
    let mut env = TestEnv::start_without_worker().await;
    let via_proxy = format!("amqp://guest:guest@127.0.0.1:{}/{}", proxy.port, env.vhost);
    for (k, v) in [
        ("AMQP_URL", via_proxy.as_str()),
        ("MAIL_API_URL", &api.url()),
        ("MAIL_API_TOKEN", "test-token"),
        ("MAIL_TIMEOUT_MS", "2000"),
        // One debug line per message would be gigabytes of log.
        ("RUST_LOG", "info,sqlx=warn,lapin=warn"),
    ] {
        env.extra_env_set(k, v);
    }
    env.spawn_worker().await;
    env.link(parnassys_link(BRIN, P)).await;
    env.link(esis_link(ESIS_BRIN, "esis-1")).await;
    let parents: Vec<Value> = (0..EDITS)
        .map(|i| change(BRIN, parnassys(P), 1, json!({"type": "guardian.upserted", "las_key": format!("E{i:02}"), "first_name": "Ouder", "phone": "030-1"})))
        .collect();
    env.publish_many(&parents).await;
    wait_processed(&env, &ids(&parents), Duration::from_secs(60)).await;
    recipients(&env, BRIN).await;

    let progress = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(soak_publisher(
        env.amqp_url(),
        n,
        KEYS,
        rate,
        BRIN,
        ESIS_BRIN,
        progress.clone(),
    ));

    // Faults at set points, memory samples throughout: (fraction, RSS KiB).
    let mut samples: Vec<(f64, u64)> = Vec::new();
    let mut done = [false; 5];
    let db = env.database.clone();
    while !publisher.is_finished() {
        let f = progress.load(Ordering::SeqCst) as f64 / n as f64;
        if f >= 0.10 && !done[0] {
            done[0] = true;
            env.kill_worker();
            env.spawn_worker().await;
            eprintln!("soak: kill -9 and restart at {:.0}%", f * 100.0);
        }
        if f >= 0.30 && !done[1] {
            done[1] = true;
            proxy.refuse_for(Duration::from_secs(2)).await;
            proxy.sever();
            eprintln!("soak: broker cut at {:.0}%", f * 100.0);
        }
        if f >= 0.45 && !done[2] {
            done[2] = true;
            let admin = sqlx::PgPool::connect(PG_ADMIN_URL).await.unwrap();
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
            )))
            .execute(&admin)
            .await
            .unwrap();
            admin.close().await;
            eprintln!("soak: database sessions terminated at {:.0}%", f * 100.0);
        }
        if f >= 0.50 && !done[3] {
            done[3] = true;
            api.set_mode(MailMode::Fail(429));
        }
        if f >= 0.70 && !done[4] {
            done[4] = true;
            api.set_mode(MailMode::Ok);
        }
        if let Some((rss, _)) = env.worker_pid().and_then(process_memory_kib) {
            samples.push((f, rss));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = publisher.await.unwrap();
    let published_in = test_started.elapsed();
    eprintln!(
        "soak: published {} deliveries ({} distinct, {} duplicates, {} stale, {:?} poison, {} edits) in {published_in:?}",
        sent.deliveries,
        sent.ids.len(),
        sent.duplicates,
        sent.stale,
        sent.poison,
        sent.edits
    );

    // Drain, sampling memory as the last of the load is applied.
    let want = sent.ids.len() as i64;
    let drain_deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Some((rss, _)) = env.worker_pid().and_then(process_memory_kib) {
            samples.push((1.0, rss));
        }
        let got = processed(&env, &sent.ids).await;
        if got == want {
            break;
        }
        assert!(
            Instant::now() < drain_deadline,
            "expected all {want} distinct message ids in processed_messages within 600 s of the end of publishing; seen {got}; log: {}",
            env.log_path.display()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let drained_in = test_started.elapsed();
    assert!(
        env.worker_running(),
        "the worker (after the one kill) never died"
    );

    // Every guardian at its final version with that version's fields.
    let final_version = |k: usize| ((n - 1 - k) / KEYS + 1) as i64;
    let rows: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT p.las_key, p.version, p.last_name FROM profiles p JOIN schools s ON s.id = p.school_id
         WHERE s.brin = $1 AND p.kind = 'guardian' AND p.las_key LIKE 'G%' ORDER BY 1",
    )
    .bind(BRIN)
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), KEYS, "one profile per guardian key");
    for (k, (key, version, last_name)) in rows.iter().enumerate() {
        assert_eq!(key, &format!("G{k:04}"));
        assert_eq!(*version, final_version(k), "{key} at its final version");
        assert_eq!(
            last_name.as_deref(),
            Some(format!("V{}", final_version(k)).as_str()),
            "{key}: fields of the final version"
        );
    }
    assert_queues_drained_except_dead_letters(&env).await;

    // Dead letters: exactly the poison, each with its reason.
    let poison_total: usize = sent.poison.values().sum();
    let dl = env.wait_dead_letters(poison_total).await;
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for (h, _) in &dl {
        *reasons.entry(h["x-las-reason-code"].clone()).or_default() += 1;
    }
    assert_eq!(
        reasons, sent.poison,
        "dead letters by reason = poison published"
    );
    // Reconcile: deliveries = distinct applied-or-stale + duplicate copies + dead-lettered.
    assert_eq!(
        sent.deliveries,
        sent.ids.len() + sent.duplicates + poison_total,
        "published = applied/stale (distinct ids, all in processed_messages) + duplicates + dead-lettered"
    );

    // E-mails: every suggestion's e-mails delivered once the API recovered.
    let want_mails = (EDITS * 2) as i64;
    wait_emails_sent(
        &env,
        &api,
        want_mails,
        Duration::from_secs(180),
        "every soak e-mail sent",
    )
    .await;
    let outbox_keys = outbox_keys(&env).await;
    let delivered: BTreeSet<String> = api.delivered().into_iter().collect();
    assert_eq!(
        delivered, outbox_keys,
        "every e-mail delivered under its own key"
    );
    // Events: the outbox empties (each published with a broker confirm).
    wait_events_published(&env, Duration::from_secs(120)).await;

    // Memory.
    let max_in = |lo: f64, hi: f64| {
        samples
            .iter()
            .filter(|(f, _)| *f >= lo && *f <= hi)
            .map(|(_, r)| *r)
            .max()
            .unwrap_or(0)
    };
    let baseline = max_in(0.20, 0.45);
    let late = max_in(0.50, 1.0);
    eprintln!(
        "soak: {n} changes, published in {published_in:?}, drained in {drained_in:?}; RSS max 20-45% {} KiB, 50%-end {} KiB, {} samples",
        baseline,
        late,
        samples.len()
    );
    assert!(
        baseline > 0 && late > 0,
        "RSS samples in both windows: {samples:?}"
    );
    assert!(
        late as f64 <= baseline as f64 * 1.25,
        "memory grew: max RSS {late} KiB in the second half vs {baseline} KiB at 20-45% (limit 1.25x)"
    );
    assert!(late <= 128 * 1024, "max RSS {late} KiB over 128 MiB");
}

/// Both input queues empty (the dead-letter queue is checked by the caller).
async fn assert_queues_drained_except_dead_letters(env: &TestEnv) {
    env.wait_queue_depth(las_contracts::CHANGES_QUEUE, 0, Duration::from_secs(60))
        .await;
    env.wait_queue_depth(las_contracts::PORTAL_QUEUE, 0, Duration::from_secs(60))
        .await;
}

// ---------------------------------------------------------------------------
// A dead letter whose acknowledgement was lost
// ---------------------------------------------------------------------------

/// A message is dead-lettered once, and never acknowledged without its dead
/// letter (the soak found a poison message twice in the queue: its dead letter
/// was confirmed, then a cut or a kill lost the ack). Dead letters and the ack
/// are one AMQP transaction on the delivering channel: the worker is aborted
/// after both were sent but before `tx.commit`, and the broker must hold
/// neither; the restarted worker dead-letters the redelivery exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_dead_letter_and_its_ack_take_effect_together_or_not_at_all() {
    use las_contracts::{CHANGES_QUEUE, DEAD_LETTER_QUEUE, LAS_CHANGES_EXCHANGE};
    let mut env = TestEnv::start_without_worker().await;
    env.extra_env_set("LAS_WORKER_FAULTPOINT", "dead-letter-before-commit");
    env.spawn_worker().await;
    let body = b"{ not json: a poison message whose worker dies".to_vec();
    let key = "las.12AB.guardian.upserted";
    env.publish_raw(LAS_CHANGES_EXCHANGE, key, std::slice::from_ref(&body))
        .await;
    wait_for(
        "the worker aborted at the fault point",
        Duration::from_secs(60),
        async || {
            if env.worker_running() {
                Err("still running".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    assert!(
        env.log().contains("fault point reached"),
        "the worker died at the fault point, not elsewhere: {}",
        env.log()
    );
    // Neither the dead letter nor the ack took effect: the message is back.
    env.wait_queue_depth(CHANGES_QUEUE, 1, Duration::from_secs(30))
        .await;
    assert_eq!(
        env.queue_depths().get(DEAD_LETTER_QUEUE),
        Some(&0),
        "an uncommitted dead letter reached the queue"
    );

    env.extra_env_set("LAS_WORKER_FAULTPOINT", "");
    env.spawn_worker().await;
    env.wait_queue_depth(CHANGES_QUEUE, 0, Duration::from_secs(60))
        .await;
    // The ack and the dead letter are committed together.
    assert_eq!(
        env.queue_depths().get(DEAD_LETTER_QUEUE),
        Some(&1),
        "the redelivery is dead-lettered exactly once"
    );

    // A replay is a new message: rejected again, dead-lettered again, with
    // the time of its replay.
    let (code, out) = env.cli(&["dlq", "replay", "--all"]);
    assert_eq!(code, 0, "dlq replay: {out}");
    wait_for(
        "the replayed message dead-lettered again",
        Duration::from_secs(60),
        async || {
            let d = env.queue_depths();
            match (d.get(CHANGES_QUEUE), d.get(DEAD_LETTER_QUEUE)) {
                (Some(0), Some(1)) => Ok(()),
                _ => Err(format!("{d:?}")),
            }
        },
    )
    .await;
    let dl = env.dead_letters().await;
    assert_eq!(dl.len(), 1);
    assert_eq!(dl[0].1, body, "the body travels unchanged");
    assert_eq!(dl[0].0["x-las-reason-code"], "invalid_json");
    assert!(
        dl[0]
            .0
            .contains_key(las_contracts::dead_letter::REPLAYED_AT),
        "the replayed dead letter says when it was replayed: {:?}",
        dl[0].0
    );

    // A new publication of the same body is dead-lettered again.
    env.publish_raw(LAS_CHANGES_EXCHANGE, key, std::slice::from_ref(&body))
        .await;
    let dl = env.wait_dead_letters(1).await;
    assert_eq!((dl.len(), &dl[0].1), (1, &body));
}
