//! `rolling`: exactly-once delivery in history groups while nodes go away. N clients
//! (`ReconnectingClient::with_positions`, user i's group `user_i`, spread over the `--ws`
//! URLs) follow their group, reconnecting and recovering after 1012, 4008, 4009 or a dead
//! node; one RESP publisher sends sequence numbers to the groups in turn, at a steady
//! rate, moving to the next `--resp` address when its node goes. Whatever restarts the
//! nodes meanwhile (client/scripts/bench-history.sh: a rolling restart) is outside.
//!
//! At the end every client recovers once more (a message that was the last of its group
//! shows no gap), and the bench compares what each client received with what the
//! publisher had acknowledged for its group: lost (acknowledged, never received),
//! duplicated (received twice), out of order, and the `recovered: false` answers.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use switchboard_client::{
    Backoff, ConnectOptions, Event, Histogram, Incoming, ReconnectingClient, RespValue,
};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::common::{Common, Minter, resp_client};
use crate::report::{self, p50_p99_max};

/// What the `rolling` scenario is asked to do.
#[derive(Debug, Clone)]
pub struct RollingPlan {
    pub clients: usize,
    pub rate: u64,
    pub duration: Duration,
    pub drain: Duration,
}

/// What one client saw.
#[derive(Debug, Default)]
struct Seen {
    received: Vec<u64>,
    incomplete: u64,
    connects: u64,
}

/// Locks a mutex, recovering its data if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub async fn rolling(common: &Common, plan: RollingPlan) -> anyhow::Result<()> {
    anyhow::ensure!(plan.clients > 0, "--clients must be at least 1");
    let minter = Minter::new(common)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (recover_tx, recover_rx) = watch::channel(0u32);
    let seen: Vec<Arc<Mutex<Seen>>> = (0..plan.clients).map(|_| Arc::default()).collect();
    let ready = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    for (i, seen) in seen.iter().enumerate() {
        let user = i + 1;
        let mut urls = common.ws.clone();
        let shift = i % urls.len().max(1);
        urls.rotate_left(shift);
        let options = ConnectOptions {
            token: minter.token(user, &[]),
            connect_timeout: common.connect_timeout,
            ..ConnectOptions::default()
        };
        let backoff = Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_secs(2),
        };
        let client = ReconnectingClient::new(urls, options, backoff).with_positions();
        tasks.spawn(follow(
            client,
            format!("user_{user}"),
            seen.clone(),
            ready.clone(),
            stop_rx.clone(),
            recover_rx.clone(),
        ));
    }
    let start = Instant::now();
    while ready.load(std::sync::atomic::Ordering::Acquire) < plan.clients {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(60),
            "clients not subscribed within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{} clients subscribed; publishing", plan.clients);

    let published = publish(common, &plan).await?;

    // Every client recovers once more, then has until --drain to receive what is due.
    let _ = recover_tx.send(1);
    let deadline = Instant::now() + plan.drain;
    let complete = |seen: &[Arc<Mutex<Seen>>]| {
        seen.iter().enumerate().all(|(i, s)| {
            let got: HashSet<u64> = lock(s).received.iter().copied().collect();
            published.acked[i].iter().all(|seq| got.contains(seq))
        })
    };
    while !complete(&seen) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}

    let (mut lost, mut duplicated, mut disordered, mut incomplete, mut connects) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    for (i, s) in seen.iter().enumerate() {
        let s = lock(s);
        incomplete += s.incomplete;
        connects += s.connects;
        let mut once = HashSet::new();
        for seq in &s.received {
            if !once.insert(*seq) {
                duplicated += 1;
            }
        }
        lost += published.acked[i]
            .iter()
            .filter(|seq| !once.contains(seq))
            .count() as u64;
        disordered += s.received.windows(2).filter(|w| w[1] <= w[0]).count() as u64;
    }
    let acked: usize = published.acked.iter().map(Vec::len).sum();
    report::print(
        common.json,
        &[
            ("clients", plan.clients.to_string()),
            ("publishes acknowledged", acked.to_string()),
            ("publishes refused (error)", published.refused.to_string()),
            ("publishes unanswered", published.unanswered.to_string()),
            ("lost (acknowledged)", lost.to_string()),
            ("duplicated", duplicated.to_string()),
            ("out of order", disordered.to_string()),
            ("recovered: false answers", incomplete.to_string()),
            ("client connects", connects.to_string()),
            ("publisher reconnects", published.reconnects.to_string()),
            (
                "ack latency p50/p99/max ms",
                p50_p99_max(&published.latency),
            ),
        ],
        serde_json::json!({
            "clients": plan.clients,
            "acknowledged": acked,
            "refused": published.refused,
            "unanswered": published.unanswered,
            "lost": lost,
            "duplicated": duplicated,
            "out_of_order": disordered,
            "recovered_false": incomplete,
            "client_connects": connects,
            "publisher_reconnects": published.reconnects,
            "ack_p50_ms": published.latency.percentile(50.0) as f64 / 1e3,
            "ack_p99_ms": published.latency.percentile(99.0) as f64 / 1e3,
        }),
    );
    Ok(())
}

/// One client: subscribe, then record every message's sequence number until stopped.
async fn follow(
    mut client: ReconnectingClient,
    group: String,
    seen: Arc<Mutex<Seen>>,
    ready: Arc<std::sync::atomic::AtomicUsize>,
    mut stop: watch::Receiver<bool>,
    mut recover: watch::Receiver<u32>,
) {
    let mut subscribed = false;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            _ = recover.changed() => {
                let _ = client.recover().await;
                continue;
            }
            event = client.recv() => event,
        };
        match event {
            Ok(Event::Connected { .. }) => {
                lock(&seen).connects += 1;
                if !subscribed && client.subscribe(&group).await.is_ok() {
                    subscribed = true;
                    ready.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                }
            }
            Ok(Event::Message(Incoming::Text(text))) => {
                if let Some(seq) = sequence(&text) {
                    lock(&seen).received.push(seq);
                }
            }
            Ok(Event::Recovered {
                recovered: false, ..
            }) => lock(&seen).incomplete += 1,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    let _ = client.close().await;
}

/// The sequence number in a positioned `message` frame (`"data":"<seq>"`).
fn sequence(text: &str) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    (v["type"] == "message").then_some(())?;
    v["data"].as_str()?.parse().ok()
}

/// What the publisher did.
struct Published {
    /// Sequence numbers acknowledged, per client.
    acked: Vec<Vec<u64>>,
    refused: u64,
    unanswered: u64,
    reconnects: u64,
    latency: Histogram,
}

/// Publishes 0, 1, 2... to `user_1`, `user_2`... in turn at `plan.rate` for
/// `plan.duration`; a connection that fails moves to the next `--resp` address.
async fn publish(common: &Common, plan: &RollingPlan) -> anyhow::Result<Published> {
    let mut out = Published {
        acked: vec![Vec::new(); plan.clients],
        refused: 0,
        unanswered: 0,
        reconnects: 0,
        latency: Histogram::new(),
    };
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(1) as f64);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + plan.duration;
    let mut turn = 0usize;
    let mut conn = None;
    let mut seq = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        if conn.is_none() {
            let addr = &common.resp[turn % common.resp.len()];
            turn += 1;
            match resp_client(addr, None).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    out.reconnects += 1;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            }
        }
        let client = (seq as usize) % plan.clients;
        let group = format!("user_{}", client + 1);
        let payload = seq.to_string();
        let sent = Instant::now();
        let reply = conn
            .as_mut()
            .context("connected above")?
            .command(&[b"PUBLISH", group.as_bytes(), payload.as_bytes()])
            .await;
        match reply {
            Ok(RespValue::Integer(_)) => {
                out.latency.record(sent.elapsed().as_micros() as u64);
                out.acked[client].push(seq);
            }
            Ok(_) => out.refused += 1,
            Err(_) => {
                out.unanswered += 1;
                out.reconnects += 1;
                conn = None;
            }
        }
        seq += 1;
    }
    Ok(out)
}
