//! Presence sharded over several Raft groups (`--presence-shards S`, docs/cluster.md
//! "Presence shards").
//!
//! Shard `k` is Raft group `k + 1` (group 0 is the control group), with 3 voters: the
//! members ranked first for it (`presence::shards::placement`). The control group keeps
//! each shard's voters as recorded ([`Command::ShardFormed`]); a node hosts the shards it
//! is placed in or recorded in, and reaches the others through their recorded voters.
//!
//! - **Forming**: the control leader creates each shard that has no record yet on itself
//!   (records it with itself as the one voter, then initialises the group), before the
//!   node serves when it bootstraps the cluster. From then on the shard's leader
//!   converges the group to the placement ([`steward`]).
//! - **Hosting** ([`Shards::drive`]): every `STEWARD_INTERVAL` this node opens the shards
//!   it should host (an empty group, until its leader adds it) and closes the others,
//!   deleting their store (`<data-dir>/raft/group-<k+1>/`).
//! - **Writes** ([`writer`]): one writer per shard commits that shard's queued presence
//!   changes on the shard's leader, directly when this node hosts the shard, else through
//!   one of its voters; and checks, when settled, that the shard holds exactly this node's
//!   live connections in it (else it resyncs that shard).
//! - **Reads**: a user's connections and presence events are in the user's shard; read
//!   locally when hosted, else from one of its voters ([`Shards::presence_of`],
//!   [`Shards::events`]); readers of events follow a shard through its [`feeds`] entry.

mod feeds;
mod hosting;
mod reads;
mod steward;
mod stewarding;
mod writer;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use switchboard_proto::peer::NodeId;
use tracing::{info, warn};

use super::Groups;
use super::consensus::{Consensus, RaftSettings};
use super::network::Transport;
use super::steward::STEWARD_INTERVAL;
use crate::lifecycle::Lifecycle;
use crate::metrics::Row;
use crate::presence::shards::{Shard, group_of, placement, shard_of};
use crate::presence::{Command, MAX_EVENT_RING_BYTES, PresenceQueue, SharedReplica};
use crate::sync::{read, write};
pub use feeds::Feed;
use hosting::Hosting;
pub use steward::{ShardAction, ShardSteward, ShardView};

/// A call to a shard's voter (a write, a read) is given up after this long.
const CALL_TIMEOUT: Duration = Duration::from_millis(700);
/// Longest a change of a shard's membership (a learner added, voters replaced) may take.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the bootstrapping node waits for each new shard's leadership before serving.
const FORM_WAIT: Duration = Duration::from_secs(5);
/// While a shard has no leader, a call to it is tried again this often, for this long
/// (an election takes about a second).
const LEADERLESS_RETRY: Duration = Duration::from_millis(100);
const LEADERLESS_WAIT: Duration = Duration::from_millis(2500);
/// Most voters tried for one call to a shard this node does not host (the ones recorded,
/// then the leader they name).
const MAX_HOPS: usize = 5;

/// What [`Shards`] is built from.
#[derive(Debug)]
pub struct ShardsDeps {
    pub count: Shard,
    /// The settings of the control group (each shard's are derived from them).
    pub settings: RaftSettings,
    pub transport: Arc<dyn Transport>,
    pub groups: Arc<Groups>,
    pub control: Arc<Consensus>,
    pub queue: Arc<PresenceQueue>,
    pub lifecycle: Arc<Lifecycle>,
    /// `--presence-events`: the node's shards keep this many between them (each its
    /// share).
    pub presence_events: usize,
}

/// One shard's writer state.
#[derive(Debug, Default)]
struct Slot {
    /// Serialises the shard's flushes (its writer loop and the final one at shutdown).
    flushing: tokio::sync::Mutex<()>,
    /// Log index of this node's last committed write in the shard.
    last_written: AtomicU64,
}

/// See the module header.
pub struct Shards {
    me: NodeId,
    count: Shard,
    settings: RaftSettings,
    transport: Arc<dyn Transport>,
    groups: Arc<Groups>,
    control: Arc<Consensus>,
    queue: Arc<PresenceQueue>,
    lifecycle: Arc<Lifecycle>,
    presence_events: usize,
    hosted: RwLock<BTreeMap<Shard, Arc<Consensus>>>,
    /// The voter of each shard that last served a call from here (tried first).
    hints: Mutex<BTreeMap<Shard, NodeId>>,
    slots: Vec<Slot>,
    /// The shards' events this node's readers follow.
    feeds: Mutex<BTreeMap<Shard, Arc<Feed>>>,
    /// The node's runtime, where feeds run (readers may be on the admin runtime).
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for Shards {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shards")
            .field("count", &self.count)
            .field("hosted", &self.hosted_ids())
            .finish_non_exhaustive()
    }
}

impl Shards {
    /// Opens the shards this node hosts (creating them all first when this node leads a
    /// control group that has none: a new cluster) and starts the driver and the writers.
    pub async fn start(deps: ShardsDeps) -> anyhow::Result<Arc<Shards>> {
        let shards = Arc::new(Shards {
            me: deps.settings.node_id,
            count: deps.count,
            settings: deps.settings,
            transport: deps.transport,
            groups: deps.groups,
            control: deps.control,
            queue: deps.queue,
            lifecycle: deps.lifecycle,
            presence_events: deps.presence_events,
            hosted: RwLock::default(),
            hints: Mutex::default(),
            slots: (0..deps.count).map(|_| Slot::default()).collect(),
            feeds: Mutex::default(),
            runtime: tokio::runtime::Handle::current(),
        });
        let formed = shards.form().await;
        shards.host().await;
        // A node that formed shards serves once they have their leader.
        let deadline = tokio::time::Instant::now() + FORM_WAIT;
        for consensus in shards.hosted_groups().into_iter().filter(|_| formed) {
            let until = deadline.saturating_duration_since(tokio::time::Instant::now());
            let _ = consensus
                .raft
                .wait(Some(until))
                .metrics(|m| m.current_leader.is_some(), "a shard leader")
                .await;
        }
        tokio::spawn(shards.clone().drive());
        for shard in 0..shards.count {
            tokio::spawn(writer::run(shards.clone(), shard));
        }
        Ok(shards)
    }

    /// The number of shards.
    pub fn count(&self) -> Shard {
        self.count
    }

    /// The shard `user`'s presence lives in.
    pub fn shard_of(&self, user: &str) -> Shard {
        shard_of(user, self.count)
    }

    /// The shards this node hosts, in order.
    pub fn hosted_ids(&self) -> Vec<Shard> {
        read(&self.hosted).keys().copied().collect()
    }

    fn hosted_groups(&self) -> Vec<Arc<Consensus>> {
        read(&self.hosted).values().cloned().collect()
    }

    /// Shard `shard`'s group, if this node hosts it.
    pub fn hosted(&self, shard: Shard) -> Option<Arc<Consensus>> {
        read(&self.hosted).get(&shard).cloned()
    }

    /// Shard `shard`'s group, if this node hosts it as a voter that knows its leader: the
    /// one reads and writes go through locally. Otherwise they go to the recorded voters:
    /// a node placed in a shard but not yet added holds nothing yet, and one the shard
    /// dropped (but that has not closed it yet) knows no leader.
    fn voting(&self, shard: Shard) -> Option<Arc<Consensus>> {
        self.hosted(shard).filter(|c| {
            let metrics = c.raft.metrics();
            let m = metrics.borrow();
            m.current_leader.is_some()
                && m.membership_config
                    .membership()
                    .voter_ids()
                    .any(|v| v == self.me)
        })
    }

    /// As the control leader: records this node as the one voter of every shard that has
    /// no record yet (a new cluster), for [`Self::host`] to open and initialise them.
    /// Whether it created any.
    async fn form(&self) -> bool {
        let leader = self.control.raft.metrics().borrow().current_leader;
        if leader != Some(self.me) {
            return false;
        }
        let unformed = hosting::unformed(self.count, &self.control.replica.read().shards);
        let mut created = false;
        for shard in unformed {
            let record = Command::ShardFormed {
                shard,
                voters: vec![self.me],
            };
            match self.control.write(record).await {
                Ok(index) => {
                    // `host` reads the record from this node's replica.
                    let _ = self.control.caught_up(index).await;
                    info!(shard, "presence shard created on this node");
                    created = true;
                }
                Err(e) => warn!(shard, error = %e, "creating a presence shard failed; retried"),
            }
        }
        created
    }

    /// Opens the shards this node should host and closes the others, as
    /// [`hosting::hosting`] decides (a shard is hosted once it has a record and this node
    /// is placed in it or recorded as its voter; it is closed, its store deleted, only
    /// once its recorded voters are its placement and this node is in neither: a voter
    /// never loses its log).
    async fn host(&self) {
        let members = members(&self.control);
        let recorded = self.control.replica.read().shards.clone();
        for shard in 0..self.count {
            let placed = placement(shard, members.iter().copied());
            let hosted = self.hosted(shard);
            let voters = recorded.get(&shard).map(Vec::as_slice);
            match (
                hosting::hosting(self.me, voters, &placed, hosted.is_some()),
                hosted,
            ) {
                (Hosting::Open { alone }, _) => {
                    if let Err(e) = self.open(shard, alone).await {
                        warn!(shard, error = %e, "opening a presence shard failed; retried");
                    }
                }
                (Hosting::Close, Some(consensus)) => self.close(shard, consensus).await,
                (Hosting::InitializeAlone, Some(consensus)) => {
                    if let Err(e) = consensus.initialize_alone(&self.settings.advertised).await {
                        warn!(shard, error = %e, "initialising a presence shard failed");
                    }
                }
                _ => {}
            }
        }
    }

    fn dir(&self, shard: Shard) -> PathBuf {
        self.settings
            .data_dir
            .join("raft")
            .join(format!("group-{}", group_of(shard)))
    }

    /// Opens shard `shard`'s group (initialising it when this node is its one voter).
    async fn open(&self, shard: Shard, alone: bool) -> anyhow::Result<()> {
        let settings = RaftSettings {
            group: group_of(shard),
            may_bootstrap: false,
            presence: true,
            ..self.settings.clone()
        };
        // Each shard keeps its share of the node's bounds, so that a node hosting every
        // shard keeps no more events than `--presence-events` says.
        let shares = usize::from(self.count.max(1));
        let replica = Arc::new(SharedReplica::bounded(
            self.presence_events.div_ceil(shares),
            MAX_EVENT_RING_BYTES / shares,
        ));
        let (consensus, _) = Consensus::start(
            settings,
            self.transport.clone(),
            replica,
            self.queue.clone(),
            self.lifecycle.clone(),
        )
        .await?;
        if alone {
            consensus
                .initialize_alone(&self.settings.advertised)
                .await?;
        }
        self.groups.insert(consensus.clone());
        write(&self.hosted).insert(shard, consensus.clone());
        tokio::spawn(stewarding::run(consensus, shard, self.control.clone()));
        info!(shard, "hosting presence shard");
        Ok(())
    }

    /// Stops hosting shard `shard` and deletes its store.
    async fn close(&self, shard: Shard, consensus: Arc<Consensus>) {
        write(&self.hosted).remove(&shard);
        self.groups.remove(group_of(shard));
        let _ = consensus.raft.shutdown().await;
        drop(consensus);
        if let Err(e) = std::fs::remove_dir_all(self.dir(shard)) {
            warn!(shard, error = %e, "deleting a closed presence shard's store failed");
        }
        info!(shard, "no longer hosting presence shard");
    }

    /// The driver: every `STEWARD_INTERVAL`, create missing shards (as control leader)
    /// and open or close the shards this node hosts, until shutdown.
    async fn drive(self: Arc<Self>) {
        let shutdown = self.lifecycle.shutdown_token().clone();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(STEWARD_INTERVAL) => {}
            }
            self.form().await;
            self.host().await;
        }
        for consensus in self.hosted_groups() {
            let _ = consensus.raft.shutdown().await;
        }
    }

    /// Commits this node's queued presence changes in every shard (a drain's last step):
    /// true once nothing is queued.
    pub async fn flush_all(&self) -> bool {
        for shard in 0..self.count {
            let _ = self.flush(shard).await;
        }
        self.queue.is_empty()
    }

    /// Presence events the shards this node hosts derived since it started, and the
    /// events (and bytes) their rings keep.
    pub fn event_stats(&self) -> (u64, usize, usize) {
        self.hosted_groups()
            .iter()
            .map(|c| {
                let (kept, bytes, _) = c.replica().ring_stats();
                (c.replica().events_derived(), kept, bytes)
            })
            .fold((0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2))
    }

    /// Connections registered in the shards this node hosts.
    pub fn hosted_connections(&self) -> usize {
        self.hosted_groups().iter().map(|c| c.replica().len()).sum()
    }

    /// Disconnect calls owed to the backend in the shards this node hosts.
    pub fn hosted_owed(&self) -> usize {
        self.hosted_groups()
            .iter()
            .map(|c| c.replica().read().presence.owed_len())
            .sum()
    }

    /// Each shard as this node sees it, for `status`.
    pub fn status(&self) -> serde_json::Value {
        let recorded = self.control.replica.read().shards.clone();
        let shards: Vec<serde_json::Value> = (0..self.count)
            .map(|shard| {
                let hosted = self.hosted(shard).map(|c| {
                    let st = c.status();
                    serde_json::json!({
                        "role": st.role,
                        "leader": st.leader,
                        "last_applied": st.last_applied,
                        "connections": c.replica().len(),
                        "newest_event": format!("{shard}:{}", c.replica().newest_event()),
                    })
                });
                serde_json::json!({
                    "shard": shard,
                    "voters": recorded.get(&shard).cloned().unwrap_or_default(),
                    "hosted": hosted,
                })
            })
            .collect();
        serde_json::json!({ "count": self.count, "shards": shards })
    }

    /// The shards' rows in `/metrics`.
    pub fn rows(&self) -> Vec<Row> {
        let hosted = self.hosted_groups();
        let led = hosted
            .iter()
            .filter(|c| c.status().role == "leader")
            .count();
        vec![
            Row::gauge(
                "presence_shards_hosted",
                "Presence shards this node votes in or is joining.",
                hosted.len() as u64,
            ),
            Row::gauge(
                "presence_shards_led",
                "Presence shards this node leads.",
                led as u64,
            ),
        ]
    }
}

/// The control group's members that may vote in shards: voters and learners, less the
/// removed.
fn members(control: &Consensus) -> BTreeSet<NodeId> {
    let m = control.raft.metrics().borrow().clone();
    let membership = m.membership_config.membership();
    let removed = control.replica.read().removed.clone();
    membership
        .voter_ids()
        .chain(membership.learner_ids())
        .filter(|id| !removed.contains(id))
        .collect()
}
