//! Routing through long exchange-to-exchange chains over real TCP with lapin: a chain of
//! 10,000 exchanges routes a publish to the queue at its end and the broker keeps serving;
//! a durable chain used as a dead-letter target keeps working across restarts on the same
//! data directory.

mod common;

use common::{data_dir, start_broker_in, within};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use minimq_broker::Broker;

/// Exchanges in the chain: deep enough that routing by recursion overflows a stack.
const CHAIN: usize = 10_000;

/// The durable chain is shorter: every durable declare and bind rewrites the metadata
/// file, so 10,000 of each would take minutes. Its test runs the broker on worker threads
/// with small stacks instead, where a recursion this deep overflows just the same.
const DURABLE_CHAIN: usize = 1_000;

/// Stack of the durable test's worker threads (where the queue task that dead-letters
/// routes the message).
const SMALL_STACK: usize = 256 * 1024;

fn link(i: usize) -> String {
    format!("chain-{i}")
}

async fn open(broker: &Broker) -> (Connection, Channel) {
    let conn = within(Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default(),
    ))
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Declares `chain-0` → `chain-1` → … → `chain-{len-1}` (fanout exchanges bound one to
/// the next) and binds queue `end` to the last one. The declares and binds go out
/// pipelined with no-wait; the queue bind at the end waits, so when it returns every
/// command before it has been handled.
async fn build_chain(ch: &Channel, durable: bool, len: usize) {
    for i in 0..len {
        ch.exchange_declare(
            &link(i),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable,
                nowait: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange.declare");
        if i > 0 {
            ch.exchange_bind(
                &link(i),
                &link(i - 1),
                "",
                ExchangeBindOptions { nowait: true },
                FieldTable::default(),
            )
            .await
            .expect("exchange.bind");
        }
    }
    ch.queue_declare(
        "end",
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("queue.declare");
    ch.queue_bind(
        "end",
        &link(len - 1),
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("queue.bind");
}

/// Publishes `body` with a confirm and waits for the ack.
async fn publish_confirmed(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    let confirm = ch
        .basic_publish(
            exchange,
            key,
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish");
    let c = within(confirm).await.expect("confirm");
    assert!(c.is_ack(), "publish was not acked: {c:?}");
}

/// The bodies in `queue`, taken with basic.get.
async fn drain(ch: &Channel, queue: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue, BasicGetOptions { no_ack: true }))
        .await
        .expect("get")
    {
        out.push(m.delivery.data.clone());
    }
    out
}

/// Waits until `queue` holds `n` messages: each passive declare is a round trip to the
/// queue, so this waits on the queue's own answers, bounded by the test's timeout.
async fn wait_count(ch: &Channel, queue: &str, n: u32) {
    within(async {
        loop {
            if common::passive_declare(ch, queue).await.message_count() >= n {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

#[tokio::test]
async fn a_publish_through_a_chain_of_ten_thousand_exchanges_arrives() {
    let broker = common::start_broker().await;
    let (_conn, ch) = open(&broker).await;
    build_chain(&ch, false, CHAIN).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, &link(0), "", b"deep").await;
    assert_eq!(drain(&ch, "end").await, vec![b"deep".to_vec()]);
    // The broker is still up: a new connection is served.
    let (_conn2, ch2) = open(&broker).await;
    common::passive_declare(&ch2, "end").await;
    broker.shutdown().await;
}

/// Declares the durable queue `expiring`: messages expire at once and are dead-lettered
/// to the head of the chain.
async fn declare_expiring(ch: &Channel) {
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-dead-letter-exchange"),
        AMQPValue::LongString(link(0).into()),
    );
    args.insert(ShortString::from("x-message-ttl"), AMQPValue::LongInt(0));
    ch.queue_declare(
        "expiring",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare expiring");
}

#[test]
fn a_durable_chain_as_dead_letter_target_works_across_restarts() {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_stack_size(SMALL_STACK)
        .enable_all()
        .build()
        .unwrap()
        .block_on(durable_chain_across_restarts());
}

async fn durable_chain_across_restarts() {
    let dir = data_dir("dlx-chain");
    let broker = start_broker_in(&dir).await;
    let (conn, ch) = open(&broker).await;
    build_chain(&ch, true, DURABLE_CHAIN).await;
    declare_expiring(&ch).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "", "expiring", b"first").await;
    wait_count(&ch, "end", 1).await;
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;

    // The chain, the dead-lettered message and the expiring queue come back; a message
    // that expires now goes through the recovered chain.
    let broker = start_broker_in(&dir).await;
    let (conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    publish_confirmed(&ch, "", "expiring", b"second").await;
    wait_count(&ch, "end", 2).await;
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    assert_eq!(
        drain(&ch, "end").await,
        vec![b"first".to_vec(), b"second".to_vec()]
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
