//! `las-worker dlq`: inspect, replay and purge the dead-letter queue
//! (`las-worker.dead-letter`).
//!
//! AMQP cannot look at a queue without taking its messages, so every command
//! takes all dead letters with `basic.get` (not acknowledged) on one channel,
//! acts on the selected ones, and gives the others back to the queue
//! (`basic.nack` with requeue). A replayed message is published with its body
//! and properties unchanged, its headers without the dead-letter bookkeeping
//! plus `x-las-replayed-at` (so a person sees that, and when, a message was
//! replayed, also on its dead letter if it is rejected again), with publisher
//! confirms and `mandatory`, to the exchange and routing key it was first
//! published with; only after
//! the broker confirmed (and routed) it is the dead letter acknowledged, so a
//! failure leaves it in the queue. Purge acknowledges the selected ones.
//!
//! Dead letters of the worker carry `x-las-*` headers; messages RabbitMQ
//! dead-lettered itself (delivery limit exceeded) carry `x-death` instead.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::{ArgGroup, Args, Subcommand};
use lapin::Confirmation;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use las_contracts::{DEAD_LETTER_QUEUE, dead_letter};
use serde_json::Value;

use super::{OutputFormat, json_line};
use crate::adapters::amqp::dead_letters::{self, Letter, Taken, number, text};
use crate::app::settings::BrokerArgs;

#[derive(Debug, Clone, Subcommand)]
pub enum DlqCommand {
    /// List dead letters (id, time, reason code, routing key, reason), oldest
    /// first. Prints nothing when the queue is empty. No personal data.
    #[command(
        after_help = "Examples:\n  las-worker dlq list\n  las-worker dlq list --reason unknown_brin --format json"
    )]
    List(ListArgs),
    /// Show one dead letter: its headers and body. Body values are masked
    /// (`***`) unless --show-values is given. Exit code 1 when there is none.
    #[command(
        after_help = "Example:\n  las-worker dlq show 4f0e2b9e-6a57-4c3e-9d1a-2b7c1f0a9e11 --show-values"
    )]
    Show(ShowArgs),
    /// Publish dead letters again, unchanged, to their original exchange and
    /// routing key (once the cause is fixed), then remove them from the queue.
    #[command(
        after_help = "Examples:\n  las-worker school configure --brin 99ZZ --system parnassys --environment-id parnassys-99ZZ-prod\n  las-worker dlq replay --reason unknown_brin\n  las-worker dlq replay 4f0e2b9e-6a57-4c3e-9d1a-2b7c1f0a9e11\n  las-worker dlq replay --all\n\nExit codes: 0 all selected replayed, 1 nothing matched or some could not be replayed (they stay in the queue), 2 broker error."
    )]
    Replay(SelectArgs),
    /// Remove dead letters for good.
    #[command(
        after_help = "Examples:\n  las-worker dlq purge 4f0e2b9e-6a57-4c3e-9d1a-2b7c1f0a9e11\n  las-worker dlq purge --reason invalid_json\n  las-worker dlq purge --all\n\nExit codes: 0 purged, 1 nothing matched, 2 broker error."
    )]
    Purge(SelectArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// Only dead letters with this reason code (e.g. unknown_brin, or
    /// delivery_limit for messages the broker dead-lettered).
    #[arg(long)]
    pub reason: Option<String>,
    /// Output: text for people, json for scripts (JSON lines).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// The dead letter's id (its message id, or a hash of its body; see `dlq list`).
    pub id: String,
    /// Print the body's values (personal data); otherwise they are masked.
    #[arg(long)]
    pub show_values: bool,
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("select").required(true).args(["id", "all", "reason"])))]
pub struct SelectArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// One dead letter, by the id `dlq list` prints.
    pub id: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
    /// Every dead letter with this reason code.
    #[arg(long)]
    pub reason: Option<String>,
}

impl SelectArgs {
    fn selects(&self, l: &Letter) -> bool {
        if self.all {
            return true;
        }
        if let Some(id) = &self.id {
            return l.info.id == *id || l.info.message_id.as_deref() == Some(id.as_str());
        }
        self.reason.as_deref() == Some(l.info.reason_code.as_str())
    }
}

/// Headers the replayed message must not carry: the dead-letter bookkeeping.
fn is_dead_letter_header(key: &str) -> bool {
    key.starts_with("x-las-")
        || key == "x-death"
        || key.starts_with("x-first-death-")
        || key.starts_with("x-last-death-")
        || key == "x-delivery-count"
        || key == "x-acquired-count"
}

/// The message as it was first published: its headers without the
/// dead-letter bookkeeping, its other properties unchanged.
fn original_properties(d: &Delivery) -> lapin::BasicProperties {
    let mut headers = FieldTable::default();
    if let Some(h) = d.properties.headers() {
        for (k, v) in h.inner() {
            if !is_dead_letter_header(k.as_str()) {
                headers.insert(k.clone(), v.clone());
            }
        }
    }
    d.properties.clone().with_headers(headers)
}

/// The original properties plus `x-las-replayed-at`: when the message was
/// replayed, kept on its dead letter if it is rejected again.
fn replayed_properties(d: &Delivery) -> lapin::BasicProperties {
    let props = original_properties(d);
    let mut headers = props.headers().clone().unwrap_or_default();
    headers.insert(
        dead_letter::REPLAYED_AT.into(),
        lapin::types::AMQPValue::LongString(chrono::Utc::now().to_rfc3339().into()),
    );
    props.with_headers(headers)
}

async fn take_all(broker: &BrokerArgs) -> anyhow::Result<Taken> {
    Ok(dead_letters::take_all(
        broker.amqp_url.expose(),
        broker.delivery_limit,
        "las-worker dlq",
    )
    .await?)
}

/// Runs a `dlq` command.
pub async fn run(cmd: &DlqCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DlqCommand::List(args) => list(args).await,
        DlqCommand::Show(args) => show(args).await,
        DlqCommand::Replay(args) => replay(args).await,
        DlqCommand::Purge(args) => purge(args).await,
    }
}

async fn list(args: &ListArgs) -> anyhow::Result<ExitCode> {
    let mut taken = take_all(&args.broker).await?;
    let mut letters = std::mem::take(&mut taken.letters);
    let now = chrono::Utc::now();
    for l in &mut letters {
        l.info.age_days = l.info.age(now).map(|a| a.num_days());
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut shown = 0;
    for l in &letters {
        if args
            .reason
            .as_deref()
            .is_some_and(|r| r != l.info.reason_code)
        {
            continue;
        }
        shown += 1;
        match args.format {
            OutputFormat::Json => json_line(&mut out, &l.info)?,
            OutputFormat::Text => {
                use std::io::Write;
                let i = &l.info;
                writeln!(
                    out,
                    "{}  {}  {}  {}  {}  {}",
                    i.id,
                    i.rejected_at.as_deref().unwrap_or("-"),
                    i.age_days
                        .map(|d| format!("{d}d"))
                        .unwrap_or_else(|| "-".into()),
                    i.reason_code,
                    i.original_routing_key.as_deref().unwrap_or("-"),
                    i.reason.as_deref().unwrap_or("")
                )?;
            }
        }
    }
    eprintln!(
        "{shown} dead letter(s) listed, {} in {DEAD_LETTER_QUEUE}",
        letters.len()
    );
    taken.release(letters).await?;
    Ok(ExitCode::SUCCESS)
}

/// A body without its values: keys, LAS keys, ids and types stay, other
/// text becomes `***` (blank text stays blank, so R2 problems remain visible).
pub fn mask(v: &Value) -> Value {
    const KEEP: [&str; 12] = [
        "schema",
        "message_id",
        "brin",
        "system",
        "environment_id",
        "label",
        "emitted_at",
        "edited_at",
        "type",
        "las_key",
        "kind",
        "guardian_las_key",
    ];
    fn walk(v: &Value, keep: bool) -> Value {
        match v {
            Value::Object(o) => Value::Object(
                o.iter()
                    .map(|(k, x)| {
                        let keep = KEEP.contains(&k.as_str()) || k.ends_with("_keys");
                        (k.clone(), walk(x, keep))
                    })
                    .collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(|x| walk(x, keep)).collect()),
            Value::String(s) if !keep && !s.trim().is_empty() => Value::String("***".into()),
            other => other.clone(),
        }
    }
    walk(v, false)
}

async fn show(args: &ShowArgs) -> anyhow::Result<ExitCode> {
    let mut taken = take_all(&args.broker).await?;
    let letters = std::mem::take(&mut taken.letters);
    let mut found = 0;
    for l in &letters {
        if l.info.id != args.id && l.info.message_id.as_deref() != Some(args.id.as_str()) {
            continue;
        }
        found += 1;
        let mut headers = BTreeMap::new();
        if let Some(h) = l.delivery.properties.headers() {
            for (k, v) in h.inner() {
                let shown = text(v)
                    .map(Value::String)
                    .or_else(|| number(v).map(Value::from))
                    .unwrap_or_else(|| Value::String(format!("{v:?}")));
                headers.insert(k.as_str().to_owned(), shown);
            }
        }
        let body = match serde_json::from_slice::<Value>(&l.delivery.data) {
            Ok(v) if args.show_values => v,
            Ok(v) => mask(&v),
            Err(_) if args.show_values => {
                Value::String(String::from_utf8_lossy(&l.delivery.data).into_owned())
            }
            Err(_) => Value::String(format!(
                "({} bytes, not JSON; --show-values prints them)",
                l.delivery.data.len()
            )),
        };
        let view = serde_json::json!({
            "letter": l.info,
            "headers": headers,
            "body": body,
        });
        println!("{}", serde_json::to_string_pretty(&view)?);
    }
    taken.release(letters).await?;
    if found == 0 {
        eprintln!("no dead letter with id {}", args.id);
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay(args: &SelectArgs) -> anyhow::Result<ExitCode> {
    let mut taken = take_all(&args.broker).await?;
    let (selected, rest): (Vec<Letter>, Vec<Letter>) = std::mem::take(&mut taken.letters)
        .into_iter()
        .partition(|l| args.selects(l));
    let pub_ch = taken.conn.create_channel().await?;
    pub_ch
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let mut keep = rest;
    let mut pending = Vec::new();
    let mut failed = 0;
    for l in selected {
        let (Some(exchange), Some(key)) = (
            l.info.original_exchange.clone(),
            l.info.original_routing_key.clone(),
        ) else {
            eprintln!(
                "{}: the original exchange or routing key is unknown; kept in the queue",
                l.info.id
            );
            failed += 1;
            keep.push(l);
            continue;
        };
        let confirm = pub_ch
            .basic_publish(
                exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &l.delivery.data,
                replayed_properties(&l.delivery),
            )
            .await?;
        pending.push((l, exchange, key, confirm));
    }
    let mut replayed = 0;
    for (l, exchange, key, confirm) in pending {
        match confirm.await? {
            Confirmation::Ack(None) => {
                l.delivery.acker.ack(BasicAckOptions::default()).await?;
                println!(
                    "replayed {} to {exchange} with routing key {key}",
                    l.info.id
                );
                replayed += 1;
            }
            Confirmation::Ack(Some(_)) => {
                eprintln!(
                    "{}: no queue is bound to {exchange} for routing key {key}; kept in the queue",
                    l.info.id
                );
                failed += 1;
                keep.push(l);
            }
            _ => {
                eprintln!(
                    "{}: the broker refused the message (publisher nack); kept in the queue",
                    l.info.id
                );
                failed += 1;
                keep.push(l);
            }
        }
    }
    let _ = pub_ch.close(200, "done".into()).await;
    taken.release(keep).await?;
    println!("replayed {replayed} dead letter(s); {failed} could not be replayed");
    Ok(if replayed > 0 && failed == 0 {
        ExitCode::SUCCESS
    } else {
        if replayed == 0 && failed == 0 {
            eprintln!("no dead letter matched");
        }
        ExitCode::from(1)
    })
}

async fn purge(args: &SelectArgs) -> anyhow::Result<ExitCode> {
    let mut taken = take_all(&args.broker).await?;
    let (selected, rest): (Vec<Letter>, Vec<Letter>) = std::mem::take(&mut taken.letters)
        .into_iter()
        .partition(|l| args.selects(l));
    for l in &selected {
        l.delivery.acker.ack(BasicAckOptions::default()).await?;
        println!("purged {} ({})", l.info.id, l.info.reason_code);
    }
    taken.release(rest).await?;
    println!("purged {} dead letter(s)", selected.len());
    if selected.is_empty() {
        eprintln!("no dead letter matched");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_bookkeeping_is_not_replayed() {
        assert!(is_dead_letter_header("x-death") && !is_dead_letter_header("traceparent"));
    }

    #[test]
    fn mask_keeps_keys_and_blanks() {
        let v = serde_json::json!({"brin": "12AB", "change": {"type": "guardian.upserted", "las_key": "G1",
            "first_name": "Anna", "phone": " ", "email": null, "student_keys": ["S1"]}});
        let m = mask(&v);
        assert_eq!(m["change"]["first_name"], "***");
        assert_eq!(m["change"]["phone"], " ");
        assert_eq!(m["change"]["las_key"], "G1");
        assert_eq!(m["change"]["student_keys"][0], "S1");
        assert_eq!(m["brin"], "12AB");
    }
}
