//! Multi-node Raft logic over an in-memory router (openraft's examples do the same): the
//! real store, codec, steward and writer, with calls dispatched in process instead of over
//! QUIC. A node can be cut off from the others.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};

use super::network::{BoxFuture, CallError, Reply, Rpc, Transport, answer};
use super::steward::PeerState;
use super::{Consensus, Groups, RaftSettings};
use crate::health::Health;
use crate::lifecycle::{Lifecycle, Stage};
use crate::presence::{PresenceQueue, SharedReplica};
use crate::sync::lock;

const DEADLINE: Duration = Duration::from_secs(20);
const NODE_TIMEOUT: Duration = Duration::from_secs(2);

/// Every node of a test cluster, and which are cut off.
#[derive(Debug, Default)]
struct Router {
    nodes: Mutex<HashMap<NodeId, Arc<Groups>>>,
    cut: Mutex<HashSet<NodeId>>,
}

impl Router {
    fn reachable(&self, a: NodeId, b: NodeId) -> Option<Arc<Groups>> {
        let cut = lock(&self.cut);
        if cut.contains(&a) || cut.contains(&b) {
            return None;
        }
        lock(&self.nodes).get(&b).cloned()
    }
}

/// One node's view of the router.
#[derive(Debug)]
struct Endpoint {
    me: NodeId,
    router: Arc<Router>,
}

impl Transport for Endpoint {
    fn call(
        &self,
        target: NodeId,
        rpc: Bytes,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<Bytes, CallError>> {
        Box::pin(async move {
            let node = self
                .router
                .reachable(self.me, target)
                .ok_or(CallError::NotConnected(target))?;
            match tokio::time::timeout(timeout, answer(&node, self.me, &rpc)).await {
                Ok(Ok(reply)) => Ok(reply),
                Ok(Err(source)) => Err(CallError::Codec {
                    node: target,
                    source,
                }),
                Err(_) => Err(CallError::Timeout(target, timeout)),
            }
        })
    }

    fn peers(&self) -> Vec<PeerState> {
        let ids: Vec<NodeId> = lock(&self.router.nodes).keys().copied().collect();
        ids.into_iter()
            .filter(|id| *id != self.me)
            .map(|id| PeerState {
                id,
                addr: format!("mem:{id}"),
                up: self.router.reachable(self.me, id).is_some(),
                last_seen: Some(Duration::ZERO),
                incarnation: Some(id * 1000),
                boot: Some(id),
                leaving: false,
            })
            .collect()
    }
}

/// A node of the test cluster.
struct TestNode {
    consensus: Arc<Consensus>,
    replica: Arc<SharedReplica>,
    queue: Arc<PresenceQueue>,
    lifecycle: Arc<Lifecycle>,
    health: Arc<Health>,
    dir: std::path::PathBuf,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start(router: &Arc<Router>, id: NodeId, bootstrap: bool) -> TestNode {
    let dir = std::env::temp_dir().join(format!(
        "switchboard-raft-{}-{id}-{}",
        std::process::id(),
        crate::clock::unix_micros()
    ));
    let replica = Arc::new(SharedReplica::default());
    let queue = Arc::new(PresenceQueue::new(id, 0));
    let lifecycle = Arc::new(Lifecycle::default());
    let health = Arc::new(Health::new(lifecycle.clone()));
    let transport = Arc::new(Endpoint {
        me: id,
        router: router.clone(),
    });
    let (consensus, _) = Consensus::start(
        RaftSettings {
            node_id: id,
            group: super::CONTROL,
            data_dir: dir.clone(),
            node_timeout: NODE_TIMEOUT,
            max_voters: 5,
            may_bootstrap: bootstrap,
            advertised: format!("mem:{id}"),
            incarnation: id * 1000,
            boot: id,
            presence: true,
        },
        transport,
        replica.clone(),
        queue.clone(),
        lifecycle.clone(),
    )
    .await
    .expect("raft starts");
    let groups = Arc::new(Groups::default());
    groups.insert(consensus.clone());
    lock(&router.nodes).insert(id, groups);
    consensus.spawn(health.clone());
    lifecycle.advance(Stage::Ready);
    health.set_majority(true);
    TestNode {
        consensus,
        replica,
        queue,
        lifecycle,
        health,
        dir,
    }
}

/// Polls `check` every 20 ms until it holds, at most [`DEADLINE`].
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn connect(node: NodeId, connection: &str, user: &str) -> PresenceOp {
    PresenceOp::Connect(ConnectionRecord {
        node,
        connection: connection.into(),
        user: user.into(),
        connected_at: 1,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rpc_names_its_group_and_a_node_without_that_group_is_unreachable_for_it() {
    let router = Arc::new(Router::default());
    let one = start(&router, 1, true).await;
    let two = start(&router, 2, false).await;
    let endpoint = Endpoint {
        me: 2,
        router: router.clone(),
    };
    let timeout = Duration::from_secs(2);
    let read = super::network::call(&endpoint, 1, super::CONTROL, &Rpc::ReadIndex, timeout).await;
    assert!(matches!(read, Ok(Reply::ReadIndex(_))), "{read:?}");
    let elsewhere = super::network::call(&endpoint, 1, 7, &Rpc::ReadIndex, timeout).await;
    assert!(
        matches!(elsewhere, Err(CallError::NotHere(1, 7))),
        "{elsewhere:?}"
    );
    drop((one, two));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_replicate_forwarded_writes_and_remove_a_member() {
    let router = Arc::new(Router::default());
    let one = start(&router, 1, true).await;
    let two = start(&router, 2, false).await;
    let three = start(&router, 3, false).await;

    // The steward adds 2 and 3 as learners, then promotes them once caught up.
    wait_for("three voters", || {
        one.consensus.status().voters == vec![1, 2, 3]
    })
    .await;
    wait_for("every node ready", || {
        [&one, &two, &three].iter().all(|n| n.health.ready())
    })
    .await;

    // A follower's presence change is forwarded to the leader and reaches every replica.
    two.queue.push(connect(2, "2-a", "42"));
    wait_for("the connection everywhere", || {
        [&one, &two, &three]
            .iter()
            .all(|n| n.replica.presence_of("42").len() == 1)
    })
    .await;
    assert!(two.consensus.counters.forwarded_writes.get() >= 1);
    wait_for("every node bound to its incarnation", || {
        three.replica.read().incarnations == BTreeMap::from([(1, 1000), (2, 2000), (3, 3000)])
    })
    .await;
    two.consensus
        .linearizable()
        .await
        .expect("a linearizable read");

    // Removing node 3 from a follower: forwarded, purged, out of the membership, and
    // node 3 drains when it learns of it.
    three.queue.push(connect(3, "3-a", "42"));
    wait_for("node 3's connection", || {
        one.replica.presence_of("42").len() == 2
    })
    .await;
    two.consensus.remove(3).await.expect("removed");
    wait_for("two voters", || one.consensus.status().voters == vec![1, 2]).await;
    assert!(one.replica.is_removed(3));
    assert_eq!(
        one.replica.presence_of("42").len(),
        1,
        "its presence purged"
    );
    wait_for("node 3 draining", || three.lifecycle.draining()).await;

    for node in [one, two, three] {
        let _ = node.consensus.raft.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_off_leader_stops_being_ready_and_the_rest_purge_it() {
    let router = Arc::new(Router::default());
    let one = start(&router, 1, true).await;
    let two = start(&router, 2, false).await;
    let three = start(&router, 3, false).await;
    wait_for("three voters", || {
        one.consensus.status().voters == vec![1, 2, 3]
    })
    .await;
    one.queue.push(connect(1, "1-a", "7"));
    wait_for("the connection on node 2", || {
        two.replica.presence_of("7").len() == 1
    })
    .await;

    lock(&router.cut).insert(1);
    // Node 1 has no quorum ack within the node timeout: no leader that can commit.
    wait_for("node 1 not ready", || !one.health.ready()).await;
    // The others elect a leader among themselves, and it purges node 1's presence.
    wait_for("a new leader", || {
        matches!(two.consensus.status().leader, Some(2 | 3)) && two.health.ready()
    })
    .await;
    wait_for("node 1's presence purged", || {
        two.replica.presence_of("7").is_empty() && three.replica.presence_of("7").is_empty()
    })
    .await;
    // What node 1 queues meanwhile is not committed anywhere: its writer fails and
    // keeps the change queued.
    let failures = one.consensus.counters.write_failures.get();
    one.queue.push(connect(1, "1-b", "8"));
    wait_for("node 1's write to fail", || {
        one.consensus.counters.write_failures.get() > failures
    })
    .await;
    assert!(!one.queue.is_empty(), "the change stays queued");
    assert!(two.replica.presence_of("8").is_empty());

    // Healed: node 1 follows the new leader and re-registers its connections.
    lock(&router.cut).clear();
    wait_for("node 1 ready again", || one.health.ready()).await;
    wait_for("node 1's connections back", || {
        two.replica.presence_of("7").len() == 1 && two.replica.presence_of("8").len() == 1
    })
    .await;

    for node in [one, two, three] {
        let _ = node.consensus.raft.shutdown().await;
    }
}
