//! Helpers of the cluster tests (`cluster.rs`, `cluster_delivery.rs`): nodes meshed over
//! QUIC on 127.0.0.1 and waits on what they say.

use switchboard_client::{Connection, Incoming};
use switchboard_node::config::Config;

use super::*;

pub const CLUSTER_SECRET: &str = "cluster-test-secret";

pub async fn node(id: u64, seeds: &[&TestNode], secret: &str) -> TestNode {
    member(id, seeds, secret, |_| {}).await
}

/// Node `id` of a test cluster: seeded with `seeds`, proving `secret`, with a 1.5 s node
/// timeout, then whatever `adjust` changes.
pub async fn member(
    id: u64,
    seeds: &[&TestNode],
    secret: &str,
    adjust: impl FnOnce(&mut Config),
) -> TestNode {
    let seeds: Vec<String> = seeds
        .iter()
        .map(|n| n.node().addrs().peer.unwrap().to_string())
        .collect();
    let secret = secret.to_owned();
    TestNode::start(move |c| {
        c.node_id = id;
        c.cluster.seeds = seeds;
        c.credentials.cluster_secret = Some(secret.into());
        c.cluster.node_timeout = Duration::from_millis(1500);
        adjust(c);
    })
    .await
}

pub async fn members_up(n: &TestNode) -> Vec<u64> {
    let (_, body) = http_get(&n.admin_addr(), "/v1/members").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut up: Vec<u64> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["up"] == true)
        .map(|m| m["id"].as_u64().unwrap())
        .collect();
    up.sort_unstable();
    up
}

pub async fn wait_members(n: &TestNode, expected: &[u64]) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let up = members_up(n).await;
        if up == expected {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let (_, body) = http_get(&n.admin_addr(), "/v1/members").await;
            panic!("timed out waiting for members {expected:?}; up: {up:?}; {body}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn status(n: &TestNode) -> serde_json::Value {
    let (_, body) = http_get(&n.admin_addr(), "/v1/status").await;
    serde_json::from_str(&body).unwrap()
}

/// Waits until every node is ready, with roles `roles` (by node, in order) and node 1
/// as leader: a cluster that has formed.
pub async fn wait_formed(nodes: &[&TestNode], roles: &[&str]) {
    for (n, role) in nodes.iter().zip(roles) {
        wait_for(&format!("node ready as {role}"), DEADLINE, || async {
            let v = status(n).await;
            (v["ready"] == true && v["role"] == *role && v["leader"] == 1).then_some(())
        })
        .await;
    }
}

pub async fn group_total(n: &TestNode, group: &str) -> u64 {
    let (_, body) = http_get(&n.admin_addr(), &format!("/v1/groups/{group}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["connections"].as_u64().unwrap_or(0)
}

pub async fn wait_group_total(n: &TestNode, group: &str, total: u64) {
    wait_for(
        &format!("{total} in {group} as seen by a node"),
        DEADLINE,
        || async { (group_total(n, group).await == total).then_some(()) },
    )
    .await;
}

/// The nodes holding `user`'s connections, as `node`'s admin API reports them.
pub async fn presence_nodes(n: &TestNode, user: &str) -> Vec<u64> {
    let (_, body) = http_get(&n.admin_addr(), &format!("/v1/presence/{user}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_u64().unwrap())
        .collect()
}

pub async fn wait_presence(n: &TestNode, user: &str, nodes: &[u64]) {
    wait_for(
        &format!("presence of {user} on {nodes:?}"),
        DEADLINE,
        || async { (presence_nodes(n, user).await == nodes).then_some(()) },
    )
    .await;
}

pub async fn text(c: &mut Connection) -> String {
    match c.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Text(t) => t,
        other => panic!("{other:?}"),
    }
}
