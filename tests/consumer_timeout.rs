//! Consumer timeouts end to end: a delivery not acknowledged in time closes its channel
//! with RabbitMQ's `406 PRECONDITION_FAILED` text, within half a second of the deadline
//! (RabbitMQ checks once a minute); the message goes back to its queue flagged
//! redelivered, and the connection and its other channels stay up. The timeout comes
//! from `--consumer-timeout`, the queue's `x-consumer-timeout` (argument or policy) or
//! the consumer's own argument.
//!
//! The broker shares the test's runtime on a paused clock: time advances only when every
//! task waits on a timer, so the deadline is measured exactly, not slept through (each
//! timeout is below the 5 s guard of `common::within`, which runs on the same clock).

mod common;

use std::time::Duration;

use common::raw::{declare, Client};
use minimq_broker::{Broker, Config};
use minimq_protocol::{BasicAck, BasicConsume, FieldTable, Frame, Method, QueueDeclare};
use tokio::time::Instant;

/// How long after its deadline an overdue delivery's channel is closed at the latest
/// (the broker's check interval).
const CHECK: Duration = Duration::from_millis(500);

async fn start(consumer_timeout: Option<Duration>) -> Broker {
    Broker::builder()
        .config(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            heartbeat: 0,
            consumer_timeout,
            ..Config::default()
        })
        .start()
        .await
        .expect("broker starts")
}

fn consume(queue: &str, arguments: FieldTable) -> Method {
    BasicConsume {
        queue: queue.into(),
        consumer_tag: "c".into(),
        arguments,
        ..Default::default()
    }
    .into()
}

/// Waits for a `basic.deliver` on channel 1 and the content after it: its tag and
/// redelivered flag.
async fn delivery(c: &mut Client) -> (u64, bool) {
    let Method::BasicDeliver(d) = c.method(1).await else {
        panic!("expected basic.deliver")
    };
    let Frame::Header(1, _) = c.frame().await else {
        panic!("expected a content header")
    };
    let Frame::Body(1, _) = c.frame().await else {
        panic!("expected a content body")
    };
    (d.delivery_tag, d.redelivered)
}

/// Expects channel 1 closed for the consumer timeout `ms`, at least `ms` after `since`
/// and at most [`CHECK`] after that.
async fn expect_timeout_close(c: &mut Client, ms: u64, since: Instant) {
    c.expect_channel_close(
        1,
        406,
        &format!(
            "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value used: {ms} ms. This timeout value can be configured, see consumers doc guide to learn more"
        ),
        0,
        0,
    )
    .await;
    let took = since.elapsed();
    let deadline = Duration::from_millis(ms);
    assert!(
        took >= deadline,
        "closed after {took:?}, before the deadline"
    );
    assert!(
        took <= deadline + CHECK + Duration::from_millis(50),
        "closed {took:?} after the delivery"
    );
}

#[tokio::test(start_paused = true)]
async fn an_unacked_delivery_closes_its_channel_after_the_broker_timeout_and_is_redelivered() {
    let broker = start(Some(Duration::from_millis(3000))).await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, declare("work")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.publish("work", b"task").await;
    c.send(1, consume("work", FieldTable::new())).await;
    assert!(matches!(c.method(1).await, Method::BasicConsumeOk(_)));
    let (_, redelivered) = delivery(&mut c).await;
    let delivered_at = Instant::now();
    assert!(!redelivered);
    expect_timeout_close(&mut c, 3000, delivered_at).await;
    // The connection stays up; the message is back, flagged redelivered.
    c.open_channel(1).await;
    let (_, redelivered, body) = c.get("work", true).await;
    assert!(redelivered);
    assert_eq!(&body[..], b"task");
    drop(c);
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn an_ack_in_time_keeps_the_channel_and_zero_disables_the_timeout() {
    let broker = start(Some(Duration::from_millis(1000))).await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, declare("work")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.publish("work", b"a").await;
    c.send(1, consume("work", FieldTable::new())).await;
    assert!(matches!(c.method(1).await, Method::BasicConsumeOk(_)));
    let (tag, _) = delivery(&mut c).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.send(
        1,
        BasicAck {
            delivery_tag: tag,
            multiple: false,
        }
        .into(),
    )
    .await;
    // Well past the deadline: the channel is still open (a declare is answered).
    tokio::time::sleep(Duration::from_millis(3000)).await;
    c.send(1, declare("work")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    drop(c);
    broker.shutdown().await;

    // --consumer-timeout 0 (None): an unacked delivery waits as long as it takes.
    let broker = start(None).await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, declare("work")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.publish("work", b"b").await;
    c.send(1, consume("work", FieldTable::new())).await;
    assert!(matches!(c.method(1).await, Method::BasicConsumeOk(_)));
    delivery(&mut c).await;
    tokio::time::sleep(Duration::from_secs(7200)).await;
    c.send(1, declare("work")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    drop(c);
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn the_queue_argument_and_the_consumer_argument_override_the_broker_timeout() {
    let broker = start(None).await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    let mut args = FieldTable::new();
    args.insert("x-consumer-timeout", 2000i32);
    c.send(
        1,
        QueueDeclare {
            queue: "short".into(),
            arguments: args,
            ..Default::default()
        }
        .into(),
    )
    .await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.publish("short", b"x").await;
    c.send(1, consume("short", FieldTable::new())).await;
    assert!(matches!(c.method(1).await, Method::BasicConsumeOk(_)));
    delivery(&mut c).await;
    expect_timeout_close(&mut c, 2000, Instant::now()).await;

    // The consumer's own argument (RabbitMQ 4) on a queue without one.
    c.open_channel(1).await;
    c.send(1, declare("plain")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.publish("plain", b"y").await;
    let mut args = FieldTable::new();
    args.insert("x-consumer-timeout", 1500i32);
    c.send(1, consume("plain", args)).await;
    assert!(matches!(c.method(1).await, Method::BasicConsumeOk(_)));
    delivery(&mut c).await;
    expect_timeout_close(&mut c, 1500, Instant::now()).await;
    drop(c);
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_policy_set_while_a_consumer_runs_times_out_its_next_deliveries() {
    let broker = start(None).await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, declare("live")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.send(1, consume("live", FieldTable::new())).await;
    assert!(matches!(c.method(1).await, Method::BasicConsumeOk(_)));
    c.publish("live", b"before").await;
    let (tag, _) = delivery(&mut c).await;
    c.send(
        1,
        BasicAck {
            delivery_tag: tag,
            multiple: false,
        }
        .into(),
    )
    .await;

    // The consumer started with no timeout at all; the policy applies to what it is
    // delivered from now on.
    let policy = minimq_broker::policy::Policy::parse(
        "ct",
        &serde_json::json!({"pattern": "^live$", "definition": {"consumer-timeout": 1000}}),
    )
    .expect("a valid policy");
    let vhost = broker.state().vhosts.get("/").expect("the default vhost");
    vhost
        .put_policy(minimq_broker::policy::Scope::Policy, policy)
        .await
        .expect("policy stored");
    c.publish("live", b"after").await;
    delivery(&mut c).await;
    expect_timeout_close(&mut c, 1000, Instant::now()).await;
    drop(c);
    broker.shutdown().await;
}
