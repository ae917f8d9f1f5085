//! `las-worker`: parse the command line, start telemetry and the async
//! runtime, hand over to `cli::dispatch`. Everything else lives in the
//! library (`ARCHITECTURE.md`).

use std::process::ExitCode;

use clap::Parser;
use las_worker::adapters::telemetry;
use las_worker::cli::{self, Cli};
use tracing::error;

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
    match rt.block_on(cli::dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            error!(error = format!("{e:#}"), "las-worker failed");
            eprintln!("las-worker: {e:#}");
            ExitCode::from(2)
        }
    }
}
