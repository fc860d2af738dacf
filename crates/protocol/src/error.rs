//! Decoding errors. Each maps to the AMQP reply code a peer is told when it sends bytes
//! that do not decode; all of them are connection errors.

use crate::reply::ReplyCode;

/// Why a frame or method payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The payload ended before a field was complete.
    #[error("payload too short")]
    Truncated,
    /// Bytes were left over after the last field of a method.
    #[error("trailing bytes after method arguments")]
    TrailingBytes,
    /// A short string was not valid UTF-8.
    #[error("short string is not valid UTF-8")]
    InvalidUtf8,
    /// A field-table value carried a type tag this protocol does not know.
    #[error("unknown field value type {0:?}")]
    UnknownFieldType(u8),
    /// The class and method ids name no known method.
    #[error("unknown method {0}/{1}")]
    UnknownMethod(u16, u16),
    /// A frame type other than method, header, body or heartbeat.
    #[error("unknown frame type {0}")]
    UnknownFrameType(u8),
    /// The octet after a frame's payload was not 0xCE.
    #[error("bad frame end octet {0:#x}")]
    BadFrameEnd(u8),
    /// A frame's declared size exceeds the negotiated `frame_max`.
    #[error("frame size {size} exceeds frame_max {frame_max}")]
    FrameTooLarge {
        /// The size the frame header announced (payload plus 8 octets of framing).
        size: u64,
        /// The negotiated limit.
        frame_max: u32,
    },
    /// A heartbeat frame on a channel other than 0, or with a payload.
    #[error("malformed heartbeat frame")]
    BadHeartbeat,
    /// Field tables nested deeper than the decoder allows.
    #[error("field table nested too deeply")]
    TooDeep,
}

impl DecodeError {
    /// The reply code RabbitMQ sends for this error.
    pub fn reply_code(&self) -> ReplyCode {
        match self {
            DecodeError::UnknownMethod(..) => ReplyCode::CommandInvalid,
            DecodeError::UnknownFrameType(_) | DecodeError::BadFrameEnd(_) => ReplyCode::FrameError,
            DecodeError::FrameTooLarge { .. } | DecodeError::BadHeartbeat => ReplyCode::FrameError,
            _ => ReplyCode::FrameError,
        }
    }
}
