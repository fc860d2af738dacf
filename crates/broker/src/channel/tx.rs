//! A channel's transaction (`tx.select`): the publishes and settlements (ack / nack /
//! reject) held until `tx.commit`, and the commits still waiting for their queues.
//!
//! As in RabbitMQ, a publish is routed when it arrives (a missing exchange fails it at
//! once) but reaches its queues only at commit, where an unroutable `mandatory` one is
//! returned; a settlement takes its delivery tags at once (an unknown tag fails at once)
//! but reaches the queues only at commit. A rollback drops the held publishes and gives
//! the held tags back to the channel as unacked: nothing is requeued.
//!
//! `tx.commit-ok` waits for every publish of the transaction to be answered by its queues
//! with the machinery of publisher confirms ([`Confirms`]): a persistent message in a
//! durable queue is answered once it is fsynced, so the commit is one group commit of
//! the store. A publish a queue refuses makes the commit fail, as RabbitMQ's
//! `partial tx completion`.
//!
//! RabbitMQ does not bound what a transaction holds. Here the held publishes may take at
//! most `Config::max_tx_size` octets (bodies plus [`PUBLISH_OVERHEAD`] each); past it the
//! publish is a channel error and the transaction is dropped with the channel.
//! Settlements need no bound of their own: each holds a delivery the channel already had.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::confirms::{Confirm, Confirms};
use super::unacked::{Outstanding, Unacked};
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::QueueHandle;

/// Octets a held publish counts on top of its body: the message's header and routing,
/// its queue list, the bookkeeping (the same allowance the queues use).
pub const PUBLISH_OVERHEAD: u64 = 256;

/// Sequence numbers of one transaction's publishes come from a range of their own
/// (2^32 per `tx.select`, never shown to the client): a queue's late answer for a
/// transaction that ended with its channel cannot be taken for an answer to a later
/// transaction on a channel reopened under the same number.
static NEXT_RANGE: AtomicU64 = AtomicU64::new(1 << 32);

/// A publish held until commit.
#[derive(Debug)]
pub struct TxPublish {
    /// The message, routed.
    pub message: Arc<Message>,
    /// The queues it was routed to when it arrived.
    pub queues: Vec<QueueHandle>,
    /// Returned at commit if it has no queue.
    pub mandatory: bool,
}

/// An ack, nack or reject held until commit, with the deliveries it took.
#[derive(Debug)]
pub struct TxSettle {
    /// `basic.ack`; else a nack or reject.
    pub ack: bool,
    /// For a nack / reject: back to the queue rather than dropped or dead-lettered.
    pub requeue: bool,
    /// The deliveries, by their tags.
    pub taken: Vec<(u64, Outstanding)>,
}

/// What a waiting commit came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every publish of it was taken by its queues: send `tx.commit-ok`.
    Committed,
    /// A queue refused a publish of it.
    Failed,
}

/// A commit whose publishes are not all answered yet.
#[derive(Debug)]
struct Commit {
    /// The last sequence number of its publishes (of an earlier commit if it has none).
    last: u64,
    failed: bool,
}

/// The transaction state of a channel in tx mode.
#[derive(Debug)]
pub struct Tx {
    publishes: Vec<TxPublish>,
    settlements: Vec<TxSettle>,
    /// Octets the held publishes count.
    held: u64,
    /// Most octets the held publishes may count.
    limit: u64,
    /// The committed publishes, by sequence number, until their queues answered.
    confirms: Confirms,
    /// Commits waiting for answers, oldest first.
    commits: VecDeque<Commit>,
}

impl Tx {
    /// A transaction with nothing held, holding at most `limit` octets of publishes.
    pub fn new(limit: u64) -> Tx {
        Tx {
            publishes: Vec::new(),
            settlements: Vec::new(),
            held: 0,
            limit,
            confirms: Confirms::starting_at(NEXT_RANGE.fetch_add(1 << 32, Ordering::Relaxed)),
            commits: VecDeque::new(),
        }
    }

    /// Holds a publish until commit; past the limit it is refused.
    pub fn hold_publish(&mut self, publish: TxPublish) -> AmqpResult<()> {
        let size = (publish.message.body.len() as u64).saturating_add(PUBLISH_OVERHEAD);
        let held = self.held.saturating_add(size);
        if held > self.limit {
            return Err(AmqpError::precondition(format!(
                "transaction holds more than the limit of {} octets of messages; commit or roll back sooner",
                self.limit
            )));
        }
        self.held = held;
        self.publishes.push(publish);
        Ok(())
    }

    /// Holds a settlement until commit.
    pub fn hold_settle(&mut self, settle: TxSettle) {
        self.settlements.push(settle);
    }

    /// Takes everything held, in arrival order, for the commit.
    pub fn take_held(&mut self) -> (Vec<TxPublish>, Vec<TxSettle>) {
        self.held = 0;
        (
            std::mem::take(&mut self.publishes),
            std::mem::take(&mut self.settlements),
        )
    }

    /// `tx.rollback`: the held publishes are dropped, the held deliveries are unacked
    /// again under their tags.
    pub fn rollback(&mut self, unacked: &mut Unacked) {
        self.held = 0;
        self.publishes.clear();
        for settle in self.settlements.drain(..) {
            unacked.restore(settle.taken);
        }
    }

    /// The transaction ends with its channel: the held deliveries go back to the
    /// channel's unacked ones, to be requeued with them.
    pub fn abandon(self, unacked: &mut Unacked) {
        for settle in self.settlements {
            unacked.restore(settle.taken);
        }
    }

    /// Numbers a committed publish that waits for `answers` queues (see
    /// [`Tx::commit_sent`]).
    pub fn number(&mut self, answers: u32) -> u64 {
        self.confirms.publish(answers)
    }

    /// Records one queue's answer for the committed publish `seq`.
    pub fn answer(&mut self, seq: u64, ok: bool) {
        self.confirms.answer(seq, ok);
    }

    /// The publishes of a commit have been given sequence numbers by
    /// [`Tx::number`]: the commit waits for the answers to all of them.
    pub fn commit_sent(&mut self) {
        self.commits.push_back(Commit {
            last: self.confirms.last_seq(),
            failed: false,
        });
    }

    /// Adds the commits that are now answered, oldest first, to `out`.
    pub fn settled(&mut self, out: &mut Vec<Outcome>) {
        let mut answered = Vec::new();
        self.confirms.drain(&mut answered);
        for confirm in answered {
            if let Confirm::Nack(seq) = confirm {
                if let Some(c) = self.commits.iter_mut().find(|c| c.last >= seq) {
                    c.failed = true;
                }
            }
        }
        // Confirms are answered in order: a commit whose last publish is answered is
        // done; one without publishes waits only for the commits before it.
        let upto = self.confirms.answered_upto();
        while let Some(c) = self.commits.front() {
            if c.last > upto {
                break;
            }
            out.push(if c.failed {
                Outcome::Failed
            } else {
                Outcome::Committed
            });
            self.commits.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_waits_for_every_answer_of_its_publishes_and_commits_complete_in_order() {
        let mut tx = Tx::new(1 << 20);
        let mut out = Vec::new();
        // A commit with nothing to wait for completes at once.
        tx.commit_sent();
        tx.settled(&mut out);
        assert_eq!(out, vec![Outcome::Committed]);
        out.clear();
        let a = tx.confirms.publish(2);
        tx.commit_sent();
        let b = tx.confirms.publish(1);
        tx.commit_sent();
        tx.commit_sent(); // empty, behind the second
        tx.confirms.answer(b, false);
        tx.settled(&mut out);
        assert!(out.is_empty(), "the first commit still waits");
        tx.confirms.answer(a, true);
        tx.settled(&mut out);
        assert!(out.is_empty(), "one of two answers");
        tx.confirms.answer(a, true);
        tx.settled(&mut out);
        assert_eq!(
            out,
            vec![Outcome::Committed, Outcome::Failed, Outcome::Committed]
        );
    }

    #[test]
    fn an_answer_meant_for_another_transaction_is_ignored() {
        let mut old = Tx::new(1 << 20);
        let stale = old.confirms.publish(1);
        let mut tx = Tx::new(1 << 20);
        let seq = tx.confirms.publish(1);
        assert_ne!(stale, seq);
        tx.commit_sent();
        tx.confirms.answer(stale, true);
        let mut out = Vec::new();
        tx.settled(&mut out);
        assert!(out.is_empty(), "still waiting for its own answer");
        tx.confirms.answer(seq, true);
        tx.settled(&mut out);
        assert_eq!(out, vec![Outcome::Committed]);
    }

    #[test]
    fn held_publishes_are_bounded() {
        use crate::message::Message;
        let message = |n: usize| {
            Arc::new(Message::new(
                "".into(),
                "q".into(),
                minimq_protocol::BasicProperties::default(),
                bytes::Bytes::from(vec![0u8; n]),
            ))
        };
        let mut tx = Tx::new(1000);
        let publish = |n| TxPublish {
            message: message(n),
            queues: Vec::new(),
            mandatory: false,
        };
        tx.hold_publish(publish(700 - PUBLISH_OVERHEAD as usize))
            .unwrap();
        let err = tx.hold_publish(publish(100)).unwrap_err();
        assert_eq!(err.code.code(), 406);
        // A rollback frees the room.
        tx.rollback(&mut Unacked::default());
        tx.hold_publish(publish(700)).unwrap();
    }
}
