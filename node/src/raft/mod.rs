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
pub use network::Transport;

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

#[cfg(test)]
mod tests;
