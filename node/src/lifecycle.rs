//! Where a node is in its life, and the two tokens every task watches.
//!
//! [`Stage`]s go `Starting -> Ready -> Draining -> Stopping`, never backwards.
//! [`Lifecycle::drain`] is the one way to start draining (the admin API, SIGTERM, and a
//! node that learns it was removed all call it): it moves to `Draining` and cancels the
//! drain token. What draining means to each part is that part's business, done where it
//! watches the token: connection tasks close with 1012, the presence writer queues the
//! purge of this node's presence, the node leaves the mesh once that is committed.

use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Instant;

use tokio_util::sync::CancellationToken;
use tracing::info;

/// See the module header. `/readyz` answers 200 only in `Ready` (and see `health`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Stage {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Stopping = 3,
}

impl Stage {
    /// The lower-case name shown by `status` and `/readyz`.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Starting => "starting",
            Stage::Ready => "ready",
            Stage::Draining => "draining",
            Stage::Stopping => "stopping",
        }
    }
}

/// See the module header.
#[derive(Debug)]
pub struct Lifecycle {
    stage: AtomicU8,
    drain: CancellationToken,
    shutdown: CancellationToken,
    started: Instant,
}

impl Default for Lifecycle {
    fn default() -> Self {
        Lifecycle {
            stage: AtomicU8::new(Stage::Starting as u8),
            drain: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            started: Instant::now(),
        }
    }
}

impl Lifecycle {
    /// The current stage.
    pub fn stage(&self) -> Stage {
        match self.stage.load(Ordering::Acquire) {
            0 => Stage::Starting,
            1 => Stage::Ready,
            2 => Stage::Draining,
            _ => Stage::Stopping,
        }
    }

    /// Moves forward to `to`; never backwards.
    pub fn advance(&self, to: Stage) {
        self.stage.fetch_max(to as u8, Ordering::AcqRel);
    }

    /// Starts draining (idempotent): not ready any more, and every watcher of the drain
    /// token does its part.
    pub fn drain(&self) {
        if self.stage() < Stage::Draining {
            info!("draining: closing clients with 1012 and leaving");
        }
        self.advance(Stage::Draining);
        self.drain.cancel();
    }

    /// Whether the node is draining or stopping.
    pub fn draining(&self) -> bool {
        self.stage() >= Stage::Draining
    }

    /// Cancelled when the node drains.
    pub fn drain_token(&self) -> &CancellationToken {
        &self.drain
    }

    /// Cancelled when the node shuts down (after the drain): background loops end.
    pub fn shutdown_token(&self) -> &CancellationToken {
        &self.shutdown
    }

    /// Stops the background loops.
    pub fn shut_down(&self) {
        self.advance(Stage::Stopping);
        self.shutdown.cancel();
    }

    /// When the node started.
    pub fn started(&self) -> Instant {
        self.started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_only_move_forward() {
        let life = Lifecycle::default();
        life.advance(Stage::Ready);
        life.drain();
        assert_eq!(life.stage(), Stage::Draining);
        assert!(life.drain_token().is_cancelled());
        life.advance(Stage::Ready);
        assert_eq!(life.stage(), Stage::Draining, "never backwards");
        life.shut_down();
        assert_eq!(life.stage(), Stage::Stopping);
        assert!(life.shutdown_token().is_cancelled());
    }
}
