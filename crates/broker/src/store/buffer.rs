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
    /// Octets copied into buffers in the current batch.
    copied: usize,
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
        if self.cur.len() + b.len() > self.cur.capacity() && !self.cur.is_empty() {
            // Full: it becomes a chunk of its own and a buffer twice its size takes
            // over. Growing it instead would copy every record copied so far (a
            // realloc), the better part of a copy more per record in a batch larger
            // than the last one.
            let next = Vec::with_capacity((2 * self.cur.capacity()).max(b.len()));
            self.chunks
                .push(Bytes::from(std::mem::replace(&mut self.cur, next)));
        }
        self.cur.extend_from_slice(b);
        self.len += b.len() as u64;
        self.copied += b.len();
    }

    pub(super) fn push_bytes(&mut self, b: Bytes) {
        if !self.cur.is_empty() {
            let next = Vec::with_capacity(self.cur.capacity());
            self.chunks
                .push(Bytes::from(std::mem::replace(&mut self.cur, next)));
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
            // be reused: the next one starts at what this batch copied, one allocation
            // for a run of similar batches.
            let next = Vec::with_capacity(self.copied);
            self.chunks
                .push(Bytes::from(std::mem::replace(&mut self.cur, next)));
        }
        self.copied = 0;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch larger than the buffer goes on in a new buffer instead of growing the
    /// full one: every record arrives once, in order, and the next batch's buffer holds
    /// a whole batch like this one.
    #[test]
    fn a_full_buffer_becomes_a_chunk_and_records_keep_their_order() {
        let mut out = Outgoing::default();
        let mut expected = Vec::new();
        for round in 0..2u8 {
            for i in 0..300u32 {
                let record: Vec<u8> = (0..(i % 50 + 1)).map(|j| (i + j) as u8 ^ round).collect();
                expected.extend_from_slice(&record);
                out.push(Chunks::One(Bytes::from(record)));
                if i == 150 {
                    let body = Bytes::from(vec![round; 40_000]);
                    expected.extend_from_slice(&body);
                    out.push_bytes(body);
                }
            }
            let copied = out.copied;
            assert_eq!(out.len(), expected.len() as u64);
            let chunks = out.take();
            assert!(out.is_empty());
            assert!(
                out.cur.capacity() >= copied,
                "the next batch fits one buffer"
            );
            if round == 0 {
                assert!(chunks.len() > 3, "buffers were sealed, not grown");
            }
            let got: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
            assert!(got == expected, "records out of order");
            expected.clear();
        }
    }
}
