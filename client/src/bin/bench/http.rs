//! `http`: `POST /v1/publish` throughput on the admin port. C keep-alive HTTP/1.1
//! connections, each sending one request and reading its answer before the next (what an
//! HTTP client library in a backend does), for a duration; reports requests/s, refusals
//! and the request latency. Run it beside `publish` (RESP, `--pipeline 1`) with the same
//! `--clients` for the side-by-side in docs/benchmarks.md.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_client::Histogram;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::common::Common;
use crate::report::{self, p50_p99_max};

/// What `http` does, from its flags.
#[derive(Debug)]
pub struct HttpPlan {
    pub clients: usize,
    pub duration: Duration,
    pub payload_size: usize,
    pub group: String,
    pub token: Option<String>,
    /// Give each request its own idempotency key (a Raft commit each).
    pub keyed: bool,
}

#[derive(Debug, Default)]
struct Tally {
    ok: u64,
    refused: u64,
    latency: Histogram,
    failure: Option<String>,
}

/// One answer's status, its body read and dropped (`Content-Length` framing: the node's
/// answers are never chunked).
async fn read_answer(reader: &mut BufReader<TcpStream>) -> anyhow::Result<u16> {
    let mut line = String::new();
    reader.read_line(&mut line).await?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("not an HTTP status line: {line:?}"))?;
    let mut length = 0usize;
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("connection closed in the answer's head");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(status)
}

async fn run_client(admin: String, plan: std::sync::Arc<HttpPlan>, client: usize) -> Tally {
    let mut tally = Tally::default();
    let end = Instant::now() + plan.duration;
    let stream = match TcpStream::connect(&admin).await {
        Ok(s) => s,
        Err(e) => {
            tally.failure = Some(format!("{admin}: {e}"));
            return tally;
        }
    };
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::new(stream);
    let data = "x".repeat(plan.payload_size);
    let auth = plan
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut n = 0u64;
    while Instant::now() < end {
        let body = if plan.keyed {
            format!(
                r#"{{"group":"{}","data":"{data}","idempotency_key":"bench-{client}-{n}"}}"#,
                plan.group
            )
        } else {
            format!(r#"{{"group":"{}","data":"{data}"}}"#, plan.group)
        };
        n += 1;
        let request = format!(
            "POST /v1/publish HTTP/1.1\r\nHost: {admin}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        let sent = Instant::now();
        if let Err(e) = reader.get_mut().write_all(request.as_bytes()).await {
            tally.failure = Some(e.to_string());
            return tally;
        }
        match read_answer(&mut reader).await {
            Ok(200) => {
                tally.ok += 1;
                tally.latency.record(sent.elapsed().as_micros() as u64);
            }
            Ok(_) => tally.refused += 1,
            Err(e) => {
                tally.failure = Some(e.to_string());
                return tally;
            }
        }
    }
    tally
}

pub async fn http(common: &Common, plan: HttpPlan) -> anyhow::Result<()> {
    let plan = std::sync::Arc::new(plan);
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..plan.clients.max(1) {
        tasks.spawn(run_client(common.admin.clone(), plan.clone(), i));
    }
    let mut total = Tally::default();
    while let Some(joined) = tasks.join_next().await {
        let t = joined?;
        total.ok += t.ok;
        total.refused += t.refused;
        total.latency.merge(&t.latency);
        if let Some(f) = t.failure {
            bail!("a client failed: {f}");
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let rate = total.ok as f64 / secs;
    report::print(
        common.json,
        &[
            ("connections", plan.clients.to_string()),
            ("keyed (idempotency)", plan.keyed.to_string()),
            ("publishes answered 200", total.ok.to_string()),
            ("refused (not 200)", total.refused.to_string()),
            ("publishes/s", format!("{rate:.0}")),
            ("latency p50/p99/max ms", p50_p99_max(&total.latency)),
        ],
        serde_json::json!({
            "connections": plan.clients,
            "keyed": plan.keyed,
            "ok": total.ok,
            "refused": total.refused,
            "per_sec": rate,
            "p50_ms": total.latency.percentile(50.0) as f64 / 1e3,
            "p99_ms": total.latency.percentile(99.0) as f64 / 1e3,
        }),
    );
    Ok(())
}
