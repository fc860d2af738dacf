//! Field-table value types as RabbitMQ reads them. RabbitMQ's parser accepts the tags
//! `S I D T F A b B s u i l L f d x V t` (the AMQP 0-9-1 errata's names; `L` is read as a
//! signed 64-bit `long`, like `l`) and ends the connection on any other tag. Each tag is
//! sent in a `queue.declare`:
//! - as an argument the broker does not know (`x-probe`): accepted;
//! - as `x-max-length` with a small value: accepted for the integer types, refused for the
//!   others with RabbitMQ's `"expected integer, got TYPE"`;
//! - as `x-max-length` with every bit set: refused as `{value_negative,-1}` for the signed
//!   integer types (`L` included), accepted for the unsigned ones.
//!
//! The same expectations run against a RabbitMQ node when `MINIMQ_TEST_RABBITMQ_URL` is set
//! (`cargo test --test field_types -- --ignored`, as CI does), so the table below is what
//! RabbitMQ answers, not only what minimq does.

mod common;

use std::net::{SocketAddr, ToSocketAddrs};

use common::raw::{raw_method, Client, Next};
use minimq_protocol::{Frame, Method};

/// Every tag RabbitMQ 3.x's `rabbit_binary_parser` reads, with its type name.
const KNOWN: &[(u8, &str)] = &[
    (b'S', "longstr"),
    (b'I', "signedint"),
    (b'D', "decimal"),
    (b'T', "timestamp"),
    (b'F', "table"),
    (b'A', "array"),
    (b'b', "byte"),
    (b'B', "unsignedbyte"),
    (b's', "short"),
    (b'u', "unsignedshort"),
    (b'i', "unsignedint"),
    (b'l', "long"),
    (b'L', "long"),
    (b'f', "float"),
    (b'd', "double"),
    (b'x', "binary"),
    (b'V', "void"),
    (b't', "bool"),
];

/// The integer types RabbitMQ takes for an integer argument, and whether they are signed.
fn integer(tag: u8) -> Option<bool> {
    match tag {
        b'b' | b's' | b'I' | b'l' | b'L' => Some(true),
        b'B' | b'u' | b'i' => Some(false),
        _ => None,
    }
}

/// A value of type `tag` on the wire: fixed-size types as `00…01` (or every bit set),
/// the variable-size ones empty. Unknown tags get four zero octets.
fn payload(tag: u8, all_ones: bool) -> Vec<u8> {
    let size = match tag {
        b't' | b'b' | b'B' => 1,
        b's' | b'u' => 2,
        b'I' | b'i' | b'f' => 4,
        b'l' | b'L' | b'd' | b'T' => 8,
        b'D' => 5,
        b'V' => return Vec::new(),
        _ => return vec![0; 4],
    };
    if all_ones {
        vec![0xFF; size]
    } else {
        let mut v = vec![0; size];
        v[size - 1] = 1;
        v
    }
}

/// `queue.declare` of `queue` with one argument `key` of type `tag`, as raw octets.
fn declare_with(queue: &str, key: &str, tag: u8, value: &[u8]) -> Vec<u8> {
    let mut table = vec![key.len() as u8];
    table.extend_from_slice(key.as_bytes());
    table.push(tag);
    table.extend_from_slice(value);
    let mut args = vec![0, 0, queue.len() as u8];
    args.extend_from_slice(queue.as_bytes());
    args.push(0); // passive, durable, exclusive, auto-delete, no-wait: all off
    args.extend_from_slice(&(table.len() as u32).to_be_bytes());
    args.extend_from_slice(&table);
    raw_method(1, 50, 10, &args)
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Declared,
    /// `channel.close` with this code and text.
    Refused(u16, String),
    /// The connection ended: RabbitMQ drops the socket, minimq sends `501` first.
    ConnectionEnded,
}

/// Sends one declare on a fresh connection and tells what the broker did.
async fn probe(addr: SocketAddr, queue: &str, key: &str, tag: u8, value: &[u8]) -> Outcome {
    let mut c = Client::open_channel1(addr).await;
    c.send_raw(&declare_with(queue, key, tag, value)).await;
    let outcome = loop {
        match c.next().await {
            Next::Frame(Frame::Heartbeat) => continue,
            Next::Frame(Frame::Method(1, Method::QueueDeclareOk(_))) => break Outcome::Declared,
            Next::Frame(Frame::Method(1, Method::ChannelClose(close))) => {
                break Outcome::Refused(close.reply_code, close.reply_text)
            }
            Next::Frame(Frame::Method(0, Method::ConnectionClose(_))) | Next::Closed => {
                break Outcome::ConnectionEnded
            }
            Next::Frame(other) => panic!("unexpected answer to a declare: {other:?}"),
        }
    };
    if outcome == Outcome::Declared {
        // Leave nothing behind on a shared reference node.
        let mut args = vec![0, 0, queue.len() as u8];
        args.extend_from_slice(queue.as_bytes());
        args.push(0);
        c.send_raw(&raw_method(1, 50, 40, &args)).await;
        assert!(matches!(c.method(1).await, Method::QueueDeleteOk(_)));
    }
    outcome
}

fn invalid(queue: &str, why: &str) -> Outcome {
    Outcome::Refused(
        406,
        format!("PRECONDITION_FAILED - invalid arg 'x-max-length' for queue '{queue}' in vhost '/': {why}"),
    )
}

/// Runs every case against the broker at `addr`; panics on the first difference.
async fn every_tag_as_rabbitmq_reads_it(addr: SocketAddr) {
    let run = std::process::id();
    for &(tag, name) in KNOWN {
        let t = tag as char;
        let q = format!("field-types-{run}-{tag}");
        assert_eq!(
            probe(addr, &q, "x-probe", tag, &payload(tag, false)).await,
            Outcome::Declared,
            "tag '{t}' in an unknown argument"
        );
        let expected = match integer(tag) {
            Some(_) => Outcome::Declared,
            None => invalid(&q, &format!("\"expected integer, got {name}\"")),
        };
        assert_eq!(
            probe(addr, &q, "x-max-length", tag, &payload(tag, false)).await,
            expected,
            "tag '{t}' as x-max-length = 1"
        );
        // Every bit set: -1 for the signed types. A float of every bit set is a NaN,
        // which RabbitMQ 3.10 cannot format in its refusal (it drops the connection).
        if matches!(tag, b'f' | b'd') {
            continue;
        }
        let expected = match integer(tag) {
            Some(true) => invalid(&q, "{value_negative,-1}"),
            Some(false) => Outcome::Declared,
            None => invalid(&q, &format!("\"expected integer, got {name}\"")),
        };
        assert_eq!(
            probe(addr, &q, "x-max-length", tag, &payload(tag, true)).await,
            expected,
            "tag '{t}' as x-max-length with every bit set"
        );
    }
    for tag in 0..=255u8 {
        if KNOWN.iter().any(|&(k, _)| k == tag) {
            continue;
        }
        let q = format!("field-types-{run}-{tag}");
        assert_eq!(
            probe(addr, &q, "x-probe", tag, &payload(tag, false)).await,
            Outcome::ConnectionEnded,
            "unknown tag {tag:#04x}"
        );
    }
}

#[tokio::test]
async fn every_field_type_tag_is_read_as_rabbitmq_reads_it() {
    let broker = common::start_broker().await;
    every_tag_as_rabbitmq_reads_it(broker.local_addr()).await;
}

/// Celery's delayed-delivery queues: `x-message-ttl` up to 2^27 s, which py-amqp sends with
/// the tag `L` because it exceeds 2^31.
#[tokio::test]
async fn a_message_ttl_sent_as_unsigned_64_bit_is_taken() {
    let broker = common::start_broker().await;
    let ttl: u64 = (1 << 27) * 1000;
    assert_eq!(
        probe(
            broker.local_addr(),
            "celery_delayed_27",
            "x-message-ttl",
            b'L',
            &ttl.to_be_bytes()
        )
        .await,
        Outcome::Declared
    );
}

/// The reference: the same cases against the RabbitMQ node CI starts.
#[tokio::test]
#[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_URL (CI runs it with --ignored)"]
async fn rabbitmq_reads_every_field_type_tag_the_same_way() {
    let url = std::env::var("MINIMQ_TEST_RABBITMQ_URL")
        .expect("MINIMQ_TEST_RABBITMQ_URL must name the reference RabbitMQ node");
    // amqp://user:pass@host:port/vhost
    let host_port = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .expect("MINIMQ_TEST_RABBITMQ_URL is amqp://user:pass@host:port/vhost");
    let addr = host_port
        .to_socket_addrs()
        .expect("resolve the RabbitMQ node")
        .next()
        .expect("an address for the RabbitMQ node");
    every_tag_as_rabbitmq_reads_it(addr).await;
}
