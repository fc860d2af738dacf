//! The client's error type. Every failure a caller can see is one [`Error`] variant; the
//! type is `Clone` because one server-side close fails many pending calls at once.

use std::sync::Arc;
use std::time::Duration;

/// Result alias used throughout the client.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong talking to the broker.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The connection URL could not be parsed.
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),

    /// The socket failed, or the server went away without a `connection.close`.
    #[error("I/O error: {0}")]
    Io(#[source] Arc<std::io::Error>),

    /// TLS failed: the server's certificate is not trusted or does not name the host, the
    /// handshake was refused, or the CA file could not be read.
    #[error("TLS: {0}")]
    Tls(String),

    /// TCP connect plus the AMQP handshake took longer than `connection_timeout`.
    #[error("connection attempt timed out after {0:?}")]
    ConnectTimeout(Duration),

    /// The server does not speak AMQP 0-9-1 or offers nothing this client supports.
    #[error("handshake failed: {0}")]
    Handshake(String),

    /// The connection was closed, by the server (`connection.close` with its reply code
    /// and text) or by this client (code 200). Every call on the connection fails with it.
    #[error("connection closed: {code} {text}")]
    ConnectionClosed {
        /// The AMQP reply code, e.g. 320 `CONNECTION_FORCED` or 403 `ACCESS_REFUSED`.
        code: u16,
        /// The server's reply text.
        text: String,
    },

    /// The channel was closed, by the server (`channel.close`, e.g. 404 `NOT_FOUND`) or by
    /// this client (code 200). Every pending and later call on the channel fails with it.
    #[error("channel closed: {code} {text}")]
    ChannelClosed {
        /// The AMQP reply code, e.g. 404 `NOT_FOUND` or 406 `PRECONDITION_FAILED`.
        code: u16,
        /// The server's reply text.
        text: String,
    },

    /// Nothing arrived from the server for two heartbeat intervals.
    #[error("server silent for {0:?} (two heartbeat intervals); connection considered dead")]
    MissedHeartbeats(Duration),

    /// The server sent something this client cannot make sense of. The client closes the
    /// connection when this happens.
    #[error("protocol error: {0}")]
    Protocol(String),

    /// Every channel id up to the negotiated `channel_max` is in use.
    #[error("no free channel id (channel_max is {0})")]
    ChannelsExhausted(u16),

    /// An argument the server would reject anyway, e.g. a name over 255 octets.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// The call does not fit the current state, e.g. acknowledging a delivery twice or
    /// waiting for confirms on a channel that never called `confirm_select`.
    #[error("invalid state: {0}")]
    InvalidState(String),
}

impl Error {
    /// The AMQP reply code, for [`Error::ConnectionClosed`] and [`Error::ChannelClosed`].
    pub fn reply_code(&self) -> Option<u16> {
        match self {
            Error::ConnectionClosed { code, .. } | Error::ChannelClosed { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Wraps an I/O error.
    pub(crate) fn io(e: std::io::Error) -> Error {
        Error::Io(Arc::new(e))
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::io(e)
    }
}
