//! The on-disk format (see `docs/storage.md`): segment and meta files start with a
//! 16-octet header (8-octet magic, u32 version, u32 reserved); then records, each
//! `length:u32 type:u8 crc32c:u32 payload[length]`, the CRC32C over type and payload.
//! All integers are big-endian, as on the AMQP wire.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use minimq_protocol::types::{read, write};
use minimq_protocol::{BasicProperties, FieldTable};

/// Magic of a segment file.
pub const SEGMENT_MAGIC: &[u8; 8] = b"MINIMQSG";
/// Magic of the old queue-definitions file, `queues.meta` (a snapshot rewritten whole on
/// every change); still read, and converted to the metadata log, at start-up.
pub const META_MAGIC: &[u8; 8] = b"MINIMQMT";
/// Magic of the metadata log, `metadata.log`.
pub const META_LOG_MAGIC: &[u8; 8] = b"MINIMQML";
/// Format version written by this build.
pub const VERSION: u32 = 1;
/// Length of a file header.
pub const FILE_HEADER_LEN: usize = 16;
/// Length of a record header.
pub const RECORD_HEADER_LEN: usize = 9;
/// Largest record accepted when reading (a larger length is corruption).
pub const MAX_RECORD_LEN: usize = 512 * 1024 * 1024;

const T_MESSAGE: u8 = 1;
const T_ENQUEUE: u8 = 2;
const T_SETTLE: u8 = 3;
const T_REDELIVERED: u8 = 4;
const T_CLEAN_SHUTDOWN: u8 = 5;
const T_QUEUE: u8 = 6;
const T_NEXT_QUEUE_ID: u8 = 7;
const T_EXCHANGE: u8 = 8;
const T_BINDING: u8 = 9;
const T_DELIVERIES: u8 = 10;
const T_OPENED: u8 = 11;
const T_REMOVE_QUEUE: u8 = 12;
const T_REMOVE_EXCHANGE: u8 = 13;
const T_REMOVE_BINDING: u8 = 14;
const T_PARAM: u8 = 15;
const T_REMOVE_PARAM: u8 = 16;
/// A transient message paged out of memory: a message record's layout, never restored
/// (recovery counts it and passes over it). Written since paging of transient messages.
const T_TRANSIENT: u8 = 17;

/// A durable exchange's definition, kept in the meta file.
#[derive(Debug, Clone, PartialEq)]
pub struct ExchangeDef {
    /// The vhost it belongs to.
    pub vhost: String,
    /// Name.
    pub name: String,
    /// Type name (`direct`, `fanout`, `topic`, `headers`).
    pub kind: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Internal flag.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// A named setting of the broker's (a policy, and the like): `value` is its JSON, which
/// the layer that owns the component reads. The store keeps the latest value of each
/// (component, vhost, name).
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDef {
    /// What kind of setting (`policy`, ...).
    pub component: String,
    /// The vhost it belongs to (empty for broker-wide ones).
    pub vhost: String,
    /// Its name.
    pub name: String,
    /// Its value, JSON.
    pub value: Bytes,
}

/// A binding between durable objects, kept in the meta file.
#[derive(Debug, Clone, PartialEq)]
pub struct BindingDef {
    /// The vhost it belongs to.
    pub vhost: String,
    /// Source exchange.
    pub source: String,
    /// Whether the destination is an exchange (else a queue).
    pub to_exchange: bool,
    /// Destination name.
    pub destination: String,
    /// Binding key.
    pub key: String,
    /// Binding arguments.
    pub arguments: FieldTable,
}

/// A durable queue's definition, kept in the meta file.
#[derive(Debug, Clone, PartialEq)]
pub struct QueueDef {
    /// Store-wide queue id (never reused).
    pub id: u64,
    /// The vhost it belongs to.
    pub vhost: String,
    /// Queue name.
    pub name: String,
    /// Auto-delete flag.
    pub auto_delete: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
}

/// One log record.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // records are built one at a time and encoded at once
pub enum Record {
    /// A persistent message, stored once however many queues hold it.
    Message {
        /// Store-wide message id.
        msg_id: u64,
        /// Exchange it was published to.
        exchange: String,
        /// Routing key.
        routing_key: String,
        /// Properties.
        properties: BasicProperties,
        /// Body.
        body: Bytes,
    },
    /// Message `msg_id` entered queue `queue_id` as its message number `seq`.
    Enqueue {
        /// Queue id.
        queue_id: u64,
        /// The queue's sequence number for it (its place in the queue).
        seq: u64,
        /// The message.
        msg_id: u64,
    },
    /// Messages left the queue for good (ack, reject/nack without requeue, purge, expiry,
    /// max-length drop).
    Settle {
        /// Queue id.
        queue_id: u64,
        /// Their sequence numbers in that queue.
        seqs: Vec<u64>,
    },
    /// Written at a graceful stop: these messages had been delivered before.
    Redelivered {
        /// Queue id.
        queue_id: u64,
        /// Their sequence numbers.
        seqs: Vec<u64>,
    },
    /// The last record of a graceful stop.
    CleanShutdown,
    /// The first record after every start: a log that ends here (or later, without a
    /// `CleanShutdown`) was not stopped cleanly.
    Opened,
    /// A durable queue definition (meta file only).
    Queue(QueueDef),
    /// The next queue id to hand out (meta file only): ids are never reused, so records
    /// of a deleted queue can never be taken for a new one's.
    NextQueueId(u64),
    /// A durable exchange (meta file only).
    Exchange(ExchangeDef),
    /// A binding between durable objects (meta file only).
    Binding(BindingDef),
    /// A durable queue was deleted, with the bindings to it (metadata log only).
    RemoveQueue(u64),
    /// A durable exchange was deleted, with every binding from or to it: vhost, name
    /// (metadata log only).
    RemoveExchange(String, String),
    /// A binding between durable objects was removed (metadata log only).
    RemoveBinding(BindingDef),
    /// A setting was made or changed (metadata log only).
    Param(ParamDef),
    /// A setting was removed: component, vhost, name (metadata log only).
    RemoveParam(String, String, String),
    /// Delivery counts of messages returned to a queue, for `x-delivery-count` and
    /// `x-delivery-limit` across restarts.
    Deliveries {
        /// Queue id.
        queue_id: u64,
        /// (sequence, deliveries so far).
        counts: Vec<(u64, u32)>,
    },
}

/// Verifies the header and checksum of the record at the start of `buf` without decoding
/// its payload; answers its type and encoded length.
pub fn check_record(buf: &[u8]) -> Result<(u8, usize), RecordError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Short);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let kind = buf[4];
    let crc = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if len > MAX_RECORD_LEN {
        return Err(RecordError::BadChecksum);
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Err(RecordError::Short);
    }
    let actual = crc32c::crc32c_append(crc32c::crc32c(&[kind]), &buf[RECORD_HEADER_LEN..total]);
    if actual != crc {
        return Err(RecordError::BadChecksum);
    }
    Ok((kind, total))
}

/// Whether `kind` is a record type this version writes.
pub fn is_known_kind(kind: u8) -> bool {
    (T_MESSAGE..=T_OPENED).contains(&kind) || kind == T_TRANSIENT
}

/// Whether a record type holds a message (a persistent one, or a paged-out transient one).
pub fn is_message(kind: u8) -> bool {
    kind == T_MESSAGE || kind == T_TRANSIENT
}

/// Whether a record type is a paged-out transient message, which recovery passes over.
pub fn is_transient(kind: u8) -> bool {
    kind == T_TRANSIENT
}

/// What a queue needs to know of a stored message without holding it: enough to order,
/// count and expire it while its body stays on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageMeta {
    /// Store-wide message id.
    pub msg_id: u64,
    /// Body length.
    pub body_len: u32,
    /// The `priority` property (0 when absent).
    pub priority: u8,
    /// The `expiration` property in milliseconds, when present and valid.
    pub ttl_ms: Option<u64>,
}

/// Reads a message record's payload (after the record header) far enough for its
/// [`MessageMeta`], skipping strings and tables by their lengths: no allocation.
pub fn peek_message(payload: &[u8]) -> Option<MessageMeta> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Option<&'a [u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn u8(&mut self) -> Option<u8> {
            self.take(1).map(|b| b[0])
        }
        fn u16(&mut self) -> Option<u16> {
            self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
        }
        fn shortstr(&mut self) -> Option<&'a [u8]> {
            let n = self.u8()? as usize;
            self.take(n)
        }
        fn table(&mut self) -> Option<()> {
            let n = self.take(4)?;
            let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
            self.take(n).map(|_| ())
        }
    }
    let mut c = Cursor(payload);
    let id = c.take(8)?;
    let msg_id = u64::from_be_bytes(id.try_into().ok()?);
    c.shortstr()?;
    c.shortstr()?;
    let flags = c.u16()?;
    let mut more = flags & 1 != 0;
    while more {
        more = c.u16()? & 1 != 0;
    }
    let has = |bit: u16| flags & (1 << bit) != 0;
    let mut priority = 0;
    let mut ttl_ms = None;
    for bit in (2..=15).rev() {
        if !has(bit) {
            continue;
        }
        match bit {
            13 => c.table()?,
            12 => {
                c.u8()?;
            }
            11 => priority = c.u8()?,
            8 => {
                ttl_ms = std::str::from_utf8(c.shortstr()?)
                    .ok()
                    .and_then(|s| s.parse().ok())
            }
            6 => {
                c.take(8)?;
            }
            _ => {
                c.shortstr()?;
            }
        }
    }
    Some(MessageMeta {
        msg_id,
        body_len: u32::try_from(c.0.len()).ok()?,
        priority,
        ttl_ms,
    })
}

/// Why bytes did not decode as a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// Not enough bytes for the header or the payload: a torn write at the tail.
    Short,
    /// The checksum does not match.
    BadChecksum,
    /// Checksum fine, content not understood (unknown type, malformed payload).
    Malformed,
}

/// The vhost a record ends with; records written before there were vhosts end without
/// one, and their objects are in `/`.
fn trailing_vhost(p: &mut Bytes) -> Option<String> {
    if p.has_remaining() {
        read::shortstr(p).ok()
    } else {
        Some(DEFAULT_VHOST.to_string())
    }
}

/// The vhost every broker starts with, and that records without one belong to.
pub const DEFAULT_VHOST: &str = "/";

fn put_seqs(buf: &mut BytesMut, seqs: &[u64]) {
    buf.put_u32(seqs.len() as u32);
    for s in seqs {
        buf.put_u64(*s);
    }
}

fn get_seqs(p: &mut Bytes) -> Option<Vec<u64>> {
    let n = read::u32(p).ok()? as usize;
    if p.remaining() < n.checked_mul(8)? {
        return None;
    }
    Some((0..n).map(|_| p.get_u64()).collect())
}

impl Record {
    /// Appends the record, header and checksum included.
    pub fn encode(&self, buf: &mut BytesMut) {
        if let Record::Message {
            msg_id,
            exchange,
            routing_key,
            properties,
            body,
        } = self
        {
            encode_message(buf, *msg_id, exchange, routing_key, properties, body);
            return;
        }
        let at = begin_record(buf, self.kind());
        match self {
            // Encoded by `encode_message` above.
            Record::Message { .. } => {}
            Record::Enqueue {
                queue_id,
                seq,
                msg_id,
            } => {
                buf.put_u64(*queue_id);
                buf.put_u64(*seq);
                buf.put_u64(*msg_id);
            }
            Record::Settle { queue_id, seqs } | Record::Redelivered { queue_id, seqs } => {
                buf.put_u64(*queue_id);
                put_seqs(buf, seqs);
            }
            Record::CleanShutdown | Record::Opened => {}
            Record::Queue(def) => {
                buf.put_u64(def.id);
                write::shortstr(buf, &def.name);
                buf.put_u8(u8::from(def.auto_delete));
                write::table(buf, &def.arguments);
                write::shortstr(buf, &def.vhost);
            }
            Record::NextQueueId(id) => buf.put_u64(*id),
            Record::Exchange(e) => {
                write::shortstr(buf, &e.name);
                write::shortstr(buf, &e.kind);
                buf.put_u8(u8::from(e.auto_delete) | (u8::from(e.internal) << 1));
                write::table(buf, &e.arguments);
                write::shortstr(buf, &e.vhost);
            }
            Record::Deliveries { queue_id, counts } => {
                buf.put_u64(*queue_id);
                buf.put_u32(counts.len() as u32);
                for (seq, n) in counts {
                    buf.put_u64(*seq);
                    buf.put_u32(*n);
                }
            }
            Record::RemoveQueue(id) => buf.put_u64(*id),
            Record::RemoveExchange(vhost, name) => {
                write::shortstr(buf, name);
                write::shortstr(buf, vhost);
            }
            Record::Param(p) => {
                write::shortstr(buf, &p.component);
                write::shortstr(buf, &p.vhost);
                write::shortstr(buf, &p.name);
                write::longstr(buf, &p.value);
            }
            Record::RemoveParam(component, vhost, name) => {
                write::shortstr(buf, component);
                write::shortstr(buf, vhost);
                write::shortstr(buf, name);
            }
            Record::Binding(b) | Record::RemoveBinding(b) => {
                write::shortstr(buf, &b.source);
                buf.put_u8(u8::from(b.to_exchange));
                write::shortstr(buf, &b.destination);
                write::shortstr(buf, &b.key);
                write::table(buf, &b.arguments);
                write::shortstr(buf, &b.vhost);
            }
        }
        finish_record(buf, at, &[]);
    }

    fn kind(&self) -> u8 {
        match self {
            Record::Message { .. } => T_MESSAGE,
            Record::Enqueue { .. } => T_ENQUEUE,
            Record::Settle { .. } => T_SETTLE,
            Record::Redelivered { .. } => T_REDELIVERED,
            Record::CleanShutdown => T_CLEAN_SHUTDOWN,
            Record::Opened => T_OPENED,
            Record::Queue(_) => T_QUEUE,
            Record::NextQueueId(_) => T_NEXT_QUEUE_ID,
            Record::Exchange(_) => T_EXCHANGE,
            Record::Binding(_) => T_BINDING,
            Record::Deliveries { .. } => T_DELIVERIES,
            Record::RemoveQueue(_) => T_REMOVE_QUEUE,
            Record::RemoveExchange(..) => T_REMOVE_EXCHANGE,
            Record::RemoveBinding(_) => T_REMOVE_BINDING,
            Record::Param(_) => T_PARAM,
            Record::RemoveParam(..) => T_REMOVE_PARAM,
        }
    }

    /// Decodes the record at the start of `buf`; answers it and its encoded length.
    /// `buf` is a shared slice of the file, so a message body is not copied.
    pub fn decode(buf: &Bytes) -> Result<(Record, usize), RecordError> {
        let (kind, total) = check_record(buf)?;
        let payload = buf.slice(RECORD_HEADER_LEN..total);
        let record = Self::decode_payload(kind, payload).ok_or(RecordError::Malformed)?;
        Ok((record, total))
    }

    /// Decodes a verified record from a plain slice: the common enqueue record without
    /// allocating, others from a copy (their payloads are small).
    pub fn decode_slice(raw: &[u8], kind: u8) -> Result<Record, RecordError> {
        if kind == T_ENQUEUE && raw.len() == RECORD_HEADER_LEN + 24 {
            let mut words = raw[RECORD_HEADER_LEN..]
                .chunks_exact(8)
                .map(|w| w.iter().fold(0u64, |n, b| n << 8 | u64::from(*b)));
            if let (Some(queue_id), Some(seq), Some(msg_id)) =
                (words.next(), words.next(), words.next())
            {
                return Ok(Record::Enqueue {
                    queue_id,
                    seq,
                    msg_id,
                });
            }
        }
        Self::decode_checked(&Bytes::copy_from_slice(raw), kind, raw.len())
    }

    /// Decodes a record whose header and checksum [`check_record`] already verified.
    pub fn decode_checked(buf: &Bytes, kind: u8, total: usize) -> Result<Record, RecordError> {
        Self::decode_payload(kind, buf.slice(RECORD_HEADER_LEN..total))
            .ok_or(RecordError::Malformed)
    }

    fn decode_payload(kind: u8, mut p: Bytes) -> Option<Record> {
        let p = &mut p;
        let record = match kind {
            // A transient record reads back as the message it holds.
            T_MESSAGE | T_TRANSIENT => {
                let msg_id = read::u64(p).ok()?;
                let exchange = read::shortstr(p).ok()?;
                let routing_key = read::shortstr(p).ok()?;
                let properties = BasicProperties::decode(p).ok()?;
                let body = p.split_to(p.len());
                Record::Message {
                    msg_id,
                    exchange,
                    routing_key,
                    properties,
                    body,
                }
            }
            T_ENQUEUE => Record::Enqueue {
                queue_id: read::u64(p).ok()?,
                seq: read::u64(p).ok()?,
                msg_id: read::u64(p).ok()?,
            },
            T_SETTLE => Record::Settle {
                queue_id: read::u64(p).ok()?,
                seqs: get_seqs(p)?,
            },
            T_REDELIVERED => Record::Redelivered {
                queue_id: read::u64(p).ok()?,
                seqs: get_seqs(p)?,
            },
            T_CLEAN_SHUTDOWN => Record::CleanShutdown,
            T_OPENED => Record::Opened,
            T_QUEUE => {
                let id = read::u64(p).ok()?;
                let name = read::shortstr(p).ok()?;
                let auto_delete = read::u8(p).ok()? != 0;
                let arguments = read::table(p).ok()?;
                Record::Queue(QueueDef {
                    id,
                    vhost: trailing_vhost(p)?,
                    name,
                    auto_delete,
                    arguments,
                })
            }
            T_NEXT_QUEUE_ID => Record::NextQueueId(read::u64(p).ok()?),
            T_EXCHANGE => {
                let name = read::shortstr(p).ok()?;
                let kind = read::shortstr(p).ok()?;
                let flags = read::u8(p).ok()?;
                let arguments = read::table(p).ok()?;
                Record::Exchange(ExchangeDef {
                    vhost: trailing_vhost(p)?,
                    name,
                    kind,
                    auto_delete: flags & 1 != 0,
                    internal: flags & 2 != 0,
                    arguments,
                })
            }
            T_DELIVERIES => {
                let queue_id = read::u64(p).ok()?;
                let n = read::u32(p).ok()? as usize;
                if p.remaining() < n.checked_mul(12)? {
                    return None;
                }
                let counts = (0..n).map(|_| (p.get_u64(), p.get_u32())).collect();
                Record::Deliveries { queue_id, counts }
            }
            T_BINDING | T_REMOVE_BINDING => {
                let source = read::shortstr(p).ok()?;
                let to_exchange = read::u8(p).ok()? != 0;
                let destination = read::shortstr(p).ok()?;
                let key = read::shortstr(p).ok()?;
                let arguments = read::table(p).ok()?;
                let b = BindingDef {
                    vhost: trailing_vhost(p)?,
                    source,
                    to_exchange,
                    destination,
                    key,
                    arguments,
                };
                if kind == T_BINDING {
                    Record::Binding(b)
                } else {
                    Record::RemoveBinding(b)
                }
            }
            T_REMOVE_QUEUE => Record::RemoveQueue(read::u64(p).ok()?),
            T_REMOVE_EXCHANGE => {
                let name = read::shortstr(p).ok()?;
                Record::RemoveExchange(trailing_vhost(p)?, name)
            }
            T_PARAM => Record::Param(ParamDef {
                component: read::shortstr(p).ok()?,
                vhost: read::shortstr(p).ok()?,
                name: read::shortstr(p).ok()?,
                value: read::longstr(p).ok()?,
            }),
            T_REMOVE_PARAM => Record::RemoveParam(
                read::shortstr(p).ok()?,
                read::shortstr(p).ok()?,
                read::shortstr(p).ok()?,
            ),
            _ => return None,
        };
        if p.has_remaining() {
            return None;
        }
        Some(record)
    }
}

/// Appends a Message record straight from borrowed parts: the broker logs a persistent
/// message without copying its strings or properties first.
pub fn encode_message(
    buf: &mut BytesMut,
    msg_id: u64,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) {
    encode_message_head(
        buf,
        MessageKind::Persistent,
        msg_id,
        exchange,
        routing_key,
        properties,
        body,
    );
    buf.put_slice(body);
}

/// The two records that hold a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// A persistent message of a durable queue: replayed at a restart.
    Persistent,
    /// A paged-out transient message: no restart brings it back.
    Transient,
}

/// A message record of `kind` without its body: header (length and checksum cover the
/// body too) and payload up to the body, which the caller writes right after it (a large
/// body straight from the message's `Bytes`, not copied).
pub fn encode_message_head(
    buf: &mut BytesMut,
    kind: MessageKind,
    msg_id: u64,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body: &[u8],
) {
    let tag = match kind {
        MessageKind::Persistent => T_MESSAGE,
        MessageKind::Transient => T_TRANSIENT,
    };
    let at = begin_record(buf, tag);
    buf.put_u64(msg_id);
    write::shortstr(buf, exchange);
    write::shortstr(buf, routing_key);
    properties.encode(buf);
    finish_record(buf, at, body);
}

/// Where [`begin_record`] put a record's header, for [`finish_record`].
struct RecordStart {
    start: usize,
    payload_at: usize,
}

/// Writes a record header (length, kind, checksum) with placeholders for the length and
/// checksum; the payload follows.
fn begin_record(buf: &mut BytesMut, kind: u8) -> RecordStart {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u8(kind);
    buf.put_u32(0);
    RecordStart {
        start,
        payload_at: buf.len(),
    }
}

/// Fills in the length and checksum of the record begun at `at`: its payload is what
/// follows the header in `buf`, then `rest`, which the caller writes after it.
fn finish_record(buf: &mut BytesMut, at: RecordStart, rest: &[u8]) {
    let RecordStart { start, payload_at } = at;
    let len = (buf.len() - payload_at + rest.len()) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&buf[start + 4..start + 5]);
    let crc = crc32c::crc32c_append(crc, &buf[payload_at..]);
    let crc = crc32c::crc32c_append(crc, rest);
    buf[start + 5..start + 9].copy_from_slice(&crc.to_be_bytes());
}

/// `record` as versions before vhosts wrote it: without the vhost its payload ends with
/// (other records are the same in both). For tests of opening an older data directory.
#[cfg(test)]
pub(crate) fn encode_without_vhost(record: &Record, buf: &mut BytesMut) {
    let mut whole = BytesMut::new();
    record.encode(&mut whole);
    let vhost = match record {
        Record::Queue(d) => &d.vhost,
        Record::Exchange(e) => &e.vhost,
        Record::Binding(b) | Record::RemoveBinding(b) => &b.vhost,
        Record::RemoveExchange(vhost, _) => vhost,
        _ => {
            buf.extend_from_slice(&whole);
            return;
        }
    };
    let end = whole.len() - 1 - vhost.len();
    let at = begin_record(buf, record.kind());
    buf.extend_from_slice(&whole[RECORD_HEADER_LEN..end]);
    finish_record(buf, at, &[]);
}

/// A file header with `magic`.
pub fn file_header(magic: &[u8; 8]) -> [u8; FILE_HEADER_LEN] {
    let mut h = [0u8; FILE_HEADER_LEN];
    h[..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&VERSION.to_be_bytes());
    h
}

/// Checks a file header; answers the version.
pub fn check_header(buf: &[u8], magic: &[u8; 8]) -> Result<u32, String> {
    if buf.len() < FILE_HEADER_LEN {
        return Err("file shorter than its header".into());
    }
    if &buf[..8] != magic {
        return Err("bad magic".into());
    }
    let version = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if version != VERSION {
        return Err(format!("unsupported format version {version}"));
    }
    Ok(version)
}

/// The file name of segment number `n`.
pub fn segment_name(n: u64) -> String {
    format!("{n:020}.seg")
}

/// The segment number in a segment file name.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    name.strip_suffix(".seg")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(r: Record) {
        let mut buf = BytesMut::new();
        r.encode(&mut buf);
        let bytes = buf.freeze();
        let (back, len) = Record::decode(&bytes).unwrap();
        assert_eq!(back, r);
        assert_eq!(len, bytes.len());
        for cut in 0..bytes.len() {
            assert_eq!(
                Record::decode(&bytes.slice(..cut)).unwrap_err(),
                RecordError::Short
            );
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x40;
            assert!(
                Record::decode(&Bytes::from(flipped)).is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn every_record_roundtrips_and_detects_damage() {
        roundtrip(Record::Message {
            msg_id: 7,
            exchange: "".into(),
            routing_key: "task_queue".into(),
            properties: BasicProperties {
                delivery_mode: Some(2),
                ..Default::default()
            },
            body: Bytes::from_static(b"hello..."),
        });
        roundtrip(Record::Enqueue {
            queue_id: 1,
            seq: 2,
            msg_id: 3,
        });
        roundtrip(Record::Settle {
            queue_id: 1,
            seqs: vec![1, 2, 3],
        });
        roundtrip(Record::Redelivered {
            queue_id: 1,
            seqs: vec![],
        });
        roundtrip(Record::CleanShutdown);
        roundtrip(Record::Opened);
        roundtrip(Record::NextQueueId(9));
        roundtrip(Record::Deliveries {
            queue_id: 3,
            counts: vec![(1, 2), (5, 1)],
        });
        roundtrip(Record::Exchange(ExchangeDef {
            vhost: "/".into(),
            name: "x".into(),
            kind: "topic".into(),
            auto_delete: true,
            internal: false,
            arguments: FieldTable::new(),
        }));
        roundtrip(Record::Binding(BindingDef {
            vhost: "v1".into(),
            source: "x".into(),
            to_exchange: false,
            destination: "q".into(),
            key: "a.#".into(),
            arguments: FieldTable::new(),
        }));
        roundtrip(Record::RemoveBinding(BindingDef {
            vhost: "/".into(),
            source: "x".into(),
            to_exchange: true,
            destination: "y".into(),
            key: "".into(),
            arguments: FieldTable::new(),
        }));
        roundtrip(Record::RemoveQueue(4));
        roundtrip(Record::RemoveExchange("v1".into(), "x".into()));
        roundtrip(Record::Queue(QueueDef {
            id: 4,
            vhost: "v1".into(),
            name: "q".into(),
            auto_delete: false,
            arguments: [("x-max-length", minimq_protocol::FieldValue::I32(3))]
                .into_iter()
                .collect(),
        }));
    }

    /// Records written before there were vhosts end after their arguments: their objects
    /// are in `/`.
    #[test]
    fn records_without_a_vhost_belong_to_the_default_vhost() {
        let mut buf = BytesMut::new();
        let at = begin_record(&mut buf, T_QUEUE);
        buf.put_u64(7);
        write::shortstr(&mut buf, "old");
        buf.put_u8(0);
        write::table(&mut buf, &FieldTable::new());
        finish_record(&mut buf, at, &[]);
        let at = begin_record(&mut buf, T_REMOVE_EXCHANGE);
        write::shortstr(&mut buf, "x");
        finish_record(&mut buf, at, &[]);
        let buf = buf.freeze();
        let (record, n) = Record::decode(&buf).unwrap();
        let Record::Queue(def) = record else {
            panic!("not a queue record: {record:?}")
        };
        assert_eq!(
            (def.id, def.vhost.as_str(), def.name.as_str()),
            (7, "/", "old")
        );
        let (record, _) = Record::decode(&buf.slice(n..)).unwrap();
        assert_eq!(record, Record::RemoveExchange("/".into(), "x".into()));
    }

    proptest::proptest! {
        /// The allocation-free peek agrees with the full decode on every property mix.
        #[test]
        fn peek_agrees_with_decode(
            content_type in proptest::option::of("[a-z/]{0,20}"),
            header in proptest::option::of(("[a-z]{1,8}", proptest::num::i32::ANY)),
            delivery_mode in proptest::option::of(1u8..=2),
            priority in proptest::option::of(proptest::num::u8::ANY),
            correlation_id in proptest::option::of("[a-z0-9]{0,30}"),
            expiration in proptest::option::of(proptest::prop_oneof!["[0-9]{1,9}", "[a-z]{0,4}"]),
            timestamp in proptest::option::of(proptest::num::u64::ANY),
            app_id in proptest::option::of("[a-z]{0,10}"),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            msg_id in proptest::num::u64::ANY,
        ) {
            let properties = BasicProperties {
                content_type,
                headers: header.map(|(k, v)| {
                    [(k.as_str(), minimq_protocol::FieldValue::I32(v))].into_iter().collect()
                }),
                delivery_mode,
                priority,
                correlation_id,
                expiration,
                timestamp,
                app_id,
                ..Default::default()
            };
            let mut buf = BytesMut::new();
            encode_message(&mut buf, msg_id, "ex", "rk", &properties, &body);
            let bytes = buf.freeze();
            let (kind, total) = check_record(&bytes).unwrap();
            proptest::prop_assert!(is_message(kind));
            proptest::prop_assert_eq!(total, bytes.len());
            let meta = peek_message(&bytes[RECORD_HEADER_LEN..]).unwrap();
            proptest::prop_assert_eq!(meta, MessageMeta {
                msg_id,
                body_len: body.len() as u32,
                priority: properties.priority.unwrap_or(0),
                ttl_ms: properties.expiration.as_deref().and_then(|e| e.parse().ok()),
            });
        }
    }
}
