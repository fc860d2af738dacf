//! Fuzzes the management HTTP API, black-box, over loopback TCP.
//!
//! One embedded broker (in memory, management API on an ephemeral port) runs on a
//! current-thread tokio runtime created once per process, with a few queues declared over
//! AMQP (durable and not, with messages, with arguments) so that the per-queue routes find
//! something. Each input is one HTTP connection:
//!
//! - an input starting with [`STRUCTURED`] is a request the harness writes: octet 1 picks
//!   the method, octet 2 the credentials (none, `guest:guest`, a wrong password, an unknown
//!   user, a malformed header), then a path (after `/api/`, up to the first NUL, its octets
//!   percent-encoded when they are not allowed in a request target), then the body, sent
//!   with a correct `Content-Length`; so the fuzzer spends its time on routes, path
//!   segments, query strings and bodies rather than on HTTP syntax;
//! - any other input is sent as it is (HTTP syntax, pipelining, framing) and the client
//!   half-closes.
//!
//! Checked for every input:
//! - no panic anywhere in the broker (libfuzzer-sys turns a panic in any task into an
//!   abort);
//! - the listener answers and closes the connection within [`CLOSE_WITHIN`];
//! - a structured request gets exactly one well-formed HTTP/1.1 response whose status is
//!   not 500 (an internal error is a bug: bad input is a 4xx), and whose body, when it is
//!   JSON, parses;
//! - the API still answers `GET /api/overview` with 200 every [`HEALTH_EVERY`] inputs.
//!
//! The broker is restarted every [`RESTART_EVERY`] inputs so that what inputs delete or
//! purge comes back.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use minimq_broker::Broker;
use minimq_client::{BasicProperties, Connection, FieldTable, QueueDeclareOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;

/// How long the listener may take to answer and close after the client's EOF.
const CLOSE_WITHIN: Duration = Duration::from_secs(5);
/// `GET /api/overview` must answer 200 every this many inputs.
const HEALTH_EVERY: u64 = 64;
/// The broker is shut down and started afresh every this many inputs.
const RESTART_EVERY: u64 = 2048;
/// Most response octets kept for the checks.
const KEEP_OUTPUT: usize = 4 * 1024 * 1024;
/// Marks an input the harness turns into one well-formed request (see the module docs).
const STRUCTURED: u8 = b'!';

const METHODS: &[&str] = &[
    "GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "FOO",
];

struct Harness {
    rt: Runtime,
    broker: Option<Broker>,
    /// Kept open so `/api/connections` and `/api/channels` have something to list.
    client: Option<Connection>,
    http: SocketAddr,
    inputs: u64,
}

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

/// A broker with its management API and a few queues to find.
fn start_broker(rt: &Runtime) -> (Broker, Connection, SocketAddr) {
    rt.block_on(async {
        let broker = Broker::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .http(Some("127.0.0.1:0".parse().unwrap()))
            .heartbeat(0)
            .start()
            .await
            .expect("embedded broker starts");
        let http = broker.http_addr().expect("management API is on");
        let conn = Connection::connect(&broker.amqp_url())
            .await
            .expect("client connects");
        let ch = conn.open_channel().await.expect("channel opens");
        let mut args = FieldTable::new();
        args.insert("x-max-length", 10i32);
        args.insert("x-message-ttl", 600_000i32);
        for (name, durable, arguments) in [
            ("q", false, FieldTable::new()),
            ("durable", true, FieldTable::new()),
            ("with args", false, args),
            ("%2f/é", false, FieldTable::new()),
        ] {
            let options = QueueDeclareOptions {
                durable,
                ..Default::default()
            };
            ch.queue_declare(name, options, arguments)
                .await
                .expect("queue declares");
            for i in 0..3u8 {
                ch.basic_publish("", name, false, BasicProperties::default(), vec![i; 16])
                    .await
                    .expect("publish");
            }
        }
        (broker, conn, http)
    })
}

fn harness() -> &'static Mutex<Harness> {
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (broker, client, http) = start_broker(&rt);
        Mutex::new(Harness {
            rt,
            broker: Some(broker),
            client: Some(client),
            http,
            inputs: 0,
        })
    })
}

/// Sends `payload`, half-closes, and collects what the listener sends until it closes.
async fn exchange(addr: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("management API at {addr} refused a connection: {e}"));
    // Close with RST once done: no TIME_WAIT pile-up of ephemeral ports.
    #[allow(deprecated)] // zero linger: dropping does not block, it resets
    let _ = stream.set_linger(Some(Duration::ZERO));
    let (mut rd, mut wr) = stream.into_split();
    let write = async {
        // The listener may close first (a malformed request).
        if wr.write_all(payload).await.is_ok() {
            let _ = wr.shutdown().await;
        }
    };
    let read = async {
        let mut out = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) | Err(_) => return out,
                Ok(n) => {
                    if out.len() < KEEP_OUTPUT {
                        out.extend_from_slice(&chunk[..n]);
                    }
                }
            }
        }
    };
    let ((), out) = tokio::time::timeout(CLOSE_WITHIN, async { tokio::join!(write, read) })
        .await
        .unwrap_or_else(|_| {
            panic!("management API did not close within {CLOSE_WITHIN:?} of the client's EOF")
        });
    out
}

/// Octets allowed as they are in a request target; the rest are percent-encoded.
fn target_octet_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&b)
}

/// The request a structured input describes (see the module docs).
fn structured_request(input: &[u8]) -> Vec<u8> {
    let method = METHODS[usize::from(input.first().copied().unwrap_or(0)) % METHODS.len()];
    let auth = input.get(1).copied().unwrap_or(0);
    let rest = input.get(2..).unwrap_or(&[]);
    let (path, body) = match rest.iter().position(|&b| b == 0) {
        Some(at) => (&rest[..at], &rest[at + 1..]),
        None => (rest, &[][..]),
    };
    let mut target = String::from("/api/");
    for &b in path {
        if target_octet_ok(b) {
            target.push(char::from(b));
        } else {
            target.push_str(&format!("%{b:02X}"));
        }
    }
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: localhost\r\n");
    match auth % 5 {
        0 => {}
        // guest:guest
        1 => req.push_str("Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n"),
        // guest:wrong
        2 => req.push_str("Authorization: Basic Z3Vlc3Q6d3Jvbmc=\r\n"),
        // nobody:guest
        3 => req.push_str("Authorization: Basic bm9ib2R5Omd1ZXN0\r\n"),
        _ => req.push_str("Authorization: Basic ###\r\n"),
    }
    if auth & 0x80 != 0 {
        req.push_str("Content-Type: application/json\r\n");
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    ));
    let mut out = req.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Checks a response to one structured request: one well-formed response, not a 500, a
/// JSON body that parses. `head` says the request was HEAD (no body follows).
fn check_response(out: &[u8], head: bool) {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut headers);
    let header_len = match resp.parse(out) {
        Ok(httparse::Status::Complete(n)) => n,
        other => panic!(
            "no complete HTTP response ({other:?}): {:?}",
            String::from_utf8_lossy(&out[..out.len().min(512)])
        ),
    };
    let status = resp.code.unwrap_or(0);
    assert!(
        status != 500,
        "500 answer: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(2048)])
    );
    let json = resp.headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("content-type")
            && h.value.starts_with(b"application/json")
    });
    let body = &out[header_len..];
    if json && !head && !body.is_empty() && out.len() < KEEP_OUTPUT {
        if let Err(e) = serde_json::from_slice::<serde_json::Value>(body) {
            panic!(
                "status {status}: JSON body does not parse ({e}): {:?}",
                String::from_utf8_lossy(&body[..body.len().min(2048)])
            );
        }
    }
}

async fn overview_ok(addr: SocketAddr) {
    let out = exchange(
        addr,
        b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "GET /api/overview: {:?}",
        String::from_utf8_lossy(&out[..out.len().min(512)])
    );
}

fuzz_target!(|data: &[u8]| {
    let mut h = harness().lock().unwrap_or_else(|p| p.into_inner());
    h.inputs += 1;
    if h.inputs % RESTART_EVERY == 0 {
        h.client = None;
        if let Some(b) = h.broker.take() {
            h.rt.block_on(b.shutdown());
        }
        let (broker, client, http) = start_broker(&h.rt);
        h.broker = Some(broker);
        h.client = Some(client);
        h.http = http;
    }
    let addr = h.http;
    let check_health = h.inputs % HEALTH_EVERY == 0;
    h.rt.block_on(async {
        match data.split_first() {
            Some((&STRUCTURED, rest)) => {
                let req = structured_request(rest);
                let head = req.starts_with(b"HEAD ");
                let out = exchange(addr, &req).await;
                check_response(&out, head);
            }
            _ => {
                exchange(addr, data).await;
            }
        }
        if check_health {
            overview_ok(addr).await;
        }
    });
});
