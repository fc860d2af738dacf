//! Policies end to end: the management API's `/api/policies` (RabbitMQ's answers and
//! validation texts), policies applied to new and existing queues at once with RabbitMQ's
//! precedence between a queue's arguments and its policy, the queue JSON's `policy` and
//! `effective_policy_definition`, and policies kept across a restart and a crash.
//! Operator policies (`/api/operator-policies`): administrators only, the numeric limits
//! only, capping a queue's policy and arguments (the lower value wins), shown as
//! `operator_policy`, durable and in the definitions. A PUT of either, or of a vhost
//! limit, in a vhost that does not exist is RabbitMQ's `404 vhost_not_found`.
//!
//! No sleeps: a policy is applied before its PUT is answered, and a passive declare after
//! it proves the queue task has handled the change (it queues behind it).

mod common;

use common::http::{get, request, send_json, send_json_as, GUEST};
use common::{passive_declare, within};
use lapin::options::{BasicGetOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use minimq_broker::Broker;
use serde_json::json;

fn data_dir() -> std::path::PathBuf {
    common::fresh_data_dir("policies")
}

async fn start(dir: &std::path::Path) -> Broker {
    common::start_with_api_in(dir).await
}

/// `PUT` of a JSON `body` as guest: the answer's status.
async fn put(broker: &Broker, path: &str, body: &str) -> u16 {
    send_json(broker, "PUT", path, body).await.status
}

/// `DELETE` as guest: the answer's status.
async fn delete(broker: &Broker, path: &str) -> u16 {
    request(broker, "DELETE", path, Some(GUEST)).await.status
}

async fn channel(broker: &Broker) -> (Connection, Channel) {
    let conn = within(Connection::connect(
        &broker.amqp_url(),
        ConnectionProperties::default(),
    ))
    .await
    .unwrap();
    let ch = within(conn.create_channel()).await.unwrap();
    (conn, ch)
}

async fn declare(ch: &Channel, name: &str, durable: bool, args: FieldTable) {
    within(ch.queue_declare(
        name,
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    ))
    .await
    .unwrap();
}

async fn publish(ch: &Channel, queue: &str, n: u32) {
    for i in 0..n {
        within(ch.basic_publish(
            "",
            queue,
            BasicPublishOptions::default(),
            format!("m{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
}

async fn bodies(ch: &Channel, queue: &str) -> Vec<String> {
    let mut out = Vec::new();
    while let Some(m) = within(ch.basic_get(queue, BasicGetOptions { no_ack: true }))
        .await
        .unwrap()
    {
        out.push(String::from_utf8(m.delivery.data.clone()).unwrap());
    }
    out
}

#[tokio::test]
async fn put_get_delete_answer_as_rabbitmq() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let body = r#"{"pattern":"^pq","definition":{"max-length":5,"message-ttl":60000},"apply-to":"queues","priority":1}"#;
    let r = send_json(&broker, "PUT", "/api/policies/%2F/p1", body).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(put(&broker, "/api/policies/%2F/p1", body).await, 204);
    let want = json!({"vhost": "/", "name": "p1", "pattern": "^pq", "apply-to": "queues",
                      "definition": {"max-length": 5, "message-ttl": 60000}, "priority": 1});
    assert_eq!(get(&broker, "/api/policies/%2F/p1").await, want);
    assert_eq!(get(&broker, "/api/policies").await, json!([want.clone()]));
    assert_eq!(get(&broker, "/api/policies/%2F").await, json!([want]));
    let r = request(&broker, "GET", "/api/policies/%2F/nope", Some(GUEST)).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        request(&broker, "GET", "/api/policies/nov", Some(GUEST))
            .await
            .status,
        404
    );
    assert_eq!(delete(&broker, "/api/policies/%2F/p1").await, 204);
    assert_eq!(delete(&broker, "/api/policies/%2F/p1").await, 404);
    assert_eq!(get(&broker, "/api/policies").await, json!([]));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn bad_policies_are_400_with_rabbitmq_reasons_and_store_nothing() {
    let dir = data_dir();
    let broker = start(&dir).await;
    for (body, reason) in [
        (r#"{"pattern":"^pq","definition":{"foo":1}}"#,
         "Validation failed\n\n[{<<\"foo\">>,1}] are not recognised policy settings\n"),
        (r#"{"pattern":"^pq","definition":{"max-priority":5}}"#,
         "Validation failed\n\n[{<<\"max-priority\">>,5}] are not recognised policy settings\n"),
        (r#"{"pattern":"^pq","definition":{"max-length":-1}}"#,
         "Validation failed\n\n-1 is not a valid maximum length\n"),
        (r#"{"pattern":"a","definition":{"max-length":1.5}}"#,
         "Validation failed\n\n1.5 is not a valid maximum length\n"),
        (r#"{"definition":{"max-length":1}}"#, "[{key_missing,pattern}]"),
        (r#"{"pattern":"a","definition":{}}"#, "Validation failed\n\nno policy provided\n"),
        (r#"{"pattern":"a","definition":{"overflow":"x"}}"#,
         "Validation failed\n\n<<\"x\">> is not a valid overflow value\n"),
        (r#"{"pattern":"a","definition":{"dead-letter-strategy":"x"}}"#,
         "Validation failed\n\n<<\"x\">> is not a valid dead letter strategy\n"),
        (r#"{"pattern":"a","apply-to":"foo","definition":{"max-length":1}}"#,
         "Validation failed\n\napply-to 'foo' unrecognised; should be 'queues', 'exchanges' or 'all'\n"),
        ("notjson", "not_json"),
    ] {
        let r = send_json(&broker, "PUT", "/api/policies/%2F/bad", body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json(), json!({"error": "bad_request", "reason": reason}), "{body}");
    }
    assert_eq!(get(&broker, "/api/policies").await, json!([]));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_policy_applies_at_once_to_an_existing_queue_and_drops_from_the_head() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "pq-live", false, FieldTable::default()).await;
    publish(&ch, "pq-live", 10).await;
    assert_eq!(passive_declare(&ch, "pq-live").await.message_count(), 10);
    assert_eq!(
        put(
            &broker,
            "/api/policies/%2F/cap",
            r#"{"pattern":"^pq-","definition":{"max-length":3},"apply-to":"queues"}"#
        )
        .await,
        201
    );
    assert_eq!(passive_declare(&ch, "pq-live").await.message_count(), 3);
    let q = get(&broker, "/api/queues/%2F/pq-live").await;
    assert_eq!(q["policy"], "cap");
    assert_eq!(q["effective_policy_definition"], json!({"max-length": 3}));
    assert_eq!(bodies(&ch, "pq-live").await, ["m7", "m8", "m9"]);
    // Removing the policy lifts the limit.
    assert_eq!(delete(&broker, "/api/policies/%2F/cap").await, 204);
    publish(&ch, "pq-live", 5).await;
    assert_eq!(passive_declare(&ch, "pq-live").await.message_count(), 5);
    let q = get(&broker, "/api/queues/%2F/pq-live").await;
    assert_eq!(q["policy"], serde_json::Value::Null);
    assert_eq!(q["effective_policy_definition"], json!({}));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_lower_limit_wins_and_the_argument_wins_the_dead_letter_exchange() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    for name in ["argdlx", "poldlx"] {
        within(ch.exchange_declare(
            name,
            lapin::ExchangeKind::Fanout,
            Default::default(),
            FieldTable::default(),
        ))
        .await
        .unwrap();
    }
    declare(&ch, "arg-dead", false, FieldTable::default()).await;
    declare(&ch, "pol-dead", false, FieldTable::default()).await;
    within(ch.queue_bind(
        "arg-dead",
        "argdlx",
        "",
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "pol-dead",
        "poldlx",
        "",
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(
        put(
            &broker,
            "/api/policies/%2F/p",
            r#"{"pattern":"^pq","definition":{"max-length":4,"dead-letter-exchange":"poldlx"}}"#
        )
        .await,
        201
    );
    // x-max-length 2 (lower than the policy's 4) and its own dead-letter exchange.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(2));
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("argdlx".into()),
    );
    declare(&ch, "pq-args", false, args).await;
    // No arguments: the policy's limit and dead-letter exchange.
    declare(&ch, "pq-bare", false, FieldTable::default()).await;
    publish(&ch, "pq-args", 5).await;
    publish(&ch, "pq-bare", 5).await;
    assert_eq!(passive_declare(&ch, "pq-args").await.message_count(), 2);
    assert_eq!(passive_declare(&ch, "pq-bare").await.message_count(), 4);
    assert_eq!(bodies(&ch, "arg-dead").await, ["m0", "m1", "m2"]);
    assert_eq!(bodies(&ch, "pol-dead").await, ["m0"]);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn expires_from_a_policy_deletes_the_unused_queue() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    declare(&ch, "pq-expiring", false, FieldTable::default()).await;
    assert_eq!(
        put(
            &broker,
            "/api/policies/%2F/exp",
            r#"{"pattern":"^pq-exp","definition":{"expires":100}}"#
        )
        .await,
        201
    );
    // The queue deletes itself 100 ms after the change; wait for it to be gone.
    within(async {
        loop {
            if request(&broker, "GET", "/api/queues/%2F/pq-expiring", Some(GUEST))
                .await
                .status
                == 404
            {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn policies_survive_a_restart_and_a_crash_and_apply_to_recovered_queues() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (conn, ch) = channel(&broker).await;
    declare(&ch, "pq-durable", true, FieldTable::default()).await;
    assert_eq!(
        put(
            &broker,
            "/api/policies/%2F/keep",
            r#"{"pattern":"^pq-","definition":{"max-length":2},"priority":3}"#
        )
        .await,
        201
    );
    drop(ch);
    drop(conn);
    broker.shutdown().await;

    let broker = start(&dir).await;
    let p = get(&broker, "/api/policies/%2F/keep").await;
    assert_eq!(p["definition"], json!({"max-length": 2}));
    assert_eq!(p["priority"], 3);
    assert_eq!(
        get(&broker, "/api/queues/%2F/pq-durable").await["policy"],
        "keep"
    );
    let (_conn, ch) = channel(&broker).await;
    publish(&ch, "pq-durable", 5).await;
    assert_eq!(passive_declare(&ch, "pq-durable").await.message_count(), 2);
    // A change answered just before a crash is on disk.
    assert_eq!(
        put(
            &broker,
            "/api/policies/%2F/late",
            r#"{"pattern":"^late","definition":{"message-ttl":1000}}"#
        )
        .await,
        201
    );
    assert_eq!(delete(&broker, "/api/policies/%2F/keep").await, 204);
    broker.crash().await;

    let broker = start(&dir).await;
    let names: Vec<_> = get(&broker, "/api/policies")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["late"]);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_exchange_policy_gives_an_alternate_exchange_unless_an_argument_does() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    // pol-x is declared before the policy, with no argument: the policy's applies.
    for (name, kind) in [
        ("pol-x", lapin::ExchangeKind::Direct),
        ("ae-target", lapin::ExchangeKind::Fanout),
        ("arg-ae", lapin::ExchangeKind::Fanout),
    ] {
        within(ch.exchange_declare(name, kind, Default::default(), FieldTable::default()))
            .await
            .unwrap();
    }
    let mut with_arg = FieldTable::default();
    with_arg.insert(
        "alternate-exchange".into(),
        AMQPValue::LongString("arg-ae".into()),
    );
    within(ch.exchange_declare(
        "pol-y",
        lapin::ExchangeKind::Direct,
        Default::default(),
        with_arg,
    ))
    .await
    .unwrap();
    declare(&ch, "ae-q", false, FieldTable::default()).await;
    declare(&ch, "arg-ae-q", false, FieldTable::default()).await;
    within(ch.queue_bind(
        "ae-q",
        "ae-target",
        "",
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    within(ch.queue_bind(
        "arg-ae-q",
        "arg-ae",
        "",
        Default::default(),
        FieldTable::default(),
    ))
    .await
    .unwrap();
    assert_eq!(put(&broker, "/api/policies/%2F/ae", r#"{"pattern":"^pol-","apply-to":"exchanges","definition":{"alternate-exchange":"ae-target"}}"#).await, 201);
    for x in ["pol-x", "pol-y"] {
        within(ch.basic_publish(
            x,
            "nowhere",
            BasicPublishOptions::default(),
            x.as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
    }
    assert_eq!(passive_declare(&ch, "ae-q").await.message_count(), 1);
    assert_eq!(bodies(&ch, "ae-q").await, ["pol-x"]);
    assert_eq!(
        bodies(&ch, "arg-ae-q").await,
        ["pol-y"],
        "the argument wins"
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// RabbitMQ 3.10 (its `accept_content` looks the vhost up before it reads the body):
/// `404 {"error":"not_found","reason":"vhost_not_found"}` for a policy, an operator
/// policy or a vhost limit PUT in a vhost that does not exist, for an administrator and
/// for a policymaker alike (its permission check passes for a missing vhost), whatever
/// the body; and nothing is stored, not even for a vhost of that name made afterwards.
/// A DELETE there is the plain `404 Not Found` (RabbitMQ: a policy's, as here).
#[tokio::test]
async fn a_put_in_a_missing_vhost_is_404_vhost_not_found_and_stores_nothing() {
    let dir = data_dir();
    let broker = start(&dir).await;
    assert_eq!(
        put(
            &broker,
            "/api/users/pm",
            r#"{"password":"pm","tags":"policymaker"}"#
        )
        .await,
        201
    );
    let pm = "cG06cG0="; // base64("pm:pm")
    let policy = r#"{"pattern":".*","definition":{"max-length":1}}"#;
    let vhost_not_found = json!({"error": "not_found", "reason": "vhost_not_found"});
    for (auth, path, body) in [
        (GUEST, "/api/policies/nov/p", policy),
        (GUEST, "/api/policies/nov/p", r#"{"pattern":".*"}"#),
        (GUEST, "/api/policies/nov/p", "not json"),
        (pm, "/api/policies/nov/p", policy),
        (GUEST, "/api/operator-policies/nov/op", policy),
        (
            GUEST,
            "/api/vhost-limits/nov/max-connections",
            r#"{"value":5}"#,
        ),
        (GUEST, "/api/vhost-limits/nov/max-queues", r#"{"value":5}"#),
        (GUEST, "/api/vhost-limits/nov/max-queues", "{}"),
    ] {
        let r = send_json_as(&broker, auth, "PUT", path, body).await;
        assert_eq!(
            (r.status, r.json()),
            (404, vhost_not_found.clone()),
            "PUT {path} {body}"
        );
    }
    let not_found = json!({"error": "Object Not Found", "reason": "Not Found"});
    for path in ["/api/policies/nov/p", "/api/operator-policies/nov/op"] {
        let r = request(&broker, "DELETE", path, Some(GUEST)).await;
        assert_eq!(
            (r.status, r.json()),
            (404, not_found.clone()),
            "DELETE {path}"
        );
    }
    for path in [
        "/api/policies",
        "/api/operator-policies",
        "/api/vhost-limits",
    ] {
        assert_eq!(get(&broker, path).await, json!([]), "{path}");
    }
    assert_eq!(put(&broker, "/api/vhosts/nov", "").await, 201);
    for path in [
        "/api/policies/nov",
        "/api/operator-policies/nov",
        "/api/vhost-limits/nov",
    ] {
        assert_eq!(get(&broker, path).await, json!([]), "{path}");
    }
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A request with a JSON body as `auth` (base64 `user:pass`): the answer's status.
async fn send_as(broker: &Broker, auth: &str, method: &str, path: &str, body: &str) -> u16 {
    send_json_as(broker, auth, method, path, body).await.status
}

#[tokio::test]
async fn operator_policies_answer_as_rabbitmq_and_take_only_the_numeric_limits() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let body = r#"{"pattern":"^opq","definition":{"max-length":5,"message-ttl":1000},"apply-to":"queues"}"#;
    let r = send_json(&broker, "PUT", "/api/operator-policies/%2F/op1", body).await;
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        put(&broker, "/api/operator-policies/%2F/op1", body).await,
        204
    );
    let want = json!({"vhost": "/", "name": "op1", "pattern": "^opq", "apply-to": "queues",
                      "definition": {"max-length": 5, "message-ttl": 1000}, "priority": 0});
    assert_eq!(get(&broker, "/api/operator-policies/%2F/op1").await, want);
    assert_eq!(
        get(&broker, "/api/operator-policies").await,
        json!([want.clone()])
    );
    assert_eq!(
        get(&broker, "/api/operator-policies/%2F").await,
        json!([want])
    );
    assert_eq!(
        get(&broker, "/api/policies").await,
        json!([]),
        "a name space of its own"
    );
    let every_key = r#"{"pattern":"^x","definition":{"expires":1,"message-ttl":0,"max-length":0,
        "max-length-bytes":0,"max-in-memory-length":0,"max-in-memory-bytes":0,"delivery-limit":0}}"#;
    assert_eq!(
        put(&broker, "/api/operator-policies/%2F/all-keys", every_key).await,
        201
    );
    // RabbitMQ 3.10's answers, taken from the reference node.
    for (body, reason) in [
        (r#"{"pattern":"^opq","definition":{"dead-letter-exchange":"x","max-length":1}}"#,
         "Validation failed\n\n[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings\n"),
        (r#"{"pattern":"^opq","definition":{"queue-mode":"lazy"}}"#,
         "Validation failed\n\n[{<<\"queue-mode\">>,<<\"lazy\">>}] are not recognised policy settings\n"),
        (r#"{"pattern":"^opq","definition":{"max-in-memory-length":-1}}"#,
         "Validation failed\n\n-1 is not a valid maximum memory in bytes\n"),
        (r#"{"pattern":"^opq","definition":{"max-in-memory-bytes":"x"}}"#,
         "Validation failed\n\n<<\"x\">> is not a valid maximum memory in bytes\n"),
        (r#"{"pattern":"^opq","definition":{"delivery-limit":-1}}"#,
         "Validation failed\n\n-1 is not a valid delivery limit\n"),
        (r#"{"pattern":"^opq","definition":{"expires":0}}"#,
         "Validation failed\n\n0 is not a valid queue expiry\n"),
        (r#"{"pattern":"^opq","definition":{}}"#, "Validation failed\n\nno policy provided\n"),
    ] {
        let r = send_json(&broker, "PUT", "/api/operator-policies/%2F/bad", body).await;
        assert_eq!(r.status, 400, "{body}");
        assert_eq!(r.json(), json!({"error": "bad_request", "reason": reason}), "{body}");
    }
    let r = send_json(&broker, "PUT", "/api/operator-policies/nov/op", body).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json(),
        json!({"error": "not_found", "reason": "vhost_not_found"})
    );
    let names: Vec<_> = get(&broker, "/api/operator-policies")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["all-keys", "op1"], "nothing refused was stored");
    // A policymaker may set policies, not operator policies (RabbitMQ: administrators).
    assert_eq!(
        put(
            &broker,
            "/api/users/pm",
            r#"{"password":"pm","tags":"policymaker"}"#
        )
        .await,
        201
    );
    assert_eq!(
        put(
            &broker,
            "/api/permissions/%2F/pm",
            r#"{"configure":".*","write":".*","read":".*"}"#
        )
        .await,
        201
    );
    let pm = "cG06cG0="; // base64("pm:pm")
    assert_eq!(
        send_as(&broker, pm, "PUT", "/api/operator-policies/%2F/op2", body).await,
        401
    );
    assert_eq!(
        send_as(&broker, pm, "GET", "/api/operator-policies/%2F/op1", "").await,
        401
    );
    assert_eq!(
        send_as(&broker, pm, "DELETE", "/api/operator-policies/%2F/op1", "").await,
        401
    );
    assert_eq!(
        send_as(&broker, pm, "GET", "/api/operator-policies/%2F", "").await,
        200
    );
    assert_eq!(
        send_as(&broker, pm, "PUT", "/api/policies/%2F/p2", body).await,
        201
    );
    for (path, status) in [
        ("/api/operator-policies/%2F/op1", 204),
        ("/api/operator-policies/%2F/op1", 404),
        ("/api/operator-policies/%2F/all-keys", 204),
    ] {
        assert_eq!(delete(&broker, path).await, status);
    }
    assert_eq!(get(&broker, "/api/operator-policies").await, json!([]));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_operator_policy_caps_the_policy_and_the_arguments_the_lower_value_winning() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (_conn, ch) = channel(&broker).await;
    // An existing queue with x-max-length 4: the operator policy's 5 leaves it at 4,
    // the policy's 3 lowers it.
    let mut args = FieldTable::default();
    args.insert("x-max-length".into(), AMQPValue::LongInt(4));
    declare(&ch, "opq-live", false, args).await;
    assert_eq!(put(&broker, "/api/operator-policies/%2F/op", r#"{"pattern":"^opq-","definition":{"max-length":5,"message-ttl":1000},"apply-to":"queues"}"#).await, 201);
    publish(&ch, "opq-live", 10).await;
    assert_eq!(passive_declare(&ch, "opq-live").await.message_count(), 4);
    let q = get(&broker, "/api/queues/%2F/opq-live").await;
    assert_eq!(q["policy"], serde_json::Value::Null);
    assert_eq!(q["operator_policy"], "op");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"max-length": 5, "message-ttl": 1000})
    );
    assert_eq!(put(&broker, "/api/policies/%2F/pol", r#"{"pattern":"^opq-","definition":{"max-length":3,"message-ttl":5000,"dead-letter-exchange":"dd"},"apply-to":"queues"}"#).await, 201);
    assert_eq!(passive_declare(&ch, "opq-live").await.message_count(), 3);
    // As the reference node shows the same three objects.
    let q = get(&broker, "/api/queues/%2F/opq-live").await;
    assert_eq!(q["policy"], "pol");
    assert_eq!(q["operator_policy"], "op");
    assert_eq!(
        q["effective_policy_definition"],
        json!({"dead-letter-exchange": "dd", "max-length": 3, "message-ttl": 1000})
    );
    // A new queue gets the operator policy's cap when it is the lowest.
    assert_eq!(
        put(
            &broker,
            "/api/operator-policies/%2F/op",
            r#"{"pattern":"^opq-","definition":{"max-length":2},"apply-to":"queues"}"#
        )
        .await,
        204
    );
    assert_eq!(passive_declare(&ch, "opq-live").await.message_count(), 2);
    declare(&ch, "opq-new", false, FieldTable::default()).await;
    publish(&ch, "opq-new", 6).await;
    assert_eq!(passive_declare(&ch, "opq-new").await.message_count(), 2);
    assert_eq!(bodies(&ch, "opq-new").await, ["m4", "m5"]);
    // Without the operator policy, the policy's 3.
    assert_eq!(delete(&broker, "/api/operator-policies/%2F/op").await, 204);
    publish(&ch, "opq-new", 6).await;
    assert_eq!(passive_declare(&ch, "opq-new").await.message_count(), 3);
    let q = get(&broker, "/api/queues/%2F/opq-new").await;
    assert_eq!(q["operator_policy"], serde_json::Value::Null);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn operator_policies_survive_a_crash_and_travel_in_the_definitions() {
    let dir = data_dir();
    let broker = start(&dir).await;
    let (conn, ch) = channel(&broker).await;
    declare(&ch, "opq-durable", true, FieldTable::default()).await;
    assert_eq!(
        put(
            &broker,
            "/api/operator-policies/%2F/cap",
            r#"{"pattern":"^opq-","definition":{"max-length":2},"priority":4}"#
        )
        .await,
        201
    );
    drop(ch);
    drop(conn);
    broker.crash().await;

    let broker = start(&dir).await;
    assert_eq!(
        get(&broker, "/api/operator-policies/%2F/cap").await,
        json!({"vhost": "/", "name": "cap", "pattern": "^opq-", "apply-to": "all",
               "definition": {"max-length": 2}, "priority": 4})
    );
    assert_eq!(
        get(&broker, "/api/queues/%2F/opq-durable").await["operator_policy"],
        "cap"
    );
    // Exported as RabbitMQ 3.10 does: a runtime parameter.
    let defs = get(&broker, "/api/definitions").await;
    let param = json!({"value": {"pattern": "^opq-", "apply-to": "all",
                                 "definition": {"max-length": 2}, "priority": 4},
                       "vhost": "/", "component": "operator_policy", "name": "cap"});
    assert_eq!(defs["parameters"], json!([param.clone()]));
    assert_eq!(defs["policies"], json!([]));
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);

    // Imported into a fresh broker; a refused one names its entry and imports nothing.
    let dir = data_dir();
    let broker = start(&dir).await;
    let bad = json!({"parameters": [{"value": {"pattern": "x", "definition": {"overflow": "drop-head"}},
                                     "vhost": "/", "component": "operator_policy", "name": "no"}]});
    let r = send_json(&broker, "POST", "/api/definitions", &bad.to_string()).await;
    assert_eq!(r.status, 400, "{:?}", String::from_utf8_lossy(&r.body));
    let r = send_json(
        &broker,
        "POST",
        "/api/definitions",
        &json!({"parameters": [param]}).to_string(),
    )
    .await;
    assert_eq!(r.status, 204, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        get(&broker, "/api/operator-policies/%2F/cap").await["definition"],
        json!({"max-length": 2})
    );
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
