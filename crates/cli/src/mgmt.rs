//! minimqctl's client of the management HTTP API: `ureq` (blocking HTTP/1.1) with basic
//! auth, one request per connection and an overall time limit, plus the URL checks and
//! path encoding its commands need. `https://` goes over rustls with the client crate's
//! configuration: the system's trust store, or the CA given with `--ca-cert`.

use std::error::Error as _;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;

/// Where the management API lives: `http[s]://host:port[/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// `https`: TLS, default port 443.
    pub tls: bool,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 80, 443 for https).
    pub port: u16,
    /// Path prefix without a trailing `/` (usually empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `http[s]://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let bad = |why: &str| format!("invalid management URL {url:?}: {why}");
        let (tls, rest) = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => (false, rest),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("https") => (true, rest),
            Some(_) => return Err(bad("the scheme must be http or https")),
            None => return Err(bad("expected http://host:port")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(bad("give credentials with --user / --password"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
            (host, after.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            Some(p) => p.parse::<u16>().map_err(|_| bad("bad port"))?,
            None if tls => 443,
            None => 80,
        };
        Ok(BaseUrl {
            tls,
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` for the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `http[s]://host:port`, for requests and messages.
    pub fn origin(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://{}", self.authority())
    }
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// e.g. 200.
    pub status: u16,
    /// The reason phrase, e.g. `OK`.
    pub reason: String,
    /// The body (any transfer encoding removed).
    pub body: Vec<u8>,
}

/// An HTTP client for one base URL, with basic-auth credentials.
#[derive(Debug, Clone)]
pub struct Client {
    base: BaseUrl,
    authorization: String,
    timeout: Duration,
    agent: ureq::Agent,
}

impl Client {
    /// A client; every request (connect, send, receive) must finish within `timeout`.
    /// For `https`, the server's certificate must chain to `ca_cert` (PEM), or without it
    /// to the system's trust store; a CA file that cannot be read is an error here.
    pub fn new(
        base: BaseUrl,
        user: &str,
        password: &str,
        timeout: Duration,
        ca_cert: Option<&Path>,
    ) -> Result<Client, String> {
        let credentials =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut agent = ureq::AgentBuilder::new()
            .timeout(timeout)
            // A redirect is reported as what it is, not followed somewhere else.
            .redirects(0)
            .user_agent(&format!("minimqctl/{}", env!("CARGO_PKG_VERSION")));
        if base.tls {
            let tls =
                minimq_client::transport::client_config(ca_cert).map_err(|e| e.to_string())?;
            agent = agent.tls_config(tls);
        }
        let agent = agent.build();
        Ok(Client {
            base,
            authorization: format!("Basic {credentials}"),
            timeout,
            agent,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// Sends `method path` (path starting with `/`, already percent-encoded). An HTTP
    /// error status is a [`Response`]; `Err` is a one-line reason no answer came.
    pub fn request(&self, method: &str, path: &str) -> Result<Response, String> {
        self.send(method, path, None)
    }

    /// As [`Client::request`], with a JSON body.
    pub fn request_json(&self, method: &str, path: &str, body: &[u8]) -> Result<Response, String> {
        self.send(method, path, Some(body))
    }

    fn send(&self, method: &str, path: &str, body: Option<&[u8]>) -> Result<Response, String> {
        let origin = self.base.origin();
        let url = format!("{origin}{}{path}", self.base.prefix);
        let request = self
            .agent
            .request(method, &url)
            .set("Authorization", &self.authorization)
            // One request per run: no connection to keep.
            .set("Connection", "close");
        let result = match body {
            Some(b) => request
                .set("Content-Type", "application/json")
                .send_bytes(b),
            None => request.call(),
        };
        let response = match result {
            Ok(r) | Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => return Err(self.transport_error(&origin, &t)),
        };
        let status = response.status();
        let reason = response.status_text().to_string();
        let mut body = Vec::new();
        response
            .into_reader()
            .read_to_end(&mut body)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    self.no_answer(&origin)
                }
                _ => format!("reading from {origin}: {e}"),
            })?;
        Ok(Response {
            status,
            reason,
            body,
        })
    }

    fn no_answer(&self, origin: &str) -> String {
        format!(
            "no answer from {origin} within {:.1} seconds",
            self.timeout.as_secs_f64()
        )
    }

    fn transport_error(&self, origin: &str, t: &ureq::Transport) -> String {
        use ureq::ErrorKind::*;
        let io = t.source().and_then(|e| e.downcast_ref::<std::io::Error>());
        if io.is_some_and(|e| {
            matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        }) {
            return self.no_answer(origin);
        }
        // ureq's own text repeats the URL; the cause alone reads better after ours.
        let detail = match (t.source(), t.message()) {
            (Some(cause), _) => cause.to_string(),
            (None, Some(message)) => message.to_string(),
            (None, None) => t.kind().to_string(),
        };
        match t.kind() {
            Dns | ConnectionFailed => format!("cannot connect to {origin}: {detail}"),
            BadStatus | BadHeader => {
                format!("bad HTTP response from {origin}: {detail}")
            }
            _ => format!("{origin}: {detail}"),
        }
    }
}

/// Percent-encodes a path segment (everything but RFC 3986 unreserved characters), so
/// the vhost `/` becomes `%2F`.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_base_urls() {
        let u = BaseUrl::parse("http://127.0.0.1:15672").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("127.0.0.1", 15672, "")
        );
        let u = BaseUrl::parse("http://mq/rabbit/").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.prefix.as_str()),
            ("mq", 80, "/rabbit")
        );
        let u = BaseUrl::parse("http://[::1]:15672").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 15672));
        assert_eq!(u.authority(), "[::1]:15672");
        let u = BaseUrl::parse("https://mq").unwrap();
        assert_eq!((u.tls, u.port), (true, 443));
        assert_eq!(u.origin(), "https://mq:443");
        assert!(!BaseUrl::parse("http://mq").unwrap().tls);
        assert!(BaseUrl::parse("amqp://mq").is_err());
        assert!(BaseUrl::parse("mq:15672").is_err());
        assert!(BaseUrl::parse("http://mq:notaport").is_err());
        assert!(BaseUrl::parse("http://u:p@mq").is_err());
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("task_queue"), "task_queue");
        assert_eq!(encode_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
