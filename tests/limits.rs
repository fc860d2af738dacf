//! Vhost limits end to end: `/api/vhost-limits` (RabbitMQ's answers and validation
//! texts), `max-connections` refusing `connection.open` with `530` and `max-queues`
//! refusing a new queue with `406` (channel only; redeclares still work), limits kept
//! across a restart.

mod common;

use common::http::{get, request, send_json, GUEST};
use common::raw::{declare, Client};
use minimq_broker::Broker;
use minimq_protocol::Method;
use serde_json::json;

fn data_dir() -> std::path::PathBuf {
    common::fresh_data_dir("limits")
}

async fn start(dir: &std::path::Path) -> Broker {
    common::start_with_api_in(dir).await
}

#[tokio::test]
async fn the_limits_api_answers_as_rabbitmq() {
    let dir = data_dir();
    let broker = start(&dir).await;
    assert_eq!(get(&broker, "/api/vhost-limits").await, json!([]));
    for (path, body) in [
        ("/api/vhost-limits/%2F/max-connections", r#"{"value":2}"#),
        ("/api/vhost-limits/%2F/max-connections", r#"{"value":3}"#),
        ("/api/vhost-limits/%2F/max-queues", r#"{"value":100}"#),
    ] {
        assert_eq!(
            send_json(&broker, "PUT", path, body).await.status,
            204,
            "{path}"
        );
    }
    let want = json!([{"vhost": "/", "value": {"max-queues": 100, "max-connections": 3}}]);
    assert_eq!(get(&broker, "/api/vhost-limits").await, want);
    assert_eq!(get(&broker, "/api/vhost-limits/%2F").await, want);
    for (path, body, reason) in [
        (
            "/api/vhost-limits/%2F/max-foo",
            r#"{"value":2}"#,
            "Validation failed\n\nUnrecognised terms [{<<\"max-foo\">>,2}] in limits\n",
        ),
        (
            "/api/vhost-limits/%2F/max-queues",
            r#"{"value":"x"}"#,
            "Validation failed\n\nmax-queues should be a number, actually was <<\"x\">>\n",
        ),
        (
            "/api/vhost-limits/%2F/max-queues",
            r#"{"x":1}"#,
            "[{key_missing,value}]",
        ),
    ] {
        let r = send_json(&broker, "PUT", path, body).await;
        assert_eq!(r.status, 400, "{path} {body}");
        assert_eq!(r.json()["reason"], reason);
    }
    // A negative value lifts the limit.
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhost-limits/%2F/max-queues",
        r#"{"value":-1}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        get(&broker, "/api/vhost-limits").await,
        json!([{"vhost": "/", "value": {"max-connections": 3}}])
    );
    for _ in 0..2 {
        let r = request(
            &broker,
            "DELETE",
            "/api/vhost-limits/%2F/max-connections",
            Some(GUEST),
        )
        .await;
        assert_eq!(r.status, 204);
    }
    assert_eq!(get(&broker, "/api/vhost-limits").await, json!([]));
    assert_eq!(
        request(&broker, "GET", "/api/vhost-limits/nov", Some(GUEST))
            .await
            .status,
        404
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Logs in as guest and sends `connection.open` of `/`; answers the client and the reply.
async fn try_open(broker: &Broker) -> (Client, Method) {
    Client::open_as(broker.local_addr(), "guest", "guest").await
}

#[tokio::test]
async fn max_connections_refuses_the_extra_connection_with_rabbitmqs_530() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhost-limits/%2F/max-connections",
        r#"{"value":2}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let (a, reply) = try_open(&broker).await;
    assert!(matches!(reply, Method::ConnectionOpenOk(_)), "{reply:?}");
    let (b, reply) = try_open(&broker).await;
    assert!(matches!(reply, Method::ConnectionOpenOk(_)), "{reply:?}");
    let (mut c, reply) = try_open(&broker).await;
    match reply {
        Method::ConnectionClose(close) => assert_eq!(
            (close.reply_code, close.reply_text.as_str(), close.class_id, close.method_id),
            (
                530,
                "NOT_ALLOWED - access to vhost '/' refused for user 'guest': connection limit (2) is reached",
                10,
                40
            )
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
    c.send(0, minimq_protocol::ConnectionCloseOk.into()).await;
    c.expect_eof().await;
    // Lifted: a third connection opens.
    let r = request(
        &broker,
        "DELETE",
        "/api/vhost-limits/%2F/max-connections",
        Some(GUEST),
    )
    .await;
    assert_eq!(r.status, 204);
    let (d, reply) = try_open(&broker).await;
    assert!(matches!(reply, Method::ConnectionOpenOk(_)), "{reply:?}");
    // Gone before the shutdown, which would otherwise wait for them to answer its close.
    drop((a, b, d));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn max_queues_refuses_a_new_queue_on_the_channel_but_redeclares_work_and_it_survives_a_restart(
) {
    let dir = data_dir();
    let broker = start(&dir).await;
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhost-limits/%2F/max-queues",
        r#"{"value":2}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let mut c = Client::open_channel1(broker.local_addr()).await;
    for q in ["q1", "q2", "q1"] {
        c.send(1, declare(q)).await;
        let ok = c.method(1).await;
        assert!(matches!(ok, Method::QueueDeclareOk(_)), "{q}: {ok:?}");
    }
    c.send(1, declare("q3")).await;
    c.expect_channel_close(
        1,
        406,
        "PRECONDITION_FAILED - cannot declare queue 'q3': queue limit in vhost '/' (2) is reached",
        50,
        10,
    )
    .await;
    // The connection stays up: another channel redeclares an existing queue.
    c.open_channel(2).await;
    c.send(2, declare("q2")).await;
    assert!(matches!(c.method(2).await, Method::QueueDeclareOk(_)));
    drop(c);
    broker.shutdown().await;

    let broker = start(&dir).await;
    assert_eq!(
        get(&broker, "/api/vhost-limits").await,
        json!([{"vhost": "/", "value": {"max-queues": 2}}])
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_node_wide_socket_limit_closes_extra_sockets_at_once_and_frees_slots() {
    let broker = Broker::builder()
        .config(minimq_broker::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: Some("127.0.0.1:0".parse().unwrap()),
            max_connections: Some(2),
            ..Default::default()
        })
        .start()
        .await
        .expect("broker starts");
    let a = Client::open(broker.local_addr()).await;
    let b = Client::connect(broker.local_addr()).await; // not logged in: counts too
    let node = get(&broker, "/api/nodes").await;
    assert_eq!(node[0]["sockets_used"], 2);
    assert_eq!(node[0]["sockets_total"], 2);
    // The third is closed without a word (no connection.start).
    let mut c = tokio::net::TcpStream::connect(broker.local_addr())
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let read = common::within(tokio::io::AsyncReadExt::read(&mut c, &mut buf)).await;
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "expected the socket closed, got {read:?}"
    );
    drop(a);
    // Once the broker has seen the first close, a new client is served.
    common::within(async {
        loop {
            if get(&broker, "/api/nodes").await[0]["sockets_used"] == 1 {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let d = Client::open(broker.local_addr()).await;
    drop((b, d));
    broker.shutdown().await;
}
