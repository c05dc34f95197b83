//! Several nodes in one process over real QUIC on 127.0.0.1: the mesh, gossip,
//! forwarding, and the Raft presence registry (membership, replication, forwarded
//! writes, linearizable reads, `remove`). Killing processes is in tests/python; history
//! and routing across nodes in `cluster_delivery.rs`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use switchboard_client::{Connection, Incoming};
use switchboard_node::config::Config;
use switchboard_proto::resp::Frame;

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
