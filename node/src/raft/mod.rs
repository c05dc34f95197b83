//! The presence registry kept consistent with Raft (openraft 0.9).
//!
//! Parts, bottom-up:
//! - [`codec`]: the one encoding of everything stored or sent, with decode limits.
//! - [`store`]: log, vote and snapshots on disk in `<data-dir>/raft/`; the state machine
//!   applies `presence::Command`s to the shared replica.
//! - [`steward`]: the housekeeping decisions (add, promote, purge, resync, drain), pure.
//! - [`network`]: the RPCs, the [`network::Transport`] they travel on (the QUIC mesh in
//!   the node, an in-memory router in tests), and openraft's network traits over it.
//! - [`consensus`]: [`Consensus`], the Raft node and the drivers around it.
//! - [`writer`]: the presence writer.
//! - [`metrics`]: the counters and their rows.
//!
//! Raft keeps presence and membership only; published messages never go through it.

pub mod codec;
pub mod consensus;
pub mod metrics;
pub mod network;
pub mod steward;
pub mod store;
pub mod writer;

pub use consensus::{Consensus, RaftSettings, RaftStatus, WriteError};
pub use network::{CONTROL, GroupId, Transport};

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
