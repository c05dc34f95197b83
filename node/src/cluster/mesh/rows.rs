//! The mesh's counters and its rows in `/metrics`.

use std::sync::atomic::Ordering;

use super::Cluster;
use crate::metrics::{Counter, Row};
use crate::sync::{lock, read};

/// Counters of the mesh, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub forwarded_messages: Counter,
    pub forwarded_bytes: Counter,
    pub received_forwards: Counter,
    pub peer_queue_drops: Counter,
    pub auth_failures: Counter,
    pub interest_full_syncs: Counter,
    pub rpc_streams_refused: Counter,
    pub history_messages_dropped: Counter,
    pub route_lookups: Counter,
    pub route_lookup_failures: Counter,
    pub paced_forwards: Counter,
    pub routes_incomplete: Counter,
}

impl Cluster {
    /// The mesh's rows in `/metrics`.
    pub fn rows(&self) -> Vec<Row> {
        let members = self.members();
        let m = &self.metrics;
        let (depths, data, rx, tx) = {
            let table = lock(&self.table);
            let depths = table
                .links()
                .map(|(id, link)| (id.to_string(), link.depth() as u64))
                .collect();
            let data = table
                .links()
                .map(|(id, link)| (id.to_string(), link.queued_bytes() as u64))
                .collect();
            let (mut rx, mut tx) = (
                self.ended_rx.load(Ordering::Relaxed),
                self.ended_tx.load(Ordering::Relaxed),
            );
            for (_, link) in table.links() {
                let stats = link.connection().stats();
                rx += stats.udp_rx.bytes;
                tx += stats.udp_tx.bytes;
            }
            (depths, data, rx, tx)
        };
        let (cached, leases, held) = {
            let routes = lock(&self.routes);
            (
                routes.cache.len(),
                routes.leases.len(),
                read(&self.remote).groups().count(),
            )
        };
        vec![
            Row::gauge(
                "peers",
                "Peers this node has heard of.",
                members.len() as u64,
            ),
            Row::gauge(
                "peers_up",
                "Peers connected and heard from within --node-timeout.",
                members.iter().filter(|p| p.up).count() as u64,
            ),
            Row::counter(
                "forwarded_messages_total",
                "Messages sent to peers.",
                m.forwarded_messages.get(),
            ),
            Row::counter(
                "forwarded_bytes_total",
                "Payload bytes sent to peers.",
                m.forwarded_bytes.get(),
            ),
            Row::counter(
                "received_forwards_total",
                "Messages received from peers for local delivery.",
                m.received_forwards.get(),
            ),
            Row::counter(
                "peer_queue_drops_total",
                "Messages dropped because a peer's queue was full.",
                m.peer_queue_drops.get(),
            ),
            Row::counter(
                "peer_auth_failures_total",
                "Peers refused: failed TLS handshake (cluster CA) or cluster-secret proof.",
                m.auth_failures.get(),
            ),
            Row::counter(
                "interest_full_syncs_total",
                "Full interest snapshots sent to peers.",
                m.interest_full_syncs.get(),
            ),
            Row::counter(
                "peer_received_bytes_total",
                "Bytes received from peers (UDP payloads of every QUIC connection).",
                rx,
            ),
            Row::counter(
                "peer_sent_bytes_total",
                "Bytes sent to peers (UDP payloads of every QUIC connection).",
                tx,
            ),
            Row::counter(
                "paced_forwards_total",
                "Publishes that waited for room in a peer's queue of forwards (the peer reads slower than this node publishes).",
                m.paced_forwards.get(),
            ),
            Row::counter(
                "routes_incomplete_total",
                "Routes a holder gave (or used itself) before it had every peer's interest in the group's moved bucket: the message went to every peer.",
                m.routes_incomplete.get(),
            ),
            Row::counter(
                "route_lookups_total",
                "Routes of groups asked of their holders (publishes to groups whose interest this node neither holds nor caches).",
                m.route_lookups.get(),
            ),
            Row::counter(
                "route_lookup_failures_total",
                "Lookups no holder answered: the message went to every peer.",
                m.route_lookup_failures.get(),
            ),
            Row::gauge(
                "routes_cached",
                "Routes of groups this node caches (leases from their holders).",
                cached as u64,
            ),
            Row::gauge(
                "route_leases",
                "Routes other nodes cache from this node (pushed to them when they change).",
                leases as u64,
            ),
            Row::gauge(
                "interest_groups_held",
                "Groups with subscribers on peers whose interest this node holds (owner or replica of their bucket).",
                held as u64,
            ),
            Row::counter(
                "history_messages_dropped_total",
                "History messages from peers dropped because the historian's inbox was full.",
                m.history_messages_dropped.get(),
            ),
            Row::counter(
                "peer_rpc_streams_refused_total",
                "Raft RPC streams refused because the Raft layer's inbox was full.",
                m.rpc_streams_refused.get(),
            ),
            Row::gauge_by(
                "peer_rtt_microseconds",
                "Round-trip time to each peer.",
                "peer",
                members
                    .iter()
                    .map(|p| (p.id.to_string(), p.rtt_micros))
                    .collect(),
            ),
            Row::gauge_by(
                "peer_queue_depth",
                "Control messages waiting in each peer's outbound queue.",
                "peer",
                depths,
            ),
            Row::gauge_by(
                "peer_data_queue_bytes",
                "Bytes of forwards waiting for each peer's data stream (publishers wait past PEER_QUEUE_BYTES, 8 MiB).",
                "peer",
                data,
            ),
        ]
    }
}
