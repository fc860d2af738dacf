//! Durable queues and persistent messages across broker restarts, over real TCP with
//! lapin: what survives a graceful restart, in which order, with which `redelivered`
//! flag; what vanishes (transient messages, except in quorum queues); and the
//! data-directory lock.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{data_dir, deadline, start_broker_in, within};
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use minimq_broker::Broker;

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

async fn declare(ch: &Channel, name: &str, durable: bool) -> lapin::Result<lapin::Queue> {
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
}

/// Publishes with a confirm and waits for it.
async fn publish(ch: &Channel, queue: &str, body: &str, persistent: bool) {
    let props = BasicProperties::default().with_delivery_mode(if persistent { 2 } else { 1 });
    let confirm = ch
        .basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            body.as_bytes(),
            props,
        )
        .await
        .expect("publish");
    let c = within(confirm).await.expect("confirm");
    assert!(c.is_ack(), "publish of {body} was not acked: {c:?}");
}

/// Drains a queue with basic.get: (body, what `detail` reads from each) in order.
async fn drain_with<T>(
    ch: &Channel,
    queue: &str,
    detail: impl Fn(&lapin::message::Delivery) -> T,
) -> Vec<(String, T)> {
    let mut out = Vec::new();
    while let Some(m) = ch
        .basic_get(queue, BasicGetOptions { no_ack: true })
        .await
        .expect("get")
    {
        out.push((
            String::from_utf8(m.delivery.data.clone()).unwrap(),
            detail(&m.delivery),
        ));
    }
    out
}

/// Drains a queue with basic.get: (body, redelivered) in order.
async fn drain(ch: &Channel, queue: &str) -> Vec<(String, bool)> {
    drain_with(ch, queue, |d| d.redelivered).await
}

#[tokio::test]
async fn durable_queues_and_persistent_messages_survive_a_graceful_restart() {
    let dir = data_dir("graceful");
    let broker = start_broker_in(&dir).await;
    let (conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&ch, "tasks", true).await.unwrap();
    declare(&ch, "scratch", false).await.unwrap();
    publish(&ch, "tasks", "one", true).await;
    publish(&ch, "tasks", "transient", false).await;
    publish(&ch, "tasks", "two", true).await;
    publish(&ch, "tasks", "three", true).await;
    publish(&ch, "scratch", "gone", true).await;
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    let q = declare(&ch, "tasks", true)
        .await
        .expect("redeclare with the same flags works");
    assert_eq!(
        q.message_count(),
        3,
        "persistent messages in the durable queue survive, transient ones do not"
    );
    assert_eq!(
        drain(&ch, "tasks").await,
        vec![
            ("one".into(), false),
            ("two".into(), false),
            ("three".into(), false)
        ],
        "original order; never delivered, so not flagged"
    );
    let err = ch
        .queue_declare(
            "scratch",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NOT_FOUND"),
        "a non-durable queue is gone: {err}"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn unacked_messages_are_ready_again_after_a_restart_flagged_redelivered() {
    let dir = data_dir("unacked");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&ch, "q", true).await.unwrap();
    for body in ["a", "b", "c", "d"] {
        publish(&ch, "q", body, true).await;
    }
    // Prefetch 1: "a" is delivered and acked, then "b" is delivered and kept unacked
    // until the broker stops; "c" and "d" are never delivered.
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "q",
            "c",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let a = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(&a.data[..], b"a");
    a.ack(BasicAckOptions::default()).await.unwrap();
    let b = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(&b.data[..], b"b");
    // A synchronous round trip after the ack: the queue has handled it before shutdown.
    declare(&ch, "q", true).await.unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "q", true).await.unwrap();
    assert_eq!(
        drain(&ch, "q").await,
        vec![("b".into(), true), ("c".into(), false), ("d".into(), false)],
        "acked 'a' never comes back; unacked 'b' is first again and flagged; the rest are not"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn deleted_and_purged_messages_stay_gone_and_flags_are_checked_after_recovery() {
    let dir = data_dir("deleted");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&ch, "purged", true).await.unwrap();
    declare(&ch, "deleted", true).await.unwrap();
    publish(&ch, "purged", "x", true).await;
    publish(&ch, "deleted", "y", true).await;
    ch.queue_purge("purged", Default::default()).await.unwrap();
    ch.queue_delete("deleted", Default::default())
        .await
        .unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (conn, ch) = open(&broker).await;
    let err = ch
        .queue_declare(
            "deleted",
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    let ch = conn.create_channel().await.unwrap();
    assert!(drain(&ch, "purged").await.is_empty());
    let err = declare(&ch, "purged", false).await.unwrap_err();
    assert!(
        err.to_string().contains("inequivalent arg 'durable'"),
        "a recovered queue keeps its flags: {err}"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_is_refused() {
    let dir = data_dir("lock");
    let broker = start_broker_in(&dir).await;
    let second = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(&dir)
        .start()
        .await;
    let err = second.err().expect("the second server must not start");
    assert!(
        err.to_string().contains("in use by another minimq-server"),
        "{err}"
    );
    broker.shutdown().await;
    // Released at shutdown: the directory can be opened again.
    let again = start_broker_in(&dir).await;
    again.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn messages_routed_to_two_durable_queues_are_stored_once_and_survive_in_both() {
    let dir = data_dir("fanout");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&ch, "left", true).await.unwrap();
    declare(&ch, "right", true).await.unwrap();
    ch.queue_bind(
        "left",
        "amq.fanout",
        "",
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "right",
        "amq.fanout",
        "",
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let confirm = ch
        .basic_publish(
            "amq.fanout",
            "",
            BasicPublishOptions::default(),
            b"both",
            props,
        )
        .await
        .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    // Settle it in one queue only: the body must stay for the other.
    assert_eq!(drain(&ch, "left").await, vec![("both".into(), false)]);
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "left", true).await.unwrap();
    declare(&ch, "right", true).await.unwrap();
    assert!(drain(&ch, "left").await.is_empty());
    assert_eq!(drain(&ch, "right").await, vec![("both".into(), false)]);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A failed fsync (EIO) is a fault the broker gets over by itself: the disk alarm blocks
/// publishers and fails the health check, the confirm of what the sync covered is
/// withheld (neither acked nor nacked), and once syncs work again the alarm clears, the
/// withheld confirms arrive, and every confirmed message is consumed exactly once.
#[tokio::test]
async fn a_failed_fsync_blocks_publishers_withholds_confirms_and_recovers_by_itself() {
    use common::http::{request, GUEST};
    use minimq_broker::store::faulty::{Fault, FaultyDisk, FsOp};
    use minimq_client::{BlockedState, Confirmation, Connection, QueueDeclareOptions};
    let dir = data_dir("storefault");
    let disk = FaultyDisk::new(3);
    let config = minimq_broker::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        http: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: Some(dir.clone()),
        disk: Some(disk.clone()),
        ..Default::default()
    };
    let broker = Broker::builder().config(config).start().await.unwrap();
    let conn = within(Connection::connect(&broker.amqp_url()))
        .await
        .unwrap();
    let ch = conn.open_channel().await.unwrap();
    ch.confirm_select().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("sf-q", durable, minimq_client::FieldTable::new())
        .await
        .unwrap();
    let props = minimq_client::BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let publish = |body: &'static str| ch.basic_publish("", "sf-q", false, &props, body.as_bytes());
    let m1 = publish("m1").await.unwrap();
    assert_eq!(within(m1).await.unwrap(), Confirmation::Ack);

    let mut alarms = broker.state().alarms.subscribe();
    disk.fail(&[FsOp::Sync], Fault::Io);
    let mut m2 = publish("m2").await.unwrap();
    within(alarms.wait_for(|a| a.disk)).await.unwrap();
    let health = request(
        &broker,
        "GET",
        "/api/health/checks/local-alarms",
        Some(GUEST),
    )
    .await;
    assert_eq!(health.status, 503);
    assert_eq!(health.json()["alarms"][0]["resource"], "disk space");
    // The next publish is taken and blocks the connection.
    let m3 = publish("m3").await.unwrap();
    let mut blocked = conn.blocked();
    within(blocked.wait_for(|b| matches!(b, BlockedState::Blocked { .. })))
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut m2)
            .await
            .is_err(),
        "m2's confirm is withheld while syncs fail"
    );

    disk.heal();
    within(alarms.wait_for(|a| !a.disk)).await.unwrap();
    within(blocked.wait_for(|b| !matches!(b, BlockedState::Blocked { .. })))
        .await
        .unwrap();
    assert_eq!(within(m2).await.unwrap(), Confirmation::Ack);
    assert_eq!(within(m3).await.unwrap(), Confirmation::Ack);
    let health = request(
        &broker,
        "GET",
        "/api/health/checks/local-alarms",
        Some(GUEST),
    )
    .await;
    assert_eq!(health.status, 200);

    let mut bodies = Vec::new();
    while let Some(got) = ch.basic_get("sf-q", false).await.unwrap() {
        bodies.push(String::from_utf8_lossy(&got.delivery.body).into_owned());
        ch.basic_ack(got.delivery.delivery_tag, false)
            .await
            .unwrap();
    }
    assert_eq!(bodies, ["m1", "m2", "m3"], "each confirmed message once");
    drop(conn);
    broker.shutdown().await;

    // Nothing comes back after a restart: each was settled once.
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "sf-q", true).await.unwrap();
    assert!(drain(&ch, "sf-q").await.is_empty());
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn durable_exchanges_and_bindings_survive_a_restart_transient_ones_do_not() {
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions};
    use lapin::ExchangeKind;
    let dir = data_dir("topology");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    let durable_x = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "orders",
        ExchangeKind::Topic,
        durable_x,
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.exchange_declare(
        "scratch-x",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(&ch, "eu-orders", true).await.unwrap();
    declare(&ch, "tmp", false).await.unwrap();
    ch.queue_bind(
        "eu-orders",
        "orders",
        "eu.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "tmp",
        "orders",
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let props = BasicProperties::default().with_delivery_mode(2);
    let c = ch
        .basic_publish(
            "orders",
            "eu.paris",
            BasicPublishOptions::default(),
            b"routed after restart",
            props,
        )
        .await
        .unwrap();
    assert!(within(c).await.unwrap().is_ack());
    assert_eq!(
        drain(&ch, "eu-orders").await,
        vec![("routed after restart".into(), false)]
    );
    let err = ch
        .exchange_declare(
            "scratch-x",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("NOT_FOUND"),
        "a non-durable exchange is gone: {err}"
    );
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .exchange_declare(
            "orders",
            ExchangeKind::Direct,
            durable_x,
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("inequivalent arg 'type'"),
        "the recovered exchange keeps its type: {err}"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_delivery_count_of_a_persistent_message_survives_a_restart() {
    use lapin::options::BasicNackOptions;
    use lapin::types::{AMQPValue, ShortString};
    let dir = data_dir("deliveries");
    let mut limit = FieldTable::default();
    limit.insert(ShortString::from("x-delivery-limit"), AMQPValue::LongInt(1));
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    ch.queue_declare("limited", durable, limit.clone())
        .await
        .unwrap();
    publish(&ch, "limited", "poison", true).await;
    let m = ch
        .basic_get("limited", BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    ch.queue_declare("limited", durable, limit.clone())
        .await
        .unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    let m = ch
        .basic_get("limited", BasicGetOptions::default())
        .await
        .unwrap()
        .expect("still queued");
    let count = m
        .delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    assert_eq!(
        count,
        Some(AMQPValue::LongLongInt(1)),
        "one earlier delivery, remembered across the restart"
    );
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        ch.basic_get("limited", BasicGetOptions::default())
            .await
            .unwrap()
            .is_none(),
        "the second return is over the limit: dropped"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn after_a_crash_every_recovered_message_is_flagged_and_nothing_confirmed_is_lost() {
    let dir = data_dir("crash");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare(&ch, "q", true).await.unwrap();
    for body in ["a", "b", "c"] {
        publish(&ch, "q", body, true).await;
    }
    let m = ch
        .basic_get("q", BasicGetOptions::default())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.delivery.data[..], b"a");
    // "a" is held unacked when the broker dies; nothing is closed or logged on the way.
    broker.crash().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "q", true).await.unwrap();
    assert_eq!(
        drain(&ch, "q").await,
        vec![("a".into(), true), ("b".into(), true), ("c".into(), true)],
        "as RabbitMQ after kill -9: all back, in order, all flagged"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A broker whose durable queues keep at most `memory` bytes of persistent messages in
/// memory, with the management API (to see how many are paged out).
async fn start_paging(dir: &Path, memory: u64) -> Broker {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir)
        .queue_memory(memory)
        .http(Some("127.0.0.1:0".parse().unwrap()))
        .start()
        .await
        .expect("broker starts")
}

/// (ready + unacked, paged out, ready in memory) of a queue, as the management API
/// reports them.
/// The passive declare first makes sure every earlier command to the queue is counted.
async fn paging_counts(broker: &Broker, ch: &Channel, queue: &str) -> (u64, u64, u64) {
    common::passive_declare(ch, queue).await;
    let q = common::http::get(broker, &format!("/api/queues/%2f/{queue}")).await;
    let n = |k: &str| q[k].as_u64().unwrap_or_else(|| panic!("{k} in {q}"));
    (
        n("messages_ready") + n("messages_unacknowledged"),
        n("messages_paged_out"),
        n("messages_ready_ram"),
    )
}

/// The body of message `i`: its number, then padding to 1 KiB.
fn paged_body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:06}").into_bytes();
    b.resize(1024, b'.');
    b
}

/// Consumes `n` messages and checks they are messages `from..from + n`, in order, with
/// their body and properties intact.
async fn consume_in_order(ch: &Channel, queue: &str, from: usize, n: usize) {
    ch.basic_qos(50, BasicQosOptions::default()).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            queue,
            &format!("c{from}"),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    for i in from..from + n {
        let d = within(consumer.next()).await.expect("delivery").unwrap();
        assert_eq!(d.data, paged_body(i), "message {i}");
        assert_eq!(
            d.properties.correlation_id().as_ref().map(|s| s.as_str()),
            Some(format!("id-{i}").as_str())
        );
        assert_eq!(*d.properties.delivery_mode(), Some(2));
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    ch.basic_cancel(&format!("c{from}"), Default::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_long_durable_queue_keeps_most_messages_on_disk_and_reads_them_back_in_order() {
    const N: usize = 2000;
    const MEMORY: u64 = 64 * 1024;
    // Each message costs its 1 KiB body plus 256 octets of bookkeeping.
    const IN_MEMORY: u64 = MEMORY / (1024 + 256);
    let dir = data_dir("paging");
    let broker = start_paging(&dir, MEMORY).await;
    let (conn, ch) = open(&broker).await;
    declare(&ch, "paged", true).await.unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut confirms = Vec::new();
    for i in 0..N {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_correlation_id(format!("id-{i}").into());
        confirms.push(
            ch.basic_publish(
                "",
                "paged",
                BasicPublishOptions::default(),
                &paged_body(i),
                props,
            )
            .await
            .unwrap(),
        );
    }
    for c in confirms {
        assert!(within(c).await.unwrap().is_ack());
    }
    let (queued, paged, in_memory) = paging_counts(&broker, &ch, "paged").await;
    assert_eq!(queued, N as u64);
    assert!(
        in_memory <= IN_MEMORY,
        "{in_memory} messages held in memory"
    );
    assert_eq!(paged + in_memory, queued);

    // The first half comes back in order, read from the log as consumers reach it.
    consume_in_order(&ch, "paged", 0, N / 2).await;
    // (Up to a prefetch of 50 more may be out to the cancelled consumer, unacked.)
    let (queued, _, in_memory) = paging_counts(&broker, &ch, "paged").await;
    assert_eq!(queued, (N / 2) as u64);
    assert!(
        in_memory <= IN_MEMORY + 256,
        "{in_memory} messages held in memory"
    );
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;

    // After a restart nothing is read until it is delivered.
    let broker = start_paging(&dir, MEMORY).await;
    let (conn, ch) = open(&broker).await;
    assert_eq!(
        paging_counts(&broker, &ch, "paged").await,
        ((N / 2) as u64, (N / 2) as u64, 0)
    );
    consume_in_order(&ch, "paged", N / 2, N / 2).await;
    assert_eq!(paging_counts(&broker, &ch, "paged").await, (0, 0, 0));
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn paged_out_messages_dropped_by_max_length_are_dead_lettered_whole() {
    use lapin::types::AMQPValue;
    let dir = data_dir("paging-dlx");
    // Room for about three 1 KiB messages in memory: the rest are paged out.
    let broker = start_paging(&dir, 4 * 1024).await;
    let (conn, ch) = open(&broker).await;
    declare(&ch, "dead", true).await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(5));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString("dead".into()),
    );
    ch.queue_declare(
        "capped",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    for i in 0..40 {
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_correlation_id(format!("id-{i}").into());
        let c = ch
            .basic_publish(
                "",
                "capped",
                BasicPublishOptions::default(),
                &paged_body(i),
                props,
            )
            .await
            .unwrap();
        assert!(within(c).await.unwrap().is_ack());
    }
    // The 35 oldest went to "dead", whole and in order; the 5 newest stayed.
    consume_in_order(&ch, "dead", 0, 35).await;
    consume_in_order(&ch, "capped", 35, 5).await;
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A consumer that stops reading its socket must not hold up a graceful shutdown: the
/// broker closes its connection within a bounded time (it does not wait to write what the
/// client will never read), its unacked messages go back to the queue, and the log is
/// closed cleanly.
#[tokio::test]
async fn a_graceful_shutdown_does_not_wait_for_a_consumer_that_stops_reading() {
    use common::raw::{declare as raw_declare, Client};
    use minimq_protocol::{BasicConsume, Method};

    let dir = data_dir("shutdown-stuck-reader");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    declare(&ch, "stuck", true).await.expect("declare");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    // Far more than the socket buffers hold.
    const N: usize = 48;
    let body = "x".repeat(1024 * 1024);
    for _ in 0..N {
        publish(&ch, "stuck", &body, true).await;
    }
    // A consumer with no prefetch limit that never reads what it is sent.
    let mut stuck = Client::open_channel1(broker.local_addr()).await;
    stuck.send(1, raw_declare("stuck-probe")).await;
    assert!(matches!(stuck.method(1).await, Method::QueueDeclareOk(_)));
    stuck
        .send(
            1,
            BasicConsume {
                queue: "stuck".into(),
                consumer_tag: "never-reads".into(),
                ..Default::default()
            }
            .into(),
        )
        .await;
    // It reads the consume-ok and the start of the first delivery, then nothing: the
    // rest (tens of MiB, no prefetch limit) waits in the socket buffers and the broker.
    assert!(matches!(stuck.method(1).await, Method::BasicConsumeOk(_)));
    assert!(matches!(stuck.method(1).await, Method::BasicDeliver(_)));

    // Bounded: RabbitMQ closes such a socket at once (linger 0). A bound of its own, wider
    // than the usual guard: 48 MiB of deliveries are in flight when the shutdown starts.
    deadline(Duration::from_secs(20), "the shutdown", broker.shutdown())
        .await
        .expect("the shutdown waited for a client that does not read");
    drop(stuck);

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    let q = declare(&ch, "stuck", true).await.expect("declare");
    assert_eq!(
        q.message_count() as usize,
        N,
        "every unacked message is back"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Declares `name` as a quorum queue (durable, as quorum queues must be).
async fn declare_quorum(ch: &Channel, name: &str) {
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        arguments,
    )
    .await
    .expect("quorum queue declared");
}

/// Drains a queue with basic.get: (body, delivery mode) in order.
async fn drain_modes(ch: &Channel, queue: &str) -> Vec<(String, Option<u8>)> {
    drain_with(ch, queue, |d| *d.properties.delivery_mode()).await
}

/// A quorum queue keeps every message it confirmed, whatever its delivery mode, as
/// RabbitMQ's quorum queues do: transient messages survive a graceful restart and a
/// crash, with the delivery mode their publisher sent. A classic durable queue beside it
/// still loses its transient ones.
#[tokio::test]
async fn a_quorum_queue_keeps_transient_messages_across_restarts_and_crashes() {
    let dir = data_dir("quorum-transient");
    let broker = start_broker_in(&dir).await;
    let (conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_quorum(&ch, "qq").await;
    declare(&ch, "classic", true).await.unwrap();
    publish(&ch, "qq", "transient-1", false).await;
    publish(&ch, "qq", "persistent", true).await;
    publish(&ch, "classic", "gone", false).await;
    conn.close(200, "bye").await.unwrap();
    broker.shutdown().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    declare_quorum(&ch, "qq").await;
    assert_eq!(
        declare(&ch, "classic", true).await.unwrap().message_count(),
        0
    );
    // Confirmed, then the broker dies with nothing closed or logged on the way.
    publish(&ch, "qq", "transient-2", false).await;
    broker.crash().await;

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = open(&broker).await;
    declare_quorum(&ch, "qq").await;
    assert_eq!(
        drain_modes(&ch, "qq").await,
        vec![
            ("transient-1".into(), Some(1)),
            ("persistent".into(), Some(2)),
            ("transient-2".into(), Some(1)),
        ]
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
