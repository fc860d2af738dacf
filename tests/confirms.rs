//! Publisher confirms over real TCP: every publish acked once, tags counting from 1, and
//! the confirms of one group commit folded into few `basic.ack` frames (`multiple`).
//!
//! Confirms that are nacks because a queue is full are in `queue_arguments.rs`
//! (`x-overflow`), confirms after a failed sync in `durability.rs`. lapin drives the
//! tests except the folding one, which must see the frames (`common::raw`); every wait is
//! for an event under `common::within`.

mod common;

use std::collections::BTreeSet;

use bytes::Bytes;
use common::amqp::*;
use common::raw::{publish_to, Client};
use common::{connect, data_dir, start_broker, within};
use futures::SinkExt;
use lapin::options::*;
use lapin::publisher_confirm::Confirmation;
use lapin::BasicProperties;
use minimq_protocol::{BasicAck, ContentHeader, Frame, Method, QueueDeclare};

#[tokio::test]
async fn publisher_confirms_ack_every_publish() {
    let broker = start_broker().await;
    let conn = connect(&broker).await;
    let ch = open(&conn).await;
    declare(&ch, "q").await;
    confirm_mode(&ch).await;
    // A burst, so the broker may fold acks into `multiple` ones: each still resolves.
    let mut pending = Vec::new();
    for i in 0..200 {
        let p = within(ch.basic_publish(
            "",
            "q",
            BasicPublishOptions::default(),
            format!("{i}").as_bytes(),
            BasicProperties::default(),
        ))
        .await
        .unwrap();
        pending.push(p);
    }
    for p in pending {
        assert_eq!(within(p).await.unwrap(), Confirmation::Ack(None));
    }
    // Unroutable publishes are confirmed too.
    assert_eq!(
        publish(&ch, "", "nowhere", b"x").await,
        Confirmation::Ack(None)
    );
    assert!(within(ch.wait_for_confirms()).await.unwrap().is_empty());
    assert_eq!(ready(&ch, "q").await, 200);
}

#[tokio::test]
async fn publisher_confirm_tags_count_from_1_and_cover_every_publish_once() {
    let broker = start_broker().await;
    let mut raw = Client::open_channel1(broker.local_addr()).await;
    raw.send(
        1,
        minimq_protocol::QueueDeclare {
            queue: "q".into(),
            ..Default::default()
        }
        .into(),
    )
    .await;
    let Method::QueueDeclareOk(_) = raw.method(1).await else {
        panic!("expected queue.declare-ok")
    };
    raw.send(1, minimq_protocol::ConfirmSelect { nowait: false }.into())
        .await;
    let Method::ConfirmSelectOk(_) = raw.method(1).await else {
        panic!("expected confirm.select-ok")
    };
    const N: u64 = 50;
    for _ in 0..N {
        raw.publish("q", b"m").await;
    }
    let mut confirmed = BTreeSet::new();
    let mut last = 0;
    while last < N {
        let Method::BasicAck(a) = raw.method(1).await else {
            panic!("expected basic.ack")
        };
        assert!(a.delivery_tag > last, "acks go forward");
        let first = if a.multiple { last + 1 } else { a.delivery_tag };
        for tag in first..=a.delivery_tag {
            assert!(confirmed.insert(tag), "tag {tag} confirmed twice");
        }
        last = a.delivery_tag;
    }
    assert_eq!(confirmed, (1..=N).collect::<BTreeSet<_>>());
}

/// Not bad input, but only a raw client can see it: the confirms that one group commit
/// answers go out folded (`basic.ack` with `multiple`), not one frame per message.
#[tokio::test]
async fn the_confirms_of_a_group_commit_are_folded_into_few_acks() {
    use minimq_protocol::{BasicProperties, ConfirmSelect};
    let dir = data_dir("fold");
    // A disk whose syncs the test holds: how many syncs the hundred records take depends
    // on how the machine schedules the broker's threads, unless the first one waits.
    let disk = minimq_broker::store::faulty::FaultyDisk::new(1);
    let broker = common::start_broker_with(minimq_broker::Config {
        data_dir: Some(dir.clone()),
        disk: Some(disk.clone()),
        ..Default::default()
    })
    .await;
    let mut c = Client::open_channel1(broker.local_addr()).await;
    c.send(
        1,
        QueueDeclare {
            queue: "fold".into(),
            durable: true,
            ..Default::default()
        }
        .into(),
    )
    .await;
    assert!(matches!(c.method(1).await, Method::QueueDeclareOk(_)));
    c.send(1, ConfirmSelect { nowait: false }.into()).await;
    assert!(matches!(c.method(1).await, Method::ConfirmSelectOk(_)));
    // A hundred persistent publishes in one write, while syncs wait.
    disk.hold_syncs();
    const N: u64 = 100;
    for _ in 0..N {
        within(c.io.feed(Frame::Method(1, publish_to("fold"))))
            .await
            .unwrap();
        within(c.io.feed(Frame::Header(
            1,
            Box::new(ContentHeader {
                class_id: 60,
                body_size: 4,
                properties: BasicProperties {
                    delivery_mode: Some(2),
                    ..Default::default()
                },
            }),
        )))
        .await
        .unwrap();
        within(c.io.feed(Frame::Body(1, Bytes::from_static(b"work"))))
            .await
            .unwrap();
    }
    within(SinkExt::<Frame>::flush(&mut c.io)).await.unwrap();
    // Every message queued has its record on the way to the log's writer; none can be
    // confirmed yet. Then the syncs go: the one held, and one for whatever it did not cover.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        c.send(
            1,
            QueueDeclare {
                queue: "fold".into(),
                passive: true,
                ..Default::default()
            }
            .into(),
        )
        .await;
        match c.method(1).await {
            Method::QueueDeclareOk(ok) if u64::from(ok.message_count) == N => break,
            Method::QueueDeclareOk(_) => {}
            other => panic!("expected queue.declare-ok, got {other:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the publishes never all queued"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    disk.release_syncs();
    let mut confirmed = 0;
    let mut frames = 0;
    while confirmed < N {
        match c.method(1).await {
            Method::BasicAck(BasicAck {
                delivery_tag,
                multiple,
            }) => {
                assert!(
                    delivery_tag > confirmed,
                    "tag {delivery_tag} confirmed twice"
                );
                assert!(
                    multiple || delivery_tag == confirmed + 1,
                    "a single ack skipped tags: {delivery_tag} after {confirmed}"
                );
                confirmed = delivery_tag;
                frames += 1;
            }
            other => panic!("expected basic.ack, got {other:?}"),
        }
    }
    // The held sync and the next cover the hundred messages; each sync's confirms are
    // one frame (a third if the writer had not taken all the records when the hold ended).
    assert!(frames <= 3, "{frames} basic.ack frames for {N} confirms");
    // Gone first: a client that never answers the shutdown's connection.close would hold
    // the shutdown for the broker's close timeout (3 s).
    drop(c);
    broker.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
