//! Crash safety with a real `minimq-server` process: publishers with confirms run while
//! the server is killed with SIGKILL at a random moment; after a restart every confirmed
//! message is present exactly once (unconfirmed ones may or may not be). Several cycles;
//! `MINIMQ_CRASH_CYCLES` raises the count for soak runs.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{free_port, spawn_server, Server};

use minimq_client::{Confirmation, Connection, QueueDeclareOptions};
use minimq_protocol::{BasicProperties, FieldTable};

/// A server on a free port over `dir`, and a connection to it as guest.
async fn start_and_connect(dir: &Path) -> (Server, Connection) {
    let addr = free_port();
    let server = spawn_server(addr, dir, &[]);
    let conn = Connection::connect(&format!("amqp://guest:guest@{addr}/%2f"))
        .await
        .expect("connect");
    (server, conn)
}

/// A small deterministic generator for the kill moments (no extra dependency).
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmed_messages_survive_sigkill_exactly_once() {
    let cycles: u64 = std::env::var("MINIMQ_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = std::env::temp_dir().join(format!("minimq-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    // Confirmed in the previous cycle, and merely sent (possibly stored, never confirmed).
    let mut confirmed: BTreeSet<String> = BTreeSet::new();
    let mut sent: BTreeSet<String> = BTreeSet::new();
    for cycle in 0..=cycles {
        let (mut server, conn) = start_and_connect(&dir).await;
        let ch = conn.open_channel().await.unwrap();
        if cycle > 0 {
            let prev = format!("crash-{}", cycle - 1);
            ch.queue_declare(&prev, durable(), FieldTable::new())
                .await
                .unwrap();
            let mut found = BTreeSet::new();
            while let Some(m) = ch.basic_get(&prev, true).await.unwrap() {
                let body = String::from_utf8(m.delivery.body.to_vec()).unwrap();
                assert!(
                    m.delivery.redelivered,
                    "after a crash every recovered message is flagged"
                );
                assert!(
                    found.insert(body.clone()),
                    "cycle {cycle}: {body} recovered twice"
                );
                assert!(sent.contains(&body), "cycle {cycle}: {body} was never sent");
            }
            eprintln!(
                "cycle {cycle}: {} sent, {} confirmed, {} recovered",
                sent.len(),
                confirmed.len(),
                found.len()
            );
            let lost: Vec<&String> = confirmed.difference(&found).collect();
            assert!(
                lost.is_empty(),
                "cycle {cycle}: confirmed messages lost after SIGKILL: {lost:?}"
            );
            // Deleting the queue is synced, so the next cycle starts from nothing.
            ch.queue_delete(&prev, Default::default()).await.unwrap();
        }
        if cycle == cycles {
            conn.close().await.unwrap();
            server.kill();
            break;
        }
        let queue = format!("crash-{cycle}");
        ch.queue_declare(&queue, durable(), FieldTable::new())
            .await
            .unwrap();
        ch.confirm_select().await.unwrap();
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let mut sent_now = BTreeSet::new();
        for i in 0..10 {
            // Warm up: some confirmed messages in every cycle.
            let body = format!("c{cycle}-w{i}");
            let props = BasicProperties {
                delivery_mode: Some(2),
                ..Default::default()
            };
            let confirm = ch
                .basic_publish("", &queue, false, props, body.clone())
                .await
                .unwrap();
            sent_now.insert(body.clone());
            assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
            acked.lock().unwrap().insert(body);
        }
        let publisher = {
            let (ch, queue, acked) = (ch.clone(), queue.clone(), acked.clone());
            tokio::spawn(async move {
                let mut sent = Vec::new();
                let mut window = std::collections::VecDeque::new();
                for i in 0.. {
                    let body = format!("c{cycle}-m{i}");
                    let props = BasicProperties {
                        delivery_mode: Some(2),
                        ..Default::default()
                    };
                    let Ok(confirm) = ch
                        .basic_publish("", &queue, false, props, body.clone())
                        .await
                    else {
                        break;
                    };
                    sent.push(body.clone());
                    window.push_back((body, confirm));
                    if window.len() >= 64 {
                        let (body, confirm) = window.pop_front().unwrap();
                        match confirm.await {
                            Ok(Confirmation::Ack) => {
                                acked.lock().unwrap().insert(body);
                            }
                            _ => break,
                        }
                    }
                    if i > 200_000 {
                        break;
                    }
                }
                sent
            })
        };
        let delay = 20 + next_random(&mut seed) % 250;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        let published = publisher.await.unwrap();
        sent_now.extend(published);
        confirmed = acked.lock().unwrap().clone();
        sent = sent_now;
        drop(conn);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// What the kill loop saw of one message.
#[derive(Default)]
struct Seen {
    confirmed: bool,
    deliveries: u32,
    /// `ack()` returned Ok for an earlier delivery (handed to the client's connection).
    ack_sent: bool,
    /// `ack()` failed: the broker died while the client sent it; it may have arrived.
    ack_in_doubt: bool,
    /// Delivered again after an ack was sent (the kill came before the ack was logged).
    redelivered_after_ack: bool,
}

/// `kill -9` under load, with consumers acking: publishers with confirms and a consumer
/// (prefetch 64, acking each message) run while the server is killed at a random moment;
/// the next cycle's consumer goes on with what was left. At the end the queue is drained.
/// No confirmed message may be lost; within one run of the server nothing is delivered
/// twice; every delivery after the first is flagged `redelivered`. Duplicates across a
/// kill are counted: of messages never acked, of messages whose ack was sent (AMQP has no
/// answer to an ack: one that left the client just before the kill may not have been
/// logged) and of acks whose send failed (in doubt).
///
/// `MINIMQ_KILL_CYCLES` (default 3) sets the cycles; `bench/kill_loop.sh` runs 100.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_loop_with_consumers_acking_loses_no_confirmed_message() {
    use futures::StreamExt;
    use minimq_client::BasicConsumeOptions;
    use std::collections::BTreeMap;

    let cycles: u64 = std::env::var("MINIMQ_KILL_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let dir = std::env::temp_dir().join(format!("minimq-kill-loop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut seed = 0x2545_f491_4f6c_dd1d_u64 ^ u64::from(std::process::id());
    let seen: Arc<Mutex<BTreeMap<u64, Seen>>> = Arc::default();
    let mut next = 0u64;
    let mut sent = 0u64;
    let queue = "kill-loop";
    let persistent = || BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    for cycle in 0..=cycles {
        let addr = free_port();
        let mut server = spawn_server(addr, &dir, &[]);
        let url = format!("amqp://guest:guest@{addr}/%2f");
        let consumer_conn = Connection::connect(&url).await.expect("connect");
        let cch = consumer_conn.open_channel().await.unwrap();
        cch.queue_declare(queue, durable(), FieldTable::new())
            .await
            .unwrap();
        cch.basic_qos(64, false).await.unwrap();
        // Everything is ready after the restart: the last run must deliver this many.
        let ready = cch
            .queue_declare(
                queue,
                QueueDeclareOptions {
                    passive: true,
                    ..durable()
                },
                FieldTable::new(),
            )
            .await
            .unwrap()
            .message_count;
        let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let mut deliveries = cch
            .basic_consume(queue, "", BasicConsumeOptions::default(), FieldTable::new())
            .await
            .unwrap();
        let consumer = {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut this_run = BTreeSet::new();
                while let Some(Ok(d)) = deliveries.next().await {
                    let n: u64 = std::str::from_utf8(&d.body).unwrap().parse().unwrap();
                    {
                        let mut seen = seen.lock().unwrap();
                        let s = seen.entry(n).or_default();
                        assert!(this_run.insert(n), "cycle {cycle}: {n} delivered twice");
                        assert!(
                            s.deliveries == 0 || d.redelivered,
                            "cycle {cycle}: {n} delivered again without the redelivered flag"
                        );
                        if s.ack_sent {
                            s.redelivered_after_ack = true;
                        }
                        s.deliveries += 1;
                    }
                    let ok = d.ack().await.is_ok();
                    let mut seen = seen.lock().unwrap();
                    let s = seen.entry(n).or_default();
                    if ok {
                        s.ack_sent = true;
                        let _ = acked_tx.send(());
                    } else {
                        s.ack_in_doubt = true;
                        break;
                    }
                }
            })
        };
        if cycle == cycles {
            // The last run drains what is left, without a kill: every ready message
            // delivered and acked, then nothing confirmed may be missing.
            for _ in 0..ready {
                tokio::time::timeout(Duration::from_secs(30), acked_rx.recv())
                    .await
                    .expect("the drain stalled")
                    .expect("the consumer stopped");
            }
            let q = cch
                .queue_declare(
                    queue,
                    QueueDeclareOptions {
                        passive: true,
                        ..durable()
                    },
                    FieldTable::new(),
                )
                .await
                .unwrap();
            assert_eq!(q.message_count, 0, "the queue is drained");
            consumer_conn.close().await.unwrap();
            consumer.await.expect("the consumer task");
            server.kill();
            break;
        }
        let pub_conn = Connection::connect(&url).await.expect("connect");
        let pch = pub_conn.open_channel().await.unwrap();
        pch.confirm_select().await.unwrap();
        let publisher = {
            let (seen, start) = (seen.clone(), next);
            tokio::spawn(async move {
                let mut window = std::collections::VecDeque::new();
                let mut n = start;
                loop {
                    let Ok(confirm) = pch
                        .basic_publish("", queue, false, persistent(), n.to_string())
                        .await
                    else {
                        break;
                    };
                    window.push_back((n, confirm));
                    n += 1;
                    if window.len() >= 64 {
                        let (m, confirm) = window.pop_front().unwrap();
                        match confirm.await {
                            Ok(Confirmation::Ack) => {
                                seen.lock().unwrap().entry(m).or_default().confirmed = true;
                            }
                            _ => break,
                        }
                    }
                }
                n
            })
        };
        let delay = 100 + next_random(&mut seed) % 400;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.kill();
        next = publisher.await.unwrap();
        sent = next;
        consumer.await.expect("the consumer task");
        drop((consumer_conn, pub_conn));
    }
    let seen = seen.lock().unwrap();
    let confirmed = seen.values().filter(|s| s.confirmed).count();
    let lost: Vec<u64> = seen
        .iter()
        .filter(|(_, s)| s.confirmed && s.deliveries == 0)
        .map(|(n, _)| *n)
        .collect();
    let dups =
        |f: &dyn Fn(&Seen) -> bool| seen.values().filter(|s| s.deliveries > 1 && f(s)).count();
    let delivered = seen.values().filter(|s| s.deliveries > 0).count();
    let in_doubt = seen.values().filter(|s| s.ack_in_doubt).count();
    println!(
        "kill loop: {cycles} kills; {sent} sent, {confirmed} confirmed, {delivered} delivered, \
         lost {}; duplicates: {} after an ack was sent, {} with the ack in doubt, {} never acked \
         before the kill; {in_doubt} acks in doubt",
        lost.len(),
        dups(&|s| s.redelivered_after_ack),
        dups(&|s| !s.redelivered_after_ack && s.ack_in_doubt),
        dups(&|s| !s.redelivered_after_ack && !s.ack_in_doubt),
    );
    assert!(lost.is_empty(), "confirmed messages lost: {lost:?}");
    drop(seen);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One transaction of [`transactions_are_all_or_nothing_across_sigkill`].
#[derive(Debug, Clone)]
struct Tx {
    /// Take the queue's head with `basic.get` and ack it inside the transaction.
    ack_head: bool,
    /// Persistent messages published inside it.
    publishes: u8,
    /// Committed (else rolled back; the last one is cut off by the kill instead).
    commit: bool,
}

fn tx_strategy() -> impl proptest::strategy::Strategy<Value = (Vec<Tx>, bool)> {
    use proptest::prelude::*;
    let tx = (any::<bool>(), 0u8..6, any::<bool>()).prop_map(|(ack_head, publishes, commit)| Tx {
        ack_head,
        publishes,
        commit,
    });
    // The transactions, and whether the kill lands just after the last commit-ok (else in
    // the middle of one more transaction, after its publishes and ack, before its commit).
    (proptest::collection::vec(tx, 1..8), any::<bool>())
}

/// `kill -9` between a `tx.commit-ok` and the next publish, or in the middle of a
/// transaction: after the restart the queue holds exactly what the committed transactions
/// left in it, in order — each transaction's publishes and ack all there or all absent.
/// `MINIMQ_TX_CRASH_CASES` sets the number of cases (default 16).
#[test]
fn transactions_are_all_or_nothing_across_sigkill() {
    use proptest::test_runner::{Config, TestRunner};
    let cases = std::env::var("MINIMQ_TX_CRASH_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(16);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let case = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&tx_strategy(), |(txs, kill_after_commit)| {
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(tx_crash_case(n, &txs, kill_after_commit));
            Ok(())
        })
        .unwrap();
}

async fn tx_crash_case(n: u64, txs: &[Tx], kill_after_commit: bool) {
    let dir = std::env::temp_dir().join(format!("minimq-tx-crash-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let queue = "tx-crash";
    let persistent = || BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(queue, durable(), FieldTable::new())
        .await
        .unwrap();
    ch.tx_select().await.unwrap();
    // What the committed transactions left in the queue, in order.
    let mut model: std::collections::VecDeque<String> = Default::default();
    let mut next = 0u32;
    let last = txs.len() - 1;
    for (i, tx) in txs.iter().enumerate() {
        let cut_off = i == last && !kill_after_commit;
        let mut acked = None;
        if tx.ack_head {
            if let Some(m) = ch.basic_get(queue, false).await.unwrap() {
                let body = String::from_utf8(m.delivery.body.to_vec()).unwrap();
                assert_eq!(Some(&body), model.front(), "the head of the queue");
                m.delivery.ack().await.unwrap();
                acked = Some(body);
            }
        }
        let mut published = Vec::new();
        for _ in 0..tx.publishes {
            let body = format!("m{next}");
            next += 1;
            ch.basic_publish("", queue, false, persistent(), body.clone())
                .await
                .unwrap();
            published.push(body);
        }
        if cut_off {
            break;
        }
        if tx.commit || i == last {
            ch.tx_commit().await.unwrap();
            if acked.is_some() {
                model.pop_front();
            }
            model.extend(published);
        } else {
            ch.tx_rollback().await.unwrap();
            // The rolled-back ack leaves the message unacked: back to its place.
            ch.basic_recover(true).await.unwrap();
        }
    }
    server.kill();
    drop(conn);

    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare(queue, durable(), FieldTable::new())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(m) = ch.basic_get(queue, true).await.unwrap() {
        got.push(String::from_utf8(m.delivery.body.to_vec()).unwrap());
    }
    assert_eq!(
        got,
        Vec::from(model),
        "after SIGKILL: {txs:?}, kill after the last commit-ok: {kill_after_commit}"
    );
    conn.close().await.unwrap();
    server.kill();
    let _ = std::fs::remove_dir_all(&dir);
}

/// Reads stream `queue` from its first offset with the project's client: (body, offset)
/// of every message it holds (as many as a passive declare counts).
async fn read_stream(ch: &minimq_client::Channel, queue: &str) -> Vec<(String, i64)> {
    use futures::StreamExt;
    use minimq_protocol::FieldValue;
    let passive = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let count = ch
        .queue_declare(queue, passive, FieldTable::new())
        .await
        .unwrap()
        .message_count as usize;
    ch.basic_qos(1000, false).await.unwrap();
    let mut args = FieldTable::new();
    args.insert("x-stream-offset", FieldValue::from("first"));
    let mut consumer = ch
        .basic_consume(queue, "", Default::default(), args)
        .await
        .unwrap();
    let mut out = Vec::new();
    while out.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(10), consumer.next()).await;
        let d = next.expect("a delivery within 10 s").unwrap().unwrap();
        let offset = match d
            .properties
            .headers
            .as_ref()
            .and_then(|h| h.get("x-stream-offset"))
        {
            Some(FieldValue::I64(n)) => *n,
            other => panic!("no x-stream-offset long: {other:?}"),
        };
        out.push((String::from_utf8(d.body.to_vec()).unwrap(), offset));
        d.ack().await.unwrap();
    }
    ch.basic_cancel(consumer.tag()).await.unwrap();
    out
}

/// A stream survives SIGKILL in the middle of a publish burst: after a restart it holds a
/// prefix of what was sent, in order, at offsets 0, 1, 2 …, with every confirmed message;
/// the next publish gets the next offset, and a second kill changes none of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_keeps_its_confirmed_messages_and_offsets_across_sigkill() {
    let dir = std::env::temp_dir().join(format!("minimq-crash-stream-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let stream_args = || {
        let mut t = FieldTable::new();
        t.insert("x-queue-type", minimq_protocol::FieldValue::from("stream"));
        t
    };
    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    ch.queue_declare("s", durable(), stream_args())
        .await
        .unwrap();
    ch.confirm_select().await.unwrap();
    // How many of the first messages were confirmed, in order.
    let (acked, mut confirmed_so_far) = tokio::sync::watch::channel(0usize);
    let publisher = {
        let ch = ch.clone();
        tokio::spawn(async move {
            let mut window = std::collections::VecDeque::new();
            for i in 0..200_000usize {
                let Ok(confirm) = ch
                    .basic_publish("", "s", false, BasicProperties::default(), format!("m{i}"))
                    .await
                else {
                    break;
                };
                window.push_back((i, confirm));
                if window.len() >= 64 {
                    let (i, confirm) = window.pop_front().unwrap();
                    match confirm.await {
                        Ok(Confirmation::Ack) => {
                            acked.send_replace(i + 1);
                        }
                        _ => break,
                    }
                }
            }
        })
    };
    // Some confirmed before the kill.
    tokio::time::timeout(
        Duration::from_secs(30),
        confirmed_so_far.wait_for(|n| *n >= 100),
    )
    .await
    .expect("100 confirms within 30 s")
    .expect("the publisher is running");
    server.kill();
    let _ = publisher.await;
    let confirmed = *confirmed_so_far.borrow();
    drop(conn);

    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    let read = read_stream(&ch, "s").await;
    assert!(
        read.len() >= confirmed,
        "{} recovered, {confirmed} confirmed",
        read.len()
    );
    for (i, (body, offset)) in read.iter().enumerate() {
        assert_eq!(
            (body.as_str(), *offset),
            (format!("m{i}").as_str(), i as i64)
        );
    }
    let pub_ch = conn.open_channel().await.unwrap();
    pub_ch.confirm_select().await.unwrap();
    let confirm = pub_ch
        .basic_publish("", "s", false, BasicProperties::default(), "after")
        .await
        .unwrap();
    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    server.kill();
    drop(conn);

    let (mut server, conn) = start_and_connect(&dir).await;
    let ch = conn.open_channel().await.unwrap();
    let again = read_stream(&ch, "s").await;
    assert_eq!(again.len(), read.len() + 1);
    assert_eq!(again[..read.len()], read[..]);
    assert_eq!(again[read.len()], ("after".to_string(), read.len() as i64));
    conn.close().await.unwrap();
    server.kill();
    let _ = std::fs::remove_dir_all(&dir);
}
