//! Delivery across nodes in one process over real QUIC on 127.0.0.1: a reconnecting
//! client recovering its history on another node, interest asked of the node that holds
//! it, and a fast publisher paced to a slow remote client.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use switchboard_client::{Connection, Incoming};
use switchboard_node::config::Config;
use switchboard_proto::resp::Frame;

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
