//! Messages over the management API: `POST /api/exchanges/{vhost}/{name}/publish` and
//! `POST /api/queues/{vhost}/{name}/get`, as RabbitMQ 3.10 answers them
//! (`rabbit_mgmt_wm_exchange_publish`, `rabbit_mgmt_wm_queue_get`). A publish takes the
//! AMQP publish's route, checks and confirms: it answers once every queue has taken the
//! message (a persistent one to a durable queue on disk). A get is `basic.get` on the
//! queue task, settled as the `ackmode` says before the answer.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use bytes::Bytes;
use minimq_protocol::{BasicProperties, ReplyCode};
use serde::Serialize;
use serde_json::{Map, Value};

use super::json::Table;
use super::objects::exchange_id;
use super::{json_body, params, vhost_for, Api, ApiError, User};
use crate::auth::Perm;
use crate::error::AmqpError;
use crate::message::Message;
use crate::queue::{ConfirmTicket, GetResult, Publish, QueueCommand, QueueEvent, QueueHandle};
use crate::vhost::VHost;

/// The vhost a publish or get names, for `user`: RabbitMQ opens a channel to it, and a
/// missing one refuses that channel (`401 Access refused.`).
fn channel_vhost(
    state: &crate::server::BrokerState,
    user: &str,
    name: &str,
) -> Result<Arc<VHost>, ApiError> {
    if state.vhosts.get(name).is_none() {
        return Err(ApiError::not_authorised("Access refused."));
    }
    vhost_for(state, user, name)
}

/// The request body's `keys`, or RabbitMQ's 400 naming each missing one
/// (`[{key_missing,properties}]`).
fn required<'a>(body: &'a Map<String, Value>, keys: &[&str]) -> Result<Vec<&'a Value>, ApiError> {
    let missing: Vec<String> = keys
        .iter()
        .filter(|k| !body.contains_key(**k))
        .map(|k| format!("{{key_missing,{k}}}"))
        .collect();
    if !missing.is_empty() {
        // Erlang's `~p` of the list, line breaks included.
        return Err(ApiError::bad_request(format!("[{}]", missing.join(",\n "))));
    }
    Ok(keys.iter().filter_map(|k| body.get(*k)).collect())
}

fn object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match json_body(body)? {
        Value::Object(m) => Ok(m),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// RabbitMQ's `[Why, What]` reason (`["not_int","delivery_mode"]`).
fn pair(why: &str, what: impl Into<Value>) -> ApiError {
    ApiError::bad_request_json(serde_json::json!([why, what.into()]))
}

/// An AMQP failure as a RabbitMQ channel reports it to the management API: `400` with
/// the reply code and text (`404 NOT_FOUND - no exchange 'x' in vhost '/'`).
fn channel_error(e: &AmqpError) -> ApiError {
    ApiError::bad_request(format!("{} {}", e.code.code(), e.text))
}

/// Message properties from their JSON (`rabbit_mgmt_format:to_basic_properties/1`):
/// `headers` a table, `delivery_mode`, `priority` and `timestamp` integers, the others
/// strings; unknown names are ignored.
fn properties_from_json(v: &Value) -> Result<BasicProperties, ApiError> {
    let mut p = BasicProperties::default();
    let map = match v {
        Value::Object(m) => m,
        // RabbitMQ writes empty properties as `[]`; a client may send them back.
        Value::Array(a) if a.is_empty() => return Ok(p),
        _ => return Err(ApiError::bad_request("properties must be an object")),
    };
    for (k, v) in map {
        let int = |key: &'static str| v.as_u64().ok_or_else(|| pair("not_int", key));
        let text = || {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| pair("not_string", k.as_str()))
        };
        match k.as_str() {
            "headers" => {
                p.headers =
                    Some(super::definitions::table_from_json(v).map_err(ApiError::bad_request)?)
            }
            "delivery_mode" => {
                p.delivery_mode = Some(
                    u8::try_from(int("delivery_mode")?)
                        .map_err(|_| pair("not_int", "delivery_mode"))?,
                )
            }
            "priority" => {
                p.priority =
                    Some(u8::try_from(int("priority")?).map_err(|_| pair("not_int", "priority"))?)
            }
            "timestamp" => p.timestamp = Some(int("timestamp")?),
            "content_type" => p.content_type = Some(text()?),
            "content_encoding" => p.content_encoding = Some(text()?),
            "correlation_id" => p.correlation_id = Some(text()?),
            "reply_to" => p.reply_to = Some(text()?),
            "expiration" => p.expiration = Some(text()?),
            "message_id" => p.message_id = Some(text()?),
            "type" => p.kind = Some(text()?),
            "user_id" => p.user_id = Some(text()?),
            "app_id" => p.app_id = Some(text()?),
            "cluster_id" => p.cluster_id = Some(text()?),
            _ => {}
        }
    }
    Ok(p)
}

/// Message properties as RabbitMQ shows them: the ones set, by name; none at all is
/// `[]` (an empty Erlang proplist), as RabbitMQ writes it.
fn properties_json(p: &BasicProperties) -> Value {
    let mut m = Map::new();
    let mut text = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            m.insert(k.to_string(), Value::from(v.as_str()));
        }
    };
    text("content_type", &p.content_type);
    text("content_encoding", &p.content_encoding);
    text("correlation_id", &p.correlation_id);
    text("reply_to", &p.reply_to);
    text("expiration", &p.expiration);
    text("message_id", &p.message_id);
    text("type", &p.kind);
    text("user_id", &p.user_id);
    text("app_id", &p.app_id);
    text("cluster_id", &p.cluster_id);
    if let Some(h) = &p.headers {
        m.insert(
            "headers".into(),
            serde_json::to_value(Table(Some(h))).unwrap_or(Value::Null),
        );
    }
    if let Some(d) = p.delivery_mode {
        m.insert("delivery_mode".into(), d.into());
    }
    if let Some(d) = p.priority {
        m.insert("priority".into(), d.into());
    }
    if let Some(t) = p.timestamp {
        m.insert("timestamp".into(), t.into());
    }
    if m.is_empty() {
        Value::Array(Vec::new())
    } else {
        Value::Object(m)
    }
}

/// `POST /api/exchanges/{vhost}/{name}/publish` with `routing_key`, `properties`,
/// `payload` and `payload_encoding` (`string` or `base64`): `{"routed": bool}` once the
/// queues have it. Needs write on the exchange; a failure is RabbitMQ's `400` with the
/// channel's reply code and text.
pub async fn publish(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = channel_vhost(&state, &user, &vhost)?;
    let exchange = exchange_id(&name);
    let body = object(&body)?;
    let [routing_key, properties, payload, encoding] = required(
        &body,
        &["routing_key", "properties", "payload", "payload_encoding"],
    )?[..] else {
        return Err(ApiError::bad_request("bad request"));
    };
    let routing_key = routing_key
        .as_str()
        .ok_or_else(|| pair("not_string", "routing_key"))?;
    let Some(payload) = payload.as_str() else {
        return Err(ApiError::bad_request("payload_not_string"));
    };
    let properties = properties_from_json(properties)?;
    let payload = match encoding.as_str() {
        Some("string") => Bytes::copy_from_slice(payload.as_bytes()),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(payload)
            .map(Bytes::from)
            .map_err(|_| pair("not_base64", payload))?,
        _ => return Err(pair("unsupported_encoding", encoding.clone())),
    };
    let max = state.config.max_message_size;
    let size = payload.len() as u64;
    if size > max {
        return Err(channel_error(&AmqpError::precondition(format!(
            "message size {size} is larger than configured max size {max}"
        ))));
    }
    let queues = route(&state, &user, &vhost, exchange, routing_key, &properties)
        .map_err(|e| channel_error(&e))?;
    let message = Arc::new(Message::new(
        exchange.into(),
        routing_key.into(),
        properties,
        payload,
    ));
    let routed = !queues.is_empty();
    deliver(queues, &message).await?;
    Ok(Json(serde_json::json!({ "routed": routed })).into_response())
}

/// Hands `message` to `queues` and waits until each has taken it (a persistent message
/// to a durable queue: on disk); RabbitMQ's `400 rejected` when one refused it.
async fn deliver(queues: Vec<QueueHandle>, message: &Arc<Message>) -> Result<(), ApiError> {
    let rejected =
        || ApiError::bad_request("rejected Unable to publish message. Check queue limits.");
    let (sink, mut outcomes) = tokio::sync::mpsc::unbounded_channel();
    let n = queues.len();
    for (seq, q) in queues.into_iter().enumerate() {
        // One ticket per queue, as a channel in confirm mode has; the channel number
        // only has to be non-zero (see `ConfirmTicket`).
        let confirm = ConfirmTicket {
            sink: sink.clone(),
            channel: 1,
            seq: seq as u64,
        };
        q.publish(vec![Publish {
            message: message.clone(),
            confirm: Some(confirm),
        }])
        .await;
    }
    drop(sink);
    let mut accepted = 0;
    while let Some(event) = outcomes.recv().await {
        match event {
            QueueEvent::Confirm { ok: true, .. } => accepted += 1,
            QueueEvent::Confirm { ok: false, .. } => return Err(rejected()),
            _ => {}
        }
    }
    // Fewer answers than queues: one went away holding its ticket, unconfirmed.
    if accepted < n {
        return Err(rejected());
    }
    Ok(())
}

/// The queue RabbitMQ's aliveness test declares, publishes to and reads from.
const ALIVENESS_QUEUE: &str = "aliveness-test";

/// `GET /api/aliveness-test/{vhost}`: declares the queue `aliveness-test` (and leaves
/// it, as RabbitMQ does), publishes a message to it through the default exchange and
/// takes it back: `{"status":"ok"}`. The user needs the permissions those steps need.
pub async fn aliveness_test(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let vhost = vhost_for(&state, &user, &params(vhost)?)?;
    // Its steps' checks, in order, each refused as its channel would be.
    let perm = state.users.permission(vhost.name(), &user);
    let steps = [
        (Perm::Configure, "queue", ALIVENESS_QUEUE),
        (Perm::Write, "exchange", "amq.default"),
        (Perm::Read, "queue", ALIVENESS_QUEUE),
    ];
    for (what, kind, name) in steps {
        if !perm.as_ref().is_some_and(|p| p.allows(what, name)) {
            return Err(ApiError::not_authorised(format!(
                "ACCESS_REFUSED - access to {kind} '{name}' in vhost '{}' refused for user '{user}'",
                vhost.name()
            )));
        }
    }
    let spec = crate::vhost::QueueSpec {
        name: ALIVENESS_QUEUE.to_string(),
        durable: false,
        exclusive: false,
        auto_delete: false,
        arguments: Default::default(),
    };
    let (queue, _) = vhost
        .declare_queue(spec, 0)
        .await
        .map_err(super::objects::amqp_error)?;
    let message = Arc::new(Message::new(
        "".into(),
        ALIVENESS_QUEUE.into(),
        BasicProperties::default(),
        Bytes::from_static(b"test_message"),
    ));
    deliver(vec![queue.clone()], &message).await?;
    let got = tokio::spawn(take(queue, 1, AckMode::Ack))
        .await
        .unwrap_or_default();
    let answer = if got.is_empty() {
        serde_json::json!({"status": "failed", "reason": "basic.get_empty"})
    } else {
        serde_json::json!({"status": "ok"})
    };
    Ok(Json(answer).into_response())
}

/// The queues a publish by `user` goes to, with the AMQP publish's checks: write on the
/// exchange, `user_id`, `expiration`, a failed store.
fn route(
    state: &crate::server::BrokerState,
    user: &str,
    vhost: &VHost,
    exchange: &str,
    routing_key: &str,
    properties: &BasicProperties,
) -> Result<Vec<QueueHandle>, AmqpError> {
    let shown = if exchange.is_empty() {
        "amq.default"
    } else {
        exchange
    };
    let allowed = state
        .users
        .permission(vhost.name(), user)
        .is_some_and(|p| p.allows(Perm::Write, shown));
    if !allowed {
        return Err(AmqpError::new(
            ReplyCode::AccessRefused,
            format!(
                "access to exchange '{shown}' in vhost '{}' refused for user '{user}'",
                vhost.name()
            ),
        ));
    }
    if let Some(uid) = properties.user_id.as_deref() {
        if uid != user {
            return Err(AmqpError::precondition(format!(
                "user_id property set to '{uid}' but authenticated user was '{user}'"
            )));
        }
    }
    if let Some(expiration) = properties.expiration.as_deref() {
        crate::queue::args::parse_expiration(expiration)?;
    }
    let mut queues = Vec::new();
    vhost.route(
        exchange,
        routing_key,
        properties.headers.as_ref(),
        &mut queues,
    )?;
    crate::connection::refuse_if_store_failed(state, &queues, properties)?;
    Ok(queues)
}

/// What a get does with the messages it took (RabbitMQ's `ackmode`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum AckMode {
    /// Taken and given back, redelivered (`ack_requeue_true`).
    Requeue,
    /// Taken for good (`ack_requeue_false`).
    Ack,
    /// Rejected and requeued (`reject_requeue_true`).
    RejectRequeue,
    /// Rejected: dead-lettered or dropped (`reject_requeue_false`).
    Reject,
}

impl AckMode {
    fn parse(v: &Value) -> Option<AckMode> {
        match v.as_str()? {
            "ack_requeue_true" => Some(AckMode::Requeue),
            "ack_requeue_false" => Some(AckMode::Ack),
            "reject_requeue_true" => Some(AckMode::RejectRequeue),
            "reject_requeue_false" => Some(AckMode::Reject),
            _ => None,
        }
    }
}

/// One message of a get's answer, fields in RabbitMQ's order.
#[derive(Serialize)]
struct Got {
    payload_bytes: usize,
    redelivered: bool,
    exchange: String,
    routing_key: String,
    message_count: u32,
    properties: Value,
    payload: String,
    payload_encoding: &'static str,
}

/// An integer field given as a number or a string of one (`parse_int`).
fn int_field(v: &Value) -> Result<u64, ApiError> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .ok_or_else(|| {
        let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
        pair("not_integer", shown)
    })
}

/// `POST /api/queues/{vhost}/{name}/get` with `count`, `ackmode`, `encoding` (`auto` or
/// `base64`) and optional `truncate`: up to `count` messages, settled as `ackmode`
/// says before the answer. Needs read on the queue.
pub async fn get(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = channel_vhost(&state, &user, &vhost)?;
    let body = object(&body)?;
    let [ackmode, count, encoding] = required(&body, &["ackmode", "count", "encoding"])?[..] else {
        return Err(ApiError::bad_request("bad request"));
    };
    let count = int_field(count)?;
    // RabbitMQ answers an unknown ackmode with a 500 and no body.
    let mode = AckMode::parse(ackmode)
        .ok_or_else(|| ApiError::bad_request("Unsupported ackmode. Please use ack_requeue_true, ack_requeue_false, reject_requeue_true or reject_requeue_false."))?;
    let base64 = match encoding.as_str() {
        Some("auto") => false,
        Some("base64") => true,
        _ => {
            return Err(ApiError::bad_request(
                "Unsupported encoding. Please use auto or base64.",
            ))
        }
    };
    let truncate = body
        .get("truncate")
        .filter(|v| !v.is_null())
        .map(int_field)
        .transpose()?;
    let allowed = state
        .users
        .permission(vhost.name(), &user)
        .is_some_and(|p| p.allows(Perm::Read, &name));
    if !allowed {
        return Err(ApiError::not_authorised(format!(
            "ACCESS_REFUSED - access to queue '{name}' in vhost '{}' refused for user '{user}'",
            vhost.name()
        )));
    }
    let queue = vhost.queue_for(&name, 0).map_err(|e| match e.code {
        ReplyCode::NotFound => {
            ApiError::with_error(axum::http::StatusCode::NOT_FOUND, "not_found", e.text)
        }
        _ => channel_error(&e),
    })?;
    // Its own task: the messages taken are settled even if the client goes away.
    let taken = tokio::spawn(take(queue, count, mode))
        .await
        .unwrap_or_default();
    let list: Vec<Got> = taken
        .iter()
        .map(|g| got_json(g, truncate, base64))
        .collect();
    Ok(Json(list).into_response())
}

/// Up to `count` messages from `queue`, then settled as `mode` says.
async fn take(queue: QueueHandle, count: u64, mode: AckMode) -> Vec<GetResult> {
    let mut taken = Vec::new();
    for _ in 0..count {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let no_ack = mode == AckMode::Ack;
        if !queue.send(QueueCommand::Get { no_ack, reply }).await {
            break;
        }
        match rx.await {
            Ok(Some(g)) => taken.push(g),
            _ => break,
        }
    }
    let ids: Vec<u64> = taken.iter().map(|g| g.msg_id).collect();
    let settle = match mode {
        AckMode::Ack => None,
        AckMode::Requeue => Some((true, false)),
        AckMode::RejectRequeue => Some((true, true)),
        AckMode::Reject => Some((false, true)),
    };
    if let (Some((requeue, rejected)), false) = (settle, ids.is_empty()) {
        queue
            .send(QueueCommand::Settle {
                ids,
                requeue,
                rejected,
            })
            .await;
    }
    taken
}

fn got_json(g: &GetResult, truncate: Option<u64>, base64: bool) -> Got {
    let m = &g.message;
    let body: &[u8] = match truncate {
        Some(n) if (n as usize) < m.body.len() => &m.body[..n as usize],
        _ => &m.body,
    };
    let (payload, payload_encoding) = match std::str::from_utf8(body) {
        Ok(s) if !base64 => (s.to_string(), "string"),
        _ => (
            base64::engine::general_purpose::STANDARD.encode(body),
            "base64",
        ),
    };
    Got {
        payload_bytes: m.body.len(),
        redelivered: g.redelivered,
        exchange: m.exchange.to_string(),
        routing_key: m.routing_key.to_string(),
        message_count: g.remaining,
        properties: properties_json(&m.properties),
        payload,
        payload_encoding,
    }
}
