//! `las-worker show` (one profile as JSON), `las-worker summary` (profile
//! counts per school, kind and status) and `las-worker profile erase` (the
//! right to erasure), and the coupling of LAS records to existing portal
//! profiles (R13): `profiles unlinked|couple|create|uncouple`.

use std::process::ExitCode;

use anyhow::bail;

use las_contracts::CouplingAction;

use super::{CouplingRecordArgs, ShowArgs};
use crate::adapters::db::MessageOutcome;
use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;
use crate::domain::message::{self, Inbound};
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

/// `profiles unlinked`: both sides of "Niet gekoppelde profielen" (R13) as
/// one JSON document; exit code 1 when no school has that BRIN.
pub async fn unlinked(db: &SecretUrl, brin: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(db, 1, false).await?;
    match store.unlinked(brin.trim()).await? {
        Some(u) => {
            println!("{}", serde_json::to_string_pretty(&u)?);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            eprintln!("no portal is linked to BRIN {brin}");
            Ok(ExitCode::from(1))
        }
    }
}

/// `profiles couple|create|uncouple`: the school's decision (R13), read and
/// applied exactly as a `portal.coupling.v1` message from the bus. Exit code
/// 1 when it is refused (the reason is printed).
pub async fn decide(
    db: &SecretUrl,
    record: &CouplingRecordArgs,
    action: CouplingAction,
    profile_id: Option<i64>,
) -> anyhow::Result<ExitCode> {
    let msg = las_contracts::CouplingV1 {
        schema: las_contracts::CouplingSchema::V1,
        message_id: uuid::Uuid::now_v7(),
        brin: record.brin.trim().to_owned(),
        action,
        entity_kind: record.kind.clone(),
        las_key: record.las_key.clone(),
        portal_profile_id: profile_id,
        decided_at: Some(chrono::Utc::now()),
    };
    let decision = match message::parse(&serde_json::to_vec(&msg)?) {
        Ok(m @ Inbound::Coupling(_)) => m,
        Ok(_) => bail!("internal error: the coupling decision was read as another message"),
        Err(r) => {
            eprintln!("las-worker: invalid [{}]: {}", r.reason.as_str(), r.text);
            return Ok(ExitCode::from(2));
        }
    };
    let store = open_store(db, 1, false).await?;
    let today = crate::app::clock::local_today();
    let (outcomes, _) = store
        .apply_batch(std::slice::from_ref(&decision), today)
        .await?;
    match outcomes.into_iter().next() {
        Some(MessageOutcome::Applied { decisions }) => {
            let codes: Vec<String> = decisions.iter().map(|d| d.code()).collect();
            println!(
                "{} {} of BRIN {}: {} ({})",
                record.kind,
                record.las_key.trim(),
                record.brin.trim(),
                action.as_str(),
                codes.join(", ")
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(MessageOutcome::Rejected(r)) => {
            eprintln!("las-worker: refused [{}]: {}", r.reason.as_str(), r.text);
            Ok(ExitCode::from(1))
        }
        other => {
            eprintln!(
                "las-worker: the decision was not applied ({})",
                other.map(|o| o.label()).unwrap_or("no outcome")
            );
            Ok(ExitCode::from(1))
        }
    }
}
