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
    /// (digits only, no leading zero, lower-case hex), so that it renders back to the same
    /// text. Allocates nothing: it runs for every connection's end.
    fn minted(node: NodeId, text: &str) -> Option<ConnectionId> {
        let mut parts = text.split('-');
        let (written, boot, n) = (parts.next()?, parts.next()?, parts.next()?);
        let canonical = |part: &str, digit: fn(&u8) -> bool| {
            part.bytes().all(|b| digit(&b))
                && !part.is_empty()
                && (part.len() == 1 || !part.starts_with('0'))
        };
        let decimal = |b: &u8| b.is_ascii_digit();
        let hex = |b: &u8| b.is_ascii_digit() || (b'a'..=b'f').contains(b);
        if parts.next().is_some()
            || !canonical(written, decimal)
            || !canonical(boot, hex)
            || !canonical(n, decimal)
            || written.parse::<NodeId>().ok()? != node
        {
            return None;
        }
        Some(ConnectionId::Minted {
            node,
            boot: u64::from_str_radix(boot, 16).ok()?,
            n: n.parse().ok()?,
        })
    }

    /// The node a connection id names, read from its text (`<node>-...`), if any.
    pub fn node_of(text: &str) -> Option<NodeId> {
        let (node, _) = text.split_once('-')?;
        let node: NodeId = node.parse().ok()?;
        ConnectionId::minted(node, text).map(|_| node)
    }

    /// The local number of connection `text`, if this process (`node`, booted at
    /// `boot`) minted it: an id of another node, or of an earlier run of this one, is
    /// not here.
    pub fn local(text: &str, node: NodeId, boot: u64) -> Option<u64> {
        match ConnectionId::minted(node, text)? {
            ConnectionId::Minted { boot: b, n, .. } if b == boot => Some(n),
            _ => None,
        }
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
    /// By node, then as the text. Two minted ids of one node compare their boot's and
    /// counter's digits (the text's order, since `-` sorts before every digit), without
    /// allocating: lists of a user's connections are kept sorted with it.
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
            ) if node == o => text_cmp(*boot, *b, 16).then_with(|| text_cmp(*n, *m, 10)),
            _ => (self.node(), self.to_string()).cmp(&(other.node(), other.to_string())),
        }
    }
}

/// `a` and `b` compared as their texts in base `radix` (10 or 16): as numbers when they
/// have as many digits (the usual case: one process's ids), else digit by digit.
fn text_cmp(a: u64, b: u64, radix: u64) -> Ordering {
    if a.checked_ilog(radix) == b.checked_ilog(radix) {
        return a.cmp(&b);
    }
    let (mut x, mut y) = ([0; 20], [0; 20]);
    digits(a, radix, &mut x).cmp(digits(b, radix, &mut y))
}

/// `n`'s digits in base `radix` (10 or 16, lower case), as its text shows them.
fn digits(mut n: u64, radix: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b"0123456789abcdef"[(n % radix) as usize];
        n /= radix;
        if n == 0 {
            return &buf[at..];
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
    fn an_id_says_its_node_and_whether_this_process_minted_it() {
        assert_eq!(ConnectionId::node_of("2-18f3a5b2c1d-41"), Some(2));
        assert_eq!(ConnectionId::node_of("x-1-2"), None);
        assert_eq!(
            ConnectionId::node_of("2-1-02"),
            None,
            "not as a node writes it"
        );
        assert_eq!(ConnectionId::local("2-ff-41", 2, 0xff), Some(41));
        assert_eq!(
            ConnectionId::local("2-fe-41", 2, 0xff),
            None,
            "an earlier run"
        );
        assert_eq!(
            ConnectionId::local("3-ff-41", 2, 0xff),
            None,
            "another node"
        );
    }

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
        assert_ne!(id, ConnectionId::new(3, "2-18f3a5b2c1d-41"));
        assert_ne!(id, ConnectionId::new(2, "2-18f3a5b2c1d-4"));
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
            assert_eq!(id, ConnectionId::new(2, text));
        }
    }

    #[test]
    fn ordered_as_the_text_within_a_node() {
        let mut ids: Vec<ConnectionId> = ["1-a-9", "1-a-10", "1-b-1", "1-ab-0", "1-x", "0-z"]
            .iter()
            .map(|t| ConnectionId::new(if t.starts_with('0') { 0 } else { 1 }, t))
            .collect();
        ids.sort();
        let texts: Vec<String> = ids.iter().map(ToString::to_string).collect();
        assert_eq!(texts, ["0-z", "1-a-10", "1-a-9", "1-ab-0", "1-b-1", "1-x"]);
        // Every pair as its text compares.
        for a in &ids {
            for b in &ids {
                let by_text = (a.node(), a.to_string()).cmp(&(b.node(), b.to_string()));
                assert_eq!(a.cmp(b), by_text, "{a} {b}");
            }
        }
    }

    proptest::proptest! {
        /// Minted ids order as their texts, and read back from them.
        #[test]
        fn minted_ids_order_as_their_text(a in proptest::prelude::any::<(u64, u64)>(),
                                          b in proptest::prelude::any::<(u64, u64)>()) {
            let (x, y) = (
                ConnectionId::Minted { node: 1, boot: a.0 >> (a.1 % 64), n: a.1 >> (a.0 % 64) },
                ConnectionId::Minted { node: 1, boot: b.0 >> (b.1 % 64), n: b.1 >> (b.0 % 64) },
            );
            proptest::prop_assert_eq!(x.cmp(&y), x.to_string().cmp(&y.to_string()));
            proptest::prop_assert_eq!(ConnectionId::new(1, &x.to_string()), x);
        }
    }
}
