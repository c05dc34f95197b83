//! Readiness, from facts the parts report, not from reaching into them.
//!
//! `/readyz` is 200 when the node is in its `Ready` stage, knows a Raft leader that can
//! commit (reported by the Raft layer), and is in touch with a majority of the members it
//! knows (reported by the mesh). Each fact is an atomic its owner keeps current; reading
//! readiness takes no lock, so a health check never waits on the data path.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::lifecycle::{Lifecycle, Stage};

/// See the module header.
#[derive(Debug)]
pub struct Health {
    lifecycle: Arc<Lifecycle>,
    leader: AtomicBool,
    majority: AtomicBool,
}

impl Health {
    /// Not ready until both facts are reported true.
    pub fn new(lifecycle: Arc<Lifecycle>) -> Self {
        Health {
            lifecycle,
            leader: AtomicBool::new(false),
            majority: AtomicBool::new(false),
        }
    }

    /// Whether `/readyz` answers 200.
    pub fn ready(&self) -> bool {
        self.lifecycle.stage() == Stage::Ready
            && self.leader.load(Ordering::Acquire)
            && self.majority.load(Ordering::Acquire)
    }

    /// Why the node is not ready, for `/readyz`'s 503 body.
    pub fn reason(&self) -> &'static str {
        match self.lifecycle.stage() {
            Stage::Ready if !self.majority.load(Ordering::Acquire) => "not in a majority",
            Stage::Ready if !self.leader.load(Ordering::Acquire) => "no raft leader",
            stage => stage.name(),
        }
    }

    /// The Raft layer: whether a leader that can commit is known.
    pub fn set_leader(&self, known: bool) {
        self.leader.store(known, Ordering::Release);
    }

    /// The mesh: whether this node is in touch with a majority of the members it knows.
    pub fn set_majority(&self, in_majority: bool) {
        self.majority.store(in_majority, Ordering::Release);
    }

    /// Whether a Raft leader that can commit is known (as last reported).
    pub fn leader_known(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Whether this node is in touch with a majority (as last reported).
    pub fn in_majority(&self) -> bool {
        self.majority.load(Ordering::Acquire)
    }

    /// The lifecycle this readiness follows.
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.lifecycle
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_every_fact() {
        let health = Health::new(Arc::new(Lifecycle::default()));
        health.set_leader(true);
        health.set_majority(true);
        assert!(!health.ready(), "still starting");
        health.lifecycle().advance(Stage::Ready);
        assert!(health.ready());
        health.set_majority(false);
        assert!(!health.ready());
        assert_eq!(health.reason(), "not in a majority");
        health.set_majority(true);
        health.lifecycle().drain();
        assert!(!health.ready());
        assert_eq!(health.reason(), "draining");
    }
}
