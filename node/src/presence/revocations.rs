//! [`Revocations`]: users whose tokens issued before a time are refused, kept in the
//! replicated control state (`switchboard revoke USER`, `POST /v1/revoke`). Every node
//! checks them at connect and at `refresh`; a revocation lasts `ttl` after its time,
//! long enough for every token issued before it to have expired (`--revocation-ttl`).
//!
//! Deterministic: applied from the log with the time the command carries, expired ones
//! dropped by the committed clock, so every node holds the same.

use std::collections::BTreeMap;

/// The most users revoked at once; the admin API refuses more (507) until some expire.
pub const MAX_REVOCATIONS: usize = 100_000;

/// One user's revocation: tokens issued before `before` (Unix seconds) are refused until
/// `until_ms` (Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Revocation {
    pub before: u64,
    pub until_ms: u64,
    /// The log index that made it (its watchers act once per change).
    pub index: u64,
}

/// See the module header.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Revocations {
    by_user: BTreeMap<String, Revocation>,
}

impl Revocations {
    /// Revokes `user`'s tokens issued before `before` until `until_ms`, at log index
    /// `index`; a later time for the same user replaces an earlier one, never the other
    /// way. Drops the revocations expired by `now_ms` (the committed clock).
    pub fn revoke(&mut self, user: String, before: u64, until_ms: u64, index: u64, now_ms: u64) {
        self.expire(now_ms);
        let entry = self.by_user.entry(user).or_insert(Revocation {
            before,
            until_ms,
            index,
        });
        if before >= entry.before {
            entry.before = before;
            entry.index = index;
        }
        entry.until_ms = entry.until_ms.max(until_ms);
    }

    /// Drops the revocations whose time is over at `now_ms`.
    pub fn expire(&mut self, now_ms: u64) {
        self.by_user.retain(|_, r| r.until_ms > now_ms);
    }

    /// Whether a token of `user` issued at `iat` (Unix seconds; 0 when it says nothing)
    /// is revoked at `now_ms`.
    pub fn revoked(&self, user: &str, iat: u64, now_ms: u64) -> bool {
        self.by_user
            .get(user)
            .is_some_and(|r| r.until_ms > now_ms && iat < r.before)
    }

    /// The newest log index that revoked (0: none kept): a watcher acts on the ones
    /// newer than it saw.
    pub fn newest(&self) -> u64 {
        self.by_user.values().map(|r| r.index).max().unwrap_or(0)
    }

    /// Every revocation, by user.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Revocation)> {
        self.by_user.iter().map(|(u, r)| (u.as_str(), r))
    }

    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revocation_refuses_older_tokens_until_it_expires() {
        let mut r = Revocations::default();
        r.revoke("42".into(), 1_000, 5_000_000, 7, 0);
        assert!(r.revoked("42", 999, 1_000_000));
        assert!(r.revoked("42", 0, 1_000_000), "a token with no iat");
        assert!(
            !r.revoked("42", 1_000, 1_000_000),
            "issued at the time: fine"
        );
        assert!(!r.revoked("43", 0, 1_000_000));
        assert!(!r.revoked("42", 999, 5_000_000), "expired");
        // A later time moves it on; an earlier one does not move it back.
        r.revoke("42".into(), 2_000, 6_000_000, 8, 0);
        r.revoke("42".into(), 1_500, 1, 9, 0);
        let (_, kept) = r.iter().next().expect("one");
        assert_eq!(
            (kept.before, kept.until_ms, kept.index),
            (2_000, 6_000_000, 8)
        );
        // Expired ones go when another is applied.
        r.revoke("7".into(), 10, 7_000_000, 10, 6_500_000);
        assert_eq!(r.len(), 1);
    }
}
