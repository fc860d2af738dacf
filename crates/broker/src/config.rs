//! Server configuration: what the flags and `MINIMQ_*` variables set. [`Config::default`]
//! is an in-memory broker on 127.0.0.1:5672; `minimq-server` adds `./minimq-data`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// RabbitMQ's default `consumer_timeout`: 30 minutes.
pub const DEFAULT_CONSUMER_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// RabbitMQ's default `disk_free_limit`: 50 MB.
pub const DEFAULT_DISK_FREE_LIMIT: u64 = 50_000_000;

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
    /// The file layer the store writes through; `None`: the operating system's. Tests
    /// pass a [`crate::store::faulty::FaultyDisk`] to inject write and sync errors.
    pub disk: Option<std::sync::Arc<dyn crate::store::Disk>>,
    /// What recovery does with a damaged log (`docs/storage.md`).
    pub recovery_mode: crate::store::RecoveryMode,
    /// The administrators a fresh broker starts with (user, password), each with every
    /// permission on `/`; a data directory that has users keeps its own. Default
    /// `guest`/`guest`, as RabbitMQ.
    pub users: Vec<(String, String)>,
    /// Let `guest` log in from addresses other than loopback (RabbitMQ's
    /// `loopback_users` refuses it).
    pub allow_guest_remote: bool,
    /// A RabbitMQ definitions file imported at start-up, before clients are accepted
    /// (`--definitions`); a bad file stops the start with an error naming the entry.
    pub definitions: Option<PathBuf>,
    /// AMQP over TLS listeners (RabbitMQ's 5671), beside the plain ones; they need
    /// `tls_cert` and `tls_key`.
    pub tls_listen: Vec<SocketAddr>,
    /// The server's certificate chain, PEM.
    pub tls_cert: Option<PathBuf>,
    /// The server's private key, PEM.
    pub tls_key: Option<PathBuf>,
    /// The CA client certificates are checked against, PEM.
    pub tls_ca: Option<PathBuf>,
    /// Require a client certificate that chains to `tls_ca`.
    pub tls_verify_peer: bool,
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
    /// The management API's certificate chain, PEM: with `http_tls_key`, `http` speaks
    /// HTTPS only (RabbitMQ's `management.ssl`).
    pub http_tls_cert: Option<PathBuf>,
    /// The management API's private key, PEM (with `http_tls_cert`).
    pub http_tls_key: Option<PathBuf>,
    /// Memory the broker may use before the memory alarm blocks publishers (RabbitMQ's
    /// `vm_memory_high_watermark`; default 0.4 of the machine's or cgroup's memory).
    pub memory_high_watermark: Watermark,
    /// Free space on the data directory's filesystem under which the disk alarm blocks
    /// publishers, octets (RabbitMQ's `disk_free_limit`; default 50 MB; 0 disables). An
    /// in-memory broker has no disk alarm.
    pub disk_free_limit: u64,
    /// Most client sockets open at once, node-wide (`None`: only the file-descriptor
    /// bound, see [`crate::server::socket_limit`]). A socket over the limit is closed as
    /// soon as it is accepted.
    pub max_connections: Option<usize>,
    /// How long a delivery may stay unacknowledged before its channel is closed with
    /// `406 PRECONDITION_FAILED` and the message requeued (RabbitMQ's
    /// `consumer_timeout`, 30 minutes); `None` disables. A queue's `x-consumer-timeout`
    /// (argument or policy) and a consumer's own argument override it.
    pub consumer_timeout: Option<Duration>,
}

/// The memory high watermark: a fraction of the memory available, or octets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Watermark {
    /// A fraction of the machine's (or the cgroup's) memory, in (0, 1].
    Fraction(f64),
    /// Octets; 0 disables the memory alarm.
    Absolute(u64),
}

impl Default for Watermark {
    /// RabbitMQ 3.10's default, 0.4.
    fn default() -> Self {
        Watermark::Fraction(0.4)
    }
}

impl std::str::FromStr for Watermark {
    type Err = String;

    /// `0.4` (a number with a decimal point: a fraction) or a size (`256MiB`, `2GB`,
    /// `1073741824`; see [`parse_size`]).
    fn from_str(s: &str) -> Result<Watermark, String> {
        let t = s.trim();
        if t.contains('.') {
            let f: f64 = t.parse().map_err(|_| {
                format!("`{s}`: expected a fraction such as 0.4 or a size such as 256MiB")
            })?;
            if !(f > 0.0 && f <= 1.0) {
                return Err(format!(
                    "`{s}`: a fraction of memory must be above 0 and at most 1"
                ));
            }
            return Ok(Watermark::Fraction(f));
        }
        parse_size(t).map(Watermark::Absolute)
    }
}

/// A size in octets: a plain count, or a count with a unit. `kB MB GB TB` are powers of
/// 1000 and `KiB MiB GiB TiB` (and RabbitMQ's `k M G T`) powers of 1024, as in RabbitMQ's
/// configuration; units are matched without regard to case except for that `B`/`iB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 67108864, 64MiB or 2GB"))?;
    let unit = unit.trim();
    let lower = unit.to_ascii_lowercase();
    let power = |p: u32, base: u64| base.pow(p);
    let mult: u64 = match lower.as_str() {
        "" | "b" => 1,
        "k" | "kib" => power(1, 1024),
        "m" | "mib" => power(2, 1024),
        "g" | "gib" => power(3, 1024),
        "t" | "tib" => power(4, 1024),
        "kb" => power(1, 1000),
        "mb" => power(2, 1000),
        "gb" => power(3, 1000),
        "tb" => power(4, 1000),
        _ => {
            return Err(format!(
                "`{s}`: unknown unit `{unit}` (use kB, MB, GB, TB or KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: too large"))
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
            disk: None,
            recovery_mode: crate::store::RecoveryMode::default(),
            users: vec![("guest".into(), "guest".into())],
            allow_guest_remote: false,
            definitions: None,
            tls_listen: Vec::new(),
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            tls_verify_peer: false,
            channel_max: 2047,
            frame_max: 131_072,
            heartbeat: 60,
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 128 * 1024 * 1024,
            // Twice the largest message: any message fits in a transaction of its own.
            max_tx_size: 256 * 1024 * 1024,
            http: None,
            http_tls_cert: None,
            http_tls_key: None,
            memory_high_watermark: Watermark::default(),
            disk_free_limit: DEFAULT_DISK_FREE_LIMIT,
            max_connections: None,
            consumer_timeout: Some(DEFAULT_CONSUMER_TIMEOUT),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_decimal_and_binary_units() {
        assert_eq!(parse_size("1073741824"), Ok(1 << 30));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_size("10kB"), Ok(10_000));
        assert_eq!(parse_size("10KiB"), Ok(10_240));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("1000TB"), Ok(1_000_000_000_000_000));
        assert_eq!(parse_size("3TiB"), Ok(3 << 40));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999TB").is_err(), "overflow is an error");
    }

    #[test]
    fn a_watermark_is_a_fraction_or_a_size() {
        assert_eq!("0.4".parse(), Ok(Watermark::Fraction(0.4)));
        assert_eq!("1.0".parse(), Ok(Watermark::Fraction(1.0)));
        assert_eq!("256MiB".parse(), Ok(Watermark::Absolute(256 << 20)));
        assert_eq!("2GB".parse(), Ok(Watermark::Absolute(2_000_000_000)));
        assert!("0.0".parse::<Watermark>().is_err());
        assert!("1.5".parse::<Watermark>().is_err());
        assert!("abc".parse::<Watermark>().is_err());
    }
}
