//! A channel's `basic.qos`: the prefetch its next consumers get (`global=false`) and the
//! channel-wide limit (`global=true`), a [`ChannelCredit`] shared with the queues its
//! consumers read from. A queue takes a unit of that credit at dispatch; the channel
//! gives units back when the deliveries that took them are settled.

use std::sync::Arc;

use crate::queue::ChannelCredit;

/// The prefetch settings of one channel.
#[derive(Debug, Default)]
pub struct Qos {
    /// Prefetch for consumers created from now on (`basic.qos global=false`).
    prefetch: u32,
    /// The channel-wide limit (`basic.qos global=true`), shared with queues.
    credit: Arc<ChannelCredit>,
    /// Whether a channel-wide limit was ever set: from then on, new consumers share
    /// `credit`, and an ack may give credit back (so is not a plain ack).
    global: bool,
}

impl Qos {
    /// `basic.qos` with `prefetch_count` (0 = none). With `global`, the channel-wide
    /// limit, which takes effect at once for every consumer that shares it.
    pub fn set(&mut self, prefetch_count: u16, global: bool) {
        if global {
            self.global = true;
            self.credit.set_limit(u32::from(prefetch_count));
        } else {
            self.prefetch = u32::from(prefetch_count);
        }
    }

    /// Whether a channel-wide limit was ever set.
    pub fn is_global(&self) -> bool {
        self.global
    }

    /// The prefetch a consumer created now gets.
    pub fn consumer_prefetch(&self) -> u32 {
        self.prefetch
    }

    /// The channel-wide credit a consumer created now shares, if a limit was set.
    pub fn consumer_credit(&self) -> Option<Arc<ChannelCredit>> {
        self.global.then(|| self.credit.clone())
    }

    /// Gives back `n` units of channel-wide credit (their deliveries were settled, or
    /// never written).
    pub fn release(&self, n: u32) {
        self.credit.release(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_consumer_prefetch_applies_to_consumers_created_later_and_shares_no_credit() {
        let mut qos = Qos::default();
        assert_eq!(qos.consumer_prefetch(), 0);
        qos.set(10, false);
        assert_eq!(qos.consumer_prefetch(), 10);
        assert!(!qos.is_global());
        assert!(qos.consumer_credit().is_none());
    }

    #[test]
    fn a_global_limit_is_shared_credit_that_settling_gives_back() {
        let mut qos = Qos::default();
        qos.set(5, false);
        qos.set(2, true);
        assert!(qos.is_global());
        assert_eq!(
            qos.consumer_prefetch(),
            5,
            "global=true leaves the per-consumer prefetch"
        );
        let Some(credit) = qos.consumer_credit() else {
            panic!("global qos shares its credit");
        };
        assert!(credit.try_acquire());
        assert!(credit.try_acquire());
        assert!(!credit.try_acquire(), "limit 2 reached");
        qos.release(1);
        assert!(credit.try_acquire());
        assert!(!credit.available());
        // Raising the limit frees room at once for every consumer sharing it.
        qos.set(3, true);
        assert!(credit.available());
        // 0 lifts the limit.
        qos.set(0, true);
        assert!((0..100).all(|_| credit.try_acquire()));
        assert!(
            qos.is_global(),
            "once set, new consumers keep sharing the credit"
        );
    }
}
