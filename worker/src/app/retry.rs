//! The one retry policy of the worker: wait for a dependency (database,
//! broker) with exponential backoff and jitter, for ever, until it works or
//! shutdown comes. Transient failures are never a reason to dead-letter.

use std::future::Future;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::sync::watch;

use crate::domain::outcome::Interrupted;

/// Backoff for transient failures: 100 ms doubling to 30 s, with jitter, forever.
pub fn transient_backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(30))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
}

/// A session that ran this long was healthy: the next failure starts the
/// backoff from its first step again.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// The backoff state of one loop that waits for a dependency.
pub struct Retry {
    backoff: ExponentialBackoff,
}

impl Default for Retry {
    fn default() -> Self {
        Self::new()
    }
}

impl Retry {
    pub fn new() -> Self {
        Retry {
            backoff: transient_backoff().build(),
        }
    }

    /// Starts the backoff again from its first step.
    pub fn reset(&mut self) {
        self.backoff = transient_backoff().build();
    }

    /// The next delay (30 s once the policy is exhausted, which it never is).
    pub fn next_delay(&mut self) -> Duration {
        self.backoff.next().unwrap_or(Duration::from_secs(30))
    }

    /// Sleeps `delay`, or returns `Interrupted` as soon as shutdown is (or
    /// already was) requested.
    pub async fn sleep(
        delay: Duration,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), Interrupted> {
        let mut sd = shutdown.clone();
        if *sd.borrow() {
            return Err(Interrupted);
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = sd.wait_for(|v| *v) => Err(Interrupted),
        }
    }
}

/// Runs `session` until it ends by itself (`Ok`) or shutdown is requested;
/// after a failure, `on_failure` is told the error and the delay, and the
/// session starts again after that delay. A session that ran for 30 s or
/// more resets the backoff. The reconnect loop of every broker client.
pub async fn keep_running<F, Fut, E>(
    shutdown: &watch::Receiver<bool>,
    mut session: F,
    mut on_failure: impl FnMut(&E, Duration),
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let mut retry = Retry::new();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let started = Instant::now();
        match session().await {
            Ok(()) => break,
            Err(e) => {
                if started.elapsed() > HEALTHY_SESSION {
                    retry.reset();
                }
                let delay = retry.next_delay();
                on_failure(&e, delay);
                if Retry::sleep(delay, shutdown).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_at_most_30_seconds_and_never_gives_up() {
        let mut r = Retry::new();
        let delays: Vec<Duration> = (0..40).map(|_| r.next_delay()).collect();
        assert!(delays[0] <= Duration::from_millis(200), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(60)));
        assert!(delays[39] >= Duration::from_secs(30), "{delays:?}");
    }

    #[tokio::test]
    async fn sleep_returns_at_once_when_shutdown_was_requested() {
        let (tx, rx) = watch::channel(false);
        tx.send(true).ok();
        let started = Instant::now();
        assert!(Retry::sleep(Duration::from_secs(60), &rx).await.is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
