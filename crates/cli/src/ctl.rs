//! `minimqctl`: `rabbitmqctl`'s listing and queue commands, over the management HTTP API
//! (RabbitMQ's paths and JSON names), so it works against minimq and RabbitMQ alike.
//!
//! The output copies `rabbitmqctl` 3.10: an info line (`Listing queues for vhost / ...`),
//! a header row of column names, tab-separated rows; `--formatter json` prints
//! `rabbitmqctl`'s JSON array instead. This module holds the command logic and the
//! formatting (pure, unit-tested); `src/bin/minimqctl.rs` is the argument parsing.

use std::fmt::Write as _;
use std::time::Duration;

use serde_json::Value;

use crate::mgmt::{encode_segment, BaseUrl, Client, Response};

/// Exit status for bad usage (unknown command, column, option): `EX_USAGE`, as rabbitmqctl.
pub const EXIT_USAGE: i32 = 64;
/// Exit status for everything else (server unreachable, refused, not found):
/// `EX_UNAVAILABLE`, as rabbitmqctl.
pub const EXIT_UNAVAILABLE: i32 = 69;
/// rabbitmqctl's status for input it cannot read (`EX_DATAERR`).
pub const EXIT_DATA: i32 = 65;
/// rabbitmqctl's status for a user that does not exist (`EX_NOUSER`).
pub const EXIT_NO_USER: i32 = 67;
/// rabbitmqctl's status for a user that exists already (`EX_SOFTWARE`).
pub const EXIT_SOFTWARE: i32 = 70;

/// A failure: the one-line message and the exit status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CtlError {
    /// One line, without the `minimqctl: error: ` prefix.
    pub message: String,
    /// Process exit status.
    pub code: i32,
}

impl CtlError {
    /// A usage error (exit 64).
    pub fn usage(message: impl Into<String>) -> CtlError {
        CtlError {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    /// A runtime error (exit 69).
    pub fn unavailable(message: impl Into<String>) -> CtlError {
        CtlError {
            message: message.into(),
            code: EXIT_UNAVAILABLE,
        }
    }
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Formatter {
    /// Header row plus tab-separated rows (rabbitmqctl's default when piped).
    Table,
    /// A JSON array of objects, one per row, keys in column order.
    Json,
}

/// What a missing JSON field prints as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Missing {
    /// Counters: the management API leaves them out until it has stats; they are 0.
    Zero,
    /// Anything else: empty (null in JSON).
    Empty,
}

/// One column: its rabbitmqctl name, the JSON pointer into an API object, and what a
/// missing value means.
type Column = (&'static str, &'static str, Missing);

use Missing::{Empty, Zero};

const QUEUE_COLUMNS: &[Column] = &[
    ("name", "/name", Empty),
    ("vhost", "/vhost", Empty),
    ("durable", "/durable", Empty),
    ("auto_delete", "/auto_delete", Empty),
    ("exclusive", "/exclusive", Empty),
    ("arguments", "/arguments", Empty),
    ("policy", "/policy", Empty),
    ("exclusive_consumer_tag", "/exclusive_consumer_tag", Empty),
    ("messages", "/messages", Zero),
    ("messages_ready", "/messages_ready", Zero),
    ("messages_unacknowledged", "/messages_unacknowledged", Zero),
    ("messages_ram", "/messages_ram", Zero),
    ("messages_ready_ram", "/messages_ready_ram", Zero),
    (
        "messages_unacknowledged_ram",
        "/messages_unacknowledged_ram",
        Zero,
    ),
    ("messages_persistent", "/messages_persistent", Zero),
    ("messages_paged_out", "/messages_paged_out", Zero),
    ("message_bytes", "/message_bytes", Zero),
    ("message_bytes_ready", "/message_bytes_ready", Zero),
    (
        "message_bytes_unacknowledged",
        "/message_bytes_unacknowledged",
        Zero,
    ),
    ("message_bytes_ram", "/message_bytes_ram", Zero),
    (
        "message_bytes_persistent",
        "/message_bytes_persistent",
        Zero,
    ),
    ("head_message_timestamp", "/head_message_timestamp", Empty),
    ("consumers", "/consumers", Zero),
    ("consumer_utilisation", "/consumer_utilisation", Empty),
    ("consumer_capacity", "/consumer_capacity", Empty),
    ("memory", "/memory", Empty),
    ("state", "/state", Empty),
    ("type", "/type", Empty),
    ("node", "/node", Empty),
    ("leader", "/leader", Empty),
    ("members", "/members", Empty),
    ("online", "/online", Empty),
];

const CONNECTION_COLUMNS: &[Column] = &[
    ("name", "/name", Empty),
    ("user", "/user", Empty),
    ("vhost", "/vhost", Empty),
    ("host", "/host", Empty),
    ("port", "/port", Empty),
    ("peer_host", "/peer_host", Empty),
    ("peer_port", "/peer_port", Empty),
    ("ssl", "/ssl", Empty),
    ("protocol", "/protocol", Empty),
    ("auth_mechanism", "/auth_mechanism", Empty),
    ("state", "/state", Empty),
    ("channels", "/channels", Zero),
    ("channel_max", "/channel_max", Empty),
    ("frame_max", "/frame_max", Empty),
    ("timeout", "/timeout", Empty),
    ("client_properties", "/client_properties", Empty),
    ("connected_at", "/connected_at", Empty),
    ("recv_oct", "/recv_oct", Zero),
    ("recv_cnt", "/recv_cnt", Zero),
    ("send_oct", "/send_oct", Zero),
    ("send_cnt", "/send_cnt", Zero),
    ("send_pend", "/send_pend", Zero),
    ("type", "/type", Empty),
    ("node", "/node", Empty),
];

/// `pid` has no equivalent over HTTP; it shows the channel's name, which identifies it
/// the same way.
const CHANNEL_COLUMNS: &[Column] = &[
    ("pid", "/name", Empty),
    ("name", "/name", Empty),
    ("connection", "/connection_details/name", Empty),
    ("number", "/number", Empty),
    ("user", "/user", Empty),
    ("vhost", "/vhost", Empty),
    ("transactional", "/transactional", Empty),
    ("confirm", "/confirm", Empty),
    ("consumer_count", "/consumer_count", Zero),
    ("messages_unacknowledged", "/messages_unacknowledged", Zero),
    ("messages_uncommitted", "/messages_uncommitted", Zero),
    ("acks_uncommitted", "/acks_uncommitted", Zero),
    ("messages_unconfirmed", "/messages_unconfirmed", Zero),
    ("prefetch_count", "/prefetch_count", Zero),
    ("global_prefetch_count", "/global_prefetch_count", Zero),
    ("state", "/state", Empty),
    ("node", "/node", Empty),
];

/// `channel_pid` shows the channel's name (see [`CHANNEL_COLUMNS`]).
const CONSUMER_COLUMNS: &[Column] = &[
    ("queue_name", "/queue/name", Empty),
    ("channel_pid", "/channel_details/name", Empty),
    ("consumer_tag", "/consumer_tag", Empty),
    ("ack_required", "/ack_required", Empty),
    ("exclusive", "/exclusive", Empty),
    ("prefetch_count", "/prefetch_count", Zero),
    ("active", "/active", Empty),
    ("activity_status", "/activity_status", Empty),
    ("arguments", "/arguments", Empty),
];

const POLICY_COLUMNS: &[Column] = &[
    ("vhost", "/vhost", Empty),
    ("name", "/name", Empty),
    ("pattern", "/pattern", Empty),
    ("apply-to", "/apply-to", Empty),
    ("definition", "/definition", Empty),
    ("priority", "/priority", Zero),
];

/// `list_vhosts`'s columns (rabbitmqctl 3.10's info keys that the API answers).
const VHOST_COLUMNS: &[Column] = &[
    ("name", "/name", Empty),
    ("description", "/description", Empty),
    ("tags", "/tags", Empty),
    ("default_queue_type", "/default_queue_type", Empty),
    ("metadata", "/metadata", Empty),
    ("tracing", "/tracing", Empty),
    ("cluster_state", "/cluster_state", Empty),
];

/// The things `list_*` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    /// `list_queues`.
    Queues,
    /// `list_connections`.
    Connections,
    /// `list_channels`.
    Channels,
    /// `list_consumers`.
    Consumers,
    /// `list_policies`.
    Policies,
    /// `list_operator_policies`.
    OperatorPolicies,
    /// `list_vhosts` (not filtered by `-p`: vhosts have no vhost).
    Vhosts,
}

impl Listing {
    fn columns(self) -> &'static [Column] {
        match self {
            Listing::Queues => QUEUE_COLUMNS,
            Listing::Connections => CONNECTION_COLUMNS,
            Listing::Channels => CHANNEL_COLUMNS,
            Listing::Consumers => CONSUMER_COLUMNS,
            Listing::Policies | Listing::OperatorPolicies => POLICY_COLUMNS,
            Listing::Vhosts => VHOST_COLUMNS,
        }
    }

    /// The columns rabbitmqctl shows when none are named.
    pub fn default_columns(self) -> &'static [&'static str] {
        match self {
            Listing::Queues => &["name", "messages"],
            Listing::Connections => &["user", "peer_host", "peer_port", "state"],
            Listing::Channels => &["pid", "user", "consumer_count", "messages_unacknowledged"],
            Listing::Consumers => &[
                "queue_name",
                "channel_pid",
                "consumer_tag",
                "ack_required",
                "prefetch_count",
                "active",
                "arguments",
            ],
            Listing::Policies | Listing::OperatorPolicies => &[
                "vhost",
                "name",
                "pattern",
                "apply-to",
                "definition",
                "priority",
            ],
            Listing::Vhosts => &["name"],
        }
    }

    /// Every column this listing knows.
    pub fn known_columns(self) -> Vec<&'static str> {
        self.columns().iter().map(|c| c.0).collect()
    }

    /// The API path listing these objects.
    pub fn path(self) -> &'static str {
        match self {
            Listing::Queues => "/api/queues",
            Listing::Connections => "/api/connections",
            Listing::Channels => "/api/channels",
            Listing::Consumers => "/api/consumers",
            Listing::Policies => "/api/policies",
            Listing::OperatorPolicies => "/api/operator-policies",
            Listing::Vhosts => "/api/vhosts",
        }
    }

    /// The JSON pointer of an object's vhost, to keep the asked-for vhost's objects.
    fn vhost_pointer(self) -> &'static str {
        match self {
            Listing::Consumers => "/queue/vhost",
            _ => "/vhost",
        }
    }

    /// The info lines rabbitmqctl prints before a table (not in JSON).
    pub fn banner(self, vhost: &str, timeout: Duration) -> String {
        match self {
            Listing::Queues => format!(
                "Timeout: {:.1} seconds ...\nListing queues for vhost {vhost} ...",
                timeout.as_secs_f64()
            ),
            Listing::Connections => "Listing connections ...".to_string(),
            Listing::Channels => "Listing channels ...".to_string(),
            Listing::Consumers => format!("Listing consumers in vhost {vhost} ..."),
            Listing::Policies => format!("Listing policies for vhost \"{vhost}\" ..."),
            Listing::OperatorPolicies => {
                format!("Listing operator policy overrides for vhost \"{vhost}\" ...")
            }
            Listing::Vhosts => "Listing vhosts ...".to_string(),
        }
    }
}

/// The columns to show: those named (checked), or the defaults. Unknown names give
/// rabbitmqctl's error, `Info key(s) a,b are not supported`.
pub fn select_columns(listing: Listing, names: &[String]) -> Result<Vec<&'static str>, CtlError> {
    if names.is_empty() {
        return Ok(listing.default_columns().to_vec());
    }
    let known = listing.columns();
    let mut unknown = Vec::new();
    let mut chosen = Vec::new();
    // rabbitmqctl also accepts comma-separated names.
    for name in names
        .iter()
        .flat_map(|n| n.split(','))
        .filter(|n| !n.is_empty())
    {
        match known.iter().find(|c| c.0 == name) {
            Some(c) => chosen.push(c.0),
            None => unknown.push(name.to_string()),
        }
    }
    if !unknown.is_empty() {
        return Err(CtlError::usage(format!(
            "Info key(s) {} are not supported (known: {})",
            unknown.join(","),
            listing.known_columns().join(" ")
        )));
    }
    Ok(chosen)
}

/// One value of one row: the API object's field, or the default for a missing one.
fn cell(listing: Listing, object: &Value, column: &str) -> Value {
    let (_, pointer, missing) = listing
        .columns()
        .iter()
        .find(|c| c.0 == column)
        .copied()
        .unwrap_or((column, "", Empty));
    match object.pointer(pointer) {
        // rabbitmqctl shows a policy's definition as its JSON text, in tables and JSON.
        Some(v @ Value::Object(_))
            if matches!(listing, Listing::Policies | Listing::OperatorPolicies) =>
        {
            Value::String(v.to_string())
        }
        Some(Value::Null) | None if missing == Zero => Value::from(0),
        Some(v) => v.clone(),
        None => Value::Null,
    }
}

/// A value as rabbitmqctl's table shows it: strings bare, tables as Erlang proplists
/// (`[{"x-queue-type","quorum"}]`), lists as `[a,b]`, null as nothing.
pub fn table_value(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => nested_value(other),
    }
}

fn nested_value(v: &Value) -> String {
    match v {
        Value::Null => "undefined".to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{:?}", s),
        Value::Array(items) => format!(
            "[{}]",
            items.iter().map(nested_value).collect::<Vec<_>>().join(",")
        ),
        Value::Object(map) => format!(
            "[{}]",
            map.iter()
                .map(|(k, v)| format!("{{{:?},{}}}", k, nested_value(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// An AMQP table as rabbitmqctl's JSON shows it: `[["key","type",value], ...]`.
fn typed_table(v: &Value) -> Value {
    match v {
        Value::Object(map) => Value::Array(
            map.iter()
                .map(|(k, v)| {
                    let (kind, value) = match v {
                        Value::String(_) => ("longstr", v.clone()),
                        Value::Bool(_) => ("bool", v.clone()),
                        Value::Number(n) if n.is_f64() => ("double", v.clone()),
                        Value::Number(_) => ("long", v.clone()),
                        Value::Object(_) => ("table", typed_table(v)),
                        Value::Array(_) => ("array", v.clone()),
                        Value::Null => ("void", Value::Null),
                    };
                    Value::Array(vec![Value::from(k.as_str()), Value::from(kind), value])
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The rows of a listing: the API objects of `vhost` (objects without a vhost are kept),
/// each cut down to `columns`.
pub fn rows(listing: Listing, objects: &[Value], vhost: &str, columns: &[&str]) -> Vec<Vec<Value>> {
    objects
        .iter()
        .filter(|o| match o.pointer(listing.vhost_pointer()) {
            Some(Value::String(v)) => v == vhost,
            _ => true,
        })
        .map(|o| columns.iter().map(|c| cell(listing, o, c)).collect())
        .collect()
}

/// Formats a listing the way rabbitmqctl does.
///
/// Table: the banner (unless `quiet`), then, if there are rows, the header row (unless
/// `no_headers`) and one tab-separated line per row. JSON: `[`, one object per line
/// (`,` leading every line after the first), `]`.
pub fn format_listing(
    listing: Listing,
    columns: &[&str],
    rows: &[Vec<Value>],
    formatter: Formatter,
    banner: Option<&str>,
    no_headers: bool,
) -> String {
    let mut out = String::new();
    match formatter {
        Formatter::Table => {
            if let Some(banner) = banner {
                out.push_str(banner);
                out.push('\n');
            }
            if !rows.is_empty() && !no_headers {
                out.push_str(&columns.join("\t"));
                out.push('\n');
            }
            for row in rows {
                let cells: Vec<String> = columns
                    .iter()
                    .zip(row)
                    .map(|(column, v)| match (*column, v) {
                        // rabbitmqctl's `[monitoring, policymaker]`.
                        ("tags", Value::Array(tags)) => format!(
                            "[{}]",
                            tags.iter().map(table_value).collect::<Vec<_>>().join(", ")
                        ),
                        _ => table_value(v),
                    })
                    .collect();
                out.push_str(&cells.join("\t"));
                out.push('\n');
            }
        }
        Formatter::Json => {
            out.push_str("[\n");
            for (i, row) in rows.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push('{');
                for (j, (column, value)) in columns.iter().zip(row).enumerate() {
                    if j > 0 {
                        out.push(',');
                    }
                    let value = if *column == "arguments" {
                        typed_table(value)
                    } else {
                        value.clone()
                    };
                    let _ = write!(
                        out,
                        "{}:{}",
                        Value::from(*column),
                        serde_json::to_string(&value).unwrap_or_default()
                    );
                }
                out.push_str("}\n");
            }
            let _ = listing;
            out.push_str("]\n");
        }
    }
    out
}

/// `status` as text, in the shape of rabbitmqctl's sections, from `/api/overview`.
pub fn format_status(overview: &Value) -> String {
    let s = |p: &str| overview.pointer(p).map(table_value).unwrap_or_default();
    let n = |p: &str| {
        overview
            .pointer(p)
            .and_then(Value::as_u64)
            .unwrap_or(0)
            .to_string()
    };
    let node = s("/node");
    let product = match s("/product_name") {
        p if p.is_empty() => "RabbitMQ".to_string(),
        p => p,
    };
    let version = match s("/product_version") {
        v if v.is_empty() => s("/rabbitmq_version"),
        v => v,
    };
    let mut out = String::new();
    let _ = writeln!(out, "Status of node {node} ...");
    let _ = writeln!(out, "Runtime\n");
    let _ = writeln!(out, "{product} version: {version}");
    let _ = writeln!(out, "Node name: {node}");
    let erlang = s("/erlang_full_version");
    if !erlang.is_empty() {
        let _ = writeln!(out, "Erlang configuration: {erlang}");
    }
    let _ = writeln!(out, "\nTotals\n");
    let _ = writeln!(out, "Connection count: {}", n("/object_totals/connections"));
    let _ = writeln!(out, "Channel count: {}", n("/object_totals/channels"));
    let _ = writeln!(out, "Queue count: {}", n("/object_totals/queues"));
    let _ = writeln!(out, "Consumer count: {}", n("/object_totals/consumers"));
    let _ = writeln!(
        out,
        "Message count: {} (ready: {}, unacknowledged: {})",
        n("/queue_totals/messages"),
        n("/queue_totals/messages_ready"),
        n("/queue_totals/messages_unacknowledged")
    );
    let _ = writeln!(out, "\nListeners\n");
    for l in overview
        .get("listeners")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let protocol = l.get("protocol").map(table_value).unwrap_or_default();
        let purpose = match protocol.as_str() {
            "amqp" => "AMQP 0-9-1",
            "http" => "HTTP API",
            "clustering" => "inter-node and CLI tool communication",
            _ => "",
        };
        let ip = l.get("ip_address").map(table_value).unwrap_or_default();
        let port = l.get("port").map(table_value).unwrap_or_default();
        let _ = writeln!(
            out,
            "Interface: {}, port: {port}, protocol: {protocol}, purpose: {purpose}",
            if ip.contains(':') {
                format!("[{ip}]")
            } else {
                ip
            }
        );
    }
    out
}

/// Turns a non-2xx response into a one-line error.
pub fn http_error(resp: &Response, what: &str, user: &str) -> CtlError {
    if resp.status == 401 {
        return CtlError::unavailable(format!(
            "authentication failed for user '{user}' (HTTP 401 {})",
            resp.reason
        ));
    }
    let detail = serde_json::from_slice::<Value>(&resp.body)
        .ok()
        .and_then(|v| {
            let reason = v.get("reason").and_then(Value::as_str).map(str::to_string);
            let error = v.get("error").and_then(Value::as_str).map(str::to_string);
            reason.or(error)
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&resp.body).trim().to_string());
    let detail = crate::one_line(&detail);
    CtlError::unavailable(if detail.is_empty() {
        format!("{what}: HTTP {} {}", resp.status, resp.reason)
    } else {
        format!("{what}: HTTP {} {}: {detail}", resp.status, resp.reason)
    })
}

/// A command of minimqctl, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `list_queues` / `list_connections` / `list_channels` / `list_consumers`.
    List(Listing, Vec<String>),
    /// `purge_queue NAME`.
    PurgeQueue(String),
    /// `delete_queue NAME [--if-empty] [--if-unused]`.
    DeleteQueue {
        /// Queue name.
        name: String,
        /// Only if it has no messages.
        if_empty: bool,
        /// Only if it has no consumers.
        if_unused: bool,
    },
    /// `status`.
    Status,
    /// `set_disk_free_limit DISK_LIMIT | mem_relative FRACTION`.
    SetDiskFreeLimit(NodeLimit),
    /// `set_vm_memory_high_watermark FRACTION | absolute VALUE`.
    SetVmMemoryHighWatermark(NodeLimit),
    /// `set_policy [--priority N] [--apply-to KIND] NAME PATTERN DEFINITION`.
    SetPolicy {
        /// Policy name.
        name: String,
        /// Regular expression on object names.
        pattern: String,
        /// The definition, JSON text.
        definition: String,
        /// Priority (0 when not given).
        priority: i64,
        /// `queues`, `exchanges` or `all`.
        apply_to: String,
    },
    /// `clear_policy NAME`.
    ClearPolicy(String),
    /// `set_operator_policy [--priority N] [--apply-to KIND] NAME PATTERN DEFINITION`.
    SetOperatorPolicy {
        /// Policy name.
        name: String,
        /// Regular expression on object names.
        pattern: String,
        /// The definition, JSON text.
        definition: String,
        /// Priority (0 when not given).
        priority: i64,
        /// `queues`, `exchanges` or `all`.
        apply_to: String,
    },
    /// `clear_operator_policy NAME`.
    ClearOperatorPolicy(String),
    /// `add_user NAME PASSWORD`.
    AddUser(String, String),
    /// `delete_user NAME`.
    DeleteUser(String),
    /// `change_password NAME PASSWORD`.
    ChangePassword(String, String),
    /// `set_user_tags NAME TAG...`.
    SetUserTags(String, Vec<String>),
    /// `list_users`.
    ListUsers,
    /// `set_permissions [-p VHOST] USER CONF WRITE READ`.
    SetPermissions {
        /// The user.
        user: String,
        /// Configure pattern.
        configure: String,
        /// Write pattern.
        write: String,
        /// Read pattern.
        read: String,
    },
    /// `clear_permissions [-p VHOST] USER`.
    ClearPermissions(String),
    /// `list_permissions [-p VHOST]`.
    ListPermissions,
    /// `list_user_permissions USER`.
    ListUserPermissions(String),
    /// `export_definitions FILE|-`.
    ExportDefinitions(String),
    /// `import_definitions FILE|-` (with `-`, the definitions are read from stdin).
    ImportDefinitions(String),
    /// `set_vhost_limits DEFINITION`: replaces the vhost's limits.
    SetVhostLimits(String),
    /// `clear_vhost_limits`.
    ClearVhostLimits,
    /// `list_vhost_limits`.
    ListVhostLimits,
    /// `add_vhost NAME [--description D] [--tags T] [--default-queue-type TYPE]`:
    /// nothing changes if it exists (exit 0, as rabbitmqctl).
    AddVhost {
        /// Vhost name.
        name: String,
        /// Free text.
        description: Option<String>,
        /// Comma-separated tags.
        tags: Option<String>,
        /// `classic` or `quorum`: the type of its queues declared without one.
        default_queue_type: Option<String>,
    },
    /// `trace_on` (true) or `trace_off` (false) for the vhost (`-p`).
    Trace(bool),
    /// `delete_vhost NAME`.
    DeleteVhost(String),
}

/// A node's alarm limit as rabbitmqctl takes it: an amount, or a fraction (of memory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeLimit {
    /// A size (`50MB`, `2GiB`, `1000000`), as the server parses it.
    Size(String),
    /// A fraction: of the memory for the watermark, times the memory for the disk limit.
    Fraction(String),
}

impl NodeLimit {
    /// `set_disk_free_limit`'s arguments: `DISK_LIMIT` or `mem_relative FRACTION`.
    pub fn disk(args: &[String]) -> Result<NodeLimit, CtlError> {
        match args {
            [size] if size != "mem_relative" => Ok(NodeLimit::Size(size.clone())),
            [word, f] if word == "mem_relative" => Ok(NodeLimit::Fraction(f.clone())),
            _ => Err(bad_argument(
                "set_disk_free_limit <disk_limit> | mem_relative <fraction>",
            )),
        }
    }

    /// `set_vm_memory_high_watermark`'s arguments: `FRACTION` or `absolute VALUE`.
    pub fn memory(args: &[String]) -> Result<NodeLimit, CtlError> {
        match args {
            [word, size] if word == "absolute" => Ok(NodeLimit::Size(size.clone())),
            [f] if f != "absolute" => match f.trim().parse::<f64>() {
                Ok(x) if (0.0..=1.0).contains(&x) => Ok(NodeLimit::Fraction(f.clone())),
                _ => Err(CtlError {
                    message: "Bad argument: The threshold should be a fraction between 0.0 and 1.0"
                        .into(),
                    code: EXIT_DATA,
                }),
            },
            _ => Err(bad_argument(
                "set_vm_memory_high_watermark <fraction> | absolute <value>",
            )),
        }
    }
}

/// rabbitmqctl's argument validation failure (exit 65).
fn bad_argument(usage: &str) -> CtlError {
    CtlError {
        message: format!("Bad argument. Usage: {usage}"),
        code: EXIT_DATA,
    }
}

/// The limits a vhost can have.
const VHOST_LIMITS: &[&str] = &["max-connections", "max-queues"];

/// Everything a run needs besides the command.
#[derive(Debug, Clone)]
pub struct Options {
    /// Management API base URL.
    pub url: String,
    /// Basic-auth user.
    pub user: String,
    /// Basic-auth password.
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// Output format.
    pub formatter: Formatter,
    /// No info lines.
    pub quiet: bool,
    /// No header row.
    pub no_table_headers: bool,
    /// Limit on each HTTP request.
    pub timeout: Duration,
    /// CA (PEM) an `https://` server's certificate must chain to, instead of the
    /// system's trust store.
    pub ca_cert: Option<std::path::PathBuf>,
}

/// Runs one command; returns what to print on stdout.
pub fn run(options: &Options, command: &Command) -> Result<String, CtlError> {
    // Check the arguments before talking to the server.
    if let Command::List(listing, names) = command {
        select_columns(*listing, names)?;
    }
    let base = BaseUrl::parse(&options.url).map_err(CtlError::usage)?;
    let client = Client::new(
        base,
        &options.user,
        &options.password,
        options.timeout,
        options.ca_cert.as_deref(),
    )
    .map_err(CtlError::usage)?;
    let vhost = options.vhost.as_str();
    let get = |path: String| -> Result<Response, CtlError> {
        client.request("GET", &path).map_err(CtlError::unavailable)
    };
    // A PUT that must succeed: any answer but 2xx is the error of doing `what`.
    let put_ok = |path: &str, body: &[u8], what: &str| -> Result<(), CtlError> {
        let resp = client
            .request_json("PUT", path, body)
            .map_err(CtlError::unavailable)?;
        if !(200..300).contains(&resp.status) {
            return Err(http_error(&resp, what, &options.user));
        }
        Ok(())
    };
    let parse = |resp: &Response| -> Result<Value, CtlError> {
        serde_json::from_slice(&resp.body).map_err(|e| {
            CtlError::unavailable(format!(
                "the server at {} did not answer with JSON ({e})",
                options.url
            ))
        })
    };

    match command {
        Command::List(listing, names) => {
            let columns = select_columns(*listing, names)?;
            let resp = get(listing.path().to_string())?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(
                    &resp,
                    &format!("GET {}", listing.path()),
                    &options.user,
                ));
            }
            let objects = match parse(&resp)? {
                Value::Array(items) => items,
                _ => {
                    return Err(CtlError::unavailable(format!(
                        "GET {}: expected a JSON array",
                        listing.path()
                    )))
                }
            };
            let rows = rows(*listing, &objects, vhost, &columns);
            let banner = listing.banner(vhost, options.timeout);
            let banner = (!options.quiet).then_some(banner.as_str());
            Ok(format_listing(
                *listing,
                &columns,
                &rows,
                options.formatter,
                banner,
                options.no_table_headers,
            ))
        }
        Command::PurgeQueue(name) => {
            let path = format!(
                "/api/queues/{}/{}/contents",
                encode_segment(vhost),
                encode_segment(name)
            );
            let resp = client
                .request("DELETE", &path)
                .map_err(CtlError::unavailable)?;
            match resp.status {
                200..=299 => {}
                404 => return Err(not_found(name, vhost)),
                _ => {
                    return Err(http_error(
                        &resp,
                        &format!("purging queue '{name}'"),
                        &options.user,
                    ))
                }
            }
            Ok(info(
                options,
                &format!("Purging queue '{name}' in vhost '{vhost}' ..."),
            ))
        }
        Command::DeleteQueue {
            name,
            if_empty,
            if_unused,
        } => {
            let path = format!(
                "/api/queues/{}/{}",
                encode_segment(vhost),
                encode_segment(name)
            );
            let resp = get(path.clone())?;
            match resp.status {
                200..=299 => {}
                404 => return Err(not_found(name, vhost)),
                _ => {
                    return Err(http_error(
                        &resp,
                        &format!("GET queue '{name}'"),
                        &options.user,
                    ))
                }
            }
            let queue = parse(&resp)?;
            let ready = queue
                .get("messages_ready")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let mut query = Vec::new();
            if *if_empty {
                query.push("if-empty=true");
            }
            if *if_unused {
                query.push("if-unused=true");
            }
            let target = if query.is_empty() {
                path
            } else {
                format!("{path}?{}", query.join("&"))
            };
            let resp = client
                .request("DELETE", &target)
                .map_err(CtlError::unavailable)?;
            match resp.status {
                200..=299 => {}
                404 => return Err(not_found(name, vhost)),
                _ => {
                    return Err(http_error(
                        &resp,
                        &format!("deleting queue '{name}'"),
                        &options.user,
                    ))
                }
            }
            let mut out = info(
                options,
                &format!("Deleting queue '{name}' on vhost '{vhost}' ..."),
            );
            let _ = writeln!(
                out,
                "Queue was successfully deleted with {ready} ready messages"
            );
            Ok(out)
        }
        Command::SetPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        }
        | Command::SetOperatorPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        } => {
            let (what, base) = match command {
                Command::SetOperatorPolicy { .. } => {
                    ("operator policy override", "/api/operator-policies")
                }
                _ => ("policy", "/api/policies"),
            };
            let out = info(
                options,
                &format!(
                    "Setting {what} \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."
                ),
            );
            let definition: Value = serde_json::from_str(definition).map_err(|_| {
                CtlError::unavailable("JSON decoding error. Reason: badarg".to_string())
            })?;
            let body = serde_json::json!({
                "pattern": pattern,
                "definition": definition,
                "priority": priority,
                "apply-to": apply_to,
            });
            let path = format!("{base}/{}/{}", encode_segment(vhost), encode_segment(name));
            put_ok(
                &path,
                body.to_string().as_bytes(),
                &format!("setting policy '{name}'"),
            )?;
            Ok(out)
        }
        Command::ClearPolicy(name) | Command::ClearOperatorPolicy(name) => {
            let (what, base) = match command {
                Command::ClearOperatorPolicy(_) => ("operator policy", "/api/operator-policies"),
                _ => ("policy", "/api/policies"),
            };
            let out = info(
                options,
                &format!("Clearing {what} \"{name}\" on vhost \"{vhost}\" ..."),
            );
            let path = format!("{base}/{}/{}", encode_segment(vhost), encode_segment(name));
            let resp = client
                .request("DELETE", &path)
                .map_err(CtlError::unavailable)?;
            match resp.status {
                200..=299 => Ok(out),
                404 => Err(CtlError::unavailable("Parameter does not exist")),
                _ => Err(http_error(
                    &resp,
                    &format!("clearing policy '{name}'"),
                    &options.user,
                )),
            }
        }
        Command::AddVhost {
            name,
            description,
            tags,
            default_queue_type,
        } => {
            let out = info(options, &format!("Adding vhost \"{name}\" ..."));
            let path = format!("/api/vhosts/{}", encode_segment(name));
            // rabbitmqctl leaves an existing vhost as it is; a PUT would reset its
            // description and tags.
            if get(path.clone())?.status == 200 {
                return Ok(out);
            }
            let mut body = serde_json::Map::new();
            for (key, value) in [
                ("description", description),
                ("tags", tags),
                // The key RabbitMQ 3.10's management API reads.
                ("defaultqueuetype", default_queue_type),
            ] {
                if let Some(v) = value {
                    body.insert(key.into(), Value::from(v.as_str()));
                }
            }
            put_ok(
                &path,
                Value::Object(body).to_string().as_bytes(),
                &format!("adding vhost '{name}'"),
            )?;
            Ok(out)
        }
        Command::Trace(on) => {
            let (verb, done) = if *on {
                ("Starting", "enabled")
            } else {
                ("Stopping", "disabled")
            };
            let mut out = info(
                options,
                &format!("{verb} tracing for vhost \"{vhost}\" ..."),
            );
            let path = format!("/api/vhosts/{}", encode_segment(vhost));
            let resp = get(path.clone())?;
            if resp.status == 404 {
                return Err(CtlError {
                    message: format!("Virtual host '{vhost}' does not exist"),
                    code: EXIT_DATA,
                });
            }
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "reading the vhost", &options.user));
            }
            // The management API switches tracing with a vhost PUT, which also sets the
            // description and tags: they are sent back as they are.
            let current = parse(&resp)?;
            let body = serde_json::json!({
                "description": current.get("description").cloned().unwrap_or(Value::Null),
                "tags": current.get("tags").cloned().unwrap_or(Value::Null),
                "tracing": on,
            });
            put_ok(
                &path,
                body.to_string().as_bytes(),
                &format!("switching tracing for vhost '{vhost}'"),
            )?;
            // rabbitmqctl prints this result line even with --quiet.
            let _ = writeln!(out, "Trace {done} for vhost {vhost}");
            Ok(out)
        }
        Command::DeleteVhost(name) => {
            let out = info(options, &format!("Deleting vhost \"{name}\" ..."));
            let path = format!("/api/vhosts/{}", encode_segment(name));
            let resp = client
                .request("DELETE", &path)
                .map_err(CtlError::unavailable)?;
            match resp.status {
                200..=299 => Ok(out),
                // rabbitmqctl's text and EX_DATAERR.
                404 => Err(CtlError {
                    message: format!("Virtual host '{name}' does not exist"),
                    code: EXIT_DATA,
                }),
                _ => Err(http_error(
                    &resp,
                    &format!("deleting vhost '{name}'"),
                    &options.user,
                )),
            }
        }
        Command::AddUser(name, password) => {
            let out = info(options, &format!("Adding user \"{name}\" ..."));
            let path = format!("/api/users/{}", encode_segment(name));
            if get(path.clone())?.status == 200 {
                return Err(CtlError {
                    message: format!("User \"{name}\" already exists"),
                    code: EXIT_SOFTWARE,
                });
            }
            let body = serde_json::json!({"password": password, "tags": ""}).to_string();
            put_ok(&path, body.as_bytes(), &format!("adding user '{name}'"))?;
            let mut out = out;
            if !options.quiet && options.formatter == Formatter::Table {
                out.push_str("Done. Don't forget to grant the user permissions to some virtual hosts! See 'rabbitmqctl help set_permissions' to learn more.\n");
            }
            Ok(out)
        }
        Command::DeleteUser(name) => {
            let out = info(options, &format!("Deleting user \"{name}\" ..."));
            let path = format!("/api/users/{}", encode_segment(name));
            let resp = client
                .request("DELETE", &path)
                .map_err(CtlError::unavailable)?;
            match resp.status {
                200..=299 => Ok(out),
                404 => Err(no_user(name)),
                _ => Err(http_error(
                    &resp,
                    &format!("deleting user '{name}'"),
                    &options.user,
                )),
            }
        }
        Command::ChangePassword(name, _) | Command::SetUserTags(name, _) => {
            let path = format!("/api/users/{}", encode_segment(name));
            let (out, body) = match command {
                Command::ChangePassword(_, password) => (
                    info(
                        options,
                        &format!("Changing password for user \"{name}\" ..."),
                    ),
                    Some(password),
                ),
                Command::SetUserTags(_, tags) => (
                    info(
                        options,
                        &format!(
                            "Setting tags for user \"{name}\" to [{}] ...",
                            tags.join(", ")
                        ),
                    ),
                    None,
                ),
                _ => (String::new(), None),
            };
            let resp = get(path.clone())?;
            if resp.status == 404 {
                return Err(no_user(name));
            }
            if !(200..300).contains(&resp.status) {
                return Err(http_error(
                    &resp,
                    &format!("reading user '{name}'"),
                    &options.user,
                ));
            }
            let current = parse(&resp)?;
            let new = match (command, body) {
                (_, Some(password)) => serde_json::json!({
                    "password": password,
                    "tags": current.get("tags").cloned().unwrap_or(Value::Array(vec![])),
                }),
                (Command::SetUserTags(_, tags), None) => serde_json::json!({
                    "password_hash": current.get("password_hash").cloned().unwrap_or(Value::Null),
                    "hashing_algorithm": current.get("hashing_algorithm").cloned().unwrap_or(Value::Null),
                    "tags": tags,
                }),
                _ => Value::Null,
            };
            put_ok(
                &path,
                new.to_string().as_bytes(),
                &format!("changing user '{name}'"),
            )?;
            Ok(out)
        }
        Command::ListUsers => {
            let resp = get("/api/users".to_string())?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "listing users", &options.user));
            }
            let rows: Vec<Vec<Value>> = match parse(&resp)? {
                Value::Array(users) => users
                    .iter()
                    .map(|u| {
                        vec![
                            u.get("name").cloned().unwrap_or(Value::Null),
                            u.get("tags").cloned().unwrap_or(Value::Array(vec![])),
                        ]
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let banner = (!options.quiet).then_some("Listing users ...");
            Ok(format_listing(
                Listing::Policies,
                &["user", "tags"],
                &rows,
                options.formatter,
                banner,
                options.no_table_headers,
            ))
        }
        Command::SetPermissions {
            user,
            configure,
            write,
            read,
        } => {
            let out = info(
                options,
                &format!("Setting permissions for user \"{user}\" in vhost \"{vhost}\" ..."),
            );
            let path = format!(
                "/api/permissions/{}/{}",
                encode_segment(vhost),
                encode_segment(user)
            );
            let body = serde_json::json!({"configure": configure, "write": write, "read": read})
                .to_string();
            put_ok(
                &path,
                body.as_bytes(),
                &format!("setting permissions for user '{user}'"),
            )?;
            Ok(out)
        }
        Command::ClearPermissions(user) => {
            let out = info(
                options,
                &format!("Clearing permissions for user \"{user}\" in vhost \"{vhost}\" ..."),
            );
            let path = format!(
                "/api/permissions/{}/{}",
                encode_segment(vhost),
                encode_segment(user)
            );
            let resp = client
                .request("DELETE", &path)
                .map_err(CtlError::unavailable)?;
            // RabbitMQ's clear_permissions succeeds when there were none.
            if !(200..300).contains(&resp.status) && resp.status != 404 {
                return Err(http_error(
                    &resp,
                    &format!("clearing permissions for user '{user}'"),
                    &options.user,
                ));
            }
            Ok(out)
        }
        Command::ListPermissions | Command::ListUserPermissions(_) => {
            let (path, banner, first) = match command {
                Command::ListUserPermissions(user) => (
                    format!("/api/users/{}/permissions", encode_segment(user)),
                    format!("Listing permissions for user \"{user}\" ..."),
                    "vhost",
                ),
                _ => (
                    format!("/api/vhosts/{}/permissions", encode_segment(vhost)),
                    format!("Listing permissions for vhost \"{vhost}\" ..."),
                    "user",
                ),
            };
            let resp = get(path)?;
            if let Command::ListUserPermissions(user) = command {
                if resp.status == 404 {
                    return Err(no_user(user));
                }
            }
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "listing permissions", &options.user));
            }
            let columns = [first, "configure", "write", "read"];
            let rows: Vec<Vec<Value>> = match parse(&resp)? {
                Value::Array(list) => list
                    .iter()
                    .map(|p| {
                        columns
                            .iter()
                            .map(|c| p.get(*c).cloned().unwrap_or(Value::Null))
                            .collect()
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let banner = (!options.quiet).then_some(banner.as_str());
            let mut out = format_listing(
                Listing::Policies,
                &columns,
                &rows,
                options.formatter,
                banner,
                options.no_table_headers,
            );
            if rows.is_empty() && options.formatter == Formatter::Table {
                out.push('\n');
            }
            Ok(out)
        }
        Command::ExportDefinitions(target) => {
            let resp = get("/api/definitions".to_string())?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "exporting definitions", &options.user));
            }
            if target == "-" {
                return Ok(format!("{}\n", String::from_utf8_lossy(&resp.body)));
            }
            let out = info(
                options,
                &format!("Exporting definitions in JSON to a file at \"{target}\" ..."),
            );
            std::fs::write(target, &resp.body)
                .map_err(|e| CtlError::unavailable(format!("{target}: {e}")))?;
            Ok(out)
        }
        Command::ImportDefinitions(source) => {
            let body = if source == "-" {
                let mut raw = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut raw)
                    .map_err(|e| CtlError::unavailable(format!("stdin: {e}")))?;
                raw
            } else {
                std::fs::read(source).map_err(|_| CtlError {
                    message: format!("Bad argument: File {source} does not exist"),
                    code: EXIT_DATA,
                })?
            };
            let out = info(
                options,
                &format!("Importing definitions in JSON from a file at \"{source}\" ..."),
            );
            let resp = client
                .request_json("POST", "/api/definitions", &body)
                .map_err(CtlError::unavailable)?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "importing definitions", &options.user));
            }
            Ok(out)
        }
        Command::SetVhostLimits(definition) => {
            let out = info(
                options,
                &format!("Setting vhost limits to \"{definition}\" for vhost \"{vhost}\" ..."),
            );
            let parsed: Value = serde_json::from_str(definition).map_err(|_| {
                CtlError::unavailable("JSON decoding error. Reason: badarg".to_string())
            })?;
            let Value::Object(given) = parsed else {
                return Err(CtlError::unavailable(
                    "Validation failed: the limits must be a JSON object",
                ));
            };
            let unknown: Vec<String> = given
                .iter()
                .filter(|(k, _)| !VHOST_LIMITS.contains(&k.as_str()))
                .map(|(k, v)| format!("{{<<\"{k}\">>,{v}}}"))
                .collect();
            if !unknown.is_empty() {
                return Err(CtlError::unavailable(format!(
                    "Validation failed: Unrecognised terms [{}] in limits",
                    unknown.join(",")
                )));
            }
            for name in VHOST_LIMITS {
                let path = format!(
                    "/api/vhost-limits/{}/{}",
                    encode_segment(vhost),
                    encode_segment(name)
                );
                let resp = match given.get(*name) {
                    Some(v) => {
                        let body = serde_json::json!({ "value": v }).to_string();
                        client.request_json("PUT", &path, body.as_bytes())
                    }
                    None => client.request("DELETE", &path),
                }
                .map_err(CtlError::unavailable)?;
                if !(200..300).contains(&resp.status) {
                    return Err(http_error(&resp, "setting vhost limits", &options.user));
                }
            }
            Ok(out)
        }
        Command::ClearVhostLimits => {
            let out = info(options, &format!("Clearing vhost \"{vhost}\" limits ..."));
            for name in VHOST_LIMITS {
                let path = format!(
                    "/api/vhost-limits/{}/{}",
                    encode_segment(vhost),
                    encode_segment(name)
                );
                let resp = client
                    .request("DELETE", &path)
                    .map_err(CtlError::unavailable)?;
                if !(200..300).contains(&resp.status) {
                    return Err(http_error(&resp, "clearing vhost limits", &options.user));
                }
            }
            Ok(out)
        }
        Command::ListVhostLimits => {
            let mut out = info(
                options,
                &format!("Listing limits for vhost \"{vhost}\" ..."),
            );
            let resp = get(format!("/api/vhost-limits/{}", encode_segment(vhost)))?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "listing vhost limits", &options.user));
            }
            let value = parse(&resp)?
                .pointer("/0/value")
                .cloned()
                .unwrap_or(Value::Null);
            // rabbitmqctl prints the limits as one JSON object, keys sorted; nothing
            // (an empty line) without limits.
            match value {
                Value::Object(m) if !m.is_empty() => {
                    let sorted: std::collections::BTreeMap<_, _> = m.into_iter().collect();
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::to_string(&sorted).unwrap_or_default()
                    );
                }
                _ => out.push('\n'),
            }
            Ok(out)
        }
        Command::SetDiskFreeLimit(limit) | Command::SetVmMemoryHighWatermark(limit) => {
            let resp = get("/api/overview".to_string())?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "GET /api/overview", &options.user));
            }
            let node = parse(&resp)?["node"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let disk = matches!(command, Command::SetDiskFreeLimit(_));
            let (what, endpoint) = if disk {
                ("disk free limit", "disk-free-limit")
            } else {
                ("memory threshold", "vm-memory-high-watermark")
            };
            let (shown, body) = match (limit, disk) {
                (NodeLimit::Size(v), true) => {
                    (format!("{v} bytes"), serde_json::json!({ "limit": v }))
                }
                (NodeLimit::Fraction(f), true) => (
                    format!("{f} times the total RAM"),
                    serde_json::json!({ "mem_relative": f }),
                ),
                (NodeLimit::Size(v), false) => {
                    (format!("{v} bytes"), serde_json::json!({ "absolute": v }))
                }
                (NodeLimit::Fraction(f), false) => {
                    (f.clone(), serde_json::json!({ "fraction": f }))
                }
            };
            let out = info(options, &format!("Setting {what} on {node} to {shown} ..."));
            let path = format!("/api/nodes/{}/{endpoint}", encode_segment(&node));
            let resp = client
                .request_json("PUT", &path, body.to_string().as_bytes())
                .map_err(CtlError::unavailable)?;
            if resp.status == 400 {
                let reason = serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_default();
                return Err(CtlError {
                    message: format!("Bad argument: {reason}"),
                    code: EXIT_DATA,
                });
            }
            if !(200..300).contains(&resp.status) {
                return Err(http_error(
                    &resp,
                    &format!("setting the {what}"),
                    &options.user,
                ));
            }
            Ok(out)
        }
        Command::Status => {
            let resp = get("/api/overview".to_string())?;
            if !(200..300).contains(&resp.status) {
                return Err(http_error(&resp, "GET /api/overview", &options.user));
            }
            let overview = parse(&resp)?;
            Ok(match options.formatter {
                Formatter::Json => format!("{overview}\n"),
                Formatter::Table => format_status(&overview),
            })
        }
    }
}

fn info(options: &Options, line: &str) -> String {
    if options.quiet || options.formatter == Formatter::Json {
        String::new()
    } else {
        format!("{line}\n")
    }
}

fn no_user(name: &str) -> CtlError {
    CtlError {
        message: format!("User \"{name}\" does not exist"),
        code: EXIT_NO_USER,
    }
}

fn not_found(name: &str, vhost: &str) -> CtlError {
    CtlError::unavailable(format!("queue '{name}' in vhost '{vhost}' not found"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queues() -> Vec<Value> {
        vec![
            json!({"name": "task_queue", "vhost": "/", "durable": true,
                   "arguments": {"x-queue-type": "quorum"}, "messages": 3,
                   "messages_ready": 2, "messages_unacknowledged": 1, "consumers": 1}),
            // A fresh queue: RabbitMQ leaves the counters out until it has stats.
            json!({"name": "cq", "vhost": "/", "durable": false, "arguments": {}}),
            json!({"name": "elsewhere", "vhost": "other", "durable": true, "arguments": {}}),
        ]
    }

    #[test]
    fn table_matches_rabbitmqctl() {
        let cols = select_columns(Listing::Queues, &[]).unwrap();
        assert_eq!(cols, ["name", "messages"]);
        let r = rows(Listing::Queues, &queues(), "/", &cols);
        let banner = Listing::Queues.banner("/", Duration::from_secs(60));
        let out = format_listing(
            Listing::Queues,
            &cols,
            &r,
            Formatter::Table,
            Some(&banner),
            false,
        );
        assert_eq!(
            out,
            "Timeout: 60.0 seconds ...\nListing queues for vhost / ...\nname\tmessages\ntask_queue\t3\ncq\t0\n"
        );
    }

    #[test]
    fn named_columns_and_erlang_style_arguments() {
        let names: Vec<String> = ["name", "durable,arguments", "messages_unacknowledged"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let cols = select_columns(Listing::Queues, &names).unwrap();
        let r = rows(Listing::Queues, &queues(), "/", &cols);
        let out = format_listing(Listing::Queues, &cols, &r, Formatter::Table, None, false);
        assert_eq!(
            out,
            "name\tdurable\targuments\tmessages_unacknowledged\n\
             task_queue\ttrue\t[{\"x-queue-type\",\"quorum\"}]\t1\n\
             cq\tfalse\t[]\t0\n"
        );
        let out = format_listing(Listing::Queues, &cols, &r, Formatter::Table, None, true);
        assert!(out.starts_with("task_queue\t"));
    }

    #[test]
    fn json_matches_rabbitmqctl() {
        let names = vec!["name".to_string(), "arguments".into(), "durable".into()];
        let cols = select_columns(Listing::Queues, &names).unwrap();
        let r = rows(Listing::Queues, &queues(), "/", &cols);
        let out = format_listing(Listing::Queues, &cols, &r, Formatter::Json, None, false);
        assert_eq!(
            out,
            "[\n{\"name\":\"task_queue\",\"arguments\":[[\"x-queue-type\",\"longstr\",\"quorum\"]],\"durable\":true}\n\
             ,{\"name\":\"cq\",\"arguments\":[],\"durable\":false}\n]\n"
        );
        let empty = format_listing(Listing::Queues, &cols, &[], Formatter::Json, None, false);
        assert_eq!(empty, "[\n]\n");
    }

    #[test]
    fn empty_table_has_no_header() {
        let cols = select_columns(Listing::Connections, &[]).unwrap();
        let out = format_listing(
            Listing::Connections,
            &cols,
            &[],
            Formatter::Table,
            Some("Listing connections ..."),
            false,
        );
        assert_eq!(out, "Listing connections ...\n");
    }

    #[test]
    fn unknown_columns_are_usage_errors() {
        let names = vec!["name".to_string(), "bogus1".into(), "bogus2".into()];
        let err = select_columns(Listing::Queues, &names).unwrap_err();
        assert_eq!(err.code, EXIT_USAGE);
        assert!(err
            .message
            .starts_with("Info key(s) bogus1,bogus2 are not supported"));
        assert!(!err.message.contains('\n'));
    }

    #[test]
    fn nested_columns_of_consumers_and_channels() {
        let consumers = vec![json!({
            "queue": {"name": "cq", "vhost": "/"},
            "channel_details": {"name": "127.0.0.1:1 -> 127.0.0.1:2 (1)"},
            "consumer_tag": "amq.ctag-1", "ack_required": true, "prefetch_count": 1,
            "active": true, "arguments": {}
        })];
        let cols = select_columns(Listing::Consumers, &[]).unwrap();
        let r = rows(Listing::Consumers, &consumers, "/", &cols);
        let out = format_listing(Listing::Consumers, &cols, &r, Formatter::Table, None, false);
        assert_eq!(
            out.lines().nth(1).unwrap(),
            "cq\t127.0.0.1:1 -> 127.0.0.1:2 (1)\tamq.ctag-1\ttrue\t1\ttrue\t[]"
        );
        let channels = vec![json!({"name": "c (1)", "user": "guest", "vhost": "/",
                                   "consumer_count": 1})];
        let cols = select_columns(Listing::Channels, &[]).unwrap();
        let r = rows(Listing::Channels, &channels, "/", &cols);
        assert_eq!(
            r[0],
            vec![json!("c (1)"), json!("guest"), json!(1), json!(0)]
        );
    }

    #[test]
    fn status_text() {
        let overview = json!({
            "product_name": "minimq", "product_version": "0.1.0", "node": "minimq@localhost",
            "object_totals": {"connections": 2, "channels": 3, "queues": 4, "consumers": 1},
            "queue_totals": {"messages": 5, "messages_ready": 4, "messages_unacknowledged": 1},
            "listeners": [{"protocol": "amqp", "ip_address": "127.0.0.1", "port": 5672},
                          {"protocol": "http", "ip_address": "::", "port": 15672}]
        });
        let out = format_status(&overview);
        assert!(out.starts_with(
            "Status of node minimq@localhost ...\nRuntime\n\nminimq version: 0.1.0\n"
        ));
        assert!(out.contains("Connection count: 2\n"));
        assert!(out.contains("Queue count: 4\n"));
        assert!(out.contains("Message count: 5 (ready: 4, unacknowledged: 1)\n"));
        assert!(
            out.contains("Interface: 127.0.0.1, port: 5672, protocol: amqp, purpose: AMQP 0-9-1\n")
        );
        assert!(out.contains("Interface: [::], port: 15672, protocol: http, purpose: HTTP API\n"));
    }

    #[test]
    fn http_errors_are_one_line() {
        let resp = Response {
            status: 401,
            reason: "Unauthorized".into(),
            body: b"{\"error\":\"not_authorised\",\"reason\":\"Login failed\"}".to_vec(),
        };
        let e = http_error(&resp, "GET /api/queues", "bob");
        assert_eq!(
            e.message,
            "authentication failed for user 'bob' (HTTP 401 Unauthorized)"
        );
        let resp = Response {
            status: 400,
            reason: "Bad Request".into(),
            body: b"{\"error\":\"bad_request\",\"reason\":\"queue not empty\\nreally\"}".to_vec(),
        };
        let e = http_error(&resp, "deleting queue 'q'", "guest");
        assert_eq!(
            e.message,
            "deleting queue 'q': HTTP 400 Bad Request: queue not empty really"
        );
        assert_eq!(e.code, EXIT_UNAVAILABLE);
    }
}
