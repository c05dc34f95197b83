//! The node's client-facing listeners: WebSocket clients ([`ws`]), Redis-protocol
//! publishers ([`resp`]), and the small HTTP layer both the WebSocket port and the admin
//! API use ([`http`]).
//!
//! [`Ingress`] is what the WebSocket side needs of the layers below; the RESP side needs
//! only its [`resp::Shim`] and the router's `Publish`.

pub mod accept;
pub mod http;
pub mod resp;
pub mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use crate::backend::Backend;
use crate::config::WsSettings;
use crate::health::Health;
use crate::hub::Hub;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::presence::{PresenceQueue, SharedReplica};
use crate::router::Router;
use crate::secrets::Secrets;
use crate::tls::ServerTls;

/// What a WebSocket connection needs of the node.
#[derive(Debug)]
pub struct Ingress {
    /// This node's id.
    pub node: u64,
    pub settings: WsSettings,
    pub metrics: Arc<Metrics>,
    pub secrets: Arc<Secrets>,
    /// `--tls-cert`: the port serves wss:// (and HTTPS health checks).
    pub tls: Option<ServerTls>,
    pub caps: Mutex<ws::caps::Caps>,
    /// The op budget all WebSocket connections share (`--node-ops-per-sec`).
    pub node_ops: Mutex<ws::state::ops::NodeOps>,
    /// Users closed for their ops, refused until their cool-down ends.
    pub cool_down: Mutex<ws::state::ops::CoolDown>,
    /// Users the connections follow (`presence_subscribe`), within the node's bound.
    pub follows: Arc<ws::follow::NodeFollows>,
    pub lifecycle: Arc<Lifecycle>,
    pub health: Arc<Health>,
    pub hub: Arc<Hub>,
    pub presence: Arc<PresenceQueue>,
    pub replica: Arc<SharedReplica>,
    /// Presence reads (the control replica, or the user's shard).
    pub presence_reads: crate::raft::Presence,
    /// History (recovery) goes through the router.
    pub router: Arc<Router>,
    pub ids: ws::ConnIds,
    /// The WebSocket port's address (a connection's scope names it).
    pub listen: SocketAddr,
    /// The backend bridge (`--backend-url`), and what ended connections still owe it.
    pub backend: Option<Arc<Backend>>,
    pub outbox: Option<Arc<ws::outbox::Outbox>>,
}
