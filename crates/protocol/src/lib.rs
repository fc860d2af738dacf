//! AMQP 0-9-1 wire codec shared by the minimq broker and client.
//!
//! # Layout
//! - [`frame`]: frames, the protocol header, content headers, content encoding helpers.
//! - [`codec`]: the `tokio_util` [`codec::FrameCodec`] with `frame_max` enforcement.
//! - [`method`]: every method of every class, generated from the spec XML.
//! - [`properties`]: the 14 basic properties.
//! - [`types`]: short and long strings, field tables and values, primitive readers/writers.
//! - [`reply`]: reply codes and RabbitMQ's reply-text form.
//! - [`error`]: decode errors and the reply code each maps to.
//!
//! Bodies and long strings decode as zero-copy [`bytes::Bytes`] slices of the read buffer.
#![forbid(unsafe_code)]
// Every byte sequence must decode to a frame, "need more", or an error: no index may panic.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(
    test,
    allow(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]
#![warn(missing_docs)]

pub mod codec;
pub mod error;
pub mod frame;
pub mod idhash;
pub mod method;
pub mod properties;
pub mod reply;
pub mod types;

pub use codec::{CodecError, FrameCodec};
pub use error::DecodeError;
pub use frame::{ContentHeader, Frame, PROTOCOL_HEADER};
pub use method::*;
pub use properties::BasicProperties;
pub use reply::ReplyCode;
pub use types::{Decimal, FieldTable, FieldValue, LongString, ShortString};
