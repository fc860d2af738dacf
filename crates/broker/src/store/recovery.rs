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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::format::{
    check_header, parse_segment_name, Record, RecordError, FILE_HEADER_LEN, SEGMENT_MAGIC,
};
use super::writer::{Liveness, SegCount};
use crate::message::Message;

/// A message recovered into a queue.
#[derive(Debug, Clone)]
pub struct RecoveredMessage {
    /// The queue's sequence number for it.
    pub seq: u64,
    /// The store's message id.
    pub msg_id: u64,
    /// The message.
    pub message: Arc<Message>,
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

struct State {
    /// msg id → (segment of its newest record, the message).
    bodies: HashMap<u64, (u64, Arc<Message>)>,
    /// queue id → seq → (msg id, segment of the enqueue record).
    order: HashMap<u64, BTreeMap<u64, (u64, u64)>>,
    marks: HashMap<u64, HashSet<u64>>,
    deliveries: HashMap<(u64, u64), u32>,
    totals: BTreeMap<u64, u64>,
    clean: bool,
    max_msg_id: u64,
    last_exchange: Option<Arc<str>>,
    last_routing_key: Option<Arc<str>>,
    last_properties: Option<Arc<minimq_protocol::BasicProperties>>,
}

fn intern(last: &mut Option<Arc<str>>, s: String) -> Arc<str> {
    match last {
        Some(l) if **l == *s => l.clone(),
        _ => {
            let a: Arc<str> = s.into();
            *last = Some(a.clone());
            a
        }
    }
}

impl State {
    /// Applies one record. Records may come out of order: compaction copies a live
    /// message record forward, past enqueue records that refer to it, so messages are
    /// matched with their enqueues only at the end.
    fn apply(&mut self, seg: u64, record: Record) {
        self.clean = matches!(record, Record::CleanShutdown);
        *self.totals.entry(seg).or_insert(0) += 1;
        match record {
            Record::Message {
                msg_id,
                exchange,
                routing_key,
                properties,
                body,
            } => {
                self.max_msg_id = self.max_msg_id.max(msg_id);
                // Most messages share an exchange and routing key: share the strings too.
                let exchange = intern(&mut self.last_exchange, exchange);
                let routing_key = intern(&mut self.last_routing_key, routing_key);
                let properties = match &self.last_properties {
                    Some(p) if **p == properties => p.clone(),
                    _ => {
                        let p = Arc::new(properties);
                        self.last_properties = Some(p.clone());
                        p
                    }
                };
                let m = Message::new(exchange, routing_key, properties, body);
                self.bodies.insert(msg_id, (seg, Arc::new(m)));
            }
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

    /// Live state once every record is in: what the writer goes on with.
    fn liveness(&mut self) -> Liveness {
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
        for (queue_id, order) in self.order.iter_mut() {
            order.retain(|seq, (msg_id, eseg)| {
                let Some((mseg, _)) = self.bodies.get(msg_id) else {
                    tracing::warn!(
                        queue_id,
                        seq,
                        msg_id,
                        "enqueue record for an unknown message; skipped"
                    );
                    return false;
                };
                live.enqueues.insert((*queue_id, *seq), (*msg_id, *eseg));
                live.segments.entry(*eseg).or_default().live += 1;
                live.messages.entry(*msg_id).or_insert((*mseg, 0)).1 += 1;
                true
            });
        }
        for (mseg, _) in live.messages.values() {
            live.segments.entry(*mseg).or_default().live += 1;
        }
        live
    }
}

/// Replays the segments in `seg_dir`, repairing a torn tail and moving damaged segments
/// to `damaged_dir`.
pub fn replay(seg_dir: &Path, damaged_dir: &Path) -> std::io::Result<Replay> {
    let segs = list_segments(seg_dir)?;
    let mut st = State {
        bodies: HashMap::new(),
        order: HashMap::new(),
        marks: HashMap::new(),
        deliveries: HashMap::new(),
        totals: BTreeMap::new(),
        clean: false,
        max_msg_id: 0,
        last_exchange: None,
        last_routing_key: None,
        last_properties: None,
    };
    let mut damaged = Vec::new();
    let last = segs.last().map(|(n, _)| *n);
    for (n, path) in &segs {
        let is_last = Some(*n) == last;
        st.totals.entry(*n).or_insert(0);
        let data = Bytes::from(std::fs::read(path)?);
        if let Err(why) = check_header(&data, SEGMENT_MAGIC) {
            if is_last && data.len() < FILE_HEADER_LEN {
                tracing::warn!(path = %path.display(), "newest segment has a torn header; removing it");
                std::fs::remove_file(path)?;
                st.totals.remove(n);
                continue;
            }
            tracing::error!(path = %path.display(), offset = 0, %why, "damaged segment; moving it aside");
            damaged.push(move_aside(path, damaged_dir)?);
            st.totals.remove(n);
            continue;
        }
        let mut offset = FILE_HEADER_LEN;
        let mut moved = false;
        while offset < data.len() {
            match Record::decode(&data.slice(offset..)) {
                Ok((record, len)) => {
                    st.apply(*n, record);
                    offset += len;
                }
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
    let live = st.liveness();
    let clean = st.clean;
    let mut queues = HashMap::new();
    for (queue_id, order) in std::mem::take(&mut st.order) {
        let marks = st.marks.get(&queue_id);
        let msgs: Vec<RecoveredMessage> = order
            .into_iter()
            .filter_map(|(seq, (msg_id, _))| {
                let message = st.bodies.get(&msg_id)?.1.clone();
                let redelivered = if clean {
                    marks.is_some_and(|m| m.contains(&seq))
                } else {
                    true
                };
                let deliveries = st.deliveries.get(&(queue_id, seq)).copied().unwrap_or(0);
                Some(RecoveredMessage {
                    seq,
                    msg_id,
                    message,
                    redelivered,
                    deliveries,
                })
            })
            .collect();
        queues.insert(queue_id, msgs);
    }
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

/// Finds where valid records resume after a bad one at `offset`, trusting its length
/// field: `Some(next)` when every record from `next` to the end verifies.
fn resync_after(data: &Bytes, offset: usize) -> Option<usize> {
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
        match Record::decode(&data.slice(at..)) {
            Ok((_, l)) => at += l,
            Err(RecordError::Short) | Err(_) => return None,
        }
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
    Ok(dest)
}

/// Copies a damaged segment aside; the original is removed once the store is rewritten.
fn copy_aside(path: &Path, damaged_dir: &Path) -> std::io::Result<PathBuf> {
    let dest = aside_path(path, damaged_dir)?;
    std::fs::copy(path, &dest)?;
    Ok(dest)
}
