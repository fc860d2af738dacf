//! Publishing and routing over real TCP: the default exchange, the direct, fanout, topic and
//! headers exchange types, exchange-to-exchange bindings, alternate exchanges, mandatory
//! publishes returned (`basic.return`), publishes refused (unknown exchange, a foreign
//! `user-id`, `immediate`), and publishes that arrive together in one read keeping their
//! order, routes, properties and errors. Topic matching is also checked against a simple
//! reference matcher with random patterns and keys.
//!
//! lapin drives most tests; the ones about what arrives in one read write raw frames with
//! `common::raw`. Long chains of exchange bindings are in `routing_depth.rs`. Every test
//! starts its own broker on an ephemeral port and waits for events under `common::within`.

mod common;

use bytes::Bytes;
use common::amqp::*;
use common::raw::Client;
use common::{connect, start_broker, within};
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind};
use minimq_protocol::{ContentHeader, Frame, Method};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Declares exchange `name` of `kind` with `args`.
async fn exchange(ch: &Channel, name: &str, kind: ExchangeKind, args: FieldTable) {
    within(ch.exchange_declare(name, kind, ExchangeDeclareOptions::default(), args))
        .await
        .expect("exchange.declare");
}

// ---------------------------------------------------------------------------------------
// The default exchange
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn default_exchange_routes_by_queue_name() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "a").await;
    declare(&ch, "b").await;
    publish(&ch, "", "a", b"to a").await;
    publish(&ch, "", "nowhere", b"dropped").await;
    let m = get(&ch, "a").await.expect("routed to a");
    assert_eq!(body(&m.delivery), "to a");
    assert_eq!(m.delivery.exchange.as_str(), "");
    assert_eq!(m.delivery.routing_key.as_str(), "a");
    assert!(get(&ch, "b").await.is_none());
    assert!(ch.status().connected(), "unroutable is not an error");
    // Binding to the default exchange is not allowed.
    let refused = within(ch.queue_bind(
        "a",
        "",
        "x",
        QueueBindOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_eq!(
        expect_amqp(refused),
        (
            403,
            "ACCESS_REFUSED - operation not permitted on the default exchange".to_string()
        )
    );
}

/// A channel remembers where its last default-exchange publish went; creating or deleting
/// a queue makes it look again. Publishes on one channel, the queue changed from another.
#[tokio::test]
async fn default_exchange_routes_follow_queues_created_and_deleted_between_publishes() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let publisher = open(&conn).await;
    let admin = open(&conn).await;
    confirm_mode(&publisher).await;

    // No queue yet: dropped. Then the queue appears: the same route now reaches it.
    publish(&publisher, "", "q", b"before").await;
    declare(&admin, "q").await;
    publish(&publisher, "", "q", b"first").await;
    assert_eq!(drain(&admin, "q").await, ["first"]);

    // The queue goes and comes back: the new one gets the message, not the old one.
    publish(&publisher, "", "q", b"to the old one").await;
    within(admin.queue_delete("q", QueueDeleteOptions::default()))
        .await
        .expect("delete");
    declare(&admin, "q").await;
    publish(&publisher, "", "q", b"to the new one").await;
    assert_eq!(drain(&admin, "q").await, ["to the new one"]);

    // Deleted and not recreated: dropped, not sent to the queue that is gone.
    within(admin.queue_delete("q", QueueDeleteOptions::default()))
        .await
        .expect("delete");
    publish(&publisher, "", "q", b"nowhere").await;
    declare(&admin, "q").await;
    assert!(drain(&admin, "q").await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Exchange types
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn direct_exchange_routes_by_exact_key() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare_exchange(&ch, "logs", ExchangeKind::Direct).await;
    // Redeclaring with another type is refused.
    let other = open(&conn).await;
    let refused = within(other.exchange_declare(
        "logs",
        ExchangeKind::Fanout,
        ExchangeDeclareOptions::default(),
        FieldTable::default(),
    ))
    .await;
    assert_eq!(
        expect_amqp(refused),
        (
            406,
            "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'logs' in vhost '/': \
             received 'fanout' but current is 'direct'"
                .to_string()
        )
    );
    for q in ["errors", "all"] {
        declare(&ch, q).await;
    }
    bind(&ch, "errors", "logs", "error", FieldTable::default()).await;
    for key in ["error", "warning", "info"] {
        bind(&ch, "all", "logs", key, FieldTable::default()).await;
    }
    for key in ["error", "warning", "debug", "info"] {
        publish(&ch, "logs", key, key.as_bytes()).await;
    }
    assert_eq!(routed_keys(&ch, "errors").await, ["error"]);
    assert_eq!(routed_keys(&ch, "all").await, ["error", "warning", "info"]);
    within(ch.queue_unbind("all", "logs", "error", FieldTable::default()))
        .await
        .unwrap();
    publish(&ch, "logs", "error", b"e").await;
    assert_eq!(routed_keys(&ch, "all").await, Vec::<String>::new());
    assert_eq!(routed_keys(&ch, "errors").await, ["error"]);
    // amq.direct exists already.
    bind(&ch, "all", "amq.direct", "k", FieldTable::default()).await;
    publish(&ch, "amq.direct", "k", b"x").await;
    assert_eq!(routed_keys(&ch, "all").await, ["k"]);
}

#[tokio::test]
async fn fanout_exchange_copies_to_every_bound_queue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare_exchange(&ch, "fan", ExchangeKind::Fanout).await;
    for q in ["a", "b", "unbound"] {
        declare(&ch, q).await;
    }
    bind(&ch, "a", "fan", "", FieldTable::default()).await;
    bind(&ch, "b", "fan", "ignored", FieldTable::default()).await;
    publish(&ch, "fan", "any.key", b"news").await;
    assert_eq!(routed_keys(&ch, "a").await, ["any.key"]);
    assert_eq!(routed_keys(&ch, "b").await, ["any.key"]);
    assert!(routed_keys(&ch, "unbound").await.is_empty());
    bind(&ch, "a", "amq.fanout", "", FieldTable::default()).await;
    publish(&ch, "amq.fanout", "x", b"y").await;
    assert_eq!(routed_keys(&ch, "a").await, ["x"]);
}

#[tokio::test]
async fn topic_exchange_matches_star_and_hash_on_amq_topic() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    for q in ["q1", "q2"] {
        declare(&ch, q).await;
    }
    bind(&ch, "q1", "amq.topic", "*.orange.*", FieldTable::default()).await;
    bind(&ch, "q2", "amq.topic", "*.*.rabbit", FieldTable::default()).await;
    bind(&ch, "q2", "amq.topic", "lazy.#", FieldTable::default()).await;
    for key in [
        "quick.orange.rabbit",
        "lazy.orange.elephant",
        "quick.orange.fox",
        "lazy.brown.fox",
        "lazy.pink.rabbit",
        "quick.brown.fox",
        "orange",
        "quick.orange.new.rabbit",
        "lazy.orange.new.rabbit",
        "lazy",
    ] {
        publish(&ch, "amq.topic", key, key.as_bytes()).await;
    }
    assert_eq!(
        routed_keys(&ch, "q1").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "quick.orange.fox"
        ]
    );
    // Matched by two bindings, lazy.pink.rabbit still arrives once; `#` matches zero words.
    assert_eq!(
        routed_keys(&ch, "q2").await,
        [
            "quick.orange.rabbit",
            "lazy.orange.elephant",
            "lazy.brown.fox",
            "lazy.pink.rabbit",
            "lazy.orange.new.rabbit",
            "lazy"
        ]
    );
}

#[tokio::test]
async fn headers_exchange_matches_all_or_any() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare_exchange(&ch, "hdr", ExchangeKind::Headers).await;
    for q in ["all", "any"] {
        declare(&ch, q).await;
    }
    bind(
        &ch,
        "all",
        "hdr",
        "",
        args(&[
            ("x-match", text("all")),
            ("format", text("pdf")),
            ("type", text("report")),
        ]),
    )
    .await;
    bind(
        &ch,
        "any",
        "hdr",
        "",
        args(&[
            ("x-match", text("any")),
            ("format", text("pdf")),
            ("type", text("log")),
        ]),
    )
    .await;
    let cases: [(&str, &[(&str, &str)]); 4] = [
        ("pdf-report", &[("format", "pdf"), ("type", "report")]),
        ("zip-log", &[("format", "zip"), ("type", "log")]),
        ("pdf", &[("format", "pdf")]),
        ("none", &[]),
    ];
    for (key, headers) in cases {
        let table = args(
            &headers
                .iter()
                .map(|(k, v)| (*k, text(v)))
                .collect::<Vec<_>>(),
        );
        publish_with(
            &ch,
            "hdr",
            key,
            b"x",
            BasicPublishOptions::default(),
            BasicProperties::default().with_headers(table),
        )
        .await;
    }
    assert_eq!(routed_keys(&ch, "all").await, ["pdf-report"]);
    assert_eq!(
        routed_keys(&ch, "any").await,
        ["pdf-report", "zip-log", "pdf"]
    );
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

// ---------------------------------------------------------------------------------------
// Exchange-to-exchange bindings and alternate exchanges
// ---------------------------------------------------------------------------------------

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
        ready(&ch, "all").await,
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
    assert_eq!(ready(&ch, "all").await, 1);
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
    assert_eq!(ready(&ch, "known").await, 1);
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
    assert_eq!(ready(&ch, "lost-and-found").await, 1, "only the stray one");
    broker.shutdown().await;
}

// ---------------------------------------------------------------------------------------
// Returned and refused publishes
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn publish_to_unknown_exchange_closes_the_channel_with_404() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    let mut errors = channel_errors(&ch);
    within(ch.basic_publish(
        "nope",
        "k",
        BasicPublishOptions::default(),
        b"x",
        BasicProperties::default(),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_error(&mut errors).await,
        (
            404,
            "NOT_FOUND - no exchange 'nope' in vhost '/'".to_string()
        )
    );
    let ch2 = open(&conn).await;
    declare(&ch2, "still-fine").await;
    assert!(conn.status().connected());
}

#[tokio::test]
async fn mandatory_unroutable_publish_is_returned_312_before_its_confirm() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    confirm_mode(&ch).await;
    let mandatory = BasicPublishOptions {
        mandatory: true,
        ..Default::default()
    };
    let confirmation = publish_with(
        &ch,
        "",
        "nowhere",
        b"lost",
        mandatory,
        BasicProperties::default(),
    )
    .await;
    // lapin attaches a basic.return to the confirm only if it arrived first.
    let Confirmation::Ack(Some(returned)) = confirmation else {
        panic!("expected an ack carrying the returned message, got {confirmation:?}");
    };
    assert_eq!(returned.reply_code, 312);
    assert_eq!(returned.reply_text.as_str(), "NO_ROUTE");
    assert_eq!(returned.delivery.routing_key.as_str(), "nowhere");
    assert_eq!(returned.delivery.data, b"lost");
    // A routable mandatory publish is not returned.
    declare(&ch, "q").await;
    let c = publish_with(&ch, "", "q", b"ok", mandatory, BasicProperties::default()).await;
    assert_eq!(c, Confirmation::Ack(None));
}

/// AMQPStorm's `test_functional_close_gracefully_after_publish_mandatory_fails` shape: 25
/// unroutable mandatory publishes of an empty body (method and header frame, no body
/// frame), each its own write. Every `basic.return` comes without the client sending
/// anything more: a return waiting for a later event would time out here.
#[tokio::test]
async fn unroutable_mandatory_publishes_are_returned_without_waiting_for_more_input() {
    let broker = start_broker().await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    for body in [&b""[..], b"x"] {
        for _ in 0..25 {
            let mut frames = bytes::BytesMut::new();
            Frame::Method(
                1,
                minimq_protocol::BasicPublish {
                    exchange: String::new(),
                    routing_key: "nowhere".into(),
                    mandatory: true,
                    immediate: false,
                }
                .into(),
            )
            .encode(&mut frames);
            Frame::Header(
                1,
                Box::new(ContentHeader {
                    class_id: 60,
                    body_size: body.len() as u64,
                    properties: Default::default(),
                }),
            )
            .encode(&mut frames);
            if !body.is_empty() {
                Frame::Body(1, Bytes::copy_from_slice(body)).encode(&mut frames);
            }
            raw.io.get_mut().write_all(&frames).await.expect("send");
        }
        for _ in 0..25 {
            match raw.method(1).await {
                Method::BasicReturn(r) => assert_eq!(
                    (r.reply_code, r.reply_text.as_str(), r.routing_key.as_str()),
                    (312, "NO_ROUTE", "nowhere")
                ),
                other => panic!("expected basic.return, got {other:?}"),
            }
            let Frame::Header(1, h) = raw.frame().await else {
                panic!("expected the returned message's header")
            };
            assert_eq!(h.body_size, body.len() as u64);
            if !body.is_empty() {
                let Frame::Body(1, b) = raw.frame().await else {
                    panic!("expected the returned message's body")
                };
                assert_eq!(&b[..], body);
            }
        }
    }
}

#[tokio::test]
async fn user_id_must_match_the_authenticated_user() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    publish_with(
        &ch,
        "",
        "q",
        b"mine",
        BasicPublishOptions::default(),
        BasicProperties::default().with_user_id("guest".into()),
    )
    .await;
    assert_eq!(ready(&ch, "q").await, 1);
    let mut errors = channel_errors(&ch);
    within(ch.basic_publish(
        "",
        "q",
        BasicPublishOptions::default(),
        b"forged",
        BasicProperties::default().with_user_id("bob".into()),
    ))
    .await
    .unwrap();
    assert_eq!(
        next_error(&mut errors).await,
        (
            406,
            "PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was \
             'guest'"
                .to_string()
        )
    );
    assert_eq!(
        ready(&open(&conn).await, "q").await,
        1,
        "forged one dropped"
    );
}

#[tokio::test]
async fn publish_with_immediate_closes_the_connection_540() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let mut errors = connection_errors(&conn);
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let immediate = BasicPublishOptions {
        immediate: true,
        ..Default::default()
    };
    let _ = within(ch.basic_publish("", "q", immediate, b"x", BasicProperties::default())).await;
    assert_eq!(
        next_error(&mut errors).await,
        (540, "NOT_IMPLEMENTED - immediate=true".to_string())
    );
    assert!(!conn.status().connected());
}

// ---------------------------------------------------------------------------------------
// Publishes that arrive in one read
// ---------------------------------------------------------------------------------------

/// Appends to `buf` a publish of `body` to `queue` on channel 1, as frames.
fn publish_frames(buf: &mut bytes::BytesMut, queue: &str, body: &[u8]) {
    let publish = Method::BasicPublish(minimq_protocol::BasicPublish {
        exchange: String::new(),
        routing_key: queue.into(),
        mandatory: false,
        immediate: false,
    });
    let props = minimq_protocol::BasicProperties::default();
    minimq_protocol::frame::encode_content(buf, 1, &publish, &props, body, 131_072);
}

/// A connection's publishes from one read go to their queue together: whatever follows
/// them in that read (a purge, a get, a channel close) still comes after them.
#[tokio::test]
async fn publishes_read_together_reach_the_queue_before_the_frames_after_them() {
    use minimq_protocol::frame::encode_method;
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    let mut buf = bytes::BytesMut::new();
    for i in 0..100 {
        publish_frames(&mut buf, "q", format!("a{i}").as_bytes());
    }
    let purge = minimq_protocol::QueuePurge {
        queue: "q".into(),
        no_wait: false,
    };
    encode_method(&mut buf, 1, &purge.into());
    for i in 0..50 {
        publish_frames(&mut buf, "q", format!("b{i}").as_bytes());
    }
    let get = minimq_protocol::BasicGet {
        queue: "q".into(),
        no_ack: true,
    };
    encode_method(&mut buf, 1, &get.into());
    for i in 0..10 {
        publish_frames(&mut buf, "q", format!("c{i}").as_bytes());
    }
    let close = minimq_protocol::ChannelClose {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    encode_method(&mut buf, 1, &close.into());
    // One write: the broker reads all of it together.
    raw.io.get_mut().write_all(&buf).await.expect("write");

    let Method::QueuePurgeOk(purged) = raw.method(1).await else {
        panic!("expected queue.purge-ok")
    };
    assert_eq!(purged.message_count, 100, "the publishes before the purge");
    let Method::BasicGetOk(got) = raw.method(1).await else {
        panic!("expected basic.get-ok")
    };
    assert_eq!(
        got.message_count, 49,
        "the publishes between purge and get, less one"
    );
    let Frame::Header(1, _) = raw.frame().await else {
        panic!("expected a content header")
    };
    let Frame::Body(1, first) = raw.frame().await else {
        panic!("expected a content body")
    };
    assert_eq!(&first[..], b"b0");
    let Method::ChannelCloseOk(_) = raw.method(1).await else {
        panic!("expected channel.close-ok")
    };
    let want: Vec<String> = (1..50)
        .map(|i| format!("b{i}"))
        .chain((0..10).map(|i| format!("c{i}")))
        .collect();
    assert_eq!(drain(&ch, "q").await, want, "the rest, in publish order");
}

/// Publishes read together, whatever their framing and however they differ from the one
/// before them (routing key, properties, body in several frames or none, unroutable
/// with `mandatory`, to a missing exchange), are each routed with their own route and
/// properties, in order, with the return and the channel error a publish on its own gets.
#[tokio::test]
async fn publishes_read_together_keep_their_routes_properties_and_errors() {
    use minimq_protocol::frame::encode_content;
    use minimq_protocol::BasicProperties as Props;
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    declare(&ch, "q2").await;
    let a = Props {
        content_type: Some("a".into()),
        ..Props::default()
    };
    let b = Props {
        content_type: Some("b".into()),
        priority: Some(3),
        ..Props::default()
    };
    let big = vec![b'x'; 5000];
    // (exchange, routing key, mandatory, properties, body, frame limit the body is split at)
    type Step<'a> = (&'a str, &'a str, bool, &'a Props, &'a [u8], u32);
    let script: Vec<Step> = vec![
        ("", "q", false, &a, b"1", 131_072),
        ("", "q", false, &a, b"2", 131_072),
        ("", "q2", false, &b, b"3", 131_072),
        ("", "q", false, &a, &big, 4096),
        ("", "q", false, &a, b"", 131_072),
        ("", "nowhere", true, &b, b"returned", 131_072),
        ("", "q", false, &b, b"7", 131_072),
        ("missing", "q", false, &a, b"8", 131_072),
        // After the channel error: discarded with the rest of the channel's frames.
        ("", "q", false, &a, b"9", 131_072),
    ];
    let mut buf = bytes::BytesMut::new();
    for (exchange, rk, mandatory, props, body, frame_max) in &script {
        let publish = Method::BasicPublish(minimq_protocol::BasicPublish {
            exchange: (*exchange).into(),
            routing_key: (*rk).into(),
            mandatory: *mandatory,
            immediate: false,
        });
        encode_content(&mut buf, 1, &publish, props, body, *frame_max);
    }
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    // One write: the broker reads all of it together.
    raw.io.get_mut().write_all(&buf).await.expect("write");

    let Method::BasicReturn(ret) = raw.method(1).await else {
        panic!("expected basic.return")
    };
    assert_eq!((ret.reply_code, ret.routing_key.as_str()), (312, "nowhere"));
    let Frame::Header(1, header) = raw.frame().await else {
        panic!("expected a content header")
    };
    assert_eq!(header.properties, b);
    let Frame::Body(1, returned) = raw.frame().await else {
        panic!("expected a content body")
    };
    assert_eq!(&returned[..], b"returned");
    let Method::ChannelClose(close) = raw.method(1).await else {
        panic!("expected channel.close")
    };
    assert_eq!(
        (close.reply_code, close.reply_text.as_str()),
        (404, "NOT_FOUND - no exchange 'missing' in vhost '/'")
    );

    let mut got = Vec::new();
    for queue in ["q", "q2"] {
        while let Some(m) = get(&ch, queue).await {
            let content_type = m.delivery.properties.content_type().clone();
            let priority = *m.delivery.properties.priority();
            got.push((
                queue,
                m.delivery.data.len(),
                m.delivery.data.first().copied(),
                content_type.map(|c| c.to_string()),
                priority,
            ));
        }
    }
    let a_type = Some("a".to_string());
    let b_type = Some("b".to_string());
    assert_eq!(
        got,
        vec![
            ("q", 1, Some(b'1'), a_type.clone(), None),
            ("q", 1, Some(b'2'), a_type.clone(), None),
            ("q", 5000, Some(b'x'), a_type.clone(), None),
            ("q", 0, None, a_type.clone(), None),
            ("q", 1, Some(b'7'), b_type.clone(), Some(3)),
            ("q2", 1, Some(b'3'), b_type, Some(3)),
        ]
    );
}

/// Publishes read together with the end of the stream are not lost with the connection.
#[tokio::test]
async fn publishes_read_with_the_end_of_the_stream_still_reach_the_queue() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    let raw = Client::open_channel1(broker.local_addr()).await;
    let mut buf = bytes::BytesMut::new();
    for i in 0..100 {
        publish_frames(&mut buf, "q", format!("{i}").as_bytes());
    }
    let mut socket = raw.io.into_inner();
    socket.write_all(&buf).await.expect("write");
    socket.shutdown().await.expect("shutdown");
    // The broker closes its side once it has read to the end; the publishes it read went
    // to the queue before that, so a passive declare sent now counts them.
    let mut rest = Vec::new();
    within(socket.read_to_end(&mut rest))
        .await
        .expect("the broker closes the connection");
    assert_eq!(ready(&ch, "q").await, 100);
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(drain(&ch, "q").await, want);
}
