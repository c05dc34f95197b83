//! [`ConnectionId`]: a connection's cluster-unique id as the registry and the presence
//! events keep it.
//!
//! Nodes mint ids `<node>-<boot hex>-<n>` (`crate::ingress::ws::ConnIds`). Held as text,
//! each would cost an allocation of its own in every replica of its shard; held as three
//! numbers it costs none. An id of any other form (written by a test, or by a future
//! node) is kept as text, so every id round-trips exactly.

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::{Serialize, Serializer};
use switchboard_proto::peer::NodeId;

/// See the module header. Equal ids render the same text; ordered as their text is
/// (within a node), so that every node lists and purges in the same order.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConnectionId {
    /// `<node>-<boot hex>-<n>`, as nodes mint them.
    Minted { node: NodeId, boot: u64, n: u64 },
    /// Any other id of `node`, as written.
    Named { node: NodeId, text: Arc<str> },
}

impl ConnectionId {
    /// The id `text` of a connection on `node`.
    pub fn new(node: NodeId, text: &str) -> ConnectionId {
        ConnectionId::minted(node, text).unwrap_or_else(|| ConnectionId::Named {
            node,
            text: Arc::from(text),
        })
    }

    /// `text` read as `<node>-<boot hex>-<n>`, if it is exactly how a node would write it
    /// (no leading zero, lower-case hex), so that it renders back to the same text.
    fn minted(node: NodeId, text: &str) -> Option<ConnectionId> {
        let mut parts = text.split('-');
        let (written, boot, n) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || written.parse::<NodeId>().ok()? != node {
            return None;
        }
        let id = ConnectionId::Minted {
            node,
            boot: u64::from_str_radix(boot, 16).ok()?,
            n: n.parse().ok()?,
        };
        (id.to_string() == text).then_some(id)
    }

    /// The node holding the connection.
    pub fn node(&self) -> NodeId {
        match self {
            ConnectionId::Minted { node, .. } | ConnectionId::Named { node, .. } => *node,
        }
    }

    /// Bytes this id holds outside itself.
    pub fn heap_bytes(&self) -> usize {
        match self {
            ConnectionId::Minted { .. } => 0,
            ConnectionId::Named { text, .. } => text.len(),
        }
    }

    /// Whether this is `text` on `node`.
    pub fn is(&self, node: NodeId, text: &str) -> bool {
        match self {
            ConnectionId::Named { node: n, text: t } => *n == node && **t == *text,
            ConnectionId::Minted { .. } => {
                self.node() == node && ConnectionId::minted(node, text).as_ref() == Some(self)
            }
        }
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionId::Minted { node, boot, n } => write!(f, "{node}-{boot:x}-{n}"),
            ConnectionId::Named { text, .. } => f.write_str(text),
        }
    }
}

impl Ord for ConnectionId {
    /// By node, then as the text (two minted ids of one process by their counter's text).
    fn cmp(&self, other: &Self) -> Ordering {
        use ConnectionId::Minted;
        match (self, other) {
            (
                Minted { node, boot, n },
                Minted {
                    node: o,
                    boot: b,
                    n: m,
                },
            ) if node == o && boot == b => n.to_string().cmp(&m.to_string()),
            _ => (self.node(), self.to_string()).cmp(&(other.node(), other.to_string())),
        }
    }
}

impl PartialOrd for ConnectionId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Serialize for ConnectionId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_ids_are_numbers_and_round_trip() {
        let id = ConnectionId::new(2, "2-18f3a5b2c1d-41");
        assert_eq!(
            id,
            ConnectionId::Minted {
                node: 2,
                boot: 0x18f3a5b2c1d,
                n: 41
            }
        );
        assert_eq!(id.to_string(), "2-18f3a5b2c1d-41");
        assert_eq!(id.heap_bytes(), 0);
        assert!(id.is(2, "2-18f3a5b2c1d-41"));
        assert!(!id.is(3, "2-18f3a5b2c1d-41") && !id.is(2, "2-18f3a5b2c1d-4"));
    }

    #[test]
    fn other_ids_are_kept_as_written() {
        // Another node's prefix, leading zeros, upper-case hex, too few or many parts.
        for text in [
            "3-a-1", "2-0a-1", "2-A-1", "2-a-01", "2-1", "2-a-1-1", "x", "",
        ] {
            let id = ConnectionId::new(2, text);
            assert!(matches!(id, ConnectionId::Named { .. }), "{text}");
            assert_eq!(id.to_string(), text);
            assert!(id.is(2, text));
        }
    }

    #[test]
    fn ordered_as_the_text_within_a_node() {
        let mut ids: Vec<ConnectionId> = ["1-a-9", "1-a-10", "1-b-1", "1-x", "0-z"]
            .iter()
            .map(|t| ConnectionId::new(if t.starts_with('0') { 0 } else { 1 }, t))
            .collect();
        ids.sort();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["0-z", "1-a-10", "1-a-9", "1-b-1", "1-x"]);
    }
}
