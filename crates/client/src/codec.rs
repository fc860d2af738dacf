//! The client's frame decoder: the protocol crate's [`FrameCodec`] plus RabbitMQ's
//! `connection.blocked` (10/60) and `connection.unblocked` (10/61) extension methods,
//! which the generated [`minimq_protocol::Method`] enum does not have. Without this layer
//! a memory alarm on the server would surface as an "unknown method" decode error.

use bytes::{Buf, BytesMut};
use minimq_protocol::error::DecodeError;
use minimq_protocol::frame::{FRAME_END, FRAME_METHOD, FRAME_OVERHEAD};
use minimq_protocol::types::read;
use minimq_protocol::{CodecError, Frame, FrameCodec};
use tokio_util::codec::Decoder;

/// One decoded unit from the server.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// An ordinary frame.
    Frame(Frame),
    /// `connection.blocked` with its reason.
    Blocked(String),
    /// `connection.unblocked`.
    Unblocked,
}

/// [`FrameCodec`] plus the two connection extension methods it lacks.
#[derive(Debug, Default)]
pub(crate) struct ClientCodec {
    inner: FrameCodec,
}

impl ClientCodec {
    /// A decoder accepting frames up to `frame_max` octets (0 = no limit).
    pub(crate) fn new(frame_max: u32) -> Self {
        ClientCodec {
            inner: FrameCodec::new(frame_max),
        }
    }

    /// Changes the limit once `connection.tune` is negotiated.
    pub(crate) fn set_frame_max(&mut self, frame_max: u32) {
        self.inner.set_frame_max(frame_max);
    }
}

const CLASS_CONNECTION: u16 = 10;
const METHOD_BLOCKED: u16 = 60;
const METHOD_UNBLOCKED: u16 = 61;

impl Decoder for ClientCodec {
    type Item = Incoming;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Incoming>, CodecError> {
        // Peek: a method frame on channel 0 whose class/method ids are 10/60 or 10/61.
        if src.len() >= 11 && src[0] == FRAME_METHOD && src[1] == 0 && src[2] == 0 {
            let size = u32::from_be_bytes([src[3], src[4], src[5], src[6]]) as usize;
            let class_id = u16::from_be_bytes([src[7], src[8]]);
            let method_id = u16::from_be_bytes([src[9], src[10]]);
            if size >= 4
                && class_id == CLASS_CONNECTION
                && (method_id == METHOD_BLOCKED || method_id == METHOD_UNBLOCKED)
            {
                return self.decode_blocked(src, size, method_id);
            }
        }
        Ok(self.inner.decode(src)?.map(Incoming::Frame))
    }
}

impl ClientCodec {
    fn decode_blocked(
        &mut self,
        src: &mut BytesMut,
        size: usize,
        method_id: u16,
    ) -> Result<Option<Incoming>, CodecError> {
        let total = size + FRAME_OVERHEAD;
        let frame_max = self.inner.frame_max();
        if frame_max != 0 && total as u64 > u64::from(frame_max) {
            return Err(DecodeError::FrameTooLarge {
                size: total as u64,
                frame_max,
            }
            .into());
        }
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        if src[total - 1] != FRAME_END {
            return Err(DecodeError::BadFrameEnd(src[total - 1]).into());
        }
        src.advance(7);
        let mut payload = src.split_to(size).freeze();
        src.advance(1);
        payload.advance(4); // class and method ids
        let incoming = if method_id == METHOD_BLOCKED {
            Incoming::Blocked(read::shortstr(&mut payload)?)
        } else {
            Incoming::Unblocked
        };
        if payload.has_remaining() {
            return Err(DecodeError::TrailingBytes.into());
        }
        Ok(Some(incoming))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;
    use minimq_protocol::{ChannelOpenOk, Method};

    fn method_frame(class: u16, method: u16, args: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(FRAME_METHOD);
        b.put_u16(0);
        b.put_u32(4 + args.len() as u32);
        b.put_u16(class);
        b.put_u16(method);
        b.put_slice(args);
        b.put_u8(FRAME_END);
        b
    }

    #[test]
    fn decodes_blocked_and_unblocked() {
        let mut codec = ClientCodec::new(4096);
        let mut buf = method_frame(10, 60, b"\x0bmemory high");
        buf.extend_from_slice(&method_frame(10, 61, b""));
        match codec.decode(&mut buf).unwrap() {
            Some(Incoming::Blocked(reason)) => assert_eq!(reason, "memory high"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Unblocked)
        ));
        assert!(buf.is_empty());
    }

    #[test]
    fn waits_for_a_partial_blocked_frame_and_passes_others_through() {
        let mut codec = ClientCodec::new(0);
        let full = method_frame(10, 60, b"\x01x");
        let mut buf = BytesMut::from(&full[..12]);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&full[12..]);
        assert!(matches!(
            codec.decode(&mut buf).unwrap(),
            Some(Incoming::Blocked(_))
        ));

        let mut other = BytesMut::new();
        Frame::Method(3, Method::ChannelOpenOk(ChannelOpenOk)).encode(&mut other);
        match codec.decode(&mut other).unwrap() {
            Some(Incoming::Frame(Frame::Method(3, Method::ChannelOpenOk(_)))) => {}
            got => panic!("{got:?}"),
        }
    }
}
