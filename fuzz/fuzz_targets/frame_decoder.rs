//! Fuzzes `FrameCodec::decode`: arbitrary bytes, fed in arbitrary chunks, with a small
//! `frame_max`.
//!
//! Input layout: `[frame_max selector] [chunking seed] bytes...`
//!
//! Checked for every input:
//! - no panic: every call returns `Ok(Some)`, `Ok(None)` or `Err`;
//! - the chunking does not matter: the frames (and the error, if any) are the same as
//!   when the whole input is decoded at once;
//! - bounded memory: the read buffer never grows far past the bytes actually received
//!   (a peer's announced frame size is not trusted);
//! - every decoded frame re-encodes to bytes that decode to the same frame, re-encode to
//!   the same bytes, and take no more room than the frame that was received.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use minimq_protocol::{CodecError, Frame, FrameCodec};
use tokio_util::codec::Decoder;

/// How far past (twice) the received bytes the read buffer may grow: the codec reserves
/// at most 1 MiB ahead, and `BytesMut` may double that.
const SLACK: usize = 2 * 1024 * 1024 + 64 * 1024;

/// What decoding a whole stream gives: its frames, then how it ended.
#[derive(Debug, PartialEq)]
struct Outcome {
    frames: Vec<String>,
    end: End,
}

#[derive(Debug, PartialEq)]
enum End {
    /// Every byte was consumed by complete frames.
    Clean,
    /// A frame was still incomplete.
    Partial,
    /// The decoder refused the stream.
    Error(String),
}

fn frame_max(selector: u8) -> u32 {
    match selector {
        0 => 0,                // no limit
        1 => 4096,             // FRAME_MIN_SIZE
        2 => 4096 + 8,         // what the broker gives the codec after tune-ok
        s => u32::from(s) * 8, // 24..=2040: tiny limits
    }
}

/// Decodes `chunks` in order with a fresh codec, checking every frame on the way.
fn decode_stream<'a>(frame_max: u32, chunks: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut codec = FrameCodec::new(frame_max);
    let mut buf = BytesMut::new();
    let mut received = 0usize;
    let mut frames = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        received += chunk.len();
        loop {
            let announced = (buf.len() >= 7)
                .then(|| u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as usize + 8);
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    check_roundtrip(&frame, announced.expect("a frame has a header"));
                    frames.push(format!("{frame:?}"));
                }
                Ok(None) => break,
                Err(e) => {
                    return Outcome {
                        frames,
                        end: End::Error(describe(&e)),
                    }
                }
            }
            assert!(
                buf.capacity() <= 2 * received + SLACK,
                "read buffer capacity {} after {received} bytes received",
                buf.capacity()
            );
        }
        assert!(
            buf.capacity() <= 2 * received + SLACK,
            "read buffer capacity {} after {received} bytes received",
            buf.capacity()
        );
    }
    // End of stream: tokio_util's default decode_eof must agree with what is left.
    let end = match codec.decode_eof(&mut buf) {
        Ok(Some(frame)) => panic!("decode_eof produced a frame decode missed: {frame:?}"),
        Ok(None) => {
            assert!(buf.is_empty());
            End::Clean
        }
        Err(CodecError::Io(_)) => {
            assert!(!buf.is_empty());
            End::Partial
        }
        Err(e) => panic!("decode_eof found an error decode missed: {e:?}"),
    };
    Outcome { frames, end }
}

fn describe(e: &CodecError) -> String {
    match e {
        CodecError::Decode(d) => format!("{d:?}"),
        CodecError::Io(io) => panic!("decode returned an I/O error: {io}"),
    }
}

/// A decoded frame must survive encode → decode unchanged.
fn check_roundtrip(frame: &Frame, received_len: usize) {
    let mut first = BytesMut::new();
    frame.encode(&mut first);
    assert!(
        first.len() <= received_len,
        "re-encoding grew the frame from {received_len} to {} bytes: {frame:?}",
        first.len()
    );
    let mut src = first.clone();
    let again = FrameCodec::new(0)
        .decode(&mut src)
        .unwrap_or_else(|e| panic!("re-encoded frame does not decode: {e:?}\n{frame:?}"))
        .unwrap_or_else(|| panic!("re-encoded frame is incomplete: {frame:?}"));
    assert!(src.is_empty(), "re-encoded frame has trailing bytes");
    let mut second = BytesMut::new();
    again.encode(&mut second);
    assert_eq!(first, second, "encoding is not stable for {frame:?}");
    // Debug, not PartialEq: a NaN float in a field table is never equal to itself.
    assert_eq!(format!("{frame:?}"), format!("{again:?}"));
}

/// Splits `data` into chunks of pseudo-random sizes drawn from `seed`.
fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    // Sizes up to `max`: 1, 2, 4, ... 128 bytes, or up to 8 KiB.
    let max = match seed & 7 {
        7 => 8192,
        k => 1usize << k,
    };
    let mut state = u32::from(seed) | 0x9E37_7900;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let n = (state as usize % max + 1).min(rest.len());
        let (head, tail) = rest.split_at(n);
        out.push(head);
        rest = tail;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let [selector, seed, bytes @ ..] = data else {
        return;
    };
    let frame_max = frame_max(*selector);
    let whole = decode_stream(frame_max, std::iter::once(bytes));
    let chunked = decode_stream(frame_max, chunks(bytes, *seed).into_iter());
    assert_eq!(whole, chunked, "the chunking changed what was decoded");
});
