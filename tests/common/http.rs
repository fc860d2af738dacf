//! A tiny HTTP/1.1 client for the management API tests: one request per connection,
//! read until the server closes.

use std::net::SocketAddr;

use minimq_broker::Broker;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

/// `Authorization: Basic` credentials of guest/guest.
pub const GUEST: &str = "Z3Vlc3Q6Z3Vlc3Q="; // base64("guest:guest")

/// A response: status, lower-cased headers, body.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

pub fn parse_response(raw: &[u8]) -> Resp {
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = std::str::from_utf8(&raw[..text_end]).expect("UTF-8 head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Resp {
        status,
        headers,
        body: raw[text_end + 4..].to_vec(),
    }
}

/// Sends raw bytes and ends the request stream, reads until the server closes.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    within(async {
        let mut s = TcpStream::connect(addr).await.expect("connect to HTTP");
        s.write_all(bytes).await.expect("write");
        let _ = s.shutdown().await;
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        out
    })
    .await
}

pub async fn request(broker: &Broker, method: &str, path: &str, auth: Option<&str>) -> Resp {
    let auth = auth
        .map(|a| format!("Authorization: Basic {a}\r\n"))
        .unwrap_or_default();
    let req =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    parse_response(&raw(broker.http_addr().unwrap(), req.as_bytes()).await)
}

/// GET as guest, expecting 200 and JSON.
pub async fn get(broker: &Broker, path: &str) -> Value {
    let r = request(broker, "GET", path, Some(GUEST)).await;
    assert_eq!(
        r.status,
        200,
        "GET {path}: {:?}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    r.json()
}

/// A request with a JSON body, as guest.
pub async fn send_json(broker: &Broker, method: &str, path: &str, body: &str) -> Resp {
    send_json_as(broker, GUEST, method, path, body).await
}

/// A request with a JSON body, with the `Authorization: Basic` credentials `auth`.
pub async fn send_json_as(
    broker: &Broker,
    auth: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Resp {
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Basic {auth}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    parse_response(&raw(broker.http_addr().unwrap(), req.as_bytes()).await)
}
