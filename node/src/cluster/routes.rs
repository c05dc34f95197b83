//! Routes: where a group's subscribers are, for the nodes that do not hold its interest.
//!
//! A group's interest (which nodes have subscribers, how many) is told only to the
//! **holders** of its bucket: the owner and the replica of `history::bucket_of(group)`
//! as the assignments committed through Raft say (the same buckets as history). Any
//! other node that publishes to the group asks a holder once (`Route::Lookup`), caches
//! the answer ([`RouteCache`]) and forwards directly from then on; the holder remembers
//! who cached what for a lease ([`Leases`]) and pushes the group's new route to them when
//! its interest changes (`Route::Update`). Both sides forget a bucket's routes when its
//! holders change (the new holders know nothing of the old leases).
//!
//! Pure: the time is passed in. The driver is `super::mesh`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_proto::peer::NodeId;

use crate::history::{Assignments, BUCKETS, Epoch, bucket_of};

/// How long a cached route is used without asking again; the holder keeps the lease a
/// little longer ([`LEASE_MARGIN`]) so that it pushes updates for as long as the cacher
/// may use the route.
pub const ROUTE_LEASE: Duration = Duration::from_secs(30);
pub const LEASE_MARGIN: Duration = Duration::from_secs(5);
/// How long after a bucket's holders changed (as this node applied it) a publish to its
/// groups goes to every peer, whatever the holders answer. The guarantee does not rest
/// on it: a holder says whether it has every peer's interest since the move
/// ([`Routes::complete`]), and the asker sends to everyone until it does; this only
/// spares the lookups of the first moments (test_scale passes with it at 0).
pub const MOVE_SETTLE: Duration = Duration::from_secs(2);
/// Routes one node caches at most (about 100 bytes each with one node); past it, a
/// lookup's answer is used once and not kept.
pub const MAX_CACHED_ROUTES: usize = 100_000;
/// Leases one holder grants at most; past it, lookups are answered without a lease (the
/// asker does not cache).
pub const MAX_LEASES: usize = 1_000_000;

/// A group's nodes with subscribers and how many each has, sorted by node.
pub type Nodes = Vec<(NodeId, u32)>;

/// Where a publish to a group goes, as far as this node knows without asking.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Targets {
    /// These peers (and counts), from the interest this node holds or a cached route.
    Known(Nodes),
    /// Every peer: the group's bucket moved moments ago (its new holders may not have
    /// every node's interest yet) or no holder answered; the counts are what is known.
    Everyone(Nodes),
    /// Ask these holders, in order.
    Ask(Vec<NodeId>),
}

impl Targets {
    /// The nodes and counts known (none when a holder is still to be asked).
    pub fn counts(&self) -> &[(NodeId, u32)] {
        match self {
            Targets::Known(nodes) | Targets::Everyone(nodes) => nodes,
            Targets::Ask(_) => &[],
        }
    }

    /// The nodes known, to add to (none when a holder is still to be asked).
    pub fn nodes_mut(&mut self) -> Option<&mut Nodes> {
        match self {
            Targets::Known(nodes) | Targets::Everyone(nodes) => Some(nodes),
            Targets::Ask(_) => None,
        }
    }
}

/// What a holder answers a lookup with, as far as routes go (the nodes are its held
/// route, added by the driver).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant {
    /// Whether it has every connected peer's interest in the group's bucket: when not,
    /// the asker sends to everyone and asks again next time.
    pub settled: bool,
    /// How long the asker may cache the route (zero: not at all).
    pub lease: Duration,
    /// The other holder, told of the lease so that it pushes updates too (the cacher
    /// keeps hearing of new subscribers while this holder is dead and not yet replaced).
    pub tell: Option<NodeId>,
}

#[derive(Debug, Clone)]
struct Cached {
    nodes: Nodes,
    until: Instant,
}

/// The publisher's side: routes learnt from holders. See the module header.
#[derive(Debug)]
pub struct RouteCache {
    entries: HashMap<Arc<str>, Cached>,
    max: usize,
}

impl Default for RouteCache {
    fn default() -> Self {
        RouteCache::new(MAX_CACHED_ROUTES)
    }
}

impl RouteCache {
    pub fn new(max: usize) -> Self {
        RouteCache {
            entries: HashMap::new(),
            max,
        }
    }

    /// The cached route of `group`, if its lease still runs at `now`.
    pub fn get(&self, now: Instant, group: &str) -> Option<&Nodes> {
        self.entries
            .get(group)
            .filter(|c| c.until > now)
            .map(|c| &c.nodes)
    }

    /// A holder's answer to a lookup made at `asked` (the lease counts from the question,
    /// so it never outlasts the holder's): kept for `lease` unless the cache is full of
    /// live routes. Returns whether it was kept.
    pub fn put(&mut self, asked: Instant, group: &str, nodes: Nodes, lease: Duration) -> bool {
        if lease.is_zero() {
            self.entries.remove(group);
            return false;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(group) {
            self.entries.retain(|_, c| c.until > asked);
            if self.entries.len() >= self.max {
                return false;
            }
        }
        let until = asked + lease;
        self.entries
            .insert(Arc::from(group), Cached { nodes, until });
        true
    }

    /// A holder pushed `group`'s new route: it replaces the cached one (the lease runs
    /// on); a route not cached (expired, or never kept) is ignored.
    pub fn update(&mut self, group: &str, nodes: Nodes) {
        if let Some(c) = self.entries.get_mut(group) {
            c.nodes = nodes;
        }
    }

    /// Forgets the routes of the buckets `moved` says changed holders.
    pub fn forget_buckets(&mut self, moved: impl Fn(u16) -> bool) {
        self.entries.retain(|g, _| !moved(bucket_of(g)));
    }

    /// Forgets expired routes.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|_, c| c.until > now);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The holder's side: who cached which group's route, until when. See the module header.
#[derive(Debug)]
pub struct Leases {
    by_group: HashMap<Arc<str>, Vec<(NodeId, Instant)>>,
    count: usize,
    max: usize,
}

impl Default for Leases {
    fn default() -> Self {
        Leases::new(MAX_LEASES)
    }
}

impl Leases {
    pub fn new(max: usize) -> Self {
        Leases {
            by_group: HashMap::new(),
            count: 0,
            max,
        }
    }

    /// `node` asked for `group`'s route at `now`: the lease it may cache the answer for
    /// (zero when no more leases can be granted: it must not cache).
    pub fn grant(&mut self, now: Instant, group: &str, node: NodeId) -> Duration {
        let until = now + ROUTE_LEASE + LEASE_MARGIN;
        if let Some(cachers) = self.by_group.get_mut(group)
            && let Some(entry) = cachers.iter_mut().find(|(n, _)| *n == node)
        {
            entry.1 = until;
            return ROUTE_LEASE;
        }
        if self.count >= self.max {
            self.expire(now);
            if self.count >= self.max {
                return Duration::ZERO;
            }
        }
        self.by_group
            .entry(Arc::from(group))
            .or_default()
            .push((node, until));
        self.count += 1;
        ROUTE_LEASE
    }

    /// The nodes whose lease on `group` runs at `now` (to push its new route to).
    pub fn cachers(&self, now: Instant, group: &str) -> Vec<NodeId> {
        self.by_group.get(group).map_or_else(Vec::new, |cachers| {
            cachers
                .iter()
                .filter(|(_, until)| *until > now)
                .map(|(n, _)| *n)
                .collect()
        })
    }

    /// Forgets the leases of the buckets `moved` says changed holders.
    pub fn forget_buckets(&mut self, moved: impl Fn(u16) -> bool) {
        self.by_group.retain(|g, _| !moved(bucket_of(g)));
        self.recount();
    }

    /// Forgets expired leases.
    pub fn expire(&mut self, now: Instant) {
        for cachers in self.by_group.values_mut() {
            cachers.retain(|(_, until)| *until > now);
        }
        self.by_group.retain(|_, c| !c.is_empty());
        self.recount();
    }

    fn recount(&mut self) {
        self.count = self.by_group.values().map(Vec::len).sum();
    }

    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// The mesh's routing state, behind one lock: the holders as last read, the routes
/// this node caches, and the leases it granted as a holder.
#[derive(Debug)]
pub struct Routes {
    pub holders: Arc<Holders>,
    pub cache: RouteCache,
    pub leases: Leases,
    /// When each bucket's holders last changed, as this node followed it.
    moved_at: Vec<Option<Instant>>,
    /// For each bucket this node holds, the generation of the assignments by which it
    /// gained it: it has a peer's whole interest for it once that peer sent a full sync
    /// chosen with that generation or a later one.
    gained: Vec<Epoch>,
    /// Each connected peer, and the assignments' generation it last chose a full sync
    /// with (`None` before its first on this session).
    peers: HashMap<NodeId, Option<Epoch>>,
    /// Groups whose route changed while a peer had followed newer assignments than this
    /// node: pushed once this node follows them too (see [`Routes::ahead`]).
    deferred: HashSet<String>,
}

impl Routes {
    pub fn new(me: NodeId) -> Self {
        Routes {
            holders: Arc::new(Holders::new(me, &Assignments::default())),
            cache: RouteCache::default(),
            leases: Leases::default(),
            moved_at: vec![None; usize::from(BUCKETS)],
            gained: vec![0; usize::from(BUCKETS)],
            peers: HashMap::new(),
            deferred: HashSet::new(),
        }
    }

    /// Follows newer assignments at `now`: forgets the routes and leases of the buckets
    /// whose holders changed and returns the new holders, or `None` when `assignments`
    /// are the ones already followed.
    pub fn follow(&mut self, now: Instant, assignments: &Assignments) -> Option<Arc<Holders>> {
        if assignments.generation() == self.holders.generation() {
            return None;
        }
        let next = Arc::new(Holders::new(self.holders.me, assignments));
        let moved = self.holders.moved(&next);
        let is_moved = |b: u16| moved.get(usize::from(b)).copied().unwrap_or(true);
        self.cache.forget_buckets(is_moved);
        self.leases.forget_buckets(is_moved);
        for (at, moved) in self.moved_at.iter_mut().zip(&moved) {
            if *moved {
                *at = Some(now);
            }
        }
        let me = self.holders.me;
        for bucket in 0..BUCKETS {
            if next.holds_bucket(me, bucket) && !self.holders.holds_bucket(me, bucket) {
                self.gained[usize::from(bucket)] = next.generation();
            }
        }
        self.holders = next.clone();
        Some(next)
    }

    /// A session with `peer` started: its interest is unknown until its first full sync.
    pub fn connected(&mut self, peer: NodeId) {
        self.peers.insert(peer, None);
    }

    /// `peer` sent a full sync of its interest chosen with the assignments of generation
    /// `holders`.
    pub fn followed(&mut self, peer: NodeId, holders: Epoch) {
        if let Some(at) = self.peers.get_mut(&peer) {
            *at = Some(at.map_or(holders, |at| at.max(holders)));
        }
    }

    /// `peer`'s session ended (or it went silent): what it told is forgotten with its
    /// interest, and nothing more is awaited from it.
    pub fn forget_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// Whether this node, a holder of `group`, has the whole interest of every connected
    /// peer for it: each sent a full sync chosen with the assignments by which this node
    /// gained the group's bucket or later ones, and none with assignments newer than
    /// this node's (such a peer no longer tells this node of buckets it is about to
    /// lose). Until then a route it gives (or uses) may miss subscribers: a publish goes
    /// to every peer.
    pub fn complete(&self, group: &str) -> bool {
        let gained = self.gained[usize::from(bucket_of(group))];
        let mine = self.holders.generation();
        self.peers
            .values()
            .all(|at| at.is_some_and(|at| at >= gained && at <= mine))
    }

    /// Whether some peer followed newer assignments than this node: the interest it
    /// sends leaves out the buckets this node is about to lose, so the routes this node
    /// would push now could drop its subscribers.
    pub fn ahead(&self) -> bool {
        let mine = self.holders.generation();
        self.peers.values().any(|at| at.is_some_and(|at| at > mine))
    }

    /// Keeps `groups` (leased ones) to push once no peer is ahead of this node; past
    /// [`MAX_LEASES`] groups the rest are dropped (their cachers' leases run out).
    pub fn defer(&mut self, groups: impl IntoIterator<Item = String>) {
        for group in groups {
            if self.deferred.len() >= MAX_LEASES {
                break;
            }
            self.deferred.insert(group);
        }
    }

    /// The groups deferred, once no peer is ahead of this node any more (it followed
    /// their assignments, or the peer ahead is gone).
    pub fn take_deferred(&mut self) -> Vec<String> {
        if self.ahead() {
            return Vec::new();
        }
        self.deferred.drain().collect()
    }

    /// Where a publish to `group` goes at `now` without asking anyone, or whom to ask;
    /// `held` gives the peers with subscribers of a group this node holds. Also says
    /// whether it is a held group whose route may miss subscribers (this node gained its
    /// bucket before every peer's interest in it came: [`Routes::complete`]).
    pub fn targets(
        &self,
        now: Instant,
        group: &str,
        held: impl FnOnce() -> Nodes,
    ) -> (Targets, bool) {
        let Some(holders) = self.holders.to_ask(group) else {
            let incomplete = !self.complete(group);
            let nodes = held();
            return if incomplete || self.settling(now, group) {
                (Targets::Everyone(nodes), incomplete)
            } else {
                (Targets::Known(nodes), false)
            };
        };
        let me = self.holders.me;
        let targets = match self.cache.get(now, group) {
            Some(cached) => {
                let nodes = cached.iter().copied().filter(|(n, _)| *n != me).collect();
                if self.settling(now, group) {
                    Targets::Everyone(nodes)
                } else {
                    Targets::Known(nodes)
                }
            }
            None => Targets::Ask(holders),
        };
        (targets, false)
    }

    /// A holder's answer to `peer`'s lookup of `group` at `now` (a lease granted when
    /// settled), or `None` when this node does not hold the group (the asker goes on to
    /// the next holder).
    pub fn grant(&mut self, now: Instant, group: &str, peer: NodeId) -> Option<Grant> {
        if self.holders.to_ask(group).is_some() {
            return None;
        }
        if !self.complete(group) {
            // Some peer's interest in the moved bucket has not come yet.
            return Some(Grant {
                settled: false,
                lease: Duration::ZERO,
                tell: None,
            });
        }
        let lease = self.leases.grant(now, group, peer);
        let me = self.holders.me;
        let tell = self
            .holders
            .of(group)
            .and_then(|(owner, replica)| if owner == me { replica } else { Some(owner) })
            .filter(|_| !lease.is_zero());
        Some(Grant {
            settled: true,
            lease,
            tell,
        })
    }

    /// Of `groups` (held here, their interest changed), those to push to their cachers
    /// now, each with the nodes whose lease on it runs at `now`. None while a peer is
    /// ahead of this node ([`Routes::ahead`]): it no longer tells this node of the buckets
    /// this node is losing, so cachers keep their routes until it catches up; the leased
    /// groups are deferred ([`Routes::take_deferred`]).
    pub fn pushes(
        &mut self,
        now: Instant,
        groups: impl IntoIterator<Item = String>,
    ) -> Vec<(String, Vec<NodeId>)> {
        let leased = groups.into_iter().filter_map(|group| {
            let cachers = self.leases.cachers(now, &group);
            (!cachers.is_empty()).then_some((group, cachers))
        });
        if self.ahead() {
            let deferred: Vec<String> = leased.map(|(group, _)| group).collect();
            self.defer(deferred);
            return Vec::new();
        }
        leased.collect()
    }

    /// Whether `group`'s bucket changed holders within [`MOVE_SETTLE`] of `now` (a
    /// publish to it then goes to every peer).
    pub fn settling(&self, now: Instant, group: &str) -> bool {
        self.moved_at[usize::from(bucket_of(group))]
            .is_some_and(|at| now.saturating_duration_since(at) < MOVE_SETTLE)
    }
}

/// Who holds each bucket's interest (its owner and replica), as this node last read the
/// committed assignments. A bucket not assigned yet (a cluster forming) is held by every
/// node: interest goes to all peers, as before assignments existed.
#[derive(Debug, Clone)]
pub struct Holders {
    me: NodeId,
    generation: Epoch,
    table: Vec<Option<(NodeId, Option<NodeId>)>>,
}

impl Holders {
    /// The holders `assignments` name, seen from node `me`.
    pub fn new(me: NodeId, assignments: &Assignments) -> Holders {
        Holders {
            me,
            generation: assignments.generation(),
            table: (0..BUCKETS).map(|b| assignments.holders(b)).collect(),
        }
    }

    /// The assignments' generation this was built from.
    pub fn generation(&self) -> Epoch {
        self.generation
    }

    /// The owner and replica of `group`'s bucket, if assigned.
    pub fn of(&self, group: &str) -> Option<(NodeId, Option<NodeId>)> {
        self.of_bucket(bucket_of(group))
    }

    fn of_bucket(&self, bucket: u16) -> Option<(NodeId, Option<NodeId>)> {
        self.table.get(usize::from(bucket)).copied().flatten()
    }

    /// Whether `node` holds `bucket`'s interest (every node does for an unassigned one).
    pub fn holds_bucket(&self, node: NodeId, bucket: u16) -> bool {
        self.of_bucket(bucket)
            .is_none_or(|(owner, replica)| owner == node || replica == Some(node))
    }

    /// Whether `node` holds `group`'s interest (every node does for an unassigned bucket).
    pub fn holds(&self, node: NodeId, group: &str) -> bool {
        self.holds_bucket(node, bucket_of(group))
    }

    /// Whether this node holds `group`'s interest.
    pub fn mine(&self, group: &str) -> bool {
        self.holds(self.me, group)
    }

    /// The holders to ask for `group`'s route, owner first; `None` when this node holds it
    /// (or nobody is assigned: then every node does).
    pub fn to_ask(&self, group: &str) -> Option<Vec<NodeId>> {
        if self.mine(group) {
            return None;
        }
        let (owner, replica) = self.of(group)?;
        Some(std::iter::once(owner).chain(replica).collect())
    }

    /// The buckets whose holders differ between `self` and `other`.
    pub fn moved(&self, other: &Holders) -> Vec<bool> {
        self.table
            .iter()
            .zip(&other.table)
            .map(|(a, b)| a != b)
            .collect()
    }

    /// `items` split by the peers (of `peers`) that hold each one's group: what each peer
    /// is told. Every peer gets an entry, empty if nothing is for it (deltas keep their
    /// version chain).
    pub fn split<T: Clone>(
        &self,
        peers: &[NodeId],
        items: &[(String, T)],
    ) -> HashMap<NodeId, Vec<(String, T)>> {
        let mut out: HashMap<NodeId, Vec<(String, T)>> =
            peers.iter().map(|p| (*p, Vec::new())).collect();
        for item in items {
            match self.of(&item.0) {
                None => {
                    for part in out.values_mut() {
                        part.push(item.clone());
                    }
                }
                Some((owner, replica)) => {
                    for holder in std::iter::once(owner).chain(replica) {
                        if let Some(part) = out.get_mut(&holder) {
                            part.push(item.clone());
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
