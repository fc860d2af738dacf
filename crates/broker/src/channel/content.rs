//! A publish as its channel assembles it: the `basic.publish` method, then the content
//! header, then body frames until the declared size is reached; and what the channel's
//! previous publish carried (exchange, routing key, properties), which the next one
//! usually repeats and then shares instead of keeping its own copy. A frame out of that
//! order is answered with RabbitMQ's error for it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use minimq_protocol::properties::LastContent;
use minimq_protocol::{BasicProperties, BasicPublish, ContentHeader, ReplyCode};

use crate::error::{AmqpError, AmqpResult};

/// Bodies up to this size get an allocation of their own (see [`BodyParts::into_bytes`]).
pub const SMALL_BODY: usize = 1024;

/// Whether a body of `len` octets arriving in one frame is copied into an allocation of
/// its own rather than kept as a slice of the read buffer (see [`BodyParts::into_bytes`]).
pub fn owns_copy(len: usize) -> bool {
    len <= SMALL_BODY
}

/// Exchange and routing key of a publish.
pub type Route = (Arc<str>, Arc<str>);

/// A whole message published on a channel, ready to be routed.
#[derive(Debug)]
pub struct Published {
    /// Exchange and routing key, shared with the channel's previous publish when equal.
    pub route: Route,
    /// Returned if no queue takes it.
    pub mandatory: bool,
    /// Shared with the channel's previous publish when equal.
    pub properties: Arc<BasicProperties>,
    /// The body.
    pub body: Bytes,
}

/// A publish whose content is still arriving.
#[derive(Debug)]
struct PendingPublish {
    /// The `basic.publish` method.
    method: BasicPublish,
    /// Properties and declared size, once the header frame arrived.
    header: Option<(BasicProperties, u64)>,
    /// Body frames so far.
    body: BodyParts,
}

/// Body frames of one message. One frame (the common case) stays a zero-copy slice.
#[derive(Debug, Default)]
pub enum BodyParts {
    /// Nothing yet.
    #[default]
    Empty,
    /// One frame's payload.
    One(Bytes),
    /// Several frames, concatenated.
    Many(BytesMut),
}

impl BodyParts {
    /// Octets received.
    pub fn len(&self) -> u64 {
        match self {
            BodyParts::Empty => 0,
            BodyParts::One(b) => b.len() as u64,
            BodyParts::Many(b) => b.len() as u64,
        }
    }

    /// Whether nothing arrived yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends a body frame's payload.
    pub fn push(&mut self, chunk: Bytes) {
        *self = match std::mem::take(self) {
            BodyParts::Empty => BodyParts::One(chunk),
            BodyParts::One(first) => {
                let mut b = BytesMut::with_capacity(first.len() + chunk.len());
                b.extend_from_slice(&first);
                b.extend_from_slice(&chunk);
                BodyParts::Many(b)
            }
            BodyParts::Many(mut b) => {
                b.extend_from_slice(&chunk);
                BodyParts::Many(b)
            }
        }
    }

    /// The whole body. A small one is copied out of the frame it arrived in: as a
    /// slice it would keep the connection's whole read buffer (kilobytes) alive for as
    /// long as the message is queued, and keep the reader from reusing that buffer.
    pub fn into_bytes(self) -> Bytes {
        match self {
            BodyParts::Empty => Bytes::new(),
            BodyParts::One(b) if owns_copy(b.len()) => Bytes::copy_from_slice(&b),
            BodyParts::One(b) => b,
            BodyParts::Many(b) => b.freeze(),
        }
    }
}

/// The publish a channel is assembling, if any, and what its previous one carried.
#[derive(Debug, Default)]
pub struct Content {
    publish: Option<PendingPublish>,
    last: LastContent,
}

impl Content {
    /// Whether a publish is waiting for its header or body.
    pub fn in_progress(&self) -> bool {
        self.publish.is_some()
    }

    /// `basic.publish`: its header and body come next.
    pub fn start(&mut self, method: BasicPublish) {
        self.publish = Some(PendingPublish {
            method,
            header: None,
            body: BodyParts::Empty,
        });
    }

    /// Drops the publish being assembled (its channel closes).
    pub fn abandon(&mut self) {
        self.publish = None;
    }

    /// The error for a method frame that arrives while a publish waits for its content.
    pub fn interrupted(&self) -> Option<AmqpError> {
        let publish = self.publish.as_ref()?;
        let text = if publish.header.is_some() {
            "expected content body, got non content body frame instead"
        } else {
            "expected content header for class 60, got non content header frame instead"
        };
        Some(AmqpError::new(ReplyCode::UnexpectedFrame, text).on(60, 40))
    }

    /// A content header; the whole message if it declares an empty body. A message
    /// larger than `max` octets is refused (406) and dropped.
    pub fn header(&mut self, header: ContentHeader, max: u64) -> AmqpResult<Option<Published>> {
        let Some(publish) = self.publish.as_mut() else {
            // No publish on the channel: RabbitMQ's answer.
            return Err(no_method_frame());
        };
        if publish.header.is_some() {
            return Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                "expected content body, got non content body frame instead",
            )
            .on(60, 40));
        }
        if header.class_id != 60 {
            return Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                format!(
                    "expected content header for class 60, got one for class {} instead",
                    header.class_id
                ),
            )
            .on(60, 40));
        }
        let size = header.body_size;
        if size > max {
            self.publish = None;
            return Err(AmqpError::precondition(format!(
                "message size {size} is larger than configured max size {max}"
            )));
        }
        publish.header = Some((header.properties, size));
        Ok(if size == 0 { self.complete() } else { None })
    }

    /// A body frame; the whole message once the declared size is reached. More octets
    /// than declared are a connection error (501).
    pub fn body(&mut self, body: Bytes) -> AmqpResult<Option<Published>> {
        let Some(publish) = self.publish.as_mut() else {
            return Err(no_method_frame());
        };
        let Some((_, size)) = publish.header else {
            return Err(AmqpError::new(
                ReplyCode::UnexpectedFrame,
                "expected content header for class 60, got non content header frame instead",
            )
            .on(60, 40));
        };
        let parts = &mut publish.body;
        if parts.len() + body.len() as u64 > size {
            return Err(AmqpError::new(
                ReplyCode::FrameError,
                format!("content body exceeds the declared size of {size} octets"),
            ));
        }
        parts.push(body);
        Ok(if parts.len() == size {
            self.complete()
        } else {
            None
        })
    }

    /// The publish, complete: exchange, routing key and properties shared with the
    /// previous publish where equal.
    fn complete(&mut self) -> Option<Published> {
        let PendingPublish {
            method,
            header: Some((properties, _)),
            body,
        } = self.publish.take()?
        else {
            return None;
        };
        Some(Published {
            route: self.last.route_str(&method.exchange, &method.routing_key),
            mandatory: method.mandatory,
            properties: self.last.properties(properties),
            body: body.into_bytes(),
        })
    }

    /// Exchange, routing key and properties of a whole publish read as octets, shared
    /// with the previous publish where the octets are equal; `None` when they do not
    /// parse (the frame decoder then takes the publish and reports the error).
    pub fn raw(
        &mut self,
        exchange: &[u8],
        routing_key: &[u8],
        properties: &[u8],
    ) -> Option<(Route, Arc<BasicProperties>)> {
        let route = self.last.route(exchange, routing_key)?;
        let properties = self.last.properties_from(properties)?;
        Some((route, properties))
    }
}

/// A content frame where a method frame was due.
pub fn no_method_frame() -> AmqpError {
    AmqpError::new(
        ReplyCode::UnexpectedFrame,
        "expected method frame, got non method frame instead",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(rk: &str) -> BasicPublish {
        BasicPublish {
            exchange: String::new(),
            routing_key: rk.into(),
            mandatory: true,
            immediate: false,
        }
    }

    fn header(size: u64) -> ContentHeader {
        ContentHeader {
            class_id: 60,
            body_size: size,
            properties: BasicProperties::default(),
        }
    }

    #[test]
    fn a_body_in_several_frames_completes_at_the_declared_size() {
        let mut c = Content::default();
        c.start(publish("q"));
        assert!(c.header(header(5), 100).unwrap().is_none());
        assert!(c.body(Bytes::from_static(b"ab")).unwrap().is_none());
        let done = c.body(Bytes::from_static(b"cde")).unwrap().unwrap();
        assert_eq!(&done.body[..], b"abcde");
        assert_eq!(&*done.route.1, "q");
        assert!(done.mandatory);
        assert!(!c.in_progress());
    }

    #[test]
    fn an_empty_body_completes_with_the_header() {
        let mut c = Content::default();
        c.start(publish("q"));
        let done = c.header(header(0), 100).unwrap().unwrap();
        assert!(done.body.is_empty());
        assert!(!c.in_progress());
    }

    #[test]
    fn consecutive_publishes_share_route_and_properties() {
        let mut c = Content::default();
        let whole = |c: &mut Content| {
            c.start(publish("q"));
            c.header(header(0), 100).unwrap().unwrap()
        };
        let (a, b) = (whole(&mut c), whole(&mut c));
        assert!(Arc::ptr_eq(&a.route.1, &b.route.1));
        assert!(Arc::ptr_eq(&a.properties, &b.properties));
    }

    #[test]
    fn frames_out_of_order_get_rabbitmqs_errors() {
        let mut c = Content::default();
        // Content with no publish: a connection error.
        assert_eq!(c.header(header(1), 100).unwrap_err().code.code(), 505);
        assert_eq!(c.body(Bytes::new()).unwrap_err().code.code(), 505);
        assert!(c.interrupted().is_none());
        // A body before the header, a method before the header.
        c.start(publish("q"));
        let e = c.body(Bytes::from_static(b"x")).unwrap_err();
        assert_eq!((e.code.code(), e.class_id, e.method_id), (505, 60, 40));
        assert!(c
            .interrupted()
            .unwrap()
            .text
            .contains("expected content header"));
        // A second header, a method before the body.
        c.header(header(1), 100).unwrap();
        let e = c.header(header(1), 100).unwrap_err();
        assert!(e.text.contains("expected content body"));
        assert!(c
            .interrupted()
            .unwrap()
            .text
            .contains("expected content body"));
        // More body than declared.
        let e = c.body(Bytes::from_static(b"xy")).unwrap_err();
        assert_eq!(e.code.code(), 501);
    }

    #[test]
    fn a_header_of_another_class_or_over_the_size_limit_is_refused() {
        let mut c = Content::default();
        c.start(publish("q"));
        let mut other = header(1);
        other.class_id = 50;
        let e = c.header(other, 100).unwrap_err();
        assert_eq!((e.code.code(), e.class_id), (505, 60));
        assert!(c.in_progress());
        let e = c.header(header(101), 100).unwrap_err();
        assert_eq!(e.code.code(), 406);
        assert!(!c.in_progress(), "an oversized message is dropped");
    }
}
