//! Virtual hosts other than `/`, over real sockets: `connection.open` refusals with
//! RabbitMQ 3.10's texts, isolation of two vhosts' queues, exchanges and errors, what
//! survives a restart and a crash, the management API's `/api/vhosts` (201/204/404, the
//! grant to the creator, who is shown what), deletion (answered first, then its
//! connections closed with 320; its objects and stored messages gone for good), and a
//! vhost's default queue type.

mod common;

use std::io::Read;
use std::path::Path;

use common::amqp::{self, expect_amqp};
use common::http::{get, request, send_json, GUEST};
use common::raw::Client;
use common::{data_dir, within};
use lapin::options::{BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties, ExchangeKind};
use minimq_broker::{Broker, Config};
use minimq_protocol::Method;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A broker with the management API, keeping its data in `dir` when given.
async fn start(dir: Option<&Path>) -> Broker {
    common::start_broker_with(Config {
        data_dir: dir.map(Path::to_path_buf),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .await
}

/// Creates vhost `name` through the API as guest; answers the status.
async fn add_vhost(broker: &Broker, name: &str) -> u16 {
    send_json(broker, "PUT", &format!("/api/vhosts/{name}"), "")
        .await
        .status
}

/// A lapin connection of guest to vhost `vhost` (URL-encoded).
async fn connect_to(broker: &Broker, vhost: &str) -> Connection {
    let url = format!("amqp://guest:guest@{}/{vhost}", broker.local_addr());
    within(Connection::connect(&url, ConnectionProperties::default()))
        .await
        .expect("connect to the vhost")
}

async fn put_user(broker: &Broker, name: &str, tags: &str) {
    let r = send_json(
        broker,
        "PUT",
        &format!("/api/users/{name}"),
        &format!(r#"{{"password":"pw","tags":"{tags}"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
}

/// Gives `user` the permission `configure` (write and read `.*`) on `vhost` (URL-encoded).
async fn grant(broker: &Broker, vhost: &str, user: &str, configure: &str) {
    let r = send_json(
        broker,
        "PUT",
        &format!("/api/permissions/{vhost}/{user}"),
        &format!(r#"{{"configure":"{configure}","write":".*","read":".*"}}"#),
    )
    .await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
}

#[tokio::test]
async fn connection_open_to_a_missing_vhost_is_530_vhost_not_found() {
    let broker = start(None).await;
    let (mut c, answer) =
        Client::open_vhost_as(broker.local_addr(), "guest", "guest", "v-missing").await;
    match answer {
        Method::ConnectionClose(close) => assert_eq!(
            (
                close.reply_code,
                close.reply_text.as_str(),
                close.class_id,
                close.method_id
            ),
            (530, "NOT_ALLOWED - vhost v-missing not found", 10, 40)
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
    c.send(0, minimq_protocol::ConnectionCloseOk.into()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn connection_open_without_a_permission_on_the_vhost_is_530_access_refused() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    put_user(&broker, "only-root", "").await;
    grant(&broker, "%2F", "only-root", ".*").await;
    let (c, answer) = Client::open_vhost_as(broker.local_addr(), "only-root", "pw", "v1").await;
    match answer {
        Method::ConnectionClose(close) => assert_eq!(
            (close.reply_code, close.reply_text.as_str()),
            (
                530,
                "NOT_ALLOWED - access to vhost 'v1' refused for user 'only-root'"
            )
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
    drop(c);
    // The same user opens `/`.
    let (c, answer) = Client::open_vhost_as(broker.local_addr(), "only-root", "pw", "/").await;
    assert!(matches!(answer, Method::ConnectionOpenOk(_)), "{answer:?}");
    drop(c);
    broker.shutdown().await;
}

#[tokio::test]
async fn two_vhosts_with_a_queue_of_the_same_name_are_isolated() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    let root = common::connect(&broker).await;
    let other = connect_to(&broker, "v1").await;
    let (rc, oc) = (amqp::open(&root).await, amqp::open(&other).await);
    amqp::declare(&rc, "same").await;
    amqp::declare(&oc, "same").await;
    amqp::confirm_mode(&oc).await;
    amqp::publish(&oc, "", "same", b"in v1").await;
    amqp::publish(&oc, "amq.fanout", "", b"fanned").await;
    assert_eq!(amqp::ready(&oc, "same").await, 1);
    assert_eq!(amqp::ready(&rc, "same").await, 0);
    // An exchange declared in one vhost is not in the other; errors name the vhost.
    within(oc.exchange_declare(
        "only-v1",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let (code, text) = expect_amqp(
        within(rc.exchange_declare(
            "only-v1",
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        ))
        .await,
    );
    assert_eq!(
        (code, text.as_str()),
        (404, "NOT_FOUND - no exchange 'only-v1' in vhost '/'")
    );
    let oc2 = amqp::open(&other).await;
    let (code, text) = expect_amqp(amqp::passive(&oc2, "nope").await);
    assert_eq!(
        (code, text.as_str()),
        (404, "NOT_FOUND - no queue 'nope' in vhost 'v1'")
    );
    // The API lists each vhost's queue under its own name.
    let listed = get(&broker, "/api/queues/v1").await;
    let names: Vec<(&str, &str)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|q| (q["vhost"].as_str().unwrap(), q["name"].as_str().unwrap()))
        .collect();
    assert_eq!(names, vec![("v1", "same")]);
    assert_eq!(
        get(&broker, "/api/queues").await.as_array().unwrap().len(),
        2
    );
    let conns = get(&broker, "/api/connections").await;
    let mut vhosts: Vec<&str> = conns
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["vhost"].as_str().unwrap())
        .collect();
    vhosts.sort();
    assert_eq!(vhosts, vec!["/", "v1"]);
    for (path, n) in [
        ("/api/vhosts/v1/connections", 1),
        ("/api/vhosts/%2F/connections", 1),
        // rc and oc2 were closed by their 404s: listed as `closing` until the client's
        // close-ok, which the client sends on its own time, so the listing is waited for.
        ("/api/vhosts/v1/channels", 1),
        ("/api/vhosts/%2F/channels", 0),
    ] {
        let list = within(async {
            loop {
                let list = get(&broker, path).await;
                if list.as_array().unwrap().len() == n {
                    break list;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), n, "{path}: {list:?}");
        let want = if path.contains("v1") { "v1" } else { "/" };
        assert!(list.iter().all(|c| c["vhost"] == want), "{path}: {list:?}");
    }
    broker.shutdown().await;
}

/// Declares in `v1`: a durable queue `kept` holding one persistent message, a durable
/// exchange bound to it, and a policy.
async fn fill_v1(broker: &Broker) {
    assert_eq!(add_vhost(broker, "v1").await, 201);
    let r = send_json(
        broker,
        "PUT",
        "/api/policies/v1/cap",
        r#"{"pattern":"^kept$","definition":{"max-length":5},"apply-to":"queues"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let conn = connect_to(broker, "v1").await;
    let ch = amqp::open(&conn).await;
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    amqp::declare_with(&ch, "kept", durable, FieldTable::default())
        .await
        .unwrap();
    within(ch.exchange_declare(
        "kept-x",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "kept",
        "kept-x",
        "k",
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    amqp::confirm_mode(&ch).await;
    let confirm = within(ch.basic_publish(
        "kept-x",
        "k",
        BasicPublishOptions::default(),
        b"persisted",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap();
}

/// What [`fill_v1`] made is there: the queue with its message, routed to through the
/// exchange, under the policy.
async fn check_v1(broker: &Broker) {
    let conn = connect_to(broker, "v1").await;
    let ch = amqp::open(&conn).await;
    assert_eq!(amqp::ready(&ch, "kept").await, 1);
    amqp::confirm_mode(&ch).await;
    amqp::publish(&ch, "kept-x", "k", b"routed").await;
    assert_eq!(amqp::drain(&ch, "kept").await, vec!["persisted", "routed"]);
    let q = get(broker, "/api/queues/v1/kept").await;
    assert_eq!(q["policy"], "cap");
    let root = common::connect(broker).await;
    let rc = amqp::open(&root).await;
    assert_eq!(
        expect_amqp(amqp::passive(&rc, "kept").await).0,
        404,
        "v1's queue is not in /"
    );
}

#[tokio::test]
async fn durable_objects_of_a_second_vhost_survive_a_restart_and_a_crash() {
    let dir = data_dir("vhosts-survive");
    let broker = start(Some(&dir)).await;
    fill_v1(&broker).await;
    broker.shutdown().await;

    let broker = start(Some(&dir)).await;
    check_v1(&broker).await;
    // Put the message back for the crash round.
    let conn = connect_to(&broker, "v1").await;
    let ch = amqp::open(&conn).await;
    amqp::confirm_mode(&ch).await;
    let confirm = within(ch.basic_publish(
        "",
        "kept",
        BasicPublishOptions::default(),
        b"persisted",
        BasicProperties::default().with_delivery_mode(2),
    ))
    .await
    .unwrap();
    within(confirm).await.unwrap();
    broker.crash().await;

    let broker = start(Some(&dir)).await;
    let names: Vec<String> = get(&broker, "/api/vhosts")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["/", "v1"]);
    check_v1(&broker).await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn deleting_a_vhost_closes_its_connections_with_320_and_removes_its_objects_for_good() {
    let dir = data_dir("vhosts-delete");
    let broker = start(Some(&dir)).await;
    fill_v1(&broker).await;
    let doomed = connect_to(&broker, "v1").await;
    let mut errors = amqp::connection_errors(&doomed);
    let root = common::connect(&broker).await;
    let r = request(&broker, "DELETE", "/api/vhosts/v1", Some(GUEST)).await;
    assert_eq!(r.status, 204);
    assert_eq!(
        amqp::next_error(&mut errors).await,
        (320, "CONNECTION_FORCED - vhost 'v1' is deleted".to_string())
    );
    assert!(root.status().connected(), "a connection to / stays open");
    let r = request(&broker, "GET", "/api/vhosts/v1", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        serde_json::json!({"error":"Object Not Found","reason":"Not Found"})
    );
    let r = request(&broker, "DELETE", "/api/vhosts/v1", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    let perms = get(&broker, "/api/permissions").await;
    assert!(
        perms.as_array().unwrap().iter().all(|p| p["vhost"] != "v1"),
        "{perms}"
    );
    broker.crash().await;

    // Gone after a crash too; made again, it is empty.
    let broker = start(Some(&dir)).await;
    let (c, answer) = Client::open_vhost_as(broker.local_addr(), "guest", "guest", "v1").await;
    assert!(matches!(answer, Method::ConnectionClose(_)), "{answer:?}");
    drop(c);
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    let conn = connect_to(&broker, "v1").await;
    let ch = amqp::open(&conn).await;
    assert_eq!(expect_amqp(amqp::passive(&ch, "kept").await).0, 404);
    assert!(get(&broker, "/api/policies/v1")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// RabbitMQ answers the `DELETE` first and closes the vhost's connections after, from
/// its `vhost_deleted` event: a client that closes its own channel right after the
/// answer (AMQPStorm's teardown does) is not raced by the server's close.
#[tokio::test]
async fn deleting_a_vhost_answers_the_delete_before_it_closes_the_vhosts_connections() {
    // Durable: the deletion has writes to wait for before its answer.
    let dir = data_dir("vhosts-delete-answer");
    let broker = start(Some(&dir)).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    let (mut c, answer) = Client::open_vhost_as(broker.local_addr(), "guest", "guest", "v1").await;
    assert!(matches!(answer, Method::ConnectionOpenOk(_)), "{answer:?}");
    c.open_channel(1).await;
    c.send(
        1,
        minimq_protocol::QueueDeclare {
            queue: "doomed".into(),
            durable: true,
            ..Default::default()
        }
        .into(),
    )
    .await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    for _ in 0..10 {
        c.publish("doomed", b"m").await;
    }
    assert_eq!(c.ready("doomed").await, 10);

    let mut http = within(TcpStream::connect(broker.http_addr().unwrap()))
        .await
        .expect("connect to HTTP");
    let req = format!(
        "DELETE /api/vhosts/v1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {GUEST}\r\nConnection: close\r\n\r\n"
    );
    within(http.write_all(req.as_bytes()))
        .await
        .expect("send the DELETE");
    c.expect_connection_close(320, "CONNECTION_FORCED - vhost 'v1' is deleted", 0, 0)
        .await;
    // Holding the close, the answer must already be on the other socket: a read that
    // does not wait finds it (tokio's own try_read would also wait for the reactor to
    // have seen the socket readable, so the socket is read as a plain one).
    let http = http.into_std().expect("a std socket");
    http.set_nonblocking(true).expect("non-blocking");
    let mut head = [0u8; 12];
    match (&http).read(&mut head) {
        Ok(n) => assert_eq!(&head[..n], b"HTTP/1.1 204", "the DELETE's answer"),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            panic!("the vhost's connection was closed before the DELETE was answered")
        }
        Err(e) => panic!("reading the answer: {e}"),
    }
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn put_vhost_answers_201_then_204_and_grants_the_creator_everything() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhosts/v1",
        r#"{"description":"second","tags":"a,b"}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let v = get(&broker, "/api/vhosts/v1").await;
    assert_eq!(v["name"], "v1");
    assert_eq!(v["description"], "second");
    assert_eq!(v["tags"], serde_json::json!(["a", "b"]));
    assert_eq!(
        get(&broker, "/api/permissions/v1/guest").await,
        serde_json::json!({"user":"guest","vhost":"v1","configure":".*","write":".*","read":".*"})
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn monitoring_lists_every_vhost_and_management_only_its_own() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    put_user(&broker, "mon", "monitoring").await;
    put_user(&broker, "mgmt", "management").await;
    for user in ["mon", "mgmt"] {
        grant(&broker, "v1", user, ".*").await;
    }
    let root = common::connect(&broker).await;
    amqp::declare(&amqp::open(&root).await, "in-root").await;
    let names = |v: serde_json::Value, key: &str| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x[key].as_str().unwrap().to_string())
            .collect()
    };
    const MON: &str = "bW9uOnB3"; // mon:pw
    const MGMT: &str = "bWdtdDpwdw=="; // mgmt:pw
    let r = request(&broker, "GET", "/api/vhosts", Some(MON)).await;
    assert_eq!(names(r.json(), "name"), vec!["/", "v1"]);
    let r = request(&broker, "GET", "/api/vhosts", Some(MGMT)).await;
    assert_eq!(names(r.json(), "name"), vec!["v1"]);
    for auth in [MON, MGMT] {
        let r = request(&broker, "GET", "/api/queues", Some(auth)).await;
        assert!(names(r.json(), "name").is_empty(), "no queue of / is shown");
        let r = request(&broker, "GET", "/api/queues/%2F", Some(auth)).await;
        assert_eq!(r.status, 401);
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn what_a_deletion_cut_short_by_a_crash_left_behind_is_removed_at_the_next_start() {
    let dir = data_dir("vhosts-cut-short");
    let broker = start(Some(&dir)).await;
    fill_v1(&broker).await;
    // The deletion's first step, its record removed, and then the crash: the queue, its
    // message, the exchange, the policy and the permission are still recorded.
    let store = broker.state().store.clone().unwrap();
    store
        .remove_param(minimq_broker::vhosts::VHOST_COMPONENT, "v1", "v1")
        .await
        .unwrap();
    broker.crash().await;

    let broker = start(Some(&dir)).await;
    let r = request(&broker, "GET", "/api/vhosts/v1", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    let perms = get(&broker, "/api/permissions").await;
    assert!(
        perms.as_array().unwrap().iter().all(|p| p["vhost"] != "v1"),
        "{perms}"
    );
    broker.shutdown().await;
    // Removed for good, not only left out: a v1 made again is empty, after a restart too.
    let broker = start(Some(&dir)).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    broker.shutdown().await;
    let broker = start(Some(&dir)).await;
    let conn = connect_to(&broker, "v1").await;
    let ch = amqp::open(&conn).await;
    assert_eq!(expect_amqp(amqp::passive(&ch, "kept").await).0, 404);
    assert!(get(&broker, "/api/policies/v1")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    let exported = get(&broker, "/api/definitions").await;
    assert!(
        exported["exchanges"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "kept-x"),
        "{exported}"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn exchanges_and_bindings_are_listed_by_vhost() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    let conn = connect_to(&broker, "v1").await;
    let ch = amqp::open(&conn).await;
    amqp::declare(&ch, "q").await;
    amqp::declare_exchange(&ch, "only-v1", ExchangeKind::Topic).await;
    amqp::bind(&ch, "q", "only-v1", "a.b-c_d~e f#*", FieldTable::default()).await;
    let names = |v: serde_json::Value| -> Vec<(String, String)> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["vhost"].as_str().unwrap().to_string(),
                    e["name"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let v1 = names(get(&broker, "/api/exchanges/v1").await);
    assert!(v1.iter().all(|(v, _)| v == "v1"), "{v1:?}");
    let v1: Vec<&str> = v1.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(
        v1,
        vec![
            "",
            "amq.direct",
            "amq.fanout",
            "amq.headers",
            "amq.match",
            "amq.rabbitmq.trace",
            "amq.topic",
            "only-v1"
        ]
    );
    assert!(!names(get(&broker, "/api/exchanges/%2F").await)
        .iter()
        .any(|(_, n)| n == "only-v1"));
    let e = get(&broker, "/api/exchanges/v1/only-v1").await;
    assert_eq!(
        (e["type"].as_str(), e["durable"].as_bool()),
        (Some("topic"), Some(false))
    );
    let r = request(&broker, "GET", "/api/exchanges/%2F/only-v1", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    // RabbitMQ's listing: the default exchange's binding first, properties_key
    // form-encoded as RabbitMQ 3.10 encodes it.
    assert_eq!(
        get(&broker, "/api/bindings/v1").await,
        serde_json::json!([
            {"source": "", "vhost": "v1", "destination": "q", "destination_type": "queue",
             "routing_key": "q", "arguments": {}, "properties_key": "q"},
            {"source": "only-v1", "vhost": "v1", "destination": "q",
             "destination_type": "queue", "routing_key": "a.b-c_d~e f#*", "arguments": {},
             "properties_key": "a.b-c_d%7Ee+f%23%2A"},
        ])
    );
    assert!(get(&broker, "/api/bindings/%2F")
        .await
        .as_array()
        .unwrap()
        .is_empty());
    broker.shutdown().await;
}

#[tokio::test]
async fn refusals_inside_a_connection_name_its_vhost() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    put_user(&broker, "limited", "").await;
    grant(&broker, "v1", "limited", "^c-").await;
    let (mut c, answer) = Client::open_vhost_as(broker.local_addr(), "limited", "pw", "v1").await;
    assert!(matches!(answer, Method::ConnectionOpenOk(_)), "{answer:?}");
    c.open_channel(1).await;
    c.send(1, common::raw::declare("other")).await;
    c.expect_channel_close(
        1,
        403,
        "ACCESS_REFUSED - access to queue 'other' in vhost 'v1' refused for user 'limited'",
        50,
        10,
    )
    .await;
    // A queue's own refusals name the vhost too.
    let conn = connect_to(&broker, "v1").await;
    let ch = amqp::open(&conn).await;
    amqp::declare(&ch, "full").await;
    amqp::confirm_mode(&ch).await;
    amqp::publish(&ch, "", "full", b"m").await;
    let (code, text) = expect_amqp(
        within(ch.queue_delete(
            "full",
            lapin::options::QueueDeleteOptions {
                if_empty: true,
                ..Default::default()
            },
        ))
        .await,
    );
    assert_eq!(
        (code, text.as_str()),
        (
            406,
            "PRECONDITION_FAILED - queue 'full' in vhost 'v1' not empty"
        )
    );
    drop(c);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_vhost_connection_limit_counts_that_vhost_only() {
    let broker = start(None).await;
    assert_eq!(add_vhost(&broker, "v1").await, 201);
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhost-limits/v1/max-connections",
        r#"{"value": 1}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    // Connections to / do not count against v1's limit.
    let _root = common::connect(&broker).await;
    let _root2 = common::connect(&broker).await;
    let _first = connect_to(&broker, "v1").await;
    let (c, answer) = Client::open_vhost_as(broker.local_addr(), "guest", "guest", "v1").await;
    match answer {
        Method::ConnectionClose(close) => assert_eq!(
            (close.reply_code, close.reply_text.as_str()),
            (
                530,
                "NOT_ALLOWED - access to vhost 'v1' refused for user 'guest': connection limit (1) is reached"
            )
        ),
        other => panic!("expected connection.close, got {other:?}"),
    }
    drop(c);
    assert_eq!(
        get(&broker, "/api/vhost-limits").await,
        serde_json::json!([{"vhost": "v1", "value": {"max-connections": 1}}])
    );
    broker.shutdown().await;
}

/// The type and arguments of queue `name` in vhost `vhost` (URL-encoded), from the API.
async fn queue_type(broker: &Broker, vhost: &str, name: &str) -> (String, serde_json::Value) {
    let q = get(broker, &format!("/api/queues/{vhost}/{name}")).await;
    (
        q["type"].as_str().unwrap().to_string(),
        q["arguments"].clone(),
    )
}

#[tokio::test]
async fn a_vhosts_default_queue_type_types_durable_declares_that_name_none() {
    let dir = data_dir("vhosts-default-type");
    let broker = start(Some(&dir)).await;
    // RabbitMQ 3.10's API reads `defaultqueuetype`.
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhosts/qv",
        r#"{"defaultqueuetype":"quorum","description":"d","tags":"a,b"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let v = get(&broker, "/api/vhosts/qv").await;
    assert_eq!(v["default_queue_type"], "quorum");
    assert_eq!(
        v["metadata"],
        serde_json::json!({"default_queue_type": "quorum", "description": "d", "tags": ["a", "b"]})
    );
    assert_eq!(
        get(&broker, "/api/vhosts/%2F").await["default_queue_type"],
        "undefined"
    );
    // An update keeps the type it was created with, as RabbitMQ does.
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhosts/qv",
        r#"{"defaultqueuetype":"classic"}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(
        get(&broker, "/api/vhosts/qv").await["default_queue_type"],
        "quorum"
    );
    // A queue declared over the management API gets it too (RabbitMQ's PUT declares
    // as a channel does).
    let r = send_json(
        &broker,
        "PUT",
        "/api/queues/qv/via-http",
        r#"{"durable":true}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    assert_eq!(queue_type(&broker, "qv", "via-http").await.0, "quorum");
    // An unknown type fails the creation with RabbitMQ's 500 and creates nothing.
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhosts/bad",
        r#"{"defaultqueuetype":"nosuch"}"#,
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["reason"], "invalid_queue_type");
    assert_eq!(
        request(&broker, "GET", "/api/vhosts/bad", Some(GUEST))
            .await
            .status,
        404
    );

    let conn = connect_to(&broker, "qv").await;
    let ch = amqp::open(&conn).await;
    let durable = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, options) in [
        ("dq1", durable),
        ("dq2", Default::default()),
        (
            "dq3",
            lapin::options::QueueDeclareOptions {
                auto_delete: true,
                ..durable
            },
        ),
        (
            "dq4",
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..durable
            },
        ),
    ] {
        within(ch.queue_declare(name, options, FieldTable::default()))
            .await
            .unwrap();
    }
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("classic".into()),
    );
    within(ch.queue_declare("dq5", durable, classic))
        .await
        .unwrap();
    // A redeclare without the argument gets it too, so it is equivalent.
    within(ch.queue_declare("dq1", durable, FieldTable::default()))
        .await
        .unwrap();
    // As the reference node typed the same declares.
    let quorum = serde_json::json!({"x-queue-type": "quorum"});
    assert_eq!(
        queue_type(&broker, "qv", "dq1").await,
        ("quorum".into(), quorum.clone())
    );
    assert_eq!(
        queue_type(&broker, "qv", "dq2").await,
        ("classic".into(), serde_json::json!({}))
    );
    assert_eq!(
        queue_type(&broker, "qv", "dq3").await,
        ("classic".into(), serde_json::json!({}))
    );
    assert_eq!(
        queue_type(&broker, "qv", "dq4").await,
        ("classic".into(), serde_json::json!({}))
    );
    assert_eq!(
        queue_type(&broker, "qv", "dq5").await,
        (
            "classic".into(),
            serde_json::json!({"x-queue-type": "classic"})
        )
    );
    // A server-named durable declare would be a quorum queue: refused as in RabbitMQ.
    let (code, text) =
        expect_amqp(within(ch.queue_declare("", durable, FieldTable::default())).await);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue"
    );
    drop(conn);
    // The same for a vhost whose default type is stream (RabbitMQ applies the default
    // before it checks the name).
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhosts/sv",
        r#"{"defaultqueuetype":"stream"}"#,
    )
    .await;
    assert_eq!(r.status, 201);
    let conn = connect_to(&broker, "sv").await;
    let ch = amqp::open(&conn).await;
    let (code, text) =
        expect_amqp(within(ch.queue_declare("", durable, FieldTable::default())).await);
    assert_eq!(code, 406);
    assert_eq!(
        text,
        "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_stream_queue"
    );
    drop(conn);
    broker.shutdown().await;

    // Durable, and taken by a definitions import as RabbitMQ 3.10 exports it (metadata).
    let broker = start(Some(&dir)).await;
    assert_eq!(
        get(&broker, "/api/vhosts/qv").await["default_queue_type"],
        "quorum"
    );
    let defs = serde_json::json!({"vhosts": [
        {"name": "imported", "metadata": {"default_queue_type": "quorum", "description": "", "tags": []}}
    ]});
    let r = send_json(&broker, "POST", "/api/definitions", &defs.to_string()).await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        get(&broker, "/api/vhosts/imported").await["default_queue_type"],
        "quorum"
    );
    let bad =
        serde_json::json!({"vhosts": [{"name": "nope", "metadata": {"default_queue_type": "x"}}]});
    let r = send_json(&broker, "POST", "/api/definitions", &bad.to_string()).await;
    assert_eq!(r.status, 400);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
