//! Dispatch to consumers over real TCP with lapin: round robin, `basic.qos` prefetch (per
//! consumer and channel-global), consumer priorities (`x-priority` on `basic.consume`),
//! single active consumer failover, `basic.get` and its remaining count, and the
//! `basic.cancel` a consumer gets when its queue is deleted.
//!
//! What happens to a delivery after it went out (ack, requeue, redelivery) is in
//! `acks_and_redelivery.rs`. Every test starts its own broker on an ephemeral port and waits
//! for events under `common::within`, never on a sleep.

mod common;

use common::amqp::*;
use common::{connect, start_broker, within};
use futures::StreamExt;
use lapin::options::*;
use lapin::types::{AMQPValue, FieldTable};

// ---------------------------------------------------------------------------------------
// Round robin and prefetch
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
// Consumer priorities and single active consumer
// ---------------------------------------------------------------------------------------

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
        publish_with_priority(&lo_ch, "work", &format!("m{i}"), None).await;
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
        publish_with_priority(&b, "sac", &format!("m{i}"), None).await;
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

// ---------------------------------------------------------------------------------------
// basic.get, and consumers cancelled by the server
// ---------------------------------------------------------------------------------------

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
