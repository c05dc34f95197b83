//! The keeper as the owner of buckets: offsets, replication, fencing, hand-overs and
//! fan-out.

use super::*;

impl Keeper {
    pub(super) fn assignment(facts: &Facts, group: &str) -> Option<Assignment> {
        facts.assignments.of_group(group).copied()
    }

    pub(super) fn rule(&self, group: &str) -> (usize, Option<Duration>) {
        self.rules
            .of(group)
            .map_or((FALLBACK_SIZE, None), |r| (r.size, r.ttl))
    }

    /// Whether this process may assign offsets in `a` (the owner, with this boot).
    pub(super) fn mints(&self, a: &Assignment) -> bool {
        a.owner == self.me && a.owner_boot == self.boot
    }

    /// The owner takes a publish (see the module header).
    pub(super) fn take(&mut self, facts: &Facts, publish: Publish, origin: Origin) {
        let Publish {
            id,
            attempt,
            group,
            payload,
            text,
        } = publish;
        let Some(a) = Self::assignment(facts, &group) else {
            return self.answer(origin, Err(HistoryError::NotAssigned));
        };
        if !self.mints(&a) {
            return self.answer(origin, Err(HistoryError::NotOwner(self.me)));
        }
        if !facts.in_majority {
            return self.answer(origin, Err(HistoryError::CutOff));
        }
        if attempt > 0 && self.retake(facts, &group, id, origin) {
            return;
        }
        if self.leaving && a.replica.is_some() {
            return self.answer(origin, Err(HistoryError::HandingOver(self.me)));
        }
        if self.pending.len() >= MAX_PENDING {
            return self.answer(origin, Err(HistoryError::Busy));
        }
        self.adopt(&group, &a, facts.now_ms);
        if let Some(replica) = a.replica {
            self.ensure_synced(facts, &group, &a, replica);
        }
        let Some(log) = self.store.get_mut(&group) else {
            return;
        };
        let entry = log.append(id, payload, text, facts.now_ms);
        match a.replica {
            None => self.fan_out(facts, group, entry, vec![origin]),
            Some(replica) => {
                let append = History::Append {
                    group: group.clone(),
                    entry: entry.clone(),
                };
                self.send(replica, append);
                self.pending.insert(
                    (group, entry.position.offset),
                    Pending {
                        entry,
                        waiting: vec![(origin, facts.now)],
                        sent_to: replica,
                        sent_at: facts.now,
                        orphaned: None,
                    },
                );
            }
        }
    }

    /// A retry of publish `id`: if this owner holds it, `origin` waits for it (pending)
    /// or is answered with its position; false when it holds no such publish.
    pub(super) fn retake(
        &mut self,
        facts: &Facts,
        group: &str,
        id: PublishId,
        origin: Origin,
    ) -> bool {
        let range = (group.to_owned(), 0)..=(group.to_owned(), u64::MAX);
        if let Some(p) = self
            .pending
            .range_mut(range)
            .map(|(_, p)| p)
            .find(|p| p.entry.id == id)
        {
            if p.orphaned.is_none() {
                p.waiting.push((origin, facts.now));
            } else {
                self.answer(origin, Err(HistoryError::Unconfirmed));
            }
            return true;
        }
        match self.store.get(group).and_then(|log| log.find(id)) {
            Some(position) => {
                self.out.push_back(Output::Repeat {
                    to: origin,
                    group: group.to_owned(),
                    position,
                });
                true
            }
            None => false,
        }
    }

    /// The group's log as the owner of `a` holds it: the one of this epoch, the previous
    /// epoch's continued when `a` continues it, or a new one.
    pub(super) fn adopt(&mut self, group: &str, a: &Assignment, now_ms: u64) -> &mut GroupLog {
        let (size, ttl) = self.rule(group);
        let held = self.store.get(group).map(GroupLog::epoch);
        match held {
            Some(epoch) if epoch == a.epoch => {}
            Some(epoch) if Some(epoch) == a.continues => {
                if let Some(log) = self.store.get_mut(group) {
                    log.continue_as(a.epoch);
                }
            }
            held => {
                if let Some(held) = held {
                    tracing::warn!(
                        group,
                        held,
                        epoch = a.epoch,
                        continues = ?a.continues,
                        "history of a group starts over: the log held here is not of an epoch the assignment continues"
                    );
                }
                self.store
                    .insert(group.to_owned(), GroupLog::new(a.epoch, size, ttl, now_ms));
            }
        }
        self.store
            .entry(group, || GroupLog::new(a.epoch, size, ttl, now_ms))
    }

    /// Sends the group's whole history to the replica if it has not got it in this epoch.
    pub(super) fn ensure_synced(
        &mut self,
        facts: &Facts,
        group: &str,
        a: &Assignment,
        replica: NodeId,
    ) {
        if self.synced.get(group) == Some(&(a.epoch, replica)) {
            return;
        }
        if let Some(log) = self.store.get(group) {
            let parts = log.state(group, SYNC_CHUNK);
            self.send_sync(replica, bucket_of(group), a.epoch, parts);
            self.syncing.insert(group.to_owned(), Some(facts.now));
        }
        self.synced.insert(group.to_owned(), (a.epoch, replica));
    }

    /// Sends again the histories not acknowledged in time, or refused.
    pub(super) fn retry_syncs(&mut self, facts: &Facts) {
        let due: Vec<String> = self
            .syncing
            .iter()
            .filter(|(_, sent)| {
                sent.is_none_or(|at| facts.now.saturating_duration_since(at) >= SYNC_RETRY)
            })
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            self.syncing.remove(&group);
            if let Some(a) = Self::assignment(facts, &group)
                && self.mints(&a)
                && let Some(replica) = a.replica
            {
                self.synced.remove(&group);
                self.ensure_synced(facts, &group, &a, replica);
            }
        }
    }

    pub(super) fn send_sync(
        &mut self,
        replica: NodeId,
        bucket: u16,
        epoch: Epoch,
        groups: Vec<GroupState>,
    ) {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let total = groups.len();
        for (i, state) in groups.into_iter().enumerate() {
            bytes += state.entries.iter().map(|e| e.payload.len()).sum::<usize>() + 64;
            chunk.push(state);
            if bytes >= SYNC_CHUNK || i + 1 == total {
                let groups = std::mem::take(&mut chunk);
                self.send(
                    replica,
                    History::Sync {
                        bucket,
                        epoch,
                        groups,
                    },
                );
                self.counts.syncs_sent += 1;
                bytes = 0;
            }
        }
    }

    /// Whether a replica's acknowledgement of `ack` covers `entry`: the same epoch up to
    /// its offset, or this owner's current epoch when its log continues the entry's.
    pub(super) fn covers(&self, group: &str, ack: Position, entry: &Entry) -> bool {
        entry.position.offset <= ack.offset
            && (entry.position.epoch == ack.epoch
                || self
                    .store
                    .get(group)
                    .is_some_and(|log| log.epoch() == ack.epoch && log.knows(entry.position)))
    }

    /// The owner hears from a replica: acknowledged entries fan out, in offset order; a
    /// refusal has the group's whole history sent again (or, from a former replica, the
    /// refused entry forgotten: it is in no history).
    pub(super) fn on_appended(
        &mut self,
        facts: &Facts,
        peer: NodeId,
        group: String,
        position: Position,
        stored: bool,
    ) {
        let replica_now = Self::assignment(facts, &group)
            .filter(|a| self.mints(a))
            .and_then(|a| a.replica);
        if !stored {
            if replica_now == Some(peer) {
                // Sent again at the next tick (at most once a tick, however many refusals).
                self.sync_soon(group);
            } else {
                let key = (group, position.offset);
                if self
                    .pending
                    .get(&key)
                    .is_some_and(|p| p.sent_to == peer && p.entry.position == position)
                {
                    self.pending.remove(&key);
                }
            }
            return;
        }
        if replica_now == Some(peer) {
            self.syncing.remove(&group);
        }
        let acked: Vec<(String, u64)> = self
            .pending
            .range((group.clone(), 0)..=(group.clone(), position.offset))
            .filter(|(_, p)| {
                (p.sent_to == peer || replica_now == Some(peer))
                    && self.covers(&group, position, &p.entry)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in acked {
            if let Some(p) = self.pending.remove(&key) {
                let answers = p.waiting.into_iter().map(|(o, _)| o).collect();
                self.fan_out(facts, group.clone(), p.entry, answers);
            }
        }
    }

    /// Acts on buckets whose epoch changed: as their owner, continue (or start) their
    /// histories and send them to the replica; otherwise tell the publishers waiting here
    /// to ask the new owner, and forget the histories this node no longer keeps.
    pub(super) fn follow_assignments(&mut self, facts: &Facts) {
        let changed: Vec<(u16, Assignment)> = facts
            .assignments
            .iter()
            .filter(|(b, a)| self.seen.get(b) != Some(&a.epoch))
            .map(|(b, a)| (b, *a))
            .collect();
        if changed.is_empty() {
            return;
        }
        let mut by_bucket: HashMap<u16, Vec<String>> = HashMap::new();
        for (group, _) in self.store.groups() {
            by_bucket
                .entry(bucket_of(group))
                .or_default()
                .push(group.clone());
        }
        for (bucket, a) in changed {
            self.seen.insert(bucket, a.epoch);
            let groups = by_bucket.remove(&bucket).unwrap_or_default();
            let owned_before = if self.mints(&a) {
                !self.owned.insert(bucket)
            } else {
                self.owned.remove(&bucket)
            };
            if self.mints(&a) && !owned_before && a.continues.is_some() {
                self.counts.takeovers += 1;
            }
            if self.mints(&a) {
                let mut states = Vec::new();
                for group in &groups {
                    states.extend(self.adopt(group, &a, facts.now_ms).state(group, SYNC_CHUNK));
                }
                self.drop_lost(bucket);
                match a.replica {
                    Some(replica) => {
                        for group in &groups {
                            self.synced.insert(group.clone(), (a.epoch, replica));
                            self.syncing.insert(group.clone(), Some(facts.now));
                        }
                        if !states.is_empty() {
                            self.send_sync(replica, bucket, a.epoch, states);
                        }
                    }
                    // No replica left: this node alone keeps the history.
                    None => self.confirm_bucket(facts, bucket),
                }
            } else {
                self.orphan(facts, bucket);
                if owned_before
                    && a.replica == Some(self.me)
                    && a.replica_boot == self.boot
                    && let Some(previous) = a.continues
                {
                    // The old owner made the replica of an epoch that continues its own
                    // (a hand-over): its copy is whole (this process minted it), and is
                    // of this epoch now, to be taken over as it is should the new owner
                    // die before sending anything. A copy this node only replicated may
                    // lack entries (a restarted replica's partial sync): it is not
                    // relabelled, and a takeover starts over as before.
                    for group in &groups {
                        if let Some(log) = self.store.get_mut(group)
                            && log.epoch() == previous
                        {
                            log.continue_as(a.epoch);
                        }
                    }
                }
                if a.replica != Some(self.me) && a.owner != self.me {
                    for group in groups {
                        self.store.remove(&group);
                        self.synced.remove(&group);
                        self.syncing.remove(&group);
                    }
                }
            }
        }
    }

    /// Entries of `bucket` for `f`, in key order.
    pub(super) fn pending_of(
        &self,
        bucket: u16,
        f: impl Fn(&Pending) -> bool,
    ) -> Vec<(String, u64)> {
        self.pending
            .iter()
            .filter(|((g, _), p)| bucket_of(g) == bucket && f(p))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Pending entries of `bucket` that this owner's history no longer holds (it started
    /// over): they are lost, and their publishers told so.
    pub(super) fn drop_lost(&mut self, bucket: u16) {
        let lost: Vec<(String, u64)> = self
            .pending_of(bucket, |p| p.orphaned.is_none())
            .into_iter()
            .filter(|key| {
                let position = self.pending.get(key).map(|p| p.entry.position);
                !position
                    .is_some_and(|pos| self.store.get(&key.0).is_some_and(|log| log.knows(pos)))
            })
            .collect();
        for key in lost {
            if let Some(p) = self.pending.remove(&key) {
                for (origin, _) in p.waiting {
                    self.answer(origin, Err(HistoryError::Lost));
                }
            }
        }
    }

    /// Every pending entry of `bucket` is confirmed (this node alone keeps it now).
    pub(super) fn confirm_bucket(&mut self, facts: &Facts, bucket: u16) {
        for key in self.pending_of(bucket, |p| p.orphaned.is_none()) {
            if let Some(p) = self.pending.remove(&key) {
                let answers = p.waiting.into_iter().map(|(o, _)| o).collect();
                self.fan_out(facts, key.0, p.entry, answers);
            }
        }
    }

    /// This node lost `bucket`: publishers waiting on it ask the new owner now.
    pub(super) fn orphan(&mut self, facts: &Facts, bucket: u16) {
        let mut told = Vec::new();
        for key in self.pending_of(bucket, |p| p.orphaned.is_none()) {
            if let Some(p) = self.pending.get_mut(&key) {
                p.orphaned = Some(facts.now);
                told.extend(p.waiting.drain(..).map(|(o, _)| o));
            }
        }
        for origin in told {
            self.answer(origin, Err(HistoryError::Unconfirmed));
        }
    }

    /// Delivers a replicated entry (and to the nodes recovering its group).
    pub(super) fn fan_out(
        &mut self,
        facts: &Facts,
        group: String,
        entry: Entry,
        answers: Vec<Origin>,
    ) {
        let also = match self.recovering.get_mut(&group) {
            Some(nodes) => {
                nodes.retain(|(_, until)| *until > facts.now);
                nodes.iter().map(|(n, _)| *n).collect()
            }
            None => Vec::new(),
        };
        self.out.push_back(Output::FanOut {
            group,
            entry,
            also,
            answers,
        });
    }

    /// The owner's answer to a recovery read.
    pub(super) fn read(
        &mut self,
        facts: &Facts,
        group: &str,
        since: Option<Position>,
        page_bytes: usize,
    ) -> Result<Recovery, HistoryError> {
        let a = Self::assignment(facts, group).ok_or(HistoryError::NotAssigned)?;
        if !self.mints(&a) {
            return Err(HistoryError::NotOwner(self.me));
        }
        let log = self.adopt(group, &a, facts.now_ms);
        Ok(match since {
            Some(since) => log.recover(since, facts.now_ms, page_bytes),
            None => Recovery {
                recovered: true,
                epoch: log.epoch(),
                top: log.top(),
                entries: Vec::new(),
                more: false,
            },
        })
    }

    /// The group's history goes to its replica at the next tick (if this node still
    /// owns it then).
    pub(super) fn sync_soon(&mut self, group: String) {
        self.syncing.insert(group, None);
    }
}
