//! The steward: the cluster's housekeeping decisions, with no IO and no clock.
//!
//! Every [`STEWARD_INTERVAL`] the driver (`super::consensus`) builds a [`View`] of Raft,
//! the mesh and the replica, calls [`Steward::tick`], and carries out the [`Action`]s in
//! order. The rules:
//! - **Every node**: a node that finds itself removed from the cluster drains (once) and
//!   does nothing else. Otherwise, with a leader known, it checks that the replica holds
//!   exactly its live connections whenever it is settled (nothing queued, no write in
//!   flight, its last write applied here); two disagreeing looks in a row ask for a
//!   [`Action::Resync`] (after a restart, or after the leader purged it while it was cut
//!   off).
//! - **The leader**: every node that is up (itself included) and whose id is not yet
//!   bound to an incarnation gets the one it presented bound (`Command::Bind`), so a
//!   second process with the same id and another data dir is refused; a peer that is up
//!   and not yet a member becomes a learner; a learner
//!   that is up and caught up (within [`CATCH_UP_MARGIN`] entries) becomes a voter, one at
//!   a time and only outside a membership change, up to `--max-voters`; a node that holds
//!   presence and has been down for `--node-timeout-ms` (counted from when it was last
//!   heard from) has its presence purged, every tick until it is gone.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use switchboard_proto::peer::NodeId;

use crate::history::Assignments;
use crate::history::assign::Change;

/// How long a bucket's replica holds its role before it may take over as owner (time to
/// receive the owner's ring).
pub const HANDOVER_SETTLE: Duration = Duration::from_secs(2);

/// How often the steward looks at the cluster.
pub const STEWARD_INTERVAL: Duration = Duration::from_millis(250);
/// A learner this close to the leader's last log index counts as caught up.
pub const CATCH_UP_MARGIN: u64 = 100;
/// Disagreeing looks in a row before a resync.
pub const MISMATCHES_BEFORE_RESYNC: u32 = 2;

/// A peer as the failure detector sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerState {
    pub id: NodeId,
    /// Its peer address, for the Raft membership.
    pub addr: String,
    pub up: bool,
    /// How long ago it was last heard from.
    pub last_seen: Option<Duration>,
    /// The incarnation its session presented.
    pub incarnation: Option<u64>,
    /// Its boot id (changes at every restart).
    pub boot: Option<u64>,
    /// It announced that it drains.
    pub leaving: bool,
}

/// What the steward looks at.
#[derive(Debug, Clone)]
pub struct View {
    pub me: NodeId,
    /// This node's incarnation, and its boot id.
    pub my_incarnation: u64,
    pub my_boot: u64,
    /// This node drains (its history buckets go to others).
    pub me_leaving: bool,
    /// History buckets' owners and replicas, from the replica.
    pub assignments: Assignments,
    /// Incarnations bound in the replica.
    pub bound: BTreeMap<NodeId, u64>,
    /// The Raft leader this node knows, if any.
    pub leader: Option<NodeId>,
    /// Whether that leader can commit (see `Consensus::has_leader`).
    pub has_leader: bool,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// A membership change is under way (joint configuration).
    pub changing: bool,
    /// The leader's last log index, and each follower's matched index.
    pub last_log_index: u64,
    pub matched: BTreeMap<NodeId, u64>,
    pub peers: Vec<PeerState>,
    /// Members removed for good, from the replica.
    pub removed: BTreeSet<NodeId>,
    /// Nodes holding presence in the replica.
    pub presence_holders: BTreeSet<NodeId>,
    /// When settled: this node's live connections, and what the replica holds for it.
    pub settled: Option<(usize, usize)>,
}

/// What the driver is asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// This node was removed: drain it.
    Drain,
    /// Re-register every live connection of this node.
    Resync,
    /// Bind `node` to `incarnation` in the replica.
    Bind { node: NodeId, incarnation: u64 },
    /// Add `id` (at `addr`) as a learner.
    AddLearner { id: NodeId, addr: String },
    /// Make the learner `id` a voter.
    Promote(NodeId),
    /// Purge the presence of the down node `id`.
    Purge(NodeId),
    /// Commit these history bucket changes.
    Assign(Vec<Change>),
}

/// Since when each node holding presence has been seen down, counted from when it was
/// last heard of: a leader purges a node down for the node timeout. Kept by the control
/// group's steward and by each presence shard's.
#[derive(Debug, Default)]
pub struct DownClock {
    since: HashMap<NodeId, Instant>,
}

impl DownClock {
    /// Forgets every node (this node stopped leading).
    pub fn clear(&mut self) {
        self.since.clear();
    }

    /// Whether `node` (a holder of presence) has been down for `timeout` at `now`; a node
    /// up is forgotten.
    pub fn down_for(
        &mut self,
        now: Instant,
        timeout: Duration,
        node: NodeId,
        peers: &[PeerState],
    ) -> bool {
        let peer = peers.iter().find(|p| p.id == node);
        if peer.is_some_and(|p| p.up) {
            self.since.remove(&node);
            return false;
        }
        let since = *self.since.entry(node).or_insert_with(|| {
            // Silent for a while already? Count from when it was last heard of.
            peer.and_then(|p| p.last_seen)
                .and_then(|ago| now.checked_sub(ago))
                .unwrap_or(now)
        });
        now.saturating_duration_since(since) >= timeout
    }

    /// Forgets the nodes that are up now.
    pub fn forget_up(&mut self, peers: &[PeerState]) {
        self.since
            .retain(|id, _| !peers.iter().any(|p| p.id == *id && p.up));
    }
}

/// Each follower's matched log index, from a leader's Raft metrics.
pub fn matched(m: &openraft::RaftMetrics<NodeId, openraft::BasicNode>) -> BTreeMap<NodeId, u64> {
    m.replication
        .iter()
        .flatten()
        .filter_map(|(id, l)| l.map(|l| (*id, l.index)))
        .collect()
}

/// See the module header.
#[derive(Debug)]
pub struct Steward {
    node_timeout: Duration,
    max_voters: usize,
    /// When each node holding presence went down (leader only).
    down: DownClock,
    mismatches: u32,
    removed_noticed: bool,
    /// Since when each bucket has been in its current epoch (leader only).
    epoch_since: HashMap<u16, (u64, Instant)>,
}

impl Steward {
    pub fn new(node_timeout: Duration, max_voters: usize) -> Self {
        Steward {
            node_timeout,
            max_voters,
            down: DownClock::default(),
            mismatches: 0,
            removed_noticed: false,
            epoch_since: HashMap::new(),
        }
    }

    /// One look at the cluster at `now`.
    pub fn tick(&mut self, now: Instant, view: &View) -> Vec<Action> {
        let mut actions = Vec::new();
        if view.removed.contains(&view.me) {
            if !self.removed_noticed {
                self.removed_noticed = true;
                actions.push(Action::Drain);
            }
            return actions;
        }
        if !view.has_leader {
            return actions;
        }
        if let Some((live, registered)) = view.settled {
            if live != registered {
                self.mismatches += 1;
                if self.mismatches >= MISMATCHES_BEFORE_RESYNC {
                    actions.push(Action::Resync);
                    self.mismatches = 0;
                }
            } else {
                self.mismatches = 0;
            }
        }
        if view.leader == Some(view.me) {
            self.lead(now, view, &mut actions);
        } else {
            self.down.clear();
            self.epoch_since.clear();
        }
        actions
    }

    fn lead(&mut self, now: Instant, view: &View, actions: &mut Vec<Action>) {
        let up: BTreeSet<NodeId> = view.peers.iter().filter(|p| p.up).map(|p| p.id).collect();
        let me = std::iter::once((view.me, Some(view.my_incarnation)));
        let others = view
            .peers
            .iter()
            .filter(|p| p.up)
            .map(|p| (p.id, p.incarnation));
        for (node, incarnation) in me.chain(others) {
            if let Some(incarnation) = incarnation
                && !view.bound.contains_key(&node)
                && !view.removed.contains(&node)
            {
                actions.push(Action::Bind { node, incarnation });
            }
        }
        for peer in view.peers.iter().filter(|p| p.up) {
            let member = view.voters.contains(&peer.id) || view.learners.contains(&peer.id);
            if !member && !view.removed.contains(&peer.id) {
                actions.push(Action::AddLearner {
                    id: peer.id,
                    addr: peer.addr.clone(),
                });
            }
        }
        if view.voters.len() < self.max_voters && !view.changing {
            let caught_up = |id: &NodeId| {
                view.matched
                    .get(id)
                    .is_some_and(|m| m + CATCH_UP_MARGIN >= view.last_log_index)
            };
            if let Some(id) = view
                .learners
                .iter()
                .find(|id| up.contains(id) && caught_up(id) && !view.removed.contains(id))
            {
                actions.push(Action::Promote(*id));
            }
        }
        self.down.forget_up(&view.peers);
        for &node in &view.presence_holders {
            if node != view.me
                && self
                    .down
                    .down_for(now, self.node_timeout, node, &view.peers)
            {
                actions.push(Action::Purge(node));
            }
        }
        self.plan_history(now, view, actions);
    }

    /// History buckets follow the live members (voters and learners that are up).
    fn plan_history(&mut self, now: Instant, view: &View, actions: &mut Vec<Action>) {
        let live = live_members(view);
        for (bucket, a) in view.assignments.iter() {
            let entry = self.epoch_since.entry(bucket).or_insert((a.epoch, now));
            if entry.0 != a.epoch {
                *entry = (a.epoch, now);
            }
        }
        let settled = |bucket: u16| {
            self.epoch_since
                .get(&bucket)
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= HANDOVER_SETTLE)
        };
        let changes = view.assignments.plan(&live, settled);
        if !changes.is_empty() {
            actions.push(Action::Assign(changes));
        }
    }
}

/// The members history buckets may be assigned to, with their boot ids: voters and
/// learners that are up and not draining (and this node, unless it drains).
pub fn live_members(view: &View) -> BTreeMap<NodeId, u64> {
    let members = |id: &NodeId| view.voters.contains(id) || view.learners.contains(id);
    let mut live: BTreeMap<NodeId, u64> = view
        .peers
        .iter()
        .filter(|p| p.up && !p.leaving && members(&p.id) && !view.removed.contains(&p.id))
        .filter_map(|p| p.boot.map(|b| (p.id, b)))
        .collect();
    if !view.me_leaving {
        live.insert(view.me, view.my_boot);
    }
    live
}

/// Buckets not yet with their desired owner and replica, as this node sees the members
/// (0 once the assignments have settled).
pub fn buckets_moving(view: &View) -> usize {
    view.assignments.plan(&live_members(view), |_| true).len()
}

#[cfg(test)]
mod tests;
