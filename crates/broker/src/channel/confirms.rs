//! Publisher confirms for one channel: the single place that decides when a publish is
//! confirmed. A publish is settled once every queue it was routed to has answered; the
//! channel then confirms in publish order, folding runs of acks into one `multiple` ack.
//! A transaction ([`super::tx`]) waits for its commits with the same machinery.

use std::collections::BTreeMap;

/// What to send the publisher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// `basic.ack` with this tag, `multiple` as given.
    Ack(u64, bool),
    /// `basic.nack` with this tag (never multiple).
    Nack(u64),
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    waiting: u32,
    ok: bool,
}

/// The confirm state of a channel in confirm mode.
#[derive(Debug, Default)]
pub struct Confirms {
    next_seq: u64,
    pending: BTreeMap<u64, Pending>,
}

impl Confirms {
    /// Confirm mode just started: sequence numbers begin at 1.
    pub fn new() -> Self {
        Confirms {
            next_seq: 1,
            pending: BTreeMap::new(),
        }
    }

    /// Numbers publishes from `first` on (for numbers the client never sees).
    pub fn starting_at(first: u64) -> Self {
        Confirms {
            next_seq: first,
            pending: BTreeMap::new(),
        }
    }

    /// Registers a publish that waits for `answers` outcomes; returns its sequence number.
    pub fn publish(&mut self, answers: u32) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(
            seq,
            Pending {
                waiting: answers,
                ok: true,
            },
        );
        seq
    }

    /// The sequence number of the latest publish (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    /// Every publish up to this sequence number has been drained.
    pub fn answered_upto(&self) -> u64 {
        self.pending
            .first_key_value()
            .map_or(self.last_seq(), |(&seq, _)| seq.saturating_sub(1))
    }

    /// Records one outcome for `seq`.
    pub fn answer(&mut self, seq: u64, ok: bool) {
        if let Some(p) = self.pending.get_mut(&seq) {
            p.waiting = p.waiting.saturating_sub(1);
            p.ok &= ok;
        }
    }

    /// Pops every settled publish at the front, in order, as confirms to send.
    pub fn drain(&mut self, out: &mut Vec<Confirm>) {
        let mut run: Option<(u64, u32)> = None; // last acked tag, count in run
        while let Some((&seq, p)) = self.pending.first_key_value() {
            if p.waiting > 0 {
                break;
            }
            let ok = p.ok;
            self.pending.pop_first();
            if ok {
                run = Some((seq, run.map_or(1, |(_, n)| n + 1)));
            } else {
                if let Some((tag, n)) = run.take() {
                    out.push(Confirm::Ack(tag, n > 1));
                }
                out.push(Confirm::Nack(seq));
            }
        }
        if let Some((tag, n)) = run {
            out.push(Confirm::Ack(tag, n > 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirms_in_order_and_folds_acks() {
        let mut c = Confirms::new();
        let a = c.publish(1);
        let b = c.publish(2);
        let d = c.publish(0);
        let mut out = Vec::new();
        c.answer(b, true);
        c.drain(&mut out);
        assert!(out.is_empty(), "1 still waits");
        c.answer(a, true);
        c.answer(b, true);
        c.drain(&mut out);
        assert_eq!(out, vec![Confirm::Ack(d, true)]);
    }

    #[test]
    fn a_nack_breaks_the_run() {
        let mut c = Confirms::new();
        let s1 = c.publish(1);
        let s2 = c.publish(1);
        let s3 = c.publish(1);
        c.answer(s1, true);
        c.answer(s2, false);
        c.answer(s3, true);
        let mut out = Vec::new();
        c.drain(&mut out);
        assert_eq!(
            out,
            vec![
                Confirm::Ack(s1, false),
                Confirm::Nack(s2),
                Confirm::Ack(s3, false)
            ]
        );
    }
}
