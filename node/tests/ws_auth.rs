//! One node, real sockets: tokens a client presents, refused with 4001 (bad, forged
//! with a public key, expired while connected) or refreshed in time.
#![allow(clippy::unwrap_used)]

mod common;

use common::ws::*;
use common::*;
use switchboard_client::{Connection, Incoming};
use switchboard_node::config::TokenExpiry;
use switchboard_proto::client::{ClientOp, ErrorCode, ServerReply};

#[tokio::test]
async fn every_bad_token_is_closed_with_4001_and_the_node_keeps_serving() {
    let node = TestNode::start(|_| {}).await;
    let t = now();
    let wrong_key = switchboard_client::mint_hs256(
        "another-secret",
        &serde_json::json!({"user_id": 1, "exp": t + 60}),
    )
    .unwrap();
    let expired =
        switchboard_client::mint_hs256(SECRET, &serde_json::json!({"user_id": 1, "exp": t - 10}))
            .unwrap();
    let refresh = switchboard_client::mint_hs256(
        SECRET,
        &serde_json::json!({"user_id": 1, "exp": t + 60, "token_type": "refresh"}),
    )
    .unwrap();
    // {"alg":"none"} with valid claims and no signature.
    let none = format!(
        "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{}.",
        base64url(&serde_json::json!({"user_id": 1, "exp": t + 60}).to_string())
    );
    let cases: Vec<(Option<String>, &str)> = vec![
        (None, "missing token"),
        (Some("garbage".into()), "malformed"),
        (Some(wrong_key), "bad signature"),
        (Some(expired), "expired"),
        (Some(refresh), "not an access token"),
        (Some(none), ""),
    ];
    for (token, reason) in cases {
        let mut conn = Connection::connect_url(&node.ws_url(), token.as_deref())
            .await
            .expect("the handshake succeeds; the close says why");
        expect_close(&mut conn, 4001, reason).await;
    }
    assert_eq!(
        metric(&node.admin_addr(), "switchboard_auth_failures_total").await,
        6
    );
    let mut good = connect(&node, &simplejwt_token(3)).await;
    wait_group(&node, "user_3", 1).await;
    publish(&node, "user_3", b"ok").await;
    assert!(matches!(good.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "ok"));
    node.shutdown().await;
}

fn base64url(s: &str) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let b = s.as_bytes();
    let mut out = String::new();
    for chunk in b.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &x)| acc | (u32::from(x) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[tokio::test]
async fn a_public_key_node_refuses_an_hmac_token_made_with_that_public_key() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    for (public, private, alg) in [
        ("ec256.pub", "ec256.key", jsonwebtoken::Algorithm::ES256),
        ("ed25519.pub", "ed25519.key", jsonwebtoken::Algorithm::EdDSA),
    ] {
        let public = fixtures.join(public);
        let node = TestNode::start(|c| {
            c.credentials.jwt = switchboard_node::config::JwtKey::PublicKey(public.clone())
        })
        .await;
        let claims = serde_json::json!({"user_id": 11, "exp": now() + 60, "token_type": "access"});
        let pem = std::fs::read(fixtures.join(private)).unwrap();
        let key = match alg {
            jsonwebtoken::Algorithm::ES256 => jsonwebtoken::EncodingKey::from_ec_pem(&pem).unwrap(),
            _ => jsonwebtoken::EncodingKey::from_ed_pem(&pem).unwrap(),
        };
        let good = jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), &claims, &key).unwrap();
        let mut conn = connect(&node, &good).await;
        wait_group(&node, "user_11", 1).await;
        publish(&node, "user_11", b"signed").await;
        assert!(
            matches!(conn.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "signed")
        );

        // The classic key-confusion attack: HS256 keyed with the public key's bytes.
        let public_bytes = std::fs::read(&public).unwrap();
        let forged = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(&public_bytes),
        )
        .unwrap();
        let mut conn = connect(&node, &forged).await;
        expect_close(&mut conn, 4001, "algorithm not allowed").await;
        node.shutdown().await;
    }
}

#[tokio::test]
async fn a_token_that_expires_while_connected_closes_with_4001() {
    let node = TestNode::start(|c| c.ws.token_expiry = TokenExpiry::Close).await;
    let token = switchboard_client::mint_hs256(
        SECRET,
        &serde_json::json!({"user_id": 8, "exp": now() + 2, "token_type": "access"}),
    )
    .unwrap();
    let mut conn = connect(&node, &token).await;
    expect_close(&mut conn, 4001, "expired").await;
    assert_eq!(
        metric(&node.admin_addr(), "switchboard_token_expiry_closes_total").await,
        1
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_refreshed_token_keeps_the_connection_past_the_old_expiry() {
    let node = TestNode::start(|c| c.ws.token_expiry = TokenExpiry::Close).await;
    let old_exp = now() + 2;
    let short = switchboard_client::mint_hs256(
        SECRET,
        &serde_json::json!({"user_id": 9, "exp": old_exp, "token_type": "access"}),
    )
    .unwrap();
    let mut conn = connect(&node, &short).await;
    let reply = conn
        .request(ClientOp::Refresh {
            token: simplejwt_token(9),
            id: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(reply, ServerReply::Refreshed { exp: Some(_), .. }),
        "{reply:?}"
    );
    // Another user's token is refused.
    let reply = conn
        .request(ClientOp::Refresh {
            token: simplejwt_token(10),
            id: None,
        })
        .await
        .unwrap();
    assert!(
        matches!(
            reply,
            ServerReply::Error {
                code: ErrorCode::InvalidToken,
                ..
            }
        ),
        "{reply:?}"
    );
    // Wait past the old expiry by watching the wall clock, then prove the connection lives.
    wait_for("the old token's expiry to pass", DEADLINE, || async {
        (now() > old_exp).then_some(())
    })
    .await;
    publish(&node, "user_9", b"alive").await;
    assert!(
        matches!(conn.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "alive")
    );
    node.shutdown().await;
}
