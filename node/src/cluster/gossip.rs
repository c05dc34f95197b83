//! Interest gossip: every [`GOSSIP`] the changes in this node's local interest go to
//! the peers that hold them (the owner and replica of each group's bucket,
//! `super::routes::Holders`) as one delta per peer, and every [`FULL_SYNC`] (and whenever
//! the holders change) the whole interest each peer holds, to repair anything lost. Every
//! peer gets every version, empty when nothing in it is for that peer, so that a peer
//! whose delta does not follow the version held knows it missed one and asks for a full
//! sync (`InterestSyncRequest`); a new session starts with one. The holder of a group
//! whose local count changed pushes its new route to the nodes caching it.
//!
//! What is queued for peers is queued under the hub's lock (see `Hub::gossip_round`),
//! so deltas reach every peer in version order.
//!
//! This file decides what each peer is sent ([`round`], [`full_for`]); the mesh's loop
//! (`mesh/gossip.rs`) takes the interest, sends, and pushes the routes.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_proto::peer::{Interest, NodeId, PeerMessage};

use super::routes::Holders;
use crate::hub::{InterestDelta, InterestSnapshot};

/// How often changes in local interest are gossiped.
pub const GOSSIP: Duration = Duration::from_millis(10);
/// How often the full interest is re-sent to repair anything lost.
pub const FULL_SYNC: Duration = Duration::from_secs(10);

/// The most bytes of group entries (name plus [`ENTRY_OVERHEAD`]) in one interest
/// message: a node with millions of groups still sends messages far below the 16 MiB
/// peer message limit (one message of all of them would be refused past about a million).
pub const INTEREST_CHUNK_BYTES: usize = 1024 * 1024;
/// What one `(group, count)` entry costs in a message beyond the name, at most.
const ENTRY_OVERHEAD: usize = 16;

/// The messages that carry `groups` at `version`, each at most `max_bytes` of entries:
/// the first a `Full` (with `full`, saying the `holders` generation followed to choose
/// them) or a `Delta` from `version - 1`, the rest `Delta`s from `version` to `version`,
/// which a receiver holding `version` applies in order. A lost middle part is repaired by
/// the next full sync ([`FULL_SYNC`]).
pub fn chunked(
    version: u64,
    groups: Vec<(String, u32)>,
    full: bool,
    holders: u64,
    max_bytes: usize,
) -> Vec<PeerMessage> {
    let mut parts: Vec<Vec<(String, u32)>> = vec![Vec::new()];
    let mut bytes = 0;
    for entry in groups {
        let size = entry.0.len() + ENTRY_OVERHEAD;
        if bytes + size > max_bytes && parts.last().is_some_and(|p| !p.is_empty()) {
            parts.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(part) = parts.last_mut() {
            part.push(entry);
        }
    }
    parts
        .into_iter()
        .enumerate()
        .map(|(i, part)| {
            PeerMessage::Interest(match (i, full) {
                (0, true) => Interest::Full {
                    version,
                    groups: part,
                    holders,
                },
                (0, false) => Interest::Delta {
                    base_version: version - 1,
                    version,
                    changes: part,
                },
                _ => Interest::Delta {
                    base_version: version,
                    version,
                    changes: part,
                },
            })
        })
        .collect()
}

/// The part of this node's interest (`snapshot`) that `peer` holds, as a full sync (a
/// new session, or the peer's request).
pub fn full_for(holders: &Holders, peer: NodeId, snapshot: InterestSnapshot) -> Vec<PeerMessage> {
    let (version, groups) = snapshot;
    let groups = groups
        .into_iter()
        .filter(|(g, _)| holders.holds(peer, g))
        .collect();
    chunked(
        version,
        groups,
        true,
        holders.generation(),
        INTEREST_CHUNK_BYTES,
    )
}

/// One gossip round: what each of `peers` is sent of the `changes` since the last round
/// and (every [`FULL_SYNC`], or when the holders changed) of the whole `snapshot`, in
/// that order; and the changed groups this node holds, whose routes it pushes to the
/// nodes caching them.
pub fn round(
    holders: &Holders,
    peers: &[NodeId],
    changes: Option<InterestDelta>,
    snapshot: Option<InterestSnapshot>,
) -> (HashMap<NodeId, Vec<PeerMessage>>, Vec<String>) {
    let mut parts: HashMap<NodeId, Vec<PeerMessage>> = HashMap::new();
    let mut tell = |version: u64, items: &[(String, u32)], full: bool| {
        for (peer, part) in holders.split(peers, items) {
            parts.entry(peer).or_default().extend(chunked(
                version,
                part,
                full,
                holders.generation(),
                INTEREST_CHUNK_BYTES,
            ));
        }
    };
    let mut held = Vec::new();
    if let Some((version, changes)) = changes {
        tell(version, &changes, false);
        held = changes
            .into_iter()
            .map(|(g, _)| g)
            .filter(|g| holders.mine(g))
            .collect();
    }
    if let Some((version, groups)) = snapshot {
        let groups: Vec<(String, u32)> = groups.into_iter().collect();
        tell(version, &groups, true);
    }
    (parts, held)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::broker::RemoteInterest;
    use crate::history::Assignments;

    fn groups(n: usize) -> Vec<(String, u32)> {
        (0..n)
            .map(|i| (format!("user_{i}"), 1 + i as u32 % 3))
            .collect()
    }

    fn table(interest: &RemoteInterest) -> BTreeMap<String, u32> {
        interest
            .groups()
            .map(|g| (g.to_owned(), interest.count(g) as u32))
            .collect()
    }

    #[test]
    fn a_large_interest_goes_in_bounded_parts_that_add_up_to_the_whole() {
        let all = groups(5000);
        let messages = chunked(7, all.clone(), true, 0, 1000);
        assert!(messages.len() > 50, "{} parts", messages.len());
        for m in &messages {
            let bytes = m.encode().expect("encodes").len();
            assert!(bytes < 1000 + 64, "a part of {bytes} bytes");
        }
        let mut parts = RemoteInterest::default();
        for m in messages {
            let PeerMessage::Interest(update) = m else {
                panic!("not interest");
            };
            parts.apply(2, update).expect("applies in order");
        }
        let mut whole = RemoteInterest::default();
        whole
            .apply(
                2,
                Interest::Full {
                    version: 7,
                    groups: all,
                    holders: 0,
                },
            )
            .expect("applies");
        assert_eq!(table(&parts), table(&whole));
        assert_eq!(parts.version_of(2), 7);
        // The next delta follows the parts as it follows a whole full sync.
        let next = chunked(8, vec![("user_0".into(), 0)], false, 0, 1000);
        for m in next {
            let PeerMessage::Interest(update) = m else {
                panic!("not interest");
            };
            parts.apply(2, update).expect("follows");
        }
        assert_eq!(parts.count("user_0"), 0);
        // Nothing at all is still one (empty) full sync.
        assert_eq!(chunked(3, Vec::new(), true, 0, 1000).len(), 1);
    }

    /// Node 1's holders in a cluster of four with every bucket assigned.
    fn holders() -> Holders {
        let live = [1, 2, 3, 4].into_iter().map(|n| (n, 100 + n)).collect();
        let mut map = Assignments::default();
        map.apply(&map.plan(&live, |_| true), 7);
        Holders::new(1, &map)
    }

    fn groups_of(message: &PeerMessage) -> Vec<String> {
        match message {
            PeerMessage::Interest(Interest::Full { groups, .. }) => {
                groups.iter().map(|(g, _)| g.clone()).collect()
            }
            PeerMessage::Interest(Interest::Delta { changes, .. }) => {
                changes.iter().map(|(g, _)| g.clone()).collect()
            }
            other => panic!("not interest: {other:?}"),
        }
    }

    #[test]
    fn a_round_tells_each_peer_the_changes_it_holds_then_the_whole_and_names_the_held_ones() {
        let holders = holders();
        let changes: Vec<(String, u32)> = groups(200);
        let snapshot: BTreeMap<String, u32> = groups(300).into_iter().collect();
        let (parts, held) = round(
            &holders,
            &[2, 3, 4],
            Some((5, changes.clone())),
            Some((5, snapshot.clone())),
        );
        assert_eq!(parts.len(), 3, "every peer gets the version, empty or not");
        for (peer, messages) in &parts {
            let [delta, full] = &messages[..] else {
                panic!("peer {peer}: {} messages", messages.len());
            };
            assert!(matches!(
                delta,
                PeerMessage::Interest(Interest::Delta {
                    base_version: 4,
                    version: 5,
                    ..
                })
            ));
            assert!(matches!(
                full,
                PeerMessage::Interest(Interest::Full {
                    version: 5,
                    holders: 7,
                    ..
                })
            ));
            let expected = |all: Vec<String>| -> Vec<String> {
                all.into_iter()
                    .filter(|g| holders.holds(*peer, g))
                    .collect()
            };
            assert_eq!(
                groups_of(delta),
                expected(changes.iter().map(|(g, _)| g.clone()).collect())
            );
            assert_eq!(
                groups_of(full),
                expected(snapshot.keys().cloned().collect())
            );
        }
        let mine: Vec<String> = changes
            .iter()
            .map(|(g, _)| g.clone())
            .filter(|g| holders.mine(g))
            .collect();
        assert!(!mine.is_empty());
        assert_eq!(held, mine, "the changed groups this node holds");
        let (quiet, none) = round(&holders, &[2, 3, 4], None, None);
        assert!(
            quiet.is_empty() && none.is_empty(),
            "nothing changed, nothing sent"
        );
        let full = full_for(&holders, 2, (9, snapshot.clone()));
        assert_eq!(full.len(), 1);
        assert_eq!(
            groups_of(&full[0]),
            snapshot
                .keys()
                .filter(|g| holders.holds(2, g))
                .cloned()
                .collect::<Vec<_>>()
        );
    }
}
