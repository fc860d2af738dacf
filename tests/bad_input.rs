//! Bad input over raw TCP: the broker must answer it as RabbitMQ 3.x does (same reply
//! code, and RabbitMQ's reply text where minimq has what that text needs), never panic,
//! never hang, and keep serving other connections.
//!
//! Each test starts its own broker on an ephemeral port and drives it with the raw client
//! of tests/common (minimq-protocol's codec), so it can send what no real client would.
//! Nothing waits on a sleep for synchronisation: every wait is for an event (a frame, the
//! socket closing) under a timeout guard. Where the condition is time itself (the
//! handshake timeout) the test runs on tokio's paused clock, which the broker in the same
//! runtime shares: the clock jumps to the broker's deadline as soon as everyone waits.
//! Heartbeats, which are not bad input, are in `heartbeats_and_shutdown.rs`.
//!
//! The answers asserted here were checked against RabbitMQ 3.10.8; where minimq answers
//! differently on purpose, the test says so (see docs/compatibility.md).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use minimq_broker::Config;
use minimq_protocol::frame::PROTOCOL_HEADER;
use minimq_protocol::{
    BasicAck, BasicPublish, ChannelClose, ChannelCloseOk, ChannelOpen, CodecError,
    ConnectionCloseOk, ConnectionOpen, ConnectionTuneOk, ContentHeader, FieldTable, FieldValue,
    Frame, Method, QueueDeclare,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

mod common;

use common::raw::*;
use common::{start_broker, start_broker_with, within, TIMEOUT};

/// Reads everything the server sends until it closes the socket.
async fn read_to_end(addr: SocketAddr, send: &[u8]) -> Vec<u8> {
    let mut socket = within(TcpStream::connect(addr)).await.expect("connect");
    socket.write_all(send).await.expect("send");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match within(socket.read(&mut buf)).await {
            Ok(0) | Err(_) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Protocol header
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn unknown_protocol_headers_get_the_0_9_1_header_back_and_the_socket_closed() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    for header in [
        &b"AMQP\x00\x00\x09\x00"[..],
        b"AMQP\x00\x00\x0a\x00",
        b"AMQP\x00\x00\x08\x00",
        b"XMQP\x00\x00\x09\x01",
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        assert_eq!(
            read_to_end(addr, header).await,
            PROTOCOL_HEADER,
            "answer to {header:?}"
        );
    }
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn the_amqp_0_9_header_is_taken_as_0_9_1_as_rabbitmq_does() {
    let broker = start_broker().await;
    let mut c = Client::connect_with_header(broker.local_addr(), b"AMQP\x01\x01\x00\x09").await;
    match c.method(0).await {
        Method::ConnectionStart(s) => assert_eq!((s.version_major, s.version_minor), (0, 9)),
        other => panic!("expected connection.start, got {other:?}"),
    }
    drop(c);
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_partial_protocol_header_is_dropped_after_the_handshake_timeout() {
    let broker = start_broker_with(Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let started = tokio::time::Instant::now();
    let got = read_to_end(broker.local_addr(), b"AMQP\x00").await;
    assert!(got.is_empty(), "nothing is sent, got {got:?}");
    // On the paused clock: exactly when the timeout says, not before.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "dropped after {:?}",
        started.elapsed()
    );
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Handshake
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_the_handshake_is_dropped_after_the_timeout() {
    let broker = start_broker_with(Config {
        handshake_timeout: Duration::from_millis(300),
        ..Config::default()
    })
    .await;
    let addr = broker.local_addr();
    // Silent after the header: connection.start, then the socket closes.
    let mut c = Client::connect(addr).await;
    c.expect_eof().await;
    // Silent after start-ok: connection.tune, then the socket closes.
    let (mut c, _, _) = Client::login(addr).await;
    c.expect_eof().await;
    // Silent after tune-ok.
    let (mut c, channel_max, frame_max) = Client::login(addr).await;
    c.send(
        0,
        ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        }
        .into(),
    )
    .await;
    c.expect_eof().await;
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn wrong_password_with_authentication_failure_close_is_answered_403() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    for (mechanism, response) in [
        ("PLAIN", plain("guest", "nope")),
        ("PLAIN", plain("nobody", "guest")),
        ("AMQPLAIN", amqplain("guest", "nope")),
    ] {
        let mut c = Client::connect(addr).await;
        c.send(0, start_ok(mechanism, response, true)).await;
        c.expect_connection_close(
            403,
            &format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {mechanism}. \
                 For details see the broker logfile."
            ),
            0,
            0,
        )
        .await;
    }
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn wrong_password_without_the_capability_just_closes_the_socket() {
    let broker = start_broker().await;
    let mut c = Client::connect(broker.local_addr()).await;
    c.send(0, start_ok("PLAIN", plain("guest", "nope"), false))
        .await;
    c.expect_eof().await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unknown_mechanism_just_closes_the_socket_even_with_the_capability() {
    let broker = start_broker().await;
    let mut c = Client::connect(broker.local_addr()).await;
    c.send(0, start_ok("CRAM-MD5", plain("guest", "guest"), true))
        .await;
    c.expect_eof().await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

/// An AMQPLAIN response: a field table without its length prefix.
fn amqplain(user: &str, pass: &str) -> Bytes {
    let mut t = FieldTable::new();
    t.insert(
        "LOGIN",
        FieldValue::LongString(Bytes::from(user.to_string())),
    );
    t.insert(
        "PASSWORD",
        FieldValue::LongString(Bytes::from(pass.to_string())),
    );
    let mut b = BytesMut::new();
    minimq_protocol::types::write::table(&mut b, &t);
    b.freeze().slice(4..)
}

#[tokio::test]
async fn amqplain_login_works() {
    let broker = start_broker().await;
    let mut c = Client::connect(broker.local_addr()).await;
    c.send(0, start_ok("AMQPLAIN", amqplain("guest", "guest"), true))
        .await;
    let Method::ConnectionTune(t) = c.method(0).await else {
        panic!("expected connection.tune")
    };
    c.send(
        0,
        ConnectionTuneOk {
            channel_max: t.channel_max,
            frame_max: t.frame_max,
            heartbeat: 0,
        }
        .into(),
    )
    .await;
    c.send(
        0,
        ConnectionOpen {
            virtual_host: "/".into(),
        }
        .into(),
    )
    .await;
    assert!(matches!(c.method(0).await, Method::ConnectionOpenOk(_)));
    c.open_channel(1).await;
    c.send(1, declare("amqplain")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    drop(c);
    broker.shutdown().await;
}

#[tokio::test]
async fn unknown_vhost_is_530() {
    let broker = start_broker().await;
    let (mut c, channel_max, frame_max) = Client::login(broker.local_addr()).await;
    c.send(
        0,
        ConnectionTuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        }
        .into(),
    )
    .await;
    c.send(
        0,
        ConnectionOpen {
            virtual_host: "nope".into(),
        }
        .into(),
    )
    .await;
    c.expect_connection_close(530, "NOT_ALLOWED - vhost nope not found", 10, 40)
        .await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn tune_ok_outside_the_servers_limits_just_closes_the_socket() {
    // RabbitMQ refuses frame_max below 4096, above its own or 0 ("no limit"), and the
    // same for channel_max, by closing the socket without a word.
    let broker = start_broker().await;
    let addr = broker.local_addr();
    for (channel_max, frame_max) in [
        (2047, 100),
        (2047, 0),
        (2047, 1_000_000),
        (0, 131_072),
        (5000, 131_072),
    ] {
        let (mut c, _, _) = Client::login(addr).await;
        c.send(
            0,
            ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat: 0,
            }
            .into(),
        )
        .await;
        c.expect_eof().await;
    }
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_wrong_method_during_the_handshake_just_closes_the_socket() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    // Instead of start-ok.
    let mut c = Client::connect(addr).await;
    c.send(0, declare("q")).await;
    c.expect_eof().await;
    // Instead of tune-ok.
    let (mut c, _, _) = Client::login(addr).await;
    c.send(1, ChannelOpen.into()).await;
    c.expect_eof().await;
    // Instead of open, once tuned: answered, as RabbitMQ does from this point on.
    let (mut c, channel_max, frame_max) = Client::login(addr).await;
    let tune_ok: Method = ConnectionTuneOk {
        channel_max,
        frame_max,
        heartbeat: 0,
    }
    .into();
    c.send(0, tune_ok.clone()).await;
    c.send(0, tune_ok).await;
    c.expect_connection_close(
        504,
        "CHANNEL_ERROR - unexpected method in connection state opening",
        10,
        31,
    )
    .await;
    assert_serves(addr).await;
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Framing
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_frame_end_octet_is_501() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    let mut bad = raw_method(1, 50, 10, &[0, 0, 1, b'x', 0, 0, 0, 0, 0]);
    *bad.last_mut().unwrap() = 0x00;
    c.send_raw(&bad).await;
    // RabbitMQ: "FRAME_ERROR - type 1, all octets = <<...>>: {invalid_frame_end_marker,0}".
    c.expect_connection_close(501, "FRAME_ERROR - bad frame end octet 0x0", 0, 0)
        .await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_frame_above_frame_max_is_501_before_its_payload_arrives() {
    let broker = start_broker().await;
    let mut c = Client::open_tuned(broker.local_addr(), 2047, 4096, 0).await;
    c.open_channel(1).await;
    // Only the 7-octet header of a 1 MB method frame: the answer cannot wait for the rest.
    let mut head = vec![1u8, 0, 1];
    head.extend_from_slice(&(1u32 << 20).to_be_bytes());
    c.send_raw(&head).await;
    // RabbitMQ: "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,1048576,4088}".
    c.expect_connection_close(501, "FRAME_ERROR - {frame_too_large,1048576,4088}", 0, 0)
        .await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_payload_of_exactly_frame_max_is_tolerated_one_more_octet_is_not() {
    // RabbitMQ allows 8 octets of slack over frame_max (payload up to frame_max).
    let broker = start_broker().await;
    let addr = broker.local_addr();
    let mut c = Client::open_tuned(addr, 2047, 4096, 0).await;
    c.open_channel(1).await;
    c.send(1, declare("big")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.send(1, publish_to("big")).await;
    c.send_frame(header(4096)).await;
    c.send_frame(Frame::Body(1, Bytes::from(vec![7u8; 4096])))
        .await;
    let (_, _, body) = c.get("big", true).await;
    assert_eq!(body.len(), 4096);
    c.send(1, publish_to("big")).await;
    c.send_frame(header(4097)).await;
    c.send_frame(Frame::Body(1, Bytes::from(vec![7u8; 4097])))
        .await;
    c.expect_connection_close(501, "FRAME_ERROR - {frame_too_large,4097,4088}", 0, 0)
        .await;
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn undecodable_frames_are_501() {
    // (bytes, minimq's text; RabbitMQ's where it differs)
    let cases: [(Vec<u8>, &str); 4] = [
        // RabbitMQ: "FRAME_ERROR - type 9, all octets = <<"abc">>: unknown_frame".
        (
            raw_frame(9, 0, b"abc", 0xCE),
            "FRAME_ERROR - unknown frame type 9",
        ),
        // RabbitMQ: 505 "UNEXPECTED_FRAME - type 8, all octets = <<>>" for channel 1, and
        // 501 "... unknown_frame" for a payload: minimq cannot tell the two apart.
        (
            raw_frame(8, 0, b"ab", 0xCE),
            "FRAME_ERROR - malformed heartbeat frame",
        ),
        // RabbitMQ: "FRAME_ERROR - type 1, all octets = <<0,50>>: unknown_frame".
        (
            raw_frame(1, 1, &[0, 50], 0xCE),
            "FRAME_ERROR - payload too short",
        ),
        (
            raw_method(1, 50, 10, &[0, 0, 2, 0xFF, 0xFE, 0, 0, 0, 0, 0]),
            "FRAME_ERROR - Malformed UTF-8 in shortstr",
        ),
    ];
    let broker = start_broker().await;
    for (bytes, text) in cases {
        let mut c = Client::open_channel1(broker.local_addr()).await;
        c.send_raw(&bytes).await;
        c.expect_connection_close(501, text, 0, 0).await;
    }
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn truncated_or_overlong_method_arguments_are_501() {
    // RabbitMQ: 501 "FRAME_ERROR - cannot decode <<argument octets>>" with the method's
    // class and id; minimq's codec reports neither the octets nor the method.
    let broker = start_broker().await;
    for (bytes, text) in [
        // queue.declare cut inside the queue name
        (
            raw_method(1, 50, 10, &[0, 0, 6, b'a', b'b', b'c']),
            "FRAME_ERROR - payload too short",
        ),
        // basic.ack cut inside the delivery tag
        (
            raw_method(1, 60, 80, &[0, 0, 0]),
            "FRAME_ERROR - payload too short",
        ),
        // queue.declare whose table announces more than there is
        (
            raw_method(
                1,
                50,
                10,
                &[0, 0, 1, b'q', 0, 0, 0, 0, 100, b'a', b'b', b'c'],
            ),
            "FRAME_ERROR - payload too short",
        ),
        // basic.qos with octets after its last argument
        (
            raw_method(1, 60, 10, &[0, 0, 0, 0, 0, 1, 0, b'x', b'y']),
            "FRAME_ERROR - trailing bytes after method arguments",
        ),
    ] {
        let mut c = Client::open_channel1(broker.local_addr()).await;
        c.send_raw(&bytes).await;
        c.expect_connection_close(501, text, 0, 0).await;
    }
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unknown_method_id_closes_the_connection_503() {
    // RabbitMQ 3.10's reader crashes on an unknown class or method id and drops the
    // socket without a close; minimq answers 503 COMMAND_INVALID.
    let broker = start_broker().await;
    for (ch, class_id, method_id) in [(1, 60, 999), (1, 99, 10), (0, 10, 99)] {
        let mut c = Client::open_channel1(broker.local_addr()).await;
        c.send_raw(&raw_method(ch, class_id, method_id, &[])).await;
        c.expect_connection_close(
            503,
            &format!("COMMAND_INVALID - unknown method {class_id}/{method_id}"),
            0,
            0,
        )
        .await;
    }
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Channels
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn a_method_on_a_channel_that_is_not_open_is_504() {
    let broker = start_broker().await;
    let mut c = Client::open(broker.local_addr()).await;
    c.send(1, declare("q")).await;
    c.expect_connection_close(504, "CHANNEL_ERROR - expected 'channel.open'", 50, 10)
        .await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_second_channel_open_on_the_same_channel_is_504() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, ChannelOpen.into()).await;
    c.expect_connection_close(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10)
        .await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_channel_method_on_channel_0_is_504() {
    let broker = start_broker().await;
    for (m, ids) in [
        (Method::from(ChannelOpen), (20, 10)),
        (declare("q"), (50, 10)),
        (
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
            (10, 40),
        ),
    ] {
        let mut c = Client::open(broker.local_addr()).await;
        c.send(0, m).await;
        c.expect_connection_close(
            504,
            "CHANNEL_ERROR - unexpected method in connection state running",
            ids.0,
            ids.1,
        )
        .await;
    }
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn channel_max_limits_open_channels_to_530() {
    // As in RabbitMQ, channel_max caps how many channels are open at once; a channel
    // number above it is fine while there is room.
    let broker = start_broker().await;
    let mut c = Client::open_tuned(broker.local_addr(), 2, 131_072, 0).await;
    c.open_channel(7).await;
    c.open_channel(1).await;
    c.send(3, ChannelOpen.into()).await;
    c.expect_connection_close(
        530,
        "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
        0,
        0,
    )
    .await;
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

/// Frames as bytes, for tests that need several of them in one write.
fn frames_bytes(frames: &[Frame]) -> Vec<u8> {
    let mut b = BytesMut::new();
    for f in frames {
        f.encode(&mut b);
    }
    b.to_vec()
}

/// A publish of an empty message to `exchange` on `ch`: its method and header frames.
fn empty_publish(ch: u16, exchange: &str, routing_key: &str) -> [Frame; 2] {
    [
        Frame::Method(
            ch,
            BasicPublish {
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                mandatory: false,
                immediate: false,
            }
            .into(),
        ),
        Frame::Header(
            ch,
            Box::new(ContentHeader {
                class_id: 60,
                body_size: 0,
                properties: Default::default(),
            }),
        ),
    ]
}

fn client_channel_close(ch: u16) -> Frame {
    Frame::Method(
        ch,
        ChannelClose {
            reply_code: 200,
            reply_text: "Goodbye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    )
}

const NO_EXCHANGE_404: &str = "NOT_FOUND - no exchange 'nonexisting-exchange' in vhost '/'";

/// amqp091-go's `TestChannelExceptionWithCloseIssue43`: channel 1 publishes to a missing
/// exchange and closes in the same write, so the server's `channel.close` (404) and the
/// client's cross. The server answers the client's close with `close-ok` and waits for
/// the `close-ok` of its own close, which the client then sends; the connection and
/// channel 2 stay up, as with RabbitMQ.
#[tokio::test]
async fn crossing_channel_closes_keep_the_connection_and_other_channels_up() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.open_channel(2).await;
    let mut frames = empty_publish(1, "nonexisting-exchange", "").to_vec();
    frames.push(client_channel_close(1));
    c.send_raw(&frames_bytes(&frames)).await;
    match c.method(1).await {
        Method::ChannelClose(close) => assert_eq!(
            (
                close.reply_code,
                close.reply_text.as_str(),
                close.class_id,
                close.method_id
            ),
            (404, NO_EXCHANGE_404, 60, 40)
        ),
        other => panic!("expected channel.close, got {other:?}"),
    }
    let ok = c.method(1).await;
    assert!(matches!(ok, Method::ChannelCloseOk(_)), "got {ok:?}");
    // The client's answer to the server's close, as amqp091-go sends it.
    c.send(1, ChannelCloseOk.into()).await;
    c.send(2, declare("issue43")).await;
    let ok = c.method(2).await;
    assert!(matches!(ok, Method::QueueDeclareOk(_)), "got {ok:?}");
    // Channel 1 is closed for good and may be opened again.
    c.open_channel(1).await;
    drop(c);
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

mod crossing {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestRunner};

    /// One case: what channel 1 sends before and after the frame that fails, where in
    /// that sequence the client's `channel.close` goes, where channel 2's declare goes,
    /// and where the whole input is split into two writes.
    #[derive(Debug, Clone)]
    struct Case {
        before: usize,
        failure: u8,
        after: Vec<u8>,
        close_after_reading: bool,
        declare_at: usize,
        split: usize,
    }

    fn case() -> impl Strategy<Value = Case> {
        (
            0usize..4,
            0u8..2,
            proptest::collection::vec(0u8..3, 0..4),
            any::<bool>(),
            0usize..12,
            any::<usize>(),
        )
            .prop_map(
                |(before, failure, after, close_after_reading, declare_at, split)| Case {
                    before,
                    failure,
                    after,
                    close_after_reading,
                    declare_at,
                    split,
                },
            )
    }

    /// The frames after the failing one, which the server must ignore: a publish (to a
    /// missing exchange or to a queue), or a queue.declare.
    fn ignored(kind: u8) -> Vec<Frame> {
        match kind {
            0 => empty_publish(1, "nonexisting-exchange", "").to_vec(),
            1 => empty_publish(1, "", "crossing").to_vec(),
            _ => vec![Frame::Method(1, declare("ignored-declare"))],
        }
    }

    async fn run(addr: SocketAddr, case: Case) -> Result<(), String> {
        let mut c = Client::open_channel1(addr).await;
        c.open_channel(2).await;
        let mut frames: Vec<Frame> = Vec::new();
        for _ in 0..case.before {
            frames.extend(empty_publish(1, "", "crossing"));
        }
        let expected = if case.failure == 0 {
            frames.extend(empty_publish(1, "nonexisting-exchange", ""));
            (404, NO_EXCHANGE_404.to_string(), 60, 40)
        } else {
            frames.push(Frame::Method(
                1,
                BasicAck {
                    delivery_tag: 7,
                    multiple: false,
                }
                .into(),
            ));
            (
                406,
                "PRECONDITION_FAILED - unknown delivery tag 7".to_string(),
                60,
                80,
            )
        };
        for kind in &case.after {
            frames.extend(ignored(*kind));
        }
        if !case.close_after_reading {
            frames.push(client_channel_close(1));
        }
        let at = case.declare_at.min(frames.len());
        frames.insert(at, Frame::Method(2, declare("crossing")));
        let bytes = frames_bytes(&frames);
        let split = case.split % (bytes.len() + 1);
        c.send_raw(&bytes[..split]).await;
        c.send_raw(&bytes[split..]).await;
        let (mut closed, mut close_ok, mut declared) = (false, false, false);
        let want_close_ok = !case.close_after_reading;
        while !(closed && declared && (close_ok || !want_close_ok)) {
            match c.frame().await {
                Frame::Method(1, Method::ChannelClose(close)) if !closed => {
                    let got = (
                        close.reply_code,
                        close.reply_text,
                        close.class_id,
                        close.method_id,
                    );
                    if got != expected {
                        return Err(format!("channel.close {got:?}, expected {expected:?}"));
                    }
                    closed = true;
                }
                Frame::Method(1, Method::ChannelCloseOk(_)) if closed && want_close_ok => {
                    close_ok = true
                }
                Frame::Method(2, Method::QueueDeclareOk(_)) if !declared => declared = true,
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        if case.close_after_reading {
            // A close sent after the server's close was read is answered all the same.
            c.send_frame(client_channel_close(1)).await;
            match c.frame().await {
                Frame::Method(1, Method::ChannelCloseOk(_)) => {}
                other => return Err(format!("expected channel.close-ok, got {other:?}")),
            }
        }
        c.send(1, ChannelCloseOk.into()).await;
        c.send(2, declare("crossing")).await;
        match c.frame().await {
            Frame::Method(2, Method::QueueDeclareOk(_)) => {}
            other => return Err(format!("expected declare-ok on 2, got {other:?}")),
        }
        c.send(1, ChannelOpen.into()).await;
        match c.frame().await {
            Frame::Method(1, Method::ChannelOpenOk(_)) => {}
            other => return Err(format!("expected open-ok on 1, got {other:?}")),
        }
        Ok(())
    }

    /// Closes crossing at random points of a channel's traffic never take the
    /// connection or another channel down.
    #[test]
    fn crossing_closes_at_random_points_leave_the_connection_up() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let broker = rt.block_on(super::start_broker());
        let addr = broker.local_addr();
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 48,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&case(), |case| {
                rt.block_on(async { run(addr, case).await.map_err(TestCaseError::fail) })
            })
            .unwrap();
        rt.block_on(broker.shutdown());
    }
}

// ---------------------------------------------------------------------------------------
// Content
// ---------------------------------------------------------------------------------------

const NO_METHOD: &str = "UNEXPECTED_FRAME - expected method frame, got non method frame instead";
const NO_HEADER: &str =
    "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead";
const NO_BODY: &str =
    "UNEXPECTED_FRAME - expected content body, got non content body frame instead";

#[tokio::test]
async fn a_body_frame_without_a_header_is_505() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    // No publish at all.
    let mut c = Client::open_channel1(addr).await;
    c.send_frame(Frame::Body(1, Bytes::from_static(b"hello")))
        .await;
    c.expect_connection_close(505, NO_METHOD, 0, 0).await;
    // After basic.publish, where the header belongs.
    let mut c = Client::open_channel1(addr).await;
    c.send(1, publish_to("q")).await;
    c.send_frame(Frame::Body(1, Bytes::from_static(b"hello")))
        .await;
    c.expect_connection_close(505, NO_HEADER, 60, 40).await;
    // On a channel that is not open.
    let mut c = Client::open(addr).await;
    c.send_frame(Frame::Body(4, Bytes::from_static(b"abc")))
        .await;
    c.expect_connection_close(505, NO_METHOD, 0, 0).await;
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_method_where_content_is_expected_is_505() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    // Where the header belongs.
    let mut c = Client::open_channel1(addr).await;
    c.send(1, publish_to("q")).await;
    c.send(1, declare("q")).await;
    c.expect_connection_close(505, NO_HEADER, 60, 40).await;
    // Where the body belongs.
    let mut c = Client::open_channel1(addr).await;
    c.send(1, publish_to("q")).await;
    c.send_frame(header(10)).await;
    c.send(1, declare("q")).await;
    c.expect_connection_close(505, NO_BODY, 60, 40).await;
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_header_out_of_place_is_505() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    // With no publish.
    let mut c = Client::open_channel1(addr).await;
    c.send_frame(header(5)).await;
    c.expect_connection_close(505, NO_METHOD, 0, 0).await;
    // A second header where the body belongs.
    let mut c = Client::open_channel1(addr).await;
    c.send(1, publish_to("q")).await;
    c.send_frame(header(10)).await;
    c.send_frame(header(10)).await;
    c.expect_connection_close(505, NO_BODY, 60, 40).await;
    // For another class.
    let mut c = Client::open_channel1(addr).await;
    c.send(1, publish_to("q")).await;
    c.send_frame(Frame::Header(
        1,
        Box::new(ContentHeader {
            class_id: 50,
            body_size: 1,
            properties: Default::default(),
        }),
    ))
    .await;
    c.expect_connection_close(
        505,
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
        60,
        40,
    )
    .await;
    // On channel 0. RabbitMQ: "UNEXPECTED_FRAME - type 2, all octets = <<...>>".
    let mut c = Client::open(addr).await;
    let mut h = header(5);
    if let Frame::Header(ch, _) = &mut h {
        *ch = 0;
    }
    c.send_frame(h).await;
    c.expect_connection_close(505, NO_METHOD, 0, 0).await;
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_body_larger_than_its_declared_size_is_a_connection_error() {
    // RabbitMQ 3.10 says nothing and leaves the channel waiting for a body that can never
    // complete (the next method on it gets 505); minimq refuses the frame at once.
    let broker = start_broker().await;
    let addr = broker.local_addr();
    for frames in [vec![&b"0123456789"[..]], vec![b"012", b"3456"]] {
        let mut c = Client::open_channel1(addr).await;
        c.send(1, publish_to("q")).await;
        c.send_frame(header(5)).await;
        for f in frames {
            c.send_frame(Frame::Body(1, Bytes::copy_from_slice(f)))
                .await;
        }
        c.expect_connection_close(
            501,
            "FRAME_ERROR - content body exceeds the declared size of 5 octets",
            0,
            0,
        )
        .await;
    }
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_declared_body_size_above_the_max_message_size_is_406_on_the_channel() {
    // RabbitMQ answers once the body is in; minimq as soon as the header announces it.
    let broker = start_broker_with(Config {
        max_message_size: 1000,
        ..Config::default()
    })
    .await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, publish_to("q")).await;
    c.send_frame(header(5000)).await;
    c.send_frame(Frame::Body(1, Bytes::from(vec![0u8; 4000])))
        .await;
    c.send_frame(Frame::Body(1, Bytes::from(vec![0u8; 1000])))
        .await;
    c.expect_channel_close(
        1,
        406,
        "PRECONDITION_FAILED - message size 5000 is larger than configured max size 1000",
        60,
        40,
    )
    .await;
    // The connection goes on.
    c.open_channel(2).await;
    c.send(2, declare("after")).await;
    assert!(matches!(c.method(2).await, Method::QueueDeclareOk(_)));
    drop(c);
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unknown_delivery_tag_closes_the_channel_406() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(
        1,
        BasicAck {
            delivery_tag: 3,
            multiple: false,
        }
        .into(),
    )
    .await;
    c.expect_channel_close(
        1,
        406,
        "PRECONDITION_FAILED - unknown delivery tag 3",
        60,
        80,
    )
    .await;
    c.open_channel(2).await;
    c.send(2, declare("after")).await;
    assert!(matches!(c.method(2).await, Method::QueueDeclareOk(_)));
    drop(c);
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Random bytes
// ---------------------------------------------------------------------------------------

mod random {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, TestRunner};

    /// One chunk of input: raw bytes, or something shaped like a frame.
    #[derive(Debug, Clone)]
    enum Chunk {
        Raw(Vec<u8>),
        Frame {
            kind: u8,
            channel: u16,
            payload: Vec<u8>,
            end: u8,
        },
    }

    fn chunk() -> impl Strategy<Value = Chunk> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 1..64).prop_map(Chunk::Raw),
            (
                prop_oneof![Just(1u8), Just(2), Just(3), Just(8), any::<u8>()],
                prop_oneof![Just(0u16), Just(1), 0u16..4],
                prop_oneof![
                    // A method of a known class with random arguments.
                    (
                        prop_oneof![
                            Just(10u16),
                            Just(20),
                            Just(40),
                            Just(50),
                            Just(60),
                            Just(85),
                            Just(90)
                        ],
                        prop_oneof![
                            3 => proptest::sample::select(&[
                                10u16, 11, 20, 21, 30, 31, 40, 41, 50, 51, 60, 70, 80, 90, 100,
                                110, 120,
                            ][..]),
                            1 => 0u16..130,
                        ],
                        proptest::collection::vec(any::<u8>(), 0..48)
                    )
                        .prop_map(|(c, m, args)| {
                            let mut p = c.to_be_bytes().to_vec();
                            p.extend_from_slice(&m.to_be_bytes());
                            p.extend(args);
                            p
                        }),
                    proptest::collection::vec(any::<u8>(), 0..64),
                ],
                prop_oneof![4 => Just(0xCEu8), 1 => any::<u8>()],
            )
                .prop_map(|(kind, channel, payload, end)| Chunk::Frame {
                    kind,
                    channel,
                    payload,
                    end,
                }),
        ]
    }

    fn bytes(chunks: &[Chunk]) -> Vec<u8> {
        let mut out = Vec::new();
        for c in chunks {
            match c {
                Chunk::Raw(b) => out.extend_from_slice(b),
                Chunk::Frame {
                    kind,
                    channel,
                    payload,
                    end,
                } => out.extend(raw_frame(*kind, *channel, payload, *end)),
            }
        }
        // Whatever frame the input left unfinished is completed by this padding, and the
        // rest reads as frames of type 0xCE, which no server accepts: the connection
        // must end, with or without a close, and never wait for more.
        out.put_bytes(0xCE, 4096 + 16);
        out
    }

    /// Sends `input` after a handshake (frame_max 4096) and a channel open; the server
    /// must end the connection within the timeout, answering only valid frames.
    async fn survive(addr: SocketAddr, input: Vec<u8>) -> Result<(), String> {
        let mut c = Client::open_tuned(addr, 2047, 4096, 0).await;
        c.open_channel(1).await;
        c.send_raw(&input).await;
        let deadline = tokio::time::Instant::now() + TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, c.io.next())
                .await
                .map_err(|_| "the server neither closed nor ended the connection".to_string())?;
            match next {
                None | Some(Err(CodecError::Io(_))) => return Ok(()),
                Some(Err(CodecError::Decode(e))) => {
                    return Err(format!("the server sent an undecodable frame: {e}"))
                }
                Some(Ok(Frame::Method(0, Method::ConnectionClose(close)))) => {
                    if close.reply_code < 500 {
                        return Err(format!("unexpected connection.close {close:?}"));
                    }
                    let _ = c.io.send(Frame::Method(0, ConnectionCloseOk.into())).await;
                }
                // The input itself held a connection.close: done.
                Some(Ok(Frame::Method(0, Method::ConnectionCloseOk(_)))) => return Ok(()),
                Some(Ok(_)) => {}
            }
        }
    }

    #[test]
    fn random_bytes_after_the_handshake_end_the_connection_and_never_hang_the_broker() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let broker = rt.block_on(super::start_broker());
        let addr = broker.local_addr();
        let mut runner = TestRunner::new(ProptestConfig {
            cases: 32,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        runner
            .run(&proptest::collection::vec(chunk(), 1..8), |chunks| {
                rt.block_on(async {
                    survive(addr, bytes(&chunks))
                        .await
                        .map_err(TestCaseError::fail)?;
                    assert_serves(addr).await;
                    Ok(())
                })
            })
            .unwrap();
        rt.block_on(broker.shutdown());
    }
}

// ---------------------------------------------------------------------------------------
// Invalid expirations and queue arguments (texts checked against RabbitMQ 3.10.8)
// ---------------------------------------------------------------------------------------

/// Publishes `body` to `queue` on `ch` with the `expiration` property `expiration`.
async fn publish_expiring(c: &mut Client, ch: u16, queue: &str, expiration: &str) {
    c.send(ch, publish_to(queue)).await;
    c.send_frame(Frame::Header(
        ch,
        Box::new(ContentHeader {
            class_id: 60,
            body_size: 1,
            properties: minimq_protocol::BasicProperties {
                expiration: Some(expiration.into()),
                ..Default::default()
            },
        }),
    ))
    .await;
    c.send_frame(Frame::Body(ch, Bytes::from_static(b"x")))
        .await;
}

#[tokio::test]
async fn an_invalid_expiration_closes_the_channel_406_with_rabbitmqs_text() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(1, declare("expiring")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    let cases: &[(&str, &str)] = &[
        ("abc", "no_integer"),
        ("", "no_integer"),
        (" 5", "no_integer"),
        ("-1", "{value_negative,-1}"),
        ("-007", "{value_negative,-7}"),
        ("315360000001", "{value_too_large,315360000001}"),
        ("1.5", "{leftover_string,\".5\"}"),
        ("5 ", "{leftover_string,\" \"}"),
        ("5\"\\", "{leftover_string,\"\\\"\\\\\"}"),
        ("5\u{1}", "{leftover_string,[1]}"),
        // Erlang's ~p breaks a term that would end past column 78 after the tuple's
        // first element, indented to the column after the brace.
        (
            "9999999999999999999",
            "{value_too_large,\n                                           9999999999999999999}",
        ),
        (
            "-99999999999999999999",
            "{value_negative,\n                                             -99999999999999999999}",
        ),
        (
            "1xxxxxxxxxxxxxxxxxxxxxx",
            "{leftover_string,\n                                               \"xxxxxxxxxxxxxxxxxxxxxx\"}",
        ),
    ];
    let mut ch = 1;
    for (expiration, reason) in cases {
        publish_expiring(&mut c, ch, "expiring", expiration).await;
        c.expect_channel_close(
            ch,
            406,
            &format!("PRECONDITION_FAILED - invalid expiration '{expiration}': {reason}"),
            60,
            40,
        )
        .await;
        ch += 1;
        c.open_channel(ch).await;
    }
    // What RabbitMQ accepts: signs, leading zeros, up to ten years in milliseconds.
    for expiration in ["0", "+5", "-0", "007", "315360000000", "00315360000000"] {
        publish_expiring(&mut c, ch, "expiring", expiration).await;
    }
    c.send(ch, declare("expiring")).await;
    match c.method(ch).await {
        Method::QueueDeclareOk(ok) => assert!(ok.message_count >= 5, "{ok:?}"),
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
    drop(c);
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}

fn declare_with(queue: &str, quorum: bool, args: &[(&str, FieldValue)]) -> Method {
    let mut arguments = FieldTable::new();
    for (k, v) in args {
        arguments.insert(*k, v.clone());
    }
    if quorum {
        arguments.insert("x-queue-type", "quorum");
    }
    QueueDeclare {
        queue: queue.into(),
        durable: quorum,
        arguments,
        ..Default::default()
    }
    .into()
}

#[tokio::test]
async fn queue_arguments_out_of_rabbitmqs_ranges_are_406_and_its_largest_values_accepted() {
    let broker = start_broker().await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    let refused: &[(&str, FieldValue, &str)] = &[
        (
            "x-message-ttl",
            FieldValue::I64(315_360_000_001),
            "{value_too_large,315360000001}",
        ),
        (
            "x-expires",
            FieldValue::I64(315_360_000_001),
            "{value_too_large,315360000001}",
        ),
        ("x-expires", FieldValue::I32(0), "{value_zero,0}"),
        ("x-max-length", FieldValue::I32(-1), "{value_negative,-1}"),
        (
            "x-max-priority",
            FieldValue::I32(256),
            "{max_value_exceeded,256}",
        ),
        (
            "x-message-ttl",
            FieldValue::from("abc"),
            "\"expected integer, got longstr\"",
        ),
        (
            "x-max-length-bytes",
            FieldValue::Bool(true),
            "\"expected integer, got bool\"",
        ),
    ];
    let mut ch = 1;
    for (key, value, reason) in refused {
        c.send(ch, declare_with("args", false, &[(key, value.clone())]))
            .await;
        c.expect_channel_close(
            ch,
            406,
            &format!(
                "PRECONDITION_FAILED - invalid arg '{key}' for queue 'args' in vhost '/': {reason}"
            ),
            50,
            10,
        )
        .await;
        ch += 1;
        c.open_channel(ch).await;
    }
    // Accepted by RabbitMQ 3.10, classic and quorum: TTLs above 2^32 ms (Celery declares
    // up to 2^27 s), up to ten years; any x-delivery-limit on a quorum queue.
    // (queue, quorum, arguments)
    type Declare<'a> = (&'a str, bool, &'a [(&'a str, FieldValue)]);
    let accepted: &[Declare] = &[
        (
            "ttl-classic",
            false,
            &[("x-message-ttl", FieldValue::I64(134_217_728_000))],
        ),
        (
            "ttl-quorum",
            true,
            &[("x-message-ttl", FieldValue::I64(134_217_728_000))],
        ),
        (
            "ttl-max",
            false,
            &[("x-message-ttl", FieldValue::I64(315_360_000_000))],
        ),
        (
            "expires-max",
            false,
            &[("x-expires", FieldValue::I64(315_360_000_000))],
        ),
        (
            "priority-max",
            false,
            &[("x-max-priority", FieldValue::I32(255))],
        ),
        (
            "length-big",
            false,
            &[("x-max-length", FieldValue::I64(i64::MAX))],
        ),
        (
            "limit-negative",
            true,
            &[("x-delivery-limit", FieldValue::I32(-5))],
        ),
        (
            "limit-text",
            true,
            &[("x-delivery-limit", FieldValue::from("abc"))],
        ),
    ];
    for (queue, quorum, args) in accepted {
        c.send(ch, declare_with(queue, *quorum, args)).await;
        match c.method(ch).await {
            Method::QueueDeclareOk(ok) => assert_eq!(ok.queue, *queue),
            other => panic!("{queue}: expected queue.declare-ok, got {other:?}"),
        }
    }
    drop(c);
    assert_serves(broker.local_addr()).await;
    broker.shutdown().await;
}
