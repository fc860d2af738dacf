//! Measures start-up recovery: writes N persistent messages of SIZE octets into one
//! durable queue through the store, closes it, and times `Store::open` (replay and
//! rebuild) and the resident memory before and after.
//!
//! `cargo run --release -p minimq-broker --example recovery_time -- [N] [SIZE]`

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use minimq_broker::message::Message;
use minimq_broker::store::{Store, StoreOptions};
use minimq_protocol::{BasicProperties, FieldTable};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(|l| l.to_string())
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let n: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100);
    let dir = std::env::temp_dir().join(format!("minimq-recovery-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let body = Bytes::from(vec![b'x'; size]);
    let props = BasicProperties {
        delivery_mode: Some(2),
        ..Default::default()
    };
    {
        let (store, _) = Store::open(&dir, StoreOptions::default())?;
        let id = store.add_queue("/", "q", false, &FieldTable::new()).await?;
        let started = Instant::now();
        for seq in 1..=n {
            let m = Message::new("".into(), "q".into(), props.clone(), body.clone());
            store.enqueue(id, seq, &Arc::new(m), None);
        }
        store.sync().await;
        println!("wrote {n} × {size} B in {:?}", started.elapsed());
        store.close().await;
    }
    let before = rss_kib();
    let started = Instant::now();
    let (store, queues) = Store::open(&dir, StoreOptions::default())?;
    let elapsed = started.elapsed();
    let count: usize = queues.iter().map(|q| q.messages.len()).sum();
    println!(
        "recovered {count} messages in {:?}; RSS {} MiB before, {} MiB after",
        elapsed,
        before / 1024,
        rss_kib() / 1024
    );
    store.close().await;
    drop(queues);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
