//! Group commit: the syncer thread, which makes written records durable.
//!
//! The writer (`writer.rs`) hands the syncer a [`SyncJob`] for every batch it has
//! written that someone waits on: the batch's [`Completion`]s. The syncer takes every job
//! handed over since its last sync, syncs each segment they were written to once, then
//! finishes them. A job is handed over only once its records are written, so the sync
//! covers them; jobs arriving during a sync wait for the next one. Only the writer thread
//! talks to the syncer, through the [`Syncer`] it owns; nothing else in the store does.
//!
//! Pacing: with little written per sync (under [`WRITE_DURING_SYNC`]), the writer waits
//! for each sync to end instead of writing during it, so small records pile up and are
//! written together.
//!
//! A failed sync does not answer its waiters: they go back to the writer (through
//! [`Syncer::take_failures`], and an `Op::Wake` in case it is idle), which writes their
//! records again on a new segment (`rewrite.rs`). A segment whose sync failed is never
//! synced again: after a failed `fsync` the kernel may have dropped the dirty pages and
//! cleared the error, so a second `fsync` could succeed without the data being on disk.
//! A panic of this thread poisons the store: everything waiting is finished with
//! `false`, and nothing more is confirmed.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::mpsc;

use super::completion::Completion;
use super::disk::DiskFile;
use super::writer::{Op, Writer};
use super::FsyncMode;

/// Records written to a segment whose waiters need them synced.
struct SyncJob {
    /// The segment they were written to.
    file: Arc<dyn DiskFile>,
    /// Its number.
    seg: u64,
    /// How far the segment was written when the job was handed over: what the sync
    /// covers.
    upto: u64,
    /// Who waits for the sync: publishers' confirms and `Op::Sync`. After a failed sync
    /// they go back to the writer.
    waiters: Vec<Completion>,
    /// The writer's own wait (rotation, compaction, stop): answered `false` after a
    /// failed sync.
    done: Option<Completion>,
}

/// While less than this is written per sync, the writer waits for each sync to end before
/// it takes more records: they pile up meanwhile and are written with one `write`, as
/// small records are cheaper to write together than to overlap with the sync. From this
/// much on, the writer goes on writing while the sync runs.
const WRITE_DURING_SYNC: u64 = 1 << 20;

/// Records nobody waits for (paged-out transient messages) are still kept in memory by
/// the writer until a sync covers them, for a rewrite after a fault; past this much
/// written since the last sync handed over, one is handed over without waiters, so what
/// is kept stays a few MiB instead of a segment.
const UNWAITED_SYNC: u64 = 4 << 20;

/// How far the syncer is, for the writer's pacing.
#[derive(Default)]
struct Progress {
    /// Sync rounds finished.
    rounds: u64,
    /// Jobs handed over and not answered yet.
    pending: u64,
    /// The syncer thread ended (only after a panic while the writer runs).
    gone: bool,
    /// The furthest a sync is known to reach: segment, and octets of it.
    synced: Option<(u64, u64)>,
    /// The waiters of failed syncs, by segment, for the writer to take back.
    failed: Vec<(u64, Vec<Completion>)>,
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
            for w in job.waiters.into_iter().chain(job.done) {
                w.finish(false);
            }
        }
        drop(p);
        self.shared.changed.notify_all();
    }
}

/// The syncer thread, or none with `--fsync off` (waiters are then answered once their
/// records are written).
pub(super) struct Syncer {
    tx: Option<std::sync::mpsc::Sender<SyncJob>>,
    thread: Option<JoinHandle<()>>,
    poisoned: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// The last finished round the writer saw, and what it wrote since.
    seen: u64,
    written: u64,
    /// Whether the writer goes on writing during syncs (see [`WRITE_DURING_SYNC`]).
    overlap: bool,
    /// How far the last job handed over reaches: segment, octets.
    handed: (u64, u64),
}

impl Syncer {
    pub(super) fn start(w: &Writer) -> Syncer {
        let mut syncer = Syncer {
            tx: None,
            thread: None,
            poisoned: w.poisoned.clone(),
            shared: Arc::default(),
            seen: 0,
            written: 0,
            overlap: true,
            handed: (0, 0),
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
        let wake = w.wake.clone();
        #[cfg(test)]
        let before_sync = w.before_sync.clone();
        #[cfg(not(test))]
        let before_sync = None;
        match std::thread::Builder::new()
            .name("minimq-sync".into())
            .spawn(move || sync_loop(state, fail_syncs, before_sync, wake))
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

    /// Hands over the waiters of records just written to `file` (segment `seg`, written
    /// up to `upto`): they are answered after a sync that starts from now on (at once with
    /// `--fsync off`, or `false` once the store is poisoned), or taken back by the writer
    /// if that sync fails.
    pub(super) fn commit(
        &mut self,
        file: &Arc<dyn DiskFile>,
        seg: u64,
        upto: u64,
        waiters: &mut Vec<Completion>,
    ) {
        let since = if self.handed.0 == seg {
            upto.saturating_sub(self.handed.1)
        } else {
            upto
        };
        if waiters.is_empty() && since < UNWAITED_SYNC {
            return;
        }
        self.handed = (seg, upto);
        self.hand_over(file, seg, upto, std::mem::take(waiters), None);
    }

    fn hand_over(
        &self,
        file: &Arc<dyn DiskFile>,
        seg: u64,
        upto: u64,
        waiters: Vec<Completion>,
        done: Option<Completion>,
    ) {
        let ok = !self.poisoned.load(Ordering::SeqCst);
        let job = SyncJob {
            file: file.clone(),
            seg,
            upto,
            waiters,
            done,
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
        for w in job.waiters.into_iter().chain(job.done) {
            w.finish(ok);
        }
    }

    /// Syncs everything written to `file` (segment `seg`) up to `upto` (answering
    /// `waiters` too) and waits for it; answers whether the sync succeeded. After a
    /// failure the waiters are the writer's to take back ([`Syncer::take_failures`]).
    pub(super) fn sync_now(
        &self,
        file: &Arc<dyn DiskFile>,
        seg: u64,
        upto: u64,
        waiters: &mut Vec<Completion>,
    ) -> bool {
        let (done, rx) = Completion::channel();
        self.hand_over(file, seg, upto, std::mem::take(waiters), Some(done));
        rx.recv().unwrap_or(false) && !self.poisoned.load(Ordering::SeqCst)
    }

    /// The waiters of syncs that failed since the last call, by segment.
    pub(super) fn take_failures(&self) -> Vec<(u64, Vec<Completion>)> {
        std::mem::take(&mut self.shared.lock().failed)
    }

    /// The furthest a sync is known to reach: segment, and octets of it.
    pub(super) fn synced(&self) -> Option<(u64, u64)> {
        self.shared.lock().synced
    }

    /// Called after each batch the writer wrote (`written` octets): with little written
    /// per sync, waits until the sync in progress (or the next, if one is only queued)
    /// ends, so the records sent meanwhile are taken and written together.
    pub(super) fn pace(&mut self, written: u64) {
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
    pub(super) fn stop(&mut self) {
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
/// the next one. The waiters of a failed sync go back to the writer, and a segment whose
/// sync failed is not synced again. Once the store is poisoned, nothing is synced and
/// everyone hears `false`.
fn sync_loop(
    mut s: SyncState,
    fail_syncs: Option<Arc<AtomicBool>>,
    before_sync: Option<Arc<dyn Fn(u64) + Send + Sync>>,
    wake: Option<mpsc::WeakUnboundedSender<Op>>,
) {
    let mut failed_segments = HashSet::new();
    while let Ok(first) = s.rx.recv() {
        s.jobs.push(first);
        s.jobs.extend(s.rx.try_iter());
        // Each segment's outcome this round; jobs come in write order, an older
        // segment's first.
        let mut outcomes: Vec<(u64, bool)> = Vec::new();
        for job in &s.jobs {
            if outcomes.iter().any(|(seg, _)| *seg == job.seg) {
                continue;
            }
            if s.poisoned.load(Ordering::SeqCst) || failed_segments.contains(&job.seg) {
                outcomes.push((job.seg, false));
                continue;
            }
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
            if let Err(e) = &result {
                tracing::error!(error = %e, segment = job.seg, "message store fsync failed; the records it covered are written again on a new segment");
                failed_segments.insert(job.seg);
            }
            outcomes.push((job.seg, result.is_ok()));
        }
        let poisoned = s.poisoned.load(Ordering::SeqCst);
        let answered = s.jobs.len() as u64;
        let mut synced = None;
        let mut failed = Vec::new();
        let mut dones = Vec::new();
        let mut confirmed = Vec::new();
        for job in s.jobs.drain(..) {
            let ok = outcomes.iter().any(|(seg, ok)| *seg == job.seg && *ok);
            if ok && !poisoned {
                synced = synced.max(Some((job.seg, job.upto)));
                confirmed.extend(job.waiters);
                dones.extend(job.done.map(|d| (d, true)));
            } else if poisoned {
                for w in job.waiters.into_iter().chain(job.done) {
                    w.finish(false);
                }
            } else {
                failed.push((job.seg, job.waiters));
                dones.extend(job.done.map(|d| (d, false)));
            }
        }
        let woken = !failed.is_empty();
        let mut p = s.shared.lock();
        p.pending = p.pending.saturating_sub(answered);
        p.rounds += 1;
        p.synced = p.synced.max(synced);
        p.failed.extend(failed);
        drop(p);
        s.shared.changed.notify_all();
        // The round is counted before anyone hears of it: whoever got a confirm and
        // sends more finds the writer's pacing past this sync. The failures are in
        // place before the writer hears of them: from a wait of its own, or from the
        // wake-up (it may be idle, waiting for work).
        for w in confirmed {
            w.finish(true);
        }
        for (d, ok) in dones {
            d.finish(ok);
        }
        if woken {
            if let Some(tx) = wake.as_ref().and_then(|w| w.upgrade()) {
                let _ = tx.send(Op::Wake);
            }
        }
    }
}
