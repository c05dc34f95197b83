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
mod tests {
    use super::*;
    use crate::history::BUCKETS;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// The steward's actions but history reassignments (tested on their own).
    fn chores(steward: &mut Steward, now: Instant, view: &View) -> Vec<Action> {
        steward
            .tick(now, view)
            .into_iter()
            .filter(|a| !matches!(a, Action::Assign(_)))
            .collect()
    }

    fn peer(id: NodeId, up: bool, last_seen_ms: u64) -> PeerState {
        PeerState {
            id,
            addr: format!("127.0.0.1:700{id}"),
            up,
            last_seen: Some(Duration::from_millis(last_seen_ms)),
            incarnation: Some(id * 100),
            boot: Some(id),
            leaving: false,
        }
    }

    /// History assignments already following nodes 1..3 (so the tests of other chores
    /// see no history change).
    fn settled_assignments() -> Assignments {
        let mut map = Assignments::default();
        let live: BTreeMap<NodeId, u64> = [(1, 1)].into_iter().collect();
        map.apply(&map.plan(&live, |_| true), 1);
        map
    }

    /// Node 1, leader of voters {1}, with peers 2 and 3 up and unknown to Raft.
    fn leader_view() -> View {
        View {
            me: 1,
            my_incarnation: 100,
            my_boot: 1,
            me_leaving: false,
            assignments: settled_assignments(),
            bound: BTreeMap::from([(1, 100), (2, 200), (3, 300)]),
            leader: Some(1),
            has_leader: true,
            voters: BTreeSet::from([1]),
            learners: BTreeSet::new(),
            changing: false,
            last_log_index: 1_000,
            matched: BTreeMap::new(),
            peers: vec![peer(2, true, 0), peer(3, true, 0)],
            removed: BTreeSet::new(),
            presence_holders: BTreeSet::new(),
            settled: None,
        }
    }

    #[test]
    fn the_leader_binds_every_up_node_not_yet_bound() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.voters = BTreeSet::from([1, 2, 3]);
        view.bound = BTreeMap::from([(2, 200)]);
        view.peers[1].up = false;
        assert_eq!(
            chores(&mut steward, Instant::now(), &view),
            vec![Action::Bind {
                node: 1,
                incarnation: 100
            }],
            "itself, not the down node 3"
        );
        view.bound.insert(1, 100);
        assert!(chores(&mut steward, Instant::now(), &view).is_empty());
        view.leader = Some(2);
        view.bound.clear();
        assert!(
            chores(&mut steward, Instant::now(), &view).is_empty(),
            "a follower binds nothing"
        );
    }

    #[test]
    fn new_peers_join_as_learners_unless_removed() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.removed.insert(3);
        let actions = chores(&mut steward, Instant::now(), &view);
        assert_eq!(
            actions,
            vec![Action::AddLearner {
                id: 2,
                addr: "127.0.0.1:7002".into()
            }]
        );
    }

    #[test]
    fn a_learner_is_promoted_once_caught_up_one_at_a_time() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.learners = BTreeSet::from([2, 3]);
        view.matched = BTreeMap::from([(2, 850), (3, 400)]);
        let now = Instant::now();
        assert!(
            chores(&mut steward, now, &view).is_empty(),
            "150 behind: not yet"
        );
        view.matched.insert(2, 900);
        assert_eq!(chores(&mut steward, now, &view), vec![Action::Promote(2)]);
        view.matched.insert(3, 1_000);
        assert_eq!(
            chores(&mut steward, now, &view),
            vec![Action::Promote(2)],
            "one promotion per look, lowest id first"
        );
        view.changing = true;
        assert!(
            chores(&mut steward, now, &view).is_empty(),
            "never during a membership change"
        );
    }

    #[test]
    fn voters_stop_at_the_maximum() {
        let mut steward = Steward::new(TIMEOUT, 2);
        let mut view = leader_view();
        view.voters = BTreeSet::from([1, 2]);
        view.learners = BTreeSet::from([3]);
        view.matched = BTreeMap::from([(2, 1_000), (3, 1_000)]);
        assert!(chores(&mut steward, Instant::now(), &view).is_empty());
    }

    #[test]
    fn a_down_peer_is_purged_after_the_node_timeout_counted_from_last_heard() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.voters = BTreeSet::from([1, 2, 3]);
        view.presence_holders = BTreeSet::from([1, 2, 3]);
        // Node 3 went down, last heard from 2 s ago.
        view.peers = vec![peer(2, true, 0), peer(3, false, 2_000)];
        let t0 = Instant::now() + Duration::from_secs(10);
        assert!(chores(&mut steward, t0, &view).is_empty(), "down 2 s");
        assert!(
            chores(&mut steward, t0 + Duration::from_millis(2_999), &view).is_empty(),
            "down 4.999 s"
        );
        assert_eq!(
            chores(&mut steward, t0 + Duration::from_secs(3), &view),
            vec![Action::Purge(3)]
        );
        assert_eq!(
            chores(&mut steward, t0 + Duration::from_secs(4), &view),
            vec![Action::Purge(3)],
            "again while its presence is there"
        );
        // It comes back before the purge committed: the count starts over.
        view.peers[1].up = true;
        assert!(chores(&mut steward, t0 + Duration::from_secs(5), &view).is_empty());
        view.peers[1].up = false;
        view.peers[1].last_seen = Some(Duration::ZERO);
        assert!(chores(&mut steward, t0 + Duration::from_secs(6), &view).is_empty());
    }

    #[test]
    fn a_node_never_heard_from_counts_from_the_first_look() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.peers.clear();
        view.presence_holders = BTreeSet::from([9]);
        let t0 = Instant::now();
        assert!(chores(&mut steward, t0, &view).is_empty());
        assert_eq!(
            chores(&mut steward, t0 + TIMEOUT, &view),
            vec![Action::Purge(9)]
        );
    }

    #[test]
    fn a_follower_does_not_do_the_leaders_chores() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.leader = Some(2);
        view.presence_holders = BTreeSet::from([3]);
        view.peers = vec![peer(2, true, 0), peer(3, false, 60_000)];
        assert!(chores(&mut steward, Instant::now(), &view).is_empty());
    }

    #[test]
    fn two_disagreeing_settled_looks_ask_for_a_resync() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.leader = Some(2);
        let now = Instant::now();
        view.settled = Some((10, 7));
        assert!(chores(&mut steward, now, &view).is_empty(), "one look");
        view.settled = None;
        assert!(
            chores(&mut steward, now, &view).is_empty(),
            "not settled: no look"
        );
        view.settled = Some((10, 7));
        assert_eq!(chores(&mut steward, now, &view), vec![Action::Resync]);
        assert!(
            chores(&mut steward, now, &view).is_empty(),
            "counting starts over"
        );
        view.settled = Some((10, 10));
        assert!(chores(&mut steward, now, &view).is_empty());
        view.settled = Some((10, 7));
        assert!(
            chores(&mut steward, now, &view).is_empty(),
            "an agreeing look reset the count"
        );
    }

    #[test]
    fn without_a_leader_nothing_happens() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.has_leader = false;
        view.settled = Some((1, 0));
        assert!(chores(&mut steward, Instant::now(), &view).is_empty());
        assert!(chores(&mut steward, Instant::now(), &view).is_empty());
    }

    #[test]
    fn history_buckets_follow_the_live_members() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.voters = BTreeSet::from([1, 2, 3]);
        let now = Instant::now();
        let actions = steward.tick(now, &view);
        let Some(Action::Assign(changes)) = actions.last() else {
            panic!("expected an assignment, got {actions:?}");
        };
        assert!(!changes.is_empty(), "nodes 2 and 3 joined: buckets move");
        assert!(changes.iter().all(|c| c.replica.is_some()));
        // A learner not yet in the membership, or a down peer, owns nothing.
        view.voters = BTreeSet::from([1]);
        view.peers[0].up = false;
        let actions = steward.tick(now, &view);
        assert!(!actions.iter().any(|a| matches!(a, Action::Assign(_))));
    }

    #[test]
    fn a_draining_node_hands_every_bucket_it_holds_to_the_others() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.voters = BTreeSet::from([1, 2, 3]);
        let mut map = Assignments::default();
        map.apply(&map.plan(&live_members(&view), |_| true), 5);
        view.assignments = map.clone();
        let holds = |map: &Assignments, node: NodeId| {
            map.iter()
                .filter(|(_, a)| a.owner == node || a.replica == Some(node))
                .count()
        };
        assert!(holds(&map, 2) > 0 && holds(&map, 1) > 0);
        // Node 2 announces a drain; then the leader (node 1) drains too.
        view.peers[0].leaving = true;
        let Some(Action::Assign(changes)) = steward.tick(Instant::now(), &view).pop() else {
            panic!("expected an assignment");
        };
        map.apply(&changes, 6);
        assert_eq!(holds(&map, 2), 0, "node 2 owns and replicates nothing");
        let taken_over = changes.iter().filter(|c| c.continues == Some(5)).count();
        assert_eq!(taken_over, changes.len(), "every move continues its epoch");
        view.assignments = map.clone();
        view.me_leaving = true;
        let Some(Action::Assign(changes)) = steward.tick(Instant::now(), &view).pop() else {
            panic!("expected an assignment");
        };
        map.apply(&changes, 7);
        assert_eq!(holds(&map, 1), 0);
        assert_eq!(
            holds(&map, 3),
            BUCKETS as usize,
            "node 3 alone holds every bucket"
        );
        assert!(changes.iter().all(|c| c.continues.is_some()));
    }

    #[test]
    fn a_removed_node_drains_once_and_does_nothing_else() {
        let mut steward = Steward::new(TIMEOUT, 5);
        let mut view = leader_view();
        view.removed.insert(1);
        view.settled = Some((1, 0));
        assert_eq!(
            chores(&mut steward, Instant::now(), &view),
            vec![Action::Drain]
        );
        assert!(chores(&mut steward, Instant::now(), &view).is_empty());
    }
}
