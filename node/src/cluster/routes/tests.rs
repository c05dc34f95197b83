use super::*;

fn nodes(list: &[(NodeId, u32)]) -> Nodes {
    list.to_vec()
}

#[test]
fn a_cached_route_is_used_for_its_lease_and_updated_while_it_runs() {
    let t0 = Instant::now();
    let mut cache = RouteCache::new(10);
    assert!(cache.get(t0, "g").is_none());
    assert!(cache.put(t0, "g", nodes(&[(3, 1)]), ROUTE_LEASE));
    assert_eq!(cache.get(t0, "g"), Some(&nodes(&[(3, 1)])));
    cache.update("g", nodes(&[(3, 1), (4, 2)]));
    assert_eq!(
        cache.get(t0 + ROUTE_LEASE / 2, "g"),
        Some(&nodes(&[(3, 1), (4, 2)]))
    );
    assert!(
        cache.get(t0 + ROUTE_LEASE, "g").is_none(),
        "expired: ask again"
    );
    // An update for a route not cached is not a route.
    cache.update("h", nodes(&[(5, 1)]));
    assert!(cache.get(t0, "h").is_none());
    // No lease: not kept (and an older route of the group goes).
    assert!(!cache.put(t0, "g", nodes(&[(3, 1)]), Duration::ZERO));
    assert!(cache.get(t0, "g").is_none());
}

#[test]
fn the_cache_is_bounded_and_makes_room_from_expired_routes_only() {
    let t0 = Instant::now();
    let mut cache = RouteCache::new(2);
    assert!(cache.put(t0, "a", nodes(&[(1, 1)]), Duration::from_secs(1)));
    assert!(cache.put(t0, "b", nodes(&[(1, 1)]), ROUTE_LEASE));
    assert!(
        !cache.put(t0, "c", nodes(&[(1, 1)]), ROUTE_LEASE),
        "full of live routes"
    );
    assert_eq!(cache.len(), 2);
    let later = t0 + Duration::from_secs(2);
    assert!(
        cache.put(later, "c", nodes(&[(1, 1)]), ROUTE_LEASE),
        "a expired"
    );
    assert!(cache.get(later, "a").is_none() && cache.get(later, "c").is_some());
    // A route already cached is refreshed even when full.
    assert!(cache.put(later, "b", nodes(&[(2, 1)]), ROUTE_LEASE));
}

#[test]
fn moved_buckets_are_forgotten_on_both_sides() {
    let t0 = Instant::now();
    let (a, b) = ("user_1", "user_2");
    assert_ne!(bucket_of(a), bucket_of(b));
    let mut cache = RouteCache::default();
    cache.put(t0, a, nodes(&[(3, 1)]), ROUTE_LEASE);
    cache.put(t0, b, nodes(&[(3, 1)]), ROUTE_LEASE);
    cache.forget_buckets(|bucket| bucket == bucket_of(a));
    assert!(cache.get(t0, a).is_none() && cache.get(t0, b).is_some());
    let mut leases = Leases::default();
    leases.grant(t0, a, 2);
    leases.grant(t0, b, 2);
    leases.forget_buckets(|bucket| bucket == bucket_of(b));
    assert_eq!(leases.cachers(t0, a), vec![2]);
    assert!(leases.cachers(t0, b).is_empty());
    assert_eq!(leases.len(), 1);
}

#[test]
fn a_holder_pushes_to_cachers_for_longer_than_they_use_the_route() {
    let t0 = Instant::now();
    let mut leases = Leases::new(3);
    assert_eq!(leases.grant(t0, "g", 2), ROUTE_LEASE);
    assert_eq!(leases.grant(t0, "g", 5), ROUTE_LEASE);
    assert_eq!(leases.cachers(t0, "g"), vec![2, 5]);
    // Past the cacher's lease but within the margin, updates still go.
    let late = t0 + ROUTE_LEASE + LEASE_MARGIN / 2;
    assert_eq!(leases.cachers(late, "g"), vec![2, 5]);
    assert!(
        leases
            .cachers(t0 + ROUTE_LEASE + LEASE_MARGIN, "g")
            .is_empty()
    );
    // Asking again renews rather than adding.
    leases.grant(late, "g", 2);
    assert_eq!(leases.len(), 2);
    assert_eq!(
        leases.cachers(t0 + ROUTE_LEASE + LEASE_MARGIN, "g"),
        vec![2]
    );
}

#[test]
fn leases_are_bounded_and_past_the_bound_the_answer_is_not_to_be_cached() {
    let t0 = Instant::now();
    let mut leases = Leases::new(2);
    leases.grant(t0, "a", 1);
    leases.grant(t0, "b", 1);
    assert_eq!(leases.grant(t0, "c", 1), Duration::ZERO);
    assert!(leases.cachers(t0, "c").is_empty());
    let later = t0 + ROUTE_LEASE + LEASE_MARGIN;
    assert_eq!(
        leases.grant(later, "c", 1),
        ROUTE_LEASE,
        "room from expired leases"
    );
    assert_eq!(leases.len(), 1);
}

#[test]
fn interest_goes_to_the_two_holders_of_each_group_and_to_everyone_when_unassigned() {
    let live4 = live(&[1, 2, 3, 4]);
    let mut map = Assignments::default();
    let unassigned = Holders::new(1, &map);
    assert!(unassigned.mine("user_1") && unassigned.to_ask("user_1").is_none());
    let split = unassigned.split(&[2, 3], &[("user_1".to_string(), 1u32)]);
    assert_eq!(split[&2].len(), 1);
    assert_eq!(split[&3].len(), 1);
    map.apply(&map.plan(&live4, |_| true), 7);
    let holders = Holders::new(1, &map);
    assert_eq!(holders.generation(), 7);
    let groups: Vec<(String, u32)> = (0..400).map(|i| (format!("user_{i}"), 1)).collect();
    let split = holders.split(&[2, 3, 4], &groups);
    let told: usize = split.values().map(Vec::len).sum();
    let mine = groups.iter().filter(|(g, _)| holders.mine(g)).count();
    // Each group goes to its two holders; those this node holds go to one peer.
    assert_eq!(told, 2 * groups.len() - mine);
    for (peer, part) in &split {
        assert!(part.iter().all(|(g, _)| holders.holds(*peer, g)));
    }
    let (g, _) = groups.iter().find(|(g, _)| !holders.mine(g)).expect("one");
    let (owner, replica) = holders.of(g).expect("assigned");
    assert_eq!(
        holders.to_ask(g),
        Some(vec![owner, replica.expect("a replica")])
    );
    // Node 4 leaves: the buckets it held move, the others stay.
    let live3 = live(&[1, 2, 3]);
    map.apply(&map.plan(&live3, |_| true), 8);
    let after = Holders::new(1, &map);
    let moved = holders.moved(&after);
    for b in 0..BUCKETS {
        let held_by_4 = holders.table[usize::from(b)].is_some_and(|(o, r)| o == 4 || r == Some(4));
        assert_eq!(moved[usize::from(b)], held_by_4, "bucket {b}");
    }
}

/// Live members, each with a data dir's identity.
fn live(ids: &[NodeId]) -> std::collections::BTreeMap<NodeId, u64> {
    ids.iter().map(|n| (*n, 100 + n)).collect()
}

/// Node 1's routes after it followed the assignments (generation 7) of a cluster of
/// four at `t0`, sessions with 2, 3 and 4 up but no full sync from them yet; and the
/// assignments.
fn connected(t0: Instant) -> (Routes, Assignments) {
    let mut map = Assignments::default();
    map.apply(&map.plan(&live(&[1, 2, 3, 4]), |_| true), 7);
    let mut routes = Routes::new(1);
    routes.follow(t0, &map).expect("new assignments");
    for peer in [2, 3, 4] {
        routes.connected(peer);
    }
    (routes, map)
}

#[test]
fn a_gained_bucket_is_complete_once_every_connected_peer_followed_the_move() {
    let t0 = Instant::now();
    let (mut routes, mut map) = connected(t0);
    let four = live(&[1, 2, 3, 4]);
    let three = live(&[1, 2, 3]);
    assert!(
        !routes.complete("user_1"),
        "no full sync yet on these sessions"
    );
    for peer in [2, 3, 4] {
        routes.followed(peer, 7);
    }
    // A group node 1 holds since generation 7, and one it gains when node 4 leaves.
    let held = (0..2000)
        .map(|i| format!("user_{i}"))
        .find(|g| routes.holders.mine(g))
        .expect("one held");
    assert!(routes.complete(&held));
    map.apply(&map.plan(&three, |_| true), 8);
    routes.forget_peer(4);
    let before = routes.holders.clone();
    routes.follow(t0, &map).expect("node 4 left");
    let gained = (0..2000)
        .map(|i| format!("user_{i}"))
        .find(|g| routes.holders.mine(g) && !before.mine(g))
        .expect("a group whose bucket moved to node 1");
    assert!(routes.complete(&held), "kept buckets stay complete");
    assert!(!routes.complete(&gained), "nobody followed 8 yet");
    routes.followed(2, 8);
    assert!(!routes.complete(&gained), "node 3 lags behind the log");
    routes.followed(3, 6);
    assert!(
        !routes.complete(&gained),
        "an older full sync counts for nothing"
    );
    routes.followed(3, 8);
    assert!(routes.complete(&gained));
    // A peer that reconnects is waited for until its first full sync; one that is
    // gone is not.
    routes.connected(3);
    assert!(!routes.complete(&gained));
    routes.forget_peer(3);
    assert!(
        routes.complete(&gained),
        "a peer not connected is not waited for"
    );
    routes.followed(5, 1);
    assert!(
        routes.complete(&gained),
        "a full sync from no session counts for nothing"
    );
    // Node 2 follows generation 9 before this node: every group is incomplete here,
    // and route pushes wait until this node follows 9 too.
    routes.connected(3);
    routes.followed(3, 8);
    routes.followed(2, 9);
    assert!(routes.ahead());
    assert!(
        !routes.complete(&held),
        "a peer ahead leaves out what this node loses"
    );
    routes.defer(vec![held.clone()]);
    assert!(
        routes.take_deferred().is_empty(),
        "not while a peer is ahead"
    );
    map.apply(&map.plan(&four, |_| true), 9);
    routes.follow(t0, &map).expect("generation 9");
    assert!(!routes.ahead());
    assert_eq!(routes.take_deferred(), vec![held.clone()]);
    assert!(routes.take_deferred().is_empty());
    // A peer ahead that goes away holds nothing back either.
    routes.followed(2, 10);
    routes.defer(vec![held.clone()]);
    assert!(routes.take_deferred().is_empty(), "node 2 is ahead");
    routes.forget_peer(2);
    assert_eq!(routes.take_deferred(), vec![held.clone()]);
}

/// Node 1's routes in a cluster of four whose assignments it followed at `t0`, every
/// peer's full sync in.
fn formed(t0: Instant) -> Routes {
    let (mut routes, _) = connected(t0);
    for peer in [2, 3, 4] {
        routes.followed(peer, 7);
    }
    routes
}

fn a_group(routes: &Routes, held: bool) -> String {
    (0..2000)
        .map(|i| format!("user_{i}"))
        .find(|g| routes.holders.mine(g) == held)
        .expect("a group")
}

#[test]
fn a_publish_goes_to_the_held_route_the_cached_one_or_asks_and_to_everyone_while_a_bucket_settles()
{
    let t0 = Instant::now();
    let mut routes = formed(t0);
    let settled = t0 + MOVE_SETTLE;
    let held = a_group(&routes, true);
    let other = a_group(&routes, false);
    let route = || nodes(&[(2, 1), (4, 3)]);
    // A group this node holds: its own route, to everyone while its bucket just moved.
    assert_eq!(
        routes.targets(t0, &held, route),
        (Targets::Everyone(route()), false)
    );
    assert_eq!(
        routes.targets(settled, &held, route),
        (Targets::Known(route()), false)
    );
    // Held, but a peer's full sync has not come since the move: everyone, said incomplete.
    routes.connected(3);
    assert_eq!(
        routes.targets(settled, &held, route),
        (Targets::Everyone(route()), true)
    );
    routes.followed(3, 7);
    // A group held elsewhere: ask its holders in order, then use the cached answer
    // (without this node), to everyone while the bucket settles.
    let (owner, replica) = routes.holders.of(&other).expect("assigned");
    let asked = routes.targets(settled, &other, || panic!("not held here"));
    assert_eq!(
        asked,
        (
            Targets::Ask(vec![owner, replica.expect("a replica")]),
            false
        )
    );
    routes
        .cache
        .put(settled, &other, nodes(&[(1, 2), (3, 1)]), ROUTE_LEASE);
    let known = routes.targets(settled, &other, || panic!("not held here"));
    assert_eq!(known, (Targets::Known(nodes(&[(3, 1)])), false));
    routes.cache.put(t0, &other, nodes(&[(3, 1)]), ROUTE_LEASE);
    assert_eq!(
        routes.targets(t0, &other, || panic!("not held here")).0,
        Targets::Everyone(nodes(&[(3, 1)]))
    );
    // The lease runs out: ask again.
    let later = settled + ROUTE_LEASE;
    assert!(matches!(
        routes.targets(later, &other, || panic!("not held")).0,
        Targets::Ask(_)
    ));
}

#[test]
fn a_holder_leases_a_settled_route_and_names_the_other_holder_and_leases_nothing_unsettled() {
    let t0 = Instant::now();
    let mut routes = formed(t0);
    let held = a_group(&routes, true);
    let other = a_group(&routes, false);
    assert_eq!(
        routes.grant(t0, &other, 2),
        None,
        "not a holder: the asker asks the next"
    );
    let (owner, replica) = routes.holders.of(&held).expect("assigned");
    let partner = if owner == 1 { replica } else { Some(owner) };
    assert!(partner.is_some_and(|p| p != 1));
    let grant = routes.grant(t0, &held, 2).expect("a holder answers");
    assert_eq!(
        grant,
        Grant {
            settled: true,
            lease: ROUTE_LEASE,
            tell: partner,
        }
    );
    assert_eq!(routes.leases.cachers(t0, &held), vec![2]);
    // A peer's interest since the move has not come: an answer, no lease, nobody told.
    routes.connected(4);
    let unsettled = routes.grant(t0, &held, 3).expect("a holder answers");
    assert_eq!(
        unsettled,
        Grant {
            settled: false,
            lease: Duration::ZERO,
            tell: None,
        }
    );
    assert_eq!(
        routes.leases.cachers(t0, &held),
        vec![2],
        "no lease for node 3"
    );
}

#[test]
fn changed_routes_go_to_their_cachers_and_wait_while_a_peer_is_ahead() {
    let t0 = Instant::now();
    let mut routes = formed(t0);
    let held = a_group(&routes, true);
    let unleased = (0..2000)
        .map(|i| format!("user_{i}"))
        .find(|g| routes.holders.mine(g) && *g != held)
        .expect("another held group");
    routes.grant(t0, &held, 2).expect("leased to node 2");
    routes.grant(t0, &held, 3).expect("leased to node 3");
    let changed = || vec![held.clone(), unleased.clone()];
    assert_eq!(
        routes.pushes(t0, changed()),
        vec![(held.clone(), vec![2, 3])]
    );
    // Node 4 follows newer assignments: nothing is pushed, the leased group waits.
    routes.followed(4, 8);
    assert!(routes.pushes(t0, changed()).is_empty());
    assert!(routes.take_deferred().is_empty(), "still ahead");
    routes.forget_peer(4);
    assert_eq!(routes.take_deferred(), vec![held.clone()]);
    // Leases run out: nobody to tell.
    assert!(
        routes
            .pushes(t0 + ROUTE_LEASE + LEASE_MARGIN, changed())
            .is_empty()
    );
}
