//! Reading paged-out messages back from the log.
//!
//! A durable queue keeps only a bounded amount of its persistent messages in memory;
//! the rest are known by their message id alone and read back here when they are about
//! to be delivered. The writer's [`Index`] says where each live message record is (it
//! lists a record only once it is written). Records close together in a segment are read
//! with one `pread`, so draining a long queue reads the log nearly sequentially.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use minimq_protocol::BasicProperties;

use super::format::{segment_name, Record};
use super::liveness::{lock, Index};
use crate::message::{share_last, Message};

/// Records closer than this are read together.
const MAX_GAP: u64 = 16 * 1024;
/// A combined read stops growing at this size.
const MAX_READ: u64 = 1024 * 1024;

/// Where one wanted record is.
struct Want {
    /// Position in the caller's list.
    slot: usize,
    msg_id: u64,
    seg: u64,
    offset: u64,
    len: u32,
    file: Arc<File>,
}

/// Looks up the records of `ids`; answers those found and the positions of those not
/// (not written yet, or gone).
fn locate(index: &Mutex<Index>, seg_dir: &Path, ids: &[(usize, u64)]) -> (Vec<Want>, Vec<usize>) {
    let mut found = Vec::with_capacity(ids.len());
    let mut missing = Vec::new();
    let mut index = lock(index);
    for &(slot, msg_id) in ids {
        let Some((seg, offset, len)) = index.live.location(msg_id) else {
            missing.push(slot);
            continue;
        };
        let file = match index.files.get(&seg) {
            Some(f) => f.clone(),
            None => match File::open(seg_dir.join(segment_name(seg))) {
                Ok(f) => {
                    let f = Arc::new(f);
                    index.files.insert(seg, f.clone());
                    f
                }
                Err(e) => {
                    tracing::error!(error = %e, segment = seg, msg_id, "cannot open segment to read a message");
                    missing.push(slot);
                    continue;
                }
            },
        };
        found.push(Want {
            slot,
            msg_id,
            seg,
            offset,
            len,
            file,
        });
    }
    (found, missing)
}

/// Shares equal strings and properties between the messages of one read, as a publisher
/// sending the same properties each time shares them when publishing.
#[derive(Default)]
struct Interner {
    strings: HashMap<String, Arc<str>>,
    properties: Option<Arc<BasicProperties>>,
}

impl Interner {
    fn string(&mut self, s: String) -> Arc<str> {
        if let Some(a) = self.strings.get(&s) {
            return a.clone();
        }
        let a: Arc<str> = s.as_str().into();
        self.strings.insert(s, a.clone());
        a
    }
}

/// Reads the message records of `wants` (sorted by place in the log), combining reads of
/// neighbouring records; fills `out` at each want's slot.
fn read_found(mut wants: Vec<Want>, out: &mut [Option<Message>]) {
    wants.sort_by_key(|w| (w.seg, w.offset));
    let mut interner = Interner::default();
    let mut i = 0;
    while i < wants.len() {
        let start = wants[i].offset;
        let mut end = start + u64::from(wants[i].len);
        let mut j = i + 1;
        while j < wants.len()
            && wants[j].seg == wants[i].seg
            && wants[j].offset >= end
            && wants[j].offset - end <= MAX_GAP
            && wants[j].offset + u64::from(wants[j].len) - start <= MAX_READ
        {
            end = wants[j].offset + u64::from(wants[j].len);
            j += 1;
        }
        let mut buf = vec![0u8; (end - start) as usize];
        let read = wants[i].file.read_exact_at(&mut buf, start);
        let single = j == i + 1;
        let buf = Bytes::from(buf);
        for w in &wants[i..j] {
            let result = read.as_ref().map_err(|e| e.to_string()).and_then(|()| {
                let at = (w.offset - start) as usize;
                match Record::decode(&buf.slice(at..at + w.len as usize)) {
                    Ok((
                        Record::Message {
                            msg_id,
                            exchange,
                            routing_key,
                            properties,
                            body,
                        },
                        _,
                    )) if msg_id == w.msg_id => {
                        // A body read together with its neighbours is copied out, so
                        // one held message does not keep the whole read in memory.
                        let body = if single {
                            body
                        } else {
                            Bytes::copy_from_slice(&body)
                        };
                        let m = Message::new(
                            interner.string(exchange),
                            interner.string(routing_key),
                            share_last(&mut interner.properties, properties),
                            body,
                        );
                        *m.store_id.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg_id);
                        Ok(m)
                    }
                    Ok(_) => Err("the record there is not this message".to_string()),
                    Err(e) => Err(format!("{e:?}")),
                }
            });
            match result {
                Ok(m) => out[w.slot] = Some(m),
                Err(why) => tracing::error!(
                    segment = w.seg,
                    offset = w.offset,
                    msg_id = w.msg_id,
                    %why,
                    "cannot read a paged-out message back from the log"
                ),
            }
        }
        i = j;
    }
}

/// Reads messages back by id, in the order asked; `None` for one that cannot be read
/// (logged). `flush` is called once if some are not written yet, and must return when
/// everything handed to the writer before is written.
pub fn read_messages(
    index: &Mutex<Index>,
    seg_dir: &Path,
    ids: &[u64],
    flush: impl FnOnce(),
) -> Vec<Option<Message>> {
    let mut out: Vec<Option<Message>> = (0..ids.len()).map(|_| None).collect();
    let all: Vec<(usize, u64)> = ids.iter().copied().enumerate().collect();
    let (found, missing) = locate(index, seg_dir, &all);
    read_found(found, &mut out);
    if !missing.is_empty() {
        // Paged out so soon after publishing that the writer has not written it yet.
        flush();
        let again: Vec<(usize, u64)> = missing.iter().map(|&slot| (slot, ids[slot])).collect();
        let (found, still) = locate(index, seg_dir, &again);
        read_found(found, &mut out);
        for slot in still {
            tracing::error!(msg_id = ids[slot], "a paged-out message is not in the log");
        }
    }
    out
}

/// Reads the raw bytes of one record (to copy it elsewhere).
pub fn read_raw(file: &File, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    file.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}
