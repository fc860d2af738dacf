//! The layout of a stream's segment files: the file header, and one record per message
//! (its offset, its timestamp and the message itself), each with its length and a
//! checksum so that recovery can tell a whole record from a torn one.
//!
//! ```text
//! file:    header (16 octets: magic "MQSTREAM", version u32, 4 zero octets), records
//! record:  len u32 | crc32c u32 | payload (len octets)
//! payload: offset u64 | timestamp i64 (ms since the epoch) | exchange shortstr |
//!          routing key shortstr | properties (AMQP content-header layout) | body
//! ```
//! Integers are big-endian. The checksum covers the payload; the body is what is left
//! of the payload after the properties.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use minimq_protocol::types::{read, write};
use minimq_protocol::BasicProperties;

use crate::message::Message;
use crate::store::format::{check_header, file_header, FILE_HEADER_LEN};

/// The magic of a stream segment file.
pub const STREAM_MAGIC: &[u8; 8] = b"MQSTREAM";
/// Length and checksum in front of every record.
pub const RECORD_HEADER_LEN: usize = 8;
/// Offset and timestamp at the start of every payload.
const PAYLOAD_PREFIX_LEN: usize = 16;
/// The largest payload a record may announce: a message is at most what a frame
/// sequence can carry and RabbitMQ's 128 MiB `max_message_size` default bounds it; a
/// length past this is damage, not a message.
pub const MAX_PAYLOAD: usize = 512 * 1024 * 1024;

/// The header a segment file starts with.
pub fn segment_header() -> [u8; FILE_HEADER_LEN] {
    file_header(STREAM_MAGIC)
}

/// Checks a segment file's header.
pub fn check_segment_header(buf: &[u8]) -> Result<(), String> {
    check_header(buf, STREAM_MAGIC).map(|_| ())
}

/// The file name of the segment whose first record has offset `first`.
pub fn segment_file_name(first: u64) -> String {
    format!("{first:020}.stream")
}

/// The first offset in a segment file's name.
pub fn parse_segment_file_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".stream")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Appends the record of `message` at `offset`, stamped `timestamp`; answers its length.
pub fn encode_record(buf: &mut BytesMut, offset: u64, timestamp: i64, message: &Message) -> usize {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u32(0);
    let payload_at = buf.len();
    buf.put_u64(offset);
    buf.put_i64(timestamp);
    write::shortstr(buf, &message.exchange);
    write::shortstr(buf, &message.routing_key);
    message.properties.encode(buf);
    buf.put_slice(&message.body);
    let len = (buf.len() - payload_at) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&buf[payload_at..]);
    buf[start + 4..start + 8].copy_from_slice(&crc.to_be_bytes());
    buf.len() - start
}

/// What a whole, checked record at the start of a buffer says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHead {
    /// Its offset in the stream.
    pub offset: u64,
    /// When it was appended, in milliseconds since the epoch.
    pub timestamp: i64,
    /// Its length, header included.
    pub len: usize,
}

/// Why the octets at a position are not a whole record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordError {
    /// The buffer ends inside the record: more octets may complete it (or, at the end
    /// of a file, a torn tail).
    Incomplete,
    /// The octets cannot be a record: a length out of bounds or a checksum that does
    /// not match.
    Damaged,
}

/// Checks the record at the start of `buf` (length and checksum) without decoding the
/// message.
pub fn check_record(buf: &[u8]) -> Result<RecordHead, RecordError> {
    if buf.len() < RECORD_HEADER_LEN {
        return Err(RecordError::Incomplete);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if !(PAYLOAD_PREFIX_LEN..=MAX_PAYLOAD).contains(&len) {
        return Err(RecordError::Damaged);
    }
    let total = RECORD_HEADER_LEN + len;
    if buf.len() < total {
        return Err(RecordError::Incomplete);
    }
    let crc = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let payload = &buf[RECORD_HEADER_LEN..total];
    if crc32c::crc32c(payload) != crc {
        return Err(RecordError::Damaged);
    }
    let mut p = payload;
    let offset = p.get_u64();
    let timestamp = p.get_i64();
    Ok(RecordHead {
        offset,
        timestamp,
        len: total,
    })
}

/// Decodes the message of a checked record (`record` is the whole record, header
/// included, as [`check_record`] measured it). The body is a slice of `record`: no
/// copy. `None` when the payload does not parse, which a matching checksum makes a bug
/// of the writer, not damage.
pub fn decode_message(record: Bytes) -> Option<Message> {
    let mut p = record.slice(RECORD_HEADER_LEN + PAYLOAD_PREFIX_LEN..);
    let exchange = read::shortstr(&mut p).ok()?;
    let routing_key = read::shortstr(&mut p).ok()?;
    let properties = BasicProperties::decode(&mut p).ok()?;
    Some(Message::new(
        exchange.as_str().into(),
        routing_key.as_str().into(),
        properties,
        p,
    ))
}

/// The whole length of the record starting `buf` as its header announces it, once the
/// header is there (to read the rest in one go).
pub fn announced_len(buf: &[u8]) -> Option<usize> {
    let head: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(RECORD_HEADER_LEN + u32::from_be_bytes(head) as usize)
}
