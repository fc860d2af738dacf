//! What a connection runs over: a plain TCP socket or TLS over one (rustls). This module
//! owns the split of a stream into the connection task's read side and the writer's write
//! side, and the raw socket kept for closing with `SO_LINGER` 0.
//!
//! Plain TCP keeps its fast path: the connection task writes to the socket directly when
//! nothing waits (`try_write`). A TLS stream has no such non-blocking write, so everything
//! goes through the writer task; reads are the same either way.

use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWriteExt, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// An accepted connection's stream.
pub enum Stream {
    /// Plain TCP.
    Tcp(TcpStream),
    /// TLS, its handshake done.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The read side: what the frame decoder reads.
pub enum ReadSide {
    /// Plain TCP.
    Tcp(OwnedReadHalf),
    /// TLS.
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write side, owned by the writer (see `writer.rs`).
pub enum WriteSide {
    /// Plain TCP: shared with the connection task, which writes directly when it can.
    Tcp(Arc<OwnedWriteHalf>),
    /// TLS: the writer task's alone.
    Tls(WriteHalf<TlsStream<TcpStream>>),
}

impl Stream {
    /// The TCP socket under the stream.
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Tcp(s) => s,
            Stream::Tls(s) => s.get_ref().0,
        }
    }

    /// The broker's address of the connection.
    pub fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        self.tcp().local_addr()
    }

    /// Whether the connection is TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// Reads exactly `buf.len()` octets.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> io::Result<()> {
        use tokio::io::AsyncReadExt;
        match self {
            Stream::Tcp(s) => s.read_exact(buf).await.map(drop),
            Stream::Tls(s) => s.read_exact(buf).await.map(drop),
        }
    }

    /// Writes `buf` and flushes it.
    pub async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.write_all(buf).await,
            Stream::Tls(s) => {
                s.write_all(buf).await?;
                s.flush().await
            }
        }
    }

    /// Shuts the write side down (TLS: after its close-notify).
    pub async fn shutdown(&mut self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.shutdown().await,
            Stream::Tls(s) => s.shutdown().await,
        }
    }

    /// Splits the stream into its read and write sides, and a second handle on the TCP
    /// socket (a duplicated descriptor) for setting `SO_LINGER` when the connection ends.
    pub fn split(self) -> io::Result<(ReadSide, WriteSide, OwnedFd)> {
        use std::os::fd::AsFd;
        let fd = self.tcp().as_fd().try_clone_to_owned()?;
        Ok(match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (ReadSide::Tcp(r), WriteSide::Tcp(Arc::new(w)), fd)
            }
            Stream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ReadSide::Tls(r), WriteSide::Tls(w), fd)
            }
        })
    }
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadSide::Tcp(r) => Pin::new(r).poll_read(cx, buf),
            ReadSide::Tls(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}
