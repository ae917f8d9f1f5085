//! `las-worker events bind|take`: a queue of one's own on the sync events
//! (`las.sync_event.v1`), as a service that follows the portal's data binds
//! it. The demo shows with it what other services received; support uses it
//! to watch one school.

use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::adapters::amqp::event_tap;
use crate::app::settings::BrokerArgs;

#[derive(Debug, Clone, Subcommand)]
pub enum EventsCommand {
    /// Declare a durable queue and bind it to the sync events (exchange
    /// las.sync-events). Events published from then on collect in it.
    #[command(
        after_help = "Examples:\n  las-worker events bind --queue support-12AB --routing-key 'sync.12AB.#'\n  las-worker events bind --queue all-events\n\nExit codes: 0 bound, 2 broker error."
    )]
    Bind(BindArgs),
    /// Take the events collected in a queue (they are removed from it) and
    /// print them as JSON lines. Prints nothing when the queue is empty.
    #[command(
        after_help = "Example:\n  las-worker events take --queue support-12AB\n\nExit codes: 0 printed (or none), 2 broker error."
    )]
    Take(TakeArgs),
}

#[derive(Debug, Clone, Args)]
pub struct BindArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long)]
    pub queue: String,
    /// `sync.<brin>.<event_type>` with AMQP wildcards; `#` is every event.
    #[arg(long, default_value = "#")]
    pub routing_key: String,
}

#[derive(Debug, Clone, Args)]
pub struct TakeArgs {
    #[command(flatten)]
    pub broker: BrokerArgs,
    #[arg(long)]
    pub queue: String,
    /// At most this many events.
    #[arg(long, default_value_t = 10_000)]
    pub max: usize,
}

pub async fn run(cmd: &EventsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EventsCommand::Bind(a) => {
            event_tap::bind(
                a.broker.amqp_url.expose(),
                a.broker.delivery_limit,
                &a.queue,
                &a.routing_key,
            )
            .await?;
            println!(
                "queue {} receives sync events matching {}",
                a.queue, a.routing_key
            );
        }
        EventsCommand::Take(a) => {
            for body in event_tap::take(a.broker.amqp_url.expose(), &a.queue, a.max).await? {
                println!("{}", String::from_utf8_lossy(&body));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
