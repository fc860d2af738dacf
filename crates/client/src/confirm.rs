//! Publisher confirms: [`PublisherConfirm`], the future every publish returns, and the
//! [`Confirmation`] it resolves to once the broker has taken responsibility (or not).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::oneshot;

use crate::error::Result;
use crate::handle::ChannelCore;

pub use crate::handle::Confirmation;

/// Resolves to the [`Confirmation`] of one publish. On a channel without
/// [`crate::Channel::confirm_select`] it is ready at once with
/// [`Confirmation::NotRequested`]: as with any publish without confirms, nothing tells
/// whether the broker took the message (a channel that closes meanwhile drops it). In
/// confirm mode it fails with the channel's close reason if the channel or connection
/// dies before the broker's answer.
///
/// Dropping it does not cancel anything: the message was already sent.
pub struct PublisherConfirm {
    /// `None` outside confirm mode.
    waiting: Option<(oneshot::Receiver<Result<Confirmation>>, ChannelCore)>,
}

impl std::fmt::Debug for PublisherConfirm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublisherConfirm")
            .field("channel", &self.waiting.as_ref().map(|(_, c)| c.id()))
            .finish_non_exhaustive()
    }
}

impl PublisherConfirm {
    pub(crate) fn new(
        waiting: Option<(oneshot::Receiver<Result<Confirmation>>, ChannelCore)>,
    ) -> Self {
        PublisherConfirm { waiting }
    }
}

impl Future for PublisherConfirm {
    type Output = Result<Confirmation>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some((rx, channel)) = &mut self.waiting else {
            return Poll::Ready(Ok(Confirmation::NotRequested));
        };
        match Pin::new(rx).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(channel.closed_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}
