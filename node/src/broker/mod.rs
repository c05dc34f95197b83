//! The sans-IO broker core: which connections are in which groups, what each connection
//! may join, and where a published message must go, locally and across the cluster.
//!
//! Parts:
//! - [`Broker`]: the local subscription table, generic over the handle `H` the IO layer
//!   uses to reach a connection (a queue sender in the node, a plain value in tests).
//!   Fan-out is a lookup: [`Broker::fanout`] hands out the group's handles as one shared
//!   slice (built once per change of the group, NATS's cached sublist result), so the
//!   caller pushes one shared, already-encoded message to each *after* releasing its lock.
//! - [`Permissions`]: what a token allows a connection to join.
//! - [`RemoteInterest`]: which peers have subscribers for which groups, as gossiped; the
//!   cluster uses it to send a message only to nodes that want it.
//! - [`glob`]: Redis-style pattern matching for `PUBSUB CHANNELS pattern`.
//!
//! Nothing here touches a socket or a clock: the node wraps a `Broker` in a short-held
//! lock and drives it (`crate::hub`); tests drive it directly. The only synchronisation
//! inside is the `OnceLock` that lets concurrent readers build a group's fan-out slice
//! once.

mod glob;
mod interest;
mod permissions;

pub use glob::{
    Budget, LISTING_BUDGET, Listed, MAX_PATTERN, glob_match, glob_match_within, list_matching,
};
pub use interest::RemoteInterest;
pub use permissions::Permissions;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, OnceLock};

/// A connection's id on this node; unique for the life of the process.
pub type ConnId = u64;

/// Why a connection could not join a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The connection's token does not permit this group.
    #[error("group '{0}' is not permitted by this connection's token")]
    NotPermitted(String),
    /// The connection is already in as many groups as the broker allows.
    #[error("this connection is already in {0} groups, the most allowed")]
    TooManyGroups(usize),
    /// The group name is empty, longer than the broker allows or holds a control or
    /// bidirectional formatting character.
    #[error("invalid group name: {0}")]
    InvalidName(crate::names::NameError),
    /// No such connection is registered (it has already gone).
    #[error("unknown connection")]
    UnknownConnection,
}

/// Why a connection could not leave a group.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaveError {
    /// Every connection stays in its own user group for its whole life.
    #[error("a connection cannot leave its own user group '{0}'")]
    OwnUserGroup(String),
    /// The connection was not in the group.
    #[error("not subscribed to '{0}'")]
    NotSubscribed(String),
    /// No such connection is registered.
    #[error("unknown connection")]
    UnknownConnection,
}

/// Longest group name, in bytes (the default of [`BrokerLimits::max_group_name`]).
pub const MAX_GROUP_NAME: usize = 256;

/// Limits the broker enforces on what connections ask of it.
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// Most groups one connection may be in, its user group included.
    pub max_groups_per_connection: usize,
    /// Longest group name, in bytes.
    pub max_group_name: usize,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_groups_per_connection: 256,
            max_group_name: MAX_GROUP_NAME,
        }
    }
}

/// Groups with fewer members than this find one by scanning their ids; from this size
/// on they keep an index from connection id to position. Most groups are small (a
/// user's own group has one or two connections), and an index costs a hash table each.
const INDEXED_FROM: usize = 16;

/// The members of one group: handles in a dense vector, with their connection ids beside
/// them (and, in a large group, an index from id to position) so that leaving is a
/// lookup and a swap-remove; and the fan-out slice.
#[derive(Debug)]
struct Members<H> {
    handles: Vec<H>,
    ids: Vec<ConnId>,
    /// Empty (no allocation) while the group has fewer than [`INDEXED_FROM`] members.
    position: HashMap<ConnId, usize>,
    /// `handles` as one shared slice, built by the first fan-out after a change and
    /// dropped by the next change: a publish clones one pointer out of the table and
    /// fans out without holding the table's lock.
    shared: OnceLock<Arc<[H]>>,
}

impl<H: Clone> Members<H> {
    fn new() -> Self {
        Members {
            handles: Vec::new(),
            ids: Vec::new(),
            position: HashMap::new(),
            shared: OnceLock::new(),
        }
    }

    fn find(&self, id: ConnId) -> Option<usize> {
        if self.position.is_empty() {
            self.ids.iter().position(|&i| i == id)
        } else {
            self.position.get(&id).copied()
        }
    }

    fn insert(&mut self, id: ConnId, handle: H) -> bool {
        if self.find(id).is_some() {
            return false;
        }
        self.handles.push(handle);
        self.ids.push(id);
        if !self.position.is_empty() {
            self.position.insert(id, self.ids.len() - 1);
        } else if self.ids.len() >= INDEXED_FROM {
            self.position = self
                .ids
                .iter()
                .enumerate()
                .map(|(at, &i)| (i, at))
                .collect();
        }
        self.shared = OnceLock::new();
        true
    }

    fn remove(&mut self, id: ConnId) -> bool {
        let Some(at) = self.find(id) else {
            return false;
        };
        self.handles.swap_remove(at);
        self.ids.swap_remove(at);
        if !self.position.is_empty() {
            self.position.remove(&id);
            if let Some(moved) = self.ids.get(at) {
                self.position.insert(*moved, at);
            }
            // Half the threshold, so that a group near it does not build and drop its
            // index on every join and leave.
            if self.ids.len() < INDEXED_FROM / 2 {
                self.position = HashMap::new();
            }
        }
        self.shared = OnceLock::new();
        true
    }

    fn fanout(&self) -> Arc<[H]> {
        self.shared
            .get_or_init(|| Arc::from(self.handles.as_slice()))
            .clone()
    }

    fn len(&self) -> usize {
        self.handles.len()
    }
}

#[derive(Debug)]
struct Connection {
    user: String,
    user_group: Arc<str>,
    permissions: Permissions,
    /// The groups it is in: a vector (at most `max_groups_per_connection`, 256 by
    /// default, and usually one or two), not a hash set per connection.
    groups: Vec<Arc<str>>,
}

/// The local subscription table. See the module header.
///
/// Call order: [`Broker::connect`] once per connection, then any number of
/// [`Broker::join`] / [`Broker::leave`], then [`Broker::disconnect`] once. Every change
/// to a group's local count is remembered until [`Broker::take_interest_changes`]
/// collects it, which is how the cluster learns what to gossip.
#[derive(Debug)]
pub struct Broker<H> {
    limits: BrokerLimits,
    connections: HashMap<ConnId, Connection>,
    groups: HashMap<Arc<str>, Members<H>>,
    /// Groups whose local count changed since the last `take_interest_changes`.
    dirty: HashSet<Arc<str>>,
    /// Bumped on every collected batch of interest changes.
    interest_version: u64,
}

impl<H: Clone> Broker<H> {
    /// An empty broker.
    pub fn new(limits: BrokerLimits) -> Self {
        Broker {
            limits,
            connections: HashMap::new(),
            groups: HashMap::new(),
            dirty: HashSet::new(),
            interest_version: 0,
        }
    }

    /// Registers an authenticated connection and joins it to its user group and to every
    /// group its token lists. Groups beyond the per-connection limit, or with invalid
    /// names, are skipped and returned so the caller can report them.
    pub fn connect(
        &mut self,
        id: ConnId,
        handle: H,
        user: &str,
        user_group: &str,
        permissions: Permissions,
    ) -> Vec<(String, JoinError)> {
        let user_group: Arc<str> = self.intern(user_group);
        let initial: Vec<String> = permissions.initial_groups().map(str::to_owned).collect();
        self.connections.insert(
            id,
            Connection {
                user: user.to_owned(),
                user_group: user_group.clone(),
                permissions,
                groups: Vec::new(),
            },
        );
        let mut refused = Vec::new();
        if let Err(e) = self.join_unchecked(id, handle.clone(), &user_group) {
            refused.push((user_group.to_string(), e));
        }
        for group in initial {
            if let Err(e) = self.join_unchecked(id, handle.clone(), &group) {
                refused.push((group, e));
            }
        }
        refused
    }

    /// Joins a connection to a group its token permits. Joining twice is not an error.
    pub fn join(&mut self, id: ConnId, handle: H, group: &str) -> Result<(), JoinError> {
        let conn = self
            .connections
            .get(&id)
            .ok_or(JoinError::UnknownConnection)?;
        if *conn.user_group != *group && !conn.permissions.permits(group) {
            return Err(JoinError::NotPermitted(group.to_owned()));
        }
        self.join_unchecked(id, handle, group)
    }

    fn join_unchecked(&mut self, id: ConnId, handle: H, group: &str) -> Result<(), JoinError> {
        crate::names::check(group, self.limits.max_group_name).map_err(JoinError::InvalidName)?;
        let max = self.limits.max_groups_per_connection;
        let conn = self
            .connections
            .get(&id)
            .ok_or(JoinError::UnknownConnection)?;
        if conn.groups.iter().any(|g| **g == *group) {
            return Ok(());
        }
        if conn.groups.len() >= max {
            return Err(JoinError::TooManyGroups(max));
        }
        let name = self.intern(group);
        if let Some(conn) = self.connections.get_mut(&id) {
            conn.groups.push(name.clone());
        }
        let members = self.groups.entry(name.clone()).or_insert_with(Members::new);
        members.insert(id, handle);
        self.dirty.insert(name);
        Ok(())
    }

    /// A connection's handle, found through its user group (which it is in for its
    /// whole life): the connection needs no handle of its own.
    pub fn handle_of(&self, id: ConnId) -> Option<H> {
        let conn = self.connections.get(&id)?;
        let members = self.groups.get(&conn.user_group)?;
        members.find(id).map(|at| members.handles[at].clone())
    }

    /// Every connection of this node.
    pub fn connection_ids(&self) -> Vec<ConnId> {
        self.connections.keys().copied().collect()
    }

    /// The connections of `user` on this node. Looks through every connection: it serves
    /// admin requests and revocations, which are rare.
    pub fn connections_of(&self, user: &str) -> Vec<ConnId> {
        let mut ids: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|(_, c)| c.user == user)
            .map(|(id, _)| *id)
            .collect();
        ids.sort_unstable();
        ids
    }

    /// When the token a connection holds now was issued (Unix seconds).
    pub fn issued_at(&self, id: ConnId) -> Option<u64> {
        self.connections.get(&id).map(|c| c.permissions.issued())
    }

    /// Joins a connection to a group at the server's request (the backend's consumer, an
    /// admin, Django's `group_add`): whatever its token permits, within the limits.
    pub fn join_any(&mut self, id: ConnId, group: &str) -> Result<(), JoinError> {
        let handle = self.handle_of(id).ok_or(JoinError::UnknownConnection)?;
        self.join_unchecked(id, handle, group)
    }

    /// Removes a connection from a group it joined.
    pub fn leave(&mut self, id: ConnId, group: &str) -> Result<(), LeaveError> {
        let conn = self
            .connections
            .get_mut(&id)
            .ok_or(LeaveError::UnknownConnection)?;
        if *conn.user_group == *group {
            return Err(LeaveError::OwnUserGroup(group.to_owned()));
        }
        let Some(at) = conn.groups.iter().position(|g| **g == *group) else {
            return Err(LeaveError::NotSubscribed(group.to_owned()));
        };
        let name = conn.groups.swap_remove(at);
        self.remove_member(&name, id);
        Ok(())
    }

    /// Forgets a connection and takes it out of every group. Returns its user id, or
    /// `None` if it was not registered.
    pub fn disconnect(&mut self, id: ConnId) -> Option<String> {
        let conn = self.connections.remove(&id)?;
        for name in &conn.groups {
            self.remove_member(name, id);
        }
        Some(conn.user)
    }

    fn remove_member(&mut self, name: &Arc<str>, id: ConnId) {
        let empty = match self.groups.get_mut(name) {
            Some(members) => {
                members.remove(id);
                members.len() == 0
            }
            None => return,
        };
        if empty {
            self.groups.remove(name);
        }
        self.dirty.insert(name.clone());
    }

    /// Reuses the group's existing name allocation when there is one.
    fn intern(&self, group: &str) -> Arc<str> {
        match self.groups.get_key_value(group) {
            Some((name, _)) => name.clone(),
            None => Arc::from(group),
        }
    }

    /// The handles of every local connection in `group`, as one shared slice that the
    /// caller may keep after releasing its lock on the broker: the fan-out list.
    pub fn fanout(&self, group: &str) -> Option<Arc<[H]>> {
        self.groups.get(group).map(Members::fanout)
    }

    /// The handles of every local connection in `group`.
    pub fn recipients(&self, group: &str) -> &[H] {
        self.groups
            .get(group)
            .map(|m| m.handles.as_slice())
            .unwrap_or(&[])
    }

    /// How many local connections are in `group`.
    pub fn group_size(&self, group: &str) -> usize {
        self.groups.get(group).map_or(0, Members::len)
    }

    /// Groups with at least one local connection, sorted, optionally filtered by a
    /// Redis glob pattern.
    pub fn groups(&self, pattern: Option<&[u8]>) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .keys()
            .filter(|name| pattern.is_none_or(|p| glob_match(p, name.as_bytes())))
            .map(|name| name.to_string())
            .collect();
        names.sort_unstable();
        names
    }

    /// Every group with at least one local connection, unsorted: names are shared, so
    /// copying them out is cheap, and the caller filters them without holding a lock.
    pub fn group_names(&self) -> Vec<Arc<str>> {
        self.groups.keys().cloned().collect()
    }

    /// Number of registered connections.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Number of groups with at least one local connection.
    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// The groups a connection is in, sorted.
    pub fn groups_of(&self, id: ConnId) -> Vec<String> {
        let mut names: Vec<String> = self
            .connections
            .get(&id)
            .map(|c| c.groups.iter().map(|g| g.to_string()).collect())
            .unwrap_or_default();
        names.sort_unstable();
        names
    }

    /// Whether the connection's token lets it ask about `user`'s presence.
    pub fn may_query_presence(&self, id: ConnId, user: &str) -> bool {
        self.connections
            .get(&id)
            .is_some_and(|c| c.user == user || c.permissions.presence_any())
    }

    /// Replaces a connection's permissions after a token refresh: it leaves every group
    /// the new token does not permit (its user group excepted) and joins the new token's
    /// groups, as at connect. Returns the groups left and joined, sorted.
    pub fn refresh(
        &mut self,
        id: ConnId,
        handle: H,
        permissions: Permissions,
    ) -> (Vec<String>, Vec<String>) {
        let Some(conn) = self.connections.get_mut(&id) else {
            return (Vec::new(), Vec::new());
        };
        let mut left: Vec<Arc<str>> = conn
            .groups
            .iter()
            .filter(|g| **g != conn.user_group && !permissions.permits(g))
            .cloned()
            .collect();
        left.sort_unstable();
        let initial: Vec<String> = permissions.initial_groups().map(str::to_owned).collect();
        conn.permissions = permissions;
        for name in &left {
            if let Some(conn) = self.connections.get_mut(&id) {
                conn.groups.retain(|g| g != name);
            }
            self.remove_member(name, id);
        }
        let mut joined = Vec::new();
        for group in initial {
            let already = self
                .connections
                .get(&id)
                .is_some_and(|c| c.groups.iter().any(|g| **g == *group));
            if !already && self.join_unchecked(id, handle.clone(), &group).is_ok() {
                joined.push(group);
            }
        }
        joined.sort_unstable();
        (left.iter().map(|g| g.to_string()).collect(), joined)
    }

    /// The local count of every group that changed since the last call, with a version
    /// that increases by one per non-empty batch. A count of 0 means the group is gone.
    pub fn take_interest_changes(&mut self) -> Option<(u64, Vec<(String, u32)>)> {
        if self.dirty.is_empty() {
            return None;
        }
        let mut changes: Vec<(String, u32)> = self
            .dirty
            .drain()
            .map(|name| {
                let count = self.groups.get(&name).map_or(0, Members::len);
                (name.to_string(), u32::try_from(count).unwrap_or(u32::MAX))
            })
            .collect();
        changes.sort_unstable();
        self.interest_version += 1;
        Some((self.interest_version, changes))
    }

    /// Every group and its local count, with the current interest version: what a full
    /// gossip sync carries.
    pub fn interest_snapshot(&self) -> (u64, BTreeMap<String, u32>) {
        let groups = self
            .groups
            .iter()
            .map(|(name, m)| (name.to_string(), u32::try_from(m.len()).unwrap_or(u32::MAX)))
            .collect();
        (self.interest_version, groups)
    }
}

#[cfg(test)]
mod tests;
