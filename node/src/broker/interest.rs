//! What every peer has told us about its groups: the routing table for forwarding.
//!
//! A node holds this for the groups whose interest it holds (the buckets it owns or
//! replicates, `cluster::routes`), so its size is part of the cluster's cost per remote
//! connection (docs/cluster.md): each group name is held once
//! (an `Arc<str>` shared by both indexes), and the nodes of a group are one inline entry
//! when there is one (a user's group lives where the user is) and a sorted vector past it.

use std::collections::HashMap;
use std::sync::Arc;

use switchboard_proto::peer::{Interest, NodeId};

/// The gossip state received from one peer.
#[derive(Debug, Default)]
struct PeerInterest {
    version: u64,
    groups: HashMap<Arc<str>, u32>,
}

/// The peers with subscribers in one group and how many each has, sorted by node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeCounts {
    /// One node: no allocation.
    One((NodeId, u32)),
    /// Two or more, sorted by node.
    Many(Vec<(NodeId, u32)>),
}

impl NodeCounts {
    /// Every (node, count), in node order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, u32)> + '_ {
        let entries: &[(NodeId, u32)] = match self {
            NodeCounts::One(entry) => std::slice::from_ref(entry),
            NodeCounts::Many(entries) => entries,
        };
        entries.iter().copied()
    }

    fn set(&mut self, node: NodeId, count: u32) {
        match self {
            NodeCounts::One((n, c)) if *n == node => *c = count,
            NodeCounts::One(entry) => {
                let mut entries = vec![*entry, (node, count)];
                entries.sort_unstable();
                *self = NodeCounts::Many(entries);
            }
            NodeCounts::Many(entries) => match entries.binary_search_by_key(&node, |e| e.0) {
                Ok(at) => entries[at].1 = count,
                Err(at) => entries.insert(at, (node, count)),
            },
        }
    }

    /// Takes `node` out; returns whether no node is left.
    fn remove(&mut self, node: NodeId) -> bool {
        match self {
            NodeCounts::One((n, _)) => *n == node,
            NodeCounts::Many(entries) => {
                if let Ok(at) = entries.binary_search_by_key(&node, |e| e.0) {
                    entries.remove(at);
                }
                match entries.as_slice() {
                    [] => true,
                    [one] => {
                        *self = NodeCounts::One(*one);
                        false
                    }
                    _ => false,
                }
            }
        }
    }
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
    by_group: HashMap<Arc<str>, NodeCounts>,
}

impl RemoteInterest {
    /// Applies a peer's full state or delta; returns the groups whose nodes or counts
    /// it may have changed (a holder pushes their new routes to the nodes caching them).
    pub fn apply(&mut self, node: NodeId, update: Interest) -> Result<Vec<String>, NeedFullSync> {
        match update {
            Interest::Full {
                version, groups, ..
            } => {
                let mut touched: Vec<String> = self
                    .peers
                    .get(&node)
                    .map(|p| p.groups.keys().map(|g| g.to_string()).collect())
                    .unwrap_or_default();
                self.remove_node(node);
                self.peers.entry(node).or_default().version = version;
                for (group, count) in groups {
                    if count > 0 {
                        self.set(node, &group, count);
                    }
                    touched.push(group);
                }
                touched.sort_unstable();
                touched.dedup();
                Ok(touched)
            }
            Interest::Delta {
                base_version,
                version,
                changes,
            } => {
                let Some(peer) = self.peers.get_mut(&node) else {
                    return Err(NeedFullSync {
                        node,
                        base: base_version,
                        held: 0,
                    });
                };
                if peer.version != base_version {
                    return Err(NeedFullSync {
                        node,
                        base: base_version,
                        held: peer.version,
                    });
                }
                peer.version = version;
                for (group, count) in &changes {
                    if *count == 0 {
                        self.unset(node, group);
                    } else {
                        self.set(node, group, *count);
                    }
                }
                Ok(changes.into_iter().map(|(g, _)| g).collect())
            }
        }
    }

    /// Records that `node` has `count` subscribers in `group`.
    fn set(&mut self, node: NodeId, group: &str, count: u32) {
        let name = match self.by_group.get_key_value(group) {
            Some((name, _)) => name.clone(),
            None => Arc::from(group),
        };
        self.peers
            .entry(node)
            .or_default()
            .groups
            .insert(name.clone(), count);
        match self.by_group.get_mut(group) {
            Some(nodes) => nodes.set(node, count),
            None => {
                self.by_group.insert(name, NodeCounts::One((node, count)));
            }
        }
    }

    /// Records that `node` has no subscribers in `group`.
    fn unset(&mut self, node: NodeId, group: &str) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.groups.remove(group);
        }
        self.forget(node, group);
    }

    /// Takes `node` out of `group`'s nodes, and the group out when no node is left.
    fn forget(&mut self, node: NodeId, group: &str) {
        if let Some(nodes) = self.by_group.get_mut(group)
            && nodes.remove(node)
        {
            self.by_group.remove(group);
        }
    }

    /// Keeps only the groups `keep` says this node still holds (the others' buckets moved
    /// to other holders).
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let gone: Vec<Arc<str>> = self.by_group.keys().filter(|g| !keep(g)).cloned().collect();
        for group in gone {
            self.by_group.remove(&group);
            for peer in self.peers.values_mut() {
                peer.groups.remove(&group);
            }
        }
    }

    /// Forgets everything a peer said (it is down or was removed).
    pub fn remove_node(&mut self, node: NodeId) {
        let Some(peer) = self.peers.remove(&node) else {
            return;
        };
        for group in peer.groups.keys() {
            self.forget(node, group);
        }
    }

    /// The peers with subscribers for `group`, and how many each has.
    pub fn nodes_for(&self, group: &str) -> Option<&NodeCounts> {
        self.by_group.get(group)
    }

    /// Total subscribers for `group` on all peers.
    pub fn count(&self, group: &str) -> u64 {
        self.by_group
            .get(group)
            .map_or(0, |nodes| nodes.iter().map(|(_, c)| u64::from(c)).sum())
    }

    /// Every group some peer has subscribers for.
    pub fn groups(&self) -> impl Iterator<Item = &str> {
        self.by_group.keys().map(|g| &**g)
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
            holders: 0,
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
                .map(|n| n.iter().map(|(node, _)| node).collect::<Vec<_>>()),
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

    #[test]
    fn a_group_on_one_node_holds_its_node_inline_and_grows_and_shrinks_in_order() {
        let mut table = RemoteInterest::default();
        table.apply(3, full(1, &[("a", 1)])).expect("full");
        assert_eq!(table.nodes_for("a"), Some(&NodeCounts::One((3, 1))));
        table.apply(2, full(1, &[("a", 4)])).expect("full");
        table.apply(5, full(1, &[("a", 2)])).expect("full");
        assert_eq!(
            table.nodes_for("a"),
            Some(&NodeCounts::Many(vec![(2, 4), (3, 1), (5, 2)]))
        );
        table.remove_node(2);
        table.remove_node(3);
        assert_eq!(table.nodes_for("a"), Some(&NodeCounts::One((5, 2))));
        assert_eq!(table.count("a"), 2);
        table.remove_node(5);
        assert_eq!(table.nodes_for("a"), None);
    }

    #[test]
    fn both_indexes_share_one_name_per_group() {
        let mut table = RemoteInterest::default();
        table.apply(2, full(1, &[("news", 1)])).expect("full");
        table.apply(3, full(1, &[("news", 1)])).expect("full");
        let (name, _) = table.by_group.get_key_value("news").expect("held");
        // by_group's key and both peers' keys: one allocation, three holders.
        assert_eq!(Arc::strong_count(name), 3);
    }

    #[test]
    fn an_update_names_the_groups_it_touched_and_retain_drops_the_others() {
        let mut table = RemoteInterest::default();
        let touched = table
            .apply(2, full(1, &[("a", 1), ("b", 2)]))
            .expect("full");
        assert_eq!(touched, vec!["a", "b"]);
        // A full sync touches what it replaces as well as what it brings.
        let touched = table
            .apply(2, full(2, &[("b", 2), ("c", 1)]))
            .expect("full");
        assert_eq!(touched, vec!["a", "b", "c"]);
        let touched = table
            .apply(
                2,
                Interest::Delta {
                    base_version: 2,
                    version: 3,
                    changes: vec![("c".into(), 0)],
                },
            )
            .expect("delta");
        assert_eq!(touched, vec!["c"]);
        table
            .apply(3, full(1, &[("b", 1), ("d", 1)]))
            .expect("full");
        table.retain(|g| g != "b");
        assert_eq!(table.count("b"), 0);
        assert_eq!(table.count("d"), 1);
        assert_eq!(table.groups().count(), 1);
        // A peer's later delta for a dropped group is applied as any other.
        table
            .apply(
                3,
                Interest::Delta {
                    base_version: 1,
                    version: 2,
                    changes: vec![("b".into(), 0)],
                },
            )
            .expect("follows");
        assert_eq!(table.count("b"), 0);
    }
}
