//! `switchboard-bench`: the load generator every Switchboard benchmark uses.
//!
//! - `idle`: open N WebSocket connections, report the connect rate and the server's
//!   RSS per connection.
//! - `fanout`: N connections spread over G groups, P RESP publishers at a total rate R,
//!   report delivered msgs/s, end-to-end latency percentiles (send timestamp in the
//!   payload), lost messages and per-publisher order violations.
//! - `publish`: RESP `PUBLISH` throughput only; works against redis-server too, for a
//!   side-by-side comparison.
//!
//! Every phase is bounded in time; the bench exits by itself.
#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use switchboard_client::{ConnectOptions, Connection, Incoming, mint_hs256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

#[derive(Debug, Parser)]
#[command(name = "switchboard-bench", about = "Load generator for Switchboard")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
struct Common {
    /// WebSocket URL (several, comma-separated, to spread clients over nodes).
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8001/ws/notifications/",
        value_delimiter = ','
    )]
    ws: Vec<String>,
    /// RESP address of the node to publish to.
    #[arg(long, default_value = "127.0.0.1:6379")]
    resp: String,
    /// Admin address, to read the server's RSS from /metrics.
    #[arg(long, default_value = "127.0.0.1:8002")]
    admin: String,
    /// Read the server's RSS from /proc/PID/status instead of /metrics.
    #[arg(long)]
    server_pid: Option<u32>,
    /// HMAC secret to mint tokens with.
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET")]
    jwt_secret: Option<String>,
    /// Spread client sockets over 127.0.0.1..127.0.0.N (0 = as many as the count needs).
    #[arg(long, default_value_t = 0)]
    source_ips: u32,
    /// Connections opened at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Print one JSON object with the results as well.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open idle connections; report connect rate and server RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// Seconds to hold the connections before measuring and closing.
        #[arg(long, default_value_t = 3)]
        hold: u64,
    },
    /// Fan-out: N connections over G groups, publishers at rate R.
    Fanout {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Total messages per second over all publishers; 0 = as fast as possible.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Seconds of publishing.
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// PUBLISH commands in flight per publisher.
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
    },
    /// RESP PUBLISH throughput only (works against redis-server).
    Publish {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 4)]
        clients: usize,
        #[arg(long, default_value_t = 32)]
        pipeline: usize,
        #[arg(long, default_value_t = 10)]
        duration: u64,
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        #[arg(long, default_value = "bench_nobody")]
        group: String,
        #[arg(long)]
        password: Option<String>,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Idle {
            common,
            connections,
            hold,
        } => idle(common, connections, hold).await,
        Command::Fanout {
            common,
            connections,
            groups,
            rate,
            duration,
            payload_size,
            publishers,
            pipeline,
        } => {
            fanout(
                common,
                connections,
                groups.max(1),
                rate,
                duration,
                payload_size,
                publishers.max(1),
                pipeline.max(1),
            )
            .await
        }
        Command::Publish {
            common,
            clients,
            pipeline,
            duration,
            payload_size,
            group,
            password,
        } => {
            publish(
                common,
                clients,
                pipeline,
                duration,
                payload_size,
                group,
                password,
            )
            .await
        }
    }
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// A log-linear latency histogram over atomics: 1 µs to ~70 s, 64 sub-buckets per power
/// of two (under 1.6 % error). Shared by every reader task without a lock.
struct Histogram {
    buckets: Vec<AtomicU64>,
}

impl Histogram {
    const SUB: u32 = 64;

    fn new() -> Self {
        Histogram {
            buckets: (0..(40 * Self::SUB)).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn index(micros: u64) -> usize {
        let v = micros.max(1);
        let exp = 63 - v.leading_zeros();
        let sub = if exp >= 6 {
            (v >> (exp - 6)) & 63
        } else {
            (v << (6 - exp)) & 63
        };
        ((exp * Self::SUB) as usize + sub as usize).min(40 * Self::SUB as usize - 1)
    }

    fn value(index: usize) -> u64 {
        let exp = index as u32 / Self::SUB;
        let sub = u64::from(index as u32 % Self::SUB);
        let base = 1u64 << exp;
        base + (base * sub) / 64
    }

    fn record(&self, micros: u64) {
        self.buckets[Self::index(micros)].fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    fn percentile(&self, p: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let target = ((total as f64) * p / 100.0).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            seen += b.load(Ordering::Relaxed);
            if seen >= target {
                return Self::value(i);
            }
        }
        0
    }
}

/// The source address for connection `i`.
fn source_ip(common: &Common, i: usize, total: usize) -> Option<IpAddr> {
    let n = if common.source_ips == 0 {
        (total / 20_000 + 1) as u32
    } else {
        common.source_ips
    };
    (n > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i as u32 % n.min(250)) as u8)))
}

fn token(common: &Common, user: usize, groups: &[String]) -> anyhow::Result<String> {
    let secret = common
        .jwt_secret
        .as_deref()
        .context("--jwt-secret (or SWITCHBOARD_JWT_SECRET) is needed to mint tokens")?;
    let exp = unix_nanos() / 1_000_000_000 + 3600;
    Ok(mint_hs256(
        secret,
        &serde_json::json!({"user_id": user, "token_type": "access", "exp": exp, "groups": groups}),
    )?)
}

/// Opens `n` connections with bounded concurrency; returns them and the connect time.
async fn connect_many(
    common: &Common,
    n: usize,
    groups_of: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<(Vec<Connection>, Duration, usize)> {
    let permits = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let mut opts = ConnectOptions::new(common.ws[i % common.ws.len()].clone());
        opts.token = Some(token(common, i + 1, &groups_of(i))?);
        opts.local_addr = source_ip(common, i, n);
        let permit = permits.clone().acquire_owned().await?;
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            tokio::time::timeout(Duration::from_secs(30), Connection::connect(opts)).await
        }));
    }
    let mut conns = Vec::with_capacity(n);
    let mut failures = 0;
    for t in tasks {
        match t.await {
            Ok(Ok(Ok(c))) => conns.push(c),
            _ => failures += 1,
        }
    }
    Ok((conns, start.elapsed(), failures))
}

async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: b\r\nconnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await??;
    Ok(out)
}

async fn server_rss(common: &Common) -> anyhow::Result<u64> {
    if let Some(pid) = common.server_pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS")?;
        return Ok(kb * 1024);
    }
    let body = http_get(&common.admin, "/metrics").await?;
    body.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("no process_resident_memory_bytes in /metrics")
}

/// Waits until the server reports `n` connections (bounded).
async fn wait_connections(common: &Common, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(body) = http_get(&common.admin, "/metrics").await {
            let have = body
                .lines()
                .find_map(|l| l.strip_prefix("switchboard_connections "))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            if have >= n {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn report(json: bool, rows: &[(&str, String)], value: serde_json::Value) {
    for (k, v) in rows {
        println!("{k:<28} {v}");
    }
    if json {
        println!("{value}");
    }
}

async fn idle(common: Common, n: usize, hold: u64) -> anyhow::Result<()> {
    let before = server_rss(&common).await.ok();
    let (conns, took, failures) = connect_many(&common, n, |_| Vec::new()).await?;
    wait_connections(&common, conns.len()).await;
    tokio::time::sleep(Duration::from_secs(hold)).await;
    let after = server_rss(&common).await.ok();
    let rate = conns.len() as f64 / took.as_secs_f64();
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if !conns.is_empty() => {
            Some(a.saturating_sub(b) as f64 / conns.len() as f64)
        }
        _ => None,
    };
    let total_per_conn = after.map(|a| a as f64 / conns.len().max(1) as f64);
    report(
        common.json,
        &[
            ("connections", conns.len().to_string()),
            ("connect failures", failures.to_string()),
            ("connect rate (conn/s)", format!("{rate:.0}")),
            (
                "server RSS before (MiB)",
                before.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0)),
            ),
            (
                "server RSS after (MiB)",
                after.map_or("-".into(), |a| format!("{:.1}", a as f64 / 1048576.0)),
            ),
            (
                "RSS growth / conn (KiB)",
                per_conn.map_or("-".into(), |p| format!("{:.2}", p / 1024.0)),
            ),
            (
                "total RSS / conn (KiB)",
                total_per_conn.map_or("-".into(), |p| format!("{:.2}", p / 1024.0)),
            ),
        ],
        serde_json::json!({
            "connections": conns.len(), "failures": failures, "connect_rate": rate,
            "rss_before": before, "rss_after": after,
            "rss_growth_per_connection": per_conn, "rss_total_per_connection": total_per_conn,
        }),
    );
    drop(conns);
    Ok(())
}

/// Reads `n` integer replies (`:N\r\n`) from a RESP stream; returns their sum.
async fn read_int_replies(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    n: usize,
) -> anyhow::Result<i64> {
    let mut sum = 0i64;
    let mut got = 0;
    let mut chunk = [0u8; 16384];
    while got < n {
        while let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.drain(..end + 2).collect::<Vec<u8>>();
            match line.first() {
                Some(b':') => {
                    sum += std::str::from_utf8(&line[1..end])
                        .ok()
                        .and_then(|s| s.parse::<i64>().ok())
                        .unwrap_or(0);
                }
                Some(b'-') => bail!("server error: {}", String::from_utf8_lossy(&line)),
                _ => {}
            }
            got += 1;
            if got == n {
                return Ok(sum);
            }
        }
        let k = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut chunk)).await??;
        if k == 0 {
            bail!("the server closed the RESP connection");
        }
        buf.extend_from_slice(&chunk[..k]);
    }
    Ok(sum)
}

fn publish_cmd(out: &mut Vec<u8>, group: &str, payload: &[u8]) {
    out.extend_from_slice(
        format!(
            "*3\r\n$7\r\nPUBLISH\r\n${}\r\n{group}\r\n${}\r\n",
            group.len(),
            payload.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

async fn publish(
    common: Common,
    clients: usize,
    pipeline: usize,
    duration: u64,
    size: usize,
    group: String,
    password: Option<String>,
) -> anyhow::Result<()> {
    let ops = Arc::new(AtomicU64::new(0));
    let end = Instant::now() + Duration::from_secs(duration);
    let payload = vec![b'x'; size];
    let mut tasks = Vec::new();
    let start = Instant::now();
    for _ in 0..clients.max(1) {
        let (ops, payload, group, resp, password) = (
            ops.clone(),
            payload.clone(),
            group.clone(),
            common.resp.clone(),
            password.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&resp).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::new();
            if let Some(pw) = password {
                let mut auth = Vec::new();
                auth.extend_from_slice(
                    format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{pw}\r\n", pw.len()).as_bytes(),
                );
                s.write_all(&auth).await?;
                let mut b = [0u8; 64];
                let _ = s.read(&mut b).await?;
            }
            let mut batch = Vec::new();
            for _ in 0..pipeline {
                publish_cmd(&mut batch, &group, &payload);
            }
            while Instant::now() < end {
                s.write_all(&batch).await?;
                read_int_replies(&mut s, &mut buf, pipeline).await?;
                ops.fetch_add(pipeline as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let took = start.elapsed().as_secs_f64();
    let total = ops.load(Ordering::Relaxed);
    report(
        common.json,
        &[
            ("target", common.resp.clone()),
            ("PUBLISH ops", total.to_string()),
            ("PUBLISH ops/s", format!("{:.0}", total as f64 / took)),
        ],
        serde_json::json!({"target": common.resp, "ops": total, "ops_per_sec": total as f64 / took,
            "clients": clients, "pipeline": pipeline, "payload_size": size}),
    );
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn fanout(
    common: Common,
    n: usize,
    groups: usize,
    rate: u64,
    duration: u64,
    size: usize,
    publishers: usize,
    pipeline: usize,
) -> anyhow::Result<()> {
    let (conns, took, failures) =
        connect_many(&common, n, |i| vec![format!("bench_{}", i % groups)]).await?;
    wait_connections(&common, conns.len()).await;
    eprintln!(
        "{} connections in {:.1}s ({failures} failed); publishing",
        conns.len(),
        took.as_secs_f64()
    );

    let hist = Arc::new(Histogram::new());
    let received = Arc::new(AtomicU64::new(0));
    let disorder = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut readers = Vec::with_capacity(conns.len());
    for mut conn in conns {
        let (hist, received, disorder, stop) = (
            hist.clone(),
            received.clone(),
            disorder.clone(),
            stop.clone(),
        );
        readers.push(tokio::spawn(async move {
            let mut last: Vec<u64> = Vec::new();
            loop {
                let frame = tokio::select! {
                    _ = stop.notified() => break,
                    f = conn.recv() => f,
                };
                match frame {
                    Ok(Incoming::Text(t)) => {
                        let now = unix_nanos();
                        let mut parts = t.split(' ');
                        let sent: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(now);
                        let publisher: usize =
                            parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                        let seq: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                        if last.len() <= publisher {
                            last.resize(publisher + 1, 0);
                        }
                        if seq <= last[publisher] && last[publisher] != 0 {
                            disorder.fetch_add(1, Ordering::Relaxed);
                        }
                        last[publisher] = seq;
                        hist.record(now.saturating_sub(sent) / 1000);
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Incoming::Binary(_)) => {}
                    _ => break,
                }
            }
        }));
    }

    let published = Arc::new(AtomicU64::new(0));
    let routed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let end = start + Duration::from_secs(duration);
    let mut pubs = Vec::new();
    for p in 0..publishers {
        let (published, routed, resp) = (published.clone(), routed.clone(), common.resp.clone());
        let per_pub_rate = rate as f64 / publishers as f64;
        pubs.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(&resp).await?;
            s.set_nodelay(true)?;
            let mut buf = Vec::new();
            let mut seq = 0u64;
            let mut batch = Vec::new();
            let begun = Instant::now();
            while Instant::now() < end {
                if per_pub_rate > 0.0 {
                    let due = begun + Duration::from_secs_f64(seq as f64 / per_pub_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                batch.clear();
                for _ in 0..pipeline {
                    seq += 1;
                    let mut payload = format!("{} {p} {seq} ", unix_nanos()).into_bytes();
                    payload.resize(size.max(payload.len()), b'x');
                    let group = format!("bench_{}", seq as usize % groups);
                    publish_cmd(&mut batch, &group, &payload);
                }
                s.write_all(&batch).await?;
                let r = read_int_replies(&mut s, &mut buf, pipeline).await?;
                routed.fetch_add(r as u64, Ordering::Relaxed);
                published.fetch_add(pipeline as u64, Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for t in pubs {
        t.await??;
    }
    let publish_time = start.elapsed().as_secs_f64();
    // Drain: wait (bounded) until everything routed has arrived or nothing moves.
    let expected = routed.load(Ordering::Relaxed);
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    let mut last_seen = 0;
    while Instant::now() < drain_deadline {
        let now = received.load(Ordering::Relaxed);
        if now >= expected || (now == last_seen && now > 0) {
            break;
        }
        last_seen = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let total_time = start.elapsed().as_secs_f64();
    stop.notify_waiters();
    for r in readers {
        r.abort();
    }
    let got = received.load(Ordering::Relaxed);
    let pubd = published.load(Ordering::Relaxed);
    let ms = |us: u64| format!("{:.3}", us as f64 / 1000.0);
    report(
        common.json,
        &[
            ("connections", n.to_string()),
            ("groups", groups.to_string()),
            ("published", pubd.to_string()),
            (
                "publish rate (msg/s)",
                format!("{:.0}", pubd as f64 / publish_time),
            ),
            ("deliveries expected", expected.to_string()),
            ("deliveries received", got.to_string()),
            ("lost", expected.saturating_sub(got).to_string()),
            (
                "delivered msgs/s",
                format!("{:.0}", got as f64 / total_time),
            ),
            ("latency p50 (ms)", ms(hist.percentile(50.0))),
            ("latency p99 (ms)", ms(hist.percentile(99.0))),
            ("latency p99.9 (ms)", ms(hist.percentile(99.9))),
            (
                "order violations",
                disorder.load(Ordering::Relaxed).to_string(),
            ),
        ],
        serde_json::json!({
            "connections": n, "groups": groups, "published": pubd,
            "publish_rate": pubd as f64 / publish_time, "expected": expected, "received": got,
            "lost": expected.saturating_sub(got), "delivered_per_sec": got as f64 / total_time,
            "p50_us": hist.percentile(50.0), "p99_us": hist.percentile(99.0),
            "p999_us": hist.percentile(99.9), "order_violations": disorder.load(Ordering::Relaxed),
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Histogram;

    #[test]
    fn percentiles_are_within_the_bucket_error() {
        let h = Histogram::new();
        for us in 1..=10_000u64 {
            h.record(us);
        }
        for (p, exact) in [(50.0, 5_000u64), (99.0, 9_900), (99.9, 9_990)] {
            let got = h.percentile(p) as f64;
            assert!(
                (got - exact as f64).abs() / exact as f64 <= 0.02,
                "p{p}: {got} vs {exact}"
            );
        }
        assert_eq!(h.count(), 10_000);
    }
}
