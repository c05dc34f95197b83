//! Test harness: an in-process node on 127.0.0.1 with ephemeral ports, tokens, and
//! waiting for conditions with a deadline (never fixed sleeps).
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

pub mod cluster;
pub mod ws;

use switchboard_node::Node;
use switchboard_node::config::{Config, JwtKey};
use switchboard_proto::resp::Frame;

pub const SECRET: &str = "django-insecure-test-secret-key";

/// A node running in this test process.
pub struct TestNode {
    pub node: Option<Node>,
    pub dir: PathBuf,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn temp_dir(tag: &str) -> PathBuf {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir =
        std::env::temp_dir().join(format!("switchboard-test-{}-{tag}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl TestNode {
    /// A node with `--jwt-secret SECRET`, adjusted by `configure`.
    pub async fn start(configure: impl FnOnce(&mut Config)) -> TestNode {
        let dir = temp_dir("node");
        let mut config = Config::for_tests(dir.clone());
        config.credentials.jwt = JwtKey::Secret(SECRET.into());
        configure(&mut config);
        let node = Node::start(config).await.expect("node starts");
        TestNode {
            node: Some(node),
            dir,
        }
    }

    pub fn node(&self) -> &Node {
        self.node.as_ref().unwrap()
    }

    pub fn ws_url(&self) -> String {
        self.node().ws_url()
    }

    pub fn resp_addr(&self) -> String {
        self.node().addrs().resp.to_string()
    }

    pub fn admin_addr(&self) -> String {
        self.node().addrs().admin.to_string()
    }

    pub async fn shutdown(mut self) {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
    }

    /// Stops the node and hands back its data dir, kept for a restart (the caller
    /// removes it).
    pub async fn stop_keeping_data(mut self) -> PathBuf {
        if let Some(node) = self.node.take() {
            node.shutdown().await;
        }
        std::mem::take(&mut self.dir)
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A SimpleJWT-style access token: HS256 with the Django secret, `token_type: access`,
/// numeric `user_id`.
pub fn simplejwt_token(user_id: u64) -> String {
    switchboard_client::mint_hs256(
        SECRET,
        &serde_json::json!({
            "token_type": "access",
            "exp": now() + 300,
            "iat": now(),
            "jti": "0123456789abcdef",
            "user_id": user_id,
        }),
    )
    .unwrap()
}

/// A token for `user` that joins `groups` at connect.
pub fn token_with_groups(user: u64, groups: &[&str]) -> String {
    switchboard_client::mint_hs256(
        SECRET,
        &serde_json::json!({
            "token_type": "access",
            "exp": now() + 300,
            "user_id": user,
            "groups": groups,
        }),
    )
    .unwrap()
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = tokio::time::Instant::now();
    let mut step = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(step).await;
        step = (step * 2).min(Duration::from_millis(100));
    }
}

/// GET over plain HTTP/1.1; returns status and body.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    http(addr, "GET", path).await
}

pub async fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("HTTP answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// A metric's value from the admin `/metrics`.
pub async fn metric(admin: &str, name: &str) -> u64 {
    let (_, body) = http_get(admin, "/metrics").await;
    body.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("metric {name} missing"))
        .trim()
        .parse()
        .unwrap()
}

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A raw RESP connection that decodes replies with the project's own codec.
pub struct Resp {
    pub stream: tokio::net::TcpStream,
    buf: bytes::BytesMut,
    decoder: switchboard_proto::resp::Decoder,
}

impl Resp {
    pub async fn connect(addr: &str) -> Resp {
        Resp {
            stream: tokio::net::TcpStream::connect(addr).await.unwrap(),
            buf: bytes::BytesMut::new(),
            decoder: switchboard_proto::resp::Decoder::new(Default::default()),
        }
    }

    pub fn encode(args: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        out
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.stream.write_all(bytes).await.unwrap();
    }

    /// The next reply, or `None` if the server closed the connection.
    pub async fn reply(&mut self) -> Option<switchboard_proto::resp::Frame> {
        use tokio::io::AsyncReadExt;
        tokio::time::timeout(DEADLINE, async {
            loop {
                if let Some(frame) = self
                    .decoder
                    .decode(&mut self.buf)
                    .expect("server sends valid RESP")
                {
                    return Some(frame);
                }
                if self.stream.read_buf(&mut self.buf).await.unwrap_or(0) == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("a reply in time")
    }

    pub async fn cmd(&mut self, args: &[&[u8]]) -> switchboard_proto::resp::Frame {
        self.send_raw(&Self::encode(args)).await;
        self.reply()
            .await
            .expect("a reply, not a closed connection")
    }
}

/// `PUBLISH group payload` over RESP to `node`: the connections it reached.
pub async fn publish(node: &TestNode, group: &str, payload: &[u8]) -> i64 {
    let mut resp = Resp::connect(&node.resp_addr()).await;
    match resp.cmd(&[b"PUBLISH", group.as_bytes(), payload]).await {
        Frame::Integer(n) => n,
        other => panic!("PUBLISH answered {other:?}"),
    }
}
