//! One connection's outbound queue ([`ClientQueue`], shared as an [`Outlet`]) and its
//! receiving end ([`Inbox`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use super::Encoded;
use super::encoded::Positioned;
use crate::broker::ConnId;
use crate::sync::lock;

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

/// The hub's handle on one WebSocket connection: its outbound queue, bounded in messages
/// and in payload bytes, and a way for whoever finds the queue full to have the
/// connection closed.
///
/// The queue is a `VecDeque` behind a mutex held for a push or a drain, not a tokio
/// channel: an idle connection's queue holds no allocation at all (a bounded `mpsc`
/// channel allocates its first 32-slot block and its padded shared state up front,
/// about 2.2 KiB per connection), and a queue that grew under a burst is given back
/// once drained. Producers (the publish path, any thread) push; the connection's task
/// drains through its [`Inbox`].
#[derive(Debug)]
pub struct ClientQueue {
    pub id: ConnId,
    /// The connection asked for `?positions=1`: messages come as JSON `message` frames.
    pub positions: bool,
    /// Its events go to the backend bridge (see [`ClientQueue::mark_bridged`]).
    bridged: std::sync::atomic::AtomicBool,
    queue: Mutex<Queue>,
    /// Wakes the connection's task when the queue goes from empty to not empty.
    ready: Notify,
    /// Most messages queued.
    capacity: usize,
    /// Payload bytes queued and not yet written.
    queued_bytes: AtomicUsize,
    max_bytes: usize,
    close: Notify,
    close_code: AtomicU16,
    /// Wakes publishers waiting for room (see [`ClientQueue::offer_within`]) when the
    /// connection's task has written a batch; only when some wait.
    room: Notify,
    room_waiters: AtomicUsize,
}

#[derive(Debug, Default)]
struct Queue {
    items: VecDeque<Outbound>,
    /// When the oldest item not yet taken was queued into an empty queue.
    since: Option<Instant>,
    /// The connection's task is gone: nothing more is taken.
    closed: bool,
}

/// How long a paced publish ([`Hub::publish_paced`]: a local publisher, or a peer's
/// stream of forwards) waits for a full client queue to make room before the client is
/// closed as a slow consumer (4008). A client that lags takes what is queued within it
/// and slows its publishers down; one that takes nothing for this long is cut. While it
/// waits, a peer's data stream is not read (one stall of at most this long per stuck
/// client: it is cut after it).
pub const SLOW_CONSUMER_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// A drained queue keeps at most this many slots; a larger one (grown by a burst) is
/// freed, so that an idle connection does not keep its busiest moment's memory.
const QUEUE_SLOTS_KEPT: usize = 8;

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
pub type Outlet = Arc<ClientQueue>;

impl ClientQueue {
    /// A new outlet and the receiving end of its queue: at most `capacity` messages and
    /// `max_bytes` payload bytes (one message is always taken into an empty queue).
    pub fn new(id: ConnId, capacity: usize, max_bytes: usize, positions: bool) -> (Outlet, Inbox) {
        let outlet = Arc::new(ClientQueue {
            id,
            positions,
            bridged: std::sync::atomic::AtomicBool::new(false),
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
            capacity: capacity.max(1),
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
            close: Notify::new(),
            close_code: AtomicU16::new(0),
            room: Notify::new(),
            room_waiters: AtomicUsize::new(0),
        });
        (
            outlet.clone(),
            Inbox {
                outlet,
                since: None,
            },
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
        // SeqCst with `written`: a publisher waiting for room (`offer_within`) and the
        // task giving bytes back never both miss each other.
        let before = self.queued_bytes.fetch_add(len, Ordering::SeqCst);
        if before > 0 && before + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Offer::Full;
        }
        let was_empty = {
            let mut queue = lock(&self.queue);
            let refused = if queue.closed {
                Some(Offer::Closed)
            } else if queue.items.len() >= self.capacity {
                Some(Offer::Full)
            } else {
                None
            };
            if let Some(refused) = refused {
                drop(queue);
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                return refused;
            }
            queue.items.push_back(item);
            if queue.items.len() == 1 {
                queue.since = Some(Instant::now());
            }
            queue.items.len() == 1
        };
        // The task drains everything it finds, so only the first item needs a wake.
        if was_empty {
            self.ready.notify_one();
        }
        Offer::Queued
    }

    /// The connection wrote `len` payload bytes taken from the queue.
    pub fn written(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Ordering::SeqCst);
        if self.room_waiters.load(Ordering::SeqCst) > 0 {
            self.room.notify_waiters();
        }
    }

    /// Offers a message as [`ClientQueue::offer`] does, but when the queue is full waits
    /// (until `deadline`) for the connection's task to write and make room: a client that
    /// is slower than its publishers paces them instead of overflowing. `Full` only when
    /// the deadline passed, or a close was requested meanwhile.
    pub async fn offer_within(
        &self,
        group: &str,
        message: &Encoded,
        deadline: tokio::time::Instant,
    ) -> Offer {
        loop {
            // Registered before the offer: a write between the two still wakes it.
            let room = self.room.notified();
            tokio::pin!(room);
            self.room_waiters.fetch_add(1, Ordering::SeqCst);
            room.as_mut().enable();
            let offer = self.offer(group, message);
            let waited = if offer == Offer::Full && !self.close_is_requested() {
                tokio::time::timeout_at(deadline, room).await.is_ok()
            } else {
                false
            };
            self.room_waiters.fetch_sub(1, Ordering::SeqCst);
            if !waited {
                return offer;
            }
        }
    }

    /// Marks the connection as one whose events go to the backend bridge.
    pub fn mark_bridged(&self) {
        self.bridged.store(true, Ordering::Relaxed);
    }

    /// Whether its events go to the backend bridge.
    pub fn is_bridged(&self) -> bool {
        self.bridged.load(Ordering::Relaxed)
    }

    /// Whether a close was requested.
    pub fn close_is_requested(&self) -> bool {
        self.close_code.load(Ordering::Acquire) != 0
    }

    /// Payload bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    /// Asks the connection's task to close with `code` (a close code: 4008 for a slow
    /// consumer, or whatever an admin or the backend asked). The first request wins;
    /// returns whether this was it.
    pub fn request_close(&self, code: u16) -> bool {
        let first = self
            .close_code
            .compare_exchange(0, code.max(1), Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if first {
            // Every waiter: the task's loop and a write in progress both wait for this.
            self.close.notify_waiters();
        }
        first
    }

    /// Waits until a close is requested, and says with which code. Several may wait at
    /// once (the connection's loop keeps one waiting for its whole life, and a blocked
    /// write waits too): all of them are woken.
    pub async fn close_requested(&self) -> u16 {
        loop {
            // Made before the check: `notify_waiters` wakes every `Notified` that exists
            // when it runs, so a request between the check and the wait is not missed.
            let notified = self.close.notified();
            match self.close_code.load(Ordering::Acquire) {
                0 => notified.await,
                code => return code,
            }
        }
    }
}

/// The receiving end of an outlet's queue, owned by the connection's task. Dropping it
/// closes the queue: later offers are refused as [`Offer::Closed`] and what was queued is
/// dropped (its bytes given back).
#[derive(Debug)]
pub struct Inbox {
    outlet: Outlet,
    /// When the batch taken last started waiting (see [`Inbox::waited_since`]).
    since: Option<Instant>,
}

impl Inbox {
    /// Waits for at least one queued item, then moves up to `limit` into `batch` and
    /// returns how many. Cancel-safe: items leave the queue only in the synchronous step
    /// that returns them.
    pub async fn recv_many(&mut self, batch: &mut Vec<Outbound>, limit: usize) -> usize {
        loop {
            if let Some(n) = self.try_recv_many(batch, limit) {
                return n;
            }
            self.outlet.ready.notified().await;
        }
    }

    /// Takes the oldest queued item, if any.
    pub fn try_recv(&mut self) -> Option<Outbound> {
        let mut batch = Vec::with_capacity(1);
        self.try_recv_many(&mut batch, 1)?;
        batch.pop()
    }

    /// Moves up to `limit` queued items into `batch`, or `None` if there are none.
    pub fn try_recv_many(&mut self, batch: &mut Vec<Outbound>, limit: usize) -> Option<usize> {
        let mut queue = lock(&self.outlet.queue);
        if queue.items.is_empty() {
            return None;
        }
        let n = queue.items.len().min(limit.max(1));
        batch.extend(queue.items.drain(..n));
        // What stays behind starts waiting now, for the next batch.
        self.since = queue.since.take();
        if !queue.items.is_empty() {
            queue.since = Some(Instant::now());
        }
        if queue.items.is_empty() && queue.items.capacity() > QUEUE_SLOTS_KEPT {
            queue.items = VecDeque::new();
        }
        Some(n)
    }
}

impl Inbox {
    /// When the batch taken last started waiting for this connection's task: its first
    /// item's arrival into an empty queue (or the previous batch's taking, for items left
    /// behind by it).
    pub fn waited_since(&self) -> Option<Instant> {
        self.since
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        let dropped = {
            let mut queue = lock(&self.outlet.queue);
            queue.closed = true;
            std::mem::take(&mut queue.items)
        };
        let bytes: usize = dropped.iter().map(Outbound::len).sum();
        self.outlet.written(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{BrokerLimits, Permissions};
    use crate::hub::Hub;
    use crate::metrics::Metrics;
    use bytes::Bytes;
    use std::time::Duration;
    use switchboard_proto::client::CloseCode;
    use switchboard_proto::peer::Position;

    #[test]
    fn an_outlet_is_bounded_in_bytes_and_gives_them_back_when_written() {
        let (outlet, mut rx) = ClientQueue::new(1, 100, 10, false);
        let six = Encoded::new(Bytes::from_static(b"123456"));
        assert_eq!(outlet.offer("g", &six), Offer::Queued);
        assert_eq!(outlet.offer("g", &six), Offer::Full, "12 bytes > 10");
        assert_eq!(outlet.queued_bytes(), 6);
        let mut taken = Vec::new();
        assert_eq!(rx.try_recv_many(&mut taken, 8), Some(1));
        outlet.written(taken[0].len());
        assert_eq!(outlet.queued_bytes(), 0);
        let big = Encoded::new(Bytes::from(vec![b'x'; 50]));
        assert_eq!(
            outlet.offer("g", &big),
            Offer::Queued,
            "an empty queue takes one message"
        );
        drop(rx);
        assert_eq!(
            outlet.queued_bytes(),
            0,
            "a closed queue gives its bytes back"
        );
        assert_eq!(outlet.offer("g", &six), Offer::Closed);
    }

    #[test]
    fn a_queue_is_bounded_in_messages_and_holds_no_memory_once_drained() {
        let (outlet, mut rx) = ClientQueue::new(1, 100, 1 << 20, false);
        let m = Encoded::new(Bytes::from_static(b"x"));
        for _ in 0..100 {
            assert_eq!(outlet.offer("g", &m), Offer::Queued);
        }
        assert_eq!(outlet.offer("g", &m), Offer::Full, "101 > 100 messages");
        let mut batch = Vec::new();
        assert_eq!(
            rx.try_recv_many(&mut batch, 64),
            Some(64),
            "at most the limit"
        );
        assert_eq!(rx.try_recv_many(&mut batch, 64), Some(36));
        assert_eq!(rx.try_recv_many(&mut batch, 64), None);
        assert_eq!(
            lock(&outlet.queue).items.capacity(),
            0,
            "the burst's slots are freed"
        );
        assert_eq!(outlet.offer("g", &m), Offer::Queued);
        assert_eq!(rx.try_recv_many(&mut batch, 64), Some(1));
        assert!(
            lock(&outlet.queue).items.capacity() <= QUEUE_SLOTS_KEPT,
            "a small queue keeps its few slots"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_publisher_waits_for_room_and_a_stuck_client_is_cut_at_the_deadline() {
        let (outlet, mut rx) = ClientQueue::new(1, 2, 1 << 20, false);
        let m = Encoded::new(Bytes::from_static(b"x"));
        assert_eq!(outlet.offer("g", &m), Offer::Queued);
        assert_eq!(outlet.offer("g", &m), Offer::Queued);
        assert_eq!(outlet.offer("g", &m), Offer::Full, "two messages at most");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        // The connection takes a batch and writes it a little later: the waiting offer
        // goes in then.
        let waiting = outlet.offer_within("g", &m, deadline);
        tokio::pin!(waiting);
        assert!(futures_util::poll!(waiting.as_mut()).is_pending());
        let mut batch = Vec::new();
        assert_eq!(rx.try_recv_many(&mut batch, 64), Some(2));
        outlet.written(2);
        assert_eq!(waiting.await, Offer::Queued);
        // Nobody takes anything: at the deadline it is still full.
        assert_eq!(outlet.offer("g", &m), Offer::Queued);
        let start = tokio::time::Instant::now();
        let deadline = start + Duration::from_secs(1);
        assert_eq!(outlet.offer_within("g", &m, deadline).await, Offer::Full);
        assert_eq!(
            tokio::time::Instant::now(),
            deadline,
            "waited until the deadline"
        );
        // A client already asked to close is not waited for.
        outlet.request_close(CloseCode::SlowConsumer.code());
        let later = tokio::time::Instant::now() + Duration::from_secs(1);
        assert_eq!(outlet.offer_within("g", &m, later).await, Offer::Full);
        assert!(tokio::time::Instant::now() < later);
    }

    #[tokio::test(start_paused = true)]
    async fn a_paced_publish_waits_for_a_lagging_client_and_cuts_a_stuck_one() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(BrokerLimits::default(), metrics.clone());
        let join = |id: u64| {
            let (outlet, rx) = ClientQueue::new(id, 1, 1 << 20, false);
            let perms = Permissions::new(std::iter::empty::<String>(), false);
            assert!(
                hub.connect(&outlet, &format!("{id}"), "g", perms)
                    .is_empty()
            );
            (outlet, rx)
        };
        let (lagging, mut lagging_rx) = join(1);
        let (stuck, _stuck_rx) = join(2);
        let m = Encoded::new(Bytes::from_static(b"x"));
        assert_eq!(hub.publish_local("g", &m), 2, "both queues now full");
        let patience = Duration::from_secs(1);
        let publish = hub.publish_paced("g", &m, patience);
        tokio::pin!(publish);
        assert!(futures_util::poll!(publish.as_mut()).is_pending());
        // The lagging client writes what it had: the message goes in.
        let mut batch = Vec::new();
        assert_eq!(lagging_rx.try_recv_many(&mut batch, 8), Some(1));
        lagging.written(1);
        assert_eq!(publish.await, 2);
        assert_eq!(
            lagging_rx.try_recv_many(&mut batch, 8),
            Some(1),
            "delivered"
        );
        assert!(!lagging.close_is_requested());
        assert!(stuck.close_is_requested(), "the stuck one is cut with 4008");
        assert_eq!(metrics.slow_consumer_closes.get(), 1);
    }

    #[tokio::test]
    async fn a_waiting_connection_is_woken_by_the_first_message_and_takes_all_of_them() {
        let (outlet, mut rx) = ClientQueue::new(1, 100, 1 << 20, false);
        let m = Encoded::new(Bytes::from_static(b"x"));
        let pusher = outlet.clone();
        let push = tokio::spawn(async move {
            tokio::task::yield_now().await;
            for _ in 0..3 {
                assert_eq!(pusher.offer("g", &m), Offer::Queued);
            }
        });
        let mut batch = Vec::new();
        let mut taken = 0;
        for _ in 0..3 {
            taken += rx.recv_many(&mut batch, 64).await;
            if taken == 3 {
                break;
            }
        }
        push.await.expect("pushed");
        assert_eq!(taken, 3);
        assert_eq!(batch.len(), 3);
        assert_eq!(rx.try_recv_many(&mut batch, 64), None);
    }

    #[tokio::test]
    async fn a_close_request_wakes_every_waiter_even_one_that_waits_for_the_whole_life() {
        let (outlet, _rx) = ClientQueue::new(1, 8, 1 << 20, false);
        // The connection's loop waits for its whole life; a blocked write waits too.
        let lifelong = outlet.close_requested();
        tokio::pin!(lifelong);
        assert!(futures_util::poll!(lifelong.as_mut()).is_pending());
        let write = outlet.close_requested();
        tokio::pin!(write);
        assert!(futures_util::poll!(write.as_mut()).is_pending());
        assert!(outlet.request_close(CloseCode::SlowConsumer.code()));
        assert!(
            !outlet.request_close(CloseCode::Restart.code()),
            "the first request wins"
        );
        assert_eq!(write.await, CloseCode::SlowConsumer.code());
        assert_eq!(lifelong.await, CloseCode::SlowConsumer.code());
        assert_eq!(
            outlet.close_requested().await,
            CloseCode::SlowConsumer.code()
        );
    }

    #[test]
    fn a_full_queue_closes_the_slow_consumer_once() {
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(BrokerLimits::default(), metrics.clone());
        let (outlet, _rx) = ClientQueue::new(1, 2, 1 << 20, false);
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
        let (plain, mut plain_rx) = ClientQueue::new(1, 8, 1 << 20, false);
        let (positioned, mut positioned_rx) = ClientQueue::new(2, 8, 1 << 20, true);
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
        let Some(Outbound::Frame(Message::Text(raw))) = plain_rx.try_recv() else {
            panic!("a plain frame");
        };
        assert_eq!(raw.as_str(), "hi");
        let Some(Outbound::Positioned(p)) = positioned_rx.try_recv() else {
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
        let Some(Outbound::Positioned(p)) = positioned_rx.try_recv() else {
            panic!("a positioned frame");
        };
        assert_eq!(
            p.frame.to_text().expect("text"),
            r#"{"type":"message","group":"news","b64data":"/w=="}"#
        );
    }
}
