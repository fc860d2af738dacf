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
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::format::{file_header, segment_name, Record, SEGMENT_MAGIC};
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
    /// Nothing to track.
    Nothing,
}

/// A request to the writer thread.
pub enum Op {
    /// Append an encoded record; tell `notify` once it is durable.
    Append {
        /// The encoded record.
        bytes: Bytes,
        /// Liveness bookkeeping.
        track: Track,
        /// Who waits for the sync.
        notify: Option<ConfirmTicket>,
    },
    /// A durable queue was deleted: everything it held is dead.
    DropQueue(u64),
    /// Sync now and answer.
    Sync(std::sync::mpsc::Sender<bool>),
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

/// Liveness state, rebuilt by recovery and kept by the writer.
#[derive(Debug, Default)]
pub struct Liveness {
    /// Counts per segment.
    pub segments: BTreeMap<u64, SegCount>,
    /// msg id → (segment of its newest record, live enqueues).
    pub messages: HashMap<u64, (u64, u32)>,
    /// (queue id, seq) → (msg id, segment of the enqueue record).
    pub enqueues: HashMap<(u64, u64), (u64, u64)>,
}

impl Liveness {
    fn seg_live(&mut self, seg: u64, n: i64) {
        let c = self.segments.entry(seg).or_default();
        c.live = (c.live as i64 + n).max(0) as u64;
    }

    fn seg_total(&mut self, seg: u64, n: u64) {
        self.segments.entry(seg).or_default().total += n;
    }

    /// Applies the effect of records appended to segment `seg`.
    pub fn apply(&mut self, seg: u64, track: &Track) {
        match track {
            Track::MessageEnqueue {
                msg_id,
                queue_id,
                seq,
            } => {
                self.messages.entry(*msg_id).or_insert((seg, 0));
                self.seg_live(seg, 1);
                self.seg_total(seg, 1);
                self.apply(
                    seg,
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
                    m.1 += 1;
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
            m.1 = m.1.saturating_sub(1);
            if m.1 == 0 {
                dead = Some(m.0);
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

    /// A live message record was copied forward from `from` to `to`.
    fn moved_message(&mut self, msg_id: u64, from: u64, to: u64) {
        if let Some(m) = self.messages.get_mut(&msg_id) {
            if m.0 == from {
                m.0 = to;
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
    /// Liveness.
    pub live: Liveness,
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
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
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
                        if self.size + buf.len() as u64 >= self.segment_size && self.size > 16 {
                            // Rotate: flush what belongs to the old segment first.
                            self.write_out(&mut buf, &mut waiters, true);
                            self.rotate();
                        }
                        buf.extend_from_slice(&bytes);
                        self.live.apply(self.seg, &track);
                        if let Some(n) = notify {
                            waiters.push(n);
                        }
                    }
                    Op::DropQueue(id) => self.live.drop_queue(id),
                    Op::Sync(reply) => {
                        force_sync = true;
                        replies.push(reply);
                    }
                    Op::Stop(reply) => {
                        force_sync = true;
                        stop = Some(reply);
                    }
                }
            }
            let ok = self.write_out(&mut buf, &mut waiters, force_sync);
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

    /// Writes `buf`, syncs if anyone waits (or `force`), then answers the waiters.
    fn write_out(
        &mut self,
        buf: &mut Vec<u8>,
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
            if let Err(e) = self.file.write_all(buf) {
                tracing::error!(error = %e, segment = self.seg, "message store write failed; refusing persistent messages from now on");
                ok = false;
            } else {
                self.size += buf.len() as u64;
            }
            buf.clear();
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
                self.live.segments.entry(next).or_default();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new segment; refusing persistent messages from now on");
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }

    fn delete_dead_segments(&mut self) {
        while let Some((&seg, count)) = self.live.segments.first_key_value() {
            if seg >= self.seg || count.live > 0 {
                break;
            }
            let path = self.dir.join(segment_name(seg));
            match std::fs::remove_file(&path) {
                Ok(()) => tracing::debug!(segment = seg, "deleted settled segment"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete settled segment");
                    break;
                }
            }
            self.live.segments.remove(&seg);
        }
    }

    /// Copies the few live records of the oldest segment forward to the current one, so a
    /// long-lived message does not keep a mostly dead segment (and every later one) on
    /// disk. Runs when the oldest closed segment is less than a quarter live. Answers
    /// whether it copied anything.
    fn compact_oldest(&mut self) -> bool {
        let Some((&seg, &count)) = self.live.segments.first_key_value() else {
            return false;
        };
        if seg >= self.seg || count.live == 0 || count.live * 4 >= count.total.max(1) {
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
        while offset < data.len() {
            let Ok((record, len)) = Record::decode(&data.slice(offset..)) else {
                break;
            };
            match &record {
                Record::Message { msg_id, .. }
                    if self.live.messages.get(msg_id).is_some_and(|m| m.0 == seg) =>
                {
                    out.extend_from_slice(&data[offset..offset + len]);
                    moved_msgs.push(*msg_id);
                }
                Record::Enqueue { queue_id, seq, .. }
                    if self
                        .live
                        .enqueues
                        .get(&(*queue_id, *seq))
                        .is_some_and(|e| e.1 == seg) =>
                {
                    out.extend_from_slice(&data[offset..offset + len]);
                    moved_enqs.push((*queue_id, *seq));
                }
                Record::Deliveries { queue_id, counts } => {
                    // Delivery counts of messages still queued go forward too.
                    let live: Vec<(u64, u32)> = counts
                        .iter()
                        .copied()
                        .filter(|(seq, _)| self.live.enqueues.contains_key(&(*queue_id, *seq)))
                        .collect();
                    if !live.is_empty() {
                        let mut buf = bytes::BytesMut::new();
                        Record::Deliveries {
                            queue_id: *queue_id,
                            counts: live,
                        }
                        .encode(&mut buf);
                        out.extend_from_slice(&buf);
                        self.live.segments.entry(self.seg).or_default().total += 1;
                    }
                }
                _ => {}
            }
            offset += len;
        }
        let mut waiters = Vec::new();
        if !self.write_out(&mut out, &mut waiters, true) {
            return false;
        }
        let to = self.seg;
        for id in moved_msgs {
            self.live.moved_message(id, seg, to);
        }
        for key in moved_enqs {
            self.live.moved_enqueue(key, seg, to);
        }
        tracing::debug!(segment = seg, "compacted: live records copied forward");
        true
    }
}
