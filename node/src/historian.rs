//! The historian: this node's part in keeping history, as the owner of some buckets, the
//! replica of others, and the way in for publishers and recovering clients.
//!
//! One task owns every ring this node holds (a `history::Store`) and handles, in order,
//! the events: local publishes and recoveries, `History` messages from peers, and a tick.
//! Being one task is what keeps a group's offsets, its replica's acknowledgements and
//! its fan-out in one order.
//!
//! A publish to a history group goes to the owner of its bucket (no hop when that is this
//! node). The owner, if it holds the bucket's current epoch (with this very boot) and is
//! in touch with a majority, assigns the next offset, sends the message to the replica,
//! and on the replica's acknowledgement fans it out (here and to every interested peer)
//! and answers the publisher with its position. No acknowledgement within
//! [`ACK_TIMEOUT`]: the publisher gets an error (the message may still be delivered
//! later, if the acknowledgement comes). The replica stores only the next offset of the
//! epoch it is the replica of, so an owner whose epoch has been replaced can get nothing
//! acknowledged (fencing).
//!
//! A recovery asks the owner for everything after a position; the owner first forwards
//! the group's new messages to the asking node (for [`RECOVER_WINDOW`], until gossip
//! covers it), then answers from its ring, so nothing published meanwhile falls between
//! the two. Details and limits: docs/cluster.md, "History".

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use switchboard_proto::peer::{
    GroupState, History, MAX_PEER_MESSAGE, NodeId, PeerMessage, Position, ReadPage,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::clock::unix_millis;
use crate::cluster::Cluster;
use crate::config::HistoryRule;
use crate::history::{Assignment, Entry, Epoch, GroupLog, Recovery, Rules, Store, bucket_of};
use crate::hub::{Encoded, Hub};
use crate::metrics::{Counter, Row};
use crate::presence::SharedReplica;

/// How long the owner waits for its replica's acknowledgement before answering the
/// publisher with an error.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a node waits for the owner's answer (publish or recovery).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the owner forwards a group's messages to a node that asked to recover it,
/// whatever gossip says (gossip takes 10 ms to tell it the node is interested).
pub const RECOVER_WINDOW: Duration = Duration::from_secs(5);
/// Acknowledgements awaited longer than this are given up (the message stays in the ring).
pub const PENDING_LIMIT: Duration = Duration::from_secs(10);
/// How often timeouts, assignment changes and the byte budget are looked at.
pub const TICK: Duration = Duration::from_millis(100);
/// How long the owner waits for a replica to acknowledge a group's history before it
/// sends it again.
pub const SYNC_RETRY: Duration = Duration::from_secs(1);
/// Bytes of group states in one `Sync` message (a longer history goes in parts).
pub const SYNC_CHUNK: usize = 1024 * 1024;
/// Bytes of messages in one answer to a recovery read (the reader asks again for more).
pub const READ_PAGE: usize = 4 * 1024 * 1024;
/// The largest message a history group takes: it must fit in one peer message with
/// room to spare (plain groups have no such bound beyond `--max-command-bytes`).
pub const MAX_HISTORY_MESSAGE: usize = MAX_PEER_MESSAGE - 64 * 1024;
/// Events waiting for the historian.
pub const INBOX: usize = 65_536;
/// Messages kept by a group that no rule of this node names (a peer with another
/// `--history`): the replica still keeps it.
const FALLBACK_SIZE: usize = 100;

/// Where a published message went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Published {
    /// Connections it was routed to.
    pub routed: usize,
    pub position: Position,
}

/// Why a history publish or recovery failed; the caller may retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// No owner is assigned to the group's bucket yet (the cluster is forming).
    #[error("no owner for this group's history yet")]
    NotAssigned,
    /// The owner could not be reached.
    #[error("the owner of this group's history (node {0}) is not reachable")]
    OwnerUnreachable(NodeId),
    /// This node is the owner but not in touch with a majority: it takes nothing it
    /// could not replicate.
    #[error("the owner of this group's history is cut off from the majority")]
    CutOff,
    /// The replica did not acknowledge in time.
    #[error("the message was not replicated in time")]
    NotReplicated,
    /// No answer from the owner in time.
    #[error("no answer from the owner of this group's history in time")]
    Timeout,
    /// The owner refused, for the reason given.
    #[error("{0}")]
    Refused(String),
    /// The message is larger than [`MAX_HISTORY_MESSAGE`].
    #[error("message of {0} bytes is over the {MAX_HISTORY_MESSAGE}-byte limit of history groups")]
    TooLarge(usize),
    /// The node is stopping.
    #[error("the node is stopping")]
    Stopped,
}

/// The historian's counters.
#[derive(Debug, Default)]
pub struct HistoryMetrics {
    pub publishes: Counter,
    pub publish_failures: Counter,
    pub recoveries: Counter,
    pub recoveries_incomplete: Counter,
    pub syncs_sent: Counter,
    pub evictions: Counter,
}

enum Event {
    Publish {
        group: String,
        payload: Bytes,
        text: bool,
        reply: oneshot::Sender<Result<Published, HistoryError>>,
    },
    Recover {
        group: String,
        since: Option<Position>,
        reply: oneshot::Sender<Result<Recovery, HistoryError>>,
    },
    Stats(oneshot::Sender<(usize, usize, usize)>),
}

/// The handle the router and the mesh use. See the module header.
#[derive(Debug)]
pub struct Historian {
    events: mpsc::Sender<Event>,
    rules: Rules,
    pub metrics: Arc<HistoryMetrics>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Event::Publish { .. } => "Publish",
            Event::Recover { .. } => "Recover",
            Event::Stats(_) => "Stats",
        })
    }
}

/// What the historian needs of the layers below.
#[derive(Debug, Clone)]
pub struct HistorianDeps {
    pub me: NodeId,
    pub boot: u64,
    pub rules: Vec<HistoryRule>,
    pub max_bytes: usize,
    pub replica: Arc<SharedReplica>,
    pub cluster: Arc<Cluster>,
    pub hub: Arc<Hub>,
    pub shutdown: CancellationToken,
}

impl Historian {
    /// Starts the historian's task; `peers` is where the mesh puts `History` messages.
    pub fn start(deps: HistorianDeps, peers: mpsc::Receiver<(NodeId, History)>) -> Arc<Historian> {
        let (events, rx) = mpsc::channel(INBOX);
        let rules = Rules::new(deps.rules.clone());
        let metrics = Arc::new(HistoryMetrics::default());
        let core = Core {
            me: deps.me,
            boot: deps.boot,
            rules: rules.clone(),
            store: Store::new(deps.max_bytes),
            replica: deps.replica.clone(),
            cluster: deps.cluster.clone(),
            hub: deps.hub.clone(),
            metrics: metrics.clone(),
            pending: BTreeMap::new(),
            requests: HashMap::new(),
            recovering: HashMap::new(),
            seen: HashMap::new(),
            synced: HashMap::new(),
            syncing: HashMap::new(),
            next_id: 1,
        };
        tokio::spawn(core.run(rx, peers, deps.shutdown));
        Arc::new(Historian {
            events,
            rules,
            metrics,
        })
    }

    /// Whether `group` keeps history on this node.
    pub fn keeps(&self, group: &str) -> bool {
        self.rules.of(group).is_some()
    }

    /// Publishes to a history group; answers once the message is replicated (or why not).
    pub async fn publish(
        &self,
        group: &str,
        payload: Bytes,
        text: bool,
    ) -> Result<Published, HistoryError> {
        if payload.len() > MAX_HISTORY_MESSAGE {
            self.metrics.publish_failures.inc();
            return Err(HistoryError::TooLarge(payload.len()));
        }
        let result = self
            .ask(|reply| Event::Publish {
                group: group.to_owned(),
                payload,
                text,
                reply,
            })
            .await;
        match &result {
            Ok(_) => self.metrics.publishes.inc(),
            Err(_) => self.metrics.publish_failures.inc(),
        }
        result
    }

    /// What a client at `since` missed in `group`; `None`: only where the group stands (a
    /// client subscribing afresh learns its position).
    pub async fn recover(
        &self,
        group: &str,
        since: Option<Position>,
    ) -> Result<Recovery, HistoryError> {
        let result = self
            .ask(|reply| Event::Recover {
                group: group.to_owned(),
                since,
                reply,
            })
            .await;
        if since.is_some() {
            self.metrics.recoveries.inc();
            if !result.as_ref().is_ok_and(|r| r.recovered) {
                self.metrics.recoveries_incomplete.inc();
            }
        }
        result
    }

    /// Sends the historian task the event `make` builds around a reply channel, and
    /// waits for its answer (`Stopped` when the task is gone).
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, HistoryError>>) -> Event,
    ) -> Result<T, HistoryError> {
        let (reply, answer) = oneshot::channel();
        self.events
            .send(make(reply))
            .await
            .map_err(|_| HistoryError::Stopped)?;
        answer.await.map_err(|_| HistoryError::Stopped)?
    }

    /// (groups, messages, bytes) held here, for `/metrics`.
    pub async fn stats(&self) -> (usize, usize, usize) {
        let (reply, answer) = oneshot::channel();
        if self.events.try_send(Event::Stats(reply)).is_err() {
            return (0, 0, 0);
        }
        tokio::time::timeout(Duration::from_secs(1), answer)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    }

    /// The historian's rows in `/metrics` (with the figures from [`Historian::stats`]).
    pub fn rows(&self, (groups, messages, bytes): (usize, usize, usize)) -> Vec<Row> {
        let m = &self.metrics;
        vec![
            Row::counter(
                "history_publishes_total",
                "Publishes to history groups answered with a position.",
                m.publishes.get(),
            ),
            Row::counter(
                "history_publish_failures_total",
                "Publishes to history groups answered with an error (no owner, cut off, not replicated).",
                m.publish_failures.get(),
            ),
            Row::counter(
                "history_recoveries_total",
                "Recoveries asked by clients on this node.",
                m.recoveries.get(),
            ),
            Row::counter(
                "history_recoveries_incomplete_total",
                "Recoveries answered recovered: false (or failed).",
                m.recoveries_incomplete.get(),
            ),
            Row::counter(
                "history_syncs_total",
                "Group histories sent to a replica (a new replica, or one out of step).",
                m.syncs_sent.get(),
            ),
            Row::counter(
                "history_evictions_total",
                "Groups whose messages were dropped to stay within --history-max-bytes.",
                m.evictions.get(),
            ),
            Row::gauge(
                "history_groups",
                "Group histories held here, as owner or replica.",
                groups as u64,
            ),
            Row::gauge(
                "history_messages",
                "Messages held in histories here.",
                messages as u64,
            ),
            Row::gauge(
                "history_bytes",
                "Bytes of history held here, as --history-max-bytes counts them.",
                bytes as u64,
            ),
        ]
    }
}

/// Who is waiting for a publish the owner took.
#[derive(Debug)]
enum Origin {
    Local(oneshot::Sender<Result<Published, HistoryError>>),
    Remote(NodeId, u64),
}

#[derive(Debug)]
struct Pending {
    entry: Entry,
    origin: Option<Origin>,
    since: Instant,
}

#[derive(Debug)]
enum Request {
    Publish(oneshot::Sender<Result<Published, HistoryError>>),
    /// A recovery read, with the pages received so far.
    Read {
        reply: oneshot::Sender<Result<Recovery, HistoryError>>,
        group: String,
        recovered: Option<bool>,
        entries: Vec<Entry>,
    },
}

struct Core {
    me: NodeId,
    boot: u64,
    rules: Rules,
    store: Store,
    replica: Arc<SharedReplica>,
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
    metrics: Arc<HistoryMetrics>,
    /// Owner: messages waiting for the replica's acknowledgement, by group and offset.
    pending: BTreeMap<(String, u64), Pending>,
    /// Requests this node sent to owners, by id.
    requests: HashMap<u64, (Request, NodeId, Instant)>,
    /// Owner: nodes recovering a group, forwarded its messages until the instant given.
    recovering: HashMap<String, Vec<(NodeId, Instant)>>,
    /// Each bucket's epoch as last looked at (to act on changes).
    seen: HashMap<u16, Epoch>,
    /// Owner: the (epoch, replica) each group's history was last sent to.
    synced: HashMap<String, (Epoch, NodeId)>,
    /// Owner: groups whose history was sent to the replica and not yet acknowledged,
    /// with when it was sent (sent again after [`SYNC_RETRY`], or at the next tick
    /// after a refusal: say, a replica that had not applied its assignment yet).
    syncing: HashMap<String, Instant>,
    next_id: u64,
}

impl Core {
    async fn run(
        mut self,
        mut events: mpsc::Receiver<Event>,
        mut peers: mpsc::Receiver<(NodeId, History)>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(event) = events.recv() => self.on_event(event),
                Some((peer, message)) = peers.recv() => self.on_peer(peer, message),
                _ = tick.tick() => self.on_tick(),
            }
        }
    }

    fn assignment(&self, group: &str) -> Option<Assignment> {
        self.replica.read().assignments.of_group(group).copied()
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

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Publish {
                group,
                payload,
                text,
                reply,
            } => match self.assignment(&group) {
                None => {
                    let _ = reply.send(Err(HistoryError::NotAssigned));
                }
                Some(a) if a.owner == self.me => {
                    self.owner_publish(group, payload, text, Origin::Local(reply));
                }
                Some(a) => {
                    let id = self.next_id();
                    let message = History::Publish {
                        id,
                        group,
                        payload,
                        text,
                    };
                    if self.cluster.send(a.owner, PeerMessage::History(message)) {
                        self.requests
                            .insert(id, (Request::Publish(reply), a.owner, Instant::now()));
                    } else {
                        let _ = reply.send(Err(HistoryError::OwnerUnreachable(a.owner)));
                    }
                }
            },
            Event::Recover {
                group,
                since,
                reply,
            } => match self.assignment(&group) {
                None => {
                    let _ = reply.send(Err(HistoryError::NotAssigned));
                }
                Some(a) if a.owner == self.me => {
                    let _ = reply.send(self.read(&group, since, usize::MAX));
                }
                Some(a) => {
                    let request = Request::Read {
                        reply,
                        group,
                        recovered: None,
                        entries: Vec::new(),
                    };
                    self.read_from(a.owner, request, since);
                }
            },
            Event::Stats(reply) => {
                let _ = reply.send((self.store.len(), self.store.messages(), self.store.bytes()));
            }
        }
    }

    /// Asks `owner` for (the next page of) a recovery.
    fn read_from(&mut self, owner: NodeId, request: Request, since: Option<Position>) {
        let Request::Read { group, .. } = &request else {
            return;
        };
        let id = self.next_id();
        let message = History::Read {
            id,
            group: group.clone(),
            since,
        };
        if self.cluster.send(owner, PeerMessage::History(message)) {
            self.requests.insert(id, (request, owner, Instant::now()));
        } else if let Request::Read { reply, .. } = request {
            let _ = reply.send(Err(HistoryError::OwnerUnreachable(owner)));
        }
    }

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn answer(&self, origin: Origin, result: Result<Published, HistoryError>) {
        match origin {
            Origin::Local(reply) => {
                let _ = reply.send(result);
            }
            Origin::Remote(peer, id) => {
                let result = result
                    .map(|p| (p.position, p.routed as u64))
                    .map_err(|e| e.to_string());
                self.cluster.send(
                    peer,
                    PeerMessage::History(History::Published { id, result }),
                );
            }
        }
    }

    /// The group's log as the owner of `a` holds it: the one of this epoch, the previous
    /// epoch's continued when `a` continues it, or a new one.
    fn adopt(&mut self, group: &str, a: &Assignment) -> &mut GroupLog {
        let (size, ttl) = self.rule(group);
        let now = unix_millis();
        let current = self.store.get(group).map(GroupLog::epoch);
        match current {
            Some(epoch) if epoch == a.epoch => {}
            Some(epoch) if Some(epoch) == a.continues => {
                if let Some(log) = self.store.get_mut(group) {
                    log.continue_as(a.epoch);
                }
            }
            held => {
                if let Some(held) = held {
                    warn!(
                        group,
                        held,
                        epoch = a.epoch,
                        continues = ?a.continues,
                        "history of a group starts over: the log held here is not of an epoch the assignment continues"
                    );
                }
                self.store
                    .insert(group.to_owned(), GroupLog::new(a.epoch, size, ttl, now));
            }
        }
        self.store
            .entry(group, || GroupLog::new(a.epoch, size, ttl, now))
    }

    fn owner_publish(&mut self, group: String, payload: Bytes, text: bool, origin: Origin) {
        let Some(a) = self.assignment(&group) else {
            return self.answer(origin, Err(HistoryError::NotAssigned));
        };
        if !self.mints(&a) {
            return self.answer(
                origin,
                Err(HistoryError::Refused(format!(
                    "node {} does not own this group's history now",
                    self.me
                ))),
            );
        }
        if !self.cluster.in_majority() {
            return self.answer(origin, Err(HistoryError::CutOff));
        }
        self.adopt(&group, &a);
        if let Some(replica) = a.replica {
            self.ensure_synced(&group, &a, replica);
        }
        let now_ms = unix_millis();
        let entry = self.adopt(&group, &a).append(payload, text, now_ms);
        match a.replica {
            None => {
                let routed = self.fan_out(&group, &entry);
                self.answer(
                    origin,
                    Ok(Published {
                        routed,
                        position: entry.position,
                    }),
                );
            }
            Some(replica) => {
                let offset = entry.position.offset;
                let append = History::Append {
                    group: group.clone(),
                    entry: entry.clone(),
                };
                self.cluster.send(replica, PeerMessage::History(append));
                self.pending.insert(
                    (group, offset),
                    Pending {
                        entry,
                        origin: Some(origin),
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    /// Sends the group's whole history to the replica if it has not got it in this epoch.
    fn ensure_synced(&mut self, group: &str, a: &Assignment, replica: NodeId) {
        if self.synced.get(group) == Some(&(a.epoch, replica)) {
            return;
        }
        if let Some(log) = self.store.get(group) {
            let parts = log.state(group, SYNC_CHUNK);
            self.send_sync(replica, bucket_of(group), a.epoch, parts);
            self.syncing.insert(group.to_owned(), Instant::now());
        }
        self.synced.insert(group.to_owned(), (a.epoch, replica));
    }

    /// Sends again the histories not acknowledged in time, or refused.
    fn retry_syncs(&mut self, now: Instant) {
        let due: Vec<String> = self
            .syncing
            .iter()
            .filter(|(_, sent)| now.saturating_duration_since(**sent) >= SYNC_RETRY)
            .map(|(g, _)| g.clone())
            .collect();
        for group in due {
            self.syncing.remove(&group);
            if let Some(a) = self.assignment(&group)
                && self.mints(&a)
                && let Some(replica) = a.replica
            {
                self.synced.remove(&group);
                self.ensure_synced(&group, &a, replica);
            }
        }
    }

    fn send_sync(&self, replica: NodeId, bucket: u16, epoch: Epoch, groups: Vec<GroupState>) {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        let total = groups.len();
        for (i, state) in groups.into_iter().enumerate() {
            bytes += state.entries.iter().map(|e| e.payload.len()).sum::<usize>() + 64;
            chunk.push(state);
            let last = i + 1 == total;
            if bytes >= SYNC_CHUNK || last {
                let message = History::Sync {
                    bucket,
                    epoch,
                    groups: std::mem::take(&mut chunk),
                };
                self.cluster.send(replica, PeerMessage::History(message));
                self.metrics.syncs_sent.inc();
                bytes = 0;
            }
        }
    }

    /// Delivers a replicated message here and to every interested peer; returns the
    /// connections it was routed to.
    fn fan_out(&mut self, group: &str, entry: &Entry) -> usize {
        let local = self.hub.publish_local(
            group,
            &Encoded::with_position(entry.payload.clone(), entry.position),
        );
        let now = Instant::now();
        let also: Vec<NodeId> = match self.recovering.get_mut(group) {
            Some(nodes) => {
                nodes.retain(|(_, until)| *until > now);
                nodes.iter().map(|(n, _)| *n).collect()
            }
            None => Vec::new(),
        };
        let remote = self.cluster.forward_positioned(
            group,
            &entry.payload,
            entry.text,
            entry.position,
            &also,
        );
        local + remote
    }

    /// The owner's answer to a recovery.
    fn read(
        &mut self,
        group: &str,
        since: Option<Position>,
        page_bytes: usize,
    ) -> Result<Recovery, HistoryError> {
        let a = self.assignment(group).ok_or(HistoryError::NotAssigned)?;
        if !self.mints(&a) {
            return Err(HistoryError::Refused(format!(
                "node {} does not own this group's history now",
                self.me
            )));
        }
        let now_ms = unix_millis();
        let log = self.adopt(group, &a);
        Ok(match since {
            Some(since) => log.recover(since, now_ms, page_bytes),
            None => Recovery {
                recovered: true,
                epoch: log.epoch(),
                top: log.top(),
                entries: Vec::new(),
                more: false,
            },
        })
    }

    fn on_peer(&mut self, peer: NodeId, message: History) {
        match message {
            History::Publish {
                id,
                group,
                payload,
                text,
            } => self.owner_publish(group, payload, text, Origin::Remote(peer, id)),
            History::Published { id, result } => {
                if let Some((Request::Publish(reply), _, _)) = self.requests.remove(&id) {
                    let _ = reply.send(
                        result
                            .map(|(position, routed)| Published {
                                routed: routed as usize,
                                position,
                            })
                            .map_err(HistoryError::Refused),
                    );
                }
            }
            History::Append { group, entry } => {
                let stored = self.replica_store(peer, &group, entry.clone());
                let reply = History::Appended {
                    group,
                    position: entry.position,
                    stored,
                };
                self.cluster.send(peer, PeerMessage::History(reply));
            }
            History::Appended {
                group,
                position,
                stored,
            } => self.on_appended(peer, group, position, stored),
            History::Sync {
                bucket,
                epoch,
                groups,
            } => {
                let valid = self
                    .replica
                    .read()
                    .assignments
                    .get(bucket)
                    .is_some_and(|a| {
                        a.epoch == epoch && a.owner == peer && a.replica == Some(self.me)
                    });
                if !valid {
                    // Perhaps this node has not applied the assignment yet: the owner
                    // sends it again.
                    debug!(
                        peer,
                        bucket, epoch, "history sync for an epoch this node does not replicate"
                    );
                    for state in groups.into_iter().filter(|s| !s.more) {
                        let refusal = History::Appended {
                            position: Position {
                                epoch: state.epoch,
                                offset: state.top,
                            },
                            group: state.group,
                            stored: false,
                        };
                        self.cluster.send(peer, PeerMessage::History(refusal));
                    }
                    return;
                }
                let now_ms = unix_millis();
                for state in groups {
                    let (size, ttl) = self.rule(&state.group);
                    let group = state.group.clone();
                    let top = Position {
                        epoch: state.epoch,
                        offset: state.top,
                    };
                    let more = state.more;
                    let held = if state.part == 0 {
                        self.store.insert(
                            group.clone(),
                            GroupLog::from_state(state, size, ttl, now_ms),
                        );
                        true
                    } else {
                        self.store
                            .get_mut(&group)
                            .is_some_and(|log| log.extend(state, now_ms))
                    };
                    if !more {
                        let ack = History::Appended {
                            group,
                            position: top,
                            stored: held,
                        };
                        self.cluster.send(peer, PeerMessage::History(ack));
                    }
                }
            }
            History::Read { id, group, since } => {
                let result = match self.read(&group, since, READ_PAGE) {
                    Ok(r) => {
                        let until = Instant::now() + RECOVER_WINDOW;
                        let nodes = self.recovering.entry(group).or_default();
                        nodes.retain(|(n, _)| *n != peer);
                        nodes.push((peer, until));
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
                    Err(e) => Err(e.to_string()),
                };
                let reply = History::ReadReply { id, result };
                self.cluster.send(peer, PeerMessage::History(reply));
            }
            History::ReadReply { id, result } => self.on_read_reply(peer, id, result),
        }
    }

    /// A page of a recovery: the next is asked for, or the whole answer goes to the client.
    fn on_read_reply(&mut self, owner: NodeId, id: u64, result: Result<ReadPage, String>) {
        let Some((
            Request::Read {
                reply,
                group,
                recovered,
                mut entries,
            },
            _,
            _,
        )) = self.requests.remove(&id)
        else {
            return;
        };
        let page = match result {
            Ok(page) => page,
            Err(e) => {
                let _ = reply.send(Err(HistoryError::Refused(e)));
                return;
            }
        };
        // Later pages start inside the history the first one proved complete; one that is
        // not (evicted meanwhile) makes the whole recovery incomplete.
        let recovered = recovered.unwrap_or(true) && page.recovered;
        entries.extend(page.entries);
        match entries.last() {
            Some(last) if page.more && recovered => {
                let since = Some(last.position);
                let request = Request::Read {
                    reply,
                    group,
                    recovered: Some(true),
                    entries,
                };
                self.read_from(owner, request, since);
            }
            _ => {
                let _ = reply.send(Ok(Recovery {
                    recovered,
                    epoch: page.top.epoch,
                    top: page.top.offset,
                    entries: if recovered { entries } else { Vec::new() },
                    more: false,
                }));
            }
        }
    }

    /// The replica stores an owner's message: only the next one, of the epoch this node is
    /// the replica of, from that epoch's owner.
    fn replica_store(&mut self, owner: NodeId, group: &str, entry: Entry) -> bool {
        let Some(a) = self.assignment(group) else {
            return false;
        };
        if a.owner != owner || a.replica != Some(self.me) || a.epoch != entry.position.epoch {
            return false;
        }
        let (size, ttl) = self.rule(group);
        let now_ms = unix_millis();
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

    /// The owner hears from its replica: acknowledged entries fan out, in offset order; a
    /// refusal has the group's whole history sent again.
    fn on_appended(&mut self, peer: NodeId, group: String, position: Position, stored: bool) {
        let Some(a) = self.assignment(&group) else {
            return;
        };
        if !self.mints(&a) || a.replica != Some(peer) {
            return;
        }
        if !stored {
            // Sent again at the next tick (at most once a tick, however many refusals).
            let due = Instant::now()
                .checked_sub(SYNC_RETRY)
                .unwrap_or_else(Instant::now);
            self.syncing.insert(group, due);
            return;
        }
        self.syncing.remove(&group);
        let acked: Vec<(String, u64)> = self
            .pending
            .range((group.clone(), 0)..=(group.clone(), position.offset))
            .filter(|(_, p)| p.entry.position.epoch == position.epoch)
            .map(|(k, _)| k.clone())
            .collect();
        for key in acked {
            if let Some(mut p) = self.pending.remove(&key) {
                let routed = self.fan_out(&group, &p.entry);
                if let Some(origin) = p.origin.take() {
                    self.answer(
                        origin,
                        Ok(Published {
                            routed,
                            position: p.entry.position,
                        }),
                    );
                }
            }
        }
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Publishers waiting too long get an error; messages waiting far too long are
        // given up (they stay in the ring).
        let mut late = Vec::new();
        for (key, p) in self.pending.iter_mut() {
            let waited = now.duration_since(p.since);
            if waited >= ACK_TIMEOUT
                && let Some(origin) = p.origin.take()
            {
                late.push(origin);
            }
            if waited >= PENDING_LIMIT {
                debug!(group = %key.0, offset = key.1, "history message never acknowledged");
            }
        }
        self.pending
            .retain(|_, p| now.duration_since(p.since) < PENDING_LIMIT);
        for origin in late {
            self.answer(origin, Err(HistoryError::NotReplicated));
        }
        let expired: Vec<u64> = self
            .requests
            .iter()
            .filter(|(_, (_, _, at))| now.duration_since(*at) >= REQUEST_TIMEOUT)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some((request, _, _)) = self.requests.remove(&id) {
                match request {
                    Request::Publish(reply) => {
                        let _ = reply.send(Err(HistoryError::Timeout));
                    }
                    Request::Read { reply, .. } => {
                        let _ = reply.send(Err(HistoryError::Timeout));
                    }
                }
            }
        }
        self.recovering.retain(|_, nodes| {
            nodes.retain(|(_, until)| *until > now);
            !nodes.is_empty()
        });
        self.follow_assignments();
        self.retry_syncs(now);
        let evicted = self.store.enforce(unix_millis());
        if !evicted.is_empty() {
            self.metrics.evictions.add(evicted.len() as u64);
            warn!(
                groups = evicted.len(),
                "history over --history-max-bytes: the least recently used groups lost their messages"
            );
        }
    }

    /// Acts on buckets whose epoch changed: as their owner, continue (or start) their
    /// histories and send them to the replica; as neither owner nor replica, forget them.
    fn follow_assignments(&mut self) {
        let changed: Vec<(u16, Assignment)> = {
            let replica = self.replica.read();
            replica
                .assignments
                .iter()
                .filter(|(b, a)| self.seen.get(b) != Some(&a.epoch))
                .map(|(b, a)| (b, *a))
                .collect()
        };
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
                    let parts = self.adopt(group, &a).state(group, SYNC_CHUNK);
                    states.extend(parts);
                }
                // Pending messages of the replaced epoch will never be acknowledged.
                self.fail_pending(bucket, a.epoch);
                if let Some(replica) = a.replica {
                    let now = Instant::now();
                    for group in &groups {
                        self.synced.insert(group.clone(), (a.epoch, replica));
                        self.syncing.insert(group.clone(), now);
                    }
                    if !states.is_empty() {
                        self.send_sync(replica, bucket, a.epoch, states);
                    }
                }
            } else {
                self.fail_pending(bucket, a.epoch);
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

    /// Fails the pending messages of `bucket` from an epoch other than `epoch`.
    fn fail_pending(&mut self, bucket: u16, epoch: Epoch) {
        let stale: Vec<(String, u64)> = self
            .pending
            .iter()
            .filter(|((g, _), p)| bucket_of(g) == bucket && p.entry.position.epoch != epoch)
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(mut p) = self.pending.remove(&key)
                && let Some(origin) = p.origin.take()
            {
                self.answer(origin, Err(HistoryError::NotReplicated));
            }
        }
    }
}
