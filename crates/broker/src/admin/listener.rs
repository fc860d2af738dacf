//! The management API's connections: an accept loop that hands each socket to hyper's
//! HTTP/1.1 server with the [`router`](super::router) behind it, the limits every
//! request is held to, and the graceful shutdown that ends it together with the broker.
//!
//! Limits (bad input is an HTTP error, never a panic, a hang or unbounded memory):
//! - request line plus headers: at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`] lines
//!   (431 past either), read within [`HEAD_TIMEOUT`]; the same timeout closes a
//!   keep-alive connection that sends no next request (hyper starts it when it waits for
//!   a request head);
//! - body: at most [`MAX_BODY`] bytes by `Content-Length` (413); no route reads a body,
//!   so `Transfer-Encoding` is refused (501) rather than read without a length;
//! - a handler has [`REQUEST_TIMEOUT`] to answer (503 after); a client that takes none of
//!   its answer for [`WRITE_TIMEOUT`] is dropped;
//! - an HTTP version other than 1.0 / 1.1 is answered 505, as RabbitMQ's cowboy does
//!   (hyper alone would say 400): the first request line is looked at before hyper reads it.
//!
//! With a TLS acceptor (`--http-tls-cert`) every connection is HTTPS: the TLS handshake
//! runs in the connection's own task within [`HEAD_TIMEOUT`], so a slow or plain-HTTP
//! client holds up nobody else, and a failed one is dropped with a debug line.
//!
//! A handler may leave work for after its answer ([`AfterAnswer`], a response extension):
//! it runs once the answer is written to the socket (or the connection has ended), so a
//! client holds the answer before it sees what that work does elsewhere.
//!
//! Keep-alive is HTTP/1.1's default; a client may half-close after its request and still
//! get its answer. On shutdown the accept loop stops, idle connections close at once and
//! a request in progress gets [`SHUTDOWN_GRACE`] to finish.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, SERVER, TRANSFER_ENCODING};
use axum::http::{Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use bytes::{Buf, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ApiError;
use crate::server::BrokerState;

/// Largest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most header lines.
pub const MAX_HEADERS: usize = 100;
/// Largest request body (by its `Content-Length`).
pub const MAX_BODY: u64 = 1024 * 1024;
/// Time to send a whole request head, and the longest a keep-alive connection idles.
pub const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a handler has to answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a client may leave its answer unread (no byte taken) before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a request in progress has to finish once the broker shuts down.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Accepts management API connections until the broker shuts down.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    state: Arc<BrokerState>,
    tracker: TaskTracker,
) {
    let router = super::router(state.clone());
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = state.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                let _ = socket.set_nodelay(true);
                let (router, shutdown) = (router.clone(), state.shutdown.clone());
                match tls.clone() {
                    None => tracker.spawn(serve_connection(socket, peer, router, shutdown)),
                    Some(tls) => tracker.spawn(async move {
                        let accepted = tokio::select! {
                            r = tokio::time::timeout(HEAD_TIMEOUT, tls.accept(socket)) => r,
                            _ = shutdown.cancelled() => return,
                        };
                        match accepted {
                            Ok(Ok(stream)) => {
                                serve_connection(stream, peer, router, shutdown).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "HTTPS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "HTTPS handshake timed out"),
                        }
                    }),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "management API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Work a handler leaves for after its answer, as a response extension: it runs once the
/// answer is written to the client's socket, or when the connection ends without that,
/// or at once where the answer goes through no [`serve_connection`] (it runs when the
/// last copy is dropped). Meant for body-less answers: a body may still be on its way.
/// `DELETE /api/vhosts/{vhost}` closes the vhost's connections with it, after its 204,
/// as RabbitMQ closes them from an event after it has answered.
#[derive(Clone)]
pub struct AfterAnswer {
    /// Held only to be dropped: the last copy's drop runs the work.
    _work: Arc<Deferred>,
}

impl AfterAnswer {
    /// `work` to run after the answer.
    pub fn new(work: impl FnOnce() + Send + 'static) -> AfterAnswer {
        let work: Box<dyn FnOnce() + Send> = Box::new(work);
        AfterAnswer {
            _work: Arc::new(Deferred(std::sync::Mutex::new(Some(work)))),
        }
    }
}

impl std::fmt::Debug for AfterAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AfterAnswer")
    }
}

/// The work of an [`AfterAnswer`], run when the last copy goes.
struct Deferred(std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>);

impl Drop for Deferred {
    fn drop(&mut self) {
        let work = self.0.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(work) = work {
            work();
        }
    }
}

/// The [`AfterAnswer`]s of a connection's answers not yet written, shared between the
/// service (which takes them off the responses) and the [`Socket`] (which runs them once
/// a flush has written everything before it).
type Pending = Arc<std::sync::Mutex<Vec<AfterAnswer>>>;

/// The client's address, as a request extension (`guest` may log in from loopback only).
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

async fn serve_connection<S>(
    mut socket: S,
    peer: std::net::SocketAddr,
    router: Router,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = tokio::select! {
        r = tokio::time::timeout(HEAD_TIMEOUT, first_line(&mut socket)) => r,
        _ = shutdown.cancelled() => return,
    };
    let Ok(mut prefix) = first else { return };
    if prefix.is_empty() {
        return;
    }
    let unsupported = patch_unsupported_version(&mut prefix);
    let pending = Pending::default();
    let mut socket = Socket::new(prefix, socket, WRITE_TIMEOUT);
    socket.after_flush = pending.clone();
    let io = TokioIo::new(socket);
    let api = TowerToHyperService::new(router);
    let service = service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        let api = api.clone();
        let pending = pending.clone();
        async move {
            let mut response = if unsupported {
                ApiError::new(
                    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
                    "HTTP version not supported",
                )
                .into_response()
            } else {
                answer(&api, req).await
            };
            let headers = response.headers_mut();
            headers.insert(SERVER, HeaderValue::from_static("minimq"));
            headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            // hyper writes the answer's head and flushes it in the same poll that takes
            // the answer: the next flush the socket completes has it written.
            if let Some(after) = response.extensions_mut().remove::<AfterAnswer>() {
                lock(&pending).push(after);
            }
            Ok::<_, Infallible>(response)
        }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .max_header_size(MAX_HEAD)
        .max_headers(MAX_HEADERS)
        .keep_alive(true)
        .half_close(true)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = shutdown.cancelled() => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
}

/// Checks what hyper does not, then routes with a time limit.
async fn answer(api: &TowerToHyperService<Router>, req: Request<Incoming>) -> Response {
    let req = match precheck(req) {
        Ok(req) => req,
        Err(e) => return e.into_response(),
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, hyper::service::Service::call(api, req)).await {
        Ok(Ok(response)) => response,
        Ok(Err(never)) => match never {},
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the request took too long; try again",
        )
        .into_response(),
    }
}

/// Refuses bodies it will not read and malformed paths; drops one trailing `/` from an
/// API path (`/api/queues/` is `/api/queues`), as before routing.
fn precheck(mut req: Request<Incoming>) -> Result<Request<Body>, ApiError> {
    let headers = req.headers();
    if let Some(te) = headers.get(TRANSFER_ENCODING) {
        if !te.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "Transfer-Encoding is not supported; send Content-Length",
            ));
        }
    }
    let length = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if length.is_some_and(|n| n > MAX_BODY) {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body exceeds 1 MiB",
        ));
    }
    let path = req.uri().path();
    if let Some(rest) = path.strip_prefix("/api/") {
        if !well_encoded(rest) {
            return Err(ApiError::bad_request(
                "malformed percent-encoding in the path",
            ));
        }
        if let Some(trimmed) = path.strip_suffix('/').filter(|_| !rest.is_empty()) {
            let target = match req.uri().query() {
                Some(q) => format!("{trimmed}?{q}"),
                None => trimmed.to_string(),
            };
            *req.uri_mut() = target
                .parse::<Uri>()
                .map_err(|_| ApiError::bad_request("malformed path"))?;
        }
    }
    Ok(req.map(|incoming| Body::new(Drained(Some(incoming)))))
}

/// A request body that is read to its end even when its handler drops it unread (a
/// DELETE answered from its path, with a body a client sent all the same). hyper keeps a
/// connection alive only once the request's body is all read: dropped unread, the
/// connection would close after the answer, and a client that sent its next request on
/// it would find it gone. The rest is read and discarded by a task of its own, within
/// [`HEAD_TIMEOUT`]; [`MAX_BODY`] bounds it (checked by Content-Length, chunked bodies
/// refused).
struct Drained(Option<Incoming>);

impl hyper::body::Body for Drained {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, hyper::Error>>> {
        match self.0.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| hyper::body::SizeHint::with_exact(0), |b| b.size_hint())
    }
}

impl Drop for Drained {
    fn drop(&mut self) {
        use hyper::body::Body as _;
        let Some(mut body) = self.0.take().filter(|b| !b.is_end_stream()) else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            let rest = std::future::poll_fn(move |cx| loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(_))) => continue,
                    Poll::Ready(_) => return Poll::Ready(()),
                    Poll::Pending => return Poll::Pending,
                }
            });
            let _ = tokio::time::timeout(HEAD_TIMEOUT, rest).await;
        });
    }
}

/// Whether every `%` starts a two-digit hex escape and the decoded path is UTF-8 (the
/// router's own decoding passes malformed escapes through as text).
fn well_encoded(path: &str) -> bool {
    let b = path.as_bytes();
    let escapes_ok = b.iter().enumerate().all(|(i, &c)| {
        c != b'%'
            || (b.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && b.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    });
    escapes_ok
        && percent_encoding::percent_decode_str(path)
            .decode_utf8()
            .is_ok()
}

/// Reads until the first line feed (or [`MAX_HEAD`] bytes, or the end): the request line
/// to look at, handed on to hyper unconsumed through [`Socket`].
async fn first_line<S: AsyncRead + Unpin>(socket: &mut S) -> BytesMut {
    let mut buf = BytesMut::with_capacity(1024);
    while !buf.contains(&b'\n') && buf.len() < MAX_HEAD {
        match socket.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    buf
}

/// When the request line names an HTTP version hyper does not speak (`HTTP/2.0`,
/// `HTTP/9.9`), rewrites it to `HTTP/1.0` so hyper reads the request, and returns true:
/// the connection then answers 505 and closes.
fn patch_unsupported_version(prefix: &mut BytesMut) -> bool {
    let Some(end) = prefix.iter().position(|&c| c == b'\n') else {
        return false;
    };
    let line_end = if end > 0 && prefix[end - 1] == b'\r' {
        end - 1
    } else {
        end
    };
    let line = &prefix[..line_end];
    let parts: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
    let [method, target, version] = parts.as_slice() else {
        return false;
    };
    if !version.starts_with(b"HTTP/") || matches!(*version, b"HTTP/1.0" | b"HTTP/1.1") {
        return false;
    }
    let mut patched = BytesMut::with_capacity(prefix.len());
    patched.extend_from_slice(method);
    patched.extend_from_slice(b" ");
    patched.extend_from_slice(target);
    patched.extend_from_slice(b" HTTP/1.0");
    patched.extend_from_slice(&prefix[line_end..]);
    *prefix = patched;
    true
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The connection's socket as hyper sees it: the first bytes, already read to look at
/// the request line, are read again before the rest; a write that makes no progress
/// for `write_limit` (a client that does not read its answer) fails, so the connection
/// ends instead of waiting forever (hyper has no write timeout of its own); and a flush
/// that completes runs the [`AfterAnswer`]s of the answers it wrote.
struct Socket<S> {
    prefix: BytesMut,
    inner: S,
    write_limit: Duration,
    write_stall: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Dropped with the socket too: what a connection that ended could not write still
    /// runs.
    after_flush: Pending,
}

impl<S> Socket<S> {
    fn new(prefix: BytesMut, inner: S, write_limit: Duration) -> Socket<S> {
        Socket {
            prefix,
            inner,
            write_limit,
            write_stall: None,
            after_flush: Pending::default(),
        }
    }

    /// After a write that could not proceed: pending until the client reads, an error
    /// once it has read nothing for `write_limit`.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let limit = self.write_limit;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stall.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client does not read its answer",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progressed<T>(&mut self, r: io::Result<T>) -> Poll<io::Result<T>> {
        self.write_stall = None;
        Poll::Ready(r)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Socket<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Socket<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => self.progressed(r),
            Poll::Pending => self.stalled(cx),
        }
    }

    /// hyper flushes after it has written all it buffered: when this completes, every
    /// answer handed to hyper before it is on the wire.
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                if r.is_ok() {
                    // Taken out first: the work runs without the lock held.
                    let done = std::mem::take(&mut *lock(&self.after_flush));
                    drop(done);
                }
                self.progressed(r)
            }
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Ready(r) => self.progressed(r),
            Poll::Pending => self.stalled(cx),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => self.progressed(r),
            Poll::Pending => self.stalled(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes() {
        assert!(well_encoded("queues/%2F/a%20b"));
        assert!(!well_encoded("queues/%zz"));
        assert!(!well_encoded("queues/%2"));
        assert!(!well_encoded("queues/%ff"));
    }

    #[tokio::test]
    async fn replays_the_prefix_and_drops_a_client_that_does_not_read() {
        use tokio::io::AsyncWriteExt;
        let (client, server) = tokio::io::duplex(64);
        let mut socket = Socket::new(
            BytesMut::from(&b"GET "[..]),
            server,
            Duration::from_millis(100),
        );
        let (mut client_rx, mut client_tx) = tokio::io::split(client);
        client_tx.write_all(b"/ HTTP/1.1").await.unwrap();
        let mut got = [0u8; 14];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"GET / HTTP/1.1");
        // Read: writes go through.
        socket.write_all(&[1; 64]).await.unwrap();
        let mut sink = [0u8; 64];
        client_rx.read_exact(&mut sink).await.unwrap();
        socket.write_all(&[2; 64]).await.unwrap();
        // Not read: the pipe stays full and the next write fails after the limit.
        let err = tokio::time::timeout(Duration::from_secs(10), socket.write_all(&[3; 64]))
            .await
            .expect("the stall limit ends the write")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn after_answer_runs_at_the_flush_that_follows_it_or_when_the_socket_goes() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::AsyncWriteExt;
        let ran = Arc::new(AtomicUsize::new(0));
        let after = || {
            let ran = ran.clone();
            AfterAnswer::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let (_client, server) = tokio::io::duplex(1024);
        let mut socket = Socket::new(BytesMut::new(), server, Duration::from_secs(10));
        lock(&socket.after_flush).push(after());
        socket
            .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 0, "written, not yet flushed");
        socket.flush().await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        socket.flush().await.unwrap();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "once");
        lock(&socket.after_flush).push(after());
        drop(socket);
        assert_eq!(
            ran.load(Ordering::SeqCst),
            2,
            "a connection that ended runs it too"
        );
        drop(after());
        assert_eq!(
            ran.load(Ordering::SeqCst),
            3,
            "an answer served elsewhere runs it at once"
        );
    }

    #[test]
    fn unsupported_versions_are_patched() {
        let mut p = BytesMut::from(&b"GET /api/overview HTTP/9.9\r\nHost: x\r\n"[..]);
        assert!(patch_unsupported_version(&mut p));
        assert_eq!(&p[..], b"GET /api/overview HTTP/1.0\r\nHost: x\r\n");
        for ok in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"GET / HTTP/1.0\n",
            b"garbage\r\n",
            b"GET / HTTP/9.9",
        ] {
            let mut p = BytesMut::from(ok);
            assert!(!patch_unsupported_version(&mut p));
            assert_eq!(&p[..], ok);
        }
    }
}
