//! The keeper: this node's part in history, as a state machine with no IO and no clock.
//! It is the owner of some buckets (offsets, replication, fan-out), the replica of
//! others (fenced by epoch), and the way in for this node's publishers and recovering
//! clients (one attempt at a time; the router retries).
//!
//! **Call order** (the driver, `crate::historian`, is a loop around it):
//! - `handle_publish`, `handle_recover` for local requests (each with a [`Ticket`] the
//!   driver chose), `handle_peer` for every `History` message from a peer, `handle_tick`
//!   every [`TICK`], `handle_leaving` once when the node drains; each takes [`Facts`]:
//!   the time and the assignments as committed through Raft, read just before the call;
//! - after each, `poll_output` until it gives `None`, carrying out each [`Output`] in
//!   order; a [`Output::Send`] that cannot be queued is reported with `handle_unsent`.
//!
//! **Publishing.** A publish goes to the owner of its group's bucket (no hop when that is
//! this node). The owner refuses unless it holds the bucket's current epoch with this very
//! boot and is in touch with a majority; then it assigns the next offset, sends the entry
//! to the replica, and on the replica's acknowledgement fans it out (here and to every
//! interested peer) and answers with its position. Each publish carries a [`PublishId`]
//! kept with the entry: a retry of a publish the owner already holds (taken before a
//! timeout, or by the replica that has since taken over) is answered with its position
//! and not appended again. An entry waits for a replica for as long as the bucket's
//! epoch continues: a replica that dies is replaced (the owner sends the new one its
//! history, and that acknowledgement confirms every entry it covers); only a history
//! that starts over loses it ([`HistoryError::Lost`]). A publisher that waits longer than
//! [`ACK_PATIENCE`] is told [`HistoryError::Unconfirmed`] and asks again with the same id.
//!
//! **Fencing.** The replica stores only the next offset of the epoch it is the replica
//! of, from that epoch's owner: an owner whose epoch has been replaced gets nothing
//! acknowledged. An owner that loses a bucket tells its waiting publishers
//! `Unconfirmed` at once (they ask the new owner), and still fans out, for
//! [`MOVE_GRACE`], entries its former replica acknowledges: those are in the new owner's
//! history, which answers their retries without delivering them again.
//!
//! **Draining.** A leaving node takes no new publish for a bucket that has a replica
//! ([`HistoryError::HandingOver`]: nothing taken, the publisher asks again), so its
//! pending entries are confirmed before the Raft leader hands its buckets over.
//!
//! **Recovering.** A recovery asks the owner for everything after a position; the owner
//! first forwards the group's new messages to the asking node (for [`RECOVER_WINDOW`],
//! until gossip covers it), then answers from its ring in pages of [`READ_PAGE`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_proto::peer::{GroupState, History, NodeId, Position, PublishId, ReadPage};

use super::error::{HistoryError, MAX_HISTORY_MESSAGE};
use super::{Assignment, Assignments, Entry, Epoch, GroupLog, Recovery, Rules, Store, bucket_of};

/// How long a publisher waits for its message's replication before it is told
/// `Unconfirmed` (and asks again with the same id).
pub const ACK_PATIENCE: Duration = Duration::from_secs(2);
/// How long a node waits for a remote owner's answer (publish or recovery page).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the owner forwards a group's messages to a node that asked to recover it,
/// whatever gossip says (gossip takes 10 ms to tell it the node is interested).
pub const RECOVER_WINDOW: Duration = Duration::from_secs(5);
/// How long a node that lost a bucket still fans out the entries its former replica
/// acknowledges.
pub const MOVE_GRACE: Duration = Duration::from_secs(1);
/// Entries awaiting replication on one owner; more publishes are refused (`Busy`).
pub const MAX_PENDING: usize = 100_000;
/// How often the driver calls `handle_tick`.
pub const TICK: Duration = Duration::from_millis(100);
/// How long the owner waits for a replica to acknowledge a group's history before it
/// sends it again.
pub const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Bytes of group states in one `Sync` message (a longer history goes in parts).
pub const SYNC_CHUNK: usize = 1024 * 1024;
/// Bytes of messages in one answer to a recovery read (the reader asks again for more).
pub const READ_PAGE: usize = 4 * 1024 * 1024;
/// Messages kept by a group that no rule of this node names (a peer with another
/// `--history`): the replica still keeps it.
const FALLBACK_SIZE: usize = 100;

/// A local request, numbered by the driver.
pub type Ticket = u64;

/// What the driver reads before each call.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    pub now: Instant,
    /// Wall-clock milliseconds (TTLs, entry stamps).
    pub now_ms: u64,
    /// Every bucket's owner, replica and epoch, as applied here.
    pub assignments: &'a Assignments,
    /// Whether this node is in touch with a majority of the members it knows.
    pub in_majority: bool,
}

/// One publish attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub id: PublishId,
    /// 0 for the first; a later attempt may repeat one the owner holds.
    pub attempt: u32,
    pub group: String,
    pub payload: Bytes,
    pub text: bool,
}

/// Who waits for a publish's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A request of this node.
    Local(Ticket),
    /// A peer's request, answered with `History::Published`.
    Remote(NodeId, PublishId),
}

/// A publish's success: its position, and the connections it reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Taken {
    pub position: Position,
    pub routed: usize,
}

/// What the driver is asked to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Queue `message` for `to`; if it cannot be queued, call `handle_unsent`.
    Send { to: NodeId, message: History },
    /// Deliver `entry` to this node's connections, to every peer with subscribers for
    /// `group` and to each of `also`; then answer each of `answers` with its position and
    /// the connections it reached.
    FanOut {
        group: String,
        entry: Entry,
        also: Vec<NodeId>,
        answers: Vec<Origin>,
    },
    /// A publish's outcome for `to`.
    Answer {
        to: Origin,
        result: Result<Taken, HistoryError>,
    },
    /// A retry of a publish delivered before: answer `to` with its position and the
    /// connections in `group` now (it is not delivered again).
    Repeat {
        to: Origin,
        group: String,
        position: Position,
    },
    /// A local recovery's outcome.
    Recovered {
        ticket: Ticket,
        result: Result<Recovery, HistoryError>,
    },
}

/// What the keeper holds, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub groups: usize,
    pub messages: usize,
    pub bytes: usize,
    pub pending: usize,
}

/// Events counted since the last [`Keeper::take_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub syncs_sent: u64,
    pub evictions: u64,
}

/// An entry taken by this owner, awaiting a replica's acknowledgement.
#[derive(Debug)]
struct Pending {
    entry: Entry,
    /// Who waits for the outcome, since when (a retry attaches itself again).
    waiting: Vec<(Origin, Instant)>,
    /// The replica the entry was sent to (its late acknowledgement still counts), and
    /// when (unacknowledged for [`SYNC_RETRY`], the group's history is sent again).
    sent_to: NodeId,
    sent_at: Instant,
    /// When this node stopped owning the bucket.
    orphaned: Option<Instant>,
}

/// A publish sent to a remote owner.
#[derive(Debug)]
struct Sent {
    ticket: Ticket,
    group: String,
    owner: NodeId,
    at: Instant,
}

/// A recovery read sent to a remote owner, with the pages received so far.
#[derive(Debug)]
struct Reading {
    ticket: Ticket,
    group: String,
    owner: NodeId,
    at: Instant,
    recovered: Option<bool>,
    entries: Vec<Entry>,
}

/// See the module header.
#[derive(Debug)]
pub struct Keeper {
    me: NodeId,
    boot: u64,
    rules: Rules,
    store: Store,
    leaving: bool,
    /// Owner: entries awaiting a replica, by group and offset.
    pending: BTreeMap<(String, u64), Pending>,
    /// Requester: publishes sent to remote owners.
    publishes: HashMap<PublishId, Sent>,
    /// Requester: recovery reads sent to remote owners, by read id.
    reads: HashMap<u64, Reading>,
    next_read: u64,
    /// Owner: nodes recovering a group, forwarded its messages until the instant given.
    recovering: HashMap<String, Vec<(NodeId, Instant)>>,
    /// Each bucket's epoch as last looked at (to act on changes).
    seen: HashMap<u16, Epoch>,
    /// Owner: the (epoch, replica) each group's history was last sent to.
    synced: HashMap<String, (Epoch, NodeId)>,
    /// Owner: groups whose history was sent and not yet acknowledged, with when (sent
    /// again after [`SYNC_RETRY`]); `None`: to send at the next tick (a refusal, a copy
    /// that did not leave, entries unacknowledged for too long).
    syncing: HashMap<String, Option<Instant>>,
    counts: Counts,
    out: VecDeque<Output>,
}

impl Keeper {
    /// A keeper for node `me` in its boot `boot`, keeping the groups `rules` name within
    /// `max_bytes` (`--history-max-bytes`).
    pub fn new(me: NodeId, boot: u64, rules: Rules, max_bytes: usize) -> Self {
        Keeper {
            me,
            boot,
            rules,
            store: Store::new(max_bytes),
            leaving: false,
            pending: BTreeMap::new(),
            publishes: HashMap::new(),
            reads: HashMap::new(),
            next_read: 0,
            recovering: HashMap::new(),
            seen: HashMap::new(),
            synced: HashMap::new(),
            syncing: HashMap::new(),
            counts: Counts::default(),
            out: VecDeque::new(),
        }
    }

    /// The next thing to do, in order.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// What is held now.
    pub fn stats(&self) -> Stats {
        Stats {
            groups: self.store.len(),
            messages: self.store.messages(),
            bytes: self.store.bytes(),
            pending: self.pending.len(),
        }
    }

    /// The counts since the last call.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// This node drains: from now on it takes no publish it could hand over.
    pub fn handle_leaving(&mut self) {
        self.leaving = true;
    }

    /// A local publish attempt.
    pub fn handle_publish(&mut self, facts: &Facts, ticket: Ticket, publish: Publish) {
        let to = Origin::Local(ticket);
        match facts.assignments.of_group(&publish.group) {
            None => self.answer(to, Err(HistoryError::NotAssigned)),
            Some(a) if a.owner == self.me => self.take(facts, publish, to),
            Some(a) => {
                let owner = a.owner;
                let sent = Sent {
                    ticket,
                    group: publish.group.clone(),
                    owner,
                    at: facts.now,
                };
                if let Some(earlier) = self.publishes.insert(publish.id, sent) {
                    self.answer(
                        Origin::Local(earlier.ticket),
                        Err(HistoryError::Unconfirmed),
                    );
                }
                self.send(
                    owner,
                    History::Publish {
                        id: publish.id,
                        attempt: publish.attempt,
                        group: publish.group,
                        payload: publish.payload,
                        text: publish.text,
                    },
                );
            }
        }
    }

    /// A local recovery: what a client at `since` missed in `group` (`None`: only where
    /// the group stands).
    pub fn handle_recover(
        &mut self,
        facts: &Facts,
        ticket: Ticket,
        group: String,
        since: Option<Position>,
    ) {
        match facts.assignments.of_group(&group).copied() {
            None => self.recovered(ticket, Err(HistoryError::NotAssigned)),
            Some(a) if a.owner == self.me => {
                let result = self.read(facts, &group, since, usize::MAX);
                self.recovered(ticket, result);
            }
            Some(a) => {
                let reading = Reading {
                    ticket,
                    group,
                    owner: a.owner,
                    at: facts.now,
                    recovered: None,
                    entries: Vec::new(),
                };
                self.read_from(reading, since);
            }
        }
    }

    /// A `Send` the driver could not queue (the peer is not connected, or its queue is
    /// full): a request in it did not leave this node.
    pub fn handle_unsent(&mut self, to: NodeId, message: &History) {
        match message {
            History::Publish { id, .. } => {
                if let Some(sent) = self.publishes.remove(id) {
                    let error = HistoryError::OwnerUnreachable(to);
                    self.answer(Origin::Local(sent.ticket), Err(error));
                }
            }
            History::Read { id, .. } => {
                if let Some(reading) = self.reads.remove(id) {
                    self.recovered(reading.ticket, Err(HistoryError::OwnerUnreachable(to)));
                }
            }
            // A replica's copy that did not leave: the group's history goes again at the
            // next tick (its acknowledgement confirms the entries waiting for it).
            History::Append { group, .. } => self.sync_soon(group.clone()),
            History::Sync { groups, .. } => {
                for state in groups {
                    self.sync_soon(state.group.clone());
                }
            }
            // The rest is repaired by timeouts: a requester asks again, an owner whose
            // answer was lost is asked again.
            _ => {}
        }
    }

    /// A `History` message from peer `from`.
    pub fn handle_peer(&mut self, facts: &Facts, from: NodeId, message: History) {
        match message {
            History::Publish {
                id,
                attempt,
                group,
                payload,
                text,
            } => {
                let publish = Publish {
                    id,
                    attempt,
                    group,
                    payload,
                    text,
                };
                self.take(facts, publish, Origin::Remote(from, id));
            }
            History::Published { id, result } => {
                if let Some(sent) = self.publishes.remove(&id) {
                    let result = result
                        .map(|(position, routed)| Taken {
                            position,
                            routed: routed as usize,
                        })
                        .map_err(|r| HistoryError::refused_by(from, r));
                    self.answer(Origin::Local(sent.ticket), result);
                }
            }
            History::Append { group, entry } => {
                let position = entry.position;
                let stored = self.replica_store(facts, from, &group, entry);
                let reply = History::Appended {
                    group,
                    position,
                    stored,
                };
                self.send(from, reply);
            }
            History::Appended {
                group,
                position,
                stored,
            } => self.on_appended(facts, from, group, position, stored),
            History::Sync {
                bucket,
                epoch,
                groups,
            } => self.on_sync(facts, from, bucket, epoch, groups),
            History::Read { id, group, since } => {
                let result = match self.read(facts, &group, since, READ_PAGE) {
                    Ok(r) => {
                        let until = facts.now + RECOVER_WINDOW;
                        let nodes = self.recovering.entry(group).or_default();
                        nodes.retain(|(n, _)| *n != from);
                        nodes.push((from, until));
                        Ok(ReadPage {
                            recovered: r.recovered,
                            top: Position {
                                epoch: r.epoch,
                                offset: r.top,
                            },
                            entries: r.entries,
                            more: r.more,
                        })
                    }
                    Err(e) => Err(e.refusal()),
                };
                self.send(from, History::ReadReply { id, result });
            }
            History::ReadReply { id, result } => {
                let result = result.map_err(|r| HistoryError::refused_by(from, r));
                self.on_read_reply(facts, id, result);
            }
        }
    }

    /// Every [`TICK`]: timeouts, assignment changes, sync retries and the byte budget.
    pub fn handle_tick(&mut self, facts: &Facts) {
        let now = facts.now;
        let mut late = Vec::new();
        for p in self.pending.values_mut().filter(|p| p.orphaned.is_none()) {
            p.waiting.retain(|(origin, since)| {
                let waited = now.saturating_duration_since(*since) >= ACK_PATIENCE;
                if waited {
                    late.push(*origin);
                }
                !waited
            });
        }
        self.pending.retain(|_, p| {
            p.orphaned
                .is_none_or(|at| now.saturating_duration_since(at) < MOVE_GRACE)
        });
        for origin in late {
            self.answer(origin, Err(HistoryError::Unconfirmed));
        }
        // Entries unacknowledged for a while (an append lost with a broken session or a
        // full queue): their group's history goes to the replica again.
        let stale: Vec<String> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.orphaned.is_none() && now.saturating_duration_since(p.sent_at) >= SYNC_RETRY
            })
            .map(|((group, _), _)| group.clone())
            .collect();
        for group in stale {
            if !self.syncing.contains_key(&group) {
                self.sync_soon(group);
            }
        }
        self.expire_requests(facts);
        self.recovering.retain(|_, nodes| {
            nodes.retain(|(_, until)| *until > now);
            !nodes.is_empty()
        });
        self.follow_assignments(facts);
        self.retry_syncs(facts);
        let evicted = self.store.enforce(facts.now_ms);
        self.counts.evictions += evicted.len() as u64;
    }

    // ----- the requester -----

    /// Requests unanswered for [`REQUEST_TIMEOUT`] fail with `Timeout`; those whose group
    /// changed owner meanwhile fail at once, so that they are asked of the new owner.
    fn expire_requests(&mut self, facts: &Facts) {
        let owner_of = |group: &str| facts.assignments.of_group(group).map(|a| a.owner);
        let late = |at: Instant| facts.now.saturating_duration_since(at) >= REQUEST_TIMEOUT;
        let publishes: Vec<(PublishId, HistoryError)> = self
            .publishes
            .iter()
            .filter_map(|(id, s)| {
                if late(s.at) {
                    Some((*id, HistoryError::Timeout))
                } else if owner_of(&s.group) != Some(s.owner) {
                    Some((*id, HistoryError::Unconfirmed))
                } else {
                    None
                }
            })
            .collect();
        for (id, error) in publishes {
            if let Some(sent) = self.publishes.remove(&id) {
                self.answer(Origin::Local(sent.ticket), Err(error));
            }
        }
        let reads: Vec<(u64, HistoryError)> = self
            .reads
            .iter()
            .filter_map(|(id, r)| {
                if late(r.at) {
                    Some((*id, HistoryError::Timeout))
                } else if owner_of(&r.group) != Some(r.owner) {
                    Some((*id, HistoryError::NotOwner(r.owner)))
                } else {
                    None
                }
            })
            .collect();
        for (id, error) in reads {
            if let Some(reading) = self.reads.remove(&id) {
                self.recovered(reading.ticket, Err(error));
            }
        }
    }

    /// Asks the owner for (the next page of) a recovery.
    fn read_from(&mut self, reading: Reading, since: Option<Position>) {
        self.next_read += 1;
        let id = self.next_read;
        let message = History::Read {
            id,
            group: reading.group.clone(),
            since,
        };
        let owner = reading.owner;
        self.reads.insert(id, reading);
        self.send(owner, message);
    }

    /// A page of a recovery: the next is asked for, or the whole answer goes out.
    fn on_read_reply(&mut self, facts: &Facts, id: u64, result: Result<ReadPage, HistoryError>) {
        let Some(mut reading) = self.reads.remove(&id) else {
            return;
        };
        let page = match result {
            Ok(page) => page,
            Err(e) => return self.recovered(reading.ticket, Err(e)),
        };
        // Later pages start inside the history the first one proved complete; one that is
        // not (evicted meanwhile) makes the whole recovery incomplete.
        let recovered = reading.recovered.unwrap_or(true) && page.recovered;
        reading.entries.extend(page.entries);
        match reading.entries.last() {
            Some(last) if page.more && recovered => {
                let since = Some(last.position);
                reading.recovered = Some(true);
                reading.at = facts.now;
                self.read_from(reading, since);
            }
            _ => {
                let recovery = Recovery {
                    recovered,
                    epoch: page.top.epoch,
                    top: page.top.offset,
                    entries: if recovered {
                        reading.entries
                    } else {
                        Vec::new()
                    },
                    more: false,
                };
                self.recovered(reading.ticket, Ok(recovery));
            }
        }
    }

    // ----- the owner -----

    fn assignment(facts: &Facts, group: &str) -> Option<Assignment> {
        facts.assignments.of_group(group).copied()
    }

    fn rule(&self, group: &str) -> (usize, Option<Duration>) {
        self.rules
            .of(group)
            .map_or((FALLBACK_SIZE, None), |r| (r.size, r.ttl))
    }

    /// Whether this process may assign offsets in `a` (the owner, with this boot).
    fn mints(&self, a: &Assignment) -> bool {
        a.owner == self.me && a.owner_boot == self.boot
    }

    /// The owner takes a publish (see the module header).
    fn take(&mut self, facts: &Facts, publish: Publish, origin: Origin) {
        let Publish {
            id,
            attempt,
            group,
            payload,
            text,
        } = publish;
        if payload.len() > MAX_HISTORY_MESSAGE {
            return self.answer(origin, Err(HistoryError::TooLarge(payload.len())));
        }
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
    fn retake(&mut self, facts: &Facts, group: &str, id: PublishId, origin: Origin) -> bool {
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
    fn adopt(&mut self, group: &str, a: &Assignment, now_ms: u64) -> &mut GroupLog {
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
    fn ensure_synced(&mut self, facts: &Facts, group: &str, a: &Assignment, replica: NodeId) {
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
    fn retry_syncs(&mut self, facts: &Facts) {
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

    fn send_sync(&mut self, replica: NodeId, bucket: u16, epoch: Epoch, groups: Vec<GroupState>) {
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
    fn covers(&self, group: &str, ack: Position, entry: &Entry) -> bool {
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
    fn on_appended(
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
    fn follow_assignments(&mut self, facts: &Facts) {
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
    fn pending_of(&self, bucket: u16, f: impl Fn(&Pending) -> bool) -> Vec<(String, u64)> {
        self.pending
            .iter()
            .filter(|((g, _), p)| bucket_of(g) == bucket && f(p))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Pending entries of `bucket` that this owner's history no longer holds (it started
    /// over): they are lost, and their publishers told so.
    fn drop_lost(&mut self, bucket: u16) {
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
    fn confirm_bucket(&mut self, facts: &Facts, bucket: u16) {
        for key in self.pending_of(bucket, |p| p.orphaned.is_none()) {
            if let Some(p) = self.pending.remove(&key) {
                let answers = p.waiting.into_iter().map(|(o, _)| o).collect();
                self.fan_out(facts, key.0, p.entry, answers);
            }
        }
    }

    /// This node lost `bucket`: publishers waiting on it ask the new owner now.
    fn orphan(&mut self, facts: &Facts, bucket: u16) {
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
    fn fan_out(&mut self, facts: &Facts, group: String, entry: Entry, answers: Vec<Origin>) {
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
    fn read(
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

    // ----- the replica -----

    /// The replica stores an owner's message: only the next one, of the epoch this node is
    /// the replica of, from that epoch's owner.
    fn replica_store(&mut self, facts: &Facts, owner: NodeId, group: &str, entry: Entry) -> bool {
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
    fn on_sync(
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

    /// The group's history goes to its replica at the next tick (if this node still
    /// owns it then).
    fn sync_soon(&mut self, group: String) {
        self.syncing.insert(group, None);
    }

    // ----- outputs -----

    fn send(&mut self, to: NodeId, message: History) {
        self.out.push_back(Output::Send { to, message });
    }

    fn answer(&mut self, to: Origin, result: Result<Taken, HistoryError>) {
        self.out.push_back(Output::Answer { to, result });
    }

    fn recovered(&mut self, ticket: Ticket, result: Result<Recovery, HistoryError>) {
        self.out.push_back(Output::Recovered { ticket, result });
    }
}

#[cfg(test)]
mod tests;
