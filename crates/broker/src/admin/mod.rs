//! The management HTTP API: a subset of RabbitMQ's (same paths, same JSON field names,
//! same error shapes), answered from live state with no statistics lag. Queue counters
//! come from [`QueueStats`](crate::queue::QueueStats), connections, channels and
//! consumers from the [`registry`](crate::registry).
//!
//! | path | methods |
//! |---|---|
//! | `/api/overview` | GET |
//! | `/api/whoami` | GET |
//! | `/api/queues`, `/api/queues/{vhost}` | GET |
//! | `/api/queues/{vhost}/{name}` | GET, DELETE (`?if-empty=true`, `?if-unused=true`) |
//! | `/api/queues/{vhost}/{name}/contents` | DELETE (purge) |
//! | `/api/connections`, `/api/channels`, `/api/consumers` | GET |
//!
//! Every request needs HTTP basic auth with one of the broker's users. As in RabbitMQ
//! (cowboy_rest), an unknown path is 404 and a wrong method 405 before credentials are
//! checked. The server is a small HTTP/1.1 one ([`http`]): one request at a time per
//! connection, keep-alive honoured, bad input answered 400 (431 / 413 for oversize).

pub mod http;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use minimq_protocol::{FieldTable, FieldValue};
use serde_json::{json, Map, Value};
use subtle::ConstantTimeEq;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;

use crate::queue::{QueueCommand, QueueHandle, QueueType};
use crate::registry::{ChannelInfo, ConnectionInfo};
use crate::server::BrokerState;
use http::{HttpError, Request, Response};

/// The RabbitMQ version whose management API this one follows.
pub const RABBITMQ_COMPAT_VERSION: &str = "3.10.0";
/// An idle keep-alive connection is closed after this.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A client that does not take its response within this is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The only virtual host.
const VHOST: &str = "/";

/// Accepts management API connections until the broker shuts down.
pub async fn serve(listener: TcpListener, state: Arc<BrokerState>, tracker: TaskTracker) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = state.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((socket, _)) => {
                let _ = socket.set_nodelay(true);
                tracker.spawn(serve_connection(socket, state.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "management API accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(mut socket: TcpStream, state: Arc<BrokerState>) {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        let read = tokio::select! {
            r = tokio::time::timeout(IDLE_TIMEOUT, http::read_request(&mut socket, &mut buf)) => r,
            _ = state.shutdown.cancelled() => return,
        };
        let (response, keep_alive, head_only) = match read {
            Err(_) | Ok(Err(HttpError::Closed)) => return,
            Ok(Err(HttpError::Status(status, reason))) => (error(status, reason), false, false),
            Ok(Ok(req)) => {
                let response = handle(&state, &req).await;
                (response, req.keep_alive, req.method == "HEAD")
            }
        };
        let bytes = response.encode(keep_alive, head_only);
        match tokio::time::timeout(WRITE_TIMEOUT, socket.write_all(&bytes)).await {
            Ok(Ok(())) if keep_alive => {}
            _ => {
                let _ = socket.shutdown().await;
                return;
            }
        }
    }
}

/// RabbitMQ's error body for `status`.
fn error(status: u16, reason: &str) -> Response {
    let name = match status {
        400 => "bad_request",
        401 => "not_authorized",
        404 => "Object Not Found",
        405 => "method_not_allowed",
        _ => http::reason_phrase(status),
    };
    let r = Response::json(status, &json!({ "error": name, "reason": reason }));
    if status == 401 {
        r.with_header("www-authenticate", "Basic realm=\"RabbitMQ Management\"")
    } else {
        r
    }
}

fn not_found() -> Response {
    error(404, "Not Found")
}

/// What a path names.
enum Route {
    Overview,
    Whoami,
    Queues(Option<String>),
    Queue(String, String),
    QueueContents(String, String),
    Connections,
    Channels,
    Consumers,
}

impl Route {
    fn methods(&self) -> &'static [&'static str] {
        match self {
            Route::Queue(..) => &["GET", "HEAD", "DELETE"],
            Route::QueueContents(..) => &["DELETE"],
            _ => &["GET", "HEAD"],
        }
    }
}

/// Splits and decodes the path; `None` when it names nothing.
fn route(path: &str) -> Result<Option<Route>, Response> {
    let rest = match path.strip_prefix("/api/") {
        Some(r) => r,
        None => return Ok(None),
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let mut segs = Vec::new();
    for s in rest.split('/') {
        match http::percent_decode(s, false) {
            Some(d) => segs.push(d),
            None => return Err(error(400, "malformed percent-encoding in the path")),
        }
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    Ok(match segs.as_slice() {
        ["overview"] => Some(Route::Overview),
        ["whoami"] => Some(Route::Whoami),
        ["queues"] => Some(Route::Queues(None)),
        ["queues", v] => Some(Route::Queues(Some(v.to_string()))),
        ["queues", v, n] => Some(Route::Queue(v.to_string(), n.to_string())),
        ["queues", v, n, "contents"] => Some(Route::QueueContents(v.to_string(), n.to_string())),
        ["connections"] => Some(Route::Connections),
        ["channels"] => Some(Route::Channels),
        ["consumers"] => Some(Route::Consumers),
        _ => None,
    })
}

/// The user named by a valid `Authorization: Basic` header.
fn authenticate(state: &BrokerState, req: &Request) -> Result<String, Response> {
    let Some(header) = req.header("authorization") else {
        return Err(error(401, "Not_Authorized"));
    };
    let creds = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| http::base64_decode(b64))
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some(creds) = creds else {
        return Err(error(401, "Not_Authorized"));
    };
    let (user, pass) = creds.split_once(':').unwrap_or((creds.as_str(), ""));
    if state
        .config
        .users
        .iter()
        // The password in constant time, as in the AMQP handshake.
        .any(|(u, p)| u == user && bool::from(p.as_bytes().ct_eq(pass.as_bytes())))
    {
        Ok(user.to_string())
    } else {
        Err(error(401, "Login failed"))
    }
}

/// Answers one request.
pub async fn handle(state: &Arc<BrokerState>, req: &Request) -> Response {
    let route = match route(&req.path) {
        Ok(Some(r)) => r,
        Ok(None) => return not_found(),
        Err(resp) => return resp,
    };
    let allowed = route.methods();
    if !allowed.contains(&req.method.as_str()) {
        return Response::empty(405).with_header("allow", allowed.join(", "));
    }
    let user = match authenticate(state, req) {
        Ok(u) => u,
        Err(resp) => return resp,
    };
    let vhost_ok = |v: &str| v == VHOST;
    match (route, req.method.as_str()) {
        (Route::Overview, _) => Response::json(200, &overview(state)),
        (Route::Whoami, _) => {
            Response::json(200, &json!({"name": user, "tags": ["administrator"]}))
        }
        (Route::Queues(None), _) => Response::json(200, &queues(state)),
        (Route::Queues(Some(v)), _) if vhost_ok(&v) => Response::json(200, &queues(state)),
        (Route::Queue(v, name), "DELETE") if vhost_ok(&v) => delete_queue(state, req, &name).await,
        (Route::Queue(v, name), _) if vhost_ok(&v) => match state.vhost.queue(&name) {
            Some(q) => Response::json(200, &queue_json(state, &q, true)),
            None => not_found(),
        },
        (Route::QueueContents(v, name), _) if vhost_ok(&v) => purge_queue(state, &name).await,
        (Route::Connections, _) => Response::json(200, &connections(state)),
        (Route::Channels, _) => Response::json(200, &channels(state)),
        (Route::Consumers, _) => Response::json(200, &consumers(state)),
        _ => not_found(),
    }
}

/// `minimq@HOSTNAME`, in the place of RabbitMQ's Erlang node name.
fn node_name() -> &'static str {
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

/// Every open connection, in connection order. No registry guard outlives this call.
fn connection_list(state: &BrokerState) -> Vec<Arc<ConnectionInfo>> {
    let mut list: Vec<Arc<ConnectionInfo>> = state
        .connections
        .iter()
        .map(|c| c.value().clone())
        .collect();
    list.sort_by_key(|c| c.id);
    list
}

fn queue_list(state: &BrokerState) -> Vec<QueueHandle> {
    let mut list = state.vhost.queues();
    list.sort_by(|a, b| a.name().cmp(b.name()));
    list
}

fn overview(state: &BrokerState) -> Value {
    let queues = queue_list(state);
    let conns = connection_list(state);
    let (mut ready, mut unacked) = (0u64, 0u64);
    let (mut publish, mut deliver, mut ack, mut redeliver) = (0u64, 0u64, 0u64, 0u64);
    for q in &queues {
        let s = &q.info().stats;
        ready += s.ready.load(Relaxed);
        unacked += s.unacked.load(Relaxed);
        publish += s.published.load(Relaxed);
        deliver += s.delivered.load(Relaxed);
        ack += s.acked.load(Relaxed);
        redeliver += s.redelivered.load(Relaxed);
    }
    let (mut channels, mut consumers) = (0usize, 0usize);
    for c in &conns {
        for ch in c.channels() {
            channels += 1;
            consumers += ch.consumer_count();
        }
    }
    let node = node_name();
    let exchange_types: Vec<Value> = ["direct", "fanout", "headers", "topic"]
        .iter()
        .map(|t| {
            json!({
                "name": t,
                "description": format!("AMQP {t} exchange, as per the AMQP specification"),
                "enabled": true,
            })
        })
        .collect();
    let (amqp, http) = state.bound;
    let listeners: Vec<Value> = std::iter::once(("amqp", amqp))
        .chain(http.map(|a| ("http", a)))
        .map(|(protocol, a)| {
            json!({
                "node": node,
                "protocol": protocol,
                "ip_address": a.ip().to_string(),
                "port": a.port(),
            })
        })
        .collect();
    json!({
        "listeners": listeners,
        "management_version": RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": RABBITMQ_COMPAT_VERSION,
        "product_name": "minimq",
        "product_version": env!("CARGO_PKG_VERSION"),
        "rates_mode": "none",
        "cluster_name": node,
        "node": node,
        "disable_stats": false,
        "statistics_db_event_queue": 0,
        "exchange_types": exchange_types,
        "message_stats": {
            "publish": publish,
            "deliver_get": deliver,
            "ack": ack,
            "redeliver": redeliver,
        },
        "queue_totals": {
            "messages": ready + unacked,
            "messages_ready": ready,
            "messages_unacknowledged": unacked,
        },
        "object_totals": {
            "queues": queues.len(),
            "connections": conns.len(),
            "channels": channels,
            "consumers": consumers,
            "exchanges": state.vhost.exchange_count(),
        },
    })
}

fn queues(state: &BrokerState) -> Value {
    Value::Array(
        queue_list(state)
            .iter()
            .map(|q| queue_json(state, q, false))
            .collect(),
    )
}

fn queue_json(state: &BrokerState, q: &QueueHandle, detail: bool) -> Value {
    let info = q.info();
    let s = &info.stats;
    let ready = s.ready.load(Relaxed);
    let paged = s.paged_out.load(Relaxed);
    let unacked = s.unacked.load(Relaxed);
    let node = node_name();
    let mut v = json!({
        "name": &*info.name,
        "vhost": VHOST,
        "durable": info.durable,
        "auto_delete": info.auto_delete,
        "exclusive": info.exclusive_owner.is_some(),
        "arguments": table_json(&info.arguments),
        "node": node,
        "state": "running",
        "type": match info.args.queue_type {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        },
        "policy": null,
        "exclusive_consumer_tag": null,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_bytes_ready": s.ready_bytes.load(Relaxed),
        "messages_paged_out": paged,
        "messages_ready_ram": ready.saturating_sub(paged),
        "messages_unacknowledged_ram": unacked,
        "messages_ram": ready.saturating_sub(paged) + unacked,
        "consumers": s.consumers.load(Relaxed),
        "message_stats": {
            "publish": s.published.load(Relaxed),
            "deliver_get": s.delivered.load(Relaxed),
            "ack": s.acked.load(Relaxed),
            "redeliver": s.redelivered.load(Relaxed),
        },
    });
    if let Some(owner) = info.exclusive_owner {
        let owner = state.connections.get(&owner).map(|c| c.value().clone());
        if let Some(c) = owner {
            v["owner_pid_details"] = connection_details(&c);
        }
    }
    if detail {
        let mut list = Vec::new();
        for c in connection_list(state) {
            for ch in c.channels() {
                for consumer in ch.consumers() {
                    if consumer.queue == info.name {
                        list.push(consumer_json(&c, &ch, &consumer));
                    }
                }
            }
        }
        v["consumer_details"] = Value::Array(list);
    }
    v
}

fn connection_details(c: &ConnectionInfo) -> Value {
    json!({
        "name": c.name,
        "peer_host": c.peer.ip().to_string(),
        "peer_port": c.peer.port(),
    })
}

fn connections(state: &BrokerState) -> Value {
    let node = node_name();
    Value::Array(
        connection_list(state)
            .iter()
            .map(|c| {
                let props = table_json(&c.client_properties);
                let provided = props.get("connection_name").cloned();
                let mut v = json!({
                    "name": c.name,
                    "node": node,
                    "type": "network",
                    "state": "running",
                    "protocol": "AMQP 0-9-1",
                    "user": c.user,
                    "user_who_performed_action": c.user,
                    "vhost": c.vhost,
                    "auth_mechanism": c.auth_mechanism,
                    "host": c.local.ip().to_string(),
                    "port": c.local.port(),
                    "peer_host": c.peer.ip().to_string(),
                    "peer_port": c.peer.port(),
                    "ssl": false,
                    "channels": c.channels().len(),
                    "channel_max": c.channel_max,
                    "frame_max": c.frame_max,
                    "timeout": c.heartbeat,
                    "connected_at": c.connected_at,
                    "client_properties": props,
                });
                if let Some(name) = provided {
                    v["user_provided_name"] = name;
                }
                v
            })
            .collect(),
    )
}

fn channel_name(c: &ConnectionInfo, ch: &ChannelInfo) -> String {
    format!("{} ({})", c.name, ch.number)
}

fn channels(state: &BrokerState) -> Value {
    let node = node_name();
    let mut list = Vec::new();
    for c in connection_list(state) {
        for ch in c.channels() {
            list.push(json!({
                "name": channel_name(&c, &ch),
                "number": ch.number,
                "node": node,
                "state": if ch.closing.load(Relaxed) { "closing" } else { "running" },
                "user": c.user,
                "user_who_performed_action": c.user,
                "vhost": c.vhost,
                "connection_details": connection_details(&c),
                "consumer_count": ch.consumer_count(),
                "messages_unacknowledged": ch.unacked.load(Relaxed),
                "prefetch_count": ch.prefetch.load(Relaxed),
                "global_prefetch_count": ch.global_prefetch.load(Relaxed),
                "confirm": ch.confirm.load(Relaxed),
                "transactional": ch.transactional.load(Relaxed),
                "messages_uncommitted": 0,
                "acks_uncommitted": 0,
            }));
        }
    }
    Value::Array(list)
}

fn consumer_json(
    c: &ConnectionInfo,
    ch: &ChannelInfo,
    consumer: &crate::registry::ConsumerInfo,
) -> Value {
    json!({
        "consumer_tag": &*consumer.tag,
        "queue": { "name": &*consumer.queue, "vhost": c.vhost },
        "channel_details": {
            "name": channel_name(c, ch),
            "number": ch.number,
            "connection_name": c.name,
            "node": node_name(),
            "peer_host": c.peer.ip().to_string(),
            "peer_port": c.peer.port(),
            "user": c.user,
        },
        "ack_required": consumer.ack_required,
        "prefetch_count": consumer.prefetch,
        "exclusive": consumer.exclusive,
        "active": true,
        "activity_status": "up",
        "arguments": {},
    })
}

fn consumers(state: &BrokerState) -> Value {
    let mut list = Vec::new();
    for c in connection_list(state) {
        for ch in c.channels() {
            for consumer in ch.consumers() {
                list.push(consumer_json(&c, &ch, &consumer));
            }
        }
    }
    Value::Array(list)
}

async fn delete_queue(state: &BrokerState, req: &Request, name: &str) -> Response {
    let Some(q) = state.vhost.queue(name) else {
        return not_found();
    };
    let flag = |p: &str| req.query_param(p).is_some_and(|v| v == "true");
    // The API may delete a queue exclusive to a connection: act as its owner.
    let as_conn = q.info().exclusive_owner.unwrap_or(0);
    match state
        .vhost
        .delete_queue(name, as_conn, flag("if-unused"), flag("if-empty"))
        .await
    {
        Ok(_) => Response::empty(204),
        Err(e) => {
            let reason = e
                .text
                .split_once(" - ")
                .map_or(e.text.as_str(), |(_, detail)| detail);
            error(400, reason)
        }
    }
}

async fn purge_queue(state: &BrokerState, name: &str) -> Response {
    let Some(q) = state.vhost.queue(name) else {
        return not_found();
    };
    let (reply, rx) = tokio::sync::oneshot::channel();
    if !q.send(QueueCommand::Purge { reply }).await {
        return not_found();
    }
    match rx.await {
        Ok(_) => Response::empty(204),
        Err(_) => not_found(),
    }
}

/// A field table as RabbitMQ's management API shows it: a JSON object.
pub fn table_json(t: &FieldTable) -> Value {
    let mut m = Map::new();
    for (k, v) in t.iter() {
        m.insert(k.to_string(), field_json(v));
    }
    Value::Object(m)
}

fn field_json(v: &FieldValue) -> Value {
    match v {
        FieldValue::Bool(b) => json!(b),
        FieldValue::I8(n) => json!(n),
        FieldValue::U8(n) => json!(n),
        FieldValue::I16(n) => json!(n),
        FieldValue::U16(n) => json!(n),
        FieldValue::I32(n) => json!(n),
        FieldValue::U32(n) => json!(n),
        FieldValue::I64(n) => json!(n),
        FieldValue::F32(n) => json!(n),
        FieldValue::F64(n) => json!(n),
        FieldValue::Decimal(d) => json!(f64::from(d.value) / 10f64.powi(i32::from(d.scale))),
        FieldValue::LongString(s) | FieldValue::Bytes(s) => {
            Value::String(String::from_utf8_lossy(s).into_owned())
        }
        FieldValue::Array(a) => Value::Array(a.iter().map(field_json).collect()),
        FieldValue::Timestamp(t) => json!(t),
        FieldValue::Table(t) => table_json(t),
        FieldValue::Void => Value::Null,
    }
}
