//! `worker`: the consumer of RabbitMQ's "Work Queues" tutorial (`worker.py`), and with
//! `--exec CMD` a real worker that hands each message to a command.
//!
//! ```text
//! worker                               # one second of "work" per '.' in each message
//! worker --exec 'wc -c'                # runs `sh -c 'wc -c'` with the body on stdin
//! ```
//!
//! A message is acknowledged after its work is done. Ctrl+C (or SIGTERM) stops the worker
//! at once: a message in progress is not acknowledged, and the broker gives it to another
//! worker when the connection closes.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use clap::Parser;
use futures::StreamExt;
use minimq_cli::{
    connect, fail, interrupt_token, one_line, say, work_duration, QueueSpec, QueueType, DEFAULT_URL,
};
use minimq_client::{BasicConsumeOptions, Delivery, FieldTable};
use tokio::io::AsyncWriteExt;

/// Takes tasks from a work queue (RabbitMQ tutorial two's worker.py).
#[derive(Debug, Parser)]
#[command(name = "worker", version, about)]
struct Args {
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_URL)]
    url: String,
    /// CA certificate (PEM) to trust for an amqps:// URL instead of the system's store.
    #[arg(long, env = "AMQP_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Queue to declare and consume from.
    #[arg(long, default_value = "task_queue")]
    queue: String,
    /// Unacknowledged messages this worker may hold (basic.qos prefetch-count; 0 = no limit).
    #[arg(long, default_value_t = 1)]
    prefetch: u16,
    /// Let the broker consider messages acknowledged on delivery (no_ack).
    #[arg(long)]
    auto_ack: bool,
    /// Seconds of simulated work per '.' in the message (ignored with --exec).
    #[arg(long, default_value_t = 1.0, value_name = "SECS")]
    dot_seconds: f64,
    /// Run CMD with `sh -c` for each message, the body on its stdin: exit status 0 acks,
    /// anything else nacks.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// With --exec: requeue a message whose command failed (default: drop it, or
    /// dead-letter it if the queue has a dead-letter exchange).
    #[arg(long, requires = "exec")]
    requeue_on_failure: bool,
    /// Declare the queue non-durable (implies --queue-type classic unless given).
    #[arg(long)]
    no_durable: bool,
    /// x-queue-type of the declared queue [default: quorum, or classic with --no-durable].
    #[arg(long, value_enum)]
    queue_type: Option<QueueType>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !(args.dot_seconds.is_finite() && args.dot_seconds >= 0.0) {
        fail(
            "worker",
            &format!("--dot-seconds must be 0 or more, not {}", args.dot_seconds),
        );
    }
    if let Err(e) = run(args).await {
        fail("worker", &e);
    }
}

/// How one message's work ended.
enum Outcome {
    Done,
    Failed(String),
}

async fn run(args: Args) -> Result<(), String> {
    let interrupted = interrupt_token();
    let spec = QueueSpec::new(&args.queue, args.no_durable, args.queue_type);

    let connection = tokio::select! {
        c = connect(&args.url, args.ca_cert.as_deref()) => c?,
        _ = interrupted.cancelled() => return Ok(()),
    };
    let channel = connection
        .open_channel()
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))?;
    spec.declare(&channel).await?;
    if !args.auto_ack {
        channel
            .basic_qos(args.prefetch, false)
            .await
            .map_err(|e| format!("basic.qos failed: {e}"))?;
    }
    let options = BasicConsumeOptions {
        no_ack: args.auto_ack,
        ..BasicConsumeOptions::default()
    };
    let mut consumer = channel
        .basic_consume(&spec.name, "", options, FieldTable::new())
        .await
        .map_err(|e| {
            format!(
                "cannot consume from '{}': {}",
                spec.name,
                one_line(&e.to_string())
            )
        })?;
    say(" [*] Waiting for messages. To exit press CTRL+C");

    loop {
        let delivery = tokio::select! {
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => return Err(format!("consumer failed: {}", one_line(&e.to_string()))),
                None => return Err(format!("the broker cancelled the consumer (queue '{}' deleted?)", spec.name)),
            },
            _ = interrupted.cancelled() => break,
        };
        say(&format!(
            " [x] Received '{}'",
            String::from_utf8_lossy(&delivery.body)
        ));

        let outcome = tokio::select! {
            outcome = work(&args, &delivery) => outcome,
            // Interrupted mid-task: leave it unacknowledged; closing the connection
            // gives it back to the queue.
            _ = interrupted.cancelled() => break,
        };
        match outcome {
            Outcome::Done => {
                if !args.auto_ack {
                    delivery
                        .ack()
                        .await
                        .map_err(|e| format!("ack failed: {}", one_line(&e.to_string())))?;
                }
                say(" [x] Done");
            }
            Outcome::Failed(why) => {
                let requeue = args.requeue_on_failure;
                if !args.auto_ack {
                    delivery
                        .nack(requeue)
                        .await
                        .map_err(|e| format!("nack failed: {}", one_line(&e.to_string())))?;
                }
                say(&format!(
                    " [x] Failed: {why}{}",
                    match (args.auto_ack, requeue) {
                        (true, _) => "",
                        (false, true) => " (requeued)",
                        (false, false) => " (rejected)",
                    }
                ));
            }
        }
    }

    // Unacknowledged deliveries go back to the queue when the connection closes.
    let _ = tokio::time::timeout(Duration::from_secs(5), connection.close()).await;
    Ok(())
}

async fn work(args: &Args, delivery: &Delivery) -> Outcome {
    match &args.exec {
        None => {
            tokio::time::sleep(work_duration(&delivery.body, args.dot_seconds)).await;
            Outcome::Done
        }
        Some(cmd) => match run_command(cmd, delivery).await {
            Ok(status) if status.success() => Outcome::Done,
            Ok(status) => Outcome::Failed(describe(status)),
            Err(e) => Outcome::Failed(format!("cannot run the command: {e}")),
        },
    }
}

/// Runs `sh -c CMD` with the body on stdin and a few facts about the message in the
/// environment. The child is killed if the worker stops waiting for it (Ctrl+C).
async fn run_command(cmd: &str, delivery: &Delivery) -> std::io::Result<ExitStatus> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("MINIMQ_DELIVERY_TAG", delivery.delivery_tag.to_string())
        .env(
            "MINIMQ_REDELIVERED",
            if delivery.redelivered { "1" } else { "0" },
        )
        .env("MINIMQ_ROUTING_KEY", &*delivery.routing_key)
        .env("MINIMQ_EXCHANGE", &*delivery.exchange)
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut stdin = child.stdin.take();
    let body = delivery.body.clone();
    let feed = async move {
        if let Some(stdin) = stdin.as_mut() {
            // A command that does not read its input closes the pipe: not an error.
            let _ = stdin.write_all(&body).await;
            let _ = stdin.shutdown().await;
        }
        drop(stdin);
    };
    let (_, status) = tokio::join!(feed, child.wait());
    status
}

fn describe(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exit status {code}");
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(signal) = status.signal() {
            return format!("killed by signal {signal}");
        }
    }
    status.to_string()
}
