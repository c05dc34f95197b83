//! The mesh's hand-off of Raft RPC streams. After a peer has authenticated, every further
//! bidirectional stream it opens is one RPC; the mesh does not read it, it hands it to
//! whoever drains the [`RpcInbox`] (the Raft layer), which is how the mesh carries Raft
//! without knowing anything of it.

use switchboard_proto::peer::NodeId;
use tokio::sync::mpsc;

/// Streams waiting for the Raft layer before new ones are refused (reset).
pub const RPC_INBOX: usize = 1024;

/// One RPC stream from an authenticated peer.
#[derive(Debug)]
pub struct RpcStream {
    pub peer: NodeId,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Where the mesh puts RPC streams.
pub type RpcInbox = mpsc::Sender<RpcStream>;
/// What the Raft layer drains.
pub type RpcOutbox = mpsc::Receiver<RpcStream>;

/// A bounded inbox and its receiving end.
pub fn inbox() -> (RpcInbox, RpcOutbox) {
    mpsc::channel(RPC_INBOX)
}
