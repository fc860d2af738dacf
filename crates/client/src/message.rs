//! Messages the broker hands to the client: [`Delivery`] (from a consumer or
//! `basic.get`) and [`GetMessage`] (a delivery plus the queue's remaining count).

use std::sync::Arc;

use bytes::Bytes;
use minimq_protocol::BasicProperties;

use crate::acker::Acker;
use crate::error::Result;

/// One message delivered by the broker, to a [`crate::Consumer`] or by
/// [`crate::Channel::basic_get`].
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The channel-scoped tag to acknowledge it with.
    pub delivery_tag: u64,
    /// Whether the broker delivered it before (it was requeued or its channel died unacked).
    pub redelivered: bool,
    /// The exchange it was published to (empty for the default exchange).
    pub exchange: Arc<str>,
    /// The routing key it was published with.
    pub routing_key: Arc<str>,
    /// The consumer it was delivered to (empty for `basic.get`). The three strings are
    /// shared with the deliveries before them when they are the same.
    pub consumer_tag: Arc<str>,
    /// Its content properties: shared with the deliveries before it on the channel
    /// when they carried the same (a publisher usually sends the same every time).
    pub properties: Arc<BasicProperties>,
    /// Its body, zero-copy when it arrived in a single frame.
    pub body: Bytes,
    /// Settles the delivery; [`Delivery::ack`] and friends call it.
    pub acker: Acker,
}

impl Delivery {
    /// Acknowledges this delivery (`basic.ack`, not multiple).
    pub async fn ack(&self) -> Result<()> {
        self.acker.ack().await
    }

    /// Negatively acknowledges it (`basic.nack`); `requeue` puts it back on the queue.
    pub async fn nack(&self, requeue: bool) -> Result<()> {
        self.acker.nack(requeue).await
    }

    /// Rejects it (`basic.reject`); `requeue` puts it back on the queue.
    pub async fn reject(&self, requeue: bool) -> Result<()> {
        self.acker.reject(requeue).await
    }
}

/// The answer to a successful [`crate::Channel::basic_get`].
#[derive(Debug, Clone)]
pub struct GetMessage {
    /// The message.
    pub delivery: Delivery,
    /// How many messages the queue still held after this one.
    pub message_count: u32,
}
