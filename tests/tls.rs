//! AMQP over TLS (`tls_listen`, RabbitMQ's 5671) with a CA, a server and a client
//! certificate made in the test: a client that trusts the CA runs a whole session; a
//! client that does not is refused in the handshake while other connections go on; a
//! plain AMQP header on the TLS port gets a TLS alert and a close, a TLS handshake on the
//! plain port gets the AMQP protocol header back; client certificates are required with
//! `tls_verify_peer`; a bad certificate file stops the start naming it. The management
//! API over HTTPS (`http_tls_cert`, `http_tls_key`): the same API to a client trusting
//! the CA, nothing to plain HTTP or an untrusting client, a bad file a start-up error.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use minimq_broker::{Broker, Config};
use minimq_protocol::frame::PROTOCOL_HEADER;
use minimq_protocol::*;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_util::codec::Framed;

use common::within;

/// A CA, a server certificate for `localhost` and a client certificate it signed, as PEM
/// files in a directory of the test's.
struct Pki {
    dir: PathBuf,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let dir = common::data_dir(name);
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&server_key, &ca, &ca_key)
            .unwrap();
        let client_key = rcgen::KeyPair::generate().unwrap();
        let client = rcgen::CertificateParams::new(vec!["client".to_string()])
            .unwrap()
            .signed_by(&client_key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("server.pem"), server.pem()).unwrap();
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        Pki {
            dir,
            ca: ca.pem(),
            client_cert: client.pem(),
            client_key: client_key.serialize_pem(),
        }
    }

    fn config(&self, verify_peer: bool) -> Config {
        Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            http: Some("127.0.0.1:0".parse().unwrap()),
            tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
            tls_cert: Some(self.dir.join("server.pem")),
            tls_key: Some(self.dir.join("server.key")),
            tls_ca: Some(self.dir.join("ca.pem")),
            tls_verify_peer: verify_peer,
            ..Config::default()
        }
    }

    /// A client configuration trusting `ca_pem`, with the client certificate if asked.
    fn client(ca_pem: &str, with_cert: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
        let config = match with_cert {
            Some((cert, key)) => builder
                .with_client_auth_cert(
                    CertificateDer::pem_slice_iter(cert.as_bytes())
                        .map(Result::unwrap)
                        .collect(),
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// Connects over TLS to `addr` with `connector` (server name `localhost`).
async fn tls_connect(
    connector: &tokio_rustls::TlsConnector,
    addr: SocketAddr,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost").unwrap();
    within(connector.connect(name, tcp)).await
}

/// A whole AMQP session over `stream`: handshake as guest, declare, publish, get back.
async fn session(stream: tokio_rustls::client::TlsStream<TcpStream>) {
    let mut io = Framed::new(stream, FrameCodec::new(0));
    io.get_mut().write_all(&PROTOCOL_HEADER).await.unwrap();
    let method = |f: Frame| match f {
        Frame::Method(_, m) => m,
        other => panic!("expected a method, got {other:?}"),
    };
    let m = method(within(io.next()).await.unwrap().unwrap());
    assert!(matches!(m, Method::ConnectionStart(_)), "{m:?}");
    let start_ok = common::raw::start_ok("PLAIN", common::raw::plain("guest", "guest"), true);
    io.send(Frame::Method(0, start_ok)).await.unwrap();
    assert!(matches!(
        method(within(io.next()).await.unwrap().unwrap()),
        Method::ConnectionTune(_)
    ));
    for (ch, m) in [
        (
            0,
            Method::from(ConnectionTuneOk {
                channel_max: 2047,
                frame_max: 131_072,
                heartbeat: 0,
            }),
        ),
        (
            0,
            ConnectionOpen {
                virtual_host: "/".into(),
            }
            .into(),
        ),
        (1, ChannelOpen.into()),
        (1, common::raw::declare("over-tls")),
        (1, common::raw::publish_to("over-tls")),
    ] {
        io.send(Frame::Method(ch, m)).await.unwrap();
    }
    io.send(common::raw::header(5)).await.unwrap();
    io.send(Frame::Body(1, Bytes::from_static(b"hello")))
        .await
        .unwrap();
    io.send(Frame::Method(
        1,
        BasicGet {
            queue: "over-tls".into(),
            no_ack: true,
        }
        .into(),
    ))
    .await
    .unwrap();
    let mut body = None;
    while body.is_none() {
        match within(io.next()).await.unwrap().unwrap() {
            Frame::Body(1, b) => body = Some(b),
            Frame::Method(_, Method::ConnectionClose(c)) => panic!("closed: {c:?}"),
            _ => {}
        }
    }
    assert_eq!(&body.unwrap()[..], b"hello");
}

#[tokio::test]
async fn a_client_that_trusts_the_ca_runs_a_whole_session_over_tls() {
    let pki = Pki::new("tls-session");
    let broker = Broker::builder()
        .config(pki.config(false))
        .start()
        .await
        .unwrap();
    let addr = broker.tls_addrs()[0];
    let stream = tls_connect(&Pki::client(&pki.ca, None), addr)
        .await
        .unwrap();
    // The CA of --tls-ca comes after the certificate, as RabbitMQ sends its cacertfile.
    let sent = stream.get_ref().1.peer_certificates().unwrap();
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[1],
        CertificateDer::pem_slice_iter(pki.ca.as_bytes())
            .next()
            .unwrap()
            .unwrap()
    );
    session(stream).await;
    // The API lists the TLS listener and shows the connection as TLS.
    let overview = common::http::get(&broker, "/api/overview").await;
    assert!(overview["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["protocol"] == "amqp/ssl" && l["port"] == addr.port()));
    broker.shutdown().await;
}

#[tokio::test]
async fn an_untrusted_certificate_a_plain_header_and_a_tls_hello_on_the_plain_port_are_refused_cleanly(
) {
    let pki = Pki::new("tls-refusals");
    let broker = Broker::builder()
        .config(pki.config(false))
        .start()
        .await
        .unwrap();
    let tls_addr = broker.tls_addrs()[0];
    // A client with another CA: its handshake fails; the broker goes on.
    let other = Pki::new("tls-other-ca");
    assert!(tls_connect(&Pki::client(&other.ca, None), tls_addr)
        .await
        .is_err());
    // A plain AMQP header on the TLS port: a TLS alert record (0x15), then the close.
    let mut plain = TcpStream::connect(tls_addr).await.unwrap();
    plain.write_all(&PROTOCOL_HEADER).await.unwrap();
    let mut answer = Vec::new();
    within(plain.read_to_end(&mut answer)).await.unwrap();
    assert_eq!(answer.first(), Some(&0x15), "a TLS alert: {answer:?}");
    // A TLS ClientHello on the plain port: the AMQP protocol header back.
    let mut tls_on_plain = TcpStream::connect(broker.local_addr()).await.unwrap();
    tls_on_plain
        .write_all(&[0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00])
        .await
        .unwrap();
    let mut header = [0u8; 8];
    within(tls_on_plain.read_exact(&mut header)).await.unwrap();
    assert_eq!(header, PROTOCOL_HEADER);
    // And a trusting client is still served.
    let stream = tls_connect(&Pki::client(&pki.ca, None), tls_addr)
        .await
        .unwrap();
    session(stream).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn with_verify_peer_a_client_certificate_from_the_ca_is_required() {
    let pki = Pki::new("tls-verify");
    let broker = Broker::builder()
        .config(pki.config(true))
        .start()
        .await
        .unwrap();
    let addr = broker.tls_addrs()[0];
    // Without a certificate: refused (in TLS 1.3 the refusal comes with the first read).
    let refused = match tls_connect(&Pki::client(&pki.ca, None), addr).await {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(&PROTOCOL_HEADER).await;
            let mut buf = [0u8; 8];
            within(s.read_exact(&mut buf)).await.is_err()
        }
    };
    assert!(refused, "a client without a certificate was served");
    let with_cert = Pki::client(&pki.ca, Some((&pki.client_cert, &pki.client_key)));
    let stream = tls_connect(&with_cert, addr).await.unwrap();
    session(stream).await;
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_certificate_file_stops_the_start_naming_it() {
    let pki = Pki::new("tls-bad-file");
    let bad = pki.dir.join("not-a-cert.pem");
    std::fs::write(&bad, "this is not PEM").unwrap();
    let err = Broker::builder()
        .config(Config {
            tls_cert: Some(bad.clone()),
            ..pki.config(false)
        })
        .start()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains(&bad.display().to_string()),
        "{err}"
    );
    let missing = pki.dir.join("missing.key");
    let err = Broker::builder()
        .config(Config {
            tls_key: Some(missing.clone()),
            ..pki.config(false)
        })
        .start()
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

/// One HTTPS request to `addr` trusting `ca_pem` (server name `localhost`): the raw
/// answer, read until the server closes.
async fn https_request(ca_pem: &str, addr: SocketAddr, request: &str) -> std::io::Result<Vec<u8>> {
    let mut stream = tls_connect(&Pki::client(ca_pem, None), addr).await?;
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    within(stream.read_to_end(&mut answer)).await?;
    Ok(answer)
}

fn https_config(pki: &Pki) -> Config {
    Config {
        http_tls_cert: Some(pki.dir.join("server.pem")),
        http_tls_key: Some(pki.dir.join("server.key")),
        ..pki.config(false)
    }
}

const OVERVIEW: &str = "GET /api/overview HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn the_management_api_over_https_answers_a_client_that_trusts_the_ca() {
    let pki = Pki::new("https-api");
    let broker = Broker::builder()
        .config(https_config(&pki))
        .start()
        .await
        .unwrap();
    let addr = broker.http_addr().unwrap();
    let answer = https_request(&pki.ca, addr, OVERVIEW).await.unwrap();
    let resp = common::http::parse_response(&answer);
    assert_eq!(
        resp.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&resp.body)
    );
    // The listener is listed as https, as RabbitMQ lists its management TLS listener.
    assert!(resp.json()["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["protocol"] == "https" && l["port"] == addr.port()));
    // Without credentials: the same 401 as over plain HTTP.
    let answer = https_request(
        &pki.ca,
        addr,
        "GET /api/overview HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    assert_eq!(common::http::parse_response(&answer).status, 401);
    broker.shutdown().await;
}

#[tokio::test]
async fn plain_http_and_an_untrusting_client_get_no_answer_from_https_and_others_go_on() {
    let pki = Pki::new("https-refusals");
    let broker = Broker::builder()
        .config(https_config(&pki))
        .start()
        .await
        .unwrap();
    let addr = broker.http_addr().unwrap();
    // Plain HTTP on the HTTPS port: a TLS alert (0x15) at most, never an HTTP answer.
    let answer = common::http::raw(addr, OVERVIEW.as_bytes()).await;
    assert!(
        answer.is_empty() || answer[0] == 0x15,
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    // A client with another CA: its handshake fails.
    let other = Pki::new("https-other-ca");
    assert!(https_request(&other.ca, addr, OVERVIEW).await.is_err());
    // A trusting client is still served.
    let answer = https_request(&pki.ca, addr, OVERVIEW).await.unwrap();
    assert_eq!(common::http::parse_response(&answer).status, 200);
    broker.shutdown().await;
}

#[tokio::test]
async fn a_bad_https_certificate_file_or_a_lone_cert_stops_the_start_naming_it() {
    let pki = Pki::new("https-bad-file");
    let bad = pki.dir.join("not-a-cert.pem");
    std::fs::write(&bad, "this is not PEM").unwrap();
    let missing = pki.dir.join("missing.key");
    for (config, names) in [
        (
            Config {
                http_tls_cert: Some(bad.clone()),
                ..https_config(&pki)
            },
            bad.display().to_string(),
        ),
        (
            Config {
                http_tls_key: Some(missing.clone()),
                ..https_config(&pki)
            },
            missing.display().to_string(),
        ),
        (
            Config {
                http_tls_key: None,
                ..https_config(&pki)
            },
            "--http-tls-key".to_string(),
        ),
    ] {
        let err = Broker::builder()
            .config(config)
            .start()
            .await
            .err()
            .expect("refused");
        assert!(err.to_string().contains(&names), "{err}");
    }
}
