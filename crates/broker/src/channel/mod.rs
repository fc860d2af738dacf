//! Channel state, kept inside its connection task: delivery tags and what each stands
//! for, the channel's consumers, its qos, its confirm state and the publish being
//! assembled from method, header and body frames. The method handlers are in
//! [`handlers`]; the confirm rule in [`confirms`]; a transaction's state in [`tx`].

pub mod confirms;
pub mod handlers;
pub mod tx;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use minimq_protocol::properties::LastContent;
use minimq_protocol::{BasicProperties, BasicPublish};

use crate::error::{AmqpError, AmqpResult};
use crate::queue::{ChannelCredit, QueueHandle};
use crate::registry::{ChannelInfo, ChannelRegistration, ConsumerRegistration};
use confirms::Confirms;

/// What a delivery tag stands for.
#[derive(Debug, Clone)]
pub struct Outstanding {
    /// The queue holding the message.
    pub queue: QueueHandle,
    /// The message's id in that queue.
    pub msg_id: u64,
    /// Whether it took a unit of the channel's global credit.
    pub charged: bool,
}

/// A consumer on this channel.
#[derive(Debug, Clone)]
pub struct ChannelConsumer {
    /// Broker-wide consumer id.
    pub id: u64,
    /// The queue consumed from.
    pub queue: QueueHandle,
    /// Keeps the consumer listed in the registry while it exists.
    pub registration: Option<ConsumerRegistration>,
}

/// A publish whose content is still arriving.
#[derive(Debug)]
pub struct PendingPublish {
    /// The `basic.publish` method.
    pub method: BasicPublish,
    /// Properties and declared size, once the header frame arrived.
    pub header: Option<(BasicProperties, u64)>,
    /// Body frames so far.
    pub body: BodyParts,
}

/// Body frames of one message. One frame (the common case) stays a zero-copy slice.
#[derive(Debug, Default)]
pub enum BodyParts {
    /// Nothing yet.
    #[default]
    Empty,
    /// One frame's payload.
    One(Bytes),
    /// Several frames, concatenated.
    Many(BytesMut),
}

impl BodyParts {
    /// Octets received.
    pub fn len(&self) -> u64 {
        match self {
            BodyParts::Empty => 0,
            BodyParts::One(b) => b.len() as u64,
            BodyParts::Many(b) => b.len() as u64,
        }
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a body frame's payload.
    pub fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            BodyParts::Empty => BodyParts::One(chunk),
            BodyParts::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + chunk.len());
                b.extend_from_slice(&first);
                b.extend_from_slice(&chunk);
                BodyParts::Many(b)
            }
            BodyParts::Many(mut b) => {
                b.extend_from_slice(&chunk);
                BodyParts::Many(b)
            }
        }
    }

    /// The whole body. A small one is copied out of the frame it arrived in: as a
    /// slice it would keep the connection's whole read buffer (kilobytes) alive for as
    /// long as the message is queued, and keep the reader from reusing that buffer.
    pub fn into_bytes(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) if owns_copy(b.len()) => Bytes::copy_from_slice(&b),
            BodyParts::One(b) => b,
            BodyParts::Many(b) => b.freeze(),
        }
    }
}

/// Bodies up to this size get an allocation of their own (see [`BodyParts::into_bytes`]).
pub const SMALL_BODY: usize = 1024;

/// Whether a body of `len` octets arriving in one frame is copied into an allocation of
/// its own rather than kept as a slice of the read buffer (see [`BodyParts::into_bytes`]).
pub fn owns_copy(len: usize) -> bool {
    len <= SMALL_BODY
}

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
    /// Its number.
    pub id: u16,
    /// Open or closing.
    pub status: ChannelStatus,
    /// Next delivery tag (tags start at 1).
    pub next_tag: u64,
    /// Unsettled deliveries by tag.
    pub outstanding: BTreeMap<u64, Outstanding>,
    /// Consumers by tag.
    pub consumers: crate::store::idhash::IdMap<Arc<str>, ChannelConsumer>,
    /// Prefetch for consumers created from now on (`basic.qos global=false`).
    pub prefetch: u32,
    /// The channel-wide limit (`basic.qos global=true`), shared with queues.
    pub credit: Arc<ChannelCredit>,
    /// Whether a channel-wide limit was ever set.
    pub global_qos: bool,
    /// Confirm mode state.
    pub confirms: Option<Confirms>,
    /// Transaction state, in tx mode (boxed: most channels never use it).
    pub tx: Option<Box<tx::Tx>>,
    /// A publish being assembled.
    pub publish: Option<PendingPublish>,
    /// Exchange, routing key and properties of the last publish: the next one usually
    /// carries the same, and then shares them instead of keeping its own copy (the
    /// default-exchange route cache knows the routing key by pointer).
    pub last: LastContent,
    /// The queue the last publish to the default exchange went to.
    pub default_route: Option<crate::vhost::DefaultRoute>,
    /// What the management API sees of this channel.
    pub info: Arc<ChannelInfo>,
    /// Keeps the channel listed in its connection's registry entry while it exists.
    pub registration: Option<ChannelRegistration>,
}

impl Channel {
    /// A newly opened channel.
    pub fn new(id: u16) -> Channel {
        Channel {
            id,
            status: ChannelStatus::Open,
            next_tag: 1,
            outstanding: BTreeMap::new(),
            consumers: Default::default(),
            prefetch: 0,
            credit: Arc::new(ChannelCredit::default()),
            global_qos: false,
            confirms: None,
            tx: None,
            publish: None,
            last: LastContent::default(),
            default_route: None,
            info: Arc::new(ChannelInfo::new(id)),
            registration: None,
        }
    }

    /// Whether a `basic.publish` may start here: open, with no publish in progress.
    pub fn takes_publish(&self) -> bool {
        self.status == ChannelStatus::Open && self.publish.is_none()
    }

    /// Whether a `basic.ack` here is plain (see `Conn::plain_ack`): as
    /// [`Channel::takes_publish`], without channel-wide credit (`basic.qos global`), so
    /// no delivery took any, and outside a transaction (which holds acks until commit).
    pub fn takes_plain_ack(&self) -> bool {
        self.takes_publish() && !self.global_qos && self.tx.is_none()
    }

    /// The confirm state that answers from queues go to: confirm mode's, or the
    /// transaction's (the two modes exclude each other).
    pub fn confirms_mut(&mut self) -> Option<&mut Confirms> {
        match (&mut self.confirms, &mut self.tx) {
            (Some(c), _) => Some(c),
            (None, Some(tx)) => Some(&mut tx.confirms),
            (None, None) => None,
        }
    }

    /// Takes every unsettled delivery, those a transaction held included, and ends the
    /// transaction: for a channel that closes, whose deliveries all go back.
    pub fn take_unsettled(&mut self) -> BTreeMap<u64, Outstanding> {
        if let Some(tx) = self.tx.take() {
            tx.abandon(&mut self.outstanding);
        }
        self.info.set_unacked(0);
        std::mem::take(&mut self.outstanding)
    }

    /// As [`Channel::take_outstanding`], keeping the tags (a transaction gives them back
    /// on rollback).
    pub fn take_tagged(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<(u64, Outstanding)>> {
        self.take_range(tag, multiple)
            .map(|taken| taken.into_iter().collect())
    }

    /// Takes the deliveries an ack / nack / reject names: `tag` alone, or every tag up to
    /// it with `multiple` (all of them for tag 0). An unknown tag is 406, as in RabbitMQ.
    pub fn take_outstanding(&mut self, tag: u64, multiple: bool) -> AmqpResult<Vec<Outstanding>> {
        self.take_range(tag, multiple)
            .map(|taken| taken.into_values().collect())
    }

    /// Takes the one delivery a single ack / nack / reject names (as
    /// [`Channel::take_outstanding`] without `multiple`).
    pub fn take_one(&mut self, tag: u64) -> AmqpResult<Outstanding> {
        let taken = self
            .outstanding
            .remove(&tag)
            .ok_or_else(|| AmqpError::precondition(format!("unknown delivery tag {tag}")));
        self.info.set_unacked(self.outstanding.len());
        taken
    }

    /// The deliveries `tag` / `multiple` name, by tag, taken out of the channel's
    /// unsettled ones (which the management API's count follows).
    fn take_range(&mut self, tag: u64, multiple: bool) -> AmqpResult<BTreeMap<u64, Outstanding>> {
        let taken = if multiple && tag == 0 {
            std::mem::take(&mut self.outstanding)
        } else if !self.outstanding.contains_key(&tag) {
            return Err(AmqpError::precondition(format!(
                "unknown delivery tag {tag}"
            )));
        } else if multiple {
            let rest = self.outstanding.split_off(&(tag + 1));
            std::mem::replace(&mut self.outstanding, rest)
        } else {
            self.outstanding.remove_entry(&tag).into_iter().collect()
        };
        self.info.set_unacked(self.outstanding.len());
        Ok(taken)
    }
}

/// Groups settled deliveries by queue: one command per queue.
pub fn group_by_queue(items: Vec<Outstanding>) -> Vec<(QueueHandle, Vec<u64>, u32)> {
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
