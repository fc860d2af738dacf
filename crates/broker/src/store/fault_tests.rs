//! Tests of the store on a [`FaultyDisk`]: a write, a sync or a segment creation that
//! fails, the store getting over it once the fault clears, and what a power loss right
//! after leaves.

use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::Duration;

use minimq_protocol::{BasicProperties, FieldTable};

use super::faulty::{Fault, FaultyDisk, FsOp};
use super::{Completion, FsyncMode, Store, StoreOptions};
use crate::message::Message;

/// Longest wait for something that must happen.
const WAIT: Duration = Duration::from_secs(10);

struct Harness {
    dir: std::path::PathBuf,
    disk: Arc<FaultyDisk>,
    opts: StoreOptions,
}

impl Harness {
    fn new(name: &str, segment_size: u64) -> Harness {
        let dir =
            std::env::temp_dir().join(format!("minimq-store-fault-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk = FaultyDisk::new(7);
        let opts = StoreOptions {
            fsync: FsyncMode::Batch,
            segment_size,
            disk: disk.clone(),
            ..StoreOptions::default()
        };
        Harness { dir, disk, opts }
    }

    fn open(&self) -> (Arc<Store>, Vec<super::RecoveredQueue>) {
        Store::open(&self.dir, self.opts.clone()).expect("store opens")
    }

    /// The power fails with `store` running; the store is then reopened, on a disk
    /// without faults, as after a reboot. Answers the seqs recovered in queue `queue` and the new store.
    fn power_loss(&self, store: Arc<Store>, queue: u64) -> (Arc<Store>, Vec<u64>) {
        self.disk.power_off();
        block_on(store.halt());
        drop(store);
        // The machine comes back healthy.
        self.disk.heal();
        self.disk.power_on().expect("power comes back");
        let (store, queues) = self.open();
        let seqs = queues
            .iter()
            .find(|q| q.def.id == queue)
            .map(|q| q.messages.iter().map(|m| m.seq).collect())
            .unwrap_or_default();
        (store, seqs)
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs `f` on a runtime of its own (stopping the store uses the blocking pool).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

fn message(body: &[u8]) -> Message {
    Message::new(
        "".into(),
        "q".into(),
        BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        },
        bytes::Bytes::copy_from_slice(body),
    )
}

/// Enqueues a new message as `seq` of `queue`; answers where its confirm arrives.
fn enqueue(store: &Store, queue: u64, seq: u64, len: usize) -> Receiver<bool> {
    let (done, rx) = Completion::channel();
    store.enqueue(queue, seq, &message(&vec![seq as u8; len]), Some(done));
    rx
}

fn add_queue(store: &Store) -> u64 {
    futures::executor::block_on(store.add_queue("/", "q", false, &FieldTable::new())).unwrap()
}

fn confirmed(rx: &Receiver<bool>) -> bool {
    rx.recv_timeout(WAIT).expect("an answer")
}

/// Waits until the store has met the injected fault `n` more times than `before` (the
/// first failure handled and retried at least once), then answers whether `rx` is still
/// unanswered: what a wrong store would have confirmed on the failure, it has by then.
fn withheld_after_faults(h: &Harness, before: u64, n: u64, rx: &[Receiver<bool>]) -> bool {
    let deadline = std::time::Instant::now() + WAIT;
    while h.disk.injected() < before + n {
        assert!(
            std::time::Instant::now() < deadline,
            "the fault was never met"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    rx.iter().all(|r| r.try_recv().is_err())
}

/// The fault the test injects, then clears: what it held back is confirmed, and a power
/// loss right after keeps every confirmed message once.
fn a_fault_then_recovery(name: &str, op: FsOp, fault: Fault) {
    let h = Harness::new(name, 1 << 20);
    let (store, _) = h.open();
    let q = add_queue(&store);
    assert!(confirmed(&enqueue(&store, q, 1, 100)));
    let before = h.disk.injected();
    h.disk.fail(&[op], fault);
    let during: Vec<_> = (2..=4).map(|seq| enqueue(&store, q, seq, 100)).collect();
    assert!(
        withheld_after_faults(&h, before, 2, &during),
        "nothing is confirmed while the fault lasts"
    );
    h.disk.heal();
    for rx in &during {
        assert!(confirmed(rx), "confirmed once the fault is over");
    }
    assert!(confirmed(&enqueue(&store, q, 5, 100)), "the store goes on");
    let (store, seqs) = h.power_loss(store, q);
    assert_eq!(seqs, [1, 2, 3, 4, 5], "every confirmed message, once");
    block_on(store.close());
}

#[test]
fn a_failed_sync_eio_is_retried_on_a_new_segment_once_the_fault_clears() {
    a_fault_then_recovery("sync-eio", FsOp::Sync, Fault::Io);
}

#[test]
fn a_failed_write_enospc_is_retried_once_space_returns() {
    a_fault_then_recovery("write-enospc", FsOp::Write, Fault::NoSpace);
}

/// With no descriptor left, a full segment cannot be followed by a new one: the records
/// wait, and are written to the new segment once it can be created.
#[test]
fn a_new_segment_that_cannot_be_opened_emfile_is_created_once_descriptors_return() {
    let h = Harness::new("rotate-emfile", 4096);
    let (store, _) = h.open();
    let q = add_queue(&store);
    // Past the segment's size: the next record needs a new segment.
    assert!(confirmed(&enqueue(&store, q, 1, 5000)));
    let before = h.disk.injected();
    h.disk.fail(&[FsOp::Open], Fault::TooManyFiles);
    let during: Vec<_> = (2..=3).map(|seq| enqueue(&store, q, seq, 100)).collect();
    assert!(withheld_after_faults(&h, before, 2, &during));
    h.disk.heal();
    for rx in &during {
        assert!(confirmed(rx));
    }
    let (store, seqs) = h.power_loss(store, q);
    assert_eq!(seqs, [1, 2, 3]);
    block_on(store.close());
}

/// A sync that fails for good (the disk is gone) never confirms what it held, and a
/// power loss then keeps what was confirmed before.
#[test]
fn nothing_unsynced_is_confirmed_and_a_power_loss_keeps_what_was() {
    let h = Harness::new("gone", 1 << 20);
    let (store, _) = h.open();
    let q = add_queue(&store);
    assert!(confirmed(&enqueue(&store, q, 1, 100)));
    let before = h.disk.injected();
    h.disk
        .fail(&[FsOp::Sync, FsOp::Write, FsOp::Open], Fault::Io);
    let late = enqueue(&store, q, 2, 100);
    assert!(withheld_after_faults(
        &h,
        before,
        2,
        std::slice::from_ref(&late)
    ));
    let (store, seqs) = h.power_loss(store, q);
    assert_eq!(late.try_recv(), Ok(false), "nacked as the store stopped");
    assert_eq!(seqs, [1], "the confirmed message is kept");
    block_on(store.close());
}

/// Compaction copies a long-lived message forward to the current segment, syncs the
/// copy and deletes the segment it came from. A write that fails right after gives the
/// current segment up past what a sync covered, and that includes the copy: it must not
/// be cut off when the segment is trimmed.
#[test]
fn a_failed_write_right_after_a_compaction_keeps_the_message_it_copied() {
    let h = Harness::new("compact-then-fault", 4096);
    let (store, _) = h.open();
    let q = add_queue(&store);
    let segment = |n| h.dir.join("segments").join(super::format::segment_name(n));
    // Message 1 in the first segment, then enough to start a third one.
    let mut last = 0;
    while !segment(3).exists() {
        last += 1;
        assert!(last < 100, "a third segment never started");
        assert!(confirmed(&enqueue(&store, q, last, 200)));
    }
    // All but message 1 settled: the first segment is compacted (message 1 copied to the
    // third) and the first two are deleted.
    store.settle(q, (2..=last).collect());
    let deadline = std::time::Instant::now() + WAIT;
    while segment(1).exists() {
        assert!(std::time::Instant::now() < deadline, "never compacted");
        std::thread::sleep(Duration::from_millis(1));
    }
    let before = h.disk.injected();
    h.disk.fail(&[FsOp::Write], Fault::NoSpace);
    let next = enqueue(&store, q, last + 1, 200);
    assert!(withheld_after_faults(
        &h,
        before,
        1,
        std::slice::from_ref(&next)
    ));
    h.disk.heal();
    assert!(confirmed(&next));
    // The fault is over once the segments given up on are trimmed.
    let mut faults = store.faults();
    block_on(async { tokio::time::timeout(WAIT, faults.wait_for(|on| !on)).await })
        .expect("the fault ends")
        .expect("the store runs");
    let (store, seqs) = h.power_loss(store, q);
    assert_eq!(seqs, [1, last + 1], "the copied message survives the fault");
    block_on(store.close());
}

/// One step of the random workload.
#[derive(Debug, Clone)]
enum Step {
    /// Publish a message of this many octets.
    Publish(usize),
    /// Settle the message at this position among the confirmed ones (modulo their
    /// number), as an ack does.
    Ack(usize),
    /// Wait (a little) for everything so far to be durable.
    Sync,
    /// Make one kind of operation fail now and then.
    Fault(FsOp, Fault),
    /// No more faults.
    Heal,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    let op = prop_oneof![
        Just(FsOp::Write),
        Just(FsOp::Sync),
        Just(FsOp::Open),
        Just(FsOp::SetLen),
        Just(FsOp::SyncDir),
        Just(FsOp::Remove),
    ];
    let fault = prop_oneof![
        Just(Fault::NoSpace),
        Just(Fault::Io),
        Just(Fault::TooManyFiles)
    ];
    prop_oneof![
        6 => (1usize..1500).prop_map(Step::Publish),
        2 => any::<usize>().prop_map(Step::Ack),
        2 => Just(Step::Sync),
        1 => (op, fault).prop_map(|(o, f)| Step::Fault(o, f)),
        1 => Just(Step::Heal),
    ]
}

/// How long a `Sync` step waits: long enough for a retry or two, short enough that a
/// case with a lasting fault stays quick.
const SYNC_STEP: Duration = Duration::from_millis(50);
/// How often a faulty kind of operation fails, in thousandths: often enough that retries
/// fail too, seldom enough that most cases get over their faults.
const FAULT_PER_MILLE: u32 = 300;
/// Segment size in the property test: a few messages fill one, so rotation is part of
/// most cases.
const SMALL_SEGMENT: u64 = 2048;
/// The power loss comes within this many disk operations: a workload of up to 40 steps
/// makes some hundreds, so the crash lands anywhere from the start to after the end.
const CRASH_WITHIN: u64 = 400;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 24,
        ..proptest::prelude::ProptestConfig::default()
    })]

    /// Random publishes, acks, syncs and faults (ENOSPC, EIO, EMFILE at random writes,
    /// syncs, opens, truncations, directory syncs, deletions), then a power loss at a
    /// random operation of the store's disk, and a restart: every message confirmed (and
    /// not acked) is recovered, none twice, and nothing is recovered that was never
    /// published.
    #[test]
    fn a_power_loss_at_a_random_point_of_a_faulty_workload_keeps_every_confirmed_message(
        steps in proptest::collection::vec(step(), 1..40),
        crash_after in 0u64..CRASH_WITHIN,
        seed in proptest::prelude::any::<u64>(),
    ) {
        let h = Harness::new(&format!("prop-{seed}"), SMALL_SEGMENT);
        let (store, _) = h.open();
        let q = add_queue(&store);
        h.disk.power_off_after(crash_after);
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let mut published: Vec<(u64, Receiver<bool>)> = Vec::new();
        let mut outcomes: std::collections::BTreeMap<u64, bool> = Default::default();
        let mut acked = std::collections::BTreeSet::new();
        for s in steps {
            match s {
                Step::Publish(len) => {
                    let seq = published.len() as u64 + 1;
                    published.push((seq, enqueue(&store, q, seq, len)));
                }
                Step::Ack(i) => {
                    for (seq, rx) in &published {
                        if let Ok(ok) = rx.try_recv() {
                            outcomes.insert(*seq, ok);
                        }
                    }
                    let confirmed: Vec<u64> = outcomes
                        .iter()
                        .filter(|(seq, ok)| **ok && !acked.contains(*seq))
                        .map(|(seq, _)| *seq)
                        .collect();
                    if !confirmed.is_empty() {
                        let seq = confirmed[i % confirmed.len()];
                        store.settle(q, vec![seq]);
                        acked.insert(seq);
                    }
                }
                Step::Sync => {
                    let _ = rt.block_on(async { tokio::time::timeout(SYNC_STEP, store.sync()).await });
                }
                Step::Fault(op, fault) => h.disk.fail_randomly(&[op], fault, FAULT_PER_MILLE),
                Step::Heal => h.disk.heal(),
            }
        }
        // The crash: whatever was confirmed by now was confirmed before the power went.
        h.disk.power_off();
        for (seq, rx) in &published {
            if let Ok(ok) = rx.try_recv() {
                outcomes.insert(*seq, ok);
            }
        }
        let (store, seqs) = h.power_loss(store, q);
        let mut seen = std::collections::BTreeSet::new();
        for seq in &seqs {
            proptest::prop_assert!(seen.insert(*seq), "{} recovered twice: {:?}", seq, seqs);
            proptest::prop_assert!(*seq >= 1 && *seq <= published.len() as u64, "{} never published", seq);
        }
        for (seq, ok) in &outcomes {
            if *ok && !acked.contains(seq) {
                proptest::prop_assert!(seen.contains(seq), "confirmed {} lost: {:?}", seq, seqs);
            }
        }
        rt.block_on(store.close());
    }
}
