//! `fanout`: N connections spread over G groups, P RESP publishers at a total rate R.
//! Reports deliveries expected (the sum of the PUBLISH replies) and received, lost,
//! delivered msgs/s, publish-to-receipt latency percentiles, and per-publisher order
//! violations and duplicates seen on each connection.
//!
//! The reader tasks ([`Readers`]) each own a share of the connections and keep their own
//! counters and histogram ([`ReaderStats`]), merged at the end, so receiving is cheap;
//! `idle` uses them too, to notice connections the server closes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use switchboard_client::resp::encode_command;
use switchboard_client::{Connection, Error, Histogram, Incoming};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::common::{
    Common, PublishTotals, Replies, close, histogram, histogram_quantile, http_get, open,
    parse_payload, resp_client, unix_nanos, wait_routable, write_payload,
};
use crate::report::{self, ms};

/// What `fanout` does, from its flags (counts already at least 1).
#[derive(Debug)]
pub struct FanoutPlan {
    /// Groups are named `<prefix><i>` (a prefix a `--history` rule matches: history groups).
    pub group_prefix: String,
    pub connections: usize,
    pub groups: usize,
    pub rate: u64,
    pub duration: Duration,
    pub payload_size: usize,
    pub publishers: usize,
    pub pipeline: usize,
    pub drain: Duration,
    pub password: Option<String>,
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
) -> Replies {
    let mut stats = Replies::default();
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
        if let Err(e) = stats.read(&mut client, n).await {
            stats.failure = Some(e.to_string());
            return stats;
        }
    }
    stats
}

pub async fn fanout(common: &Common, plan: FanoutPlan) -> anyhow::Result<()> {
    if common.resp.is_empty() {
        bail!("--resp needs at least one address");
    }
    let groups: Arc<Vec<String>> = Arc::new(
        (0..plan.groups)
            .map(|g| format!("{}{g}", plan.group_prefix))
            .collect(),
    );
    let opened = open(common, plan.connections, |i| {
        vec![groups[i % groups.len()].clone()]
    })
    .await?;
    let connected = opened.connections.len();
    let connect_rate = opened.rate();
    let routable = wait_routable(common, plan.password.as_deref(), &groups, connected).await;
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

    // The node's own stages of the publish path, read before and after (its histograms).
    let stages_before = http_get(&common.admin, "/metrics").await.ok();
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
    let mut pubs = PublishTotals::default();
    for task in publishers {
        pubs.add(task.await.context("a publisher task panicked")?);
    }
    let publish_time = start.elapsed().as_secs_f64();
    pubs.check("a publisher")?;

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
    let stages_after = http_get(&common.admin, "/metrics").await.ok();
    let stage = |name: &str, q: f64| -> Option<f64> {
        let (before, after) = (stages_before.as_deref()?, stages_after.as_deref()?);
        histogram_quantile(&histogram(before, name), &histogram(after, name), q)
    };
    let stage_ms = |name: &str| {
        let show = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{:.3}", s * 1e3));
        format!("{} / {}", show(stage(name, 0.5)), show(stage(name, 0.99)))
    };

    let got = stats.received;
    let receive_secs = if stats.last_receipt > start_nanos {
        (stats.last_receipt - start_nanos) as f64 / 1e9
    } else {
        publish_time
    };
    let delivered_rate = got as f64 / receive_secs.max(1e-9);
    let lost = expected.saturating_sub(got);
    let h = &stats.latency_us;
    report::print(
        common.json,
        &[
            ("connections", connected.to_string()),
            ("connect failures", opened.failures.to_string()),
            ("groups", plan.groups.to_string()),
            ("routable at start", routable.to_string()),
            ("published", pubs.published.to_string()),
            (
                "publish errors",
                (pubs.errors + pubs.failures.len() as u64).to_string(),
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
            (
                "node fan-out round p50/p99 (ms)",
                stage_ms("switchboard_fanout_seconds"),
            ),
            (
                "node queue wait p50/p99 (ms)",
                stage_ms("switchboard_delivery_wait_seconds"),
            ),
            (
                "node batch write p50/p99 (ms)",
                stage_ms("switchboard_delivery_write_seconds"),
            ),
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
            "publisher_failures": pubs.failures,
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
            "node_fanout_p50_s": stage("switchboard_fanout_seconds", 0.5),
            "node_fanout_p99_s": stage("switchboard_fanout_seconds", 0.99),
            "node_wait_p50_s": stage("switchboard_delivery_wait_seconds", 0.5),
            "node_wait_p99_s": stage("switchboard_delivery_wait_seconds", 0.99),
            "node_write_p50_s": stage("switchboard_delivery_write_seconds", 0.5),
            "node_write_p99_s": stage("switchboard_delivery_write_seconds", 0.99),
            "order_violations": stats.order_violations,
            "duplicates": stats.duplicates,
            "foreign_frames": stats.foreign,
            "binary_frames": stats.binary,
            "closed_by_server": stats.closes,
        }),
    );
    close(common, open_conns).await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Readers

/// What one reader task saw. Only its own task touches it; merged at the end.
#[derive(Debug)]
pub struct ReaderStats {
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
    pub closes: BTreeMap<u16, u64>,
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

    /// Bench payloads received.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Publish-to-receipt latency, in microseconds.
    pub fn latency(&self) -> &Histogram {
        &self.latency_us
    }

    pub fn closes_text(&self) -> String {
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

/// Reader tasks, each owning a share of the connections.
pub struct Readers {
    tasks: Vec<JoinHandle<(ReaderStats, Vec<Connection>)>>,
    progress: Vec<Arc<AtomicU64>>,
    stop: watch::Sender<bool>,
}

impl Readers {
    pub fn spawn(connections: Vec<Connection>, publishers: usize) -> Readers {
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
    pub fn received(&self) -> u64 {
        self.progress
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops every task; returns the merged stats and the connections still open.
    pub async fn stop(self, publishers: usize) -> (ReaderStats, Vec<Connection>) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
