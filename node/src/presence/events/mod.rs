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
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use switchboard_proto::peer::{ConnectionRecord, NodeId};

use super::Registry;
use super::connection::ConnectionId;
use super::shards::Shard;

mod ring;

pub use ring::{Read, Ring};

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

impl<'de> Deserialize<'de> for EventId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<EventId, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Where a stream starts in a shard (or the one registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Origin {
    /// At the present: no events, only the position.
    Now,
    /// With the current state (a `reset`) and its position.
    Reset,
    /// After this position.
    After(EventId),
}

/// A presence event's id in a sharded registry: `<shard>:<log index>-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardEventId {
    pub shard: Shard,
    pub id: EventId,
}

impl fmt::Display for ShardEventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.shard, self.id)
    }
}

impl FromStr for ShardEventId {
    type Err = String;

    fn from_str(s: &str) -> Result<ShardEventId, String> {
        let bad =
            || format!("'{s}' is not a sharded event id (<shard>:<log index>-<n>, e.g. 3:42-0)");
        let (shard, id) = s.trim().split_once(':').ok_or_else(bad)?;
        Ok(ShardEventId {
            shard: shard.parse().map_err(|_| bad())?,
            id: id.parse().map_err(|_| bad())?,
        })
    }
}

/// Where a reader of several shards stands: its position in each (a shard it has no
/// position in starts from the beginning of what that shard keeps). Written
/// `<shard>:<index>-<n>,…` in shard order: the `id:` of every Server-Sent Event, so that
/// `Last-Event-ID` resumes every shard.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub std::collections::BTreeMap<Shard, EventId>);

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (shard, id)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{shard}:{id}")?;
        }
        Ok(())
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Cursor, String> {
        let mut cursor = Cursor::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let ShardEventId { shard, id } = part.parse()?;
            cursor.0.insert(shard, id);
        }
        Ok(cursor)
    }
}

/// An event's JSON, its id prefixed with its shard when the registry is sharded.
pub fn event_json(event: &Event, shard: Option<Shard>) -> String {
    match shard {
        None => serde_json::to_string(event).unwrap_or_default(),
        Some(shard) => {
            let mut value = serde_json::to_value(event).unwrap_or_default();
            value["id"] = ShardEventId {
                shard,
                id: event.id,
            }
            .to_string()
            .into();
            value.to_string()
        }
    }
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

impl Kind {
    /// The user's status change that may follow this connection change in an entry
    /// (`online` after a `join`, `offline` after a `leave`).
    fn then_status(self) -> Option<Kind> {
        match self {
            Kind::Join => Some(Kind::Online),
            Kind::Leave => Some(Kind::Offline),
            Kind::Online | Kind::Offline => None,
        }
    }
}

/// Why a connection went, when it was not its own disconnect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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
    pub user: Arc<str>,
    /// The connection's node (for `online`/`offline`: the connection that made the user
    /// come online or go offline).
    pub node: NodeId,
    pub connection: ConnectionId,
    /// Unix milliseconds, from the committed entry (the same on every node).
    pub at: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<Reason>,
}

/// A connection as the registry noted it: its user id is the registry's own (shared),
/// so the events derived from it hold no copy of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotedConnection {
    pub user: Arc<str>,
    pub connection: ConnectionId,
}

/// A record an entry added or removed, in the order the registry applied them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(NotedConnection),
    Removed(NotedConnection, Option<Reason>),
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
        Option<NotedConnection>,
        Option<NotedConnection>,
        Option<Reason>,
    );
    let mut order: Vec<ConnectionId> = Vec::new();
    let mut net: HashMap<ConnectionId, Net> = HashMap::new();
    for change in changes {
        let (record, added, reason) = match change {
            Change::Added(r) => (r, true, None),
            Change::Removed(r, reason) => (r, false, reason),
        };
        let key = record.connection.clone();
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
    let mut leaves: Vec<(NotedConnection, Option<Reason>)> = Vec::new();
    let mut joins: Vec<NotedConnection> = Vec::new();
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
    let mut push = |kind, record: &NotedConnection, reason| {
        events.push(Event {
            id: EventId {
                index,
                ordinal: events.len() as u32,
            },
            kind,
            user: record.user.clone(),
            node: record.connection.node(),
            connection: record.connection.clone(),
            at,
            reason,
        })
    };
    for (record, reason) in &leaves {
        push(Kind::Leave, record, *reason);
        if let Some((left, _, _)) = users.get_mut(&*record.user) {
            *left -= 1;
            if *left == 0 && registry.user_connections(&record.user) == 0 {
                push(Kind::Offline, record, *reason);
            }
        }
    }
    for record in &joins {
        push(Kind::Join, record, None);
        if let Some((_, joined, was_online)) = users.get_mut(&*record.user) {
            if !*was_online {
                *was_online = true;
                push(Kind::Online, record, None);
            }
            *joined -= 1;
        }
    }
    events
}

/// A `reset` event: the state at `id` (every connection, or one user's), after which the
/// reader continues with the events after `id`.
pub fn reset_json(id: EventId, user: Option<&str>, records: &[ConnectionRecord]) -> String {
    reset_json_in(None, id, user, records)
}

/// A `reset` event of one shard (`shard`: when the registry is sharded, the id carries
/// it and the event says it: the state replaces only that shard's users').
pub fn reset_json_in(
    shard: Option<Shard>,
    id: EventId,
    user: Option<&str>,
    records: &[ConnectionRecord],
) -> String {
    #[derive(Serialize)]
    struct Connection<'a> {
        user: &'a str,
        node: NodeId,
        connection: &'a str,
        connected_at: u64,
    }
    #[derive(Serialize)]
    struct Reset<'a> {
        id: String,
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        shard: Option<Shard>,
        #[serde(skip_serializing_if = "Option::is_none")]
        user: Option<&'a str>,
        connections: Vec<Connection<'a>>,
    }
    let reset = Reset {
        id: match shard {
            Some(shard) => ShardEventId { shard, id }.to_string(),
            None => id.to_string(),
        },
        kind: "reset",
        shard,
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
mod tests;
