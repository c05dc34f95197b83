//! A connection's presence subscriptions (`presence_subscribe`): which users it follows,
//! and for each the event id it has seen up to. The session asks for what is pending
//! when the events it follows move, and writes the frames it gets.
//!
//! - [`Follow`]: presence in the one registry; reads this node's replica (sans-IO).
//! - [`ShardedFollow`]: presence in shards; each user's events come from its shard's
//!   feed (`crate::raft::shards::feeds`), and a reset from the shard itself.
//! - [`Followed`]: either, as the session holds it, counted against the node's bound
//!   ([`NodeFollows`]).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures_util::future::select_all;
use tokio::sync::watch;

use crate::presence::SharedReplica;
use crate::presence::events::{EventId, Origin, Read, event_json, reset_json, reset_json_in};
use crate::presence::shards::Shard;
use crate::raft::network::Events;
use crate::raft::shards::{Feed, Shards};

/// Users one connection may follow at once.
pub const MAX_FOLLOWED_USERS: usize = 32;
/// Users all of a node's connections may follow together (about 100 bytes each).
pub const MAX_NODE_FOLLOWS: usize = 262_144;

/// The users followed by all of a node's connections, within [`MAX_NODE_FOLLOWS`].
#[derive(Debug)]
pub struct NodeFollows {
    held: AtomicUsize,
    max: usize,
}

impl Default for NodeFollows {
    fn default() -> Self {
        NodeFollows::new(MAX_NODE_FOLLOWS)
    }
}

impl NodeFollows {
    pub fn new(max: usize) -> Self {
        NodeFollows {
            held: AtomicUsize::new(0),
            max,
        }
    }

    /// One more followed user, if the node has room.
    fn take(&self) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::AcqRel);
    }

    /// Users followed now.
    pub fn len(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }

    /// Whether nobody is followed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
/// Events read from the ring per look.
const READ_BATCH: usize = 256;

/// See the module header. Boxed in the session: most connections follow nobody.
#[derive(Debug)]
pub struct Follow {
    /// Each followed user and the id of the last event it was sent (or its reset's).
    users: BTreeMap<String, EventId>,
    newest: watch::Receiver<EventId>,
}

impl Follow {
    pub fn new(replica: &SharedReplica) -> Follow {
        Follow {
            users: BTreeMap::new(),
            newest: replica.subscribe(),
        }
    }

    /// Follows `user`: from `since` (the events after it come with the next
    /// [`Follow::pending`]), or from now, with a reset frame carrying the user's
    /// connections. `Err` when the connection follows too many users.
    pub fn add(
        &mut self,
        replica: &SharedReplica,
        user: String,
        since: Option<EventId>,
    ) -> Result<Vec<String>, String> {
        if !self.users.contains_key(&user) && self.users.len() >= MAX_FOLLOWED_USERS {
            return Err(format!(
                "a connection follows at most {MAX_FOLLOWED_USERS} users' presence"
            ));
        }
        match since {
            Some(since) => {
                self.users.insert(user, since);
                Ok(Vec::new())
            }
            None => {
                let (at, records) = replica.reset(Some(&user));
                let frame = frame(&reset_json(at, Some(&user), &records));
                self.users.insert(user, at);
                Ok(vec![frame])
            }
        }
    }

    /// Stops following `user`; whether it was followed.
    pub fn remove(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// Stops following anyone but `user` (a refreshed token lost the `presence` claim).
    pub fn retain_only(&mut self, user: &str) {
        self.users.retain(|u, _| u == user);
    }

    /// Whether nobody is followed.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Users followed.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether `user` is followed.
    pub fn follows(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    /// Waits until the replica records new events; false if it never will.
    pub async fn changed(&mut self) -> bool {
        self.newest.changed().await.is_ok()
    }

    /// The frames of every event of a followed user after what it was sent, oldest first
    /// (each user's read at the cost of its own events, not the ring's); a user behind
    /// what the node keeps gets a reset instead of what it missed.
    pub fn pending(&mut self, replica: &SharedReplica) -> Vec<String> {
        self.newest.borrow_and_update();
        let mut frames = Vec::new();
        let mut events = Vec::new();
        let mut capped = false;
        for (user, seen) in self.users.iter_mut() {
            // Bounded: a user's events come READ_BATCH at a time, at most this many times
            // per look (the rest at the next).
            for round in 0..MAX_BATCHES_PER_LOOK {
                match replica.user_events_after(user, *seen, READ_BATCH) {
                    Read::Behind => {
                        let (at, records) = replica.reset(Some(user));
                        frames.push(frame(&reset_json(at, Some(user), &records)));
                        *seen = at;
                        break;
                    }
                    Read::Events(found, upto) => {
                        let full = found.len() == READ_BATCH;
                        events.extend(found);
                        *seen = upto;
                        if !full {
                            break;
                        }
                        capped |= round + 1 == MAX_BATCHES_PER_LOOK;
                    }
                }
            }
        }
        if capped {
            // More is owed than one look writes: look again without waiting for news.
            self.newest.mark_changed();
        }
        // Each user's events in order; across users, by id within this look.
        events.sort_by_key(|e| e.id);
        frames.extend(
            events
                .iter()
                .map(|e| frame(&serde_json::to_string(e).unwrap_or_default())),
        );
        frames
    }
}

/// Why a user could not be followed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowError {
    /// The connection follows [`MAX_FOLLOWED_USERS`] already.
    TooMany(String),
    /// The user's shard cannot be read now.
    Unavailable(String),
    /// `since` is not a position of the user's shard.
    BadSince(String),
}

/// The users one connection follows, in the one registry or in shards, each counted
/// against the node's bound while followed.
#[derive(Debug)]
pub struct Followed {
    inner: Inner,
    node: Arc<NodeFollows>,
}

#[derive(Debug)]
enum Inner {
    One(Follow),
    Sharded(ShardedFollow),
}

impl Followed {
    /// Follows in the one registry.
    pub fn one(follow: Follow, node: Arc<NodeFollows>) -> Self {
        Followed {
            inner: Inner::One(follow),
            node,
        }
    }

    /// Follows in shards.
    pub fn sharded(follow: ShardedFollow, node: Arc<NodeFollows>) -> Self {
        Followed {
            inner: Inner::Sharded(follow),
            node,
        }
    }

    fn len(&self) -> usize {
        match &self.inner {
            Inner::One(f) => f.len(),
            Inner::Sharded(f) => f.len(),
        }
    }

    fn follows(&self, user: &str) -> bool {
        match &self.inner {
            Inner::One(f) => f.follows(user),
            Inner::Sharded(f) => f.follows(user),
        }
    }

    /// Follows `user` from `since` (an event id as the client gave it), or from now with
    /// a reset. Returns the frames owed (to the users followed already, then the new
    /// one's), which go out whether or not the user could be followed.
    pub async fn add(
        &mut self,
        replica: &SharedReplica,
        user: String,
        since: Option<&str>,
    ) -> (Vec<String>, Result<(), FollowError>) {
        // A new user takes the node's room first; given back if it is not followed.
        let new = !self.follows(&user);
        if new && !self.node.take() {
            let frames = self.pending(replica).await;
            let why =
                format!("this node follows {MAX_NODE_FOLLOWS} users' presence already: try later");
            return (frames, Err(FollowError::TooMany(why)));
        }
        let before = self.len();
        let (frames, added) = match &mut self.inner {
            Inner::One(follow) => {
                let mut frames = follow.pending(replica);
                let since = since.map(str::parse::<EventId>).transpose();
                let added = since.map_err(FollowError::BadSince).and_then(|since| {
                    follow
                        .add(replica, user, since)
                        .map_err(FollowError::TooMany)
                });
                match added {
                    Ok(reset) => {
                        frames.extend(reset);
                        frames.extend(follow.pending(replica));
                        (frames, Ok(()))
                    }
                    Err(e) => (frames, Err(e)),
                }
            }
            Inner::Sharded(follow) => {
                let mut frames = follow.pending().await;
                match follow.add(user, since).await {
                    Ok(reset) => {
                        frames.extend(reset);
                        // What the shard's feed holds already after the position.
                        frames.extend(follow.pending().await);
                        (frames, Ok(()))
                    }
                    Err(e) => (frames, Err(e)),
                }
            }
        };
        if new && self.len() == before {
            self.node.give(1);
        }
        (frames, added)
    }

    /// Stops following `user`; whether it was followed.
    pub fn remove(&mut self, user: &str) -> bool {
        let removed = match &mut self.inner {
            Inner::One(f) => f.remove(user),
            Inner::Sharded(f) => f.remove(user),
        };
        if removed {
            self.node.give(1);
        }
        removed
    }

    /// Stops following anyone but `user`.
    pub fn retain_only(&mut self, user: &str) {
        let before = self.len();
        match &mut self.inner {
            Inner::One(f) => f.retain_only(user),
            Inner::Sharded(f) => f.retain_only(user),
        }
        self.node.give(before - self.len());
    }

    /// Whether nobody is followed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until the events followed move; false if they never will.
    pub async fn changed(&mut self) -> bool {
        match &mut self.inner {
            Inner::One(f) => f.changed().await,
            Inner::Sharded(f) => f.changed().await,
        }
    }

    /// The frames owed to the users followed, oldest first.
    pub async fn pending(&mut self, replica: &SharedReplica) -> Vec<String> {
        match &mut self.inner {
            Inner::One(f) => f.pending(replica),
            Inner::Sharded(f) => f.pending().await,
        }
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        self.node.give(self.len());
    }
}

/// Users followed in a sharded registry: each with its shard and the position it was
/// sent up to, and the feeds of those shards.
pub struct ShardedFollow {
    shards: Arc<Shards>,
    users: BTreeMap<String, (Shard, EventId)>,
    feeds: BTreeMap<Shard, (Arc<Feed>, watch::Receiver<EventId>)>,
}

impl std::fmt::Debug for ShardedFollow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardedFollow")
            .field("users", &self.users)
            .finish_non_exhaustive()
    }
}

impl ShardedFollow {
    pub fn new(shards: Arc<Shards>) -> ShardedFollow {
        ShardedFollow {
            shards,
            users: BTreeMap::new(),
            feeds: BTreeMap::new(),
        }
    }

    /// Follows `user` from `since` (`<shard>:<index>-<n>` or `<index>-<n>`, a position of
    /// the user's shard), or from now with a reset frame of the user's connections.
    async fn add(&mut self, user: String, since: Option<&str>) -> Result<Vec<String>, FollowError> {
        if !self.users.contains_key(&user) && self.users.len() >= MAX_FOLLOWED_USERS {
            return Err(FollowError::TooMany(format!(
                "a connection follows at most {MAX_FOLLOWED_USERS} users' presence"
            )));
        }
        let shard = self.shards.shard_of(&user);
        let since = match since {
            None => None,
            Some(text) => Some(match text.split_once(':') {
                Some(_) => {
                    let id: crate::presence::events::ShardEventId =
                        text.parse().map_err(FollowError::BadSince)?;
                    if id.shard != shard {
                        return Err(FollowError::BadSince(format!(
                            "'{text}' is a position of shard {}; user {user}'s presence is in shard {shard}",
                            id.shard
                        )));
                    }
                    id.id
                }
                None => text.parse().map_err(FollowError::BadSince)?,
            }),
        };
        let shards = self.shards.clone();
        self.feeds.entry(shard).or_insert_with(|| {
            let feed = shards.feed(shard, since);
            let seen = feed.subscribe();
            (feed, seen)
        });
        match since {
            Some(since) => {
                self.users.insert(user, (shard, since));
                Ok(Vec::new())
            }
            None => {
                let (at, frame) = self
                    .reset(shard, &user)
                    .await
                    .map_err(FollowError::Unavailable)?;
                self.users.insert(user, (shard, at));
                Ok(vec![frame])
            }
        }
    }

    /// `user`'s connections now, as a reset frame, and its position.
    async fn reset(&self, shard: Shard, user: &str) -> Result<(EventId, String), String> {
        let reset = self
            .shards
            .events(
                shard,
                Origin::Reset,
                Some(user),
                0,
                std::time::Duration::ZERO,
            )
            .await;
        match reset {
            Ok(Events::Reset(at, records)) => Ok((
                at,
                frame(&reset_json_in(Some(shard), at, Some(user), &records)),
            )),
            Ok(Events::After(..)) => Err("the shard answered without its state".into()),
            Err(e) => Err(format!("presence unavailable now: {e}")),
        }
    }

    fn remove(&mut self, user: &str) -> bool {
        let removed = self.users.remove(user).is_some();
        self.drop_unused_feeds();
        removed
    }

    fn retain_only(&mut self, user: &str) {
        self.users.retain(|u, _| u == user);
        self.drop_unused_feeds();
    }

    fn drop_unused_feeds(&mut self) {
        let users = &self.users;
        self.feeds
            .retain(|shard, _| users.values().any(|(s, _)| s == shard));
    }

    fn len(&self) -> usize {
        self.users.len()
    }

    fn follows(&self, user: &str) -> bool {
        self.users.contains_key(user)
    }

    async fn changed(&mut self) -> bool {
        if self.feeds.is_empty() {
            return false;
        }
        let waits = self
            .feeds
            .values_mut()
            .map(|(_, seen)| Box::pin(seen.changed()));
        let (result, _, _) = select_all(waits).await;
        result.is_ok()
    }

    /// The frames owed: each user's events after its position, or a reset when its
    /// shard's feed no longer has them.
    async fn pending(&mut self) -> Vec<String> {
        for (_, seen) in self.feeds.values_mut() {
            seen.borrow_and_update();
        }
        let mut frames = Vec::new();
        let users: Vec<String> = self.users.keys().cloned().collect();
        for user in users {
            // Bounded: a user's events come READ_BATCH at a time, at most this many times
            // per look (the rest at the next).
            let mut owed = false;
            for round in 0..MAX_BATCHES_PER_LOOK {
                let Some(&(shard, seen)) = self.users.get(&user) else {
                    break;
                };
                let Some((feed, _)) = self.feeds.get(&shard) else {
                    break;
                };
                match feed.user_events_after(&user, seen, READ_BATCH) {
                    Read::Behind => {
                        if let Ok((at, frame)) = self.reset(shard, &user).await {
                            frames.push(frame);
                            self.users.insert(user.clone(), (shard, at));
                        }
                        break;
                    }
                    Read::Events(events, upto) => {
                        for event in &events {
                            frames.push(frame(&event_json(event, Some(shard))));
                        }
                        self.users.insert(user.clone(), (shard, upto));
                        if events.len() < READ_BATCH {
                            break;
                        }
                        owed = round + 1 == MAX_BATCHES_PER_LOOK;
                    }
                }
            }
            // More is owed than one look writes: look again without waiting for news.
            if owed
                && let Some(&(shard, _)) = self.users.get(&user)
                && let Some((_, seen)) = self.feeds.get_mut(&shard)
            {
                seen.mark_changed();
            }
        }
        frames
    }
}

/// Batches of one user's events written per look.
const MAX_BATCHES_PER_LOOK: usize = 16;

/// A `presence_event` frame around an event's JSON.
fn frame(event: &str) -> String {
    format!(r#"{{"type":"presence_event","event":{event}}}"#)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(replica: &SharedReplica, node: &Arc<NodeFollows>) -> Followed {
        Followed::one(Follow::new(replica), node.clone())
    }

    #[tokio::test]
    async fn the_node_bounds_the_users_its_connections_follow_and_gets_them_back() {
        let replica = SharedReplica::default();
        let node = Arc::new(NodeFollows::new(3));
        let mut a = follow(&replica, &node);
        let mut b = follow(&replica, &node);
        for user in ["1", "2", "1"] {
            assert_eq!(a.add(&replica, user.into(), None).await.1, Ok(()));
        }
        assert_eq!(node.len(), 2, "a user followed twice counts once");
        assert_eq!(b.add(&replica, "3".into(), None).await.1, Ok(()));
        let (_, refused) = b.add(&replica, "4".into(), None).await;
        assert!(
            matches!(&refused, Err(FollowError::TooMany(why)) if why.contains("this node")),
            "{refused:?}"
        );
        // A bad `since` takes nothing.
        assert!(a.remove("2"));
        let (_, bad) = b.add(&replica, "5".into(), Some("x")).await;
        assert!(matches!(bad, Err(FollowError::BadSince(_))));
        assert_eq!(node.len(), 2);
        assert_eq!(b.add(&replica, "5".into(), None).await.1, Ok(()));
        // Dropping what was left, and keeping only one, give the rest back.
        b.retain_only("5");
        assert_eq!(node.len(), 2);
        drop(a);
        drop(b);
        assert!(node.is_empty());
    }
}
