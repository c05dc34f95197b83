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
//! **Recovering.** A recovery asks the owner for a page of what followed a position (at
//! most [`READ_PAGE`] bytes); the client's session writes it and asks for the next
//! from the last it wrote, so a recovering client holds one page, not the history. The
//! owner first forwards the group's new messages to the asking node (for
//! [`RECOVER_WINDOW`], until gossip covers it), then answers from its ring. A node
//! sends at most [`MAX_READS_IN_FLIGHT`] reads to owners at once, at most
//! [`MAX_READS_PER_OWNER`] to one (an owner that went silent holds its slots for
//! [`REQUEST_TIMEOUT`] at most, and not the others'); the rest queue, for as long as
//! it takes (every read is answered or times out, so the queue moves), and the queued
//! asks of one group from one position go as one read whose page answers them all (a
//! recovery storm after a node loss costs a read per page, not per client). A read is
//! merged only with asks queued before it left: the owner reads after every one of
//! them subscribed, so none misses what came between.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
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
/// Bytes of messages in one answer to a recovery read (the reader asks again for more):
/// what a recovering client holds at once, besides the message being written.
pub const READ_PAGE: usize = 1024 * 1024;
/// Recovery reads this node has sent to owners and not had answered; more wait in the
/// queue (one slot serves every queued ask of one group from one position).
pub const MAX_READS_IN_FLIGHT: usize = 16;
/// Of which one owner may hold at most this many.
pub const MAX_READS_PER_OWNER: usize = MAX_READS_IN_FLIGHT / 2;
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
    /// Recovery asks waiting for a read slot.
    pub asks_queued: usize,
}

/// Events counted since the last [`Keeper::take_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub syncs_sent: u64,
    pub evictions: u64,
    /// Buckets this node took over as owner, continuing another owner's history (its
    /// owner died, restarted or drained; or a planned hand-over to this node).
    pub takeovers: u64,
    /// Recovery pages this node's clients asked of remote owners, and the reads sent
    /// for them (one answers every ask of its page queued before it left).
    pub recovery_asks: u64,
    pub recovery_reads: u64,
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

/// A recovery read sent to a remote owner, and the asks its page answers.
#[derive(Debug)]
struct Reading {
    tickets: Vec<Ticket>,
    group: String,
    owner: NodeId,
    at: Instant,
}

/// A page asked for: the group, and the position it follows.
type ReadKey = (String, Option<Position>);

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
    /// Requester: pages waiting for a read slot, in the order first asked, each with
    /// its asks.
    queued: VecDeque<ReadKey>,
    asks: HashMap<ReadKey, Vec<Ticket>>,
    /// Owner: nodes recovering a group, forwarded its messages until the instant given.
    recovering: HashMap<String, Vec<(NodeId, Instant)>>,
    /// Each bucket's epoch as last looked at (to act on changes).
    seen: HashMap<u16, Epoch>,
    /// Buckets this process owned at their last change.
    owned: HashSet<u16>,
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
            queued: VecDeque::new(),
            asks: HashMap::new(),
            recovering: HashMap::new(),
            seen: HashMap::new(),
            owned: HashSet::new(),
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
            asks_queued: self.asks.values().map(Vec::len).sum(),
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
        if let Err(e) = Self::fits(&publish) {
            return self.answer(to, Err(e));
        }
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

    /// A local recovery: a page of what a client at `since` missed in `group` (`None`:
    /// only where the group stands); `more` says to ask again after its last entry.
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
                let result = self.read(facts, &group, since, READ_PAGE);
                self.recovered(ticket, result);
            }
            Some(_) => {
                self.queue_read(ticket, group, since);
                self.send_reads(facts);
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
                    let error = HistoryError::OwnerUnreachable(to);
                    self.recovered_all(reading.tickets, Err(error));
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
                let origin = Origin::Remote(from, id);
                match Self::fits(&publish) {
                    Ok(()) => self.take(facts, publish, origin),
                    Err(e) => self.answer(origin, Err(e)),
                }
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
        self.send_reads(facts);
        self.recovering.retain(|_, nodes| {
            nodes.retain(|(_, until)| *until > now);
            !nodes.is_empty()
        });
        self.follow_assignments(facts);
        self.retry_syncs(facts);
        let evicted = self.store.enforce(facts.now_ms);
        self.counts.evictions += evicted.len() as u64;
    }

    /// Whether a publish is small enough for history (checked where it enters this node:
    /// from a local publisher, or from a peer).
    fn fits(publish: &Publish) -> Result<(), HistoryError> {
        match publish.payload.len() {
            n if n > MAX_HISTORY_MESSAGE => Err(HistoryError::TooLarge(n)),
            _ => Ok(()),
        }
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

    /// One answer for every ask a read served (the entries' bytes are shared).
    fn recovered_all(&mut self, tickets: Vec<Ticket>, result: Result<Recovery, HistoryError>) {
        for ticket in tickets {
            self.recovered(ticket, result.clone());
        }
    }
}

mod owner;
mod replica;
mod requester;

#[cfg(test)]
mod tests;
