//! `publish`: RESP `PUBLISH` throughput only, C connections with K commands in flight
//! each, for a duration; reports ops/s, error replies and the batch round-trip time. It
//! speaks nothing but standard RESP2, so it runs against redis-server too, for a
//! side-by-side comparison.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_client::Histogram;
use switchboard_client::resp::encode_command;

use crate::common::{Common, PublishTotals, Replies, resp_client};
use crate::report::{self, p50_p99_max};

/// What `publish` does, from its flags (counts already at least 1).
#[derive(Debug)]
pub struct PublishPlan {
    pub clients: usize,
    pub pipeline: usize,
    pub duration: Duration,
    pub payload_size: usize,
    pub group: String,
    pub password: Option<String>,
}

/// Writes `batch` (`pipeline` PUBLISHes) and reads its replies, again and again until
/// `end`; returns the replies and the round-trip time of each batch.
async fn run_publish_client(
    addr: String,
    password: Option<String>,
    batch: Arc<Vec<u8>>,
    pipeline: usize,
    end: Instant,
) -> (Replies, Histogram) {
    let mut stats = Replies::default();
    let mut batch_us = Histogram::new();
    let mut client = match resp_client(&addr, password.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            stats.failure = Some(format!("{addr}: {e}"));
            return (stats, batch_us);
        }
    };
    while Instant::now() < end {
        let t = Instant::now();
        if let Err(e) = client.send_raw(&batch).await {
            stats.failure = Some(e.to_string());
            return (stats, batch_us);
        }
        if let Err(e) = stats.read(&mut client, pipeline).await {
            stats.failure = Some(e.to_string());
            return (stats, batch_us);
        }
        batch_us.record(t.elapsed().as_micros() as u64);
    }
    (stats, batch_us)
}

pub async fn publish(common: &Common, plan: PublishPlan) -> anyhow::Result<()> {
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
    let mut total = PublishTotals::default();
    let mut h = Histogram::new();
    for task in tasks {
        let (replies, batch_us) = task.await.context("a publish task panicked")?;
        total.add(replies);
        h.merge(&batch_us);
    }
    let took = start.elapsed().as_secs_f64();
    total.check("a client")?;
    let target = common.resp.join(",");
    report::print(
        common.json,
        &[
            ("target", target.clone()),
            ("PUBLISH ops", total.published.to_string()),
            (
                "PUBLISH ops/s",
                format!("{:.0}", total.published as f64 / took),
            ),
            ("error replies", total.errors.to_string()),
            ("batch RTT p50/p99/max (ms)", p50_p99_max(&h)),
        ],
        serde_json::json!({
            "target": target,
            "ops": total.published,
            "ops_per_sec": total.published as f64 / took,
            "error_replies": total.errors,
            "client_failures": total.failures,
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
