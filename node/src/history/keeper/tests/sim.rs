//! The simulated cluster the keeper's tests run: three keepers joined by a network whose
//! messages the test delivers, loses or refuses, over assignments the test commits.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use switchboard_proto::peer::{History, NodeId, Position, PublishId};

use super::super::*;
use crate::history::assign::Change;
use crate::history::{Assignments, Rule, Rules};

pub(super) const GROUP: &str = "user_1";
pub(super) const FIRST_EPOCH: Epoch = 10;

pub(super) fn boot(node: NodeId) -> u64 {
    1000 + node
}

pub(super) fn id(seq: u64) -> PublishId {
    PublishId {
        node: 9,
        boot: 1,
        seq,
    }
}

pub(super) fn pos(epoch: Epoch, offset: u64) -> Position {
    Position { epoch, offset }
}

pub(super) struct Sim {
    pub(super) keepers: BTreeMap<NodeId, Keeper>,
    /// Each node's assignments, as it has applied them.
    pub(super) maps: BTreeMap<NodeId, Assignments>,
    pub(super) next_epoch: Epoch,
    pub(super) now: Instant,
    pub(super) net: VecDeque<(NodeId, NodeId, History)>,
    /// Dead, not yet noticed: what it sends and what is sent to it is lost.
    pub(super) dead: BTreeSet<NodeId>,
    /// Not connected: a send to it fails, and the driver tells the keeper.
    pub(super) unreachable: BTreeSet<NodeId>,
    /// Links (from, to) whose messages are lost.
    pub(super) cut: BTreeSet<(NodeId, NodeId)>,
    /// Nodes out of touch with a majority.
    pub(super) cut_off: BTreeSet<NodeId>,
    /// Fan-outs: the node that delivered, and the entry.
    pub(super) delivered: Vec<(NodeId, Entry)>,
    pub(super) published: BTreeMap<(NodeId, Ticket), Result<Taken, HistoryError>>,
    pub(super) recovered: BTreeMap<(NodeId, Ticket), Result<Recovery, HistoryError>>,
    /// `History::Read` messages sent.
    pub(super) reads: usize,
    pub(super) next_ticket: Ticket,
}

impl Sim {
    /// Nodes 1..=3, every bucket assigned in [`FIRST_EPOCH`].
    pub(super) fn new() -> Sim {
        let nodes = [1, 2, 3];
        let rules = Rules::new(vec![Rule {
            pattern: "user_*".into(),
            size: 100,
            ttl: None,
        }]);
        let keepers = nodes
            .iter()
            .map(|n| (*n, Keeper::new(*n, boot(*n), rules.clone(), 1 << 30)))
            .collect();
        let live = nodes.iter().map(|n| (*n, boot(*n))).collect();
        let mut map = Assignments::default();
        map.apply(&map.plan(&live, |_| true), FIRST_EPOCH);
        let mut sim = Sim {
            keepers,
            maps: nodes.iter().map(|n| (*n, map.clone())).collect(),
            next_epoch: FIRST_EPOCH + 1,
            now: Instant::now(),
            net: VecDeque::new(),
            dead: BTreeSet::new(),
            unreachable: BTreeSet::new(),
            cut: BTreeSet::new(),
            cut_off: BTreeSet::new(),
            delivered: Vec::new(),
            published: BTreeMap::new(),
            recovered: BTreeMap::new(),
            reads: 0,
            next_ticket: 0,
        };
        sim.tick(Duration::ZERO);
        sim
    }

    /// The group's (owner, replica, the third node), as node 1 has them.
    pub(super) fn roles(&self) -> (NodeId, NodeId, NodeId) {
        let a = self.maps[&1].of_group(GROUP).expect("assigned");
        let replica = a.replica.expect("a replica");
        let other = [1, 2, 3]
            .into_iter()
            .find(|n| *n != a.owner && *n != replica)
            .expect("three nodes");
        (a.owner, replica, other)
    }

    /// The changes that follow the members `live`, as node `leader` plans them.
    pub(super) fn plan(&self, leader: NodeId, live: &[NodeId]) -> Vec<Change> {
        let live = live.iter().map(|n| (*n, boot(*n))).collect();
        self.maps[&leader].plan(&live, |_| true)
    }

    /// Commits `changes` in the next epoch; `nodes` apply it now (the others later, with
    /// [`Sim::apply`]).
    pub(super) fn commit(&mut self, changes: &[Change], nodes: &[NodeId]) -> Epoch {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        for n in nodes {
            self.apply(*n, changes, epoch);
        }
        epoch
    }

    pub(super) fn apply(&mut self, node: NodeId, changes: &[Change], epoch: Epoch) {
        self.maps
            .get_mut(&node)
            .expect("a node")
            .apply(changes, epoch);
    }

    pub(super) fn ticket(&mut self) -> Ticket {
        self.next_ticket += 1;
        self.next_ticket
    }

    /// Calls node `node`'s keeper with its facts now, then carries out its outputs.
    pub(super) fn call(&mut self, node: NodeId, f: impl FnOnce(&mut Keeper, &Facts)) {
        let facts = Facts {
            now: self.now,
            now_ms: 1_000_000,
            assignments: &self.maps[&node],
            in_majority: !self.cut_off.contains(&node),
        };
        f(self.keepers.get_mut(&node).expect("a node"), &facts);
        self.carry_out(node);
    }

    pub(super) fn carry_out(&mut self, node: NodeId) {
        loop {
            let Some(output) = self.keepers.get_mut(&node).and_then(Keeper::poll_output) else {
                return;
            };
            match output {
                Output::Send { to, message } => self.send(node, to, message),
                Output::FanOut { entry, answers, .. } => {
                    let taken = Taken {
                        position: entry.position,
                        routed: 1,
                    };
                    self.delivered.push((node, entry));
                    for origin in answers {
                        self.answer(node, origin, Ok(taken));
                    }
                }
                Output::Answer { to, result } => self.answer(node, to, result),
                Output::Repeat { to, position, .. } => {
                    let taken = Taken {
                        position,
                        routed: 0,
                    };
                    self.answer(node, to, Ok(taken));
                }
                Output::Recovered { ticket, result } => {
                    self.recovered.insert((node, ticket), result);
                }
            }
        }
    }

    pub(super) fn send(&mut self, from: NodeId, to: NodeId, message: History) {
        if matches!(message, History::Read { .. }) {
            self.reads += 1;
        }
        if self.unreachable.contains(&to) {
            self.keepers
                .get_mut(&from)
                .expect("a node")
                .handle_unsent(to, &message);
        } else if !self.dead.contains(&from)
            && !self.dead.contains(&to)
            && !self.cut.contains(&(from, to))
        {
            self.net.push_back((from, to, message));
        }
    }

    pub(super) fn answer(&mut self, node: NodeId, to: Origin, result: Result<Taken, HistoryError>) {
        match to {
            Origin::Local(ticket) => {
                self.published.insert((node, ticket), result);
            }
            Origin::Remote(peer, id) => {
                let result = result
                    .map(|t| (t.position, t.routed as u64))
                    .map_err(|e| e.refusal());
                self.send(node, peer, History::Published { id, result });
            }
        }
    }

    /// Delivers every message in flight, and those they cause, in order.
    pub(super) fn deliver(&mut self) {
        for _ in 0..10_000 {
            let Some((from, to, message)) = self.net.pop_front() else {
                return;
            };
            self.call(to, |k, facts| k.handle_peer(facts, from, message));
        }
        panic!("the network did not settle");
    }

    /// `d` passes; every live keeper ticks; messages are delivered.
    pub(super) fn tick(&mut self, d: Duration) {
        self.now += d;
        let nodes: Vec<NodeId> = self.keepers.keys().copied().collect();
        for n in nodes {
            if !self.dead.contains(&n) {
                self.call(n, |k, facts| k.handle_tick(facts));
            }
        }
        self.deliver();
    }

    /// A publish attempt on `node`; its ticket.
    pub(super) fn publish(
        &mut self,
        node: NodeId,
        id: PublishId,
        attempt: u32,
        payload: &str,
    ) -> Ticket {
        let ticket = self.ticket();
        let publish = Publish {
            id,
            attempt,
            group: GROUP.into(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            text: true,
        };
        self.call(node, |k, facts| k.handle_publish(facts, ticket, publish));
        self.deliver();
        ticket
    }

    pub(super) fn recover(&mut self, node: NodeId, since: Option<Position>) -> Ticket {
        let ticket = self.ticket();
        self.call(node, |k, facts| {
            k.handle_recover(facts, ticket, GROUP.into(), since)
        });
        self.deliver();
        ticket
    }

    /// A recovery asked on `node`, its messages left in flight.
    pub(super) fn ask(&mut self, node: NodeId, since: Option<Position>) -> Ticket {
        let ticket = self.ticket();
        self.call(node, |k, facts| {
            k.handle_recover(facts, ticket, GROUP.into(), since)
        });
        ticket
    }

    pub(super) fn outcome(
        &self,
        node: NodeId,
        ticket: Ticket,
    ) -> Option<&Result<Taken, HistoryError>> {
        self.published.get(&(node, ticket))
    }

    pub(super) fn position(&self, node: NodeId, ticket: Ticket) -> Position {
        match self.outcome(node, ticket) {
            Some(Ok(taken)) => taken.position,
            other => panic!("expected a position, got {other:?}"),
        }
    }

    pub(super) fn error(&self, node: NodeId, ticket: Ticket) -> HistoryError {
        match self.outcome(node, ticket) {
            Some(Err(e)) => e.clone(),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    /// The positions delivered, in order.
    pub(super) fn deliveries(&self) -> Vec<Position> {
        self.delivered.iter().map(|(_, e)| e.position).collect()
    }

    pub(super) fn recovery(&self, node: NodeId, ticket: Ticket) -> &Recovery {
        match self.recovered.get(&(node, ticket)) {
            Some(Ok(r)) => r,
            other => panic!("expected a recovery, got {other:?}"),
        }
    }
}
