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
