//! The presence writer: commits this node's queued presence changes through Raft.
//!
//! Every `presence::FLUSH_INTERVAL` (at once when the queue's bell rings) it takes at
//! most one entry's worth of ops and commits them (through the leader when this node is
//! a follower). A batch that cannot be committed (no leader, a cut-off node) goes back
//! to the front of the queue, in order, and is retried with a growing pause: accepting a
//! WebSocket never waits for Raft, and nothing is lost or reordered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tracing::warn;

use super::{Consensus, WriteError};
use crate::presence::{Command, FLUSH_INTERVAL, MAX_BATCH};

/// The pause after `failures` failed flushes in a row grows by this much, up to
/// [`RETRY_STEPS`] steps.
const RETRY_STEP: Duration = Duration::from_millis(50);
const RETRY_STEPS: u32 = 4;
/// After the first failure, one warning every this many failures in a row.
const WARN_EVERY: u32 = 100;

impl Consensus {
    /// Commits this node's queued presence changes (one entry's worth). On failure they
    /// go back to the front of the queue, so nothing is lost and order is kept.
    pub async fn flush_presence(&self) -> Result<usize, WriteError> {
        let _one_at_a_time = self.flushing.lock().await;
        let ops = self.queue.take(0);
        if ops.is_empty() {
            return Ok(0);
        }
        let n = ops.len();
        let stamped = Command::PresenceAt {
            ops: ops.clone(),
            at_ms: crate::clock::unix_millis(),
        };
        match self.write(stamped).await {
            Ok(index) => {
                self.last_written.fetch_max(index, Ordering::AcqRel);
                self.counters.writes.inc();
                self.counters.presence_ops.add(n as u64);
                Ok(n)
            }
            Err(e) => {
                self.counters.write_failures.inc();
                self.queue.requeue(0, ops);
                Err(e)
            }
        }
    }
}

/// The writer loop, until shutdown.
pub async fn run(consensus: Arc<Consensus>) {
    let shutdown = consensus.lifecycle.shutdown_token().clone();
    let queue = consensus.queue.clone();
    let mut failures = 0u32;
    loop {
        let pause = if failures == 0 {
            FLUSH_INTERVAL
        } else {
            RETRY_STEP * failures.min(RETRY_STEPS)
        };
        // A backlog of full batches goes out back to back.
        let backlog = failures == 0 && queue.len(0) >= MAX_BATCH;
        if !backlog {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = queue.notified(0) => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        match consensus.flush_presence().await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(WARN_EVERY) {
                    warn!(error = %e, failures, "presence changes not committed yet; retrying");
                }
            }
        }
    }
}

impl Consensus {
    /// Whether no presence change of this node is waiting to be committed.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}
