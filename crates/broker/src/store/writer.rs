//! The log writer: one thread appends the records of every queue and connection to the
//! current segment; a second one, the syncer, makes them durable with `fdatasync` (group
//! commit). The writer hands the syncer the waiters of each batch once the batch is
//! written, and goes on writing the next one while the syncer syncs. The syncer takes
//! every batch handed over since its last sync and covers them all with one sync, which
//! starts only after they were written; batches written meanwhile wait for the next.
//! Only after the sync that covers a record are its waiters told (publisher confirms).
//! With little written per sync, the writer waits for each sync to end instead, so small
//! records pile up and are written together (below 1 MiB per sync).
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
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

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
    fn write_to(&mut self, file: &File) -> std::io::Result<()> {
        let result = self.write_all(file);
        self.clear();
        result
    }

    fn write_all(&mut self, mut file: &File) -> std::io::Result<()> {
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
    /// Graceful close: write the clean-shutdown record as the log's last record, sync,
    /// stop. The writer writes it itself, after everything else it will ever write (a
    /// compaction included), so the record cannot end up before other records.
    Close(std::sync::mpsc::Sender<bool>),
    /// Test hook: the writer thread panics, as a bug would.
    #[cfg(test)]
    Panic,
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

/// Most operations the writer takes per round: enough that a flood of small records is
/// one write and one sync, few enough that the first waiter of a round is not held long.
const WRITER_BATCH: usize = 4096;

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
    /// The segment being appended to (shared with the syncer).
    pub file: Arc<File>,
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
    /// Test hook: called with the segment number as each sync starts (after the
    /// `fail_syncs` check), so a test can hold a sync in progress.
    #[cfg(test)]
    pub before_sync: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

/// Records written to a segment whose waiters need them synced.
struct SyncJob {
    /// The segment they were written to.
    file: Arc<File>,
    /// Its number.
    seg: u64,
    /// Publishers waiting for the confirm.
    waiters: Vec<ConfirmTicket>,
    /// `Op::Sync` and the writer's own waits (rotation, compaction, stop).
    replies: Vec<std::sync::mpsc::Sender<bool>>,
}

/// While less than this is written per sync, the writer waits for each sync to end before
/// it takes more records: they pile up meanwhile and are written with one `write`, as
/// small records are cheaper to write together than to overlap with the sync. From this
/// much on, the writer goes on writing while the sync runs.
const WRITE_DURING_SYNC: u64 = 1 << 20;

/// How far the syncer is, for the writer's pacing.
#[derive(Default)]
struct Progress {
    /// Sync rounds finished.
    rounds: u64,
    /// Jobs handed over and not answered yet.
    pending: u64,
    /// The syncer thread ended (only after a panic while the writer runs).
    gone: bool,
}

/// [`Progress`] with its condition variable, shared by the writer and the syncer.
#[derive(Default)]
struct Shared {
    progress: Mutex<Progress>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What the syncer thread holds. However the thread ends (a panic included), what it
/// still holds or was handed is answered `false`, and the writer is told not to wait for
/// it; the writer hands jobs over under the same lock, so none is left unanswered.
struct SyncState {
    rx: std::sync::mpsc::Receiver<SyncJob>,
    jobs: Vec<SyncJob>,
    shared: Arc<Shared>,
    poisoned: Arc<AtomicBool>,
}

impl Drop for SyncState {
    fn drop(&mut self) {
        if std::thread::panicking() {
            tracing::error!(
                "the message store's sync thread panicked; refusing persistent messages from now on"
            );
            self.poisoned.store(true, Ordering::SeqCst);
        }
        let mut p = self.shared.lock();
        p.gone = true;
        for job in self.jobs.drain(..).chain(self.rx.try_iter()) {
            for w in job.waiters {
                w.send(false);
            }
            for r in job.replies {
                let _ = r.send(false);
            }
        }
        drop(p);
        self.shared.changed.notify_all();
    }
}

/// The syncer thread, or none with `--fsync off` (waiters are then answered once their
/// records are written).
struct Syncer {
    tx: Option<std::sync::mpsc::Sender<SyncJob>>,
    thread: Option<JoinHandle<()>>,
    poisoned: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// The last finished round the writer saw, and what it wrote since.
    seen: u64,
    written: u64,
    /// Whether the writer goes on writing during syncs (see [`WRITE_DURING_SYNC`]).
    overlap: bool,
}

impl Syncer {
    fn start(w: &Writer) -> Syncer {
        let mut syncer = Syncer {
            tx: None,
            thread: None,
            poisoned: w.poisoned.clone(),
            shared: Arc::default(),
            seen: 0,
            written: 0,
            overlap: true,
        };
        if w.fsync == FsyncMode::Off {
            return syncer;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let state = SyncState {
            rx,
            jobs: Vec::new(),
            shared: syncer.shared.clone(),
            poisoned: w.poisoned.clone(),
        };
        let fail_syncs = w.fail_syncs.clone();
        #[cfg(test)]
        let before_sync = w.before_sync.clone();
        #[cfg(not(test))]
        let before_sync = None;
        match std::thread::Builder::new()
            .name("minimq-sync".into())
            .spawn(move || sync_loop(state, fail_syncs, before_sync))
        {
            Ok(t) => {
                syncer.tx = Some(tx);
                syncer.thread = Some(t);
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot start the message store's sync thread; refusing persistent messages from now on");
                w.poisoned.store(true, Ordering::SeqCst);
            }
        }
        syncer
    }

    /// Hands over the waiters of records just written to `file`: they are answered after
    /// a sync that starts from now on (at once with `--fsync off`, or `false` once the
    /// store is poisoned).
    fn commit(
        &self,
        file: &Arc<File>,
        seg: u64,
        waiters: &mut Vec<ConfirmTicket>,
        replies: Vec<std::sync::mpsc::Sender<bool>>,
    ) {
        if waiters.is_empty() && replies.is_empty() {
            return;
        }
        let ok = !self.poisoned.load(Ordering::SeqCst);
        let job = SyncJob {
            file: file.clone(),
            seg,
            waiters: std::mem::take(waiters),
            replies,
        };
        let job = match &self.tx {
            Some(tx) if ok => {
                let mut p = self.shared.lock();
                if p.gone {
                    job
                } else {
                    p.pending += 1;
                    match tx.send(job) {
                        Ok(()) => return,
                        Err(std::sync::mpsc::SendError(job)) => {
                            p.pending -= 1;
                            job
                        }
                    }
                }
            }
            _ => job,
        };
        if ok && self.tx.is_some() {
            // Only if the syncer panicked: nothing can be synced any more.
            self.poisoned.store(true, Ordering::SeqCst);
        }
        // With `--fsync off` the records are as durable as they get once written.
        let ok = !self.poisoned.load(Ordering::SeqCst);
        for w in job.waiters {
            w.send(ok);
        }
        for r in job.replies {
            let _ = r.send(ok);
        }
    }

    /// Syncs everything written to `file` so far (answering `waiters` too) and waits for
    /// it; answers whether the store is still sound.
    fn sync_now(&self, file: &Arc<File>, seg: u64, waiters: &mut Vec<ConfirmTicket>) -> bool {
        let (reply, rx) = std::sync::mpsc::channel();
        self.commit(file, seg, waiters, vec![reply]);
        rx.recv().unwrap_or(false) && !self.poisoned.load(Ordering::SeqCst)
    }

    /// Called after each batch the writer wrote (`written` octets): with little written
    /// per sync, waits until the sync in progress (or the next, if one is only queued)
    /// ends, so the records sent meanwhile are taken and written together.
    fn pace(&mut self, written: u64) {
        if self.tx.is_none() {
            return;
        }
        let mut p = self.shared.lock();
        if p.rounds != self.seen {
            self.overlap = self.written >= WRITE_DURING_SYNC;
            self.seen = p.rounds;
            self.written = 0;
        }
        self.written += written;
        if self.overlap || p.pending == 0 || p.gone {
            return;
        }
        let round = p.rounds;
        while p.pending > 0 && p.rounds == round && !p.gone {
            p = self
                .shared
                .changed
                .wait(p)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Lets the syncer finish what it was handed, then joins it.
    fn stop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            // A panic was logged, and the store poisoned, by the thread itself.
            let _ = t.join();
        }
    }
}

/// The syncer thread: takes every job handed over since its last sync, syncs each
/// segment they were written to once, then answers them. A job arrives only once its
/// records are written, so the sync covers them; jobs arriving during a sync wait for
/// the next one. Once the store is poisoned, nothing is synced and everyone hears `false`.
fn sync_loop(
    mut s: SyncState,
    fail_syncs: Option<Arc<AtomicBool>>,
    before_sync: Option<Arc<dyn Fn(u64) + Send + Sync>>,
) {
    while let Ok(first) = s.rx.recv() {
        s.jobs.push(first);
        s.jobs.extend(s.rx.try_iter());
        let poisoned = &s.poisoned;
        let mut ok = !poisoned.load(Ordering::SeqCst);
        let mut synced = None;
        // Jobs come in write order: those of an older segment first.
        for job in &s.jobs {
            if !ok {
                break;
            }
            if synced == Some(job.seg) {
                continue;
            }
            synced = Some(job.seg);
            let injected = fail_syncs
                .as_ref()
                .is_some_and(|f| f.load(Ordering::SeqCst));
            if let Some(hook) = &before_sync {
                hook(job.seg);
            }
            let result = if injected {
                Err(std::io::Error::other("injected sync failure"))
            } else {
                job.file.sync_data()
            };
            if let Err(e) = result {
                tracing::error!(error = %e, segment = job.seg, "message store fsync failed; refusing persistent messages from now on");
                poisoned.store(true, Ordering::SeqCst);
                ok = false;
            }
        }
        // A write may have failed meanwhile: then nothing is confirmed.
        let ok = ok && !poisoned.load(Ordering::SeqCst);
        let answered = s.jobs.len() as u64;
        for job in s.jobs.drain(..) {
            for w in job.waiters {
                w.send(ok);
            }
            for r in job.replies {
                let _ = r.send(ok);
            }
        }
        let mut p = s.shared.lock();
        p.pending = p.pending.saturating_sub(answered);
        p.rounds += 1;
        drop(p);
        s.shared.changed.notify_all();
    }
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
    sync_dir(dir)?;
    Ok(f)
}

/// Makes the entries of directory `dir` durable: a file created, renamed or deleted in
/// it is only sure to stay so once the directory itself is synced.
pub fn sync_dir(dir: &std::path::Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()?;
    #[cfg(test)]
    dir_events::note(dir, "sync");
    Ok(())
}

/// Test record of what happened to the entries of each directory, in order.
#[cfg(test)]
pub(crate) mod dir_events {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;

    static EVENTS: Mutex<Vec<(PathBuf, &'static str)>> = Mutex::new(Vec::new());

    pub(crate) fn note(dir: &Path, what: &'static str) {
        EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((dir.to_path_buf(), what));
    }

    /// What happened in `dir`, in order.
    pub(crate) fn of(dir: &Path) -> Vec<&'static str> {
        EVENTS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(d, _)| d == dir)
            .map(|(_, w)| *w)
            .collect()
    }
}

impl Writer {
    /// Runs until stopped (on its own thread, with the syncer on another).
    pub fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut syncer = Syncer::start(&self);
        let mut batch = Vec::new();
        let mut waiters: Vec<ConfirmTicket> = Vec::new();
        let mut buf = Outgoing::default();
        let mut pending: Vec<(u64, u64, Track)> = Vec::new();
        while let Some(first) = rx.blocking_recv() {
            batch.push(first);
            while batch.len() < WRITER_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let mut syncs = Vec::new();
            let mut flushes = Vec::new();
            let mut stop = None;
            let mut clean = false;
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
                            // Rotate: what belongs to the old segment is written and
                            // synced on it (its waiters answered) before the next segment
                            // exists, so only the newest segment can have a torn tail.
                            self.write_out(&mut buf);
                            self.publish(&mut pending);
                            syncer.sync_now(&self.file, self.seg, &mut waiters);
                            self.rotate();
                        }
                        pending.push((self.seg, self.size + buf.len(), track));
                        buf.push(bytes);
                        if let Some(n) = notify {
                            waiters.push(n);
                        }
                    }
                    Op::DropQueue(id) => pending.push((self.seg, 0, Track::DropQueue(id))),
                    Op::Sync(reply) => syncs.push(reply),
                    Op::Flush(reply) => flushes.push(reply),
                    Op::Stop(reply) => stop = Some(reply),
                    Op::Close(reply) => {
                        stop = Some(reply);
                        clean = true;
                    }
                    #[cfg(test)]
                    Op::Panic => panic!("store writer made to panic by a test"),
                }
            }
            let written = buf.len();
            let ok = self.write_out(&mut buf);
            self.publish(&mut pending);
            // The syncer gets the batch's waiters before any Flush is answered: whoever
            // saw the flush knows the records are written and handed over.
            syncer.commit(&self.file, self.seg, &mut waiters, syncs);
            for r in flushes {
                let _ = r.send(ok);
            }
            self.delete_dead_segments();
            // No compaction on the way out: it is not needed to stop, and it would write
            // after the records of this batch.
            if stop.is_none() && self.compact_oldest(&syncer) {
                self.delete_dead_segments();
            }
            if let Some(r) = stop {
                if clean {
                    let mut record = bytes::BytesMut::new();
                    Record::CleanShutdown.encode(&mut record);
                    buf.push_bytes(record.freeze());
                    self.write_out(&mut buf);
                }
                let ok = syncer.sync_now(&self.file, self.seg, &mut waiters);
                syncer.stop();
                let _ = r.send(ok);
                return;
            }
            syncer.pace(written);
        }
        syncer.stop();
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

    /// Writes `buf` to the current segment (not synced); answers whether the store is
    /// still sound.
    fn write_out(&mut self, buf: &mut Outgoing) -> bool {
        if self.poisoned.load(Ordering::SeqCst) {
            buf.clear();
            return false;
        }
        if !buf.is_empty() {
            let len = buf.len();
            if let Err(e) = buf.write_to(&self.file) {
                tracing::error!(error = %e, segment = self.seg, "message store write failed; refusing persistent messages from now on");
                self.poisoned.store(true, Ordering::SeqCst);
                return false;
            }
            self.size += len;
        }
        true
    }

    fn rotate(&mut self) {
        let next = self.seg + 1;
        match create_segment(&self.dir, next) {
            Ok(f) => {
                self.file = Arc::new(f);
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
        let mut deleted = false;
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
                Ok(()) => {
                    #[cfg(test)]
                    dir_events::note(&self.dir, "delete");
                    tracing::debug!(segment = seg, "deleted settled segment");
                    deleted = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete settled segment");
                    break;
                }
            }
            lock(&self.index).live.segments.remove(&seg);
        }
        // The deletions are durable only once the directory is synced: a segment that
        // came back after a crash, without the later segments that settled its
        // messages, would bring them back. One sync covers all of them. A failure leaves
        // every record written so far intact, so it is logged rather than a reason to
        // refuse persistent messages.
        if deleted {
            if let Err(e) = sync_dir(&self.dir) {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot sync the directory after deleting segments");
            }
        }
    }

    /// Copies the few live records of the oldest segment forward to the current one, so a
    /// long-lived message does not keep a mostly dead segment (and every later one) on
    /// disk. Runs when the oldest segment is at least [`COMPACT_LAG`] segments behind the
    /// current one and less than a quarter live. Answers whether it copied anything.
    fn compact_oldest(&mut self, syncer: &Syncer) -> bool {
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
        let base = self.size;
        let mut outgoing = Outgoing::default();
        outgoing.push_bytes(Bytes::from(out));
        // The copies are synced before the segment they come from can be deleted.
        if !self.write_out(&mut outgoing) || !syncer.sync_now(&self.file, self.seg, &mut Vec::new())
        {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::QueueEvent;
    use std::sync::Condvar;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    /// The `before_sync` hook: records every sync's segment and, while held, keeps the
    /// sync in progress.
    #[derive(Default)]
    struct Gate {
        state: Mutex<GateState>,
        cv: Condvar,
    }

    #[derive(Default)]
    struct GateState {
        syncs: Vec<u64>,
        hold: bool,
        held: bool,
        panic: bool,
    }

    impl Gate {
        fn hook(self: &Arc<Self>) -> Arc<dyn Fn(u64) + Send + Sync> {
            let gate = self.clone();
            Arc::new(move |seg| {
                let mut s = gate.state.lock().unwrap();
                if s.panic {
                    drop(s);
                    panic!("injected panic in the sync thread");
                }
                s.syncs.push(seg);
                if s.hold {
                    s.held = true;
                    gate.cv.notify_all();
                    while s.hold {
                        s = gate.cv.wait(s).unwrap();
                    }
                    s.held = false;
                }
            })
        }

        fn hold(&self) {
            self.state.lock().unwrap().hold = true;
        }

        /// Waits until a sync is held in progress.
        fn wait_held(&self) {
            let s = self.state.lock().unwrap();
            let (s, timeout) = self.cv.wait_timeout_while(s, WAIT, |s| !s.held).unwrap();
            assert!(!timeout.timed_out() && s.held, "no sync started");
        }

        fn release(&self) {
            self.state.lock().unwrap().hold = false;
            self.cv.notify_all();
        }

        fn syncs(&self) -> Vec<u64> {
            self.state.lock().unwrap().syncs.clone()
        }
    }

    struct Harness {
        dir: PathBuf,
        tx: mpsc::UnboundedSender<Op>,
        sink: crate::queue::EventSink,
        events: mpsc::UnboundedReceiver<QueueEvent>,
        thread: Option<JoinHandle<()>>,
        fail: Arc<AtomicBool>,
        poisoned: Arc<AtomicBool>,
    }

    fn start(name: &str, fsync: FsyncMode, segment_size: u64, gate: &Arc<Gate>) -> Harness {
        let dir =
            std::env::temp_dir().join(format!("minimq-writer-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = create_segment(&dir, 1).unwrap();
        let mut index = Index::default();
        index.live.segments.entry(1).or_default();
        let fail = Arc::new(AtomicBool::new(false));
        let poisoned = Arc::new(AtomicBool::new(false));
        let w = Writer {
            dir: dir.clone(),
            file: Arc::new(file),
            seg: 1,
            size: super::super::format::FILE_HEADER_LEN as u64,
            segment_size,
            fsync,
            index: Arc::new(Mutex::new(index)),
            poisoned: poisoned.clone(),
            fail_syncs: Some(fail.clone()),
            before_sync: Some(gate.hook()),
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let (sink, events) = mpsc::unbounded_channel();
        let thread = std::thread::spawn(move || w.run(rx));
        Harness {
            dir,
            tx,
            sink,
            events,
            thread: Some(thread),
            fail,
            poisoned,
        }
    }

    impl Harness {
        /// Appends a 100-octet record; `seq` hears when it is durable.
        fn append(&self, seq: u64) {
            self.append_sized(seq, 100);
        }

        /// Appends a record of `len` octets; `seq` hears when it is durable.
        fn append_sized(&self, seq: u64, len: usize) {
            let notify = ConfirmTicket {
                sink: self.sink.clone(),
                channel: 1,
                seq,
            };
            let op = Op::Append {
                bytes: Chunks::One(Bytes::from(vec![seq as u8; len])),
                track: Track::Nothing,
                notify: Some(notify),
            };
            assert!(self.tx.send(op).is_ok());
        }

        /// Sends an op answering on a channel; returns the channel.
        fn ask(
            &self,
            op: fn(std::sync::mpsc::Sender<bool>) -> Op,
        ) -> std::sync::mpsc::Receiver<bool> {
            let (reply, rx) = std::sync::mpsc::channel();
            assert!(self.tx.send(op(reply)).is_ok());
            rx
        }

        /// Waits until everything sent so far is written.
        fn flush(&self) -> bool {
            self.ask(Op::Flush).recv_timeout(WAIT).unwrap()
        }

        /// The next `n` confirms, as (seq, ok).
        fn confirms(&mut self, n: usize) -> Vec<(u64, bool)> {
            // Waits on the channel itself (a runtime only for its timer).
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let mut out = Vec::new();
            while out.len() < n {
                let next =
                    rt.block_on(async { tokio::time::timeout(WAIT, self.events.recv()).await });
                match next {
                    Ok(Some(QueueEvent::Confirm { seq, ok, .. })) => out.push((seq, ok)),
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => panic!("confirms missing: {out:?}"),
                }
            }
            out
        }

        /// Confirms already sent.
        fn confirms_now(&mut self) -> Vec<(u64, bool)> {
            let mut out = Vec::new();
            while let Ok(ev) = self.events.try_recv() {
                if let QueueEvent::Confirm { seq, ok, .. } = ev {
                    out.push((seq, ok));
                }
            }
            out
        }

        /// Octets in segment 1.
        fn segment_len(&self) -> u64 {
            std::fs::metadata(self.dir.join(segment_name(1)))
                .unwrap()
                .len()
        }

        /// Stops the writer; answers its reply once the thread is joined.
        fn stop(mut self) -> bool {
            let ok = self.ask(Op::Stop).recv_timeout(WAIT).unwrap();
            self.thread.take().unwrap().join().unwrap();
            let _ = std::fs::remove_dir_all(&self.dir);
            ok
        }
    }

    /// A deleted segment stays deleted only once the directory is synced: without that, a
    /// crash can bring a settled segment back.
    #[test]
    fn deleting_settled_segments_syncs_the_directory() {
        let gate = Arc::new(Gate::default());
        let mut h = start("dirsync", FsyncMode::Batch, 1000, &gate);
        // Rounds the writer takes one at a time: each starts a new segment.
        for round in 0..3 {
            for seq in 1..=10 {
                h.append(round * 10 + seq);
            }
            assert_eq!(h.confirms(10).len(), 10);
        }
        // Two flushes: the second is handled in a later batch than the first, so the
        // first batch's segment deletion is done by then.
        assert!(h.flush());
        assert!(h.flush());
        assert!(
            !h.dir.join(segment_name(1)).exists(),
            "settled segments are deleted"
        );
        let events = dir_events::of(&h.dir);
        let last_delete = events
            .iter()
            .rposition(|e| *e == "delete")
            .expect("a segment was deleted");
        assert!(
            events[last_delete..].contains(&"sync"),
            "the directory is synced after the deletion: {events:?}"
        );
        assert!(h.stop());
    }

    #[test]
    fn a_record_written_during_a_sync_is_confirmed_only_by_a_later_sync() {
        let gate = Arc::new(Gate::default());
        let mut h = start("during", FsyncMode::Batch, 1 << 20, &gate);
        // (The writer starts out writing during syncs.)
        gate.hold();
        h.append(1);
        gate.wait_held();
        // Record 2 is written while the sync for record 1 runs...
        h.append(2);
        assert!(h.flush());
        assert!(
            h.confirms_now().is_empty(),
            "confirmed before the sync ended"
        );
        // ...so only the next sync, which fails, covers it.
        h.fail.store(true, Ordering::SeqCst);
        gate.release();
        assert_eq!(h.confirms(2), vec![(1, true), (2, false)]);
        assert!(h.poisoned.load(Ordering::SeqCst));
        // Poisoned: later records are refused, even with syncs working again.
        h.fail.store(false, Ordering::SeqCst);
        h.append(3);
        assert_eq!(h.confirms(1), vec![(3, false)]);
        assert!(!h.ask(Op::Sync).recv_timeout(WAIT).unwrap());
        assert!(!h.stop());
    }

    #[test]
    fn a_failed_sync_nacks_its_waiters() {
        let gate = Arc::new(Gate::default());
        let mut h = start("fail", FsyncMode::Batch, 1 << 20, &gate);
        h.append(1);
        assert_eq!(h.confirms(1), vec![(1, true)]);
        h.fail.store(true, Ordering::SeqCst);
        h.append(2);
        assert_eq!(h.confirms(1), vec![(2, false)]);
        assert!(h.poisoned.load(Ordering::SeqCst));
        assert!(!h.stop());
    }

    #[test]
    fn one_sync_covers_every_batch_written_during_the_previous_one() {
        let gate = Arc::new(Gate::default());
        let mut h = start("group", FsyncMode::Batch, 1 << 20, &gate);
        gate.hold();
        h.append(0);
        gate.wait_held();
        // Several batches (each flush ends one), all written while the sync runs.
        for seq in 1..=50 {
            h.append(seq);
            if seq % 10 == 0 {
                assert!(h.flush());
            }
        }
        let sync = h.ask(Op::Sync);
        assert!(h.flush());
        assert!(
            sync.recv_timeout(Duration::from_millis(50)).is_err(),
            "Sync answered while the sync it needs has not started"
        );
        assert!(h.confirms_now().is_empty());
        gate.release();
        let confirms = h.confirms(51);
        assert!(confirms.iter().all(|(_, ok)| *ok), "{confirms:?}");
        assert!(sync.recv_timeout(WAIT).unwrap());
        assert_eq!(
            gate.syncs(),
            vec![1, 1],
            "one sync for record 0, one for the rest"
        );
        assert!(h.stop());
    }

    #[test]
    fn the_writer_writes_during_a_sync_only_when_much_is_written_per_sync() {
        let gate = Arc::new(Gate::default());
        let mut h = start("pace", FsyncMode::Batch, 64 << 20, &gate);
        // Little per sync: records sent during a sync are written once it ends, together.
        for seq in 0..3 {
            h.append(seq);
            assert_eq!(h.confirms(1), vec![(seq, true)]);
        }
        gate.hold();
        h.append(10);
        gate.wait_held();
        let len = h.segment_len();
        for seq in 11..=60 {
            h.append(seq);
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.segment_len(), len, "written during the sync");
        let syncs = gate.syncs().len();
        gate.release();
        let confirms = h.confirms(51);
        assert!(confirms.iter().all(|(_, ok)| *ok), "{confirms:?}");
        assert_eq!(gate.syncs().len(), syncs + 1, "one sync for the fifty");
        // After a round with a MiB written, the writer writes during the next sync.
        h.append_sized(100, 1 << 20);
        assert_eq!(h.confirms(1), vec![(100, true)]);
        gate.hold();
        h.append(102);
        gate.wait_held();
        let len = h.segment_len();
        for seq in 103..=110 {
            h.append(seq);
        }
        assert!(h.flush());
        assert_eq!(h.segment_len(), len + 800, "not written during the sync");
        gate.release();
        let confirms = h.confirms(9);
        assert!(confirms.iter().all(|(_, ok)| *ok), "{confirms:?}");
        assert!(h.stop());
    }

    #[test]
    fn waiters_across_rotations_are_answered_after_a_sync_of_their_segment() {
        let gate = Arc::new(Gate::default());
        let mut h = start("rotate", FsyncMode::Batch, 4096, &gate);
        // 20,000 octets through 4 KiB segments: several rotations, inside batches too.
        for seq in 0..200 {
            h.append(seq);
            if seq % 50 == 49 {
                assert!(h.flush());
            }
        }
        let confirms = h.confirms(200);
        assert_eq!(confirms.len(), 200);
        assert!(confirms.iter().all(|(_, ok)| *ok), "{confirms:?}");
        let mut synced = gate.syncs();
        synced.dedup();
        let last = *synced.last().unwrap();
        assert!(last >= 4, "{synced:?}");
        assert_eq!(
            synced,
            (1..=last).collect::<Vec<_>>(),
            "every segment synced, in order"
        );
        assert!(h.stop());
    }

    #[test]
    fn stop_answers_everything_then_joins_the_syncer() {
        let gate = Arc::new(Gate::default());
        let mut h = start("stop", FsyncMode::Batch, 1 << 20, &gate);
        for seq in 0..20 {
            h.append(seq);
        }
        let stop = h.ask(Op::Stop);
        assert!(stop.recv_timeout(WAIT).unwrap());
        // Everything before the Stop was answered before it.
        let confirms = h.confirms_now();
        assert_eq!(confirms, (0..20).map(|s| (s, true)).collect::<Vec<_>>());
        h.thread.take().unwrap().join().unwrap();
        // The writer and the syncer are gone, with their handles on the hook.
        assert_eq!(Arc::strong_count(&gate), 1);
        let _ = std::fs::remove_dir_all(&h.dir);
    }

    #[test]
    fn a_panic_in_the_sync_thread_nacks_everything_and_poisons_the_store() {
        let gate = Arc::new(Gate::default());
        let mut h = start("panic", FsyncMode::Batch, 1 << 20, &gate);
        h.append(1);
        assert_eq!(h.confirms(1), vec![(1, true)]);
        gate.state.lock().unwrap().panic = true;
        for seq in 2..=20 {
            h.append(seq);
        }
        let confirms = h.confirms(19);
        assert!(confirms.iter().all(|(_, ok)| !*ok), "{confirms:?}");
        assert!(h.poisoned.load(Ordering::SeqCst));
        h.append(21);
        assert_eq!(h.confirms(1), vec![(21, false)]);
        assert!(!h.ask(Op::Sync).recv_timeout(WAIT).unwrap());
        assert!(!h.stop());
    }

    #[test]
    fn fsync_off_answers_after_the_write_and_never_syncs() {
        let gate = Arc::new(Gate::default());
        let mut h = start("off", FsyncMode::Off, 4096, &gate);
        for seq in 0..100 {
            h.append(seq);
        }
        let confirms = h.confirms(100);
        assert!(confirms.iter().all(|(_, ok)| *ok), "{confirms:?}");
        assert!(h.ask(Op::Sync).recv_timeout(WAIT).unwrap());
        assert!(h.stop());
        assert!(gate.syncs().is_empty());
    }
}
