//! Recovery at start-up: read the queue definitions, replay every segment in order, and
//! rebuild each durable queue's messages in their original order.
//!
//! Damage policy (written down in `docs/storage.md`):
//! - a short or corrupt record at the tail of the newest segment is a torn write: the
//!   segment is truncated to its last valid record, with a warning;
//! - damage anywhere else is reported with file and offset; the damaged segment is moved
//!   to `damaged/`, never deleted; every record that still verifies (before the damage,
//!   and after it when the records can be resynchronised) is used, and the store is
//!   rewritten so nothing live depends on the moved file.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

use super::format::{
    check_header, check_record, is_message, parse_segment_name, peek_message, MessageMeta, Record,
    RecordError, FILE_HEADER_LEN, RECORD_HEADER_LEN, SEGMENT_MAGIC,
};
use super::idhash::{IdMap, IdSet};
use super::writer::{Liveness, MsgLoc, SegCount};

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
            | Record::Binding(_) => {}
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

/// Replays the segments in `seg_dir`, repairing a torn tail and moving damaged segments
/// to `damaged_dir`.
pub fn replay(seg_dir: &Path, damaged_dir: &Path) -> std::io::Result<Replay> {
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
                    tracing::warn!(path = %path.display(), "newest segment has a torn header; removing it");
                    std::fs::remove_file(path)?;
                    if let Some(dir) = path.parent() {
                        super::writer::sync_dir(dir)?;
                    }
                    st.totals.remove(n);
                    continue;
                }
                tracing::error!(path = %path.display(), offset = 0, %why, "damaged segment; moving it aside");
                damaged.push(move_aside(path, damaged_dir)?);
                st.totals.remove(n);
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
                        tracing::warn!(
                            path = %path.display(),
                            offset,
                            error = ?err,
                            "torn or corrupt record at the tail of the newest segment; truncating"
                        );
                        let f = std::fs::OpenOptions::new().write(true).open(path)?;
                        f.set_len(offset as u64)?;
                        f.sync_all()?;
                        break;
                    }
                    tracing::error!(
                        path = %path.display(),
                        offset,
                        error = ?err,
                        "corrupt record in the middle of a segment; moving the segment aside and keeping every record that verifies"
                    );
                    if !moved {
                        damaged.push(copy_aside(path, damaged_dir)?);
                        moved = true;
                    }
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
    })
}

/// Verifies and applies the record at the start of `buf`, found at `offset` of segment
/// `seg`; answers its length.
fn apply_record(st: &mut State, seg: u64, buf: &[u8], offset: usize) -> Result<usize, RecordError> {
    let (kind, len) = check_record(buf)?;
    if is_message(kind) {
        let meta = peek_message(&buf[RECORD_HEADER_LEN..len]).ok_or(RecordError::Malformed)?;
        st.message(seg, offset as u64, len as u32, meta);
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

/// Finds where valid records resume after a bad one at `offset`, trusting its length
/// field: `Some(next)` when every record from `next` to the end verifies.
fn resync_after(data: &[u8], offset: usize) -> Option<usize> {
    let rest = data.len().checked_sub(offset)?;
    if rest < super::format::RECORD_HEADER_LEN {
        return None;
    }
    let len = u32::from_be_bytes([
        data[offset],
        data[offset + 1],
        data[offset + 2],
        data[offset + 3],
    ]) as usize;
    let next = offset
        .checked_add(super::format::RECORD_HEADER_LEN)?
        .checked_add(len)?;
    if next >= data.len() {
        return None;
    }
    let mut at = next;
    while at < data.len() {
        let (kind, len) = check_record(&data[at..]).ok()?;
        let raw = &data[at..at + len];
        let valid = if is_message(kind) {
            peek_message(&raw[RECORD_HEADER_LEN..]).is_some()
        } else {
            Record::decode_slice(raw, kind).is_ok()
        };
        if !valid {
            return None;
        }
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
fn move_aside(path: &Path, damaged_dir: &Path) -> std::io::Result<PathBuf> {
    let dest = aside_path(path, damaged_dir)?;
    std::fs::rename(path, &dest)?;
    // Both directories changed: the segment must not come back into the log.
    if let Some(from) = path.parent() {
        super::writer::sync_dir(from)?;
    }
    super::writer::sync_dir(damaged_dir)?;
    Ok(dest)
}

/// Copies a damaged segment aside; the original is removed once the store is rewritten.
fn copy_aside(path: &Path, damaged_dir: &Path) -> std::io::Result<PathBuf> {
    let dest = aside_path(path, damaged_dir)?;
    std::fs::copy(path, &dest)?;
    Ok(dest)
}
