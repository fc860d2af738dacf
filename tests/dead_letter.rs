//! Dead-lettering, delivery counts and delivery limits over real TCP with lapin:
//! `x-dead-letter-exchange` / `x-dead-letter-routing-key` for rejected, expired and
//! max-length-dropped messages, RabbitMQ's `x-death` header, `x-delivery-count` on
//! redeliveries, `x-delivery-limit` with and without a dead-letter exchange, and quorum
//! queues' at-least-once dead-lettering.

mod common;

use common::amqp::args;
use common::{connect, start_broker, within};
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicRejectOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};

fn s(v: &str) -> AMQPValue {
    AMQPValue::LongString(v.into())
}

async fn declare(ch: &Channel, name: &str, a: FieldTable) {
    ch.queue_declare(name, QueueDeclareOptions::default(), a)
        .await
        .unwrap();
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap();
}

/// The next message of `queue`, waiting for it to arrive.
async fn next_from(ch: &Channel, queue: &str) -> lapin::message::Delivery {
    let mut c = ch
        .basic_consume(
            queue,
            "",
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    within(c.next()).await.unwrap().unwrap()
}

fn header<'a>(d: &'a lapin::message::Delivery, key: &str) -> Option<&'a AMQPValue> {
    d.properties.headers().as_ref()?.inner().get(key)
}

fn deaths(d: &lapin::message::Delivery) -> Vec<FieldTable> {
    match header(d, "x-death") {
        Some(AMQPValue::FieldArray(a)) => a
            .as_slice()
            .iter()
            .map(|v| match v {
                AMQPValue::FieldTable(t) => t.clone(),
                other => panic!("x-death entry is not a table: {other:?}"),
            })
            .collect(),
        other => panic!("no x-death array: {other:?}"),
    }
}

fn field<'a>(t: &'a FieldTable, key: &str) -> &'a AMQPValue {
    t.inner()
        .get(key)
        .unwrap_or_else(|| panic!("x-death entry lacks {key}: {t:?}"))
}

fn text(v: &AMQPValue) -> String {
    match v {
        AMQPValue::LongString(s) => s.to_string(),
        other => panic!("not a string: {other:?}"),
    }
}

async fn setup_dlx(ch: &Channel, dlq: &str) {
    ch.exchange_declare(
        "dlx",
        lapin::ExchangeKind::Fanout,
        Default::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    declare(ch, dlq, FieldTable::default()).await;
    ch.queue_bind(
        dlq,
        "dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_rejected_message_is_dead_lettered_with_an_x_death_header() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    setup_dlx(&ch, "dead").await;
    declare(&ch, "work", args(&[("x-dead-letter-exchange", s("dlx"))])).await;
    publish(&ch, "work", b"bad task").await;
    let m = ch
        .basic_get("work", BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    let d = next_from(&ch, "dead").await;
    assert_eq!(&d.data[..], b"bad task");
    assert_eq!(d.exchange.as_str(), "dlx");
    assert_eq!(
        d.routing_key.as_str(),
        "work",
        "the original routing key, no x-dead-letter-routing-key"
    );
    let x = deaths(&d);
    assert_eq!(x.len(), 1);
    assert_eq!(field(&x[0], "count"), &AMQPValue::LongLongInt(1));
    assert_eq!(text(field(&x[0], "reason")), "rejected");
    assert_eq!(text(field(&x[0], "queue")), "work");
    assert_eq!(text(field(&x[0], "exchange")), "");
    assert!(matches!(field(&x[0], "time"), AMQPValue::Timestamp(_)));
    assert!(matches!(
        field(&x[0], "routing-keys"),
        AMQPValue::FieldArray(_)
    ));
    assert_eq!(
        header(&d, "x-first-death-reason").map(text),
        Some("rejected".into())
    );
    assert_eq!(
        header(&d, "x-first-death-queue").map(text),
        Some("work".into())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn expired_messages_are_dead_lettered_promptly_without_a_consumer_asking() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    setup_dlx(&ch, "dead").await;
    declare(
        &ch,
        "wait",
        args(&[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-message-ttl", AMQPValue::LongInt(30)),
        ]),
    )
    .await;
    publish(&ch, "wait", b"later").await;
    // Nobody consumes "wait": the expiry timer alone moves the message.
    let d = next_from(&ch, "dead").await;
    assert_eq!(&d.data[..], b"later");
    assert_eq!(text(field(&deaths(&d)[0], "reason")), "expired");
    broker.shutdown().await;
}

#[tokio::test]
async fn messages_dropped_by_max_length_are_dead_lettered_with_reason_maxlen() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    setup_dlx(&ch, "dead").await;
    declare(
        &ch,
        "small",
        args(&[
            ("x-dead-letter-exchange", s("dlx")),
            ("x-max-length", AMQPValue::LongInt(1)),
        ]),
    )
    .await;
    publish(&ch, "small", b"first").await;
    publish(&ch, "small", b"second").await;
    let d = next_from(&ch, "dead").await;
    assert_eq!(&d.data[..], b"first", "drop-head drops the oldest");
    assert_eq!(text(field(&deaths(&d)[0], "reason")), "maxlen");
    broker.shutdown().await;
}

#[tokio::test]
async fn a_dead_letter_chain_records_each_death_newest_first_and_counts_repeats() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    // work --rejected--> retry (TTL) --expired--> work --rejected--> ... --> parked
    declare(
        &ch,
        "work",
        args(&[
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("retry")),
        ]),
    )
    .await;
    declare(
        &ch,
        "retry",
        args(&[
            ("x-message-ttl", AMQPValue::LongInt(10)),
            ("x-dead-letter-exchange", s("")),
            ("x-dead-letter-routing-key", s("work")),
        ]),
    )
    .await;
    publish(&ch, "work", b"flaky").await;
    let mut c = ch
        .basic_consume(
            "work",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let first = within(c.next()).await.unwrap().unwrap();
    assert!(header(&first, "x-death").is_none());
    first
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let second = within(c.next()).await.unwrap().unwrap();
    let x = deaths(&second);
    assert_eq!(x.len(), 2, "{x:?}");
    assert_eq!(text(field(&x[0], "queue")), "retry", "newest first");
    assert_eq!(text(field(&x[0], "reason")), "expired");
    assert_eq!(text(field(&x[1], "queue")), "work");
    second
        .nack(BasicNackOptions {
            requeue: false,
            ..Default::default()
        })
        .await
        .unwrap();
    let third = within(c.next()).await.unwrap().unwrap();
    let x = deaths(&third);
    assert_eq!(
        x.len(),
        2,
        "same queue and reason share one counted entry: {x:?}"
    );
    let work = x
        .iter()
        .find(|t| text(field(t, "queue")) == "work")
        .unwrap();
    assert_eq!(field(work, "count"), &AMQPValue::LongLongInt(2));
    assert_eq!(
        header(&third, "x-first-death-queue").map(text),
        Some("work".into())
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn redeliveries_carry_x_delivery_count() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    declare(&ch, "q", FieldTable::default()).await;
    publish(&ch, "q", b"m").await;
    let mut c = ch
        .basic_consume(
            "q",
            "",
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d1 = within(c.next()).await.unwrap().unwrap();
    assert!(
        header(&d1, "x-delivery-count").is_none(),
        "absent on the first delivery"
    );
    d1.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let d2 = within(c.next()).await.unwrap().unwrap();
    assert_eq!(
        header(&d2, "x-delivery-count"),
        Some(&AMQPValue::LongLongInt(1))
    );
    d2.nack(BasicNackOptions {
        requeue: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let d3 = within(c.next()).await.unwrap().unwrap();
    assert_eq!(
        header(&d3, "x-delivery-count"),
        Some(&AMQPValue::LongLongInt(2))
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_poison_message_over_the_delivery_limit_is_dead_lettered_or_dropped() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    setup_dlx(&ch, "poison").await;
    declare(
        &ch,
        "with-dlx",
        args(&[
            ("x-delivery-limit", AMQPValue::LongInt(1)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    )
    .await;
    declare(
        &ch,
        "no-dlx",
        args(&[("x-delivery-limit", AMQPValue::LongInt(0))]),
    )
    .await;
    publish(&ch, "with-dlx", b"crash").await;
    publish(&ch, "no-dlx", b"crash too").await;
    // Limit 1: delivered, returned (1 return allowed), delivered again, returned → dead.
    for _ in 0..2 {
        let m = ch
            .basic_get("with-dlx", BasicGetOptions::default())
            .await
            .unwrap()
            .expect("still queued");
        ch.basic_nack(
            m.delivery.delivery_tag,
            BasicNackOptions {
                requeue: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let d = next_from(&ch, "poison").await;
    assert_eq!(&d.data[..], b"crash");
    assert_eq!(text(field(&deaths(&d)[0], "reason")), "delivery_limit");
    assert!(ch
        .basic_get("with-dlx", BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    // Limit 0 and no dead-letter exchange: the first return drops it.
    let m = ch
        .basic_get("no-dlx", BasicGetOptions::default())
        .await
        .unwrap()
        .expect("queued");
    ch.basic_nack(
        m.delivery.delivery_tag,
        BasicNackOptions {
            requeue: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(ch
        .basic_get("no-dlx", BasicGetOptions::default())
        .await
        .unwrap()
        .is_none());
    broker.shutdown().await;
}

/// A client can publish a message whose `x-death` already says it died `i64::MAX` times
/// in this queue for this reason: dead-lettering it again must not overflow the count
/// (an overflow panicked the queue task in debug builds and lost the message). The count
/// stays at the largest value it can hold, and the queue keeps working.
#[tokio::test]
async fn an_x_death_count_at_its_maximum_is_dead_lettered_and_the_queue_keeps_working() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    setup_dlx(&ch, "dead").await;
    declare(&ch, "work", args(&[("x-dead-letter-exchange", s("dlx"))])).await;
    let mut death = FieldTable::default();
    death.insert(ShortString::from("count"), AMQPValue::LongLongInt(i64::MAX));
    death.insert(ShortString::from("reason"), s("rejected"));
    death.insert(ShortString::from("queue"), s("work"));
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("x-death"),
        AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into()),
    );
    ch.basic_publish(
        "",
        "work",
        BasicPublishOptions::default(),
        b"crafted",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .unwrap();
    let m = ch
        .basic_get("work", BasicGetOptions::default())
        .await
        .unwrap()
        .expect("a message");
    ch.basic_reject(
        m.delivery.delivery_tag,
        BasicRejectOptions { requeue: false },
    )
    .await
    .unwrap();
    let d = next_from(&ch, "dead").await;
    assert_eq!(&d.data[..], b"crafted");
    let x = deaths(&d);
    assert_eq!(x.len(), 1);
    assert_eq!(field(&x[0], "count"), &AMQPValue::LongLongInt(i64::MAX));

    publish(&ch, "work", b"after").await;
    let m = within(ch.basic_get("work", BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .expect("the queue still takes and hands out messages");
    assert_eq!(&m.delivery.data[..], b"after");
    broker.shutdown().await;
}

/// RabbitMQ's at-least-once dead-lettering of quorum queues (`x-dead-letter-strategy:
/// at-least-once` with `x-overflow: reject-publish`): a dead letter with no queue to go
/// to stays held by its queue (`messages_dlx` in the management API), survives a crash
/// there (its queue never let go of it), and leaves once a queue took it.
#[tokio::test]
async fn an_at_least_once_dead_letter_leaves_its_queue_only_for_a_queue_that_took_it() {
    use lapin::options::{BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
    let dir = common::data_dir("dead-letter-at-least-once");
    let broker = common::start_with_api_in(&dir).await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.exchange_declare(
        "dlx",
        lapin::ExchangeKind::Fanout,
        durable,
        FieldTable::default(),
    )
    .await
    .unwrap();
    let source = args(&[
        ("x-queue-type", s("quorum")),
        ("x-dead-letter-exchange", s("dlx")),
        ("x-dead-letter-strategy", s("at-least-once")),
        ("x-overflow", s("reject-publish")),
    ]);
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("src", durable, source.clone())
        .await
        .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let confirm = ch
        .basic_publish(
            "",
            "src",
            BasicPublishOptions::default(),
            b"m",
            BasicProperties::default(),
        )
        .await
        .unwrap();
    assert!(within(confirm).await.unwrap().is_ack());
    let reject = |ch: Channel| async move {
        let m = within(ch.basic_get("src", BasicGetOptions::default()))
            .await
            .unwrap()
            .expect("m in src");
        assert_eq!(&m.delivery.data[..], b"m");
        ch.basic_reject(
            m.delivery.delivery_tag,
            BasicRejectOptions { requeue: false },
        )
        .await
        .unwrap();
        // Behind the reject in the queue's inbox: the queue has handled it.
        common::passive_declare(&ch, "src").await;
    };
    reject(ch.clone()).await;
    let q = common::http::get(&broker, "/api/queues/%2F/src").await;
    assert_eq!(
        (q["messages"].as_u64(), q["messages_dlx"].as_u64()),
        (Some(0), Some(1))
    );
    assert_eq!(q["message_bytes_dlx"], 1);
    broker.crash().await;

    let broker = common::start_broker_in(&dir).await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.basic_qos(1, BasicQosOptions::default()).await.unwrap();
    ch.queue_declare("src", durable, source).await.unwrap();
    ch.queue_declare("dead", durable, FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        "dead",
        "dlx",
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    reject(ch.clone()).await;
    let dead = next_from(&ch, "dead").await;
    assert_eq!(&dead.data[..], b"m");
    let src = common::passive_declare(&ch, "src").await;
    assert_eq!(src.message_count(), 0);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
