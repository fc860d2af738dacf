//! The management HTTP API: a subset of RabbitMQ's (same paths, same JSON field names,
//! same error shapes), answered from live state with no statistics lag. This module owns
//! the routes, the handlers and authentication; [`json`] the response bodies, [`listener`]
//! the connections (hyper 1, limits, graceful shutdown).
//!
//! | path | methods |
//! |---|---|
//! | `/api/overview` | GET |
//! | `/api/whoami` | GET |
//! | `/api/queues`, `/api/queues/{vhost}` | GET (`?page=` etc., see [`paging`]) |
//! | `/api/queues/{vhost}/{name}` | GET, PUT (declare), DELETE (`?if-empty=true`, `?if-unused=true`) |
//! | `/api/queues/{vhost}/{name}/contents` | DELETE (purge) |
//! | `/api/queues/{vhost}/{name}/bindings` | GET |
//! | `/api/queues/{vhost}/{name}/get` | POST ([`messages`]) |
//! | `/api/exchanges`, `/api/exchanges/{vhost}` | GET (`?page=` etc.) |
//! | `/api/exchanges/{vhost}/{name}` | GET, PUT (declare), DELETE (`?if-unused=true`) |
//! | `/api/exchanges/{vhost}/{name}/bindings/{source or destination}` | GET |
//! | `/api/exchanges/{vhost}/{name}/publish` | POST ([`messages`]) |
//! | `/api/bindings`, `/api/bindings/{vhost}` | GET |
//! | `/api/bindings/{vhost}/e/{source}/{q or e}/{destination}` | GET, POST (201, `Location`) |
//! | `/api/bindings/{vhost}/e/{source}/{q or e}/{destination}/{props}` | GET, DELETE |
//! | `/api/connections` | GET (`?page=` etc.) |
//! | `/api/channels`, `/api/consumers` | GET |
//! | `/api/connections/{name}` | GET, DELETE (closes it: 320, `X-Reason` or "Closed via management plugin") |
//! | `/api/nodes`, `/api/nodes/{node}` | GET |
//! | `/api/aliveness-test/{vhost}` | GET |
//! | `/api/healthchecks/node`, `/api/healthchecks/node/{node}` | GET |
//! | `/api/policies`, `/api/policies/{vhost}` | GET |
//! | `/api/policies/{vhost}/{name}` | GET, PUT (201 created, 204 updated), DELETE |
//! | `/api/operator-policies`, `/api/operator-policies/{vhost}` | GET |
//! | `/api/operator-policies/{vhost}/{name}` | GET, PUT (201, 204), DELETE (administrators) |
//! | `/api/definitions` | GET (export), POST (import; 204) (administrators) |
//! | `/api/users`, `/api/users/{user}/permissions` | GET (administrators) |
//! | `/api/users/{user}` | GET, PUT (201 created, 204 updated), DELETE (administrators) |
//! | `/api/users/bulk-delete` | POST (administrators) |
//! | `/api/permissions`, `/api/vhosts/{vhost}/permissions` | GET (administrators) |
//! | `/api/permissions/{vhost}/{user}` | GET, PUT, DELETE (administrators) |
//! | `/api/vhosts` | GET |
//! | `/api/vhosts/{vhost}` | GET, PUT (201 created, 204 updated), DELETE (administrators) |
//! | `/api/vhosts/{vhost}/connections` | GET (`?page=` etc.) |
//! | `/api/vhosts/{vhost}/channels` | GET |
//! | `/api/vhost-limits`, `/api/vhost-limits/{vhost}` | GET |
//! | `/api/vhost-limits/{vhost}/{max-connections or max-queues}` | PUT, DELETE (204) |
//! | `/api/health/checks/alarms`, `/api/health/checks/local-alarms` | GET (200 or 503) |
//!
//! HEAD is answered wherever GET is. Every request needs HTTP basic auth with one of the
//! broker's users. As in RabbitMQ (cowboy_rest), an unknown path is 404 and a wrong
//! method 405 (with `Allow`) before credentials are checked: the router answers both,
//! and credentials are an extractor ([`User`]) that only matched handlers run.
//!
//! The API stays off the AMQP hot path: it reads the queues' atomic counters and
//! snapshots of the connection registry. What changes a vhost ([`objects`]) goes
//! through the vhost methods its AMQP method uses, with the same permission checks;
//! publish and get ([`messages`]) send the queue task the commands a channel sends.

pub mod definitions;
pub mod json;
pub mod listener;
pub mod messages;
pub mod objects;
pub mod paging;

use std::borrow::Cow;
use std::sync::Arc;

use crate::auth::Access;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::header::{HeaderValue, AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use base64::Engine as _;

use crate::policy::Scope;
use crate::queue::QueueCommand;
use crate::server::BrokerState;
use crate::vhost::VHost;

pub use json::RABBITMQ_COMPAT_VERSION;
pub use listener::serve;

/// An error answer: a status and RabbitMQ's `{"error", "reason"}` body.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    reason: Cow<'static, str>,
    /// A reason that is not a sentence: RabbitMQ's `["not_boolean", "x"]`, shown
    /// instead of `reason`.
    reason_json: Option<serde_json::Value>,
    /// The `error` word when it is not the status's usual one (RabbitMQ answers a
    /// refused login `not_authorized` but a user it will not serve `not_authorised`).
    error: Option<&'static str>,
}

impl ApiError {
    /// `status` with `reason`.
    pub fn new(status: StatusCode, reason: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            status,
            reason: reason.into(),
            reason_json: None,
            error: None,
        }
    }

    /// `status` with RabbitMQ's `error` word `error` (`not_found`,
    /// `page_out_of_range`) instead of the status's usual one.
    pub fn with_error(
        status: StatusCode,
        error: &'static str,
        reason: impl Into<Cow<'static, str>>,
    ) -> ApiError {
        ApiError {
            error: Some(error),
            ..ApiError::new(status, reason)
        }
    }

    /// 400 `bad_request` with a reason that is a JSON value, not a sentence.
    pub fn bad_request_json(reason: serde_json::Value) -> ApiError {
        ApiError {
            reason_json: Some(reason),
            ..ApiError::new(StatusCode::BAD_REQUEST, "")
        }
    }

    /// 401 `not_authorised`: the user logged in, and may not do this.
    pub fn not_authorised(reason: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError {
            error: Some("not_authorised"),
            ..ApiError::new(StatusCode::UNAUTHORIZED, reason)
        }
    }

    /// 404 `{"error":"Object Not Found","reason":"Not Found"}`, as RabbitMQ.
    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "Not Found")
    }

    /// 404 `{"error":"not_found","reason":"vhost_not_found"}`: RabbitMQ's answer to a
    /// change in a vhost that does not exist.
    pub fn vhost_not_found() -> ApiError {
        ApiError {
            error: Some("not_found"),
            ..ApiError::new(StatusCode::NOT_FOUND, "vhost_not_found")
        }
    }

    /// 400 `bad_request`.
    pub fn bad_request(reason: impl Into<Cow<'static, str>>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, reason)
    }

    fn unauthorized(reason: &'static str) -> ApiError {
        ApiError::new(StatusCode::UNAUTHORIZED, reason)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        // RabbitMQ's names for the statuses it answers; the standard phrase otherwise.
        let error = self.error.unwrap_or(match self.status.as_u16() {
            400 => "bad_request",
            401 => "not_authorized",
            404 => "Object Not Found",
            405 => "method_not_allowed",
            413 => "Content Too Large",
            _ => self.status.canonical_reason().unwrap_or("error"),
        });
        let reason = self
            .reason_json
            .unwrap_or_else(|| serde_json::Value::from(self.reason.as_ref()));
        let body = json::ErrorBody {
            error,
            reason: &reason,
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"RabbitMQ Management\""),
            );
        }
        response
    }
}

/// The routes, answering from `state`.
pub fn router(state: Arc<BrokerState>) -> Router {
    Router::new()
        .route("/api/overview", get(overview))
        .route("/api/whoami", get(whoami))
        .route("/api/queues", get(queues))
        .route("/api/queues/{vhost}", get(vhost_queues))
        .route(
            "/api/queues/{vhost}/{name}",
            get(queue).put(objects::put_queue).delete(delete_queue),
        )
        .route("/api/queues/{vhost}/{name}/contents", delete(purge_queue))
        .route(
            "/api/queues/{vhost}/{name}/bindings",
            get(objects::queue_bindings),
        )
        .route("/api/queues/{vhost}/{name}/get", post(messages::get))
        .route("/api/exchanges", get(exchanges))
        .route("/api/exchanges/{vhost}", get(vhost_exchanges))
        .route(
            "/api/exchanges/{vhost}/{name}",
            get(exchange)
                .put(objects::put_exchange)
                .delete(objects::delete_exchange),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/bindings/{side}",
            get(objects::exchange_bindings),
        )
        .route(
            "/api/exchanges/{vhost}/{name}/publish",
            post(messages::publish),
        )
        .route("/api/bindings", get(bindings))
        .route("/api/bindings/{vhost}", get(vhost_bindings))
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
            get(objects::bindings_between_get).post(objects::bind),
        )
        .route(
            "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
            get(objects::binding_get).delete(objects::unbind),
        )
        .route("/api/aliveness-test/{vhost}", get(messages::aliveness_test))
        .route("/api/healthchecks/node", get(node_health))
        .route("/api/healthchecks/node/{node}", get(named_node_health))
        .route("/api/users/bulk-delete", post(delete_users))
        .route("/api/connections", get(connections))
        .route(
            "/api/connections/{name}",
            get(connection).delete(close_connection),
        )
        .route("/api/channels", get(channels))
        .route("/api/consumers", get(consumers))
        .route("/api/nodes", get(nodes))
        .route(
            "/api/definitions",
            get(export_definitions).post(import_definitions),
        )
        .route("/api/users", get(users))
        .route(
            "/api/users/{name}",
            get(user).put(put_user).delete(delete_user),
        )
        .route("/api/users/{name}/permissions", get(user_permissions))
        .route("/api/permissions", get(permissions))
        .route("/api/vhosts", get(vhosts))
        .route(
            "/api/vhosts/{vhost}",
            get(vhost).put(put_vhost).delete(delete_vhost),
        )
        .route("/api/vhosts/{vhost}/permissions", get(vhost_permissions))
        .route("/api/vhosts/{vhost}/connections", get(vhost_connections))
        .route("/api/vhosts/{vhost}/channels", get(vhost_channels))
        .route(
            "/api/permissions/{vhost}/{user}",
            get(permission)
                .put(put_permission)
                .delete(delete_permission),
        )
        .route("/api/vhost-limits", get(vhost_limits))
        .route("/api/vhost-limits/{vhost}", get(one_vhost_limits))
        .route(
            "/api/vhost-limits/{vhost}/{name}",
            axum::routing::put(put_vhost_limit).delete(delete_vhost_limit),
        )
        .route("/api/policies", get(policies))
        .route("/api/policies/{vhost}", get(vhost_policies))
        .route(
            "/api/policies/{vhost}/{name}",
            get(policy).put(put_policy).delete(delete_policy),
        )
        .route("/api/operator-policies", get(operator_policies))
        .route(
            "/api/operator-policies/{vhost}",
            get(vhost_operator_policies),
        )
        .route(
            "/api/operator-policies/{vhost}/{name}",
            get(operator_policy)
                .put(put_operator_policy)
                .delete(delete_operator_policy),
        )
        .route("/api/nodes/{node}", get(node))
        .route(
            "/api/nodes/{node}/vm-memory-high-watermark",
            axum::routing::put(put_memory_high_watermark),
        )
        .route(
            "/api/nodes/{node}/disk-free-limit",
            axum::routing::put(put_disk_free_limit),
        )
        .route("/api/health/checks/alarms", get(alarms_check))
        .route("/api/health/checks/local-alarms", get(local_alarms_check))
        .fallback(|| async { ApiError::not_found() })
        .with_state(state)
}

/// A management user: a valid `Authorization: Basic` header of a user with a management
/// tag (`management`, `policymaker`, `monitoring`, `administrator`). As an extractor it
/// runs only in a matched handler, so 404 and 405 come before 401.
#[derive(Debug, Clone)]
pub struct User(pub String);

/// An administrator (`Not administrator user` otherwise).
#[derive(Debug, Clone)]
pub struct Admin(pub String);

/// A monitoring user or an administrator (`Not monitor user` otherwise).
#[derive(Debug, Clone)]
pub struct Monitor(pub String);

/// A policymaker or an administrator (`User not authorised to access object`
/// otherwise); a policymaker also needs a permission on the vhost it changes
/// ([`vhost_for`]).
#[derive(Debug, Clone)]
pub struct PolicyMaker(pub String);

/// Standard base64, padding optional (clients differ).
const BASIC: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

impl FromRequestParts<Arc<BrokerState>> for User {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<BrokerState>,
    ) -> Result<User, ApiError> {
        authenticate(state, parts).map(|u| User(u.name.clone()))
    }
}

/// The extractor `$name`: a management user whose tags allow at least `$level`,
/// refused with RabbitMQ's `401 not_authorised` and `$refusal` otherwise.
macro_rules! at_least {
    ($name:ident, $level:expr, $refusal:literal) => {
        impl FromRequestParts<Arc<BrokerState>> for $name {
            type Rejection = ApiError;

            async fn from_request_parts(
                parts: &mut Parts,
                state: &Arc<BrokerState>,
            ) -> Result<$name, ApiError> {
                let u = authenticate(state, parts)?;
                if u.access() < $level {
                    return Err(ApiError::not_authorised($refusal));
                }
                Ok($name(u.name.clone()))
            }
        }
    };
}

at_least!(Admin, Access::Administrator, "Not administrator user");
at_least!(Monitor, Access::Monitoring, "Not monitor user");

impl FromRequestParts<Arc<BrokerState>> for PolicyMaker {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<BrokerState>,
    ) -> Result<PolicyMaker, ApiError> {
        let u = authenticate(state, parts)?;
        let policymaker = u.tags.iter().any(|t| t == "policymaker");
        if u.access() < Access::Administrator && !policymaker {
            return Err(ApiError::not_authorised(
                "User not authorised to access object",
            ));
        }
        Ok(PolicyMaker(u.name.clone()))
    }
}

/// The management user the request's credentials name, with RabbitMQ's refusals: no
/// credentials 401 (with `WWW-Authenticate`), a failed login `Login failed`, `guest` from
/// another machine `User can only log in via localhost`, a user without a management tag
/// `Not management user`.
fn authenticate(state: &BrokerState, parts: &Parts) -> Result<Arc<crate::auth::User>, ApiError> {
    let header = parts.headers.get(AUTHORIZATION);
    let Some(header) = header.and_then(|h| h.to_str().ok()) else {
        return Err(ApiError::unauthorized("Not_Authorized"));
    };
    let creds = header
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, b64)| BASIC.decode(b64.trim()).ok())
        .and_then(|raw| String::from_utf8(raw).ok());
    let Some(creds) = creds else {
        return Err(ApiError::unauthorized("Not_Authorized"));
    };
    let (name, pass) = creds.split_once(':').unwrap_or((creds.as_str(), ""));
    let Some(user) = state.users.login(name, pass) else {
        return Err(ApiError::unauthorized("Login failed"));
    };
    let remote = parts
        .extensions
        .get::<listener::Peer>()
        .is_some_and(|p| !p.0.ip().to_canonical().is_loopback());
    if name == "guest" && remote && !state.config.allow_guest_remote {
        return Err(ApiError::not_authorised(
            "User can only log in via localhost",
        ));
    }
    if user.access() < Access::Management {
        return Err(ApiError::not_authorised("Not management user"));
    }
    Ok(user)
}

/// Path parameters; the listener has already refused malformed percent-encoding, so a
/// rejection here is unexpected, and answered 400 all the same.
fn params<T>(p: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|Path(t)| t)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

/// The vhost a path names, or 404.
fn find_vhost(state: &BrokerState, name: &str) -> Result<Arc<VHost>, ApiError> {
    state.vhosts.get(name).ok_or_else(ApiError::not_found)
}

/// Whether user `user` sees what vhost `vhost` holds (queues, policies, limits): an
/// administrator sees every vhost, another user those it has a permission on, as in
/// RabbitMQ.
fn sees(state: &BrokerState, user: &str, vhost: &str) -> bool {
    state
        .users
        .get(user)
        .is_some_and(|u| u.access() >= Access::Administrator)
        || state.users.permission(vhost, user).is_some()
}

/// Whether user `user` is shown vhost `vhost` in the vhost listing: administrators and
/// monitoring users every vhost, other users those they have a permission on.
fn lists(state: &BrokerState, user: &str, vhost: &str) -> bool {
    state
        .users
        .get(user)
        .is_some_and(|u| u.access() >= Access::Monitoring)
        || state.users.permission(vhost, user).is_some()
}

/// The vhost a path names, for user `user`: 404 if there is none, RabbitMQ's `401 User
/// not authorised to access virtual host` if the user may not see into it.
fn vhost_for(state: &BrokerState, user: &str, name: &str) -> Result<Arc<VHost>, ApiError> {
    let vhost = find_vhost(state, name)?;
    if !sees(state, user, name) {
        return Err(ApiError::not_authorised(
            "User not authorised to access virtual host",
        ));
    }
    Ok(vhost)
}

/// One vhost as `GET /api/vhosts` shows it.
fn vhost_json(v: &VHost) -> serde_json::Value {
    let meta = v.metadata();
    let (mut ready, mut unacked) = (0u64, 0u64);
    for q in v.queues() {
        let s = &q.info().stats;
        ready += s.ready.load(std::sync::atomic::Ordering::Relaxed);
        unacked += s.unacked.load(std::sync::atomic::Ordering::Relaxed);
    }
    serde_json::json!({
        "name": v.name(),
        "description": meta.description,
        "tags": meta.tags,
        "default_queue_type": meta.default_queue_type.as_deref().unwrap_or("undefined"),
        "metadata": meta.to_json(),
        "tracing": v.is_tracing(),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "cluster_state": { json::node_name(): "running" },
    })
}

/// `GET /api/vhosts`: the vhosts the user is shown ([`lists`]), by name.
async fn vhosts(
    State(state): Api,
    User(user): User,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let query = list_query(query)?;
    let list: Vec<serde_json::Value> = state
        .vhosts
        .all()
        .iter()
        .filter(|v| lists(&state, &user, v.name()))
        .map(|v| vhost_json(v))
        .collect();
    paging::list(&query, list, |v| v["name"].as_str().unwrap_or_default())
}

async fn vhost(
    State(state): Api,
    User(user): User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = params(name)?;
    let v = find_vhost(&state, &name)?;
    if !lists(&state, &user, &name) {
        return Err(ApiError::not_authorised(
            "User not authorised to access virtual host",
        ));
    }
    Ok(Json(vhost_json(&v)).into_response())
}

/// `PUT /api/vhosts/{vhost}` with optional `description`, `tags`, `defaultqueuetype`
/// and `tracing`: 201 when created
/// (the requesting user is then given `.*` on it, as RabbitMQ does), 204 when updated;
/// on disk first.
async fn put_vhost(
    State(state): Api,
    Admin(user): Admin,
    name: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let name = params(name)?;
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::bad_request("invalid vhost name"));
    }
    let value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Object(Default::default())
    } else {
        json_body(&body)?
    };
    // Firehose tracing (`trace.rs`): RabbitMQ's `parse_bool`.
    let tracing = match value.get("tracing") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Bool(b)) => Some(*b),
        Some(serde_json::Value::String(s)) if s == "true" => Some(true),
        Some(serde_json::Value::String(s)) if s == "false" => Some(false),
        Some(_) => return Err(ApiError::bad_request("not_boolean")),
    };
    let mut metadata = crate::vhosts::VHostMetadata::from_json(&value);
    // RabbitMQ 3.10's management API reads `defaultqueuetype`; later versions (and its
    // metadata) spell it `default_queue_type`: both are taken. Only a new vhost takes
    // it; an unknown type fails the creation with RabbitMQ's 500.
    metadata.default_queue_type = None;
    if let Some(t) = value
        .get("defaultqueuetype")
        .or_else(|| value.get("default_queue_type"))
        .filter(|t| !t.is_null() && state.vhosts.get(&name).is_none())
    {
        match t.as_str() {
            Some(t) if crate::vhosts::QUEUE_TYPES.contains(&t) => {
                metadata.default_queue_type = Some(t.to_string());
            }
            _ => {
                return Err(ApiError {
                    error: Some("Error occured while adding vhost"),
                    ..ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "invalid_queue_type")
                })
            }
        }
    }
    let created = state
        .vhosts
        .put(&name, metadata)
        .await
        .map_err(store_error)?;
    if let (Some(on), Some(v)) = (tracing, state.vhosts.get(&name)) {
        v.set_tracing(on);
    }
    if !created {
        return Ok(StatusCode::NO_CONTENT);
    }
    let all = crate::auth::Permission::new(".*", ".*", ".*").map_err(ApiError::bad_request)?;
    state
        .users
        .save_permission(&name, &user, all)
        .await
        .map_err(store_error)?;
    Ok(StatusCode::CREATED)
}

/// `DELETE /api/vhosts/{vhost}`: everything in it removed, 204, and then (once the 204
/// is written, as RabbitMQ closes them from an event after answering) its connections
/// closed with `320 CONNECTION_FORCED - vhost 'V' is deleted`; 404 if there is none.
async fn delete_vhost(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = params(name)?;
    if !state.delete_vhost(&name).await.map_err(store_error)? {
        return Err(ApiError::not_found());
    }
    let mut answer = StatusCode::NO_CONTENT.into_response();
    answer
        .extensions_mut()
        .insert(listener::AfterAnswer::new(move || {
            state.close_vhost_connections(&name)
        }));
    Ok(answer)
}

type Api = State<Arc<BrokerState>>;

/// Longest object name the broker stores (an AMQP short string).
const MAX_NAME: usize = 255;

/// The connection named `name`, if `user` may see it: administrators and monitoring
/// users see every connection, other users their own (RabbitMQ's 401 `User not
/// authorised to access object` otherwise).
fn connection_for(
    state: &BrokerState,
    user: &str,
    name: &str,
) -> Result<Arc<crate::registry::ConnectionInfo>, ApiError> {
    let conn = state
        .connections
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.value().clone())
        .ok_or_else(ApiError::not_found)?;
    let monitor = state
        .users
        .get(user)
        .is_some_and(|u| u.access() >= Access::Monitoring);
    if !monitor && conn.user != user {
        return Err(ApiError::not_authorised(
            "User not authorised to access object",
        ));
    }
    Ok(conn)
}

/// `GET /api/connections/{name}`.
async fn connection(
    State(state): Api,
    User(user): User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let conn = connection_for(&state, &user, &params(name)?)?;
    Ok(Json(json::connection(&conn)).into_response())
}

/// `DELETE /api/connections/{name}`: the connection is closed with `320
/// CONNECTION_FORCED` and the `X-Reason` header's text, or RabbitMQ's "Closed via
/// management plugin". A management user may close only its own connections.
async fn close_connection(
    State(state): Api,
    User(user): User,
    name: Result<Path<String>, PathRejection>,
    headers: axum::http::HeaderMap,
) -> Result<StatusCode, ApiError> {
    let name = params(name)?;
    let conn = state
        .connections
        .iter()
        .find(|c| c.name == name)
        .map(|c| c.value().clone())
        .ok_or_else(ApiError::not_found)?;
    let admin = state
        .users
        .get(&user)
        .is_some_and(|u| u.access() >= Access::Administrator);
    if !admin && conn.user != user {
        return Err(ApiError::not_authorised(
            "User not authorised to access object",
        ));
    }
    let reason = headers
        .get("x-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("Closed via management plugin");
    conn.close_forced(reason);
    Ok(StatusCode::NO_CONTENT)
}

async fn export_definitions(State(state): Api, _: Admin) -> Response {
    Json(definitions::export(&state)).into_response()
}

/// `POST /api/definitions`: 204, or 400 naming the entry that stopped it (nothing
/// imported then).
async fn import_definitions(
    State(state): Api,
    _: Admin,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let doc = json_body(&body)?;
    definitions::import(&state, &doc)
        .await
        .map_err(ApiError::bad_request)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn users(State(state): Api, _: Admin) -> Response {
    let list: Vec<serde_json::Value> = state.users.all().iter().map(|u| u.to_json()).collect();
    Json(list).into_response()
}

async fn user(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = params(name)?;
    let u = state.users.get(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(u.to_json()).into_response())
}

/// `PUT /api/users/{name}` with `password` or `password_hash` and `tags` (a list or a
/// comma-separated string): 201 when created, 204 when updated; on disk first.
async fn put_user(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let name = params(name)?;
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(ApiError::bad_request("invalid user name"));
    }
    let value = json_body(&body)?;
    let user = crate::auth::User::from_json(&name, &value).map_err(ApiError::bad_request)?;
    Ok(created(
        state.users.save_user(user).await.map_err(store_error)?,
    ))
}

async fn delete_user(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let name = params(name)?;
    if !state.users.remove_user(&name).await.map_err(store_error)? {
        return Err(ApiError::not_found());
    }
    close_connections_of(&state, &name);
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/users/bulk-delete` with `{"users": [names]}`: 204; the names that are no
/// user's are passed over, as in RabbitMQ.
async fn delete_users(
    State(state): Api,
    _: Admin,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let body = json_body(&body)?;
    let Some(names) = body.get("users").and_then(|u| u.as_array()) else {
        return Err(ApiError::bad_request("[{key_missing,users}]"));
    };
    for name in names.iter().filter_map(|n| n.as_str()) {
        if state.users.remove_user(name).await.map_err(store_error)? {
            close_connections_of(&state, name);
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A deleted user's open connections go, as in RabbitMQ.
fn close_connections_of(state: &BrokerState, name: &str) {
    for c in state.connections.iter() {
        if c.user == name {
            c.close_forced(format!("user '{name}' is deleted"));
        }
    }
}

fn permission_list(state: &BrokerState, keep: impl Fn(&str, &str) -> bool) -> Response {
    let list: Vec<serde_json::Value> = state
        .users
        .permissions()
        .iter()
        .filter(|(v, u, _)| keep(v, u))
        .map(|(v, u, p)| p.to_json(v, u))
        .collect();
    Json(list).into_response()
}

async fn permissions(State(state): Api, _: Admin) -> Response {
    permission_list(&state, |_, _| true)
}

async fn user_permissions(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = params(name)?;
    if state.users.get(&name).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(permission_list(&state, |_, u| u == name))
}

async fn vhost_permissions(
    State(state): Api,
    _: Admin,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let vhost = params(vhost)?;
    find_vhost(&state, &vhost)?;
    Ok(permission_list(&state, |v, _| v == vhost))
}

async fn permission(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, user) = params(path)?;
    let p = state
        .users
        .permission(&vhost, &user)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(p.to_json(&vhost, &user)).into_response())
}

/// `PUT /api/permissions/{vhost}/{user}` with `configure`, `write`, `read`: 201 / 204;
/// a missing user or vhost is RabbitMQ's `400 vhost_or_user_not_found`.
async fn put_permission(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let (vhost, user) = params(path)?;
    let value = json_body(&body)?;
    if state.vhosts.get(&vhost).is_none() || state.users.get(&user).is_none() {
        return Err(ApiError::bad_request("vhost_or_user_not_found"));
    }
    let perm = crate::auth::Permission::from_json(&value).map_err(ApiError::bad_request)?;
    let is_new = state
        .users
        .save_permission(&vhost, &user, perm)
        .await
        .map_err(store_error)?;
    Ok(created(is_new))
}

async fn delete_permission(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, user) = params(path)?;
    match state.users.remove_permission(&vhost, &user).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found()),
        Err(e) => Err(store_error(e)),
    }
}

/// `[{"vhost":"/","value":{...}}]` for each of `vhosts` with limits.
fn limits_listing(vhosts: &[Arc<VHost>]) -> Response {
    let list: Vec<serde_json::Value> = vhosts
        .iter()
        .filter_map(|v| {
            let limits = v.limits().to_json();
            (!limits.is_empty()).then(|| serde_json::json!({"vhost": v.name(), "value": limits}))
        })
        .collect();
    Json(list).into_response()
}

/// The vhosts whose contents `user` sees ([`sees`]).
fn visible_vhosts(state: &BrokerState, user: &str) -> Vec<Arc<VHost>> {
    state
        .vhosts
        .all()
        .into_iter()
        .filter(|v| sees(state, user, v.name()))
        .collect()
}

async fn vhost_limits(State(state): Api, User(user): User) -> Response {
    limits_listing(&visible_vhosts(&state, &user))
}

async fn one_vhost_limits(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let v = vhost_for(&state, &user, &params(vhost)?)?;
    Ok(limits_listing(&[v]))
}

/// `PUT /api/vhost-limits/{vhost}/{name}` with `{"value": N}`: 204; a negative value
/// removes the limit, as in RabbitMQ. A missing vhost is RabbitMQ's `404
/// vhost_not_found`, before the body is read.
async fn put_vhost_limit(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = state
        .vhosts
        .get(&vhost)
        .ok_or_else(ApiError::vhost_not_found)?;
    let body = json_body(&body)?;
    let value = body
        .get("value")
        .ok_or_else(|| ApiError::bad_request("[{key_missing,value}]"))?;
    let mut limits = vhost.limits();
    let Some(slot) = limits.slot(&name) else {
        let shown = crate::policy::term(value);
        return Err(ApiError::bad_request(format!(
            "Validation failed\n\nUnrecognised terms [{{<<\"{name}\">>,{shown}}}] in limits\n"
        )));
    };
    let n = value.as_i64().ok_or_else(|| {
        let shown = crate::policy::term(value);
        ApiError::bad_request(format!(
            "Validation failed\n\n{name} should be a number, actually was {shown}\n"
        ))
    })?;
    *slot = u64::try_from(n).ok();
    vhost.set_limits(limits).await.map_err(store_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn delete_vhost_limit(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = find_vhost(&state, &vhost)?;
    let mut limits = vhost.limits();
    if let Some(slot) = limits.slot(&name) {
        *slot = None;
        vhost.set_limits(limits).await.map_err(store_error)?;
    }
    Ok(StatusCode::NO_CONTENT)
}

fn policy_listing(vhosts: &[Arc<VHost>], scope: Scope) -> Response {
    let list: Vec<_> = vhosts
        .iter()
        .flat_map(|v| {
            v.policy_set(scope)
                .all()
                .iter()
                .map(|p| p.to_json(v.name()))
                .collect::<Vec<_>>()
        })
        .collect();
    Json(list).into_response()
}

async fn policies(State(state): Api, User(user): User) -> Response {
    policy_listing(&visible_vhosts(&state, &user), Scope::Policy)
}

async fn vhost_policies(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let v = vhost_for(&state, &user, &params(vhost)?)?;
    Ok(policy_listing(&[v], Scope::Policy))
}

async fn policy(
    State(state): Api,
    PolicyMaker(user): PolicyMaker,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    show_policy(&vhost, Scope::Policy, &name)
}

/// A request body as JSON, or RabbitMQ's `400 not_json`.
fn json_body(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    serde_json::from_slice(body).map_err(|_| ApiError::bad_request("not_json"))
}

/// 201 when `created`, 204 when an equivalent one was there (replaced, or left as it was).
fn created(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::NO_CONTENT
    }
}

/// A failed metadata write: the change was not made.
fn store_error(e: std::io::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("could not write the change to disk: {e}"),
    )
}

/// `PUT /api/policies/{vhost}/{name}`: 201 created, 204 replaced. A missing vhost is
/// RabbitMQ's `404 vhost_not_found` for any policymaker, before the body is read (its
/// permission check lets a missing vhost through to that answer).
async fn put_policy(
    State(state): Api,
    PolicyMaker(user): PolicyMaker,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    if state.vhosts.get(&vhost).is_none() {
        return Err(ApiError::vhost_not_found());
    }
    let vhost = vhost_for(&state, &user, &vhost)?;
    store_policy(&vhost, Scope::Policy, &name, &body).await
}

async fn delete_policy(
    State(state): Api,
    PolicyMaker(user): PolicyMaker,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    remove_policy(&vhost, Scope::Policy, &name).await
}

/// `GET /api/operator-policies`: any management user, over the vhosts it sees.
async fn operator_policies(State(state): Api, User(user): User) -> Response {
    policy_listing(&visible_vhosts(&state, &user), Scope::Operator)
}

async fn vhost_operator_policies(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let v = vhost_for(&state, &user, &params(vhost)?)?;
    Ok(policy_listing(&[v], Scope::Operator))
}

/// `GET /api/operator-policies/{vhost}/{name}`: administrators only, as every change
/// to them (RabbitMQ's `is_authorized_admin`).
async fn operator_policy(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = find_vhost(&state, &vhost)?;
    show_policy(&vhost, Scope::Operator, &name)
}

/// `PUT /api/operator-policies/{vhost}/{name}`: 201 created, 204 replaced; a key other
/// than the numeric limits is refused with RabbitMQ's 400 and nothing is stored.
async fn put_operator_policy(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = state
        .vhosts
        .get(&vhost)
        .ok_or_else(ApiError::vhost_not_found)?;
    store_policy(&vhost, Scope::Operator, &name, &body).await
}

async fn delete_operator_policy(
    State(state): Api,
    _: Admin,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = find_vhost(&state, &vhost)?;
    remove_policy(&vhost, Scope::Operator, &name).await
}

// The policy and operator-policy handlers above differ only in who may call them
// (`PolicyMaker` on a vhost it sees, `Admin` on any) and how a missing vhost is
// reported; once that is settled, both scopes are served by the same three steps.

/// One policy of `scope` as JSON, or 404.
fn show_policy(vhost: &VHost, scope: Scope, name: &str) -> Result<Response, ApiError> {
    let p = vhost
        .policy_set(scope)
        .get(name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(p.to_json(vhost.name())).into_response())
}

/// Adds or replaces a policy of `scope` from a request body: 201 created, 204 replaced.
async fn store_policy(
    vhost: &VHost,
    scope: Scope,
    name: &str,
    body: &[u8],
) -> Result<StatusCode, ApiError> {
    if name.len() > MAX_NAME {
        return Err(ApiError::bad_request("name_too_long"));
    }
    let value = json_body(body)?;
    let p = crate::policy::Policy::parse_in(scope, name, &value).map_err(ApiError::bad_request)?;
    let is_new = vhost.put_policy(scope, p).await.map_err(store_error)?;
    Ok(created(is_new))
}

/// Removes a policy of `scope`: 204, or 404 when there is none of that name.
async fn remove_policy(vhost: &VHost, scope: Scope, name: &str) -> Result<StatusCode, ApiError> {
    match vhost.delete_policy(scope, name).await {
        Ok(true) => Ok(StatusCode::NO_CONTENT),
        Ok(false) => Err(ApiError::not_found()),
        Err(e) => Err(store_error(e)),
    }
}

async fn overview(State(state): Api, User(user): User) -> Response {
    Json(json::overview(&state, |v| sees(&state, &user, v))).into_response()
}

async fn nodes(State(state): Api, _: Monitor) -> Response {
    Json(json::nodes(&state)).into_response()
}

async fn node(
    State(state): Api,
    _: Monitor,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = params(name)?;
    let node = json::nodes(&state)
        .into_iter()
        .find(|n| n.name() == name)
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(node).into_response())
}

/// `name` is this node, or 404.
fn this_node(
    state: &BrokerState,
    name: Result<Path<String>, PathRejection>,
) -> Result<(), ApiError> {
    let name = params(name)?;
    if json::nodes(state).iter().any(|n| n.name() == name) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// A size in a JSON body: a number of octets, or a string with a unit (`"2GB"`).
fn size_value(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n}: expected a whole number of octets")),
        serde_json::Value::String(s) => crate::config::parse_size(s),
        other => Err(format!(
            "{other}: expected a size such as 2GB or 1073741824"
        )),
    }
}

/// A fraction in a JSON body, within `range`.
fn fraction_value(v: &serde_json::Value) -> Option<f64> {
    match v {
        serde_json::Value::Number(n) => n.as_f64(),
        serde_json::Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A node's alarm limit in a request body: an amount (`{amount_key: SIZE}`) or a
/// fraction (`{fraction_key: F}`), for this node.
enum NodeLimit {
    Octets(u64),
    Fraction(f64),
}

fn node_limit(
    state: &BrokerState,
    name: Result<Path<String>, PathRejection>,
    body: &[u8],
    amount_key: &str,
    fraction_key: &str,
) -> Result<NodeLimit, ApiError> {
    this_node(state, name)?;
    let body = json_body(body)?;
    match (body.get(fraction_key), body.get(amount_key)) {
        (Some(f), None) => fraction_value(f)
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(NodeLimit::Fraction)
            .ok_or_else(|| ApiError::bad_request(format!("{fraction_key}: expected a number"))),
        (None, Some(a)) => size_value(a)
            .map(NodeLimit::Octets)
            .map_err(ApiError::bad_request),
        _ => Err(ApiError::bad_request(format!(
            "expected {{\"{fraction_key}\": F}} or {{\"{amount_key}\": SIZE}}"
        ))),
    }
}

/// `rabbitmqctl set_vm_memory_high_watermark`, over the API (a minimq addition: RabbitMQ's
/// API has no such endpoint): `{"fraction": 0.4}` of the memory the broker may count on,
/// or `{"absolute": "2GB"}`. Checked at once against the last reading; a restart goes
/// back to `--memory-high-watermark`, as in RabbitMQ.
async fn put_memory_high_watermark(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let limit = match node_limit(&state, name, &body, "absolute", "fraction")? {
        NodeLimit::Octets(n) => n,
        NodeLimit::Fraction(f) if f <= 1.0 => {
            crate::alarm::memory_limit(crate::config::Watermark::Fraction(f))
        }
        NodeLimit::Fraction(_) => {
            return Err(ApiError::bad_request(
                "The threshold should be a fraction between 0.0 and 1.0",
            ))
        }
    };
    state.alarms.set_memory_limit(limit);
    tracing::info!(limit, "memory high watermark set");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `rabbitmqctl set_disk_free_limit`, over the API (a minimq addition): `{"limit":
/// "50MB"}` or `{"mem_relative": 1.5}` (times the memory the broker may count on).
/// Checked at once against the last reading; a restart goes back to `--disk-free-limit`.
async fn put_disk_free_limit(
    State(state): Api,
    _: Admin,
    name: Result<Path<String>, PathRejection>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let limit = match node_limit(&state, name, &body, "limit", "mem_relative")? {
        NodeLimit::Octets(n) => n,
        NodeLimit::Fraction(r) => (crate::alarm::available_memory().unwrap_or(0) as f64 * r) as u64,
    };
    state.alarms.set_disk_free_limit(limit);
    tracing::info!(limit, "disk free limit set");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// RabbitMQ answers a failed health check with 503 and the alarms.
fn health_answer((ok, body): (bool, json::AlarmCheck)) -> Response {
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn alarms_check(State(state): Api, _: User) -> Response {
    health_answer(json::alarm_check(
        &state,
        "There are alarms in effect in the cluster",
    ))
}

async fn local_alarms_check(State(state): Api, _: User) -> Response {
    health_answer(json::alarm_check(
        &state,
        "There are alarms in effect on the node",
    ))
}

/// `GET /api/healthchecks/node`: this node is running (`{"status":"ok"}`), as
/// RabbitMQ 3.10's node check answers.
async fn node_health(_: User) -> Response {
    Json(serde_json::json!({"status": "ok"})).into_response()
}

/// `GET /api/healthchecks/node/{node}`: the same for this node by name; 404 for another.
async fn named_node_health(
    State(state): Api,
    _: User,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    this_node(&state, name)?;
    Ok(node_health(User(String::new())).await)
}

async fn whoami(State(state): Api, User(name): User) -> Response {
    let tags = state
        .users
        .get(&name)
        .map(|u| u.tags.clone())
        .unwrap_or_default();
    Json(json::Whoami { name, tags }).into_response()
}

/// A list endpoint's query (`?page=`, `name`, ...; see [`paging`]).
type ListQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

fn list_query(query: ListQuery) -> Result<Vec<(String, String)>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::bad_request(e.body_text()))
}

fn queue_listing(
    state: &BrokerState,
    query: ListQuery,
    visible: impl Fn(&str) -> bool,
) -> Result<Response, ApiError> {
    let query = list_query(query)?;
    let handles = json::queues(state, visible);
    let views: Vec<json::Queue<'_>> = handles
        .iter()
        .map(|q| json::queue(state, q, false))
        .collect();
    paging::list(&query, views, |q| q.name())
}

async fn queues(
    State(state): Api,
    User(user): User,
    query: ListQuery,
) -> Result<Response, ApiError> {
    queue_listing(&state, query, |v| sees(&state, &user, v))
}

async fn vhost_queues(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let vhost = vhost_for(&state, &user, &params(vhost)?)?;
    queue_listing(&state, query, |v| v == vhost.name())
}

async fn queue(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let q = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    Ok(Json(json::queue(&state, &q, true)).into_response())
}

/// `DELETE /api/queues/{vhost}/{name}` (`?if-empty=true`, `?if-unused=true`): 204; 404
/// when there is none. Needs configure on the name.
async fn delete_queue(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let Query(query) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let flag = |p: &str| query.iter().any(|(k, v)| k == p && v == "true");
    let q = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    objects::authorize(&state, &user, &vhost, crate::auth::Perm::Configure, &name)?;
    // The API may delete a queue exclusive to a connection: act as its owner.
    let as_conn = q.info().exclusive_owner.unwrap_or(0);
    vhost
        .delete_queue(&name, as_conn, flag("if-unused"), flag("if-empty"))
        .await
        .map_err(objects::amqp_error)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn purge_queue(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    let q = vhost.queue(&name).ok_or_else(ApiError::not_found)?;
    objects::authorize(&state, &user, &vhost, crate::auth::Perm::Read, &name)?;
    let (reply, rx) = tokio::sync::oneshot::channel();
    if !q.send(QueueCommand::Purge { reply }).await {
        return Err(ApiError::not_found());
    }
    match rx.await {
        Ok(_) => Ok(StatusCode::NO_CONTENT),
        Err(_) => Err(ApiError::not_found()),
    }
}

fn exchange_listing(vhosts: &[Arc<VHost>], query: ListQuery) -> Result<Response, ApiError> {
    let query = list_query(query)?;
    let list: Vec<serde_json::Value> = vhosts.iter().flat_map(|v| json::exchanges(v)).collect();
    paging::list(&query, list, |e| e["name"].as_str().unwrap_or_default())
}

async fn exchanges(
    State(state): Api,
    User(user): User,
    query: ListQuery,
) -> Result<Response, ApiError> {
    exchange_listing(&visible_vhosts(&state, &user), query)
}

async fn vhost_exchanges(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let vhost = vhost_for(&state, &user, &params(vhost)?)?;
    exchange_listing(&[vhost], query)
}

async fn exchange(
    State(state): Api,
    User(user): User,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (vhost, name) = params(path)?;
    let vhost = vhost_for(&state, &user, &vhost)?;
    // RabbitMQ names the default exchange `amq.default` in paths.
    let name = if name == "amq.default" { "" } else { &name };
    let e = vhost.exchange(name).ok_or_else(ApiError::not_found)?;
    let mut view = json::exchange(vhost.name(), &e);
    if let Some(m) = view.as_object_mut() {
        m.insert("incoming".into(), serde_json::json!([]));
        m.insert("outgoing".into(), serde_json::json!([]));
    }
    Ok(Json(view).into_response())
}

async fn bindings(State(state): Api, User(user): User) -> Response {
    let list: Vec<serde_json::Value> = visible_vhosts(&state, &user)
        .iter()
        .flat_map(|v| json::bindings(v))
        .collect();
    Json(list).into_response()
}

async fn vhost_bindings(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let vhost = vhost_for(&state, &user, &params(vhost)?)?;
    Ok(Json(json::bindings(&vhost)).into_response())
}

async fn connections(State(state): Api, _: User, query: ListQuery) -> Result<Response, ApiError> {
    let query = list_query(query)?;
    let list = json::connection_list(&state);
    let views: Vec<json::Connection<'_>> = list.iter().map(|c| json::connection(c)).collect();
    paging::list(&query, views, |c| c.name())
}

async fn vhost_connections(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
    query: ListQuery,
) -> Result<Response, ApiError> {
    let query = list_query(query)?;
    let vhost = vhost_for(&state, &user, &params(vhost)?)?;
    let list: Vec<_> = json::connection_list(&state)
        .into_iter()
        .filter(|c| c.vhost == vhost.name())
        .collect();
    let views: Vec<json::Connection<'_>> = list.iter().map(|c| json::connection(c)).collect();
    paging::list(&query, views, |c| c.name())
}

async fn vhost_channels(
    State(state): Api,
    User(user): User,
    vhost: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let vhost = vhost_for(&state, &user, &params(vhost)?)?;
    let list: Vec<json::Channel> = json::channels(&state)
        .into_iter()
        .filter(|c| c.vhost == vhost.name())
        .collect();
    Ok(Json(list).into_response())
}

async fn channels(State(state): Api, _: User, query: ListQuery) -> Result<Response, ApiError> {
    let query = list_query(query)?;
    paging::list(&query, json::channels(&state), |c| c.name.as_str())
}

async fn consumers(State(state): Api, _: User) -> Response {
    Json(json::consumers(&state)).into_response()
}
