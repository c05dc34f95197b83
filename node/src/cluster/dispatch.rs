//! The mesh's decisions about a session and what arrives on it, with no socket: whether
//! a peer that completed its handshake may stay ([`admit`]), what each control message
//! asks of the driver ([`control`]) and what the data stream may carry ([`forwards`]),
//! and how a session's end steers the dial loop ([`SessionError::dial_outcome`]). The
//! driver (`super::mesh`) reads frames, calls these, and does what they return.

use switchboard_proto::peer::{Conn, Forward, History, Interest, NodeId, PeerMessage, Route};

use super::dial::DialOutcome;
use super::frame::FrameError;
use super::session::{CloseReason, HandshakeError};

/// Why a session ended, or could not start.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The handshake failed (secret, version, same id, the stream).
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// This node refused the peer after its handshake.
    #[error("peer {peer} refused: {refusal}")]
    Refused { peer: NodeId, refusal: Refusal },
    /// The peer sent what its stream may not carry.
    #[error("peer {peer} broke the protocol: {what}")]
    Violation { peer: NodeId, what: &'static str },
    /// The session's stream ended or failed.
    #[error(transparent)]
    Stream(#[from] FrameError),
}

impl SessionError {
    /// Why the peer refused this node once it looked it up (its id bound to another data
    /// dir, removed), after the handshake, if that is how the session ended.
    pub fn refused_by_peer(&self) -> Option<CloseReason> {
        match self {
            SessionError::Stream(e) => {
                super::session::closed_with(e).and_then(CloseReason::refusal)
            }
            _ => None,
        }
    }

    /// What the end of a dialed session means for the next dial: a refusal (either
    /// side's: the secret, a removed member, another incarnation, the protocol version,
    /// our own id, another presence shard count) will likely happen again and backs off longest; a handshake that broke
    /// off is an unreachable address; anything after a session ran redials soon.
    pub fn dial_outcome(&self) -> DialOutcome {
        match self {
            SessionError::Refused { .. } => DialOutcome::Refused,
            SessionError::Handshake(
                HandshakeError::NotProven { .. }
                | HandshakeError::SameNodeId(_)
                | HandshakeError::Version { .. }
                | HandshakeError::PresenceShards { .. },
            ) => DialOutcome::Refused,
            SessionError::Handshake(e)
                if e.closed_with()
                    .is_some_and(|code| CloseReason::refusal(code).is_some()) =>
            {
                DialOutcome::Refused
            }
            SessionError::Handshake(_) => DialOutcome::Unreachable,
            SessionError::Stream(_) if self.refused_by_peer().is_some() => DialOutcome::Refused,
            SessionError::Violation { .. } | SessionError::Stream(_) => DialOutcome::Session,
        }
    }
}

/// Why this node refuses a peer that proved the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// It was removed from the cluster for good.
    #[error("it was removed from the cluster")]
    Removed,
    /// Its id belongs to a member with another data dir.
    #[error(
        "its id belongs to a member with another data dir ({bound:016x}, not {presented:016x})"
    )]
    WrongIncarnation { bound: u64, presented: u64 },
}

impl Refusal {
    /// What the connection is closed with.
    pub fn close_reason(self) -> CloseReason {
        match self {
            Refusal::Removed => CloseReason::Removed,
            Refusal::WrongIncarnation { .. } => CloseReason::WrongIncarnation,
        }
    }
}

/// Whether a peer that completed its handshake with `incarnation` may stay, given what
/// the registry says: whether it was `removed`, and the incarnation its id is `bound`
/// to (none before it first joined).
pub fn admit(incarnation: u64, removed: bool, bound: Option<u64>) -> Result<(), Refusal> {
    if removed {
        return Err(Refusal::Removed);
    }
    match bound {
        Some(bound) if bound != incarnation => Err(Refusal::WrongIncarnation {
            bound,
            presented: incarnation,
        }),
        _ => Ok(()),
    }
}

/// What a control message asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Control {
    /// For the historian, in arrival order.
    History(History),
    /// A change to the peer's interest.
    Interest(Interest),
    /// A route lookup, answer, update or listing.
    Route(Route),
    /// The peer asks for this node's whole interest (the part it holds).
    SendFull,
    /// The peer's heartbeat: note its load, and answer with `ack`.
    Heartbeat {
        connections: u64,
        groups: u64,
        ack: PeerMessage,
    },
    /// The answer to our heartbeat: the round trip, in microseconds.
    Rtt(u64),
    /// Members the peer knows: dial those not connected.
    Peers(Vec<(NodeId, String)>),
    /// The peer drains.
    Leaving,
    /// An act on this node's connections, or the answer to one of ours.
    Conn(Conn),
}

/// What a message on `peer`'s control stream asks, at `now_micros` (Unix µs, for the
/// round trip); a message that stream may not carry ends the session.
pub fn control(
    peer: NodeId,
    now_micros: u64,
    message: PeerMessage,
) -> Result<Control, SessionError> {
    let violation = |what| SessionError::Violation { peer, what };
    Ok(match message {
        PeerMessage::History(message) => Control::History(message),
        PeerMessage::Interest(update) => Control::Interest(update),
        PeerMessage::Route(message) => Control::Route(message),
        PeerMessage::InterestSyncRequest => Control::SendFull,
        PeerMessage::Heartbeat {
            sent_micros,
            connections,
            groups,
        } => Control::Heartbeat {
            connections,
            groups,
            ack: PeerMessage::HeartbeatAck { sent_micros },
        },
        PeerMessage::HeartbeatAck { sent_micros } => {
            Control::Rtt(now_micros.saturating_sub(sent_micros))
        }
        PeerMessage::Peers(list) => Control::Peers(list),
        PeerMessage::Leaving => Control::Leaving,
        PeerMessage::Conn(message) => Control::Conn(message),
        PeerMessage::Forward(_) => {
            return Err(violation(
                "forwards on the control stream (they go on its data stream)",
            ));
        }
        PeerMessage::Auth { .. } | PeerMessage::Hello { .. } => {
            return Err(violation("a second handshake"));
        }
        PeerMessage::Raft { .. } => return Err(violation("a Raft message on the gossip stream")),
    })
}

/// The forwards a message on `peer`'s data stream carries; anything else ends the
/// stream.
pub fn forwards(peer: NodeId, message: PeerMessage) -> Result<Vec<Forward>, SessionError> {
    match message {
        PeerMessage::Forward(forwards) => Ok(forwards),
        _ => Err(SessionError::Violation {
            peer,
            what: "a control message on the data stream",
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_peer_or_another_incarnation_is_refused() {
        assert_eq!(admit(7, false, None), Ok(()), "a newcomer");
        assert_eq!(
            admit(7, false, Some(7)),
            Ok(()),
            "the member it claims to be"
        );
        assert_eq!(admit(7, true, Some(7)), Err(Refusal::Removed));
        let refusal = admit(7, false, Some(9)).expect_err("another data dir");
        assert_eq!(
            refusal,
            Refusal::WrongIncarnation {
                bound: 9,
                presented: 7
            }
        );
        assert_eq!(refusal.close_reason(), CloseReason::WrongIncarnation);
        assert_eq!(Refusal::Removed.close_reason(), CloseReason::Removed);
    }

    #[test]
    fn a_session_the_peer_closed_with_a_refusal_backs_off_as_a_refusal() {
        let closed_with = |code: u32| {
            let close = quinn::ApplicationClose {
                error_code: code.into(),
                reason: bytes::Bytes::from_static(b"why"),
            };
            let lost =
                quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(close));
            SessionError::Stream(FrameError::Read(quinn::ReadExactError::ReadError(lost)))
        };
        let refused = closed_with(CloseReason::WrongIncarnation as u32);
        assert_eq!(
            refused.refused_by_peer(),
            Some(CloseReason::WrongIncarnation)
        );
        assert_eq!(refused.dial_outcome(), DialOutcome::Refused);
        // A session that ended (or a duplicate closed) redials soon.
        for code in [CloseReason::Ended as u32, CloseReason::Duplicate as u32] {
            assert_eq!(closed_with(code).refused_by_peer(), None);
            assert_eq!(closed_with(code).dial_outcome(), DialOutcome::Session);
        }
    }

    #[test]
    fn control_messages_map_to_actions_and_misplaced_ones_end_the_session() {
        let heartbeat = PeerMessage::Heartbeat {
            sent_micros: 1_000,
            connections: 3,
            groups: 2,
        };
        assert_eq!(
            control(2, 0, heartbeat).expect("control"),
            Control::Heartbeat {
                connections: 3,
                groups: 2,
                ack: PeerMessage::HeartbeatAck { sent_micros: 1_000 }
            }
        );
        assert_eq!(
            control(2, 1_750, PeerMessage::HeartbeatAck { sent_micros: 1_000 }).expect("ack"),
            Control::Rtt(750)
        );
        assert_eq!(
            control(2, 0, PeerMessage::HeartbeatAck { sent_micros: 9 }).expect("ack"),
            Control::Rtt(0),
            "a clock step back is no negative round trip"
        );
        assert_eq!(
            control(2, 0, PeerMessage::InterestSyncRequest).expect("sync"),
            Control::SendFull
        );
        assert_eq!(
            control(2, 0, PeerMessage::Leaving).expect("leaving"),
            Control::Leaving
        );
        for misplaced in [
            PeerMessage::Forward(Vec::new()),
            PeerMessage::Raft {
                body: Default::default(),
            },
        ] {
            let e = control(2, 0, misplaced).expect_err("not on this stream");
            assert!(matches!(e, SessionError::Violation { peer: 2, .. }), "{e}");
            assert_eq!(e.dial_outcome(), DialOutcome::Session);
        }
        assert!(forwards(2, PeerMessage::Forward(Vec::new())).is_ok());
        assert!(forwards(2, PeerMessage::Leaving).is_err());
    }

    #[test]
    fn refusals_back_off_longest_and_broken_handshakes_count_as_unreachable() {
        let addr = "127.0.0.1:1".parse().expect("addr");
        let refused = SessionError::Refused {
            peer: 2,
            refusal: Refusal::Removed,
        };
        assert_eq!(refused.dial_outcome(), DialOutcome::Refused);
        for e in [
            HandshakeError::NotProven {
                remote: addr,
                node: 2,
            },
            HandshakeError::SameNodeId(addr),
            HandshakeError::Version { node: 2, theirs: 4 },
            HandshakeError::PresenceShards {
                node: 2,
                theirs: 8,
                ours: 0,
            },
        ] {
            assert_eq!(SessionError::from(e).dial_outcome(), DialOutcome::Refused);
        }
        assert_eq!(
            SessionError::from(HandshakeError::Timeout).dial_outcome(),
            DialOutcome::Unreachable
        );
        assert_eq!(
            SessionError::from(HandshakeError::Protocol("no hello".into())).dial_outcome(),
            DialOutcome::Unreachable
        );
    }
}
