//! A Switchboard node: wiring only. Build the parts, start them, wait for shutdown.
//!
//! - [`config`]: flags, environment and file, resolved.
//! - [`auth`]: JWT verification.
//! - [`broker`]: the sans-IO core (groups, subscriptions, fan-out decisions).
//! - [`presence`]: the presence registry state machine and its batcher.
//! - [`raft`]: the registry kept consistent with Raft (openraft), log on disk.
//! - [`cluster`]: the QUIC peer mesh: gossip of interest, forwarding, Raft transport.
//! - [`shared`]: the state the parts share, and the publish path.
//! - [`ingress`]: WebSocket, RESP and HTTP listeners.
//! - [`channels`]: what Django's channels_redis sends, mapped onto groups.
//! - [`admin`]: the admin API and `/metrics`, on its own runtime.
//! - [`cli`]: the admin commands of the `switchboard` binary.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod broker;
pub mod channels;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod ingress;
pub mod metrics;
pub mod presence;
pub mod raft;
pub mod shared;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::auth::Verifier;
use crate::config::{Config, JwtKey};
use crate::shared::{Lifecycle, Shared, read};

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
    shared: Arc<Shared>,
    addrs: Addrs,
    /// Stops the accept loops.
    stop_accepting: CancellationToken,
    /// Connection tasks, waited for at shutdown.
    tracker: TaskTracker,
    admin: Option<std::thread::JoinHandle<()>>,
    dev_token: Option<String>,
}

impl Node {
    /// Binds every listener and starts serving.
    pub async fn start(mut config: Config) -> anyhow::Result<Node> {
        config.check_exposure()?;
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("cannot create the data dir {}", config.data_dir.display()))?;
        let (verifier, dev_secret) = verifier(&config)?;

        let ws = TcpListener::bind(config.ws_listen)
            .await
            .with_context(|| format!("cannot bind --ws-listen {}", config.ws_listen))?;
        let resp = TcpListener::bind(config.resp_listen)
            .await
            .with_context(|| format!("cannot bind --resp-listen {}", config.resp_listen))?;
        let admin = std::net::TcpListener::bind(config.admin_listen)
            .with_context(|| format!("cannot bind --admin-listen {}", config.admin_listen))?;
        let addrs = Addrs {
            ws: ws.local_addr()?,
            resp: resp.local_addr()?,
            admin: admin.local_addr()?,
            peer: None,
        };
        // Report the real addresses (port 0 resolved) everywhere.
        config.ws_listen = addrs.ws;
        config.resp_listen = addrs.resp;
        config.admin_listen = addrs.admin;

        let cluster = cluster::Cluster::bind(&config, addrs.admin.to_string())?;
        if let Some(peer) = cluster.local_addr() {
            config.peer_listen = peer;
        }
        let addrs = Addrs {
            peer: cluster.local_addr(),
            ..addrs
        };

        let dev_token = match &dev_secret {
            Some(secret) => Some(auth::mint_hs256(secret.as_bytes(), "1", 24 * 3600, &[])?),
            None => None,
        };
        let ws_paths = config.ws_paths.clone();
        let shared = Shared::new(config, verifier);
        let tracker = TaskTracker::new();
        let stop_accepting = CancellationToken::new();

        let _ = shared.cluster.set(cluster.clone());
        let consensus = raft::Consensus::start(&shared, &cluster).await?;
        let _ = shared.consensus.set(consensus.clone());
        let admin = admin::spawn(admin, shared.clone())?;
        consensus.spawn_loops(shared.clone());
        tokio::spawn(leave_after_drain(shared.clone()));
        tokio::spawn(ingress::ws::serve(
            ws,
            shared.clone(),
            tracker.clone(),
            stop_accepting.clone(),
        ));
        tokio::spawn(ingress::resp::serve(
            resp,
            shared.clone(),
            tracker.clone(),
            stop_accepting.clone(),
        ));
        cluster.start(shared.clone());
        shared.advance(Lifecycle::Ready);
        ingress::ws::announce(addrs.ws, &ws_paths);
        info!(addr = %addrs.resp, "RESP ingest shim listening");
        info!(addr = %addrs.admin, "admin API listening (/metrics, /healthz, /readyz)");
        if let Some(peer) = cluster.local_addr() {
            info!(addr = %peer, seeds = ?shared.config.seeds, "peer endpoint listening (QUIC)");
        }
        Ok(Node {
            shared,
            addrs,
            stop_accepting,
            tracker,
            admin: Some(admin),
            dev_token,
        })
    }

    pub fn addrs(&self) -> Addrs {
        self.addrs
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// In development mode, a token for user 1 signed with the generated secret.
    pub fn dev_token(&self) -> Option<&str> {
        self.dev_token.as_deref()
    }

    /// The WebSocket URL of the first configured path.
    pub fn ws_url(&self) -> String {
        let path = self
            .shared
            .config
            .ws_paths
            .first()
            .map(String::as_str)
            .unwrap_or("/");
        format!("ws://{}{}", self.addrs.ws, path)
    }

    /// Drains (clients closed with 1012, presence removed), stops accepting, waits for
    /// connection tasks within the grace period, then stops the admin server.
    pub async fn shutdown(mut self) {
        admin::drain(&self.shared);
        self.shared.advance(Lifecycle::Stopping);
        self.stop_accepting.cancel();
        self.tracker.close();
        let grace = self.shared.config.shutdown_grace;
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                remaining = self.tracker.len(),
                "shutdown grace period over; dropping the remaining connections"
            );
        }
        leave(&self.shared).await;
        self.shared.shutdown.cancel();
        if let Some(consensus) = self.shared.consensus.get() {
            let _ = consensus.raft.shutdown().await;
        }
        if let Some(admin) = self.admin.take() {
            let _ = tokio::task::spawn_blocking(move || admin.join()).await;
        }
        info!("node stopped");
    }
}

/// The token verifier, and in development mode the generated secret.
fn verifier(config: &Config) -> anyhow::Result<(Verifier, Option<String>)> {
    let mut verifier = match &config.jwt {
        JwtKey::Secret(secret) => (Verifier::hmac(secret.as_bytes())?, None),
        JwtKey::PublicKey(path) => (Verifier::public_key_file(path)?, None),
        JwtKey::Development => {
            let secret = dev_secret(&config.data_dir)?;
            (Verifier::hmac(secret.as_bytes())?, Some(secret))
        }
    };
    if !config.jwt_audience.is_empty() {
        verifier.0.require_audience(&config.jwt_audience);
    }
    if !config.jwt_issuer.is_empty() {
        verifier.0.require_issuer(&config.jwt_issuer);
    }
    Ok(verifier)
}

/// The development-mode secret: generated once, kept in the data dir.
fn dev_secret(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("dev-jwt-secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if !existing.is_empty() {
            return Ok(existing.to_owned());
        }
    }
    // The OS's CSPRNG, read directly: one read at first start does not need a crate.
    let mut bytes = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)
        .context("cannot read /dev/urandom for the development secret")?;
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(&path, &secret).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(secret)
}

/// Longest a leaving node waits for its last presence changes to commit.
const LEAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Commits this node's last presence changes (its clients gone, its presence purged),
/// then leaves the mesh: peers see the connections close and mark it down at once.
async fn leave(shared: &Arc<Shared>) {
    if let Some(consensus) = shared.consensus.get() {
        let deadline = tokio::time::Instant::now() + LEAVE_TIMEOUT;
        while !shared.presence_queue_is_empty() && tokio::time::Instant::now() < deadline {
            let flush = consensus.flush_presence(shared);
            if tokio::time::timeout_at(deadline, flush).await.is_err() {
                break;
            }
        }
        if !shared.presence_queue_is_empty() {
            warn!(
                "leaving with presence changes not committed; the leader purges them after --node-timeout-ms"
            );
        }
    }
    if let Some(cluster) = shared.cluster.get() {
        cluster.close();
    }
}

/// `switchboard drain` without a stop: once the clients are gone (or the grace period
/// is over), the node commits its presence removal and leaves the mesh.
async fn leave_after_drain(shared: Arc<Shared>) {
    tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        _ = shared.drain.cancelled() => {}
    }
    let grace = shared.config.shutdown_grace;
    let gone = async {
        while read(&shared.broker).connection_count() > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    let _ = tokio::time::timeout(grace, gone).await;
    leave(&shared).await;
}
