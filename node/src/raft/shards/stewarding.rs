//! A hosted shard's steward driver: every `STEWARD_INTERVAL` a [`ShardView`] in, the
//! [`ShardSteward`]'s actions out and carried out. The decisions are `super::steward`'s.

use std::sync::Arc;
use std::time::Instant;

use openraft::{BasicNode, ChangeMembers};
use switchboard_proto::peer::PresenceOp;
use tracing::{info, warn};

use super::{MEMBERSHIP_TIMEOUT, ShardAction, ShardSteward, ShardView};
use crate::presence::Command;
use crate::presence::shards::{Shard, placement};
use crate::raft::consensus::Consensus;
use crate::raft::steward::STEWARD_INTERVAL;

/// A hosted shard's steward, while the shard is open: every `STEWARD_INTERVAL`, a view
/// in, actions out (only the shard's leader acts).
pub(super) async fn run(consensus: Arc<Consensus>, shard: Shard, control: Arc<Consensus>) {
    let shutdown = consensus.lifecycle.shutdown_token().clone();
    let mut metrics = consensus.raft.metrics();
    let mut steward = ShardSteward::new(consensus.node_timeout);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(STEWARD_INTERVAL) => {}
        }
        if metrics.has_changed().is_err() {
            return; // the group was shut down
        }
        let view = shard_view(&consensus, shard, &control);
        for action in steward.tick(Instant::now(), &view) {
            carry_out(&consensus, shard, &control, action).await;
        }
        metrics.borrow_and_update();
    }
}

fn shard_view(consensus: &Consensus, shard: Shard, control: &Consensus) -> ShardView {
    let m = consensus.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let members = super::members(control);
    let (removed, recorded) = {
        let replica = control.replica.read();
        (
            replica.removed.clone(),
            replica.shards.get(&shard).cloned().unwrap_or_default(),
        )
    };
    ShardView {
        me: consensus.node,
        leader: m.current_leader,
        voters: membership.voter_ids().collect(),
        learners: membership.learner_ids().collect(),
        changing: membership.get_joint_config().len() != 1,
        last_log_index: m.last_log_index.unwrap_or(0),
        matched: crate::raft::steward::matched(&m),
        placement: placement(shard, members),
        recorded,
        peers: consensus.transport.peers(),
        removed,
        holders: consensus.replica.read().presence.nodes().collect(),
    }
}

async fn carry_out(consensus: &Consensus, shard: Shard, control: &Consensus, action: ShardAction) {
    let timed = |what: &'static str,
                 result: Result<Result<(), String>, tokio::time::error::Elapsed>| {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(shard, error = %e, "{what} failed"),
            Err(_) => warn!(shard, "{what} timed out"),
        }
    };
    match action {
        ShardAction::AddLearner { id, addr } => {
            info!(shard, node = id, "adding a learner to a presence shard");
            let add = consensus.raft.add_learner(id, BasicNode::new(addr), false);
            let result = tokio::time::timeout(MEMBERSHIP_TIMEOUT, add).await;
            timed(
                "adding a learner",
                result.map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            );
        }
        ShardAction::ReplaceVoters(voters) => {
            info!(shard, voters = ?voters, "replacing a presence shard's voters");
            let change = consensus
                .raft
                .change_membership(ChangeMembers::ReplaceAllVoters(voters), false);
            let result = tokio::time::timeout(MEMBERSHIP_TIMEOUT, change).await;
            timed(
                "replacing voters",
                result.map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            );
        }
        ShardAction::RemoveLearners(learners) => {
            let change = consensus
                .raft
                .change_membership(ChangeMembers::RemoveNodes(learners), false);
            let result = tokio::time::timeout(MEMBERSHIP_TIMEOUT, change).await;
            timed(
                "removing learners",
                result.map(|r| r.map(|_| ()).map_err(|e| e.to_string())),
            );
        }
        ShardAction::Record(voters) => {
            if let Err(e) = control.write(Command::ShardFormed { shard, voters }).await {
                warn!(shard, error = %e, "recording a presence shard's voters failed; retried");
            }
        }
        ShardAction::Purge(node) => {
            info!(
                shard,
                node, "purging the presence of a node down or removed"
            );
            let purge = Command::PresenceAt {
                ops: vec![PresenceOp::PurgeNode { node }],
                at_ms: crate::clock::unix_millis(),
            };
            if consensus.write(purge).await.is_ok() {
                control.counters.purges.inc();
            }
        }
    }
}
