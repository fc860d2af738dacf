//! A minimal HTTP/1.1 client over a tokio `TcpStream`, enough for the management API:
//! one request per connection (`Connection: close`), basic auth, and response bodies
//! framed by `Content-Length`, `Transfer-Encoding: chunked`, or the end of the stream.
//! Plain `http://` only.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where the management API lives: `http://host:port[/path-prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseUrl {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port (default 80).
    pub port: u16,
    /// Path prefix without a trailing `/` (usually empty).
    pub prefix: String,
}

impl BaseUrl {
    /// Parses `http://host[:port][/prefix]`.
    pub fn parse(url: &str) -> Result<BaseUrl, String> {
        let bad = |why: &str| format!("invalid management URL {url:?}: {why}");
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) if scheme.eq_ignore_ascii_case("https") => {
                return Err(bad("https is not supported"))
            }
            Some(_) => return Err(bad("the scheme must be http")),
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
            None => 80,
        };
        Ok(BaseUrl {
            host: host.to_string(),
            port,
            prefix: path.trim_end_matches('/').to_string(),
        })
    }

    /// `host:port` for messages and the `Host` header.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// A response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// e.g. 200.
    pub status: u16,
    /// The reason phrase, e.g. `OK`.
    pub reason: String,
    /// The decoded body (chunked encoding removed).
    pub body: Vec<u8>,
}

/// An HTTP client for one base URL, with basic-auth credentials.
#[derive(Debug, Clone)]
pub struct Client {
    base: BaseUrl,
    authorization: String,
    timeout: Duration,
}

impl Client {
    /// A client; every request (connect, send, receive) must finish within `timeout`.
    pub fn new(base: BaseUrl, user: &str, password: &str, timeout: Duration) -> Client {
        Client {
            base,
            authorization: format!("Basic {}", base64(format!("{user}:{password}").as_bytes())),
            timeout,
        }
    }

    /// The base URL.
    pub fn base(&self) -> &BaseUrl {
        &self.base
    }

    /// Sends `method path` (path starting with `/`, already percent-encoded).
    pub async fn request(&self, method: &str, path: &str) -> Result<Response, String> {
        let target = format!("{}{}", self.base.prefix, path);
        let authority = self.base.authority();
        match tokio::time::timeout(self.timeout, self.exchange(method, &target, &authority)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer from http://{authority} within {:.1} seconds",
                self.timeout.as_secs_f64()
            )),
        }
    }

    async fn exchange(
        &self,
        method: &str,
        target: &str,
        authority: &str,
    ) -> Result<Response, String> {
        let mut stream = TcpStream::connect((self.base.host.as_str(), self.base.port))
            .await
            .map_err(|e| format!("cannot connect to http://{authority}: {e}"))?;
        let request = format!(
            "{method} {target} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: {}\r\n\
             Accept: */*\r\nUser-Agent: minimqctl/{}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.authorization,
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("sending to http://{authority}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("reading from http://{authority}: {e}"))?;
        parse_response(&raw, method == "HEAD")
            .map_err(|e| format!("bad HTTP response from http://{authority}: {e}"))
    }
}

/// Parses a complete HTTP/1.x response (the connection was closed after it).
pub fn parse_response(raw: &[u8], head_only: bool) -> Result<Response, String> {
    let end = find(raw, b"\r\n\r\n").ok_or("the response ended inside its headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(format!("not an HTTP/1 status line: {status_line:?}"));
    }
    let status = parts
        .next()
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| format!("bad status line: {status_line:?}"))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            content_length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad Content-Length: {value:?}"))?,
            );
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if chunked {
        dechunk(rest)?
    } else if let Some(len) = content_length {
        if rest.len() < len {
            return Err(format!("body cut short: {} of {len} bytes", rest.len()));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(Response {
        status,
        reason,
        body,
    })
}

/// Removes chunked transfer encoding (chunk extensions and trailers are ignored).
pub fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n").ok_or("chunked body cut short")?;
        let size_line = std::str::from_utf8(&data[..line_end]).map_err(|_| "bad chunk size")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| format!("bad chunk size {size_hex:?}"))?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err("chunked body cut short".into());
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 with padding.
pub fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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
    fn base64_matches_rfc4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
            ("guest:guest", "Z3Vlc3Q6Z3Vlc3Q="),
        ] {
            assert_eq!(base64(plain.as_bytes()), encoded);
        }
    }

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
        assert!(BaseUrl::parse("https://mq").is_err());
        assert!(BaseUrl::parse("amqp://mq").is_err());
        assert!(BaseUrl::parse("mq:15672").is_err());
        assert!(BaseUrl::parse("http://mq:notaport").is_err());
        assert!(BaseUrl::parse("http://u:p@mq").is_err());
    }

    #[test]
    fn parses_content_length_bodies() {
        let raw =
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: application/json\r\n\r\n[]";
        let r = parse_response(raw, false).unwrap();
        assert_eq!(
            (r.status, r.reason.as_str(), r.body.as_slice()),
            (200, "OK", &b"[]"[..])
        );
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n[]", false).is_err());
    }

    #[test]
    fn parses_chunked_bodies() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\n[{\"a\r\n5\r\n\":1}]\r\n0\r\nTrailer: x\r\n\r\n";
        let r = parse_response(raw, false).unwrap();
        assert_eq!(r.body, b"[{\"a\":1}]");
        assert!(dechunk(b"4\r\nab").is_err());
        assert!(dechunk(b"zz\r\n").is_err());
    }

    #[test]
    fn parses_bodies_ended_by_close_and_empty_statuses() {
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\nhello", false).unwrap();
        assert_eq!(r.body, b"hello");
        let r = parse_response(b"HTTP/1.1 204 No Content\r\n\r\n", false).unwrap();
        assert_eq!((r.status, r.body.len()), (204, 0));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false).is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n", false).is_err());
    }

    #[test]
    fn encodes_segments() {
        assert_eq!(encode_segment("/"), "%2F");
        assert_eq!(encode_segment("task_queue"), "task_queue");
        assert_eq!(encode_segment("a b/é"), "a%20b%2F%C3%A9");
    }
}
