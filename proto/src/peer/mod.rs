//! The node-to-node envelope carried over QUIC, and the presence records the cluster
//! agrees on through Raft.
//!
//! Every message between peers is one [`PeerMessage`], encoded with bincode 2 (serde
//! mode, standard config). On a QUIC stream each message is preceded by its length as a
//! big-endian `u32` (the node's `cluster::frame`). Decoding is bounded by
//! [`MAX_PEER_MESSAGE`]: a peer cannot make a node allocate more than that for one message.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A node's id in the cluster (`--node-id`).
pub type NodeId = u64;

/// The largest encoded peer message a node accepts (16 MiB).
pub const MAX_PEER_MESSAGE: usize = 16 * 1024 * 1024;

/// Version of the peer protocol; peers with another major version are refused.
/// 2: Raft RPCs on streams of their own (`Raft { body }`).
/// 3: `Auth` carries the node's incarnation (its data dir's identity), and the proof
/// covers it; history (`History`, positions in `Forward`).
/// 4: presence batches carry the writer's clock (`Command::PresenceAt`, for presence
/// events), which a node of protocol 3 cannot decode.
/// 5: history publishes carry a [`PublishId`] kept with the message (a retry is
/// recognised), owners refuse with a typed [`Refusal`], `Leaving` announces a drain, the
/// hello carries the binary's version, and interest goes to the holders of each group's
/// bucket, which answer [`Route`] lookups.
/// 6: a full interest sync says which assignments of the holders its sender followed
/// (`Interest::Full::holders`), and a route answer whether the holder has every peer's
/// interest since its bucket moved (`Route::Answer::settled`).
/// 7: the hello carries the node's presence shard count (nodes that disagree are
/// refused), and presence may live in shard Raft groups.
/// 8: a connection's end names its user ([`PresenceOp::Leave`]): the registry keeps no
/// index by connection, and the end goes to the user's shard.
/// 9: nodes act on each other's connections ([`PeerMessage::Conn`]: subscribe,
/// unsubscribe, send to one connection, close), for Django's `group_add`,
/// `channel_layer.send` and the admin API.
pub const PEER_PROTOCOL_VERSION: u32 = 9;

/// The prefix of a WebSocket connection's channel name, `switchboard.conn!<connection
/// id>`: what the backend bridge gives a consumer as `self.channel_name`, and what
/// channels_redis's `group_add`, `group_discard` and `send` name to reach that connection
/// wherever it is in the cluster. The part up to `!` is what channels_redis takes as the
/// Redis key of a process-local channel.
pub const CONNECTION_CHANNEL: &str = "switchboard.conn!";

/// The connection id a channel name names, if it is a connection's.
pub fn connection_of_channel(channel: &str) -> Option<&str> {
    channel
        .strip_prefix(CONNECTION_CHANNEL)
        .filter(|id| !id.is_empty())
}

/// Which connections a [`Conn::Act`] acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnTarget {
    /// One connection, by its id (`<node>-<boot hex>-<n>`).
    Connection(String),
    /// Every connection of a user.
    User(String),
}

/// What a [`Conn::Act`] does to the connections it targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConnAction {
    /// Join a group, whatever the connection's token permits (the server asks).
    Subscribe(String),
    /// Leave a group (never the connection's own user group).
    Unsubscribe(String),
    /// Deliver this payload to the connection alone, as a published message is.
    Send { payload: Bytes, text: bool },
    /// Close with this code and reason.
    Close { code: u16, reason: String },
    /// Close with 4001 those whose token was issued (`iat`, Unix seconds) before
    /// `before`.
    Revoke { before: u64 },
}

/// Acting on another node's connections. Requests carry an id their answer repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Conn {
    Act {
        id: u64,
        target: ConnTarget,
        action: ConnAction,
    },
    /// How many connections the action reached on the answering node.
    Acted { id: u64, count: u32 },
}

/// One live WebSocket connection, as registered in the presence registry.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ConnectionRecord {
    /// The node holding the connection.
    pub node: NodeId,
    /// Connection id, unique in the cluster (`<node>-<boot hex>-<counter>` in practice),
    /// and naming one user for its whole life.
    pub connection: String,
    /// The authenticated user id (the token's `user_id`, else `sub`), as a string.
    pub user: String,
    /// Unix time in milliseconds when the connection was accepted.
    pub connected_at: u64,
}

/// A change to the presence registry. Applied in order, these are the registry's whole
/// history; every node, a single one included, commits them through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PresenceOp {
    /// A connection was accepted.
    Connect(ConnectionRecord),
    /// A connection ended. Written before peer protocol 8 (it names no user: a registry
    /// replaying such ops builds an index by connection for them); [`PresenceOp::Leave`]
    /// since.
    Disconnect { node: NodeId, connection: String },
    /// Every connection of a node is gone (the node died, drained or restarted).
    PurgeNode { node: NodeId },
    /// A node restarted: replace everything it held by this list.
    ResyncNode {
        node: NodeId,
        connections: Vec<ConnectionRecord>,
    },
    /// A connection of `user` ended. Since peer protocol 8 (a new variant at the end, so
    /// logs written before still decode).
    Leave {
        node: NodeId,
        connection: String,
        user: String,
    },
    /// A connection whose events go to the backend bridge was accepted, with its scope
    /// (the node's compact encoding): what another node needs to make its disconnect call if this one dies.
    /// Committed before the backend hears of the connect. Since peer protocol 9.
    ConnectBridged {
        record: ConnectionRecord,
        scope: Bytes,
    },
    /// A bridged connection of `user` ended with close code `code`: it leaves the
    /// registry, and its disconnect call is owed until [`PresenceOp::Delivered`]. Since
    /// peer protocol 9.
    LeaveOwed {
        node: NodeId,
        connection: String,
        user: String,
        code: u16,
    },
    /// The backend has heard the disconnect of `user`'s `connection` (or it was given up):
    /// it is owed no more. Since peer protocol 9.
    Delivered {
        node: NodeId,
        connection: String,
        user: String,
    },
}

/// A message's position in its group's history: the epoch that assigned it (the Raft
/// log index of its owner's assignment) and its offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// Names one publish to a history group, whatever the number of attempts: the node that
/// took it from the publisher, that process's boot id, and a counter of that process.
/// An owner that already holds a message with this id answers a retry with its position
/// instead of appending it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishId {
    pub node: NodeId,
    pub boot: u64,
    pub seq: u64,
}

/// One message of a group's history, as kept by its owner and replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    pub position: Position,
    /// The publish it came from (a retry of it is recognised by this id).
    pub id: PublishId,
    pub payload: Bytes,
    /// Whether it goes out as a text frame (the payload is UTF-8).
    pub text: bool,
    /// Unix milliseconds when the owner took it (for the TTL).
    pub at_ms: u64,
}

/// A group's whole history as one node holds it: what an owner sends its replica to
/// bring it up to date.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupState {
    pub group: String,
    /// The epoch new messages get, and the last offset assigned.
    pub epoch: u64,
    pub top: u64,
    /// The epochs this history continues, oldest first, each with its last offset.
    pub links: Vec<(u64, u64)>,
    /// The messages still kept, in offset order (contiguous).
    pub entries: Vec<HistoryEntry>,
    /// A long history goes in parts, in order: part 0 replaces what the receiver held,
    /// later parts add their entries to it.
    pub part: u32,
    /// More parts of this group's history follow.
    pub more: bool,
}

/// The owner's answer to a recovery read: whether every message after the position asked
/// about is kept, the group's current position, and (a page of) those messages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadPage {
    pub recovered: bool,
    pub top: Position,
    pub entries: Vec<HistoryEntry>,
    /// The page was full: read again after its last entry.
    pub more: bool,
}

/// A message published to a group, forwarded by the node that received it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forward {
    pub group: String,
    /// The payload exactly as published.
    pub payload: Bytes,
    /// Whether the payload goes out as a text frame (it is valid UTF-8).
    pub text: bool,
    /// The node that sends it (the publisher's node, or the history group's owner).
    pub origin: NodeId,
    /// Its position, when the group keeps history (the owner forwards it).
    pub position: Option<Position>,
}

/// The set of groups a node has subscribers for, or a change to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Interest {
    /// Everything the sender has: replaces what the receiver knew of it.
    Full {
        /// Increases by one on every change the sender makes to its interest.
        version: u64,
        /// Group name and number of local connections in it.
        groups: Vec<(String, u32)>,
        /// The generation of the bucket assignments the sender followed to choose what
        /// to send (the receiver holds every bucket it gained by then: its interest of
        /// the sender is complete for them).
        holders: u64,
    },
    /// A change since `base_version`; a receiver whose known version differs asks for
    /// a full sync instead of applying it.
    Delta {
        base_version: u64,
        version: u64,
        /// Group name and its new local count; 0 means the sender left the group.
        changes: Vec<(String, u32)>,
    },
}

/// Everything one node says to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerMessage {
    /// First message on a connection, after the peer has proved the cluster secret.
    Hello {
        node: NodeId,
        protocol: u32,
        /// This process's boot id (when it started, Unix ms): a node that restarts has a
        /// new one, and has lost what it held in memory (history).
        boot: u64,
        /// The addresses others should use to reach this node.
        peer_addr: String,
        admin_addr: String,
        ws_addr: String,
        resp_addr: String,
        /// The version of the `switchboard` binary it runs (for `members`).
        version: String,
        /// Its `--presence-shards`: nodes of one cluster must agree on it.
        presence_shards: u16,
    },
    /// Liveness and round-trip time; answered by `HeartbeatAck` with the same `sent_micros`.
    /// It also says how loaded the sender is (for `members` and the admin page).
    Heartbeat {
        sent_micros: u64,
        connections: u64,
        groups: u64,
    },
    HeartbeatAck {
        sent_micros: u64,
    },
    /// Group interest of the sender.
    Interest(Interest),
    /// Asks the receiver for `Interest::Full`.
    InterestSyncRequest,
    /// Published messages for groups the receiver has subscribers in.
    Forward(Vec<Forward>),
    /// One Raft RPC request, or its reply, opaque here (the node encodes openraft's
    /// types). Each call has a QUIC stream of its own: one request, one reply.
    Raft {
        body: Bytes,
    },
    /// The first message each side sends: who it is, and an HMAC-SHA256 with the cluster
    /// secret over the TLS session's exported keying material and that id. The secret is
    /// never sent, and a proof cannot be replayed on another TLS session.
    Auth {
        node: NodeId,
        /// A random id created with the node's data dir: a process with the same node id
        /// and another data dir is another incarnation, refused while the member exists.
        incarnation: u64,
        proof: Bytes,
    },
    /// The members the sender knows (id, peer address), so that every node meshes with
    /// every other one after joining through a single seed.
    Peers(Vec<(NodeId, String)>),
    /// History: between a group's owner, its replica, and the nodes publishing to it or
    /// recovering from it (see the node's `history::keeper`).
    History(History),
    /// The sender is draining: it takes no new history publishes, and the Raft leader
    /// moves the history buckets it owns or replicates to other nodes before it leaves.
    Leaving,
    /// Routes: between a node that publishes to a group and the holders of the group's
    /// interest (the owner and replica of its bucket; see the node's `cluster::routes`).
    Route(Route),
    /// Acting on the receiver's connections (since peer protocol 9).
    Conn(Conn),
}

/// The route protocol. Requests carry an id their answer repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Route {
    /// To a holder of `group`'s interest: which nodes have subscribers?
    Lookup { id: u64, group: String },
    /// The holder's answer: the nodes with subscribers and how many each has (the holder
    /// among them), and for how long the asker may cache it and use it without asking
    /// again (0: not at all). `None`: the node asked does not hold the group's interest
    /// (ownership moved): ask another holder.
    Answer {
        id: u64,
        group: String,
        nodes: Option<Vec<(NodeId, u32)>>,
        lease_ms: u64,
        /// False while the holder has not heard every connected peer's interest since
        /// the group's bucket moved to it: the route may miss subscribers, so the asker
        /// sends to every peer (and does not cache it).
        settled: bool,
    },
    /// From the holder that granted a lease on `group` to `node`, to the other holder:
    /// push `node` the group's new routes too.
    Lease { group: String, node: NodeId },
    /// A holder pushes a group's new route to a node whose lease on it runs.
    Update {
        group: String,
        nodes: Vec<(NodeId, u32)>,
    },
    /// To every peer: the groups with subscribers on it whose names match the Redis glob
    /// `pattern` (every group: `None`), for `PUBSUB CHANNELS`.
    Groups { id: u64, pattern: Option<Bytes> },
    /// The answer; `complete` is false when the peer stopped at its listing bound.
    GroupsAnswer {
        id: u64,
        groups: Vec<String>,
        complete: bool,
    },
}

/// Why an owner did not take a history publish. Every refusal but [`Refusal::Unconfirmed`]
/// means the message is in no history and was delivered to no one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No owner is assigned to the group's bucket yet.
    NotAssigned,
    /// The node asked does not own the group's history now.
    NotOwner,
    /// The owner is not in touch with a majority.
    CutOff,
    /// The owner is draining and hands its buckets over.
    HandingOver,
    /// The owner has too many messages awaiting replication.
    Busy,
    /// The message was taken but its replication is not confirmed yet (the replica is
    /// slow or being replaced, or ownership moved): ask again with the same id.
    Unconfirmed,
    /// The message was taken, then the group's history started over without it.
    Lost,
    /// The message is over the owner's limit for history groups (its size given).
    TooLarge(u64),
}

/// The history protocol. Every request carries an id its answer repeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum History {
    /// To the group's owner: publish this. `attempt` 0 is the first; a later one may
    /// repeat a publish the owner already holds (it answers with its position).
    Publish {
        id: PublishId,
        attempt: u32,
        group: String,
        payload: Bytes,
        text: bool,
    },
    /// The owner's answer: where the message went (and the connections it reached), or
    /// why it was not taken.
    Published {
        id: PublishId,
        result: Result<(Position, u64), Refusal>,
    },
    /// Owner to replica: store this message (the next of its group in this epoch).
    Append { group: String, entry: HistoryEntry },
    /// Replica to owner: stored (or not: then the owner resends the group's state).
    Appended {
        group: String,
        position: Position,
        stored: bool,
    },
    /// Owner to replica: hold these groups' histories as they are (a new replica, or a
    /// replica that fell out of step); the replica answers each group's last part with
    /// `Appended` at its top.
    Sync {
        bucket: u16,
        epoch: u64,
        groups: Vec<GroupState>,
    },
    /// To the group's owner: what comes after `since` (`None`: only the current position,
    /// for a client subscribing afresh), and forward the group's messages to the sender
    /// from now on (closing the gossip window while it recovers).
    Read {
        id: u64,
        group: String,
        since: Option<Position>,
    },
    /// The owner's answer to `Read`: `recovered`, the current epoch and top, the messages
    /// after `since` (or why it could not read).
    ReadReply {
        id: u64,
        result: Result<ReadPage, Refusal>,
    },
}

/// Why a peer message could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum PeerCodecError {
    /// The bytes are not a valid message of this protocol version.
    #[error("malformed peer message: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// The message could not be encoded (should not happen for well-formed values).
    #[error("peer message could not be encoded: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The message is larger than [`MAX_PEER_MESSAGE`].
    #[error("peer message of {0} bytes exceeds the {MAX_PEER_MESSAGE}-byte limit")]
    TooLarge(usize),
    /// Bytes were left over after the message.
    #[error("{0} trailing bytes after a peer message")]
    Trailing(usize),
}

impl PeerMessage {
    /// The variant's name, for errors and logs (never the content: it may be large).
    pub fn kind(&self) -> &'static str {
        match self {
            PeerMessage::Hello { .. } => "Hello",
            PeerMessage::Heartbeat { .. } => "Heartbeat",
            PeerMessage::HeartbeatAck { .. } => "HeartbeatAck",
            PeerMessage::Interest(_) => "Interest",
            PeerMessage::InterestSyncRequest => "InterestSyncRequest",
            PeerMessage::Forward(_) => "Forward",
            PeerMessage::Raft { .. } => "Raft",
            PeerMessage::Auth { .. } => "Auth",
            PeerMessage::Peers(_) => "Peers",
            PeerMessage::History(_) => "History",
            PeerMessage::Leaving => "Leaving",
            PeerMessage::Route(_) => "Route",
            PeerMessage::Conn(_) => "Conn",
        }
    }
}

fn config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<MAX_PEER_MESSAGE>()
}

impl PeerMessage {
    /// Encodes the message.
    pub fn encode(&self) -> Result<Vec<u8>, PeerCodecError> {
        let bytes = bincode::serde::encode_to_vec(self, config())?;
        if bytes.len() > MAX_PEER_MESSAGE {
            return Err(PeerCodecError::TooLarge(bytes.len()));
        }
        Ok(bytes)
    }

    /// Decodes exactly one message from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, PeerCodecError> {
        if bytes.len() > MAX_PEER_MESSAGE {
            return Err(PeerCodecError::TooLarge(bytes.len()));
        }
        let (message, used) = bincode::serde::decode_from_slice(bytes, config())?;
        if used != bytes.len() {
            return Err(PeerCodecError::Trailing(bytes.len() - used));
        }
        Ok(message)
    }
}

#[cfg(test)]
mod tests;
