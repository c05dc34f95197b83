//! Feeds: each shard's presence events as this node's readers see them (WebSocket
//! clients following a user, Server-Sent Event streams).
//!
//! A [`Feed`] is a small ring mirroring one shard's newest events, kept by one task that
//! long-polls the shard ([`Shards::events`]: locally when this node hosts it, else from
//! one of its voters) while the feed has readers, and stops [`IDLE_AFTER`] after the last
//! one left. However many readers a node has, each shard is followed once: a node pays
//! for the events of the shards its readers follow, and only while they do. Event ids
//! are the shard's log positions, the same on every member, so a feed does not care
//! which member answers, nor whether this node starts or stops hosting the shard.
//!
//! A reader behind what the feed keeps (it subscribed with an older position, or the
//! feed was reset because the shard's members had moved past it) starts over from a
//! reset it asks of the shard itself.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::Shards;
use crate::presence::events::{Event, EventId, Origin, Read, Ring};
use crate::presence::shards::Shard;
use crate::raft::consensus::MAX_EVENTS_PER_REPLY;
use crate::raft::network::Events;
use crate::sync::{lock, read, write};

/// Events a feed keeps, and at most this many bytes of them.
pub const FEED_EVENTS: usize = 2048;
pub const FEED_BYTES: usize = 512 * 1024;
/// A feed without readers for this long stops following its shard.
pub const IDLE_AFTER: Duration = Duration::from_secs(30);
/// How long one poll of the shard waits for a new event.
const POLL_WAIT: Duration = Duration::from_secs(5);
/// The pause after a failed poll (the shard unreachable).
const RETRY: Duration = Duration::from_millis(250);

/// See the module header.
#[derive(Debug)]
pub struct Feed {
    shard: Shard,
    ring: RwLock<Ring>,
    newest: watch::Sender<EventId>,
}

impl Feed {
    fn new(shard: Shard, floor: EventId) -> Feed {
        Feed {
            shard,
            ring: RwLock::new(Ring::new(FEED_EVENTS, FEED_BYTES, floor)),
            newest: watch::Sender::new(floor),
        }
    }

    /// The shard this feed follows.
    pub fn shard(&self) -> Shard {
        self.shard
    }

    /// The position of the newest event, changing whenever events arrive.
    pub fn subscribe(&self) -> watch::Receiver<EventId> {
        self.newest.subscribe()
    }

    /// Up to `max` events after `cursor` that pass `keep`, or [`Read::Behind`].
    pub fn events_after(&self, cursor: EventId, max: usize, keep: impl Fn(&Event) -> bool) -> Read {
        read(&self.ring).after(cursor, max, keep)
    }

    /// Up to `max` of `user`'s events after `cursor` (at the cost of those), or
    /// [`Read::Behind`].
    pub fn user_events_after(&self, user: &str, cursor: EventId, max: usize) -> Read {
        read(&self.ring).after_user(user, cursor, max)
    }

    fn push(&self, events: Vec<Event>, seen: EventId) {
        let newest = {
            let mut ring = write(&self.ring);
            let fresh: Vec<Event> = events
                .into_iter()
                .filter(|e| e.id > ring.newest())
                .collect();
            ring.push(fresh);
            if seen > ring.newest() && ring.is_empty() {
                // Nothing kept yet and the shard is further on: start there.
                ring.restart_at(seen);
            }
            ring.newest()
        };
        self.newest.send_if_modified(|n| {
            let moved = *n != newest;
            *n = newest;
            moved
        });
    }

    fn restart_at(&self, at: EventId) {
        write(&self.ring).restart_at(at);
        self.newest.send_replace(at);
    }
}

impl Shards {
    /// The feed of `shard`, started (from `since`, else from now) if no reader has it.
    pub fn feed(self: &Arc<Self>, shard: Shard, since: Option<EventId>) -> Arc<Feed> {
        let mut feeds = lock(&self.feeds);
        if let Some(feed) = feeds.get(&shard) {
            return feed.clone();
        }
        let feed = Arc::new(Feed::new(shard, since.unwrap_or_default()));
        feeds.insert(shard, feed.clone());
        let from = since.map_or(Origin::Now, Origin::After);
        self.runtime.spawn(follow(self.clone(), feed.clone(), from));
        feed
    }
}

/// Keeps `feed` following its shard from `from` while it has readers.
async fn follow(shards: Arc<Shards>, feed: Arc<Feed>, mut from: Origin) {
    let shutdown = shards.lifecycle.shutdown_token().clone();
    let mut idle_since: Option<Instant> = None;
    loop {
        // Held by the feeds map and this task only: no reader.
        if Arc::strong_count(&feed) <= 2 {
            let since = *idle_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= IDLE_AFTER {
                let mut feeds = lock(&shards.feeds);
                if Arc::strong_count(&feed) <= 2 {
                    feeds.remove(&feed.shard);
                    return;
                }
            }
        } else {
            idle_since = None;
        }
        let poll = shards.events(feed.shard, from, None, MAX_EVENTS_PER_REPLY, POLL_WAIT);
        let answer = tokio::select! {
            _ = shutdown.cancelled() => return,
            answer = poll => answer,
        };
        match answer {
            Ok(Events::After(events, seen)) => {
                if from == Origin::Now {
                    feed.restart_at(seen);
                } else {
                    feed.push(events.into_iter().map(Into::into).collect(), seen);
                }
                from = Origin::After(seen);
            }
            Ok(Events::Reset(at, _)) => {
                // The shard moved past this feed: its readers behind start over.
                feed.restart_at(at);
                from = Origin::After(at);
            }
            Err(_) => {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(RETRY) => {}
                }
            }
        }
    }
}
