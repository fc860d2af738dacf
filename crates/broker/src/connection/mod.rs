//! One task per client connection: it reads frames, runs the handshake, keeps every
//! channel's state, turns queue events into deliveries and confirms, and hands encoded
//! frames to the socket's write side ([`writer`]).
//!
//! The task never blocks on the socket. It appends outgoing frames to `out` while it works
//! through everything that is ready (frames and queue events), then hands the whole batch
//! over at once: written at once if the socket takes it, else by the writer task.
//!
//! Errors: a channel error closes that channel (`channel.close`), a connection error
//! sends `connection.close` and waits briefly for `close-ok`. Either way every unacked
//! message of the channels involved goes back to its queue.

mod handshake;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use minimq_protocol::frame::{
    encode_method, peek_ack, peek_content, peek_shortstr, ACK_FRAME_LEN, PROTOCOL_HEADER,
};
use minimq_protocol::{
    ChannelClose, ChannelCloseOk, CodecError, ConnectionClose, ConnectionCloseOk, DecodeError,
    Frame, FrameCodec, Method, ReplyCode,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::channel::{owns_copy, Channel, ChannelStatus};
use crate::error::AmqpError;
use crate::queue::{EventSink, Publish, QueueCommand, QueueEvent, QueueHandle};
use crate::server::BrokerState;
use crate::store::idhash::IdMap;

pub(crate) type Reader = FramedRead<OwnedReadHalf, FrameCodec>;

/// How long a connection waits for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Flush the out buffer to the writer once it holds this much: large enough that a burst
/// of deliveries is a few big writes, small enough that the first of them leaves early.
const FLUSH_AT: usize = 256 * 1024;
/// Most queue events handled between two looks at the socket: deliveries are written in
/// batches, yet a flood of them does not delay reading the client's acks.
const EVENT_BATCH: usize = 256;
/// Frames handled per wake-up of the reader, at most: a read's publishes go to each queue
/// as one command, yet a client that always has more to send yields to the rest.
const READ_BATCH: usize = 256;

/// What the frame loop does next.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Stop,
}

/// The state of one connection, owned by its task.
pub struct Conn {
    pub(crate) state: Arc<BrokerState>,
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) user: String,
    /// The broker's end of the socket.
    pub(crate) local: SocketAddr,
    /// From `connection.start-ok`, for the management API.
    pub(crate) client_properties: minimq_protocol::FieldTable,
    pub(crate) auth_mechanism: String,
    /// This connection's entry in the registry, once open.
    pub(crate) info: Option<Arc<crate::registry::ConnectionInfo>>,
    pub(crate) out: BytesMut,
    writer: writer::Writer,
    pub(crate) events: EventSink,
    pub(crate) frame_max: u32,
    pub(crate) channel_max: u16,
    pub(crate) heartbeat: u16,
    /// Open channels (a fast hash: looked up for every frame and every delivery).
    pub(crate) channels: IdMap<u16, Channel>,
    pub(crate) exclusive_queues: Vec<QueueHandle>,
    pub(crate) cancel_notify: bool,
    pub(crate) auth_failure_close: bool,
    closing: bool,
    /// Queues told that this connection's channels closed (see `hand_back_in_flight`).
    released: Vec<QueueHandle>,
    /// The client sent `connection.close` and was answered: it closes the socket.
    client_closed: bool,
    last_sent: Instant,
    /// Channels whose publisher confirms were answered during the current batch of queue
    /// events: their `basic.ack`s go out once, folded, when the batch is done.
    confirms_due: Vec<u16>,
    /// Plain acks of the current read, by queue, not yet sent (see [`Conn::hold_ack`]).
    /// Sent before anything else this connection does with a queue.
    pending_acks: Vec<(QueueHandle, Vec<u64>)>,
    /// Publishes of the current read, by queue, not yet sent (see
    /// [`Conn::hold_publish`]).
    pending_publishes: Vec<(QueueHandle, Vec<Publish>)>,
    /// Channels whose transaction failed to commit (a queue refused a publish), found
    /// while answering confirms; each is closed once the batch is done.
    pub(crate) tx_failed: Vec<u16>,
}

/// What [`Conn::on_frame_fast`] did with a frame.
enum Fast {
    /// Handled.
    Done,
    /// Handled, and it failed on this channel with this error.
    Failed(u16, AmqpError),
    /// Not one for the fast path: for [`Conn::on_frame`].
    Slow(Frame),
}

/// The connection error for bytes that do not decode, with RabbitMQ's text where the
/// codec's error carries what that text needs.
pub(crate) fn decode_error(e: DecodeError) -> AmqpError {
    match e {
        DecodeError::InvalidUtf8 => {
            AmqpError::new(ReplyCode::FrameError, "Malformed UTF-8 in shortstr")
        }
        // The codec is given frame_max + 8 (see the handshake): `size` counts the 8
        // octets of framing, `frame_max` 8 more than was negotiated.
        DecodeError::FrameTooLarge { size, frame_max } => AmqpError::new(
            ReplyCode::FrameError,
            format!(
                "{{frame_too_large,{},{}}}",
                size.saturating_sub(8),
                frame_max.saturating_sub(16)
            ),
        ),
        other => AmqpError::new(other.reply_code(), other),
    }
}

/// Serves one accepted socket until it closes.
pub async fn serve(mut socket: TcpStream, peer: SocketAddr, state: Arc<BrokerState>) {
    let timeout = state.config.handshake_timeout;
    let mut header = [0u8; 8];
    match tokio::time::timeout(timeout, socket.read_exact(&mut header)).await {
        // RabbitMQ also takes the AMQP 0-9 header (`AMQP 1 1 0 9`) as 0-9-1.
        Ok(Ok(_)) if header == PROTOCOL_HEADER || header == *b"AMQP\x01\x01\x00\x09" => {}
        Ok(Ok(_)) => {
            tracing::debug!(%peer, ?header, "bad protocol header");
            let _ = socket.write_all(&PROTOCOL_HEADER).await;
            let _ = socket.shutdown().await;
            return;
        }
        _ => return,
    }
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (read_half, write_half) = socket.into_split();
    let (writer, writer_task) = writer::Writer::new(write_half);
    let writer_task = tokio::spawn(writer_task);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut reader = FramedRead::new(read_half, FrameCodec::new(state.config.frame_max));
    let mut conn = Conn {
        id: state.next_conn_id(),
        state,
        peer,
        user: String::new(),
        local,
        client_properties: Default::default(),
        auth_mechanism: String::new(),
        info: None,
        out: BytesMut::with_capacity(64 * 1024),
        writer,
        events: events_tx,
        frame_max: 0,
        channel_max: 0,
        heartbeat: 0,
        channels: IdMap::default(),
        exclusive_queues: Vec::new(),
        cancel_notify: false,
        auth_failure_close: false,
        closing: false,
        released: Vec::new(),
        client_closed: false,
        last_sent: Instant::now(),
        confirms_due: Vec::new(),
        pending_acks: Vec::new(),
        pending_publishes: Vec::new(),
        tx_failed: Vec::new(),
    };
    // A shutdown does not wait for a client that is still in the handshake.
    let shutdown = conn.state.shutdown.clone();
    let handshake = tokio::select! {
        r = tokio::time::timeout(timeout, handshake::run(&mut conn, &mut reader)) => r,
        _ = shutdown.cancelled() => Ok(Ok(handshake::Outcome::Closed)),
    };
    match handshake {
        Ok(Ok(handshake::Outcome::Open)) => {
            tracing::debug!(%peer, conn = conn.id, user = %conn.user, "connection open");
            conn.run(&mut reader, &mut events_rx).await;
            if conn.client_closed {
                // After `close-ok` it is the client's turn to close the socket (as with
                // RabbitMQ); closing it first can make the client report an abort.
                conn.await_client_eof(&mut reader).await;
            }
        }
        Ok(Ok(handshake::Outcome::Closed)) => {}
        Ok(Err(e)) => {
            conn.send_connection_close(&e);
            conn.flush();
            conn.await_close_ok(&mut reader).await;
        }
        Err(_) => tracing::debug!(%peer, "handshake timed out"),
    }
    conn.cleanup().await;
    conn.hand_back_in_flight(&mut events_rx).await;
    conn.unregister();
    drop(conn);
    finish_writes(writer_task, reader.get_ref().as_ref()).await;
}

/// Lets the writer task send what is left for at most [`CLOSE_TIMEOUT`], so a client
/// that stopped reading holds neither its connection nor a shutdown open. Past it, the
/// socket is reset (`SO_LINGER` 0, as RabbitMQ closes sockets) and what the client did not
/// read is discarded: the messages in it were handed back to their queues already.
async fn finish_writes(mut writer_task: tokio::task::JoinHandle<()>, socket: &TcpStream) {
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer_task)
        .await
        .is_err()
    {
        tracing::debug!("client not reading: connection reset");
        // Linger 0 makes the close an immediate reset; it cannot block.
        let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
        writer_task.abort();
        let _ = writer_task.await;
    }
}

impl Conn {
    /// Lists this (open) connection in the registry the management API reads.
    pub(crate) fn register(&mut self) {
        let info = Arc::new(crate::registry::ConnectionInfo::new(
            self.id,
            self.peer,
            self.local,
            self.user.clone(),
            "/".into(),
            std::mem::take(&mut self.auth_mechanism),
            std::mem::take(&mut self.client_properties),
            self.frame_max,
            self.channel_max,
            self.heartbeat,
        ));
        self.state.connections.insert(self.id, info.clone());
        self.info = Some(info);
    }

    /// Removes this connection from the registry (idempotent).
    fn unregister(&mut self) {
        if let Some(info) = self.info.take() {
            self.state.connections.remove(&info.id);
        }
    }

    async fn run(&mut self, reader: &mut Reader, events: &mut mpsc::UnboundedReceiver<QueueEvent>) {
        let hb = Duration::from_secs(u64::from(self.heartbeat));
        let mut tick = tokio::time::interval(if self.heartbeat > 0 {
            hb / 2
        } else {
            Duration::from_secs(3600)
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_recv = Instant::now();
        let mut close_deadline = Instant::now() + Duration::from_secs(u64::MAX / 4);
        let shutdown = self.state.shutdown.clone();
        'main: loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !self.closing => {
                    let e = AmqpError::new(
                        ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    self.fail_connection(e, &mut close_deadline).await;
                }
                frame = reader.next() => {
                    // Handle every frame already read before waiting again: acks in one
                    // read go to their queues as one command.
                    let mut item = frame;
                    let mut handled = 0;
                    last_recv = Instant::now();
                    loop {
                        let go_on = match item {
                            Some(Ok(frame)) if !self.closing => match self.on_frame_fast(frame) {
                                Fast::Done => true,
                                Fast::Failed(ch, e) => {
                                    self.on_frame_error(ch, e, &mut close_deadline).await;
                                    true
                                }
                                Fast::Slow(frame) => {
                                    self.on_read(Some(Ok(frame)), events, &mut close_deadline)
                                        .await
                                }
                            },
                            item => self.on_read(item, events, &mut close_deadline).await,
                        };
                        if !go_on {
                            break 'main;
                        }
                        handled += 1;
                        if handled < READ_BATCH && !self.closing {
                            let (frames, failed) = self.take_raw(reader, READ_BATCH - handled);
                            handled += frames;
                            if let Some((ch, e)) = failed {
                                self.on_frame_error(ch, e, &mut close_deadline).await;
                            }
                        }
                        if handled >= READ_BATCH || self.closing {
                            break;
                        }
                        match reader.next().now_or_never() {
                            Some(next) => item = next,
                            None => break,
                        }
                    }
                    self.flush_acks();
                    self.flush_publishes().await;
                    if handled >= READ_BATCH {
                        // More is likely waiting. The tasks this read woke (a queue, a
                        // consumer's connection) run on this worker once this task
                        // yields; a peer that always has more to send would otherwise
                        // keep them waiting for tokio's budget to run out.
                        self.flush();
                        tokio::task::yield_now().await;
                    }
                }
                Some(ev) = events.recv() => {
                    self.on_event(ev);
                    for _ in 0..EVENT_BATCH {
                        match events.try_recv() {
                            Ok(ev) => self.on_event(ev),
                            Err(_) => break,
                        }
                        if self.out.len() >= FLUSH_AT {
                            self.flush();
                        }
                    }
                    // One `basic.ack multiple` for every confirm of the batch.
                    for ch in std::mem::take(&mut self.confirms_due) {
                        self.emit_confirms(ch);
                    }
                    if !self.tx_failed.is_empty() {
                        self.fail_transactions().await;
                    }
                }
                _ = tick.tick(), if self.heartbeat > 0 => {
                    if last_recv.elapsed() > hb * 2 {
                        tracing::info!(conn = self.id, peer = %self.peer, "missed heartbeats from client, timeout: {}s", self.heartbeat);
                        break;
                    }
                    if self.last_sent.elapsed() >= hb / 2 {
                        Frame::Heartbeat.encode(&mut self.out);
                    }
                }
                _ = tokio::time::sleep_until(close_deadline), if self.closing => break,
            }
            if !self.out.is_empty() {
                self.flush();
            }
        }
        self.flush();
    }

    /// Appends a method frame to the out buffer.
    pub(crate) fn send_method(&mut self, channel: u16, method: Method) {
        encode_method(&mut self.out, channel, &method);
    }

    /// Hands the out buffer to the writer.
    /// Sends what is buffered, then `bytes` as they are (a large body, not copied).
    pub(crate) fn send_bytes(&mut self, bytes: Bytes) {
        self.flush();
        self.writer.send(bytes);
        self.last_sent = Instant::now();
    }

    pub(crate) fn flush(&mut self) {
        if !self.out.is_empty() {
            self.writer.send_buf(&mut self.out);
            self.last_sent = Instant::now();
        }
    }

    fn send_connection_close(&mut self, e: &AmqpError) {
        tracing::info!(conn = self.id, peer = %self.peer, code = e.code.code(), text = %e.text, "closing connection");
        self.send_method(
            0,
            ConnectionClose {
                reply_code: e.code.code(),
                reply_text: e.text.clone(),
                class_id: e.class_id,
                method_id: e.method_id,
            }
            .into(),
        );
    }

    /// Handles what the reader produced; `false` when the connection is done.
    async fn on_read(
        &mut self,
        item: Option<Result<Frame, CodecError>>,
        events: &mut mpsc::UnboundedReceiver<QueueEvent>,
        close_deadline: &mut Instant,
    ) -> bool {
        // Publishes held from earlier frames of this read go before anything else.
        self.flush_publishes().await;
        match item {
            Some(Ok(frame)) => match self.on_frame(frame).await {
                Ok(Flow::Continue) => true,
                Ok(Flow::Stop) => {
                    // Before close-ok leaves: every message this connection held, or
                    // had in flight, is back in its queue.
                    self.hand_back_in_flight(events).await;
                    false
                }
                Err(e) => {
                    self.fail_connection(e, close_deadline).await;
                    true
                }
            },
            Some(Err(CodecError::Decode(e))) => {
                tracing::debug!(conn = self.id, error = %e, "undecodable frame");
                let err = decode_error(e);
                self.release_all().await;
                self.send_connection_close(&err);
                self.flush();
                false
            }
            Some(Err(CodecError::Io(_))) | None => {
                tracing::debug!(conn = self.id, "socket closed");
                false
            }
        }
    }

    /// Sends the acks held back by [`Conn::hold_ack`] to their queues.
    pub(crate) fn flush_acks(&mut self) {
        for (queue, ids) in std::mem::take(&mut self.pending_acks) {
            queue.send_acks(ids);
        }
    }

    /// Holds back a plain ack, to be sent with the others of the same read.
    pub(crate) fn hold_ack(&mut self, queue: QueueHandle, msg_id: u64) {
        hold(&mut self.pending_acks, queue, msg_id);
    }

    /// Holds back a publish, to be sent with the others of the same read to its queue
    /// as one command. Sent when the read is done, or before the next frame that is not
    /// part of a publish or an ack (so everything else this connection does with a queue
    /// comes after them).
    pub(crate) fn hold_publish(&mut self, queue: QueueHandle, publish: Publish) {
        hold(&mut self.pending_publishes, queue, publish);
    }

    /// Sends the publishes held by [`Conn::hold_publish`] to their queues; waits while a
    /// queue has too many waiting (see [`crate::queue::PublishRoom`]).
    pub(crate) async fn flush_publishes(&mut self) {
        if self.pending_publishes.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending_publishes);
        for (queue, batch) in pending.drain(..) {
            queue.publish(batch).await;
        }
        // Keeps its memory for the next read.
        self.pending_publishes = pending;
    }

    /// The frames of a publish and plain acks — nearly all of a busy connection's
    /// traffic — handled without the async frame path (whose futures are large to set
    /// up for every frame). Other frames are handed back for [`Conn::on_frame`].
    fn on_frame_fast(&mut self, frame: Frame) -> Fast {
        let channel = |ch: u16| self.channels.get(&ch);
        match frame {
            Frame::Method(ch, Method::BasicPublish(p))
                if !p.immediate && channel(ch).is_some_and(Channel::takes_publish) =>
            {
                self.start_publish(ch, p);
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
            other => Fast::Slow(other),
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
            let Some(channel) = self
                .channels
                .get_mut(&raw.channel)
                .filter(|c| c.takes_publish())
            else {
                break;
            };
            let Some(route) = channel.last.route(args.exchange, args.routing_key) else {
                break;
            };
            let Some(properties) = channel.last.properties_from(&buf[raw.properties.clone()])
            else {
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
            if let Err(e) = self.publish_message(raw.channel, route, mandatory, properties, body) {
                return (frames, Some((raw.channel, e)));
            }
        }
        (frames, None)
    }

    /// A frame on channel `ch` failed with `e`: a channel error closes the channel, a
    /// connection error the connection.
    async fn on_frame_error(&mut self, ch: u16, e: AmqpError, deadline: &mut Instant) {
        self.flush_publishes().await;
        if e.is_hard() {
            self.fail_connection(e, deadline).await;
        } else {
            self.fail_channel(ch, e).await;
        }
    }

    async fn fail_connection(&mut self, e: AmqpError, deadline: &mut Instant) {
        if self.closing {
            return;
        }
        self.release_all().await;
        self.send_connection_close(&e);
        self.closing = true;
        *deadline = Instant::now() + CLOSE_TIMEOUT;
    }

    async fn await_close_ok(&mut self, reader: &mut Reader) {
        let wait = async {
            while let Some(Ok(frame)) = reader.next().await {
                if let Frame::Method(0, Method::ConnectionCloseOk(_) | Method::ConnectionClose(_)) =
                    frame
                {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, wait).await;
    }

    /// Discards whatever the client still sends until it closes the socket (bounded by
    /// [`CLOSE_TIMEOUT`]).
    async fn await_client_eof(&mut self, reader: &mut Reader) {
        let drain = async { while let Some(Ok(_)) = reader.next().await {} };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
    }

    /// Closes a channel with an error: its unacked messages are requeued, its consumers
    /// removed, and the client is sent `channel.close`.
    pub(crate) async fn fail_channel(&mut self, channel: u16, e: AmqpError) {
        tracing::debug!(conn = self.id, channel, code = e.code.code(), text = %e.text, "channel error");
        self.release_channel(channel, false).await;
        if let Some(ch) = self.channels.get_mut(&channel) {
            ch.status = ChannelStatus::Closing;
            ch.info
                .closing
                .store(true, std::sync::atomic::Ordering::Relaxed);
            ch.publish = None;
        }
        self.send_method(
            channel,
            ChannelClose {
                reply_code: e.code.code(),
                reply_text: e.text,
                class_id: e.class_id,
                method_id: e.method_id,
            }
            .into(),
        );
    }

    async fn on_frame(&mut self, frame: Frame) -> Result<Flow, AmqpError> {
        if !matches!(frame, Frame::Method(_, Method::BasicAck(_))) {
            // Held-back acks reach their queues before anything that follows them.
            self.flush_acks();
        }
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

    /// As RabbitMQ does, `channel_max` limits how many channels are open at once, not
    /// their numbers: a frame for a new channel is refused once that many are open.
    fn check_channel_id(&self, ch: u16) -> Result<(), AmqpError> {
        let open = self.channels.len();
        if !self.channels.contains_key(&ch) && open >= usize::from(self.channel_max) {
            return Err(AmqpError::new(
                ReplyCode::NotAllowed,
                format!(
                    "number of channels opened ({open}) has reached the negotiated channel_max ({})",
                    self.channel_max
                ),
            ));
        }
        Ok(())
    }

    async fn on_connection_method(&mut self, m: Method) -> Result<Flow, AmqpError> {
        let (class_id, method_id) = (m.class_id(), m.method_id());
        match m {
            Method::ConnectionClose(c) => {
                tracing::debug!(conn = self.id, code = c.reply_code, text = %c.reply_text, "client closed connection");
                self.release_all().await;
                // As in RabbitMQ, exclusive queues are gone by the time the client has
                // its close-ok.
                self.delete_exclusive_queues().await;
                // Unlisted before the client hears close-ok.
                self.unregister();
                self.send_method(0, ConnectionCloseOk.into());
                self.client_closed = true;
                Ok(Flow::Stop)
            }
            Method::ConnectionCloseOk(_) => Ok(Flow::Stop),
            Method::ConnectionUpdateSecret(_) => {
                self.send_method(0, minimq_protocol::ConnectionUpdateSecretOk.into());
                Ok(Flow::Continue)
            }
            Method::ConnectionBlocked(_) | Method::ConnectionUnblocked(_) => Ok(Flow::Continue),
            // RabbitMQ's answer to any other method on channel 0.
            _ => Err(AmqpError::new(
                ReplyCode::ChannelError,
                "unexpected method in connection state running",
            )
            .on(class_id, method_id)),
        }
    }

    /// Routes a method to its channel, enforcing the channel life cycle.
    async fn on_channel_frame(&mut self, ch: u16, m: Method) -> Result<(), AmqpError> {
        let status = self
            .channels
            .get(&ch)
            .map(|c| (c.status, c.publish.is_some()));
        match (status, m) {
            (None, Method::ChannelOpen(_)) => {
                let mut channel = Channel::new(ch);
                if let Some(info) = &self.info {
                    channel.registration = Some(info.register_channel(channel.info.clone()));
                }
                self.channels.insert(ch, channel);
                self.send_method(ch, minimq_protocol::ChannelOpenOk.into());
                Ok(())
            }
            (None, _) => Err(AmqpError::new(
                ReplyCode::ChannelError,
                "expected 'channel.open'",
            )),
            (Some((ChannelStatus::Closing, _)), Method::ChannelCloseOk(_)) => {
                self.channels.remove(&ch);
                Ok(())
            }
            // The client's close crossed ours. As RabbitMQ does, it is answered and the
            // channel keeps waiting for the close-ok of our close, which the client
            // sends once it reads it: forgetting the channel here would make that
            // close-ok a frame on a channel that is not open (504 for the connection).
            (Some((ChannelStatus::Closing, _)), Method::ChannelClose(_)) => {
                self.send_method(ch, ChannelCloseOk.into());
                Ok(())
            }
            (Some((ChannelStatus::Closing, _)), _) => Ok(()),
            (Some((ChannelStatus::Open, true)), _) => {
                let header_seen = self.channels[&ch]
                    .publish
                    .as_ref()
                    .is_some_and(|p| p.header.is_some());
                Err(AmqpError::new(
                    ReplyCode::UnexpectedFrame,
                    if header_seen {
                        "expected content body, got non content body frame instead"
                    } else {
                        "expected content header for class 60, got non content header frame instead"
                    },
                )
                .on(60, 40))
            }
            (Some((ChannelStatus::Open, false)), m) => self.on_channel_method(ch, m).await,
        }
    }

    /// Handles a queue event.
    fn on_event(&mut self, ev: QueueEvent) {
        match ev {
            QueueEvent::Deliver(d) => self.deliver(d),
            QueueEvent::Confirm { channel, seq, ok } => {
                if let Some(c) = self
                    .channels
                    .get_mut(&channel)
                    .and_then(Channel::confirms_mut)
                {
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
                if ch
                    .consumers
                    .get(&consumer_tag)
                    .is_some_and(|c| c.id == consumer_id)
                {
                    ch.consumers.remove(&consumer_tag);
                    if self.cancel_notify && ch.status == ChannelStatus::Open {
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
    }

    /// Requeues everything every channel holds and removes their consumers.
    async fn release_all(&mut self) {
        self.flush_acks();
        // Two phases: first every consumer of this connection goes, then the unacked
        // messages are requeued. Requeueing channel by channel would let a queue hand a
        // message from a closed channel to a consumer on another channel of this same,
        // closing connection.
        let ids: Vec<u16> = self.channels.keys().copied().collect();
        let mut outstanding = Vec::new();
        for ch in &ids {
            let Some(channel) = self.channels.get_mut(ch) else {
                continue;
            };
            outstanding.extend(channel.take_unsettled().into_values());
        }
        for ch in ids {
            for q in self.release_channel(ch, true).await {
                if !self.released.iter().any(|x| x.same(&q)) {
                    self.released.push(q);
                }
            }
        }
        for (queue, ids, _) in crate::channel::group_by_queue(outstanding) {
            queue
                .send(QueueCommand::Settle {
                    ids,
                    requeue: true,
                    rejected: false,
                })
                .await;
            if !self.released.iter().any(|x| x.same(&queue)) {
                self.released.push(queue);
            }
        }
    }

    /// Returns a channel's unacked messages to their queues and removes its consumers.
    /// With `remove`, the channel itself is forgotten.
    /// Answers the queues it told.
    pub(crate) async fn release_channel(&mut self, ch: u16, remove: bool) -> Vec<QueueHandle> {
        let mut notified = Vec::new();
        let Some(channel) = self.channels.get_mut(&ch) else {
            return notified;
        };
        let outstanding = channel.take_unsettled();
        let consumers: Vec<QueueHandle> = channel.consumers.drain().map(|(_, c)| c.queue).collect();
        channel.confirms = None;
        if remove {
            self.channels.remove(&ch);
        }
        let mut queues: Vec<(QueueHandle, Vec<u64>)> = Vec::new();
        for o in outstanding.into_values() {
            match queues.iter_mut().find(|(q, _)| q.same(&o.queue)) {
                Some((_, ids)) => ids.push(o.msg_id),
                None => queues.push((o.queue, vec![o.msg_id])),
            }
        }
        for q in consumers {
            if !queues.iter().any(|(x, _)| x.same(&q)) {
                queues.push((q, Vec::new()));
            }
        }
        for (q, requeue) in queues {
            q.send(QueueCommand::ChannelClosed {
                conn_id: self.id,
                channel: ch,
                requeue,
            })
            .await;
            notified.push(q);
        }
        notified
    }

    /// Hands back deliveries that queues sent but this connection never wrote (e.g. a
    /// message requeued from one closing channel and dispatched to another channel of
    /// this connection). The receiver is closed first, so once every released queue has
    /// answered a round trip no queue can add one: its send fails and it keeps the
    /// message. Then what is left in the receiver goes back.
    async fn hand_back_in_flight(&mut self, events: &mut mpsc::UnboundedReceiver<QueueEvent>) {
        self.release_all().await;
        events.close();
        for q in std::mem::take(&mut self.released) {
            let _ = q.counts().await;
        }
        while let Ok(ev) = events.try_recv() {
            if let QueueEvent::Deliver(d) = ev {
                if !d.no_ack {
                    d.queue
                        .send(QueueCommand::Settle {
                            ids: vec![d.msg_id],
                            requeue: true,
                            rejected: false,
                        })
                        .await;
                }
            }
        }
    }

    /// Final cleanup: requeue, drop consumers, delete exclusive queues.
    async fn cleanup(&mut self) {
        self.release_all().await;
        self.delete_exclusive_queues().await;
        self.flush();
    }

    /// Deletes the queues this connection declared exclusive.
    async fn delete_exclusive_queues(&mut self) {
        for q in std::mem::take(&mut self.exclusive_queues) {
            // Deleted meanwhile (e.g. through the management API), perhaps re-declared
            // by someone else under the same name: not ours to delete.
            if !self.state.vhost.queue(q.name()).is_some_and(|x| x.same(&q)) {
                continue;
            }
            let _ = self
                .state
                .vhost
                .delete_queue(q.name(), self.id, false, false)
                .await;
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

/// Adds `item` to the batch of `queue` in `held`.
fn hold<T>(held: &mut Vec<(QueueHandle, Vec<T>)>, queue: QueueHandle, item: T) {
    match held.iter_mut().find(|(q, _)| q.same(&queue)) {
        Some((_, items)) => items.push(item),
        None => held.push((queue, vec![item])),
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

#[cfg(test)]
mod tests {
    use super::*;
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
