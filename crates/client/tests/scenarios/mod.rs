//! Broker-agnostic client scenarios. Each takes the broker's `amqp://` URL, so the same
//! checks run against RabbitMQ (`tests/rabbitmq.rs`) and, later, the in-process minimq
//! broker: include this file with `#[path = ".../scenarios/mod.rs"] mod scenarios;`.
//!
//! Every scenario uses its own uniquely named (mostly exclusive) queues, so they can run
//! in parallel against one broker, and panics on failure.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use minimq_client::{
    BasicConsumeOptions, BasicProperties, Channel, Confirmation, Connection, ConnectionConfig,
    Error, FieldTable, FieldValue, QueueDeclareOptions, QueueDeleteOptions,
};

/// Every scenario, by name, for runners that loop over them.
pub const ALL: &[&str] = &[
    "declare_publish_get",
    "large_body_is_split_at_frame_max",
    "consume_and_ack",
    "nack_requeue_redelivers",
    "publisher_confirms",
    "mandatory_publish_is_returned",
    "channel_error_fails_pending_calls",
    "heartbeats_keep_an_idle_connection_alive",
    "bad_credentials_are_refused",
    "close_ends_consumers_and_calls",
    "a_burst_of_deliveries_arrives_whole_and_in_order",
    "auto_ack_deliveries_need_no_settling",
    "transactions_commit_and_roll_back",
];

/// A queue name no other scenario (or run) uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "minimq-client-test.{prefix}.{}.{nanos}.{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// `url` with one more query parameter.
pub fn with_param(url: &str, param: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{param}")
}

fn exclusive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        exclusive: true,
        ..QueueDeclareOptions::default()
    }
}

fn passive() -> QueueDeclareOptions {
    QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    }
}

fn manual_ack() -> BasicConsumeOptions {
    BasicConsumeOptions::default()
}

async fn connect(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url).await.expect("connect");
    let ch = conn.open_channel().await.expect("open channel");
    (conn, ch)
}

/// Next delivery within 5 s, or panic.
async fn next(consumer: &mut minimq_client::Consumer) -> minimq_client::Delivery {
    tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("delivery within 5 s")
        .expect("consumer stream ended")
        .expect("delivery")
}

/// Polls a passive declare until the queue holds `count` ready messages (5 s at most).
pub async fn wait_for_ready(ch: &Channel, queue: &str, count: u32) {
    let mut seen = 0;
    for _ in 0..100 {
        seen = ch
            .queue_declare(queue, passive(), FieldTable::new())
            .await
            .unwrap()
            .message_count;
        if seen == count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("queue {queue} holds {seen} messages, expected {count}");
}

/// queue.declare → publish (with properties) → basic.get, ack, get-empty.
pub async fn declare_publish_get(url: &str) {
    let (conn, ch) = connect(url).await;
    let q = ch
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    assert!(!q.name.is_empty(), "server-named queue");
    assert_eq!((q.message_count, q.consumer_count), (0, 0));

    let mut headers = FieldTable::new();
    headers.insert("x-attempt", 3i32);
    headers.insert("origin", "scenario");
    let props = BasicProperties {
        content_type: Some("text/plain".into()),
        delivery_mode: Some(2),
        correlation_id: Some("corr-1".into()),
        headers: Some(headers.clone()),
        ..BasicProperties::default()
    };
    for i in 0..3 {
        let confirm = ch
            .basic_publish("", &q.name, false, props.clone(), format!("msg {i}"))
            .await
            .unwrap();
        assert_eq!(confirm.await.unwrap(), Confirmation::NotRequested);
    }
    // Without confirms the broker may not have enqueued them yet: poll.
    wait_for_ready(&ch, &q.name, 3).await;

    let got = ch
        .basic_get(&q.name, false)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(got.message_count, 2);
    let d = got.delivery;
    assert_eq!(d.body, Bytes::from("msg 0"));
    assert_eq!(&*d.routing_key, q.name);
    assert_eq!(&*d.exchange, "");
    assert!(!d.redelivered);
    assert_eq!(d.properties.content_type.as_deref(), Some("text/plain"));
    assert_eq!(d.properties.correlation_id.as_deref(), Some("corr-1"));
    assert!(d.properties.is_persistent());
    let h = d.properties.headers.as_ref().expect("headers");
    assert_eq!(h.get("x-attempt").and_then(FieldValue::as_i64), Some(3));
    assert_eq!(
        h.get("origin").and_then(FieldValue::as_str),
        Some("scenario")
    );
    d.ack().await.unwrap();
    assert!(
        matches!(d.ack().await, Err(Error::InvalidState(_))),
        "double ack is refused locally"
    );

    let second = ch
        .basic_get(&q.name, true)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(second.delivery.body, Bytes::from("msg 1"));
    second.delivery.ack().await.unwrap(); // no_ack: a no-op
    assert_eq!(ch.queue_purge(&q.name).await.unwrap(), 1);
    assert!(ch.basic_get(&q.name, false).await.unwrap().is_none());
    assert_eq!(
        ch.queue_delete(&q.name, QueueDeleteOptions::default())
            .await
            .unwrap(),
        0
    );
    conn.close().await.unwrap();
}

/// A body far larger than frame_max goes out in many body frames and comes back whole.
pub async fn large_body_is_split_at_frame_max(url: &str) {
    let url = with_param(url, "frame_max=4096");
    let (conn, ch) = connect(&url).await;
    assert_eq!(conn.tune().frame_max, 4096);
    let q = ch
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    let body: Bytes = (0..300_000u32)
        .map(|i| (i % 251) as u8)
        .collect::<Vec<_>>()
        .into();
    let empty = Bytes::new();
    ch.basic_publish("", &q.name, false, BasicProperties::default(), body.clone())
        .await
        .unwrap();
    ch.basic_publish("", &q.name, false, BasicProperties::default(), empty)
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&q.name, "", manual_ack(), FieldTable::new())
        .await
        .unwrap();
    let d = next(&mut consumer).await;
    assert_eq!(d.body.len(), body.len());
    assert!(d.body == body, "body intact");
    d.ack().await.unwrap();
    let d = next(&mut consumer).await;
    assert!(d.body.is_empty());
    d.ack().await.unwrap();
    conn.close().await.unwrap();
}

/// basic.consume with manual acks and prefetch 1; cancel ends the stream.
pub async fn consume_and_ack(url: &str) {
    let (conn, ch) = connect(url).await;
    let name = unique("consume");
    ch.queue_declare(&name, exclusive(), FieldTable::new())
        .await
        .unwrap();
    ch.basic_qos(1, false).await.unwrap();
    let tag = unique("tag");
    let mut consumer = ch
        .basic_consume(&name, &tag, manual_ack(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(consumer.tag(), tag);
    for i in 0..5 {
        ch.basic_publish("", &name, false, BasicProperties::default(), format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..5 {
        let d = next(&mut consumer).await;
        assert_eq!(d.body, Bytes::from(format!("{i}")));
        assert_eq!(&*d.consumer_tag, tag);
        assert!(!d.redelivered);
        // prefetch 1: nothing else is in flight until this one is acked.
        d.ack().await.unwrap();
    }
    let q = ch
        .queue_declare(&name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!((q.message_count, q.consumer_count), (0, 1));
    ch.basic_cancel(&tag).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await;
    assert!(matches!(end, Ok(None)), "stream ends after cancel");
    let q = ch
        .queue_declare(&name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(q.consumer_count, 0);

    // A server-generated tag.
    let consumer = ch
        .basic_consume(&name, "", manual_ack(), FieldTable::new())
        .await
        .unwrap();
    assert!(!consumer.tag().is_empty());
    conn.close().await.unwrap();
}

/// nack with requeue → the same message comes back with `redelivered = true`.
pub async fn nack_requeue_redelivers(url: &str) {
    let (conn, ch) = connect(url).await;
    let q = ch
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    ch.basic_publish("", &q.name, false, BasicProperties::default(), "again")
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&q.name, "", manual_ack(), FieldTable::new())
        .await
        .unwrap();
    let first = next(&mut consumer).await;
    assert!(!first.redelivered);
    first.nack(true).await.unwrap();
    let second = next(&mut consumer).await;
    assert_eq!(second.body, Bytes::from("again"));
    assert!(
        second.redelivered,
        "requeued message is flagged redelivered"
    );
    second.reject(true).await.unwrap();
    let third = next(&mut consumer).await;
    assert!(third.redelivered);
    third.reject(false).await.unwrap(); // dropped for good
    let left = ch
        .queue_declare(&q.name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(left.message_count, 0);
    conn.close().await.unwrap();
}

/// confirm.select → every publish resolves to Ack; wait_for_confirms → true.
pub async fn publisher_confirms(url: &str) {
    let (conn, ch) = connect(url).await;
    assert!(
        matches!(ch.wait_for_confirms().await, Err(Error::InvalidState(_))),
        "not in confirm mode yet"
    );
    let q = ch
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    ch.confirm_select().await.unwrap();
    let mut confirms = Vec::new();
    for i in 0..50 {
        let props = BasicProperties {
            delivery_mode: Some(2),
            ..BasicProperties::default()
        };
        confirms.push(
            ch.basic_publish("", &q.name, false, props, format!("{i}"))
                .await
                .unwrap(),
        );
    }
    for confirm in confirms {
        assert_eq!(confirm.await.unwrap(), Confirmation::Ack);
    }
    for i in 0..20 {
        // Fire and forget, then wait for all of them at once.
        ch.basic_publish(
            "",
            &q.name,
            false,
            BasicProperties::default(),
            format!("{i}"),
        )
        .await
        .unwrap();
    }
    assert!(ch.wait_for_confirms().await.unwrap(), "all acked");
    assert!(ch.wait_for_confirms().await.unwrap(), "nothing outstanding");
    let q = ch
        .queue_declare(&q.name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(q.message_count, 70);
    conn.close().await.unwrap();
}

/// A mandatory publish nobody can route comes back as basic.return (312 NO_ROUTE).
pub async fn mandatory_publish_is_returned(url: &str) {
    let (conn, ch) = connect(url).await;
    let mut returns = ch.returned_messages();
    ch.confirm_select().await.unwrap();
    let nowhere = unique("nowhere");
    let props = BasicProperties {
        message_id: Some("m-1".into()),
        ..BasicProperties::default()
    };
    let confirm = ch
        .basic_publish("", &nowhere, true, props, "lost")
        .await
        .unwrap();
    let returned = tokio::time::timeout(Duration::from_secs(5), returns.next())
        .await
        .expect("return within 5 s")
        .expect("a returned message");
    assert_eq!(returned.reply_code, 312);
    assert!(
        returned.reply_text.contains("NO_ROUTE"),
        "{}",
        returned.reply_text
    );
    assert_eq!(returned.routing_key, nowhere);
    assert_eq!(returned.body, Bytes::from("lost"));
    assert_eq!(returned.properties.message_id.as_deref(), Some("m-1"));
    // The broker still acks an unroutable message: it handled it.
    assert_eq!(confirm.await.unwrap(), Confirmation::Ack);

    // Not mandatory: silently dropped, nothing returned.
    ch.basic_publish("", &nowhere, false, BasicProperties::default(), "gone")
        .await
        .unwrap()
        .await
        .unwrap();
    ch.close().await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), returns.next()).await;
    assert!(
        matches!(end, Ok(None)),
        "returns stream ends with the channel"
    );
    conn.close().await.unwrap();
}

fn is_404(result: &Result<impl std::fmt::Debug, Error>) -> bool {
    matches!(result, Err(Error::ChannelClosed { code: 404, .. }))
}

/// A 404 from a passive declare closes the channel: the call, the calls queued behind it
/// and the channel's consumers fail with ChannelClosed(404); the connection lives on.
pub async fn channel_error_fails_pending_calls(url: &str) {
    let (conn, ch) = connect(url).await;
    let q = ch
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&q.name, "", manual_ack(), FieldTable::new())
        .await
        .unwrap();
    let missing = unique("missing");
    let other = unique("other");
    // Both requests are on the wire before the server answers the first.
    let (failed, pending, purge) = tokio::join!(
        ch.queue_declare(&missing, passive(), FieldTable::new()),
        ch.queue_declare(&other, exclusive(), FieldTable::new()),
        ch.queue_purge(&q.name),
    );
    assert!(is_404(&failed), "{failed:?}");
    if let Err(Error::ChannelClosed { text, .. }) = &failed {
        assert!(text.contains("NOT_FOUND"), "{text}");
    }
    assert!(is_404(&pending), "pending call fails too: {pending:?}");
    assert!(is_404(&purge), "pending call fails too: {purge:?}");
    let item = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .expect("consumer hears about it");
    assert!(
        matches!(item, Some(Err(Error::ChannelClosed { code: 404, .. }))),
        "{item:?}"
    );
    assert!(consumer.next().await.is_none());

    // Later calls fail at once with the same reason.
    assert!(!ch.is_open());
    let later = ch.basic_qos(1, false).await;
    assert!(is_404(&later), "{later:?}");
    let publish = ch
        .basic_publish("", &q.name, false, BasicProperties::default(), "x")
        .await;
    assert!(is_404(&publish), "{publish:?}");
    assert!(is_404(&ch.close().await));

    // The connection and new channels are fine.
    assert!(conn.is_open());
    let ch2 = conn.open_channel().await.unwrap();
    let q2 = ch2
        .queue_declare(&q.name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(q2.consumer_count, 0, "the dead channel's consumer is gone");
    // A channel-level 406: redeclare with different arguments.
    let named = unique("redeclare");
    let max_len = |n: i32| [("x-max-length", n)].into_iter().collect::<FieldTable>();
    ch2.queue_declare(&named, exclusive(), max_len(10))
        .await
        .unwrap();
    let redeclare = ch2.queue_declare(&named, exclusive(), max_len(20)).await;
    assert!(
        matches!(redeclare, Err(Error::ChannelClosed { code: 406, .. })),
        "{redeclare:?}"
    );
    conn.close().await.unwrap();
}

/// With heartbeat=1 an idle connection survives several intervals.
pub async fn heartbeats_keep_an_idle_connection_alive(url: &str) {
    let url = with_param(url, "heartbeat=1");
    let (conn, ch) = connect(&url).await;
    assert_eq!(conn.tune().heartbeat, 1);
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(conn.is_open(), "{:?}", conn.close_reason());
    ch.queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    conn.close().await.unwrap();
}

/// A wrong password fails with ConnectionClosed(403); an unknown vhost with 530.
pub async fn bad_credentials_are_refused(url: &str) {
    let mut config = ConnectionConfig::from_url(url).unwrap();
    let good = config.clone();
    config.password = "definitely-not-the-password".into();
    let err = Connection::connect_with(config).await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectionClosed { code: 403, .. }),
        "{err:?}"
    );
    let mut config = good;
    config.vhost = unique("no-such-vhost");
    let err = Connection::connect_with(config).await.unwrap_err();
    assert!(
        matches!(err, Error::ConnectionClosed { code: 530, .. }),
        "{err:?}"
    );
}

/// close() ends consumers quietly and fails later calls with ConnectionClosed(200).
pub async fn close_ends_consumers_and_calls(url: &str) {
    let (conn, ch) = connect(url).await;
    let q = ch
        .queue_declare("", exclusive(), FieldTable::new())
        .await
        .unwrap();
    let mut consumer = ch
        .basic_consume(&q.name, "", manual_ack(), FieldTable::new())
        .await
        .unwrap();
    let ch2 = conn.open_channel().await.unwrap();
    assert_ne!(ch.id(), ch2.id());
    ch2.close().await.unwrap();
    ch2.close().await.unwrap(); // closing twice is fine
    assert!(matches!(
        ch2.basic_qos(1, false).await,
        Err(Error::ChannelClosed { code: 200, .. })
    ));

    conn.close().await.unwrap();
    conn.close().await.unwrap(); // idempotent
    assert!(!conn.is_open());
    let end = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await;
    assert!(matches!(end, Ok(None)), "consumer ends quietly");
    assert!(matches!(
        ch.basic_qos(1, false).await,
        Err(Error::ConnectionClosed { code: 200, .. })
    ));
    assert!(matches!(
        conn.open_channel().await,
        Err(Error::ConnectionClosed { code: 200, .. })
    ));
}

/// Thousands of deliveries with no prefetch limit arrive in bursts far larger than what
/// the client handles per wake-up; every one arrives, in order, and the acks (which do not
/// wait for the connection) all reach the broker before a later declare.
pub async fn a_burst_of_deliveries_arrives_whole_and_in_order(url: &str) {
    const N: u32 = 3000;
    let (conn, ch) = connect(url).await;
    let name = unique("burst");
    ch.queue_declare(&name, exclusive(), FieldTable::new())
        .await
        .unwrap();
    for i in 0..N {
        ch.basic_publish("", &name, false, BasicProperties::default(), format!("{i}"))
            .await
            .unwrap();
    }
    wait_for_ready(&ch, &name, N).await;
    let tag = unique("burst");
    let mut consumer = ch
        .basic_consume(&name, &tag, manual_ack(), FieldTable::new())
        .await
        .unwrap();
    for i in 0..N {
        let d = next(&mut consumer).await;
        assert_eq!(d.body, Bytes::from(format!("{i}")), "delivery {i}");
        d.ack().await.unwrap();
    }
    ch.basic_cancel(&tag).await.unwrap();
    let q = ch
        .queue_declare(&name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(q.message_count, 0);
    assert!(ch.basic_get(&name, true).await.unwrap().is_none());
    conn.close().await.unwrap();
}

/// With `no_ack` the broker forgets a message as it sends it: the deliveries' ack, nack
/// and reject are no-ops that succeed (an ack on the wire would be an unknown tag, 406),
/// and nothing stays unacknowledged.
pub async fn auto_ack_deliveries_need_no_settling(url: &str) {
    let (conn, ch) = connect(url).await;
    let name = unique("auto-ack");
    ch.queue_declare(&name, exclusive(), FieldTable::new())
        .await
        .unwrap();
    let tag = unique("auto");
    let options = BasicConsumeOptions {
        no_ack: true,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = ch
        .basic_consume(&name, &tag, options, FieldTable::new())
        .await
        .unwrap();
    for i in 0..3 {
        ch.basic_publish("", &name, false, BasicProperties::default(), format!("{i}"))
            .await
            .unwrap();
    }
    for i in 0..3u64 {
        let d = next(&mut consumer).await;
        assert_eq!(d.body, Bytes::from(format!("{i}")));
        assert_eq!(d.delivery_tag, i + 1);
        d.ack().await.unwrap();
        d.nack(true).await.unwrap();
        d.reject(false).await.unwrap();
        assert!(!d.acker.is_settled(), "nothing was sent to settle");
    }
    ch.basic_cancel(&tag).await.unwrap();
    // The channel is still open (no 406 for an unknown tag) and nothing came back.
    let q = ch
        .queue_declare(&name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!((q.message_count, q.consumer_count), (0, 0));
    conn.close().await.unwrap();
}

/// `tx.select`, then publishes and an ack held until `tx.commit`, and discarded by
/// `tx.rollback`; commit and rollback on a channel that is not transactional are 406.
pub async fn transactions_commit_and_roll_back(url: &str) {
    let conn = Connection::connect(url).await.unwrap();
    let ch = conn.open_channel().await.unwrap();
    let name = unique("tx");
    ch.queue_declare(&name, exclusive(), FieldTable::new())
        .await
        .unwrap();
    ch.tx_select().await.unwrap();
    for body in ["one", "two"] {
        ch.basic_publish("", &name, false, BasicProperties::default(), body)
            .await
            .unwrap();
    }
    // Held until the commit: a passive declare counts nothing yet.
    let q = ch
        .queue_declare(&name, passive(), FieldTable::new())
        .await
        .unwrap();
    assert_eq!(
        q.message_count, 0,
        "publishes in a transaction wait for the commit"
    );
    ch.tx_commit().await.unwrap();
    assert_eq!(
        ch.queue_declare(&name, passive(), FieldTable::new())
            .await
            .unwrap()
            .message_count,
        2
    );
    // A rolled-back publish never arrives; a rolled-back ack leaves the message unacked.
    ch.basic_publish("", &name, false, BasicProperties::default(), "three")
        .await
        .unwrap();
    let got = ch
        .basic_get(&name, false)
        .await
        .unwrap()
        .expect("a message");
    assert_eq!(&got.delivery.body[..], b"one");
    got.delivery.ack().await.unwrap();
    ch.tx_rollback().await.unwrap();
    ch.basic_recover(true).await.unwrap();
    let mut bodies = Vec::new();
    while let Some(m) = ch.basic_get(&name, true).await.unwrap() {
        bodies.push(String::from_utf8(m.delivery.body.to_vec()).unwrap());
    }
    bodies.sort();
    assert_eq!(
        bodies,
        ["one", "two"],
        "the rollback dropped 'three' and the ack"
    );
    // Not transactional: 406 on the channel.
    let plain = conn.open_channel().await.unwrap();
    match plain.tx_commit().await {
        Err(Error::ChannelClosed { code, text }) => assert_eq!(
            (code, text.as_str()),
            (406, "PRECONDITION_FAILED - channel is not transactional")
        ),
        other => panic!("expected 406, got {other:?}"),
    }
    conn.close().await.unwrap();
}

/// Runs one scenario by name (see [`ALL`]).
pub async fn run(name: &str, url: &str) {
    match name {
        "declare_publish_get" => declare_publish_get(url).await,
        "large_body_is_split_at_frame_max" => large_body_is_split_at_frame_max(url).await,
        "consume_and_ack" => consume_and_ack(url).await,
        "nack_requeue_redelivers" => nack_requeue_redelivers(url).await,
        "publisher_confirms" => publisher_confirms(url).await,
        "mandatory_publish_is_returned" => mandatory_publish_is_returned(url).await,
        "channel_error_fails_pending_calls" => channel_error_fails_pending_calls(url).await,
        "heartbeats_keep_an_idle_connection_alive" => {
            heartbeats_keep_an_idle_connection_alive(url).await
        }
        "bad_credentials_are_refused" => bad_credentials_are_refused(url).await,
        "close_ends_consumers_and_calls" => close_ends_consumers_and_calls(url).await,
        "a_burst_of_deliveries_arrives_whole_and_in_order" => {
            a_burst_of_deliveries_arrives_whole_and_in_order(url).await
        }
        "auto_ack_deliveries_need_no_settling" => auto_ack_deliveries_need_no_settling(url).await,
        "transactions_commit_and_roll_back" => transactions_commit_and_roll_back(url).await,
        other => panic!("no scenario {other}"),
    }
}
