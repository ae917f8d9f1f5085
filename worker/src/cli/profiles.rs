//! `las-worker show` (one profile as JSON), `las-worker summary` (profile
//! counts per school, kind and status) and `las-worker profile erase` (the
//! right to erasure).

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

/// `profile erase`: exit code 1 when there is no such profile, or when the
/// operator did not confirm.
pub async fn erase(
    db: &SecretUrl,
    brin: &str,
    kind: &str,
    las_key: &str,
    yes: bool,
) -> anyhow::Result<ExitCode> {
    use std::io::{BufRead, IsTerminal, Write};
    let Some(kind) = ProfileKind::parse(kind) else {
        bail!("unknown kind {kind}")
    };
    if !yes {
        if !std::io::stdin().is_terminal() {
            eprintln!(
                "las-worker: profile erase asks for a confirmation; pass --yes when the request was checked"
            );
            return Ok(ExitCode::from(1));
        }
        eprint!(
            "This erases the personal data of {} {} of BRIN {brin} for good. Type the LAS key again to confirm: ",
            kind.as_str(),
            las_key.trim()
        );
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        if answer.trim() != las_key.trim() {
            eprintln!("not confirmed: nothing erased");
            return Ok(ExitCode::from(1));
        }
    }
    let store = open_store(db, 1, false).await?;
    match store.erase_profile(brin, kind, las_key).await? {
        Some(e) => {
            tracing::info!(brin = %e.brin, kind = %e.kind, las_key = %e.las_key, "profile erased on request");
            println!("{}", serde_json::to_string(&e)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!(
                "no {} {} in the portal of BRIN {brin}",
                kind.as_str(),
                las_key.trim()
            );
            Ok(ExitCode::from(1))
        }
    }
}
