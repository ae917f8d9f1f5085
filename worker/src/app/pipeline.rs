//! The batch pipeline: bodies in, one disposition per body out.
//!
//! Parse and validate each body, apply the valid ones in one transaction,
//! retry transient failures with backoff (never dead-letter because of
//! them), and isolate a message the database refuses so it cannot hold up its
//! neighbours. Transport-agnostic: the AMQP consumer and `import` share it.

use las_contracts::RejectReason;
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn};

use crate::adapters::amqp::BatchHandler;
use crate::adapters::db::{Store, StoreError};
use crate::adapters::metrics::Metrics;
use crate::app::clock::Clock;
use crate::app::retry::Retry;
use crate::domain::message::{self, Inbound, Rejection};
use crate::domain::outcome::{BatchEffects, Disposition, Interrupted, MessageOutcome};

#[derive(Clone)]
pub struct Pipeline {
    store: Store,
    metrics: Metrics,
    clock: Clock,
}

impl Pipeline {
    pub fn new(store: Store, metrics: Metrics, clock: Clock) -> Self {
        Pipeline {
            store,
            metrics,
            clock,
        }
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Processes a batch of message bodies. Returns one disposition per body,
    /// or `Interrupted` when shutdown came while the database was unavailable.
    pub async fn process(
        &self,
        bodies: &[&[u8]],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Vec<Disposition>, Interrupted> {
        let mut out: Vec<Option<Disposition>> = vec![None; bodies.len()];
        // The valid messages and their positions in the batch.
        let mut positions: Vec<usize> = Vec::with_capacity(bodies.len());
        let mut msgs: Vec<Inbound> = Vec::with_capacity(bodies.len());
        // Rejections that never reach a transaction still become sync events
        // (reason codes only), before anything is acknowledged.
        let mut unreadable: Vec<(Option<String>, Option<uuid::Uuid>, RejectReason)> = Vec::new();
        for (i, body) in bodies.iter().enumerate() {
            match message::parse(body) {
                Ok(m) => {
                    positions.push(i);
                    msgs.push(m);
                }
                Err(r) => {
                    self.record_rejection("unknown", &r);
                    unreadable.push((r.brin.clone(), r.message_id, r.reason));
                    out[i] = Some(Disposition::DeadLetter(r));
                }
            }
        }
        self.record_rejection_events(&unreadable, shutdown).await?;

        if !msgs.is_empty() {
            let results = match self.apply_with_retry(&msgs, shutdown).await? {
                Ok(outcomes) => outcomes,
                Err(_) if msgs.len() > 1 => {
                    // Isolate: one message the database refuses must not take its
                    // neighbours down. Apply one by one; dead-letter only the bad one.
                    warn!(
                        batch = msgs.len(),
                        "database refused a batch; applying its messages one by one"
                    );
                    let mut outcomes = Vec::with_capacity(msgs.len());
                    for m in &msgs {
                        match self
                            .apply_with_retry(std::slice::from_ref(m), shutdown)
                            .await?
                        {
                            Ok(mut o) => outcomes.push(o.pop().unwrap_or(MessageOutcome::Stale)),
                            Err(e) => outcomes.push(refused(m, &e)),
                        }
                    }
                    outcomes
                }
                Err(e) => vec![refused(&msgs[0], &e)],
            };
            // Messages the database refused were rolled back with their batch:
            // their rejection events are recorded on their own.
            let refused_events: Vec<(Option<String>, Option<uuid::Uuid>, RejectReason)> = msgs
                .iter()
                .zip(&results)
                .filter_map(|(m, o)| match o {
                    MessageOutcome::Rejected(r) if r.reason == RejectReason::DatabaseRejected => {
                        Some((Some(m.brin().to_owned()), Some(m.message_id()), r.reason))
                    }
                    _ => None,
                })
                .collect();
            self.record_rejection_events(&refused_events, shutdown)
                .await?;
            let now = chrono::Utc::now();
            for ((i, m), outcome) in positions.iter().zip(&msgs).zip(results) {
                // The per-message span only when something will be logged in
                // it: a rejection, or debug logging.
                let span = if matches!(outcome, MessageOutcome::Rejected(_))
                    || tracing::enabled!(tracing::Level::DEBUG)
                {
                    info_span!("message", message_id = %m.message_id(), brin = m.brin(), r#type = m.type_name())
                } else {
                    tracing::Span::none()
                };
                let _enter = span.enter();
                self.metrics
                    .messages
                    .with_label_values(&[m.type_name(), outcome.label()])
                    .inc();
                out[*i] = Some(match outcome {
                    MessageOutcome::Applied { decisions } => {
                        for d in &decisions {
                            self.metrics.record_decision(d);
                        }
                        if let Inbound::Change(c) = m {
                            let lag =
                                (now - c.emitted_at).num_milliseconds().max(0) as f64 / 1000.0;
                            self.metrics
                                .lag_seconds
                                .with_label_values(&[m.type_name()])
                                .observe(lag);
                        }
                        debug!(outcome = "applied", decisions = ?decisions.iter().map(|d| d.code()).collect::<Vec<_>>(), "message applied");
                        Disposition::Done("applied")
                    }
                    MessageOutcome::Duplicate => {
                        debug!(outcome = "duplicate", "message already applied");
                        Disposition::Done("duplicate")
                    }
                    MessageOutcome::Stale => {
                        debug!(
                            outcome = "stale",
                            "older version than the one applied; nothing changed"
                        );
                        Disposition::Done("stale")
                    }
                    MessageOutcome::Rejected(r) => {
                        self.record_rejection_counted(&r);
                        Disposition::DeadLetter(r)
                    }
                });
            }
        }
        Ok(out
            .into_iter()
            .map(|d| d.unwrap_or(Disposition::Done("stale")))
            .collect())
    }

    /// Writes `message.rejected` sync events for rejections that happened
    /// outside a committed batch, retrying while the database is away.
    async fn record_rejection_events(
        &self,
        rejected: &[(Option<String>, Option<uuid::Uuid>, RejectReason)],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        if rejected.is_empty() {
            return Ok(());
        }
        let mut retry = Retry::new();
        while let Err(e) = self.store.record_rejections(rejected).await {
            if !e.is_transient() {
                warn!(error = %e, "cannot record rejection events");
                break;
            }
            self.metrics.retries.with_label_values(&["database"]).inc();
            Retry::sleep(retry.next_delay(), shutdown).await?;
        }
        Ok(())
    }

    fn record_rejection(&self, type_name: &str, r: &Rejection) {
        let span = info_span!(
            "message",
            message_id = r.message_id.map(|m| m.to_string()).unwrap_or_default(),
            r#type = type_name
        );
        let _enter = span.enter();
        self.metrics
            .messages
            .with_label_values(&[type_name, "rejected"])
            .inc();
        self.record_rejection_counted(r);
    }

    fn record_rejection_counted(&self, r: &Rejection) {
        self.metrics
            .dead_letters
            .with_label_values(&[r.reason.as_str()])
            .inc();
        info!(outcome = "rejected", reason = r.reason.as_str(), detail = %r.text, "message rejected to the dead-letter queue");
    }

    /// Applies a batch, retrying transient failures until they pass or
    /// shutdown is requested. A permanent failure is returned as `Ok(Err)`.
    async fn apply_with_retry(
        &self,
        msgs: &[Inbound],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Result<Vec<MessageOutcome>, StoreError>, Interrupted> {
        let mut retry = Retry::new();
        loop {
            match self.store.apply_batch(msgs, self.clock.today()).await {
                Ok((outcomes, effects)) => {
                    self.record_effects(&effects);
                    return Ok(Ok(outcomes));
                }
                Err(e @ StoreError::Conflict) => {
                    // Not an outage: another batch won a race; apply again at once.
                    self.metrics.retries.with_label_values(&["database"]).inc();
                    info!(error = %e, "batch applied again after a concurrent insert");
                }
                Err(e) if e.is_transient() => {
                    self.metrics.retries.with_label_values(&["database"]).inc();
                    let delay = retry.next_delay();
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; batch kept, retrying");
                    Retry::sleep(delay, shutdown).await?;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    fn record_effects(&self, effects: &BatchEffects) {
        for ((kind, change), n) in &effects.profiles {
            self.metrics
                .profiles
                .with_label_values(&[kind, change])
                .inc_by(*n);
        }
        let m = &self.metrics;
        m.suggestions
            .with_label_values(&["opened"])
            .inc_by(effects.suggestions_opened);
        m.suggestions
            .with_label_values(&["no_recipients"])
            .inc_by(effects.suggestions_without_recipients);
        m.suggestions
            .with_label_values(&["resolved"])
            .inc_by(effects.suggestions_resolved.len() as u64);
        for took in &effects.suggestions_resolved {
            m.suggestion_resolution_seconds.observe(*took);
        }
        for (_, unlinked, deleted) in &effects.rollovers {
            m.rollover
                .with_label_values(&["items_unlinked"])
                .inc_by(*unlinked);
            m.rollover
                .with_label_values(&["records_deleted"])
                .inc_by(*deleted);
        }
        m.snapshots
            .with_label_values(&["applied"])
            .inc_by(effects.snapshots_applied);
        m.snapshots
            .with_label_values(&["held"])
            .inc_by(effects.snapshots_held);
        let now = chrono::Utc::now().timestamp();
        for brin in &effects.schools_synced {
            self.metrics.last_sync.with_label_values(&[brin]).set(now);
        }
    }
}

/// A message the database refused for good (R12: dead-lettered with a
/// reason a person can read, never retried for ever).
pub fn refused(m: &Inbound, e: &StoreError) -> MessageOutcome {
    MessageOutcome::Rejected(Rejection::database_refused(m.message_id(), e))
}

impl BatchHandler for Pipeline {
    async fn process(
        &self,
        bodies: &[&[u8]],
        shutdown: &watch::Receiver<bool>,
    ) -> Result<Vec<Disposition>, Interrupted> {
        Pipeline::process(self, bodies, shutdown).await
    }
}
