//! `las-worker tick`: run the daily job now (R9 intake and promotions, R12
//! purge), for today or a given date. Idempotent.

use std::process::ExitCode;

use super::TickArgs;
use crate::app::clock::local_today;
use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;

pub async fn run(db: &SecretUrl, args: &TickArgs) -> anyhow::Result<ExitCode> {
    let store = open_store(db, 1, false).await?;
    let today = args.date.unwrap_or_else(local_today);
    let report = store.run_daily(today, true).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}
