//! Command-level tests of the queue task: a real task driven with [`QueueCommand`]s on a
//! fake registry, with fake consumers (see [`super::harness`]); no sockets, no broker.
//! Time-dependent ones run on tokio's paused clock.

use std::sync::Arc;
use std::time::Duration;

use minimq_protocol::{BasicProperties, FieldTable, FieldValue};

use super::harness::{args, body, Consumer, TempStore, TestConsumer, TestQueue};
use super::{ChannelCredit, QueueCounts};

fn counts(ready: u32, unacked: u32, consumers: u32) -> QueueCounts {
    QueueCounts {
        ready,
        unacked,
        consumers,
    }
}

fn dlx() -> (&'static str, FieldValue) {
    ("x-dead-letter-exchange", FieldValue::from("dlx"))
}

/// Consumers with credit take turns: two consumers and five messages split 1,3,5 / 2,4.
#[tokio::test]
async fn consumers_take_turns() {
    let q = TestQueue::start(FieldTable::new()).await;
    let mut a = q.consume(0).await;
    let mut b = q.consume(0).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    assert_eq!(q.counts().await, counts(0, 5, 2));
    assert_eq!(a.received(), ["m1", "m3", "m5"]);
    assert_eq!(b.received(), ["m2", "m4"]);
}

/// A consumer gets no more than its prefetch unacked; an ack gives it the next one.
#[tokio::test]
async fn a_consumer_holds_at_most_its_prefetch() {
    let q = TestQueue::start(FieldTable::new()).await;
    let mut c = q.consume(2).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    assert_eq!(q.counts().await, counts(3, 2, 1));
    let first = c.next().await;
    assert_eq!(body(&first.message), "m1");
    assert_eq!(c.received(), ["m2"]);
    q.ack(&[&first]);
    assert_eq!(q.counts().await, counts(2, 2, 1));
    assert_eq!(c.received(), ["m3"]);
}

/// A channel's shared credit (`basic.qos global`) bounds its consumers together; more
/// credit (the channel settled some) resumes them.
#[tokio::test]
async fn consumers_of_a_channel_share_its_credit() {
    let q = TestQueue::start(FieldTable::new()).await;
    let credit = Arc::new(ChannelCredit::default());
    credit.set_limit(3);
    let on_channel = || Consumer {
        channel: 1,
        channel_credit: Some(credit.clone()),
        ..Consumer::default()
    };
    let mut a = q.consume_with(on_channel()).await;
    let mut b = q.consume_with(on_channel()).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    assert_eq!(q.counts().await, counts(2, 3, 2));
    assert_eq!(a.received(), ["m1", "m3"]);
    assert_eq!(b.received(), ["m2"]);
    assert!(!credit.available());
    // The channel acked one delivery: it gives the unit back and tells the queue.
    credit.release(1);
    q.credit_available().await;
    assert_eq!(q.counts().await, counts(1, 4, 2));
    assert_eq!([a.received(), b.received()].concat(), ["m4"]);
}

/// A requeued message goes back to its original place, not to the tail, marked
/// redelivered.
#[tokio::test]
async fn a_requeued_message_returns_to_its_place() {
    let q = TestQueue::start(FieldTable::new()).await;
    for n in 1..=4 {
        q.publish(&format!("m{n}")).await;
    }
    let m1 = q.get(false).await.unwrap();
    let m2 = q.get(false).await.unwrap();
    let m3 = q.get(false).await.unwrap();
    assert_eq!(body(&m3.message), "m3");
    q.settle(vec![m3.msg_id], true, false).await;
    q.settle(vec![m1.msg_id], true, false).await;
    q.settle(vec![m2.msg_id], false, false).await;
    let mut order = Vec::new();
    while let Some(got) = q.get(true).await {
        order.push((body(&got.message), got.redelivered));
    }
    assert_eq!(
        order,
        [
            ("m1".to_string(), true),
            ("m3".to_string(), true),
            ("m4".to_string(), false)
        ]
    );
    assert_eq!(q.counts().await, counts(0, 0, 0));
}

/// With `x-single-active-consumer`, only the first consumer receives; once it is
/// cancelled the next one takes over, from where it left.
#[tokio::test]
async fn a_single_active_consumer_hands_over_when_cancelled() {
    let q = TestQueue::start(args(&[(
        "x-single-active-consumer",
        FieldValue::Bool(true),
    )]))
    .await;
    let mut first = q.consume(1).await;
    let mut second = q.consume(0).await;
    for n in 1..=3 {
        q.publish(&format!("m{n}")).await;
    }
    assert_eq!(q.counts().await, counts(2, 1, 2));
    assert_eq!(first.received(), ["m1"]);
    assert!(
        second.received().is_empty(),
        "only the active consumer receives"
    );
    // Nothing else happens: the cancel alone hands the waiting messages over.
    q.cancel(&first).await;
    assert_eq!(q.counts().await, counts(0, 3, 1));
    assert_eq!(second.received(), ["m2", "m3"]);
    q.publish("m4").await;
    assert_eq!(q.counts().await, counts(0, 4, 1));
    assert_eq!(second.received(), ["m4"]);
}

/// A priority queue delivers higher priorities first, publish order within one, and
/// caps priorities at `x-max-priority`.
#[tokio::test]
async fn higher_priorities_are_delivered_first() {
    let q = TestQueue::start(args(&[("x-max-priority", FieldValue::I32(5))])).await;
    for (text, priority) in [("p0", 0), ("p3", 3), ("p9", 9), ("p3b", 3), ("none", 255)] {
        let properties = BasicProperties {
            priority: (priority != 255).then_some(priority),
            ..BasicProperties::default()
        };
        q.publish_with(text, properties).await;
    }
    let mut c = q.consume(0).await;
    assert_eq!(q.counts().await, counts(0, 5, 1));
    assert_eq!(c.received(), ["p9", "p3", "p3b", "p0", "none"]);
}

/// A message expires at the earlier of the queue's TTL and its own, and is
/// dead-lettered as `expired`; the clock is tokio's, paused and advanced by hand.
#[tokio::test]
async fn messages_expire_at_the_queue_or_message_ttl() {
    tokio::time::pause();
    let q = TestQueue::start(args(&[("x-message-ttl", FieldValue::I32(1000)), dlx()])).await;
    let short = BasicProperties {
        expiration: Some("200".into()),
        ..BasicProperties::default()
    };
    q.publish_with("short", short).await;
    q.publish("queue-ttl").await;
    assert_eq!(q.counts().await, counts(2, 0, 0));
    tokio::time::advance(Duration::from_millis(201)).await;
    assert_eq!(q.counts().await, counts(1, 0, 0));
    assert_eq!(
        q.host.dead_letters(),
        [("short".to_string(), "expired".to_string())]
    );
    tokio::time::advance(Duration::from_millis(800)).await;
    assert_eq!(q.counts().await, counts(0, 0, 0));
    assert_eq!(
        q.host.dead_letters(),
        [("queue-ttl".to_string(), "expired".to_string())]
    );
    assert_eq!(
        *q.host.routed.lock().unwrap(),
        [
            ("dlx".to_string(), "q".to_string()),
            ("dlx".to_string(), "q".to_string())
        ]
    );
}

/// A message returned more often than `x-delivery-limit` allows is dead-lettered as
/// `delivery_limit` instead of requeued; without a dead-letter exchange, dropped.
#[tokio::test]
async fn a_message_past_its_delivery_limit_is_dead_lettered() {
    for with_dlx in [true, false] {
        let mut arguments = vec![("x-delivery-limit", FieldValue::I32(1))];
        if with_dlx {
            arguments.push(dlx());
        }
        let q = TestQueue::start(args(&arguments)).await;
        let mut c = q.consume(0).await;
        q.publish("m").await;
        let first = c.next().await;
        assert!(!first.redelivered);
        q.reject(&[&first], true).await;
        let second = c.next().await;
        assert!(second.redelivered, "within the limit: requeued");
        q.reject(&[&second], true).await;
        assert_eq!(q.counts().await, counts(0, 0, 1));
        assert!(c.received().is_empty());
        let expected = if with_dlx {
            vec![("m".to_string(), "delivery_limit".to_string())]
        } else {
            Vec::new()
        };
        assert_eq!(q.host.dead_letters(), expected);
    }
}

/// A durable queue past its memory budget keeps its further persistent messages on
/// disk only, and reads them back, in order, as they are delivered.
#[tokio::test]
async fn a_durable_queue_over_its_budget_pages_out_and_back_in() {
    // Two 2-octet messages fit (2 + PAGE_OVERHEAD each), a third does not.
    let store = TempStore::open(600);
    let q = TestQueue::start_durable(FieldTable::new(), &store).await;
    for n in 1..=5 {
        q.publish_confirmed(format!("m{n}").into_bytes()).await;
    }
    assert_eq!(q.counts().await, counts(5, 0, 0));
    assert_eq!(q.stat(|s| &s.paged_out), 3);
    let mut c = q.consume(0).await;
    assert_eq!(q.counts().await, counts(0, 5, 1));
    assert_eq!(c.received(), ["m1", "m2", "m3", "m4", "m5"]);
    assert_eq!(q.stat(|s| &s.paged_out), 0);
}

/// A paged-out message whose record cannot be read back (damaged on disk) is dropped;
/// the one behind it is delivered.
#[tokio::test]
async fn an_unreadable_paged_out_message_is_dropped_and_the_next_delivered() {
    let store = TempStore::open(1);
    let q = TestQueue::start_durable(FieldTable::new(), &store).await;
    q.publish_confirmed(b"unreadable-1".to_vec()).await;
    q.publish_confirmed(b"readable-2".to_vec()).await;
    assert_eq!(q.stat(|s| &s.paged_out), 2);
    store.corrupt(b"unreadable-1");
    let mut c = q.consume(0).await;
    assert_eq!(c.next().await.message.body, &b"readable-2"[..]);
    assert_eq!(q.counts().await, counts(0, 1, 1));
    assert_eq!(q.stat(|s| &s.unreadable), 1);
}

/// A queue unused for `x-expires` deletes itself: it asks its host to forget it and its
/// task ends.
#[tokio::test]
async fn an_unused_queue_asks_its_host_to_forget_it() {
    tokio::time::pause();
    let q = TestQueue::start(args(&[("x-expires", FieldValue::I32(1000))])).await;
    assert_eq!(q.counts().await, counts(0, 0, 0));
    tokio::time::advance(Duration::from_millis(1001)).await;
    q.stopped().await;
    assert_eq!(*q.host.forgotten.lock().unwrap(), [Arc::<str>::from("q")]);
}

/// A body of `len` octets starting with `marker`.
fn big(marker: &str, len: usize) -> Vec<u8> {
    let mut body = marker.as_bytes().to_vec();
    body.resize(len, b'.');
    body
}

/// A durable queue holding, all on disk: an unreadable message, then one too large to
/// be read back in the same page-in batch, then a small one.
async fn damaged_head(store: &TempStore) -> TestQueue {
    let q = TestQueue::start_durable(FieldTable::new(), store).await;
    q.publish_confirmed(big("unreadable-1", 600 * 1024)).await;
    q.publish_confirmed(big("readable-2", 600 * 1024)).await;
    q.publish_confirmed(b"readable-3".to_vec()).await;
    assert_eq!(q.stat(|s| &s.paged_out), 3);
    store.corrupt(b"unreadable-1");
    q
}

/// An unreadable head whose successor lies outside its page-in batch: the successor is
/// read back and delivered in turn (the queue neither panics nor stops).
#[tokio::test]
async fn an_unreadable_head_is_dropped_and_a_consumer_gets_the_next_batch() {
    let store = TempStore::open(1);
    let q = damaged_head(&store).await;
    let mut c = q.consume(0).await;
    assert!(c.next().await.message.body.starts_with(b"readable-2"));
    assert_eq!(c.next().await.message.body, &b"readable-3"[..]);
    assert_eq!(q.counts().await, counts(0, 2, 1));
    assert_eq!(q.stat(|s| &s.unreadable), 1, "the dropped one is counted");
}

/// The same on `basic.get`.
#[tokio::test]
async fn an_unreadable_head_is_dropped_and_a_get_gets_the_next_batch() {
    let store = TempStore::open(1);
    let q = damaged_head(&store).await;
    let got = q.get(true).await.expect("the next readable message");
    assert!(got.message.body.starts_with(b"readable-2"));
    assert_eq!(got.remaining, 1);
    let got = q.get(true).await.expect("the last one");
    assert_eq!(got.message.body, &b"readable-3"[..]);
    assert!(q.get(true).await.is_none());
    assert_eq!(q.counts().await, counts(0, 0, 0));
    assert_eq!(q.stat(|s| &s.unreadable), 1, "the dropped one is counted");
}

/// A consumer whose connection has a full room on its way out (its client stopped
/// reading) is parked: the messages wait in the queue. Once the connection has written
/// half of it, the queue is told and delivers again.
#[tokio::test]
async fn a_consumer_whose_connection_is_full_waits_in_the_queue_until_half_is_written() {
    let q = TestQueue::start(FieldTable::new()).await;
    // Room for three deliveries of an 8-octet body (counted 8 + 256 each).
    let room = Arc::new(super::OutputRoom::new(3 * 264 - 1));
    let mut c = consume_no_ack(&q, &room).await;
    for n in 0..10 {
        q.publish(&format!("message{n}")).await;
    }
    assert_eq!(q.counts().await, counts(7, 0, 1));
    assert_eq!(c.received(), ["message0", "message1", "message2"]);
    assert_eq!(
        room.pending(),
        3 * 265 - 3,
        "counted as the queue sent them"
    );
    // The connection writes two of them out: still over half full, nothing moves.
    room.take(265);
    assert_eq!(q.counts().await, counts(7, 0, 1));
    room.take(2 * 265 - 3);
    // Woken: it delivers until the room is full again.
    assert_eq!(q.counts().await, counts(4, 0, 1));
    assert_eq!(c.received(), ["message3", "message4", "message5"]);
}

/// A dispatch reserves its consumer connection's room ahead, in chunks; when it ends,
/// the room holds exactly what was delivered, and the statistics count each delivery.
#[tokio::test]
async fn a_dispatch_leaves_exactly_its_deliveries_counted_in_the_room() {
    let q = TestQueue::start(FieldTable::new()).await;
    for n in 0..10 {
        q.publish(&format!("message{n}")).await;
    }
    let room = Arc::new(super::OutputRoom::default());
    // One dispatch delivers the ten (the consume), then one per publish.
    let mut c = consume_no_ack(&q, &room).await;
    assert_eq!(q.counts().await, counts(0, 0, 1));
    assert_eq!(room.pending(), 10 * 264);
    q.publish("message10").await;
    q.publish("message11").await;
    assert_eq!(q.counts().await, counts(0, 0, 1));
    assert_eq!(room.pending(), 10 * 264 + 2 * 265);
    assert_eq!(c.received().len(), 12);
    assert_eq!(q.stat(|s| &s.delivered), 12);
}

/// A no-ack delivery whose connection is gone stays in the queue, whole, for the next
/// consumer, and its room is given back.
#[tokio::test]
async fn a_no_ack_delivery_to_a_gone_connection_stays_in_the_queue() {
    let q = TestQueue::start(FieldTable::new()).await;
    let room = Arc::new(super::OutputRoom::default());
    let gone = consume_no_ack(&q, &room).await;
    drop(gone);
    q.publish("kept").await;
    assert_eq!(q.counts().await, counts(1, 0, 0));
    assert_eq!(room.pending(), 0);
    assert_eq!(q.stat(|s| &s.delivered), 0);
    let mut next = q.consume(0).await;
    assert_eq!(q.counts().await, counts(0, 1, 1));
    let d = next.next().await;
    assert_eq!(body(&d.message), "kept");
    assert!(!d.redelivered);
}

/// A no-ack consumer whose connection's room is `room`.
async fn consume_no_ack(q: &TestQueue, room: &Arc<super::OutputRoom>) -> TestConsumer {
    q.consume_with(Consumer {
        no_ack: true,
        room: Some(room.clone()),
        ..Consumer::default()
    })
    .await
}

fn quorum() -> (&'static str, FieldValue) {
    ("x-queue-type", FieldValue::from("quorum"))
}

/// Takes `n` messages with `basic.get`, unacked: their ids by body.
async fn get_unacked(q: &TestQueue, n: usize) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for _ in 0..n {
        let got = q.get(false).await.unwrap();
        out.push((body(&got.message), got.msg_id));
    }
    out
}

/// A quorum queue without a delivery limit puts a rejected (or nacked) message back at
/// its tail, in the order the rejections came, as RabbitMQ 3.10 does: publish 1..5, get
/// 1 and 2, reject 2 then 1 with requeue, and the queue reads 3, 4, 5, 2, 1.
#[tokio::test]
async fn a_quorum_queue_requeues_rejected_messages_at_its_tail() {
    let q = TestQueue::start(args(&[quorum()])).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    let held = get_unacked(&q, 2).await;
    q.settle(vec![held[1].1], true, true).await;
    q.settle(vec![held[0].1], true, true).await;
    assert_eq!(q.drain().await, ["m3", "m4", "m5", "m2", "m1"]);
}

/// With a delivery limit, RabbitMQ 3.10's quorum queue returns a rejected message ahead
/// of the rest, the returns in the order they came back: 2, 1, then the rest.
#[tokio::test]
async fn a_quorum_queue_with_a_delivery_limit_returns_rejected_messages_first() {
    let q = TestQueue::start(args(&[quorum(), ("x-delivery-limit", FieldValue::I32(10))])).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    let held = get_unacked(&q, 3).await;
    q.settle(vec![held[1].1], true, true).await;
    q.settle(vec![held[0].1], true, true).await;
    let again = get_unacked(&q, 2).await;
    assert_eq!(again[0].0, "m2");
    assert_eq!(again[1].0, "m1");
    // A nack of several comes back in the order the channel lists them: delivery order.
    q.settle(vec![held[2].1, again[0].1, again[1].1], true, true)
        .await;
    assert_eq!(q.drain().await, ["m3", "m2", "m1", "m4", "m5"]);
}

/// Messages a closed channel held come back ahead of the rest of a quorum queue, each
/// channel's in delivery order, the channels in the order they closed: a channel holding
/// 3 and 4 closes, then one holding 1 and 2, and the queue reads 3, 4, 1, 2, 5.
#[tokio::test]
async fn a_quorum_queue_returns_what_closed_channels_held_first() {
    let q = TestQueue::start(args(&[quorum()])).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    let held = get_unacked(&q, 4).await;
    q.close_channel(2, vec![held[2].1, held[3].1]).await;
    q.close_channel(1, vec![held[0].1, held[1].1]).await;
    assert_eq!(q.drain().await, ["m3", "m4", "m1", "m2", "m5"]);
}

/// A rejection goes to the tail, what a closed channel held comes first: get 1..3,
/// reject 2 with requeue, close the channel, and the queue reads 1, 3, 4, 5, 2.
#[tokio::test]
async fn a_quorum_queue_puts_returns_ahead_of_rejections() {
    let q = TestQueue::start(args(&[quorum()])).await;
    for n in 1..=5 {
        q.publish(&format!("m{n}")).await;
    }
    let held = get_unacked(&q, 3).await;
    q.settle(vec![held[1].1], true, true).await;
    q.close_channel(1, vec![held[0].1, held[2].1]).await;
    assert_eq!(q.drain().await, ["m1", "m3", "m4", "m5", "m2"]);
}

/// Returned messages at the head of a quorum queue are the first `x-max-length` drops.
#[tokio::test]
async fn a_quorum_queue_drops_its_returns_first_when_full() {
    let q = TestQueue::start(args(&[
        quorum(),
        ("x-max-length", FieldValue::I32(3)),
        dlx(),
    ]))
    .await;
    for n in 1..=3 {
        q.publish(&format!("m{n}")).await;
    }
    let held = get_unacked(&q, 2).await;
    q.close_channel(1, vec![held[0].1, held[1].1]).await;
    q.publish("m4").await;
    q.counts().await;
    assert_eq!(
        q.host.dead_letters(),
        [("m1".to_string(), "maxlen".to_string())]
    );
    assert_eq!(q.drain().await, ["m2", "m3", "m4"]);
}

/// `x-overflow: reject-publish-dlx` is not a quorum-queue strategy: RabbitMQ 3.10 logs a
/// warning and uses drop-head.
#[tokio::test]
async fn a_quorum_queue_treats_reject_publish_dlx_as_drop_head() {
    let q = TestQueue::start(args(&[
        quorum(),
        ("x-max-length", FieldValue::I32(2)),
        ("x-overflow", FieldValue::from("reject-publish-dlx")),
        dlx(),
    ]))
    .await;
    for n in 1..=3 {
        q.publish(&format!("m{n}")).await;
    }
    q.counts().await;
    assert_eq!(
        q.host.dead_letters(),
        [("m1".to_string(), "maxlen".to_string())]
    );
    assert_eq!(q.drain().await, ["m2", "m3"]);
}

/// A quorum queue keeps every message in the store, transient ones too: the confirm
/// waits for the record, the message can be paged out and is read back with the delivery
/// mode the publisher gave.
#[tokio::test]
async fn a_quorum_queue_stores_transient_messages() {
    let store = TempStore::open(1);
    let q = TestQueue::start_durable(args(&[quorum()]), &store).await;
    let transient = BasicProperties {
        delivery_mode: Some(1),
        ..BasicProperties::default()
    };
    q.publish_confirmed_with(b"t1".to_vec(), transient.clone())
        .await;
    q.publish_confirmed_with(b"t2".to_vec(), BasicProperties::default())
        .await;
    assert_eq!(q.stat(|s| &s.paged_out), 2, "both kept on disk only");
    let mut c = q.consume(0).await;
    let first = c.next().await;
    assert_eq!(first.message.body, &b"t1"[..]);
    assert_eq!(first.message.properties.delivery_mode, Some(1));
    let second = c.next().await;
    assert_eq!(second.message.properties.delivery_mode, None);
}

/// A classic durable queue still keeps transient messages in memory only.
#[tokio::test]
async fn a_classic_durable_queue_keeps_transient_messages_in_memory() {
    let store = TempStore::open(1);
    let q = TestQueue::start_durable(FieldTable::new(), &store).await;
    q.publish_confirmed_with(b"t".to_vec(), BasicProperties::default())
        .await;
    assert_eq!(q.stat(|s| &s.paged_out), 0);
}

/// A quorum queue with at-least-once dead-lettering (and reject-publish, which it needs).
fn at_least_once() -> FieldTable {
    args(&[
        quorum(),
        dlx(),
        ("x-dead-letter-strategy", FieldValue::from("at-least-once")),
        ("x-overflow", FieldValue::from("reject-publish")),
    ])
}

/// Rejects the one message of `q` without requeue, so that it is dead-lettered.
async fn reject_one(q: &TestQueue) {
    let got = q.get(false).await.expect("a message");
    q.settle(vec![got.msg_id], false, true).await;
    q.counts().await;
}

/// With at-least-once dead-lettering a dead letter is sent with a confirm ticket and
/// stays held by its queue (RabbitMQ's `messages_dlx`) until its target confirms it.
#[tokio::test]
async fn an_at_least_once_dead_letter_is_held_until_its_target_confirms() {
    let q = TestQueue::start(at_least_once()).await;
    q.publish("m").await;
    reject_one(&q).await;
    assert_eq!(q.counts().await, counts(0, 0, 0));
    assert_eq!(q.stat(|s| &s.dead_lettering), 1);
    assert_eq!(q.stat(|s| &s.dead_lettering_bytes), 1);
    let mut sent = q.host.take_dead_letters();
    assert_eq!(sent.len(), 1);
    assert_eq!(body(&sent[0].message), "m");
    let ticket = sent[0].confirm.take().expect("sent with a confirm ticket");
    ticket.send(true);
    q.counts().await;
    assert_eq!(q.stat(|s| &s.dead_lettering), 0);
    assert_eq!(q.stat(|s| &s.dead_lettering_bytes), 0);
}

/// A dead letter with no route, or refused by its target, is routed again after
/// RabbitMQ's retry period, and only then; it leaves once a target took it.
#[tokio::test(start_paused = true)]
async fn an_at_least_once_dead_letter_is_routed_again_until_taken() {
    use super::at_least_once::RETRY_AFTER;
    let q = TestQueue::start(at_least_once()).await;
    q.host
        .unroutable
        .store(true, std::sync::atomic::Ordering::Relaxed);
    q.publish("m").await;
    reject_one(&q).await;
    assert_eq!(q.stat(|s| &s.dead_lettering), 1);
    assert!(q.host.take_dead_letters().is_empty());
    q.host
        .unroutable
        .store(false, std::sync::atomic::Ordering::Relaxed);
    tokio::time::advance(RETRY_AFTER - Duration::from_millis(1)).await;
    q.counts().await;
    assert!(q.host.take_dead_letters().is_empty(), "not before its time");
    tokio::time::advance(Duration::from_millis(1)).await;
    q.counts().await;
    let mut sent = q.host.take_dead_letters();
    assert_eq!(sent.len(), 1, "routed again once its time came");
    // The target refuses it (a dropped ticket is a nack): tried again later.
    drop(sent.pop());
    q.counts().await;
    assert_eq!(q.stat(|s| &s.dead_lettering), 1);
    tokio::time::advance(RETRY_AFTER).await;
    q.counts().await;
    let mut sent = q.host.take_dead_letters();
    assert_eq!(sent.len(), 1);
    sent[0].confirm.take().unwrap().send(true);
    q.counts().await;
    assert_eq!(q.stat(|s| &s.dead_lettering), 0);
    tokio::time::advance(RETRY_AFTER * 2).await;
    q.counts().await;
    assert!(
        q.host.take_dead_letters().is_empty(),
        "taken: never sent again"
    );
}

/// Held dead letters count towards `x-max-length`, as in RabbitMQ: a queue of one with
/// one dead letter held refuses the next publish.
#[tokio::test]
async fn held_dead_letters_count_towards_the_length_limit() {
    let mut arguments = at_least_once();
    arguments.insert("x-max-length", FieldValue::I32(1));
    let q = TestQueue::start(arguments).await;
    q.publish("m1").await;
    reject_one(&q).await;
    q.publish("m2").await;
    assert_eq!(q.counts().await, counts(0, 0, 0), "m2 refused");
}

/// Without reject-publish, at-least-once falls back to at-most-once (RabbitMQ 3.10 logs
/// a warning): the dead letter goes out without a ticket and nothing is held.
#[tokio::test]
async fn at_least_once_without_reject_publish_is_at_most_once() {
    let q = TestQueue::start(args(&[
        quorum(),
        dlx(),
        ("x-dead-letter-strategy", FieldValue::from("at-least-once")),
    ]))
    .await;
    q.publish("m").await;
    reject_one(&q).await;
    assert_eq!(q.stat(|s| &s.dead_lettering), 0);
    let sent = q.host.take_dead_letters();
    assert_eq!(sent.len(), 1);
    assert!(sent[0].confirm.is_none());
}

/// Under memory pressure, one more than the in-memory head: the messages a test publishes
/// so that some are paged out.
const PAST_HEAD: usize = super::actor::PAGING_HEAD + 44;

/// Publishes `m0`, `m1`, ... `m{n-1}`, transient.
async fn publish_numbered(q: &TestQueue, n: usize) {
    for i in 0..n {
        q.publish(&format!("m{i}")).await;
    }
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("m{i}")).collect()
}

/// Under memory pressure a non-durable queue keeps its head in memory and pages the
/// transient messages behind it out to the store; a consumer gets every one, in order,
/// and once they are acked no record of them is left live.
#[tokio::test]
async fn under_pressure_a_non_durable_queue_pages_transient_messages_out_and_back() {
    let store = TempStore::open(u64::MAX);
    store.pressure(true);
    let q = TestQueue::start_beside(FieldTable::new(), &store).await;
    publish_numbered(&q, PAST_HEAD).await;
    assert_eq!(q.counts().await, counts(PAST_HEAD as u32, 0, 0));
    assert_eq!(q.stat(|s| &s.paged_out), 44);
    assert_eq!(store.live_records().await, 44);
    let mut c = q.consume(0).await;
    let mut got = Vec::new();
    for _ in 0..PAST_HEAD {
        let d = c.next().await;
        got.push(body(&d.message));
        q.ack(&[&d]);
    }
    assert_eq!(got, numbered(0..PAST_HEAD));
    assert_eq!(q.counts().await, counts(0, 0, 1));
    assert_eq!(q.stat(|s| &s.paged_out), 0);
    assert_eq!(
        store.live_records().await,
        0,
        "every transient record released"
    );
}

/// When memory pressure sets in, the backlog a queue already holds in memory is paged
/// out too (past the head), not only what comes after; `basic.get` reads it back in
/// order.
#[tokio::test]
async fn pressure_setting_in_pages_out_the_backlog_in_memory() {
    let store = TempStore::open(u64::MAX);
    let q = TestQueue::start_beside(FieldTable::new(), &store).await;
    publish_numbered(&q, PAST_HEAD).await;
    assert_eq!(q.counts().await, counts(PAST_HEAD as u32, 0, 0));
    assert_eq!(q.stat(|s| &s.paged_out), 0, "no pressure, nothing paged");
    store.pressure(true);
    // The queue sees the change between commands: each answered one is a chance.
    for _ in 0..100 {
        if q.stat(|s| &s.paged_out) == 44 {
            break;
        }
        q.counts().await;
        tokio::task::yield_now().await;
    }
    assert_eq!(q.stat(|s| &s.paged_out), 44);
    assert_eq!(q.drain().await, numbered(0..PAST_HEAD));
    assert_eq!(store.live_records().await, 0);
}

/// Purging or deleting a queue with paged-out transient messages releases their
/// records.
#[tokio::test]
async fn purge_and_delete_release_paged_out_transient_messages() {
    let store = TempStore::open(u64::MAX);
    store.pressure(true);
    let q = TestQueue::start_beside(FieldTable::new(), &store).await;
    publish_numbered(&q, PAST_HEAD).await;
    assert_eq!(q.counts().await, counts(PAST_HEAD as u32, 0, 0));
    assert_eq!(store.live_records().await, 44);
    let (reply, answer) = tokio::sync::oneshot::channel();
    assert!(q.handle.send(super::QueueCommand::Purge { reply }).await);
    assert_eq!(answer.await.unwrap(), PAST_HEAD as u32);
    assert_eq!(store.live_records().await, 0, "purge releases them");

    publish_numbered(&q, PAST_HEAD).await;
    assert_eq!(q.counts().await, counts(PAST_HEAD as u32, 0, 0));
    assert_eq!(store.live_records().await, 44);
    let (reply, answer) = tokio::sync::oneshot::channel();
    let delete = super::QueueCommand::Delete {
        if_unused: false,
        if_empty: false,
        reply,
    };
    assert!(q.handle.send(delete).await);
    assert_eq!(answer.await.unwrap().unwrap(), PAST_HEAD as u32);
    q.stopped().await;
    assert_eq!(store.live_records().await, 0, "deletion releases them");
}

/// A priority queue under pressure: a higher-priority message published behind a
/// paged-out backlog is paged out too (the head is full) and still comes first.
#[tokio::test]
async fn under_pressure_a_priority_queue_delivers_a_paged_out_high_priority_first() {
    let store = TempStore::open(u64::MAX);
    store.pressure(true);
    let q = TestQueue::start_beside(args(&[("x-max-priority", FieldValue::I32(5))]), &store).await;
    publish_numbered(&q, PAST_HEAD).await;
    let urgent = BasicProperties {
        priority: Some(5),
        ..BasicProperties::default()
    };
    q.publish_with("urgent", urgent).await;
    assert_eq!(q.counts().await, counts(PAST_HEAD as u32 + 1, 0, 0));
    assert_eq!(q.stat(|s| &s.paged_out), 45);
    let mut expected = vec!["urgent".to_string()];
    expected.extend(numbered(0..PAST_HEAD));
    assert_eq!(q.drain().await, expected);
    assert_eq!(store.live_records().await, 0);
}

/// Paged-out transient messages expire at their TTL and are dead-lettered (read back
/// for it); their records are released.
#[tokio::test]
async fn paged_out_transient_messages_expire_and_are_dead_lettered() {
    tokio::time::pause();
    let store = TempStore::open(u64::MAX);
    store.pressure(true);
    let q = TestQueue::start_beside(
        args(&[("x-message-ttl", FieldValue::I32(100)), dlx()]),
        &store,
    )
    .await;
    publish_numbered(&q, PAST_HEAD).await;
    assert_eq!(q.counts().await, counts(PAST_HEAD as u32, 0, 0));
    assert_eq!(q.stat(|s| &s.paged_out), 44);
    tokio::time::advance(Duration::from_millis(101)).await;
    assert_eq!(q.counts().await, counts(0, 0, 0));
    let dead: Vec<String> = q.host.dead_letters().into_iter().map(|(b, _)| b).collect();
    assert_eq!(dead, numbered(0..PAST_HEAD));
    assert_eq!(store.live_records().await, 0);
}

/// A requeued message goes back to its place under pressure as without it; every
/// message is still delivered once more, in order.
#[tokio::test]
async fn under_pressure_requeued_messages_return_to_their_place() {
    let store = TempStore::open(u64::MAX);
    store.pressure(true);
    let q = TestQueue::start_beside(FieldTable::new(), &store).await;
    publish_numbered(&q, PAST_HEAD).await;
    let first = q.get(false).await.unwrap();
    let second = q.get(false).await.unwrap();
    q.settle(vec![first.msg_id, second.msg_id], true, false)
        .await;
    assert_eq!(q.drain().await, numbered(0..PAST_HEAD));
    assert_eq!(store.live_records().await, 0);
}
