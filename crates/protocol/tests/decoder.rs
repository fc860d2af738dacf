//! Decoder edge cases: hostile or broken input yields an error (never a panic, never an
//! unbounded wait or allocation), and each error is the one the broker maps to a reply code.

mod common;

use std::sync::OnceLock;

use bytes::{BufMut, BytesMut};
use common::*;
use minimq_protocol::frame::{FRAME_BODY, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD};
use minimq_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio_util::codec::Decoder;

/// Feeds `bytes` to a codec until it wants more input or fails. Returns the frames decoded.
fn drain(codec: &mut FrameCodec, bytes: &[u8]) -> Result<Vec<Frame>, CodecError> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = Vec::new();
    // Each successful decode consumes at least 8 octets, so this terminates.
    for _ in 0..=bytes.len() / 8 {
        match codec.decode(&mut buf)? {
            Some(f) => frames.push(f),
            None => return Ok(frames),
        }
    }
    panic!("decoder returned more frames than the input can hold");
}

/// Every method id the codec knows, to aim random arguments at real decoders.
fn known_ids() -> &'static [(u16, u16)] {
    static IDS: OnceLock<Vec<(u16, u16)>> = OnceLock::new();
    IDS.get_or_init(|| {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        method_strategies()
            .into_iter()
            .map(|(_, s)| {
                let m = s.new_tree(&mut runner).unwrap().current();
                (m.class_id(), m.method_id())
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// Never panics
// ---------------------------------------------------------------------------------------------

proptest! {
    /// Arbitrary octets: Ok(frames), Ok(None) or an error, never a panic.
    #[test]
    fn random_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..600),
        frame_max in prop_oneof![Just(4096u32), Just(131_072u32), 1u32..70_000],
    ) {
        let _ = drain(&mut FrameCodec::new(frame_max), &bytes);
    }

    /// Correct framing around arbitrary payloads, so the method, header, body and heartbeat
    /// decoders themselves see random input.
    #[test]
    fn random_payloads_never_panic(
        kind in prop_oneof![Just(FRAME_METHOD), Just(FRAME_HEADER), Just(FRAME_BODY), Just(FRAME_HEARTBEAT), any::<u8>()],
        channel in prop_oneof![Just(0u16), any::<u16>()],
        payload in vec(any::<u8>(), 0..300),
    ) {
        let _ = drain(&mut FrameCodec::default(), &raw_frame(kind, channel, &payload));
    }

    /// Known class and method ids followed by random arguments.
    #[test]
    fn random_arguments_to_known_methods_never_panic(
        which in any::<prop::sample::Index>(),
        args in vec(any::<u8>(), 0..200),
    ) {
        let ids = known_ids();
        let (c, m) = ids[which.index(ids.len())];
        let payload = method_payload(c, m, &args);
        match drain(&mut FrameCodec::default(), &raw_frame(FRAME_METHOD, 1, &payload)) {
            Ok(frames) => {
                // Whatever decoded re-encodes canonically: encode, decode, encode is stable.
                // (Octets, not values, are compared: random floats may be NaN.)
                for f in frames {
                    let once = encode(&f);
                    prop_assert_eq!(encode(&decode_exactly_one(&once)), once);
                }
            }
            Err(CodecError::Decode(_)) => {}
            Err(e) => prop_assert!(false, "unexpected {}", e),
        }
    }

    /// Valid frames with some octets overwritten.
    #[test]
    fn mutated_frames_never_panic(
        f in frame(),
        edits in vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
    ) {
        let mut wire = encode(&f);
        for (at, byte) in edits {
            let i = at.index(wire.len());
            wire[i] = byte;
        }
        let _ = drain(&mut FrameCodec::default(), &wire);
    }

    /// Cutting a method's arguments short anywhere is `Truncated`, never a panic or a
    /// half-decoded method.
    #[test]
    fn truncated_method_arguments_are_errors(m in any_method(), cut in any::<prop::sample::Index>()) {
        let payload = payload_of(&m);
        let len = cut.index(payload.len()); // strictly shorter than the payload
        let err = decode_error_of(&raw_frame(FRAME_METHOD, 1, &payload[..len]));
        prop_assert_eq!(err, DecodeError::Truncated, "{} cut to {} of {}", m.name(), len, payload.len());
    }

    /// Octets after the last argument are refused.
    #[test]
    fn trailing_bytes_after_arguments_are_errors(m in any_method(), extra in vec(any::<u8>(), 1..8)) {
        let mut payload = payload_of(&m);
        payload.extend_from_slice(&extra);
        let err = decode_error_of(&raw_frame(FRAME_METHOD, 1, &payload));
        prop_assert_eq!(err, DecodeError::TrailingBytes);
    }

    /// Every proper prefix of a frame is "need more input", and consumes nothing.
    #[test]
    fn incomplete_frames_wait_for_more(f in frame(), cut in any::<prop::sample::Index>()) {
        let wire = encode(&f);
        let len = cut.index(wire.len());
        let mut buf = BytesMut::from(&wire[..len]);
        let r = FrameCodec::default().decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(r.is_none());
        prop_assert_eq!(&buf[..], &wire[..len]);
    }

    /// Content headers cut short or padded are refused.
    #[test]
    fn broken_content_headers_are_errors(h in content_header(), cut in any::<prop::sample::Index>()) {
        let mut payload = BytesMut::new();
        h.encode(&mut payload);
        let len = cut.index(payload.len());
        prop_assert_eq!(decode_error_of(&raw_frame(FRAME_HEADER, 1, &payload[..len])), DecodeError::Truncated);
        payload.put_u8(0);
        prop_assert_eq!(decode_error_of(&raw_frame(FRAME_HEADER, 1, &payload)), DecodeError::TrailingBytes);
    }
}

// ---------------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------------

/// Just the 7-octet header of a frame announcing `size` payload octets.
fn header_only(kind: u8, channel: u16, size: u32) -> BytesMut {
    let mut b = BytesMut::new();
    b.put_u8(kind);
    b.put_u16(channel);
    b.put_u32(size);
    b
}

#[test]
fn oversized_frame_is_refused_from_its_header_alone() {
    for kind in [
        FRAME_METHOD,
        FRAME_HEADER,
        FRAME_BODY,
        FRAME_HEARTBEAT,
        0x42,
    ] {
        let mut codec = FrameCodec::new(4096);
        // Only the 7 header octets are buffered: the payload is never needed to refuse it.
        let mut buf = header_only(kind, 1, 4096 - 8 + 1);
        let err = decode_error(codec.decode(&mut buf));
        assert_eq!(
            err,
            DecodeError::FrameTooLarge {
                size: 4097,
                frame_max: 4096
            }
        );
        assert_eq!(err.reply_code(), ReplyCode::FrameError);

        // The largest frame that fits is accepted: with the header alone it waits for more.
        let mut buf = header_only(kind, 1, 4096 - 8);
        assert!(codec.decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), 7);
    }
}

#[test]
fn oversized_frame_reports_the_full_size_without_overflow() {
    let mut buf = header_only(FRAME_BODY, 1, u32::MAX);
    assert_eq!(
        decode_error(FrameCodec::default().decode(&mut buf)),
        DecodeError::FrameTooLarge {
            size: u64::from(u32::MAX) + 8,
            frame_max: 131_072
        }
    );
}

#[test]
fn fewer_than_seven_octets_wait_for_more() {
    let wire = encode(&Frame::Heartbeat);
    for len in 0..7 {
        let mut buf = BytesMut::from(&wire[..len]);
        assert!(FrameCodec::new(4096).decode(&mut buf).unwrap().is_none());
        assert_eq!(buf.len(), len);
    }
}

#[test]
fn frame_max_exactly_is_accepted_and_set_frame_max_applies() {
    let body = vec![1u8; 4096 - 8];
    let wire = encode(&Frame::Body(1, body.clone().into()));
    assert_eq!(wire.len(), 4096);
    let mut codec = FrameCodec::new(4096);
    assert_eq!(codec.frame_max(), 4096);
    assert_eq!(
        drain(&mut codec, &wire).unwrap(),
        vec![Frame::Body(1, body.into())]
    );

    codec.set_frame_max(4095);
    assert_eq!(codec.frame_max(), 4095);
    assert!(matches!(
        decode_error(codec.decode(&mut wire.clone())),
        DecodeError::FrameTooLarge {
            size: 4096,
            frame_max: 4095
        }
    ));

    // 0 means no limit.
    codec.set_frame_max(0);
    let big = encode(&Frame::Body(1, vec![0u8; 1 << 20].into()));
    assert_eq!(drain(&mut codec, &big).unwrap().len(), 1);
    assert_eq!(FrameCodec::default().frame_max(), 131_072);
}

#[test]
fn bad_frame_end_octet() {
    let frames = [
        Frame::Heartbeat,
        Frame::Body(1, vec![1, 2, 3].into()),
        Frame::Method(1, Method::TxCommit(TxCommit)),
        Frame::Header(1, Box::default()),
    ];
    for f in frames {
        let mut wire = encode(&f);
        let last = wire.len() - 1;
        for end in [0x00, 0xCD, 0xCF, 0xFF] {
            wire[last] = end;
            let err = decode_error_of(&wire);
            assert_eq!(err, DecodeError::BadFrameEnd(end));
            assert_eq!(err.reply_code(), ReplyCode::FrameError);
        }
    }
    // A wrong size field makes the frame end land on a payload octet.
    let mut wire = encode(&Frame::Body(1, vec![7, 7, 7, 7].into()));
    wire[6] = 2;
    assert_eq!(decode_error_of(&wire), DecodeError::BadFrameEnd(7));
}

#[test]
fn unknown_frame_types() {
    for kind in [0u8, 4, 5, 6, 7, 9, 0x41, 0xCE, 0xFF] {
        let err = decode_error_of(&raw_frame(kind, 0, &[]));
        assert_eq!(err, DecodeError::UnknownFrameType(kind));
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
    }
}

#[test]
fn protocol_header_mid_stream_is_refused() {
    // `AMQP\0\0\x09\x01` read as a frame header announces 0x5000_0009 octets: far over any
    // sane frame_max, so it is refused at once instead of waiting for 1.3 GB.
    let err = decode_error_of(&PROTOCOL_HEADER);
    assert!(matches!(err, DecodeError::FrameTooLarge { .. }), "{err:?}");
}

#[test]
fn unknown_methods() {
    for (c, m) in [
        (10, 99), // connection, no such method
        (30, 10), // access.request: class 30 was dropped from 0-9-1
        (60, 0),  // basic, no such method
        (85, 12), // confirm, no such method
        (0, 0),   // no such class
        (99, 10), // no such class
        (65535, 65535),
    ] {
        let err = decode_error_of(&raw_frame(FRAME_METHOD, 1, &method_payload(c, m, &[])));
        assert_eq!(err, DecodeError::UnknownMethod(c, m));
        assert_eq!(err.reply_code(), ReplyCode::CommandInvalid);
    }
    // Arguments after an unknown id do not matter.
    let err = decode_error_of(&raw_frame(
        FRAME_METHOD,
        1,
        &method_payload(10, 99, &[1, 2, 3]),
    ));
    assert_eq!(err, DecodeError::UnknownMethod(10, 99));
}

#[test]
fn method_payload_shorter_than_its_ids() {
    for payload in [&[][..], &[0], &[0, 10], &[0, 10, 0]] {
        assert_eq!(
            decode_error_of(&raw_frame(FRAME_METHOD, 1, payload)),
            DecodeError::Truncated
        );
    }
}

#[test]
fn content_header_shorter_than_its_fixed_fields() {
    for len in 0..14 {
        let payload = vec![0u8; len];
        assert_eq!(
            decode_error_of(&raw_frame(FRAME_HEADER, 1, &payload)),
            DecodeError::Truncated,
            "{len} octets"
        );
    }
}

#[test]
fn heartbeat_rules() {
    // Channel other than 0.
    for ch in [1u16, 2, 0xFFFF] {
        let err = decode_error_of(&raw_frame(FRAME_HEARTBEAT, ch, &[]));
        assert_eq!(err, DecodeError::BadHeartbeat);
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
    }
    // A payload.
    assert_eq!(
        decode_error_of(&raw_frame(FRAME_HEARTBEAT, 0, &[0])),
        DecodeError::BadHeartbeat
    );
    assert_eq!(
        decode_exactly_one(&raw_frame(FRAME_HEARTBEAT, 0, &[])),
        Frame::Heartbeat
    );
}

#[test]
fn frames_on_any_channel_keep_their_channel() {
    for ch in [0u16, 1, 2047, 65535] {
        let f = Frame::Body(ch, vec![1].into());
        assert_eq!(decode_exactly_one(&encode(&f)).channel(), ch);
    }
}

#[test]
fn decoder_resumes_after_a_frame() {
    // Two frames in one buffer, the second incomplete: one frame out, the partial one kept.
    let a = encode(&Frame::Heartbeat);
    let b = encode(&Frame::Body(5, vec![9; 20].into()));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&a);
    buf.extend_from_slice(&b[..10]);
    let mut codec = FrameCodec::default();
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Frame::Heartbeat));
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert_eq!(&buf[..], &b[..10]);
    buf.extend_from_slice(&b[10..]);
    assert_eq!(
        codec.decode(&mut buf).unwrap(),
        Some(Frame::Body(5, vec![9; 20].into()))
    );
    assert!(buf.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Field tables
// ---------------------------------------------------------------------------------------------

/// A `queue.declare` frame whose arguments table is `table` (raw, length prefix included).
fn queue_declare_with_raw_table(table: &[u8]) -> BytesMut {
    let mut args = vec![0, 0, 1, b'q', 0]; // reserved-1, queue "q", bits
    args.extend_from_slice(table);
    raw_frame(FRAME_METHOD, 1, &method_payload(50, 10, &args))
}

/// A raw table: length prefix then the entries.
fn raw_table(entries: &[u8]) -> Vec<u8> {
    let mut t = (entries.len() as u32).to_be_bytes().to_vec();
    t.extend_from_slice(entries);
    t
}

/// `depth` tables nested in one another (`{"k": {"k": ... {}}}`), `depth` >= 1. Written
/// outside-in in one pass: a `d`-level table's length field is `7 * (d - 1)`.
fn nested_tables(depth: usize) -> Vec<u8> {
    let mut t = Vec::with_capacity(7 * depth);
    for d in (2..=depth).rev() {
        t.extend_from_slice(&(7 * (d as u32 - 1)).to_be_bytes());
        t.extend_from_slice(&[1, b'k', b'F']);
    }
    t.extend_from_slice(&[0, 0, 0, 0]);
    t
}

/// A table holding `depth` arrays nested in one another (`{"k": [[[ ... ]]]}`), `depth` >= 1.
/// A `d`-level array's length field is `5 * (d - 1)`.
fn nested_arrays(depth: usize) -> Vec<u8> {
    let arrays_len = 5 * (depth - 1) + 4;
    let mut t = Vec::with_capacity(7 + arrays_len);
    t.extend_from_slice(&(3 + arrays_len as u32).to_be_bytes());
    t.extend_from_slice(&[1, b'k', b'A']);
    for d in (2..=depth).rev() {
        t.extend_from_slice(&(5 * (d as u32 - 1)).to_be_bytes());
        t.push(b'A');
    }
    t.extend_from_slice(&[0, 0, 0, 0]);
    t
}

#[test]
fn nesting_builders_agree_with_the_encoder() {
    let mut table = FieldTable::new();
    let mut array = FieldValue::Array(vec![]);
    for depth in 1..6 {
        let mut out = BytesMut::new();
        minimq_protocol::types::write::table(&mut out, &table);
        assert_eq!(&out[..], &nested_tables(depth)[..], "tables, depth {depth}");
        let holder = FieldTable(vec![("k".into(), array.clone())]);
        let mut out = BytesMut::new();
        minimq_protocol::types::write::table(&mut out, &holder);
        assert_eq!(&out[..], &nested_arrays(depth)[..], "arrays, depth {depth}");
        table = FieldTable(vec![("k".into(), FieldValue::Table(table))]);
        array = FieldValue::Array(vec![array]);
    }
}

fn table_depth(t: &FieldTable) -> usize {
    1 + t.iter().map(|(_, v)| value_depth(v)).max().unwrap_or(0)
}

fn value_depth(v: &FieldValue) -> usize {
    match v {
        FieldValue::Table(t) => table_depth(t),
        FieldValue::Array(a) => 1 + a.iter().map(value_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[test]
fn deeply_nested_tables_are_too_deep_not_a_stack_overflow() {
    // 100 000 levels: recursing that deep would blow the stack; the decoder stops early.
    for raw in [nested_tables(100_000), nested_arrays(100_000)] {
        let wire = queue_declare_with_raw_table(&raw);
        let mut buf = wire.clone();
        let err = decode_error(FrameCodec::new(0).decode(&mut buf));
        assert_eq!(err, DecodeError::TooDeep);
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
    }
    // Also inside a content header's `headers` property.
    let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0x00];
    payload.extend_from_slice(&nested_tables(100_000));
    let mut buf = raw_frame(FRAME_HEADER, 1, &payload);
    assert_eq!(
        decode_error(FrameCodec::new(0).decode(&mut buf)),
        DecodeError::TooDeep
    );
}

#[test]
fn moderately_nested_tables_decode() {
    for depth in [1, 2, 8, 16, 30] {
        // `depth` tables, or a table holding `depth` arrays.
        for (raw, expected) in [
            (nested_tables(depth), depth),
            (nested_arrays(depth), depth + 1),
        ] {
            match decode_exactly_one(&queue_declare_with_raw_table(&raw)) {
                Frame::Method(_, Method::QueueDeclare(q)) => {
                    assert_eq!(table_depth(&q.arguments), expected);
                    // ...and the encoder writes the very same octets back.
                    let mut out = BytesMut::new();
                    minimq_protocol::types::write::table(&mut out, &q.arguments);
                    assert_eq!(&out[..], &raw[..]);
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

#[test]
fn nesting_limit_is_finite_and_monotonic() {
    // Find the deepest table nesting accepted; everything deeper is TooDeep, never a panic.
    let decodes = |depth: usize| {
        let mut buf = queue_declare_with_raw_table(&nested_tables(depth));
        FrameCodec::new(0).decode(&mut buf)
    };
    let mut deepest_ok = 0;
    for depth in 1..200 {
        match decodes(depth) {
            Ok(Some(_)) => {
                assert_eq!(deepest_ok, depth - 1, "accepted after a refusal");
                deepest_ok = depth;
            }
            r => assert_eq!(decode_error(r), DecodeError::TooDeep),
        }
    }
    assert!((30..200).contains(&deepest_ok), "limit {deepest_ok}");
}

#[test]
fn every_field_type_tag_decodes() {
    // (tag, raw value octets, expected value)
    let cases: Vec<(u8, Vec<u8>, FieldValue)> = vec![
        (b't', vec![1], FieldValue::Bool(true)),
        (b't', vec![2], FieldValue::Bool(true)), // any non-zero octet is true
        (b't', vec![0], FieldValue::Bool(false)),
        (b'b', vec![0xFF], FieldValue::I8(-1)),
        (b'B', vec![0xFF], FieldValue::U8(255)),
        (b's', vec![0xFF, 0xFE], FieldValue::I16(-2)),
        (b'u', vec![0xFF, 0xFE], FieldValue::U16(0xFFFE)),
        (b'I', vec![0xFF, 0xFF, 0xFF, 0xFE], FieldValue::I32(-2)),
        (
            b'i',
            vec![0xFF, 0xFF, 0xFF, 0xFE],
            FieldValue::U32(0xFFFF_FFFE),
        ),
        (b'l', vec![0xFF; 8], FieldValue::I64(-1)),
        // 'L' is read as a signed long too (RabbitMQ's parser; the errata's long-long-uint
        // is sent by py-amqp for integers above 2^31).
        (b'L', vec![0xFF; 8], FieldValue::I64(-1)),
        (
            b'L',
            134_217_728_000u64.to_be_bytes().to_vec(),
            FieldValue::I64(134_217_728_000),
        ),
        (b'f', 1.5f32.to_be_bytes().to_vec(), FieldValue::F32(1.5)),
        (
            b'd',
            (-2.25f64).to_be_bytes().to_vec(),
            FieldValue::F64(-2.25),
        ),
        (
            b'D',
            vec![2, 0, 0, 0x30, 0x39],
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 12345,
            }),
        ),
        // Long strings need not be UTF-8.
        (
            b'S',
            vec![0, 0, 0, 2, 0xFF, 0x00],
            FieldValue::LongString(vec![0xFF, 0x00].into()),
        ),
        (
            b'A',
            vec![0, 0, 0, 2, b'V', b'V'],
            FieldValue::Array(vec![FieldValue::Void, FieldValue::Void]),
        ),
        (
            b'T',
            vec![0, 0, 0, 0, 0x65, 0x53, 0xF1, 0x00],
            FieldValue::Timestamp(1_700_000_000),
        ),
        (b'F', vec![0, 0, 0, 0], FieldValue::Table(FieldTable::new())),
        (b'V', vec![], FieldValue::Void),
        (
            b'x',
            vec![0, 0, 0, 1, 0xAB],
            FieldValue::Bytes(vec![0xAB].into()),
        ),
    ];
    let mut entries = Vec::new();
    let mut expected = FieldTable::new();
    for (i, (tag, raw, value)) in cases.iter().enumerate() {
        let key = format!("k{i}");
        entries.push(key.len() as u8);
        entries.extend_from_slice(key.as_bytes());
        entries.push(*tag);
        entries.extend_from_slice(raw);
        expected.0.push((key, value.clone()));
        // The encoder uses the same letter for the value, but for 'L', written back as
        // 'l' (what RabbitMQ's generator does with a `long`).
        let written = if *tag == b'L' { b'l' } else { *tag };
        assert_eq!(char::from(value.tag()), char::from(written), "{value:?}");
    }
    let frame = decode_exactly_one(&queue_declare_with_raw_table(&raw_table(&entries)));
    let Frame::Method(_, Method::QueueDeclare(q)) = frame else {
        panic!("{frame:?}")
    };
    assert_eq!(q.arguments, expected);
}

#[test]
fn unknown_field_type_tags() {
    // 'U' (spec: short-int) is not in RabbitMQ's set of tags (which reads 's' as a signed
    // short) and is refused, as are letters no one assigns.
    for tag in [b'U', b'c', b'z', 0u8, 0xFF] {
        let raw = raw_table(&[1, b'k', tag, 0, 0, 0, 0, 0, 0, 0, 0]);
        let err = decode_error_of(&queue_declare_with_raw_table(&raw));
        assert_eq!(err, DecodeError::UnknownFieldType(tag));
        assert_eq!(err.reply_code(), ReplyCode::FrameError);
    }
    // Inside an array too.
    let raw = raw_table(&[1, b'k', b'A', 0, 0, 0, 1, b'?']);
    assert_eq!(
        decode_error_of(&queue_declare_with_raw_table(&raw)),
        DecodeError::UnknownFieldType(b'?')
    );
}

#[test]
fn table_entries_cannot_read_past_the_table() {
    // The table says 3 octets; its entry's I32 needs 4 more. The octets after the table (the
    // rest of the frame) must not be borrowed to complete it.
    let mut raw = raw_table(&[1, b'k', b'I']);
    raw.extend_from_slice(&[0, 0, 0, 1]);
    assert_eq!(
        decode_error_of(&queue_declare_with_raw_table(&raw)),
        DecodeError::Truncated
    );
    // Same for an array inside a table.
    let mut raw = raw_table(&[1, b'k', b'A', 0, 0, 0, 1, b'I']);
    raw.extend_from_slice(&[0, 0, 0, 1]);
    assert_eq!(
        decode_error_of(&queue_declare_with_raw_table(&raw)),
        DecodeError::Truncated
    );
    // A table length past the end of the frame.
    let raw = [0, 0, 0, 200, 1, b'k', b'V'];
    assert_eq!(
        decode_error_of(&queue_declare_with_raw_table(&raw)),
        DecodeError::Truncated
    );
    // A key with no value.
    let raw = raw_table(&[1, b'k']);
    assert_eq!(
        decode_error_of(&queue_declare_with_raw_table(&raw)),
        DecodeError::Truncated
    );
}

#[test]
fn huge_declared_lengths_do_not_allocate() {
    // Long string, byte array, table and array lengths of 4 GiB inside a small frame are refused
    // as truncated, before anything is allocated for them.
    for tag in [b'S', b'x', b'F', b'A'] {
        let raw = raw_table(&[1, b'k', tag, 0xFF, 0xFF, 0xFF, 0xFF]);
        assert_eq!(
            decode_error_of(&queue_declare_with_raw_table(&raw)),
            DecodeError::Truncated
        );
    }
    // connection.start mechanisms longstr.
    let args = [0, 9, 0, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF];
    assert_eq!(
        decode_error_of(&raw_frame(FRAME_METHOD, 0, &method_payload(10, 10, &args))),
        DecodeError::Truncated
    );
}

// ---------------------------------------------------------------------------------------------
// Short strings
// ---------------------------------------------------------------------------------------------

const INVALID_UTF8: [&[u8]; 6] = [
    &[0xFF],
    &[0xC3],                   // truncated 2-octet sequence
    &[0xC0, 0x80],             // overlong NUL
    &[0xED, 0xA0, 0x80],       // UTF-16 surrogate
    &[0xF4, 0x90, 0x80, 0x80], // above U+10FFFF
    &[b'o', b'k', 0x80],
];

#[test]
fn invalid_utf8_short_strings() {
    for bad in INVALID_UTF8 {
        // A method field: queue.delete's queue name.
        let mut args = vec![0, 0, bad.len() as u8];
        args.extend_from_slice(bad);
        args.push(0);
        let err = decode_error_of(&raw_frame(FRAME_METHOD, 1, &method_payload(50, 40, &args)));
        assert_eq!(err, DecodeError::InvalidUtf8, "{bad:x?}");
        assert_eq!(err.reply_code(), ReplyCode::FrameError);

        // A table key.
        let mut entry = vec![bad.len() as u8];
        entry.extend_from_slice(bad);
        entry.push(b'V');
        let err = decode_error_of(&queue_declare_with_raw_table(&raw_table(&entry)));
        assert_eq!(err, DecodeError::InvalidUtf8);

        // A property: content-type.
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0x00];
        payload.push(bad.len() as u8);
        payload.extend_from_slice(bad);
        let err = decode_error_of(&raw_frame(FRAME_HEADER, 1, &payload));
        assert_eq!(err, DecodeError::InvalidUtf8);
    }
}

#[test]
fn multibyte_short_strings_decode() {
    let name = "队列-ünïcødé-🐇";
    let mut args = vec![0, 0, name.len() as u8];
    args.extend_from_slice(name.as_bytes());
    args.push(0b101);
    let frame = decode_exactly_one(&raw_frame(FRAME_METHOD, 1, &method_payload(50, 40, &args)));
    assert_eq!(
        frame,
        Frame::Method(
            1,
            Method::QueueDelete(QueueDelete {
                queue: name.into(),
                if_unused: true,
                if_empty: false,
                no_wait: true,
            })
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Flags
// ---------------------------------------------------------------------------------------------

#[test]
fn unused_bits_in_a_flag_octet_are_ignored() {
    // basic.ack has one bit (multiple); the other seven are ignored.
    let mut args = 5u64.to_be_bytes().to_vec();
    args.push(0xFE);
    let f = decode_exactly_one(&raw_frame(FRAME_METHOD, 1, &method_payload(60, 80, &args)));
    assert_eq!(
        f,
        Frame::Method(
            1,
            Method::BasicAck(BasicAck {
                delivery_tag: 5,
                multiple: false
            })
        )
    );
}

#[test]
fn property_flag_continuation_words_are_skipped() {
    // content-type present and the continuation bit set; a second flag word follows (announcing
    // properties the basic class does not have), then the content-type itself.
    let payload = [
        0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0x80, 0x01, 0x00, 0x00, 1, b'x',
    ];
    let f = decode_exactly_one(&raw_frame(FRAME_HEADER, 1, &payload));
    let expected = ContentHeader {
        class_id: 60,
        body_size: 3,
        properties: BasicProperties {
            content_type: Some("x".into()),
            ..BasicProperties::default()
        },
    };
    assert_eq!(f, Frame::Header(1, Box::new(expected)));
    // A continuation bit with no second word is truncated.
    let payload = [0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0x00, 0x01];
    assert_eq!(
        decode_error_of(&raw_frame(FRAME_HEADER, 1, &payload)),
        DecodeError::Truncated
    );
}

#[test]
fn content_header_weight_is_ignored() {
    let payload = [0, 60, 0xAB, 0xCD, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0];
    assert_eq!(
        decode_exactly_one(&raw_frame(FRAME_HEADER, 2, &payload)),
        Frame::Header(
            2,
            Box::new(ContentHeader {
                class_id: 60,
                body_size: 1,
                properties: BasicProperties::default()
            })
        )
    );
}

// ---------------------------------------------------------------------------------------------
// Reply codes
// ---------------------------------------------------------------------------------------------

#[test]
fn decode_errors_map_to_reply_codes() {
    use DecodeError::*;
    let cases = [
        (UnknownMethod(10, 99), 503, "COMMAND_INVALID"),
        (Truncated, 501, "FRAME_ERROR"),
        (TrailingBytes, 501, "FRAME_ERROR"),
        (InvalidUtf8, 501, "FRAME_ERROR"),
        (UnknownFieldType(b'z'), 501, "FRAME_ERROR"),
        (UnknownFrameType(9), 501, "FRAME_ERROR"),
        (BadFrameEnd(0), 501, "FRAME_ERROR"),
        (
            FrameTooLarge {
                size: 5000,
                frame_max: 4096,
            },
            501,
            "FRAME_ERROR",
        ),
        (BadHeartbeat, 501, "FRAME_ERROR"),
        (TooDeep, 501, "FRAME_ERROR"),
    ];
    for (err, code, name) in cases {
        let rc = err.reply_code();
        assert_eq!(rc.code(), code, "{err:?}");
        assert_eq!(rc.name(), name);
        // Every decode error closes the connection.
        assert!(rc.is_hard(), "{err:?}");
        assert!(!err.to_string().is_empty());
    }
    assert_eq!(
        FrameTooLarge {
            size: 5000,
            frame_max: 4096
        }
        .to_string(),
        "frame size 5000 exceeds frame_max 4096"
    );
    assert_eq!(UnknownMethod(10, 99).to_string(), "unknown method 10/99");
}

#[test]
fn reply_codes() {
    // (code, name, hard) per the AMQP 0-9-1 spec's constants.
    let all = [
        (200, "OK", false),
        (311, "CONTENT_TOO_LARGE", false),
        (312, "NO_ROUTE", false),
        (313, "NO_CONSUMERS", false),
        (320, "CONNECTION_FORCED", true),
        (402, "INVALID_PATH", true),
        (403, "ACCESS_REFUSED", false),
        (404, "NOT_FOUND", false),
        (405, "RESOURCE_LOCKED", false),
        (406, "PRECONDITION_FAILED", false),
        (501, "FRAME_ERROR", true),
        (502, "SYNTAX_ERROR", true),
        (503, "COMMAND_INVALID", true),
        (504, "CHANNEL_ERROR", true),
        (505, "UNEXPECTED_FRAME", true),
        (506, "RESOURCE_ERROR", true),
        (530, "NOT_ALLOWED", true),
        (540, "NOT_IMPLEMENTED", true),
        (541, "INTERNAL_ERROR", true),
    ];
    for (code, name, hard) in all {
        let rc = ReplyCode::from_code(code).unwrap_or_else(|| panic!("{code} unknown"));
        assert_eq!(rc.code(), code);
        assert_eq!(rc as u16, code);
        assert_eq!(rc.name(), name);
        assert_eq!(rc.is_hard(), hard, "{name}");
    }
    let known: Vec<u16> = all.iter().map(|c| c.0).collect();
    for code in 0..=u16::MAX {
        if !known.contains(&code) {
            assert_eq!(ReplyCode::from_code(code), None, "{code}");
        }
    }
    assert_eq!(
        ReplyCode::NotFound.text("no queue 'q' in vhost '/'"),
        "NOT_FOUND - no queue 'q' in vhost '/'"
    );
}
