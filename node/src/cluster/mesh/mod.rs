//! The mesh's driver: the QUIC endpoint and the tasks around the [`PeerTable`], with no
//! decisions of their own (those are the table's, `super::peers`; the routes',
//! `super::routes`; and the dispatch's, `super::dispatch`: who is admitted, what each
//! message asks, what a session's end means for the next dial). The publish path is in
//! `super::forward`, the sending side of a session in [`Link`] (`link.rs`), the
//! metrics in `rows.rs`.
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

mod gossip;
mod link;
mod rows;
mod serve;

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::Context;
use switchboard_proto::peer::{History, NodeId, PEER_PROTOCOL_VERSION, PeerMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

pub use link::{FORWARD_OVERHEAD, Link, PEER_QUEUE, PEER_QUEUE_BYTES};
pub use rows::ClusterMetrics;

use super::dial::{DialBackoff, DialOutcome};
use super::peers::{Dial, MemberView, PeerTable};
use super::pending::{Acts, Hints, Listings, Lookups};
use super::routes::{Holders, Routes};
use super::rpc::RpcInbox;
use super::session::CloseReason;
use super::tls;
use crate::broker::RemoteInterest;
use crate::clock::unix_micros;
use crate::config::Config;
use crate::health::Health;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::presence::SharedReplica;
use crate::secrets::Secrets;
use crate::sync::{lock, write};

/// How often heartbeats go out and liveness is checked.
pub const HEARTBEAT: Duration = Duration::from_millis(500);

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
    /// This process's boot id: the connection ids it minted carry it.
    pub(super) boot: u64,
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
    /// Acts on other nodes' connections waiting for their answer (`super::acts`).
    pub(super) acts: Mutex<Acts>,
    pub(super) hints: Mutex<Hints>,
    /// Whether `hints` holds any (publishes skip its lock when not).
    pub(super) hinting: std::sync::atomic::AtomicBool,
    pub(super) next_id: AtomicU64,
    /// Bytes received and sent on sessions that have ended (the live ones are read from
    /// their connections).
    ended_rx: AtomicU64,
    ended_tx: AtomicU64,
    /// Addresses with a dial loop running.
    /// Each address being dialed, with the members it was asked for there (`None`: a
    /// seed); one dialer per address.
    dialing: Mutex<HashMap<String, Vec<Option<NodeId>>>>,
    /// Refused connections, told once per source per interval.
    refusals: Mutex<crate::cluster::refusals::Refusals>,
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
            presence_shards: config.cluster.presence_shards,
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
            boot,
            endpoint,
            hello,
            seeds: config.cluster.seeds.clone(),
            table: Mutex::new(table),
            remote: RwLock::new(RemoteInterest::default()),
            routes: Mutex::new(Routes::new(config.node_id)),
            lookups: Mutex::new(Lookups::default()),
            listings: Mutex::new(Listings::default()),
            acts: Mutex::new(Acts::default()),
            hints: Mutex::new(Hints::default()),
            hinting: std::sync::atomic::AtomicBool::new(false),
            next_id: AtomicU64::new(1),
            ended_rx: AtomicU64::new(0),
            ended_tx: AtomicU64::new(0),
            dialing: Mutex::new(HashMap::new()),
            refusals: Mutex::new(Default::default()),
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
    pub fn start(self: &Arc<Self>, remembered: Vec<(NodeId, String)>) {
        tokio::spawn(self.clone().accept_loop());
        for addr in self.seeds.clone() {
            self.dial(addr, None);
        }
        for (member, addr) in remembered {
            self.dial(addr, Some(member));
        }
        tokio::spawn(self.clone().gossip_loop());
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

    /// Forgets what `peer` told (its interest, the assignments it followed): its session
    /// ended, or it went silent.
    fn forget_peer(&self, peer: NodeId) {
        write(&self.remote).remove_node(peer);
        lock(&self.routes).forget_peer(peer);
    }

    /// Whether this node is in touch with a majority of the members it knows now.
    pub fn in_majority(&self) -> bool {
        lock(&self.table).in_majority()
    }

    // ----- connections -----

    fn update_majority(&self) {
        let in_majority = lock(&self.table).in_majority();
        self.deps.health.set_majority(in_majority);
    }

    async fn accept_loop(self: Arc<Self>) {
        while let Some(incoming) = self.endpoint.accept().await {
            // A source address is proven (a QUIC Retry, one round trip) before anything
            // is spent or counted on it: junk and spoofed datagrams end here.
            if !incoming.remote_address_validated() {
                if incoming.may_retry() {
                    let _ = incoming.retry();
                } else {
                    incoming.ignore();
                }
                continue;
            }
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
                        if let Some(quiet) = cluster.refused(remote) {
                            warn!(%remote, error = %e, quiet, "peer refused: TLS handshake failed");
                        }
                    }
                }
            });
        }
    }

    /// A connection from `remote` refused: counted and to be logged once per source
    /// per interval (`Some(n)`: `n` refusals of it were kept quiet since), else `None`.
    pub(super) fn refused(&self, remote: std::net::SocketAddr) -> Option<u64> {
        let told = lock(&self.refusals).on_refusal(remote.ip(), Instant::now());
        if told.is_some() {
            self.metrics.auth_failures.inc();
        }
        told
    }

    /// Keeps dialing `addr` until the node drains or stops, or every member it was asked
    /// for there (`member`, and any asked later; none for a seed) is up at another
    /// address (see `PeerTable::dial`);
    /// while a live session has that address it only checks back every heartbeat. Delays
    /// grow while the address is unreachable (to 2 s) and more after refusals (to 30 s,
    /// see `peers::DialBackoff`).
    fn dial(self: &Arc<Self>, addr: String, member: Option<NodeId>) {
        {
            let mut dialing = lock(&self.dialing);
            if let Some(members) = dialing.get_mut(&addr) {
                if !members.contains(&member) {
                    members.push(member); // the dialer there dials for it too
                }
                return;
            }
            dialing.insert(addr.clone(), vec![member]);
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut backoff = DialBackoff::default();
            let answers = |backoff: &mut DialBackoff| {
                if let Some(attempts) = backoff.answered() {
                    info!(%addr, attempts, "peer address answers again");
                }
            };
            let life = cluster.deps.lifecycle.clone();
            loop {
                if life.shutdown_token().is_cancelled() || life.drain_token().is_cancelled() {
                    break;
                }
                // Decided and, on a stop, forgotten under the dialers' lock: a member
                // asked for this address meanwhile is not lost.
                let dial = {
                    let mut dialing = lock(&cluster.dialing);
                    let members = dialing.get(&addr).cloned().unwrap_or_default();
                    let dial = lock(&cluster.table).dial(&addr, &members);
                    if dial == Dial::Stop {
                        dialing.remove(&addr);
                    }
                    dial
                };
                match dial {
                    Dial::Wait => {
                        // It dialed this node instead (a restarted node dials those it knew).
                        answers(&mut backoff);
                        tokio::time::sleep(HEARTBEAT).await;
                        continue;
                    }
                    Dial::Stop => {
                        info!(%addr, "no longer dialing this address: the member is up at another");
                        return;
                    }
                    Dial::Now => {}
                }
                let (outcome, reason) = match cluster.connect(&addr).await {
                    Ok(conn) => {
                        answers(&mut backoff);
                        match cluster.clone().session(conn, Some(&addr)).await {
                            Ok(()) => (DialOutcome::Session, String::new()),
                            Err(e) => {
                                debug!(%addr, error = %e, "peer session ended");
                                let reason = match e.refused_by_peer() {
                                    Some(refusal) => format!(
                                        "refused by the peer: {}",
                                        String::from_utf8_lossy(refusal.text())
                                    ),
                                    None => e.to_string(),
                                };
                                (e.dial_outcome(), reason)
                            }
                        }
                    }
                    Err(e) => {
                        debug!(%addr, error = %e, "cannot reach peer");
                        (DialOutcome::Unreachable, e.to_string())
                    }
                };
                let now = Instant::now();
                let delay = backoff.after(outcome, now);
                if outcome == DialOutcome::Refused && backoff.warn() {
                    warn!(%addr, retry_in = ?delay, error = %reason, "peer refused this node (or was refused); retrying with backoff");
                }
                if let Some((attempts, down)) = backoff.still_unreachable(now) {
                    let down_s = down.as_secs();
                    warn!(%addr, attempts, down_s, error = %reason, "peer address still unreachable");
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
                self.forget_peer(*id);
                CloseReason::Ended.close(link.connection());
            }
            if !tick.expired.is_empty() {
                self.update_majority();
            }
            self.expire_lookups();
        }
    }
}
