//! `las-worker publish`: publish message files with publisher confirms,
//! routed as the contract says (`las_contracts` routing keys).

use std::process::ExitCode;

use anyhow::{Context, bail};

use super::PublishArgs;
use crate::adapters::amqp;

/// Publishes message files: `.json` holds one message, `.ndjson` one per line.
pub async fn run(args: PublishArgs) -> anyhow::Result<ExitCode> {
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
                route(body, &v).with_context(|| format!("{} message {}", path.display(), n + 1))?;
            messages.push((exchange, key, body.trim().as_bytes().to_vec()));
        }
    }
    let url = args.broker.amqp_url.expose();
    {
        let conn = amqp::connect(url, "las-worker publish (topology)").await?;
        let ch = conn.create_channel().await?;
        amqp::declare_topology(&ch, args.broker.delivery_limit).await?;
        let _ = conn.close(200, "done".into()).await;
    }
    let confirmed = amqp::publish_all(url, &messages).await?;
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

/// The exchange and routing key of a message, as the contract routes it
/// (`las_contracts::*_routing_key`). A body that does not match its schema
/// is still published (to test dead-lettering), routed by its raw fields.
fn route(body: &str, v: &serde_json::Value) -> anyhow::Result<(String, String)> {
    use las_contracts::{
        LAS_CHANGES_EXCHANGE, LasChangeV1, PORTAL_REQUESTS_EXCHANGE, ParentEditV1, PortalLinkV1,
    };
    let brin = v.get("brin").and_then(|b| b.as_str()).unwrap_or("unknown");
    match v.get("schema").and_then(|s| s.as_str()) {
        Some("las.change.v1") => {
            let key = match serde_json::from_str::<LasChangeV1>(body) {
                Ok(m) => las_contracts::change_routing_key(&m),
                Err(_) => {
                    let ty = v
                        .pointer("/change/type")
                        .and_then(|t| t.as_str())
                        .unwrap_or("unknown");
                    format!("las.{brin}.{ty}")
                }
            };
            Ok((LAS_CHANGES_EXCHANGE.into(), key))
        }
        Some("portal.link.v1") => {
            let key = match serde_json::from_str::<PortalLinkV1>(body) {
                Ok(m) => las_contracts::link_routing_key(&m),
                Err(_) => format!("portal.{brin}.link"),
            };
            Ok((PORTAL_REQUESTS_EXCHANGE.into(), key))
        }
        Some("portal.parent_edit.v1") => {
            let key = match serde_json::from_str::<ParentEditV1>(body) {
                Ok(m) => las_contracts::parent_edit_routing_key(&m),
                Err(_) => format!("portal.{brin}.parent_edit"),
            };
            Ok((PORTAL_REQUESTS_EXCHANGE.into(), key))
        }
        Some("portal.erasure.v1") => {
            let key = match serde_json::from_str::<las_contracts::ErasureV1>(body) {
                Ok(m) => las_contracts::erasure_routing_key(&m),
                Err(_) => format!("portal.{brin}.erasure"),
            };
            Ok((PORTAL_REQUESTS_EXCHANGE.into(), key))
        }
        Some("portal.coupling.v1") => {
            let key = match serde_json::from_str::<las_contracts::CouplingV1>(body) {
                Ok(m) => las_contracts::coupling_routing_key(&m),
                Err(_) => format!("portal.{brin}.coupling"),
            };
            Ok((PORTAL_REQUESTS_EXCHANGE.into(), key))
        }
        other => bail!(
            "unknown schema {other:?}; expected las.change.v1, portal.link.v1, portal.parent_edit.v1, portal.coupling.v1 or portal.erasure.v1"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routed(body: &str) -> (String, String) {
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        route(body, &v).expect("routed")
    }

    fn example(name: &str) -> String {
        let file = format!(
            "{}/../contracts/examples/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&file).expect("contract example")
    }

    #[test]
    fn every_message_schema_of_the_contract_is_routed_as_the_contract_says() {
        let change = example("guardian.upserted.json");
        let typed: las_contracts::LasChangeV1 = serde_json::from_str(&change).expect("valid");
        assert_eq!(
            routed(&change),
            (
                las_contracts::LAS_CHANGES_EXCHANGE.to_owned(),
                las_contracts::change_routing_key(&typed)
            )
        );
        let link = example("link.parnassys.json");
        let typed: las_contracts::PortalLinkV1 = serde_json::from_str(&link).expect("valid");
        assert_eq!(
            routed(&link),
            (
                las_contracts::PORTAL_REQUESTS_EXCHANGE.to_owned(),
                las_contracts::link_routing_key(&typed)
            )
        );
        // The old router refused parent edits although the contract lists them.
        let edit = example("parent_edit.json");
        let typed: las_contracts::ParentEditV1 = serde_json::from_str(&edit).expect("valid");
        assert_eq!(
            routed(&edit),
            (
                las_contracts::PORTAL_REQUESTS_EXCHANGE.to_owned(),
                las_contracts::parent_edit_routing_key(&typed)
            )
        );
        let coupling = example("coupling.json");
        assert_eq!(
            routed(&coupling).1,
            "portal.12AB.coupling",
            "R13 decisions go to the portal queue"
        );
    }

    #[test]
    fn an_unknown_schema_is_refused_and_an_invalid_body_still_routed() {
        let v = serde_json::json!({"schema": "x.v9"});
        assert!(route("{}", &v).is_err());
        let bad =
            r#"{"schema":"las.change.v1","brin":"12AB","change":{"type":"guardian.upserted"}}"#;
        assert_eq!(
            routed(bad),
            (
                las_contracts::LAS_CHANGES_EXCHANGE.to_owned(),
                "las.12AB.guardian.upserted".to_owned()
            )
        );
    }
}
