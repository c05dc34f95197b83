//! The ring of the newest events ([`Ring`]) and what a reader finds in it ([`Read`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use super::super::connection::ConnectionId;
use super::{Event, EventId, Kind, Reason};

/// What a reader finds after its cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// The events after the cursor that passed the filter (at most the number asked),
    /// and the position the reader has now seen up to.
    Events(Vec<Event>, EventId),
    /// The cursor is older than what this node keeps: start over from a reset.
    Behind,
}

/// The fewest slots a ring grows by at once.
const RING_GROWTH_MIN: usize = 64;
/// A user's slots walked per event asked before the scan is cheaper.
const WALK_PER_READ: usize = 4;
/// Bytes of a user's entry in the ring's index (key, value, control byte, load factor).
const USER_INDEX_BYTES: usize = 32;

/// The newest events, bounded in count and bytes. See the module header.
///
/// A `join` directly followed by its user's `online` (or a `leave` by its `offline`), as
/// [`derive`](super::derive) writes them, is kept as one [`Kept`]: a connection's arrival or departure
/// costs the ring one slot, whether or not it changed its user's status.
///
/// Each slot links to its user's slot before it, and the ring knows each user's newest
/// slot: reading one user's events after a cursor ([`Ring::after_user`]) walks that
/// user's slots back to the cursor, costing the user's events, not the ring's.
#[derive(Debug)]
pub struct Ring {
    kept: VecDeque<Kept>,
    /// The sequence number of the front slot (slots are numbered as pushed).
    base: u64,
    /// Each user with a slot in the ring: the sequence number of its newest.
    last_of: HashMap<Arc<str>, u64>,
    /// Events kept (a pair counts two).
    count: usize,
    capacity: usize,
    max_bytes: usize,
    bytes: usize,
    /// Every event after this position is in the ring (or yet to come).
    floor: EventId,
}

/// One event, or a `join`/`leave` and the `online`/`offline` right after it.
#[derive(Debug, Clone)]
struct Kept {
    id: EventId,
    kind: Kind,
    /// Followed by `online` (a `join`) or `offline` (a `leave`) at the next ordinal.
    then: bool,
    reason: Option<Reason>,
    /// How many slots back the user's previous slot is; 0: none (in the padding after
    /// the flags: a slot is no larger for it).
    prev: u32,
    user: Arc<str>,
    connection: ConnectionId,
    at: u64,
}

impl Kept {
    fn new(event: Event) -> Kept {
        Kept {
            id: event.id,
            kind: event.kind,
            then: false,
            reason: event.reason,
            prev: 0,
            user: event.user,
            connection: event.connection,
            at: event.at,
        }
    }

    /// Whether `event` is the `online`/`offline` that completes this one.
    fn completed_by(&self, event: &Event) -> bool {
        self.kind.then_status() == Some(event.kind)
            && !self.then
            && event.id.index == self.id.index
            && Some(event.id.ordinal) == self.id.ordinal.checked_add(1)
            && event.user == self.user
            && event.connection == self.connection
            && event.at == self.at
            && event.reason == self.reason
    }

    fn events(&self) -> usize {
        1 + usize::from(self.then)
    }

    fn last(&self) -> EventId {
        EventId {
            index: self.id.index,
            ordinal: self.id.ordinal + u32::from(self.then),
        }
    }

    /// Bytes this holds, for the ring's account (with its user's entry in the index,
    /// counted with every slot: an upper bound).
    fn size(&self) -> usize {
        std::mem::size_of::<Kept>()
            + USER_INDEX_BYTES
            + self.user.len()
            + self.connection.heap_bytes()
    }

    /// The events this stands for, in order.
    fn expand(&self) -> impl Iterator<Item = Event> + '_ {
        let event = |id, kind| Event {
            id,
            kind,
            user: self.user.clone(),
            node: self.connection.node(),
            connection: self.connection.clone(),
            at: self.at,
            reason: self.reason,
        };
        let second = self
            .kind
            .then_status()
            .filter(|_| self.then)
            .map(|kind| event(self.last(), kind));
        std::iter::once(event(self.id, self.kind)).chain(second)
    }
}

impl Ring {
    /// An empty ring of at most `capacity` events and `max_bytes`, holding everything after
    /// `floor`.
    pub fn new(capacity: usize, max_bytes: usize, floor: EventId) -> Ring {
        Ring {
            kept: VecDeque::new(),
            base: 0,
            last_of: HashMap::new(),
            count: 0,
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
            self.count += 1;
            match self.kept.back_mut() {
                Some(last) if last.completed_by(&event) => last.then = true,
                _ => {
                    let mut kept = Kept::new(event);
                    let seq = self.base + self.kept.len() as u64;
                    if let Some(prev) = self.last_of.insert(kept.user.clone(), seq) {
                        kept.prev = u32::try_from(seq - prev).unwrap_or(0);
                    }
                    self.bytes += kept.size();
                    if self.kept.len() == self.kept.capacity() {
                        // A quarter more, not twice: while it fills, the ring is much of
                        // what a hosted connection costs, and doubling would leave up to
                        // half of it unused.
                        self.kept
                            .reserve_exact((self.kept.len() / 4).max(RING_GROWTH_MIN));
                    }
                    self.kept.push_back(kept);
                }
            }
            while self.count > self.capacity || self.bytes > self.max_bytes {
                let Some(old) = self.kept.pop_front() else {
                    break;
                };
                self.count -= old.events();
                self.bytes -= old.size();
                self.floor = old.last();
                if self.last_of.get(&old.user) == Some(&self.base) {
                    self.last_of.remove(&old.user);
                }
                self.base += 1;
            }
        }
    }

    /// Forgets every event: the state jumped to `floor` (a snapshot was installed).
    pub fn restart_at(&mut self, floor: EventId) {
        self.base += self.kept.len() as u64;
        self.kept.clear();
        self.last_of.clear();
        self.count = 0;
        self.bytes = 0;
        self.floor = floor;
    }

    /// The position of the newest event (or where the ring starts, if empty).
    pub fn newest(&self) -> EventId {
        self.kept.back().map_or(self.floor, Kept::last)
    }

    /// The position every kept event comes after.
    pub fn floor(&self) -> EventId {
        self.floor
    }

    /// Events kept.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no event is kept.
    pub fn is_empty(&self) -> bool {
        self.count == 0
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
        let start = self.kept.partition_point(|k| k.last() <= cursor);
        let mut found = Vec::new();
        let mut seen = self.newest().max(cursor);
        let events = self.kept.range(start..).flat_map(Kept::expand);
        for event in events.filter(|e| e.id > cursor) {
            if found.len() == max {
                break;
            }
            if keep(&event) {
                let id = event.id;
                found.push(event);
                if found.len() == max {
                    seen = id;
                }
            }
        }
        Read::Events(found, seen)
    }

    /// Up to `max` of `user`'s events after `cursor`, found by walking the user's slots
    /// back from its newest: O(the user's events after the cursor). A user with many
    /// more than `max` after it (a large share of the ring) is read by the scan instead,
    /// which stops at `max`.
    pub fn after_user(&self, user: &str, cursor: EventId, max: usize) -> Read {
        if cursor < self.floor {
            return Read::Behind;
        }
        let mut slots = Vec::new();
        let mut seq = self.last_of.get(user).copied();
        while let Some(at) = seq {
            if slots.len() > WALK_PER_READ * max.max(1) {
                return self.after(cursor, max, |e| &*e.user == user);
            }
            let Some(kept) = self.kept.get((at - self.base) as usize) else {
                break;
            };
            if kept.last() <= cursor {
                break;
            }
            slots.push(kept);
            seq = match kept.prev {
                0 => None,
                back => at.checked_sub(u64::from(back)).filter(|s| *s >= self.base),
            };
        }
        let mut found = Vec::new();
        let mut seen = self.newest().max(cursor);
        let events = slots.into_iter().rev().flat_map(Kept::expand);
        for event in events.filter(|e| e.id > cursor) {
            if found.len() == max {
                break;
            }
            let id = event.id;
            found.push(event);
            if found.len() == max {
                seen = id;
            }
        }
        Read::Events(found, seen)
    }
}
