//! Shortcuts over lapin for the end-to-end tests: open a channel, declare, publish, consume,
//! drain and read the errors the server closes with. Every call is bounded by [`within`], so
//! a broker that never answers fails the test instead of hanging it.

use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use tokio::sync::mpsc;

use super::within;

/// Opens a channel on `conn`.
pub async fn open(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("open channel")
}

/// Declares a plain (non-durable, non-exclusive) queue.
pub async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    declare_with(
        ch,
        name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare")
}

/// `queue.declare` with `options` and `args`: the server's answer, refusals included.
pub async fn declare_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(ch.queue_declare(name, options, args)).await
}

/// A passive `queue.declare`: the queue's counts, or the 404 if it does not exist.
pub async fn passive(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_with(ch, name, options, FieldTable::default()).await
}

/// Ready messages in `queue`, from a passive declare.
pub async fn ready(ch: &Channel, queue: &str) -> u32 {
    passive(ch, queue)
        .await
        .expect("passive declare")
        .message_count()
}

/// A lapin field table (queue arguments, headers) from its entries.
pub fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

/// A long-string field value.
pub fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

/// Publishes with `options` and `properties` and waits for the publisher confirm
/// (`NotRequested` at once outside confirm mode).
pub async fn publish_with(
    ch: &Channel,
    exchange: &str,
    key: &str,
    body: &[u8],
    options: BasicPublishOptions,
    properties: BasicProperties,
) -> Confirmation {
    let confirm = within(ch.basic_publish(exchange, key, options, body, properties))
        .await
        .expect("basic.publish");
    within(confirm).await.expect("publisher confirm")
}

/// Publishes `body` with default options and properties; see [`publish_with`].
pub async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> Confirmation {
    publish_with(
        ch,
        exchange,
        key,
        body,
        BasicPublishOptions::default(),
        BasicProperties::default(),
    )
    .await
}

/// Publishes bodies "1", "2", … "n" to `queue` through the default exchange.
pub async fn publish_numbered(ch: &Channel, queue: &str, n: u32) {
    for i in 1..=n {
        publish(ch, "", queue, i.to_string().as_bytes()).await;
    }
}

/// `basic.consume` of `queue` with `tag`, acks required.
pub async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    within(ch.basic_consume(
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("basic.consume")
}

/// The consumer's next delivery.
pub async fn next(consumer: &mut Consumer) -> Delivery {
    within(consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery")
}

/// A delivery's body as UTF-8 text.
pub fn body(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf-8 body")
}

/// `basic.get` with acks required: the message, or `None` when the queue is empty.
pub async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(ch.basic_get(queue, BasicGetOptions::default()))
        .await
        .expect("basic.get")
}

/// Takes every ready message of `queue` (auto-ack) and answers their bodies.
pub async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue, BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
    {
        out.push(body(&m.delivery));
    }
    out
}

/// `basic.ack` of `tag`, with `multiple` as given.
pub async fn ack(ch: &Channel, tag: u64, multiple: bool) {
    within(ch.basic_ack(tag, BasicAckOptions { multiple }))
        .await
        .expect("basic.ack sent");
}

/// Errors reported when the server closes `ch`.
pub fn channel_errors(ch: &Channel) -> mpsc::UnboundedReceiver<lapin::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    ch.on_error(move |e| {
        let _ = tx.send(e);
    });
    rx
}

/// Errors reported when the server closes `conn`.
pub fn connection_errors(conn: &Connection) -> mpsc::UnboundedReceiver<lapin::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    conn.on_error(move |e| {
        let _ = tx.send(e);
    });
    rx
}

/// The reply code and text of the next close reported on `rx`.
pub async fn next_error(rx: &mut mpsc::UnboundedReceiver<lapin::Error>) -> (u16, String) {
    let e = within(rx.recv()).await.expect("error handler dropped");
    amqp(&e)
}

/// The reply code and text of a close the server sent.
pub fn amqp(e: &lapin::Error) -> (u16, String) {
    match e {
        lapin::Error::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected a close from the server, got {other:?}"),
    }
}

/// The reply code and text of a call the server must have refused.
pub fn expect_amqp<T: std::fmt::Debug>(r: lapin::Result<T>) -> (u16, String) {
    amqp(&r.expect_err("the server should have refused"))
}

/// Puts `ch` in publisher-confirm mode.
pub async fn confirm_mode(ch: &Channel) {
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
}

/// Declares exchange `name` of `kind` (not durable, no arguments).
pub async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange.declare");
}

/// Binds `queue` to `exchange` with `key` and `arguments`.
pub async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    within(ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), arguments))
        .await
        .expect("queue.bind");
}

/// Routing keys of every message ready in `queue` (consumes them).
pub async fn routed_keys(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue).await {
        out.push(m.delivery.routing_key.to_string());
        ack(ch, m.delivery.delivery_tag, false).await;
    }
    out
}

/// Declares a plain `queue` and binds it to `exchange` with `key`.
pub async fn queue_bound(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    declare(ch, queue).await;
    bind(ch, queue, exchange, key, FieldTable::default()).await;
}

/// Publishes `body` to `queue` through the default exchange, with `priority` if given.
pub async fn publish_with_priority(ch: &Channel, queue: &str, body: &str, priority: Option<u8>) {
    let mut props = BasicProperties::default();
    if let Some(p) = priority {
        props = props.with_priority(p);
    }
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body.as_bytes(),
        props,
    )
    .await
    .unwrap();
}
