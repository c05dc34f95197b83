//! A group's history on its owner and its replica, and every group's on one node.
//!
//! [`GroupLog`]: offsets are contiguous; entries beyond the group's size or older than
//! its TTL are dropped from the front, but the epoch, the last offset and the chain of
//! epochs the log continues are kept, so that a client at the top recovers (with nothing
//! to replay) however long it was idle. Call order on the owner: [`GroupLog::append`];
//! on the replica: [`GroupLog::store`] (refused unless it follows); on a takeover:
//! [`GroupLog::continue_as`]. [`GroupLog::recover`] is the recovery decision.
//!
//! [`Store`]: every log this node holds (as owner or replica), with a byte budget over
//! all of them (`--history-max-bytes`): over it, the least recently published groups
//! lose their messages (not their positions), and clients behind them get
//! `recovered: false`.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use switchboard_proto::peer::{GroupState, Position, PublishId};

use super::Epoch;

/// Older epochs one log remembers it continues.
pub const MAX_LINKS: usize = 16;
/// Bytes counted per entry beyond its payload (bookkeeping).
pub const ENTRY_OVERHEAD: usize = 64;
/// Bytes counted per group beyond its entries (name, positions, links).
pub const GROUP_OVERHEAD: usize = 256;
/// An empty log (its messages expired or evicted) not used for this long is forgotten.
pub const FORGET_IDLE: Duration = Duration::from_secs(24 * 3600);

pub use switchboard_proto::peer::HistoryEntry as Entry;

/// What a recovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Whether every message after the client's position is in `entries`.
    pub recovered: bool,
    /// The current epoch and last offset: the client's position after the recovery.
    pub epoch: Epoch,
    pub top: u64,
    /// The messages after the client's position, in offset order (empty when not
    /// recovered).
    pub entries: Vec<Entry>,
    /// Only a page of them: ask again after the last one.
    pub more: bool,
}

/// One group's history. See the module header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupLog {
    epoch: Epoch,
    top: u64,
    entries: VecDeque<Entry>,
    links: VecDeque<(Epoch, u64)>,
    bytes: usize,
    size: usize,
    ttl_ms: Option<u64>,
    used_ms: u64,
}

impl GroupLog {
    /// An empty log in `epoch`, keeping `size` messages for `ttl`.
    pub fn new(epoch: Epoch, size: usize, ttl: Option<Duration>, now_ms: u64) -> Self {
        GroupLog {
            epoch,
            top: 0,
            entries: VecDeque::new(),
            links: VecDeque::new(),
            bytes: 0,
            size: size.max(1),
            ttl_ms: ttl.map(|t| t.as_millis() as u64),
            used_ms: now_ms,
        }
    }

    /// A log from what an owner sent (a replica's copy).
    pub fn from_state(state: GroupState, size: usize, ttl: Option<Duration>, now_ms: u64) -> Self {
        let mut log = GroupLog::new(state.epoch, size, ttl, now_ms);
        log.top = state.top;
        log.links = state.links.into_iter().collect();
        for entry in state.entries {
            log.bytes += entry_bytes(&entry);
            log.entries.push_back(entry);
        }
        log.trim(now_ms);
        log
    }

    /// What a replica needs to hold the same log, in parts of about `part_bytes` of
    /// payload each (at least one entry per part).
    pub fn state(&self, group: &str, part_bytes: usize) -> Vec<GroupState> {
        let mut parts = Vec::new();
        let mut entries = Vec::new();
        let mut bytes = 0;
        let part = |entries: Vec<Entry>, more: bool| GroupState {
            group: group.to_owned(),
            epoch: self.epoch,
            top: self.top,
            links: self.links.iter().copied().collect(),
            entries,
            part: 0,
            more,
        };
        for entry in &self.entries {
            if bytes > 0 && bytes + entry.payload.len() > part_bytes {
                parts.push(part(std::mem::take(&mut entries), true));
                bytes = 0;
            }
            bytes += entry.payload.len();
            entries.push(entry.clone());
        }
        parts.push(part(entries, false));
        for (i, p) in parts.iter_mut().enumerate() {
            p.part = i as u32;
        }
        parts
    }

    /// A later part of an owner's state (see [`GroupLog::state`]): its entries go after
    /// the ones held; false (and nothing changes) unless they follow them.
    pub fn extend(&mut self, state: GroupState, now_ms: u64) -> bool {
        let next = self.entries.back().map(|e| e.position.offset + 1);
        let first = state.entries.first().map(|e| e.position.offset);
        if state.epoch != self.epoch || (next.is_some() && first.is_some() && next != first) {
            return false;
        }
        for entry in state.entries {
            self.bytes += entry_bytes(&entry);
            self.entries.push_back(entry);
        }
        self.top = state.top;
        self.trim(now_ms);
        true
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn top(&self) -> u64 {
        self.top
    }

    /// Bytes this log counts against the budget.
    pub fn bytes(&self) -> usize {
        self.bytes + GROUP_OVERHEAD
    }

    /// The messages kept.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The owner takes a message: the next offset, in the current epoch.
    pub fn append(
        &mut self,
        id: PublishId,
        payload: bytes::Bytes,
        text: bool,
        now_ms: u64,
    ) -> Entry {
        self.top += 1;
        let entry = Entry {
            position: Position {
                epoch: self.epoch,
                offset: self.top,
            },
            id,
            payload,
            text,
            at_ms: now_ms,
        };
        self.bytes += entry_bytes(&entry);
        self.entries.push_back(entry.clone());
        self.used_ms = now_ms;
        self.trim(now_ms);
        entry
    }

    /// The replica stores the owner's message; refused (false) unless it is the next one
    /// of the current epoch.
    pub fn store(&mut self, entry: Entry, now_ms: u64) -> bool {
        if entry.position.epoch != self.epoch || entry.position.offset != self.top + 1 {
            return false;
        }
        self.top = entry.position.offset;
        self.bytes += entry_bytes(&entry);
        self.entries.push_back(entry);
        self.used_ms = now_ms;
        self.trim(now_ms);
        true
    }

    /// A new epoch continues this log: offsets go on from the top.
    pub fn continue_as(&mut self, epoch: Epoch) {
        if epoch == self.epoch {
            return;
        }
        self.links.push_back((self.epoch, self.top));
        while self.links.len() > MAX_LINKS {
            self.links.pop_front();
        }
        self.epoch = epoch;
    }

    /// Drops messages beyond the size and older than the TTL.
    pub fn trim(&mut self, now_ms: u64) {
        while self.entries.len() > self.size {
            self.pop_front();
        }
        if let Some(ttl) = self.ttl_ms {
            while self
                .entries
                .front()
                .is_some_and(|e| now_ms.saturating_sub(e.at_ms) >= ttl)
            {
                self.pop_front();
            }
        }
    }

    /// Drops every message, keeping the positions (the byte budget's eviction).
    pub fn evict(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.bytes -= entry_bytes(&e);
        }
    }

    /// The position of the kept message that came from publish `id`, if any (newest
    /// first: a retry is of a recent publish).
    pub fn find(&self, id: PublishId) -> Option<Position> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.id == id)
            .map(|e| e.position)
    }

    /// Whether `position` is one this log's offsets went through: the current epoch up
    /// to the top, or an epoch it continues up to where that one ended.
    pub fn knows(&self, position: Position) -> bool {
        if position.epoch == self.epoch {
            return position.offset <= self.top;
        }
        self.links
            .iter()
            .any(|&(epoch, end)| epoch == position.epoch && position.offset <= end)
    }

    /// What a client at `since` missed: every message after it, if all are still here
    /// and `since` is a position of this log; else `recovered: false` and the position to
    /// start from. At most about `page_bytes` of payload (at least one message): `more`
    /// says to ask again after the last one.
    pub fn recover(&mut self, since: Position, now_ms: u64, page_bytes: usize) -> Recovery {
        self.trim(now_ms);
        self.used_ms = now_ms;
        let first = self
            .entries
            .front()
            .map_or(self.top + 1, |e| e.position.offset);
        let complete = self.knows(since) && since.offset + 1 >= first;
        let mut entries = Vec::new();
        let mut more = false;
        if complete {
            let mut bytes = 0;
            // Offsets only grow along the ring: the page starts where a binary search
            // says, not after a scan (a page costs its own entries, not the history).
            let start = self
                .entries
                .partition_point(|e| e.position.offset <= since.offset);
            for e in self.entries.range(start..) {
                if !entries.is_empty() && bytes + e.payload.len() > page_bytes {
                    more = true;
                    break;
                }
                bytes += e.payload.len();
                entries.push(e.clone());
            }
        }
        Recovery {
            recovered: complete,
            epoch: self.epoch,
            top: self.top,
            entries,
            more,
        }
    }
}

fn entry_bytes(entry: &Entry) -> usize {
    entry.payload.len() + ENTRY_OVERHEAD
}

/// Every group log this node holds, within a byte budget.
#[derive(Debug, Default)]
pub struct Store {
    logs: HashMap<String, GroupLog>,
    max_bytes: usize,
}

impl Store {
    pub fn new(max_bytes: usize) -> Self {
        Store {
            logs: HashMap::new(),
            max_bytes,
        }
    }

    pub fn get(&self, group: &str) -> Option<&GroupLog> {
        self.logs.get(group)
    }

    pub fn get_mut(&mut self, group: &str) -> Option<&mut GroupLog> {
        self.logs.get_mut(group)
    }

    /// The log of `group`, made with `make` when there is none.
    pub fn entry(&mut self, group: &str, make: impl FnOnce() -> GroupLog) -> &mut GroupLog {
        if !self.logs.contains_key(group) {
            self.logs.insert(group.to_owned(), make());
        }
        self.logs.get_mut(group).expect("inserted above")
    }

    pub fn insert(&mut self, group: String, log: GroupLog) {
        self.logs.insert(group, log);
    }

    pub fn remove(&mut self, group: &str) -> Option<GroupLog> {
        self.logs.remove(group)
    }

    /// Keeps only the logs `keep` says to (the buckets this node owns or replicates).
    pub fn retain(&mut self, mut keep: impl FnMut(&str, &GroupLog) -> bool) {
        self.logs.retain(|g, log| keep(g, log));
    }

    /// Every group held.
    pub fn groups(&self) -> impl Iterator<Item = (&String, &GroupLog)> {
        self.logs.iter()
    }

    /// Bytes held, counted as the budget counts them.
    pub fn bytes(&self) -> usize {
        self.logs.values().map(GroupLog::bytes).sum()
    }

    /// Messages held.
    pub fn messages(&self) -> usize {
        self.logs.values().map(GroupLog::len).sum()
    }

    pub fn len(&self) -> usize {
        self.logs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.logs.is_empty()
    }

    /// Expires messages past their TTL, forgets logs empty and idle for [`FORGET_IDLE`],
    /// and, over the byte budget, evicts the messages of the least recently used groups
    /// until under it. Returns the groups evicted.
    pub fn enforce(&mut self, now_ms: u64) -> Vec<String> {
        for log in self.logs.values_mut() {
            log.trim(now_ms);
        }
        let forget = FORGET_IDLE.as_millis() as u64;
        self.logs
            .retain(|_, log| !log.is_empty() || now_ms.saturating_sub(log.used_ms) < forget);
        let mut evicted = Vec::new();
        let mut total = self.bytes();
        if total <= self.max_bytes {
            return evicted;
        }
        let mut by_age: Vec<(u64, String)> = self
            .logs
            .iter()
            .filter(|(_, l)| !l.is_empty())
            .map(|(g, l)| (l.used_ms, g.clone()))
            .collect();
        by_age.sort_unstable();
        for (_, group) in by_age {
            if total <= self.max_bytes {
                break;
            }
            if let Some(log) = self.logs.get_mut(&group) {
                total = total.saturating_sub(log.bytes);
                log.evict();
                evicted.push(group);
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const ID: PublishId = PublishId {
        node: 1,
        boot: 1,
        seq: 0,
    };

    fn pos(epoch: Epoch, offset: u64) -> Position {
        Position { epoch, offset }
    }

    fn offsets(r: &Recovery) -> Vec<u64> {
        r.entries.iter().map(|e| e.position.offset).collect()
    }

    #[test]
    fn a_client_gets_what_it_missed_or_is_told_it_cannot() {
        let mut log = GroupLog::new(5, 3, None, 0);
        for i in 1..=5u8 {
            log.append(ID, Bytes::from(vec![i]), false, 0);
        }
        // Offsets 3..5 are kept; 1 and 2 were pushed out.
        let r = log.recover(pos(5, 2), 0, usize::MAX);
        assert!(r.recovered);
        assert_eq!(offsets(&r), vec![3, 4, 5]);
        assert_eq!((r.epoch, r.top), (5, 5));
        let r = log.recover(pos(5, 1), 0, usize::MAX);
        assert!(!r.recovered, "offset 2 is gone: more missed than kept");
        assert!(r.entries.is_empty());
        let at_top = log.recover(pos(5, 5), 0, usize::MAX);
        assert!(at_top.recovered && at_top.entries.is_empty());
        assert!(
            !log.recover(pos(4, 2), 0, usize::MAX).recovered,
            "an epoch this log never was"
        );
        assert!(
            !log.recover(pos(5, 9), 0, usize::MAX).recovered,
            "a position ahead of the log"
        );
    }

    #[test]
    fn an_idle_client_at_the_top_recovers_after_the_ttl() {
        let mut log = GroupLog::new(1, 10, Some(Duration::from_secs(60)), 0);
        log.append(ID, Bytes::from_static(b"a"), true, 1_000);
        log.append(ID, Bytes::from_static(b"b"), true, 2_000);
        let r = log.recover(pos(1, 2), 3_600_000, usize::MAX);
        assert!(
            r.recovered && r.entries.is_empty(),
            "nothing to replay, still recovered"
        );
        assert_eq!(log.len(), 0, "the messages expired");
        assert!(
            !log.recover(pos(1, 1), 3_600_000, usize::MAX).recovered,
            "but offset 2 is gone"
        );
    }

    #[test]
    fn a_takeover_continues_the_offsets_and_old_positions_still_recover() {
        let mut owner = GroupLog::new(10, 100, None, 0);
        let mut replica = GroupLog::new(10, 100, None, 0);
        for i in 0..3u8 {
            let e = owner.append(ID, Bytes::from(vec![i]), false, 0);
            assert!(replica.store(e, 0));
        }
        // The owner dies; the replica takes over in epoch 12, continuing epoch 10.
        replica.continue_as(12);
        let e = replica.append(ID, Bytes::from_static(b"x"), false, 0);
        assert_eq!(e.position, pos(12, 4));
        let r = replica.recover(pos(10, 1), 0, usize::MAX);
        assert!(r.recovered);
        assert_eq!(offsets(&r), vec![2, 3, 4]);
        assert_eq!(r.entries[2].position.epoch, 12);
        assert!(
            !replica.recover(pos(10, 4), 0, usize::MAX).recovered,
            "epoch 10 ended at 3"
        );
    }

    #[test]
    fn a_replica_refuses_what_does_not_follow() {
        let mut owner = GroupLog::new(3, 10, None, 0);
        let mut replica = GroupLog::new(3, 10, None, 0);
        let first = owner.append(ID, Bytes::from_static(b"1"), true, 0);
        let second = owner.append(ID, Bytes::from_static(b"2"), true, 0);
        assert!(!replica.store(second.clone(), 0), "a gap");
        assert!(replica.store(first, 0));
        assert!(replica.store(second, 0));
        let mut other_epoch = owner.append(ID, Bytes::from_static(b"3"), true, 0);
        other_epoch.position.epoch = 4;
        assert!(!replica.store(other_epoch, 0), "another epoch");
        let copy = GroupLog::from_state(owner.state("g", usize::MAX).remove(0), 10, None, 0);
        assert_eq!(copy.top(), 3);
        assert_eq!(copy.len(), 3);
    }

    #[test]
    fn a_long_history_goes_in_parts_and_recovers_in_pages() {
        let mut owner = GroupLog::new(2, 100, None, 0);
        for i in 0..10u8 {
            owner.append(ID, Bytes::from(vec![i; 100]), false, 0);
        }
        let parts = owner.state("g", 250);
        assert_eq!(parts.len(), 5, "two 100-byte entries per 250-byte part");
        assert!(parts[..4].iter().all(|p| p.more) && !parts[4].more);
        let mut parts = parts.into_iter();
        let mut copy = GroupLog::from_state(parts.next().expect("a part"), 100, None, 0);
        for part in parts {
            assert!(copy.extend(part, 0));
        }
        assert_eq!(
            copy,
            GroupLog {
                used_ms: copy.used_ms,
                ..owner.clone()
            }
        );
        let mut stale = owner.state("g", 250).remove(3);
        stale.epoch = 1;
        assert!(!copy.extend(stale, 0), "another epoch");

        let page = owner.recover(pos(2, 3), 0, 350);
        assert!(page.recovered && page.more);
        let offsets: Vec<u64> = page.entries.iter().map(|e| e.position.offset).collect();
        assert_eq!(offsets, vec![4, 5, 6]);
        let rest = owner.recover(pos(2, 6), 0, 10_000);
        assert!(rest.recovered && !rest.more);
        assert_eq!(rest.entries.len(), 4);
    }

    #[test]
    fn the_store_evicts_the_least_recently_used_groups_over_its_budget() {
        // Four groups' bookkeeping and three messages fit.
        let mut store = Store::new(3 * (100 + ENTRY_OVERHEAD) + 4 * GROUP_OVERHEAD);
        for (i, group) in ["a", "b", "c"].iter().enumerate() {
            let log = store.entry(group, || GroupLog::new(1, 10, None, 0));
            log.append(ID, Bytes::from(vec![0; 100]), false, i as u64);
        }
        assert!(store.enforce(10).is_empty(), "within the budget");
        store.entry("d", || GroupLog::new(1, 10, None, 0)).append(
            ID,
            Bytes::from(vec![0; 100]),
            false,
            20,
        );
        let evicted = store.enforce(30);
        assert_eq!(
            evicted,
            vec!["a".to_string()],
            "the oldest group loses its messages"
        );
        assert!(store.bytes() <= 3 * (100 + ENTRY_OVERHEAD) + 4 * GROUP_OVERHEAD);
        let a = store.get_mut("a").expect("positions kept");
        assert_eq!(a.top(), 1);
        assert!(
            !a.recover(pos(1, 0), 30, usize::MAX).recovered,
            "evicted: behind it, not recovered"
        );
        assert!(
            a.recover(pos(1, 1), 30, usize::MAX).recovered,
            "at the top: recovered"
        );
    }

    #[test]
    fn a_kept_message_is_found_by_its_publish_id_until_it_is_dropped() {
        let mut log = GroupLog::new(3, 2, None, 0);
        let id = |seq| PublishId {
            node: 2,
            boot: 9,
            seq,
        };
        for seq in 1..=3 {
            log.append(id(seq), Bytes::from_static(b"m"), true, 0);
        }
        assert_eq!(log.find(id(3)), Some(pos(3, 3)));
        assert_eq!(log.find(id(2)), Some(pos(3, 2)));
        assert_eq!(log.find(id(1)), None, "beyond the size: dropped, forgotten");
        assert_eq!(log.find(id(4)), None);
    }
}
