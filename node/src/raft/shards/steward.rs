//! A presence shard's steward: what the shard's leader does to keep its group right,
//! with no IO and no clock.
//!
//! Every `STEWARD_INTERVAL` the driver (`super`) builds a [`ShardView`] of the shard's
//! Raft group, its placement and the mesh, calls [`ShardSteward::tick`], and carries out
//! the [`ShardAction`]s in order. Only the shard's leader acts:
//! - **Convergence** to the placement (the first `SHARD_VOTERS` members ranked for the
//!   shard): a placed member that is up and not in the group becomes a learner; once
//!   every placed member is a voter or a caught-up learner, the voters are replaced by
//!   the placed members in one change (openraft's joint consensus); a learner that is not
//!   placed is removed. Nothing changes while a membership change is under way.
//! - **Record**: the control group is told the shard's voters whenever they differ from
//!   what it holds, so that every node knows whom to ask and which shards to host.
//! - **Purge**: a node holding presence in the shard that was removed, or has been down
//!   for `--node-timeout-ms`, has its presence purged, every tick until it is gone.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use switchboard_proto::peer::NodeId;

use crate::raft::steward::{CATCH_UP_MARGIN, DownClock, PeerState};

/// What a shard's steward looks at.
#[derive(Debug, Clone)]
pub struct ShardView {
    pub me: NodeId,
    /// The shard's Raft leader, as this node knows it.
    pub leader: Option<NodeId>,
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    /// A membership change is under way (joint configuration).
    pub changing: bool,
    /// The leader's last log index, and each follower's matched index.
    pub last_log_index: u64,
    pub matched: BTreeMap<NodeId, u64>,
    /// The voters the shard should have (its placement).
    pub placement: Vec<NodeId>,
    /// The voters the control group holds for the shard.
    pub recorded: Vec<NodeId>,
    pub peers: Vec<PeerState>,
    /// Members removed for good.
    pub removed: BTreeSet<NodeId>,
    /// Nodes holding presence in the shard.
    pub holders: BTreeSet<NodeId>,
}

/// What the driver is asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardAction {
    /// Add `id` (at `addr`) to the shard's group as a learner.
    AddLearner { id: NodeId, addr: String },
    /// Make these the shard's voters (every one a voter or a caught-up learner).
    ReplaceVoters(BTreeSet<NodeId>),
    /// Take these learners out of the group.
    RemoveLearners(BTreeSet<NodeId>),
    /// Tell the control group the shard's voters.
    Record(Vec<NodeId>),
    /// Purge the presence of `node` in the shard.
    Purge(NodeId),
}

/// See the module header.
#[derive(Debug)]
pub struct ShardSteward {
    node_timeout: Duration,
    /// When each node holding presence went down (leader only).
    down: DownClock,
}

impl ShardSteward {
    pub fn new(node_timeout: Duration) -> ShardSteward {
        ShardSteward {
            node_timeout,
            down: DownClock::default(),
        }
    }

    /// One look at the shard at `now`.
    pub fn tick(&mut self, now: Instant, view: &ShardView) -> Vec<ShardAction> {
        let mut actions = Vec::new();
        if view.leader != Some(view.me) {
            self.down.clear();
            return actions;
        }
        if !view.changing {
            let voters: Vec<NodeId> = view.voters.iter().copied().collect();
            let mut recorded = view.recorded.clone();
            recorded.sort_unstable();
            if voters != recorded {
                actions.push(ShardAction::Record(voters));
            }
            self.converge(view, &mut actions);
        }
        self.purge(now, view, &mut actions);
        actions
    }

    fn converge(&self, view: &ShardView, actions: &mut Vec<ShardAction>) {
        let placed: BTreeSet<NodeId> = view.placement.iter().copied().collect();
        if placed.is_empty() {
            return;
        }
        let up = |id: NodeId| id == view.me || view.peers.iter().any(|p| p.id == id && p.up);
        for &id in placed.difference(&view.voters) {
            if view.learners.contains(&id) || !up(id) {
                continue;
            }
            if let Some(peer) = view.peers.iter().find(|p| p.id == id) {
                actions.push(ShardAction::AddLearner {
                    id,
                    addr: peer.addr.clone(),
                });
            }
        }
        let caught_up = |id: &NodeId| {
            view.voters.contains(id)
                || (view.learners.contains(id)
                    && view
                        .matched
                        .get(id)
                        .is_some_and(|m| m + CATCH_UP_MARGIN >= view.last_log_index))
        };
        if placed != view.voters && placed.iter().all(caught_up) {
            actions.push(ShardAction::ReplaceVoters(placed.clone()));
        }
        let strays: BTreeSet<NodeId> = view.learners.difference(&placed).copied().collect();
        if !strays.is_empty() {
            actions.push(ShardAction::RemoveLearners(strays));
        }
    }

    fn purge(&mut self, now: Instant, view: &ShardView, actions: &mut Vec<ShardAction>) {
        self.down.forget_up(&view.peers);
        for &node in &view.holders {
            let due = view.removed.contains(&node)
                || (node != view.me
                    && self
                        .down
                        .down_for(now, self.node_timeout, node, &view.peers));
            if due {
                actions.push(ShardAction::Purge(node));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    fn peer(id: NodeId, up: bool) -> PeerState {
        PeerState {
            id,
            addr: format!("127.0.0.1:700{id}"),
            up,
            last_seen: Some(Duration::ZERO),
            incarnation: Some(id),
            boot: Some(id),
            leaving: false,
        }
    }

    /// Node 1 leads a shard of voters {1}, placed on {1, 2, 3}, all up.
    fn view() -> ShardView {
        ShardView {
            me: 1,
            leader: Some(1),
            voters: BTreeSet::from([1]),
            learners: BTreeSet::new(),
            changing: false,
            last_log_index: 500,
            matched: BTreeMap::new(),
            placement: vec![2, 1, 3],
            recorded: vec![1],
            peers: vec![peer(2, true), peer(3, true), peer(4, true)],
            removed: BTreeSet::new(),
            holders: BTreeSet::new(),
        }
    }

    #[test]
    fn a_leader_adds_the_placed_members_then_replaces_the_voters_then_records_them() {
        let mut s = ShardSteward::new(TIMEOUT);
        let now = Instant::now();
        let mut v = view();
        assert_eq!(
            s.tick(now, &v),
            vec![
                ShardAction::AddLearner {
                    id: 2,
                    addr: "127.0.0.1:7002".into()
                },
                ShardAction::AddLearner {
                    id: 3,
                    addr: "127.0.0.1:7003".into()
                },
            ]
        );
        // Learners, one not caught up yet: nothing more.
        v.learners = BTreeSet::from([2, 3]);
        v.matched = BTreeMap::from([(2, 500), (3, 10)]);
        assert_eq!(s.tick(now, &v), vec![]);
        // Both caught up: one change to the placement.
        v.matched.insert(3, 450);
        assert_eq!(
            s.tick(now, &v),
            vec![ShardAction::ReplaceVoters(BTreeSet::from([1, 2, 3]))]
        );
        // Under way: nothing.
        v.changing = true;
        assert_eq!(s.tick(now, &v), vec![]);
        // Done: the control group is told.
        v.changing = false;
        v.voters = BTreeSet::from([1, 2, 3]);
        v.learners.clear();
        assert_eq!(s.tick(now, &v), vec![ShardAction::Record(vec![1, 2, 3])]);
        v.recorded = vec![3, 2, 1];
        assert_eq!(
            s.tick(now, &v),
            vec![],
            "recorded in another order is the same"
        );
    }

    #[test]
    fn a_seat_moves_to_a_new_member_and_a_stray_learner_goes() {
        let mut s = ShardSteward::new(TIMEOUT);
        let now = Instant::now();
        let mut v = view();
        v.voters = BTreeSet::from([1, 2, 3]);
        v.recorded = vec![1, 2, 3];
        // Node 4 joined and takes node 1's seat (the leader's own).
        v.placement = vec![4, 2, 3];
        v.learners = BTreeSet::from([4, 5]);
        v.matched = BTreeMap::from([(4, 499)]);
        assert_eq!(
            s.tick(now, &v),
            vec![
                ShardAction::ReplaceVoters(BTreeSet::from([2, 3, 4])),
                ShardAction::RemoveLearners(BTreeSet::from([5])),
            ]
        );
    }

    #[test]
    fn a_placed_member_that_is_down_is_waited_for() {
        let mut s = ShardSteward::new(TIMEOUT);
        let mut v = view();
        v.peers = vec![peer(2, true), peer(3, false)];
        assert_eq!(
            s.tick(Instant::now(), &v),
            vec![ShardAction::AddLearner {
                id: 2,
                addr: "127.0.0.1:7002".into()
            }]
        );
    }

    #[test]
    fn only_the_leader_acts_and_purges_a_node_down_for_the_timeout_or_removed() {
        let mut s = ShardSteward::new(TIMEOUT);
        let t0 = Instant::now();
        let mut v = view();
        v.voters = BTreeSet::from([1, 2, 3]);
        v.recorded = vec![1, 2, 3];
        v.placement = vec![1, 2, 3];
        v.peers = vec![peer(2, true), peer(3, false), peer(4, true)];
        v.holders = BTreeSet::from([1, 3, 4, 9]);
        v.removed = BTreeSet::from([9]);
        assert_eq!(s.tick(t0, &v), vec![ShardAction::Purge(9)]);
        assert_eq!(
            s.tick(t0 + TIMEOUT, &v),
            vec![ShardAction::Purge(3), ShardAction::Purge(9)]
        );
        let mut follower = v.clone();
        follower.leader = Some(2);
        assert_eq!(s.tick(t0 + TIMEOUT, &follower), vec![]);
        // Leading again: node 3's time down counts from when it was last heard of.
        v.peers[1].last_seen = Some(TIMEOUT);
        assert_eq!(
            s.tick(t0 + TIMEOUT, &v),
            vec![ShardAction::Purge(3), ShardAction::Purge(9)]
        );
    }
}
