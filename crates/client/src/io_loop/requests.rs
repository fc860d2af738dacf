//! What handles ask ([`IoLoop::on_request`]): calls, settlements, publishes, confirm
//! waits, channel opens and the close, encoded into the outgoing buffer; channel numbers
//! handed out; and requests that arrive after the end, answered with it
//! ([`fail_request`]).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use minimq_protocol::frame::{encode_body_frames, encode_method};
use minimq_protocol::idhash::IdMap;
use minimq_protocol::properties::LastContent;
use minimq_protocol::{ChannelOpen, Method};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::handle::{ChannelShared, Confirmation, Request};

use super::confirms::Confirms;
use super::slot::{open_slot, ChannelSlot, Pending, PendingReply, SlotState};
use super::IoLoop;

impl IoLoop {
    pub(super) fn send_method(&mut self, channel: u16, method: &Method) {
        encode_method(&mut self.outbox, channel, method);
    }

    pub(super) fn on_request(&mut self, request: Request) {
        match request {
            Request::OpenChannel { reply } => self.open_channel(reply),
            Request::Call {
                channel,
                method,
                consumer,
                reply,
            } => {
                let slot = match open_slot(&mut self.channels, &channel) {
                    Ok(slot) => slot,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                match &*method {
                    // The broker numbers publishes from the moment it sees confirm.select,
                    // so count from the moment it is sent.
                    Method::ConfirmSelect(_) => {
                        slot.confirms.get_or_insert_with(Confirms::new);
                        channel.confirming.store(true, Ordering::Release);
                    }
                    Method::ChannelClose(_) => slot.state = SlotState::Closing,
                    _ => {}
                }
                slot.pending.push_back(Pending {
                    request: (method.class_id(), method.method_id()),
                    reply: PendingReply::Call { reply, consumer },
                });
                encode_method(&mut self.outbox, channel.id, &method);
            }
            Request::Cast {
                channel,
                settle,
                reply,
            } => {
                let result = open_slot(&mut self.channels, &channel).map(|_| ());
                if result.is_ok() {
                    encode_method(&mut self.outbox, channel.id, &settle.method());
                }
                if let Some(reply) = reply {
                    let _ = reply.send(result);
                }
            }
            Request::Publish {
                channel,
                head,
                body,
                confirm,
            } => {
                let slot = match open_slot(&mut self.channels, &channel) {
                    Ok(slot) => slot,
                    Err(e) => {
                        if let Some(confirm) = confirm {
                            let _ = confirm.send(Err(e));
                        }
                        return;
                    }
                };
                self.outbox.extend_from_slice(&head);
                encode_body_frames(
                    &mut self.outbox,
                    channel.id,
                    &body,
                    self.shared.tune.frame_max,
                );
                match &mut slot.confirms {
                    Some(confirms) => {
                        confirms.outstanding.insert(confirms.next_seq, confirm);
                        confirms.next_seq += 1;
                    }
                    None => {
                        if let Some(confirm) = confirm {
                            let _ = confirm.send(Ok(Confirmation::NotRequested));
                        }
                    }
                }
            }
            Request::WaitForConfirms { channel, reply } => {
                let slot = match open_slot(&mut self.channels, &channel) {
                    Ok(slot) => slot,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return;
                    }
                };
                match &mut slot.confirms {
                    None => {
                        let _ = reply.send(Err(Error::InvalidState(
                            "wait_for_confirms on a channel without confirm_select".into(),
                        )));
                    }
                    Some(confirms) => {
                        confirms.waiters.push(reply);
                        if confirms.outstanding.is_empty() {
                            confirms.answer_waiters();
                        }
                    }
                }
            }
            Request::Close { reply } => {
                self.close_waiters.push(reply);
                self.begin_close();
            }
        }
    }

    fn open_channel(&mut self, reply: oneshot::Sender<Result<Arc<ChannelShared>>>) {
        let Some(id) = self.free_channel_id() else {
            let _ = reply.send(Err(Error::ChannelsExhausted(self.channel_max())));
            return;
        };
        let shared = Arc::new(ChannelShared::new(id));
        let mut slot = ChannelSlot {
            shared,
            state: SlotState::Opening,
            pending: VecDeque::new(),
            consumers: IdMap::default(),
            content: None,
            confirms: None,
            last: LastContent::default(),
        };
        slot.pending.push_back(Pending {
            request: (20, 10),
            reply: PendingReply::Open(reply),
        });
        self.channels.insert(id, slot);
        self.send_method(id, &Method::ChannelOpen(ChannelOpen));
    }

    fn channel_max(&self) -> u16 {
        match self.shared.tune.channel_max {
            0 => u16::MAX,
            n => n,
        }
    }

    /// The next free channel number, round-robin from the last one handed out.
    fn free_channel_id(&mut self) -> Option<u16> {
        let max = self.channel_max();
        for _ in 0..max {
            let id = self.next_channel;
            self.next_channel = if id >= max { 1 } else { id + 1 };
            if !self.channels.contains_key(&id) {
                return Some(id);
            }
        }
        None
    }
}

/// Answers a request that arrived too late with the connection's end.
pub(super) fn fail_request(request: Request, reason: &Error) {
    let e = reason.clone();
    match request {
        Request::OpenChannel { reply } => drop(reply.send(Err(e))),
        Request::Call { reply, .. } => drop(reply.send(Err(e))),
        Request::Cast { reply, .. } => drop(reply.map(|r| r.send(Err(e)))),
        Request::Publish { confirm, .. } => drop(confirm.map(|c| c.send(Err(e)))),
        Request::WaitForConfirms { reply, .. } => drop(reply.send(Err(e))),
        Request::Close { reply } => drop(reply.send(Err(e))),
    }
}
