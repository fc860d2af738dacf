//! The command-line tools of minimq, as a library their binaries share:
//!
//! - `task` (`src/bin/task.rs`): RabbitMQ tutorial two's `new_task.py`, plus bulk sends.
//! - `worker` (`src/bin/worker.rs`): tutorial two's `worker.py`, plus `--exec CMD`.
//! - `minimqctl` (`src/bin/minimqctl.rs`, logic in [`ctl`], its HTTP client in [`mgmt`]): rabbitmqctl's
//!   listings and queue commands over the management HTTP API.
//! - `minimq-bench` (`src/bin/minimq-bench.rs`, pure parts in [`bench`]): a PerfTest-like
//!   load generator with latency percentiles and an exactly-once check; [`objects`] its
//!   `--connections` / `--queues` modes (broker memory per idle object).
//!
//! This crate root holds what both need: the broker URL default, connecting with
//! one-line error messages, the queue arguments both declare with, the Ctrl+C token and
//! the terminal progress bar.

#![forbid(unsafe_code)]
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod bench;
pub mod ctl;
pub mod mgmt;
pub mod objects;
pub mod progress;

use std::io::Write;
use std::path::Path;

use clap::ValueEnum;
use minimq_client::{Channel, Connection, ConnectionConfig, FieldTable, QueueDeclareOptions};
use tokio_util::sync::CancellationToken;

/// The broker URL when neither `--url` nor `AMQP_URL` gives one.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// How long connecting (TCP plus handshake) may take before the tools give up.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The `x-queue-type` of the declared queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum QueueType {
    /// A classic queue (`x-queue-type: classic`).
    Classic,
    /// A quorum queue (`x-queue-type: quorum`), as the current tutorial declares.
    Quorum,
}

impl QueueType {
    /// The argument value.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// How `task` and `worker` declare their queue. By default as the tutorial does:
/// durable, `x-queue-type: quorum`. Without durability the default type is classic,
/// since a quorum queue is always durable.
#[derive(Debug, Clone)]
pub struct QueueSpec {
    /// Queue name.
    pub name: String,
    /// Declared durable.
    pub durable: bool,
    /// `x-queue-type`, if one was asked for or implied.
    pub queue_type: QueueType,
}

impl QueueSpec {
    /// The spec from the command-line flags.
    pub fn new(name: &str, no_durable: bool, queue_type: Option<QueueType>) -> QueueSpec {
        let durable = !no_durable;
        let queue_type = queue_type.unwrap_or(if durable {
            QueueType::Quorum
        } else {
            QueueType::Classic
        });
        QueueSpec {
            name: name.to_string(),
            durable,
            queue_type,
        }
    }

    /// The `queue.declare` arguments.
    pub fn arguments(&self) -> FieldTable {
        let mut args = FieldTable::new();
        args.insert("x-queue-type", self.queue_type.as_str());
        args
    }

    /// Declares the queue on `channel`, with a readable message for the usual failure
    /// (the queue exists with other settings: 406 PRECONDITION_FAILED).
    pub async fn declare(&self, channel: &Channel) -> Result<(), String> {
        let options = QueueDeclareOptions {
            durable: self.durable,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(&self.name, options, self.arguments())
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.reply_code() == Some(406) => Err(format!(
                "cannot declare queue '{}' (durable={}, x-queue-type={}): {}; \
                 it exists with other settings: match them with --queue-type / --no-durable",
                self.name,
                self.durable,
                self.queue_type.as_str(),
                one_line(&e.to_string())
            )),
            Err(e) => Err(format!(
                "cannot declare queue '{}': {}",
                self.name,
                one_line(&e.to_string())
            )),
        }
    }
}

/// `url` with the password replaced by `***`, for messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{}", &rest[authority_end..]),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

/// Collapses a message onto one line.
pub fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Connects to the broker at `url` (`amqp://` or `amqps://`), with an error message fit
/// for one line of stderr. `ca_cert` (`--ca-cert`) is the CA an `amqps://` server's
/// certificate must chain to, instead of the system's store; a plain `amqp://` URL has
/// no use for it and leaves it aside, so one `AMQP_CA_CERT` can serve both.
pub async fn connect(url: &str, ca_cert: Option<&Path>) -> Result<Connection, String> {
    let mut config = ConnectionConfig::from_url(url).map_err(|e| one_line(&e.to_string()))?;
    if let Some(ca) = ca_cert {
        config.ca_cert = Some(ca.to_path_buf());
    }
    if !url.contains("connection_timeout=") {
        config.connection_timeout = CONNECT_TIMEOUT;
    }
    Connection::connect_with(config).await.map_err(|e| {
        format!(
            "cannot connect to {}: {}",
            redact_url(url),
            one_line(&e.to_string())
        )
    })
}

/// Prints `PROGRAM: error: MESSAGE` on stderr (one line) and exits with status 1.
pub fn fail(program: &str, message: &str) -> ! {
    let _ = std::io::stdout().flush();
    eprintln!("{program}: error: {}", one_line(message));
    std::process::exit(1);
}

/// Prints one line on stdout and flushes it (the tests read stdout through a pipe).
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// A token cancelled on the first SIGINT (Ctrl+C) or SIGTERM.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            match signal(SignalKind::terminate()) {
                Ok(mut term) => {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => {}
                        _ = term.recv() => {}
                    }
                }
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        t.cancel();
    });
    token
}

/// Seconds of work for a body: one `--dot-seconds` per `.`, as in the tutorial.
pub fn work_duration(body: &[u8], dot_seconds: f64) -> std::time::Duration {
    let dots = body.iter().filter(|b| **b == b'.').count() as f64;
    std::time::Duration::from_secs_f64((dots * dot_seconds).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_password() {
        assert_eq!(
            redact_url("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(redact_url("nonsense"), "nonsense");
    }

    #[test]
    fn queue_spec_defaults_follow_the_tutorial() {
        let q = QueueSpec::new("task_queue", false, None);
        assert!(q.durable);
        assert_eq!(q.queue_type, QueueType::Quorum);
        let q = QueueSpec::new("t", true, None);
        assert!(!q.durable);
        assert_eq!(q.queue_type, QueueType::Classic);
    }

    #[test]
    fn dots_are_seconds() {
        assert_eq!(
            work_duration(b"a..b.", 0.5),
            std::time::Duration::from_millis(1500)
        );
        assert_eq!(work_duration(b"none", 1.0), std::time::Duration::ZERO);
    }
}
