//! The virtual hosts: the registry from name to [`VHost`], and their durable creation
//! and deletion.
//!
//! Who touches what: connections look their vhost up once, at `connection.open`, and
//! keep the `Arc<VHost>` for their life (nothing on the publish path names a vhost); the
//! management API and definitions look vhosts up per request. The map is a std
//! `RwLock`, held only for a lookup or an insert, never across an `.await`. Creates and
//! deletes are serialized by an async mutex so their records reach the metadata log in
//! the order the registry changes.
//!
//! Durability: a vhost is a setting record (component `vhost`) in the metadata log,
//! written before the vhost is registered. A deletion removes that record first; the
//! vhost's objects are removed after it. A crash between the two leaves objects whose
//! vhost has no record: they are removed at the next start ([`VHosts::restore`]), so a
//! deletion minimq has answered stays whole.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, RwLock};

use serde_json::Value;

use crate::store::{BindingDef, ExchangeDef, ParamDef, RecoveredQueue, Store, DEFAULT_VHOST};
use crate::vhost::VHost;

/// The store component vhosts are kept under (vhost and name both the vhost's name,
/// the value its metadata as JSON).
pub const VHOST_COMPONENT: &str = "vhost";

/// The store component of the marker that says this data directory has had its vhosts
/// set up: before it, `/` is created (a directory of an earlier version has its objects
/// in `/`); after it, a deleted `/` stays deleted, as in RabbitMQ.
const VHOSTS_SEEDED: &str = "vhosts-seeded";

/// The queue types a vhost's default queue type may name (RabbitMQ 3.10 also has
/// `stream`, which minimq does not).
pub const QUEUE_TYPES: &[&str] = &["classic", "quorum", "stream"];

/// What RabbitMQ keeps about a vhost besides its contents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VHostMetadata {
    /// Free text.
    pub description: String,
    /// Free-form tags.
    pub tags: Vec<String>,
    /// The `x-queue-type` its durable, non-exclusive queues get when a declare names
    /// none (one of [`QUEUE_TYPES`]); set when the vhost is created, kept after.
    pub default_queue_type: Option<String>,
}

impl VHostMetadata {
    /// As stored and as the API shows it: `{"description": "...", "tags": [...]}`, with
    /// `default_queue_type` when there is one (RabbitMQ's metadata map).
    pub fn to_json(&self) -> Value {
        let mut v = serde_json::json!({ "description": self.description, "tags": self.tags });
        if let (Some(t), Value::Object(m)) = (&self.default_queue_type, &mut v) {
            m.insert("default_queue_type".into(), Value::from(t.as_str()));
        }
        v
    }

    /// From a stored value or a request body; absent fields are empty. Tags may be a
    /// list or a comma-separated string (RabbitMQ takes both).
    pub fn from_json(v: &Value) -> VHostMetadata {
        let description = v
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let tags = match v.get("tags") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(s)) => s
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let default_queue_type = v
            .get("default_queue_type")
            .and_then(Value::as_str)
            .map(str::to_string);
        VHostMetadata {
            description,
            tags,
            default_queue_type,
        }
    }
}

/// Every vhost by name.
pub struct VHosts {
    map: RwLock<BTreeMap<String, Arc<VHost>>>,
    /// The vhost a connection holds before `connection.open`: in no registry, holding
    /// nothing, shared (a connection need not allocate one, nor check for none later).
    unopened: Arc<VHost>,
    store: Option<Arc<Store>>,
    /// Serializes creates and deletes.
    changes: tokio::sync::Mutex<()>,
}

impl VHosts {
    fn empty(store: Option<Arc<Store>>) -> VHosts {
        VHosts {
            map: RwLock::new(BTreeMap::new()),
            unopened: VHost::new("", None),
            store,
            changes: tokio::sync::Mutex::new(()),
        }
    }

    /// The placeholder a connection holds until `connection.open`.
    pub fn unopened(&self) -> Arc<VHost> {
        self.unopened.clone()
    }

    /// The vhost named `name`.
    pub fn get(&self, name: &str) -> Option<Arc<VHost>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every vhost, by name.
    pub fn all(&self) -> Vec<Arc<VHost>> {
        self.map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Creates vhost `name` (durably first), or updates its description and tags if it
    /// exists (its default queue type stays as it was created, as in RabbitMQ); answers
    /// whether it was created.
    pub async fn put(&self, name: &str, mut metadata: VHostMetadata) -> std::io::Result<bool> {
        let _serial = self.changes.lock().await;
        let existing = self.get(name);
        if let Some(v) = &existing {
            metadata.default_queue_type = v.metadata().default_queue_type;
        }
        if let Some(store) = &self.store {
            store.put_param(vhost_param(name, &metadata)).await?;
        }
        if let Some(v) = existing {
            v.set_metadata(metadata);
            return Ok(false);
        }
        let vhost = VHost::new(name, self.store.clone());
        vhost.set_metadata(metadata);
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), vhost);
        Ok(true)
    }

    /// Deletes vhost `name`: its record first (from then on the deletion survives a
    /// crash), then it leaves the registry. Answers the removed vhost (`None` if there
    /// was none), whose contents the caller then destroys after closing its
    /// connections ([`crate::server::BrokerState::delete_vhost`]).
    pub async fn remove(&self, name: &str) -> std::io::Result<Option<Arc<VHost>>> {
        let _serial = self.changes.lock().await;
        let Some(vhost) = self.get(name) else {
            return Ok(None);
        };
        if let Some(store) = &self.store {
            store.remove_param(VHOST_COMPONENT, name, name).await?;
        }
        self.map
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        Ok(Some(vhost))
    }

    /// The vhosts at start-up: those recorded in the store (`/` on a fresh or
    /// earlier-version data directory, and for an in-memory broker), each given its
    /// recovered queues, exchanges, bindings, policies and limits. Objects of a vhost
    /// with no record (a deletion cut short by a crash) are removed from the store, and
    /// so is every stream directory that is not a restored stream's (see
    /// [`Store::sweep_streams`]).
    pub async fn restore(
        store: Option<Arc<Store>>,
        params: &[ParamDef],
        recovered: Vec<RecoveredQueue>,
        (exchanges, bindings): (Vec<ExchangeDef>, Vec<BindingDef>),
    ) -> std::io::Result<VHosts> {
        let vhosts = VHosts::empty(store.clone());
        let seeded = params.iter().any(|p| p.component == VHOSTS_SEEDED);
        let mut names: BTreeMap<String, VHostMetadata> = params
            .iter()
            .filter(|p| p.component == VHOST_COMPONENT)
            .map(|p| {
                let meta = serde_json::from_slice::<Value>(&p.value)
                    .map(|v| VHostMetadata::from_json(&v))
                    .unwrap_or_default();
                (p.vhost.clone(), meta)
            })
            .collect();
        if !seeded {
            // RabbitMQ 3.10's `/` has an empty description too.
            let meta = VHostMetadata::default();
            if let Some(store) = &store {
                store.put_param(vhost_param(DEFAULT_VHOST, &meta)).await?;
                store
                    .put_param(ParamDef {
                        component: VHOSTS_SEEDED.into(),
                        vhost: String::new(),
                        name: String::new(),
                        value: bytes::Bytes::from_static(b"true"),
                    })
                    .await?;
            }
            names.insert(DEFAULT_VHOST.into(), meta);
        }
        let mut live: HashSet<u64> = recovered.iter().map(|q| q.def.id).collect();
        let mut by_vhost: BTreeMap<String, Vec<RecoveredQueue>> = BTreeMap::new();
        for q in recovered {
            by_vhost.entry(q.def.vhost.clone()).or_default().push(q);
        }
        for (name, meta) in &names {
            let vhost = VHost::new(name, store.clone());
            vhost.set_metadata(meta.clone());
            vhost.restore_policies(params);
            vhost.restore(by_vhost.remove(name).unwrap_or_default());
            vhost.restore_topology(&exchanges, &bindings);
            vhosts
                .map
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .insert(name.clone(), vhost);
        }
        if let Some(store) = &store {
            let orphans: BTreeSet<&str> = by_vhost
                .keys()
                .map(String::as_str)
                .chain(exchanges.iter().map(|e| e.vhost.as_str()))
                .filter(|v| !names.contains_key(*v))
                .collect();
            for q in by_vhost.values().flatten() {
                store.remove_queue(q.def.id).done().await?;
                live.remove(&q.def.id);
            }
            for e in exchanges.iter().filter(|e| !names.contains_key(&e.vhost)) {
                store.remove_exchange(&e.vhost, &e.name).done().await?;
            }
            // Broker-wide settings (users, markers) have no vhost.
            for p in params
                .iter()
                .filter(|p| !p.vhost.is_empty() && !names.contains_key(&p.vhost))
            {
                store.remove_param(&p.component, &p.vhost, &p.name).await?;
            }
            for v in orphans {
                tracing::warn!(vhost = v, "removed what a deleted vhost left behind");
            }
            // Last, so that the directories of the streams just removed go too.
            let sweeping = store.clone();
            let swept = tokio::task::spawn_blocking(move || {
                sweeping.sweep_streams(&|id| live.contains(&id))
            })
            .await;
            if let Err(e) = swept {
                tracing::error!(error = %e, "the sweep of deleted streams' directories failed");
            }
        }
        Ok(vhosts)
    }
}

fn vhost_param(name: &str, metadata: &VHostMetadata) -> ParamDef {
    ParamDef {
        component: VHOST_COMPONENT.into(),
        vhost: name.into(),
        name: name.into(),
        value: metadata.to_json().to_string().into_bytes().into(),
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use minimq_protocol::FieldTable;

    use crate::store::format::{
        encode_without_vhost, file_header, BindingDef, ExchangeDef, QueueDef, Record,
        META_LOG_MAGIC,
    };
    use crate::Broker;

    async fn start(dir: &std::path::Path) -> Broker {
        Broker::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .data_dir(dir)
            .start()
            .await
            .unwrap()
    }

    /// A metadata log written before vhosts (records without one) opens with its queue,
    /// exchange and binding in `/`, and `/` is recorded, so it is there after the next
    /// start too.
    #[tokio::test]
    async fn a_data_directory_from_before_vhosts_opens_with_everything_in_the_default_vhost() {
        let dir = std::env::temp_dir().join(format!("minimq-vhosts-old-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut log = BytesMut::new();
        log.extend_from_slice(&file_header(META_LOG_MAGIC));
        let vhost = String::from("ignored: written without it");
        for record in [
            Record::NextQueueId(2),
            Record::Queue(QueueDef {
                id: 1,
                vhost: vhost.clone(),
                name: "old-q".into(),
                auto_delete: false,
                arguments: FieldTable::new(),
            }),
            Record::Exchange(ExchangeDef {
                vhost: vhost.clone(),
                name: "old-x".into(),
                kind: "direct".into(),
                auto_delete: false,
                internal: false,
                arguments: FieldTable::new(),
            }),
            Record::Binding(BindingDef {
                vhost,
                source: "old-x".into(),
                to_exchange: false,
                destination: "old-q".into(),
                key: "k".into(),
                arguments: FieldTable::new(),
            }),
        ] {
            encode_without_vhost(&record, &mut log);
        }
        std::fs::write(dir.join(crate::store::meta::LOG_NAME), &log).unwrap();
        for _ in 0..2 {
            let broker = start(&dir).await;
            let names: Vec<String> = broker
                .state()
                .vhosts
                .all()
                .iter()
                .map(|v| v.name().to_string())
                .collect();
            assert_eq!(names, ["/"]);
            let root = broker.state().vhosts.get("/").unwrap();
            assert!(root.queue("old-q").is_some());
            let x = root.exchange("old-x").unwrap();
            assert_eq!(x.bindings().len(), 1);
            broker.shutdown().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
