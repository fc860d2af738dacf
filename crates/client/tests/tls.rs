//! `amqps://` against an in-process minimq with a TLS listener, a CA and a server
//! certificate for `localhost` made in the test: the client scenarios run over TLS with
//! the CA given by URL or by `ConnectionConfig`; a certificate from another CA, a host
//! name the certificate does not carry and an unreadable CA file are each a clear
//! `Error::Tls`, and the broker goes on serving other connections.

mod scenarios;

use std::path::{Path, PathBuf};
use std::time::Duration;

use minimq_broker::{Broker, Config};
use minimq_client::{Connection, ConnectionConfig, Error};

/// A CA and a server certificate for `localhost` it signed, as PEM files.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir =
            std::env::temp_dir().join(format!("minimq-client-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        // Each CA its own name: a certificate from another CA then has an unknown issuer.
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("minimq test CA {name}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki { dir }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    async fn broker(&self) -> Broker {
        Broker::builder()
            .config(Config {
                listen: "127.0.0.1:0".parse().unwrap(),
                tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
                tls_cert: Some(self.dir.join("server.pem")),
                tls_key: Some(self.dir.join("server.key")),
                ..Config::default()
            })
            .start()
            .await
            .expect("broker starts")
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn amqps_url(broker: &Broker, ca: &Path) -> String {
    format!(
        "amqps://guest:guest@localhost:{}/%2f?cacertfile={}",
        broker.tls_addrs()[0].port(),
        ca.display()
    )
}

async fn within<F: std::future::Future>(f: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("timed out")
}

/// The error of a connection attempt that must fail.
async fn refused(config: ConnectionConfig) -> Error {
    match within(Connection::connect_with(config)).await {
        Ok(_) => panic!("the connection should have been refused"),
        Err(e) => e,
    }
}

#[tokio::test]
async fn amqps_url_with_the_ca_runs_the_client_scenarios_over_tls() {
    let pki = Pki::new("scenarios");
    let broker = pki.broker().await;
    let url = amqps_url(&broker, &pki.ca());
    within(scenarios::declare_publish_get(&url)).await;
    within(scenarios::large_body_is_split_at_frame_max(&url)).await;
    within(scenarios::consume_and_ack(&url)).await;
    within(scenarios::publisher_confirms(&url)).await;
    within(scenarios::a_burst_of_deliveries_arrives_whole_and_in_order(
        &url,
    ))
    .await;
    within(scenarios::close_ends_consumers_and_calls(&url)).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn connection_config_with_tls_and_a_ca_file_connects() {
    let pki = Pki::new("config");
    let broker = pki.broker().await;
    let config = ConnectionConfig {
        port: broker.tls_addrs()[0].port(),
        tls: true,
        ca_cert: Some(pki.ca()),
        ..ConnectionConfig::default()
    };
    let conn = within(Connection::connect_with(config)).await.unwrap();
    let channel = conn.open_channel().await.unwrap();
    channel.close().await.unwrap();
    conn.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_a_tls_error_and_others_go_on() {
    let pki = Pki::new("untrusted-server");
    let other = Pki::new("untrusted-other");
    let broker = pki.broker().await;
    let good = within(Connection::connect(&amqps_url(&broker, &pki.ca())))
        .await
        .unwrap();

    let bad = ConnectionConfig::from_url(&amqps_url(&broker, &other.ca())).unwrap();
    match refused(bad).await {
        Error::Tls(text) => assert!(
            text.contains("invalid peer certificate") && text.contains("UnknownIssuer"),
            "{text}"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }

    // The connection already open and a new trusted one are not affected.
    good.open_channel().await.unwrap();
    within(Connection::connect(&amqps_url(&broker, &pki.ca())))
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    good.close().await.unwrap();
    broker.shutdown().await;
}

#[tokio::test]
async fn a_host_name_the_certificate_does_not_carry_is_a_tls_error() {
    let pki = Pki::new("name");
    let broker = pki.broker().await;
    let url = amqps_url(&broker, &pki.ca()).replace("@localhost:", "@127.0.0.1:");
    match refused(ConnectionConfig::from_url(&url).unwrap()).await {
        Error::Tls(text) => assert!(
            text.contains("certificate not valid for name \"127.0.0.1\""),
            "{text}"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn an_unreadable_or_empty_ca_file_is_a_tls_error_naming_it() {
    let pki = Pki::new("bad-ca");
    let broker = pki.broker().await;
    let empty = pki.dir.join("empty.pem");
    std::fs::write(&empty, "not a certificate\n").unwrap();
    for file in [pki.dir.join("missing.pem"), empty] {
        match refused(ConnectionConfig::from_url(&amqps_url(&broker, &file)).unwrap()).await {
            Error::Tls(text) => assert!(text.starts_with(&file.display().to_string()), "{text}"),
            other => panic!("expected a TLS error, got {other:?}"),
        }
    }
    broker.shutdown().await;
}

#[tokio::test]
async fn plain_amqp_on_the_tls_port_fails_instead_of_hanging() {
    let pki = Pki::new("plain");
    let broker = pki.broker().await;
    let url = format!("amqp://localhost:{}", broker.tls_addrs()[0].port());
    let e = refused(ConnectionConfig::from_url(&url).unwrap()).await;
    assert!(
        matches!(e, Error::Io(_) | Error::Handshake(_) | Error::Protocol(_)),
        "{e:?}"
    );
    broker.shutdown().await;
}
