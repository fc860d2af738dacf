//! The publishes and plain acks the fast path took during one read, by queue, not yet
//! sent: each queue gets a read's worth as one command. Only the intake
//! ([`super::Conn::intake`]) sends them, and it does so before it handles any other frame,
//! so they reach their queues before anything that followed them on the wire.

use crate::queue::{Publish, QueueHandle};

/// What the current read holds for its queues.
#[derive(Default)]
pub(super) struct Held {
    /// Plain acks (no channel-wide credit involved), by queue, in ack order.
    acks: Vec<(QueueHandle, Vec<u64>)>,
    /// Publishes, by queue, in publish order.
    publishes: Vec<(QueueHandle, Vec<Publish>)>,
}

impl Held {
    /// Holds a plain ack of message `msg_id` of `queue`.
    pub(super) fn ack(&mut self, queue: QueueHandle, msg_id: u64) {
        add_to_batch(&mut self.acks, queue, msg_id);
    }

    /// Holds a publish for `queue`.
    pub(super) fn publish(&mut self, queue: QueueHandle, publish: Publish) {
        add_to_batch(&mut self.publishes, queue, publish);
    }

    /// Sends everything held: the acks first (they free consumers, and travel in a lane
    /// of their own that the queue takes first anyway), then the publishes, waiting while
    /// a queue has too many waiting (see [`crate::queue::PublishRoom`]).
    pub(super) async fn send(&mut self) {
        for (queue, ids) in self.acks.drain(..) {
            queue.send_acks(ids);
        }
        if self.publishes.is_empty() {
            return;
        }
        // Taken out (a send may wait) and put back to keep its memory for the next read.
        let mut publishes = std::mem::take(&mut self.publishes);
        for (queue, batch) in publishes.drain(..) {
            queue.publish(batch).await;
        }
        self.publishes = publishes;
    }

    /// Whether nothing is held.
    pub(super) fn is_empty(&self) -> bool {
        self.acks.is_empty() && self.publishes.is_empty()
    }
}

/// Adds `item` to the batch of `queue` in `batches` (batches in first-seen order).
pub(super) fn add_to_batch<T>(
    batches: &mut Vec<(QueueHandle, Vec<T>)>,
    queue: QueueHandle,
    item: T,
) {
    match batches.iter_mut().find(|(q, _)| q.same(&queue)) {
        Some((_, items)) => items.push(item),
        None => batches.push((queue, vec![item])),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::Message;
    use crate::queue::{QueueArgs, QueueCommand, QueueInbox};
    use futures::FutureExt;
    use minimq_protocol::FieldTable;

    fn queue(name: &str) -> (QueueHandle, QueueInbox) {
        QueueHandle::new(
            "/".into(),
            name.into(),
            false,
            None,
            false,
            FieldTable::new(),
            QueueArgs::default(),
            None,
        )
    }

    fn publish(body: &'static [u8]) -> Publish {
        Publish {
            message: Arc::new(Message::new(
                "".into(),
                "q".into(),
                minimq_protocol::BasicProperties::default(),
                bytes::Bytes::from_static(body),
            )),
            confirm: None,
        }
    }

    /// What a queue was sent, acks and publish batches, in the order it takes them.
    fn sent(inbox: &mut QueueInbox) -> Vec<String> {
        std::iter::from_fn(|| inbox.try_recv())
            .map(|cmd| match cmd {
                QueueCommand::Settle {
                    ids,
                    requeue: false,
                    rejected: false,
                } => format!("ack {ids:?}"),
                QueueCommand::Publish(batch) => {
                    let bodies: Vec<_> = batch.iter().map(|p| p.message.body.clone()).collect();
                    format!("publish {bodies:?}")
                }
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_reads_worth_reaches_each_queue_as_one_ack_and_one_publish_command_in_order() {
        let ((a, mut a_inbox), (b, mut b_inbox)) = (queue("a"), queue("b"));
        let mut held = Held::default();
        held.publish(a.clone(), publish(b"1"));
        held.ack(b.clone(), 7);
        held.publish(b.clone(), publish(b"2"));
        held.ack(a.clone(), 3);
        held.publish(a.clone(), publish(b"3"));
        held.ack(b.clone(), 5);
        assert!(!held.is_empty());
        assert!(held.send().now_or_never().is_some(), "room: no wait");
        assert!(held.is_empty());
        assert_eq!(sent(&mut a_inbox), ["ack [3]", "publish [b\"1\", b\"3\"]"]);
        assert_eq!(sent(&mut b_inbox), ["ack [7, 5]", "publish [b\"2\"]"]);
        // Sent once: a second send has nothing to send.
        assert!(held.send().now_or_never().is_some());
        assert!(sent(&mut a_inbox).is_empty());
    }
}
