//! What every peer has told us about its groups: the routing table for forwarding.

use std::collections::{BTreeMap, HashMap};

use switchboard_proto::peer::{Interest, NodeId};

/// The gossip state received from one peer.
#[derive(Debug, Default)]
struct PeerInterest {
    version: u64,
    groups: HashMap<String, u32>,
}

/// A peer's delta did not follow the version we hold: ask it for a full sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interest delta from node {node} is based on version {base}, we hold {held}")]
pub struct NeedFullSync {
    pub node: NodeId,
    pub base: u64,
    pub held: u64,
}

/// Which peers have subscribers for which groups, kept from their gossip. Indexed both
/// ways: by peer (to apply its updates) and by group (to route a message).
#[derive(Debug, Default)]
pub struct RemoteInterest {
    peers: HashMap<NodeId, PeerInterest>,
    by_group: HashMap<String, BTreeMap<NodeId, u32>>,
}

impl RemoteInterest {
    /// Applies a peer's full state or delta.
    pub fn apply(&mut self, node: NodeId, update: Interest) -> Result<(), NeedFullSync> {
        match update {
            Interest::Full { version, groups } => {
                self.remove_node(node);
                let peer = self.peers.entry(node).or_default();
                peer.version = version;
                for (group, count) in groups {
                    if count > 0 {
                        peer.groups.insert(group.clone(), count);
                        self.by_group.entry(group).or_default().insert(node, count);
                    }
                }
                Ok(())
            }
            Interest::Delta {
                base_version,
                version,
                changes,
            } => {
                let held = self.peers.get(&node).map_or(0, |p| p.version);
                if held != base_version || !self.peers.contains_key(&node) {
                    return Err(NeedFullSync {
                        node,
                        base: base_version,
                        held,
                    });
                }
                let peer = self.peers.entry(node).or_default();
                peer.version = version;
                for (group, count) in changes {
                    if count == 0 {
                        peer.groups.remove(&group);
                        if let Some(nodes) = self.by_group.get_mut(&group) {
                            nodes.remove(&node);
                            if nodes.is_empty() {
                                self.by_group.remove(&group);
                            }
                        }
                    } else {
                        peer.groups.insert(group.clone(), count);
                        self.by_group.entry(group).or_default().insert(node, count);
                    }
                }
                Ok(())
            }
        }
    }

    /// Forgets everything a peer said (it is down or was removed).
    pub fn remove_node(&mut self, node: NodeId) {
        let Some(peer) = self.peers.remove(&node) else {
            return;
        };
        for group in peer.groups.keys() {
            if let Some(nodes) = self.by_group.get_mut(group) {
                nodes.remove(&node);
                if nodes.is_empty() {
                    self.by_group.remove(group);
                }
            }
        }
    }

    /// The peers with subscribers for `group`, and how many each has.
    pub fn nodes_for(&self, group: &str) -> Option<&BTreeMap<NodeId, u32>> {
        self.by_group.get(group)
    }

    /// Total subscribers for `group` on all peers.
    pub fn count(&self, group: &str) -> u64 {
        self.by_group
            .get(group)
            .map_or(0, |nodes| nodes.values().map(|&c| u64::from(c)).sum())
    }

    /// Every group some peer has subscribers for.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.by_group.keys().map(String::as_str)
    }

    /// The interest version we hold for a peer (0 if none).
    pub fn version_of(&self, node: NodeId) -> u64 {
        self.peers.get(&node).map_or(0, |p| p.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(version: u64, groups: &[(&str, u32)]) -> Interest {
        Interest::Full {
            version,
            groups: groups.iter().map(|(g, c)| (g.to_string(), *c)).collect(),
        }
    }

    #[test]
    fn full_then_deltas_route_to_the_right_nodes() {
        let mut table = RemoteInterest::default();
        table
            .apply(2, full(5, &[("a", 3), ("b", 1)]))
            .expect("full");
        table.apply(3, full(1, &[("a", 2)])).expect("full");
        assert_eq!(table.count("a"), 5);
        assert_eq!(
            table
                .nodes_for("a")
                .map(|n| n.keys().copied().collect::<Vec<_>>()),
            Some(vec![2, 3])
        );
        table
            .apply(
                2,
                Interest::Delta {
                    base_version: 5,
                    version: 6,
                    changes: vec![("a".into(), 0), ("c".into(), 4)],
                },
            )
            .expect("delta in order");
        assert_eq!(table.count("a"), 2);
        assert_eq!(table.count("c"), 4);
        assert_eq!(table.version_of(2), 6);
    }

    #[test]
    fn an_out_of_order_delta_asks_for_a_full_sync() {
        let mut table = RemoteInterest::default();
        table.apply(2, full(5, &[("a", 3)])).expect("full");
        let err = table
            .apply(
                2,
                Interest::Delta {
                    base_version: 7,
                    version: 8,
                    changes: vec![("a".into(), 0)],
                },
            )
            .expect_err("gap");
        assert_eq!(
            err,
            NeedFullSync {
                node: 2,
                base: 7,
                held: 5
            }
        );
        assert_eq!(table.count("a"), 3, "nothing applied from a refused delta");
    }

    #[test]
    fn a_delta_from_an_unknown_peer_asks_for_a_full_sync() {
        let mut table = RemoteInterest::default();
        assert!(
            table
                .apply(
                    9,
                    Interest::Delta {
                        base_version: 0,
                        version: 1,
                        changes: vec![("a".into(), 1)]
                    }
                )
                .is_err()
        );
    }

    #[test]
    fn removing_a_node_forgets_its_groups() {
        let mut table = RemoteInterest::default();
        table.apply(2, full(1, &[("a", 3)])).expect("full");
        table.remove_node(2);
        assert_eq!(table.count("a"), 0);
        assert!(table.nodes_for("a").is_none());
        assert_eq!(table.groups().count(), 0);
    }
}
