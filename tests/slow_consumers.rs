//! A consumer that stops reading its socket costs the broker a bounded amount of memory:
//! with no-ack (or unlimited prefetch) the queue stops delivering to it once about 2 MiB
//! wait on its connection's way out, so its backlog stays in the queue (counted there,
//! pageable, visible in the management API) instead of in the broker's buffers; when it
//! reads again, everything arrives, once, in order.

mod common;

use common::raw::{declare, Client};
use minimq_broker::Broker;
use minimq_protocol::{BasicConsume, ConfirmSelect, Frame, Method};

const MESSAGES: usize = 4000;
const SIZE: usize = 16 * 1024;

#[tokio::test]
async fn a_no_ack_consumer_that_stops_reading_leaves_its_backlog_in_the_queue() {
    let broker = Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .heartbeat(0)
        .start()
        .await
        .expect("broker starts");
    let addr = broker.local_addr();
    let mut publisher = Client::open_channel1(addr).await;
    publisher.send(1, declare("slow")).await;
    assert!(matches!(
        publisher.method(1).await,
        Method::QueueDeclareOk(_)
    ));

    // The consumer: no-ack, then it stops reading (its socket fills, then the broker's
    // way out to it).
    let mut consumer = Client::open_channel1(addr).await;
    consumer
        .send(
            1,
            BasicConsume {
                queue: "slow".into(),
                consumer_tag: "c".into(),
                no_ack: true,
                ..Default::default()
            }
            .into(),
        )
        .await;
    assert!(matches!(
        consumer.method(1).await,
        Method::BasicConsumeOk(_)
    ));

    publisher
        .send(1, ConfirmSelect { nowait: false }.into())
        .await;
    assert!(matches!(
        publisher.method(1).await,
        Method::ConfirmSelectOk(_)
    ));
    static BODY: [u8; SIZE] = [7u8; SIZE];
    for _ in 0..MESSAGES {
        publisher.publish("slow", &BODY).await;
    }
    // Every publish confirmed: every message has reached the queue.
    let mut acked = 0u64;
    while acked < MESSAGES as u64 {
        match publisher.method(1).await {
            Method::BasicAck(a) => {
                acked = if a.multiple {
                    a.delivery_tag
                } else {
                    acked + 1
                }
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    // A passive declare counts what is still ready: most of 64 MiB. What left the queue
    // is what the consumer's socket buffers (the kernel's, a few MiB at most) and the
    // broker's bounded way out (2 MiB) hold.
    publisher
        .send(
            1,
            minimq_protocol::QueueDeclare {
                queue: "slow".into(),
                passive: true,
                ..Default::default()
            }
            .into(),
        )
        .await;
    let Method::QueueDeclareOk(ok) = publisher.method(1).await else {
        panic!("expected declare-ok")
    };
    let left = MESSAGES - ok.message_count as usize;
    assert!(
        left * SIZE < 24 * 1024 * 1024,
        "{left} messages ({} MiB) left the queue for a consumer that does not read",
        left * SIZE / (1024 * 1024)
    );

    // It reads again: every message arrives, whole and once.
    let (mut delivered, mut octets) = (0usize, 0usize);
    while octets < MESSAGES * SIZE {
        match consumer.frame().await {
            Frame::Method(1, Method::BasicDeliver(_)) => delivered += 1,
            Frame::Header(1, _) => {}
            Frame::Body(1, b) => {
                assert!(b.iter().all(|&x| x == 7));
                octets += b.len();
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((delivered, octets), (MESSAGES, MESSAGES * SIZE));
    drop((publisher, consumer));
    broker.shutdown().await;
}
