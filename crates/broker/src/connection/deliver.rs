//! What queues send a connection: deliveries, tagged by their channel and encoded into
//! the out buffer (a large body written from the message's own bytes), confirm answers,
//! and consumers a queue cancelled. A delivery whose consumer or channel is gone goes
//! back to its queue.

use minimq_protocol::frame::{
    body_frame_start, encode_body_frames, encode_deliver_head, max_body_payload, FRAME_END,
};
use minimq_protocol::{BasicProperties, FieldValue};

use super::Conn;
use crate::channel::{AckDeadline, Outstanding};
use crate::queue::{Delivery, QueueCommand, QueueEvent};

impl Conn {
    /// Handles a queue event.
    pub(super) fn on_event(&mut self, ev: QueueEvent) {
        match ev {
            QueueEvent::Deliver(d) => self.deliver(d),
            QueueEvent::CloseForced(reason) => self.forced_close = Some(reason),
            QueueEvent::Confirm { channel, seq, ok } => {
                if let Some(c) = self.channels.get_mut(&channel) {
                    c.answer(seq, ok);
                }
                if !self.confirms_due.contains(&channel) {
                    self.confirms_due.push(channel);
                }
            }
            QueueEvent::Cancelled {
                channel,
                consumer_tag,
                consumer_id,
            } => {
                let Some(ch) = self.channels.get_mut(&channel) else {
                    return;
                };
                // Forgotten whether or not the client hears of it.
                let forgotten = ch.consumer_cancelled(&consumer_tag, consumer_id);
                if forgotten && self.cancel_notify && ch.is_open() {
                    self.send_method(
                        channel,
                        minimq_protocol::BasicCancel {
                            consumer_tag: consumer_tag.to_string(),
                            no_wait: true,
                        }
                        .into(),
                    );
                }
            }
        }
    }

    /// Writes a delivery from a queue, or hands it back if its consumer is gone.
    pub(super) fn deliver(&mut self, d: Delivery) {
        // Counted by the queue on its way here; from the out buffer on, the writer counts
        // what waits for the socket. Taken off once per batch of events (`run`).
        self.room_taken += d.message.body.len() + crate::queue::DELIVERY_OVERHEAD;
        let frame_max = self.frame_max;
        let default = self.state.config.consumer_timeout;
        let Delivery {
            channel,
            consumer_id,
            mut queue,
            msg_id,
            message: m,
            redelivered,
            no_ack,
            charged,
        } = d;
        let clock = &mut self.clock;
        let mut armed = false;
        // The consumer's tag and queue come from the channel's own record of it.
        let target = self.channels.get_mut(&channel).and_then(|c| {
            c.deliver_to(consumer_id, no_ack, default, |timeout| {
                // The clock read once per batch of queue events, not per delivery.
                let deadline = timeout.map(|t| AckDeadline::after(clock.batch_ms(), t));
                armed = deadline.is_some();
                Some(Outstanding {
                    queue: queue.take()?,
                    msg_id,
                    charged,
                    deadline,
                })
            })
        });
        let Some(target) = target else {
            if let Some(queue) = queue {
                queue.send_now(QueueCommand::Settle {
                    ids: vec![msg_id],
                    requeue: true,
                    rejected: false,
                });
            }
            if charged {
                if let Some(c) = self.channels.get(&channel) {
                    c.release_credit(1);
                }
            }
            return;
        };
        self.deadlines_armed |= armed;
        // One relaxed load when the vhost does not trace.
        let traced = self.vhost.is_tracing().then(|| target.queue.name().clone());
        encode_deliver_head(
            &mut self.out,
            channel,
            target.consumer_tag,
            target.delivery_tag,
            redelivered,
            &m.exchange,
            &m.routing_key,
            &fitting_properties(&m.properties, frame_max),
            m.body.len() as u64,
        );
        if let Some(queue) = traced {
            self.trace_delivery(channel, &queue, &m, redelivered);
        }
        if m.body.len() < ZERO_COPY_BODY {
            encode_body_frames(&mut self.out, channel, &m.body, frame_max);
            return;
        }
        // A large body goes to the socket as it is, between the frame headers and ends.
        let max = max_body_payload(frame_max);
        let mut at = 0;
        while at < m.body.len() {
            let end = m.body.len().min(at.saturating_add(max));
            body_frame_start(&mut self.out, channel, end - at);
            self.send_bytes(m.body.slice(at..end));
            self.out.extend_from_slice(&[FRAME_END]);
            at = end;
        }
    }
}

/// Bodies from this size on are written to the socket from the message's own `Bytes`
/// instead of being copied into the connection's output buffer.
const ZERO_COPY_BODY: usize = 16 * 1024;

/// A content header frame cannot be split. Headers the broker added (`x-delivery-count` on a
/// redelivery, a growing `x-death` on a dead letter) can push a header that fit the
/// publisher's frame_max over a consumer's: drop what the broker added, until it fits.
pub(super) fn fitting_properties(
    p: &BasicProperties,
    frame_max: u32,
) -> std::borrow::Cow<'_, BasicProperties> {
    use std::borrow::Cow;
    // Frame header and end (8), class, weight and body size (12).
    let limit = (frame_max as usize).saturating_sub(20);
    let size = |p: &BasicProperties| {
        let mut scratch = bytes::BytesMut::new();
        p.encode(&mut scratch);
        scratch.len()
    };
    // Only what the broker added is dropped: without it there is nothing to fit, and no
    // need to encode the properties an extra time to measure them (every delivery).
    let added = p
        .headers
        .as_ref()
        .is_some_and(|h| h.get("x-delivery-count").is_some() || h.get("x-death").is_some());
    if frame_max == 0 || !added || size(p) <= limit {
        return Cow::Borrowed(p);
    }
    let mut fitted = p.clone();
    if let Some(h) = fitted.headers.as_mut() {
        h.remove("x-delivery-count");
    }
    if size(&fitted) > limit {
        if let Some(h) = fitted.headers.as_mut() {
            if let Some(FieldValue::Array(mut deaths)) = h.remove("x-death") {
                deaths.truncate(1);
                h.insert("x-death", FieldValue::Array(deaths));
            }
        }
    }
    Cow::Owned(fitted)
}
