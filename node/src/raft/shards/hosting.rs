//! Which presence shards this node hosts: pure decisions, taken every steward round by
//! [`super::Shards`] and carried out by it (opening a group, initialising it, closing it
//! and deleting its store). Closing deletes data, so the rule is strict and tested here:
//! a shard is closed only once its recorded voters are its placement and this node is
//! in neither, so a voter never loses its log.

use std::collections::BTreeMap;

use switchboard_proto::peer::NodeId;

use crate::presence::shards::Shard;

/// What this node does with one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosting {
    /// Open the shard's group; `alone`: this node is its one recorded voter, and
    /// initialises it.
    Open { alone: bool },
    /// Initialise the hosted group as its one voter (a shard just formed here).
    InitializeAlone,
    /// Close the group and delete its store: the shard has converged without this node.
    Close,
    /// Nothing to do.
    Keep,
}

/// What this node (`me`) does with a shard whose record names `voters` (`None`: not
/// formed yet), that placement gives to `placed`, and that this node hosts or not.
pub fn hosting(me: NodeId, voters: Option<&[NodeId]>, placed: &[NodeId], hosted: bool) -> Hosting {
    let Some(voters) = voters else {
        // Not formed: nothing to host, and nothing hosted is closed for it (a record
        // not yet applied here must not delete a log).
        return Hosting::Keep;
    };
    let is_voter = voters.contains(&me);
    let wanted = is_voter || placed.contains(&me);
    let settled = {
        let (mut a, mut b) = (voters.to_vec(), placed.to_vec());
        a.sort_unstable();
        b.sort_unstable();
        a == b
    };
    let alone = voters == [me];
    match (hosted, wanted) {
        (false, true) => Hosting::Open { alone },
        (true, false) if settled => Hosting::Close,
        (true, _) if alone => Hosting::InitializeAlone,
        _ => Hosting::Keep,
    }
}

/// The shards of `count` that have no record in `formed` yet: what the control group's
/// leader creates (each with itself as the one voter).
pub fn unformed(count: Shard, formed: &BTreeMap<Shard, Vec<NodeId>>) -> Vec<Shard> {
    (0..count).filter(|s| !formed.contains_key(s)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shard_is_opened_by_its_voters_and_its_placement() {
        assert_eq!(
            hosting(1, Some(&[1]), &[1, 2, 3], false),
            Hosting::Open { alone: true }
        );
        assert_eq!(
            hosting(2, Some(&[1]), &[1, 2, 3], false),
            Hosting::Open { alone: false }
        );
        // A recorded voter the placement no longer names still opens (it holds a log).
        assert_eq!(
            hosting(4, Some(&[1, 4]), &[1, 2, 3], false),
            Hosting::Open { alone: false }
        );
        assert_eq!(
            hosting(5, Some(&[1, 2, 3]), &[1, 2, 3], false),
            Hosting::Keep
        );
    }

    #[test]
    fn a_shard_not_formed_is_neither_opened_nor_closed() {
        assert_eq!(hosting(1, None, &[1, 2, 3], false), Hosting::Keep);
        assert_eq!(hosting(1, None, &[2, 3, 4], true), Hosting::Keep);
    }

    #[test]
    fn a_voter_never_closes_its_shard() {
        // Not placed any more, but still a recorded voter: keeps it (the leader has not
        // converged yet), whatever the placement says.
        for placed in [&[2, 3, 4][..], &[2, 3], &[]] {
            assert_ne!(
                hosting(1, Some(&[1, 2, 3]), placed, true),
                Hosting::Close,
                "{placed:?}"
            );
        }
        assert_eq!(
            hosting(1, Some(&[1, 2, 3]), &[2, 3, 4], true),
            Hosting::Keep
        );
    }

    #[test]
    fn a_shard_is_closed_only_once_it_converged_without_this_node() {
        // Voters = placement, this node in neither: close (at most a learner being dropped).
        assert_eq!(
            hosting(4, Some(&[1, 2, 3]), &[3, 2, 1], true),
            Hosting::Close
        );
        // Voters not yet the placement: wait, even if this node is in neither.
        assert_eq!(
            hosting(4, Some(&[1, 2, 5]), &[1, 2, 3], true),
            Hosting::Keep
        );
        // Placed here: keep, voter or not yet.
        assert_eq!(
            hosting(4, Some(&[1, 2, 3]), &[1, 2, 4], true),
            Hosting::Keep
        );
    }

    #[test]
    fn a_shard_formed_here_alone_is_initialised_by_its_host() {
        assert_eq!(
            hosting(1, Some(&[1]), &[1, 2, 3], true),
            Hosting::InitializeAlone
        );
        assert_eq!(
            hosting(1, Some(&[1]), &[2, 3, 4], true),
            Hosting::InitializeAlone
        );
        assert_eq!(hosting(2, Some(&[1]), &[1, 2, 3], true), Hosting::Keep);
    }

    #[test]
    fn the_leader_forms_only_the_shards_without_a_record() {
        let formed = BTreeMap::from([(0, vec![1]), (2, vec![1, 2, 3])]);
        assert_eq!(unformed(4, &formed), vec![1, 3]);
        assert_eq!(unformed(0, &formed), Vec::<Shard>::new());
        assert_eq!(unformed(2, &BTreeMap::new()), vec![0, 1]);
    }
}
