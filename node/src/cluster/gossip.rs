//! Interest gossip: every [`GOSSIP`] the changes in this node's local interest go to
//! every peer as one delta, and every [`FULL_SYNC`] the whole interest, to repair
//! anything lost. A peer whose delta does not follow the version held asks for a full
//! sync (`InterestSyncRequest`); a new session starts with one.
//!
//! What is queued for peers is queued under the hub's lock (see `Hub::gossip_round`),
//! so deltas reach every peer in version order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_proto::peer::{Interest, PeerMessage};

use super::mesh::{Cluster, Link};
use crate::hub::Hub;

/// How often changes in local interest are gossiped.
pub const GOSSIP: Duration = Duration::from_millis(10);
/// How often the full interest is re-sent to repair anything lost.
pub const FULL_SYNC: Duration = Duration::from_secs(10);

/// Queues this node's whole interest for one peer (a new session, or its request);
/// counted in `interest_full_syncs_total`.
pub fn send_full(cluster: &Cluster, hub: &Hub, link: &Link) {
    hub.with_interest(|(version, groups)| {
        link.send(PeerMessage::Interest(Interest::Full {
            version,
            groups: groups.into_iter().collect(),
        }));
    });
    cluster.metrics.interest_full_syncs.inc();
}

/// The gossip loop, until shutdown.
pub async fn run(cluster: Arc<Cluster>, hub: Arc<Hub>) {
    let shutdown = cluster.shutdown_token();
    let mut last_full = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(GOSSIP) => {}
        }
        let full = last_full.elapsed() >= FULL_SYNC;
        let links = cluster.links();
        hub.gossip_round(full, |changes, snapshot| {
            for link in &links {
                if let Some((version, changes)) = &changes {
                    link.send(PeerMessage::Interest(Interest::Delta {
                        base_version: version - 1,
                        version: *version,
                        changes: changes.clone(),
                    }));
                }
                if let Some((version, groups)) = &snapshot {
                    link.send(PeerMessage::Interest(Interest::Full {
                        version: *version,
                        groups: groups.iter().map(|(g, c)| (g.clone(), *c)).collect(),
                    }));
                }
            }
        });
        if full {
            last_full = Instant::now();
        }
    }
}
