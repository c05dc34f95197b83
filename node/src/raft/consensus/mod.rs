//! [`Consensus`]: this node's Raft node, and the thin drivers around it.
//!
//! - Start: open the store, start openraft, bootstrap a new cluster when this is a first
//!   node (no seeds, no Raft state), and become leader before serving when alone.
//! - Writes: [`Consensus::write`] commits on the leader, or forwards to it (abandoned at
//!   once when another leader is elected meanwhile). [`Consensus::linearizable`] waits for
//!   a read index confirmed by the leader. [`Consensus::remove`] removes a member for good.
//! - Loops ([`Consensus::spawn`]): the RPC server (streams from the mesh), the presence
//!   writer (`super::writer`), the steward driver (builds a `View`, carries out the
//!   `Steward`'s actions), and the health reporter (is a leader that can commit known?).

mod reads;
mod stewarding;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use switchboard_proto::peer::NodeId;
use tracing::{info, warn};

use super::metrics::RaftCounters;
use super::network::{self, CONTROL, GroupId, Reply, Rpc, Transport};
use super::{TypeConfig, store, writer};
use crate::health::Health;
use crate::lifecycle::Lifecycle;
use crate::metrics::Row;
use crate::presence::claims::{Claimed, Claimer};
use crate::presence::{Command, PresenceQueue, SharedReplica};

/// Raft heartbeat and election timeouts. A follower that has seen a committed leader
/// waits out the leader's lease (openraft 0.9 sets it to `ELECTION_MAX_MS`) plus a random
/// election timeout before it campaigns: a dead leader is replaced 0.9 to 1.2 s after its
/// last heartbeat, plus one vote round.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 300;
const ELECTION_MAX_MS: u64 = 600;
/// Longest a snapshot transfer may take.
const INSTALL_SNAPSHOT_TIMEOUT_MS: u64 = 5_000;
/// At most this many entries (of at most `presence::MAX_BATCH` ops each) per append: a
/// few MiB, well inside the 16 MiB peer message limit.
const MAX_ENTRIES_PER_APPEND: u64 = 16;
/// Snapshot chunks sent to a slow follower.
const SNAPSHOT_CHUNK: usize = 1024 * 1024;
/// Log entries between snapshots, and entries kept after one for slow followers.
const SNAPSHOT_EVERY: u64 = 2000;
const KEEP_AFTER_SNAPSHOT: u64 = 500;
/// A write forwarded to the leader is given up (and retried) after this long.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(700);
/// A write on the leader that has not committed after this long (no quorum) is given
/// up and retried. It may still commit later: presence ops are idempotent and a retry
/// keeps their order, so committing twice is harmless.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a first node waits for its own leadership before serving.
const SINGLE_LEADER_WAIT: Duration = Duration::from_secs(5);
/// Longest a follower waits for the leader's read index, then for its replica to apply it.
const READ_INDEX_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a `remove` forwarded to the leader may take.
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the leader waits for a node being removed to receive its removal (so that it
/// drains) before the membership change cuts it off.
const REMOVAL_NOTICE_WAIT: Duration = Duration::from_secs(2);
/// Longest the steward waits for one membership change (a learner added, a promotion).
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a member holds an [`Rpc::Events`] open waiting for a new event.
pub const MAX_EVENTS_WAIT: Duration = Duration::from_secs(10);
/// Most events one [`Rpc::Events`] reply carries (about 150 bytes each).
pub const MAX_EVENTS_PER_REPLY: usize = 1024;

/// Why a write (or a Raft-backed read) did not happen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum WriteError {
    /// No leader is known (an election is under way, or this node is cut off).
    #[error("no Raft leader is known")]
    NoLeader,
    /// This node is not the leader; the one named is.
    #[error("node {0} is not the leader")]
    NotLeader(NodeId),
    /// The leader did not commit within its timeout: it has no quorum now.
    #[error("not committed within {0:?}: no quorum")]
    NoQuorum(Duration),
    /// The leader could not be reached, or did not answer in time.
    #[error("leader {leader}: {reason}")]
    Unreachable { leader: NodeId, reason: String },
    /// Raft refused the request (shutting down, or a membership change refused).
    #[error("raft: {0}")]
    Raft(String),
    /// The leader answered with a reply of another kind (a version mismatch).
    #[error("the leader answered with an unexpected reply")]
    UnexpectedReply,
}

/// This node's view of Raft, for `status` and `/readyz`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RaftStatus {
    pub role: &'static str,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_log_index: u64,
    pub commit_index: u64,
    pub last_applied: u64,
    pub apply_lag: u64,
    pub millis_since_quorum_ack: Option<u64>,
}

/// How the Raft layer is set up.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub node_id: NodeId,
    /// The group: [`CONTROL`], or a shard.
    pub group: GroupId,
    /// The store lives in `<data_dir>/raft/` (the control group) or
    /// `<data_dir>/raft/group-<id>/`.
    pub data_dir: PathBuf,
    /// `--node-timeout-ms`: a leader without a quorum ack this long is not a leader that
    /// can commit; a node down this long loses its presence.
    pub node_timeout: Duration,
    pub max_voters: usize,
    /// No seeds: with no Raft state either, this node bootstraps a new cluster.
    pub may_bootstrap: bool,
    /// This node's peer address, as the membership records it.
    pub advertised: String,
    /// This node's incarnation (its data dir's id), bound in the replica by the leader.
    pub incarnation: u64,
    /// This process's boot id.
    pub boot: u64,
    /// Whether this group's writer commits the presence queue and its steward resyncs
    /// and purges presence: the control group when presence is not sharded (a shard's
    /// presence is driven by `super::shards`).
    pub presence: bool,
}

/// See the module header.
pub struct Consensus {
    pub raft: Raft<TypeConfig>,
    pub(super) node: NodeId,
    group: GroupId,
    incarnation: u64,
    boot: u64,
    pub(super) transport: Arc<dyn Transport>,
    pub(super) node_timeout: Duration,
    max_voters: usize,
    pub(super) replica: Arc<SharedReplica>,
    pub(super) queue: Arc<PresenceQueue>,
    /// See [`RaftSettings::presence`].
    pub(super) presence: bool,
    pub(super) lifecycle: Arc<Lifecycle>,
    /// Serialises presence flushes (the writer loop and the final one at shutdown).
    pub(super) flushing: tokio::sync::Mutex<()>,
    /// Log index of this node's last committed presence write.
    pub(super) last_written: AtomicU64,
    /// Idempotency claims asked by this process (with `boot`, the claimer's request id).
    claims_issued: AtomicU64,
    pub counters: RaftCounters,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("node", &self.node)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl Consensus {
    /// Opens the store and starts the Raft node. Returns it with the other members the
    /// log knows and their peer addresses, for the mesh to dial (a restarted node finds its
    /// cluster even without seeds).
    pub async fn start(
        settings: RaftSettings,
        transport: Arc<dyn Transport>,
        replica: Arc<SharedReplica>,
        queue: Arc<PresenceQueue>,
        lifecycle: Arc<Lifecycle>,
    ) -> anyhow::Result<(Arc<Consensus>, Vec<(NodeId, String)>)> {
        let dir = match settings.group {
            CONTROL => settings.data_dir.join("raft"),
            group => settings
                .data_dir
                .join("raft")
                .join(format!("group-{group}")),
        };
        let log = store::LogStore::open(&dir)?;
        let sm = store::StateMachine::open(&dir, replica.clone())?;
        let raft_config = openraft::Config {
            cluster_name: "switchboard".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            install_snapshot_timeout: INSTALL_SNAPSHOT_TIMEOUT_MS,
            max_payload_entries: MAX_ENTRIES_PER_APPEND,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: KEEP_AFTER_SNAPSHOT,
            snapshot_max_chunk_size: SNAPSHOT_CHUNK as u64,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate()?);
        let network = network::Network::new(transport.clone(), settings.group);
        let me = settings.node_id;
        let raft = Raft::new(me, raft_config, network, log, sm).await?;
        let consensus = Arc::new(Consensus {
            raft,
            node: me,
            group: settings.group,
            incarnation: settings.incarnation,
            boot: settings.boot,
            transport,
            node_timeout: settings.node_timeout,
            max_voters: settings.max_voters,
            replica,
            queue,
            presence: settings.presence,
            lifecycle,
            flushing: tokio::sync::Mutex::new(()),
            last_written: AtomicU64::new(0),
            claims_issued: AtomicU64::new(0),
            counters: RaftCounters::default(),
        });

        let bootstrap = settings.may_bootstrap && !consensus.raft.is_initialized().await?;
        if bootstrap {
            info!(node = me, "bootstrapping a new cluster");
            consensus
                .raft
                .initialize(BTreeMap::from([(me, BasicNode::new(&settings.advertised))]))
                .await?;
        }
        // The membership as the Raft core has it (its metrics may lag just after start).
        let membership = consensus
            .raft
            .with_raft_state(|st| st.membership_state.effective().membership().clone())
            .await?;
        let known = membership
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect();
        // Alone in the membership: become leader before serving, so that a single node is
        // ready as soon as it starts.
        let alone = membership.voter_ids().eq([me]);
        if bootstrap || alone {
            let started = Instant::now();
            if !bootstrap {
                let _ = consensus.raft.trigger().elect().await;
            }
            if consensus
                .raft
                .wait(Some(SINGLE_LEADER_WAIT))
                .current_leader(me, "single-node leadership")
                .await
                .is_err()
            {
                warn!("this single-voter node did not become leader within {SINGLE_LEADER_WAIT:?}");
            }
            info!(group = settings.group, elapsed = ?started.elapsed(), "leader of a single-voter group");
            // History buckets are assigned before the node serves, so that the first
            // publish to a history group finds an owner.
            if settings.group == CONTROL {
                consensus.assign_history().await;
            }
        }
        Ok((consensus, known))
    }

    /// Starts the loops: the presence writer, the steward and the health reporter.
    /// Readiness is reported once before this returns. (RPCs reach it through the
    /// process's [`super::Groups`], served by `network::serve`.)
    pub fn spawn(self: &Arc<Self>, health: Arc<Health>) {
        health.set_leader(self.has_leader());
        if self.presence {
            tokio::spawn(writer::run(self.clone()));
        }
        tokio::spawn(self.clone().steward());
        tokio::spawn(self.clone().report_health(health));
    }

    /// The group this is.
    pub fn group(&self) -> GroupId {
        self.group
    }

    /// This group's replica.
    pub fn replica(&self) -> &Arc<SharedReplica> {
        &self.replica
    }

    /// Makes a new group of this one node (a presence shard the control leader created).
    pub async fn initialize_alone(&self, advertised: &str) -> anyhow::Result<()> {
        if self.raft.is_initialized().await? {
            return Ok(());
        }
        self.raft
            .initialize(BTreeMap::from([(self.node, BasicNode::new(advertised))]))
            .await?;
        Ok(())
    }

    /// This node's Raft view.
    pub fn status(&self) -> RaftStatus {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let last_log_index = m.last_log_index.unwrap_or(0);
        let last_applied = m.last_applied.map_or(0, |l| l.index);
        RaftStatus {
            role: match m.state {
                ServerState::Leader => "leader",
                ServerState::Follower => "follower",
                ServerState::Candidate => "candidate",
                ServerState::Learner => "learner",
                ServerState::Shutdown => "shutdown",
            },
            term: m.current_term,
            leader: m.current_leader,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            last_log_index,
            // openraft 0.9 does not export the commit index; everything applied is
            // committed, and this node applies as soon as it learns of a commit.
            commit_index: last_applied,
            last_applied,
            apply_lag: last_log_index.saturating_sub(last_applied),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    /// Whether this node knows a leader that can commit: a follower or learner that has
    /// heard from one, or a leader acknowledged by a quorum within `--node-timeout-ms`.
    pub fn has_leader(&self) -> bool {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        match m.current_leader {
            None => false,
            Some(leader) if leader == self.node => {
                let voters = m.membership_config.membership().voter_ids().count();
                voters <= 1
                    || m.millis_since_quorum_ack
                        .is_some_and(|ms| ms < self.node_timeout.as_millis() as u64)
            }
            Some(_) => true,
        }
    }

    /// Whether this node leads this group now (and a quorum acknowledged it lately).
    pub fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.node) && self.has_leader()
    }

    /// Drains this node: not ready, its clients closed with 1012 (they watch the drain
    /// token), and the purge of its presence queued for the writer. The node leaves the
    /// mesh once that is committed (see the node's wiring).
    pub fn drain(&self) {
        self.lifecycle.drain();
        self.queue.purge_self();
    }

    /// Commits `command` on this node if it is the leader (at most [`COMMIT_TIMEOUT`]);
    /// otherwise says who is ([`WriteError::NotLeader`]) or that nobody is known.
    async fn commit_here(&self, command: Command) -> Result<u64, WriteError> {
        let local = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(command));
        match local.await {
            Ok(Ok(reply)) => Ok(reply.log_id.index),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                match f.leader_id.filter(|l| *l != self.node) {
                    Some(leader) => Err(WriteError::NotLeader(leader)),
                    None => Err(WriteError::NoLeader),
                }
            }
            Ok(Err(e)) => Err(WriteError::Raft(e.to_string())),
            Err(_) => Err(WriteError::NoQuorum(COMMIT_TIMEOUT)),
        }
    }

    /// Commits `command`, through the leader when this node is not it. Returns the log
    /// index it committed at.
    pub async fn write(&self, command: Command) -> Result<u64, WriteError> {
        match self.commit_here(command.clone()).await {
            Err(WriteError::NotLeader(leader)) => {
                self.counters.forwarded_writes.inc();
                // Give up at once if another leader is elected meanwhile (the one asked may
                // be dead): the caller retries with the new one.
                let mut metrics = self.raft.metrics();
                let leader_changed = async move {
                    while metrics.changed().await.is_ok() {
                        if metrics.borrow().current_leader != Some(leader) {
                            return;
                        }
                    }
                    std::future::pending::<()>().await
                };
                let ask = self.ask_leader(leader, Rpc::Write(command), FORWARD_TIMEOUT);
                tokio::select! {
                    reply = ask => match reply? {
                        Reply::Write(result) => result,
                        _ => Err(WriteError::UnexpectedReply),
                    },
                    () = leader_changed => Err(WriteError::NotLeader(leader)),
                }
            }
            local => local,
        }
    }

    /// Sends `rpc` to the leader `leader`.
    async fn ask_leader(
        &self,
        leader: NodeId,
        rpc: Rpc,
        timeout: Duration,
    ) -> Result<Reply, WriteError> {
        network::call(&*self.transport, leader, self.group, &rpc, timeout)
            .await
            .map_err(|e| WriteError::Unreachable {
                leader,
                reason: e.to_string(),
            })
    }

    /// Claims idempotency keys for a new request of this node (see
    /// `crate::presence::claims`): committed through the leader, then read from this
    /// node's replica once applied. For each key, what this request got of it.
    pub async fn claim(&self, keys: Vec<String>) -> Result<(Claimer, Vec<Claimed>), WriteError> {
        let claimer = Claimer {
            node: self.node,
            request: self
                .boot
                .wrapping_add(self.claims_issued.fetch_add(1, Ordering::Relaxed)),
        };
        let command = Command::Claim {
            keys: keys.clone(),
            claimer,
            at_ms: crate::clock::unix_millis(),
        };
        let index = match self.write(command).await {
            Ok(index) => index,
            Err(e) => {
                // It may have committed all the same: give the keys back, best effort.
                let _ = self.write(Command::Release { keys, claimer }).await;
                return Err(e);
            }
        };
        self.applied(index, "idempotency claim").await?;
        let replica = self.replica.read();
        let held = keys
            .iter()
            .map(|k| replica.claims.outcome(k, claimer))
            .collect();
        Ok((claimer, held))
    }

    /// Revokes `user`'s tokens issued before `before` (Unix seconds) for `ttl` after it:
    /// committed, then applied here. Every node refuses them from then on and closes the
    /// user's open sockets that hold one.
    pub async fn revoke(&self, user: &str, before: u64, ttl: Duration) -> Result<(), WriteError> {
        let until_ms = before.saturating_add(ttl.as_secs()).saturating_mul(1000);
        let command = Command::Revoke {
            user: user.to_owned(),
            before,
            until_ms,
            at_ms: crate::clock::unix_millis(),
        };
        let index = self.write(command).await?;
        self.applied(index, "revocation").await
    }

    /// Gives back keys claimed by `claimer` (its publish failed).
    pub async fn release(&self, keys: Vec<String>, claimer: Claimer) -> Result<(), WriteError> {
        self.write(Command::Release { keys, claimer })
            .await
            .map(|_| ())
    }

    /// `switchboard remove ID`: purges the node's presence, bars it from rejoining, and
    /// takes it out of the Raft membership. Run by the leader; others forward it.
    pub async fn remove(&self, id: NodeId) -> Result<(), WriteError> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(leader) if leader == self.node => {}
            Some(leader) => {
                return match self
                    .ask_leader(leader, Rpc::Remove(id), REMOVE_TIMEOUT)
                    .await?
                {
                    Reply::Remove(result) => result,
                    _ => Err(WriteError::UnexpectedReply),
                };
            }
            None => return Err(WriteError::NoLeader),
        }
        let membership = m.membership_config.membership().clone();
        let index = self.write(Command::Remove(id)).await?;
        // A node still up should learn of its own removal (so that it drains) before the
        // membership change stops its log.
        if self.transport.peers().iter().any(|p| p.id == id && p.up) {
            let replicated = move |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .is_some_and(|l| l.index >= index)
            };
            let _ = self
                .raft
                .wait(Some(REMOVAL_NOTICE_WAIT))
                .metrics(replicated, "the removed node has the removal")
                .await;
        }
        let change = if membership.voter_ids().any(|v| v == id) {
            Some(ChangeMembers::RemoveVoters(BTreeSet::from([id])))
        } else if membership.learner_ids().any(|l| l == id) {
            Some(ChangeMembers::RemoveNodes(BTreeSet::from([id])))
        } else {
            None
        };
        if let Some(change) = change {
            self.raft
                .change_membership(change, false)
                .await
                .map_err(|e| WriteError::Raft(e.to_string()))?;
        }
        info!(node = id, "member removed");
        Ok(())
    }

    /// Answers a Raft RPC from `peer`.
    pub async fn serve(&self, peer: NodeId, rpc: Rpc) -> Reply {
        match rpc {
            Rpc::AppendEntries(req) => Reply::AppendEntries(self.raft.append_entries(req).await),
            Rpc::Vote(req) => Reply::Vote(self.raft.vote(req).await),
            Rpc::InstallSnapshot(req) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(req).await)
            }
            Rpc::Write(command) => Reply::Write(self.commit_here(command).await),
            Rpc::ReadIndex => Reply::ReadIndex(match self.raft.get_read_log_id().await {
                Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                Err(e) => Err(WriteError::Raft(e.to_string())),
            }),
            Rpc::Remove(id) => {
                if id == peer {
                    warn!(peer, "a peer asked for its own removal");
                }
                Reply::Remove(Box::pin(self.remove(id)).await)
            }
            Rpc::Presence { user, linearizable } => Reply::Presence(
                async {
                    if linearizable {
                        self.linearizable().await?;
                    } else if !self.has_leader() {
                        // A shard without a majority: its entries may be stale.
                        return Err(WriteError::NoLeader);
                    }
                    Ok(self.replica.read().presence.user(&user))
                }
                .await,
            ),
            Rpc::Count { node, applied } => Reply::Count(
                self.caught_up(applied)
                    .await
                    .map(|()| self.replica.node_connections(node) as u64),
            ),
            Rpc::Events {
                from,
                user,
                max,
                wait_ms,
            } => {
                let wait = Duration::from_millis(u64::from(wait_ms)).min(MAX_EVENTS_WAIT);
                let max = (max as usize).min(MAX_EVENTS_PER_REPLY);
                Reply::Events(Ok(self.events(from, user.as_deref(), max, wait).await))
            }
        }
    }

    /// The Raft layer's rows in `/metrics`.
    /// `presence_entries`: the connections this node's replicas hold.
    pub fn rows(&self, presence_entries: usize) -> Vec<Row> {
        self.counters.rows(&self.status(), presence_entries)
    }

    /// Keeps `health` told whether a leader that can commit is known: on every change of
    /// the Raft metrics, and every heartbeat (a leader's quorum ack ages between changes).
    async fn report_health(self: Arc<Self>, health: Arc<Health>) {
        let shutdown = self.lifecycle.shutdown_token().clone();
        let mut metrics = self.raft.metrics();
        loop {
            health.set_leader(self.has_leader());
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = metrics.changed() => if changed.is_err() { break },
                _ = tokio::time::sleep(Duration::from_millis(HEARTBEAT_MS)) => {}
            }
        }
        health.set_leader(false);
    }
}
