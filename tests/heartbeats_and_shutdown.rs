//! A connection's liveness and its end, over real TCP: heartbeats (a silent client is
//! dropped and its unacked message requeued; a client that answers is kept), a secret
//! refreshed mid-connection (`connection.update-secret`), and the broker's graceful
//! shutdown (320 to every open connection; a client stuck in the handshake does not hold
//! it up).
//!
//! The heartbeat tests run on tokio's paused clock: the broker and the raw client
//! (`common::raw`) share the test's runtime, the broker's heartbeat timers are tokio
//! timers, and loopback TCP delivers a write before the runtime next looks for work, so
//! the clock only jumps when everyone waits for a timer: seconds of heartbeats take
//! milliseconds, and the test can say exactly when the broker gave up. A shutdown that must
//! not wait for a consumer that stopped reading is in `durability.rs` (it checks what comes
//! back after the restart); the management API's side of a shutdown in `admin.rs`.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::amqp::*;
use common::raw::{assert_serves, declare as raw_declare, Client, Next};
use common::{connect, start_broker, start_broker_with, within};
use minimq_broker::Config;
use minimq_protocol::{Frame, Method};
use tokio::net::TcpStream;
use tokio::time::Instant;

// ---------------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_dropped_after_two_heartbeats_and_its_unacked_message_requeued() {
    let broker = start_broker_with(Config {
        heartbeat: 1,
        ..Config::default()
    })
    .await;
    let addr = broker.local_addr();
    let mut c = Client::open_tuned(addr, 2047, 131_072, 1).await;
    c.open_channel(1).await;
    c.send(1, raw_declare("hb")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.publish("hb", b"work").await;
    let (tag, redelivered, _) = c.get("hb", false).await;
    assert_eq!((tag, redelivered), (1, false));
    // From now on the client sends nothing. The server keeps sending heartbeats, then
    // gives up on the client (RabbitMQ: after two missed intervals, without a close).
    let silent_since = Instant::now();
    let mut heartbeats = 0;
    loop {
        match c.next().await {
            Next::Frame(Frame::Heartbeat) => heartbeats += 1,
            Next::Frame(f) => panic!("unexpected frame {f:?}"),
            Next::Closed => break,
        }
    }
    assert!(heartbeats >= 1, "the server sends heartbeats");
    // The paused clock makes this exact: not before two intervals, and at the next check
    // (every half interval) after them.
    let silent = silent_since.elapsed();
    assert!(
        silent > Duration::from_secs(2) && silent <= Duration::from_secs(3),
        "dropped after {silent:?} of silence"
    );
    // The unacked message went back to its queue.
    let mut other = Client::open_channel1(addr).await;
    let (_, redelivered, body) = other.get("hb", true).await;
    assert!(redelivered);
    assert_eq!(&body[..], b"work");
    drop(other);
    assert_serves(addr).await;
    broker.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_client_that_sends_heartbeats_is_kept() {
    let broker = start_broker_with(Config {
        heartbeat: 1,
        ..Config::default()
    })
    .await;
    let mut c = Client::open_tuned(broker.local_addr(), 2047, 131_072, 1).await;
    c.open_channel(1).await;
    // Answer each server heartbeat with one, for a few intervals past the 2 s limit.
    let started = Instant::now();
    let mut seen = 0;
    while seen < 6 {
        match c.next().await {
            Next::Frame(Frame::Heartbeat) => {
                seen += 1;
                c.send_frame(Frame::Heartbeat).await;
            }
            Next::Frame(f) => panic!("unexpected frame {f:?}"),
            Next::Closed => panic!("the server dropped a client that sent heartbeats"),
        }
    }
    assert!(
        started.elapsed() > Duration::from_secs(2),
        "kept past the limit for a silent client, not only {:?}",
        started.elapsed()
    );
    c.send(1, raw_declare("alive")).await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    drop(c);
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Update secret
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn connection_update_secret_is_accepted() {
    let broker = start_broker().await;
    let mut c = Client::open(broker.local_addr()).await;
    c.send(
        0,
        minimq_protocol::ConnectionUpdateSecret {
            new_secret: Bytes::from_static(b"guest"),
            reason: "token refresh".into(),
        }
        .into(),
    )
    .await;
    assert!(matches!(
        c.method(0).await,
        Method::ConnectionUpdateSecretOk(_)
    ));
    assert_serves(broker.local_addr()).await;
    drop(c);
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Shutdown
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn graceful_shutdown_closes_client_connections_with_320() {
    let broker = start_broker().await;
    let addr = broker.local_addr();
    let conn = connect(&broker).await;
    let mut errors = connection_errors(&conn);
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    within(broker.shutdown()).await;
    assert_eq!(
        next_error(&mut errors).await,
        (
            320,
            "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
                .to_string()
        )
    );
    assert!(!conn.status().connected());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn shutdown_does_not_wait_for_a_client_stuck_in_the_handshake() {
    let broker = start_broker_with(Config {
        handshake_timeout: Duration::from_secs(600),
        ..Config::default()
    })
    .await;
    // Connected, sent the protocol header, got connection.start, then silent.
    let mut c = Client::connect(broker.local_addr()).await;
    // Shutdown must finish well inside the guard, not after the 600 s handshake timeout.
    within(broker.shutdown()).await;
    c.expect_eof().await;
}
