//! Durable metadata (queues, exchanges, bindings) over real TCP with lapin: what a
//! declare costs on disk, what survives a restart or a crash, what a failed metadata
//! write leaves behind, and that the metadata file stays bounded under churn.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{data_dir, within};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use minimq_broker::Broker;

async fn start(dir: &Path, fail: Option<Arc<AtomicBool>>) -> Broker {
    let config = minimq_broker::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(dir.to_path_buf()),
        fail_syncs: fail,
        ..Default::default()
    };
    Broker::builder()
        .config(config)
        .start()
        .await
        .expect("broker starts")
}

async fn open(broker: &Broker) -> (Connection, Channel) {
    let conn = within(Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default(),
    ))
    .await
    .expect("connect");
    let ch = conn.create_channel().await.expect("channel");
    (conn, ch)
}

/// Octets in the data directory's own files (the metadata), not the message log's
/// segments nor the lock file.
fn metadata_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()) && e.file_name() != "LOCK")
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

/// Octets this process has passed to `write` and its kin so far (`/proc/self/io`):
/// what the broker under test wrote to files, plus socket traffic.
fn written_by_process() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").expect("/proc/self/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("wchar in /proc/self/io")
}

fn durable() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

async fn exchange_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match within(ch.exchange_declare(name, ExchangeKind::Direct, passive, FieldTable::default()))
        .await
    {
        Ok(()) => true,
        Err(e) => {
            assert!(e.to_string().contains("NOT_FOUND"), "{name}: {e}");
            false
        }
    }
}

async fn queue_exists(conn: &Connection, name: &str) -> bool {
    let ch = conn.create_channel().await.unwrap();
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    match within(ch.queue_declare(name, passive, FieldTable::default())).await {
        Ok(_) => true,
        Err(e) => {
            assert!(e.to_string().contains("NOT_FOUND"), "{name}: {e}");
            false
        }
    }
}

/// Publishes `body` to `exchange` with `key` (persistent, confirmed) and answers the
/// body `queue` then holds.
async fn route_through(ch: &Channel, exchange: &str, key: &str, queue: &str) -> Option<Vec<u8>> {
    let props = BasicProperties::default().with_delivery_mode(2);
    let c = ch
        .basic_publish(
            exchange,
            key,
            BasicPublishOptions::default(),
            key.as_bytes(),
            props,
        )
        .await
        .unwrap();
    assert!(within(c).await.unwrap().is_ack());
    within(ch.basic_get(queue, BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
        .map(|m| m.delivery.data)
}

/// A durable declare whose metadata sync fails is refused with 541 and leaves nothing
/// behind: the object does not exist afterwards, nor after a restart once the disk works
/// again and other changes were written.
#[tokio::test]
async fn a_durable_declare_whose_sync_fails_is_refused_and_leaves_nothing_behind() {
    let dir = data_dir("failed-sync");
    let fail = Arc::new(AtomicBool::new(false));
    let broker = start(&dir, Some(fail.clone())).await;
    let (conn, ch) = open(&broker).await;
    ch.exchange_declare(
        "before",
        ExchangeKind::Direct,
        durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();

    fail.store(true, Ordering::SeqCst);
    let err = ch
        .exchange_declare(
            "doomed-x",
            ExchangeKind::Fanout,
            durable(),
            FieldTable::default(),
        )
        .await
        .expect_err("a durable exchange that may not be on disk is refused");
    assert!(
        err.to_string()
            .contains("cannot record exchange 'doomed-x'"),
        "{err}"
    );
    // 541 is a connection error: lapin may still call the connection open for a moment
    // while it closes, so the next step always starts on a new one.
    drop(conn);
    let conn = open(&broker).await.0;
    let ch = conn.create_channel().await.unwrap();
    let err = ch
        .queue_declare(
            "doomed-q",
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect_err("a durable queue that may not be on disk is refused");
    assert!(
        err.to_string().contains("cannot record queue 'doomed-q'"),
        "{err}"
    );
    fail.store(false, Ordering::SeqCst);

    drop(conn);
    let conn = open(&broker).await.0;
    assert!(
        !exchange_exists(&conn, "doomed-x").await,
        "refused, so absent"
    );
    assert!(!queue_exists(&conn, "doomed-q").await, "refused, so absent");
    // A later change is written while the disk works again.
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "after",
        ExchangeKind::Direct,
        durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    broker.shutdown().await;

    let broker = start(&dir, None).await;
    let (conn, _ch) = open(&broker).await;
    assert!(exchange_exists(&conn, "before").await);
    assert!(exchange_exists(&conn, "after").await);
    assert!(
        !exchange_exists(&conn, "doomed-x").await,
        "a refused exchange does not come back after a restart"
    );
    assert!(
        !queue_exists(&conn, "doomed-q").await,
        "a refused queue does not come back after a restart"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Thousands of durable exchanges, each bound to a durable queue, declared through one
/// connection: each declare writes a bounded number of octets (the metadata is not
/// rewritten whole on every change), the metadata file grows linearly, and everything
/// survives a graceful restart and a crash.
#[tokio::test]
async fn thousands_of_durable_exchanges_and_bindings_cost_linear_bytes_and_survive() {
    const N: usize = 1500;
    let dir = data_dir("many");
    let broker = start(&dir, None).await;
    let (_conn, ch) = open(&broker).await;
    ch.queue_declare(
        "sink",
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let written_before = written_by_process();
    for i in 0..N {
        let x = format!("x-{i}");
        ch.exchange_declare(&x, ExchangeKind::Direct, durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            "sink",
            &x,
            &format!("k-{i}"),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    }
    let written = written_by_process() - written_before;
    let changes = 2 * N as u64;
    // A declare or bind is one record of well under 100 octets plus its frames on the
    // socket (both ends are in this process); rewriting the metadata whole each time
    // writes octets in proportion to everything declared before.
    assert!(
        written < changes * 1024,
        "{written} octets written for {changes} changes: more than O(1) each"
    );
    let size = metadata_size(&dir);
    assert!(
        size < changes * 200,
        "metadata of {size} octets for {changes} changes"
    );
    broker.shutdown().await;

    let check = |broker: Broker| async move {
        let (conn, ch) = open(&broker).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        for i in 0..N {
            assert!(exchange_exists(&conn, &format!("x-{i}")).await, "x-{i}");
        }
        for i in (0..N).step_by(97).chain([N - 1]) {
            let key = format!("k-{i}");
            assert_eq!(
                route_through(&ch, &format!("x-{i}"), &key, "sink").await,
                Some(key.clone().into_bytes()),
                "the binding of x-{i} survived"
            );
        }
        broker
    };
    let broker = check(start(&dir, None).await).await;
    broker.crash().await;
    let broker = check(start(&dir, None).await).await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Many declare / bind / unbind / delete cycles keep the metadata file bounded (it is
/// compacted), and the objects that remain are intact after a restart.
#[tokio::test]
async fn declare_and_delete_churn_keeps_the_metadata_bounded_and_intact() {
    const CYCLES: usize = 300;
    // Long names: the records are large, so few cycles (each change is synced) write
    // well past the bound below.
    let pad = "n".repeat(200);
    let dir = data_dir("churn");
    let broker = start(&dir, None).await;
    let (_conn, ch) = open(&broker).await;
    let q = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    ch.queue_declare("keep-q", q, FieldTable::default())
        .await
        .unwrap();
    ch.exchange_declare(
        "keep-x",
        ExchangeKind::Topic,
        durable(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        "keep-q",
        "keep-x",
        "keep.#",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let mut largest = 0;
    for i in 0..CYCLES {
        let x = format!("tmp-x-{i}-{pad}");
        let qn = format!("tmp-q-{i}-{pad}");
        ch.exchange_declare(&x, ExchangeKind::Direct, durable(), FieldTable::default())
            .await
            .unwrap();
        ch.queue_declare(&qn, q, FieldTable::default())
            .await
            .unwrap();
        ch.queue_bind(
            &qn,
            &x,
            "k",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_bind(
            &qn,
            "keep-x",
            "k",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
        ch.queue_unbind(&qn, "keep-x", "k", FieldTable::default())
            .await
            .unwrap();
        ch.exchange_delete(&x, ExchangeDeleteOptions::default())
            .await
            .unwrap();
        ch.queue_delete(&qn, QueueDeleteOptions::default())
            .await
            .unwrap();
        largest = largest.max(metadata_size(&dir));
    }
    // Compacted once past twice the live set plus a 64 KiB floor; without compaction
    // the 2,100 records written here would take over 600 KiB.
    assert!(
        largest < 128 * 1024,
        "the metadata reached {largest} octets for three live objects"
    );
    broker.shutdown().await;

    let broker = start(&dir, None).await;
    let (conn, ch) = open(&broker).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    assert!(exchange_exists(&conn, "keep-x").await);
    assert!(queue_exists(&conn, "keep-q").await);
    for i in [0, CYCLES / 2, CYCLES - 1] {
        assert!(!exchange_exists(&conn, &format!("tmp-x-{i}-{pad}")).await);
        assert!(!queue_exists(&conn, &format!("tmp-q-{i}-{pad}")).await);
    }
    assert_eq!(
        route_through(&ch, "keep-x", "keep.it", "keep-q").await,
        Some(b"keep.it".to_vec())
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
