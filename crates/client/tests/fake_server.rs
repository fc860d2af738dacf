//! Client behaviour that a real broker can't easily be made to show (a server that goes
//! silent, a forced close mid-call, `connection.blocked`, exact body framing), checked
//! against a scripted server on 127.0.0.1. No broker needed; these always run.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use futures::{SinkExt, StreamExt};
use minimq_client::{BasicProperties, Connection, Error};
use minimq_protocol::frame::{FRAME_END, FRAME_METHOD};
use minimq_protocol::{
    ChannelOpenOk, ConnectionClose, ConnectionOpenOk, ConnectionStart, ConnectionTune, FieldTable,
    Frame, FrameCodec, Method, PROTOCOL_HEADER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

const LIMIT: Duration = Duration::from_secs(10);

/// The server side of one connection, after the handshake.
struct Peer {
    framed: Framed<TcpStream, FrameCodec>,
}

impl Peer {
    async fn send(&mut self, channel: u16, method: Method) {
        self.framed
            .send(Frame::Method(channel, method))
            .await
            .unwrap();
    }

    /// The next frame that is not a heartbeat.
    async fn recv(&mut self) -> Frame {
        loop {
            let frame = tokio::time::timeout(LIMIT, self.framed.next())
                .await
                .expect("a frame in time")
                .expect("socket open")
                .expect("valid frame");
            if frame != Frame::Heartbeat {
                return frame;
            }
        }
    }

    async fn recv_method(&mut self) -> (u16, Method) {
        match self.recv().await {
            Frame::Method(ch, m) => (ch, m),
            other => panic!("expected a method, got {other:?}"),
        }
    }

    /// Answers the client's channel.open.
    async fn open_channel(&mut self) -> u16 {
        let (ch, m) = self.recv_method().await;
        assert!(matches!(m, Method::ChannelOpen(_)), "{m:?}");
        self.send(ch, Method::ChannelOpenOk(ChannelOpenOk)).await;
        ch
    }
}

/// Listens on a free port; returns the URL to connect to.
async fn listen(params: &str) -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (
        listener,
        format!("amqp://guest:guest@127.0.0.1:{port}/%2f{params}"),
    )
}

/// Accepts one client and runs the server side of the handshake.
async fn accept(listener: &TcpListener, tune: ConnectionTune) -> Peer {
    let (mut socket, _) = listener.accept().await.unwrap();
    let mut header = [0u8; 8];
    socket.read_exact(&mut header).await.unwrap();
    assert_eq!(header, PROTOCOL_HEADER);
    let mut peer = Peer {
        framed: Framed::new(socket, FrameCodec::new(0)),
    };
    peer.send(
        0,
        Method::ConnectionStart(ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::new(),
            mechanisms: "AMQPLAIN PLAIN".into(),
            locales: "en_US".into(),
        }),
    )
    .await;
    match peer.recv_method().await {
        (0, Method::ConnectionStartOk(ok)) => {
            assert_eq!(ok.mechanism, "PLAIN");
            assert_eq!(&ok.response[..], b"\0guest\0guest");
        }
        other => panic!("{other:?}"),
    }
    peer.send(0, Method::ConnectionTune(tune.clone())).await;
    match peer.recv_method().await {
        (0, Method::ConnectionTuneOk(ok)) => {
            assert!(ok.frame_max <= tune.frame_max || tune.frame_max == 0);
        }
        other => panic!("{other:?}"),
    }
    match peer.recv_method().await {
        (0, Method::ConnectionOpen(open)) => assert_eq!(open.virtual_host, "/"),
        other => panic!("{other:?}"),
    }
    peer.send(0, Method::ConnectionOpenOk(ConnectionOpenOk))
        .await;
    peer
}

fn tune(heartbeat: u16, frame_max: u32) -> ConnectionTune {
    ConnectionTune {
        channel_max: 2047,
        frame_max,
        heartbeat,
    }
}

#[tokio::test]
async fn silent_server_is_declared_dead_and_pending_calls_fail() {
    let (listener, url) = listen("?heartbeat=1").await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener, tune(60, 131072)).await;
        // Never answer; count the client's heartbeats until it hangs up.
        let mut heartbeats = 0;
        while let Some(Ok(frame)) = peer.framed.next().await {
            if frame == Frame::Heartbeat {
                heartbeats += 1;
            }
        }
        heartbeats
    });
    let conn = Connection::connect(&url).await.unwrap();
    assert_eq!(conn.tune().heartbeat, 1, "the smaller non-zero value wins");
    let started = std::time::Instant::now();
    let pending = tokio::time::timeout(LIMIT, conn.open_channel())
        .await
        .unwrap();
    assert!(
        matches!(pending, Err(Error::MissedHeartbeats(_))),
        "{pending:?}"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(1900), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    assert!(!conn.is_open());
    assert!(matches!(
        conn.open_channel().await,
        Err(Error::MissedHeartbeats(_))
    ));
    let heartbeats = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(heartbeats >= 2, "client sent {heartbeats} heartbeats");
}

#[tokio::test]
async fn server_close_fails_pending_calls_with_its_code() {
    let (listener, url) = listen("").await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131072)).await;
        peer.open_channel().await;
        let (ch, m) = peer.recv_method().await;
        assert!(matches!(m, Method::QueueDeclare(_)), "{ch} {m:?}");
        peer.send(
            0,
            Method::ConnectionClose(ConnectionClose {
                reply_code: 320,
                reply_text: "CONNECTION_FORCED - broker forced connection closure".into(),
                class_id: 0,
                method_id: 0,
            }),
        )
        .await;
        let (_, m) = peer.recv_method().await;
        assert!(matches!(m, Method::ConnectionCloseOk(_)), "{m:?}");
    });
    let conn = Connection::connect(&url).await.unwrap();
    assert_eq!(conn.tune().heartbeat, 0);
    let ch = conn.open_channel().await.unwrap();
    let declared = tokio::time::timeout(
        LIMIT,
        ch.queue_declare("q", Default::default(), FieldTable::new()),
    )
    .await
    .unwrap();
    match declared {
        Err(Error::ConnectionClosed { code: 320, text }) => {
            assert!(text.starts_with("CONNECTION_FORCED"), "{text}")
        }
        other => panic!("{other:?}"),
    }
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    assert!(matches!(
        ch.basic_qos(1, false).await,
        Err(Error::ConnectionClosed { code: 320, .. })
    ));
    assert!(matches!(
        conn.close().await,
        Err(Error::ConnectionClosed { code: 320, .. })
    ));
}

/// `connection.blocked` / `unblocked` as raw frames: the protocol crate has no such methods.
fn blocked_frame(method_id: u16, reason: Option<&str>) -> BytesMut {
    let mut args = BytesMut::new();
    if let Some(reason) = reason {
        args.put_u8(reason.len() as u8);
        args.put_slice(reason.as_bytes());
    }
    let mut b = BytesMut::new();
    b.put_u8(FRAME_METHOD);
    b.put_u16(0);
    b.put_u32(4 + args.len() as u32);
    b.put_u16(10);
    b.put_u16(method_id);
    b.put_slice(&args);
    b.put_u8(FRAME_END);
    b
}

#[tokio::test]
async fn blocked_and_unblocked_are_watchable() {
    let (listener, url) = listen("").await;
    let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
    // The unblock is sent only once the client saw the block, so the two are never
    // folded into one change of the watch.
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131072)).await;
        go_rx.await.unwrap();
        let socket = peer.framed.get_mut();
        socket
            .write_all(&blocked_frame(60, Some("low on memory")))
            .await
            .unwrap();
        seen_rx.await.unwrap();
        let socket = peer.framed.get_mut();
        socket.write_all(&blocked_frame(61, None)).await.unwrap();
        // Still a working connection afterwards.
        peer.open_channel().await;
        peer
    });
    let conn = Connection::connect(&url).await.unwrap();
    let mut blocked = conn.blocked();
    assert!(!blocked.borrow().is_blocked());
    go_tx.send(()).unwrap();
    tokio::time::timeout(LIMIT, blocked.changed())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *blocked.borrow_and_update(),
        minimq_client::BlockedState::Blocked {
            reason: "low on memory".into()
        }
    );
    seen_tx.send(()).unwrap();
    tokio::time::timeout(LIMIT, blocked.changed())
        .await
        .unwrap()
        .unwrap();
    assert!(!blocked.borrow().is_blocked());
    tokio::time::timeout(LIMIT, conn.open_channel())
        .await
        .unwrap()
        .unwrap();
    drop(server);
}

#[tokio::test]
async fn publish_bodies_are_split_at_frame_max() {
    let (listener, url) = listen("?frame_max=8192").await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 4096)).await;
        let ch = peer.open_channel().await;
        let mut sizes = Vec::new();
        match peer.recv().await {
            Frame::Method(c, Method::BasicPublish(p)) => {
                assert_eq!((c, p.routing_key.as_str(), p.mandatory), (ch, "rk", true))
            }
            other => panic!("{other:?}"),
        }
        let body_size = match peer.recv().await {
            Frame::Header(_, h) => {
                assert_eq!(h.properties.app_id.as_deref(), Some("test"));
                h.body_size
            }
            other => panic!("{other:?}"),
        };
        let mut body = Vec::new();
        while (body.len() as u64) < body_size {
            match peer.recv().await {
                Frame::Body(_, chunk) => {
                    sizes.push(chunk.len());
                    body.extend_from_slice(&chunk);
                }
                other => panic!("{other:?}"),
            }
        }
        (sizes, body)
    });
    let conn = Connection::connect(&url).await.unwrap();
    assert_eq!(
        conn.tune().frame_max,
        4096,
        "the smaller non-zero value wins"
    );
    let ch = conn.open_channel().await.unwrap();
    let body: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    let props = BasicProperties {
        app_id: Some("test".into()),
        ..BasicProperties::default()
    };
    ch.basic_publish("ex", "rk", true, props, body.clone())
        .await
        .unwrap();
    let (sizes, got) = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(got, body);
    assert_eq!(
        sizes,
        [4088, 4088, 10_000 - 2 * 4088],
        "4096 minus 8 octets of framing"
    );
}

#[tokio::test]
async fn dropping_every_handle_closes_the_connection() {
    let (listener, url) = listen("").await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131072)).await;
        peer.open_channel().await;
        let (ch, m) = peer.recv_method().await;
        match m {
            Method::ConnectionClose(close) => assert_eq!((ch, close.reply_code), (0, 200)),
            other => panic!("{other:?}"),
        }
        peer.send(0, Method::ConnectionCloseOk(Default::default()))
            .await;
        // Then the client hangs up.
        let eof = tokio::time::timeout(LIMIT, peer.framed.next())
            .await
            .unwrap();
        assert!(eof.is_none(), "{eof:?}");
    });
    let conn = Connection::connect(&url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    drop(ch);
    drop(conn);
    tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
}

#[tokio::test]
async fn an_unexpected_reply_is_a_connection_error() {
    let (listener, url) = listen("").await;
    let server = tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131072)).await;
        let ch = peer.open_channel().await;
        // A reply nobody asked for.
        peer.send(ch, Method::BasicQosOk(Default::default())).await;
        match peer.recv_method().await {
            (0, Method::ConnectionClose(close)) => close.reply_code,
            other => panic!("{other:?}"),
        }
    });
    let conn = Connection::connect(&url).await.unwrap();
    let _ch = conn.open_channel().await.unwrap();
    let code = tokio::time::timeout(LIMIT, server).await.unwrap().unwrap();
    assert_eq!(code, 505, "UNEXPECTED_FRAME");
    // A close after the violation waits for the connection to end and reports why.
    let closed = tokio::time::timeout(LIMIT, conn.close()).await.unwrap();
    assert!(matches!(closed, Err(Error::Protocol(_))), "{closed:?}");
    assert!(matches!(conn.close_reason(), Some(Error::Protocol(_))));
}

#[tokio::test]
async fn a_mute_server_times_the_connect_out() {
    let (listener, url) = listen("?connection_timeout=300").await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        socket.read_exact(&mut header).await.unwrap();
        tokio::time::sleep(LIMIT).await;
    });
    let started = std::time::Instant::now();
    let err = Connection::connect(&url).await.unwrap_err();
    assert!(matches!(err, Error::ConnectTimeout(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    server.abort();
}

#[tokio::test]
async fn a_server_without_plain_is_refused() {
    let (listener, url) = listen("").await;
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut header = [0u8; 8];
        socket.read_exact(&mut header).await.unwrap();
        let mut framed = Framed::new(socket, FrameCodec::new(0));
        let start = ConnectionStart {
            version_major: 0,
            version_minor: 9,
            server_properties: FieldTable::new(),
            mechanisms: "EXTERNAL".into(),
            locales: "en_US".into(),
        };
        framed
            .send(Frame::Method(0, Method::ConnectionStart(start)))
            .await
            .unwrap();
        let _ = framed.next().await;
    });
    let err = Connection::connect(&url).await.unwrap_err();
    assert!(
        matches!(&err, Error::Handshake(text) if text.contains("PLAIN")),
        "{err:?}"
    );
    server.abort();
}

/// A burst of deliveries read at once is not handled as one block, with every ack
/// waiting until the consumer went through all of it: the first deliveries' acks are on
/// the wire before the consumer gets the later ones, so a broker can work on them (and
/// send more) in the meantime. The consumer checks this without yielding, by reading the
/// acks from the server's socket in blocking mode: if they had not been written yet,
/// nothing could write them while it waits, and the read would time out.
#[tokio::test]
async fn acks_of_the_first_deliveries_leave_before_the_last_are_handed_out() {
    use minimq_client::BasicConsumeOptions;
    use minimq_protocol::frame::encode_content;
    use minimq_protocol::{BasicConsumeOk, BasicDeliver, BasicProperties as Props};
    use tokio_util::codec::Decoder;

    // A prefetch window's worth; fewer than tokio's cooperative budget (128), which would
    // make the consumer yield anyway.
    const BURST: u64 = 100;
    // Fewer than any sensible hand-off size, far fewer than the burst.
    const EARLY: u64 = 8;
    let (listener, url) = listen("").await;
    let (socket_tx, socket_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131_072)).await;
        let ch = peer.open_channel().await;
        match peer.recv_method().await {
            (c, Method::BasicConsume(_)) => assert_eq!(c, ch),
            other => panic!("{other:?}"),
        }
        peer.send(
            ch,
            Method::BasicConsumeOk(BasicConsumeOk {
                consumer_tag: "c".into(),
            }),
        )
        .await;
        let mut burst = BytesMut::new();
        for tag in 1..=BURST {
            let deliver = Method::BasicDeliver(BasicDeliver {
                consumer_tag: "c".into(),
                delivery_tag: tag,
                redelivered: false,
                exchange: String::new(),
                routing_key: "q".into(),
            });
            encode_content(&mut burst, ch, &deliver, &Props::default(), b"x", 131_072);
        }
        let mut socket = peer.framed.into_inner();
        socket.write_all(&burst).await.unwrap();
        let socket = socket.into_std().unwrap();
        socket.set_nonblocking(false).unwrap();
        socket.set_read_timeout(Some(LIMIT)).unwrap();
        let _ = socket_tx.send(socket);
    });
    let conn = Connection::connect(&url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let mut consumer = ch
        .basic_consume("q", "c", BasicConsumeOptions::default(), FieldTable::new())
        .await
        .unwrap();
    let mut server = socket_rx.await.unwrap();
    let mut acked = Vec::new();
    let mut inbound = BytesMut::new();
    let mut codec = FrameCodec::new(0);
    for tag in 1..=BURST {
        let delivery = tokio::time::timeout(LIMIT, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("a delivery");
        assert_eq!(delivery.delivery_tag, tag);
        if tag == BURST - EARLY {
            // Blocking: nothing else on this runtime runs until the acks are read.
            while (acked.len() as u64) < EARLY {
                let mut buf = [0u8; 4096];
                let n = std::io::Read::read(&mut server, &mut buf)
                    .expect("acks of the first deliveries written before the last are handed out");
                assert!(n > 0, "socket closed");
                inbound.extend_from_slice(&buf[..n]);
                while let Some(frame) = codec.decode(&mut inbound).unwrap() {
                    match frame {
                        Frame::Method(_, Method::BasicAck(a)) => acked.push(a.delivery_tag),
                        other => panic!("{other:?}"),
                    }
                }
            }
            assert_eq!(acked[..EARLY as usize], (1..=EARLY).collect::<Vec<_>>());
        }
        delivery.ack().await.unwrap();
    }
}

#[tokio::test]
async fn deliveries_read_together_arrive_whole_and_in_order_whatever_their_framing() {
    use std::sync::Arc;

    use minimq_client::BasicConsumeOptions;
    use minimq_protocol::frame::encode_content;
    use minimq_protocol::{BasicConsumeOk, BasicDeliver, BasicProperties as Props};

    let plain = Props::default();
    let text = Props {
        content_type: Some("text/plain".into()),
        delivery_mode: Some(2),
        ..Props::default()
    };
    // (consumer, tag, redelivered, exchange, routing key, properties, body, frame limit
    // the body is split at)
    type Step<'a> = (
        &'a str,
        u64,
        bool,
        &'a str,
        &'a str,
        &'a Props,
        &'a [u8],
        u32,
    );
    let big = vec![b'b'; 5000];
    let script: Vec<Step> = vec![
        ("c", 1, false, "", "q", &plain, b"one", 0),
        ("c", 2, true, "", "q", &plain, b"two", 0),
        ("c", 3, false, "", "q", &plain, b"three", 0),
        // A body in two frames.
        ("c", 4, false, "", "q", &plain, &big, 4096),
        ("c", 5, false, "ex", "other", &text, b"five", 0),
        // No body frame at all.
        ("c", 6, false, "ex", "other", &text, b"", 0),
        // A consumer this client does not have: dropped.
        ("nobody", 7, false, "", "q", &plain, b"seven", 0),
        ("c", 8, false, "ex", "other", &text, b"eight", 0),
        ("c", 9, false, "ex", "other", &text, b"nine", 0),
    ];
    let mut wire = BytesMut::new();
    for (ctag, tag, redelivered, exchange, rk, props, body, frame_max) in &script {
        let deliver = Method::BasicDeliver(BasicDeliver {
            consumer_tag: (*ctag).into(),
            delivery_tag: *tag,
            redelivered: *redelivered,
            exchange: (*exchange).into(),
            routing_key: (*rk).into(),
        });
        encode_content(&mut wire, 1, &deliver, props, body, *frame_max);
    }

    let (listener, url) = listen("").await;
    tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131_072)).await;
        let ch = peer.open_channel().await;
        assert_eq!(ch, 1);
        match peer.recv_method().await {
            (1, Method::BasicConsume(_)) => {}
            other => panic!("{other:?}"),
        }
        peer.send(
            1,
            Method::BasicConsumeOk(BasicConsumeOk {
                consumer_tag: "c".into(),
            }),
        )
        .await;
        // All of them in one write: the client reads them together.
        let mut socket = peer.framed.into_inner();
        socket.write_all(&wire).await.unwrap();
        // Keep the socket open until the client is done.
        let mut rest = Vec::new();
        let _ = socket.read_to_end(&mut rest).await;
    });
    let conn = Connection::connect(&url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = ch
        .basic_consume("q", "c", options, FieldTable::new())
        .await
        .unwrap();
    let mut received = Vec::new();
    for (ctag, tag, redelivered, exchange, rk, props, body, _) in &script {
        if *ctag != "c" {
            continue;
        }
        let d = tokio::time::timeout(LIMIT, consumer.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("a delivery");
        assert_eq!(
            (
                &*d.consumer_tag,
                d.delivery_tag,
                d.redelivered,
                &*d.exchange,
                &*d.routing_key
            ),
            (*ctag, *tag, *redelivered, *exchange, *rk)
        );
        assert_eq!(&*d.properties, *props, "properties of {tag}");
        assert_eq!(&d.body[..], *body, "body of {tag}");
        received.push(d);
    }
    // Deliveries after the first of a read carry the routing key and properties of the
    // one before them, when they are the same, without copies.
    let by_tag = |t: u64| received.iter().find(|d| d.delivery_tag == t).unwrap();
    assert!(Arc::ptr_eq(&by_tag(2).routing_key, &by_tag(3).routing_key));
    assert!(Arc::ptr_eq(&by_tag(2).properties, &by_tag(3).properties));
    assert!(Arc::ptr_eq(&by_tag(8).routing_key, &by_tag(9).routing_key));
    assert!(Arc::ptr_eq(&by_tag(8).properties, &by_tag(9).properties));
    assert!(Arc::ptr_eq(
        &by_tag(8).consumer_tag,
        &by_tag(9).consumer_tag
    ));
    drop(conn);
}

/// A close the server never answers is not reported as a clean close: publishes queued
/// before it may never have left (a flow-controlled server may simply not be reading).
#[tokio::test]
async fn a_close_the_server_never_answers_is_an_error() {
    let (listener, url) = listen("").await;
    tokio::spawn(async move {
        let mut peer = accept(&listener, tune(0, 131_072)).await;
        match peer.recv_method().await {
            (0, Method::ConnectionClose(_)) => {}
            other => panic!("{other:?}"),
        }
        // No close-ok; the socket stays open.
        let _ = peer.framed.next().await;
    });
    let conn = Connection::connect(&url).await.unwrap();
    // The client waits 10 s for close-ok.
    let closed = tokio::time::timeout(LIMIT * 2, conn.close())
        .await
        .expect("close gives up in time");
    match closed {
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
}
