//! Round-trip properties: whatever `Frame::encode` / `encode_content` write, `FrameCodec`
//! decodes back to the same value, however the bytes are split on arrival.

mod common;

use std::collections::BTreeSet;

use bytes::{Bytes, BytesMut};
use common::*;
use minimq_protocol::frame::{encode_content, encode_method, FRAME_END, FRAME_OVERHEAD};
use minimq_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{TestCaseError, TestRunner};
use tokio_util::codec::{Decoder, Encoder};

/// Encodes `frame`, checks the framing octets, decodes it with a fresh codec and checks the
/// result equals `frame` and re-encodes to the same bytes.
fn check_frame_roundtrip(frame: &Frame) -> Result<(), TestCaseError> {
    let wire = encode(frame);
    prop_assert!(wire.len() >= FRAME_OVERHEAD);
    let size = u32::from_be_bytes([wire[3], wire[4], wire[5], wire[6]]) as usize;
    prop_assert_eq!(
        size + FRAME_OVERHEAD,
        wire.len(),
        "size field disagrees with length"
    );
    prop_assert_eq!(u16::from_be_bytes([wire[1], wire[2]]), frame.channel());
    prop_assert_eq!(*wire.last().unwrap(), FRAME_END);

    let mut buf = wire.clone();
    let decoded = FrameCodec::default().decode(&mut buf);
    let decoded = match decoded {
        Ok(Some(f)) => f,
        other => return Err(TestCaseError::fail(format!("decode gave {other:?}"))),
    };
    prop_assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    prop_assert_eq!(&decoded, frame);
    prop_assert_eq!(encode(&decoded), wire, "re-encoding differs");
    Ok(())
}

/// Round trip of one method frame, plus the checks only a method frame has.
fn check_method_roundtrip(channel: u16, method: Method) -> Result<(), TestCaseError> {
    let frame = Frame::Method(channel, method.clone());
    check_frame_roundtrip(&frame)?;
    // The helper used by the broker writes the same bytes.
    let mut direct = BytesMut::new();
    encode_method(&mut direct, channel, &method);
    let wire = encode(&frame);
    prop_assert_eq!(&direct, &wire);
    // The payload starts with the method's own ids.
    prop_assert_eq!(u16::from_be_bytes([wire[7], wire[8]]), method.class_id());
    prop_assert_eq!(u16::from_be_bytes([wire[9], wire[10]]), method.method_id());
    Ok(())
}

// Every variant of `Method`, each with its own proptest runner and the default 256 cases; one
// test per class so they run in parallel.
#[test]
fn connection_methods_roundtrip() {
    for_each_method_of_class("connection.", check_method_roundtrip);
}

#[test]
fn channel_methods_roundtrip() {
    for_each_method_of_class("channel.", check_method_roundtrip);
}

#[test]
fn exchange_methods_roundtrip() {
    for_each_method_of_class("exchange.", check_method_roundtrip);
}

#[test]
fn queue_methods_roundtrip() {
    for_each_method_of_class("queue.", check_method_roundtrip);
}

#[test]
fn basic_methods_roundtrip() {
    for_each_method_of_class("basic.", check_method_roundtrip);
}

#[test]
fn confirm_methods_roundtrip() {
    for_each_method_of_class("confirm.", check_method_roundtrip);
}

#[test]
fn tx_methods_roundtrip() {
    for_each_method_of_class("tx.", check_method_roundtrip);
}

/// The per-variant strategies cover every variant exactly once, with distinct wire ids, and the
/// names they carry are the spec names `Method::name` reports (modulo `-` vs `_`).
#[test]
fn method_strategies_cover_every_variant() {
    let mut runner = TestRunner::deterministic();
    let mut ordinals = BTreeSet::new();
    let mut ids = BTreeSet::new();
    let strategies = method_strategies();
    assert_eq!(strategies.len(), METHOD_VARIANTS);
    for (name, strategy) in strategies {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        assert!(ordinals.insert(variant_ordinal(&m)), "{name} listed twice");
        assert!(
            ids.insert((m.class_id(), m.method_id())),
            "{name}: ids reused"
        );
        assert_eq!(m.name(), name.replace('-', "_"), "strategy labelled {name}");
        assert_eq!(
            CLASSES.iter().filter(|c| name.starts_with(*c)).count(),
            1,
            "{name} is in no class test"
        );
    }
    assert_eq!(ordinals.len(), METHOD_VARIANTS);
}

#[test]
fn has_content_exactly_for_the_content_methods() {
    let mut runner = TestRunner::deterministic();
    for (name, strategy) in method_strategies() {
        let m = strategy.new_tree(&mut runner).unwrap().current();
        let content = matches!(
            name,
            "basic.publish" | "basic.return" | "basic.deliver" | "basic.get-ok"
        );
        assert_eq!(m.has_content(), content, "{name}");
    }
}

#[test]
fn methods_without_arguments_have_fixed_encodings() {
    // Reserved fields are written as their zero value: empty shortstr, empty longstr, bit 0.
    let cases: Vec<(Method, &[u8])> = vec![
        (ConnectionOpenOk.into(), &[0, 10, 0, 41, 0]),
        (ConnectionCloseOk.into(), &[0, 10, 0, 51]),
        (ChannelOpen.into(), &[0, 20, 0, 10, 0]),
        (ChannelOpenOk.into(), &[0, 20, 0, 11, 0, 0, 0, 0]),
        (BasicGetEmpty.into(), &[0, 60, 0, 72, 0]),
        (TxSelect.into(), &[0, 90, 0, 10]),
        (ConfirmSelectOk.into(), &[0, 85, 0, 11]),
        (
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
            &[0, 10, 0, 40, 1, b'/', 0, 0],
        ),
    ];
    for (method, payload) in cases {
        assert_eq!(payload_of(&method), payload, "{}", method.name());
        let frame = Frame::Method(7, method);
        assert_eq!(decode_exactly_one(&encode(&frame)), frame);
    }
}

#[test]
fn bit_fields_pack_into_one_octet_in_spec_order() {
    let m = Method::QueueDeclare(QueueDeclare {
        queue: "q".into(),
        passive: true,
        durable: false,
        exclusive: true,
        auto_delete: false,
        no_wait: true,
        arguments: FieldTable::new(),
    });
    // reserved-1 (short), queue, one octet of bits, empty table
    assert_eq!(
        payload_of(&m),
        [0, 50, 0, 10, 0, 0, 1, b'q', 0b1_0101, 0, 0, 0, 0]
    );
    let m = Method::BasicNack(BasicNack {
        delivery_tag: 0x0102_0304_0506_0708,
        multiple: false,
        requeue: true,
    });
    assert_eq!(
        payload_of(&m),
        [0, 60, 0, 120, 1, 2, 3, 4, 5, 6, 7, 8, 0b10]
    );
}

proptest! {
    #[test]
    fn field_tables_roundtrip_in_a_method(table in field_table()) {
        let frame = Frame::Method(1, Method::QueueDeclare(QueueDeclare {
            queue: "q".into(),
            arguments: table,
            ..QueueDeclare::default()
        }));
        check_frame_roundtrip(&frame)?;
    }

    #[test]
    fn content_headers_roundtrip(channel in any::<u16>(), header in content_header()) {
        check_frame_roundtrip(&Frame::Header(channel, Box::new(header)))?;
    }

    /// The client's borrowed-string publish encoding is byte for byte the generic one.
    #[test]
    fn publish_head_matches_the_generic_encoding(
        channel in any::<u16>(),
        exchange in shortstr(),
        routing_key in shortstr(),
        mandatory in any::<bool>(),
        header in content_header(),
        body in body(),
        frame_max in prop_oneof![Just(0u32), 4096u32..200_000],
    ) {
        let method = Method::BasicPublish(BasicPublish {
            exchange: exchange.clone(),
            routing_key: routing_key.clone(),
            mandatory,
            immediate: false,
        });
        let mut generic = BytesMut::new();
        encode_content(&mut generic, channel, &method, &header.properties, &body, frame_max);
        let mut borrowed = BytesMut::new();
        minimq_protocol::frame::encode_publish_head(
            &mut borrowed, channel, &exchange, &routing_key, mandatory, &header.properties,
            body.len() as u64,
        );
        minimq_protocol::frame::encode_body_frames(&mut borrowed, channel, &body, frame_max);
        prop_assert_eq!(borrowed, generic);
    }

    #[test]
    fn body_frames_roundtrip(channel in any::<u16>(), body in body()) {
        let frame = Frame::Body(channel, body.clone());
        check_frame_roundtrip(&frame)?;
        // The body is carried verbatim after the 7-octet header.
        let wire = encode(&frame);
        prop_assert_eq!(&wire[7..wire.len() - 1], &body[..]);
    }

    /// A stream of frames cut into arbitrary chunks decodes to the same frames, in order; no
    /// chunk boundary makes the decoder return an error or a wrong frame.
    #[test]
    fn frame_sequences_survive_arbitrary_splits(
        frames in vec(frame(), 1..12),
        cuts in vec(1usize..200, 1..64),
    ) {
        let mut wire = BytesMut::new();
        for f in &frames {
            f.encode(&mut wire);
        }
        let wire = wire.freeze();

        let mut codec = FrameCodec::default();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut at = 0;
        let mut cut = cuts.iter().cycle();
        while at < wire.len() {
            let n = (*cut.next().unwrap()).min(wire.len() - at);
            buf.extend_from_slice(&wire[at..at + n]);
            at += n;
            while let Some(f) = codec.decode(&mut buf).map_err(|e| TestCaseError::fail(e.to_string()))? {
                decoded.push(f);
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(decoded, frames);
    }

    /// `encode_content` writes method, header and body frames of at most `frame_max` octets
    /// each whose concatenated payloads give back the body.
    #[test]
    fn encode_content_splits_bodies_at_frame_max(
        channel in any::<u16>(),
        method in content_method(),
        props in properties(),
        body in vec(any::<u8>(), 0..16_000),
        frame_max in prop_oneof![
            Just(0u32),
            Just(4096u32),
            4096u32..12_000,
            // Tiny limits: many body frames (frame_max <= 8 is in encode_content_edge_cases).
            40u32..300,
            Just(131_072u32),
        ],
    ) {
        let mut wire = BytesMut::new();
        encode_content(&mut wire, channel, &method, &props, &body, frame_max);

        // Frame sizes straight off the wire.
        let mut sizes = Vec::new();
        let mut at = 0;
        while at < wire.len() {
            let size = u32::from_be_bytes([wire[at + 3], wire[at + 4], wire[at + 5], wire[at + 6]]) as usize;
            sizes.push((wire[at], size + FRAME_OVERHEAD));
            at += size + FRAME_OVERHEAD;
        }
        prop_assert_eq!(at, wire.len());

        let frames = decode_all(&mut FrameCodec::new(0), &mut wire)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert!(wire.is_empty());
        prop_assert!(frames.len() >= 2);
        prop_assert_eq!(&frames[0], &Frame::Method(channel, method.clone()));
        prop_assert_eq!(&frames[1], &Frame::Header(channel, Box::new(ContentHeader {
            class_id: method.class_id(),
            body_size: body.len() as u64,
            properties: props,
        })));

        let max_payload = if frame_max == 0 {
            usize::MAX
        } else {
            (frame_max as usize - FRAME_OVERHEAD).max(1)
        };
        let expected_bodies = body.len().div_ceil(max_payload);
        prop_assert_eq!(frames.len() - 2, expected_bodies);
        let mut joined = Vec::new();
        for (i, f) in frames[2..].iter().enumerate() {
            match f {
                Frame::Body(ch, b) => {
                    prop_assert_eq!(*ch, channel);
                    prop_assert!(!b.is_empty(), "empty body frame");
                    // Every body frame but the last is full.
                    if i + 1 < expected_bodies {
                        prop_assert_eq!(b.len(), max_payload);
                    }
                    joined.extend_from_slice(b);
                }
                other => prop_assert!(false, "expected a body frame, got {:?}", other),
            }
        }
        prop_assert_eq!(joined, body);
        if frame_max as usize > FRAME_OVERHEAD {
            for (kind, size) in &sizes {
                if *kind == 3 {
                    prop_assert!(*size <= frame_max as usize, "body frame of {} > {}", size, frame_max);
                }
            }
        }
    }
}

#[test]
fn every_property_combination_roundtrips_with_spec_flag_bits() {
    let full = full_properties();
    // Flag bit of each property, in declaration order (bit 15 first).
    for mask in 0u16..(1 << 14) {
        let has = |i: u16| mask & (1 << i) != 0;
        let p = BasicProperties {
            content_type: full.content_type.clone().filter(|_| has(0)),
            content_encoding: full.content_encoding.clone().filter(|_| has(1)),
            headers: full.headers.clone().filter(|_| has(2)),
            delivery_mode: full.delivery_mode.filter(|_| has(3)),
            priority: full.priority.filter(|_| has(4)),
            correlation_id: full.correlation_id.clone().filter(|_| has(5)),
            reply_to: full.reply_to.clone().filter(|_| has(6)),
            expiration: full.expiration.clone().filter(|_| has(7)),
            message_id: full.message_id.clone().filter(|_| has(8)),
            timestamp: full.timestamp.filter(|_| has(9)),
            kind: full.kind.clone().filter(|_| has(10)),
            user_id: full.user_id.clone().filter(|_| has(11)),
            app_id: full.app_id.clone().filter(|_| has(12)),
            cluster_id: full.cluster_id.clone().filter(|_| has(13)),
        };
        let header = ContentHeader {
            class_id: 60,
            body_size: u64::from(mask),
            properties: p,
        };
        let mut payload = BytesMut::new();
        header.encode(&mut payload);
        // class-id, weight, body-size, then the property flags.
        let flags = u16::from_be_bytes([payload[12], payload[13]]);
        let expected: u16 = (0..14).filter(|&i| has(i)).map(|i| 1 << (15 - i)).sum();
        assert_eq!(flags, expected, "mask {mask:#x}");
        assert_eq!(ContentHeader::decode(payload.freeze()), Ok(header));
    }
}

#[test]
fn heartbeat_roundtrips() {
    let wire = encode(&Frame::Heartbeat);
    assert_eq!(&wire[..], &[8, 0, 0, 0, 0, 0, 0, 0xCE]);
    assert_eq!(decode_exactly_one(&wire), Frame::Heartbeat);
    assert_eq!(Frame::Heartbeat.channel(), 0);
}

#[test]
fn empty_body_frame_roundtrips() {
    let frame = Frame::Body(3, Bytes::new());
    assert_eq!(&encode(&frame)[..], &[3, 0, 3, 0, 0, 0, 0, 0xCE]);
    assert_eq!(decode_exactly_one(&encode(&frame)), frame);
}

#[test]
fn byte_at_a_time_decoding() {
    let frames = vec![
        Frame::Method(
            1,
            Method::BasicPublish(BasicPublish {
                exchange: "amq.direct".into(),
                routing_key: "k".into(),
                mandatory: true,
                immediate: false,
            }),
        ),
        Frame::Header(
            1,
            Box::new(ContentHeader {
                class_id: 60,
                body_size: 5,
                properties: full_properties(),
            }),
        ),
        Frame::Body(1, Bytes::from_static(b"hello")),
        Frame::Heartbeat,
        Frame::Method(0, Method::ConnectionCloseOk(ConnectionCloseOk)),
    ];
    let mut wire = BytesMut::new();
    for f in &frames {
        f.encode(&mut wire);
    }
    let mut codec = FrameCodec::default();
    let mut buf = BytesMut::new();
    let mut decoded = Vec::new();
    for &byte in wire.iter() {
        buf.extend_from_slice(&[byte]);
        if let Some(f) = codec.decode(&mut buf).unwrap() {
            decoded.push(f);
        }
        // Nothing is left pending once a frame completes: at most one frame per byte.
        assert!(codec.decode(&mut buf).unwrap().is_none());
    }
    assert!(buf.is_empty());
    assert_eq!(decoded, frames);
}

#[test]
fn codec_encoder_matches_frame_encode() {
    let frame = Frame::Method(
        9,
        Method::BasicAck(BasicAck {
            delivery_tag: 77,
            multiple: true,
        }),
    );
    let mut by_ref = BytesMut::new();
    FrameCodec::default().encode(&frame, &mut by_ref).unwrap();
    let mut by_value = BytesMut::new();
    FrameCodec::default()
        .encode(frame.clone(), &mut by_value)
        .unwrap();
    assert_eq!(by_ref, encode(&frame));
    assert_eq!(by_value, encode(&frame));
}

#[test]
fn encode_content_edge_cases() {
    let method = Method::BasicPublish(BasicPublish::default());
    let props = BasicProperties::default();
    let count_bodies = |body: &[u8], frame_max: u32| -> Vec<usize> {
        let mut wire = BytesMut::new();
        encode_content(&mut wire, 1, &method, &props, body, frame_max);
        decode_all(&mut FrameCodec::new(0), &mut wire)
            .unwrap()
            .into_iter()
            .filter_map(|f| match f {
                Frame::Body(_, b) => Some(b.len()),
                _ => None,
            })
            .collect()
    };
    // An empty body has no body frames at all.
    assert_eq!(count_bodies(b"", 4096), Vec::<usize>::new());
    assert_eq!(count_bodies(b"", 0), Vec::<usize>::new());
    // frame_max 0: no limit, a single body frame.
    assert_eq!(count_bodies(&[7; 100_000], 0), vec![100_000]);
    // Exactly one full frame, then one octet more.
    assert_eq!(count_bodies(&[7; 4088], 4096), vec![4088]);
    assert_eq!(count_bodies(&[7; 4089], 4096), vec![4088, 1]);
    assert_eq!(count_bodies(&[7; 3 * 4088], 4096), vec![4088; 3]);
    // A frame_max no larger than the framing still makes progress, one octet per frame.
    assert_eq!(count_bodies(&[7; 3], 8), vec![1, 1, 1]);
}

#[test]
fn content_frames_decode_under_their_frame_max() {
    // The decoder, configured with the same frame_max, accepts every frame encode_content makes
    // (method and header are small here).
    let body = vec![0x5A; 50_000];
    for frame_max in [4096u32, 4097, 8192, 65_536, 131_072] {
        let mut wire = BytesMut::new();
        encode_content(
            &mut wire,
            2,
            &Method::BasicDeliver(BasicDeliver::default()),
            &full_properties(),
            &body,
            frame_max,
        );
        let frames = decode_all(&mut FrameCodec::new(frame_max), &mut wire).unwrap();
        assert!(wire.is_empty());
        let joined: Vec<u8> = frames
            .iter()
            .filter_map(|f| match f {
                Frame::Body(_, b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert_eq!(joined, body);
    }
}

#[test]
fn oversized_shortstr_is_cut_at_a_char_boundary() {
    // 200 two-octet characters = 400 octets: the writer keeps 127 of them (254 octets), never
    // half a character.
    let name: String = "é".repeat(200);
    let frame = Frame::Method(
        1,
        Method::QueueDelete(QueueDelete {
            queue: name.clone(),
            ..QueueDelete::default()
        }),
    );
    match decode_exactly_one(&encode(&frame)) {
        Frame::Method(1, Method::QueueDelete(d)) => {
            assert_eq!(d.queue.len(), 254);
            assert!(name.starts_with(&d.queue));
        }
        other => panic!("{other:?}"),
    }
    let ascii = "x".repeat(300);
    let frame = Frame::Method(
        1,
        Method::BasicConsumeOk(BasicConsumeOk {
            consumer_tag: ascii,
        }),
    );
    match decode_exactly_one(&encode(&frame)) {
        Frame::Method(1, Method::BasicConsumeOk(c)) => assert_eq!(c.consumer_tag, "x".repeat(255)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn longstr_and_body_decode_as_slices_of_the_read_buffer() {
    // Zero-copy: a decoded body shares the buffer the frame arrived in.
    let body = Bytes::from(vec![1u8; 1000]);
    let mut buf = encode(&Frame::Body(1, body.clone()));
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    match FrameCodec::default().decode(&mut buf).unwrap().unwrap() {
        Frame::Body(1, b) => {
            assert_eq!(b, body);
            let p = b.as_ptr() as usize;
            assert!(p >= start && p + b.len() <= end, "body was copied");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn protocol_header_constant() {
    assert_eq!(&PROTOCOL_HEADER, b"AMQP\x00\x00\x09\x01");
}
