//! Raft RPCs: what travels ([`Rpc`], [`Reply`]), the [`Transport`] that carries it, and
//! openraft's network traits over that transport.
//!
//! The transport moves encoded bytes, so every test of the Raft layer exercises the codec
//! too. In the node it is the QUIC mesh ([`Cluster`]): each call opens a bidirectional
//! stream on the authenticated connection to the target, sends one `PeerMessage::Raft`
//! and reads one back. Streams are independent, so a slow snapshot never holds up a
//! heartbeat or a vote, and nothing reaches Raft from a peer that has not proved the
//! cluster secret. Tests use an in-memory router instead (see `tests.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use openraft::BasicNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize};
use switchboard_proto::peer::{ConnectionRecord, MAX_PEER_MESSAGE, NodeId, PeerMessage};
use tracing::debug;

use super::codec::{CodecError, decode_rpc, encode};
use super::steward::PeerState;
use super::{Command, Groups, TypeConfig, WriteError};
use crate::cluster::frame::{read_frame, write_frame};
use crate::cluster::{Cluster, RpcOutbox, RpcStream};
use crate::presence::connection::ConnectionId;
use crate::presence::events::{Event, EventId, Kind, Origin, Reason};

/// A Raft group of this process. Group [`CONTROL`] is the one every member is in
/// (membership, removals, incarnations, history assignments, idempotency keys, and today
/// presence); further groups are to hold presence shards (docs/cluster.md, "The design
/// that removes the ceiling").
pub type GroupId = u16;
/// The group every member is in.
pub const CONTROL: GroupId = 0;

/// What travels: an RPC (or its reply) for one group.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope<T> {
    group: GroupId,
    body: T,
}

/// A request from one node's Raft layer to another's.
#[derive(Debug, Serialize, Deserialize)]
pub enum Rpc {
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    InstallSnapshot(InstallSnapshotRequest<TypeConfig>),
    /// A follower's write, for the leader to commit.
    Write(Command),
    /// The leader's read index, for a linearizable read on a follower.
    ReadIndex,
    /// `switchboard remove ID` asked on a follower.
    Remove(NodeId),
    /// A user's connections, from a member of the user's presence shard (after a read
    /// index when `linearizable`), for a node that does not host the shard.
    Presence {
        user: String,
        linearizable: bool,
    },
    /// How many connections of `node` the shard holds once the member applied log index
    /// `applied` (the asker's last write): whether it must resync.
    Count {
        node: NodeId,
        applied: u64,
    },
    /// Up to `max` presence events from `from` (of `user` only, when given), waiting up
    /// to `wait_ms` for one: a node that does not host a shard follows it this way.
    Events {
        from: Origin,
        user: Option<String>,
        max: u32,
        wait_ms: u32,
    },
}

/// The answer to an [`Rpc`] of the same name.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(
        Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>,
    ),
    Write(Result<u64, WriteError>),
    ReadIndex(Result<u64, WriteError>),
    Remove(Result<(), WriteError>),
    /// The node asked hosts no such group (not, or no longer, a member of it).
    NotHere(GroupId),
    Presence(Result<Vec<ConnectionRecord>, WriteError>),
    Count(Result<u64, WriteError>),
    Events(Result<Events, WriteError>),
}

/// A shard's events as a member answers [`Rpc::Events`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Events {
    /// The events after the position asked (none: nothing new within the wait), and the
    /// position the asker has now seen up to (past events it filtered out).
    After(Vec<WireEvent>, EventId),
    /// The position asked is older than what the member keeps: its current state (the
    /// user's connections, or every connection) and the position it stands at.
    Reset(EventId, Vec<ConnectionRecord>),
}

/// Why a call failed before any reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No live session to the target.
    #[error("node {0} is not connected")]
    NotConnected(NodeId),
    /// The target did not answer in time.
    #[error("no reply from node {0} within {1:?}")]
    Timeout(NodeId, Duration),
    /// The stream failed, or the reply was not one.
    #[error("call to node {node} failed: {reason}")]
    Failed { node: NodeId, reason: String },
    /// The request or the reply could not be encoded or decoded.
    #[error("call to node {node}: {source}")]
    Codec { node: NodeId, source: CodecError },
    /// The target hosts no such group.
    #[error("node {0} hosts no Raft group {1}")]
    NotHere(NodeId, GroupId),
}

/// A boxed future, so that [`Transport`] is object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What carries Raft between nodes, and what the Raft layer knows of the other nodes.
pub trait Transport: Send + Sync + std::fmt::Debug + 'static {
    /// Sends the encoded `rpc` to `target` and returns its encoded reply, within
    /// `timeout`.
    fn call(
        &self,
        target: NodeId,
        rpc: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, CallError>>;

    /// Every peer as the failure detector sees it.
    fn peers(&self) -> Vec<PeerState>;
}

/// Sends `rpc` for `group` to `target` over `transport` and decodes the reply; a target
/// that hosts no such group is unreachable for it.
pub async fn call(
    transport: &dyn Transport,
    target: NodeId,
    group: GroupId,
    rpc: &Rpc,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let codec = |source| CallError::Codec {
        node: target,
        source,
    };
    let envelope = Envelope { group, body: rpc };
    let body = Bytes::from(encode(&envelope).map_err(codec)?);
    let reply = transport.call(target, body, timeout).await?;
    match decode_rpc(&reply).map_err(codec)? {
        Reply::NotHere(group) => Err(CallError::NotHere(target, group)),
        reply => Ok(reply),
    }
}

/// Answers encoded RPC bytes from `peer`: decode, serve in the group named, encode.
pub async fn answer(groups: &Groups, peer: NodeId, body: &[u8]) -> Result<Bytes, CodecError> {
    let Envelope { group, body: rpc } = decode_rpc::<Envelope<Rpc>>(body)?;
    let reply = match groups.get(group) {
        Some(consensus) => consensus.serve(peer, rpc).await,
        None => Reply::NotHere(group),
    };
    Ok(Bytes::from(encode(&reply)?))
}

/// A presence event as it travels between nodes (the JSON form leaves out what is
/// absent, which a binary encoding cannot).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEvent {
    pub id: EventId,
    pub kind: Kind,
    pub user: String,
    pub node: NodeId,
    pub connection: String,
    pub at: u64,
    pub reason: Option<Reason>,
}

impl From<Event> for WireEvent {
    fn from(e: Event) -> WireEvent {
        WireEvent {
            id: e.id,
            kind: e.kind,
            user: e.user.to_string(),
            node: e.node,
            connection: e.connection.to_string(),
            at: e.at,
            reason: e.reason,
        }
    }
}

impl From<WireEvent> for Event {
    fn from(e: WireEvent) -> Event {
        Event {
            id: e.id,
            kind: e.kind,
            user: e.user.into(),
            node: e.node,
            connection: ConnectionId::new(e.node, &e.connection),
            at: e.at,
            reason: e.reason,
        }
    }
}

// ----- the mesh as the transport -----

impl Transport for Cluster {
    fn call(
        &self,
        target: NodeId,
        rpc: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, CallError>> {
        Box::pin(async move {
            let conn = self
                .connection(target)
                .ok_or(CallError::NotConnected(target))?;
            let failed = |e: &dyn std::fmt::Display| CallError::Failed {
                node: target,
                reason: e.to_string(),
            };
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| failed(&e))?;
                write_frame(&mut send, &PeerMessage::Raft { body: rpc })
                    .await
                    .map_err(|e| failed(&e))?;
                send.finish().map_err(|e| failed(&e))?;
                match read_frame(&mut recv, MAX_PEER_MESSAGE).await {
                    Ok(PeerMessage::Raft { body }) => Ok(body),
                    Ok(other) => Err(failed(&format!("unexpected reply {}", other.kind()))),
                    Err(e) => Err(failed(&e)),
                }
            };
            match tokio::time::timeout(timeout, exchange).await {
                Ok(result) => result,
                Err(_) => Err(CallError::Timeout(target, timeout)),
            }
        })
    }

    fn peers(&self) -> Vec<PeerState> {
        self.members()
            .into_iter()
            .map(|m| PeerState {
                id: m.id,
                addr: m.peer,
                up: m.up,
                last_seen: Some(Duration::from_millis(m.last_seen_ms)),
                incarnation: Some(m.incarnation),
                boot: Some(m.boot),
                leaving: m.leaving,
            })
            .collect()
    }
}

/// Serves the RPC streams the mesh hands over, one task per stream, each in the group it
/// names, until the mesh stops handing them.
pub async fn serve(groups: Arc<Groups>, mut streams: RpcOutbox) {
    while let Some(stream) = streams.recv().await {
        let groups = groups.clone();
        tokio::spawn(async move {
            let peer = stream.peer;
            if let Err(e) = serve_stream(&groups, stream).await {
                debug!(peer, error = %e, "Raft RPC stream failed");
            }
        });
    }
}

async fn serve_stream(groups: &Groups, stream: RpcStream) -> anyhow::Result<()> {
    let RpcStream {
        peer,
        mut send,
        mut recv,
    } = stream;
    let body = match read_frame(&mut recv, MAX_PEER_MESSAGE).await? {
        PeerMessage::Raft { body } => body,
        other => anyhow::bail!("peer {peer} opened a stream with {}", other.kind()),
    };
    let reply = answer(groups, peer, &body).await?;
    write_frame(&mut send, &PeerMessage::Raft { body: reply }).await?;
    send.finish()?;
    Ok(())
}

// ----- openraft's network traits -----

/// Makes a [`Peer`] client for each target, for one group; they share the transport.
#[derive(Debug, Clone)]
pub struct Network {
    transport: Arc<dyn Transport>,
    group: GroupId,
}

impl Network {
    pub fn new(transport: Arc<dyn Transport>, group: GroupId) -> Network {
        Network { transport, group }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer {
        Peer {
            target,
            group: self.group,
            transport: self.transport.clone(),
        }
    }
}

/// Raft's client for one target node, in one group.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    group: GroupId,
    transport: Arc<dyn Transport>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn exchange(&self, rpc: Rpc, option: &RPCOption) -> Result<Reply, CallError> {
        call(
            &*self.transport,
            self.target,
            self.group,
            &rpc,
            option.hard_ttl(),
        )
        .await
    }

    /// The result Raft wants from an exchange: the remote's own answer (`pick` takes it
    /// out of the reply of the right kind), a remote error, or a transport error.
    #[allow(clippy::result_large_err)] // the type openraft's `RaftNetwork` methods return
    fn answer<T, E: std::error::Error>(
        &self,
        exchanged: Result<Reply, CallError>,
        pick: impl FnOnce(Reply) -> Option<Result<T, RaftError<NodeId, E>>>,
    ) -> RpcResult<T, E> {
        match exchanged.map(pick) {
            Ok(Some(answer)) => {
                answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
            }
            Ok(None) => Err(RPCError::Network(NetworkError::new(
                &std::io::Error::other("reply of the wrong kind"),
            ))),
            Err(
                e @ (CallError::NotConnected(_) | CallError::Timeout(..) | CallError::NotHere(..)),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        let exchanged = self.exchange(Rpc::AppendEntries(rpc), &option).await;
        self.answer(exchanged, |reply| match reply {
            Reply::AppendEntries(answer) => Some(answer),
            _ => None,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        let exchanged = self.exchange(Rpc::InstallSnapshot(rpc), &option).await;
        self.answer(exchanged, |reply| match reply {
            Reply::InstallSnapshot(answer) => Some(answer),
            _ => None,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> RpcResult<VoteResponse<NodeId>> {
        let exchanged = self.exchange(Rpc::Vote(rpc), &option).await;
        self.answer(exchanged, |reply| match reply {
            Reply::Vote(answer) => Some(answer),
            _ => None,
        })
    }
}
