//! Returned messages: a mandatory publish the broker could not route comes back as
//! `basic.return`, surfaced as a [`ReturnedMessage`] on the channel's
//! [`ReturnedMessages`] stream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::Stream;
use minimq_protocol::BasicProperties;
use tokio::sync::mpsc;

use crate::handle::ChannelCore;

/// A message the broker sent back with `basic.return`.
#[derive(Debug, Clone)]
pub struct ReturnedMessage {
    /// Why: usually 312 `NO_ROUTE`.
    pub reply_code: u16,
    /// The broker's explanation, e.g. `NO_ROUTE`.
    pub reply_text: String,
    /// The exchange the message was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Its properties, as published.
    pub properties: BasicProperties,
    /// Its body, as published.
    pub body: Bytes,
}

/// Stream of the messages returned on one channel, from
/// [`crate::Channel::returned_messages`]. It ends when the channel closes.
///
/// There is one subscriber per channel: subscribing again moves later returns to the
/// new stream. Returns that arrive while nobody is subscribed are logged and dropped.
pub struct ReturnedMessages {
    rx: mpsc::UnboundedReceiver<ReturnedMessage>,
    _channel: ChannelCore,
}

impl std::fmt::Debug for ReturnedMessages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReturnedMessages")
            .field("channel", &self._channel.id())
            .finish_non_exhaustive()
    }
}

impl ReturnedMessages {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<ReturnedMessage>, channel: ChannelCore) -> Self {
        ReturnedMessages {
            rx,
            _channel: channel,
        }
    }
}

impl Stream for ReturnedMessages {
    type Item = ReturnedMessage;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ReturnedMessage>> {
        self.rx.poll_recv(cx)
    }
}
