//! `las-worker groups leftovers`: portal groups no LAS group feeds any more
//! (R7), as JSON lines. Never deleted.

use std::process::ExitCode;

use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;

pub async fn leftovers(db: &SecretUrl, brin: &str) -> anyhow::Result<ExitCode> {
    let store = open_store(db, 1, false).await?;
    for l in store.leftovers(brin).await? {
        println!("{}", serde_json::to_string(&l)?);
    }
    Ok(ExitCode::SUCCESS)
}
