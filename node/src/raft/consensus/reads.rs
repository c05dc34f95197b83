//! Reads: the read index and the waits that make a read linearizable, and presence
//! events for a follower of this group (a node without a seat in a shard).

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, RaftError};

use super::{Consensus, READ_INDEX_TIMEOUT, WriteError};
use crate::presence::events::{Origin, Read};
use crate::raft::network::{Events, Reply, Rpc};

impl Consensus {
    /// The log index a read must see: the leader's read index, confirmed with a quorum.
    pub(super) async fn read_index(&self) -> Result<u64, WriteError> {
        match self.raft.get_read_log_id().await {
            Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                let leader = f.leader_id.ok_or(WriteError::NoLeader)?;
                match self
                    .ask_leader(leader, Rpc::ReadIndex, READ_INDEX_TIMEOUT)
                    .await?
                {
                    Reply::ReadIndex(result) => result,
                    _ => Err(WriteError::UnexpectedReply),
                }
            }
            Err(e) => Err(WriteError::Raft(e.to_string())),
        }
    }

    /// Waits until this node's replica reflects every write committed before the call
    /// (a read index confirmed by the leader with a quorum), so that a read that
    /// follows is linearizable.
    pub async fn linearizable(&self) -> Result<(), WriteError> {
        let index = self.read_index().await?;
        self.applied(index, "read index").await
    }

    /// Waits (at most [`READ_INDEX_TIMEOUT`]) until this node applied log index `index`:
    /// a reader resuming from a position another node gave it.
    pub async fn caught_up(&self, index: u64) -> Result<(), WriteError> {
        self.applied(index, "a resume position").await
    }

    /// Waits (at most [`READ_INDEX_TIMEOUT`]) until this node applied log index `index`.
    pub(super) async fn applied(&self, index: u64, why: &str) -> Result<(), WriteError> {
        self.raft
            .wait(Some(READ_INDEX_TIMEOUT))
            .applied_index_at_least(Some(index), why)
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Raft(format!("replica did not catch up: {e}")))
    }

    /// Up to `max` events from `from` (of `user` only, when given), waiting up to `wait`
    /// for one; or the current state (a reset asked, or `from` older than what this node
    /// keeps).
    pub async fn events(
        &self,
        from: Origin,
        user: Option<&str>,
        max: usize,
        wait: Duration,
    ) -> Events {
        let after = match from {
            Origin::Now => return Events::After(Vec::new(), self.replica.newest_event()),
            Origin::Reset => {
                let (at, records) = self.replica.reset(user);
                return Events::Reset(at, records);
            }
            Origin::After(after) => after,
        };
        let deadline = tokio::time::Instant::now() + wait;
        let mut newest = self.replica.subscribe();
        loop {
            newest.borrow_and_update();
            let read = match user {
                Some(user) => self.replica.user_events_after(user, after, max),
                None => self.replica.events_after(after, max, |_| true),
            };
            match read {
                Read::Behind => {
                    let (at, records) = self.replica.reset(user);
                    return Events::Reset(at, records);
                }
                Read::Events(events, seen) => {
                    if !events.is_empty() || seen > after {
                        return Events::After(events.into_iter().map(Into::into).collect(), seen);
                    }
                }
            }
            match tokio::time::timeout_at(deadline, newest.changed()).await {
                Ok(Ok(())) => {}
                _ => return Events::After(Vec::new(), after),
            }
        }
    }
}
