//! `las-worker suggestions list|discard`: parents' edits that became
//! suggestions to the school (R10).

use std::process::ExitCode;

use super::SuggestionsCommand;
use crate::app::runtime::open_store;
use crate::app::settings::SecretUrl;

pub async fn run(db: &SecretUrl, cmd: SuggestionsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(db, 1, false).await?;
    match cmd {
        SuggestionsCommand::List { brin, status } => {
            for s in store.suggestions(&brin, status.as_deref()).await? {
                println!("{}", serde_json::to_string(&s)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        SuggestionsCommand::Discard { id, reason } => {
            if store.discard_suggestion(id, &reason).await? {
                println!("suggestion {id} discarded");
                Ok(ExitCode::SUCCESS)
            } else {
                eprintln!("no open suggestion with id {id}");
                Ok(ExitCode::from(1))
            }
        }
    }
}
