//! Declaring and deleting over real TCP with lapin: `queue.declare` (idempotence, declare-ok's
//! counts, server-named queues, the reserved `amq.` prefix, flag mismatches, the quorum
//! type), exclusive and auto-delete queues, `queue.delete` with if-unused / if-empty,
//! `queue.purge`, and auto-delete exchanges.
//!
//! Declares that must survive a restart are in `durability.rs` and `metadata.rs`; arguments
//! that change what a queue does (TTL, limits, priorities, expiry) in `queue_arguments.rs`.
//! Every test starts its own broker on an ephemeral port and waits for events (a reply, a
//! close) under `common::within`, never on a sleep.

mod common;

use common::amqp::*;
use common::{connect, start_broker, within};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::FieldTable;
use lapin::ExchangeKind;

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
// Exchanges
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn an_auto_delete_exchange_goes_with_its_last_binding() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "temp",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    queue_bound(&ch, "q", "temp", "k").await;
    ch.queue_unbind("q", "temp", "k", FieldTable::default())
        .await
        .unwrap();
    let err = ch
        .exchange_declare(
            "temp",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    broker.shutdown().await;
}
