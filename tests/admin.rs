//! The management HTTP API over real TCP: a broker with `.http(127.0.0.1:0)`, AMQP driven
//! with lapin, the API read with a tiny raw HTTP client.
//!
//! No sleeps. Queue counters are written by the queue task after each command, and a
//! passive `queue.declare` goes through the same queue's command channel, so after one
//! (see [`sync`]) every earlier command from this client is counted. The registry of
//! connections, channels and consumers is updated before the broker answers the method
//! that changed it (open-ok, consume-ok, close-ok, a delivery).

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::http::{get, parse_response, raw, request, GUEST};
use common::within;
use futures::StreamExt;
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use minimq_broker::Broker;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker with the management API on an ephemeral port (and a data directory of its
/// own, so tests running in parallel never share one).
async fn start() -> Broker {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "minimq-admin-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let broker = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .data_dir(dir)
        .http(Some("127.0.0.1:0".parse().unwrap()))
        .start()
        .await
        .expect("broker starts");
    assert!(broker.http_addr().is_some());
    broker
}

async fn connect_named(broker: &Broker, name: &str) -> Connection {
    within(Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default().with_connection_name(name.into()),
    ))
    .await
    .expect("connect")
}

async fn open(conn: &Connection) -> Channel {
    within(conn.create_channel()).await.expect("channel.open")
}

/// Every command this client sent to `queue` before this call has been handled (and
/// counted) once it returns: the passive declare queues behind them.
async fn sync(ch: &Channel, queue: &str) {
    common::passive_declare(ch, queue).await;
}

async fn publish(ch: &Channel, queue: &str, body: &[u8]) {
    let confirm = within(ch.basic_publish(
        "",
        queue,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    ))
    .await
    .expect("basic.publish");
    within(confirm).await.expect("confirm");
}

/// (messages, ready, unacked, consumers) of a queue from the API.
async fn counts(broker: &Broker, queue: &str) -> (u64, u64, u64, u64) {
    let q = get(broker, &format!("/api/queues/%2F/{queue}")).await;
    let n = |k: &str| q[k].as_u64().unwrap_or_else(|| panic!("{k} in {q}"));
    (
        n("messages"),
        n("messages_ready"),
        n("messages_unacknowledged"),
        n("consumers"),
    )
}

#[tokio::test]
async fn disabled_unless_asked() {
    let broker = common::start_broker().await;
    assert_eq!(broker.http_addr(), None);
    broker.shutdown().await;
}

#[tokio::test]
async fn tutorial_counts_are_live() {
    let broker = start().await;
    let conn = connect_named(&broker, "tutorial").await;
    let producer = open(&conn).await;
    within(producer.queue_declare(
        "task_queue",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(producer.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for body in [&b"First."[..], b"Second..", b"Third..."] {
        publish(&producer, "task_queue", body).await;
    }
    sync(&producer, "task_queue").await;
    let q = get(&broker, "/api/queues/%2F/task_queue").await;
    assert_eq!(q["name"], "task_queue");
    assert_eq!(q["vhost"], "/");
    assert_eq!(q["durable"], true);
    assert_eq!(q["auto_delete"], false);
    assert_eq!(q["exclusive"], false);
    assert_eq!(q["arguments"], serde_json::json!({}));
    assert_eq!(q["state"], "running");
    assert_eq!(q["type"], "classic");
    assert_eq!(q["message_bytes_ready"], 6 + 8 + 8);
    assert_eq!(q["message_stats"]["publish"], 3);
    assert_eq!(q["consumer_details"], serde_json::json!([]));
    assert_eq!(counts(&broker, "task_queue").await, (3, 3, 0, 0));

    // A worker with prefetch 1 takes one task and holds it.
    let worker = open(&conn).await;
    within(worker.basic_qos(1, BasicQosOptions::default()))
        .await
        .unwrap();
    let mut consumer = within(worker.basic_consume(
        "task_queue",
        "worker-1",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let first = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(first.data, b"First.");
    sync(&worker, "task_queue").await;
    assert_eq!(counts(&broker, "task_queue").await, (3, 2, 1, 1));

    let overview = get(&broker, "/api/overview").await;
    assert_eq!(overview["product_name"], "minimq");
    assert!(overview["rabbitmq_version"].is_string());
    assert!(overview["product_version"].is_string());
    let listeners = overview["listeners"].as_array().unwrap();
    let port_of = |protocol: &str| {
        listeners
            .iter()
            .find(|l| l["protocol"] == protocol)
            .map(|l| l["port"].as_u64().unwrap() as u16)
    };
    assert_eq!(port_of("amqp"), Some(broker.local_addr().port()));
    assert_eq!(port_of("http"), broker.http_addr().map(|a| a.port()));
    assert_eq!(
        overview["queue_totals"],
        serde_json::json!({"messages": 3, "messages_ready": 2, "messages_unacknowledged": 1})
    );
    let totals = &overview["object_totals"];
    assert_eq!(totals["queues"], 1);
    assert_eq!(totals["connections"], 1);
    assert_eq!(totals["channels"], 2);
    assert_eq!(totals["consumers"], 1);
    assert!(totals["exchanges"].as_u64().unwrap() >= 6);

    let channels = get(&broker, "/api/channels").await;
    let channels = channels.as_array().unwrap();
    assert_eq!(channels.len(), 2);
    let by_number = |n: u64| {
        channels
            .iter()
            .find(|c| c["number"] == n)
            .unwrap_or_else(|| panic!("channel {n} in {channels:?}"))
    };
    let (p, w) = (by_number(1), by_number(2));
    assert_eq!(p["confirm"], true);
    assert_eq!(p["consumer_count"], 0);
    assert_eq!(p["messages_unacknowledged"], 0);
    assert_eq!(w["confirm"], false);
    assert_eq!(w["consumer_count"], 1);
    assert_eq!(w["messages_unacknowledged"], 1);
    assert_eq!(w["prefetch_count"], 1);
    assert_eq!(w["global_prefetch_count"], 0);
    assert_eq!(w["user"], "guest");
    assert_eq!(w["vhost"], "/");
    let conn_name = w["connection_details"]["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(w["name"], format!("{conn_name} (2)"));

    let consumers = get(&broker, "/api/consumers").await;
    let consumers = consumers.as_array().unwrap();
    assert_eq!(consumers.len(), 1);
    let c = &consumers[0];
    assert_eq!(c["consumer_tag"], "worker-1");
    assert_eq!(
        c["queue"],
        serde_json::json!({"name": "task_queue", "vhost": "/"})
    );
    assert_eq!(c["ack_required"], true);
    assert_eq!(c["prefetch_count"], 1);
    assert_eq!(c["exclusive"], false);
    assert_eq!(c["active"], true);
    assert_eq!(c["channel_details"]["number"], 2);
    assert_eq!(c["channel_details"]["connection_name"], conn_name.as_str());
    let q = get(&broker, "/api/queues/%2F/task_queue").await;
    assert_eq!(q["consumer_details"][0]["consumer_tag"], "worker-1");

    // The ack frees the worker: it gets the second task.
    within(worker.basic_ack(first.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    let second = within(consumer.next()).await.unwrap().unwrap();
    assert_eq!(second.data, b"Second..");
    sync(&worker, "task_queue").await;
    assert_eq!(counts(&broker, "task_queue").await, (2, 1, 1, 1));
    let q = get(&broker, "/api/queues/%2F/task_queue").await;
    assert_eq!(q["message_stats"]["ack"], 1);
    assert_eq!(q["message_stats"]["deliver_get"], 2);

    // Cancelled: no consumer, the unacked task stays with the channel until acked.
    within(worker.basic_cancel("worker-1", BasicCancelOptions::default()))
        .await
        .unwrap();
    sync(&worker, "task_queue").await;
    assert_eq!(counts(&broker, "task_queue").await, (2, 1, 1, 0));
    assert_eq!(get(&broker, "/api/consumers").await, serde_json::json!([]));
    within(worker.basic_ack(second.delivery_tag, BasicAckOptions::default()))
        .await
        .unwrap();
    sync(&worker, "task_queue").await;
    assert_eq!(counts(&broker, "task_queue").await, (1, 1, 0, 0));
    let channels = get(&broker, "/api/channels").await;
    assert!(channels
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["messages_unacknowledged"] == 0));

    // Listing by vhost, and all queues.
    let all = get(&broker, "/api/queues").await;
    assert_eq!(all, get(&broker, "/api/queues/%2F").await);
    assert_eq!(all.as_array().unwrap().len(), 1);

    within(conn.close(200, "bye")).await.unwrap();
    broker.shutdown().await;
}

/// A consumer's `basic.consume` arguments, in a queue's `consumer_details` and in
/// `/api/consumers`, as RabbitMQ 3.10 shows them (taken from the reference node): the
/// table as JSON, `{}` when there are none; a stream consumer's `x-stream-offset` as
/// it was given (a string, a number; a timestamp as its seconds).
#[tokio::test]
async fn consumer_details_show_each_consumers_arguments_as_rabbitmq() {
    use lapin::types::{AMQPValue, FieldArray, ShortString};
    let broker = start().await;
    let conn = connect_named(&broker, "args").await;
    let ch = open(&conn).await;
    within(ch.queue_declare("cq", QueueDeclareOptions::default(), FieldTable::default()))
        .await
        .unwrap();
    let table = |entries: Vec<(&str, AMQPValue)>| {
        let mut t = FieldTable::default();
        for (k, v) in entries {
            t.insert(ShortString::from(k), v);
        }
        t
    };
    let consume = |queue: &'static str, tag: &'static str, arguments: FieldTable| {
        let ch = ch.clone();
        async move {
            within(ch.basic_consume(queue, tag, BasicConsumeOptions::default(), arguments))
                .await
                .unwrap()
        }
    };
    let _t1 = consume(
        "cq",
        "t1",
        table(vec![("x-priority", AMQPValue::LongInt(5))]),
    )
    .await;
    let _t2 = consume("cq", "t2", FieldTable::default()).await;
    let _t3 = consume(
        "cq",
        "t3",
        table(vec![
            ("x-priority", AMQPValue::LongInt(1)),
            ("x-foo", AMQPValue::LongString("bar".into())),
            ("x-b", AMQPValue::Boolean(true)),
            ("x-f", AMQPValue::Double(1.5)),
            (
                "x-l",
                AMQPValue::FieldArray(FieldArray::from(vec![
                    AMQPValue::LongInt(1),
                    AMQPValue::LongString("s".into()),
                ])),
            ),
            (
                "x-t",
                AMQPValue::FieldTable(table(vec![("a", AMQPValue::LongInt(1))])),
            ),
        ]),
    )
    .await;
    within(ch.basic_qos(10, BasicQosOptions::default()))
        .await
        .unwrap();
    let stream = table(vec![(
        "x-queue-type",
        AMQPValue::LongString("stream".into()),
    )]);
    within(ch.queue_declare(
        "cs",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        stream,
    ))
    .await
    .unwrap();
    let offset = |v: AMQPValue| table(vec![("x-stream-offset", v)]);
    let _s1 = consume("cs", "s1", offset(AMQPValue::LongString("first".into()))).await;
    let _s2 = consume("cs", "s2", offset(AMQPValue::LongLongInt(5))).await;
    let _s3 = consume("cs", "s3", offset(AMQPValue::LongString("1h".into()))).await;
    let _s4 = consume("cs", "s4", offset(AMQPValue::Timestamp(1_700_000_000))).await;

    let shown = |q: &Value| -> Vec<(String, Value)> {
        let mut list: Vec<(String, Value)> = q
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["consumer_tag"].as_str().unwrap().to_string(),
                    c["arguments"].clone(),
                )
            })
            .collect();
        list.sort_by(|a, b| a.0.cmp(&b.0));
        list
    };
    let want_cq = vec![
        ("t1".to_string(), serde_json::json!({"x-priority": 5})),
        ("t2".to_string(), serde_json::json!({})),
        (
            "t3".to_string(),
            serde_json::json!({"x-b": true, "x-f": 1.5, "x-foo": "bar", "x-l": [1, "s"],
                               "x-priority": 1, "x-t": {"a": 1}}),
        ),
    ];
    let want_cs = vec![
        (
            "s1".to_string(),
            serde_json::json!({"x-stream-offset": "first"}),
        ),
        ("s2".to_string(), serde_json::json!({"x-stream-offset": 5})),
        (
            "s3".to_string(),
            serde_json::json!({"x-stream-offset": "1h"}),
        ),
        (
            "s4".to_string(),
            serde_json::json!({"x-stream-offset": 1_700_000_000}),
        ),
    ];
    let cq = get(&broker, "/api/queues/%2F/cq").await;
    assert_eq!(shown(&cq["consumer_details"]), want_cq);
    let cs = get(&broker, "/api/queues/%2F/cs").await;
    assert_eq!(shown(&cs["consumer_details"]), want_cs);
    let all = get(&broker, "/api/consumers").await;
    // Sorted by tag: the stream's `s*` first.
    let mut want_all = want_cs.clone();
    want_all.extend(want_cq.clone());
    assert_eq!(shown(&all), want_all);
    within(conn.close(200, "bye")).await.unwrap();
    broker.shutdown().await;
}

/// A quorum queue as RabbitMQ 3.10 shows it: `type` quorum, `leader`, `members` and
/// `online` naming this node (there is no replication: one member), the fields of
/// dead-lettering in progress, and none of a classic queue's paging and mirroring
/// fields. Every message counts as persistent, transient ones too.
#[tokio::test]
async fn a_quorum_queue_shows_its_leader_and_members() {
    let broker = start().await;
    let conn = connect_named(&broker, "quorum").await;
    let ch = open(&conn).await;
    let mut arguments = FieldTable::default();
    arguments.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    within(ch.queue_declare(
        "task_queue",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        arguments,
    ))
    .await
    .unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    publish(&ch, "task_queue", b"transient").await;
    sync(&ch, "task_queue").await;
    let q = get(&broker, "/api/queues/%2F/task_queue").await;
    assert_eq!(q["type"], "quorum");
    let node = q["node"].clone();
    assert!(node.as_str().is_some_and(|n| n.starts_with("minimq@")));
    assert_eq!(q["leader"], node);
    assert_eq!(q["members"], serde_json::json!([node]));
    assert_eq!(q["online"], serde_json::json!([node]));
    assert_eq!(q["messages_dlx"], 0);
    assert_eq!(q["message_bytes_dlx"], 0);
    assert_eq!(q["messages_persistent"], 1);
    for classic_only in [
        "exclusive_consumer_tag",
        "messages_paged_out",
        "messages_ready_ram",
        "messages_unacknowledged_ram",
        "recoverable_slaves",
    ] {
        assert!(q.get(classic_only).is_none(), "{classic_only} in {q}");
    }
    assert_eq!(counts(&broker, "task_queue").await, (1, 1, 0, 0));
    let listed = get(&broker, "/api/queues").await;
    let entry = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "task_queue")
        .expect("listed")
        .clone();
    assert_eq!(entry["leader"], node);

    // A classic queue has none of the quorum fields.
    let classic = open(&conn).await;
    within(classic.queue_declare(
        "classic",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let q = get(&broker, "/api/queues/%2F/classic").await;
    for quorum_only in ["leader", "members", "online", "messages_dlx"] {
        assert!(q.get(quorum_only).is_none(), "{quorum_only} in {q}");
    }
    assert_eq!(q["messages_paged_out"], 0);
}

#[tokio::test]
async fn connections_and_channels_come_and_go() {
    let broker = start().await;
    assert_eq!(
        get(&broker, "/api/connections").await,
        serde_json::json!([])
    );
    let conn = connect_named(&broker, "lister").await;
    let list = get(&broker, "/api/connections").await;
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    let c = &list[0];
    assert_eq!(c["user"], "guest");
    assert_eq!(c["vhost"], "/");
    assert_eq!(c["state"], "running");
    assert_eq!(c["protocol"], "AMQP 0-9-1");
    assert_eq!(c["auth_mechanism"], "PLAIN");
    assert_eq!(c["channels"], 0);
    assert_eq!(c["peer_host"], "127.0.0.1");
    assert_eq!(c["port"], broker.local_addr().port());
    assert_eq!(c["client_properties"]["connection_name"], "lister");
    assert_eq!(c["user_provided_name"], "lister");
    assert!(c["client_properties"]["product"].is_string());
    let peer_port = c["peer_port"].as_u64().unwrap();
    assert_eq!(
        c["name"],
        format!("127.0.0.1:{peer_port} -> {}", broker.local_addr())
    );

    let a = open(&conn).await;
    let b = open(&conn).await;
    within(b.basic_qos(5, BasicQosOptions { global: true }))
        .await
        .unwrap();
    let list = get(&broker, "/api/connections").await;
    assert_eq!(list[0]["channels"], 2);
    let chans = get(&broker, "/api/channels").await;
    let g = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 2)
        .unwrap();
    assert_eq!(g["global_prefetch_count"], 5);
    assert_eq!(g["connection_details"]["peer_port"], peer_port);
    assert_eq!(g["transactional"], false);
    // A channel in tx mode says so, as RabbitMQ's API does.
    within(b.tx_select()).await.unwrap();
    let chans = get(&broker, "/api/channels").await;
    let t = chans
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["number"] == 2)
        .unwrap();
    assert_eq!(
        (t["transactional"].clone(), t["confirm"].clone()),
        (true.into(), false.into())
    );

    within(a.close(200, "done")).await.unwrap();
    let chans = get(&broker, "/api/channels").await;
    assert_eq!(chans.as_array().unwrap().len(), 1);
    assert_eq!(chans[0]["number"], 2);

    // An exclusive queue names its owner.
    let q = within(b.queue_declare(
        "",
        QueueDeclareOptions {
            exclusive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let info = get(&broker, &format!("/api/queues/%2F/{}", q.name().as_str())).await;
    assert_eq!(info["exclusive"], true);
    assert_eq!(info["owner_pid_details"]["peer_port"], peer_port);

    within(conn.close(200, "bye")).await.unwrap();
    assert_eq!(
        get(&broker, "/api/connections").await,
        serde_json::json!([])
    );
    assert_eq!(get(&broker, "/api/channels").await, serde_json::json!([]));
    assert_eq!(get(&broker, "/api/queues").await, serde_json::json!([]));
    broker.shutdown().await;
}

#[tokio::test]
async fn delete_and_purge() {
    let broker = start().await;
    let conn = connect_named(&broker, "deleter").await;
    let ch = open(&conn).await;
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for q in ["jobs", "other"] {
        within(ch.queue_declare(q, QueueDeclareOptions::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    for _ in 0..2 {
        publish(&ch, "jobs", b"x").await;
    }
    sync(&ch, "jobs").await;
    assert_eq!(counts(&broker, "jobs").await, (2, 2, 0, 0));

    // if-empty refuses a queue with messages, as RabbitMQ does.
    let r = request(
        &broker,
        "DELETE",
        "/api/queues/%2F/jobs?if-empty=true",
        Some(GUEST),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "bad_request", "reason": "queue 'jobs' in vhost '/' not empty"})
    );

    // Purge.
    let r = request(
        &broker,
        "DELETE",
        "/api/queues/%2F/jobs/contents",
        Some(GUEST),
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(counts(&broker, "jobs").await, (0, 0, 0, 0));
    let r = request(&broker, "GET", "/api/queues/%2F/jobs/contents", Some(GUEST)).await;
    assert_eq!(r.status, 405);

    // if-unused refuses a queue with a consumer.
    let consumer_ch = open(&conn).await;
    let mut consumer = within(consumer_ch.basic_consume(
        "jobs",
        "c",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    let r = request(
        &broker,
        "DELETE",
        "/api/queues/%2F/jobs?if-unused=true&if-empty=true",
        Some(GUEST),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "queue 'jobs' in vhost '/' in use");

    // Deleted: gone from the API and from AMQP; its consumer is cancelled.
    let r = request(&broker, "DELETE", "/api/queues/%2F/jobs", Some(GUEST)).await;
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert!(
        within(consumer.next()).await.is_none(),
        "consumer cancelled"
    );
    let r = request(&broker, "GET", "/api/queues/%2F/jobs", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    let gone = within(ch.queue_declare(
        "jobs",
        QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        FieldTable::default(),
    ))
    .await;
    assert!(gone.is_err());
    let names: Vec<Value> = get(&broker, "/api/queues")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["name"].clone())
        .collect();
    assert_eq!(names, vec![Value::from("other")]);

    // Missing queues.
    for (method, path) in [
        ("DELETE", "/api/queues/%2F/jobs"),
        ("DELETE", "/api/queues/%2F/jobs/contents"),
        ("GET", "/api/queues/%2F/nope"),
        ("GET", "/api/queues/other-vhost"),
        ("GET", "/api/queues/other-vhost/other"),
    ] {
        let r = request(&broker, method, path, Some(GUEST)).await;
        assert_eq!(r.status, 404, "{method} {path}");
        assert_eq!(
            r.json(),
            serde_json::json!({"error": "Object Not Found", "reason": "Not Found"})
        );
    }
    within(conn.close(200, "bye")).await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn auth_and_errors() {
    let broker = start().await;
    for auth in [
        None,
        Some("Z3Vlc3Q6d3Jvbmc="), // guest:wrong
        Some("!!!not base64!!!"),
        Some("bm9ib2R5Omd1ZXN0"), // nobody:guest
    ] {
        let r = request(&broker, "GET", "/api/overview", auth).await;
        assert_eq!(r.status, 401, "{auth:?}");
        assert_eq!(
            r.header("www-authenticate"),
            Some("Basic realm=\"RabbitMQ Management\"")
        );
        assert_eq!(r.json()["error"], "not_authorized");
    }
    let r = request(&broker, "GET", "/api/queues/%2F/nope", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    let r = request(&broker, "GET", "/api/nothing-here", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    let r = request(&broker, "POST", "/api/overview", Some(GUEST)).await;
    assert_eq!(r.status, 405);
    assert!(r.header("allow").unwrap().contains("GET"));
    let r = request(&broker, "DELETE", "/api/queues", None).await;
    assert_eq!(r.status, 405, "wrong method answered before credentials");
    let r = request(&broker, "HEAD", "/api/overview", Some(GUEST)).await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    let me = get(&broker, "/api/whoami").await;
    assert_eq!(me["name"], "guest");
    broker.shutdown().await;
}

/// `?page=` answers RabbitMQ's page object, filtered by `name` (a case-insensitive
/// substring, or with `use_regex=true` a regular expression); without `page` the whole
/// list, unfiltered; bad pages are RabbitMQ's 400s.
#[tokio::test]
async fn lists_page_and_filter_as_rabbitmq() {
    let broker = start().await;
    let conn = connect_named(&broker, "pager").await;
    let ch = open(&conn).await;
    for q in ["Alpha", "alpine", "beta", "gamma", "delta"] {
        common::amqp::declare(&ch, q).await;
    }
    let page = get(
        &broker,
        "/api/queues?page=1&page_size=2&name=L&pagination=true",
    )
    .await;
    let names = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|q| q["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page["items"]), ["Alpha", "alpine"]);
    let counts: Vec<&Value> = [
        "filtered_count",
        "item_count",
        "page",
        "page_count",
        "page_size",
        "total_count",
    ]
    .iter()
    .map(|k| &page[*k])
    .collect();
    assert_eq!(
        counts,
        [
            &serde_json::json!(3),
            &serde_json::json!(2),
            &serde_json::json!(1),
            &serde_json::json!(2),
            &serde_json::json!(2),
            &serde_json::json!(5)
        ]
    );
    let page = get(&broker, "/api/queues/%2F?page=2&page_size=2&name=L").await;
    assert_eq!(names(&page["items"]), ["delta"]);
    let page = get(&broker, "/api/queues?page=1&name=%5Ea.p&use_regex=true").await;
    assert_eq!(names(&page["items"]), ["Alpha", "alpine"]);
    // The page after the last is empty; the one after that out of range.
    let page = get(&broker, "/api/queues?page=2&page_size=5").await;
    assert_eq!(page["items"], serde_json::json!([]));
    let r = request(
        &broker,
        "GET",
        "/api/queues?page=3&page_size=5",
        Some(GUEST),
    )
    .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json(),
        serde_json::json!({"error": "page_out_of_range", "reason": "Page out of range, page: 3 page size: 5, len: 5"})
    );
    let r = request(&broker, "GET", "/api/queues?page=0", Some(GUEST)).await;
    assert_eq!(r.json()["error"], "invalid_pagination_parameters");
    let r = request(&broker, "GET", "/api/exchanges?page=x", Some(GUEST)).await;
    assert_eq!(r.json()["reason"], "Pagination parameters are invalid");
    // No page: everything, the filter ignored (as RabbitMQ).
    assert_eq!(names(&get(&broker, "/api/queues?name=beta").await).len(), 5);
    let x = get(&broker, "/api/exchanges/%2F?page=1&name=amq.t").await;
    assert_eq!(names(&x["items"]), ["amq.topic"]);
    let c = get(&broker, "/api/connections?page=1&page_size=1").await;
    assert_eq!(c["items"][0]["user"], "guest");
    // Channels page too (RabbitMQ 3.10's `/api/channels` does).
    let c = get(&broker, "/api/channels?page=1&page_size=1").await;
    assert_eq!(
        (&c["item_count"], &c["total_count"]),
        (&serde_json::json!(1), &serde_json::json!(1))
    );
    assert_eq!(c["items"][0]["number"], 1);
    // And vhosts.
    let v = get(&broker, "/api/vhosts?page=1&name=%2F").await;
    assert_eq!(names(&v["items"]), ["/"]);
    drop(conn);
    broker.shutdown().await;
}

#[tokio::test]
async fn bad_requests_do_not_hurt_the_broker() {
    let broker = start().await;
    let http = broker.http_addr().unwrap();
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"garbage\r\n\r\n".to_vec(), 400),
        (b"GET\r\n\r\n".to_vec(), 400),
        (b"GET /api/overview HTTP/9.9\r\n\r\n".to_vec(), 505),
        (b"GET /api/queues/%zz HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            b"GET /api/overview HTTP/1.1\r\nno colon here\r\n\r\n".to_vec(),
            400,
        ),
        (
            b"GET /api/overview HTTP/1.1\r\nContent-Length: lots\r\n\r\n".to_vec(),
            400,
        ),
        (b"\xff\xfe\xfd /x HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            format!(
                "GET /api/overview HTTP/1.1\r\nX-Big: {}\r\n\r\n",
                "a".repeat(20_000)
            )
            .into_bytes(),
            431,
        ),
        (
            b"DELETE /api/queues/%2F/q HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n".to_vec(),
            413,
        ),
        (
            b"DELETE /api/queues/%2F/q HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
            501,
        ),
    ];
    for (req, status) in cases {
        let r = parse_response(&raw(http, &req).await);
        assert_eq!(
            r.status,
            status,
            "{:?}",
            String::from_utf8_lossy(&req[..req.len().min(60)])
        );
    }
    // A client that leaves halfway, and one that says nothing.
    raw(http, b"GET /api/overv").await;
    drop(TcpStream::connect(http).await.unwrap());

    // Keep-alive: two requests on one connection.
    let mut s = within(TcpStream::connect(http)).await.unwrap();
    let req = format!("GET /api/whoami HTTP/1.1\r\nAuthorization: Basic {GUEST}\r\n\r\n");
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        within(s.write_all(req.as_bytes())).await.unwrap();
        let mut got = Vec::new();
        loop {
            let n = within(s.read(&mut buf)).await.unwrap();
            assert!(n > 0, "server closed a keep-alive connection");
            got.extend_from_slice(&buf[..n]);
            if got.ends_with(b"}") {
                break;
            }
        }
        let r = parse_response(&got);
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["name"], "guest");
    }
    drop(s);

    // Still serving, HTTP and AMQP.
    assert_eq!(
        get(&broker, "/api/overview").await["product_name"],
        "minimq"
    );
    let conn = connect_named(&broker, "after").await;
    let ch = open(&conn).await;
    within(ch.queue_declare(
        "still",
        QueueDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(counts(&broker, "still").await, (0, 0, 0, 0));
    within(conn.close(200, "bye")).await.unwrap();
    within(broker.shutdown()).await;
}

/// A body the handler does not read (RabbitMQ's clients send one with some DELETEs) is
/// read all the same, so the keep-alive connection serves the next request: a client
/// that reuses it must not find it closed.
#[tokio::test]
async fn an_unread_body_does_not_end_a_keep_alive_connection() {
    let broker = start().await;
    let mut s = within(TcpStream::connect(broker.http_addr().unwrap()))
        .await
        .unwrap();
    let body = r#"{"vhost":"/","properties_key":"k"}"#;
    let head = format!(
        "DELETE /api/queues/%2F/nope HTTP/1.1\r\nAuthorization: Basic {GUEST}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let whoami = format!("GET /api/whoami HTTP/1.1\r\nAuthorization: Basic {GUEST}\r\n\r\n");
    let mut buf = vec![0u8; 4096];
    // The body arrives after the answer: the handler did not wait for it. (A client's
    // body comes late when the network or the client is slow.)
    let writes: [&[&[u8]]; 2] = [&[head.as_bytes()], &[body.as_bytes(), whoami.as_bytes()]];
    let mut statuses = Vec::new();
    for parts in writes {
        for part in parts {
            within(s.write_all(part))
                .await
                .expect("the keep-alive connection is open");
        }
        let mut got = Vec::new();
        while !got.ends_with(b"}") {
            let n = within(s.read(&mut buf)).await.unwrap();
            assert!(n > 0, "server closed the keep-alive connection");
            got.extend_from_slice(&buf[..n]);
        }
        statuses.push(parse_response(&got).status);
    }
    assert_eq!(statuses, [404, 200]);
    broker.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_idle_keep_alive_connections() {
    let broker = start().await;
    let http = broker.http_addr().unwrap();
    // A keep-alive connection that got one answer and now idles.
    let mut s = within(TcpStream::connect(http)).await.unwrap();
    let req = format!("GET /api/whoami HTTP/1.1\r\nAuthorization: Basic {GUEST}\r\n\r\n");
    within(s.write_all(req.as_bytes())).await.unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !got.ends_with(b"}") {
        let n = within(s.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(parse_response(&got).status, 200);
    // The broker's shutdown does not wait for it, and ends it.
    within(broker.shutdown()).await;
    let n = within(s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0, "idle connection closed by the shutdown");
    assert!(TcpStream::connect(http).await.is_err(), "listener closed");
}

/// What recovery skipped at start-up is in the overview: mode, whether the last stop was
/// clean, and each stretch of the log not used (segment, offset, octets, kind).
#[tokio::test]
async fn the_overview_reports_what_recovery_skipped() {
    let dir = common::data_dir("admin-recovery");
    let start = |dir: std::path::PathBuf| async move {
        Broker::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .data_dir(dir)
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .start()
            .await
            .expect("broker starts")
    };
    let broker = start(dir.clone()).await;
    let v = get(&broker, "/api/overview").await;
    assert_eq!(v["minimq_recovery"]["mode"], "skip-corrupt");
    assert_eq!(v["minimq_recovery"]["skipped"], serde_json::json!([]));
    let conn = connect_named(&broker, "recovery").await;
    let ch = open(&conn).await;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    within(ch.queue_declare("r", durable, FieldTable::default()))
        .await
        .unwrap();
    within(ch.confirm_select(ConfirmSelectOptions::default()))
        .await
        .unwrap();
    for i in 0..3 {
        let body = format!("recovery-body-{i}-{}", "z".repeat(64));
        let confirm = within(ch.basic_publish(
            "",
            "r",
            BasicPublishOptions::default(),
            body.as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        ))
        .await
        .unwrap();
        within(confirm).await.unwrap();
    }
    drop(conn);
    broker.shutdown().await;
    // Damage the middle message's body in the segment.
    let seg = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("a segment");
    let mut data = std::fs::read(&seg).unwrap();
    let at = data
        .windows(16)
        .position(|w| w == b"recovery-body-1-")
        .expect("the second message's body");
    data[at] ^= 0x20;
    std::fs::write(&seg, &data).unwrap();
    let seg_no: u64 = seg.file_stem().unwrap().to_str().unwrap().parse().unwrap();

    let broker = start(dir.clone()).await;
    let v = get(&broker, "/api/overview").await;
    let r = &v["minimq_recovery"];
    assert_eq!(r["mode"], "skip-corrupt");
    assert_eq!(r["clean_shutdown"], true);
    let skipped = r["skipped"].as_array().expect("a list");
    assert_eq!(skipped.len(), 1, "{r}");
    assert_eq!(skipped[0]["segment"], seg_no);
    assert_eq!(skipped[0]["damage"], "corrupt");
    let offset = skipped[0]["offset"].as_u64().unwrap() as usize;
    let len = skipped[0]["octets"].as_u64().unwrap() as usize;
    assert!(offset < at && at < offset + len, "{r}, damage at {at}");
    assert_eq!(r["damaged_copies"].as_array().map(Vec::len), Some(1), "{r}");
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
