//! [`Batcher`]: presence ops waiting to be committed, and this node's live connections.
//!
//! Connection tasks push ops without waiting for Raft; the presence writer takes them in
//! bounded batches. A connection that lives shorter than a flush costs the registry
//! nothing (its connect and disconnect cancel out), and the live list lets the node
//! re-register all its connections at once ([`Batcher::resync`]) when the registry has
//! lost them.

use std::collections::HashMap;

use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::{MAX_BATCH, RESYNC_CHUNK};

/// Presence ops waiting to be applied. Pushing never blocks on the registry; the flusher
/// takes the whole batch at once.
#[derive(Debug, Default)]
pub struct Batcher {
    pending: Vec<PresenceOp>,
    /// This node's live connections, by connection id.
    live: HashMap<String, ConnectionRecord>,
    /// The first `fence` pending ops were requeued after a failed write and may have
    /// committed after all: a disconnect must not cancel those.
    fence: usize,
}

impl Batcher {
    /// Queues an op; returns true when the batch is full and should be flushed now.
    /// A `Leave` that cancels a `Connect` still in the batch removes both, so a
    /// connection that lives shorter than a flush costs the registry nothing.
    pub fn push(&mut self, op: PresenceOp) -> bool {
        let mut ended = None;
        match &op {
            PresenceOp::Connect(record) | PresenceOp::ConnectBridged { record, .. } => {
                self.live.insert(record.connection.clone(), record.clone());
            }
            PresenceOp::Leave {
                node, connection, ..
            }
            | PresenceOp::LeaveOwed {
                node, connection, ..
            }
            | PresenceOp::Disconnect { node, connection } => {
                self.live.remove(connection);
                ended = Some((*node, connection));
            }
            PresenceOp::PurgeNode { .. } => self.live.clear(),
            PresenceOp::ResyncNode { .. } | PresenceOp::Delivered { .. } => {}
        }
        if let Some((node, connection)) = ended
            && let Some(at) = self.pending[self.fence..].iter().rposition(|p| {
                matches!(p, PresenceOp::Connect(r) | PresenceOp::ConnectBridged { record: r, .. } if r.node == node && r.connection == *connection)
            }) {
                self.pending.remove(self.fence + at);
                return false;
            }
        self.pending.push(op);
        self.pending.len() >= MAX_BATCH
    }

    /// Takes every queued op, in order.
    pub fn take(&mut self) -> Vec<PresenceOp> {
        self.take_at_most(usize::MAX)
    }

    /// Takes the first `max` queued ops (or all), in order.
    pub fn take_at_most(&mut self, max: usize) -> Vec<PresenceOp> {
        if max >= self.pending.len() {
            self.fence = 0;
            return std::mem::take(&mut self.pending);
        }
        self.fence = self.fence.saturating_sub(max);
        let rest = self.pending.split_off(max);
        std::mem::replace(&mut self.pending, rest)
    }

    /// Puts ops that could not be committed back in front of the queue, in order.
    pub fn requeue(&mut self, mut ops: Vec<PresenceOp>) {
        self.fence += ops.len();
        ops.append(&mut self.pending);
        self.pending = ops;
    }

    /// Replaces everything queued by ops that re-register every live connection of
    /// `node`: a `ResyncNode` (which drops whatever the registry held for it) with the
    /// first [`RESYNC_CHUNK`] connections, then a `Connect` for each of the others. What
    /// the registry holds for the node afterwards is exactly the truth.
    pub fn resync(&mut self, node: NodeId) {
        let mut connections: Vec<ConnectionRecord> = self.live.values().cloned().collect();
        connections.sort_by(|a, b| a.connection.cmp(&b.connection));
        let rest = connections.split_off(connections.len().min(RESYNC_CHUNK));
        self.pending = Vec::with_capacity(1 + rest.len());
        self.pending
            .push(PresenceOp::ResyncNode { node, connections });
        self.pending
            .extend(rest.into_iter().map(PresenceOp::Connect));
        self.fence = 1;
    }

    /// Whether `connection` is one of this node's live connections here.
    pub fn holds(&self, connection: &str) -> bool {
        self.live.contains_key(connection)
    }

    /// Number of live connections on this node.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Number of ops waiting.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }
}
