//! A channel's delivery tags and the deliveries not yet settled under them: which tag
//! comes next, what each unsettled tag stands for (queue, message id, whether it took
//! channel-wide credit), and which tags an ack / nack / reject names.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{AmqpError, AmqpResult};
use crate::queue::QueueHandle;

/// What a delivery tag stands for.
#[derive(Debug, Clone)]
pub struct Outstanding {
    /// The queue holding the message.
    pub queue: QueueHandle,
    /// The message's id in that queue.
    pub msg_id: u64,
    /// Whether it took a unit of the channel's global credit.
    pub charged: bool,
    /// When it must have been acknowledged, and the timeout that set it (the consumer
    /// timeout); `None`: never.
    pub deadline: Option<(Instant, Duration)>,
}

/// Delivery tags and the unsettled deliveries by tag.
#[derive(Debug)]
pub struct Unacked {
    /// The tag of the next delivery (tags start at 1).
    next_tag: u64,
    by_tag: BTreeMap<u64, Outstanding>,
}

impl Default for Unacked {
    fn default() -> Self {
        Unacked {
            next_tag: 1,
            by_tag: BTreeMap::new(),
        }
    }
}

impl Unacked {
    /// Gives a delivery the next tag and, unless it needs no settling (no-ack), keeps
    /// what it stands for under that tag.
    pub fn tag(&mut self, unsettled: Option<Outstanding>) -> u64 {
        let tag = self.next_tag;
        self.next_tag += 1;
        if let Some(o) = unsettled {
            self.by_tag.insert(tag, o);
        }
        tag
    }

    /// The first unsettled delivery past its deadline at `now`: its timeout.
    pub fn overdue(&self, now: Instant) -> Option<Duration> {
        self.by_tag
            .values()
            .filter_map(|o| o.deadline)
            .find(|(at, _)| *at <= now)
            .map(|(_, timeout)| timeout)
    }

    /// Whether any unsettled delivery has a deadline.
    pub fn has_deadlines(&self) -> bool {
        self.by_tag.values().any(|o| o.deadline.is_some())
    }

    /// Unsettled deliveries.
    pub fn len(&self) -> usize {
        self.by_tag.len()
    }

    /// Whether every delivery is settled.
    pub fn is_empty(&self) -> bool {
        self.by_tag.is_empty()
    }

    /// Takes the one delivery a single ack / nack / reject names. An unknown tag is 406,
    /// as in RabbitMQ.
    pub fn take_one(&mut self, tag: u64) -> AmqpResult<Outstanding> {
        self.by_tag.remove(&tag).ok_or_else(|| unknown_tag(tag))
    }

    /// Takes the deliveries an ack / nack / reject names: `tag` alone, or every tag up to
    /// it with `multiple` (all of them for tag 0). An unknown tag is 406, and takes
    /// nothing.
    pub fn take_range(
        &mut self,
        tag: u64,
        multiple: bool,
    ) -> AmqpResult<BTreeMap<u64, Outstanding>> {
        if multiple && tag == 0 {
            return Ok(self.take_all());
        }
        if !self.by_tag.contains_key(&tag) {
            return Err(unknown_tag(tag));
        }
        Ok(if multiple {
            let rest = self.by_tag.split_off(&(tag + 1));
            std::mem::replace(&mut self.by_tag, rest)
        } else {
            self.by_tag.remove_entry(&tag).into_iter().collect()
        })
    }

    /// Takes every unsettled delivery.
    pub fn take_all(&mut self) -> BTreeMap<u64, Outstanding> {
        std::mem::take(&mut self.by_tag)
    }

    /// Puts deliveries back under their tags (a transaction rolled back or abandoned).
    pub fn restore(&mut self, taken: impl IntoIterator<Item = (u64, Outstanding)>) {
        self.by_tag.extend(taken);
    }
}

fn unknown_tag(tag: u64) -> AmqpError {
    AmqpError::precondition(format!("unknown delivery tag {tag}"))
}

/// Groups settled deliveries by queue, in first-seen order: one command per queue, with
/// the message ids and how many of them took channel-wide credit.
pub fn group_by_queue(
    items: impl IntoIterator<Item = Outstanding>,
) -> Vec<(QueueHandle, Vec<u64>, u32)> {
    let mut groups: Vec<(QueueHandle, Vec<u64>, u32)> = Vec::new();
    for o in items {
        let charged = u32::from(o.charged);
        match groups.iter_mut().find(|(q, _, _)| q.same(&o.queue)) {
            Some(g) => {
                g.1.push(o.msg_id);
                g.2 += charged;
            }
            None => groups.push((o.queue, vec![o.msg_id], charged)),
        }
    }
    groups
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::queue::QueueArgs;
    use minimq_protocol::FieldTable;

    /// A queue handle with no task behind it: enough to stand for where a delivery came
    /// from.
    pub(crate) fn queue(name: &str) -> QueueHandle {
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
        .0
    }

    /// `n` deliveries of `q` under tags 1..=n, message ids 100 + tag.
    fn delivered(q: &QueueHandle, n: u64) -> Unacked {
        let mut u = Unacked::default();
        for i in 1..=n {
            let o = Outstanding {
                queue: q.clone(),
                msg_id: 100 + i,
                charged: i % 2 == 0,
                deadline: None,
            };
            assert_eq!(u.tag(Some(o)), i);
        }
        u
    }

    fn ids(taken: &BTreeMap<u64, Outstanding>) -> Vec<u64> {
        taken.values().map(|o| o.msg_id).collect()
    }

    #[test]
    fn tags_count_up_from_1_and_no_ack_deliveries_take_a_tag_but_stay_unrecorded() {
        let q = queue("q");
        let mut u = Unacked::default();
        assert_eq!(u.tag(None), 1);
        let o = Outstanding {
            queue: q,
            msg_id: 7,
            charged: false,
            deadline: None,
        };
        assert_eq!(u.tag(Some(o)), 2);
        assert_eq!(u.tag(None), 3);
        assert_eq!(u.len(), 1);
        assert!(u.take_one(1).is_err(), "a no-ack delivery cannot be acked");
        assert_eq!(u.take_one(2).unwrap().msg_id, 7);
        assert!(u.is_empty());
    }

    #[test]
    fn multiple_takes_every_tag_up_to_and_including_the_one_named() {
        let mut u = delivered(&queue("q"), 5);
        assert_eq!(ids(&u.take_range(3, true).unwrap()), [101, 102, 103]);
        assert_eq!(u.len(), 2);
        assert_eq!(ids(&u.take_range(5, true).unwrap()), [104, 105]);
    }

    #[test]
    fn multiple_with_tag_0_takes_everything_even_when_nothing_is_unsettled() {
        let mut u = delivered(&queue("q"), 3);
        assert_eq!(ids(&u.take_range(0, true).unwrap()), [101, 102, 103]);
        assert!(u.take_range(0, true).unwrap().is_empty());
    }

    #[test]
    fn an_unknown_or_already_settled_tag_is_406_and_takes_nothing() {
        let mut u = delivered(&queue("q"), 3);
        u.take_one(2).unwrap();
        for (tag, multiple) in [(2, false), (2, true), (9, true), (0, false)] {
            let e = u.take_range(tag, multiple).unwrap_err();
            assert_eq!(e.code.code(), 406);
            assert_eq!(
                e.text,
                format!("PRECONDITION_FAILED - unknown delivery tag {tag}")
            );
        }
        assert_eq!(u.take_one(2).unwrap_err().code.code(), 406);
        assert_eq!(u.len(), 2, "failed takes leave the rest");
        // A single tag below a gap still works, and multiple over the gap takes both.
        assert_eq!(ids(&u.take_range(3, true).unwrap()), [101, 103]);
    }

    #[test]
    fn restored_deliveries_are_unsettled_again_under_their_tags() {
        let mut u = delivered(&queue("q"), 4);
        let taken = u.take_range(2, true).unwrap();
        u.restore(taken);
        assert_eq!(u.take_one(1).unwrap().msg_id, 101);
        assert_eq!(u.take_one(2).unwrap().msg_id, 102);
        assert_eq!(u.tag(None), 5, "restoring does not reuse tags");
    }

    #[test]
    fn grouping_keeps_first_seen_queue_order_and_counts_charged_deliveries() {
        let (a, b) = (queue("a"), queue("b"));
        let o = |q: &QueueHandle, msg_id, charged| Outstanding {
            queue: q.clone(),
            msg_id,
            charged,
            deadline: None,
        };
        let groups = group_by_queue([
            o(&b, 1, true),
            o(&a, 2, false),
            o(&b, 3, true),
            o(&a, 4, true),
        ]);
        let got: Vec<_> = groups
            .iter()
            .map(|(q, ids, charged)| (q.name().to_string(), ids.clone(), *charged))
            .collect();
        assert_eq!(
            got,
            [
                ("b".into(), vec![1, 3], 2),
                ("a".to_string(), vec![2, 4], 1)
            ]
        );
    }
}
