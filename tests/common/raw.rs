//! A raw AMQP 0-9-1 client for the end-to-end tests: frames built from minimq-protocol's
//! codec or written octet by octet, so a test can send what no real client would and assert
//! the exact frames that come back. Every wait is for an event under [`within`]'s guard.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::{Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use minimq_protocol::frame::PROTOCOL_HEADER;
use minimq_protocol::{
    BasicConsume, BasicDeliver, BasicGet, BasicProperties, BasicPublish, ChannelOpen, CodecError,
    ConnectionClose, ConnectionCloseOk, ConnectionOpen, ConnectionStartOk, ConnectionTuneOk,
    ContentHeader, FieldTable, FieldValue, Frame, FrameCodec, Method, QueueDeclare, QueueDeclareOk,
};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

use super::within;

/// A frame as bytes, with any frame-end octet.
pub fn raw_frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
    let mut b = Vec::with_capacity(payload.len() + 8);
    b.push(kind);
    b.extend_from_slice(&channel.to_be_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    b.extend_from_slice(payload);
    b.push(end);
    b
}

/// A method frame as bytes: class, method and whatever argument bytes are given.
pub fn raw_method(channel: u16, class_id: u16, method_id: u16, args: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    payload.extend_from_slice(&class_id.to_be_bytes());
    payload.extend_from_slice(&method_id.to_be_bytes());
    payload.extend_from_slice(args);
    raw_frame(1, channel, &payload, 0xCE)
}

/// A field table (queue arguments, headers) from its entries.
pub fn table(entries: &[(&str, FieldValue)]) -> FieldTable {
    let mut t = FieldTable::new();
    for (k, v) in entries {
        t.insert(*k, v.clone());
    }
    t
}

/// A PLAIN `response`: `\0user\0password`.
pub fn plain(user: &str, pass: &str) -> Bytes {
    Bytes::from(format!("\0{user}\0{pass}"))
}

/// `connection.start-ok`, with the `authentication_failure_close` capability if asked.
pub fn start_ok(mechanism: &str, response: Bytes, auth_failure_close: bool) -> Method {
    let mut props = FieldTable::new();
    props.insert("product", "minimq tests");
    if auth_failure_close {
        let mut caps = FieldTable::new();
        caps.insert("authentication_failure_close", true);
        props.insert("capabilities", caps);
    }
    ConnectionStartOk {
        client_properties: props,
        mechanism: mechanism.into(),
        response,
        locale: "en_US".into(),
    }
    .into()
}

/// A content header on channel 1 for a body of `body_size` octets, no properties.
pub fn header(body_size: u64) -> Frame {
    Frame::Header(
        1,
        Box::new(ContentHeader {
            class_id: 60,
            body_size,
            properties: Default::default(),
        }),
    )
}

/// `basic.publish` to `queue` through the default exchange.
pub fn publish_to(queue: &str) -> Method {
    BasicPublish {
        exchange: String::new(),
        routing_key: queue.into(),
        mandatory: false,
        immediate: false,
    }
    .into()
}

/// A plain `queue.declare` of `queue`.
pub fn declare(queue: &str) -> Method {
    QueueDeclare {
        queue: queue.into(),
        ..Default::default()
    }
    .into()
}

/// What the server did next.
#[derive(Debug)]
pub enum Next {
    Frame(Frame),
    Closed,
}

/// A raw AMQP client.
pub struct Client {
    pub io: Framed<TcpStream, FrameCodec>,
}

impl Client {
    /// Connects and sends `header`; nothing else.
    pub async fn connect_with_header(addr: SocketAddr, header: &[u8]) -> Client {
        let mut socket = within(TcpStream::connect(addr)).await.expect("connect");
        socket.set_nodelay(true).expect("nodelay");
        socket.write_all(header).await.expect("send header");
        Client {
            io: Framed::new(socket, FrameCodec::new(0)),
        }
    }

    /// Connects, sends the protocol header and reads `connection.start`.
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut c = Client::connect_with_header(addr, &PROTOCOL_HEADER).await;
        let start = c.method(0).await;
        assert!(
            matches!(start, Method::ConnectionStart(_)),
            "expected connection.start, got {start:?}"
        );
        c
    }

    /// Logs in as guest with PLAIN and returns the server's `connection.tune` values.
    pub async fn login(addr: SocketAddr) -> (Client, u16, u32) {
        let mut c = Client::connect(addr).await;
        c.send(0, start_ok("PLAIN", plain("guest", "guest"), false))
            .await;
        match c.method(0).await {
            Method::ConnectionTune(t) => (c, t.channel_max, t.frame_max),
            other => panic!("expected connection.tune, got {other:?}"),
        }
    }

    /// A full handshake with `tune-ok` as given, then `connection.open` of `/`; frames
    /// above `frame_max` (0: no limit) are refused from then on.
    pub async fn open_tuned(
        addr: SocketAddr,
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    ) -> Client {
        let (mut c, _, _) = Client::login(addr).await;
        c.send(
            0,
            ConnectionTuneOk {
                channel_max,
                frame_max,
                heartbeat,
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
        let ok = c.method(0).await;
        assert!(
            matches!(ok, Method::ConnectionOpenOk(_)),
            "expected connection.open-ok, got {ok:?}"
        );
        // From now on a frame above the negotiated frame_max is the server's error: the
        // codec refuses it and `next` reports it.
        c.io.codec_mut().set_frame_max(frame_max);
        c
    }

    /// Logs in as `user` / `pass` (PLAIN, asking for `connection.close` on a refused
    /// login) and opens `/`: the client, and the server's answer to the open (or to the
    /// login, when it refused it).
    pub async fn open_as(addr: SocketAddr, user: &str, pass: &str) -> (Client, Method) {
        Client::open_vhost_as(addr, user, pass, "/").await
    }

    /// [`Client::open_as`] of vhost `vhost`.
    pub async fn open_vhost_as(
        addr: SocketAddr,
        user: &str,
        pass: &str,
        vhost: &str,
    ) -> (Client, Method) {
        let mut c = Client::connect(addr).await;
        c.send(0, start_ok("PLAIN", plain(user, pass), true)).await;
        match c.method(0).await {
            Method::ConnectionTune(_) => {}
            other => return (c, other),
        }
        c.send(
            0,
            ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            }
            .into(),
        )
        .await;
        c.send(
            0,
            ConnectionOpen {
                virtual_host: vhost.into(),
            }
            .into(),
        )
        .await;
        let answer = c.method(0).await;
        (c, answer)
    }

    /// A full handshake accepting the server's limits, no heartbeats.
    pub async fn open(addr: SocketAddr) -> Client {
        Client::open_tuned(addr, 2047, 131_072, 0).await
    }

    /// A full handshake and channel 1 open.
    pub async fn open_channel1(addr: SocketAddr) -> Client {
        let mut c = Client::open(addr).await;
        c.open_channel(1).await;
        c
    }

    /// Opens channel `ch` and waits for open-ok.
    pub async fn open_channel(&mut self, ch: u16) {
        self.send(ch, ChannelOpen.into()).await;
        let ok = self.method(ch).await;
        assert!(
            matches!(ok, Method::ChannelOpenOk(_)),
            "expected channel.open-ok on {ch}, got {ok:?}"
        );
    }

    /// Sends `method` on `channel`.
    pub async fn send(&mut self, channel: u16, method: Method) {
        self.send_frame(Frame::Method(channel, method)).await;
    }

    /// Sends `frame` as it is.
    pub async fn send_frame(&mut self, frame: Frame) {
        within(self.io.send(frame)).await.expect("send frame");
    }

    /// Writes bytes as they are. The server may already have closed: errors are ignored,
    /// what it answered is still read afterwards.
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        let _ = within(self.io.get_mut().write_all(bytes)).await;
    }

    /// The next frame, heartbeats included, or the end of the connection.
    pub async fn next(&mut self) -> Next {
        match within(self.io.next()).await {
            Some(Ok(frame)) => Next::Frame(frame),
            None | Some(Err(CodecError::Io(_))) => Next::Closed,
            Some(Err(CodecError::Decode(e))) => panic!("server sent an undecodable frame: {e}"),
        }
    }

    /// The next frame other than a heartbeat; the connection must still be open.
    pub async fn frame(&mut self) -> Frame {
        loop {
            match self.next().await {
                Next::Frame(Frame::Heartbeat) => continue,
                Next::Frame(f) => return f,
                Next::Closed => panic!("the server closed the connection"),
            }
        }
    }

    /// The next method, which must be on `channel`.
    pub async fn method(&mut self, channel: u16) -> Method {
        match self.frame().await {
            Frame::Method(ch, m) if ch == channel => m,
            other => panic!("expected a method on channel {channel}, got {other:?}"),
        }
    }

    /// Expects `connection.close` with exactly these fields, answers `close-ok`, and
    /// expects the socket to close.
    pub async fn expect_connection_close(
        &mut self,
        code: u16,
        text: &str,
        class_id: u16,
        method_id: u16,
    ) {
        match self.method(0).await {
            Method::ConnectionClose(c) => assert_eq!(
                (c.reply_code, c.reply_text.as_str(), c.class_id, c.method_id),
                (code, text, class_id, method_id),
                "connection.close fields"
            ),
            other => panic!("expected connection.close, got {other:?}"),
        }
        // The server may not wait for it (a frame it could not decode ends the read side).
        let _ = within(self.io.send(Frame::Method(0, ConnectionCloseOk.into()))).await;
        self.expect_eof().await;
    }

    /// Expects `channel.close` on `ch` with exactly these fields and answers `close-ok`.
    pub async fn expect_channel_close(
        &mut self,
        ch: u16,
        code: u16,
        text: &str,
        class_id: u16,
        method_id: u16,
    ) {
        match self.method(ch).await {
            Method::ChannelClose(c) => assert_eq!(
                (c.reply_code, c.reply_text.as_str(), c.class_id, c.method_id),
                (code, text, class_id, method_id),
                "channel.close fields"
            ),
            other => panic!("expected channel.close, got {other:?}"),
        }
        self.send(ch, minimq_protocol::ChannelCloseOk.into()).await;
    }

    /// Expects the server to close the socket without sending any frame first.
    pub async fn expect_eof(&mut self) {
        match self.next().await {
            Next::Closed => {}
            Next::Frame(f) => panic!("expected the socket to close, got {f:?}"),
        }
    }

    /// Publishes `body` to `queue` through the default exchange on channel 1.
    pub async fn publish(&mut self, queue: &str, body: &'static [u8]) {
        self.publish_with(queue, BasicProperties::default(), body)
            .await;
    }

    /// Publishes `body` with `properties` to `queue` through the default exchange on
    /// channel 1.
    pub async fn publish_with(&mut self, queue: &str, properties: BasicProperties, body: &[u8]) {
        self.send(1, publish_to(queue)).await;
        self.send_frame(Frame::Header(
            1,
            Box::new(ContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties,
            }),
        ))
        .await;
        if !body.is_empty() {
            self.send_frame(Frame::Body(1, Bytes::copy_from_slice(body)))
                .await;
        }
    }

    /// `queue.declare` of `queue` with `arguments` on channel 1: the declare-ok.
    pub async fn declare_with(&mut self, queue: &str, arguments: FieldTable) -> QueueDeclareOk {
        self.send(
            1,
            QueueDeclare {
                queue: queue.into(),
                arguments,
                ..Default::default()
            }
            .into(),
        )
        .await;
        match self.method(1).await {
            Method::QueueDeclareOk(ok) => ok,
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// The ready count of `queue`, from a passive `queue.declare` on channel 1. The queue
    /// answers it after everything this connection sent it before.
    pub async fn ready(&mut self, queue: &str) -> u32 {
        self.send(
            1,
            QueueDeclare {
                queue: queue.into(),
                passive: true,
                ..Default::default()
            }
            .into(),
        )
        .await;
        match self.method(1).await {
            Method::QueueDeclareOk(ok) => ok.message_count,
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
    }

    /// `basic.consume` of `queue` on `ch` with `tag`, acks required: waits for consume-ok.
    pub async fn consume(&mut self, ch: u16, queue: &str, tag: &str) {
        self.send(
            ch,
            BasicConsume {
                queue: queue.into(),
                consumer_tag: tag.into(),
                ..Default::default()
            }
            .into(),
        )
        .await;
        let ok = self.method(ch).await;
        assert!(
            matches!(ok, Method::BasicConsumeOk(_)),
            "expected basic.consume-ok on {ch}, got {ok:?}"
        );
    }

    /// The next delivery on `ch`: its `basic.deliver` and its body.
    pub async fn delivery(&mut self, ch: u16) -> (BasicDeliver, Bytes) {
        match self.method(ch).await {
            Method::BasicDeliver(d) => {
                let body = self.content(ch).await;
                (d, body)
            }
            other => panic!("expected basic.deliver on {ch}, got {other:?}"),
        }
    }

    /// `basic.get` on channel 1: the delivery tag, the redelivered flag and the body.
    pub async fn get(&mut self, queue: &str, no_ack: bool) -> (u64, bool, Bytes) {
        self.try_get(queue, no_ack)
            .await
            .expect("expected basic.get-ok, got get-empty")
    }

    /// `basic.get` on channel 1, which may find the queue empty.
    pub async fn try_get(&mut self, queue: &str, no_ack: bool) -> Option<(u64, bool, Bytes)> {
        self.send(
            1,
            BasicGet {
                queue: queue.into(),
                no_ack,
            }
            .into(),
        )
        .await;
        match self.method(1).await {
            Method::BasicGetOk(ok) => {
                let body = self.content(1).await;
                Some((ok.delivery_tag, ok.redelivered, body))
            }
            Method::BasicGetEmpty(_) => None,
            other => panic!("expected basic.get-ok or get-empty, got {other:?}"),
        }
    }

    /// A message's content header and body frames on `ch`: the body.
    async fn content(&mut self, ch: u16) -> Bytes {
        let h = match self.frame().await {
            Frame::Header(c, h) if c == ch => h,
            other => panic!("expected a content header on {ch}, got {other:?}"),
        };
        let mut body = BytesMut::new();
        while (body.len() as u64) < h.body_size {
            match self.frame().await {
                Frame::Body(c, b) if c == ch => body.extend_from_slice(&b),
                other => panic!("expected a content body on {ch}, got {other:?}"),
            }
        }
        body.freeze()
    }
}

/// A fresh connection to the broker still works: declare, publish, get.
pub async fn assert_serves(addr: SocketAddr) {
    static N: AtomicU32 = AtomicU32::new(0);
    let queue = format!("fresh-{}", N.fetch_add(1, Ordering::Relaxed));
    let mut c = Client::open_channel1(addr).await;
    c.send(1, declare(&queue)).await;
    let Method::QueueDeclareOk(ok) = c.method(1).await else {
        panic!("expected queue.declare-ok")
    };
    assert_eq!(ok.queue, queue);
    c.publish(&queue, b"ping").await;
    let (_, redelivered, body) = c.get(&queue, true).await;
    assert!(!redelivered);
    assert_eq!(&body[..], b"ping");
    c.send(
        0,
        ConnectionClose {
            reply_code: 200,
            reply_text: "bye".into(),
            class_id: 0,
            method_id: 0,
        }
        .into(),
    )
    .await;
    assert!(matches!(c.method(0).await, Method::ConnectionCloseOk(_)));
}
