//! What the server sends, dispatched ([`IoLoop::on_read`]): connection methods (close,
//! blocked), channel methods (server-side closes, flow, confirms, consumer cancels),
//! content reassembled from its frames into deliveries, returns and `basic.get`
//! answers, and replies matched to the channel's oldest pending call ([`is_reply`]).

use std::sync::Arc;

use bytes::Bytes;
use minimq_protocol::frame::encode_method;
use minimq_protocol::{
    BasicCancelOk, ChannelCloseOk, ChannelFlowOk, CodecError, ConnectionCloseOk, ContentHeader,
    Frame, Method, ReplyCode,
};
use tokio::time::Instant;

use crate::error::Error;
use crate::handle::{BlockedState, Content, Reply};
use crate::message::Delivery;
use crate::returned::ReturnedMessage;

use super::deliver::{acker, hand_over};
use super::slot::{PartialContent, PendingReply, SlotState};
use super::{IoLoop, State, CLOSE_TIMEOUT};

impl IoLoop {
    /// Handles what the reader produced; `Some` when the connection ends with it.
    pub(super) fn on_read(
        &mut self,
        item: Option<std::result::Result<Frame, CodecError>>,
    ) -> Option<Error> {
        match item {
            Some(Ok(incoming)) => {
                self.on_incoming(incoming);
                None
            }
            Some(Err(CodecError::Decode(e))) => {
                self.reader_done = true;
                self.violation(e.reply_code(), e.to_string());
                None
            }
            Some(Err(CodecError::Io(e))) => Some(Error::io(e)),
            None => {
                self.reader_done = true;
                Some(match &self.state {
                    State::Open => Error::io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the socket without connection.close",
                    )),
                    State::Closing => client_close_reason(),
                    State::Finishing(reason) => reason.clone(),
                })
            }
        }
    }

    fn on_incoming(&mut self, frame: Frame) {
        match frame {
            Frame::Method(0, Method::ConnectionBlocked(b)) => {
                tracing::warn!(reason = %b.reason, "connection blocked by the server");
                self.shared
                    .blocked
                    .send_replace(BlockedState::Blocked { reason: b.reason });
            }
            Frame::Method(0, Method::ConnectionUnblocked(_)) => {
                tracing::info!("connection unblocked");
                self.shared.blocked.send_replace(BlockedState::Unblocked);
            }
            Frame::Heartbeat => {}
            Frame::Method(0, method) => self.on_connection_method(method),
            other if other.channel() == 0 => self.violation(
                ReplyCode::CommandInvalid,
                "content frame on channel 0".into(),
            ),
            // After close / close-ok everything but the close handshake is discarded.
            _ if !matches!(self.state, State::Open) => {}
            other => self.on_channel_frame(other),
        }
    }

    fn on_connection_method(&mut self, method: Method) {
        if matches!(self.state, State::Finishing(_)) {
            return;
        }
        match method {
            Method::ConnectionClose(close) => {
                self.send_method(0, &Method::ConnectionCloseOk(ConnectionCloseOk));
                let reason = if matches!(self.state, State::Closing) {
                    client_close_reason()
                } else {
                    Error::ConnectionClosed {
                        code: close.reply_code,
                        text: close.reply_text,
                    }
                };
                self.state = State::Finishing(reason);
                self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
            }
            Method::ConnectionCloseOk(_) if matches!(self.state, State::Closing) => {
                self.state = State::Finishing(client_close_reason());
            }
            Method::ConnectionCloseOk(_) => {}
            other => self.violation(
                ReplyCode::CommandInvalid,
                format!("unexpected {} on channel 0", other.name()),
            ),
        }
    }

    fn on_channel_frame(&mut self, frame: Frame) {
        let id = frame.channel();
        let Some(slot) = self.channels.get_mut(&id) else {
            tracing::debug!(channel = id, "dropping a frame for a channel that is gone");
            return;
        };
        match frame {
            Frame::Method(_, method) => {
                if slot.content.is_some() {
                    let text = format!("{} while content frames were expected", method.name());
                    return self.violation(ReplyCode::UnexpectedFrame, text);
                }
                if method.has_content() {
                    slot.content = Some(PartialContent {
                        method,
                        header: None,
                        first: Bytes::new(),
                        more: Vec::new(),
                        received: 0,
                    });
                    return;
                }
                self.on_channel_method(id, method);
            }
            Frame::Header(_, header) => {
                let ContentHeader {
                    body_size,
                    properties,
                    ..
                } = *header;
                match &mut slot.content {
                    Some(partial) if partial.header.is_none() => {
                        let properties = slot.last.properties(properties);
                        partial.header = Some((properties, body_size));
                    }
                    _ => {
                        let text = "content header without a content method".into();
                        return self.violation(ReplyCode::UnexpectedFrame, text);
                    }
                }
                self.maybe_complete(id);
            }
            Frame::Body(_, chunk) => {
                match &mut slot.content {
                    Some(partial) if partial.header.is_some() => {
                        let len = chunk.len() as u64;
                        // An empty first chunk may be replaced: it adds nothing.
                        if partial.received == 0 {
                            partial.first = chunk;
                        } else {
                            partial.more.push(chunk);
                        }
                        partial.received += len;
                    }
                    _ => {
                        let text = "body frame without a content header".into();
                        return self.violation(ReplyCode::UnexpectedFrame, text);
                    }
                }
                self.maybe_complete(id);
            }
            Frame::Heartbeat => {}
        }
    }

    /// Dispatches a message once its body is complete.
    fn maybe_complete(&mut self, id: u16) {
        let Some(slot) = self.channels.get_mut(&id) else {
            return;
        };
        let Some(partial) = slot.content.take_if(|p| p.is_complete()) else {
            return;
        };
        if let Some((_, size)) = &partial.header {
            if partial.received > *size {
                let text = format!("body of {} octets, header said {size}", partial.received);
                return self.violation(ReplyCode::FrameError, text);
            }
        }
        let (method, content) = partial.finish();
        match method {
            Method::BasicDeliver(deliver) => {
                let Some((tag, sink)) = slot.consumers.get_key_value(deliver.consumer_tag.as_str())
                else {
                    tracing::warn!(tag = %deliver.consumer_tag, "delivery for an unknown consumer dropped");
                    return;
                };
                let Some(acker) = acker(&self.weak, &self.shared, slot, sink, deliver.delivery_tag)
                else {
                    return;
                };
                let delivery = Delivery {
                    acker,
                    delivery_tag: deliver.delivery_tag,
                    redelivered: deliver.redelivered,
                    exchange: deliver.exchange.into(),
                    routing_key: deliver.routing_key.into(),
                    consumer_tag: tag.clone(),
                    properties: content.properties,
                    body: content.body,
                };
                hand_over(&mut self.handed, sink, delivery);
            }
            Method::BasicReturn(ret) => {
                let message = ReturnedMessage {
                    reply_code: ret.reply_code,
                    reply_text: ret.reply_text,
                    exchange: ret.exchange,
                    routing_key: ret.routing_key,
                    properties: Arc::unwrap_or_clone(content.properties),
                    body: content.body,
                };
                let delivered = slot
                    .shared
                    .returns_subscriber()
                    .is_some_and(|tx| tx.send(message).is_ok());
                if !delivered {
                    tracing::warn!(
                        channel = id,
                        "basic.return with nobody subscribed to returned messages; dropped"
                    );
                }
            }
            get_ok @ Method::BasicGetOk(_) => self.on_reply(id, get_ok, Some(content)),
            other => {
                let text = format!("content after {}", other.name());
                self.violation(ReplyCode::UnexpectedFrame, text);
            }
        }
    }

    fn on_channel_method(&mut self, id: u16, method: Method) {
        let Some(slot) = self.channels.get_mut(&id) else {
            return;
        };
        match method {
            Method::ChannelClose(close) => {
                // Answer first, so the number is free again before anything reuses it.
                encode_method(
                    &mut self.outbox,
                    id,
                    &Method::ChannelCloseOk(ChannelCloseOk),
                );
                tracing::debug!(channel = id, code = close.reply_code, text = %close.reply_text, "channel closed by the server");
                if let Some(slot) = self.channels.remove(&id) {
                    let reason = Error::ChannelClosed {
                        code: close.reply_code,
                        text: close.reply_text,
                    };
                    slot.fail(reason, false);
                }
            }
            Method::ChannelFlow(flow) => {
                let ok = Method::ChannelFlowOk(ChannelFlowOk {
                    active: flow.active,
                });
                encode_method(&mut self.outbox, id, &ok);
            }
            Method::BasicAck(ack) => match &mut slot.confirms {
                Some(confirms) => confirms.settle(ack.delivery_tag, ack.multiple, true),
                None => self.violation(
                    ReplyCode::CommandInvalid,
                    "basic.ack on a channel not in confirm mode".into(),
                ),
            },
            Method::BasicNack(nack) => match &mut slot.confirms {
                Some(confirms) => confirms.settle(nack.delivery_tag, nack.multiple, false),
                None => self.violation(
                    ReplyCode::CommandInvalid,
                    "basic.nack on a channel not in confirm mode".into(),
                ),
            },
            Method::BasicCancel(cancel) => {
                // consumer_cancel_notify: the queue went away under the consumer.
                tracing::info!(tag = %cancel.consumer_tag, "consumer cancelled by the server");
                slot.consumers.remove(cancel.consumer_tag.as_str());
                if !cancel.no_wait {
                    let ok = Method::BasicCancelOk(BasicCancelOk {
                        consumer_tag: cancel.consumer_tag,
                    });
                    encode_method(&mut self.outbox, id, &ok);
                }
            }
            reply => self.on_reply(id, reply, None),
        }
    }

    /// Matches a reply to the channel's oldest pending call.
    fn on_reply(&mut self, id: u16, method: Method, content: Option<Content>) {
        let Some(slot) = self.channels.get_mut(&id) else {
            return;
        };
        let matches = slot
            .pending
            .front()
            .is_some_and(|p| is_reply(p.request, &method));
        if !matches {
            let text = format!("unexpected {} on channel {id}", method.name());
            return self.violation(ReplyCode::UnexpectedFrame, text);
        }
        let Some(pending) = slot.pending.pop_front() else {
            return;
        };
        match pending.reply {
            PendingReply::Open(reply) => {
                slot.state = SlotState::Open;
                let _ = reply.send(Ok(slot.shared.clone()));
            }
            PendingReply::Call { reply, consumer } => {
                match (&method, consumer) {
                    (Method::BasicConsumeOk(ok), Some(sink)) => {
                        slot.consumers.insert(ok.consumer_tag.as_str().into(), sink);
                    }
                    (Method::BasicCancelOk(ok), _) => {
                        slot.consumers.remove(ok.consumer_tag.as_str());
                    }
                    _ => {}
                }
                let closed = matches!(method, Method::ChannelCloseOk(_));
                let _ = reply.send(Ok(Reply { method, content }));
                if closed {
                    if let Some(slot) = self.channels.remove(&id) {
                        let reason = Error::ChannelClosed {
                            code: ReplyCode::Success.code(),
                            text: "channel closed by the client".into(),
                        };
                        slot.fail(reason, true);
                    }
                }
            }
        }
    }
}

/// Whether `reply` answers a request with these class and method ids.
fn is_reply((class, request): (u16, u16), reply: &Method) -> bool {
    let got = (reply.class_id(), reply.method_id());
    match (class, request) {
        // basic.get → get-ok | get-empty
        (60, 70) => got == (60, 71) || got == (60, 72),
        // exchange.unbind (40) → unbind-ok (51), RabbitMQ's numbering
        (40, 40) => got == (40, 51),
        _ => got == (class, request + 1),
    }
}

/// The reason everything ends with when this client closed the connection.
fn client_close_reason() -> Error {
    Error::ConnectionClosed {
        code: ReplyCode::Success.code(),
        text: "connection closed by the client".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minimq_protocol::{
        BasicGetEmpty, BasicGetOk, ExchangeUnbindOk, QueueDeclareOk, QueueDeleteOk,
    };

    #[test]
    fn replies_match_their_requests() {
        let declare_ok = Method::QueueDeclareOk(QueueDeclareOk::default());
        assert!(is_reply((50, 10), &declare_ok));
        assert!(!is_reply((50, 40), &declare_ok));
        assert!(is_reply(
            (50, 40),
            &Method::QueueDeleteOk(QueueDeleteOk::default())
        ));
        assert!(is_reply(
            (60, 70),
            &Method::BasicGetOk(BasicGetOk::default())
        ));
        assert!(is_reply((60, 70), &Method::BasicGetEmpty(BasicGetEmpty)));
        assert!(is_reply(
            (40, 40),
            &Method::ExchangeUnbindOk(ExchangeUnbindOk)
        ));
    }
}
