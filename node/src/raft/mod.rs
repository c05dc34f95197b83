//! The presence registry kept consistent with Raft (openraft 0.9).
//!
//! Parts, bottom-up:
//! - [`codec`]: the one encoding of everything stored or sent, with decode limits.
//! - [`snapshot`]: the replica as a snapshot carries it (every format written so far).
//! - [`store`]: log, vote and snapshots on disk in `<data-dir>/raft/`; the state machine
//!   applies `presence::Command`s to the shared replica.
//! - [`steward`]: the housekeeping decisions (add, promote, purge, resync, drain), pure.
//! - [`network`]: the RPCs, the [`network::Transport`] they travel on (the QUIC mesh in
//!   the node, an in-memory router in tests), and openraft's network traits over it.
//! - [`consensus`]: [`Consensus`], the Raft node and the drivers around it.
//! - [`writer`]: the presence writer.
//! - [`shards`]: presence split over several Raft groups (`--presence-shards`): hosting,
//!   each shard's steward and writer, reads from the user's shard.
//! - [`metrics`]: the counters and their rows.
//!
//! Raft keeps presence and membership only; published messages never go through it.
//! Group 0 (the control group) holds membership, removals, incarnations, history
//! assignments, idempotency keys and the shards' voters; presence is in it too unless it
//! is sharded.

pub mod codec;
pub mod consensus;
pub mod metrics;
pub mod network;
pub mod shards;
pub mod snapshot;
pub mod steward;
pub mod store;
pub mod writer;

pub use consensus::{Consensus, RaftSettings, RaftStatus, WriteError};
pub use network::{CONTROL, GroupId, Transport};
pub use shards::{Shards, ShardsDeps};

use crate::presence::Command;
use switchboard_proto::peer::NodeId;

openraft::declare_raft_types!(
    /// The Raft types of the presence registry.
    pub TypeConfig:
        D = Command,
        R = u64,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

/// One entry of the Raft log.
pub type Entry = openraft::Entry<TypeConfig>;

/// The Raft groups this process hosts, by id: what RPCs from peers are served by.
#[derive(Debug, Default)]
pub struct Groups {
    by_id: std::sync::RwLock<std::collections::BTreeMap<GroupId, std::sync::Arc<Consensus>>>,
}

impl Groups {
    /// The group `id`, if this process hosts it.
    pub fn get(&self, id: GroupId) -> Option<std::sync::Arc<Consensus>> {
        crate::sync::read(&self.by_id).get(&id).cloned()
    }

    /// Hosts `consensus` (under its group's id).
    pub fn insert(&self, consensus: std::sync::Arc<Consensus>) {
        crate::sync::write(&self.by_id).insert(consensus.group(), consensus);
    }

    /// No longer hosts group `id`.
    pub fn remove(&self, id: GroupId) -> Option<std::sync::Arc<Consensus>> {
        crate::sync::write(&self.by_id).remove(&id)
    }
}

#[cfg(test)]
mod tests;

/// Presence reads, wherever presence lives: the control group's replica, or the user's
/// shard (`--presence-shards`).
#[derive(Debug, Clone)]
pub struct Presence {
    pub control: std::sync::Arc<Consensus>,
    pub shards: Option<std::sync::Arc<Shards>>,
}

impl Presence {
    /// Every live connection of `user`, cluster-wide, ordered by node then connection;
    /// `linearizable`: every change committed before the call is seen.
    pub async fn of(
        &self,
        user: &str,
        linearizable: bool,
    ) -> Result<Vec<switchboard_proto::client::PresenceEntry>, WriteError> {
        let records = match &self.shards {
            Some(shards) => shards.presence_of(user, linearizable).await?,
            None => {
                if linearizable {
                    self.control.linearizable().await?;
                }
                self.control.replica().read().presence.user(user)
            }
        };
        Ok(records
            .into_iter()
            .map(|r| switchboard_proto::client::PresenceEntry {
                node: r.node,
                connection: r.connection,
                connected_at: r.connected_at,
            })
            .collect())
    }

    /// Presence events this node derived since it started, and the events (and bytes)
    /// its rings keep: the control group's, plus the shards' it hosts.
    pub fn event_stats(&self) -> (u64, usize, usize) {
        let control = self.control.replica();
        let (kept, bytes, _) = control.ring_stats();
        let mut stats = (control.events_derived(), kept, bytes);
        if let Some(shards) = &self.shards {
            let (derived, kept, bytes) = shards.event_stats();
            stats = (stats.0 + derived, stats.1 + kept, stats.2 + bytes);
        }
        stats
    }

    /// The presence registries this node leads now, with their shard (`None`: the one
    /// registry of the control group): where the disconnect calls a dead node owes the
    /// backend are made from.
    pub fn led(
        &self,
    ) -> Vec<(
        Option<crate::presence::shards::Shard>,
        std::sync::Arc<crate::presence::SharedReplica>,
    )> {
        match &self.shards {
            None if self.control.leads() => vec![(None, self.control.replica().clone())],
            None => Vec::new(),
            Some(shards) => shards
                .hosted_ids()
                .into_iter()
                .filter_map(|shard| {
                    let group = shards.hosted(shard)?;
                    group
                        .leads()
                        .then(|| (Some(shard), group.replica().clone()))
                })
                .collect(),
        }
    }

    /// The scope a live bridged connection's record holds, when this node holds its
    /// registry (its session keeps this one, not a copy).
    pub fn bridged_scope(&self, user: &str, connection: &str) -> Option<std::sync::Arc<[u8]>> {
        let replica = match &self.shards {
            None => self.control.replica().clone(),
            Some(shards) => shards.hosted(shards.shard_of(user))?.replica().clone(),
        };
        let node = crate::presence::connection::ConnectionId::node_of(connection)?;
        let id = crate::presence::connection::ConnectionId::new(node, connection);
        replica.read().presence.scope_of(&id)
    }

    /// Disconnect calls owed to the backend bridge in the registries this node holds
    /// (`registry::Owed`): those of connections that ended and whose call is not made yet.
    pub fn owed(&self) -> usize {
        match &self.shards {
            Some(shards) => shards.hosted_owed(),
            None => self.control.replica().read().presence.owed_len(),
        }
    }

    /// Connections this node's replicas hold: every one cluster-wide, or those of the
    /// shards it hosts.
    pub fn entries(&self) -> usize {
        match &self.shards {
            Some(shards) => shards.hosted_connections(),
            None => self.control.replica().len(),
        }
    }
}
