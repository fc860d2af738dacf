//! Recovery of the message store from damaged files: a torn tail at every byte offset of
//! the last records, and flipped bits in the middle of a segment. The store must start,
//! keep every record that verifies, truncate a torn tail and move a damaged segment aside.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use minimq_broker::message::Message;
use minimq_broker::store::{Damage, RecoveryMode, Store, StoreOptions};
use minimq_protocol::{BasicProperties, FieldTable};

fn fresh_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("minimq-store-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn message(body: &str) -> Arc<Message> {
    let props = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    Arc::new(Message::new(
        "".into(),
        "q".into(),
        props,
        Bytes::copy_from_slice(body.as_bytes()),
    ))
}

/// Writes `n` messages into one durable queue; answers the segment file and the byte
/// offset where each message's records start.
async fn populate(dir: &Path, n: usize) -> (PathBuf, Vec<u64>) {
    let (store, recovered) = Store::open(dir, StoreOptions::default()).unwrap();
    assert!(recovered.is_empty());
    let id = store
        .add_queue("/", "q", false, &FieldTable::new())
        .await
        .unwrap();
    let seg = segment(dir);
    let mut offsets = Vec::new();
    for i in 0..n {
        assert!(store.sync().await);
        offsets.push(std::fs::metadata(&seg).unwrap().len());
        store.enqueue(id, i as u64 + 1, &message(&format!("m{i}")), None);
    }
    assert!(store.sync().await);
    offsets.push(std::fs::metadata(&seg).unwrap().len());
    store.close().await;
    (seg, offsets)
}

fn segment(dir: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    segs.sort();
    segs.pop().expect("a segment")
}

/// The bodies of the recovered messages, read back from the log as a queue reads them.
fn bodies(store: &Store, queues: &[minimq_broker::store::RecoveredQueue]) -> Vec<String> {
    let ids: Vec<u64> = queues
        .iter()
        .flat_map(|q| q.messages.iter().map(|m| m.msg_id))
        .collect();
    store
        .read_messages(&ids)
        .into_iter()
        .map(|m| String::from_utf8(m.expect("readable").body.to_vec()).unwrap())
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to.join("segments")).unwrap();
    std::fs::copy(from.join("metadata.log"), to.join("metadata.log")).unwrap();
    for e in std::fs::read_dir(from.join("segments")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join("segments").join(p.file_name().unwrap())).unwrap();
    }
}

#[tokio::test]
async fn a_torn_tail_at_any_offset_of_the_last_records_is_truncated_and_the_prefix_kept() {
    let base = fresh_dir("torn-base");
    let (seg, offsets) = populate(&base, 4).await;
    let full = std::fs::metadata(&seg).unwrap().len();
    let work = fresh_dir("torn-work");
    // Every cut inside the last two messages' records and the clean-shutdown record.
    for cut in offsets[2]..full {
        copy_dir(&base, &work);
        let wseg = segment(&work);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wseg)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let (store, recovered) = Store::open(&work, StoreOptions::default()).unwrap();
        let got = bodies(&store, &recovered);
        let complete = offsets.iter().skip(1).filter(|o| **o <= cut).count();
        let want: Vec<String> = (0..complete.min(4)).map(|i| format!("m{i}")).collect();
        assert_eq!(got, want, "cut at {cut}");
        // Not a clean stop: every recovered message is flagged, as after kill -9.
        assert!(
            recovered
                .iter()
                .all(|q| q.messages.iter().all(|m| m.redelivered)),
            "cut at {cut}"
        );
        // Whole-record boundaries: each message is a message record followed by an
        // enqueue record (9 + 24 octets).
        let boundaries = offsets
            .iter()
            .copied()
            .chain(offsets.iter().skip(1).map(|o| o - 33));
        let valid_end = boundaries.filter(|o| *o <= cut).max().unwrap();
        assert_eq!(
            std::fs::metadata(&wseg).unwrap().len(),
            valid_end,
            "truncated to the last whole record (cut {cut})"
        );
        store.close().await;
    }
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn a_flipped_bit_in_the_middle_is_reported_the_segment_kept_aside_and_the_rest_recovered() {
    let base = fresh_dir("flip-base");
    let (_seg, offsets) = populate(&base, 5).await;
    let work = fresh_dir("flip-work");
    copy_dir(&base, &work);
    let wseg = segment(&work);
    let mut data = std::fs::read(&wseg).unwrap();
    // Inside message m2's body.
    let at = offsets[3] as usize - 40;
    data[at] ^= 0x01;
    std::fs::write(&wseg, &data).unwrap();
    let (store, recovered) = Store::open(&work, StoreOptions::default()).unwrap();
    let got = bodies(&store, &recovered);
    assert!(
        !got.contains(&"m2".to_string()),
        "the damaged message cannot be verified: {got:?}"
    );
    for keep in ["m0", "m1", "m3", "m4"] {
        assert!(
            got.contains(&keep.to_string()),
            "{keep} verifies and must be recovered: {got:?}"
        );
    }
    let damaged: Vec<_> = std::fs::read_dir(work.join("damaged")).unwrap().collect();
    assert_eq!(
        damaged.len(),
        1,
        "the damaged segment is kept for inspection"
    );
    store.close().await;
    // The store was rewritten: a second start finds no damage and the same messages.
    let (store, again) = Store::open(&work, StoreOptions::default()).unwrap();
    assert_eq!(bodies(&store, &again), got);
    assert_eq!(std::fs::read_dir(work.join("damaged")).unwrap().count(), 1);
    store.close().await;
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&work);
}

#[tokio::test]
async fn settled_messages_do_not_come_back_and_dead_segments_are_deleted() {
    let dir = fresh_dir("settle");
    let opts = StoreOptions {
        segment_size: 4096,
        ..Default::default()
    };
    let (store, _) = Store::open(&dir, opts.clone()).unwrap();
    let id = store
        .add_queue("/", "q", false, &FieldTable::new())
        .await
        .unwrap();
    let body = "x".repeat(1000);
    for seq in 1..=40u64 {
        store.enqueue(id, seq, &message(&body), None);
        if seq > 1 {
            store.settle(id, vec![seq - 1]);
        }
    }
    assert!(store.sync().await);
    let segments = std::fs::read_dir(dir.join("segments")).unwrap().count();
    assert!(
        segments <= 3,
        "settled segments are deleted, {segments} remain"
    );
    store.close().await;
    let (store, recovered) = Store::open(&dir, opts).unwrap();
    assert_eq!(recovered[0].messages.len(), 1);
    assert_eq!(recovered[0].messages[0].seq, 40);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_long_lived_message_is_copied_forward_so_disk_use_stays_bounded() {
    let dir = fresh_dir("compact");
    let opts = StoreOptions {
        segment_size: 8192,
        ..Default::default()
    };
    let (store, _) = Store::open(&dir, opts.clone()).unwrap();
    let id = store
        .add_queue("/", "q", false, &FieldTable::new())
        .await
        .unwrap();
    // Message 1 stays in the queue for the whole run; 2..=400 come and go.
    let long = message("long-lived");
    store.enqueue(id, 1, &long, None);
    let long_id = long.store_id.lock().unwrap().expect("a store id");
    // Read back at once (the writer may not have written it yet: the read waits).
    let read_body = |store: &Store| {
        let m = store.read_messages(&[long_id]).pop().flatten();
        m.map(|m| String::from_utf8(m.body.to_vec()).unwrap())
    };
    assert_eq!(read_body(&store).as_deref(), Some("long-lived"));
    let body = "y".repeat(500);
    for seq in 2..=400u64 {
        store.enqueue(id, seq, &message(&body), None);
        store.settle(id, vec![seq]);
        if seq % 20 == 0 {
            assert!(store.sync().await);
        }
    }
    store.enqueue(id, 401, &message("last"), None);
    assert!(store.sync().await);
    let bytes: u64 = std::fs::read_dir(dir.join("segments"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    // 400 × ~550 octets went through; what stays must be a few segments, not all of it.
    assert!(bytes < 5 * 8192, "{bytes} octets remain on disk");
    // The copy forward moved it: it is read from its new place.
    assert_eq!(read_body(&store).as_deref(), Some("long-lived"));
    store.close().await;
    let (store, recovered) = Store::open(&dir, opts).unwrap();
    let seqs: Vec<u64> = recovered[0].messages.iter().map(|m| m.seq).collect();
    let got: Vec<(u64, String)> = seqs.into_iter().zip(bodies(&store, &recovered)).collect();
    assert_eq!(
        got,
        vec![(1, "long-lived".to_string()), (401, "last".to_string())]
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn records_across_read_chunks_and_larger_than_a_chunk_are_recovered() {
    // The replay reads segments 4 MiB at a time: records of odd sizes straddle the
    // chunk boundaries, and one 5 MiB record is larger than a chunk.
    let dir = fresh_dir("chunks");
    let (store, _) = Store::open(&dir, StoreOptions::default()).unwrap();
    let id = store
        .add_queue("/", "q", false, &FieldTable::new())
        .await
        .unwrap();
    let mut expected = Vec::new();
    for seq in 1..=300u64 {
        let size = if seq == 150 {
            5 << 20
        } else {
            (seq as usize * 7919) % 60_000
        };
        let body = format!("{seq}:").repeat(size / 4 + 1);
        store.enqueue(id, seq, &message(&body), None);
        expected.push(body);
    }
    assert!(store.sync().await);
    store.close().await;
    let (store, recovered) = Store::open(&dir, StoreOptions::default()).unwrap();
    let seqs: Vec<u64> = recovered[0].messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=300).collect::<Vec<u64>>());
    assert_eq!(bodies(&store, &recovered), expected);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A graceful close must leave the clean-shutdown record last. The writer compacts one
/// segment per batch: with two segments due for compaction at close, the second was copied
/// forward in the batch that carried the clean-shutdown record, after it, and the next
/// start took the log for a crashed one and flagged every message redelivered.
#[tokio::test]
async fn a_compaction_at_close_does_not_hide_the_clean_shutdown() {
    let dir = fresh_dir("compaction-at-close");
    let opts = StoreOptions {
        segment_size: 4096,
        ..StoreOptions::default()
    };
    let (store, _) = Store::open(&dir, opts.clone()).unwrap();
    let id = store
        .add_queue("/", "q", false, &FieldTable::new())
        .await
        .unwrap();
    // Many segments, each mostly messages that will be settled.
    let body = "x".repeat(200);
    let total = 200u64;
    for seq in 1..=total {
        store.enqueue(id, seq, &message(&format!("{seq:04}{body}")), None);
        assert!(store.sync().await);
    }
    let segments = std::fs::read_dir(dir.join("segments")).unwrap().count();
    assert!(segments > 6, "{segments} segments");
    // Keep every 20th message (one or two per segment, so each old segment is under a
    // quarter live and due for compaction), settle the rest in one batch.
    let keep: Vec<u64> = (1..=total).filter(|s| s % 20 == 0).collect();
    let settled: Vec<u64> = (1..=total).filter(|s| s % 20 != 0).collect();
    store.settle(id, settled);
    assert!(store.sync().await);
    store.close().await;

    let (store, recovered) = Store::open(&dir, opts).unwrap();
    let msgs = &recovered[0].messages;
    assert_eq!(msgs.iter().map(|m| m.seq).collect::<Vec<_>>(), keep);
    let flagged: Vec<u64> = msgs
        .iter()
        .filter(|m| m.redelivered)
        .map(|m| m.seq)
        .collect();
    assert!(
        flagged.is_empty(),
        "after a graceful close nothing is redelivered; flagged: {flagged:?}"
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Flips `mask` in the length field of message `i`'s record in the newest segment.
fn flip_length_bit(dir: &Path, offsets: &[u64], i: usize, mask: u8, byte: usize) {
    let seg = segment(dir);
    let mut data = std::fs::read(&seg).unwrap();
    data[offsets[i] as usize + byte] ^= mask;
    std::fs::write(&seg, &data).unwrap();
}

/// A flipped bit in a record's length field in the middle of the newest segment is
/// corruption, not a torn tail: valid records follow it. Only that record may be lost;
/// the segment is kept aside and every later record recovered. (The old replay trusted
/// the broken length, found no record there and truncated the segment: 900 of 1,000
/// confirmed messages gone.)
#[tokio::test]
async fn a_flipped_bit_in_a_length_field_loses_only_that_record() {
    let base = fresh_dir("len-flip-base");
    let (_seg, offsets) = populate(&base, 1000).await;
    let work = fresh_dir("len-flip-work");
    // A high bit (the length points past the end of the file) and a low one (it points
    // inside the next record).
    for (mask, byte) in [(0x40, 0), (0x01, 3)] {
        copy_dir(&base, &work);
        flip_length_bit(&work, &offsets, 100, mask, byte);
        let (store, recovered) = Store::open(&work, StoreOptions::default()).unwrap();
        let got = bodies(&store, &recovered);
        let want: Vec<String> = (0..1000)
            .filter(|i| *i != 100)
            .map(|i| format!("m{i}"))
            .collect();
        assert_eq!(got.len(), 999, "mask {mask:#x}: {} recovered", got.len());
        assert_eq!(got, want, "mask {mask:#x}");
        let damaged = std::fs::read_dir(work.join("damaged")).unwrap().count();
        assert_eq!(damaged, 1, "a copy of the damaged segment is kept");
        store.close().await;
        let _ = std::fs::remove_dir_all(work.join("damaged"));
    }
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&work);
}

/// Every stretch recovery did not use is reported with its segment and offset.
#[tokio::test]
async fn skipped_records_are_reported_with_segment_and_offset() {
    let base = fresh_dir("report-base");
    let (seg, offsets) = populate(&base, 20).await;
    let seg_no: u64 = seg
        .file_stem()
        .and_then(|s| s.to_str())
        .and_then(|s| s.parse().ok())
        .expect("numbered segment");
    let work = fresh_dir("report-work");
    copy_dir(&base, &work);
    flip_length_bit(&work, &offsets, 7, 0x01, 3);
    let (store, _) = Store::open(&work, StoreOptions::default()).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.mode, RecoveryMode::SkipCorrupt);
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    let k = &report.skipped[0];
    assert_eq!(
        (k.segment, k.offset, k.damage),
        (seg_no, offsets[7], Damage::Corrupt)
    );
    // The stretch is the bad record, at most up to the next message's records.
    assert!(k.len > 0 && offsets[7] + k.len <= offsets[8], "{k:?}");
    assert_eq!(report.damaged_copies.len(), 1);
    store.close().await;
    // A torn tail is reported too.
    copy_dir(&base, &work);
    let wseg = segment(&work);
    let cut = offsets[19] + 5;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wseg)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let (store, _) = Store::open(&work, StoreOptions::default()).unwrap();
    let report = store.recovery_report().clone();
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert_eq!(
        (
            report.skipped[0].offset,
            report.skipped[0].len,
            report.skipped[0].damage
        ),
        (offsets[19], 5, Damage::TornTail)
    );
    store.close().await;
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&work);
}

/// The stricter recovery modes refuse to start instead of skipping, and say where.
#[tokio::test]
async fn the_stricter_recovery_modes_refuse_damage_they_do_not_tolerate() {
    let base = fresh_dir("modes-base");
    let (_seg, offsets) = populate(&base, 10).await;
    let work = fresh_dir("modes-work");
    let with = |recovery| StoreOptions {
        recovery,
        ..StoreOptions::default()
    };
    // Corruption in the middle: only skip-corrupt starts.
    for mode in [RecoveryMode::TolerateTornTail, RecoveryMode::Absolute] {
        copy_dir(&base, &work);
        flip_length_bit(&work, &offsets, 3, 0x01, 3);
        let err = Store::open(&work, with(mode)).unwrap_err().to_string();
        assert!(
            err.contains(&format!("corrupt record at offset {}", offsets[3]))
                && err.contains("refusing to start"),
            "{mode:?}: {err}"
        );
        // Nothing was changed: skip-corrupt still finds all but the bad record.
        let (store, recovered) = Store::open(&work, with(RecoveryMode::SkipCorrupt)).unwrap();
        assert_eq!(bodies(&store, &recovered).len(), 9, "{mode:?}");
        store.close().await;
    }
    // A torn tail: refused only by absolute.
    let torn = |work: &Path| {
        copy_dir(&base, work);
        let wseg = segment(work);
        let len = std::fs::metadata(&wseg).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&wseg)
            .unwrap()
            .set_len(len - 3)
            .unwrap();
    };
    torn(&work);
    let err = Store::open(&work, with(RecoveryMode::Absolute))
        .unwrap_err()
        .to_string();
    assert!(err.contains("torn tail"), "{err}");
    torn(&work);
    let (store, recovered) = Store::open(&work, with(RecoveryMode::TolerateTornTail)).unwrap();
    assert_eq!(bodies(&store, &recovered).len(), 10);
    store.close().await;
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_dir_all(&work);
}
