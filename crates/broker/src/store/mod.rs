//! Durable queues and persistent messages: an append-only log of checksummed records in
//! segment files, written by one thread and synced by another (group commit), replayed at
//! start-up.
//!
//! The store is the ground floor: nothing under `store/` imports the layers above it
//! (`queue`, `channel`, `connection`, `vhost`, `exchange`, `admin`); it knows only the
//! published [`Message`]. It tells its callers that a record is durable with its own
//! [`Completion`], which each caller turns into what it needs (a queue, into the
//! publisher's confirm).
//!
//! One file per job:
//! - [`format`]: file headers and record layout.
//! - [`completion`]: how the store reports that a request is done.
//! - `buffer`: the write buffer (records on their way to the file).
//! - `writer`: the writer thread, the only one that appends to the log.
//! - `syncer`: the syncer thread, group commit (`fdatasync`, then completions).
//! - `rewrite`: getting over a failed write or sync (records written again on a new
//!   segment, confirmed once synced there).
//! - `liveness`: which records are still needed, and where live messages are.
//! - `purge`: deleting dead segments, compacting old ones (on the writer thread).
//! - `files`: creating segments, syncing directory entries.
//! - [`disk`]: the file-system seam every change to a file goes through; [`faulty`], a
//!   test implementation that injects errors and simulates a power loss.
//! - [`reader`]: reading paged-out messages back.
//! - [`pressure`]: the memory pressure signal that tells queues to page out.
//! - [`recovery`]: replay, torn-tail truncation, damaged segments, the rewrite after
//!   damage.
//! - [`meta`]: the metadata log (durable queues, exchanges, bindings) and its thread.
//! - [`stream`]: a stream queue's own log (segments of offset-numbered messages), apart
//!   from the message log.
//!
//! Threads: `minimq-store` (the writer), `minimq-sync` (the syncer, none with
//! `--fsync off`), `minimq-meta` (the metadata log). Callers on async workers do not
//! wait on them synchronously: they hand a request over (a channel send, which never
//! blocks) and await a [`Completion`] or [`MetaWait`]; an async task reads paged-out
//! messages with [`Store::read_back`], which runs the reads on the blocking pool.
//! [`Store::read_messages`] and [`Store::open`] block, for threads.
//!
//! Layout of the data directory:
//! ```text
//! LOCK            held while a server uses the directory
//! metadata.log    durable queues, exchanges and bindings: an append-only log, compacted
//!                 (tmp + rename) when it grows past twice what is live
//! segments/       NNNNNNNNNNNNNNNNNNNN.seg, the log
//! damaged/        segments found damaged at start-up, kept for inspection
//! streams/N/      the log of the stream queue whose id is N (see [`stream`]);
//!                 `N.deleted/` while a deleted one is removed
//! ```
//! Who writes what: queue tasks append enqueue / settle records for their persistent
//! messages (the first queue to take a message also appends the message itself), and,
//! under memory pressure, transient records for the messages they page out (released,
//! with no record, when they let go of them); the
//! vhost hands a record to the metadata thread when a durable queue, exchange or binding
//! is declared or deleted, and awaits it before answering.

mod buffer;
pub mod completion;
pub mod disk;
pub mod faulty;
mod files;
pub mod format;
pub use minimq_protocol::idhash;
#[cfg(test)]
mod fault_tests;
mod liveness;
pub mod meta;
pub mod pressure;
mod purge;
pub mod reader;
pub mod recovery;
mod rewrite;
pub mod stream;
mod syncer;
mod writer;
#[cfg(test)]
mod writer_tests;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use tokio::sync::mpsc;

use crate::message::Message;
use buffer::Chunks;
pub use completion::Completion;
pub use disk::{Disk, DiskFile, OsDisk};
pub use format::{BindingDef, ExchangeDef, ParamDef, DEFAULT_VHOST};
use format::{MessageKind, QueueDef, Record, FILE_HEADER_LEN};
pub use meta::MetaWait;
pub use pressure::Pressure;
pub use recovery::{Damage, RecoveredMessage, RecoveryMode, Skipped};

/// What the last start-up's recovery did, for the log and the management API.
#[derive(Debug, Clone, Default)]
pub struct RecoveryReport {
    /// The mode it ran in.
    pub mode: RecoveryMode,
    /// Whether the log ended with a clean shutdown.
    pub clean: bool,
    /// Every stretch of the log it did not use.
    pub skipped: Vec<Skipped>,
    /// Copies of damaged segments kept in `damaged/`.
    pub damaged_copies: Vec<PathBuf>,
}
use liveness::{Index, Track};
use writer::{Op, Writer};

/// When the log is synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncMode {
    /// `fdatasync` before every confirm; one sync covers every batch written before it
    /// began (default).
    #[default]
    Batch,
    /// Never sync: confirms mean "written to the OS", as RabbitMQ's classic queues.
    /// A power loss or OS crash can lose confirmed messages.
    Off,
}

/// Store settings.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Sync policy.
    pub fsync: FsyncMode,
    /// Segment size before rotation.
    pub segment_size: u64,
    /// Failure injection for tests: while set, every sync fails as if the disk had.
    pub fail_syncs: Option<Arc<AtomicBool>>,
    /// What every change to the store's files goes through: [`OsDisk`], or a test's
    /// [`faulty::FaultyDisk`].
    pub disk: Arc<dyn Disk>,
    /// What recovery does with a damaged log.
    pub recovery: RecoveryMode,
    /// How many bytes of persistent messages a durable queue keeps in memory (bodies,
    /// plus [`PAGE_OVERHEAD`] each); past it, new ones are kept on disk only and read
    /// back when delivered.
    pub queue_memory: u64,
}

/// Message bodies from this size on are handed to the writer as they are, not copied
/// into the record.
const SPLIT_BODY: usize = 16 * 1024;

/// What a message costs in memory besides its body, for [`StoreOptions::queue_memory`].
pub const PAGE_OVERHEAD: u64 = 256;

/// Default of [`StoreOptions::queue_memory`].
pub const DEFAULT_QUEUE_MEMORY: u64 = 64 * 1024 * 1024;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            fsync: FsyncMode::Batch,
            segment_size: 64 * 1024 * 1024,
            fail_syncs: None,
            disk: Arc::new(OsDisk),
            recovery: RecoveryMode::default(),
            queue_memory: DEFAULT_QUEUE_MEMORY,
        }
    }
}

/// A durable queue as recovered at start-up.
#[derive(Debug)]
pub struct RecoveredQueue {
    /// Its definition.
    pub def: QueueDef,
    /// Its messages, in queue order.
    pub messages: Vec<RecoveredMessage>,
}

/// The open store.
pub struct Store {
    dir: PathBuf,
    seg_dir: PathBuf,
    /// Where live message records are (shared with the writer).
    index: Arc<Mutex<Index>>,
    queue_memory: u64,
    tx: mpsc::UnboundedSender<Op>,
    poisoned: Arc<AtomicBool>,
    /// Whether a write or sync fault lasts (the writer's; see `rewrite.rs`).
    faulted: Arc<tokio::sync::watch::Sender<bool>>,
    next_msg_id: AtomicU64,
    /// The metadata log's thread.
    meta: Arc<meta::MetaLog>,
    /// The next durable queue id (ids are never reused; see [`Record::NextQueueId`]).
    next_queue_id: AtomicU64,
    /// The durable exchanges and bindings found at start-up, until the vhost takes them.
    topology: Mutex<Option<(Vec<ExchangeDef>, Vec<BindingDef>)>>,
    /// The settings recovered at start-up, until taken (see [`Store::take_params`]).
    params: Mutex<Option<Vec<ParamDef>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Set when the writer is asked to stop: a record sent later is not a failure.
    stopping: AtomicBool,
    /// The locked `LOCK` file; released by [`Store::close`].
    lock: Mutex<Option<File>>,
    /// What recovery did at open.
    recovery: RecoveryReport,
    /// The seam file changes go through, and the sync policy: a stream's log
    /// ([`stream`]) uses the same.
    disk: Arc<dyn Disk>,
    fsync: FsyncMode,
    /// Whether queues page out (set by the memory monitor).
    pressure: Arc<Pressure>,
    /// The next transient record id ([`liveness::TRANSIENT_ID`] set; restarts with the
    /// store, as no transient record outlives one).
    next_transient_id: Mutex<u64>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn io_err(msg: String) -> std::io::Error {
    std::io::Error::other(msg)
}

impl Store {
    /// Opens (or creates) the store in `dir`, taking its lock, and replays the log.
    pub fn open(
        dir: &Path,
        opts: StoreOptions,
    ) -> std::io::Result<(Arc<Store>, Vec<RecoveredQueue>)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("LOCK"))?;
        if lock.try_lock().is_err() {
            return Err(io_err(format!(
                "data directory {} is in use by another minimq-server (LOCK is held)",
                dir.display()
            )));
        }
        let seg_dir = dir.join("segments");
        std::fs::create_dir_all(&seg_dir)?;
        let disk = opts.disk.clone();
        let (meta_log, found) =
            meta::open(disk.clone(), dir, opts.recovery, opts.fail_syncs.clone())?;
        let defs: BTreeMap<u64, QueueDef> = found.queues.into_iter().map(|d| (d.id, d)).collect();
        let started = std::time::Instant::now();
        let mut replay = recovery::replay(&*disk, &seg_dir, &dir.join("damaged"), opts.recovery)?;
        let report = RecoveryReport {
            mode: opts.recovery,
            clean: replay.clean,
            skipped: std::mem::take(&mut replay.skipped),
            damaged_copies: replay.damaged.clone(),
        };
        let mut queues = Vec::new();
        for def in defs.values() {
            let messages = replay.queues.remove(&def.id).unwrap_or_default();
            queues.push(RecoveredQueue {
                def: def.clone(),
                messages,
            });
        }
        let recovered: usize = queues.iter().map(|q| q.messages.len()).sum();
        tracing::info!(
            queues = queues.len(),
            messages = recovered,
            clean = replay.clean,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "message store recovered"
        );
        if !report.skipped.is_empty() {
            let octets: u64 = report.skipped.iter().map(|k| k.len).sum();
            tracing::error!(
                stretches = report.skipped.len(),
                octets,
                mode = report.mode.name(),
                "recovery did not use parts of the log (each logged above; copies in damaged/)"
            );
        }
        let seg = replay.max_segment + 1;
        let mut live = replay.live;
        // Queues that no longer exist hold nothing.
        let known: idhash::IdSet<u64> = live.enqueues.keys().map(|(q, _)| *q).collect();
        for q in known {
            if !defs.contains_key(&q) {
                live.drop_queue(q);
            }
        }
        let file = files::create_segment(&*disk, &seg_dir, seg)?;
        let mut size = FILE_HEADER_LEN as u64;
        live.segments.entry(seg).or_default();
        if replay.needs_rewrite {
            (live, size) =
                recovery::rewrite_live(&*disk, &seg_dir, seg, &*file, size, &queues, &live)?;
        }
        // Marks this start, so a crash before anything else is written is not taken for
        // the clean stop that ended the previous run.
        let mut opened = BytesMut::new();
        Record::Opened.encode(&mut opened);
        file.write_all(&opened)?;
        file.sync_data()?;
        size += opened.len() as u64;
        live.segments.entry(seg).or_default().total += 1;
        let poisoned = Arc::new(AtomicBool::new(false));
        let faulted = Arc::new(tokio::sync::watch::Sender::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let index = Arc::new(Mutex::new(Index {
            live,
            files: Default::default(),
        }));
        let w = Writer {
            disk,
            dir: seg_dir.clone(),
            file,
            seg,
            size,
            segment_size: opts.segment_size,
            fsync: opts.fsync,
            fail_syncs: opts.fail_syncs.clone(),
            index: index.clone(),
            poisoned: poisoned.clone(),
            faulted: faulted.clone(),
            wake: Some(tx.downgrade()),
            unsynced: Default::default(),
            #[cfg(test)]
            before_sync: None,
        };
        let thread = w.spawn(rx)?;
        // A first round with nothing to write deletes the segments nothing recovered needs
        // (those of paged-out transient messages, all dead after a restart) at once, not
        // only after the first record.
        let _ = tx.send(Op::Wake);
        let store = Store {
            disk: opts.disk.clone(),
            fsync: opts.fsync,
            dir: dir.to_path_buf(),
            seg_dir,
            index,
            queue_memory: opts.queue_memory,
            tx,
            poisoned,
            faulted,
            next_msg_id: AtomicU64::new(replay.max_msg_id + 1),
            meta: Arc::new(meta_log),
            next_queue_id: AtomicU64::new(found.next_id),
            topology: Mutex::new(Some((found.exchanges, found.bindings))),
            params: Mutex::new(Some(found.params)),
            thread: Mutex::new(Some(thread)),
            stopping: AtomicBool::new(false),
            lock: Mutex::new(Some(lock)),
            recovery: report,
            pressure: Arc::default(),
            next_transient_id: Mutex::new(liveness::TRANSIENT_ID),
        };
        Ok((Arc::new(store), queues))
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where a stream's log lives and how it is written: the store's directory, file
    /// seam and sync policy.
    pub fn stream_place(&self, queue_id: u64) -> stream::StreamPlace {
        stream::StreamPlace {
            dir: self.dir.join("streams").join(queue_id.to_string()),
            disk: self.disk.clone(),
            sync: self.fsync == FsyncMode::Batch,
        }
    }

    /// Removes what deleted streams left under `streams/` ([`stream::sweep`]): every
    /// entry but the directories of the queues `live` names. Blocks on file I/O. What
    /// cannot be removed is logged and left for the next start.
    pub fn sweep_streams(&self, live: &dyn Fn(u64) -> bool) {
        let (removed, failed) = stream::sweep(&self.dir.join("streams"), &*self.disk, live);
        for path in removed {
            tracing::warn!(path = %path.display(), "removed what a deleted stream left behind");
        }
        for (path, e) in failed {
            tracing::error!(path = %path.display(), error = %e, "cannot remove what a deleted stream left behind; trying again at the next start");
        }
    }

    /// What recovery did when the store was opened.
    pub fn recovery_report(&self) -> &RecoveryReport {
        &self.recovery
    }

    /// Whether the store stopped for good (its writer or syncer thread panicked).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }

    /// Whether a write or sync fault lasts: the store holds new records, unconfirmed,
    /// and retries until it can write and sync them on a new segment.
    pub fn is_faulted(&self) -> bool {
        *self.faulted.borrow()
    }

    /// Sees every start and end of a write or sync fault (for the disk alarm).
    pub fn faults(&self) -> tokio::sync::watch::Receiver<bool> {
        self.faulted.subscribe()
    }

    /// Records a durable queue; answers its store id once the definition is on disk.
    /// The file work runs on the metadata thread, not the caller's.
    pub async fn add_queue(
        &self,
        vhost: &str,
        name: &str,
        auto_delete: bool,
        arguments: &minimq_protocol::FieldTable,
    ) -> std::io::Result<u64> {
        let id = self.next_queue_id.fetch_add(1, Ordering::SeqCst);
        let def = QueueDef {
            id,
            vhost: vhost.to_string(),
            name: name.to_string(),
            auto_delete,
            arguments: arguments.clone(),
        };
        self.meta.submit(Record::Queue(def), id).done().await
    }

    /// The durable exchanges and bindings recovered at start-up (to restore them); the
    /// first call takes them, later ones answer nothing.
    pub fn topology(&self) -> (Vec<ExchangeDef>, Vec<BindingDef>) {
        self.topology
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// The settings (policies, ...) recovered at start-up; the first call takes them,
    /// later ones answer nothing.
    pub fn take_params(&self) -> Vec<ParamDef> {
        self.params
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_default()
    }

    /// Records a setting (the latest value of each component, vhost and name is kept);
    /// answers once it is on disk.
    pub async fn put_param(&self, def: ParamDef) -> std::io::Result<()> {
        self.meta.submit(Record::Param(def), ()).done().await
    }

    /// Forgets a setting; answers once that is on disk.
    pub async fn remove_param(
        &self,
        component: &str,
        vhost: &str,
        name: &str,
    ) -> std::io::Result<()> {
        let record = Record::RemoveParam(component.into(), vhost.into(), name.into());
        self.meta.submit(record, ()).done().await
    }

    /// Records a durable exchange; answers once it is on disk.
    pub async fn put_exchange(&self, def: ExchangeDef) -> std::io::Result<()> {
        self.meta.submit(Record::Exchange(def), ()).done().await
    }

    /// Forgets a durable exchange and every binding from or to it. Handed to the
    /// metadata thread at once (so it is ordered before any later change); the answer
    /// tells when it is on disk.
    pub fn remove_exchange(&self, vhost: &str, name: &str) -> MetaWait {
        let record = Record::RemoveExchange(vhost.to_string(), name.to_string());
        self.meta.submit(record, ())
    }

    /// Records a binding between durable objects; answers once it is on disk.
    pub async fn put_binding(&self, def: BindingDef) -> std::io::Result<()> {
        self.meta.submit(Record::Binding(def), ()).done().await
    }

    /// Forgets a binding (as [`Store::remove_exchange`]).
    pub fn remove_binding(&self, def: BindingDef) -> MetaWait {
        self.meta.submit(Record::RemoveBinding(def), ())
    }

    /// Forgets a durable queue, the bindings to it, and everything it held (as
    /// [`Store::remove_exchange`]).
    pub fn remove_queue(&self, id: u64) -> MetaWait {
        let done = self.meta.submit(Record::RemoveQueue(id), ());
        let _ = self.tx.send(Op::DropQueue(id));
        done
    }

    /// Logs that `message` entered queue `queue_id` as number `seq`; the first queue to
    /// do so also logs the message itself. `notify` is finished once it is durable.
    pub fn enqueue(&self, queue_id: u64, seq: u64, message: &Message, notify: Option<Completion>) {
        let mut slot = message.store_id.lock().unwrap_or_else(|e| e.into_inner());
        let mut buf = BytesMut::new();
        let track = match *slot {
            Some(msg_id) => {
                drop(slot);
                Record::Enqueue {
                    queue_id,
                    seq,
                    msg_id,
                }
                .encode(&mut buf);
                Track::Enqueue {
                    queue_id,
                    seq,
                    msg_id,
                }
            }
            None => {
                let msg_id = self.next_msg_id.fetch_add(1, Ordering::Relaxed);
                let enqueue = Record::Enqueue {
                    queue_id,
                    seq,
                    msg_id,
                };
                let (chunks, len) =
                    message_chunks(buf, MessageKind::Persistent, msg_id, message, |buf| {
                        enqueue.encode(buf)
                    });
                *slot = Some(msg_id);
                // The slot stays locked until the records are queued, so another queue's
                // enqueue of this message cannot reach the log before the message.
                let track = Track::MessageEnqueue {
                    msg_id,
                    len,
                    queue_id,
                    seq,
                };
                self.send(chunks, track, notify);
                return;
            }
        };
        self.send(Chunks::One(buf.freeze()), track, notify);
    }

    /// The memory pressure signal queues page out on.
    pub fn pressure(&self) -> &Arc<Pressure> {
        &self.pressure
    }

    /// Pages a message out of memory as a transient record (which no restart brings
    /// back): answers its id to read it back with, or `None` when the store cannot take
    /// it now (poisoned, or a fault lasts: a read would wait for the rewrite) and the
    /// message stays in memory. Nobody waits for its write or a sync.
    pub fn page_out(&self, message: &Message) -> Option<u64> {
        if self.is_poisoned() || self.is_faulted() {
            return None;
        }
        // Ids reach the writer in the order they are handed out (the lock covers both),
        // which keeps the writer's list of transient locations dense (`liveness.rs`).
        let mut next = self
            .next_transient_id
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let msg_id = *next;
        *next += 1;
        let (chunks, len) = message_chunks(
            BytesMut::new(),
            MessageKind::Transient,
            msg_id,
            message,
            |_| {},
        );
        self.send(chunks, Track::Transient { msg_id, len }, None);
        drop(next);
        Some(msg_id)
    }

    /// How many message records are live (for tests: what paging leaves behind).
    #[cfg(test)]
    pub fn live_messages(&self) -> usize {
        let index = liveness::lock(&self.index);
        index.live.messages.len() + index.live.transients.len()
    }

    /// Lets go of paged-out transient messages: their records are dead (nothing is
    /// written; a restart drops them anyway).
    pub fn release(&self, ids: Vec<u64>) {
        if !ids.is_empty() {
            let _ = self.tx.send(Op::Release(ids));
        }
    }

    /// Logs that messages left queue `queue_id` for good.
    pub fn settle(&self, queue_id: u64, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        let record = Record::Settle {
            queue_id,
            seqs: seqs.clone(),
        };
        self.append(record, Track::Settle { queue_id, seqs });
    }

    /// Logs the delivery counts of messages returned to queue `queue_id`.
    pub fn log_deliveries(&self, queue_id: u64, counts: Vec<(u64, u32)>) {
        if counts.is_empty() {
            return;
        }
        self.append(Record::Deliveries { queue_id, counts }, Track::Nothing);
    }

    /// Logs, at a graceful stop, which messages of a queue had been delivered before.
    pub fn mark_redelivered(&self, queue_id: u64, seqs: Vec<u64>) {
        if seqs.is_empty() {
            return;
        }
        self.append(Record::Redelivered { queue_id, seqs }, Track::Nothing);
    }

    /// Appends one record nobody waits for.
    fn append(&self, record: Record, track: Track) {
        let mut buf = BytesMut::new();
        record.encode(&mut buf);
        self.send(Chunks::One(buf.freeze()), track, None);
    }

    fn send(&self, bytes: Chunks, track: Track, notify: Option<Completion>) {
        let Err(mpsc::error::SendError(op)) = self.tx.send(Op::Append {
            bytes,
            track,
            notify,
        }) else {
            return;
        };
        // The writer is gone without being stopped (it panicked): nothing will write
        // this, so the store has failed; the first to find out says so.
        if !self.stopping.load(Ordering::SeqCst) && !self.poisoned.swap(true, Ordering::SeqCst) {
            tracing::error!(
                "message store writer is gone; refusing persistent messages from now on"
            );
        }
        if let Op::Append {
            notify: Some(n), ..
        } = op
        {
            n.finish(false);
        }
    }

    /// How many bytes of persistent messages a durable queue keeps in memory.
    pub fn queue_memory(&self) -> u64 {
        self.queue_memory
    }

    /// Reads paged-out messages back, in the order asked; `None` for one that cannot
    /// be read (logged loudly). Blocking file reads (`pread`, usually from the page
    /// cache); a message paged out before the writer wrote it waits for that write. For
    /// a thread: an async task calls [`Store::read_back`].
    pub fn read_messages(&self, ids: &[u64]) -> Vec<Option<Message>> {
        reader::read_messages(&self.index, &self.seg_dir, ids, || {
            let (done, rx) = Completion::channel();
            if self.tx.send(Op::Flush(done)).is_ok() {
                let _ = rx.recv();
            }
        })
    }

    /// [`Store::read_messages`] for an async task: the reads, and any wait for the
    /// writer, run on a blocking thread, so the task's worker goes on with other tasks.
    pub async fn read_back(self: &Arc<Self>, ids: Vec<u64>) -> Vec<Option<Message>> {
        let store = self.clone();
        match tokio::task::spawn_blocking(move || store.read_messages(&ids)).await {
            Ok(read) => read,
            // A panic while reading is the caller's, as when the read ran on its task.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            // The runtime is shutting down: nothing was read.
            Err(_) => Vec::new(),
        }
    }

    /// Waits until everything appended so far is durable.
    pub async fn sync(&self) -> bool {
        let (done, rx) = Completion::oneshot();
        // A request the writer never takes finishes `false` as it is dropped.
        let _ = self.tx.send(Op::Sync(done));
        rx.await.unwrap_or(false)
    }

    /// Stops the writer without the clean-shutdown record, as a crash would leave the log
    /// (what was already handed to the writer is written), and releases the lock.
    pub async fn halt(&self) {
        self.stop(Op::Stop).await;
    }

    /// Graceful close: the writer logs the clean-shutdown record as the last record,
    /// syncs and stops.
    pub async fn close(&self) {
        self.stop(Op::Close).await;
    }

    async fn stop(&self, op: fn(Completion) -> Op) {
        self.stopping.store(true, Ordering::SeqCst);
        // Metadata changes handed over before the stop are written first.
        let meta = self.meta.clone();
        let _ = tokio::task::spawn_blocking(move || meta.stop_blocking()).await;
        let (done, rx) = Completion::oneshot();
        let _ = self.tx.send(op(done));
        let _ = rx.await;
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        // Dropping the file releases the lock: another server may now open the directory.
        self.lock.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

/// Message `m` as a record of `kind` after what `buf` holds, followed by what `after`
/// appends (an enqueue record): the chunks to write, and the message record's length. A
/// large body is written from the message's own `Bytes`, not copied; a small one is
/// copied into the record, so the whole is one chunk.
fn message_chunks(
    mut buf: BytesMut,
    kind: MessageKind,
    msg_id: u64,
    m: &Message,
    after: impl FnOnce(&mut BytesMut),
) -> (Chunks, u32) {
    let start = buf.len();
    format::encode_message_head(
        &mut buf,
        kind,
        msg_id,
        &m.exchange,
        &m.routing_key,
        &m.properties,
        &m.body,
    );
    if m.body.len() < SPLIT_BODY {
        buf.extend_from_slice(&m.body);
        let len = (buf.len() - start) as u32;
        after(&mut buf);
        return (Chunks::One(buf.freeze()), len);
    }
    let head_len = buf.len();
    let len = (head_len - start + m.body.len()) as u32;
    after(&mut buf);
    let mut head = buf.freeze();
    let tail = head.split_off(head_len);
    let chunks = Chunks::Split {
        head,
        body: m.body.clone(),
        tail,
    };
    (chunks, len)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minimq_protocol::{BasicProperties, FieldTable};

    /// A writer thread that dies (a panic) is a store failure: the store is poisoned
    /// (publishes of persistent messages to durable queues are refused from then on) and
    /// a message handed to it afterwards is nacked, not confirmed or left unanswered.
    #[test]
    fn a_writer_thread_that_panics_poisons_the_store() {
        let dir =
            std::env::temp_dir().join(format!("minimq-store-writer-panic-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (store, _) = Store::open(
            &dir,
            StoreOptions {
                fsync: FsyncMode::Batch,
                segment_size: 1 << 20,
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let id = futures::executor::block_on(store.add_queue("/", "q", false, &FieldTable::new()))
            .unwrap();
        assert!(store.tx.send(Op::Panic).is_ok());
        let thread = store.thread.lock().unwrap().take().unwrap();
        let _ = thread.join();
        assert!(store.is_poisoned(), "a dead writer is a store failure");
        let (done, outcome) = Completion::channel();
        let message = Message::new(
            "".into(),
            "q".into(),
            BasicProperties::default(),
            bytes::Bytes::from_static(b"after"),
        );
        store.enqueue(id, 1, &message, Some(done));
        match outcome.try_recv() {
            Ok(ok) => assert!(!ok, "nacked"),
            other => panic!("expected the nack, got {other:?}"),
        }
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
