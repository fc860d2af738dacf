//! Transient messages paged to disk under memory pressure, end to end with a real
//! `minimq-server` process and a small memory high watermark: a flood of three times the
//! watermark of transient messages into a queue nobody consumes from finishes (the
//! publisher may be blocked for a while, never for good), the broker's peak resident
//! memory (`VmHWM`) stays under twice the watermark, a consumer then gets every message
//! exactly once and in order, and after a restart the paged-out messages are gone and
//! their segments deleted. Every wait is on an event with a deadline.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{free_port, spawn_server};

use futures::StreamExt;
use minimq_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};

/// The broker's memory high watermark in these tests.
const WATERMARK_MIB: u64 = 96;
/// The same, as the flag takes it.
const WATERMARK: &str = "96MiB";
/// One message's body.
const BODY: usize = 1024;
/// The flood: three times the watermark of bodies. The messages alone would be far over
/// the watermark, and their index fits under it with room to spare (see README, "Running
/// it for real", for what each costs); the memory paging frees is handed back to the
/// system while memory is under pressure, so the alarm it raises clears.
const MESSAGES: usize = 3 * WATERMARK_MIB as usize * 1024 * 1024 / BODY;
/// Deadline of the flood, and of the drain (a debug build on a busy machine).
const DEADLINE: Duration = Duration::from_secs(240);

/// A broker over `dir` with the tests' watermark, and a connection to it as guest.
async fn start_and_connect(dir: &Path) -> (common::Server, Connection) {
    let addr = free_port();
    let server = spawn_server(addr, dir, &watermark_flag());
    let conn = Connection::connect(&format!("amqp://guest:guest@{addr}/%2f"))
        .await
        .expect("connect");
    (server, conn)
}

/// The flag that sets the tests' watermark.
fn watermark_flag() -> [&'static str; 2] {
    ["--memory-high-watermark", WATERMARK]
}

/// A `/proc/<pid>/status` field in octets (`VmHWM`: peak resident memory).
fn status_octets(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    kib * 1024
}

/// Octets of segment files in the data directory.
fn segment_octets(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn body(i: usize) -> Vec<u8> {
    let mut b = format!("{i:010}").into_bytes();
    b.resize(BODY, b'.');
    b
}

/// Publishes the flood of transient messages into `queue` and waits until the queue
/// holds all of them.
async fn flood(conn: &Connection, queue: &str) {
    let ch = conn.open_channel().await.unwrap();
    let transient = BasicProperties {
        delivery_mode: Some(1),
        ..BasicProperties::default()
    };
    let started = Instant::now();
    tokio::time::timeout(DEADLINE, async {
        for i in 0..MESSAGES {
            ch.basic_publish("", queue, false, transient.clone(), body(i))
                .await
                .unwrap();
        }
    })
    .await
    .expect("the publisher is never blocked for good");
    // Published is not yet queued: wait for the queue to count every message.
    let passive = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    loop {
        let q = ch
            .queue_declare(queue, passive, FieldTable::new())
            .await
            .unwrap();
        if q.message_count as usize == MESSAGES {
            break;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "only {} queued",
            q.message_count
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_transient_messages_pages_to_disk_and_drains_exactly_once_in_order() {
    let dir = std::env::temp_dir().join(format!("minimq-paging-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(
        "paging-flood",
        QueueDeclareOptions::default(),
        FieldTable::new(),
    )
    .await
    .unwrap();
    flood(&conn, "paging-flood").await;
    let watermark = WATERMARK_MIB * 1024 * 1024;
    let peak = status_octets(server.id(), "VmHWM:");
    eprintln!(
        "{MESSAGES} messages queued; peak RSS {} MiB, segments {} MiB",
        peak >> 20,
        segment_octets(&dir) >> 20
    );
    assert!(
        segment_octets(&dir) > watermark,
        "the flood went to disk: {} octets of segments",
        segment_octets(&dir)
    );
    assert!(
        peak < 2 * watermark,
        "peak RSS {peak} octets under twice the watermark {watermark}"
    );

    // The drain: every message once, in publish order.
    ch.basic_qos(1000, false).await.unwrap();
    let mut consumer = ch
        .basic_consume(
            "paging-flood",
            "drain",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, async {
        for i in 0..MESSAGES {
            let d = consumer.next().await.expect("a delivery").unwrap();
            assert_eq!(&d.body[..10], format!("{i:010}").as_bytes(), "message {i}");
            assert!(!d.redelivered);
            ch.basic_ack(d.delivery_tag, false).await.unwrap();
        }
    })
    .await
    .expect("the drain ends");
    let q = ch
        .queue_declare(
            "paging-flood",
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::new(),
        )
        .await
        .unwrap();
    assert_eq!(q.message_count, 0, "nothing more than the flood");
    let peak = status_octets(server.id(), "VmHWM:");
    assert!(
        peak < 2 * watermark,
        "peak RSS {peak} octets, drain included, under twice the watermark"
    );

    drop(conn);
    server.kill();

    // A second flood, into a durable queue of a fresh broker, then a restart: transient
    // messages do not survive it (as in RabbitMQ), and the segments they were paged to
    // are deleted.
    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare("paging-durable", durable, FieldTable::new())
        .await
        .unwrap();
    flood(&conn, "paging-durable").await;
    assert!(segment_octets(&dir) > watermark);
    drop(conn);
    server.kill();
    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    let q = ch
        .queue_declare("paging-durable", durable, FieldTable::new())
        .await
        .unwrap();
    assert_eq!(
        q.message_count, 0,
        "transient messages are gone after a restart"
    );
    // Deleted by the store's first round after the start, on its own thread.
    let started = Instant::now();
    while segment_octets(&dir) > 1024 * 1024 {
        assert!(
            started.elapsed() < DEADLINE,
            "segments of paged-out messages deleted: {} octets left",
            segment_octets(&dir)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    conn.close().await.unwrap();
    server.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
