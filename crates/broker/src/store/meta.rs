//! The metadata log, `metadata.log`: durable queue definitions, exchanges and bindings as
//! an append-only file of records (the record format of [`super::format`]), written by
//! its own thread with group commit, compacted when it grows past twice what is live,
//! and replayed at start-up. See `docs/storage.md`.
//!
//! Why a thread of its own: a change is answered only once its record is synced, and a
//! sync blocks. Callers (connection tasks on the async workers) hand the record over and
//! await a [`MetaWait`]; every change waiting when the thread takes a batch shares one
//! `fdatasync`. The message writer is not used for this so that metadata never waits
//! behind a batch of large messages, nor a message sync behind a compaction here.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};

use bytes::{Bytes, BytesMut};
use tokio::sync::oneshot;

use super::disk::{Disk, DiskFile};
use super::files::sync_dir;
use super::format::{
    check_header, check_record, file_header, BindingDef, ExchangeDef, ParamDef, QueueDef, Record,
    FILE_HEADER_LEN, META_LOG_MAGIC, META_MAGIC,
};
use super::recovery::RecoveryMode;

/// The metadata log's file name in the data directory.
pub const LOG_NAME: &str = "metadata.log";
/// Where a compaction writes the new log before renaming it over the old one.
const TMP_NAME: &str = "metadata.log.tmp";
/// The file of earlier versions (a snapshot rewritten whole on every change), converted
/// to the log at the first start.
const OLD_NAME: &str = "queues.meta";

/// The log is compacted when it is larger than twice what is live plus this: the floor
/// keeps a small topology from being rewritten every few changes, and the factor makes
/// each rewrite pay for itself (at least as many octets were appended since the last
/// one as it writes), so compaction costs O(1) per change, amortized.
pub const COMPACT_FLOOR: u64 = 64 * 1024;

/// What is live: the state the log's records add up to.
#[derive(Debug, Default)]
pub struct Live {
    /// Durable queues by id.
    pub queues: BTreeMap<u64, QueueDef>,
    /// The next queue id to hand out: above every id ever recorded, deleted ones too.
    pub next_id: u64,
    /// Durable exchanges by vhost and name.
    pub exchanges: BTreeMap<(String, String), ExchangeDef>,
    /// Bindings in the order they were made (by a sequence number of their own).
    bindings: BTreeMap<u64, BindingDef>,
    /// Each binding's encoded record, to its sequence number: a binding is a value, so
    /// it is found by its encoding (O(1)), not by comparing with every other.
    binding_keys: HashMap<Bytes, u64>,
    next_binding: u64,
    /// Settings (policies, ...) by (component, vhost, name): their JSON.
    params: BTreeMap<(String, String, String), Bytes>,
    /// Octets the live records take encoded (the size of a compacted log, about).
    bytes: u64,
}

/// How to take back one change applied to [`Live`] (a batch whose write failed).
enum Undo {
    Queue(u64, Option<QueueDef>),
    Exchange((String, String), Option<ExchangeDef>),
    BindingAdded(u64),
    BindingsRemoved(Vec<(u64, BindingDef)>),
    Param((String, String, String), Option<Bytes>),
}

fn encoded_len(record: &Record) -> u64 {
    let mut buf = BytesMut::new();
    record.encode(&mut buf);
    buf.len() as u64
}

fn binding_key(b: &BindingDef) -> Bytes {
    let mut buf = BytesMut::new();
    Record::Binding(b.clone()).encode(&mut buf);
    buf.freeze()
}

impl Live {
    fn new() -> Live {
        Live {
            next_id: 1,
            ..Live::default()
        }
    }

    /// The durable bindings, in the order they were made.
    pub fn bindings(&self) -> impl Iterator<Item = &BindingDef> {
        self.bindings.values()
    }

    fn set_queue(&mut self, id: u64, def: Option<QueueDef>) -> Option<QueueDef> {
        let old = match def {
            Some(def) => {
                self.bytes += encoded_len(&Record::Queue(def.clone()));
                self.queues.insert(id, def)
            }
            None => self.queues.remove(&id),
        };
        if let Some(o) = &old {
            self.bytes -= encoded_len(&Record::Queue(o.clone()));
        }
        old
    }

    fn set_exchange(
        &mut self,
        key: (String, String),
        def: Option<ExchangeDef>,
    ) -> Option<ExchangeDef> {
        let old = match def {
            Some(def) => {
                self.bytes += encoded_len(&Record::Exchange(def.clone()));
                self.exchanges.insert(key, def)
            }
            None => self.exchanges.remove(&key),
        };
        if let Some(o) = &old {
            self.bytes -= encoded_len(&Record::Exchange(o.clone()));
        }
        old
    }

    fn insert_binding(&mut self, seq: u64, def: BindingDef) {
        let key = binding_key(&def);
        self.bytes += key.len() as u64;
        self.binding_keys.insert(key, seq);
        self.bindings.insert(seq, def);
    }

    fn remove_binding(&mut self, seq: u64) -> Option<BindingDef> {
        let def = self.bindings.remove(&seq)?;
        let key = binding_key(&def);
        self.bytes -= key.len() as u64;
        self.binding_keys.remove(&key);
        Some(def)
    }

    fn remove_bindings_where(&mut self, f: impl Fn(&BindingDef) -> bool) -> Vec<(u64, BindingDef)> {
        let seqs: Vec<u64> = self
            .bindings
            .iter()
            .filter(|(_, b)| f(b))
            .map(|(s, _)| *s)
            .collect();
        seqs.into_iter()
            .filter_map(|s| self.remove_binding(s).map(|b| (s, b)))
            .collect()
    }

    /// Applies one record, pushing how to take it back onto `undo`; answers whether it
    /// changed anything (if not, it need not be written).
    fn apply(&mut self, record: &Record, undo: &mut Vec<Undo>) -> bool {
        match record {
            Record::NextQueueId(n) => {
                self.next_id = self.next_id.max(*n);
                false
            }
            Record::Queue(def) => {
                self.next_id = self.next_id.max(def.id.saturating_add(1));
                if self.queues.get(&def.id) == Some(def) {
                    return false;
                }
                let old = self.set_queue(def.id, Some(def.clone()));
                undo.push(Undo::Queue(def.id, old));
                true
            }
            Record::RemoveQueue(id) => {
                let Some(old) = self.set_queue(*id, None) else {
                    return false;
                };
                let (vhost, name) = (old.vhost.clone(), old.name.clone());
                // Undone in reverse: the queue comes back before its bindings.
                undo.push(Undo::Queue(*id, Some(old)));
                let removed = self.remove_bindings_where(|b| {
                    b.vhost == vhost && !b.to_exchange && b.destination == name
                });
                undo.push(Undo::BindingsRemoved(removed));
                true
            }
            Record::Exchange(def) => {
                let key = (def.vhost.clone(), def.name.clone());
                if self.exchanges.get(&key) == Some(def) {
                    return false;
                }
                let old = self.set_exchange(key.clone(), Some(def.clone()));
                undo.push(Undo::Exchange(key, old));
                true
            }
            Record::RemoveExchange(vhost, name) => {
                let key = (vhost.clone(), name.clone());
                let old = self.set_exchange(key.clone(), None);
                let removed = self.remove_bindings_where(|b| {
                    b.vhost == *vhost
                        && (b.source == *name || (b.to_exchange && b.destination == *name))
                });
                if old.is_none() && removed.is_empty() {
                    return false;
                }
                undo.push(Undo::Exchange(key, old));
                undo.push(Undo::BindingsRemoved(removed));
                true
            }
            Record::Binding(def) => {
                if self.binding_keys.contains_key(&binding_key(def)) {
                    return false;
                }
                let seq = self.next_binding;
                self.next_binding += 1;
                self.insert_binding(seq, def.clone());
                undo.push(Undo::BindingAdded(seq));
                true
            }
            Record::RemoveBinding(def) => {
                let Some(seq) = self.binding_keys.get(&binding_key(def)).copied() else {
                    return false;
                };
                if let Some(b) = self.remove_binding(seq) {
                    undo.push(Undo::BindingsRemoved(vec![(seq, b)]));
                }
                true
            }
            Record::Param(p) => {
                let key = (p.component.clone(), p.vhost.clone(), p.name.clone());
                if self.params.get(&key) == Some(&p.value) {
                    return false;
                }
                let old = self.set_param(key.clone(), Some(p.value.clone()));
                undo.push(Undo::Param(key, old));
                true
            }
            Record::RemoveParam(component, vhost, name) => {
                let key = (component.clone(), vhost.clone(), name.clone());
                let Some(old) = self.set_param(key.clone(), None) else {
                    return false;
                };
                undo.push(Undo::Param(key, Some(old)));
                true
            }
            _ => false,
        }
    }

    fn undo(&mut self, undo: Undo) {
        match undo {
            Undo::Queue(id, old) => {
                self.set_queue(id, old);
            }
            Undo::Exchange(key, old) => {
                self.set_exchange(key, old);
            }
            Undo::BindingAdded(seq) => {
                self.remove_binding(seq);
            }
            Undo::BindingsRemoved(list) => {
                for (seq, b) in list {
                    self.insert_binding(seq, b);
                }
            }
            Undo::Param(key, old) => {
                self.set_param(key, old);
            }
        }
    }

    /// The live set as records, for a compacted log.
    fn encode(&self, buf: &mut BytesMut) {
        Record::NextQueueId(self.next_id).encode(buf);
        for def in self.queues.values() {
            Record::Queue(def.clone()).encode(buf);
        }
        for e in self.exchanges.values() {
            Record::Exchange(e.clone()).encode(buf);
        }
        for b in self.bindings.values() {
            Record::Binding(b.clone()).encode(buf);
        }
        for def in self.param_defs() {
            Record::Param(def).encode(buf);
        }
    }

    /// Sets or removes one setting, keeping the live size; answers the old value.
    fn set_param(&mut self, key: (String, String, String), value: Option<Bytes>) -> Option<Bytes> {
        let size = |k: &(String, String, String), v: &Bytes| {
            (k.0.len() + k.1.len() + k.2.len() + v.len() + 16) as u64
        };
        if let Some(v) = &value {
            self.bytes += size(&key, v);
        }
        let old = match value {
            Some(v) => self.params.insert(key.clone(), v),
            None => self.params.remove(&key),
        };
        if let Some(o) = &old {
            self.bytes = self.bytes.saturating_sub(size(&key, o));
        }
        old
    }

    /// The live settings, in (component, vhost, name) order.
    pub fn param_defs(&self) -> impl Iterator<Item = ParamDef> + '_ {
        self.params
            .iter()
            .map(|((component, vhost, name), value)| ParamDef {
                component: component.clone(),
                vhost: vhost.clone(),
                name: name.clone(),
                value: value.clone(),
            })
    }
}

/// A metadata change handed to the metadata thread; answers once its record is durable
/// (or could not be made so). Dropping it does not cancel the change: records are
/// written in the order they were handed over, waited for or not.
#[must_use = "a metadata change is durable only once its MetaWait answered"]
pub struct MetaWait<T = ()> {
    rx: oneshot::Receiver<std::io::Result<()>>,
    value: T,
}

impl<T> MetaWait<T> {
    /// Waits for the record to be on disk.
    pub async fn done(self) -> std::io::Result<T> {
        self.rx.await.unwrap_or_else(|_| Err(gone()))?;
        Ok(self.value)
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the metadata writer is gone")
}

/// What the metadata thread is asked to do.
enum Op {
    Change {
        // Boxed: a record is large, the stop small.
        record: Box<Record>,
        reply: oneshot::Sender<std::io::Result<()>>,
    },
    /// Write what came before, then end; answers once done.
    Stop(mpsc::Sender<()>),
}

/// The metadata found at start-up.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Durable queues, by id.
    pub queues: Vec<QueueDef>,
    /// The next queue id to hand out.
    pub next_id: u64,
    /// Durable exchanges.
    pub exchanges: Vec<ExchangeDef>,
    /// Bindings between durable objects, in the order they were made.
    pub bindings: Vec<BindingDef>,
    /// Settings (policies, ...), in (component, vhost, name) order.
    pub params: Vec<ParamDef>,
}

/// The handle the store keeps: where changes are sent.
pub struct MetaLog {
    tx: mpsc::Sender<Op>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl MetaLog {
    /// Hands `record` to the metadata thread.
    pub fn submit<T>(&self, record: Record, value: T) -> MetaWait<T> {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::SendError(Op::Change { reply, .. })) = self.tx.send(Op::Change {
            record: Box::new(record),
            reply,
        }) {
            let _ = reply.send(Err(gone()));
        }
        MetaWait { rx, value }
    }

    /// Writes everything handed over so far and stops the thread. Blocking: called from
    /// `spawn_blocking`.
    pub fn stop_blocking(&self) {
        let (reply, rx) = mpsc::channel();
        if self.tx.send(Op::Stop(reply)).is_ok() {
            let _ = rx.recv();
        }
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

/// Opens the metadata log in `dir` (converting an old `queues.meta`, creating an empty
/// log in a new directory), replays it and starts its thread. Answers the handle and the
/// metadata it recovered.
pub fn open(
    disk: Arc<dyn Disk>,
    dir: &Path,
    mode: RecoveryMode,
    fail_syncs: Option<Arc<AtomicBool>>,
) -> std::io::Result<(MetaLog, Recovered)> {
    open_with(disk, dir, mode, fail_syncs, None)
}

/// Test hook: called on the metadata thread before each sync of an append.
type BeforeSync = Option<Box<dyn Fn() + Send>>;

fn open_with(
    disk: Arc<dyn Disk>,
    dir: &Path,
    mode: RecoveryMode,
    fail_syncs: Option<Arc<AtomicBool>>,
    before_sync: BeforeSync,
) -> std::io::Result<(MetaLog, Recovered)> {
    let path = dir.join(LOG_NAME);
    if dir.join(TMP_NAME).exists() {
        let _ = disk.remove_file(&dir.join(TMP_NAME));
    }
    let (file, size, live) = if path.exists() {
        let (file, size, live) = replay(&*disk, &path, mode)?;
        if dir.join(OLD_NAME).exists() {
            // A conversion that stopped after the log was in place: the log has it all.
            disk.remove_file(&dir.join(OLD_NAME))?;
            sync_dir(&*disk, dir)?;
        }
        (file, size, live)
    } else {
        let live = load_old(&dir.join(OLD_NAME))?;
        let (file, size) = compact(&*disk, dir, &live, &None)?;
        if dir.join(OLD_NAME).exists() {
            disk.remove_file(&dir.join(OLD_NAME))?;
            sync_dir(&*disk, dir)?;
            tracing::info!(
                queues = live.queues.len(),
                exchanges = live.exchanges.len(),
                bindings = live.bindings.len(),
                "converted queues.meta to the metadata log"
            );
        }
        (file, size, live)
    };
    let recovered = Recovered {
        queues: live.queues.values().cloned().collect(),
        next_id: live.next_id,
        exchanges: live.exchanges.values().cloned().collect(),
        bindings: live.bindings().cloned().collect(),
        params: live.param_defs().collect(),
    };
    let (tx, rx) = mpsc::channel();
    let mut w = Writer {
        disk,
        dir: dir.to_path_buf(),
        file,
        size,
        live,
        fail_syncs,
        must_compact: false,
        before_sync,
    };
    let thread = std::thread::Builder::new()
        .name("minimq-meta".into())
        .spawn(move || {
            // A panic here (a bug) ends the thread: what waits is answered with an error
            // as its reply is dropped, and what is sent later fails at once.
            let run = std::panic::AssertUnwindSafe(move || w.run(rx));
            if std::panic::catch_unwind(run).is_err() {
                tracing::error!(
                    "metadata writer thread panicked; durable declares are refused from now on"
                );
            }
        })?;
    Ok((
        MetaLog {
            tx,
            thread: std::sync::Mutex::new(Some(thread)),
        },
        recovered,
    ))
}

struct Writer {
    disk: Arc<dyn Disk>,
    dir: PathBuf,
    file: Arc<dyn DiskFile>,
    /// Octets in the log that are known good (written and synced).
    size: u64,
    live: Live,
    fail_syncs: Option<Arc<AtomicBool>>,
    /// Set after a failed write: the old file's cached pages are not trusted (and may
    /// hold the refused records, if they could not be cut off), so the next batch
    /// rewrites the live set to a new file, retried batch after batch until it succeeds.
    must_compact: bool,
    before_sync: BeforeSync,
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Op>) {
        let mut stop = None;
        while stop.is_none() {
            let Ok(first) = rx.recv() else { break };
            // Group commit: everything that waits now shares one write and one sync.
            let mut replies = Vec::new();
            let mut undo = Vec::new();
            let mut buf = BytesMut::new();
            for op in std::iter::once(first).chain(rx.try_iter()) {
                match op {
                    Op::Change { record, reply } => {
                        if self.live.apply(&record, &mut undo) {
                            record.encode(&mut buf);
                        }
                        replies.push(reply);
                    }
                    Op::Stop(reply) => {
                        stop = Some(reply);
                        break;
                    }
                }
            }
            if replies.is_empty() {
                continue;
            }
            let result = if buf.is_empty() && !self.must_compact {
                Ok(())
            } else {
                self.write(&buf)
            };
            let result = match result {
                Ok(()) => Ok(()),
                Err(e) => {
                    tracing::error!(error = %e, changes = replies.len(), "metadata write failed; the changes are refused");
                    for u in undo.into_iter().rev() {
                        self.live.undo(u);
                    }
                    Err(e)
                }
            };
            for reply in replies {
                let _ = reply.send(
                    result
                        .as_ref()
                        .map(|_| ())
                        .map_err(|e| std::io::Error::new(e.kind(), e.to_string())),
                );
            }
        }
        if let Some(reply) = stop {
            let _ = reply.send(());
        }
    }

    /// Makes `buf` (the batch's records, already applied to the live set) durable:
    /// appended and synced, or the live set rewritten when the log is due for compaction.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<()> {
        let grown = self.size + buf.len() as u64;
        if self.must_compact || grown > 2 * self.live.bytes + COMPACT_FLOOR {
            // A failure after the rename leaves a log holding the refused changes: the
            // next batch rewrites it again.
            self.must_compact = true;
            let (file, size) = compact(&*self.disk, &self.dir, &self.live, &self.fail_syncs)?;
            self.file = file;
            self.size = size;
            self.must_compact = false;
            return Ok(());
        }
        let result = self.file.write_all(buf).and_then(|()| {
            if let Some(hook) = &self.before_sync {
                hook();
            }
            sync_file(&*self.file, &self.fail_syncs)
        });
        match result {
            Ok(()) => {
                self.size = grown;
                Ok(())
            }
            Err(e) => {
                // Take the batch back off the file, so a later sync cannot make refused
                // changes durable; the next batch rewrites everything anyway. If even the
                // truncation fails, that rewrite is what takes them back: it replaces the
                // file (until then a crash could keep a refused change, which its caller
                // was told failed; see docs/storage.md).
                self.must_compact = true;
                if let Err(t) = self.file.set_len(self.size) {
                    tracing::error!(error = %t, "cannot truncate the metadata log after a failed write; the next change rewrites it");
                }
                Err(e)
            }
        }
    }
}

fn sync_file(file: &dyn DiskFile, fail_syncs: &Option<Arc<AtomicBool>>) -> std::io::Result<()> {
    if fail_syncs
        .as_ref()
        .is_some_and(|f| f.load(Ordering::SeqCst))
    {
        return Err(std::io::Error::other("injected sync failure"));
    }
    file.sync_data()
}

/// Writes `live` to a new log (tmp, fsync, rename, directory fsync); answers it opened
/// for appending, and its size.
fn compact(
    disk: &dyn Disk,
    dir: &Path,
    live: &Live,
    fail_syncs: &Option<Arc<AtomicBool>>,
) -> std::io::Result<(Arc<dyn DiskFile>, u64)> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&file_header(META_LOG_MAGIC));
    live.encode(&mut buf);
    let tmp = dir.join(TMP_NAME);
    let written = (|| {
        let f = disk.create(&tmp)?;
        f.write_all(&buf)?;
        sync_file(&*f, fail_syncs)?;
        Ok::<_, std::io::Error>(f)
    })();
    let f = match written {
        Ok(f) => f,
        Err(e) => {
            let _ = disk.remove_file(&tmp);
            return Err(e);
        }
    };
    drop(f);
    disk.rename(&tmp, &dir.join(LOG_NAME))?;
    sync_dir(disk, dir)?;
    let file = disk.open_append(&dir.join(LOG_NAME))?;
    Ok((file, buf.len() as u64))
}

/// Reads the metadata log. A torn tail (the last records cut short by a crash: nothing
/// valid after the first bad octet) is cut off, unless `mode` is `absolute`; damage with
/// valid records after it refuses to start, whatever the mode: skipping a record in the
/// middle could bring a deleted object back or lose a queue with its messages, which an
/// operator decides (the file is kept as it is).
fn replay(
    disk: &dyn Disk,
    path: &Path,
    mode: RecoveryMode,
) -> std::io::Result<(Arc<dyn DiskFile>, u64, Live)> {
    let data = Bytes::from(std::fs::read(path)?);
    check_header(&data, META_LOG_MAGIC)
        .map_err(|why| std::io::Error::other(format!("{}: {why}", path.display())))?;
    let mut live = Live::new();
    let mut scratch = Vec::new();
    let mut offset = FILE_HEADER_LEN;
    while offset < data.len() {
        match Record::decode(&data.slice(offset..)) {
            Ok((record, len)) => {
                live.apply(&record, &mut scratch);
                scratch.clear();
                offset += len;
            }
            Err(e) => {
                if let Some(at) = resumes_after(&data, offset) {
                    return Err(std::io::Error::other(format!(
                        "{}: damaged at offset {offset} ({e:?}), valid records resume at {at}; refusing to start (move the file aside to start without it)",
                        path.display()
                    )));
                }
                if mode == RecoveryMode::Absolute {
                    return Err(std::io::Error::other(format!(
                        "{}: torn tail at offset {offset} ({e:?}) and --recovery-mode absolute",
                        path.display()
                    )));
                }
                tracing::warn!(
                    file = %path.display(),
                    offset,
                    octets = data.len() - offset,
                    "metadata log ends in a torn record (a crash during a write); cut off"
                );
                let f = disk.open_append(path)?;
                f.set_len(offset as u64)?;
                f.sync_all()?;
                break;
            }
        }
    }
    let size = offset as u64;
    let file = disk.open_append(path)?;
    Ok((file, size, live))
}

/// The first offset after `bad` where a whole valid record starts, if any.
fn resumes_after(data: &Bytes, bad: usize) -> Option<usize> {
    (bad + 1..data.len())
        .find(|&at| check_record(&data[at..]).is_ok() && Record::decode(&data.slice(at..)).is_ok())
}

/// Reads an old `queues.meta` (a snapshot: any damage is an error, as before); an empty
/// live set when there is none.
fn load_old(path: &Path) -> std::io::Result<Live> {
    let mut live = Live::new();
    let data = match std::fs::read(path) {
        Ok(d) => Bytes::from(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(live),
        Err(e) => return Err(e),
    };
    check_header(&data, META_MAGIC)
        .map_err(|why| std::io::Error::other(format!("{}: {why}", path.display())))?;
    let mut offset = FILE_HEADER_LEN;
    let mut scratch = Vec::new();
    while offset < data.len() {
        let (record, len) = Record::decode(&data.slice(offset..)).map_err(|e| {
            std::io::Error::other(format!(
                "{}: damaged at offset {offset}: {e:?}",
                path.display()
            ))
        })?;
        live.apply(&record, &mut scratch);
        scratch.clear();
        offset += len;
    }
    Ok(live)
}

/// Writes `live` as an old-format `queues.meta`, for the conversion test.
#[cfg(test)]
pub(crate) fn write_old(dir: &Path, live: &Live) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&file_header(META_MAGIC));
    live.encode(&mut buf);
    std::fs::write(dir.join(OLD_NAME), &buf)
}

#[cfg(test)]
mod tests {
    use super::super::disk::OsDisk;
    use super::*;
    use minimq_protocol::FieldTable;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("minimq-meta-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn exchange(name: &str) -> ExchangeDef {
        ExchangeDef {
            vhost: "/".into(),
            name: name.into(),
            kind: "direct".into(),
            auto_delete: false,
            internal: false,
            arguments: FieldTable::new(),
        }
    }

    fn binding(source: &str, queue: &str) -> BindingDef {
        BindingDef {
            vhost: "/".into(),
            source: source.into(),
            to_exchange: false,
            destination: queue.into(),
            key: "k".into(),
            arguments: FieldTable::new(),
        }
    }

    fn queue(id: u64, name: &str) -> QueueDef {
        QueueDef {
            id,
            vhost: "/".into(),
            name: name.into(),
            auto_delete: false,
            arguments: FieldTable::new(),
        }
    }

    fn change(log: &MetaLog, record: Record) -> std::io::Result<()> {
        futures::executor::block_on(log.submit(record, ()).done())
    }

    fn names(found: &Recovered) -> Vec<String> {
        found.exchanges.iter().map(|e| e.name.clone()).collect()
    }

    /// A crash in the middle of an append leaves part of a record at the end: it is cut
    /// off, what came before is kept, and records appended later are read after it.
    #[test]
    fn a_torn_tail_is_cut_off_and_the_log_goes_on_after_it() {
        let d = dir("torn");
        let (log, _) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        change(&log, Record::Exchange(exchange("a"))).unwrap();
        change(&log, Record::Exchange(exchange("b"))).unwrap();
        log.stop_blocking();
        let path = d.join(LOG_NAME);
        let whole = std::fs::read(&path).unwrap();
        let mut torn = BytesMut::new();
        Record::Exchange(exchange("c")).encode(&mut torn);
        for cut in 1..torn.len() {
            let mut data = whole.clone();
            data.extend_from_slice(&torn[..cut]);
            std::fs::write(&path, &data).unwrap();
            let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
            assert_eq!(names(&found), ["a", "b"], "cut at {cut}");
            log.stop_blocking();
            assert_eq!(
                std::fs::read(&path).unwrap(),
                whole,
                "the torn record is gone"
            );
        }
        let (log, _) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        change(&log, Record::Exchange(exchange("d"))).unwrap();
        log.stop_blocking();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert_eq!(names(&found), ["a", "b", "d"]);
        log.stop_blocking();
        // Absolute recovery refuses even a torn tail.
        let mut data = std::fs::read(&path).unwrap();
        data.extend_from_slice(&torn[..5]);
        std::fs::write(&path, &data).unwrap();
        assert!(open(Arc::new(OsDisk), &d, RecoveryMode::Absolute, None).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    fn param(name: &str, value: &str) -> ParamDef {
        ParamDef {
            component: "policy".into(),
            vhost: "/".into(),
            name: name.into(),
            value: Bytes::copy_from_slice(value.as_bytes()),
        }
    }

    /// Settings keep their latest value across restarts; a removed one stays removed, a
    /// removal of one that is not there changes nothing.
    #[test]
    fn settings_keep_their_latest_value_across_reopen() {
        let d = dir("params");
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert!(found.params.is_empty());
        change(&log, Record::Param(param("a", "{\"v\":1}"))).unwrap();
        change(&log, Record::Param(param("b", "{}"))).unwrap();
        change(&log, Record::Param(param("a", "{\"v\":2}"))).unwrap();
        change(
            &log,
            Record::RemoveParam("policy".into(), "/".into(), "b".into()),
        )
        .unwrap();
        change(
            &log,
            Record::RemoveParam("policy".into(), "/".into(), "zz".into()),
        )
        .unwrap();
        log.stop_blocking();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert_eq!(found.params, [param("a", "{\"v\":2}")]);
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Two vhosts' exchanges of the same name are two records; removing one takes its
    /// own vhost's bindings and leaves the other's, across a reopen.
    #[test]
    fn same_names_in_two_vhosts_are_kept_apart() {
        let d = dir("vhosts");
        let (log, _) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        let in_vhost = |vhost: &str| {
            let mut x = exchange("x");
            x.vhost = vhost.into();
            let mut q = queue(if vhost == "/" { 1 } else { 2 }, "q");
            q.vhost = vhost.into();
            let mut b = binding("x", "q");
            b.vhost = vhost.into();
            (x, q, b)
        };
        for vhost in ["/", "v1"] {
            let (x, q, b) = in_vhost(vhost);
            change(&log, Record::Exchange(x)).unwrap();
            change(&log, Record::Queue(q)).unwrap();
            change(&log, Record::Binding(b)).unwrap();
        }
        change(&log, Record::RemoveExchange("v1".into(), "x".into())).unwrap();
        log.stop_blocking();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        let (x, _, b) = in_vhost("/");
        assert_eq!(found.exchanges, [x]);
        assert_eq!(found.bindings, [b]);
        assert_eq!(found.queues.len(), 2);
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Damage with valid records after it is not a torn tail: the broker does not start
    /// rather than drop a record from the middle.
    #[test]
    fn damage_in_the_middle_refuses_to_start() {
        let d = dir("middle");
        let (log, _) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        change(&log, Record::Exchange(exchange("a"))).unwrap();
        let at = std::fs::metadata(d.join(LOG_NAME)).unwrap().len() as usize;
        change(&log, Record::Exchange(exchange("b"))).unwrap();
        change(&log, Record::Exchange(exchange("c"))).unwrap();
        log.stop_blocking();
        let mut data = std::fs::read(d.join(LOG_NAME)).unwrap();
        data[at + 12] ^= 0x40;
        std::fs::write(d.join(LOG_NAME), &data).unwrap();
        let err = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("resume"), "{err}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A data directory of an earlier version (`queues.meta`, a snapshot) opens with all
    /// it held and is converted: the log replaces it.
    #[test]
    fn an_old_queues_meta_is_read_and_converted() {
        let d = dir("convert");
        let mut live = Live::new();
        let mut undo = Vec::new();
        live.apply(&Record::Queue(queue(3, "q")), &mut undo);
        live.apply(&Record::Exchange(exchange("x")), &mut undo);
        live.apply(&Record::Binding(binding("x", "q")), &mut undo);
        live.apply(&Record::NextQueueId(9), &mut undo);
        write_old(&d, &live).unwrap();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert_eq!(found.queues, [queue(3, "q")]);
        assert_eq!(found.next_id, 9);
        assert_eq!(names(&found), ["x"]);
        assert_eq!(found.bindings, [binding("x", "q")]);
        assert!(!d.join(OLD_NAME).exists());
        change(&log, Record::RemoveQueue(3)).unwrap();
        log.stop_blocking();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert!(found.queues.is_empty());
        assert!(
            found.bindings.is_empty(),
            "the queue's bindings went with it"
        );
        assert_eq!(found.next_id, 9, "ids are never reused");
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A batch whose sync fails is refused and taken back, on disk and in the live set:
    /// it is not in a later compaction nor after a reopen; what follows works.
    #[test]
    fn a_failed_sync_takes_the_batch_back() {
        let d = dir("fail");
        let fail = Arc::new(AtomicBool::new(false));
        let (log, _) = open(
            Arc::new(OsDisk),
            &d,
            RecoveryMode::default(),
            Some(fail.clone()),
        )
        .unwrap();
        change(&log, Record::Exchange(exchange("a"))).unwrap();
        change(&log, Record::Binding(binding("a", "q"))).unwrap();
        fail.store(true, Ordering::SeqCst);
        assert!(change(&log, Record::Exchange(exchange("doomed"))).is_err());
        assert!(change(&log, Record::RemoveExchange("/".into(), "a".into())).is_err());
        fail.store(false, Ordering::SeqCst);
        change(&log, Record::Exchange(exchange("b"))).unwrap();
        log.stop_blocking();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert_eq!(names(&found), ["a", "b"]);
        assert_eq!(
            found.bindings,
            [binding("a", "q")],
            "the refused removal took nothing"
        );
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// A failed write that cannot even be taken back off the file (the truncation fails
    /// too) refuses its change, but not every change after it: once the disk works, the
    /// next change rewrites the log without the refused one, and a power loss then keeps
    /// exactly what was accepted.
    #[test]
    fn a_failed_write_that_cannot_be_taken_back_is_refused_and_the_log_recovers() {
        use super::super::faulty::{Fault, FaultyDisk, FsOp};
        let d = dir("untruncatable");
        let disk = FaultyDisk::new(5);
        let (log, _) = open(disk.clone(), &d, RecoveryMode::default(), None).unwrap();
        change(&log, Record::Exchange(exchange("a"))).unwrap();
        disk.fail(&[FsOp::Sync, FsOp::SetLen], Fault::Io);
        assert!(change(&log, Record::Exchange(exchange("refused"))).is_err());
        disk.fail(&[FsOp::Write, FsOp::Open], Fault::NoSpace);
        assert!(change(&log, Record::Exchange(exchange("refused too"))).is_err());
        disk.heal();
        change(&log, Record::Exchange(exchange("b"))).unwrap();
        disk.power_off();
        log.stop_blocking();
        disk.power_on().unwrap();
        let (log, found) = open(disk.clone(), &d, RecoveryMode::default(), None).unwrap();
        assert_eq!(names(&found), ["a", "b"]);
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Group commit: the changes handed over while a sync runs are written and synced
    /// together by the next one, and each is answered only after the sync that covers it.
    #[test]
    fn changes_waiting_during_a_sync_share_the_next_one() {
        let d = dir("group");
        let syncs = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (entered_tx, entered) = mpsc::channel();
        let (release, released) = mpsc::channel::<()>();
        let released = std::sync::Mutex::new(released);
        let counter = syncs.clone();
        let hook = Box::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let _ = entered_tx.send(());
            let _ = released.lock().unwrap().recv();
        });
        let (log, _) = open_with(
            Arc::new(OsDisk),
            &d,
            RecoveryMode::default(),
            None,
            Some(hook),
        )
        .unwrap();
        let first = log.submit(Record::Exchange(exchange("first")), ());
        entered.recv().unwrap();
        // The first change's sync is in progress: these wait for the next one.
        let mut rest: Vec<_> = (0..50)
            .map(|i| log.submit(Record::Exchange(exchange(&format!("x{i}"))), ()))
            .collect();
        release.send(()).unwrap();
        futures::executor::block_on(first.done()).unwrap();
        entered.recv().unwrap();
        for w in &mut rest {
            assert!(
                matches!(w.rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)),
                "not answered before its sync"
            );
        }
        release.send(()).unwrap();
        for w in rest {
            futures::executor::block_on(w.done()).unwrap();
        }
        assert_eq!(
            syncs.load(Ordering::SeqCst),
            2,
            "one sync for the 50 that waited"
        );
        drop(release);
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Declares and deletes over and over: the log is compacted, its size stays within
    /// twice the live set plus the floor, and the live set survives.
    #[test]
    fn churn_is_compacted_and_the_log_stays_bounded() {
        let d = dir("churn");
        let (log, _) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        change(&log, Record::Exchange(exchange("keep"))).unwrap();
        change(&log, Record::Queue(queue(1, "q"))).unwrap();
        change(&log, Record::Binding(binding("keep", "q"))).unwrap();
        let mut largest = 0;
        // Long names, so that few cycles (each one synced) write several times the
        // floor: about 300 KiB here.
        let pad = "n".repeat(100);
        for i in 0..500 {
            let x = format!("tmp-{i}-{pad}");
            change(&log, Record::Exchange(exchange(&x))).unwrap();
            change(&log, Record::Binding(binding(&x, "q"))).unwrap();
            change(&log, Record::RemoveExchange("/".into(), x)).unwrap();
            largest = largest.max(std::fs::metadata(d.join(LOG_NAME)).unwrap().len());
        }
        assert!(
            largest <= COMPACT_FLOOR + 1024,
            "the log reached {largest} octets"
        );
        log.stop_blocking();
        let (log, found) = open(Arc::new(OsDisk), &d, RecoveryMode::default(), None).unwrap();
        assert_eq!(names(&found), ["keep"]);
        assert_eq!(found.queues, [queue(1, "q")]);
        assert_eq!(found.bindings, [binding("keep", "q")]);
        log.stop_blocking();
        let _ = std::fs::remove_dir_all(&d);
    }
}
