//! Fuzzes recovery: the broker started on a damaged data directory.
//!
//! Each input is split at its first [`SPLIT`] octet pair into a metadata log
//! (`metadata.log`: durable queues, exchanges, bindings) and a message log segment
//! (`segments/` first file). Octet 0 of the input picks the recovery mode and whether the
//! harness writes each file's valid 16-octet header itself (so the fuzzer spends its time
//! on records, not on the magic). The seed corpus holds data directories written by a
//! real broker (durable queues with arguments, exchanges, bindings, persistent messages,
//! acks), so mutations start from well-formed records.
//!
//! Checked for every input:
//! - no panic anywhere (libfuzzer-sys turns a panic in any thread or task into an abort):
//!   the broker either starts or refuses with an error;
//! - a broker that started answers a client (a fresh connection opens a channel and
//!   declares a queue) and shuts down cleanly;
//! - memory stays bounded (libFuzzer's `-rss_limit_mb` / `-malloc_limit_mb`): a length
//!   field claiming gigabytes must not be believed before it is checked.
#![no_main]

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use minimq_broker::store::RecoveryMode;
use minimq_broker::{Broker, Config};
use minimq_client::{Connection, FieldTable, QueueDeclareOptions};
use tokio::runtime::Runtime;

/// Separates the metadata log from the segment in an input.
const SPLIT: &[u8] = b"\xF0\x0D";
/// A started broker must answer a client within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);
/// The header every metadata log starts with (`docs/storage.md`): magic, version 1,
/// reserved.
const META_HEADER: &[u8; 16] = b"MINIMQML\x00\x00\x00\x01\x00\x00\x00\x00";
/// The header every segment starts with.
const SEGMENT_HEADER: &[u8; 16] = b"MINIMQSG\x00\x00\x00\x01\x00\x00\x00\x00";
/// The name of the first segment (`store::format::segment_name(1)`).
const SEGMENT_NAME: &str = "00000000000000000001.seg";

struct Harness {
    rt: Runtime,
    dir: PathBuf,
}

static HARNESS: OnceLock<Mutex<Harness>> = OnceLock::new();

fn harness() -> &'static Mutex<Harness> {
    HARNESS.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("tokio runtime");
        let dir = std::env::temp_dir().join(format!("minimq-fuzz-data-{}", std::process::id()));
        Mutex::new(Harness { rt, dir })
    })
}

fn write_dir(dir: &std::path::Path, data: &[u8]) -> std::io::Result<RecoveryMode> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir.join("segments"))?;
    let (flags, rest) = data.split_first().map_or((0, &[][..]), |(f, r)| (*f, r));
    let (meta, seg) = match rest.windows(SPLIT.len()).position(|w| w == SPLIT) {
        Some(at) => (&rest[..at], &rest[at + SPLIT.len()..]),
        None => (rest, &[][..]),
    };
    let mut meta_file = Vec::new();
    if flags & 1 != 0 {
        meta_file.extend_from_slice(META_HEADER);
    }
    meta_file.extend_from_slice(meta);
    std::fs::write(dir.join("metadata.log"), &meta_file)?;
    if flags & 4 == 0 {
        let mut seg_file = Vec::new();
        if flags & 2 != 0 {
            seg_file.extend_from_slice(SEGMENT_HEADER);
        }
        seg_file.extend_from_slice(seg);
        std::fs::write(dir.join("segments").join(SEGMENT_NAME), &seg_file)?;
    }
    Ok(match (flags >> 3) % 3 {
        0 => RecoveryMode::default(),
        1 => RecoveryMode::TolerateTornTail,
        _ => RecoveryMode::Absolute,
    })
}

fuzz_target!(|data: &[u8]| {
    let h = harness().lock().unwrap_or_else(|p| p.into_inner());
    let mode = write_dir(&h.dir, data).expect("the fuzz data directory is writable");
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: Some(h.dir.clone()),
        recovery_mode: mode,
        heartbeat: 0,
        ..Config::default()
    };
    h.rt.block_on(async {
        let Ok(broker) = Broker::builder().config(config).start().await else {
            return; // refused to start: an error, not a crash
        };
        tokio::time::timeout(ANSWER_WITHIN, async {
            let conn = Connection::connect(&broker.amqp_url())
                .await
                .expect("a recovered broker accepts a client");
            let ch = conn.open_channel().await.expect("channel opens");
            ch.queue_declare(
                "fuzz-probe",
                QueueDeclareOptions::default(),
                FieldTable::new(),
            )
            .await
            .expect("a recovered broker declares a queue");
            let _ = conn.close().await;
        })
        .await
        .expect("a recovered broker answers within the deadline");
        tokio::time::timeout(ANSWER_WITHIN, broker.shutdown())
            .await
            .expect("a recovered broker shuts down");
    });
});
