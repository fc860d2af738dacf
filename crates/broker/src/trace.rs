//! Firehose tracing: RabbitMQ's `rabbit_trace`. While a vhost traces (its flag, set with
//! `PUT /api/vhosts/{vhost}` `"tracing": true`), every message published in it is copied
//! to its `amq.rabbitmq.trace` exchange with routing key `publish.<exchange>`, and every
//! delivery (consume or get) with `deliver.<queue>`, carrying the headers RabbitMQ sets.
//!
//! This module builds the trace messages; the connection calls it from its publish and
//! delivery paths after one relaxed load of the vhost's flag ([`crate::vhost::VHost::is_tracing`]),
//! and the vhost routes what it builds ([`crate::vhost::VHost::publish_trace`]).

use std::sync::Arc;

use bytes::Bytes;
use minimq_protocol::{BasicProperties, FieldTable, FieldValue};

use crate::message::Message;
use crate::queue::QueueHandle;

/// The exchange trace messages go to: topic, durable, internal, in every vhost.
pub const TRACE_EXCHANGE: &str = "amq.rabbitmq.trace";

/// Where a traced publish or delivery happened: the connection and channel that made it.
#[derive(Debug, Clone, Copy)]
pub struct Tap<'a> {
    /// The vhost's name.
    pub vhost: &'a str,
    /// The connection's name, as the management API shows it.
    pub connection: &'a str,
    /// The channel number.
    pub channel: u16,
    /// The connection's user.
    pub user: &'a str,
}

/// The trace of `message`, published on `tap` and routed to `queues`; `None` for a
/// message published to the trace exchange itself (it would trace itself forever).
pub fn published(message: &Message, queues: &[QueueHandle], tap: Tap<'_>) -> Option<Message> {
    let routed = queues
        .iter()
        .map(|q| FieldValue::from(q.name().as_ref()))
        .collect();
    let extra = [
        ("vhost", FieldValue::from(tap.vhost)),
        ("connection", FieldValue::from(tap.connection)),
        ("channel", FieldValue::I32(i32::from(tap.channel))),
        ("user", FieldValue::from(tap.user)),
        ("routed_queues", FieldValue::Array(routed)),
    ];
    trace(message, "publish", &message.exchange, extra)
}

/// The trace of `message` delivered from queue `queue` on `tap`; `None` for a message
/// that was published to the trace exchange.
pub fn delivered(
    message: &Message,
    queue: &str,
    redelivered: bool,
    tap: Tap<'_>,
) -> Option<Message> {
    let extra = [
        ("redelivered", FieldValue::I32(i32::from(redelivered))),
        ("vhost", FieldValue::from(tap.vhost)),
        ("connection", FieldValue::from(tap.connection)),
        ("channel", FieldValue::I32(i32::from(tap.channel))),
        ("user", FieldValue::from(tap.user)),
    ];
    trace(message, "deliver", queue, extra)
}

/// A trace message: `message`'s body, routing key `kind.suffix`, and headers (RabbitMQ's
/// `msg_to_table` then `extra`) as its only property, so it is transient.
fn trace<const N: usize>(
    message: &Message,
    kind: &str,
    suffix: &str,
    extra: [(&str, FieldValue); N],
) -> Option<Message> {
    if &*message.exchange == TRACE_EXCHANGE {
        return None;
    }
    let mut headers = FieldTable::new();
    headers.insert("exchange_name", FieldValue::from(&*message.exchange));
    headers.insert(
        "routing_keys",
        FieldValue::Array(vec![FieldValue::from(&*message.routing_key)]),
    );
    headers.insert("properties", properties_table(&message.properties));
    headers.insert("node", FieldValue::from(crate::admin::json::node_name()));
    for (key, value) in extra {
        headers.insert(key, value);
    }
    let properties = BasicProperties {
        headers: Some(headers),
        ..BasicProperties::default()
    };
    Some(Message::new(
        TRACE_EXCHANGE.into(),
        format!("{kind}.{suffix}").into(),
        Arc::new(properties),
        Bytes::clone(&message.body),
    ))
}

/// The properties that are set, as RabbitMQ's `msg_to_table` lists them: in reverse
/// field order, the headers as a table, numbers as signed 32-bit integers, the rest as
/// long strings.
fn properties_table(p: &BasicProperties) -> FieldValue {
    let text = |v: &Option<String>| v.as_deref().map(FieldValue::from);
    let number = |n: u64| match i32::try_from(n) {
        Ok(n) => FieldValue::I32(n),
        // Past 2038 a timestamp no longer fits RabbitMQ's 32-bit field.
        Err(_) => FieldValue::I64(i64::try_from(n).unwrap_or(i64::MAX)),
    };
    let fields = [
        ("cluster_id", text(&p.cluster_id)),
        ("app_id", text(&p.app_id)),
        ("user_id", text(&p.user_id)),
        ("type", text(&p.kind)),
        ("timestamp", p.timestamp.map(number)),
        ("message_id", text(&p.message_id)),
        ("expiration", text(&p.expiration)),
        ("reply_to", text(&p.reply_to)),
        ("correlation_id", text(&p.correlation_id)),
        ("priority", p.priority.map(|n| number(n.into()))),
        ("delivery_mode", p.delivery_mode.map(|n| number(n.into()))),
        ("headers", p.headers.clone().map(FieldValue::Table)),
        ("content_encoding", text(&p.content_encoding)),
        ("content_type", text(&p.content_type)),
    ];
    let mut table = FieldTable::new();
    for (key, value) in fields {
        if let Some(v) = value {
            table.insert(key, v);
        }
    }
    FieldValue::Table(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap() -> Tap<'static> {
        Tap {
            vhost: "/",
            connection: "c",
            channel: 1,
            user: "guest",
        }
    }

    #[test]
    fn a_publish_is_traced_with_rabbitmqs_headers_and_routing_key() {
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            ..Default::default()
        };
        let m = Message::new("x".into(), "rk".into(), props, Bytes::from_static(b"hi"));
        let t = published(&m, &[], tap()).unwrap();
        assert_eq!(&*t.exchange, TRACE_EXCHANGE);
        assert_eq!(&*t.routing_key, "publish.x");
        assert_eq!(&t.body[..], b"hi");
        assert_eq!(t.properties.delivery_mode, None, "transient");
        let h = t.properties.headers.as_ref().unwrap();
        let keys: Vec<&str> = h.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "exchange_name",
                "routing_keys",
                "properties",
                "node",
                "vhost",
                "connection",
                "channel",
                "user",
                "routed_queues"
            ]
        );
        let FieldValue::Table(p) = h.get("properties").unwrap() else {
            panic!("properties is a table");
        };
        let keys: Vec<&str> = p.0.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["delivery_mode", "content_type"]);
        assert_eq!(p.get("delivery_mode"), Some(&FieldValue::I32(2)));
    }

    #[test]
    fn what_was_published_to_the_trace_exchange_is_not_traced() {
        let m = Message::new(
            TRACE_EXCHANGE.into(),
            "publish.x".into(),
            BasicProperties::default(),
            Bytes::new(),
        );
        assert!(published(&m, &[], tap()).is_none());
        assert!(delivered(&m, "q", false, tap()).is_none());
        let m = Message::new(
            "".into(),
            "q".into(),
            BasicProperties::default(),
            Bytes::new(),
        );
        let t = delivered(&m, "q", true, tap()).unwrap();
        assert_eq!(&*t.routing_key, "deliver.q");
        let h = t.properties.headers.as_ref().unwrap();
        assert_eq!(h.get("redelivered"), Some(&FieldValue::I32(1)));
    }
}
