//! Background jobs of the long-running worker: the daily job (R9
//! promotions, R12 purge, journal retention), the planner-statistics keeper
//! and the gauges that describe the database rather than this process.

use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::adapters::db::{AnalyzeMarks, Store, journal};
use crate::adapters::metrics::Metrics;
use crate::app::clock::Clock;

/// R9: the daily job, at start and just after every local midnight. The store
/// makes sure it runs once per day across replicas.
pub async fn daily_job(
    store: Store,
    metrics: Metrics,
    clock: Clock,
    journal_days: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        match store.run_daily(clock.today(), false).await {
            Ok(r) if r.ran => {
                metrics.daily_runs.with_label_values(&["ran"]).inc();
                match journal::prune(store.pool(), journal_days).await {
                    Ok(n) => info!(deleted = n, days = journal_days, "change journal pruned"),
                    Err(e) => warn!(error = %e, "change journal not pruned; next run tries again"),
                }
                for (event, n) in [
                    ("promoted", r.promoted),
                    ("placed_in_intake", r.placed_in_intake),
                    ("stays_in_intake", r.stays_in_intake),
                ] {
                    metrics.intake.with_label_values(&[event]).inc_by(n);
                }
                metrics.purged.inc_by(r.purged);
                info!(
                    purged = r.purged,
                    placed_in_intake = r.placed_in_intake,
                    promoted = r.promoted,
                    stays_in_intake = r.stays_in_intake,
                    still_held = r.still_held,
                    "daily job ran"
                );
            }
            Ok(_) => {
                metrics.daily_runs.with_label_values(&["skipped"]).inc();
            }
            Err(e) => {
                metrics.daily_runs.with_label_values(&["failed"]).inc();
                warn!(error = %e, "daily job failed; it runs again at the next tick");
            }
        }
        let wait = clock.until_next_day();
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

/// Keeps the planner statistics of the portal's tables fresh while they grow
/// (`Store::analyze_stale_tables`), so cached plans fit the tables' size.
pub async fn keep_statistics(store: Store, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut marks = AnalyzeMarks::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        match store.analyze_stale_tables(&mut marks).await {
            Ok(tables) if !tables.is_empty() => debug!(?tables, "planner statistics refreshed"),
            Ok(_) => {}
            Err(e) => debug!(error = %e, "planner statistics not refreshed; trying again later"),
        }
    }
}

/// Gauges that describe the database rather than this process: held
/// snapshots, the e-mail outbox and the LAS records waiting to be coupled,
/// refreshed every 15 s.
pub async fn refresh_gauges(
    store: Store,
    metrics: Metrics,
    snapshot_overdue_hours: u32,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Ok(n) = store.held_snapshots().await {
            metrics.snapshots_held.set(n);
        }
        if let Ok(n) = store.outbox_depth().await {
            metrics.outbox_depth.set(n);
        }
        if let Ok(n) = store.coupling_waits().await {
            metrics.coupling_waits.set(n);
        }
        // Issue #16: outboxes are watched by the age of their oldest item (a
        // stuck outbox need not grow), the event outbox here too so a broken
        // publisher cannot leave its gauge stale; and the daily job by its
        // last success on any replica.
        if let Ok(n) = store.email_outbox_oldest_seconds().await {
            metrics.email_outbox_oldest.set(n);
        }
        if let Ok(n) = store.event_outbox_oldest_seconds().await {
            metrics.event_outbox_oldest.set(n);
        }
        if let Ok(n) = store.event_outbox_depth().await {
            metrics.event_outbox_depth.set(n);
        }
        if let Ok(Some(t)) = store.daily_job_last_success().await {
            metrics.daily_job_last_success.set(t);
        }
        // Freshness per school as two aggregates, not one series per school
        // and replica (#16); `school overdue` names the schools.
        if let Ok((linked, overdue)) = store.snapshot_freshness(snapshot_overdue_hours).await {
            metrics.schools_linked.set(linked);
            metrics.schools_snapshot_overdue.set(overdue);
        }
        let (in_use, idle) = store.pool_usage();
        metrics
            .db_pool_connections
            .with_label_values(&["in_use"])
            .set(in_use);
        metrics
            .db_pool_connections
            .with_label_values(&["idle"])
            .set(idle);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

/// The depth and consumers of the worker's queues, the dead-letter queue
/// included, every 15 s (#16). The broker is not always there: a failed
/// round leaves the gauges as they were and tries again.
pub async fn watch_queues(url: String, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    let mut watcher = crate::adapters::amqp::queue_stats::QueueWatcher::default();
    loop {
        match watcher.read(&url).await {
            Ok(stats) => {
                for q in stats {
                    metrics
                        .queue_messages
                        .with_label_values(&[q.role])
                        .set(i64::from(q.messages));
                    metrics
                        .queue_consumers
                        .with_label_values(&[q.role])
                        .set(i64::from(q.consumers));
                }
            }
            Err(e) => tracing::debug!(error = %e, "queue stats not read this round"),
        }
        let stop = tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => false,
            _ = shutdown.wait_for(|v| *v) => true,
        };
        if stop {
            watcher.close().await;
            return;
        }
    }
}

/// R12: dead letters hold message bodies, personal data included; the ones
/// past `term_days` are dropped, and those within a week of it counted, so an
/// operator is warned before anything is dropped. Every replica may sweep:
/// each drops what it took and gives the rest back. The first sweep comes one
/// interval after start, not at start: a sweep holds the letters for a
/// moment, and an operator's `dlq` command right after a deployment should
/// see them all.
pub async fn sweep_dead_letters(
    url: String,
    delivery_limit: i64,
    term_days: u32,
    every: Duration,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
        match crate::adapters::amqp::dead_letters::sweep(
            &url,
            delivery_limit,
            chrono::Utc::now(),
            term_days,
        )
        .await
        {
            Ok(s) => {
                metrics.dead_letters_expired.inc_by(s.expired);
                metrics.dead_letters_expiring.set(s.expiring as i64);
                if s.expired > 0 {
                    info!(
                        expired = s.expired,
                        term_days, "dead letters past their term dropped"
                    );
                }
            }
            Err(e) => warn!(error = %e, "dead-letter sweep failed; the next one tries again"),
        }
    }
}
