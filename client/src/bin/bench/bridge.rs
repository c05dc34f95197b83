//! `bridge`: what the backend bridge costs a node. This process serves a minimal backend
//! on `--backend-listen` (the node is started with `--backend-url` pointing at it): it
//! accepts every connect, answers each frame by sending it back, takes every disconnect,
//! and times its own handling of each call. Then it opens N connections through the node
//! (every connect goes through the backend: connects per second), sends frames at a total
//! rate R (each connection one at a time), and reports the client's frame-to-reply time
//! beside the backend's own time: the difference is what the node adds.
//!
//! With `--hang-at T --hang-for D`, the backend stops answering for D from T on (calls
//! wait, the node times them out), while a RESP publisher sends `--publish-rate`
//! messages a second to a group every connection is in: their publish-to-receipt time
//! before and during the hang, and the node's RSS, say whether a hanging backend slows
//! anything else down or grows the node.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming as Body;
use hyper_util::rt::TokioIo;
use switchboard_client::resp::encode_command;
use switchboard_client::{Connection, Histogram, Incoming};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use crate::common::{Common, close, open, resp_client, server_rss, unix_nanos};
use crate::report::{self, mib, p50_p99_max};

/// What `bridge` does, from its flags.
#[derive(Debug)]
pub struct BridgePlan {
    pub backend_listen: String,
    pub connections: usize,
    pub rate: u64,
    pub duration: Duration,
    pub hang_at: Option<Duration>,
    pub hang_for: Duration,
    pub publish_rate: u64,
}

/// The backend: its own handling time per call, and whether it hangs now.
struct Backend {
    own_us: Mutex<Histogram>,
    hanging: AtomicBool,
}

async fn serve_backend(listener: TcpListener, backend: Arc<Backend>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let backend = backend.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<Body>| {
                let backend = backend.clone();
                async move { Ok::<_, Infallible>(answer(&backend, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One call: accept a connect, send a frame back, take a disconnect.
async fn answer(backend: &Backend, req: hyper::Request<Body>) -> hyper::Response<Full<Bytes>> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let started = Instant::now();
    while backend.hanging.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let call: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let actions = match call["type"].as_str() {
        Some("connect") => serde_json::json!([{"type": "accept"}]),
        Some("receive") => serde_json::json!([{"type": "send", "text": call["text"]}]),
        _ => serde_json::json!([]),
    };
    let out = serde_json::to_vec(&serde_json::json!({ "actions": actions })).unwrap_or_default();
    backend
        .own_us
        .lock()
        .await
        .record(started.elapsed().as_micros() as u64);
    hyper::Response::new(Full::new(Bytes::from(out)))
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    replies: Histogram,
    unavailable: u64,
    refused: u64,
    /// Publish-to-receipt times before and during the backend's hang.
    published_before: Histogram,
    published_during: Histogram,
}

/// One connection: a frame every `every` (the next once the last one was answered),
/// and whatever is published meanwhile, until `end`.
async fn client(
    mut conn: Connection,
    every: Duration,
    end: Instant,
    hang: Option<(Instant, Instant)>,
) -> (Connection, Seen) {
    let mut seen = Seen::default();
    let mut next = Instant::now() + every.mul_f64(rand_fraction(&conn));
    // No `every`: only held (the memory run).
    let mut waiting = every.is_zero();
    while Instant::now() < end {
        let frame = tokio::select! {
            frame = conn.recv() => frame,
            _ = tokio::time::sleep_until(next.into()), if !waiting => {
                let text = format!("{{\"t\": {}}}", unix_nanos());
                if conn.send_text(&text).await.is_err() {
                    break;
                }
                waiting = true;
                next += every;
                continue;
            }
            _ = tokio::time::sleep_until(end.into()) => break,
        };
        let Ok(Incoming::Text(text)) = frame else {
            if frame.is_err() {
                break;
            }
            continue;
        };
        if let Some(rest) = text.strip_prefix("{\"t\": ") {
            if let Ok(t) = rest.trim_end_matches('}').parse::<u64>() {
                seen.replies.record(unix_nanos().saturating_sub(t) / 1000);
            }
            waiting = false;
        } else if text.starts_with("{\"type\":\"error\"") {
            if text.contains("unavailable") {
                seen.unavailable += 1;
            } else {
                seen.refused += 1;
            }
            waiting = false;
        } else if let Some(t) = text.split(' ').next().and_then(|t| t.parse::<u64>().ok()) {
            let us = unix_nanos().saturating_sub(t) / 1000;
            let now = Instant::now();
            match hang {
                Some((from, to)) if now >= from && now < to => seen.published_during.record(us),
                _ => seen.published_before.record(us),
            }
        }
    }
    (conn, seen)
}

/// A fraction in [0, 1) from the connection's port, so that clients send out of step.
fn rand_fraction(conn: &Connection) -> f64 {
    f64::from(conn.local_addr().port() % 1000) / 1000.0
}

pub async fn bridge(common: &Common, plan: BridgePlan) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&plan.backend_listen)
        .await
        .with_context(|| format!("cannot listen on --backend-listen {}", plan.backend_listen))?;
    let backend = Arc::new(Backend {
        own_us: Mutex::new(Histogram::new()),
        hanging: AtomicBool::new(false),
    });
    tokio::spawn(serve_backend(listener, backend.clone()));
    let rss_idle = server_rss(common).await.ok();
    // In a group only when something is published to them (the memory run is as `idle`'s).
    let groups = match plan.publish_rate {
        0 => Vec::new(),
        _ => vec!["bench_all".to_string()],
    };
    let opened = open(common, plan.connections, |_| groups.clone()).await?;
    let connected = opened.connections.len();
    let connect_rate = opened.rate();
    let rss_open = server_rss(common).await.ok();
    let connect_own = std::mem::take(&mut *backend.own_us.lock().await);

    let start = Instant::now();
    let end = start + plan.duration;
    let hang = plan
        .hang_at
        .map(|at| (start + at, start + at + plan.hang_for));
    // Rate 0: no frames, the connections are only held (memory).
    let every = match plan.rate {
        0 => Duration::ZERO,
        rate => Duration::from_secs_f64(connected.max(1) as f64 / rate as f64),
    };
    let clients: Vec<_> = opened
        .connections
        .into_iter()
        .map(|c| tokio::spawn(client(c, every, end, hang)))
        .collect();
    if let Some((from, to)) = hang {
        let backend = backend.clone();
        tokio::spawn(async move {
            tokio::time::sleep_until(from.into()).await;
            backend.hanging.store(true, Ordering::Relaxed);
            tokio::time::sleep_until(to.into()).await;
            backend.hanging.store(false, Ordering::Relaxed);
        });
    }
    let publisher = (plan.publish_rate > 0 && !common.resp.is_empty()).then(|| {
        let addr = common.resp[0].clone();
        let rate = plan.publish_rate;
        tokio::spawn(async move {
            let Ok(mut resp) = resp_client(&addr, None).await else {
                return;
            };
            let mut out = Vec::new();
            let mut seq = 0u64;
            while Instant::now() < end {
                seq += 1;
                out.clear();
                let payload = format!("{} bench {seq}", unix_nanos());
                encode_command(&mut out, &[b"PUBLISH", b"bench_all", payload.as_bytes()]);
                if resp.send_raw(&out).await.is_err() || resp.read_reply().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs_f64(1.0 / rate as f64)).await;
            }
        })
    });
    let mut rss_during = None;
    if let Some((from, to)) = hang {
        let middle = from + (to - from) / 2;
        if middle < end {
            tokio::time::sleep_until(middle.into()).await;
            rss_during = server_rss(common).await.ok();
        }
    }
    let mut all = Seen::default();
    let mut conns = Vec::new();
    for task in clients {
        let (conn, seen) = task.await.context("a client task panicked")?;
        all.replies.merge(&seen.replies);
        all.published_before.merge(&seen.published_before);
        all.published_during.merge(&seen.published_during);
        all.unavailable += seen.unavailable;
        all.refused += seen.refused;
        conns.push(conn);
    }
    if let Some(p) = publisher {
        p.abort();
    }
    let rss_after = server_rss(common).await.ok();
    let per_connection = match (rss_idle, rss_open) {
        (Some(idle), Some(open)) if connected > 0 => {
            Some(open.saturating_sub(idle) as f64 / connected as f64)
        }
        _ => None,
    };
    let own = backend.own_us.lock().await;
    let frames = all.replies.count();
    let overhead = |q: f64| all.replies.percentile(q).saturating_sub(own.percentile(q));
    report::print(
        common.json,
        &[
            ("connections", connected.to_string()),
            ("connects/s (through backend)", format!("{connect_rate:.0}")),
            ("RSS per connection KiB", report::kib(per_connection)),
            ("backend connect p50/p99/max", p50_p99_max(&connect_own)),
            ("frames answered", frames.to_string()),
            (
                "frames/s",
                format!("{:.0}", frames as f64 / plan.duration.as_secs_f64()),
            ),
            ("frame->reply p50/p99/max ms", p50_p99_max(&all.replies)),
            ("backend own p50/p99/max ms", p50_p99_max(&own)),
            (
                "node adds p50 / p99 ms",
                format!(
                    "{} / {}",
                    report::ms(overhead(50.0)),
                    report::ms(overhead(99.0))
                ),
            ),
            (
                "unavailable / refused",
                format!("{} / {}", all.unavailable, all.refused),
            ),
            (
                "published p50/p99/max ms",
                p50_p99_max(&all.published_before),
            ),
            (
                "published in hang p50/p99",
                p50_p99_max(&all.published_during),
            ),
            (
                "node RSS idle/open/hang/after MiB",
                format!(
                    "{} / {} / {} / {}",
                    mib(rss_idle),
                    mib(rss_open),
                    mib(rss_during),
                    mib(rss_after)
                ),
            ),
        ],
        serde_json::json!({
            "connections": connected,
            "connect_rate": connect_rate,
            "rss_per_connection": per_connection,
            "frames": frames,
            "reply_p50_us": all.replies.percentile(50.0),
            "reply_p99_us": all.replies.percentile(99.0),
            "backend_p50_us": own.percentile(50.0),
            "backend_p99_us": own.percentile(99.0),
            "unavailable": all.unavailable,
            "refused": all.refused,
            "published_p50_us": all.published_before.percentile(50.0),
            "published_p99_us": all.published_before.percentile(99.0),
            "published_hang_p50_us": all.published_during.percentile(50.0),
            "published_hang_p99_us": all.published_during.percentile(99.0),
            "rss_idle": rss_idle,
            "rss_open": rss_open,
            "rss_hang": rss_during,
            "rss_after": rss_after,
        }),
    );
    drop(own);
    close(common, conns).await;
    Ok(())
}
