//! Idempotency keys of HTTP publishes, agreed through Raft.
//!
//! A publish with an `idempotency_key` first commits a claim of `(key, group)` for the
//! node and request that asked; once the claim is applied on that node, the request
//! publishes only the groups it holds the claim for. Every node applies the same claims
//! in the same order, so a retry on any node, even after the first node died, finds the
//! key. A claim lasts [`IDEMPOTENCY_WINDOW_MS`] after the time its claimer stamped on
//! it; a request whose publish failed releases its claims, so a retry can deliver.
//!
//! Deterministic: expiry goes by the stamps in the commands, never by the applying
//! node's clock. Bounded: at most [`MAX_CLAIMS`] keys of at most [`MAX_CLAIM_KEY`] bytes.
//! Keys leave only by age (or released by their claimer): when the table is full a new
//! key is not claimed, and its request is told so (nothing published, retry later),
//! so a flood of keyed publishes can never evict another publisher's key and make its
//! retry deliver twice. Each admin token's share of the table is bounded where the
//! keys come in (`crate::admin::plane`).

use std::collections::{BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use switchboard_proto::peer::NodeId;

/// How long a claimed key stands (the contract's "within 5 minutes").
pub const IDEMPOTENCY_WINDOW_MS: u64 = 5 * 60 * 1000;
/// Keys held at most (about 100 bytes each plus the key): past it new keys are refused.
pub const MAX_CLAIMS: usize = 100_000;
/// Longest claimed key: an idempotency key, a newline and a group name.
pub const MAX_CLAIM_KEY: usize = 512;

/// Who claimed a key: a node and its request number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Claimer {
    pub node: NodeId,
    pub request: u64,
}

/// What a request got of a key it claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claimed {
    /// This request holds it: publish.
    Held,
    /// An earlier request holds it (within the window): answer `duplicate`.
    Duplicate,
    /// The table was full: not recorded, nothing published (retry later).
    Full,
}

/// One claimed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Claim {
    at_ms: u64,
    claimer: Claimer,
}

/// See the module header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Claims {
    keys: HashMap<String, Claim>,
    by_age: BTreeSet<(u64, String)>,
}

impl Claims {
    /// Claims every key not held yet for `claimer`, at its stamp `at_ms`, while the
    /// table has room; returns how many it got.
    pub fn claim(&mut self, keys: &[String], claimer: Claimer, at_ms: u64) -> u64 {
        self.expire(at_ms);
        let mut got = 0;
        for key in keys {
            if key.len() > MAX_CLAIM_KEY
                || self.keys.len() >= MAX_CLAIMS
                || self.keys.contains_key(key)
            {
                continue;
            }
            self.keys.insert(key.clone(), Claim { at_ms, claimer });
            self.by_age.insert((at_ms, key.clone()));
            got += 1;
        }
        got
    }

    /// What a request of `claimer` got of `key` after its claim was applied.
    pub fn outcome(&self, key: &str, claimer: Claimer) -> Claimed {
        match self.holder(key) {
            Some(holder) if holder == claimer => Claimed::Held,
            Some(_) => Claimed::Duplicate,
            None => Claimed::Full,
        }
    }

    /// Gives up the keys `claimer` holds among `keys`; returns how many.
    pub fn release(&mut self, keys: &[String], claimer: Claimer) -> u64 {
        let mut released = 0;
        for key in keys {
            if let Some(claim) = self.keys.get(key).copied()
                && claim.claimer == claimer
            {
                self.remove(key, claim.at_ms);
                released += 1;
            }
        }
        released
    }

    /// Who holds `key`.
    pub fn holder(&self, key: &str) -> Option<Claimer> {
        self.keys.get(key).map(|c| c.claimer)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Every claim as (key, stamp, claimer), oldest first (a snapshot).
    pub fn entries(&self) -> Vec<(String, u64, Claimer)> {
        self.by_age
            .iter()
            .filter_map(|(at, key)| Some((key.clone(), *at, self.keys.get(key)?.claimer)))
            .collect()
    }

    /// Claims from [`Claims::entries`].
    pub fn from_entries(entries: impl IntoIterator<Item = (String, u64, Claimer)>) -> Self {
        let mut claims = Claims::default();
        for (key, at_ms, claimer) in entries {
            claims.by_age.insert((at_ms, key.clone()));
            claims.keys.insert(key, Claim { at_ms, claimer });
        }
        claims
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some((at, _)) = self.by_age.first()
            && at.saturating_add(IDEMPOTENCY_WINDOW_MS) <= now_ms
        {
            if let Some((at, key)) = self.by_age.pop_first() {
                self.remove(&key, at);
            }
        }
    }

    fn remove(&mut self, key: &str, at_ms: u64) {
        self.keys.remove(key);
        self.by_age.remove(&(at_ms, key.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    const A: Claimer = Claimer {
        node: 1,
        request: 1,
    };
    const B: Claimer = Claimer {
        node: 2,
        request: 9,
    };

    #[test]
    fn the_first_claim_stands_and_a_retry_finds_it() {
        let mut c = Claims::default();
        assert_eq!(c.claim(&keys(&["k\ng1", "k\ng2"]), A, 1_000), 2);
        assert_eq!(c.claim(&keys(&["k\ng1", "k\ng3"]), B, 2_000), 1);
        assert_eq!(c.holder("k\ng1"), Some(A));
        assert_eq!(c.holder("k\ng3"), Some(B));
        // Releasing only gives up one's own keys.
        assert_eq!(c.release(&keys(&["k\ng1", "k\ng3"]), A), 1);
        assert_eq!(c.holder("k\ng1"), None);
        assert_eq!(c.holder("k\ng3"), Some(B));
        assert_eq!(c.claim(&keys(&["k\ng1"]), B, 3_000), 1, "claimable again");
    }

    #[test]
    fn keys_expire_by_the_stamps_in_the_log_and_stay_bounded() {
        let mut c = Claims::default();
        c.claim(&keys(&["old"]), A, 1_000);
        c.claim(&keys(&["new"]), A, 1_000 + IDEMPOTENCY_WINDOW_MS - 1);
        assert_eq!(c.len(), 2);
        c.claim(&[], B, 1_000 + IDEMPOTENCY_WINDOW_MS);
        assert_eq!(c.holder("old"), None, "five minutes passed");
        assert_eq!(c.holder("new"), Some(A));
        assert_eq!(c.claim(&["x".repeat(MAX_CLAIM_KEY + 1)], A, 0), 0);

        // Full: a flood of new keys evicts none; they are refused until keys expire.
        let mut c = Claims::default();
        let many: Vec<String> = (0..MAX_CLAIMS).map(|i| format!("k{i}")).collect();
        assert_eq!(c.claim(&many, A, 0), MAX_CLAIMS as u64);
        let flood: Vec<String> = (0..10).map(|i| format!("flood{i}")).collect();
        assert_eq!(c.claim(&flood, B, 1), 0);
        assert_eq!(c.len(), MAX_CLAIMS);
        assert_eq!(c.outcome("k0", A), Claimed::Held, "the oldest stays");
        assert_eq!(c.outcome("k0", B), Claimed::Duplicate);
        assert_eq!(c.outcome("flood0", B), Claimed::Full);
        assert_eq!(
            c.claim(&flood, B, IDEMPOTENCY_WINDOW_MS),
            10,
            "room once they expire"
        );
        assert_eq!(c.outcome("flood0", B), Claimed::Held);
    }

    #[test]
    fn entries_rebuild_the_same_claims() {
        let mut c = Claims::default();
        c.claim(&keys(&["a", "b"]), A, 5);
        c.claim(&keys(&["c"]), B, 7);
        assert_eq!(Claims::from_entries(c.entries()), c);
    }
}
