//! `failover`: leader fail-over. The `churn` workers run against one surviving node
//! (`--ws`, `--admin`), then the leader's process is killed with `kill -9`; reports the
//! time until the survivor sees a new term, and until its first presence write commits
//! in that term.

use std::time::{Duration, Instant};

use anyhow::bail;
use tokio::sync::watch;

use crate::churn::{join, spawn_workers};
use crate::common::{Common, http_get, metric};
use crate::report::{self, whole_ms};

pub async fn failover(
    common: &Common,
    workers: usize,
    hold: Duration,
    leader_pid: u32,
) -> anyhow::Result<()> {
    let term = |body: &str| metric(body, "switchboard_raft_term").unwrap_or(0.0);
    let writes = |body: &str| metric(body, "switchboard_presence_writes_total").unwrap_or(0.0);
    let (stop_tx, stop_rx) = watch::channel(false);
    let handles = spawn_workers(common, workers, hold, 2_000_000, stop_rx)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = http_get(&common.admin, "/metrics").await?;
    let (term0, writes0) = (term(&before), writes(&before));
    if writes0 == 0.0 {
        bail!("no presence write on the survivor before the kill: is the churn reaching it?");
    }
    let status = std::process::Command::new("kill")
        .args(["-9", &leader_pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -9 {leader_pid} failed");
    }
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(30);
    let mut elected: Option<(Duration, f64)> = None;
    let resumed = loop {
        if Instant::now() > deadline {
            bail!("no presence write in a new term within 30 s");
        }
        if let Ok(body) = http_get(&common.admin, "/metrics").await {
            match elected {
                None if term(&body) > term0 => elected = Some((killed.elapsed(), writes(&body))),
                Some((_, w)) if writes(&body) > w => break killed.elapsed(),
                _ => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let _ = stop_tx.send(true);
    let (connects, failures) = join(handles).await;
    let elected = elected.map_or(Duration::ZERO, |(d, _)| d);
    report::print(
        common.json,
        &[
            ("new term seen after", whole_ms(elected)),
            ("presence writes resumed after", whole_ms(resumed)),
            ("client connects (whole run)", connects.to_string()),
            ("connect failures", failures.to_string()),
        ],
        serde_json::json!({
            "elected_ms": elected.as_secs_f64() * 1e3,
            "resumed_ms": resumed.as_secs_f64() * 1e3,
            "connects": connects,
            "failures": failures,
        }),
    );
    Ok(())
}
