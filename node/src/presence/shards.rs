//! Presence shards (`--presence-shards S`): which shard a user's presence lives in, and
//! which members vote in each shard. Pure.
//!
//! A user's connections all live in one shard ([`shard_of`]: a hash of the user id), so
//! a user's presence, and the events derived from it, are whole in that shard. Each shard
//! is a Raft group of [`SHARD_VOTERS`] voters: the first of the members ranked for it by
//! rendezvous hashing ([`placement`]), so a member joining or leaving moves about
//! `SHARD_VOTERS / N` of the shards' seats and nothing else.

use switchboard_proto::peer::NodeId;

use crate::history::assign::rank_salted;

/// A presence shard's number (and its Raft group's id).
pub type Shard = u16;

/// Voters of each shard's Raft group: a shard survives the loss of one of them.
pub const SHARD_VOTERS: usize = 3;

/// The rendezvous salt of shard placement, so that a shard's voters are not the owners
/// of the history bucket of the same number.
const PLACEMENT_SALT: u64 = 0x5348_4152_4453; // "SHARDS"

/// The shard of `user`'s presence, of `shards` (0 or 1: the one registry).
pub fn shard_of(user: &str, shards: Shard) -> Shard {
    if shards <= 1 {
        return 0;
    }
    // FNV-1a over the user id: the same on every node and every build.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in user.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(shards)) as Shard
}

/// The voters `shard` should have among `members`: the first [`SHARD_VOTERS`] ranked
/// for it, in rank order.
pub fn placement(shard: Shard, members: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let mut ranked = rank_salted(PLACEMENT_SALT ^ u64::from(shard), members);
    ranked.truncate(SHARD_VOTERS);
    ranked
}

/// The shard group's id (shards are groups 1..=S; group 0 is the control group).
pub fn group_of(shard: Shard) -> u16 {
    shard + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_spread_over_the_shards_and_keep_theirs() {
        let mut counts = [0usize; 8];
        for u in 0..8000 {
            counts[usize::from(shard_of(&u.to_string(), 8))] += 1;
        }
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
        assert_eq!(shard_of("42", 8), shard_of("42", 8));
        assert_eq!(shard_of("42", 0), 0);
        assert_eq!(shard_of("42", 1), 0);
    }

    #[test]
    fn a_member_joining_moves_only_the_seats_it_takes() {
        let three: Vec<NodeId> = vec![1, 2, 3];
        let four: Vec<NodeId> = vec![1, 2, 3, 4];
        let mut moved = 0;
        for shard in 0..64 {
            let before = placement(shard, three.clone());
            let after = placement(shard, four.clone());
            assert_eq!(before.len(), 3);
            let mut b = before.clone();
            b.sort();
            assert_eq!(b, vec![1, 2, 3]);
            // Node 4 takes a seat or nothing changes.
            if after.contains(&4) {
                moved += 1;
                assert_eq!(after.iter().filter(|n| before.contains(n)).count(), 2);
            } else {
                assert_eq!(after, before);
            }
        }
        // About 3/4 of the shards give node 4 a seat.
        assert!((32..=60).contains(&moved), "{moved}");
        // Fewer members than seats: every member votes.
        assert_eq!(placement(5, [7, 9]).len(), 2);
    }
}
