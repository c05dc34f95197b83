//! `raw`: the physical limit of fan-out on this machine, for `fanout` to be measured
//! against. A bare WebSocket server in this process (tokio-tungstenite handshakes, then
//! the TCP streams alone) writes one pre-encoded text frame, carrying the same payload as
//! `fanout`'s publisher, to every connection in turn: no broker, no queues, no tasks per
//! connection, only the write syscalls. `--batch K` writes K frames per syscall, as a
//! node's connection task does when K publishes are in flight. The clients and their readers are `fanout`'s, so
//! the deliveries/s and latencies compare directly. With `--connections 1 --rate R` it is
//! the latency floor of one write to one socket.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

use crate::common::{Common, open, unix_nanos, write_payload};
use crate::fanout::Readers;
use crate::report::{self, p50_p99_max};

/// Accepts `n` WebSocket handshakes and keeps the bare streams.
async fn accept(listener: TcpListener, n: usize) -> anyhow::Result<Vec<TcpStream>> {
    let mut streams = Vec::with_capacity(n);
    while streams.len() < n {
        let (tcp, _) = listener.accept().await?;
        tcp.set_nodelay(true)?;
        let ws = tokio_tungstenite::accept_async(tcp)
            .await
            .context("a WebSocket handshake failed")?;
        streams.push(ws.into_inner());
    }
    Ok(streams)
}

/// Appends a server-to-client text frame (unmasked) holding `payload`.
fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.push(0x81);
    match payload.len() {
        len @ 0..=125 => out.push(len as u8),
        len @ 126..=65_535 => {
            out.push(126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

pub async fn raw(
    common: &Common,
    n: usize,
    rate: u64,
    batch: usize,
    duration: Duration,
    size: usize,
) -> anyhow::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/ws/notifications/", listener.local_addr()?);
    let server = tokio::spawn(accept(listener, n));
    let mut clients = common.clone();
    clients.ws = vec![url];
    let opened = open(&clients, n, |_| Vec::new()).await?;
    let mut streams = server.await??;
    let readers = Readers::spawn(opened.connections, 1);
    let (mut payload, mut bytes) = (Vec::new(), Vec::new());
    let pace = (rate > 0).then(|| Duration::from_secs_f64(1.0 / rate as f64));
    let started = Instant::now();
    let end = started + duration;
    let (mut rounds, mut seq) = (0u64, 0u64);
    while Instant::now() < end {
        rounds += 1;
        bytes.clear();
        for _ in 0..batch {
            seq += 1;
            write_payload(&mut payload, unix_nanos(), 0, seq, size);
            frame(&mut bytes, &payload);
        }
        for stream in &mut streams {
            stream.write_all(&bytes).await?;
        }
        if let Some(pace) = pace {
            tokio::time::sleep_until((started + pace * rounds as u32).into()).await;
        }
    }
    let elapsed = started.elapsed();
    let written = seq * streams.len() as u64;
    // Let the readers take what the sockets still hold (bounded).
    let drain_until = Instant::now() + Duration::from_secs(10);
    while readers.received() < written && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (stats, _) = readers.stop(1).await;
    let received = stats.received();
    let secs = elapsed.as_secs_f64();
    report::print(
        common.json,
        &[
            ("connections", streams.len().to_string()),
            (
                "rounds (one write of --batch frames to every connection)",
                rounds.to_string(),
            ),
            ("frames written", written.to_string()),
            ("frames received", received.to_string()),
            ("delivered msgs/s", format!("{:.0}", received as f64 / secs)),
            ("latency p50 / p99 / max (ms)", p50_p99_max(stats.latency())),
        ],
        serde_json::json!({
            "connections": streams.len(),
            "rounds": rounds,
            "written": written,
            "received": received,
            "delivered_per_sec": received as f64 / secs,
            "p50_us": stats.latency().percentile(50.0),
            "p99_us": stats.latency().percentile(99.0),
        }),
    );
    Ok(())
}
