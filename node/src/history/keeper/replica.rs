//! The keeper as the replica of buckets: it stores only what follows, from the owner of
//! the epoch it is the replica of.

use super::*;

impl Keeper {
    /// The replica stores an owner's message: only the next one, of the epoch this node is
    /// the replica of, from that epoch's owner.
    pub(super) fn replica_store(
        &mut self,
        facts: &Facts,
        owner: NodeId,
        group: &str,
        entry: Entry,
    ) -> bool {
        let Some(a) = Self::assignment(facts, group) else {
            return false;
        };
        if a.owner != owner || a.replica != Some(self.me) || a.epoch != entry.position.epoch {
            return false;
        }
        let (size, ttl) = self.rule(group);
        let now_ms = facts.now_ms;
        // The owner started the group afresh in this epoch (offset 1): an older copy goes.
        let fresh = entry.position.offset == 1;
        let log = self
            .store
            .entry(group, || GroupLog::new(a.epoch, size, ttl, now_ms));
        if log.epoch() != a.epoch && fresh {
            *log = GroupLog::new(a.epoch, size, ttl, now_ms);
        }
        log.store(entry, now_ms)
    }

    /// An owner's whole history for some of a bucket's groups: held if this node is the
    /// replica of that epoch (each group's last part acknowledged at its top), else
    /// refused so that the owner sends it again (this node may not have applied the
    /// assignment yet).
    pub(super) fn on_sync(
        &mut self,
        facts: &Facts,
        from: NodeId,
        bucket: u16,
        epoch: Epoch,
        groups: Vec<GroupState>,
    ) {
        let valid = facts
            .assignments
            .get(bucket)
            .is_some_and(|a| a.epoch == epoch && a.owner == from && a.replica == Some(self.me));
        for state in groups {
            let top = Position {
                epoch: state.epoch,
                offset: state.top,
            };
            let group = state.group.clone();
            let more = state.more;
            let held = valid && {
                let (size, ttl) = self.rule(&group);
                if state.part == 0 {
                    let log = GroupLog::from_state(state, size, ttl, facts.now_ms);
                    self.store.insert(group.clone(), log);
                    true
                } else {
                    self.store
                        .get_mut(&group)
                        .is_some_and(|log| log.extend(state, facts.now_ms))
                }
            };
            if !more {
                let ack = History::Appended {
                    group,
                    position: top,
                    stored: held,
                };
                self.send(from, ack);
            }
        }
    }
}
