//! Writes the seed corpus of the `data_dir` target: data directories a real broker left
//! behind, each packed as the target reads an input (flags octet, `metadata.log`, the
//! split marker, the first segment).
//!
//! `cargo run --bin seed_data_dir` (in `fuzz/`) writes `corpus/data_dir/seed-*.bin`.
//! The workload: durable queues with arguments, a durable exchange of each kind with
//! bindings (one exchange-to-exchange), persistent and transient messages, some acked,
//! one deleted queue; the directory is taken once after a graceful shutdown and once after
//! a crash (no clean-shutdown record).

use std::path::Path;

use minimq_broker::Broker;
use minimq_client::{
    BasicConsumeOptions, BasicProperties, Connection, ExchangeDeclareOptions, FieldTable,
    QueueDeclareOptions, QueueDeleteOptions,
};

const SPLIT: &[u8] = b"\xF0\x0D";
const SEGMENT_NAME: &str = "00000000000000000001.seg";

async fn workload(url: &str) -> minimq_client::Result<()> {
    let conn = Connection::connect(url).await?;
    let ch = conn.open_channel().await?;
    ch.confirm_select().await?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut args = FieldTable::new();
    args.insert("x-max-length", 100i32);
    args.insert("x-message-ttl", 3_600_000i32);
    args.insert("x-dead-letter-exchange", "dlx");
    args.insert("x-max-priority", 5i32);
    ch.queue_declare("work", durable.clone(), args).await?;
    ch.queue_declare("plain", durable.clone(), FieldTable::new())
        .await?;
    ch.queue_declare("gone", durable.clone(), FieldTable::new())
        .await?;
    let ex = ExchangeDeclareOptions {
        durable: true,
        ..Default::default()
    };
    for (name, kind) in [
        ("dlx", "fanout"),
        ("logs", "topic"),
        ("direct", "direct"),
        ("hdr", "headers"),
    ] {
        ch.exchange_declare(name, kind, ex.clone(), FieldTable::new())
            .await?;
    }
    ch.queue_bind("plain", "dlx", "", FieldTable::new()).await?;
    ch.queue_bind("work", "logs", "*.error.#", FieldTable::new())
        .await?;
    let mut match_args = FieldTable::new();
    match_args.insert("x-match", "any");
    match_args.insert("kind", "a");
    ch.queue_bind("plain", "hdr", "", match_args).await?;
    ch.exchange_bind("logs", "direct", "k", FieldTable::new())
        .await?;
    let persistent = BasicProperties {
        delivery_mode: Some(2),
        priority: Some(3),
        expiration: Some("600000".into()),
        ..Default::default()
    };
    for i in 0..20u32 {
        let props = if i % 3 == 0 {
            BasicProperties::default()
        } else {
            persistent.clone()
        };
        let body = format!("message {i}").into_bytes();
        let rk = if i % 2 == 0 { "work" } else { "plain" };
        ch.basic_publish("", rk, false, &props, body).await?;
    }
    ch.basic_publish("direct", "k", false, &persistent, &b"via e2e"[..])
        .await?;
    ch.wait_for_confirms().await?;
    // Ack some: acks become settle records.
    for _ in 0..4 {
        if let Some(m) = ch.basic_get("plain", false).await? {
            ch.basic_ack(m.delivery.delivery_tag, false).await?;
        }
    }
    let consumer = ch
        .basic_consume("work", "c1", BasicConsumeOptions::default(), FieldTable::new())
        .await?;
    drop(consumer);
    ch.queue_delete("gone", QueueDeleteOptions::default()).await?;
    conn.close().await
}

fn pack(dir: &Path) -> std::io::Result<Vec<u8>> {
    let mut out = vec![0u8]; // flags 0: both files as they are, default recovery mode
    out.extend_from_slice(&std::fs::read(dir.join("metadata.log"))?);
    out.extend_from_slice(SPLIT);
    out.extend_from_slice(&std::fs::read(dir.join("segments").join(SEGMENT_NAME))?);
    Ok(out)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/data_dir");
    std::fs::create_dir_all(&corpus)?;
    for (name, crash) in [("seed-shutdown.bin", false), ("seed-crash.bin", true)] {
        let dir = std::env::temp_dir().join(format!("minimq-seed-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let broker = Broker::builder()
            .listen("127.0.0.1:0".parse()?)
            .data_dir(&dir)
            .start()
            .await?;
        workload(&broker.amqp_url()).await?;
        if crash {
            broker.crash().await;
        } else {
            broker.shutdown().await;
        }
        std::fs::write(corpus.join(name), pack(&dir)?)?;
        std::fs::remove_dir_all(&dir)?;
        println!("wrote {}", corpus.join(name).display());
    }
    Ok(())
}
