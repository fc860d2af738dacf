//! The write buffer: encoded records on their way to the current segment.
//!
//! Callers of the store encode their records ([`Chunks`]) and hand them to the writer
//! thread; only the writer thread holds an [`Outgoing`], which gathers a batch's records
//! and writes them with vectored writes: small records are copied together into one
//! buffer, large message bodies stay the message's own `Bytes` and are not copied. The
//! writer keeps a batch's chunks until a sync covers them (`rewrite.rs`), so they are
//! `Bytes` too: kept without a copy.

use bytes::Bytes;

use super::disk::DiskFile;

/// Most slices handed to one vectored write: well under Linux's `IOV_MAX` (1024), past
/// which `writev` fails.
const MAX_SLICES: usize = 512;

/// Encoded records handed to the writer.
pub enum Chunks {
    /// Records in one buffer.
    One(Bytes),
    /// A message record whose large body is the message's own `Bytes` (not copied):
    /// the record's head, the body, then the records after it.
    Split {
        /// The message record up to its body.
        head: Bytes,
        /// The body.
        body: Bytes,
        /// Records that follow (the enqueue record).
        tail: Bytes,
    },
}

/// Bytes waiting to be written: small records copied together into one buffer, large
/// bodies kept as they are; written with vectored writes.
#[derive(Default)]
pub struct Outgoing {
    chunks: Vec<Bytes>,
    cur: Vec<u8>,
    len: u64,
}

impl Outgoing {
    /// Octets waiting.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push_slice(&mut self, b: &[u8]) {
        self.cur.extend_from_slice(b);
        self.len += b.len() as u64;
    }

    pub(super) fn push_bytes(&mut self, b: Bytes) {
        if !self.cur.is_empty() {
            self.chunks.push(Bytes::from(std::mem::take(&mut self.cur)));
        }
        self.len += b.len() as u64;
        self.chunks.push(b);
    }

    /// Appends records.
    pub fn push(&mut self, c: Chunks) {
        match c {
            Chunks::One(b) => self.push_slice(&b),
            Chunks::Split { head, body, tail } => {
                self.push_slice(&head);
                self.push_bytes(body);
                self.push_slice(&tail);
            }
        }
    }

    /// Takes everything waiting, in order, leaving the buffer empty.
    pub(super) fn take(&mut self) -> Vec<Bytes> {
        if !self.cur.is_empty() {
            // The copied records are kept until a sync covers them, so the buffer cannot
            // be reused: the next one starts at this batch's size, one allocation for a
            // run of similar batches instead of a growth by doubling each time.
            let next = Vec::with_capacity(self.cur.len());
            self.chunks
                .push(Bytes::from(std::mem::replace(&mut self.cur, next)));
        }
        self.len = 0;
        std::mem::take(&mut self.chunks)
    }
}

/// Writes `chunks`, in order, at the end of `file`, with vectored writes.
pub(super) fn write_chunks(file: &dyn DiskFile, chunks: &[Bytes]) -> std::io::Result<()> {
    // Where the next write starts: chunk `i`, from octet `skip`.
    let mut i = 0;
    let mut skip = 0;
    while i < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = std::iter::once(&chunks[i][skip..])
            .chain(chunks[i + 1..].iter().map(|c| &c[..]))
            .take(MAX_SLICES)
            .map(std::io::IoSlice::new)
            .collect();
        let mut n = match file.write_vectored(&slices) {
            Ok(0) if slices.iter().any(|s| !s.is_empty()) => {
                return Err(std::io::ErrorKind::WriteZero.into())
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        n += skip;
        skip = 0;
        while i < chunks.len() && n >= chunks[i].len() {
            n -= chunks[i].len();
            i += 1;
        }
        if n > 0 {
            skip = n;
        }
    }
    Ok(())
}
