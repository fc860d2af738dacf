//! `minimq-bench`: a load generator in the spirit of RabbitMQ's PerfTest, on
//! `minimq-client`. Producers and consumers each get their own connection; every message
//! carries its producer, sequence number and send time, so the run reports throughput,
//! end-to-end latency percentiles, and whether every message arrived exactly once.
//!
//! ```text
//! minimq-bench --producers 2 --consumers 2 --size 1024 --confirm 100 --duration 10
//! minimq-bench --count 10000 --rate 1000 --persistent --durable --json
//! minimq-bench --fill 1000000 --size 16 --json      # publish only, leave them queued
//! minimq-bench --drain --prefetch 100 --json        # consume what is queued, then stop
//! minimq-bench --connections 5000 --broker-pid PID  # broker memory per idle connection
//! minimq-bench --queues 20000 --broker-pid PID       # per empty queue, declare/delete rates
//! minimq-bench --tx 100 --persistent --durable      # tx.select, tx.commit every 100
//! ```
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use minimq_cli::bench::{decode, encode, loopback_round_trip, now_nanos, percentile, Ledger};
use minimq_cli::{connect, fail, interrupt_token, one_line, DEFAULT_URL};
use minimq_client::{
    BasicConsumeOptions, BasicProperties, Confirmation, FieldTable, QueueDeclareOptions,
};
use serde_json::json;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// The same allocator as `minimq-server`: the client allocates per message (strings of
/// each delivery, publish requests), and glibc's malloc was a tenth of its CPU.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Messages per `tx.commit` when `--tx` is given without a count: RabbitMQ's
/// PerfTest users commonly batch a hundred, which keeps a commit's round trip (and,
/// for persistent messages, its sync) to a small share of each message.
const DEFAULT_TX_BATCH: &str = "100";

/// How long consumers may go without a message, after the producers finished, before
/// the run stops waiting for the rest.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Load test for minimq / RabbitMQ (modelled on RabbitMQ's PerfTest).
#[derive(Debug, Parser)]
#[command(name = "minimq-bench", version, about)]
struct Args {
    /// Broker URL.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_URL)]
    url: String,
    /// CA certificate (PEM) to trust for an amqps:// URL instead of the system's store.
    #[arg(long, env = "AMQP_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    /// Queue to use (declared, and purged before the run).
    #[arg(long, default_value = "minimq-bench")]
    queue: String,
    /// Producer connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    producers: u32,
    /// Consumer connections (0: publish only, no delivery check).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=1000))]
    consumers: u32,
    /// Message size in bytes (at least the 20-byte header).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Consumer prefetch (basic.qos; 0 = unlimited).
    #[arg(long, default_value_t = 100)]
    prefetch: u16,
    /// Consume with auto-ack (no_ack).
    #[arg(long)]
    auto_ack: bool,
    /// Acknowledge every K messages with multiple=true (1 = each message).
    #[arg(long, default_value_t = 1, value_name = "K")]
    multi_ack: u32,
    /// Send persistent messages (delivery-mode 2).
    #[arg(long)]
    persistent: bool,
    /// Declare the queue durable.
    #[arg(long)]
    durable: bool,
    /// Publisher confirms with at most WINDOW unconfirmed messages per producer.
    #[arg(long, value_name = "WINDOW")]
    confirm: Option<u32>,
    /// Transactions: `tx.select` on each producer's channel and a `tx.commit` after
    /// every N messages (and one for the rest at the end).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = DEFAULT_TX_BATCH,
          conflicts_with = "confirm")]
    tx: Option<u32>,
    /// Run for SECS seconds [default: 10 unless --count is given].
    #[arg(long, value_name = "SECS", conflicts_with = "count")]
    duration: Option<f64>,
    /// Messages per producer.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// Messages per second per producer (default: as fast as possible).
    #[arg(long, value_name = "R")]
    rate: Option<f64>,
    /// Fill mode: publish N messages in all (split over the producers) with no
    /// consumers, and leave them in the queue (for a later --drain).
    #[arg(long, value_name = "N", conflicts_with_all = ["count", "duration", "drain"])]
    fill: Option<u64>,
    /// Drain mode: no producers and no purge; consume the messages already in the queue
    /// (its count at the start) and stop when they have all arrived.
    #[arg(long, conflicts_with_all = ["count", "duration", "rate"])]
    drain: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Measure the machine instead: N 16-byte round trips over loopback TCP between two
    /// threads (no broker), and print the mean round trip.
    #[arg(long, value_name = "N", conflicts_with_all = ["count", "duration", "fill", "drain"])]
    loopback_rtt: Option<u32>,
    /// Measure the broker's cost of idle connections instead: open N (logged in, no
    /// channel), report its RSS growth per connection (with --broker-pid), close them.
    #[arg(long, value_name = "N", conflicts_with_all = ["count", "duration", "fill", "drain", "queues"])]
    connections: Option<u64>,
    /// Measure the broker's cost of empty queues instead: declare N, report its RSS
    /// growth per queue (with --broker-pid) and the declare and delete rates, delete them.
    #[arg(long, value_name = "N", conflicts_with_all = ["count", "duration", "fill", "drain"])]
    queues: Option<u64>,
    /// The broker's process id, on this machine: its RSS is read from /proc.
    #[arg(long, value_name = "PID")]
    broker_pid: Option<u32>,
}

/// Runs a producer or consumer on a thread of its own, with its own single-threaded
/// runtime, as PerfTest gives each one a thread: its connection's task and the loop
/// using it take turns on that thread instead of waking each other across threads.
fn own_thread<T, F, Fut>(make: F) -> oneshot::Receiver<Result<T, String>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<T, String>> + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        let result = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            // Spawned rather than run as the `block_on` future: tokio polls its driver
            // (an `epoll_wait`) each time it comes back to that future, which would be
            // once per message for a consumer woken by its connection's task.
            Ok(rt) => rt.block_on(async move {
                tokio::spawn(make())
                    .await
                    .unwrap_or_else(|e| Err(format!("task failed: {e}")))
            }),
            Err(e) => Err(format!("cannot start a runtime: {e}")),
        };
        let _ = tx.send(result);
    });
    rx
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    if let Some(n) = args.loopback_rtt {
        match loopback_round_trip(n) {
            Ok(rtt) if args.json => println!(
                "{}",
                json!({ "round_trips": n, "rtt_us": rtt.as_secs_f64() * 1e6 })
            ),
            Ok(rtt) => println!(
                "loopback TCP round trip (16 B, {n} times): {:.1} µs",
                rtt.as_secs_f64() * 1e6
            ),
            Err(e) => fail("minimq-bench", &format!("loopback round trip: {e}")),
        }
        return;
    }
    let objects = match (args.connections, args.queues) {
        (Some(n), _) => Some(
            minimq_cli::objects::connections(
                &args.url,
                args.ca_cert.as_deref(),
                n,
                args.broker_pid,
            )
            .await,
        ),
        (_, Some(n)) => Some(
            minimq_cli::objects::queues(&args.url, args.ca_cert.as_deref(), n, args.broker_pid)
                .await,
        ),
        _ => None,
    };
    if let Some(report) = objects {
        match report {
            Ok(r) if args.json => println!("{}", r.to_json()),
            Ok(r) => println!("{}", r.line()),
            Err(e) => fail("minimq-bench", &e),
        }
        return;
    }
    if let Err(e) = validate(&args) {
        fail("minimq-bench", &e);
    }
    match run(args).await {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => fail("minimq-bench", &e),
    }
}

fn validate(args: &Args) -> Result<(), String> {
    if let Some(d) = args.duration {
        if !(d.is_finite() && d > 0.0) {
            return Err(format!("--duration must be positive, not {d}"));
        }
    }
    if let Some(r) = args.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!("--rate must be positive, not {r}"));
        }
    }
    if args.confirm == Some(0) {
        return Err("--confirm needs a window of at least 1".into());
    }
    if args.tx == Some(0) {
        return Err("--tx needs at least 1 message per commit".into());
    }
    if args.drain && args.consumers == 0 {
        return Err("--drain needs at least one consumer".into());
    }
    if args.fill == Some(0) {
        return Err("--fill needs at least one message".into());
    }
    if args.multi_ack == 0 {
        return Err("--multi-ack must be at least 1".into());
    }
    if !args.auto_ack && args.prefetch != 0 && args.multi_ack > u32::from(args.prefetch) {
        return Err(format!(
            "--multi-ack {} is larger than --prefetch {}: consumers would stall waiting for \
             messages the broker will not send before an ack",
            args.multi_ack, args.prefetch
        ));
    }
    Ok(())
}

/// A passive `queue.declare` of `queue`: its counts, answered after everything sent on
/// the channel before it.
async fn passive_declare(
    ch: &minimq_client::Channel,
    queue: &str,
) -> minimq_client::Result<minimq_client::DeclaredQueue> {
    let options = QueueDeclareOptions {
        passive: true,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(queue, options, FieldTable::new()).await
}

/// What one producer did.
#[derive(Debug, Default)]
struct ProducerStats {
    sent: u64,
    confirmed: u64,
    nacked: u64,
    /// Messages in transactions that committed.
    committed: u64,
    commits: u64,
}

/// `tx.commit`s the `n` messages published since the last one.
async fn commit(
    ch: &minimq_client::Channel,
    stats: &mut ProducerStats,
    n: u64,
) -> Result<(), String> {
    ch.tx_commit()
        .await
        .map_err(|e| format!("tx.commit failed: {}", one_line(&e.to_string())))?;
    stats.committed += n;
    stats.commits += 1;
    Ok(())
}

/// What one consumer saw.
#[derive(Debug, Default)]
struct ConsumerStats {
    ledger: Ledger,
    latencies_us: Vec<u64>,
}

async fn run(args: Args) -> Result<bool, String> {
    let args = Arc::new(args);
    let interrupted = interrupt_token();

    // Declare and purge the queue.
    let setup = connect(&args.url, args.ca_cert.as_deref()).await?;
    let ch = setup
        .open_channel()
        .await
        .map_err(|e| format!("cannot open a channel: {e}"))?;
    let options = QueueDeclareOptions {
        durable: args.durable,
        ..QueueDeclareOptions::default()
    };
    ch.queue_declare(&args.queue, options, FieldTable::new())
        .await
        .map_err(|e| {
            format!(
                "cannot declare queue '{}' (durable={}): {}",
                args.queue,
                args.durable,
                one_line(&e.to_string())
            )
        })?;
    // Drain mode consumes what the queue holds now; every other mode starts empty.
    let expected = if args.drain {
        passive_declare(&ch, &args.queue)
            .await
            .map_err(|e| format!("cannot count '{}': {e}", args.queue))?
            .message_count as u64
    } else {
        ch.queue_purge(&args.queue)
            .await
            .map_err(|e| format!("cannot purge '{}': {e}", args.queue))?;
        0
    };
    let _ = setup.close().await;
    let consumer_count = if args.fill.is_some() {
        0
    } else {
        args.consumers
    };
    let producer_count = if args.drain { 0 } else { args.producers };
    // In drain mode the clock starts with the first consumer (it receives at once).
    let drain_start = Instant::now();

    // Consumers first, so nothing piles up in the queue.
    let received = Arc::new(AtomicU64::new(0));
    let stop_consumers = CancellationToken::new();
    let mut consumers = Vec::new();
    for _ in 0..consumer_count {
        let (args, received, stop) = (args.clone(), received.clone(), stop_consumers.clone());
        let (ready_tx, ready_rx) = oneshot::channel::<()>();
        consumers.push(own_thread(move || async move {
            let conn = connect(&args.url, args.ca_cert.as_deref()).await?;
            let ch = conn
                .open_channel()
                .await
                .map_err(|e| format!("cannot open a channel: {e}"))?;
            if !args.auto_ack {
                ch.basic_qos(args.prefetch, false)
                    .await
                    .map_err(|e| format!("basic.qos failed: {e}"))?;
            }
            let opts = BasicConsumeOptions {
                no_ack: args.auto_ack,
                ..BasicConsumeOptions::default()
            };
            let mut consumer = ch
                .basic_consume(&args.queue, "", opts, FieldTable::new())
                .await
                .map_err(|e| format!("cannot consume: {}", one_line(&e.to_string())))?;
            let _ = ready_tx.send(());
            let mut stats = ConsumerStats::default();
            let mut pending = 0u32;
            let mut last_tag = 0u64;
            loop {
                let delivery = tokio::select! {
                    // Deliveries first: `stop` is polled (and registers a waiter) only
                    // when none is ready.
                    biased;
                    d = consumer.next() => match d {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Err(format!("consumer failed: {}", one_line(&e.to_string()))),
                        None => break,
                    },
                    _ = stop.cancelled() => break,
                };
                let now = now_nanos();
                match decode(&delivery.body) {
                    Some((producer, seq, sent)) => {
                        stats.ledger.record(producer, seq);
                        stats.latencies_us.push(now.saturating_sub(sent) / 1000);
                    }
                    None => stats.ledger.foreign += 1,
                }
                received.fetch_add(1, Ordering::Relaxed);
                if !args.auto_ack {
                    if args.multi_ack <= 1 {
                        delivery.ack().await.map_err(|e| format!("ack failed: {e}"))?;
                    } else {
                        pending += 1;
                        last_tag = delivery.delivery_tag;
                        if pending >= args.multi_ack {
                            ch.basic_ack(last_tag, true)
                                .await
                                .map_err(|e| format!("ack failed: {e}"))?;
                            pending = 0;
                        }
                    }
                }
            }
            if pending > 0 {
                let _ = ch.basic_ack(last_tag, true).await;
            }
            let _ = conn.close().await;
            Ok::<ConsumerStats, String>(stats)
        }));
        // Each consume is registered before the next consumer, and any producer, starts.
        if ready_rx.await.is_err() {
            let failed = consumers.pop();
            return Err(match failed {
                Some(f) => match f.await {
                    Ok(Err(e)) => e,
                    _ => "a consumer thread failed".into(),
                },
                None => "a consumer thread failed".into(),
            });
        }
    }

    // Producers.
    let start = Instant::now();
    let deadline = match (args.count, args.duration) {
        _ if args.fill.is_some() || args.drain => None,
        (Some(_), _) => None,
        (None, d) => Some(start + Duration::from_secs_f64(d.unwrap_or(10.0))),
    };
    let sent_total = Arc::new(AtomicU64::new(0));
    // Nanoseconds the producers' connections spent blocked (`connection.blocked` to
    // `connection.unblocked`), summed over the producers.
    let blocked_ns = Arc::new(AtomicU64::new(0));
    let mut producers = Vec::new();
    for id in 0..producer_count {
        let (args, sent_total, interrupted, blocked_ns) = (
            args.clone(),
            sent_total.clone(),
            interrupted.clone(),
            blocked_ns.clone(),
        );
        // --fill N splits N over the producers; --count N is per producer.
        let limit = match args.fill {
            Some(n) => {
                let p = u64::from(args.producers);
                Some(n / p + u64::from(u64::from(id) < n % p))
            }
            None => args.count,
        };
        producers.push(own_thread(move || async move {
            let conn = connect(&args.url, args.ca_cert.as_deref()).await?;
            tokio::spawn(count_blocked(conn.blocked(), blocked_ns));
            let ch = conn
                .open_channel()
                .await
                .map_err(|e| format!("cannot open a channel: {e}"))?;
            if args.confirm.is_some() {
                ch.confirm_select()
                    .await
                    .map_err(|e| format!("confirm.select failed: {e}"))?;
            }
            if args.tx.is_some() {
                ch.tx_select()
                    .await
                    .map_err(|e| format!("tx.select failed: {e}"))?;
            }
            let tx_batch = u64::from(args.tx.unwrap_or(0));
            let props = BasicProperties {
                delivery_mode: Some(if args.persistent { 2 } else { 1 }),
                ..BasicProperties::default()
            };
            let window = args.confirm.unwrap_or(0) as usize;
            let mut outstanding = VecDeque::new();
            let mut stats = ProducerStats::default();
            let settle = |c: Confirmation, stats: &mut ProducerStats| match c {
                Confirmation::Ack => stats.confirmed += 1,
                Confirmation::Nack => stats.nacked += 1,
                Confirmation::NotRequested => {}
            };
            let mut seq = 0u64;
            loop {
                // The clock every 64 messages: at most 64 µs late at a million a second.
                if limit.is_some_and(|n| seq >= n)
                    || (seq.is_multiple_of(64) && deadline.is_some_and(|d| Instant::now() >= d))
                    || interrupted.is_cancelled()
                {
                    break;
                }
                if let Some(rate) = args.rate {
                    let due = start + Duration::from_secs_f64(seq as f64 / rate);
                    tokio::select! {
                        _ = tokio::time::sleep_until(due.into()) => {}
                        _ = interrupted.cancelled() => break,
                    }
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        break;
                    }
                }
                let body = encode(id, seq, now_nanos(), args.size);
                let confirm = ch
                    .basic_publish("", &args.queue, false, &props, body)
                    .await
                    .map_err(|e| format!("publish failed: {}", one_line(&e.to_string())))?;
                seq += 1;
                sent_total.fetch_add(1, Ordering::Relaxed);
                if tx_batch > 0 && seq.is_multiple_of(tx_batch) {
                    commit(&ch, &mut stats, tx_batch).await?;
                }
                if window > 0 {
                    outstanding.push_back(confirm);
                    while outstanding.len() >= window {
                        let Some(c) = outstanding.pop_front() else {
                            break;
                        };
                        let c = c.await;
                        settle(c.map_err(|e| format!("confirm failed: {e}"))?, &mut stats);
                    }
                }
            }
            while let Some(c) = outstanding.pop_front() {
                settle(
                    c.await.map_err(|e| format!("confirm failed: {e}"))?,
                    &mut stats,
                );
            }
            stats.sent = seq;
            let uncommitted = if tx_batch > 0 { seq % tx_batch } else { 0 };
            if uncommitted > 0 {
                commit(&ch, &mut stats, uncommitted).await?;
            }
            // A synchronous call is answered only after the broker has handled every
            // publish sent before it on the channel, however long its flow control holds
            // them back; a close alone gives up after the client's close timeout.
            passive_declare(&ch, &args.queue)
                .await
                .map_err(|e| format!("waiting for the broker to take the publishes: {e}"))?;
            conn.close()
                .await
                .map_err(|e| format!("closing a producer failed: {e}"))?;
            Ok::<ProducerStats, String>(stats)
        }));
    }

    let mut per_producer = Vec::new();
    let mut first_error = None;
    for p in producers {
        match p.await {
            Ok(Ok(stats)) => per_producer.push(stats),
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
                per_producer.push(ProducerStats::default());
            }
            Err(e) => {
                first_error.get_or_insert(format!("producer task failed: {e}"));
                per_producer.push(ProducerStats::default());
            }
        }
    }
    let publish_elapsed = start.elapsed();
    let sent: u64 = per_producer.iter().map(|p| p.sent).sum();

    // Let the consumers drain what was sent, stopping if they stall.
    let target = if args.drain { expected } else { sent };
    if consumer_count > 0 && first_error.is_none() {
        let mut last = received.load(Ordering::Relaxed);
        let mut last_progress = Instant::now();
        while received.load(Ordering::Relaxed) < target && !interrupted.is_cancelled() {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let now = received.load(Ordering::Relaxed);
            if now != last {
                last = now;
                last_progress = Instant::now();
            } else if last_progress.elapsed() > DRAIN_TIMEOUT {
                break;
            }
        }
    }
    let receive_elapsed = if args.drain {
        drain_start.elapsed()
    } else {
        start.elapsed()
    };
    stop_consumers.cancel();
    let mut ledger = Ledger::default();
    let mut latencies = Vec::new();
    for c in consumers {
        match c.await {
            Ok(Ok(stats)) => {
                ledger.merge(&stats.ledger);
                latencies.extend(stats.latencies_us);
            }
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("consumer task failed: {e}"));
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }

    latencies.sort_unstable();
    // A drain knows no send counts: each producer's messages must be 0..=highest seen,
    // and as many as the queue held must arrive.
    let sent_each: Vec<u64> = if args.drain {
        ledger.extent()
    } else {
        per_producer.iter().map(|p| p.sent).collect()
    };
    let (mut missing, duplicates) = ledger.check(&sent_each);
    let confirmed: u64 = per_producer.iter().map(|p| p.confirmed).sum();
    let nacked: u64 = per_producer.iter().map(|p| p.nacked).sum();
    let committed: u64 = per_producer.iter().map(|p| p.committed).sum();
    let commits: u64 = per_producer.iter().map(|p| p.commits).sum();
    let received_n = latencies.len() as u64 + ledger.foreign;
    let rate = |n: u64, d: Duration| {
        if d.as_secs_f64() > 0.0 {
            n as f64 / d.as_secs_f64()
        } else {
            0.0
        }
    };
    let ms = |us: u64| us as f64 / 1000.0;
    if args.drain {
        missing = missing.max(expected.saturating_sub(received_n));
    }
    let checked = consumer_count > 0;
    let exactly_once = !checked || (missing == 0 && duplicates == 0);
    let mode = if args.drain {
        "drain"
    } else if args.fill.is_some() {
        "fill"
    } else {
        "run"
    };
    let report = json!({
        "mode": mode,
        "producers": producer_count,
        "consumers": consumer_count,
        "expected": if args.drain { expected } else { sent },
        "size": args.size.max(minimq_cli::bench::HEADER_LEN),
        "elapsed_s": publish_elapsed.as_secs_f64(),
        "sent": sent,
        "sent_rate": rate(sent, publish_elapsed),
        "confirmed": confirmed,
        "nacked": nacked,
        "confirmed_rate": rate(confirmed, publish_elapsed),
        "committed": committed,
        "commits": commits,
        "committed_rate": rate(committed, publish_elapsed),
        "received": received_n,
        "received_rate": rate(received_n, receive_elapsed),
        "latency_ms": {
            "p50": ms(percentile(&latencies, 50.0)),
            "p95": ms(percentile(&latencies, 95.0)),
            "p99": ms(percentile(&latencies, 99.0)),
            "max": ms(latencies.last().copied().unwrap_or(0)),
        },
        "missing": missing,
        "duplicates": duplicates,
        "blocked_s": blocked_ns.load(Ordering::Relaxed) as f64 / 1e9,
        "exactly_once": exactly_once,
    });
    if args.json {
        println!("{report}");
    } else {
        // A plain run keeps the line that scripts and tests look for.
        let prefix = if mode == "run" {
            String::new()
        } else {
            format!("{mode}: ")
        };
        println!(
            "{prefix}{} producer(s), {} consumer(s), {} B messages, {:.2} s",
            producer_count,
            consumer_count,
            report["size"],
            publish_elapsed.as_secs_f64()
        );
        println!(
            "sent:      {sent} msg, {:.0} msg/s",
            rate(sent, publish_elapsed)
        );
        if args.confirm.is_some() {
            println!(
                "confirmed: {confirmed} msg, {:.0} msg/s, nacked {nacked}",
                rate(confirmed, publish_elapsed)
            );
        }
        if args.tx.is_some() {
            println!(
                "committed: {committed} msg in {commits} tx.commit, {:.0} msg/s",
                rate(committed, publish_elapsed)
            );
        }
        if checked {
            if args.drain {
                println!("queued:    {expected} msg at the start");
            }
            println!(
                "received:  {received_n} msg, {:.0} msg/s",
                rate(received_n, receive_elapsed)
            );
            println!(
                "latency:   p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                ms(percentile(&latencies, 50.0)),
                ms(percentile(&latencies, 95.0)),
                ms(percentile(&latencies, 99.0)),
                ms(latencies.last().copied().unwrap_or(0))
            );
            println!(
                "delivery:  {} (missing {missing}, duplicates {duplicates})",
                if exactly_once {
                    "every message exactly once"
                } else {
                    "NOT exactly once"
                }
            );
        }
    }
    if !exactly_once {
        eprintln!("minimq-bench: error: {missing} message(s) missing, {duplicates} duplicate(s)");
    }
    Ok(exactly_once)
}

/// Adds to `total` the time the connection spends blocked by the broker (a resource
/// alarm), from each `connection.blocked` to its `connection.unblocked`.
async fn count_blocked(
    mut state: tokio::sync::watch::Receiver<minimq_client::BlockedState>,
    total: Arc<AtomicU64>,
) {
    let mut since: Option<Instant> = None;
    loop {
        let blocked = state.borrow_and_update().is_blocked();
        match (blocked, since) {
            (true, None) => since = Some(Instant::now()),
            (false, Some(t)) => {
                total.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                since = None;
            }
            _ => {}
        }
        if state.changed().await.is_err() {
            if let Some(t) = since {
                total.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
            }
            return;
        }
    }
}
