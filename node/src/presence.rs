//! The presence registry: who is connected where, cluster-wide.
//!
//! [`Registry`] is a deterministic state machine over [`PresenceOp`]s: the same ops in
//! the same order give the same registry on every node. The single-node broker applies
//! ops directly; the cluster applies them as Raft log entries.
//!
//! [`Batcher`] collects ops from connection tasks so that accepting a WebSocket never
//! waits for a Raft round trip; the presence writer ([`crate::raft`]) commits the batch
//! within [`FLUSH_INTERVAL`] when a leader is reachable. The batcher also keeps this
//! node's live connections, so that the node can re-register all of them at once
//! ([`Batcher::resync`]) when the registry has lost them.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

/// Longest a presence change waits in the batch before it is applied.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// A batch is flushed early once it holds this many ops, and one Raft entry holds at
/// most this many: an entry stays far below the peer message limit.
pub const MAX_BATCH: usize = 2048;

/// Connections carried by the `ResyncNode` op of a resync; the rest follow as `Connect`s,
/// so that no single op (or Raft entry) grows with the node's connection count.
pub const RESYNC_CHUNK: usize = 1024;

type Key = (NodeId, String);

/// Who is connected where. See the module header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Registry {
    /// A user's connections, sorted by (node, connection). A small vector: users hold a
    /// handful of connections, and a B-tree node per user would cost over 1 KiB.
    by_user: HashMap<String, Vec<ConnectionRecord>>,
    by_connection: HashMap<Key, String>,
    per_node: BTreeMap<NodeId, usize>,
}

impl Registry {
    /// Applies one op. Ops that refer to unknown connections are no-ops, so replaying a
    /// log (or applying a purge twice) is harmless.
    pub fn apply(&mut self, op: PresenceOp) {
        match op {
            PresenceOp::Connect(record) => self.insert(record),
            PresenceOp::Disconnect { node, connection } => self.remove(&(node, connection)),
            PresenceOp::PurgeNode { node } => self.purge(node),
            PresenceOp::ResyncNode { node, connections } => {
                self.purge(node);
                for record in connections.into_iter().filter(|r| r.node == node) {
                    self.insert(record);
                }
            }
        }
    }

    fn insert(&mut self, record: ConnectionRecord) {
        let key = (record.node, record.connection.clone());
        if self.by_connection.contains_key(&key) {
            self.remove(&key);
        }
        self.by_connection.insert(key.clone(), record.user.clone());
        *self.per_node.entry(record.node).or_default() += 1;
        let conns = self.by_user.entry(record.user.clone()).or_default();
        let at = conns
            .binary_search_by(|r| (r.node, r.connection.as_str()).cmp(&(key.0, key.1.as_str())))
            .unwrap_or_else(|at| at);
        conns.insert(at, record);
    }

    fn remove(&mut self, key: &Key) {
        let Some(user) = self.by_connection.remove(key) else {
            return;
        };
        if let Some(count) = self.per_node.get_mut(&key.0) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_node.remove(&key.0);
            }
        }
        if let Some(conns) = self.by_user.get_mut(&user) {
            conns.retain(|r| !(r.node == key.0 && r.connection == key.1));
            if conns.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    fn purge(&mut self, node: NodeId) {
        let keys: Vec<Key> = self
            .by_connection
            .keys()
            .filter(|(n, _)| *n == node)
            .cloned()
            .collect();
        for key in keys {
            self.remove(&key);
        }
    }

    /// Every live connection of `user`, ordered by node then connection id.
    pub fn user(&self, user: &str) -> Vec<ConnectionRecord> {
        self.by_user
            .get(user)
            .map(|conns| conns.to_vec())
            .unwrap_or_default()
    }

    /// Nodes with at least one registered connection.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.per_node.keys().copied()
    }

    /// Number of connections registered for `node`.
    pub fn node_connections(&self, node: NodeId) -> usize {
        self.per_node.get(&node).copied().unwrap_or(0)
    }

    /// Number of connections registered, cluster-wide.
    pub fn len(&self) -> usize {
        self.by_connection.len()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.by_connection.is_empty()
    }

    /// Number of distinct users connected.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Every record, for a snapshot.
    pub fn records(&self) -> impl Iterator<Item = &ConnectionRecord> {
        self.by_user.values().flatten()
    }
}

/// Presence ops waiting to be applied. Pushing never blocks on the registry; the flusher
/// takes the whole batch at once.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Vec<PresenceOp>,
    /// This node's live connections, by connection id.
    live: HashMap<String, ConnectionRecord>,
    /// The first `fence` pending ops were requeued after a failed write and may have
    /// committed after all: a disconnect must not cancel those.
    fence: usize,
}

impl Batcher {
    /// Queues an op; returns true when the batch is full and should be flushed now.
    /// A `Disconnect` that cancels a `Connect` still in the batch removes both, so a
    /// connection that lives shorter than a flush costs the registry nothing.
    pub fn push(&mut self, op: PresenceOp) -> bool {
        match &op {
            PresenceOp::Connect(record) => {
                self.live.insert(record.connection.clone(), record.clone());
            }
            PresenceOp::Disconnect { connection, .. } => {
                self.live.remove(connection);
            }
            PresenceOp::PurgeNode { .. } => self.live.clear(),
            PresenceOp::ResyncNode { .. } => {}
        }
        if let PresenceOp::Disconnect { node, connection } = &op
            && let Some(at) = self.pending[self.fence..].iter().rposition(|p| {
                matches!(p, PresenceOp::Connect(r) if r.node == *node && r.connection == *connection)
            }) {
                self.pending.remove(self.fence + at);
                return false;
            }
        self.pending.push(op);
        self.pending.len() >= MAX_BATCH
    }

    /// Takes every queued op, in order.
    pub fn take(&mut self) -> Vec<PresenceOp> {
        self.take_at_most(usize::MAX)
    }

    /// Takes the first `max` queued ops (or all), in order.
    pub fn take_at_most(&mut self, max: usize) -> Vec<PresenceOp> {
        if max >= self.pending.len() {
            self.fence = 0;
            return std::mem::take(&mut self.pending);
        }
        self.fence = self.fence.saturating_sub(max);
        let rest = self.pending.split_off(max);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Puts ops that could not be committed back in front of the queue, in order.
    pub fn requeue(&mut self, mut ops: Vec<PresenceOp>) {
        self.fence += ops.len();
        ops.append(&mut self.pending);
        self.pending = ops;
    }

    /// Replaces everything queued by ops that re-register every live connection of
    /// `node`: a `ResyncNode` (which drops whatever the registry held for it) with the
    /// first [`RESYNC_CHUNK`] connections, then a `Connect` for each of the others. What
    /// the registry holds for the node afterwards is exactly the truth.
    pub fn resync(&mut self, node: NodeId) {
        let mut connections: Vec<ConnectionRecord> = self.live.values().cloned().collect();
        connections.sort_by(|a, b| a.connection.cmp(&b.connection));
        let rest = connections.split_off(connections.len().min(RESYNC_CHUNK));
        self.pending = Vec::with_capacity(1 + rest.len());
        self.pending
            .push(PresenceOp::ResyncNode { node, connections });
        self.pending
            .extend(rest.into_iter().map(PresenceOp::Connect));
        self.fence = 1;
    }

    /// Number of live connections on this node.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Number of ops waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A connection record for tests.
    pub(crate) fn record(node: NodeId, connection: &str, user: &str) -> ConnectionRecord {
        ConnectionRecord {
            node,
            connection: connection.into(),
            user: user.into(),
            connected_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn connect_disconnect_and_purge() {
        let mut r = Registry::default();
        r.apply(PresenceOp::Connect(record(1, "1-1", "42")));
        r.apply(PresenceOp::Connect(record(2, "2-1", "42")));
        r.apply(PresenceOp::Connect(record(2, "2-2", "7")));
        assert_eq!(r.user("42").len(), 2);
        assert_eq!(r.node_connections(2), 2);
        r.apply(PresenceOp::Disconnect {
            node: 1,
            connection: "1-1".into(),
        });
        assert_eq!(r.user("42"), vec![record(2, "2-1", "42")]);
        r.apply(PresenceOp::PurgeNode { node: 2 });
        assert!(r.is_empty());
        assert_eq!(r.users(), 0);
        assert_eq!(r.node_connections(2), 0);
        // Applying again is harmless.
        r.apply(PresenceOp::PurgeNode { node: 2 });
        r.apply(PresenceOp::Disconnect {
            node: 1,
            connection: "1-1".into(),
        });
        assert!(r.is_empty());
    }

    #[test]
    fn resync_replaces_a_nodes_connections_only() {
        let mut r = Registry::default();
        r.apply(PresenceOp::Connect(record(1, "1-1", "a")));
        r.apply(PresenceOp::Connect(record(2, "2-1", "b")));
        r.apply(PresenceOp::ResyncNode {
            node: 1,
            connections: vec![record(1, "1-9", "c"), record(3, "3-1", "intruder")],
        });
        assert!(r.user("a").is_empty());
        assert_eq!(r.user("c").len(), 1);
        assert_eq!(r.user("b").len(), 1);
        assert!(
            r.user("intruder").is_empty(),
            "a resync only speaks for its node"
        );
    }

    #[test]
    fn the_same_ops_give_the_same_registry() {
        let ops = vec![
            PresenceOp::Connect(record(1, "1-1", "a")),
            PresenceOp::Connect(record(1, "1-2", "a")),
            PresenceOp::Disconnect {
                node: 1,
                connection: "1-1".into(),
            },
            PresenceOp::Connect(record(2, "2-1", "b")),
        ];
        let mut one = Registry::default();
        let mut two = Registry::default();
        for op in ops.clone() {
            one.apply(op);
        }
        for op in ops {
            two.apply(op);
        }
        assert_eq!(one, two);
    }

    #[test]
    fn a_short_lived_connection_cancels_out_in_the_batch() {
        let mut b = Batcher::default();
        b.push(PresenceOp::Connect(record(1, "1-1", "a")));
        b.push(PresenceOp::Connect(record(1, "1-2", "a")));
        b.push(PresenceOp::Disconnect {
            node: 1,
            connection: "1-1".into(),
        });
        assert_eq!(b.take(), vec![PresenceOp::Connect(record(1, "1-2", "a"))]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_batch_goes_back_in_front_and_a_resync_tells_the_truth() {
        let mut b = Batcher::default();
        b.push(PresenceOp::Connect(record(1, "1-1", "a")));
        let failed = b.take();
        b.push(PresenceOp::Connect(record(1, "1-2", "b")));
        b.requeue(failed);
        // A requeued connect may have committed after all: a disconnect no longer
        // cancels it, it follows it.
        b.push(PresenceOp::Disconnect {
            node: 1,
            connection: "1-1".into(),
        });
        assert_eq!(b.len(), 3);
        b.push(PresenceOp::Connect(record(1, "1-1", "a")));
        let mut r = Registry::default();
        for op in b.take() {
            r.apply(op);
        }
        assert_eq!(r.node_connections(1), 2);

        // The registry lost node 1 (purged while it was cut off); a resync restores it.
        r.apply(PresenceOp::PurgeNode { node: 1 });
        b.push(PresenceOp::Disconnect {
            node: 1,
            connection: "1-1".into(),
        });
        b.resync(1);
        assert_eq!(b.len(), 1);
        for op in b.take() {
            r.apply(op);
        }
        assert_eq!(r.user("b"), vec![record(1, "1-2", "b")]);
        assert!(r.user("a").is_empty());
        assert_eq!(b.live(), 1);
    }

    #[test]
    fn a_large_resync_is_split_and_taken_in_bounded_batches() {
        let mut b = Batcher::default();
        let n = RESYNC_CHUNK + MAX_BATCH + 10;
        for i in 0..n {
            b.push(PresenceOp::Connect(record(4, &format!("4-{i:05}"), "u")));
        }
        b.take();
        b.resync(4);
        let mut r = Registry::default();
        r.apply(PresenceOp::Connect(record(4, "4-stale", "u")));
        let mut batches = 0;
        while !b.is_empty() {
            let batch = b.take_at_most(MAX_BATCH);
            assert!(batch.len() <= MAX_BATCH);
            for op in batch {
                if let PresenceOp::ResyncNode { connections, .. } = &op {
                    assert_eq!(connections.len(), RESYNC_CHUNK);
                }
                r.apply(op);
            }
            batches += 1;
        }
        assert_eq!(batches, 2);
        assert_eq!(
            r.node_connections(4),
            n,
            "every live connection, the stale one gone"
        );
    }
}
