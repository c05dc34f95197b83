use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use switchboard_proto::peer::PresenceOp;

use super::*;
use crate::presence::tests::record;
use crate::presence::{Command, Replica};

fn batch(replica: &mut Replica, index: u64, ops: Vec<PresenceOp>) -> Vec<Event> {
    let mut events = Vec::new();
    let command = Command::PresenceAt { ops, at_ms: 1000 };
    replica.apply_noting(command, index, &mut events);
    events
}

fn kinds(events: &[Event]) -> Vec<(String, Kind, String)> {
    events
        .iter()
        .map(|e| (e.id.to_string(), e.kind, e.connection.to_string()))
        .collect()
}

fn id(index: u64, ordinal: u32) -> String {
    EventId { index, ordinal }.to_string()
}

/// The end of `connection`, as nodes write it since peer protocol 8 (its user named).
fn leave(node: NodeId, connection: &str, user: &str) -> PresenceOp {
    PresenceOp::Leave {
        node,
        connection: connection.into(),
        user: user.into(),
    }
}

/// The end of `connection`, as nodes wrote it before peer protocol 8.
fn disconnect(node: NodeId, connection: &str) -> PresenceOp {
    PresenceOp::Disconnect {
        node,
        connection: connection.into(),
    }
}

#[test]
fn a_user_comes_online_and_goes_offline() {
    let mut r = Replica::default();
    let e = batch(&mut r, 3, vec![PresenceOp::Connect(record(2, "2-1", "u"))]);
    assert_eq!(
        kinds(&e),
        [
            (id(3, 0), Kind::Join, "2-1".to_string()),
            (id(3, 1), Kind::Online, "2-1".to_string())
        ]
    );
    assert_eq!(e[0].at, 1000);
    let e = batch(&mut r, 4, vec![PresenceOp::Connect(record(3, "3-1", "u"))]);
    assert_eq!(kinds(&e), [(id(4, 0), Kind::Join, "3-1".to_string())]);
    let e = batch(&mut r, 5, vec![disconnect(2, "2-1")]);
    assert_eq!(kinds(&e), [(id(5, 0), Kind::Leave, "2-1".to_string())]);
    let e = batch(&mut r, 6, vec![disconnect(3, "3-1")]);
    assert_eq!(
        kinds(&e),
        [
            (id(6, 0), Kind::Leave, "3-1".to_string()),
            (id(6, 1), Kind::Offline, "3-1".to_string())
        ]
    );
    assert_eq!(e[1].reason, None);
}

#[test]
fn a_batch_committed_twice_gives_its_events_once() {
    let mut r = Replica::default();
    let ops = vec![
        PresenceOp::Connect(record(1, "1-1", "u")),
        PresenceOp::Connect(record(1, "1-2", "v")),
        disconnect(1, "1-1"),
    ];
    let first = batch(&mut r, 7, ops.clone());
    // "u" came and went inside the batch: nothing; "v" joined.
    assert_eq!(
        kinds(&first),
        [
            (id(7, 0), Kind::Join, "1-2".to_string()),
            (id(7, 1), Kind::Online, "1-2".to_string())
        ]
    );
    assert!(
        batch(&mut r, 8, ops).is_empty(),
        "a retried batch changes nothing"
    );
}

#[test]
fn a_resync_over_unchanged_connections_gives_nothing_and_a_lost_one_leaves() {
    let mut r = Replica::default();
    batch(
        &mut r,
        1,
        vec![
            PresenceOp::Connect(record(2, "2-1", "u")),
            PresenceOp::Connect(record(2, "2-2", "v")),
        ],
    );
    let same = PresenceOp::ResyncNode {
        node: 2,
        connections: vec![record(2, "2-1", "u"), record(2, "2-2", "v")],
    };
    assert!(batch(&mut r, 2, vec![same]).is_empty());
    let fewer = PresenceOp::ResyncNode {
        node: 2,
        connections: vec![record(2, "2-2", "v")],
    };
    let e = batch(&mut r, 3, vec![fewer]);
    assert_eq!(
        kinds(&e),
        [
            (id(3, 0), Kind::Leave, "2-1".to_string()),
            (id(3, 1), Kind::Offline, "2-1".to_string())
        ]
    );
    assert!(e.iter().all(|e| e.reason == Some(Reason::NodeDown)));
}

#[test]
fn a_purge_leaves_every_connection_of_the_node_with_node_down() {
    let mut r = Replica::default();
    batch(
        &mut r,
        1,
        vec![
            PresenceOp::Connect(record(1, "1-1", "u")),
            PresenceOp::Connect(record(2, "2-1", "u")),
            PresenceOp::Connect(record(2, "2-2", "v")),
        ],
    );
    let e = batch(&mut r, 2, vec![PresenceOp::PurgeNode { node: 2 }]);
    assert_eq!(
        kinds(&e),
        [
            (id(2, 0), Kind::Leave, "2-1".to_string()),
            (id(2, 1), Kind::Leave, "2-2".to_string()),
            (id(2, 2), Kind::Offline, "2-2".to_string()),
        ]
    );
    assert!(e.iter().all(|e| e.reason == Some(Reason::NodeDown)));
    let mut events = Vec::new();
    r.apply_noting(Command::Remove(1), 3, &mut events);
    assert_eq!(
        kinds(&events),
        [
            (id(3, 0), Kind::Leave, "1-1".to_string()),
            (id(3, 1), Kind::Offline, "1-1".to_string())
        ]
    );
    assert_eq!(events[0].reason, Some(Reason::Removed));
    assert_eq!(
        events[0].at, 1000,
        "an unstamped entry keeps the last stamp"
    );
}

#[test]
fn events_serialize_as_the_contract_says() {
    let mut r = Replica::default();
    batch(&mut r, 1, vec![PresenceOp::Connect(record(2, "2-1", "42"))]);
    let e = batch(&mut r, 9, vec![PresenceOp::PurgeNode { node: 2 }]);
    assert_eq!(
        serde_json::to_string(&e[0]).expect("serializable"),
        r#"{"id":"9-0","type":"leave","user":"42","node":2,"connection":"2-1","at":1000,"reason":"node_down"}"#
    );
    assert_eq!("9-0".parse::<EventId>(), Ok(e[0].id));
    for bad in [
        "",
        "9",
        "9-",
        "-1",
        "a-1",
        "1-b",
        "1-2-3",
        "18446744073709551616-0",
    ] {
        assert!(bad.parse::<EventId>().is_err(), "{bad}");
    }
}

fn event(index: u64, ordinal: u32, user: &str) -> Event {
    Event {
        id: EventId { index, ordinal },
        kind: Kind::Join,
        user: user.into(),
        node: 1,
        connection: ConnectionId::new(1, &format!("1-{index}")),
        at: 0,
        reason: None,
    }
}

#[test]
fn the_ring_keeps_the_newest_and_tells_a_reader_behind_it() {
    let mut ring = Ring::new(3, usize::MAX, EventId::default());
    ring.push((1..=5).map(|i| event(i, 0, if i % 2 == 0 { "a" } else { "b" })));
    assert_eq!(ring.len(), 3);
    assert_eq!(
        ring.floor(),
        EventId {
            index: 2,
            ordinal: 0
        }
    );
    assert_eq!(
        ring.after(
            EventId {
                index: 1,
                ordinal: 0
            },
            10,
            |_| true
        ),
        Read::Behind
    );
    let Read::Events(found, seen) = ring.after(ring.floor(), 10, |_| true) else {
        panic!("not behind");
    };
    assert_eq!(found.len(), 3);
    assert_eq!(
        seen,
        EventId {
            index: 5,
            ordinal: 0
        }
    );
    // Filtered, and bounded: the reader has seen up to the last one returned.
    let Read::Events(found, seen) = ring.after(ring.floor(), 1, |e| &*e.user == "b") else {
        panic!("not behind");
    };
    assert_eq!(found, vec![event(3, 0, "b")]);
    assert_eq!(
        seen,
        EventId {
            index: 3,
            ordinal: 0
        }
    );
    // A cursor from the future waits for events after it.
    let future = EventId {
        index: 9,
        ordinal: 0,
    };
    assert_eq!(
        ring.after(future, 10, |_| true),
        Read::Events(vec![], future)
    );
    // A snapshot: everything up to entry 20 is in the state, nothing is kept.
    ring.restart_at(EventId::after_entry(20));
    assert_eq!(
        ring.after(
            EventId {
                index: 20,
                ordinal: 1
            },
            10,
            |_| true
        ),
        Read::Behind
    );
    assert!(
        matches!(ring.after(EventId::after_entry(20), 10, |_| true), Read::Events(v, _) if v.is_empty())
    );
}

#[test]
fn the_ring_is_bounded_in_bytes() {
    let one = {
        let mut ring = Ring::new(1, usize::MAX, EventId::default());
        ring.push([event(1, 0, "u")]);
        ring.bytes()
    };
    let mut ring = Ring::new(1000, one * 2, EventId::default());
    ring.push((1..=9).map(|i| event(i, 0, "u")));
    assert_eq!(ring.len(), 2);
    assert!(ring.bytes() <= one * 2);
    let mut none = Ring::new(0, usize::MAX, EventId::default());
    none.push([event(1, 0, "u")]);
    assert!(none.is_empty());
    assert_eq!(none.after(EventId::default(), 10, |_| true), Read::Behind);
}

/// The user of connection `c` of node `n`: a connection names one user for its life,
/// and users hold several connections.
fn user_of(n: u64, c: u8) -> &'static str {
    ["a", "b", "c"][(usize::from(c) + n as usize) % 3]
}

/// Connection ids as nodes mint them, and others (kept as text).
fn conn(n: u64, c: u8) -> String {
    if c.is_multiple_of(2) {
        format!("{n}-a-{c}")
    } else {
        format!("{n}-{c}")
    }
}

fn op() -> impl Strategy<Value = PresenceOp> {
    let node = 1..4u64;
    let c = 0..5u8;
    prop_oneof![
        4 => (node.clone(), c.clone())
            .prop_map(|(n, c)| PresenceOp::Connect(record(n, &conn(n, c), user_of(n, c)))),
        3 => (node.clone(), c.clone())
            .prop_map(|(n, c)| leave(n, &conn(n, c), user_of(n, c))),
        1 => (node.clone(), c.clone())
            .prop_map(|(n, c)| disconnect(n, &conn(n, c))),
        1 => node.clone().prop_map(|node| PresenceOp::PurgeNode { node }),
        1 => (node, prop::collection::vec(c, 0..3)).prop_map(|(n, cs)| {
            PresenceOp::ResyncNode {
                node: n,
                connections: cs
                    .into_iter()
                    .map(|c| record(n, &conn(n, c), user_of(n, c)))
                    .collect(),
            }
        }),
    ]
}

proptest! {
    /// Replaying the events from empty rebuilds the registry: every connection and
    /// who is online; ids strictly increase; no event repeats a state.
    #[test]
    fn replaying_the_events_reproduces_the_registry(
        batches in prop::collection::vec(prop::collection::vec(op(), 0..6), 1..30),
    ) {
        let mut r = Replica::default();
        let mut conns: BTreeMap<(NodeId, String), String> = BTreeMap::new();
        let mut online: BTreeSet<String> = BTreeSet::new();
        let mut last = EventId::default();
        for (i, ops) in batches.into_iter().enumerate() {
            for e in batch(&mut r, i as u64 + 1, ops) {
                prop_assert!(e.id > last);
                last = e.id;
                let key = (e.node, e.connection.to_string());
                let user = e.user.to_string();
                match e.kind {
                    Kind::Join => prop_assert!(conns.insert(key, user).is_none()),
                    Kind::Leave => prop_assert_eq!(conns.remove(&key), Some(user)),
                    Kind::Online => prop_assert!(online.insert(user)),
                    Kind::Offline => prop_assert!(online.remove(&user)),
                }
            }
            let expected: BTreeMap<_, _> = r
                .presence
                .records()
                .map(|c| ((c.node, c.connection.clone()), c.user.clone()))
                .collect();
            prop_assert_eq!(&conns, &expected);
            let users: BTreeSet<String> = expected.values().cloned().collect();
            prop_assert_eq!(&online, &users);
        }
    }
}

#[test]
fn a_join_and_its_online_take_one_slot_and_read_back_as_two() {
    let mut r = Replica::default();
    let connect = |c: &str, u: &str| PresenceOp::Connect(record(2, c, u));
    let e = batch(
        &mut r,
        3,
        vec![connect("2-a-1", "u"), connect("2-a-2", "v")],
    );
    assert_eq!(
        kinds(&e),
        [
            (id(3, 0), Kind::Join, "2-a-1".to_string()),
            (id(3, 1), Kind::Online, "2-a-1".to_string()),
            (id(3, 2), Kind::Join, "2-a-2".to_string()),
            (id(3, 3), Kind::Online, "2-a-2".to_string())
        ]
    );
    let mut ring = Ring::new(100, usize::MAX, EventId::default());
    ring.push([e[0].clone()]);
    let slot = ring.bytes();
    ring.push(e[1..].iter().cloned());
    assert_eq!(ring.len(), 4, "counted as events");
    assert_eq!(ring.bytes(), 2 * slot, "two slots, not four");
    let read = |ring: &Ring, after: EventId, max, keep: fn(&Event) -> bool| match ring
        .after(after, max, keep)
    {
        Read::Events(found, seen) => (found, seen),
        Read::Behind => panic!("behind"),
    };
    assert_eq!(
        read(&ring, EventId::default(), 10, |_| true),
        (e.clone(), e[3].id)
    );
    // A reader between a join and its online gets the online next.
    assert_eq!(
        read(&ring, e[0].id, 1, |_| true),
        (vec![e[1].clone()], e[1].id)
    );
    assert_eq!(
        read(&ring, e[0].id, 10, |e| e.kind == Kind::Online),
        (vec![e[1].clone(), e[3].clone()], e[3].id)
    );
    // The bound counts events: three keep the newest pair only, whole.
    let mut small = Ring::new(3, usize::MAX, EventId::default());
    small.push(e.iter().cloned());
    assert_eq!((small.len(), small.floor()), (2, e[1].id));
    assert_eq!(read(&small, e[1].id, 10, |_| true).0, e[2..].to_vec());
    assert_eq!(small.after(e[0].id, 10, |_| true), Read::Behind);
}

#[test]
fn one_users_events_read_by_its_links_are_those_a_scan_of_the_ring_finds() {
    // Joins paired with onlines, single events, five users, a ring that evicts: every
    // cursor and bound gives the same answer as filtering the whole ring.
    let users = ["a", "b", "c", "d", "e"];
    let mut state = 7u64;
    let mut next = move |n: u64| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) % n
    };
    let mut ring = Ring::new(40, usize::MAX, EventId::default());
    let mut pushed = Vec::new();
    for index in 1..=120u64 {
        let user = users[next(5) as usize];
        let mut join = event(index, 0, user);
        let paired = next(2) == 0;
        if paired {
            join.kind = Kind::Join;
            let mut online = event(index, 1, user);
            online.kind = Kind::Online;
            ring.push([join.clone(), online.clone()]);
            pushed.extend([join, online]);
        } else {
            ring.push([join.clone()]);
            pushed.push(join);
        }
        if index % 10 != 0 {
            continue;
        }
        for user in users.iter().chain(["nobody"].iter()) {
            for cursor in pushed.iter().map(|e| e.id).chain([EventId::default()]) {
                for max in [1, 3, 100] {
                    let scan = ring.after(cursor, max, |e| &*e.user == *user);
                    assert_eq!(
                        ring.after_user(user, cursor, max),
                        scan,
                        "user {user} after {cursor} max {max}"
                    );
                }
            }
        }
    }
    assert!(ring.len() <= 40);
    // A snapshot forgets the links with the events.
    ring.restart_at(EventId::after_entry(200));
    assert_eq!(
        ring.after_user("a", EventId::after_entry(200), 10),
        Read::Events(Vec::new(), EventId::after_entry(200))
    );
}
