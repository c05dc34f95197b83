//! A peer session's sending side ([`Link`]): a bounded queue of control messages and a
//! queue of forwards bounded in bytes, each drained by its writer onto its own QUIC
//! stream in batches.

use std::sync::Arc;

use switchboard_proto::peer::PeerMessage;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::warn;

use super::super::frame::encode_into;
use super::super::peers;

/// Control messages (everything but forwards) queued per peer before new ones are
/// dropped.
pub const PEER_QUEUE: usize = 65_536;
/// Bytes of forwards (payload plus [`FORWARD_OVERHEAD`] each) queued for one peer and not
/// yet written to its data stream: past it, publishers wait (see `super::forward`).
pub const PEER_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// What one queued forward counts beyond its payload.
pub const FORWARD_OVERHEAD: usize = 64;

/// Most queued messages written to a peer in one write.
const WRITE_BATCH: usize = 256;

/// A live session's sending side: the peer's bounded control queue, its data queue
/// (forwards, bounded in bytes by `budget`), and its connection.
#[derive(Debug, Clone)]
pub struct Link {
    pub(super) tx: mpsc::Sender<PeerMessage>,
    pub(super) data: mpsc::UnboundedSender<(PeerMessage, OwnedSemaphorePermit)>,
    pub(super) budget: Arc<Semaphore>,
    pub(super) conn: quinn::Connection,
}

impl Link {
    /// Queues `message` for the peer's control stream; false when its queue is full (or
    /// the session ended).
    pub fn send(&self, message: PeerMessage) -> bool {
        self.tx.try_send(message).is_ok()
    }

    /// Queues a forward of `bytes` for the peer's data stream if its byte budget has room
    /// now; else hands it back.
    pub fn try_forward(&self, message: PeerMessage, bytes: usize) -> Result<(), Box<PeerMessage>> {
        match self
            .budget
            .clone()
            .try_acquire_many_owned(forward_cost(bytes))
        {
            Ok(permit) => self
                .data
                .send((message, permit))
                .map_err(|e| Box::new(e.0.0)),
            Err(_) => Err(Box::new(message)),
        }
    }

    /// Queues a forward of `bytes`, waiting until `deadline` for the budget to have room
    /// (the peer's stream is written as fast as the peer reads). False when it did not,
    /// or the session ended.
    pub async fn forward_within(
        &self,
        message: PeerMessage,
        bytes: usize,
        deadline: tokio::time::Instant,
    ) -> bool {
        let acquire = self.budget.clone().acquire_many_owned(forward_cost(bytes));
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(Ok(permit)) => self.data.send((message, permit)).is_ok(),
            _ => false,
        }
    }

    /// Bytes of forwards queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        PEER_QUEUE_BYTES.saturating_sub(self.budget.available_permits())
    }

    /// The connection, for the Raft layer's RPC streams.
    pub fn connection(&self) -> &quinn::Connection {
        &self.conn
    }

    /// Messages waiting in the peer's queue.
    pub fn depth(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// What a forward of a `bytes`-long payload takes of a peer's budget.
fn forward_cost(bytes: usize) -> u32 {
    u32::try_from((bytes + FORWARD_OVERHEAD).min(PEER_QUEUE_BYTES)).unwrap_or(u32::MAX)
}

impl peers::Link for Link {
    fn is_open(&self) -> bool {
        !self.tx.is_closed()
    }
}

/// Writes queued forwards on this node's data stream to the peer (a unidirectional QUIC
/// stream of its own, so that control messages never wait behind data), in batches; a
/// batch's budget is given back once written, that is once QUIC's flow control let it
/// go: a peer that reads slowly slows the publishers here.
pub(super) async fn data_write_loop(
    conn: quinn::Connection,
    mut rx: mpsc::UnboundedReceiver<(PeerMessage, OwnedSemaphorePermit)>,
) {
    let mut batch = Vec::new();
    let mut out = Vec::new();
    let mut send = None;
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        let stream = match &mut send {
            Some(stream) => stream,
            None => match conn.open_uni().await {
                Ok(stream) => send.insert(stream),
                Err(_) => return,
            },
        };
        out.clear();
        for (message, _) in &batch {
            if let Err(e) = encode_into(&mut out, message) {
                warn!(error = %e, "forward not encodable; dropped");
            }
        }
        if stream.write_all(&out).await.is_err() {
            return;
        }
        batch.clear();
    }
}

/// Writes queued messages in batches: one write per batch.
pub(super) async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<PeerMessage>) {
    let mut batch = Vec::new();
    let mut out = Vec::new();
    while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
        out.clear();
        for message in batch.drain(..) {
            if let Err(e) = encode_into(&mut out, &message) {
                warn!(error = %e, "peer message not encodable; dropped");
            }
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
}
