//! What this node waits for from its peers, and what steers its publishes for a moment:
//! route lookups (one question per group at once, however many publishes wait on it),
//! listings, acts, and the hints of subscriptions made on other nodes. Plain tables, no
//! IO and no clock of their own: the mesh holds them, `forward.rs` and `acts.rs` fill
//! and drain them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchboard_proto::peer::NodeId;
use tokio::sync::{mpsc, oneshot};

use super::routes::Nodes;

/// How long a holder is given to answer a lookup before the next one is asked.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);
/// How long a subscription made on another node steers this node's publishes there.
pub const HINT_TTL: Duration = Duration::from_secs(2);
/// Most groups hinted at once; past it the oldest hints go first.
pub const MAX_HINTS: usize = 10_000;

/// A holder's answer to a lookup.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The nodes with subscribers, and how many each has.
    pub nodes: Nodes,
    /// Whether the holder has every connected peer's interest since the bucket moved
    /// to it (`Route::Answer::settled`).
    pub settled: bool,
}

/// Whoever waits for a lookup's answer (`None`: no answer).
pub type Waiter = oneshot::Sender<Option<Answer>>;

/// Lookups waiting for a holder's answer: at most one question per group.
#[derive(Debug, Default)]
pub struct Lookups {
    pending: HashMap<u64, Lookup>,
    by_group: HashMap<String, u64>,
}

/// One question asked of a holder.
#[derive(Debug)]
pub struct Lookup {
    pub group: String,
    /// When it was asked: an answer's lease runs from then.
    pub asked: Instant,
    pub waiters: Vec<Waiter>,
}

impl Lookups {
    /// Adds `waiter` to the question on `group` if one is out; otherwise records a new
    /// one under the id `new_id` gives and returns it: the caller sends it.
    pub fn ask(
        &mut self,
        now: Instant,
        group: &str,
        waiter: Waiter,
        new_id: impl FnOnce() -> u64,
    ) -> Option<u64> {
        if let Some(lookup) = self
            .by_group
            .get(group)
            .and_then(|id| self.pending.get_mut(id))
        {
            lookup.waiters.push(waiter);
            return None;
        }
        let id = new_id();
        self.pending.insert(
            id,
            Lookup {
                group: group.to_owned(),
                asked: now,
                waiters: vec![waiter],
            },
        );
        self.by_group.insert(group.to_owned(), id);
        Some(id)
    }

    /// The question `id`, done with (answered or not): `None` when it was given up.
    pub fn answered(&mut self, id: u64) -> Option<Lookup> {
        let lookup = self.pending.remove(&id)?;
        self.by_group.remove(&lookup.group);
        Some(lookup)
    }

    /// Gives up questions asked [`LOOKUP_TIMEOUT`] or longer before `now` (their
    /// waiters have moved on to the next holder); a later answer to one is ignored.
    pub fn expire(&mut self, now: Instant) {
        let by_group = &mut self.by_group;
        self.pending.retain(|_, lookup| {
            let late = now.saturating_duration_since(lookup.asked) >= LOOKUP_TIMEOUT;
            if late {
                by_group.remove(&lookup.group);
            }
            !late
        });
    }

    /// Questions out.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no question is out.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}

/// Listings waiting for the peers' answers, by id: each peer's groups and whether it
/// listed all it has.
pub type Listings = HashMap<u64, mpsc::Sender<(Vec<String>, bool)>>;

/// Acts waiting for their answer (the connections reached), by id.
pub type Acts = HashMap<u64, oneshot::Sender<u32>>;

/// Groups subscribed on other nodes a moment ago: group → (node, until when).
#[derive(Debug, Default)]
pub struct Hints {
    by_group: HashMap<String, Vec<(NodeId, Instant)>>,
    /// When the last hint runs out: past it, all are dropped at once.
    latest: Option<Instant>,
}

impl Hints {
    /// `node` now has a subscriber in `group`: its publishes go there for [`HINT_TTL`].
    pub fn add(&mut self, now: Instant, group: &str, node: NodeId) {
        if self.by_group.len() >= MAX_HINTS && !self.by_group.contains_key(group) {
            self.by_group.retain(|_, nodes| {
                nodes.retain(|(_, until)| *until > now);
                !nodes.is_empty()
            });
            if self.by_group.len() >= MAX_HINTS {
                return; // a burst of subscriptions: the routes catch up with the rest
            }
        }
        let until = now + HINT_TTL;
        let nodes = self.by_group.entry(group.to_owned()).or_default();
        nodes.retain(|(n, _)| *n != node);
        nodes.push((node, until));
        self.latest = Some(until);
    }

    /// Whether every hint has run out at `now` (they are dropped then).
    pub fn expired(&mut self, now: Instant) -> bool {
        if self.latest.is_some_and(|latest| latest > now) {
            return false;
        }
        self.by_group.clear();
        self.latest = None;
        true
    }

    /// Adds the nodes hinted for `group` to `nodes` (as one connection each, when not
    /// there already).
    pub fn merge(&self, now: Instant, group: &str, nodes: &mut Nodes) {
        let Some(hinted) = self.by_group.get(group) else {
            return;
        };
        for (node, until) in hinted {
            if *until > now && !nodes.iter().any(|(n, _)| n == node) {
                let at = nodes.partition_point(|(n, _)| n < node);
                nodes.insert(at, (*node, 1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> (Waiter, oneshot::Receiver<Option<Answer>>) {
        oneshot::channel()
    }

    /// Ids handed out in order, the first `first`.
    fn ids(first: u64) -> impl FnMut() -> u64 {
        let mut next = first;
        move || {
            next += 1;
            next - 1
        }
    }

    #[test]
    fn lookups_of_one_group_share_one_question_until_it_is_answered() {
        let now = Instant::now();
        let mut lookups = Lookups::default();
        let mut next = ids(7);
        let (a, _ra) = waiter();
        let (b, _rb) = waiter();
        let (c, _rc) = waiter();
        assert_eq!(lookups.ask(now, "g", a, &mut next), Some(7), "asked");
        assert_eq!(lookups.ask(now, "g", b, &mut next), None, "joined");
        assert_eq!(
            lookups.ask(now, "h", c, &mut next),
            Some(8),
            "another group"
        );
        let done = lookups.answered(7).expect("out");
        assert_eq!((done.group.as_str(), done.waiters.len()), ("g", 2));
        assert!(lookups.answered(7).is_none(), "answered once");
        let (d, _rd) = waiter();
        assert_eq!(lookups.ask(now, "g", d, &mut next), Some(9), "asked anew");
        assert_eq!(lookups.len(), 2);
    }

    #[test]
    fn a_question_out_for_the_lookup_timeout_is_given_up_and_asked_anew() {
        let now = Instant::now();
        let mut lookups = Lookups::default();
        let mut next = ids(1);
        let (a, _ra) = waiter();
        let (b, _rb) = waiter();
        lookups.ask(now, "old", a, &mut next);
        lookups.ask(now + LOOKUP_TIMEOUT / 2, "new", b, &mut next);
        lookups.expire(now + LOOKUP_TIMEOUT - Duration::from_millis(1));
        assert_eq!(lookups.len(), 2, "not late yet");
        lookups.expire(now + LOOKUP_TIMEOUT);
        assert_eq!(lookups.len(), 1);
        assert!(lookups.answered(1).is_none(), "a late answer is ignored");
        let (c, _rc) = waiter();
        assert_eq!(lookups.ask(now, "old", c, &mut next), Some(3), "asked anew");
        let (d, _rd) = waiter();
        assert_eq!(lookups.ask(now, "new", d, &mut next), None, "still out");
        lookups.expire(now + LOOKUP_TIMEOUT * 2);
        assert!(lookups.is_empty());
    }

    #[test]
    fn a_hint_adds_its_node_for_a_while_and_the_table_stays_bounded() {
        let now = Instant::now();
        let mut hints = Hints::default();
        hints.add(now, "g", 3);
        let mut nodes = vec![(2, 5)];
        hints.merge(now, "g", &mut nodes);
        assert_eq!(nodes, vec![(2, 5), (3, 1)]);
        let mut known = vec![(3, 7)];
        hints.merge(now, "g", &mut known);
        assert_eq!(known, vec![(3, 7)], "a known node keeps its count");
        let mut other = Vec::new();
        hints.merge(now, "h", &mut other);
        assert!(other.is_empty());
        let mut later = Vec::new();
        hints.merge(now + HINT_TTL, "g", &mut later);
        assert!(later.is_empty(), "expired");
        assert!(!hints.expired(now));
        assert!(hints.expired(now + HINT_TTL), "all ran out: dropped");
        for i in 0..MAX_HINTS + 10 {
            hints.add(now, &format!("g{i}"), 1);
        }
        assert!(hints.by_group.len() <= MAX_HINTS);
    }
}
