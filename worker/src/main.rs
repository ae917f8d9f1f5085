use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use las_worker::bus::{self, BusSettings, Health, QueueKind};
use las_worker::config::{
    Cli, Command, GroupsCommand, PublishArgs, RunArgs, SchoolCommand, SecretUrl, SnapshotCommand,
    SuggestionsCommand,
};
use las_worker::mail::{DispatchSettings, Dispatcher, FileTransport, HttpTransport, Transport};
use las_worker::metrics::Metrics;
use las_worker::pipeline::{Clock, Pipeline};
use las_worker::rules::ProfileKind;
use las_worker::store::Store;
use las_worker::{http, telemetry};
use sqlx::migrate::MigrateDatabase;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

fn main() -> ExitCode {
    // TLS for the e-mail API (reqwest) uses ring, like sqlx and lapin.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    telemetry::init(cli.common.log_format, &cli.common.log_filter);
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            error!(error = format!("{e:#}"), "las-worker failed");
            eprintln!("las-worker: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let db = &cli.common.database_url;
    match cli.command {
        Command::Run(args) => run(db, args).await,
        Command::Migrate => {
            let store = open_store(db, 2, true).await?;
            store.migrate().await?;
            info!(database = %db, "migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Show(args) => {
            let store = open_store(db, 1, false).await?;
            let Some(kind) = ProfileKind::parse(&args.kind) else {
                bail!("unknown kind {}", args.kind)
            };
            match store.show_profile(&args.brin, kind, &args.las_key).await? {
                Some(view) => {
                    println!("{}", serde_json::to_string_pretty(&view)?);
                    Ok(ExitCode::SUCCESS)
                }
                None => Ok(ExitCode::from(1)),
            }
        }
        Command::Publish(args) => publish(args).await,
        Command::Tick(args) => {
            let store = open_store(db, 1, false).await?;
            let today = args.date.unwrap_or_else(las_worker::pipeline::local_today);
            let report = store.run_daily(today, true).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Groups(GroupsCommand::Leftovers { brin }) => {
            let store = open_store(db, 1, false).await?;
            for l in store.leftovers(&brin).await? {
                println!("{}", serde_json::to_string(&l)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::School(SchoolCommand::Recipients { brin }) => {
            let store = open_store(db, 1, false).await?;
            match store.recipients(&brin).await? {
                Some(users) => {
                    for u in users {
                        println!("{}", serde_json::to_string(&u)?);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("no school with BRIN {brin}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Suggestions(SuggestionsCommand::List { brin, status }) => {
            let store = open_store(db, 1, false).await?;
            for s in store.suggestions(&brin, status.as_deref()).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Suggestions(SuggestionsCommand::Discard { id, reason }) => {
            let store = open_store(db, 1, false).await?;
            if store.discard_suggestion(id, &reason).await? {
                println!("suggestion {id} discarded");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no open suggestion with id {id}");
                Ok(ExitCode::from(1))
            }
        }
        Command::Snapshot(SnapshotCommand::List { brin }) => {
            let store = open_store(db, 1, false).await?;
            for s in store.snapshots(&brin).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Snapshot(
            cmd @ (SnapshotCommand::Release { .. } | SnapshotCommand::Discard { .. }),
        ) => {
            let (brin, release) = match cmd {
                SnapshotCommand::Release { brin } => (brin, true),
                SnapshotCommand::Discard { brin } | SnapshotCommand::List { brin } => (brin, false),
            };
            let store = open_store(db, 1, false).await?;
            match store.resolve_held_snapshot(&brin, release).await? {
                Some((id, n, _)) if release => {
                    info!(brin = %brin, snapshot_id = %id, deactivated = n, "held snapshot released by an operator");
                    println!("snapshot {id} released: {n} profile(s) deactivated");
                    Ok(ExitCode::SUCCESS)
                }
                Some((id, _, _)) => {
                    info!(brin = %brin, snapshot_id = %id, "held snapshot discarded by an operator");
                    println!("snapshot {id} discarded: nothing deactivated");
                    Ok(ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("BRIN {brin} has no held snapshot");
                    Ok(ExitCode::from(1))
                }
            }
        }
        Command::Summary => {
            let store = open_store(db, 1, false).await?;
            println!(
                "{:<6} {:<9} {:<12} {:>6}",
                "brin", "kind", "status", "count"
            );
            for (brin, kind, status, n) in store.summary().await? {
                println!("{brin:<6} {kind:<9} {status:<12} {n:>6}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Import(args) => {
            // A dry run writes nothing, not even a database or its schema.
            let store = open_store(db, 2, !args.dry_run).await?;
            if !args.dry_run {
                store.migrate().await?;
            }
            las_worker::ops::import::run(&store, &args).await
        }
        Command::Explain(args) => {
            let store = open_store(db, 1, false).await?;
            las_worker::ops::explain::run(store.pool(), &args).await
        }
        Command::Journal(cmd) => {
            let store = open_store(db, 1, false).await?;
            las_worker::ops::explain::journal(store.pool(), &cmd).await
        }
        Command::Dlq(cmd) => las_worker::ops::dlq::run(&cmd).await,
        Command::School(SchoolCommand::Configure(args)) => {
            let store = open_store(db, 1, true).await?;
            store.migrate().await?;
            let today = las_worker::pipeline::local_today();
            las_worker::ops::school::configure(&store, &args, today).await
        }
        Command::School(SchoolCommand::Show { brin }) => {
            let store = open_store(db, 1, false).await?;
            las_worker::ops::school::show(&store, &brin).await
        }
    }
}

/// Connects to the database, creating it first when asked and missing.
async fn open_store(url: &SecretUrl, max_connections: u32, create: bool) -> anyhow::Result<Store> {
    if create
        && !sqlx::Postgres::database_exists(url.expose())
            .await
            .unwrap_or(true)
    {
        sqlx::Postgres::create_database(url.expose())
            .await
            .with_context(|| format!("creating database {url}"))?;
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

async fn run(db: &SecretUrl, args: RunArgs) -> anyhow::Result<ExitCode> {
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

    // The database may come up after the worker: wait for it with backoff.
    let mut backoff = backon::BackoffBuilder::build(las_worker::pipeline::transient_backoff());
    let store = loop {
        let attempt = async {
            let store = open_store(db, args.db_max_connections, true).await?;
            store.migrate().await?;
            anyhow::Ok(store)
        };
        match attempt.await {
            Ok(store) => break store,
            Err(e) => {
                let delay = backoff.next().unwrap_or(Duration::from_secs(30));
                warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "database not ready; retrying"
                );
                let mut sd = rx.clone();
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {},
                    _ = sd.wait_for(|v| *v) => return Ok(ExitCode::SUCCESS),
                }
            }
        }
    };

    let metrics = Metrics::new();
    metrics.init_series();
    let health = Arc::new(Health::default());
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
    let router = http::router(metrics.clone(), health.clone(), store.clone());
    let listener_addr = args.metrics_addr;
    let http_rx = rx.clone();
    let http_task = tokio::spawn(async move {
        if let Err(e) = http::serve(listener_addr, router, http_rx).await {
            error!(error = %e, addr = %listener_addr, "HTTP endpoints failed");
        }
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
        let publisher = las_worker::events::EventPublisher::new(
            store.clone(),
            args.broker.amqp_url.expose().to_owned(),
            args.broker.delivery_limit,
            metrics.clone(),
        );
        tokio::spawn(publisher.run(rx.clone()))
    });
    let gauges = tokio::spawn(refresh_gauges(store.clone(), metrics.clone(), rx.clone()));
    let analyze = (args.db_analyze_interval_ms > 0).then(|| {
        tokio::spawn(keep_statistics(
            store.clone(),
            Duration::from_millis(args.db_analyze_interval_ms),
            rx.clone(),
        ))
    });
    let changes = tokio::spawn(bus::run_consumer(
        QueueKind::Changes,
        settings.clone(),
        pipeline.clone(),
        health.clone(),
        rx.clone(),
    ));
    let portal = tokio::spawn(bus::run_consumer(
        QueueKind::Portal,
        settings,
        pipeline,
        health.clone(),
        rx.clone(),
    ));

    let mut sd = rx.clone();
    let _ = sd.wait_for(|v| *v).await;
    health.draining.store(true, Ordering::SeqCst);
    info!("shutdown requested: finishing the batch in flight");
    let drained = tokio::time::timeout(Duration::from_secs(25), async {
        let _ = changes.await;
        let _ = portal.await;
    })
    .await;
    if drained.is_err() {
        warn!("consumers did not stop within 25 s; unacknowledged messages will be redelivered");
    }
    if let Some(d) = daily {
        d.abort();
    }
    gauges.abort();
    if let Some(a) = analyze {
        a.abort();
    }
    if let Some(e) = events {
        let _ = tokio::time::timeout(Duration::from_secs(10), e).await;
    }
    if let Some(m) = mail {
        // Finish the send in flight; what is left stays in the outbox.
        let _ = tokio::time::timeout(Duration::from_secs(15), m).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), http_task).await;
    signal.abort();
    store.pool().close().await;
    info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Publishes message files: `.json` holds one message, `.ndjson` one per line.
async fn publish(args: PublishArgs) -> anyhow::Result<ExitCode> {
    let mut messages = Vec::new();
    for path in &args.files {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let bodies: Vec<&str> = if path.extension().is_some_and(|e| e == "ndjson") {
            text.lines().filter(|l| !l.trim().is_empty()).collect()
        } else {
            vec![text.as_str()]
        };
        for (n, body) in bodies.into_iter().enumerate() {
            let v: serde_json::Value = serde_json::from_str(body)
                .with_context(|| format!("{} message {}: not JSON", path.display(), n + 1))?;
            let (exchange, key) =
                route(&v).with_context(|| format!("{} message {}", path.display(), n + 1))?;
            messages.push((exchange, key, body.trim().as_bytes().to_vec()));
        }
    }
    let url = args.broker.amqp_url.expose();
    {
        let conn = bus::connect(url, "las-worker publish (topology)").await?;
        let ch = conn.create_channel().await?;
        bus::declare_topology(&ch, args.broker.delivery_limit).await?;
        let _ = conn.close(200, "done".into()).await;
    }
    let confirmed = bus::publish_all(url, &messages).await?;
    println!(
        "published {confirmed} of {} messages (confirmed by the broker)",
        messages.len()
    );
    Ok(if confirmed == messages.len() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The exchange and routing key of a message, from its own fields.
fn route(v: &serde_json::Value) -> anyhow::Result<(String, String)> {
    let brin = v.get("brin").and_then(|b| b.as_str()).unwrap_or("unknown");
    match v.get("schema").and_then(|s| s.as_str()) {
        Some("las.change.v1") => {
            let ty = v
                .pointer("/change/type")
                .and_then(|t| t.as_str())
                .unwrap_or("unknown");
            Ok((
                las_contracts::LAS_CHANGES_EXCHANGE.into(),
                format!("las.{brin}.{ty}"),
            ))
        }
        Some("portal.link.v1") => Ok((
            las_contracts::PORTAL_REQUESTS_EXCHANGE.into(),
            format!("portal.{brin}.link"),
        )),
        other => bail!("unknown schema {other:?}; expected las.change.v1 or portal.link.v1"),
    }
}

/// R9: the daily job, at start and just after every local midnight. The store
/// makes sure it runs once per day across replicas.
async fn daily_job(
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
                match las_worker::ops::prune_journal(store.pool(), journal_days).await {
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
        let wait = match clock {
            Clock::Pinned(_) => Duration::from_secs(24 * 3600),
            Clock::Local => until_after_local_midnight(),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}

/// Time until one minute past the next midnight in Europe/Amsterdam.
fn until_after_local_midnight() -> Duration {
    use chrono::TimeZone;
    let tz = chrono_tz::Europe::Amsterdam;
    let now = chrono::Utc::now().with_timezone(&tz);
    let next = now
        .date_naive()
        .succ_opt()
        .and_then(|d| d.and_hms_opt(0, 1, 0));
    match next.and_then(|n| tz.from_local_datetime(&n).earliest()) {
        Some(at) => (at - now).to_std().unwrap_or(Duration::from_secs(3600)),
        None => Duration::from_secs(3600),
    }
}

/// Keeps the planner statistics of the portal's tables fresh while they grow
/// (`Store::analyze_stale_tables`), so cached plans fit the tables' size.
async fn keep_statistics(store: Store, every: Duration, mut shutdown: watch::Receiver<bool>) {
    let mut marks = las_worker::store::AnalyzeMarks::default();
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
/// snapshots and the e-mail outbox, refreshed every 15 s.
async fn refresh_gauges(store: Store, metrics: Metrics, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Ok(n) = store.held_snapshots().await {
            metrics.snapshots_held.set(n);
        }
        if let Ok(n) = store.outbox_depth().await {
            metrics.outbox_depth.set(n);
        }
        // Per-school staleness survives restarts: the database knows the last sync.
        if let Ok(rows) = store.last_syncs().await {
            for (brin, at) in rows {
                let g = metrics.last_sync.with_label_values(&[&brin]);
                g.set(g.get().max(at));
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(15)) => {}
            _ = shutdown.wait_for(|v| *v) => return,
        }
    }
}
