//! `minimqctl` as a child process: argument errors (one line on stderr, rabbitmqctl's
//! exit statuses) and the HTTP exchange against a canned server that answers with
//! chunked and Content-Length bodies and records what it was asked, and one that never
//! answers (the time limit).

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const CTL: &str = env!("CARGO_BIN_EXE_minimqctl");

fn ctl(args: &[&str]) -> Output {
    Command::new(CTL)
        .args(args)
        .env_remove("MINIMQ_MGMT_URL")
        .stdin(Stdio::null())
        .output()
        .expect("minimqctl runs")
}

fn assert_one_line_error(out: &Output, code: i32, contains: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {stderr}");
    assert!(
        out.stdout.is_empty(),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(
        stderr.starts_with("minimqctl: error: "),
        "stderr: {stderr:?}"
    );
    assert!(stderr.contains(contains), "stderr: {stderr:?}");
}

/// A one-shot HTTP server: answers each of `responses` in turn (one per connection) and
/// sends back the raw requests it received.
fn fake_server(responses: Vec<String>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for response in responses {
            let Ok((mut sock, _)) = listener.accept() else {
                return;
            };
            sock.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match sock.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            let _ = sock.write_all(response.as_bytes());
        }
    });
    (url, rx)
}

fn chunked(status: &str, body: &str) -> String {
    let (a, b) = body.split_at(body.len() / 2);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n\
         {:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    )
}

fn sized(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[test]
fn usage_errors_are_one_line_with_status_64() {
    let out = ctl(&["bogus_command"]);
    assert_one_line_error(&out, 64, "unrecognized subcommand 'bogus_command'");
    let out = ctl(&[]);
    assert_one_line_error(&out, 64, "no command given");
    // Unknown columns are caught before any request (nothing listens on port 1).
    let out = ctl(&[
        "--url",
        "http://127.0.0.1:1",
        "list_queues",
        "name",
        "bogus",
    ]);
    assert_one_line_error(&out, 64, "Info key(s) bogus are not supported");
    let out = ctl(&["list_consumers", "pid"]);
    assert_one_line_error(&out, 64, "Info key(s) pid are not supported");
    let out = ctl(&["--url", "amqp://127.0.0.1", "status"]);
    assert_one_line_error(&out, 64, "the scheme must be http");
    let out = ctl(&["--formatter", "xml", "status"]);
    assert_one_line_error(&out, 64, "xml");
    let out = ctl(&["purge_queue"]);
    assert_one_line_error(&out, 64, "QUEUE");
}

#[test]
fn unreachable_server_is_one_line_with_status_69() {
    let out = ctl(&["--url", "http://127.0.0.1:1", "list_queues"]);
    assert_one_line_error(&out, 69, "cannot connect to http://127.0.0.1:1");
}

#[test]
fn list_queues_over_http() {
    let body = r#"[{"name":"task_queue","vhost":"/","durable":true,"arguments":{"x-queue-type":"quorum"},"messages":3,"messages_ready":2,"messages_unacknowledged":1,"consumers":1},{"name":"other","vhost":"v2","messages":9}]"#;
    let (url, requests) = fake_server(vec![chunked("200 OK", body), sized("200 OK", body)]);
    let out = ctl(&[
        "--url",
        &url,
        "--user",
        "bob",
        "--password",
        "s3cret",
        "list_queues",
        "name",
        "messages_ready",
        "messages_unacknowledged",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\n\
         name\tmessages_ready\tmessages_unacknowledged\ntask_queue\t2\t1\n"
    );
    let request = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        request.starts_with("GET /api/queues HTTP/1.1\r\n"),
        "{request}"
    );
    // base64("bob:s3cret")
    assert!(
        request.contains("Authorization: Basic Ym9iOnMzY3JldA==\r\n"),
        "{request}"
    );
    assert!(request.contains("Connection: close\r\n"), "{request}");

    let out = ctl(&[
        "--url",
        &url,
        "-p",
        "v2",
        "--formatter",
        "json",
        "list_queues",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "[\n{\"name\":\"other\",\"messages\":9}\n]\n"
    );
}

#[test]
fn purge_and_delete_use_rabbitmq_paths() {
    let (url, requests) = fake_server(vec![
        "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
        sized("200 OK", r#"{"name":"a b","vhost":"/","messages_ready":7}"#),
        "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
        sized(
            "404 Not Found",
            r#"{"error":"Object Not Found","reason":"Not Found"}"#,
        ),
        sized(
            "401 Unauthorized",
            r#"{"error":"not_authorised","reason":"Login failed"}"#,
        ),
    ]);
    let out = ctl(&["--url", &url, "purge_queue", "a b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Purging queue 'a b' in vhost '/' ...\n"
    );
    let r = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        r.starts_with("DELETE /api/queues/%2F/a%20b/contents HTTP/1.1\r\n"),
        "{r}"
    );

    let out = ctl(&["--url", &url, "delete_queue", "a b", "--if-empty"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Deleting queue 'a b' on vhost '/' ...\nQueue was successfully deleted with 7 ready messages\n"
    );
    let r = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        r.starts_with("GET /api/queues/%2F/a%20b HTTP/1.1\r\n"),
        "{r}"
    );
    let r = requests.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        r.starts_with("DELETE /api/queues/%2F/a%20b?if-empty=true HTTP/1.1\r\n"),
        "{r}"
    );

    let out = ctl(&["--url", &url, "purge_queue", "missing"]);
    assert_one_line_error(&out, 69, "queue 'missing' in vhost '/' not found");
    let out = ctl(&["--url", &url, "status"]);
    assert_one_line_error(&out, 69, "authentication failed for user 'guest'");
}

#[test]
fn non_http_server_is_one_line_error() {
    let (url, _requests) = fake_server(vec!["SSH-2.0-OpenSSH_9.2\r\n".to_string()]);
    let out = ctl(&["--url", &url, "status"]);
    assert_one_line_error(&out, 69, "bad HTTP response");
}

#[test]
fn silent_server_is_a_timeout_with_status_69() {
    // Accepts, reads the request, never answers; keeps the socket open until the end.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let Ok((mut sock, _)) = listener.accept() else {
            return;
        };
        let mut buf = [0u8; 4096];
        let _ = sock.read(&mut buf);
        let _ = done_rx.recv_timeout(Duration::from_secs(30));
    });
    let out = ctl(&["--url", &url, "--timeout", "0.5", "status"]);
    let _ = done_tx.send(());
    server.join().unwrap();
    assert_one_line_error(&out, 69, "no answer from http://127.0.0.1:");
    assert!(String::from_utf8_lossy(&out.stderr).contains("within 0.5 seconds"));
}
