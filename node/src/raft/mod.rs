//! The presence registry kept consistent with Raft (openraft 0.9).
//!
//! - [`replica`]: the state machine's data and its deterministic [`Command`]s.
//! - [`store`]: log, vote and snapshots on disk in `<data-dir>/raft/`.
//! - [`network`]: Raft RPCs over the authenticated QUIC mesh, one stream per call.
//!
//! [`Consensus`] owns the Raft node and runs two loops:
//! - the **presence writer** takes the batched presence changes of this node every
//!   [`crate::presence::FLUSH_INTERVAL`] and commits them as one log entry (through the
//!   leader when this node is a follower). A batch that cannot be committed (no leader, a
//!   cut-off node) stays queued, in order, and is retried: accepting a WebSocket never
//!   waits for Raft.
//! - the **steward** runs every [`STEWARD_INTERVAL`]. On every node it re-registers this
//!   node's live connections when the replica disagrees with them (after a restart, or
//!   after the leader purged this node while it was cut off). On the leader it adds
//!   new peers as learners, promotes learners to voters up to `--max-voters`, and purges
//!   the presence of peers down for `--node-timeout-ms`.

pub mod network;
pub mod replica;
pub mod store;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Raft, ServerState};
use switchboard_proto::peer::{NodeId, PresenceOp};
use tracing::{info, warn};

pub use replica::{Command, Replica};

use crate::cluster::Cluster;
use crate::shared::{Shared, read};

openraft::declare_raft_types!(
    /// The Raft types of the presence registry.
    pub TypeConfig:
        D = Command,
        R = u64,
        NodeId = NodeId,
        Node = BasicNode,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

pub type Entry = openraft::Entry<TypeConfig>;

/// How often the steward looks at the cluster.
pub const STEWARD_INTERVAL: Duration = Duration::from_millis(250);
/// Raft heartbeat and election timeouts. A follower that has seen a committed leader
/// waits out the leader's lease (openraft 0.9 sets it to `ELECTION_MAX_MS`) plus a random
/// election timeout before it campaigns: a dead leader is replaced 0.9 to 1.2 s after its
/// last heartbeat, plus one vote round.
const HEARTBEAT_MS: u64 = 100;
const ELECTION_MIN_MS: u64 = 300;
const ELECTION_MAX_MS: u64 = 600;
/// A write forwarded to the leader is given up (and retried) after this long.
const FORWARD_TIMEOUT: Duration = Duration::from_millis(700);
/// A write on the leader that has not committed after this long (no quorum) is given
/// up and retried. It may still commit later: presence ops are idempotent and a retry
/// keeps their order, so committing twice is harmless.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(2);
/// Log entries between snapshots, and entries kept after one for slow followers.
const SNAPSHOT_EVERY: u64 = 2000;
const KEEP_AFTER_SNAPSHOT: u64 = 500;

/// The one encoding of everything Raft stores or sends: bincode 2, standard config.
pub(crate) fn encode<T: serde::Serialize>(value: &T) -> anyhow::Result<Vec<u8>> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

/// Decodes what [`encode`] made; bytes left over are an error.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> anyhow::Result<T> {
    let (value, used) = bincode::serde::decode_from_slice(bytes, bincode::config::standard())?;
    anyhow::ensure!(
        used == bytes.len(),
        "{} trailing bytes after a Raft value",
        bytes.len() - used
    );
    Ok(value)
}

/// Why a write did not commit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum WriteError {
    #[error("no Raft leader is known")]
    NoLeader,
    #[error("node {0} is not the leader")]
    NotLeader(NodeId),
    #[error("{0}")]
    Failed(String),
}

impl WriteError {
    /// The leader answered with a reply of another kind.
    fn unexpected_reply() -> WriteError {
        WriteError::Failed("unexpected reply".into())
    }
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

/// See the module header.
pub struct Consensus {
    pub raft: Raft<TypeConfig>,
    node: NodeId,
    cluster: Arc<Cluster>,
    node_timeout: Duration,
    max_voters: usize,
    /// Serialises presence flushes (the writer loop and the final one at shutdown).
    flushing: tokio::sync::Mutex<()>,
    /// Log index of this node's last committed presence write.
    last_written: std::sync::atomic::AtomicU64,
    pub metrics: RaftCounters,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("node", &self.node)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

/// Counters exported in `/metrics`.
#[derive(Debug, Default)]
pub struct RaftCounters {
    pub writes: std::sync::atomic::AtomicU64,
    pub write_failures: std::sync::atomic::AtomicU64,
    pub forwarded_writes: std::sync::atomic::AtomicU64,
    pub resyncs: std::sync::atomic::AtomicU64,
    pub purges: std::sync::atomic::AtomicU64,
}

impl Consensus {
    /// Opens the Raft storage in `<data-dir>/raft/` and starts the Raft node. A node
    /// without seeds and without Raft state bootstraps a new cluster of itself.
    pub async fn start(
        shared: &Arc<Shared>,
        cluster: &Arc<Cluster>,
    ) -> anyhow::Result<Arc<Consensus>> {
        let config = &shared.config;
        let dir = config.data_dir.join("raft");
        let log = store::LogStore::open(&dir)?;
        let sm = store::StateMachine::open(&dir, shared.replica.clone())?;
        let raft_config = openraft::Config {
            cluster_name: "switchboard".into(),
            heartbeat_interval: HEARTBEAT_MS,
            election_timeout_min: ELECTION_MIN_MS,
            election_timeout_max: ELECTION_MAX_MS,
            install_snapshot_timeout: 5000,
            // At most 16 entries of at most MAX_BATCH ops each per append: a few MiB,
            // well inside the 16 MiB peer message limit.
            max_payload_entries: 16,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(SNAPSHOT_EVERY),
            max_in_snapshot_log_to_keep: KEEP_AFTER_SNAPSHOT,
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate()?);
        let network = network::Network::new(cluster.clone());
        let raft = Raft::new(config.node_id, raft_config, network, log, sm).await?;
        let consensus = Arc::new(Consensus {
            raft,
            node: config.node_id,
            cluster: cluster.clone(),
            node_timeout: config.node_timeout,
            max_voters: config.max_voters,
            flushing: tokio::sync::Mutex::new(()),
            last_written: std::sync::atomic::AtomicU64::new(0),
            metrics: RaftCounters::default(),
        });

        let me = BasicNode::new(cluster.advertised_addr());
        let bootstrap = config.seeds.is_empty() && !consensus.raft.is_initialized().await?;
        if bootstrap {
            info!(node = config.node_id, "bootstrapping a new cluster");
            consensus
                .raft
                .initialize(BTreeMap::from([(config.node_id, me)]))
                .await?;
        }
        // The membership as the Raft core has it (its metrics may lag just after start).
        let membership = consensus
            .raft
            .with_raft_state(|st| st.membership_state.effective().membership().clone())
            .await?;
        // Dial every member the log knows, so a restarted node finds its cluster even
        // without seeds.
        cluster.remember(
            membership
                .nodes()
                .filter(|(id, _)| **id != config.node_id)
                .map(|(id, n)| (*id, n.addr.clone()))
                .collect(),
        );
        // Alone in the membership: become leader before serving, so that a single node is
        // ready as soon as it starts.
        let alone = membership.voter_ids().eq([config.node_id]);
        if bootstrap || alone {
            let started = Instant::now();
            if !bootstrap {
                let _ = consensus.raft.trigger().elect().await;
            }
            if consensus
                .raft
                .wait(Some(Duration::from_secs(5)))
                .current_leader(config.node_id, "single-node leadership")
                .await
                .is_err()
            {
                warn!("this single-voter node did not become leader within 5 s");
            }
            info!(elapsed = ?started.elapsed(), "leader of a single-voter cluster");
        }
        Ok(consensus)
    }

    /// Starts the presence writer and the steward.
    pub fn spawn_loops(self: &Arc<Self>, shared: Arc<Shared>) {
        tokio::spawn(self.clone().presence_writer(shared.clone()));
        tokio::spawn(self.clone().steward(shared));
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
        // Called on every WebSocket accept: read the metrics in place, no clone.
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
            Ok(Err(e)) => Err(WriteError::Failed(e.to_string())),
            Err(_) => Err(WriteError::Failed(format!(
                "not committed within {COMMIT_TIMEOUT:?}: no quorum"
            ))),
        }
    }

    /// Commits `command`, through the leader when this node is not it.
    pub async fn write(&self, command: Command) -> Result<u64, WriteError> {
        match self.commit_here(command.clone()).await {
            Err(WriteError::NotLeader(leader)) => {
                self.metrics
                    .forwarded_writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                let ask = self.ask_leader(leader, network::Rpc::Write(command), FORWARD_TIMEOUT);
                tokio::select! {
                    reply = ask => match reply? {
                        network::Reply::Write(result) => result,
                        _ => Err(WriteError::unexpected_reply()),
                    },
                    () = leader_changed => Err(WriteError::NotLeader(leader)),
                }
            }
            local => local,
        }
    }

    /// Sends `rpc` to the leader `leader`; a failed call is a [`WriteError::Failed`].
    async fn ask_leader(
        &self,
        leader: NodeId,
        rpc: network::Rpc,
        timeout: Duration,
    ) -> Result<network::Reply, WriteError> {
        network::call(&self.cluster, leader, &rpc, timeout)
            .await
            .map_err(|e| WriteError::Failed(format!("leader {leader}: {e}")))
    }

    /// Waits until this node's replica reflects every write committed before the call
    /// (a read index confirmed by the leader with a quorum), so that a read that
    /// follows is linearizable.
    pub async fn linearizable(&self) -> Result<(), WriteError> {
        let index = match self.raft.get_read_log_id().await {
            Ok((read, _)) => read.map_or(0, |l| l.index),
            Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(f))) => {
                let leader = f.leader_id.ok_or(WriteError::NoLeader)?;
                let ask = self.ask_leader(leader, network::Rpc::ReadIndex, Duration::from_secs(2));
                match ask.await? {
                    network::Reply::ReadIndex(result) => result?,
                    _ => return Err(WriteError::unexpected_reply()),
                }
            }
            Err(e) => return Err(WriteError::Failed(e.to_string())),
        };
        self.raft
            .wait(Some(Duration::from_secs(2)))
            .applied_index_at_least(Some(index), "read index")
            .await
            .map(|_| ())
            .map_err(|e| WriteError::Failed(format!("replica did not catch up: {e}")))
    }

    /// `switchboard remove ID`: purges the node's presence, bars it from rejoining, and
    /// takes it out of the Raft membership. Run by the leader; others forward it.
    pub async fn remove(&self, id: NodeId) -> Result<(), WriteError> {
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(leader) if leader == self.node => {}
            Some(leader) => {
                let ask =
                    self.ask_leader(leader, network::Rpc::Remove(id), Duration::from_secs(10));
                return match ask.await? {
                    network::Reply::Remove(result) => result,
                    _ => Err(WriteError::unexpected_reply()),
                };
            }
            None => return Err(WriteError::NoLeader),
        }
        let membership = m.membership_config.membership().clone();
        let index = self.write(Command::Remove(id)).await?;
        // A node still up should learn of its own removal (so that it drains) before the
        // membership change stops its log: give it up to 2 s to replicate the entry.
        if self.cluster.connected_to(id) {
            let replicated = move |m: &openraft::RaftMetrics<NodeId, BasicNode>| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(&id).copied().flatten())
                    .is_some_and(|l| l.index >= index)
            };
            let _ = self
                .raft
                .wait(Some(Duration::from_secs(2)))
                .metrics(replicated, "the removed node has the removal")
                .await;
        }
        let fail = |e: RaftError<NodeId, ClientWriteError<NodeId, BasicNode>>| {
            WriteError::Failed(e.to_string())
        };
        if membership.voter_ids().any(|v| v == id) {
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(fail)?;
        } else if membership.learner_ids().any(|l| l == id) {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await
                .map_err(fail)?;
        }
        info!(node = id, "member removed");
        Ok(())
    }

    /// Answers a Raft RPC from `peer`.
    pub async fn serve(&self, peer: NodeId, rpc: network::Rpc) -> network::Reply {
        use network::{Reply, Rpc};
        match rpc {
            Rpc::AppendEntries(req) => Reply::AppendEntries(self.raft.append_entries(req).await),
            Rpc::Vote(req) => Reply::Vote(self.raft.vote(req).await),
            Rpc::InstallSnapshot(req) => {
                Reply::InstallSnapshot(self.raft.install_snapshot(req).await)
            }
            Rpc::Write(command) => Reply::Write(self.commit_here(command).await),
            Rpc::ReadIndex => Reply::ReadIndex(match self.raft.get_read_log_id().await {
                Ok((read, _)) => Ok(read.map_or(0, |l| l.index)),
                Err(e) => Err(WriteError::Failed(e.to_string())),
            }),
            Rpc::Remove(id) => {
                if id == peer {
                    warn!(peer, "a peer asked for its own removal");
                }
                Reply::Remove(Box::pin(self.remove(id)).await)
            }
        }
    }

    /// Commits this node's queued presence changes. On failure they go back to the front
    /// of the queue, so nothing is lost and order is kept.
    pub async fn flush_presence(&self, shared: &Shared) -> Result<usize, WriteError> {
        let _one_at_a_time = self.flushing.lock().await;
        let ops = shared.take_presence_ops();
        if ops.is_empty() {
            return Ok(0);
        }
        let n = ops.len();
        match self.write(Command::Presence(ops.clone())).await {
            Ok(index) => {
                self.last_written
                    .fetch_max(index, std::sync::atomic::Ordering::AcqRel);
                self.metrics
                    .writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.metrics.presence_ops_applied.add(n as u64);
                shared.metrics.presence_batches.inc();
                Ok(n)
            }
            Err(e) => {
                self.metrics
                    .write_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                shared.requeue_presence_ops(ops);
                Err(e)
            }
        }
    }

    async fn presence_writer(self: Arc<Self>, shared: Arc<Shared>) {
        let mut failures = 0u32;
        loop {
            let pause = if failures == 0 {
                crate::presence::FLUSH_INTERVAL
            } else {
                Duration::from_millis(50 * u64::from(failures.min(4)))
            };
            // A backlog of full batches goes out back to back.
            let backlog =
                failures == 0 && shared.presence_queue_len() >= crate::presence::MAX_BATCH;
            if !backlog {
                tokio::select! {
                    _ = shared.shutdown.cancelled() => break,
                    _ = shared.presence_flush.notified() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            match self.flush_presence(&shared).await {
                Ok(_) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_multiple_of(100) {
                        warn!(error = %e, failures, "presence changes not committed yet; retrying");
                    }
                }
            }
        }
    }

    async fn steward(self: Arc<Self>, shared: Arc<Shared>) {
        let mut down_since: HashMap<NodeId, Instant> = HashMap::new();
        let mut mismatches = 0u32;
        let mut removed_noticed = false;
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => break,
                _ = tokio::time::sleep(STEWARD_INTERVAL) => {}
            }
            if read(&shared.replica).removed.contains(&self.node) {
                if !removed_noticed {
                    removed_noticed = true;
                    warn!("this node was removed from the cluster; draining");
                    crate::admin::drain(&shared);
                }
                continue;
            }
            if !self.has_leader() {
                continue;
            }
            // Does the replica hold exactly this node's live connections? Only asked when
            // it is settled: nothing queued, no write in flight, and this node's last
            // write applied here. Two disagreeing looks in a row trigger a resync.
            let settled = match self.flushing.try_lock() {
                Ok(_writer_idle) if !shared.draining() => {
                    let applied = self
                        .raft
                        .metrics()
                        .borrow()
                        .last_applied
                        .map_or(0, |l| l.index);
                    let written = self.last_written.load(std::sync::atomic::Ordering::Acquire);
                    match shared.settled_live_connections() {
                        Some(live) if applied >= written => Some((
                            live,
                            read(&shared.replica).presence.node_connections(self.node),
                        )),
                        _ => None,
                    }
                }
                _ => None,
            };
            if let Some((live, registered)) = settled {
                if registered != live {
                    mismatches += 1;
                    if mismatches >= 2 {
                        info!(registered, live, "re-registering this node's connections");
                        shared.resync_presence();
                        self.metrics
                            .resyncs
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        mismatches = 0;
                    }
                } else {
                    mismatches = 0;
                }
            }
            if self.raft.metrics().borrow().current_leader == Some(self.node) {
                self.lead(&shared, &mut down_since).await;
            } else {
                down_since.clear();
            }
        }
    }

    /// The leader's chores: membership and purging the dead.
    async fn lead(&self, shared: &Shared, down_since: &mut HashMap<NodeId, Instant>) {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership().clone();
        let removed = read(&shared.replica).removed.clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let members = self.cluster.members();
        let up: BTreeSet<NodeId> = members.iter().filter(|p| p.up).map(|p| p.id).collect();

        // New peers join as learners.
        for peer in members.iter().filter(|p| p.up) {
            if voters.contains(&peer.id)
                || learners.contains(&peer.id)
                || removed.contains(&peer.id)
            {
                continue;
            }
            info!(node = peer.id, "adding a learner");
            let add = self
                .raft
                .add_learner(peer.id, BasicNode::new(peer.peer.clone()), false);
            match tokio::time::timeout(Duration::from_secs(5), add).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => warn!(node = peer.id, error = %e, "adding a learner failed"),
                Err(_) => warn!(node = peer.id, "adding a learner timed out"),
            }
        }
        // Learners that have caught up become voters, up to --max-voters.
        if voters.len() < self.max_voters && membership.get_joint_config().len() == 1 {
            let last = m.last_log_index.unwrap_or(0);
            let caught_up = |id: &NodeId| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .is_some_and(|l| l.index + 100 >= last)
            };
            if let Some(id) = learners
                .iter()
                .find(|id| up.contains(id) && caught_up(id) && !removed.contains(id))
            {
                info!(node = id, "promoting a learner to voter");
                let change = self
                    .raft
                    .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([*id])), true);
                match tokio::time::timeout(Duration::from_secs(5), change).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => warn!(node = id, error = %e, "promotion failed"),
                    Err(_) => warn!(node = id, "promotion timed out"),
                }
            }
        }
        // Peers down for --node-timeout-ms lose their presence.
        let holders: Vec<NodeId> = read(&shared.replica)
            .presence
            .nodes()
            .filter(|n| *n != self.node)
            .collect();
        let now = Instant::now();
        down_since.retain(|id, _| !up.contains(id));
        for node in holders {
            if up.contains(&node) {
                continue;
            }
            let since = *down_since.entry(node).or_insert_with(|| {
                // Silent for a while already? Count from when it was last heard of.
                self.cluster
                    .last_seen(node)
                    .map_or(now, |ago| now.checked_sub(ago).unwrap_or(now))
            });
            if now.duration_since(since) >= self.node_timeout {
                info!(
                    node,
                    "purging the presence of a node down for --node-timeout-ms"
                );
                let purge = Command::Presence(vec![PresenceOp::PurgeNode { node }]);
                if self.write(purge).await.is_ok() {
                    self.metrics
                        .purges
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// Appends the Raft metrics in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.status();
        let c = &self.metrics;
        let rows: [(&str, &str, &str, u64); 11] = [
            ("raft_term", "gauge", "Current Raft term.", s.term),
            (
                "raft_is_leader",
                "gauge",
                "1 on the Raft leader.",
                u64::from(s.role == "leader"),
            ),
            (
                "raft_last_log_index",
                "gauge",
                "Last Raft log index on this node.",
                s.last_log_index,
            ),
            (
                "raft_commit_index",
                "gauge",
                "Raft log index committed and applied here.",
                s.commit_index,
            ),
            (
                "raft_apply_lag",
                "gauge",
                "Log entries written here but not yet applied.",
                s.apply_lag,
            ),
            (
                "raft_voters",
                "gauge",
                "Voters in the Raft membership.",
                s.voters.len() as u64,
            ),
            (
                "presence_writes_total",
                "counter",
                "Presence batches committed through Raft.",
                c.writes.load(Relaxed),
            ),
            (
                "presence_write_failures_total",
                "counter",
                "Presence batches that could not be committed (retried).",
                c.write_failures.load(Relaxed),
            ),
            (
                "presence_forwarded_writes_total",
                "counter",
                "Presence batches forwarded to the leader.",
                c.forwarded_writes.load(Relaxed),
            ),
            (
                "presence_resyncs_total",
                "counter",
                "Times this node re-registered its connections.",
                c.resyncs.load(Relaxed),
            ),
            (
                "presence_purges_total",
                "counter",
                "Down nodes whose presence this node purged as leader.",
                c.purges.load(Relaxed),
            ),
        ];
        for (name, kind, help, value) in rows {
            crate::metrics::write_metric(out, name, kind, help, value);
        }
    }
}

/// A shared handle on the replica, for the state machine and the readers.
pub type SharedReplica = Arc<RwLock<Replica>>;
