//! The 14 properties of the `basic` class, carried in a content header frame.

use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::error::DecodeError;
use crate::types::{read, write, FieldTable, ShortString};

/// Basic content properties. `None` means the property is absent (its flag bit clear).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BasicProperties {
    /// MIME content type.
    pub content_type: Option<ShortString>,
    /// MIME content encoding.
    pub content_encoding: Option<ShortString>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority 0-9 (0-255 in RabbitMQ).
    pub priority: Option<u8>,
    /// Correlation id.
    pub correlation_id: Option<ShortString>,
    /// Address to reply to.
    pub reply_to: Option<ShortString>,
    /// Per-message TTL in milliseconds, as a decimal string.
    pub expiration: Option<ShortString>,
    /// Application message id.
    pub message_id: Option<ShortString>,
    /// Timestamp, seconds since the epoch.
    pub timestamp: Option<u64>,
    /// Message type name.
    pub kind: Option<ShortString>,
    /// Creating user id; the broker checks it against the connection's user.
    pub user_id: Option<ShortString>,
    /// Creating application id.
    pub app_id: Option<ShortString>,
    /// Deprecated cluster id.
    pub cluster_id: Option<ShortString>,
}

const CONTENT_TYPE: u16 = 1 << 15;
const CONTENT_ENCODING: u16 = 1 << 14;
const HEADERS: u16 = 1 << 13;
const DELIVERY_MODE: u16 = 1 << 12;
const PRIORITY: u16 = 1 << 11;
const CORRELATION_ID: u16 = 1 << 10;
const REPLY_TO: u16 = 1 << 9;
const EXPIRATION: u16 = 1 << 8;
const MESSAGE_ID: u16 = 1 << 7;
const TIMESTAMP: u16 = 1 << 6;
const TYPE: u16 = 1 << 5;
const USER_ID: u16 = 1 << 4;
const APP_ID: u16 = 1 << 3;
const CLUSTER_ID: u16 = 1 << 2;

impl BasicProperties {
    /// Whether `delivery_mode` is 2 (persistent).
    pub fn is_persistent(&self) -> bool {
        self.delivery_mode == Some(2)
    }

    fn flags(&self) -> u16 {
        let mut f = 0;
        let mut set = |present: bool, bit: u16| {
            if present {
                f |= bit;
            }
        };
        set(self.content_type.is_some(), CONTENT_TYPE);
        set(self.content_encoding.is_some(), CONTENT_ENCODING);
        set(self.headers.is_some(), HEADERS);
        set(self.delivery_mode.is_some(), DELIVERY_MODE);
        set(self.priority.is_some(), PRIORITY);
        set(self.correlation_id.is_some(), CORRELATION_ID);
        set(self.reply_to.is_some(), REPLY_TO);
        set(self.expiration.is_some(), EXPIRATION);
        set(self.message_id.is_some(), MESSAGE_ID);
        set(self.timestamp.is_some(), TIMESTAMP);
        set(self.kind.is_some(), TYPE);
        set(self.user_id.is_some(), USER_ID);
        set(self.app_id.is_some(), APP_ID);
        set(self.cluster_id.is_some(), CLUSTER_ID);
        f
    }

    /// Appends the property flags and the present properties.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.put_u16(self.flags());
        let s = |buf: &mut BytesMut, v: &Option<ShortString>| {
            if let Some(v) = v {
                write::shortstr(buf, v);
            }
        };
        s(buf, &self.content_type);
        s(buf, &self.content_encoding);
        if let Some(h) = &self.headers {
            write::table(buf, h);
        }
        if let Some(d) = self.delivery_mode {
            buf.put_u8(d);
        }
        if let Some(p) = self.priority {
            buf.put_u8(p);
        }
        s(buf, &self.correlation_id);
        s(buf, &self.reply_to);
        s(buf, &self.expiration);
        s(buf, &self.message_id);
        if let Some(t) = self.timestamp {
            buf.put_u64(t);
        }
        s(buf, &self.kind);
        s(buf, &self.user_id);
        s(buf, &self.app_id);
        s(buf, &self.cluster_id);
    }

    /// Decodes property flags and the properties they announce.
    pub fn decode(buf: &mut Bytes) -> Result<BasicProperties, DecodeError> {
        let flags = read::u16(buf)?;
        // Further flag words (bit 0 set) announce properties this class does not have;
        // read past them so the known ones still decode.
        let mut more = flags & 1 != 0;
        while more {
            more = read::u16(buf)? & 1 != 0;
        }
        let s = |buf: &mut Bytes, bit: u16| -> Result<Option<ShortString>, DecodeError> {
            if flags & bit != 0 {
                read::shortstr(buf).map(Some)
            } else {
                Ok(None)
            }
        };
        let content_type = s(buf, CONTENT_TYPE)?;
        let content_encoding = s(buf, CONTENT_ENCODING)?;
        let headers = if flags & HEADERS != 0 {
            Some(read::table(buf)?)
        } else {
            None
        };
        let delivery_mode = if flags & DELIVERY_MODE != 0 {
            Some(read::u8(buf)?)
        } else {
            None
        };
        let priority = if flags & PRIORITY != 0 {
            Some(read::u8(buf)?)
        } else {
            None
        };
        let correlation_id = s(buf, CORRELATION_ID)?;
        let reply_to = s(buf, REPLY_TO)?;
        let expiration = s(buf, EXPIRATION)?;
        let message_id = s(buf, MESSAGE_ID)?;
        let timestamp = if flags & TIMESTAMP != 0 {
            Some(read::u64(buf)?)
        } else {
            None
        };
        let kind = s(buf, TYPE)?;
        let user_id = s(buf, USER_ID)?;
        let app_id = s(buf, APP_ID)?;
        let cluster_id = s(buf, CLUSTER_ID)?;
        Ok(BasicProperties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        })
    }
}

/// `value` as an `Arc`, sharing `last` when it is equal (a publisher usually sends the
/// same properties every time, so most messages cost no copy of them); `last` becomes
/// the answer.
pub fn share_last<T: PartialEq>(
    last: &mut Option<std::sync::Arc<T>>,
    value: T,
) -> std::sync::Arc<T> {
    match last {
        Some(l) if **l == value => l.clone(),
        _ => {
            let a = std::sync::Arc::new(value);
            *last = Some(a.clone());
            a
        }
    }
}

/// The exchange, routing key and properties of the last message on a channel, which the
/// next one usually repeats: shared with it then (one `Arc` each instead of a copy per
/// message), and when the next one comes as octets (a message taken whole from the read
/// buffer, `frame::peek_content`), recognised by its octets without decoding them.
#[derive(Debug, Default)]
pub struct LastContent {
    route: Option<(Arc<str>, Arc<str>)>,
    properties: Option<Arc<BasicProperties>>,
    /// The octets `properties` were decoded from, when they came as octets.
    raw_properties: Option<Bytes>,
}

impl LastContent {
    /// Exchange and routing key from their octets, shared with the last ones when the
    /// same; `None` if either is not UTF-8.
    pub fn route(&mut self, exchange: &[u8], routing_key: &[u8]) -> Option<(Arc<str>, Arc<str>)> {
        if let Some(same) = self.same_route(exchange, routing_key) {
            return Some(same);
        }
        let exchange = std::str::from_utf8(exchange).ok()?;
        let routing_key = std::str::from_utf8(routing_key).ok()?;
        Some(self.new_route(exchange, routing_key))
    }

    /// [`LastContent::route`] for decoded strings.
    pub fn route_str(&mut self, exchange: &str, routing_key: &str) -> (Arc<str>, Arc<str>) {
        self.same_route(exchange.as_bytes(), routing_key.as_bytes())
            .unwrap_or_else(|| self.new_route(exchange, routing_key))
    }

    fn same_route(&self, exchange: &[u8], routing_key: &[u8]) -> Option<(Arc<str>, Arc<str>)> {
        let (e, k) = self.route.as_ref()?;
        (e.as_bytes() == exchange && k.as_bytes() == routing_key).then(|| (e.clone(), k.clone()))
    }

    fn new_route(&mut self, exchange: &str, routing_key: &str) -> (Arc<str>, Arc<str>) {
        let route: (Arc<str>, Arc<str>) = (exchange.into(), routing_key.into());
        self.route = Some(route.clone());
        route
    }

    /// Properties from their encoded octets (flags and property list), shared with the
    /// last ones when the octets are the same, else decoded; `None` unless they decode
    /// exactly (the frame decoder then reports the error).
    pub fn properties_from(&mut self, octets: &[u8]) -> Option<Arc<BasicProperties>> {
        if let (Some(last), Some(raw)) = (&self.properties, &self.raw_properties) {
            if raw[..] == *octets {
                return Some(last.clone());
            }
        }
        let mut buf = Bytes::copy_from_slice(octets);
        let decoded = BasicProperties::decode(&mut buf).ok()?;
        if buf.has_remaining() {
            return None;
        }
        let shared = share_last(&mut self.properties, decoded);
        self.raw_properties = Some(Bytes::copy_from_slice(octets));
        Some(shared)
    }

    /// Decoded properties, shared with the last ones when equal (see [`share_last`]).
    pub fn properties(&mut self, properties: BasicProperties) -> Arc<BasicProperties> {
        self.raw_properties = None;
        share_last(&mut self.properties, properties)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_content_shares_what_repeats_and_decodes_what_changes() {
        let mut last = LastContent::default();
        let a = last.route(b"", b"q").unwrap();
        let b = last.route(b"", b"q").unwrap();
        assert!(Arc::ptr_eq(&a.1, &b.1), "same octets: shared");
        let c = last.route(b"x", b"q").unwrap();
        assert_eq!((&*c.0, &*c.1), ("x", "q"));
        assert!(last.route(b"", &[0xff]).is_none(), "not UTF-8");
        let d = last.route_str("x", "q");
        assert!(
            Arc::ptr_eq(&c.1, &d.1),
            "decoded strings share the same way"
        );

        let persistent = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let text = BasicProperties {
            content_type: Some("text/plain".into()),
            ..BasicProperties::default()
        };
        let octets = |p: &BasicProperties| {
            let mut buf = BytesMut::new();
            p.encode(&mut buf);
            buf.freeze()
        };
        let p1 = last.properties_from(&octets(&persistent)).unwrap();
        let p2 = last.properties_from(&octets(&persistent)).unwrap();
        assert_eq!(*p1, persistent);
        assert!(Arc::ptr_eq(&p1, &p2), "same octets: shared");
        let p3 = last.properties_from(&octets(&text)).unwrap();
        assert_eq!(*p3, text);
        // Decoded properties replace the octets: the old octets are decoded again.
        let p4 = last.properties(persistent.clone());
        assert_eq!(*p4, persistent);
        let p5 = last.properties_from(&octets(&text)).unwrap();
        assert_eq!(*p5, text);
        assert!(!Arc::ptr_eq(&p3, &p5));
        // Octets that do not decode exactly are refused.
        let mut trailing = octets(&text).to_vec();
        trailing.push(0);
        assert!(last.properties_from(&trailing).is_none());
        assert!(last.properties_from(&[0x80]).is_none());
    }

    #[test]
    fn share_last_shares_equal_values_and_replaces_different_ones() {
        let mut last = None;
        let plain = BasicProperties::default();
        let persistent = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        let a = share_last(&mut last, plain.clone());
        let b = share_last(&mut last, plain.clone());
        assert!(std::sync::Arc::ptr_eq(&a, &b), "equal: shared");
        let c = share_last(&mut last, persistent.clone());
        assert_eq!(*c, persistent, "different: its own value");
        assert_eq!(*a, plain, "earlier holders keep theirs");
        let d = share_last(&mut last, persistent);
        assert!(
            std::sync::Arc::ptr_eq(&c, &d),
            "the last one is what is shared"
        );
    }
}
