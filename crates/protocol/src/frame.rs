//! Frames: the unit on the wire. `type:u8 channel:u16 size:u32 payload frame-end(0xCE)`.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::method::Method;
use crate::properties::BasicProperties;
use crate::types::read;

/// The protocol header a client sends first: `AMQP 0 0 9 1`.
pub const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Frame type of a method frame.
pub const FRAME_METHOD: u8 = 1;
/// Frame type of a content header frame.
pub const FRAME_HEADER: u8 = 2;
/// Frame type of a content body frame.
pub const FRAME_BODY: u8 = 3;
/// Frame type of a heartbeat frame.
pub const FRAME_HEARTBEAT: u8 = 8;
/// The octet that ends every frame.
pub const FRAME_END: u8 = 0xCE;
/// Octets of framing around a payload: 7 of header, 1 frame-end.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest `frame_max` a peer may negotiate.
pub const FRAME_MIN_SIZE: u32 = 4096;

/// A content header: class, body size and properties.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ContentHeader {
    /// Class of the content (60 for basic).
    pub class_id: u16,
    /// Total size of the body that follows in body frames.
    pub body_size: u64,
    /// The message properties.
    pub properties: BasicProperties,
}

impl ContentHeader {
    /// Appends the header payload.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.class_id);
        buf.put_u16(0); // weight
        buf.put_u64(self.body_size);
        self.properties.encode(buf);
    }

    /// Decodes a header payload.
    pub fn decode(mut buf: Bytes) -> Result<ContentHeader, DecodeError> {
        let class_id = read::u16(&mut buf)?;
        let _weight = read::u16(&mut buf)?;
        let body_size = read::u64(&mut buf)?;
        let properties = BasicProperties::decode(&mut buf)?;
        if buf.has_remaining() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(ContentHeader {
            class_id,
            body_size,
            properties,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// A method on a channel (0 for the connection).
    Method(u16, Method),
    /// A content header on a channel.
    Header(u16, Box<ContentHeader>),
    /// A slice of content body on a channel (zero-copy from the read buffer).
    Body(u16, Bytes),
    /// A heartbeat (always channel 0).
    Heartbeat,
}

impl Frame {
    /// The channel the frame belongs to.
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) => *c,
            Frame::Heartbeat => 0,
        }
    }

    /// Appends the whole frame, framing included.
    pub fn encode(&self, buf: &mut BytesMut) {
        match self {
            Frame::Method(ch, m) => encode_method(buf, *ch, m),
            Frame::Header(ch, h) => {
                let at = begin(buf, FRAME_HEADER, *ch);
                h.encode(buf);
                finish(buf, at);
            }
            Frame::Body(ch, b) => encode_body(buf, *ch, b),
            Frame::Heartbeat => {
                buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
            }
        }
    }

    /// Decodes a frame from its type, channel and payload (framing already checked).
    pub fn decode(kind: u8, channel: u16, payload: Bytes) -> Result<Frame, DecodeError> {
        match kind {
            FRAME_METHOD => Ok(Frame::Method(channel, Method::decode(payload)?)),
            FRAME_HEADER => Ok(Frame::Header(
                channel,
                Box::new(ContentHeader::decode(payload)?),
            )),
            FRAME_BODY => Ok(Frame::Body(channel, payload)),
            FRAME_HEARTBEAT => {
                if channel != 0 || !payload.is_empty() {
                    Err(DecodeError::BadHeartbeat)
                } else {
                    Ok(Frame::Heartbeat)
                }
            }
            other => Err(DecodeError::UnknownFrameType(other)),
        }
    }
}

/// Writes a frame header with a placeholder size; returns where the size goes.
fn begin(buf: &mut BytesMut, kind: u8, channel: u16) -> usize {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let at = buf.len();
    buf.put_u32(0);
    at
}

/// Fills in the size written by [`begin`] and appends the frame end.
fn finish(buf: &mut BytesMut, size_at: usize) {
    crate::types::write::patch_len(buf, size_at);
    buf.put_u8(FRAME_END);
}

/// Appends a method frame.
pub fn encode_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin(buf, FRAME_METHOD, channel);
    method.encode(buf);
    finish(buf, at);
}

fn encode_body(buf: &mut BytesMut, channel: u16, body: &[u8]) {
    body_frame_start(buf, channel, body.len());
    buf.put_slice(body);
    buf.put_u8(FRAME_END);
}

/// Appends a content-carrying method with its header and body, the body split into
/// frames no larger than `frame_max` (0 = no limit).
pub fn encode_content(
    buf: &mut BytesMut,
    channel: u16,
    method: &Method,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) {
    encode_method(buf, channel, method);
    encode_header_and_body(buf, channel, method.class_id(), properties, body, frame_max);
}

/// Appends a `basic.deliver` and a content header announcing `body_size` octets, writing
/// the method arguments straight from borrowed strings (the broker's per-delivery hot path
/// allocates nothing here). The body follows: [`encode_body_frames`], or a large body sent
/// straight from its `Bytes`, framed with [`body_frame_start`] and [`FRAME_END`].
#[allow(clippy::too_many_arguments)] // the fields of basic.deliver
pub fn encode_deliver_head(
    buf: &mut BytesMut,
    channel: u16,
    consumer_tag: &str,
    delivery_tag: u64,
    redelivered: bool,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
    body_size: u64,
) {
    use crate::types::write;
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(60);
    write::shortstr(buf, consumer_tag);
    buf.put_u64(delivery_tag);
    buf.put_u8(u8::from(redelivered));
    write::shortstr(buf, exchange);
    write::shortstr(buf, routing_key);
    finish(buf, at);
    encode_header(buf, channel, 60, properties, body_size);
}

/// Appends a `basic.publish` (not immediate) and a content header announcing `body_size`
/// octets, from borrowed strings, as [`encode_deliver_head`] does for deliveries (a
/// client's per-publish hot path). The body follows with [`encode_body_frames`].
pub fn encode_publish_head(
    buf: &mut BytesMut,
    channel: u16,
    exchange: &str,
    routing_key: &str,
    mandatory: bool,
    properties: &BasicProperties,
    body_size: u64,
) {
    use crate::types::write;
    let at = begin(buf, FRAME_METHOD, channel);
    buf.put_u16(60);
    buf.put_u16(40);
    buf.put_u16(0);
    write::shortstr(buf, exchange);
    write::shortstr(buf, routing_key);
    buf.put_u8(u8::from(mandatory));
    finish(buf, at);
    encode_header(buf, channel, 60, properties, body_size);
}

/// The largest body-frame payload `frame_max` allows (0 = no limit).
pub fn max_body_payload(frame_max: u32) -> usize {
    if frame_max == 0 {
        usize::MAX
    } else {
        (frame_max as usize).saturating_sub(FRAME_OVERHEAD).max(1)
    }
}

/// Appends the 7-octet header of a body frame carrying `len` octets; the payload and a
/// [`FRAME_END`] octet must follow.
pub fn body_frame_start(buf: &mut BytesMut, channel: u16, len: usize) {
    buf.put_u8(FRAME_BODY);
    buf.put_u16(channel);
    buf.put_u32(len as u32);
}

fn encode_header_and_body(
    buf: &mut BytesMut,
    channel: u16,
    class_id: u16,
    properties: &BasicProperties,
    body: &[u8],
    frame_max: u32,
) {
    encode_header(buf, channel, class_id, properties, body.len() as u64);
    encode_body_frames(buf, channel, body, frame_max);
}

fn encode_header(
    buf: &mut BytesMut,
    channel: u16,
    class_id: u16,
    properties: &BasicProperties,
    body_size: u64,
) {
    let at = begin(buf, FRAME_HEADER, channel);
    buf.put_u16(class_id);
    buf.put_u16(0);
    buf.put_u64(body_size);
    properties.encode(buf);
    finish(buf, at);
}

/// Appends `body` as body frames no larger than `frame_max` (0 = no limit).
pub fn encode_body_frames(buf: &mut BytesMut, channel: u16, body: &[u8], frame_max: u32) {
    let max_payload = max_body_payload(frame_max);
    buf.reserve(body.len() + (body.len() / max_payload + 1) * FRAME_OVERHEAD);
    for chunk in body.chunks(max_payload) {
        encode_body(buf, channel, chunk);
    }
}

/// A content-carrying method, its header and its single body frame, found whole at the
/// front of a read buffer by [`peek_content`]: where each part lies, nothing decoded or
/// copied. A reader's hot path takes a message in one step from this and falls back to
/// frame-by-frame decoding whenever `peek_content` says no.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawContent {
    /// The channel of all three frames.
    pub channel: u16,
    /// Class id of the method (and of the header).
    pub class_id: u16,
    /// Method id.
    pub method_id: u16,
    /// The method's arguments (after the class and method ids).
    pub arguments: std::ops::Range<usize>,
    /// The header's property flags and property list.
    pub properties: std::ops::Range<usize>,
    /// The body (empty, with no body frame, when the header announces 0 octets).
    pub body: std::ops::Range<usize>,
    /// Octets of the frames together.
    pub len: usize,
}

/// Finds a whole content message at the front of `buf`: a method frame, a header frame
/// of the same class on the same channel, and exactly one body frame carrying the size
/// the header announces (none for an empty body), each frame within `frame_max` (0 = no
/// limit) and properly ended. `None` for anything else — an incomplete or bad frame, a
/// body in several frames, a method or header that does not parse as one — which the
/// caller then decodes frame by frame, with the errors that brings.
pub fn peek_content(buf: &[u8], frame_max: u32) -> Option<RawContent> {
    let (method, at) = raw_frame(buf, 0, FRAME_METHOD, frame_max)?;
    let (channel, method) = method;
    if channel == 0 {
        return None;
    }
    let &[c0, c1, m0, m1] = buf.get(method.start..method.start.checked_add(4)?)? else {
        return None;
    };
    let class_id = u16::from_be_bytes([c0, c1]);
    let method_id = u16::from_be_bytes([m0, m1]);
    let ((header_channel, header), at) = raw_frame(buf, at, FRAME_HEADER, frame_max)?;
    if header_channel != channel || header.len() < 14 {
        return None;
    }
    // class (2), weight (2), body size (8), property flags (2 at least)
    let h: &[u8; 12] = buf.get(header.start..header.start + 12)?.try_into().ok()?;
    let &[h0, h1, _, _, b0, b1, b2, b3, b4, b5, b6, b7] = h;
    if u16::from_be_bytes([h0, h1]) != class_id {
        return None;
    }
    let body_size = u64::from_be_bytes([b0, b1, b2, b3, b4, b5, b6, b7]);
    let properties = header.start + 12..header.end;
    if body_size == 0 {
        return Some(RawContent {
            channel,
            class_id,
            method_id,
            arguments: method.start + 4..method.end,
            properties,
            body: at..at,
            len: at,
        });
    }
    let ((body_channel, body), end) = raw_frame(buf, at, FRAME_BODY, frame_max)?;
    if body_channel != channel || body.len() as u64 != body_size {
        return None;
    }
    Some(RawContent {
        channel,
        class_id,
        method_id,
        arguments: method.start + 4..method.end,
        properties,
        body,
        len: end,
    })
}

/// The frame of type `kind` starting at `at` in `buf`, if it is whole and within
/// `frame_max`: its channel, where its payload lies, and where the next frame starts.
fn raw_frame(
    buf: &[u8],
    at: usize,
    kind: u8,
    frame_max: u32,
) -> Option<((u16, std::ops::Range<usize>), usize)> {
    let &[head_kind, c0, c1, s0, s1, s2, s3] = buf.get(at..at.checked_add(7)?)? else {
        return None;
    };
    if head_kind != kind {
        return None;
    }
    let channel = u16::from_be_bytes([c0, c1]);
    let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
    if frame_max != 0 && size as u64 + FRAME_OVERHEAD as u64 > u64::from(frame_max) {
        return None;
    }
    let start = at + 7;
    let end = start.checked_add(size)?;
    if *buf.get(end)? != FRAME_END {
        return None;
    }
    Some(((channel, start..end), end + 1))
}

/// The octets of the short string at `*at` in a method's arguments, moving `*at` past
/// it; `None` if `args` ends first.
pub fn peek_shortstr<'a>(args: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = usize::from(*args.get(*at)?);
    let s = args.get(*at + 1..*at + 1 + len)?;
    *at += 1 + len;
    Some(s)
}

/// Octets of a `basic.ack` method frame: framing, class and method ids, delivery tag and
/// the `multiple` bit.
pub const ACK_FRAME_LEN: usize = FRAME_OVERHEAD + 4 + 8 + 1;

/// A whole `basic.ack` method frame at the front of `buf`: its channel, delivery tag and
/// `multiple` bit, read as the method decoder reads them. `None` for anything else,
/// which the caller then decodes as usual.
pub fn peek_ack(buf: &[u8]) -> Option<(u16, u64, bool)> {
    let f: &[u8; ACK_FRAME_LEN] = buf.get(..ACK_FRAME_LEN)?.try_into().ok()?;
    let &[kind, c0, c1, s0, s1, s2, s3, i0, i1, i2, i3, t0, t1, t2, t3, t4, t5, t6, t7, bits, end] =
        f;
    let size = u32::from_be_bytes([s0, s1, s2, s3]);
    if kind != FRAME_METHOD || size != 13 || [i0, i1, i2, i3] != [0, 60, 0, 80] || end != FRAME_END
    {
        return None;
    }
    let channel = u16::from_be_bytes([c0, c1]);
    let tag = u64::from_be_bytes([t0, t1, t2, t3, t4, t5, t6, t7]);
    Some((channel, tag, bits & 1 != 0))
}
