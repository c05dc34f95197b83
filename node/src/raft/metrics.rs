//! The Raft layer's counters, and its rows in `/metrics`.

use crate::metrics::{Counter, Row};

use super::RaftStatus;

/// See the module header.
#[derive(Debug, Default)]
pub struct RaftCounters {
    /// Presence batches committed.
    pub writes: Counter,
    /// Presence batches that could not be committed (retried).
    pub write_failures: Counter,
    /// Presence batches forwarded to the leader.
    pub forwarded_writes: Counter,
    /// Presence changes committed.
    pub presence_ops: Counter,
    /// Times this node re-registered its connections.
    pub resyncs: Counter,
    /// Down nodes whose presence this node purged as leader.
    pub purges: Counter,
}

impl RaftCounters {
    /// The rows of `status` and of these counters.
    pub fn rows(&self, status: &RaftStatus, presence_entries: usize) -> Vec<Row> {
        vec![
            Row::gauge("raft_term", "Current Raft term.", status.term),
            Row::gauge(
                "raft_is_leader",
                "1 on the Raft leader.",
                u64::from(status.role == "leader"),
            ),
            Row::gauge(
                "raft_last_log_index",
                "Last Raft log index on this node.",
                status.last_log_index,
            ),
            Row::gauge(
                "raft_commit_index",
                "Raft log index committed and applied here.",
                status.commit_index,
            ),
            Row::gauge(
                "raft_apply_lag",
                "Log entries written here but not yet applied.",
                status.apply_lag,
            ),
            Row::gauge(
                "raft_voters",
                "Voters in the Raft membership.",
                status.voters.len() as u64,
            ),
            Row::gauge(
                "presence_entries",
                "Connections in the presence registries this node holds: every one, or those of the presence shards it hosts.",
                presence_entries as u64,
            ),
            Row::counter(
                "presence_writes_total",
                "Presence batches committed through Raft.",
                self.writes.get(),
            ),
            Row::counter(
                "presence_batches_total",
                "Presence batches flushed.",
                self.writes.get(),
            ),
            Row::counter(
                "presence_ops_applied_total",
                "Presence changes committed through Raft by this node.",
                self.presence_ops.get(),
            ),
            Row::counter(
                "presence_write_failures_total",
                "Presence batches that could not be committed (retried).",
                self.write_failures.get(),
            ),
            Row::counter(
                "presence_forwarded_writes_total",
                "Presence batches forwarded to the leader.",
                self.forwarded_writes.get(),
            ),
            Row::counter(
                "presence_resyncs_total",
                "Times this node re-registered its connections.",
                self.resyncs.get(),
            ),
            Row::counter(
                "presence_purges_total",
                "Down nodes whose presence this node purged as leader.",
                self.purges.get(),
            ),
        ]
    }
}
