//! Purging the log: deleting segments nothing needs any more, and compacting an old
//! segment that a few long-lived records keep alive (copying them forward).
//!
//! Runs on the writer thread only, after each batch (`writer.rs`): it is the only thread
//! that changes the liveness index, so it can read the index per record without holding
//! the lock for a whole scan. Segments are deleted oldest first, so a settle record never
//! disappears before the enqueue record it cancels; the directory is synced after a
//! deletion, so a crash cannot bring a settled segment back without the later segments
//! that settled it.

use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::buffer::write_chunks;
#[cfg(test)]
use super::files::dir_events;
use super::files::sync_dir;
use super::format::{
    check_record, is_message, peek_message, segment_name, Record, FILE_HEADER_LEN,
    RECORD_HEADER_LEN,
};
use super::liveness::lock;
use super::syncer::Syncer;
use super::writer::Writer;

/// How many segments behind the current one the oldest must be before it is compacted.
pub const COMPACT_LAG: u64 = 2;

impl Writer {
    pub(super) fn delete_dead_segments(&mut self) {
        let mut deleted = false;
        loop {
            let seg = {
                let mut index = lock(&self.index);
                let Some((&seg, count)) = index.live.segments.first_key_value() else {
                    break;
                };
                if seg >= self.seg || count.live > 0 {
                    break;
                }
                index.files.remove(&seg);
                seg
            };
            let path = self.dir.join(segment_name(seg));
            match self.disk.remove_file(&path) {
                Ok(()) => {
                    #[cfg(test)]
                    dir_events::note(&self.dir, "delete");
                    tracing::debug!(segment = seg, "deleted settled segment");
                    deleted = true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(error = %e, path = %path.display(), "cannot delete settled segment");
                    break;
                }
            }
            lock(&self.index).live.segments.remove(&seg);
        }
        // The deletions are durable only once the directory is synced: a segment that
        // came back after a crash, without the later segments that settled its
        // messages, would bring them back. One sync covers all of them. A failure leaves
        // every record written so far intact, so it is logged rather than a reason to
        // refuse persistent messages.
        if deleted {
            if let Err(e) = sync_dir(&*self.disk, &self.dir) {
                tracing::error!(error = %e, dir = %self.dir.display(), "cannot sync the directory after deleting segments");
            }
        }
    }

    /// Copies the few live records of the oldest segment forward to the current one, so a
    /// long-lived message does not keep a mostly dead segment (and every later one) on
    /// disk. Runs when the oldest segment is at least [`COMPACT_LAG`] segments behind the
    /// current one and less than a quarter live. Answers whether it copied anything.
    pub(super) fn compact_oldest(&mut self, syncer: &Syncer) -> bool {
        let Some((seg, count)) = lock(&self.index)
            .live
            .segments
            .first_key_value()
            .map(|(s, c)| (*s, *c))
        else {
            return false;
        };
        // A segment just closed usually holds messages consumers are about to settle
        // (a prefetch window): wait until it is two segments old, so copying is for the
        // long-lived messages it is meant for, not for every lagging consumer.
        if seg + COMPACT_LAG > self.seg || count.live == 0 || count.live * 4 >= count.total.max(1) {
            return false;
        }
        if self.poisoned.load(Ordering::SeqCst) || self.unsynced.faulted() {
            return false;
        }
        let path = self.dir.join(segment_name(seg));
        let data = match std::fs::read(&path) {
            Ok(d) => Bytes::from(d),
            Err(e) => {
                tracing::warn!(error = %e, path = %path.display(), "cannot read segment to compact");
                return false;
            }
        };
        let mut out = Vec::new();
        let mut moved_msgs = Vec::new();
        let mut moved_enqs = Vec::new();
        let mut offset = FILE_HEADER_LEN;
        let mut extra_total = 0;
        // Only this thread changes the index: it is locked per look-up, not for the
        // whole scan, so readers of paged-out messages are not held up.
        while offset < data.len() {
            let Ok((kind, len)) = check_record(&data[offset..]) else {
                break;
            };
            let raw = &data[offset..offset + len];
            if is_message(kind) {
                if let Some(m) = peek_message(&raw[RECORD_HEADER_LEN..]) {
                    let live = lock(&self.index)
                        .live
                        .location(m.msg_id)
                        .is_some_and(|(at, ..)| at == seg);
                    if live {
                        moved_msgs.push((m.msg_id, out.len() as u64));
                        out.extend_from_slice(raw);
                    }
                }
                offset += len;
                continue;
            }
            match Record::decode_checked(&data.slice(offset..), kind, len) {
                Ok(Record::Enqueue { queue_id, seq, .. }) => {
                    let live = lock(&self.index)
                        .live
                        .enqueues
                        .get(&(queue_id, seq))
                        .is_some_and(|e| e.1 == seg);
                    if live {
                        out.extend_from_slice(raw);
                        moved_enqs.push((queue_id, seq));
                    }
                }
                Ok(Record::Deliveries { queue_id, counts }) => {
                    // Delivery counts of messages still queued go forward too.
                    let live: Vec<(u64, u32)> = {
                        let index = lock(&self.index);
                        counts
                            .into_iter()
                            .filter(|(seq, _)| index.live.enqueues.contains_key(&(queue_id, *seq)))
                            .collect()
                    };
                    if !live.is_empty() {
                        let mut buf = bytes::BytesMut::new();
                        Record::Deliveries {
                            queue_id,
                            counts: live,
                        }
                        .encode(&mut buf);
                        out.extend_from_slice(&buf);
                        extra_total += 1;
                    }
                }
                _ => {}
            }
            offset += len;
        }
        let base = self.size;
        let out = Bytes::from(out);
        // The copies are not kept for a rewrite after a fault: the index moves to them
        // only once they are synced, and until then the originals serve.
        if let Err(e) = write_chunks(&*self.file, std::slice::from_ref(&out)) {
            self.fail_current(&e, "write");
            return false;
        }
        self.size += out.len() as u64;
        // The copies are synced before the segment they come from can be deleted.
        let synced = syncer.sync_now(&self.file, self.seg, self.size, &mut Vec::new());
        self.take_failures(syncer);
        if !synced {
            return false;
        }
        // The sync covers the segment up to here: a fault from now on gives it up only
        // past this point, so the copies (kept nowhere else once the old segment is
        // deleted) are never trimmed away with the untrusted tail.
        self.unsynced.synced_to = self.size;
        let to = self.seg;
        let mut index = lock(&self.index);
        index.live.segments.entry(to).or_default().total += extra_total;
        for (id, at) in moved_msgs {
            index.live.moved_message(id, seg, to, base + at);
        }
        for key in moved_enqs {
            index.live.moved_enqueue(key, seg, to);
        }
        tracing::debug!(segment = seg, "compacted: live records copied forward");
        true
    }
}
