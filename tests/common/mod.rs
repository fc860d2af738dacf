//! Shared helpers for the end-to-end tests: an embedded broker on an ephemeral port, a lapin
//! connection to it, the one timeout guard every wait goes through ([`within`] and
//! [`deadline`]), lapin shortcuts ([`amqp`]), a raw AMQP client ([`raw`]) and a raw HTTP
//! client for the management API ([`http`]).
#![allow(dead_code)]

pub mod amqp;
pub mod http;
pub mod raw;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use minimq_broker::{Broker, Config};

/// Guard for anything a test awaits: an event that does not happen within this fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a broker on `127.0.0.1:0`.
pub async fn start_broker() -> Broker {
    start_broker_with(Config::default()).await
}

/// Starts a broker with `config`, listening on `127.0.0.1:0` whatever `config` says.
pub async fn start_broker_with(config: Config) -> Broker {
    Broker::builder()
        .config(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..config
        })
        .start()
        .await
        .expect("broker starts")
}

/// Starts a broker on `127.0.0.1:0` keeping its durable data in `dir`.
pub async fn start_broker_in(dir: &Path) -> Broker {
    start_broker_with(Config {
        data_dir: Some(dir.to_path_buf()),
        ..Config::default()
    })
    .await
}

/// A fresh, empty data directory for one test, named for it: `name` is unique within its
/// test file, and the process id keeps concurrent runs apart.
pub fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minimq-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A fresh, empty data directory for a test of `file`, unique within the process (for
/// files whose tests need one each without naming them).
pub fn fresh_data_dir(file: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    data_dir(&format!("{file}-{n}"))
}

/// Starts a broker keeping its durable data in `dir`, with the management API; both on
/// ephemeral ports of 127.0.0.1.
pub async fn start_with_api_in(dir: &Path) -> Broker {
    start_broker_with(Config {
        data_dir: Some(dir.to_path_buf()),
        http: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    })
    .await
}

/// Opens a lapin connection (guest/guest, vhost `/`) to `broker`.
pub async fn connect(broker: &Broker) -> Connection {
    within(Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default(),
    ))
    .await
    .expect("connect to broker")
}

/// Awaits `f` for at most `limit`; the error says `what` did not happen in time. For the
/// tests that report failures as values (the model test shrinks them) or need a bound other
/// than [`TIMEOUT`].
pub async fn deadline<F: Future>(limit: Duration, what: &str, f: F) -> Result<F::Output, String> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| format!("timed out after {limit:?} waiting for {what}"))
}

/// Awaits `f`, panicking if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    match deadline(TIMEOUT, "an event", f).await {
        Ok(out) => out,
        Err(e) => panic!("{e}"),
    }
}

/// A passive `queue.declare`: the queue's counts, and proof that every command this
/// channel sent to the queue before it has been handled (the declare queues behind them).
pub async fn passive_declare(ch: &lapin::Channel, queue: &str) -> lapin::Queue {
    within(ch.queue_declare(
        queue,
        lapin::options::QueueDeclareOptions {
            passive: true,
            ..Default::default()
        },
        lapin::types::FieldTable::default(),
    ))
    .await
    .expect("passive declare")
}
