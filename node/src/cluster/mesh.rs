//! The mesh's driver: the QUIC endpoint and the tasks around the [`PeerTable`], with no
//! decisions of their own (those are the table's, `super::peers`, and the routes',
//! `super::routes`; the publish path is in `super::forward`).
//!
//! Tasks: accept, dial (seeds, members learnt from the Raft log, and every member a peer
//! names), one session per peer (a reader loop plus a writer draining the peer's bounded
//! queue in batches), gossip (`super::gossip`) and heartbeat (RTT, and the table's
//! expiry of silent peers).
//!
//! One connection per peer pair carries one bidirectional stream of peer messages in
//! each direction, so everything one node sends another arrives in order. Each peer has a
//! bounded outbound queue: when it is full (the peer or the link is too slow), messages
//! for that peer are dropped and counted. Raft RPCs travel on further streams of the same
//! authenticated connection, handed to the [`RpcInbox`] unread.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use switchboard_proto::peer::{
    History, MAX_PEER_MESSAGE, NodeId, PEER_PROTOCOL_VERSION, PeerMessage,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::forward::{Listings, Lookups};
use super::frame::{encode_into, read_frame};
use super::peers::{self, DialBackoff, DialOutcome, MemberView, PeerTable, Verdict};
use super::routes::{Holders, Routes};
use super::rpc::{RpcInbox, RpcStream};
use super::session::{CloseReason, HandshakeError, Refused, handshake};
use super::{auth, gossip, tls};
use crate::broker::RemoteInterest;
use crate::clock::unix_micros;
use crate::config::Config;
use crate::health::Health;
use crate::hub::{Encoded, Hub, SLOW_CONSUMER_PATIENCE};
use crate::lifecycle::Lifecycle;
use crate::metrics::{Counter, Row};
use crate::presence::SharedReplica;
use crate::secrets::Secrets;
use crate::sync::{lock, read, write};

/// Control messages (everything but forwards) queued per peer before new ones are
/// dropped.
pub const PEER_QUEUE: usize = 65_536;
/// Bytes of forwards (payload plus [`FORWARD_OVERHEAD`] each) queued for one peer and not
/// yet written to its data stream: past it, publishers wait (see `super::forward`).
pub const PEER_QUEUE_BYTES: usize = 8 * 1024 * 1024;
/// What one queued forward counts beyond its payload.
pub const FORWARD_OVERHEAD: usize = 64;

/// How often heartbeats go out and liveness is checked.
pub const HEARTBEAT: Duration = Duration::from_millis(500);
/// Most queued messages written to a peer in one write.
const WRITE_BATCH: usize = 256;

/// A live session's sending side: the peer's bounded control queue, its data queue
/// (forwards, bounded in bytes by `budget`), and its connection.
#[derive(Debug, Clone)]
pub struct Link {
    tx: mpsc::Sender<PeerMessage>,
    data: mpsc::UnboundedSender<(PeerMessage, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
    conn: quinn::Connection,
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

/// Counters of the mesh, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub forwarded_messages: Counter,
    pub forwarded_bytes: Counter,
    pub received_forwards: Counter,
    pub peer_queue_drops: Counter,
    pub auth_failures: Counter,
    pub interest_full_syncs: Counter,
    pub rpc_streams_refused: Counter,
    pub history_messages_dropped: Counter,
    pub route_lookups: Counter,
    pub route_lookup_failures: Counter,
    pub paced_forwards: Counter,
}

/// What the mesh needs from the layers below it.
#[derive(Debug, Clone)]
pub struct MeshDeps {
    /// The cluster secret, reloaded on SIGHUP (new sessions prove the new one).
    pub secrets: Arc<Secrets>,
    pub hub: Arc<Hub>,
    pub replica: Arc<SharedReplica>,
    pub health: Arc<Health>,
    pub lifecycle: Arc<Lifecycle>,
    pub rpcs: RpcInbox,
    /// Where `History` messages from peers go (the historian), in arrival order.
    pub history: HistoryInbox,
}

/// History messages from peers, for the historian.
pub type HistoryInbox = mpsc::Sender<(NodeId, History)>;

/// See the module header.
#[derive(Debug)]
pub struct Cluster {
    pub(super) node: NodeId,
    /// This node's incarnation: the id of its data dir.
    incarnation: u64,
    endpoint: quinn::Endpoint,
    hello: PeerMessage,
    seeds: Vec<String>,
    pub(super) table: Mutex<PeerTable<Link>>,
    /// The interest of the groups whose bucket this node holds (`super::routes`).
    pub(super) remote: RwLock<RemoteInterest>,
    /// Holders, cached routes and granted leases.
    pub(super) routes: Mutex<Routes>,
    pub(super) lookups: Mutex<Lookups>,
    pub(super) listings: Mutex<Listings>,
    pub(super) next_id: AtomicU64,
    /// Bytes received and sent on sessions that have ended (the live ones are read from
    /// their connections).
    ended_rx: AtomicU64,
    ended_tx: AtomicU64,
    /// Addresses with a dial loop running.
    dialing: Mutex<HashSet<String>>,
    pub(super) deps: MeshDeps,
    pub metrics: ClusterMetrics,
}

impl Cluster {
    /// Binds the peer endpoint; `config` holds this node's resolved addresses and
    /// `admin` its admin address, which peers learn from its hello.
    pub fn bind(
        config: &Config,
        admin: String,
        (incarnation, boot): (u64, u64),
        deps: MeshDeps,
    ) -> anyhow::Result<Arc<Cluster>> {
        let endpoint = tls::endpoint(
            config.listen.peer,
            config.cluster.node_timeout,
            config.tls.cluster_ca.as_ref(),
        )?;
        let bound = endpoint.local_addr()?;
        if config.listen.advertise.is_none() && bound.ip().is_unspecified() {
            warn!(
                addr = %bound,
                "--peer-listen binds every address and no --advertise is given: peers will be told {bound}, which they cannot dial"
            );
        }
        let admin = match admin.parse::<std::net::SocketAddr>() {
            Ok(addr) => config.listen.advertised(addr),
            Err(_) => admin,
        };
        let hello = PeerMessage::Hello {
            node: config.node_id,
            protocol: PEER_PROTOCOL_VERSION,
            boot,
            peer_addr: config.listen.advertised(bound),
            admin_addr: admin,
            ws_addr: config.listen.advertised(config.listen.ws),
            resp_addr: config.listen.advertised(config.listen.resp),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        let table = PeerTable::new(
            config.node_id,
            config.cluster.node_timeout,
            !config.cluster.seeds.is_empty(),
        );
        deps.health.set_majority(table.in_majority());
        Ok(Arc::new(Cluster {
            node: config.node_id,
            incarnation,
            endpoint,
            hello,
            seeds: config.cluster.seeds.clone(),
            table: Mutex::new(table),
            remote: RwLock::new(RemoteInterest::default()),
            routes: Mutex::new(Routes::new(config.node_id)),
            lookups: Mutex::new(Lookups::default()),
            listings: Mutex::new(Listings::default()),
            next_id: AtomicU64::new(1),
            ended_rx: AtomicU64::new(0),
            ended_tx: AtomicU64::new(0),
            dialing: Mutex::new(HashSet::new()),
            deps,
            metrics: ClusterMetrics::default(),
        }))
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// The peer address this node gives others (its hello's).
    pub fn advertised_addr(&self) -> String {
        match &self.hello {
            PeerMessage::Hello { peer_addr, .. } => peer_addr.clone(),
            _ => String::new(),
        }
    }

    /// Starts accepting peers, dialing the seeds and `remembered` (members known from
    /// the Raft log), gossiping and heartbeating.
    pub fn start(self: &Arc<Self>, remembered: Vec<String>) {
        tokio::spawn(self.clone().accept_loop());
        for addr in self.seeds.iter().cloned().chain(remembered) {
            self.dial(addr);
        }
        tokio::spawn(gossip::run(self.clone(), self.deps.hub.clone()));
        tokio::spawn(self.clone().heartbeat_loop());
    }

    /// Cancelled when the node shuts down.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.deps.lifecycle.shutdown_token().clone()
    }

    /// The live connection to `node`, if any.
    pub fn connection(&self, node: NodeId) -> Option<quinn::Connection> {
        lock(&self.table)
            .link(node)
            .map(|link| link.connection().clone())
    }

    /// Whether a live session to `node` exists.
    pub fn connected_to(&self, node: NodeId) -> bool {
        lock(&self.table).is_up(node)
    }

    /// How long ago `node` was last heard from, if it was ever heard from.
    pub fn last_seen(&self, node: NodeId) -> Option<Duration> {
        lock(&self.table).last_seen(Instant::now(), node)
    }

    /// Every live session's sending side.
    pub fn links(&self) -> Vec<Link> {
        lock(&self.table)
            .links()
            .map(|(_, link)| link.clone())
            .collect()
    }

    /// Every live session's sending side, with its peer.
    pub fn links_by_peer(&self) -> Vec<(NodeId, Link)> {
        lock(&self.table)
            .links()
            .map(|(id, link)| (id, link.clone()))
            .collect()
    }

    /// Who holds each bucket's interest, as last followed.
    pub fn holders(&self) -> Arc<Holders> {
        lock(&self.routes).holders.clone()
    }

    /// Every peer this node has heard of.
    pub fn members(&self) -> Vec<MemberView> {
        lock(&self.table).members(Instant::now())
    }

    /// Closes every connection and stops accepting: the node leaves the mesh.
    pub fn close(&self) {
        self.endpoint
            .close((CloseReason::Ended as u32).into(), b"node leaving");
    }

    // ----- sending -----

    /// Sends `message` to `node` (queued on its session); false when it is not connected
    /// or its queue is full.
    pub fn send(&self, node: NodeId, message: PeerMessage) -> bool {
        self.try_send(node, message).is_ok()
    }

    /// Like [`Cluster::send`], but a message that could not be queued is handed back.
    pub fn try_send(&self, node: NodeId, message: PeerMessage) -> Result<(), Box<PeerMessage>> {
        let result = match lock(&self.table).link(node) {
            Some(link) => link
                .tx
                .try_send(message)
                .map_err(|e| Box::new(e.into_inner())),
            None => Err(Box::new(message)),
        };
        if result.is_err() {
            self.metrics.peer_queue_drops.inc();
        }
        result
    }

    /// Tells every peer that this node drains (the Raft leader then hands the history
    /// buckets it owns or replicates to others before it leaves).
    pub fn announce_leaving(&self) {
        for link in self.links() {
            link.send(PeerMessage::Leaving);
        }
    }

    /// Follows the committed assignments (every gossip tick): when they changed, the
    /// interest of buckets this node no longer holds is forgotten, and so are the routes
    /// and leases of buckets that moved. Returns the holders, and whether they changed.
    pub fn follow_assignments(&self) -> (Arc<Holders>, bool) {
        let followed = {
            let replica = self.deps.replica.read();
            lock(&self.routes).follow(Instant::now(), &replica.assignments)
        };
        match followed {
            Some(holders) => {
                write(&self.remote).retain(|group| holders.mine(group));
                (holders, true)
            }
            None => (lock(&self.routes).holders.clone(), false),
        }
    }

    /// Connections in `group` on each peer (asking a holder if need be).
    pub async fn group_counts(&self, group: &str) -> Vec<(NodeId, usize)> {
        self.resolve(group)
            .await
            .counts()
            .iter()
            .filter(|(_, c)| *c > 0)
            .map(|(n, c)| (*n, *c as usize))
            .collect()
    }

    /// Whether this node is in touch with a majority of the members it knows now.
    pub fn in_majority(&self) -> bool {
        lock(&self.table).in_majority()
    }

    /// The mesh's rows in `/metrics`.
    pub fn rows(&self) -> Vec<Row> {
        let members = self.members();
        let m = &self.metrics;
        let (depths, data, rx, tx) = {
            let table = lock(&self.table);
            let depths = table
                .links()
                .map(|(id, link)| (id.to_string(), link.depth() as u64))
                .collect();
            let data = table
                .links()
                .map(|(id, link)| (id.to_string(), link.queued_bytes() as u64))
                .collect();
            let (mut rx, mut tx) = (
                self.ended_rx.load(Ordering::Relaxed),
                self.ended_tx.load(Ordering::Relaxed),
            );
            for (_, link) in table.links() {
                let stats = link.connection().stats();
                rx += stats.udp_rx.bytes;
                tx += stats.udp_tx.bytes;
            }
            (depths, data, rx, tx)
        };
        let (cached, leases, held) = {
            let routes = lock(&self.routes);
            (
                routes.cache.len(),
                routes.leases.len(),
                read(&self.remote).groups().count(),
            )
        };
        vec![
            Row::gauge(
                "peers",
                "Peers this node has heard of.",
                members.len() as u64,
            ),
            Row::gauge(
                "peers_up",
                "Peers connected and heard from within --node-timeout.",
                members.iter().filter(|p| p.up).count() as u64,
            ),
            Row::counter(
                "forwarded_messages_total",
                "Messages sent to peers.",
                m.forwarded_messages.get(),
            ),
            Row::counter(
                "forwarded_bytes_total",
                "Payload bytes sent to peers.",
                m.forwarded_bytes.get(),
            ),
            Row::counter(
                "received_forwards_total",
                "Messages received from peers for local delivery.",
                m.received_forwards.get(),
            ),
            Row::counter(
                "peer_queue_drops_total",
                "Messages dropped because a peer's queue was full.",
                m.peer_queue_drops.get(),
            ),
            Row::counter(
                "peer_auth_failures_total",
                "Peers refused: failed TLS handshake (cluster CA) or cluster-secret proof.",
                m.auth_failures.get(),
            ),
            Row::counter(
                "interest_full_syncs_total",
                "Full interest snapshots sent to peers.",
                m.interest_full_syncs.get(),
            ),
            Row::counter(
                "peer_received_bytes_total",
                "Bytes received from peers (UDP payloads of every QUIC connection).",
                rx,
            ),
            Row::counter(
                "peer_sent_bytes_total",
                "Bytes sent to peers (UDP payloads of every QUIC connection).",
                tx,
            ),
            Row::counter(
                "paced_forwards_total",
                "Publishes that waited for room in a peer's queue of forwards (the peer reads slower than this node publishes).",
                m.paced_forwards.get(),
            ),
            Row::counter(
                "route_lookups_total",
                "Routes of groups asked of their holders (publishes to groups whose interest this node neither holds nor caches).",
                m.route_lookups.get(),
            ),
            Row::counter(
                "route_lookup_failures_total",
                "Lookups no holder answered: the message went to every peer.",
                m.route_lookup_failures.get(),
            ),
            Row::gauge(
                "routes_cached",
                "Routes of groups this node caches (leases from their holders).",
                cached as u64,
            ),
            Row::gauge(
                "route_leases",
                "Routes other nodes cache from this node (pushed to them when they change).",
                leases as u64,
            ),
            Row::gauge(
                "interest_groups_held",
                "Groups with subscribers on peers whose interest this node holds (owner or replica of their bucket).",
                held as u64,
            ),
            Row::counter(
                "history_messages_dropped_total",
                "History messages from peers dropped because the historian's inbox was full.",
                m.history_messages_dropped.get(),
            ),
            Row::counter(
                "peer_rpc_streams_refused_total",
                "Raft RPC streams refused because the Raft layer's inbox was full.",
                m.rpc_streams_refused.get(),
            ),
            Row::gauge_by(
                "peer_rtt_microseconds",
                "Round-trip time to each peer.",
                "peer",
                members
                    .iter()
                    .map(|p| (p.id.to_string(), p.rtt_micros))
                    .collect(),
            ),
            Row::gauge_by(
                "peer_queue_depth",
                "Control messages waiting in each peer's outbound queue.",
                "peer",
                depths,
            ),
            Row::gauge_by(
                "peer_data_queue_bytes",
                "Bytes of forwards waiting for each peer's data stream (publishers wait past PEER_QUEUE_BYTES, 8 MiB).",
                "peer",
                data,
            ),
        ]
    }

    // ----- connections -----

    fn update_majority(&self) {
        let in_majority = lock(&self.table).in_majority();
        self.deps.health.set_majority(in_majority);
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let cluster = self.clone();
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        if let Err(e) = cluster.session(conn, None).await {
                            debug!(%remote, error = %e, "peer session ended");
                        }
                    }
                    Err(e) => {
                        // A peer without a certificate of the cluster CA (in that mode)
                        // ends here, as does a dialer that gave up.
                        cluster.metrics.auth_failures.inc();
                        warn!(%remote, error = %e, "peer refused: TLS handshake failed");
                    }
                }
            });
        }
    }

    /// Keeps dialing `addr` until the node drains or stops; while a live session has that
    /// address it only checks back every heartbeat. Delays grow while the address is
    /// unreachable (to 2 s) and more after refusals (to 30 s, see `peers::DialBackoff`).
    fn dial(self: &Arc<Self>, addr: String) {
        if !lock(&self.dialing).insert(addr.clone()) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut backoff = DialBackoff::default();
            let life = cluster.deps.lifecycle.clone();
            loop {
                if life.shutdown_token().is_cancelled() || life.drain_token().is_cancelled() {
                    break;
                }
                if !lock(&cluster.table).should_dial(&addr) {
                    tokio::time::sleep(HEARTBEAT).await;
                    continue;
                }
                let outcome = match cluster.connect(&addr).await {
                    Ok(conn) => match cluster.clone().session(conn, Some(&addr)).await {
                        Ok(()) => DialOutcome::Session,
                        Err(e) if is_refusal(&e) => DialOutcome::Refused,
                        Err(e) if e.downcast_ref::<HandshakeError>().is_some() => {
                            debug!(%addr, error = %e, "peer handshake failed");
                            DialOutcome::Unreachable
                        }
                        Err(e) => {
                            debug!(%addr, error = %e, "peer session ended");
                            DialOutcome::Session
                        }
                    },
                    Err(e) => {
                        debug!(%addr, error = %e, "cannot reach peer");
                        DialOutcome::Unreachable
                    }
                };
                let delay = backoff.after(outcome);
                if outcome == DialOutcome::Refused && backoff.warn() {
                    warn!(%addr, retry_in = ?delay, "peer refused this node (or was refused); retrying with backoff");
                }
                tokio::time::sleep(delay).await;
            }
            lock(&cluster.dialing).remove(&addr);
        });
    }

    async fn connect(&self, addr: &str) -> anyhow::Result<quinn::Connection> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        let conn = self.endpoint.connect(target, "switchboard")?;
        Ok(tokio::time::timeout(super::session::HANDSHAKE_TIMEOUT, conn).await??)
    }

    /// Runs one session until the connection ends: handshake, registration in the table,
    /// then the reader loop (the writer and the RPC hand-off run beside it).
    async fn session(
        self: Arc<Self>,
        conn: quinn::Connection,
        dialed: Option<&str>,
    ) -> anyhow::Result<()> {
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
                if matches!(e, HandshakeError::NotProven { .. }) {
                    self.metrics.auth_failures.inc();
                }
                // A dialer's refusals are logged by its dial loop, with backoff.
                if dialed.is_none() {
                    warn!(remote = %conn.remote_address(), error = %e, "peer refused");
                }
                return Err(e.into());
            }
        };
        let peer = hs.peer;
        if self.deps.replica.is_removed(peer) {
            self.metrics.auth_failures.inc();
            if dialed.is_none() {
                warn!(peer, remote = %conn.remote_address(), "peer refused: it was removed from the cluster");
            }
            CloseReason::Removed.close(&conn);
            return Err(Refused(format!("peer {peer} was removed from the cluster")).into());
        }
        if let Some(bound) = self.deps.replica.incarnation_of(peer)
            && bound != hs.incarnation
        {
            self.metrics.auth_failures.inc();
            warn!(
                peer,
                remote = %conn.remote_address(),
                bound = format!("{bound:016x}"),
                presented = format!("{:016x}", hs.incarnation),
                "peer refused: node id {peer} belongs to a member with another data dir"
            );
            CloseReason::WrongIncarnation.close(&conn);
            return Err(Refused(format!("peer {peer} is another incarnation")).into());
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
        gossip::send_full(&self, &self.deps.hub, peer, &link);
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
            write(&self.remote).remove_node(peer);
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
    ) -> anyhow::Result<()> {
        loop {
            let message = read_frame(recv, MAX_PEER_MESSAGE).await?;
            lock(&self.table).heard_from(Instant::now(), peer);
            match message {
                PeerMessage::Forward(_) => {
                    bail!(
                        "peer {peer} sent forwards on the control stream (they go on its data stream)"
                    )
                }
                PeerMessage::History(message) => {
                    if self.deps.history.try_send((peer, message)).is_err() {
                        // The requester's call times out (or the owner resends a state).
                        self.metrics.history_messages_dropped.inc();
                    }
                }
                PeerMessage::Interest(update) => {
                    let applied = write(&self.remote).apply(peer, update);
                    match applied {
                        Ok(touched) => self.push_routes(touched),
                        Err(_) => {
                            link.send(PeerMessage::InterestSyncRequest);
                        }
                    }
                }
                PeerMessage::Route(message) => self.on_route(peer, message),
                PeerMessage::InterestSyncRequest => {
                    gossip::send_full(self, &self.deps.hub, peer, link)
                }
                PeerMessage::Heartbeat {
                    sent_micros,
                    connections,
                    groups,
                } => {
                    lock(&self.table).on_load(peer, connections, groups);
                    link.send(PeerMessage::HeartbeatAck { sent_micros });
                }
                PeerMessage::HeartbeatAck { sent_micros } => {
                    let rtt = unix_micros().saturating_sub(sent_micros);
                    lock(&self.table).on_rtt(peer, rtt);
                }
                PeerMessage::Peers(list) => {
                    for (id, addr) in list {
                        let dial = id != self.node && lock(&self.table).should_dial_peer(id);
                        if dial {
                            self.dial(addr);
                        }
                    }
                }
                PeerMessage::Leaving => {
                    info!(peer, "peer drains: its history buckets move");
                    lock(&self.table).on_leaving(peer);
                }
                PeerMessage::Auth { .. } | PeerMessage::Hello { .. } => {
                    bail!("peer {peer} sent a second handshake")
                }
                PeerMessage::Raft { .. } => {
                    bail!("peer {peer} sent a Raft message on the gossip stream")
                }
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
            let PeerMessage::Forward(forwards) = message else {
                warn!(
                    peer,
                    kind = message.kind(),
                    "peer sent a control message on its data stream; closing it"
                );
                CloseReason::Ended.close(&conn);
                return;
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

    async fn heartbeat_loop(self: Arc<Self>) {
        let shutdown = self.shutdown_token();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            let tick = lock(&self.table).tick(Instant::now());
            let (connections, groups) = (
                self.deps.hub.connection_count() as u64,
                self.deps.hub.group_count() as u64,
            );
            for link in &tick.heartbeat {
                link.send(PeerMessage::Heartbeat {
                    sent_micros: unix_micros(),
                    connections,
                    groups,
                });
            }
            for (id, link) in &tick.expired {
                warn!(peer = id, "peer silent for --node-timeout: marked down");
                write(&self.remote).remove_node(*id);
                CloseReason::Ended.close(link.connection());
            }
            if !tick.expired.is_empty() {
                self.update_majority();
            }
            self.expire_lookups();
        }
    }
}

/// Whether a session failed because one side refused the other.
fn is_refusal(e: &anyhow::Error) -> bool {
    if e.downcast_ref::<Refused>().is_some() {
        return true;
    }
    match e.downcast_ref::<HandshakeError>() {
        Some(
            HandshakeError::NotProven { .. }
            | HandshakeError::SameNodeId(_)
            | HandshakeError::Version { .. },
        ) => true,
        Some(e) => e
            .closed_with()
            .is_some_and(|code| CloseReason::refusal(code).is_some()),
        None => false,
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

/// Writes queued forwards on this node's data stream to the peer (a unidirectional QUIC
/// stream of its own, so that control messages never wait behind data), in batches; a
/// batch's budget is given back once written, that is once QUIC's flow control let it
/// go: a peer that reads slowly slows the publishers here.
async fn data_write_loop(
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
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<PeerMessage>) {
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
