//! `minimqctl`: rabbitmqctl's listing, queue and policy commands over the management HTTP API
//! (minimq's `--http`, or RabbitMQ's management plugin).
//!
//! ```text
//! minimqctl list_queues name messages_ready messages_unacknowledged
//! minimqctl --formatter json list_consumers
//! minimqctl purge_queue task_queue
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::time::Duration;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use minimq_cli::ctl::{self, Command, CtlError, Formatter, Listing, Options};
use minimq_cli::one_line;

/// Inspects and manages a minimq (or RabbitMQ) broker through its management HTTP API.
#[derive(Debug, Parser)]
#[command(name = "minimqctl", version, about)]
struct Cli {
    /// Management API base URL.
    #[arg(
        long,
        env = "MINIMQ_MGMT_URL",
        default_value = "http://127.0.0.1:15672",
        global = true
    )]
    url: String,
    /// CA certificate (PEM) to trust for an https:// URL instead of the system's store.
    #[arg(long, env = "MINIMQ_MGMT_CA_CERT", value_name = "FILE", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// User for HTTP basic authentication.
    #[arg(long, default_value = "guest", global = true)]
    user: String,
    /// Password for HTTP basic authentication.
    #[arg(long, default_value = "guest", global = true)]
    password: String,
    /// Virtual host.
    #[arg(long, short = 'p', default_value = "/", global = true)]
    vhost: String,
    /// Output format.
    #[arg(long, value_enum, default_value = "table", global = true)]
    formatter: Formatter,
    /// Leave out the info lines (`Listing queues ...`).
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Leave out the header row of tables.
    #[arg(long, global = true)]
    no_table_headers: bool,
    /// Seconds each HTTP request may take.
    #[arg(long, short = 't', default_value_t = 60.0, global = true)]
    timeout: f64,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
#[command(rename_all = "snake_case")]
enum Cmd {
    /// Lists queues: name messages by default. Columns: name vhost durable auto_delete
    /// exclusive arguments policy messages messages_ready messages_unacknowledged
    /// message_bytes ... consumers consumer_utilisation memory state type.
    ListQueues {
        /// Columns to show.
        columns: Vec<String>,
    },
    /// Lists connections: user peer_host peer_port state by default.
    ListConnections {
        /// Columns to show.
        columns: Vec<String>,
    },
    /// Lists channels: pid user consumer_count messages_unacknowledged by default
    /// (pid shows the channel's name).
    ListChannels {
        /// Columns to show.
        columns: Vec<String>,
    },
    /// Lists consumers: queue_name channel_pid consumer_tag ack_required prefetch_count
    /// active arguments by default.
    ListConsumers {
        /// Columns to show.
        columns: Vec<String>,
    },
    /// Removes every ready message from a queue.
    PurgeQueue {
        /// Queue name.
        queue: String,
    },
    /// Deletes a queue.
    DeleteQueue {
        /// Queue name.
        queue: String,
        /// Only if it has no messages.
        #[arg(long = "if-empty", short = 'e')]
        if_empty: bool,
        /// Only if it has no consumers.
        #[arg(long = "if-unused", short = 'u')]
        if_unused: bool,
    },
    /// Shows the broker's version, totals and listeners.
    Status,
    /// Sets the free disk space under which publishers are blocked, until the next
    /// restart: a size (50MB, 2GiB) or `mem_relative FRACTION` (times the memory).
    SetDiskFreeLimit {
        /// `<disk_limit>` or `mem_relative <fraction>`.
        #[arg(num_args = 1..=2, required = true, value_name = "LIMIT")]
        args: Vec<String>,
    },
    /// Sets the memory high watermark, until the next restart: a fraction of the
    /// memory (0.4) or `absolute SIZE`.
    SetVmMemoryHighWatermark {
        /// `<fraction>` or `absolute <value>`.
        #[arg(num_args = 1..=2, required = true, value_name = "LIMIT")]
        args: Vec<String>,
    },
    /// Sets a policy: a definition applied to the queues and exchanges whose names match
    /// PATTERN.
    SetPolicy {
        /// Which objects it applies to: queues, exchanges or all.
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
        /// Higher wins when several match.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Policy name.
        name: String,
        /// Regular expression on object names.
        pattern: String,
        /// The definition, JSON (e.g. '{"max-length":1000}').
        definition: String,
    },
    /// Removes a policy.
    ClearPolicy {
        /// Policy name.
        name: String,
    },
    /// Lists policies: vhost name pattern apply-to definition priority.
    ListPolicies,
    /// Sets an operator policy: caps on the numeric queue limits (expires, message-ttl,
    /// max-length, max-length-bytes, max-in-memory-length, max-in-memory-bytes,
    /// delivery-limit) of the queues whose names match PATTERN; the lower of it and the
    /// queue's policy or argument wins.
    SetOperatorPolicy {
        /// Which objects it applies to: queues, exchanges or all.
        #[arg(long = "apply-to", default_value = "all")]
        apply_to: String,
        /// Higher wins when several match.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i64,
        /// Operator policy name.
        name: String,
        /// Regular expression on object names.
        pattern: String,
        /// The definition, JSON (e.g. '{"max-length":1000}').
        definition: String,
    },
    /// Removes an operator policy.
    ClearOperatorPolicy {
        /// Operator policy name.
        name: String,
    },
    /// Lists operator policies: vhost name pattern apply-to definition priority.
    ListOperatorPolicies,
    /// Sets the vhost's limits, replacing those it had: a JSON object with
    /// `max-connections` and/or `max-queues` (a negative value: no limit).
    SetVhostLimits {
        /// The limits, e.g. '{"max-connections": 100, "max-queues": 1000}'.
        definition: String,
    },
    /// Removes the vhost's limits.
    ClearVhostLimits,
    /// Adds a user (no tags, no permissions).
    AddUser {
        /// User name.
        name: String,
        /// Password (not the global --password, which logs minimqctl in).
        #[arg(value_name = "PASSWORD")]
        secret: String,
    },
    /// Deletes a user (its connections are closed).
    DeleteUser {
        /// User name.
        name: String,
    },
    /// Changes a user's password.
    ChangePassword {
        /// User name.
        name: String,
        /// New password.
        #[arg(value_name = "PASSWORD")]
        secret: String,
    },
    /// Sets a user's tags (administrator, monitoring, policymaker, management, ...).
    SetUserTags {
        /// User name.
        name: String,
        /// Tags; none clears them.
        tags: Vec<String>,
    },
    /// Lists users: user tags.
    ListUsers,
    /// Sets a user's permissions in the vhost (-p): configure, write and read patterns.
    SetPermissions {
        /// User name (not the global --user, which logs minimqctl in).
        #[arg(value_name = "USER")]
        username: String,
        /// Configure pattern.
        #[arg(allow_hyphen_values = true)]
        configure: String,
        /// Write pattern.
        #[arg(allow_hyphen_values = true)]
        write: String,
        /// Read pattern.
        #[arg(allow_hyphen_values = true)]
        read: String,
    },
    /// Removes a user's permissions in the vhost (-p).
    ClearPermissions {
        /// User name.
        #[arg(value_name = "USER")]
        username: String,
    },
    /// Lists the permissions in the vhost (-p): user configure write read.
    ListPermissions,
    /// Writes every definition (users, permissions, policies, queues, exchanges,
    /// bindings) to FILE in RabbitMQ's JSON, or to stdout with `-`.
    ExportDefinitions {
        /// Where to write: a path, or `-`.
        file: String,
    },
    /// Imports a RabbitMQ definitions file (or stdin with `-`); nothing is imported if an
    /// entry is wrong.
    ImportDefinitions {
        /// What to read: a path, or `-`.
        file: String,
    },
    /// Lists a user's permissions: vhost configure write read.
    ListUserPermissions {
        /// User name.
        #[arg(value_name = "USER")]
        username: String,
    },
    /// Shows the vhost's limits.
    ListVhostLimits,
    /// Adds a vhost (nothing changes if it exists); its creator is given every
    /// permission on it.
    AddVhost {
        /// Vhost name.
        name: String,
        /// Free text.
        #[arg(long)]
        description: Option<String>,
        /// Comma-separated tags.
        #[arg(long)]
        tags: Option<String>,
        /// The type of its queues declared durable without `x-queue-type`: classic or
        /// quorum.
        #[arg(long = "default-queue-type", value_name = "quorum|classic")]
        default_queue_type: Option<String>,
    },
    /// Deletes a vhost: its connections are closed, its queues (with their messages),
    /// exchanges, bindings, policies, limits and permissions removed.
    DeleteVhost {
        /// Vhost name.
        name: String,
    },
    /// Starts tracing in the vhost (-p): every message published and delivered there is
    /// copied to its `amq.rabbitmq.trace` exchange.
    TraceOn,
    /// Stops tracing in the vhost (-p).
    TraceOff,
    /// Lists vhosts: name, or the columns given (name description tags
    /// default_queue_type metadata tracing cluster_state).
    ListVhosts {
        /// Columns to show (default: name).
        columns: Vec<String>,
    },
}

fn fail(e: CtlError) -> ! {
    eprintln!("minimqctl: error: {}", one_line(&e.message));
    std::process::exit(e.code);
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => e.exit(),
            ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand | ErrorKind::MissingSubcommand => {
                fail(CtlError::usage(
                    "no command given; commands: list_queues list_connections list_channels \
                     list_consumers list_policies purge_queue delete_queue set_policy clear_policy \
                     set_operator_policy clear_operator_policy list_operator_policies set_vhost_limits clear_vhost_limits list_vhost_limits add_vhost delete_vhost list_vhosts trace_on trace_off add_user delete_user \
                     change_password set_user_tags list_users set_permissions \
                     clear_permissions list_permissions list_user_permissions \
                     export_definitions import_definitions set_disk_free_limit \
                     set_vm_memory_high_watermark status (see --help)",
                ))
            }
            _ => {
                // clap's message is its first paragraph; the usage and hints follow.
                let text = e.render().to_string();
                let first: Vec<&str> = text
                    .lines()
                    .take_while(|l| !l.trim().is_empty())
                    .map(str::trim)
                    .collect();
                let first = first.join(" ");
                let first = first.strip_prefix("error: ").unwrap_or(&first);
                fail(CtlError::usage(format!("{first} (see --help)")))
            }
        },
    };
    if !(cli.timeout.is_finite() && cli.timeout > 0.0) {
        fail(CtlError::usage(format!(
            "--timeout must be a positive number of seconds, not {}",
            cli.timeout
        )));
    }
    let options = Options {
        url: cli.url,
        user: cli.user,
        password: cli.password,
        vhost: cli.vhost,
        formatter: cli.formatter,
        quiet: cli.quiet,
        no_table_headers: cli.no_table_headers,
        timeout: Duration::from_secs_f64(cli.timeout),
        ca_cert: cli.ca_cert,
    };
    let command = match cli.command {
        Cmd::ListQueues { columns } => Command::List(Listing::Queues, columns),
        Cmd::ListConnections { columns } => Command::List(Listing::Connections, columns),
        Cmd::ListChannels { columns } => Command::List(Listing::Channels, columns),
        Cmd::ListConsumers { columns } => Command::List(Listing::Consumers, columns),
        Cmd::PurgeQueue { queue } => Command::PurgeQueue(queue),
        Cmd::DeleteQueue {
            queue,
            if_empty,
            if_unused,
        } => Command::DeleteQueue {
            name: queue,
            if_empty,
            if_unused,
        },
        Cmd::Status => Command::Status,
        Cmd::SetDiskFreeLimit { args } => match ctl::NodeLimit::disk(&args) {
            Ok(limit) => Command::SetDiskFreeLimit(limit),
            Err(e) => fail(e),
        },
        Cmd::SetVmMemoryHighWatermark { args } => match ctl::NodeLimit::memory(&args) {
            Ok(limit) => Command::SetVmMemoryHighWatermark(limit),
            Err(e) => fail(e),
        },
        Cmd::SetPolicy {
            apply_to,
            priority,
            name,
            pattern,
            definition,
        } => Command::SetPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        },
        Cmd::ClearPolicy { name } => Command::ClearPolicy(name),
        Cmd::ListPolicies => Command::List(Listing::Policies, Vec::new()),
        Cmd::SetOperatorPolicy {
            apply_to,
            priority,
            name,
            pattern,
            definition,
        } => Command::SetOperatorPolicy {
            name,
            pattern,
            definition,
            priority,
            apply_to,
        },
        Cmd::ClearOperatorPolicy { name } => Command::ClearOperatorPolicy(name),
        Cmd::ListOperatorPolicies => Command::List(Listing::OperatorPolicies, Vec::new()),
        Cmd::SetVhostLimits { definition } => Command::SetVhostLimits(definition),
        Cmd::ClearVhostLimits => Command::ClearVhostLimits,
        Cmd::AddUser { name, secret } => Command::AddUser(name, secret),
        Cmd::DeleteUser { name } => Command::DeleteUser(name),
        Cmd::ChangePassword { name, secret } => Command::ChangePassword(name, secret),
        Cmd::SetUserTags { name, tags } => Command::SetUserTags(name, tags),
        Cmd::ListUsers => Command::ListUsers,
        Cmd::SetPermissions {
            username,
            configure,
            write,
            read,
        } => Command::SetPermissions {
            user: username,
            configure,
            write,
            read,
        },
        Cmd::ClearPermissions { username } => Command::ClearPermissions(username),
        Cmd::ListPermissions => Command::ListPermissions,
        Cmd::ExportDefinitions { file } => Command::ExportDefinitions(file),
        Cmd::ImportDefinitions { file } => Command::ImportDefinitions(file),
        Cmd::ListUserPermissions { username } => Command::ListUserPermissions(username),
        Cmd::ListVhostLimits => Command::ListVhostLimits,
        Cmd::AddVhost {
            name,
            description,
            tags,
            default_queue_type,
        } => Command::AddVhost {
            name,
            description,
            tags,
            default_queue_type,
        },
        Cmd::DeleteVhost { name } => Command::DeleteVhost(name),
        Cmd::TraceOn => Command::Trace(true),
        Cmd::TraceOff => Command::Trace(false),
        Cmd::ListVhosts { columns } => Command::List(Listing::Vhosts, columns),
    };
    match ctl::run(&options, &command) {
        Ok(out) => print!("{out}"),
        Err(e) => fail(e),
    }
}
