//! A published message as the broker keeps it: immutable once assembled and shared by
//! every queue it is routed to (`Arc<Message>`); the body is a `Bytes` slice, so no queue
//! and no consumer copies it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use minimq_protocol::BasicProperties;

/// A message after publish: where it was sent, its properties and body.
#[derive(Debug)]
pub struct Message {
    /// The exchange it was published to.
    pub exchange: Arc<str>,
    /// The routing key it was published with.
    pub routing_key: Arc<str>,
    /// Its properties, shared between messages that carry the same ones (a publisher
    /// usually sends the same properties every time): most messages cost no copy of them.
    pub properties: Arc<BasicProperties>,
    /// Its body.
    pub body: Bytes,
    /// Its id in the message store once a durable queue has logged it (the first queue
    /// to take a persistent message logs it; the others refer to it).
    pub store_id: Mutex<Option<u64>>,
}

impl Message {
    /// A message as published.
    pub fn new(
        exchange: Arc<str>,
        routing_key: Arc<str>,
        properties: impl Into<Arc<BasicProperties>>,
        body: Bytes,
    ) -> Message {
        Message {
            exchange,
            routing_key,
            properties: properties.into(),
            body,
            store_id: Mutex::new(None),
        }
    }

    /// Whether it asked to be persisted (`delivery_mode = 2`).
    pub fn is_persistent(&self) -> bool {
        self.properties.is_persistent()
    }

    /// Its per-message TTL in milliseconds from the `expiration` property, if valid.
    pub fn ttl_ms(&self) -> Option<u64> {
        self.properties
            .expiration
            .as_deref()
            .and_then(|e| e.parse().ok())
    }
}

pub use minimq_protocol::properties::share_last;
