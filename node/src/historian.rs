//! The historian: the driver of this node's [`Keeper`] (`crate::history::keeper`), the
//! state machine that decides everything about history (offsets, replication, fencing,
//! retries recognised by their publish id, recovery pages, hand-overs).
//!
//! One task owns the keeper and feeds it, in order: local publishes and recoveries (from
//! the router, through [`Historian`]), `History` messages from peers (from the mesh), the
//! drain, and a tick. Before each call it reads the [`Facts`] (the time, the assignments
//! as committed through Raft, whether the mesh reaches a majority); after each it carries
//! out the keeper's outputs: queue a message for a peer (telling the keeper when it could
//! not), fan a replicated message out here and to the interested peers, answer a local
//! request or a peer's. Being one task is what keeps a group's offsets, its replica's
//! acknowledgements and its fan-out in one order. Details and limits: docs/cluster.md,
//! "History".

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use switchboard_proto::peer::{History, NodeId, PeerMessage, Position, PublishId};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clock::unix_millis;
use crate::cluster::Cluster;
use crate::config::HistoryRule;
use crate::history::keeper::{Facts, Origin, Output, Publish, TICK, Taken, Ticket};
use crate::history::{HistoryError, Keeper, Recovery, Rules};
use crate::hub::{Encoded, Hub};
use crate::metrics::{Counter, Gauge, Row};
use crate::presence::SharedReplica;

/// Events waiting for the historian.
pub const INBOX: usize = 65_536;

/// The historian's counters and gauges (the gauges set at every tick).
#[derive(Debug, Default)]
pub struct HistoryMetrics {
    pub publishes: Counter,
    pub publish_failures: Counter,
    pub publish_retries: Counter,
    pub recoveries: Counter,
    pub recoveries_incomplete: Counter,
    pub syncs_sent: Counter,
    pub evictions: Counter,
    pub takeovers: Counter,
    pub recovery_asks: Counter,
    pub recovery_reads: Counter,
    pub recovery_asks_queued: Gauge,
    pub groups: Gauge,
    pub messages: Gauge,
    pub bytes: Gauge,
    pub pending: Gauge,
}

enum Event {
    Publish {
        publish: Publish,
        reply: oneshot::Sender<Result<Taken, HistoryError>>,
    },
    Recover {
        group: String,
        since: Option<Position>,
        reply: oneshot::Sender<Result<Recovery, HistoryError>>,
    },
    Leaving,
}

/// The handle the router uses. See the module header.
#[derive(Debug)]
pub struct Historian {
    events: mpsc::Sender<Event>,
    rules: Rules,
    me: NodeId,
    boot: u64,
    next_publish: std::sync::atomic::AtomicU64,
    pub metrics: Arc<HistoryMetrics>,
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
        let driver = Driver {
            keeper: Keeper::new(deps.me, deps.boot, rules.clone(), deps.max_bytes),
            replica: deps.replica.clone(),
            cluster: deps.cluster.clone(),
            hub: deps.hub.clone(),
            metrics: metrics.clone(),
            waiting: HashMap::new(),
            next_ticket: 0,
        };
        tokio::spawn(driver.run(rx, peers, deps.shutdown));
        Arc::new(Historian {
            events,
            rules,
            me: deps.me,
            boot: deps.boot,
            next_publish: std::sync::atomic::AtomicU64::new(1),
            metrics,
        })
    }

    /// Whether `group` keeps history on this node.
    pub fn keeps(&self, group: &str) -> bool {
        self.rules.of(group).is_some()
    }

    /// A new publish id: this node, this process, the next number.
    pub fn publish_id(&self) -> PublishId {
        let seq = self
            .next_publish
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PublishId {
            node: self.me,
            boot: self.boot,
            seq,
        }
    }

    /// One attempt at publishing to a history group; answers once the message is
    /// replicated, or why not (the router retries, with the same id).
    pub async fn publish(&self, publish: Publish) -> Result<Taken, HistoryError> {
        if publish.attempt > 0 {
            self.metrics.publish_retries.inc();
        }
        let result = self.ask(|reply| Event::Publish { publish, reply }).await;
        match &result {
            Ok(_) => self.metrics.publishes.inc(),
            Err(_) => self.metrics.publish_failures.inc(),
        }
        result
    }

    /// A page of what a client at `since` missed in `group`; `None`: only where the group
    /// stands (a client subscribing afresh learns its position). `first`: the first page
    /// of a client's recovery (the one counted).
    pub async fn recover(
        &self,
        group: &str,
        since: Option<Position>,
        first: bool,
    ) -> Result<Recovery, HistoryError> {
        let result = self
            .ask(|reply| Event::Recover {
                group: group.to_owned(),
                since,
                reply,
            })
            .await;
        if since.is_some() {
            if first {
                self.metrics.recoveries.inc();
            }
            if !result.as_ref().is_ok_and(|r| r.recovered) {
                self.metrics.recoveries_incomplete.inc();
            }
        }
        result
    }

    /// This node drains: it takes no new publish it could hand over.
    pub async fn leaving(&self) {
        let _ = self.events.send(Event::Leaving).await;
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

    /// The historian's rows in `/metrics`.
    pub fn rows(&self) -> Vec<Row> {
        let m = &self.metrics;
        vec![
            Row::counter(
                "history_publishes_total",
                "Publish attempts to history groups answered with a position.",
                m.publishes.get(),
            ),
            Row::counter(
                "history_publish_failures_total",
                "Publish attempts to history groups answered with an error (retried within the patience unless final).",
                m.publish_failures.get(),
            ),
            Row::counter(
                "history_publish_retries_total",
                "Publish attempts that repeated an earlier one with the same publish id.",
                m.publish_retries.get(),
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
                "history_takeovers_total",
                "History buckets this node took over as owner, continuing another owner's history (a failover or a hand-over).",
                m.takeovers.get(),
            ),
            Row::counter(
                "history_recovery_asks_total",
                "Recovery pages this node's clients asked of a remote owner.",
                m.recovery_asks.get(),
            ),
            Row::counter(
                "history_recovery_reads_total",
                "Recovery reads this node sent to remote owners: one answers every ask of its page queued before it left.",
                m.recovery_reads.get(),
            ),
            Row::gauge(
                "history_recovery_asks_queued",
                "Recovery asks waiting for one of the node's read slots.",
                m.recovery_asks_queued.get(),
            ),
            Row::counter(
                "history_evictions_total",
                "Groups whose messages were dropped to stay within --history-max-bytes.",
                m.evictions.get(),
            ),
            Row::gauge(
                "history_groups",
                "Group histories held here, as owner or replica.",
                m.groups.get(),
            ),
            Row::gauge(
                "history_messages",
                "Messages held in histories here.",
                m.messages.get(),
            ),
            Row::gauge(
                "history_bytes",
                "Bytes of history held here, as --history-max-bytes counts them.",
                m.bytes.get(),
            ),
            Row::gauge(
                "history_pending",
                "Messages this node took as owner and awaits its replica's acknowledgement for.",
                m.pending.get(),
            ),
        ]
    }
}

/// A local request waiting for the keeper's answer.
enum Waiter {
    Publish(oneshot::Sender<Result<Taken, HistoryError>>),
    Recover(oneshot::Sender<Result<Recovery, HistoryError>>),
}

/// The task around the keeper. See the module header.
struct Driver {
    keeper: Keeper,
    replica: Arc<SharedReplica>,
    cluster: Arc<Cluster>,
    hub: Arc<Hub>,
    metrics: Arc<HistoryMetrics>,
    waiting: HashMap<Ticket, Waiter>,
    next_ticket: Ticket,
}

impl Driver {
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
                Some((peer, message)) = peers.recv() => {
                    self.with_facts(|keeper, facts| keeper.handle_peer(facts, peer, message));
                }
                _ = tick.tick() => {
                    self.with_facts(|keeper, facts| keeper.handle_tick(facts));
                    self.report();
                }
            }
            self.carry_out();
        }
    }

    /// Calls the keeper with the facts read now (the assignments under the replica's read
    /// lock, held only for the call: the keeper does no IO).
    fn with_facts(&mut self, f: impl FnOnce(&mut Keeper, &Facts)) {
        let in_majority = self.cluster.in_majority();
        let replica = self.replica.read();
        let facts = Facts {
            now: Instant::now(),
            now_ms: unix_millis(),
            assignments: &replica.assignments,
            in_majority,
        };
        f(&mut self.keeper, &facts);
    }

    fn on_event(&mut self, event: Event) {
        self.next_ticket += 1;
        let ticket = self.next_ticket;
        match event {
            Event::Publish { publish, reply } => {
                self.waiting.insert(ticket, Waiter::Publish(reply));
                self.with_facts(|keeper, facts| keeper.handle_publish(facts, ticket, publish));
            }
            Event::Recover {
                group,
                since,
                reply,
            } => {
                self.waiting.insert(ticket, Waiter::Recover(reply));
                self.with_facts(|keeper, facts| keeper.handle_recover(facts, ticket, group, since));
            }
            Event::Leaving => self.keeper.handle_leaving(),
        }
    }

    /// Carries out every output the keeper has, in order.
    fn carry_out(&mut self) {
        while let Some(output) = self.keeper.poll_output() {
            match output {
                Output::Send { to, message } => {
                    if let Err(unsent) = self.cluster.try_send(to, PeerMessage::History(message))
                        && let PeerMessage::History(message) = *unsent
                    {
                        self.keeper.handle_unsent(to, &message);
                    }
                }
                Output::FanOut {
                    group,
                    entry,
                    also,
                    answers,
                } => {
                    let local = self.hub.publish_local(
                        &group,
                        &Encoded::with_position(entry.payload.clone(), entry.position),
                    );
                    let remote = self.cluster.forward_positioned(
                        &group,
                        &entry.payload,
                        entry.text,
                        entry.position,
                        &also,
                    );
                    let taken = Taken {
                        position: entry.position,
                        routed: local + remote,
                    };
                    for origin in answers {
                        self.answer(origin, Ok(taken));
                    }
                }
                Output::Answer { to, result } => self.answer(to, result),
                Output::Repeat {
                    to,
                    group,
                    position,
                } => {
                    // This node owns the group's bucket: it holds its interest.
                    let remote = self.cluster.held_count(&group);
                    let routed = self.hub.group_size(&group) + remote;
                    self.answer(to, Ok(Taken { position, routed }));
                }
                Output::Recovered { ticket, result } => {
                    if let Some(Waiter::Recover(reply)) = self.waiting.remove(&ticket) {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    /// Answers a publish's origin.
    fn answer(&mut self, to: Origin, result: Result<Taken, HistoryError>) {
        match to {
            Origin::Local(ticket) => {
                if let Some(Waiter::Publish(reply)) = self.waiting.remove(&ticket) {
                    let _ = reply.send(result);
                }
            }
            Origin::Remote(peer, id) => {
                let result = result
                    .map(|t| (t.position, t.routed as u64))
                    .map_err(|e| e.refusal());
                self.cluster.send(
                    peer,
                    PeerMessage::History(History::Published { id, result }),
                );
            }
        }
    }

    /// The keeper's figures into the gauges and counters of `/metrics`.
    fn report(&mut self) {
        let stats = self.keeper.stats();
        let m = &self.metrics;
        m.groups.set(stats.groups as u64);
        m.messages.set(stats.messages as u64);
        m.bytes.set(stats.bytes as u64);
        m.pending.set(stats.pending as u64);
        m.recovery_asks_queued.set(stats.asks_queued as u64);
        let counts = self.keeper.take_counts();
        m.syncs_sent.add(counts.syncs_sent);
        m.evictions.add(counts.evictions);
        m.takeovers.add(counts.takeovers);
        m.recovery_asks.add(counts.recovery_asks);
        m.recovery_reads.add(counts.recovery_reads);
    }
}

/// The payload of a publish as the keeper takes it.
pub fn publish(id: PublishId, attempt: u32, group: &str, payload: Bytes, text: bool) -> Publish {
    Publish {
        id,
        attempt,
        group: group.to_owned(),
        payload,
        text,
    }
}
