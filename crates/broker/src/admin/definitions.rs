//! RabbitMQ's definitions file: export (`GET /api/definitions`) and import (`POST
//! /api/definitions`, `--definitions FILE` at start-up) of users, vhosts, permissions,
//! policies, queues, exchanges and bindings, in RabbitMQ 3.10's JSON. Vhost limits and
//! operator policies travel as RabbitMQ keeps them, runtime `parameters` (components
//! `vhost-limits` and `operator_policy`).
//!
//! An import is checked whole before anything is applied: a malformed or unsupported
//! entry, or one naming a vhost that neither exists nor is in the file, is an error that
//! names it (`queues[2] ('orders'): ...`) and imports nothing. Then vhosts, users,
//! permissions, policies, exchanges, queues and bindings are applied in that order, each
//! durably as the management API would (an object that exists already is left
//! as it is, as RabbitMQ's import does for queues and exchanges).

use serde_json::{json, Map, Value};

use crate::auth::{Permission, User};
use crate::exchange::{Destination, ExchangeKind};
use crate::policy::{Policy, Scope};
use crate::queue::{QueueArgs, QueueRef};
use crate::server::BrokerState;
use crate::vhost::{QueueSpec, VHost, VHostLimits};
use crate::vhosts::VHostMetadata;
use minimq_protocol::{FieldTable, FieldValue};

use super::json::Table;

/// A field table from the JSON the management API shows: integers as signed 64-bit
/// (`l`), other numbers as doubles, strings as long strings, objects as tables, `null` as
/// void.
pub fn table_from_json(v: &Value) -> Result<FieldTable, String> {
    let Value::Object(map) = v else {
        return Err(format!("arguments must be an object, not {v}"));
    };
    let mut t = FieldTable::new();
    for (k, v) in map {
        if k.len() > 255 {
            return Err(format!("argument name '{k}' is longer than 255 octets"));
        }
        t.insert(k.as_str(), field_from_json(v)?);
    }
    Ok(t)
}

fn field_from_json(v: &Value) -> Result<FieldValue, String> {
    Ok(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => FieldValue::I64(i),
            None => FieldValue::F64(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => FieldValue::LongString(s.clone().into_bytes().into()),
        Value::Array(items) => FieldValue::Array(
            items
                .iter()
                .map(field_from_json)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(_) => FieldValue::Table(table_from_json(v)?),
    })
}

fn table_json(t: &FieldTable) -> Value {
    serde_json::to_value(Table(Some(t))).unwrap_or_else(|_| json!({}))
}

/// Everything, as RabbitMQ 3.10 exports it.
pub fn export(state: &BrokerState) -> Value {
    let users: Vec<Value> = state.users.all().iter().map(|u| u.to_json()).collect();
    let permissions: Vec<Value> = state
        .users
        .permissions()
        .iter()
        .map(|(v, u, p)| p.to_json(v, u))
        .collect();
    let vhosts = state.vhosts.all();
    let mut policies = Vec::new();
    let mut queues = Vec::new();
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    let mut parameters = Vec::new();
    for v in &vhosts {
        export_vhost(v, &mut policies, &mut queues, &mut exchanges, &mut bindings);
        // RabbitMQ keeps a vhost's limits as its runtime parameter `vhost-limits`/`limits`.
        let limits = v.limits();
        if limits != VHostLimits::default() {
            parameters.push(json!({
                "value": limits.to_json(),
                "vhost": v.name(),
                "component": LIMITS_COMPONENT,
                "name": LIMITS_NAME,
            }));
        }
        for p in v.operator_policies.all() {
            let mut value = p.to_json(v.name());
            if let Value::Object(m) = &mut value {
                m.remove("vhost");
                m.remove("name");
            }
            parameters.push(json!({
                "value": value,
                "vhost": v.name(),
                "component": Scope::Operator.component(),
                "name": p.name,
            }));
        }
    }
    // RabbitMQ 3.10 exports a vhost's name only (its import still reads a description
    // and tags, here too).
    let vhosts: Vec<Value> = vhosts.iter().map(|v| json!({"name": v.name()})).collect();
    json!({
        "rabbit_version": super::RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": super::RABBITMQ_COMPAT_VERSION,
        "product_name": "minimq",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": vhosts,
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": parameters,
        "global_parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// One vhost's policies, queues, exchanges and bindings, as RabbitMQ 3.10 exports them.
fn export_vhost(
    vhost: &VHost,
    policies: &mut Vec<Value>,
    queues: &mut Vec<Value>,
    exchanges: &mut Vec<Value>,
    bindings: &mut Vec<Value>,
) {
    let name = vhost.name();
    policies.extend(vhost.policies.all().iter().map(|p| p.to_json(name)));
    let mut list = vhost.queues();
    list.sort_by(|a, b| a.name().cmp(b.name()));
    for q in list {
        let info = q.info();
        if info.exclusive_owner.is_some() {
            continue; // dies with its connection: nothing to define
        }
        queues.push(json!({
            "name": q.name().as_ref(),
            "vhost": name,
            "durable": info.durable,
            "auto_delete": info.auto_delete,
            "arguments": table_json(&info.arguments),
        }));
    }
    for e in vhost.exchanges() {
        if e.name.is_empty() {
            continue; // the default exchange's bindings are implicit
        }
        if !e.name.starts_with("amq.") {
            exchanges.push(json!({
                "name": e.name.as_ref(),
                "vhost": name,
                "type": e.kind.name(),
                "durable": e.durable,
                "auto_delete": e.auto_delete,
                "internal": e.internal,
                "arguments": table_json(&e.arguments),
            }));
        }
        for b in e.bindings() {
            let (destination, kind) = match &b.destination {
                Destination::Queue(q) => (q.as_ref(), "queue"),
                Destination::Exchange(x) => (x.as_ref(), "exchange"),
            };
            bindings.push(json!({
                "source": e.name.as_ref(),
                "vhost": name,
                "destination": destination,
                "destination_type": kind,
                "routing_key": b.key,
                "arguments": table_json(&b.arguments),
            }));
        }
    }
}

/// What an import will apply, checked.
struct Plan {
    /// Each with its `tracing`, when given.
    vhosts: Vec<(String, VHostMetadata, Option<bool>)>,
    users: Vec<User>,
    /// Each with its vhost, as every list below.
    permissions: Vec<(String, String, Permission)>,
    policies: Vec<(String, Policy)>,
    operator_policies: Vec<(String, Policy)>,
    exchanges: Vec<(String, String, String, bool, bool, bool, FieldTable)>,
    queues: Vec<(String, QueueSpec)>,
    bindings: Vec<(String, String, String, bool, String, FieldTable)>,
    limits: Vec<(String, VHostLimits)>,
}

/// The runtime parameter RabbitMQ keeps a vhost's limits in: component and name.
const LIMITS_COMPONENT: &str = "vhost-limits";
const LIMITS_NAME: &str = "limits";

/// What a `parameters` entry holds.
enum Parameter {
    Limits(VHostLimits),
    OperatorPolicy(Box<Policy>),
}

/// A `parameters` entry. Of RabbitMQ's runtime parameters minimq knows the vhost limits
/// and operator policies; any other component (federation, shovel: plugins) is refused
/// with RabbitMQ's text.
fn parameter(entry: &Value) -> Result<Parameter, String> {
    let component = text(entry, "component")?;
    if component == Scope::Operator.component() {
        let name = text(entry, "name")?;
        short_name(name)?;
        let value = entry.get("value").unwrap_or(&Value::Null);
        return Policy::parse_in(Scope::Operator, name, value)
            .map(|p| Parameter::OperatorPolicy(Box::new(p)))
            .map_err(|e| e.trim().to_string());
    }
    if component != LIMITS_COMPONENT {
        return Err(format!("component {component} not found"));
    }
    let Some(Value::Object(values)) = entry.get("value") else {
        return Err("'value' must be a JSON object".into());
    };
    let mut limits = VHostLimits::default();
    for (name, value) in values {
        let slot = limits
            .slot(name)
            .ok_or_else(|| format!("Unrecognised terms [{name}] in limits"))?;
        let n = value
            .as_i64()
            .ok_or_else(|| format!("'{name}' must be an integer, not {value}"))?;
        // A negative limit is no limit, as with the API.
        *slot = u64::try_from(n).ok();
    }
    Ok(Parameter::Limits(limits))
}

fn entries<'a>(doc: &'a Map<String, Value>, key: &str) -> Result<&'a [Value], String> {
    match doc.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(other) => Err(format!("{key}: expected a list, not {other}")),
    }
}

fn text<'a>(entry: &'a Value, key: &str) -> Result<&'a str, String> {
    entry
        .get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("'{key}' missing or not a string"))
}

fn flag(entry: &Value, key: &str) -> Result<bool, String> {
    match entry.get(key) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(format!("'{key}' must be true or false, not {other}")),
    }
}

fn arguments(entry: &Value) -> Result<FieldTable, String> {
    match entry.get("arguments") {
        None | Some(Value::Null) => Ok(FieldTable::new()),
        Some(v) => table_from_json(v),
    }
}

/// The vhost an entry names (`vhost`, `/` when absent).
fn vhost_of(entry: &Value) -> Result<String, String> {
    match entry.get("vhost") {
        None | Some(Value::Null) => Ok(crate::store::DEFAULT_VHOST.to_string()),
        Some(Value::String(v)) => Ok(v.clone()),
        Some(other) => Err(format!("'vhost' must be a string, not {other}")),
    }
}

fn short_name(name: &str) -> Result<(), String> {
    if name.len() > 255 {
        Err("name longer than 255 octets".into())
    } else {
        Ok(())
    }
}

fn plan(doc: &Value) -> Result<Plan, String> {
    let Value::Object(doc) = doc else {
        return Err("definitions must be a JSON object".into());
    };
    let mut p = Plan {
        vhosts: Vec::new(),
        users: Vec::new(),
        permissions: Vec::new(),
        policies: Vec::new(),
        operator_policies: Vec::new(),
        exchanges: Vec::new(),
        queues: Vec::new(),
        bindings: Vec::new(),
        limits: Vec::new(),
    };
    // Each entry's errors name it: `section[i] ('name'): why`.
    let at =
        |section: &str, i: usize, name: &str, e: String| format!("{section}[{i}] ('{name}'): {e}");
    for (i, v) in entries(doc, "vhosts")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("vhosts", i, "", e))?;
        if name.is_empty() {
            return Err(at("vhosts", i, name, "a vhost needs a name".into()));
        }
        short_name(name).map_err(|e| at("vhosts", i, name, e))?;
        // RabbitMQ 3.10 exports the description and tags under `metadata`; earlier
        // versions and hand-written files put them beside the name.
        let meta = v.get("metadata").filter(|m| m.is_object()).unwrap_or(v);
        let meta = VHostMetadata::from_json(meta);
        if let Some(t) = &meta.default_queue_type {
            if !crate::vhosts::QUEUE_TYPES.contains(&t.as_str()) {
                return Err(at("vhosts", i, name, format!("invalid_queue_type {t}")));
            }
        }
        let tracing = match v.get("tracing") {
            None | Some(Value::Null) => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(at(
                    "vhosts",
                    i,
                    name,
                    format!("'tracing' must be true or false, not {other}"),
                ))
            }
        };
        p.vhosts.push((name.to_string(), meta, tracing));
    }
    for (i, v) in entries(doc, "users")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("users", i, "", e))?;
        short_name(name).map_err(|e| at("users", i, name, e))?;
        p.users
            .push(User::from_json(name, v).map_err(|e| at("users", i, name, e))?);
    }
    for (i, v) in entries(doc, "permissions")?.iter().enumerate() {
        let user = text(v, "user").map_err(|e| at("permissions", i, "", e))?;
        let vhost = vhost_of(v).map_err(|e| at("permissions", i, user, e))?;
        let perm = Permission::from_json(v).map_err(|e| at("permissions", i, user, e))?;
        p.permissions.push((vhost, user.to_string(), perm));
    }
    for (i, v) in entries(doc, "policies")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("policies", i, "", e))?;
        let vhost = vhost_of(v).map_err(|e| at("policies", i, name, e))?;
        short_name(name).map_err(|e| at("policies", i, name, e))?;
        p.policies.push((
            vhost,
            Policy::parse(name, v).map_err(|e| at("policies", i, name, e.trim().to_string()))?,
        ));
    }
    for (i, v) in entries(doc, "parameters")?.iter().enumerate() {
        let name = v.get("component").and_then(Value::as_str).unwrap_or("");
        let vhost = vhost_of(v).map_err(|e| at("parameters", i, name, e))?;
        match parameter(v).map_err(|e| at("parameters", i, name, e))? {
            Parameter::Limits(limits) => p.limits.push((vhost, limits)),
            Parameter::OperatorPolicy(policy) => p.operator_policies.push((vhost, *policy)),
        }
    }
    for (i, v) in entries(doc, "exchanges")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("exchanges", i, "", e))?;
        let e = |why: String| at("exchanges", i, name, why);
        let vhost = vhost_of(v).map_err(e)?;
        short_name(name).map_err(e)?;
        let kind = text(v, "type").map_err(e)?;
        ExchangeKind::parse(kind).map_err(|x| e(x.text))?;
        if name.is_empty() || name.starts_with("amq.") {
            continue; // built in
        }
        p.exchanges.push((
            vhost,
            name.to_string(),
            kind.to_string(),
            flag(v, "durable").map_err(e)?,
            flag(v, "auto_delete").map_err(e)?,
            flag(v, "internal").map_err(e)?,
            arguments(v).map_err(e)?,
        ));
    }
    for (i, v) in entries(doc, "queues")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("queues", i, "", e))?;
        let e = |why: String| at("queues", i, name, why);
        let vhost = vhost_of(v).map_err(e)?;
        short_name(name).map_err(e)?;
        if name.is_empty() {
            return Err(e("a queue needs a name".into()));
        }
        let args = arguments(v).map_err(e)?;
        QueueArgs::parse(QueueRef::new(name, &vhost), &args).map_err(|x| e(x.text))?;
        let spec = QueueSpec {
            name: name.to_string(),
            durable: flag(v, "durable").map_err(e)?,
            exclusive: false,
            auto_delete: flag(v, "auto_delete").map_err(e)?,
            arguments: args,
        };
        p.queues.push((vhost, spec));
    }
    for (i, v) in entries(doc, "bindings")?.iter().enumerate() {
        let source = text(v, "source").map_err(|e| at("bindings", i, "", e))?;
        let e = |why: String| at("bindings", i, source, why);
        let vhost = vhost_of(v).map_err(e)?;
        let destination = text(v, "destination").map_err(e)?;
        let to_exchange = match text(v, "destination_type").map_err(e)? {
            "queue" => false,
            "exchange" => true,
            other => {
                return Err(e(format!(
                    "destination_type '{other}' is not queue or exchange"
                )))
            }
        };
        let key = v.get("routing_key").and_then(Value::as_str).unwrap_or("");
        if source.is_empty() {
            continue; // the default exchange binds every queue already
        }
        p.bindings.push((
            vhost,
            source.to_string(),
            destination.to_string(),
            to_exchange,
            key.to_string(),
            arguments(v).map_err(e)?,
        ));
    }
    Ok(p)
}

/// Imports `doc` into the broker: checked whole first (nothing is applied when an entry
/// is wrong), then applied durably. Answers the first problem, naming its entry.
pub async fn import(state: &BrokerState, doc: &Value) -> Result<(), String> {
    let plan = plan(doc)?;
    // Permissions must name users that exist after the import.
    for (_, user, _) in &plan.permissions {
        if state.users.get(user).is_none() && !plan.users.iter().any(|u| &u.name == user) {
            return Err(format!("permissions for user '{user}': no such user"));
        }
    }
    // Every entry's vhost must exist after the import.
    let named = plan
        .permissions
        .iter()
        .map(|(v, ..)| v)
        .chain(plan.policies.iter().map(|(v, _)| v))
        .chain(plan.operator_policies.iter().map(|(v, _)| v))
        .chain(plan.exchanges.iter().map(|(v, ..)| v))
        .chain(plan.queues.iter().map(|(v, _)| v))
        .chain(plan.bindings.iter().map(|(v, ..)| v))
        .chain(plan.limits.iter().map(|(v, _)| v));
    for v in named {
        if state.vhosts.get(v).is_none() && !plan.vhosts.iter().any(|(n, ..)| n == v) {
            return Err(format!("vhost '{v}': no such vhost"));
        }
    }
    let io = |what: &str, e: std::io::Error| format!("{what}: could not write to disk: {e}");
    for (name, meta, tracing) in plan.vhosts {
        state
            .vhosts
            .put(&name, meta)
            .await
            .map_err(|e| io(&format!("vhost '{name}'"), e))?;
        if let (Some(on), Some(v)) = (tracing, state.vhosts.get(&name)) {
            v.set_tracing(on);
        }
    }
    // Checked above: every vhost named exists now.
    let vhost = |name: &str| {
        state
            .vhosts
            .get(name)
            .ok_or_else(|| format!("vhost '{name}': no such vhost"))
    };
    for u in plan.users {
        let name = u.name.clone();
        state
            .users
            .save_user(u)
            .await
            .map_err(|e| io(&format!("user '{name}'"), e))?;
    }
    for (v, user, perm) in plan.permissions {
        state
            .users
            .save_permission(&v, &user, perm)
            .await
            .map_err(|e| io(&format!("permission of '{user}'"), e))?;
    }
    let policies = plan.policies.into_iter().map(|p| (Scope::Policy, p));
    let operator = plan
        .operator_policies
        .into_iter()
        .map(|p| (Scope::Operator, p));
    for (scope, (v, policy)) in policies.chain(operator) {
        let name = policy.name.clone();
        vhost(&v)?
            .put_policy(scope, policy)
            .await
            .map_err(|e| io(&format!("{} '{name}'", scope.component()), e))?;
    }
    for (v, limits) in plan.limits {
        vhost(&v)?
            .set_limits(limits)
            .await
            .map_err(|e| io(&format!("limits of vhost '{v}'"), e))?;
    }
    for (v, name, kind, durable, auto_delete, internal, args) in plan.exchanges {
        let vhost = vhost(&v)?;
        if vhost.exchange(&name).is_some() {
            continue;
        }
        vhost
            .declare_exchange(&name, &kind, durable, auto_delete, internal, args)
            .await
            .map_err(|e| format!("exchange '{name}': {}", e.text))?;
    }
    for (v, spec) in plan.queues {
        let vhost = vhost(&v)?;
        if vhost.queue(&spec.name).is_some() {
            continue;
        }
        let name = spec.name.clone();
        vhost
            .declare_queue(spec, 0)
            .await
            .map_err(|e| format!("queue '{name}': {}", e.text))?;
    }
    for (v, source, destination, to_exchange, key, args) in plan.bindings {
        let vhost = vhost(&v)?;
        let done = if to_exchange {
            vhost.bind_exchange(&destination, &source, &key, args).await
        } else {
            vhost.bind(&destination, &source, &key, args, 0).await
        };
        done.map_err(|e| format!("binding of '{source}' to '{destination}': {}", e.text))?;
    }
    Ok(())
}
