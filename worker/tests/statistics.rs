//! The statistics keeper (#7): tables that changed by more than autovacuum's
//! analyze threshold are analyzed, the others are left alone, and a cached
//! generic plan is re-planned from the new statistics. Own database.

#![allow(clippy::unwrap_used)]

mod common;

use common::Db;
use las_worker::adapters::db::{AnalyzeMarks, Store};

impl Db {
    async fn analyzed(&self, table: &str) -> bool {
        sqlx::query_scalar(
            "SELECT last_analyze IS NOT NULL FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(&self.pool)
        .await
        .unwrap()
    }
}

/// Waits until PostgreSQL's statistics system has counted the writes (a
/// backend reports them at most once a second, an idle one within 10 s).
async fn until_counted(db: &Db, table: &str, n: i64) {
    for _ in 0..300 {
        let seen: i64 = sqlx::query_scalar(
            "SELECT n_mod_since_analyze FROM pg_stat_user_tables WHERE relname = $1",
        )
        .bind(table)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if seen >= n {
            return;
        }
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&db.pool)
            .await
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("PostgreSQL never counted {n} changes of {table}");
}

#[tokio::test]
async fn tables_past_the_analyze_threshold_are_analyzed_and_the_planner_sees_their_size() {
    let db = Db::new("lasw_stats").await;
    let store = Store::from_pool(db.pool.clone());
    let mut marks = AnalyzeMarks::default();
    // Statistics as migrations left them; nothing is stale yet.
    store.analyze_stale_tables(&mut marks).await.unwrap();

    // 5,000 message ids: past the threshold (50 + 10%) of an empty table.
    sqlx::query(
        "INSERT INTO processed_messages (message_id) SELECT gen_random_uuid() FROM generate_series(1, 5000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // 10 rows in another table: under the threshold.
    sqlx::query(
        "INSERT INTO daily_jobs (job, last_run_date) SELECT 'job' || i, current_date FROM generate_series(1, 10) AS i",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    until_counted(&db, "processed_messages", 5000).await;
    until_counted(&db, "daily_jobs", 10).await;
    assert!(!db.analyzed("daily_jobs").await);

    let analyzed = store.analyze_stale_tables(&mut marks).await.unwrap();
    assert!(
        analyzed.iter().any(|t| t == "processed_messages"),
        "processed_messages grew past the threshold: {analyzed:?}"
    );
    assert!(
        !analyzed.iter().any(|t| t == "daily_jobs"),
        "daily_jobs stayed under it: {analyzed:?}"
    );
    assert!(db.analyzed("processed_messages").await);
    let rows: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'processed_messages'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 5000.0, "the planner now knows the table's size");

    // Nothing changed since: nothing to do.
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&db.pool)
        .await
        .unwrap();
    let again = store.analyze_stale_tables(&mut marks).await.unwrap();
    assert!(
        !again.iter().any(|t| t == "processed_messages"),
        "analyzed twice: {again:?}"
    );

    // Only the columns plans depend on (index keys and predicates) were
    // analyzed, not the unindexed school_id.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT attname::text FROM pg_stats WHERE tablename = 'processed_messages' ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(columns, ["message_id", "processed_at"]);

    // Someone else's full ANALYZE resets PostgreSQL's counter; 6,000 changes
    // after it (more than the keeper's mark of 5,000) are counted in full.
    sqlx::query("ANALYZE processed_messages")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO processed_messages (message_id) SELECT gen_random_uuid() FROM generate_series(1, 6000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    until_counted(&db, "processed_messages", 6000).await;
    let after_reset = store.analyze_stale_tables(&mut marks).await.unwrap();
    assert!(
        after_reset.iter().any(|t| t == "processed_messages"),
        "6,000 changes on 11,000 rows are past the threshold: {after_reset:?}"
    );
    let rows: f32 =
        sqlx::query_scalar("SELECT reltuples FROM pg_class WHERE relname = 'processed_messages'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rows, 11000.0);
}
