//! One peer session, served: the handshake, admission (`super::super::dispatch`),
//! registration in the table, then the readers of its control and data streams beside
//! its writers, until the connection ends.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use switchboard_proto::peer::{Interest, MAX_PEER_MESSAGE, NodeId, PeerMessage};
use tokio::sync::{Semaphore, mpsc};
use tracing::{debug, info, warn};

use super::link::{data_write_loop, write_loop};
use super::{Cluster, Link, PEER_QUEUE, PEER_QUEUE_BYTES};
use crate::clock::unix_micros;
use crate::cluster::auth;
use crate::cluster::dispatch::{self, Control, SessionError};
use crate::cluster::frame::read_frame;
use crate::cluster::peers::Verdict;
use crate::cluster::rpc::RpcStream;
use crate::cluster::session::{CloseReason, HandshakeError, handshake};
use crate::hub::{Encoded, SLOW_CONSUMER_PATIENCE};
use crate::sync::{lock, write};

impl Cluster {
    /// Runs one session until the connection ends: handshake, registration in the table,
    /// then the reader loop (the writer and the RPC hand-off run beside it).
    pub(super) async fn session(
        self: Arc<Self>,
        conn: quinn::Connection,
        dialed: Option<&str>,
    ) -> Result<(), SessionError> {
        let role = if dialed.is_some() {
            auth::Role::Dialer
        } else {
            auth::Role::Acceptor
        };
        let secret = self.deps.secrets.cluster.get();
        let me = (self.node, self.incarnation);
        let mut hs = match handshake(&conn, role, &secret, me, &self.hello).await {
            Ok(hs) => hs,
            Err(e) => {
                // A dialer's refusals are logged by its dial loop, with backoff; an
                // acceptor's once per source per interval.
                if dialed.is_some() {
                    if matches!(e, HandshakeError::NotProven { .. }) {
                        self.metrics.auth_failures.inc();
                    }
                } else if let Some(quiet) = self.refused(conn.remote_address()) {
                    warn!(remote = %conn.remote_address(), error = %e, quiet, "peer refused");
                }
                return Err(e.into());
            }
        };
        let peer = hs.peer;
        let admitted = dispatch::admit(
            hs.incarnation,
            self.deps.replica.is_removed(peer),
            self.deps.replica.incarnation_of(peer),
        );
        if let Err(refusal) = admitted {
            // A dialer's refusals are logged by its dial loop (a removed member's
            // redials are expected), an acceptor's here, once per source per interval.
            let told = if dialed.is_none() {
                self.refused(conn.remote_address())
            } else {
                self.metrics.auth_failures.inc();
                matches!(refusal, dispatch::Refusal::WrongIncarnation { .. }).then_some(0)
            };
            if let Some(quiet) = told {
                warn!(peer, remote = %conn.remote_address(), quiet, "peer refused: {refusal}");
            }
            refusal.close_reason().close(&conn);
            return Err(SessionError::Refused { peer, refusal });
        }

        let dialer = if dialed.is_some() { self.node } else { peer };
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let (data, data_rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(PEER_QUEUE_BYTES));
        let link = Link {
            tx,
            data,
            budget: budget.clone(),
            conn: conn.clone(),
        };
        let verdict = lock(&self.table).on_session(
            Instant::now(),
            peer,
            (std::mem::take(&mut hs.addrs), hs.incarnation, hs.boot),
            dialer,
            link.clone(),
        );
        let session = match verdict {
            Verdict::Duplicate => {
                CloseReason::Duplicate.close(&conn);
                return Ok(());
            }
            Verdict::Accept { session, replaced } => {
                if let Some(old) = replaced {
                    CloseReason::Duplicate.close(old.connection());
                }
                session
            }
        };
        info!(peer, remote = %conn.remote_address(), "peer connected");
        self.update_majority();
        // The peer's interest starts from its full sync on this session.
        write(&self.remote).remove_node(peer);
        lock(&self.routes).connected(peer);
        self.send_full(peer, &link);
        // Everyone learns of the newcomer (and it of everyone), so the mesh closes even
        // when nodes joined through different seeds at different times.
        let mut known = lock(&self.table).known();
        known.push((self.node, self.advertised_addr()));
        for other in self.links() {
            other.send(PeerMessage::Peers(known.clone()));
        }

        let writer = tokio::spawn(write_loop(hs.send, rx));
        let data_writer = tokio::spawn(data_write_loop(conn.clone(), data_rx));
        let data_reader = tokio::spawn(self.clone().data_read_loop(peer, conn.clone()));
        let rpcs = tokio::spawn(hand_off_rpcs(self.clone(), conn.clone(), peer));
        let result = self.read_loop(peer, &mut hs.recv, &link).await;
        writer.abort();
        data_writer.abort();
        data_reader.abort();
        rpcs.abort();
        // Publishers waiting for this peer's budget give up at once.
        budget.close();
        CloseReason::Ended.close(&conn);
        let stats = conn.stats();
        self.ended_rx
            .fetch_add(stats.udp_rx.bytes, Ordering::Relaxed);
        self.ended_tx
            .fetch_add(stats.udp_tx.bytes, Ordering::Relaxed);
        if lock(&self.table).on_session_end(peer, session) {
            self.forget_peer(peer);
            info!(peer, "peer disconnected");
            self.update_majority();
        }
        result
    }

    async fn read_loop(
        self: &Arc<Self>,
        peer: NodeId,
        recv: &mut quinn::RecvStream,
        link: &Link,
    ) -> Result<(), SessionError> {
        loop {
            let message = read_frame(recv, MAX_PEER_MESSAGE).await?;
            lock(&self.table).heard_from(Instant::now(), peer);
            match dispatch::control(peer, unix_micros(), message)? {
                Control::History(message) => {
                    if self.deps.history.try_send((peer, message)).is_err() {
                        // The requester's call times out (or the owner resends a state).
                        self.metrics.history_messages_dropped.inc();
                    }
                }
                Control::Interest(update) => {
                    if let Interest::Full { holders, .. } = &update {
                        lock(&self.routes).followed(peer, *holders);
                    }
                    let applied = write(&self.remote).apply(peer, update);
                    match applied {
                        Ok(touched) => self.push_routes(touched),
                        Err(_) => {
                            link.send(PeerMessage::InterestSyncRequest);
                        }
                    }
                }
                Control::Route(message) => self.on_route(peer, message),
                Control::SendFull => self.send_full(peer, link),
                Control::Heartbeat {
                    connections,
                    groups,
                    ack,
                } => {
                    lock(&self.table).on_load(peer, connections, groups);
                    link.send(ack);
                }
                Control::Rtt(rtt) => lock(&self.table).on_rtt(peer, rtt),
                Control::Peers(list) => {
                    for (id, addr) in list {
                        let dial = id != self.node && lock(&self.table).should_dial_peer(id);
                        if dial {
                            self.dial(addr, Some(id));
                        }
                    }
                }
                Control::Leaving => {
                    info!(peer, "peer drains: its history buckets move");
                    lock(&self.table).on_leaving(peer);
                }
                Control::Conn(message) => self.on_conn(peer, message),
            }
        }
    }

    /// Reads the peer's data stream (its forwards) and delivers each, waiting for full
    /// client queues within [`SLOW_CONSUMER_PATIENCE`]: while it waits, the stream is not
    /// read, and QUIC's flow control slows the peer's writer and so its publishers.
    async fn data_read_loop(self: Arc<Self>, peer: NodeId, conn: quinn::Connection) {
        let Ok(mut recv) = conn.accept_uni().await else {
            return;
        };
        loop {
            let message = match read_frame(&mut recv, MAX_PEER_MESSAGE).await {
                Ok(message) => message,
                Err(e) => {
                    debug!(peer, error = %e, "peer data stream ended");
                    return;
                }
            };
            let forwards = match dispatch::forwards(peer, message) {
                Ok(forwards) => forwards,
                Err(e) => {
                    warn!(error = %e, "closing the peer's connection");
                    CloseReason::Ended.close(&conn);
                    return;
                }
            };
            for f in forwards {
                self.metrics.received_forwards.inc();
                let message = match f.position {
                    Some(position) => Encoded::with_position(f.payload, position),
                    None => Encoded::new(f.payload),
                };
                self.deps
                    .hub
                    .publish_paced(&f.group, &message, SLOW_CONSUMER_PATIENCE)
                    .await;
            }
        }
    }
}

/// Hands every further stream the peer opens to the Raft layer, unread.
async fn hand_off_rpcs(cluster: Arc<Cluster>, conn: quinn::Connection, peer: NodeId) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let stream = RpcStream { peer, send, recv };
        if cluster.deps.rpcs.try_send(stream).is_err() {
            // Dropped: the peer's call fails and Raft retries it.
            cluster.metrics.rpc_streams_refused.inc();
        }
    }
}
