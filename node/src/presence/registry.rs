//! [`Registry`]: who is connected where, cluster-wide. A deterministic state machine over
//! [`PresenceOp`]s: the same ops in the same order give the same registry on every node
//! (the Raft state machine applies them as log entries, see [`super::replica`]).
//!
//! It also keeps what the backend bridge is owed ([`Owed`]): a bridged connection's scope
//! while it lives (`ConnectBridged`), and once it ended (`LeaveOwed`, or a purge of its
//! node) the disconnect call not yet made, until `Delivered`. So a disconnect survives
//! its node: whoever leads the registry makes the calls of a dead node's connections.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::connection::ConnectionId;
use super::events::{Change, EventId, NotedConnection, Reason};

/// A bridged connection's disconnect call, owed to the backend until it is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owed {
    pub user: Arc<str>,
    /// Its scope (`backend::scope`'s encoding), as the connection sent it at connect.
    pub scope: Arc<[u8]>,
    /// The close code the backend is told: the connection's own, or 1006 when its node
    /// died.
    pub code: u16,
    /// Why it ended: `closed` (by its client or its node), `node_down`, `removed`.
    pub reason: &'static str,
    /// The presence event of its end, once derived (`Registry::note_end`).
    pub event: Option<EventId>,
}

impl Owed {
    /// The reason as kept (`closed`, `node_down`, `removed`), from its text.
    pub fn reason_of(text: &str) -> &'static str {
        match text {
            "node_down" => "node_down",
            "removed" => "removed",
            _ => "closed",
        }
    }
}

/// One connection as the registry keeps it: its user is the key it is filed under.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    connection: ConnectionId,
    connected_at: u64,
}

impl Held {
    fn record(&self, user: &str) -> ConnectionRecord {
        ConnectionRecord {
            node: self.connection.node(),
            connection: self.connection.to_string(),
            user: user.to_owned(),
            connected_at: self.connected_at,
        }
    }
}

/// A user's connections, sorted by connection id: most users hold one, kept in place.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Conns {
    One(Held),
    Many(Vec<Held>),
}

impl Conns {
    fn as_slice(&self) -> &[Held] {
        match self {
            Conns::One(held) => std::slice::from_ref(held),
            Conns::Many(held) => held,
        }
    }

    /// Files `held`, replacing the connection's earlier record (returned).
    fn insert(&mut self, held: Held) -> Option<Held> {
        let at = self
            .as_slice()
            .binary_search_by(|h| h.connection.cmp(&held.connection));
        match (at, &mut *self) {
            (Ok(_), Conns::One(old)) => Some(std::mem::replace(old, held)),
            (Ok(at), Conns::Many(all)) => Some(std::mem::replace(&mut all[at], held)),
            (Err(at), Conns::One(old)) => {
                let mut all = Vec::with_capacity(2);
                all.push(old.clone());
                all.insert(at, held);
                *self = Conns::Many(all);
                None
            }
            (Err(at), Conns::Many(all)) => {
                all.insert(at, held);
                None
            }
        }
    }

    /// Takes `connection` out; returns it. `self` may be left empty (a `Many` of none,
    /// which holds no allocation), for the caller to drop.
    fn remove(&mut self, connection: &ConnectionId) -> Option<Held> {
        match self {
            Conns::One(held) if held.connection == *connection => {
                let held = held.clone();
                *self = Conns::Many(Vec::new());
                Some(held)
            }
            Conns::One(_) => None,
            Conns::Many(all) => {
                let at = all
                    .binary_search_by(|h| h.connection.cmp(connection))
                    .ok()?;
                let held = all.remove(at);
                if let [one] = all.as_slice() {
                    *self = Conns::One(one.clone());
                }
                Some(held)
            }
        }
    }
}

/// Who is connected where. See the module header.
///
/// Every replica of a shard (or of the one registry) holds its connections here, so this
/// is most of what a remote connection costs a node: per connection one table slot (its
/// user's, with the connection in place when it is the user's only one) and the user id
/// once. Connection ids are numbers ([`ConnectionId`]); there is no index by connection,
/// since a connection's end names its user ([`PresenceOp::Leave`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Registry {
    by_user: HashMap<Arc<str>, Conns>,
    /// Each node's number of connections (a node with none has no entry).
    per_node: BTreeMap<NodeId, usize>,
    legacy: Legacy,
    /// The scope of each live bridged connection (empty without `--backend-url`).
    bridged: HashMap<ConnectionId, Arc<[u8]>>,
    /// Disconnect calls owed to the backend, by connection.
    owed: BTreeMap<ConnectionId, Owed>,
}

/// Connection → user, for the `Disconnect`s of logs written before peer protocol 8 (they
/// name no user): built at the first one, kept up to date while they come, dropped at
/// the first `Leave`. Replaying such a log costs one pass over the registry, not one per
/// op. Not part of the registry's value (equal registries may differ in it).
#[derive(Debug, Default, Clone)]
struct Legacy(Option<HashMap<ConnectionId, Arc<str>>>);

impl PartialEq for Legacy {
    fn eq(&self, _: &Legacy) -> bool {
        true
    }
}

impl Eq for Legacy {}

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
            PresenceOp::Leave {
                node,
                connection,
                user,
            } => {
                self.legacy.0 = None;
                let connection = ConnectionId::new(node, &connection);
                self.remove(&user, &connection, None, changes);
                self.bridged.remove(&connection);
            }
            PresenceOp::Disconnect { node, connection } => {
                let by_user = &self.by_user;
                let index = self.legacy.0.get_or_insert_with(|| {
                    held(by_user)
                        .map(|(user, h)| (h.connection.clone(), user.clone()))
                        .collect()
                });
                let connection = ConnectionId::new(node, &connection);
                if let Some(user) = index.get(&connection).cloned() {
                    self.remove(&user, &connection, None, changes);
                }
            }
            PresenceOp::PurgeNode { node } => self.purge(node, Reason::NodeDown, changes),
            PresenceOp::ResyncNode { node, connections } => {
                self.purge(node, Reason::NodeDown, changes);
                for record in connections.into_iter().filter(|r| r.node == node) {
                    self.insert(record, changes);
                }
            }
            PresenceOp::ConnectBridged { record, scope } => {
                let connection = ConnectionId::new(record.node, &record.connection);
                self.insert(record, changes);
                self.bridged.insert(connection, Arc::from(&scope[..]));
            }
            PresenceOp::LeaveOwed {
                node,
                connection,
                user,
                code,
            } => {
                self.legacy.0 = None;
                let connection = ConnectionId::new(node, &connection);
                if let Some(user) = self.remove(&user, &connection, None, changes) {
                    self.owe(&connection, user, code, "closed");
                }
            }
            PresenceOp::Delivered {
                node, connection, ..
            } => {
                let connection = ConnectionId::new(node, &connection);
                self.owed.remove(&connection);
                self.bridged.remove(&connection);
            }
        }
    }

    /// A bridged connection that just left the registry: its scope moves to the owed
    /// disconnects (nothing for a connection that was not bridged).
    fn owe(&mut self, connection: &ConnectionId, user: Arc<str>, code: u16, reason: &'static str) {
        let Some(scope) = self.bridged.remove(connection) else {
            return;
        };
        self.owed.insert(
            connection.clone(),
            Owed {
                user,
                scope,
                code,
                reason,
                event: None,
            },
        );
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
        let connection = ConnectionId::new(record.node, &record.connection);
        let user: Arc<str> = match self.by_user.get_key_value(record.user.as_str()) {
            Some((user, _)) => user.clone(),
            None => Arc::from(record.user.as_str()),
        };
        let held = Held {
            connection: connection.clone(),
            connected_at: record.connected_at,
        };
        let replaced = match self.by_user.get_mut(&user) {
            Some(conns) => conns.insert(held),
            None => {
                self.by_user.insert(user.clone(), Conns::One(held));
                None
            }
        };
        if replaced.is_none() {
            *self.per_node.entry(record.node).or_default() += 1;
        }
        if let Some(index) = &mut self.legacy.0 {
            index.insert(connection.clone(), user.clone());
        }
        if let Some(changes) = changes {
            if let Some(old) = replaced {
                changes.push(Change::Removed(noted(&user, old), None));
            }
            changes.push(Change::Added(NotedConnection { user, connection }));
        }
    }

    /// Takes `connection` out of `user`'s connections (the user too if it has none
    /// left), and notes it with `reason`; the user, if it was there.
    fn remove(
        &mut self,
        user: &str,
        connection: &ConnectionId,
        reason: Option<Reason>,
        changes: &mut Option<&mut Vec<Change>>,
    ) -> Option<Arc<str>> {
        let (user, _) = self.by_user.get_key_value(user)?;
        let user = user.clone();
        let conns = self.by_user.get_mut(&user)?;
        let held = conns.remove(connection)?;
        if conns.as_slice().is_empty() {
            self.by_user.remove(&user);
        }
        if let Some(index) = &mut self.legacy.0 {
            index.remove(&held.connection);
        }
        let node = held.connection.node();
        if let Some(count) = self.per_node.get_mut(&node) {
            *count -= 1;
            if *count == 0 {
                self.per_node.remove(&node);
            }
        }
        if let Some(changes) = changes {
            changes.push(Change::Removed(noted(&user, held), reason));
        }
        Some(user)
    }

    /// Removes every connection of `node`, in connection order, so that every node notes
    /// the same changes in the same order. Looks through every user: purges are rare (a
    /// node down, drained or removed).
    fn purge(&mut self, node: NodeId, reason: Reason, changes: &mut Option<&mut Vec<Change>>) {
        if !self.per_node.contains_key(&node) {
            return;
        }
        let mut gone: Vec<(ConnectionId, Arc<str>)> = held(&self.by_user)
            .filter(|(_, h)| h.connection.node() == node)
            .map(|(user, h)| (h.connection.clone(), user.clone()))
            .collect();
        gone.sort_unstable();
        let why = match reason {
            Reason::NodeDown => "node_down",
            Reason::Removed => "removed",
        };
        for (connection, user) in gone {
            if let Some(user) = self.remove(&user, &connection, Some(reason), changes) {
                // The node is gone with its socket: 1006, as a connection that broke off.
                self.owe(&connection, user, 1006, why);
            }
        }
    }

    /// Every live connection of `user`, ordered by node then connection id.
    pub fn user(&self, user: &str) -> Vec<ConnectionRecord> {
        self.by_user
            .get(user)
            .map(|conns| conns.as_slice().iter().map(|h| h.record(user)).collect())
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
        self.per_node.values().sum()
    }

    /// Whether no connection is registered.
    pub fn is_empty(&self) -> bool {
        self.per_node.is_empty()
    }

    /// Number of live connections of `user`.
    pub fn user_connections(&self, user: &str) -> usize {
        self.by_user.get(user).map_or(0, |c| c.as_slice().len())
    }

    /// Number of distinct users connected.
    pub fn users(&self) -> usize {
        self.by_user.len()
    }

    /// Every record, for a snapshot.
    pub fn records(&self) -> impl Iterator<Item = ConnectionRecord> + '_ {
        held(&self.by_user).map(|(user, h)| h.record(user))
    }

    /// The live bridged connections and their scopes, for a snapshot.
    pub fn bridged(&self) -> impl Iterator<Item = (&ConnectionId, &Arc<[u8]>)> + '_ {
        self.bridged.iter()
    }

    /// The scope of a live bridged connection (shared: the connection's own session keeps
    /// this one instead of a copy).
    pub fn scope_of(&self, connection: &ConnectionId) -> Option<Arc<[u8]>> {
        self.bridged.get(connection).cloned()
    }

    /// The disconnect calls owed to the backend, by connection.
    pub fn owed(&self) -> impl Iterator<Item = (&ConnectionId, &Owed)> + '_ {
        self.owed.iter()
    }

    /// Number of disconnect calls owed.
    pub fn owed_len(&self) -> usize {
        self.owed.len()
    }

    /// Restores a snapshot's bridged scopes and owed calls (after its records).
    pub fn restore_bridge(
        &mut self,
        bridged: impl IntoIterator<Item = (ConnectionId, Arc<[u8]>)>,
        owed: impl IntoIterator<Item = (ConnectionId, Owed)>,
    ) {
        self.bridged.extend(bridged);
        self.owed.extend(owed);
    }

    /// The presence event that ended `connection`: its owed call carries it.
    pub fn note_end(&mut self, connection: &ConnectionId, event: EventId) {
        if let Some(owed) = self.owed.get_mut(connection)
            && owed.event.is_none()
        {
            owed.event = Some(event);
        }
    }
}

/// Every connection held, with its user.
fn held(by_user: &HashMap<Arc<str>, Conns>) -> impl Iterator<Item = (&Arc<str>, &Held)> {
    by_user
        .iter()
        .flat_map(|(user, conns)| conns.as_slice().iter().map(move |h| (user, h)))
}

fn noted(user: &Arc<str>, held: Held) -> NotedConnection {
    NotedConnection {
        user: user.clone(),
        connection: held.connection,
    }
}
