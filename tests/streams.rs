//! Stream queues over AMQP 0-9-1, end to end over real TCP with lapin: declare and its
//! refusals (RabbitMQ 3.10's codes and texts), publish with confirms, consumers reading
//! from `first`, `last`, `next`, an offset, a timestamp and an interval, each delivery's
//! `x-stream-offset`, prefetch credit given back by acks, two consumers reading the
//! whole stream each, the methods a stream refuses, offsets kept across a restart and a
//! crash, retention by size, deletion removing the files (of a failed stream too, and
//! those first refused by the file system at the next start), and the management API's
//! view.

mod common;

use std::path::Path;

use common::amqp::*;
use common::{data_dir, start_broker_in, start_with_api_in, within};
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, Consumer};
use minimq_broker::Broker;

fn stream_args(extra: &[(&str, AMQPValue)]) -> FieldTable {
    let mut all = vec![("x-queue-type", text("stream"))];
    all.extend(extra.iter().cloned());
    args(&all)
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn declare_stream(ch: &Channel, name: &str, extra: &[(&str, AMQPValue)]) {
    declare_with(ch, name, durable(), stream_args(extra))
        .await
        .expect("stream declared");
}

/// Publishes `bodies` to `queue` in confirm mode, each persistent or not in turn, and
/// checks every confirm is an ack.
async fn publish_all(ch: &Channel, queue: &str, bodies: &[&str]) {
    for (i, b) in bodies.iter().enumerate() {
        let props = BasicProperties::default().with_delivery_mode(if i % 2 == 0 { 2 } else { 1 });
        let c = publish_with(
            ch,
            "",
            queue,
            b.as_bytes(),
            BasicPublishOptions::default(),
            props,
        )
        .await;
        assert_eq!(c, Confirmation::Ack(None), "publish of {b}");
    }
}

/// A consumer of `queue` with prefetch `prefetch` and `x-stream-offset` = `offset`.
async fn reader(ch: &Channel, queue: &str, prefetch: u16, offset: Option<AMQPValue>) -> Consumer {
    within(ch.basic_qos(prefetch, BasicQosOptions::default()))
        .await
        .expect("basic.qos");
    let a = match offset {
        Some(v) => args(&[("x-stream-offset", v)]),
        None => FieldTable::default(),
    };
    within(ch.basic_consume(queue, "", BasicConsumeOptions::default(), a))
        .await
        .expect("basic.consume")
}

fn offset_of(d: &Delivery) -> i64 {
    match d
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-stream-offset").cloned())
    {
        Some(AMQPValue::LongLongInt(n)) => n,
        other => panic!("delivery without an x-stream-offset long: {other:?}"),
    }
}

/// The next `n` deliveries as (body, offset), acked.
async fn take(ch: &Channel, c: &mut Consumer, n: usize) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let d = next(c).await;
        out.push((body(&d), offset_of(&d)));
        ack(ch, d.delivery_tag, false).await;
    }
    out
}

/// Publishes `body_expected` to stream `s` and checks it is the next delivery of `c` (a
/// consumer on `ch`): nothing else was waiting for it.
async fn next_is(publisher: &Channel, ch: &Channel, c: &mut Consumer, body_expected: &str) {
    publish_all(publisher, "s", &[body_expected]).await;
    let d = next(c).await;
    assert_eq!(body(&d), body_expected, "nothing came before the marker");
    ack(ch, d.delivery_tag, false).await;
}

async fn connect_open(broker: &Broker) -> (Connection, Channel) {
    let conn = common::connect(broker).await;
    let ch = open(&conn).await;
    (conn, ch)
}

fn ten() -> Vec<String> {
    (0..10).map(|i| format!("m{i}")).collect()
}

async fn publish_ten(ch: &Channel, queue: &str) {
    let bodies = ten();
    let refs: Vec<&str> = bodies.iter().map(String::as_str).collect();
    confirm_mode(ch).await;
    publish_all(ch, queue, &refs).await;
}

fn numbered(from: usize, to: usize) -> Vec<(String, i64)> {
    (from..to).map(|i| (format!("m{i}"), i as i64)).collect()
}

/// A broker on `dir` whose stream `s` holds m0..m9 at offsets 0..9, with the connection
/// and (confirm-mode) channel that published them.
async fn ten_in_a_stream(dir: &Path) -> (Broker, Connection, Channel) {
    let broker = start_broker_in(dir).await;
    let (conn, ch) = connect_open(&broker).await;
    declare_stream(&ch, "s", &[]).await;
    publish_ten(&ch, "s").await;
    (broker, conn, ch)
}

/// The first `n` deliveries, acked, of a consumer of `s` at `offset` (prefetch 100) on a
/// new channel of `conn`.
async fn read_from(conn: &Connection, offset: Option<AMQPValue>, n: usize) -> Vec<(String, i64)> {
    let ch = open(conn).await;
    let mut c = reader(&ch, "s", 100, offset).await;
    take(&ch, &mut c, n).await
}

// ---------------------------------------------------------------------------------------
// Declare
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_stream_must_be_durable_not_exclusive_not_auto_delete() {
    let dir = data_dir("streams-flags");
    let broker = start_broker_in(&dir).await;
    let conn = common::connect(&broker).await;
    let cases = [
        (
            QueueDeclareOptions::default(),
            "PRECONDITION_FAILED - invalid property 'non-durable' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                exclusive: true,
                ..Default::default()
            },
            "PRECONDITION_FAILED - invalid property 'exclusive-owner' for queue 's' in vhost '/'",
        ),
        (
            QueueDeclareOptions {
                durable: true,
                auto_delete: true,
                ..Default::default()
            },
            "PRECONDITION_FAILED - invalid property 'auto-delete' for queue 's' in vhost '/'",
        ),
    ];
    for (options, text) in cases {
        let ch = open(&conn).await;
        let e = expect_amqp(declare_with(&ch, "s", options, stream_args(&[])).await);
        assert_eq!(e, (406, text.to_string()));
    }
    let ch = open(&conn).await;
    let e = expect_amqp(declare_with(&ch, "", durable(), stream_args(&[])).await);
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue"
                .to_string()
        )
    );
}

#[tokio::test]
async fn stream_arguments_are_checked_and_other_types_arguments_refused() {
    let dir = data_dir("streams-args");
    let broker = start_broker_in(&dir).await;
    let conn = common::connect(&broker).await;
    let refused = [
        ("x-max-length", AMQPValue::LongInt(5), "invalid arg 'x-max-length' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-overflow", text("drop-head"), "invalid arg 'x-overflow' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-dead-letter-exchange", text("dlx"), "invalid arg 'x-dead-letter-exchange' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-max-priority", AMQPValue::LongInt(5), "invalid arg 'x-max-priority' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-message-ttl", AMQPValue::LongInt(5), "invalid arg 'x-message-ttl' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-expires", AMQPValue::LongInt(5000), "invalid arg 'x-expires' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-single-active-consumer", AMQPValue::Boolean(true), "invalid arg 'x-single-active-consumer' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-delivery-limit", AMQPValue::LongInt(3), "invalid arg 'x-delivery-limit' for queue 's' in vhost '/' of queue type rabbit_stream_queue"),
        ("x-max-age", text("1x"), "invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age"),
        ("x-max-age", text("0s"), "invalid arg 'x-max-age' for queue 's' in vhost '/': invalid_max_age"),
        ("x-max-age", AMQPValue::LongInt(5), "invalid arg 'x-max-age' for queue 's' in vhost '/': {unacceptable_type,signedint}"),
        ("x-stream-max-segment-size-bytes", AMQPValue::LongLongInt(3_000_000_001), "Exceeded max value for x-stream-max-segment-size-bytes"),
        ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(-3), "invalid arg 'x-stream-max-segment-size-bytes' for queue 's' in vhost '/': {value_negative,-3}"),
        ("x-initial-cluster-size", AMQPValue::LongInt(0), "invalid arg 'x-initial-cluster-size' for queue 's' in vhost '/': {value_zero,0}"),
        ("x-max-length-bytes", AMQPValue::LongInt(-1), "invalid arg 'x-max-length-bytes' for queue 's' in vhost '/': {value_negative,-1}"),
    ];
    for (key, value, text) in refused {
        let ch = open(&conn).await;
        let e = expect_amqp(declare_with(&ch, "s", durable(), stream_args(&[(key, value)])).await);
        assert_eq!(e, (406, format!("PRECONDITION_FAILED - {text}")), "{key}");
    }
    let ch = open(&conn).await;
    declare_stream(
        &ch,
        "s",
        &[
            ("x-max-age", text("7D")),
            ("x-max-length-bytes", AMQPValue::LongInt(100_000_000)),
            (
                "x-stream-max-segment-size-bytes",
                AMQPValue::LongInt(1_000_000),
            ),
            ("x-initial-cluster-size", AMQPValue::LongInt(3)),
        ],
    )
    .await;
    // A redeclare compares the stream's arguments.
    let e = expect_amqp(
        declare_with(
            &ch,
            "s",
            durable(),
            stream_args(&[
                ("x-max-age", text("1D")),
                ("x-max-length-bytes", AMQPValue::LongInt(100_000_000)),
                (
                    "x-stream-max-segment-size-bytes",
                    AMQPValue::LongInt(1_000_000),
                ),
                ("x-initial-cluster-size", AMQPValue::LongInt(3)),
            ]),
        )
        .await,
    );
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'x-max-age' for queue 's' in vhost '/': received '1D' but current is '7D'"
                .to_string()
        )
    );
}

#[tokio::test]
async fn a_broker_without_a_data_directory_refuses_streams() {
    let broker = common::start_broker().await;
    let (_conn, ch) = connect_open(&broker).await;
    let e = expect_amqp(declare_with(&ch, "s", durable(), stream_args(&[])).await);
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - stream queues need a data directory (--data-dir)".to_string()
        )
    );
}

// ---------------------------------------------------------------------------------------
// Consume
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn consumers_start_at_first_last_next_or_an_offset_and_see_each_offset() {
    let (_broker, conn, ch) = ten_in_a_stream(&data_dir("streams-offsets")).await;
    assert_eq!(
        read_from(&conn, Some(text("first")), 10).await,
        numbered(0, 10)
    );

    let c2 = open(&conn).await;
    let mut last = reader(&c2, "s", 100, Some(text("last"))).await;
    assert_eq!(take(&c2, &mut last, 1).await, numbered(9, 10));
    next_is(&ch, &c2, &mut last, "after-last").await;

    let c3 = open(&conn).await;
    let mut fresh = reader(&c3, "s", 100, None).await;
    next_is(&ch, &c3, &mut fresh, "after-next").await;

    assert_eq!(
        read_from(&conn, Some(AMQPValue::LongLongInt(7)), 3).await,
        numbered(7, 10)
    );

    // An offset before the start reads from the first message kept.
    assert_eq!(
        read_from(&conn, Some(AMQPValue::LongInt(-1)), 2).await,
        numbered(0, 2)
    );
}

#[tokio::test]
async fn consumers_start_at_a_timestamp_or_an_interval_ago() {
    let (_broker, conn, ch) = ten_in_a_stream(&data_dir("streams-time")).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();

    assert_eq!(
        read_from(&conn, Some(text("1h")), 10).await,
        numbered(0, 10)
    );
    assert_eq!(
        read_from(&conn, Some(AMQPValue::Timestamp(now - 60)), 10).await,
        numbered(0, 10)
    );

    // A time after every message: it waits for the next one.
    let c3 = open(&conn).await;
    let mut future = reader(&c3, "s", 100, Some(AMQPValue::Timestamp(now + 3600))).await;
    next_is(&ch, &c3, &mut future, "later").await;
}

#[tokio::test]
async fn two_consumers_each_read_the_whole_stream_and_acks_only_give_credit_back() {
    let (_broker, conn, ch) = ten_in_a_stream(&data_dir("streams-two")).await;

    let a = open(&conn).await;
    let b = open(&conn).await;
    let mut ca = reader(&a, "s", 3, Some(text("first"))).await;
    let mut cb = reader(&b, "s", 100, Some(text("first"))).await;
    assert_eq!(take(&b, &mut cb, 10).await, numbered(0, 10));

    // Prefetch 3: three deliveries, then nothing until an ack.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(next(&mut ca).await);
    }
    let more = tokio::time::timeout(std::time::Duration::from_millis(200), ca.next()).await;
    assert!(
        more.is_err(),
        "a fourth delivery beyond prefetch 3: {more:?}"
    );
    ack(&a, held[2].delivery_tag, true).await;
    assert_eq!(take(&a, &mut ca, 7).await, numbered(3, 10));

    // Nothing was removed: the stream still has all ten.
    assert_eq!(passive(&ch, "s").await.unwrap().message_count(), 10);
    drop(conn);
}

#[tokio::test]
async fn a_stream_refuses_no_prefetch_no_ack_get_reject_and_purge_as_rabbitmq_does() {
    let dir = data_dir("streams-refusals");
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = connect_open(&broker).await;
    declare_stream(&ch, "s", &[]).await;
    confirm_mode(&ch).await;
    publish_all(&ch, "s", &["x"]).await;

    // No basic.qos: 406, the channel closes.
    let (conn, c) = connect_open(&broker).await;
    let e = expect_amqp(
        within(c.basic_consume(
            "s",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        ))
        .await,
    );
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - consumer prefetch count is not set for 'queue 's' in vhost '/''"
                .to_string()
        )
    );
    // Another type's consumer argument: 406.
    let e = consume_refused(&conn, args(&[("x-priority", AMQPValue::LongInt(3))])).await;
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-priority' for queue 's' in vhost '/' of queue type rabbit_stream_queue"
                .to_string()
        )
    );

    // An offset that is none of RabbitMQ's forms: 406.
    let e = consume_refused(&conn, args(&[("x-stream-offset", text("bad"))])).await;
    assert_eq!(
        e,
        (
            406,
            "PRECONDITION_FAILED - invalid arg 'x-stream-offset' for queue 's' in vhost '/': {invalid_stream_offset_arg,{longstr,<<\"bad\">>}}"
                .to_string()
        )
    );

    // The rest close the connection with 540.
    let expect_540 = |text: &str| {
        (
            540,
            format!("NOT_IMPLEMENTED - {text} queue 's' in vhost '/'"),
        )
    };
    let (_conn, c, mut errors) = watched(&broker).await;
    within(c.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    let _ = c
        .basic_consume(
            "s",
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        next_error(&mut errors).await,
        expect_540("automatic acknowledgement not supported by stream queues")
    );

    let (_conn, c, mut errors) = watched(&broker).await;
    within(c.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    within(c.basic_qos(10, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let _ = c
        .basic_consume(
            "s",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await;
    assert_eq!(
        next_error(&mut errors).await,
        (
            540,
            "NOT_IMPLEMENTED - queue 's' in vhost '/' does not support global qos".to_string()
        )
    );

    let (_conn, c, mut errors) = watched(&broker).await;
    let _ = c.basic_get("s", BasicGetOptions::default()).await;
    assert_eq!(
        next_error(&mut errors).await,
        expect_540("basic.get not supported by stream queues")
    );

    let (_conn, c, mut errors) = watched(&broker).await;
    let _ = c.queue_purge("s", QueuePurgeOptions::default()).await;
    assert_eq!(
        next_error(&mut errors).await,
        expect_540("queue.purge not supported by stream queues")
    );

    // In a transaction, the reject is refused when it takes effect, at commit.
    let (_conn, c, mut errors) = watched(&broker).await;
    let mut consumer = reader(&c, "s", 10, Some(text("first"))).await;
    let d = next(&mut consumer).await;
    within(c.tx_select()).await.unwrap();
    within(c.basic_reject(d.delivery_tag, BasicRejectOptions { requeue: false }))
        .await
        .unwrap();
    let _ = c.tx_commit().await;
    assert_eq!(
        next_error(&mut errors).await,
        expect_540("basic.nack and basic.reject not supported by stream queues")
    );

    for requeue in [true, false] {
        let (_conn, c, mut errors) = watched(&broker).await;
        let mut consumer = reader(&c, "s", 10, Some(text("first"))).await;
        let d = next(&mut consumer).await;
        let _ = c
            .basic_reject(d.delivery_tag, BasicRejectOptions { requeue })
            .await;
        assert_eq!(
            next_error(&mut errors).await,
            expect_540("basic.nack and basic.reject not supported by stream queues")
        );
    }
}

/// What a `basic.consume` of stream `s` with `arguments`, on a new channel of `conn` with
/// prefetch 10, is refused with.
async fn consume_refused(conn: &Connection, arguments: FieldTable) -> (u16, String) {
    let c = open(conn).await;
    within(c.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    expect_amqp(within(c.basic_consume("s", "", BasicConsumeOptions::default(), arguments)).await)
}

/// A new connection to `broker`, a channel on it and the errors that close it.
async fn watched(
    broker: &Broker,
) -> (
    Connection,
    Channel,
    tokio::sync::mpsc::UnboundedReceiver<lapin::Error>,
) {
    let (conn, c) = connect_open(broker).await;
    let errors = connection_errors(&conn);
    (conn, c, errors)
}

// ---------------------------------------------------------------------------------------
// Restart, crash, retention, deletion
// ---------------------------------------------------------------------------------------

async fn read_all_from_first(broker: &Broker, n: usize) -> Vec<(String, i64)> {
    let conn = common::connect(broker).await;
    read_from(&conn, Some(text("first")), n).await
}

#[tokio::test]
async fn a_restart_keeps_every_message_with_its_offset_and_appends_after_them() {
    let dir = data_dir("streams-restart");
    let broker = start_broker_in(&dir).await;
    {
        let (_conn, ch) = connect_open(&broker).await;
        declare_stream(&ch, "s", &[]).await;
        publish_ten(&ch, "s").await;
    }
    broker.shutdown().await;
    let broker = start_broker_in(&dir).await;
    assert_eq!(read_all_from_first(&broker, 10).await, numbered(0, 10));
    {
        let (_conn, ch) = connect_open(&broker).await;
        confirm_mode(&ch).await;
        publish_all(&ch, "s", &["m10"]).await;
    }
    // A crash (no graceful stop): every confirmed message is there, offsets unchanged.
    broker.crash().await;
    let broker = start_broker_in(&dir).await;
    assert_eq!(read_all_from_first(&broker, 11).await, numbered(0, 11));
}

#[tokio::test]
async fn retention_by_size_drops_whole_old_segments() {
    let dir = data_dir("streams-retention");
    let broker = start_broker_in(&dir).await;
    let (conn, ch) = connect_open(&broker).await;
    declare_stream(
        &ch,
        "s",
        &[
            ("x-max-length-bytes", AMQPValue::LongInt(20_000)),
            ("x-stream-max-segment-size-bytes", AMQPValue::LongInt(5_000)),
        ],
    )
    .await;
    confirm_mode(&ch).await;
    let body = "z".repeat(1000);
    for _ in 0..100 {
        publish_all(&ch, "s", &[&body]).await;
    }
    let kept = passive(&ch, "s").await.unwrap().message_count();
    assert!(
        (10..=30).contains(&kept),
        "about 20 KB of 1 KB messages kept, whole segments: {kept}"
    );
    let c = open(&conn).await;
    let mut first = reader(&c, "s", 100, Some(text("first"))).await;
    let d = next(&mut first).await;
    assert_eq!(offset_of(&d), 100 - i64::from(kept), "first kept offset");
    let segments = std::fs::read_dir(stream_dirs(&dir)[0].clone())
        .unwrap()
        .count();
    assert!(segments <= 6, "{segments} segment files");
}

fn stream_dirs(data: &Path) -> Vec<std::path::PathBuf> {
    match std::fs::read_dir(data.join("streams")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test]
async fn deleting_a_stream_removes_its_files() {
    let dir = data_dir("streams-delete");
    let (broker, _conn, ch) = ten_in_a_stream(&dir).await;
    assert_eq!(stream_dirs(&dir).len(), 1);
    let n = within(ch.queue_delete("s", QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert!(stream_dirs(&dir).is_empty());
    broker.shutdown().await;
    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = connect_open(&broker).await;
    assert_eq!(expect_amqp(passive(&ch, "s").await).0, 404);
}

/// A stream whose log cannot be opened (its segment's header damaged) is failed, as
/// RabbitMQ's crashed queue, until deleted; the deletion removes its directory too.
#[tokio::test]
async fn deleting_a_stream_whose_log_could_not_be_opened_removes_its_directory() {
    let dir = data_dir("streams-delete-failed");
    let (broker, conn, _ch) = ten_in_a_stream(&dir).await;
    drop(conn);
    broker.shutdown().await;
    let [stream] = &stream_dirs(&dir)[..] else {
        panic!("one stream directory: {:?}", stream_dirs(&dir));
    };
    let stream = stream.clone();
    let segment = std::fs::read_dir(&stream)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "stream"))
        .expect("a segment file");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[..4].copy_from_slice(b"JUNK");
    std::fs::write(&segment, bytes).unwrap();

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = connect_open(&broker).await;
    assert_eq!(
        expect_amqp(passive(&ch, "s").await),
        (
            404,
            "NOT_FOUND - queue 's' in vhost '/' has crashed and failed to restart".to_string()
        )
    );
    let (_conn, ch) = connect_open(&broker).await;
    within(ch.queue_delete("s", QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert!(stream_dirs(&dir).is_empty(), "{:?}", stream_dirs(&dir));
    broker.shutdown().await;
    restart_and_find_stream_s_gone(&dir).await;
}

/// A restart over `dir` finds no stream directory left and no stream `s`; then `dir` is
/// removed.
async fn restart_and_find_stream_s_gone(dir: &Path) {
    let broker = start_broker_in(dir).await;
    assert!(stream_dirs(dir).is_empty(), "{:?}", stream_dirs(dir));
    let (_conn, ch) = connect_open(&broker).await;
    assert_eq!(expect_amqp(passive(&ch, "s").await).0, 404);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Segment files that cannot be removed when their stream is deleted (the file system
/// refuses) do not keep the stream: its directory is set aside at once, under a name no
/// stream has, and what is left of it is removed at the next start.
#[tokio::test]
async fn a_deleted_streams_files_that_could_not_be_removed_go_at_the_next_start() {
    use minimq_broker::store::faulty::{Fault, FaultyDisk, FsOp};
    let dir = data_dir("streams-delete-refused");
    let disk = FaultyDisk::new(5);
    let broker = common::start_broker_with(minimq_broker::Config {
        data_dir: Some(dir.clone()),
        disk: Some(disk.clone()),
        ..Default::default()
    })
    .await;
    let (_conn, ch) = connect_open(&broker).await;
    declare_stream(&ch, "s", &[]).await;
    publish_ten(&ch, "s").await;
    let [stream] = &stream_dirs(&dir)[..] else {
        panic!("one stream directory: {:?}", stream_dirs(&dir));
    };
    let stream = stream.clone();
    disk.fail(&[FsOp::Remove], Fault::Io);
    let n = within(ch.queue_delete("s", QueueDeleteOptions::default()))
        .await
        .unwrap();
    assert_eq!(n, 10);
    assert!(disk.injected() > 0, "a removal was refused");
    assert!(!stream.exists(), "the stream's directory is set aside");
    let left = stream_dirs(&dir);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        std::fs::read_dir(&left[0]).unwrap().count() > 0,
        "its files are still there"
    );
    disk.heal();
    broker.shutdown().await;

    restart_and_find_stream_s_gone(&dir).await;
}

/// A deletion cut short after the stream's directory was set aside, before its queue's
/// record went (a crash): the next start finds the queue and the set-aside directory.
/// The stream is open again, empty (its messages were being deleted), and the old files
/// are removed.
#[tokio::test]
async fn a_stream_found_half_deleted_at_start_is_empty_and_its_old_files_go() {
    let dir = data_dir("streams-half-deleted");
    let (broker, conn, _ch) = ten_in_a_stream(&dir).await;
    drop(conn);
    broker.shutdown().await;
    let [stream] = &stream_dirs(&dir)[..] else {
        panic!("one stream directory: {:?}", stream_dirs(&dir));
    };
    std::fs::rename(stream, stream.with_extension("deleted")).unwrap();

    let broker = start_broker_in(&dir).await;
    let (_conn, ch) = connect_open(&broker).await;
    assert_eq!(passive(&ch, "s").await.unwrap().message_count(), 0);
    assert_eq!(stream_dirs(&dir), std::slice::from_ref(stream));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------
// Management API
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn the_management_api_shows_a_stream_as_rabbitmq_does() {
    let dir = data_dir("streams-api");
    let broker = start_with_api_in(&dir).await;
    let (conn, ch) = connect_open(&broker).await;
    declare_stream(&ch, "s", &[("x-max-age", text("7D"))]).await;
    publish_ten(&ch, "s").await;
    let c = open(&conn).await;
    let _consumer = reader(&c, "s", 10, Some(text("first"))).await;
    let q = common::http::get(&broker, "/api/queues/%2F/s").await;
    assert_eq!(q["type"], "stream");
    assert_eq!(q["durable"], true);
    assert_eq!(q["arguments"]["x-max-age"], "7D");
    assert_eq!(q["messages"], 10);
    assert_eq!(q["messages_ready"], 10);
    assert_eq!(q["messages_unacknowledged"], 0);
    assert_eq!(q["consumers"], 1);
    assert_eq!(q["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(q["online"], q["members"]);
    assert!(q["readers"].is_object());
    assert!(
        q.get("messages_paged_out").is_none(),
        "a classic queue's field"
    );
    let defs = common::http::get(&broker, "/api/definitions").await;
    let exported = defs["queues"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["name"] == "s")
        .cloned()
        .expect("the stream is exported");
    assert_eq!(exported["arguments"]["x-queue-type"], "stream");
    assert_eq!(exported["durable"], true);

    // Imported into another broker, it is a stream there.
    let other_dir = data_dir("streams-api-import");
    let other = start_with_api_in(&other_dir).await;
    let r = common::http::send_json(&other, "POST", "/api/definitions", &defs.to_string()).await;
    assert_eq!(r.status, 204, "{}", String::from_utf8_lossy(&r.body));
    let q = common::http::get(&other, "/api/queues/%2F/s").await;
    assert_eq!(q["type"], "stream");
    assert_eq!(q["arguments"]["x-max-age"], "7D");
    let (conn, ch) = connect_open(&other).await;
    confirm_mode(&ch).await;
    publish_all(&ch, "s", &["imported"]).await;
    let c = open(&conn).await;
    let mut first = reader(&c, "s", 10, Some(text("first"))).await;
    assert_eq!(take(&c, &mut first, 1).await, [("imported".to_string(), 0)]);
}

/// A consumer far behind reads the oldest messages from the log and catches up with the
/// newest, which the stream also keeps in memory (8 MiB of bodies): 10 MiB published,
/// every message delivered once, in offset order.
#[tokio::test]
async fn a_consumer_far_behind_reads_the_log_then_catches_up() {
    let dir = data_dir("streams-behind");
    let broker = start_broker_in(&dir).await;
    let (conn, ch) = connect_open(&broker).await;
    declare_stream(&ch, "s", &[]).await;
    confirm_mode(&ch).await;
    let body = vec![b'b'; 256 * 1024];
    for i in 0..40u8 {
        let mut b = body.clone();
        b[0] = i;
        let c = publish_with(
            &ch,
            "",
            "s",
            &b,
            BasicPublishOptions::default(),
            BasicProperties::default(),
        )
        .await;
        assert_eq!(c, Confirmation::Ack(None));
    }
    let c = open(&conn).await;
    let mut first = reader(&c, "s", 5, Some(text("first"))).await;
    for i in 0..40u8 {
        let d = next(&mut first).await;
        assert_eq!(
            (d.data[0], d.data.len(), offset_of(&d)),
            (i, 256 * 1024, i64::from(i))
        );
        ack(&c, d.delivery_tag, false).await;
    }
}
