//! `las-worker snapshot list|release|discard`: full snapshots and the
//! deletion guard's hold (R12).

use std::process::ExitCode;

use tracing::info;

use super::SnapshotCommand;
use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;

pub async fn run(db: &SecretUrl, cmd: SnapshotCommand) -> anyhow::Result<ExitCode> {
    let (brin, release) = match cmd {
        SnapshotCommand::List { brin } => {
            let store = open_store(db, 1, false).await?;
            for s in store.snapshots(&brin).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            return Ok(ExitCode::SUCCESS);
        }
        SnapshotCommand::Release { brin } => (brin, true),
        SnapshotCommand::Discard { brin } => (brin, false),
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
