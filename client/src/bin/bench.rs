//! `switchboard-bench`: the load generator every Switchboard benchmark uses.
//!
//! - `idle`: open N WebSocket connections, report the connect rate and the server's
//!   RSS per connection (from the admin `/metrics`, or `/proc/PID/status`).
//! - `fanout`: N connections spread over G groups, P RESP publishers at a total rate R;
//!   report deliveries expected (the sum of PUBLISH replies) and received, lost,
//!   delivered msgs/s, publish-to-receipt latency percentiles, and per-publisher order
//!   violations seen on each connection.
//! - `publish`: RESP `PUBLISH` throughput only; it speaks nothing but standard RESP2, so
//!   it runs against redis-server too, for a side-by-side comparison.
//!
//! Results are printed as a table; with `--json` the table goes to stderr and stdout
//! gets one JSON object. Every phase is bounded in time, and the bench exits by itself.
//!
//! Parts: the CLI; the reader tasks (each owns a share of the connections and keeps its
//! own counters and histogram, merged at the end, so receiving is cheap); the
//! publishers; one function per subcommand.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
#[path = "bench/churn.rs"]
mod churn;

use clap::{Args, Parser, Subcommand};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use switchboard_client::load::{loopback_source, source_ips_needed};
use switchboard_client::resp::encode_command;
use switchboard_client::{
    Claims, ConnectOptions, Connection, Error, Histogram, Incoming, RespClient, RespValue,
    close_many, connect_many,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Parser)]
#[command(
    name = "switchboard-bench",
    about = "Load generator for Switchboard (and, for `publish`, any Redis server)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Args, Clone)]
struct Common {
    /// WebSocket URL; several, comma-separated, spread the clients over nodes.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8001/ws/notifications/",
        value_delimiter = ','
    )]
    ws: Vec<String>,
    /// RESP address to publish to; several, comma-separated, spread the publishers.
    #[arg(long, default_value = "127.0.0.1:6379", value_delimiter = ',')]
    resp: Vec<String>,
    /// Admin address, for /metrics (server RSS, connection count).
    #[arg(long, default_value = "127.0.0.1:8002")]
    admin: String,
    /// Read the server's RSS from /proc/PID/status (VmRSS) instead of /metrics.
    #[arg(long)]
    server_pid: Option<u32>,
    /// HMAC secret to mint HS256 tokens with (the node's --jwt-secret).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Spread client sockets over 127.0.0.1..127.0.0.N (each address has ~28k ports).
    /// 0: as many as the connection count needs, when the server is on loopback.
    #[arg(long, default_value_t = 0)]
    source_ips: u32,
    /// WebSocket connects in progress at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Deadline of each connect (TCP plus upgrade), e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    connect_timeout: Duration,
    /// Print one JSON object of results on stdout (the table then goes to stderr).
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Open idle connections; report the connect rate and the server's RSS per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// Connections to open, each its own user.
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        /// How long to hold them before measuring and closing (5s, 500ms, 2m; a bare
        /// number is seconds).
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        hold: Duration,
    },
    /// Fan-out: N connections over G groups, P publishers at a total rate R.
    Fanout {
        #[command(flatten)]
        common: Common,
        /// Connections, each in group bench_<i % groups> (through its token).
        #[arg(long, default_value_t = 10_000)]
        connections: usize,
        #[arg(long, default_value_t = 1)]
        groups: usize,
        /// Messages per second over all publishers; 0 = as fast as replies allow.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// How long to publish.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Payload bytes (at least the ~30 of the timestamp and sequence header).
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// RESP publisher connections.
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// PUBLISH commands written at once per publisher (replies awaited per batch).
        #[arg(long, default_value_t = 16)]
        pipeline: usize,
        /// After publishing, how long to wait at most for the deliveries still due.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        drain: Duration,
        /// RESP password, if the node wants AUTH.
        #[arg(long)]
        password: Option<String>,
    },
    /// Presence churn: workers connect, hold, close and reconnect; reports the presence
    /// changes committed through Raft per second, cluster-wide.
    Churn {
        #[command(flatten)]
        common: Common,
        /// Concurrent connect/hold/close loops, spread over the --ws URLs.
        #[arg(long, default_value_t = 200)]
        workers: usize,
        /// How long each connection stays open (longer than the 20 ms presence batch, so
        /// that connect and close both commit).
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        hold: Duration,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Admin addresses of every node, to sum their committed presence changes.
        #[arg(long, value_delimiter = ',')]
        admins: Vec<String>,
    },
    /// Leader fail-over: churn against a surviving node (--ws, --admin), kill -9 the
    /// leader's process, report when the survivor's presence writes resume.
    Failover {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 32)]
        workers: usize,
        #[arg(long, default_value = "100ms", value_parser = parse_duration)]
        hold: Duration,
        /// PID of the current leader's process.
        #[arg(long)]
        leader_pid: u32,
    },
    /// RESP PUBLISH throughput only (works against redis-server).
    Publish {
        #[command(flatten)]
        common: Common,
        /// RESP connections.
        #[arg(long, default_value_t = 4)]
        clients: usize,
        /// PUBLISH commands in flight per connection.
        #[arg(long, default_value_t = 32)]
        pipeline: usize,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// The channel (group) to publish to.
        #[arg(long, default_value = "bench_nobody")]
        group: String,
        /// Sent with AUTH first.
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
        } => idle(&common, connections, hold).await,
        Command::Fanout {
            common,
            connections,
            groups,
            rate,
            duration,
            payload_size,
            publishers,
            pipeline,
            drain,
            password,
        } => {
            let plan = FanoutPlan {
                connections,
                groups: groups.max(1),
                rate,
                duration,
                payload_size,
                publishers: publishers.max(1),
                pipeline: pipeline.max(1),
                drain,
                password,
            };
            fanout(&common, plan).await
        }
        Command::Churn {
            common,
            workers,
            hold,
            duration,
            admins,
        } => churn::churn(&common, workers.max(1), hold, duration, &admins).await,
        Command::Failover {
            common,
            workers,
            hold,
            leader_pid,
        } => churn::failover(&common, workers.max(1), hold, leader_pid).await,
        Command::Publish {
            common,
            clients,
            pipeline,
            duration,
            payload_size,
            group,
            password,
        } => {
            let plan = PublishPlan {
                clients: clients.max(1),
                pipeline: pipeline.max(1),
                duration,
                payload_size,
                group,
                password,
            };
            publish(&common, plan).await
        }
    }
}

/// `5`, `5s`, `1.5s`, `500ms`, `250us`, `2m`, `1h`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (try 5s, 500ms, 2m)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use us, ms, s, m, h)"
            ));
        }
    };
    Duration::try_from_secs_f64(secs).map_err(|e| format!("{s:?}: {e}"))
}

fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Prints the table (stdout, or stderr when JSON goes to stdout) and the JSON object.
fn report(json: bool, rows: &[(&str, String)], value: serde_json::Value) {
    let mut table = String::new();
    for (k, v) in rows {
        table.push_str(&format!("{k:<28} {v}\n"));
    }
    if json {
        eprint!("{table}");
        println!("{value}");
    } else {
        print!("{table}");
    }
}

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| format!("{:.1}", b as f64 / 1048576.0))
}

// ---------------------------------------------------------------------------------------
// Connecting

/// Mints one token per connection; checks the secret is there before anything starts.
struct Minter {
    secret: String,
}

impl Minter {
    fn new(common: &Common) -> anyhow::Result<Minter> {
        let secret = common.jwt_secret.clone().context(
            "--jwt-secret (or SWITCHBOARD_JWT_SECRET) is needed to mint tokens: give the node's HMAC secret",
        )?;
        let minter = Minter { secret };
        Claims::access(1)
            .mint_hs256(&minter.secret)
            .context("cannot sign a token with this secret")?;
        Ok(minter)
    }

    fn token(&self, user: usize, groups: &[String]) -> Option<String> {
        Claims::access(user as u64)
            .groups(groups.iter().cloned())
            .mint_hs256(&self.secret)
            .ok()
    }
}

/// How many source addresses to spread `n` connections over.
fn source_spread(common: &Common, n: usize) -> u32 {
    if common.source_ips > 0 {
        return common.source_ips;
    }
    let loopback = common.ws.iter().all(|url| {
        url.split("://")
            .nth(1)
            .and_then(|rest| rest.split(['/', ':']).next())
            .is_some_and(|host| host.starts_with("127.") || host == "localhost")
    });
    if loopback { source_ips_needed(n) } else { 1 }
}

/// Opens `n` connections (user i+1, groups from `groups_of(i)`); prints progress.
async fn open(
    common: &Common,
    n: usize,
    groups_of: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<switchboard_client::ConnectMany> {
    if common.ws.iter().all(|u| u.is_empty()) {
        bail!("--ws needs at least one URL");
    }
    let minter = Minter::new(common)?;
    let spread = source_spread(common, n);
    eprintln!(
        "connecting {n} clients ({} at a time, {spread} source address{})",
        common.connect_concurrency,
        if spread == 1 { "" } else { "es" }
    );
    let report = connect_many(n, common.connect_concurrency, |i| {
        let mut opts = ConnectOptions::new(common.ws[i % common.ws.len()].clone())
            .connect_timeout(common.connect_timeout);
        opts.token = minter.token(i + 1, &groups_of(i));
        opts.local_addr = loopback_source(i, spread);
        opts
    })
    .await;
    eprintln!(
        "{} connected in {:.1}s, {} failed",
        report.connections.len(),
        report.elapsed.as_secs_f64(),
        report.failures
    );
    for (msg, count) in &report.errors {
        eprintln!("  {count} x {msg}");
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------------
// Admin endpoint

async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr))
        .await
        .context("admin connect timed out")??;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .context("admin read timed out")??;
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or(out))
}

/// A metric's value from a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

async fn server_rss(common: &Common) -> anyhow::Result<u64> {
    if let Some(pid) = common.server_pid {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .context("no VmRSS in /proc/PID/status")?;
        return Ok(kb * 1024);
    }
    let body = http_get(&common.admin, "/metrics").await?;
    metric(&body, "process_resident_memory_bytes")
        .map(|v| v as u64)
        .context("no process_resident_memory_bytes in /metrics")
}

/// Waits (30 s at most) until the node's admin reports at least `n` connections, so that
/// measurements see every connection registered. Returns at once if the admin endpoint
/// does not answer.
async fn wait_connections(common: &Common, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let have = match http_get(&common.admin, "/metrics").await {
            Ok(body) => metric(&body, "switchboard_connections").unwrap_or(0.0) as usize,
            Err(e) => {
                eprintln!("not waiting for the node to register the connections: {e}");
                return;
            }
        };
        if have >= n {
            return;
        }
        if Instant::now() >= deadline {
            eprintln!("the node reports {have} of {n} connections after 30s; going on");
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Readers

/// What one reader task saw. Only its own task touches it; merged at the end.
#[derive(Debug)]
struct ReaderStats {
    received: u64,
    latency_us: Histogram,
    /// A sequence number lower than one already seen from that publisher on that
    /// connection.
    order_violations: u64,
    /// The same sequence number twice from one publisher on one connection.
    duplicates: u64,
    /// Text frames that are not bench payloads (not counted as received).
    foreign: u64,
    binary: u64,
    /// Connections that ended while reading, by close code.
    closes: BTreeMap<u16, u64>,
    /// Unix nanos of the last bench payload received.
    last_receipt: u64,
    /// Per connection, per publisher: the highest sequence number seen.
    last_seq: Vec<u64>,
    publishers: usize,
}

impl ReaderStats {
    fn new(connections: usize, publishers: usize) -> Self {
        ReaderStats {
            received: 0,
            latency_us: Histogram::new(),
            order_violations: 0,
            duplicates: 0,
            foreign: 0,
            binary: 0,
            closes: BTreeMap::new(),
            last_receipt: 0,
            last_seq: vec![0; connections * publishers],
            publishers,
        }
    }

    /// One text frame on connection `conn` (an index into this task's share), read at
    /// `now` (Unix nanos).
    fn on_text(&mut self, conn: usize, text: &[u8], now: u64) {
        let Some((sent, publisher, seq)) = parse_payload(text) else {
            self.foreign += 1;
            return;
        };
        let slot = (publisher < self.publishers)
            .then(|| self.last_seq.get_mut(conn * self.publishers + publisher))
            .flatten();
        let Some(last) = slot else {
            self.foreign += 1;
            return;
        };
        if seq < *last {
            self.order_violations += 1;
        } else if seq == *last {
            self.duplicates += 1;
        }
        *last = (*last).max(seq);
        self.received += 1;
        self.last_receipt = now;
        self.latency_us.record(now.saturating_sub(sent) / 1000);
    }

    fn merge(&mut self, other: &ReaderStats) {
        self.received += other.received;
        self.latency_us.merge(&other.latency_us);
        self.order_violations += other.order_violations;
        self.duplicates += other.duplicates;
        self.foreign += other.foreign;
        self.binary += other.binary;
        for (code, n) in &other.closes {
            *self.closes.entry(*code).or_default() += n;
        }
        self.last_receipt = self.last_receipt.max(other.last_receipt);
    }

    fn closes_text(&self) -> String {
        if self.closes.is_empty() {
            return "0".into();
        }
        self.closes
            .iter()
            .map(|(code, n)| format!("{n} x {code}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The payload header: `<unix nanos> <publisher> <seq> ` then padding.
fn write_payload(out: &mut Vec<u8>, sent: u64, publisher: usize, seq: u64, size: usize) {
    out.clear();
    let _ = write!(out, "{sent} {publisher} {seq} ");
    if out.len() < size {
        out.resize(size, b'x');
    }
}

fn parse_payload(text: &[u8]) -> Option<(u64, usize, u64)> {
    let mut parts = text.splitn(4, |&b| b == b' ');
    let sent = parse_u64(parts.next()?)?;
    let publisher = usize::try_from(parse_u64(parts.next()?)?).ok()?;
    let seq = parse_u64(parts.next()?)?;
    parts.next()?;
    Some((sent, publisher, seq))
}

fn parse_u64(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        d.is_ascii_digit().then_some(())?;
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// Reader tasks, each owning a share of the connections.
struct Readers {
    tasks: Vec<JoinHandle<(ReaderStats, Vec<Connection>)>>,
    progress: Vec<Arc<AtomicU64>>,
    stop: watch::Sender<bool>,
}

impl Readers {
    fn spawn(connections: Vec<Connection>, publishers: usize) -> Readers {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let tasks = (cores * 4).clamp(1, connections.len().max(1));
        let per_task = connections.len().div_ceil(tasks).max(1);
        let (stop, stop_rx) = watch::channel(false);
        let mut readers = Readers {
            tasks: Vec::new(),
            progress: Vec::new(),
            stop,
        };
        let mut rest = connections;
        while !rest.is_empty() {
            let share: Vec<Connection> = rest.drain(..per_task.min(rest.len())).collect();
            let progress = Arc::new(AtomicU64::new(0));
            readers.progress.push(progress.clone());
            readers.tasks.push(tokio::spawn(read_share(
                share,
                publishers,
                progress,
                stop_rx.clone(),
            )));
        }
        readers
    }

    /// Bench payloads received so far, over all tasks.
    fn received(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops every task; returns the merged stats and the connections still open.
    async fn stop(self, publishers: usize) -> (ReaderStats, Vec<Connection>) {
        let _ = self.stop.send(true);
        let mut total = ReaderStats::new(0, publishers);
        let mut connections = Vec::new();
        for task in self.tasks {
            if let Ok((stats, conns)) = task.await {
                total.merge(&stats);
                connections.extend(conns.into_iter().filter(|c| !c.is_closed()));
            }
        }
        (total, connections)
    }
}

/// One read, handing the connection back with the result (so it can be re-armed).
async fn recv_one(
    i: usize,
    conn: &mut Connection,
) -> (usize, &mut Connection, Result<Incoming, Error>) {
    let r = conn.recv().await;
    (i, conn, r)
}

/// Reads every connection of the share until told to stop. `recv` is cancel-safe, so
/// stopping (dropping the pending reads) loses nothing and gives the connections back.
async fn read_share(
    mut conns: Vec<Connection>,
    publishers: usize,
    progress: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> (ReaderStats, Vec<Connection>) {
    let mut stats = ReaderStats::new(conns.len(), publishers);
    {
        let mut reads: FuturesUnordered<_> = conns
            .iter_mut()
            .enumerate()
            .map(|(i, c)| recv_one(i, c))
            .collect();
        loop {
            let first = tokio::select! {
                biased;
                _ = stop.changed() => break,
                Some(done) = reads.next() => done,
            };
            // Handle everything already ready before going back to `select!`.
            let mut next = Some(first);
            while let Some((i, conn, result)) = next {
                match result {
                    Ok(Incoming::Text(t)) => {
                        stats.on_text(i, t.as_bytes(), unix_nanos());
                        reads.push(recv_one(i, conn));
                    }
                    Ok(Incoming::Binary(_)) => {
                        stats.binary += 1;
                        reads.push(recv_one(i, conn));
                    }
                    Ok(Incoming::Closed { code, .. }) => {
                        *stats.closes.entry(code).or_default() += 1;
                    }
                    Err(_) => *stats.closes.entry(1006).or_default() += 1,
                }
                next = reads.next().now_or_never().flatten();
            }
            progress.store(stats.received, Ordering::Relaxed);
        }
    }
    (stats, conns)
}

// ---------------------------------------------------------------------------------------
// idle

async fn idle(common: &Common, n: usize, hold: Duration) -> anyhow::Result<()> {
    let before = match server_rss(common).await {
        Ok(rss) => Some(rss),
        Err(e) => {
            eprintln!("no server RSS before connecting: {e:#}");
            None
        }
    };
    let opened = open(common, n, |_| Vec::new()).await?;
    let connected = opened.connections.len();
    let connect_rate = opened.rate();
    wait_connections(common, connected).await;
    let readers = Readers::spawn(opened.connections, 1);
    eprintln!("holding for {hold:?}");
    tokio::time::sleep(hold).await;
    let after = match server_rss(common).await {
        Ok(rss) => Some(rss),
        Err(e) => {
            eprintln!("no server RSS after connecting: {e:#}");
            None
        }
    };
    let (stats, open_conns) = readers.stop(1).await;
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) as f64 / connected as f64),
        _ => None,
    };
    let total_per_conn = after
        .filter(|_| connected > 0)
        .map(|a| a as f64 / connected as f64);
    let kib = |v: Option<f64>| v.map_or("-".into(), |p| format!("{:.2}", p / 1024.0));
    let lat = &opened.latency_us;
    report(
        common.json,
        &[
            ("connections", connected.to_string()),
            ("connect failures", opened.failures.to_string()),
            ("connect rate (conn/s)", format!("{:.0}", connect_rate)),
            (
                "connect p50/p99/max (ms)",
                format!(
                    "{} / {} / {}",
                    ms(lat.percentile(50.0)),
                    ms(lat.percentile(99.0)),
                    ms(lat.max())
                ),
            ),
            ("closed by server", stats.closes_text()),
            ("server RSS before (MiB)", mib(before)),
            ("server RSS after (MiB)", mib(after)),
            ("RSS growth / conn (KiB)", kib(per_conn)),
            ("total RSS / conn (KiB)", kib(total_per_conn)),
        ],
        serde_json::json!({
            "connections": connected,
            "failures": opened.failures,
            "errors": opened.errors,
            "connect_rate": connect_rate,
            "connect_seconds": opened.elapsed.as_secs_f64(),
            "connect_p50_us": lat.percentile(50.0),
            "connect_p99_us": lat.percentile(99.0),
            "connect_max_us": lat.max(),
            "closed_by_server": stats.closes,
            "rss_before": before,
            "rss_after": after,
            "rss_growth_per_connection": per_conn,
            "rss_total_per_connection": total_per_conn,
        }),
    );
    close_many(
        open_conns,
        common.connect_concurrency,
        Duration::from_secs(10),
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// fanout

#[derive(Debug)]
struct FanoutPlan {
    connections: usize,
    groups: usize,
    rate: u64,
    duration: Duration,
    payload_size: usize,
    publishers: usize,
    pipeline: usize,
    drain: Duration,
    password: Option<String>,
}

/// What one publisher did.
#[derive(Debug, Default)]
struct PublisherStats {
    published: u64,
    /// The sum of the PUBLISH replies: deliveries the node promised.
    routed: u64,
    /// Replies that were not integers (error replies), and the first of them.
    errors: u64,
    first_error: Option<String>,
    /// Why it stopped early, if it did.
    failure: Option<String>,
}

/// Connects a RESP client, with AUTH when a password is given.
async fn resp_client(addr: &str, password: Option<&str>) -> Result<RespClient, Error> {
    let mut client = RespClient::connect(addr).await?;
    if let Some(pw) = password {
        client.auth(pw).await?;
    }
    Ok(client)
}

/// Publishes `<nanos> <p> <seq> xxx...` to the groups in turn until `end`, at
/// `rate` messages per second (0: as fast as replies allow), `pipeline` at most per write.
#[allow(clippy::too_many_arguments)]
async fn run_publisher(
    p: usize,
    addr: String,
    password: Option<String>,
    groups: Arc<Vec<String>>,
    rate: f64,
    pipeline: usize,
    size: usize,
    end: Instant,
) -> PublisherStats {
    let mut stats = PublisherStats::default();
    let mut client = match resp_client(&addr, password.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            stats.failure = Some(format!("{addr}: {e}"));
            return stats;
        }
    };
    let (mut out, mut payload) = (Vec::new(), Vec::new());
    let mut seq = 0u64;
    let begun = Instant::now();
    while Instant::now() < end {
        let n = if rate > 0.0 {
            let due = (begun.elapsed().as_secs_f64() * rate) as u64;
            if due <= seq {
                let next = begun + Duration::from_secs_f64((seq + 1) as f64 / rate);
                tokio::time::sleep_until(next.min(end).into()).await;
                continue;
            }
            (due - seq).min(pipeline as u64) as usize
        } else {
            pipeline
        };
        out.clear();
        for _ in 0..n {
            seq += 1;
            write_payload(&mut payload, unix_nanos(), p, seq, size);
            let group = &groups[(seq as usize + p) % groups.len()];
            encode_command(&mut out, &[b"PUBLISH", group.as_bytes(), &payload]);
        }
        if let Err(e) = client.send_raw(&out).await {
            stats.failure = Some(e.to_string());
            return stats;
        }
        for _ in 0..n {
            match client.read_reply().await {
                Ok(RespValue::Integer(k)) => {
                    stats.routed += k.max(0) as u64;
                    stats.published += 1;
                }
                Ok(other) => {
                    stats.errors += 1;
                    stats
                        .first_error
                        .get_or_insert_with(|| format!("{other:?}"));
                }
                Err(e) => {
                    stats.failure = Some(e.to_string());
                    return stats;
                }
            }
        }
    }
    stats
}

/// Waits (30 s at most) until `PUBSUB NUMSUB` over the bench groups counts `n`
/// connections, so that publishing starts with every client routable (in a cluster,
/// also on the node published to). Returns the count last seen.
async fn wait_routable(common: &Common, plan: &FanoutPlan, groups: &[String], n: usize) -> u64 {
    let Some(addr) = common.resp.first() else {
        return 0;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = match resp_client(addr, plan.password.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("not waiting for the groups to fill: {e}");
            return 0;
        }
    };
    loop {
        let mut total = 0u64;
        for chunk in groups.chunks(1000) {
            let mut args: Vec<&[u8]> = vec![b"PUBSUB", b"NUMSUB"];
            args.extend(chunk.iter().map(|g| g.as_bytes()));
            match client.command(&args).await {
                Ok(RespValue::Array(items)) => {
                    total += items
                        .iter()
                        .filter_map(RespValue::as_integer)
                        .map(|k| k.max(0) as u64)
                        .sum::<u64>();
                }
                Ok(other) => {
                    eprintln!(
                        "not waiting for the groups to fill: PUBSUB NUMSUB answered {other:?}"
                    );
                    return 0;
                }
                Err(e) => {
                    eprintln!("not waiting for the groups to fill: {e}");
                    return 0;
                }
            }
        }
        if total >= n as u64 {
            return total;
        }
        if Instant::now() >= deadline {
            eprintln!("PUBSUB NUMSUB counts {total} of {n} connections after 30s; going on");
            return total;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fanout(common: &Common, plan: FanoutPlan) -> anyhow::Result<()> {
    if common.resp.is_empty() {
        bail!("--resp needs at least one address");
    }
    let groups: Arc<Vec<String>> =
        Arc::new((0..plan.groups).map(|g| format!("bench_{g}")).collect());
    let opened = open(common, plan.connections, |i| {
        vec![groups[i % groups.len()].clone()]
    })
    .await?;
    let connected = opened.connections.len();
    let connect_rate = opened.rate();
    let routable = wait_routable(common, &plan, &groups, connected).await;
    let readers = Readers::spawn(opened.connections, plan.publishers);
    eprintln!(
        "publishing for {:?} ({} publisher(s), rate {}, pipeline {})",
        plan.duration,
        plan.publishers,
        if plan.rate == 0 {
            "max".to_string()
        } else {
            plan.rate.to_string()
        },
        plan.pipeline
    );

    let start_nanos = unix_nanos();
    let start = Instant::now();
    let end = start + plan.duration;
    let per_publisher = plan.rate as f64 / plan.publishers as f64;
    let publishers: Vec<_> = (0..plan.publishers)
        .map(|p| {
            tokio::spawn(run_publisher(
                p,
                common.resp[p % common.resp.len()].clone(),
                plan.password.clone(),
                groups.clone(),
                per_publisher,
                plan.pipeline,
                plan.payload_size,
                end,
            ))
        })
        .collect();
    let mut pubs = PublisherStats::default();
    let mut failures = Vec::new();
    for task in publishers {
        let s = task.await.context("a publisher task panicked")?;
        pubs.published += s.published;
        pubs.routed += s.routed;
        pubs.errors += s.errors;
        if pubs.first_error.is_none() {
            pubs.first_error = s.first_error;
        }
        failures.extend(s.failure);
    }
    let publish_time = start.elapsed().as_secs_f64();
    for f in &failures {
        eprintln!("a publisher stopped early: {f}");
    }
    if let Some(e) = &pubs.first_error {
        eprintln!("{} PUBLISH(es) refused; the first reply: {e}", pubs.errors);
    }
    if pubs.published == 0 {
        bail!(
            "no PUBLISH succeeded: {}",
            pubs.first_error
                .iter()
                .chain(&failures)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }

    // Drain: until every promised delivery arrived, nothing arrived for 2 s, or the
    // drain deadline.
    let expected = pubs.routed;
    let drain_end = Instant::now() + plan.drain;
    let (mut seen, mut moved) = (readers.received(), Instant::now());
    while seen < expected && Instant::now() < drain_end && moved.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = readers.received();
        if now != seen {
            (seen, moved) = (now, Instant::now());
        }
    }
    let (stats, open_conns) = readers.stop(plan.publishers).await;

    let got = stats.received;
    let receive_secs = if stats.last_receipt > start_nanos {
        (stats.last_receipt - start_nanos) as f64 / 1e9
    } else {
        publish_time
    };
    let delivered_rate = got as f64 / receive_secs.max(1e-9);
    let lost = expected.saturating_sub(got);
    let h = &stats.latency_us;
    report(
        common.json,
        &[
            ("connections", connected.to_string()),
            ("connect failures", opened.failures.to_string()),
            ("groups", plan.groups.to_string()),
            ("routable at start", routable.to_string()),
            ("published", pubs.published.to_string()),
            (
                "publish errors",
                (pubs.errors + failures.len() as u64).to_string(),
            ),
            (
                "publish rate (msg/s)",
                format!("{:.0}", pubs.published as f64 / publish_time),
            ),
            ("deliveries expected", expected.to_string()),
            ("deliveries received", got.to_string()),
            ("lost", lost.to_string()),
            ("delivered msgs/s", format!("{delivered_rate:.0}")),
            ("latency p50 (ms)", ms(h.percentile(50.0))),
            ("latency p99 (ms)", ms(h.percentile(99.0))),
            ("latency p99.9 (ms)", ms(h.percentile(99.9))),
            ("latency max (ms)", ms(h.max())),
            ("order violations", stats.order_violations.to_string()),
            ("duplicates", stats.duplicates.to_string()),
            ("closed by server", stats.closes_text()),
        ],
        serde_json::json!({
            "connections": connected,
            "failures": opened.failures,
            "errors": opened.errors,
            "connect_rate": connect_rate,
            "groups": plan.groups,
            "routable_at_start": routable,
            "publishers": plan.publishers,
            "pipeline": plan.pipeline,
            "rate": plan.rate,
            "payload_size": plan.payload_size,
            "published": pubs.published,
            "publish_errors": pubs.errors,
            "publisher_failures": failures,
            "publish_rate": pubs.published as f64 / publish_time,
            "expected": expected,
            "received": got,
            "lost": lost,
            "delivered_per_sec": delivered_rate,
            "p50_us": h.percentile(50.0),
            "p99_us": h.percentile(99.0),
            "p999_us": h.percentile(99.9),
            "max_us": h.max(),
            "mean_us": h.mean(),
            "order_violations": stats.order_violations,
            "duplicates": stats.duplicates,
            "foreign_frames": stats.foreign,
            "binary_frames": stats.binary,
            "closed_by_server": stats.closes,
        }),
    );
    close_many(
        open_conns,
        common.connect_concurrency,
        Duration::from_secs(10),
    )
    .await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// publish

#[derive(Debug)]
struct PublishPlan {
    clients: usize,
    pipeline: usize,
    duration: Duration,
    payload_size: usize,
    group: String,
    password: Option<String>,
}

#[derive(Debug, Default)]
struct PublishStats {
    /// PUBLISH commands answered with an integer.
    ops: u64,
    /// Replies that were not integers (error replies), and the first of them.
    errors: u64,
    first_error: Option<String>,
    batch_us: Histogram,
    failure: Option<String>,
}

async fn run_publish_client(
    addr: String,
    password: Option<String>,
    batch: Arc<Vec<u8>>,
    pipeline: usize,
    end: Instant,
) -> PublishStats {
    let mut stats = PublishStats::default();
    let mut client = match resp_client(&addr, password.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            stats.failure = Some(format!("{addr}: {e}"));
            return stats;
        }
    };
    while Instant::now() < end {
        let t = Instant::now();
        if let Err(e) = client.send_raw(&batch).await {
            stats.failure = Some(e.to_string());
            return stats;
        }
        for _ in 0..pipeline {
            match client.read_reply().await {
                Ok(RespValue::Integer(_)) => stats.ops += 1,
                Ok(other) => {
                    stats.errors += 1;
                    stats
                        .first_error
                        .get_or_insert_with(|| format!("{other:?}"));
                }
                Err(e) => {
                    stats.failure = Some(e.to_string());
                    return stats;
                }
            }
        }
        stats.batch_us.record(t.elapsed().as_micros() as u64);
    }
    stats
}

async fn publish(common: &Common, plan: PublishPlan) -> anyhow::Result<()> {
    if common.resp.is_empty() {
        bail!("--resp needs at least one address");
    }
    let payload = vec![b'x'; plan.payload_size];
    let mut batch = Vec::new();
    for _ in 0..plan.pipeline {
        encode_command(&mut batch, &[b"PUBLISH", plan.group.as_bytes(), &payload]);
    }
    let batch = Arc::new(batch);
    let start = Instant::now();
    let end = start + plan.duration;
    let tasks: Vec<_> = (0..plan.clients)
        .map(|c| {
            tokio::spawn(run_publish_client(
                common.resp[c % common.resp.len()].clone(),
                plan.password.clone(),
                batch.clone(),
                plan.pipeline,
                end,
            ))
        })
        .collect();
    let mut total = PublishStats::default();
    let mut failures = Vec::new();
    for task in tasks {
        let s = task.await.context("a publish task panicked")?;
        total.ops += s.ops;
        total.errors += s.errors;
        if total.first_error.is_none() {
            total.first_error = s.first_error;
        }
        total.batch_us.merge(&s.batch_us);
        failures.extend(s.failure);
    }
    let took = start.elapsed().as_secs_f64();
    for f in &failures {
        eprintln!("a client stopped early: {f}");
    }
    if let Some(e) = &total.first_error {
        eprintln!("{} PUBLISH(es) refused; the first reply: {e}", total.errors);
    }
    if total.ops == 0 {
        bail!(
            "no PUBLISH succeeded: {}",
            total
                .first_error
                .iter()
                .chain(&failures)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    let target = common.resp.join(",");
    let h = &total.batch_us;
    report(
        common.json,
        &[
            ("target", target.clone()),
            ("PUBLISH ops", total.ops.to_string()),
            ("PUBLISH ops/s", format!("{:.0}", total.ops as f64 / took)),
            ("error replies", total.errors.to_string()),
            (
                "batch RTT p50/p99/max (ms)",
                format!(
                    "{} / {} / {}",
                    ms(h.percentile(50.0)),
                    ms(h.percentile(99.0)),
                    ms(h.max())
                ),
            ),
        ],
        serde_json::json!({
            "target": target,
            "ops": total.ops,
            "ops_per_sec": total.ops as f64 / took,
            "error_replies": total.errors,
            "client_failures": failures,
            "clients": plan.clients,
            "pipeline": plan.pipeline,
            "payload_size": plan.payload_size,
            "batch_p50_us": h.percentile(50.0),
            "batch_p99_us": h.percentile(99.0),
            "batch_max_us": h.max(),
        }),
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_and_without_units() {
        let d = |s: &str| parse_duration(s).expect(s);
        assert_eq!(d("5"), Duration::from_secs(5));
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        assert_eq!(d("500ms"), Duration::from_millis(500));
        assert_eq!(d("250us"), Duration::from_micros(250));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("1h"), Duration::from_secs(3600));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn payloads_round_trip_and_pad_to_size() {
        let mut buf = Vec::new();
        write_payload(&mut buf, 1_700_000_000_123_456_789, 3, 42, 64);
        assert_eq!(buf.len(), 64);
        assert!(buf.starts_with(b"1700000000123456789 3 42 xxx"));
        assert_eq!(
            parse_payload(&buf),
            Some((1_700_000_000_123_456_789, 3, 42))
        );
        write_payload(&mut buf, 1, 0, 1, 0);
        assert_eq!(buf, b"1 0 1 ");
        assert_eq!(parse_payload(&buf), Some((1, 0, 1)));
        for bad in [
            &b"hello"[..],
            b"1 2",
            b"1 2 3",
            b"a 2 3 x",
            b"99999999999999999999999 0 1 ",
        ] {
            assert_eq!(
                parse_payload(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn order_is_tracked_per_connection_and_publisher() {
        let mut s = ReaderStats::new(2, 2);
        let frame = |p: usize, seq: u64| {
            let mut b = Vec::new();
            write_payload(&mut b, 1_000_000, p, seq, 32);
            b
        };
        // Connection 0: publisher 0 in order, publisher 1 interleaved (fine).
        for (p, seq) in [(0, 1), (1, 1), (0, 2), (1, 5), (0, 3)] {
            s.on_text(0, &frame(p, seq), 3_000_000);
        }
        // Connection 1: its own sequence space; one step back, one repeat.
        for seq in [4, 6, 5, 7, 7] {
            s.on_text(1, &frame(0, seq), 3_000_000);
        }
        s.on_text(1, b"not a bench payload", 3_000_000);
        s.on_text(1, &frame(9, 1), 3_000_000);
        assert_eq!(s.received, 10);
        assert_eq!(s.order_violations, 1);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.foreign, 2);
        assert_eq!(s.latency_us.max(), 2000, "2 ms from send to receipt");
        let mut total = ReaderStats::new(0, 2);
        total.merge(&s);
        total.merge(&s);
        assert_eq!((total.received, total.order_violations), (20, 2));
    }

    #[test]
    fn metrics_are_read_by_exact_name() {
        let body = "# HELP x\nswitchboard_connections_accepted_total 9\nswitchboard_connections 3\nprocess_resident_memory_bytes 1048576\n";
        assert_eq!(metric(body, "switchboard_connections"), Some(3.0));
        assert_eq!(
            metric(body, "process_resident_memory_bytes"),
            Some(1048576.0)
        );
        assert_eq!(metric(body, "nope"), None);
    }

    #[test]
    fn the_cli_parses_each_subcommand() {
        let cli = Cli::try_parse_from([
            "switchboard-bench",
            "fanout",
            "--jwt-secret",
            "s",
            "--connections",
            "100",
            "--groups",
            "4",
            "--rate",
            "1000",
            "--duration",
            "3s",
            "--resp",
            "127.0.0.1:6380,127.0.0.1:6381",
        ])
        .expect("parses");
        match cli.command {
            Command::Fanout {
                common, duration, ..
            } => {
                assert_eq!(duration, Duration::from_secs(3));
                assert_eq!(common.resp.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        let cli =
            Cli::try_parse_from(["switchboard-bench", "idle", "--hold", "2"]).expect("parses");
        assert!(
            matches!(cli.command, Command::Idle { hold, .. } if hold == Duration::from_secs(2))
        );
        Cli::try_parse_from([
            "switchboard-bench",
            "publish",
            "--clients",
            "8",
            "--pipeline",
            "1",
        ])
        .expect("parses");
    }
}
