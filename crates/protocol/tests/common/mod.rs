//! Shared proptest strategies and helpers for the `minimq-protocol` integration tests.
//!
//! Every integration test crate includes this module with `mod common;`; not every crate uses
//! every helper, hence the `dead_code` allowance.
#![allow(dead_code)]

use bytes::{Bytes, BytesMut};
use minimq_protocol::*;
use proptest::collection::vec;
use proptest::num::{f32 as pf32, f64 as pf64};
use proptest::prelude::*;
use proptest::strategy::Union;
use tokio_util::codec::Decoder;

// ---------------------------------------------------------------------------------------------
// Primitive strategies
// ---------------------------------------------------------------------------------------------

/// Cuts `s` at the last character boundary at or below 255 octets.
pub fn truncate_255(mut s: String) -> String {
    while s.len() > 255 {
        s.pop();
    }
    s
}

/// A `shortstr`: at most 255 octets of UTF-8. Mostly ASCII names, sometimes arbitrary Unicode
/// (multi-byte characters included), sometimes right at the 255-octet limit.
pub fn shortstr() -> BoxedStrategy<String> {
    prop_oneof![
        6 => "[a-zA-Z0-9._:/-]{0,24}",
        2 => any::<String>().prop_map(truncate_255),
        1 => vec(any::<char>(), 0..300).prop_map(|cs| truncate_255(cs.into_iter().collect())),
        1 => "[a-z]{255}",
        1 => Just(String::new()),
    ]
    .boxed()
}

/// A `longstr` (arbitrary octets, not necessarily UTF-8).
pub fn longstr() -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..48).prop_map(Bytes::from).boxed()
}

/// Any `f32` but NaN (NaN != NaN would make equality assertions meaningless).
pub fn f32_non_nan() -> impl Strategy<Value = f32> {
    pf32::POSITIVE | pf32::NEGATIVE | pf32::NORMAL | pf32::SUBNORMAL | pf32::ZERO | pf32::INFINITE
}

/// Any `f64` but NaN.
pub fn f64_non_nan() -> impl Strategy<Value = f64> {
    pf64::POSITIVE | pf64::NEGATIVE | pf64::NORMAL | pf64::SUBNORMAL | pf64::ZERO | pf64::INFINITE
}

/// A field value that holds no other values: every type tag but `A` and `F`.
pub fn leaf_value() -> BoxedStrategy<FieldValue> {
    prop_oneof![
        any::<bool>().prop_map(FieldValue::Bool),
        any::<i8>().prop_map(FieldValue::I8),
        any::<u8>().prop_map(FieldValue::U8),
        any::<i16>().prop_map(FieldValue::I16),
        any::<u16>().prop_map(FieldValue::U16),
        any::<i32>().prop_map(FieldValue::I32),
        any::<u32>().prop_map(FieldValue::U32),
        any::<i64>().prop_map(FieldValue::I64),
        f32_non_nan().prop_map(FieldValue::F32),
        f64_non_nan().prop_map(FieldValue::F64),
        (any::<u8>(), any::<u32>())
            .prop_map(|(scale, value)| FieldValue::Decimal(Decimal { scale, value })),
        longstr().prop_map(FieldValue::LongString),
        any::<u64>().prop_map(FieldValue::Timestamp),
        Just(FieldValue::Void),
        longstr().prop_map(FieldValue::Bytes),
    ]
    .boxed()
}

/// Any field value, with arrays and tables nested a few levels deep.
pub fn field_value() -> BoxedStrategy<FieldValue> {
    leaf_value()
        .prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                vec(inner.clone(), 0..4).prop_map(FieldValue::Array),
                vec((shortstr(), inner), 0..4)
                    .prop_map(|entries| FieldValue::Table(FieldTable(entries))),
            ]
        })
        .boxed()
}

/// A field table holding every value type, nested; keys may repeat (the wire allows it).
pub fn field_table() -> BoxedStrategy<FieldTable> {
    vec((shortstr(), field_value()), 0..5)
        .prop_map(FieldTable)
        .boxed()
}

/// A table that, like most real argument tables, is usually empty or small.
pub fn arguments() -> BoxedStrategy<FieldTable> {
    prop_oneof![1 => Just(FieldTable::new()), 3 => field_table()].boxed()
}

// ---------------------------------------------------------------------------------------------
// Methods
// ---------------------------------------------------------------------------------------------

/// Builds `(name, strategy)` for one method variant. The variant and its struct share a name.
macro_rules! strat {
    ($v:ident, $name:literal) => {
        ($name, Just(Method::$v($v)).boxed())
    };
    ($v:ident, $name:literal, $($f:ident in $s:expr),+ $(,)?) => {
        (
            $name,
            ($($s,)+)
                .prop_map(|($($f,)+)| Method::$v($v { $($f),+ }))
                .boxed(),
        )
    };
}

/// One strategy per variant of [`Method`], each with the method's name, every field generated.
pub fn method_strategies() -> Vec<(&'static str, BoxedStrategy<Method>)> {
    let b = any::<bool>;
    vec![
        // connection
        strat!(ConnectionStart, "connection.start",
            version_major in any::<u8>(), version_minor in any::<u8>(),
            server_properties in field_table(), mechanisms in longstr(), locales in longstr()),
        strat!(ConnectionStartOk, "connection.start-ok",
            client_properties in field_table(), mechanism in shortstr(),
            response in longstr(), locale in shortstr()),
        strat!(ConnectionSecure, "connection.secure", challenge in longstr()),
        strat!(ConnectionSecureOk, "connection.secure-ok", response in longstr()),
        strat!(ConnectionTune, "connection.tune",
            channel_max in any::<u16>(), frame_max in any::<u32>(), heartbeat in any::<u16>()),
        strat!(ConnectionTuneOk, "connection.tune-ok",
            channel_max in any::<u16>(), frame_max in any::<u32>(), heartbeat in any::<u16>()),
        strat!(ConnectionOpen, "connection.open", virtual_host in shortstr()),
        strat!(ConnectionOpenOk, "connection.open-ok"),
        strat!(ConnectionClose, "connection.close",
            reply_code in any::<u16>(), reply_text in shortstr(),
            class_id in any::<u16>(), method_id in any::<u16>()),
        strat!(ConnectionCloseOk, "connection.close-ok"),
        strat!(ConnectionBlocked, "connection.blocked", reason in shortstr()),
        strat!(ConnectionUnblocked, "connection.unblocked"),
        strat!(ConnectionUpdateSecret, "connection.update-secret",
            new_secret in longstr(), reason in shortstr()),
        strat!(ConnectionUpdateSecretOk, "connection.update-secret-ok"),
        // channel
        strat!(ChannelOpen, "channel.open"),
        strat!(ChannelOpenOk, "channel.open-ok"),
        strat!(ChannelFlow, "channel.flow", active in b()),
        strat!(ChannelFlowOk, "channel.flow-ok", active in b()),
        strat!(ChannelClose, "channel.close",
            reply_code in any::<u16>(), reply_text in shortstr(),
            class_id in any::<u16>(), method_id in any::<u16>()),
        strat!(ChannelCloseOk, "channel.close-ok"),
        // exchange
        strat!(ExchangeDeclare, "exchange.declare",
            exchange in shortstr(), type_ in shortstr(), passive in b(), durable in b(),
            auto_delete in b(), internal in b(), no_wait in b(), arguments in arguments()),
        strat!(ExchangeDeclareOk, "exchange.declare-ok"),
        strat!(ExchangeDelete, "exchange.delete",
            exchange in shortstr(), if_unused in b(), no_wait in b()),
        strat!(ExchangeDeleteOk, "exchange.delete-ok"),
        strat!(ExchangeBind, "exchange.bind",
            destination in shortstr(), source in shortstr(), routing_key in shortstr(),
            no_wait in b(), arguments in arguments()),
        strat!(ExchangeBindOk, "exchange.bind-ok"),
        strat!(ExchangeUnbind, "exchange.unbind",
            destination in shortstr(), source in shortstr(), routing_key in shortstr(),
            no_wait in b(), arguments in arguments()),
        strat!(ExchangeUnbindOk, "exchange.unbind-ok"),
        // queue
        strat!(QueueDeclare, "queue.declare",
            queue in shortstr(), passive in b(), durable in b(), exclusive in b(),
            auto_delete in b(), no_wait in b(), arguments in arguments()),
        strat!(QueueDeclareOk, "queue.declare-ok",
            queue in shortstr(), message_count in any::<u32>(), consumer_count in any::<u32>()),
        strat!(QueueBind, "queue.bind",
            queue in shortstr(), exchange in shortstr(), routing_key in shortstr(),
            no_wait in b(), arguments in arguments()),
        strat!(QueueBindOk, "queue.bind-ok"),
        strat!(QueueUnbind, "queue.unbind",
            queue in shortstr(), exchange in shortstr(), routing_key in shortstr(),
            arguments in arguments()),
        strat!(QueueUnbindOk, "queue.unbind-ok"),
        strat!(QueuePurge, "queue.purge", queue in shortstr(), no_wait in b()),
        strat!(QueuePurgeOk, "queue.purge-ok", message_count in any::<u32>()),
        strat!(QueueDelete, "queue.delete",
            queue in shortstr(), if_unused in b(), if_empty in b(), no_wait in b()),
        strat!(QueueDeleteOk, "queue.delete-ok", message_count in any::<u32>()),
        // basic
        strat!(BasicQos, "basic.qos",
            prefetch_size in any::<u32>(), prefetch_count in any::<u16>(), global in b()),
        strat!(BasicQosOk, "basic.qos-ok"),
        strat!(BasicConsume, "basic.consume",
            queue in shortstr(), consumer_tag in shortstr(), no_local in b(), no_ack in b(),
            exclusive in b(), no_wait in b(), arguments in arguments()),
        strat!(BasicConsumeOk, "basic.consume-ok", consumer_tag in shortstr()),
        strat!(BasicCancel, "basic.cancel", consumer_tag in shortstr(), no_wait in b()),
        strat!(BasicCancelOk, "basic.cancel-ok", consumer_tag in shortstr()),
        strat!(BasicPublish, "basic.publish",
            exchange in shortstr(), routing_key in shortstr(), mandatory in b(), immediate in b()),
        strat!(BasicReturn, "basic.return",
            reply_code in any::<u16>(), reply_text in shortstr(),
            exchange in shortstr(), routing_key in shortstr()),
        strat!(BasicDeliver, "basic.deliver",
            consumer_tag in shortstr(), delivery_tag in any::<u64>(), redelivered in b(),
            exchange in shortstr(), routing_key in shortstr()),
        strat!(BasicGet, "basic.get", queue in shortstr(), no_ack in b()),
        strat!(BasicGetOk, "basic.get-ok",
            delivery_tag in any::<u64>(), redelivered in b(), exchange in shortstr(),
            routing_key in shortstr(), message_count in any::<u32>()),
        strat!(BasicGetEmpty, "basic.get-empty"),
        strat!(BasicAck, "basic.ack", delivery_tag in any::<u64>(), multiple in b()),
        strat!(BasicReject, "basic.reject", delivery_tag in any::<u64>(), requeue in b()),
        strat!(BasicRecoverAsync, "basic.recover-async", requeue in b()),
        strat!(BasicRecover, "basic.recover", requeue in b()),
        strat!(BasicRecoverOk, "basic.recover-ok"),
        strat!(BasicNack, "basic.nack",
            delivery_tag in any::<u64>(), multiple in b(), requeue in b()),
        // tx
        strat!(TxSelect, "tx.select"),
        strat!(TxSelectOk, "tx.select-ok"),
        strat!(TxCommit, "tx.commit"),
        strat!(TxCommitOk, "tx.commit-ok"),
        strat!(TxRollback, "tx.rollback"),
        strat!(TxRollbackOk, "tx.rollback-ok"),
        // confirm
        strat!(ConfirmSelect, "confirm.select", nowait in b()),
        strat!(ConfirmSelectOk, "confirm.select-ok"),
    ]
}

/// The classes, as the prefixes of the names [`method_strategies`] gives.
pub const CLASSES: [&str; 7] = [
    "connection.",
    "channel.",
    "exchange.",
    "queue.",
    "basic.",
    "confirm.",
    "tx.",
];

/// Runs `check` over every method variant of the class named by `prefix` (one of [`CLASSES`]),
/// each variant with its own proptest runner and the default number of cases. The channel
/// number is generated too.
pub fn for_each_method_of_class(
    prefix: &str,
    check: impl Fn(u16, Method) -> Result<(), proptest::test_runner::TestCaseError>,
) {
    use proptest::test_runner::{Config, TestRunner};
    let mut ran = 0;
    for (name, strategy) in method_strategies() {
        if !name.starts_with(prefix) {
            continue;
        }
        ran += 1;
        let mut runner = TestRunner::new(Config::default());
        if let Err(e) = runner.run(&(any::<u16>(), strategy), |(ch, m)| check(ch, m)) {
            panic!("{name}: {e}");
        }
    }
    assert!(ran > 0, "no methods in class {prefix}");
}

/// Number of variants of [`Method`]; kept honest by the exhaustive match in [`variant_ordinal`].
pub const METHOD_VARIANTS: usize = 64;

/// A distinct number per variant. The match has no wildcard arm, so adding a variant to
/// [`Method`] breaks the build here until the strategies above learn about it.
pub fn variant_ordinal(m: &Method) -> usize {
    match m {
        Method::ConnectionStart(_) => 0,
        Method::ConnectionStartOk(_) => 1,
        Method::ConnectionSecure(_) => 2,
        Method::ConnectionSecureOk(_) => 3,
        Method::ConnectionTune(_) => 4,
        Method::ConnectionTuneOk(_) => 5,
        Method::ConnectionOpen(_) => 6,
        Method::ConnectionOpenOk(_) => 7,
        Method::ConnectionClose(_) => 8,
        Method::ConnectionCloseOk(_) => 9,
        Method::ChannelOpen(_) => 10,
        Method::ChannelOpenOk(_) => 11,
        Method::ChannelFlow(_) => 12,
        Method::ChannelFlowOk(_) => 13,
        Method::ChannelClose(_) => 14,
        Method::ChannelCloseOk(_) => 15,
        Method::ExchangeDeclare(_) => 16,
        Method::ExchangeDeclareOk(_) => 17,
        Method::ExchangeDelete(_) => 18,
        Method::ExchangeDeleteOk(_) => 19,
        Method::ExchangeBind(_) => 20,
        Method::ExchangeBindOk(_) => 21,
        Method::ExchangeUnbind(_) => 22,
        Method::ExchangeUnbindOk(_) => 23,
        Method::QueueDeclare(_) => 24,
        Method::QueueDeclareOk(_) => 25,
        Method::QueueBind(_) => 26,
        Method::QueueBindOk(_) => 27,
        Method::QueueUnbind(_) => 28,
        Method::QueueUnbindOk(_) => 29,
        Method::QueuePurge(_) => 30,
        Method::QueuePurgeOk(_) => 31,
        Method::QueueDelete(_) => 32,
        Method::QueueDeleteOk(_) => 33,
        Method::BasicQos(_) => 34,
        Method::BasicQosOk(_) => 35,
        Method::BasicConsume(_) => 36,
        Method::BasicConsumeOk(_) => 37,
        Method::BasicCancel(_) => 38,
        Method::BasicCancelOk(_) => 39,
        Method::BasicPublish(_) => 40,
        Method::BasicReturn(_) => 41,
        Method::BasicDeliver(_) => 42,
        Method::BasicGet(_) => 43,
        Method::BasicGetOk(_) => 44,
        Method::BasicGetEmpty(_) => 45,
        Method::BasicAck(_) => 46,
        Method::BasicReject(_) => 47,
        Method::BasicRecoverAsync(_) => 48,
        Method::BasicRecover(_) => 49,
        Method::BasicRecoverOk(_) => 50,
        Method::BasicNack(_) => 51,
        Method::TxSelect(_) => 52,
        Method::TxSelectOk(_) => 53,
        Method::TxCommit(_) => 54,
        Method::TxCommitOk(_) => 55,
        Method::TxRollback(_) => 56,
        Method::TxRollbackOk(_) => 57,
        Method::ConfirmSelect(_) => 58,
        Method::ConfirmSelectOk(_) => 59,
        Method::ConnectionBlocked(_) => 60,
        Method::ConnectionUnblocked(_) => 61,
        Method::ConnectionUpdateSecret(_) => 62,
        Method::ConnectionUpdateSecretOk(_) => 63,
    }
}

/// Any method of any class.
pub fn any_method() -> BoxedStrategy<Method> {
    Union::new(method_strategies().into_iter().map(|(_, s)| s)).boxed()
}

/// A content-carrying method: `basic.publish`, `basic.return`, `basic.deliver`, `basic.get-ok`.
pub fn content_method() -> BoxedStrategy<Method> {
    Union::new(
        method_strategies()
            .into_iter()
            .filter(|(name, _)| {
                matches!(
                    *name,
                    "basic.publish" | "basic.return" | "basic.deliver" | "basic.get-ok"
                )
            })
            .map(|(_, s)| s),
    )
    .boxed()
}

// ---------------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------------

/// All 14 basic properties, each independently present or absent.
pub fn properties() -> BoxedStrategy<BasicProperties> {
    use proptest::option::of;
    (
        (
            of(shortstr()),
            of(shortstr()),
            of(field_table()),
            of(any::<u8>()),
            of(any::<u8>()),
            of(shortstr()),
            of(shortstr()),
        ),
        (
            of(shortstr()),
            of(shortstr()),
            of(any::<u64>()),
            of(shortstr()),
            of(shortstr()),
            of(shortstr()),
            of(shortstr()),
        ),
    )
        .prop_map(
            |(
                (
                    content_type,
                    content_encoding,
                    headers,
                    delivery_mode,
                    priority,
                    correlation_id,
                    reply_to,
                ),
                (expiration, message_id, timestamp, kind, user_id, app_id, cluster_id),
            )| BasicProperties {
                content_type,
                content_encoding,
                headers,
                delivery_mode,
                priority,
                correlation_id,
                reply_to,
                expiration,
                message_id,
                timestamp,
                kind,
                user_id,
                app_id,
                cluster_id,
            },
        )
        .boxed()
}

/// A content header of the basic class (or, rarely, any class id: the codec does not care).
pub fn content_header() -> BoxedStrategy<ContentHeader> {
    (
        prop_oneof![4 => Just(60u16), 1 => any::<u16>()],
        any::<u64>(),
        properties(),
    )
        .prop_map(|(class_id, body_size, properties)| ContentHeader {
            class_id,
            body_size,
            properties,
        })
        .boxed()
}

/// A body slice.
pub fn body() -> BoxedStrategy<Bytes> {
    vec(any::<u8>(), 0..512).prop_map(Bytes::from).boxed()
}

/// Any frame.
pub fn frame() -> BoxedStrategy<Frame> {
    prop_oneof![
        4 => (any::<u16>(), any_method()).prop_map(|(ch, m)| Frame::Method(ch, m)),
        2 => (any::<u16>(), content_header()).prop_map(|(ch, h)| Frame::Header(ch, Box::new(h))),
        2 => (any::<u16>(), body()).prop_map(|(ch, b)| Frame::Body(ch, b)),
        1 => Just(Frame::Heartbeat),
    ]
    .boxed()
}

/// A fixed set of properties with every one of the 14 present.
pub fn full_properties() -> BasicProperties {
    BasicProperties {
        content_type: Some("application/json".into()),
        content_encoding: Some("gzip".into()),
        headers: Some(FieldTable(vec![
            ("x-retries".into(), FieldValue::I32(3)),
            ("trace".into(), FieldValue::from("abc")),
        ])),
        delivery_mode: Some(2),
        priority: Some(9),
        correlation_id: Some("corr-1".into()),
        reply_to: Some("amq.rabbitmq.reply-to".into()),
        expiration: Some("60000".into()),
        message_id: Some("msg-42".into()),
        timestamp: Some(1_700_000_000),
        kind: Some("order.created".into()),
        user_id: Some("guest".into()),
        app_id: Some("minimq-tests".into()),
        cluster_id: Some("c1".into()),
    }
}

// ---------------------------------------------------------------------------------------------
// Wire helpers
// ---------------------------------------------------------------------------------------------

/// The wire form of one frame.
pub fn encode(frame: &Frame) -> BytesMut {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf
}

/// A frame around `payload` with correct size and frame-end octet.
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&[kind]);
    buf.extend_from_slice(&channel.to_be_bytes());
    buf.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    buf.extend_from_slice(payload);
    buf.extend_from_slice(&[0xCE]);
    buf
}

/// A method payload: class id, method id, argument octets.
pub fn method_payload(class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + args.len());
    p.extend_from_slice(&class_id.to_be_bytes());
    p.extend_from_slice(&method_id.to_be_bytes());
    p.extend_from_slice(args);
    p
}

/// The payload a method encodes to (class and method ids included).
pub fn payload_of(method: &Method) -> Vec<u8> {
    let mut buf = BytesMut::new();
    method.encode(&mut buf);
    buf.to_vec()
}

/// Decodes every complete frame in `buf`; stops at the first error.
pub fn decode_all(codec: &mut FrameCodec, buf: &mut BytesMut) -> Result<Vec<Frame>, CodecError> {
    let mut out = Vec::new();
    while let Some(frame) = codec.decode(buf)? {
        out.push(frame);
    }
    Ok(out)
}

/// Decodes exactly one frame from `bytes` with a default codec, which must consume all of them.
pub fn decode_exactly_one(bytes: &[u8]) -> Frame {
    let mut buf = BytesMut::from(bytes);
    let frame = FrameCodec::default()
        .decode(&mut buf)
        .expect("decode failed")
        .expect("incomplete frame");
    assert!(buf.is_empty(), "{} bytes left over", buf.len());
    frame
}

/// The decode error a codec result carries; panics on success or an I/O error.
pub fn decode_error(result: Result<Option<Frame>, CodecError>) -> DecodeError {
    match result {
        Err(CodecError::Decode(e)) => e,
        Err(CodecError::Io(e)) => panic!("unexpected I/O error {e}"),
        Ok(frame) => panic!("expected a decode error, got {frame:?}"),
    }
}

/// Decodes `bytes` (one frame) with a default codec and returns the error it must produce.
pub fn decode_error_of(bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    decode_error(FrameCodec::default().decode(&mut buf))
}
