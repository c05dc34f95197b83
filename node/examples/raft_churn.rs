//! Capacity of the Raft presence registry, without WebSocket handshakes in the way:
//! three nodes in this process over real QUIC on loopback, each fed presence changes
//! (connects of new connections, disconnects of older ones) as fast as its batcher takes
//! them, for a few seconds. Prints the changes committed through Raft per second,
//! cluster-wide, and checks that every replica ends up identical.
//!
//!   cargo run --release -p switchboard-node --example raft_churn [SECONDS] [NODES]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use switchboard_node::Node;
use switchboard_node::config::{Config, JwtKey};
use switchboard_proto::peer::{ConnectionRecord, PresenceOp};

/// Live connections per node while churning: a disconnect goes to the connection opened
/// this many changes earlier, so it is never in the same batch as its connect.
const LIVE: u64 = 20_000;
/// The feeder waits while this many changes are queued (closed loop: the queue is
/// bounded, and what is measured is what Raft commits).
const QUEUED: usize = 8_192;

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let count: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
    let base = std::env::temp_dir().join(format!("switchboard-raft-churn-{}", std::process::id()));
    let mut nodes: Vec<Node> = Vec::new();
    for id in 1..=count {
        let dir = base.join(format!("node-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = Config::for_tests(dir);
        config.node_id = id;
        config.credentials.jwt = JwtKey::Secret("bench".into());
        config.credentials.cluster_secret = Some("bench-cluster".into());
        if let Some(first) = nodes.first() {
            config.cluster.seeds = vec![first.addrs().peer.expect("peer endpoint").to_string()];
        }
        nodes.push(Node::start(config).await.expect("node starts"));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !nodes
        .iter()
        .all(|n| n.health().ready() && n.consensus().status().voters.len() == count as usize)
    {
        assert!(
            Instant::now() < deadline,
            "the cluster did not form in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("{count} nodes formed; churning for {seconds} s");

    let committed = |nodes: &[Node]| -> u64 {
        nodes
            .iter()
            .map(|n| n.consensus().counters.presence_ops.get())
            .sum()
    };
    let before = committed(&nodes);
    let started = Instant::now();
    let stop = started + Duration::from_secs(seconds);
    let feeders: Vec<_> = nodes
        .iter()
        .map(|n| {
            let queue = n.presence_queue().clone();
            tokio::spawn(async move {
                let node = queue.node();
                let mut next = 0u64;
                while Instant::now() < stop {
                    if queue.queued() >= QUEUED {
                        tokio::time::sleep(Duration::from_millis(1)).await;
                        continue;
                    }
                    for _ in 0..256 {
                        queue.push(PresenceOp::Connect(ConnectionRecord {
                            node,
                            connection: format!("{node}-be7c4-{next}"),
                            user: format!("u{}", next % 5000),
                            connected_at: next,
                        }));
                        if next >= LIVE {
                            let gone = next - LIVE;
                            queue.push(PresenceOp::Leave {
                                node,
                                connection: format!("{node}-be7c4-{gone}"),
                                user: format!("u{}", gone % 5000),
                            });
                        }
                        next += 1;
                    }
                    tokio::task::yield_now().await;
                }
            })
        })
        .collect();
    for f in feeders {
        f.await.expect("feeder");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let during = committed(&nodes) - before;
    // Everything queued commits, and every replica agrees.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let queued: usize = nodes.iter().map(|n| n.presence_queue().queued()).sum();
        let first = nodes[0].replica().read().clone();
        let same = nodes.iter().all(|n| *n.replica().read() == first);
        if queued == 0 && same {
            println!("nodes                          {count}");
            println!(
                "presence changes committed/s   {:.0}",
                during as f64 / elapsed
            );
            println!("registry size at the end       {}", first.presence.len());
            println!("replicas identical             yes");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "replicas did not converge in 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in nodes {
        n.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&base);
}
