//! `churn`: presence churn, what the Raft registry sustains.
//!
//! W workers each connect (a WebSocket, its own user), hold the connection for
//! `--hold`, close, and start again, for `--duration`. Every connect and close is a
//! presence change that must be committed through Raft (a connection held longer than the
//! 20 ms batch does not cancel out). Reports the client-side connect rate and, from every
//! node's `/metrics`, the presence changes committed per second cluster-wide.
//!
//! Meanwhile one reader follows the first admin address's presence events
//! (`GET /v1/presence/events`, Server-Sent Events) and counts what it receives: the rate
//! a backend tailing "who came online" sees during the churn.
//!
//! The workers ([`spawn_workers`], [`join`]) also drive `failover`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use switchboard_client::{ConnectOptions, Connection};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::common::{Common, Minter, http_get, metric};
use crate::report;

/// Sum of `name` over every admin address.
async fn sum_metric(admins: &[String], name: &str) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for admin in admins {
        let body = http_get(admin, "/metrics").await?;
        total += metric(&body, name).with_context(|| format!("{admin} has no {name}"))?;
    }
    Ok(total)
}

/// Runs `workers` connect/hold/close loops until `stop` turns true. Returns (connects,
/// failures).
pub fn spawn_workers(
    common: &Common,
    workers: usize,
    hold: Duration,
    first_user: usize,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<(u64, u64)>>> {
    let minter = Minter::new(common)?;
    let mut handles = Vec::new();
    for w in 0..workers {
        let url = common.ws[w % common.ws.len()].clone();
        let token = minter
            .token(first_user + w, &[])
            .context("cannot mint a token")?;
        let timeout = common.connect_timeout;
        let mut stop = stop.clone();
        handles.push(tokio::spawn(async move {
            let (mut connects, mut failures) = (0u64, 0u64);
            while !*stop.borrow() {
                let opts = ConnectOptions::new(url.clone())
                    .token(token.clone())
                    .connect_timeout(timeout);
                match Connection::connect(opts).await {
                    Ok(conn) => {
                        connects += 1;
                        tokio::select! {
                            _ = tokio::time::sleep(hold) => {}
                            _ = stop.changed() => {}
                        }
                        let _ = conn.close().await;
                    }
                    Err(_) => {
                        failures += 1;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
            (connects, failures)
        }));
    }
    Ok(handles)
}

pub async fn join(handles: Vec<tokio::task::JoinHandle<(u64, u64)>>) -> (u64, u64) {
    let mut total = (0, 0);
    for h in handles {
        if let Ok((c, f)) = h.await {
            total.0 += c;
            total.1 += f;
        }
    }
    total
}

/// Events and resets one Server-Sent Events reader received.
#[derive(Debug, Default)]
struct Received {
    events: AtomicU64,
    resets: AtomicU64,
}

/// Follows `admin`'s presence events until the stream ends, counting them. HTTP/1.0, so
/// that the body is the bare stream.
async fn follow_events(admin: String, received: Arc<Received>) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(&admin).await?;
    let head = format!("GET /v1/presence/events HTTP/1.0\r\nhost: {admin}\r\n\r\n");
    stream.write_all(head.as_bytes()).await?;
    let mut lines = BufReader::new(stream).lines();
    while let Some(line) = lines.next_line().await? {
        if let Some(data) = line.strip_prefix("data: ") {
            received.events.fetch_add(1, Ordering::Relaxed);
            if data.contains(r#""type":"reset""#) {
                received.resets.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

pub async fn churn(
    common: &Common,
    workers: usize,
    hold: Duration,
    duration: Duration,
    admins: &[String],
    events_reader: bool,
) -> anyhow::Result<()> {
    let admins: Vec<String> = if admins.is_empty() {
        vec![common.admin.clone()]
    } else {
        admins.to_vec()
    };
    const OPS: &str = "switchboard_presence_ops_applied_total";
    const BATCHES: &str = "switchboard_presence_writes_total";
    let received = Arc::new(Received::default());
    let reader =
        events_reader.then(|| tokio::spawn(follow_events(admins[0].clone(), received.clone())));
    let (stop_tx, stop_rx) = watch::channel(false);
    let handles = spawn_workers(common, workers, hold, 1_000_000, stop_rx)?;
    // Let the workers reach their steady state before measuring.
    tokio::time::sleep(hold + Duration::from_millis(500)).await;
    let (ops0, batches0) = (
        sum_metric(&admins, OPS).await?,
        sum_metric(&admins, BATCHES).await?,
    );
    let events0 = received.events.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let (ops1, batches1) = (
        sum_metric(&admins, OPS).await?,
        sum_metric(&admins, BATCHES).await?,
    );
    let elapsed = started.elapsed().as_secs_f64();
    let events = (received.events.load(Ordering::Relaxed) - events0) as f64 / elapsed;
    let resets = received.resets.load(Ordering::Relaxed);
    if let Some(reader) = reader {
        reader.abort();
    }
    let _ = stop_tx.send(true);
    let (connects, failures) = join(handles).await;
    let committed = (ops1 - ops0) / elapsed;
    let batches = (batches1 - batches0) / elapsed;
    report::print(
        common.json,
        &[
            ("workers", workers.to_string()),
            ("hold", format!("{hold:?}")),
            ("nodes measured", admins.len().to_string()),
            ("client connects (whole run)", connects.to_string()),
            ("connect failures", failures.to_string()),
            ("presence changes committed/s", format!("{committed:.0}")),
            ("Raft presence batches/s", format!("{batches:.0}")),
            (
                "changes per batch",
                format!("{:.1}", committed / batches.max(1.0)),
            ),
            (
                "presence events/s to one SSE reader",
                format!("{events:.0}"),
            ),
            ("SSE resets (reader fell behind)", resets.to_string()),
        ],
        serde_json::json!({
            "workers": workers,
            "hold_ms": hold.as_millis() as u64,
            "connects": connects,
            "failures": failures,
            "committed_per_sec": committed,
            "batches_per_sec": batches,
            "sse_events_per_sec": events,
            "sse_resets": resets,
        }),
    );
    Ok(())
}
