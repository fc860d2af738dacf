//! One channel's protocol state in the connection task: [`ChannelSlot`] with its
//! pending calls ([`Pending`]), consumers, confirms and the message still arriving in
//! frames ([`PartialContent`]); [`open_slot`], the check every request on a channel goes
//! through; and how a channel ends ([`ChannelSlot::fail`]): everything waiting on it
//! fails or finishes.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use minimq_protocol::idhash::IdMap;
use minimq_protocol::properties::LastContent;
use minimq_protocol::{BasicProperties, ChannelCloseOk, Method, ReplyCode};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::handle::{ChannelShared, ConsumerSink, Content, Reply};

use super::confirms::Confirms;

/// A synchronous call waiting for its reply.
pub(super) struct Pending {
    /// Class and method id of the request, to check the reply against.
    pub(super) request: (u16, u16),
    pub(super) reply: PendingReply,
}

pub(super) enum PendingReply {
    Open(oneshot::Sender<Result<Arc<ChannelShared>>>),
    Call {
        reply: oneshot::Sender<Result<Reply>>,
        consumer: Option<ConsumerSink>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    Opening,
    Open,
    /// We sent `channel.close` and wait for `close-ok`.
    Closing,
}

/// A message whose header and body frames are still arriving.
pub(super) struct PartialContent {
    pub(super) method: Method,
    pub(super) header: Option<(Arc<BasicProperties>, u64)>,
    /// The body frames so far: most bodies are one frame, which needs no `Vec`.
    pub(super) first: Bytes,
    pub(super) more: Vec<Bytes>,
    pub(super) received: u64,
}

impl PartialContent {
    pub(super) fn is_complete(&self) -> bool {
        matches!(self.header, Some((_, size)) if self.received >= size)
    }

    pub(super) fn finish(mut self) -> (Method, Content) {
        let (properties, _) = self.header.take().unwrap_or_default();
        let body = if self.more.is_empty() {
            self.first
        } else {
            let mut all = BytesMut::with_capacity(self.received as usize);
            all.extend_from_slice(&self.first);
            for chunk in &self.more {
                all.extend_from_slice(chunk);
            }
            all.freeze()
        };
        (self.method, Content { properties, body })
    }
}

/// The protocol state of one open channel.
pub(super) struct ChannelSlot {
    pub(super) shared: Arc<ChannelShared>,
    pub(super) state: SlotState,
    pub(super) pending: VecDeque<Pending>,
    pub(super) consumers: IdMap<Arc<str>, ConsumerSink>,
    pub(super) content: Option<PartialContent>,
    pub(super) confirms: Option<Confirms>,
    /// Exchange, routing key and properties of the last message received: the next one
    /// usually carries the same, and then shares them.
    pub(super) last: LastContent,
}

impl ChannelSlot {
    /// Fails everything waiting on the channel with `reason` and marks it closed.
    /// Pending `channel.close` calls succeed: the channel is closed. Consumers get the
    /// error unless this client closed the channel or connection itself.
    pub(super) fn fail(self, reason: Error, by_client: bool) {
        self.shared.set_closed(reason.clone());
        for pending in self.pending {
            match pending.reply {
                PendingReply::Open(reply) => {
                    let _ = reply.send(Err(reason.clone()));
                }
                PendingReply::Call { reply, .. } if pending.request == (20, 40) => {
                    let _ = reply.send(Ok(Reply {
                        method: Method::ChannelCloseOk(ChannelCloseOk),
                        content: None,
                    }));
                }
                PendingReply::Call { reply, .. } => {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        }
        if !by_client {
            for sink in self.consumers.values() {
                let _ = sink.tx.send(Err(reason.clone()));
            }
        }
        if let Some(confirms) = self.confirms {
            for tx in confirms.outstanding.into_values().flatten() {
                let _ = tx.send(Err(reason.clone()));
            }
            for waiter in confirms.waiters {
                let _ = waiter.send(Err(reason.clone()));
            }
        }
    }
}

/// The slot of `channel` if it is open and still the same channel.
pub(super) fn open_slot<'a>(
    channels: &'a mut IdMap<u16, ChannelSlot>,
    channel: &Arc<ChannelShared>,
) -> Result<&'a mut ChannelSlot> {
    match channels.get_mut(&channel.id) {
        Some(slot) if Arc::ptr_eq(&slot.shared, channel) => match slot.state {
            SlotState::Open => Ok(slot),
            SlotState::Opening | SlotState::Closing => Err(Error::ChannelClosed {
                code: ReplyCode::Success.code(),
                text: "channel is closing".into(),
            }),
        },
        _ => Err(channel.closed_reason().unwrap_or(Error::ChannelClosed {
            code: ReplyCode::Success.code(),
            text: "channel is closed".into(),
        })),
    }
}
