//! What the cluster agrees on through Raft: the presence registry, and the members
//! removed for good. A deterministic state machine: the same commands in the same order
//! give the same replica on every node.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use crate::presence::Registry;

/// One Raft log entry's worth of change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// A batch of presence changes from one node, applied in order.
    Presence(Vec<PresenceOp>),
    /// `switchboard remove ID`: the node's presence is purged and it may not rejoin.
    Remove(NodeId),
}

/// See the module header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Replica {
    pub presence: Registry,
    pub removed: BTreeSet<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    connections: Vec<ConnectionRecord>,
    removed: Vec<NodeId>,
}

impl Replica {
    /// Applies one command; returns the number of changes it carried.
    pub fn apply(&mut self, command: Command) -> u64 {
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
                1
            }
        }
    }

    /// The replica as snapshot bytes.
    pub fn snapshot(&self) -> anyhow::Result<Vec<u8>> {
        let body = SnapshotBody {
            connections: self.presence.records().cloned().collect(),
            removed: self.removed.iter().copied().collect(),
        };
        super::encode(&body)
    }

    /// A replica from snapshot bytes.
    pub fn restore(bytes: &[u8]) -> anyhow::Result<Replica> {
        let body: SnapshotBody = super::decode(bytes)?;
        let mut replica = Replica {
            removed: body.removed.into_iter().collect(),
            ..Replica::default()
        };
        for record in body.connections {
            replica.presence.apply(PresenceOp::Connect(record));
        }
        Ok(replica)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::record;

    #[test]
    fn a_removed_node_is_purged_and_stays_out() {
        let mut r = Replica::default();
        r.apply(Command::Presence(vec![
            PresenceOp::Connect(record(1, "1-a", "u")),
            PresenceOp::Connect(record(2, "2-a", "u")),
        ]));
        r.apply(Command::Remove(2));
        assert_eq!(r.presence.user("u"), vec![record(1, "1-a", "u")]);
        // A late batch from the removed node changes nothing.
        r.apply(Command::Presence(vec![PresenceOp::Connect(record(
            2, "2-b", "u",
        ))]));
        assert_eq!(r.presence.user("u").len(), 1);
        assert!(r.removed.contains(&2));
    }

    #[test]
    fn a_snapshot_restores_the_same_replica() {
        let mut r = Replica::default();
        r.apply(Command::Presence(vec![
            PresenceOp::Connect(record(1, "1-a", "u")),
            PresenceOp::Connect(record(3, "3-a", "v")),
            PresenceOp::Connect(record(3, "3-b", "u")),
        ]));
        r.apply(Command::Remove(9));
        let restored = Replica::restore(&r.snapshot().expect("encodes")).expect("decodes");
        assert_eq!(restored, r);
        assert!(Replica::restore(b"\xff\xff garbage").is_err());
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
        for c in log.clone() {
            a.apply(c);
        }
        for c in log {
            b.apply(c);
        }
        assert_eq!(a, b);
        assert_eq!(a.presence.user("w").len(), 1);
        assert!(a.presence.user("u").is_empty());
    }
}
