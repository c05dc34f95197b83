//! [`Registry`]: who is connected where, cluster-wide. A deterministic state machine over
//! [`PresenceOp`]s: the same ops in the same order give the same registry on every node
//! (the Raft state machine applies them as log entries, see [`super::replica`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::events::{Change, NotedConnection, Reason};

/// One connection as the registry keeps it: its user is the key it is filed under, and
/// its connection id is shared with the index by node.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    node: NodeId,
    connection: Arc<str>,
    connected_at: u64,
}

impl Held {
    fn record(&self, user: &str) -> ConnectionRecord {
        ConnectionRecord {
            node: self.node,
            connection: self.connection.to_string(),
            user: user.to_owned(),
            connected_at: self.connected_at,
        }
    }
}

/// Who is connected where. See the module header.
///
/// Every node holds every connection of the cluster here, so this is most of what a
/// remote connection costs a node: each user id and connection id is held once (an
/// `Arc<str>` shared by both indexes), not once per index and record.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Registry {
    /// A user's connections, sorted by (node, connection). A small vector: users hold a
    /// handful of connections, and a B-tree node per user would cost over 1 KiB.
    by_user: HashMap<Arc<str>, Vec<Held>>,
    /// Each node's connections and their users (a node with none has no entry).
    by_node: BTreeMap<NodeId, HashMap<Arc<str>, Arc<str>>>,
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
                self.remove(node, &connection, None, changes)
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
        let node = record.node;
        if self
            .by_node
            .get(&node)
            .is_some_and(|conns| conns.contains_key(record.connection.as_str()))
        {
            self.remove(node, &record.connection, None, changes);
        }
        let user: Arc<str> = match self.by_user.get_key_value(record.user.as_str()) {
            Some((user, _)) => user.clone(),
            None => Arc::from(record.user.as_str()),
        };
        let connection: Arc<str> = Arc::from(record.connection.as_str());
        self.by_node
            .entry(node)
            .or_default()
            .insert(connection.clone(), user.clone());
        if let Some(changes) = changes {
            changes.push(Change::Added(NotedConnection {
                node,
                user: user.clone(),
                connection: connection.clone(),
            }));
        }
        let held = Held {
            node,
            connection,
            connected_at: record.connected_at,
        };
        let conns = self.by_user.entry(user).or_default();
        let at = conns
            .binary_search_by(|h| (h.node, &*h.connection).cmp(&(node, &*held.connection)))
            .unwrap_or_else(|at| at);
        conns.insert(at, held);
    }

    fn remove(
        &mut self,
        node: NodeId,
        connection: &str,
        reason: Option<Reason>,
        changes: &mut Option<&mut Vec<Change>>,
    ) {
        let Some(of_node) = self.by_node.get_mut(&node) else {
            return;
        };
        let Some(user) = of_node.remove(connection) else {
            return;
        };
        if of_node.is_empty() {
            self.by_node.remove(&node);
        }
        if let Some(conns) = self.by_user.get_mut(&*user) {
            if let Some(at) = conns
                .iter()
                .position(|h| h.node == node && &*h.connection == connection)
            {
                let held = conns.remove(at);
                if let Some(changes) = changes {
                    let noted = NotedConnection {
                        node,
                        user: user.clone(),
                        connection: held.connection,
                    };
                    changes.push(Change::Removed(noted, reason));
                }
            }
            if conns.is_empty() {
                self.by_user.remove(&*user);
            }
        }
    }

    fn purge(&mut self, node: NodeId, reason: Reason, changes: &mut Option<&mut Vec<Change>>) {
        let mut connections: Vec<Arc<str>> = self
            .by_node
            .get(&node)
            .map(|conns| conns.keys().cloned().collect())
            .unwrap_or_default();
        // In connection order, so that every node notes the same changes in the same
        // order.
        connections.sort_unstable();
        for connection in connections {
            self.remove(node, &connection, Some(reason), changes);
        }
    }

    /// Every live connection of `user`, ordered by node then connection id.
    pub fn user(&self, user: &str) -> Vec<ConnectionRecord> {
        self.by_user
            .get(user)
            .map(|conns| conns.iter().map(|h| h.record(user)).collect())
            .unwrap_or_default()
    }

    /// Nodes with at least one registered connection.
    pub fn nodes(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.by_node.keys().copied()
    }

    /// Number of connections registered for `node`.
    pub fn node_connections(&self, node: NodeId) -> usize {
        self.by_node.get(&node).map_or(0, HashMap::len)
    }

    /// Number of connections registered, cluster-wide.
    pub fn len(&self) -> usize {
        self.by_node.values().map(HashMap::len).sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.by_node.is_empty()
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
    pub fn records(&self) -> impl Iterator<Item = ConnectionRecord> + '_ {
        self.by_user
            .iter()
            .flat_map(|(user, conns)| conns.iter().map(|h| h.record(user)))
    }
}
