//! Permissions enforced on every method where RabbitMQ enforces them, with its answers:
//! declare and delete need configure, publish needs write on the exchange (the default
//! one is `amq.default`), consume, get and purge need read on the queue, a queue bind
//! needs write on the queue then read on the exchange, an exchange bind write on the
//! destination then read on the source; passive declares need nothing; permission is
//! checked before existence. A refusal closes the channel only. The management API
//! checks the same permissions for the endpoints that stand for these methods.

mod common;

use common::http::send_json;
use common::raw::Client;
use minimq_broker::Broker;
use minimq_protocol::*;

async fn start() -> Broker {
    let broker = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .http(Some("127.0.0.1:0".parse().unwrap()))
        .start()
        .await
        .expect("broker starts");
    // Objects the limited user will use, made by guest.
    let mut admin = Client::open_channel1(broker.local_addr()).await;
    for q in ["r-q", "c-q", "w-q", "other"] {
        admin.send(1, common::raw::declare(q)).await;
        assert!(matches!(admin.method(1).await, Method::QueueDeclareOk(_)));
    }
    for x in ["r-x", "w-x", "c-x"] {
        admin
            .send(
                1,
                ExchangeDeclare {
                    exchange: x.into(),
                    type_: "fanout".into(),
                    ..Default::default()
                }
                .into(),
            )
            .await;
        assert!(matches!(
            admin.method(1).await,
            Method::ExchangeDeclareOk(_)
        ));
    }
    drop(admin);
    let r = send_json(
        &broker,
        "PUT",
        "/api/users/limited",
        r#"{"password":"pw","tags":""}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let r = send_json(
        &broker,
        "PUT",
        "/api/permissions/%2F/limited",
        r#"{"configure":"^c-","write":"^w-","read":"^r-"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    broker
}

/// The limited user, logged in, with channel 1 open.
async fn limited(broker: &Broker) -> Client {
    let (mut c, answer) = Client::open_as(broker.local_addr(), "limited", "pw").await;
    assert!(matches!(answer, Method::ConnectionOpenOk(_)), "{answer:?}");
    c.open_channel(1).await;
    c
}

/// Sends `m` on channel 1 and expects it refused for `kind` `name`, then reopens the
/// channel.
async fn refused(c: &mut Client, m: Method, kind: &str, name: &str) {
    let (class_id, method_id) = (m.class_id(), m.method_id());
    c.send(1, m).await;
    c.expect_channel_close(
        1,
        403,
        &format!(
            "ACCESS_REFUSED - access to {kind} '{name}' in vhost '/' refused for user 'limited'"
        ),
        class_id,
        method_id,
    )
    .await;
    c.open_channel(1).await;
}

fn queue_declare(name: &str, passive: bool) -> Method {
    QueueDeclare {
        queue: name.into(),
        passive,
        ..Default::default()
    }
    .into()
}

#[tokio::test]
async fn every_method_needs_the_permission_rabbitmq_asks_for() {
    let broker = start().await;
    let mut c = limited(&broker).await;
    // configure: declare and delete.
    refused(&mut c, queue_declare("r-new", false), "queue", "r-new").await;
    c.send(1, queue_declare("c-new", false)).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    // Passive declares need nothing.
    c.send(1, queue_declare("other", true)).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    // Permission before existence: deleting a missing queue it may not configure is 403.
    refused(
        &mut c,
        QueueDelete {
            queue: "missing".into(),
            ..Default::default()
        }
        .into(),
        "queue",
        "missing",
    )
    .await;
    refused(
        &mut c,
        ExchangeDeclare {
            exchange: "w-new".into(),
            type_: "direct".into(),
            ..Default::default()
        }
        .into(),
        "exchange",
        "w-new",
    )
    .await;
    refused(
        &mut c,
        ExchangeDelete {
            exchange: "r-x".into(),
            ..Default::default()
        }
        .into(),
        "exchange",
        "r-x",
    )
    .await;
    // write: publishing, to the default exchange (amq.default) or a named one.
    c.publish("r-q", b"x").await;
    c.expect_channel_close(
        1,
        403,
        "ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'limited'",
        60,
        40,
    )
    .await;
    c.open_channel(1).await;
    // read: consume, get, purge.
    for m in [
        Method::from(BasicConsume {
            queue: "c-q".into(),
            ..Default::default()
        }),
        BasicGet {
            queue: "c-q".into(),
            no_ack: true,
        }
        .into(),
        QueuePurge {
            queue: "c-q".into(),
            ..Default::default()
        }
        .into(),
    ] {
        refused(&mut c, m, "queue", "c-q").await;
    }
    c.send(
        1,
        BasicGet {
            queue: "r-q".into(),
            no_ack: true,
        }
        .into(),
    )
    .await;
    assert!(matches!(c.method(1).await, Method::BasicGetEmpty(_)));
    // queue.bind: write on the queue first, then read on the exchange.
    let bind = |q: &str, x: &str| -> Method {
        QueueBind {
            queue: q.into(),
            exchange: x.into(),
            ..Default::default()
        }
        .into()
    };
    refused(&mut c, bind("r-q", "r-x"), "queue", "r-q").await;
    refused(&mut c, bind("w-q", "w-x"), "exchange", "w-x").await;
    c.send(1, bind("w-q", "r-x")).await;
    assert!(matches!(c.method(1).await, Method::QueueBindOk(_)));
    // exchange.bind: write on the destination, then read on the source.
    let xbind = |dest: &str, src: &str| -> Method {
        ExchangeBind {
            destination: dest.into(),
            source: src.into(),
            ..Default::default()
        }
        .into()
    };
    refused(&mut c, xbind("r-x", "r-x"), "exchange", "r-x").await;
    refused(&mut c, xbind("w-x", "c-x"), "exchange", "c-x").await;
    c.send(1, xbind("w-x", "r-x")).await;
    assert!(matches!(c.method(1).await, Method::ExchangeBindOk(_)));
    // Publishing where it may write works; the connection stayed up throughout.
    c.send(
        1,
        BasicPublish {
            exchange: "w-x".into(),
            ..Default::default()
        }
        .into(),
    )
    .await;
    c.send_frame(common::raw::header(1)).await;
    c.send_frame(Frame::Body(1, bytes::Bytes::from_static(b"y")))
        .await;
    c.send(1, queue_declare("other", true)).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    drop(c);
    broker.shutdown().await;
}

/// The management API checks what the AMQP method it stands for checks, for a
/// management user with the same permissions, and answers as RabbitMQ 3.10 does: a
/// declare, delete, bind or purge refused is `401 Access refused.`, a publish `400` with
/// the channel's 403, a get `401` with it.
#[tokio::test]
async fn the_management_api_needs_the_same_permissions() {
    use common::http::{send_json_as, Resp};
    let broker = start().await;
    let r = send_json(
        &broker,
        "PUT",
        "/api/users/limited",
        r#"{"password":"pw","tags":"management"}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let auth = "bGltaXRlZDpwdw=="; // base64("limited:pw")
    let send = |method: &'static str, path: &'static str, body: &'static str| {
        let broker = &broker;
        async move { send_json_as(broker, auth, method, path, body).await }
    };
    let access_refused = |r: Resp| {
        assert_eq!(r.status, 401, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.json()["reason"], "Access refused.");
    };
    // configure: declare and delete.
    access_refused(send("PUT", "/api/queues/%2F/r-new", "{}").await);
    assert_eq!(send("PUT", "/api/queues/%2F/c-new", "{}").await.status, 201);
    access_refused(send("DELETE", "/api/queues/%2F/r-q", "").await);
    assert_eq!(
        send("DELETE", "/api/queues/%2F/c-new", "").await.status,
        204
    );
    access_refused(send("PUT", "/api/exchanges/%2F/w-new", r#"{"type":"direct"}"#).await);
    access_refused(send("DELETE", "/api/exchanges/%2F/r-x", "").await);
    // bind: write on the destination, read on the source.
    access_refused(send("POST", "/api/bindings/%2F/e/r-x/q/r-q", "{}").await);
    access_refused(send("POST", "/api/bindings/%2F/e/w-x/q/w-q", "{}").await);
    assert_eq!(
        send("POST", "/api/bindings/%2F/e/r-x/q/w-q", "{}")
            .await
            .status,
        201
    );
    access_refused(send("POST", "/api/bindings/%2F/e/c-x/e/w-x", "{}").await);
    assert_eq!(
        send("POST", "/api/bindings/%2F/e/r-x/e/w-x", "{}")
            .await
            .status,
        201
    );
    // purge: read.
    access_refused(send("DELETE", "/api/queues/%2F/c-q/contents", "").await);
    assert_eq!(
        send("DELETE", "/api/queues/%2F/r-q/contents", "")
            .await
            .status,
        204
    );
    // publish: write on the exchange, refused as the channel refuses it.
    let r = send(
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        r#"{"routing_key":"r-q","payload":"x","payload_encoding":"string","properties":{}}"#,
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["reason"],
        "403 ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user 'limited'"
    );
    let r = send(
        "POST",
        "/api/exchanges/%2F/w-x/publish",
        r#"{"routing_key":"","payload":"x","payload_encoding":"string","properties":{}}"#,
    )
    .await;
    assert_eq!(r.json(), serde_json::json!({"routed": false}));
    // get: read on the queue.
    let get = r#"{"count":1,"ackmode":"ack_requeue_false","encoding":"auto"}"#;
    let r = send("POST", "/api/queues/%2F/w-q/get", get).await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.json()["reason"],
        "ACCESS_REFUSED - access to queue 'w-q' in vhost '/' refused for user 'limited'"
    );
    assert_eq!(
        send("POST", "/api/queues/%2F/r-q/get", get).await.json(),
        serde_json::json!([])
    );
    // Nothing refused was made or removed.
    let queues = common::http::get(&broker, "/api/queues/%2F").await;
    let names: Vec<&str> = queues
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c-q", "other", "r-q", "w-q"]);
    broker.shutdown().await;
}
