//! The writer task of a connection: it owns the socket's write half. The connection task
//! hands it whole batches of encoded frames; the writer gathers every batch that is
//! already waiting into one vectored write, so a burst of deliveries costs few syscalls.

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

/// Most batches gathered into one vectored write.
const MAX_GATHER: usize = 64;

/// Runs until the connection drops its sender; then flushes and shuts the socket down.
pub async fn run(mut socket: OwnedWriteHalf, mut rx: mpsc::UnboundedReceiver<Bytes>) {
    let mut batch: Vec<Bytes> = Vec::with_capacity(MAX_GATHER);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        while batch.len() < MAX_GATHER {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        if let Err(e) = write_all_vectored(&mut socket, &mut batch).await {
            tracing::debug!(error = %e, "write failed");
            return;
        }
        batch.clear();
    }
    let _ = socket.shutdown().await;
}

async fn write_all_vectored(
    socket: &mut OwnedWriteHalf,
    bufs: &mut [Bytes],
) -> std::io::Result<()> {
    let mut start = 0;
    while start < bufs.len() {
        let slices: Vec<std::io::IoSlice<'_>> = bufs[start..]
            .iter()
            .map(|b| std::io::IoSlice::new(b))
            .collect();
        let mut n = socket.write_vectored(&slices).await?;
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
