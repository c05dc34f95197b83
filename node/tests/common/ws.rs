//! Helpers of the one-node WebSocket tests (`ws.rs`, `ws_auth.rs`).

use switchboard_client::{Connection, Incoming};
use switchboard_proto::client::{ClientOp, ServerReply};

use super::*;

pub async fn connect(node: &TestNode, token: &str) -> Connection {
    Connection::connect_url(&node.ws_url(), Some(token))
        .await
        .expect("connects")
}

/// Waits until `group` has `n` connections on the node (registration is synchronous,
/// but the client sees the handshake before the server registers it).
pub async fn wait_group(node: &TestNode, group: &str, n: u64) {
    let admin = node.admin_addr();
    wait_for(&format!("{n} connection(s) in {group}"), DEADLINE, || {
        let admin = admin.clone();
        async move {
            let (_, body) = http_get(&admin, &format!("/v1/groups/{group}")).await;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            (v["connections"].as_u64() == Some(n)).then_some(())
        }
    })
    .await;
}

pub async fn subscribe(conn: &mut Connection, group: &str) -> ServerReply {
    conn.request(ClientOp::Subscribe {
        group: group.into(),
        since: None,
        id: None,
    })
    .await
    .unwrap()
}

pub async fn expect_close(conn: &mut Connection, code: u16, reason_has: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < deadline, "no close {code}");
        match conn.recv_timeout(DEADLINE).await {
            Ok(Incoming::Closed { code: got, reason }) => {
                assert_eq!(got, code, "close reason was {reason:?}");
                assert!(
                    reason.contains(reason_has),
                    "reason {reason:?} lacks {reason_has:?}"
                );
                return;
            }
            Ok(_) => continue,
            Err(e) => panic!("expected close {code}, got error {e}"),
        }
    }
}
