//! `task` and `worker` as child processes against an in-process minimq broker on an
//! ephemeral port: RabbitMQ tutorial two end to end, a worker killed mid-task, `--exec`,
//! bulk sends and bad URLs. Worker output is read line by line with timeouts.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use minimq_client::{Connection, FieldTable, QueueDeclareOptions};

mod common;
use common::TestBroker;

const TASK: &str = env!("CARGO_BIN_EXE_task");
const WORKER: &str = env!("CARGO_BIN_EXE_worker");
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

impl TestBroker {
    /// Takes every ready message off `queue` (auto-ack): (body, redelivered) pairs.
    fn drain(&self, queue: &str) -> Vec<(String, bool)> {
        self.rt.block_on(async {
            let conn = Connection::connect(&self.url).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let mut out = Vec::new();
            while let Some(m) = ch.basic_get(queue, true).await.unwrap() {
                out.push((
                    String::from_utf8_lossy(&m.delivery.body).into_owned(),
                    m.delivery.redelivered,
                ));
            }
            conn.close().await.unwrap();
            out
        })
    }

    /// Ready message count of `queue` (passive declare).
    fn ready(&self, queue: &str) -> u32 {
        self.rt.block_on(async {
            let conn = Connection::connect(&self.url).await.unwrap();
            let ch = conn.open_channel().await.unwrap();
            let passive = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            let q = ch
                .queue_declare(queue, passive, FieldTable::new())
                .await
                .unwrap();
            conn.close().await.unwrap();
            q.message_count
        })
    }
}

/// A running `worker` whose stdout lines arrive on a channel.
struct Worker {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Worker {
    fn start(url: &str, args: &[&str]) -> Worker {
        let mut child = Command::new(WORKER)
            .arg("--url")
            .arg(url)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("worker starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut w = Worker {
            child,
            lines,
            seen: Vec::new(),
        };
        w.expect(" [*] Waiting for messages. To exit press CTRL+C");
        w
    }

    /// The next line; fails the test after [`LINE_TIMEOUT`].
    fn next_line(&mut self) -> String {
        match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => {
                self.seen.push(line.clone());
                line
            }
            Err(e) => panic!("no line from worker ({e:?}); so far: {:#?}", self.seen),
        }
    }

    fn expect(&mut self, want: &str) {
        let line = self.next_line();
        assert_eq!(line, want, "worker output so far: {:#?}", self.seen);
    }

    /// Sends SIGINT (as Ctrl+C would) and waits for a clean exit.
    fn interrupt(mut self) {
        let status = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "worker exited with {status}");
                return;
            }
            assert!(Instant::now() < deadline, "worker ignored SIGINT");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn task(url: &str, args: &[&str]) -> Output {
    task_with_stdin(url, args, None)
}

fn task_with_stdin(url: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(TASK)
        .arg("--url")
        .arg(url)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("task starts");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().unwrap();
        pipe.write_all(input.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "task {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn tutorial_two_round_robin_with_two_workers() {
    let broker = TestBroker::start();
    let url = &broker.url;
    let mut w1 = Worker::start(url, &["--dot-seconds", "0.4"]);
    let mut w2 = Worker::start(url, &["--dot-seconds", "0.4"]);
    let tasks = [
        "First message.",
        "Second message..",
        "Third message...",
        "Fourth message....",
        "Fifth message.....",
    ];
    for t in tasks {
        let words: Vec<&str> = t.split(' ').collect();
        let out = task(url, &words);
        assert_eq!(stdout(&out), format!(" [x] Sent '{t}'\n"));
    }
    for i in [0, 2, 4] {
        w1.expect(&format!(" [x] Received '{}'", tasks[i]));
        w1.expect(" [x] Done");
    }
    for i in [1, 3] {
        w2.expect(&format!(" [x] Received '{}'", tasks[i]));
        w2.expect(" [x] Done");
    }
    w1.interrupt();
    w2.interrupt();
    assert_eq!(broker.ready("task_queue"), 0);
}

#[test]
fn killed_worker_task_goes_to_the_other_worker() {
    let broker = TestBroker::start();
    let url = &broker.url;
    // The first worker is slow: its task takes 100 s.
    let mut slow = Worker::start(url, &["--dot-seconds", "50"]);
    task(url, &["Slow", "task.."]);
    slow.expect(" [x] Received 'Slow task..'");

    let mut fast = Worker::start(url, &["--dot-seconds", "0.01"]);
    slow.child.kill().unwrap(); // SIGKILL mid-task: no ack, no clean close
    fast.expect(" [x] Received 'Slow task..'");
    fast.expect(" [x] Done");
    fast.interrupt();
    assert!(broker.drain("task_queue").is_empty());
}

#[test]
fn ctrl_c_mid_task_returns_the_message_to_the_queue() {
    let broker = TestBroker::start();
    let url = &broker.url;
    let mut w = Worker::start(url, &["--dot-seconds", "60"]);
    task(url, &["Hard", "work."]);
    w.expect(" [x] Received 'Hard work.'");
    w.interrupt(); // exits at once, without acking
    assert_eq!(
        broker.drain("task_queue"),
        vec![("Hard work.".to_string(), true)]
    );
}

#[test]
fn exec_success_acks_and_feeds_the_body_on_stdin() {
    let broker = TestBroker::start();
    let url = &broker.url;
    let dir = std::env::temp_dir().join(format!("minimq-cli-exec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bodies");
    let _ = std::fs::remove_file(&file);
    let cmd = format!("cat >> '{}'; echo >> '{}'", file.display(), file.display());
    let mut w = Worker::start(url, &["--queue", "jobs", "--exec", &cmd]);
    task(url, &["--queue", "jobs", "resize", "image.png"]);
    w.expect(" [x] Received 'resize image.png'");
    w.expect(" [x] Done");
    w.interrupt();
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        "resize image.png\n"
    );
    assert_eq!(broker.ready("jobs"), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn exec_failure_nacks_without_requeue() {
    let broker = TestBroker::start();
    let url = &broker.url;
    // Succeeds only for the body "good".
    let mut w = Worker::start(
        url,
        &[
            "--queue",
            "jobs",
            "--exec",
            "test \"$(cat)\" = good || exit 3",
        ],
    );
    task(url, &["--queue", "jobs", "bad"]);
    w.expect(" [x] Received 'bad'");
    w.expect(" [x] Failed: exit status 3 (rejected)");
    task(url, &["--queue", "jobs", "good"]);
    w.expect(" [x] Received 'good'");
    w.expect(" [x] Done");
    w.interrupt();
    // The failed message was dropped, not requeued.
    assert!(broker.drain("jobs").is_empty());
}

#[test]
fn exec_failure_with_requeue_on_failure_is_retried() {
    let broker = TestBroker::start();
    let url = &broker.url;
    let marker = std::env::temp_dir().join(format!("minimq-cli-retry-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    // Fails the first time (creating the marker), succeeds the second time, and checks
    // that the retry is flagged as redelivered.
    let cmd = format!(
        "if [ -e '{m}' ]; then test \"$MINIMQ_REDELIVERED\" = 1; else touch '{m}'; exit 1; fi",
        m = marker.display()
    );
    let mut w = Worker::start(
        url,
        &["--queue", "retry", "--exec", &cmd, "--requeue-on-failure"],
    );
    task(url, &["--queue", "retry", "flaky"]);
    w.expect(" [x] Received 'flaky'");
    w.expect(" [x] Failed: exit status 1 (requeued)");
    w.expect(" [x] Received 'flaky'");
    w.expect(" [x] Done");
    w.interrupt();
    assert_eq!(broker.ready("retry"), 0);
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn task_count_sends_numbered_confirmed_messages() {
    let broker = TestBroker::start();
    let url = &broker.url;
    let out = task(url, &["--queue", "load", "--count", "50", "job"]);
    assert_eq!(
        stdout(&out),
        " [x] Sent 50 messages to 'load' (all confirmed)\n"
    );
    let got = broker.drain("load");
    let want: Vec<(String, bool)> = (1..=50).map(|i| (format!("job {i}"), false)).collect();
    assert_eq!(got, want);

    // With a rate: 10 messages at 100/s take at least ~90 ms.
    let start = Instant::now();
    task(url, &["--queue", "load", "--count", "10", "--rate", "100"]);
    assert!(start.elapsed() >= Duration::from_millis(90));
    assert_eq!(broker.ready("load"), 10);
}

#[test]
fn task_stdin_sends_one_message_per_line() {
    let broker = TestBroker::start();
    let url = &broker.url;
    let out = task_with_stdin(
        url,
        &["--queue", "lines", "--stdin"],
        Some("first line\nsecond.\n\nthird\n"),
    );
    assert_eq!(
        stdout(&out),
        " [x] Sent 3 messages to 'lines' (all confirmed)\n"
    );
    let bodies: Vec<String> = broker.drain("lines").into_iter().map(|m| m.0).collect();
    assert_eq!(bodies, ["first line", "second.", "third"]);
}

#[test]
fn default_message_and_confirm() {
    let broker = TestBroker::start();
    let out = task(&broker.url, &["--confirm", "--transient"]);
    assert_eq!(stdout(&out), " [x] Sent 'Hello World!'\n");
    assert_eq!(
        broker.drain("task_queue"),
        vec![("Hello World!".to_string(), false)]
    );
}

/// One line on stderr, `PROGRAM: error: ...`, nothing on stdout, exit status 1.
fn assert_one_line_error(out: &Output, program: &str, contains: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "stdout: {:?}", out.stdout);
    assert_eq!(stderr.lines().count(), 1, "stderr: {stderr:?}");
    assert!(
        stderr.starts_with(&format!("{program}: error: ")),
        "stderr: {stderr:?}"
    );
    assert!(stderr.contains(contains), "stderr: {stderr:?}");
}

#[test]
fn bad_urls_give_one_line_errors() {
    // Nothing listens on port 1.
    let refused = "amqp://guest:secret@127.0.0.1:1/%2f";
    for (program, bin) in [("task", TASK), ("worker", WORKER)] {
        let out = Command::new(bin)
            .args(["--url", refused])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_one_line_error(
            &out,
            program,
            "cannot connect to amqp://guest:***@127.0.0.1:1/%2f",
        );
        assert!(!String::from_utf8_lossy(&out.stderr).contains("secret"));

        let out = Command::new(bin)
            .args(["--url", "http://127.0.0.1:15672/"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert_one_line_error(&out, program, "invalid AMQP URL");
    }

    // The URL may also come from AMQP_URL.
    let out = Command::new(TASK)
        .env("AMQP_URL", refused)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&out, "task", "127.0.0.1:1");
}

#[test]
fn mismatched_queue_declaration_is_a_one_line_error() {
    let broker = TestBroker::start();
    task(&broker.url, &["first"]); // durable quorum task_queue
    let out = Command::new(TASK)
        .args(["--url", &broker.url, "--no-durable", "second"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_one_line_error(&out, "task", "PRECONDITION_FAILED");
}
