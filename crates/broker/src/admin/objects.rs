//! The management API's changes to a vhost's topology: exchange and queue declares and
//! deletes, bindings made, listed and removed. Each goes through the same [`VHost`]
//! methods as its AMQP method (`exchange.declare`, `queue.bind`, ...), so the two cannot
//! disagree, and a durable object is on disk before the answer. RabbitMQ runs these as
//! AMQP methods of the requesting user too (`rabbit_mgmt_util:direct_request/6`); its
//! answers are copied: a missing object `404 not_found` with the AMQP explanation, a
//! refusal `401 Access refused.`, any other channel error `400` with the explanation.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header::LOCATION;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use minimq_protocol::{FieldTable, ReplyCode};
use serde_json::Value;

use super::{created, json_body, params, vhost_for, Api, ApiError, User};
use crate::auth::Perm;
use crate::error::AmqpError;
use crate::exchange::Destination;
use crate::server::BrokerState;
use crate::vhost::{QueueSpec, VHost};

/// An AMQP method's failure as RabbitMQ's management API answers it.
pub fn amqp_error(e: AmqpError) -> ApiError {
    let detail = e
        .text
        .split_once(" - ")
        .map_or(e.text.as_str(), |(_, detail)| detail)
        .to_string();
    match e.code {
        ReplyCode::NotFound => ApiError::with_error(StatusCode::NOT_FOUND, "not_found", detail),
        ReplyCode::AccessRefused | ReplyCode::NotAllowed => {
            ApiError::not_authorised("Access refused.")
        }
        _ => ApiError::bad_request(detail),
    }
}

/// The exchange a path names: RabbitMQ's paths call the default exchange `amq.default`.
pub fn exchange_id(name: &str) -> &str {
    if name == "amq.default" {
        ""
    } else {
        name
    }
}

/// The vhost a declare or bind names: RabbitMQ answers a missing one `404 not_found
/// vhost_not_found` there (its other endpoints plain 404).
fn target_vhost(state: &BrokerState, user: &str, name: &str) -> Result<Arc<VHost>, ApiError> {
    if state.vhosts.get(name).is_none() {
        return Err(ApiError::with_error(
            StatusCode::NOT_FOUND,
            "not_found",
            "vhost_not_found",
        ));
    }
    vhost_for(state, user, name)
}

/// Whether `user` holds permission `perm` on `name` in `vhost`, as the AMQP path checks
/// it; `401 Access refused.` otherwise.
pub fn authorize(
    state: &BrokerState,
    user: &str,
    vhost: &VHost,
    perm: Perm,
    name: &str,
) -> Result<(), ApiError> {
    match state.users.permission(vhost.name(), user) {
        Some(p) if p.allows(perm, name) => Ok(()),
        _ => Err(ApiError::not_authorised("Access refused.")),
    }
}

/// The body of a declare or bind: an object (an empty body is `{}`, as in RabbitMQ).
fn body_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match json_body(body)? {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(serde_json::Map::new()),
        _ => Err(ApiError::bad_request("not_json")),
    }
}

/// A boolean field (absent: false), as `rabbit_mgmt_util:parse_bool/1` takes it: `true`,
/// `false` or those words as strings; `["not_boolean", value]` otherwise.
fn flag(body: &serde_json::Map<String, Value>, key: &str) -> Result<bool, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s == "true" => Ok(true),
        Some(Value::String(s)) if s == "false" => Ok(false),
        Some(other) => {
            let shown = match other {
                Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            Err(ApiError::bad_request_json(serde_json::json!([
                "not_boolean",
                shown
            ])))
        }
    }
}

/// The `arguments` field (absent, `null` or `[]`, an empty Erlang proplist some clients
/// copy from RabbitMQ's answers: none).
fn arguments(body: &serde_json::Map<String, Value>) -> Result<FieldTable, ApiError> {
    match body.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(Value::Array(a)) if a.is_empty() => Ok(FieldTable::new()),
        Some(v) => super::definitions::table_from_json(v).map_err(ApiError::bad_request),
    }
}

/// A string field, `default` when absent.
fn text_field<'a>(
    body: &'a serde_json::Map<String, Value>,
    key: &str,
    default: &'a str,
) -> Result<&'a str, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(ApiError::bad_request(format!(
            "{key} must be a string, not {other}"
        ))),
    }
}

/// `PUT /api/exchanges/{vhost}/{name}` with `type` (default `direct`), `durable`,
/// `auto_delete`, `internal`, `arguments`: 201 created, 204 when an equivalent one
/// exists, 400 `inequivalent arg ...` otherwise; the default exchange and a new `amq.*`
/// name `401 Access refused.`. Needs configure on the name.
pub async fn put_exchange(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = target_vhost(&state, &user, &vhost)?;
    let name = exchange_id(&name);
    let body = body_object(&body)?;
    let kind = text_field(&body, "type", "direct")?;
    let (durable, auto_delete, internal) = (
        flag(&body, "durable")?,
        flag(&body, "auto_delete")?,
        flag(&body, "internal")?,
    );
    let arguments = arguments(&body)?;
    if name.is_empty() {
        return Err(ApiError::not_authorised("Access refused."));
    }
    authorize(&state, &user, &vhost, Perm::Configure, name)?;
    // Two requests declaring the same new exchange at once may both answer 201; the
    // exchange is the same either way.
    let existed = vhost.exchange(name).is_some();
    vhost
        .declare_exchange(name, kind, durable, auto_delete, internal, arguments)
        .await
        .map_err(amqp_error)?;
    Ok(created(!existed))
}

/// `DELETE /api/exchanges/{vhost}/{name}` (`?if-unused=true`): 204; 404 when there is
/// none; the default and `amq.*` exchanges `401 Access refused.`.
pub async fn delete_exchange(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let name = exchange_id(&name);
    let if_unused = query_flag(query, "if-unused")?;
    vhost.exchange(name).ok_or_else(ApiError::not_found)?;
    if !name.is_empty() && !name.starts_with("amq.") {
        authorize(&state, &user, &vhost, Perm::Configure, name)?;
    }
    vhost
        .delete_exchange(name, if_unused)
        .await
        .map_err(amqp_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Whether the query sets `key` to `true`.
pub fn query_flag(
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
    key: &str,
) -> Result<bool, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(query.iter().any(|(k, v)| k == key && v == "true"))
}

/// `PUT /api/queues/{vhost}/{name}` with `durable`, `auto_delete`, `arguments`
/// (`x-queue-type` among them): 201 created, 204 when an equivalent one exists, 400
/// with the AMQP explanation otherwise (`inequivalent arg ...`, `invalid arg ...`); an
/// `amq.*` name `401 Access refused.`. Needs configure on the name. RabbitMQ ignores
/// `exclusive` here (the queue would die with the request), and so does this.
pub async fn put_queue(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = target_vhost(&state, &user, &vhost)?;
    let body = body_object(&body)?;
    let mut spec = QueueSpec {
        durable: flag(&body, "durable")?,
        auto_delete: flag(&body, "auto_delete")?,
        exclusive: false,
        arguments: arguments(&body)?,
        name,
    };
    // RabbitMQ's PUT declares as a channel does, so the vhost's default type applies.
    vhost.apply_default_queue_type(&mut spec);
    if spec.name.starts_with("amq.") {
        return Err(ApiError::not_authorised("Access refused."));
    }
    authorize(&state, &user, &vhost, Perm::Configure, &spec.name)?;
    // Connection id 0 is no connection's: an exclusive queue of a client answers 405.
    let (_, was_created) = vhost.declare_queue(spec, 0).await.map_err(amqp_error)?;
    Ok(created(was_created))
}

/// Which kind of object a binding's destination is, as its path segment says.
#[derive(Clone, Copy, PartialEq, Eq)]
enum DestKind {
    Queue,
    Exchange,
}

impl DestKind {
    fn parse(segment: &str) -> Result<DestKind, ApiError> {
        match segment {
            "q" => Ok(DestKind::Queue),
            "e" => Ok(DestKind::Exchange),
            _ => Err(ApiError::not_found()),
        }
    }

    fn json(self) -> &'static str {
        match self {
            DestKind::Queue => "queue",
            DestKind::Exchange => "exchange",
        }
    }
}

/// `/api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
type BindingsPath = Result<Path<(String, String, String, String)>, PathRejection>;
/// The same with `/{props}`, naming one binding.
type BindingPath = Result<Path<(String, String, String, String, String)>, PathRejection>;

/// The bindings of `vhost` from `source` to `destination` (both must exist: 404).
fn bindings_between(
    vhost: &VHost,
    source: &str,
    kind: DestKind,
    destination: &str,
) -> Result<Vec<Value>, ApiError> {
    vhost.exchange(source).ok_or_else(ApiError::not_found)?;
    let exists = match kind {
        DestKind::Queue => vhost.queue(destination).is_some(),
        DestKind::Exchange => vhost.exchange(destination).is_some(),
    };
    if !exists {
        return Err(ApiError::not_found());
    }
    Ok(select(vhost, |b| {
        b["source"] == source
            && b["destination"] == destination
            && b["destination_type"] == kind.json()
    }))
}

/// The vhost's bindings (RabbitMQ's JSON, the default exchange's included) that `keep`
/// accepts.
fn select(vhost: &VHost, keep: impl Fn(&Value) -> bool) -> Vec<Value> {
    super::json::bindings(vhost)
        .into_iter()
        .filter(|b| keep(b))
        .collect()
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}`.
pub async fn bindings_between_get(
    State(state): Api,
    User(user): User,
    path: BindingsPath,
) -> Result<Response, ApiError> {
    let (vhost, source, kind, destination) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let kind = DestKind::parse(&kind)?;
    let list = bindings_between(&vhost, exchange_id(&source), kind, &destination)?;
    Ok(Json(list).into_response())
}

/// `POST /api/bindings/{vhost}/e/{source}/{q|e}/{destination}` with `routing_key` and
/// `arguments`: 201 with `Location` naming the new binding (`{destination}/{props}`,
/// relative, as RabbitMQ writes it). Needs write on the destination and read on the
/// source; durable once both ends are.
pub async fn bind(
    State(state): Api,
    User(user): User,
    path: BindingsPath,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let (vhost, source, kind, destination) = params(path)?;
    let vhost = target_vhost(&state, &user, &vhost)?;
    let kind = DestKind::parse(&kind)?;
    let source = exchange_id(&source);
    let body = body_object(&body)?;
    let key = text_field(&body, "routing_key", "")?.to_string();
    let args = arguments(&body)?;
    let props = super::json::properties_key(&key, &args);
    // The default exchange is refused by the bind itself, before any permission.
    if !source.is_empty() {
        authorize(&state, &user, &vhost, Perm::Write, &destination)?;
        authorize(&state, &user, &vhost, Perm::Read, source)?;
    }
    match kind {
        DestKind::Queue => vhost.bind(&destination, source, &key, args, 0).await,
        DestKind::Exchange => vhost.bind_exchange(&destination, source, &key, args).await,
    }
    .map_err(amqp_error)?;
    let location = format!(
        "{}/{}",
        super::json::path_segment(&destination),
        super::json::location_props(&props)
    );
    let mut response = StatusCode::CREATED.into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(LOCATION, v);
    }
    Ok(response)
}

/// The binding a `{props}` path segment names (RabbitMQ's `properties_key`), or 404.
fn one_binding(
    vhost: &VHost,
    source: &str,
    kind: DestKind,
    destination: &str,
    props: &str,
) -> Result<Value, ApiError> {
    bindings_between(vhost, source, kind, destination)?
        .into_iter()
        .find(|b| {
            b["properties_key"]
                .as_str()
                .is_some_and(|k| super::json::names_binding(k, props))
        })
        .ok_or_else(ApiError::not_found)
}

/// `GET /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`.
pub async fn binding_get(
    State(state): Api,
    User(user): User,
    path: BindingPath,
) -> Result<Response, ApiError> {
    let (vhost, source, kind, destination, props) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let kind = DestKind::parse(&kind)?;
    let b = one_binding(&vhost, exchange_id(&source), kind, &destination, &props)?;
    Ok(Json(b).into_response())
}

/// `DELETE /api/bindings/{vhost}/e/{source}/{q|e}/{destination}/{props}`: 204; 404
/// when there is no such binding. The same permissions as a bind.
pub async fn unbind(
    State(state): Api,
    User(user): User,
    path: BindingPath,
) -> Result<StatusCode, ApiError> {
    let (vhost, source, kind, destination, props) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let kind = DestKind::parse(&kind)?;
    let source = exchange_id(&source);
    one_binding(&vhost, source, kind, &destination, &props)?;
    authorize(&state, &user, &vhost, Perm::Write, &destination)?;
    authorize(&state, &user, &vhost, Perm::Read, source)?;
    // The binding itself, not its JSON: the arguments keep their AMQP types, which
    // the JSON does not tell.
    let wanted = match kind {
        DestKind::Queue => Destination::Queue(destination.as_str().into()),
        DestKind::Exchange => Destination::Exchange(destination.as_str().into()),
    };
    let found = vhost.exchange(source).and_then(|e| {
        e.bindings().into_iter().find(|b| {
            b.destination == wanted
                && super::json::names_binding(
                    &super::json::properties_key(&b.key, &b.arguments),
                    &props,
                )
        })
    });
    let (key, args) = found.map_or_else(
        || (String::new(), FieldTable::new()),
        |b| (b.key, b.arguments),
    );
    match kind {
        DestKind::Queue => vhost.unbind(&destination, source, &key, &args, 0).await,
        DestKind::Exchange => {
            vhost
                .unbind_exchange(&destination, source, &key, &args)
                .await
        }
    }
    .map_err(amqp_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/exchanges/{vhost}/{name}/bindings/{source|destination}`: the bindings
/// that leave the exchange, or that arrive at it.
pub async fn exchange_bindings(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, name, side) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let name = exchange_id(&name);
    vhost.exchange(name).ok_or_else(ApiError::not_found)?;
    let list = match side.as_str() {
        "source" => select(&vhost, |b| b["source"] == name),
        "destination" => select(&vhost, |b| {
            b["destination"] == name && b["destination_type"] == "exchange"
        }),
        _ => return Err(ApiError::not_found()),
    };
    Ok(Json(list).into_response())
}

/// `GET /api/queues/{vhost}/{name}/bindings`: the queue's bindings, the default
/// exchange's first.
pub async fn queue_bindings(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    let list = select(&vhost, |b| {
        b["destination"] == name.as_str() && b["destination_type"] == "queue"
    });
    Ok(Json(list).into_response())
}
