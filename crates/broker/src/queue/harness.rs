//! Test harness for the queue task without sockets or a broker: a queue task spawned on
//! a [`FakeHost`] (which records what the queue asks of its registry and routes every
//! dead letter to a task-less queue the test reads), driven with [`QueueCommand`]s the
//! way a connection drives it, and [`TestConsumer`]s whose event channels stand in for
//! connections.
//!
//! Waiting is on events only: a command's reply, a delivery. The tests run on tokio's
//! current-thread runtime, where the queue task runs a whole batch of commands (and
//! writes its stats) before the test task runs again, so once [`TestQueue::counts`]
//! answers, everything sent before it was handled and every delivery it caused is in
//! the consumers' channels.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use minimq_protocol::{BasicProperties, FieldTable};
use tokio::sync::{mpsc, oneshot};

use super::{
    actor, ChannelCredit, ConfirmTicket, ConsumerSpec, Delivery, GetResult, Publish, QueueArgs,
    QueueCommand, QueueCounts, QueueEvent, QueueHandle, QueueHost, QueueInbox,
};
use crate::error::AmqpResult;
use crate::message::Message;
use crate::store::{Store, StoreOptions};

/// A registry stand-in: every exchange routes to one queue without a task (`dead`),
/// whose inbox the test reads; `forgotten` lists the queues that deleted themselves.
pub struct FakeHost {
    dead: QueueHandle,
    dead_inbox: Mutex<QueueInbox>,
    /// `(exchange, routing key)` of every dead letter routed.
    pub routed: Mutex<Vec<(String, String)>>,
    /// Names of the queues that asked to be forgotten.
    pub forgotten: Mutex<Vec<Arc<str>>>,
    /// While set, exchanges route nowhere.
    pub unroutable: AtomicBool,
}

impl FakeHost {
    fn new() -> Arc<FakeHost> {
        let (dead, dead_inbox) = QueueHandle::new(
            "/".into(),
            "dead-letters".into(),
            false,
            None,
            false,
            FieldTable::new(),
            QueueArgs::default(),
            None,
        );
        Arc::new(FakeHost {
            dead,
            dead_inbox: Mutex::new(dead_inbox),
            routed: Mutex::default(),
            forgotten: Mutex::default(),
            unroutable: AtomicBool::new(false),
        })
    }

    /// The dead letters published so far, as they were sent (with their confirm
    /// tickets, for the test to answer).
    pub fn take_dead_letters(&self) -> Vec<Publish> {
        let mut inbox = self.dead_inbox.lock().unwrap();
        let mut out = Vec::new();
        while let Some(cmd) = inbox.try_recv() {
            let QueueCommand::Publish(batch) = cmd else {
                panic!("only publishes reach a dead-letter queue, got {cmd:?}");
            };
            self.dead.info().room.taken(batch.len());
            out.extend(batch);
        }
        out
    }

    /// The dead letters published so far: body and `x-first-death-reason`.
    pub fn dead_letters(&self) -> Vec<(String, String)> {
        let mut inbox = self.dead_inbox.lock().unwrap();
        let mut out = Vec::new();
        while let Some(cmd) = inbox.try_recv() {
            let QueueCommand::Publish(batch) = cmd else {
                panic!("only publishes reach a dead-letter queue, got {cmd:?}");
            };
            self.dead.info().room.taken(batch.len());
            for p in batch {
                let reason = p
                    .message
                    .properties
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("x-first-death-reason"))
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string();
                out.push((body(&p.message), reason));
            }
        }
        out
    }
}

impl QueueHost for FakeHost {
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        _headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) -> AmqpResult<()> {
        self.routed
            .lock()
            .unwrap()
            .push((exchange.to_string(), routing_key.to_string()));
        if !self.unroutable.load(Ordering::Relaxed) {
            out.push(self.dead.clone());
        }
        Ok(())
    }

    fn forget_queue(&self, queue: &QueueHandle) {
        self.forgotten.lock().unwrap().push(queue.name().clone());
    }
}

/// A store in a fresh directory, removed when dropped.
pub struct TempStore {
    /// The open store.
    pub store: Arc<Store>,
    dir: PathBuf,
}

impl TempStore {
    /// A store keeping at most `queue_memory` bytes of a queue's persistent messages in
    /// memory.
    pub fn open(queue_memory: u64) -> TempStore {
        static N: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "minimq-queue-harness-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(
            &dir,
            StoreOptions {
                queue_memory,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        TempStore { store, dir }
    }

    /// Turns the memory pressure signal on or off, as the memory monitor does.
    pub fn pressure(&self, on: bool) {
        self.store.pressure().set(on);
    }

    /// Live message records in the store (persistent ones and paged-out transient ones),
    /// once everything handed to it so far is applied.
    pub async fn live_records(&self) -> usize {
        assert!(self.store.sync().await);
        self.store.live_messages()
    }

    /// Damages the log record of the message whose body contains `marker` (one octet
    /// of it flipped: its checksum no longer matches), as a bad disk would. The record
    /// must be written already (its publish confirmed).
    pub fn corrupt(&self, marker: &[u8]) {
        let segments = self.dir.join("segments");
        for entry in std::fs::read_dir(&segments).unwrap() {
            let path = entry.unwrap().path();
            if flip_in(&path, marker) {
                return;
            }
        }
        panic!("no record holds {:?}", String::from_utf8_lossy(marker));
    }
}

fn flip_in(path: &Path, marker: &[u8]) -> bool {
    let mut bytes = std::fs::read(path).unwrap();
    let Some(at) = bytes.windows(marker.len()).position(|w| w == marker) else {
        return false;
    };
    bytes[at] ^= 0xff;
    // Written in place: the store keeps the segment open and reads through that handle.
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&bytes[at..at + 1], at as u64).unwrap();
    true
}

impl Drop for TempStore {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A queue task on a [`FakeHost`].
pub struct TestQueue {
    /// The queue.
    pub handle: QueueHandle,
    /// Its registry stand-in.
    pub host: Arc<FakeHost>,
    next_consumer: AtomicU64,
}

/// Declare arguments from pairs.
pub fn args(pairs: &[(&str, minimq_protocol::FieldValue)]) -> FieldTable {
    pairs.iter().map(|(k, v)| (*k, v.clone())).collect()
}

impl TestQueue {
    /// A transient queue "q" with declare arguments `arguments`.
    pub async fn start(arguments: FieldTable) -> TestQueue {
        Self::spawn(arguments, None).await
    }

    /// A durable queue "q" kept in `store`.
    pub async fn start_durable(arguments: FieldTable, store: &TempStore) -> TestQueue {
        Self::spawn(arguments, Some(store.store.clone())).await
    }

    /// A non-durable queue "q" of a broker whose store is `store` (where it pages out to
    /// under memory pressure).
    pub async fn start_beside(arguments: FieldTable, store: &TempStore) -> TestQueue {
        Self::spawn_with(arguments, Some(store.store.clone()), false).await
    }

    async fn spawn(arguments: FieldTable, store: Option<Arc<Store>>) -> TestQueue {
        let durable = store.is_some();
        Self::spawn_with(arguments, store, durable).await
    }

    async fn spawn_with(
        arguments: FieldTable,
        store: Option<Arc<Store>>,
        durable: bool,
    ) -> TestQueue {
        let parsed = QueueArgs::parse(crate::queue::QueueRef::new("q", "/"), &arguments).unwrap();
        let store_id = match &store {
            Some(s) if durable => Some(s.add_queue("/", "q", false, &arguments).await.unwrap()),
            _ => None,
        };
        let (handle, inbox) = QueueHandle::new(
            "/".into(),
            "q".into(),
            durable,
            None,
            false,
            arguments,
            parsed,
            store_id,
        );
        let host = FakeHost::new();
        actor::spawn(handle.clone(), inbox, host.clone(), store, Vec::new());
        TestQueue {
            handle,
            host,
            next_consumer: AtomicU64::new(1),
        }
    }

    /// Publishes a transient message with body `text`.
    pub async fn publish(&self, text: &str) {
        self.publish_with(text, BasicProperties::default()).await;
    }

    /// Publishes a message with body `text` and `properties`.
    pub async fn publish_with(&self, text: &str, properties: BasicProperties) {
        self.handle
            .publish(vec![Publish {
                message: message(text.as_bytes().to_vec(), properties),
                confirm: None,
            }])
            .await;
    }

    /// Publishes a persistent message with `body` and waits for its confirm (for a
    /// durable queue: until its record is written and synced).
    pub async fn publish_confirmed(&self, body: Vec<u8>) {
        let properties = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        self.publish_confirmed_with(body, properties).await;
    }

    /// Publishes a message with `body` and `properties` and waits for its confirm.
    pub async fn publish_confirmed_with(&self, body: Vec<u8>, properties: BasicProperties) {
        let (sink, mut confirms) = mpsc::unbounded_channel();
        self.handle
            .publish(vec![Publish {
                message: message(body, properties),
                confirm: Some(ConfirmTicket {
                    sink,
                    channel: 1,
                    seq: 1,
                }),
            }])
            .await;
        // Answered by the store's writer thread once the record is synced.
        match confirms.recv().await {
            Some(QueueEvent::Confirm { ok: true, .. }) => {}
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// Adds a consumer that acks (`prefetch` 0 = unlimited).
    pub async fn consume(&self, prefetch: u32) -> TestConsumer {
        self.consume_with(Consumer {
            prefetch,
            ..Consumer::default()
        })
        .await
    }

    /// Adds a consumer as `c` describes it.
    pub async fn consume_with(&self, c: Consumer) -> TestConsumer {
        let id = self.next_consumer.fetch_add(1, Ordering::Relaxed);
        let (sink, events) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        let consumer = ConsumerSpec {
            id,
            tag: format!("c{id}").into(),
            conn_id: 1,
            channel: c.channel,
            no_ack: c.no_ack,
            exclusive: false,
            prefetch: c.prefetch,
            priority: 0,
            channel_credit: c.channel_credit,
            arguments: FieldTable::new(),
            sink,
            room: c
                .room
                .unwrap_or_else(|| Arc::new(super::OutputRoom::new(usize::MAX))),
        };
        assert!(
            self.handle
                .send(QueueCommand::Consume {
                    consumer: Box::new(consumer),
                    reply,
                })
                .await
        );
        answer.await.unwrap().unwrap();
        TestConsumer { id, events }
    }

    /// Cancels consumer `c`.
    pub async fn cancel(&self, c: &TestConsumer) {
        let (reply, answer) = oneshot::channel();
        assert!(
            self.handle
                .send(QueueCommand::Cancel {
                    consumer_id: c.id,
                    reply: Some(reply),
                })
                .await
        );
        answer.await.unwrap();
    }

    /// Acks deliveries.
    pub fn ack(&self, deliveries: &[&Delivery]) {
        assert!(self
            .handle
            .send_acks(deliveries.iter().map(|d| d.msg_id).collect()));
    }

    /// Rejects deliveries, requeueing them or not.
    pub async fn reject(&self, deliveries: &[&Delivery], requeue: bool) {
        let cmd = QueueCommand::Settle {
            ids: deliveries.iter().map(|d| d.msg_id).collect(),
            requeue,
            rejected: true,
        };
        assert!(self.handle.send(cmd).await);
    }

    /// Settles messages by id.
    pub async fn settle(&self, ids: Vec<u64>, requeue: bool, rejected: bool) {
        let cmd = QueueCommand::Settle {
            ids,
            requeue,
            rejected,
        };
        assert!(self.handle.send(cmd).await);
    }

    /// Channel `channel` closed holding `unacked` (as its connection reports it).
    pub async fn close_channel(&self, channel: u16, unacked: Vec<u64>) {
        let cmd = QueueCommand::ChannelClosed {
            conn_id: 1,
            channel,
            requeue: unacked.into_boxed_slice(),
        };
        assert!(self.handle.send(cmd).await);
    }

    /// Takes every ready message with `basic.get` (no ack): their bodies, in order.
    pub async fn drain(&self) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(got) = self.get(true).await {
            out.push(body(&got.message));
        }
        out
    }

    /// Waits until the queue task has ended (its inbox is closed).
    pub async fn stopped(&self) {
        tokio::time::timeout(Duration::from_secs(5), self.handle.0.tx.closed())
            .await
            .expect("the queue task ends");
    }

    /// Tells the queue a channel's shared credit grew.
    pub async fn credit_available(&self) {
        assert!(self.handle.send(QueueCommand::CreditAvailable).await);
    }

    /// `basic.get`.
    pub async fn get(&self, no_ack: bool) -> Option<GetResult> {
        let (reply, answer) = oneshot::channel();
        assert!(self.handle.send(QueueCommand::Get { no_ack, reply }).await);
        answer.await.expect("the queue task answers a get")
    }

    /// The queue's counts; also a barrier (see the module docs).
    pub async fn counts(&self) -> QueueCounts {
        self.handle.counts().await.expect("the queue task is alive")
    }

    /// A live counter of the queue (read after a [`TestQueue::counts`] barrier).
    pub fn stat(&self, counter: impl Fn(&super::QueueStats) -> &AtomicU64) -> u64 {
        counter(&self.handle.info().stats).load(Ordering::Relaxed)
    }
}

/// How a test consumer behaves.
#[derive(Default)]
pub struct Consumer {
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u32,
    /// Deliveries need no ack.
    pub no_ack: bool,
    /// Its channel.
    pub channel: u16,
    /// The channel's shared credit (`basic.qos global`).
    pub channel_credit: Option<Arc<ChannelCredit>>,
    /// Its connection's room on the way out; `None`: one that never fills (no writer
    /// takes from it here).
    pub room: Option<Arc<super::OutputRoom>>,
}

/// A consumer's end of its connection's event channel.
pub struct TestConsumer {
    /// Its id (registration order).
    pub id: u64,
    events: mpsc::UnboundedReceiver<QueueEvent>,
}

impl TestConsumer {
    /// The next delivery (panics on another event, or none within 5 s).
    pub async fn next(&mut self) -> Delivery {
        let event = tokio::time::timeout(Duration::from_secs(5), self.events.recv())
            .await
            .expect("a delivery in time")
            .expect("the queue keeps the sink");
        match event {
            QueueEvent::Deliver(d) => d,
            other => panic!("expected a delivery, got {other:?}"),
        }
    }

    /// The bodies of the deliveries already received (after a [`TestQueue::counts`]
    /// barrier: everything sent before it).
    pub fn received(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(event) = self.events.try_recv() {
            match event {
                QueueEvent::Deliver(d) => out.push(body(&d.message)),
                other => panic!("expected a delivery, got {other:?}"),
            }
        }
        out
    }
}

/// A message for queue "q".
pub fn message(body: Vec<u8>, properties: BasicProperties) -> Arc<Message> {
    Arc::new(Message::new(
        "".into(),
        "q".into(),
        properties,
        Bytes::from(body),
    ))
}

/// A message's body as text.
pub fn body(m: &Message) -> String {
    String::from_utf8_lossy(&m.body).into_owned()
}
