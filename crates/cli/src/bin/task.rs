//! `task`: the producer of RabbitMQ's "Work Queues" tutorial (`new_task.py`), plus bulk
//! sends for load.
//!
//! ```text
//! task First message.                 # one persistent message to the durable task_queue
//! task --count 10000 --rate 500 job.  # 10000 messages "job. 1" .. "job. 10000", confirmed
//! seq 100 | task --stdin              # one message per line, confirmed
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use minimq_cli::progress::Progress;
use minimq_cli::{connect, fail, one_line, say, QueueSpec, QueueType, DEFAULT_URL};
use minimq_client::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc;

/// How many published messages may wait for their confirm before publishing pauses.
const CONFIRM_WINDOW: usize = 4096;

/// Sends tasks to a work queue (RabbitMQ tutorial two's new_task.py).
#[derive(Debug, Parser)]
#[command(name = "task", version, about)]
struct Args {
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_URL)]
    url: String,
    /// CA certificate (PEM) to trust for an amqps:// URL instead of the system's store.
    #[arg(long, env = "AMQP_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Queue to declare and send to (through the default exchange).
    #[arg(long, default_value = "task_queue")]
    queue: String,
    /// Send non-persistent messages (delivery-mode 1) instead of persistent ones.
    #[arg(long)]
    transient: bool,
    /// Declare the queue non-durable (implies --queue-type classic unless given).
    #[arg(long)]
    no_durable: bool,
    /// x-queue-type of the declared queue [default: quorum, or classic with --no-durable].
    #[arg(long, value_enum)]
    queue_type: Option<QueueType>,
    /// Use publisher confirms and wait for the broker's ack before exiting
    /// (always on with --stdin and --count).
    #[arg(long)]
    confirm: bool,
    /// Send one message per line of standard input.
    #[arg(long, conflicts_with_all = ["count", "message"])]
    stdin: bool,
    /// Send N messages: MESSAGE followed by a space and the number 1..=N.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// With --count: at most R messages per second.
    #[arg(long, value_name = "R", requires = "count")]
    rate: Option<f64>,
    /// The message; the arguments are joined by spaces [default: Hello World!].
    message: Vec<String>,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(rate) = args.rate {
        if !(rate.is_finite() && rate > 0.0) {
            fail(
                "task",
                &format!("--rate must be a positive number, not {rate}"),
            );
        }
    }
    if let Err(e) = run(args).await {
        fail("task", &e);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let spec = QueueSpec::new(&args.queue, args.no_durable, args.queue_type);
    let message = if args.message.is_empty() {
        "Hello World!".to_string()
    } else {
        args.message.join(" ")
    };
    let properties = BasicProperties {
        delivery_mode: Some(if args.transient { 1 } else { 2 }),
        ..BasicProperties::default()
    };

    let connection = connect(&args.url, args.ca_cert.as_deref()).await?;
    let channel = connection
        .open_channel()
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))?;
    spec.declare(&channel).await?;

    let bulk = args.stdin || args.count.is_some();
    if args.confirm || bulk {
        channel
            .confirm_select()
            .await
            .map_err(|e| format!("confirm.select failed: {e}"))?;
    }

    if !bulk {
        let confirm = publish(&channel, &spec.name, &properties, message.clone()).await?;
        match confirm.await {
            Ok(Confirmation::Nack) => return Err("the broker nacked the message".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("publish failed: {}", one_line(&e.to_string()))),
        }
        say(&format!(" [x] Sent '{message}'"));
    } else {
        let sent = send_bulk(&args, &channel, &spec.name, &properties, &message).await?;
        say(&format!(
            " [x] Sent {sent} message{} to '{}' (all confirmed)",
            if sent == 1 { "" } else { "s" },
            spec.name
        ));
    }

    connection
        .close()
        .await
        .map_err(|e| format!("closing the connection failed: {e}"))
}

async fn publish(
    channel: &Channel,
    queue: &str,
    properties: &BasicProperties,
    body: String,
) -> Result<PublisherConfirm, String> {
    channel
        .basic_publish("", queue, false, properties.clone(), body)
        .await
        .map_err(|e| format!("publish failed: {}", one_line(&e.to_string())))
}

/// Confirm counts, shared between the publishing loop and the confirm collector.
#[derive(Default)]
struct Counts {
    acked: AtomicU64,
    nacked: AtomicU64,
}

/// `--stdin` / `--count`: publishes everything, waiting for every confirm, with a
/// progress bar on a terminal. Returns how many messages were sent.
async fn send_bulk(
    args: &Args,
    channel: &Channel,
    queue: &str,
    properties: &BasicProperties,
    message: &str,
) -> Result<u64, String> {
    let counts = Arc::new(Counts::default());
    let (tx, mut rx) = mpsc::channel::<PublisherConfirm>(CONFIRM_WINDOW);
    let collector = {
        let counts = counts.clone();
        tokio::spawn(async move {
            while let Some(confirm) = rx.recv().await {
                match confirm.await {
                    Ok(Confirmation::Nack) => counts.nacked.fetch_add(1, Ordering::Relaxed),
                    Ok(_) => counts.acked.fetch_add(1, Ordering::Relaxed),
                    Err(e) => return Err(format!("publish failed: {}", one_line(&e.to_string()))),
                };
            }
            Ok(())
        })
    };

    let mut progress = Progress::new(args.count);
    let confirmed = |c: &Counts| c.acked.load(Ordering::Relaxed) + c.nacked.load(Ordering::Relaxed);
    let mut sent: u64 = 0;
    let mut send_error = None;
    let start = Instant::now();
    let send_one = |body: String| {
        let tx = tx.clone();
        async move {
            let confirm = publish(channel, queue, properties, body).await?;
            tx.send(confirm)
                .await
                .map_err(|_| "the connection failed".to_string())
        }
    };

    if let Some(count) = args.count {
        for i in 1..=count {
            if let Some(rate) = args.rate {
                let due = start + Duration::from_secs_f64((i - 1) as f64 / rate);
                tokio::time::sleep_until(due.into()).await;
            }
            if let Err(e) = send_one(format!("{message} {i}")).await {
                send_error = Some(e);
                break;
            }
            sent += 1;
            progress.update(sent, confirmed(&counts));
        }
    } else {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Some(line) = lines
            .next_line()
            .await
            .map_err(|e| format!("reading stdin: {e}"))?
        {
            if line.is_empty() {
                continue;
            }
            if let Err(e) = send_one(line).await {
                send_error = Some(e);
                break;
            }
            sent += 1;
            progress.update(sent, confirmed(&counts));
        }
    }
    drop(tx);

    let result = wait_collector(collector, &counts, &mut progress, sent).await;
    progress.finish(sent, confirmed(&counts));
    result?;
    if let Some(e) = send_error {
        return Err(e);
    }
    let nacked = counts.nacked.load(Ordering::Relaxed);
    if nacked > 0 {
        return Err(format!("the broker nacked {nacked} of {sent} messages"));
    }
    Ok(sent)
}

/// Waits for the collector, redrawing the bar while confirms come in.
async fn wait_collector(
    mut collector: tokio::task::JoinHandle<Result<(), String>>,
    counts: &Counts,
    progress: &mut Progress,
    sent: u64,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            done = &mut collector => {
                return done.map_err(|e| format!("confirm collector failed: {e}"))?;
            }
            _ = tick.tick() => {
                let c = counts.acked.load(Ordering::Relaxed) + counts.nacked.load(Ordering::Relaxed);
                progress.update(sent, c);
            }
        }
    }
}
