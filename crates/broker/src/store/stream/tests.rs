//! The stream log's own tests: append and read back, reads from an offset and from a
//! timestamp, segment rolls and retention, recovery after a torn tail, and the removal
//! of a deleted stream's directory (set aside first; what is left swept at start-up).

use std::path::PathBuf;

use bytes::Bytes;
use minimq_protocol::BasicProperties;

use super::*;
use crate::store::disk::OsDisk;
use crate::store::faulty::{Fault, FaultyDisk, FsOp};

fn place(d: &Path) -> StreamPlace {
    StreamPlace {
        dir: d.to_path_buf(),
        disk: Arc::new(OsDisk),
        sync: true,
    }
}

fn faulty_place(d: &Path, disk: &Arc<FaultyDisk>, sync: bool) -> StreamPlace {
    StreamPlace {
        dir: d.to_path_buf(),
        disk: disk.clone(),
        sync,
    }
}

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("minimq-stream-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn message(body: &str) -> Message {
    Message::new(
        "ex".into(),
        "rk".into(),
        BasicProperties::default(),
        Bytes::copy_from_slice(body.as_bytes()),
    )
}

fn append(log: &mut StreamLog, bodies: &[&str], timestamp: i64) -> Vec<u64> {
    let messages: Vec<Message> = bodies.iter().map(|b| message(b)).collect();
    let refs: Vec<&Message> = messages.iter().collect();
    log.append(&refs, timestamp).unwrap()
}

fn bodies(entries: &[StreamEntry]) -> Vec<String> {
    entries
        .iter()
        .map(|e| String::from_utf8_lossy(&e.message.body).into_owned())
        .collect()
}

fn small(segment_bytes: u64) -> StreamLimits {
    StreamLimits {
        segment_bytes,
        ..StreamLimits::default()
    }
}

#[test]
fn appended_messages_get_consecutive_offsets_and_read_back_whole() {
    let d = dir("append");
    let mut log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
    assert_eq!(append(&mut log, &["a", "b"], 10), [0, 1]);
    assert_eq!(append(&mut log, &["c"], 11), [2]);
    let all = log.read(0, 100, usize::MAX).unwrap();
    assert_eq!(bodies(&all), ["a", "b", "c"]);
    assert_eq!(all[2].offset, 2);
    assert_eq!(all[2].timestamp, 11);
    assert_eq!(&*all[0].message.exchange, "ex");
    assert_eq!(&*all[0].message.routing_key, "rk");
    assert_eq!(bodies(&log.read(1, 1, usize::MAX).unwrap()), ["b"]);
    assert!(log.read(3, 10, usize::MAX).unwrap().is_empty());
    assert_eq!(log.len(), 3);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn reads_cross_segments_and_start_at_any_offset() {
    let d = dir("segments");
    let mut log = StreamLog::open(&place(&d), small(200)).unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    for n in &names {
        append(&mut log, &[n], 1);
    }
    assert!(log.segment_count() > 5, "{} segments", log.segment_count());
    for start in [0u64, 7, 23, 49] {
        let got = log.read(start, 100, usize::MAX).unwrap();
        assert_eq!(got.len() as u64, 50 - start);
        assert!(got.iter().zip(start..).all(|(e, o)| e.offset == o));
    }
    // A byte bound stops early but always gives one record.
    assert_eq!(log.read(0, 100, 1).unwrap().len(), 1);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn the_sparse_index_finds_offsets_deep_in_a_large_segment() {
    let d = dir("index");
    let mut log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
    let body = "x".repeat(10_000);
    for _ in 0..40 {
        append(&mut log, &[&body], 1);
    }
    assert_eq!(log.segment_count(), 1);
    let got = log.read(33, 2, usize::MAX).unwrap();
    assert_eq!(got.iter().map(|e| e.offset).collect::<Vec<_>>(), [33, 34]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_timestamp_finds_the_first_message_appended_at_or_after_it() {
    let d = dir("timestamps");
    let mut log = StreamLog::open(&place(&d), small(300)).unwrap();
    for t in 0..20 {
        append(&mut log, &["m"], 1000 + t * 10);
    }
    assert_eq!(log.offset_at(0).unwrap(), 0);
    assert_eq!(log.offset_at(1055).unwrap(), 6);
    assert_eq!(log.offset_at(1060).unwrap(), 6);
    assert_eq!(log.offset_at(99_999).unwrap(), 20);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn retention_by_bytes_drops_whole_old_segments_never_the_active_one() {
    let d = dir("bytes");
    let limits = StreamLimits {
        segment_bytes: 1000,
        max_bytes: Some(2500),
        max_age_ms: None,
    };
    let mut log = StreamLog::open(&place(&d), limits).unwrap();
    let body = "y".repeat(100);
    for _ in 0..100 {
        append(&mut log, &[&body], 1);
    }
    assert!(log.bytes() <= 2500 + 1000, "{} octets kept", log.bytes());
    assert!(log.first_offset() > 0);
    assert_eq!(log.next_offset(), 100);
    // What is kept starts at a segment's first offset and reads back in full.
    let kept = log.read(0, 1000, usize::MAX).unwrap();
    assert_eq!(kept.first().map(|e| e.offset), Some(log.first_offset()));
    assert_eq!(kept.len() as u64, log.len());
    let files = std::fs::read_dir(&d).unwrap().count();
    assert_eq!(files, log.segment_count());
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn retention_by_age_drops_segments_whose_newest_message_is_older() {
    let d = dir("age");
    let limits = StreamLimits {
        segment_bytes: 200,
        max_bytes: None,
        max_age_ms: Some(1000),
    };
    let mut log = StreamLog::open(&place(&d), limits).unwrap();
    let now = now_ms();
    for _ in 0..10 {
        append(&mut log, &["old message"], now - 60_000);
    }
    // Every roll dropped the closed old segments; the one being written stays, old or not.
    assert_eq!(log.segment_count(), 1);
    assert!(log.first_offset() > 0);
    log.apply_retention(now).unwrap();
    assert_eq!(log.segment_count(), 1);
    assert!(!log.is_empty());
    // Young messages are kept.
    let mut young = StreamLog::open(&place(&dir("age-young")), limits).unwrap();
    for _ in 0..10 {
        append(&mut young, &["new message"], now);
    }
    assert!(young.segment_count() > 1);
    assert_eq!(young.first_offset(), 0);
    young.remove_files().unwrap();
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_reopened_log_keeps_its_offsets_and_appends_after_them() {
    let d = dir("reopen");
    {
        let mut log = StreamLog::open(&place(&d), small(150)).unwrap();
        for i in 0..10 {
            append(&mut log, &[&format!("m{i}")], i);
        }
    }
    let mut log = StreamLog::open(&place(&d), small(150)).unwrap();
    assert_eq!((log.first_offset(), log.next_offset()), (0, 10));
    assert_eq!(append(&mut log, &["m10"], 10), [10]);
    let got = bodies(&log.read(8, 10, usize::MAX).unwrap());
    assert_eq!(got, ["m8", "m9", "m10"]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_torn_tail_is_cut_at_the_last_whole_record() {
    let d = dir("torn");
    {
        let mut log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
        append(&mut log, &["one", "two", "three"], 5);
    }
    let path = d.join(format::segment_file_name(0));
    let whole = std::fs::metadata(&path).unwrap().len();
    // Half of the last record made it to disk.
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(whole - 4).unwrap();
    drop(f);
    let mut log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
    assert_eq!(log.next_offset(), 2);
    assert!(std::fs::metadata(&path).unwrap().len() < whole - 4);
    assert_eq!(append(&mut log, &["again"], 6), [2]);
    assert_eq!(
        bodies(&log.read(0, 10, usize::MAX).unwrap()),
        ["one", "two", "again"]
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_damaged_record_cuts_the_segment_there() {
    let d = dir("damaged");
    {
        let mut log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
        append(&mut log, &["one", "two", "three"], 5);
    }
    let path = d.join(format::segment_file_name(0));
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
    assert_eq!(log.next_offset(), 2);
    assert_eq!(
        bodies(&log.read(0, 10, usize::MAX).unwrap()),
        ["one", "two"]
    );
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_segment_created_without_its_header_opens_empty() {
    let d = dir("headerless");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format::segment_file_name(0)), b"MQS").unwrap();
    let mut log = StreamLog::open(&place(&d), StreamLimits::default()).unwrap();
    assert_eq!(log.next_offset(), 0);
    assert_eq!(append(&mut log, &["a"], 1), [0]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn garbage_never_panics_the_record_check() {
    for len in 0..64 {
        let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
        let _ = format::check_record(&junk);
    }
}

#[test]
fn a_failed_sync_refuses_the_append_and_every_later_one() {
    let d = dir("failed-sync");
    let disk = FaultyDisk::new(1);
    let mut log = StreamLog::open(&faulty_place(&d, &disk, true), StreamLimits::default()).unwrap();
    assert_eq!(append(&mut log, &["kept"], 1), [0]);
    disk.fail(&[FsOp::Sync], Fault::Io);
    let m = message("lost");
    assert!(log.append(&[&m], 2).is_err());
    disk.heal();
    // Poisoned: what the failed sync covered may or may not be on disk, so nothing
    // later can be confirmed either.
    assert!(log.append(&[&m], 3).is_err());
    drop(log);
    let mut log = StreamLog::open(&faulty_place(&d, &disk, true), StreamLimits::default()).unwrap();
    let next = log.next_offset();
    assert!((1..=2).contains(&next), "next offset {next}");
    assert_eq!(append(&mut log, &["after"], 4), [next]);
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn a_power_loss_keeps_every_synced_append_across_segment_rolls() {
    let d = dir("power-loss");
    let disk = FaultyDisk::new(2);
    let limits = small(200);
    let mut log = StreamLog::open(&faulty_place(&d, &disk, true), limits).unwrap();
    for i in 0..30 {
        append(&mut log, &[&format!("m{i}")], i);
    }
    assert!(log.segment_count() > 3);
    disk.power_off();
    drop(log);
    disk.power_on().unwrap();
    let log = StreamLog::open(&faulty_place(&d, &disk, true), limits).unwrap();
    let got = log.read(0, 100, usize::MAX).unwrap();
    assert_eq!(got.len(), 30);
    assert!(got
        .iter()
        .zip(0..)
        .all(|(e, o)| e.offset == o && e.timestamp == o as i64));
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn without_syncs_a_power_loss_takes_the_unsynced_appends() {
    let d = dir("no-sync");
    let disk = FaultyDisk::new(3);
    let mut log =
        StreamLog::open(&faulty_place(&d, &disk, false), StreamLimits::default()).unwrap();
    append(&mut log, &["a", "b"], 1);
    disk.power_off();
    drop(log);
    disk.power_on().unwrap();
    let log = StreamLog::open(&faulty_place(&d, &disk, false), StreamLimits::default()).unwrap();
    assert_eq!(
        log.next_offset(),
        0,
        "nothing was synced but the segment's header"
    );
    std::fs::remove_dir_all(&d).unwrap();
}

/// A stream of three segments in `streams/<id>` under `root`.
fn three_segments(root: &Path, id: u64, disk: &Arc<FaultyDisk>) -> PathBuf {
    let d = root.join("streams").join(id.to_string());
    let mut log = StreamLog::open(&faulty_place(&d, disk, true), small(200)).unwrap();
    for i in 0..6 {
        append(&mut log, &[&"x".repeat(100 + i)], 10);
    }
    assert!(log.segment_count() >= 3, "{}", log.segment_count());
    d
}

#[test]
fn a_deleted_streams_directory_is_set_aside_before_its_files_go() {
    let root = dir("remove");
    let disk = FaultyDisk::new(4);
    let d = three_segments(&root, 7, &disk);
    let aside = root.join("streams").join("7.deleted");

    // The second file refused: the rest goes, the error is answered, and the stream's
    // name is free at once.
    disk.fail_once(FsOp::Remove, 1, Fault::Io);
    let e = remove_dir(&d, &*disk).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(5), "{e}");
    assert!(!d.exists());
    assert_eq!(
        std::fs::read_dir(&aside).unwrap().count(),
        1,
        "the one refused"
    );

    // A refused rename: the files are removed where they are.
    let d = three_segments(&root, 8, &disk);
    disk.fail_once(FsOp::Rename, 0, Fault::Io);
    assert!(remove_dir(&d, &*disk).is_err(), "the rename's error");
    assert!(!d.exists(), "removed in place");

    // Already gone: nothing to do.
    remove_dir(&d, &*disk).unwrap();
    std::fs::remove_dir_all(&root).unwrap();
}

#[test]
fn the_sweep_keeps_live_streams_and_removes_what_deleted_ones_left() {
    let root = dir("sweep");
    let disk = FaultyDisk::new(5);
    let live = three_segments(&root, 1, &disk);
    let orphan = three_segments(&root, 2, &disk);
    let streams = root.join("streams");
    // A deletion cut short after its rename, of a stream that is live again (its queue's
    // record was not removed yet): the stream reopens empty, the old files go.
    let half = three_segments(&root, 3, &disk);
    std::fs::rename(&half, streams.join("3.deleted")).unwrap();
    std::fs::write(streams.join("stray"), b"?").unwrap();

    disk.fail(&[FsOp::Remove], Fault::Io);
    let (removed, failed) = sweep(&streams, &*disk, &|id| id == 1 || id == 3);
    assert!(removed.is_empty());
    assert_eq!(failed.len(), 3, "{failed:?}");
    disk.heal();
    let (mut removed, failed) = sweep(&streams, &*disk, &|id| id == 1 || id == 3);
    removed.sort();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(
        removed,
        [orphan, streams.join("3.deleted"), streams.join("stray")]
    );
    let mut left: Vec<PathBuf> = std::fs::read_dir(&streams)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    assert_eq!(left, std::slice::from_ref(&live));
    let log = StreamLog::open(&faulty_place(&live, &disk, true), small(200)).unwrap();
    assert_eq!(log.len(), 6, "a live stream is left whole");

    // No `streams/` at all (no stream was ever declared): nothing to do.
    assert_eq!(sweep(&root.join("none"), &*disk, &|_| false).0.len(), 0);
    std::fs::remove_dir_all(&root).unwrap();
}
