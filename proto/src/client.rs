//! The WebSocket client protocol.
//!
//! Published messages reach a client as raw frames: a text frame when the payload is
//! UTF-8, a binary frame otherwise, byte for byte as published. Nothing else is sent
//! unprompted, so a client written for Daphne (which only ever saw its own messages)
//! keeps working.
//!
//! A client may send JSON text frames ([`ClientOp`]); each gets exactly one JSON reply
//! ([`ServerReply`]), which carries the op's `id` back when one was given.
//!
//! Close codes are in [`CloseCode`].

use serde::{Deserialize, Serialize};

/// A request a client sends as a JSON text frame, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ClientOp {
    /// Join a group the token permits; with `since` (a position from a `message` frame),
    /// first receive every message after it (recovery). Also for a group the connection
    /// is already in.
    Subscribe {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Position>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Leave a group. Leaving the connection's own user group is refused.
    Unsubscribe {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The live connections of a user (default: the caller), cluster-wide.
    /// Any user other than the caller needs the `presence` permission in the token.
    Presence {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Follow a user's presence events (default: the caller; any other user needs the
    /// `presence` permission): `presence_subscribed`, then a `presence_event` frame
    /// carrying a `reset` (the user's connections now) or, with `since` (an event id),
    /// every event after it, then each new event as the cluster commits it.
    PresenceSubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Stop following a user's presence events.
    PresenceUnsubscribe {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Liveness check at the application level; answered with `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// Replace the connection's token before it expires. The new token must be valid and
    /// name the same user; the connection then lives until the new `exp`.
    Refresh {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ClientOp {
    /// The correlation id the client attached, if any.
    pub fn id(&self) -> Option<u64> {
        match self {
            ClientOp::Subscribe { id, .. }
            | ClientOp::Unsubscribe { id, .. }
            | ClientOp::Presence { id, .. }
            | ClientOp::PresenceSubscribe { id, .. }
            | ClientOp::PresenceUnsubscribe { id, .. }
            | ClientOp::Ping { id }
            | ClientOp::Refresh { id, .. } => *id,
        }
    }

    /// The correlation id, to fill in (a client numbering its requests).
    pub fn id_mut(&mut self) -> &mut Option<u64> {
        match self {
            ClientOp::Subscribe { id, .. }
            | ClientOp::Unsubscribe { id, .. }
            | ClientOp::Presence { id, .. }
            | ClientOp::PresenceSubscribe { id, .. }
            | ClientOp::PresenceUnsubscribe { id, .. }
            | ClientOp::Ping { id }
            | ClientOp::Refresh { id, .. } => id,
        }
    }
}

/// A message's position in its group's history (`?positions=1` connections see it).
pub use crate::peer::Position;

/// One live connection of a user, as the presence registry knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    /// The node that holds the connection.
    pub node: u64,
    /// The connection id, unique within the cluster.
    pub connection: String,
    /// Unix time in milliseconds when the connection was accepted.
    pub connected_at: u64,
}

/// The server's answer to a [`ClientOp`], tagged by `type`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerReply {
    /// `recovered`, `epoch` and `offset` answer a subscribe with `since`: whether every
    /// message after it follows (before any newer one), and the position after them.
    Subscribed {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A published message, on a `?positions=1` connection: `data` when the payload is
    /// UTF-8, else `b64data`; `epoch` and `offset` when the group keeps history.
    Message {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        b64data: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset: Option<u64>,
    },
    Unsubscribed {
        group: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    Presence {
        user: String,
        connections: Vec<PresenceEntry>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    PresenceSubscribed {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    PresenceUnsubscribed {
        user: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// A presence event of a followed user: `event` is the event as the admin API's
    /// stream shows it (`id`, `type`: join/leave/online/offline/reset, ...).
    PresenceEvent { event: serde_json::Value },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The token was replaced; `exp` is the new expiry (Unix seconds), if the token has one.
    /// The connection left the groups the new token no longer permits (`left`) and joined
    /// the new token's groups (`joined`).
    Refreshed {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<u64>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<String>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
    /// The op was refused; the connection stays open.
    Error {
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

/// Why an op was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was not a JSON op this server knows.
    BadRequest,
    /// The token does not permit this group or query.
    Forbidden,
    /// A refresh token was invalid, or named another user.
    InvalidToken,
    /// The connection already has as many groups as the server allows.
    TooManyGroups,
    /// The cluster cannot answer now (the user's presence shard is unreachable, the
    /// backend did not answer a frame in time); retry.
    Unavailable,
    /// The connection sent frames to the backend faster than its budget allows
    /// (`--backend-frames-per-sec`, `--backend-bytes-per-sec`) or while too many wait:
    /// the frame was not sent; slow down.
    RateLimited,
}

/// WebSocket close codes the server uses. The 4xxx codes are application codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure (the client asked, or `QUIT`-like end).
    Normal = 1000,
    /// The client broke the WebSocket protocol (reserved bits, an oversized or
    /// fragmented control frame, a bad opcode).
    ProtocolError = 1002,
    /// A text frame that is not UTF-8.
    InvalidPayload = 1007,
    /// The client kept sending past its budget after being told (`rate_limited`).
    PolicyViolation = 1008,
    /// A frame or message exceeded the server's maximum size.
    TooBig = 1009,
    /// An unexpected server error.
    InternalError = 1011,
    /// The node is draining or shutting down: reconnect to another node.
    Restart = 1012,
    /// The node is not ready, or full: try again later.
    TryAgainLater = 1013,
    /// Authentication failed: missing, malformed, bad signature, expired, wrong type.
    /// The close reason says which.
    Unauthorized = 4001,
    /// Forbidden: origin not allowed, or group not permitted.
    Forbidden = 4003,
    /// The client did not read fast enough and its outbound queue overflowed.
    SlowConsumer = 4008,
    /// Insufficient state: the node found a gap in a positioned subscription that it
    /// cannot fill; reconnect and recover.
    InsufficientState = 4009,
}

impl CloseCode {
    /// The numeric code as sent in the close frame.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a number, if it is one the server uses.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1000 => CloseCode::Normal,
            1002 => CloseCode::ProtocolError,
            1007 => CloseCode::InvalidPayload,
            1008 => CloseCode::PolicyViolation,
            1009 => CloseCode::TooBig,
            1011 => CloseCode::InternalError,
            1012 => CloseCode::Restart,
            1013 => CloseCode::TryAgainLater,
            4001 => CloseCode::Unauthorized,
            4003 => CloseCode::Forbidden,
            4008 => CloseCode::SlowConsumer,
            4009 => CloseCode::InsufficientState,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_parse_from_the_documented_json() {
        let op: ClientOp = serde_json::from_str(r#"{"op":"subscribe","group":"news","id":7}"#)
            .expect("subscribe parses");
        assert_eq!(
            op,
            ClientOp::Subscribe {
                group: "news".into(),
                since: None,
                id: Some(7)
            }
        );
        let op: ClientOp = serde_json::from_str(r#"{"op":"ping"}"#).expect("ping parses");
        assert_eq!(op, ClientOp::Ping { id: None });
        assert!(serde_json::from_str::<ClientOp>(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn a_recovering_subscribe_and_its_answer_match_the_contract() {
        let op: ClientOp = serde_json::from_str(
            r#"{"op":"subscribe","group":"user_1","since":{"epoch":7,"offset":41}}"#,
        )
        .expect("parses");
        assert!(matches!(
            op,
            ClientOp::Subscribe {
                since: Some(Position {
                    epoch: 7,
                    offset: 41
                }),
                ..
            }
        ));
        let reply = ServerReply::Subscribed {
            group: "user_1".into(),
            recovered: Some(true),
            epoch: Some(7),
            offset: Some(50),
            id: None,
        };
        assert_eq!(
            serde_json::to_string(&reply).expect("serializes"),
            r#"{"type":"subscribed","group":"user_1","recovered":true,"epoch":7,"offset":50}"#
        );
        let message = ServerReply::Message {
            group: "user_1".into(),
            data: Some("hi".into()),
            b64data: None,
            epoch: Some(7),
            offset: Some(42),
        };
        assert_eq!(
            serde_json::to_string(&message).expect("serializes"),
            r#"{"type":"message","group":"user_1","data":"hi","epoch":7,"offset":42}"#
        );
    }

    #[test]
    fn replies_serialize_to_the_documented_json() {
        let reply = ServerReply::Error {
            code: ErrorCode::Forbidden,
            message: "group not permitted".into(),
            id: None,
        };
        assert_eq!(
            serde_json::to_string(&reply).expect("serializes"),
            r#"{"type":"error","code":"forbidden","message":"group not permitted"}"#
        );
    }

    #[test]
    fn close_codes_round_trip() {
        for code in [
            CloseCode::Normal,
            CloseCode::ProtocolError,
            CloseCode::InvalidPayload,
            CloseCode::PolicyViolation,
            CloseCode::TooBig,
            CloseCode::InternalError,
            CloseCode::Restart,
            CloseCode::TryAgainLater,
            CloseCode::Unauthorized,
            CloseCode::Forbidden,
            CloseCode::SlowConsumer,
            CloseCode::InsufficientState,
        ] {
            assert_eq!(CloseCode::from_code(code.code()), Some(code));
        }
        assert_eq!(CloseCode::from_code(4999), None);
    }
}
