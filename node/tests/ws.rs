//! One node, real sockets: WebSocket clients, authentication, delivery, close codes.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::ws::*;
use common::*;
use switchboard_client::{ConnectOptions, Connection, Incoming, TokenIn};
use switchboard_proto::client::{ClientOp, ErrorCode, ServerReply};
use switchboard_proto::resp::Frame;

#[tokio::test]
async fn a_simplejwt_client_receives_what_redis_publishes() {
    let node = TestNode::start(|_| {}).await;
    let mut client = connect(&node, &simplejwt_token(42)).await;
    wait_group(&node, "user_42", 1).await;
    assert_eq!(publish(&node, "user_42", b"hello").await, 1);
    match client.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Text(text) => assert_eq!(text, "hello"),
        other => panic!("expected text, got {other:?}"),
    }
    // Nobody in user_43: routed to nobody.
    assert_eq!(publish(&node, "user_43", b"x").await, 0);
    node.shutdown().await;
}

#[tokio::test]
async fn binary_payloads_arrive_byte_for_byte_as_binary_frames() {
    let node = TestNode::start(|_| {}).await;
    let mut client = connect(&node, &simplejwt_token(7)).await;
    wait_group(&node, "user_7", 1).await;
    let payload: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00]).collect();
    assert_eq!(publish(&node, "user_7", &payload).await, 1);
    match client.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Binary(bytes) => assert_eq!(bytes.as_ref(), payload.as_slice()),
        other => panic!("expected binary, got {other:?}"),
    }
    node.shutdown().await;
}

#[tokio::test]
async fn the_bearer_header_works_too() {
    let node = TestNode::start(|_| {}).await;
    let mut opts = ConnectOptions::new(node.ws_url());
    opts.token = Some(simplejwt_token(5));
    opts.token_in = TokenIn::Bearer;
    let mut client = Connection::connect(opts).await.expect("connects");
    wait_group(&node, "user_5", 1).await;
    publish(&node, "user_5", b"via bearer").await;
    assert!(
        matches!(client.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "via bearer")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn token_groups_subscribe_and_unsubscribe() {
    let node = TestNode::start(|_| {}).await;
    let mut client = connect(&node, &token_with_groups(1, &["news", "room_*"])).await;
    wait_group(&node, "news", 1).await;
    assert_eq!(publish(&node, "news", b"n1").await, 1);
    assert!(matches!(client.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "n1"));

    let reply = subscribe(&mut client, "room_9").await;
    assert!(
        matches!(reply, ServerReply::Subscribed { ref group, .. } if group == "room_9"),
        "{reply:?}"
    );
    assert_eq!(publish(&node, "room_9", b"r").await, 1);
    assert!(matches!(client.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "r"));

    let reply = subscribe(&mut client, "admins").await;
    assert!(
        matches!(
            reply,
            ServerReply::Error {
                code: ErrorCode::Forbidden,
                ..
            }
        ),
        "{reply:?}"
    );
    assert_eq!(publish(&node, "admins", b"secret").await, 0);

    let reply = client
        .request(ClientOp::Unsubscribe {
            group: "news".into(),
            id: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(reply, ServerReply::Unsubscribed { .. }),
        "{reply:?}"
    );
    assert_eq!(publish(&node, "news", b"n2").await, 0);

    let reply = client.request(ClientOp::Ping { id: None }).await.unwrap();
    assert!(matches!(reply, ServerReply::Pong { .. }));

    // Garbage gets an error reply and the connection stays.
    client.send_text("{not json").await.unwrap();
    match client.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Text(t) => assert!(t.contains("bad_request"), "{t}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(publish(&node, "user_1", b"still here").await, 1);
    assert!(
        matches!(client.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "still here")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn origins_outside_the_allow_list_get_4003() {
    let node = TestNode::start(|c| c.ws.allowed_origins = vec!["https://app.example".into()]).await;
    let mut opts = ConnectOptions::new(node.ws_url());
    opts.token = Some(simplejwt_token(1));
    opts.origin = Some("https://evil.example".into());
    let mut conn = Connection::connect(opts.clone()).await.unwrap();
    expect_close(&mut conn, 4003, "origin").await;
    opts.origin = Some("https://app.example".into());
    let mut conn = Connection::connect(opts).await.unwrap();
    let reply = conn.request(ClientOp::Ping { id: None }).await.unwrap();
    assert!(matches!(reply, ServerReply::Pong { .. }));
    node.shutdown().await;
}

#[tokio::test]
async fn an_oversized_frame_gets_1009() {
    let node = TestNode::start(|c| c.ws.max_frame_size = 1024).await;
    let mut conn = connect(&node, &simplejwt_token(1)).await;
    conn.send_text(&"x".repeat(4096)).await.unwrap();
    expect_close(&mut conn, 1009, "too large").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_as_a_slow_consumer_once_its_queue_is_full() {
    let node = TestNode::start(|c| c.ws.client_queue = 8).await;
    let mut slow = connect(&node, &simplejwt_token(77)).await;
    wait_group(&node, "user_77", 1).await;
    let reply = slow.request(ClientOp::Ping { id: None }).await.unwrap();
    assert!(matches!(reply, ServerReply::Pong { .. }));
    let payload = vec![b'p'; 16 * 1024];
    let mut resp = Resp::connect(&node.resp_addr()).await;
    // Publish until the server gives up on the slow client (bounded count).
    let admin = node.admin_addr();
    let mut closed = false;
    for _ in 0..20_000 {
        resp.cmd(&[b"PUBLISH", b"user_77", &payload]).await;
        if metric(&admin, "switchboard_slow_consumer_closes_total").await >= 1 {
            closed = true;
            break;
        }
    }
    assert!(closed, "the slow consumer was never closed");
    assert!(metric(&admin, "switchboard_messages_dropped_total").await >= 1);
    // When it finally reads, it finds the close code after what was queued.
    expect_close(&mut slow, 4008, "slow consumer").await;
    node.shutdown().await;
}

#[tokio::test]
async fn messages_from_one_publisher_arrive_in_order() {
    let node = TestNode::start(|_| {}).await;
    let mut client = connect(&node, &token_with_groups(1, &["ordered"])).await;
    wait_group(&node, "ordered", 1).await;
    let mut resp = Resp::connect(&node.resp_addr()).await;
    // Pipelined: all commands written at once.
    let mut batch = Vec::new();
    for i in 0..500 {
        batch.extend(Resp::encode(&[
            b"PUBLISH",
            b"ordered",
            i.to_string().as_bytes(),
        ]));
    }
    resp.send_raw(&batch).await;
    for _ in 0..500 {
        assert_eq!(resp.reply().await, Some(Frame::Integer(1)));
    }
    for i in 0..500 {
        match client.recv_timeout(DEADLINE).await.unwrap() {
            Incoming::Text(t) => assert_eq!(t, i.to_string()),
            other => panic!("{other:?}"),
        }
    }
    node.shutdown().await;
}

#[tokio::test]
async fn health_readiness_and_drain() {
    let node = TestNode::start(|_| {}).await;
    let ws = node.node().addrs().ws.to_string();
    let admin = node.admin_addr();
    assert_eq!(http_get(&ws, "/healthz").await.0, 200);
    assert_eq!(http_get(&ws, "/readyz").await.0, 200);
    assert_eq!(http_get(&admin, "/healthz").await.0, 200);
    assert_eq!(http_get(&admin, "/readyz").await.0, 200);
    assert_eq!(http_get(&ws, "/nope").await.0, 404);
    assert_eq!(
        http_get(&ws, "/ws/notifications/").await.0,
        426,
        "no upgrade"
    );

    let mut client = connect(&node, &simplejwt_token(4)).await;
    wait_group(&node, "user_4", 1).await;
    let (status, body) = http(&admin, "POST", "/v1/drain").await;
    assert_eq!(status, 202, "{body}");
    expect_close(&mut client, 1012, "draining").await;
    assert_eq!(http_get(&ws, "/readyz").await.0, 503);
    assert_eq!(http_get(&ws, "/healthz").await.0, 200);
    let mut late = connect(&node, &simplejwt_token(4)).await;
    expect_close(&mut late, 1012, "draining").await;
    node.shutdown().await;
}

#[tokio::test]
async fn a_full_node_answers_1013() {
    let node = TestNode::start(|c| c.ws.max_connections = 1).await;
    let _first = connect(&node, &simplejwt_token(1)).await;
    wait_group(&node, "user_1", 1).await;
    let mut second = connect(&node, &simplejwt_token(2)).await;
    expect_close(&mut second, 1013, "full").await;
    node.shutdown().await;
}

#[tokio::test]
async fn presence_follows_connections() {
    let node = TestNode::start(|_| {}).await;
    let admin = node.admin_addr();
    let mut a = connect(&node, &simplejwt_token(42)).await;
    let b = connect(&node, &simplejwt_token(42)).await;
    let presence = |n: usize| {
        let admin = admin.clone();
        async move {
            wait_for(&format!("{n} presence entries"), DEADLINE, || {
                let admin = admin.clone();
                async move {
                    let (_, body) = http_get(&admin, "/v1/presence/42").await;
                    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                    (v["connections"].as_array()?.len() == n).then_some(v)
                }
            })
            .await
        }
    };
    let v = presence(2).await;
    assert_eq!(v["user"], "42");
    assert_eq!(v["connections"][0]["node"], 1);
    // The client can ask too.
    let reply = a
        .request(ClientOp::Presence {
            user: None,
            id: None,
        })
        .await
        .unwrap();
    match reply {
        ServerReply::Presence {
            user, connections, ..
        } => {
            assert_eq!(user, "42");
            assert_eq!(connections.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let reply = a
        .request(ClientOp::Presence {
            user: Some("43".into()),
            id: None,
        })
        .await
        .unwrap();
    assert!(matches!(
        reply,
        ServerReply::Error {
            code: ErrorCode::Forbidden,
            ..
        }
    ));
    drop(b);
    presence(1).await;
    node.shutdown().await;
}

#[tokio::test]
async fn shutdown_closes_clients_with_1012() {
    let node = TestNode::start(|_| {}).await;
    let mut client = connect(&node, &simplejwt_token(6)).await;
    wait_group(&node, "user_6", 1).await;
    let stopping = tokio::spawn(node.shutdown());
    expect_close(&mut client, 1012, "").await;
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_reconnecting_client_moves_to_another_node_when_one_drains() {
    use switchboard_client::{Backoff, Event, ReconnectingClient};
    let a = TestNode::start(|_| {}).await;
    let b = TestNode::start(|c| c.node_id = 2).await;
    let opts = ConnectOptions {
        token: Some(simplejwt_token(12)),
        ..ConnectOptions::default()
    };
    let backoff = Backoff {
        min: Duration::from_millis(10),
        max: Duration::from_millis(200),
    };
    let mut client = ReconnectingClient::new(vec![a.ws_url(), b.ws_url()], opts, backoff);
    assert_eq!(
        tokio::time::timeout(DEADLINE, client.recv())
            .await
            .unwrap()
            .unwrap(),
        Event::Connected { url: a.ws_url() }
    );
    client.subscribe("extra").await.unwrap_err(); // not permitted by the token: an error reply...
    wait_group(&a, "user_12", 1).await;
    let (status, _) = http(&a.admin_addr(), "POST", "/v1/drain").await;
    assert_eq!(status, 202);
    assert_eq!(
        tokio::time::timeout(DEADLINE, client.recv())
            .await
            .unwrap()
            .unwrap(),
        Event::Connected { url: b.ws_url() }
    );
    wait_group(&b, "user_12", 1).await;
    assert_eq!(publish(&b, "user_12", b"after failover").await, 1);
    assert_eq!(
        tokio::time::timeout(DEADLINE, client.recv())
            .await
            .unwrap()
            .unwrap(),
        Event::Message(Incoming::Text("after failover".into()))
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_reconnecting_client_stops_on_4001() {
    use switchboard_client::{Backoff, Event, ReconnectingClient};
    let node = TestNode::start(|_| {}).await;
    let opts = ConnectOptions {
        token: Some("not-a-token".into()),
        ..ConnectOptions::default()
    };
    let mut client = ReconnectingClient::new(vec![node.ws_url()], opts, Backoff::default());
    assert!(matches!(
        tokio::time::timeout(DEADLINE, client.recv())
            .await
            .unwrap()
            .unwrap(),
        Event::Connected { .. }
    ));
    assert!(matches!(
        tokio::time::timeout(DEADLINE, client.recv())
            .await
            .unwrap()
            .unwrap(),
        Event::Refused { code: 4001, .. }
    ));
    assert!(
        client.recv().await.is_err(),
        "no retry loop after a refusal"
    );
    node.shutdown().await;
}
