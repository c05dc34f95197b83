//! What the scenarios share: the [`Common`] flags; minting tokens ([`Minter`]); opening
//! and closing many WebSocket connections; RESP publisher connections and the tally of
//! their PUBLISH replies ([`Replies`], [`PublishTotals`]); the admin endpoint
//! ([`http_get`], [`metric`], [`server_rss`]); waiting until the node has registered the
//! connections ([`wait_connections`]) or made them routable ([`wait_routable`]); and the
//! bench payload (`<unix nanos> <publisher> <seq> ` then padding).

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Args;
use switchboard_client::load::{loopback_source, source_ips_needed};
use switchboard_client::{
    Claims, ConnectMany, ConnectOptions, Connection, Error, RespClient, RespValue, close_many,
    connect_many,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Args, Clone)]
pub struct Common {
    /// WebSocket URL; several, comma-separated, spread the clients over nodes.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8001/ws/notifications/",
        value_delimiter = ','
    )]
    pub ws: Vec<String>,
    /// RESP address to publish to; several, comma-separated, spread the publishers.
    #[arg(long, default_value = "127.0.0.1:6379", value_delimiter = ',')]
    pub resp: Vec<String>,
    /// Admin address, for /metrics (server RSS, connection count).
    #[arg(long, default_value = "127.0.0.1:8002")]
    pub admin: String,
    /// Read the server's RSS from /proc/PID/status (VmRSS) instead of /metrics.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// HMAC secret to mint HS256 tokens with (the node's --jwt-secret).
    #[arg(long, env = "SWITCHBOARD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Spread client sockets over 127.0.0.1..127.0.0.N (each address has ~28k ports).
    /// 0: as many as the connection count needs, when the server is on loopback.
    #[arg(long, default_value_t = 0)]
    pub source_ips: u32,
    /// WebSocket connects in progress at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Deadline of each connect (TCP plus upgrade), e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub connect_timeout: Duration,
    /// Print one JSON object of results on stdout (the table then goes to stderr).
    #[arg(long)]
    pub json: bool,
}

/// `5`, `5s`, `1.5s`, `500ms`, `250us`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
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

pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

// ---------------------------------------------------------------------------------------
// WebSocket connections

/// Mints one token per connection; checks the secret is there before anything starts.
pub struct Minter {
    secret: String,
}

impl Minter {
    pub fn new(common: &Common) -> anyhow::Result<Minter> {
        let secret = common.jwt_secret.clone().context(
            "--jwt-secret (or SWITCHBOARD_JWT_SECRET) is needed to mint tokens: give the node's HMAC secret",
        )?;
        let minter = Minter { secret };
        Claims::access(1)
            .mint_hs256(&minter.secret)
            .context("cannot sign a token with this secret")?;
        Ok(minter)
    }

    pub fn token(&self, user: usize, groups: &[String]) -> Option<String> {
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
pub async fn open(
    common: &Common,
    n: usize,
    groups_of: impl Fn(usize) -> Vec<String>,
) -> anyhow::Result<ConnectMany> {
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

/// Closes what [`open`] opened, `--connect-concurrency` at a time, 10 s at most.
pub async fn close(common: &Common, connections: Vec<Connection>) {
    close_many(
        connections,
        common.connect_concurrency,
        Duration::from_secs(10),
    )
    .await;
}

// ---------------------------------------------------------------------------------------
// RESP publishers

/// Connects a RESP client, with AUTH when a password is given.
pub async fn resp_client(addr: &str, password: Option<&str>) -> Result<RespClient, Error> {
    let mut client = RespClient::connect(addr).await?;
    if let Some(pw) = password {
        client.auth(pw).await?;
    }
    Ok(client)
}

/// What one publisher's PUBLISH commands got back.
#[derive(Debug, Default)]
pub struct Replies {
    /// PUBLISH commands answered with an integer.
    pub published: u64,
    /// The sum of those integers: deliveries the server promised.
    pub routed: u64,
    /// Replies that were not integers (error replies), and the first of them.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Why the publisher stopped early, if it did.
    pub failure: Option<String>,
}

impl Replies {
    /// Reads the replies to `n` pipelined PUBLISHes: an error reply is counted (the next
    /// replies are still read), a failed read is the `Err`.
    ///
    /// Not `RespClient::read_integers`: that one stops at the first error reply and
    /// returns only the sum, where this tally needs every reply read and counted.
    pub async fn read(&mut self, client: &mut RespClient, n: usize) -> Result<(), Error> {
        for _ in 0..n {
            match client.read_reply().await? {
                RespValue::Integer(k) => {
                    self.routed += k.max(0) as u64;
                    self.published += 1;
                }
                other => {
                    self.errors += 1;
                    self.first_error.get_or_insert_with(|| format!("{other:?}"));
                }
            }
        }
        Ok(())
    }
}

/// Every publisher's [`Replies`] added up, with each early stop.
#[derive(Debug, Default)]
pub struct PublishTotals {
    pub published: u64,
    pub routed: u64,
    pub errors: u64,
    /// The first error reply of the first publisher that had one.
    pub first_error: Option<String>,
    pub failures: Vec<String>,
}

impl PublishTotals {
    pub fn add(&mut self, r: Replies) {
        self.published += r.published;
        self.routed += r.routed;
        self.errors += r.errors;
        if self.first_error.is_none() {
            self.first_error = r.first_error;
        }
        self.failures.extend(r.failure);
    }

    /// Prints each early stop (`"{who} stopped early: ..."`) and the first error reply;
    /// fails when no PUBLISH succeeded at all.
    pub fn check(&self, who: &str) -> anyhow::Result<()> {
        for f in &self.failures {
            eprintln!("{who} stopped early: {f}");
        }
        if let Some(e) = &self.first_error {
            eprintln!("{} PUBLISH(es) refused; the first reply: {e}", self.errors);
        }
        if self.published == 0 {
            bail!(
                "no PUBLISH succeeded: {}",
                self.first_error
                    .iter()
                    .chain(&self.failures)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Admin endpoint

pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
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
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == name).then(|| v.trim().parse().ok())?
    })
}

/// A node histogram from `/metrics`: its cumulative buckets as (upper bound in seconds,
/// count), the last one unbounded.
pub fn histogram(body: &str, name: &str) -> Vec<(f64, u64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    body.lines()
        .filter_map(|l| {
            let (le, count) = l.strip_prefix(&prefix)?.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The `q` quantile (0..1), in seconds, of what a cumulative histogram observed between
/// two readings, interpolated inside its bucket (the lower bound for the unbounded one);
/// `None` when nothing was observed.
pub fn histogram_quantile(before: &[(f64, u64)], after: &[(f64, u64)], q: f64) -> Option<f64> {
    let delta: Vec<(f64, u64)> = after
        .iter()
        .map(|&(le, count)| {
            let was = before.iter().find(|b| b.0 == le).map_or(0, |b| b.1);
            (le, count.saturating_sub(was))
        })
        .collect();
    let total = delta.last()?.1;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let (mut lower, mut below) = (0.0, 0u64);
    for &(le, count) in &delta {
        if count as f64 >= rank && count > below {
            if le.is_infinite() {
                return Some(lower);
            }
            let within = (rank - below as f64) / (count - below) as f64;
            return Some(lower + within.clamp(0.0, 1.0) * (le - lower));
        }
        (lower, below) = (le, count);
    }
    None
}

pub async fn server_rss(common: &Common) -> anyhow::Result<u64> {
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

// ---------------------------------------------------------------------------------------
// Waiting for the node

/// Waits (30 s at most) until the node's admin reports at least `n` connections, so that
/// measurements see every connection registered. Returns at once if the admin endpoint
/// does not answer.
pub async fn wait_connections(common: &Common, n: usize) {
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

/// Waits (30 s at most) until `PUBSUB NUMSUB` over `groups` counts `n` connections, so
/// that publishing starts with every client routable (in a cluster, also on the node
/// published to). Returns the count last seen.
pub async fn wait_routable(
    common: &Common,
    password: Option<&str>,
    groups: &[String],
    n: usize,
) -> u64 {
    let Some(addr) = common.resp.first() else {
        return 0;
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = match resp_client(addr, password).await {
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

// ---------------------------------------------------------------------------------------
// Payload

/// The payload header: `<unix nanos> <publisher> <seq> ` then padding.
pub fn write_payload(out: &mut Vec<u8>, sent: u64, publisher: usize, seq: u64, size: usize) {
    out.clear();
    let _ = write!(out, "{sent} {publisher} {seq} ");
    if out.len() < size {
        out.resize(size, b'x');
    }
}

pub fn parse_payload(text: &[u8]) -> Option<(u64, usize, u64)> {
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
    fn metrics_are_read_by_exact_name() {
        let body = "# HELP x\nswitchboard_connections_accepted_total 9\nswitchboard_connections 3\nprocess_resident_memory_bytes 1048576\n";
        assert_eq!(metric(body, "switchboard_connections"), Some(3.0));
        assert_eq!(
            metric(body, "process_resident_memory_bytes"),
            Some(1048576.0)
        );
        assert_eq!(metric(body, "nope"), None);
    }
}
