//! Fuzzes the broker's connection state machine, black-box, over loopback TCP.
//!
//! One embedded broker (in memory, no management API) runs on a current-thread tokio
//! runtime created once per process. Each input is one client connection:
//!
//! - an input starting with `AMQP` is sent as it is: the whole client side of a session,
//!   protocol header and handshake included (the seed corpus holds such streams, captured
//!   from pika and lapin sessions);
//! - any other input is sent after the protocol header and a valid handshake
//!   (`start-ok` PLAIN guest/guest, `tune-ok` with frame_max 4096, channel_max 32, no
//!   heartbeats, `open /`), so the fuzzer works on the channel methods and content;
//! - an input starting with 0xCE (a frame-end octet, never the first octet of a frame) is
//!   sent after that handshake too, but as a list of `type:u8 channel:u16 length:u16
//!   payload` records the harness frames (size and frame-end filled in), so mutations of a
//!   payload do not break the framing of everything after it.
//!
//! Then the client half-closes and reads until the broker closes the socket.
//!
//! Checked for every input:
//! - no panic anywhere in the broker (libfuzzer-sys turns a panic in any tokio task into
//!   an abort);
//! - the broker closes the connection within [`CLOSE_WITHIN`] of the client's EOF;
//! - what the broker sends is well-formed: every frame decodes; in handshake-prefix mode a
//!   frame over the negotiated frame_max is reported (see [`oversize`]);
//! - the broker still accepts a fresh connection (checked every [`HEALTH_EVERY`] inputs);
//! - bounded memory: libFuzzer's `-rss_limit_mb` / `-malloc_limit_mb`. The broker is
//!   restarted (graceful shutdown, which must finish) every [`RESTART_EVERY`] inputs so
//!   legitimately declared queues and messages do not pile up across inputs.
//!
//! For triage, `FUZZ_DEBUG_OUTPUT=1` prints every frame the broker sent.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use minimq_broker::Broker;
use minimq_protocol::frame::{encode_method, PROTOCOL_HEADER};
use minimq_protocol::{
    ConnectionOpen, ConnectionStartOk, ConnectionTuneOk, FieldTable, Frame, FrameCodec, Method,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio_util::codec::Decoder;

/// How long the broker may take to close the socket after the client's EOF.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// A fresh connection must be greeted with `connection.start` every this many inputs.
const HEALTH_EVERY: u64 = 64;
/// The broker is shut down and started afresh every this many inputs.
const RESTART_EVERY: u64 = 4096;
/// Most server output kept for the well-formedness check.
const KEEP_OUTPUT: usize = 4 * 1024 * 1024;
/// frame_max the handshake prefix negotiates.
const FRAME_MAX: u32 = 4096;

struct Harness {
    rt: Runtime,
    broker: Option<Broker>,
    addr: SocketAddr,
    inputs: u64,
    prefix: Bytes,
}

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

fn start_broker(rt: &Runtime) -> Broker {
    rt.block_on(
        Broker::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .heartbeat(0)
            .handshake_timeout(Duration::from_secs(2))
            .start(),
    )
    .expect("embedded broker starts")
}

/// Protocol header and a complete, valid client handshake.
fn handshake_prefix() -> Bytes {
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
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&PROTOCOL_HEADER);
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
    buf.freeze()
}

fn harness() -> &'static Mutex<Harness> {
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let broker = start_broker(&rt);
        let addr = broker.local_addr();
        Mutex::new(Harness {
            rt,
            broker: Some(broker),
            addr,
            inputs: 0,
            prefix: handshake_prefix(),
        })
    })
}

fn connect(addr: SocketAddr) -> impl std::future::Future<Output = TcpStream> {
    async move {
        let s = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("broker at {addr} refused a connection: {e}"));
        // Close with RST once done: no TIME_WAIT pile-up of ephemeral ports.
        #[allow(deprecated)] // zero linger: dropping does not block, it resets
        let _ = s.set_linger(Some(Duration::ZERO));
        let _ = s.set_nodelay(true);
        s
    }
}

/// Sends `payload`, half-closes, and collects what the broker sends until it closes.
/// Returns the output and whether it ended with a clean EOF (not a reset).
async fn session(addr: SocketAddr, payload: &[u8]) -> (Vec<u8>, bool) {
    let stream = connect(addr).await;
    let (mut rd, mut wr) = stream.into_split();
    let write = async {
        // The broker may close first (bad header, refused login, connection error).
        if wr.write_all(payload).await.is_ok() {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => return (out, true),
                Ok(n) => {
                    if out.len() < KEEP_OUTPUT {
                        out.extend_from_slice(&chunk[..n]);
                    }
                }
                Err(_) => return (out, false),
            }
        }
    };
    let ((), result) = tokio::time::timeout(CLOSE_WITHIN, async { tokio::join!(write, read) })
        .await
        .unwrap_or_else(|_| {
            panic!(
                "broker did not close the connection within {CLOSE_WITHIN:?} of the client's EOF"
            )
        });
    result
}

/// Marks an input of frame records (see the module docs).
const FRAMED: u8 = 0xCE;

/// Frames `type:u8 channel:u16 length:u16 payload` records; a short last record is cut to
/// what is there.
fn frame_records(mut records: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.len() * 2);
    while let [kind, c0, c1, l0, l1, rest @ ..] = records {
        let len = usize::from(u16::from_be_bytes([*l0, *l1])).min(rest.len());
        let (payload, tail) = rest.split_at(len);
        out.push(*kind);
        out.extend_from_slice(&[*c0, *c1]);
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out.push(0xCE);
        records = tail;
    }
    out
}

/// The largest frame (framing included) in a client stream after the protocol header.
fn largest_frame(stream: &[u8]) -> u64 {
    let mut rest = stream.get(8..).unwrap_or_default();
    let mut largest = 0;
    while let [_, _, _, a, b, c, d, ..] = rest {
        let total = u64::from(u32::from_be_bytes([*a, *b, *c, *d])) + 8;
        largest = largest.max(total);
        rest = rest.get(total as usize..).unwrap_or_default();
    }
    largest
}

/// Frames over frame_max reported so far, by kind (see [`oversize`]).
static OVERSIZE_NOTES: Mutex<[u32; 2]> = Mutex::new([0; 2]);

/// A frame over the negotiated frame_max. It fails the input when `FUZZ_STRICT_FRAME_MAX`
/// is set; otherwise the first few inputs of each kind are printed (hex) to stderr and
/// fuzzing goes on: kind "echo" when the client itself sent a frame at least that large
/// (the broker, like RabbitMQ, accepts payloads of frame_max), "grown" when not.
fn oversize(size: u64, client_largest: u64, frame: &Frame, input: &[u8]) {
    let msg = format!(
        "broker sent a {size}-octet frame, over the negotiated frame_max {FRAME_MAX} \
         (client's largest frame: {client_largest}): {frame:?}"
    );
    if std::env::var_os("FUZZ_STRICT_FRAME_MAX").is_some() {
        panic!("{msg}");
    }
    let kind = usize::from(size > client_largest);
    let mut notes = OVERSIZE_NOTES.lock().unwrap_or_else(|p| p.into_inner());
    notes[kind] += 1;
    if notes[kind] <= 3 {
        let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!(
            "OVERSIZE-FRAME kind={} {msg}\nOVERSIZE-INPUT {hex}",
            ["echo", "grown"][kind]
        );
    }
}

/// Every frame the broker sent must decode; in prefix mode none should exceed frame_max.
fn check_output(out: &[u8], clean_eof: bool, prefix_mode: bool, sent: &[u8], input: &[u8]) {
    if out.len() >= KEEP_OUTPUT {
        return;
    }
    if out.starts_with(b"AMQP") {
        // A refused protocol header is answered with the supported header, then EOF.
        assert!(
            PROTOCOL_HEADER.starts_with(out) && (out.len() == 8 || !clean_eof),
            "bad reply to a refused protocol header: {out:?}"
        );
        return;
    }
    let debug = std::env::var_os("FUZZ_DEBUG_OUTPUT").is_some();
    let mut codec = FrameCodec::new(0);
    let mut buf = BytesMut::from(out);
    loop {
        let size = (buf.len() >= 7)
            .then(|| u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]) as u64 + 8);
        match codec.decode(&mut buf) {
            Ok(Some(frame)) => {
                let size = size.expect("a frame has a header");
                if debug {
                    eprintln!("broker sent ({size} octets): {frame:?}");
                }
                if prefix_mode && size > u64::from(FRAME_MAX) {
                    oversize(size, largest_frame(sent), &frame, input);
                }
                if prefix_mode && frame == Frame::Heartbeat {
                    panic!("broker sent a heartbeat although heartbeats are off");
                }
            }
            Ok(None) => break,
            Err(e) => panic!("broker sent a frame that does not decode: {e:?}"),
        }
    }
    if clean_eof {
        assert!(buf.is_empty(), "broker closed in the middle of a frame");
    }
}

/// A fresh connection is greeted with `connection.start`.
async fn health_check(addr: SocketAddr) {
    let check = async {
        let mut s = connect(addr).await;
        s.write_all(&PROTOCOL_HEADER).await.expect("send header");
        let mut codec = FrameCodec::new(0);
        let mut buf = BytesMut::new();
        loop {
            if let Some(frame) = codec.decode(&mut buf).expect("connection.start decodes") {
                assert!(
                    matches!(frame, Frame::Method(0, Method::ConnectionStart(_))),
                    "fresh connection greeted with {frame:?}"
                );
                return;
            }
            let n = s.read_buf(&mut buf).await.expect("read connection.start");
            assert!(
                n > 0,
                "broker closed a fresh connection before connection.start"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .expect("broker stopped accepting connections");
}

fuzz_target!(|data: &[u8]| {
    let mut h = harness().lock().unwrap_or_else(|p| p.into_inner());
    let h = &mut *h;
    h.inputs += 1;
    if h.inputs % RESTART_EVERY == 0 {
        let broker = h.broker.take().expect("broker running");
        h.rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), broker.shutdown())
                .await
                .expect("graceful shutdown finished")
        });
        let broker = start_broker(&h.rt);
        h.addr = broker.local_addr();
        h.broker = Some(broker);
    }
    let prefix_mode = !data.starts_with(b"AMQP");
    let payload: Vec<u8> = match data {
        [FRAMED, records @ ..] => [&h.prefix[..], &frame_records(records)].concat(),
        _ if prefix_mode => [&h.prefix[..], data].concat(),
        _ => data.to_vec(),
    };
    let addr = h.addr;
    let (out, clean_eof) = h.rt.block_on(session(addr, &payload));
    check_output(&out, clean_eof, prefix_mode, &payload, data);
    if h.inputs % HEALTH_EVERY == 1 {
        h.rt.block_on(health_check(addr));
    }
});
