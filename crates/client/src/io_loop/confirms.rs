//! Publisher-confirm bookkeeping of one channel in confirm mode ([`Confirms`]): the
//! sequence number of the next publish, the confirms still outstanding, and the
//! `wait_for_confirms` callers waiting for all of them.

use std::collections::BTreeMap;

use tokio::sync::oneshot;

use crate::error::Result;
use crate::handle::Confirmation;

/// Publisher-confirm bookkeeping of a channel in confirm mode.
#[derive(Default)]
pub(super) struct Confirms {
    /// Sequence number of the next publish (the broker counts from 1).
    pub(super) next_seq: u64,
    pub(super) outstanding: BTreeMap<u64, Option<oneshot::Sender<Result<Confirmation>>>>,
    /// Whether anything was nacked since the last `wait_for_confirms` answer.
    nacked: bool,
    pub(super) waiters: Vec<oneshot::Sender<Result<bool>>>,
}

impl Confirms {
    pub(super) fn new() -> Confirms {
        Confirms {
            next_seq: 1,
            ..Confirms::default()
        }
    }

    pub(super) fn settle(&mut self, tag: u64, multiple: bool, ack: bool) {
        let settled = if multiple {
            let rest = self.outstanding.split_off(&(tag.saturating_add(1)));
            std::mem::replace(&mut self.outstanding, rest)
        } else {
            self.outstanding
                .remove(&tag)
                .map(|tx| (tag, tx))
                .into_iter()
                .collect()
        };
        let verdict = if ack {
            Confirmation::Ack
        } else {
            self.nacked = true;
            Confirmation::Nack
        };
        for tx in settled.into_values().flatten() {
            let _ = tx.send(Ok(verdict));
        }
        if self.outstanding.is_empty() {
            self.answer_waiters();
        }
    }

    pub(super) fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let all_acked = !std::mem::take(&mut self.nacked);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Ok(all_acked));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_settle_single_and_multiple() {
        let mut c = Confirms::new();
        let mut rxs = Vec::new();
        for seq in 1..=4 {
            let (tx, rx) = oneshot::channel();
            c.outstanding.insert(seq, Some(tx));
            rxs.push(rx);
        }
        let (wait_tx, mut wait_rx) = oneshot::channel();
        c.waiters.push(wait_tx);
        c.settle(2, false, false);
        c.settle(3, true, true);
        assert!(wait_rx.try_recv().is_err(), "4 is still outstanding");
        c.settle(4, false, true);
        let got: Vec<_> = rxs
            .iter_mut()
            .map(|rx| rx.try_recv().unwrap().unwrap())
            .collect();
        use Confirmation::*;
        assert_eq!(got, [Ack, Nack, Ack, Ack]);
        assert!(!wait_rx.try_recv().unwrap().unwrap(), "one was nacked");
        assert!(!c.nacked, "the flag resets once reported");
    }

    #[test]
    fn a_publish_counted_without_a_sender_still_holds_the_waiters() {
        // A publish sent while confirm.select was on its way: counted, nobody to tell.
        let mut c = Confirms::new();
        let (tx, mut rx) = oneshot::channel();
        c.outstanding.insert(1, Some(tx));
        c.outstanding.insert(2, None);
        let (wait_tx, mut wait_rx) = oneshot::channel();
        c.waiters.push(wait_tx);
        c.settle(1, false, true);
        assert_eq!(rx.try_recv().unwrap().unwrap(), Confirmation::Ack);
        assert!(wait_rx.try_recv().is_err(), "2 is still outstanding");
        c.settle(2, true, true);
        assert!(wait_rx.try_recv().unwrap().unwrap());
    }
}
