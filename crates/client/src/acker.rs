//! [`Acker`]: settles one delivery (ack, nack or reject) on the channel it came from.
//! It is split from [`crate::Delivery`] so a worker can keep the acker and hand the body
//! elsewhere, as lapin does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::handle::{ChannelCore, Settlement};

/// Acknowledges, rejects or requeues one delivery. Cheap to clone; all clones share one
/// "already settled" flag, so a second settlement is refused locally instead of making
/// the server close the channel with `PRECONDITION_FAILED - unknown delivery tag`.
///
/// For deliveries received with `no_ack` every method is a no-op that returns `Ok`.
#[derive(Clone)]
pub struct Acker {
    delivery_tag: u64,
    /// `None` for a delivery received with `no_ack`: there is nothing to settle, so
    /// such a delivery costs no channel handle and no flag.
    settle: Option<Settle>,
}

#[derive(Clone)]
struct Settle {
    channel: ChannelCore,
    settled: Arc<AtomicBool>,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker")
            .field("channel", &self.settle.as_ref().map(|s| s.channel.id()))
            .field("delivery_tag", &self.delivery_tag)
            .field("no_ack", &self.settle.is_none())
            .field("settled", &self.is_settled())
            .finish()
    }
}

impl Acker {
    /// The acker of a delivery that needs settling, on `channel`.
    pub(crate) fn new(channel: ChannelCore, delivery_tag: u64) -> Acker {
        Acker {
            delivery_tag,
            settle: Some(Settle {
                channel,
                settled: Arc::new(AtomicBool::new(false)),
            }),
        }
    }

    /// The acker of a delivery received with `no_ack`.
    pub(crate) fn no_ack(delivery_tag: u64) -> Acker {
        Acker {
            delivery_tag,
            settle: None,
        }
    }

    /// The delivery tag this acker settles.
    pub fn delivery_tag(&self) -> u64 {
        self.delivery_tag
    }

    /// Whether the delivery was already acked, nacked or rejected through this acker.
    pub fn is_settled(&self) -> bool {
        self.settle
            .as_ref()
            .is_some_and(|s| s.settled.load(Ordering::Acquire))
    }

    /// `basic.ack` for this delivery alone. Returns once the connection has the ack
    /// queued, without waiting for it to be written (as pika's `basic_ack`); acks leave in
    /// order with everything sent on the connection before them.
    pub async fn ack(&self) -> Result<()> {
        self.settle(Settlement::Ack {
            delivery_tag: self.delivery_tag,
            multiple: false,
        })
        .await
    }

    /// `basic.nack` for this delivery alone; `requeue` puts it back on the queue (it is
    /// then redelivered with `redelivered = true`), otherwise it is dropped or dead-lettered.
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.settle(Settlement::Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
        })
        .await
    }

    /// `basic.reject`: like [`Acker::nack`], in the method every AMQP broker knows.
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        self.settle(Settlement::Reject {
            delivery_tag: self.delivery_tag,
            requeue,
        })
        .await
    }

    async fn settle(&self, method: Settlement) -> Result<()> {
        let Some(settle) = &self.settle else {
            return Ok(());
        };
        if settle.settled.swap(true, Ordering::AcqRel) {
            return Err(Error::InvalidState(format!(
                "delivery {} was already acknowledged",
                self.delivery_tag
            )));
        }
        settle.channel.cast_nowait(method).await
    }
}
