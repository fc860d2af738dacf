//! Option structs for the channel methods, and the small result types some methods
//! return. Every flag defaults to `false`; `no-wait` is never exposed because every
//! synchronous method waits for its reply.

/// Flags of `queue.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeclareOptions {
    /// Only check that the queue exists (fails with 404 if it does not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Used by this connection only, deleted when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer is cancelled.
    pub auto_delete: bool,
}

/// Flags of `queue.delete`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueDeleteOptions {
    /// Only delete if the queue has no consumers.
    pub if_unused: bool,
    /// Only delete if the queue has no messages.
    pub if_empty: bool,
}

/// Flags of `exchange.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeDeclareOptions {
    /// Only check that the exchange exists (fails with 404 if it does not).
    pub passive: bool,
    /// Survive a broker restart.
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly, only through exchange-to-exchange bindings.
    pub internal: bool,
}

/// Flags of `basic.consume`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BasicConsumeOptions {
    /// The broker considers messages acknowledged as soon as it sends them.
    pub no_ack: bool,
    /// No other consumer may consume from the queue.
    pub exclusive: bool,
    /// Do not deliver messages this connection published (RabbitMQ ignores it).
    pub no_local: bool,
}

/// The answer to `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeclaredQueue {
    /// The queue name (the broker's, when an empty name was declared).
    pub name: String,
    /// Messages ready in the queue.
    pub message_count: u32,
    /// Consumers on the queue.
    pub consumer_count: u32,
}
