//! The management API's changes to a vhost over real TCP, checked against RabbitMQ
//! 3.10's answers: exchanges and queues declared (PUT) and deleted, bindings made,
//! listed and removed, messages published and got. What the API makes is used over AMQP
//! and the reverse, and a durable object made over HTTP outlives a restart.

mod common;

use common::amqp::{bind, confirm_mode, declare, declare_exchange, get, publish};
use common::http::{get as http_get, send_json, Resp};
use common::{connect, fresh_data_dir, start_with_api_in, within};
use lapin::options::{BasicAckOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::ExchangeKind;
use minimq_broker::Broker;
use serde_json::{json, Value};

async fn start() -> Broker {
    start_with_api_in(&fresh_data_dir("admin_objects")).await
}

async fn put(broker: &Broker, path: &str, body: &str) -> Resp {
    send_json(broker, "PUT", path, body).await
}

async fn post(broker: &Broker, path: &str, body: &str) -> Resp {
    send_json(broker, "POST", path, body).await
}

async fn delete(broker: &Broker, path: &str) -> Resp {
    send_json(broker, "DELETE", path, "").await
}

/// `status` and RabbitMQ's `{"error", "reason"}` body.
fn refused(r: &Resp, status: u16, error: &str, reason: Value) {
    assert_eq!(r.status, status, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json(), json!({"error": error, "reason": reason}));
}

fn bad_request(r: &Resp, reason: &str) {
    refused(r, 400, "bad_request", json!(reason));
}

fn access_refused(r: &Resp) {
    refused(r, 401, "not_authorised", json!("Access refused."));
}

#[tokio::test]
async fn an_exchange_declared_over_http_routes_amqp_publishes() {
    let broker = start().await;
    let r = put(
        &broker,
        "/api/exchanges/%2F/orders",
        r#"{"type":"topic","durable":true}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    // Declared again the same: 204; differently: RabbitMQ's inequivalent arg.
    let r = put(
        &broker,
        "/api/exchanges/%2F/orders",
        r#"{"type":"topic","durable":true}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let r = put(
        &broker,
        "/api/exchanges/%2F/orders",
        r#"{"type":"fanout","durable":true}"#,
    )
    .await;
    bad_request(
        &r,
        "inequivalent arg 'type' for exchange 'orders' in vhost '/': received 'fanout' but current is 'topic'",
    );
    let x = http_get(&broker, "/api/exchanges/%2F/orders").await;
    assert_eq!(
        (x["type"].as_str(), x["durable"].as_bool()),
        (Some("topic"), Some(true))
    );

    let conn = connect(&broker).await;
    let ch = common::amqp::open(&conn).await;
    declare(&ch, "eu").await;
    let r = post(
        &broker,
        "/api/bindings/%2F/e/orders/q/eu",
        r#"{"routing_key":"eu.*","arguments":{}}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    // RabbitMQ encodes the properties key once more there.
    assert_eq!(r.header("location"), Some("eu/eu.%252A"));
    let listed = http_get(&broker, "/api/bindings/%2F/e/orders/q/eu").await;
    assert_eq!(
        listed,
        json!([{"source": "orders", "vhost": "/", "destination": "eu", "destination_type": "queue",
                "routing_key": "eu.*", "arguments": {}, "properties_key": "eu.%2A"}])
    );
    confirm_mode(&ch).await;
    publish(&ch, "orders", "eu.paris", b"1").await;
    let m = get(&ch, "eu")
        .await
        .expect("routed by the binding made over HTTP");
    assert_eq!(m.delivery.data, b"1");
    within(m.delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");

    // The binding by its properties_key, then removed.
    // Named by the key or the key encoded, as RabbitMQ takes either.
    for props in ["eu.%2A", "eu.%252A"] {
        let one = http_get(&broker, &format!("/api/bindings/%2F/e/orders/q/eu/{props}")).await;
        assert_eq!(one["routing_key"], "eu.*");
    }
    assert_eq!(
        delete(&broker, "/api/bindings/%2F/e/orders/q/eu/eu.%2A")
            .await
            .status,
        204
    );
    let r = delete(&broker, "/api/bindings/%2F/e/orders/q/eu/eu.%2A").await;
    refused(&r, 404, "Object Not Found", json!("Not Found"));
    publish(&ch, "orders", "eu.paris", b"2").await;
    assert!(get(&ch, "eu").await.is_none(), "unbound over HTTP");
    drop(conn);
    broker.shutdown().await;
}

#[tokio::test]
async fn objects_declared_over_amqp_are_managed_over_http() {
    let broker = start().await;
    let conn = connect(&broker).await;
    let ch = common::amqp::open(&conn).await;
    declare_exchange(&ch, "logs", ExchangeKind::Fanout).await;
    declare(&ch, "audit").await;
    bind(&ch, "audit", "logs", "", FieldTable::default()).await;

    // The queue's bindings: the default exchange's first; the exchange's from its side.
    let q = http_get(&broker, "/api/queues/%2F/audit/bindings").await;
    let sources: Vec<&str> = q
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["", "logs"]);
    assert_eq!(q[1]["properties_key"], "~");
    let out = http_get(&broker, "/api/exchanges/%2F/logs/bindings/source").await;
    assert_eq!(out.as_array().map(Vec::len), Some(1));
    let into = http_get(&broker, "/api/exchanges/%2F/logs/bindings/destination").await;
    assert_eq!(into, json!([]));

    // A declare over HTTP meets the AMQP one's equivalence rule.
    let r = put(&broker, "/api/queues/%2F/audit", r#"{"durable":true}"#).await;
    bad_request(
        &r,
        "inequivalent arg 'durable' for queue 'audit' in vhost '/': received 'true' but current is 'false'",
    );
    assert_eq!(
        put(&broker, "/api/queues/%2F/audit", "{}").await.status,
        204
    );

    // In use: if-unused refuses with the AMQP text; then deleted, and gone for AMQP.
    let r = delete(&broker, "/api/exchanges/%2F/logs?if-unused=true").await;
    bad_request(&r, "exchange 'logs' in vhost '/' in use");
    assert_eq!(delete(&broker, "/api/exchanges/%2F/logs").await.status, 204);
    let err = within(ch.exchange_declare(
        "logs",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .expect_err("deleted over HTTP");
    assert_eq!(common::amqp::amqp(&err).0, 404);
    drop(conn);
    broker.shutdown().await;
}

#[tokio::test]
async fn refusals_are_rabbitmqs() {
    let broker = start().await;
    // The default exchange and amq.* names: 401 Access refused, as RabbitMQ's channel
    // refusals through its API; an equivalent amq.* declare is fine.
    for path in [
        "/api/exchanges/%2F/amq.default",
        "/api/exchanges/%2F/amq.mine",
    ] {
        access_refused(&put(&broker, path, r#"{"type":"direct"}"#).await);
    }
    let r = put(
        &broker,
        "/api/exchanges/%2F/amq.direct",
        r#"{"type":"direct","durable":true}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    access_refused(&delete(&broker, "/api/exchanges/%2F/amq.direct").await);
    access_refused(&delete(&broker, "/api/exchanges/%2F/amq.default").await);
    access_refused(&put(&broker, "/api/queues/%2F/amq.q", "{}").await);
    // Bodies.
    bad_request(
        &put(&broker, "/api/exchanges/%2F/x", r#"{"type":"bogus"}"#).await,
        "unknown exchange type 'bogus'",
    );
    bad_request(
        &put(&broker, "/api/exchanges/%2F/x", "nope").await,
        "not_json",
    );
    refused(
        &put(&broker, "/api/exchanges/%2F/x", r#"{"durable":"maybe"}"#).await,
        400,
        "bad_request",
        json!(["not_boolean", "maybe"]),
    );
    bad_request(
        &put(
            &broker,
            "/api/queues/%2F/q",
            r#"{"arguments":{"x-queue-type":"quorum"}}"#,
        )
        .await,
        "invalid property 'non-durable' for queue 'q' in vhost '/'",
    );
    // What is missing.
    let r = put(&broker, "/api/exchanges/nowhere/x", "{}").await;
    refused(&r, 404, "not_found", json!("vhost_not_found"));
    let r = delete(&broker, "/api/exchanges/%2F/missing").await;
    refused(&r, 404, "Object Not Found", json!("Not Found"));
    let r = post(&broker, "/api/bindings/%2F/e/missing/q/q", "{}").await;
    refused(
        &r,
        404,
        "not_found",
        json!("no exchange 'missing' in vhost '/'"),
    );
    let r = post(&broker, "/api/bindings/%2F/e/amq.direct/q/missing", "{}").await;
    refused(
        &r,
        404,
        "not_found",
        json!("no queue 'missing' in vhost '/'"),
    );
    // Nothing above made anything.
    let x = http_get(&broker, "/api/exchanges/%2F").await;
    assert!(x
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["name"] != "x" && e["name"] != "amq.mine"));
    assert_eq!(http_get(&broker, "/api/queues/%2F").await, json!([]));
    broker.shutdown().await;
}

#[tokio::test]
async fn publish_and_get_over_http() {
    let broker = start().await;
    assert_eq!(
        put(&broker, "/api/queues/%2F/inbox", r#"{"durable":true}"#)
            .await
            .status,
        201
    );
    let r = post(
        &broker,
        "/api/exchanges/%2F/amq.default/publish",
        r#"{"routing_key":"inbox","payload":"hello","payload_encoding":"string",
            "properties":{"content_type":"text/plain","delivery_mode":2,"headers":{"n":1}}}"#,
    )
    .await;
    assert_eq!((r.status, r.json()), (200, json!({"routed": true})));
    let r = post(
        &broker,
        "/api/exchanges/%2F/amq.default/publish",
        r#"{"routing_key":"inbox","payload":"AAH/","payload_encoding":"base64","properties":{}}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"routed": true}));
    let r = post(
        &broker,
        "/api/exchanges/%2F/amq.default/publish",
        r#"{"routing_key":"nobody","payload":"x","payload_encoding":"string","properties":{}}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"routed": false}));
    bad_request(
        &post(
            &broker,
            "/api/exchanges/%2F/missing/publish",
            r#"{"routing_key":"","payload":"x","payload_encoding":"string","properties":{}}"#,
        )
        .await,
        "404 NOT_FOUND - no exchange 'missing' in vhost '/'",
    );
    bad_request(
        &post(
            &broker,
            "/api/exchanges/%2F/amq.default/publish",
            r#"{"payload":"x"}"#,
        )
        .await,
        "[{key_missing,routing_key},\n {key_missing,properties},\n {key_missing,payload_encoding}]",
    );

    // Taken and requeued: both, the binary one base64.
    let take = |mode: &'static str, extra: &'static str| {
        let body = format!(r#"{{"count":5,"ackmode":"{mode}","encoding":"auto"{extra}}}"#);
        let broker = &broker;
        async move { post(broker, "/api/queues/%2F/inbox/get", &body).await }
    };
    let r = take("ack_requeue_true", "").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!([
            {"payload_bytes": 5, "redelivered": false, "exchange": "", "routing_key": "inbox", "message_count": 1,
             "properties": {"content_type": "text/plain", "delivery_mode": 2, "headers": {"n": 1}},
             "payload": "hello", "payload_encoding": "string"},
            {"payload_bytes": 3, "redelivered": false, "exchange": "", "routing_key": "inbox", "message_count": 0,
             "properties": [], "payload": "AAH/", "payload_encoding": "base64"}
        ])
    );
    // Requeued, so redelivered now; truncated, base64 asked for.
    let r = post(
        &broker,
        "/api/queues/%2F/inbox/get",
        r#"{"count":1,"ackmode":"ack_requeue_true","encoding":"base64","truncate":3}"#,
    )
    .await;
    let got = &r.json()[0];
    assert_eq!(
        (got["redelivered"].as_bool(), got["payload"].as_str()),
        (Some(true), Some("aGVs"))
    );
    assert_eq!(got["payload_bytes"], 5);
    bad_request(
        &post(
            &broker,
            "/api/queues/%2F/inbox/get",
            r#"{"count":1,"ackmode":"ack_requeue_false","encoding":"hex"}"#,
        )
        .await,
        "Unsupported encoding. Please use auto or base64.",
    );
    let r = post(
        &broker,
        "/api/queues/%2F/missing/get",
        r#"{"count":1,"ackmode":"ack_requeue_false","encoding":"auto"}"#,
    )
    .await;
    refused(
        &r,
        404,
        "not_found",
        json!("NOT_FOUND - no queue 'missing' in vhost '/'"),
    );

    // The messages published over HTTP are there for AMQP, properties and all.
    let conn = connect(&broker).await;
    let ch = common::amqp::open(&conn).await;
    let m = get(&ch, "inbox").await.expect("first message");
    assert_eq!(m.delivery.data, b"hello");
    assert_eq!(
        m.delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("text/plain")
    );
    within(m.delivery.ack(BasicAckOptions::default()))
        .await
        .expect("ack");
    // Taken for good over HTTP: the queue is empty for both.
    let r = take("ack_requeue_false", "").await;
    assert_eq!(r.json().as_array().map(Vec::len), Some(1));
    assert_eq!(take("reject_requeue_false", "").await.json(), json!([]));
    assert!(get(&ch, "inbox").await.is_none());
    drop(conn);
    broker.shutdown().await;
}

#[tokio::test]
async fn durable_objects_made_over_http_survive_a_restart() {
    let dir = fresh_data_dir("admin_objects");
    let broker = start_with_api_in(&dir).await;
    assert_eq!(
        put(
            &broker,
            "/api/exchanges/%2F/kept",
            r#"{"type":"direct","durable":true}"#
        )
        .await
        .status,
        201
    );
    assert_eq!(
        put(&broker, "/api/exchanges/%2F/lost", r#"{"type":"direct"}"#)
            .await
            .status,
        201
    );
    assert_eq!(
        put(
            &broker,
            "/api/queues/%2F/kept-q",
            r#"{"durable":true,"arguments":{"x-queue-type":"quorum"}}"#
        )
        .await
        .status,
        201
    );
    assert_eq!(
        post(
            &broker,
            "/api/bindings/%2F/e/kept/q/kept-q",
            r#"{"routing_key":"k"}"#
        )
        .await
        .status,
        201
    );
    let r = post(
        &broker,
        "/api/exchanges/%2F/kept/publish",
        r#"{"routing_key":"k","payload":"still here","payload_encoding":"string","properties":{"delivery_mode":2}}"#,
    )
    .await;
    assert_eq!(r.json(), json!({"routed": true}));
    broker.shutdown().await;

    let broker = start_with_api_in(&dir).await;
    let x = http_get(&broker, "/api/exchanges/%2F/kept").await;
    assert_eq!(x["durable"], true);
    let r = send_json(&broker, "GET", "/api/exchanges/%2F/lost", "").await;
    assert_eq!(r.status, 404);
    let q = http_get(&broker, "/api/queues/%2F/kept-q").await;
    assert_eq!(q["type"], "quorum");
    let b = http_get(&broker, "/api/bindings/%2F/e/kept/q/kept-q").await;
    assert_eq!(b[0]["routing_key"], "k");
    let r = post(
        &broker,
        "/api/queues/%2F/kept-q/get",
        r#"{"count":1,"ackmode":"ack_requeue_false","encoding":"auto"}"#,
    )
    .await;
    assert_eq!(r.json()[0]["payload"], "still here");
    broker.shutdown().await;
}

#[tokio::test]
async fn aliveness_and_node_health() {
    let broker = start().await;
    assert_eq!(
        http_get(&broker, "/api/aliveness-test/%2F").await,
        json!({"status": "ok"})
    );
    // RabbitMQ leaves its queue behind, empty.
    let q = http_get(&broker, "/api/queues/%2F/aliveness-test").await;
    assert_eq!(q["messages"], 0);
    let r = send_json(&broker, "GET", "/api/aliveness-test/nowhere", "").await;
    assert_eq!(r.status, 404);
    assert_eq!(
        http_get(&broker, "/api/healthchecks/node").await,
        json!({"status": "ok"})
    );
    let overview = http_get(&broker, "/api/overview").await;
    let node = overview["contexts"][0]["node"]
        .as_str()
        .expect("the API's context names the node");
    let path = format!("/api/healthchecks/node/{node}");
    assert_eq!(http_get(&broker, &path).await, json!({"status": "ok"}));
    assert_eq!(
        send_json(&broker, "GET", "/api/healthchecks/node/other@host", "")
            .await
            .status,
        404
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn a_publish_over_http_meets_the_message_size_limit() {
    let broker = common::start_broker_with(minimq_broker::Config {
        max_message_size: 4,
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    })
    .await;
    assert_eq!(
        put(&broker, "/api/queues/%2F/small", "{}").await.status,
        201
    );
    let publish = |payload: &'static str| {
        let body = format!(
            r#"{{"routing_key":"small","payload":"{payload}","payload_encoding":"string","properties":{{}}}}"#
        );
        let broker = &broker;
        async move { post(broker, "/api/exchanges/%2F/amq.default/publish", &body).await }
    };
    assert_eq!(publish("four").await.json(), json!({"routed": true}));
    bad_request(
        &publish("five!").await,
        "406 PRECONDITION_FAILED - message size 5 is larger than configured max size 4",
    );
    broker.shutdown().await;
}
