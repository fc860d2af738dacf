//! The `minimq-server` binary's HTTPS flags: `--http-tls-cert` / `--http-tls-key` with a
//! certificate made in the test give `--ephemeral` an `https://` management URL; a file
//! that holds no certificate, or one flag without the other, stops the start with one
//! error line naming it and exit status 1, never a panic.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Far above a start-up on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(30);

struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = std::env::temp_dir().join(format!("minimq-https-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn server(args: &[&std::ffi::OsStr]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_minimq-server"));
    c.args(["--ephemeral", "--exit-with-stdin"])
        .args(args)
        .env_remove("MINIMQ_HTTP_TLS_CERT")
        .env_remove("MINIMQ_HTTP_TLS_KEY")
        .env("MINIMQ_LOG", "warn");
    c
}

/// Runs to its end (stdin closed at once), within the deadline.
fn run(mut cmd: Command) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minimq-server");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    rx.recv_timeout(DEADLINE)
        .expect("the server exits within the deadline")
        .expect("wait")
}

fn one_error_line(out: &Output, names: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains(names), "{stderr}");
}

#[test]
fn a_file_without_a_certificate_or_a_lone_flag_is_one_error_line_naming_it() {
    let dir = Dir::new("bad");
    let bad = dir.0.join("not-a-cert.pem");
    std::fs::write(&bad, "this is not PEM\n").unwrap();
    let flag = |s: &str| std::ffi::OsString::from(s);
    let out = run(server(&[
        &flag("--http-tls-cert"),
        bad.as_os_str(),
        &flag("--http-tls-key"),
        bad.as_os_str(),
    ]));
    one_error_line(&out, &bad.display().to_string());
    let out = run(server(&[&flag("--http-tls-cert"), bad.as_os_str()]));
    one_error_line(&out, "--http-tls-key");
}

#[test]
fn with_a_certificate_the_ephemeral_line_gives_an_https_url() {
    let dir = Dir::new("good");
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let (cert_file, key_file) = (dir.0.join("server.pem"), dir.0.join("server.key"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let mut child = server(&[
        std::ffi::OsStr::new("--http-tls-cert"),
        cert_file.as_os_str(),
        std::ffi::OsStr::new("--http-tls-key"),
        key_file.as_os_str(),
    ])
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null())
    .spawn()
    .expect("start minimq-server");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let (tx, rx) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let _ = tx.send(line);
        let mut rest = String::new();
        let _ = stdout.read_to_string(&mut rest);
    });
    let line = rx.recv_timeout(DEADLINE).expect("the JSON line");
    let json: serde_json::Value = serde_json::from_str(&line).expect("JSON");
    let url = json["http_url"].as_str().expect("an http_url");
    assert!(url.starts_with("https://127.0.0.1:"), "{line}");
    drop(child.stdin.take()); // end of stdin: the broker exits
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait());
    });
    let status = rx.recv_timeout(DEADLINE).expect("exit").expect("wait");
    assert!(status.success(), "{status}");
    reader.join().expect("stdout reader");
}
