//! Getting over a failed write or sync: the records no sync has covered are written
//! again on a new segment, synced, and only then confirmed.
//!
//! The writer thread owns all of this ([`Unsynced`] is one of its fields). It keeps every
//! batch it writes ([`Batch`]: the chunks, which are `Bytes`, and the bookkeeping of each
//! record) until the syncer reports a sync that covers it. When a write fails, or a sync
//! (the syncer hands the waiters back), the writer:
//! 1. gives up on the current segment past what a sync is known to cover: after a failed
//!    `fsync` the kernel may have dropped the unsynced pages and cleared the error, so
//!    neither that data nor a later `fsync` of the file can be trusted;
//! 2. raises the fault (`Writer::faulted`: the broker's disk alarm blocks publishers) and
//!    holds what arrives meanwhile, unwritten and unconfirmed;
//! 3. retries, backing off from [`RETRY_FIRST`] to [`RETRY_MAX`]: creates a new segment,
//!    writes every kept batch there in order (moving readers' locations to the copies),
//!    syncs it, confirms, then truncates each segment it gave up on to its trusted length
//!    and syncs that, so an older segment never ends in records a crash may have torn;
//! 4. clears the fault once all of that succeeded.
//!
//! A record is confirmed only after a sync that covers a copy of it succeeded, so a power
//! loss at any point keeps every confirmed record; a copy written twice (the original in
//! the old segment reached the disk after all) replays as one, as compaction's copies do.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::buffer::{write_chunks, Outgoing};
use super::completion::Completion;
use super::files::create_segment;
use super::format::segment_name;
use super::liveness::{lock, Index, Track};
use super::syncer::Syncer;
use super::writer::Writer;

/// First wait before a retry: an `EMFILE` or a passing `EIO` often clears at once.
pub const RETRY_FIRST: Duration = Duration::from_millis(10);
/// Longest wait between retries: a full disk clears when space is freed, and a retry a
/// second costs one failed system call while confirming within a second of that.
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// Records written together (or held together during a fault), kept until a sync covers
/// them.
pub struct Batch {
    /// The segment they are in (meaningless while not `published`).
    seg: u64,
    /// Their offset in it.
    start: u64,
    /// Their length.
    len: u64,
    /// The encoded records.
    chunks: Vec<Bytes>,
    /// Each record's bookkeeping, by offset from `start`.
    tracks: Vec<(u64, Track)>,
    /// Whether `tracks` are applied to the index (at `seg`, `start`).
    published: bool,
}

impl Batch {
    /// Records about to be written at `start`; `pending` holds their bookkeeping with
    /// offsets in the segment.
    pub fn new(
        start: u64,
        chunks: Vec<Bytes>,
        len: u64,
        pending: impl Iterator<Item = (u64, u64, Track)>,
    ) -> Batch {
        Batch {
            seg: 0,
            start,
            len,
            chunks,
            tracks: pending
                .map(|(_, offset, t)| (offset.saturating_sub(start), t))
                .collect(),
            published: false,
        }
    }

    /// The records are written at `start` of segment `seg`: readers find them there.
    pub fn publish(&mut self, index: &Mutex<Index>, seg: u64) {
        self.seg = seg;
        let mut index = lock(index);
        for (rel, track) in &self.tracks {
            index.live.apply(seg, self.start + rel, track);
        }
        self.published = true;
    }

    /// The records were written again at `at` of segment `to`: readers find the copies.
    fn relocate(&mut self, index: &Mutex<Index>, to: u64, at: u64) {
        if !self.published {
            self.start = at;
            self.publish(index, to);
            return;
        }
        let from = self.seg;
        let mut index = lock(index);
        for (rel, track) in &self.tracks {
            match track {
                Track::MessageEnqueue {
                    msg_id,
                    queue_id,
                    seq,
                    ..
                } => {
                    index.live.moved_message(*msg_id, from, to, at + rel);
                    index.live.moved_enqueue((*queue_id, *seq), from, to);
                }
                Track::Enqueue { queue_id, seq, .. } => {
                    index.live.moved_enqueue((*queue_id, *seq), from, to);
                }
                Track::Transient { msg_id, .. } => {
                    index.live.moved_message(*msg_id, from, to, at + rel);
                }
                Track::Settle { .. } | Track::DropQueue(_) | Track::Release(_) | Track::Nothing => {
                }
            }
        }
        self.seg = to;
        self.start = at;
    }
}

/// A fault being got over.
struct Fault {
    /// The next attempt starts a new segment (the current one is given up on, or full).
    new_segment: bool,
    /// Who waits for the kept records: answered once a copy is synced.
    waiters: Vec<Completion>,
    /// Who waits for them to be written.
    flushes: Vec<Completion>,
    since: Instant,
    attempts: u32,
    backoff: Duration,
    next_try: Instant,
}

/// What the writer keeps for a failed write or sync.
#[derive(Default)]
pub struct Unsynced {
    /// Batches no sync is known to cover, in log order.
    pub(super) batches: VecDeque<Batch>,
    /// Octets of the current segment a sync is known to cover.
    pub(super) synced_to: u64,
    /// Segments given up on, with the octets of each a sync covered: truncated to that
    /// once their records are safe elsewhere.
    abandoned: Vec<(u64, u64)>,
    fault: Option<Fault>,
}

impl Unsynced {
    /// Whether a fault lasts.
    pub fn faulted(&self) -> bool {
        self.fault.is_some()
    }

    /// How long until the next attempt.
    pub fn until_retry(&self) -> Duration {
        self.fault.as_ref().map_or(Duration::ZERO, |f| {
            f.next_try.saturating_duration_since(Instant::now())
        })
    }

    /// Starts a fault (or goes on with the one that lasts).
    pub(super) fn start_fault(&mut self, e: &std::io::Error, what: &str) {
        match &mut self.fault {
            Some(f) => f.new_segment = true,
            None => {
                tracing::error!(error = %e, "message store cannot {what}; confirms are withheld and the records are written again on a new segment once it can (disk alarm raised)");
                let now = Instant::now();
                self.fault = Some(Fault {
                    new_segment: true,
                    waiters: Vec::new(),
                    flushes: Vec::new(),
                    since: now,
                    attempts: 0,
                    backoff: RETRY_FIRST,
                    next_try: now + RETRY_FIRST,
                });
            }
        }
    }

    /// During a fault: keeps the round's records unwritten (`pending` has their offsets
    /// as if written at `start`), and their waiters.
    pub(super) fn hold(
        &mut self,
        start: u64,
        buf: &mut Outgoing,
        pending: &mut Vec<(u64, u64, Track)>,
        waiters: &mut Vec<Completion>,
        flushes: Vec<Completion>,
    ) {
        if !buf.is_empty() || !pending.is_empty() {
            let len = buf.len();
            self.batches
                .push_back(Batch::new(start, buf.take(), len, pending.drain(..)));
        }
        if let Some(f) = &mut self.fault {
            f.waiters.append(waiters);
            f.flushes.extend(flushes);
        }
    }

    /// Forgets the batches a sync covered (`synced`: segment, octets), while no fault
    /// lasts; `seg` is the current segment.
    pub(super) fn prune(&mut self, synced: Option<(u64, u64)>, seg: u64) {
        let Some((s, upto)) = synced else { return };
        if self.fault.is_some() {
            return;
        }
        while self
            .batches
            .front()
            .is_some_and(|b| b.published && (b.seg, b.start + b.len) <= (s, upto))
        {
            self.batches.pop_front();
        }
        if s == seg {
            self.synced_to = self.synced_to.max(upto);
        }
    }
}

impl Writer {
    /// A write to the current segment, or its sync, failed: it is not trusted past what
    /// a sync covered, and what it holds beyond that is written again elsewhere.
    pub(super) fn fail_current(&mut self, e: &std::io::Error, what: &str) {
        let u = &mut self.unsynced;
        if !u.fault.as_ref().is_some_and(|f| f.new_segment) {
            u.abandoned.push((self.seg, u.synced_to));
        }
        u.start_fault(e, what);
        self.publish_fault();
    }

    /// Takes back the waiters of failed syncs.
    pub(super) fn take_failures(&mut self, syncer: &Syncer) {
        for (seg, waiters) in syncer.take_failures() {
            let given_up = self.unsynced.fault.as_ref().is_some_and(|f| f.new_segment);
            if seg == self.seg && !given_up {
                self.fail_current(&std::io::Error::other("fsync failed"), "sync a segment");
            }
            match &mut self.unsynced.fault {
                Some(f) => f.waiters.extend(waiters),
                // An older segment's sync: its records were written again and synced on
                // a newer segment when the fault it started was got over.
                None => {
                    for w in waiters {
                        w.finish(true);
                    }
                }
            }
        }
    }

    /// Tries to get over the fault, if the backoff allows (`now`: whatever it says).
    pub(super) fn retry(&mut self, now: bool) {
        if !now && !self.unsynced.until_retry().is_zero() {
            return;
        }
        match self.try_recover() {
            Ok(()) => {
                if let Some(f) = self.unsynced.fault.take() {
                    tracing::info!(
                        attempts = f.attempts + 1,
                        elapsed_ms = f.since.elapsed().as_millis() as u64,
                        segment = self.seg,
                        "message store writes again; the records held were written to a new segment and confirmed (disk alarm cleared)"
                    );
                }
                self.publish_fault();
            }
            Err(e) => {
                if let Some(f) = &mut self.unsynced.fault {
                    f.attempts += 1;
                    f.backoff = (f.backoff * 2).min(RETRY_MAX);
                    f.next_try = Instant::now() + f.backoff;
                    tracing::debug!(error = %e, attempts = f.attempts, "message store retry failed");
                }
            }
        }
    }

    fn try_recover(&mut self) -> std::io::Result<()> {
        if self.unsynced.fault.as_ref().is_some_and(|f| f.new_segment) {
            let next = self.seg + 1;
            let path = self.dir.join(segment_name(next));
            // A segment left by an attempt that failed half-way goes first.
            if path.exists() {
                self.disk.remove_file(&path)?;
            }
            let file = create_segment(&*self.disk, &self.dir, next)?;
            self.switch_to(next, file);
            if let Some(f) = &mut self.unsynced.fault {
                f.new_segment = false;
            }
        }
        if !self.unsynced.batches.is_empty() {
            let chunks: Vec<Bytes> = self
                .unsynced
                .batches
                .iter()
                .flat_map(|b| b.chunks.iter().cloned())
                .collect();
            if let Err(e) = write_chunks(&*self.file, &chunks) {
                self.fail_current(&e, "write");
                return Err(e);
            }
            let mut at = self.size;
            for b in &mut self.unsynced.batches {
                b.relocate(&self.index, self.seg, at);
                at += b.len;
            }
            self.size = at;
        }
        if let Err(e) = self.sync_current() {
            self.fail_current(&e, "sync a segment");
            return Err(e);
        }
        self.unsynced.synced_to = self.size;
        self.unsynced.batches.clear();
        if let Some(f) = &mut self.unsynced.fault {
            for w in f.waiters.drain(..).chain(f.flushes.drain(..)) {
                w.finish(true);
            }
        }
        // The copies are durable: the segments given up on lose what they held past
        // their synced length, so none of them ends in a record a crash may have torn.
        while let Some(&(seg, len)) = self.unsynced.abandoned.first() {
            let path = self.dir.join(segment_name(seg));
            if path.exists() {
                let f = self.disk.open_append(&path)?;
                f.set_len(len)?;
                f.sync_all()?;
            }
            self.unsynced.abandoned.remove(0);
        }
        Ok(())
    }

    /// Syncs the current segment on this thread (the syncer holds no job meanwhile).
    fn sync_current(&self) -> std::io::Result<()> {
        if self
            .fail_syncs
            .as_ref()
            .is_some_and(|f| f.load(std::sync::atomic::Ordering::SeqCst))
        {
            return Err(std::io::Error::other("injected sync failure"));
        }
        self.file.sync_data()
    }

    /// Tells the store (and through it the disk alarm) whether a fault lasts.
    pub(super) fn publish_fault(&self) {
        let on = self.unsynced.faulted();
        self.faulted
            .send_if_modified(|v| std::mem::replace(v, on) != on);
    }
}
