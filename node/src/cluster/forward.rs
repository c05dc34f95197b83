//! The publish path across the mesh: where a group's subscribers are (the interest this
//! node holds, a cached route, or a holder asked once: see [`super::routes`]), the
//! forwards to them, and the cluster-wide counts and listings built the same way.
//!
//! A lookup asks the group's owner, then its replica, each for at most
//! [`LOOKUP_TIMEOUT`]; lookups of one group at once share one question. When no holder
//! answers (both unreachable, or ownership moving), the message goes to every peer, each
//! of which delivers it to whatever subscribers it has: nothing is lost for want of a
//! route, at the cost of the bytes.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_proto::peer::{Forward, NodeId, PeerMessage, Position, Route};
use tokio::sync::{mpsc, oneshot};

use super::mesh::{Cluster, Link};
use super::pending::{Answer, LOOKUP_TIMEOUT};
use super::routes::{Nodes, Targets};
use crate::broker::{Listed, list_matching};
use crate::sync::{lock, read};

/// How long a `PUBSUB CHANNELS` listing waits for the peers' answers.
pub const LISTING_TIMEOUT: Duration = Duration::from_secs(2);
/// Groups one peer lists at most in an answer.
pub const MAX_LISTED: usize = 100_000;
/// How long a publish waits for room in a peer's queue of forwards.
pub const FORWARD_PATIENCE: Duration = Duration::from_secs(2);
/// A peer not heard from for this long (its heartbeats travel on the control stream,
/// never behind forwards) is not waited for: it may be dead, not slow.
pub const FORWARD_LIVENESS: Duration = Duration::from_millis(1500);

impl Cluster {
    /// Where a publish to `group` goes without asking anyone, or whom to ask (the
    /// routes decide, `Routes::targets`; hints add the nodes a subscription made
    /// elsewhere moments ago steers it to).
    pub fn targets(&self, group: &str) -> Targets {
        let now = Instant::now();
        let (mut targets, incomplete) =
            lock(&self.routes).targets(now, group, || self.held_route(group, false));
        if incomplete {
            self.metrics.routes_incomplete.inc();
        }
        if let Some(nodes) = targets.nodes_mut() {
            self.hinted(group, nodes);
        }
        targets
    }

    /// Where a publish to `group` goes, asking a holder if need be (see [`Targets`]).
    pub async fn resolve(&self, group: &str) -> Targets {
        match self.targets(group) {
            Targets::Ask(holders) => match self.ask_holders(group, holders).await {
                // Asked within a move (as this node saw it, or as the holder still hears
                // of it): the counts are the holder's, the message goes to every peer all
                // the same.
                Some(answer)
                    if !answer.settled || lock(&self.routes).settling(Instant::now(), group) =>
                {
                    if !answer.settled {
                        self.metrics.routes_incomplete.inc();
                    }
                    let mut nodes = answer.nodes;
                    self.hinted(group, &mut nodes);
                    Targets::Everyone(nodes)
                }
                Some(mut answer) => {
                    self.hinted(group, &mut answer.nodes);
                    Targets::Known(answer.nodes)
                }
                None => Targets::Everyone(Vec::new()),
            },
            known => known,
        }
    }

    /// The route of a group whose interest this node holds: the peers with subscribers,
    /// and (`with_me`) this node with its own count.
    pub(super) fn held_route(&self, group: &str, with_me: bool) -> Nodes {
        let mut nodes: Nodes = read(&self.remote)
            .nodes_for(group)
            .map(|n| n.iter().collect())
            .unwrap_or_default();
        if with_me {
            let local = self.deps.hub.group_size(group);
            if local > 0 {
                let at = nodes.partition_point(|(n, _)| *n < self.node);
                nodes.insert(at, (self.node, u32::try_from(local).unwrap_or(u32::MAX)));
            }
        }
        nodes
    }

    /// Connections in `group` on peers, as the interest this node holds says.
    pub fn held_count(&self, group: &str) -> usize {
        read(&self.remote)
            .nodes_for(group)
            .map_or(0, |n| n.iter().map(|(_, c)| c as usize).sum())
    }

    /// Asks `holders` in turn for `group`'s route: the peers with subscribers (and how
    /// many); `None` when no holder answered.
    async fn ask_holders(&self, group: &str, holders: Vec<NodeId>) -> Option<Answer> {
        for holder in holders {
            if !self.connected_to(holder) {
                continue;
            }
            let answer = self.ask_route(holder, group);
            if let Ok(Ok(Some(mut answer))) = tokio::time::timeout(LOOKUP_TIMEOUT, answer).await {
                self.metrics.route_lookups.inc();
                answer.nodes.retain(|(n, _)| *n != self.node);
                return Some(answer);
            }
        }
        self.metrics.route_lookup_failures.inc();
        None
    }

    /// Asks `holder` for `group`'s route (or joins a question already asked).
    fn ask_route(&self, holder: NodeId, group: &str) -> oneshot::Receiver<Option<Answer>> {
        let (tx, rx) = oneshot::channel();
        let asked = lock(&self.lookups).ask(Instant::now(), group, tx, || {
            self.next_id.fetch_add(1, Ordering::Relaxed)
        });
        let Some(id) = asked else {
            return rx; // joined the question out
        };
        let lookup = Route::Lookup {
            id,
            group: group.to_owned(),
        };
        if !self.send(holder, PeerMessage::Route(lookup)) {
            self.answered(id, None, Duration::ZERO);
        }
        rx
    }

    /// A holder's answer (or none: `answer` `None`) to lookup `id`: cached for `lease`
    /// from when it was asked (a holder gives none while unsettled), and handed to every
    /// waiter.
    pub(super) fn answered(&self, id: u64, answer: Option<Answer>, lease: Duration) {
        let Some(pending) = lock(&self.lookups).answered(id) else {
            return;
        };
        if let Some(answer) = &answer {
            lock(&self.routes).cache.put(
                pending.asked,
                &pending.group,
                answer.nodes.clone(),
                lease,
            );
        }
        for waiter in pending.waiters {
            let _ = waiter.send(answer.clone());
        }
    }

    /// Lookups asked longer ago than [`LOOKUP_TIMEOUT`] are given up (their waiters
    /// have moved on to the next holder); called every heartbeat.
    pub(super) fn expire_lookups(&self) {
        let now = Instant::now();
        lock(&self.lookups).expire(now);
        let mut routes = lock(&self.routes);
        routes.cache.expire(now);
        routes.leases.expire(now);
    }

    /// Serves a route message from `peer`.
    pub(super) fn on_route(&self, peer: NodeId, message: Route) {
        match message {
            Route::Lookup { id, group } => {
                // The route is read under the routes' lock, as the lease is granted.
                let (grant, nodes) = {
                    let mut routes = lock(&self.routes);
                    let grant = routes.grant(Instant::now(), &group, peer);
                    (grant, grant.map(|_| self.held_route(&group, true)))
                };
                let (lease, replica, settled) = grant.map_or((Duration::ZERO, None, true), |g| {
                    (g.lease, g.tell, g.settled)
                });
                // The other holder pushes updates too: the cacher keeps hearing of new
                // subscribers while this one is dead and not yet replaced.
                if let Some(other) = replica {
                    let note = Route::Lease {
                        group: group.clone(),
                        node: peer,
                    };
                    self.send(other, PeerMessage::Route(note));
                }
                let answer = Route::Answer {
                    id,
                    group,
                    nodes,
                    lease_ms: lease.as_millis() as u64,
                    settled,
                };
                self.send(peer, PeerMessage::Route(answer));
            }
            Route::Answer {
                id,
                nodes,
                lease_ms,
                settled,
                ..
            } => self.answered(
                id,
                nodes.map(|nodes| Answer { nodes, settled }),
                Duration::from_millis(lease_ms),
            ),
            Route::Update { group, nodes } => lock(&self.routes).cache.update(&group, nodes),
            Route::Lease { group, node } => {
                let mut routes = lock(&self.routes);
                if routes.holders.to_ask(&group).is_none() {
                    routes.leases.grant(Instant::now(), &group, node);
                }
            }
            Route::Groups { id, pattern } => {
                let (groups, complete) = self.local_groups(pattern.as_deref());
                let answer = Route::GroupsAnswer {
                    id,
                    groups,
                    complete,
                };
                self.send(peer, PeerMessage::Route(answer));
            }
            Route::GroupsAnswer {
                id,
                groups,
                complete,
            } => {
                if let Some(tx) = lock(&self.listings).get(&id) {
                    let _ = tx.try_send((groups, complete));
                }
            }
        }
    }

    /// Pushes the current route of each of `groups` (whose interest this node holds)
    /// to the nodes whose lease on it runs.
    pub(super) fn push_routes(&self, groups: impl IntoIterator<Item = String>) {
        let pushes = lock(&self.routes).pushes(Instant::now(), groups);
        for (group, cachers) in pushes {
            let nodes = self.held_route(&group, true);
            for node in cachers {
                let update = Route::Update {
                    group: group.clone(),
                    nodes: nodes.clone(),
                };
                self.send(node, PeerMessage::Route(update));
            }
        }
    }

    /// This node's groups matching `pattern`, within the listing bounds; false when they
    /// cut it short.
    fn local_groups(&self, pattern: Option<&[u8]>) -> (Vec<String>, bool) {
        let names = self.deps.hub.group_names();
        let (groups, end) = list_matching(names.iter().map(|n| &**n), pattern, MAX_LISTED);
        (groups, end == Listed::Whole)
    }

    /// Every group with subscribers on some peer matching `pattern`, as the peers answer
    /// within [`LISTING_TIMEOUT`]; false when a peer did not answer or stopped at its
    /// bounds.
    pub async fn peer_groups(&self, pattern: Option<&[u8]>) -> (BTreeSet<String>, bool) {
        let peers: Vec<NodeId> = lock(&self.table).links().map(|(id, _)| id).collect();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel(peers.len().max(1));
        lock(&self.listings).insert(id, tx);
        let mut asked = 0;
        for peer in peers {
            let query = Route::Groups {
                id,
                pattern: pattern.map(Bytes::copy_from_slice),
            };
            if self.send(peer, PeerMessage::Route(query)) {
                asked += 1;
            }
        }
        let mut all = BTreeSet::new();
        let mut complete = true;
        let deadline = tokio::time::Instant::now() + LISTING_TIMEOUT;
        let mut answered = 0;
        while answered < asked {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some((groups, whole))) => {
                    all.extend(groups);
                    complete &= whole;
                    answered += 1;
                }
                _ => {
                    complete = false;
                    break;
                }
            }
        }
        lock(&self.listings).remove(&id);
        (all, complete)
    }

    /// Sends a message published here as `targets` say. A peer whose queue of forwards
    /// is full ([`super::mesh::PEER_QUEUE_BYTES`]: it reads slower than this node
    /// publishes) is waited for, within [`FORWARD_PATIENCE`], as long as it was heard from
    /// within [`FORWARD_LIVENESS`]: the publisher is slowed down to the pace of the
    /// subscribers' nodes instead of their clients being cut. A forward that still does
    /// not fit is dropped and counted. Returns the connections it was routed to on peers
    /// (as far as known when it goes to every peer).
    pub async fn forward(
        &self,
        group: &str,
        payload: &Bytes,
        text: bool,
        targets: &Targets,
    ) -> usize {
        let list = self.target_list(targets);
        let (mut routed, blocked) = self.offer_forwards(group, payload, text, None, &list);
        if blocked.is_empty() {
            return routed;
        }
        self.metrics.paced_forwards.inc();
        let deadline = tokio::time::Instant::now() + FORWARD_PATIENCE;
        for (node, count, link, message) in blocked {
            let alive = self
                .last_seen(node)
                .is_some_and(|ago| ago < FORWARD_LIVENESS);
            if alive && link.forward_within(message, payload.len(), deadline).await {
                routed += count as usize;
                self.forwarded(payload.len());
            } else {
                self.metrics.peer_queue_drops.inc();
            }
        }
        routed
    }

    /// The peers (and counts) `targets` name; every connected peer when it says so.
    fn target_list(&self, targets: &Targets) -> Vec<(NodeId, u32)> {
        match targets {
            Targets::Known(nodes) => nodes.clone(),
            Targets::Everyone(_) | Targets::Ask(_) => {
                let known = targets.counts();
                let count_of =
                    |id: NodeId| known.iter().find(|(n, _)| *n == id).map_or(0, |(_, c)| *c);
                lock(&self.table)
                    .links()
                    .map(|(id, _)| (id, count_of(id)))
                    .collect()
            }
        }
    }

    /// A positioned message of a history group, from its owner (which holds the group's
    /// interest): once to every peer with subscribers for the group and to each of
    /// `also` (nodes recovering it). It never waits (the owner's one task must not): a
    /// peer whose queue is full misses it, and its positioned clients see the gap and
    /// recover. Returns the connections it was routed to on peers with subscribers.
    pub fn forward_positioned(
        &self,
        group: &str,
        payload: &Bytes,
        text: bool,
        position: Position,
        also: &[NodeId],
    ) -> usize {
        let mut targets = self.held_route(group, false);
        for node in also {
            if *node != self.node && !targets.iter().any(|(n, _)| n == node) {
                targets.push((*node, 0));
            }
        }
        let (routed, blocked) = self.offer_forwards(group, payload, text, Some(position), &targets);
        for _ in blocked {
            self.metrics.peer_queue_drops.inc();
        }
        routed
    }

    /// Counts a forward of `bytes` queued for a peer.
    fn forwarded(&self, bytes: usize) {
        self.metrics.forwarded_messages.inc();
        self.metrics.forwarded_bytes.add(bytes as u64);
    }

    /// Queues one `Forward` for each of `targets` that has room; returns the connections
    /// it was routed to on those, and the targets without room (with their message).
    #[allow(clippy::type_complexity)]
    fn offer_forwards(
        &self,
        group: &str,
        payload: &Bytes,
        text: bool,
        position: Option<Position>,
        targets: &[(NodeId, u32)],
    ) -> (usize, Vec<(NodeId, u32, Link, PeerMessage)>) {
        let mut routed = 0usize;
        let mut blocked = Vec::new();
        if targets.is_empty() {
            return (0, blocked);
        }
        let table = lock(&self.table);
        for (node, count) in targets {
            let Some(link) = table.link(*node) else {
                continue;
            };
            let message = PeerMessage::Forward(vec![Forward {
                group: group.to_owned(),
                payload: payload.clone(),
                text,
                origin: self.node,
                position,
            }]);
            match link.try_forward(message, payload.len()) {
                Ok(()) => {
                    routed += *count as usize;
                    self.forwarded(payload.len());
                }
                Err(message) => blocked.push((*node, *count, link.clone(), *message)),
            }
        }
        (routed, blocked)
    }
}
