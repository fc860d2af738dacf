//! Users and permissions: RabbitMQ's model.
//!
//! This module owns the users (name, password hash, tags) and their permissions per vhost
//! (`configure`, `write`, `read` regular expressions), how a password is checked, and
//! what a user may do. Passwords are stored as RabbitMQ stores them
//! (`rabbit_password_hashing_sha256`: base64 of a 4-octet salt followed by
//! SHA-256(salt ‖ password)), so a definitions file moves between RabbitMQ and minimq with
//! working passwords. [`Users`] writes every change to the store's metadata log (settings
//! of the components [`USER_COMPONENT`] and [`PERMISSION_COMPONENT`]) before it takes
//! effect, as the vhost does for policies.
//!
//! Readers (every login, every management request) take a read lock for a lookup and
//! clone an `Arc`; the management API's writes replace whole entries. Never held across an
//! `.await`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use base64::Engine as _;
use rand::RngCore;
use regex::Regex;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::{ParamDef, Store};
use subtle::ConstantTimeEq;

/// The store component users are kept under (vhost empty, name = user).
pub const USER_COMPONENT: &str = "user";
/// The store component permissions are kept under (vhost, name = user).
pub const PERMISSION_COMPONENT: &str = "permission";
/// The hashing algorithm minimq writes and reads, RabbitMQ's default.
pub const SHA256: &str = "rabbit_password_hashing_sha256";
/// Octets of salt before the digest.
const SALT_LEN: usize = 4;

/// RabbitMQ's user tags that mean something to the management API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    /// No management access.
    None,
    /// `management`: its own vhosts' objects and its own connections.
    Management,
    /// `policymaker`: management plus policies and parameters.
    Policymaker,
    /// `monitoring`: reads everything.
    Monitoring,
    /// `administrator`: everything.
    Administrator,
}

/// One user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Name.
    pub name: String,
    /// Salt and SHA-256 digest; empty: no password (the user cannot log in with one).
    pub password_hash: Vec<u8>,
    /// Tags as given (`administrator`, `monitoring`, ... or any other word).
    pub tags: Vec<String>,
}

/// `password`'s hash with a fresh random salt.
pub fn hash_password(password: &str) -> Vec<u8> {
    let mut salt = [0u8; SALT_LEN];
    rand::thread_rng().fill_bytes(&mut salt);
    hash_with_salt(&salt, password)
}

fn hash_with_salt(salt: &[u8], password: &str) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(password.as_bytes());
    let mut out = salt.to_vec();
    out.extend_from_slice(&h.finalize());
    out
}

/// Tags given as a JSON list or a comma-separated string (RabbitMQ takes both).
pub fn parse_tags(v: &Value) -> Result<Vec<String>, String> {
    let words: Vec<String> = match v {
        Value::String(s) => s.split(',').map(str::to_string).collect(),
        Value::Array(items) => items
            .iter()
            .map(|t| t.as_str().map(str::to_string).ok_or("tags must be strings"))
            .collect::<Result<_, _>>()?,
        _ => return Err("tags must be a list or a comma-separated string".into()),
    };
    Ok(words
        .into_iter()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
        .collect())
}

impl User {
    /// A user with `password` (hashed here) and `tags`.
    pub fn with_password(name: &str, password: &str, tags: Vec<String>) -> User {
        User {
            name: name.to_string(),
            password_hash: hash_password(password),
            tags,
        }
    }

    /// Whether `password` is this user's, compared in constant time: how long a wrong
    /// guess takes does not tell how much of it was right.
    pub fn check_password(&self, password: &str) -> bool {
        if self.password_hash.len() <= SALT_LEN {
            return false;
        }
        let (salt, _) = self.password_hash.split_at(SALT_LEN);
        let candidate = hash_with_salt(salt, password);
        bool::from(candidate.as_slice().ct_eq(&self.password_hash))
    }

    /// The most its tags allow in the management API.
    pub fn access(&self) -> Access {
        self.tags
            .iter()
            .map(|t| match t.as_str() {
                "administrator" => Access::Administrator,
                "monitoring" => Access::Monitoring,
                "policymaker" => Access::Policymaker,
                "management" => Access::Management,
                _ => Access::None,
            })
            .max()
            .unwrap_or(Access::None)
    }

    /// The user as `GET /api/users/{name}` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "password_hash": base64::engine::general_purpose::STANDARD.encode(&self.password_hash),
            "hashing_algorithm": SHA256,
            "tags": self.tags,
            "limits": {},
        })
    }

    /// Reads a user as stored or as in a definitions file: `password_hash` (base64) or
    /// `password` (hashed here); tags as a list or a comma-separated string.
    pub fn from_json(name: &str, v: &Value) -> Result<User, String> {
        let tags = match v.get("tags") {
            Some(t) => parse_tags(t)?,
            None => return Err("tags_not_present".into()),
        };
        if let Some(alg) = v.get("hashing_algorithm").and_then(Value::as_str) {
            if alg != SHA256 {
                return Err(format!("unsupported hashing algorithm {alg}"));
            }
        }
        let password_hash =
            match (
                v.get("password").and_then(Value::as_str),
                v.get("password_hash"),
            ) {
                (Some(p), _) => hash_password(p),
                (None, Some(Value::String(h))) => base64::engine::general_purpose::STANDARD
                    .decode(h)
                    .map_err(|_| "password_hash is not base64".to_string())?,
                (None, Some(_)) => return Err("password_hash must be a string".into()),
                // Neither: a user that cannot log in with a password (RabbitMQ gives it a
                // random one).
                (None, None) => hash_password(&random_password()),
            };
        Ok(User {
            name: name.to_string(),
            password_hash,
            tags,
        })
    }
}

fn random_password() -> String {
    let mut raw = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut raw);
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// What an operation needs on a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Perm {
    /// Declare, delete.
    Configure,
    /// Publish to an exchange, bind a queue (as destination).
    Write,
    /// Consume, get, purge, bind from an exchange.
    Read,
}

/// A user's permissions in one vhost.
#[derive(Debug, Clone)]
pub struct Permission {
    /// The patterns as given.
    pub configure: String,
    /// The patterns as given.
    pub write: String,
    /// The patterns as given.
    pub read: String,
    /// `None` for an empty pattern, which permits nothing (RabbitMQ's rule).
    compiled: [Option<Regex>; 3],
}

impl PartialEq for Permission {
    fn eq(&self, other: &Self) -> bool {
        (&self.configure, &self.write, &self.read) == (&other.configure, &other.write, &other.read)
    }
}

impl Permission {
    /// Compiles the three patterns; an empty pattern permits nothing (as in RabbitMQ).
    pub fn new(configure: &str, write: &str, read: &str) -> Result<Permission, String> {
        let compile = |p: &str| {
            if p.is_empty() {
                return Ok(None);
            }
            Regex::new(p)
                .map(Some)
                .map_err(|e| format!("invalid_regexp: {p}: {e}"))
        };
        Ok(Permission {
            configure: configure.to_string(),
            write: write.to_string(),
            read: read.to_string(),
            compiled: [compile(configure)?, compile(write)?, compile(read)?],
        })
    }

    /// Reads `{"configure":…,"write":…,"read":…}`, with RabbitMQ's key_missing answer.
    pub fn from_json(v: &Value) -> Result<Permission, String> {
        let missing: Vec<String> = ["configure", "write", "read"]
            .iter()
            .filter(|k| v.get(**k).and_then(Value::as_str).is_none())
            .map(|k| format!("{{key_missing,{k}}}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!("[{}]", missing.join(",")));
        }
        let get = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
        Permission::new(get("configure"), get("write"), get("read"))
    }

    /// Whether `perm` on the resource `name` is allowed (an unanchored search, as
    /// Erlang's `re:run`; the default exchange is named `amq.default` for this).
    pub fn allows(&self, perm: Perm, name: &str) -> bool {
        let i = match perm {
            Perm::Configure => 0,
            Perm::Write => 1,
            Perm::Read => 2,
        };
        self.compiled[i].as_ref().is_some_and(|r| r.is_match(name))
    }

    /// As `GET /api/permissions/{vhost}/{user}` shows it.
    pub fn to_json(&self, vhost: &str, user: &str) -> Value {
        json!({"user": user, "vhost": vhost, "configure": self.configure,
               "write": self.write, "read": self.read})
    }
}

/// The broker's users and their permissions.
#[derive(Debug, Default)]
pub struct Users {
    users: RwLock<BTreeMap<String, Arc<User>>>,
    /// By (vhost, user).
    permissions: RwLock<BTreeMap<(String, String), Arc<Permission>>>,
    /// Where changes are made durable; `None` for an in-memory broker.
    store: Option<Arc<Store>>,
}

fn setting(component: &str, vhost: &str, name: &str, value: &Value) -> ParamDef {
    ParamDef {
        component: component.into(),
        vhost: vhost.into(),
        name: name.into(),
        value: value.to_string().into_bytes().into(),
    }
}

impl Users {
    /// No users yet, keeping changes in `store`.
    pub fn new(store: Option<Arc<Store>>) -> Users {
        Users {
            store,
            ..Users::default()
        }
    }

    /// Adds or replaces a user, on disk first; true when new.
    pub async fn save_user(&self, user: User) -> std::io::Result<bool> {
        if let Some(store) = &self.store {
            let def = setting(USER_COMPONENT, "", &user.name, &user.to_json());
            store.put_param(def).await?;
        }
        Ok(self.put(user))
    }

    /// Removes a user and its permissions, on disk first; whether it existed.
    pub async fn remove_user(&self, name: &str) -> std::io::Result<bool> {
        if self.get(name).is_none() {
            return Ok(false);
        }
        if let Some(store) = &self.store {
            for (vhost, user, _) in self.permissions() {
                if user == name {
                    store
                        .remove_param(PERMISSION_COMPONENT, &vhost, &user)
                        .await?;
                }
            }
            store.remove_param(USER_COMPONENT, "", name).await?;
        }
        Ok(self.delete(name))
    }

    /// Sets `user`'s permissions in `vhost`, on disk first; true when new.
    pub async fn save_permission(
        &self,
        vhost: &str,
        user: &str,
        p: Permission,
    ) -> std::io::Result<bool> {
        if let Some(store) = &self.store {
            let def = setting(PERMISSION_COMPONENT, vhost, user, &p.to_json(vhost, user));
            store.put_param(def).await?;
        }
        Ok(self.set_permission(vhost, user, p))
    }

    /// Removes `user`'s permissions in `vhost`, on disk first; whether there were any.
    pub async fn remove_permission(&self, vhost: &str, user: &str) -> std::io::Result<bool> {
        if self.permission(vhost, user).is_none() {
            return Ok(false);
        }
        if let Some(store) = &self.store {
            store
                .remove_param(PERMISSION_COMPONENT, vhost, user)
                .await?;
        }
        Ok(self.clear_permission(vhost, user))
    }

    /// The user `name`.
    pub fn get(&self, name: &str) -> Option<Arc<User>> {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Every user, by name.
    pub fn all(&self) -> Vec<Arc<User>> {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Whether there is any user.
    pub fn is_empty(&self) -> bool {
        self.users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Adds or replaces a user; true when new.
    pub fn put(&self, user: User) -> bool {
        self.users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(user.name.clone(), Arc::new(user))
            .is_none()
    }

    /// Removes a user and its permissions; whether it existed.
    pub fn delete(&self, name: &str) -> bool {
        let existed = self
            .users
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some();
        self.permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(_, u), _| u != name);
        existed
    }

    /// The user `name` if `password` is theirs.
    pub fn login(&self, name: &str, password: &str) -> Option<Arc<User>> {
        self.get(name).filter(|u| u.check_password(password))
    }

    /// `user`'s permissions in `vhost`.
    pub fn permission(&self, vhost: &str, user: &str) -> Option<Arc<Permission>> {
        self.permissions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(vhost.to_string(), user.to_string()))
            .cloned()
    }

    /// Every permission: (vhost, user, permission), by vhost then user.
    pub fn permissions(&self) -> Vec<(String, String, Arc<Permission>)> {
        self.permissions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|((v, u), p)| (v.clone(), u.clone(), p.clone()))
            .collect()
    }

    /// Sets `user`'s permissions in `vhost`; true when new.
    pub fn set_permission(&self, vhost: &str, user: &str, p: Permission) -> bool {
        self.permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((vhost.to_string(), user.to_string()), Arc::new(p))
            .is_none()
    }

    /// Removes `user`'s permissions in `vhost`; whether there were any.
    pub fn clear_permission(&self, vhost: &str, user: &str) -> bool {
        self.permissions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(vhost.to_string(), user.to_string()))
            .is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rabbitmq_password_hash_checks_as_rabbitmq_computes_it() {
        // guest's hash from a RabbitMQ 3.10 node's GET /api/users.
        let user = User::from_json(
            "guest",
            &json!({"password_hash": "Y8k+mNwbiqOdAieO80MEaBuQqBrCdBncjoXy1dPBxLJPdKqs",
                    "hashing_algorithm": SHA256, "tags": ["administrator"]}),
        )
        .unwrap();
        assert!(user.check_password("guest"));
        assert!(!user.check_password("guesT"));
        assert!(!user.check_password(""));
        assert_eq!(user.access(), Access::Administrator);
        assert_eq!(
            user.to_json()["password_hash"],
            "Y8k+mNwbiqOdAieO80MEaBuQqBrCdBncjoXy1dPBxLJPdKqs",
            "stored as given"
        );
    }

    #[test]
    fn a_fresh_hash_is_salted_and_checks() {
        let a = User::with_password("a", "secret", vec![]);
        let b = User::with_password("b", "secret", vec![]);
        assert_ne!(a.password_hash, b.password_hash, "different salts");
        assert_eq!(a.password_hash.len(), 4 + 32);
        assert!(a.check_password("secret"));
        assert!(!a.check_password("secret2"));
        let none = User {
            name: "n".into(),
            password_hash: Vec::new(),
            tags: vec![],
        };
        assert!(!none.check_password(""));
    }

    #[test]
    fn tags_come_as_a_list_or_a_comma_separated_string() {
        assert_eq!(
            parse_tags(&json!("management,policymaker")).unwrap(),
            ["management", "policymaker"]
        );
        assert_eq!(parse_tags(&json!(["monitoring"])).unwrap(), ["monitoring"]);
        assert!(parse_tags(&json!("")).unwrap().is_empty());
        assert_eq!(
            User::from_json("x", &json!({"password": "p"})).unwrap_err(),
            "tags_not_present"
        );
        let u =
            User::from_json("x", &json!({"password": "p", "tags": "management, custom"})).unwrap();
        assert_eq!(u.access(), Access::Management);
        assert_eq!(u.tags, ["management", "custom"]);
    }

    #[test]
    fn permissions_search_their_pattern_and_an_empty_one_permits_nothing() {
        let p = Permission::new("^q", ".*", "").unwrap();
        assert!(p.allows(Perm::Configure, "q1"));
        assert!(!p.allows(Perm::Configure, "aq"));
        assert!(p.allows(Perm::Write, "amq.default"));
        assert!(!p.allows(Perm::Read, ""));
        assert!(!p.allows(Perm::Read, "anything"));
        assert_eq!(
            Permission::from_json(&json!({"configure": ".*"})).unwrap_err(),
            "[{key_missing,write},{key_missing,read}]"
        );
        assert!(Permission::new("[", ".*", ".*").is_err());
    }

    #[test]
    fn deleting_a_user_takes_its_permissions() {
        let users = Users::default();
        assert!(users.put(User::with_password("bob", "pw", vec!["management".into()])));
        assert!(users.set_permission("/", "bob", Permission::new(".*", ".*", ".*").unwrap()));
        assert!(users.login("bob", "pw").is_some());
        assert!(users.login("bob", "nope").is_none());
        assert!(users.delete("bob"));
        assert!(users.permission("/", "bob").is_none());
        assert!(!users.delete("bob"));
    }
}
