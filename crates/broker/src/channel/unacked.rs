//! A channel's delivery tags and the deliveries not yet settled under them: which tag
//! comes next, what each unsettled tag stands for (queue, message id, whether it took
//! channel-wide credit), and which tags an ack / nack / reject names.

use std::collections::VecDeque;
use std::num::NonZeroU64;
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
    pub deadline: Option<AckDeadline>,
}

/// When an unsettled delivery must have been acknowledged, in milliseconds on its
/// connection's clock ([`AckClock`]), and the consumer timeout that set it. Every
/// unsettled delivery carries one: 16 octets, where an `Instant` and a `Duration` took
/// 32 (a larger entry is more to move in the channel's map of tags at every delivery and
/// ack).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckDeadline {
    at_ms: NonZeroU64,
    timeout_ms: u64,
}

impl AckDeadline {
    /// `timeout` after `now_ms` ([`AckClock::deadline_ms`]).
    pub fn after(now_ms: u64, timeout: Duration) -> AckDeadline {
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        let at = now_ms.saturating_add(timeout_ms);
        AckDeadline {
            at_ms: NonZeroU64::new(at).unwrap_or(NonZeroU64::MIN),
            timeout_ms,
        }
    }

    /// Whether the deadline has passed at `now_ms` (the connection's clock).
    pub fn passed(&self, now_ms: u64) -> bool {
        self.at_ms.get() <= now_ms
    }

    /// The timeout that set it.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// A connection's clock for ack deadlines: milliseconds since the connection started.
/// Deliveries read it once per batch of queue events, at the first that needs a
/// deadline ([`AckClock::batch_ms`]): a clock read per batch, none for no-ack ones.
#[derive(Debug, Clone, Copy)]
pub struct AckClock {
    epoch: Instant,
    batch: Option<u64>,
}

impl AckClock {
    /// A clock starting at `epoch`.
    pub fn new(epoch: Instant) -> AckClock {
        AckClock { epoch, batch: None }
    }

    /// A new batch of queue events: the clock is read again at its first deadline.
    pub fn next_batch(&mut self) {
        self.batch = None;
    }

    /// The time as of the current batch, for a deadline (see [`AckClock::deadline_ms`]).
    pub fn batch_ms(&mut self) -> u64 {
        let epoch = self.epoch;
        *self
            .batch
            .get_or_insert_with(|| deadline_ms(epoch, Instant::now()))
    }

    /// `at` on this clock, rounded up: a deadline counted from it is never early.
    pub fn deadline_ms(&self, at: Instant) -> u64 {
        deadline_ms(self.epoch, at)
    }

    /// `at` on this clock, rounded down: a deadline compared with it is passed only
    /// once it has really passed.
    pub fn elapsed_ms(&self, at: Instant) -> u64 {
        let since = at.saturating_duration_since(self.epoch);
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    }
}

fn deadline_ms(epoch: Instant, at: Instant) -> u64 {
    let since = at.saturating_duration_since(epoch);
    let ms = since.as_millis() + u128::from(!since.subsec_nanos().is_multiple_of(1_000_000));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// Delivery tags and the unsettled deliveries by tag.
///
/// Kept in tag order in a deque, not a tree: tags are handed out in order and mostly
/// settled in order, so a delivery is a push at the back and its ack a take at the
/// front (a tree's insert and removal were a tenth of the broker's instructions per
/// message with manual acks). A delivery settled out of order leaves its slot empty
/// until the slots before it are settled too; once the empty slots outnumber the
/// unsettled deliveries they are swept out, so a consumer that holds one message
/// while acking thousands after it does not keep a slot for each of them.
#[derive(Debug)]
pub struct Unacked {
    /// The tag of the next delivery (tags start at 1).
    next_tag: u64,
    /// Tags in increasing order; `None` once settled. Neither end is an empty slot.
    slots: VecDeque<(u64, Option<Outstanding>)>,
    /// Unsettled deliveries (the slots that are not empty).
    live: usize,
}

/// Empty slots tolerated before a sweep, at least: sweeping a short deque often would
/// cost more than the slots.
const SWEEP_AFTER: usize = 64;

impl Default for Unacked {
    fn default() -> Self {
        Unacked {
            next_tag: 1,
            slots: VecDeque::new(),
            live: 0,
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
            self.slots.push_back((tag, Some(o)));
            self.live += 1;
        }
        tag
    }

    /// The first unsettled delivery past its deadline at `now_ms` (the connection's
    /// clock): its timeout.
    pub fn overdue(&self, now_ms: u64) -> Option<Duration> {
        self.unsettled()
            .filter_map(|o| o.deadline)
            .find(|d| d.passed(now_ms))
            .map(|d| d.timeout())
    }

    /// Whether any unsettled delivery has a deadline.
    pub fn has_deadlines(&self) -> bool {
        self.unsettled().any(|o| o.deadline.is_some())
    }

    /// Unsettled deliveries.
    pub fn len(&self) -> usize {
        self.live
    }

    /// Whether every delivery is settled.
    pub fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn unsettled(&self) -> impl Iterator<Item = &Outstanding> {
        self.slots.iter().filter_map(|(_, o)| o.as_ref())
    }

    /// The slot of `tag` if it holds an unsettled delivery: the front one for an ack in
    /// order, else found by bisection.
    fn find(&self, tag: u64) -> Option<usize> {
        let i = match self.slots.front() {
            Some((t, _)) if *t == tag => 0,
            _ => self.slots.binary_search_by_key(&tag, |(t, _)| *t).ok()?,
        };
        self.slots[i].1.is_some().then_some(i)
    }

    /// Takes the one delivery a single ack / nack / reject names. An unknown tag is 406,
    /// as in RabbitMQ.
    pub fn take_one(&mut self, tag: u64) -> AmqpResult<Outstanding> {
        let i = self.find(tag).ok_or_else(|| unknown_tag(tag))?;
        let taken = self.slots[i].1.take().ok_or_else(|| unknown_tag(tag))?;
        self.live -= 1;
        self.tidy();
        Ok(taken)
    }

    /// Takes the deliveries an ack / nack / reject names, in tag order: `tag` alone, or
    /// every tag up to it with `multiple` (all of them for tag 0). An unknown tag is 406,
    /// and takes nothing.
    pub fn take_range(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<(u64, Outstanding)>> {
        if multiple && tag == 0 {
            return Ok(self.take_all());
        }
        if !multiple {
            return self.take_one(tag).map(|o| vec![(tag, o)]);
        }
        let i = self.find(tag).ok_or_else(|| unknown_tag(tag))?;
        let taken: Vec<(u64, Outstanding)> = self
            .slots
            .drain(..=i)
            .filter_map(|(t, o)| o.map(|o| (t, o)))
            .collect();
        self.live -= taken.len();
        self.tidy();
        Ok(taken)
    }

    /// Takes every unsettled delivery, in tag order.
    pub fn take_all(&mut self) -> Vec<(u64, Outstanding)> {
        self.live = 0;
        self.slots
            .drain(..)
            .filter_map(|(t, o)| o.map(|o| (t, o)))
            .collect()
    }

    /// Puts deliveries back under their tags (a transaction rolled back or abandoned).
    pub fn restore(&mut self, taken: impl IntoIterator<Item = (u64, Outstanding)>) {
        let mut all: Vec<(u64, Outstanding)> = self.take_all();
        all.extend(taken);
        all.sort_by_key(|(t, _)| *t);
        self.live = all.len();
        self.slots = all.into_iter().map(|(t, o)| (t, Some(o))).collect();
    }

    /// Drops the empty slots at both ends, and every empty slot once they outnumber the
    /// unsettled deliveries (see [`Unacked`]).
    fn tidy(&mut self) {
        while matches!(self.slots.front(), Some((_, None))) {
            self.slots.pop_front();
        }
        while matches!(self.slots.back(), Some((_, None))) {
            self.slots.pop_back();
        }
        let empty = self.slots.len() - self.live;
        if empty > SWEEP_AFTER && empty > self.live {
            self.slots.retain(|(_, o)| o.is_some());
        }
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

    /// Message `msg_id` of `q`, with no deadline.
    fn outstanding(q: &QueueHandle, msg_id: u64, charged: bool) -> Outstanding {
        Outstanding {
            queue: q.clone(),
            msg_id,
            charged,
            deadline: None,
        }
    }

    /// `n` deliveries of `q` under tags 1..=n, message ids 100 + tag.
    fn delivered(q: &QueueHandle, n: u64) -> Unacked {
        let mut u = Unacked::default();
        for i in 1..=n {
            assert_eq!(u.tag(Some(outstanding(q, 100 + i, i % 2 == 0))), i);
        }
        u
    }

    fn ids(taken: &[(u64, Outstanding)]) -> Vec<u64> {
        taken.iter().map(|(_, o)| o.msg_id).collect()
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
    fn acks_out_of_order_and_multiple_acks_over_gaps_take_exactly_the_unsettled() {
        let mut u = delivered(&queue("q"), 10);
        assert_eq!(u.tag(None), 11, "a no-ack delivery takes a tag, no slot");
        for tag in [5, 2, 9, 10] {
            assert_eq!(u.take_one(tag).unwrap().msg_id, 100 + tag);
        }
        assert_eq!(u.len(), 6);
        assert_eq!(ids(&u.take_range(6, true).unwrap()), [101, 103, 104, 106]);
        assert_eq!(u.take_one(9).unwrap_err().code.code(), 406);
        assert_eq!(ids(&u.take_range(0, true).unwrap()), [107, 108]);
        assert!(u.is_empty());
        assert!(u.slots.is_empty());
    }

    /// A consumer that holds its first delivery and acks every later one: the settled
    /// slots behind the held one are swept out, not kept one per ack.
    #[test]
    fn one_held_delivery_does_not_keep_a_slot_for_every_later_ack() {
        let q = queue("q");
        let mut u = delivered(&q, 1);
        for i in 2..=10_000u64 {
            let o = outstanding(&q, 100 + i, false);
            assert_eq!(u.tag(Some(o)), i);
            u.take_one(i).unwrap();
            assert!(u.slots.len() <= 2 + SWEEP_AFTER, "{} slots", u.slots.len());
        }
        for i in 10_001..=10_100u64 {
            let o = outstanding(&q, 100 + i, false);
            u.tag(Some(o));
        }
        for i in (10_001..=10_100u64).step_by(2) {
            u.take_one(i).unwrap();
        }
        assert_eq!(u.len(), 51);
        assert!(u.slots.len() <= 51 + SWEEP_AFTER + 1);
        let rest = u.take_range(10_100, true).unwrap();
        assert_eq!(rest.first().map(|(t, _)| *t), Some(1));
        assert!(rest.windows(2).all(|w| w[0].0 < w[1].0), "in tag order");
        assert_eq!(rest.len(), 51);
    }

    #[test]
    fn a_deadline_is_never_early_and_passes_once_its_time_has_come() {
        let epoch = Instant::now();
        let clock = AckClock::new(epoch);
        let ms = |n: f64| epoch + Duration::from_secs_f64(n / 1000.0);
        // Delivered 1.5 ms in, with a 10 ms timeout: due at 11.5 ms, counted from 2 ms.
        let d = AckDeadline::after(clock.deadline_ms(ms(1.5)), Duration::from_millis(10));
        assert!(!d.passed(clock.elapsed_ms(ms(11.9))));
        assert!(d.passed(clock.elapsed_ms(ms(12.0))));
        assert_eq!(d.timeout(), Duration::from_millis(10));
        // On a whole millisecond nothing is rounded.
        let d = AckDeadline::after(clock.deadline_ms(ms(3.0)), Duration::from_millis(10));
        assert!(!d.passed(clock.elapsed_ms(ms(12.99))));
        assert!(d.passed(clock.elapsed_ms(ms(13.0))));
        // Every unsettled delivery carries one: it stays small.
        assert!(std::mem::size_of::<Outstanding>() <= 40);
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
