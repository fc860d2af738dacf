//! `minimqctl` against the embedded broker's management HTTP API, with `task` and
//! `worker` making something to list: queues with ready and unacknowledged messages, a
//! connection, a channel, a consumer; then purge, delete and status.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const TASK: &str = env!("CARGO_BIN_EXE_task");
const WORKER: &str = env!("CARGO_BIN_EXE_worker");
const CTL: &str = env!("CARGO_BIN_EXE_minimqctl");

mod common;
use common::TestBroker;

impl TestBroker {
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(CTL)
            .arg("--url")
            .arg(&self.http)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("minimqctl runs")
    }

    /// Runs minimqctl until its stdout equals `want` (counters may settle a moment after
    /// the AMQP side); fails after 10 s with the last output.
    fn ctl_until(&self, args: &[&str], want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = self.ctl(args);
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && stdout == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "minimqctl {args:?}: got {stdout:?} (stderr {:?}), want {want:?}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

struct Worker(Child);

impl Drop for Worker {
    /// SIGINT, so the worker kills its command on the way out; SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn minimqctl_lists_and_manages_the_embedded_broker() {
    let b = TestBroker::with_http();
    for args in [
        &["--count", "3", "job"][..],
        &["--queue", "other", "--queue-type", "classic", "x"][..],
    ] {
        let out = Command::new(TASK)
            .arg("--url")
            .arg(&b.url)
            .args(args)
            .output()
            .unwrap();
        ok(&out);
    }

    // A worker that holds one message (its command never finishes).
    let mut child = Command::new(WORKER)
        .args(["--url", &b.url, "--exec", "exec sleep 600 >/dev/null"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let worker = Worker(child);
    let mut next = || lines.next().expect("worker output").unwrap();
    assert_eq!(next(), " [*] Waiting for messages. To exit press CTRL+C");
    assert_eq!(next(), " [x] Received 'job 1'");

    b.ctl_until(
        &[
            "list_queues",
            "name",
            "messages",
            "messages_ready",
            "messages_unacknowledged",
            "consumers",
            "durable",
            "arguments",
        ],
        "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\n\
         name\tmessages\tmessages_ready\tmessages_unacknowledged\tconsumers\tdurable\targuments\n\
         other\t1\t1\t0\t0\ttrue\t[{\"x-queue-type\",\"classic\"}]\n\
         task_queue\t3\t2\t1\t1\ttrue\t[{\"x-queue-type\",\"quorum\"}]\n",
    );
    b.ctl_until(
        &["--formatter", "json", "list_queues", "name", "messages_ready"],
        "[\n{\"name\":\"other\",\"messages_ready\":1}\n,{\"name\":\"task_queue\",\"messages_ready\":2}\n]\n",
    );

    let conns = ok(&b.ctl(&["list_connections", "user", "state", "channels"]));
    assert_eq!(
        conns,
        "Listing connections ...\nuser\tstate\tchannels\nguest\trunning\t1\n"
    );
    let channels = ok(&b.ctl(&[
        "-q",
        "list_channels",
        "user",
        "consumer_count",
        "messages_unacknowledged",
        "prefetch_count",
    ]));
    assert_eq!(
        channels,
        "user\tconsumer_count\tmessages_unacknowledged\tprefetch_count\nguest\t1\t1\t1\n"
    );
    let consumers = ok(&b.ctl(&[
        "list_consumers",
        "queue_name",
        "ack_required",
        "prefetch_count",
    ]));
    assert_eq!(
        consumers,
        "Listing consumers in vhost / ...\nqueue_name\tack_required\tprefetch_count\ntask_queue\ttrue\t1\n"
    );

    let status = ok(&b.ctl(&["status"]));
    assert!(status.starts_with("Status of node "), "{status}");
    assert!(status.contains("Queue count: 2\n"), "{status}");
    assert!(status.contains("protocol: amqp"), "{status}");

    // Purge drops the ready messages only; the held one stays unacknowledged.
    assert_eq!(
        ok(&b.ctl(&["purge_queue", "task_queue"])),
        "Purging queue 'task_queue' in vhost '/' ...\n"
    );
    b.ctl_until(
        &[
            "-q",
            "list_queues",
            "name",
            "messages_ready",
            "messages_unacknowledged",
        ],
        "name\tmessages_ready\tmessages_unacknowledged\nother\t1\t0\ntask_queue\t0\t1\n",
    );

    assert_eq!(
        ok(&b.ctl(&["delete_queue", "other"])),
        "Deleting queue 'other' on vhost '/' ...\nQueue was successfully deleted with 1 ready messages\n"
    );
    let out = b.ctl(&["delete_queue", "other"]);
    assert_eq!(out.status.code(), Some(69));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "minimqctl: error: queue 'other' in vhost '/' not found\n"
    );
    let out = b.ctl(&["--password", "wrong", "list_queues"]);
    assert_eq!(out.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&out.stderr).contains("authentication failed"));

    drop(worker);
    b.ctl_until(&["-q", "list_connections"], "");
}

#[test]
fn minimqctl_sets_lists_and_clears_policies_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    let out = ok(&b.ctl(&[
        "set_policy",
        "--priority",
        "2",
        "--apply-to",
        "queues",
        "cap",
        "^pq",
        r#"{"max-length":3}"#,
    ]));
    assert_eq!(
        out,
        "Setting policy \"cap\" for pattern \"^pq\" to \"{\"max-length\":3}\" with priority \"2\" for vhost \"/\" ...\n"
    );
    ok(&b.ctl(&["set_policy", "ttl", ".*", r#"{"message-ttl":60000}"#]));
    assert_eq!(
        ok(&b.ctl(&["list_policies"])),
        "Listing policies for vhost \"/\" ...\n\
         vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n\
         /\tcap\t^pq\tqueues\t{\"max-length\":3}\t2\n\
         /\tttl\t.*\tall\t{\"message-ttl\":60000}\t0\n"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&b.ctl(&["--formatter", "json", "list_policies"]).stdout).unwrap();
    assert_eq!(json[0]["definition"], "{\"max-length\":3}");
    assert_eq!(
        ok(&b.ctl(&["clear_policy", "cap"])),
        "Clearing policy \"cap\" on vhost \"/\" ...\n"
    );
    let again = b.ctl(&["clear_policy", "cap"]);
    assert_eq!(again.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&again.stderr).contains("Parameter does not exist"));
    let bad = b.ctl(&["set_policy", "bad", "^x", r#"{"foo":1}"#]);
    assert_eq!(bad.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("are not recognised policy settings"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    let not_json = b.ctl(&["set_policy", "bad", "^x", "notjson"]);
    assert_eq!(not_json.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&not_json.stderr).contains("JSON decoding error"));
    assert_eq!(
        ok(&b.ctl(&["-q", "list_policies"])),
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n/\tttl\t.*\tall\t{\"message-ttl\":60000}\t0\n"
    );
}

#[test]
fn minimqctl_sets_lists_and_clears_operator_policies_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    // Outputs as rabbitmqctl 3.10 printed them for the same commands.
    assert_eq!(
        ok(&b.ctl(&[
            "set_operator_policy",
            "c1",
            "^opx-c",
            r#"{"max-length":7}"#,
            "--apply-to",
            "queues"
        ])),
        "Setting operator policy override \"c1\" for pattern \"^opx-c\" to \"{\"max-length\":7}\" with priority \"0\" for vhost \"/\" ...\n"
    );
    ok(&b.ctl(&[
        "set_operator_policy",
        "--priority",
        "3",
        "c2",
        "^opx-",
        r#"{"max-length":5,"message-ttl":1000}"#,
    ]));
    assert_eq!(
        ok(&b.ctl(&["list_operator_policies"])),
        "Listing operator policy overrides for vhost \"/\" ...\n\
         vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n\
         /\tc1\t^opx-c\tqueues\t{\"max-length\":7}\t0\n\
         /\tc2\t^opx-\tall\t{\"max-length\":5,\"message-ttl\":1000}\t3\n"
    );
    let json: serde_json::Value = serde_json::from_slice(
        &b.ctl(&["--formatter", "json", "list_operator_policies"])
            .stdout,
    )
    .unwrap();
    assert_eq!(json[0]["definition"], "{\"max-length\":7}");
    assert_eq!(
        ok(&b.ctl(&["list_policies", "-q"])),
        "",
        "policies are a name space of their own"
    );
    let bad = b.ctl(&[
        "set_operator_policy",
        "c3",
        "^opx-d",
        r#"{"dead-letter-exchange":"x"}"#,
    ]);
    assert_eq!(bad.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains(
            "[{<<\"dead-letter-exchange\">>,<<\"x\">>}] are not recognised policy settings"
        ),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(
        ok(&b.ctl(&["clear_operator_policy", "c1"])),
        "Clearing operator policy \"c1\" on vhost \"/\" ...\n"
    );
    let again = b.ctl(&["clear_operator_policy", "c1"]);
    assert_eq!(again.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&again.stderr).contains("Parameter does not exist"));
    assert_eq!(
        ok(&b.ctl(&["-q", "list_operator_policies"])),
        "vhost\tname\tpattern\tapply-to\tdefinition\tpriority\n/\tc2\t^opx-\tall\t{\"max-length\":5,\"message-ttl\":1000}\t3\n"
    );
}

#[test]
fn minimqctl_sets_lists_and_clears_vhost_limits_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    assert_eq!(
        ok(&b.ctl(&["set_vhost_limits", r#"{"max-queues": 5, "max-connections": 10}"#])),
        "Setting vhost limits to \"{\"max-queues\": 5, \"max-connections\": 10}\" for vhost \"/\" ...\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_vhost_limits"])),
        "Listing limits for vhost \"/\" ...\n{\"max-connections\":10,\"max-queues\":5}\n"
    );
    // set replaces: max-connections goes.
    ok(&b.ctl(&["set_vhost_limits", r#"{"max-queues": 7}"#]));
    assert_eq!(
        ok(&b.ctl(&["-q", "list_vhost_limits"])),
        "{\"max-queues\":7}\n"
    );
    let bad = b.ctl(&["set_vhost_limits", r#"{"max-foo": 1}"#]);
    assert_eq!(bad.status.code(), Some(69));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("Unrecognised terms [{<<\"max-foo\">>,1}] in limits"));
    assert_eq!(
        ok(&b.ctl(&["clear_vhost_limits"])),
        "Clearing vhost \"/\" limits ...\n"
    );
    assert_eq!(ok(&b.ctl(&["-q", "list_vhost_limits"])), "\n");
}

/// The outputs and exit codes are rabbitmqctl 3.10's, as it prints them for the same
/// commands.
#[test]
fn minimqctl_adds_lists_and_deletes_vhosts_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    assert_eq!(
        ok(&b.ctl(&["add_vhost", "cli-v"])),
        "Adding vhost \"cli-v\" ...\n"
    );
    // Adding it again changes nothing and succeeds.
    assert_eq!(
        ok(&b.ctl(&["add_vhost", "cli-v"])),
        "Adding vhost \"cli-v\" ...\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_vhosts"])),
        "Listing vhosts ...\nname\n/\ncli-v\n"
    );
    assert_eq!(
        ok(&b.ctl(&["-q", "list_vhosts", "name", "description", "tags", "default_queue_type", "tracing"])),
        "name\tdescription\ttags\tdefault_queue_type\ttracing\n/\t\t[]\tundefined\tfalse\ncli-v\t\t[]\tundefined\tfalse\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_vhosts", "--formatter", "json"])),
        "[\n{\"name\":\"/\"}\n,{\"name\":\"cli-v\"}\n]\n"
    );
    let bad = b.ctl(&["list_vhosts", "nosuchcol"]);
    assert_eq!(bad.status.code(), Some(64));
    // -p picks the vhost of the list commands: a queue made in cli-v is listed there only.
    let url = format!("{}/cli-v", b.url.trim_end_matches("/%2f"));
    let out = Command::new(TASK)
        .args(["--url", &url, "--queue", "in-v", "one"])
        .stdin(Stdio::null())
        .output()
        .expect("task runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    b.ctl_until(
        &["-q", "list_queues", "-p", "cli-v"],
        "name\tmessages\nin-v\t1\n",
    );
    // `/` has none: no rows, and then no header either, as rabbitmqctl.
    assert_eq!(ok(&b.ctl(&["-q", "list_queues"])), "");
    assert_eq!(
        ok(&b.ctl(&["delete_vhost", "cli-v"])),
        "Deleting vhost \"cli-v\" ...\n"
    );
    let gone = b.ctl(&["delete_vhost", "cli-v"]);
    assert_eq!(gone.status.code(), Some(65));
    assert_eq!(
        String::from_utf8_lossy(&gone.stderr),
        "minimqctl: error: Virtual host 'cli-v' does not exist\n"
    );
    assert_eq!(ok(&b.ctl(&["-q", "list_vhosts"])), "name\n/\n");
}

/// rabbitmqctl 3.10's `add_vhost` options and `trace_on` / `trace_off` output, as it
/// printed them on the reference node.
#[test]
fn minimqctl_adds_a_vhost_with_a_default_queue_type_and_switches_its_tracing() {
    let b = TestBroker::with_http();
    assert_eq!(
        ok(&b.ctl(&[
            "add_vhost",
            "qv",
            "--default-queue-type",
            "quorum",
            "--description",
            "dd",
            "--tags",
            "x,y"
        ])),
        "Adding vhost \"qv\" ...\n"
    );
    let bad = b.ctl(&["add_vhost", "bad", "--default-queue-type", "nosuch"]);
    assert_eq!(bad.status.code(), Some(69));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("invalid_queue_type"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
    assert_eq!(
        ok(&b.ctl(&["-q", "list_vhosts", "name", "default_queue_type", "tracing", "description", "tags"])),
        "name\tdefault_queue_type\ttracing\tdescription\ttags\n/\tundefined\tfalse\t\t[]\nqv\tquorum\tfalse\tdd\t[x, y]\n"
    );
    assert_eq!(
        ok(&b.ctl(&["trace_on", "-p", "qv"])),
        "Starting tracing for vhost \"qv\" ...\nTrace enabled for vhost qv\n"
    );
    assert_eq!(
        ok(&b.ctl(&[
            "-q",
            "list_vhosts",
            "name",
            "tracing",
            "description",
            "tags"
        ])),
        "name\ttracing\tdescription\ttags\n/\tfalse\t\t[]\nqv\ttrue\tdd\t[x, y]\n",
        "the description and tags stay"
    );
    assert_eq!(
        ok(&b.ctl(&["-q", "trace_off", "-p", "qv"])),
        "Trace disabled for vhost qv\n"
    );
    assert_eq!(
        ok(&b.ctl(&["-q", "list_vhosts", "name", "tracing"])),
        "name\ttracing\n/\tfalse\nqv\tfalse\n"
    );
    let missing = b.ctl(&["trace_on", "-p", "nov"]);
    assert_eq!(missing.status.code(), Some(65));
}

#[test]
fn minimqctl_sets_the_alarm_limits_at_run_time_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    let status = ok(&b.ctl(&["status"]));
    let node = status
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("Status of node "))
        .and_then(|l| l.strip_suffix(" ..."))
        .expect("status names the node")
        .to_string();
    let limits = || b.broker().state().alarms.snapshot();

    assert_eq!(
        ok(&b.ctl(&["set_disk_free_limit", "1000TB"])),
        format!("Setting disk free limit on {node} to 1000TB bytes ...\n")
    );
    assert_eq!(limits().disk_free_limit, 1_000_000_000_000_000);
    assert_eq!(
        ok(&b.ctl(&["set_disk_free_limit", "mem_relative", "1.5"])),
        format!("Setting disk free limit on {node} to 1.5 times the total RAM ...\n")
    );
    assert!(limits().disk_free_limit > 0);
    assert_eq!(
        ok(&b.ctl(&["set_vm_memory_high_watermark", "absolute", "2GB"])),
        format!("Setting memory threshold on {node} to 2GB bytes ...\n")
    );
    assert_eq!(limits().mem_limit, 2_000_000_000);
    assert_eq!(
        ok(&b.ctl(&["-q", "set_vm_memory_high_watermark", "0.4"])),
        ""
    );
    assert_ne!(limits().mem_limit, 2_000_000_000);

    // rabbitmqctl's argument validation: exit 65, nothing changed.
    let before = limits();
    let bad = b.ctl(&["set_vm_memory_high_watermark", "2"]);
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr)
        .contains("Bad argument: The threshold should be a fraction between 0.0 and 1.0"));
    let bad = b.ctl(&["set_disk_free_limit", "lots"]);
    assert_eq!(bad.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("Bad argument"));
    assert!(bad.stdout.is_empty());
    let after = limits();
    assert_eq!(
        (before.mem_limit, before.disk_free_limit),
        (after.mem_limit, after.disk_free_limit)
    );
}

#[test]
fn minimqctl_manages_users_and_permissions_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    assert_eq!(
        ok(&b.ctl(&["add_user", "tom", "secret"])),
        "Adding user \"tom\" ...\nDone. Don't forget to grant the user permissions to some virtual hosts! See 'rabbitmqctl help set_permissions' to learn more.\n"
    );
    let again = b.ctl(&["add_user", "tom", "secret"]);
    assert_eq!(again.status.code(), Some(70));
    assert!(String::from_utf8_lossy(&again.stderr).contains("User \"tom\" already exists"));
    assert_eq!(
        ok(&b.ctl(&["set_user_tags", "tom", "monitoring", "policymaker"])),
        "Setting tags for user \"tom\" to [monitoring, policymaker] ...\n"
    );
    assert_eq!(
        ok(&b.ctl(&["change_password", "tom", "s2"])),
        "Changing password for user \"tom\" ...\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_users"])),
        "Listing users ...\nuser\ttags\nguest\t[administrator]\ntom\t[monitoring, policymaker]\n"
    );
    // The new password works, with the tags kept: tom may read the API as a monitor.
    let as_tom = Command::new(CTL)
        .args([
            "--url",
            &b.http,
            "--user",
            "tom",
            "--password",
            "s2",
            "-q",
            "list_users",
        ])
        .output()
        .unwrap();
    assert_eq!(
        as_tom.status.code(),
        Some(69),
        "a monitor is not an administrator"
    );
    assert_eq!(
        ok(&b.ctl(&["set_permissions", "-p", "/", "tom", "^t", ".*", ""])),
        "Setting permissions for user \"tom\" in vhost \"/\" ...\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_permissions"])),
        "Listing permissions for vhost \"/\" ...\nuser\tconfigure\twrite\tread\nguest\t.*\t.*\t.*\ntom\t^t\t.*\t\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_user_permissions", "tom"])),
        "Listing permissions for user \"tom\" ...\nvhost\tconfigure\twrite\tread\n/\t^t\t.*\t\n"
    );
    assert_eq!(
        ok(&b.ctl(&["clear_permissions", "tom"])),
        "Clearing permissions for user \"tom\" in vhost \"/\" ...\n"
    );
    assert_eq!(
        ok(&b.ctl(&["list_user_permissions", "tom"])),
        "Listing permissions for user \"tom\" ...\n\n"
    );
    assert_eq!(
        ok(&b.ctl(&["delete_user", "tom"])),
        "Deleting user \"tom\" ...\n"
    );
    for args in [
        &["delete_user", "tom"][..],
        &["change_password", "tom", "x"][..],
    ] {
        let out = b.ctl(args);
        assert_eq!(out.status.code(), Some(67), "{args:?}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("User \"tom\" does not exist"));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&b.ctl(&["--formatter", "json", "list_users"]).stdout).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"user": "guest", "tags": ["administrator"]}])
    );
}

#[test]
fn minimqctl_exports_and_imports_definitions_as_rabbitmqctl() {
    let b = TestBroker::with_http();
    ok(&b.ctl(&["set_policy", "ttl", "^ttl-", r#"{"message-ttl":60000}"#]));
    let file = std::env::temp_dir().join(format!("minimqctl-defs-{}.json", std::process::id()));
    let path = file.display().to_string();
    assert_eq!(
        ok(&b.ctl(&["export_definitions", &path])),
        format!("Exporting definitions in JSON to a file at \"{path}\" ...\n")
    );
    let exported: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(exported["policies"][0]["name"], "ttl");
    let stdout: serde_json::Value =
        serde_json::from_slice(&b.ctl(&["export_definitions", "-"]).stdout).unwrap();
    assert_eq!(stdout, exported);
    // Into a second broker.
    let other = TestBroker::with_http();
    assert_eq!(
        ok(&other.ctl(&["import_definitions", &path])),
        format!("Importing definitions in JSON from a file at \"{path}\" ...\n")
    );
    assert!(ok(&other.ctl(&["-q", "list_policies"])).contains("/\tttl\t^ttl-\tall\t"));
    let missing = other.ctl(&["import_definitions", "/nonexistent/defs.json"]);
    assert_eq!(missing.status.code(), Some(65));
    let _ = std::fs::remove_file(&file);
}
