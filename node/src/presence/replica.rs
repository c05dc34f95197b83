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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::{Deserialize, Serialize};
use switchboard_proto::client::PresenceEntry;
use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::Registry;
use super::claims::{Claimer, Claims};
use super::events::{Change as Noted, Event, EventId, Kind, Read, Reason, Ring, derive};
use super::revocations::Revocations;
use super::shards::Shard;
use super::{DEFAULT_PRESENCE_EVENTS, MAX_EVENT_RING_BYTES};
use crate::history::{Assignments, assign::Change};
use crate::sync::{read, write};
use tokio::sync::watch;

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
    /// A batch of presence changes, stamped with the writing node's clock (the `at` of
    /// the presence events it produces). Replaces `Presence` since peer protocol 4.
    PresenceAt { ops: Vec<PresenceOp>, at_ms: u64 },
    /// Presence shard `shard`'s Raft group has these voters now (written by its leader
    /// once a membership change committed, and by the control leader that creates the
    /// shard): a node hosts the shards it votes in or is placed in, and asks these
    /// voters for the shards it does not host. Since peer protocol 7.
    ShardFormed { shard: Shard, voters: Vec<NodeId> },
    /// `switchboard revoke USER`: `user`'s tokens issued before `before` (Unix seconds)
    /// are refused until `until_ms`, stamped `at_ms` by the writing node. Since peer
    /// protocol 9.
    Revoke {
        user: String,
        before: u64,
        until_ms: u64,
        at_ms: u64,
    },
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
    /// The latest clock stamp committed (Unix ms): the `at` of events from entries that
    /// carry no stamp of their own.
    pub clock_ms: u64,
    /// The voters of each presence shard formed so far (control group only).
    pub shards: BTreeMap<Shard, Vec<NodeId>>,
    /// Users whose older tokens are refused (control group only).
    pub revocations: Revocations,
}

impl Replica {
    /// Applies one command, committed at log index `index`; returns the number of changes
    /// it carried.
    pub fn apply(&mut self, command: Command, index: u64) -> u64 {
        self.apply_noting(command, index, &mut Vec::new())
    }

    /// Applies one command, committed at log index `index`, and appends the presence
    /// events it produced to `events`; returns the number of changes it carried.
    pub fn apply_noting(&mut self, command: Command, index: u64, events: &mut Vec<Event>) -> u64 {
        let mut changes = Vec::new();
        // A stamped entry's events carry its own stamp; others the latest stamp seen.
        let mut at = self.clock_ms;
        let n = match command {
            Command::Presence(ops) => self.apply_ops(ops, &mut changes),
            Command::PresenceAt { ops, at_ms } => {
                self.clock_ms = self.clock_ms.max(at_ms);
                at = at_ms;
                self.apply_ops(ops, &mut changes)
            }
            Command::Remove(node) => {
                self.presence
                    .purge_noting(node, Reason::Removed, &mut Some(&mut changes));
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
            Command::ShardFormed { shard, voters } => {
                self.shards.insert(shard, voters);
                1
            }
            Command::Revoke {
                user,
                before,
                until_ms,
                at_ms,
            } => {
                self.clock_ms = self.clock_ms.max(at_ms);
                self.revocations
                    .revoke(user, before, until_ms, index, self.clock_ms);
                1
            }
        };
        let derived = derive(index, at, changes, &self.presence);
        if self.presence.owed_len() > 0 {
            for event in derived.iter().filter(|e| e.kind == Kind::Leave) {
                self.presence.note_end(&event.connection, event.id);
            }
        }
        events.extend(derived);
        n
    }

    fn apply_ops(&mut self, ops: Vec<PresenceOp>, changes: &mut Vec<Noted>) -> u64 {
        let n = ops.len() as u64;
        for op in ops {
            // A removed node's late changes are ignored: it is gone for good.
            if !self.removed.contains(&op_node(&op)) {
                self.presence.apply_noting(op, &mut Some(changes));
            }
        }
        n
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

    /// This replica with these idempotency claims and clock (a snapshot).
    pub fn with_claims(mut self, claims: Claims, clock_ms: u64) -> Replica {
        self.claims = claims;
        self.clock_ms = clock_ms;
        self
    }

    /// This replica with these revocations (a snapshot).
    pub fn with_revocations(mut self, revocations: Revocations) -> Replica {
        self.revocations = revocations;
        self
    }

    /// This replica with these presence shards' voters (a snapshot).
    pub fn with_shards(
        mut self,
        shards: impl IntoIterator<Item = (Shard, Vec<NodeId>)>,
    ) -> Replica {
        self.shards = shards.into_iter().collect();
        self
    }
}

fn op_node(op: &PresenceOp) -> NodeId {
    match op {
        PresenceOp::Connect(r) => r.node,
        PresenceOp::ConnectBridged { record, .. } => record.node,
        PresenceOp::Disconnect { node, .. }
        | PresenceOp::Leave { node, .. }
        | PresenceOp::LeaveOwed { node, .. }
        | PresenceOp::Delivered { node, .. }
        | PresenceOp::PurgeNode { node }
        | PresenceOp::ResyncNode { node, .. } => *node,
    }
}

/// See the module header. The presence events ring sits beside the replica: the Raft
/// state machine records an entry's events while it still holds the replica's write lock,
/// so a reader that holds the read lock sees the ring and the registry at the same point.
/// Lock order: the replica, then the ring.
#[derive(Debug)]
pub struct SharedReplica {
    state: RwLock<Replica>,
    events: RwLock<Ring>,
    newest: watch::Sender<EventId>,
    /// Events derived since the process started.
    derived: AtomicU64,
}

impl Default for SharedReplica {
    fn default() -> Self {
        SharedReplica::new(DEFAULT_PRESENCE_EVENTS)
    }
}

impl SharedReplica {
    /// An empty replica whose ring keeps the newest `events` presence events (and at most
    /// [`MAX_EVENT_RING_BYTES`]).
    pub fn new(events: usize) -> SharedReplica {
        SharedReplica::bounded(events, MAX_EVENT_RING_BYTES)
    }

    /// An empty replica whose ring keeps the newest `events` presence events, and at most
    /// `bytes` of them (a presence shard's share of the node's bounds).
    pub fn bounded(events: usize, bytes: usize) -> SharedReplica {
        SharedReplica {
            state: RwLock::default(),
            events: RwLock::new(Ring::new(events, bytes, EventId::default())),
            newest: watch::Sender::new(EventId::default()),
            derived: AtomicU64::new(0),
        }
    }

    /// Read access, for a bounded look.
    pub fn read(&self) -> RwLockReadGuard<'_, Replica> {
        read(&self.state)
    }

    /// Write access: the Raft state machine only.
    pub fn write(&self) -> RwLockWriteGuard<'_, Replica> {
        write(&self.state)
    }

    /// Keeps the events of entries just applied and wakes their readers. The Raft state
    /// machine calls it while it holds [`Self::write`].
    pub fn record(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        self.derived
            .fetch_add(events.len() as u64, Ordering::Relaxed);
        let newest = {
            let mut ring = write(&self.events);
            ring.push(events);
            ring.newest()
        };
        self.newest.send_replace(newest);
    }

    /// The replica jumped to the state after log entry `index` (a snapshot restored or
    /// installed): the events before it are unknown here, and readers behind start over.
    /// Called while holding [`Self::write`].
    pub fn restart_events_at(&self, index: u64) {
        let floor = EventId::after_entry(index);
        write(&self.events).restart_at(floor);
        self.newest.send_replace(floor);
    }

    /// Up to `max` events after `cursor` that pass `keep`, or [`Read::Behind`].
    pub fn events_after(&self, cursor: EventId, max: usize, keep: impl Fn(&Event) -> bool) -> Read {
        read(&self.events).after(cursor, max, keep)
    }

    /// Up to `max` of `user`'s events after `cursor` (at the cost of those), or
    /// [`Read::Behind`].
    pub fn user_events_after(&self, user: &str, cursor: EventId, max: usize) -> Read {
        read(&self.events).after_user(user, cursor, max)
    }

    /// The current state and the position it stands at: every connection, or `user`'s,
    /// sorted by user, node and connection. Readers continue after the position.
    pub fn reset(&self, user: Option<&str>) -> (EventId, Vec<ConnectionRecord>) {
        let state = self.read();
        let at = read(&self.events).newest();
        let mut records: Vec<ConnectionRecord> = match user {
            Some(user) => state.presence.user(user),
            None => state.presence.records().collect(),
        };
        drop(state);
        records.sort_unstable_by(|a, b| {
            (&a.user, a.node, &a.connection).cmp(&(&b.user, b.node, &b.connection))
        });
        (at, records)
    }

    /// The position of the newest event, changing whenever events are recorded.
    pub fn subscribe(&self) -> watch::Receiver<EventId> {
        self.newest.subscribe()
    }

    /// The position of the newest event.
    pub fn newest_event(&self) -> EventId {
        *self.newest.borrow()
    }

    /// Presence events derived since the process started.
    pub fn events_derived(&self) -> u64 {
        self.derived.load(Ordering::Relaxed)
    }

    /// (events, bytes) the ring holds, and the position it keeps events after.
    pub fn ring_stats(&self) -> (usize, usize, EventId) {
        let ring = read(&self.events);
        (ring.len(), ring.bytes(), ring.floor())
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

    /// The voters of presence shard `shard`, as last recorded (empty: not formed yet).
    pub fn shard_voters(&self, shard: Shard) -> Vec<NodeId> {
        self.read().shards.get(&shard).cloned().unwrap_or_default()
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
            r.presence.records(),
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
