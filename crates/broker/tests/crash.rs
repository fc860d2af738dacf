//! Crash safety with a real `minimq-server` process: publishers with confirms run while
//! the server is killed with SIGKILL at a random moment; after a restart every confirmed
//! message is present exactly once (unconfirmed ones may or may not be). Several cycles;
//! `MINIMQ_CRASH_CYCLES` raises the count for soak runs.

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minimq_client::{Confirmation, Connection, QueueDeclareOptions};
use minimq_protocol::{BasicProperties, FieldTable};

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn spawn_server(addr: SocketAddr, dir: &Path) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_minimq-server"))
        .args([
            "--listen",
            &addr.to_string(),
            "--http",
            "off",
            "--log",
            "warn",
        ])
        .arg("--data-dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start minimq-server");
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "minimq-server did not start listening"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
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
        let addr = free_port();
        let mut server = spawn_server(addr, &dir);
        let conn = Connection::connect(&format!("amqp://guest:guest@{addr}/%2f"))
            .await
            .expect("connect");
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
            server.kill().unwrap();
            let _ = server.wait();
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
        server.kill().unwrap();
        let _ = server.wait();
        let published = publisher.await.unwrap();
        sent_now.extend(published);
        confirmed = acked.lock().unwrap().clone();
        sent = sent_now;
        drop(conn);
    }
    let _ = std::fs::remove_dir_all(&dir);
}
