//! The handle protocol and the state the connection task shares with its handles, so
//! that neither side imports the other:
//! - what handles send the connection task: [`Request`] (acks as a small
//!   [`Settlement`]), and what comes back: [`Reply`] with its [`Content`], deliveries
//!   through a [`ConsumerSink`];
//! - the shared state: [`ConnectionShared`] and [`ChannelShared`] (end reasons, the
//!   blocked watch, the negotiated limits, the returns subscriber, the confirm-mode flag);
//! - what every handle holds: [`ConnHandle`] (the request queue) and [`ChannelCore`] (a
//!   channel's call, cast and publish plumbing);
//! - the public data types both sides speak in: [`Confirmation`], [`BlockedState`] and
//!   [`TuneParams`], re-exported where users find them (`confirm`, `connection`).
//!
//! It imports only `error`, `message` (`Delivery`, which carries an `Acker`, for
//! [`ConsumerSink`]) and `returned` (`ReturnedMessage`). The connection task (`io_loop`)
//! and the handle types (`channel`, `acker`, `confirm`, `consumer`, `returned`) import
//! it and not each other; `connection` alone imports `io_loop` (to spawn it) and
//! `channel` (to make channels).

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use bytes::Bytes;
use minimq_protocol::{BasicProperties, FieldTable, Method};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, Result};
use crate::message::Delivery;
use crate::returned::ReturnedMessage;

// ----- requests and replies -----

/// What a handle asks the connection task to do.
pub(crate) enum Request {
    /// Open a channel on a free number.
    OpenChannel {
        reply: oneshot::Sender<Result<Arc<ChannelShared>>>,
    },
    /// Send a synchronous method and answer with its reply.
    Call {
        channel: Arc<ChannelShared>,
        /// Boxed: calls are rare, and the queue moves every request.
        method: Box<Method>,
        /// For `basic.consume`: where the consumer's deliveries go.
        consumer: Option<ConsumerSink>,
        reply: oneshot::Sender<Result<Reply>>,
    },
    /// Send an ack, nack or reject; answer once it is queued (if anyone asks).
    Cast {
        channel: Arc<ChannelShared>,
        settle: Settlement,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    /// Publish a message; answer with its confirmation.
    Publish {
        channel: Arc<ChannelShared>,
        /// Its `basic.publish` and content header frames, encoded by the caller.
        head: Bytes,
        body: Bytes,
        /// Where its confirmation goes; `None` when the caller saw the channel outside
        /// confirm mode (if `confirm.select` went out meanwhile, it is counted all the same).
        confirm: Option<oneshot::Sender<Result<Confirmation>>>,
    },
    /// Answer once every outstanding confirm of the channel is in.
    WaitForConfirms {
        channel: Arc<ChannelShared>,
        reply: oneshot::Sender<Result<bool>>,
    },
    /// Close the connection.
    Close { reply: oneshot::Sender<Result<()>> },
}

/// The methods a client sends without a reply ([`Request::Cast`]), in fewer octets than
/// a [`Method`] (every request is moved through the connection's queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        delivery_tag: u64,
        requeue: bool,
    },
}

impl Settlement {
    pub(crate) fn method(self) -> Method {
        match self {
            Settlement::Ack {
                delivery_tag,
                multiple,
            } => Method::BasicAck(minimq_protocol::BasicAck {
                delivery_tag,
                multiple,
            }),
            Settlement::Nack {
                delivery_tag,
                multiple,
                requeue,
            } => Method::BasicNack(minimq_protocol::BasicNack {
                delivery_tag,
                multiple,
                requeue,
            }),
            Settlement::Reject {
                delivery_tag,
                requeue,
            } => Method::BasicReject(minimq_protocol::BasicReject {
                delivery_tag,
                requeue,
            }),
        }
    }
}

/// The reply to a [`Request::Call`]: the `-ok` method, and for `basic.get-ok` the message.
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) method: Method,
    pub(crate) content: Option<Content>,
}

/// A message's properties and body, reassembled from its header and body frames.
#[derive(Debug, Default)]
pub(crate) struct Content {
    pub(crate) properties: Arc<BasicProperties>,
    pub(crate) body: Bytes,
}

/// Where one consumer's deliveries go.
pub(crate) struct ConsumerSink {
    pub(crate) tx: mpsc::UnboundedSender<Result<Delivery>>,
    pub(crate) no_ack: bool,
}

// ----- public data types -----

/// The broker's verdict on one published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// `basic.ack`: the broker has the message (on disk, for persistent messages to
    /// durable queues). An unroutable mandatory message is acked too, after its
    /// `basic.return`.
    Ack,
    /// `basic.nack`: the broker could not take the message.
    Nack,
    /// The channel is not in confirm mode, so there is nothing to wait for.
    NotRequested,
}

impl Confirmation {
    /// Whether this is [`Confirmation::Ack`].
    pub fn is_ack(&self) -> bool {
        matches!(self, Confirmation::Ack)
    }

    /// Whether this is [`Confirmation::Nack`].
    pub fn is_nack(&self) -> bool {
        matches!(self, Confirmation::Nack)
    }
}

/// The limits both sides agreed on in `connection.tune` / `tune-ok`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TuneParams {
    /// Highest usable channel number (0 means 65535).
    pub channel_max: u16,
    /// Largest frame in octets, framing included (0 = no limit). Bodies are split into
    /// frames of at most this size.
    pub frame_max: u32,
    /// Heartbeat interval in seconds (0 = heartbeats off).
    pub heartbeat: u16,
}

/// Whether the broker has stopped reading from this connection to apply back-pressure
/// (`connection.blocked`, sent when a memory or disk alarm goes off).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BlockedState {
    /// Publishing flows normally.
    #[default]
    Unblocked,
    /// The broker is not reading publishes from this connection.
    Blocked {
        /// The broker's reason, e.g. `low on memory`.
        reason: String,
    },
}

impl BlockedState {
    /// Whether the connection is blocked.
    pub fn is_blocked(&self) -> bool {
        matches!(self, BlockedState::Blocked { .. })
    }
}

// ----- shared state and handles -----

/// State the connection task shares with every handle.
#[derive(Debug)]
pub(crate) struct ConnectionShared {
    /// Set, once, when the connection is over: why.
    pub(crate) status: OnceLock<Error>,
    pub(crate) blocked: watch::Sender<BlockedState>,
    pub(crate) tune: TuneParams,
    pub(crate) server_properties: FieldTable,
}

impl ConnectionShared {
    /// Records why the connection ended (the first reason wins).
    pub(crate) fn set_closed(&self, reason: Error) {
        let _ = self.status.set(reason);
    }

    /// Why the connection ended, if it has.
    pub(crate) fn closed_reason(&self) -> Option<Error> {
        self.status.get().cloned()
    }

    /// The error a call on a finished connection fails with.
    pub(crate) fn closed_error(&self) -> Error {
        self.closed_reason()
            .unwrap_or_else(|| Error::ConnectionClosed {
                code: 0,
                text: "connection task stopped".into(),
            })
    }
}

/// What channel handles, ackers and consumers hold to reach the connection task.
#[derive(Debug, Clone)]
pub(crate) struct ConnHandle {
    pub(crate) tx: mpsc::Sender<Request>,
    pub(crate) shared: Arc<ConnectionShared>,
}

impl ConnHandle {
    /// Queues a request for the connection task.
    pub(crate) async fn send(&self, request: Request) -> Result<()> {
        // Room is the common case: no send future (and no copy of the request into it).
        match self.tx.try_send(request) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(request)) => self
                .tx
                .send(request)
                .await
                .map_err(|_| self.shared.closed_error()),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(self.shared.closed_error()),
        }
    }
}

/// State the connection task shares with the handles of one channel. Requests carry
/// the `Arc`, so the task can tell this channel from a later one that reuses its number.
#[derive(Debug)]
pub(crate) struct ChannelShared {
    pub(crate) id: u16,
    /// Set, once, when the channel is over: why.
    closed: OnceLock<Error>,
    /// Where `basic.return`s go, if anybody listens.
    returns: Mutex<Option<mpsc::UnboundedSender<ReturnedMessage>>>,
    /// Set by the connection task when it sends `confirm.select`: publishes from then on
    /// get a confirm to wait for.
    pub(crate) confirming: AtomicBool,
}

impl ChannelShared {
    pub(crate) fn new(id: u16) -> ChannelShared {
        ChannelShared {
            id,
            closed: OnceLock::new(),
            returns: Mutex::new(None),
            confirming: AtomicBool::new(false),
        }
    }

    /// Records why the channel ended (the first reason wins) and ends the returns stream.
    pub(crate) fn set_closed(&self, reason: Error) {
        let _ = self.closed.set(reason);
        lock(&self.returns).take();
    }

    /// Why the channel ended, if it has.
    pub(crate) fn closed_reason(&self) -> Option<Error> {
        self.closed.get().cloned()
    }

    /// The current `basic.return` subscriber.
    pub(crate) fn returns_subscriber(&self) -> Option<mpsc::UnboundedSender<ReturnedMessage>> {
        lock(&self.returns).clone()
    }

    pub(crate) fn subscribe_returns(&self) -> mpsc::UnboundedReceiver<ReturnedMessage> {
        let (tx, rx) = mpsc::unbounded_channel();
        if self.closed_reason().is_none() {
            *lock(&self.returns) = Some(tx);
        }
        rx
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What every channel-bound handle (channel, acker, consumer, confirm) holds.
#[derive(Debug, Clone)]
pub(crate) struct ChannelCore {
    pub(crate) shared: Arc<ChannelShared>,
    pub(crate) conn: ConnHandle,
}

impl ChannelCore {
    pub(crate) fn new(shared: Arc<ChannelShared>, conn: ConnHandle) -> ChannelCore {
        ChannelCore { shared, conn }
    }

    pub(crate) fn id(&self) -> u16 {
        self.shared.id
    }

    /// The error calls on this channel fail with once it is gone.
    pub(crate) fn closed_error(&self) -> Error {
        self.shared
            .closed_reason()
            .unwrap_or_else(|| self.conn.shared.closed_error())
    }

    pub(crate) fn check_open(&self) -> Result<()> {
        match self
            .shared
            .closed_reason()
            .or_else(|| self.conn.shared.closed_reason())
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Sends a synchronous method and waits for its reply.
    pub(crate) async fn call(
        &self,
        method: Method,
        consumer: Option<ConsumerSink>,
    ) -> Result<Reply> {
        self.check_open()?;
        let (reply, rx) = oneshot::channel();
        self.conn
            .send(Request::Call {
                channel: self.shared.clone(),
                method: Box::new(method),
                consumer,
                reply,
            })
            .await?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Sends an asynchronous method (ack, nack, reject); returns once it is queued.
    pub(crate) async fn cast(&self, settle: Settlement) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send_cast(settle, Some(reply)).await?;
        rx.await.map_err(|_| self.closed_error())?
    }

    /// Sends a method that has no reply without waiting for the connection to take it
    /// (acks: a consumer acking every message must not wait on the connection task for
    /// each). Fails only if the channel is already known to be closed.
    pub(crate) async fn cast_nowait(&self, settle: Settlement) -> Result<()> {
        self.send_cast(settle, None).await
    }

    /// Hands a `Cast` to the connection; `reply` hears once it is queued there.
    async fn send_cast(
        &self,
        settle: Settlement,
        reply: Option<oneshot::Sender<Result<()>>>,
    ) -> Result<()> {
        self.check_open()?;
        self.conn
            .send(Request::Cast {
                channel: self.shared.clone(),
                settle,
                reply,
            })
            .await
    }
}
