//! [`Consumer`]: the stream of deliveries for one `basic.consume`.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures::Stream;
use tokio::sync::mpsc;

use crate::error::Result;
use crate::handle::ChannelCore;
use crate::message::Delivery;

/// The deliveries of one consumer, as a [`Stream`] of `Result<Delivery>`.
///
/// The stream ends after [`crate::Channel::basic_cancel`], after the broker cancels the
/// consumer (its queue was deleted), or after the channel or connection is closed by
/// this client. If the server closes the channel or the connection, or the connection
/// fails, the stream yields that error once and then ends.
///
/// The consumer keeps the connection alive. Dropping it does not cancel the
/// subscription: deliveries that arrive later are discarded (and stay unacknowledged
/// until the channel closes), so call [`crate::Channel::basic_cancel`] first.
pub struct Consumer {
    tag: String,
    rx: mpsc::UnboundedReceiver<Result<Delivery>>,
    channel: ChannelCore,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tag", &self.tag)
            .field("channel", &self.channel.id())
            .finish_non_exhaustive()
    }
}

impl Consumer {
    pub(crate) fn new(
        tag: String,
        rx: mpsc::UnboundedReceiver<Result<Delivery>>,
        channel: ChannelCore,
    ) -> Self {
        Consumer { tag, rx, channel }
    }

    /// The consumer tag (the broker's, when an empty one was asked for).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The id of the channel the consumer lives on.
    pub fn channel_id(&self) -> u16 {
        self.channel.id()
    }
}

impl Stream for Consumer {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
