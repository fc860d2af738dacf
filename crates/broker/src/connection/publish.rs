//! `basic.publish` and its content: the frames assembled by the channel
//! ([`crate::channel::content`]) or a whole publish taken from the read buffer by the
//! intake, then routed here, checked, and held for its queues (the intake sends it with
//! the rest of the read), with its confirm arranged and its `basic.return` sent when no
//! queue takes a mandatory one.

use std::sync::Arc;

use bytes::Bytes;
use minimq_protocol::frame::encode_content;
use minimq_protocol::{BasicProperties, BasicReturn, ContentHeader, Method, ReplyCode};

use super::Conn;
use crate::channel::content::{no_method_frame, Published};
use crate::channel::tx::TxPublish;
use crate::error::{AmqpError, AmqpResult};
use crate::message::Message;
use crate::queue::{ConfirmTicket, Publish, QueueHandle};
use crate::server::BrokerState;

impl Conn {
    /// A content header arrived on `ch`, an open channel's or not.
    pub(super) fn on_header(&mut self, ch: u16, header: ContentHeader) -> AmqpResult<()> {
        let max = self.state.config.max_message_size;
        let Some(channel) = self.channels.get_mut(&ch) else {
            // No channel: RabbitMQ's answer, as for a channel with no publish.
            return Err(no_method_frame());
        };
        match channel.on_header(header, max)? {
            Some(published) => self.publish_message(ch, published),
            None => Ok(()),
        }
    }

    /// A body frame arrived on `ch`, an open channel's or not.
    pub(super) fn on_body(&mut self, ch: u16, body: Bytes) -> AmqpResult<()> {
        let Some(channel) = self.channels.get_mut(&ch) else {
            return Err(no_method_frame());
        };
        match channel.on_body(body)? {
            Some(published) => self.publish_message(ch, published),
            None => Ok(()),
        }
    }

    /// Routes a whole message published on `ch` (assembled from its frames, or taken
    /// whole from the read buffer), holds it for its queues (see [`Conn::intake`]), and
    /// arranges its confirm and its return. In a transaction it is held until commit
    /// instead.
    pub(super) fn publish_message(&mut self, ch: u16, published: Published) -> AmqpResult<()> {
        let Published {
            route: (exchange, routing_key),
            mandatory,
            properties,
            body,
        } = published;
        self.authorize_publish(&exchange)
            .map_err(|e| e.on(60, 40))?;
        // One relaxed load per publish: blocked once this read is handled.
        if !self.blocked && self.state.alarms.any() {
            self.block();
        }
        if let Some(uid) = properties.user_id.as_deref() {
            if uid != self.user {
                return Err(AmqpError::precondition(format!(
                    "user_id property set to '{uid}' but authenticated user was '{}'",
                    self.user
                ))
                .on(60, 40));
            }
        }
        if let Some(expiration) = properties.expiration.as_deref() {
            crate::queue::args::parse_expiration(expiration).map_err(|e| e.on(60, 40))?;
        }
        let mut queues = Vec::new();
        if exchange.is_empty() {
            let vhost = &self.vhost;
            // The channel is open (see `Conn::channel`); `self`'s fields are borrowed apart.
            #[allow(clippy::expect_used)]
            let channel = self
                .channels
                .get_mut(&ch)
                .expect("channel checked open by the caller");
            queues.extend(channel.route_default(vhost, &routing_key));
        } else {
            self.vhost
                .route(
                    &exchange,
                    &routing_key,
                    properties.headers.as_ref(),
                    &mut queues,
                )
                .map_err(|e| e.on(60, 40))?;
        }
        refuse_if_store_failed(&self.state, &queues, &properties).map_err(|e| e.on(60, 40))?;
        let message = Arc::new(Message::new(exchange, routing_key, properties, body));
        // One relaxed load when the vhost does not trace.
        if self.vhost.is_tracing() {
            self.trace_publish(ch, &message, &queues);
        }
        let channel = self.channel(ch);
        if let Some(tx) = channel.tx_mut() {
            // Routed now, delivered (or returned) at commit.
            let held = TxPublish {
                message,
                queues,
                mandatory,
            };
            return tx.hold_publish(held).map_err(|e| e.on(60, 40));
        }
        let seq = channel.confirm_seq(queues.len() as u32);
        if queues.is_empty() && mandatory {
            self.send_return(ch, &message);
        }
        for q in queues {
            let confirm = seq.map(|seq| ConfirmTicket {
                sink: self.events.clone(),
                channel: ch,
                seq,
            });
            self.held.publish(
                q,
                Publish {
                    message: message.clone(),
                    confirm,
                },
            );
        }
        if seq.is_some() {
            self.emit_confirms(ch);
        }
        Ok(())
    }

    /// Sends `basic.return` of an unroutable mandatory message.
    pub(super) fn send_return(&mut self, ch: u16, message: &Message) {
        let ret = Method::BasicReturn(BasicReturn {
            reply_code: ReplyCode::NoRoute.code(),
            reply_text: "NO_ROUTE".into(),
            exchange: message.exchange.to_string(),
            routing_key: message.routing_key.to_string(),
        });
        encode_content(
            &mut self.out,
            ch,
            &ret,
            &message.properties,
            &message.body,
            self.frame_max,
        );
    }
}

/// Once the store has failed, a message it would have to write is refused: a persistent
/// one for a durable queue, and any for a quorum queue, which stores transient messages
/// too. The management API's publish answers by the same rule.
pub(crate) fn refuse_if_store_failed(
    state: &BrokerState,
    queues: &[QueueHandle],
    properties: &BasicProperties,
) -> Result<(), AmqpError> {
    let store_failed = state.store.as_ref().is_some_and(|s| s.is_poisoned());
    if store_failed
        && queues.iter().any(|q| {
            q.info().store_id.is_some()
                && (properties.is_persistent()
                    || q.info().args.queue_type == crate::queue::QueueType::Quorum)
        })
    {
        return Err(AmqpError::precondition(
            "the message store failed (see the broker log); persistent messages to durable queues are refused",
        ));
    }
    Ok(())
}
