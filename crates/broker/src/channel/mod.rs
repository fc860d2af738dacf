//! Channel state, kept inside its connection task and changed only through the methods
//! here: the delivery tags and the unsettled deliveries under them ([`unacked`]), the
//! consumers ([`consumers`]), the prefetch settings and channel-wide credit ([`qos`]),
//! the publish being assembled from its frames ([`content`]), confirm mode
//! ([`confirms`], the one place that decides when a publish is confirmed) and a
//! transaction ([`tx`]).
//!
//! Nothing here talks to a queue, the socket or the vhost's state: the connection
//! (`connection/`) runs the methods and sends what they answer.

pub mod confirms;
pub mod consumers;
pub mod content;
pub mod qos;
pub mod tx;
pub mod unacked;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use minimq_protocol::{BasicProperties, BasicPublish, ContentHeader};

use crate::error::{AmqpError, AmqpResult};
use crate::queue::{ChannelCredit, QueueHandle};
use crate::registry::{ChannelInfo, ChannelRegistration, ConnectionInfo, ConsumerInfo};
use crate::vhost::{DefaultRoute, VHost};
use confirms::{Confirm, Confirms};
use consumers::{ChannelConsumer, Consumers};
use content::{Content, Published, Route};
use qos::Qos;
use tx::{Outcome, Tx, TxSettle};
use unacked::Unacked;
pub use unacked::{group_by_queue, AckClock, AckDeadline, Outstanding};

/// Open, or closed by the server and waiting for the client's `channel.close-ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelStatus {
    /// In use.
    Open,
    /// The server sent `channel.close`; everything but close / close-ok is dropped.
    Closing,
}

/// One open channel.
#[derive(Debug)]
pub struct Channel {
    status: ChannelStatus,
    unacked: Unacked,
    consumers: Consumers,
    qos: Qos,
    /// Confirm mode state.
    confirms: Option<Confirms>,
    /// Transaction state, in tx mode (boxed: most channels never use it).
    tx: Option<Box<Tx>>,
    content: Content,
    /// The queue the last publish to the default exchange went to.
    default_route: Option<DefaultRoute>,
    /// What the management API sees of this channel: the methods that change what it
    /// shows store it on the side.
    info: Arc<ChannelInfo>,
    /// Keeps the channel listed in its connection's registry entry while it exists.
    _registration: Option<ChannelRegistration>,
}

/// Where a delivery goes on its channel ([`Channel::deliver_to`]).
pub struct DeliveryTarget<'a> {
    /// The consumer's tag.
    pub consumer_tag: &'a str,
    /// The queue it consumes from.
    pub queue: &'a QueueHandle,
    /// The delivery's tag.
    pub delivery_tag: u64,
}

impl Channel {
    /// A newly opened channel, listed under its connection's registry entry if given.
    pub fn open(id: u16, listed_in: Option<&Arc<ConnectionInfo>>) -> Channel {
        let info = Arc::new(ChannelInfo::new(id));
        Channel {
            status: ChannelStatus::Open,
            unacked: Unacked::default(),
            consumers: Consumers::default(),
            qos: Qos::default(),
            confirms: None,
            tx: None,
            content: Content::default(),
            default_route: None,
            _registration: listed_in.map(|conn| conn.register_channel(info.clone())),
            info,
        }
    }

    /// Whether the channel is open (not waiting for the client's `close-ok`).
    pub fn is_open(&self) -> bool {
        self.status == ChannelStatus::Open
    }

    /// The server closes the channel: from now on it waits for the client's `close-ok`
    /// and ignores everything else; a publish in progress is dropped.
    pub fn start_closing(&mut self) {
        self.status = ChannelStatus::Closing;
        self.info.closing.store(true, Ordering::Relaxed);
        self.content.abandon();
    }

    /// Whether a `basic.publish` may start here: open, with no publish in progress.
    pub fn takes_publish(&self) -> bool {
        self.is_open() && !self.content.in_progress()
    }

    /// Whether a `basic.ack` here is plain (the connection holds it with the other acks
    /// of the same read): as [`Channel::takes_publish`], without channel-wide credit
    /// (`basic.qos global`), so no delivery took any, and outside a transaction (which
    /// holds acks until commit).
    pub fn takes_plain_ack(&self) -> bool {
        self.takes_publish() && !self.qos.is_global() && self.tx.is_none()
    }

    /// The error for a method frame on this open channel while a publish waits for its
    /// content; `None` when no publish is in progress.
    pub fn interrupted_publish(&self) -> Option<AmqpError> {
        self.content.interrupted()
    }

    // --- publishing -------------------------------------------------------------------

    /// `basic.publish`: its header and body come next.
    pub fn start_publish(&mut self, method: BasicPublish) {
        self.content.start(method);
    }

    /// A content header for the publish in progress (see [`Content::header`]); ignored
    /// on a closing channel.
    pub fn on_header(&mut self, header: ContentHeader, max: u64) -> AmqpResult<Option<Published>> {
        if !self.is_open() {
            return Ok(None);
        }
        self.content.header(header, max)
    }

    /// A body frame for the publish in progress (see [`Content::body`]); ignored on a
    /// closing channel.
    pub fn on_body(&mut self, body: Bytes) -> AmqpResult<Option<Published>> {
        if !self.is_open() {
            return Ok(None);
        }
        self.content.body(body)
    }

    /// Route and properties of a whole publish read as octets (see [`Content::raw`]);
    /// `None` when the channel cannot take a publish now or the octets do not parse.
    pub fn raw_publish(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: &[u8],
    ) -> Option<(Route, Arc<BasicProperties>)> {
        if !self.takes_publish() {
            return None;
        }
        self.content.raw(exchange, routing_key, properties)
    }

    /// The queue a publish to the default exchange with `routing_key` goes to, through
    /// this channel's cache of its last such lookup.
    pub fn route_default(&mut self, vhost: &VHost, routing_key: &Arc<str>) -> Option<QueueHandle> {
        vhost.route_default(routing_key, &mut self.default_route)
    }

    /// A publish routed to `answers` queues, in confirm mode: its sequence number, the
    /// tag of its confirm. `None` outside confirm mode.
    pub fn confirm_seq(&mut self, answers: u32) -> Option<u64> {
        self.confirms.as_mut().map(|c| c.publish(answers))
    }

    // --- deliveries and settling ------------------------------------------------------

    /// A delivery to consumer `id` of this channel: its consumer tag, the queue it
    /// consumes from, and the delivery tag it gets. One that must be acked (not `no_ack`)
    /// is kept until settled as `unsettled` makes it, given the consumer's ack timeout:
    /// its own argument, else its queue's (argument or policy, read now: a policy changed
    /// while the consumer runs applies to its next delivery), else `default` (the
    /// broker's); zero is no timeout. `None` when the channel is closed or the consumer
    /// gone (then `unsettled` is not called).
    pub fn deliver_to(
        &mut self,
        id: u64,
        no_ack: bool,
        default: Option<std::time::Duration>,
        unsettled: impl FnOnce(Option<std::time::Duration>) -> Option<Outstanding>,
    ) -> Option<DeliveryTarget<'_>> {
        if !self.is_open() {
            return None;
        }
        let (consumer_tag, c) = self.consumers.by_id(id)?;
        let kept = if no_ack {
            None
        } else {
            let timeout = c
                .own_timeout
                .or_else(|| c.queue.info().consumer_timeout())
                .or(default)
                .filter(|t| !t.is_zero());
            unsettled(timeout)
        };
        let delivery_tag = tag_kept(&mut self.unacked, &self.info, kept);
        Some(DeliveryTarget {
            consumer_tag,
            queue: &c.queue,
            delivery_tag,
        })
    }

    /// Gives a delivery its tag; one that must be acked (`unsettled`) is kept under it
    /// until it is settled.
    pub fn tag_delivery(&mut self, unsettled: Option<Outstanding>) -> u64 {
        tag_kept(&mut self.unacked, &self.info, unsettled)
    }

    /// Takes the one delivery a single ack / nack / reject names (unknown: 406).
    pub fn take_one(&mut self, tag: u64) -> AmqpResult<Outstanding> {
        let taken = self.unacked.take_one(tag);
        self.info.set_unacked(self.unacked.len());
        taken
    }

    /// Takes the deliveries an ack / nack / reject names: `tag` alone, or every tag up to
    /// it with `multiple` (all of them for tag 0). An unknown tag is 406, as in RabbitMQ.
    pub fn take_outstanding(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Outstanding>> {
        let taken = self.unacked.take_range(tag, multiple)?;
        self.info.set_unacked(self.unacked.len());
        Ok(taken.into_iter().map(|(_, o)| o).collect())
    }

    /// An ack (`ack`), nack or reject: the deliveries to settle now, or `None` in a
    /// transaction, which takes them now (an unknown tag fails now) and holds them until
    /// commit.
    pub fn take_settled(
        &mut self,
        tag: u64,
        multiple: bool,
        requeue: bool,
        ack: bool,
    ) -> AmqpResult<Option<Vec<Outstanding>>> {
        let Some(tx) = self.tx.as_mut() else {
            return self.take_outstanding(tag, multiple).map(Some);
        };
        let taken = self.unacked.take_range(tag, multiple)?;
        self.info.set_unacked(self.unacked.len());
        tx.hold_settle(TxSettle {
            ack,
            requeue,
            taken,
        });
        Ok(None)
    }

    /// Takes every unsettled delivery, those a transaction held included, and ends the
    /// transaction: for a channel that closes, whose deliveries all go back.
    pub fn take_unsettled(&mut self) -> Vec<Outstanding> {
        if let Some(tx) = self.tx.take() {
            tx.abandon(&mut self.unacked);
        }
        self.info.set_unacked(0);
        self.unacked
            .take_all()
            .into_iter()
            .map(|(_, o)| o)
            .collect()
    }

    /// The channel closes: ends its consumers, confirm mode and transaction, and answers
    /// every queue it has business with — those holding its unsettled deliveries, with
    /// their message ids to requeue, and those its consumers read from — each once.
    pub fn release(&mut self) -> Vec<(QueueHandle, Vec<u64>)> {
        let mut queues: Vec<(QueueHandle, Vec<u64>)> = Vec::new();
        for o in self.take_unsettled() {
            match queues.iter_mut().find(|(q, _)| q.same(&o.queue)) {
                Some((_, ids)) => ids.push(o.msg_id),
                None => queues.push((o.queue, vec![o.msg_id])),
            }
        }
        for q in self.consumers.drain_queues() {
            if !queues.iter().any(|(x, _)| x.same(&q)) {
                queues.push((q, Vec::new()));
            }
        }
        self.confirms = None;
        queues
    }

    // --- consumers --------------------------------------------------------------------

    /// Whether a consumer has this tag.
    pub fn has_consumer(&self, tag: &str) -> bool {
        self.consumers.contains(tag)
    }

    /// Adds a consumer its queue accepted, listed for the management API.
    pub fn add_consumer(
        &mut self,
        tag: Arc<str>,
        queue: QueueHandle,
        listed: ConsumerInfo,
        own_timeout: Option<std::time::Duration>,
    ) {
        let id = listed.id;
        let registration = Some(self.info.register_consumer(listed));
        self.consumers.insert(
            tag,
            ChannelConsumer {
                id,
                queue,
                registration,
                own_timeout,
            },
        );
    }

    /// Removes the consumer under `tag` (`basic.cancel`).
    pub fn remove_consumer(&mut self, tag: &str) -> Option<ChannelConsumer> {
        self.consumers.remove(tag)
    }

    /// Its queue cancelled consumer `id` (deleted, failed): forgets it if it is still
    /// the consumer under `tag`. Whether it was.
    pub fn consumer_cancelled(&mut self, tag: &str, id: u64) -> bool {
        self.consumers.remove_if(tag, id)
    }

    /// The timeout of an unsettled delivery past its deadline at `now_ms` (the
    /// connection's clock), if any.
    pub fn overdue(&self, now_ms: u64) -> Option<std::time::Duration> {
        self.unacked.overdue(now_ms)
    }

    /// Whether an unsettled delivery has a deadline.
    pub fn has_deadlines(&self) -> bool {
        self.unacked.has_deadlines()
    }

    /// The queues this channel's consumers read from.
    pub fn consumer_queues(&self) -> Vec<QueueHandle> {
        self.consumers.queues()
    }

    // --- qos --------------------------------------------------------------------------

    /// `basic.qos` (see [`Qos::set`]).
    pub fn set_qos(&mut self, prefetch_count: u16, global: bool) {
        self.qos.set(prefetch_count, global);
        let shown = if global {
            &self.info.global_prefetch
        } else {
            &self.info.prefetch
        };
        shown.store(u32::from(prefetch_count), Ordering::Relaxed);
    }

    /// The prefetch a consumer created now gets.
    pub fn consumer_prefetch(&self) -> u32 {
        self.qos.consumer_prefetch()
    }

    /// The channel-wide credit a consumer created now shares, if a limit was set.
    pub fn consumer_credit(&self) -> Option<Arc<ChannelCredit>> {
        self.qos.consumer_credit()
    }

    /// Gives back `n` units of channel-wide credit.
    pub fn release_credit(&self, n: u32) {
        self.qos.release(n);
    }

    // --- confirm mode and transactions ------------------------------------------------

    /// `confirm.select` (a second one changes nothing).
    pub fn select_confirms(&mut self) -> AmqpResult<()> {
        if self.tx.is_some() {
            return Err(AmqpError::precondition(
                "cannot switch from tx to confirm mode",
            ));
        }
        if self.confirms.is_none() {
            self.confirms = Some(Confirms::new());
        }
        self.info.confirm.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// `tx.select`, with a transaction holding at most `limit` octets of publishes. A
    /// second select keeps the transaction as it is (as RabbitMQ).
    pub fn select_tx(&mut self, limit: u64) -> AmqpResult<()> {
        if self.confirms.is_some() {
            return Err(AmqpError::precondition(
                "cannot switch from confirm to tx mode",
            ));
        }
        if self.tx.is_none() {
            self.tx = Some(Box::new(Tx::new(limit)));
            self.info.transactional.store(true, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The transaction, in tx mode.
    pub fn tx_mut(&mut self) -> Option<&mut Tx> {
        self.tx.as_deref_mut()
    }

    /// `tx.rollback`: the held publishes are dropped, the held deliveries are unacked
    /// again under their tags.
    pub fn rollback(&mut self) -> AmqpResult<()> {
        let Some(tx) = self.tx.as_mut() else {
            return Err(not_transactional());
        };
        tx.rollback(&mut self.unacked);
        self.info.set_unacked(self.unacked.len());
        Ok(())
    }

    /// A queue's answer for publish `seq`: for confirm mode's, or the transaction's
    /// confirms (the two modes exclude each other).
    pub fn answer(&mut self, seq: u64, ok: bool) {
        match (&mut self.confirms, &mut self.tx) {
            (Some(c), _) => c.answer(seq, ok),
            (None, Some(tx)) => tx.answer(seq, ok),
            (None, None) => {}
        }
    }

    /// What has become due: in confirm mode the confirms to send, in order, into
    /// `confirms`; in tx mode the commits now answered, oldest first, into `commits`.
    pub fn drain_answers(&mut self, confirms: &mut Vec<Confirm>, commits: &mut Vec<Outcome>) {
        if let Some(c) = self.confirms.as_mut() {
            c.drain(confirms);
        } else if let Some(tx) = self.tx.as_mut() {
            tx.settled(commits);
        }
    }
}

/// `tx.commit` / `tx.rollback` outside tx mode.
pub fn not_transactional() -> AmqpError {
    AmqpError::precondition("channel is not transactional")
}

/// Tags a delivery on a channel's `unacked` record, keeping it until settled when it is
/// `kept`, and shows the count in the channel's `info`.
fn tag_kept(unacked: &mut Unacked, info: &ChannelInfo, kept: Option<Outstanding>) -> u64 {
    let recorded = kept.is_some();
    let tag = unacked.tag(kept);
    if recorded {
        info.set_unacked(unacked.len());
    }
    tag
}

#[cfg(test)]
mod tests {
    use super::*;
    use unacked::tests::queue;

    fn deliver(ch: &mut Channel, q: &QueueHandle, msg_id: u64) -> u64 {
        ch.tag_delivery(Some(Outstanding {
            queue: q.clone(),
            msg_id,
            charged: false,
            deadline: None,
        }))
    }

    fn listed(id: u64, tag: &str) -> ConsumerInfo {
        ConsumerInfo {
            id,
            tag: tag.into(),
            queue: "q".into(),
            ack_required: true,
            exclusive: false,
            prefetch: 0,
            arguments: Default::default(),
        }
    }

    #[test]
    fn the_unacked_count_shown_follows_every_take() {
        let q = queue("q");
        let mut ch = Channel::open(1, None);
        for id in 1..=4 {
            deliver(&mut ch, &q, id);
        }
        ch.tag_delivery(None);
        let shown = |ch: &Channel| ch.info.unacked.load(Ordering::Relaxed);
        assert_eq!(shown(&ch), 4);
        ch.take_one(1).unwrap();
        assert_eq!(shown(&ch), 3);
        ch.take_outstanding(3, true).unwrap();
        assert_eq!(shown(&ch), 1);
        assert_eq!(ch.take_unsettled().len(), 1);
        assert_eq!(shown(&ch), 0);
    }

    #[test]
    fn in_a_transaction_settlements_are_held_and_a_rollback_gives_the_tags_back() {
        let q = queue("q");
        let mut ch = Channel::open(1, None);
        ch.select_tx(1 << 20).unwrap();
        assert!(!ch.takes_plain_ack());
        let (a, b) = (deliver(&mut ch, &q, 10), deliver(&mut ch, &q, 11));
        assert!(ch.take_settled(b, true, false, true).unwrap().is_none());
        assert!(ch.take_one(a).is_err(), "taken by the transaction");
        assert_eq!(
            ch.take_settled(9, false, false, true)
                .unwrap_err()
                .code
                .code(),
            406,
            "an unknown tag fails at once"
        );
        ch.rollback().unwrap();
        assert_eq!(ch.take_one(a).unwrap().msg_id, 10);
        assert_eq!(ch.take_one(b).unwrap().msg_id, 11);
    }

    #[test]
    fn a_closing_channel_gives_back_what_a_transaction_held() {
        let q = queue("q");
        let mut ch = Channel::open(1, None);
        ch.select_tx(1 << 20).unwrap();
        let tag = deliver(&mut ch, &q, 10);
        deliver(&mut ch, &q, 11);
        ch.take_settled(tag, false, false, true).unwrap();
        let mut ids: Vec<u64> = ch.take_unsettled().iter().map(|o| o.msg_id).collect();
        ids.sort();
        assert_eq!(ids, [10, 11]);
        assert!(ch.tx_mut().is_none(), "the transaction ended");
    }

    #[test]
    fn release_names_every_queue_once_with_the_ids_it_must_requeue() {
        let (a, b, c) = (queue("a"), queue("b"), queue("c"));
        let mut ch = Channel::open(1, None);
        deliver(&mut ch, &a, 1);
        deliver(&mut ch, &b, 2);
        deliver(&mut ch, &a, 3);
        ch.add_consumer("t1".into(), b.clone(), listed(1, "t1"), None);
        ch.add_consumer("t2".into(), c.clone(), listed(2, "t2"), None);
        ch.select_confirms().unwrap();
        let released: Vec<(String, Vec<u64>)> = ch
            .release()
            .into_iter()
            .map(|(q, ids)| (q.name().to_string(), ids))
            .collect();
        assert_eq!(
            released,
            [
                ("a".to_string(), vec![1, 3]),
                ("b".to_string(), vec![2]),
                ("c".to_string(), vec![])
            ]
        );
        assert!(ch.consumer_queues().is_empty());
        assert!(ch.confirm_seq(1).is_none(), "confirm mode ended");
    }

    #[test]
    fn confirm_and_tx_modes_exclude_each_other() {
        let mut ch = Channel::open(1, None);
        ch.select_confirms().unwrap();
        ch.select_confirms().unwrap();
        assert_eq!(ch.select_tx(1).unwrap_err().code.code(), 406);
        let mut tx = Channel::open(2, None);
        tx.select_tx(1).unwrap();
        assert_eq!(tx.select_confirms().unwrap_err().code.code(), 406);
        assert_eq!(
            Channel::open(3, None).rollback().unwrap_err().code.code(),
            406
        );
    }

    #[test]
    fn confirms_answered_out_of_order_come_due_in_publish_order() {
        let mut ch = Channel::open(1, None);
        ch.select_confirms().unwrap();
        let (s1, s2) = (ch.confirm_seq(1).unwrap(), ch.confirm_seq(1).unwrap());
        let (mut due, mut commits) = (Vec::new(), Vec::new());
        ch.answer(s2, true);
        ch.drain_answers(&mut due, &mut commits);
        assert!(due.is_empty());
        ch.answer(s1, true);
        ch.drain_answers(&mut due, &mut commits);
        assert_eq!(due, [Confirm::Ack(s2, true)]);
        assert!(commits.is_empty());
    }

    #[test]
    fn a_delivery_is_wanted_only_by_its_live_consumer_on_an_open_channel() {
        let q = queue("q");
        let mut ch = Channel::open(1, None);
        ch.add_consumer("t".into(), q, listed(7, "t"), None);
        let wanted = |ch: &mut Channel, id| {
            ch.deliver_to(id, true, None, |_| None)
                .map(|t| (t.consumer_tag.to_string(), t.queue.name().to_string()))
        };
        assert_eq!(wanted(&mut ch, 7), Some(("t".into(), "q".into())));
        assert_eq!(wanted(&mut ch, 8), None);
        ch.start_closing();
        assert_eq!(wanted(&mut ch, 7), None);
        assert!(!ch.takes_publish());
    }

    #[test]
    fn a_closing_channel_ignores_content_frames() {
        let mut ch = Channel::open(1, None);
        ch.start_publish(BasicPublish {
            exchange: String::new(),
            routing_key: "q".into(),
            mandatory: false,
            immediate: false,
        });
        assert!(ch.interrupted_publish().is_some());
        ch.start_closing();
        assert!(
            ch.interrupted_publish().is_none(),
            "the publish was dropped"
        );
        assert!(ch.on_body(Bytes::from_static(b"x")).unwrap().is_none());
    }
}
