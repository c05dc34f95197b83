//! The start of a peer session: each side proves the cluster secret over the TLS
//! session's exported keying material (see [`super::auth`]), then says hello with its id,
//! protocol version and addresses. Nothing but the small `Auth` frame is read before the
//! proof, and a QUIC connection closed by this node says why with a [`CloseReason`].

use std::time::Duration;

use switchboard_proto::peer::{NodeId, PEER_PROTOCOL_VERSION, PeerMessage};

use super::auth;
use super::frame::{FrameError, MAX_HANDSHAKE_FRAME, read_frame, write_frame};
use super::peers::PeerAddrs;

/// Longest the handshake (auth and hello) may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why this node closed a peer connection: the QUIC application close code, and its
/// reason text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseReason {
    /// The session ended, or this node is leaving the mesh.
    Ended = 0,
    /// The peer did not prove the cluster secret.
    SecretNotProven = 1,
    /// The peer claims this node's own id.
    SameNodeId = 2,
    /// Another session between the same pair is kept.
    Duplicate = 3,
    /// The peer was removed from the cluster for good.
    Removed = 4,
    /// The peer claims a member's id with another data dir (another incarnation).
    WrongIncarnation = 5,
}

impl CloseReason {
    /// The reason text sent with the close.
    pub fn text(self) -> &'static [u8] {
        match self {
            CloseReason::Ended => b"session ended",
            CloseReason::SecretNotProven => b"cluster secret not proven",
            CloseReason::SameNodeId => b"same node id",
            CloseReason::Duplicate => b"duplicate connection",
            CloseReason::Removed => b"removed from the cluster",
            CloseReason::WrongIncarnation => {
                b"this node id belongs to a member with another data dir"
            }
        }
    }

    /// The reason a peer closed a connection with, if it was a refusal of this node.
    pub fn refusal(code: u64) -> Option<CloseReason> {
        match code {
            1 => Some(CloseReason::SecretNotProven),
            2 => Some(CloseReason::SameNodeId),
            4 => Some(CloseReason::Removed),
            5 => Some(CloseReason::WrongIncarnation),
            _ => None,
        }
    }

    /// Closes `conn` with this reason.
    pub fn close(self, conn: &quinn::Connection) {
        conn.close((self as u32).into(), self.text());
    }
}

/// This node refused a peer after its handshake (removed, another incarnation).
#[derive(Debug, thiserror::Error)]
#[error("peer refused: {0}")]
pub struct Refused(pub String);

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's proof does not verify with our secret.
    #[error("peer {remote} claiming node {node} did not prove the cluster secret")]
    NotProven {
        remote: std::net::SocketAddr,
        node: NodeId,
    },
    /// The peer claims our own node id.
    #[error("peer at {0} has our own node id")]
    SameNodeId(std::net::SocketAddr),
    /// The peer's first frame was not `Auth`, or its second not a matching `Hello`.
    #[error("peer broke the handshake: {0}")]
    Protocol(String),
    /// The peer speaks another protocol version.
    #[error("peer {node} speaks peer protocol {theirs}, this node {PEER_PROTOCOL_VERSION}")]
    Version { node: NodeId, theirs: u32 },
    /// The peer splits presence into another number of shards (`--presence-shards`).
    #[error(
        "peer {node} runs with --presence-shards {theirs}, this node with --presence-shards {ours}: every node of a cluster needs the same"
    )]
    PresenceShards {
        node: NodeId,
        theirs: u16,
        ours: u16,
    },
    /// The stream failed.
    #[error(transparent)]
    Frame(#[from] FrameError),
    /// QUIC refused a stream.
    #[error("peer connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The TLS exporter failed (should not happen with TLS 1.3).
    #[error("TLS keying material unavailable")]
    Keying,
    /// The handshake took longer than [`HANDSHAKE_TIMEOUT`].
    #[error("peer handshake timed out")]
    Timeout,
}

impl HandshakeError {
    /// The code the peer closed the connection with during the handshake, if it did.
    pub fn closed_with(&self) -> Option<u64> {
        match self {
            HandshakeError::Connection(c) => application_code(c),
            HandshakeError::Frame(f) => closed_with(f),
            _ => None,
        }
    }
}

/// The code the peer closed the connection with, if a frame failed because it did.
pub fn closed_with(error: &FrameError) -> Option<u64> {
    match error {
        FrameError::Read(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(c)))
        | FrameError::Write(quinn::WriteError::ConnectionLost(c)) => application_code(c),
        _ => None,
    }
}

fn application_code(conn: &quinn::ConnectionError) -> Option<u64> {
    match conn {
        quinn::ConnectionError::ApplicationClosed(close) => Some(close.error_code.into_inner()),
        _ => None,
    }
}

/// A peer that proved the secret and said hello, with the session's gossip stream.
#[derive(Debug)]
pub struct Handshaken {
    pub peer: NodeId,
    /// The peer's incarnation (its data dir's id), covered by its proof.
    pub incarnation: u64,
    /// The peer's boot id (changes at every restart).
    pub boot: u64,
    pub addrs: PeerAddrs,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
}

/// Runs the handshake on `conn` (as its dialer or acceptor), within
/// [`HANDSHAKE_TIMEOUT`]. Closes the connection with the reason when the peer fails it.
pub async fn handshake(
    conn: &quinn::Connection,
    role: auth::Role,
    secret: &[u8],
    me: (NodeId, u64),
    hello: &PeerMessage,
) -> Result<Handshaken, HandshakeError> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange(conn, role, secret, me, hello)).await {
        Ok(result) => result,
        Err(_) => Err(HandshakeError::Timeout),
    }
}

async fn exchange(
    conn: &quinn::Connection,
    role: auth::Role,
    secret: &[u8],
    (me, my_incarnation): (NodeId, u64),
    hello: &PeerMessage,
) -> Result<Handshaken, HandshakeError> {
    let (mut send, mut recv) = match role {
        auth::Role::Dialer => conn.open_bi().await?,
        auth::Role::Acceptor => conn.accept_bi().await?,
    };
    let mut ekm = [0u8; auth::EKM_LEN];
    conn.export_keying_material(&mut ekm, auth::LABEL, b"")
        .map_err(|_| HandshakeError::Keying)?;
    let proof = auth::prove(secret, role, &ekm, me, my_incarnation);
    write_frame(
        &mut send,
        &PeerMessage::Auth {
            node: me,
            incarnation: my_incarnation,
            proof: proof.into(),
        },
    )
    .await?;
    let (peer, incarnation, their_proof) = match read_frame(&mut recv, MAX_HANDSHAKE_FRAME).await? {
        PeerMessage::Auth {
            node,
            incarnation,
            proof,
        } => (node, incarnation, proof),
        other => {
            return Err(HandshakeError::Protocol(format!(
                "expected Auth first, got {}",
                other.kind()
            )));
        }
    };
    let their_role = match role {
        auth::Role::Dialer => auth::Role::Acceptor,
        auth::Role::Acceptor => auth::Role::Dialer,
    };
    if !auth::verify(secret, their_role, &ekm, peer, incarnation, &their_proof) {
        CloseReason::SecretNotProven.close(conn);
        return Err(HandshakeError::NotProven {
            remote: conn.remote_address(),
            node: peer,
        });
    }
    if peer == me {
        CloseReason::SameNodeId.close(conn);
        return Err(HandshakeError::SameNodeId(conn.remote_address()));
    }
    write_frame(&mut send, hello).await?;
    match read_frame(&mut recv, MAX_HANDSHAKE_FRAME).await? {
        PeerMessage::Hello {
            node,
            protocol,
            boot,
            peer_addr,
            admin_addr,
            ws_addr,
            resp_addr,
            version,
            presence_shards,
        } if node == peer => {
            if protocol != PEER_PROTOCOL_VERSION {
                return Err(HandshakeError::Version {
                    node,
                    theirs: protocol,
                });
            }
            let ours = match hello {
                PeerMessage::Hello {
                    presence_shards, ..
                } => *presence_shards,
                _ => 0,
            };
            if presence_shards != ours {
                return Err(HandshakeError::PresenceShards {
                    node,
                    theirs: presence_shards,
                    ours,
                });
            }
            Ok(Handshaken {
                peer,
                incarnation,
                boot,
                addrs: PeerAddrs {
                    peer: peer_addr,
                    ws: ws_addr,
                    resp: resp_addr,
                    admin: admin_addr,
                    version,
                },
                send,
                recv,
            })
        }
        other => Err(HandshakeError::Protocol(format!(
            "expected a Hello from node {peer}, got {}",
            other.kind()
        ))),
    }
}
