//! The peer mesh: nodes connect over QUIC, prove the cluster secret, tell each other
//! which groups they have subscribers for, and forward published messages to the nodes
//! that want them.
//!
//! Parts:
//! - [`tls`]: the QUIC endpoint (TLS 1.3, self-signed certificate).
//! - [`auth`]: the cluster-secret proof bound to each TLS session.
//! - [`Cluster`]: the peer table and the remote interest table, shared with the publish
//!   path; and the tasks: accept, dial (seeds, then every member learnt), gossip,
//!   heartbeat.
//!
//! One connection per peer pair carries one bidirectional stream of length-prefixed
//! [`PeerMessage`]s in each direction, so everything one node sends another arrives in
//! order. When both nodes dial each other at once, both keep the connection dialed by the
//! lower node id. Each peer has a bounded outbound queue: when it is full (the peer or
//! the link is too slow), messages for that peer are dropped and counted.
//!
//! Raft RPCs (see [`crate::raft::network`]) travel on further bidirectional streams of
//! the same authenticated connection, one stream per call. A peer removed for good
//! (`switchboard remove`) is refused at the handshake.

pub mod auth;
pub mod tls;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use switchboard_proto::peer::{
    Forward, Interest, MAX_PEER_MESSAGE, NodeId, PEER_PROTOCOL_VERSION, PeerMessage,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::broker::RemoteInterest;
use crate::shared::{Encoded, Shared, lock, read, write};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 65_536;
/// How often heartbeats go out and liveness is checked.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How often changes in local interest are gossiped.
const GOSSIP: Duration = Duration::from_millis(10);
/// How often the full interest is re-sent to repair anything lost.
const FULL_SYNC: Duration = Duration::from_secs(10);
/// Longest the handshake (auth and hello) may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Redial delays.
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What this node knows of another.
#[derive(Debug, Clone)]
struct Peer {
    peer_addr: String,
    ws_addr: String,
    resp_addr: String,
    admin_addr: String,
    last_seen: Instant,
    rtt_micros: u64,
    /// The live session, if any.
    session: Option<Session>,
}

#[derive(Debug, Clone)]
struct Session {
    id: u64,
    /// The node that dialed this connection: of two, the lower dialer's is kept.
    dialer: NodeId,
    tx: mpsc::Sender<PeerMessage>,
    conn: quinn::Connection,
}

/// One member as the admin API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberView {
    pub id: NodeId,
    pub up: bool,
    pub last_seen_ms: u64,
    pub rtt_micros: u64,
    pub peer: String,
    pub ws: String,
    pub resp: String,
    pub admin: String,
}

/// Counters of the mesh, exported in `/metrics`.
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    pub forwarded_messages: AtomicU64,
    pub forwarded_bytes: AtomicU64,
    pub received_forwards: AtomicU64,
    pub peer_queue_drops: AtomicU64,
    pub auth_failures: AtomicU64,
    pub interest_full_syncs: AtomicU64,
}

/// See the module header.
#[derive(Debug)]
pub struct Cluster {
    node: NodeId,
    secret: Vec<u8>,
    endpoint: quinn::Endpoint,
    hello: PeerMessage,
    node_timeout: Duration,
    peers: Mutex<HashMap<NodeId, Peer>>,
    remote: RwLock<RemoteInterest>,
    /// Addresses with a dial loop running.
    dialing: Mutex<HashSet<String>>,
    /// Members known from the Raft log at start, dialed with the seeds.
    remembered: Mutex<Vec<(NodeId, String)>>,
    next_session: AtomicU64,
    pub metrics: ClusterMetrics,
}

impl Cluster {
    /// Binds the peer endpoint; `config` holds this node's resolved addresses and
    /// `admin` its admin address, which peers learn from its Hello.
    pub fn bind(config: &crate::config::Config, admin: String) -> anyhow::Result<Arc<Cluster>> {
        let endpoint = tls::endpoint(
            config.peer_listen,
            config.node_timeout,
            config.cluster_ca.as_ref(),
        )?;
        let peer_addr = endpoint.local_addr()?.to_string();
        let hello = PeerMessage::Hello {
            node: config.node_id,
            protocol: PEER_PROTOCOL_VERSION,
            peer_addr,
            admin_addr: admin,
            ws_addr: config.ws_listen.to_string(),
            resp_addr: config.resp_listen.to_string(),
        };
        Ok(Arc::new(Cluster {
            node: config.node_id,
            secret: config
                .cluster_secret
                .clone()
                .unwrap_or_default()
                .into_bytes(),
            endpoint,
            hello,
            node_timeout: config.node_timeout,
            peers: Mutex::new(HashMap::new()),
            remote: RwLock::new(RemoteInterest::default()),
            dialing: Mutex::new(HashSet::new()),
            remembered: Mutex::new(Vec::new()),
            next_session: AtomicU64::new(1),
            metrics: ClusterMetrics::default(),
        }))
    }

    /// The UDP address the endpoint is bound to.
    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.endpoint.local_addr().ok()
    }

    /// Starts accepting peers, dialing the seeds, gossiping and heartbeating.
    pub fn start(self: &Arc<Self>, shared: Arc<Shared>) {
        tokio::spawn(self.clone().accept_loop(shared.clone()));
        for seed in &shared.config.seeds {
            self.dial(seed.clone(), shared.clone());
        }
        let remembered = std::mem::take(&mut *lock(&self.remembered));
        for (_, addr) in remembered {
            self.dial(addr, shared.clone());
        }
        tokio::spawn(self.clone().gossip_loop(shared.clone()));
        tokio::spawn(self.clone().heartbeat_loop(shared));
    }

    /// The peer address this node gives others (its Hello's).
    pub fn advertised_addr(&self) -> String {
        match &self.hello {
            PeerMessage::Hello { peer_addr, .. } => peer_addr.clone(),
            _ => String::new(),
        }
    }

    /// Members learnt from the Raft log, to dial at start along with the seeds.
    pub fn remember(&self, members: Vec<(NodeId, String)>) {
        lock(&self.remembered).extend(members);
    }

    /// The live connection to `node`, if any.
    pub fn connection(&self, node: NodeId) -> Option<quinn::Connection> {
        lock(&self.peers)
            .get(&node)
            .and_then(|p| p.session.as_ref())
            .map(|s| s.conn.clone())
    }

    /// How long ago `node` was last heard from, if it was ever heard from.
    pub fn last_seen(&self, node: NodeId) -> Option<Duration> {
        lock(&self.peers).get(&node).map(|p| p.last_seen.elapsed())
    }

    /// Closes every connection and stops accepting: the node leaves the mesh.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node leaving");
    }

    /// Whether this node is in a majority of the members it knows (itself included), so
    /// that it may call itself ready. A node started with seeds that has not yet reached
    /// any peer is still joining, so not ready; a node that knows no peer and had no
    /// seeds is a cluster of one.
    pub fn in_majority(&self, joining: bool) -> bool {
        let peers = lock(&self.peers);
        if peers.is_empty() {
            return !joining;
        }
        let up = 1 + peers.values().filter(|p| p.session.is_some()).count();
        let known = 1 + peers.len();
        2 * up > known
    }

    // ----- the publish path -----

    /// Sends a message published here to every peer with subscribers for its group.
    /// Returns the number of connections it was routed to on those peers.
    pub fn forward(&self, group: &str, payload: &Bytes, text: bool) -> usize {
        let targets: Vec<(NodeId, u32)> = match read(&self.remote).nodes_for(group) {
            Some(nodes) => nodes.iter().map(|(n, c)| (*n, *c)).collect(),
            None => return 0,
        };
        let peers = lock(&self.peers);
        let mut routed = 0usize;
        for (node, count) in targets {
            let Some(session) = peers.get(&node).and_then(|p| p.session.as_ref()) else {
                continue;
            };
            let message = PeerMessage::Forward(vec![Forward {
                group: group.to_owned(),
                payload: payload.clone(),
                text,
                origin: self.node,
                publisher: 0,
                seq: 0,
            }]);
            match session.tx.try_send(message) {
                Ok(()) => {
                    routed += count as usize;
                    self.metrics
                        .forwarded_messages
                        .fetch_add(1, Ordering::Relaxed);
                    self.metrics
                        .forwarded_bytes
                        .fetch_add(payload.len() as u64, Ordering::Relaxed);
                }
                Err(_) => {
                    self.metrics
                        .peer_queue_drops
                        .fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        routed
    }

    /// Connections in `group` on each peer, as gossiped.
    pub fn group_counts(&self, group: &str) -> Vec<(NodeId, usize)> {
        read(&self.remote)
            .nodes_for(group)
            .map(|nodes| nodes.iter().map(|(n, c)| (*n, *c as usize)).collect())
            .unwrap_or_default()
    }

    /// Every group some peer has subscribers for.
    pub fn groups(&self) -> Vec<String> {
        read(&self.remote).groups().map(str::to_owned).collect()
    }

    /// Every peer this node has heard of.
    pub fn members(&self) -> Vec<MemberView> {
        let now = Instant::now();
        let mut members: Vec<MemberView> = lock(&self.peers)
            .iter()
            .map(|(id, p)| MemberView {
                id: *id,
                // Down is decided in one place, the heartbeat loop, which also drops the
                // peer's interest: members, presence and routing never disagree.
                up: p.session.is_some(),
                last_seen_ms: now.duration_since(p.last_seen).as_millis() as u64,
                rtt_micros: p.rtt_micros,
                peer: p.peer_addr.clone(),
                ws: p.ws_addr.clone(),
                resp: p.resp_addr.clone(),
                admin: p.admin_addr.clone(),
            })
            .collect();
        members.sort_by_key(|m| m.id);
        members
    }

    // ----- connections -----

    async fn accept_loop(self: Arc<Self>, shared: Arc<Shared>) {
        while let Some(incoming) = self.endpoint.accept().await {
            let (cluster, shared) = (self.clone(), shared.clone());
            tokio::spawn(async move {
                let remote = incoming.remote_address();
                match incoming.await {
                    Ok(conn) => {
                        if let Err(e) = cluster.session(conn, None, shared).await {
                            debug!(%remote, error = %e, "peer session ended");
                        }
                    }
                    Err(e) => {
                        // A peer without a certificate of the cluster CA (in that mode)
                        // ends here, as does a dialer that gave up.
                        cluster
                            .metrics
                            .auth_failures
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(%remote, error = %e, "peer refused: TLS handshake failed");
                    }
                }
            });
        }
    }

    /// Keeps dialing `addr` while it is worth it: a seed until the node behind it is
    /// connected, a learnt member while it is a member.
    fn dial(self: &Arc<Self>, addr: String, shared: Arc<Shared>) {
        if !lock(&self.dialing).insert(addr.clone()) {
            return;
        }
        let cluster = self.clone();
        tokio::spawn(async move {
            let mut backoff = BACKOFF_MIN;
            loop {
                if shared.shutdown.is_cancelled() || shared.drain.is_cancelled() {
                    break;
                }
                if cluster.connected_to_addr(&addr) {
                    tokio::time::sleep(HEARTBEAT).await;
                    continue;
                }
                match cluster.connect(&addr).await {
                    Ok(conn) => {
                        backoff = BACKOFF_MIN;
                        if let Err(e) = cluster
                            .clone()
                            .session(conn, Some(&addr), shared.clone())
                            .await
                        {
                            debug!(%addr, error = %e, "peer session ended");
                        }
                    }
                    Err(e) => debug!(%addr, error = %e, "cannot reach peer"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            lock(&cluster.dialing).remove(&addr);
        });
    }

    fn connected_to_addr(&self, addr: &str) -> bool {
        lock(&self.peers)
            .values()
            .any(|p| p.peer_addr == addr && p.session.is_some())
    }

    async fn connect(&self, addr: &str) -> anyhow::Result<quinn::Connection> {
        let target = tokio::net::lookup_host(addr)
            .await?
            .next()
            .with_context(|| format!("{addr} resolves to nothing"))?;
        let conn = self.endpoint.connect(target, "switchboard")?;
        Ok(tokio::time::timeout(HANDSHAKE_TIMEOUT, conn).await??)
    }

    /// Runs one authenticated session until the connection ends.
    async fn session(
        self: Arc<Self>,
        conn: quinn::Connection,
        dialed: Option<&str>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<()> {
        let role = if dialed.is_some() {
            auth::Role::Dialer
        } else {
            auth::Role::Acceptor
        };
        let handshake = async {
            let (mut send, mut recv) = match role {
                auth::Role::Dialer => conn.open_bi().await?,
                auth::Role::Acceptor => conn.accept_bi().await?,
            };
            let mut ekm = [0u8; auth::EKM_LEN];
            conn.export_keying_material(&mut ekm, auth::LABEL, b"")
                .map_err(|_| anyhow::anyhow!("TLS keying material unavailable"))?;
            let proof = auth::prove(&self.secret, role, &ekm, self.node);
            write_frame(
                &mut send,
                &PeerMessage::Auth {
                    node: self.node,
                    proof: proof.into(),
                },
            )
            .await?;
            let (peer, their_proof) = match read_frame(&mut recv).await? {
                PeerMessage::Auth { node, proof } => (node, proof),
                _ => bail!("the peer did not authenticate first"),
            };
            let their_role = match role {
                auth::Role::Dialer => auth::Role::Acceptor,
                auth::Role::Acceptor => auth::Role::Dialer,
            };
            if !auth::verify(&self.secret, their_role, &ekm, peer, &their_proof) {
                self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
                conn.close(1u32.into(), b"cluster secret not proven");
                bail!(
                    "peer {} claiming node {peer} did not prove the cluster secret",
                    conn.remote_address()
                );
            }
            if peer == self.node {
                conn.close(2u32.into(), b"same node id");
                bail!(
                    "peer at {} has our own node id {peer}",
                    conn.remote_address()
                );
            }
            write_frame(&mut send, &self.hello).await?;
            let hello = read_frame(&mut recv).await?;
            anyhow::Ok((peer, hello, send, recv))
        };
        let (peer, hello, send, mut recv) =
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    warn!(remote = %conn.remote_address(), error = %e, "peer refused");
                    return Err(e);
                }
                Err(_) => bail!("peer handshake timed out"),
            };
        let PeerMessage::Hello {
            node,
            protocol,
            peer_addr,
            admin_addr,
            ws_addr,
            resp_addr,
        } = hello
        else {
            bail!("expected Hello after Auth");
        };
        if node != peer || protocol != PEER_PROTOCOL_VERSION {
            bail!("peer {peer} sent a Hello for node {node}, protocol {protocol}");
        }
        if read(&shared.replica).removed.contains(&peer) {
            self.metrics.auth_failures.fetch_add(1, Ordering::Relaxed);
            warn!(peer, remote = %conn.remote_address(), "peer refused: it was removed from the cluster");
            conn.close(4u32.into(), b"removed from the cluster");
            bail!("peer {peer} was removed from the cluster");
        }

        // Register, keeping the connection dialed by the lower node id if there are two.
        let dialer = if dialed.is_some() { self.node } else { peer };
        let session_id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        {
            let mut peers = lock(&self.peers);
            let entry = peers.entry(peer).or_insert_with(|| Peer {
                peer_addr: peer_addr.clone(),
                ws_addr: ws_addr.clone(),
                resp_addr: resp_addr.clone(),
                admin_addr: admin_addr.clone(),
                last_seen: Instant::now(),
                rtt_micros: 0,
                session: None,
            });
            if let Some(existing) = &entry.session
                && !existing.tx.is_closed()
                && existing.dialer <= dialer
            {
                drop(peers);
                conn.close(3u32.into(), b"duplicate connection");
                return Ok(());
            }
            entry.peer_addr = peer_addr;
            entry.ws_addr = ws_addr;
            entry.resp_addr = resp_addr;
            entry.admin_addr = admin_addr;
            entry.last_seen = Instant::now();
            entry.session = Some(Session {
                id: session_id,
                dialer,
                tx: tx.clone(),
                conn: conn.clone(),
            });
        }
        info!(peer, remote = %conn.remote_address(), "peer connected");
        // The peer's interest starts from its full sync on this session.
        write(&self.remote).remove_node(peer);
        self.send_full_interest(&shared, &tx);
        // Everyone learns of the newcomer (and it of everyone), so the mesh closes even
        // when nodes joined through different seeds at different times.
        let known = self.known_peers();
        for session in lock(&self.peers)
            .values()
            .filter_map(|p| p.session.as_ref())
        {
            let _ = session.tx.try_send(PeerMessage::Peers(known.clone()));
        }

        let writer = tokio::spawn(write_loop(send, rx));
        let rpcs = tokio::spawn(serve_rpcs(conn.clone(), peer, shared.clone()));
        let result = self.read_loop(peer, &mut recv, &tx, &shared).await;
        writer.abort();
        rpcs.abort();
        conn.close(0u32.into(), b"session ended");
        self.end_session(peer, session_id);
        result
    }

    fn end_session(&self, peer: NodeId, session_id: u64) {
        let mut peers = lock(&self.peers);
        if let Some(p) = peers.get_mut(&peer)
            && p.session.as_ref().is_some_and(|s| s.id == session_id)
        {
            p.session = None;
            drop(peers);
            write(&self.remote).remove_node(peer);
            info!(peer, "peer disconnected");
        }
    }

    fn known_peers(&self) -> Vec<(NodeId, String)> {
        let mut list: Vec<(NodeId, String)> = lock(&self.peers)
            .iter()
            .map(|(id, p)| (*id, p.peer_addr.clone()))
            .collect();
        if let PeerMessage::Hello { peer_addr, .. } = &self.hello {
            list.push((self.node, peer_addr.clone()));
        }
        list
    }

    /// Queues this node's whole interest for one peer. Taken under the broker lock so
    /// that no delta can be queued between the snapshot and its sending.
    fn send_full_interest(&self, shared: &Shared, tx: &mpsc::Sender<PeerMessage>) {
        let broker = read(&shared.broker);
        let (version, groups) = broker.interest_snapshot();
        let _ = tx.try_send(PeerMessage::Interest(Interest::Full {
            version,
            groups: groups.into_iter().collect(),
        }));
        self.metrics
            .interest_full_syncs
            .fetch_add(1, Ordering::Relaxed);
    }

    async fn read_loop(
        self: &Arc<Self>,
        peer: NodeId,
        recv: &mut quinn::RecvStream,
        tx: &mpsc::Sender<PeerMessage>,
        shared: &Arc<Shared>,
    ) -> anyhow::Result<()> {
        loop {
            let message = read_frame(recv).await?;
            if let Some(p) = lock(&self.peers).get_mut(&peer) {
                p.last_seen = Instant::now();
            }
            match message {
                PeerMessage::Forward(forwards) => {
                    for f in forwards {
                        self.metrics
                            .received_forwards
                            .fetch_add(1, Ordering::Relaxed);
                        shared.publish_local(&f.group, &Encoded::new(f.payload));
                    }
                }
                PeerMessage::Interest(update) => {
                    let result = write(&self.remote).apply(peer, update);
                    if result.is_err() {
                        let _ = tx.try_send(PeerMessage::InterestSyncRequest);
                    }
                }
                PeerMessage::InterestSyncRequest => self.send_full_interest(shared, tx),
                PeerMessage::Heartbeat { sent_micros } => {
                    let _ = tx.try_send(PeerMessage::HeartbeatAck { sent_micros });
                }
                PeerMessage::HeartbeatAck { sent_micros } => {
                    let rtt = micros_now().saturating_sub(sent_micros);
                    if let Some(p) = lock(&self.peers).get_mut(&peer) {
                        p.rtt_micros = rtt;
                    }
                }
                PeerMessage::Peers(list) => {
                    for (id, addr) in list {
                        // The lower id dials; the higher waits to be dialed.
                        if id != self.node && self.node < id && !self.connected_to(id) {
                            self.dial(addr, shared.clone());
                        }
                    }
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

    /// Whether a live session to `id` exists.
    pub fn connected_to(&self, id: NodeId) -> bool {
        lock(&self.peers)
            .get(&id)
            .is_some_and(|p| p.session.is_some())
    }

    async fn gossip_loop(self: Arc<Self>, shared: Arc<Shared>) {
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tokio::time::sleep(GOSSIP) => {}
            }
            let full = last_full.elapsed() >= FULL_SYNC;
            // Hold the broker lock while queueing, so deltas go out in version order.
            let mut broker = write(&shared.broker);
            let changes = broker.take_interest_changes();
            let snapshot = full.then(|| broker.interest_snapshot());
            let peers: Vec<mpsc::Sender<PeerMessage>> = lock(&self.peers)
                .values()
                .filter_map(|p| p.session.as_ref().map(|s| s.tx.clone()))
                .collect();
            for tx in &peers {
                if let Some((version, changes)) = &changes {
                    let _ = tx.try_send(PeerMessage::Interest(Interest::Delta {
                        base_version: version - 1,
                        version: *version,
                        changes: changes.clone(),
                    }));
                }
                if let Some((version, groups)) = &snapshot {
                    let _ = tx.try_send(PeerMessage::Interest(Interest::Full {
                        version: *version,
                        groups: groups.iter().map(|(g, c)| (g.clone(), *c)).collect(),
                    }));
                }
            }
            drop(broker);
            if full {
                last_full = Instant::now();
            }
        }
    }

    async fn heartbeat_loop(self: Arc<Self>, shared: Arc<Shared>) {
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
            let now = Instant::now();
            let mut expired = Vec::new();
            {
                let mut peers = lock(&self.peers);
                for (id, p) in peers.iter_mut() {
                    if let Some(s) = &p.session {
                        if now.duration_since(p.last_seen) >= self.node_timeout {
                            expired.push(*id);
                            p.session = None;
                        } else {
                            let _ = s.tx.try_send(PeerMessage::Heartbeat {
                                sent_micros: micros_now(),
                            });
                        }
                    }
                }
            }
            for id in expired {
                warn!(peer = id, "peer silent for --node-timeout: marked down");
                write(&self.remote).remove_node(id);
            }
        }
    }

    /// Appends the mesh's metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let members = self.members();
        let m = &self.metrics;
        let rows: [(&str, &str, &str, u64); 8] = [
            (
                "peers",
                "gauge",
                "Peers this node has heard of.",
                members.len() as u64,
            ),
            (
                "peers_up",
                "gauge",
                "Peers connected and heard from within --node-timeout.",
                members.iter().filter(|p| p.up).count() as u64,
            ),
            (
                "forwarded_messages_total",
                "counter",
                "Messages sent to peers.",
                m.forwarded_messages.load(Ordering::Relaxed),
            ),
            (
                "forwarded_bytes_total",
                "counter",
                "Payload bytes sent to peers.",
                m.forwarded_bytes.load(Ordering::Relaxed),
            ),
            (
                "received_forwards_total",
                "counter",
                "Messages received from peers for local delivery.",
                m.received_forwards.load(Ordering::Relaxed),
            ),
            (
                "peer_queue_drops_total",
                "counter",
                "Messages dropped because a peer's queue was full.",
                m.peer_queue_drops.load(Ordering::Relaxed),
            ),
            (
                "peer_auth_failures_total",
                "counter",
                "Peers refused: failed TLS handshake (cluster CA) or cluster-secret proof.",
                m.auth_failures.load(Ordering::Relaxed),
            ),
            (
                "interest_full_syncs_total",
                "counter",
                "Full interest snapshots sent to peers.",
                m.interest_full_syncs.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in rows {
            crate::metrics::write_metric(out, name, kind, help, value);
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_peer_rtt_microseconds Round-trip time to each peer."
        );
        let _ = writeln!(out, "# TYPE switchboard_peer_rtt_microseconds gauge");
        for p in &members {
            let _ = writeln!(
                out,
                "switchboard_peer_rtt_microseconds{{peer=\"{}\"}} {}",
                p.id, p.rtt_micros
            );
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_peer_queue_depth Messages waiting in each peer's outbound queue."
        );
        let _ = writeln!(out, "# TYPE switchboard_peer_queue_depth gauge");
        let depths: Vec<(NodeId, usize)> = lock(&self.peers)
            .iter()
            .filter_map(|(id, p)| {
                let s = p.session.as_ref()?;
                Some((*id, s.tx.max_capacity() - s.tx.capacity()))
            })
            .collect();
        for (id, depth) in depths {
            let _ = writeln!(out, "switchboard_peer_queue_depth{{peer=\"{id}\"}} {depth}");
        }
    }

    /// Per-node connection counts for `group`, this node included, sorted by node.
    pub fn with_local(&self, local: (NodeId, usize), group: &str) -> Vec<(NodeId, usize)> {
        let mut counts: BTreeMap<NodeId, usize> = self.group_counts(group).into_iter().collect();
        if local.1 > 0 {
            counts.insert(local.0, local.1);
        }
        counts.into_iter().collect()
    }
}

fn micros_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Accepts the Raft RPC streams a peer opens on its connection, one task per call.
async fn serve_rpcs(conn: quinn::Connection, peer: NodeId, shared: Arc<Shared>) {
    while let Ok((send, recv)) = conn.accept_bi().await {
        let Some(consensus) = shared.consensus.get().cloned() else {
            continue;
        };
        tokio::spawn(async move {
            if let Err(e) = crate::raft::network::serve_stream(consensus, peer, send, recv).await {
                debug!(peer, error = %e, "Raft RPC stream failed");
            }
        });
    }
}

/// Writes one length-prefixed peer message.
pub(crate) async fn write_frame(
    send: &mut quinn::SendStream,
    message: &PeerMessage,
) -> anyhow::Result<()> {
    let body = message.encode()?;
    let mut frame = Vec::with_capacity(4 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
    frame.extend_from_slice(&body);
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one length-prefixed peer message, bounded by [`MAX_PEER_MESSAGE`].
pub(crate) async fn read_frame(recv: &mut quinn::RecvStream) -> anyhow::Result<PeerMessage> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_PEER_MESSAGE {
        bail!("peer message of {len} bytes exceeds the {MAX_PEER_MESSAGE}-byte limit");
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(PeerMessage::decode(&body)?)
}

/// Writes queued messages in batches: one write per batch.
async fn write_loop(mut send: quinn::SendStream, mut rx: mpsc::Receiver<PeerMessage>) {
    let mut batch = Vec::new();
    let mut out = Vec::new();
    while rx.recv_many(&mut batch, 256).await > 0 {
        out.clear();
        for message in batch.drain(..) {
            match message.encode() {
                Ok(body) => {
                    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
                    out.extend_from_slice(&body);
                }
                Err(e) => warn!(error = %e, "peer message not encodable; dropped"),
            }
        }
        if send.write_all(&out).await.is_err() {
            return;
        }
    }
}
