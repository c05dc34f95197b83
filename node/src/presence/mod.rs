//! Presence: who is connected where, cluster-wide.
//!
//! - [`registry`]: the registry, a deterministic state machine over `PresenceOp`s.
//! - [`connection`]: connection ids as the registry and the events keep them (numbers).
//! - [`batcher`]: ops waiting to be committed, and this node's live connections.
//! - [`queue`]: the batcher behind its lock, with the bell that wakes the writer.
//! - [`claims`]: idempotency keys of HTTP publishes, kept in the replica.
//! - [`events`]: presence events derived from what each committed entry changed, and the
//!   bounded ring that keeps the newest.
//! - [`shards`]: which shard a user's presence lives in, and each shard's voters.
//! - [`revocations`]: users whose tokens issued before a time are refused.
//! - [`replica`]: what the cluster agreed on (registry + removed members), its Raft
//!   commands, and the read side every other part uses.
//!
//! Accepting a WebSocket never waits for Raft: ops go into the queue, and the presence
//! writer (`crate::raft`) commits them every [`FLUSH_INTERVAL`] through the leader.

pub mod batcher;
pub mod claims;
pub mod connection;
pub mod events;
pub mod queue;
pub mod registry;
pub mod replica;
pub mod revocations;
pub mod shards;

use std::time::Duration;

pub use batcher::Batcher;
pub use queue::PresenceQueue;
pub use registry::Registry;
pub use replica::{Command, Replica, SharedReplica};

/// Longest a presence change waits in the batch before it is committed.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// A batch is flushed early once it holds this many ops, and one Raft entry holds at
/// most this many: an entry stays far below the peer message limit.
pub const MAX_BATCH: usize = 2048;

/// Connections carried by the `ResyncNode` op of a resync; the rest follow as `Connect`s,
/// so that no single op (or Raft entry) grows with the node's connection count.
pub const RESYNC_CHUNK: usize = 1024;

#[cfg(test)]
pub(crate) mod tests;

pub use crate::config::DEFAULT_PRESENCE_EVENTS;

/// The most bytes the presence events ring holds, whatever `--presence-events` says.
pub const MAX_EVENT_RING_BYTES: usize = 64 * 1024 * 1024;
