//! Several nodes in one process over real QUIC on 127.0.0.1: the mesh, gossip,
//! forwarding, and the Raft presence registry (membership, replication, forwarded
//! writes, linearizable reads, `remove`). Killing processes is in tests/python.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use switchboard_client::{Connection, Incoming};
use switchboard_node::config::Config;
use switchboard_proto::resp::Frame;

const CLUSTER_SECRET: &str = "cluster-test-secret";

async fn node(id: u64, seeds: &[&TestNode], secret: &str) -> TestNode {
    member(id, seeds, secret, |_| {}).await
}

/// Node `id` of a test cluster: seeded with `seeds`, proving `secret`, with a 1.5 s node
/// timeout, then whatever `adjust` changes.
async fn member(
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

async fn members_up(n: &TestNode) -> Vec<u64> {
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

async fn wait_members(n: &TestNode, expected: &[u64]) {
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

async fn status(n: &TestNode) -> serde_json::Value {
    let (_, body) = http_get(&n.admin_addr(), "/v1/status").await;
    serde_json::from_str(&body).unwrap()
}

/// Waits until every node is ready, with roles `roles` (by node, in order) and node 1
/// as leader: a cluster that has formed.
async fn wait_formed(nodes: &[&TestNode], roles: &[&str]) {
    for (n, role) in nodes.iter().zip(roles) {
        wait_for(&format!("node ready as {role}"), DEADLINE, || async {
            let v = status(n).await;
            (v["ready"] == true && v["role"] == *role && v["leader"] == 1).then_some(())
        })
        .await;
    }
}

async fn group_total(n: &TestNode, group: &str) -> u64 {
    let (_, body) = http_get(&n.admin_addr(), &format!("/v1/groups/{group}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["connections"].as_u64().unwrap_or(0)
}

async fn wait_group_total(n: &TestNode, group: &str, total: u64) {
    wait_for(
        &format!("{total} in {group} as seen by a node"),
        DEADLINE,
        || async { (group_total(n, group).await == total).then_some(()) },
    )
    .await;
}

/// The nodes holding `user`'s connections, as `node`'s admin API reports them.
async fn presence_nodes(n: &TestNode, user: &str) -> Vec<u64> {
    let (_, body) = http_get(&n.admin_addr(), &format!("/v1/presence/{user}")).await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["connections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["node"].as_u64().unwrap())
        .collect()
}

async fn wait_presence(n: &TestNode, user: &str, nodes: &[u64]) {
    wait_for(
        &format!("presence of {user} on {nodes:?}"),
        DEADLINE,
        || async { (presence_nodes(n, user).await == nodes).then_some(()) },
    )
    .await;
}

async fn publish(n: &TestNode, group: &str, payload: &[u8]) -> i64 {
    let mut r = Resp::connect(&n.resp_addr()).await;
    match r.cmd(&[b"PUBLISH", group.as_bytes(), payload]).await {
        Frame::Integer(k) => k,
        other => panic!("{other:?}"),
    }
}

async fn text(c: &mut Connection) -> String {
    match c.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Text(t) => t,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn three_nodes_mesh_and_deliver_everywhere_in_order() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = node(2, &[&a], CLUSTER_SECRET).await;
    let c = node(3, &[&a], CLUSTER_SECRET).await;
    // B and C only know A, and still find each other.
    for n in [&a, &b, &c] {
        wait_members(n, &[1, 2, 3]).await;
    }
    // The joiners were added as learners, then promoted: three voters, one leader.
    wait_formed(&[&a, &b, &c], &["leader", "follower", "follower"]).await;
    let mut on_b = Connection::connect_url(&b.ws_url(), Some(&simplejwt_token(42)))
        .await
        .unwrap();
    let mut on_c = Connection::connect_url(&c.ws_url(), Some(&simplejwt_token(42)))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        wait_group_total(n, "user_42", 2).await;
    }
    // Published on A, where nobody is: routed to the two connections on B and C.
    assert_eq!(publish(&a, "user_42", b"hello cluster").await, 2);
    assert_eq!(text(&mut on_b).await, "hello cluster");
    assert_eq!(text(&mut on_c).await, "hello cluster");
    // The group's per-node view agrees everywhere.
    let (_, body) = http_get(&a.admin_addr(), "/v1/groups/user_42").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["nodes"], serde_json::json!({"2": 1, "3": 1}));
    // Status and members agree on the Raft view everywhere.
    for n in [&a, &b, &c] {
        let v = status(n).await;
        assert_eq!(v["raft"]["voters"], serde_json::json!([1, 2, 3]), "{v}");
        assert_eq!(v["term"], status(&a).await["term"]);
        let (_, body) = http_get(&n.admin_addr(), "/v1/members").await;
        let m: serde_json::Value = serde_json::from_str(&body).unwrap();
        let voters: Vec<bool> = m["members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["voter"] == true)
            .collect();
        assert_eq!(voters, vec![true, true, true], "{m}");
    }
    // Presence is replicated: every node answers from its replica, and a linearizable
    // read on a follower (read index from the leader) agrees.
    for n in [&a, &b, &c] {
        wait_presence(n, "42", &[2, 3]).await;
    }
    let (code, body) = http_get(&c.admin_addr(), "/v1/presence/42?consistency=linearizable").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["connections"].as_array().unwrap().len(), 2, "{v}");
    let reply = on_b
        .request(switchboard_proto::client::ClientOp::Presence {
            user: None,
            id: None,
        })
        .await
        .unwrap();
    match reply {
        switchboard_proto::client::ServerReply::Presence { connections, .. } => {
            let nodes: Vec<u64> = connections.iter().map(|c| c.node).collect();
            assert_eq!(nodes, vec![2, 3]);
        }
        other => panic!("{other:?}"),
    }

    // Per-publisher order across nodes: a pipelined burst from one RESP connection.
    let mut r = Resp::connect(&a.resp_addr()).await;
    let mut batch = Vec::new();
    for i in 0..300 {
        batch.extend(Resp::encode(&[
            b"PUBLISH",
            b"user_42",
            i.to_string().as_bytes(),
        ]));
    }
    r.send_raw(&batch).await;
    for _ in 0..300 {
        assert_eq!(r.reply().await, Some(Frame::Integer(2)));
    }
    for client in [&mut on_b, &mut on_c] {
        for i in 0..300 {
            assert_eq!(text(client).await, i.to_string());
        }
    }
    // PUBSUB sees the cluster.
    let mut r = Resp::connect(&a.resp_addr()).await;
    assert_eq!(
        r.cmd(&[b"PUBSUB", b"NUMSUB", b"user_42"]).await,
        Frame::Array(vec![Frame::Bulk("user_42".into()), Frame::Integer(2)])
    );

    // A node goes away: the others mark it down and keep delivering.
    c.shutdown().await;
    wait_members(&a, &[1, 2]).await;
    wait_members(&b, &[1, 2]).await;
    wait_group_total(&a, "user_42", 1).await;
    wait_presence(&a, "42", &[2]).await;
    wait_presence(&b, "42", &[2]).await;
    assert_eq!(publish(&a, "user_42", b"after c left").await, 1);
    assert_eq!(text(&mut on_b).await, "after c left");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_peer_with_the_wrong_secret_is_refused_and_changes_nothing() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let intruder = node(9, &[&a], "not-the-secret").await;
    wait_for("a refused peer", DEADLINE, || async {
        (metric(&a.admin_addr(), "switchboard_peer_auth_failures_total").await >= 1).then_some(())
    })
    .await;
    // Neither side counts the other as a member. The intruder, started with a seed it
    // never joined, is not ready; A, a cluster of one, is.
    assert_eq!(members_up(&a).await, vec![1]);
    assert_eq!(members_up(&intruder).await, vec![9]);
    assert_eq!(
        http_get(&intruder.node().addrs().ws.to_string(), "/readyz")
            .await
            .0,
        503
    );
    assert_eq!(
        http_get(&a.node().addrs().ws.to_string(), "/readyz")
            .await
            .0,
        200
    );
    let _c = Connection::connect_url(&a.ws_url(), Some(&simplejwt_token(5)))
        .await
        .unwrap();
    wait_group_total(&a, "user_5", 1).await;
    let mut r = Resp::connect(&intruder.resp_addr()).await;
    assert_eq!(
        r.cmd(&[b"PUBSUB", b"NUMSUB", b"user_5"]).await,
        Frame::Array(vec![Frame::Bulk("user_5".into()), Frame::Integer(0)]),
        "nothing of A's interest reached the intruder"
    );
    a.shutdown().await;
    intruder.shutdown().await;
}

#[tokio::test]
async fn a_node_cut_off_from_the_majority_is_not_ready() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = node(2, &[&a], CLUSTER_SECRET).await;
    let c = node(3, &[&a], CLUSTER_SECRET).await;
    for n in [&a, &b, &c] {
        wait_members(n, &[1, 2, 3]).await;
    }
    wait_formed(&[&a, &b, &c], &["leader", "follower", "follower"]).await;
    let readyz = |n: &TestNode| {
        let addr = n.node().addrs().ws.to_string();
        async move { http_get(&addr, "/readyz").await.0 }
    };
    assert_eq!(readyz(&a).await, 200);
    let on_a = Connection::connect_url(&a.ws_url(), Some(&simplejwt_token(11)))
        .await
        .unwrap();
    wait_presence(&a, "11", &[1]).await;
    // One of three gone: the other two are a majority.
    b.shutdown().await;
    wait_members(&a, &[1, 3]).await;
    assert_eq!(readyz(&a).await, 200);
    // Two of three gone: the last one is cut off from the majority, and can commit
    // nothing: a presence change stays queued.
    c.shutdown().await;
    wait_members(&a, &[1]).await;
    wait_for("the lone node to report not ready", DEADLINE, || async {
        (readyz(&a).await == 503).then_some(())
    })
    .await;
    let applied = status(&a).await["raft"]["last_applied"].clone();
    drop(on_a);
    wait_for("a presence write to fail", DEADLINE, || async {
        (metric(&a.admin_addr(), "switchboard_presence_write_failures_total").await >= 1)
            .then_some(())
    })
    .await;
    // The disconnect is not committed: the replica still shows the connection.
    assert_eq!(presence_nodes(&a, "11").await, vec![1]);
    // And it refuses new clients with 1013 rather than serve a minority.
    let mut late = Connection::connect_url(&a.ws_url(), Some(&simplejwt_token(1)))
        .await
        .unwrap();
    match late.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Closed { code, .. } => assert_eq!(code, 1013),
        other => panic!("{other:?}"),
    }
    let (code, _) = http_get(&a.admin_addr(), "/v1/presence/1?consistency=linearizable").await;
    assert_eq!(code, 503, "no linearizable read without a quorum");
    assert_eq!(status(&a).await["raft"]["last_applied"], applied);
    a.shutdown().await;
}

#[tokio::test]
async fn remove_takes_a_member_out_for_good() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = node(2, &[&a], CLUSTER_SECRET).await;
    let c = node(3, &[&a], CLUSTER_SECRET).await;
    wait_formed(&[&a, &b, &c], &["leader", "follower", "follower"]).await;
    let _on_c = Connection::connect_url(&c.ws_url(), Some(&simplejwt_token(7)))
        .await
        .unwrap();
    wait_presence(&a, "7", &[3]).await;
    // Asked on a follower: forwarded to the leader.
    let (code, body) = http(&b.admin_addr(), "POST", "/v1/members/3/remove").await;
    assert_eq!(code, 200, "{body}");
    for n in [&a, &b] {
        wait_for("node 3 out of the voters", DEADLINE, || async {
            (status(n).await["raft"]["voters"] == serde_json::json!([1, 2])).then_some(())
        })
        .await;
        wait_presence(n, "7", &[]).await;
    }
    // The removed node drains (its clients reconnect elsewhere) and is not let back in.
    wait_for("the removed node to drain", DEADLINE, || async {
        (status(&c).await["state"] == "draining").then_some(())
    })
    .await;
    let (code, _) = http(&a.admin_addr(), "POST", "/v1/members/9/remove").await;
    assert_eq!(code, 404);
    let (code, _) = http(&a.admin_addr(), "POST", "/v1/members/1/remove").await;
    assert_eq!(code, 409, "a node does not remove itself");
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_drained_node_leaves_the_mesh_at_once() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = node(2, &[&a], CLUSTER_SECRET).await;
    wait_members(&a, &[1, 2]).await;
    wait_formed(&[&a, &b], &["leader", "follower"]).await;
    let _on_b = Connection::connect_url(&b.ws_url(), Some(&simplejwt_token(8)))
        .await
        .unwrap();
    wait_presence(&a, "8", &[2]).await;
    let (status, _) = http(&b.admin_addr(), "POST", "/v1/drain").await;
    assert_eq!(status, 202);
    // Well before --node-timeout-ms: the closed connection says it.
    let left = tokio::time::Instant::now();
    wait_members(&a, &[1]).await;
    assert!(
        left.elapsed() < Duration::from_millis(1500),
        "took {:?}",
        left.elapsed()
    );
    // And it took its presence with it, committed before it left.
    let (_, body) = http_get(&a.admin_addr(), "/v1/presence/8").await;
    assert!(body.contains("\"connections\":[]"), "{body}");
    a.shutdown().await;
    b.shutdown().await;
}

/// PEM text of `der` (RFC 7468), without a PEM crate for one test.
fn pem(label: &str, der: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = Vec::new();
    for chunk in der.chunks(3) {
        let byte = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = byte(0) << 16 | byte(1) << 8 | byte(2);
        for i in 0..4 {
            b64.push(if i <= chunk.len() {
                ALPHABET[(n >> (18 - 6 * i)) as usize & 63]
            } else {
                b'='
            });
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out + &format!("-----END {label}-----\n")
}

/// Writes a CA, and a certificate and key it signed for `node`, as PEM files in `dir`.
fn cluster_ca(dir: &std::path::Path, tag: &str) -> (rcgen::CertificateParams, rcgen::KeyPair) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(
        dir.join(format!("{tag}-ca.pem")),
        pem("CERTIFICATE", cert.der()),
    )
    .unwrap();
    (params, key)
}

fn node_cert(
    dir: &std::path::Path,
    ca: &(rcgen::CertificateParams, rcgen::KeyPair),
    tag: &str,
    node: u64,
) -> switchboard_node::config::ClusterCa {
    let issuer = rcgen::Issuer::from_params(&ca.0, &ca.1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![format!("node-{node}.cluster.internal")])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let (cert_path, key_path) = (
        dir.join(format!("{tag}-node-{node}.pem")),
        dir.join(format!("{tag}-node-{node}.key")),
    );
    std::fs::write(&cert_path, pem("CERTIFICATE", cert.der())).unwrap();
    std::fs::write(&key_path, pem("PRIVATE KEY", &key.serialize_der())).unwrap();
    switchboard_node::config::ClusterCa {
        ca: dir.join(format!("{tag}-ca.pem")),
        cert: cert_path,
        key: key_path,
    }
}

async fn ca_node(
    id: u64,
    seeds: &[&TestNode],
    ca: switchboard_node::config::ClusterCa,
) -> TestNode {
    member(id, seeds, "", move |c| {
        c.credentials.cluster_secret = None;
        c.tls.cluster_ca = Some(ca);
    })
    .await
}

#[tokio::test]
async fn with_a_cluster_ca_members_need_its_certificate() {
    let dir = temp_dir("ca");
    let ca = cluster_ca(&dir, "good");
    let other = cluster_ca(&dir, "other");
    let a = ca_node(1, &[], node_cert(&dir, &ca, "good", 1)).await;
    let b = ca_node(2, &[&a], node_cert(&dir, &ca, "good", 2)).await;
    wait_formed(&[&a, &b], &["leader", "follower"]).await;
    let mut on_b = Connection::connect_url(&b.ws_url(), Some(&simplejwt_token(3)))
        .await
        .unwrap();
    wait_group_total(&a, "user_3", 1).await;
    assert_eq!(publish(&a, "user_3", b"over mutual TLS").await, 1);
    assert_eq!(text(&mut on_b).await, "over mutual TLS");

    // A node whose certificate another CA signed (trusting that other CA) is refused.
    let intruder = ca_node(9, &[&a], node_cert(&dir, &other, "other", 9)).await;
    wait_for("the intruder refused", DEADLINE, || async {
        (metric(&a.admin_addr(), "switchboard_peer_auth_failures_total").await >= 1).then_some(())
    })
    .await;
    assert_eq!(members_up(&a).await, vec![1, 2]);
    assert_eq!(members_up(&intruder).await, vec![9]);
    a.shutdown().await;
    b.shutdown().await;
    intruder.shutdown().await;
}

#[tokio::test]
async fn members_beyond_max_voters_stay_learners_and_still_serve() {
    let two_voters = |c: &mut Config| c.cluster.max_voters = 2;
    let a = member(1, &[], CLUSTER_SECRET, two_voters).await;
    let b = member(2, &[&a], CLUSTER_SECRET, two_voters).await;
    let c = member(3, &[&a], CLUSTER_SECRET, two_voters).await;
    wait_formed(&[&a, &b, &c], &["leader", "follower", "learner"]).await;
    let v = status(&a).await;
    assert_eq!(v["raft"]["voters"], serde_json::json!([1, 2]), "{v}");
    assert_eq!(v["raft"]["learners"], serde_json::json!([3]), "{v}");
    // A learner replicates presence and serves clients like any node.
    let _on_c = Connection::connect_url(&c.ws_url(), Some(&simplejwt_token(12)))
        .await
        .unwrap();
    for n in [&a, &b, &c] {
        wait_presence(n, "12", &[3]).await;
    }
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn a_node_far_behind_catches_up_from_a_snapshot() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = node(2, &[&a], CLUSTER_SECRET).await;
    let c = node(3, &[&a], CLUSTER_SECRET).await;
    wait_formed(&[&a, &b, &c], &["leader", "follower", "follower"]).await;
    let _on_a = Connection::connect_url(&a.ws_url(), Some(&simplejwt_token(21)))
        .await
        .unwrap();
    wait_presence(&c, "21", &[1]).await;
    let applied_before = status(&c).await["raft"]["last_applied"].as_u64().unwrap();
    let dir = c.stop_keeping_data().await;
    wait_members(&a, &[1, 2]).await;

    // More entries than a snapshot interval plus what is kept after it: the part of the
    // log node 3 lacks is purged on the leader, so it can only catch up from a snapshot.
    let consensus = a.node().consensus().clone();
    let _on_b = Connection::connect_url(&b.ws_url(), Some(&simplejwt_token(22)))
        .await
        .unwrap();
    for _ in 0..2600 {
        consensus
            .write(switchboard_node::presence::Command::Presence(vec![]))
            .await
            .unwrap();
    }
    wait_for("the leader to purge its log", DEADLINE, || async {
        let purged = consensus.raft.metrics().borrow().purged;
        purged
            .is_some_and(|p| p.index > applied_before)
            .then_some(())
    })
    .await;
    wait_presence(&a, "22", &[2]).await;

    let restart_dir = dir.clone();
    let c = member(3, &[&a], CLUSTER_SECRET, move |c| c.data_dir = restart_dir).await;
    // It has what was committed while it was away, and a replica equal to the leader's.
    wait_presence(&c, "22", &[2]).await;
    wait_presence(&c, "21", &[1]).await;
    wait_for("identical replicas", DEADLINE, || async {
        let leader = a.node().replica().read().clone();
        let rejoined = c.node().replica().read().clone();
        (leader == rejoined).then_some(())
    })
    .await;
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The reconnecting client's next event, within the deadline.
async fn next(client: &mut switchboard_client::ReconnectingClient) -> switchboard_client::Event {
    tokio::time::timeout(DEADLINE, client.recv())
        .await
        .unwrap()
        .unwrap()
}

/// Whether every node has its history buckets where the members say they should be.
async fn history_settled(nodes: &[&TestNode]) -> bool {
    for n in nodes {
        if status(n).await["history"]["buckets_moving"] != 0 {
            return false;
        }
    }
    true
}

#[tokio::test]
async fn a_reconnecting_client_with_positions_recovers_what_it_missed_on_another_node() {
    use switchboard_client::{Backoff, ConnectOptions, Event, ReconnectingClient};
    let history = |c: &mut Config| {
        c.history.rules = switchboard_node::config::parse_history("user_*=100").unwrap();
    };
    let a = member(1, &[], CLUSTER_SECRET, history).await;
    let b = member(2, &[&a], CLUSTER_SECRET, history).await;
    let c = member(3, &[&a], CLUSTER_SECRET, history).await;
    wait_formed(&[&a, &b, &c], &["leader", "follower", "follower"]).await;
    wait_for("history assignments settled", DEADLINE * 2, || async {
        history_settled(&[&a, &b, &c]).await.then_some(())
    })
    .await;
    // A user whose history node 2 neither owns nor replicates.
    let mut user = 0;
    for u in 1..200 {
        let (_, body) = http_get(&a.admin_addr(), &format!("/v1/groups/user_{u}")).await;
        let h: serde_json::Value =
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["history"].clone();
        if h["owner"] != 2 && h["replica"] != 2 {
            user = u;
            break;
        }
    }
    assert!(user > 0);
    let group = format!("user_{user}");
    let opts = ConnectOptions {
        token: Some(simplejwt_token(user)),
        ..ConnectOptions::default()
    };
    let backoff = Backoff {
        min: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    let mut client =
        ReconnectingClient::new(vec![b.ws_url(), c.ws_url()], opts, backoff).with_positions();
    assert_eq!(
        next(&mut client).await,
        Event::Connected { url: b.ws_url() }
    );
    client.subscribe(&group).await.unwrap();
    let start = client
        .position(&group)
        .expect("a fresh subscription tells the position");
    assert_eq!(start.offset, 0);
    wait_group_total(&a, &group, 1).await;
    assert_eq!(publish(&a, &group, b"before").await, 1);
    let Event::Message(Incoming::Text(first)) = next(&mut client).await else {
        panic!("a message")
    };
    assert!(
        first.contains("\"data\":\"before\"") && first.contains("\"offset\":1"),
        "{first}"
    );
    assert_eq!(client.position(&group).map(|p| p.offset), Some(1));

    // Node 2 drains: the client is closed with 1012; 20 messages are published before it
    // comes back, on node 3, where it recovers them, in order.
    let (status, _) = http(&b.admin_addr(), "POST", "/v1/drain").await;
    assert_eq!(status, 202);
    wait_group_total(&a, &group, 0).await;
    for i in 0..20 {
        assert_eq!(
            publish(&a, &group, format!("missed {i}").as_bytes()).await,
            0
        );
    }
    assert_eq!(
        next(&mut client).await,
        Event::Connected { url: c.ws_url() }
    );
    assert_eq!(
        next(&mut client).await,
        Event::Recovered {
            group: group.clone(),
            recovered: true
        }
    );
    for i in 0..20 {
        let Event::Message(Incoming::Text(text)) = next(&mut client).await else {
            panic!("message {i}")
        };
        assert!(text.contains(&format!("\"data\":\"missed {i}\"")), "{text}");
    }
    assert_eq!(client.position(&group).map(|p| p.offset), Some(21));
    client.close().await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    c.shutdown().await;
}

/// The first `user_<i>` group whose interest `node` does not hold (neither owner nor
/// replica of its bucket), with its holders.
fn group_held_elsewhere(n: &TestNode, node: u64) -> (String, u64, u64) {
    let replica = n.node().replica().read();
    (1..10_000)
        .map(|i| format!("user_{i}"))
        .find_map(|g| {
            let (owner, replica) = replica
                .assignments
                .holders(switchboard_node::history::bucket_of(&g))?;
            let replica = replica?;
            (owner != node && replica != node).then_some((g, owner, replica))
        })
        .expect("a group held by the other two nodes")
}

/// Interest is held by the owner and replica of each group's bucket. A node that holds
/// neither asks a holder once, caches the route and forwards directly; a subscriber that
/// joins later on a third node is pushed to it by the holder (no second lookup); and the
/// node holds no interest of its own for the group.
#[tokio::test]
async fn a_node_that_holds_no_interest_for_a_group_asks_once_and_hears_of_changes() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = node(2, &[&a], CLUSTER_SECRET).await;
    let c = node(3, &[&a], CLUSTER_SECRET).await;
    wait_formed(&[&a, &b, &c], &["leader", "follower", "follower"]).await;
    for n in [&a, &b, &c] {
        wait_for("assignments settled", DEADLINE, || async {
            (status(n).await["history"]["buckets_moving"] == 0).then_some(())
        })
        .await;
    }
    let (group, owner, _) = group_held_elsewhere(&a, 1);
    let user: u64 = group["user_".len()..].parse().unwrap();
    let holder = if owner == 2 { &b } else { &c };
    let mut first = Connection::connect_url(&b.ws_url(), Some(&simplejwt_token(user)))
        .await
        .unwrap();
    wait_group_total(holder, &group, 1).await;
    let lookups = || async { metric(&a.admin_addr(), "switchboard_route_lookups_total").await };
    assert_eq!(publish(&a, &group, b"one").await, 1);
    assert_eq!(text(&mut first).await, "one");
    assert_eq!(lookups().await, 1, "asked once");
    assert_eq!(publish(&a, &group, b"two").await, 1);
    assert_eq!(text(&mut first).await, "two");
    assert_eq!(lookups().await, 1, "then cached");
    // A second subscriber, on node 3: the holder pushes the new route to node 1.
    let mut second = Connection::connect_url(&c.ws_url(), Some(&simplejwt_token(user)))
        .await
        .unwrap();
    wait_group_total(&a, &group, 2).await;
    assert_eq!(publish(&a, &group, b"three").await, 2);
    assert_eq!(text(&mut first).await, "three");
    assert_eq!(text(&mut second).await, "three");
    assert_eq!(lookups().await, 1, "pushed, not asked again");
    assert_eq!(
        metric(&a.admin_addr(), "switchboard_routes_cached").await,
        1,
        "node 1 caches the one route"
    );
    // PUBSUB answers cluster-wide from any node.
    let mut r = Resp::connect(&a.resp_addr()).await;
    assert_eq!(
        r.cmd(&[b"PUBSUB", b"NUMSUB", group.as_bytes()]).await,
        Frame::Array(vec![Frame::Bulk(group.clone().into()), Frame::Integer(2)])
    );
    match r.cmd(&[b"PUBSUB", b"CHANNELS", b"user_*"]).await {
        Frame::Array(names) => assert!(names.contains(&Frame::Bulk(group.clone().into()))),
        other => panic!("{other:?}"),
    }
    for n in [a, b, c] {
        n.shutdown().await;
    }
}

/// Backpressure across the mesh: a publisher on node 1 pipelines 32 MiB to a client on
/// node 2 that reads slowly behind a small queue. Rather than the client being cut (4008)
/// and messages lost, node 2 stops reading node 1's data stream while the client's queue
/// is full, node 1's queue of forwards fills, and the publisher waits: the client gets
/// every message, in order.
#[tokio::test]
async fn a_fast_publisher_is_slowed_to_a_slow_remote_client_instead_of_the_client_being_cut() {
    let a = node(1, &[], CLUSTER_SECRET).await;
    let b = member(2, &[&a], CLUSTER_SECRET, |c| {
        c.ws.client_queue = 16;
        c.ws.client_queue_bytes = 64 * 1024;
    })
    .await;
    wait_formed(&[&a, &b], &["leader", "follower"]).await;
    let mut client = Connection::connect_url(&b.ws_url(), Some(&simplejwt_token(77)))
        .await
        .unwrap();
    wait_group_total(&a, "user_77", 1).await;
    const N: usize = 2000;
    let payload = |i: usize| format!("{i:08}{}", "x".repeat(16 * 1024));
    let publisher = {
        let addr = a.resp_addr();
        tokio::spawn(async move {
            let mut r = Resp::connect(&addr).await;
            let mut batch = Vec::new();
            for i in 0..N {
                batch.extend(Resp::encode(&[
                    b"PUBLISH",
                    b"user_77",
                    payload(i).as_bytes(),
                ]));
            }
            r.send_raw(&batch).await;
            for _ in 0..N {
                assert_eq!(r.reply().await, Some(Frame::Integer(1)));
            }
        })
    };
    for i in 0..N {
        match client.recv_timeout(DEADLINE).await.unwrap() {
            Incoming::Text(t) => assert_eq!(t[..8], format!("{i:08}"), "in order, none lost"),
            other => panic!("message {i}: {other:?}"),
        }
        // A slow reader (about 16 MiB/s): pacing, not synchronisation.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    publisher.await.unwrap();
    assert_eq!(
        metric(&b.admin_addr(), "switchboard_slow_consumer_closes_total").await,
        0
    );
    let paced = metric(&b.admin_addr(), "switchboard_paced_publishes_total").await
        + metric(&a.admin_addr(), "switchboard_paced_forwards_total").await;
    assert!(paced > 0, "the stream was slowed down");
    a.shutdown().await;
    b.shutdown().await;
}
