//! `tokio_util` codec for AMQP frames. The decoder checks a frame's declared size against
//! the negotiated `frame_max` as soon as the 7-octet header is in, so an oversized frame
//! is refused before its payload is buffered.

use bytes::{Buf, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::error::DecodeError;
use crate::frame::{Frame, FRAME_END, FRAME_OVERHEAD};

/// Most buffer space reserved ahead of a frame's bytes actually arriving.
const MAX_RESERVE_STEP: usize = 1024 * 1024;

/// Encodes and decodes [`Frame`]s.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    frame_max: u32,
}

/// A codec error: bad bytes from the peer, or the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The peer sent something that is not a valid frame.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl FrameCodec {
    /// A codec accepting frames up to `frame_max` octets (0 = no limit).
    pub fn new(frame_max: u32) -> Self {
        FrameCodec { frame_max }
    }

    /// The limit currently enforced.
    pub fn frame_max(&self) -> u32 {
        self.frame_max
    }

    /// Changes the limit, after `tune` negotiation.
    pub fn set_frame_max(&mut self, frame_max: u32) {
        self.frame_max = frame_max;
    }
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec::new(131_072)
    }
}

impl Decoder for FrameCodec {
    type Item = Frame;
    type Error = CodecError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, CodecError> {
        let Some(&[kind, c0, c1, s0, s1, s2, s3]) = src.get(..7) else {
            return Ok(None);
        };
        let channel = u16::from_be_bytes([c0, c1]);
        let size = u32::from_be_bytes([s0, s1, s2, s3]) as usize;
        let total = size as u64 + FRAME_OVERHEAD as u64;
        if self.frame_max != 0 && total > u64::from(self.frame_max) {
            return Err(DecodeError::FrameTooLarge {
                size: total,
                frame_max: self.frame_max,
            }
            .into());
        }
        if src.len() < size + FRAME_OVERHEAD {
            // Grow towards the frame, but never trust a peer's size for more than a step
            // at a time: with frame_max 0 (no limit) it could announce 4 GiB.
            src.reserve((size + FRAME_OVERHEAD - src.len()).min(MAX_RESERVE_STEP));
            return Ok(None);
        }
        // Present: the length check above.
        let Some(&end) = src.get(7 + size) else {
            return Ok(None);
        };
        if end != FRAME_END {
            return Err(DecodeError::BadFrameEnd(end).into());
        }
        src.advance(7);
        let payload = src.split_to(size).freeze();
        src.advance(1);
        Ok(Some(Frame::decode(kind, channel, payload)?))
    }
}

impl Encoder<Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst);
        Ok(())
    }
}

impl Encoder<&Frame> for FrameCodec {
    type Error = CodecError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), CodecError> {
        frame.encode(dst);
        Ok(())
    }
}
