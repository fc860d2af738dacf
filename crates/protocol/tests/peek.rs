//! `peek_content` against the codec: wherever it finds a whole content message, the
//! frame-by-frame decoder finds the same method, properties and body in the same octets;
//! wherever it declines, the bytes are incomplete, split, or not a content message.

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use minimq_protocol::frame::{encode_content, peek_content, FRAME_OVERHEAD};
use minimq_protocol::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A message in one body frame (or none) is found whole, its parts where the decoder
    /// puts them; one in several body frames, with a frame over the limit, or on channel
    /// 0, is declined. What follows
    /// it in the buffer does not matter.
    #[test]
    fn finds_what_the_decoder_decodes(
        channel in any::<u16>(),
        method in content_method(),
        props in properties(),
        body in vec(any::<u8>(), 0..3000),
        frame_max in prop_oneof![Just(0u32), Just(4096u32), 40u32..3000, Just(131_072u32)],
        after in vec(any::<u8>(), 0..20),
    ) {
        let mut wire = BytesMut::new();
        encode_content(&mut wire, channel, &method, &props, &body, frame_max);
        let len = wire.len();
        let frames = decode_all(&mut FrameCodec::new(0), &mut wire.clone())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        wire.extend_from_slice(&after);

        // A method or header larger than the limit: the codec refuses it (encode_content
        // splits only bodies).
        let too_large = frame_max != 0 && frames.iter().any(|f| encode(f).len() > frame_max as usize);
        let found = peek_content(&wire, frame_max);
        if channel == 0 || frames.len() > 3 || too_large {
            prop_assert_eq!(found, None);
            return Ok(());
        }
        let raw = found.expect("a whole message in at most one body frame");
        prop_assert_eq!(raw.len, len);
        prop_assert_eq!(raw.channel, channel);
        prop_assert_eq!((raw.class_id, raw.method_id), (method.class_id(), method.method_id()));
        prop_assert_eq!(&wire[raw.arguments.clone()], &payload_of(&method)[4..]);
        let mut p = Bytes::copy_from_slice(&wire[raw.properties.clone()]);
        prop_assert_eq!(BasicProperties::decode(&mut p).ok(), Some(props));
        prop_assert!(p.is_empty());
        prop_assert_eq!(&wire[raw.body.clone()], &body[..]);

        // Any strict prefix is incomplete.
        for cut in [0, 1, 7, len / 2, len - 1] {
            prop_assert_eq!(peek_content(&wire[..cut.min(len - 1)], frame_max), None);
        }
        // A bad frame end in any of the frames is declined (the decoder reports it).
        let mut at = 0;
        while at < len {
            let size = u32::from_be_bytes([wire[at + 3], wire[at + 4], wire[at + 5], wire[at + 6]]) as usize;
            let end = at + size + FRAME_OVERHEAD - 1;
            let mut bad = wire.clone();
            bad[end] = 0;
            prop_assert_eq!(peek_content(&bad, frame_max), None);
            at = end + 1;
        }
    }
}

#[test]
fn declines_frames_over_frame_max_and_mismatched_parts() {
    let method = Method::BasicDeliver(BasicDeliver {
        consumer_tag: "ctag".into(),
        delivery_tag: 7,
        redelivered: false,
        exchange: String::new(),
        routing_key: "q".into(),
    });
    let body = vec![7u8; 100];
    let mut wire = BytesMut::new();
    encode_content(&mut wire, 3, &method, &BasicProperties::default(), &body, 0);
    assert!(peek_content(&wire, 0).is_some());
    // The body frame is 108 octets: a limit below it refuses it as the codec would.
    assert!(peek_content(&wire, 108).is_some());
    assert_eq!(peek_content(&wire, 107), None);

    // A header of another channel, or announcing another size, is not this message's.
    let method_len = 7 + u32::from_be_bytes([wire[3], wire[4], wire[5], wire[6]]) as usize + 1;
    let mut other_channel = wire.clone();
    other_channel[method_len + 2] = 4;
    assert_eq!(peek_content(&other_channel, 0), None);
    let mut other_size = wire.clone();
    other_size[method_len + 7 + 11] = 99;
    assert_eq!(peek_content(&other_size, 0), None);

    // A method frame followed by a method frame is not content.
    let mut two_methods = BytesMut::new();
    two_methods.extend_from_slice(&wire[..method_len]);
    two_methods.extend_from_slice(&wire[..method_len]);
    assert_eq!(peek_content(&two_methods, 0), None);
}

proptest! {
    /// A `basic.ack` frame is read as the decoder reads it; a nack or reject of the same
    /// size, a prefix of the frame, or a broken frame end, is not an ack.
    #[test]
    fn peek_ack_reads_what_the_decoder_reads(
        channel in any::<u16>(),
        delivery_tag in any::<u64>(),
        multiple in any::<bool>(),
        after in vec(any::<u8>(), 0..30),
    ) {
        use minimq_protocol::frame::{encode_method, peek_ack, ACK_FRAME_LEN};
        let ack = Method::BasicAck(BasicAck { delivery_tag, multiple });
        let mut wire = BytesMut::new();
        encode_method(&mut wire, channel, &ack);
        prop_assert_eq!(wire.len(), ACK_FRAME_LEN);
        prop_assert_eq!(decode_exactly_one(&wire), Frame::Method(channel, ack));
        for cut in 0..ACK_FRAME_LEN {
            prop_assert_eq!(peek_ack(&wire[..cut]), None);
        }
        let mut bad = wire.clone();
        bad[ACK_FRAME_LEN - 1] = 0;
        prop_assert_eq!(peek_ack(&bad), None);
        wire.extend_from_slice(&after);
        prop_assert_eq!(peek_ack(&wire), Some((channel, delivery_tag, multiple)));

        for other in [
            Method::BasicNack(BasicNack { delivery_tag, multiple, requeue: true }),
            Method::BasicReject(BasicReject { delivery_tag, requeue: multiple }),
        ] {
            let mut wire = BytesMut::new();
            encode_method(&mut wire, channel, &other);
            prop_assert_eq!(peek_ack(&wire), None);
        }
    }
}
