//! The live registry of connections, channels and consumers, read by the management API.
//!
//! A connection task registers a [`ConnectionInfo`] in [`BrokerState::connections`]
//! after its handshake and removes it when it ends. Facts that never change (peer, user,
//! client properties) are plain fields; what changes is kept cheap to update from the
//! connection task: per-channel atomics (a relaxed store when tags are recorded or
//! settled, qos and confirm changes) and a small mutex-guarded map that is only touched
//! when channels open or close and consumers start or stop. Nothing here is locked per
//! message.
//!
//! Channels and consumers leave the registry through drop guards
//! ([`ChannelRegistration`], [`ConsumerRegistration`]) held by the connection's own channel
//! state, so every path that forgets a channel or a consumer also unregisters it.
//!
//! [`BrokerState::connections`]: crate::server::BrokerState::connections

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use minimq_protocol::FieldTable;

/// Every open connection by id.
pub type Connections = dashmap::DashMap<u64, Arc<ConnectionInfo>>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An open (post-handshake) connection.
#[derive(Debug)]
pub struct ConnectionInfo {
    /// Broker-wide connection id.
    pub id: u64,
    /// RabbitMQ's connection name, `peer -> local`.
    pub name: String,
    /// The client's address.
    pub peer: SocketAddr,
    /// The broker's address of this connection.
    pub local: SocketAddr,
    /// Authenticated user.
    pub user: String,
    /// Virtual host.
    pub vhost: String,
    /// `PLAIN` or `AMQPLAIN`.
    pub auth_mechanism: String,
    /// What the client sent in `connection.start-ok`.
    pub client_properties: FieldTable,
    /// When the connection opened, milliseconds since the Unix epoch.
    pub connected_at: u64,
    /// Negotiated `frame_max`.
    pub frame_max: u32,
    /// Negotiated `channel_max`.
    pub channel_max: u16,
    /// Negotiated heartbeat, seconds.
    pub heartbeat: u16,
    /// Over TLS.
    pub ssl: std::sync::atomic::AtomicBool,
    channels: Mutex<BTreeMap<u16, Arc<ChannelInfo>>>,
    /// The connection's event channel, for asking it to close (set when it opens).
    events: Mutex<Option<crate::queue::EventSink>>,
}

impl ConnectionInfo {
    /// A connection with no channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: u64,
        peer: SocketAddr,
        local: SocketAddr,
        user: String,
        vhost: String,
        auth_mechanism: String,
        client_properties: FieldTable,
        frame_max: u32,
        channel_max: u16,
        heartbeat: u16,
    ) -> ConnectionInfo {
        let connected_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        ConnectionInfo {
            id,
            name: format!("{peer} -> {local}"),
            peer,
            local,
            user,
            vhost,
            auth_mechanism,
            client_properties,
            connected_at,
            frame_max,
            channel_max,
            heartbeat,
            ssl: std::sync::atomic::AtomicBool::new(false),
            channels: Mutex::new(BTreeMap::new()),
            events: Mutex::new(None),
        }
    }

    /// Where [`ConnectionInfo::close_forced`] reaches the connection: its event channel,
    /// which its task reads anyway (no further wake-up source in its loop).
    pub fn set_events(&self, events: crate::queue::EventSink) {
        *lock(&self.events) = Some(events);
    }

    /// Asks the connection to close itself with `320 CONNECTION_FORCED - {reason}`.
    pub fn close_forced(&self, reason: impl Into<String>) {
        if let Some(events) = lock(&self.events).as_ref() {
            let _ = events.send(crate::queue::QueueEvent::CloseForced(reason.into()));
        }
    }

    /// The open channels, by number.
    pub fn channels(&self) -> Vec<Arc<ChannelInfo>> {
        lock(&self.channels).values().cloned().collect()
    }

    /// Lists `info` among this connection's channels until the guard is dropped.
    pub fn register_channel(self: &Arc<Self>, info: Arc<ChannelInfo>) -> ChannelRegistration {
        lock(&self.channels).insert(info.number, info.clone());
        ChannelRegistration {
            conn: self.clone(),
            info,
        }
    }
}

/// Keeps a channel listed; unlists it when dropped.
#[derive(Debug)]
pub struct ChannelRegistration {
    conn: Arc<ConnectionInfo>,
    info: Arc<ChannelInfo>,
}

impl Drop for ChannelRegistration {
    fn drop(&mut self) {
        let mut channels = lock(&self.conn.channels);
        if channels
            .get(&self.info.number)
            .is_some_and(|c| Arc::ptr_eq(c, &self.info))
        {
            channels.remove(&self.info.number);
        }
    }
}

/// What the management API shows of a channel.
#[derive(Debug)]
pub struct ChannelInfo {
    /// Channel number.
    pub number: u16,
    /// Deliveries not yet settled.
    pub unacked: AtomicU64,
    /// `basic.qos global=false` prefetch.
    pub prefetch: AtomicU32,
    /// `basic.qos global=true` prefetch.
    pub global_prefetch: AtomicU32,
    /// In confirm mode.
    pub confirm: AtomicBool,
    /// In tx mode.
    pub transactional: AtomicBool,
    /// Closed by the broker, waiting for the client's `close-ok`.
    pub closing: AtomicBool,
    consumers: Mutex<BTreeMap<u64, ConsumerInfo>>,
}

impl ChannelInfo {
    /// A fresh channel.
    pub fn new(number: u16) -> ChannelInfo {
        ChannelInfo {
            number,
            unacked: AtomicU64::new(0),
            prefetch: AtomicU32::new(0),
            global_prefetch: AtomicU32::new(0),
            confirm: AtomicBool::new(false),
            transactional: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            consumers: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records the number of unsettled deliveries.
    #[inline]
    pub fn set_unacked(&self, n: usize) {
        self.unacked.store(n as u64, Ordering::Relaxed);
    }

    /// The consumers, in the order they started.
    pub fn consumers(&self) -> Vec<ConsumerInfo> {
        lock(&self.consumers).values().cloned().collect()
    }

    /// How many consumers.
    pub fn consumer_count(&self) -> usize {
        lock(&self.consumers).len()
    }

    /// Lists a consumer until the returned guard (and all its clones) are dropped.
    pub fn register_consumer(self: &Arc<Self>, consumer: ConsumerInfo) -> ConsumerRegistration {
        let id = consumer.id;
        lock(&self.consumers).insert(id, consumer);
        ConsumerRegistration(Arc::new(ConsumerGuard {
            channel: self.clone(),
            id,
        }))
    }
}

/// What the management API shows of a consumer.
#[derive(Debug, Clone)]
pub struct ConsumerInfo {
    /// Broker-wide consumer id.
    pub id: u64,
    /// Its tag.
    pub tag: Arc<str>,
    /// The queue it consumes from.
    pub queue: Arc<str>,
    /// Manual acknowledgement.
    pub ack_required: bool,
    /// Exclusive consumer.
    pub exclusive: bool,
    /// Its prefetch (0 = unlimited).
    pub prefetch: u32,
    /// Its `basic.consume` arguments, for the management API's consumer listings.
    pub arguments: FieldTable,
}

/// Keeps a consumer listed while any clone of it lives.
#[derive(Debug, Clone)]
pub struct ConsumerRegistration(#[allow(dead_code)] Arc<ConsumerGuard>);

#[derive(Debug)]
struct ConsumerGuard {
    channel: Arc<ChannelInfo>,
    id: u64,
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        lock(&self.channel.consumers).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guards_unregister() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let conn = Arc::new(ConnectionInfo::new(
            1,
            addr,
            addr,
            "guest".into(),
            "/".into(),
            "PLAIN".into(),
            FieldTable::new(),
            0,
            0,
            0,
        ));
        let ch = Arc::new(ChannelInfo::new(1));
        let reg = conn.register_channel(ch.clone());
        let c = ch.register_consumer(ConsumerInfo {
            id: 7,
            tag: "t".into(),
            queue: "q".into(),
            ack_required: true,
            exclusive: false,
            prefetch: 1,
            arguments: FieldTable::new(),
        });
        let c2 = c.clone();
        assert_eq!(conn.channels().len(), 1);
        drop(c);
        assert_eq!(ch.consumer_count(), 1);
        drop(c2);
        assert_eq!(ch.consumer_count(), 0);
        // A newer channel with the same number is not removed by the old guard.
        let newer = Arc::new(ChannelInfo::new(1));
        let reg2 = conn.register_channel(newer);
        drop(reg);
        assert_eq!(conn.channels().len(), 1);
        drop(reg2);
        assert!(conn.channels().is_empty());
    }
}
