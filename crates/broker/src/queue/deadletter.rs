//! Dead-lettering (`x-dead-letter-exchange`, `x-dead-letter-routing-key`) and the
//! delivery count (`x-delivery-count`), shaped as RabbitMQ shapes them.
//!
//! A dead-lettered message is a new message (the body is shared, not copied) published to
//! the dead-letter exchange, with an `x-death` header: an array of tables, newest first,
//! one per (queue, reason), each with `count`, `reason`, `queue`, `time`, `exchange`,
//! `routing-keys` and, when the message had a per-message TTL, `original-expiration` (the
//! `expiration` property itself is removed, so the message does not expire again).
//! `x-first-death-reason`, `x-first-death-queue` and `x-first-death-exchange` record the
//! first death and never change.

use std::sync::Arc;

use minimq_protocol::{FieldTable, FieldValue};

use crate::message::Message;

/// Why a message was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Rejected or nacked with `requeue = false`.
    Rejected,
    /// Its TTL passed.
    Expired,
    /// Dropped by `x-max-length` / `x-max-length-bytes` (or refused by `reject-publish-dlx`).
    MaxLen,
    /// Returned more often than `x-delivery-limit` allows.
    DeliveryLimit,
}

impl Reason {
    /// RabbitMQ's name for the reason.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Rejected => "rejected",
            Reason::Expired => "expired",
            Reason::MaxLen => "maxlen",
            Reason::DeliveryLimit => "delivery_limit",
        }
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Whether dead-lettering `message` from `queue` into `target` would loop without a
/// rejection in the loop (RabbitMQ drops such messages instead of cycling forever).
pub fn is_cycle(message: &Message, target: &str) -> bool {
    let Some(FieldValue::Array(deaths)) = message
        .properties
        .headers
        .as_ref()
        .and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let mut seen_target = false;
    for d in deaths {
        let FieldValue::Table(t) = d else { continue };
        if t.get("reason").and_then(FieldValue::as_str) == Some("rejected") {
            return false;
        }
        if t.get("queue").and_then(FieldValue::as_str) == Some(target) {
            seen_target = true;
        }
    }
    seen_target
}

/// The message to publish to the dead-letter exchange `dlx`, and its routing key.
pub fn dead_letter(
    message: &Message,
    queue: &str,
    reason: Reason,
    dlx: &str,
    dlrk: Option<&str>,
) -> Message {
    let mut properties = (*message.properties).clone();
    let mut headers = properties.headers.take().unwrap_or_default();
    let original_expiration = properties.expiration.take();
    let mut deaths = match headers.remove("x-death") {
        Some(FieldValue::Array(a)) => a,
        _ => Vec::new(),
    };
    let same = |v: &FieldValue| match v {
        FieldValue::Table(t) => {
            t.get("queue").and_then(FieldValue::as_str) == Some(queue)
                && t.get("reason").and_then(FieldValue::as_str) == Some(reason.as_str())
        }
        _ => false,
    };
    let mut entry = match deaths.iter().position(same) {
        Some(i) => match deaths.remove(i) {
            FieldValue::Table(t) => t,
            _ => FieldTable::new(),
        },
        None => FieldTable::new(),
    };
    // The count may come from the client (a published `x-death` header): it stays at
    // the largest value it can hold instead of overflowing.
    let count = entry
        .get("count")
        .and_then(FieldValue::as_i64)
        .unwrap_or(0)
        .saturating_add(1);
    entry.insert("count", FieldValue::I64(count));
    entry.insert("reason", reason.as_str());
    entry.insert("queue", queue);
    entry.insert("time", FieldValue::Timestamp(now_secs()));
    entry.insert("exchange", &*message.exchange);
    entry.insert(
        "routing-keys",
        FieldValue::Array(vec![FieldValue::from(&*message.routing_key)]),
    );
    if let Some(exp) = original_expiration {
        entry.insert("original-expiration", exp);
    }
    deaths.insert(0, FieldValue::Table(entry));
    if headers.get("x-first-death-reason").is_none() {
        headers.insert("x-first-death-reason", reason.as_str());
        headers.insert("x-first-death-queue", queue);
        headers.insert("x-first-death-exchange", &*message.exchange);
    }
    headers.insert("x-death", FieldValue::Array(deaths));
    properties.headers = Some(headers);
    let routing_key: Arc<str> = match dlrk {
        Some(k) => k.into(),
        None => message.routing_key.clone(),
    };
    Message::new(dlx.into(), routing_key, properties, message.body.clone())
}

/// A copy of `message` (sharing its body) carrying `x-delivery-count: count`.
pub fn with_delivery_count(message: &Message, count: u32) -> Message {
    let mut properties = (*message.properties).clone();
    properties
        .headers
        .get_or_insert_with(FieldTable::new)
        .insert("x-delivery-count", FieldValue::I64(i64::from(count)));
    Message::new(
        message.exchange.clone(),
        message.routing_key.clone(),
        properties,
        message.body.clone(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use minimq_protocol::BasicProperties;

    fn msg() -> Message {
        let props = BasicProperties {
            expiration: Some("5000".into()),
            ..Default::default()
        };
        Message::new("ex".into(), "rk".into(), props, Bytes::from_static(b"body"))
    }

    #[test]
    fn x_death_is_shaped_as_rabbitmq_shapes_it_and_counts_repeated_deaths() {
        let once = dead_letter(&msg(), "work", Reason::Rejected, "dlx", None);
        assert_eq!(&*once.exchange, "dlx");
        assert_eq!(&*once.routing_key, "rk");
        assert!(once.properties.expiration.is_none());
        let h = once.properties.headers.as_ref().unwrap();
        assert_eq!(
            h.get("x-first-death-reason").and_then(FieldValue::as_str),
            Some("rejected")
        );
        assert_eq!(
            h.get("x-first-death-queue").and_then(FieldValue::as_str),
            Some("work")
        );
        let Some(FieldValue::Array(d)) = h.get("x-death") else {
            panic!("no x-death")
        };
        let FieldValue::Table(e) = &d[0] else {
            panic!()
        };
        assert_eq!(e.get("count"), Some(&FieldValue::I64(1)));
        assert_eq!(
            e.get("original-expiration").and_then(FieldValue::as_str),
            Some("5000")
        );
        let twice = dead_letter(&once, "work", Reason::Rejected, "dlx", Some("again"));
        assert_eq!(&*twice.routing_key, "again");
        let Some(FieldValue::Array(d)) = twice.properties.headers.as_ref().unwrap().get("x-death")
        else {
            panic!()
        };
        assert_eq!(d.len(), 1, "same queue and reason: one entry, counted");
        let FieldValue::Table(e) = &d[0] else {
            panic!()
        };
        assert_eq!(e.get("count"), Some(&FieldValue::I64(2)));
        let other = dead_letter(&twice, "retry", Reason::Expired, "dlx", None);
        let Some(FieldValue::Array(d)) = other.properties.headers.as_ref().unwrap().get("x-death")
        else {
            panic!()
        };
        assert_eq!(d.len(), 2);
        let FieldValue::Table(first) = &d[0] else {
            panic!()
        };
        assert_eq!(
            first.get("queue").and_then(FieldValue::as_str),
            Some("retry"),
            "newest first"
        );
        assert!(
            !is_cycle(&other, "work"),
            "a rejection in the loop is not a cycle"
        );
        let expired_only = dead_letter(&msg(), "a", Reason::Expired, "dlx", None);
        assert!(is_cycle(&expired_only, "a"));
    }
}
