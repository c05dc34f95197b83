//! A connection's presence subscriptions (`presence_subscribe`): which users it follows,
//! and for each the event id it has seen up to. Sans-IO: the session asks for what is
//! pending when the replica's newest event changes, and writes the frames it gets.

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::presence::SharedReplica;
use crate::presence::events::{EventId, Read, reset_json};

/// Users one connection may follow at once.
pub const MAX_FOLLOWED_USERS: usize = 32;
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

    /// Waits until the replica records new events; false if it never will.
    pub async fn changed(&mut self) -> bool {
        self.newest.changed().await.is_ok()
    }

    /// The frames of every event of a followed user after what it was sent, oldest first;
    /// a user behind what the node keeps gets a reset instead of what it missed.
    pub fn pending(&mut self, replica: &SharedReplica) -> Vec<String> {
        self.newest.borrow_and_update();
        let mut frames = Vec::new();
        loop {
            let Some(&oldest) = self.users.values().min() else {
                return frames;
            };
            let users = &self.users;
            let keep = |e: &crate::presence::events::Event| {
                users.get(&e.user).is_some_and(|seen| e.id > *seen)
            };
            match replica.events_after(oldest, READ_BATCH, keep) {
                Read::Behind => {
                    let (_, _, floor) = replica.ring_stats();
                    for (user, seen) in self.users.iter_mut() {
                        if *seen < floor {
                            let (at, records) = replica.reset(Some(user));
                            frames.push(frame(&reset_json(at, Some(user), &records)));
                            *seen = at;
                        }
                    }
                }
                Read::Events(events, upto) => {
                    for event in &events {
                        frames.push(frame(&serde_json::to_string(event).unwrap_or_default()));
                    }
                    for seen in self.users.values_mut() {
                        *seen = (*seen).max(upto);
                    }
                    if events.len() < READ_BATCH {
                        return frames;
                    }
                }
            }
        }
    }
}

/// A `presence_event` frame around an event's JSON.
fn frame(event: &str) -> String {
    format!(r#"{{"type":"presence_event","event":{event}}}"#)
}
