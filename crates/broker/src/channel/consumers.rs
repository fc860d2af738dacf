//! A channel's consumers by tag: the queue each consumes from and its broker-wide id,
//! which tells a delivery or a cancel meant for this consumer from one meant for an
//! earlier consumer under the same tag.

use std::sync::Arc;
use std::time::Duration;

use crate::queue::QueueHandle;
use crate::registry::ConsumerRegistration;
use minimq_protocol::idhash::IdMap;

/// A consumer on this channel.
#[derive(Debug, Clone)]
pub struct ChannelConsumer {
    /// Broker-wide consumer id.
    pub id: u64,
    /// The queue consumed from.
    pub queue: QueueHandle,
    /// Keeps the consumer listed in the registry while it exists.
    pub registration: Option<ConsumerRegistration>,
    /// Its own `x-consumer-timeout` (RabbitMQ 4's consumer argument; zero disables the
    /// timeout). `None`: its queue's, read at each delivery (a policy may change it
    /// while the consumer runs), else the broker's.
    pub own_timeout: Option<Duration>,
}

/// The consumers of one channel, by tag (a fast hash: looked up for every delivery).
#[derive(Debug, Default)]
pub struct Consumers {
    by_tag: IdMap<Arc<str>, ChannelConsumer>,
}

impl Consumers {
    /// Whether a consumer has this tag.
    pub fn contains(&self, tag: &str) -> bool {
        self.by_tag.contains_key(tag)
    }

    /// Whether the consumer `id` still consumes under `tag`.
    pub fn is_live(&self, tag: &str, id: u64) -> bool {
        self.by_tag.get(tag).is_some_and(|c| c.id == id)
    }

    /// The consumer `id` under `tag`, if it still consumes there.
    pub fn live(&self, tag: &str, id: u64) -> Option<&ChannelConsumer> {
        self.by_tag.get(tag).filter(|c| c.id == id)
    }

    /// Adds a consumer under `tag` (checked free by the caller).
    pub fn insert(&mut self, tag: Arc<str>, consumer: ChannelConsumer) {
        self.by_tag.insert(tag, consumer);
    }

    /// Removes the consumer under `tag`, whichever it is (`basic.cancel`).
    pub fn remove(&mut self, tag: &str) -> Option<ChannelConsumer> {
        self.by_tag.remove(tag)
    }

    /// Removes the consumer under `tag` if it is consumer `id` (its queue cancelled it;
    /// the tag may have been reused since). Whether it was removed.
    pub fn remove_if(&mut self, tag: &str, id: u64) -> bool {
        let live = self.is_live(tag, id);
        if live {
            self.by_tag.remove(tag);
        }
        live
    }

    /// The queue of every consumer, one entry per consumer.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.by_tag.values().map(|c| c.queue.clone()).collect()
    }

    /// Removes every consumer; answers their queues, one entry per consumer.
    pub fn drain_queues(&mut self) -> Vec<QueueHandle> {
        self.by_tag.drain().map(|(_, c)| c.queue).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::unacked::tests::queue;

    fn consumer(id: u64, q: &QueueHandle) -> ChannelConsumer {
        ChannelConsumer {
            id,
            queue: q.clone(),
            registration: None,
            own_timeout: None,
        }
    }

    #[test]
    fn a_cancel_for_an_earlier_consumer_under_a_reused_tag_leaves_the_new_one() {
        let q = queue("q");
        let mut c = Consumers::default();
        c.insert("t".into(), consumer(1, &q));
        assert!(c.remove("t").is_some());
        c.insert("t".into(), consumer(2, &q));
        assert!(!c.is_live("t", 1));
        assert!(!c.remove_if("t", 1), "consumer 1 is gone already");
        assert!(c.is_live("t", 2));
        assert!(c.remove_if("t", 2));
        assert!(!c.contains("t"));
    }

    #[test]
    fn draining_answers_one_queue_per_consumer_and_leaves_none() {
        let (a, b) = (queue("a"), queue("b"));
        let mut c = Consumers::default();
        c.insert("1".into(), consumer(1, &a));
        c.insert("2".into(), consumer(2, &b));
        c.insert("3".into(), consumer(3, &a));
        assert_eq!(c.queues().len(), 3);
        let mut names: Vec<String> = c
            .drain_queues()
            .iter()
            .map(|q| q.name().to_string())
            .collect();
        names.sort();
        assert_eq!(names, ["a", "a", "b"]);
        assert!(c.queues().is_empty());
    }
}
