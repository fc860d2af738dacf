//! `minimq-server`: runs the broker with flags or `MINIMQ_*` environment variables.

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
    /// Address to listen on for AMQP.
    #[arg(long, env = "MINIMQ_LISTEN", default_value = "127.0.0.1:5672")]
    listen: SocketAddr,
    /// Directory for durable queues and persistent messages.
    #[arg(long, env = "MINIMQ_DATA_DIR", default_value = "./minimq-data")]
    data_dir: PathBuf,
    /// When the message log is synced: `batch` (a confirm means on disk) or `off`
    /// (UNSAFE: confirmed messages can be lost on power loss or an OS crash).
    #[arg(long, env = "MINIMQ_FSYNC", value_enum, default_value = "batch")]
    fsync: FsyncArg,
    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter).
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

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    let config = Config {
        listen: args.listen,
        data_dir: Some(args.data_dir),
        fsync: args.fsync.into(),
        heartbeat: args.heartbeat,
        http: args.http.0,
        ..Config::default()
    };
    let broker = match Broker::builder().config(config).start().await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, listen = %args.listen, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
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

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
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
}
