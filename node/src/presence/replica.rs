//! What the cluster agrees on through Raft: the presence registry and the members removed
//! for good, and the read side every other part uses.
//!
//! - [`Replica`]: the state machine's data, and the deterministic [`Command`]s it
//!   applies: the same commands in the same order give the same replica on every node.
//!   The Raft layer stores the commands in its log and applies them here.
//! - [`SharedReplica`]: this node's replica behind its lock. Written only by the Raft
//!   state machine; read by the mesh (is a peer removed?), the admin API, the client
//!   `presence` op and the metrics.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use switchboard_proto::client::PresenceEntry;
use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::Registry;
use super::claims::{Claimer, Claims};
use crate::history::{Assignments, assign::Change};
use crate::sync::{read, write};

/// One Raft log entry's worth of change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A batch of presence changes from one node, applied in order.
    Presence(Vec<PresenceOp>),
    /// `switchboard remove ID`: the node's presence is purged and it may not rejoin.
    Remove(NodeId),
    /// The member `node` is the process with data dir `incarnation`; the first binding of
    /// a node id stands (until the member is removed), so a process started with a live
    /// member's id and another data dir is refused by every node.
    Bind { node: NodeId, incarnation: u64 },
    /// History buckets change owner or replica; the entry's log index is their new epoch.
    Assign(Vec<Change>),
    /// An HTTP publish claims its idempotency keys (see [`Claims`]), stamped with the
    /// claiming node's clock.
    Claim {
        keys: Vec<String>,
        claimer: Claimer,
        at_ms: u64,
    },
    /// A publish that failed gives its keys back, so that a retry can deliver.
    Release { keys: Vec<String>, claimer: Claimer },
}

/// See the module header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replica {
    pub presence: Registry,
    pub removed: BTreeSet<NodeId>,
    /// Each member's incarnation (the id of its data dir), as first bound.
    pub incarnations: BTreeMap<NodeId, u64>,
    /// Who owns each history bucket, and in which epoch.
    pub assignments: Assignments,
    /// Idempotency keys of recent HTTP publishes.
    pub claims: Claims,
}

impl Replica {
    /// Applies one command, committed at log index `index`; returns the number of changes
    /// it carried.
    pub fn apply(&mut self, command: Command, index: u64) -> u64 {
        match command {
            Command::Presence(ops) => {
                let n = ops.len() as u64;
                for op in ops {
                    // A removed node's late changes are ignored: it is gone for good.
                    if !self.removed.contains(&op_node(&op)) {
                        self.presence.apply(op);
                    }
                }
                n
            }
            Command::Remove(node) => {
                self.presence.apply(PresenceOp::PurgeNode { node });
                self.removed.insert(node);
                self.incarnations.remove(&node);
                1
            }
            Command::Bind { node, incarnation } => {
                if self.removed.contains(&node) {
                    return 0;
                }
                u64::from(*self.incarnations.entry(node).or_insert(incarnation) == incarnation)
            }
            Command::Assign(changes) => {
                self.assignments.apply(&changes, index);
                changes.len() as u64
            }
            Command::Claim {
                keys,
                claimer,
                at_ms,
            } => self.claims.claim(&keys, claimer, at_ms),
            Command::Release { keys, claimer } => self.claims.release(&keys, claimer),
        }
    }

    /// A replica holding exactly these connections and removed members (a snapshot).
    pub fn from_parts(
        connections: impl IntoIterator<Item = ConnectionRecord>,
        removed: impl IntoIterator<Item = NodeId>,
        incarnations: impl IntoIterator<Item = (NodeId, u64)>,
        assignments: Assignments,
    ) -> Replica {
        let mut replica = Replica {
            removed: removed.into_iter().collect(),
            incarnations: incarnations.into_iter().collect(),
            assignments,
            ..Replica::default()
        };
        for record in connections {
            replica.presence.apply(PresenceOp::Connect(record));
        }
        replica
    }

    /// This replica with these idempotency claims (a snapshot).
    pub fn with_claims(mut self, claims: Claims) -> Replica {
        self.claims = claims;
        self
    }
}

fn op_node(op: &PresenceOp) -> NodeId {
    match op {
        PresenceOp::Connect(r) => r.node,
        PresenceOp::Disconnect { node, .. }
        | PresenceOp::PurgeNode { node }
        | PresenceOp::ResyncNode { node, .. } => *node,
    }
}

/// See the module header.
#[derive(Debug, Default)]
pub struct SharedReplica(RwLock<Replica>);

impl SharedReplica {
    /// Read access, for a bounded look.
    pub fn read(&self) -> RwLockReadGuard<'_, Replica> {
        read(&self.0)
    }

    /// Write access: the Raft state machine only.
    pub fn write(&self) -> RwLockWriteGuard<'_, Replica> {
        write(&self.0)
    }

    /// Every live connection of `user`, cluster-wide, ordered by node then connection.
    pub fn presence_of(&self, user: &str) -> Vec<PresenceEntry> {
        self.read()
            .presence
            .user(user)
            .into_iter()
            .map(|r| PresenceEntry {
                node: r.node,
                connection: r.connection,
                connected_at: r.connected_at,
            })
            .collect()
    }

    /// Whether `node` was removed from the cluster for good.
    pub fn is_removed(&self, node: NodeId) -> bool {
        self.read().removed.contains(&node)
    }

    /// The incarnation bound to `node`, if any.
    pub fn incarnation_of(&self, node: NodeId) -> Option<u64> {
        self.read().incarnations.get(&node).copied()
    }

    /// Connections registered cluster-wide.
    pub fn len(&self) -> usize {
        self.read().presence.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.read().presence.is_empty()
    }

    /// Connections registered for `node`.
    pub fn node_connections(&self, node: NodeId) -> usize {
        self.read().presence.node_connections(node)
    }
}

#[cfg(test)]
impl Replica {
    /// `apply` at a log index that does not matter to the test.
    pub fn apply_test(&mut self, command: Command) -> u64 {
        self.apply(command, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::record;

    #[test]
    fn a_removed_node_is_purged_and_stays_out() {
        let mut r = Replica::default();
        r.apply_test(Command::Presence(vec![
            PresenceOp::Connect(record(1, "1-a", "u")),
            PresenceOp::Connect(record(2, "2-a", "u")),
        ]));
        r.apply_test(Command::Remove(2));
        assert_eq!(r.presence.user("u"), vec![record(1, "1-a", "u")]);
        // A late batch from the removed node changes nothing.
        r.apply_test(Command::Presence(vec![PresenceOp::Connect(record(
            2, "2-b", "u",
        ))]));
        assert_eq!(r.presence.user("u").len(), 1);
        assert!(r.removed.contains(&2));
    }

    #[test]
    fn parts_rebuild_the_same_replica() {
        let mut r = Replica::default();
        r.apply_test(Command::Presence(vec![
            PresenceOp::Connect(record(1, "1-a", "u")),
            PresenceOp::Connect(record(3, "3-a", "v")),
            PresenceOp::Connect(record(3, "3-b", "u")),
        ]));
        r.apply_test(Command::Remove(9));
        r.apply_test(Command::Bind {
            node: 3,
            incarnation: 33,
        });
        let rebuilt = Replica::from_parts(
            r.presence.records().cloned(),
            r.removed.clone(),
            r.incarnations.clone(),
            r.assignments.clone(),
        );
        assert_eq!(rebuilt, r);
    }

    #[test]
    fn the_first_binding_of_a_node_id_stands_until_it_is_removed() {
        let mut r = Replica::default();
        assert_eq!(
            r.apply_test(Command::Bind {
                node: 2,
                incarnation: 7
            }),
            1
        );
        assert_eq!(
            r.apply_test(Command::Bind {
                node: 2,
                incarnation: 7
            }),
            1,
            "idempotent"
        );
        assert_eq!(
            r.apply_test(Command::Bind {
                node: 2,
                incarnation: 8
            }),
            0,
            "an impostor"
        );
        assert_eq!(r.incarnations.get(&2), Some(&7));
        r.apply_test(Command::Remove(2));
        assert_eq!(r.incarnations.get(&2), None);
        assert_eq!(
            r.apply_test(Command::Bind {
                node: 2,
                incarnation: 8
            }),
            0,
            "removed for good"
        );
    }

    #[test]
    fn replicas_fed_the_same_log_agree() {
        let log = vec![
            Command::Presence(vec![PresenceOp::Connect(record(1, "1-a", "u"))]),
            Command::Presence(vec![
                PresenceOp::Connect(record(2, "2-a", "u")),
                PresenceOp::Disconnect {
                    node: 1,
                    connection: "1-a".into(),
                },
            ]),
            Command::Presence(vec![PresenceOp::ResyncNode {
                node: 2,
                connections: vec![record(2, "2-z", "w")],
            }]),
        ];
        let (mut a, mut b) = (Replica::default(), Replica::default());
        for (i, c) in log.clone().into_iter().enumerate() {
            a.apply(c, i as u64);
        }
        for (i, c) in log.into_iter().enumerate() {
            b.apply(c, i as u64);
        }
        assert_eq!(a, b);
        assert_eq!(a.presence.user("w").len(), 1);
        assert!(a.presence.user("u").is_empty());
    }
}
