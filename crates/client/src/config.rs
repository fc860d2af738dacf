//! Connection settings and the `amqp://` / `amqps://` URL parser that fills them in.
//!
//! The grammar follows RabbitMQ's URI spec:
//! `amqp://user:pass@host:port/vhost?heartbeat=10&frame_max=131072&channel_max=2047&connection_timeout=5000`;
//! `amqps://` is the same over TLS (default port 5671), with `cacertfile=PATH` for a CA
//! to trust instead of the system's.
//! Every part is optional; user, password, host and vhost are percent-decoded (so the
//! default vhost `/` is written `%2f`). Decoding is done by hand: it is twenty lines.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// The port AMQP listens on by default.
pub const DEFAULT_PORT: u16 = 5672;
/// The port AMQP over TLS (`amqps`) listens on by default.
pub const DEFAULT_TLS_PORT: u16 = 5671;
/// How long [`crate::Connection::connect`] waits for TCP plus the handshake by default.
pub const DEFAULT_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything needed to open a connection. Build one with [`ConnectionConfig::from_url`]
/// (or `str::parse`), or start from [`ConnectionConfig::default`] and set fields.
///
/// The `Debug` output hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Host name or IP address (IPv6 without brackets). Default `localhost`.
    pub host: String,
    /// TCP port. Default 5672 (5671 for `amqps://`).
    pub port: u16,
    /// TLS over the TCP connection (`amqps://`): the server's certificate must chain to a
    /// trusted root and name `host`. Default `false`.
    pub tls: bool,
    /// With `tls`, a PEM file of the CA certificates to trust instead of the system's
    /// store (URL parameter `cacertfile`). Default `None`: the system's store.
    pub ca_cert: Option<PathBuf>,
    /// User for PLAIN authentication. Default `guest`.
    pub username: String,
    /// Password for PLAIN authentication. Default `guest`.
    pub password: String,
    /// Virtual host. Default `/`.
    pub vhost: String,
    /// Heartbeat interval in seconds the client asks for. `None` takes the server's
    /// proposal; `Some(0)` disables heartbeats; `Some(n)` takes the smaller non-zero value.
    pub heartbeat: Option<u16>,
    /// Largest frame in octets the client accepts (0 = no limit, else at least 4096).
    /// `None` takes the server's proposal; otherwise the smaller non-zero value wins.
    pub frame_max: Option<u32>,
    /// Highest channel number the client wants (0 = no limit). `None` takes the server's
    /// proposal; otherwise the smaller non-zero value wins.
    pub channel_max: Option<u16>,
    /// Limit on TCP connect plus handshake. Default 60 s.
    pub connection_timeout: Duration,
    /// Optional `connection_name` client property, shown in the management UI.
    pub connection_name: Option<String>,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        ConnectionConfig {
            host: "localhost".into(),
            port: DEFAULT_PORT,
            tls: false,
            ca_cert: None,
            username: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            heartbeat: None,
            frame_max: None,
            channel_max: None,
            connection_timeout: DEFAULT_CONNECTION_TIMEOUT,
            connection_name: None,
        }
    }
}

impl fmt::Debug for ConnectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionConfig")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("ca_cert", &self.ca_cert)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("vhost", &self.vhost)
            .field("heartbeat", &self.heartbeat)
            .field("frame_max", &self.frame_max)
            .field("channel_max", &self.channel_max)
            .field("connection_timeout", &self.connection_timeout)
            .field("connection_name", &self.connection_name)
            .finish()
    }
}

impl FromStr for ConnectionConfig {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        ConnectionConfig::from_url(s)
    }
}

impl ConnectionConfig {
    /// Parses an `amqp://` or `amqps://` URL.
    ///
    /// ```
    /// use minimq_client::ConnectionConfig;
    /// let c = ConnectionConfig::from_url("amqp://bob:s%40cret@mq.example:5673/%2f?heartbeat=5").unwrap();
    /// assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "s@cret"));
    /// assert_eq!((c.host.as_str(), c.port, c.vhost.as_str()), ("mq.example", 5673, "/"));
    /// assert_eq!(c.heartbeat, Some(5));
    /// let c = ConnectionConfig::from_url("amqps://mq.example?cacertfile=/etc/mq/ca.pem").unwrap();
    /// assert_eq!((c.tls, c.port), (true, 5671));
    /// assert_eq!(c.ca_cert.as_deref(), Some(std::path::Path::new("/etc/mq/ca.pem")));
    /// ```
    pub fn from_url(url: &str) -> Result<ConnectionConfig> {
        let bad = |why: &str| Error::InvalidUrl(format!("{why}: {url:?}"));
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("missing scheme"))?;
        let mut config = ConnectionConfig::default();
        if scheme.eq_ignore_ascii_case("amqps") {
            config.tls = true;
            config.port = DEFAULT_TLS_PORT;
        } else if !scheme.eq_ignore_ascii_case("amqp") {
            return Err(bad("scheme must be amqp or amqps"));
        }

        // A fragment means nothing to AMQP; drop it.
        let rest = rest.split_once('#').map_or(rest, |(r, _)| r);
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i + 1..]),
            None => (rest, ""),
        };

        // userinfo@hostport; the last '@' separates them.
        let hostport = match authority.rsplit_once('@') {
            Some((userinfo, hostport)) => {
                match userinfo.split_once(':') {
                    Some((user, pass)) => {
                        config.username = percent_decode(user).map_err(|e| bad(&e))?;
                        config.password = percent_decode(pass).map_err(|e| bad(&e))?;
                    }
                    None => config.username = percent_decode(userinfo).map_err(|e| bad(&e))?,
                }
                hostport
            }
            None => authority,
        };

        // host:port, with IPv6 literals in brackets.
        let (host, port) = if let Some(after) = hostport.strip_prefix('[') {
            let (host, tail) = after.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            let port = match tail {
                "" => None,
                t => Some(t.strip_prefix(':').ok_or_else(|| bad("junk after ']'"))?),
            };
            (host.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (percent_decode(h).map_err(|e| bad(&e))?, Some(p)),
                None => (percent_decode(hostport).map_err(|e| bad(&e))?, None),
            }
        };
        if !host.is_empty() {
            config.host = host;
        }
        if let Some(port) = port.filter(|p| !p.is_empty()) {
            config.port = port.parse().map_err(|_| bad("bad port"))?;
        }

        // The path is the vhost; a literal '/' in it must be escaped as %2f.
        if path.contains('/') {
            return Err(bad("vhost contains an unescaped '/' (write it as %2f)"));
        }
        if !path.is_empty() {
            config.vhost = percent_decode(path).map_err(|e| bad(&e))?;
        }

        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value).map_err(|e| bad(&e))?;
            let num = |what: &str| bad(&format!("bad {what} value {value:?}"));
            match key {
                "heartbeat" => config.heartbeat = Some(value.parse().map_err(|_| num(key))?),
                "channel_max" => config.channel_max = Some(value.parse().map_err(|_| num(key))?),
                "frame_max" => {
                    let v: u32 = value.parse().map_err(|_| num(key))?;
                    if v != 0 && v < minimq_protocol::frame::FRAME_MIN_SIZE {
                        return Err(bad("frame_max must be 0 or at least 4096"));
                    }
                    config.frame_max = Some(v);
                }
                "connection_timeout" => {
                    let ms: u64 = value.parse().map_err(|_| num(key))?;
                    config.connection_timeout = Duration::from_millis(ms);
                }
                "connection_name" => config.connection_name = Some(value),
                "cacertfile" => config.ca_cert = Some(PathBuf::from(value)),
                other => tracing::debug!(key = other, "ignoring unknown AMQP URL parameter"),
            }
        }
        Ok(config)
    }
}

/// Decodes `%XX` escapes; the result must be UTF-8. `+` stays `+` (this is not a form).
fn percent_decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent escape at offset {i}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded text is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2fb%2Fc").unwrap(), "a/b/c");
        assert_eq!(percent_decode("caf%C3%A9").unwrap(), "café");
        assert_eq!(percent_decode("a+b").unwrap(), "a+b");
        assert!(percent_decode("%2").is_err());
        assert!(percent_decode("%zz").is_err());
        assert!(percent_decode("%+1").is_err());
        assert!(percent_decode("%ff").is_err());
    }
}
