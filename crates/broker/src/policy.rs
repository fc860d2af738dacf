//! Policies: RabbitMQ's named, prioritised sets of queue and exchange settings chosen by
//! a regular expression on the object's name.
//!
//! This module owns what a policy is and how one is chosen and merged: parsing and
//! validating a `PUT /api/policies/{vhost}/{name}` body with RabbitMQ's error texts
//! ([`Policy::parse`]), the per-vhost set ([`Policies`]: the highest-priority match wins),
//! and RabbitMQ's precedence when a queue argument and a policy both set a limit
//! ([`QueueSettings::apply_to`]: the lower number for the numeric limits, the argument for
//! everything else). Storing policies and applying them to live queues belong to the vhost.
//!
//! Operator policies ([`Scope::Operator`]) are the same objects under their own name
//! space, limited to the numeric queue limits an operator caps
//! ([`OPERATOR_KEYS`]). A queue may have one of each; where both set a key the lower
//! value wins ([`QueueSettings::capped_by`], [`merged_definition`]), as RabbitMQ's
//! `rabbit_policy:merge_operator_definitions` does.
//!
//! Patterns are Rust `regex` syntax (RabbitMQ uses PCRE): the same for everything a policy
//! pattern usually holds (anchors, classes, alternation, repetition); look-around and
//! back-references are refused as invalid patterns.

use std::sync::{Arc, RwLock};

use minimq_protocol::FieldTable;
use regex::Regex;
use serde_json::{Map, Value};

use crate::queue::{DeadLetterStrategy, Overflow, QueueArgs};

/// What kind of object a policy applies to (`apply-to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyTo {
    /// `queues`.
    Queues,
    /// `exchanges`.
    Exchanges,
    /// `all` (the default).
    All,
}

impl ApplyTo {
    /// RabbitMQ's spelling.
    pub fn name(self) -> &'static str {
        match self {
            ApplyTo::Queues => "queues",
            ApplyTo::Exchanges => "exchanges",
            ApplyTo::All => "all",
        }
    }

    fn covers(self, kind: Kind) -> bool {
        matches!(
            (self, kind),
            (ApplyTo::All, _)
                | (ApplyTo::Queues, Kind::Queue)
                | (ApplyTo::Exchanges, Kind::Exchange)
        )
    }
}

/// Which of a vhost's two sets of policies: RabbitMQ's policies (set by policymakers) or
/// its operator policies (set by administrators, capping the numeric limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `/api/policies`.
    Policy,
    /// `/api/operator-policies`.
    Operator,
}

impl Scope {
    /// The store component (RabbitMQ's runtime parameter component) it is kept under.
    pub fn component(self) -> &'static str {
        match self {
            Scope::Policy => "policy",
            Scope::Operator => "operator_policy",
        }
    }
}

/// The keys RabbitMQ 3.10 accepts in an operator policy (`rabbit_policies`' operator
/// policy validators); anything else is refused as not recognised.
pub const OPERATOR_KEYS: &[&str] = &[
    "expires",
    "message-ttl",
    "max-length",
    "max-length-bytes",
    "max-in-memory-length",
    "max-in-memory-bytes",
    "delivery-limit",
];

/// The kind of object a policy is looked up for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A queue.
    Queue,
    /// An exchange.
    Exchange,
}

/// The queue settings a policy definition carries, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueSettings {
    /// `message-ttl`, milliseconds.
    pub message_ttl: Option<u64>,
    /// `max-length`.
    pub max_length: Option<u64>,
    /// `max-length-bytes`.
    pub max_length_bytes: Option<u64>,
    /// `overflow`.
    pub overflow: Option<Overflow>,
    /// `dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `dead-letter-strategy` (quorum queues).
    pub dead_letter_strategy: Option<DeadLetterStrategy>,
    /// `expires`, milliseconds.
    pub expires: Option<u64>,
    /// `delivery-limit`.
    pub delivery_limit: Option<u64>,
    /// `consumer-timeout`, milliseconds.
    pub consumer_timeout: Option<u64>,
}

/// The lower of an argument and a policy value, or whichever is set.
fn lower(arg: Option<u64>, policy: Option<u64>) -> Option<u64> {
    match (arg, policy) {
        (Some(a), Some(p)) => Some(a.min(p)),
        (a, p) => a.or(p),
    }
}

/// The definition a queue shows as `effective_policy_definition` when a policy and an
/// operator policy both apply: every key of either, and where both set one the lower
/// number (RabbitMQ's `merge_operator_definitions`; operator keys are all numeric limits).
pub fn merged_definition(policy: &Map<String, Value>, op: &Map<String, Value>) -> Value {
    let mut out = policy.clone();
    for (key, op_value) in op {
        let merged = match (out.get(key).and_then(Value::as_u64), op_value.as_u64()) {
            (Some(p), Some(o)) if p < o => Value::from(p),
            _ => op_value.clone(),
        };
        out.insert(key.clone(), merged);
    }
    Value::Object(out)
}

impl QueueSettings {
    /// These settings with an operator policy's applied over them: for each numeric limit
    /// the lower of the two (RabbitMQ's `merge_policy_value`); the operator's keys are
    /// numeric only, so the rest stays as it was.
    pub fn capped_by(&self, op: &QueueSettings) -> QueueSettings {
        QueueSettings {
            message_ttl: lower(self.message_ttl, op.message_ttl),
            max_length: lower(self.max_length, op.max_length),
            max_length_bytes: lower(self.max_length_bytes, op.max_length_bytes),
            expires: lower(self.expires, op.expires),
            delivery_limit: lower(self.delivery_limit, op.delivery_limit),
            ..self.clone()
        }
    }

    /// `args` (parsed from the declare's `table`) with this policy's settings applied by
    /// RabbitMQ's rule: for `message-ttl`, `max-length`, `max-length-bytes`, `expires` and
    /// `delivery-limit` the lower of the two wins; for `overflow`,
    /// `dead-letter-exchange`, `dead-letter-routing-key` and `dead-letter-strategy` the
    /// argument wins when the declare gave one.
    pub fn apply_to(&self, args: &QueueArgs, table: &FieldTable) -> QueueArgs {
        let mut out = args.clone();
        out.message_ttl = lower(args.message_ttl, self.message_ttl);
        out.max_length = lower(args.max_length, self.max_length);
        out.max_length_bytes = lower(args.max_length_bytes, self.max_length_bytes);
        out.expires = lower(args.expires, self.expires);
        out.delivery_limit = lower(args.delivery_limit, self.delivery_limit);
        out.consumer_timeout = lower(args.consumer_timeout, self.consumer_timeout);
        if table.get("x-overflow").is_none() {
            if let Some(o) = self.overflow {
                out.overflow = o;
            }
        }
        if table.get("x-dead-letter-exchange").is_none() {
            if let Some(x) = &self.dead_letter_exchange {
                out.dead_letter_exchange = Some(x.as_str().into());
            }
        }
        if table.get("x-dead-letter-routing-key").is_none() {
            if let Some(k) = &self.dead_letter_routing_key {
                out.dead_letter_routing_key = Some(k.as_str().into());
            }
        }
        if table.get("x-dead-letter-strategy").is_none() {
            if let Some(d) = self.dead_letter_strategy {
                out.dead_letter_strategy = d;
            }
        }
        out.with_type_fallbacks()
    }
}

/// One policy.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Its name.
    pub name: String,
    /// The pattern as given.
    pub pattern: String,
    regex: Regex,
    /// What it applies to.
    pub apply_to: ApplyTo,
    /// Higher wins.
    pub priority: i64,
    /// The definition as given (answered back as it came, as RabbitMQ does).
    pub definition: Map<String, Value>,
    /// The queue settings in it.
    pub queue: QueueSettings,
    /// `alternate-exchange`, for exchanges.
    pub alternate_exchange: Option<String>,
}

/// Keys RabbitMQ 3.10 knows that minimq accepts and ignores (they concern features it
/// does not have: mirroring, lazy mode, quorum/stream tuning, federation, shovels).
const IGNORED_KEYS: &[&str] = &[
    "queue-mode",
    "queue-version",
    "ha-mode",
    "ha-params",
    "ha-sync-mode",
    "ha-promote-on-shutdown",
    "ha-promote-on-failure",
    "ha-sync-batch-size",
    "queue-master-locator",
    "queue-leader-locator",
    "initial-cluster-size",
    "max-age",
    "stream-max-segment-size-bytes",
    "federation-upstream",
    "federation-upstream-set",
];

/// RabbitMQ's prefix of every policy validation error.
fn failed(detail: impl std::fmt::Display) -> String {
    format!("Validation failed\n\n{detail}\n")
}

/// A JSON value as RabbitMQ's validation messages print an Erlang term: a string as
/// `<<"x">>` (policies, vhost limits).
pub fn term(v: &Value) -> String {
    match v {
        Value::String(s) => format!("<<\"{s}\">>"),
        other => other.to_string(),
    }
}

/// A whole number of at least `min` (RabbitMQ takes integers only: `1.5` is refused).
fn non_negative(v: &Value, what: &str, min: u64) -> Result<u64, String> {
    match v.as_u64() {
        Some(n) if n >= min => Ok(n),
        _ => Err(failed(format!("{} is not a valid {what}", term(v)))),
    }
}

fn string(v: &Value, what: &str) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| failed(format!("{} is not a valid {what}", term(v))))
}

impl Policy {
    /// Parses a `PUT /api/policies/{vhost}/{name}` body (`pattern`, `definition`,
    /// optional `apply-to` and `priority`), answering RabbitMQ's texts for what it
    /// refuses. `max-priority` is not a policy key in RabbitMQ either.
    pub fn parse(name: &str, body: &Value) -> Result<Policy, String> {
        Policy::parse_in(Scope::Policy, name, body)
    }

    /// Parses a policy body for `scope`: an operator policy takes only
    /// [`OPERATOR_KEYS`], with the same validation and texts.
    pub fn parse_in(scope: Scope, name: &str, body: &Value) -> Result<Policy, String> {
        let obj = body.as_object().ok_or_else(|| "not_json".to_string())?;
        let pattern = match obj.get("pattern") {
            Some(Value::String(p)) => p.clone(),
            Some(other) => {
                return Err(failed(format!(
                    "pattern should be a string, actually was {}",
                    term(other)
                )))
            }
            None => return Err("[{key_missing,pattern}]".to_string()),
        };
        let definition = match obj.get("definition") {
            Some(Value::Object(d)) => d.clone(),
            Some(other) => {
                return Err(failed(format!(
                    "definition should be a JSON object, actually was {}",
                    term(other)
                )))
            }
            None => return Err("[{key_missing,definition}]".to_string()),
        };
        let apply_to = match obj.get("apply-to") {
            None => ApplyTo::All,
            Some(Value::String(s)) if s == "all" => ApplyTo::All,
            Some(Value::String(s)) if s == "queues" => ApplyTo::Queues,
            Some(Value::String(s)) if s == "exchanges" => ApplyTo::Exchanges,
            Some(other) => {
                let shown = other
                    .as_str()
                    .map_or_else(|| other.to_string(), str::to_string);
                return Err(failed(format!(
                    "apply-to '{shown}' unrecognised; should be 'queues', 'exchanges' or 'all'"
                )));
            }
        };
        let priority = match obj.get("priority") {
            None | Some(Value::Null) => 0,
            Some(v) => match (v.as_i64(), v.as_str().map(|s| s.trim().parse::<i64>())) {
                (Some(n), _) => n,
                (None, Some(Ok(n))) => n,
                _ => {
                    return Err(failed(format!(
                        "priority should be a number, actually was {}",
                        term(v)
                    )))
                }
            },
        };
        let regex = Regex::new(&pattern).map_err(|e| {
            failed(format!(
                "pattern should be regular expression but is invalid: {}",
                e.to_string().lines().last().unwrap_or("invalid")
            ))
        })?;
        if definition.is_empty() {
            return Err(failed("no policy provided"));
        }
        let mut queue = QueueSettings::default();
        let mut alternate_exchange = None;
        let mut unknown = Vec::new();
        for (key, v) in &definition {
            if scope == Scope::Operator && !OPERATOR_KEYS.contains(&key.as_str()) {
                unknown.push(format!("{{<<\"{key}\">>,{}}}", term(v)));
                continue;
            }
            match key.as_str() {
                "message-ttl" => queue.message_ttl = Some(non_negative(v, "message TTL", 0)?),
                "expires" => queue.expires = Some(non_negative(v, "queue expiry", 1)?),
                "max-length" => queue.max_length = Some(non_negative(v, "maximum length", 0)?),
                "max-length-bytes" => {
                    queue.max_length_bytes = Some(non_negative(v, "maximum length in bytes", 0)?)
                }
                "delivery-limit" => {
                    queue.delivery_limit = Some(non_negative(v, "delivery limit", 0)?)
                }
                // Quorum queues' in-memory caps: minimq keeps every queue's messages in
                // memory anyway, so they are validated and have no effect. RabbitMQ
                // 3.10 words both refusals alike.
                "max-in-memory-length" | "max-in-memory-bytes" => {
                    non_negative(v, "maximum memory in bytes", 0)?;
                }
                "consumer-timeout" => {
                    queue.consumer_timeout = Some(non_negative(v, "consumer timeout", 0)?)
                }
                "overflow" => {
                    queue.overflow = Some(match v.as_str() {
                        Some("drop-head") => Overflow::DropHead,
                        Some("reject-publish") => Overflow::RejectPublish,
                        Some("reject-publish-dlx") => Overflow::RejectPublishDlx,
                        _ => {
                            return Err(failed(format!(
                                "{} is not a valid overflow value",
                                term(v)
                            )))
                        }
                    })
                }
                "dead-letter-exchange" => {
                    queue.dead_letter_exchange = Some(string(v, "dead letter exchange name")?)
                }
                "dead-letter-strategy" => {
                    queue.dead_letter_strategy = Some(match v.as_str() {
                        Some("at-most-once") => DeadLetterStrategy::AtMostOnce,
                        Some("at-least-once") => DeadLetterStrategy::AtLeastOnce,
                        _ => {
                            return Err(failed(format!(
                                "{} is not a valid dead letter strategy",
                                term(v)
                            )))
                        }
                    })
                }
                "dead-letter-routing-key" => {
                    queue.dead_letter_routing_key = Some(string(v, "dead letter routing key")?)
                }
                "alternate-exchange" => {
                    alternate_exchange = Some(string(v, "alternate exchange name")?)
                }
                k if IGNORED_KEYS.contains(&k) => {}
                _ => unknown.push(format!("{{<<\"{key}\">>,{}}}", term(v))),
            }
        }
        if !unknown.is_empty() {
            return Err(failed(format!(
                "[{}] are not recognised policy settings",
                unknown.join(",")
            )));
        }
        Ok(Policy {
            name: name.to_string(),
            pattern,
            regex,
            apply_to,
            priority,
            definition,
            queue,
            alternate_exchange,
        })
    }

    /// Whether this policy applies to the `kind` object called `name` (an unanchored
    /// search, as Erlang's `re:run`).
    pub fn matches(&self, kind: Kind, name: &str) -> bool {
        self.apply_to.covers(kind) && self.regex.is_match(name)
    }

    /// The policy as `GET /api/policies` shows it.
    pub fn to_json(&self, vhost: &str) -> Value {
        serde_json::json!({
            "vhost": vhost,
            "name": self.name,
            "pattern": self.pattern,
            "apply-to": self.apply_to.name(),
            "definition": self.definition,
            "priority": self.priority,
        })
    }
}

/// A vhost's policies. Read on every declare and whenever policies change; written only
/// by the management API. A std `RwLock`: never held across an `.await`.
#[derive(Debug, Default)]
pub struct Policies {
    list: RwLock<Vec<Arc<Policy>>>,
}

impl Policies {
    /// Adds or replaces `policy`; true when it was new.
    pub fn put(&self, policy: Policy) -> bool {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let policy = Arc::new(policy);
        match list.iter_mut().find(|p| p.name == policy.name) {
            Some(slot) => {
                *slot = policy;
                false
            }
            None => {
                list.push(policy);
                true
            }
        }
    }

    /// Removes the policy `name`; false when there was none.
    pub fn delete(&self, name: &str) -> bool {
        let mut list = self.list.write().unwrap_or_else(|p| p.into_inner());
        let before = list.len();
        list.retain(|p| p.name != name);
        list.len() != before
    }

    /// The policy `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Policy>> {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter().find(|p| p.name == name).cloned()
    }

    /// Every policy, by name.
    pub fn all(&self) -> Vec<Arc<Policy>> {
        let mut out = self.list.read().unwrap_or_else(|p| p.into_inner()).clone();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// The policy that applies to the `kind` object `name`: the highest priority among
    /// those that match; between equal priorities, the first name in sort order.
    pub fn select(&self, kind: Kind, name: &str) -> Option<Arc<Policy>> {
        let list = self.list.read().unwrap_or_else(|p| p.into_inner());
        list.iter()
            .filter(|p| p.matches(kind, name))
            .max_by(|a, b| {
                a.priority
                    .cmp(&b.priority)
                    .then_with(|| b.name.cmp(&a.name))
            })
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(body: Value) -> Result<Policy, String> {
        Policy::parse("p", &body)
    }

    #[test]
    fn a_policy_takes_rabbitmq_keys_and_defaults_to_all_at_priority_zero() {
        let p = parse(json!({"pattern": "^pq", "definition": {
            "max-length": 6, "message-ttl": 1000, "dead-letter-exchange": "dlx",
            "overflow": "reject-publish", "expires": 1, "delivery-limit": 3,
            "consumer-timeout": 5000, "max-length-bytes": 0, "queue-mode": "lazy",
            "alternate-exchange": "ae", "dead-letter-routing-key": "rk"}}))
        .unwrap();
        assert_eq!(p.apply_to, ApplyTo::All);
        assert_eq!(p.priority, 0);
        assert_eq!(p.queue.max_length, Some(6));
        assert_eq!(p.queue.overflow, Some(Overflow::RejectPublish));
        assert_eq!(p.queue.consumer_timeout, Some(5000));
        assert_eq!(p.alternate_exchange.as_deref(), Some("ae"));
        assert!(p.matches(Kind::Queue, "pqa"));
        assert!(p.matches(Kind::Exchange, "pqx"));
        assert!(!p.matches(Kind::Queue, "apq"));
        assert_eq!(
            p.to_json("/")["definition"]["queue-mode"],
            "lazy",
            "the definition is answered as given"
        );
    }

    #[test]
    fn bad_bodies_get_rabbitmq_texts() {
        let cases = [
            (json!({"pattern": "a", "definition": {"foo": 1}}),
             "Validation failed\n\n[{<<\"foo\">>,1}] are not recognised policy settings\n"),
            (json!({"pattern": "a", "definition": {"max-priority": 5}}),
             "Validation failed\n\n[{<<\"max-priority\">>,5}] are not recognised policy settings\n"),
            (json!({"pattern": "a", "definition": {"max-length": -1}}),
             "Validation failed\n\n-1 is not a valid maximum length\n"),
            (json!({"pattern": "a", "definition": {"message-ttl": "x"}}),
             "Validation failed\n\n<<\"x\">> is not a valid message TTL\n"),
            (json!({"pattern": "a", "definition": {"expires": 0}}),
             "Validation failed\n\n0 is not a valid queue expiry\n"),
            (json!({"pattern": "a", "definition": {"overflow": "x"}}),
             "Validation failed\n\n<<\"x\">> is not a valid overflow value\n"),
            (json!({"pattern": "a", "definition": {}}),
             "Validation failed\n\nno policy provided\n"),
            (json!({"definition": {"max-length": 1}}), "[{key_missing,pattern}]"),
            (json!({"pattern": "a", "apply-to": "foo", "definition": {"max-length": 1}}),
             "Validation failed\n\napply-to 'foo' unrecognised; should be 'queues', 'exchanges' or 'all'\n"),
            (json!({"pattern": "a", "priority": "x", "definition": {"max-length": 1}}),
             "Validation failed\n\npriority should be a number, actually was <<\"x\">>\n"),
            (json!("notjson"), "not_json"),
        ];
        for (body, want) in cases {
            assert_eq!(parse(body.clone()).unwrap_err(), want, "{body}");
        }
        let e = parse(json!({"pattern": "[", "definition": {"max-length": 1}})).unwrap_err();
        assert!(
            e.starts_with(
                "Validation failed\n\npattern should be regular expression but is invalid: "
            ),
            "{e}"
        );
        assert_eq!(
            parse(json!({"pattern": "a", "priority": "7", "definition": {"max-length": 1}}))
                .unwrap()
                .priority,
            7
        );
    }

    #[test]
    fn the_highest_priority_match_wins_and_apply_to_filters() {
        let set = Policies::default();
        let put = |name: &str, pattern: &str, apply: &str, prio: i64| {
            set.put(
                Policy::parse(
                    name,
                    &json!({"pattern": pattern, "apply-to": apply, "priority": prio,
                            "definition": {"max-length": prio.max(0)}}),
                )
                .unwrap(),
            )
        };
        assert!(put("low", ".*", "all", 1));
        assert!(put("high", "^q", "queues", 5));
        assert!(put("ex", "^q", "exchanges", 9));
        assert_eq!(set.select(Kind::Queue, "q1").unwrap().name, "high");
        assert_eq!(set.select(Kind::Exchange, "q1").unwrap().name, "ex");
        assert_eq!(set.select(Kind::Queue, "other").unwrap().name, "low");
        assert!(!put("high", "^zzz", "queues", 5), "a second put replaces");
        assert_eq!(set.select(Kind::Queue, "q1").unwrap().name, "low");
        assert!(put("also-low", ".*", "all", 1));
        assert_eq!(
            set.select(Kind::Queue, "x").unwrap().name,
            "also-low",
            "ties go to the first name"
        );
        assert!(set.delete("also-low"));
        assert!(!set.delete("also-low"));
        assert_eq!(
            set.all()
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>(),
            ["ex", "high", "low"]
        );
    }

    #[test]
    fn numeric_limits_take_the_lower_and_the_argument_wins_the_rest() {
        let p = parse(json!({"pattern": ".", "definition": {
            "max-length": 6, "message-ttl": 1000, "dead-letter-exchange": "poldlx",
            "overflow": "reject-publish", "expires": 50000, "delivery-limit": 2}}))
        .unwrap();
        let mut table = FieldTable::new();
        table.insert("x-max-length", 3i32);
        table.insert("x-message-ttl", 5000i32);
        table.insert("x-dead-letter-exchange", "argdlx");
        let args = QueueArgs::parse(crate::queue::QueueRef::new("q", "/"), &table).unwrap();
        let eff = p.queue.apply_to(&args, &table);
        assert_eq!(eff.max_length, Some(3), "argument lower");
        assert_eq!(eff.message_ttl, Some(1000), "policy lower");
        assert_eq!(
            eff.dead_letter_exchange.as_deref(),
            Some("argdlx"),
            "argument wins"
        );
        assert_eq!(
            eff.overflow,
            Overflow::RejectPublish,
            "no argument: the policy's"
        );
        assert_eq!(eff.expires, Some(50000));
        assert_eq!(eff.delivery_limit, Some(2));
        let bare = p.queue.apply_to(&QueueArgs::default(), &FieldTable::new());
        assert_eq!(bare.dead_letter_exchange.as_deref(), Some("poldlx"));
        assert_eq!(bare.max_length, Some(6));
    }

    #[test]
    fn an_operator_policy_takes_the_numeric_limits_only_and_caps_a_policy() {
        let op = Policy::parse_in(
            Scope::Operator,
            "op",
            &json!({"pattern": ".", "definition": {"max-length": 5, "message-ttl": 1000,
                    "max-in-memory-length": 1}}),
        )
        .unwrap();
        let e = Policy::parse_in(
            Scope::Operator,
            "op",
            &json!({"pattern": ".", "definition": {"overflow": "drop-head"}}),
        )
        .unwrap_err();
        assert_eq!(
            e,
            "Validation failed\n\n[{<<\"overflow\">>,<<\"drop-head\">>}] are not recognised policy settings\n"
        );
        let p = parse(json!({"pattern": ".", "definition": {"max-length": 3,
                "message-ttl": 5000, "dead-letter-exchange": "dd"}}))
        .unwrap();
        let capped = p.queue.capped_by(&op.queue);
        assert_eq!(capped.max_length, Some(3), "the policy's is lower");
        assert_eq!(capped.message_ttl, Some(1000), "the operator's is lower");
        assert_eq!(capped.dead_letter_exchange.as_deref(), Some("dd"));
        assert_eq!(
            merged_definition(&p.definition, &op.definition),
            json!({"dead-letter-exchange": "dd", "max-length": 3, "message-ttl": 1000,
                   "max-in-memory-length": 1})
        );
    }
}
