//! The liveness index: which records of the log are still needed, and where every live
//! message record is.
//!
//! Owned by the writer thread, the only one that changes it: it applies the bookkeeping
//! of each batch once the batch is written ([`Liveness::apply`]), so a location appears
//! only once its record is in the file. Recovery builds the first one from the replay.
//! Readers of paged-out messages (`reader.rs`) only look locations up, and open segment
//! handles, through the [`Index`] mutex; compaction and segment deletion (`purge.rs`)
//! change it from the writer thread.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::sync::{Arc, Mutex, MutexGuard};

use super::idhash::IdMap;

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
    /// A paged-out transient message record: live, held by one queue, until released.
    Transient {
        /// Message id.
        msg_id: u64,
        /// Length of the record.
        len: u32,
    },
    /// Paged-out transient messages the queue holding them let go of (delivered,
    /// read back, dropped): their records are dead. Nothing is written for it.
    Release(Vec<u64>),
    /// Nothing to track.
    Nothing,
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
            Track::Transient { msg_id, len } => {
                self.messages.insert(
                    *msg_id,
                    MsgLoc {
                        seg,
                        offset,
                        len: *len,
                        live: 1,
                    },
                );
                self.seg_live(seg, 1);
                self.seg_total(seg, 1);
            }
            Track::Release(ids) => {
                for id in ids {
                    if let Some(m) = self.messages.remove(id) {
                        self.seg_live(m.seg, -1);
                    }
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
    pub(super) fn moved_message(&mut self, msg_id: u64, from: u64, to: u64, offset: u64) {
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
    pub(super) fn moved_enqueue(&mut self, key: (u64, u64), from: u64, to: u64) {
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
