//! Firehose tracing end to end: switched per vhost with `PUT /api/vhosts/{vhost}`
//! (`"tracing": true`, shown by `GET /api/vhosts`), every publish copied to the vhost's
//! internal `amq.rabbitmq.trace` topic exchange as `publish.<exchange>` and every
//! delivery (consume and get) as `deliver.<queue>`, with the headers and header types
//! RabbitMQ 3.10's `rabbit_trace` sets (checked against the reference node with pika).
//!
//! No sleeps: a consumer of the trace queue waits for each trace message, and "nothing
//! was traced" is shown by the next trace message being a later one.

mod common;

use common::amqp::{self, expect_amqp};
use common::http::{get, send_json};
use common::within;
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueBindOptions};
use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use minimq_broker::Broker;
use serde_json::json;

async fn start() -> Broker {
    common::start_broker_with(minimq_broker::Config {
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..minimq_broker::Config::default()
    })
    .await
}

async fn set_tracing(broker: &Broker, on: bool) {
    let body = json!({ "tracing": on }).to_string();
    let r = send_json(broker, "PUT", "/api/vhosts/%2F", &body).await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(get(broker, "/api/vhosts/%2F").await["tracing"], on);
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8], props: BasicProperties) {
    within(ch.basic_publish(exchange, key, BasicPublishOptions::default(), body, props))
        .await
        .unwrap();
}

fn header<'a>(d: &'a lapin::message::Delivery, key: &str) -> &'a AMQPValue {
    d.properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(key))
        .unwrap_or_else(|| panic!("header {key} missing"))
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(s.into())
}

fn keys(t: &FieldTable) -> Vec<String> {
    t.inner().keys().map(|k| k.to_string()).collect()
}

#[tokio::test]
async fn publishes_and_deliveries_are_traced_with_rabbitmqs_headers_while_tracing_is_on() {
    let broker = start().await;
    let x = get(&broker, "/api/exchanges/%2F/amq.rabbitmq.trace").await;
    assert_eq!(
        (&x["type"], &x["durable"], &x["internal"]),
        (&json!("topic"), &json!(true), &json!(true))
    );
    assert_eq!(get(&broker, "/api/vhosts/%2F").await["tracing"], false);
    let r = send_json(&broker, "PUT", "/api/vhosts/%2F", r#"{"tracing":"x"}"#).await;
    assert_eq!(r.status, 400);
    set_tracing(&broker, true).await;

    let conn = common::connect(&broker).await;
    let ch = amqp::open(&conn).await;
    amqp::declare(&ch, "firehose").await;
    within(ch.queue_bind(
        "firehose",
        "amq.rabbitmq.trace",
        "#",
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let mut traces = amqp::consume(&ch, "firehose", "t").await;
    amqp::declare(&ch, "work").await;
    let conn_name = get(&broker, "/api/connections").await[0]["name"]
        .as_str()
        .unwrap()
        .to_string();

    let mut h = FieldTable::default();
    h.insert("h".into(), AMQPValue::LongInt(1));
    let props = BasicProperties::default()
        .with_content_type("text/plain".into())
        .with_delivery_mode(2)
        .with_priority(3)
        .with_message_id("m1".into())
        .with_timestamp(1_700_000_000)
        .with_headers(h.clone());
    publish(&ch, "", "work", b"hello", props).await;
    let t = amqp::next(&mut traces).await;
    assert_eq!(t.exchange.as_str(), "amq.rabbitmq.trace");
    assert_eq!(t.routing_key.as_str(), "publish.");
    assert_eq!(amqp::body(&t), "hello");
    assert_eq!(*t.properties.delivery_mode(), None, "a trace is transient");
    let all = t.properties.headers().clone().unwrap();
    assert_eq!(
        keys(&all),
        [
            "channel",
            "connection",
            "exchange_name",
            "node",
            "properties",
            "routed_queues",
            "routing_keys",
            "user",
            "vhost"
        ],
        "lapin sorts them; the order on the wire is checked in the broker's unit test"
    );
    assert_eq!(header(&t, "exchange_name"), &text(""));
    assert_eq!(
        header(&t, "routing_keys"),
        &AMQPValue::FieldArray(FieldArray::from(vec![text("work")]))
    );
    assert_eq!(
        header(&t, "routed_queues"),
        &AMQPValue::FieldArray(FieldArray::from(vec![text("work")]))
    );
    assert_eq!(header(&t, "vhost"), &text("/"));
    assert_eq!(header(&t, "user"), &text("guest"));
    assert_eq!(header(&t, "connection"), &text(&conn_name));
    assert_eq!(header(&t, "channel"), &AMQPValue::LongInt(1));
    let node = get(&broker, "/api/overview").await["node"].clone();
    assert_eq!(header(&t, "node"), &text(node.as_str().unwrap()));
    let AMQPValue::FieldTable(p) = header(&t, "properties") else {
        panic!("properties is a table");
    };
    let mut want = FieldTable::default();
    for (k, v) in [
        ("timestamp", AMQPValue::LongInt(1_700_000_000)),
        ("message_id", text("m1")),
        ("priority", AMQPValue::LongInt(3)),
        ("delivery_mode", AMQPValue::LongInt(2)),
        ("headers", AMQPValue::FieldTable(h)),
        ("content_type", text("text/plain")),
    ] {
        want.insert(ShortString::from(k), v);
    }
    assert_eq!(p, &want);

    // An unroutable publish to a named exchange: routed nowhere.
    publish(
        &ch,
        "amq.topic",
        "nowhere",
        b"x",
        BasicProperties::default(),
    )
    .await;
    let t = amqp::next(&mut traces).await;
    assert_eq!(t.routing_key.as_str(), "publish.amq.topic");
    assert_eq!(
        header(&t, "routed_queues"),
        &AMQPValue::FieldArray(FieldArray::default())
    );

    // A get, then a redelivery to a consumer on a second channel.
    let got = within(ch.basic_get("work", BasicGetOptions { no_ack: false }))
        .await
        .unwrap()
        .unwrap();
    let t = amqp::next(&mut traces).await;
    assert_eq!(t.routing_key.as_str(), "deliver.work");
    assert_eq!(header(&t, "redelivered"), &AMQPValue::LongInt(0));
    assert_eq!(header(&t, "exchange_name"), &text(""));
    assert!(
        t.properties
            .headers()
            .as_ref()
            .unwrap()
            .inner()
            .get("routed_queues")
            .is_none(),
        "a delivery trace has no routed_queues"
    );
    within(got.delivery.nack(lapin::options::BasicNackOptions {
        requeue: true,
        ..Default::default()
    }))
    .await
    .unwrap();
    let ch2 = amqp::open(&conn).await;
    let mut work = amqp::consume(&ch2, "work", "w").await;
    let d = amqp::next(&mut work).await;
    assert!(d.redelivered);
    let t = amqp::next(&mut traces).await;
    assert_eq!(t.routing_key.as_str(), "deliver.work");
    assert_eq!(header(&t, "redelivered"), &AMQPValue::LongInt(1));
    assert_eq!(header(&t, "channel"), &AMQPValue::LongInt(2));

    // The trace exchange takes nothing from clients.
    let ch3 = amqp::open(&conn).await;
    publish(
        &ch3,
        "amq.rabbitmq.trace",
        "x",
        b"y",
        BasicProperties::default(),
    )
    .await;
    let (code, reason) = expect_amqp(amqp::passive(&ch3, "work").await);
    assert_eq!(code, 403);
    assert_eq!(
        reason,
        "ACCESS_REFUSED - cannot publish to internal exchange 'amq.rabbitmq.trace' in vhost '/'"
    );

    // Off: the publish of "untraced" is not traced; the next trace is of "traced".
    set_tracing(&broker, false).await;
    publish(&ch, "", "other", b"untraced", BasicProperties::default()).await;
    set_tracing(&broker, true).await;
    publish(&ch, "", "other", b"traced", BasicProperties::default()).await;
    let t = amqp::next(&mut traces).await;
    assert_eq!(amqp::body(&t), "traced");
    // Deliveries from the trace queue were never traced either: each `next` above got
    // the trace it expected, never a `deliver.firehose`.
    set_tracing(&broker, false).await;
    drop(conn);
    broker.shutdown().await;
}
