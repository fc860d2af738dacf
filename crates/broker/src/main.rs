//! `minimq-server`: runs the broker with flags or `MINIMQ_*` environment variables.
// One measured exception, in `release_freed_memory`; the library forbids unsafe code.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser;
use minimq_broker::{Broker, Config};
use tracing_subscriber::EnvFilter;

/// mimalloc returns memory to the system once a backlog has drained (glibc's malloc keeps
/// it in per-thread arenas) and is faster for the broker's many small allocations.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An AMQP 0-9-1 broker for work queues.
#[derive(Debug, Parser)]
#[command(name = "minimq-server", version, about)]
struct Args {
    /// Address to listen on for AMQP; give it several times (or a comma-separated list
    /// in MINIMQ_LISTEN) for several. Default: 127.0.0.1:5672, and [::1]:5672 where the
    /// host has IPv6 loopback.
    #[arg(long, env = "MINIMQ_LISTEN", value_delimiter = ',')]
    listen: Vec<SocketAddr>,
    /// Directory for durable queues and persistent messages.
    #[arg(long, env = "MINIMQ_DATA_DIR", default_value = "./minimq-data")]
    data_dir: PathBuf,
    /// When the message log is synced: `batch` (a confirm means on disk) or `off`
    /// (UNSAFE: confirmed messages can be lost on power loss or an OS crash).
    #[arg(long, env = "MINIMQ_FSYNC", value_enum, default_value = "batch")]
    fsync: FsyncArg,
    /// Memory a durable queue may use for its persistent messages (bodies plus about 256
    /// octets each), e.g. `64MiB`; past it they stay on disk until delivered.
    #[arg(long, env = "MINIMQ_QUEUE_MEMORY", default_value = "64MiB", value_parser = parse_size)]
    queue_memory: u64,
    /// What recovery does with a damaged log: `skip-corrupt` (truncate a torn tail, skip
    /// corrupt records and report them), `tolerate-torn-tail` (refuse to start on damage
    /// other than a torn tail) or `absolute` (refuse to start on any damage).
    #[arg(long, env = "MINIMQ_RECOVERY_MODE", default_value = "skip-corrupt")]
    recovery_mode: minimq_broker::store::RecoveryMode,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter). Logs go
    /// to stderr, in colour only when it is a terminal.
    #[arg(long, env = "MINIMQ_LOG", default_value = "info")]
    log: String,
    /// Heartbeat interval offered to clients, seconds (0 disables).
    #[arg(long, env = "MINIMQ_HEARTBEAT", default_value_t = 60)]
    heartbeat: u16,
    /// Management HTTP API address, or `off` / `none` to disable it.
    #[arg(long, env = "MINIMQ_HTTP", default_value = "127.0.0.1:15672", value_parser = parse_http)]
    http: HttpAddr,
}

/// The `--http` value: an address, or disabled.
#[derive(Debug, Clone, Copy)]
struct HttpAddr(Option<SocketAddr>);

fn parse_http(s: &str) -> Result<HttpAddr, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "off" | "none" | "" => Ok(HttpAddr(None)),
        _ => s
            .trim()
            .parse()
            .map(|a| HttpAddr(Some(a)))
            .map_err(|e| format!("{e} (expected HOST:PORT, `off` or `none`)")),
    }
}

/// A size: octets, or with a `KiB`, `MiB`, `GiB` (or `K`, `M`, `G`) suffix.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a size such as 67108864 or 64MiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "`{s}`: unknown unit `{other}` (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("`{s}`: too large"))
}

/// The first address, the others, and those bound only where the host has them: with
/// no `--listen`, 127.0.0.1:5672 and, if available, [::1]:5672.
fn listen_addresses(given: &[SocketAddr]) -> (SocketAddr, Vec<SocketAddr>, Vec<SocketAddr>) {
    match given.split_first() {
        Some((first, rest)) => (*first, rest.to_vec(), Vec::new()),
        None => (
            SocketAddr::from(([127, 0, 0, 1], 5672)),
            Vec::new(),
            vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5672))],
        ),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs are diagnostics: stderr, leaving stdout alone. Colour codes only on a terminal,
    // so a log file or a pipe (systemd, docker, `2>server.log`) gets plain text.
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal)
        .init();
    let (listen, also_listen, listen_if_available) = listen_addresses(&args.listen);
    let config = Config {
        listen,
        also_listen,
        listen_if_available,
        data_dir: Some(args.data_dir),
        fsync: args.fsync.into(),
        heartbeat: args.heartbeat,
        http: args.http.0,
        queue_memory: args.queue_memory,
        recovery_mode: args.recovery_mode,
        ..Config::default()
    };
    let broker = match Broker::builder().config(config).start().await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, listen = ?args.listen, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    release_freed_memory();
    let handle = broker.shutdown_handle();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        handle.shutdown();
    });
    broker.wait_for_shutdown_request().await;
    broker.shutdown().await;
    std::process::ExitCode::SUCCESS
}

/// Hands the memory that start-up recovery freed back to the operating system.
///
/// mimalloc returns freed pages lazily, when the thread that freed them allocates again.
/// Replaying a large log frees its working memory (index maps, the per-queue order) on
/// the main thread, which then mostly waits, so without this the server would keep it
/// resident. Measured on a restart with 1,000,000 persistent 100-byte messages queued:
/// RSS 355 MB without, 209 MB with (docs/benchmarks.md).
#[allow(unsafe_code)]
fn release_freed_memory() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any
    // time; it only frees mimalloc's own unused pages.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(term) => Some(term),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; stop with SIGINT");
                None
            }
        };
        let terminated = async {
            match term.as_mut() {
                Some(term) => term.recv().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `--fsync` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum FsyncArg {
    /// One fdatasync per batch of records that someone waits for.
    Batch,
    /// Never sync (unsafe).
    Off,
}

impl From<FsyncArg> for minimq_broker::store::FsyncMode {
    fn from(a: FsyncArg) -> Self {
        match a {
            FsyncArg::Batch => minimq_broker::store::FsyncMode::Batch,
            FsyncArg::Off => minimq_broker::store::FsyncMode::Off,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_flag() {
        assert_eq!(parse_http("off").unwrap().0, None);
        assert_eq!(parse_http("None").unwrap().0, None);
        assert_eq!(
            parse_http("0.0.0.0:15672").unwrap().0,
            Some("0.0.0.0:15672".parse().unwrap())
        );
        assert!(parse_http("localhost").is_err());
        if std::env::var_os("MINIMQ_HTTP").is_none() {
            let args = Args::try_parse_from(["minimq-server"]).unwrap();
            assert_eq!(args.http.0, Some("127.0.0.1:15672".parse().unwrap()));
        }
    }

    #[test]
    fn listen_flag_takes_several_addresses() {
        let v4: SocketAddr = "127.0.0.1:5672".parse().unwrap();
        let v6: SocketAddr = "[::1]:5672".parse().unwrap();
        let other: SocketAddr = "127.0.0.1:5673".parse().unwrap();
        let args = Args::try_parse_from([
            "minimq-server",
            "--listen",
            "127.0.0.1:5673",
            "--listen",
            "[::1]:5672",
        ])
        .unwrap();
        assert_eq!(args.listen, vec![other, v6]);
        assert_eq!(listen_addresses(&args.listen), (other, vec![v6], vec![]));
        let args = Args::try_parse_from(["minimq-server", "--listen", "127.0.0.1:5673,[::1]:5672"])
            .unwrap();
        assert_eq!(args.listen, vec![other, v6]);
        // None given: IPv4 loopback, and IPv6 loopback where the host has it.
        assert_eq!(listen_addresses(&[]), (v4, vec![], vec![v6]));
    }
}
