//! The write buffer: encoded records on their way to the current segment.
//!
//! Callers of the store encode their records ([`Chunks`]) and hand them to the writer
//! thread; only the writer thread holds an [`Outgoing`], which gathers a batch's records
//! and writes them with vectored writes: small records are copied together into one
//! buffer, large message bodies stay the message's own `Bytes` and are not copied.

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

    pub(super) fn clear(&mut self) {
        self.chunks.clear();
        self.cur.clear();
        self.len = 0;
    }

    /// Writes everything, in order, then forgets it.
    pub(super) fn write_to(&mut self, file: &dyn DiskFile) -> std::io::Result<()> {
        let result = self.write_all(file);
        self.clear();
        result
    }

    fn write_all(&mut self, file: &dyn DiskFile) -> std::io::Result<()> {
        if self.chunks.is_empty() {
            return file.write_all(&self.cur);
        }
        if !self.cur.is_empty() {
            self.chunks.push(Bytes::from(std::mem::take(&mut self.cur)));
        }
        let mut i = 0;
        while i < self.chunks.len() {
            let slices: Vec<std::io::IoSlice<'_>> = self.chunks[i..]
                .iter()
                .take(MAX_SLICES)
                .map(|c| std::io::IoSlice::new(c))
                .collect();
            let mut n = file.write_vectored(&slices)?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while i < self.chunks.len() && n >= self.chunks[i].len() {
                n -= self.chunks[i].len();
                i += 1;
            }
            if n > 0 {
                self.chunks[i] = self.chunks[i].slice(n..);
            }
        }
        Ok(())
    }
}
