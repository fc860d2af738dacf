//! The writer thread: the only one that appends to the message log.
//!
//! The store's callers (queue tasks, through `Store`) send it [`Op`]s on an unbounded
//! channel; nothing else touches the current segment. The writer takes everything
//! waiting (up to [`WRITER_BATCH`] operations) as one batch, writes the batch's records
//! with one vectored write (`buffer.rs`), applies their bookkeeping to the liveness index
//! (`liveness.rs`) so readers find them, and hands the batch's waiters to the syncer
//! (`syncer.rs`), which finishes them after the `fdatasync` that covers them. Then it
//! deletes and compacts segments nothing needs any more (`purge.rs`).
//!
//! When a segment is full, its records are synced before the next one is created, so
//! only the newest segment can end in a torn record. The records of each batch are kept
//! until a sync covers them: a failed write or sync (a full disk, an I/O error, no file
//! descriptor for a new segment) is a fault the writer gets over by itself, writing them
//! again on a new segment (`rewrite.rs`); meanwhile nothing is confirmed. Only a panic
//! (a bug) poisons the store for good.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::buffer::{write_chunks, Chunks, Outgoing};
use super::completion::Completion;
use super::disk::{Disk, DiskFile};
use super::files::create_segment;
use super::format::{Record, FILE_HEADER_LEN};
use super::liveness::{lock, Index, Track};
use super::rewrite::{Batch, Unsynced};
use super::syncer::Syncer;
use super::FsyncMode;

/// A request to the writer thread.
pub enum Op {
    /// Append encoded records; finish `notify` once they are durable.
    Append {
        /// The encoded records.
        bytes: Chunks,
        /// Liveness bookkeeping.
        track: Track,
        /// Who waits for the sync.
        notify: Option<Completion>,
    },
    /// A durable queue was deleted: everything it held is dead.
    DropQueue(u64),
    /// Paged-out transient messages are no longer needed (nothing is written).
    Release(Vec<u64>),
    /// Finish once everything sent before is durable.
    Sync(Completion),
    /// Finish once everything sent before is written (not necessarily synced).
    Flush(Completion),
    /// Sync, then stop.
    Stop(Completion),
    /// Graceful close: write the clean-shutdown record as the log's last record, sync,
    /// stop. The writer writes it itself, after everything else it will ever write (a
    /// compaction included), so the record cannot end up before other records.
    Close(Completion),
    /// Nothing to do but look at the syncer's failures (sent by the syncer after a
    /// failed sync, in case the writer is idle).
    Wake,
    /// Test hook: the writer thread panics, as a bug would.
    #[cfg(test)]
    Panic,
}

/// Most operations the writer takes per round: enough that a flood of small records is
/// one write and one sync, few enough that the first waiter of a round is not held long.
const WRITER_BATCH: usize = 4096;

/// The writer's state.
pub struct Writer {
    /// Where the files are changed.
    pub disk: Arc<dyn Disk>,
    /// Segment directory.
    pub dir: PathBuf,
    /// The segment being appended to (shared with the syncer).
    pub file: Arc<dyn DiskFile>,
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
    /// Set when the writer or the syncer thread panicked: nothing is written any more.
    pub poisoned: Arc<AtomicBool>,
    /// Set while a fault lasts (a write or sync failed and was not yet done again).
    pub faulted: Arc<tokio::sync::watch::Sender<bool>>,
    /// For the syncer to wake the writer after a failed sync (weak: the channel closes
    /// when the store lets go of it).
    pub wake: Option<mpsc::WeakUnboundedSender<Op>>,
    /// Records not known to be synced yet, and the fault being got over.
    pub unsynced: Unsynced,
    /// Test hook: fail syncs while set.
    pub fail_syncs: Option<Arc<AtomicBool>>,
    /// Test hook: called with the segment number as each sync starts (after the
    /// `fail_syncs` check), so a test can hold a sync in progress.
    #[cfg(test)]
    pub before_sync: Option<Arc<dyn Fn(u64) + Send + Sync>>,
}

impl Writer {
    /// Starts the writer thread, `minimq-store`.
    pub fn spawn(self, rx: mpsc::UnboundedReceiver<Op>) -> std::io::Result<JoinHandle<()>> {
        let poisoned = self.poisoned.clone();
        std::thread::Builder::new()
            .name("minimq-store".into())
            .spawn(move || {
                // A panic in the writer (a bug) poisons the store, so persistent messages
                // to durable queues are refused from then on instead of being handed to a
                // thread that is gone. The completions it held finish `false` as they
                // drop. Unwind safety: nothing of the writer is used after the panic.
                let run = std::panic::AssertUnwindSafe(move || self.run(rx));
                if std::panic::catch_unwind(run).is_err() {
                    poisoned.store(true, Ordering::SeqCst);
                    tracing::error!("message store writer thread panicked; refusing persistent messages from now on");
                }
            })
    }

    /// Runs until stopped (on its own thread, with the syncer on another).
    pub fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>) {
        let mut syncer = Syncer::start(&self);
        self.unsynced.synced_to = self.size;
        let mut batch = Vec::new();
        let mut waiters: Vec<Completion> = Vec::new();
        let mut buf = Outgoing::default();
        let mut pending: Vec<(u64, u64, Track)> = Vec::new();
        loop {
            if self.unsynced.faulted() {
                // During a fault the writer wakes to retry as well as for work.
                std::thread::sleep(self.unsynced.until_retry());
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                match rx.blocking_recv() {
                    Some(op) => batch.push(op),
                    None => break,
                }
            }
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
                                n.finish(false);
                            }
                            continue;
                        }
                        if !self.unsynced.faulted()
                            && self.size + buf.len() >= self.segment_size
                            && self.size > FILE_HEADER_LEN as u64
                        {
                            // Rotate: what belongs to the old segment is written and
                            // synced on it (its waiters answered) before the next segment
                            // exists, so only the newest segment can have a torn tail.
                            self.write_out(&mut buf, &mut pending);
                            if !self.unsynced.faulted() {
                                let synced =
                                    syncer.sync_now(&self.file, self.seg, self.size, &mut waiters);
                                self.take_failures(&syncer);
                                if synced {
                                    self.rotate();
                                }
                            }
                        }
                        pending.push((self.seg, self.size + buf.len(), track));
                        buf.push(bytes);
                        if let Some(n) = notify {
                            waiters.push(n);
                        }
                    }
                    Op::DropQueue(id) => pending.push((self.seg, 0, Track::DropQueue(id))),
                    Op::Release(ids) => pending.push((self.seg, 0, Track::Release(ids))),
                    Op::Sync(reply) => syncs.push(reply),
                    Op::Flush(reply) => flushes.push(reply),
                    Op::Stop(reply) => stop = Some(reply),
                    Op::Close(reply) => {
                        stop = Some(reply);
                        clean = true;
                    }
                    Op::Wake => {}
                    #[cfg(test)]
                    Op::Panic => panic!("store writer made to panic by a test"),
                }
            }
            let written = buf.len();
            self.write_out(&mut buf, &mut pending);
            waiters.extend(syncs);
            if self.unsynced.faulted() {
                // Held until the records are written again and synced.
                self.unsynced
                    .hold(self.size, &mut buf, &mut pending, &mut waiters, flushes);
            } else {
                // The syncer gets the batch's waiters before any Flush is answered:
                // whoever saw the flush knows the records are written and handed over. A
                // Sync waits for the same sync as the records before it.
                syncer.commit(&self.file, self.seg, self.size, &mut waiters);
                let ok = !self.poisoned.load(Ordering::SeqCst);
                for r in flushes {
                    r.finish(ok);
                }
            }
            self.take_failures(&syncer);
            if self.unsynced.faulted() {
                // On the way out, one last try whatever the backoff says.
                self.retry(stop.is_some());
            } else {
                self.unsynced.prune(syncer.synced(), self.seg);
                self.delete_dead_segments();
                // No compaction on the way out: it is not needed to stop, and it would
                // write after the records of this batch.
                if stop.is_none() && self.compact_oldest(&syncer) {
                    self.delete_dead_segments();
                }
            }
            if let Some(r) = stop {
                let mut ok = !self.unsynced.faulted();
                if ok {
                    if clean {
                        let mut record = bytes::BytesMut::new();
                        Record::CleanShutdown.encode(&mut record);
                        buf.push_bytes(record.freeze());
                        self.write_out(&mut buf, &mut pending);
                    }
                    ok = !self.unsynced.faulted()
                        && syncer.sync_now(&self.file, self.seg, self.size, &mut waiters);
                }
                // What is still held was not made durable: it is answered `false` as it
                // drops.
                syncer.stop();
                r.finish(ok);
                return;
            }
            syncer.pace(written);
        }
        syncer.stop();
    }

    /// Writes `buf` to the current segment (not synced) and publishes the bookkeeping of
    /// its records (`pending`); the records are kept until a sync covers them. A failure
    /// starts a fault (the records are kept to be written again). During a fault nothing
    /// is written: the caller holds the records.
    pub(super) fn write_out(&mut self, buf: &mut Outgoing, pending: &mut Vec<(u64, u64, Track)>) {
        if self.poisoned.load(Ordering::SeqCst) {
            buf.take();
            pending.clear();
            return;
        }
        if self.unsynced.faulted() || (buf.is_empty() && pending.is_empty()) {
            return;
        }
        let len = buf.len();
        let start = self.size;
        let chunks = buf.take();
        let result = write_chunks(&*self.file, &chunks);
        let batch = Batch::new(start, chunks, len, pending.drain(..));
        match result {
            Ok(()) => {
                self.size += len;
                let mut batch = batch;
                batch.publish(&self.index, self.seg);
                // With `--fsync off` nothing waits for a sync: written is as far as it
                // goes.
                if self.fsync != FsyncMode::Off {
                    self.unsynced.batches.push_back(batch);
                }
            }
            Err(e) => {
                self.unsynced.batches.push_back(batch);
                self.fail_current(&e, "write");
            }
        }
    }

    /// Starts the next segment after a full one (synced).
    fn rotate(&mut self) {
        let next = self.seg + 1;
        match create_segment(&*self.disk, &self.dir, next) {
            Ok(f) => self.switch_to(next, f),
            Err(e) => {
                // The full segment is whole and synced: it stays as it is, and the
                // records wait for the next segment to be created.
                self.unsynced.start_fault(&e, "create a segment");
                self.publish_fault();
            }
        }
    }

    /// From now on the writer appends to segment `seg`, just created.
    pub(super) fn switch_to(&mut self, seg: u64, file: Arc<dyn DiskFile>) {
        self.file = file;
        self.seg = seg;
        self.size = FILE_HEADER_LEN as u64;
        self.unsynced.synced_to = self.size;
        lock(&self.index).live.segments.entry(seg).or_default();
    }
}
