//! `minimq-server`: runs the broker with flags or `MINIMQ_*` environment variables, and
//! with `--ephemeral` as a throw-away broker for another program's tests (free ports, a
//! temporary data directory, one JSON line on stdout, exit when the parent goes).
// One measured exception, in `release_freed_memory`; the library forbids unsafe code.
#![deny(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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
    /// Directory for durable queues and persistent messages [default: ./minimq-data; with
    /// --ephemeral a fresh temporary directory, deleted on exit; given, it is kept].
    #[arg(long, env = "MINIMQ_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// When the message log is synced: `batch` (a confirm means on disk) or `off`
    /// (UNSAFE: confirmed messages can be lost on power loss or an OS crash)
    /// [default: batch; with --ephemeral, off].
    #[arg(long, env = "MINIMQ_FSYNC", value_enum)]
    fsync: Option<FsyncArg>,
    /// Memory a durable queue may use for its persistent messages (bodies plus about 256
    /// octets each), e.g. `64MiB`; past it they stay on disk until delivered.
    #[arg(long, env = "MINIMQ_QUEUE_MEMORY", default_value = "64MiB", value_parser = minimq_broker::config::parse_size)]
    queue_memory: u64,
    /// Memory the broker may use before publishers are blocked (the memory alarm): a
    /// fraction of the machine's (or cgroup's) memory such as `0.4`, or a size such as
    /// `256MiB` or `2GB` (`0` disables the alarm).
    #[arg(long, env = "MINIMQ_MEMORY_HIGH_WATERMARK", default_value = "0.4")]
    memory_high_watermark: minimq_broker::config::Watermark,
    /// Free space on the data directory's filesystem under which publishers are blocked
    /// (the disk alarm), e.g. `50MB`, `2GiB` (`0` disables the alarm).
    #[arg(long, env = "MINIMQ_DISK_FREE_LIMIT", default_value = "50MB", value_parser = minimq_broker::config::parse_size)]
    disk_free_limit: u64,
    /// Most client connections open at once, node-wide; more are closed as soon as they
    /// are accepted [default: the open-file limit less a tenth (at least 64) kept for the
    /// store].
    #[arg(long, env = "MINIMQ_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Milliseconds a delivery may stay unacknowledged before its channel is closed
    /// (406) and the message requeued; `0` or `off` disables. A queue's or consumer's
    /// `x-consumer-timeout` overrides it.
    #[arg(long, env = "MINIMQ_CONSUMER_TIMEOUT", default_value = "1800000", value_parser = parse_consumer_timeout)]
    consumer_timeout: ConsumerTimeout,
    /// Most channels a connection may open (`channel_max` offered in connection.tune).
    #[arg(long, env = "MINIMQ_CHANNEL_MAX", default_value_t = 2047, value_parser = clap::value_parser!(u16).range(1..))]
    channel_max: u16,
    /// Largest frame, octets (`frame_max` offered in connection.tune; 4096 to 1 MiB).
    #[arg(long, env = "MINIMQ_FRAME_MAX", default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(4096..=1_048_576))]
    frame_max: u32,
    /// Largest message body accepted, e.g. `128MiB` (at most 512MiB, RabbitMQ's bound).
    #[arg(long, env = "MINIMQ_MAX_MESSAGE_SIZE", default_value = "128MiB", value_parser = parse_message_size)]
    max_message_size: u64,
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
    /// Management HTTP API address, or `off` / `none` to disable it [default:
    /// 127.0.0.1:15672; with --ephemeral, a free port on 127.0.0.1].
    #[arg(long, env = "MINIMQ_HTTP", value_parser = parse_http)]
    http: Option<HttpAddr>,
    /// The management API's certificate chain (PEM): with --http-tls-key, --http speaks
    /// HTTPS only.
    #[arg(long, env = "MINIMQ_HTTP_TLS_CERT")]
    http_tls_cert: Option<PathBuf>,
    /// The management API's private key (PEM), with --http-tls-cert.
    #[arg(long, env = "MINIMQ_HTTP_TLS_KEY")]
    http_tls_key: Option<PathBuf>,
    /// A throw-away broker for tests: AMQP and management API on free loopback ports, a
    /// temporary data directory deleted on exit, fsync off; prints one JSON line on stdout
    /// (amqp_url, http_url, pid, data_dir) once it accepts connections, and exits when its
    /// parent process does. Explicit --listen, --http, --data-dir, --fsync win.
    #[arg(long)]
    ephemeral: bool,
    /// Address for AMQP over TLS (amqps, RabbitMQ's 5671); repeat for several. Needs
    /// --tls-cert and --tls-key.
    #[arg(long, env = "MINIMQ_TLS_LISTEN", value_delimiter = ',')]
    tls_listen: Vec<SocketAddr>,
    /// The server's certificate chain (PEM) for --tls-listen.
    #[arg(long, env = "MINIMQ_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM) for --tls-listen.
    #[arg(long, env = "MINIMQ_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// The CA (PEM) client certificates are checked against.
    #[arg(long, env = "MINIMQ_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// Require a client certificate that chains to --tls-ca.
    #[arg(long, env = "MINIMQ_TLS_VERIFY_PEER")]
    tls_verify_peer: bool,
    /// A RabbitMQ definitions file (users, permissions, policies, queues, exchanges,
    /// bindings) to import at start-up.
    #[arg(long, env = "MINIMQ_DEFINITIONS")]
    definitions: Option<PathBuf>,
    /// Let `guest` log in from other machines (RabbitMQ's `loopback_users` refuses it).
    #[arg(long, env = "MINIMQ_ALLOW_GUEST_REMOTE")]
    allow_guest_remote: bool,
    /// Shut down when stdin reaches end of file (the parent closed it or died).
    #[arg(long)]
    exit_with_stdin: bool,
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

/// The `--consumer-timeout` value: a duration, or none.
#[derive(Debug, Clone, Copy)]
struct ConsumerTimeout(Option<Duration>);

fn parse_consumer_timeout(s: &str) -> Result<ConsumerTimeout, String> {
    match s.trim() {
        "off" | "none" | "0" => Ok(ConsumerTimeout(None)),
        ms => ms
            .parse::<u64>()
            .map(|ms| ConsumerTimeout(Some(Duration::from_millis(ms))))
            .map_err(|_| format!("`{s}`: expected milliseconds or `off`")),
    }
}

/// A `--max-message-size`: a size of at most 512 MiB.
fn parse_message_size(s: &str) -> Result<u64, String> {
    const MAX: u64 = 512 * 1024 * 1024;
    let n = minimq_broker::config::parse_size(s)?;
    if n == 0 || n > MAX {
        return Err(format!("`{s}`: must be between 1 octet and 512MiB"));
    }
    Ok(n)
}

/// Raises the soft open-file limit to the hard one, as servers that hold many sockets do
/// (the default soft limit, often 1024, would cap clients at about 900).
fn raise_open_file_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

/// The first address, the others, and those bound only where the host has them: with
/// no `--listen`, 127.0.0.1:5672 and, if available, [::1]:5672; ephemeral, a free port on
/// 127.0.0.1 only (a test needs one URL, and IPv6 may be missing).
fn listen_addresses(
    given: &[SocketAddr],
    ephemeral: bool,
) -> (SocketAddr, Vec<SocketAddr>, Vec<SocketAddr>) {
    match given.split_first() {
        Some((first, rest)) => (*first, rest.to_vec(), Vec::new()),
        None if ephemeral => (
            SocketAddr::from(([127, 0, 0, 1], 0)),
            Vec::new(),
            Vec::new(),
        ),
        None => (
            SocketAddr::from(([127, 0, 0, 1], 5672)),
            Vec::new(),
            vec![SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, 5672))],
        ),
    }
}

fn main() -> std::process::ExitCode {
    // The runtime `#[tokio::main]` would build, with one addition: each worker thread
    // hands its freed memory back when it goes idle after a reclaim was asked for.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_if_asked)
        .build();
    match runtime {
        Ok(runtime) => {
            minimq_broker::alarm::set_memory_reclaim(reclaim_memory);
            runtime.block_on(run())
        }
        Err(e) => {
            eprintln!("minimq-server: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Reclaims asked for so far ([`reclaim_memory`]); each worker thread remembers the last
/// it answered.
static RECLAIMS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static RECLAIMED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The broker's memory reclaim (`alarm::set_memory_reclaim`), called by its monitor
/// thread while memory is under pressure. mimalloc frees a page only on the thread that
/// owns it: memory freed on another thread (a message paged out by a queue task on
/// another worker, a record the log's writer thread wrote) waits until the owner
/// allocates again, and a blocked publisher's worker may not. So the monitor collects
/// what it can reach, and asks every worker to collect its own the next time it goes
/// idle ([`collect_if_asked`]).
fn reclaim_memory() {
    RECLAIMS.fetch_add(1, Ordering::Relaxed);
    release_freed_memory();
}

/// Runs as a worker thread goes idle: one relaxed load and a thread-local read, unless a
/// reclaim was asked for since this thread last collected.
fn collect_if_asked() {
    let asked = RECLAIMS.load(Ordering::Relaxed);
    if RECLAIMED.with(|seen| seen.replace(asked)) != asked {
        release_freed_memory();
    }
}

async fn run() -> std::process::ExitCode {
    let args = Args::parse();
    // Read first: a parent that exits while the broker starts must still count as gone.
    #[cfg(unix)]
    let parent = std::os::unix::process::parent_id();
    #[cfg(not(unix))]
    let parent = 0;
    let filter = EnvFilter::try_new(&args.log).unwrap_or_else(|_| EnvFilter::new("info"));
    // Logs are diagnostics: stderr, leaving stdout alone. Colour codes only on a terminal,
    // so a log file or a pipe (systemd, docker, `2>server.log`) gets plain text.
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(stderr_is_terminal)
        .init();
    raise_open_file_limit();
    let (listen, also_listen, listen_if_available) = listen_addresses(&args.listen, args.ephemeral);
    // Ephemeral: a directory of our own, removed on exit, unless one was given (kept, so
    // a test harness can restart a broker on the same data).
    let temp_dir = match (&args.data_dir, args.ephemeral) {
        (None, true) => match TempDir::create() {
            Ok(d) => Some(d),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a temporary data directory");
                return std::process::ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let data_dir = match (&temp_dir, args.data_dir) {
        (Some(t), _) => t.0.clone(),
        (None, Some(d)) => d,
        (None, None) => PathBuf::from("./minimq-data"),
    };
    // Tests throw the data away: syncing would only slow them (a test of durability
    // across a crash of the machine asks for `--fsync batch`).
    let fsync = args.fsync.unwrap_or(if args.ephemeral {
        FsyncArg::Off
    } else {
        FsyncArg::Batch
    });
    let http = match args.http {
        Some(h) => h.0,
        None if args.ephemeral => Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        None => Some(SocketAddr::from(([127, 0, 0, 1], 15672))),
    };
    let http_scheme = match args.http_tls_cert {
        Some(_) => "https",
        None => "http",
    };
    let config = Config {
        listen,
        also_listen,
        listen_if_available,
        data_dir: Some(data_dir.clone()),
        fsync: fsync.into(),
        heartbeat: args.heartbeat,
        http,
        queue_memory: args.queue_memory,
        recovery_mode: args.recovery_mode,
        memory_high_watermark: args.memory_high_watermark,
        disk_free_limit: args.disk_free_limit,
        max_connections: args.max_connections,
        allow_guest_remote: args.allow_guest_remote,
        definitions: args.definitions,
        http_tls_cert: args.http_tls_cert,
        http_tls_key: args.http_tls_key,
        tls_listen: args.tls_listen,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        tls_ca: args.tls_ca,
        tls_verify_peer: args.tls_verify_peer,
        consumer_timeout: args.consumer_timeout.0,
        channel_max: args.channel_max,
        frame_max: args.frame_max,
        max_message_size: args.max_message_size,
        ..Config::default()
    };
    let broker = match Broker::builder().config(config).start().await {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, listen = ?args.listen, "cannot start");
            return std::process::ExitCode::FAILURE;
        }
    };
    if args.ephemeral {
        let line = serde_json::json!({
            "amqp_url": broker.amqp_url(),
            "http_url": broker.http_addr().map(|a| format!("{http_scheme}://{a}")),
            "pid": std::process::id(),
            // Absolute: the harness may run in another directory than the one it gave.
            "data_dir": std::path::absolute(&data_dir).unwrap_or(data_dir).to_string_lossy(),
        });
        // The line is the harness's signal that the broker is up: flushed at once, and a
        // broker nobody can find (stdout closed) is of no use, so it stops.
        let mut out = std::io::stdout().lock();
        if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
            tracing::error!(error = %e, "cannot write the JSON line to stdout");
            broker.shutdown().await;
            return std::process::ExitCode::FAILURE;
        }
    }
    release_freed_memory();
    let handle = broker.shutdown_handle();
    let on_signal = handle.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        on_signal.shutdown();
    });
    if args.ephemeral {
        let on_orphan = handle.clone();
        tokio::spawn(async move {
            wait_for_parent_exit(parent).await;
            tracing::info!("parent process exited; shutting down");
            on_orphan.shutdown();
        });
    }
    if args.exit_with_stdin {
        // A plain thread, not `spawn_blocking`: the runtime waits for its blocking tasks
        // when it is dropped, and this one may be blocked in `read` for ever.
        let on_eof = handle.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut stdin = std::io::stdin().lock();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            tracing::info!("stdin closed; shutting down");
            on_eof.shutdown();
        });
    }
    broker.wait_for_shutdown_request().await;
    broker.shutdown().await;
    drop(temp_dir);
    std::process::ExitCode::SUCCESS
}

/// Elsewhere the parent is not watched.
#[cfg(not(unix))]
async fn wait_for_parent_exit(_parent: u32) {
    std::future::pending::<()>().await
}

/// A data directory made for one ephemeral run, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/minimq-ephemeral-PID-RANDOM`, readable by this user only.
    fn create() -> std::io::Result<TempDir> {
        let base = std::env::temp_dir();
        let mut attempts = 0;
        loop {
            let path = base.join(format!(
                "minimq-ephemeral-{}-{:016x}",
                std::process::id(),
                rand::random::<u64>()
            ));
            let mut builder = std::fs::DirBuilder::new();
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            match builder.create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                // Another process took the name: draw again (a few times at most).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && attempts < 8 => {
                    attempts += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::warn!(dir = %self.0.display(), error = %e, "cannot remove the data directory");
        }
    }
}

/// Returns when the parent process has exited (this process was re-parented), so a broker
/// started by a test harness that crashed or was killed does not outlive it. Polled: the
/// portable alternatives (prctl's PDEATHSIG, kqueue) need unsafe code or libc.
#[cfg(unix)]
async fn wait_for_parent_exit(parent: u32) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != parent {
            return;
        }
    }
}

/// Hands the memory this thread's heap has freed back to the operating system: after
/// start-up recovery, and while memory is under pressure ([`reclaim_memory`]).
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
            assert!(args.http.is_none(), "no --http: the default applies");
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
        assert_eq!(
            listen_addresses(&args.listen, false),
            (other, vec![v6], vec![])
        );
        assert_eq!(
            listen_addresses(&args.listen, true),
            (other, vec![v6], vec![])
        );
        let args = Args::try_parse_from(["minimq-server", "--listen", "127.0.0.1:5673,[::1]:5672"])
            .unwrap();
        assert_eq!(args.listen, vec![other, v6]);
        // None given: IPv4 loopback, and IPv6 loopback where the host has it.
        assert_eq!(listen_addresses(&[], false), (v4, vec![], vec![v6]));
        // Ephemeral: a free port on IPv4 loopback only.
        let free: SocketAddr = "127.0.0.1:0".parse().unwrap();
        assert_eq!(listen_addresses(&[], true), (free, vec![], vec![]));
    }
}
