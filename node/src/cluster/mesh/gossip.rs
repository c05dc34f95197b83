//! The gossip loop and full syncs: takes this node's interest from the hub, sends what
//! `cluster::gossip` decides each peer gets, and pushes the routes of changed groups.

use std::sync::Arc;
use std::time::Instant;

use switchboard_proto::peer::NodeId;

use super::{Cluster, Link};
use crate::cluster::gossip::{self, FULL_SYNC, GOSSIP};
use crate::sync::lock;

impl Cluster {
    /// Queues the part of this node's interest that `peer` holds (a new session, or its
    /// request); counted in `interest_full_syncs_total`.
    pub(super) fn send_full(&self, peer: NodeId, link: &Link) {
        let holders = self.holders();
        self.deps.hub.with_interest(|snapshot| {
            for message in gossip::full_for(&holders, peer, snapshot) {
                link.send(message);
            }
        });
        self.metrics.interest_full_syncs.inc();
    }

    /// The gossip loop, until shutdown: every [`GOSSIP`] the changes, every
    /// [`FULL_SYNC`] (or when the holders moved) everything.
    pub(super) async fn gossip_loop(self: Arc<Self>) {
        let shutdown = self.shutdown_token();
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(GOSSIP) => {}
            }
            let (holders, moved) = self.follow_assignments();
            let full = moved || last_full.elapsed() >= FULL_SYNC;
            let links = self.links_by_peer();
            let peers: Vec<NodeId> = links.iter().map(|(id, _)| *id).collect();
            let mut held = Vec::new();
            self.deps.hub.gossip_round(full, |changes, snapshot| {
                let (mut parts, changed) = gossip::round(&holders, &peers, changes, snapshot);
                held = changed;
                for (peer, link) in &links {
                    for message in parts.remove(peer).unwrap_or_default() {
                        link.send(message);
                    }
                }
            });
            self.push_routes(held);
            // Routes that changed while a peer was ahead of this node, once none is (this
            // node followed, or the peer ahead is gone).
            let deferred = lock(&self.routes).take_deferred();
            self.push_routes(deferred);
            if full {
                last_full = Instant::now();
            }
        }
    }
}
