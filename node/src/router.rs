//! The router: the publish path cluster-wide, and the cluster-wide views of groups.
//!
//! A publish is delivered to this node's connections (the hub) and forwarded once to
//! each peer with subscribers for the group (the mesh); a publish to a group that keeps
//! history goes through its owner instead (the historian), which answers once the message
//! is replicated, with its position. [`Publish`] is what the ingress
//! layer (RESP, the admin API) sees of it, so that its command handling is tested
//! against a fake publisher.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use switchboard_proto::peer::{ConnAction, ConnTarget, NodeId, Position};

use crate::broker::{Listed, MAX_PATTERN, list_matching};
use crate::cluster::{ActError, Cluster};

use crate::historian::{self, Historian};
use crate::history::retry::{PublishRetry, Retry};
use crate::history::{HistoryError, Recovery};
use crate::hub::{Encoded, Hub, SLOW_CONSUMER_PATIENCE};
use crate::metrics::Metrics;

/// A recovery the group's owner could not answer is asked again after this long, for at
/// most [`PATIENCE_NODE_TIMEOUTS`].
pub const RECOVERY_RETRY: Duration = Duration::from_millis(250);
/// How many node timeouts (15 s by default) a recovery, and a history publish refused
/// for now (asked again as [`crate::history::retry`] says: 50 ms doubling to 500 ms),
/// are tried for: a dead owner is replaced within one node timeout plus a commit (plus
/// an election if it led Raft).
pub const PATIENCE_NODE_TIMEOUTS: u32 = 3;

/// Where a publish went: connections routed to, and the position in a history group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Routed {
    pub routed: usize,
    pub position: Option<Position>,
}

/// Why a group listing was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// The pattern is longer than [`MAX_PATTERN`].
    #[error("pattern longer than {MAX_PATTERN} bytes")]
    TooLong,
    /// Matching it against every group would take more than
    /// [`crate::broker::LISTING_BUDGET`] steps.
    #[error("pattern too costly to match against every group; make it more specific")]
    TooCostly,
}

/// What a publisher can do and ask, cluster-wide.
pub trait Publish: Send + Sync {
    /// Publishes `payload` to `group`: where it went, or (a history group) why it could
    /// not be taken, so that the publisher may retry.
    fn publish<'a>(
        &'a self,
        group: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Routed, HistoryError>>;

    /// Connections in `group`, per node, sorted by node (asking the holder of the
    /// group's interest when this node does not know).
    fn group_counts<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Vec<(NodeId, usize)>>;

    /// Groups with at least one connection anywhere, sorted, filtered by a Redis glob
    /// (every node is asked); an error when the pattern is too long or too costly.
    fn groups<'a>(
        &'a self,
        pattern: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Vec<String>, PatternError>>;

    /// Groups with at least one connection on this node.
    fn local_groups(&self) -> usize;

    /// Connections in `group`, cluster-wide.
    fn subscribers<'a>(&'a self, group: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move { self.group_counts(group).await.iter().map(|(_, n)| n).sum() })
    }

    /// Acts on connections wherever they are (see [`Router::act`]): how many it reached.
    fn act(&self, target: ConnTarget, action: ConnAction)
    -> BoxFuture<'_, Result<Acted, ActError>>;
}

/// What an act reached: connections, and the nodes that did not answer (whose
/// connections it may have missed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acted {
    pub reached: u32,
    pub silent: Vec<NodeId>,
}

/// See the module header.
#[derive(Debug)]
pub struct Router {
    node: NodeId,
    hub: Arc<Hub>,
    cluster: Arc<Cluster>,
    historian: Arc<Historian>,
    metrics: Arc<Metrics>,
    /// How long a history publish or recovery is retried (see [`PATIENCE_NODE_TIMEOUTS`]).
    patience: Duration,
}

impl Router {
    pub fn new(
        node: NodeId,
        hub: Arc<Hub>,
        cluster: Arc<Cluster>,
        historian: Arc<Historian>,
        metrics: Arc<Metrics>,
        node_timeout: Duration,
    ) -> Self {
        Router {
            node,
            hub,
            cluster,
            historian,
            metrics,
            patience: node_timeout * PATIENCE_NODE_TIMEOUTS,
        }
    }

    /// Whether `group` keeps history.
    pub fn keeps_history(&self, group: &str) -> bool {
        self.historian.keeps(group)
    }

    /// What a client at `since` missed in a history group (asked of its owner); `None`:
    /// only the group's current position. An owner that cannot answer now (it died or
    /// drained and the takeover is not committed yet, a handover is under way) is asked
    /// again every [`RECOVERY_RETRY`] within the patience; then its error.
    pub async fn recover(
        &self,
        group: &str,
        since: Option<Position>,
        first: bool,
    ) -> Result<Recovery, HistoryError> {
        let deadline = tokio::time::Instant::now() + self.patience;
        loop {
            match self.historian.recover(group, since, first).await {
                Err(e)
                    if !matches!(e, HistoryError::Stopped)
                        && tokio::time::Instant::now() + RECOVERY_RETRY < deadline =>
                {
                    tracing::debug!(%group, error = %e, "recovery failed; asking again");
                    tokio::time::sleep(RECOVERY_RETRY).await;
                }
                result => return result,
            }
        }
    }

    /// Acts on connections cluster-wide: one connection, on the node its id names; or
    /// every connection of a user, on every node (those that do not answer are listed).
    pub async fn act(&self, target: ConnTarget, action: ConnAction) -> Result<Acted, ActError> {
        match &target {
            ConnTarget::Connection(id) => {
                let node = crate::cluster::acts::node_of(id)?;
                let reached = self.cluster.act_on(node, target, action).await?;
                Ok(Acted {
                    reached,
                    silent: Vec::new(),
                })
            }
            ConnTarget::User(_) => {
                let (reached, silent) = self.cluster.act_everywhere(target, action).await;
                Ok(Acted { reached, silent })
            }
        }
    }

    /// The historian (for `/metrics`).
    pub fn historian(&self) -> &Arc<Historian> {
        &self.historian
    }

    /// A publish to a history group, through its owner. Every attempt carries the same
    /// publish id, so an owner that already took the message (an attempt that timed out,
    /// or was taken by the replica that has since taken over) answers with its position
    /// instead of taking it again. Attempts refused for now are made again within the
    /// patience. What reaches the publisher is final: a success, or an error that says
    /// whether the message may have been delivered ([`HistoryError::OutcomeUnknown`]) or
    /// surely was not ([`HistoryError::NotPublished`], safe to retry).
    async fn publish_history(&self, group: &str, payload: Bytes) -> Result<Routed, HistoryError> {
        let text = crate::hub::is_text(&payload);
        let id = self.historian.publish_id();
        let mut retry = PublishRetry::new(tokio::time::Instant::now(), self.patience);
        loop {
            let attempt = retry.attempt();
            let publish = historian::publish(id, attempt, group, payload.clone(), text);
            let error = match self.historian.publish(publish).await {
                Ok(taken) => {
                    return Ok(Routed {
                        routed: taken.routed,
                        position: Some(taken.position),
                    });
                }
                Err(e) => e,
            };
            let reason = error.to_string();
            match retry.failed(tokio::time::Instant::now(), error) {
                Retry::Fail(error) => return Err(error),
                Retry::After(pause) => {
                    tracing::debug!(%group, attempt, error = %reason, "history publish not taken yet; asking again");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Local fan-out and forwarding to the peers with subscribers: groups without
    /// history. When this node neither holds the group's interest nor caches its route,
    /// a holder is asked first (one round trip, then cached). Both halves pace the
    /// publisher: a full local client queue is waited for (within
    /// [`SLOW_CONSUMER_PATIENCE`], then the client is cut with 4008), and so is a peer
    /// whose queue of forwards is full (docs/cluster.md, "Backpressure").
    fn publish_direct<'a>(
        &'a self,
        group: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Routed, HistoryError>> {
        Box::pin(async move {
            let message = Encoded::new(payload.clone());
            let local = self
                .hub
                .publish_paced(group, &message, SLOW_CONSUMER_PATIENCE)
                .await;
            let targets = self.cluster.resolve(group).await;
            let remote = self
                .cluster
                .forward(group, &payload, message.is_text(), &targets)
                .await;
            Ok(Routed {
                routed: local + remote,
                position: None,
            })
        })
    }
}

impl Publish for Router {
    fn act(
        &self,
        target: ConnTarget,
        action: ConnAction,
    ) -> BoxFuture<'_, Result<Acted, ActError>> {
        Box::pin(Router::act(self, target, action))
    }

    fn publish<'a>(
        &'a self,
        group: &'a str,
        payload: Bytes,
    ) -> BoxFuture<'a, Result<Routed, HistoryError>> {
        self.metrics.messages_published.inc();
        if !self.historian.keeps(group) {
            return self.publish_direct(group, payload);
        }
        Box::pin(self.publish_history(group, payload))
    }

    fn local_groups(&self) -> usize {
        self.hub.group_count()
    }

    fn group_counts<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Vec<(NodeId, usize)>> {
        Box::pin(async move {
            let mut counts: BTreeMap<NodeId, usize> =
                self.cluster.group_counts(group).await.into_iter().collect();
            let local = self.hub.group_size(group);
            if local > 0 {
                counts.insert(self.node, local);
            }
            counts.into_iter().collect()
        })
    }

    fn groups<'a>(
        &'a self,
        pattern: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<Vec<String>, PatternError>> {
        Box::pin(async move {
            if pattern.is_some_and(|p| p.len() > MAX_PATTERN) {
                return Err(PatternError::TooLong);
            }
            // Local names are copied out of the hub first; matching runs without its lock.
            let names = self.hub.group_names();
            let (mut groups, end) = list_matching(names.iter().map(|n| &**n), pattern, usize::MAX);
            if end == Listed::Costly {
                return Err(PatternError::TooCostly);
            }
            let (remote, complete) = self.cluster.peer_groups(pattern).await;
            if !complete {
                tracing::debug!(
                    "a group listing is missing a peer's part (no answer, or its bound)"
                );
            }
            groups.extend(remote);
            groups.sort_unstable();
            groups.dedup();
            Ok(groups)
        })
    }
}
