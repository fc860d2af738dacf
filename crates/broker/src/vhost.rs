//! One virtual host: its queues, exchanges, bindings, policies and limits. The vhosts
//! themselves are kept by `vhosts.rs`.
//!
//! Both maps are `DashMap`s. A map guard is only ever held for a lookup or an insert and
//! never across an `.await` (clippy's `await-holding-invalid-types` enforces it), so a
//! queue task, which is where all the waiting happens, never blocks the registry.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use minimq_protocol::{FieldTable, FieldValue, ReplyCode};

use crate::error::{AmqpError, AmqpResult};
use crate::exchange::{Binding, Destination, Exchange, ExchangeKind};
use crate::policy::{merged_definition, Kind, Policies, Policy, Scope};
use crate::queue::{
    self, AppliedPolicy, QueueArgs, QueueCommand, QueueHandle, QueueHost, QueueRef, QueueType,
};
use crate::store::{
    BindingDef, ExchangeDef, MetaWait, ParamDef, RecoveredMessage, RecoveredQueue, Store,
};
use crate::trace::TRACE_EXCHANGE;

/// Exchanges every vhost has from the start, and whether each is internal (the trace
/// exchange takes only what the broker publishes to it).
const BUILTIN_EXCHANGES: &[(&str, ExchangeKind, bool)] = &[
    ("", ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    (TRACE_EXCHANGE, ExchangeKind::Topic, true),
];

/// What a queue declare asks for.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Name (already generated when the client left it empty).
    pub name: String,
    /// Durable.
    pub durable: bool,
    /// Exclusive to this connection.
    pub exclusive: bool,
    /// Auto-delete.
    pub auto_delete: bool,
    /// Arguments.
    pub arguments: FieldTable,
}

/// A default-exchange route a channel looked up last (see [`VHost::route_default`]).
#[derive(Debug)]
pub struct DefaultRoute {
    /// The channel's shared routing key (its last publish's, `channel/content.rs`):
    /// compared by pointer.
    routing_key: Arc<str>,
    version: u64,
    queue: Option<QueueHandle>,
}

/// A virtual host.
pub struct VHost {
    /// Its name (`/`, ...), for error texts and the records it writes.
    name: Arc<str>,
    queues: DashMap<Arc<str>, QueueHandle>,
    /// Bumped after every change to `queues` (see [`VHost::route_default`]).
    queues_version: AtomicU64,
    exchanges: DashMap<Arc<str>, Arc<Exchange>>,
    /// What its queue tasks are given to reach it (see [`VHostLink`]).
    queue_host: Arc<dyn QueueHost>,
    store: Option<Arc<Store>>,
    /// Its policies (`policy.rs`), applied to its queues as they are declared and again
    /// whenever a policy changes.
    pub policies: Policies,
    /// Its operator policies, applied with (and capping) its policies.
    pub operator_policies: Policies,
    /// Its limits (`max-connections`, `max-queues`), set through the management API.
    limits: std::sync::Mutex<VHostLimits>,
    /// Its description and tags (kept durably by `vhosts.rs`).
    metadata: std::sync::Mutex<crate::vhosts::VHostMetadata>,
    /// Firehose tracing is on (`trace.rs`): read with one relaxed load per publish and
    /// per delivery; not kept across a restart, as in RabbitMQ.
    tracing: AtomicBool,
}

/// The store component vhost limits are kept under (one value per vhost).
const LIMITS_COMPONENT: &str = "vhost-limits";

/// A vhost's limits, RabbitMQ's `max-connections` and `max-queues` (`None`: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VHostLimits {
    /// Most connections open to the vhost at once.
    pub max_connections: Option<u64>,
    /// Most queues in the vhost.
    pub max_queues: Option<u64>,
}

impl VHostLimits {
    /// The limit named as in the API (`max-connections`, `max-queues`), mutable.
    pub fn slot(&mut self, name: &str) -> Option<&mut Option<u64>> {
        match name {
            "max-connections" => Some(&mut self.max_connections),
            "max-queues" => Some(&mut self.max_queues),
            _ => None,
        }
    }

    /// As RabbitMQ lists them: `{"max-queues":N,"max-connections":N}`, only those set.
    pub fn to_json(self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let Some(n) = self.max_queues {
            m.insert("max-queues".into(), n.into());
        }
        if let Some(n) = self.max_connections {
            m.insert("max-connections".into(), n.into());
        }
        m
    }

    fn from_json(v: &serde_json::Value) -> VHostLimits {
        let get = |k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        VHostLimits {
            max_connections: get("max-connections"),
            max_queues: get("max-queues"),
        }
    }
}

/// A queue task's way to its vhost. Weak: the vhost holds its queues' handles, a queue
/// task lives as long as its handles, so a strong reference back would keep both alive
/// forever. A vhost that is gone routes nowhere and has nothing to forget.
struct VHostLink(Weak<VHost>);

impl QueueHost for VHostLink {
    fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) -> AmqpResult<()> {
        match self.0.upgrade() {
            Some(vhost) => vhost.route(exchange, routing_key, headers, out),
            None => Ok(()),
        }
    }

    fn forget_queue(&self, queue: &QueueHandle) {
        if let Some(vhost) = self.0.upgrade() {
            vhost.forget_queue(queue);
        }
    }
}

static NAME_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random name with RabbitMQ's shape, e.g. `amq.gen-JzTY20BRgKO-HjmUJj0wLg`.
pub fn generate_name(prefix: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut rng = rand::thread_rng();
    let _ = NAME_COUNTER.fetch_add(1, Ordering::Relaxed);
    let s: String = (0..22)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{s}")
}

impl VHost {
    /// The vhost `name` with the built-in exchanges, keeping durable objects in `store`
    /// if given.
    pub fn new(name: &str, store: Option<Arc<Store>>) -> Arc<VHost> {
        Arc::new_cyclic(|me| {
            let vhost = VHost {
                name: name.into(),
                queues: DashMap::new(),
                queues_version: AtomicU64::new(0),
                exchanges: DashMap::new(),
                queue_host: Arc::new(VHostLink(me.clone())),
                store,
                policies: Policies::default(),
                operator_policies: Policies::default(),
                limits: std::sync::Mutex::new(VHostLimits::default()),
                metadata: Default::default(),
                tracing: AtomicBool::new(false),
            };
            for (name, kind, internal) in BUILTIN_EXCHANGES {
                let e = Exchange::new(name, *kind, true, false, *internal, FieldTable::new());
                vhost.exchanges.insert((*name).into(), Arc::new(e));
            }
            vhost
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its name, shared.
    pub fn name_arc(&self) -> &Arc<str> {
        &self.name
    }

    /// Its description and tags.
    pub fn metadata(&self) -> crate::vhosts::VHostMetadata {
        self.metadata
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces its description and tags (the caller stores them).
    pub fn set_metadata(&self, metadata: crate::vhosts::VHostMetadata) {
        *self.metadata.lock().unwrap_or_else(|e| e.into_inner()) = metadata;
    }

    /// Whether firehose tracing is on. Relaxed: a publish or delivery racing with the
    /// switch may go either way, as a channel refreshing its trace state does in
    /// RabbitMQ.
    pub fn is_tracing(&self) -> bool {
        self.tracing.load(Ordering::Relaxed)
    }

    /// Turns firehose tracing on or off.
    pub fn set_tracing(&self, on: bool) {
        self.tracing.store(on, Ordering::Relaxed);
    }

    /// Publishes a trace message (`trace.rs`) through the trace exchange, internal as it
    /// is, to the queues bound to it. It does not wait for room in them: tracing is
    /// for looking, and must not hold up the publisher or consumer it traces.
    pub fn publish_trace(&self, message: crate::message::Message) {
        let Some(exchange) = self.exchange(TRACE_EXCHANGE) else {
            return;
        };
        let mut queues = Vec::new();
        self.route_from(exchange, &message.routing_key, None, &mut queues);
        let message = Arc::new(message);
        for q in queues {
            q.publish_now(vec![queue::Publish {
                message: message.clone(),
                confirm: None,
            }]);
        }
    }

    /// RabbitMQ's `augment_declare_args`: a `queue.declare` that names no `x-queue-type`
    /// gets the vhost's default queue type, when the queue can be of that type (a
    /// quorum queue must be durable, not exclusive, not auto-delete). Before the
    /// declare's checks, so a redeclare is compared with the type it would get.
    pub fn apply_default_queue_type(&self, spec: &mut QueueSpec) {
        if spec.arguments.get("x-queue-type").is_some() {
            return;
        }
        let Some(kind) = self.metadata().default_queue_type else {
            return;
        };
        // Quorum queues and streams are durable, not exclusive, not auto-delete
        // (RabbitMQ's `is_compatible` of each type).
        let compatible =
            kind == "classic" || (spec.durable && !spec.exclusive && !spec.auto_delete);
        if compatible {
            spec.arguments
                .insert("x-queue-type", FieldValue::from(kind.as_str()));
        }
    }

    /// Removes everything the vhost holds, for its deletion: every queue (its task
    /// stopped, its consumers cancelled, its stored messages dropped), every exchange
    /// but the built-in ones, every binding, its policies and limits, each durably.
    pub async fn destroy(&self) -> std::io::Result<()> {
        for q in self.queues() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            let delete = QueueCommand::Delete {
                if_unused: false,
                if_empty: false,
                reply,
            };
            if q.send(delete).await {
                let _ = rx.await;
            }
            if let Some(done) = self.forget_queue(&q) {
                done.done().await?;
            }
        }
        for e in self.exchanges() {
            if BUILTIN_EXCHANGES.iter().any(|(n, ..)| *n == &*e.name) {
                continue;
            }
            if let Some(done) = self.unstore_exchange(&e) {
                done.done().await?;
            }
            self.exchanges.remove(&*e.name);
            self.forget_destination(&Destination::Exchange(e.name.clone()));
        }
        for scope in [Scope::Policy, Scope::Operator] {
            for p in self.policy_set(scope).all() {
                self.delete_policy(scope, &p.name).await?;
            }
        }
        self.set_limits(VHostLimits::default()).await
    }

    /// Every exchange, built-in ones included, by name.
    pub fn exchanges(&self) -> Vec<Arc<Exchange>> {
        let mut all: Vec<Arc<Exchange>> =
            self.exchanges.iter().map(|e| e.value().clone()).collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// The queue named `name`.
    pub fn queue(&self, name: &str) -> Option<QueueHandle> {
        self.queues.get(name).map(|q| q.clone())
    }

    /// Marks the queue registry as changed: routes cached by [`VHost::route_default`]
    /// are looked up again. Called after the change, so a lookup that read the version
    /// before it cannot keep a result from before it.
    fn queues_changed(&self) {
        self.queues_version.fetch_add(1, Ordering::Release);
    }

    /// The queue a publish to the default exchange with `routing_key` goes to, as
    /// [`VHost::route`] answers it, but from `cache` (a channel's last such route) while
    /// no queue was created or removed since: a publisher sends to the same queue over
    /// and over. The cache knows `routing_key` by pointer: callers pass the routing key
    /// they share between publishes (a different `Arc` of the same text only costs a
    /// lookup).
    pub fn route_default(
        &self,
        routing_key: &Arc<str>,
        cache: &mut Option<DefaultRoute>,
    ) -> Option<QueueHandle> {
        // Read before the lookup: a change after this read makes the entry stale.
        let version = self.queues_version.load(Ordering::Acquire);
        if let Some(c) = cache {
            if c.version == version && Arc::ptr_eq(&c.routing_key, routing_key) {
                return c.queue.clone();
            }
        }
        let queue = self.queue(routing_key);
        *cache = Some(DefaultRoute {
            routing_key: routing_key.clone(),
            version,
            queue: queue.clone(),
        });
        queue
    }

    /// Every queue, for listings.
    pub fn queues(&self) -> Vec<QueueHandle> {
        self.queues.iter().map(|q| q.value().clone()).collect()
    }

    /// Declares a queue for connection `conn_id`: creates it, or checks that the existing
    /// one is equivalent and accessible. Answers the handle and whether it was created.
    ///
    /// A durable queue is recorded first and registered only once its definition is on
    /// disk: a queue whose record failed never existed (541, nothing to take back). The
    /// record is awaited with no registry guard held.
    pub async fn declare_queue(
        &self,
        spec: QueueSpec,
        conn_id: u64,
    ) -> AmqpResult<(QueueHandle, bool)> {
        let args = QueueArgs::parse(QueueRef::new(&spec.name, &self.name), &spec.arguments)?;
        if matches!(args.queue_type, QueueType::Quorum | QueueType::Stream) {
            // RabbitMQ 3.10's order and words (`rabbit_queue_type_util` checks).
            let bad = if spec.auto_delete {
                Some("auto-delete")
            } else if spec.exclusive {
                Some("exclusive-owner")
            } else if !spec.durable {
                Some("non-durable")
            } else {
                None
            };
            if let Some(prop) = bad {
                return Err(AmqpError::precondition(format!(
                    "invalid property '{prop}' for queue '{}' in vhost '{}'",
                    spec.name, self.name
                )));
            }
        }
        if args.queue_type == QueueType::Stream {
            check_stream(&args, self.store.is_some())?;
        }
        if let Some(q) = self.queue(&spec.name) {
            return existing_queue(q, &spec, conn_id, &self.name);
        }
        if let Some(max) = self.limits().max_queues {
            if self.queues.len() as u64 >= max {
                return Err(AmqpError::precondition(format!(
                    "cannot declare queue '{}': queue limit in vhost '{}' ({max}) is reached",
                    spec.name, self.name
                )));
            }
        }
        // Exclusive queues die with their connection, so they are never stored
        // (RabbitMQ deletes them at restart too).
        let store_id = match (&self.store, spec.durable && !spec.exclusive) {
            (Some(store), true) => Some(
                store
                    .add_queue(&self.name, &spec.name, spec.auto_delete, &spec.arguments)
                    .await
                    .map_err(|e| store_failed("queue", &spec.name, e))?,
            ),
            _ => None,
        };
        // One allocation for the name, shared by the registry's key and the queue.
        let name: Arc<str> = spec.name.as_str().into();
        let raced = match self.queues.entry(name.clone()) {
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(v) => {
                let owner = spec.exclusive.then_some(conn_id);
                let (handle, rx) = QueueHandle::new(
                    self.name.clone(),
                    name,
                    spec.durable,
                    owner,
                    spec.auto_delete,
                    spec.arguments,
                    args,
                    store_id,
                );
                handle.info().set_policy(self.applied_policy(&handle));
                v.insert(handle.clone());
                self.queues_changed();
                self.spawn_queue(handle.clone(), rx, Vec::new());
                return Ok((handle, true));
            }
        };
        // Another connection declared it while this one's record was written: this
        // record names a queue that never existed, so it goes again.
        if let (Some(store), Some(id)) = (&self.store, store_id) {
            if let Err(e) = store.remove_queue(id).done().await {
                tracing::error!(error = %e, queue = %spec.name, "cannot take back the record of a queue declared twice at once");
            }
        }
        existing_queue(raced, &spec, conn_id, &self.name)
    }

    /// Looks a queue up for connection `conn_id`: 404 when missing, 405 when exclusive to
    /// another connection.
    pub fn queue_for(&self, name: &str, conn_id: u64) -> AmqpResult<QueueHandle> {
        let q = self
            .queue(name)
            .ok_or_else(|| AmqpError::no_queue(name, &self.name))?;
        check_failed(&q)?;
        check_access(&q, conn_id, &self.name)?;
        Ok(q)
    }

    /// Removes `handle` from the registry if it is still the registered incarnation, and
    /// its bindings. A durable queue's removal is handed to the metadata log at once (so
    /// it is ordered before any later declare); the answer tells when it is on disk, for
    /// callers that answer a client (a caller that does not wait still gets the failure
    /// logged by the metadata thread).
    pub fn forget_queue(&self, handle: &QueueHandle) -> Option<MetaWait> {
        let removed = self
            .queues
            .remove_if(handle.name().as_ref(), |_, q| q.same(handle))
            .is_some();
        if !removed {
            return None;
        }
        self.queues_changed();
        let done = match (&self.store, handle.info().store_id) {
            (Some(store), Some(id)) => Some(store.remove_queue(id)),
            _ => None,
        };
        self.forget_destination(&Destination::Queue(handle.name().clone()));
        done
    }

    /// What the policy and the operator policy that match `queue` (if any) make of its
    /// declared arguments.
    fn applied_policy(&self, queue: &QueueHandle) -> AppliedPolicy {
        let info = queue.info();
        let policy = self.policies.select(Kind::Queue, queue.name());
        let op = self.operator_policies.select(Kind::Queue, queue.name());
        let (settings, definition) = match (&policy, &op) {
            (None, None) => {
                return AppliedPolicy {
                    name: None,
                    operator: None,
                    definition: None,
                    args: info.args.clone(),
                }
            }
            (Some(p), None) | (None, Some(p)) => (
                p.queue.clone(),
                serde_json::Value::Object(p.definition.clone()),
            ),
            (Some(p), Some(o)) => (
                p.queue.capped_by(&o.queue),
                merged_definition(&p.definition, &o.definition),
            ),
        };
        let name = |p: &Option<Arc<Policy>>| p.as_ref().map(|p| Arc::from(p.name.as_str()));
        AppliedPolicy {
            name: name(&policy),
            operator: name(&op),
            definition: Some(Arc::new(definition)),
            args: settings.apply_to(&info.args, &info.arguments),
        }
    }

    /// Applies the policies anew to every queue, telling the queues whose arguments
    /// changed (a lower `max-length` drops at once, a new `expires` counts from now on).
    fn reapply_policies(&self) {
        for q in self.queues() {
            if q.info().set_policy(self.applied_policy(&q)) {
                q.send_now(QueueCommand::PolicyChanged);
            }
        }
        let exchanges: Vec<Arc<Exchange>> =
            self.exchanges.iter().map(|e| e.value().clone()).collect();
        for e in exchanges {
            e.set_policy_alternate(self.policy_alternate(&e.name));
        }
    }

    /// The alternate exchange named by the policy that applies to exchange `name`.
    fn policy_alternate(&self, name: &str) -> Option<Arc<str>> {
        self.policies
            .select(Kind::Exchange, name)
            .and_then(|p| p.alternate_exchange.as_deref().map(Arc::from))
    }

    /// The policies of `scope`.
    pub fn policy_set(&self, scope: Scope) -> &Policies {
        match scope {
            Scope::Policy => &self.policies,
            Scope::Operator => &self.operator_policies,
        }
    }

    /// Adds or replaces a policy of `scope`, durably first when the broker has a data
    /// directory; answers whether it is new. Applied to existing queues before it
    /// answers.
    pub async fn put_policy(&self, scope: Scope, policy: Policy) -> std::io::Result<bool> {
        if let Some(store) = &self.store {
            let value =
                serde_json::to_vec(&policy.to_json(&self.name)).map_err(std::io::Error::other)?;
            store
                .put_param(ParamDef {
                    component: scope.component().into(),
                    vhost: self.name.to_string(),
                    name: policy.name.clone(),
                    value: value.into(),
                })
                .await?;
        }
        let created = self.policy_set(scope).put(policy);
        self.reapply_policies();
        Ok(created)
    }

    /// Removes a policy of `scope` (durably first); answers whether there was one.
    pub async fn delete_policy(&self, scope: Scope, name: &str) -> std::io::Result<bool> {
        if self.policy_set(scope).get(name).is_none() {
            return Ok(false);
        }
        if let Some(store) = &self.store {
            store
                .remove_param(scope.component(), &self.name, name)
                .await?;
        }
        let existed = self.policy_set(scope).delete(name);
        self.reapply_policies();
        Ok(existed)
    }

    /// The vhost's limits.
    pub fn limits(&self) -> VHostLimits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the vhost's limits, durably first.
    pub async fn set_limits(&self, limits: VHostLimits) -> std::io::Result<()> {
        let vhost = &*self.name;
        if let Some(store) = &self.store {
            if limits == VHostLimits::default() {
                store.remove_param(LIMITS_COMPONENT, vhost, vhost).await?;
            } else {
                let value = serde_json::Value::Object(limits.to_json()).to_string();
                store
                    .put_param(ParamDef {
                        component: LIMITS_COMPONENT.into(),
                        vhost: vhost.into(),
                        name: vhost.into(),
                        value: value.into_bytes().into(),
                    })
                    .await?;
            }
        }
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = limits;
        Ok(())
    }

    /// Takes back the policies and operator policies stored before a restart (before the queues are restored,
    /// so they start with them applied). A stored policy that no longer parses is logged
    /// and left out.
    pub fn restore_policies(&self, params: &[ParamDef]) {
        for def in params.iter().filter(|p| *p.vhost == *self.name) {
            if def.component == LIMITS_COMPONENT {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&def.value) {
                    *self.limits.lock().unwrap_or_else(|e| e.into_inner()) =
                        VHostLimits::from_json(&v);
                }
                continue;
            }
            let scope = match def.component.as_str() {
                c if c == Scope::Policy.component() => Scope::Policy,
                c if c == Scope::Operator.component() => Scope::Operator,
                _ => continue,
            };
            let parsed = serde_json::from_slice::<serde_json::Value>(&def.value)
                .map_err(|e| e.to_string())
                .and_then(|v| Policy::parse_in(scope, &def.name, &v));
            match parsed {
                Ok(p) => {
                    self.policy_set(scope).put(p);
                }
                Err(e) => {
                    tracing::error!(policy = %def.name, error = %e, "stored policy not understood; left out")
                }
            }
        }
    }

    /// Recreates the durable queues recovered from the store, with their messages (the
    /// caller hands each vhost its own).
    pub fn restore(&self, recovered: Vec<RecoveredQueue>) {
        for q in recovered {
            let args =
                QueueArgs::parse_stored(QueueRef::new(&q.def.name, &self.name), &q.def.arguments);
            let (handle, rx) = QueueHandle::new(
                self.name.clone(),
                q.def.name.as_str().into(),
                true,
                None,
                q.def.auto_delete,
                q.def.arguments.clone(),
                args,
                Some(q.def.id),
            );
            handle.info().set_policy(self.applied_policy(&handle));
            self.queues
                .insert(q.def.name.as_str().into(), handle.clone());
            self.queues_changed();
            self.spawn_queue(handle, rx, q.messages);
        }
    }

    /// Starts a queue's task: a stream's own (its log in the data directory), or the
    /// classic and quorum queues' one with the messages recovered for it.
    fn spawn_queue(
        &self,
        handle: QueueHandle,
        rx: queue::QueueInbox,
        messages: Vec<RecoveredMessage>,
    ) {
        if handle.info().args.queue_type == QueueType::Stream {
            if let (Some(store), Some(id)) = (&self.store, handle.info().store_id) {
                queue::stream::spawn(handle, rx, store.stream_place(id));
                return;
            }
        }
        queue::actor::spawn(
            handle,
            rx,
            self.queue_host.clone(),
            self.store.clone(),
            messages,
        );
    }

    /// Stops every queue task at once, logging nothing ([`crate::Broker::crash`]).
    pub async fn halt_queues(&self) {
        for q in self.queues() {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if q.send(QueueCommand::Halt { reply }).await {
                let _ = rx.await;
            }
        }
    }

    /// Graceful stop of every queue: durable queues log which messages were delivered
    /// before, then their tasks end.
    pub async fn shutdown_queues(&self) {
        let queues = self.queues();
        for q in queues {
            let (reply, rx) = tokio::sync::oneshot::channel();
            if q.send(QueueCommand::Shutdown { reply }).await {
                let _ = rx.await;
            }
        }
    }

    /// Deletes a queue; answers its ready count (0 when it did not exist).
    pub async fn delete_queue(
        &self,
        name: &str,
        conn_id: u64,
        if_unused: bool,
        if_empty: bool,
    ) -> AmqpResult<u32> {
        let Some(q) = self.queue(name) else {
            return Ok(0);
        };
        check_access(&q, conn_id, &self.name)?;
        let (reply, rx) = tokio::sync::oneshot::channel();
        if !q
            .send(QueueCommand::Delete {
                if_unused,
                if_empty,
                reply,
            })
            .await
        {
            self.unstore_queue(&q).await?;
            return Ok(0);
        }
        let n = rx.await.unwrap_or(Ok(0))?;
        self.unstore_queue(&q).await?;
        Ok(n)
    }

    /// Forgets a deleted queue and answers once its removal is on disk (541 if it could
    /// not be recorded: the queue is gone until a restart and may come back after it).
    async fn unstore_queue(&self, q: &QueueHandle) -> AmqpResult<()> {
        if let Some(done) = self.forget_queue(q) {
            done.done()
                .await
                .map_err(|e| store_failed("queue deletion", q.name(), e))?;
        }
        Ok(())
    }

    /// How many exchanges there are (built-in ones included), for listings.
    pub fn exchange_count(&self) -> usize {
        self.exchanges.len()
    }

    /// The exchange named `name`.
    pub fn exchange(&self, name: &str) -> Option<Arc<Exchange>> {
        self.exchanges.get(name).map(|e| e.clone())
    }

    /// Declares an exchange: creates it, or checks the existing one is equivalent. A
    /// durable one is registered only once it is on disk (541 otherwise, and it does not
    /// exist).
    pub async fn declare_exchange(
        &self,
        name: &str,
        kind: &str,
        durable: bool,
        auto_delete: bool,
        internal: bool,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        let kind_parsed = ExchangeKind::parse(kind)?;
        if let Some(existing) = self.exchange(name) {
            let check = |field: &str, received: String, current: String| {
                if received == current {
                    Ok(())
                } else {
                    Err(AmqpError::precondition(format!(
                        "inequivalent arg '{field}' for exchange '{name}' in vhost '{}': received '{received}' but current is '{current}'",
                    self.name
                    )))
                }
            };
            check("type", kind.to_string(), existing.kind.name().to_string())?;
            check("durable", durable.to_string(), existing.durable.to_string())?;
            check(
                "auto_delete",
                auto_delete.to_string(),
                existing.auto_delete.to_string(),
            )?;
            check(
                "internal",
                internal.to_string(),
                existing.internal.to_string(),
            )?;
            return Ok(());
        }
        if name.starts_with("amq.") {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!("exchange name '{name}' contains reserved prefix 'amq.*'"),
            ));
        }
        if let (Some(store), true) = (&self.store, durable) {
            let def = ExchangeDef {
                vhost: self.name.to_string(),
                name: name.to_string(),
                kind: kind.to_string(),
                auto_delete,
                internal,
                arguments: arguments.clone(),
            };
            store
                .put_exchange(def)
                .await
                .map_err(|e| store_failed("exchange", name, e))?;
        }
        self.exchanges.entry(name.into()).or_insert_with(|| {
            let e = Exchange::new(name, kind_parsed, durable, auto_delete, internal, arguments);
            e.set_policy_alternate(self.policy_alternate(name));
            Arc::new(e)
        });
        Ok(())
    }

    /// Deletes an exchange (`if_unused`: only without bindings). A durable one is
    /// forgotten on disk first: if that fails (541) it still exists, here and on disk.
    pub async fn delete_exchange(&self, name: &str, if_unused: bool) -> AmqpResult<()> {
        if name.is_empty() || name.starts_with("amq.") {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!("operation not permitted on the default exchange or the built-in exchange '{name}'"),
            ));
        }
        let Some(e) = self.exchange(name) else {
            return Err(AmqpError::no_exchange(name, &self.name));
        };
        if if_unused && e.has_bindings() {
            return Err(AmqpError::precondition(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        if let Some(done) = self.unstore_exchange(&e) {
            done.done()
                .await
                .map_err(|err| store_failed("exchange deletion", name, err))?;
        }
        self.exchanges.remove(name);
        self.forget_destination(&Destination::Exchange(e.name.clone()));
        Ok(())
    }

    /// Hands a durable exchange's removal to the metadata log (in order with every
    /// other change); a caller that does not wait still gets a failure logged.
    fn unstore_exchange(&self, e: &Exchange) -> Option<MetaWait> {
        match (&self.store, e.durable) {
            (Some(store), true) => Some(store.remove_exchange(&self.name, &e.name)),
            _ => None,
        }
    }

    /// Whether a binding from `source` to `destination` outlives a restart: both ends
    /// durable (a queue kept in the store).
    fn durable_binding(&self, source: &Exchange, destination: &Destination) -> bool {
        if self.store.is_none() || !source.durable {
            return false;
        }
        match destination {
            Destination::Queue(q) => self.queue(q).is_some_and(|q| q.info().store_id.is_some()),
            Destination::Exchange(x) => self.exchange(x).is_some_and(|x| x.durable),
        }
    }

    fn binding_def(
        &self,
        source: &Exchange,
        destination: &Destination,
        key: &str,
        arguments: &FieldTable,
    ) -> BindingDef {
        let (to_exchange, name) = match destination {
            Destination::Queue(q) => (false, q.to_string()),
            Destination::Exchange(x) => (true, x.to_string()),
        };
        BindingDef {
            vhost: self.name.to_string(),
            source: source.name.to_string(),
            to_exchange,
            destination: name,
            key: key.to_string(),
            arguments: arguments.clone(),
        }
    }

    async fn store_binding(
        &self,
        source: &Exchange,
        destination: &Destination,
        key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        if let (Some(store), true) = (&self.store, self.durable_binding(source, destination)) {
            let def = self.binding_def(source, destination, key, arguments);
            store
                .put_binding(def)
                .await
                .map_err(|e| store_failed("binding", &source.name, e))?;
        }
        Ok(())
    }

    /// Forgets a binding on disk; answers once that is durable (541 otherwise).
    async fn unstore_binding(
        &self,
        source: &Exchange,
        destination: &Destination,
        key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        if let (Some(store), true) = (&self.store, self.durable_binding(source, destination)) {
            let def = self.binding_def(source, destination, key, arguments);
            store
                .remove_binding(def)
                .done()
                .await
                .map_err(|e| store_failed("unbinding", &source.name, e))?;
        }
        Ok(())
    }

    /// Recreates the durable exchanges and bindings recorded in the store that belong to
    /// this vhost.
    pub fn restore_topology(&self, exchanges: &[ExchangeDef], bindings: &[BindingDef]) {
        for e in exchanges.iter().filter(|e| *e.vhost == *self.name) {
            let e = e.clone();
            let Ok(kind) = ExchangeKind::parse(&e.kind) else {
                continue;
            };
            let x = Exchange::new(&e.name, kind, true, e.auto_delete, e.internal, e.arguments);
            x.set_policy_alternate(self.policy_alternate(&e.name));
            self.exchanges.insert(e.name.as_str().into(), Arc::new(x));
        }
        for b in bindings.iter().filter(|b| *b.vhost == *self.name) {
            let b = b.clone();
            let Some(source) = self.exchange(&b.source) else {
                continue;
            };
            let destination = if b.to_exchange {
                Destination::Exchange(b.destination.as_str().into())
            } else {
                Destination::Queue(b.destination.as_str().into())
            };
            source.bind(Binding {
                destination,
                key: b.key,
                arguments: b.arguments,
            });
        }
    }

    /// Binds `queue` to `exchange` (a durable binding once it is on disk).
    pub async fn bind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        let e = self.binding_exchange(exchange)?;
        let q = self.queue_for(queue, conn_id)?;
        let destination = Destination::Queue(q.name().clone());
        self.store_binding(&e, &destination, key, &arguments)
            .await?;
        e.bind(Binding {
            destination,
            key: key.to_string(),
            arguments,
        });
        Ok(())
    }

    /// Removes a binding (absent bindings are fine, as in RabbitMQ); a durable one is
    /// forgotten on disk first.
    pub async fn unbind(
        &self,
        queue: &str,
        exchange: &str,
        key: &str,
        arguments: &FieldTable,
        conn_id: u64,
    ) -> AmqpResult<()> {
        let e = self.binding_exchange(exchange)?;
        let q = self.queue_for(queue, conn_id)?;
        let destination = Destination::Queue(q.name().clone());
        self.unstore_binding(&e, &destination, key, arguments)
            .await?;
        e.unbind(&destination, key, arguments);
        self.auto_delete_exchange(&e);
        Ok(())
    }

    /// Binds exchange `destination` to exchange `source` (`exchange.bind`).
    pub async fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: FieldTable,
    ) -> AmqpResult<()> {
        let src = self.binding_exchange(source)?;
        let dst = self.binding_exchange(destination)?;
        let destination = Destination::Exchange(dst.name.clone());
        self.store_binding(&src, &destination, key, &arguments)
            .await?;
        src.bind(Binding {
            destination,
            key: key.to_string(),
            arguments,
        });
        Ok(())
    }

    /// Removes an exchange-to-exchange binding (`exchange.unbind`).
    pub async fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        arguments: &FieldTable,
    ) -> AmqpResult<()> {
        let src = self.binding_exchange(source)?;
        let dst = self.binding_exchange(destination)?;
        let destination = Destination::Exchange(dst.name.clone());
        self.unstore_binding(&src, &destination, key, arguments)
            .await?;
        src.unbind(&destination, key, arguments);
        self.auto_delete_exchange(&src);
        Ok(())
    }

    /// Deletes an auto-delete exchange once its last binding is gone.
    fn auto_delete_exchange(&self, e: &Exchange) {
        if e.auto_delete && !e.has_bindings() && !e.name.starts_with("amq.") && !e.name.is_empty() {
            self.exchanges.remove(&*e.name);
            // Not waited for: this runs inside other changes (an unbind, a deletion),
            // which answer for their own records; this one is ordered after them.
            let _ = self.unstore_exchange(e);
            self.forget_destination(&Destination::Exchange(e.name.clone()));
        }
    }

    /// Removes every binding to `destination` from every exchange.
    fn forget_destination(&self, destination: &Destination) {
        let exchanges: Vec<Arc<Exchange>> =
            self.exchanges.iter().map(|e| e.value().clone()).collect();
        for e in &exchanges {
            let had = e.has_bindings();
            e.unbind_all(destination);
            if had {
                self.auto_delete_exchange(e);
            }
        }
    }

    fn binding_exchange(&self, exchange: &str) -> AmqpResult<Arc<Exchange>> {
        if exchange.is_empty() {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                "operation not permitted on the default exchange",
            ));
        }
        self.exchange(exchange)
            .ok_or_else(|| AmqpError::no_exchange(exchange, &self.name))
    }

    /// Routes a publish: the queues it goes to (404 when the exchange does not exist).
    /// Follows exchange-to-exchange bindings and alternate exchanges, each exchange at
    /// most once per message, so cycles end.
    pub fn route(
        &self,
        exchange: &str,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) -> AmqpResult<()> {
        if exchange.is_empty() {
            if let Some(q) = self.queue(routing_key) {
                out.push(q);
            }
            return Ok(());
        }
        let e = self
            .exchange(exchange)
            .ok_or_else(|| AmqpError::no_exchange(exchange, &self.name))?;
        if e.internal {
            return Err(AmqpError::new(
                ReplyCode::AccessRefused,
                format!(
                    "cannot publish to internal exchange '{exchange}' in vhost '{}'",
                    self.name
                ),
            ));
        }
        self.route_from(e, routing_key, headers, out);
        Ok(())
    }

    /// Routes from exchange `first` with an explicit work list, as RabbitMQ's
    /// `rabbit_exchange:route1` does: not by recursion, because a chain of exchanges as
    /// long as clients care to bind would overflow the stack and abort the process.
    /// Every exchange enters the work list at most once per publish (the `seen` set,
    /// O(1) per check), so the work is bounded by the exchanges and bindings there are,
    /// and cycles end. An exchange's alternate exchange is used when that exchange's own
    /// bindings matched nothing (RabbitMQ's `process_alternate`, applied to the
    /// exchange's direct destinations): a binding to another exchange counts as a match
    /// even if nothing downstream of it takes the message.
    fn route_from(
        &self,
        first: Arc<Exchange>,
        routing_key: &str,
        headers: Option<&FieldTable>,
        out: &mut Vec<QueueHandle>,
    ) {
        // Small sets with no allocation for the usual publish (one exchange, a few queues).
        let mut seen = NameSet::default();
        let mut taken = NameSet::default();
        seen.insert(first.name.clone());
        let mut work = VecDeque::new();
        let mut current = Some(first);
        let mut destinations = Vec::new();
        while let Some(e) = current.take().or_else(|| work.pop_front()) {
            destinations.clear();
            e.route(routing_key, headers, &mut destinations);
            if destinations.is_empty() {
                if let Some(ae) = e.alternate_exchange() {
                    if !seen.contains(&ae) {
                        if let Some(next) = self.exchange(&ae) {
                            seen.insert(next.name.clone());
                            work.push_back(next);
                        }
                    }
                }
                continue;
            }
            for d in destinations.drain(..) {
                match d {
                    Destination::Queue(q) => {
                        if !taken.contains(&q) {
                            if let Some(handle) = self.queue(&q) {
                                taken.insert(q);
                                out.push(handle);
                            }
                        }
                    }
                    Destination::Exchange(x) => {
                        if !seen.contains(&x) {
                            if let Some(next) = self.exchange(&x) {
                                seen.insert(x);
                                work.push_back(next);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A set of exchange or queue names for one publish's routing: the first few inline, a
/// hash set past them, so routing a publish through one exchange to a few queues
/// allocates nothing for its bookkeeping.
#[derive(Default)]
struct NameSet {
    small: [Option<Arc<str>>; 4],
    big: Option<HashSet<Arc<str>>>,
}

impl NameSet {
    fn contains(&self, name: &str) -> bool {
        self.small.iter().flatten().any(|n| **n == *name)
            || self.big.as_ref().is_some_and(|b| b.contains(name))
    }

    /// Adds `name` (the caller checked it is not there yet).
    fn insert(&mut self, name: Arc<str>) {
        match self.small.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some(name),
            None => {
                self.big.get_or_insert_with(HashSet::new).insert(name);
            }
        }
    }
}

/// What RabbitMQ 3.10 refuses of a stream beyond its flags: a segment size over its
/// maximum. A broker without a data directory has nowhere to keep a stream's log and
/// refuses it (RabbitMQ always has one).
fn check_stream(args: &QueueArgs, has_store: bool) -> AmqpResult<()> {
    if args
        .stream_segment_bytes
        .is_some_and(|n| n > crate::store::stream::MAX_SEGMENT_BYTES)
    {
        return Err(AmqpError::precondition(
            "Exceeded max value for x-stream-max-segment-size-bytes",
        ));
    }
    if !has_store {
        return Err(AmqpError::precondition(
            "stream queues need a data directory (--data-dir)",
        ));
    }
    Ok(())
}

/// A declare that found the queue: answers it if accessible and equivalent.
fn existing_queue(
    q: QueueHandle,
    spec: &QueueSpec,
    conn_id: u64,
    vhost: &str,
) -> AmqpResult<(QueueHandle, bool)> {
    check_failed(&q)?;
    check_access(&q, conn_id, vhost)?;
    check_equivalent(&q, spec, vhost)?;
    Ok((q, false))
}

fn store_failed(what: &str, name: &str, e: std::io::Error) -> AmqpError {
    tracing::error!(error = %e, what, name, "cannot record in the store");
    AmqpError::new(
        ReplyCode::InternalError,
        format!("cannot record {what} '{name}': {e}"),
    )
}

/// A queue whose task failed is refused with RabbitMQ's text for a crashed queue; only
/// deleting it is allowed.
fn check_failed(q: &QueueHandle) -> AmqpResult<()> {
    if q.info().is_failed() {
        return Err(queue::crashed_error(q.queue_ref()));
    }
    Ok(())
}

fn check_access(q: &QueueHandle, conn_id: u64, vhost: &str) -> AmqpResult<()> {
    match q.info().exclusive_owner {
        Some(owner) if owner != conn_id => Err(AmqpError::locked(q.name(), vhost)),
        _ => Ok(()),
    }
}

fn check_equivalent(q: &QueueHandle, spec: &QueueSpec, vhost: &str) -> AmqpResult<()> {
    let info = q.info();
    let name = &spec.name;
    let flag = |field: &str, received: bool, current: bool| {
        if received == current {
            Ok(())
        } else {
            Err(AmqpError::precondition(format!(
                "inequivalent arg '{field}' for queue '{name}' in vhost '{vhost}': received '{received}' but current is '{current}'"
            )))
        }
    };
    // RabbitMQ (rabbit_amqqueue:assert_equivalence) does not compare `exclusive` as a
    // flag: it checks, before anything else, that the declaring owner (this connection
    // when `exclusive`, none otherwise) is the queue's owner, and answers 405 if not.
    // Another connection never gets here (`check_access`).
    if spec.exclusive != info.exclusive_owner.is_some() {
        return Err(AmqpError::locked(name, vhost));
    }
    flag("durable", spec.durable, info.durable)?;
    flag("auto_delete", spec.auto_delete, info.auto_delete)?;
    QueueArgs::check_equivalent(QueueRef::new(name, vhost), &info.arguments, &spec.arguments)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use minimq_protocol::{BasicProperties, FieldTable, ReplyCode};
    use tokio::sync::{mpsc, oneshot};

    use super::{QueueSpec, VHost};
    use crate::message::Message;
    use crate::queue::{ConfirmTicket, ConsumerSpec, Publish, QueueCommand, QueueEvent};

    fn spec(name: &str) -> QueueSpec {
        QueueSpec {
            name: name.into(),
            durable: false,
            exclusive: false,
            auto_delete: false,
            arguments: FieldTable::new(),
        }
    }

    async fn next_event(rx: &mut mpsc::UnboundedReceiver<QueueEvent>) -> QueueEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event in time")
            .expect("the sink is open")
    }

    /// A queue task that panics is noticed: its consumers are cancelled, a publish routed
    /// to it afterwards is nacked (not confirmed and dropped), and declaring it answers
    /// RabbitMQ's error for a crashed queue until it is deleted.
    #[tokio::test]
    async fn a_queue_task_that_panics_cancels_its_consumers_and_nacks_publishes() {
        let vhost = VHost::new("/", None);
        let (q, created) = vhost.declare_queue(spec("q"), 1).await.unwrap();
        assert!(created);
        let (sink, mut events) = mpsc::unbounded_channel();
        let (reply, answer) = oneshot::channel();
        assert!(
            q.send(QueueCommand::Consume {
                consumer: Box::new(ConsumerSpec {
                    id: 77,
                    tag: "ctag".into(),
                    conn_id: 1,
                    channel: 1,
                    no_ack: false,
                    exclusive: false,
                    prefetch: 0,
                    priority: 0,
                    channel_credit: None,
                    arguments: FieldTable::new(),
                    sink: sink.clone(),
                    room: std::sync::Arc::new(crate::queue::OutputRoom::new(usize::MAX)),
                }),
                reply,
            })
            .await
        );
        answer.await.unwrap().unwrap();

        q.panic_for_tests();
        let (reply, counts) = oneshot::channel();
        assert!(q.send(QueueCommand::Counts { reply }).await);
        assert!(counts.await.is_err(), "the task died on it");
        match next_event(&mut events).await {
            QueueEvent::Cancelled {
                channel: 1,
                consumer_tag,
                consumer_id: 77,
            } => assert_eq!(&*consumer_tag, "ctag"),
            other => panic!("expected the consumer cancelled, got {other:?}"),
        }

        let mut routed = Vec::new();
        vhost.route("", "q", None, &mut routed).unwrap();
        for target in routed {
            target
                .publish(vec![Publish {
                    message: std::sync::Arc::new(Message::new(
                        "".into(),
                        "q".into(),
                        BasicProperties::default(),
                        bytes::Bytes::from_static(b"lost?"),
                    )),
                    confirm: Some(ConfirmTicket {
                        sink: sink.clone(),
                        channel: 1,
                        seq: 1,
                    }),
                }])
                .await;
        }
        match next_event(&mut events).await {
            QueueEvent::Confirm {
                channel: 1,
                seq: 1,
                ok,
            } => assert!(!ok, "a publish no live queue took is nacked"),
            other => panic!("expected the confirm, got {other:?}"),
        }

        let err = vhost.declare_queue(spec("q"), 1).await.unwrap_err();
        assert_eq!(err.code, ReplyCode::NotFound);
        assert_eq!(
            err.text,
            "NOT_FOUND - queue 'q' in vhost '/' has crashed and failed to restart"
        );
        vhost.delete_queue("q", 1, false, false).await.unwrap();
        let (_, created) = vhost.declare_queue(spec("q"), 1).await.unwrap();
        assert!(created, "after a delete the name is free again");
    }
}
