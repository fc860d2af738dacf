//! The CLIs against a real RabbitMQ, so "the same commands work on RabbitMQ" is checked,
//! not assumed. `#[ignore]`d: it needs `MINIMQ_TEST_RABBITMQ_URL` (AMQP) and
//! `MINIMQ_TEST_RABBITMQ_HTTP` (management API, e.g. `http://127.0.0.1:15672`) and fails
//! without them; `.ci/run` starts a RabbitMQ node, sets them and runs it with `--ignored`.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

const TASK: &str = env!("CARGO_BIN_EXE_task");
const CTL: &str = env!("CARGO_BIN_EXE_minimqctl");

fn env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| panic!("{name} must name the RabbitMQ node this test runs against"))
}

fn run(cmd: &str, args: &[&str]) -> Output {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runs")
}

#[test]
#[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_URL and _HTTP (CI runs it with --ignored)"]
fn task_and_minimqctl_work_against_rabbitmq() {
    let (amqp, http) = (
        env("MINIMQ_TEST_RABBITMQ_URL"),
        env("MINIMQ_TEST_RABBITMQ_HTTP"),
    );
    let queue = format!("cli-interop-{}", std::process::id());
    for msg in ["First message.", "Second message.."] {
        let out = run(TASK, &["--url", &amqp, "--queue", &queue, msg]);
        assert!(
            out.status.success(),
            "task failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!(" [x] Sent '{msg}'\n")
        );
    }
    // RabbitMQ's management statistics lag a few seconds: wait for them to show the queue.
    let want_row = format!("{queue}\t2\t0");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = run(
            CTL,
            &[
                "--url",
                &http,
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
            ],
        );
        assert!(
            out.status.success(),
            "minimqctl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        if stdout.lines().any(|l| l == want_row) {
            assert!(
                stdout
                    .lines()
                    .any(|l| l == "name\tmessages_ready\tmessages_unacknowledged"),
                "{stdout}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "RabbitMQ never listed {want_row:?}:\n{stdout}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let out = run(CTL, &["--url", &http, "delete_queue", &queue]);
    assert!(
        out.status.success(),
        "delete_queue failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(CTL, &["--url", &http, "list_queues", "no_such_column"]);
    assert!(
        !out.status.success(),
        "an unknown column is an error against RabbitMQ too"
    );
}

/// The same policy commands as `minimqctl_broker.rs` checks against minimq, against
/// RabbitMQ's management API: the answers minimq copies are RabbitMQ's.
#[test]
#[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_HTTP (CI runs it with --ignored)"]
fn minimqctl_policy_commands_work_against_rabbitmq() {
    let http = env("MINIMQ_TEST_RABBITMQ_HTTP");
    let name = format!("cli-policy-{}", std::process::id());
    let pattern = format!("^{name}-q");
    let ctl = |args: &[&str]| {
        let mut all = vec!["--url", http.as_str()];
        all.extend_from_slice(args);
        run(CTL, &all)
    };
    let out = ctl(&[
        "set_policy",
        "--priority",
        "2",
        "--apply-to",
        "queues",
        &name,
        &pattern,
        r#"{"max-length":3}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = ctl(&["-q", "list_policies"]);
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing.contains(&format!(
            "/\t{name}\t{pattern}\tqueues\t{{\"max-length\":3}}\t2\n"
        )),
        "{listing}"
    );
    let bad = ctl(&["set_policy", &name, "^x", r#"{"foo":1}"#]);
    assert_eq!(bad.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("are not recognised policy settings"));
    let out = ctl(&["clear_policy", &name]);
    assert!(out.status.success());
    let again = ctl(&["clear_policy", &name]);
    assert_eq!(again.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&again.stderr).contains("Parameter does not exist"));
}

/// The user and permission commands against RabbitMQ's management API: the same output
/// and exit statuses as against minimq (`minimqctl_broker.rs`).
#[test]
#[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_HTTP (CI runs it with --ignored)"]
fn minimqctl_user_commands_work_against_rabbitmq() {
    let http = env("MINIMQ_TEST_RABBITMQ_HTTP");
    let user = format!("cli-user-{}", std::process::id());
    let ctl = |args: &[&str]| {
        let mut all = vec!["--url", http.as_str()];
        all.extend_from_slice(args);
        run(CTL, &all)
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    let out = ctl(&["add_user", &user, "secret"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(ctl(&["add_user", &user, "secret"]).status.code(), Some(70));
    assert!(ctl(&["set_user_tags", &user, "monitoring", "policymaker"])
        .status
        .success());
    assert!(ctl(&["change_password", &user, "s2"]).status.success());
    assert!(
        text(&ctl(&["-q", "list_users"])).contains(&format!("{user}\t[monitoring, policymaker]\n"))
    );
    assert!(ctl(&["set_permissions", "-p", "/", &user, "^t", ".*", ""])
        .status
        .success());
    assert!(text(&ctl(&["-q", "list_permissions"])).contains(&format!("{user}\t^t\t.*\t\n")));
    assert_eq!(
        text(&ctl(&["-q", "list_user_permissions", &user])),
        "vhost\tconfigure\twrite\tread\n/\t^t\t.*\t\n"
    );
    assert!(ctl(&["clear_permissions", &user]).status.success());
    assert!(ctl(&["delete_user", &user]).status.success());
    assert_eq!(ctl(&["delete_user", &user]).status.code(), Some(67));
}

/// The vhost commands give RabbitMQ's answers against RabbitMQ too: add twice (exit 0),
/// listed, `-p` listing, delete, delete again (exit 65).
#[test]
#[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_HTTP (CI runs it with --ignored)"]
fn minimqctl_vhost_commands_work_against_rabbitmq() {
    let http = env("MINIMQ_TEST_RABBITMQ_HTTP");
    let vhost = format!("cli-vhost-{}", std::process::id());
    let ctl = |args: &[&str]| {
        let mut all = vec!["--url", http.as_str()];
        all.extend_from_slice(args);
        run(CTL, &all)
    };
    let text = |o: &Output| String::from_utf8_lossy(&o.stdout).into_owned();
    for _ in 0..2 {
        let out = ctl(&["add_vhost", &vhost]);
        assert_eq!(text(&out), format!("Adding vhost \"{vhost}\" ...\n"));
        assert!(out.status.success());
    }
    let listed = text(&ctl(&["-q", "list_vhosts", "name", "tags", "tracing"]));
    assert!(
        listed.lines().any(|l| l == format!("{vhost}\t[]\tfalse")),
        "{listed}"
    );
    // Empty: no rows, and then no header either.
    assert_eq!(text(&ctl(&["-q", "list_queues", "-p", &vhost])), "");
    let out = ctl(&["delete_vhost", &vhost]);
    assert_eq!(text(&out), format!("Deleting vhost \"{vhost}\" ...\n"));
    let out = ctl(&["delete_vhost", &vhost]);
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("Virtual host '{vhost}' does not exist")));
}

/// Definitions move both ways: minimq's export imports into RabbitMQ (users with their
/// hashes, a policy, a queue), and RabbitMQ's export back into minimq.
#[test]
#[ignore = "needs a RabbitMQ node: MINIMQ_TEST_RABBITMQ_HTTP (CI runs it with --ignored)"]
fn definitions_move_between_minimq_and_rabbitmq() {
    let http = env("MINIMQ_TEST_RABBITMQ_HTTP");
    let tag = std::process::id();
    let ours = common::TestBroker::with_http();
    let ctl = |url: &str, args: &[&str]| {
        let mut all = vec!["--url", url];
        all.extend_from_slice(args);
        run(CTL, &all)
    };
    let user = format!("defs-user-{tag}");
    let policy = format!("defs-policy-{tag}");
    assert!(ctl(&ours.http, &["add_user", &user, "pw"]).status.success());
    assert!(ctl(
        &ours.http,
        &["set_policy", &policy, "^defs-", r#"{"max-length":5}"#]
    )
    .status
    .success());
    let file = std::env::temp_dir().join(format!("defs-{tag}.json"));
    let path = file.display().to_string();
    assert!(ctl(&ours.http, &["export_definitions", &path])
        .status
        .success());
    let out = ctl(&http, &["import_definitions", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // RabbitMQ's import is asynchronous: wait for the user to appear.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let users = String::from_utf8_lossy(&ctl(&http, &["-q", "list_users"]).stdout).into_owned();
        if users.contains(&user) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "user not imported into RabbitMQ: {users}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let policies =
        String::from_utf8_lossy(&ctl(&http, &["-q", "list_policies"]).stdout).into_owned();
    assert!(policies.contains(&policy), "{policies}");
    // And RabbitMQ's export into minimq.
    assert!(ctl(&http, &["export_definitions", &path]).status.success());
    let fresh = common::TestBroker::with_http();
    let out = ctl(&fresh.http, &["import_definitions", &path]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let users =
        String::from_utf8_lossy(&ctl(&fresh.http, &["-q", "list_users"]).stdout).into_owned();
    assert!(users.contains(&user), "{users}");
    // Tidy the node.
    let _ = ctl(&http, &["delete_user", &user]);
    let _ = ctl(&http, &["clear_policy", &policy]);
    let _ = std::fs::remove_file(&file);
}
