//! What a connection runs over: plain TCP (`amqp://`) or TLS over it (`amqps://`, rustls
//! with ring). This module owns opening the stream, the TLS client configuration (trust
//! roots: the system's store or a given CA file) and the split into the read side the
//! frame decoder reads and the write side the connection task writes.
//!
//! Plain TCP keeps its fast path: the connection task writes to the socket directly when
//! it takes the bytes at once (`try_write`). A TLS stream has no such non-blocking write,
//! so `WriteSide::try_write` says `WouldBlock` and the select loop's write does it.
//!
//! A TLS write counts its octets as written only once their records have left for the
//! socket (see `Tls`): rustls takes plaintext into its own buffer and may keep records
//! there when the socket is full, and the connection task, seeing its outbox empty, would
//! never write again to push them out.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf, ReadHalf, WriteHalf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;

use crate::config::ConnectionConfig;
use crate::error::{Error, Result};

/// The read side: what the frame decoder reads.
#[derive(Debug)]
pub(crate) enum ReadSide {
    Tcp(OwnedReadHalf),
    Tls(ReadHalf<TlsStream<TcpStream>>),
}

/// The write side: what the handshake and then the connection task write to.
#[derive(Debug)]
pub(crate) enum WriteSide {
    Tcp(OwnedWriteHalf),
    Tls(Tls),
}

/// The write half of a TLS stream and how many octets rustls took but has not yet sent.
///
/// `poll_write` hands plaintext to rustls and then flushes; while the flush is pending
/// it answers `Pending` and keeps the count, and the next call (with the same octets
/// first, as the connection task's outbox and `write_all` both do) only flushes and then
/// reports them written.
#[derive(Debug)]
pub(crate) struct Tls {
    half: WriteHalf<TlsStream<TcpStream>>,
    unflushed: usize,
}

/// Opens TCP to the configured host and port, then, for `amqps`, the TLS handshake with
/// the host name as the name the certificate must carry.
pub(crate) async fn connect(config: &ConnectionConfig) -> Result<(ReadSide, WriteSide)> {
    let stream = TcpStream::connect((config.host.as_str(), config.port)).await?;
    stream.set_nodelay(true)?;
    if !config.tls {
        let (r, w) = stream.into_split();
        return Ok((ReadSide::Tcp(r), WriteSide::Tcp(w)));
    }
    let tls = client_config(config.ca_cert.as_deref())?;
    let name = ServerName::try_from(config.host.clone())
        .map_err(|_| Error::Tls(format!("{:?} is not a valid TLS server name", config.host)))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|e| {
            // rustls' own error (an untrusted certificate, a name that does not match, an
            // alert from the server) comes wrapped in an io::Error; say it as it is.
            let why = match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                Some(tls) => tls.to_string(),
                None => e.to_string(),
            };
            Error::Tls(format!(
                "handshake with {}:{} failed: {why}",
                config.host, config.port
            ))
        })?;
    let (r, w) = tokio::io::split(stream);
    Ok((
        ReadSide::Tls(r),
        WriteSide::Tls(Tls {
            half: w,
            unflushed: 0,
        }),
    ))
}

/// A rustls client configuration trusting the CA certificates in `ca_file` (PEM), or the
/// system's trust store without one. Servers' certificates are checked against these
/// roots and the host name; no client certificate is offered.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>> {
    let roots = match ca_file {
        Some(path) => Arc::new(file_roots(path)?),
        None => system_roots()?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The CA certificates of a PEM file (at least one).
fn file_roots(path: &Path) -> Result<rustls::RootCertStore> {
    let bad = |why: &dyn std::fmt::Display| Error::Tls(format!("{}: {why}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(&e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(&e))?;
    if certs.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots.add(cert).map_err(|e| bad(&e))?;
    }
    Ok(roots)
}

/// The system's trust store, read once per process: reading and parsing some hundred
/// certificates for every connection would cost more than the handshake itself.
fn system_roots() -> Result<Arc<rustls::RootCertStore>> {
    static ROOTS: OnceLock<std::result::Result<Arc<rustls::RootCertStore>, String>> =
        OnceLock::new();
    ROOTS
        .get_or_init(|| {
            let found = rustls_native_certs::load_native_certs();
            let mut roots = rustls::RootCertStore::empty();
            // Certificates the store holds but rustls cannot use are skipped, as browsers do.
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "it is empty".to_string(), ToString::to_string);
                return Err(format!(
                    "no trusted certificate in the system's store ({why}); give a CA file"
                ));
            }
            Ok(Arc::new(roots))
        })
        .clone()
        .map_err(Error::Tls)
}

impl WriteSide {
    /// Writes what the socket takes without waiting; TLS always says `WouldBlock`.
    pub(crate) fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            WriteSide::Tcp(w) => w.try_write(buf),
            WriteSide::Tls(_) => Err(io::ErrorKind::WouldBlock.into()),
        }
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

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteSide::Tls(t) => {
                if t.unflushed == 0 {
                    t.unflushed = ready!(Pin::new(&mut t.half).poll_write(cx, buf))?;
                    if t.unflushed == 0 {
                        return Poll::Ready(Ok(0));
                    }
                }
                ready!(Pin::new(&mut t.half).poll_flush(cx))?;
                Poll::Ready(Ok(std::mem::take(&mut t.unflushed)))
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteSide::Tls(t) => Pin::new(&mut t.half).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteSide::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteSide::Tls(t) => Pin::new(&mut t.half).poll_shutdown(cx),
        }
    }
}
