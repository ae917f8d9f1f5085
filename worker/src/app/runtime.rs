//! The long-running worker (`las-worker run`): build everything, run until
//! SIGTERM or Ctrl-C, then stop in order (consumers finish the batch in
//! flight, relays finish their round, the pool closes).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::adapters::amqp::{BusSettings, Health, QueueKind};
use crate::adapters::db::Store;
use crate::adapters::http;
use crate::adapters::mail::{FileTransport, HttpTransport, Transport};
use crate::adapters::metrics::Metrics;
use crate::app::clock::Clock;
use crate::app::consumers::run_consumer;
use crate::app::event_relay::EventPublisher;
use crate::app::jobs::{
    daily_job, keep_statistics, refresh_gauges, sweep_dead_letters, watch_queues,
};
use crate::app::mail_relay::{DispatchSettings, Dispatcher};
use crate::app::pipeline::Pipeline;
use crate::app::retry::Retry;
use crate::app::settings::{RunArgs, SecretUrl};

/// Connects to the database, creating it first when asked and missing.
pub async fn open_store(
    url: &SecretUrl,
    max_connections: u32,
    create: bool,
) -> anyhow::Result<Store> {
    if create
        && Store::create_database_if_missing(url.expose())
            .await
            .with_context(|| format!("creating database {url}"))?
    {
        info!(database = %url, "database created");
    }
    Store::connect(url.expose(), max_connections)
        .await
        .with_context(|| format!("connecting to {url}"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

pub async fn run(db: &SecretUrl, args: RunArgs) -> anyhow::Result<ExitCode> {
    if let Err(e) = args.validate() {
        eprintln!("las-worker: invalid configuration: {e}");
        return Ok(ExitCode::from(2));
    }
    info!(database = %db, broker = %args.broker.amqp_url, metrics_addr = %args.metrics_addr, prefetch = args.prefetch,
        batch_size = args.batch_size, batch_max_wait_ms = args.batch_max_wait_ms,
        batch_concurrency = args.batch_concurrency, "starting las-worker");
    let (tx, rx) = watch::channel(false);
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = tx.send(true);
    });

    // The endpoints come up first, so an outage of the database at start
    // shows as "database not ready" (and retries in /metrics), not as a
    // worker that does not answer (issue #16).
    let metrics = Metrics::new();
    metrics.init_series();
    metrics.set_settings(
        args.prefetch,
        args.batch_size,
        args.batch_concurrency,
        args.db_max_connections,
    );
    let health = Arc::new(Health::default());
    let store_cell: http::StoreCell = Arc::default();
    let router = http::router(metrics.clone(), health.clone(), store_cell.clone());
    let listener_addr = args.metrics_addr;
    let http_rx = rx.clone();
    let http_task = tokio::spawn(async move {
        if let Err(e) = http::serve(listener_addr, router, http_rx).await {
            error!(error = %e, addr = %listener_addr, "HTTP endpoints failed");
        }
    });

    // The database may come up after the worker: wait for it with backoff.
    let mut retry = Retry::new();
    let store = loop {
        let attempt = async {
            let store = open_store(db, args.db_max_connections, true)
                .await?
                .with_portal_base_url(args.mail.portal_base_url.clone())
                .with_acquire_histogram(metrics.db_pool_acquire_seconds.clone());
            store.migrate().await?;
            anyhow::Ok(store)
        };
        match attempt.await {
            Ok(store) => break store,
            Err(e) => {
                let delay = retry.next_delay();
                metrics.retries.with_label_values(&["database"]).inc();
                warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "database not ready; retrying"
                );
                if Retry::sleep(delay, &rx).await.is_err() {
                    return Ok(ExitCode::SUCCESS);
                }
            }
        }
    };

    let _ = store_cell.set(store.clone());
    let clock = args.today.map(Clock::Pinned).unwrap_or(Clock::Local);
    let pipeline = Pipeline::new(store.clone(), metrics.clone(), clock);
    let daily = args.daily_job.then(|| {
        tokio::spawn(daily_job(
            store.clone(),
            metrics.clone(),
            clock,
            args.journal.journal_retention_days,
            rx.clone(),
        ))
    });
    let settings = BusSettings {
        url: args.broker.amqp_url.expose().to_owned(),
        prefetch: args.prefetch,
        batch_size: args.batch_size,
        batch_max_wait: args.batch_max_wait(),
        batch_concurrency: args.batch_concurrency,
        delivery_limit: args.broker.delivery_limit,
    };
    if args.mail.mail_dispatch && args.mail.mail_api_url.is_none() {
        // The file transport needs a writable directory; say so now rather
        // than retrying every e-mail for ever.
        let dir = &args.mail.mail_dir;
        let probe = dir.join(".las-worker-write-test");
        if let Err(e) = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(&probe, b"ok"))
            .and_then(|_| std::fs::remove_file(&probe))
        {
            eprintln!(
                "las-worker: MAIL_DIR {} is not writable ({e}); set MAIL_API_URL or a writable MAIL_DIR",
                dir.display()
            );
            return Ok(ExitCode::from(2));
        }
    }
    let mail = if args.mail.mail_dispatch {
        let transport = match (&args.mail.mail_api_url, &args.mail.mail_api_token) {
            (Some(url), Some(token)) => Transport::Http(
                HttpTransport::new(
                    url,
                    token.expose(),
                    &args.mail.mail_from,
                    Duration::from_millis(args.mail.mail_timeout_ms),
                )
                .map_err(anyhow::Error::msg)?,
            ),
            _ => Transport::Files(FileTransport::new(
                args.mail.mail_dir.clone(),
                &args.mail.mail_from,
            )),
        };
        let dispatcher = Dispatcher::new(
            store.clone(),
            transport,
            metrics.clone(),
            DispatchSettings::default(),
        );
        Some(tokio::spawn(dispatcher.run(rx.clone())))
    } else {
        None
    };
    let events = args.events_publish.then(|| {
        let publisher = EventPublisher::new(
            store.clone(),
            args.broker.amqp_url.expose().to_owned(),
            args.broker.delivery_limit,
            metrics.clone(),
        );
        tokio::spawn(publisher.run(rx.clone()))
    });
    let dead_letter_sweep = (args.dead_letter_sweep_interval_ms > 0
        && args.dead_letter_retention_days > 0)
        .then(|| {
            tokio::spawn(sweep_dead_letters(
                args.broker.amqp_url.expose().to_owned(),
                args.broker.delivery_limit,
                args.dead_letter_retention_days,
                Duration::from_millis(args.dead_letter_sweep_interval_ms),
                metrics.clone(),
                rx.clone(),
            ))
        });
    let gauges = tokio::spawn(refresh_gauges(
        store.clone(),
        metrics.clone(),
        args.snapshot_overdue_hours,
        rx.clone(),
    ));
    let queues = tokio::spawn(watch_queues(
        args.broker.amqp_url.expose().to_owned(),
        metrics.clone(),
        rx.clone(),
    ));
    let analyze = (args.db_analyze_interval_ms > 0).then(|| {
        tokio::spawn(keep_statistics(
            store.clone(),
            Duration::from_millis(args.db_analyze_interval_ms),
            rx.clone(),
        ))
    });
    let changes = tokio::spawn(run_consumer(
        QueueKind::Changes,
        settings.clone(),
        pipeline.clone(),
        health.clone(),
        rx.clone(),
    ));
    let portal = tokio::spawn(run_consumer(
        QueueKind::Portal,
        settings,
        pipeline,
        health.clone(),
        rx.clone(),
    ));

    let mut sd = rx.clone();
    let _ = sd.wait_for(|v| *v).await;
    health.draining.store(true, Ordering::SeqCst);
    // One deadline for all of shutdown (#16): the consumers finish the
    // batches in flight while the relays finish their round, side by side,
    // and whatever is left when it passes is given up (unacknowledged
    // messages are redelivered, unsent mail and events stay in the outboxes).
    let deadline = tokio::time::Instant::now() + Duration::from_millis(args.shutdown_timeout_ms);
    info!(
        timeout_ms = args.shutdown_timeout_ms,
        "shutdown requested: finishing the batches in flight"
    );
    for task in [
        daily,
        Some(gauges),
        Some(queues),
        dead_letter_sweep,
        analyze,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
    }
    let finish = |task: Option<tokio::task::JoinHandle<()>>, what: &'static str| async move {
        if let Some(t) = task
            && tokio::time::timeout_at(deadline, t).await.is_err()
        {
            warn!(
                task = what,
                "did not stop before the shutdown deadline; what it held is redone by another replica"
            );
        }
    };
    tokio::join!(
        finish(Some(changes), "changes consumer"),
        finish(Some(portal), "portal consumer"),
        finish(events, "event publisher"),
        finish(mail, "mail dispatcher"),
    );
    let _ = tokio::time::timeout_at(deadline, http_task).await;
    signal.abort();
    let _ = tokio::time::timeout_at(deadline, store.pool().close()).await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}
