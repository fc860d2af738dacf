//! Recovery at start-up: read the queue definitions, replay every segment in order, and
//! rebuild each durable queue's messages in their original order.
//!
//! Damage policy ([`RecoveryMode`], written down in `docs/storage.md`):
//! - a record that does not verify, with no verifying record after it in the newest
//!   segment, is a torn write (the last write before a crash): the segment is truncated to
//!   its last valid record;
//! - a record that does not verify with verifying records after it is corruption: the
//!   replay looks for the next record that verifies (trusting the bad record's length
//!   first, then byte by byte, since the length itself may be what is damaged), keeps a
//!   copy of the segment in `damaged/`, skips the bad stretch and uses every record after
//!   it; the store is then rewritten so nothing live depends on the damaged file;
//! - every stretch not used is reported ([`Skipped`]: segment, offset, length), in the
//!   log at start-up and by the management API.
//!
//! Runs once, in `Store::open`, before the writer thread exists: nothing else touches
//! the segments meanwhile. [`rewrite_live`] is the last step after damage was skipped.

use std::collections::{hash_map, BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use bytes::BytesMut;

use super::disk::{Disk, DiskFile};
use super::files::sync_dir;
use super::format::{
    check_header, check_record, is_known_kind, is_message, is_transient, parse_segment_name,
    peek_message, segment_name, MessageMeta, Record, RecordError, FILE_HEADER_LEN,
    RECORD_HEADER_LEN, SEGMENT_MAGIC,
};
use super::idhash::{IdMap, IdSet};
use super::liveness::{Liveness, MsgLoc, SegCount, Track};
use super::reader::read_raw;
use super::RecoveredQueue;

/// A message recovered into a queue. Its body stays on disk until it is delivered.
#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    /// The queue's sequence number for it.
    pub seq: u64,
    /// The store's message id.
    pub msg_id: u64,
    /// Body length.
    pub body_len: u32,
    /// Its `priority` property (0 when absent).
    pub priority: u8,
    /// Its `expiration` property, in milliseconds.
    pub ttl_ms: Option<u64>,
    /// Whether to flag it redelivered.
    pub redelivered: bool,
    /// Deliveries so far, as last logged when it was returned to the queue.
    pub deliveries: u32,
}

/// What recovery does with a damaged log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecoveryMode {
    /// Truncate a torn tail; skip a corrupt record anywhere else, keeping a copy of its
    /// segment and reporting it. Loses the least: the default.
    #[default]
    SkipCorrupt,
    /// Truncate a torn tail (what `kill -9` or a power loss leaves); refuse to start on
    /// damage anywhere else.
    TolerateTornTail,
    /// Refuse to start on any damage, a torn tail included, so an operator can look first.
    Absolute,
}

impl RecoveryMode {
    /// The flag's spelling.
    pub fn name(self) -> &'static str {
        match self {
            RecoveryMode::SkipCorrupt => "skip-corrupt",
            RecoveryMode::TolerateTornTail => "tolerate-torn-tail",
            RecoveryMode::Absolute => "absolute",
        }
    }
}

impl std::str::FromStr for RecoveryMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "skip-corrupt" => Ok(RecoveryMode::SkipCorrupt),
            "tolerate-torn-tail" => Ok(RecoveryMode::TolerateTornTail),
            "absolute" => Ok(RecoveryMode::Absolute),
            other => Err(format!(
                "`{other}`: expected skip-corrupt, tolerate-torn-tail or absolute"
            )),
        }
    }
}

/// What kind of damage a skipped stretch was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Damage {
    /// The end of the newest segment, cut off by a crash mid-write: truncated.
    TornTail,
    /// Records that do not verify, with valid records after them: skipped.
    Corrupt,
    /// A segment whose file header does not verify: moved aside whole.
    BadHeader,
}

impl Damage {
    /// Its name in the management API.
    pub fn name(self) -> &'static str {
        match self {
            Damage::TornTail => "torn_tail",
            Damage::Corrupt => "corrupt",
            Damage::BadHeader => "bad_header",
        }
    }
}

/// A stretch of a segment that recovery did not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Segment number.
    pub segment: u64,
    /// Byte offset of the first octet not used.
    pub offset: u64,
    /// Octets not used.
    pub len: u64,
    /// Why.
    pub damage: Damage,
}

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replay {
    /// Per queue id, its live messages in queue order.
    pub queues: HashMap<u64, Vec<RecoveredMessage>>,
    /// Liveness for the writer.
    pub live: Liveness,
    /// Highest message id seen.
    pub max_msg_id: u64,
    /// Highest segment number seen.
    pub max_segment: u64,
    /// Whether the log ended with a clean shutdown.
    pub clean: bool,
    /// Segments moved aside because of damage.
    pub damaged: Vec<PathBuf>,
    /// Every stretch of the log not used, in log order.
    pub skipped: Vec<Skipped>,
    /// Messages that came from damaged segments or depend on one (to rewrite).
    pub needs_rewrite: bool,
}

/// Lists the segment files of `dir`, oldest first.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        if let Some(n) = name.to_str().and_then(parse_segment_name) {
            segs.push((n, entry.path()));
        }
    }
    segs.sort();
    Ok(segs)
}

/// A message record found by the replay (kept small: there is one per record).
#[derive(Clone, Copy)]
struct Found {
    msg_id: u64,
    seg: u64,
    offset: u64,
    len: u32,
    body_len: u32,
    /// `u64::MAX` when the message has no valid `expiration`.
    ttl_ms: u64,
    priority: u8,
}

struct State {
    /// Every message record, in log order; sorted by id (newest copy last) at the end.
    bodies: Vec<Found>,
    /// queue id → seq → (msg id, segment of the enqueue record).
    order: IdMap<u64, BTreeMap<u64, (u64, u64)>>,
    marks: IdMap<u64, IdSet<u64>>,
    deliveries: IdMap<(u64, u64), u32>,
    totals: BTreeMap<u64, u64>,
    clean: bool,
    max_msg_id: u64,
}

impl State {
    /// Notes a message record: only where it is and what the queue needs to know of it;
    /// the body is read again when the message is delivered.
    fn message(&mut self, seg: u64, offset: u64, len: u32, meta: MessageMeta) {
        self.clean = false;
        *self.totals.entry(seg).or_insert(0) += 1;
        self.max_msg_id = self.max_msg_id.max(meta.msg_id);
        self.bodies.push(Found {
            msg_id: meta.msg_id,
            seg,
            offset,
            len,
            body_len: meta.body_len,
            ttl_ms: meta.ttl_ms.unwrap_or(u64::MAX),
            priority: meta.priority,
        });
    }

    /// Notes a paged-out transient message: a record of its segment, never live again (a
    /// restart drops transient messages, as RabbitMQ's does), so a segment of nothing
    /// else is deleted once the broker runs.
    fn transient(&mut self, seg: u64) {
        self.clean = false;
        *self.totals.entry(seg).or_insert(0) += 1;
    }

    /// Applies one record other than a message. Records may come out of order:
    /// compaction copies a live message record forward, past enqueue records that refer
    /// to it, so messages are matched with their enqueues only at the end.
    fn apply(&mut self, seg: u64, record: Record) {
        self.clean = matches!(record, Record::CleanShutdown);
        *self.totals.entry(seg).or_insert(0) += 1;
        match record {
            Record::Message { .. } => {}
            Record::Enqueue {
                queue_id,
                seq,
                msg_id,
            } => {
                self.order
                    .entry(queue_id)
                    .or_default()
                    .insert(seq, (msg_id, seg));
            }
            Record::Settle { queue_id, seqs } => {
                if let Some(order) = self.order.get_mut(&queue_id) {
                    for s in &seqs {
                        order.remove(s);
                    }
                }
            }
            Record::Redelivered { queue_id, seqs } => {
                self.marks.entry(queue_id).or_default().extend(seqs);
            }
            Record::Deliveries { queue_id, counts } => {
                // Counts only grow; the largest wins even if compaction copied an older
                // record past a newer one.
                for (seq, n) in counts {
                    let c = self.deliveries.entry((queue_id, seq)).or_insert(0);
                    *c = (*c).max(n);
                }
            }
            Record::CleanShutdown
            | Record::Opened
            | Record::Queue(_)
            | Record::NextQueueId(_)
            | Record::Exchange(_)
            | Record::Binding(_)
            | Record::RemoveQueue(_)
            | Record::RemoveExchange(..)
            | Record::RemoveBinding(_)
            | Record::Param(_)
            | Record::RemoveParam(..) => {}
        }
    }

    /// Once every record is in: the liveness the writer goes on with, and each queue's
    /// live messages in queue order.
    fn finish(&mut self) -> (Liveness, HashMap<u64, Vec<RecoveredMessage>>) {
        let mut live = Liveness::default();
        for (seg, total) in &self.totals {
            live.segments.insert(
                *seg,
                SegCount {
                    live: 0,
                    total: *total,
                },
            );
        }
        let enqueues: usize = self.order.values().map(BTreeMap::len).sum();
        live.enqueues.reserve(enqueues);
        live.messages.reserve(enqueues.min(self.bodies.len()));
        // Ids grow in log order, so this is nearly sorted already; a compacted copy of a
        // record comes after the original, and the stable sort keeps it last.
        self.bodies.sort_by_key(|f| f.msg_id);
        let bodies = &self.bodies;
        let find = |msg_id: u64| -> Option<&Found> {
            let end = bodies.partition_point(|f| f.msg_id <= msg_id);
            end.checked_sub(1)
                .map(|i| &bodies[i])
                .filter(|f| f.msg_id == msg_id)
        };
        let mut queues = HashMap::new();
        for (queue_id, order) in std::mem::take(&mut self.order) {
            let marks = self.marks.get(&queue_id);
            let mut msgs = Vec::with_capacity(order.len());
            for (seq, (msg_id, eseg)) in order {
                let Some(found) = find(msg_id) else {
                    tracing::warn!(
                        queue_id,
                        seq,
                        msg_id,
                        "enqueue record for an unknown message; skipped"
                    );
                    continue;
                };
                live.enqueues.insert((queue_id, seq), (msg_id, eseg));
                live.segments.entry(eseg).or_default().live += 1;
                live.messages
                    .entry(msg_id)
                    .or_insert(MsgLoc {
                        seg: found.seg,
                        offset: found.offset,
                        len: found.len,
                        live: 0,
                    })
                    .live += 1;
                let redelivered = if self.clean {
                    marks.is_some_and(|m| m.contains(&seq))
                } else {
                    true
                };
                msgs.push(RecoveredMessage {
                    seq,
                    msg_id,
                    body_len: found.body_len,
                    priority: found.priority,
                    ttl_ms: (found.ttl_ms != u64::MAX).then_some(found.ttl_ms),
                    redelivered,
                    deliveries: self.deliveries.get(&(queue_id, seq)).copied().unwrap_or(0),
                });
            }
            queues.insert(queue_id, msgs);
        }
        for m in live.messages.values() {
            live.segments.entry(m.seg).or_default().live += 1;
        }
        (live, queues)
    }
}

fn refuse(mode: RecoveryMode, path: &Path, offset: usize, what: &str) -> std::io::Error {
    std::io::Error::other(format!(
        "{}: {what} at offset {offset}; refusing to start (recovery mode {}: start with \
         --recovery-mode skip-corrupt to skip it, a copy is kept in damaged/)",
        path.display(),
        mode.name()
    ))
}

/// Replays the segments in `seg_dir`, repairing a torn tail and moving damaged segments
/// to `damaged_dir`, as `mode` allows; every change goes through `disk`.
pub fn replay(
    disk: &dyn Disk,
    seg_dir: &Path,
    damaged_dir: &Path,
    mode: RecoveryMode,
) -> std::io::Result<Replay> {
    let segs = list_segments(seg_dir)?;
    let mut st = State {
        bodies: Vec::new(),
        order: IdMap::default(),
        marks: IdMap::default(),
        deliveries: IdMap::default(),
        totals: BTreeMap::new(),
        clean: false,
        max_msg_id: 0,
    };
    let mut damaged = Vec::new();
    let mut skipped = Vec::new();
    let last = segs.last().map(|(n, _)| *n);
    let mut chunk = Vec::new();
    for (n, path) in &segs {
        let is_last = Some(*n) == last;
        st.totals.entry(*n).or_insert(0);
        // The common case: every record verifies, read in chunks of a few MiB.
        let Some(start) = scan_chunked(path, *n, &mut st, &mut chunk)? else {
            continue;
        };
        // Damage or a torn tail: the careful path, over the whole segment, from the
        // first record that did not verify.
        let data = std::fs::read(path)?;
        if start == 0 {
            if let Err(why) = check_header(&data, SEGMENT_MAGIC) {
                if is_last && data.len() < FILE_HEADER_LEN {
                    if mode == RecoveryMode::Absolute {
                        return Err(refuse(mode, path, 0, "torn segment header"));
                    }
                    tracing::warn!(path = %path.display(), "newest segment has a torn header; removing it");
                    disk.remove_file(path)?;
                    if let Some(dir) = path.parent() {
                        sync_dir(disk, dir)?;
                    }
                    st.totals.remove(n);
                    skipped.push(Skipped {
                        segment: *n,
                        offset: 0,
                        len: data.len() as u64,
                        damage: Damage::TornTail,
                    });
                    continue;
                }
                if mode != RecoveryMode::SkipCorrupt {
                    return Err(refuse(mode, path, 0, &format!("damaged header ({why})")));
                }
                tracing::error!(path = %path.display(), offset = 0, %why, "damaged segment; moving it aside");
                damaged.push(move_aside(disk, path, damaged_dir)?);
                st.totals.remove(n);
                skipped.push(Skipped {
                    segment: *n,
                    offset: 0,
                    len: data.len() as u64,
                    damage: Damage::BadHeader,
                });
                continue;
            }
        }
        let mut offset = start.max(FILE_HEADER_LEN);
        let mut moved = false;
        while offset < data.len() {
            match apply_record(&mut st, *n, &data[offset..], offset) {
                Ok(len) => offset += len,
                Err(err) => {
                    let resync = resync_after(&data, offset);
                    if is_last && resync.is_none() {
                        if mode == RecoveryMode::Absolute {
                            return Err(refuse(mode, path, offset, "torn tail"));
                        }
                        tracing::warn!(
                            path = %path.display(),
                            offset,
                            octets = data.len() - offset,
                            error = ?err,
                            "torn record at the tail of the newest segment; truncating"
                        );
                        let f = disk.open_append(path)?;
                        f.set_len(offset as u64)?;
                        f.sync_all()?;
                        skipped.push(Skipped {
                            segment: *n,
                            offset: offset as u64,
                            len: (data.len() - offset) as u64,
                            damage: Damage::TornTail,
                        });
                        break;
                    }
                    if mode != RecoveryMode::SkipCorrupt {
                        return Err(refuse(mode, path, offset, "corrupt record"));
                    }
                    let end = resync.unwrap_or(data.len());
                    tracing::error!(
                        path = %path.display(),
                        offset,
                        octets = end - offset,
                        error = ?err,
                        "corrupt record; skipping it, keeping a copy of the segment aside and every record that verifies"
                    );
                    if !moved {
                        damaged.push(copy_aside(path, damaged_dir)?);
                        moved = true;
                    }
                    skipped.push(Skipped {
                        segment: *n,
                        offset: offset as u64,
                        len: (end - offset) as u64,
                        damage: Damage::Corrupt,
                    });
                    match resync {
                        Some(next) => offset = next,
                        None => break,
                    }
                }
            }
        }
    }
    let (live, queues) = st.finish();
    let clean = st.clean;
    Ok(Replay {
        queues,
        live,
        max_msg_id: st.max_msg_id,
        max_segment: segs.last().map_or(0, |(n, _)| *n),
        clean,
        needs_rewrite: !damaged.is_empty(),
        damaged,
        skipped,
    })
}

/// After damage was skipped ([`Replay::needs_rewrite`]): writes everything live again,
/// in queue order, to `file`, the fresh segment `seg` (`size` octets long so far), so no
/// live record depends on a segment that was found damaged; then deletes the older
/// segments and syncs their directory. Answers the liveness of the rewritten log and the
/// segment's new size.
pub fn rewrite_live(
    disk: &dyn Disk,
    seg_dir: &Path,
    seg: u64,
    file: &dyn DiskFile,
    size: u64,
    queues: &[RecoveredQueue],
    live: &Liveness,
) -> std::io::Result<(Liveness, u64)> {
    let mut buf = BytesMut::new();
    let mut fresh = Liveness::default();
    let mut files: HashMap<u64, File> = HashMap::new();
    // A message routed to several queues is written once, with the first queue's
    // enqueue; the others get an enqueue record only.
    let mut copied = HashSet::new();
    for q in queues {
        for m in &q.messages {
            let offset = size + buf.len() as u64;
            let Some(loc) = live.messages.get(&m.msg_id).copied() else {
                continue;
            };
            let track = if copied.insert(m.msg_id) {
                let f = match files.entry(loc.seg) {
                    hash_map::Entry::Occupied(e) => e.into_mut(),
                    hash_map::Entry::Vacant(e) => {
                        e.insert(File::open(seg_dir.join(segment_name(loc.seg)))?)
                    }
                };
                buf.extend_from_slice(&read_raw(f, loc.offset, loc.len)?);
                Track::MessageEnqueue {
                    msg_id: m.msg_id,
                    len: loc.len,
                    queue_id: q.def.id,
                    seq: m.seq,
                }
            } else {
                Track::Enqueue {
                    queue_id: q.def.id,
                    seq: m.seq,
                    msg_id: m.msg_id,
                }
            };
            Record::Enqueue {
                queue_id: q.def.id,
                seq: m.seq,
                msg_id: m.msg_id,
            }
            .encode(&mut buf);
            fresh.apply(seg, offset, &track);
        }
    }
    file.write_all(&buf)?;
    file.sync_data()?;
    for (n, path) in list_segments(seg_dir)? {
        if n < seg {
            disk.remove_file(&path)?;
        }
    }
    // The old segments' deletion durable before anything relies on it.
    sync_dir(disk, seg_dir)?;
    Ok((fresh, size + buf.len() as u64))
}

/// Verifies and applies the record at the start of `buf`, found at `offset` of segment
/// `seg`; answers its length.
fn apply_record(st: &mut State, seg: u64, buf: &[u8], offset: usize) -> Result<usize, RecordError> {
    let (kind, len) = check_record(buf)?;
    if is_message(kind) {
        let meta = peek_message(&buf[RECORD_HEADER_LEN..len]).ok_or(RecordError::Malformed)?;
        if is_transient(kind) {
            st.transient(seg);
        } else {
            st.message(seg, offset as u64, len as u32, meta);
        }
    } else {
        st.apply(seg, Record::decode_slice(&buf[..len], kind)?);
    }
    Ok(len)
}

/// Replays segment `seg` reading it in chunks, so the replay needs a few MiB of buffer
/// rather than a whole segment. Answers `None` when every record verified, or the offset
/// of the first that did not (0: the file header); everything before it is applied.
fn scan_chunked(
    path: &Path,
    seg: u64,
    st: &mut State,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<usize>> {
    const CHUNK: usize = 4 << 20;
    let mut file = std::fs::File::open(path)?;
    let mut header = [0u8; FILE_HEADER_LEN];
    if file.read_exact(&mut header).is_err() || check_header(&header, SEGMENT_MAGIC).is_err() {
        return Ok(Some(0));
    }
    // File offset of buf[0].
    let mut base = FILE_HEADER_LEN;
    let mut eof = false;
    buf.clear();
    loop {
        let mut at = 0;
        while at < buf.len() {
            match apply_record(st, seg, &buf[at..], base + at) {
                Ok(len) => at += len,
                Err(RecordError::Short) if !eof => break,
                Err(_) => return Ok(Some(base + at)),
            }
        }
        buf.drain(..at);
        base += at;
        if eof {
            return Ok((!buf.is_empty()).then_some(base));
        }
        // Read at least a chunk, and all of a record longer than that.
        let pending = if buf.len() >= RECORD_HEADER_LEN {
            RECORD_HEADER_LEN + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
        } else {
            0
        };
        let want = CHUNK.max(pending.min(super::format::MAX_RECORD_LEN + RECORD_HEADER_LEN));
        let need = want.saturating_sub(buf.len()).max(1);
        let got = (&mut file).take(need as u64).read_to_end(buf)?;
        eof = got < need;
    }
}

/// Finds where valid records resume after a bad one at `offset`: first where its length
/// field points, when every record from there to the end verifies; else the first
/// offset after it where a record verifies (the length itself may be what is damaged).
/// `None`: nothing verifies after it, the bad record is the last write.
fn resync_after(data: &[u8], offset: usize) -> Option<usize> {
    if let Some(next) = trusted_length_resync(data, offset) {
        return Some(next);
    }
    // Byte by byte. A record verifies only with its CRC-32C right over type and payload,
    // so a false match in damaged or arbitrary bytes is a 1 in 2^32 chance per place;
    // a type check first keeps the CRC work to plausible places.
    let mut at = offset.checked_add(1)?;
    while at + RECORD_HEADER_LEN <= data.len() {
        if data.get(at + 4).copied().is_some_and(is_known_kind) && verifies(&data[at..]) {
            return Some(at);
        }
        at += 1;
    }
    None
}

/// Whether the record at the start of `buf` verifies and decodes.
fn verifies(buf: &[u8]) -> bool {
    let Ok((kind, len)) = check_record(buf) else {
        return false;
    };
    if is_message(kind) {
        peek_message(&buf[RECORD_HEADER_LEN..len]).is_some()
    } else {
        Record::decode_slice(&buf[..len], kind).is_ok()
    }
}

/// Where the bad record at `offset` ends by its length field, when every record from
/// there to the end of `data` verifies.
fn trusted_length_resync(data: &[u8], offset: usize) -> Option<usize> {
    let rest = data.len().checked_sub(offset)?;
    if rest < RECORD_HEADER_LEN {
        return None;
    }
    let len = u32::from_be_bytes([
        data[offset],
        data[offset + 1],
        data[offset + 2],
        data[offset + 3],
    ]) as usize;
    let next = offset.checked_add(RECORD_HEADER_LEN)?.checked_add(len)?;
    if next >= data.len() {
        return None;
    }
    let mut at = next;
    while at < data.len() {
        if !verifies(&data[at..]) {
            return None;
        }
        let (_, len) = check_record(&data[at..]).ok()?;
        at += len;
    }
    Some(next)
}

fn aside_path(path: &Path, damaged_dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(damaged_dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Ok(damaged_dir.join(format!("{name}.{stamp}")))
}

/// Moves a damaged segment out of the log.
fn move_aside(disk: &dyn Disk, path: &Path, damaged_dir: &Path) -> std::io::Result<PathBuf> {
    let dest = aside_path(path, damaged_dir)?;
    disk.rename(path, &dest)?;
    // Both directories changed: the segment must not come back into the log.
    if let Some(from) = path.parent() {
        sync_dir(disk, from)?;
    }
    sync_dir(disk, damaged_dir)?;
    Ok(dest)
}

/// Copies a damaged segment aside; the original is removed once the store is rewritten.
fn copy_aside(path: &Path, damaged_dir: &Path) -> std::io::Result<PathBuf> {
    let dest = aside_path(path, damaged_dir)?;
    std::fs::copy(path, &dest)?;
    Ok(dest)
}
