//! Reads and writes of a shard from this node: locally when it has a seat in the shard,
//! else through the shard's recorded voters ([`Shards::ask`]).

use std::collections::BTreeSet;
use std::time::Duration;

use switchboard_proto::peer::{ConnectionRecord, NodeId};

use super::{CALL_TIMEOUT, LEADERLESS_RETRY, LEADERLESS_WAIT, MAX_HOPS, Shards};
use crate::presence::Command;
use crate::presence::events::Origin;
use crate::presence::shards::{Shard, group_of};
use crate::raft::WriteError;
use crate::raft::network::{self, Events, Reply, Rpc};
use crate::sync::lock;

impl Shards {
    /// Calls `rpc` on a voter of shard `shard` (the last one that served, the recorded
    /// ones, then the leader one names): the first answer `pick` accepts. While the shard
    /// has no leader (an election, a leader that just handed its seat over) it tries
    /// again every [`LEADERLESS_RETRY`], for at most [`LEADERLESS_WAIT`].
    async fn ask<T>(
        &self,
        shard: Shard,
        rpc: Rpc,
        timeout: Duration,
        pick: impl Fn(Reply) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        let deadline = tokio::time::Instant::now() + LEADERLESS_WAIT;
        loop {
            let last = match self.ask_once(shard, &rpc, timeout, &pick).await {
                Ok(answer) => return Ok(answer),
                Err(e) => e,
            };
            let leaderless = matches!(
                last,
                WriteError::NoLeader | WriteError::NotLeader(_) | WriteError::Unreachable { .. }
            );
            if !leaderless || tokio::time::Instant::now() + LEADERLESS_RETRY > deadline {
                return Err(last);
            }
            tokio::time::sleep(LEADERLESS_RETRY).await;
        }
    }

    /// One round of [`Self::ask`].
    async fn ask_once<T>(
        &self,
        shard: Shard,
        rpc: &Rpc,
        timeout: Duration,
        pick: &impl Fn(Reply) -> Result<T, WriteError>,
    ) -> Result<T, WriteError> {
        let mut targets: Vec<NodeId> = lock(&self.hints).get(&shard).copied().into_iter().collect();
        targets.extend(self.control.replica.shard_voters(shard));
        let mut tried = BTreeSet::new();
        let mut last = WriteError::NoLeader;
        let mut at = 0;
        while at < targets.len() && tried.len() < MAX_HOPS {
            let target = targets[at];
            at += 1;
            if target == self.me || !tried.insert(target) {
                continue;
            }
            let reply =
                network::call(&*self.transport, target, group_of(shard), rpc, timeout).await;
            match reply.map_err(|e| WriteError::Unreachable {
                leader: target,
                reason: e.to_string(),
            }) {
                Ok(reply) => match pick(reply) {
                    Ok(answer) => {
                        lock(&self.hints).insert(shard, target);
                        return Ok(answer);
                    }
                    Err(WriteError::NotLeader(leader)) => {
                        targets.insert(at, leader);
                        last = WriteError::NotLeader(leader);
                    }
                    Err(e) => last = e,
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Commits `command` in shard `shard`, on its leader. Returns the log index.
    pub async fn write(&self, shard: Shard, command: Command) -> Result<u64, WriteError> {
        if let Some(consensus) = self.voting(shard) {
            return consensus.write(command).await;
        }
        self.control.counters.forwarded_writes.inc();
        self.ask(
            shard,
            Rpc::Write(command),
            CALL_TIMEOUT,
            |reply| match reply {
                Reply::Write(result) => result,
                _ => Err(WriteError::UnexpectedReply),
            },
        )
        .await
    }

    /// Every live connection of `user`, cluster-wide, from the user's shard (linearizable:
    /// every change committed before the call is seen).
    pub async fn presence_of(
        &self,
        user: &str,
        linearizable: bool,
    ) -> Result<Vec<ConnectionRecord>, WriteError> {
        let shard = self.shard_of(user);
        if linearizable {
            // A voter the shard has just dropped cannot confirm a read: ask the others.
            if let Some(consensus) = self.voting(shard)
                && consensus.linearizable().await.is_ok()
            {
                return Ok(consensus.replica().read().presence.user(user));
            }
        } else if let Some(consensus) = self.voting(shard).filter(|c| c.has_leader()) {
            // This node's replica of the shard, possibly a little behind, while the
            // shard has a leader that can commit (a follower that hears from one, a
            // leader a quorum acknowledged within --node-timeout-ms): a shard that lost
            // its majority answers `unavailable`, not entries that may be stale.
            return Ok(consensus.replica().read().presence.user(user));
        }
        let rpc = Rpc::Presence {
            user: user.to_owned(),
            linearizable,
        };
        self.ask(shard, rpc, CALL_TIMEOUT * 3, |reply| match reply {
            Reply::Presence(result) => result,
            _ => Err(WriteError::UnexpectedReply),
        })
        .await
    }

    /// How many connections of this node shard `shard` holds, once it applied log index
    /// `applied`.
    pub(super) async fn registered(&self, shard: Shard, applied: u64) -> Result<u64, WriteError> {
        if let Some(consensus) = self.voting(shard) {
            consensus.caught_up(applied).await?;
            return Ok(consensus.replica().node_connections(self.me) as u64);
        }
        let rpc = Rpc::Count {
            node: self.me,
            applied,
        };
        self.ask(shard, rpc, CALL_TIMEOUT * 4, |reply| match reply {
            Reply::Count(result) => result,
            _ => Err(WriteError::UnexpectedReply),
        })
        .await
    }

    /// Up to `max` events of shard `shard` from `from` (of `user` only, when given),
    /// waiting up to `wait` for one; or its state (asked, or `from` older than it keeps).
    pub async fn events(
        &self,
        shard: Shard,
        from: Origin,
        user: Option<&str>,
        max: usize,
        wait: Duration,
    ) -> Result<Events, WriteError> {
        if let Some(consensus) = self.voting(shard) {
            return Ok(consensus.events(from, user, max, wait).await);
        }
        let rpc = Rpc::Events {
            from,
            user: user.map(str::to_owned),
            max: max as u32,
            wait_ms: wait.as_millis() as u32,
        };
        self.ask(shard, rpc, wait + CALL_TIMEOUT * 3, |reply| match reply {
            Reply::Events(result) => result,
            _ => Err(WriteError::UnexpectedReply),
        })
        .await
    }
}
