//! `minimq-bench --connections N` and `--queues N`: what many idle objects cost a broker.
//!
//! The broker's resident memory (`VmRSS` of `--broker-pid`, read from `/proc`) is sampled
//! before and after N idle connections are opened (each logged in, no channel, as an idle
//! pika `BlockingConnection` is), or N empty queues are declared on one channel; the
//! difference over N is the cost of one object. Declares and deletes are pipelined over a
//! few channels and timed, so the report also gives their rates.
//!
//! RSS moves in pages and allocators keep freed memory, so the figure is meaningful for a
//! large N (thousands) on a broker that was idle before.

use std::time::{Duration, Instant};

use futures::future::try_join_all;
use minimq_client::{FieldTable, QueueDeclareOptions, QueueDeleteOptions};

use crate::connect;

/// How long the broker gets to settle (finish the last handshakes, return freed memory)
/// before its RSS is sampled.
const SETTLE: Duration = Duration::from_millis(500);

/// Channels the queue declares and deletes are spread over, each with requests in
/// flight, so the rate measured is the broker's and not one round trip's.
const CHURN_CHANNELS: usize = 8;

/// Connections opened at the same time: fast, without flooding the listen backlog.
const CONNECT_PARALLEL: usize = 64;

/// What opening many objects cost.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectsReport {
    /// `connections` or `queues`.
    pub object: &'static str,
    pub count: u64,
    /// Broker RSS before and after (bytes); `None` without `--broker-pid`.
    pub rss_before: Option<u64>,
    pub rss_after: Option<u64>,
    /// `(rss_after - rss_before) / count`.
    pub bytes_per_object: Option<f64>,
    /// Objects opened (declared) per second.
    pub create_rate: f64,
    /// Queues deleted per second (queues only).
    pub delete_rate: Option<f64>,
}

impl ObjectsReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.object,
            "count": self.count,
            "rss_before": self.rss_before,
            "rss_after": self.rss_after,
            "bytes_per_object": self.bytes_per_object,
            "create_rate": self.create_rate,
            "delete_rate": self.delete_rate,
        })
    }

    /// One line for a terminal.
    pub fn line(&self) -> String {
        let mut s = format!(
            "{} {}: {:.0}/s opened",
            self.count, self.object, self.create_rate
        );
        if let Some(d) = self.delete_rate {
            s += &format!(", {d:.0}/s deleted");
        }
        if let Some(b) = self.bytes_per_object {
            s += &format!(", broker RSS {:.1} KiB each", b / 1024.0);
        }
        s
    }
}

/// The resident set size of process `pid`, in bytes.
pub fn rss(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn sample(pid: Option<u32>) -> Result<Option<u64>, String> {
    pid.map(rss).transpose()
}

fn report(
    object: &'static str,
    count: u64,
    before: Option<u64>,
    after: Option<u64>,
    create: Duration,
    delete: Option<Duration>,
) -> ObjectsReport {
    let per = |d: Duration| count as f64 / d.as_secs_f64().max(1e-9);
    ObjectsReport {
        object,
        count,
        rss_before: before,
        rss_after: after,
        bytes_per_object: before
            .zip(after)
            .map(|(b, a)| (a as f64 - b as f64) / count.max(1) as f64),
        create_rate: per(create),
        delete_rate: delete.map(per),
    }
}

/// Opens `n` idle connections to `url`, samples the broker's RSS, closes them.
pub async fn connections(
    url: &str,
    ca_cert: Option<&std::path::Path>,
    n: u64,
    pid: Option<u32>,
) -> Result<ObjectsReport, String> {
    tokio::time::sleep(SETTLE).await;
    let before = sample(pid)?;
    let started = Instant::now();
    let mut open = Vec::new();
    let mut left = n;
    while left > 0 {
        let batch = left.min(CONNECT_PARALLEL as u64);
        open.extend(try_join_all((0..batch).map(|_| connect(url, ca_cert))).await?);
        left -= batch;
    }
    let took = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = sample(pid)?;
    for c in &open {
        let _ = c.close().await;
    }
    Ok(report("connections", n, before, after, took, None))
}

/// Declares `n` empty queues on a few channels of one connection, samples the broker's
/// RSS, deletes them.
pub async fn queues(
    url: &str,
    ca_cert: Option<&std::path::Path>,
    n: u64,
    pid: Option<u32>,
) -> Result<ObjectsReport, String> {
    let conn = connect(url, ca_cert).await?;
    let mut channels = Vec::new();
    for _ in 0..CHURN_CHANNELS {
        channels.push(
            conn.open_channel()
                .await
                .map_err(|e| format!("cannot open a channel: {e}"))?,
        );
    }
    let names: Vec<String> = (0..n).map(|i| format!("minimq-bench-q-{i}")).collect();
    tokio::time::sleep(SETTLE).await;
    let before = sample(pid)?;
    let started = Instant::now();
    try_join_all(channels.iter().enumerate().map(|(k, ch)| {
        let names = &names;
        async move {
            for name in names.iter().skip(k).step_by(CHURN_CHANNELS) {
                ch.queue_declare(name, QueueDeclareOptions::default(), FieldTable::new())
                    .await
                    .map_err(|e| format!("cannot declare queue '{name}': {e}"))?;
            }
            Ok::<_, String>(())
        }
    }))
    .await?;
    let created = started.elapsed();
    tokio::time::sleep(SETTLE).await;
    let after = sample(pid)?;
    let started = Instant::now();
    try_join_all(channels.iter().enumerate().map(|(k, ch)| {
        let names = &names;
        async move {
            for name in names.iter().skip(k).step_by(CHURN_CHANNELS) {
                ch.queue_delete(name, QueueDeleteOptions::default())
                    .await
                    .map_err(|e| format!("cannot delete queue '{name}': {e}"))?;
            }
            Ok::<_, String>(())
        }
    }))
    .await?;
    let deleted = started.elapsed();
    let _ = conn.close().await;
    Ok(report("queues", n, before, after, created, Some(deleted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_rss() {
        let r = rss(std::process::id()).unwrap();
        assert!(
            r > 1024 * 1024,
            "a running test binary has more than 1 MiB resident: {r}"
        );
    }

    #[test]
    fn per_object_is_the_difference_over_the_count() {
        let r = report(
            "queues",
            1000,
            Some(10_000_000),
            Some(14_096_000),
            Duration::from_secs(2),
            Some(Duration::from_secs(1)),
        );
        assert_eq!(r.bytes_per_object, Some(4096.0));
        assert_eq!(r.create_rate, 500.0);
        assert_eq!(r.delete_rate, Some(1000.0));
    }
}
