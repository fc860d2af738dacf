//! Shared helpers for the end-to-end tests: an embedded broker on an ephemeral port and a
//! lapin connection to it. Kept small and stable; test files add their own helpers.
#![allow(dead_code)]

pub mod http;
pub mod raw;

use std::future::Future;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use minimq_broker::Broker;

/// Guard for anything a test awaits: an event that does not happen within this fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Starts a broker on `127.0.0.1:0`.
pub async fn start_broker() -> Broker {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .expect("broker starts")
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

/// Awaits `f`, panicking if it takes longer than [`TIMEOUT`].
pub async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .expect("timed out waiting for an event")
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
