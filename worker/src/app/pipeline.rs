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
            let mut applier = StoreApplier {
                store: &self.store,
                today: self.clock.today(),
            };
            let control = RetryControl {
                shutdown,
                max_attempts: None,
                metrics: Some(&self.metrics),
            };
            let results = match apply_isolating(&mut applier, &msgs, &control).await {
                Ok(Applied::Batch((outcomes, effects))) => {
                    self.record_effects(&effects);
                    outcomes
                }
                Ok(Applied::OneByOne(each)) => msgs
                    .iter()
                    .zip(each)
                    .map(|(m, r)| match r {
                        Ok((mut o, effects)) => {
                            self.record_effects(&effects);
                            o.pop().unwrap_or(MessageOutcome::Stale)
                        }
                        Err(e) => refused(m, &e),
                    })
                    .collect(),
                Err(_) => return Err(Interrupted),
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
        for (outcome, n) in &effects.couplings {
            m.couplings.with_label_values(&[outcome]).inc_by(*n);
        }
        // Progress, for "backlog and no progress" (#16): a committed batch.
        self.metrics.last_commit.set(chrono::Utc::now().timestamp());
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

/// Applies a batch of messages in one transaction: the consumer's applier
/// writes in its own transaction, `import`'s in a transaction or in a
/// savepoint of its dry run. The pipeline's retry and isolation
/// ([`apply_isolating`]) are the same for both.
pub trait BatchApplier {
    type Applied;
    fn apply(
        &mut self,
        msgs: &[Inbound],
    ) -> impl std::future::Future<Output = Result<Self::Applied, StoreError>>;
}

/// The consumer's applier: one transaction of its own per batch.
pub struct StoreApplier<'a> {
    pub store: &'a Store,
    pub today: chrono::NaiveDate,
}

impl BatchApplier for StoreApplier<'_> {
    type Applied = (Vec<MessageOutcome>, BatchEffects);
    async fn apply(&mut self, msgs: &[Inbound]) -> Result<Self::Applied, StoreError> {
        self.store.apply_batch(msgs, self.today).await
    }
}

/// How long [`apply_isolating`] waits for the database.
pub struct RetryControl<'a> {
    /// Stop waiting when shutdown is requested.
    pub shutdown: &'a watch::Receiver<bool>,
    /// Give up after this many attempts (`None`: never; the consumer, whose
    /// messages wait safely in the queue). An operator's command gives up.
    pub max_attempts: Option<usize>,
    pub metrics: Option<&'a Metrics>,
}

/// A batch applied whole, or message by message after the database refused it.
pub enum Applied<T> {
    Batch(T),
    /// One result per message, in order; `Err` is a permanent refusal.
    OneByOne(Vec<Result<T, StoreError>>),
}

/// Why [`apply_isolating`] stopped without a result.
#[derive(Debug, thiserror::Error)]
pub enum Stopped {
    #[error(transparent)]
    Interrupted(#[from] Interrupted),
    #[error("the database stayed unavailable: {0}")]
    Unavailable(StoreError),
}

/// Applies a batch through `applier`, retrying transient failures with the
/// one retry policy (a lost insert race at once), and isolating a message the
/// database refuses: one message it refuses must not take its neighbours
/// down, so the batch is applied one by one and only that message fails.
pub async fn apply_isolating<A: BatchApplier>(
    applier: &mut A,
    msgs: &[Inbound],
    control: &RetryControl<'_>,
) -> Result<Applied<A::Applied>, Stopped> {
    match apply_with_retry(applier, msgs, control).await? {
        Ok(applied) => Ok(Applied::Batch(applied)),
        Err(e) if msgs.len() > 1 => {
            warn!(
                batch = msgs.len(),
                error = %e,
                "database refused a batch; applying its messages one by one"
            );
            let mut each = Vec::with_capacity(msgs.len());
            for m in msgs {
                each.push(apply_with_retry(applier, std::slice::from_ref(m), control).await?);
            }
            Ok(Applied::OneByOne(each))
        }
        Err(e) => Ok(Applied::OneByOne(vec![Err(e)])),
    }
}

/// Applies a batch, retrying transient failures until they pass, shutdown
/// is requested or the attempts run out. A permanent failure is `Ok(Err)`.
async fn apply_with_retry<A: BatchApplier>(
    applier: &mut A,
    msgs: &[Inbound],
    control: &RetryControl<'_>,
) -> Result<Result<A::Applied, StoreError>, Stopped> {
    let mut retry = Retry::new();
    let mut attempt = 1;
    loop {
        match applier.apply(msgs).await {
            Ok(applied) => return Ok(Ok(applied)),
            Err(e @ StoreError::Conflict) => {
                // Not an outage: another batch won a race; apply again at once.
                if let Some(m) = control.metrics {
                    m.retries.with_label_values(&["database"]).inc();
                }
                info!(error = %e, "batch applied again after a concurrent insert");
            }
            Err(e) if e.is_transient() => {
                if control.max_attempts.is_some_and(|max| attempt >= max) {
                    return Err(Stopped::Unavailable(e));
                }
                attempt += 1;
                if let Some(m) = control.metrics {
                    m.retries.with_label_values(&["database"]).inc();
                }
                let delay = retry.next_delay();
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "database unavailable; batch kept, retrying");
                Retry::sleep(delay, control.shutdown).await?;
            }
            Err(e) => return Ok(Err(e)),
        }
    }
}
