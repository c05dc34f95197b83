//! Raft RPCs over the peer mesh. Each call opens a bidirectional QUIC stream on the
//! authenticated connection to the target, sends one [`PeerMessage::Raft`] holding the
//! bincode-encoded [`Rpc`], and reads one back holding the [`Reply`]. Streams are
//! independent, so a slow snapshot never holds up a heartbeat or a vote, and nothing
//! reaches Raft from a peer that has not proved the cluster secret.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
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
use switchboard_proto::peer::{NodeId, PeerMessage};

use super::{Command, TypeConfig, WriteError, decode, encode};
use crate::cluster::Cluster;

/// A request from one node's Raft to another's.
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
}

/// Why a call failed before any reply.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("node {0} is not connected")]
    NotConnected(NodeId),
    #[error("no reply from node {0} within {1:?}")]
    Timeout(NodeId, Duration),
    #[error("call to node {node} failed: {source:#}")]
    Failed { node: NodeId, source: anyhow::Error },
}

/// Sends `rpc` to `target` and waits for its reply, at most `timeout`.
pub async fn call(
    cluster: &Cluster,
    target: NodeId,
    rpc: &Rpc,
    timeout: Duration,
) -> Result<Reply, CallError> {
    let conn = cluster
        .connection(target)
        .ok_or(CallError::NotConnected(target))?;
    let body = encode(rpc)
        .map(Bytes::from)
        .map_err(|source| CallError::Failed {
            node: target,
            source,
        })?;
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await?;
        crate::cluster::write_frame(&mut send, &PeerMessage::Raft { body }).await?;
        send.finish()?;
        match crate::cluster::read_frame(&mut recv).await? {
            PeerMessage::Raft { body } => decode::<Reply>(&body),
            other => bail!("unexpected reply {other:?}"),
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(source)) => Err(CallError::Failed {
            node: target,
            source,
        }),
        Err(_) => Err(CallError::Timeout(target, timeout)),
    }
}

/// Serves one incoming RPC stream from `peer`.
pub async fn serve_stream(
    consensus: Arc<super::Consensus>,
    peer: NodeId,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let body = match crate::cluster::read_frame(&mut recv).await? {
        PeerMessage::Raft { body } => body,
        other => bail!("peer {peer} opened a stream with {other:?}"),
    };
    let rpc: Rpc = decode(&body).with_context(|| format!("malformed Raft RPC from {peer}"))?;
    let reply = consensus.serve(peer, rpc).await;
    let body = Bytes::from(encode(&reply)?);
    crate::cluster::write_frame(&mut send, &PeerMessage::Raft { body }).await?;
    send.finish()?;
    Ok(())
}

/// Makes a [`Peer`] client for each target; they share the mesh.
#[derive(Debug, Clone)]
pub struct Network {
    cluster: Arc<Cluster>,
}

impl Network {
    pub fn new(cluster: Arc<Cluster>) -> Network {
        Network { cluster }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, _node: &BasicNode) -> Peer {
        Peer {
            target,
            cluster: self.cluster.clone(),
        }
    }
}

/// Raft's client for one target node.
#[derive(Debug)]
pub struct Peer {
    target: NodeId,
    cluster: Arc<Cluster>,
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>;

impl Peer {
    async fn exchange(&self, rpc: Rpc, option: &RPCOption) -> Result<Reply, CallError> {
        call(&self.cluster, self.target, &rpc, option.hard_ttl()).await
    }

    fn failed<E: std::error::Error>(&self, e: CallError) -> RPCError<NodeId, BasicNode, E> {
        match e {
            CallError::NotConnected(_) | CallError::Timeout(..) => {
                RPCError::Unreachable(Unreachable::new(&e))
            }
            CallError::Failed { .. } => RPCError::Network(NetworkError::new(&e)),
        }
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
            Err(e) => Err(self.failed(e)),
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
