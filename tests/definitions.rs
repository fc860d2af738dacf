//! RabbitMQ's definitions file: a file exported from a RabbitMQ 3.10 node
//! (`tests/data/rabbitmq-3.10-definitions.json`: users with their hashes, permissions, a
//! policy, exchanges, durable and transient queues, queue and exchange bindings) imports
//! through `POST /api/definitions` and through `--definitions` at start-up, exports back
//! to the same sets, and logs its users in with their RabbitMQ passwords; a file with one
//! bad entry is refused naming it, and imports nothing. A second vhost's objects go out
//! and come back the same way.

mod common;

use std::collections::BTreeSet;

use base64::Engine as _;
use common::http::{request, send_json};
use minimq_broker::{Broker, Config};
use serde_json::Value;

const RABBITMQ_EXPORT: &str = include_str!("data/rabbitmq-3.10-definitions.json");

async fn start(definitions: Option<std::path::PathBuf>) -> Broker {
    Broker::builder()
        .config(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: Some("127.0.0.1:0".parse().unwrap()),
            definitions,
            ..Config::default()
        })
        .start()
        .await
        .expect("broker starts")
}

async fn export(broker: &Broker) -> Value {
    common::http::get(broker, "/api/definitions").await
}

/// The entries of `section`, each reduced to `keys`, as a set (order is not part of a
/// definitions file's meaning).
fn set(doc: &Value, section: &str, keys: &[&str]) -> BTreeSet<String> {
    doc[section]
        .as_array()
        .unwrap_or_else(|| panic!("{section} missing"))
        .iter()
        .map(|e| {
            let picked: Vec<String> = keys.iter().map(|k| e[*k].to_string()).collect();
            picked.join("|")
        })
        .collect()
}

/// What an export must carry over from `file`.
fn same_sets(ours: &Value, file: &Value) {
    for (section, keys) in [
        (
            "users",
            &["name", "password_hash", "hashing_algorithm", "tags"][..],
        ),
        ("vhosts", &["name"][..]),
        (
            "permissions",
            &["user", "vhost", "configure", "write", "read"][..],
        ),
        (
            "policies",
            &[
                "vhost",
                "name",
                "pattern",
                "apply-to",
                "definition",
                "priority",
            ][..],
        ),
        (
            "queues",
            &["name", "vhost", "durable", "auto_delete", "arguments"][..],
        ),
        (
            "exchanges",
            &[
                "name",
                "vhost",
                "type",
                "durable",
                "auto_delete",
                "internal",
                "arguments",
            ][..],
        ),
        (
            "bindings",
            &[
                "source",
                "vhost",
                "destination",
                "destination_type",
                "routing_key",
                "arguments",
            ][..],
        ),
    ] {
        assert_eq!(
            set(ours, section, keys),
            set(file, section, keys),
            "{section}"
        );
    }
}

#[tokio::test]
async fn a_rabbitmq_export_imports_and_exports_back_to_the_same_sets() {
    let file: Value = serde_json::from_str(RABBITMQ_EXPORT).unwrap();
    let broker = start(None).await;
    let r = send_json(&broker, "POST", "/api/definitions", RABBITMQ_EXPORT).await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    let ours = export(&broker).await;
    same_sets(&ours, &file);
    // RabbitMQ's hashes log in with the passwords they were made from.
    let app = base64::engine::general_purpose::STANDARD.encode("app:app-secret");
    let r = request(&broker, "GET", "/api/whoami", Some(&app)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["tags"], serde_json::json!(["management"]));
    // The policy applies to the imported queue.
    let q = common::http::get(&broker, "/api/queues/%2F/ttl-q").await;
    assert_eq!(q["policy"], "ttl");
    // Round trip: our export into a fresh broker exports the same again.
    let second = start(None).await;
    let r = send_json(&second, "POST", "/api/definitions", &ours.to_string()).await;
    assert_eq!(r.status, 204);
    same_sets(&export(&second).await, &file);
    broker.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn a_second_vhost_and_its_objects_import_and_export_back() {
    // The RabbitMQ export with every vhost-scoped entry also in a vhost `other`.
    let mut file: Value = serde_json::from_str(RABBITMQ_EXPORT).unwrap();
    for section in ["permissions", "policies", "queues", "exchanges", "bindings"] {
        let list = file[section].as_array_mut().unwrap();
        let copies: Vec<Value> = list
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e["vhost"] = "other".into();
                e
            })
            .collect();
        list.extend(copies);
    }
    file["vhosts"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "other"}));
    let broker = start(None).await;
    let r = send_json(&broker, "POST", "/api/definitions", &file.to_string()).await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    let ours = export(&broker).await;
    same_sets(&ours, &file);
    let q = common::http::get(&broker, "/api/queues/other/ttl-q").await;
    assert_eq!(
        (q["vhost"].as_str(), q["policy"].as_str()),
        (Some("other"), Some("ttl"))
    );
    let second = start(None).await;
    let r = send_json(&second, "POST", "/api/definitions", &ours.to_string()).await;
    assert_eq!(r.status, 204);
    same_sets(&export(&second).await, &file);
    broker.shutdown().await;
    second.shutdown().await;
}

#[tokio::test]
async fn definitions_given_at_start_up_are_in_place_before_clients_come() {
    let path = std::env::temp_dir().join(format!("minimq-defs-{}.json", std::process::id()));
    std::fs::write(&path, RABBITMQ_EXPORT).unwrap();
    let broker = start(Some(path.clone())).await;
    let file: Value = serde_json::from_str(RABBITMQ_EXPORT).unwrap();
    same_sets(&export(&broker).await, &file);
    broker.shutdown().await;
    // A file that does not parse stops the start, naming the file.
    std::fs::write(&path, "{ not json").unwrap();
    let err = Broker::builder()
        .config(Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            definitions: Some(path.clone()),
            ..Config::default()
        })
        .start()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_file(&path);
}

#[tokio::test]
async fn one_bad_entry_is_named_and_nothing_is_imported() {
    let mut file: Value = serde_json::from_str(RABBITMQ_EXPORT).unwrap();
    file["queues"].as_array_mut().unwrap().push(
        serde_json::json!({"name": "bad", "vhost": "/", "durable": true,
            "auto_delete": false, "arguments": {"x-max-length": "abc"}}),
    );
    let broker = start(None).await;
    let before = export(&broker).await;
    let r = send_json(&broker, "POST", "/api/definitions", &file.to_string()).await;
    assert_eq!(r.status, 400);
    let reason = r.json()["reason"].as_str().unwrap().to_string();
    let n = file["queues"].as_array().unwrap().len() - 1;
    assert!(
        reason.starts_with(&format!("queues[{n}] ('bad'): ")),
        "{reason}"
    );
    assert_eq!(export(&broker).await, before, "nothing imported");
    // An entry in a vhost that neither exists nor is in the file is refused the same way.
    let last = file["queues"].as_array_mut().unwrap().last_mut().unwrap();
    *last = serde_json::json!({"name": "lost", "vhost": "nowhere", "durable": true,
        "auto_delete": false, "arguments": {}});
    let r = send_json(&broker, "POST", "/api/definitions", &file.to_string()).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["reason"], "vhost 'nowhere': no such vhost");
    assert_eq!(export(&broker).await, before);
    broker.shutdown().await;
}

/// Vhost limits travel as RabbitMQ 3.10 exports them: a `parameters` entry with
/// component `vhost-limits`, name `limits`; a component minimq does not know is refused,
/// naming it, and nothing is imported.
#[tokio::test]
async fn vhost_limits_go_out_and_come_back_as_rabbitmq_parameters() {
    let broker = start(None).await;
    let r = send_json(
        &broker,
        "PUT",
        "/api/vhost-limits/%2F/max-connections",
        r#"{"value": 7}"#,
    )
    .await;
    assert_eq!(r.status, 204);
    let ours = export(&broker).await;
    assert_eq!(
        ours["parameters"],
        serde_json::json!([{"value": {"max-connections": 7}, "vhost": "/", "component": "vhost-limits", "name": "limits"}])
    );

    let second = start(None).await;
    let mut file = ours.clone();
    file["parameters"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"value": {"uri": "amqp://x"}, "vhost": "/", "component": "federation-upstream", "name": "up"}));
    let r = send_json(&second, "POST", "/api/definitions", &file.to_string()).await;
    assert_eq!(r.status, 400);
    let why = String::from_utf8_lossy(&r.body).to_string();
    assert!(
        why.contains("parameters[1]") && why.contains("federation-upstream"),
        "{why}"
    );
    assert_eq!(
        common::http::get(&second, "/api/vhost-limits").await,
        serde_json::json!([])
    );

    let r = send_json(&second, "POST", "/api/definitions", &ours.to_string()).await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        common::http::get(&second, "/api/vhost-limits").await,
        serde_json::json!([{"vhost": "/", "value": {"max-connections": 7}}])
    );
    broker.shutdown().await;
    second.shutdown().await;
}
