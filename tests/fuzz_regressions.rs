//! Inputs found while fuzzing the broker's connection state machine (`fuzz/`, target
//! `connection`), replayed as raw bytes over TCP to an embedded broker the way the fuzz
//! target sends them: the protocol header, a valid handshake negotiating frame_max 4096
//! (channel_max 32, no heartbeats), the input's frames, then the client's EOF.
//!
//! Every replay checks what the target checks: the broker closes the socket soon after the
//! client's EOF, every frame it sent decodes and fits the negotiated frame_max, and a fresh
//! connection is still greeted with `connection.start`.
//!
//! The replay writes its bytes itself rather than through `common::raw`'s step-by-step
//! handshake: the handshake and the input go out in one write, as the fuzz target sends
//! them, so the broker reads them as the fuzzer's run did.

mod common;

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use common::raw::Client;
use common::within;
use minimq_broker::Broker;
use minimq_protocol::frame::{encode_method, FRAME_BODY, FRAME_END, PROTOCOL_HEADER};
use minimq_protocol::{
    BasicGet, BasicProperties, BasicPublish, BasicReject, ChannelOpen, ConnectionOpen,
    ConnectionStartOk, ConnectionTuneOk, ContentHeader, FieldTable, FieldValue, Frame, FrameCodec,
    Method, QueueDeclare,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::codec::Decoder;

/// The frame_max the replayed handshake negotiates (the fuzz target's).
const FRAME_MAX: u32 = 4096;
async fn broker() -> Broker {
    Broker::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .heartbeat(0)
        .start()
        .await
        .expect("broker starts")
}

/// The protocol header and the fuzz target's handshake.
fn handshake() -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_slice(&PROTOCOL_HEADER);
    let mut caps = FieldTable::new();
    for cap in [
        "publisher_confirms",
        "consumer_cancel_notify",
        "basic.nack",
        "authentication_failure_close",
    ] {
        caps.insert(cap, true);
    }
    let mut props = FieldTable::new();
    props.insert("product", "minimq-fuzz");
    props.insert("capabilities", caps);
    let methods: [Method; 3] = [
        ConnectionStartOk {
            client_properties: props,
            mechanism: "PLAIN".into(),
            response: Bytes::from_static(b"\0guest\0guest"),
            locale: "en_US".into(),
        }
        .into(),
        ConnectionTuneOk {
            channel_max: 32,
            frame_max: FRAME_MAX,
            heartbeat: 0,
        }
        .into(),
        ConnectionOpen {
            virtual_host: "/".into(),
        }
        .into(),
    ];
    for m in &methods {
        encode_method(&mut buf, 0, m);
    }
    buf
}

/// Sends `input` after the handshake, half-closes, and returns every frame the broker
/// sent with its size on the wire, checking them as the fuzz target does.
async fn replay(addr: SocketAddr, input: &[u8]) -> Vec<(usize, Frame)> {
    let mut stream = within(TcpStream::connect(addr)).await.expect("connect");
    let mut bytes = handshake();
    bytes.put_slice(input);
    let (mut rd, mut wr) = stream.split();
    let write = async {
        if wr.write_all(&bytes).await.is_ok() {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    // The broker must close the connection after the client's EOF, within the guard.
    let ((), out) = within(async { tokio::join!(write, read) }).await;
    let mut codec = FrameCodec::new(0);
    let mut buf = BytesMut::from(&out[..]);
    let mut frames = Vec::new();
    loop {
        let size = buf.get(3..7).map(|s| {
            u32::from_be_bytes(s.try_into().unwrap()) as usize
                + minimq_protocol::frame::FRAME_OVERHEAD
        });
        match codec
            .decode(&mut buf)
            .expect("every frame the broker sends decodes")
        {
            Some(frame) => frames.push((size.unwrap(), frame)),
            None => break,
        }
    }
    assert!(buf.is_empty(), "the broker closed in the middle of a frame");
    frames
}

/// A fresh connection is still greeted with `connection.start` (which
/// [`Client::connect`] asserts).
async fn still_serving(addr: SocketAddr) {
    Client::connect(addr).await;
}

fn method(buf: &mut BytesMut, channel: u16, m: impl Into<Method>) {
    encode_method(buf, channel, &m.into());
}

/// Found by the `connection` fuzz target's frame_max check (kind "grown"): a client whose
/// every frame fits frame_max 4096 publishes a message whose content header frame is
/// exactly 4096 octets, `basic.get`s it, rejects it with requeue and gets it again. The
/// redelivery carries an `x-delivery-count` header the broker added, and the broker sends
/// that content header as a 4122-octet frame, over the negotiated frame_max. A client that
/// enforces frame_max (minimq-client does) drops the connection with a frame error.
#[tokio::test]
async fn redelivered_header_fits_frame_max() {
    let broker = broker().await;
    let mut input = BytesMut::new();
    method(&mut input, 1, ChannelOpen);
    method(
        &mut input,
        1,
        QueueDeclare {
            queue: "fuzz-grown".into(),
            ..Default::default()
        },
    );
    method(
        &mut input,
        1,
        BasicPublish {
            routing_key: "fuzz-grown".into(),
            ..Default::default()
        },
    );
    // A header frame of exactly frame_max: 7 octets of frame header, 1 frame-end, 12 of
    // class / weight / body size, 2 of property flags, 4 of table length, and one
    // long-string entry `k` (1 + 1 + 1 + 4 octets + value).
    let value = vec![b'v'; 4096 - 8 - 12 - 2 - 4 - 7];
    let mut headers = FieldTable::new();
    headers.insert("k", FieldValue::LongString(value.into()));
    let header = Frame::Header(
        1,
        Box::new(ContentHeader {
            class_id: 60,
            body_size: 1,
            properties: BasicProperties {
                headers: Some(headers),
                ..Default::default()
            },
        }),
    );
    let at = input.len();
    header.encode(&mut input);
    assert_eq!(input.len() - at, FRAME_MAX as usize);
    input.put_slice(&[FRAME_BODY, 0, 1, 0, 0, 0, 1, b'x', FRAME_END]);
    let get = BasicGet {
        queue: "fuzz-grown".into(),
        no_ack: false,
    };
    method(&mut input, 1, get.clone());
    method(
        &mut input,
        1,
        BasicReject {
            delivery_tag: 1,
            requeue: true,
        },
    );
    method(&mut input, 1, get);

    let frames = replay(broker.local_addr(), &input).await;
    let headers: Vec<usize> = frames
        .iter()
        .filter(|(_, f)| matches!(f, Frame::Header(..)))
        .map(|(size, _)| *size)
        .collect();
    assert_eq!(
        headers.len(),
        2,
        "the message is delivered twice: {frames:?}"
    );
    for (size, frame) in &frames {
        assert!(
            *size <= FRAME_MAX as usize,
            "the broker sent a {size}-octet frame over frame_max {FRAME_MAX}: {frame:?}"
        );
    }
    still_serving(broker.local_addr()).await;
    broker.shutdown().await;
}
