//! A stream's log: an append-only sequence of messages, each with its offset (0, 1, 2 …
//! in append order, never reused) and the time it was appended, kept in segment files of
//! its own directory, as RabbitMQ's osiris keeps a stream. Nothing is removed from it
//! but whole old segments, by retention (`x-max-length-bytes`, `x-max-age`).
//!
//! The log knows files and messages, nothing of queues or consumers: the stream's queue
//! task (`queue/stream.rs`) owns one [`StreamLog`] and calls it only from the blocking
//! pool, never from an async worker. Every call blocks on file I/O.
//!
//! In memory the log keeps, per segment, its first and next offset, its size, the
//! timestamps of its first and last records, and a sparse index: one entry (offset,
//! position, timestamp) per [`INDEX_INTERVAL`] octets of the file. A read from an offset
//! or a timestamp starts at the nearest entry before it and scans forward, so it reads
//! at most one interval it does not need. At start-up every segment is scanned to
//! rebuild this (see `docs/storage.md`); a torn or damaged tail is cut off.
//!
//! Layout of a stream's directory (`streams/<queue id>/` under the data directory):
//! ```text
//! NNNNNNNNNNNNNNNNNNNN.stream   a segment, named by the offset of its first record
//! ```
//!
//! A deleted stream's directory is first renamed `streams/<queue id>.deleted` (synced),
//! then emptied and removed ([`remove_dir`]): once renamed, the stream is gone whatever
//! happens to the removal. At start-up [`sweep`] removes whatever under `streams/` is
//! not a live stream's directory: one set aside and not yet removed (a file the file
//! system refused, a crash), and one whose queue's record is gone.

pub mod format;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::message::Message;
use crate::store::disk::{Disk, DiskFile};
use crate::store::format::FILE_HEADER_LEN;
use format::{
    check_record, check_segment_header, decode_message, encode_record, parse_segment_file_name,
    segment_file_name, segment_header, RecordError,
};

/// RabbitMQ's default `x-stream-max-segment-size-bytes`: 500 MB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;
/// The largest `x-stream-max-segment-size-bytes` RabbitMQ 3.10 accepts (3 GB).
pub const MAX_SEGMENT_BYTES: u64 = 3_000_000_000;
/// Octets of a segment between two entries of its in-memory index: a read scans at most
/// this much it does not deliver, and a full default segment costs about 8,000 entries
/// (190 KB) of memory.
pub const INDEX_INTERVAL: u64 = 64 * 1024;
/// Octets read from a segment file at once while scanning (recovery, reads): large
/// enough for few system calls, small enough to be a modest buffer per read.
const READ_CHUNK: usize = 256 * 1024;

/// Where a stream's log lives and how it is written.
#[derive(Debug, Clone)]
pub struct StreamPlace {
    /// Its directory (`streams/<queue id>/` under the data directory).
    pub dir: PathBuf,
    /// The seam every change to its files goes through (the store's).
    pub disk: Arc<dyn Disk>,
    /// `fdatasync` every append before it is answered (`false` with `--fsync off`, as
    /// the message log then never syncs either).
    pub sync: bool,
}

/// What the log may hold: segment size, and the retention that drops old segments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// A segment is closed and a new one begun once a record would take it past this.
    pub segment_bytes: u64,
    /// `x-max-length-bytes`: old segments go while the log is larger.
    pub max_bytes: Option<u64>,
    /// `x-max-age` in milliseconds: segments whose newest record is older go.
    pub max_age_ms: Option<u64>,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_bytes: None,
            max_age_ms: None,
        }
    }
}

/// One entry of a segment's sparse index.
#[derive(Debug, Clone, Copy)]
struct IndexEntry {
    offset: u64,
    position: u64,
    timestamp: i64,
}

/// A segment as the log knows it in memory.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    /// Offset of its first record (its name).
    first: u64,
    /// One past the offset of its last record (`first` when empty).
    next: u64,
    /// File length, header included.
    size: u64,
    /// Timestamp of its last record (`i64::MIN` when empty).
    last_timestamp: i64,
    /// Sparse index, in offset order; the first record always has an entry.
    index: Vec<IndexEntry>,
}

impl Segment {
    fn is_empty(&self) -> bool {
        self.next == self.first
    }

    /// Notes a record appended (or found at recovery) at `position`.
    fn note(&mut self, offset: u64, timestamp: i64, position: u64, len: u64) {
        let due = self
            .index
            .last()
            .is_none_or(|e| position - e.position >= INDEX_INTERVAL);
        if due {
            self.index.push(IndexEntry {
                offset,
                position,
                timestamp,
            });
        }
        self.next = offset + 1;
        self.size = position + len;
        self.last_timestamp = timestamp;
    }

    /// Where to start scanning for `offset`: the last index entry at or before it.
    fn seek_offset(&self, offset: u64) -> u64 {
        let i = self.index.partition_point(|e| e.offset <= offset);
        i.checked_sub(1)
            .map_or(FILE_HEADER_LEN as u64, |i| self.index[i].position)
    }

    /// Where to start scanning for the first record stamped `timestamp` or later.
    fn seek_timestamp(&self, timestamp: i64) -> u64 {
        let i = self.index.partition_point(|e| e.timestamp < timestamp);
        i.checked_sub(1)
            .map_or(FILE_HEADER_LEN as u64, |i| self.index[i].position)
    }
}

/// A message read back from the log.
#[derive(Debug)]
pub struct StreamEntry {
    /// Its offset.
    pub offset: u64,
    /// When it was appended (ms since the epoch).
    pub timestamp: i64,
    /// The message.
    pub message: Message,
}

/// A stream's log; see the module docs.
#[derive(Debug)]
pub struct StreamLog {
    dir: PathBuf,
    disk: Arc<dyn Disk>,
    sync: bool,
    limits: StreamLimits,
    /// Oldest first; the last one is written to. Never empty.
    segments: VecDeque<Segment>,
    /// The segment being written, open for appending.
    active: Arc<dyn DiskFile>,
    /// A write or sync failed: nothing more is appended (what was written may or may not
    /// be on disk, so no later confirm could be trusted).
    poisoned: bool,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl StreamLog {
    /// Opens the log in `dir`, creating the directory and a first segment if needed, and
    /// rebuilds the index by scanning every segment. A segment whose records stop being
    /// whole (a torn write, damage) is cut at the last whole record and synced; a
    /// segment whose header is wrong is refused (an error: the directory is not a
    /// stream's).
    pub fn open(place: &StreamPlace, limits: StreamLimits) -> std::io::Result<StreamLog> {
        let (dir, disk) = (place.dir.as_path(), &*place.disk);
        if !dir.exists() {
            std::fs::create_dir_all(dir)?;
            // The new directory's entry, and `streams/`'s in the data directory.
            for parent in dir.ancestors().skip(1).take(2) {
                disk.sync_dir(parent)?;
            }
        }
        let mut firsts = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if let Some(first) = entry.file_name().to_str().and_then(parse_segment_file_name) {
                firsts.push(first);
            }
        }
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for first in firsts {
            let path = dir.join(segment_file_name(first));
            segments.push_back(recover_segment(disk, &path, first)?);
        }
        // A segment that starts before the previous one ended overlaps it (a file copied
        // in by hand): the later records are the ones kept in neither; refuse.
        for pair in segments.iter().collect::<Vec<_>>().windows(2) {
            if pair[1].first < pair[0].next {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "stream segments {} and {} overlap",
                        pair[0].path.display(),
                        pair[1].path.display()
                    ),
                ));
            }
        }
        let active = match segments.back() {
            Some(last) => disk.open_append(&last.path)?,
            None => {
                let (segment, file) = create_segment(disk, dir, 0)?;
                segments.push_back(segment);
                file
            }
        };
        let mut log = StreamLog {
            dir: dir.to_path_buf(),
            disk: place.disk.clone(),
            sync: place.sync,
            limits,
            segments,
            active,
            poisoned: false,
        };
        log.apply_retention(now_ms())?;
        Ok(log)
    }

    /// Changes the limits; retention applies at the next segment change.
    pub fn set_limits(&mut self, limits: StreamLimits) {
        self.limits = limits;
    }

    /// The offset of the oldest message kept.
    pub fn first_offset(&self) -> u64 {
        self.segments.front().map_or(0, |s| s.first)
    }

    /// The offset the next message appended gets.
    pub fn next_offset(&self) -> u64 {
        self.segments.back().map_or(0, |s| s.next)
    }

    /// Messages kept.
    pub fn len(&self) -> u64 {
        self.next_offset() - self.first_offset()
    }

    /// Whether no message is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Octets of every segment file.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// Segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends `messages` stamped `timestamp`, writes them and syncs them (`fdatasync`)
    /// before it answers their offsets: once this returns, they survive a crash. A
    /// segment that would grow past the segment size is synced and closed first and a
    /// new one begun, and retention runs then (never on the segment being written).
    /// After a failure the log is poisoned and refuses every later append.
    pub fn append(&mut self, messages: &[&Message], timestamp: i64) -> std::io::Result<Vec<u64>> {
        if self.poisoned {
            return Err(std::io::Error::other(
                "an earlier write or sync of this stream failed",
            ));
        }
        let result = self.append_synced(messages, timestamp);
        if result.is_err() {
            self.poisoned = true;
        }
        result
    }

    fn append_synced(
        &mut self,
        messages: &[&Message],
        timestamp: i64,
    ) -> std::io::Result<Vec<u64>> {
        let mut offsets = Vec::with_capacity(messages.len());
        let mut buf = BytesMut::new();
        let mut record = BytesMut::new();
        for message in messages {
            let offset = self.next_offset();
            record.clear();
            let len = encode_record(&mut record, offset, timestamp, message) as u64;
            // A segment's `size` counts the records buffered for it too.
            let full = self
                .segments
                .back()
                .is_some_and(|s| !s.is_empty() && s.size + len > self.limits.segment_bytes);
            if full {
                self.active.write_all(&buf)?;
                buf.clear();
                self.sync_active()?;
                self.roll(offset)?;
            }
            let Some(segment) = self.segments.back_mut() else {
                return Err(std::io::Error::other("stream log without a segment"));
            };
            let position = segment.size;
            buf.extend_from_slice(&record);
            segment.note(offset, timestamp, position, len);
            offsets.push(offset);
        }
        self.active.write_all(&buf)?;
        self.sync_active()?;
        Ok(offsets)
    }

    fn sync_active(&self) -> std::io::Result<()> {
        if self.sync {
            self.active.sync_data()?;
        }
        Ok(())
    }

    /// Closes the active segment and begins one whose first offset is `first`, then
    /// applies retention.
    fn roll(&mut self, first: u64) -> std::io::Result<()> {
        let (segment, file) = create_segment(&*self.disk, &self.dir, first)?;
        self.segments.push_back(segment);
        self.active = file;
        self.apply_retention(now_ms())
    }

    /// Deletes the oldest segments the limits no longer allow, never the one being
    /// written: while the log is larger than `max_bytes`, and while the oldest segment's
    /// newest record is older than `max_age`. Whole segments only, as RabbitMQ does.
    pub fn apply_retention(&mut self, now: i64) -> std::io::Result<()> {
        let mut removed = false;
        while self.segments.len() > 1 {
            let Some(oldest) = self.segments.front() else {
                break;
            };
            let over_size = self.limits.max_bytes.is_some_and(|max| self.bytes() > max);
            let too_old = self.limits.max_age_ms.is_some_and(|age| {
                !oldest.is_empty() && oldest.last_timestamp < now.saturating_sub(age as i64)
            });
            if !(over_size || too_old || oldest.is_empty()) {
                break;
            }
            self.disk.remove_file(&oldest.path)?;
            self.segments.pop_front();
            removed = true;
        }
        if removed {
            self.disk.sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The first offset at or after `offset` the log still has (an offset retention
    /// removed reads from the oldest kept; one past the end waits for the next append).
    pub fn clamp(&self, offset: u64) -> u64 {
        offset.clamp(self.first_offset(), self.next_offset())
    }

    /// The offset of the first message appended at `timestamp` or later (the next
    /// offset when there is none).
    pub fn offset_at(&self, timestamp: i64) -> std::io::Result<u64> {
        let Some(segment) = self
            .segments
            .iter()
            .find(|s| !s.is_empty() && s.last_timestamp >= timestamp)
        else {
            return Ok(self.next_offset());
        };
        let mut found = segment.next;
        scan(
            &segment.path,
            segment.seek_timestamp(timestamp),
            segment.size,
            |head, _| {
                if head.timestamp >= timestamp {
                    found = head.offset;
                    false
                } else {
                    true
                }
            },
        )?;
        Ok(found)
    }

    /// Reads up to `max` messages from `offset` on (clamped as [`StreamLog::clamp`]
    /// does), stopping early once `max_bytes` octets of records were read (at least one
    /// record is read). Answers nothing at the end of the log. A record that cannot be
    /// read back is an error.
    pub fn read(
        &self,
        offset: u64,
        max: usize,
        max_bytes: usize,
    ) -> std::io::Result<Vec<StreamEntry>> {
        let mut out = Vec::new();
        let mut from = self.clamp(offset);
        let mut bytes = 0usize;
        for segment in &self.segments {
            if segment.next <= from {
                continue;
            }
            if out.len() >= max || bytes >= max_bytes {
                break;
            }
            let mut failed = None;
            scan(
                &segment.path,
                segment.seek_offset(from),
                segment.size,
                |head, record| {
                    if head.offset < from {
                        return true;
                    }
                    match decode_message(record) {
                        Some(message) => {
                            bytes += head.len;
                            out.push(StreamEntry {
                                offset: head.offset,
                                timestamp: head.timestamp,
                                message,
                            });
                        }
                        None => {
                            failed = Some(head.offset);
                            return false;
                        }
                    }
                    out.len() < max && bytes < max_bytes
                },
            )?;
            if let Some(offset) = failed {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "stream record {offset} in {} does not parse",
                        segment.path.display()
                    ),
                ));
            }
            from = segment.next;
        }
        Ok(out)
    }

    /// Deletes the log's directory with every segment (the stream was deleted; see
    /// [`remove_dir`]); the log takes no more appends.
    pub fn remove_files(&mut self) -> std::io::Result<()> {
        self.poisoned = true;
        remove_dir(&self.dir, &*self.disk)
    }
}

/// The extension of a deleted stream's directory while it is removed
/// (`streams/<queue id>.deleted`): no stream's directory has one.
const DELETED_EXTENSION: &str = "deleted";

/// Removes the directory `dir` of a deleted stream, through `disk`: renamed first to
/// `<queue id>.deleted` and the rename synced, so that a crash or a file that cannot be
/// removed leaves nothing a stream would open again; then every file, then the
/// directory. If the rename fails, the files are removed where they are. Whatever could
/// not be removed is left for [`sweep`] at the next start; the first error is answered.
pub fn remove_dir(dir: &Path, disk: &dyn Disk) -> std::io::Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let set_aside = dir.with_extension(DELETED_EXTENSION);
    let (target, mut first_error) = match disk.rename(dir, &set_aside) {
        Ok(()) => {
            let synced = dir.parent().map_or(Ok(()), |parent| disk.sync_dir(parent));
            (set_aside, synced.err())
        }
        Err(e) => (dir.to_path_buf(), Some(e)),
    };
    if let Err(e) = remove_tree(&target, disk) {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// Removes `dir` and everything in it, files through `disk`; goes on past a file it
/// cannot remove (as much as can go, goes) and answers the first error.
fn remove_tree(dir: &Path, disk: &dyn Disk) -> std::io::Result<()> {
    let mut first_error = None;
    for entry in std::fs::read_dir(dir)? {
        let removed = entry.and_then(|entry| {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                remove_tree(&path, disk)
            } else {
                disk.remove_file(&path)
            }
        });
        if let Err(e) = removed {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => std::fs::remove_dir(dir),
    }
}

/// At start-up: removes every entry of `streams` (the data directory's `streams/`) that
/// is not the directory of a stream `live` names by queue id (those are left alone, so
/// the sweep may run while they are opened). That is a directory set aside by
/// [`remove_dir`] and not removed (a file refused, a crash during the removal), or one
/// whose stream's record is gone (a removal that failed before the rename, a crash
/// between the record and the files). Answers what it
/// removed, and what it could not remove with why (left for the next start).
pub fn sweep(
    streams: &Path,
    disk: &dyn Disk,
    live: &dyn Fn(u64) -> bool,
) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
    let (mut removed, mut failed) = (Vec::new(), Vec::new());
    let entries = match std::fs::read_dir(streams) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (removed, failed),
        Err(e) => {
            failed.push((streams.to_path_buf(), e));
            return (removed, failed);
        }
    };
    for entry in entries {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                failed.push((streams.to_path_buf(), e));
                continue;
            }
        };
        let path = entry.path();
        let id = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u64>().ok());
        if id.is_some_and(live) {
            continue;
        }
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => remove_tree(&path, disk),
            Ok(_) => disk.remove_file(&path),
            Err(e) => Err(e),
        };
        match gone {
            Ok(()) => removed.push(path),
            Err(e) => failed.push((path, e)),
        }
    }
    if !removed.is_empty() {
        if let Err(e) = disk.sync_dir(streams) {
            failed.push((streams.to_path_buf(), e));
        }
    }
    (removed, failed)
}

/// Creates the segment whose first offset is `first`, with its header, synced with its
/// directory entry (even with syncs off: a segment is created rarely, and a stream whose
/// files are not where its offsets say cannot be read).
fn create_segment(
    disk: &dyn Disk,
    dir: &Path,
    first: u64,
) -> std::io::Result<(Segment, Arc<dyn DiskFile>)> {
    let path = dir.join(segment_file_name(first));
    let file = disk.create(&path)?;
    file.write_all(&segment_header())?;
    file.sync_data()?;
    disk.sync_dir(dir)?;
    Ok((
        Segment {
            path,
            first,
            next: first,
            size: FILE_HEADER_LEN as u64,
            last_timestamp: i64::MIN,
            index: Vec::new(),
        },
        file,
    ))
}

/// Scans a segment file at start-up: rebuilds its index and cuts a torn or damaged tail
/// (synced), as the message log does with its own (see `docs/storage.md`).
fn recover_segment(disk: &dyn Disk, path: &Path, first: u64) -> std::io::Result<Segment> {
    let mut header = [0u8; FILE_HEADER_LEN];
    let len = std::fs::metadata(path)?.len();
    if len < FILE_HEADER_LEN as u64 {
        // Created and never given its header (a crash in between): an empty segment.
        let file = disk.open_append(path)?;
        file.set_len(0)?;
        file.write_all(&segment_header())?;
        file.sync_data()?;
    } else {
        File::open(path)?.read_exact(&mut header)?;
        check_segment_header(&header).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}: {e}", path.display()),
            )
        })?;
    }
    let mut segment = Segment {
        path: path.to_path_buf(),
        first,
        next: first,
        size: FILE_HEADER_LEN as u64,
        last_timestamp: i64::MIN,
        index: Vec::new(),
    };
    let mut expected = first;
    let mut out_of_order = false;
    let end = scan(path, FILE_HEADER_LEN as u64, u64::MAX, |head, _| {
        if head.offset != expected {
            out_of_order = true;
            return false;
        }
        let position = segment.size;
        segment.note(head.offset, head.timestamp, position, head.len as u64);
        expected += 1;
        true
    })?;
    let good = if out_of_order { segment.size } else { end };
    let file_len = std::fs::metadata(path)?.len();
    if good < file_len {
        tracing::warn!(
            segment = %path.display(),
            kept = good,
            cut = file_len - good,
            "stream segment ends in a torn or damaged record; cutting it there"
        );
        let file = disk.open_append(path)?;
        file.set_len(good)?;
        file.sync_data()?;
    }
    segment.size = good;
    Ok(segment)
}

/// Reads the records of the segment file at `path` from `position` to `end` (or the
/// end of the file), calling `each` with every whole record until it answers `false`.
/// Answers the position after the last whole record it saw: where the file stops being
/// whole records, when the scan ran to the end.
fn scan(
    path: &Path,
    position: u64,
    end: u64,
    mut each: impl FnMut(format::RecordHead, Bytes) -> bool,
) -> std::io::Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::Start(position))?;
    let mut at = position;
    let mut buf = BytesMut::new();
    let mut eof = false;
    loop {
        match check_record(&buf) {
            Ok(head) => {
                let record = buf.split_to(head.len).freeze();
                at += head.len as u64;
                if !each(head, record) || at >= end {
                    return Ok(at);
                }
            }
            Err(RecordError::Damaged) => return Ok(at),
            Err(RecordError::Incomplete) if eof => return Ok(at),
            Err(RecordError::Incomplete) => {
                let want = match format::announced_len(&buf) {
                    Some(n) => n.saturating_sub(buf.len()).max(READ_CHUNK),
                    None => READ_CHUNK,
                };
                let old = buf.len();
                buf.resize(old + want, 0);
                let n = read_some(&mut file, &mut buf[old..])?;
                buf.truncate(old + n);
                eof = n == 0;
            }
        }
    }
}

/// Reads as much as one `read` gives (retrying on interruption).
fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}
