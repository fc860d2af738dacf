//! End-to-end behaviour of the broker over real TCP, with lapin as the client (and, where
//! a test needs to act below lapin, a tiny raw AMQP client built on minimq-protocol).
//!
//! Every test starts its own broker on an ephemeral port. Nothing waits on a sleep for
//! synchronisation: a test awaits an event (a reply, a delivery, a close) under a timeout
//! guard, or relies on the broker's ordering guarantees (one connection's frames are
//! handled in order, and a queue handles its commands in order). Where the condition is a
//! passage of time (TTL), the test polls a count until a deadline.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use common::raw::Client;
use common::{connect, start_broker, within, TIMEOUT};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer, ExchangeKind};
use minimq_protocol::{ContentHeader, Frame, Method};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn open(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("open channel")
}

/// Declares a plain (non-durable, non-exclusive) queue.
async fn declare(ch: &Channel, name: &str) -> lapin::Queue {
    declare_with(
        ch,
        name,
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.declare")
}

async fn declare_with(
    ch: &Channel,
    name: &str,
    options: QueueDeclareOptions,
    args: FieldTable,
) -> lapin::Result<lapin::Queue> {
    within(ch.queue_declare(name, options, args)).await
}

async fn passive(ch: &Channel, name: &str) -> lapin::Result<lapin::Queue> {
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    declare_with(ch, name, options, FieldTable::default()).await
}

/// Ready messages in `queue`, from a passive declare.
async fn ready(ch: &Channel, queue: &str) -> u32 {
    passive(ch, queue)
        .await
        .expect("passive declare")
        .message_count()
}

fn args(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in entries {
        t.insert((*k).into(), v.clone());
    }
    t
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

async fn publish_with(
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

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) -> Confirmation {
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
async fn publish_numbered(ch: &Channel, queue: &str, n: u32) {
    for i in 1..=n {
        publish(ch, "", queue, i.to_string().as_bytes()).await;
    }
}

async fn consume(ch: &Channel, queue: &str, tag: &str) -> Consumer {
    within(ch.basic_consume(
        queue,
        tag,
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("basic.consume")
}

async fn next(consumer: &mut Consumer) -> Delivery {
    within(consumer.next())
        .await
        .expect("consumer stream ended")
        .expect("delivery")
}

fn body(d: &Delivery) -> String {
    String::from_utf8(d.data.clone()).expect("utf-8 body")
}

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    within(ch.basic_get(queue, BasicGetOptions::default()))
        .await
        .expect("basic.get")
}

/// Takes every ready message of `queue` (auto-ack) and answers their bodies.
async fn drain(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue, BasicGetOptions { no_ack: true }))
        .await
        .expect("basic.get")
    {
        out.push(body(&m.delivery));
    }
    out
}

async fn ack(ch: &Channel, tag: u64, multiple: bool) {
    within(ch.basic_ack(tag, BasicAckOptions { multiple }))
        .await
        .expect("basic.ack sent");
}

/// Errors reported when the server closes `ch`.
fn channel_errors(ch: &Channel) -> mpsc::UnboundedReceiver<lapin::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    ch.on_error(move |e| {
        let _ = tx.send(e);
    });
    rx
}

/// Errors reported when the server closes `conn`.
fn connection_errors(conn: &Connection) -> mpsc::UnboundedReceiver<lapin::Error> {
    let (tx, rx) = mpsc::unbounded_channel();
    conn.on_error(move |e| {
        let _ = tx.send(e);
    });
    rx
}

async fn next_error(rx: &mut mpsc::UnboundedReceiver<lapin::Error>) -> (u16, String) {
    let e = within(rx.recv()).await.expect("error handler dropped");
    amqp(&e)
}

/// The reply code and text of a close the server sent.
fn amqp(e: &lapin::Error) -> (u16, String) {
    match e {
        lapin::Error::ProtocolError(a) => (a.get_id(), a.get_message().to_string()),
        other => panic!("expected a close from the server, got {other:?}"),
    }
}

fn expect_amqp<T: std::fmt::Debug>(r: lapin::Result<T>) -> (u16, String) {
    amqp(&r.expect_err("the server should have refused"))
}

async fn confirm_mode(ch: &Channel) {
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .expect("confirm.select");
}

/// Polls `queue`'s ready count until it equals `want` (for conditions that are a passage
/// of time, like TTL expiry).
async fn wait_ready(ch: &Channel, queue: &str, want: u32) {
    let deadline = tokio::time::Instant::now() + TIMEOUT;
    loop {
        let n = ready(ch, queue).await;
        if n == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue '{queue}' still has {n} ready messages, expected {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Queue declare
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn queue_declare_is_idempotent() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let first = declare(&ch, "q").await;
    assert_eq!(first.name().as_str(), "q");
    publish(&ch, "", "q", b"kept").await;
    let second = declare(&ch, "q").await;
    assert_eq!(second.name().as_str(), "q");
    assert_eq!(second.message_count(), 1, "redeclare keeps the messages");
    let d = get(&ch, "q").await.expect("the message");
    assert_eq!(body(&d.delivery), "kept");
}

#[tokio::test]
async fn redeclare_with_other_durable_flag_closes_only_that_channel_with_406() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch1 = open(&conn).await;
    declare(&ch1, "q").await;
    let ch2 = open(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let err = expect_amqp(declare_with(&ch2, "q", durable, FieldTable::default()).await);
    assert_eq!(
        err,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': \
             received 'true' but current is 'false'"
                .to_string()
        )
    );
    assert!(!ch2.status().connected(), "the failing channel is closed");
    // The other channel, the connection and new channels keep working.
    publish(&ch1, "", "q", b"x").await;
    assert_eq!(ready(&ch1, "q").await, 1);
    let ch3 = open(&conn).await;
    assert_eq!(ready(&ch3, "q").await, 1);
    assert!(conn.status().connected());
}

#[tokio::test]
async fn passive_declare_of_missing_queue_is_404() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    assert_eq!(
        expect_amqp(passive(&ch, "q").await),
        (404, "NOT_FOUND - no queue 'q' in vhost '/'".to_string())
    );
    assert!(conn.status().connected());
}

#[tokio::test]
async fn declaring_an_amq_prefixed_queue_is_403() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let (code, text) = expect_amqp(
        declare_with(
            &ch,
            "amq.mine",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    assert_eq!(code, 403);
    assert_eq!(
        text,
        "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'"
    );
}

#[tokio::test]
async fn empty_name_gets_a_server_named_amq_gen_queue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let options = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let q = declare_with(&ch, "", options, FieldTable::default())
        .await
        .unwrap();
    let name = q.name().as_str().to_string();
    assert!(name.starts_with("amq.gen-"), "{name}");
    assert!(name.len() > "amq.gen-".len() + 10, "{name}");
    let other = declare_with(&ch, "", options, FieldTable::default())
        .await
        .unwrap();
    assert_ne!(other.name().as_str(), name, "each one is new");
    // It is a real queue, reachable by its name.
    publish(&ch, "", &name, b"hello").await;
    assert_eq!(ready(&ch, &name).await, 1);
}

#[tokio::test]
async fn declare_ok_reports_ready_message_and_consumer_counts() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let q = declare(&ch, "q").await;
    assert_eq!((q.message_count(), q.consumer_count()), (0, 0));
    publish_numbered(&ch, "q", 3).await;
    let q = declare(&ch, "q").await;
    assert_eq!((q.message_count(), q.consumer_count()), (3, 0));
    let worker = open(&conn).await;
    within(worker.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = consume(&worker, "q", "c").await;
    assert_eq!(body(&next(&mut consumer).await), "1");
    // The unacked message is not counted; the consumer is.
    let q = declare(&ch, "q").await;
    assert_eq!((q.message_count(), q.consumer_count()), (2, 1));
}

#[tokio::test]
async fn quorum_queue_type_is_accepted_but_must_be_durable() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let quorum = args(&[("x-queue-type", text("quorum"))]);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_with(&ch, "qq", durable, quorum.clone())
        .await
        .expect("durable quorum queue");
    confirm_mode(&ch).await;
    assert_eq!(publish(&ch, "", "qq", b"m").await, Confirmation::Ack(None));
    let m = get(&ch, "qq").await.expect("the message");
    assert_eq!(body(&m.delivery), "m");

    let (code, text) =
        expect_amqp(declare_with(&ch, "qq2", QueueDeclareOptions::default(), quorum).await);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - invalid property 'non-durable' for queue 'qq2' in vhost '/'"
    );
}

// ---------------------------------------------------------------------------------------
// Exclusive and auto-delete queues, delete, purge
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn exclusive_queue_is_locked_to_its_connection_and_deleted_when_it_closes() {
    let broker = start_broker().await;
    let owner = connect(&broker).await;
    let och = open(&owner).await;
    let options = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    declare_with(&och, "ex", options, FieldTable::default())
        .await
        .unwrap();

    let other = connect(&broker).await;
    let (code, text) = expect_amqp(passive(&open(&other).await, "ex").await);
    assert_eq!(code, 405);
    assert!(
        text.starts_with(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'ex' in vhost '/'"
        ),
        "{text}"
    );
    let ch = open(&other).await;
    let refused = within(ch.basic_consume(
        "ex",
        "c",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_eq!(expect_amqp(refused).0, 405);
    // Publishing to it through the default exchange is allowed, as in RabbitMQ.
    let ch = open(&other).await;
    publish(&ch, "", "ex", b"from other").await;
    assert_eq!(ready(&och, "ex").await, 1);

    within(owner.close(200, "bye")).await.unwrap();
    assert_eq!(
        expect_amqp(passive(&open(&other).await, "ex").await),
        (404, "NOT_FOUND - no queue 'ex' in vhost '/'".to_string())
    );
}

/// RabbitMQ compares a redeclare's `exclusive` through the owner check, not as a flag:
/// the owning connection redeclaring its exclusive queue without `exclusive` (aiormq's
/// `test_exclusive_queue_locked`), or anyone declaring a plain queue `exclusive`, is
/// `405 RESOURCE_LOCKED`, checked before `durable`; another connection is 405 as before.
/// Checked against RabbitMQ 3.10.
#[tokio::test]
async fn a_redeclare_with_another_exclusive_flag_is_resource_locked() {
    let broker = start_broker().await;
    let owner = connect(&broker).await;
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    let locked = |name: &str| {
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost \
             '/'. It could be originally declared on another connection or the exclusive \
             property value does not match that of the original declaration."
        )
    };
    let ch0 = open(&owner).await;
    declare_with(&ch0, "ex", exclusive, FieldTable::default())
        .await
        .unwrap();
    within(ch0.basic_consume(
        "ex",
        "c",
        BasicConsumeOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    for options in [
        QueueDeclareOptions::default(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
    ] {
        let ch1 = open(&owner).await;
        let got = expect_amqp(declare_with(&ch1, "ex", options, FieldTable::default()).await);
        assert_eq!(got, (405, locked("ex")), "{options:?}");
    }
    // The owner's exclusive redeclare still works.
    declare_with(&open(&owner).await, "ex", exclusive, FieldTable::default())
        .await
        .unwrap();
    let other = connect(&broker).await;
    let got = expect_amqp(
        declare_with(
            &open(&other).await,
            "ex",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await,
    );
    assert_eq!(got, (405, locked("ex")));
    // A plain queue declared exclusive, by the connection that declared it.
    declare(&ch0, "plain").await;
    let got = expect_amqp(
        declare_with(
            &open(&owner).await,
            "plain",
            exclusive,
            FieldTable::default(),
        )
        .await,
    );
    assert_eq!(got, (405, locked("plain")));
}

#[tokio::test]
async fn auto_delete_queue_goes_when_its_last_consumer_cancels() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let options = QueueDeclareOptions {
        auto_delete: true,
        ..Default::default()
    };
    declare_with(&ch, "ad", options, FieldTable::default())
        .await
        .unwrap();
    let _c1 = consume(&ch, "ad", "c1").await;
    let _c2 = consume(&ch, "ad", "c2").await;
    within(ch.basic_cancel("c1", BasicCancelOptions::default()))
        .await
        .unwrap();
    let q = passive(&ch, "ad")
        .await
        .expect("still there with one consumer");
    assert_eq!(q.consumer_count(), 1);
    within(ch.basic_cancel("c2", BasicCancelOptions::default()))
        .await
        .unwrap();
    assert_eq!(expect_amqp(passive(&ch, "ad").await).0, 404);
}

#[tokio::test]
async fn delete_if_unused_and_if_empty_refuse_with_406_and_deleting_a_missing_queue_is_ok() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "busy").await;
    let _c = consume(&ch, "busy", "c").await;
    let if_unused = QueueDeleteOptions {
        if_unused: true,
        ..Default::default()
    };
    assert_eq!(
        expect_amqp(within(ch.queue_delete("busy", if_unused)).await),
        (
            406,
            "PRECONDITION_FAILED - queue 'busy' in vhost '/' in use".to_string()
        )
    );

    let ch = open(&conn).await;
    declare(&ch, "full").await;
    publish_numbered(&ch, "full", 2).await;
    let if_empty = QueueDeleteOptions {
        if_empty: true,
        ..Default::default()
    };
    assert_eq!(
        expect_amqp(within(ch.queue_delete("full", if_empty)).await),
        (
            406,
            "PRECONDITION_FAILED - queue 'full' in vhost '/' not empty".to_string()
        )
    );

    let ch = open(&conn).await;
    assert_eq!(ready(&ch, "full").await, 2, "the refused delete kept it");
    let n = within(ch.queue_delete("missing", QueueDeleteOptions::default()))
        .await
        .expect("deleting a missing queue is fine");
    assert_eq!(n, 0);
    let n = within(ch.queue_delete("full", QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 2, "delete-ok counts the messages");
    assert_eq!(expect_amqp(passive(&ch, "full").await).0, 404);
}

#[tokio::test]
async fn purge_removes_ready_messages_only() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 3).await;
    let held = get(&ch, "q").await.expect("message 1");
    assert_eq!(body(&held.delivery), "1");
    let purged = within(ch.queue_purge("q", QueuePurgeOptions::default()))
        .await
        .unwrap();
    assert_eq!(purged, 2);
    assert_eq!(ready(&ch, "q").await, 0);
    // The unacked message survived the purge: requeue it and it is back.
    within(ch.basic_reject(
        held.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    ))
    .await
    .unwrap();
    let again = get(&ch, "q").await.expect("message 1 again");
    assert_eq!(body(&again.delivery), "1");
    assert!(again.delivery.redelivered);
}

// ---------------------------------------------------------------------------------------
// Publishing and routing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "a").await;
    declare(&ch, "b").await;
    publish(&ch, "", "a", b"to a").await;
    publish(&ch, "", "nowhere", b"dropped").await;
    let m = get(&ch, "a").await.expect("routed to a");
    assert_eq!(body(&m.delivery), "to a");
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), "a");
    assert!(get(&ch, "b").await.is_none());
    assert!(ch.status().connected(), "unroutable is not an error");
    // Binding to the default exchange is not allowed.
    let refused = within(ch.queue_bind(
        "a",
        "",
        "x",
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_eq!(
        expect_amqp(refused),
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".to_string()
        )
    );
}

/// A channel remembers where its last default-exchange publish went; creating or deleting
/// a queue makes it look again. Publishes on one channel, the queue changed from another.
#[tokio::test]
async fn default_exchange_routes_follow_queues_created_and_deleted_between_publishes() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let publisher = open(&conn).await;
    let admin = open(&conn).await;
    confirm_mode(&publisher).await;

    // No queue yet: dropped. Then the queue appears: the same route now reaches it.
    publish(&publisher, "", "q", b"before").await;
    declare(&admin, "q").await;
    publish(&publisher, "", "q", b"first").await;
    assert_eq!(drain(&admin, "q").await, ["first"]);

    // The queue goes and comes back: the new one gets the message, not the old one.
    publish(&publisher, "", "q", b"to the old one").await;
    within(admin.queue_delete("q", QueueDeleteOptions::default()))
        .await
        .expect("delete");
    declare(&admin, "q").await;
    publish(&publisher, "", "q", b"to the new one").await;
    assert_eq!(drain(&admin, "q").await, ["to the new one"]);

    // Deleted and not recreated: dropped, not sent to the queue that is gone.
    within(admin.queue_delete("q", QueueDeleteOptions::default()))
        .await
        .expect("delete");
    publish(&publisher, "", "q", b"nowhere").await;
    declare(&admin, "q").await;
    assert!(drain(&admin, "q").await.is_empty());
}

#[tokio::test]
async fn publish_to_unknown_exchange_closes_the_channel_with_404() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let mut errors = channel_errors(&ch);
    within(ch.basic_publish(
        "nope",
        "k",
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_error(&mut errors).await,
        (
            404,
            "NOT_FOUND - no exchange 'nope' in vhost '/'".to_string()
        )
    );
    let ch2 = open(&conn).await;
    declare(&ch2, "still-fine").await;
    assert!(conn.status().connected());
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_312_before_its_confirm() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    confirm_mode(&ch).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirmation = publish_with(
        &ch,
        "",
        "nowhere",
        b"lost",
        mandatory,
        BasicProperties::default(),
    )
    .await;
    // lapin attaches a basic.return to the confirm only if it arrived first.
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an ack carrying the returned message, got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(returned.delivery.data, b"lost");
    // A routable mandatory publish is not returned.
    declare(&ch, "q").await;
    let c = publish_with(&ch, "", "q", b"ok", mandatory, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
}

/// AMQPStorm's `test_functional_close_gracefully_after_publish_mandatory_fails` shape: 25
/// unroutable mandatory publishes of an empty body (method and header frame, no body
/// frame), each its own write. Every `basic.return` comes without the client sending
/// anything more: a return waiting for a later event would time out here.
#[tokio::test]
async fn unroutable_mandatory_publishes_are_returned_without_waiting_for_more_input() {
    let broker = start_broker().await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    for body in [&b""[..], b"x"] {
        for _ in 0..25 {
            let mut frames = bytes::BytesMut::new();
            Frame::Method(
                1,
                minimq_protocol::BasicPublish {
                    exchange: String::new(),
                    routing_key: "nowhere".into(),
                    mandatory: true,
                    immediate: false,
                }
                .into(),
            )
            .encode(&mut frames);
            Frame::Header(
                1,
                Box::new(ContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties: Default::default(),
                }),
            )
            .encode(&mut frames);
            if !body.is_empty() {
                Frame::Body(1, Bytes::copy_from_slice(body)).encode(&mut frames);
            }
            raw.io.get_mut().write_all(&frames).await.expect("send");
        }
        for _ in 0..25 {
            match raw.method(1).await {
                Method::BasicReturn(r) => assert_eq!(
                    (r.reply_code, r.reply_text.as_str(), r.routing_key.as_str()),
                    (312, "NO_ROUTE", "nowhere")
                ),
                other => panic!("expected basic.return, got {other:?}"),
            }
            let Frame::Header(1, h) = raw.frame().await else {
                panic!("expected the returned message's header")
            };
            assert_eq!(h.body_size, body.len() as u64);
            if !body.is_empty() {
                let Frame::Body(1, b) = raw.frame().await else {
                    panic!("expected the returned message's body")
                };
                assert_eq!(&b[..], body);
            }
        }
    }
}

#[tokio::test]
async fn user_id_must_match_the_authenticated_user() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish_with(
        &ch,
        "",
        "q",
        b"mine",
        BasicPublishOptions::default(),
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await;
    assert_eq!(ready(&ch, "q").await, 1);
    let mut errors = channel_errors(&ch);
    within(ch.basic_publish(
        "",
        "q",
        BasicPublishOptions::default(),
        b"forged",
        BasicProperties::default().with_user_id("bob".into()),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_error(&mut errors).await,
        (
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was \
             'guest'"
                .to_string()
        )
    );
    assert_eq!(
        ready(&open(&conn).await, "q").await,
        1,
        "forged one dropped"
    );
}

#[tokio::test]
async fn publish_with_immediate_closes_the_connection_540() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let mut errors = connection_errors(&conn);
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let immediate = BasicPublishOptions {
        immediate: true,
        ..Default::default()
    };
    let _ = within(ch.basic_publish("", "q", immediate, b"x", BasicProperties::default())).await;
    assert_eq!(
        next_error(&mut errors).await,
        (540, "NOT_IMPLEMENTED - immediate=true".to_string())
    );
    assert!(!conn.status().connected());
}

// ---------------------------------------------------------------------------------------
// Dispatch: round-robin, prefetch
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn round_robin_two_consumers_five_messages_split_1_3_5_and_2_4() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let (cha, chb) = (open(&conn).await, open(&conn).await);
    let mut a = consume(&cha, "q", "a").await;
    let mut b = consume(&chb, "q", "b").await;
    publish_numbered(&ch, "q", 5).await;
    let mut got_a = Vec::new();
    for _ in 0..3 {
        got_a.push(body(&next(&mut a).await));
    }
    let mut got_b = Vec::new();
    for _ in 0..2 {
        got_b.push(body(&next(&mut b).await));
    }
    assert_eq!(got_a, ["1", "3", "5"]);
    assert_eq!(got_b, ["2", "4"]);
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn prefetch_1_skips_a_busy_consumer_until_it_acks() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let (cha, chb) = (open(&conn).await, open(&conn).await);
    for c in [&cha, &chb] {
        within(c.basic_qos(1, BasicQosOptions::default()))
            .await
            .unwrap();
    }
    let mut a = consume(&cha, "q", "a").await;
    let mut b = consume(&chb, "q", "b").await;
    publish_numbered(&ch, "q", 5).await;
    // A holds message 1 and never acks it; B acks each and so gets all the rest.
    let held = next(&mut a).await;
    assert_eq!(body(&held), "1");
    let mut got_b = Vec::new();
    for _ in 0..4 {
        let d = next(&mut b).await;
        got_b.push(body(&d));
        ack(&chb, d.delivery_tag, false).await;
    }
    assert_eq!(got_b, ["2", "3", "4", "5"]);
    // B holds 6 (unacked); A acks 1 and so rejoins: it gets 7.
    ack(&cha, held.delivery_tag, false).await;
    publish(&ch, "", "q", b"6").await;
    publish(&ch, "", "q", b"7").await;
    assert_eq!(body(&next(&mut b).await), "6");
    assert_eq!(body(&next(&mut a).await), "7");
}

#[tokio::test]
async fn qos_global_limits_unacked_across_the_channel() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    let worker = open(&conn).await;
    within(worker.basic_qos(2, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let mut c1 = consume(&worker, "q1", "c1").await;
    let mut c2 = consume(&worker, "q2", "c2").await;
    confirm_mode(&ch).await;
    for i in 1..=3 {
        publish(&ch, "", "q1", format!("q1-{i}").as_bytes()).await;
        publish(&ch, "", "q2", format!("q2-{i}").as_bytes()).await;
    }
    // Every publish is confirmed, so each queue has dispatched what credit allowed.
    // Two deliveries in all, one from each queue: q1-1 took a unit, then q2-1.
    let d1 = next(&mut c1).await;
    let d2 = next(&mut c2).await;
    assert_eq!((body(&d1).as_str(), body(&d2).as_str()), ("q1-1", "q2-1"));
    assert_eq!(ready(&ch, "q1").await + ready(&ch, "q2").await, 4);
    // One ack frees one unit: exactly one more delivery.
    ack(&worker, d1.delivery_tag, false).await;
    let more = tokio::select! {
        d = next(&mut c1) => d,
        d = next(&mut c2) => d,
    };
    assert!(body(&more).ends_with("-2"), "{}", body(&more));
    assert_eq!(ready(&ch, "q1").await + ready(&ch, "q2").await, 3);
}

// ---------------------------------------------------------------------------------------
// Acknowledgements
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn ack_nack_and_reject_with_multiple_and_requeue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    publish_numbered(&ch, "q", 6).await;
    let mut tags = Vec::new();
    for i in 1..=6u64 {
        let d = next(&mut c).await;
        assert_eq!((d.delivery_tag, body(&d)), (i, i.to_string()));
        assert!(!d.redelivered);
        tags.push(d.delivery_tag);
    }
    // ack 1..=2 at once; nack 3..=4 with requeue; reject 5 and nack 6 without requeue.
    ack(&worker, 2, true).await;
    within(worker.basic_nack(
        4,
        BasicNackOptions {
            multiple: true,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    within(worker.basic_reject(5, BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    within(worker.basic_nack(
        6,
        BasicNackOptions {
            multiple: false,
            requeue: false,
        },
    ))
    .await
    .unwrap();
    // 3 and 4 come back, in order, marked redelivered, with new tags.
    let d3 = next(&mut c).await;
    let d4 = next(&mut c).await;
    assert_eq!(
        (d3.delivery_tag, body(&d3), d3.redelivered),
        (7, "3".into(), true)
    );
    assert_eq!(
        (d4.delivery_tag, body(&d4), d4.redelivered),
        (8, "4".into(), true)
    );
    // reject with requeue also brings it back.
    within(worker.basic_reject(7, BasicRejectOptions { requeue: true }))
        .await
        .unwrap();
    let d3 = next(&mut c).await;
    assert_eq!(
        (d3.delivery_tag, body(&d3), d3.redelivered),
        (9, "3".into(), true)
    );
    ack(&worker, 9, true).await;
    // Everything is settled: closing the channel requeues nothing.
    within(worker.close(200, "done")).await.unwrap();
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn unknown_delivery_tag_and_double_ack_close_the_channel_with_406() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let mut errors = channel_errors(&ch);
    ack(&ch, 99, false).await;
    assert_eq!(
        next_error(&mut errors).await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 99".to_string()
        )
    );

    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish(&ch, "", "q", b"once").await;
    let m = get(&ch, "q").await.expect("message");
    assert_eq!(m.delivery.delivery_tag, 1);
    let mut errors = channel_errors(&ch);
    ack(&ch, 1, false).await;
    ack(&ch, 1, false).await;
    assert_eq!(
        next_error(&mut errors).await,
        (
            406,
            "PRECONDITION_FAILED - unknown delivery tag 1".to_string()
        )
    );
    // The first ack counted: the channel's close did not requeue the message.
    assert_eq!(ready(&open(&conn).await, "q").await, 0);
}

#[tokio::test]
async fn requeued_message_returns_to_its_original_position_marked_redelivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 3).await;
    let m1 = get(&ch, "q").await.unwrap();
    let m2 = get(&ch, "q").await.unwrap();
    assert_eq!(
        (body(&m1.delivery), body(&m2.delivery)),
        ("1".into(), "2".into())
    );
    within(ch.basic_reject(
        m1.delivery.delivery_tag,
        BasicRejectOptions { requeue: true },
    ))
    .await
    .unwrap();
    // 1 goes back in front of 3, not behind it.
    let again = get(&ch, "q").await.unwrap();
    assert_eq!(body(&again.delivery), "1");
    assert!(again.delivery.redelivered);
    let m3 = get(&ch, "q").await.unwrap();
    assert_eq!(body(&m3.delivery), "3");
    assert!(!m3.delivery.redelivered);
}

#[tokio::test]
async fn channel_close_requeues_unacked_marked_redelivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    publish_numbered(&ch, "q", 2).await;
    next(&mut c).await;
    next(&mut c).await;
    assert_eq!(ready(&ch, "q").await, 0);
    within(worker.close(200, "bye")).await.unwrap();
    for want in ["1", "2"] {
        let m = get(&ch, "q").await.expect("requeued");
        assert_eq!(body(&m.delivery), want);
        assert!(m.delivery.redelivered);
    }
}

#[tokio::test]
async fn connection_close_requeues_unacked_marked_redelivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let worker_conn = connect(&broker).await;
    let worker = open(&worker_conn).await;
    let mut c = consume(&worker, "q", "c").await;
    publish_numbered(&ch, "q", 2).await;
    next(&mut c).await;
    next(&mut c).await;
    within(worker_conn.close(200, "bye")).await.unwrap();
    for want in ["1", "2"] {
        let m = get(&ch, "q").await.expect("requeued");
        assert_eq!(body(&m.delivery), want);
        assert!(m.delivery.redelivered);
    }
}

#[tokio::test]
async fn abrupt_tcp_drop_requeues_unacked_marked_redelivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 2).await;

    let mut raw = Client::open_channel1(broker.local_addr()).await;
    raw.send(
        1,
        minimq_protocol::BasicConsume {
            queue: "q".into(),
            consumer_tag: "raw".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: minimq_protocol::FieldTable::new(),
        }
        .into(),
    )
    .await;
    let Method::BasicConsumeOk(_) = raw.method(1).await else {
        panic!("expected basic.consume-ok")
    };
    for tag in 1..=2u64 {
        let Method::BasicDeliver(d) = raw.method(1).await else {
            panic!("expected basic.deliver")
        };
        assert_eq!(d.delivery_tag, tag);
        let Frame::Header(1, _) = raw.frame().await else {
            panic!("expected a content header")
        };
        let Frame::Body(1, _) = raw.frame().await else {
            panic!("expected a content body")
        };
    }
    assert_eq!(ready(&ch, "q").await, 0, "both delivered, unacked");
    drop(raw); // no connection.close: the socket just goes away

    // A consumer that is waiting gets both back once the broker notices.
    let mut c = consume(&ch, "q", "after").await;
    for want in ["1", "2"] {
        let d = next(&mut c).await;
        assert_eq!(body(&d), want);
        assert!(d.redelivered);
    }
}

/// Appends to `buf` a publish of `body` to `queue` on channel 1, as frames.
fn publish_frames(buf: &mut bytes::BytesMut, queue: &str, body: &[u8]) {
    let publish = Method::BasicPublish(minimq_protocol::BasicPublish {
        exchange: String::new(),
        routing_key: queue.into(),
        mandatory: false,
        immediate: false,
    });
    let props = minimq_protocol::BasicProperties::default();
    minimq_protocol::frame::encode_content(buf, 1, &publish, &props, body, 131_072);
}

/// A connection's publishes from one read go to their queue together: whatever follows
/// them in that read (a purge, a get, a channel close) still comes after them.
#[tokio::test]
async fn publishes_read_together_reach_the_queue_before_the_frames_after_them() {
    use minimq_protocol::frame::encode_method;
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    let mut buf = bytes::BytesMut::new();
    for i in 0..100 {
        publish_frames(&mut buf, "q", format!("a{i}").as_bytes());
    }
    let purge = minimq_protocol::QueuePurge {
        queue: "q".into(),
        no_wait: false,
    };
    encode_method(&mut buf, 1, &purge.into());
    for i in 0..50 {
        publish_frames(&mut buf, "q", format!("b{i}").as_bytes());
    }
    let get = minimq_protocol::BasicGet {
        queue: "q".into(),
        no_ack: true,
    };
    encode_method(&mut buf, 1, &get.into());
    for i in 0..10 {
        publish_frames(&mut buf, "q", format!("c{i}").as_bytes());
    }
    let close = minimq_protocol::ChannelClose {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    encode_method(&mut buf, 1, &close.into());
    // One write: the broker reads all of it together.
    raw.io.get_mut().write_all(&buf).await.expect("write");

    let Method::QueuePurgeOk(purged) = raw.method(1).await else {
        panic!("expected queue.purge-ok")
    };
    assert_eq!(purged.message_count, 100, "the publishes before the purge");
    let Method::BasicGetOk(got) = raw.method(1).await else {
        panic!("expected basic.get-ok")
    };
    assert_eq!(
        got.message_count, 49,
        "the publishes between purge and get, less one"
    );
    let Frame::Header(1, _) = raw.frame().await else {
        panic!("expected a content header")
    };
    let Frame::Body(1, first) = raw.frame().await else {
        panic!("expected a content body")
    };
    assert_eq!(&first[..], b"b0");
    let Method::ChannelCloseOk(_) = raw.method(1).await else {
        panic!("expected channel.close-ok")
    };
    let want: Vec<String> = (1..50)
        .map(|i| format!("b{i}"))
        .chain((0..10).map(|i| format!("c{i}")))
        .collect();
    assert_eq!(drain(&ch, "q").await, want, "the rest, in publish order");
}

/// Publishes read together, whatever their framing and however they differ from the one
/// before them (routing key, properties, body in several frames or none, unroutable
/// with `mandatory`, to a missing exchange), are each routed with their own route and
/// properties, in order, with the return and the channel error a publish on its own gets.
#[tokio::test]
async fn publishes_read_together_keep_their_routes_properties_and_errors() {
    use minimq_protocol::frame::encode_content;
    use minimq_protocol::BasicProperties as Props;
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    declare(&ch, "q2").await;
    let a = Props {
        content_type: Some("a".into()),
        ..Props::default()
    };
    let b = Props {
        content_type: Some("b".into()),
        priority: Some(3),
        ..Props::default()
    };
    let big = vec![b'x'; 5000];
    // (exchange, routing key, mandatory, properties, body, frame limit the body is split at)
    type Step<'a> = (&'a str, &'a str, bool, &'a Props, &'a [u8], u32);
    let script: Vec<Step> = vec![
        ("", "q", false, &a, b"1", 131_072),
        ("", "q", false, &a, b"2", 131_072),
        ("", "q2", false, &b, b"3", 131_072),
        ("", "q", false, &a, &big, 4096),
        ("", "q", false, &a, b"", 131_072),
        ("", "nowhere", true, &b, b"returned", 131_072),
        ("", "q", false, &b, b"7", 131_072),
        ("missing", "q", false, &a, b"8", 131_072),
        // After the channel error: discarded with the rest of the channel's frames.
        ("", "q", false, &a, b"9", 131_072),
    ];
    let mut buf = bytes::BytesMut::new();
    for (exchange, rk, mandatory, props, body, frame_max) in &script {
        let publish = Method::BasicPublish(minimq_protocol::BasicPublish {
            exchange: (*exchange).into(),
            routing_key: (*rk).into(),
            mandatory: *mandatory,
            immediate: false,
        });
        encode_content(&mut buf, 1, &publish, props, body, *frame_max);
    }
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    // One write: the broker reads all of it together.
    raw.io.get_mut().write_all(&buf).await.expect("write");

    let Method::BasicReturn(ret) = raw.method(1).await else {
        panic!("expected basic.return")
    };
    assert_eq!((ret.reply_code, ret.routing_key.as_str()), (312, "nowhere"));
    let Frame::Header(1, header) = raw.frame().await else {
        panic!("expected a content header")
    };
    assert_eq!(header.properties, b);
    let Frame::Body(1, returned) = raw.frame().await else {
        panic!("expected a content body")
    };
    assert_eq!(&returned[..], b"returned");
    let Method::ChannelClose(close) = raw.method(1).await else {
        panic!("expected channel.close")
    };
    assert_eq!(
        (close.reply_code, close.reply_text.as_str()),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'")
    );

    let mut got = Vec::new();
    for queue in ["q", "q2"] {
        while let Some(m) = get(&ch, queue).await {
            let content_type = m.delivery.properties.content_type().clone();
            let priority = *m.delivery.properties.priority();
            got.push((
                queue,
                m.delivery.data.len(),
                m.delivery.data.first().copied(),
                content_type.map(|c| c.to_string()),
                priority,
            ));
        }
    }
    let a_type = Some("a".to_string());
    let b_type = Some("b".to_string());
    assert_eq!(
        got,
        vec![
            ("q", 1, Some(b'1'), a_type.clone(), None),
            ("q", 1, Some(b'2'), a_type.clone(), None),
            ("q", 5000, Some(b'x'), a_type.clone(), None),
            ("q", 0, None, a_type.clone(), None),
            ("q", 1, Some(b'7'), b_type.clone(), Some(3)),
            ("q2", 1, Some(b'3'), b_type, Some(3)),
        ]
    );
}

/// Acks read together are each applied in order, as on their own: single and multiple
/// acks settle their messages, an unknown tag closes the channel with 406, and what the
/// channel still had unacked then goes back to the queue.
#[tokio::test]
async fn acks_read_together_settle_in_order_until_one_fails() {
    use minimq_protocol::frame::encode_method;
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    for i in 1..=10 {
        publish(&ch, "", "q", format!("m{i}").as_bytes()).await;
    }
    // The consumer below waits for each of the ten deliveries in turn.
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    raw.send(
        1,
        minimq_protocol::BasicConsume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            no_wait: false,
            arguments: Default::default(),
        }
        .into(),
    )
    .await;
    let Method::BasicConsumeOk(_) = raw.method(1).await else {
        panic!("expected basic.consume-ok")
    };
    for tag in 1..=10 {
        let Method::BasicDeliver(d) = raw.method(1).await else {
            panic!("expected basic.deliver")
        };
        assert_eq!(d.delivery_tag, tag);
        raw.frame().await;
        raw.frame().await;
    }
    let mut buf = bytes::BytesMut::new();
    for (tag, multiple) in [
        (1, false),
        (2, false),
        (5, true),
        (7, false),
        (99, false),
        (8, false),
    ] {
        let ack = minimq_protocol::BasicAck {
            delivery_tag: tag,
            multiple,
        };
        encode_method(&mut buf, 1, &ack.into());
    }
    // One write: the broker reads all of it together.
    raw.io.get_mut().write_all(&buf).await.expect("write");
    let Method::ChannelClose(close) = raw.method(1).await else {
        panic!("expected channel.close")
    };
    assert_eq!(
        (close.reply_code, close.reply_text.as_str(), close.method_id),
        (406, "PRECONDITION_FAILED - unknown delivery tag 99", 80)
    );
    // 1–5 and 7 were acked; the ack of 8 came after the error and was discarded. The
    // queue had the channel's unacked messages back before channel.close was sent, so
    // a get sent after it sees them: no waiting.
    assert_eq!(drain(&ch, "q").await, ["m6", "m8", "m9", "m10"]);
}

/// Publishes read together with the end of the stream are not lost with the connection.
#[tokio::test]
async fn publishes_read_with_the_end_of_the_stream_still_reach_the_queue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let raw = Client::open_channel1(broker.local_addr()).await;
    let mut buf = bytes::BytesMut::new();
    for i in 0..100 {
        publish_frames(&mut buf, "q", format!("{i}").as_bytes());
    }
    let mut socket = raw.io.into_inner();
    socket.write_all(&buf).await.expect("write");
    socket.shutdown().await.expect("shutdown");
    wait_ready(&ch, "q", 100).await;
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(drain(&ch, "q").await, want);
}

#[tokio::test]
async fn basic_cancel_does_not_requeue_unacked_which_stay_ackable() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    publish(&ch, "", "q", b"m").await;
    let d = next(&mut c).await;
    within(worker.basic_cancel("c", BasicCancelOptions::default()))
        .await
        .unwrap();
    assert!(
        within(c.next()).await.is_none(),
        "the consumer ended on cancel-ok"
    );
    assert_eq!(ready(&ch, "q").await, 0, "cancel did not requeue");
    let mut errors = channel_errors(&worker);
    ack(&worker, d.delivery_tag, false).await;
    // The ack was accepted: the channel is still open, and closing it requeues nothing.
    assert_eq!(ready(&worker, "q").await, 0);
    within(worker.close(200, "done")).await.unwrap();
    assert!(errors.try_recv().is_err(), "no channel error");
    assert_eq!(ready(&ch, "q").await, 0);
}

#[tokio::test]
async fn basic_recover_requeues_unacked_marked_redelivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    publish_numbered(&ch, "q", 2).await;
    assert_eq!(body(&next(&mut c).await), "1");
    assert_eq!(body(&next(&mut c).await), "2");
    within(worker.basic_recover(BasicRecoverOptions { requeue: true }))
        .await
        .unwrap();
    for (tag, want) in [(3, "1"), (4, "2")] {
        let d = next(&mut c).await;
        assert_eq!(
            (d.delivery_tag, body(&d), d.redelivered),
            (tag, want.into(), true)
        );
    }
}

/// `basic.recover-async requeue=true` is `basic.recover` without the `recover-ok`, as in
/// RabbitMQ 3.10: the unacked message is back in its queue, marked redelivered, and the
/// next frame the client reads is the answer to its next method.
#[tokio::test]
async fn basic_recover_async_requeues_unacked_without_an_answer() {
    let broker = start_broker().await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    raw.send(
        1,
        minimq_protocol::QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        }
        .into(),
    )
    .await;
    let Method::QueueDeclareOk(_) = raw.method(1).await else {
        panic!("expected queue.declare-ok")
    };
    raw.publish("q", b"m").await;
    let get = || -> Method {
        minimq_protocol::BasicGet {
            queue: "q".into(),
            no_ack: false,
        }
        .into()
    };
    raw.send(1, get()).await;
    let Method::BasicGetOk(first) = raw.method(1).await else {
        panic!("expected basic.get-ok")
    };
    assert!(!first.redelivered);
    let _header = raw.frame().await;
    let _body = raw.frame().await;
    raw.send(
        1,
        minimq_protocol::BasicRecoverAsync { requeue: true }.into(),
    )
    .await;
    raw.send(1, get()).await;
    match raw.method(1).await {
        Method::BasicGetOk(again) => assert_eq!(
            (again.delivery_tag, again.redelivered, again.message_count),
            (2, true, 0)
        ),
        other => panic!("expected basic.get-ok (and no recover-ok), got {other:?}"),
    }
    let _header = raw.frame().await;
    let _body = raw.frame().await;
    // requeue=false is refused as basic.recover refuses it: 540 is a connection error.
    raw.send(
        1,
        minimq_protocol::BasicRecoverAsync { requeue: false }.into(),
    )
    .await;
    match raw.method(0).await {
        Method::ConnectionClose(c) => assert_eq!(
            (c.reply_code, c.reply_text.as_str(), c.class_id, c.method_id),
            (540, "NOT_IMPLEMENTED - requeue=false", 60, 100)
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
}

#[tokio::test]
async fn basic_get_reports_remaining_count_then_get_empty() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish_numbered(&ch, "q", 3).await;
    for (want, remaining) in [("1", 2), ("2", 1), ("3", 0)] {
        let m = get(&ch, "q").await.expect("get-ok");
        assert_eq!(
            (body(&m.delivery).as_str(), m.message_count),
            (want, remaining)
        );
    }
    assert!(get(&ch, "q").await.is_none(), "get-empty");
}

#[tokio::test]
async fn delivery_tags_start_at_1_on_every_channel() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q1").await;
    declare(&ch, "q2").await;
    let (cha, chb) = (open(&conn).await, open(&conn).await);
    let mut a = consume(&cha, "q1", "a").await;
    let mut b = consume(&chb, "q2", "b").await;
    publish_numbered(&ch, "q1", 2).await;
    publish_numbered(&ch, "q2", 1).await;
    assert_eq!(next(&mut a).await.delivery_tag, 1);
    assert_eq!(next(&mut a).await.delivery_tag, 2);
    assert_eq!(next(&mut b).await.delivery_tag, 1);
    // basic.get shares the channel's sequence; a new channel starts again at 1.
    within(cha.basic_cancel("a", BasicCancelOptions::default()))
        .await
        .unwrap();
    publish(&ch, "", "q1", b"3").await;
    assert_eq!(get(&cha, "q1").await.unwrap().delivery.delivery_tag, 3);
    publish(&ch, "", "q1", b"4").await;
    let fresh = open(&conn).await;
    assert_eq!(get(&fresh, "q1").await.unwrap().delivery.delivery_tag, 1);
}

// ---------------------------------------------------------------------------------------
// Publisher confirms, limits, TTL
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn publisher_confirms_ack_every_publish() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    confirm_mode(&ch).await;
    // A burst, so the broker may fold acks into `multiple` ones: each still resolves.
    let mut pending = Vec::new();
    for i in 0..200 {
        let p = within(ch.basic_publish(
            "",
            "q",
            BasicPublishOptions::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        pending.push(p);
    }
    for p in pending {
        assert_eq!(within(p).await.unwrap(), Confirmation::Ack(None));
    }
    // Unroutable publishes are confirmed too.
    assert_eq!(
        publish(&ch, "", "nowhere", b"x").await,
        Confirmation::Ack(None)
    );
    assert!(within(ch.wait_for_confirms()).await.unwrap().is_empty());
    assert_eq!(ready(&ch, "q").await, 200);
}

#[tokio::test]
async fn publisher_confirm_tags_count_from_1_and_cover_every_publish_once() {
    let broker = start_broker().await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    raw.send(
        1,
        minimq_protocol::QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        }
        .into(),
    )
    .await;
    let Method::QueueDeclareOk(_) = raw.method(1).await else {
        panic!("expected queue.declare-ok")
    };
    raw.send(1, minimq_protocol::ConfirmSelect { nowait: false }.into())
        .await;
    let Method::ConfirmSelectOk(_) = raw.method(1).await else {
        panic!("expected confirm.select-ok")
    };
    const N: u64 = 50;
    for _ in 0..N {
        raw.publish("q", b"m").await;
    }
    let mut confirmed = BTreeSet::new();
    let mut last = 0;
    while last < N {
        let Method::BasicAck(a) = raw.method(1).await else {
            panic!("expected basic.ack")
        };
        assert!(a.delivery_tag > last, "acks go forward");
        let first = if a.multiple { last + 1 } else { a.delivery_tag };
        for tag in first..=a.delivery_tag {
            assert!(confirmed.insert(tag), "tag {tag} confirmed twice");
        }
        last = a.delivery_tag;
    }
    assert_eq!(confirmed, (1..=N).collect::<BTreeSet<_>>());
}

#[tokio::test]
async fn max_length_drop_head_drops_the_oldest() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let a = args(&[("x-max-length", AMQPValue::LongInt(2))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), a)
        .await
        .unwrap();
    confirm_mode(&ch).await;
    for i in 1..=4 {
        let c = publish(&ch, "", "q", i.to_string().as_bytes()).await;
        assert_eq!(
            c,
            Confirmation::Ack(None),
            "drop-head accepts every publish"
        );
    }
    assert_eq!(drain(&ch, "q").await, ["3", "4"]);
}

#[tokio::test]
async fn max_length_reject_publish_nacks_under_confirms() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let a = args(&[
        ("x-max-length", AMQPValue::LongInt(2)),
        ("x-overflow", text("reject-publish")),
    ]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), a)
        .await
        .unwrap();
    confirm_mode(&ch).await;
    let mut outcomes = Vec::new();
    for i in 1..=4 {
        outcomes.push(publish(&ch, "", "q", i.to_string().as_bytes()).await);
    }
    assert_eq!(
        outcomes,
        [
            Confirmation::Ack(None),
            Confirmation::Ack(None),
            Confirmation::Nack(None),
            Confirmation::Nack(None)
        ]
    );
    assert_eq!(drain(&ch, "q").await, ["1", "2"]);
    // Room again: accepted.
    assert_eq!(publish(&ch, "", "q", b"5").await, Confirmation::Ack(None));
}

#[tokio::test]
async fn expired_messages_by_queue_ttl_are_never_counted_nor_delivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let a = args(&[("x-message-ttl", AMQPValue::LongInt(30))]);
    declare_with(&ch, "q", QueueDeclareOptions::default(), a)
        .await
        .unwrap();
    publish_numbered(&ch, "q", 3).await;
    wait_ready(&ch, "q", 0).await;
    assert!(get(&ch, "q").await.is_none());
    // A consumer arriving later sees only what is fresh.
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    publish(&ch, "", "q", b"fresh").await;
    let d = next(&mut c).await;
    assert_eq!(body(&d), "fresh");
    assert!(!d.redelivered);
}

#[tokio::test]
async fn expired_messages_by_per_message_expiration_are_never_counted_nor_delivered() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    for i in 1..=2 {
        publish_with(
            &ch,
            "",
            "q",
            format!("short-{i}").as_bytes(),
            BasicPublishOptions::default(),
            BasicProperties::default().with_expiration("30".into()),
        )
        .await;
    }
    publish(&ch, "", "q", b"durable").await;
    wait_ready(&ch, "q", 1).await;
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    assert_eq!(body(&next(&mut c).await), "durable");
    assert_eq!(ready(&ch, "q").await, 0);
}

// ---------------------------------------------------------------------------------------
// Server-initiated closes and cancels; unsupported features
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn deleting_a_consumed_queue_sends_basic_cancel_to_its_consumers() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let worker = open(&conn).await;
    let mut c = consume(&worker, "q", "c").await;
    within(ch.queue_delete("q", QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(
        within(c.next()).await.is_none(),
        "the server-sent basic.cancel ends the consumer"
    );
    assert!(worker.status().connected(), "the channel stays open");
    declare(&worker, "other").await;
}

#[tokio::test]
async fn graceful_shutdown_closes_client_connections_with_320() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    let conn = connect(&broker).await;
    let mut errors = connection_errors(&conn);
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    within(broker.shutdown()).await;
    assert_eq!(
        next_error(&mut errors).await,
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                .to_string()
        )
    );
    assert!(!conn.status().connected());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

// ---------------------------------------------------------------------------------------
// Exchanges
// ---------------------------------------------------------------------------------------

async fn declare_exchange(ch: &Channel, name: &str, kind: ExchangeKind) {
    within(ch.exchange_declare(
        name,
        kind,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .expect("exchange.declare");
}

async fn bind(ch: &Channel, queue: &str, exchange: &str, key: &str, arguments: FieldTable) {
    within(ch.queue_bind(queue, exchange, key, QueueBindOptions::default(), arguments))
        .await
        .expect("queue.bind");
}

/// Routing keys of every message ready in `queue` (consumes them).
async fn routed_keys(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = get(ch, queue).await {
        out.push(m.delivery.routing_key.to_string());
        ack(ch, m.delivery.delivery_tag, false).await;
    }
    out
}

#[tokio::test]
async fn direct_exchange_routes_by_exact_key() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare_exchange(&ch, "logs", ExchangeKind::Direct).await;
    // Redeclaring with another type is refused.
    let other = open(&conn).await;
    let refused = within(other.exchange_declare(
        "logs",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_eq!(
        expect_amqp(refused),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'logs' in vhost '/': \
             received 'fanout' but current is 'direct'"
                .to_string()
        )
    );
    for q in ["errors", "all"] {
        declare(&ch, q).await;
    }
    bind(&ch, "errors", "logs", "error", FieldTable::default()).await;
    for key in ["error", "warning", "info"] {
        bind(&ch, "all", "logs", key, FieldTable::default()).await;
    }
    for key in ["error", "warning", "debug", "info"] {
        publish(&ch, "logs", key, key.as_bytes()).await;
    }
    assert_eq!(routed_keys(&ch, "errors").await, ["error"]);
    assert_eq!(routed_keys(&ch, "all").await, ["error", "warning", "info"]);
    within(ch.queue_unbind("all", "logs", "error", FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "logs", "error", b"e").await;
    assert_eq!(routed_keys(&ch, "all").await, Vec::<String>::new());
    assert_eq!(routed_keys(&ch, "errors").await, ["error"]);
    // amq.direct exists already.
    bind(&ch, "all", "amq.direct", "k", FieldTable::default()).await;
    publish(&ch, "amq.direct", "k", b"x").await;
    assert_eq!(routed_keys(&ch, "all").await, ["k"]);
}

#[tokio::test]
async fn fanout_exchange_copies_to_every_bound_queue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare_exchange(&ch, "fan", ExchangeKind::Fanout).await;
    for q in ["a", "b", "unbound"] {
        declare(&ch, q).await;
    }
    bind(&ch, "a", "fan", "", FieldTable::default()).await;
    bind(&ch, "b", "fan", "ignored", FieldTable::default()).await;
    publish(&ch, "fan", "any.key", b"news").await;
    assert_eq!(routed_keys(&ch, "a").await, ["any.key"]);
    assert_eq!(routed_keys(&ch, "b").await, ["any.key"]);
    assert!(routed_keys(&ch, "unbound").await.is_empty());
    bind(&ch, "a", "amq.fanout", "", FieldTable::default()).await;
    publish(&ch, "amq.fanout", "x", b"y").await;
    assert_eq!(routed_keys(&ch, "a").await, ["x"]);
}

#[tokio::test]
async fn topic_exchange_matches_star_and_hash_on_amq_topic() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    for q in ["q1", "q2"] {
        declare(&ch, q).await;
    }
    bind(&ch, "q1", "amq.topic", "*.orange.*", FieldTable::default()).await;
    bind(&ch, "q2", "amq.topic", "*.*.rabbit", FieldTable::default()).await;
    bind(&ch, "q2", "amq.topic", "lazy.#", FieldTable::default()).await;
    for key in [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
    ] {
        publish(&ch, "amq.topic", key, key.as_bytes()).await;
    }
    assert_eq!(
        routed_keys(&ch, "q1").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    // Matched by two bindings, lazy.pink.rabbit still arrives once; `#` matches zero words.
    assert_eq!(
        routed_keys(&ch, "q2").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.new.rabbit",
            "lazy"
        ]
    );
}

#[tokio::test]
async fn headers_exchange_matches_all_or_any() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare_exchange(&ch, "hdr", ExchangeKind::Headers).await;
    for q in ["all", "any"] {
        declare(&ch, q).await;
    }
    bind(
        &ch,
        "all",
        "hdr",
        "",
        args(&[
            ("x-match", text("all")),
            ("format", text("pdf")),
            ("type", text("report")),
        ]),
    )
    .await;
    bind(
        &ch,
        "any",
        "hdr",
        "",
        args(&[
            ("x-match", text("any")),
            ("format", text("pdf")),
            ("type", text("log")),
        ]),
    )
    .await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("pdf-report", &[("format", "pdf"), ("type", "report")]),
        ("zip-log", &[("format", "zip"), ("type", "log")]),
        ("pdf", &[("format", "pdf")]),
        ("none", &[]),
    ];
    for (key, headers) in cases {
        let table = args(
            &headers
                .iter()
                .map(|(k, v)| (*k, text(v)))
                .collect::<Vec<_>>(),
        );
        publish_with(
            &ch,
            "hdr",
            key,
            b"x",
            BasicPublishOptions::default(),
            BasicProperties::default().with_headers(table),
        )
        .await;
    }
    assert_eq!(routed_keys(&ch, "all").await, ["pdf-report"]);
    assert_eq!(
        routed_keys(&ch, "any").await,
        ["pdf-report", "zip-log", "pdf"]
    );
}
