//! Exchanges and routing. The default exchange (`""`) routes to the queue named by the
//! routing key; the others hold bindings and route by their type's rule. Routing answers
//! queue names; the vhost turns them into queue handles.
//!
//! Bindings live in a `std::sync::RwLock` inside each exchange: routing reads them
//! without awaiting, so a blocking lock is the right tool.

pub mod topic;

use std::sync::{Arc, RwLock};

use minimq_protocol::{FieldTable, ReplyCode};

use crate::error::{AmqpError, AmqpResult};

/// The routing rule of an exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Exact routing-key match.
    Direct,
    /// Every bound queue.
    Fanout,
    /// Dotted-word patterns with `*` and `#`.
    Topic,
    /// Header matching (`x-match`).
    Headers,
}

impl ExchangeKind {
    /// Parses a declare's type name; RabbitMQ answers 503 for an unknown one.
    pub fn parse(name: &str) -> AmqpResult<ExchangeKind> {
        Ok(match name {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            other => {
                return Err(AmqpError::new(
                    ReplyCode::CommandInvalid,
                    format!("unknown exchange type '{other}'"),
                ))
            }
        })
    }

    /// The type name.
    pub fn name(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }
}

/// What a binding delivers to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A queue (`queue.bind`).
    Queue(Arc<str>),
    /// Another exchange (`exchange.bind`).
    Exchange(Arc<str>),
}

/// A queue or exchange bound to an exchange.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// Where matching messages go.
    pub destination: Destination,
    /// The binding key.
    pub key: String,
    /// Binding arguments (used by headers exchanges).
    pub arguments: FieldTable,
}

/// An exchange.
#[derive(Debug)]
pub struct Exchange {
    /// Its name (`""` for the default exchange).
    pub name: Arc<str>,
    /// Its type.
    pub kind: ExchangeKind,
    /// Survives restarts.
    pub durable: bool,
    /// Deleted when its last binding goes.
    pub auto_delete: bool,
    /// Not publishable by clients.
    pub internal: bool,
    /// Declare arguments.
    pub arguments: FieldTable,
    bindings: RwLock<Vec<Binding>>,
    /// The `alternate-exchange` of the policy that applies, set by the vhost (an
    /// argument of the same name wins, as in RabbitMQ).
    policy_alternate: RwLock<Option<Arc<str>>>,
}

impl Exchange {
    /// A new exchange with no bindings.
    pub fn new(
        name: &str,
        kind: ExchangeKind,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> Exchange {
        Exchange {
            name: name.into(),
            kind,
            durable,
            auto_delete,
            internal,
            arguments,
            bindings: RwLock::default(),
            policy_alternate: RwLock::default(),
        }
    }

    /// Whether this is the nameless default exchange.
    pub fn is_default(&self) -> bool {
        self.name.is_empty()
    }

    /// Adds a binding (idempotent).
    pub fn bind(&self, binding: Binding) {
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        if !b.contains(&binding) {
            b.push(binding);
        }
    }

    /// Removes a binding; whether it existed.
    pub fn unbind(&self, destination: &Destination, key: &str, arguments: &FieldTable) -> bool {
        let mut b = self.bindings.write().unwrap_or_else(|e| e.into_inner());
        let before = b.len();
        b.retain(|x| !(&x.destination == destination && x.key == key && &x.arguments == arguments));
        b.len() != before
    }

    /// Removes every binding to `destination` (it was deleted).
    pub fn unbind_all(&self, destination: &Destination) {
        self.bindings
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|x| &x.destination != destination);
    }

    /// A snapshot of the bindings.
    pub fn bindings(&self) -> Vec<Binding> {
        self.bindings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Where unroutable messages go instead: the `alternate-exchange` argument, else the
    /// policy's. Read only for a message no binding took.
    pub fn alternate_exchange(&self) -> Option<Arc<str>> {
        match self
            .arguments
            .get("alternate-exchange")
            .and_then(|v| v.as_str())
        {
            Some(ae) => Some(ae.into()),
            None => self
                .policy_alternate
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }

    /// Sets the alternate exchange its policy names (`None`: no policy, or none named).
    pub fn set_policy_alternate(&self, ae: Option<Arc<str>>) {
        *self
            .policy_alternate
            .write()
            .unwrap_or_else(|e| e.into_inner()) = ae;
    }

    /// Whether any queue is bound.
    pub fn has_bindings(&self) -> bool {
        !self
            .bindings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// The destinations a message with `routing_key` and `headers` goes to, without
    /// duplicates. The default exchange is routed by the vhost.
    pub fn route(
        &self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<Destination>,
    ) {
        let bindings = self.bindings.read().unwrap_or_else(|e| e.into_inner());
        for b in bindings.iter() {
            let hit = match self.kind {
                ExchangeKind::Direct => b.key == routing_key,
                ExchangeKind::Fanout => true,
                ExchangeKind::Topic => topic::matches(&b.key, routing_key),
                ExchangeKind::Headers => headers_match(&b.arguments, headers),
            };
            if hit && !out.contains(&b.destination) {
                out.push(b.destination.clone());
            }
        }
    }
}

/// RabbitMQ's headers matching: `x-match` `all` (default) or `any`; keys starting `x-` are
/// ignored unless the mode is `all-with-x` / `any-with-x`. A binding value of type void
/// matches on presence alone.
fn headers_match(binding: &FieldTable, headers: Option<&FieldTable>) -> bool {
    let mode = binding
        .get("x-match")
        .and_then(|v| v.as_str())
        .unwrap_or("all");
    let (any, with_x) = match mode {
        "any" => (true, false),
        "any-with-x" => (true, true),
        "all-with-x" => (false, true),
        _ => (false, false),
    };
    let empty = FieldTable::new();
    let headers = headers.unwrap_or(&empty);
    let mut considered = binding
        .iter()
        .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")));
    let check = |(k, v): (&str, &minimq_protocol::FieldValue)| match headers.get(k) {
        None => false,
        Some(_) if matches!(v, minimq_protocol::FieldValue::Void) => true,
        Some(h) => h == v,
    };
    if any {
        considered.any(check)
    } else {
        considered.all(check)
    }
}

#[cfg(test)]
mod tests {
    use super::headers_match;
    use minimq_protocol::{FieldTable, FieldValue};

    fn table(pairs: &[(&str, FieldValue)]) -> FieldTable {
        pairs.iter().cloned().collect()
    }

    #[test]
    fn headers_matching_follows_rabbitmq_for_every_x_match_mode() {
        let msg = table(&[
            ("format", "pdf".into()),
            ("type", "report".into()),
            ("x-tenant", "a".into()),
        ]);
        let all = |extra: &[(&str, FieldValue)]| {
            let mut t = table(&[("x-match", "all".into())]);
            for (k, v) in extra {
                t.insert(*k, v.clone());
            }
            t
        };
        assert!(headers_match(
            &all(&[("format", "pdf".into()), ("type", "report".into())]),
            Some(&msg)
        ));
        assert!(!headers_match(
            &all(&[("format", "pdf".into()), ("type", "log".into())]),
            Some(&msg)
        ));
        // x- keys in the binding are ignored by "all" / "any"...
        assert!(headers_match(
            &all(&[("format", "pdf".into()), ("x-tenant", "b".into())]),
            Some(&msg)
        ));
        // ...and considered by "all-with-x" / "any-with-x".
        let with_x = table(&[("x-match", "all-with-x".into()), ("x-tenant", "b".into())]);
        assert!(!headers_match(&with_x, Some(&msg)));
        let with_x = table(&[("x-match", "all-with-x".into()), ("x-tenant", "a".into())]);
        assert!(headers_match(&with_x, Some(&msg)));
        let any = table(&[
            ("x-match", "any".into()),
            ("format", "doc".into()),
            ("type", "report".into()),
        ]);
        assert!(headers_match(&any, Some(&msg)));
        let any = table(&[
            ("x-match", "any".into()),
            ("format", "doc".into()),
            ("x-tenant", "a".into()),
        ]);
        assert!(
            !headers_match(&any, Some(&msg)),
            "x-tenant is ignored by plain any"
        );
        let any_x = table(&[
            ("x-match", "any-with-x".into()),
            ("format", "doc".into()),
            ("x-tenant", "a".into()),
        ]);
        assert!(headers_match(&any_x, Some(&msg)));
        // A void binding value matches on presence; the default mode is all.
        assert!(headers_match(
            &table(&[("type", FieldValue::Void)]),
            Some(&msg)
        ));
        assert!(!headers_match(
            &table(&[("missing", FieldValue::Void)]),
            Some(&msg)
        ));
        assert!(!headers_match(&table(&[("type", "report".into())]), None));
    }
}
