//! `minimq-bench` against an in-process minimq broker: counted and timed runs, the JSON
//! report, the exactly-once check, and bad input.

use std::process::{Command, Output, Stdio};

use serde_json::Value;

mod common;
use common::TestBroker;

const BENCH: &str = env!("CARGO_BIN_EXE_minimq-bench");

fn bench(url: &str, args: &[&str]) -> Output {
    Command::new(BENCH)
        .arg("--url")
        .arg(url)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("minimq-bench runs")
}

fn report(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON report")
}

#[test]
fn counted_run_with_confirms_and_multi_ack_is_exactly_once() {
    let b = TestBroker::start();
    let r = report(&bench(
        &b.url,
        &[
            "--producers",
            "2",
            "--consumers",
            "2",
            "--count",
            "500",
            "--confirm",
            "50",
            "--multi-ack",
            "10",
            "--prefetch",
            "20",
            "--size",
            "256",
            "--json",
        ],
    ));
    assert_eq!(r["sent"], 1000);
    assert_eq!(r["confirmed"], 1000);
    assert_eq!(r["nacked"], 0);
    assert_eq!(r["received"], 1000);
    assert_eq!(r["missing"], 0);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["exactly_once"], true);
    assert_eq!(r["size"], 256);
    let lat = &r["latency_ms"];
    let (p50, p99, max) = (
        lat["p50"].as_f64().unwrap(),
        lat["p99"].as_f64().unwrap(),
        lat["max"].as_f64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max, "{lat}");
}

#[test]
fn transactional_run_commits_every_n_and_the_rest_at_the_end() {
    let b = TestBroker::start();
    let r = report(&bench(
        &b.url,
        &[
            "--count",
            "250",
            "--tx",
            "100",
            "--persistent",
            "--durable",
            "--queue",
            "bench-tx",
            "--json",
        ],
    ));
    // Two full transactions of 100 and one of the remaining 50.
    assert_eq!(r["sent"], 250);
    assert_eq!(r["committed"], 250);
    assert_eq!(r["commits"], 3);
    assert_eq!(r["received"], 250);
    assert_eq!(r["exactly_once"], true);

    // Without a count, a commit every 100.
    let out = bench(&b.url, &["--count", "100", "--tx", "--consumers", "0"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("committed: 100 msg in 1 tx.commit"), "{text}");
}

#[test]
fn timed_run_with_rate_auto_ack_and_persistence() {
    let b = TestBroker::start();
    let r = report(&bench(
        &b.url,
        &[
            "--duration",
            "1",
            "--rate",
            "200",
            "--auto-ack",
            "--persistent",
            "--durable",
            "--queue",
            "bench-durable",
            "--json",
        ],
    ));
    let sent = r["sent"].as_u64().unwrap();
    // 200/s for one second, give or take scheduling.
    assert!((150..=205).contains(&sent), "sent {sent}");
    assert_eq!(r["received"], sent);
    assert_eq!(r["exactly_once"], true);
}

#[test]
fn text_report_and_publish_only() {
    let b = TestBroker::start();
    let out = bench(&b.url, &["--count", "100", "--consumers", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("1 producer(s), 0 consumer(s), 64 B messages"),
        "{text}"
    );
    assert!(text.contains("sent:      100 msg"), "{text}");

    let out = bench(&b.url, &["--count", "100"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // The queue was purged first: the 100 left over are not counted.
    assert!(text.contains("received:  100 msg"), "{text}");
    assert!(
        text.contains("delivery:  every message exactly once (missing 0, duplicates 0)"),
        "{text}"
    );
}

#[test]
fn bad_input_is_one_line() {
    for args in [
        &[
            "--url",
            "amqp://guest:guest@127.0.0.1:1/%2f",
            "--count",
            "1",
        ][..],
        &["--multi-ack", "500", "--prefetch", "10", "--count", "1"][..],
        &["--rate", "0", "--count", "1"][..],
        &["--tx", "0", "--count", "1"][..],
    ] {
        let out = Command::new(BENCH)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("minimq-bench: error: "), "{stderr}");
    }
}
