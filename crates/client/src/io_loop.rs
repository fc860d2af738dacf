//! The connection task: one per connection, owning the socket and every channel's
//! protocol state. Handles talk to it only through [`Request`]s on an mpsc queue and
//! get answers on oneshots.
//!
//! One `select!` loop does all the work, so nothing here needs a lock:
//! - read a frame and dispatch it (replies to the oldest pending call of the channel,
//!   deliveries to consumers, confirms to publishers, returns to the returns stream,
//!   `channel.close` / `connection.close` from the server);
//! - take a request from a handle and encode its frames into the outgoing buffer (only
//!   while that buffer is below [`HIGH_WATER`], which is the back-pressure on publishers);
//! - write the outgoing buffer to the socket (reading never waits for writing);
//! - after every [`HAND_OFF`] deliveries, let the consumers run and write their acks
//!   before handling more of what was read, so the broker works on those acks while the
//!   consumers work on the rest;
//! - on the heartbeat tick, send a heartbeat if nothing else went out lately and declare
//!   the server dead after two silent intervals.
//!
//! When the connection ends, for whatever reason, every pending call, consumer and
//! confirm fails with that reason: nothing waits forever.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::{FutureExt, StreamExt};
use minimq_protocol::frame::{encode_body_frames, encode_method, peek_content, peek_shortstr};
use minimq_protocol::idhash::IdMap;
use minimq_protocol::properties::LastContent;
use minimq_protocol::{
    BasicCancelOk, BasicProperties, ChannelCloseOk, ChannelFlowOk, ChannelOpen, CodecError,
    ConnectionClose, ConnectionCloseOk, ContentHeader, Frame, FrameCodec, Method, ReplyCode,
};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;

use crate::acker::Acker;
use crate::error::{Error, Result};
use crate::handle::{
    BlockedState, ChannelCore, ChannelShared, Confirmation, ConnHandle, ConnectionShared,
    ConsumerSink, Content, Reply, Request,
};
use crate::message::Delivery;
use crate::returned::ReturnedMessage;

/// Stop taking requests while this many octets wait for the socket.
const HIGH_WATER: usize = 1 << 20;
/// Frames read, or requests taken, per wake-up at most.
const BATCH: usize = 256;
/// Deliveries handed to consumers before they get a turn, and their acks a write, ahead
/// of the rest of what was read: the broker works on those acks (and sends the next
/// deliveries) while the consumers work on the rest, instead of both sides taking turns
/// with a whole prefetch window each.
const HAND_OFF: usize = 32;
/// How long a closing connection waits for `close-ok` (or to flush a final frame).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// A synchronous call waiting for its reply.
struct Pending {
    /// Class and method id of the request, to check the reply against.
    request: (u16, u16),
    reply: PendingReply,
}

enum PendingReply {
    Open(oneshot::Sender<Result<Arc<ChannelShared>>>),
    Call {
        reply: oneshot::Sender<Result<Reply>>,
        consumer: Option<ConsumerSink>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotState {
    Opening,
    Open,
    /// We sent `channel.close` and wait for `close-ok`.
    Closing,
}

/// A message whose header and body frames are still arriving.
struct PartialContent {
    method: Method,
    header: Option<(Arc<BasicProperties>, u64)>,
    /// The body frames so far: most bodies are one frame, which needs no `Vec`.
    first: Bytes,
    more: Vec<Bytes>,
    received: u64,
}

impl PartialContent {
    fn is_complete(&self) -> bool {
        matches!(self.header, Some((_, size)) if self.received >= size)
    }

    fn finish(mut self) -> (Method, Content) {
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

/// Publisher-confirm bookkeeping of a channel in confirm mode.
#[derive(Default)]
struct Confirms {
    /// Sequence number of the next publish (the broker counts from 1).
    next_seq: u64,
    outstanding: BTreeMap<u64, Option<oneshot::Sender<Result<Confirmation>>>>,
    /// Whether anything was nacked since the last `wait_for_confirms` answer.
    nacked: bool,
    waiters: Vec<oneshot::Sender<Result<bool>>>,
}

impl Confirms {
    fn new() -> Confirms {
        Confirms {
            next_seq: 1,
            ..Confirms::default()
        }
    }

    fn settle(&mut self, tag: u64, multiple: bool, ack: bool) {
        let settled = if multiple {
            let rest = self.outstanding.split_off(&(tag.saturating_add(1)));
            std::mem::replace(&mut self.outstanding, rest)
        } else {
            self.outstanding
                .remove(&tag)
                .map(|tx| (tag, tx))
                .into_iter()
                .collect()
        };
        let verdict = if ack {
            Confirmation::Ack
        } else {
            self.nacked = true;
            Confirmation::Nack
        };
        for tx in settled.into_values().flatten() {
            let _ = tx.send(Ok(verdict));
        }
        if self.outstanding.is_empty() {
            self.answer_waiters();
        }
    }

    fn answer_waiters(&mut self) {
        if self.waiters.is_empty() {
            return;
        }
        let all_acked = !std::mem::take(&mut self.nacked);
        for waiter in self.waiters.drain(..) {
            let _ = waiter.send(Ok(all_acked));
        }
    }
}

/// The protocol state of one open channel.
struct ChannelSlot {
    shared: Arc<ChannelShared>,
    state: SlotState,
    pending: VecDeque<Pending>,
    consumers: IdMap<Arc<str>, ConsumerSink>,
    content: Option<PartialContent>,
    confirms: Option<Confirms>,
    /// Exchange, routing key and properties of the last message received: the next one
    /// usually carries the same, and then shares them.
    last: LastContent,
}

impl ChannelSlot {
    /// Fails everything waiting on the channel with `reason` and marks it closed.
    /// Pending `channel.close` calls succeed: the channel is closed. Consumers get the
    /// error unless this client closed the channel or connection itself.
    fn fail(self, reason: Error, by_client: bool) {
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

/// Where the connection is in its life.
enum State {
    Open,
    /// We sent `connection.close` and wait for `close-ok`.
    Closing,
    /// Write out what is queued (a `close-ok` or our `close`), then stop with this reason.
    Finishing(Error),
}

/// The connection task. See the module docs.
pub(crate) struct IoLoop {
    reader: FramedRead<OwnedReadHalf, FrameCodec>,
    reader_done: bool,
    writer: OwnedWriteHalf,
    outbox: BytesMut,
    requests: mpsc::Receiver<Request>,
    requests_done: bool,
    /// To hand out channel handles (ackers) without keeping the queue open forever.
    weak: mpsc::WeakSender<Request>,
    shared: Arc<ConnectionShared>,
    channels: IdMap<u16, ChannelSlot>,
    next_channel: u16,
    state: State,
    /// Whether this client started the close (then consumers end without an error).
    closed_by_client: bool,
    close_waiters: Vec<oneshot::Sender<Result<()>>>,
    deadline: Option<Instant>,
    heartbeat: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    /// Deliveries handed to consumers since they last had a turn.
    handed: usize,
}

impl IoLoop {
    pub(crate) fn new(
        reader: FramedRead<OwnedReadHalf, FrameCodec>,
        writer: OwnedWriteHalf,
        requests: mpsc::Receiver<Request>,
        weak: mpsc::WeakSender<Request>,
        shared: Arc<ConnectionShared>,
    ) -> IoLoop {
        let heartbeat =
            (shared.tune.heartbeat > 0).then(|| Duration::from_secs(shared.tune.heartbeat.into()));
        let now = Instant::now();
        IoLoop {
            reader,
            reader_done: false,
            writer,
            outbox: BytesMut::with_capacity(64 * 1024),
            requests,
            requests_done: false,
            weak,
            shared,
            channels: IdMap::default(),
            next_channel: 1,
            state: State::Open,
            closed_by_client: false,
            close_waiters: Vec::new(),
            deadline: None,
            heartbeat,
            last_read: now,
            last_write: now,
            handed: 0,
        }
    }

    /// Runs the connection until it ends, then fails everything still waiting.
    pub(crate) async fn run(mut self) {
        let reason = self.drive().await;
        match &reason {
            Error::ConnectionClosed { code: 200, .. } => tracing::debug!("connection closed"),
            other => tracing::warn!(error = %other, "connection ended"),
        }
        self.shared.set_closed(reason.clone());
        for (_, slot) in self.channels.drain() {
            slot.fail(reason.clone(), self.closed_by_client);
        }
        self.requests.close();
        while let Ok(request) = self.requests.try_recv() {
            fail_request(request, &reason);
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.writer.shutdown()).await;
        for waiter in self.close_waiters.drain(..) {
            // Only a close the broker confirmed is a clean close: a timeout may have cut
            // off publishes still queued for the socket.
            let clean = matches!(reason, Error::ConnectionClosed { code: 200, .. });
            let _ = waiter.send(if self.closed_by_client && clean {
                Ok(())
            } else {
                Err(reason.clone())
            });
        }
    }

    /// The select loop; returns why the connection ended.
    async fn drive(&mut self) -> Error {
        let tick = self.heartbeat.map_or(Duration::from_secs(3600), |hb| {
            (hb / 2).max(Duration::from_millis(100))
        });
        let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            if let State::Finishing(reason) = &self.state {
                if self.outbox.is_empty() {
                    return reason.clone();
                }
            }
            let take_requests = matches!(self.state, State::Open)
                && !self.requests_done
                && self.outbox.len() < HIGH_WATER;
            let deadline = self.deadline.unwrap_or_else(Instant::now);
            tokio::select! {
                // Read and take requests before writing: what piles up meanwhile leaves
                // in one write (acks of a burst of deliveries, a burst of publishes).
                biased;
                incoming = self.reader.next(), if !self.reader_done => {
                    // Everything already read is handled before the next wait (and
                    // before the next write: replies to it leave in one write).
                    let mut item = incoming;
                    self.last_read = Instant::now();
                    for n in 1..=BATCH {
                        if let Some(end) = self.on_read(item) {
                            return end;
                        }
                        self.take_deliveries();
                        if self.reader_done || n == BATCH || self.handed >= HAND_OFF {
                            break;
                        }
                        match self.reader.next().now_or_never() {
                            Some(next) => item = next,
                            None => break,
                        }
                    }
                },
                request = self.requests.recv(), if take_requests => match request {
                    Some(request) => {
                        self.on_request(request);
                        // Take what else is queued, so it goes out in one write.
                        self.take_queued_requests();
                    }
                    None => {
                        // Every handle is gone: nobody can use the connection any more.
                        self.requests_done = true;
                        self.begin_close();
                    }
                },
                written = self.writer.write_buf(&mut self.outbox), if !self.outbox.is_empty() => {
                    match written {
                        Ok(0) => return Error::io(std::io::ErrorKind::WriteZero.into()),
                        Ok(_) => self.wrote(),
                        Err(e) => return Error::io(e),
                    }
                },
                _ = ticker.tick(), if self.heartbeat.is_some() => {
                    if let Some(error) = self.on_heartbeat_tick() {
                        return error;
                    }
                },
                _ = tokio::time::sleep_until(deadline), if self.deadline.is_some() => {
                    return self.end_reason();
                },
                // Nothing left to wait for (cannot happen: every state has a live branch).
                else => return self.end_reason(),
            }
            // The rest of what was read may hold more deliveries, a turn's worth at a time.
            while self.handed >= HAND_OFF {
                if let Err(e) = self.consumers_turn().await {
                    return Error::io(e);
                }
                self.take_deliveries();
            }
        }
    }

    /// Takes the requests already queued (up to a batch, while the outgoing buffer has
    /// room and the connection is open).
    fn take_queued_requests(&mut self) {
        for _ in 0..BATCH {
            if self.outbox.len() >= HIGH_WATER || !matches!(self.state, State::Open) {
                break;
            }
            match self.requests.try_recv() {
                Ok(request) => self.on_request(request),
                Err(_) => break,
            }
        }
    }

    /// Notes that the socket took some of the outgoing buffer.
    fn wrote(&mut self) {
        self.last_write = Instant::now();
        // A close waits behind everything queued before it: while the socket drains,
        // the broker is still taking our frames.
        if matches!(self.state, State::Closing) {
            self.deadline = Some(self.last_write + CLOSE_TIMEOUT);
        }
    }

    /// Lets the consumers that were just handed deliveries run (on this thread, with a
    /// single-threaded runtime), then takes their acks and writes them if the socket
    /// takes them at once (else the select loop's write does, as usual).
    async fn consumers_turn(&mut self) -> std::io::Result<()> {
        self.handed = 0;
        tokio::task::yield_now().await;
        self.take_queued_requests();
        if self.outbox.is_empty() || !matches!(self.state, State::Open) {
            return Ok(());
        }
        match self.writer.try_write(&self.outbox) {
            Ok(n) => {
                self.outbox.advance(n);
                self.wrote();
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Takes whole deliveries straight from the read buffer while consumers may be handed
    /// more: a `basic.deliver`, its header and its one body frame (`peek_content`), no
    /// frame decoded, the body a slice of the buffer, and exchange, routing key, consumer
    /// tag and properties shared with the previous delivery when their octets are the
    /// same. Anything else (another frame, a body in several frames, an unknown consumer,
    /// bad octets) stays in the buffer for the frame decoder, which handles it and its
    /// errors as usual.
    fn take_deliveries(&mut self) {
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

    /// Handles what the reader produced; `Some` when the connection ends with it.
    fn on_read(&mut self, item: Option<std::result::Result<Frame, CodecError>>) -> Option<Error> {
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

    /// Why the connection ends when it is cut short in its current state. A close the
    /// server did not answer in time is not a clean close: what was queued before it
    /// (publishes a flow-controlled server had not taken yet) may never have left.
    fn end_reason(&self) -> Error {
        match &self.state {
            State::Finishing(reason) => reason.clone(),
            State::Closing => Error::io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the server did not answer connection.close in time; \
                 frames queued before it may not have been sent",
            )),
            State::Open => Error::io(std::io::ErrorKind::TimedOut.into()),
        }
    }

    /// Sends a heartbeat when the write side was idle for half the interval (as RabbitMQ
    /// does), and gives up on a server silent for two intervals.
    fn on_heartbeat_tick(&mut self) -> Option<Error> {
        let hb = self.heartbeat?;
        if self.last_read.elapsed() >= 2 * hb {
            return Some(Error::MissedHeartbeats(2 * hb));
        }
        if self.outbox.is_empty() && self.last_write.elapsed() >= hb / 2 {
            Frame::Heartbeat.encode(&mut self.outbox);
        }
        None
    }

    /// Queues `connection.close` and waits (up to [`CLOSE_TIMEOUT`]) for `close-ok`.
    fn begin_close(&mut self) {
        if !matches!(self.state, State::Open) {
            return;
        }
        self.closed_by_client = true;
        self.send_method(
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: ReplyCode::Success.code(),
                reply_text: "Goodbye".into(),
                class_id: 0,
                method_id: 0,
            }),
        );
        self.state = State::Closing;
        self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    /// The server broke the protocol: tell it why, and stop.
    fn violation(&mut self, code: ReplyCode, text: String) {
        tracing::error!(%text, "protocol violation by the server; closing the connection");
        if matches!(self.state, State::Finishing(_)) {
            return;
        }
        self.send_method(
            0,
            &Method::ConnectionClose(ConnectionClose {
                reply_code: code.code(),
                reply_text: code.text(&text),
                class_id: 0,
                method_id: 0,
            }),
        );
        self.state = State::Finishing(Error::Protocol(text));
        self.deadline = Some(Instant::now() + CLOSE_TIMEOUT);
    }

    fn send_method(&mut self, channel: u16, method: &Method) {
        encode_method(&mut self.outbox, channel, method);
    }

    // ----- requests from handles -----

    fn on_request(&mut self, request: Request) {
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

    // ----- frames from the server -----

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

/// The acker of a delivery to `sink` on `slot`; `None` when every handle of the
/// connection is gone (nobody could ack it).
fn acker(
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
fn hand_over(handed: &mut usize, sink: &ConsumerSink, delivery: Delivery) {
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

/// The slot of `channel` if it is open and still the same channel.
fn open_slot<'a>(
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

/// Answers a request that arrived too late with the connection's end.
fn fail_request(request: Request, reason: &Error) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use minimq_protocol::{
        BasicGetEmpty, BasicGetOk, ExchangeUnbindOk, QueueDeclareOk, QueueDeleteOk,
    };

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

    #[test]
    fn confirms_settle_single_and_multiple() {
        let mut c = Confirms::new();
        let mut rxs = Vec::new();
        for seq in 1..=4 {
            let (tx, rx) = oneshot::channel();
            c.outstanding.insert(seq, Some(tx));
            rxs.push(rx);
        }
        let (wait_tx, mut wait_rx) = oneshot::channel();
        c.waiters.push(wait_tx);
        c.settle(2, false, false);
        c.settle(3, true, true);
        assert!(wait_rx.try_recv().is_err(), "4 is still outstanding");
        c.settle(4, false, true);
        let got: Vec<_> = rxs
            .iter_mut()
            .map(|rx| rx.try_recv().unwrap().unwrap())
            .collect();
        use Confirmation::*;
        assert_eq!(got, [Ack, Nack, Ack, Ack]);
        assert!(!wait_rx.try_recv().unwrap().unwrap(), "one was nacked");
        assert!(!c.nacked, "the flag resets once reported");
    }

    #[test]
    fn a_publish_counted_without_a_sender_still_holds_the_waiters() {
        // A publish sent while confirm.select was on its way: counted, nobody to tell.
        let mut c = Confirms::new();
        let (tx, mut rx) = oneshot::channel();
        c.outstanding.insert(1, Some(tx));
        c.outstanding.insert(2, None);
        let (wait_tx, mut wait_rx) = oneshot::channel();
        c.waiters.push(wait_tx);
        c.settle(1, false, true);
        assert_eq!(rx.try_recv().unwrap().unwrap(), Confirmation::Ack);
        assert!(wait_rx.try_recv().is_err(), "2 is still outstanding");
        c.settle(2, true, true);
        assert!(wait_rx.try_recv().unwrap().unwrap());
    }
}
