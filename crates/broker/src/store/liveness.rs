//! The liveness index: which records of the log are still needed, and where every live
//! message record is.
//!
//! Owned by the writer thread, the only one that changes it: it applies the bookkeeping
//! of each batch once the batch is written ([`Liveness::apply`]), so a location appears
//! only once its record is in the file. Recovery builds the first one from the replay.
//! Readers of paged-out messages (`reader.rs`) only look locations up, and open segment
//! handles, through the [`Index`] mutex; compaction and segment deletion (`purge.rs`)
//! change it from the writer thread.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};

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
    pub messages: SeqMap<u64, MsgLoc>,
    /// (queue id, seq) → (msg id, segment of the enqueue record).
    pub enqueues: SeqMap<(u64, u64), (u64, u64)>,
    /// Where live paged-out transient messages are (see [`Transients`]).
    pub transients: Transients,
}

/// Transient record ids have this bit set: their own id space, handed out in the order
/// their records reach the writer, so their locations fit a dense list.
pub const TRANSIENT_ID: u64 = 1 << 63;

/// Where one transient record is: 16 octets (`len` 0: released).
#[derive(Debug, Clone, Copy, Default)]
struct TransientLoc {
    offset: u64,
    seg: u32,
    len: u32,
}

/// The locations of live transient records, by id: a list from the oldest live id on,
/// 16 octets per id, instead of a hash map entry (some 40 to 70 octets each, growth
/// included). A flood with nobody consuming pages out millions of them, and this is
/// memory paging cannot free; they are released mostly oldest first, so the list stays
/// about as long as what is live.
#[derive(Debug, Default)]
pub struct Transients {
    /// The id of `locs[0]`.
    base: u64,
    locs: VecDeque<TransientLoc>,
    live: usize,
}

impl Transients {
    /// How many are live.
    pub fn len(&self) -> usize {
        self.live
    }

    fn slot(&self, id: u64) -> Option<usize> {
        let i = usize::try_from(id.checked_sub(self.base)?).ok()?;
        (i < self.locs.len()).then_some(i)
    }

    /// Notes record `id` (ids come in growing order).
    fn add(&mut self, id: u64, seg: u64, offset: u64, len: u32) {
        if self.locs.is_empty() {
            self.base = id;
        }
        let Some(gap) = id.checked_sub(self.base + self.locs.len() as u64) else {
            return;
        };
        // Ids handed out but never written (the store failed meanwhile) stay holes.
        for _ in 0..gap {
            self.locs.push_back(TransientLoc::default());
        }
        self.locs.push_back(TransientLoc {
            offset,
            seg: u32::try_from(seg).unwrap_or(u32::MAX),
            len,
        });
        self.live += 1;
    }

    /// Where record `id` is, while live.
    fn get(&self, id: u64) -> Option<TransientLoc> {
        self.slot(id).map(|i| self.locs[i]).filter(|l| l.len > 0)
    }

    /// Forgets record `id`; answers its segment if it was live.
    fn remove(&mut self, id: u64) -> Option<u64> {
        let i = self.slot(id)?;
        let loc = std::mem::take(&mut self.locs[i]);
        if loc.len == 0 {
            return None;
        }
        self.live -= 1;
        while self.locs.front().is_some_and(|l| l.len == 0) {
            self.locs.pop_front();
            self.base += 1;
        }
        if self.locs.capacity() > 1024 && self.locs.len() < self.locs.capacity() / 4 {
            self.locs.shrink_to(self.locs.len() * 2);
        }
        Some(u64::from(loc.seg))
    }
}

/// A hash map of the store's counters (message ids, a queue's sequence numbers) that
/// keeps runs of consecutive keys in consecutive buckets ([`SeqHasher`]).
pub type SeqMap<K, V> = HashMap<K, V, BuildHasherDefault<SeqHasher>>;

/// The hash of [`SeqMap`]. Message ids and sequences are handed out in order, and are
/// enqueued, delivered and settled in about that order. A mixing hash scatters
/// consecutive ids over a table of megabytes: a cache miss per look-up, two per settled
/// message, which in the drain of a long queue was 8 % of the broker's CPU. This one
/// keeps each aligned block of [`SEQ_BLOCK`] consecutive keys side by side (a settle
/// finds its entries in the cache lines the previous ones brought in) and scatters the
/// blocks as a mixing hash would, so keys at a regular stride (every 1024th message in
/// one queue) spread over the table instead of piling onto a few buckets.
#[derive(Debug, Default, Clone, Copy)]
pub struct SeqHasher(u64);

/// Keys kept side by side: 64 buckets' tags fill one cache line.
const SEQ_BLOCK: u64 = 64;

/// Odd (2^64 / the golden ratio): scatters blocks, queue ids and tags over the word.
const SEQ_MIX: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for SeqHasher {
    fn finish(&self) -> u64 {
        // hashbrown takes the bucket from the low bits and a tag from the top 7 (matched
        // 16 buckets at a time): the place comes from the block, the tag from the key,
        // so the keys of one block carry different tags.
        const TAG: u64 = 0x7f << 57;
        let k = self.0;
        // The product's high half is its best mixed (its low bits keep the block
        // number's trailing zeros): rotated down to pick the place.
        let block = (k / SEQ_BLOCK).wrapping_mul(SEQ_MIX).rotate_left(32);
        let place = (k % SEQ_BLOCK) | block.wrapping_mul(SEQ_BLOCK);
        (place & !TAG) | (k.wrapping_mul(SEQ_MIX) & TAG)
    }

    fn write(&mut self, bytes: &[u8]) {
        minimq_protocol::idhash::for_each_word(bytes, |word| self.write_u64(word));
    }

    /// (queue id, seq) hashes as `queue id × SEQ_MIX + seq`: each queue's sequences in
    /// runs of their own.
    fn write_u64(&mut self, n: u64) {
        self.0 = self.0.wrapping_mul(SEQ_MIX).wrapping_add(n);
    }
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
                self.transients.add(*msg_id, seg, offset, *len);
                self.seg_live(seg, 1);
                self.seg_total(seg, 1);
            }
            Track::Release(ids) => {
                for id in ids {
                    if let Some(seg) = self.transients.remove(*id) {
                        self.seg_live(seg, -1);
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

    /// Where live message record `msg_id` (a persistent message's, or a transient one's)
    /// is: segment, offset, length.
    pub fn location(&self, msg_id: u64) -> Option<(u64, u64, u32)> {
        if msg_id & TRANSIENT_ID != 0 {
            let l = self.transients.get(msg_id)?;
            return Some((u64::from(l.seg), l.offset, l.len));
        }
        self.messages.get(&msg_id).map(|m| (m.seg, m.offset, m.len))
    }

    /// A live message record was copied forward from `from` to `to`, at `offset`.
    pub(super) fn moved_message(&mut self, msg_id: u64, from: u64, to: u64, offset: u64) {
        if msg_id & TRANSIENT_ID != 0 {
            if let Some(i) = self.transients.slot(msg_id) {
                let l = &mut self.transients.locs[i];
                if l.len > 0 && u64::from(l.seg) == from {
                    l.seg = u32::try_from(to).unwrap_or(u32::MAX);
                    l.offset = offset;
                    self.seg_live(from, -1);
                    self.seg_live(to, 1);
                    self.seg_total(to, 1);
                }
            }
            return;
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hash<K: std::hash::Hash>(key: K) -> u64 {
        BuildHasherDefault::<SeqHasher>::default().hash_one(key)
    }

    /// hashbrown's bucket (low bits, for a table of 2^20) and tag (top 7 bits).
    fn bucket_and_tag(h: u64) -> (u64, u64) {
        (h & ((1 << 20) - 1), h >> 57)
    }

    #[test]
    fn a_block_of_consecutive_ids_takes_consecutive_buckets_with_different_tags() {
        let placed: Vec<(u64, u64)> = (1024..1024 + SEQ_BLOCK)
            .map(|k| bucket_and_tag(hash(k)))
            .collect();
        let base = placed[0].0;
        assert!(
            placed
                .iter()
                .enumerate()
                .all(|(i, (b, _))| *b == base + i as u64),
            "side by side: {placed:?}"
        );
        let tags: std::collections::HashSet<u64> = placed.iter().map(|(_, t)| *t).collect();
        assert!(tags.len() > 32, "tags barely vary: {}", tags.len());
        // A queue's sequences: runs of their own, at most two blocks for 64 of them.
        let blocks: std::collections::HashSet<u64> = (7 * 64..8 * 64)
            .map(|s| bucket_and_tag(hash((3u64, s))).0 / SEQ_BLOCK)
            .collect();
        assert!(blocks.len() <= 2, "{} blocks", blocks.len());
    }

    /// Ids a power of two apart (every 1024th message in one queue) start blocks of
    /// their own, and the blocks spread: no run of 64 buckets gets more than it holds.
    #[test]
    fn ids_at_a_power_of_two_stride_spread_over_the_table() {
        let mut per_run = std::collections::HashMap::new();
        for i in 0..10_000u64 {
            let bucket = hash(i * 1024) & ((1 << 16) - 1);
            *per_run.entry(bucket / SEQ_BLOCK).or_insert(0u64) += 1;
        }
        let most = per_run.values().max().copied().unwrap_or(0);
        assert!(per_run.len() > 900, "{} runs of 1024 used", per_run.len());
        assert!(most < SEQ_BLOCK / 2, "{most} in one run of 64 buckets");
    }

    #[test]
    fn settling_in_and_out_of_order_leaves_nothing_behind() {
        let mut live = Liveness::default();
        for seq in 0..1000u64 {
            let track = Track::MessageEnqueue {
                msg_id: 5000 + seq,
                len: 100,
                queue_id: 9,
                seq,
            };
            live.apply(seq / 100, seq * 200, &track);
        }
        assert_eq!(live.messages.len(), 1000);
        let mut seqs: Vec<u64> = (0..1000).collect();
        seqs.swap(3, 700);
        seqs.reverse();
        live.apply(11, 0, &Track::Settle { queue_id: 9, seqs });
        assert!(live.messages.is_empty() && live.enqueues.is_empty());
        assert!(live.segments.values().all(|c| c.live == 0));
    }
}
