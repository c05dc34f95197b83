//! History: the last messages of the groups that keep them, with positions, so a client
//! that reconnects to any node can recover what it missed. Pure: no IO, no clock (the
//! driver, `crate::historian`, passes the time).
//!
//! - [`rules`]: which groups keep history (`--history PATTERN=SIZE[,TTL]`).
//! - [`assign`]: who owns each group: groups hash into [`BUCKETS`] buckets; each bucket
//!   has an owner and a replica chosen by rendezvous hashing over the live members, and an
//!   epoch. Assignments are committed through Raft (`presence::Command::Assign`), so every
//!   node agrees on them and an epoch id (the Raft log index of its assignment) is minted
//!   once, cluster-wide.
//! - [`keeper`]: this node's part in history (owner, replica, requester) as a state
//!   machine: events and the time in, messages to send and deliveries out.
//! - [`error`]: why a publish or recovery did not succeed, and whether it may have landed.
//! - [`retry`]: a publisher's attempts at a history publish: when to ask the owner
//!   again, and the final error (unknown outcome, or safe to retry).
//! - [`log`]: a group's ring of messages on its owner and replica: offsets, the chain of
//!   epochs it continues, size/TTL/byte bounds, and the recovery decision.
//!
//! The guarantee, its limits and the design are in docs/cluster.md ("History").

pub mod assign;
pub mod error;
pub mod keeper;
pub mod log;
pub mod retry;
pub mod rules;

pub use switchboard_proto::peer::Position;

pub use assign::{Assignment, Assignments, BUCKETS, bucket_of, rank};
pub use error::{HistoryError, MAX_HISTORY_MESSAGE};
pub use keeper::Keeper;
pub use log::{Entry, GroupLog, Recovery, Store};
pub use rules::{Rule, Rules};

/// An epoch: the Raft log index of the assignment that minted it. Only the owner named by
/// that assignment assigns offsets in it, so `(epoch, offset)` names one message.
pub type Epoch = u64;
