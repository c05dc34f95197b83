//! The peer mesh: nodes connect over QUIC, prove the cluster secret, tell each other
//! which groups they have subscribers for, and forward published messages to the nodes
//! that want them. It also carries the Raft layer's RPC streams, without knowing Raft.
//!
//! Parts, bottom-up:
//! - [`tls`]: the QUIC endpoint (TLS 1.3; self-signed, or the cluster CA's).
//! - [`auth`]: the cluster-secret proof bound to each TLS session.
//! - [`frame`]: length-prefixed peer messages on a stream, with a size limit per reader.
//! - [`peers`]: the peer table, sans-IO: duplicate sessions, liveness, majority, dialing.
//! - [`pending`]: questions out to peers (lookups, listings, acts) and hints, sans-IO.
//! - [`session`]: the handshake (proof, then hello) and the QUIC close reasons.
//! - [`rpc`]: the inbox through which Raft RPC streams reach the Raft layer.
//! - [`routes`]: who holds each group's interest (its bucket's owner and replica), the
//!   routes other nodes cache from them and the leases holders keep, sans-IO.
//! - [`gossip`]: interest deltas and full syncs, each to the holders of its groups.
//! - [`mesh`]: [`Cluster`], the driver: endpoint, sessions, heartbeats.
//! - [`forward`]: the publish path: targets, lookups, forwards, cluster-wide listings.
//! - [`acts`]: acting on connections other nodes hold (subscribe, send, close).
//!
//! Depends on the hub (local delivery, local interest), the presence replica (is a peer
//! removed?), health (majority) and the lifecycle; nothing above.

pub mod acts;
pub mod auth;
pub mod dial;
pub mod dispatch;
pub mod forward;
pub mod frame;
pub mod gossip;
pub mod mesh;
pub mod peers;
pub mod pending;
pub mod refusals;
pub mod routes;
pub mod rpc;
pub mod session;
pub mod tls;

pub use acts::{ACT_TIMEOUT, ActError};
pub use mesh::{Cluster, ClusterMetrics, HistoryInbox, Link, MeshDeps};
pub use peers::MemberView;
pub use routes::Targets;
pub use rpc::{RpcInbox, RpcOutbox, RpcStream};
