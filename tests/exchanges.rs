//! Exchange-to-exchange bindings, alternate exchanges and auto-delete exchanges over real
//! TCP with lapin, and topic matching checked against a simple reference matcher.

mod common;

use common::{connect, start_broker};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, ExchangeUnbindOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use proptest::prelude::*;

async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    ch.exchange_declare(name, kind, ExchangeDeclareOptions::default(), args)
        .await
        .unwrap();
}

async fn queue_bound(ch: &Channel, queue: &str, exchange: &str, key: &str) {
    ch.queue_declare(queue, QueueDeclareOptions::default(), FieldTable::default())
        .await
        .unwrap();
    ch.queue_bind(
        queue,
        exchange,
        key,
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

async fn publish(ch: &Channel, exchange: &str, key: &str, body: &[u8]) {
    ch.basic_publish(
        exchange,
        key,
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .unwrap();
}

async fn count(ch: &Channel, queue: &str) -> u32 {
    common::passive_declare(ch, queue).await.message_count()
}

#[tokio::test]
async fn exchange_to_exchange_bindings_route_and_cycles_end() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "front", ExchangeKind::Topic, FieldTable::default()).await;
    exchange(&ch, "back", ExchangeKind::Fanout, FieldTable::default()).await;
    queue_bound(&ch, "all", "back", "").await;
    ch.exchange_bind(
        "back",
        "front",
        "orders.#",
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    // A cycle back to the front: each exchange is visited once per message.
    ch.exchange_bind(
        "front",
        "back",
        "",
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "front", "orders.new", b"routed").await;
    publish(&ch, "front", "invoices.new", b"not routed").await;
    assert_eq!(
        count(&ch, "all").await,
        1,
        "exactly one copy despite the cycle"
    );
    ch.exchange_unbind(
        "back",
        "front",
        "orders.#",
        ExchangeUnbindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    publish(&ch, "front", "orders.new", b"after unbind").await;
    assert_eq!(count(&ch, "all").await, 1);
    broker.shutdown().await;
}

#[tokio::test]
async fn unroutable_messages_go_to_the_alternate_exchange_without_a_return() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "unrouted", ExchangeKind::Fanout, FieldTable::default()).await;
    queue_bound(&ch, "lost-and-found", "unrouted", "").await;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("alternate-exchange"),
        AMQPValue::LongString("unrouted".into()),
    );
    exchange(&ch, "main", ExchangeKind::Direct, args).await;
    queue_bound(&ch, "known", "main", "known").await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let ok = ch
        .basic_publish(
            "main",
            "unknown",
            BasicPublishOptions {
                mandatory: true,
                ..Default::default()
            },
            b"stray",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ok.is_ack());
    assert!(
        ok.take_message().is_none(),
        "routed through the alternate exchange: no basic.return"
    );
    publish(&ch, "main", "known", b"normal").await;
    assert_eq!(count(&ch, "known").await, 1);
    let m = ch
        .basic_get("lost-and-found", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&m.delivery.data[..], b"stray");
    assert!(ch
        .basic_get("lost-and-found", BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_none());
    broker.shutdown().await;
}

/// RabbitMQ uses an exchange's alternate exchange only when that exchange's own bindings
/// matched nothing (`rabbit_exchange:process_alternate` on its direct destinations): a
/// match on a binding to another exchange counts, even when nothing downstream takes the
/// message, and the publish is then unroutable.
#[tokio::test]
async fn the_alternate_exchange_is_used_only_when_no_binding_matched() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    exchange(&ch, "unrouted", ExchangeKind::Fanout, FieldTable::default()).await;
    queue_bound(&ch, "lost-and-found", "unrouted", "").await;
    exchange(&ch, "dead-end", ExchangeKind::Fanout, FieldTable::default()).await;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("alternate-exchange"),
        AMQPValue::LongString("unrouted".into()),
    );
    exchange(&ch, "main", ExchangeKind::Direct, args).await;
    ch.exchange_bind(
        "dead-end",
        "main",
        "to-dead-end",
        ExchangeBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let matched = ch
        .basic_publish(
            "main",
            "to-dead-end",
            mandatory,
            b"matched",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        matched.take_message().is_some(),
        "a binding matched, so no alternate exchange: unroutable, returned"
    );
    let stray = ch
        .basic_publish(
            "main",
            "nothing",
            mandatory,
            b"stray",
            BasicProperties::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(
        stray.take_message().is_none(),
        "went to the alternate exchange"
    );
    assert_eq!(count(&ch, "lost-and-found").await, 1, "only the stray one");
    broker.shutdown().await;
}

#[tokio::test]
async fn an_auto_delete_exchange_goes_with_its_last_binding() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        "temp",
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            auto_delete: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    queue_bound(&ch, "q", "temp", "k").await;
    ch.queue_unbind("q", "temp", "k", FieldTable::default())
        .await
        .unwrap();
    let err = ch
        .exchange_declare(
            "temp",
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("NOT_FOUND"), "{err}");
    broker.shutdown().await;
}

/// The obviously right topic matcher: recursion over words.
fn reference(pattern: &[&str], key: &[&str]) -> bool {
    match (pattern.first(), key.first()) {
        (None, None) => true,
        (Some(&"#"), _) => {
            reference(&pattern[1..], key) || (!key.is_empty() && reference(pattern, &key[1..]))
        }
        (Some(&"*"), Some(_)) => reference(&pattern[1..], &key[1..]),
        (Some(p), Some(k)) if p == k => reference(&pattern[1..], &key[1..]),
        _ => false,
    }
}

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("a".to_string()),
        Just("b".to_string()),
        Just(String::new()),
        Just("ab".to_string())
    ]
}

fn pattern_word() -> impl Strategy<Value = String> {
    prop_oneof![word(), Just("*".to_string()), Just("#".to_string())]
}

proptest! {
    #[test]
    fn topic_matching_agrees_with_the_reference(
        pattern in prop::collection::vec(pattern_word(), 1..6),
        key in prop::collection::vec(word(), 1..6),
    ) {
        let p = pattern.join(".");
        let k = key.join(".");
        let pw: Vec<&str> = p.split('.').collect();
        let kw: Vec<&str> = k.split('.').collect();
        prop_assert_eq!(
            minimq_broker::exchange::topic::matches(&p, &k),
            reference(&pw, &kw),
            "pattern {:?} key {:?}", p, k
        );
    }
}
