//! The CLIs over TLS against an in-process minimq with an AMQP TLS listener and its
//! management API on HTTPS, with a CA and a `localhost` certificate made in the test:
//! `task`, `worker` and `minimq-bench` on `amqps://` with `--ca-cert` (or `AMQP_CA_CERT`),
//! `minimqctl` on `https://` with `--ca-cert`; without the CA each fails with one line
//! saying the certificate is not trusted.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

const TASK: &str = env!("CARGO_BIN_EXE_task");
const WORKER: &str = env!("CARGO_BIN_EXE_worker");
const CTL: &str = env!("CARGO_BIN_EXE_minimqctl");
const BENCH: &str = env!("CARGO_BIN_EXE_minimq-bench");

/// A broker with TLS on AMQP and HTTPS on the management API, and the PEM files.
struct TlsBroker {
    rt: tokio::runtime::Runtime,
    broker: Option<minimq_broker::Broker>,
    dir: PathBuf,
    amqps: String,
    https: String,
}

impl TlsBroker {
    fn start(name: &str) -> TlsBroker {
        let dir =
            std::env::temp_dir().join(format!("minimq-cli-tls-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("minimq test CA {name}"));
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();

        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = minimq_broker::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            tls_listen: vec!["127.0.0.1:0".parse().unwrap()],
            tls_cert: Some(dir.join("server.pem")),
            tls_key: Some(dir.join("server.key")),
            http: Some("127.0.0.1:0".parse().unwrap()),
            http_tls_cert: Some(dir.join("server.pem")),
            http_tls_key: Some(dir.join("server.key")),
            ..minimq_broker::Config::default()
        };
        let broker = rt
            .block_on(minimq_broker::Broker::builder().config(config).start())
            .expect("broker starts");
        let amqps = format!(
            "amqps://guest:guest@localhost:{}/%2f",
            broker.tls_addrs()[0].port()
        );
        let https = format!("https://localhost:{}", broker.http_addr().unwrap().port());
        TlsBroker {
            rt,
            broker: Some(broker),
            dir,
            amqps,
            https,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        if let Some(broker) = self.broker.take() {
            self.rt.block_on(broker.shutdown());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(bin: &str, args: &[&str], ca: Option<&Path>) -> Output {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("AMQP_URL")
        .env_remove("AMQP_CA_CERT")
        .env_remove("MINIMQ_MGMT_URL")
        .env_remove("MINIMQ_MGMT_CA_CERT");
    if let Some(ca) = ca {
        cmd.arg("--ca-cert").arg(ca);
    }
    cmd.output().expect("the binary runs")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A failure: exit status 1 and one line on stderr, which is returned.
fn one_line_failure(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    stderr
}

struct Worker(Child);

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn task_worker_bench_and_minimqctl_work_over_tls_with_the_ca() {
    let b = TlsBroker::start("all");
    let ca = b.ca();
    ok(&run(
        TASK,
        &[
            "--url",
            &b.amqps,
            "--no-durable",
            "--queue",
            "tls_q",
            "--count",
            "3",
            "job",
        ],
        Some(&ca),
    ));

    // The CA from the environment, as AMQP_URL gives the URL.
    let mut child = Command::new(WORKER)
        .args([
            "--url",
            &b.amqps,
            "--no-durable",
            "--queue",
            "tls_q",
            "--dot-seconds",
            "0",
        ])
        .env("AMQP_CA_CERT", &ca)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let _worker = Worker(child);
    let mut next = || lines.next().expect("worker output").unwrap();
    assert_eq!(next(), " [*] Waiting for messages. To exit press CTRL+C");
    for i in 1..=3 {
        assert_eq!(next(), format!(" [x] Received 'job {i}'"));
        assert_eq!(next(), " [x] Done");
    }

    let out = ok(&run(
        BENCH,
        &[
            "--url",
            &b.amqps,
            "--count",
            "200",
            "--size",
            "1024",
            "--prefetch",
            "100",
            "--confirm",
            "50",
            "--json",
        ],
        Some(&ca),
    ));
    let report: serde_json::Value = serde_json::from_str(&out).expect("JSON report");
    assert_eq!(report["received"], 200);
    assert_eq!(report["exactly_once"], true);

    let out = ok(&run(
        CTL,
        &[
            "--url",
            &b.https,
            "-q",
            "--no-table-headers",
            "list_queues",
            "name",
            "consumers",
        ],
        Some(&ca),
    ));
    assert!(out.lines().any(|l| l == "tls_q\t1"), "{out}");
}

#[test]
fn without_the_ca_each_tool_fails_with_one_line_about_the_certificate() {
    let b = TlsBroker::start("untrusted");
    // An empty system store or one without this CA: either way the server is not trusted.
    let stderr = one_line_failure(&run(TASK, &["--url", &b.amqps, "--no-durable", "x"], None));
    assert!(
        stderr.starts_with("task: error: cannot connect to amqps://guest:***@localhost:")
            && stderr.contains("TLS:"),
        "{stderr}"
    );
    let stderr = one_line_failure(&run(BENCH, &["--url", &b.amqps, "--count", "1"], None));
    assert!(stderr.contains("TLS:"), "{stderr}");
    let out = run(CTL, &["--url", &b.https, "list_queues"], None);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&b.https) && stderr.contains("certificate"),
        "{stderr}"
    );
    // A CA file that is not one: named in the error.
    let bogus = b.dir.join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let out = run(CTL, &["--url", &b.https, "list_queues"], Some(&bogus));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("bogus.pem"),
        "{stderr}"
    );
    let stderr = one_line_failure(&run(TASK, &["--url", &b.amqps, "x"], Some(&bogus)));
    assert!(stderr.contains("bogus.pem"), "{stderr}");
}
