//! The `minimq-server` binary's logs: written to stderr (stdout stays empty), and
//! without ANSI colour codes when stderr is a pipe or a file.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let dir = std::env::temp_dir().join(format!("minimq-logs-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut child = Command::new(env!("CARGO_BIN_EXE_minimq-server"))
        .args(["--listen", "127.0.0.1:0", "--http", "off", "--log", "info"])
        .arg("--data-dir")
        .arg(&dir)
        .env_remove("MINIMQ_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start minimq-server");
    let stderr = child.stderr.take().expect("piped stderr");
    let mut stdout = child.stdout.take().expect("piped stdout");
    // Lines as they come, on a thread, so the wait below has a deadline.
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(line) => {
                let listening = line.contains("listening");
                seen.push(line);
                if listening {
                    break;
                }
            }
            Err(e) => {
                let _ = child.kill();
                panic!("no \"listening\" line ({e}); stderr so far: {seen:?}");
            }
        }
    }
    child.kill().expect("kill minimq-server");
    child.wait().expect("reap minimq-server");
    reader.join().expect("stderr reader");
    seen.extend(rx.try_iter());
    let mut out = String::new();
    stdout.read_to_string(&mut out).expect("read stdout");
    let _ = std::fs::remove_dir_all(&dir);

    let all = seen.join("\n");
    assert!(
        !all.contains("\x1b["),
        "colour codes in piped logs: {all:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("INFO") && l.contains("minimq listening")),
        "{all}"
    );
    assert!(out.is_empty(), "logs belong on stderr; stdout had {out:?}");
}
