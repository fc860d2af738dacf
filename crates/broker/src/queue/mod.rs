//! Queues. Each queue is one task ([`actor`]) that alone owns its ready list, its unacked
//! map, its consumers and their prefetch credit; everything else talks to it through a
//! [`QueueHandle`], by sending [`QueueCommand`]s. The queue answers connections with
//! [`QueueEvent`]s on the connection's event channel (deliveries, confirms, cancels).
//!
//! Who owns what:
//! - the queue task: messages (ready and unacked), consumers, per-consumer credit;
//! - the channel (inside its connection task): delivery tags, and the map from a tag to
//!   the queue and message id it stands for;
//! - [`ChannelCredit`]: the one piece shared between them, for `basic.qos global=true`.
//!
//! A queue task knows the registry above it only through the [`QueueHost`] it is given
//! at spawn: this module never imports the vhost, connection, channel or admin layers.
//!
//! A stream (`x-queue-type: stream`) has a task of its own, [`stream`], behind the same
//! handle and commands: an append-only log read by each consumer from its own offset.

pub mod active;
pub mod actor;
#[cfg(test)]
mod actor_tests;
pub mod args;
pub mod at_least_once;
pub mod deadletter;
#[cfg(test)]
mod harness;
pub mod stream;

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use minimq_protocol::{FieldTable, ReplyCode};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
pub use args::{DeadLetterStrategy, Overflow, QueueArgs, QueueRef, QueueType};

/// Depth of a queue's command channel: senders wait when this many commands wait.
pub const QUEUE_CHANNEL_DEPTH: usize = 8192;
/// Published messages that may wait for a queue before publishers wait (see
/// [`PublishRoom`]); they resume once half of them were taken.
pub const QUEUE_PUBLISH_ROOM: usize = 8192;

/// What a queue task needs from the registry that holds it, passed at spawn. The vhost
/// implements it; tests pass a fake. Two operations, both off the hot path (publish →
/// deliver → ack uses neither):
pub trait QueueHost: Send + Sync {
    /// The queues a dead-lettered message published to `exchange` with `routing_key`
    /// (and `headers`) goes to, appended to `out`; an error when the exchange cannot
    /// take it (missing, internal). A host that is gone routes nowhere.
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) -> AmqpResult<()>;

    /// The queue deleted itself (auto-delete after its last consumer, `x-expires`):
    /// remove this incarnation from the registry, with its bindings and stored
    /// definition.
    fn forget_queue(&self, queue: &QueueHandle);
}

/// Sender half of a connection's event channel.
pub type EventSink = mpsc::UnboundedSender<QueueEvent>;

/// What a queue tells a connection.
#[derive(Debug)]
pub enum QueueEvent {
    /// Deliver `message` to consumer `consumer_id` (tag `consumer_tag`) on `channel`.
    Deliver(Delivery),
    /// Not from a queue: the registry asks the connection to close with `320
    /// CONNECTION_FORCED` and this reason (its user was deleted, the management API
    /// closed it). Sent on the same channel so the connection needs no other wake-up.
    CloseForced(String),
    /// The queue cancelled a consumer (the queue was deleted).
    Cancelled {
        /// Channel of the consumer.
        channel: u16,
        /// Its tag.
        consumer_tag: Arc<str>,
        /// Its broker-wide id.
        consumer_id: u64,
    },
    /// The outcome of a publish that asked for a confirm.
    Confirm {
        /// Channel the message was published on.
        channel: u16,
        /// Publish sequence number on that channel.
        seq: u64,
        /// Accepted (ack) or refused (nack).
        ok: bool,
    },
}

/// A message handed to a consumer.
#[derive(Debug)]
pub struct Delivery {
    /// Channel of the consumer.
    pub channel: u16,
    /// The consumer's broker-wide id (tags can repeat once a consumer is gone). The
    /// connection knows its tag: the delivery does not carry a reference to it, whose
    /// count both threads would move for every message.
    pub consumer_id: u64,
    /// The queue it comes from, where the delivery is settled; `None` for a no-ack
    /// delivery, which is not (the connection finds the queue through the consumer).
    pub queue: Option<QueueHandle>,
    /// The message's id within the queue (its publish order).
    pub msg_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Whether the consumer is no-ack (nothing to settle).
    pub no_ack: bool,
    /// Whether the delivery took a unit of the channel's shared (global) credit.
    pub charged: bool,
}

/// A publisher waiting for a confirm: where to send the outcome.
#[derive(Debug, Clone)]
pub struct ConfirmTicket {
    /// The publishing connection's event channel.
    pub sink: EventSink,
    /// The publishing channel.
    pub channel: u16,
    /// The publish sequence number.
    pub seq: u64,
}

/// `channel` of a ticket that was answered: no publish travels on channel 0 (the
/// connection refuses content methods there), so no live ticket has it.
const ANSWERED: u16 = 0;

impl ConfirmTicket {
    /// Reports the outcome. A publisher that has gone away needs no answer.
    pub fn send(mut self, ok: bool) {
        self.answer(ok);
    }

    fn answer(&mut self, ok: bool) {
        if self.channel == ANSWERED {
            return;
        }
        let _ = self.sink.send(QueueEvent::Confirm {
            channel: self.channel,
            seq: self.seq,
            ok,
        });
        self.channel = ANSWERED;
    }
}

/// A ticket dropped without an answer (its queue task panicked while holding it, the
/// store's writer died before the message was durable) is a nack: a publish must never
/// be confirmed, or left unanswered, when nothing took it.
impl Drop for ConfirmTicket {
    fn drop(&mut self) {
        self.answer(false);
    }
}

/// A persistent message's confirm waits for the store: the store finishes the
/// completion once the message is durable (or could not be made so), and the ticket
/// answers the publisher then. A completion the store drops unfinished answers nack.
impl From<ConfirmTicket> for crate::store::Completion {
    fn from(ticket: ConfirmTicket) -> Self {
        crate::store::Completion::new(move |ok| ticket.send(ok))
    }
}

/// The unacked-message limit of a whole channel (`basic.qos` with `global = true`), shared
/// by the channel and every queue it consumes from.
#[derive(Debug, Default)]
pub struct ChannelCredit {
    limit: AtomicU32,
    unacked: AtomicU32,
}

impl ChannelCredit {
    /// Sets the limit (0 = none).
    pub fn set_limit(&self, limit: u32) {
        self.limit.store(limit, Ordering::SeqCst);
    }

    /// Takes one unit of credit, if the limit allows.
    pub fn try_acquire(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        self.unacked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (limit == 0 || n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Whether a unit could be taken now.
    pub fn available(&self) -> bool {
        let limit = self.limit.load(Ordering::SeqCst);
        limit == 0 || self.unacked.load(Ordering::SeqCst) < limit
    }

    /// Gives `n` units back (the deliveries were settled).
    pub fn release(&self, n: u32) {
        let _ = self
            .unacked
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |u| {
                Some(u.saturating_sub(n))
            });
    }
}

/// Most octets of deliveries on their way to one connection's socket (sent by queues and
/// not yet handled by the connection, or handed to its writer and not yet written): past
/// it, queues stop delivering to that connection's consumers until half of it is written.
/// Enough for a fast consumer never to wait on it (thousands of small messages); small
/// enough that a client that stops reading costs little memory, not the queue's backlog.
pub const OUTPUT_ROOM: usize = 2 * 1024 * 1024;

/// What a delivery is counted for in [`OutputRoom`]: its body and about this much for its
/// frames and properties.
pub const DELIVERY_OVERHEAD: usize = 256;

/// The room left on a connection's way out, shared by the connection (its writer adds
/// what waits for the socket and takes off what was written) and the queues delivering
/// to its consumers (they add each delivery, the connection takes it off once encoded).
/// A queue that finds it full parks the consumer and asks to be told
/// ([`OutputRoom::wait`]); it is told (`CreditAvailable`) once the room is half empty.
#[derive(Debug)]
pub struct OutputRoom {
    pending: AtomicUsize,
    limit: usize,
    waiting: std::sync::Mutex<Vec<QueueHandle>>,
}

impl Default for OutputRoom {
    fn default() -> Self {
        OutputRoom::new(OUTPUT_ROOM)
    }
}

impl OutputRoom {
    /// A room of `limit` octets.
    pub fn new(limit: usize) -> OutputRoom {
        OutputRoom {
            pending: AtomicUsize::new(0),
            limit,
            waiting: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Whether another delivery may be sent now. An empty room takes any one delivery,
    /// so a message larger than the room still goes.
    pub fn has_room(&self) -> bool {
        self.pending.load(Ordering::Relaxed) < self.limit
    }

    /// How much a queue's dispatch reserves of the room at a time: one atomic add per
    /// this many octets of deliveries (64 KiB of the default room, about 240 small
    /// messages) instead of one per delivery. What a dispatch does not use goes back when
    /// it ends, so the room is over-counted by at most a 32nd of it, per queue
    /// delivering to the connection, for the length of one dispatch.
    pub fn reserve_chunk(&self) -> usize {
        self.limit / 32
    }

    /// Octets waiting now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }

    /// `n` more octets are on their way.
    pub fn add(&self, n: usize) {
        self.pending.fetch_add(n, Ordering::Relaxed);
    }

    /// `n` octets left (written, or handed on and counted again there); tells the
    /// waiting queues once the room is half empty.
    /// Every octet taken was added first (a queue adds before it sends, the writer before
    /// it queues), so a plain subtraction cannot go below zero.
    pub fn take(&self, n: usize) {
        if n == 0 {
            return;
        }
        let before = self.pending.fetch_sub(n, Ordering::Relaxed);
        let after = before.wrapping_sub(n);
        let low = self.limit / 2;
        if before >= low && after < low {
            self.wake();
        }
    }

    /// Asks to be told (`QueueCommand::CreditAvailable`) when there is room again;
    /// answers whether there is room already (then the caller goes on: the writer may
    /// have emptied the room between the check and this call).
    pub fn wait(&self, queue: &QueueHandle) -> bool {
        {
            let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            if !w.iter().any(|q| q.same(queue)) {
                w.push(queue.clone());
            }
        }
        self.has_room()
    }

    fn wake(&self) {
        let waiting = std::mem::take(&mut *self.waiting.lock().unwrap_or_else(|e| e.into_inner()));
        for q in waiting {
            q.send_now(QueueCommand::CreditAvailable);
        }
    }
}

/// A consumer as the queue needs to know it.
#[derive(Debug)]
pub struct ConsumerSpec {
    /// Broker-wide unique id.
    pub id: u64,
    /// Its tag on its channel.
    pub tag: Arc<str>,
    /// Owning connection id.
    pub conn_id: u64,
    /// Its channel.
    pub channel: u16,
    /// Deliveries need no ack.
    pub no_ack: bool,
    /// Asked to be the queue's only consumer.
    pub exclusive: bool,
    /// Per-consumer prefetch (0 = unlimited).
    pub prefetch: u32,
    /// Consumer priority (`x-priority`); higher priorities are served first.
    pub priority: i32,
    /// The channel's shared credit, when `basic.qos global` is in force.
    pub channel_credit: Option<Arc<ChannelCredit>>,
    /// The consumer's `basic.consume` arguments (a stream reads `x-stream-offset`).
    pub arguments: FieldTable,
    /// Where deliveries go.
    pub sink: EventSink,
    /// The room on its connection's way out.
    pub room: Arc<OutputRoom>,
}

/// A message handed out by `basic.get`.
#[derive(Debug)]
pub struct GetResult {
    /// Id within the queue.
    pub msg_id: u64,
    /// The message.
    pub message: Arc<Message>,
    /// Whether it was delivered before.
    pub redelivered: bool,
    /// Ready messages left after this one.
    pub remaining: u32,
}

/// Counts a queue reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Ready messages.
    pub ready: u32,
    /// Delivered, not yet acked.
    pub unacked: u32,
    /// Consumers.
    pub consumers: u32,
}

/// One message for a queue, and where its confirm goes.
#[derive(Debug)]
pub struct Publish {
    /// The message.
    pub message: Arc<Message>,
    /// Report the outcome here.
    pub confirm: Option<ConfirmTicket>,
}

/// Every queue's two command channels allocate room for 32 commands up front, so an
/// empty queue's memory grows with the largest command: a large rare one is boxed.
const _: () = assert!(std::mem::size_of::<QueueCommand>() <= 40);

/// A command to a queue task.
#[derive(Debug)]
pub enum QueueCommand {
    /// Enqueue messages, in order (a connection's publishes to this queue from one read
    /// of its socket). Sent with [`QueueHandle::publish`], which counts them in the
    /// queue's [`PublishRoom`].
    Publish(Vec<Publish>),
    /// Add a consumer.
    Consume {
        /// The consumer (boxed: every queue's command channels are sized by the largest
        /// command, and this one is rare).
        consumer: Box<ConsumerSpec>,
        /// Ok, or 403 when exclusivity forbids it.
        reply: oneshot::Sender<AmqpResult<()>>,
    },
    /// Remove a consumer (its unacked messages stay with its channel).
    Cancel {
        /// The consumer's id.
        consumer_id: u64,
        /// Answered once removed.
        reply: Option<oneshot::Sender<()>>,
    },
    /// Settle unacked messages: `requeue = false` forgets them, `true` puts them back,
    /// marked redelivered (a classic queue at their original place; a quorum queue by
    /// RabbitMQ's rule, see [`actor`]).
    Settle {
        /// Message ids, in the channel's delivery order.
        ids: Vec<u64>,
        /// Put back instead of forgetting.
        requeue: bool,
        /// The client rejected, nacked or recovered them (not acked, and not handed back
        /// because their channel or delivery went away): dead-lettered when not
        /// requeued; a quorum queue without a delivery limit requeues them at its tail.
        rejected: bool,
    },
    /// A channel closed: remove its consumers, then requeue `requeue`.
    ChannelClosed {
        /// The connection.
        conn_id: u64,
        /// The channel.
        channel: u16,
        /// Its unacked messages from this queue (a boxed slice: every queue's command
        /// channel is sized by its largest command).
        requeue: Box<[u64]>,
    },
    /// A channel's shared credit grew: retry blocked consumers.
    CreditAvailable,
    /// The queue's policy changed ([`QueueShared::set_policy`] was called first): take
    /// the new effective arguments and apply the limits at once.
    PolicyChanged,
    /// `basic.get`.
    Get {
        /// Remove on delivery instead of waiting for an ack.
        no_ack: bool,
        /// The message, or `None` when empty.
        reply: oneshot::Sender<Option<GetResult>>,
    },
    /// Drop all ready messages; answers how many.
    Purge {
        /// Count of purged messages.
        reply: oneshot::Sender<u32>,
    },
    /// Delete the queue; answers its ready count, or 406 when a condition fails.
    Delete {
        /// Only if it has no consumers.
        if_unused: bool,
        /// Only if it has no ready messages.
        if_empty: bool,
        /// Ready count, or an error.
        reply: oneshot::Sender<AmqpResult<u32>>,
    },
    /// Graceful stop: log which messages were delivered before, then end the task.
    Shutdown {
        /// Answered when done.
        reply: oneshot::Sender<()>,
    },
    /// Stop at once, logging nothing (a simulated crash).
    Halt {
        /// Answered when stopped.
        reply: oneshot::Sender<()>,
    },
    /// Report counts.
    Counts {
        /// The counts.
        reply: oneshot::Sender<QueueCounts>,
    },
}

/// Immutable facts about a queue and the sender of its command channel.
#[derive(Debug)]
pub struct QueueShared {
    /// Its name.
    pub name: Arc<str>,
    /// Its vhost's name, for error texts.
    pub vhost: Arc<str>,
    /// Survives restarts.
    pub durable: bool,
    /// Owned by one connection.
    pub exclusive_owner: Option<u64>,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// The declare arguments, as given.
    pub arguments: FieldTable,
    /// The parsed arguments, as declared.
    pub args: QueueArgs,
    /// The policy in force and the arguments it makes (see [`QueueShared::set_policy`]);
    /// `None` while they are the declared ones (most queues: no second copy of `args`).
    policy: std::sync::Mutex<Option<Arc<AppliedPolicy>>>,
    /// Its effective `x-consumer-timeout` in milliseconds (`u64::MAX`: none), for a
    /// `basic.get` or `basic.consume` to read without the lock.
    consumer_timeout: AtomicU64,
    /// Live counters, written by the queue task after every command.
    pub stats: QueueStats,
    /// Id in the message store, for a durable queue of a broker with a data directory.
    pub store_id: Option<u64>,
    tx: mpsc::Sender<QueueCommand>,
    /// Published messages waiting for the queue.
    room: PublishRoom,
    /// Plain acks, which the queue takes before any other command (see [`QueueInbox`]);
    /// set when the queue task opens the lane.
    acks: std::sync::OnceLock<mpsc::UnboundedSender<QueueCommand>>,
    id: u64,
    /// Its task panicked (see `actor::QueueActor::failed`): declares and consumes are
    /// refused, publishes nacked, until it is deleted.
    failed: std::sync::atomic::AtomicBool,
    /// Test hook: the queue task panics at its next command (see
    /// [`QueueHandle::panic_for_tests`]).
    #[cfg(test)]
    pub(crate) panic_next: std::sync::atomic::AtomicBool,
}

/// 404 for a queue whose task failed: RabbitMQ's text for a crashed queue.
pub fn crashed_error(queue: QueueRef<'_>) -> AmqpError {
    AmqpError::new(
        ReplyCode::NotFound,
        format!("{queue} has crashed and failed to restart"),
    )
}

impl QueueShared {
    /// Whether the queue's task panicked (the queue is failed until deleted).
    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Marks the queue failed; set before its command channel closes, so whoever finds
    /// it closed sees the flag.
    pub(crate) fn mark_failed(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

/// Live counters of a queue for listings (management API, `minimqctl`). Only the queue
/// task writes them, after each command it handles; readers see no lag beyond that.
#[derive(Debug, Default)]
pub struct QueueStats {
    /// Ready messages.
    pub ready: AtomicU64,
    /// Delivered, not yet acked.
    pub unacked: AtomicU64,
    /// Consumers.
    pub consumers: AtomicU64,
    /// Body octets of ready messages.
    pub ready_bytes: AtomicU64,
    /// Ready messages whose body is only on disk (paged out of memory).
    pub paged_out: AtomicU64,
    /// Messages published into the queue, ever.
    pub published: AtomicU64,
    /// Messages delivered (including `basic.get`), ever.
    pub delivered: AtomicU64,
    /// Messages acked, ever.
    pub acked: AtomicU64,
    /// Messages redelivered, ever.
    pub redelivered: AtomicU64,
    /// Paged-out messages dropped because they could not be read back from the log
    /// (a damaged log), ever.
    pub unreadable: AtomicU64,
    /// Dead letters waiting for their targets (at-least-once dead-lettering).
    pub dead_lettering: AtomicU64,
    /// Their body octets.
    pub dead_lettering_bytes: AtomicU64,
}

impl QueueStats {
    /// A snapshot of the gauges.
    pub fn counts(&self) -> QueueCounts {
        QueueCounts {
            ready: self.ready.load(Ordering::Relaxed) as u32,
            unacked: self.unacked.load(Ordering::Relaxed) as u32,
            consumers: self.consumers.load(Ordering::Relaxed) as u32,
        }
    }
}

/// Flow control for publishers: counts the published messages sent to a queue and not
/// yet taken by it. A publisher that finds more than [`QUEUE_PUBLISH_ROOM`] waiting
/// stops (and stops reading its socket) until the queue has taken half of them, so a
/// queue that falls behind wakes its publishers once per few thousand messages, not
/// once per message as a full bounded channel would.
#[derive(Debug, Default)]
pub struct PublishRoom {
    waiting: AtomicUsize,
    drained: Notify,
}

impl PublishRoom {
    /// Counts `n` more messages sent; `false` when that is more than the room.
    fn add(&self, n: usize) -> bool {
        self.waiting.fetch_add(n, Ordering::AcqRel) + n <= QUEUE_PUBLISH_ROOM
    }

    /// The queue took `n` messages.
    pub(crate) fn taken(&self, n: usize) {
        const LOW: usize = QUEUE_PUBLISH_ROOM / 2;
        let before = self.waiting.fetch_sub(n, Ordering::AcqRel);
        if before > LOW && before - n <= LOW {
            self.drained.notify_waiters();
        }
    }

    /// Waits until at most half the room is in use.
    async fn drained(&self) {
        loop {
            let notified = self.drained.notified();
            tokio::pin!(notified);
            // Registered before the check: a `taken` between the two is not missed.
            notified.as_mut().enable();
            if self.waiting.load(Ordering::Acquire) <= QUEUE_PUBLISH_ROOM / 2 {
                return;
            }
            notified.await;
        }
    }
}

/// What a queue task receives. Plain acks have a lane of their own, taken first: behind a
/// publisher that keeps the command channel full, an ack would otherwise wait for
/// thousands of publishes, and its consumer, out of prefetch credit, for the ack. An
/// ack only frees its message and credit, so taking it before commands sent earlier
/// changes nothing they do. The lane needs no bound: acks are bounded by the messages
/// delivered and not yet acknowledged. It is opened by the queue task when a consumer or
/// a `basic.get` first comes ([`QueueInbox::open_acks`]), before anything it delivers
/// can be acked: a queue nobody reads from carries no second channel (an idle queue's
/// memory is mostly its channels' first blocks).
#[derive(Debug)]
pub struct QueueInbox {
    commands: mpsc::Receiver<QueueCommand>,
    acks: Option<mpsc::UnboundedReceiver<QueueCommand>>,
}

impl QueueInbox {
    /// The next command: an ack if any is waiting, else the oldest other command.
    /// `None` once the queue's handles are all gone.
    pub(crate) async fn recv(&mut self) -> Option<QueueCommand> {
        match &mut self.acks {
            Some(acks) => tokio::select! {
                biased;
                Some(cmd) = acks.recv() => Some(cmd),
                cmd = self.commands.recv() => cmd,
            },
            None => self.commands.recv().await,
        }
    }

    /// The next command if one is waiting, acks first.
    pub(crate) fn try_recv(&mut self) -> Option<QueueCommand> {
        if let Some(cmd) = self.acks.as_mut().and_then(|a| a.try_recv().ok()) {
            return Some(cmd);
        }
        self.commands.try_recv().ok()
    }

    /// Opens the ack lane of `queue` if it is not open yet. Called by the queue task
    /// before it first delivers (a consumer added, a `basic.get`).
    pub(crate) fn open_acks(&mut self, queue: &QueueShared) {
        if self.acks.is_none() {
            let (tx, rx) = mpsc::unbounded_channel();
            // Only this task opens the lane, once: the cell is empty here.
            let _ = queue.acks.set(tx);
            self.acks = Some(rx);
        }
    }

    /// Refuses further commands; what is already queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.commands.close();
        if let Some(acks) = &mut self.acks {
            acks.close();
        }
    }
}

/// A cheap, cloneable reference to a queue.
#[derive(Debug, Clone)]
pub struct QueueHandle(Arc<QueueShared>);

static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

/// What a queue's policy and operator policy make of it: their names and definition (as
/// the management API shows them) and the effective arguments, worked out by the layer
/// that owns policies. Without either, the declared arguments.
#[derive(Debug, Clone)]
pub struct AppliedPolicy {
    /// The policy's name.
    pub name: Option<Arc<str>>,
    /// The operator policy's name.
    pub operator: Option<Arc<str>>,
    /// The definition in force (the two merged when both apply), JSON.
    pub definition: Option<Arc<serde_json::Value>>,
    /// The arguments the queue acts on.
    pub args: QueueArgs,
}

impl QueueShared {
    /// The policy in force and the arguments the queue acts on.
    pub fn applied_policy(&self) -> AppliedPolicy {
        match &*self.policy.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(applied) => AppliedPolicy::clone(applied),
            None => AppliedPolicy {
                name: None,
                operator: None,
                definition: None,
                args: self.args.clone(),
            },
        }
    }

    /// Its effective `x-consumer-timeout` (argument or policy), if any.
    pub fn consumer_timeout(&self) -> Option<std::time::Duration> {
        match self.consumer_timeout.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(std::time::Duration::from_millis(ms)),
        }
    }

    /// The arguments the queue acts on: the declared ones with its policy applied.
    pub fn effective_args(&self) -> QueueArgs {
        match &*self.policy.lock().unwrap_or_else(|e| e.into_inner()) {
            Some(applied) => applied.args.clone(),
            None => self.args.clone(),
        }
    }

    /// Sets the policy in force; answers whether the effective arguments changed (then a
    /// running queue task is told with [`QueueCommand::PolicyChanged`]).
    pub fn set_policy(&self, applied: AppliedPolicy) -> bool {
        let mut slot = self.policy.lock().unwrap_or_else(|e| e.into_inner());
        let before = slot.as_ref().map_or(&self.args, |a| &a.args);
        let changed = *before != applied.args;
        self.consumer_timeout.store(
            applied.args.consumer_timeout.unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        let declared =
            applied.name.is_none() && applied.operator.is_none() && applied.definition.is_none();
        *slot = (!declared || applied.args != self.args).then(|| Arc::new(applied));
        changed
    }
}

impl QueueHandle {
    // Each argument is one of the queue's facts, fixed at creation: a builder would only
    // spread the same list over more lines.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        vhost: Arc<str>,
        name: Arc<str>,
        durable: bool,
        exclusive_owner: Option<u64>,
        auto_delete: bool,
        arguments: FieldTable,
        args: QueueArgs,
        store_id: Option<u64>,
    ) -> (QueueHandle, QueueInbox) {
        let (tx, rx) = mpsc::channel(QUEUE_CHANNEL_DEPTH);
        let id = NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed);
        let shared = QueueShared {
            name,
            vhost,
            durable,
            exclusive_owner,
            auto_delete,
            arguments,
            consumer_timeout: AtomicU64::new(args.consumer_timeout.unwrap_or(u64::MAX)),
            policy: std::sync::Mutex::new(None),
            args,
            stats: QueueStats::default(),
            store_id,
            tx,
            room: PublishRoom::default(),
            acks: std::sync::OnceLock::new(),
            id,
            failed: std::sync::atomic::AtomicBool::new(false),
            #[cfg(test)]
            panic_next: std::sync::atomic::AtomicBool::new(false),
        };
        let inbox = QueueInbox {
            commands: rx,
            acks: None,
        };
        (QueueHandle(Arc::new(shared)), inbox)
    }

    /// The queue's facts.
    pub fn info(&self) -> &QueueShared {
        &self.0
    }

    /// Its name.
    pub fn name(&self) -> &Arc<str> {
        &self.0.name
    }

    /// Its name and vhost, as error texts name it.
    pub fn queue_ref(&self) -> QueueRef<'_> {
        QueueRef::new(&self.0.name, &self.0.vhost)
    }

    /// A broker-wide id, distinct for every queue ever created.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// Test hook: makes the queue task panic when it handles its next command, as a bug
    /// would.
    #[cfg(test)]
    pub(crate) fn panic_for_tests(&self) {
        self.0.panic_next.store(true, Ordering::SeqCst);
    }

    /// Whether two handles refer to the same queue incarnation.
    pub fn same(&self, other: &QueueHandle) -> bool {
        self.0.id == other.0.id
    }

    /// Sends a command; `false` when the queue is gone.
    pub async fn send(&self, cmd: QueueCommand) -> bool {
        self.deliver(cmd).await.is_ok()
    }

    /// Sends a command, waiting for room; gives it back when the queue is gone.
    async fn deliver(&self, cmd: QueueCommand) -> Result<(), QueueCommand> {
        // Room is the common case: no send future (and no copy of the command into it).
        match self.0.tx.try_send(cmd) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Closed(cmd)) => Err(cmd),
            Err(mpsc::error::TrySendError::Full(cmd)) => self.0.tx.send(cmd).await.map_err(|e| e.0),
        }
    }

    /// Sends publishes. When the queue has more published messages waiting than
    /// [`QUEUE_PUBLISH_ROOM`], waits until it has taken half of them. A queue that is
    /// gone confirms them at once: nobody else will.
    pub async fn publish(&self, batch: Vec<Publish>) {
        let room = self.0.room.add(batch.len());
        if let Err(cmd) = self.deliver(QueueCommand::Publish(batch)).await {
            actor::answer_dead(cmd, self);
            return;
        }
        if !room {
            tokio::select! {
                _ = self.0.room.drained() => {}
                // A queue task that ended without taking them (it failed).
                _ = self.0.tx.closed() => {}
            }
        }
    }

    /// Sends publishes without waiting (for a queue's own dead-lettering, which must not
    /// wait for another queue).
    pub fn publish_now(&self, batch: Vec<Publish>) -> bool {
        self.0.room.add(batch.len());
        self.send_now(QueueCommand::Publish(batch))
    }

    /// Sends plain acks (`Settle` without requeue or rejection) ahead of every other
    /// command waiting for the queue; `false` when the queue is gone.
    pub fn send_acks(&self, ids: Vec<u64>) -> bool {
        let cmd = QueueCommand::Settle {
            ids,
            requeue: false,
            rejected: false,
        };
        match self.0.acks.get() {
            Some(acks) => acks.send(cmd).is_ok(),
            // No lane yet: nothing was delivered, so nothing can be acked; the queue
            // answers an unknown id as any stale ack.
            None => self.send_now(cmd),
        }
    }

    /// Sends a command without waiting for room; for cleanup paths that must not block.
    pub fn send_now(&self, cmd: QueueCommand) -> bool {
        match self.0.tx.try_send(cmd) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.0.tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(cmd).await;
                });
                true
            }
        }
    }

    /// Asks for the queue's counts; `None` when the queue is gone.
    pub async fn counts(&self) -> Option<QueueCounts> {
        let (reply, rx) = oneshot::channel();
        if !self.send(QueueCommand::Counts { reply }).await {
            return None;
        }
        rx.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    fn bare_queue() -> (QueueHandle, QueueInbox) {
        QueueHandle::new(
            "/".into(),
            "q".into(),
            false,
            None,
            false,
            FieldTable::new(),
            QueueArgs::default(),
            None,
        )
    }

    fn batch(n: usize) -> Vec<Publish> {
        let message = Arc::new(Message::new(
            "".into(),
            "q".into(),
            minimq_protocol::BasicProperties::default(),
            bytes::Bytes::from_static(b"x"),
        ));
        (0..n)
            .map(|_| Publish {
                message: message.clone(),
                confirm: None,
            })
            .collect()
    }

    /// Takes the next publish command as a queue task does; answers how many it held.
    fn take_publish(handle: &QueueHandle, inbox: &mut QueueInbox) -> usize {
        match inbox.try_recv() {
            Some(QueueCommand::Publish(batch)) => {
                handle.info().room.taken(batch.len());
                batch.len()
            }
            other => panic!("expected a publish, got {other:?}"),
        }
    }

    /// A publisher goes on while the queue has room, waits once it has more than
    /// [`QUEUE_PUBLISH_ROOM`] messages waiting, and resumes only once no more than half
    /// the room is in use — not at the first message taken.
    #[tokio::test]
    async fn a_publisher_waits_past_the_room_until_half_of_it_is_free() {
        let (handle, mut inbox) = bare_queue();
        let quarter = QUEUE_PUBLISH_ROOM / 4;
        for _ in 0..4 {
            assert!(
                handle.publish(batch(quarter)).now_or_never().is_some(),
                "within the room: no wait"
            );
        }
        let over = handle.publish(batch(1));
        tokio::pin!(over);
        assert!(futures::poll!(over.as_mut()).is_pending(), "past the room");
        assert_eq!(take_publish(&handle, &mut inbox), quarter);
        assert!(
            futures::poll!(over.as_mut()).is_pending(),
            "3/4 + 1 waiting"
        );
        assert_eq!(take_publish(&handle, &mut inbox), quarter);
        assert!(
            futures::poll!(over.as_mut()).is_pending(),
            "1/2 + 1 waiting"
        );
        assert_eq!(take_publish(&handle, &mut inbox), quarter);
        // Woken by the take that brought it to half or less.
        tokio::time::timeout(std::time::Duration::from_secs(5), over)
            .await
            .expect("resumed once half the room was free");
        assert_eq!(take_publish(&handle, &mut inbox), quarter);
        assert_eq!(take_publish(&handle, &mut inbox), 1);
        assert!(inbox.try_recv().is_none());
    }

    /// A waiting publisher is not stranded by a queue task that ends without taking
    /// what it was sent; a publish to a queue that is gone confirms at once.
    #[tokio::test]
    async fn a_queue_that_is_gone_releases_and_confirms_its_publishers() {
        let (handle, inbox) = bare_queue();
        assert!(handle
            .publish(batch(QUEUE_PUBLISH_ROOM))
            .now_or_never()
            .is_some());
        let over = handle.publish(batch(1));
        tokio::pin!(over);
        assert!(futures::poll!(over.as_mut()).is_pending());
        drop(inbox);
        tokio::time::timeout(std::time::Duration::from_secs(5), over)
            .await
            .expect("released when the queue went");

        let (events, mut confirms) = mpsc::unbounded_channel();
        let mut late = batch(1);
        late[0].confirm = Some(ConfirmTicket {
            sink: events,
            channel: 7,
            seq: 42,
        });
        handle.publish(late).await;
        match confirms.try_recv() {
            Ok(QueueEvent::Confirm {
                channel: 7,
                seq: 42,
                ok: true,
            }) => {}
            other => panic!("expected the confirm, got {other:?}"),
        }
    }

    /// Plain acks overtake whatever else waits for the queue, and nothing is lost or
    /// reordered within a lane.
    #[tokio::test]
    async fn acks_are_taken_before_other_commands() {
        let (handle, mut inbox) = bare_queue();
        inbox.open_acks(handle.info());
        let mut purges = Vec::new();
        for _ in 0..10 {
            let (reply, rx) = oneshot::channel();
            assert!(handle.send(QueueCommand::Purge { reply }).await);
            purges.push(rx);
        }
        assert!(handle.send_acks(vec![1, 2]));
        assert!(handle.send_acks(vec![3]));
        let mut acked = Vec::new();
        for _ in 0..2 {
            match inbox.recv().await {
                Some(QueueCommand::Settle {
                    ids,
                    requeue: false,
                    rejected: false,
                }) => acked.extend(ids),
                other => panic!("expected the acks first, got {other:?}"),
            }
        }
        assert_eq!(acked, [1, 2, 3]);
        for n in 0..10 {
            match inbox.try_recv() {
                Some(QueueCommand::Purge { reply }) => reply.send(n).unwrap(),
                other => panic!("expected purge {n}, got {other:?}"),
            }
        }
        assert!(inbox.try_recv().is_none());
        for (n, rx) in purges.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), n as u32, "purges answered in order");
        }
    }
}
