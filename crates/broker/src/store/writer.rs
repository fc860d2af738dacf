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
//! only the newest segment can end in a torn record. A failed write poisons the store:
//! waiters are finished with `false` and nothing more is written, because durability can
//! no longer be promised.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::buffer::{Chunks, Outgoing};
use super::completion::Completion;
use super::disk::{Disk, DiskFile};
use super::files::create_segment;
use super::format::{Record, FILE_HEADER_LEN};
use super::liveness::{lock, Index, Track};
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
    /// Set when a write or sync failed.
    pub poisoned: Arc<AtomicBool>,
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
                // A panic in the writer (a bug) is a store failure like a failed write:
                // the store is poisoned, so persistent messages to durable queues are
                // refused from then on instead of being handed to a thread that is gone.
                // The completions it held finish `false` as they drop. Unwind safety:
                // nothing of the writer is used after the panic.
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
        let mut batch = Vec::new();
        let mut waiters: Vec<Completion> = Vec::new();
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
                                n.finish(false);
                            }
                            continue;
                        }
                        if self.size + buf.len() >= self.segment_size
                            && self.size > FILE_HEADER_LEN as u64
                        {
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
            // saw the flush knows the records are written and handed over. A Sync waits
            // for the same sync as the records before it.
            waiters.extend(syncs);
            syncer.commit(&self.file, self.seg, &mut waiters);
            for r in flushes {
                r.finish(ok);
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
                r.finish(ok);
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
    pub(super) fn write_out(&mut self, buf: &mut Outgoing) -> bool {
        if self.poisoned.load(Ordering::SeqCst) {
            buf.clear();
            return false;
        }
        if !buf.is_empty() {
            let len = buf.len();
            if let Err(e) = buf.write_to(&*self.file) {
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
        match create_segment(&*self.disk, &self.dir, next) {
            Ok(f) => {
                self.file = f;
                self.seg = next;
                self.size = FILE_HEADER_LEN as u64;
                lock(&self.index).live.segments.entry(next).or_default();
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot create a new segment; refusing persistent messages from now on");
                self.poisoned.store(true, Ordering::SeqCst);
            }
        }
    }
}
