//! The queue task: the single owner of a queue's messages and consumers.
//!
//! Dispatch model (RabbitMQ's): consumers with credit wait in `active`, a FIFO. The head
//! consumer gets the head message and goes to the tail if it still has credit; otherwise
//! it is parked as blocked and rejoins at the tail when an ack (or more channel credit)
//! gives it room. Two consumers and five messages split 1,3,5 / 2,4; with prefetch 1 a
//! busy worker is skipped, so faster workers get more.
//!
//! Ordering: every message gets a sequence number at enqueue. A classic queue keeps its
//! ready list in sequence order, so a requeued message goes back to its original place,
//! not the tail. A quorum queue orders as RabbitMQ 3.10's does: what comes back without
//! the client asking (its channel closed, its delivery never reached the client) — and,
//! when the queue has a delivery limit, what the client rejected too — waits in a
//! "returns" stretch at the head, in the order it came back; without a delivery limit a
//! rejected, nacked or recovered message goes to the tail.
//!
//! Paging: a message is held in memory or, by its id in the message store, only on disk
//! ([`Held`]). A durable queue pages its persistent messages out past its memory budget.
//! Under memory pressure (the store's [`Pressure`] signal, set by the memory monitor) any
//! queue, durable or not, keeps only its first [`PAGING_HEAD`] ready messages in memory:
//! the others are paged out, a transient one (or any message of a non-durable queue) as
//! a transient record, which is released when the queue lets go of it and which no
//! restart brings back. When the signal turns on, the backlog already in memory is paged
//! out too. A broker without a store cannot page: the memory alarm is its only bound.

use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;

use minimq_protocol::ReplyCode;
use tokio::time::Instant;

use super::active::Active;
use super::at_least_once::AtLeastOnce;
use super::deadletter::{self, Reason};
use super::{
    ConfirmTicket, ConsumerSpec, Delivery, GetResult, Overflow, Publish, QueueArgs, QueueCommand,
    QueueCounts, QueueEvent, QueueHandle, QueueHost, QueueInbox, QueueType,
};
use crate::error::AmqpError;
use crate::message::Message;
use crate::store::idhash::IdMap;
use crate::store::{Pressure, RecoveredMessage, Store, PAGE_OVERHEAD};

/// Most commands handled before the queue's bookkeeping (settle records for the log,
/// the counts the management API reads) runs once for all of them.
const COMMAND_BATCH: usize = 64;

/// Under memory pressure, how many ready messages at the head a queue keeps in memory:
/// what one page-in reads back at most, so consumers are served from memory while the
/// next batch is read.
pub(super) const PAGING_HEAD: usize = 256;

/// A queued message's content: in memory, or only in the log, by store message id, read
/// back just before it is delivered: a persistent message of a durable queue past its
/// memory budget (its own message record), or any message under memory pressure (a
/// transient record of the queue's own when the entry is not `persisted`).
enum Held {
    Mem(Arc<Message>),
    Disk(u64),
}

struct Entry {
    seq: u64,
    held: Held,
    /// Body length.
    size: u32,
    expires_at: Option<Expiry>,
    redelivered: bool,
    /// Logged in the message store: leaving the queue must be logged too.
    persisted: bool,
    /// How often it was delivered (`x-delivery-count` on a redelivery is this minus one).
    deliveries: u32,
    /// Its priority in a priority queue (`x-max-priority`); 0 otherwise.
    priority: u8,
}

/// When an entry expires, in 8 octets where an `Instant` takes 16: microseconds since the
/// queue task's `epoch`, rounded up (never early), plus one (so `Option<Expiry>` is 8
/// octets too). Under memory pressure the ready list is what stays in memory per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expiry(std::num::NonZeroU64);

impl Expiry {
    /// `ms` milliseconds after `now`.
    fn after(epoch: Instant, now: Instant, ms: u64) -> Expiry {
        let d = (now + std::time::Duration::from_millis(ms)).saturating_duration_since(epoch);
        let us = d.as_micros() + u128::from(!d.subsec_nanos().is_multiple_of(1000));
        let us = u64::try_from(us).unwrap_or(u64::MAX - 1);
        Expiry(std::num::NonZeroU64::MIN.saturating_add(us))
    }

    fn instant(self, epoch: Instant) -> Instant {
        epoch + std::time::Duration::from_micros(self.0.get() - 1)
    }
}

impl Entry {
    /// The ready list's order: higher priority first, then publish order.
    fn key(&self) -> (std::cmp::Reverse<u8>, u64) {
        (std::cmp::Reverse(self.priority), self.seq)
    }

    /// What it costs in memory while ready, for the queue's memory budget.
    fn mem_cost(&self) -> u64 {
        match self.held {
            Held::Mem(_) => u64::from(self.size) + PAGE_OVERHEAD,
            Held::Disk(_) => 0,
        }
    }
}

/// Running totals over the ready list, updated as each entry comes and goes (one place,
/// so no path can forget one of them).
#[derive(Debug, Default)]
struct ReadyTotals {
    /// Body octets.
    bytes: u64,
    /// Memory cost of the messages held in memory ([`Entry::mem_cost`]).
    mem: u64,
    /// Messages held only on disk.
    paged: u64,
    /// Messages with an expiry: while there are none (and the queue has no TTL or
    /// `x-expires`), a command needs no clock reading.
    expiring: u64,
}

impl ReadyTotals {
    fn add(&mut self, e: &Entry) {
        self.bytes += u64::from(e.size);
        self.mem += e.mem_cost();
        self.paged += u64::from(matches!(e.held, Held::Disk(_)));
        self.expiring += u64::from(e.expires_at.is_some());
    }

    fn remove(&mut self, e: &Entry) {
        self.bytes -= u64::from(e.size);
        self.mem -= e.mem_cost();
        self.paged -= u64::from(matches!(e.held, Held::Disk(_)));
        self.expiring -= u64::from(e.expires_at.is_some());
    }
}

struct Unacked {
    entry: Entry,
    consumer: Option<u64>,
}

/// A dead letter held until its targets take it (at-least-once dead-lettering).
struct HeldDeadLetter {
    /// The entry that left the ready or unacked list; settled once the targets took it.
    entry: Entry,
    /// The message as it was in this queue, for the cycle check of every routing.
    original: Arc<Message>,
    reason: Reason,
}

struct Consumer {
    spec: ConsumerSpec,
    unacked: u32,
    blocked: bool,
    /// Octets of its connection's room reserved by the dispatch running now and not yet
    /// used; zero between dispatches ([`OutputRoom::reserve_chunk`](super::OutputRoom::reserve_chunk)).
    reserved: usize,
}

impl Consumer {
    fn own_credit(&self) -> bool {
        self.spec.no_ack || self.spec.prefetch == 0 || self.unacked < self.spec.prefetch
    }

    /// Unblocks a blocked consumer that has credit again; answers whether it did.
    fn rejoin(&mut self) -> bool {
        let rejoins = self.blocked && self.own_credit() && self.channel_credit();
        if rejoins {
            self.blocked = false;
        }
        rejoins
    }

    fn channel_credit(&self) -> bool {
        self.spec.room.has_room()
            && (self.spec.no_ack
                || self
                    .spec
                    .channel_credit
                    .as_ref()
                    .is_none_or(|c| c.available()))
    }
}

/// The state of one queue; see the module docs.
pub struct QueueActor {
    /// The arguments it acts on: the declared ones with its policy applied (refreshed on
    /// [`QueueCommand::PolicyChanged`]).
    /// Boxed: read through one pointer, and kept out of the task's future, which every
    /// queue carries while idle.
    args: Box<QueueArgs>,
    handle: QueueHandle,
    /// The registry holding the queue: where dead letters are routed, and what forgets
    /// the queue when it deletes itself.
    host: Arc<dyn QueueHost>,
    /// The broker's message store, if it has one: a durable queue logs its persistent
    /// messages there, and any queue pages out to it under memory pressure.
    store: Option<Arc<Store>>,
    /// The store's memory pressure signal, and its changes (`None` without a store).
    pressure: Option<(Arc<Pressure>, tokio::sync::watch::Receiver<bool>)>,
    /// Persisted messages that left the queue during the current command; logged as one
    /// settle record when the command is done.
    settled: Vec<u64>,
    /// Transient records the queue let go of during the current command; released with
    /// the settle record.
    released: Vec<u64>,
    ready: VecDeque<Entry>,
    /// How many entries at the head of `ready` are a quorum queue's returns (see the
    /// module docs); always 0 in a classic queue.
    returns: usize,
    /// Running totals over `ready`.
    totals: ReadyTotals,
    /// Dead letters waiting for their targets (at-least-once dead-lettering only).
    dead_letters: AtLeastOnce<HeldDeadLetter>,
    /// Past this `totals.mem`, persistent messages are paged out.
    memory_budget: u64,
    /// The last clock reading, for commands that need none.
    last_now: Instant,
    /// What the ready list's expiries count from (the task's start).
    epoch: Instant,
    unacked: IdMap<u64, Unacked>,
    consumers: BTreeMap<u64, Consumer>,
    active: Active,
    /// Last time the queue was used (consumed, got from, declared), for `x-expires`.
    last_used: Instant,
    next_seq: u64,
    had_consumer: bool,
    /// The timer of the run loop (message expiry, dead-letter retry, `x-expires`),
    /// made with the first deadline the queue has.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Set when a dispatch stopped at a paged-out head: the run loop reads it back, off
    /// the task ([`QueueActor::page_in`]), and dispatches again before the next command.
    paged_head: bool,
}

/// Starts the task of a queue; a durable queue recovered from the store starts with its
/// `recovered` messages, in order.
pub fn spawn(
    handle: QueueHandle,
    rx: QueueInbox,
    host: Arc<dyn QueueHost>,
    store: Option<Arc<Store>>,
    recovered: Vec<RecoveredMessage>,
) {
    let now = Instant::now();
    let args = handle.info().effective_args();
    let ttl = args.message_ttl;
    let max_priority = args.max_priority;
    let mut ready = VecDeque::with_capacity(recovered.len());
    let mut totals = ReadyTotals::default();
    let mut next_seq = 1;
    // Recovered messages start on disk; they are read back as consumers reach them.
    for m in recovered {
        next_seq = next_seq.max(m.seq.saturating_add(1));
        let priority = max_priority.map_or(0, |max| m.priority.min(max));
        let ttl = match (ttl, m.ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let entry = Entry {
            seq: m.seq,
            expires_at: ttl.map(|ms| Expiry::after(now, now, ms)),
            held: Held::Disk(m.msg_id),
            size: m.body_len,
            deliveries: m.deliveries.max(u32::from(m.redelivered)),
            redelivered: m.redelivered,
            persisted: true,
            priority,
        };
        totals.add(&entry);
        ready.push_back(entry);
    }
    if max_priority.is_some() {
        ready.make_contiguous().sort_by_key(Entry::key);
    }
    let memory_budget = store.as_ref().map_or(u64::MAX, |s| s.queue_memory());
    let pressure = store.as_ref().map(|s| {
        let p = s.pressure().clone();
        let mut rx = p.subscribe();
        rx.mark_unchanged();
        (p, rx)
    });
    let actor = QueueActor {
        args: Box::new(args),
        handle,
        host,
        store,
        pressure,
        settled: Vec::new(),
        released: Vec::new(),
        ready,
        returns: 0,
        totals,
        dead_letters: AtLeastOnce::default(),
        memory_budget,
        last_now: now,
        epoch: now,
        unacked: IdMap::default(),
        consumers: BTreeMap::new(),
        active: Active::default(),
        last_used: now,
        next_seq,
        had_consumer: false,
        timer: None,
        paged_head: false,
    };
    // Recovered messages are counted before the first command arrives.
    actor.publish_stats();
    tokio::spawn(actor.supervise(rx));
}

impl QueueActor {
    /// Runs the queue and notices if it panics. A panic (a bug) must not leave a queue
    /// that still looks alive but answers nothing, or that confirms publishes it never
    /// took: the queue is marked failed instead (see `failed`).
    async fn supervise(mut self, mut rx: QueueInbox) {
        use futures::FutureExt;
        // Unwind safety: after a panic the actor's state is only read to cancel its
        // consumers and then dropped; nothing resumes from it.
        let run = std::panic::AssertUnwindSafe(self.run(&mut rx)).catch_unwind();
        if let Err(panic) = run.await {
            self.failed(&*panic, &mut rx);
        }
    }

    /// After a panic: the queue is marked failed and stays so until it is deleted. It is
    /// not restarted in place: its state is no longer trustworthy, and a durable queue's
    /// messages are still in the store, so the next broker start recovers it from there.
    /// Its consumers are cancelled (as when it is deleted), and every command still
    /// waiting, or sent later, is answered as a failed queue answers it (publishes nacked,
    /// see [`answer_dead`]).
    fn failed(&mut self, panic: &(dyn std::any::Any + Send), rx: &mut QueueInbox) {
        let what = panic
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        tracing::error!(
            queue = %self.handle.name(),
            panic = what,
            "queue task panicked; queue marked failed, its consumers cancelled"
        );
        self.handle.info().mark_failed();
        self.cancel_all_consumers();
        self.publish_stats();
        rx.close();
        while let Some(cmd) = rx.try_recv() {
            answer_dead(cmd, &self.handle);
        }
    }

    async fn run(&mut self, rx: &mut QueueInbox) {
        loop {
            let epoch = self.epoch;
            let deadline = self
                .ready
                .front()
                .and_then(|e| e.expires_at)
                .map(|x| x.instant(epoch));
            let unused_until = self.unused_deadline();
            let holding = !self.dead_letters.is_empty();
            // Only a queue holding dead letters has a retry to wait for (no scan otherwise).
            let retry_at = holding.then(|| self.dead_letters.next_retry()).flatten();
            // One timer for the three deadlines, boxed and made with the first deadline:
            // every queue's task carries its select's futures, and a timer is the
            // largest of them.
            let wake_at = [deadline, retry_at, unused_until]
                .into_iter()
                .flatten()
                .min();
            let timer = wake_at.map(|at| {
                let t = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if t.deadline() != at {
                    t.as_mut().reset(at);
                }
                t
            });
            let cmd = tokio::select! {
                cmd = rx.recv() => match cmd {
                    Some(cmd) => cmd,
                    None => break,
                },
                (seq, ok) = self.dead_letters.confirm(), if holding => {
                    if let Some(done) = self.dead_letters.confirmed(seq, ok, Instant::now()) {
                        self.forget(&done.entry);
                    }
                    self.log_settled();
                    self.publish_stats();
                    continue;
                }
                on = pressure_on(&mut self.pressure) => {
                    if on {
                        self.page_out_backlog();
                        self.publish_stats();
                    }
                    continue;
                }
                _ = sleep_on(timer), if wake_at.is_some() => {
                    let now = Instant::now();
                    if unused_until.is_some_and(|d| now >= d) {
                        tracing::debug!(queue = %self.handle.name(), "unused for x-expires; deleting");
                        self.cancel_all_consumers();
                        self.auto_delete();
                        break;
                    }
                    if retry_at.is_some_and(|d| now >= d) {
                        for id in self.dead_letters.due(now) {
                            self.route_dead_letter(id);
                        }
                    }
                    if deadline.is_some_and(|d| now >= d) {
                        self.expire(now);
                        self.dispatch(now);
                        Box::pin(self.finish_dispatch(now)).await;
                    }
                    self.log_settled();
                    self.publish_stats();
                    continue;
                }
            };
            // This one, and whatever else is already waiting, before the bookkeeping
            // below (one call site: the task's future holds one `serve`).
            let mut alive = true;
            let mut next = Some(cmd);
            let mut served = 0;
            while let Some(cmd) = next.take() {
                alive = self.serve(cmd, rx).await;
                served += 1;
                if alive && served < COMMAND_BATCH {
                    next = rx.try_recv();
                }
            }
            self.log_settled();
            self.shrink_if_drained();
            self.publish_stats();
            if !alive {
                break;
            }
        }
        // Its paged-out transient messages go with it.
        let paged = self.ready.iter().filter_map(transient_record);
        self.released.extend(paged);
        self.release_records();
        // Gone: answer whatever is still queued so nobody waits forever.
        rx.close();
        while let Some(cmd) = rx.try_recv() {
            answer_dead(cmd, &self.handle);
        }
        tracing::debug!(queue = %self.handle.name(), "queue stopped");
    }

    /// Publishes `message` to this queue's dead-letter exchange, if it has one, unless
    /// that would loop without a rejection in the loop (then it is dropped, as in
    /// RabbitMQ).
    fn dead_letter(&mut self, message: &Arc<Message>, reason: Reason) {
        let Some(dlx) = self.args.dead_letter_exchange.clone() else {
            return;
        };
        let dead = self.dead_copy(message, reason, &dlx);
        match self.dead_letter_targets(&dlx, &dead, message, reason) {
            Ok((targets, _)) => {
                for target in targets {
                    target.publish_now(vec![Publish {
                        message: dead.clone(),
                        confirm: None,
                    }]);
                }
            }
            Err(e) => {
                tracing::warn!(queue = %self.handle.name(), dlx, error = %e.text, "dead-letter exchange unusable; message dropped");
            }
        }
    }

    /// The dead letter of `message`, for the queue's dead-letter exchange `dlx`.
    fn dead_copy(&self, message: &Message, reason: Reason, dlx: &str) -> Arc<Message> {
        Arc::new(deadletter::dead_letter(
            message,
            self.handle.name(),
            reason,
            dlx,
            self.args.dead_letter_routing_key.as_deref(),
        ))
    }

    /// Where `dead` (the dead letter of `original`) goes: the queues `dlx` routes it to,
    /// less those that would close a dead-letter cycle (dropped, as RabbitMQ does, unless
    /// the client rejected it). The flag says a route existed and every one was a cycle.
    fn dead_letter_targets(
        &self,
        dlx: &str,
        dead: &Message,
        original: &Message,
        reason: Reason,
    ) -> crate::error::AmqpResult<(Vec<QueueHandle>, bool)> {
        let mut routed = Vec::new();
        self.host.route(
            dlx,
            &dead.routing_key,
            dead.properties.headers.as_ref(),
            &mut routed,
        )?;
        let any = !routed.is_empty();
        routed.retain(|target| {
            let cycle = reason != Reason::Rejected && deadletter::is_cycle(original, target.name());
            if cycle {
                tracing::debug!(queue = %self.handle.name(), target = %target.name(), "dead-letter cycle; message dropped");
            }
            !cycle
        });
        let only_cycles = any && routed.is_empty();
        Ok((routed, only_cycles))
    }

    /// Notes that `entry` left the queue for good.
    fn forget(&mut self, entry: &Entry) {
        if entry.persisted {
            self.settled.push(entry.seq);
        }
        self.released.extend(transient_record(entry));
    }

    /// Lets the store go of the transient records the queue no longer needs.
    fn release_records(&mut self) {
        if let Some(store) = &self.store {
            store.release(std::mem::take(&mut self.released));
        }
    }

    /// A transient message read back from record `id` is in memory again: the record is
    /// not needed any more (paged out again, the message gets a new one), and the message
    /// is not the store's to log under that id.
    fn back_in_memory(&mut self, id: u64, m: &Message) {
        self.released.push(id);
        *m.store_id.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    fn log_settled(&mut self) {
        self.release_records();
        if self.settled.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.settled);
        if let (Some(store), Some(id)) = (&self.store, self.handle.info().store_id) {
            store.settle(id, seqs);
        }
    }

    /// Gives memory back after a backlog drained: a `VecDeque` or `HashMap` keeps the
    /// capacity of its largest size otherwise.
    fn shrink_if_drained(&mut self) {
        const KEEP: usize = 1024;
        if self.ready.len() < KEEP / 4 && self.ready.capacity() > KEEP * 16 {
            self.ready.shrink_to(KEEP);
        }
        if self.unacked.len() < KEEP / 4 && self.unacked.capacity() > KEEP * 16 {
            self.unacked.shrink_to(KEEP);
        }
    }

    fn publish_stats(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        let stats = &self.handle.info().stats;
        stats.ready.store(self.ready.len() as u64, Relaxed);
        stats.unacked.store(self.unacked.len() as u64, Relaxed);
        stats.consumers.store(self.consumers.len() as u64, Relaxed);
        stats.ready_bytes.store(self.totals.bytes, Relaxed);
        stats.paged_out.store(self.totals.paged, Relaxed);
        stats
            .dead_lettering
            .store(self.dead_letters.len() as u64, Relaxed);
        stats
            .dead_lettering_bytes
            .store(self.dead_letters.bytes(), Relaxed);
    }

    /// Handles one command; `false` when the queue is deleted. Paged-out messages it
    /// needs are read back off the task: the head before a `basic.get` (which answers
    /// with it), the head a dispatch stopped at after the command. Either way the read
    /// comes between the same two events as if it were done in place, so the queue's
    /// answers and deliveries keep their order.
    async fn serve(&mut self, cmd: QueueCommand, rx: &mut QueueInbox) -> bool {
        let now = self.now();
        match cmd {
            QueueCommand::Get { .. } => {
                rx.open_acks(self.handle.info());
                // Boxed, as every page-in: rare, and kept out of the task's future,
                // which every queue carries.
                Box::pin(self.read_head(now)).await;
            }
            QueueCommand::Consume { .. } => rx.open_acks(self.handle.info()),
            _ => {}
        }
        let alive = self.handle(cmd, now);
        if self.paged_head {
            Box::pin(self.finish_dispatch(now)).await;
        }
        alive
    }

    /// Makes the head of the ready list a message in memory, or empties the list:
    /// expires what is due at `now`, and reads a paged-out head back.
    async fn read_head(&mut self, now: Instant) {
        loop {
            self.expire(now);
            match self.ready.front() {
                Some(Entry {
                    held: Held::Disk(_),
                    ..
                }) => self.page_in().await,
                _ => return,
            }
        }
    }

    /// A dispatch stopped at a paged-out head ([`QueueActor::head_message`]): reads it
    /// back and dispatches on, until the consumers are served or the head is in memory.
    async fn finish_dispatch(&mut self, now: Instant) {
        while self.paged_head {
            self.paged_head = false;
            self.page_in().await;
            self.dispatch(now);
        }
    }

    /// Handles one command at `now`; `false` when the queue is deleted.
    fn handle(&mut self, cmd: QueueCommand, now: Instant) -> bool {
        #[cfg(test)]
        if self
            .handle
            .info()
            .panic_next
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            panic!("queue task made to panic by a test");
        }
        if matches!(
            cmd,
            QueueCommand::Consume { .. }
                | QueueCommand::Get { .. }
                | QueueCommand::Counts { .. }
                | QueueCommand::Cancel { .. }
                | QueueCommand::ChannelClosed { .. }
        ) {
            self.last_used = now;
        }
        match cmd {
            QueueCommand::Publish(batch) => {
                let n = batch.len();
                for Publish { message, confirm } in batch {
                    self.publish(message, confirm);
                }
                self.handle.info().room.taken(n);
                self.dispatch(now);
            }
            QueueCommand::Consume { consumer, reply } => {
                let result = self.add_consumer(*consumer);
                let _ = reply.send(result);
                self.dispatch(now);
            }
            QueueCommand::Cancel { consumer_id, reply } => {
                self.consumers.remove(&consumer_id);
                self.active.retain(|c| c != consumer_id);
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
                if self.should_auto_delete() {
                    return self.auto_delete();
                }
                // With a single active consumer, the next one takes over now: the ready
                // messages waited only for the one that left.
                self.dispatch(now);
            }
            QueueCommand::Settle {
                ids,
                requeue,
                rejected,
            } => {
                self.settle(ids, requeue, rejected);
                self.dispatch(now);
            }
            QueueCommand::ChannelClosed {
                conn_id,
                channel,
                requeue,
            } => {
                let gone: Vec<u64> = self
                    .consumers
                    .iter()
                    .filter(|(_, c)| c.spec.conn_id == conn_id && c.spec.channel == channel)
                    .map(|(id, _)| *id)
                    .collect();
                for id in &gone {
                    self.consumers.remove(id);
                }
                self.active.retain(|c| !gone.contains(&c));
                self.settle(requeue.into_vec(), true, false);
                if self.should_auto_delete() {
                    return self.auto_delete();
                }
                self.dispatch(now);
            }
            QueueCommand::PolicyChanged => {
                *self.args = self.handle.info().effective_args();
                let (len, bytes) = (self.args.max_length, self.args.max_length_bytes);
                self.drop_over_limits(len, bytes);
                self.log_settled();
            }
            QueueCommand::CreditAvailable => {
                self.unblock_all();
                self.dispatch(now);
            }
            QueueCommand::Get { no_ack, reply } => {
                self.expire(now);
                // The message handed out is the one `head_message` answers: `serve` read
                // the head back at this `now`, and nothing changes the ready list between
                // the two.
                let head = self
                    .head_message()
                    .and_then(|message| Some((message, self.pop_ready()?)));
                let result = head.map(|(message, mut entry)| {
                    entry.deliveries = entry.deliveries.saturating_add(1);
                    count(&self.handle, |s| &s.delivered, 1);
                    let got = GetResult {
                        msg_id: entry.seq,
                        message: delivered_copy(message, entry.deliveries),
                        redelivered: entry.redelivered,
                        remaining: self.ready.len() as u32,
                    };
                    if no_ack {
                        if entry.persisted {
                            self.settled.push(entry.seq);
                        }
                    } else {
                        self.unacked.insert(
                            entry.seq,
                            Unacked {
                                entry,
                                consumer: None,
                            },
                        );
                    }
                    got
                });
                let _ = reply.send(result);
            }
            QueueCommand::Purge { reply } => {
                let n = self.ready.len() as u32;
                for e in std::mem::take(&mut self.ready) {
                    self.forget(&e);
                }
                self.totals = ReadyTotals::default();
                self.returns = 0;
                let _ = reply.send(n);
            }
            QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            } => {
                self.expire(now);
                let queue = self.handle.queue_ref();
                if if_unused && !self.consumers.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition(format!("{queue} in use"))));
                } else if if_empty && !self.ready.is_empty() {
                    let _ = reply.send(Err(AmqpError::precondition(format!("{queue} not empty"))));
                } else {
                    let n = self.ready.len() as u32;
                    self.cancel_all_consumers();
                    let _ = reply.send(Ok(n));
                    return false;
                }
            }
            QueueCommand::Halt { reply } => {
                let _ = reply.send(());
                return false;
            }
            QueueCommand::Shutdown { reply } => {
                // RabbitMQ flags, after a graceful restart, only the messages that had
                // really been delivered: the unacked ones and those requeued before.
                if let (Some(store), Some(id)) = (&self.store, self.handle.info().store_id) {
                    let mut seqs: Vec<u64> = self
                        .unacked
                        .values()
                        .map(|u| &u.entry)
                        .chain(self.ready.iter().filter(|e| e.redelivered))
                        .filter(|e| e.persisted)
                        .map(|e| e.seq)
                        .collect();
                    seqs.sort_unstable();
                    store.mark_redelivered(id, seqs);
                }
                let _ = reply.send(());
                return false;
            }
            QueueCommand::Counts { reply } => {
                self.expire(now);
                // Whoever asks may rely on everything sent before being logged (a
                // transaction's commit waits on it for its settles).
                self.log_settled();
                let _ = reply.send(QueueCounts {
                    ready: self.ready.len() as u32,
                    unacked: self.unacked.len() as u32,
                    consumers: self.consumers.len() as u32,
                });
            }
        }
        true
    }

    fn publish(&mut self, message: Arc<Message>, confirm: Option<ConfirmTicket>) {
        // Copied out: the arguments are read between calls that need `&mut self`.
        let (max_length, max_length_bytes, overflow, message_ttl, max_priority) = {
            let a = &self.args;
            (
                a.max_length,
                a.max_length_bytes,
                a.overflow,
                a.message_ttl,
                a.max_priority,
            )
        };
        let size = message.body.len() as u64;
        // Dead letters still held count, as in RabbitMQ (none outside at-least-once).
        let full = max_length
            .is_some_and(|m| (self.ready.len() + self.dead_letters.len()) as u64 >= m)
            || max_length_bytes
                .is_some_and(|m| self.totals.bytes + self.dead_letters.bytes() + size > m);
        if full
            && matches!(
                overflow,
                Overflow::RejectPublish | Overflow::RejectPublishDlx
            )
        {
            if let Some(c) = confirm {
                c.send(false);
            }
            if overflow == Overflow::RejectPublishDlx {
                self.dead_letter(&message, Reason::MaxLen);
            }
            return;
        }
        let ttl = match (message_ttl, message.ttl_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A message with a TTL may be the first to need the clock: read it now.
        let expires_at = ttl.map(|ms| Expiry::after(self.epoch, Instant::now(), ms));
        let seq = self.next_seq;
        self.next_seq += 1;
        // A quorum queue keeps every message in the log, as RabbitMQ's (a Raft log) does.
        let persisted = self.handle.info().store_id.is_some()
            && (message.is_persistent() || self.args.queue_type == QueueType::Quorum);
        let mut confirm = confirm;
        if persisted {
            if let (Some(store), Some(id)) = (&self.store, self.handle.info().store_id) {
                // The confirm is answered by the store, after the sync that covers it.
                store.enqueue(id, seq, &message, confirm.take().map(Into::into));
            }
        }
        let priority =
            max_priority.map_or(0, |max| message.properties.priority.unwrap_or(0).min(max));
        let entry = Entry {
            seq,
            held: Held::Mem(message),
            size: size as u32,
            expires_at,
            redelivered: false,
            persisted,
            deliveries: 0,
            priority,
        };
        // Priority 0 sorts after every other priority and this seq after every other.
        self.insert_ready(entry, priority == 0);
        count(&self.handle, |s| &s.published, 1);
        // Checked here, not in the call: most queues have no limit, and this is every
        // publish.
        if max_length.is_some() || max_length_bytes.is_some() {
            self.drop_over_limits(max_length, max_length_bytes);
        }
        if let Some(c) = confirm {
            c.send(true);
        }
    }

    /// Drops (dead-letters) messages from the head while the queue is over its length
    /// limits: after a publish, and when a policy lowers a limit.
    fn drop_over_limits(&mut self, max_length: Option<u64>, max_length_bytes: Option<u64>) {
        while max_length.is_some_and(|m| self.ready.len() as u64 > m)
            || max_length_bytes.is_some_and(|m| self.totals.bytes > m)
        {
            match self.pop_ready() {
                Some(dropped) => {
                    self.dead_letter_entry(dropped, Reason::MaxLen);
                }
                None => break,
            }
        }
    }

    /// The time, read from the clock only when something depends on it (a TTL, an
    /// expiring message, `x-expires`): reading it per message is measurable.
    fn now(&mut self) -> Instant {
        let args = &self.args;
        if self.totals.expiring > 0 || args.message_ttl.is_some() || args.expires.is_some() {
            self.last_now = Instant::now();
        }
        self.last_now
    }

    /// Takes the head of the ready list.
    fn pop_ready(&mut self) -> Option<Entry> {
        let e = self.ready.pop_front()?;
        self.totals.remove(&e);
        self.returns = self.returns.saturating_sub(1);
        Some(e)
    }

    /// Puts an entry in the ready list at its place (priority, then publish order), or
    /// at the tail when the caller knows that is its place. A persistent message is
    /// kept on disk only when the queue is over its memory budget.
    fn insert_ready(&mut self, mut entry: Entry, at_tail: bool) {
        self.page_out_on_insert(&mut entry);
        self.totals.add(&entry);
        if at_tail {
            self.ready.push_back(entry);
        } else {
            let pos = self.ready.partition_point(|e| e.key() < entry.key());
            self.ready.insert(pos, entry);
        }
    }

    /// Puts a quorum queue's returned entry at the end of the returns stretch at the head
    /// of the ready list (see the module docs).
    fn insert_return(&mut self, mut entry: Entry) {
        self.page_out_on_insert(&mut entry);
        self.totals.add(&entry);
        self.ready.insert(self.returns, entry);
        self.returns += 1;
    }

    /// Keeps an entry on its way into the ready list on disk only: a persistent one when
    /// the queue is over its memory budget, any one past the in-memory head under memory
    /// pressure. (The pressure is read only once the head is full: one load, and none at
    /// all for a queue that keeps up.)
    fn page_out_on_insert(&self, entry: &mut Entry) {
        let Some(store) = &self.store else {
            return;
        };
        let over_budget =
            entry.persisted && self.totals.mem + entry.mem_cost() > self.memory_budget;
        let pressed =
            self.ready.len() >= PAGING_HEAD && self.pressure.as_ref().is_some_and(|(p, _)| p.on());
        if over_budget || pressed {
            page_out(store, entry);
        }
    }

    /// Memory pressure set in: pages out every ready message in memory past the head
    /// (new ones are paged out as they come, [`QueueActor::page_out_on_insert`]).
    fn page_out_backlog(&mut self) {
        let Some(store) = &self.store else {
            return;
        };
        let mut paged = 0u64;
        for e in self.ready.iter_mut().skip(PAGING_HEAD) {
            if let Held::Mem(_) = e.held {
                self.totals.remove(e);
                page_out(store, e);
                paged += u64::from(matches!(e.held, Held::Disk(_)));
                self.totals.add(e);
            }
        }
        if paged > 0 {
            tracing::debug!(queue = %self.handle.name(), paged, "memory pressure: backlog paged out");
        }
    }

    /// The message at the head of the ready list, in memory; `None` when the list is
    /// empty or its head is paged out. Then `paged_head` is set, and the run loop reads
    /// the head back ([`QueueActor::page_in`]) and dispatches again: the file read, and
    /// any wait for the store's writer, never run on the queue's task. A message that
    /// cannot be read back (a damaged log) is dropped and the next one tried, so what
    /// delivery gets is always a message in memory, whatever the log holds: each page-in
    /// takes at least the head out of the disk state, so the rounds end.
    fn head_message(&mut self) -> Option<Arc<Message>> {
        match &self.ready.front()?.held {
            Held::Mem(m) => Some(m.clone()),
            Held::Disk(_) => {
                self.paged_head = true;
                None
            }
        }
    }

    /// Whether the head of the ready list is a message in memory, as
    /// [`QueueActor::head_message`] answers it, without taking a reference to it.
    fn head_in_memory(&mut self) -> bool {
        match self.ready.front().map(|e| &e.held) {
            Some(Held::Mem(_)) => true,
            Some(Held::Disk(_)) => {
                self.paged_head = true;
                false
            }
            None => false,
        }
    }

    /// Reads the paged-out messages at the head of the ready list back into memory: the
    /// head and the ones right behind it, with as few reads as the log allows, on a
    /// blocking thread (the ready list does not change meanwhile: the task handles no
    /// command until this returns). One that cannot be read back is dropped from the
    /// queue ([`QueueActor::unreadable`]).
    async fn page_in(&mut self) {
        // Enough messages per read that a consumer draining a paged-out backlog costs one
        // read per batch, not per message; at most 1 MiB so one page-in never holds much
        // more memory than the queue's budget allows for a moment. Each read is a hand-over
        // to a blocking thread and back (four context switches or so): up to 1024 small
        // messages go in one, as many as 1 MiB holds of 1 KiB ones.
        const BATCH: usize = 1024;
        const BATCH_BYTES: u64 = 1 << 20;
        let mut slots = Vec::new();
        let mut ids = Vec::new();
        let mut bytes = 0;
        for (i, e) in self.ready.iter().enumerate().take(BATCH) {
            if let Held::Disk(id) = e.held {
                if !ids.is_empty() && bytes + u64::from(e.size) > BATCH_BYTES {
                    break;
                }
                bytes += u64::from(e.size);
                slots.push(i);
                ids.push(id);
            }
        }
        // Without a store (never the case for a paged-out entry) nothing can be read.
        let mut read = match self.store.clone() {
            Some(store) => store.read_back(ids.clone()).await.into_iter(),
            None => Vec::new().into_iter(),
        };
        let mut lost = Vec::new();
        for (slot, msg_id) in slots.into_iter().zip(ids) {
            // An answer missing from the store's list counts as unreadable too.
            match read.next().flatten() {
                Some(m) => {
                    let e = &mut self.ready[slot];
                    self.totals.remove(e);
                    if !e.persisted {
                        self.back_in_memory(msg_id, &m);
                    }
                    let e = &mut self.ready[slot];
                    e.held = Held::Mem(Arc::new(m));
                    self.totals.add(e);
                }
                None => lost.push((slot, msg_id)),
            }
        }
        // Dropped, but left in the log (no settle record): a log repaired before the
        // next start still has them.
        for (slot, msg_id) in lost.into_iter().rev() {
            if let Some(e) = self.ready.remove(slot) {
                if slot < self.returns {
                    self.returns -= 1;
                }
                self.totals.remove(&e);
                self.unreadable(&e, msg_id, "delivery");
                self.released.extend(transient_record(&e));
            }
        }
    }

    /// Reports a paged-out message that cannot be read back from the log (the store
    /// logged where and why) while `during` needed it: it leaves the queue, neither
    /// delivered nor dead-lettered (both need its content). An error the queue handles,
    /// not a panic: a damaged disk must not take the queue down with it.
    fn unreadable(&self, e: &Entry, msg_id: u64, during: &str) {
        count(&self.handle, |s| &s.unreadable, 1);
        tracing::error!(
            queue = %self.handle.name(),
            seq = e.seq,
            msg_id,
            during,
            reason = "cannot be read back from the log",
            "message dropped from the queue"
        );
    }

    /// Dead-letters a message that left the queue, reading it back first if it was
    /// paged out (only when there is a dead-letter exchange to send it to), and forgets
    /// it — at once, or with at-least-once dead-lettering when its targets took it.
    fn dead_letter_entry(&mut self, mut entry: Entry, reason: Reason) {
        if self.args.dead_letter_exchange.is_none() {
            self.forget(&entry);
            return;
        }
        let message = match entry.held {
            Held::Mem(ref m) => m.clone(),
            Held::Disk(id) => {
                let read = self
                    .store
                    .as_ref()
                    .and_then(|store| read_in_place(store, id));
                match read {
                    // A transient record is let go of at once: the dead letter, held
                    // or not, goes on from memory (the entry has left the ready list).
                    Some(m) if !entry.persisted => {
                        self.back_in_memory(id, &m);
                        let m = Arc::new(m);
                        entry.held = Held::Mem(m.clone());
                        m
                    }
                    Some(m) => Arc::new(m),
                    None => {
                        self.unreadable(&entry, id, "dead-lettering");
                        self.forget(&entry);
                        return;
                    }
                }
            }
        };
        if self.args.at_least_once() {
            self.hold_dead_letter(entry, message, reason);
        } else {
            self.forget(&entry);
            self.dead_letter(&message, reason);
        }
    }

    /// At-least-once dead-lettering: keeps the entry until every target took its dead
    /// letter (see [`super::at_least_once`]), and routes it.
    fn hold_dead_letter(&mut self, entry: Entry, original: Arc<Message>, reason: Reason) {
        let Some(dlx) = self.args.dead_letter_exchange.as_deref() else {
            self.forget(&entry);
            return;
        };
        let dead = self.dead_copy(&original, reason, dlx);
        let held = HeldDeadLetter {
            entry,
            original,
            reason,
        };
        let id = self.dead_letters.add(held, dead);
        self.route_dead_letter(id);
    }

    /// Routes held dead letter `id` to the targets that have not taken it yet, each with
    /// a confirm ticket; settles it when nothing is left to wait for.
    fn route_dead_letter(&mut self, id: u64) {
        let now = Instant::now();
        let Some((dead, taken)) = self.dead_letters.message(id) else {
            return;
        };
        let taken = taken.to_vec();
        let Some(dlx) = self.args.dead_letter_exchange.clone() else {
            // The policy that named the exchange is gone: nowhere left to send it.
            if let Some(done) = self.dead_letters.remove(id) {
                self.forget(&done.entry);
            }
            return;
        };
        let (original, reason) = match self.dead_letters.held(id) {
            Some(h) => (h.original.clone(), h.reason),
            None => return,
        };
        let (targets, only_cycles) = match self.dead_letter_targets(&dlx, &dead, &original, reason)
        {
            Ok(routed) => routed,
            Err(e) => {
                tracing::warn!(queue = %self.handle.name(), dlx, error = %e.text, "dead-letter exchange unusable; trying again later");
                (Vec::new(), false)
            }
        };
        let mut sent = false;
        for target in targets {
            if taken.iter().any(|t| t == target.name()) {
                continue;
            }
            let ticket = self.dead_letters.ticket(id, target.name().clone());
            // A publish the target cannot take drops its ticket: a nack, tried again later.
            target.publish_now(vec![Publish {
                message: dead.clone(),
                confirm: Some(ticket),
            }]);
            sent = true;
        }
        // A dead-letter cycle is dropped, as with at-most-once.
        let done = if only_cycles {
            self.dead_letters.remove(id)
        } else {
            self.dead_letters.routed(id, sent, now)
        };
        if let Some(done) = done {
            self.forget(&done.entry);
        }
    }

    fn add_consumer(&mut self, spec: ConsumerSpec) -> Result<(), AmqpError> {
        let exclusive_taken = self.consumers.values().any(|c| c.spec.exclusive);
        if exclusive_taken || (spec.exclusive && !self.consumers.is_empty()) {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!("{} in exclusive use", self.handle.queue_ref()),
            ));
        }
        let id = spec.id;
        self.consumers.insert(
            id,
            Consumer {
                spec,
                unacked: 0,
                blocked: false,
                reserved: 0,
            },
        );
        let priority = self.consumers.get(&id).map_or(0, |c| c.spec.priority);
        self.active.push_back(id, priority);
        self.had_consumer = true;
        Ok(())
    }

    /// When an unused queue with `x-expires` is due for deletion.
    fn unused_deadline(&self) -> Option<Instant> {
        let ms = self.args.expires?;
        self.consumers
            .is_empty()
            .then(|| self.last_used + std::time::Duration::from_millis(ms))
    }

    fn should_auto_delete(&self) -> bool {
        self.handle.info().auto_delete && self.had_consumer && self.consumers.is_empty()
    }

    fn auto_delete(&mut self) -> bool {
        self.host.forget_queue(&self.handle);
        false
    }

    fn cancel_all_consumers(&mut self) {
        for (id, c) in std::mem::take(&mut self.consumers) {
            let _ = c.spec.sink.send(QueueEvent::Cancelled {
                channel: c.spec.channel,
                consumer_tag: c.spec.tag.clone(),
                consumer_id: id,
            });
        }
        self.active.clear();
    }

    /// Ends unacked deliveries: requeue them (unless they are over the delivery limit),
    /// or forget them — dead-lettering the rejected ones. A quorum queue takes requeued
    /// ones in the order given (the channel's delivery order) and places them by
    /// RabbitMQ's rule (module docs): `rejected` says the client asked.
    fn settle(&mut self, mut ids: Vec<u64>, requeue: bool, rejected: bool) {
        let quorum = self.args.queue_type == QueueType::Quorum;
        if requeue && !quorum {
            // Highest first, so a batch that all belongs before the head costs O(1) each.
            ids.sort_unstable_by(|a, b| b.cmp(a));
        }
        let to_tail = rejected && self.args.delivery_limit.is_none();
        let mut freed = Vec::new();
        let mut returned = Vec::new();
        for id in ids {
            let Some(Unacked {
                mut entry,
                consumer,
            }) = self.unacked.remove(&id)
            else {
                continue;
            };
            if let Some(cid) = consumer {
                freed.push(cid);
            }
            let limit = self.args.delivery_limit;
            let over_limit = requeue && limit.is_some_and(|l| u64::from(entry.deliveries) > l);
            if !requeue || over_limit {
                count(&self.handle, |s| &s.acked, 1);
                if over_limit {
                    self.dead_letter_entry(entry, Reason::DeliveryLimit);
                } else if rejected {
                    self.dead_letter_entry(entry, Reason::Rejected);
                } else {
                    self.forget(&entry);
                }
            } else {
                entry.redelivered = true;
                if entry.persisted {
                    returned.push((entry.seq, entry.deliveries));
                }
                match (quorum, to_tail) {
                    (false, _) => self.insert_ready(entry, false),
                    (true, true) => self.insert_ready(entry, true),
                    (true, false) => self.insert_return(entry),
                }
            }
        }
        for cid in &freed {
            if let Some(c) = self.consumers.get_mut(cid) {
                c.unacked = c.unacked.saturating_sub(1);
            }
        }
        // The delivery count of a persistent message outlives a restart.
        if let (Some(store), Some(id)) = (&self.store, self.handle.info().store_id) {
            store.log_deliveries(id, returned);
        }
        // Consumers freed by these acks rejoin in the order their acks came (one command
        // may carry the acks of several channels), as if each ack had come alone.
        for cid in freed {
            self.unblock(cid);
        }
        self.unblock_all();
    }

    /// Moves consumer `cid` to the tail of `active` if it was blocked and has credit again.
    fn unblock(&mut self, cid: u64) {
        if let Some(c) = self.consumers.get_mut(&cid) {
            if c.rejoin() {
                self.active.push_back(cid, c.spec.priority);
            }
        }
    }

    /// Moves every blocked consumer that has credit again to the tail of `active`.
    fn unblock_all(&mut self) {
        for (id, c) in self.consumers.iter_mut() {
            if c.rejoin() {
                self.active.push_back(*id, c.spec.priority);
            }
        }
    }

    fn expire(&mut self, now: Instant) {
        while self
            .ready
            .front()
            .is_some_and(|e| e.expires_at.is_some_and(|t| now > t.instant(self.epoch)))
        {
            if let Some(e) = self.pop_ready() {
                self.dead_letter_entry(e, Reason::Expired);
            }
        }
    }

    /// Delivers what the consumers can take now. The shared counters a delivery moves
    /// (the queue's delivered / redelivered statistics, the consumer connection's
    /// [`OutputRoom`](super::OutputRoom)) are moved once per call, not per delivery: each
    /// is an atomic read-modify-write on a line another thread reads, which cost more
    /// than the rest of a small delivery's bookkeeping here.
    fn dispatch(&mut self, now: Instant) {
        let mut tally = Tally::default();
        self.dispatch_round(now, &mut tally);
        if tally.delivered > 0 {
            count(&self.handle, |s| &s.delivered, tally.delivered);
        }
        if tally.redelivered > 0 {
            count(&self.handle, |s| &s.redelivered, tally.redelivered);
        }
        for cid in tally.reserved {
            // What was reserved and not used goes back (a consumer gone meanwhile gave
            // its part back when it went).
            if let Some(c) = self.consumers.get_mut(&cid) {
                c.spec.room.take(std::mem::take(&mut c.reserved));
            }
        }
    }

    fn dispatch_round(&mut self, now: Instant, tally: &mut Tally) {
        let sac = self.args.single_active_consumer;
        loop {
            self.expire(now);
            if self.consumers.is_empty() {
                return;
            }
            // The head must be in memory: what this round delivers, if a consumer can
            // take it.
            if !self.head_in_memory() {
                return;
            }
            // With a single active consumer, only the earliest registered one (consumer
            // ids grow) receives; when it goes, the next one takes over.
            let next = if sac {
                self.consumers.keys().next().copied()
            } else {
                self.active.pop_front()
            };
            let Some(cid) = next else {
                return;
            };
            let Some(c) = self.consumers.get_mut(&cid) else {
                continue;
            };
            if !c.own_credit() {
                if sac {
                    return;
                }
                c.blocked = true;
                continue;
            }
            // The consumer's connection has enough on its way out (its client reads
            // slowly, or not at all): park the consumer until the room drains, so the
            // backlog waits here, in the queue, not in the connection's buffers.
            if !c.spec.room.has_room() && !c.spec.room.wait(&self.handle) {
                if sac {
                    return;
                }
                c.blocked = true;
                continue;
            }
            let charged = match (&c.spec.channel_credit, c.spec.no_ack) {
                (Some(credit), false) => {
                    if !credit.try_acquire() {
                        if sac {
                            return;
                        }
                        c.blocked = true;
                        continue;
                    }
                    true
                }
                _ => false,
            };
            // The head checked above: nothing changed the ready list since. `pop_ready`
            // inlined: `c` borrows the consumers meanwhile.
            let returns = self.returns;
            let Some(mut entry) = self.ready.pop_front() else {
                return;
            };
            self.totals.remove(&entry);
            self.returns = returns.saturating_sub(1);
            entry.deliveries = entry.deliveries.saturating_add(1);
            // A no-ack delivery leaves the queue for good: its message moves out of the
            // entry (back in, should the send fail) rather than being shared with it. A
            // redelivery sends a copy with its count (`delivered_copy`), so it shares.
            let moved = c.spec.no_ack && entry.deliveries == 1;
            let message = match std::mem::replace(&mut entry.held, Held::Disk(0)) {
                Held::Mem(m) if moved => m,
                Held::Mem(m) => {
                    let shared = m.clone();
                    entry.held = Held::Mem(m);
                    shared
                }
                disk => {
                    // Not reached: `head_in_memory` checked this entry. Everything back
                    // as it was; the run loop reads it back.
                    entry.held = disk;
                    entry.deliveries -= 1;
                    self.totals.add(&entry);
                    self.ready.push_front(entry);
                    self.returns = returns;
                    if charged {
                        if let Some(credit) = &c.spec.channel_credit {
                            credit.release(1);
                        }
                    }
                    if !sac {
                        self.active.push_front(cid, c.spec.priority);
                    }
                    self.paged_head = true;
                    return;
                }
            };
            let counted = entry.size as usize + super::DELIVERY_OVERHEAD;
            // The connection's room is counted before the delivery is sent (it takes the
            // delivery off once it has encoded it), in chunks reserved ahead.
            if c.reserved < counted {
                let chunk = counted.max(c.spec.room.reserve_chunk());
                c.spec.room.add(chunk);
                if c.reserved == 0 {
                    tally.reserved.push(cid);
                }
                c.reserved += chunk;
            }
            c.reserved -= counted;
            let delivery = Delivery {
                channel: c.spec.channel,
                consumer_id: cid,
                queue: (!c.spec.no_ack).then(|| self.handle.clone()),
                msg_id: entry.seq,
                message: delivered_copy(message, entry.deliveries),
                redelivered: entry.redelivered,
                no_ack: c.spec.no_ack,
                charged,
            };
            if let Err(returned) = c.spec.sink.send(QueueEvent::Deliver(delivery)) {
                c.reserved += counted;
                // The connection is gone; its cleanup will tell us. Keep the message.
                if charged {
                    if let Some(credit) = &c.spec.channel_credit {
                        credit.release(1);
                    }
                }
                if let (true, QueueEvent::Deliver(d)) = (moved, returned.0) {
                    entry.held = Held::Mem(d.message);
                }
                entry.deliveries -= 1;
                self.totals.add(&entry);
                self.ready.push_front(entry);
                self.returns = returns;
                c.spec.room.take(std::mem::take(&mut c.reserved));
                self.consumers.remove(&cid);
                continue;
            }
            tally.delivered += 1;
            tally.redelivered += u64::from(entry.redelivered);
            if c.spec.no_ack {
                if entry.persisted {
                    self.settled.push(entry.seq);
                }
            } else {
                c.unacked += 1;
                self.unacked.insert(
                    entry.seq,
                    Unacked {
                        entry,
                        consumer: Some(cid),
                    },
                );
            }
            if sac {
                // The single active consumer is chosen afresh each round.
            } else if c.own_credit() && c.channel_credit() {
                self.active.push_back(cid, c.spec.priority);
            } else {
                c.blocked = true;
                // Parked for its connection's room: ask to be told when it drains (or
                // go on at once if it drained meanwhile).
                if !c.spec.room.has_room()
                    && c.spec.room.wait(&self.handle)
                    && c.own_credit()
                    && c.channel_credit()
                {
                    c.blocked = false;
                    self.active.push_back(cid, c.spec.priority);
                }
            }
        }
    }
}

/// What one [`QueueActor::dispatch`] moved, for the shared counters it moves once.
#[derive(Default)]
struct Tally {
    delivered: u64,
    redelivered: u64,
    /// Consumers holding part of their connection's room reserved ahead.
    reserved: Vec<u64>,
}

/// Keeps `entry` on disk only (see [`Held`]): a persistent message under its own message
/// record, any other as a transient record of its own. During a store fault the record
/// may not be written yet: a read would wait for the rewrite, so the message stays in
/// memory (publishers are blocked meanwhile, which bounds it).
fn page_out(store: &Store, entry: &mut Entry) {
    let Held::Mem(m) = &entry.held else {
        return;
    };
    if entry.persisted {
        let id = *m.store_id.lock().unwrap_or_else(|e| e.into_inner());
        if let (Some(id), false) = (id, store.is_poisoned() || store.is_faulted()) {
            entry.held = Held::Disk(id);
        }
    } else if let Some(id) = store.page_out(m) {
        entry.held = Held::Disk(id);
    }
}

/// The transient record `e` is held by, if it is one.
fn transient_record(e: &Entry) -> Option<u64> {
    match e.held {
        Held::Disk(id) if !e.persisted => Some(id),
        _ => None,
    }
}

/// Resolves when the memory pressure signal changes, with its new value; never without a
/// store (or once the store is gone).
async fn pressure_on(
    pressure: &mut Option<(Arc<Pressure>, tokio::sync::watch::Receiver<bool>)>,
) -> bool {
    match pressure {
        Some((_, rx)) => match rx.changed().await {
            Ok(()) => *rx.borrow_and_update(),
            Err(_) => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The message as a consumer gets it: on a redelivery, with `x-delivery-count` (a copy
/// sharing the body; the queue keeps the original).
fn delivered_copy(message: Arc<Message>, deliveries: u32) -> Arc<Message> {
    if deliveries > 1 {
        Arc::new(deadletter::with_delivery_count(&message, deliveries - 1))
    } else {
        message
    }
}

/// Reads one paged-out message back where the queue cannot wait for it: a dead letter
/// goes out in the middle of a command (before the publisher's confirm, for a message
/// dropped by `x-max-length`), so its content is needed there and then. On the
/// multi-threaded runtime the worker hands its other tasks to another worker for the
/// read (`block_in_place`); a single-threaded runtime (tests) reads in place.
fn read_in_place(store: &Store, msg_id: u64) -> Option<Message> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let read = || store.read_messages(&[msg_id]).pop().flatten();
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(read),
        _ => read(),
    }
}

/// Adds `n` to one of the queue's running totals.
fn count(
    handle: &QueueHandle,
    counter: impl Fn(&super::QueueStats) -> &std::sync::atomic::AtomicU64,
    n: u64,
) {
    counter(&handle.info().stats).fetch_add(n, std::sync::atomic::Ordering::Relaxed);
}

async fn sleep_on(timer: Option<&mut Pin<Box<tokio::time::Sleep>>>) {
    match timer {
        Some(t) => t.await,
        None => std::future::pending().await,
    }
}

/// Answers a command that reached a queue after its task ended: deleted (a publish is
/// confirmed, as RabbitMQ confirms a publish to a queue that went away normally) or
/// failed (a publish is nacked: no live queue took it, as RabbitMQ nacks a publish whose
/// queue crashed).
pub(super) fn answer_dead(cmd: QueueCommand, handle: &QueueHandle) {
    let failed = handle.info().is_failed();
    match cmd {
        QueueCommand::Publish(batch) => {
            handle.info().room.taken(batch.len());
            for c in batch.into_iter().filter_map(|p| p.confirm) {
                c.send(!failed);
            }
        }
        QueueCommand::Consume { reply, .. } => {
            let err = if failed {
                super::crashed_error(handle.queue_ref())
            } else {
                AmqpError::no_queue(handle.name(), &handle.info().vhost)
            };
            let _ = reply.send(Err(err));
        }
        QueueCommand::Cancel { reply, .. } => {
            if let Some(r) = reply {
                let _ = r.send(());
            }
        }
        QueueCommand::Get { reply, .. } => {
            let _ = reply.send(None);
        }
        QueueCommand::Purge { reply } => {
            let _ = reply.send(0);
        }
        QueueCommand::Delete { reply, .. } => {
            let _ = reply.send(Ok(0));
        }
        QueueCommand::Counts { reply } => {
            let _ = reply.send(QueueCounts::default());
        }
        QueueCommand::Shutdown { reply } | QueueCommand::Halt { reply } => {
            let _ = reply.send(());
        }
        QueueCommand::Settle { .. }
        | QueueCommand::ChannelClosed { .. }
        | QueueCommand::CreditAvailable
        | QueueCommand::PolicyChanged => {}
    }
}

#[cfg(test)]
#[test]
fn a_ready_entry_takes_48_octets() {
    // What a paged-out message costs in memory besides the store's 16 octets
    // (docs: README, "Running it for real").
    assert_eq!(std::mem::size_of::<Entry>(), 48);
}
