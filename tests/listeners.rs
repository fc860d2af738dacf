//! Listening on several addresses: a broker bound to IPv4 and IPv6 loopback serves both
//! with one set of queues (clients such as amqplib dial `[::1]`).

mod common;

use std::net::SocketAddr;

use common::raw::{declare, Client};
use minimq_broker::Broker;
use minimq_protocol::Method;

#[tokio::test]
async fn every_listen_address_serves_the_same_broker() {
    let v4: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let v6: SocketAddr = "[::1]:0".parse().unwrap();
    let broker = Broker::builder()
        .listen(v4)
        .also_listen(v6)
        .start()
        .await
        .expect("broker starts on 127.0.0.1 and ::1");
    let addrs = broker.local_addrs();
    assert_eq!(addrs.len(), 2, "{addrs:?}");
    assert!(addrs[0].is_ipv4() && addrs[1].is_ipv6(), "{addrs:?}");
    assert_eq!(broker.local_addr(), addrs[0]);

    // A message published over IPv6 is fetched over IPv4.
    let mut over_v6 = Client::open_channel1(addrs[1]).await;
    over_v6.send(1, declare("both-families")).await;
    assert!(matches!(over_v6.method(1).await, Method::QueueDeclareOk(_)));
    over_v6.publish("both-families", b"via ::1").await;
    // The queue has it once a declare sent after it counts it.
    over_v6.send(1, declare("both-families")).await;
    let Method::QueueDeclareOk(ok) = over_v6.method(1).await else {
        panic!("expected queue.declare-ok")
    };
    assert_eq!(ok.message_count, 1);
    let mut over_v4 = Client::open_channel1(addrs[0]).await;
    let (_, _, body) = over_v4.get("both-families", true).await;
    assert_eq!(&body[..], b"via ::1");
    drop((over_v4, over_v6));
    broker.shutdown().await;
}
