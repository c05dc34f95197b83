//! [`Registry`]: who is connected where, cluster-wide. A deterministic state machine over
//! [`PresenceOp`]s: the same ops in the same order give the same registry on every node
//! (the Raft state machine applies them as log entries, see [`super::replica`]).

use std::collections::{BTreeMap, HashMap};

use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::events::{Change, Reason};

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
        self.apply_noting(op, &mut None);
    }

    /// Applies one op, noting in `changes` every record it added or removed (what the
    /// presence events are derived from, see [`super::events::derive`]).
    pub fn apply_noting(&mut self, op: PresenceOp, changes: &mut Option<&mut Vec<Change>>) {
        match op {
            PresenceOp::Connect(record) => self.insert(record, changes),
            PresenceOp::Disconnect { node, connection } => {
                self.remove(&(node, connection), None, changes)
            }
            PresenceOp::PurgeNode { node } => self.purge(node, Reason::NodeDown, changes),
            PresenceOp::ResyncNode { node, connections } => {
                self.purge(node, Reason::NodeDown, changes);
                for record in connections.into_iter().filter(|r| r.node == node) {
                    self.insert(record, changes);
                }
            }
        }
    }

    /// Removes every connection of `node` (a member removed for good, or purged).
    pub fn purge_noting(
        &mut self,
        node: NodeId,
        reason: Reason,
        changes: &mut Option<&mut Vec<Change>>,
    ) {
        self.purge(node, reason, changes);
    }

    fn insert(&mut self, record: ConnectionRecord, changes: &mut Option<&mut Vec<Change>>) {
        let key = (record.node, record.connection.clone());
        if self.by_connection.contains_key(&key) {
            self.remove(&key, None, changes);
        }
        self.by_connection.insert(key.clone(), record.user.clone());
        *self.per_node.entry(record.node).or_default() += 1;
        if let Some(changes) = changes {
            changes.push(Change::Added(record.clone()));
        }
        let conns = self.by_user.entry(record.user.clone()).or_default();
        let at = conns
            .binary_search_by(|r| (r.node, r.connection.as_str()).cmp(&(key.0, key.1.as_str())))
            .unwrap_or_else(|at| at);
        conns.insert(at, record);
    }

    fn remove(
        &mut self,
        key: &Key,
        reason: Option<Reason>,
        changes: &mut Option<&mut Vec<Change>>,
    ) {
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
            if let Some(at) = conns
                .iter()
                .position(|r| r.node == key.0 && r.connection == key.1)
            {
                let record = conns.remove(at);
                if let Some(changes) = changes {
                    changes.push(Change::Removed(record, reason));
                }
            }
            if conns.is_empty() {
                self.by_user.remove(&user);
            }
        }
    }

    fn purge(&mut self, node: NodeId, reason: Reason, changes: &mut Option<&mut Vec<Change>>) {
        let mut keys: Vec<Key> = self
            .by_connection
            .keys()
            .filter(|(n, _)| *n == node)
            .cloned()
            .collect();
        // In key order, so that every node notes the same changes in the same order.
        keys.sort_unstable();
        for key in keys {
            self.remove(&key, Some(reason), changes);
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

    /// Number of live connections of `user`.
    pub fn user_connections(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, Vec::len)
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
