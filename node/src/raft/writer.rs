//! The presence writer: commits this node's queued presence changes through Raft.
//!
//! Every `presence::FLUSH_INTERVAL` (at once when the queue's bell rings) it takes at
//! most one entry's worth of ops and commits them (through the leader when this node is
//! a follower). A batch that cannot be committed (no leader, a cut-off node) goes back
//! to the front of the queue, in order, and is retried with a growing pause: accepting a
//! WebSocket never waits for Raft, and nothing is lost or reordered.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::warn;

use super::metrics::RaftCounters;
use super::{Consensus, WriteError};
use crate::presence::shards::Shard;
use crate::presence::{Command, FLUSH_INTERVAL, MAX_BATCH, PresenceQueue};

/// The pause after `failures` failed flushes in a row grows by this much, up to
/// [`RETRY_STEPS`] steps.
const RETRY_STEP: Duration = Duration::from_millis(50);
const RETRY_STEPS: u32 = 4;
/// After the first failure, one warning every this many failures in a row.
pub(super) const WARN_EVERY: u32 = 100;

impl Consensus {
    /// Commits this node's queued presence changes (one entry's worth). On failure they
    /// go back to the front of the queue, so nothing is lost and order is kept.
    pub async fn flush_presence(&self) -> Result<usize, WriteError> {
        let _one_at_a_time = self.flushing.lock().await;
        flush_batch(
            &self.queue,
            0,
            &self.counters,
            &self.last_written,
            |command| self.write(command),
        )
        .await
    }
}

/// Takes one entry's worth of `shard`'s queued ops and commits them with `write`, stamped
/// with this node's clock; notes the log index in `last_written`. On failure the ops go
/// back to the front of that shard's queue. The caller holds its flush lock (one batch of
/// a queue in flight at a time, so that they commit in order).
pub(super) async fn flush_batch<F, Fut>(
    queue: &PresenceQueue,
    shard: Shard,
    counters: &RaftCounters,
    last_written: &AtomicU64,
    write: F,
) -> Result<usize, WriteError>
where
    F: FnOnce(Command) -> Fut,
    Fut: Future<Output = Result<u64, WriteError>>,
{
    let ops = queue.take(shard);
    if ops.is_empty() {
        return Ok(0);
    }
    let n = ops.len();
    let stamped = Command::PresenceAt {
        ops: ops.clone(),
        at_ms: crate::clock::unix_millis(),
    };
    match write(stamped).await {
        Ok(index) => {
            last_written.fetch_max(index, Ordering::AcqRel);
            counters.writes.inc();
            counters.presence_ops.add(n as u64);
            queue.committed(shard, &ops);
            Ok(n)
        }
        Err(e) => {
            counters.write_failures.inc();
            queue.requeue(shard, ops);
            Err(e)
        }
    }
}

/// The pause before the next flush after `failures` failed ones in a row.
pub(super) fn pause(failures: u32) -> Duration {
    if failures == 0 {
        FLUSH_INTERVAL
    } else {
        RETRY_STEP * failures.min(RETRY_STEPS)
    }
}

/// The writer loop, until shutdown.
pub async fn run(consensus: Arc<Consensus>) {
    let shutdown = consensus.lifecycle.shutdown_token().clone();
    let queue = consensus.queue.clone();
    let mut failures = 0u32;
    loop {
        let pause = pause(failures);
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
