//! Who owns each group's history.
//!
//! Groups hash into [`BUCKETS`] buckets ([`bucket_of`], FNV-1a: the same on every node).
//! Each bucket has an [`Assignment`]: an owner that assigns offsets, a replica that holds a
//! copy of everything the owner acknowledged, and the epoch of that pair. The Raft leader
//! plans changes ([`Assignments::plan`]) and commits them; every node applies them in log
//! order, so all agree, and each change mints a new epoch (the Raft index of its entry).
//!
//! The desired owner and replica of a bucket are the first two live members in its
//! rendezvous ranking ([`rank`]): a member joining or leaving moves about 1/N of the
//! buckets. Changes keep history continuous whenever a node that holds it takes over:
//! - the owner is down, its replica up: the replica becomes owner (it holds every
//!   acknowledged message), a new replica is chosen;
//! - the desired owner is another live node: it first becomes the replica (and receives
//!   the ring), then, once that has settled, owner and replica swap;
//! - the replica is down or not the desired one: the owner keeps its log, a new replica is
//!   chosen.
//!
//! Only when owner and replica are both lost does a bucket start over (`continues: None`).
//!
//! History lives in memory: an owner that restarted (its boot id is not the one its
//! assignment recorded) has lost it, so it is treated as a lost owner; and it never
//! assigns offsets in an epoch recorded with another boot (see the historian).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use switchboard_proto::peer::NodeId;

use super::Epoch;

/// Buckets the groups hash into.
pub const BUCKETS: u16 = 1024;

/// The bucket of `group`.
pub fn bucket_of(group: &str) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in group.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(BUCKETS)) as u16
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `members` ranked for `bucket`, best first (rendezvous hashing: each member's weight is a
/// hash of it and the bucket).
pub fn rank(bucket: u16, members: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    rank_salted(u64::from(bucket), members)
}

/// `members` ranked for `key`, best first (the rendezvous ranking of [`rank`], for keys
/// other than buckets).
pub fn rank_salted(key: u64, members: impl IntoIterator<Item = NodeId>) -> Vec<NodeId> {
    let salt = mix(key);
    let mut ranked: Vec<(u64, NodeId)> = members.into_iter().map(|m| (mix(m ^ salt), m)).collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    ranked.into_iter().map(|(_, m)| m).collect()
}

/// A bucket's owner, replica and epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub owner: NodeId,
    /// The owner's boot id when it was assigned: it may assign offsets in this epoch only
    /// while it runs with that boot id.
    pub owner_boot: u64,
    pub replica: Option<NodeId>,
    /// The replica's boot id when it was assigned: a replica that restarted lost its copy.
    pub replica_boot: u64,
    pub epoch: Epoch,
    /// The epoch before this one when this one's owner held its history (the old owner
    /// staying, or the old replica taking over): offsets continue across the two.
    pub continues: Option<Epoch>,
}

/// A change the leader commits: the bucket's new owner and replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub bucket: u16,
    pub owner: NodeId,
    pub owner_boot: u64,
    pub replica: Option<NodeId>,
    pub replica_boot: u64,
    pub continues: Option<Epoch>,
}

/// Every bucket's assignment, as committed through Raft.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assignments {
    buckets: BTreeMap<u16, Assignment>,
    /// The newest epoch of any bucket: it grows with every change.
    newest: Epoch,
}

impl Assignments {
    /// The assignment of `bucket`.
    pub fn get(&self, bucket: u16) -> Option<&Assignment> {
        self.buckets.get(&bucket)
    }

    /// The assignment of `group`'s bucket.
    pub fn of_group(&self, group: &str) -> Option<&Assignment> {
        self.get(bucket_of(group))
    }

    /// Grows whenever an assignment changes (the newest epoch): what changed since a
    /// generation is worth looking at only when this differs.
    pub fn generation(&self) -> Epoch {
        self.newest
    }

    /// The owner and the replica of `bucket` (those that hold its groups' interest).
    pub fn holders(&self, bucket: u16) -> Option<(NodeId, Option<NodeId>)> {
        self.get(bucket).map(|a| (a.owner, a.replica))
    }

    /// The epoch an assignment committed at log index `epoch` mints.
    pub fn apply(&mut self, changes: &[Change], epoch: Epoch) {
        for c in changes {
            if c.bucket < BUCKETS {
                self.newest = self.newest.max(epoch);
                self.buckets.insert(
                    c.bucket,
                    Assignment {
                        owner: c.owner,
                        owner_boot: c.owner_boot,
                        replica: c.replica.filter(|r| *r != c.owner),
                        replica_boot: c.replica_boot,
                        epoch,
                        continues: c.continues,
                    },
                );
            }
        }
    }

    /// Every assignment, by bucket.
    pub fn iter(&self) -> impl Iterator<Item = (u16, &Assignment)> {
        self.buckets.iter().map(|(b, a)| (*b, a))
    }

    /// A map from its assignments (a snapshot).
    pub fn from_entries(entries: impl IntoIterator<Item = (u16, Assignment)>) -> Self {
        let buckets: BTreeMap<u16, Assignment> = entries.into_iter().collect();
        let newest = buckets.values().map(|a| a.epoch).max().unwrap_or(0);
        Assignments { buckets, newest }
    }

    /// The epoch `epoch` of `bucket` was continued by the current one (or is it).
    pub fn epochs_of(&self, bucket: u16) -> Option<(Epoch, Option<Epoch>)> {
        self.get(bucket).map(|a| (a.epoch, a.continues))
    }

    /// The changes that move every bucket toward its desired owner and replica over the
    /// `live` members and their boot ids (see the module header). `settled(bucket)` says
    /// whether the bucket's current replica has had time to receive the ring, so that it
    /// may take over as owner.
    pub fn plan(&self, live: &BTreeMap<NodeId, u64>, settled: impl Fn(u16) -> bool) -> Vec<Change> {
        let mut changes = Vec::new();
        if live.is_empty() {
            return changes;
        }
        let boot = |node: NodeId| live.get(&node).copied().unwrap_or(0);
        // An owner that restarted lost its history: it counts as lost (its replica, if
        // live, takes over; else it starts the bucket over itself).
        let holds = |a: &Assignment| live.get(&a.owner) == Some(&a.owner_boot);
        let boot_of = |replica: Option<NodeId>| replica.map_or(0, boot);
        // A replica that is up but restarted lost its copy: the owner must send it again.
        let replica_restarted = |a: &Assignment| {
            a.replica
                .is_some_and(|r| live.get(&r).is_some_and(|b| *b != a.replica_boot))
        };
        for bucket in 0..BUCKETS {
            let ranked = rank(bucket, live.keys().copied());
            let (want_owner, want_replica) = (ranked[0], ranked.get(1).copied());
            let next_after = |owner: NodeId| ranked.iter().copied().find(|m| *m != owner);
            let change = match self.get(bucket) {
                None => Some(Change {
                    bucket,
                    owner: want_owner,
                    owner_boot: boot(want_owner),
                    replica: want_replica,
                    replica_boot: boot_of(want_replica),
                    continues: None,
                }),
                Some(a) if !holds(a) => match a.replica {
                    Some(replica) if live.get(&replica) == Some(&a.replica_boot) => Some(Change {
                        bucket,
                        owner: replica,
                        owner_boot: boot(replica),
                        replica: next_after(replica),
                        replica_boot: boot_of(next_after(replica)),
                        continues: Some(a.epoch),
                    }),
                    _ => Some(Change {
                        bucket,
                        owner: want_owner,
                        owner_boot: boot(want_owner),
                        replica: want_replica,
                        replica_boot: boot_of(want_replica),
                        continues: None,
                    }),
                },
                Some(a) if replica_restarted(a) => Some(Change {
                    bucket,
                    owner: a.owner,
                    owner_boot: a.owner_boot,
                    replica: a.replica,
                    replica_boot: boot_of(a.replica),
                    continues: Some(a.epoch),
                }),
                Some(a) if a.owner != want_owner => {
                    if a.replica == Some(want_owner) {
                        settled(bucket).then_some(Change {
                            bucket,
                            owner: want_owner,
                            owner_boot: boot(want_owner),
                            replica: Some(a.owner),
                            replica_boot: boot_of(Some(a.owner)),
                            continues: Some(a.epoch),
                        })
                    } else {
                        Some(Change {
                            bucket,
                            owner: a.owner,
                            owner_boot: a.owner_boot,
                            replica: Some(want_owner),
                            replica_boot: boot_of(Some(want_owner)),
                            continues: Some(a.epoch),
                        })
                    }
                }
                Some(a) if a.replica != want_replica => Some(Change {
                    bucket,
                    owner: a.owner,
                    owner_boot: a.owner_boot,
                    replica: want_replica,
                    replica_boot: boot_of(want_replica),
                    continues: Some(a.epoch),
                }),
                Some(_) => None,
            };
            changes.extend(change);
        }
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(ids: &[NodeId]) -> BTreeMap<NodeId, u64> {
        ids.iter().map(|id| (*id, 100 + *id)).collect()
    }

    #[test]
    fn buckets_and_rankings_are_the_same_everywhere_and_spread() {
        assert_eq!(bucket_of("user_42"), bucket_of("user_42"));
        assert_ne!(bucket_of("user_42"), bucket_of("user_43"));
        let mut owners: BTreeMap<NodeId, usize> = BTreeMap::new();
        for b in 0..BUCKETS {
            *owners.entry(rank(b, [1, 2, 3])[0]).or_default() += 1;
        }
        for (node, n) in &owners {
            assert!(
                (250..430).contains(n),
                "node {node} owns {n} of 1024 buckets"
            );
        }
        // Adding a fourth member moves only the buckets it now ranks first in.
        let moved = (0..BUCKETS)
            .filter(|b| rank(*b, [1, 2, 3])[0] != rank(*b, [1, 2, 3, 4])[0])
            .count();
        assert!(moved > 150 && moved < 350, "{moved} buckets moved");
        assert!((0..BUCKETS).all(|b| {
            let r = rank(b, [1, 2, 3, 4]);
            r[0] == 4 || r[0] == rank(b, [1, 2, 3])[0]
        }));
    }

    #[test]
    fn a_fresh_cluster_gets_an_owner_and_a_replica_per_bucket() {
        let map = Assignments::default();
        let changes = map.plan(&live(&[1, 2, 3]), |_| true);
        assert_eq!(changes.len(), BUCKETS as usize);
        assert!(
            changes.iter().all(|c| c.continues.is_none()
                && c.replica.is_some()
                && c.replica != Some(c.owner))
        );
        let mut map = map;
        map.apply(&changes, 7);
        assert!(map.plan(&live(&[1, 2, 3]), |_| true).is_empty(), "stable");
        assert_eq!(map.get(0).map(|a| a.epoch), Some(7));
    }

    #[test]
    fn a_dead_owners_replica_takes_over_and_continues_its_epoch() {
        let mut map = Assignments::default();
        map.apply(&map.plan(&live(&[1, 2, 3]), |_| true), 10);
        let bucket = (0..BUCKETS)
            .find(|b| map.get(*b).map(|a| a.owner) == Some(1))
            .expect("one");
        let before = *map.get(bucket).expect("assigned");
        let changes = map.plan(&live(&[2, 3]), |_| true);
        let change = changes.iter().find(|c| c.bucket == bucket).expect("moved");
        assert_eq!(change.owner, before.replica.expect("a replica"));
        assert_eq!(change.continues, Some(10));
        assert!(change.replica.is_some() && change.replica != Some(change.owner));
        // Buckets that node 1 did not own or replicate are left alone.
        assert!(changes.iter().all(|c| {
            let a = map.get(c.bucket).expect("assigned");
            a.owner == 1 || a.replica == Some(1)
        }));
    }

    #[test]
    fn losing_owner_and_replica_starts_the_bucket_over() {
        let mut map = Assignments::default();
        map.apply(&map.plan(&live(&[1, 2, 3]), |_| true), 10);
        let bucket = (0..BUCKETS)
            .find(|b| {
                map.get(*b)
                    .is_some_and(|a| a.owner != 3 && a.replica != Some(3))
            })
            .expect("one");
        let change = *map
            .plan(&live(&[3]), |_| true)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("moved");
        assert_eq!(
            (change.owner, change.replica, change.continues),
            (3, None, None)
        );
    }

    #[test]
    fn a_restarted_owner_counts_as_lost() {
        let mut map = Assignments::default();
        map.apply(&map.plan(&live(&[1, 2, 3]), |_| true), 10);
        let bucket = (0..BUCKETS)
            .find(|b| map.get(*b).map(|a| a.owner) == Some(1))
            .expect("one");
        let replica = map.get(bucket).and_then(|a| a.replica).expect("a replica");
        let mut restarted = live(&[1, 2, 3]);
        restarted.insert(1, 999);
        let change = *map
            .plan(&restarted, |_| true)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("reassigned");
        assert_eq!((change.owner, change.continues), (replica, Some(10)));
        assert_eq!(change.owner_boot, 100 + replica);
        // Its replica gone too: it starts the bucket over, under its new boot.
        let alone: BTreeMap<NodeId, u64> = [(1, 999)].into_iter().collect();
        let change = *map
            .plan(&alone, |_| true)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("restarted");
        assert_eq!(
            (change.owner, change.owner_boot, change.continues),
            (1, 999, None)
        );
    }

    #[test]
    fn a_newcomer_becomes_replica_first_then_owner_once_settled() {
        let mut map = Assignments::default();
        map.apply(&map.plan(&live(&[1, 2, 3]), |_| true), 10);
        let bucket = (0..BUCKETS)
            .find(|b| rank(*b, [1, 2, 3, 4])[0] == 4)
            .expect("one");
        let old = *map.get(bucket).expect("assigned");
        let four = live(&[1, 2, 3, 4]);
        let step1 = *map
            .plan(&four, |_| false)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("step 1");
        assert_eq!((step1.owner, step1.replica), (old.owner, Some(4)));
        assert_eq!(step1.continues, Some(10));
        map.apply(&[step1], 11);
        assert!(
            !map.plan(&four, |_| false)
                .iter()
                .any(|c| c.bucket == bucket),
            "not before the replica has settled"
        );
        let step2 = *map
            .plan(&four, |_| true)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("step 2");
        assert_eq!(
            (step2.owner, step2.replica, step2.continues),
            (4, Some(old.owner), Some(11))
        );
    }

    #[test]
    fn a_restarted_replica_gets_the_history_again_and_cannot_take_over_without_it() {
        let mut map = Assignments::default();
        map.apply(&map.plan(&live(&[1, 2, 3]), |_| true), 10);
        let bucket = (0..BUCKETS)
            .find(|b| map.get(*b).and_then(|a| a.replica) == Some(2))
            .expect("one");
        let owner = map.get(bucket).expect("assigned").owner;
        let mut restarted = live(&[1, 2, 3]);
        restarted.insert(2, 777);
        let change = *map
            .plan(&restarted, |_| true)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("re-assigned");
        assert_eq!(
            (
                change.owner,
                change.replica,
                change.replica_boot,
                change.continues
            ),
            (owner, Some(2), 777, Some(10)),
            "the same pair, a new epoch: the owner sends its history again"
        );
        // Had the owner died instead, the restarted replica holds nothing to continue.
        restarted.remove(&owner);
        let change = *map
            .plan(&restarted, |_| true)
            .iter()
            .find(|c| c.bucket == bucket)
            .expect("re-assigned");
        assert_eq!(change.continues, None);
    }
}
