//! Why a history publish or recovery did not succeed, and what the caller may do about it.
//!
//! A publish attempt either fails before the message was taken anywhere ([`landed`] is
//! false: nothing was stored or delivered, a retry is safe), or with an outcome not known
//! yet ([`HistoryError::Unconfirmed`], [`HistoryError::Timeout`]: retry with the same
//! publish id and the owner answers with the position it already gave the message). The
//! router retries both kinds within its patience; what reaches a publisher is final.
//!
//! [`landed`]: HistoryError::may_have_landed

use std::time::Duration;

use switchboard_proto::peer::{MAX_PEER_MESSAGE, NodeId, Refusal};

/// The largest message a history group takes: it must fit in one peer message with
/// room to spare (plain groups have no such bound beyond `--max-command-bytes`).
pub const MAX_HISTORY_MESSAGE: usize = MAX_PEER_MESSAGE - 64 * 1024;

/// See the module header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// No owner is assigned to the group's bucket yet (the cluster is forming).
    #[error("no owner for this group's history yet")]
    NotAssigned,
    /// The owner could not be reached: the message was not sent.
    #[error("the owner of this group's history (node {0}) is not reachable")]
    OwnerUnreachable(NodeId),
    /// The node asked does not own the group's history now (ownership is moving).
    #[error("node {0} does not own this group's history now")]
    NotOwner(NodeId),
    /// The owner is not in touch with a majority: it takes nothing it could not replicate.
    #[error("the owner of this group's history is cut off from the majority")]
    CutOff,
    /// The owner is draining and hands its buckets over.
    #[error("the owner of this group's history (node {0}) is handing it over")]
    HandingOver(NodeId),
    /// The owner has too many messages awaiting replication.
    #[error("the owner of this group's history is busy (too many messages awaiting replication)")]
    Busy,
    /// Taken by the owner, replication not confirmed yet: ask again with the same id.
    #[error("the message was taken but its replication is not confirmed yet")]
    Unconfirmed,
    /// Taken by the owner, then the group's history started over without it (its owner
    /// and replica were both lost): it is in no history and was delivered to no one.
    #[error("the group's history started over before the message was replicated")]
    Lost,
    /// No answer from the owner in time: the message may have been taken.
    #[error("no answer from the owner of this group's history in time")]
    Timeout,
    /// The message is larger than [`MAX_HISTORY_MESSAGE`].
    #[error("message of {0} bytes is over the {MAX_HISTORY_MESSAGE}-byte limit of history groups")]
    TooLarge(usize),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
    /// Final: some attempt may have been taken, and no owner confirmed or denied it within
    /// the patience. A retry by the publisher may deliver the message twice.
    #[error(
        "the outcome is unknown: no owner confirmed or denied the message within {0:?} (retrying may deliver it twice)"
    )]
    OutcomeUnknown(Duration),
    /// Final: nothing was taken within the patience; the last reason is given.
    #[error("not published (nothing delivered, safe to retry) after {waited:?}: {last}")]
    NotPublished {
        waited: Duration,
        last: Box<HistoryError>,
    },
}

impl HistoryError {
    /// Whether the message may have been taken by an owner (then a retry must carry the
    /// same publish id).
    pub fn may_have_landed(&self) -> bool {
        matches!(
            self,
            HistoryError::Unconfirmed | HistoryError::Timeout | HistoryError::OutcomeUnknown(_)
        )
    }

    /// Whether asking again may succeed (the router's retry loop).
    pub fn is_retryable(&self) -> bool {
        !matches!(
            self,
            HistoryError::TooLarge(_)
                | HistoryError::Stopped
                | HistoryError::OutcomeUnknown(_)
                | HistoryError::NotPublished { .. }
        )
    }

    /// The error for a refusal from owner `from`.
    pub fn refused_by(from: NodeId, refusal: Refusal) -> HistoryError {
        match refusal {
            Refusal::NotAssigned => HistoryError::NotAssigned,
            Refusal::NotOwner => HistoryError::NotOwner(from),
            Refusal::CutOff => HistoryError::CutOff,
            Refusal::HandingOver => HistoryError::HandingOver(from),
            Refusal::Busy => HistoryError::Busy,
            Refusal::Unconfirmed => HistoryError::Unconfirmed,
            Refusal::Lost => HistoryError::Lost,
            Refusal::TooLarge(n) => HistoryError::TooLarge(n as usize),
        }
    }

    /// The refusal an owner sends for this error (errors an owner does not give map to
    /// the nearest one that keeps their meaning for the publisher).
    pub fn refusal(&self) -> Refusal {
        match self {
            HistoryError::NotAssigned => Refusal::NotAssigned,
            HistoryError::NotOwner(_) | HistoryError::OwnerUnreachable(_) => Refusal::NotOwner,
            HistoryError::CutOff => Refusal::CutOff,
            HistoryError::HandingOver(_) | HistoryError::Stopped => Refusal::HandingOver,
            HistoryError::Busy => Refusal::Busy,
            HistoryError::Lost | HistoryError::NotPublished { .. } => Refusal::Lost,
            HistoryError::TooLarge(n) => Refusal::TooLarge(*n as u64),
            HistoryError::Unconfirmed | HistoryError::Timeout | HistoryError::OutcomeUnknown(_) => {
                Refusal::Unconfirmed
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_meaning_across_the_wire() {
        let all = [
            Refusal::NotAssigned,
            Refusal::NotOwner,
            Refusal::CutOff,
            Refusal::HandingOver,
            Refusal::Busy,
            Refusal::Unconfirmed,
            Refusal::Lost,
            Refusal::TooLarge(7),
        ];
        for r in all {
            let e = HistoryError::refused_by(3, r);
            assert_eq!(e.refusal(), r);
            assert_eq!(e.may_have_landed(), r == Refusal::Unconfirmed, "{r:?}");
        }
        assert!(!HistoryError::TooLarge(1).is_retryable());
        assert!(HistoryError::Timeout.is_retryable() && HistoryError::Timeout.may_have_landed());
    }
}
