//! Tests of the writer and the syncer together: group commit, pacing, rotation, stop,
//! failures, and the directory sync after a deletion. Each drives a real writer thread on
//! a temporary directory, with a hook that can hold a sync in progress.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc as std_mpsc, Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::buffer::Chunks;
use super::completion::Completion;
use super::files::{create_segment, dir_events};
use super::format::segment_name;
use super::liveness::{Index, Track};
use super::writer::{Op, Writer};
use super::FsyncMode;

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
    /// Where each append's completion reports (its seq, the outcome).
    sink: std_mpsc::Sender<(u64, bool)>,
    events: std_mpsc::Receiver<(u64, bool)>,
    thread: Option<JoinHandle<()>>,
    fail: Arc<AtomicBool>,
    poisoned: Arc<AtomicBool>,
    /// The writer's fault flag: set once it has handled a failed write or sync.
    faulted: Arc<tokio::sync::watch::Sender<bool>>,
}

fn start(name: &str, fsync: FsyncMode, segment_size: u64, gate: &Arc<Gate>) -> Harness {
    let dir =
        std::env::temp_dir().join(format!("minimq-writer-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let disk: Arc<dyn super::disk::Disk> = Arc::new(super::disk::OsDisk);
    let file = create_segment(&*disk, &dir, 1).unwrap();
    let mut index = Index::default();
    index.live.segments.entry(1).or_default();
    let fail = Arc::new(AtomicBool::new(false));
    let poisoned = Arc::new(AtomicBool::new(false));
    let faulted = Arc::new(tokio::sync::watch::Sender::new(false));
    let (tx, rx) = mpsc::unbounded_channel();
    let w = Writer {
        disk,
        dir: dir.clone(),
        file,
        seg: 1,
        size: super::format::FILE_HEADER_LEN as u64,
        segment_size,
        fsync,
        index: Arc::new(Mutex::new(index)),
        poisoned: poisoned.clone(),
        faulted: faulted.clone(),
        wake: Some(tx.downgrade()),
        unsynced: Default::default(),
        fail_syncs: Some(fail.clone()),
        before_sync: Some(gate.hook()),
    };
    let (sink, events) = std_mpsc::channel();
    let thread = std::thread::spawn(move || w.run(rx));
    Harness {
        dir,
        tx,
        sink,
        events,
        thread: Some(thread),
        fail,
        poisoned,
        faulted,
    }
}

impl Harness {
    /// Waits until the writer has handled a failed write or sync (its fault flag is up):
    /// whatever it would wrongly answer on the failure, it has answered by then.
    fn wait_faulted(&self) {
        let deadline = std::time::Instant::now() + WAIT;
        while !*self.faulted.borrow() {
            assert!(std::time::Instant::now() < deadline, "no fault was raised");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Appends a 100-octet record; `seq` hears when it is durable.
    fn append(&self, seq: u64) {
        self.append_sized(seq, 100);
    }

    /// Appends a record of `len` octets; `seq` hears when it is durable.
    fn append_sized(&self, seq: u64, len: usize) {
        let sink = self.sink.clone();
        let notify = Completion::new(move |ok| {
            let _ = sink.send((seq, ok));
        });
        let op = Op::Append {
            bytes: Chunks::One(Bytes::from(vec![seq as u8; len])),
            track: Track::Nothing,
            notify: Some(notify),
        };
        assert!(self.tx.send(op).is_ok());
    }

    /// Sends an op answering on a channel; returns the channel.
    fn ask(&self, op: fn(Completion) -> Op) -> std_mpsc::Receiver<bool> {
        let (reply, rx) = Completion::channel();
        assert!(self.tx.send(op(reply)).is_ok());
        rx
    }

    /// Waits until everything sent so far is written.
    fn flush(&self) -> bool {
        self.ask(Op::Flush).recv_timeout(WAIT).unwrap()
    }

    /// The next `n` confirms, as (seq, ok).
    fn confirms(&mut self, n: usize) -> Vec<(u64, bool)> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.events.recv_timeout(WAIT) {
                Ok(confirm) => out.push(confirm),
                Err(_) => panic!("confirms missing: {out:?}"),
            }
        }
        out
    }

    /// Confirms already sent.
    fn confirms_now(&mut self) -> Vec<(u64, bool)> {
        self.events.try_iter().collect()
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
    // ...so only the next sync, which fails, covers it: it is withheld, not nacked.
    h.fail.store(true, Ordering::SeqCst);
    gate.release();
    assert_eq!(h.confirms(1), vec![(1, true)]);
    h.wait_faulted();
    assert!(h.confirms_now().is_empty(), "withheld while syncs fail");
    assert!(
        !h.poisoned.load(Ordering::SeqCst),
        "a fault is not a poison"
    );
    // Syncs work again: record 2 is written again on a new segment and confirmed there.
    h.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.confirms(1), vec![(2, true)]);
    h.append(3);
    assert_eq!(h.confirms(1), vec![(3, true)]);
    assert!(h.ask(Op::Sync).recv_timeout(WAIT).unwrap());
    assert!(h.stop());
}

/// A failed sync: its waiters wait; once syncs work, their records are on a new segment,
/// and the segment whose sync failed is cut back to what was synced on it.
#[test]
fn a_failed_sync_withholds_its_waiters_until_their_records_are_synced_on_a_new_segment() {
    let gate = Arc::new(Gate::default());
    let mut h = start("fail", FsyncMode::Batch, 1 << 20, &gate);
    h.append(1);
    assert_eq!(h.confirms(1), vec![(1, true)]);
    let synced = h.segment_len();
    h.fail.store(true, Ordering::SeqCst);
    h.append(2);
    h.wait_faulted();
    assert!(h.confirms_now().is_empty());
    h.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.confirms(1), vec![(2, true)]);
    assert!(h.flush());
    // Segment 1 is cut back to what the writer knew a sync covered when the fault began:
    // record 1, or — when the syncer's report of that sync had not reached the writer yet
    // (record 1's confirm goes straight from the syncer to its waiter) — nothing, and
    // record 1 was kept and written again with record 2. Never a record past the sync.
    let header = super::format::FILE_HEADER_LEN as u64;
    let seg1 = std::fs::metadata(h.dir.join(segment_name(1))).map(|m| m.len());
    // Each retry while syncs failed gave up on the segment it had started.
    let (newest, path) = super::recovery::list_segments(&h.dir)
        .unwrap()
        .pop()
        .unwrap();
    assert!(newest > 1);
    let rewritten = std::fs::metadata(path).unwrap().len();
    match seg1 {
        Ok(len) if len == synced => assert_eq!(rewritten, header + 100, "record 2 alone"),
        Ok(len) if len == header => {
            assert_eq!(rewritten, header + 200, "records 1 and 2 written again")
        }
        Ok(len) => panic!("segment 1 cut to {len} octets, neither {synced} nor {header}"),
        // Holding nothing live, segment 1 may be deleted already.
        Err(_) => assert!(
            rewritten == header + 100 || rewritten == header + 200,
            "the newest segment holds record 2 (and record 1 if written again): {rewritten}"
        ),
    }
    assert!(h.stop());
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
