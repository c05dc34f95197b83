//! `idle`: open N WebSocket connections and hold them; report the connect rate and
//! latency, and the server's RSS per connection (from the admin `/metrics`, or
//! `/proc/PID/status` with `--server-pid`), before and after connecting.

use std::time::Duration;

use crate::common::{Common, close, open, server_rss, wait_connections};
use crate::fanout::Readers;
use crate::report::{self, kib, mib, p50_p99_max};

/// The server's RSS, or `None` (saying why, `when` it was wanted) if it cannot be read.
async fn rss(common: &Common, when: &str) -> Option<u64> {
    server_rss(common)
        .await
        .inspect_err(|e| eprintln!("no server RSS {when}: {e:#}"))
        .ok()
}

pub async fn idle(common: &Common, n: usize, hold: Duration) -> anyhow::Result<()> {
    let before = rss(common, "before connecting").await;
    let opened = open(common, n, |_| Vec::new()).await?;
    let connected = opened.connections.len();
    let connect_rate = opened.rate();
    wait_connections(common, connected).await;
    let readers = Readers::spawn(opened.connections, 1);
    eprintln!("holding for {hold:?}");
    tokio::time::sleep(hold).await;
    let after = rss(common, "after connecting").await;
    let (stats, open_conns) = readers.stop(1).await;
    let per_conn = match (before, after) {
        (Some(b), Some(a)) if connected > 0 => Some(a.saturating_sub(b) as f64 / connected as f64),
        _ => None,
    };
    let total_per_conn = after
        .filter(|_| connected > 0)
        .map(|a| a as f64 / connected as f64);
    let lat = &opened.latency_us;
    report::print(
        common.json,
        &[
            ("connections", connected.to_string()),
            ("connect failures", opened.failures.to_string()),
            ("connect rate (conn/s)", format!("{:.0}", connect_rate)),
            ("connect p50/p99/max (ms)", p50_p99_max(lat)),
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
    close(common, open_conns).await;
    Ok(())
}
