//! Resource alarms end to end: the memory and disk alarms as the management API reports
//! them (health checks with RabbitMQ's 200/503 answers, `/api/nodes`, the overview), and
//! what a publishing client sees while one is on.
//!
//! The disk alarm is forced with a free-space limit above any disk's free space
//! (`1000TB`), the memory alarm with a watermark of one octet; each is cleared by setting
//! the limit back at run time, as `rabbitmqctl set_disk_free_limit` does. Waits are on the
//! alarm's change notification, never on a clock.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::http::{get, request, send_json, GUEST};
use common::within;
use minimq_broker::config::{parse_size, Watermark};
use minimq_broker::{Broker, Config};
use serde_json::{json, Value};

/// A broker with a data directory of its own, the management API, and these limits.
async fn start(watermark: Watermark, disk_free_limit: u64) -> Broker {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "minimq-alarms-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Broker::builder()
        .config(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: Some("127.0.0.1:0".parse().unwrap()),
            data_dir: Some(dir),
            memory_high_watermark: watermark,
            disk_free_limit,
            ..Config::default()
        })
        .start()
        .await
        .expect("broker starts")
}

/// Waits until the alarm set satisfies `done` (checking the current value first).
async fn until_alarms(broker: &Broker, done: impl Fn(minimq_broker::alarm::AlarmSet) -> bool) {
    let mut rx = broker.state().alarms.subscribe();
    within(async {
        loop {
            if done(*rx.borrow_and_update()) {
                return;
            }
            rx.changed().await.expect("alarms outlive the test");
        }
    })
    .await
}

/// GET `path` as guest: status and JSON body.
async fn check(broker: &Broker, path: &str) -> (u16, Value) {
    let r = request(broker, "GET", path, Some(GUEST)).await;
    (r.status, r.json())
}

#[tokio::test]
async fn disk_alarm_fails_both_health_checks_with_rabbitmq_answers_until_space_returns() {
    let broker = start(Watermark::Absolute(0), parse_size("1000TB").unwrap()).await;
    // The first sample is taken before the broker starts listening.
    assert!(broker.state().alarms.current().disk);
    let node = get(&broker, "/api/overview").await["node"].clone();
    let (status, body) = check(&broker, "/api/health/checks/alarms").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({
            "status": "failed",
            "reason": "There are alarms in effect in the cluster",
            "alarms": [{"resource": "disk space", "node": node}],
        })
    );
    let (status, body) = check(&broker, "/api/health/checks/local-alarms").await;
    assert_eq!(status, 503);
    assert_eq!(body["reason"], "There are alarms in effect on the node");
    assert_eq!(body["alarms"][0]["resource"], "disk space");
    let nodes = get(&broker, "/api/nodes").await;
    assert_eq!(nodes[0]["name"], node);
    assert_eq!(nodes[0]["disk_free_alarm"], true);
    assert_eq!(nodes[0]["mem_alarm"], false);
    assert_eq!(nodes[0]["disk_free_limit"], 1_000_000_000_000_000u64);
    assert!(nodes[0]["disk_free"].as_u64().unwrap() > 0);
    assert_eq!(
        get(&broker, "/api/overview").await["minimq_alarms"],
        json!(["disk space"])
    );

    broker.state().alarms.set_disk_free_limit(0);
    until_alarms(&broker, |a| !a.disk).await;
    let (status, body) = check(&broker, "/api/health/checks/alarms").await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, _) = check(&broker, "/api/health/checks/local-alarms").await;
    assert_eq!(status, 200);
    assert_eq!(
        get(&broker, "/api/overview").await["minimq_alarms"],
        json!([])
    );
    broker.shutdown().await;
}

#[tokio::test]
async fn memory_alarm_from_a_tiny_watermark_shows_in_nodes_and_clears_when_raised() {
    let broker = start(Watermark::Absolute(1), 0).await;
    assert!(broker.state().alarms.current().memory);
    let (status, body) = check(&broker, "/api/health/checks/alarms").await;
    assert_eq!(status, 503);
    assert_eq!(body["alarms"][0]["resource"], "memory");
    let nodes = get(&broker, "/api/nodes").await;
    assert_eq!(nodes[0]["mem_alarm"], true);
    assert_eq!(nodes[0]["mem_limit"], 1);
    assert!(nodes[0]["mem_used"].as_u64().unwrap() > 1024 * 1024);
    let name = nodes[0]["name"].as_str().unwrap().to_string();
    let one = get(&broker, &format!("/api/nodes/{name}")).await;
    assert_eq!(one["name"], name.as_str());
    assert_eq!(
        request(&broker, "GET", "/api/nodes/nobody@nowhere", Some(GUEST))
            .await
            .status,
        404
    );

    broker.state().alarms.set_memory_limit(u64::MAX);
    until_alarms(&broker, |a| !a.memory).await;
    let (status, _) = check(&broker, "/api/health/checks/alarms").await;
    assert_eq!(status, 200);
    broker.shutdown().await;
}

/// `rabbitmqctl set_disk_free_limit` and `set_vm_memory_high_watermark` at run time, over
/// the API (what `minimqctl` uses): the alarm follows at the next sample, both ways.
#[tokio::test]
async fn limits_set_at_run_time_over_the_api_raise_and_clear_the_alarms() {
    let broker = start(Watermark::Absolute(0), 0).await;
    let node = get(&broker, "/api/overview").await["node"]
        .as_str()
        .unwrap()
        .to_string();
    let disk = format!("/api/nodes/{node}/disk-free-limit");
    let memory = format!("/api/nodes/{node}/vm-memory-high-watermark");

    assert_eq!(
        send_json(&broker, "PUT", &disk, r#"{"limit": "1000TB"}"#)
            .await
            .status,
        204
    );
    until_alarms(&broker, |a| a.disk).await;
    assert_eq!(
        check(&broker, "/api/health/checks/local-alarms").await.0,
        503
    );
    assert_eq!(
        get(&broker, "/api/nodes").await[0]["disk_free_limit"],
        1_000_000_000_000_000u64
    );
    assert_eq!(
        send_json(&broker, "PUT", &disk, r#"{"limit": "50MB"}"#)
            .await
            .status,
        204
    );
    until_alarms(&broker, |a| !a.disk).await;
    assert_eq!(
        get(&broker, "/api/nodes").await[0]["disk_free_limit"],
        50_000_000u64
    );
    // Relative to memory, as RabbitMQ's `mem_relative`.
    assert_eq!(
        send_json(&broker, "PUT", &disk, r#"{"mem_relative": 0.5}"#)
            .await
            .status,
        204
    );
    assert!(
        get(&broker, "/api/nodes").await[0]["disk_free_limit"]
            .as_u64()
            .unwrap()
            > 0
    );
    assert_eq!(
        send_json(&broker, "PUT", &disk, r#"{"limit": 0}"#)
            .await
            .status,
        204
    );

    assert_eq!(
        send_json(&broker, "PUT", &memory, r#"{"absolute": 1}"#)
            .await
            .status,
        204
    );
    until_alarms(&broker, |a| a.memory).await;
    assert_eq!(
        send_json(&broker, "PUT", &memory, r#"{"fraction": 0.9}"#)
            .await
            .status,
        204
    );
    until_alarms(&broker, |a| !a.memory).await;

    // RabbitMQ's validation text; nothing changes.
    let bad = send_json(&broker, "PUT", &memory, r#"{"fraction": 2}"#).await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.json()["reason"],
        "The threshold should be a fraction between 0.0 and 1.0"
    );
    let bad = send_json(&broker, "PUT", &disk, r#"{"limit": "12 parsecs"}"#).await;
    assert_eq!(bad.status, 400);
    let missing = send_json(
        &broker,
        "PUT",
        "/api/nodes/nobody@nowhere/disk-free-limit",
        r#"{"limit": 1}"#,
    )
    .await;
    assert_eq!(missing.status, 404);
    broker.shutdown().await;
}

#[tokio::test]
async fn health_checks_need_credentials() {
    let broker = start(Watermark::Absolute(0), 0).await;
    for path in [
        "/api/health/checks/alarms",
        "/api/health/checks/local-alarms",
        "/api/nodes",
    ] {
        let r = request(&broker, "GET", path, None).await;
        assert_eq!(r.status, 401, "{path}");
    }
    broker.shutdown().await;
}

mod blocking {
    use super::*;
    use futures::StreamExt;
    use minimq_client::{
        BasicConsumeOptions, BasicProperties, BlockedState, Confirmation, Connection, FieldTable,
        QueueDeclareOptions,
    };

    /// Waits until `conn` is told `want` (blocked or not).
    async fn until_blocked(conn: &Connection, want: bool) -> BlockedState {
        let mut rx = conn.blocked();
        within(async {
            loop {
                let now = rx.borrow_and_update().clone();
                if matches!(now, BlockedState::Blocked { .. }) == want {
                    return now;
                }
                rx.changed().await.expect("connection open");
            }
        })
        .await
    }

    #[tokio::test]
    async fn a_publisher_is_blocked_by_the_memory_alarm_while_a_consumer_drains_and_is_unblocked_after(
    ) {
        let broker = start(Watermark::Absolute(0), 0).await;
        let publisher = Connection::connect(&broker.amqp_url()).await.unwrap();
        let consumer = Connection::connect(&broker.amqp_url()).await.unwrap();
        let pch = publisher.open_channel().await.unwrap();
        pch.confirm_select().await.unwrap();
        pch.queue_declare("work", QueueDeclareOptions::default(), FieldTable::new())
            .await
            .unwrap();
        let props = BasicProperties::default();
        let m1 = pch
            .basic_publish("", "work", false, &props, &b"m1"[..])
            .await
            .unwrap();
        assert_eq!(within(m1).await.unwrap(), Confirmation::Ack);

        // The memory alarm: a watermark of one octet.
        broker.state().alarms.set_memory_limit(1);
        until_alarms(&broker, |a| a.memory).await;
        // The next publish is taken, and blocks the connection.
        let m2 = pch
            .basic_publish("", "work", false, &props, &b"m2"[..])
            .await
            .unwrap();
        let state = until_blocked(&publisher, true).await;
        assert_eq!(
            state,
            BlockedState::Blocked {
                reason: "low on memory".into()
            }
        );
        assert_eq!(within(m2).await.unwrap(), Confirmation::Ack);
        // Pipelined behind it: not read while blocked.
        let m3 = pch
            .basic_publish("", "work", false, &props, &b"m3"[..])
            .await
            .unwrap();
        assert_eq!(check(&broker, "/api/health/checks/alarms").await.0, 503);

        // A consumer on another connection keeps receiving and acking.
        let cch = consumer.open_channel().await.unwrap();
        let mut deliveries = cch
            .basic_consume(
                "work",
                "c",
                BasicConsumeOptions::default(),
                FieldTable::new(),
            )
            .await
            .unwrap();
        for want in ["m1", "m2"] {
            let d = within(deliveries.next()).await.unwrap().unwrap();
            assert_eq!(&d.body[..], want.as_bytes());
            d.ack().await.unwrap();
        }
        // A passive declare queues behind the acks: after it, the counts are settled.
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let q = cch
            .queue_declare("work", passive, FieldTable::new())
            .await
            .unwrap();
        assert_eq!(
            q.message_count, 0,
            "m3 was not read while the publisher was blocked"
        );
        assert_eq!(get(&broker, "/api/queues/%2F/work").await["messages"], 0);
        assert!(
            matches!(*publisher.blocked().borrow(), BlockedState::Blocked { .. }),
            "still blocked"
        );

        broker.state().alarms.set_memory_limit(u64::MAX);
        until_blocked(&publisher, false).await;
        assert_eq!(within(m3).await.unwrap(), Confirmation::Ack);
        let d = within(deliveries.next()).await.unwrap().unwrap();
        assert_eq!(&d.body[..], b"m3");
        d.ack().await.unwrap();
        drop(deliveries);
        let _ = consumer.close().await;
        let _ = publisher.close().await;
        broker.shutdown().await;
    }

    #[tokio::test]
    async fn a_connection_that_only_consumes_is_not_blocked_and_the_capability_is_advertised() {
        let broker = start(Watermark::Absolute(1), 0).await;
        assert!(broker.state().alarms.current().memory);
        let conn = Connection::connect(&broker.amqp_url()).await.unwrap();
        let caps = conn.server_properties().get("capabilities").cloned();
        let Some(minimq_client::FieldValue::Table(caps)) = caps else {
            panic!("capabilities missing")
        };
        assert_eq!(
            caps.get("connection.blocked").and_then(|v| v.as_bool()),
            Some(true)
        );
        let ch = conn.open_channel().await.unwrap();
        // Declares, gets and consumes are answered under the alarm.
        ch.queue_declare("q", QueueDeclareOptions::default(), FieldTable::new())
            .await
            .unwrap();
        assert!(ch.basic_get("q", true).await.unwrap().is_none());
        assert!(matches!(*conn.blocked().borrow(), BlockedState::Unblocked));
        let _ = conn.close().await;
        broker.shutdown().await;
    }
}
