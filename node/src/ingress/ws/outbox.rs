//! What a bridged connection still owes the backend after it ended: the call that was in
//! flight, the frames queued behind it, then its `disconnect`, in that order. One task
//! per ended connection makes them; a `disconnect` the backend fails is retried with
//! backoff ([`retry_delay`]) until it answers, then the registry is told it was
//! delivered (`PresenceOp::Delivered`). Until then the disconnect is owed in the
//! replicated registry (`LeaveOwed`): if this node dies first, the registry's leader
//! makes it (`super::owed`).
//!
//! A connection hands its tail here when it ends (`ended`), whether it ended in its
//! upgrade (`bridged.rs`) or as a session (`session/bridge.rs`).
//!
//! Bounded: at most `--backend-max-pending` connections, and [`MAX_PENDING_BYTES`] of
//! what they carry (scopes and frames), wait at once; past either bound the oldest is
//! given up (and marked delivered), logged and counted
//! (`switchboard_backend_disconnects_dropped_total`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchboard_proto::bridge::Answer;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use switchboard_proto::peer::PresenceOp;

use crate::backend::lane::Frame;
use crate::backend::{Backend, CallError, Caller, Event};
use crate::ingress::Ingress;
use crate::presence::PresenceQueue;
use crate::sync::lock;

/// The most bytes ended connections' owed calls may hold at once.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
/// At shutdown, the node stops waiting for the owed calls once none has been made for
/// this long while some failed (the backend is down: they stay owed in the registry, and
/// the others make them once this node is gone).
pub const STALLED: Duration = Duration::from_secs(2);
/// Ended connections whose calls are made at once; the others wait their turn (not
/// counted in a call's timeout). A thousand connections that end together (a drain)
/// then reach the backend at its own pace, instead of piling up behind its workers and
/// timing out (which the bridge would see as repeats).
pub const CONCURRENCY: usize = 32;
/// The first retry of a failed `disconnect` waits this long, each next one twice as
/// long, up to [`RETRY_MAX`].
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The pause before retry number `attempt` (0 is the first retry).
pub fn retry_delay(attempt: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX))
        .min(RETRY_MAX)
}

/// A call that was in flight when the connection ended.
pub type InFlight = BoxFuture<'static, Result<Answer, CallError>>;

/// What an ended connection owes the backend.
#[derive(Debug)]
pub struct Tail {
    pub caller: Arc<Caller>,
    /// Frames queued behind the call in flight, with their call numbers.
    pub frames: Vec<(Frame, u64)>,
    /// The disconnect's call number.
    pub seq: u64,
    /// The close code the backend is told.
    pub code: u16,
    /// Why it ended (`closed`, `rejected`, ...).
    pub reason: &'static str,
}

impl Tail {
    fn size(&self) -> usize {
        self.caller.size() + self.frames.iter().map(|(f, _)| f.len()).sum::<usize>()
    }
}

/// One ended connection whose calls are being made.
#[derive(Debug)]
struct Pending {
    task: AbortHandle,
    size: usize,
    caller: Arc<Caller>,
}

/// See the module header.
#[derive(Debug)]
pub struct Outbox {
    backend: Arc<Backend>,
    presence: Arc<PresenceQueue>,
    max_pending: usize,
    /// The tasks waiting, oldest first.
    pending: Mutex<BTreeMap<u64, Pending>>,
    bytes: AtomicUsize,
    next: AtomicU64,
    tasks: tokio_util::task::TaskTracker,
    /// Turns to make calls (see [`CONCURRENCY`]).
    turns: tokio::sync::Semaphore,
    /// When a disconnect call last succeeded, and last failed (ms since `started`).
    last_made: AtomicU64,
    last_failed: AtomicU64,
    started: std::time::Instant,
}

impl Outbox {
    pub fn new(backend: Arc<Backend>, presence: Arc<PresenceQueue>) -> Self {
        Outbox {
            max_pending: backend.settings.max_pending,
            backend,
            presence,
            pending: Mutex::new(BTreeMap::new()),
            bytes: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            tasks: tokio_util::task::TaskTracker::new(),
            turns: tokio::sync::Semaphore::new(CONCURRENCY),
            last_made: AtomicU64::new(0),
            last_failed: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Whether the backend fails every call lately: some failed, none made, for
    /// [`STALLED`].
    fn stalled(&self) -> bool {
        let (made, failed) = (
            self.last_made.load(Ordering::Relaxed),
            self.last_failed.load(Ordering::Relaxed),
        );
        failed > made && self.now_ms().saturating_sub(made) >= STALLED.as_millis() as u64
    }

    /// Makes `tail`'s calls (after `in_flight`, if any) in a task of its own.
    pub fn finish(self: &Arc<Self>, in_flight: Option<InFlight>, tail: Tail) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let size = tail.size();
        let caller = tail.caller.clone();
        let outbox = self.clone();
        // Registered before the task runs, so that its end always finds its entry.
        let mut pending = lock(&self.pending);
        let task = self.tasks.spawn(async move {
            outbox.run(in_flight, tail).await;
            outbox.forget(id);
        });
        self.backend.metrics.disconnects_pending.inc();
        self.bytes.fetch_add(size, Ordering::Relaxed);
        pending.insert(
            id,
            Pending {
                task: task.abort_handle(),
                size,
                caller,
            },
        );
        while pending.len() > self.max_pending
            || self.bytes.load(Ordering::Relaxed) > MAX_PENDING_BYTES
        {
            let Some((_, oldest)) = pending.pop_first() else {
                break;
            };
            oldest.task.abort();
            self.gone(oldest.size);
            self.delivered(&oldest.caller);
            let metrics = &self.backend.metrics;
            metrics.disconnects_dropped.inc();
            let dropped = metrics.disconnects_dropped.get();
            if dropped.is_power_of_two() {
                warn!(
                    dropped,
                    pending = pending.len(),
                    "too many disconnect calls wait for the backend: the oldest are given up"
                );
            }
        }
    }

    /// Tells the registry that `caller`'s disconnect is owed no more.
    fn delivered(&self, caller: &Caller) {
        self.presence.push(PresenceOp::Delivered {
            node: caller.node,
            connection: caller.connection.clone(),
            user: caller.user.clone(),
        });
    }

    /// Waits until every owed call is made, or the time is up, or the backend fails every
    /// call (see [`STALLED`]); whether they were all made.
    pub async fn wait(&self, within: Duration) -> bool {
        self.tasks.close();
        let stalled = async {
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                if self.stalled() {
                    return;
                }
            }
        };
        let done = tokio::select! {
            _ = self.tasks.wait() => true,
            _ = stalled => false,
            _ = tokio::time::sleep(within) => false,
        };
        self.tasks.reopen();
        done
    }

    /// Connections whose calls are still owed.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    fn forget(&self, id: u64) {
        if let Some(done) = lock(&self.pending).remove(&id) {
            self.gone(done.size);
            self.delivered(&done.caller);
        }
    }

    fn gone(&self, size: usize) {
        self.bytes.fetch_sub(size, Ordering::Relaxed);
        self.backend.metrics.disconnects_pending.dec();
    }

    async fn run(&self, in_flight: Option<InFlight>, tail: Tail) {
        if let Some(call) = in_flight {
            let _ = call.await;
        }
        let _turn = self.turns.acquire().await;
        let caller = &tail.caller;
        for (frame, seq) in &tail.frames {
            // The socket is gone: what the consumer answers has nowhere to go, but what
            // it does (its database, its groups) happens, as under Daphne.
            if let Err(e) = self
                .backend
                .event(caller, Some(*seq), Event::Receive(frame))
                .await
            {
                debug!(connection = %caller.connection, error = %e, "a frame after the end was not delivered");
            }
        }
        let disconnect = Event::Disconnect {
            code: tail.code,
            reason: tail.reason,
            presence_event: None,
        };
        let mut attempt = 0;
        loop {
            match self.backend.event(caller, Some(tail.seq), disconnect).await {
                Ok(_) => {
                    self.last_made.store(self.now_ms(), Ordering::Relaxed);
                    return;
                }
                Err(e) => {
                    self.last_failed
                        .store(self.now_ms().max(1), Ordering::Relaxed);
                    if attempt == 0 {
                        warn!(connection = %caller.connection, error = %e, "disconnect call failed; retrying with backoff");
                    }
                    self.backend.metrics.disconnects_retried.inc();
                    tokio::time::sleep(retry_delay(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}

/// A bridged connection ended with `code`: the registry is told its disconnect is owed,
/// and what it still owes the backend (the call in flight, the frames queued, then its
/// disconnect, call number `seq`) goes to the node's outbox.
pub(super) fn ended(
    ingress: &Ingress,
    in_flight: Option<InFlight>,
    caller: Arc<Caller>,
    frames: Vec<(Frame, u64)>,
    seq: u64,
    code: u16,
    reason: &'static str,
) {
    ingress.presence.push(PresenceOp::LeaveOwed {
        node: caller.node,
        connection: caller.connection.clone(),
        user: caller.user.clone(),
        code,
    });
    if let Some(outbox) = &ingress.outbox {
        outbox.finish(
            in_flight,
            Tail {
                caller,
                frames,
                seq,
                code,
                reason,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(0), RETRY_FIRST);
        assert_eq!(retry_delay(1), RETRY_FIRST * 2);
        assert_eq!(retry_delay(4), RETRY_FIRST * 16);
        assert_eq!(retry_delay(10), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
