//! [`PresenceQueue`]: the [`Batcher`] behind its lock, and the bell that wakes the
//! presence writer. Connection tasks push; the writer (in the Raft layer) takes.
//!
//! The lock is held for a push or a take, never across an `.await`; the writer is woken
//! ([`PresenceQueue::notified`]) when a batch fills up or a resync is queued, and
//! otherwise takes what is there every flush interval.

use std::sync::Mutex;

use switchboard_proto::peer::{NodeId, PresenceOp};
use tokio::sync::Notify;

use super::{Batcher, MAX_BATCH};
use crate::sync::lock;

/// See the module header.
#[derive(Debug)]
pub struct PresenceQueue {
    node: NodeId,
    batcher: Mutex<Batcher>,
    bell: Notify,
}

impl PresenceQueue {
    /// The queue of node `node`.
    pub fn new(node: NodeId) -> Self {
        PresenceQueue {
            node,
            batcher: Mutex::new(Batcher::default()),
            bell: Notify::new(),
        }
    }

    /// The node whose changes these are.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// Queues a change; it is committed within the flush interval (at once when the batch
    /// is full).
    pub fn push(&self, op: PresenceOp) {
        let full = lock(&self.batcher).push(op);
        if full {
            self.bell.notify_one();
        }
    }

    /// Queues the removal of every connection of this node (a drain) and wakes the writer.
    pub fn purge_self(&self) {
        self.push(PresenceOp::PurgeNode { node: self.node });
        self.bell.notify_one();
    }

    /// Takes the queued changes in order, at most [`MAX_BATCH`] (one Raft entry).
    pub fn take(&self) -> Vec<PresenceOp> {
        lock(&self.batcher).take_at_most(MAX_BATCH)
    }

    /// Puts changes that could not be committed back in front of the queue, in order.
    pub fn requeue(&self, ops: Vec<PresenceOp>) {
        lock(&self.batcher).requeue(ops);
    }

    /// Number of changes waiting.
    pub fn len(&self) -> usize {
        lock(&self.batcher).len()
    }

    /// Whether no change is waiting.
    pub fn is_empty(&self) -> bool {
        lock(&self.batcher).is_empty()
    }

    /// This node's live connection count, if no change is queued (both read under one
    /// lock, so they agree).
    pub fn settled_live(&self) -> Option<usize> {
        let batcher = lock(&self.batcher);
        batcher.is_empty().then(|| batcher.live())
    }

    /// Replaces what is queued by a re-registration of every live connection of this
    /// node, and wakes the writer.
    pub fn resync(&self) {
        lock(&self.batcher).resync(self.node);
        self.bell.notify_one();
    }

    /// Resolves when the writer is asked to flush early.
    pub async fn notified(&self) {
        self.bell.notified().await
    }
}
