//! Many connections at once, for load generators and soak tests.
//!
//! - [`connect_many`]: opens N connections with bounded concurrency, and reports the
//!   rate, the failures (grouped by reason) and each connect's latency.
//! - [`close_many`]: closes them all, politely and within a deadline.
//! - [`source_ips_needed`], [`loopback_source`]: one source address has only the
//!   ephemeral port range (about 28 000 ports on Linux); N source addresses in 127/8
//!   allow N times more connections to one loopback server.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::{ConnectOptions, Connection, Error, Histogram};

/// The result of [`connect_many`].
#[derive(Debug)]
pub struct ConnectMany {
    /// The connections that succeeded, in the order of their index.
    pub connections: Vec<Connection>,
    /// The index of each connection in `connections` (gaps are failures).
    pub indices: Vec<usize>,
    /// How many failed.
    pub failures: usize,
    /// Failures grouped by message, most frequent first (at most 10 kinds).
    pub errors: Vec<(String, usize)>,
    /// From the first connect started to the last one finished.
    pub elapsed: Duration,
    /// Connect plus upgrade time of each successful connection, in microseconds.
    pub latency_us: Histogram,
}

impl ConnectMany {
    /// Successful connections per second.
    pub fn rate(&self) -> f64 {
        self.connections.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Opens `count` connections, at most `concurrency` in progress at a time; connection
/// `i` is made with `options(i)` (each attempt bounded by its `connect_timeout`).
/// Failures are counted, not returned: a load test wants to know how many and why.
pub async fn connect_many<F>(count: usize, concurrency: usize, mut options: F) -> ConnectMany
where
    F: FnMut(usize) -> ConnectOptions,
{
    let concurrency = concurrency.max(1);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut done: Vec<(usize, Connection)> = Vec::with_capacity(count);
    let mut errors: HashMap<String, usize> = HashMap::new();
    let mut latency_us = Histogram::new();
    let mut failures = 0;
    let mut next = 0;
    while next < count || !tasks.is_empty() {
        while next < count && tasks.len() < concurrency {
            let opts = options(next);
            let i = next;
            tasks.spawn(async move {
                let began = Instant::now();
                (i, Connection::connect(opts).await, began.elapsed())
            });
            next += 1;
        }
        match tasks.join_next().await {
            Some(Ok((i, Ok(conn), took))) => {
                latency_us.record(took.as_micros() as u64);
                done.push((i, conn));
            }
            Some(Ok((_, Err(e), _))) => {
                failures += 1;
                *errors.entry(describe(&e)).or_default() += 1;
            }
            Some(Err(e)) => {
                failures += 1;
                *errors
                    .entry(format!("connect task failed: {e}"))
                    .or_default() += 1;
            }
            None => {}
        }
    }
    let elapsed = start.elapsed();
    done.sort_unstable_by_key(|(i, _)| *i);
    let (indices, connections) = done.into_iter().unzip();
    let mut errors: Vec<(String, usize)> = errors.into_iter().collect();
    errors.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if errors.len() > 10 {
        let rest: usize = errors[9..].iter().map(|(_, n)| n).sum();
        errors.truncate(9);
        errors.push(("other errors".into(), rest));
    }
    ConnectMany {
        connections,
        indices,
        failures,
        errors,
        elapsed,
        latency_us,
    }
}

/// An error's message, with the remedy for the one every large test meets first.
fn describe(e: &Error) -> String {
    let mut msg = e.to_string();
    if let Error::Io(io) = e {
        if io.raw_os_error() == Some(24) {
            msg.push_str(" (raise the open-file limit: ulimit -n)");
        } else if io.kind() == std::io::ErrorKind::AddrNotAvailable
            || io.kind() == std::io::ErrorKind::AddrInUse
        {
            msg.push_str(" (out of ephemeral ports: spread over more source addresses)");
        }
    }
    msg.chars().take(200).collect()
}

/// Closes every connection (1000, waiting for the server's reply), at most `concurrency`
/// at a time; whatever is not closed by `deadline` is dropped (the TCP connection then
/// just ends). Returns how many were closed with a complete handshake.
pub async fn close_many(
    connections: Vec<Connection>,
    concurrency: usize,
    deadline: Duration,
) -> usize {
    let concurrency = concurrency.max(1);
    let mut pending = connections.into_iter();
    let mut tasks = JoinSet::new();
    let mut closed = 0;
    let work = async {
        loop {
            while tasks.len() < concurrency {
                let Some(conn) = pending.next() else { break };
                tasks.spawn(conn.close());
            }
            match tasks.join_next().await {
                Some(Ok(Ok(()))) => closed += 1,
                Some(_) => {}
                None => break,
            }
        }
    };
    let _ = tokio::time::timeout(deadline, work).await;
    // Dropping the JoinSet aborts the closes still running.
    closed
}

/// The size of the local ephemeral port range (Linux), or the usual default.
pub fn ephemeral_ports() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u32>().ok());
            let (low, high) = (it.next()??, it.next()??);
            Some(high.saturating_sub(low) + 1)
        })
        .unwrap_or(28_232)
}

/// How many loopback source addresses `connections` to one server need: each address
/// gets at most 90 % of the ephemeral range (the rest is left for other sockets).
pub fn source_ips_needed(connections: usize) -> u32 {
    let per_ip = (u64::from(ephemeral_ports()) * 9 / 10).max(1);
    let n = (connections as u64).div_ceil(per_ip).max(1);
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// The source address for connection `i` when spreading over `spread` loopback
/// addresses 127.0.0.1, 127.0.0.2, ...: `None` when `spread` is at most 1 (do not bind,
/// so a non-loopback server stays reachable).
pub fn loopback_source(i: usize, spread: u32) -> Option<IpAddr> {
    if spread <= 1 {
        return None;
    }
    // Stay inside 127/8: at most 2^24 - 2 addresses.
    let spread = spread.min((1 << 24) - 2);
    let k = (i % spread as usize) as u32;
    Some(IpAddr::V4(Ipv4Addr::from(
        u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_sources_spread_round_robin() {
        assert_eq!(loopback_source(5, 1), None);
        assert_eq!(loopback_source(5, 0), None);
        let ip = |s: &str| s.parse::<IpAddr>().ok();
        assert_eq!(loopback_source(0, 3), ip("127.0.0.1"));
        assert_eq!(loopback_source(2, 3), ip("127.0.0.3"));
        assert_eq!(loopback_source(3, 3), ip("127.0.0.1"));
        assert_eq!(loopback_source(255, 1000), ip("127.0.1.0"));
    }

    #[test]
    fn enough_source_addresses_for_the_count() {
        let per_ip = ephemeral_ports() as usize * 9 / 10;
        assert_eq!(source_ips_needed(0), 1);
        assert_eq!(source_ips_needed(per_ip), 1);
        assert_eq!(source_ips_needed(per_ip + 1), 2);
        assert_eq!(source_ips_needed(per_ip * 5), 5);
    }

    #[test]
    fn the_open_file_limit_error_says_what_to_do() {
        let e = Error::Io(std::io::Error::from_raw_os_error(24));
        assert!(describe(&e).contains("ulimit -n"), "{}", describe(&e));
    }

    #[tokio::test]
    async fn failures_are_counted_and_grouped() {
        // Nothing listens on port 1 of 127.0.0.1: every connect is refused, quickly.
        let report = connect_many(5, 2, |_| ConnectOptions::new("ws://127.0.0.1:1/")).await;
        assert_eq!(report.connections.len(), 0);
        assert_eq!(report.failures, 5);
        assert_eq!(report.errors.len(), 1, "{:?}", report.errors);
        assert_eq!(report.errors[0].1, 5);
    }
}
