//! The whole-delivery fast path: deliveries taken straight from the read buffer, no
//! frame decoded ([`IoLoop::take_deliveries`], [`DeliverArgs`]), and what both delivery
//! paths share: a delivery's [`acker`] and its [`hand_over`] to the consumer.

use std::sync::Arc;

use minimq_protocol::frame::{peek_content, peek_shortstr};
use tokio::sync::mpsc;

use crate::acker::Acker;
use crate::handle::{ChannelCore, ConnHandle, ConnectionShared, ConsumerSink, Request};
use crate::message::Delivery;

use super::slot::ChannelSlot;
use super::{IoLoop, State, HAND_OFF};

impl IoLoop {
    /// Takes whole deliveries straight from the read buffer while consumers may be handed
    /// more: a `basic.deliver`, its header and its one body frame (`peek_content`), no
    /// frame decoded, the body a slice of the buffer, and exchange, routing key, consumer
    /// tag and properties shared with the previous delivery when their octets are the
    /// same. Anything else (another frame, a body in several frames, an unknown consumer,
    /// bad octets) stays in the buffer for the frame decoder, which handles it and its
    /// errors as usual.
    pub(super) fn take_deliveries(&mut self) {
        if !matches!(self.state, State::Open) || self.reader_done {
            return;
        }
        let frame_max = self.reader.decoder().frame_max();
        while self.handed < HAND_OFF {
            let buf = self.reader.read_buffer();
            let Some(raw) = peek_content(buf, frame_max) else {
                return;
            };
            if (raw.class_id, raw.method_id) != (60, 60) {
                return;
            }
            let Some(args) = DeliverArgs::parse(&buf[raw.arguments.clone()]) else {
                return;
            };
            let Some(slot) = self.channels.get_mut(&raw.channel) else {
                return;
            };
            if slot.content.is_some() {
                return;
            }
            let Some((tag, sink)) = std::str::from_utf8(args.consumer_tag)
                .ok()
                .and_then(|tag| slot.consumers.get_key_value(tag))
            else {
                return;
            };
            let Some(route) = slot.last.route(args.exchange, args.routing_key) else {
                return;
            };
            let Some(properties) = slot.last.properties_from(&buf[raw.properties.clone()]) else {
                return;
            };
            let (delivery_tag, redelivered) = (args.delivery_tag, args.redelivered);
            let Some(acker) = acker(&self.weak, &self.shared, slot, sink, delivery_tag) else {
                return;
            };
            let frames = self.reader.read_buffer_mut().split_to(raw.len).freeze();
            let delivery = Delivery {
                acker,
                delivery_tag,
                redelivered,
                exchange: route.0,
                routing_key: route.1,
                consumer_tag: tag.clone(),
                properties,
                body: frames.slice(raw.body),
            };
            hand_over(&mut self.handed, sink, delivery);
        }
    }
}

/// The acker of a delivery to `sink` on `slot`; `None` when every handle of the
/// connection is gone (nobody could ack it).
pub(super) fn acker(
    weak: &mpsc::WeakSender<Request>,
    conn: &Arc<ConnectionShared>,
    slot: &ChannelSlot,
    sink: &ConsumerSink,
    delivery_tag: u64,
) -> Option<Acker> {
    if sink.no_ack {
        return Some(Acker::no_ack(delivery_tag));
    }
    let handle = ConnHandle {
        tx: weak.upgrade()?,
        shared: conn.clone(),
    };
    Some(Acker::new(
        ChannelCore::new(slot.shared.clone(), handle),
        delivery_tag,
    ))
}

/// Hands `delivery` to its consumer, counting it towards the consumers' next turn.
pub(super) fn hand_over(handed: &mut usize, sink: &ConsumerSink, delivery: Delivery) {
    *handed += 1;
    if sink.tx.send(Ok(delivery)).is_err() {
        tracing::debug!("delivery for a dropped consumer discarded");
    }
}

/// The arguments of a `basic.deliver`, as slices of its frame.
struct DeliverArgs<'a> {
    consumer_tag: &'a [u8],
    delivery_tag: u64,
    redelivered: bool,
    exchange: &'a [u8],
    routing_key: &'a [u8],
}

impl<'a> DeliverArgs<'a> {
    /// Parses exactly `args` (what follows class and method id), or `None`.
    fn parse(args: &'a [u8]) -> Option<DeliverArgs<'a>> {
        let mut at = 0;
        let consumer_tag = peek_shortstr(args, &mut at)?;
        let delivery_tag = u64::from_be_bytes(args.get(at..at + 8)?.try_into().ok()?);
        let redelivered = args.get(at + 8)? & 1 != 0;
        at += 9;
        let exchange = peek_shortstr(args, &mut at)?;
        let routing_key = peek_shortstr(args, &mut at)?;
        (at == args.len()).then_some(DeliverArgs {
            consumer_tag,
            delivery_tag,
            redelivered,
            exchange,
            routing_key,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use minimq_protocol::Method;

    #[test]
    fn deliver_arguments_parse_as_the_method_decoder_reads_them() {
        use minimq_protocol::BasicDeliver;
        for (tag, redelivered, exchange, rk) in [
            ("ctag", false, "", "q"),
            ("amq.ctag-1", true, "ex", ""),
            ("", false, "x", &*"k".repeat(255)),
        ] {
            let method = Method::BasicDeliver(BasicDeliver {
                consumer_tag: tag.into(),
                delivery_tag: 42,
                redelivered,
                exchange: exchange.into(),
                routing_key: rk.into(),
            });
            let mut buf = BytesMut::new();
            method.encode(&mut buf);
            let args = DeliverArgs::parse(&buf[4..]).expect("parses");
            assert_eq!(args.consumer_tag, tag.as_bytes());
            assert_eq!((args.delivery_tag, args.redelivered), (42, redelivered));
            assert_eq!(
                (args.exchange, args.routing_key),
                (exchange.as_bytes(), rk.as_bytes())
            );
            // Short or long by one octet: not a basic.deliver.
            assert!(DeliverArgs::parse(&buf[4..buf.len() - 1]).is_none());
            buf.extend_from_slice(&[0]);
            assert!(DeliverArgs::parse(&buf[4..]).is_none());
        }
    }
}
