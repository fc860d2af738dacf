//! The queue core without sockets: a real queue task (`queue/actor.rs`), driven through
//! its `QueueHandle` the way a connection drives it. One task publishes N messages; the
//! bench task plays the consumer's connection: it receives `QueueEvent::Deliver`s on an
//! unbounded channel, as a connection does, and settles them with `QueueCommand::Settle`.
//! Throughput is messages through enqueue + dispatch + settle per second.
//!
//! ```text
//! cargo bench -p minimq-broker --bench queue_core
//! ```
//!
//! It runs on a current-thread tokio runtime, so the figure is the queue's own cost on
//! one core, without cross-thread wake-ups (the server's multi-thread runtime adds those).

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use minimq_broker::message::Message;
use minimq_broker::queue::{ConsumerSpec, Publish, QueueCommand, QueueEvent, QueueHandle};
use minimq_broker::vhost::{QueueSpec, VHost};
use minimq_protocol::{BasicProperties, FieldTable};
use tokio::sync::{mpsc, oneshot};

/// Messages per measured iteration.
const N: u64 = 20_000;

/// How the consumer side behaves.
#[derive(Clone, Copy)]
struct Mode {
    name: &'static str,
    no_ack: bool,
    prefetch: u32,
    /// Settle as soon as this many deliveries are held (1: one `basic.ack` per message;
    /// larger: like `multiple = true`). Whatever is held is also settled when no more
    /// deliveries are waiting.
    settle_every: usize,
}

const MODES: [Mode; 4] = [
    Mode {
        name: "no-ack",
        no_ack: true,
        prefetch: 0,
        settle_every: 0,
    },
    Mode {
        name: "prefetch 100, ack each",
        no_ack: false,
        prefetch: 100,
        settle_every: 1,
    },
    Mode {
        name: "prefetch 100, ack per 50",
        no_ack: false,
        prefetch: 100,
        settle_every: 50,
    },
    Mode {
        name: "prefetch 1, ack each",
        no_ack: false,
        prefetch: 1,
        settle_every: 1,
    },
];

static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Declares a fresh queue on `vhost` and registers one consumer; returns the queue and
/// the consumer's event receiver.
async fn setup(vhost: &VHost, mode: Mode) -> (QueueHandle, mpsc::UnboundedReceiver<QueueEvent>) {
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let spec = QueueSpec {
        name: format!("bench-{id}"),
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: FieldTable::new(),
    };
    let (queue, _) = vhost.declare_queue(spec, 1).await.expect("declare");
    let (sink, events) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let consumer = ConsumerSpec {
        id,
        tag: "ctag".into(),
        conn_id: 1,
        channel: 1,
        no_ack: mode.no_ack,
        exclusive: false,
        prefetch: mode.prefetch,
        priority: 0,
        channel_credit: None,
        arguments: minimq_protocol::FieldTable::new(),
        sink,
        // Nothing writes these deliveries out: a room that never fills.
        room: std::sync::Arc::new(minimq_broker::queue::OutputRoom::new(usize::MAX)),
    };
    assert!(
        queue
            .send(QueueCommand::Consume {
                consumer: Box::new(consumer),
                reply
            })
            .await
    );
    answer.await.expect("answer").expect("consume");
    (queue, events)
}

/// Publishes `n` messages and consumes them all; returns once the last is settled.
async fn run(vhost: &VHost, mode: Mode, n: u64) {
    let (queue, mut events) = setup(vhost, mode).await;
    let message = Arc::new(Message::new(
        "".into(),
        "bench".into(),
        BasicProperties::default(),
        Bytes::from_static(&[b'x'; 16]),
    ));
    let publisher = {
        let queue = queue.clone();
        tokio::spawn(async move {
            // One message per command: a connection that reads one publish at a time.
            for _ in 0..n {
                let publish = Publish {
                    message: message.clone(),
                    confirm: None,
                };
                queue.publish(vec![publish]).await;
            }
        })
    };
    let mut received = 0;
    let mut held = Vec::with_capacity(mode.settle_every.max(1));
    while received < n {
        let Some(QueueEvent::Deliver(d)) = events.recv().await else {
            panic!("the queue stopped delivering");
        };
        received += 1;
        black_box(&d.message);
        if mode.no_ack {
            continue;
        }
        held.push(d.msg_id);
        if held.len() >= mode.settle_every || events.is_empty() {
            let ids = std::mem::replace(&mut held, Vec::with_capacity(mode.settle_every));
            let cmd = QueueCommand::Settle {
                ids,
                requeue: false,
                rejected: false,
            };
            assert!(queue.send(cmd).await);
        }
    }
    publisher.await.expect("publisher");
    let (reply, answer) = oneshot::channel();
    let cmd = QueueCommand::Delete {
        if_unused: false,
        if_empty: false,
        reply,
    };
    assert!(queue.send(cmd).await);
    let _ = answer.await;
    vhost.forget_queue(&queue);
}

fn queue_core(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let vhost = VHost::new("/", None);
    let mut group = c.benchmark_group("queue enqueue+dispatch+settle");
    group.throughput(Throughput::Elements(N));
    group.sample_size(20);
    for mode in MODES {
        group.bench_function(mode.name, |b| b.iter(|| rt.block_on(run(&vhost, mode, N))));
    }
    group.finish();
}

criterion_group!(benches, queue_core);
criterion_main!(benches);
