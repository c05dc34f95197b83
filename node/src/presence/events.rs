//! Presence events: what each committed Raft entry changed in the registry, as `join`,
//! `leave`, `online` and `offline` events with ids that are the same on every node.
//!
//! - [`derive`] turns the records an entry added and removed ([`Change`]s, noted by the
//!   registry as it applies the entry) into events. It compares each connection's state
//!   before and after the whole entry, so a retried batch that commits twice, a resync over
//!   unchanged connections, or a connect and disconnect inside one batch produce nothing.
//! - [`EventId`] is `<log index>-<ordinal within the entry>`: strictly increasing along the
//!   log, never reused. Ids carry no node, so the registry could later be split into
//!   shards, each with its own log, by prefixing the shard.
//! - [`Ring`] keeps the newest events in a bounded ring (`--presence-events`); a reader
//!   whose cursor fell behind it (or behind a snapshot this node installed) is told so and
//!   starts over from a `reset`: the current state, then the events after it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::{Serialize, Serializer};
use switchboard_proto::peer::{ConnectionRecord, NodeId};

use super::Registry;

/// Where an event stands in the Raft log. Ordered by (index, ordinal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId {
    /// The log index of the entry that produced the event.
    pub index: u64,
    /// The event's place among the entry's events, from 0.
    pub ordinal: u32,
}

impl EventId {
    /// The position after every event of entries up to `index`: a cursor at a snapshot.
    pub fn after_entry(index: u64) -> EventId {
        EventId {
            index,
            ordinal: u32::MAX,
        }
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.index, self.ordinal)
    }
}

impl FromStr for EventId {
    type Err = String;

    fn from_str(s: &str) -> Result<EventId, String> {
        let bad = || format!("'{s}' is not an event id (<log index>-<n>, e.g. 42-0)");
        let (index, ordinal) = s.trim().split_once('-').ok_or_else(bad)?;
        Ok(EventId {
            index: index.parse().map_err(|_| bad())?,
            ordinal: ordinal.parse().map_err(|_| bad())?,
        })
    }
}

impl Serialize for EventId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// A connection appeared.
    Join,
    /// A connection went.
    Leave,
    /// A user's first connection appeared.
    Online,
    /// A user's last connection went.
    Offline,
}

/// Why a connection went, when it was not its own disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// Its node died, restarted, or drained: the cluster purged its connections.
    NodeDown,
    /// Its node was removed from the cluster for good.
    Removed,
}

/// One presence event, as every way out shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Event {
    pub id: EventId,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub user: String,
    /// The connection's node (for `online`/`offline`: the connection that made the user
    /// come online or go offline).
    pub node: NodeId,
    pub connection: String,
    /// Unix milliseconds, from the committed entry (the same on every node).
    pub at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

impl Event {
    /// Bytes this event holds, for the ring's account.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Event>() + self.user.len() + self.connection.len()
    }
}

/// A record an entry added or removed, in the order the registry applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(ConnectionRecord),
    Removed(ConnectionRecord, Option<Reason>),
}

/// The events of the entry at log `index` (stamped `at`), from the changes it made;
/// `registry` is the state after the entry. Users come in the order the entry first
/// touched them; for each: its leaves, its joins, then `online` or `offline`.
pub fn derive(index: u64, at: u64, changes: Vec<Change>, registry: &Registry) -> Vec<Event> {
    if changes.is_empty() {
        return Vec::new();
    }
    // Each connection's state before the entry's first change and after its last.
    type Net = (
        Option<ConnectionRecord>,
        Option<ConnectionRecord>,
        Option<Reason>,
    );
    let mut order: Vec<(NodeId, String)> = Vec::new();
    let mut net: HashMap<(NodeId, String), Net> = HashMap::new();
    for change in changes {
        let (record, added, reason) = match change {
            Change::Added(r) => (r, true, None),
            Change::Removed(r, reason) => (r, false, reason),
        };
        let key = (record.node, record.connection.clone());
        let entry = net.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            let before = (!added).then(|| record.clone());
            (before, None, None)
        });
        if added {
            entry.1 = Some(record);
        } else {
            entry.1 = None;
            entry.2 = reason;
        }
    }
    // Every leave comes before every join (a connection that changed user leaves the
    // old one first), each in the order the entry first touched the connection.
    let mut leaves: Vec<(ConnectionRecord, Option<Reason>)> = Vec::new();
    let mut joins: Vec<ConnectionRecord> = Vec::new();
    for key in order {
        let Some((before, after, reason)) = net.remove(&key) else {
            continue;
        };
        let same_user = matches!((&before, &after), (Some(b), Some(a)) if b.user == a.user);
        if same_user {
            continue; // re-registered (a resync, a retried batch): nothing changed
        }
        leaves.extend(before.map(|b| (b, reason)));
        joins.extend(after);
    }
    // Per user: (leaves, joins) still to come, and whether it was online before.
    let mut users: HashMap<&str, (usize, usize, bool)> = HashMap::new();
    for (record, _) in &leaves {
        users.entry(&record.user).or_default().0 += 1;
    }
    for record in &joins {
        users.entry(&record.user).or_default().1 += 1;
    }
    for (user, (left, joined, was_online)) in users.iter_mut() {
        let after = registry.user_connections(user);
        *was_online = (after + *left).saturating_sub(*joined) > 0;
    }
    let mut events = Vec::with_capacity(leaves.len() + joins.len());
    let mut push = |kind, record: &ConnectionRecord, reason| {
        events.push(Event {
            id: EventId {
                index,
                ordinal: events.len() as u32,
            },
            kind,
            user: record.user.clone(),
            node: record.node,
            connection: record.connection.clone(),
            at,
            reason,
        })
    };
    for (record, reason) in &leaves {
        push(Kind::Leave, record, *reason);
        if let Some((left, _, _)) = users.get_mut(record.user.as_str()) {
            *left -= 1;
            if *left == 0 && registry.user_connections(&record.user) == 0 {
                push(Kind::Offline, record, *reason);
            }
        }
    }
    for record in &joins {
        push(Kind::Join, record, None);
        if let Some((_, joined, was_online)) = users.get_mut(record.user.as_str()) {
            if !*was_online {
                *was_online = true;
                push(Kind::Online, record, None);
            }
            *joined -= 1;
        }
    }
    events
}

/// What a reader finds after its cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The events after the cursor that passed the filter (at most the number asked),
    /// and the position the reader has now seen up to.
    Events(Vec<Event>, EventId),
    /// The cursor is older than what this node keeps: start over from a reset.
    Behind,
}

/// The newest events, bounded in count and bytes. See the module header.
#[derive(Debug)]
pub struct Ring {
    events: VecDeque<Event>,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Every event after this position is in the ring (or yet to come).
    floor: EventId,
}

impl Ring {
    /// An empty ring of at most `capacity` events and `max_bytes`, holding everything after
    /// `floor`.
    pub fn new(capacity: usize, max_bytes: usize, floor: EventId) -> Ring {
        Ring {
            events: VecDeque::new(),
            capacity,
            max_bytes,
            bytes: 0,
            floor,
        }
    }

    /// Appends events, evicting the oldest beyond the bounds.
    pub fn push(&mut self, events: impl IntoIterator<Item = Event>) {
        for event in events {
            debug_assert!(event.id > self.newest(), "events arrive in log order");
            self.bytes += event.size();
            self.events.push_back(event);
            while self.events.len() > self.capacity || self.bytes > self.max_bytes {
                let Some(old) = self.events.pop_front() else {
                    break;
                };
                self.bytes -= old.size();
                self.floor = old.id;
            }
        }
    }

    /// Forgets every event: the state jumped to `floor` (a snapshot was installed).
    pub fn restart_at(&mut self, floor: EventId) {
        self.events.clear();
        self.bytes = 0;
        self.floor = floor;
    }

    /// The position of the newest event (or where the ring starts, if empty).
    pub fn newest(&self) -> EventId {
        self.events.back().map_or(self.floor, |e| e.id)
    }

    /// The position every kept event comes after.
    pub fn floor(&self) -> EventId {
        self.floor
    }

    /// Events kept.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Bytes the kept events hold.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Up to `max` events after `cursor` that pass `keep`.
    pub fn after(&self, cursor: EventId, max: usize, keep: impl Fn(&Event) -> bool) -> Read {
        if cursor < self.floor {
            return Read::Behind;
        }
        let start = self.events.partition_point(|e| e.id <= cursor);
        let mut found = Vec::new();
        let mut seen = self.newest().max(cursor);
        for event in self.events.range(start..) {
            if found.len() == max {
                break;
            }
            if keep(event) {
                found.push(event.clone());
                if found.len() == max {
                    seen = event.id;
                }
            }
        }
        Read::Events(found, seen)
    }
}

/// A `reset` event: the state at `id` (every connection, or one user's), after which the
/// reader continues with the events after `id`.
pub fn reset_json(id: EventId, user: Option<&str>, records: &[ConnectionRecord]) -> String {
    #[derive(Serialize)]
    struct Connection<'a> {
        user: &'a str,
        node: NodeId,
        connection: &'a str,
        connected_at: u64,
    }
    #[derive(Serialize)]
    struct Reset<'a> {
        id: EventId,
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        connections: Vec<Connection<'a>>,
    }
    let reset = Reset {
        id,
        kind: "reset",
        user,
        connections: records
            .iter()
            .map(|r| Connection {
                user: &r.user,
                node: r.node,
                connection: &r.connection,
                connected_at: r.connected_at,
            })
            .collect(),
    };
    serde_json::to_string(&reset).unwrap_or_default()
}

#[cfg(test)]
mod tests {
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

    fn kinds(events: &[Event]) -> Vec<(String, Kind, &str)> {
        events
            .iter()
            .map(|e| (e.id.to_string(), e.kind, e.connection.as_str()))
            .collect()
    }

    fn id(index: u64, ordinal: u32) -> String {
        EventId { index, ordinal }.to_string()
    }

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
                (id(3, 0), Kind::Join, "2-1"),
                (id(3, 1), Kind::Online, "2-1")
            ]
        );
        assert_eq!(e[0].at, 1000);
        let e = batch(&mut r, 4, vec![PresenceOp::Connect(record(3, "3-1", "u"))]);
        assert_eq!(kinds(&e), [(id(4, 0), Kind::Join, "3-1")]);
        let e = batch(&mut r, 5, vec![disconnect(2, "2-1")]);
        assert_eq!(kinds(&e), [(id(5, 0), Kind::Leave, "2-1")]);
        let e = batch(&mut r, 6, vec![disconnect(3, "3-1")]);
        assert_eq!(
            kinds(&e),
            [
                (id(6, 0), Kind::Leave, "3-1"),
                (id(6, 1), Kind::Offline, "3-1")
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
                (id(7, 0), Kind::Join, "1-2"),
                (id(7, 1), Kind::Online, "1-2")
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
                (id(3, 0), Kind::Leave, "2-1"),
                (id(3, 1), Kind::Offline, "2-1")
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
                (id(2, 0), Kind::Leave, "2-1"),
                (id(2, 1), Kind::Leave, "2-2"),
                (id(2, 2), Kind::Offline, "2-2"),
            ]
        );
        assert!(e.iter().all(|e| e.reason == Some(Reason::NodeDown)));
        let mut events = Vec::new();
        r.apply_noting(Command::Remove(1), 3, &mut events);
        assert_eq!(
            kinds(&events),
            [
                (id(3, 0), Kind::Leave, "1-1"),
                (id(3, 1), Kind::Offline, "1-1")
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
            connection: format!("1-{index}"),
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
        let Read::Events(found, seen) = ring.after(ring.floor(), 1, |e| e.user == "b") else {
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
        let one = event(1, 0, "u").size();
        let mut ring = Ring::new(1000, one * 2, EventId::default());
        ring.push((1..=9).map(|i| event(i, 0, "u")));
        assert_eq!(ring.len(), 2);
        assert!(ring.bytes() <= one * 2);
        let mut none = Ring::new(0, usize::MAX, EventId::default());
        none.push([event(1, 0, "u")]);
        assert!(none.is_empty());
        assert_eq!(none.after(EventId::default(), 10, |_| true), Read::Behind);
    }

    fn op() -> impl Strategy<Value = PresenceOp> {
        let node = 1..4u64;
        let conn = 0..4u8;
        let user = prop::sample::select(vec!["a", "b", "c"]);
        prop_oneof![
            4 => (node.clone(), conn.clone(), user.clone())
                .prop_map(|(n, c, u)| PresenceOp::Connect(record(n, &format!("{n}-{c}"), u))),
            3 => (node.clone(), conn.clone())
                .prop_map(|(n, c)| disconnect(n, &format!("{n}-{c}"))),
            1 => node.clone().prop_map(|node| PresenceOp::PurgeNode { node }),
            1 => (node, prop::collection::vec((conn, user), 0..3)).prop_map(|(n, cs)| {
                PresenceOp::ResyncNode {
                    node: n,
                    connections: cs
                        .into_iter()
                        .map(|(c, u)| record(n, &format!("{n}-{c}"), u))
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
                    let key = (e.node, e.connection.clone());
                    match e.kind {
                        Kind::Join => prop_assert!(conns.insert(key, e.user.clone()).is_none()),
                        Kind::Leave => prop_assert_eq!(conns.remove(&key), Some(e.user.clone())),
                        Kind::Online => prop_assert!(online.insert(e.user.clone())),
                        Kind::Offline => prop_assert!(online.remove(&e.user)),
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
}
