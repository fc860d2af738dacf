//! The log writer: one thread appends the records of every queue and connection to the
//! current segment and makes them durable with one `fdatasync` per batch (group commit).
//! While a sync runs, new records pile up in the channel; the next batch takes them all.
//! Only after the sync that covers a record are its waiters told (publisher confirms).
//!
//! It also tracks which records are still live, to delete a segment once nothing in it is
//! needed: segments are deleted oldest first, so a settle record never disappears before
//! the enqueue record it cancels.
//!
//! A failed write or sync poisons the store: waiters are nacked and nothing more is
//! written, because durability can no longer be promised.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::format::{
    check_record, file_header, is_message, peek_message, segment_name, Record, RECORD_HEADER_LEN,
    SEGMENT_MAGIC,
};
use super::idhash::IdMap;
use super::FsyncMode;
use crate::queue::ConfirmTicket;

/// What a record means for liveness.
#[derive(Debug, Clone)]
pub enum Track {
    /// A message record followed by its first enqueue record, appended together so a
    /// message is never on disk without a queue holding it.
    MessageEnqueue {
        /// Message id.
        msg_id: u64,
        /// Length of the message record (the enqueue record follows it).
        len: u32,
        /// Queue id.
        queue_id: u64,
        /// Sequence in the queue.
        seq: u64,
    },
    /// An enqueue record.
    Enqueue {
        /// Queue id.
        queue_id: u64,
        /// Sequence in the queue.
        seq: u64,
        /// Message id.
        msg_id: u64,
    },
    /// A settle record.
    Settle {
        /// Queue id.
        queue_id: u64,
        /// Settled sequences.
        seqs: Vec<u64>,
    },
    /// A durable queue was deleted: everything it held is dead.
    DropQueue(u64),
    /// Nothing to track.
    Nothing,
}

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

    fn push_bytes(&mut self, b: Bytes) {
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

    fn clear(&mut self) {
        self.chunks.clear();
        self.cur.clear();
        self.len = 0;
    }

    /// Writes everything, in order, then forgets it.
    fn write_to(&mut self, file: &mut File) -> std::io::Result<()> {
        let result = self.write_all(file);
        self.clear();
        result
    }

    fn write_all(&mut self, file: &mut File) -> std::io::Result<()> {
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
                .take(512)
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

/// A request to the writer thread.
pub enum Op {
    /// Append encoded records; tell `notify` once they are durable.
    Append {
        /// The encoded records.
        bytes: Chunks,
        /// Liveness bookkeeping.
        track: Track,
        /// Who waits for the sync.
        notify: Option<ConfirmTicket>,
    },
    /// A durable queue was deleted: everything it held is dead.
    DropQueue(u64),
    /// Sync now and answer.
    Sync(std::sync::mpsc::Sender<bool>),
    /// Answer once everything sent before is written (not necessarily synced).
    Flush(std::sync::mpsc::Sender<bool>),
    /// Sync, then stop.
    Stop(std::sync::mpsc::Sender<bool>),
}

/// Record counts of one segment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SegCount {
    /// Records still needed (live messages and unsettled enqueues).
    pub live: u64,
    /// Records written.
    pub total: u64,
}

/// Where a live message record is, and how many queues still hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgLoc {
    /// Segment of its newest copy.
    pub seg: u64,
    /// Offset of the record in that segment.
    pub offset: u64,
    /// Length of the record, header included.
    pub len: u32,
    /// Live enqueues.
    pub live: u32,
}

/// Liveness state, rebuilt by recovery and kept by the writer. Shared with the readers
/// of paged-out messages (behind [`Index`]); a location appears only once its record
/// has been written.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Counts per segment.
    pub segments: BTreeMap<u64, SegCount>,
    /// msg id → its location and live enqueues.
    pub messages: IdMap<u64, MsgLoc>,
    /// (queue id, seq) → (msg id, segment of the enqueue record).
    pub enqueues: IdMap<(u64, u64), (u64, u64)>,
}

impl Liveness {
    fn seg_live(&mut self, seg: u64, n: i64) {
        let c = self.segments.entry(seg).or_default();
        c.live = (c.live as i64 + n).max(0) as u64;
    }

    fn seg_total(&mut self, seg: u64, n: u64) {
        self.segments.entry(seg).or_default().total += n;
    }

    /// Applies the effect of records appended to segment `seg` at `offset`.
    pub fn apply(&mut self, seg: u64, offset: u64, track: &Track) {
        match track {
            Track::MessageEnqueue {
                msg_id,
                len,
                queue_id,
                seq,
            } => {
                self.messages.entry(*msg_id).or_insert(MsgLoc {
                    seg,
                    offset,
                    len: *len,
                    live: 0,
                });
                self.seg_live(seg, 1);
                self.seg_total(seg, 1);
                self.apply(
                    seg,
                    offset + u64::from(*len),
                    &Track::Enqueue {
                        queue_id: *queue_id,
                        seq: *seq,
                        msg_id: *msg_id,
                    },
                );
            }
            Track::Enqueue {
                queue_id,
                seq,
                msg_id,
            } => {
                self.seg_total(seg, 1);
                if let Some(m) = self.messages.get_mut(msg_id) {
                    m.live += 1;
                    self.enqueues.insert((*queue_id, *seq), (*msg_id, seg));
                    self.seg_live(seg, 1);
                }
            }
            Track::Settle { queue_id, seqs } => {
                self.seg_total(seg, 1);
                for seq in seqs {
                    self.settle(*queue_id, *seq);
                }
            }
            Track::DropQueue(id) => self.drop_queue(*id),
            Track::Nothing => self.seg_total(seg, 1),
        }
    }

    fn settle(&mut self, queue_id: u64, seq: u64) {
        let Some((msg_id, eseg)) = self.enqueues.remove(&(queue_id, seq)) else {
            return;
        };
        self.seg_live(eseg, -1);
        let mut dead = None;
        if let Some(m) = self.messages.get_mut(&msg_id) {
            m.live = m.live.saturating_sub(1);
            if m.live == 0 {
                dead = Some(m.seg);
            }
        }
        if let Some(mseg) = dead {
            self.messages.remove(&msg_id);
            self.seg_live(mseg, -1);
        }
    }

    /// Drops every enqueue of a queue.
    pub fn drop_queue(&mut self, queue_id: u64) {
        let seqs: Vec<u64> = self
            .enqueues
            .keys()
            .filter(|(q, _)| *q == queue_id)
            .map(|(_, s)| *s)
            .collect();
        for seq in seqs {
            self.settle(queue_id, seq);
        }
    }

    /// A live message record was copied forward from `from` to `to`, at `offset`.
    fn moved_message(&mut self, msg_id: u64, from: u64, to: u64, offset: u64) {
        if let Some(m) = self.messages.get_mut(&msg_id) {
            if m.seg == from {
                m.seg = to;
                m.offset = offset;
                self.seg_live(from, -1);
                self.seg_live(to, 1);
                self.seg_total(to, 1);
            }
        }
    }

    /// A live enqueue record was copied forward from `from` to `to`.
    fn moved_enqueue(&mut self, key: (u64, u64), from: u64, to: u64) {
        if let Some(e) = self.enqueues.get_mut(&key) {
            if e.1 == from {
                e.1 = to;
                self.seg_live(from, -1);
                self.seg_live(to, 1);
                self.seg_total(to, 1);
            }
        }
    }
}

/// How many segments behind the current one the oldest must be before it is compacted.
pub const COMPACT_LAG: u64 = 2;

/// What the writer shares with readers: liveness (with every live message's location)
/// and open handles of the segments, dropped when a segment is deleted.
#[derive(Debug, Default)]
pub struct Index {
    /// Liveness and locations.
    pub live: Liveness,
    /// Open segments, for reads.
    pub files: HashMap<u64, Arc<File>>,
}

/// Locks the index; a panic elsewhere does not make it unusable.
pub fn lock(index: &Mutex<Index>) -> MutexGuard<'_, Index> {
    index.lock().unwrap_or_else(|e| e.into_inner())
}

/// The writer's state.
pub struct Writer {
    /// Segment directory.
    pub dir: PathBuf,
    /// The segment being appended to.
    pub file: File,
    /// Its number.
    pub seg: u64,
    /// Its size.
    pub size: u64,
    /// Rotate when a segment grows past this.
    pub segment_size: u64,
    /// Sync policy.
    pub fsync: FsyncMode,
    /// Liveness and locations, shared with readers.
    pub index: Arc<Mutex<Index>>,
    /// Set when a write or sync failed.
    pub poisoned: Arc<AtomicBool>,
    /// Test hook: fail syncs while set.
    pub fail_syncs: Option<Arc<AtomicBool>>,
}

/// Creates segment `n` with its header, and syncs the directory entry.
pub fn create_segment(dir: &std::path::Path, n: u64) -> std::io::Result<File> {
    let path = dir.join(segment_name(n));
    let mut f = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)?;
    f.write_all(&file_header(SEGMENT_MAGIC))?;
    f.sync_data()?;
    File::open(dir)?.sync_all()?;
    Ok(f)
}

impl Writer {
    /// Runs until stopped (on its own thread).
    pub fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut batch = Vec::new();
        let mut waiters: Vec<ConfirmTicket> = Vec::new();
        let mut buf = Outgoing::default();
        let mut pending: Vec<(u64, u64, Track)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < 4096 {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut replies = Vec::new();
            let mut stop = None;
            let mut force_sync = false;
            for op in batch.drain(..) {
                match op {
                    Op::Append {
                        bytes,
                        track,
                        notify,
                    } => {
                        if self.poisoned.load(Ordering::SeqCst) {
                            if let Some(n) = notify {
                                n.send(false);
                            }
                            continue;
                        }
                        if self.size + buf.len() >= self.segment_size && self.size > 16 {
                            // Rotate: flush what belongs to the old segment first.
                            self.write_out(&mut buf, &mut waiters, true);
                            self.publish(&mut pending);
                            self.rotate();
                        }
                        pending.push((self.seg, self.size + buf.len(), track));
                        buf.push(bytes);
                        if let Some(n) = notify {
                            waiters.push(n);
                        }
                    }
                    Op::DropQueue(id) => pending.push((self.seg, 0, Track::DropQueue(id))),
                    Op::Sync(reply) => {
                        force_sync = true;
                        replies.push(reply);
                    }
                    Op::Flush(reply) => replies.push(reply),
                    Op::Stop(reply) => {
                        force_sync = true;
                        stop = Some(reply);
                    }
                }
            }
            let ok = self.write_out(&mut buf, &mut waiters, force_sync);
            self.publish(&mut pending);
            self.delete_dead_segments();
            if self.compact_oldest() {
                self.delete_dead_segments();
            }
            for r in replies {
                let _ = r.send(ok);
            }
            if let Some(r) = stop {
                let _ = r.send(ok);
                return;
            }
        }
    }

    /// Applies the bookkeeping of records just written: from now on readers find them.
    fn publish(&mut self, pending: &mut Vec<(u64, u64, Track)>) {
        if pending.is_empty() {
            return;
        }
        let mut index = lock(&self.index);
        for (seg, offset, track) in pending.drain(..) {
            index.live.apply(seg, offset, &track);
        }
    }

    /// Writes `buf`, syncs if anyone waits (or `force`), then answers the waiters.
    fn write_out(
        &mut self,
        buf: &mut Outgoing,
        waiters: &mut Vec<ConfirmTicket>,
        force: bool,
    ) -> bool {
        if self.poisoned.load(Ordering::SeqCst) {
            for w in waiters.drain(..) {
                w.send(false);
            }
            buf.clear();
            return false;
        }
        let mut ok = true;
        if !buf.is_empty() {
            let len = buf.len();
            if let Err(e) = buf.write_to(&mut self.file) {
                tracing::error!(error = %e, segment = self.seg, "message store write failed; refusing persistent messages from now on");
                ok = false;
            } else {
                self.size += len;
            }
        }
        if ok && (force || !waiters.is_empty()) && self.fsync == FsyncMode::Batch {
            let injected = self
                .fail_syncs
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            let result = if injected {
                Err(std::io::Error::other("injected sync failure"))
            } else {
                self.file.sync_data()
            };
            if let Err(e) = result {
                tracing::error!(error = %e, segment = self.seg, "message store fsync failed; refusing persistent messages from now on");
                ok = false;
            }
        }
        if !ok {
            self.poisoned.store(true, Ordering::SeqCst);
        }
        for w in waiters.drain(..) {
            w.send(ok);
        }
        ok
    }

    fn rotate(&mut self) {
        let next = self.seg + 1;
        match create_segment(&self.dir, next) {
            Ok(f) => {
                self.file = f;
                self.seg = next;
                self.size = super::format::FILE_HEADER_LEN as u64;
                lock(&self.index).live.segments.entry(next).or_default();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new segment; refusing persistent messages from now on");
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }

    fn delete_dead_segments(&mut self) {
        loop {
            let seg = {
                let mut index = lock(&self.index);
                let Some((&seg, count)) = index.live.segments.first_key_value() else {
                    break;
                };
                if seg >= self.seg || count.live > 0 {
                    break;
                }
                index.files.remove(&seg);
                seg
            };
            let path = self.dir.join(segment_name(seg));
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(segment = seg, "deleted settled segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete settled segment");
                    break;
                }
            }
            lock(&self.index).live.segments.remove(&seg);
        }
    }

    /// Copies the few live records of the oldest segment forward to the current one, so a
    /// long-lived message does not keep a mostly dead segment (and every later one) on
    /// disk. Runs when the oldest segment is at least [`COMPACT_LAG`] segments behind the
    /// current one and less than a quarter live. Answers whether it copied anything.
    fn compact_oldest(&mut self) -> bool {
        let Some((seg, count)) = lock(&self.index)
            .live
            .segments
            .first_key_value()
            .map(|(s, c)| (*s, *c))
        else {
            return false;
        };
        // A segment just closed usually holds messages consumers are about to settle
        // (a prefetch window): wait until it is two segments old, so copying is for the
        // long-lived messages it is meant for, not for every lagging consumer.
        if seg + COMPACT_LAG > self.seg || count.live == 0 || count.live * 4 >= count.total.max(1) {
            return false;
        }
        if self.poisoned.load(Ordering::SeqCst) {
            return false;
        }
        let path = self.dir.join(segment_name(seg));
        let data = match std::fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot read segment to compact");
                return false;
            }
        };
        let mut out = Vec::new();
        let mut moved_msgs = Vec::new();
        let mut moved_enqs = Vec::new();
        let mut offset = super::format::FILE_HEADER_LEN;
        let mut extra_total = 0;
        // Only this thread changes the index: it is locked per look-up, not for the
        // whole scan, so readers of paged-out messages are not held up.
        while offset < data.len() {
            let Ok((kind, len)) = check_record(&data[offset..]) else {
                break;
            };
            let raw = &data[offset..offset + len];
            if is_message(kind) {
                if let Some(m) = peek_message(&raw[RECORD_HEADER_LEN..]) {
                    let live = lock(&self.index)
                        .live
                        .messages
                        .get(&m.msg_id)
                        .is_some_and(|l| l.seg == seg);
                    if live {
                        moved_msgs.push((m.msg_id, out.len() as u64));
                        out.extend_from_slice(raw);
                    }
                }
                offset += len;
                continue;
            }
            match Record::decode_checked(&data.slice(offset..), kind, len) {
                Ok(Record::Enqueue { queue_id, seq, .. }) => {
                    let live = lock(&self.index)
                        .live
                        .enqueues
                        .get(&(queue_id, seq))
                        .is_some_and(|e| e.1 == seg);
                    if live {
                        out.extend_from_slice(raw);
                        moved_enqs.push((queue_id, seq));
                    }
                }
                Ok(Record::Deliveries { queue_id, counts }) => {
                    // Delivery counts of messages still queued go forward too.
                    let live: Vec<(u64, u32)> = {
                        let index = lock(&self.index);
                        counts
                            .into_iter()
                            .filter(|(seq, _)| index.live.enqueues.contains_key(&(queue_id, *seq)))
                            .collect()
                    };
                    if !live.is_empty() {
                        let mut buf = bytes::BytesMut::new();
                        Record::Deliveries {
                            queue_id,
                            counts: live,
                        }
                        .encode(&mut buf);
                        out.extend_from_slice(&buf);
                        extra_total += 1;
                    }
                }
                _ => {}
            }
            offset += len;
        }
        let mut waiters = Vec::new();
        let base = self.size;
        let mut outgoing = Outgoing::default();
        outgoing.push_bytes(Bytes::from(out));
        if !self.write_out(&mut outgoing, &mut waiters, true) {
            return false;
        }
        let to = self.seg;
        let mut index = lock(&self.index);
        index.live.segments.entry(to).or_default().total += extra_total;
        for (id, at) in moved_msgs {
            index.live.moved_message(id, seg, to, base + at);
        }
        for key in moved_enqs {
            index.live.moved_enqueue(key, seg, to);
        }
        tracing::debug!(segment = seg, "compacted: live records copied forward");
        true
    }
}
