//! The management API's response bodies as typed structs (`serde::Serialize`), with
//! RabbitMQ's field names, and the functions that fill them from live state: queue
//! counters from [`QueueStats`](crate::queue::QueueStats), connections, channels and
//! consumers from the [`registry`](crate::registry).
//!
//! Fields RabbitMQ always sends are always here (`null` included, e.g. `policy`); fields
//! it sends only sometimes (`owner_pid_details`, `consumer_details`,
//! `user_provided_name`) are `Option`s left out when `None`. Reading state takes relaxed
//! atomic loads and short registry snapshots: nothing here waits on the AMQP side.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use minimq_protocol::{FieldTable, FieldValue};
use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};

use crate::queue::{QueueHandle, QueueType};
use crate::registry::{ChannelInfo, ConnectionInfo, ConsumerInfo};
use crate::server::BrokerState;

/// The RabbitMQ version whose management API this one follows.
pub const RABBITMQ_COMPAT_VERSION: &str = "3.10.0";

/// RabbitMQ's error body: `{"error": ..., "reason": ...}`.
#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    /// e.g. `not_authorized`, `Object Not Found`, `bad_request`.
    pub error: &'a str,
    /// Human-readable detail; for some refusals RabbitMQ's `[why, what]` pair.
    pub reason: &'a serde_json::Value,
}

/// `GET /api/whoami`.
#[derive(Debug, Serialize)]
pub struct Whoami {
    /// The authenticated user.
    pub name: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// `GET /api/overview`.
#[derive(Debug, Serialize)]
pub struct Overview {
    listeners: Vec<Listener>,
    contexts: Vec<WebContext>,
    management_version: &'static str,
    rabbitmq_version: &'static str,
    product_name: &'static str,
    product_version: &'static str,
    rates_mode: &'static str,
    cluster_name: &'static str,
    node: &'static str,
    disable_stats: bool,
    statistics_db_event_queue: u64,
    exchange_types: Vec<ExchangeType>,
    message_stats: MessageStats,
    queue_totals: QueueTotals,
    object_totals: ObjectTotals,
    /// minimq's own: what recovery did at start-up (`null` without a data directory).
    minimq_recovery: Option<Recovery>,
    /// minimq's own: the resource alarms in effect (`[]`, `["memory"]`, `["disk space"]`,
    /// both); RabbitMQ shows them per node, in `/api/nodes`.
    minimq_alarms: Vec<&'static str>,
}

/// One alarm in a health check's answer, as RabbitMQ's `rabbit_alarm:format_as_map`.
#[derive(Debug, Serialize)]
pub struct AlarmEntry {
    resource: &'static str,
    node: &'static str,
}

/// `GET /api/health/checks/alarms` and `local-alarms`: `{"status":"ok"}`, or (with a
/// 503) `failed`, RabbitMQ's reason text and the alarms.
#[derive(Debug, Serialize)]
pub struct AlarmCheck {
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alarms: Option<Vec<AlarmEntry>>,
}

/// The answer to an alarm health check, and whether it passed. `reason` is RabbitMQ's
/// text for the cluster-wide or the node-local check (the same here: one node).
pub fn alarm_check(state: &BrokerState, reason: &'static str) -> (bool, AlarmCheck) {
    let set = state.alarms.current();
    if !set.any() {
        return (
            true,
            AlarmCheck {
                status: "ok",
                reason: None,
                alarms: None,
            },
        );
    }
    let node = node_name();
    let alarms = set
        .resources()
        .map(|r| AlarmEntry {
            resource: r.name(),
            node,
        })
        .collect();
    (
        false,
        AlarmCheck {
            status: "failed",
            reason: Some(reason),
            alarms: Some(alarms),
        },
    )
}

/// One entry of `GET /api/nodes`: the node's resources and alarms, with RabbitMQ's field
/// names (the subset minimq measures).
#[derive(Debug, Serialize)]
pub struct Node {
    name: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    running: bool,
    mem_used: u64,
    mem_limit: u64,
    mem_alarm: bool,
    disk_free: u64,
    disk_free_limit: u64,
    disk_free_alarm: bool,
    sockets_used: usize,
    sockets_total: usize,
}

impl Node {
    /// The node's name, `minimq@HOSTNAME`.
    pub fn name(&self) -> &str {
        self.name
    }
}

/// `GET /api/nodes`: this node.
pub fn nodes(state: &BrokerState) -> Vec<Node> {
    let s = state.alarms.snapshot();
    vec![Node {
        name: node_name(),
        kind: "disc",
        running: true,
        mem_used: s.mem_used,
        mem_limit: s.mem_limit,
        mem_alarm: s.alarms.memory,
        disk_free: s.disk_free,
        disk_free_limit: s.disk_free_limit,
        disk_free_alarm: s.alarms.disk,
        sockets_used: state.sockets.load(std::sync::atomic::Ordering::Relaxed),
        sockets_total: state.socket_limit,
    }]
}

/// What the message store's recovery did when the broker started.
#[derive(Debug, Serialize)]
struct Recovery {
    mode: &'static str,
    clean_shutdown: bool,
    skipped: Vec<SkippedStretch>,
    damaged_copies: Vec<String>,
}

/// One stretch of the log recovery did not use.
#[derive(Debug, Serialize)]
struct SkippedStretch {
    segment: u64,
    offset: u64,
    octets: u64,
    damage: &'static str,
}

fn recovery(state: &BrokerState) -> Option<Recovery> {
    let report = state.store.as_ref()?.recovery_report();
    Some(Recovery {
        mode: report.mode.name(),
        clean_shutdown: report.clean,
        skipped: report
            .skipped
            .iter()
            .map(|k| SkippedStretch {
                segment: k.segment,
                offset: k.offset,
                octets: k.len,
                damage: k.damage.name(),
            })
            .collect(),
        damaged_copies: report
            .damaged_copies
            .iter()
            .map(|p| p.display().to_string())
            .collect(),
    })
}

#[derive(Debug, Serialize)]
struct Listener {
    node: &'static str,
    protocol: &'static str,
    ip_address: String,
    port: u16,
}

/// The management listener, as RabbitMQ's overview lists its web contexts (clients
/// read the node's name from it).
#[derive(Debug, Serialize)]
struct WebContext {
    ssl_opts: [(); 0],
    node: &'static str,
    description: &'static str,
    path: &'static str,
    ip: String,
    port: String,
}

#[derive(Debug, Serialize)]
struct ExchangeType {
    name: &'static str,
    description: String,
    enabled: bool,
}

#[derive(Debug, Default, Serialize)]
struct MessageStats {
    publish: u64,
    deliver_get: u64,
    ack: u64,
    redeliver: u64,
}

#[derive(Debug, Serialize)]
struct QueueTotals {
    messages: u64,
    messages_ready: u64,
    messages_unacknowledged: u64,
}

#[derive(Debug, Serialize)]
struct ObjectTotals {
    queues: usize,
    connections: usize,
    channels: usize,
    consumers: usize,
    exchanges: usize,
}

/// One queue of `GET /api/queues` (and, with `consumer_details`, `GET /api/queues/{vhost}/{name}`).
#[derive(Debug, Serialize)]
pub struct Queue<'a> {
    name: Arc<str>,
    vhost: &'a str,
    durable: bool,
    auto_delete: bool,
    exclusive: bool,
    arguments: Table<'a>,
    node: &'static str,
    state: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    policy: Option<Arc<str>>,
    operator_policy: Option<Arc<str>>,
    /// The policy's definition as given, merged with the operator policy's (`{}` without
    /// either), as RabbitMQ shows it.
    effective_policy_definition: Arc<serde_json::Value>,
    messages: u64,
    messages_ready: u64,
    messages_unacknowledged: u64,
    message_bytes_ready: u64,
    messages_ram: u64,
    #[serde(flatten)]
    classic: Option<ClassicFields>,
    #[serde(flatten)]
    quorum: Option<QuorumFields>,
    #[serde(flatten)]
    stream: Option<StreamFields>,
    consumers: u64,
    message_stats: MessageStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner_pid_details: Option<ConnectionDetails>,
    #[serde(skip_serializing_if = "Option::is_none")]
    consumer_details: Option<Vec<Consumer>>,
}

/// What RabbitMQ 3.10 shows of a classic queue only.
#[derive(Debug, Serialize)]
struct ClassicFields {
    exclusive_consumer_tag: Option<String>,
    messages_paged_out: u64,
    messages_ready_ram: u64,
    messages_unacknowledged_ram: u64,
}

/// What RabbitMQ 3.10 shows of a quorum queue only. There is no replication: the one
/// member, leader and online, is this node.
#[derive(Debug, Serialize)]
struct QuorumFields {
    leader: &'static str,
    members: [&'static str; 1],
    online: [&'static str; 1],
    /// Messages dead-lettered but not yet taken by their targets (at-least-once
    /// dead-lettering).
    messages_dlx: u64,
    message_bytes_dlx: u64,
    /// Every message of a quorum queue is kept in the log, transient ones too.
    messages_persistent: u64,
}

/// What RabbitMQ 3.10 shows of a stream only. There is no replication: the one member,
/// online, is this node; `readers` counts its consumers there.
#[derive(Debug, Serialize)]
struct StreamFields {
    members: [&'static str; 1],
    online: [&'static str; 1],
    readers: std::collections::BTreeMap<&'static str, u64>,
}

/// A connection as other objects name it.
#[derive(Debug, Serialize)]
struct ConnectionDetails {
    name: String,
    peer_host: String,
    peer_port: u16,
}

/// One connection of `GET /api/connections`.
#[derive(Debug, Serialize)]
pub struct Connection<'a> {
    name: &'a str,
    node: &'static str,
    #[serde(rename = "type")]
    kind: &'static str,
    state: &'static str,
    protocol: &'static str,
    user: &'a str,
    user_who_performed_action: &'a str,
    vhost: &'a str,
    auth_mechanism: &'a str,
    host: String,
    port: u16,
    peer_host: String,
    peer_port: u16,
    ssl: bool,
    channels: usize,
    channel_max: u16,
    frame_max: u32,
    timeout: u16,
    connected_at: u64,
    client_properties: Table<'a>,
    /// The client's `connection_name` property, as RabbitMQ shows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    user_provided_name: Option<Field<'a>>,
}

/// One channel of `GET /api/channels`.
#[derive(Debug, Serialize)]
pub struct Channel {
    /// Its name, `connection (number)`.
    pub name: String,
    number: u16,
    node: &'static str,
    state: &'static str,
    user: String,
    user_who_performed_action: String,
    /// Its connection's vhost.
    pub vhost: String,
    connection_details: ConnectionDetails,
    consumer_count: usize,
    messages_unacknowledged: u64,
    prefetch_count: u32,
    global_prefetch_count: u32,
    confirm: bool,
    transactional: bool,
    messages_uncommitted: u64,
    acks_uncommitted: u64,
}

/// One consumer of `GET /api/consumers` and of a queue's `consumer_details`.
#[derive(Debug, Serialize)]
pub struct Consumer {
    consumer_tag: Arc<str>,
    queue: QueueRef,
    channel_details: ChannelDetails,
    ack_required: bool,
    prefetch_count: u32,
    exclusive: bool,
    active: bool,
    activity_status: &'static str,
    /// Its `basic.consume` arguments, as the client sent them (RabbitMQ's
    /// `format_consumer_arguments`: a table, `{}` when empty).
    #[serde(serialize_with = "table")]
    arguments: FieldTable,
}

fn table<S: Serializer>(t: &FieldTable, s: S) -> Result<S::Ok, S::Error> {
    Table(Some(t)).serialize(s)
}

#[derive(Debug, Serialize)]
struct QueueRef {
    name: Arc<str>,
    vhost: String,
}

#[derive(Debug, Serialize)]
struct ChannelDetails {
    name: String,
    number: u16,
    connection_name: String,
    node: &'static str,
    peer_host: String,
    peer_port: u16,
    user: String,
}

/// `minimq@HOSTNAME`, in the place of RabbitMQ's Erlang node name.
pub(crate) fn node_name() -> &'static str {
    static NODE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NODE.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("minimq@{host}")
    })
}

impl Queue<'_> {
    /// The queue's name, for the listings' filter.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Connection<'_> {
    /// The connection's name, for the listings' filter.
    pub fn name(&self) -> &str {
        self.name
    }
}

/// Every open connection, in connection order. No registry guard outlives this call.
pub fn connection_list(state: &BrokerState) -> Vec<Arc<ConnectionInfo>> {
    let mut list: Vec<Arc<ConnectionInfo>> = state
        .connections
        .iter()
        .map(|c| c.value().clone())
        .collect();
    list.sort_by_key(|c| c.id);
    list
}

/// The queues of the vhosts `visible` accepts, by vhost and name.
fn queue_list(state: &BrokerState, visible: impl Fn(&str) -> bool) -> Vec<QueueHandle> {
    let mut list: Vec<QueueHandle> = state
        .vhosts
        .all()
        .iter()
        .filter(|v| visible(v.name()))
        .flat_map(|v| v.queues())
        .collect();
    list.sort_by(|a, b| (&a.info().vhost, a.name()).cmp(&(&b.info().vhost, b.name())));
    list
}

/// The broker at a glance: what the vhosts `visible` accepts hold.
pub fn overview(state: &BrokerState, visible: impl Fn(&str) -> bool) -> Overview {
    let exchanges = state
        .vhosts
        .all()
        .iter()
        .filter(|v| visible(v.name()))
        .map(|v| v.exchange_count())
        .sum();
    let queues = queue_list(state, visible);
    let conns = connection_list(state);
    let (mut ready, mut unacked) = (0u64, 0u64);
    let mut stats = MessageStats::default();
    for q in &queues {
        let s = &q.info().stats;
        ready += s.ready.load(Relaxed);
        unacked += s.unacked.load(Relaxed);
        stats.publish += s.published.load(Relaxed);
        stats.deliver_get += s.delivered.load(Relaxed);
        stats.ack += s.acked.load(Relaxed);
        stats.redeliver += s.redelivered.load(Relaxed);
    }
    let (mut channels, mut consumers) = (0usize, 0usize);
    for c in &conns {
        for ch in c.channels() {
            channels += 1;
            consumers += ch.consumer_count();
        }
    }
    let node = node_name();
    let (amqp, http) = &state.bound;
    Overview {
        listeners: amqp
            .iter()
            .map(|a| ("amqp", *a))
            .chain(state.bound_tls.iter().map(|a| ("amqp/ssl", *a)))
            .chain(http.map(|a| match state.config.http_tls_cert {
                Some(_) => ("https", a),
                None => ("http", a),
            }))
            .map(|(protocol, a)| Listener {
                node,
                protocol,
                ip_address: a.ip().to_string(),
                port: a.port(),
            })
            .collect(),
        contexts: http
            .iter()
            .map(|a| WebContext {
                ssl_opts: [],
                node,
                description: "RabbitMQ Management",
                path: "/",
                ip: a.ip().to_string(),
                port: a.port().to_string(),
            })
            .collect(),
        management_version: RABBITMQ_COMPAT_VERSION,
        rabbitmq_version: RABBITMQ_COMPAT_VERSION,
        product_name: "minimq",
        product_version: env!("CARGO_PKG_VERSION"),
        rates_mode: "none",
        cluster_name: node,
        node,
        disable_stats: false,
        statistics_db_event_queue: 0,
        exchange_types: ["direct", "fanout", "headers", "topic"]
            .into_iter()
            .map(|name| ExchangeType {
                name,
                description: format!("AMQP {name} exchange, as per the AMQP specification"),
                enabled: true,
            })
            .collect(),
        message_stats: stats,
        queue_totals: QueueTotals {
            messages: ready + unacked,
            messages_ready: ready,
            messages_unacknowledged: unacked,
        },
        object_totals: ObjectTotals {
            queues: queues.len(),
            connections: conns.len(),
            channels,
            consumers,
            exchanges,
        },
        minimq_recovery: recovery(state),
        minimq_alarms: state
            .alarms
            .current()
            .resources()
            .map(crate::alarm::Resource::name)
            .collect(),
    }
}

/// One exchange as `GET /api/exchanges` shows it.
pub fn exchange(vhost: &str, e: &crate::exchange::Exchange) -> serde_json::Value {
    serde_json::json!({
        "name": e.name.as_ref(),
        "vhost": vhost,
        "type": e.kind.name(),
        "durable": e.durable,
        "auto_delete": e.auto_delete,
        "internal": e.internal,
        "arguments": Table(Some(&e.arguments)),
        "user_who_performed_action": "",
    })
}

/// A vhost's exchanges, by name (the default exchange first, as `""`).
pub fn exchanges(vhost: &crate::vhost::VHost) -> Vec<serde_json::Value> {
    vhost
        .exchanges()
        .iter()
        .map(|e| exchange(vhost.name(), e))
        .collect()
}

/// RabbitMQ form-encodes a path segment it writes: letters, digits and `.-_` stay, a
/// space is `+`.
const FORM: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'.')
    .remove(b'-')
    .remove(b'_');

/// `name` as one segment of a path RabbitMQ writes (a binding's `Location`).
pub fn path_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, FORM)
        .to_string()
        .replace("%20", "+")
}

/// A binding's `properties_key` in the `Location` RabbitMQ answers a bind with: encoded
/// once more (`eu.%2A` is `eu.%252A`), its `~` kept.
pub fn location_props(properties_key: &str) -> String {
    const KEY: &percent_encoding::AsciiSet = &FORM.remove(b'~');
    percent_encoding::utf8_percent_encode(properties_key, KEY).to_string()
}

/// Whether a binding's `properties_key` is the one a path names: RabbitMQ takes the
/// path's segment as the key itself or as the key with its routing key decoded (a
/// client may write `eu.*` or `eu.%2A`).
pub fn names_binding(properties_key: &str, segment: &str) -> bool {
    properties_key == segment
        || percent_encoding::percent_decode_str(&properties_key.replace('+', " "))
            .decode_utf8()
            .is_ok_and(|decoded| decoded == segment)
}

/// RabbitMQ's `properties_key`: the routing key percent-encoded (`~` for an empty key
/// without arguments), and for a binding with arguments `~` and a digest of them
/// (RabbitMQ's digest is Erlang's term hash; this one is the CRC32C of their JSON:
/// another value, the same use, naming one binding).
pub fn properties_key(key: &str, arguments: &minimq_protocol::FieldTable) -> String {
    let encoded = path_segment(key);
    if arguments.is_empty() {
        return if key.is_empty() { "~".into() } else { encoded };
    }
    let shown = serde_json::to_string(&Table(Some(arguments))).unwrap_or_default();
    format!("{encoded}~{:08x}", crc32c::crc32c(shown.as_bytes()))
}

fn binding(
    vhost: &str,
    source: &str,
    destination: &str,
    to_exchange: bool,
    key: &str,
    arguments: &minimq_protocol::FieldTable,
) -> serde_json::Value {
    serde_json::json!({
        "source": source,
        "vhost": vhost,
        "destination": destination,
        "destination_type": if to_exchange { "exchange" } else { "queue" },
        "routing_key": key,
        "arguments": Table(Some(arguments)),
        "properties_key": properties_key(key, arguments),
    })
}

/// A vhost's bindings as RabbitMQ lists them: the default exchange's to every queue
/// first (by queue name), then each exchange's (by exchange name, in binding order).
pub fn bindings(vhost: &crate::vhost::VHost) -> Vec<serde_json::Value> {
    let name = vhost.name();
    let empty = minimq_protocol::FieldTable::new();
    let mut queues = vhost.queues();
    queues.sort_by(|a, b| a.name().cmp(b.name()));
    let mut list: Vec<serde_json::Value> = queues
        .iter()
        .map(|q| binding(name, "", q.name(), false, q.name(), &empty))
        .collect();
    for e in vhost.exchanges().iter().filter(|e| !e.name.is_empty()) {
        for b in e.bindings() {
            let (destination, to_exchange) = match &b.destination {
                crate::exchange::Destination::Queue(q) => (q.as_ref(), false),
                crate::exchange::Destination::Exchange(x) => (x.as_ref(), true),
            };
            list.push(binding(
                name,
                &e.name,
                destination,
                to_exchange,
                &b.key,
                &b.arguments,
            ));
        }
    }
    list
}

/// Every queue of the vhosts `visible` accepts, by vhost and name. The handles own what
/// the views borrow.
pub fn queues(state: &BrokerState, visible: impl Fn(&str) -> bool) -> Vec<QueueHandle> {
    queue_list(state, visible)
}

/// A queue's view; with `detail`, its consumers too.
pub fn queue<'a>(state: &BrokerState, q: &'a QueueHandle, detail: bool) -> Queue<'a> {
    let applied = q.info().applied_policy();
    let info = q.info();
    let s = &info.stats;
    let ready = s.ready.load(Relaxed);
    let paged = s.paged_out.load(Relaxed);
    let unacked = s.unacked.load(Relaxed);
    let owner_pid_details = info
        .exclusive_owner
        .and_then(|owner| state.connections.get(&owner).map(|c| c.value().clone()))
        .map(|c| connection_details(&c));
    let node = node_name();
    let quorum = (info.args.queue_type == QueueType::Quorum).then(|| QuorumFields {
        leader: node,
        members: [node],
        online: [node],
        messages_dlx: s.dead_lettering.load(Relaxed),
        message_bytes_dlx: s.dead_lettering_bytes.load(Relaxed),
        messages_persistent: ready + unacked,
    });
    let consumer_details = detail.then(|| {
        let mut list = Vec::new();
        for c in connection_list(state) {
            for ch in c.channels() {
                for consumer in ch.consumers() {
                    if consumer.queue == info.name && *c.vhost == *info.vhost {
                        list.push(consumer_view(&c, &ch, consumer));
                    }
                }
            }
        }
        list
    });
    Queue {
        name: info.name.clone(),
        vhost: &info.vhost,
        durable: info.durable,
        auto_delete: info.auto_delete,
        exclusive: info.exclusive_owner.is_some(),
        arguments: Table(Some(&info.arguments)),
        node: node_name(),
        state: "running",
        kind: info.args.queue_type.name(),
        policy: applied.name,
        operator_policy: applied.operator,
        effective_policy_definition: applied
            .definition
            .unwrap_or_else(|| Arc::new(serde_json::Value::Object(Default::default()))),
        messages: ready + unacked,
        messages_ready: ready,
        messages_unacknowledged: unacked,
        message_bytes_ready: s.ready_bytes.load(Relaxed),
        messages_ram: ready.saturating_sub(paged) + unacked,
        stream: (info.args.queue_type == QueueType::Stream).then(|| StreamFields {
            members: [node],
            online: [node],
            readers: [(node, s.consumers.load(Relaxed))].into_iter().collect(),
        }),
        classic: (info.args.queue_type == QueueType::Classic).then(|| ClassicFields {
            exclusive_consumer_tag: None,
            messages_paged_out: paged,
            messages_ready_ram: ready.saturating_sub(paged),
            messages_unacknowledged_ram: unacked,
        }),
        quorum,
        consumers: s.consumers.load(Relaxed),
        message_stats: MessageStats {
            publish: s.published.load(Relaxed),
            deliver_get: s.delivered.load(Relaxed),
            ack: s.acked.load(Relaxed),
            redeliver: s.redelivered.load(Relaxed),
        },
        owner_pid_details,
        consumer_details,
    }
}

fn connection_details(c: &ConnectionInfo) -> ConnectionDetails {
    ConnectionDetails {
        name: c.name.clone(),
        peer_host: c.peer.ip().to_string(),
        peer_port: c.peer.port(),
    }
}

/// A connection's view.
pub fn connection(c: &ConnectionInfo) -> Connection<'_> {
    Connection {
        name: &c.name,
        node: node_name(),
        kind: "network",
        state: "running",
        protocol: "AMQP 0-9-1",
        user: &c.user,
        user_who_performed_action: &c.user,
        vhost: &c.vhost,
        auth_mechanism: &c.auth_mechanism,
        host: c.local.ip().to_string(),
        port: c.local.port(),
        peer_host: c.peer.ip().to_string(),
        peer_port: c.peer.port(),
        ssl: c.ssl.load(std::sync::atomic::Ordering::Relaxed),
        channels: c.channels().len(),
        channel_max: c.channel_max,
        frame_max: c.frame_max,
        timeout: c.heartbeat,
        connected_at: c.connected_at,
        client_properties: Table(Some(&c.client_properties)),
        user_provided_name: c.client_properties.get("connection_name").map(Field),
    }
}

fn channel_name(c: &ConnectionInfo, ch: &ChannelInfo) -> String {
    format!("{} ({})", c.name, ch.number)
}

/// Every channel of every connection.
pub fn channels(state: &BrokerState) -> Vec<Channel> {
    let node = node_name();
    let mut list = Vec::new();
    for c in connection_list(state) {
        for ch in c.channels() {
            list.push(Channel {
                name: channel_name(&c, &ch),
                number: ch.number,
                node,
                state: if ch.closing.load(Relaxed) {
                    "closing"
                } else {
                    "running"
                },
                user: c.user.clone(),
                user_who_performed_action: c.user.clone(),
                vhost: c.vhost.clone(),
                connection_details: connection_details(&c),
                consumer_count: ch.consumer_count(),
                messages_unacknowledged: ch.unacked.load(Relaxed),
                prefetch_count: ch.prefetch.load(Relaxed),
                global_prefetch_count: ch.global_prefetch.load(Relaxed),
                confirm: ch.confirm.load(Relaxed),
                transactional: ch.transactional.load(Relaxed),
                messages_uncommitted: 0,
                acks_uncommitted: 0,
            });
        }
    }
    list
}

fn consumer_view(c: &ConnectionInfo, ch: &ChannelInfo, consumer: ConsumerInfo) -> Consumer {
    Consumer {
        consumer_tag: consumer.tag.clone(),
        queue: QueueRef {
            name: consumer.queue.clone(),
            vhost: c.vhost.clone(),
        },
        channel_details: ChannelDetails {
            name: channel_name(c, ch),
            number: ch.number,
            connection_name: c.name.clone(),
            node: node_name(),
            peer_host: c.peer.ip().to_string(),
            peer_port: c.peer.port(),
            user: c.user.clone(),
        },
        ack_required: consumer.ack_required,
        prefetch_count: consumer.prefetch,
        exclusive: consumer.exclusive,
        active: true,
        activity_status: "up",
        arguments: consumer.arguments,
    }
}

/// Every consumer of every channel.
pub fn consumers(state: &BrokerState) -> Vec<Consumer> {
    let mut list = Vec::new();
    for c in connection_list(state) {
        for ch in c.channels() {
            for consumer in ch.consumers() {
                list.push(consumer_view(&c, &ch, consumer));
            }
        }
    }
    list
}

/// A field table as RabbitMQ's management API shows it: a JSON object (`None`: `{}`).
#[derive(Debug, Clone, Copy)]
pub struct Table<'a>(pub Option<&'a FieldTable>);

impl Serialize for Table<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some(t) = self.0 else {
            return s.serialize_map(Some(0))?.end();
        };
        let mut map = s.serialize_map(Some(t.len()))?;
        for (k, v) in t.iter() {
            map.serialize_entry(k, &Field(v))?;
        }
        map.end()
    }
}

/// A field value as JSON: numbers, strings (byte strings read as UTF-8, lossily),
/// arrays, objects; a decimal as its number; void as `null`.
#[derive(Debug, Clone, Copy)]
pub struct Field<'a>(pub &'a FieldValue);

impl Serialize for Field<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            FieldValue::Bool(b) => s.serialize_bool(*b),
            FieldValue::I8(n) => s.serialize_i8(*n),
            FieldValue::U8(n) => s.serialize_u8(*n),
            FieldValue::I16(n) => s.serialize_i16(*n),
            FieldValue::U16(n) => s.serialize_u16(*n),
            FieldValue::I32(n) => s.serialize_i32(*n),
            FieldValue::U32(n) => s.serialize_u32(*n),
            FieldValue::I64(n) => s.serialize_i64(*n),
            FieldValue::F32(n) => s.serialize_f32(*n),
            FieldValue::F64(n) => s.serialize_f64(*n),
            FieldValue::Decimal(d) => {
                s.serialize_f64(f64::from(d.value) / 10f64.powi(i32::from(d.scale)))
            }
            FieldValue::LongString(b) | FieldValue::Bytes(b) => {
                s.serialize_str(&String::from_utf8_lossy(b))
            }
            FieldValue::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Field(v))?;
                }
                seq.end()
            }
            FieldValue::Timestamp(t) => s.serialize_u64(*t),
            FieldValue::Table(t) => Table(Some(t)).serialize(s),
            FieldValue::Void => s.serialize_unit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use minimq_protocol::Decimal;

    #[test]
    fn field_tables_as_rabbitmq_shows_them() {
        let mut inner = FieldTable::new();
        inner.insert("n", FieldValue::I64(-3));
        let mut t = FieldTable::new();
        t.insert("s", FieldValue::LongString(b"text".to_vec().into()));
        t.insert("b", FieldValue::Bool(true));
        t.insert(
            "d",
            FieldValue::Decimal(Decimal {
                scale: 2,
                value: 150,
            }),
        );
        t.insert(
            "a",
            FieldValue::Array(vec![FieldValue::U8(1), FieldValue::Void]),
        );
        t.insert("t", FieldValue::Table(inner));
        let v = serde_json::to_value(Table(Some(&t))).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"s": "text", "b": true, "d": 1.5, "a": [1, null], "t": {"n": -3}})
        );
        assert_eq!(serde_json::to_string(&Table(None)).unwrap(), "{}");
    }
}
