//! Queue arguments and consumer options real workers use, over real TCP with lapin:
//! `x-expires`, `x-max-priority` (priority order survives a requeue),
//! `x-single-active-consumer` (failover when the active consumer's connection drops)
//! and consumer priorities (`x-priority` on `basic.consume`).

mod common;

use std::time::{Duration, Instant};

use common::{connect, start_broker, within};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

fn args(pairs: &[(&str, AMQPValue)]) -> FieldTable {
    let mut t = FieldTable::default();
    for (k, v) in pairs {
        t.insert(ShortString::from(*k), v.clone());
    }
    t
}

async fn publish(ch: &Channel, queue: &str, body: &str, priority: Option<u8>) {
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

async fn get(ch: &Channel, queue: &str) -> Option<lapin::message::BasicGetMessage> {
    ch.basic_get(queue, BasicGetOptions::default())
        .await
        .unwrap()
}

fn body(d: &lapin::message::Delivery) -> String {
    String::from_utf8(d.data.clone()).unwrap()
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
    publish(&ch, "ephemeral", "m", None).await;
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
    publish(&ch, "prio", "low", Some(1)).await;
    publish(&ch, "prio", "none", None).await;
    publish(&ch, "prio", "high-a", Some(5)).await;
    publish(&ch, "prio", "mid", Some(3)).await;
    publish(&ch, "prio", "high-b", Some(5)).await;
    publish(&ch, "prio", "capped", Some(200)).await;
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

#[tokio::test]
async fn single_active_consumer_fails_over_when_the_active_connection_drops() {
    let broker = start_broker().await;
    let a_conn = connect(&broker).await;
    let b_conn = connect(&broker).await;
    let a = a_conn.create_channel().await.unwrap();
    let b = b_conn.create_channel().await.unwrap();
    let sac = args(&[("x-single-active-consumer", AMQPValue::Boolean(true))]);
    a.queue_declare("sac", QueueDeclareOptions::default(), sac.clone())
        .await
        .unwrap();
    let mut ca = a
        .basic_consume(
            "sac",
            "a",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut cb = b
        .basic_consume(
            "sac",
            "b",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in 0..4 {
        publish(&b, "sac", &format!("m{i}"), None).await;
    }
    for i in 0..4 {
        let d = within(ca.next()).await.unwrap().unwrap();
        assert_eq!(
            body(&d),
            format!("m{i}"),
            "every message goes to the first consumer"
        );
        if i < 2 {
            d.ack(BasicAckOptions::default()).await.unwrap();
        }
    }
    // The active consumer's connection goes away with m2 and m3 unacked.
    a_conn.close(200, "bye").await.unwrap();
    let d = within(cb.next()).await.unwrap().unwrap();
    assert_eq!((body(&d), d.redelivered), ("m2".to_string(), true));
    let d = within(cb.next()).await.unwrap().unwrap();
    assert_eq!((body(&d), d.redelivered), ("m3".to_string(), true));
    broker.shutdown().await;
}

#[tokio::test]
async fn higher_priority_consumers_are_served_first_while_they_have_credit() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let hi_ch = conn.create_channel().await.unwrap();
    let lo_ch = conn.create_channel().await.unwrap();
    hi_ch
        .queue_declare(
            "work",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    hi_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    lo_ch
        .basic_qos(1, BasicQosOptions::default())
        .await
        .unwrap();
    // The low-priority consumer registers first: priority, not order, decides.
    let mut lo = lo_ch
        .basic_consume(
            "work",
            "lo",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut hi = hi_ch
        .basic_consume(
            "work",
            "hi",
            BasicConsumeOptions::default(),
            args(&[("x-priority", AMQPValue::LongInt(10))]),
        )
        .await
        .unwrap();
    for i in 0..3 {
        publish(&lo_ch, "work", &format!("m{i}"), None).await;
    }
    let h = within(hi.next()).await.unwrap().unwrap();
    assert_eq!(
        body(&h),
        "m0",
        "the high-priority consumer gets the first message"
    );
    let l = within(lo.next()).await.unwrap().unwrap();
    assert_eq!(
        body(&l),
        "m1",
        "the low-priority one only while the other is out of credit"
    );
    h.ack(BasicAckOptions::default()).await.unwrap();
    let h = within(hi.next()).await.unwrap().unwrap();
    assert_eq!(body(&h), "m2");
    broker.shutdown().await;
}
