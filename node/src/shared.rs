//! The state every part of a node shares: configuration, the broker core behind a
//! short-held lock, the presence registry, metrics and the node's lifecycle.
//!
//! Locks here are std locks held for a bounded, non-async stretch (a fan-out loop of
//! `try_send`s at most) and never across an `.await`.

use std::sync::atomic::{AtomicU8, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::auth::Verifier;
use crate::broker::{Broker, BrokerLimits, ConnId};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::presence::Batcher;
use crate::raft::Replica;
use switchboard_proto::client::CloseCode;
use switchboard_proto::peer::PresenceOp;

/// Where a node is in its life. `/readyz` answers 200 only in `Ready`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Lifecycle {
    Starting = 0,
    Ready = 1,
    Draining = 2,
    Stopping = 3,
}

/// The broker's handle on one WebSocket connection: its bounded outbound queue, and a
/// way for whoever finds the queue full to have the connection closed.
#[derive(Debug)]
pub struct OutletInner {
    pub id: ConnId,
    tx: mpsc::Sender<Message>,
    close: Notify,
    close_code: AtomicU16,
}

/// Cheap to clone; the broker keeps one per group the connection is in.
pub type Outlet = Arc<OutletInner>;

impl OutletInner {
    /// A new outlet and the receiving end of its queue.
    pub fn new(id: ConnId, capacity: usize) -> (Outlet, mpsc::Receiver<Message>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Arc::new(OutletInner {
                id,
                tx,
                close: Notify::new(),
                close_code: AtomicU16::new(0),
            }),
            rx,
        )
    }

    /// Asks the connection's task to close with `code`. The first request wins; returns
    /// whether this was it.
    pub fn request_close(&self, code: CloseCode) -> bool {
        let first = self
            .close_code
            .compare_exchange(0, code.code(), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            self.close.notify_one();
        }
        first
    }

    /// Waits until a close is requested, and says with which code.
    pub async fn close_requested(&self) -> CloseCode {
        loop {
            if let Some(code) = CloseCode::from_code(self.close_code.load(Ordering::Acquire)) {
                return code;
            }
            self.close.notified().await;
        }
    }
}

/// A published message, encoded once: every recipient gets a clone of the same frame,
/// which shares the payload bytes.
#[derive(Debug, Clone)]
pub struct Encoded(Message);

impl Encoded {
    /// A text frame when the payload is UTF-8, a binary frame otherwise.
    pub fn new(payload: Bytes) -> Self {
        match Utf8Bytes::try_from(payload.clone()) {
            Ok(text) => Encoded(Message::Text(text)),
            Err(_) => Encoded(Message::Binary(payload)),
        }
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// See the module header.
#[derive(Debug)]
pub struct Shared {
    pub config: Config,
    pub metrics: Metrics,
    pub verifier: Verifier,
    pub broker: RwLock<Broker<Outlet>>,
    /// What the cluster agreed on through Raft (presence, removed members): this node's
    /// replica, written only by the Raft state machine.
    pub replica: Arc<RwLock<Replica>>,
    batcher: Mutex<Batcher>,
    /// Wakes the presence writer early when a batch fills up.
    pub presence_flush: Notify,
    lifecycle: AtomicU8,
    next_conn: AtomicU64,
    /// Distinguishes this process's connection ids from a previous run's.
    boot: u64,
    pub started: Instant,
    /// Cancelled when the node drains: connection tasks close with 1012.
    pub drain: CancellationToken,
    /// Cancelled when the node shuts down (after drain).
    pub shutdown: CancellationToken,
    /// The peer mesh, set once at start.
    pub cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The Raft node, set once at start.
    pub consensus: std::sync::OnceLock<Arc<crate::raft::Consensus>>,
}

impl Shared {
    pub fn new(config: Config, verifier: Verifier) -> Arc<Self> {
        let limits = BrokerLimits {
            max_groups_per_connection: config.max_groups_per_connection,
            ..BrokerLimits::default()
        };
        let boot = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Arc::new(Shared {
            config,
            metrics: Metrics::default(),
            verifier,
            broker: RwLock::new(Broker::new(limits)),
            replica: Arc::new(RwLock::new(Replica::default())),
            batcher: Mutex::new(Batcher::default()),
            presence_flush: Notify::new(),
            lifecycle: AtomicU8::new(Lifecycle::Starting as u8),
            next_conn: AtomicU64::new(1),
            boot,
            started: Instant::now(),
            drain: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            cluster: std::sync::OnceLock::new(),
            consensus: std::sync::OnceLock::new(),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.config.node_id
    }

    pub fn lifecycle(&self) -> Lifecycle {
        match self.lifecycle.load(Ordering::Acquire) {
            0 => Lifecycle::Starting,
            1 => Lifecycle::Ready,
            2 => Lifecycle::Draining,
            _ => Lifecycle::Stopping,
        }
    }

    /// Moves forward in the lifecycle; never backwards.
    pub fn advance(&self, to: Lifecycle) {
        self.lifecycle.fetch_max(to as u8, Ordering::AcqRel);
    }

    /// Whether `/readyz` answers 200: accepting clients, with a known Raft leader that
    /// can commit, and in touch with a majority of the members this node knows.
    pub fn ready(&self) -> bool {
        self.lifecycle() == Lifecycle::Ready
            && self.consensus.get().is_some_and(|c| c.has_leader())
            && self
                .cluster
                .get()
                .is_none_or(|c| c.in_majority(!self.config.seeds.is_empty()))
    }

    /// Whether the node is draining or stopping.
    pub fn draining(&self) -> bool {
        self.lifecycle() >= Lifecycle::Draining
    }

    /// A new connection id: a local number, and the cluster-unique string form.
    pub fn next_connection(&self) -> (ConnId, String) {
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        (id, format!("{}-{:x}-{id}", self.config.node_id, self.boot))
    }

    /// Queues a presence change; it is applied within the flush interval.
    pub fn presence_change(&self, op: PresenceOp) {
        let full = lock(&self.batcher).push(op);
        if full {
            self.presence_flush.notify_one();
        }
    }

    /// Takes every queued presence change, in order, for the presence writer.
    /// At most [`crate::presence::MAX_BATCH`], so that one Raft entry stays small.
    pub fn take_presence_ops(&self) -> Vec<PresenceOp> {
        lock(&self.batcher).take_at_most(crate::presence::MAX_BATCH)
    }

    /// Puts changes that could not be committed back in front of the queue.
    pub fn requeue_presence_ops(&self, ops: Vec<PresenceOp>) {
        lock(&self.batcher).requeue(ops);
    }

    /// Number of presence changes waiting.
    pub fn presence_queue_len(&self) -> usize {
        lock(&self.batcher).len()
    }

    /// Whether no presence change is waiting.
    pub fn presence_queue_is_empty(&self) -> bool {
        lock(&self.batcher).is_empty()
    }

    /// This node's live connection count, if no presence change is queued (both read
    /// under one lock, so they agree).
    pub fn settled_live_connections(&self) -> Option<usize> {
        let batcher = lock(&self.batcher);
        batcher.is_empty().then(|| batcher.live())
    }

    /// Queues a re-registration of every live connection of this node, replacing what
    /// is queued, and wakes the writer.
    pub fn resync_presence(&self) {
        lock(&self.batcher).resync(self.node_id());
        self.presence_flush.notify_one();
    }

    /// Delivers `payload` to every local connection in `group`. Returns the number of
    /// connections it was routed to. A connection whose queue is full is closed as a slow
    /// consumer (4008) rather than allowed to grow without bound.
    pub fn publish_local(&self, group: &str, message: &Encoded) -> usize {
        let broker = read(&self.broker);
        let recipients = broker.recipients(group);
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for outlet in recipients {
            match outlet.tx.try_send(message.0.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    dropped += 1;
                    // Counted once per client, when its queue first overflows; the
                    // client sees 4008 after what was already queued.
                    if outlet.request_close(CloseCode::SlowConsumer) {
                        self.metrics.slow_consumer_closes.inc();
                    }
                }
                // The connection is on its way out; it unregisters itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        let routed = recipients.len();
        drop(broker);
        self.metrics.messages_delivered.add(delivered);
        self.metrics
            .bytes_delivered
            .add(delivered * message.len() as u64);
        if dropped > 0 {
            self.metrics.messages_dropped.add(dropped);
        }
        routed
    }

    /// Publishes to `group` cluster-wide: to local connections, and once to each peer
    /// with subscribers for it. Returns the number of connections routed to.
    pub fn publish(&self, group: &str, payload: Bytes) -> usize {
        self.metrics.messages_published.inc();
        let message = Encoded::new(payload.clone());
        let text = matches!(message.0, Message::Text(_));
        let local = self.publish_local(group, &message);
        let remote = self
            .cluster
            .get()
            .map_or(0, |c| c.forward(group, &payload, text));
        local + remote
    }

    /// Number of connections in `group`, per node, cluster-wide.
    pub fn group_counts(&self, group: &str) -> Vec<(u64, usize)> {
        let local = read(&self.broker).group_size(group);
        match self.cluster.get() {
            Some(cluster) => cluster.with_local((self.node_id(), local), group),
            None if local > 0 => vec![(self.node_id(), local)],
            None => Vec::new(),
        }
    }

    /// Every live connection of `user`, cluster-wide, from this node's replica of the
    /// presence registry; ordered by node, then connection id.
    pub fn presence_of(&self, user: &str) -> Vec<switchboard_proto::client::PresenceEntry> {
        read(&self.replica)
            .presence
            .user(user)
            .into_iter()
            .map(|r| switchboard_proto::client::PresenceEntry {
                node: r.node,
                connection: r.connection,
                connected_at: r.connected_at,
            })
            .collect()
    }

    /// Groups with at least one connection anywhere in the cluster, sorted.
    pub fn all_groups(&self, pattern: Option<&[u8]>) -> Vec<String> {
        let mut groups = read(&self.broker).groups(pattern);
        if let Some(cluster) = self.cluster.get() {
            groups.extend(
                cluster
                    .groups()
                    .into_iter()
                    .filter(|g| pattern.is_none_or(|p| crate::broker::glob_match(p, g.as_bytes()))),
            );
            groups.sort_unstable();
            groups.dedup();
        }
        groups
    }
}

/// Locks a mutex, recovering from poisoning: every critical section here leaves the data
/// consistent before anything can panic, so a poisoned lock still holds valid state.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Read-locks, recovering from poisoning (see [`lock`]).
pub fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Write-locks, recovering from poisoning (see [`lock`]).
pub fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
