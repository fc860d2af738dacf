//! The pure parts of `minimq-bench`: the message header that carries the producer, the
//! sequence number and the send time; latency percentiles; the exactly-once ledger; and
//! the loopback round trip the machine allows.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Bytes of the header every benchmark message starts with: producer id (u32), sequence
/// number (u64), send time in nanoseconds since the Unix epoch (u64), big-endian.
pub const HEADER_LEN: usize = 20;

/// Nanoseconds since the Unix epoch, now.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A body of `size` bytes (at least [`HEADER_LEN`]) carrying the header, padded with `.`-free
/// filler.
pub fn encode(producer: u32, seq: u64, sent_nanos: u64, size: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(size.max(HEADER_LEN));
    body.extend_from_slice(&producer.to_be_bytes());
    body.extend_from_slice(&seq.to_be_bytes());
    body.extend_from_slice(&sent_nanos.to_be_bytes());
    body.resize(size.max(HEADER_LEN), b'x');
    body
}

/// The header of a benchmark body: (producer, seq, sent_nanos); `None` if too short.
pub fn decode(body: &[u8]) -> Option<(u32, u64, u64)> {
    if body.len() < HEADER_LEN {
        return None;
    }
    let producer = u32::from_be_bytes(body[0..4].try_into().ok()?);
    let seq = u64::from_be_bytes(body[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(body[12..20].try_into().ok()?);
    Some((producer, seq, sent))
}

/// The mean time of `n` 16-byte round trips over loopback TCP between two threads with
/// blocking sockets (`TCP_NODELAY`): what one synchronous request and answer cost on this
/// machine before any protocol work, so a ceiling for a consumer with prefetch 1, which
/// gets the next message only after the broker has its ack.
pub fn loopback_round_trip(n: u32) -> std::io::Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut socket, _) = listener.accept()?;
        socket.set_nodelay(true)?;
        let mut buf = [0u8; 16];
        loop {
            match socket.read_exact(&mut buf) {
                Ok(()) => socket.write_all(&buf)?,
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    });
    let mut socket = TcpStream::connect(addr)?;
    socket.set_nodelay(true)?;
    let mut buf = [0u8; 16];
    let start = Instant::now();
    for i in 0..n {
        let ping = [i as u8; 16];
        socket.write_all(&ping)?;
        socket.read_exact(&mut buf)?;
        if buf != ping {
            return Err(std::io::Error::other("the echo differs from the ping"));
        }
    }
    let elapsed = start.elapsed();
    drop(socket);
    echo.join()
        .map_err(|_| std::io::Error::other("echo thread panicked"))??;
    Ok(elapsed / n.max(1))
}

/// The `p`-th percentile (0..=100) of sorted values, nearest-rank; 0 for none.
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// How many times each (producer, seq) arrived.
#[derive(Debug, Default, Clone)]
pub struct Ledger {
    seen: Vec<Vec<u16>>,
    /// Bodies without a benchmark header (not ours).
    pub foreign: u64,
}

impl Ledger {
    /// Records one arrival.
    pub fn record(&mut self, producer: u32, seq: u64) {
        let p = producer as usize;
        if self.seen.len() <= p {
            self.seen.resize(p + 1, Vec::new());
        }
        let v = &mut self.seen[p];
        let s = seq as usize;
        if v.len() <= s {
            v.resize(s + 1, 0);
        }
        v[s] = v[s].saturating_add(1);
    }

    /// Adds another ledger's arrivals.
    pub fn merge(&mut self, other: &Ledger) {
        self.foreign += other.foreign;
        for (p, counts) in other.seen.iter().enumerate() {
            for (s, &n) in counts.iter().enumerate() {
                for _ in 0..n {
                    self.record(p as u32, s as u64);
                }
            }
        }
    }

    /// For each producer seen, one more than the highest sequence number that arrived:
    /// what it must have sent when the send counts are unknown (a drain).
    pub fn extent(&self) -> Vec<u64> {
        self.seen.iter().map(|v| v.len() as u64).collect()
    }

    /// (missing, duplicates) given how many messages each producer sent (seqs 0..n).
    pub fn check(&self, sent_per_producer: &[u64]) -> (u64, u64) {
        let mut missing = 0;
        let mut duplicates = 0;
        for (p, &sent) in sent_per_producer.iter().enumerate() {
            let counts = self.seen.get(p).map(Vec::as_slice).unwrap_or(&[]);
            for s in 0..sent as usize {
                match counts.get(s).copied().unwrap_or(0) {
                    0 => missing += 1,
                    n => duplicates += u64::from(n - 1),
                }
            }
            // Arrivals of seqs never sent (cannot happen unless the queue held old ones).
            duplicates += counts
                .iter()
                .skip(sent as usize)
                .map(|&n| u64::from(n))
                .sum::<u64>();
        }
        for counts in self.seen.iter().skip(sent_per_producer.len()) {
            duplicates += counts.iter().map(|&n| u64::from(n)).sum::<u64>();
        }
        (missing, duplicates)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_round_trips_are_measured_over_a_real_echo() {
        let rtt = loopback_round_trip(200).expect("round trips");
        assert!(
            rtt > Duration::ZERO && rtt < Duration::from_secs(1),
            "{rtt:?}"
        );
    }

    #[test]
    fn header_round_trips() {
        let b = encode(7, 123_456, 999, 64);
        assert_eq!(b.len(), 64);
        assert!(!b.contains(&b'.'));
        assert_eq!(decode(&b), Some((7, 123_456, 999)));
        assert_eq!(encode(1, 2, 3, 5).len(), HEADER_LEN);
        assert_eq!(decode(b"short"), None);
    }

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), 50);
        assert_eq!(percentile(&v, 95.0), 95);
        assert_eq!(percentile(&v, 99.0), 99);
        assert_eq!(percentile(&v, 100.0), 100);
        assert_eq!(percentile(&[5], 50.0), 5);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn ledger_counts_missing_and_duplicates() {
        let mut a = Ledger::default();
        a.record(0, 0);
        a.record(0, 1);
        let mut b = Ledger::default();
        b.record(0, 1); // duplicate
        b.record(1, 0);
        a.merge(&b);
        // producer 0 sent 3 (seq 2 missing), producer 1 sent 2 (seq 1 missing)
        assert_eq!(a.check(&[3, 2]), (2, 1));
        assert_eq!(a.check(&[2, 1]), (0, 1));
    }

    #[test]
    fn extent_is_highest_seq_plus_one() {
        let mut a = Ledger::default();
        a.record(0, 4);
        a.record(2, 0);
        assert_eq!(a.extent(), vec![5, 0, 1]);
        assert_eq!(a.check(&a.extent()), (4, 0));
    }
}
