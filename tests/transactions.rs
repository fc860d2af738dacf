//! AMQP transactions (`tx.select` / `tx.commit` / `tx.rollback`) end to end over real TCP:
//! publishes and settlements held until commit, dropped or given back on rollback, the
//! return of an unroutable mandatory publish at commit, `commit-ok` only once the store
//! has the messages, the bound on what a transaction holds, and RabbitMQ 3.10's errors
//! (codes, texts and method ids checked against a RabbitMQ 3.10 node).
//!
//! lapin drives what it can; the raw client of tests/common checks the exact frames and
//! their order. Every wait is for an event under `common::within`.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::amqp::{declare, drain, open, ready};
use common::raw::Client;
use common::{connect, data_dir, start_broker, start_broker_in, start_broker_with, within};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use minimq_broker::Config;
use minimq_protocol::{
    BasicPublish, ChannelClose, ContentHeader, FieldValue, Frame, Method, QueueDeclare,
};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

async fn publish(ch: &Channel, queue: &str, body: &str) {
    within(ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body.as_bytes(),
        BasicProperties::default(),
    ))
    .await
    .expect("publish");
}

/// `basic.get` with manual ack: the delivery tag and body.
async fn get(ch: &Channel, queue: &str) -> (u64, String) {
    let m = within(ch.basic_get(queue, BasicGetOptions { no_ack: false }))
        .await
        .expect("basic.get")
        .expect("a message");
    (
        m.delivery.delivery_tag,
        String::from_utf8_lossy(&m.delivery.data).into_owned(),
    )
}

/// The raw AMQP client of tests/common with the transaction helpers below, for the exact
/// frames and their order.
struct Raw {
    c: Client,
}

/// Everything else is the shared client's.
impl std::ops::Deref for Raw {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.c
    }
}

impl std::ops::DerefMut for Raw {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self.c
    }
}

impl Raw {
    /// Connects, opens the connection and channel 1.
    async fn connect(addr: SocketAddr) -> Raw {
        Raw {
            c: Client::open_channel1(addr).await,
        }
    }

    /// Sends `method` on channel 1 and expects `channel.close`: its code, text and ids.
    async fn refused(&mut self, method: Method) -> (u16, String, u16, u16) {
        self.send(1, method).await;
        self.expect_close(1).await
    }

    async fn expect_close(&mut self, ch: u16) -> (u16, String, u16, u16) {
        match self.method(ch).await {
            Method::ChannelClose(ChannelClose {
                reply_code,
                reply_text,
                class_id,
                method_id,
            }) => {
                self.send(ch, minimq_protocol::ChannelCloseOk.into()).await;
                (reply_code, reply_text, class_id, method_id)
            }
            other => panic!("expected channel.close, got {other:?}"),
        }
    }

    async fn publish(&mut self, routing_key: &str, mandatory: bool, body: &[u8]) {
        self.send(
            1,
            BasicPublish {
                exchange: String::new(),
                routing_key: routing_key.into(),
                mandatory,
                immediate: false,
            }
            .into(),
        )
        .await;
        let header = ContentHeader {
            class_id: 60,
            body_size: body.len() as u64,
            properties: Default::default(),
        };
        self.send_frame(Frame::Header(1, Box::new(header))).await;
        if !body.is_empty() {
            self.send_frame(Frame::Body(1, Bytes::copy_from_slice(body)))
                .await;
        }
    }

    async fn select(&mut self) {
        self.send(1, minimq_protocol::TxSelect.into()).await;
        let ok = self.method(1).await;
        assert!(matches!(ok, Method::TxSelectOk(_)), "got {ok:?}");
    }

    async fn commit(&mut self) {
        self.send(1, minimq_protocol::TxCommit.into()).await;
        let ok = self.method(1).await;
        assert!(matches!(ok, Method::TxCommitOk(_)), "got {ok:?}");
    }
}

fn precondition(text: &str, class_id: u16, method_id: u16) -> (u16, String, u16, u16) {
    (
        406,
        format!("PRECONDITION_FAILED - {text}"),
        class_id,
        method_id,
    )
}

// ---------------------------------------------------------------------------------------
// Publishes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn commit_delivers_the_held_publishes_in_order() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let tx = open(&conn).await;
    let plain = open(&conn).await;
    declare(&plain, "q").await;
    within(tx.tx_select()).await.unwrap();
    for body in ["1", "2", "3"] {
        publish(&tx, "q", body).await;
    }
    // Frames of one connection are handled in order: outside a transaction the queue
    // would have all three by now.
    assert_eq!(ready(&plain, "q").await, 0, "nothing before the commit");
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(drain(&plain, "q").await, ["1", "2", "3"]);
    // The channel stays transactional: the next publish waits for the next commit.
    publish(&tx, "q", "4").await;
    assert_eq!(ready(&plain, "q").await, 0);
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(drain(&plain, "q").await, ["4"]);
}

#[tokio::test]
async fn rollback_discards_the_held_publishes() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let tx = open(&conn).await;
    let plain = open(&conn).await;
    declare(&plain, "q").await;
    within(tx.tx_select()).await.unwrap();
    publish(&tx, "q", "dropped-1").await;
    publish(&tx, "q", "dropped-2").await;
    within(tx.tx_rollback()).await.unwrap();
    // A commit after the rollback has nothing of the rolled-back ones.
    publish(&tx, "q", "kept").await;
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(drain(&plain, "q").await, ["kept"]);
}

/// As RabbitMQ: the publish is routed when it arrives, but an unroutable mandatory one is
/// returned at commit, before `tx.commit-ok`; a rolled-back one is never returned.
#[tokio::test]
async fn an_unroutable_mandatory_publish_is_returned_at_commit_before_commit_ok() {
    let broker = start_broker().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.declare_with("q", Default::default()).await;
    raw.select().await;
    raw.publish("nowhere", true, b"rolled back").await;
    raw.send(1, minimq_protocol::TxRollback.into()).await;
    let ok = raw.method(1).await;
    assert!(matches!(ok, Method::TxRollbackOk(_)), "got {ok:?}");
    raw.publish("nowhere", true, b"returned").await;
    raw.publish("q", true, b"routed").await;
    // Nothing is returned before the commit: the next frame answers the next method.
    assert_eq!(raw.ready("q").await, 0);
    raw.send(1, minimq_protocol::TxCommit.into()).await;
    match raw.method(1).await {
        Method::BasicReturn(r) => assert_eq!(
            (r.reply_code, r.reply_text.as_str(), r.routing_key.as_str()),
            (312, "NO_ROUTE", "nowhere")
        ),
        other => panic!("expected basic.return, got {other:?}"),
    }
    let Frame::Header(1, _) = raw.frame().await else {
        panic!("expected the returned message's header")
    };
    match raw.frame().await {
        Frame::Body(1, b) => assert_eq!(&b[..], b"returned"),
        other => panic!("expected the returned body, got {other:?}"),
    }
    let ok = raw.method(1).await;
    assert!(matches!(ok, Method::TxCommitOk(_)), "got {ok:?}");
    assert_eq!(raw.ready("q").await, 1);
}

/// A publish to a missing exchange fails when it arrives, as outside a transaction.
#[tokio::test]
async fn a_publish_to_a_missing_exchange_fails_at_once() {
    let broker = start_broker().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.select().await;
    raw.send(
        1,
        BasicPublish {
            exchange: "missing".into(),
            routing_key: String::new(),
            mandatory: false,
            immediate: false,
        }
        .into(),
    )
    .await;
    let header = ContentHeader {
        class_id: 60,
        body_size: 0,
        properties: Default::default(),
    };
    raw.send_frame(Frame::Header(1, Box::new(header))).await;
    assert_eq!(
        raw.expect_close(1).await,
        (
            404,
            "NOT_FOUND - no exchange 'missing' in vhost '/'".into(),
            60,
            40
        )
    );
}

// ---------------------------------------------------------------------------------------
// Acks, nacks, rejects
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn settlements_in_a_transaction_take_effect_at_commit_and_rollback_keeps_them_unacked() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let plain = open(&conn).await;
    declare(&plain, "q").await;
    publish(&plain, "q", "m1").await;
    publish(&plain, "q", "m2").await;
    let tx = open(&conn).await;
    within(tx.tx_select()).await.unwrap();
    let (t1, b1) = get(&tx, "q").await;
    let (t2, b2) = get(&tx, "q").await;
    assert_eq!((b1.as_str(), b2.as_str()), ("m1", "m2"));

    // A nack with requeue waits for the commit.
    within(tx.basic_nack(
        t1,
        BasicNackOptions {
            multiple: false,
            requeue: true,
        },
    ))
    .await
    .unwrap();
    assert_eq!(
        ready(&plain, "q").await,
        0,
        "not requeued before the commit"
    );
    within(tx.tx_commit()).await.unwrap();
    assert_eq!(ready(&plain, "q").await, 1, "requeued by the commit");

    // An ack rolled back leaves the delivery unacked, not requeued: it can be acked
    // again (an unknown tag would close the channel) and that ack commits.
    within(tx.basic_ack(t2, BasicAckOptions::default()))
        .await
        .unwrap();
    within(tx.tx_rollback()).await.unwrap();
    assert_eq!(ready(&plain, "q").await, 1, "m2 was not requeued");
    within(tx.basic_ack(t2, BasicAckOptions::default()))
        .await
        .unwrap();
    within(tx.tx_commit()).await.unwrap();
    within(tx.close(200, "done")).await.unwrap();
    assert_eq!(drain(&plain, "q").await, ["m1"], "m2 is acked for good");
}

/// A delivery whose ack a transaction holds is not lost when the channel closes before
/// the commit: it is requeued with the channel's other unacked deliveries.
#[tokio::test]
async fn a_held_ack_is_requeued_when_the_channel_closes_uncommitted() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let plain = open(&conn).await;
    declare(&plain, "q").await;
    publish(&plain, "q", "m").await;
    let tx = open(&conn).await;
    within(tx.tx_select()).await.unwrap();
    let (tag, _) = get(&tx, "q").await;
    within(tx.basic_ack(tag, BasicAckOptions::default()))
        .await
        .unwrap();
    within(tx.close(200, "no commit")).await.unwrap();
    assert_eq!(drain(&plain, "q").await, ["m"]);
}

// ---------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn commit_and_rollback_outside_tx_mode_are_406() {
    let broker = start_broker().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    assert_eq!(
        raw.refused(minimq_protocol::TxCommit.into()).await,
        precondition("channel is not transactional", 90, 20)
    );
    raw.open_channel(1).await;
    assert_eq!(
        raw.refused(minimq_protocol::TxRollback.into()).await,
        precondition("channel is not transactional", 90, 30)
    );
}

#[tokio::test]
async fn tx_and_confirm_mode_exclude_each_other() {
    let broker = start_broker().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.select().await;
    // A second select is answered again, as RabbitMQ does.
    raw.select().await;
    assert_eq!(
        raw.refused(minimq_protocol::ConfirmSelect { nowait: false }.into())
            .await,
        precondition("cannot switch from tx to confirm mode", 85, 10)
    );
    raw.open_channel(1).await;
    raw.send(1, minimq_protocol::ConfirmSelect { nowait: false }.into())
        .await;
    let ok = raw.method(1).await;
    assert!(matches!(ok, Method::ConfirmSelectOk(_)), "got {ok:?}");
    assert_eq!(
        raw.refused(minimq_protocol::TxSelect.into()).await,
        precondition("cannot switch from confirm to tx mode", 90, 10)
    );
}

/// An unknown delivery tag fails when the ack arrives, not at commit.
#[tokio::test]
async fn an_unknown_delivery_tag_fails_at_once_in_a_transaction() {
    let broker = start_broker().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.select().await;
    assert_eq!(
        raw.refused(
            minimq_protocol::BasicAck {
                delivery_tag: 9,
                multiple: false
            }
            .into()
        )
        .await,
        precondition("unknown delivery tag 9", 60, 80)
    );
}

/// As RabbitMQ: a publish a queue refuses (here `x-overflow: reject-publish`) fails the
/// commit with `partial tx completion`, after the publishes the queues took.
#[tokio::test]
async fn a_publish_refused_by_its_queue_fails_the_commit() {
    let broker = start_broker().await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    let mut args = minimq_protocol::FieldTable::new();
    args.insert("x-max-length", FieldValue::I32(1));
    args.insert(
        "x-overflow",
        FieldValue::LongString("reject-publish".into()),
    );
    raw.declare_with("one", args).await;
    raw.select().await;
    raw.publish("one", false, b"a").await;
    raw.publish("one", false, b"b").await;
    assert_eq!(
        raw.refused(minimq_protocol::TxCommit.into()).await,
        precondition("partial tx completion", 90, 20)
    );
    raw.open_channel(1).await;
    assert_eq!(raw.ready("one").await, 1);
}

/// What a transaction holds is bounded (`Config::max_tx_size`): past it the publish is a
/// channel error and everything held is dropped.
#[tokio::test]
async fn a_transaction_holding_more_than_the_limit_is_a_channel_error() {
    let broker = start_broker_with(Config {
        max_tx_size: 4096,
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.declare_with("q", Default::default()).await;
    raw.select().await;
    // 1000 octets of body and 256 of overhead each: three fit in 4096.
    let body = [7u8; 1000];
    for _ in 0..3 {
        raw.publish("q", false, &body).await;
    }
    raw.publish("q", false, &body).await;
    assert_eq!(
        raw.expect_close(1).await,
        precondition(
            "transaction holds more than the limit of 4096 octets of messages; commit or roll back sooner",
            60,
            40
        )
    );
    raw.open_channel(1).await;
    assert_eq!(raw.ready("q").await, 0, "the held publishes were dropped");
    raw.select().await;
    raw.publish("q", false, &body).await;
    raw.commit().await;
    assert_eq!(raw.ready("q").await, 1);
}

// ---------------------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------------------

/// `tx.commit-ok` for persistent messages in a durable queue means they are on disk: they
/// survive a crash of the broker right after it (no graceful stop).
#[tokio::test]
async fn committed_persistent_messages_survive_a_crash() {
    let dir = data_dir("crash");
    let broker = start_broker_in(&dir).await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    within(ch.queue_declare(
        "dq",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.tx_select()).await.unwrap();
    for body in ["a", "b", "c"] {
        within(ch.basic_publish(
            "",
            "dq",
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .unwrap();
    }
    within(ch.tx_commit()).await.unwrap();
    broker.crash().await;

    let broker = start_broker_in(&dir).await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    assert_eq!(drain(&ch, "dq").await, ["a", "b", "c"]);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tx.commit-ok` waits for the store: while the log cannot be synced the commit is not
/// answered (the disk alarm is on); once syncs work again it is.
#[tokio::test]
async fn a_commit_whose_messages_cannot_be_synced_waits_until_they_are() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let dir = data_dir("nosync");
    let fail = Arc::new(AtomicBool::new(false));
    let broker = start_broker_with(Config {
        data_dir: Some(dir.clone()),
        fail_syncs: Some(fail.clone()),
        ..Config::default()
    })
    .await;
    let mut raw = Raw::connect(broker.local_addr()).await;
    raw.send(
        1,
        QueueDeclare {
            queue: "dq".into(),
            durable: true,
            ..Default::default()
        }
        .into(),
    )
    .await;
    let Method::QueueDeclareOk(_) = raw.method(1).await else {
        panic!("expected queue.declare-ok")
    };
    raw.select().await;
    fail.store(true, Ordering::SeqCst);
    raw.send(
        1,
        BasicPublish {
            exchange: String::new(),
            routing_key: "dq".into(),
            mandatory: false,
            immediate: false,
        }
        .into(),
    )
    .await;
    let header = ContentHeader {
        class_id: 60,
        body_size: 1,
        properties: minimq_protocol::BasicProperties {
            delivery_mode: Some(2),
            ..Default::default()
        },
    };
    raw.send_frame(Frame::Header(1, Box::new(header))).await;
    raw.send_frame(Frame::Body(1, Bytes::from_static(b"x")))
        .await;
    let mut alarms = broker.state().alarms.subscribe();
    raw.send(1, minimq_protocol::TxCommit.into()).await;
    within(alarms.wait_for(|a| a.disk)).await.unwrap();
    fail.store(false, Ordering::SeqCst);
    let ok = raw.method(1).await;
    assert!(matches!(ok, Method::TxCommitOk(_)), "got {ok:?}");
    // Gone first: a client that never answers the shutdown's connection.close would hold
    // the shutdown for the broker's close timeout (3 s).
    drop(raw);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
