//! The socket's write side. The connection task hands it whole batches of encoded frames
//! ([`Writer::send`]). When nothing is waiting to be written, a batch goes to the socket
//! at once from the connection task, with a non-blocking write: no hand-over to another
//! task, which is what a round trip (a delivery answered by an ack, with prefetch 1) waits
//! on. Whatever the socket does not take at once goes to the writer task ([`run`]), and so
//! does every batch after it until the task has written them all, so the order holds. The
//! task gathers every batch already waiting into one vectored write, so a burst of
//! deliveries to a slow reader costs few syscalls, and the connection task never waits
//! for the socket. Over plain TCP the task starts only when first needed: most
//! connections never need it, and an idle one costs that much less memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::transport::WriteSide;
use crate::queue::OutputRoom;

/// Most batches gathered into one vectored write.
const MAX_GATHER: usize = 64;

/// The connection task's end of the write side.
pub struct Writer {
    /// The plain TCP socket, for writing at once from the connection task; `None` over
    /// TLS, where every batch goes through the writer task.
    socket: Option<Arc<OwnedWriteHalf>>,
    /// The writer task and its queue. Over plain TCP it starts the first time the socket
    /// does not take a batch at once, so a connection whose client keeps up (or an idle
    /// one) never has it; over TLS it starts with the connection.
    task: Option<Handover>,
    /// Batches handed to the writer task and not yet written. Only the connection task
    /// adds to it, so when it reads 0 everything it handed over is on the socket.
    queued: Arc<AtomicUsize>,
    /// Octets handed to the writer task and not yet written are counted here, so queues
    /// stop delivering to a connection whose client does not read.
    room: Arc<OutputRoom>,
}

/// A running writer task.
struct Handover {
    tx: mpsc::UnboundedSender<Bytes>,
    join: JoinHandle<()>,
}

/// What is left of a connection's write side when the connection ends: the writer task,
/// if it ever started, or the socket, for [`Closing::finish`].
pub struct Closing {
    join: Option<JoinHandle<()>>,
    socket: Option<Arc<OwnedWriteHalf>>,
}

impl Closing {
    /// Waits up to `timeout` for what the writer task holds to reach the socket and for
    /// the write side to be shut down; `true` if it did. Past the timeout the task is
    /// stopped (its batches dropped).
    pub async fn finish(self, timeout: std::time::Duration) -> bool {
        if let Some(mut join) = self.join {
            if tokio::time::timeout(timeout, &mut join).await.is_err() {
                join.abort();
                let _ = join.await;
                return false;
            }
            return true;
        }
        if let Some(socket) = self.socket {
            if let Ok(mut socket) = Arc::try_unwrap(socket) {
                // Nothing is waiting to be written: the shutdown does not wait for the peer.
                let _ = tokio::time::timeout(timeout, socket.shutdown()).await;
            }
        }
        true
    }
}

impl Writer {
    /// The write side of a connection.
    pub fn new(side: WriteSide, room: Arc<OutputRoom>) -> Writer {
        let queued = Arc::new(AtomicUsize::new(0));
        match side {
            WriteSide::Tcp(s) => Writer {
                socket: Some(s),
                task: None,
                queued,
                room,
            },
            WriteSide::Tls(w) => {
                let task = Some(Handover::start(Sink::Tls(w), &queued, &room));
                Writer {
                    socket: None,
                    task,
                    queued,
                    room,
                }
            }
        }
    }

    /// Ends the write side: what was handed over is still written (see
    /// [`Closing::finish`]); anything sent afterwards is dropped.
    pub fn close(&mut self) -> Closing {
        let task = self.task.take();
        let socket = self.socket.take();
        match task {
            // Dropping the sender lets the task end once it has written everything; it
            // then holds the socket's last reference and shuts it down.
            Some(task) => Closing {
                join: Some(task.join),
                socket: None,
            },
            None => Closing { join: None, socket },
        }
    }

    /// Writes `bytes` after everything sent before, without waiting.
    pub fn send(&mut self, mut bytes: Bytes) {
        let written = self.try_write_now(&bytes);
        if written < bytes.len() {
            bytes.advance(written);
            self.hand_over(bytes);
        }
    }

    /// Writes and empties `out` (the connection's output buffer) after everything sent
    /// before, without waiting. When the socket takes it all, `out` keeps its memory.
    pub fn send_buf(&mut self, out: &mut BytesMut) {
        let written = self.try_write_now(out);
        out.advance(written);
        if !out.is_empty() {
            self.hand_over(out.split().freeze());
        }
    }

    /// Writes what the socket takes at once, if nothing is waiting for the task.
    fn try_write_now(&self, bytes: &[u8]) -> usize {
        let Some(socket) = &self.socket else {
            return 0;
        };
        if bytes.is_empty() || self.queued.load(Ordering::Acquire) > 0 {
            return 0;
        }
        // Would block, or failed: the task waits for room, or meets the error.
        socket.try_write(bytes).unwrap_or(0)
    }

    fn hand_over(&mut self, bytes: Bytes) {
        if self.task.is_none() {
            // Closed (or TLS, whose task is always there): nowhere to write.
            let Some(socket) = &self.socket else {
                return;
            };
            self.task = Some(Handover::start(
                Sink::Tcp(socket.clone()),
                &self.queued,
                &self.room,
            ));
        }
        if let Some(task) = &self.task {
            self.room.add(bytes.len());
            self.queued.fetch_add(1, Ordering::AcqRel);
            let _ = task.tx.send(bytes);
        }
    }
}

impl Handover {
    fn start(sink: Sink, queued: &Arc<AtomicUsize>, room: &Arc<OutputRoom>) -> Handover {
        let (tx, rx) = mpsc::unbounded_channel();
        let join = tokio::spawn(run(sink, rx, queued.clone(), room.clone()));
        Handover { tx, join }
    }
}

/// Where the writer task writes.
enum Sink {
    Tcp(Arc<OwnedWriteHalf>),
    Tls(tokio::io::WriteHalf<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl Sink {
    async fn write_batch(&mut self, batch: &mut [Bytes]) -> std::io::Result<()> {
        match self {
            Sink::Tcp(socket) => write_all_vectored(socket, batch).await,
            Sink::Tls(w) => {
                for b in batch.iter() {
                    w.write_all(b).await?;
                }
                w.flush().await
            }
        }
    }
}

/// The writer task: writes what [`Writer::send`] could not, in order, until the
/// connection closes its [`Writer`]; then shuts the socket's write side down.
async fn run(
    mut sink: Sink,
    mut rx: mpsc::UnboundedReceiver<Bytes>,
    queued: Arc<AtomicUsize>,
    room: Arc<OutputRoom>,
) {
    // Grown on first use: an idle connection never needs it.
    let mut batch: Vec<Bytes> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let octets: usize = batch.iter().map(Bytes::len).sum();
        if let Err(e) = sink.write_batch(&mut batch).await {
            tracing::debug!(error = %e, "write failed");
            return;
        }
        queued.fetch_sub(batch.len(), Ordering::AcqRel);
        room.take(octets);
        batch.clear();
    }
    match sink {
        // The connection's `Writer` is gone with the sender: this is the last reference.
        Sink::Tcp(socket) => {
            if let Ok(mut socket) = Arc::try_unwrap(socket) {
                let _ = socket.shutdown().await;
            }
        }
        Sink::Tls(mut w) => {
            let _ = w.shutdown().await;
        }
    }
}

async fn write_all_vectored(socket: &OwnedWriteHalf, bufs: &mut [Bytes]) -> std::io::Result<()> {
    let mut start = 0;
    while start < bufs.len() {
        let slices: Vec<std::io::IoSlice<'_>> = bufs[start..]
            .iter()
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = match socket.try_write_vectored(&slices) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                socket.writable().await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while start < bufs.len() && n >= bufs[start].len() {
            n -= bufs[start].len();
            start += 1;
        }
        if n > 0 {
            let rest = bufs[start].slice(n..);
            bufs[start] = rest;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;
    use tokio::net::{TcpListener, TcpStream};

    /// A writer on one end of a loopback TCP connection, and the other end to read.
    async fn pair() -> (TcpStream, Writer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (read_half, write_half) = accepted.unwrap().0.into_split();
        // The read half goes: its drop does not shut the write side down.
        drop(read_half);
        let writer = Writer::new(WriteSide::Tcp(Arc::new(write_half)), Default::default());
        (client.unwrap(), writer)
    }

    /// Batches written at once and batches the socket did not take (handed to the task)
    /// arrive whole and in order, while the peer reads as they come.
    #[tokio::test]
    async fn order_holds_across_the_hand_over() {
        let (mut reader, mut writer) = pair().await;
        // A slow reader: 16 KiB per turn against the writer's 64 KiB.
        let read = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = reader.read(&mut chunk).await.unwrap();
                if n == 0 {
                    return got;
                }
                got.extend_from_slice(&chunk[..n]);
                tokio::task::yield_now().await;
            }
        });

        // 16 MiB in batches of 64 KiB, faster than the peer reads: the socket fills up,
        // so some batches go through the task, and once the peer has read, the socket
        // has room again while the task still holds batches.
        let mut expected = Vec::new();
        let mut handed_over = 0;
        let mut out = BytesMut::new();
        for i in 0..256u32 {
            let batch: Vec<u8> = (0..64 * 1024u32)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect();
            expected.extend_from_slice(&batch);
            if i % 2 == 0 {
                writer.send(Bytes::from(batch));
            } else {
                out.extend_from_slice(&batch);
                writer.send_buf(&mut out);
                assert!(out.is_empty(), "send_buf empties the buffer");
            }
            if writer.queued.load(Ordering::Acquire) > 0 {
                handed_over += 1;
            }
            tokio::task::yield_now().await;
        }
        assert!(
            handed_over > 0,
            "the socket took 16 MiB at once: nothing was handed over"
        );
        assert!(
            writer
                .close()
                .finish(std::time::Duration::from_secs(60))
                .await
        );
        let got = read.await.unwrap();
        assert_eq!(got.len(), expected.len());
        assert!(got == expected, "bytes out of order");
    }

    /// A client that keeps up never costs a writer task; closing then shuts the write
    /// side down itself, so the peer reads everything and then the end of the stream.
    #[tokio::test]
    async fn no_task_until_the_socket_is_full_and_close_still_shuts_down() {
        let (mut reader, mut writer) = pair().await;
        writer.send(Bytes::from_static(b"hello"));
        assert!(writer.task.is_none(), "the socket took 5 octets at once");
        assert!(
            writer
                .close()
                .finish(std::time::Duration::from_secs(10))
                .await
        );
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
    }

    /// Once the socket is full the task takes over, and what it holds still arrives
    /// whole after `close`.
    #[tokio::test]
    async fn the_task_starts_when_the_socket_is_full() {
        let (mut reader, mut writer) = pair().await;
        // Far more than socket buffers hold, with nobody reading yet.
        let batch = Bytes::from(vec![7u8; 1024 * 1024]);
        let mut sent = 0;
        while writer.task.is_none() {
            writer.send(batch.clone());
            sent += batch.len();
        }
        let read = tokio::spawn(async move {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).await.unwrap();
            got
        });
        assert!(
            writer
                .close()
                .finish(std::time::Duration::from_secs(60))
                .await
        );
        let got = read.await.unwrap();
        assert_eq!(got.len(), sent);
        assert!(got.iter().all(|b| *b == 7));
    }
}
