//! At-least-once dead-lettering, RabbitMQ 3.10's `x-dead-letter-strategy: at-least-once`
//! for quorum queues (in force with `x-overflow: reject-publish` and a dead-letter
//! exchange, as there): a dead-lettered message leaves its queue only once every queue it
//! was routed to has taken it — confirmed it, so a durable target has it on disk.
//!
//! Owned by the queue task ([`super::actor`]), which alone adds, routes and settles dead
//! letters; the target queues answer through ordinary publisher-confirm tickets whose
//! sink is this module's channel. Until every target confirmed, the message is held here
//! (RabbitMQ's `messages_dlx`) and its settle record is not logged, so after a crash it is
//! back in its queue. One with no route, or refused by a target (full with
//! reject-publish, deleted, failed), is routed again after [`RETRY_AFTER`], to the targets
//! that have not taken it yet.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{ConfirmTicket, QueueEvent};
use crate::message::Message;

/// How long a dead letter that could not be placed waits before it is routed again:
/// RabbitMQ 3.10's `dead_letter_worker_publisher_confirm_timeout` (3 minutes), the period
/// of its dead-letter worker's retries.
pub const RETRY_AFTER: Duration = Duration::from_secs(180);

/// The channel number of this module's confirm tickets: any but 0, which marks an
/// answered ticket.
const TICKET_CHANNEL: u16 = 1;

/// One dead letter waiting for its targets.
struct Pending<T> {
    /// What the queue keeps of the message until it is settled.
    held: T,
    /// The dead-lettered copy (with its `x-death`), routed again as it is.
    message: Arc<Message>,
    /// Body octets, for the queue's byte counts.
    size: u64,
    /// Targets that confirmed it.
    taken: Vec<Arc<str>>,
    /// Confirms still to come.
    waiting: u32,
    /// A target refused it, or it had no route: routed again at `retry_at`.
    retry_at: Option<Instant>,
}

/// The dead letters of one queue that wait for their targets; `T` is what the queue
/// keeps of each (its entry, with the log sequence number to settle).
pub struct AtLeastOnce<T> {
    pending: BTreeMap<u64, Pending<T>>,
    /// Outstanding confirm tickets: their number to (dead letter, target).
    tickets: BTreeMap<u64, (u64, Arc<str>)>,
    next_id: u64,
    bytes: u64,
    /// Where the targets' confirms come back; made with the first ticket, so a queue that
    /// never holds a dead letter (most) does not carry a channel for them.
    confirms: Option<(
        mpsc::UnboundedSender<QueueEvent>,
        mpsc::UnboundedReceiver<QueueEvent>,
    )>,
}

impl<T> Default for AtLeastOnce<T> {
    fn default() -> Self {
        AtLeastOnce {
            pending: BTreeMap::new(),
            tickets: BTreeMap::new(),
            next_id: 1,
            bytes: 0,
            confirms: None,
        }
    }
}

impl<T> AtLeastOnce<T> {
    /// Dead letters held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Their body octets.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Holds `held`, dead-lettered as `message`, until its targets take it; answers its
    /// id for [`AtLeastOnce::route`].
    pub fn add(&mut self, held: T, message: Arc<Message>) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let size = message.body.len() as u64;
        self.bytes += size;
        self.pending.insert(
            id,
            Pending {
                held,
                message,
                size,
                taken: Vec::new(),
                waiting: 0,
                retry_at: None,
            },
        );
        id
    }

    /// The message of dead letter `id`, and the targets that already took it.
    pub fn message(&self, id: u64) -> Option<(Arc<Message>, &[Arc<str>])> {
        self.pending
            .get(&id)
            .map(|p| (p.message.clone(), p.taken.as_slice()))
    }

    /// A confirm ticket for sending dead letter `id` to `target`.
    pub fn ticket(&mut self, id: u64, target: Arc<str>) -> ConfirmTicket {
        let seq = self.next_id;
        self.next_id += 1;
        self.tickets.insert(seq, (id, target));
        if let Some(p) = self.pending.get_mut(&id) {
            p.waiting += 1;
        }
        let (sink, _) = self.confirms.get_or_insert_with(mpsc::unbounded_channel);
        ConfirmTicket {
            sink: sink.clone(),
            channel: TICKET_CHANNEL,
            seq,
        }
    }

    /// Dead letter `id` was routed: to nothing new (`sent` false: no route, or only to
    /// targets that took it already), or to targets whose confirms will come. Answers
    /// what the queue settles now: the dead letter, when every target has taken it.
    pub fn routed(&mut self, id: u64, sent: bool, now: Instant) -> Option<T> {
        let p = self.pending.get_mut(&id)?;
        if sent || p.waiting > 0 {
            return None;
        }
        if p.taken.is_empty() {
            p.retry_at = Some(now + RETRY_AFTER);
            return None;
        }
        self.settle(id)
    }

    /// Waits for the next confirm of a target.
    pub async fn confirm(&mut self) -> (u64, bool) {
        let Some((_, confirms)) = &mut self.confirms else {
            // No ticket was ever given out: no confirm can come.
            return std::future::pending().await;
        };
        loop {
            // The module keeps a sender, so the channel never closes.
            if let Some(QueueEvent::Confirm { seq, ok, .. }) = confirms.recv().await {
                return (seq, ok);
            }
        }
    }

    /// A target answered ticket `seq`. Answers the dead letter to settle, when this was
    /// the last confirm it waited for and every target took it.
    pub fn confirmed(&mut self, seq: u64, ok: bool, now: Instant) -> Option<T> {
        let (id, target) = self.tickets.remove(&seq)?;
        let p = self.pending.get_mut(&id)?;
        p.waiting = p.waiting.saturating_sub(1);
        if ok {
            p.taken.push(target);
        } else {
            p.retry_at = Some(now + RETRY_AFTER);
        }
        if p.waiting > 0 || p.retry_at.is_some() {
            return None;
        }
        self.settle(id)
    }

    /// What the queue keeps of dead letter `id`.
    pub fn held(&self, id: u64) -> Option<&T> {
        self.pending.get(&id).map(|p| &p.held)
    }

    /// Stops holding dead letter `id` (nowhere to send it): answers it to settle.
    pub fn remove(&mut self, id: u64) -> Option<T> {
        self.settle(id)
    }

    fn settle(&mut self, id: u64) -> Option<T> {
        let p = self.pending.remove(&id)?;
        self.bytes -= p.size;
        Some(p.held)
    }

    /// When the next dead letter is due to be routed again.
    pub fn next_retry(&self) -> Option<Instant> {
        self.pending
            .values()
            .filter(|p| p.waiting == 0)
            .filter_map(|p| p.retry_at)
            .min()
    }

    /// The dead letters due to be routed again at `now` (their retry time is cleared).
    pub fn due(&mut self, now: Instant) -> Vec<u64> {
        let mut ids = Vec::new();
        for (id, p) in &mut self.pending {
            if p.retry_at.is_some_and(|t| t <= now) && p.waiting == 0 {
                p.retry_at = None;
                ids.push(*id);
            }
        }
        ids
    }
}
