//! Every metric the worker exports, defined in one place.
//!
//! Naming follows Prometheus conventions: `las_` prefix, base units
//! (`_seconds`, `_bytes`), `_total` for counters. Labels are bounded sets
//! (message types, outcomes, rule ids, reasons, profile kinds, queue roles).
//! No label carries a school or a person: per-school state is exported as
//! aggregates (`las_schools_snapshot_overdue`), so the series count does not
//! grow with the number of schools (issue #16). No label ever carries
//! personal data.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Messages by type and outcome (applied, duplicate, stale, rejected).
    pub messages: IntCounterVec,
    /// Rule decisions by rule id and action.
    pub decisions: IntCounterVec,
    /// Profiles created, updated, deactivated, reactivated, by kind.
    pub profiles: IntCounterVec,
    /// Dead-lettered messages by reason code.
    pub dead_letters: IntCounterVec,
    /// Time to apply one batch, from first delivery to commit.
    pub batch_seconds: HistogramVec,
    /// Messages per batch.
    pub batch_size: HistogramVec,
    /// Now minus emitted_at, at commit.
    pub lag_seconds: HistogramVec,
    /// Transient failures that were retried, by component.
    pub retries: IntCounterVec,
    /// Broker (re)connections by queue.
    pub connections: IntCounterVec,
    /// Unix time of this replica's last committed batch.
    pub last_commit: IntGauge,
    /// Batches being applied right now (transactions in flight).
    pub batches_in_flight: IntGauge,
    /// Ready messages in the worker's queues, by role (changes, portal,
    /// dead_letter), read with a passive declare.
    pub queue_messages: IntGaugeVec,
    /// Consumers of the worker's queues, by role.
    pub queue_consumers: IntGaugeVec,
    /// Database pool connections by state (in_use, idle).
    pub db_pool_connections: IntGaugeVec,
    /// The pool's maximum size (DB_MAX_CONNECTIONS).
    pub db_pool_max: IntGauge,
    /// Time a batch waited for a pooled connection and its `BEGIN`.
    pub db_pool_acquire_seconds: prometheus::Histogram,
    /// Linked schools.
    pub schools_linked: IntGauge,
    /// Schools that sent a full snapshot before but none completed within
    /// SNAPSHOT_OVERDUE_HOURS.
    pub schools_snapshot_overdue: IntGauge,
    /// The non-secret settings this replica runs with, as labels; always 1.
    pub settings_info: IntGaugeVec,
    /// 1 while a consumer is connected and consuming.
    pub consumer_up: IntGaugeVec,
    /// Intake events (R9): placed, promoted, held back, stays.
    pub intake: IntCounterVec,
    /// Runs of the daily job, by outcome (ran, skipped: another replica or already done today).
    pub daily_runs: IntCounterVec,
    /// R10: suggestions by event (opened, resolved, discarded, no_recipients).
    pub suggestions: IntCounterVec,
    /// R10: seconds from a parent's edit to the LAS import that resolved it.
    pub suggestion_resolution_seconds: prometheus::Histogram,
    /// E-mails by outcome (sent, retry, failed) and reason.
    pub emails: IntCounterVec,
    /// E-mails waiting in the outbox (pending or being sent).
    pub outbox_depth: IntGauge,
    /// R11: items unlinked and year-bound records deleted by rollovers.
    pub rollover: IntCounterVec,
    /// R12: full snapshots by outcome (applied, held, released, discarded).
    pub snapshots: IntCounterVec,
    /// R12: full snapshots held for an operator right now.
    pub snapshots_held: IntGauge,
    /// R13: couplings of LAS records to portal profiles, by outcome (auto,
    /// manual, waiting, created, uncoupled).
    pub couplings: IntCounterVec,
    /// R13: LAS records waiting for a school's coupling decision right now.
    pub coupling_waits: IntGauge,
    /// R12: profiles whose personal data was purged after the retention period.
    pub purged: prometheus::IntCounter,
    /// R12: dead letters dropped after DEAD_LETTER_RETENTION_DAYS.
    pub dead_letters_expired: prometheus::IntCounter,
    /// R12: dead letters that reach their term within a week (a warning).
    pub dead_letters_expiring: IntGauge,
    /// Sync events published (confirmed by the broker).
    pub events_published: prometheus::IntCounter,
    /// Sync events waiting in the outbox.
    pub event_outbox_depth: IntGauge,
    /// Seconds since the oldest e-mail still waiting was queued (0: none waits).
    pub email_outbox_oldest: IntGauge,
    /// Seconds since the oldest unpublished sync event was written (0: none).
    pub event_outbox_oldest: IntGauge,
    /// Unix time of the daily job's last success on any replica.
    pub daily_job_last_success: IntGauge,
    /// Connections of this process the broker blocks (connection.blocked).
    pub broker_blocked: IntGauge,
    /// Build info.
    pub build_info: IntGauge,
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(c.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    c
}

fn histogram(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(h.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    h
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    registry
        .register(Box::new(g.clone()))
        .unwrap_or_else(|e| panic!("metric {name}: {e}"));
    g
}

impl Metrics {
    /// Builds the registry. Panics only on a programming error (a duplicate
    /// or malformed metric name), which the unit test below catches.
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }
        let messages = counter(
            &registry,
            "las_messages_total",
            "Messages handled, by message type and outcome (applied, duplicate, stale, rejected).",
            &["type", "outcome"],
        );
        let decisions = counter(
            &registry,
            "las_rule_decisions_total",
            "Import rule decisions, by rule id (R1..R12) and action.",
            &["rule", "action"],
        );
        let profiles = counter(
            &registry,
            "las_profiles_total",
            "Profile changes, by kind (student, guardian, staff) and change (created, updated, deactivated, reactivated).",
            &["kind", "change"],
        );
        let dead_letters = counter(
            &registry,
            "las_dead_letters_total",
            "Messages moved to the dead-letter queue, by reason code.",
            &["reason"],
        );
        let batch_seconds = histogram(
            &registry,
            "las_batch_processing_seconds",
            "Time to apply one batch: parse, rules, database commit, dead-letter publishes.",
            &["queue"],
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ],
        );
        let batch_size = histogram(
            &registry,
            "las_batch_size_messages",
            "Messages per applied batch.",
            &["queue"],
            vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0],
        );
        let lag_seconds = histogram(
            &registry,
            "las_sync_lag_seconds",
            "End-to-end lag of applied LAS messages: commit time minus emitted_at.",
            &["type"],
            vec![
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
            ],
        );
        let retries = counter(
            &registry,
            "las_transient_retries_total",
            "Transient failures retried with backoff, by component (database, broker).",
            &["component"],
        );
        let connections = counter(
            &registry,
            "las_broker_connections_total",
            "Broker connections opened, by queue; more than one means reconnects.",
            &["queue"],
        );
        let queue_messages = gauge_vec(
            &registry,
            "las_queue_messages",
            "Ready messages in the worker's queues by role (changes, portal, dead_letter); \
             unacknowledged deliveries are not included.",
            &["queue"],
        );
        let queue_consumers = gauge_vec(
            &registry,
            "las_queue_consumers",
            "Consumers of the worker's queues by role (changes, portal, dead_letter).",
            &["queue"],
        );
        let db_pool_connections = gauge_vec(
            &registry,
            "las_db_pool_connections",
            "Database pool connections by state (in_use, idle).",
            &["state"],
        );
        let settings_info = gauge_vec(
            &registry,
            "las_settings_info",
            "The non-secret settings this replica runs with, as labels; always 1.",
            &["prefetch", "batch_size", "concurrency", "pool_size"],
        );
        let db_pool_acquire_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "las_db_pool_acquire_seconds",
                "Time a batch waited for a pooled database connection and its BEGIN.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .unwrap_or_else(|e| panic!("metric las_db_pool_acquire_seconds: {e}"));
        registry
            .register(Box::new(db_pool_acquire_seconds.clone()))
            .unwrap_or_else(|e| panic!("metric las_db_pool_acquire_seconds: {e}"));
        let consumer_up = gauge_vec(
            &registry,
            "las_consumer_up",
            "1 while the consumer of a queue is connected and consuming.",
            &["queue"],
        );
        let intake = counter(
            &registry,
            "las_intake_events_total",
            "Children under 4 (R9): placed in intake, promoted out of intake, held back, staying in intake.",
            &["event"],
        );
        let daily_runs = counter(
            &registry,
            "las_daily_job_runs_total",
            "Daily job runs (intake promotion), by outcome.",
            &["outcome"],
        );
        let suggestions = counter(
            &registry,
            "las_suggestions_total",
            "Suggestions from parents' edits (R10), by event: opened, resolved, no_recipients.",
            &["event"],
        );
        let suggestion_resolution_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new("las_suggestion_resolution_seconds", "Time from a parent's edit to the LAS import that brought the proposed values (R10).")
                .buckets(vec![60.0, 600.0, 3600.0, 6.0 * 3600.0, 86400.0, 3.0 * 86400.0, 7.0 * 86400.0, 30.0 * 86400.0]),
        )
        .unwrap_or_else(|e| panic!("metric las_suggestion_resolution_seconds: {e}"));
        registry
            .register(Box::new(suggestion_resolution_seconds.clone()))
            .unwrap_or_else(|e| panic!("metric las_suggestion_resolution_seconds: {e}"));
        let emails = counter(
            &registry,
            "las_emails_total",
            "E-mail send attempts, by outcome (sent, retry, failed) and reason (ok, rate_limited, server_error, timeout, connection, rejected).",
            &["outcome", "reason"],
        );
        let outbox_depth = IntGauge::with_opts(Opts::new(
            "las_email_outbox_depth",
            "E-mails waiting in the outbox (pending or being sent).",
        ))
        .unwrap_or_else(|e| panic!("metric las_email_outbox_depth: {e}"));
        registry
            .register(Box::new(outbox_depth.clone()))
            .unwrap_or_else(|e| panic!("metric las_email_outbox_depth: {e}"));
        let rollover = counter(
            &registry,
            "las_rollover_total",
            "Year rollovers (R11): group-bound items unlinked and year-bound records deleted.",
            &["action"],
        );
        let snapshots = counter(
            &registry,
            "las_snapshots_total",
            "Full snapshots (R12) by outcome: applied, held, released, discarded.",
            &["outcome"],
        );
        let couplings = counter(
            &registry,
            "las_couplings_total",
            "R13 couplings of LAS records to existing portal profiles, by outcome: auto, manual, waiting, created, uncoupled.",
            &["outcome"],
        );
        let coupling_waits = IntGauge::with_opts(Opts::new(
            "las_coupling_waits",
            "R13: LAS records waiting for a school's coupling decision.",
        ))
        .unwrap_or_else(|e| panic!("metric las_coupling_waits: {e}"));
        registry
            .register(Box::new(coupling_waits.clone()))
            .unwrap_or_else(|e| panic!("metric las_coupling_waits: {e}"));
        let snapshots_held = IntGauge::with_opts(Opts::new("las_snapshots_held", "Full snapshots held by the deletion guard or a count mismatch, waiting for an operator."))
            .unwrap_or_else(|e| panic!("metric las_snapshots_held: {e}"));
        registry
            .register(Box::new(snapshots_held.clone()))
            .unwrap_or_else(|e| panic!("metric las_snapshots_held: {e}"));
        let purged = prometheus::IntCounter::with_opts(Opts::new(
            "las_profiles_purged_total",
            "Profiles whose personal data was purged after the retention period (R12).",
        ))
        .unwrap_or_else(|e| panic!("metric las_profiles_purged_total: {e}"));
        registry
            .register(Box::new(purged.clone()))
            .unwrap_or_else(|e| panic!("metric las_profiles_purged_total: {e}"));
        let dead_letters_expired = prometheus::IntCounter::with_opts(Opts::new(
            "las_dead_letters_expired_total",
            "Dead letters dropped after DEAD_LETTER_RETENTION_DAYS (their bodies hold personal data, R12).",
        ))
        .unwrap_or_else(|e| panic!("metric las_dead_letters_expired_total: {e}"));
        registry
            .register(Box::new(dead_letters_expired.clone()))
            .unwrap_or_else(|e| panic!("metric las_dead_letters_expired_total: {e}"));
        let dead_letters_expiring = IntGauge::with_opts(Opts::new(
            "las_dead_letters_expiring",
            "Dead letters that reach their term (DEAD_LETTER_RETENTION_DAYS) within 7 days, at the last sweep.",
        ))
        .unwrap_or_else(|e| panic!("metric las_dead_letters_expiring: {e}"));
        registry
            .register(Box::new(dead_letters_expiring.clone()))
            .unwrap_or_else(|e| panic!("metric las_dead_letters_expiring: {e}"));
        let events_published = prometheus::IntCounter::with_opts(Opts::new(
            "las_events_published_total",
            "Sync events published on las.sync-events and confirmed by the broker.",
        ))
        .unwrap_or_else(|e| panic!("metric las_events_published_total: {e}"));
        registry
            .register(Box::new(events_published.clone()))
            .unwrap_or_else(|e| panic!("metric las_events_published_total: {e}"));
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::with_opts(Opts::new(name, help))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            registry
                .register(Box::new(g.clone()))
                .unwrap_or_else(|e| panic!("metric {name}: {e}"));
            g
        };
        let email_outbox_oldest = gauge(
            "las_email_outbox_oldest_seconds",
            "Age in seconds of the oldest e-mail still waiting in the outbox (0 when none waits).",
        );
        let event_outbox_oldest = gauge(
            "las_event_outbox_oldest_seconds",
            "Age in seconds of the oldest sync event not yet published (0 when none waits).",
        );
        let daily_job_last_success = gauge(
            "las_daily_job_last_success_timestamp_seconds",
            "Unix time of the daily job's last successful run on any replica (0 before the first).",
        );
        let event_outbox_depth = IntGauge::with_opts(Opts::new(
            "las_event_outbox_depth",
            "Sync events waiting in the outbox.",
        ))
        .unwrap_or_else(|e| panic!("metric las_event_outbox_depth: {e}"));
        registry
            .register(Box::new(event_outbox_depth.clone()))
            .unwrap_or_else(|e| panic!("metric las_event_outbox_depth: {e}"));
        let last_commit = gauge(
            "las_last_commit_timestamp_seconds",
            "Unix time of this replica's last committed batch (0 before the first).",
        );
        let batches_in_flight = gauge(
            "las_batches_in_flight",
            "Batches being applied right now (database transactions in flight).",
        );
        let db_pool_max = gauge(
            "las_db_pool_max_connections",
            "The database pool's maximum size (DB_MAX_CONNECTIONS).",
        );
        let schools_linked = gauge("las_schools_linked", "Schools linked to their LAS.");
        let broker_blocked = gauge(
            "las_broker_blocked_connections",
            "Connections of this replica the broker blocks right now (connection.blocked: a memory or disk alarm).",
        );
        let schools_snapshot_overdue = gauge(
            "las_schools_snapshot_overdue",
            "Schools that sent a full snapshot before but completed none within SNAPSHOT_OVERDUE_HOURS.",
        );
        let build_info = IntGauge::with_opts(
            Opts::new("las_build_info", "Build information; always 1.")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("revision", env!("LAS_GIT_REVISION")),
        )
        .unwrap_or_else(|e| panic!("metric las_build_info: {e}"));
        build_info.set(1);
        registry
            .register(Box::new(build_info.clone()))
            .unwrap_or_else(|e| panic!("metric las_build_info: {e}"));
        Metrics {
            registry,
            messages,
            decisions,
            profiles,
            dead_letters,
            batch_seconds,
            batch_size,
            lag_seconds,
            retries,
            connections,
            last_commit,
            batches_in_flight,
            queue_messages,
            queue_consumers,
            db_pool_connections,
            db_pool_max,
            db_pool_acquire_seconds,
            schools_linked,
            schools_snapshot_overdue,
            settings_info,
            broker_blocked,
            consumer_up,
            intake,
            daily_runs,
            suggestions,
            suggestion_resolution_seconds,
            emails,
            outbox_depth,
            rollover,
            snapshots,
            snapshots_held,
            couplings,
            coupling_waits,
            purged,
            dead_letters_expired,
            dead_letters_expiring,
            events_published,
            event_outbox_depth,
            email_outbox_oldest,
            event_outbox_oldest,
            daily_job_last_success,
            build_info,
        }
    }

    /// Creates the known series of the counters at zero, so that the first
    /// dead letter, retry or failure is an increase an alert can see.
    pub fn init_series(&self) {
        for r in las_contracts::RejectReason::ALL {
            self.dead_letters.with_label_values(&[r.as_str()]);
        }
        for o in ["auto", "manual", "waiting", "created", "uncoupled"] {
            self.couplings.with_label_values(&[o]);
        }
        for c in ["database", "broker"] {
            self.retries.with_label_values(&[c]);
        }
        for o in ["ran", "skipped", "failed"] {
            self.daily_runs.with_label_values(&[o]);
        }
        for (o, r) in [
            ("sent", "ok"),
            ("retry", "rate_limited"),
            ("retry", "server_error"),
            ("retry", "timeout"),
            ("retry", "connection"),
            ("failed", "rejected"),
        ] {
            self.emails.with_label_values(&[o, r]);
        }
        for a in ["items_unlinked", "records_deleted"] {
            self.rollover.with_label_values(&[a]);
        }
        for q in ["changes", "portal", "dead_letter"] {
            self.queue_messages.with_label_values(&[q]);
            self.queue_consumers.with_label_values(&[q]);
        }
        for st in ["in_use", "idle"] {
            self.db_pool_connections.with_label_values(&[st]);
        }
        for o in ["applied", "held"] {
            self.snapshots.with_label_values(&[o]);
        }
        for e in ["opened", "resolved", "no_recipients"] {
            self.suggestions.with_label_values(&[e]);
        }
    }

    /// Publishes the non-secret settings as `las_settings_info`.
    pub fn set_settings(&self, prefetch: u16, batch_size: usize, concurrency: usize, pool: u32) {
        self.settings_info
            .with_label_values(&[
                &prefetch.to_string(),
                &batch_size.to_string(),
                &concurrency.to_string(),
                &pool.to_string(),
            ])
            .set(1);
        self.db_pool_max.set(i64::from(pool));
    }

    /// Counts a rule decision, and R9 decisions as intake events too.
    pub fn record_decision(&self, d: &crate::domain::rules::Decision) {
        self.decisions
            .with_label_values(&[d.rule.as_str(), d.action.as_str()])
            .inc();
        if d.rule == crate::domain::rules::Rule::R9 {
            self.intake.with_label_values(&[d.action.as_str()]).inc();
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if encoder.encode(&self.registry.gather(), &mut buf).is_err() {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_builds_and_renders() {
        let m = Metrics::new();
        m.messages
            .with_label_values(&["student.upserted", "applied"])
            .inc();
        let text = m.render();
        assert!(
            text.contains("las_messages_total{outcome=\"applied\",type=\"student.upserted\"} 1")
        );
        assert!(
            text.contains("# HELP las_rule_decisions_total")
                || !text.contains("las_rule_decisions_total{")
        );
    }
}
