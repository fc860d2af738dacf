//! One task per client connection: it reads frames, runs the handshake, keeps every
//! channel's state (`channel/`), turns queue events into deliveries and confirms, and
//! hands encoded frames to the socket's write side ([`writer`]).
//!
//! The task never blocks on the socket. It appends outgoing frames to `out` while it works
//! through everything that is ready (frames and queue events), then hands the whole batch
//! over at once: written at once if the socket takes it, else by the writer task.
//!
//! Errors: a channel error closes that channel (`channel.close`), a connection error
//! sends `connection.close` and waits briefly for `close-ok`. Either way every unacked
//! message of the channels involved goes back to its queue.
//!
//! # Layout
//! `Conn`'s methods, by flow:
//! - [`intake`]: the bytes the socket brought — the fast path for publishes and plain
//!   acks, the frame decoder for the rest, and the rule that what the fast path holds
//!   ([`held`]) reaches the queues before any other frame is handled;
//! - [`methods`]: the channel life cycle and the connection, channel, exchange and queue
//!   classes; [`basic`]: the basic class but publishing (qos, consume, get, settling);
//!   [`publish`]: `basic.publish` and its content, routed and held for its queues;
//!   [`confirms`]: confirm and tx modes, and the answers queues send for publishes;
//! - [`deliver`]: queue events, deliveries written to the out buffer;
//! - [`close`]: closing channels and the connection, giving back what they held;
//! - [`handshake`] before all of them, [`writer`] under them.

mod basic;
mod close;
mod confirms;
mod deliver;
mod handshake;
mod held;
mod intake;
mod methods;
mod publish;
#[cfg(test)]
mod tests;
mod trace;
pub mod transport;
mod writer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use minimq_protocol::frame::{encode_method, PROTOCOL_HEADER};
use minimq_protocol::idhash::IdMap;
use minimq_protocol::{
    ConnectionBlocked, ConnectionUnblocked, DecodeError, Frame, FrameCodec, Method, ReplyCode,
};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;

use crate::channel::Channel;
use crate::error::AmqpError;
use crate::queue::{EventSink, QueueCommand, QueueEvent, QueueHandle};
use crate::server::BrokerState;
use close::finish_writes;
use held::Held;

pub(crate) use publish::refuse_if_store_failed;

type Reader = FramedRead<transport::ReadSide, FrameCodec>;

/// How long a connection waits for `close-ok` after sending `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// Flush the out buffer to the writer once it holds this much: large enough that a burst
/// of deliveries is a few big writes, small enough that the first of them leaves early.
const FLUSH_AT: usize = 256 * 1024;

/// The socket's read buffer once the connection is in use (tokio-util's default): reads
/// of up to this much, and message bodies are split off it without a copy.
const READ_BUFFER: usize = 8 * 1024;

/// The read buffer through the handshake and while the connection stays idle: enough for
/// a `start-ok` with a client's usual properties (a larger one grows it); a page of
/// memory per idle connection saved.
const HANDSHAKE_READ_BUFFER: usize = 512;
/// Most queue events handled between two looks at the socket: deliveries are written in
/// batches, yet a flood of them does not delay reading the client's acks.
const EVENT_BATCH: usize = 256;

/// How often a connection with unacknowledged deliveries looks for one past its consumer
/// timeout: a channel is closed at most this long after the deadline (RabbitMQ checks once
/// a minute).
const CONSUMER_TIMEOUT_CHECK: Duration = Duration::from_millis(500);

/// What the frame loop does next.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// The state of one connection, owned by its task.
pub struct Conn {
    state: Arc<BrokerState>,
    /// The vhost the connection opened (a placeholder holding nothing until then):
    /// held, so no method looks a vhost up by name.
    vhost: Arc<crate::vhost::VHost>,
    id: u64,
    peer: SocketAddr,
    user: String,
    /// The broker's end of the socket.
    local: SocketAddr,
    /// From `connection.start-ok`, for the management API.
    client_properties: minimq_protocol::FieldTable,
    auth_mechanism: String,
    /// This connection's entry in the registry, once open.
    info: Option<Arc<crate::registry::ConnectionInfo>>,
    out: BytesMut,
    writer: writer::Writer,
    /// The room on the way out, shared with the writer and the queues this connection
    /// consumes from (see [`crate::queue::OutputRoom`]).
    room: Arc<crate::queue::OutputRoom>,
    events: EventSink,
    frame_max: u32,
    channel_max: u16,
    heartbeat: u16,
    /// Open channels (a fast hash: looked up for every frame and every delivery).
    channels: IdMap<u16, Channel>,
    exclusive_queues: Vec<QueueHandle>,
    cancel_notify: bool,
    /// The client takes `connection.blocked` / `unblocked` (its capability).
    blocked_notify: bool,
    /// A resource alarm is on and this connection published: its socket is not read
    /// until the alarms clear (see [`Conn::block`]).
    blocked: bool,
    /// Over TLS (shown in the management API).
    tls: bool,
    /// Octets of deliveries handled in the current batch of queue events, taken off the
    /// room once for the batch (see [`crate::queue::OutputRoom`]).
    room_taken: usize,
    /// The registry asked this connection to close (`QueueEvent::CloseForced`); done
    /// once the current batch of events is handled.
    forced_close: Option<String>,
    /// The user's permissions on the vhost, as they were when the connection opened
    /// (changes apply to connections opened after them, as in RabbitMQ).
    perm: Option<Arc<crate::auth::Permission>>,
    /// The exchange the last publish was checked for, and whether writing to it is
    /// allowed: a publisher sends to the same exchange over and over, and the channel
    /// hands the same `Arc` for it (compared by pointer, no string comparison).
    write_checked: Option<(Arc<str>, bool)>,
    /// The clock ack deadlines are counted in, read once per batch of queue events.
    clock: crate::channel::AckClock,
    /// Some unsettled delivery may have an ack deadline: the consumer timeout is checked
    /// every [`CONSUMER_TIMEOUT_CHECK`] while this holds.
    deadlines_armed: bool,
    auth_failure_close: bool,
    closing: bool,
    /// Queues told that this connection's channels closed (see `hand_back_in_flight`).
    released: Vec<QueueHandle>,
    /// The client sent `connection.close` and was answered: it closes the socket.
    client_closed: bool,
    last_sent: Instant,
    /// Channels whose publisher confirms were answered during the current batch of queue
    /// events: their `basic.ack`s go out once, folded, when the batch is done.
    confirms_due: Vec<u16>,
    /// Publishes and plain acks the fast path took during the current read, not yet
    /// sent (see [`Conn::intake`]).
    held: Held,
    /// Channels whose transaction failed to commit (a queue refused a publish), found
    /// while answering confirms; each is closed once the batch is done.
    tx_failed: Vec<u16>,
    /// Whether a frame other than a heartbeat has arrived since the handshake (the read
    /// buffer has its full size from then on).
    reading: bool,
}

/// The connection error for bytes that do not decode, with RabbitMQ's text where the
/// codec's error carries what that text needs.
fn decode_error(e: DecodeError) -> AmqpError {
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

/// Serves one accepted plain TCP socket until it closes.
pub async fn serve(socket: TcpStream, peer: SocketAddr, state: Arc<BrokerState>) {
    serve_stream(transport::Stream::Tcp(socket), peer, state).await;
}

/// Serves one accepted stream (plain TCP, or TLS once its handshake is done) until it
/// closes.
pub async fn serve_stream(
    mut socket: transport::Stream,
    peer: SocketAddr,
    state: Arc<BrokerState>,
) {
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
    let tls = socket.is_tls();
    let Ok((read_half, write_half, raw_socket)) = socket.split() else {
        return;
    };
    let room = Arc::new(crate::queue::OutputRoom::default());
    let writer = writer::Writer::new(write_half, room.clone());
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let mut reader = FramedRead::with_capacity(
        read_half,
        FrameCodec::new(state.config.frame_max),
        HANDSHAKE_READ_BUFFER,
    );
    let mut conn = Conn {
        id: state.next_conn_id(),
        vhost: state.vhosts.unopened(),
        state,
        peer,
        user: String::new(),
        local,
        client_properties: Default::default(),
        auth_mechanism: String::new(),
        info: None,
        // Grown as frames are written (and kept): an idle connection holds a few hundred
        // octets, not a buffer sized for bursts.
        out: BytesMut::new(),
        writer,
        room,
        events: events_tx,
        frame_max: 0,
        channel_max: 0,
        heartbeat: 0,
        channels: IdMap::default(),
        exclusive_queues: Vec::new(),
        cancel_notify: false,
        blocked_notify: false,
        blocked: false,
        tls,
        room_taken: 0,
        forced_close: None,
        perm: None,
        write_checked: None,
        clock: crate::channel::AckClock::new(Instant::now()),
        deadlines_armed: false,
        auth_failure_close: false,
        closing: false,
        released: Vec::new(),
        client_closed: false,
        last_sent: Instant::now(),
        confirms_due: Vec::new(),
        held: Held::default(),
        tx_failed: Vec::new(),
        reading: false,
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
    let closing = conn.writer.close();
    drop(conn);
    finish_writes(closing, &raw_socket).await;
}

impl Conn {
    /// Lists this (open) connection in the registry the management API reads.
    fn register(&mut self) {
        let info = Arc::new(crate::registry::ConnectionInfo::new(
            self.id,
            self.peer,
            self.local,
            self.user.clone(),
            self.vhost.name().into(),
            std::mem::take(&mut self.auth_mechanism),
            std::mem::take(&mut self.client_properties),
            self.frame_max,
            self.channel_max,
            self.heartbeat,
        ));
        info.ssl
            .store(self.tls, std::sync::atomic::Ordering::Relaxed);
        info.set_events(self.events.clone());
        self.state.connections.insert(self.id, info.clone());
        self.info = Some(info);
    }

    /// Removes this connection from the registry (idempotent).
    fn unregister(&mut self) {
        if let Some(info) = self.info.take() {
            self.state.connections.remove(&info.id);
        }
    }

    /// The open connection's loop: frames from the socket, events from queues, the
    /// heartbeat and the broker's shutdown, until the connection ends.
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
        // Made once, not on every turn of the loop: each new one registers with the
        // token (a lock) and leaves it again when dropped. Done once it fires: the
        // shutdown closes the connection, and a closing connection does not poll it.
        let stopping = shutdown.cancelled();
        tokio::pin!(stopping);
        let mut alarms = self.state.alarms.subscribe();
        let mut ack_check = tokio::time::interval(CONSUMER_TIMEOUT_CHECK);
        ack_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = &mut stopping, if !self.closing => {
                    let e = AmqpError::new(
                        ReplyCode::ConnectionForced,
                        "broker forced connection closure with reason 'shutdown'",
                    );
                    Box::pin(self.fail_connection(e, &mut close_deadline)).await;
                }
                // Blocked: the socket is not read (TCP pushes back on the publisher);
                // queue events, deliveries and heartbeats go on.
                frame = reader.next(), if !self.blocked || self.closing => {
                    last_recv = Instant::now();
                    if self.intake(frame, reader, events, &mut close_deadline).await == Flow::Stop {
                        break;
                    }
                }
                Some(ev) = events.recv() => {
                    self.clock.next_batch();
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
                        Box::pin(self.fail_transactions()).await;
                    }
                    // What the batch's deliveries counted in the room is off the queues'
                    // side now: one atomic operation for the batch, not one per delivery.
                    self.room.take(std::mem::take(&mut self.room_taken));
                    if let Some(reason) = self.forced_close.take() {
                        if !self.closing {
                            let e = AmqpError::new(ReplyCode::ConnectionForced, reason);
                            Box::pin(self.fail_connection(e, &mut close_deadline)).await;
                        }
                    }
                }
                _ = ack_check.tick(), if self.deadlines_armed && !self.closing => {
                    Box::pin(self.check_ack_deadlines()).await;
                }
                changed = alarms.changed(), if self.blocked => {
                    if changed.is_err() || !self.state.alarms.any() {
                        self.unblock();
                        // What the client sent while it was not read is not its silence.
                        last_recv = Instant::now();
                    }
                }
                _ = tick.tick(), if self.heartbeat > 0 => {
                    // Not reading while blocked: the client's silence is ours (RabbitMQ
                    // pauses its heartbeat monitor too).
                    if !self.blocked && last_recv.elapsed() > hb * 2 {
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

    /// Closes every channel holding a delivery past its ack deadline with RabbitMQ's
    /// `406 PRECONDITION_FAILED` (its unacked messages go back to their queues, flagged
    /// redelivered); the connection and its other channels stay up.
    async fn check_ack_deadlines(&mut self) {
        let now = self.clock.elapsed_ms(Instant::now());
        let overdue: Vec<(u16, Duration)> = self
            .channels
            .iter()
            .filter(|(_, c)| c.is_open())
            .filter_map(|(n, c)| c.overdue(now).map(|t| (*n, t)))
            .collect();
        for (ch, timeout) in overdue {
            tracing::warn!(conn = self.id, peer = %self.peer, channel = ch, timeout_ms = timeout.as_millis() as u64, "consumer ack timed out; closing the channel");
            let e = AmqpError::precondition(format!(
                "delivery acknowledgement on channel {ch} timed out. Timeout value used: {} ms. This timeout value can be configured, see consumers doc guide to learn more",
                timeout.as_millis()
            ));
            self.fail_channel(ch, e).await;
        }
        self.deadlines_armed = self
            .channels
            .values()
            .any(|c| c.is_open() && c.has_deadlines());
    }

    /// Whether this connection's user may `what` the `kind` (`queue` or `exchange`)
    /// named `name`: RabbitMQ's `403 ACCESS_REFUSED - access to queue 'q' in vhost 'v'
    /// refused for user 'u'` (a channel error) otherwise. The default exchange is named
    /// `amq.default`.
    pub(super) fn authorize(
        &self,
        what: crate::auth::Perm,
        kind: &str,
        name: &str,
    ) -> crate::error::AmqpResult<()> {
        let name = if kind == "exchange" && name.is_empty() {
            "amq.default"
        } else {
            name
        };
        if self.perm.as_ref().is_some_and(|p| p.allows(what, name)) {
            return Ok(());
        }
        Err(AmqpError::new(
            ReplyCode::AccessRefused,
            format!(
                "access to {kind} '{name}' in vhost '{}' refused for user '{}'",
                self.vhost.name(),
                self.user
            ),
        ))
    }

    /// [`Conn::authorize`] of a write to `exchange` for a publish, remembering the last
    /// answer (one string comparison per publish to the same exchange).
    pub(super) fn authorize_publish(
        &mut self,
        exchange: &Arc<str>,
    ) -> crate::error::AmqpResult<()> {
        let allowed = match &self.write_checked {
            Some((x, ok)) if Arc::ptr_eq(x, exchange) || x == exchange => *ok,
            _ => {
                let ok = self
                    .authorize(crate::auth::Perm::Write, "exchange", exchange)
                    .is_ok();
                self.write_checked = Some((exchange.clone(), ok));
                ok
            }
        };
        if allowed {
            Ok(())
        } else {
            self.authorize(crate::auth::Perm::Write, "exchange", exchange)
        }
    }

    /// A publish arrived while a resource alarm is on: stop reading this connection's
    /// socket until the alarms clear, and tell a client that takes it, with RabbitMQ's
    /// reason (`low on memory`, `low on disk`).
    fn block(&mut self) {
        self.blocked = true;
        let reason = self
            .state
            .alarms
            .current()
            .blocked_reason()
            .unwrap_or("low on memory");
        tracing::debug!(conn = self.id, peer = %self.peer, reason, "publisher blocked by a resource alarm");
        if self.blocked_notify {
            self.send_method(
                0,
                ConnectionBlocked {
                    reason: reason.into(),
                }
                .into(),
            );
            self.flush();
        }
    }

    /// The alarms cleared: read the socket again, and tell a client that takes it.
    fn unblock(&mut self) {
        self.blocked = false;
        tracing::debug!(conn = self.id, peer = %self.peer, "publisher unblocked");
        if self.blocked_notify {
            self.send_method(0, ConnectionUnblocked.into());
            self.flush();
        }
    }

    /// Appends a method frame to the out buffer.
    fn send_method(&mut self, channel: u16, method: Method) {
        encode_method(&mut self.out, channel, &method);
    }

    /// Sends what is buffered, then `bytes` as they are (a large body, not copied).
    fn send_bytes(&mut self, bytes: Bytes) {
        self.flush();
        self.writer.send(bytes);
        self.last_sent = Instant::now();
    }

    /// Hands the out buffer to the writer.
    fn flush(&mut self) {
        if !self.out.is_empty() {
            self.writer.send_buf(&mut self.out);
            self.last_sent = Instant::now();
        }
    }

    /// The channel `ch`, which the caller knows is open.
    // Every caller runs on a channel the frame dispatch found open, and nothing between
    // that check and this call removes a channel: a miss is a bug in this module, not
    // input.
    #[allow(clippy::expect_used)]
    fn channel(&mut self, ch: u16) -> &mut Channel {
        self.channels
            .get_mut(&ch)
            .expect("channel checked open by the caller")
    }
}

/// A connection task that ends without its cleanup (it panicked) still gives back what
/// its channels hold, leaves the registry and deletes its exclusive queues, so nothing
/// stays stuck behind it. After a normal end there is nothing left to do here; after
/// [`crate::Broker::crash`] (a simulated `kill -9`) nothing is done, on purpose.
impl Drop for Conn {
    fn drop(&mut self) {
        if self.state.killed.is_cancelled() {
            return;
        }
        let id = self.id;
        for (ch, channel) in self.channels.iter_mut() {
            for (q, requeue) in channel.release() {
                q.send_now(QueueCommand::ChannelClosed {
                    conn_id: id,
                    channel: *ch,
                    requeue: requeue.into_boxed_slice(),
                });
            }
        }
        self.unregister();
        let exclusive = std::mem::take(&mut self.exclusive_queues);
        if exclusive.is_empty() {
            return;
        }
        let vhost = self.vhost.clone();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                for q in exclusive {
                    if vhost.queue(q.name()).is_some_and(|x| x.same(&q)) {
                        let _ = vhost.delete_queue(q.name(), id, false, false).await;
                    }
                }
            });
        }
    }
}
