//! A presence shard's writer: commits this node's queued changes in that shard, and
//! checks that the shard holds exactly this node's live connections in it.
//!
//! Every `presence::FLUSH_INTERVAL` (at once when the shard's bell rings) it takes at most
//! one entry's worth of the shard's ops and commits them on the shard's leader. A batch
//! that cannot be committed goes back to the front of the shard's queue, in order, and is
//! retried with a growing pause; other shards are not held up.
//!
//! Every [`LOOK_EVERY`], when the shard's queue is empty and no write is in flight, it
//! compares this node's live connections in the shard with what the shard holds for it
//! (once the shard applied this node's last write); two disagreeing looks in a row
//! re-register them in that shard (after a restart, or a purge while cut off).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::Shards;
use crate::presence::MAX_BATCH;
use crate::presence::shards::Shard;
use crate::raft::WriteError;
use crate::raft::steward::MISMATCHES_BEFORE_RESYNC;
use crate::raft::writer::{WARN_EVERY, flush_batch, pause};

/// How often the writer compares what the shard holds for this node with the truth.
pub const LOOK_EVERY: Duration = Duration::from_secs(1);

impl Shards {
    /// Commits this node's queued changes in `shard` (one entry's worth). On failure they
    /// go back to the front of the shard's queue, so nothing is lost and order is kept.
    pub async fn flush(&self, shard: Shard) -> Result<usize, WriteError> {
        let slot = &self.slots[usize::from(shard)];
        let _one_at_a_time = slot.flushing.lock().await;
        let counters = &self.control.counters;
        flush_batch(
            &self.queue,
            shard,
            counters,
            &slot.last_written,
            |command| self.write(shard, command),
        )
        .await
    }

    /// One look at whether `shard` holds exactly this node's live connections in it;
    /// `None` when it cannot be told now (changes queued or in flight, draining, the
    /// shard unreachable).
    async fn agrees(&self, shard: Shard) -> Option<bool> {
        let slot = &self.slots[usize::from(shard)];
        let _writer_idle = slot.flushing.try_lock().ok()?;
        if self.lifecycle.draining() {
            return None;
        }
        let live = self.queue.settled_live(shard)?;
        let applied = slot.last_written.load(Ordering::Acquire);
        let held = self.registered(shard, applied).await.ok()?;
        // A change pushed meanwhile makes the look void.
        (self.queue.settled_live(shard)? == live).then_some(held == live as u64)
    }
}

/// Shard `shard`'s writer loop, until shutdown.
pub async fn run(shards: Arc<Shards>, shard: Shard) {
    let shutdown = shards.lifecycle.shutdown_token().clone();
    let queue = shards.queue.clone();
    let mut failures = 0u32;
    let mut mismatches = 0u32;
    let mut next_look = Instant::now() + LOOK_EVERY;
    loop {
        let pause = pause(failures);
        // A backlog of full batches goes out back to back.
        let backlog = failures == 0 && queue.len(shard) >= MAX_BATCH;
        if !backlog {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = queue.notified(shard) => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        match shards.flush(shard).await {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures == 1 || failures.is_multiple_of(WARN_EVERY) {
                    warn!(shard, error = %e, failures, "presence changes not committed yet; retrying");
                }
            }
        }
        if failures == 0 && Instant::now() >= next_look {
            next_look = Instant::now() + LOOK_EVERY;
            match shards.agrees(shard).await {
                Some(false) => {
                    mismatches += 1;
                    if mismatches >= MISMATCHES_BEFORE_RESYNC {
                        info!(
                            shard,
                            "re-registering this node's connections in a presence shard"
                        );
                        queue.resync(shard);
                        shards.control.counters.resyncs.inc();
                        mismatches = 0;
                    }
                }
                Some(true) => mismatches = 0,
                None => {}
            }
        }
    }
}
