//! Acting on connections another node holds: Django's `group_add`, `group_discard` and
//! `channel_layer.send` on a connection's channel name, and the admin API's disconnect,
//! subscribe and unsubscribe. One [`Conn::Act`] to the node (on its control stream),
//! answered with how many connections it reached, within [`ACT_TIMEOUT`].
//!
//! A node that subscribed a connection elsewhere sends that node its publishes to the
//! group for a moment ([`HINT_TTL`](super::pending::HINT_TTL)) whatever its routes say: the subscriber's interest
//! reaches the group's holders, and from them the routes other nodes cache, a gossip
//! round or two later, and a `group_send` right after the `group_add` must not miss it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard_proto::peer::{
    CONNECTION_CHANNEL, Conn, ConnAction, ConnTarget, NodeId, PeerMessage,
};
use tokio::sync::oneshot;

use super::mesh::Cluster;
use super::routes::Nodes;
use crate::hub::{Act, Encoded, Local};
use crate::presence::connection::ConnectionId;
use crate::sync::lock;

/// How long a node waits for another to answer an act.
pub const ACT_TIMEOUT: Duration = Duration::from_secs(2);
/// Why another node could not be asked, or did not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ActError {
    /// The connection id names no node (or not as a node writes it).
    #[error("'{0}' is not a connection id (<node>-<boot>-<n>)")]
    NotAConnection(String),
    /// The node that holds it is not connected to this one.
    #[error("node {0}, which holds the connection, is not reachable")]
    Unreachable(NodeId),
    /// It did not answer in time.
    #[error("node {0} did not answer within {ACT_TIMEOUT:?}")]
    Timeout(NodeId),
}

impl Cluster {
    /// Acts on connections of this node.
    pub fn act_here(&self, target: &ConnTarget, action: &ConnAction) -> u32 {
        let local = match target {
            ConnTarget::Connection(id) => match ConnectionId::local(id, self.node, self.boot) {
                Some(n) => Local::Connection(n),
                None => return 0,
            },
            ConnTarget::User(user) => Local::User(user),
        };
        let hub = &self.deps.hub;
        let reached = match action {
            ConnAction::Subscribe(group) => hub.act(local, Act::Join(group)),
            ConnAction::Unsubscribe(group) => hub.act(local, Act::Leave(group)),
            ConnAction::Send { payload, .. } => {
                let message = Encoded::new(payload.clone());
                let label = match target {
                    ConnTarget::Connection(id) => format!("{CONNECTION_CHANNEL}{id}"),
                    ConnTarget::User(user) => user.clone(),
                };
                hub.act(
                    local,
                    Act::Send {
                        message: &message,
                        label: &label,
                    },
                )
            }
            ConnAction::Close { code, reason } => hub.act(
                local,
                Act::Close {
                    code: *code,
                    reason,
                },
            ),
            ConnAction::Revoke { before } => hub.act(local, Act::Revoke { before: *before }),
        };
        u32::try_from(reached).unwrap_or(u32::MAX)
    }

    /// Acts on connections `node` holds; the number it reached.
    pub async fn act_on(
        &self,
        node: NodeId,
        target: ConnTarget,
        action: ConnAction,
    ) -> Result<u32, ActError> {
        if node == self.node {
            return Ok(self.act_here(&target, &action));
        }
        let subscribed = match &action {
            ConnAction::Subscribe(group) => Some(group.clone()),
            _ => None,
        };
        let (id, answer) = self.ask_act();
        if !self.send(node, PeerMessage::Conn(Conn::Act { id, target, action })) {
            lock(&self.acts).remove(&id);
            return Err(ActError::Unreachable(node));
        }
        match tokio::time::timeout(ACT_TIMEOUT, answer).await {
            Ok(Ok(count)) => {
                if let Some(group) = subscribed.filter(|_| count > 0) {
                    lock(&self.hints).add(Instant::now(), &group, node);
                    self.hinting.store(true, Ordering::Relaxed);
                }
                Ok(count)
            }
            _ => {
                lock(&self.acts).remove(&id);
                Err(ActError::Timeout(node))
            }
        }
    }

    /// Acts on the matching connections of this node and of every connected peer;
    /// the number reached, and the peers that did not answer.
    pub async fn act_everywhere(
        &self,
        target: ConnTarget,
        action: ConnAction,
    ) -> (u32, Vec<NodeId>) {
        let here = self.act_here(&target, &action);
        let peers: Vec<NodeId> = self
            .members()
            .into_iter()
            .filter(|m| m.id != self.node && m.up)
            .map(|m| m.id)
            .collect();
        let asks = peers.into_iter().map(|peer| {
            let (target, action) = (target.clone(), action.clone());
            async move { (peer, self.act_on(peer, target, action).await) }
        });
        let mut reached = here;
        let mut silent = Vec::new();
        for (peer, answer) in futures_util::future::join_all(asks).await {
            match answer {
                Ok(n) => reached = reached.saturating_add(n),
                Err(_) => silent.push(peer),
            }
        }
        (reached, silent)
    }

    /// A new act id and the receiver of its answer.
    fn ask_act(&self) -> (u64, oneshot::Receiver<u32>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.acts).insert(id, tx);
        (id, rx)
    }

    /// Serves an act message from `peer`.
    pub(super) fn on_conn(&self, peer: NodeId, message: Conn) {
        match message {
            Conn::Act { id, target, action } => {
                let count = self.act_here(&target, &action);
                self.send(peer, PeerMessage::Conn(Conn::Acted { id, count }));
            }
            Conn::Acted { id, count } => {
                if let Some(waiter) = lock(&self.acts).remove(&id) {
                    let _ = waiter.send(count);
                }
            }
        }
    }

    /// Adds the nodes a recent subscription made elsewhere steers `group`'s publishes
    /// to. Every publish asks: without hints (the usual case) it takes no lock.
    pub(super) fn hinted(&self, group: &str, nodes: &mut Nodes) {
        if self.hinting.load(Ordering::Relaxed) {
            let mut hints = lock(&self.hints);
            let now = Instant::now();
            if hints.expired(now) {
                self.hinting.store(false, Ordering::Relaxed);
            } else {
                hints.merge(now, group, nodes);
            }
        }
    }
}

/// The node a connection id names.
pub fn node_of(connection: &str) -> Result<NodeId, ActError> {
    ConnectionId::node_of(connection).ok_or_else(|| ActError::NotAConnection(connection.into()))
}
