//! The accept loop, the broker's shared state, and the embedding API: start a broker in
//! process (on an ephemeral port in tests), read its bound address, shut it down.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let broker = minimq_broker::Broker::builder().listen("127.0.0.1:0".parse().unwrap()).start().await?;
//! println!("AMQP on {}", broker.local_addr());
//! broker.shutdown().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection;

/// State every connection shares.
pub struct BrokerState {
    /// Settings.
    pub config: Config,
    /// The vhosts (`vhosts.rs`).
    pub vhosts: crate::vhosts::VHosts,
    /// Cancelled when the broker shuts down.
    pub shutdown: CancellationToken,
    /// Cancelled by [`Broker::crash`]: connection tasks stop dead, as in `kill -9`.
    pub killed: CancellationToken,
    /// The message store, when the broker has a data directory.
    pub store: Option<Arc<crate::store::Store>>,
    /// Open connections, for the management API.
    pub connections: crate::registry::Connections,
    /// The bound AMQP and management API addresses (the API lists them).
    pub bound: (Vec<SocketAddr>, Option<SocketAddr>),
    /// The bound AMQP-over-TLS addresses.
    pub bound_tls: Vec<SocketAddr>,
    /// Users and their permissions (`auth.rs`).
    pub users: crate::auth::Users,
    /// The memory and disk alarms (`alarm.rs`).
    pub alarms: Arc<crate::alarm::Alarms>,
    /// Client sockets open now (AMQP), counted from accept to close.
    pub sockets: AtomicUsize,
    /// Most client sockets open at once ([`socket_limit`]).
    pub socket_limit: usize,
    next_conn_id: AtomicU64,
}

impl BrokerState {
    /// A fresh connection id.
    pub fn next_conn_id(&self) -> u64 {
        self.next_conn_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Deletes vhost `name` as RabbitMQ does: durably first (from then on no connection
    /// may open it), then its permissions are cleared and its queues (with their
    /// messages), exchanges, bindings, policies and limits removed. Answers whether there
    /// was such a vhost. Its open connections are left to the caller, to close with
    /// [`BrokerState::close_vhost_connections`] once it has answered: RabbitMQ answers
    /// the deletion, then closes them from its `vhost_deleted` event. If the removal
    /// fails half way, they are closed here, before the error is answered.
    pub async fn delete_vhost(&self, name: &str) -> std::io::Result<bool> {
        let Some(vhost) = self.vhosts.remove(name).await? else {
            return Ok(false);
        };
        let emptied = async {
            for (v, user, _) in self.users.permissions() {
                if v == name {
                    self.users.remove_permission(&v, &user).await?;
                }
            }
            vhost.destroy().await
        }
        .await;
        if emptied.is_err() {
            self.close_vhost_connections(name);
        }
        emptied.map(|()| true)
    }

    /// Closes the connections to vhost `name`, a deleted one, with `320 CONNECTION_FORCED
    /// - vhost 'V' is deleted` (RabbitMQ's code and text).
    pub fn close_vhost_connections(&self, name: &str) {
        for c in self.connections.iter() {
            if c.vhost == name {
                c.close_forced(format!("vhost '{name}' is deleted"));
            }
        }
    }
}

/// Builds and starts a [`Broker`].
#[derive(Debug, Clone, Default)]
pub struct BrokerBuilder {
    config: Config,
}

impl BrokerBuilder {
    /// Listen address (`127.0.0.1:0` for an ephemeral port).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Listens on `addr` too (AMQP), e.g. `[::1]:5672` beside `127.0.0.1:5672`.
    pub fn also_listen(mut self, addr: SocketAddr) -> Self {
        self.config.also_listen.push(addr);
        self
    }

    /// Data directory: durable queues and persistent messages are kept there and
    /// recovered from it at start. Without one, everything stays in memory.
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.config.data_dir = Some(dir.into());
        self
    }

    /// When the message log is synced (`FsyncMode::Batch` by default).
    pub fn fsync(mut self, mode: crate::store::FsyncMode) -> Self {
        self.config.fsync = mode;
        self
    }

    /// Bytes of persistent messages a durable queue keeps in memory before the rest
    /// stay on disk only (see [`Config::queue_memory`]).
    pub fn queue_memory(mut self, bytes: u64) -> Self {
        self.config.queue_memory = bytes;
        self
    }

    /// Heartbeat interval offered to clients, seconds (0 disables).
    pub fn heartbeat(mut self, secs: u16) -> Self {
        self.config.heartbeat = secs;
        self
    }

    /// Time a client has to finish the handshake.
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.config.handshake_timeout = t;
        self
    }

    /// Management HTTP API address (`127.0.0.1:0` for an ephemeral port); `None`, the
    /// default for embedded brokers, disables it.
    pub fn http(mut self, addr: Option<SocketAddr>) -> Self {
        self.config.http = addr;
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Binds the listener and starts accepting connections.
    pub async fn start(self) -> std::io::Result<Broker> {
        // Recover before listening: a client never sees a half-recovered broker.
        let (store, recovered) = match &self.config.data_dir {
            Some(dir) => {
                let opts = crate::store::StoreOptions {
                    fsync: self.config.fsync,
                    segment_size: self.config.segment_size,
                    fail_syncs: self.config.fail_syncs.clone(),
                    disk: self
                        .config
                        .disk
                        .clone()
                        .unwrap_or_else(|| Arc::new(crate::store::OsDisk)),
                    recovery: self.config.recovery_mode,
                    queue_memory: self.config.queue_memory,
                };
                // Replay reads the whole log: on a blocking thread, not an async worker.
                let dir = dir.clone();
                let open =
                    tokio::task::spawn_blocking(move || crate::store::Store::open(&dir, opts));
                let (store, queues) = match open.await {
                    Ok(opened) => opened?,
                    Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                    Err(e) => return Err(std::io::Error::other(e)),
                };
                (Some(store), queues)
            }
            None => (None, Vec::new()),
        };
        let alarms = Arc::new(crate::alarm::Alarms::new(
            crate::alarm::memory_limit(self.config.memory_high_watermark),
            self.config.disk_free_limit,
        ));
        alarms.start_monitor(
            Box::new(crate::alarm::SystemProbe),
            self.config.data_dir.clone(),
        )?;
        if let Some(store) = &store {
            alarms.follow_store_faults(store.faults());
            alarms.page_with(store.pressure().clone());
        }
        let params = store.as_ref().map(|s| s.take_params()).unwrap_or_default();
        let topology = store.as_ref().map(|s| s.topology()).unwrap_or_default();
        let vhosts =
            crate::vhosts::VHosts::restore(store.clone(), &params, recovered, topology).await?;
        let users = crate::auth::Users::new(store.clone());
        // Permissions on a vhost whose deletion a crash cut short are gone from the store
        // (`VHosts::restore`): not taken back either.
        let params: Vec<_> = params
            .into_iter()
            .filter(|p| {
                p.component != crate::auth::PERMISSION_COMPONENT || vhosts.get(&p.vhost).is_some()
            })
            .collect();
        restore_users(&users, &params, store.as_deref(), &self.config.users).await?;
        let mut listeners = vec![TcpListener::bind(self.config.listen).await?];
        for a in &self.config.also_listen {
            listeners.push(TcpListener::bind(a).await?);
        }
        for a in &self.config.listen_if_available {
            match TcpListener::bind(a).await {
                Ok(l) => listeners.push(l),
                Err(e) => tracing::warn!(addr = %a, error = %e, "not listening on this address"),
            }
        }
        let addrs = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        // Read before anything is bound, so a bad file stops the start naming it.
        let http_tls = match (&self.config.http_tls_cert, &self.config.http_tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::https_config(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(std::io::Error::other(
                    "--http-tls-cert and --http-tls-key go together",
                ))
            }
        };
        let http = match self.config.http {
            Some(a) => Some(TcpListener::bind(a).await?),
            None => None,
        };
        let http_addr = http.as_ref().map(|l| l.local_addr()).transpose()?;
        let tls = if self.config.tls_listen.is_empty() {
            None
        } else {
            let (Some(cert), Some(key)) = (&self.config.tls_cert, &self.config.tls_key) else {
                return Err(std::io::Error::other(
                    "--tls-listen needs --tls-cert and --tls-key",
                ));
            };
            Some(tokio_rustls::TlsAcceptor::from(crate::tls::server_config(
                cert,
                key,
                self.config.tls_ca.as_deref(),
                self.config.tls_verify_peer,
            )?))
        };
        let mut tls_listeners = Vec::new();
        for a in &self.config.tls_listen {
            tls_listeners.push(TcpListener::bind(a).await?);
        }
        let tls_addrs = tls_listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<std::io::Result<Vec<_>>>()?;
        let socket_limit = socket_limit(self.config.max_connections);
        let state = Arc::new(BrokerState {
            config: self.config,
            vhosts,
            store,
            shutdown: CancellationToken::new(),
            killed: CancellationToken::new(),
            connections: Default::default(),
            bound: (addrs.clone(), http_addr),
            bound_tls: tls_addrs.clone(),
            alarms,
            users,
            sockets: AtomicUsize::new(0),
            socket_limit,
            next_conn_id: AtomicU64::new(1),
        });
        if let Some(path) = state.config.definitions.clone() {
            let doc = std::fs::read(&path)
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))
                .and_then(|raw| {
                    serde_json::from_slice::<serde_json::Value>(&raw).map_err(|e| {
                        std::io::Error::other(format!("{}: not JSON: {e}", path.display()))
                    })
                })?;
            crate::admin::definitions::import(&state, &doc)
                .await
                .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display())))?;
            tracing::info!(file = %path.display(), "definitions imported");
        }
        let tracker = TaskTracker::new();
        let mut accept: Vec<JoinHandle<()>> = listeners
            .into_iter()
            .map(|l| tokio::spawn(accept_loop(l, state.clone(), tracker.clone(), None)))
            .collect();
        for l in tls_listeners {
            accept.push(tokio::spawn(accept_loop(
                l,
                state.clone(),
                tracker.clone(),
                tls.clone(),
            )));
        }
        for a in &tls_addrs {
            tracing::info!(addr = %a, "minimq listening (TLS)");
        }
        for a in &addrs {
            tracing::info!(addr = %a, "minimq listening");
        }
        if let (Some(http), Some(addr)) = (http, http_addr) {
            let https = http_tls.is_some();
            tracker.spawn(crate::admin::serve(
                http,
                http_tls,
                state.clone(),
                tracker.clone(),
            ));
            tracing::info!(%addr, https, "management API listening");
        }
        Ok(Broker {
            tls_addrs,
            addrs,
            http_addr,
            state,
            tracker,
            accept,
        })
    }
}

/// A running broker.
pub struct Broker {
    /// The bound AMQP addresses, `listen` first.
    addrs: Vec<SocketAddr>,
    /// The bound AMQP-over-TLS addresses.
    tls_addrs: Vec<SocketAddr>,
    http_addr: Option<SocketAddr>,
    state: Arc<BrokerState>,
    tracker: TaskTracker,
    /// One accept loop per listener.
    accept: Vec<JoinHandle<()>>,
}

/// Asks a running broker to shut down, from anywhere.
#[derive(Debug, Clone)]
pub struct ShutdownHandle(CancellationToken);

impl ShutdownHandle {
    /// Starts the graceful shutdown.
    pub fn shutdown(&self) {
        self.0.cancel();
    }
}

impl Broker {
    /// A builder with the default configuration.
    pub fn builder() -> BrokerBuilder {
        BrokerBuilder::default()
    }

    /// The address the first listener (`listen`) is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every AMQP address the broker listens on, `listen` first.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address the management HTTP API is bound to, when enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The bound AMQP-over-TLS addresses (`--tls-listen`).
    pub fn tls_addrs(&self) -> &[SocketAddr] {
        &self.tls_addrs
    }

    /// `amqp://guest:guest@ADDR/%2f` for this broker.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.local_addr())
    }

    /// The shared state (registry, configuration).
    pub fn state(&self) -> &Arc<BrokerState> {
        &self.state
    }

    /// A handle that can trigger shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.state.shutdown.clone())
    }

    /// Waits until shutdown is requested through a [`ShutdownHandle`].
    pub async fn wait_for_shutdown_request(&self) {
        self.state.shutdown.cancelled().await;
    }

    /// Stops the broker the way `kill -9` would, for crash-recovery tests: connections
    /// are dropped without a word, queues stop without logging anything more, and the
    /// log is closed without its clean-shutdown record (so the next start recovers as
    /// after a crash). What was already handed to the log writer is written, as the
    /// operating system would still write what a killed process had written.
    pub async fn crash(self) {
        self.state.alarms.stop_monitor();
        self.state.killed.cancel();
        self.state.shutdown.cancel();
        for a in self.accept {
            a.abort();
            let _ = a.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
        for vhost in self.state.vhosts.all() {
            vhost.halt_queues().await;
        }
        if let Some(store) = &self.state.store {
            store.halt().await;
        }
    }

    /// Graceful shutdown: stop accepting, close every connection with 320
    /// CONNECTION_FORCED, wait for them to finish.
    pub async fn shutdown(self) {
        self.state.alarms.stop_monitor();
        self.state.shutdown.cancel();
        for a in self.accept {
            a.abort();
            let _ = a.await;
        }
        self.tracker.close();
        self.tracker.wait().await;
        // Connections are gone and their unacked messages requeued: let durable queues
        // log which messages were delivered before, then close the log cleanly.
        for vhost in self.state.vhosts.all() {
            vhost.shutdown_queues().await;
        }
        if let Some(store) = &self.state.store {
            store.close().await;
        }
        tracing::info!("minimq stopped");
    }
}

/// The store component of the marker that says this data directory has had its users
/// set up: once it has, the configured initial users are not created again (a deleted
/// `guest` stays deleted, as in RabbitMQ).
const USERS_SEEDED: &str = "users-seeded";

/// Takes back the users and permissions stored before a restart; on a fresh data
/// directory (or an in-memory broker), creates `initial` as administrators with every
/// permission on `/`, durably.
async fn restore_users(
    users: &crate::auth::Users,
    params: &[crate::store::ParamDef],
    store: Option<&crate::store::Store>,
    initial: &[(String, String)],
) -> std::io::Result<()> {
    use crate::auth::{Permission, User, PERMISSION_COMPONENT, USER_COMPONENT};
    let mut seeded = false;
    for p in params {
        let value = serde_json::from_slice::<serde_json::Value>(&p.value);
        match (p.component.as_str(), value) {
            (USER_COMPONENT, Ok(v)) => match User::from_json(&p.name, &v) {
                Ok(u) => {
                    users.put(u);
                }
                Err(e) => {
                    tracing::error!(user = %p.name, error = %e, "stored user not understood; left out")
                }
            },
            (PERMISSION_COMPONENT, Ok(v)) => match Permission::from_json(&v) {
                Ok(perm) => {
                    users.set_permission(&p.vhost, &p.name, perm);
                }
                Err(e) => {
                    tracing::error!(user = %p.name, vhost = %p.vhost, error = %e, "stored permission not understood; left out")
                }
            },
            (USERS_SEEDED, _) => seeded = true,
            _ => {}
        }
    }
    if seeded {
        return Ok(());
    }
    for (name, password) in initial {
        let user = User::with_password(name, password, vec!["administrator".into()]);
        let perm = Permission::new(".*", ".*", ".*").map_err(std::io::Error::other)?;
        users.save_user(user).await?;
        users.save_permission("/", name, perm).await?;
    }
    if let Some(store) = store {
        store
            .put_param(crate::store::ParamDef {
                component: USERS_SEEDED.into(),
                vhost: String::new(),
                name: String::new(),
                value: bytes::Bytes::from_static(b"true"),
            })
            .await?;
    }
    Ok(())
}

/// File descriptors kept for the store, the management API and the broker's own files
/// whatever the number of clients: at least this many, or a tenth of the process's limit
/// when that is more (RabbitMQ keeps about a tenth too).
pub const FD_RESERVE: u64 = 64;

/// Most client sockets the broker keeps open: `--max-connections` if given, and never
/// more than the process's open-file limit less the reserve (so a flood of idle sockets
/// cannot leave the store without descriptors).
pub fn socket_limit(max_connections: Option<usize>) -> usize {
    let by_fds = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .map_or(usize::MAX, |n| {
            let reserve = FD_RESERVE.max(n / 10);
            usize::try_from(n.saturating_sub(reserve)).unwrap_or(usize::MAX)
        });
    max_connections.map_or(by_fds, |m| m.min(by_fds))
}

/// Counts a client socket from accept to close.
struct SocketSlot(Arc<BrokerState>);

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.0.sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How often a refusal for the socket limit is logged at most.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

async fn accept_loop(
    listener: TcpListener,
    state: Arc<BrokerState>,
    tracker: TaskTracker,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = state.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((socket, peer)) => {
                if state.sockets.fetch_add(1, Ordering::Relaxed) >= state.socket_limit {
                    state.sockets.fetch_sub(1, Ordering::Relaxed);
                    // Closed at once: the client learns now instead of waiting in the
                    // backlog, and the descriptor is free again.
                    drop(socket);
                    let now = tokio::time::Instant::now();
                    if last_refusal_log.is_none_or(|t| now - t >= REFUSAL_LOG_EVERY) {
                        last_refusal_log = Some(now);
                        tracing::warn!(%peer, limit = state.socket_limit, "connection refused: the broker's socket limit is reached (--max-connections, or the open-file limit less a reserve)");
                    }
                    continue;
                }
                let slot = SocketSlot(state.clone());
                let _ = socket.set_nodelay(true);
                let state = state.clone();
                let tls = tls.clone();
                tracker.spawn(async move {
                    let _slot = slot;
                    let killed = state.killed.clone();
                    let serve = async {
                        let stream = match tls {
                            None => connection::transport::Stream::Tcp(socket),
                            Some(acceptor) => {
                                // The TLS handshake counts against the AMQP one's time.
                                let timeout = state.config.handshake_timeout;
                                match tokio::time::timeout(
                                    timeout,
                                    Box::pin(acceptor.accept(socket)),
                                )
                                .await
                                {
                                    Ok(Ok(s)) => connection::transport::Stream::Tls(Box::new(s)),
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                        return;
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        return;
                                    }
                                }
                            }
                        };
                        connection::serve_stream(stream, peer, state.clone()).await;
                    };
                    tokio::select! {
                        _ = serve => {}
                        // Dropped mid-flight: no close frames, no requeue, no cleanup.
                        _ = killed.cancelled() => {}
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
