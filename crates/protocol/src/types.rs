//! AMQP domain types: short and long strings, field tables and field values, with
//! RabbitMQ's type tags (`t b B s u I i l L f d D S A T F V x`), and the primitive
//! readers and writers the method and property codecs use.
//!
//! The tags are the ones RabbitMQ's parser reads, with the names the AMQP 0-9-1 errata
//! gives them. `L` is read as a signed 64-bit `long`, exactly like `l`, as RabbitMQ does
//! (clients such as py-amqp send integers above 2^31 with it): it is written back as `l`.
//!
//! Readers take `&mut Bytes` so long strings and byte arrays are zero-copy slices of the
//! frame they arrived in.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;

/// A `shortstr`: at most 255 octets of UTF-8.
pub type ShortString = String;
/// A `longstr`: up to 2^32-1 octets, not necessarily UTF-8.
pub type LongString = Bytes;

/// A decimal value: `value / 10^scale`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    /// Number of decimal digits after the point.
    pub scale: u8,
    /// The unscaled value.
    pub value: u32,
}

/// One value of a field table or field array.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `t`
    Bool(bool),
    /// `b`
    I8(i8),
    /// `B`
    U8(u8),
    /// `s` (RabbitMQ: signed 16-bit)
    I16(i16),
    /// `u`
    U16(u16),
    /// `I`
    I32(i32),
    /// `i`
    U32(u32),
    /// `l`, and `L` on the way in (RabbitMQ reads both as signed 64-bit)
    I64(i64),
    /// `f`
    F32(f32),
    /// `d`
    F64(f64),
    /// `D`
    Decimal(Decimal),
    /// `S`
    LongString(LongString),
    /// `A`
    Array(Vec<FieldValue>),
    /// `T`
    Timestamp(u64),
    /// `F`
    Table(FieldTable),
    /// `V`
    Void,
    /// `x`
    Bytes(Bytes),
}

impl FieldValue {
    /// The value as an integer, whatever its integer width. A timestamp is not an integer
    /// here: RabbitMQ refuses it where an integer argument is expected.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v.into(),
            FieldValue::U8(v) => v.into(),
            FieldValue::I16(v) => v.into(),
            FieldValue::U16(v) => v.into(),
            FieldValue::I32(v) => v.into(),
            FieldValue::U32(v) => v.into(),
            FieldValue::I64(v) => v,
            _ => return None,
        })
    }

    /// The value as a string, if it is a long string holding UTF-8.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongString(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    /// The value as a boolean.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The one-letter type tag on the wire.
    pub fn tag(&self) -> u8 {
        match self {
            FieldValue::Bool(_) => b't',
            FieldValue::I8(_) => b'b',
            FieldValue::U8(_) => b'B',
            FieldValue::I16(_) => b's',
            FieldValue::U16(_) => b'u',
            FieldValue::I32(_) => b'I',
            FieldValue::U32(_) => b'i',
            FieldValue::I64(_) => b'l',
            FieldValue::F32(_) => b'f',
            FieldValue::F64(_) => b'd',
            FieldValue::Decimal(_) => b'D',
            FieldValue::LongString(_) => b'S',
            FieldValue::Array(_) => b'A',
            FieldValue::Timestamp(_) => b'T',
            FieldValue::Table(_) => b'F',
            FieldValue::Void => b'V',
            FieldValue::Bytes(_) => b'x',
        }
    }

    /// RabbitMQ's name for the value's type, as it appears in error texts.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal(_) => "decimal",
            FieldValue::LongString(_) => "longstr",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
            FieldValue::Bytes(_) => "binary",
        }
    }
}

impl From<&str> for FieldValue {
    fn from(s: &str) -> Self {
        FieldValue::LongString(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl From<String> for FieldValue {
    fn from(s: String) -> Self {
        FieldValue::LongString(Bytes::from(s))
    }
}

impl From<bool> for FieldValue {
    fn from(b: bool) -> Self {
        FieldValue::Bool(b)
    }
}

impl From<i64> for FieldValue {
    fn from(v: i64) -> Self {
        FieldValue::I64(v)
    }
}

impl From<i32> for FieldValue {
    fn from(v: i32) -> Self {
        FieldValue::I32(v)
    }
}

impl From<FieldTable> for FieldValue {
    fn from(t: FieldTable) -> Self {
        FieldValue::Table(t)
    }
}

/// A field table: named values in wire order. Lookups are linear; tables are small.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FieldTable(pub Vec<(ShortString, FieldValue)>);

impl FieldTable {
    /// An empty table.
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }

    /// The value under `key`, if present (the first one, should a peer repeat a key).
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key`, replacing an existing value.
    pub fn insert(&mut self, key: impl Into<ShortString>, value: impl Into<FieldValue>) {
        let key = key.into();
        let value = value.into();
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| *k == key) {
            slot.1 = value;
        } else {
            self.0.push((key, value));
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let pos = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(pos).1)
    }

    /// Whether the table has no entries.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Iterates over the entries in wire order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }
}

impl<K: Into<ShortString>, V: Into<FieldValue>> FromIterator<(K, V)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut t = FieldTable::new();
        for (k, v) in iter {
            t.insert(k, v);
        }
        t
    }
}

/// How deep tables and arrays may nest before the decoder refuses (stack safety).
const MAX_DEPTH: usize = 64;

/// Primitive readers. Every one checks the remaining length first: no input panics.
pub mod read {
    use super::*;

    fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
        if buf.remaining() < n {
            Err(DecodeError::Truncated)
        } else {
            Ok(())
        }
    }

    /// An octet.
    pub fn u8(buf: &mut Bytes) -> Result<u8, DecodeError> {
        need(buf, 1)?;
        Ok(buf.get_u8())
    }

    /// A short (16-bit, big-endian).
    pub fn u16(buf: &mut Bytes) -> Result<u16, DecodeError> {
        need(buf, 2)?;
        Ok(buf.get_u16())
    }

    /// A long (32-bit).
    pub fn u32(buf: &mut Bytes) -> Result<u32, DecodeError> {
        need(buf, 4)?;
        Ok(buf.get_u32())
    }

    /// A long long (64-bit).
    pub fn u64(buf: &mut Bytes) -> Result<u64, DecodeError> {
        need(buf, 8)?;
        Ok(buf.get_u64())
    }

    /// A short string.
    pub fn shortstr(buf: &mut Bytes) -> Result<ShortString, DecodeError> {
        let len = u8(buf)? as usize;
        need(buf, len)?;
        let raw = buf.split_to(len);
        String::from_utf8(raw.to_vec()).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// A long string, as a zero-copy slice.
    pub fn longstr(buf: &mut Bytes) -> Result<LongString, DecodeError> {
        let len = u32(buf)? as usize;
        need(buf, len)?;
        Ok(buf.split_to(len))
    }

    /// A field table.
    pub fn table(buf: &mut Bytes) -> Result<FieldTable, DecodeError> {
        table_at(buf, 0)
    }

    fn table_at(buf: &mut Bytes, depth: usize) -> Result<FieldTable, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep);
        }
        let len = u32(buf)? as usize;
        need(buf, len)?;
        let mut body = buf.split_to(len);
        let mut entries = Vec::new();
        while body.has_remaining() {
            let key = shortstr(&mut body)?;
            let value = value_at(&mut body, depth + 1)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }

    /// One tagged field value.
    pub fn value(buf: &mut Bytes) -> Result<FieldValue, DecodeError> {
        value_at(buf, 0)
    }

    fn value_at(buf: &mut Bytes, depth: usize) -> Result<FieldValue, DecodeError> {
        let tag = u8(buf)?;
        Ok(match tag {
            b't' => FieldValue::Bool(u8(buf)? != 0),
            b'b' => FieldValue::I8(u8(buf)? as i8),
            b'B' => FieldValue::U8(u8(buf)?),
            b's' => FieldValue::I16(u16(buf)? as i16),
            b'u' => FieldValue::U16(u16(buf)?),
            b'I' => FieldValue::I32(u32(buf)? as i32),
            b'i' => FieldValue::U32(u32(buf)?),
            b'l' | b'L' => FieldValue::I64(u64(buf)? as i64),
            b'f' => FieldValue::F32(f32::from_bits(u32(buf)?)),
            b'd' => FieldValue::F64(f64::from_bits(u64(buf)?)),
            b'D' => {
                let scale = u8(buf)?;
                let value = u32(buf)?;
                FieldValue::Decimal(Decimal { scale, value })
            }
            b'S' => FieldValue::LongString(longstr(buf)?),
            b'A' => {
                if depth > MAX_DEPTH {
                    return Err(DecodeError::TooDeep);
                }
                let len = u32(buf)? as usize;
                need(buf, len)?;
                let mut body = buf.split_to(len);
                let mut items = Vec::new();
                while body.has_remaining() {
                    items.push(value_at(&mut body, depth + 1)?);
                }
                FieldValue::Array(items)
            }
            b'T' => FieldValue::Timestamp(u64(buf)?),
            b'F' => FieldValue::Table(table_at(buf, depth + 1)?),
            b'V' => FieldValue::Void,
            b'x' => FieldValue::Bytes(longstr(buf)?),
            other => return Err(DecodeError::UnknownFieldType(other)),
        })
    }
}

/// Primitive writers.
pub mod write {
    use super::*;

    /// A short string. Strings longer than 255 octets are cut at the last character
    /// boundary that fits; callers validate names before they get here.
    pub fn shortstr(buf: &mut BytesMut, s: &str) {
        let mut len = s.len().min(255);
        while !s.is_char_boundary(len) {
            len -= 1;
        }
        buf.put_u8(len as u8);
        buf.put_slice(s.get(..len).unwrap_or_default().as_bytes());
    }

    /// A long string.
    pub fn longstr(buf: &mut BytesMut, s: &[u8]) {
        buf.put_u32(s.len() as u32);
        buf.put_slice(s);
    }

    /// A field table.
    pub fn table(buf: &mut BytesMut, t: &FieldTable) {
        let len_at = buf.len();
        buf.put_u32(0);
        for (k, v) in &t.0 {
            shortstr(buf, k);
            value(buf, v);
        }
        patch_len(buf, len_at);
    }

    /// Fills in the 32-bit length at `at` (written as a placeholder by the caller) with the
    /// number of octets written after it.
    // `at` is where this buffer's caller reserved the four octets, before what follows:
    // always in bounds, and a logic error (not input) if not.
    #[allow(clippy::indexing_slicing)]
    pub(crate) fn patch_len(buf: &mut BytesMut, at: usize) {
        let len = (buf.len() - at - 4) as u32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
    }

    /// One tagged field value.
    pub fn value(buf: &mut BytesMut, v: &FieldValue) {
        buf.put_u8(v.tag());
        match v {
            FieldValue::Bool(b) => buf.put_u8(u8::from(*b)),
            FieldValue::I8(x) => buf.put_i8(*x),
            FieldValue::U8(x) => buf.put_u8(*x),
            FieldValue::I16(x) => buf.put_i16(*x),
            FieldValue::U16(x) => buf.put_u16(*x),
            FieldValue::I32(x) => buf.put_i32(*x),
            FieldValue::U32(x) => buf.put_u32(*x),
            FieldValue::I64(x) => buf.put_i64(*x),
            FieldValue::F32(x) => buf.put_f32(*x),
            FieldValue::F64(x) => buf.put_f64(*x),
            FieldValue::Decimal(d) => {
                buf.put_u8(d.scale);
                buf.put_u32(d.value);
            }
            FieldValue::LongString(s) => longstr(buf, s),
            FieldValue::Array(items) => {
                let len_at = buf.len();
                buf.put_u32(0);
                for item in items {
                    value(buf, item);
                }
                patch_len(buf, len_at);
            }
            FieldValue::Timestamp(t) => buf.put_u64(*t),
            FieldValue::Table(t) => table(buf, t),
            FieldValue::Void => {}
            FieldValue::Bytes(b) => longstr(buf, b),
        }
    }
}
