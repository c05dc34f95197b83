//! A Switchboard node. This file is the wiring: it builds the parts bottom-up, starts
//! them, and stops them in order; it makes no decisions of its own.
//!
//! The parts form layers; each imports only the layers below it (the table in
//! docs/architecture.md, checked by `tests/layers.py`):
//!
//! 0. [`sync`], [`clock`], [`config`], [`metrics`], [`auth`], [`secrets`] (loaded and
//!    reloaded on SIGHUP), [`tls`] (reloadable server certificates): foundations; and
//!    [`cli`], the admin commands of the binary, which speak HTTP to a node.
//! 1. [`lifecycle`] (stages, the drain and shutdown tokens), [`health`] (readiness from
//!    facts the parts report).
//! 2. [`broker`] (the sans-IO subscription table), [`hub`] (the broker behind its lock,
//!    outlets, local fan-out).
//! 3. [`history`] (who owns each group's history, the rings, the recovery decision) and
//!    [`presence`] (the registry, the batcher and its queue, the replica's read side).
//! 4. [`cluster`]: the QUIC mesh (peer table, sessions, gossip, forwarding).
//! 5. [`raft`]: the registry kept with openraft (store, steward, writer, RPCs).
//! 6. [`historian`]: this node's part in history (owner, replica, the way in for
//!    publishers and recovering clients).
//! 7. [`router`]: the cluster-wide publish path and views.
//! 8. [`ingress`]: WebSocket, RESP and HTTP listeners.
//! 9. [`admin`]: the admin API and `/metrics`, on its own runtime, over a `NodeView`.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod bounded;
pub mod broker;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod health;
pub mod historian;
pub mod history;
pub mod hub;
pub mod ingress;
pub mod lifecycle;
pub mod metrics;
pub mod names;
pub mod presence;
pub mod raft;
pub mod router;
pub mod secrets;
pub mod sync;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::admin::NodeView;
use crate::broker::BrokerLimits;
use crate::config::Config;
use crate::health::Health;
use crate::hub::Hub;
use crate::ingress::Ingress;
use crate::lifecycle::{Lifecycle, Stage};
use crate::metrics::Metrics;
use crate::presence::{PresenceQueue, SharedReplica};
use crate::raft::{Consensus, RaftSettings};
use crate::router::Router;
use crate::secrets::Secrets;
use crate::tls::ServerTls;

/// Longest a leaving node waits for its last presence changes to commit.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a leaving node waits for the history buckets it owns or replicates to be
/// handed to other nodes (a few steward looks and commits, and the keeper's grace for
/// late acknowledgements).
const HANDOVER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a draining node looks whether its clients are gone.
const DRAIN_POLL: Duration = Duration::from_millis(20);
/// Lifetime of the development-mode token printed at start.
const DEV_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// The addresses a started node actually listens on (ports resolved when 0 was asked).
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub ws: SocketAddr,
    pub resp: SocketAddr,
    pub admin: SocketAddr,
    pub peer: Option<SocketAddr>,
}

/// A running node. Dropping it does not stop it; call [`Node::shutdown`].
#[derive(Debug)]
pub struct Node {
    view: NodeView,
    addrs: Addrs,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// Connection tasks, waited for at shutdown.
    tracker: TaskTracker,
    admin: Option<std::thread::JoinHandle<()>>,
    dev_token: Option<String>,
    presence: Arc<PresenceQueue>,
    /// The TLS configurations to reload on SIGHUP.
    tls: Vec<ServerTls>,
    /// What ended connections still owe the backend (with `--backend-url`).
    outbox: Option<Arc<ingress::ws::outbox::Outbox>>,
}

impl Node {
    /// Binds every listener, builds the parts bottom-up and starts serving.
    pub async fn start(mut config: Config) -> anyhow::Result<Node> {
        config.check_exposure()?;
        if !config.ws.max_connections_given {
            info!(
                max_connections = config.ws.max_connections,
                max_resp_connections = config.resp.max_connections,
                open_files = ?config::open_file_limit(),
                "connection limits derived from the open-file limit"
            );
        } else if let Some(limit) = config::open_file_limit()
            && config.ws.max_connections + config::FD_RESERVE + config::HEALTH_SOCKETS > limit
        {
            warn!(
                max_connections = config.ws.max_connections,
                open_files = limit,
                "--max-connections is above what the open-file limit allows: at the limit, \
                 accepts fail instead of answering 1013"
            );
        }
        let secrets =
            Arc::new(Secrets::load(&config).with_context(|| {
                format!("cannot load the secrets ({})", config.data_dir.display())
            })?);
        let incarnation = secrets::incarnation(&config.data_dir)?;
        // This process's boot id: what a peer that restarted has lost (history) is told
        // by its new one.
        let boot = clock::unix_millis();
        let ws_tls = config
            .tls
            .ws
            .as_ref()
            .map(|files| ServerTls::load(files, &[b"http/1.1"]))
            .transpose()?;
        let admin_tls = config
            .tls
            .admin
            .as_ref()
            .map(|files| ServerTls::load(files, &[b"http/1.1"]))
            .transpose()?;

        let ws = TcpListener::bind(config.listen.ws)
            .await
            .with_context(|| format!("cannot bind --ws-listen {}", config.listen.ws))?;
        let resp = TcpListener::bind(config.listen.resp)
            .await
            .with_context(|| format!("cannot bind --resp-listen {}", config.listen.resp))?;
        let admin = std::net::TcpListener::bind(config.listen.admin)
            .with_context(|| format!("cannot bind --admin-listen {}", config.listen.admin))?;
        // Report the real addresses (port 0 resolved) everywhere.
        config.listen.ws = ws.local_addr()?;
        config.listen.resp = resp.local_addr()?;
        config.listen.admin = admin.local_addr()?;

        // 0-1: foundations, lifecycle, health.
        let metrics = Arc::new(Metrics::default());
        let lifecycle = Arc::new(Lifecycle::default());
        let health = Arc::new(Health::new(lifecycle.clone()));
        // 2: the hub.
        let limits = BrokerLimits {
            max_groups_per_connection: config.ws.max_groups_per_connection,
            ..BrokerLimits::default()
        };
        let hub = Arc::new(Hub::new(limits, metrics.clone()));
        // 3: presence.
        let queue = Arc::new(PresenceQueue::new(
            config.node_id,
            config.cluster.presence_shards,
        ));
        let replica = Arc::new(SharedReplica::new(config.presence_events));
        // 4: the mesh, which hands Raft's streams to an inbox.
        let (rpc_inbox, rpc_outbox) = cluster::rpc::inbox();
        let (history_inbox, history_outbox) = tokio::sync::mpsc::channel(historian::INBOX);
        let cluster = cluster::Cluster::bind(
            &config,
            config.listen.admin.to_string(),
            (incarnation, boot),
            cluster::MeshDeps {
                history: history_inbox,
                secrets: secrets.clone(),
                hub: hub.clone(),
                replica: replica.clone(),
                health: health.clone(),
                lifecycle: lifecycle.clone(),
                rpcs: rpc_inbox,
            },
        )?;
        if let Some(peer) = cluster.local_addr() {
            config.listen.peer = peer;
        }
        let config = Arc::new(config);
        // 5: Raft, over the mesh.
        let raft_settings = RaftSettings {
            node_id: config.node_id,
            group: raft::CONTROL,
            data_dir: config.data_dir.clone(),
            node_timeout: config.cluster.node_timeout,
            max_voters: config.cluster.max_voters,
            may_bootstrap: config.cluster.seeds.is_empty(),
            advertised: cluster.advertised_addr(),
            incarnation,
            boot,
            presence: config.cluster.presence_shards == 0,
        };
        let (consensus, known_members) = Consensus::start(
            raft_settings.clone(),
            cluster.clone(),
            replica.clone(),
            queue.clone(),
            lifecycle.clone(),
        )
        .await?;
        consensus.spawn(health.clone());
        // Raft RPCs from peers, each served by the group it names.
        let groups = Arc::new(raft::Groups::default());
        groups.insert(consensus.clone());
        tokio::spawn(raft::network::serve(groups.clone(), rpc_outbox));
        // 5b: presence shards, when presence is sharded.
        let shards = match config.cluster.presence_shards {
            0 => None,
            count => Some(
                raft::Shards::start(raft::ShardsDeps {
                    count,
                    settings: raft_settings,
                    transport: cluster.clone(),
                    groups,
                    control: consensus.clone(),
                    queue: queue.clone(),
                    lifecycle: lifecycle.clone(),
                    presence_events: config.presence_events,
                })
                .await?,
            ),
        };
        let presence = raft::Presence {
            control: consensus.clone(),
            shards,
        };
        // 6: the historian.
        let historian = historian::Historian::start(
            historian::HistorianDeps {
                me: config.node_id,
                boot,
                rules: config.history.rules.clone(),
                max_bytes: config.history.max_bytes,
                replica: replica.clone(),
                cluster: cluster.clone(),
                hub: hub.clone(),
                shutdown: lifecycle.shutdown_token().clone(),
            },
            history_outbox,
        );
        // 7: the router.
        let router = Arc::new(Router::new(
            config.node_id,
            hub.clone(),
            cluster.clone(),
            historian,
            metrics.clone(),
            config.cluster.node_timeout,
        ));
        // 1 (used by 8): the backend bridge, when there is one.
        let backend = match &config.backend {
            Some(settings) => Some(Arc::new(
                backend::Backend::new(settings.clone(), secrets.clone(), config.listen.ws)
                    .map_err(|e| anyhow::anyhow!(e))?,
            )),
            None => None,
        };
        let outbox = backend
            .as_ref()
            .map(|b| Arc::new(ingress::ws::outbox::Outbox::new(b.clone(), queue.clone())));
        // 8: ingress.
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();
        let ingress = Arc::new(Ingress {
            node: config.node_id,
            settings: config.ws.clone(),
            metrics: metrics.clone(),
            secrets: secrets.clone(),
            tls: ws_tls.clone(),
            node_ops: std::sync::Mutex::new(ingress::ws::state::ops::NodeOps::new(
                config.ws.ops.node_per_sec,
                tokio::time::Instant::now(),
            )),
            cool_down: Default::default(),
            follows: Default::default(),
            caps: std::sync::Mutex::new(ingress::ws::caps::Caps::new(
                config.ws.max_connections_per_ip,
                config.ws.max_connections_per_user,
            )),
            lifecycle: lifecycle.clone(),
            health: health.clone(),
            hub: hub.clone(),
            presence: queue.clone(),
            replica: replica.clone(),
            presence_reads: presence.clone(),
            router: router.clone(),
            ids: ingress::ws::ConnIds::new(config.node_id, boot),
            listen: config.listen.ws,
            backend: backend.clone(),
            outbox: outbox.clone(),
        });
        let resp_env = Arc::new(ingress::resp::Shim::new(
            &config,
            metrics.clone(),
            secrets.clone(),
        ));
        // 9: admin.
        let view = NodeView {
            config: config.clone(),
            metrics,
            secrets: secrets.clone(),
            lifecycle: lifecycle.clone(),
            health,
            hub,
            replica,
            router: router.clone(),
            cluster: cluster.clone(),
            consensus,
            presence,
            backend: backend.clone(),
        };
        let admin = admin::spawn(admin, view.clone(), admin_tls.clone())?;

        tokio::spawn(leave_after_drain(view.clone(), outbox.clone()));
        tokio::spawn(ingress::ws::enforce_revocations(ingress.clone()));
        if let Some(backend) = &backend {
            // The disconnect calls gone nodes owe, made where their registry is led.
            tokio::spawn(ingress::ws::owed::run(
                ingress.clone(),
                backend.clone(),
                cluster.clone(),
                boot,
            ));
            tokio::spawn(ingress::ws::owed::close_when_cut_off(
                ingress.clone(),
                config.cluster.node_timeout,
            ));
        }
        tokio::spawn(ingress::ws::serve(
            ws,
            ingress,
            tracker.clone(),
            stop_accepting.clone(),
        ));
        tokio::spawn(ingress::resp::serve(
            resp,
            resp_env,
            router,
            tracker.clone(),
            stop_accepting.clone(),
        ));
        cluster.start(known_members);
        lifecycle.advance(Stage::Ready);

        let addrs = Addrs {
            ws: config.listen.ws,
            resp: config.listen.resp,
            admin: config.listen.admin,
            peer: cluster.local_addr(),
        };
        ingress::ws::announce(addrs.ws, &config.ws.paths);
        info!(addr = %addrs.resp, "RESP ingest shim listening");
        info!(addr = %addrs.admin, "admin API listening (/metrics, /healthz, /readyz)");
        if let Some(peer) = addrs.peer {
            info!(addr = %peer, seeds = ?config.cluster.seeds, "peer endpoint listening (QUIC)");
        }
        if let Some(backend) = &backend {
            let endpoint = backend.endpoint();
            info!(backend = %format!("http://{}{}", endpoint.authority, endpoint.path), "backend bridge: connects, client frames and disconnects go to the project's consumer");
        }
        let dev_token = match &secrets.dev_jwt_secret {
            Some(secret) => Some(auth::mint_hs256(
                secret.as_bytes(),
                "1",
                DEV_TOKEN_TTL_SECS,
                &[],
            )?),
            None => None,
        };
        Ok(Node {
            view,
            addrs,
            stop_accepting,
            tracker,
            admin: Some(admin),
            dev_token,
            presence: queue,
            tls: ws_tls.into_iter().chain(admin_tls).collect(),
            outbox,
        })
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.view.config
    }

    /// The Raft node.
    pub fn consensus(&self) -> &Arc<Consensus> {
        &self.view.consensus
    }

    /// This node's replica of what the cluster agreed on.
    pub fn replica(&self) -> &Arc<SharedReplica> {
        &self.view.replica
    }

    /// Readiness, as `/readyz` answers it.
    pub fn health(&self) -> &Arc<Health> {
        &self.view.health
    }

    /// The queue of this node's presence changes (benchmarks feed it directly).
    pub fn presence_queue(&self) -> &Arc<PresenceQueue> {
        &self.presence
    }

    /// In development mode, a token for user 1 signed with the generated secret.
    pub fn dev_token(&self) -> Option<&str> {
        self.dev_token.as_deref()
    }

    /// The WebSocket URL of the first configured path.
    pub fn ws_url(&self) -> String {
        let path = self
            .view
            .config
            .ws
            .paths
            .first()
            .map(String::as_str)
            .unwrap_or("/");
        let scheme = if self.view.config.tls.ws.is_some() {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{}", self.addrs.ws, path)
    }

    /// SIGHUP: re-reads every secret file and certificate. What fails to load keeps its
    /// old value (and is logged); connections are not dropped.
    pub fn reload(&self) {
        let mut failed = 0;
        for e in self.view.secrets.reload(&self.view.config) {
            warn!(error = %e, "reload: kept the previous value");
            failed += 1;
        }
        for tls in &self.tls {
            if let Err(e) = tls.reload() {
                warn!(error = %e, "reload: kept the previous certificate");
                failed += 1;
            }
        }
        info!(failed, "secrets and certificates reloaded");
    }

    /// Drains (clients closed with 1012, presence removed), stops accepting, waits for
    /// connection tasks within the grace period, commits the last presence changes,
    /// leaves the mesh, then stops Raft and the admin server.
    pub async fn shutdown(mut self) {
        let view = &self.view;
        view.consensus.drain();
        view.lifecycle.advance(Stage::Stopping);
        self.stop_accepting.cancel();
        self.tracker.close();
        let grace = view.config.shutdown_grace;
        let deadline = tokio::time::Instant::now() + grace;
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tracker.len(),
                "shutdown grace period over; dropping the remaining connections"
            );
        }
        if let Some(outbox) = &self.outbox {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if !outbox.wait(left).await {
                warn!(
                    pending = outbox.pending(),
                    "shutdown grace period over with disconnect calls to the backend not made"
                );
            }
        }
        leave(view).await;
        view.lifecycle.shut_down();
        let _ = view.consensus.raft.shutdown().await;
        if let Some(admin) = self.admin.take() {
            let _ = tokio::task::spawn_blocking(move || admin.join()).await;
        }
        info!("node stopped");
    }
}

/// Tells the historian and the peers that this node drains, so that the Raft leader
/// moves the history buckets it owns or replicates to other nodes while it is still
/// there to hand them over (publishers wait instead of failing).
async fn announce_leaving(view: &NodeView) {
    view.router.historian().leaving().await;
    view.cluster.announce_leaving();
}

/// Waits (within [`HANDOVER_TIMEOUT`]) until no history bucket names this node and the
/// messages it took as owner are settled, unless no other node is there to take them.
async fn hand_over(view: &NodeView) {
    announce_leaving(view).await;
    let me = view.config.node_id;
    let deadline = tokio::time::Instant::now() + HANDOVER_TIMEOUT;
    loop {
        let held = view
            .replica
            .read()
            .assignments
            .iter()
            .filter(|(_, a)| a.owner == me || a.replica == Some(me))
            .count();
        let pending = view.router.historian().metrics.pending.get();
        let others = view.cluster.members().iter().any(|m| m.up && !m.leaving);
        // Without a Raft leader no bucket can be reassigned: waiting would not help.
        let can_move = view.consensus.has_leader();
        if !others || !can_move || (held == 0 && pending == 0) {
            if held > 0 && !others {
                info!(buckets = held, "no other node to hand history over to");
            } else if held > 0 {
                warn!(
                    buckets = held,
                    "no Raft leader to hand history over through"
                );
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            warn!(
                buckets = held,
                pending, "leaving before every history bucket was handed over"
            );
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}

/// Hands history over, commits this node's last presence changes (its clients gone, its
/// presence purged), then leaves the mesh: peers see the connections close and mark it
/// down at once.
async fn leave(view: &NodeView) {
    hand_over(view).await;
    let consensus = &view.consensus;
    let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
    // At least one flush: it waits for a flush the writer has in flight (which took the
    // last ops off the queue), then commits what is left.
    loop {
        let flushed = match &view.presence.shards {
            Some(shards) => tokio::time::timeout_at(deadline, shards.flush_all())
                .await
                .map(|_| ()),
            None => tokio::time::timeout_at(deadline, consensus.flush_presence())
                .await
                .map(|_| ()),
        };
        if flushed.is_err() || consensus.queue_is_empty() {
            break;
        }
    }
    if !consensus.queue_is_empty() {
        warn!(
            "leaving with presence changes not committed; the leader purges them after --node-timeout-ms"
        );
    }
    view.cluster.close();
}

/// `switchboard drain` without a stop: once the clients are gone and their disconnect
/// calls to the backend made (or the grace period is over), the node commits its
/// presence removal and leaves the mesh. (Calls it could not make stay owed in the
/// registry: the others make them once it is gone.)
async fn leave_after_drain(view: NodeView, outbox: Option<Arc<ingress::ws::outbox::Outbox>>) {
    tokio::select! {
        _ = view.lifecycle.shutdown_token().cancelled() => return,
        _ = view.lifecycle.drain_token().cancelled() => {}
    }
    announce_leaving(&view).await;
    let deadline = tokio::time::Instant::now() + view.config.shutdown_grace;
    let gone = async {
        while view.hub.connection_count() > 0 {
            tokio::time::sleep(DRAIN_POLL).await;
        }
    };
    let _ = tokio::time::timeout_at(deadline, gone).await;
    if let Some(outbox) = &outbox {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if !outbox.wait(left).await {
            warn!(
                pending = outbox.pending(),
                "leaving with disconnect calls to the backend not made: the others make them"
            );
        }
    }
    leave(&view).await;
}
