//! `las-worker show` (one profile as JSON) and `las-worker summary` (profile
//! counts per school, kind and status).

use std::process::ExitCode;

use anyhow::bail;

use super::ShowArgs;
use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;
use crate::domain::model::ProfileKind;

/// `show`: exit code 1 when the portal has no such profile.
pub async fn show(db: &SecretUrl, args: &ShowArgs) -> anyhow::Result<ExitCode> {
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

/// `summary`: a table for people.
pub async fn summary(db: &SecretUrl) -> anyhow::Result<ExitCode> {
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
