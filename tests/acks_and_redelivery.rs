//! Acknowledgements and redelivery over real TCP: `basic.ack` / `nack` / `reject` with
//! `multiple` and `requeue`, the 406 for an unknown or doubly acked tag, where a requeued
//! message goes back (its original place) and how it comes back (`redelivered`), unacked
//! messages returned when a channel or connection closes or the socket drops, `basic.cancel`
//! leaving unacked messages ackable, `basic.recover` (sync and async), delivery tags per
//! channel, and acks that arrive together in one read.
//!
//! The same rules under random sequences of operations, restarts included, are checked
//! against a reference model in `redelivery_model.rs`. lapin drives most tests, raw frames
//! (`common::raw`) the rest; every wait is for an event under `common::within`.

mod common;

use common::amqp::*;
use common::raw::Client;
use common::{connect, start_broker, within};
use futures::StreamExt;
use lapin::options::*;
use minimq_protocol::{Frame, Method};
use tokio::io::AsyncWriteExt;

// ---------------------------------------------------------------------------------------
// Settling
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

/// A raw client consuming `q` on channel 1 (manual acks) that has received its first
/// `n` deliveries (tags 1..=n), for tests that then write acks byte for byte.
async fn raw_consumer_with(addr: std::net::SocketAddr, n: u64) -> Client {
    let mut raw = Client::open_channel1(addr).await;
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
    for tag in 1..=n {
        let Method::BasicDeliver(d) = raw.method(1).await else {
            panic!("expected basic.deliver")
        };
        assert_eq!(d.delivery_tag, tag);
        raw.frame().await;
        raw.frame().await;
    }
    raw
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
    // The consumer waits for each of the ten deliveries in turn.
    let mut raw = raw_consumer_with(broker.local_addr(), 10).await;
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

/// Acks around a method that fails the channel, all in one read (lapin's ack tests race
/// acks against a passive declare of a missing queue this way): those before the declare
/// count, those after it are discarded, as RabbitMQ's closing channel ignores them, and
/// the messages they named come back.
#[tokio::test]
async fn acks_after_a_method_that_closes_the_channel_in_the_same_read_are_discarded() {
    use minimq_protocol::frame::encode_method;
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    for i in 1..=6 {
        publish(&ch, "", "q", format!("m{i}").as_bytes()).await;
    }
    let mut raw = raw_consumer_with(broker.local_addr(), 6).await;
    let ack = |tag| -> Method {
        minimq_protocol::BasicAck {
            delivery_tag: tag,
            multiple: false,
        }
        .into()
    };
    let mut buf = bytes::BytesMut::new();
    for tag in 1..=3 {
        encode_method(&mut buf, 1, &ack(tag));
    }
    let missing = minimq_protocol::QueueDeclare {
        queue: "missing".into(),
        passive: true,
        ..Default::default()
    };
    encode_method(&mut buf, 1, &missing.into());
    for tag in 4..=6 {
        encode_method(&mut buf, 1, &ack(tag));
    }
    // One write: the broker reads all of it together.
    raw.io.get_mut().write_all(&buf).await.expect("write");
    raw.expect_channel_close(
        1,
        404,
        "NOT_FOUND - no queue 'missing' in vhost '/'",
        50,
        10,
    )
    .await;
    assert_eq!(drain(&ch, "q").await, ["m4", "m5", "m6"]);
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
// Requeue and redelivery
// ---------------------------------------------------------------------------------------

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
