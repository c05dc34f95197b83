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
