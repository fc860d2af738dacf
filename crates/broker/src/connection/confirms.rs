//! Confirm mode and transactions as the connection runs them: `tx.commit` sending what
//! the transaction held, and the answers queues send back for publishes — publisher
//! confirms out in publish order, folded (`channel/confirms.rs` decides which), and
//! `tx.commit-ok` once a commit's publishes are all answered, or the channel closed when
//! a queue refused one.

use minimq_protocol::*;
use tokio::sync::oneshot;

use super::held::add_to_batch;
use super::Conn;
use crate::channel::confirms::Confirm;
use crate::channel::tx::Outcome;
use crate::channel::{not_transactional, Channel};
use crate::error::{AmqpError, AmqpResult};
use crate::queue::{ConfirmTicket, Publish, QueueCommand, QueueHandle};

impl Conn {
    /// `tx.commit`: the held publishes go to their queues (an unroutable mandatory one is
    /// returned), then the held settlements; `tx.commit-ok` follows once the queues have
    /// answered every publish (see [`Conn::emit_confirms`]).
    pub(super) async fn tx_commit(&mut self, ch: u16) -> AmqpResult<()> {
        let Some(tx) = self.channel(ch).tx_mut() else {
            return Err(not_transactional());
        };
        let (publishes, settlements) = tx.take_held();
        let mut batches: Vec<(QueueHandle, Vec<Publish>)> = Vec::new();
        for p in publishes {
            if p.queues.is_empty() {
                if p.mandatory {
                    self.send_return(ch, &p.message);
                }
                continue;
            }
            let Some(tx) = self.channel(ch).tx_mut() else {
                break;
            };
            let seq = tx.number(p.queues.len() as u32);
            for q in p.queues {
                let confirm = Some(ConfirmTicket {
                    sink: self.events.clone(),
                    channel: ch,
                    seq,
                });
                let message = p.message.clone();
                add_to_batch(&mut batches, q, Publish { message, confirm });
            }
        }
        if let Some(tx) = self.channel(ch).tx_mut() {
            tx.commit_sent();
        }
        // The whole transaction reaches each queue as one batch: one group commit.
        for (queue, batch) in batches {
            queue.publish(batch).await;
        }
        // Durable queues whose messages the transaction settles: commit-ok must not go out
        // before those settle records are on disk, or a crash right after it brings the
        // acked messages back (the publishes are covered by their confirms).
        let mut logged: Vec<QueueHandle> = Vec::new();
        for s in settlements {
            for (_, o) in &s.taken {
                let info = o.queue.info();
                if info.store_id.is_some() && !logged.iter().any(|q| q.same(&o.queue)) {
                    logged.push(o.queue.clone());
                }
            }
            let taken = s.taken.into_iter().map(|(_, o)| o).collect();
            self.apply_settle(ch, taken, s.requeue, s.ack).await?;
        }
        if !logged.is_empty() && !self.settles_logged(logged).await {
            self.tx_failed.push(ch);
        }
        self.emit_confirms(ch);
        self.fail_transactions().await;
        Ok(())
    }

    /// Waits until each queue has handled what this connection sent it (a queue logs its
    /// settle records before it answers `Counts`), then until the store has synced them.
    pub(super) async fn settles_logged(&mut self, queues: Vec<QueueHandle>) -> bool {
        for q in queues {
            let (reply, counts) = oneshot::channel();
            if q.send(QueueCommand::Counts { reply }).await {
                let _ = counts.await;
            }
        }
        match &self.state.store {
            Some(store) => store.sync().await,
            None => true,
        }
    }

    /// Closes the channels whose commit a queue refused (see [`Conn::emit_confirms`]),
    /// with RabbitMQ's error.
    pub(super) async fn fail_transactions(&mut self) {
        for ch in std::mem::take(&mut self.tx_failed) {
            let open = self.channels.get(&ch).is_some_and(Channel::is_open);
            if open {
                let e = AmqpError::precondition("partial tx completion").on(90, 20);
                self.fail_channel(ch, e).await;
            }
        }
    }

    /// Sends the confirms that have become due on `ch`.
    /// On a channel in tx mode: the `tx.commit-ok`s that have become due, and the
    /// commits that failed (closed by [`Conn::fail_transactions`]).
    pub(super) fn emit_confirms(&mut self, ch: u16) {
        let (mut due, mut commits) = (Vec::new(), Vec::new());
        let Some(channel) = self.channels.get_mut(&ch) else {
            return;
        };
        channel.drain_answers(&mut due, &mut commits);
        for outcome in commits {
            match outcome {
                Outcome::Committed => self.send_method(ch, TxCommitOk.into()),
                Outcome::Failed => {
                    // The channel closes: no later commit-ok may follow.
                    if !self.tx_failed.contains(&ch) {
                        self.tx_failed.push(ch);
                    }
                    break;
                }
            }
        }
        for confirm in due {
            let m = match confirm {
                Confirm::Ack(tag, multiple) => BasicAck {
                    delivery_tag: tag,
                    multiple,
                }
                .into(),
                Confirm::Nack(tag) => BasicNack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                }
                .into(),
            };
            self.send_method(ch, m);
        }
    }
}
