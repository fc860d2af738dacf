//! Server configuration: what the flags and `MINIMQ_*` variables set. [`Config::default`]
//! is an in-memory broker on 127.0.0.1:5672; `minimq-server` adds `./minimq-data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Broker settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on for AMQP.
    pub listen: SocketAddr,
    /// Further AMQP addresses; the broker does not start unless it can bind each.
    pub also_listen: Vec<SocketAddr>,
    /// AMQP addresses bound when the host has them, skipped with a warning otherwise
    /// (`minimq-server`'s default `[::1]:5672` on a host without IPv6 loopback).
    pub listen_if_available: Vec<SocketAddr>,
    /// Directory for durable queues and persistent messages; `None` keeps everything in
    /// memory (the default for embedded brokers; `minimq-server` uses `./minimq-data`).
    pub data_dir: Option<PathBuf>,
    /// When the message log is synced.
    pub fsync: crate::store::FsyncMode,
    /// Size of a log segment before a new one is started.
    pub segment_size: u64,
    /// Bytes of persistent messages a durable queue keeps in memory (bodies plus about
    /// 256 octets each); past it they stay on disk and are read back when delivered.
    pub queue_memory: u64,
    /// Failure injection for tests: while set, every log sync fails.
    pub fail_syncs: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// What recovery does with a damaged log (`docs/storage.md`).
    pub recovery_mode: crate::store::RecoveryMode,
    /// Users and passwords accepted by PLAIN and AMQPLAIN.
    pub users: Vec<(String, String)>,
    /// `channel_max` offered in `connection.tune`.
    pub channel_max: u16,
    /// `frame_max` offered in `connection.tune`.
    pub frame_max: u32,
    /// Heartbeat interval offered in `connection.tune`, seconds.
    pub heartbeat: u16,
    /// Time a client has to complete the handshake.
    pub handshake_timeout: Duration,
    /// Largest message body accepted.
    pub max_message_size: u64,
    /// Most octets of publishes a transaction holds until `tx.commit` (bodies plus 256
    /// each); past it the publish is a channel error. RabbitMQ has no such bound.
    pub max_tx_size: u64,
    /// Address of the management HTTP API; `None` disables it. Embedded brokers default
    /// to `None`; `minimq-server` defaults to `127.0.0.1:15672`.
    pub http: Option<SocketAddr>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5672)),
            also_listen: Vec::new(),
            listen_if_available: Vec::new(),
            data_dir: None,
            fsync: crate::store::FsyncMode::Batch,
            segment_size: 64 * 1024 * 1024,
            queue_memory: crate::store::DEFAULT_QUEUE_MEMORY,
            fail_syncs: None,
            recovery_mode: crate::store::RecoveryMode::default(),
            users: vec![("guest".into(), "guest".into())],
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 128 * 1024 * 1024,
            // Twice the largest message: any message fits in a transaction of its own.
            max_tx_size: 256 * 1024 * 1024,
            http: None,
        }
    }
}
