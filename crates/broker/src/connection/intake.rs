//! The read side of a connection: what one wake-up of the reader brought, taken by the
//! fast path where it can be (whole publishes and plain acks straight from the read
//! buffer, publish frames and plain acks without the async frame path) and by the frame
//! decoder and [`Conn::on_frame`] otherwise. [`Conn::intake`] decides which, and keeps
//! the order: see its doc.

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use minimq_protocol::frame::{peek_ack, peek_content, peek_shortstr, ACK_FRAME_LEN};
use minimq_protocol::{CodecError, ConnectionCloseOk, Frame, Method, ReplyCode};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{decode_error, Conn, Flow, Reader};
use crate::channel::content::{owns_copy, Published};
use crate::channel::Channel;
use crate::error::AmqpError;
use crate::queue::QueueEvent;

/// Frames handled per wake-up of the reader, at most: a read's publishes go to each queue
/// as one command, yet a client that always has more to send yields to the rest.
const READ_BATCH: usize = 256;

/// What [`Conn::on_frame_fast`] did with a frame.
enum Fast {
    /// Handled.
    Done,
    /// Handled, and it failed on this channel with this error.
    Failed(u16, AmqpError),
    /// Not one for the fast path: for [`Conn::on_read`].
    Slow(Option<Result<Frame, CodecError>>),
}

impl Conn {
    /// Handles what one wake-up of the reader brought: `first`, the decoder's item that
    /// woke it, then every frame already read (up to [`READ_BATCH`]) before it waits on
    /// the socket again, so a read's publishes reach each queue as one command and its
    /// plain acks likewise.
    ///
    /// Each item goes one of two ways. Whole publishes and plain acks still in the read
    /// buffer are taken from its octets ([`Conn::take_raw`]); a decoded publish frame or
    /// plain ack is taken synchronously ([`Conn::on_frame_fast`]). Either way the publish
    /// or ack is not sent but *held* (`self.held`), to go to its queue with the rest of
    /// the read. Everything else — any other frame, a decode error, the end of the
    /// stream — goes the slow way ([`Conn::on_read`]); a fast-path frame that failed
    /// closes its channel or the connection ([`Conn::on_frame_error`]).
    ///
    /// The ordering rule, enforced here and nowhere else: **held publishes and acks are
    /// sent before anything else is handled**, and at the latest when the read is done.
    /// So whatever else the connection does with a queue (a `basic.get`, a purge, a
    /// nack, a consumer cancelled, a channel or the connection closed, a transaction
    /// committed) reaches the queue after the publishes and acks the client sent before
    /// it. Only the fast path holds; every slow handler sends at once, after this, so
    /// between two reads nothing is held.
    pub(super) async fn intake(
        &mut self,
        first: Option<Result<Frame, CodecError>>,
        reader: &mut Reader,
        events: &mut mpsc::UnboundedReceiver<QueueEvent>,
        close_deadline: &mut Instant,
    ) -> Flow {
        if !self.reading && !matches!(first, Some(Ok(Frame::Heartbeat))) {
            self.reading = true;
            take_read_buffer(reader);
        }
        let mut item = first;
        let mut handled = 0;
        loop {
            let step = match item {
                Some(Ok(frame)) if !self.closing => self.on_frame_fast(frame),
                other => Fast::Slow(other),
            };
            match step {
                Fast::Done => {}
                Fast::Failed(ch, e) => {
                    self.held.send().await;
                    Box::pin(self.on_frame_error(ch, e, close_deadline)).await;
                }
                Fast::Slow(item) => {
                    self.held.send().await;
                    if Box::pin(self.on_read(item, events, close_deadline)).await == Flow::Stop {
                        return Flow::Stop;
                    }
                }
            }
            handled += 1;
            if handled < READ_BATCH && !self.closing && !self.blocked {
                let (frames, failed) = self.take_raw(reader, READ_BATCH - handled);
                handled += frames;
                if let Some((ch, e)) = failed {
                    self.held.send().await;
                    Box::pin(self.on_frame_error(ch, e, close_deadline)).await;
                }
            }
            if handled >= READ_BATCH || self.closing || self.blocked {
                break;
            }
            match reader.next().now_or_never() {
                Some(next) => item = next,
                None => break,
            }
        }
        self.held.send().await;
        if handled >= READ_BATCH {
            // More is likely waiting. The tasks this read woke (a queue, a consumer's
            // connection) run on this worker once this task yields; a peer that always
            // has more to send would otherwise keep them waiting for tokio's budget to
            // run out.
            self.flush();
            tokio::task::yield_now().await;
        }
        Flow::Continue
    }

    /// The frames of a publish and plain acks — nearly all of a busy connection's
    /// traffic — handled without the async frame path (whose futures are large to set
    /// up for every frame). Other frames are handed back for [`Conn::on_read`].
    fn on_frame_fast(&mut self, frame: Frame) -> Fast {
        let channel = |ch: u16| self.channels.get(&ch);
        match frame {
            Frame::Method(ch, Method::BasicPublish(p))
                if !p.immediate && channel(ch).is_some_and(Channel::takes_publish) =>
            {
                self.channel(ch).start_publish(p);
                Fast::Done
            }
            Frame::Method(ch, Method::BasicAck(a))
                if channel(ch).is_some_and(Channel::takes_plain_ack) =>
            {
                match self.plain_ack(ch, a.delivery_tag, a.multiple) {
                    Ok(()) => Fast::Done,
                    Err(e) => Fast::Failed(ch, e.on(60, 80)),
                }
            }
            Frame::Header(ch, header) if ch != 0 && self.channels.contains_key(&ch) => {
                match self.on_header(ch, *header) {
                    Ok(()) => Fast::Done,
                    Err(e) => Fast::Failed(ch, content_error(e)),
                }
            }
            Frame::Body(ch, body) if ch != 0 && self.channels.contains_key(&ch) => {
                match self.on_body(ch, body) {
                    Ok(()) => Fast::Done,
                    Err(e) => Fast::Failed(ch, content_error(e)),
                }
            }
            other => Fast::Slow(Some(Ok(other))),
        }
    }

    /// Takes whole publishes and plain acks straight from the read buffer (see
    /// `peek_content` and `peek_ack`): a `basic.publish`, its header and its one body
    /// frame, decoding nothing the channel's previous publish already had (exchange,
    /// routing key and properties are compared as octets), then on through
    /// [`Conn::publish_message`] as any publish; an ack as [`Conn::plain_ack`]. Anything else —
    /// another frame, a body in several frames, a channel not ready for a publish, octets
    /// that do not parse — stays for the frame decoder and [`Conn::on_frame_fast`], which
    /// handle it and its errors as usual. Returns the frames taken (at least `most`
    /// once reached) and, if the last publish failed, its channel and error.
    fn take_raw(&mut self, reader: &mut Reader, most: usize) -> (usize, Option<(u16, AmqpError)>) {
        let frame_max = reader.decoder().frame_max();
        let max_size = self.state.config.max_message_size;
        let mut frames = 0;
        while frames < most && !self.closing {
            let buf = reader.read_buffer();
            if let Some((ch, tag, multiple)) = peek_ack(buf) {
                // A plain ack, as `on_frame_fast` takes it.
                if !self.channels.get(&ch).is_some_and(Channel::takes_plain_ack) {
                    break;
                }
                reader.read_buffer_mut().advance(ACK_FRAME_LEN);
                frames += 1;
                if let Err(e) = self.plain_ack(ch, tag, multiple) {
                    return (frames, Some((ch, e.on(60, 80))));
                }
                continue;
            }
            let Some(raw) = peek_content(buf, frame_max) else {
                break;
            };
            if (raw.class_id, raw.method_id) != (60, 40) || raw.body.len() as u64 > max_size {
                break;
            }
            let Some(args) = PublishArgs::parse(&buf[raw.arguments.clone()]) else {
                break;
            };
            let mandatory = args.mandatory;
            let Some((route, properties)) = self.channels.get_mut(&raw.channel).and_then(|c| {
                c.raw_publish(
                    args.exchange,
                    args.routing_key,
                    &buf[raw.properties.clone()],
                )
            }) else {
                break;
            };
            let body = if owns_copy(raw.body.len()) {
                let body = Bytes::copy_from_slice(&buf[raw.body.clone()]);
                reader.read_buffer_mut().advance(raw.len);
                body
            } else {
                let taken = reader.read_buffer_mut().split_to(raw.len).freeze();
                taken.slice(raw.body.clone())
            };
            frames += if raw.body.is_empty() { 2 } else { 3 };
            let published = Published {
                route,
                mandatory,
                properties,
                body,
            };
            if let Err(e) = self.publish_message(raw.channel, published) {
                return (frames, Some((raw.channel, e)));
            }
        }
        (frames, None)
    }

    /// Handles what the fast path did not take: a frame, a decode error or the end of
    /// the stream. [`Flow::Stop`] when the connection is done.
    async fn on_read(
        &mut self,
        item: Option<Result<Frame, CodecError>>,
        events: &mut mpsc::UnboundedReceiver<QueueEvent>,
        close_deadline: &mut Instant,
    ) -> Flow {
        match item {
            Some(Ok(frame)) => match self.on_frame(frame).await {
                Ok(Flow::Continue) => Flow::Continue,
                Ok(Flow::Stop) => {
                    // Before close-ok leaves: every message this connection held, or
                    // had in flight, is back in its queue.
                    self.hand_back_in_flight(events).await;
                    Flow::Stop
                }
                Err(e) => {
                    self.fail_connection(e, close_deadline).await;
                    Flow::Continue
                }
            },
            Some(Err(CodecError::Decode(e))) => {
                tracing::debug!(conn = self.id, error = %e, "undecodable frame");
                let err = decode_error(e);
                self.release_all().await;
                self.send_connection_close(&err);
                self.flush();
                Flow::Stop
            }
            Some(Err(CodecError::Io(_))) | None => {
                tracing::debug!(conn = self.id, "socket closed");
                Flow::Stop
            }
        }
    }

    /// Handles a frame the fast path did not take (or any frame while the connection
    /// closes); a connection error is returned for the caller to close with.
    async fn on_frame(&mut self, frame: Frame) -> Result<Flow, AmqpError> {
        if self.closing {
            return Ok(match frame {
                Frame::Method(0, Method::ConnectionCloseOk(_)) => Flow::Stop,
                Frame::Method(0, Method::ConnectionClose(_)) => {
                    self.send_method(0, ConnectionCloseOk.into());
                    Flow::Stop
                }
                _ => Flow::Continue,
            });
        }
        match frame {
            Frame::Heartbeat => Ok(Flow::Continue),
            Frame::Method(0, m) => self.on_connection_method(m).await,
            Frame::Method(ch, m) => {
                self.check_channel_id(ch)?;
                let (class_id, method_id) = (m.class_id(), m.method_id());
                match self.on_channel_frame(ch, m).await {
                    Ok(()) => Ok(Flow::Continue),
                    Err(e) => {
                        let e = e.on(class_id, method_id);
                        if e.is_hard() {
                            return Err(e);
                        }
                        self.fail_channel(ch, e).await;
                        Ok(Flow::Continue)
                    }
                }
            }
            Frame::Header(0, _) | Frame::Body(0, _) => Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                "expected method frame, got non method frame instead",
            )),
            Frame::Header(ch, header) => {
                self.check_channel_id(ch)?;
                match self.on_header(ch, *header).map_err(content_error) {
                    Ok(()) => Ok(Flow::Continue),
                    Err(e) if e.is_hard() => Err(e),
                    Err(e) => {
                        self.fail_channel(ch, e).await;
                        Ok(Flow::Continue)
                    }
                }
            }
            Frame::Body(ch, body) => {
                self.check_channel_id(ch)?;
                match self.on_body(ch, body).map_err(content_error) {
                    Ok(()) => Ok(Flow::Continue),
                    Err(e) if e.is_hard() => Err(e),
                    Err(e) => {
                        self.fail_channel(ch, e).await;
                        Ok(Flow::Continue)
                    }
                }
            }
        }
    }
}

/// The error of a content frame (header or body) as the client hears it: a channel
/// error names `basic.publish`, a connection error stays as it is.
fn content_error(e: AmqpError) -> AmqpError {
    if e.is_hard() {
        e
    } else {
        e.on(60, 40)
    }
}

/// The arguments of a `basic.publish`, as slices of its frame.
struct PublishArgs<'a> {
    exchange: &'a [u8],
    routing_key: &'a [u8],
    mandatory: bool,
}

impl<'a> PublishArgs<'a> {
    /// Parses exactly `args` (what follows class and method id); `None` for anything
    /// else, and for `immediate`, which the frame path refuses.
    fn parse(args: &'a [u8]) -> Option<PublishArgs<'a>> {
        let mut at = 2; // the reserved ticket
        let exchange = peek_shortstr(args, &mut at)?;
        let routing_key = peek_shortstr(args, &mut at)?;
        let bits = *args.get(at)?;
        (at + 1 == args.len() && bits & 2 == 0).then_some(PublishArgs {
            exchange,
            routing_key,
            mandatory: bits & 1 != 0,
        })
    }
}

/// Gives the connection its full-size read buffer, keeping what has arrived: from the
/// first frame after the handshake that is not a heartbeat. Until then it reads into
/// [`super::HANDSHAKE_READ_BUFFER`] octets, so an idle connection holds little.
fn take_read_buffer(reader: &mut Reader) {
    let buf = reader.read_buffer_mut();
    // A fresh buffer rather than `reserve`: message bodies are later split off this
    // buffer, and the buffers that replace it are sized after the one it started as.
    let mut full = BytesMut::with_capacity(super::READ_BUFFER.max(buf.len()));
    full.extend_from_slice(buf);
    *buf = full;
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use minimq_protocol::BasicPublish;

    #[test]
    fn publish_arguments_parse_as_the_method_decoder_reads_them() {
        for (exchange, rk, mandatory, immediate) in [
            ("", "q", false, false),
            ("amq.direct", "", true, false),
            ("x", &*"k".repeat(255), false, false),
            ("", "q", false, true),
            ("", "q", true, true),
        ] {
            let method = Method::BasicPublish(BasicPublish {
                exchange: exchange.into(),
                routing_key: rk.into(),
                mandatory,
                immediate,
            });
            let mut buf = BytesMut::new();
            method.encode(&mut buf);
            let parsed = PublishArgs::parse(&buf[4..]);
            if immediate {
                // Refused by the frame path, with its error.
                assert!(parsed.is_none());
                continue;
            }
            let args = parsed.expect("parses");
            assert_eq!(
                (args.exchange, args.routing_key),
                (exchange.as_bytes(), rk.as_bytes())
            );
            assert_eq!(args.mandatory, mandatory);
            // Short or long by one octet: not a basic.publish.
            assert!(PublishArgs::parse(&buf[4..buf.len() - 1]).is_none());
            buf.extend_from_slice(&[0]);
            assert!(PublishArgs::parse(&buf[4..]).is_none());
        }
    }
}
