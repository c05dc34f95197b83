//! The hub: this node's subscription table behind its lock, and the local half of the
//! publish path.
//!
//! - [`Outlet`] (`queue.rs`): the hub's handle on one WebSocket connection, its
//!   [`ClientQueue`] bounded in messages and bytes, and a way to have it closed.
//! - [`Encoded`] (`encoded.rs`): a published message encoded once, shared by every
//!   recipient.
//! - [`Hub`]: the [`Broker`] behind a short-held `RwLock`. A publish takes the read lock
//!   only to clone the group's fan-out slice (see [`Broker::fanout`]) and fans out after
//!   releasing it, so a connect, a subscribe or a gossip round never waits behind a fan-out
//!   to 10 000 sockets. Introspection copies names out and filters outside the lock.
//!
//! The cluster-wide publish (local fan-out plus forwarding to peers) is `crate::router`'s;
//! the hub knows nothing of peers.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use switchboard_proto::client::CloseCode;

use crate::broker::{Broker, BrokerLimits, ConnId, JoinError, LeaveError, Permissions};
use crate::metrics::{Metrics, Row};
use crate::sync::{lock, read, write};

mod encoded;
mod queue;

pub use encoded::{Encoded, Positioned, is_text};
pub use queue::{ClientQueue, Inbox, Offer, Outbound, Outlet, SLOW_CONSUMER_PATIENCE};

/// A batch of interest changes: the version it brings the table to, and each changed
/// group with its new local count (0 = gone).
pub type InterestDelta = (u64, Vec<(String, u32)>);
/// The whole interest: its version, and every group with its local count.
pub type InterestSnapshot = (u64, BTreeMap<String, u32>);

/// Which local connections [`Hub::act`] acts on.
#[derive(Debug, Clone, Copy)]
pub enum Local<'a> {
    Connection(ConnId),
    User(&'a str),
}

/// What [`Hub::act`] does to them (the server asks: an admin, Django, the backend).
#[derive(Debug, Clone, Copy)]
pub enum Act<'a> {
    /// Join a group, whatever the token permits.
    Join(&'a str),
    /// Leave a group (never the user group).
    Leave(&'a str),
    /// Deliver a message to the connection alone; `label` names it on a positioned
    /// connection's `message` frame (the connection's channel name).
    Send {
        message: &'a Encoded,
        label: &'a str,
    },
    /// Close with this code and reason.
    Close { code: u16, reason: &'a str },
    /// Close with 4001 if the connection's token was issued before `before`.
    Revoke { before: u64 },
}

/// See the module header.
#[derive(Debug)]
pub struct Hub {
    broker: RwLock<Broker<Outlet>>,
    metrics: Arc<Metrics>,
    /// The reasons of closes asked with [`Act::Close`] or [`Act::Revoke`], taken by the
    /// connection's task when it closes (an outlet holds only the code, so that every
    /// idle connection does not carry room for a reason).
    reasons: Mutex<HashMap<ConnId, Box<str>>>,
}

impl Hub {
    pub fn new(limits: BrokerLimits, metrics: Arc<Metrics>) -> Self {
        Hub {
            broker: RwLock::new(Broker::new(limits)),
            metrics,
            reasons: Mutex::new(HashMap::new()),
        }
    }

    /// Acts on local connections at the server's request; returns how many it reached
    /// (joined, left, queued for, asked to close).
    pub fn act(&self, target: Local<'_>, act: Act<'_>) -> usize {
        let ids = match target {
            Local::Connection(id) => vec![id],
            Local::User(user) => read(&self.broker).connections_of(user),
        };
        let mut reached = 0;
        for id in ids {
            let done = match act {
                Act::Join(group) => write(&self.broker).join_any(id, group).is_ok(),
                Act::Leave(group) => write(&self.broker).leave(id, group).is_ok(),
                Act::Send { message, label } => {
                    let Some(outlet) = read(&self.broker).handle_of(id) else {
                        continue;
                    };
                    match outlet.offer(label, message) {
                        Offer::Queued => {
                            self.account(std::time::Duration::ZERO, 1, 0, message);
                            true
                        }
                        Offer::Full => {
                            self.cut(&outlet);
                            false
                        }
                        Offer::Closed => false,
                    }
                }
                Act::Close { code, reason } => self.close(id, code, reason),
                Act::Revoke { before } => {
                    let issued = read(&self.broker).issued_at(id);
                    issued.is_some_and(|iat| iat < before)
                        && self.close(id, CloseCode::Unauthorized.code(), "token revoked")
                }
            };
            reached += usize::from(done);
        }
        reached
    }

    /// Asks every bridged connection of this node to close (a node cut off: their
    /// disconnects are made by the others); how many.
    pub fn close_bridged(&self, code: u16, reason: &str) -> usize {
        let bridged: Vec<ConnId> = {
            let broker = read(&self.broker);
            broker
                .connection_ids()
                .into_iter()
                .filter(|id| broker.handle_of(*id).is_some_and(|o| o.is_bridged()))
                .collect()
        };
        bridged
            .into_iter()
            .filter(|id| self.close(*id, code, reason))
            .count()
    }

    /// Asks connection `id` to close with `code` and `reason`; false if it is not here.
    fn close(&self, id: ConnId, code: u16, reason: &str) -> bool {
        let Some(outlet) = read(&self.broker).handle_of(id) else {
            return false;
        };
        // Under the lock, so that the task, woken by the request, finds the reason.
        let mut reasons = lock(&self.reasons);
        if outlet.request_close(code) {
            reasons.insert(id, reason.into());
        }
        true
    }

    /// The reason of the close asked of connection `id`, if one was given (taken).
    pub fn take_close_reason(&self, id: ConnId) -> Option<Box<str>> {
        lock(&self.reasons).remove(&id)
    }

    /// Registers a connection in its user group and its token's groups; returns the
    /// groups it could not join, with why.
    pub fn connect(
        &self,
        outlet: &Outlet,
        user: &str,
        user_group: &str,
        permissions: Permissions,
    ) -> Vec<(String, JoinError)> {
        write(&self.broker).connect(outlet.id, outlet.clone(), user, user_group, permissions)
    }

    /// Joins a connection to a group its token permits.
    pub fn join(&self, outlet: &Outlet, group: &str) -> Result<(), JoinError> {
        write(&self.broker).join(outlet.id, outlet.clone(), group)
    }

    /// Takes a connection out of a group.
    pub fn leave(&self, id: ConnId, group: &str) -> Result<(), LeaveError> {
        write(&self.broker).leave(id, group)
    }

    /// Forgets a connection.
    pub fn disconnect(&self, id: ConnId) {
        write(&self.broker).disconnect(id);
        lock(&self.reasons).remove(&id);
    }

    /// Replaces a connection's permissions (token refresh): it leaves the groups the new
    /// token no longer permits and joins the new token's groups. Returns (left, joined).
    pub fn refresh(&self, outlet: &Outlet, permissions: Permissions) -> (Vec<String>, Vec<String>) {
        write(&self.broker).refresh(outlet.id, outlet.clone(), permissions)
    }

    /// Whether the connection may ask about `user`'s presence.
    pub fn may_query_presence(&self, id: ConnId, user: &str) -> bool {
        read(&self.broker).may_query_presence(id, user)
    }

    /// Delivers `message` to every local connection in `group`; returns the number of
    /// connections it was routed to. A connection whose queue is full is closed as a slow
    /// consumer (4008) rather than allowed to grow without bound.
    pub fn publish_local(&self, group: &str, message: &Encoded) -> usize {
        // One pointer copied under the lock; the fan-out runs without it.
        let Some(recipients) = read(&self.broker).fanout(group) else {
            return 0;
        };
        let started = Instant::now();
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for outlet in recipients.iter() {
            match outlet.offer(group, message) {
                Offer::Queued => delivered += 1,
                Offer::Full => {
                    dropped += 1;
                    self.cut(outlet);
                }
                // The connection is on its way out; it unregisters itself.
                Offer::Closed => {}
            }
        }
        self.account(started.elapsed(), delivered, dropped, message);
        recipients.len()
    }

    /// A client whose queue is full (and stays full) is closed as a slow consumer:
    /// counted once, when first asked; it sees 4008 after what was already queued.
    fn cut(&self, outlet: &Outlet) {
        if outlet.request_close(CloseCode::SlowConsumer.code()) {
            self.metrics.slow_consumer_closes.inc();
        }
    }

    /// One publish's figures: the fan-out round's time, deliveries and drops.
    fn account(
        &self,
        fanned: std::time::Duration,
        delivered: u64,
        dropped: u64,
        message: &Encoded,
    ) {
        self.metrics.fanout_seconds.observe(fanned);
        self.metrics.messages_delivered.add(delivered);
        self.metrics
            .bytes_delivered
            .add(delivered * message.len() as u64);
        if dropped > 0 {
            self.metrics.messages_dropped.add(dropped);
        }
    }

    /// Delivers `message` to every local connection in `group` as
    /// [`Hub::publish_local`] does, but a connection whose queue is full is waited for
    /// (all of them together, for at most `patience`) before it is closed as a slow
    /// consumer: the caller (a publisher, or a peer's stream of forwards) is slowed down
    /// to the pace of its slowest client instead of cutting clients that merely lag.
    pub async fn publish_paced(
        &self,
        group: &str,
        message: &Encoded,
        patience: std::time::Duration,
    ) -> usize {
        let Some(recipients) = read(&self.broker).fanout(group) else {
            return 0;
        };
        let started = Instant::now();
        let mut delivered = 0u64;
        let mut full = Vec::new();
        for outlet in recipients.iter() {
            match outlet.offer(group, message) {
                Offer::Queued => delivered += 1,
                Offer::Full if !outlet.close_is_requested() => full.push(outlet),
                Offer::Full | Offer::Closed => {}
            }
        }
        let fanned = started.elapsed();
        let mut dropped = 0u64;
        if !full.is_empty() {
            let deadline = tokio::time::Instant::now() + patience;
            for outlet in full {
                match outlet.offer_within(group, message, deadline).await {
                    Offer::Queued => delivered += 1,
                    Offer::Full => {
                        dropped += 1;
                        self.cut(outlet);
                    }
                    Offer::Closed => {}
                }
            }
            self.metrics.paced_publishes.inc();
        }
        self.account(fanned, delivered, dropped, message);
        recipients.len()
    }

    /// How many local connections are in `group`.
    pub fn group_size(&self, group: &str) -> usize {
        read(&self.broker).group_size(group)
    }

    /// Every group with a local connection (unsorted), copied out of the table.
    pub fn group_names(&self) -> Vec<Arc<str>> {
        read(&self.broker).group_names()
    }

    /// Number of local connections.
    pub fn connection_count(&self) -> usize {
        read(&self.broker).connection_count()
    }

    /// Number of groups with a local connection.
    pub fn group_count(&self) -> usize {
        read(&self.broker).group_count()
    }

    /// Collects the interest changes since the last call (and the whole interest when
    /// `full`), and hands them to `send` under the table's lock, so that what `send`
    /// queues goes out in version order. `send` must not block.
    pub fn gossip_round<F>(&self, full: bool, send: F)
    where
        F: FnOnce(Option<InterestDelta>, Option<InterestSnapshot>),
    {
        let mut broker = write(&self.broker);
        let changes = broker.take_interest_changes();
        let snapshot = full.then(|| broker.interest_snapshot());
        send(changes, snapshot);
    }

    /// Hands the whole interest to `send` under the table's lock, so that no delta can be
    /// queued between the snapshot and its sending. `send` must not block.
    pub fn with_interest<F: FnOnce(InterestSnapshot)>(&self, send: F) {
        let broker = read(&self.broker);
        send(broker.interest_snapshot());
    }

    /// The hub's gauges.
    pub fn rows(&self) -> Vec<Row> {
        vec![Row::gauge(
            "groups",
            "Groups with at least one connection on this node.",
            self.group_count() as u64,
        )]
    }
}
