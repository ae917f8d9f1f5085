//! The worker's exchanges, queues and bindings (the contract's topology).

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};
use las_contracts::{
    CHANGES_QUEUE, DEAD_LETTER_EXCHANGE, DEAD_LETTER_QUEUE, LAS_CHANGES_EXCHANGE, PORTAL_QUEUE,
    PORTAL_REQUESTS_EXCHANGE, SYNC_EVENTS_EXCHANGE,
};

use super::{ls, s};

/// Declares exchanges, queues and bindings; idempotent, so the worker runs
/// on an empty broker and every replica may do it at start.
pub async fn declare_topology(ch: &Channel, delivery_limit: i64) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    ch.exchange_declare(
        s(LAS_CHANGES_EXCHANGE),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s(PORTAL_REQUESTS_EXCHANGE),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s(DEAD_LETTER_EXCHANGE),
        ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await?;
    ch.exchange_declare(
        s(SYNC_EVENTS_EXCHANGE),
        ExchangeKind::Topic,
        durable,
        FieldTable::default(),
    )
    .await?;

    let qopts = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    let mut dl_args = FieldTable::default();
    dl_args.insert(s("x-queue-type"), ls("quorum"));
    ch.queue_declare(s(DEAD_LETTER_QUEUE), qopts, dl_args)
        .await?;
    ch.queue_bind(
        s(DEAD_LETTER_QUEUE),
        s(DEAD_LETTER_EXCHANGE),
        s(""),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;

    for (queue, exchange, key) in [
        (CHANGES_QUEUE, LAS_CHANGES_EXCHANGE, "las.#"),
        (PORTAL_QUEUE, PORTAL_REQUESTS_EXCHANGE, "portal.#"),
    ] {
        let mut args = FieldTable::default();
        args.insert(s("x-queue-type"), ls("quorum"));
        args.insert(
            s("x-delivery-limit"),
            AMQPValue::LongLongInt(delivery_limit),
        );
        args.insert(s("x-dead-letter-exchange"), ls(DEAD_LETTER_EXCHANGE));
        args.insert(s("x-dead-letter-strategy"), ls("at-least-once"));
        args.insert(s("x-overflow"), ls("reject-publish"));
        ch.queue_declare(s(queue), qopts, args).await?;
        ch.queue_bind(
            s(queue),
            s(exchange),
            s(key),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    }
    Ok(())
}
