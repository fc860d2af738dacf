//! `minimq-server --ephemeral`, the contract other languages' test harnesses rely on, run
//! as the real binary: one JSON line on stdout whose URLs answer, a temporary data
//! directory removed on exit, and exit on stdin EOF, SIGTERM or the parent's death.
//! Every wait is on an event (a line, end of file, the process exit) with a deadline.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use minimq_client::{BasicProperties, Confirmation, Connection, FieldTable, QueueDeclareOptions};

const DEADLINE: Duration = Duration::from_secs(20);

/// What the JSON line says.
#[derive(Debug)]
struct Line {
    amqp_url: String,
    http_url: Option<String>,
    pid: u32,
    data_dir: PathBuf,
}

/// Reads stdout on a thread: the first line, then whether anything follows before EOF.
struct Stdout {
    lines: mpsc::Receiver<String>,
    eof: mpsc::Receiver<()>,
}

impl Stdout {
    fn watch(stdout: ChildStdout) -> Stdout {
        let (tx, lines) = mpsc::channel();
        let (eof_tx, eof) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
            let _ = eof_tx.send(());
        });
        Stdout { lines, eof }
    }

    /// The JSON line, parsed and checked for shape.
    fn json_line(&self) -> Line {
        let raw = self
            .lines
            .recv_timeout(DEADLINE)
            .expect("the JSON line within the deadline");
        let v: serde_json::Value = serde_json::from_str(&raw).expect("the line is JSON");
        let obj = v.as_object().expect("a JSON object");
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["amqp_url", "data_dir", "http_url", "pid"], "{raw}");
        Line {
            amqp_url: v["amqp_url"].as_str().expect("amqp_url").to_owned(),
            http_url: v["http_url"].as_str().map(str::to_owned),
            pid: u32::try_from(v["pid"].as_u64().expect("pid")).expect("pid fits"),
            data_dir: PathBuf::from(v["data_dir"].as_str().expect("data_dir")),
        }
    }

    /// Waits for end of file and says that nothing but the one line was printed.
    fn expect_eof_with_nothing_more(&self) {
        self.eof.recv_timeout(DEADLINE).expect("stdout closed");
        let more: Vec<String> = self.lines.try_iter().collect();
        assert!(more.is_empty(), "stdout had more than one line: {more:?}");
    }
}

fn server() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_minimq-server"));
    c.env_remove("MINIMQ_LISTEN")
        .env_remove("MINIMQ_HTTP")
        .env_remove("MINIMQ_DATA_DIR")
        .env_remove("MINIMQ_FSYNC")
        .env("MINIMQ_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    c
}

/// The child's exit status, waited for on a thread so the wait has a deadline.
fn wait_exit(mut child: Child) -> ExitStatus {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    rx.recv_timeout(DEADLINE)
        .expect("the server exits within the deadline")
        .expect("wait")
}

fn port_of(url: &str) -> u16 {
    let host_port = url
        .rsplit('@')
        .next()
        .and_then(|s| s.split('/').find(|p| p.contains(':') && !p.ends_with(':')))
        .expect("host:port in the URL");
    host_port
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port")
}

/// Declares a durable queue and leaves one persistent message in it, on the URL's broker.
fn publish_persistent(url: &str, queue: &str) {
    runtime().block_on(async {
        let conn = Connection::connect(url).await.expect("AMQP connection");
        let ch = conn.open_channel().await.expect("channel");
        let opts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        ch.queue_declare(queue, opts, FieldTable::new())
            .await
            .expect("declare");
        ch.confirm_select().await.expect("confirm.select");
        let confirm = ch
            .basic_publish(
                "",
                queue,
                false,
                BasicProperties {
                    delivery_mode: Some(2),
                    ..Default::default()
                },
                "kept",
            )
            .await
            .expect("publish");
        assert_eq!(confirm.await.expect("confirm"), Confirmation::Ack);
        conn.close().await.expect("close");
    });
}

/// Messages ready in `queue` (declared passively), on the URL's broker.
fn message_count(url: &str, queue: &str) -> u32 {
    runtime().block_on(async {
        let conn = Connection::connect(url).await.expect("AMQP connection");
        let ch = conn.open_channel().await.expect("channel");
        let opts = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let ok = ch
            .queue_declare(queue, opts, FieldTable::new())
            .await
            .expect("passive declare");
        conn.close().await.expect("close");
        ok.message_count
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// One HTTP GET with guest's credentials; the status line.
fn http_get_status(base: &str, path: &str) -> String {
    let addr = base.strip_prefix("http://").expect("http URL");
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the management API");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    // "guest:guest" in base64.
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    answer.lines().next().unwrap_or_default().to_owned()
}

fn is_dir(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false)
}

#[test]
fn json_line_urls_answer_and_stdin_eof_exits_removing_the_data_dir() {
    let mut child = server()
        .args(["--ephemeral", "--exit-with-stdin"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("start minimq-server");
    let stdin = child.stdin.take().expect("stdin");
    let out = Stdout::watch(child.stdout.take().expect("stdout"));
    let line = out.json_line();
    assert_eq!(line.pid, child.id());
    assert!(
        line.amqp_url.starts_with("amqp://guest:guest@127.0.0.1:")
            && line.amqp_url.ends_with("/%2f"),
        "{line:?}"
    );
    assert_ne!(port_of(&line.amqp_url), 0);
    assert_ne!(
        port_of(&line.amqp_url),
        5672,
        "a free port, not the default"
    );
    let http = line.http_url.clone().expect("management API on by default");
    assert!(http.starts_with("http://127.0.0.1:"), "{http}");
    assert!(is_dir(&line.data_dir), "{line:?}");
    assert!(line.data_dir.starts_with(std::env::temp_dir()), "{line:?}");

    publish_persistent(&line.amqp_url, "eph-q");
    assert_eq!(message_count(&line.amqp_url, "eph-q"), 1);
    assert_eq!(http_get_status(&http, "/api/overview"), "HTTP/1.1 200 OK");

    drop(stdin);
    let status = wait_exit(child);
    assert!(status.success(), "{status:?}");
    out.expect_eof_with_nothing_more();
    assert!(!line.data_dir.exists(), "data dir {line:?} left behind");
}

#[test]
fn sigterm_exits_zero_and_removes_the_data_dir() {
    let mut child = server()
        .args(["--ephemeral", "--http", "off"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start minimq-server");
    let out = Stdout::watch(child.stdout.take().expect("stdout"));
    let line = out.json_line();
    assert_eq!(line.http_url, None, "--http off");
    publish_persistent(&line.amqp_url, "eph-term");
    assert!(is_dir(&line.data_dir));
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let status = wait_exit(child);
    assert!(
        status.success(),
        "SIGTERM is a graceful shutdown: {status:?}"
    );
    out.expect_eof_with_nothing_more();
    assert!(!line.data_dir.exists(), "data dir {line:?} left behind");
}

#[test]
fn a_given_data_dir_is_kept_and_recovered_on_the_next_start_on_a_given_port() {
    let dir = std::env::temp_dir().join(format!("minimq-eph-keep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = |listen: Option<String>| {
        // Given relative to the server's working directory; the line says where it is.
        let mut cmd = server();
        cmd.args(["--ephemeral", "--exit-with-stdin", "--http", "off"])
            .arg("--data-dir")
            .arg(dir.file_name().expect("a name"))
            .current_dir(std::env::temp_dir())
            .stdin(Stdio::piped());
        if let Some(addr) = listen {
            cmd.args(["--listen", &addr]);
        }
        let mut child = cmd.spawn().expect("start minimq-server");
        let stdin = child.stdin.take().expect("stdin");
        let out = Stdout::watch(child.stdout.take().expect("stdout"));
        let line = out.json_line();
        assert_eq!(line.data_dir, dir);
        (child, stdin, out, line)
    };
    let (child, stdin, out, first) = start(None);
    publish_persistent(&first.amqp_url, "eph-kept");
    drop(stdin);
    assert!(wait_exit(child).success());
    out.expect_eof_with_nothing_more();
    assert!(is_dir(&dir), "a given data dir is not removed");

    // An explicit --listen wins over the free port: the same URL as before.
    let same = format!("127.0.0.1:{}", port_of(&first.amqp_url));
    let (child, stdin, out, second) = start(Some(same));
    assert_eq!(second.amqp_url, first.amqp_url);
    assert_eq!(message_count(&second.amqp_url, "eph-kept"), 1);
    drop(stdin);
    assert!(wait_exit(child).success());
    out.expect_eof_with_nothing_more();
    std::fs::remove_dir_all(&dir).expect("remove the test's data dir");
}

#[test]
fn exits_when_its_parent_dies() {
    // sh starts the server in the background (its stdin is then /dev/null: no stdin EOF
    // to exit on) and waits for a line (EOF is no failure); closing sh's stdin ends sh, orphaning the server.
    let mut sh = Command::new("sh")
        .args([
            "-c",
            "\"$0\" --ephemeral --http off & read _ || exit 0",
            env!("CARGO_BIN_EXE_minimq-server"),
        ])
        .env_remove("MINIMQ_LISTEN")
        .env_remove("MINIMQ_DATA_DIR")
        .env("MINIMQ_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start sh");
    let sh_stdin = sh.stdin.take().expect("stdin");
    let out = Stdout::watch(sh.stdout.take().expect("stdout"));
    let line = out.json_line();
    assert_ne!(line.pid, sh.id());
    assert!(is_dir(&line.data_dir));
    drop(sh_stdin);
    assert!(wait_exit(sh).success());
    // The server holds the pipe's write end until it exits: end of file is its exit.
    out.expect_eof_with_nothing_more();
    assert!(!line.data_dir.exists(), "data dir {line:?} left behind");
}
