//! [`PresenceQueue`]: one [`Batcher`] per presence shard behind its lock, and the bell
//! that wakes that shard's writer. Connection tasks push; the writers (in the Raft layer)
//! take.
//!
//! A node whose presence is not sharded (`--presence-shards 0`) has one batcher, taken by
//! the control group's writer. With S shards there are S: an op goes to the batcher of
//! its user's shard ([`super::shards::shard_of`]), a connection's `Connect` and `Leave`
//! alike, a purge of this node to every batcher. Each shard's ops stay in order
//! and a shard whose writes fail holds up no other.
//!
//! A lock is held for a push or a take, never across an `.await`; a writer is woken
//! ([`PresenceQueue::notified`]) when its batch fills up or a resync is queued, and
//! otherwise takes what is there every flush interval.

use std::collections::HashMap;
use std::sync::Mutex;

use switchboard_proto::peer::{NodeId, PresenceOp};
use tokio::sync::{Notify, oneshot};

use super::shards::{Shard, shard_of};
use super::{Batcher, MAX_BATCH};
use crate::sync::lock;

/// One shard's batch and bell, and who waits for a bridged connection's record to be
/// committed.
#[derive(Debug, Default)]
struct Slot {
    batcher: Mutex<Batcher>,
    bell: Notify,
    /// By connection id: told when its `ConnectBridged` is committed (empty without the
    /// backend bridge).
    acks: Mutex<HashMap<String, oneshot::Sender<()>>>,
}

/// See the module header.
#[derive(Debug)]
pub struct PresenceQueue {
    node: NodeId,
    /// One per shard (one when presence is not sharded).
    slots: Vec<Slot>,
}

impl PresenceQueue {
    /// The queue of node `node`, for `shards` presence shards (0: not sharded).
    pub fn new(node: NodeId, shards: u16) -> Self {
        PresenceQueue {
            node,
            slots: (0..shards.max(1)).map(|_| Slot::default()).collect(),
        }
    }

    /// The node whose changes these are.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The number of batches (shards, or 1).
    pub fn shards(&self) -> Shard {
        self.slots.len() as Shard
    }

    fn slot(&self, shard: Shard) -> &Slot {
        &self.slots[usize::from(shard) % self.slots.len()]
    }

    /// Queues a change; it is committed within the flush interval (at once when the batch
    /// is full).
    pub fn push(&self, op: PresenceOp) {
        let shard = match &op {
            PresenceOp::Connect(record) | PresenceOp::ConnectBridged { record, .. } => {
                shard_of(&record.user, self.shards())
            }
            PresenceOp::Leave { user, .. }
            | PresenceOp::LeaveOwed { user, .. }
            | PresenceOp::Delivered { user, .. } => shard_of(user, self.shards()),
            PresenceOp::Disconnect { connection, .. } => (0..self.shards())
                .find(|&s| lock(&self.slot(s).batcher).holds(connection))
                .unwrap_or(0),
            PresenceOp::PurgeNode { .. } | PresenceOp::ResyncNode { .. } => {
                for slot in &self.slots {
                    lock(&slot.batcher).push(op.clone());
                    slot.bell.notify_one();
                }
                return;
            }
        };
        let slot = self.slot(shard);
        let full = lock(&slot.batcher).push(op);
        if full {
            slot.bell.notify_one();
        }
    }

    /// Queues a bridged connection's record and says when it is committed (the sender
    /// is dropped if it never is: the connection ended first, or the node stopped). Its
    /// writer is woken at once: the client's handshake waits for it.
    pub fn push_committed(&self, op: PresenceOp) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let PresenceOp::ConnectBridged { record, .. } = &op {
            let slot = self.slot(shard_of(&record.user, self.shards()));
            lock(&slot.acks).insert(record.connection.clone(), tx);
            lock(&slot.batcher).push(op);
            slot.bell.notify_one();
        }
        rx
    }

    /// `ops` of `shard` were committed: those waited for are told.
    pub fn committed(&self, shard: Shard, ops: &[PresenceOp]) {
        let slot = self.slot(shard);
        let mut acks = lock(&slot.acks);
        if acks.is_empty() {
            return;
        }
        for op in ops {
            if let PresenceOp::ConnectBridged { record, .. } = op
                && let Some(ack) = acks.remove(&record.connection)
            {
                let _ = ack.send(());
            }
        }
    }

    /// Forgets who waited for `connection`'s record (it ended before the commit).
    pub fn forget_ack(&self, user: &str, connection: &str) {
        lock(&self.slot(shard_of(user, self.shards())).acks).remove(connection);
    }

    /// Queues the removal of every connection of this node (a drain) and wakes the writers.
    pub fn purge_self(&self) {
        self.push(PresenceOp::PurgeNode { node: self.node });
    }

    /// Takes `shard`'s queued changes in order, at most [`MAX_BATCH`] (one Raft entry).
    pub fn take(&self, shard: Shard) -> Vec<PresenceOp> {
        lock(&self.slot(shard).batcher).take_at_most(MAX_BATCH)
    }

    /// Puts `shard`'s changes that could not be committed back in front of its queue, in
    /// order.
    pub fn requeue(&self, shard: Shard, ops: Vec<PresenceOp>) {
        lock(&self.slot(shard).batcher).requeue(ops);
    }

    /// Number of `shard`'s changes waiting.
    pub fn len(&self, shard: Shard) -> usize {
        lock(&self.slot(shard).batcher).len()
    }

    /// Number of changes waiting, in every shard.
    pub fn queued(&self) -> usize {
        self.slots.iter().map(|s| lock(&s.batcher).len()).sum()
    }

    /// Whether no change is waiting, in any shard.
    pub fn is_empty(&self) -> bool {
        self.slots.iter().all(|s| lock(&s.batcher).is_empty())
    }

    /// This node's live connection count in `shard`, if none of its changes is queued
    /// (both read under one lock, so they agree).
    pub fn settled_live(&self, shard: Shard) -> Option<usize> {
        let batcher = lock(&self.slot(shard).batcher);
        batcher.is_empty().then(|| batcher.live())
    }

    /// This node's live connections, in every shard.
    pub fn live(&self) -> usize {
        self.slots.iter().map(|s| lock(&s.batcher).live()).sum()
    }

    /// Replaces what `shard` has queued by a re-registration of every live connection of
    /// this node in it, and wakes its writer.
    pub fn resync(&self, shard: Shard) {
        let slot = self.slot(shard);
        lock(&slot.batcher).resync(self.node);
        slot.bell.notify_one();
    }

    /// Resolves when `shard`'s writer is asked to flush early.
    pub async fn notified(&self, shard: Shard) {
        self.slot(shard).bell.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::tests::record;

    #[test]
    fn each_op_goes_to_its_users_shard_and_a_purge_to_every_shard() {
        let q = PresenceQueue::new(1, 4);
        let users: Vec<String> = (0..40).map(|u| u.to_string()).collect();
        for (i, user) in users.iter().enumerate() {
            q.push(PresenceOp::Connect(record(1, &format!("1-{i}"), user)));
        }
        let mut seen = 0;
        for shard in 0..4 {
            let ops = q.take(shard);
            for op in &ops {
                let PresenceOp::Connect(r) = op else {
                    panic!("{op:?}")
                };
                assert_eq!(shard_of(&r.user, 4), shard);
            }
            seen += ops.len();
        }
        assert_eq!(seen, 40);
        assert_eq!(q.live(), 40);
        // A connection's end goes to its user's shard, as did its start.
        let shard = shard_of("7", 4);
        q.push(PresenceOp::Leave {
            node: 1,
            connection: "1-7".into(),
            user: "7".into(),
        });
        assert_eq!(q.len(shard), 1);
        assert_eq!(q.settled_live(shard), None);
        assert_eq!(q.live(), 39);
        q.take(shard);
        // A purge goes to every shard, and empties the live lists.
        q.purge_self();
        for shard in 0..4 {
            assert_eq!(q.take(shard), vec![PresenceOp::PurgeNode { node: 1 }]);
            assert_eq!(q.settled_live(shard), Some(0));
        }
    }

    #[test]
    fn an_unsharded_queue_has_one_batch() {
        let q = PresenceQueue::new(2, 0);
        assert_eq!(q.shards(), 1);
        q.push(PresenceOp::Connect(record(2, "2-a", "u")));
        q.push(PresenceOp::Connect(record(2, "2-b", "v")));
        assert_eq!(q.take(0).len(), 2);
    }
}
