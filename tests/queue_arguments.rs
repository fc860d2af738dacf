//! Queue arguments over real TCP with lapin: `x-max-length` with drop-head and
//! reject-publish, `x-message-ttl` and the per-message `expiration`, `x-expires`, and
//! `x-max-priority` (priority order survives a requeue).
//!
//! Dead-lettering (`x-dead-letter-exchange`, `x-delivery-limit`) has its own file,
//! `dead_letter.rs`; `x-single-active-consumer` is in `dispatch.rs`; values out of range are
//! refused in `bad_input.rs`.
//!
//! Time: lapin does its I/O on threads of its own, so these tests cannot pause tokio's
//! clock (it would jump ahead whenever the runtime waits for lapin, expiring messages
//! before they are published). The expiry tests use TTLs of tens of milliseconds on the
//! real clock and poll for the result every few milliseconds under a deadline: there is no
//! event for "expired" short of dead-lettering, which `dead_letter.rs` covers.

mod common;

use common::amqp::*;
use common::{connect, start_broker};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::AMQPValue;
use lapin::BasicProperties;
use std::time::{Duration, Instant};

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

// ---------------------------------------------------------------------------------------
// Message TTL and queue expiry
// ---------------------------------------------------------------------------------------

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

#[tokio::test]
async fn an_unused_queue_with_x_expires_is_deleted() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.queue_declare(
        "ephemeral",
        QueueDeclareOptions::default(),
        args(&[("x-expires", AMQPValue::LongInt(50))]),
    )
    .await
    .unwrap();
    publish_with_priority(&ch, "ephemeral", "m", None).await;
    // Watch the registry (looking does not count as use, unlike a declare).
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.state().vhost.queue("ephemeral").is_some() {
        assert!(
            Instant::now() < deadline,
            "queue not deleted after x-expires"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
