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
//!
//! # Layout
//! Each file holds the types it works on and an `impl IoLoop` block:
//! - `mod.rs`: [`IoLoop`], its select loop ([`IoLoop::drive`]) and its life: taking
//!   queued requests, writes, the consumers' turn, heartbeats, the close, protocol
//!   violations and the end;
//! - `incoming.rs`: what the server sends, dispatched;
//! - `deliver.rs`: the whole-delivery fast path, straight from the read buffer;
//! - `requests.rs`: what handles ask, encoded for the socket;
//! - `slot.rs`: one channel's protocol state and how it ends;
//! - `confirms.rs`: one channel's publisher-confirm bookkeeping.
//!
//! The handle side of every exchange (requests, replies, shared state) is in `handle`.

mod confirms;
mod deliver;
mod incoming;
mod requests;
mod slot;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::{FutureExt, StreamExt};
use minimq_protocol::idhash::IdMap;
use minimq_protocol::{ConnectionClose, Frame, FrameCodec, Method, ReplyCode};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;

use crate::error::{Error, Result};
use crate::handle::{ConnectionShared, Request};
use crate::transport::{ReadSide, WriteSide};

use requests::fail_request;
use slot::ChannelSlot;

/// Stop taking requests while this many octets wait for the socket.
/// Why 1 MiB: more than one write takes, yet a slow broker stops publishers cheaply.
const HIGH_WATER: usize = 1 << 20;
/// Frames read, or requests taken, per wake-up at most.
/// Why 256: the request queue's size (`connection::REQUEST_QUEUE`), taken in one wake-up.
const BATCH: usize = 256;
/// Deliveries handed to consumers before they get a turn, and their acks a write, ahead
/// of the rest of what was read: the broker works on those acks (and sends the next
/// deliveries) while the consumers work on the rest, instead of both sides taking turns
/// with a whole prefetch window each.
/// Why 32: acks go back several times per prefetch window (100 in docs/benchmarks.md).
const HAND_OFF: usize = 32;
/// How long a closing connection waits for `close-ok` (or to flush a final frame).
/// Why 10 s: far above a live broker's answer; `Connection::close` documents it.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

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
    reader: FramedRead<ReadSide, FrameCodec>,
    reader_done: bool,
    writer: WriteSide,
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
        reader: FramedRead<ReadSide, FrameCodec>,
        writer: WriteSide,
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
}
