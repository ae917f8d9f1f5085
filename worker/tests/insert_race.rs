//! Two batches that create the same new profile at the same time (#7, with
//! `BATCH_CONCURRENCY` > 1 or replicas): new profiles are inserted with a
//! plain INSERT, so the batch that loses the race gets a unique violation,
//! which must be `StoreError::Conflict` (applied again at once), never a
//! permanent error that would dead-letter a good message. Own database.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use chrono::NaiveDate;
use common::Db;
use las_worker::adapters::db::{MessageOutcome, Store, StoreError};
use las_worker::domain::message::{Inbound, parse};

fn message(path: &str, message_id: &str) -> Inbound {
    let text = std::fs::read_to_string(format!(
        "{}/../contracts/examples/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["message_id"] = serde_json::Value::String(message_id.to_owned());
    parse(serde_json::to_string(&v).unwrap().as_bytes()).unwrap()
}

#[tokio::test]
async fn the_batch_that_loses_a_profile_insert_race_is_a_conflict_and_applies_on_retry() {
    let db = Db::new("lasw_race").await;
    let store = Store::from_pool(db.pool.clone());
    let today = NaiveDate::from_ymd_opt(2026, 9, 14).unwrap();
    store
        .apply_batch(
            &[message(
                "link.parnassys.json",
                "00000000-0000-4000-8000-000000000001",
            )],
            today,
        )
        .await
        .unwrap();

    // Batch A inserts student L1003 and holds its transaction open.
    let first = [message(
        "student.upserted.json",
        "00000000-0000-4000-8000-00000000000a",
    )];
    let tx = db.pool.begin().await.unwrap();
    let (tx, outcomes, _) = store.apply_batch_in(tx, &first, today).await.unwrap();
    assert!(matches!(outcomes[0], MessageOutcome::Applied { .. }));

    // Batch B, another message for the same new student, looked before A
    // committed: its insert waits for A.
    let second = [message(
        "student.upserted.json",
        "00000000-0000-4000-8000-00000000000b",
    )];
    let racer = {
        let store = store.clone();
        let second = second.clone();
        tokio::spawn(async move { store.apply_batch(&second, today).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!racer.is_finished(), "batch B did not wait for batch A");
    tx.commit().await.unwrap();

    let lost = racer.await.unwrap();
    assert!(
        matches!(lost, Err(StoreError::Conflict)),
        "the losing batch must be a Conflict (retried), got {lost:?}"
    );
    assert!(lost.as_ref().err().unwrap().is_transient());

    // Applied again (what the pipeline does at once), B sees A's row.
    let (outcomes, _) = store.apply_batch(&second, today).await.unwrap();
    assert!(
        matches!(
            outcomes[0],
            MessageOutcome::Stale | MessageOutcome::Applied { .. }
        ),
        "{outcomes:?}"
    );
    let profiles: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles WHERE las_key = 'L1003'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(profiles, 1);
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_messages")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(processed, 3, "link, A and B each recorded once");
}
