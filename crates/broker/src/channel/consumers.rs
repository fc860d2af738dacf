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

/// The consumers of one channel, by tag and by broker-wide id. Every delivery finds its
/// consumer by id (an integer's hash, where a tag's took a hundred instructions per
/// delivery); cancels and declares go by tag.
#[derive(Debug, Default)]
pub struct Consumers {
    by_id: IdMap<u64, (Arc<str>, ChannelConsumer)>,
    by_tag: IdMap<Arc<str>, u64>,
}

impl Consumers {
    /// Whether a consumer has this tag.
    pub fn contains(&self, tag: &str) -> bool {
        self.by_tag.contains_key(tag)
    }

    /// Whether the consumer `id` still consumes under `tag`.
    pub fn is_live(&self, tag: &str, id: u64) -> bool {
        self.live(tag, id).is_some()
    }

    /// The consumer `id` and its tag, if it still consumes (ids are never reused).
    pub fn by_id(&self, id: u64) -> Option<(&str, &ChannelConsumer)> {
        self.by_id.get(&id).map(|(t, c)| (&**t, c))
    }

    /// The consumer `id` under `tag`, if it still consumes there.
    pub fn live(&self, tag: &str, id: u64) -> Option<&ChannelConsumer> {
        self.by_id
            .get(&id)
            .filter(|(t, _)| **t == *tag)
            .map(|(_, c)| c)
    }

    /// Adds a consumer under `tag` (checked free by the caller).
    pub fn insert(&mut self, tag: Arc<str>, consumer: ChannelConsumer) {
        if let Some(earlier) = self.by_tag.insert(tag.clone(), consumer.id) {
            self.by_id.remove(&earlier);
        }
        self.by_id.insert(consumer.id, (tag, consumer));
    }

    /// Removes the consumer under `tag`, whichever it is (`basic.cancel`).
    pub fn remove(&mut self, tag: &str) -> Option<ChannelConsumer> {
        let id = self.by_tag.remove(tag)?;
        self.by_id.remove(&id).map(|(_, c)| c)
    }

    /// Removes the consumer under `tag` if it is consumer `id` (its queue cancelled it;
    /// the tag may have been reused since). Whether it was removed.
    pub fn remove_if(&mut self, tag: &str, id: u64) -> bool {
        let live = self.is_live(tag, id);
        if live {
            self.remove(tag);
        }
        live
    }

    /// The queue of every consumer, one entry per consumer.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.by_id.values().map(|(_, c)| c.queue.clone()).collect()
    }

    /// Removes every consumer; answers their queues, one entry per consumer.
    pub fn drain_queues(&mut self) -> Vec<QueueHandle> {
        self.by_tag.clear();
        self.by_id.drain().map(|(_, (_, c))| c.queue).collect()
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
    fn a_delivery_finds_its_consumer_by_id_and_tag_together() {
        let q = queue("q");
        let mut c = Consumers::default();
        c.insert("a".into(), consumer(1, &q));
        c.insert("b".into(), consumer(2, &q));
        assert_eq!(c.live("a", 1).map(|x| x.id), Some(1));
        assert_eq!(c.by_id(2).map(|(t, x)| (t, x.id)), Some(("b", 2)));
        assert!(c.by_id(3).is_none());
        assert!(c.live("b", 1).is_none(), "consumer 1 is not under tag b");
        assert!(c.live("a", 3).is_none());
        assert_eq!(c.remove("b").map(|x| x.id), Some(2));
        assert!(!c.is_live("b", 2));
        assert!(c.is_live("a", 1));
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
