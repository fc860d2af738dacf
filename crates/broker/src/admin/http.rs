//! Just enough HTTP/1.1 for the management API: read one request (request line, headers,
//! a `Content-Length` body) with size limits, and write one response. Bad input is an
//! [`HttpError`] with the status to answer, never a panic.

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest request line plus headers.
pub const MAX_HEAD: usize = 16 * 1024;
/// Largest request body.
pub const MAX_BODY: usize = 1024 * 1024;
/// Most header lines.
const MAX_HEADERS: usize = 100;

/// A parsed request.
#[derive(Debug)]
pub struct Request {
    /// `GET`, `DELETE`, ...
    pub method: String,
    /// The path, still percent-encoded, without the query.
    pub path: String,
    /// The query string (after `?`), still encoded; empty when absent.
    pub query: String,
    /// Header names (lower-cased) and values.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

impl Request {
    /// A header's value (name in lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The decoded value of query parameter `name`.
    pub fn query_param(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k, true).as_deref() == Some(name))
                .then(|| percent_decode(v, true))
                .flatten()
        })
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum HttpError {
    /// The peer closed (or the socket failed) before a whole request: nothing to answer.
    Closed,
    /// Answer this status and close.
    Status(u16, &'static str),
}

fn bad(reason: &'static str) -> HttpError {
    HttpError::Status(400, reason)
}

/// Reads one request from `io`, using (and keeping leftovers in) `buf`.
pub async fn read_request<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
) -> Result<Request, HttpError> {
    let head_len = loop {
        if let Some(end) = find_head_end(buf) {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(HttpError::Status(
                431,
                "request line and headers exceed 16 KiB",
            ));
        }
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HttpError::Closed),
            Ok(_) => {}
        }
    };
    if head_len.0 > MAX_HEAD {
        return Err(HttpError::Status(
            431,
            "request line and headers exceed 16 KiB",
        ));
    }
    let head = buf.split_to(head_len.1);
    let mut req = parse_head(&head[..head_len.0])?;
    if let Some(te) = req.header("transfer-encoding") {
        if !te.eq_ignore_ascii_case("identity") {
            return Err(HttpError::Status(
                501,
                "Transfer-Encoding is not supported; send Content-Length",
            ));
        }
    }
    let len = match req.header("content-length") {
        None => 0,
        Some(v) => v
            .trim()
            .parse::<usize>()
            .map_err(|_| bad("invalid Content-Length"))?,
    };
    if len > MAX_BODY {
        return Err(HttpError::Status(413, "request body exceeds 1 MiB"));
    }
    while buf.len() < len {
        match io.read_buf(buf).await {
            Ok(0) | Err(_) => return Err(HttpError::Closed),
            Ok(_) => {}
        }
    }
    req.body = buf.split_to(len).to_vec();
    Ok(req)
}

/// Where the head ends: (length of the head without the blank line, length with it).
fn find_head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let b = &buf[..buf.len().min(MAX_HEAD + 4)];
    b.iter().enumerate().find_map(|(i, &c)| {
        if c != b'\n' {
            return None;
        }
        match (b.get(i + 1), b.get(i + 2)) {
            (Some(b'\n'), _) => Some((i, i + 2)),
            (Some(b'\r'), Some(b'\n')) => Some((i, i + 3)),
            _ => None,
        }
    })
}

fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    let text = std::str::from_utf8(head).map_err(|_| bad("request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().ok_or_else(|| bad("empty request"))?;
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(bad("malformed method"));
    }
    let keep_alive_default = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => return Err(HttpError::Status(505, "HTTP version not supported")),
    };
    if !target.starts_with('/') {
        return Err(bad("request target must be an absolute path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if headers.len() >= MAX_HEADERS {
            return Err(HttpError::Status(431, "too many headers"));
        }
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| bad("malformed header"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(bad("malformed header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers,
        body: Vec::new(),
        keep_alive: keep_alive_default,
    };
    if let Some(c) = req.header("connection") {
        let has = |t: &str| c.split(',').any(|x| x.trim().eq_ignore_ascii_case(t));
        if has("close") {
            req.keep_alive = false;
        } else if has("keep-alive") {
            req.keep_alive = true;
        }
    }
    Ok(req)
}

/// Decodes `%XX` escapes (and `+` as space when `plus` is set); `None` when an escape is
/// malformed or the result is not UTF-8.
pub fn percent_decode(s: &str, plus: bool) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut b = s.as_bytes();
    while let Some((&c, rest)) = b.split_first() {
        b = rest;
        match c {
            b'%' => {
                if b.len() < 2 {
                    return None;
                }
                let hex = std::str::from_utf8(&b[..2]).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                b.advance(2);
            }
            b'+' if plus => out.push(b' '),
            c => out.push(c),
        }
    }
    String::from_utf8(out).ok()
}

/// Decodes standard base64 (with or without padding).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.trim().trim_end_matches('=').as_bytes();
    if s.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

/// The reason phrase of a status.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        505 => "HTTP Version Not Supported",
        _ => "Unknown",
    }
}

/// A response to write.
#[derive(Debug)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// JSON body (empty for none).
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    pub fn json(status: u16, value: &serde_json::Value) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: serde_json::to_vec(value).unwrap_or_default(),
        }
    }

    /// A response with no body.
    pub fn empty(status: u16) -> Response {
        Response {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Response {
        self.headers.push((name, value.into()));
        self
    }

    /// Encodes status line, headers and (unless `head_only`) body.
    pub fn encode(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nserver: minimq\r\ncache-control: no-cache\r\n",
            self.status,
            reason_phrase(self.status)
        );
        if !self.body.is_empty() {
            out.push_str("content-type: application/json\r\n");
        }
        if self.status != 204 {
            out.push_str(&format!("content-length: {}\r\n", self.body.len()));
        }
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if !keep_alive {
            out.push_str("connection: close\r\n");
        }
        out.push_str("\r\n");
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64() {
        assert_eq!(base64_decode("Z3Vlc3Q6Z3Vlc3Q=").unwrap(), b"guest:guest");
        assert_eq!(base64_decode("YQ==").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert_eq!(base64_decode("YWJj").unwrap(), b"abc");
        assert_eq!(base64_decode("").unwrap(), b"");
        assert!(base64_decode("Y").is_none());
        assert!(base64_decode("!!!!").is_none());
    }

    #[test]
    fn percent() {
        assert_eq!(percent_decode("%2F", false).unwrap(), "/");
        assert_eq!(percent_decode("a+b%20c", true).unwrap(), "a b c");
        assert_eq!(percent_decode("a+b", false).unwrap(), "a+b");
        assert!(percent_decode("%2", false).is_none());
        assert!(percent_decode("%zz", false).is_none());
        assert!(percent_decode("%ff", false).is_none());
    }

    async fn parse(raw: &[u8]) -> Result<Request, HttpError> {
        let mut io = raw;
        let mut buf = BytesMut::new();
        read_request(&mut io, &mut buf).await
    }

    #[tokio::test]
    async fn requests() {
        let r = parse(b"GET /api/queues/%2F?if-empty=true HTTP/1.1\r\nHost: x\r\nAuthorization: Basic abc\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/api/queues/%2F");
        assert_eq!(r.query_param("if-empty").as_deref(), Some("true"));
        assert_eq!(r.header("authorization"), Some("Basic abc"));
        assert!(r.keep_alive);
        let r = parse(b"DELETE / HTTP/1.0\nContent-Length: 3\n\nabc")
            .await
            .unwrap();
        assert_eq!(r.body, b"abc");
        assert!(!r.keep_alive);
        for bad in [
            &b"GET\r\n\r\n"[..],
            b"get / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            b"GET x HTTP/1.1\r\n\r\n",
            b"\xff\xfe / HTTP/1.1\r\n\r\n",
        ] {
            assert!(matches!(parse(bad).await, Err(HttpError::Status(400, _))));
        }
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
        assert!(matches!(
            parse(huge.as_bytes()).await,
            Err(HttpError::Status(431, _))
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n").await,
            Err(HttpError::Status(413, _))
        ));
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n").await,
            Err(HttpError::Closed)
        ));
    }
}
