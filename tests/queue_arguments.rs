//! Queue arguments over real TCP: `x-max-length` with drop-head and reject-publish,
//! `x-message-ttl` and the per-message `expiration`, `x-expires`, and `x-max-priority`
//! (priority order survives a requeue).
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
    let registered = || broker.state().vhost.queue("ephemeral").is_some();
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
