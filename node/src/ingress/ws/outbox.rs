//! What a bridged connection still owes the backend after it ended: the call that was in
//! flight, the frames queued behind it, then its `disconnect`, in that order. One task
//! per ended connection makes them; a `disconnect` the backend fails is retried with
//! backoff ([`retry_delay`]) until it answers.
//!
//! Bounded: at most `--backend-max-pending` connections, and [`MAX_PENDING_BYTES`] of
//! what they carry (scopes and frames), wait at once; past either bound the oldest is
//! given up, logged and counted (`switchboard_backend_disconnects_dropped_total`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use switchboard_proto::bridge::Answer;
use tokio::task::AbortHandle;
use tracing::{debug, warn};

use crate::backend::lane::Frame;
use crate::backend::{Backend, CallError, Caller, Event};
use crate::sync::lock;

/// The most bytes ended connections' owed calls may hold at once.
pub const MAX_PENDING_BYTES: usize = 64 * 1024 * 1024;
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

/// See the module header.
#[derive(Debug)]
pub struct Outbox {
    backend: Arc<Backend>,
    max_pending: usize,
    /// The tasks waiting, oldest first, with the bytes each holds.
    pending: Mutex<BTreeMap<u64, (AbortHandle, usize)>>,
    bytes: AtomicUsize,
    next: AtomicU64,
    tasks: tokio_util::task::TaskTracker,
}

impl Outbox {
    pub fn new(backend: Arc<Backend>) -> Self {
        Outbox {
            max_pending: backend.settings.max_pending,
            backend,
            pending: Mutex::new(BTreeMap::new()),
            bytes: AtomicUsize::new(0),
            next: AtomicU64::new(0),
            tasks: tokio_util::task::TaskTracker::new(),
        }
    }

    /// Makes `tail`'s calls (after `in_flight`, if any) in a task of its own.
    pub fn finish(self: &Arc<Self>, in_flight: Option<InFlight>, tail: Tail) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let size = tail.size();
        let outbox = self.clone();
        let task = self.tasks.spawn(async move {
            outbox.run(in_flight, tail).await;
            outbox.forget(id);
        });
        self.backend.metrics.disconnects_pending.inc();
        self.bytes.fetch_add(size, Ordering::Relaxed);
        let mut pending = lock(&self.pending);
        pending.insert(id, (task.abort_handle(), size));
        while pending.len() > self.max_pending
            || self.bytes.load(Ordering::Relaxed) > MAX_PENDING_BYTES
        {
            let Some((_, (oldest, size))) = pending.pop_first() else {
                break;
            };
            oldest.abort();
            self.gone(size);
            self.backend.metrics.disconnects_dropped.inc();
            warn!(
                pending = pending.len(),
                "too many disconnect calls wait for the backend: the oldest is given up"
            );
        }
    }

    /// Waits until every owed call is made (or the time is up).
    pub async fn wait(&self, within: Duration) -> bool {
        self.tasks.close();
        let done = tokio::time::timeout(within, self.tasks.wait())
            .await
            .is_ok();
        self.tasks.reopen();
        done
    }

    /// Connections whose calls are still owed.
    pub fn pending(&self) -> usize {
        lock(&self.pending).len()
    }

    fn forget(&self, id: u64) {
        if let Some((_, size)) = lock(&self.pending).remove(&id) {
            self.gone(size);
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
        let caller = &tail.caller;
        for (frame, seq) in &tail.frames {
            // The socket is gone: what the consumer answers has nowhere to go, but what
            // it does (its database, its groups) happens, as under Daphne.
            if let Err(e) = self
                .backend
                .event(caller, *seq, Event::Receive(frame))
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
            match self.backend.event(caller, tail.seq, disconnect).await {
                Ok(_) => return,
                Err(e) => {
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
