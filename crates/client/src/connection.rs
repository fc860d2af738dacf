//! [`Connection`]: opening a connection (TCP, protocol header, PLAIN authentication,
//! `tune` negotiation, `connection.open`), handing out channels, the
//! `connection.blocked` notifications and the clean close. The socket itself belongs to
//! the background task in `io_loop` once the handshake is done.

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use minimq_protocol::frame::encode_method;
use minimq_protocol::{
    ConnectionCloseOk, ConnectionOpen, ConnectionStartOk, ConnectionTune, ConnectionTuneOk,
    FieldTable, FieldValue, Frame, FrameCodec, Method, PROTOCOL_HEADER,
};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::FramedRead;

use crate::channel::Channel;
use crate::config::ConnectionConfig;
use crate::error::{Error, Result};
use crate::handle::{ChannelCore, ConnHandle, ConnectionShared, Request};
use crate::io_loop::IoLoop;
use crate::transport::{self, ReadSide, WriteSide};

pub use crate::handle::{BlockedState, TuneParams};

/// How many requests from handles may wait for the connection task.
const REQUEST_QUEUE: usize = 256;
/// Read buffer per connection: a burst of small deliveries (about 130 octets each with
/// their frames) is decoded from one read instead of one read per 60 messages.
const READ_BUFFER: usize = 64 * 1024;

/// An open AMQP connection. A background task owns the socket; this is a handle to it.
///
/// Open channels with [`Connection::open_channel`] and finish with
/// [`Connection::close`]. If every handle (connection, channels, consumers, deliveries)
/// is dropped without `close`, the task closes the connection by itself.
///
/// ```no_run
/// # async fn demo() -> minimq_client::Result<()> {
/// use minimq_client::{Connection, QueueDeclareOptions, FieldTable};
/// let conn = Connection::connect("amqp://guest:guest@localhost:5672/%2f").await?;
/// let channel = conn.open_channel().await?;
/// channel.queue_declare("hello", QueueDeclareOptions::default(), FieldTable::new()).await?;
/// conn.close().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection {
    handle: ConnHandle,
}

impl Connection {
    /// Connects to the broker named by an `amqp://` URL; see
    /// [`ConnectionConfig::from_url`] for the syntax and defaults.
    pub async fn connect(url: &str) -> Result<Connection> {
        Connection::connect_with(url.parse()?).await
    }

    /// Connects with explicit settings: TCP (and TLS for `amqps`), then the handshake (PLAIN authentication,
    /// tune negotiation, `connection.open` of the vhost), all within
    /// `config.connection_timeout`.
    ///
    /// A refused login fails with [`Error::ConnectionClosed`] and code 403 (the client
    /// announces `authentication_failure_close`); an unknown vhost with code 530; a server
    /// certificate that is not trusted with [`Error::Tls`].
    pub async fn connect_with(config: ConnectionConfig) -> Result<Connection> {
        let limit = config.connection_timeout;
        tokio::time::timeout(limit, Connection::open(&config))
            .await
            .map_err(|_| Error::ConnectTimeout(limit))?
    }

    async fn open(config: &ConnectionConfig) -> Result<Connection> {
        let (read, write) = transport::connect(config).await?;
        let mut hs = Handshake {
            reader: FramedRead::with_capacity(read, FrameCodec::new(0), READ_BUFFER),
            writer: write,
        };
        let (tune, server_properties) = hs.run(config).await?;
        tracing::debug!(?tune, host = %config.host, port = config.port, vhost = %config.vhost, "connection open");

        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let shared = Arc::new(ConnectionShared {
            status: OnceLock::new(),
            blocked: watch::Sender::new(BlockedState::Unblocked),
            tune,
            server_properties,
        });
        let io = IoLoop::new(hs.reader, hs.writer, rx, tx.downgrade(), shared.clone());
        tokio::spawn(io.run());
        Ok(Connection {
            handle: ConnHandle { tx, shared },
        })
    }

    /// Opens a new channel on the lowest free channel number.
    pub async fn open_channel(&self) -> Result<Channel> {
        let (reply, rx) = oneshot::channel();
        self.handle.send(Request::OpenChannel { reply }).await?;
        let shared = rx.await.map_err(|_| self.handle.shared.closed_error())??;
        Ok(Channel::new(ChannelCore::new(shared, self.handle.clone())))
    }

    /// Closes the connection cleanly: `connection.close` (200), then waits for
    /// `close-ok`. Every pending call on every channel fails with
    /// [`Error::ConnectionClosed`]; consumers end. Closing a connection that this client
    /// already closed is `Ok`; one the server closed or that failed returns why. A close
    /// the server does not answer within 10 s of the last write progress fails with a
    /// timeout ([`Error::Io`]): frames queued before it may not have been sent.
    pub async fn close(&self) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        let result = match self.handle.send(Request::Close { reply }).await {
            Ok(()) => rx
                .await
                .unwrap_or_else(|_| Err(self.handle.shared.closed_error())),
            Err(e) => Err(e),
        };
        match result {
            Err(Error::ConnectionClosed { code: 200, .. }) => Ok(()),
            other => other,
        }
    }

    /// Whether the connection is still usable.
    pub fn is_open(&self) -> bool {
        self.handle.shared.closed_reason().is_none()
    }

    /// Why the connection ended, once it has.
    pub fn close_reason(&self) -> Option<Error> {
        self.handle.shared.closed_reason()
    }

    /// The negotiated limits.
    pub fn tune(&self) -> TuneParams {
        self.handle.shared.tune
    }

    /// The `server-properties` table of `connection.start` (product, version,
    /// capabilities, ...).
    pub fn server_properties(&self) -> &FieldTable {
        &self.handle.shared.server_properties
    }

    /// Watches `connection.blocked` / `connection.unblocked`. The receiver always holds
    /// the current state; `changed().await` wakes on every transition.
    pub fn blocked(&self) -> watch::Receiver<BlockedState> {
        self.handle.shared.blocked.subscribe()
    }
}

/// The client side of the opening handshake, before the connection task exists.
struct Handshake {
    reader: FramedRead<ReadSide, FrameCodec>,
    writer: WriteSide,
}

impl Handshake {
    async fn run(&mut self, config: &ConnectionConfig) -> Result<(TuneParams, FieldTable)> {
        self.writer.write_all(&PROTOCOL_HEADER).await?;

        let start = match self.next_method().await? {
            Method::ConnectionStart(start) => start,
            other => return Err(unexpected(&other)),
        };
        if (start.version_major, start.version_minor) != (0, 9) {
            return Err(Error::Handshake(format!(
                "server speaks AMQP {}-{}, not 0-9",
                start.version_major, start.version_minor
            )));
        }
        let offers_plain = start
            .mechanisms
            .split(|b| *b == b' ')
            .any(|m| m == b"PLAIN");
        if !offers_plain {
            return Err(Error::Handshake(format!(
                "server does not offer PLAIN authentication (offers {:?})",
                String::from_utf8_lossy(&start.mechanisms)
            )));
        }
        let mut response = Vec::new();
        response.push(0);
        response.extend_from_slice(config.username.as_bytes());
        response.push(0);
        response.extend_from_slice(config.password.as_bytes());
        self.send(Method::ConnectionStartOk(ConnectionStartOk {
            client_properties: client_properties(config),
            mechanism: "PLAIN".into(),
            response: Bytes::from(response),
            locale: "en_US".into(),
        }))
        .await?;

        let tune = match self.next_method().await? {
            Method::ConnectionTune(tune) => negotiate(config, &tune),
            Method::ConnectionSecure(_) => {
                return Err(Error::Handshake(
                    "server sent connection.secure; only PLAIN is supported".into(),
                ))
            }
            other => return Err(self.refused(other).await),
        };
        self.send(Method::ConnectionTuneOk(ConnectionTuneOk {
            channel_max: tune.channel_max,
            frame_max: tune.frame_max,
            heartbeat: tune.heartbeat,
        }))
        .await?;
        self.reader.decoder_mut().set_frame_max(tune.frame_max);

        self.send(Method::ConnectionOpen(ConnectionOpen {
            virtual_host: config.vhost.clone(),
        }))
        .await?;
        match self.next_method().await? {
            Method::ConnectionOpenOk(_) => Ok((tune, start.server_properties)),
            other => Err(self.refused(other).await),
        }
    }

    /// The next method on channel 0, skipping heartbeats.
    async fn next_method(&mut self) -> Result<Method> {
        loop {
            let incoming = match self.reader.next().await {
                Some(Ok(incoming)) => incoming,
                Some(Err(minimq_protocol::CodecError::Io(e))) => return Err(e.into()),
                Some(Err(minimq_protocol::CodecError::Decode(e))) => {
                    return Err(Error::Handshake(format!(
                        "server did not answer with AMQP 0-9-1 frames ({e})"
                    )))
                }
                None => {
                    return Err(Error::io(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "server closed the socket during the handshake",
                    )))
                }
            };
            match incoming {
                Frame::Method(0, method) => return Ok(method),
                Frame::Heartbeat => continue,
                other => {
                    return Err(Error::Handshake(format!(
                        "unexpected {other:?} during the handshake"
                    )))
                }
            }
        }
    }

    async fn send(&mut self, method: Method) -> Result<()> {
        let mut buf = BytesMut::new();
        encode_method(&mut buf, 0, &method);
        self.writer.write_all(&buf).await?;
        Ok(())
    }

    /// Turns a `connection.close` (bad credentials, unknown vhost) into its error,
    /// answering it with `close-ok` as the spec asks.
    async fn refused(&mut self, method: Method) -> Error {
        match method {
            Method::ConnectionClose(close) => {
                let _ = self
                    .send(Method::ConnectionCloseOk(ConnectionCloseOk))
                    .await;
                Error::ConnectionClosed {
                    code: close.reply_code,
                    text: close.reply_text,
                }
            }
            other => unexpected(&other),
        }
    }
}

fn unexpected(method: &Method) -> Error {
    Error::Handshake(format!("unexpected {} during the handshake", method.name()))
}

/// `tune-ok` values: for each limit the smaller non-zero value wins (0 means "no
/// limit"). A client that asks for heartbeat 0 turns heartbeats off.
fn negotiate(config: &ConnectionConfig, server: &ConnectionTune) -> TuneParams {
    fn smaller_non_zero<T: Ord + Copy + Default>(client: Option<T>, server: T) -> T {
        let zero = T::default();
        match client {
            None => server,
            Some(c) if c == zero => server,
            Some(c) if server == zero => c,
            Some(c) => c.min(server),
        }
    }
    let heartbeat = match config.heartbeat {
        Some(0) => 0,
        client => smaller_non_zero(client, server.heartbeat),
    };
    TuneParams {
        channel_max: smaller_non_zero(config.channel_max, server.channel_max),
        frame_max: smaller_non_zero(config.frame_max, server.frame_max),
        heartbeat,
    }
}

/// The `client-properties` table of `start-ok`.
fn client_properties(config: &ConnectionConfig) -> FieldTable {
    let capabilities: FieldTable = [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "connection.blocked",
        "authentication_failure_close",
        "exchange_exchange_bindings",
    ]
    .into_iter()
    .map(|c| (c, true))
    .collect();
    let mut props = FieldTable::new();
    props.insert("product", "minimq-client");
    props.insert("version", env!("CARGO_PKG_VERSION"));
    props.insert("platform", "Rust");
    props.insert("capabilities", FieldValue::Table(capabilities));
    if let Some(name) = &config.connection_name {
        props.insert("connection_name", name.as_str());
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tune(channel_max: u16, frame_max: u32, heartbeat: u16) -> ConnectionTune {
        ConnectionTune {
            channel_max,
            frame_max,
            heartbeat,
        }
    }

    #[test]
    fn negotiation_takes_the_smaller_non_zero_value() {
        let mut c = ConnectionConfig::default();
        let got = negotiate(&c, &tune(2047, 131072, 60));
        assert_eq!(
            (got.channel_max, got.frame_max, got.heartbeat),
            (2047, 131072, 60)
        );

        c.channel_max = Some(10);
        c.frame_max = Some(1_000_000);
        c.heartbeat = Some(5);
        let got = negotiate(&c, &tune(2047, 131072, 60));
        assert_eq!(
            (got.channel_max, got.frame_max, got.heartbeat),
            (10, 131072, 5)
        );

        // The server's 0 means "no limit": the client's value wins.
        let got = negotiate(&c, &tune(0, 0, 0));
        assert_eq!(
            (got.channel_max, got.frame_max, got.heartbeat),
            (10, 1_000_000, 5)
        );

        // The client's 0 means "no limit" too, except heartbeat 0, which turns them off.
        c.channel_max = Some(0);
        c.frame_max = Some(0);
        c.heartbeat = Some(0);
        let got = negotiate(&c, &tune(2047, 131072, 60));
        assert_eq!(
            (got.channel_max, got.frame_max, got.heartbeat),
            (2047, 131072, 0)
        );
    }

    #[test]
    fn client_properties_announce_the_capabilities() {
        let props = client_properties(&ConnectionConfig::default());
        assert_eq!(
            props.get("product").and_then(|v| v.as_str()),
            Some("minimq-client")
        );
        let Some(FieldValue::Table(caps)) = props.get("capabilities") else {
            panic!("no capabilities table");
        };
        for cap in [
            "publisher_confirms",
            "consumer_cancel_notify",
            "basic.nack",
            "connection.blocked",
            "authentication_failure_close",
        ] {
            assert_eq!(caps.get(cap).and_then(|v| v.as_bool()), Some(true), "{cap}");
        }
    }
}
