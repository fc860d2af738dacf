//! Queue arguments over real TCP: `x-max-length` with drop-head and reject-publish,
//! `x-message-ttl` and the per-message `expiration`, `x-expires`, `x-max-priority`
//! (priority order survives a requeue), and quorum queues: the arguments and flags they
//! take or refuse, and their requeue order.
//!
//! Dead-lettering (`x-dead-letter-exchange`, `x-delivery-limit`) has its own file,
//! `dead_letter.rs`; `x-single-active-consumer` is in `dispatch.rs`; values out of range are
//! refused in `bad_input.rs`.
//!
//! Time: the expiry tests run on tokio's paused clock and move it with `advance`, so they
//! check both sides of each deadline (not expired a millisecond before, gone a millisecond
//! after) without waiting. That works because the broker's timers are tokio timers and the
//! broker and the raw client (`common::raw`) share the test's runtime, where loopback TCP
//! delivers a write before the runtime next looks for work. lapin could not drive them: it
//! does its I/O on threads of its own, and the paused clock would jump ahead whenever the
//! runtime waits for lapin. The other tests use lapin.

mod common;

use common::amqp::*;
use common::raw::{table, Client};
use common::{connect, start_broker};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::AMQPValue;
use minimq_protocol::{BasicProperties, FieldTable, FieldValue};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// Length limits
// ---------------------------------------------------------------------------------------

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

/// Lets every task the broker has runnable take its turns, the paused clock standing still:
/// what a timer that just fired sets off is done when this returns. (A round trip through
/// the queue would do too, but it would count as a use and restart `x-expires`.)
async fn let_the_broker_run() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

// ---------------------------------------------------------------------------------------
// Message TTL and queue expiry
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn expired_messages_by_queue_ttl_are_never_counted_nor_delivered() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.declare_with("q", table(&[("x-message-ttl", FieldValue::I32(30))]))
        .await;
    for body in [b"1", b"2", b"3"] {
        c.publish("q", body).await;
    }
    // Counted while fresh: the clock has not moved since the publishes.
    assert_eq!(c.ready("q").await, 3);
    tokio::time::advance(Duration::from_millis(29)).await;
    assert_eq!(c.ready("q").await, 3, "not expired before the TTL");
    tokio::time::advance(Duration::from_millis(2)).await;
    assert_eq!(c.ready("q").await, 0);
    assert!(c.try_get("q", false).await.is_none());
    // A consumer arriving later sees only what is fresh.
    c.open_channel(2).await;
    c.consume(2, "q", "c").await;
    c.publish("q", b"fresh").await;
    let (d, body) = c.delivery(2).await;
    assert_eq!(&body[..], b"fresh");
    assert!(!d.redelivered);
    // Dropped with the runtime, not shut down: a shutdown would requeue "fresh" with its
    // TTL running, and the paused clock would then stop exactly on its expiry, where the
    // queue's timer counts as due but its expiry check wants the time passed, so the
    // queue task would spin with the clock frozen.
}

#[tokio::test(start_paused = true)]
async fn expired_messages_by_per_message_expiration_are_never_counted_nor_delivered() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.declare_with("q", FieldTable::new()).await;
    for i in 1..=2 {
        let expiring = BasicProperties {
            expiration: Some("30".into()),
            ..Default::default()
        };
        c.publish_with("q", expiring, format!("short-{i}").as_bytes())
            .await;
    }
    c.publish("q", b"durable").await;
    assert_eq!(c.ready("q").await, 3);
    tokio::time::advance(Duration::from_millis(29)).await;
    assert_eq!(c.ready("q").await, 3, "not expired before the expiration");
    tokio::time::advance(Duration::from_millis(2)).await;
    assert_eq!(c.ready("q").await, 1);
    c.open_channel(2).await;
    c.consume(2, "q", "c").await;
    let (_, body) = c.delivery(2).await;
    assert_eq!(&body[..], b"durable");
    assert_eq!(c.ready("q").await, 0);
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_unused_queue_with_x_expires_is_deleted() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.declare_with("ephemeral", table(&[("x-expires", FieldValue::I32(50))]))
        .await;
    c.publish("ephemeral", b"m").await;
    // Watch the registry: looking does not count as use, unlike a declare. A publish does
    // not count either.
    let registered = || {
        broker
            .state()
            .vhosts
            .get("/")
            .is_some_and(|v| v.queue("ephemeral").is_some())
    };
    tokio::time::advance(Duration::from_millis(49)).await;
    let_the_broker_run().await;
    assert!(registered(), "deleted before x-expires");
    tokio::time::advance(Duration::from_millis(2)).await;
    let_the_broker_run().await;
    assert!(!registered(), "queue not deleted after x-expires");
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Priorities
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_priority_queue_delivers_higher_priorities_first_and_requeues_keep_the_order() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "prio",
        QueueDeclareOptions::default(),
        args(&[("x-max-priority", AMQPValue::ShortShortUInt(10))]),
    )
    .await
    .unwrap();
    publish_with_priority(&ch, "prio", "low", Some(1)).await;
    publish_with_priority(&ch, "prio", "none", None).await;
    publish_with_priority(&ch, "prio", "high-a", Some(5)).await;
    publish_with_priority(&ch, "prio", "mid", Some(3)).await;
    publish_with_priority(&ch, "prio", "high-b", Some(5)).await;
    publish_with_priority(&ch, "prio", "capped", Some(200)).await;
    let first = get(&ch, "prio").await.unwrap();
    assert_eq!(
        body(&first.delivery),
        "capped",
        "priorities above x-max-priority count as the maximum"
    );
    ch.basic_nack(
        first.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut order = Vec::new();
    while let Some(m) = get(&ch, "prio").await {
        order.push(body(&m.delivery));
    }
    assert_eq!(
        order,
        vec!["capped", "high-a", "high-b", "mid", "low", "none"]
    );
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Quorum queues
// ---------------------------------------------------------------------------------------

/// A quorum `queue.declare` with these flags and arguments (`x-queue-type` first).
fn quorum_declare(
    queue: &str,
    flags: (bool, bool, bool),
    arguments: &[(&str, FieldValue)],
) -> minimq_protocol::Method {
    let (durable, exclusive, auto_delete) = flags;
    let mut entries = vec![("x-queue-type", FieldValue::from("quorum"))];
    entries.extend(arguments.iter().cloned());
    minimq_protocol::QueueDeclare {
        queue: queue.into(),
        durable,
        exclusive,
        auto_delete,
        arguments: table(&entries),
        ..Default::default()
    }
    .into()
}

/// Durable, not exclusive, not auto-delete: the only flags a quorum queue takes.
const DURABLE: (bool, bool, bool) = (true, false, false);

/// A quorum declare RabbitMQ refuses: (durable, exclusive, auto-delete), its arguments
/// and the reason after `PRECONDITION_FAILED - `.
type Refused<'a> = ((bool, bool, bool), Vec<(&'a str, FieldValue)>, String);

/// What RabbitMQ 3.10 refuses in a quorum declare, with its texts (checked against it):
/// arguments of other queue types first, in table order, then the flags in the order
/// auto-delete, exclusive, non-durable; argument values as for any queue.
#[tokio::test]
async fn a_quorum_declare_is_refused_as_rabbitmq_refuses_it() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    let of_type = |key: &str| {
        format!("invalid arg '{key}' for queue 'qq' in vhost '/' of queue type rabbit_quorum_queue")
    };
    let bad_value =
        |key: &str, why: &str| format!("invalid arg '{key}' for queue 'qq' in vhost '/': {why}");
    let property = |p: &str| format!("invalid property '{p}' for queue 'qq' in vhost '/'");
    let refused: Vec<Refused> = vec![
        ((true, true, false), vec![], property("exclusive-owner")),
        ((false, false, false), vec![], property("non-durable")),
        ((true, false, true), vec![], property("auto-delete")),
        ((false, true, true), vec![], property("auto-delete")),
        ((false, true, false), vec![], property("exclusive-owner")),
        (
            DURABLE,
            vec![("x-max-priority", FieldValue::I32(10))],
            of_type("x-max-priority"),
        ),
        (
            (true, false, true),
            vec![("x-max-priority", FieldValue::from("not checked"))],
            of_type("x-max-priority"),
        ),
        (
            DURABLE,
            vec![("x-queue-mode", FieldValue::from("lazy"))],
            of_type("x-queue-mode"),
        ),
        (
            DURABLE,
            vec![("x-queue-master-locator", FieldValue::from("client-local"))],
            of_type("x-queue-master-locator"),
        ),
        (
            DURABLE,
            vec![
                ("x-queue-mode", FieldValue::from("lazy")),
                ("x-max-priority", FieldValue::I32(1)),
            ],
            of_type("x-queue-mode"),
        ),
        (
            DURABLE,
            vec![
                ("x-max-priority", FieldValue::I32(1)),
                ("x-overflow", FieldValue::from("bogus")),
            ],
            bad_value("x-overflow", "invalid_overflow"),
        ),
        (
            DURABLE,
            vec![("x-overflow", FieldValue::I32(5))],
            bad_value("x-overflow", "{unacceptable_type,signedint}"),
        ),
        (
            DURABLE,
            vec![("x-dead-letter-strategy", FieldValue::from("bogus"))],
            bad_value("x-dead-letter-strategy", "invalid_dlx_strategy"),
        ),
        (
            DURABLE,
            vec![("x-dead-letter-strategy", FieldValue::I32(5))],
            bad_value("x-dead-letter-strategy", "{unacceptable_type,signedint}"),
        ),
        (
            DURABLE,
            vec![("x-max-in-memory-length", FieldValue::I32(-1))],
            bad_value("x-max-in-memory-length", "{value_negative,-1}"),
        ),
        (
            DURABLE,
            vec![("x-max-in-memory-bytes", FieldValue::from("x"))],
            bad_value("x-max-in-memory-bytes", "\"expected integer, got longstr\""),
        ),
        (
            DURABLE,
            vec![("x-quorum-initial-group-size", FieldValue::I32(0))],
            bad_value("x-quorum-initial-group-size", "{value_zero,0}"),
        ),
        (
            DURABLE,
            vec![("x-queue-leader-locator", FieldValue::from("nearest"))],
            bad_value("x-queue-leader-locator", "invalid_queue_locator_arg"),
        ),
    ];
    let mut ch = 1;
    for (flags, arguments, text) in &refused {
        c.send(ch, quorum_declare("qq", *flags, arguments)).await;
        c.expect_channel_close(ch, 406, &format!("PRECONDITION_FAILED - {text}"), 50, 10)
            .await;
        ch += 1;
        c.open_channel(ch).await;
    }
    let accepted: Vec<Vec<(&str, FieldValue)>> = vec![
        vec![("x-overflow", FieldValue::from("reject-publish-dlx"))],
        vec![("x-overflow", FieldValue::from("reject-publish"))],
        vec![("x-dead-letter-strategy", FieldValue::from("at-most-once"))],
        vec![("x-dead-letter-strategy", FieldValue::from("at-least-once"))],
        vec![
            ("x-dead-letter-strategy", FieldValue::from("at-least-once")),
            ("x-overflow", FieldValue::from("reject-publish")),
            ("x-dead-letter-exchange", FieldValue::from("dlx")),
        ],
        vec![("x-max-in-memory-length", FieldValue::I32(10))],
        vec![("x-max-in-memory-bytes", FieldValue::I64(1 << 20))],
        vec![("x-quorum-initial-group-size", FieldValue::I32(3))],
        vec![("x-queue-leader-locator", FieldValue::from("client-local"))],
        vec![("x-queue-leader-locator", FieldValue::from("balanced"))],
        vec![("x-single-active-consumer", FieldValue::Bool(true))],
    ];
    for (n, arguments) in accepted.iter().enumerate() {
        let queue = format!("qq-{n}");
        c.send(ch, quorum_declare(&queue, DURABLE, arguments)).await;
        match c.method(ch).await {
            minimq_protocol::Method::QueueDeclareOk(ok) => assert_eq!(ok.queue, queue),
            other => panic!("{arguments:?}: expected queue.declare-ok, got {other:?}"),
        }
    }
}

/// Declares `name` as a durable quorum queue with `extra` arguments and puts 1..=5 in it.
async fn quorum_with_five(ch: &lapin::Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    let mut entries = vec![("x-queue-type", text("quorum"))];
    entries.extend(extra.iter().cloned());
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    declare_with(ch, name, durable, args(&entries))
        .await
        .unwrap();
    confirm_mode(ch).await;
    for i in 1..=5 {
        publish(ch, "", name, i.to_string().as_bytes()).await;
    }
}

/// Gets one message unacked: its body and delivery tag.
async fn get_unacked(ch: &lapin::Channel, queue: &str) -> (String, u64) {
    let m = ch
        .basic_get(queue, BasicGetOptions { no_ack: false })
        .await
        .unwrap()
        .expect("a message");
    (body(&m.delivery), m.delivery.delivery_tag)
}

/// The requeue order of RabbitMQ 3.10's quorum queues, over the wire: publish 1..5, get
/// 1 and 2, reject 2 then 1 with requeue. Without a delivery limit they go to the tail
/// (3 4 5 2 1), with one they come first, in the order they came back (2 1 3 4 5); what
/// a closed channel held comes first either way. A classic queue puts them back in place.
#[tokio::test]
async fn quorum_queues_requeue_in_rabbitmqs_quorum_order() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let limit = [("x-delivery-limit", AMQPValue::LongInt(10))];
    for (queue, extra, expected) in [
        ("qq-tail", &[][..], ["3", "4", "5", "2", "1"]),
        ("qq-limit", &limit[..], ["2", "1", "3", "4", "5"]),
    ] {
        quorum_with_five(&ch, queue, extra).await;
        let one = get_unacked(&ch, queue).await;
        let two = get_unacked(&ch, queue).await;
        assert_eq!((one.0.as_str(), two.0.as_str()), ("1", "2"));
        for tag in [two.1, one.1] {
            ch.basic_reject(tag, BasicRejectOptions { requeue: true })
                .await
                .unwrap();
        }
        assert_eq!(drain(&ch, queue).await, expected, "{queue}");
    }

    quorum_with_five(&ch, "qq-closed", &[]).await;
    let holder = open(&conn).await;
    for _ in 0..3 {
        get_unacked(&holder, "qq-closed").await;
    }
    holder.close(200, "bye").await.unwrap();
    let (one, _) = get_unacked(&ch, "qq-closed").await;
    assert_eq!(one, "1");
    ch.basic_recover(BasicRecoverOptions { requeue: true })
        .await
        .unwrap();
    assert_eq!(
        drain(&ch, "qq-closed").await,
        ["2", "3", "4", "5", "1"],
        "returned by the closed channel: first; recovered: at the tail"
    );
}
