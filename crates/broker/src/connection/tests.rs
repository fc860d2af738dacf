//! A connection task that panics still cleans up after itself (`impl Drop for Conn`):
//! its unacked deliveries go back to their queues, it leaves the registry, and its
//! exclusive queues are deleted. The panic is made by a test-only hook: declaring
//! [`PANIC_QUEUE`] panics the task.

use std::time::Duration;

use futures::StreamExt;
use minimq_client::{
    BasicConsumeOptions, BasicProperties, Connection, FieldTable, QueueDeclareOptions,
};

use crate::Broker;

/// Declaring a queue of this name makes the connection task panic (test builds only).
pub(super) const PANIC_QUEUE: &str = "connection-task-panics-for-tests";

/// Waits for `f` to hold, checking after each yield; fails after 5 s.
async fn until(mut f: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("condition within 5 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_connection_task_gives_back_its_deliveries_and_leaves_the_registry() {
    let broker = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await
        .unwrap();
    let doomed = Connection::connect(&broker.amqp_url()).await.unwrap();
    let ch = doomed.open_channel().await.unwrap();
    ch.queue_declare("work", QueueDeclareOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let exclusive = QueueDeclareOptions {
        exclusive: true,
        ..Default::default()
    };
    ch.queue_declare("mine", exclusive, FieldTable::new())
        .await
        .unwrap();
    ch.basic_publish("", "work", false, BasicProperties::default(), &b"task"[..])
        .await
        .unwrap();
    let mut deliveries = ch
        .basic_consume(
            "work",
            "c",
            BasicConsumeOptions::default(),
            FieldTable::new(),
        )
        .await
        .unwrap();
    let _unacked = deliveries.next().await.unwrap().unwrap();
    let vhost = broker.state().vhosts.get("/").unwrap();
    let work = vhost.queue("work").unwrap();
    assert_eq!(work.counts().await.unwrap().unacked, 1);
    assert_eq!(broker.state().connections.len(), 1);

    // The task panics on this declare; the client sees its connection end.
    let other = doomed.open_channel().await.unwrap();
    let _ = other
        .queue_declare(
            PANIC_QUEUE,
            QueueDeclareOptions::default(),
            FieldTable::new(),
        )
        .await;

    until(|| broker.state().connections.is_empty()).await;
    let counts = work.counts().await.unwrap();
    assert_eq!((counts.ready, counts.unacked, counts.consumers), (1, 0, 0));
    until(|| vhost.queue("mine").is_none()).await;
    broker.shutdown().await;
}
