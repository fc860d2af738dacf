//! RabbitMQ's definitions file: export (`GET /api/definitions`) and import (`POST
//! /api/definitions`, `--definitions FILE` at start-up) of users, vhosts, permissions,
//! policies, queues, exchanges and bindings, in RabbitMQ 3.10's JSON.
//!
//! An import is checked whole before anything is applied: a malformed or unsupported
//! entry is an error that names it (`queues[2] ('orders'): ...`) and imports nothing.
//! Then users, permissions, policies, exchanges, queues and bindings are applied in that
//! order, each durably as the management API would (an object that exists already is left
//! as it is, as RabbitMQ's import does for queues and exchanges).

use serde_json::{json, Map, Value};

use crate::auth::{Permission, User};
use crate::exchange::{Destination, ExchangeKind};
use crate::policy::Policy;
use crate::queue::QueueArgs;
use crate::server::BrokerState;
use crate::vhost::QueueSpec;
use minimq_protocol::{FieldTable, FieldValue};

use super::json::Table;

/// The only vhost.
const VHOST: &str = "/";

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
    let policies: Vec<Value> = state
        .vhost
        .policies
        .all()
        .iter()
        .map(|p| p.to_json(VHOST))
        .collect();
    let mut queues = Vec::new();
    for q in state.vhost.queues() {
        let info = q.info();
        if info.exclusive_owner.is_some() {
            continue; // dies with its connection: nothing to define
        }
        queues.push(json!({
            "name": q.name().as_ref(),
            "vhost": VHOST,
            "durable": info.durable,
            "auto_delete": info.auto_delete,
            "arguments": table_json(&info.arguments),
        }));
    }
    let mut exchanges = Vec::new();
    let mut bindings = Vec::new();
    for e in state.vhost.exchanges() {
        if e.name.is_empty() {
            continue; // the default exchange's bindings are implicit
        }
        if !e.name.starts_with("amq.") {
            exchanges.push(json!({
                "name": e.name.as_ref(),
                "vhost": VHOST,
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
                "vhost": VHOST,
                "destination": destination,
                "destination_type": kind,
                "routing_key": b.key,
                "arguments": table_json(&b.arguments),
            }));
        }
    }
    json!({
        "rabbit_version": super::RABBITMQ_COMPAT_VERSION,
        "rabbitmq_version": super::RABBITMQ_COMPAT_VERSION,
        "product_name": "minimq",
        "product_version": env!("CARGO_PKG_VERSION"),
        "users": users,
        "vhosts": [{"name": VHOST}],
        "permissions": permissions,
        "topic_permissions": [],
        "parameters": [],
        "global_parameters": [],
        "policies": policies,
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    })
}

/// What an import will apply, checked.
struct Plan {
    users: Vec<User>,
    permissions: Vec<(String, Permission)>,
    policies: Vec<Policy>,
    exchanges: Vec<(String, String, bool, bool, bool, FieldTable)>,
    queues: Vec<QueueSpec>,
    bindings: Vec<(String, String, bool, String, FieldTable)>,
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

/// The vhost an entry names (`vhost`, `/` when absent): only `/` exists here.
fn check_vhost(entry: &Value) -> Result<(), String> {
    match entry.get("vhost").and_then(Value::as_str) {
        None | Some(VHOST) => Ok(()),
        Some(v) => Err(format!("vhost '{v}': minimq has only the vhost '/'")),
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
        users: Vec::new(),
        permissions: Vec::new(),
        policies: Vec::new(),
        exchanges: Vec::new(),
        queues: Vec::new(),
        bindings: Vec::new(),
    };
    // Each entry's errors name it: `section[i] ('name'): why`.
    let at =
        |section: &str, i: usize, name: &str, e: String| format!("{section}[{i}] ('{name}'): {e}");
    for (i, v) in entries(doc, "vhosts")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("vhosts", i, "", e))?;
        if name != VHOST {
            return Err(at(
                "vhosts",
                i,
                name,
                "minimq has only the vhost '/'".into(),
            ));
        }
    }
    for (i, v) in entries(doc, "users")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("users", i, "", e))?;
        short_name(name).map_err(|e| at("users", i, name, e))?;
        p.users
            .push(User::from_json(name, v).map_err(|e| at("users", i, name, e))?);
    }
    for (i, v) in entries(doc, "permissions")?.iter().enumerate() {
        let user = text(v, "user").map_err(|e| at("permissions", i, "", e))?;
        check_vhost(v).map_err(|e| at("permissions", i, user, e))?;
        let perm = Permission::from_json(v).map_err(|e| at("permissions", i, user, e))?;
        p.permissions.push((user.to_string(), perm));
    }
    for (i, v) in entries(doc, "policies")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("policies", i, "", e))?;
        check_vhost(v).map_err(|e| at("policies", i, name, e))?;
        short_name(name).map_err(|e| at("policies", i, name, e))?;
        p.policies.push(
            Policy::parse(name, v).map_err(|e| at("policies", i, name, e.trim().to_string()))?,
        );
    }
    for (i, v) in entries(doc, "exchanges")?.iter().enumerate() {
        let name = text(v, "name").map_err(|e| at("exchanges", i, "", e))?;
        let e = |why: String| at("exchanges", i, name, why);
        check_vhost(v).map_err(e)?;
        short_name(name).map_err(e)?;
        let kind = text(v, "type").map_err(e)?;
        ExchangeKind::parse(kind).map_err(|x| e(x.text))?;
        if name.is_empty() || name.starts_with("amq.") {
            continue; // built in
        }
        p.exchanges.push((
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
        check_vhost(v).map_err(e)?;
        short_name(name).map_err(e)?;
        if name.is_empty() {
            return Err(e("a queue needs a name".into()));
        }
        let args = arguments(v).map_err(e)?;
        QueueArgs::parse(name, &args).map_err(|x| e(x.text))?;
        p.queues.push(QueueSpec {
            name: name.to_string(),
            durable: flag(v, "durable").map_err(e)?,
            exclusive: false,
            auto_delete: flag(v, "auto_delete").map_err(e)?,
            arguments: args,
        });
    }
    for (i, v) in entries(doc, "bindings")?.iter().enumerate() {
        let source = text(v, "source").map_err(|e| at("bindings", i, "", e))?;
        let e = |why: String| at("bindings", i, source, why);
        check_vhost(v).map_err(e)?;
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
    for (user, _) in &plan.permissions {
        if state.users.get(user).is_none() && !plan.users.iter().any(|u| &u.name == user) {
            return Err(format!("permissions for user '{user}': no such user"));
        }
    }
    let io = |what: &str, e: std::io::Error| format!("{what}: could not write to disk: {e}");
    for u in plan.users {
        let name = u.name.clone();
        state
            .users
            .save_user(u)
            .await
            .map_err(|e| io(&format!("user '{name}'"), e))?;
    }
    for (user, perm) in plan.permissions {
        state
            .users
            .save_permission(VHOST, &user, perm)
            .await
            .map_err(|e| io(&format!("permission of '{user}'"), e))?;
    }
    for policy in plan.policies {
        let name = policy.name.clone();
        state
            .vhost
            .put_policy(policy, VHOST)
            .await
            .map_err(|e| io(&format!("policy '{name}'"), e))?;
    }
    for (name, kind, durable, auto_delete, internal, args) in plan.exchanges {
        if state.vhost.exchange(&name).is_some() {
            continue;
        }
        state
            .vhost
            .declare_exchange(&name, &kind, durable, auto_delete, internal, args)
            .await
            .map_err(|e| format!("exchange '{name}': {}", e.text))?;
    }
    for spec in plan.queues {
        if state.vhost.queue(&spec.name).is_some() {
            continue;
        }
        let name = spec.name.clone();
        state
            .vhost
            .declare_queue(spec, 0)
            .await
            .map_err(|e| format!("queue '{name}': {}", e.text))?;
    }
    for (source, destination, to_exchange, key, args) in plan.bindings {
        let done = if to_exchange {
            state
                .vhost
                .bind_exchange(&destination, &source, &key, args)
                .await
        } else {
            state.vhost.bind(&destination, &source, &key, args, 0).await
        };
        done.map_err(|e| format!("binding of '{source}' to '{destination}': {}", e.text))?;
    }
    Ok(())
}
