//! `amqp://` and `amqps://` URL parsing; these need no broker and always run.

use std::time::Duration;

use minimq_client::{ConnectionConfig, Error};

fn parse(url: &str) -> ConnectionConfig {
    ConnectionConfig::from_url(url).unwrap_or_else(|e| panic!("{url}: {e}"))
}

fn fails(url: &str) {
    match ConnectionConfig::from_url(url) {
        Err(Error::InvalidUrl(_)) => {}
        other => panic!("{url}: expected InvalidUrl, got {other:?}"),
    }
}

#[test]
fn full_url() {
    let c = parse(
        "amqp://user:pass@example.com:5673/prod?heartbeat=10&frame_max=65536&channel_max=64&connection_timeout=2500",
    );
    assert_eq!(c.username, "user");
    assert_eq!(c.password, "pass");
    assert_eq!(c.host, "example.com");
    assert_eq!(c.port, 5673);
    assert_eq!(c.vhost, "prod");
    assert_eq!(c.heartbeat, Some(10));
    assert_eq!(c.frame_max, Some(65536));
    assert_eq!(c.channel_max, Some(64));
    assert_eq!(c.connection_timeout, Duration::from_millis(2500));
}

#[test]
fn defaults() {
    for url in [
        "amqp://",
        "amqp://localhost",
        "amqp://localhost/",
        "AMQP://localhost:5672",
    ] {
        let c = parse(url);
        assert_eq!(c, ConnectionConfig::default(), "{url}");
        assert_eq!(
            (
                c.host.as_str(),
                c.port,
                c.username.as_str(),
                c.password.as_str(),
                c.vhost.as_str()
            ),
            ("localhost", 5672, "guest", "guest", "/"),
            "{url}"
        );
        assert_eq!(
            (c.heartbeat, c.frame_max, c.channel_max),
            (None, None, None)
        );
        assert_eq!(c.connection_timeout, Duration::from_secs(60));
    }
}

#[test]
fn percent_encoding() {
    let c = parse("amqp://us%65r:p%40ss%3aw%2Fd@ho%73t/v%2fhost");
    assert_eq!(c.username, "user");
    assert_eq!(c.password, "p@ss:w/d");
    assert_eq!(c.host, "host");
    assert_eq!(c.vhost, "v/host");
    assert_eq!(parse("amqp://host/%2f").vhost, "/");
    assert_eq!(parse("amqp://host/%2F").vhost, "/");
    assert_eq!(parse("amqp://host/caf%C3%A9").vhost, "café");
}

#[test]
fn partial_user_info_and_ports() {
    let c = parse("amqp://bob@host");
    assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "guest"));
    let c = parse("amqp://:@host");
    assert_eq!((c.username.as_str(), c.password.as_str()), ("", ""));
    let c = parse("amqp://:10000");
    assert_eq!((c.host.as_str(), c.port), ("localhost", 10000));
    let c = parse("amqp://host:");
    assert_eq!(c.port, 5672);
    let c = parse("amqp:///vhost");
    assert_eq!((c.host.as_str(), c.vhost.as_str()), ("localhost", "vhost"));
}

#[test]
fn ipv6_hosts() {
    let c = parse("amqp://[::1]:5680/%2f");
    assert_eq!((c.host.as_str(), c.port), ("::1", 5680));
    let c = parse("amqp://u:p@[fe80::1]");
    assert_eq!((c.host.as_str(), c.port), ("fe80::1", 5672));
    fails("amqp://[::1");
    fails("amqp://[::1]x");
}

#[test]
fn query_parameters() {
    let c = parse("amqp://h?heartbeat=0");
    assert_eq!(c.heartbeat, Some(0));
    let c = parse("amqp://h?frame_max=0&connection_name=my%20app&unknown=ignored");
    assert_eq!(c.frame_max, Some(0));
    assert_eq!(c.connection_name.as_deref(), Some("my app"));
    let c = parse("amqp://h/v?channel_max=10#fragment");
    assert_eq!((c.vhost.as_str(), c.channel_max), ("v", Some(10)));
}

#[test]
fn rejects_bad_urls() {
    fails("localhost:5672");
    fails("http://localhost");
    fails("amqp://host:notaport");
    fails("amqp://host:70000");
    fails("amqp://host/a/b");
    fails("amqp://host/%zz");
    fails("amqp://us%er@host");
    fails("amqp://h?heartbeat=-1");
    fails("amqp://h?heartbeat=70000");
    fails("amqp://h?frame_max=1024");
    fails("amqp://h?channel_max=x");
    fails("amqp://h?connection_timeout=soon");
}

#[test]
fn from_str_and_debug_hides_the_password() {
    let c: ConnectionConfig = "amqp://u:hunter2@h".parse().unwrap();
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("redacted"));
}

#[test]
fn amqps_is_tls_on_port_5671_with_an_optional_ca_file() {
    let c = parse("amqps://localhost");
    assert!(c.tls);
    assert_eq!((c.port, c.ca_cert), (5671, None));
    let c = parse("AMQPS://u:p@mq.example:5999/v?cacertfile=%2Fetc%2Fmq%2Fca.pem&heartbeat=3");
    assert!(c.tls);
    assert_eq!(
        (c.host.as_str(), c.port, c.vhost.as_str()),
        ("mq.example", 5999, "v")
    );
    assert_eq!(
        c.ca_cert.as_deref(),
        Some(std::path::Path::new("/etc/mq/ca.pem"))
    );
    assert_eq!(c.heartbeat, Some(3));
    let c = parse("amqp://localhost");
    assert!(!c.tls);
    assert_eq!(c.port, 5672);
}
