//! The steward's driver: every [`STEWARD_INTERVAL`] a [`View`] of the cluster in, the
//! steward's actions out and carried out (learners added and promoted, ids bound, history
//! buckets assigned, presence purged and resynced). The decisions are
//! `crate::raft::steward`'s.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use openraft::{BasicNode, ChangeMembers};
use switchboard_proto::peer::PresenceOp;
use tracing::{info, warn};

use super::{Consensus, MEMBERSHIP_TIMEOUT};
use crate::presence::Command;
use crate::raft::steward::{Action, STEWARD_INTERVAL, Steward, View};

impl Consensus {
    /// Commits the history assignments the steward would plan now (as leader).
    pub(super) async fn assign_history(&self) {
        let view = self.view();
        let mut steward = Steward::new(self.node_timeout, self.max_voters);
        for action in steward.tick(Instant::now(), &view) {
            if let Action::Assign(_) = action {
                self.carry_out(action, &view).await;
            }
        }
    }

    /// The steward's driver: every [`STEWARD_INTERVAL`], a view in, actions out.
    pub(super) async fn steward(self: Arc<Self>) {
        let shutdown = self.lifecycle.shutdown_token().clone();
        let mut steward = Steward::new(self.node_timeout, self.max_voters);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(STEWARD_INTERVAL) => {}
            }
            let view = self.view();
            for action in steward.tick(Instant::now(), &view) {
                self.carry_out(action, &view).await;
            }
        }
    }

    /// History buckets not yet with their desired owner and replica (0: settled).
    pub fn history_moving(&self) -> usize {
        crate::raft::steward::buckets_moving(&self.view())
    }

    /// What the steward looks at, now.
    fn view(&self) -> View {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let (removed, presence_holders, bound, assignments) = {
            let replica = self.replica.read();
            (
                replica.removed.clone(),
                replica.presence.nodes().collect(),
                replica.incarnations.clone(),
                replica.assignments.clone(),
            )
        };
        View {
            me: self.node,
            my_incarnation: self.incarnation,
            my_boot: self.boot,
            me_leaving: self.lifecycle.draining(),
            assignments,
            bound,
            leader: m.current_leader,
            has_leader: self.has_leader(),
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            changing: membership.get_joint_config().len() != 1,
            last_log_index: m.last_log_index.unwrap_or(0),
            matched: crate::raft::steward::matched(&m),
            peers: self.transport.peers(),
            removed,
            presence_holders,
            settled: self.settled(m.last_applied.map_or(0, |l| l.index)),
        }
    }

    /// This node's live connections and what the replica holds for it, when settled:
    /// not draining, nothing queued, no write in flight, and its last write applied here.
    fn settled(&self, applied: u64) -> Option<(usize, usize)> {
        if !self.presence {
            return None;
        }
        let _writer_idle = self.flushing.try_lock().ok()?;
        if self.lifecycle.draining() || applied < self.last_written.load(Ordering::Acquire) {
            return None;
        }
        let live = self.queue.settled_live(0)?;
        Some((live, self.replica.node_connections(self.node)))
    }

    async fn carry_out(&self, action: Action, view: &View) {
        match action {
            Action::Drain => {
                warn!("this node was removed from the cluster; draining");
                self.drain();
            }
            Action::Resync => {
                if let Some((live, registered)) = view.settled {
                    info!(registered, live, "re-registering this node's connections");
                }
                self.queue.resync(0);
                self.counters.resyncs.inc();
            }
            Action::Bind { node, incarnation } => {
                info!(
                    node,
                    incarnation = format!("{incarnation:016x}"),
                    "binding a node id to its data dir"
                );
                if let Err(e) = self.write(Command::Bind { node, incarnation }).await {
                    warn!(node, error = %e, "binding failed; retried next look");
                }
            }
            Action::AddLearner { id, addr } => {
                info!(node = id, "adding a learner");
                let add = self.raft.add_learner(id, BasicNode::new(addr), false);
                match tokio::time::timeout(MEMBERSHIP_TIMEOUT, add).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(node = id, error = %e, "adding a learner failed"),
                    Err(_) => warn!(node = id, "adding a learner timed out"),
                }
            }
            Action::Promote(id) => {
                info!(node = id, "promoting a learner to voter");
                let change = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true);
                match tokio::time::timeout(MEMBERSHIP_TIMEOUT, change).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(node = id, error = %e, "promotion failed"),
                    Err(_) => warn!(node = id, "promotion timed out"),
                }
            }
            Action::Assign(changes) => {
                let n = changes.len();
                match self.write(Command::Assign(changes)).await {
                    Ok(epoch) => info!(buckets = n, epoch, "history buckets reassigned"),
                    Err(e) => warn!(error = %e, "history reassignment failed; retried next look"),
                }
            }
            Action::Purge(node) => {
                info!(
                    node,
                    "purging the presence of a node down for --node-timeout-ms"
                );
                let purge = Command::PresenceAt {
                    ops: vec![PresenceOp::PurgeNode { node }],
                    at_ms: crate::clock::unix_millis(),
                };
                if self.write(purge).await.is_ok() {
                    self.counters.purges.inc();
                }
            }
        }
    }
}
