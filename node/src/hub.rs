//! The hub: this node's subscription table behind its lock, and the local half of the
//! publish path.
//!
//! - [`Outlet`]: the hub's handle on one WebSocket connection, its bounded outbound queue
//!   and a way to have it closed.
//! - [`Encoded`]: a published message encoded once, shared by every recipient.
//! - [`Hub`]: the [`Broker`] behind a short-held `RwLock`. A publish takes the read lock
//!   only to clone the group's fan-out slice (see [`Broker::fanout`]) and fans out after
//!   releasing it, so a connect, a subscribe or a gossip round never waits behind a fan-out
//!   to 10 000 sockets. Introspection copies names out and filters outside the lock.
//!
//! The cluster-wide publish (local fan-out plus forwarding to peers) is `crate::router`'s;
//! the hub knows nothing of peers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

use base64::Engine;
use bytes::Bytes;
use switchboard_proto::client::{CloseCode, ServerReply};
use switchboard_proto::peer::Position;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::broker::{Broker, BrokerLimits, ConnId, JoinError, LeaveError, Permissions};
use crate::metrics::{Metrics, Row};
use crate::sync::{read, write};

/// What a connection's queue carries.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A frame written as it is: a published message on a plain connection.
    Frame(Message),
    /// A published message on a `?positions=1` connection: a JSON `message` frame, with
    /// its group and position so that the connection can hold it while it recovers the
    /// group and notice a gap.
    Positioned(Arc<Positioned>),
}

impl Outbound {
    /// Payload bytes, as the queue's byte bound counts them.
    pub fn len(&self) -> usize {
        match self {
            Outbound::Frame(m) => m.len(),
            Outbound::Positioned(p) => p.frame.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A published message framed for positioned connections.
#[derive(Debug)]
pub struct Positioned {
    pub group: String,
    pub position: Option<Position>,
    pub frame: Message,
}

/// The hub's handle on one WebSocket connection: its outbound queue, bounded in messages
/// and in payload bytes, and a way for whoever finds the queue full to have the
/// connection closed.
#[derive(Debug)]
pub struct OutletInner {
    pub id: ConnId,
    /// The connection asked for `?positions=1`: messages come as JSON `message` frames.
    pub positions: bool,
    tx: mpsc::Sender<Outbound>,
    /// Payload bytes queued and not yet written.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    close: Notify,
    close_code: AtomicU16,
}

/// What became of a message offered to an outlet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Queued,
    /// The queue is full, in messages or in bytes: the client is not keeping up.
    Full,
    /// The connection is on its way out.
    Closed,
}

/// Cheap to clone; the broker keeps one per group the connection is in.
pub type Outlet = Arc<OutletInner>;

impl OutletInner {
    /// A new outlet and the receiving end of its queue: at most `capacity` messages and
    /// `max_bytes` payload bytes (one message is always taken into an empty queue).
    pub fn new(
        id: ConnId,
        capacity: usize,
        max_bytes: usize,
        positions: bool,
    ) -> (Outlet, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(capacity);
        (
            Arc::new(OutletInner {
                id,
                positions,
                tx,
                queued_bytes: AtomicUsize::new(0),
                max_bytes,
                close: Notify::new(),
                close_code: AtomicU16::new(0),
            }),
            rx,
        )
    }

    /// Offers one message of `group` to the queue, framed as this connection wants it.
    pub fn offer(&self, group: &str, message: &Encoded) -> Offer {
        let item = if self.positions {
            Outbound::Positioned(message.positioned_frame(group))
        } else {
            Outbound::Frame(message.raw.clone())
        };
        self.push(item)
    }

    /// Queues one item, within the message and byte bounds.
    pub fn push(&self, item: Outbound) -> Offer {
        let len = item.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Offer::Full;
        }
        match self.tx.try_send(item) {
            Ok(()) => Offer::Queued,
            Err(e) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => Offer::Full,
                    mpsc::error::TrySendError::Closed(_) => Offer::Closed,
                }
            }
        }
    }

    /// The connection wrote `len` payload bytes taken from the queue.
    pub fn written(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
    }

    /// Payload bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
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

/// A published message, encoded once: every plain recipient gets a clone of the same
/// frame, which shares the payload bytes; positioned recipients share one JSON frame,
/// made on first need.
#[derive(Debug)]
pub struct Encoded {
    raw: Message,
    position: Option<Position>,
    positioned: OnceLock<Arc<Positioned>>,
}

impl Encoded {
    /// A text frame when the payload is UTF-8, a binary frame otherwise.
    pub fn new(payload: Bytes) -> Self {
        let raw = match Utf8Bytes::try_from(payload.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(payload),
        };
        Encoded {
            raw,
            position: None,
            positioned: OnceLock::new(),
        }
    }

    /// A message of a history group, at `position`.
    pub fn with_position(payload: Bytes, position: Position) -> Self {
        let mut encoded = Encoded::new(payload);
        encoded.position = Some(position);
        encoded
    }

    /// Whether the frame is a text frame (the payload is UTF-8).
    pub fn is_text(&self) -> bool {
        matches!(self.raw, Message::Text(_))
    }

    /// The message's position, in a history group.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The JSON `message` frame positioned connections get.
    pub fn positioned_frame(&self, group: &str) -> Arc<Positioned> {
        self.positioned
            .get_or_init(|| {
                let (data, b64data) = match &self.raw {
                    Message::Text(text) => (Some(text.as_str().to_owned()), None),
                    other => (
                        None,
                        Some(
                            base64::engine::general_purpose::STANDARD
                                .encode(other.clone().into_data()),
                        ),
                    ),
                };
                let frame = ServerReply::Message {
                    group: group.to_owned(),
                    data,
                    b64data,
                    epoch: self.position.map(|p| p.epoch),
                    offset: self.position.map(|p| p.offset),
                };
                let text = serde_json::to_string(&frame).unwrap_or_default();
                Arc::new(Positioned {
                    group: group.to_owned(),
                    position: self.position,
                    frame: Message::Text(text.into()),
                })
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}

/// A batch of interest changes: the version it brings the table to, and each changed
/// group with its new local count (0 = gone).
pub type InterestDelta = (u64, Vec<(String, u32)>);
/// The whole interest: its version, and every group with its local count.
pub type InterestSnapshot = (u64, BTreeMap<String, u32>);

/// See the module header.
#[derive(Debug)]
pub struct Hub {
    broker: RwLock<Broker<Outlet>>,
    metrics: Arc<Metrics>,
}

impl Hub {
    pub fn new(limits: BrokerLimits, metrics: Arc<Metrics>) -> Self {
        Hub {
            broker: RwLock::new(Broker::new(limits)),
            metrics,
        }
    }

    /// Registers a connection in its user group and its token's groups; returns the
    /// groups it could not join, with why.
    pub fn connect(
        &self,
        outlet: &Outlet,
        user: &str,
        user_group: &str,
        permissions: Permissions,
    ) -> Vec<(String, JoinError)> {
        write(&self.broker).connect(outlet.id, outlet.clone(), user, user_group, permissions)
    }

    /// Joins a connection to a group its token permits.
    pub fn join(&self, outlet: &Outlet, group: &str) -> Result<(), JoinError> {
        write(&self.broker).join(outlet.id, outlet.clone(), group)
    }

    /// Takes a connection out of a group.
    pub fn leave(&self, id: ConnId, group: &str) -> Result<(), LeaveError> {
        write(&self.broker).leave(id, group)
    }

    /// Forgets a connection.
    pub fn disconnect(&self, id: ConnId) {
        write(&self.broker).disconnect(id);
    }

    /// Replaces a connection's permissions (token refresh): it leaves the groups the new
    /// token no longer permits and joins the new token's groups. Returns (left, joined).
    pub fn refresh(&self, outlet: &Outlet, permissions: Permissions) -> (Vec<String>, Vec<String>) {
        write(&self.broker).refresh(outlet.id, outlet.clone(), permissions)
    }

    /// Whether the connection may ask about `user`'s presence.
    pub fn may_query_presence(&self, id: ConnId, user: &str) -> bool {
        read(&self.broker).may_query_presence(id, user)
    }

    /// Delivers `message` to every local connection in `group`; returns the number of
    /// connections it was routed to. A connection whose queue is full is closed as a slow
    /// consumer (4008) rather than allowed to grow without bound.
    pub fn publish_local(&self, group: &str, message: &Encoded) -> usize {
        // One pointer copied under the lock; the fan-out runs without it.
        let Some(recipients) = read(&self.broker).fanout(group) else {
            return 0;
        };
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        for outlet in recipients.iter() {
            match outlet.offer(group, message) {
                Offer::Queued => delivered += 1,
                Offer::Full => {
                    dropped += 1;
                    // Counted once per client, when its queue first overflows; the
                    // client sees 4008 after what was already queued.
                    if outlet.request_close(CloseCode::SlowConsumer) {
                        self.metrics.slow_consumer_closes.inc();
                    }
                }
                // The connection is on its way out; it unregisters itself.
                Offer::Closed => {}
            }
        }
        self.metrics.messages_delivered.add(delivered);
        self.metrics
            .bytes_delivered
            .add(delivered * message.len() as u64);
        if dropped > 0 {
            self.metrics.messages_dropped.add(dropped);
        }
        recipients.len()
    }

    /// How many local connections are in `group`.
    pub fn group_size(&self, group: &str) -> usize {
        read(&self.broker).group_size(group)
    }

    /// Every group with a local connection (unsorted), copied out of the table.
    pub fn group_names(&self) -> Vec<Arc<str>> {
        read(&self.broker).group_names()
    }

    /// Number of local connections.
    pub fn connection_count(&self) -> usize {
        read(&self.broker).connection_count()
    }

    /// Number of groups with a local connection.
    pub fn group_count(&self) -> usize {
        read(&self.broker).group_count()
    }

    /// Collects the interest changes since the last call (and the whole interest when
    /// `full`), and hands them to `send` under the table's lock, so that what `send`
    /// queues goes out in version order. `send` must not block.
    pub fn gossip_round<F>(&self, full: bool, send: F)
    where
        F: FnOnce(Option<InterestDelta>, Option<InterestSnapshot>),
    {
        let mut broker = write(&self.broker);
        let changes = broker.take_interest_changes();
        let snapshot = full.then(|| broker.interest_snapshot());
        send(changes, snapshot);
    }

    /// Hands the whole interest to `send` under the table's lock, so that no delta can be
    /// queued between the snapshot and its sending. `send` must not block.
    pub fn with_interest<F: FnOnce(InterestSnapshot)>(&self, send: F) {
        let broker = read(&self.broker);
        send(broker.interest_snapshot());
    }

    /// The hub's gauges.
    pub fn rows(&self) -> Vec<Row> {
        vec![Row::gauge(
            "groups",
            "Groups with at least one connection on this node.",
            self.group_count() as u64,
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outlet_is_bounded_in_bytes_and_gives_them_back_when_written() {
        let (outlet, mut rx) = OutletInner::new(1, 100, 10, false);
        let six = Encoded::new(Bytes::from_static(b"123456"));
        assert_eq!(outlet.offer("g", &six), Offer::Queued);
        assert_eq!(outlet.offer("g", &six), Offer::Full, "12 bytes > 10");
        assert_eq!(outlet.queued_bytes(), 6);
        let taken = rx.try_recv().expect("queued");
        outlet.written(taken.len());
        assert_eq!(outlet.queued_bytes(), 0);
        let big = Encoded::new(Bytes::from(vec![b'x'; 50]));
        assert_eq!(
            outlet.offer("g", &big),
            Offer::Queued,
            "an empty queue takes one message"
        );
        drop(rx);
        assert_eq!(
            outlet.offer("g", &six),
            Offer::Full,
            "still over the byte bound"
        );
    }

    #[test]
    fn a_full_queue_closes_the_slow_consumer_once() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(BrokerLimits::default(), metrics.clone());
        let (outlet, _rx) = OutletInner::new(1, 2, 1 << 20, false);
        hub.connect(&outlet, "7", "user_7", Permissions::default());
        let m = Encoded::new(Bytes::from_static(b"hi"));
        for _ in 0..5 {
            assert_eq!(hub.publish_local("user_7", &m), 1);
        }
        assert_eq!(metrics.messages_delivered.get(), 2);
        assert_eq!(metrics.messages_dropped.get(), 3);
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
    }

    #[test]
    fn positioned_connections_get_one_json_frame_with_the_position() {
        let hub = Hub::new(BrokerLimits::default(), Arc::new(Metrics::default()));
        let (plain, mut plain_rx) = OutletInner::new(1, 8, 1 << 20, false);
        let (positioned, mut positioned_rx) = OutletInner::new(2, 8, 1 << 20, true);
        hub.connect(&plain, "1", "user_1", Permissions::new(["news"], false));
        hub.connect(
            &positioned,
            "2",
            "user_2",
            Permissions::new(["news"], false),
        );
        let at = Position {
            epoch: 7,
            offset: 3,
        };
        let m = Encoded::with_position(Bytes::from_static(b"hi"), at);
        assert_eq!(hub.publish_local("news", &m), 2);
        let Some(Outbound::Frame(Message::Text(raw))) = plain_rx.try_recv().ok() else {
            panic!("a plain frame");
        };
        assert_eq!(raw.as_str(), "hi");
        let Some(Outbound::Positioned(p)) = positioned_rx.try_recv().ok() else {
            panic!("a positioned frame");
        };
        assert_eq!(p.position, Some(at));
        assert_eq!(
            p.frame.to_text().expect("text"),
            r#"{"type":"message","group":"news","data":"hi","epoch":7,"offset":3}"#
        );
        let binary = Encoded::new(Bytes::from_static(b"\xff"));
        hub.publish_local("news", &binary);
        plain_rx.try_recv().expect("plain");
        let Some(Outbound::Positioned(p)) = positioned_rx.try_recv().ok() else {
            panic!("a positioned frame");
        };
        assert_eq!(
            p.frame.to_text().expect("text"),
            r#"{"type":"message","group":"news","b64data":"/w=="}"#
        );
    }
}
