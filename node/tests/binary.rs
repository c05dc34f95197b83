//! The `switchboard` binary as users run it: flags, environment, development mode,
//! signals and the admin CLI.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use switchboard_client::{Connection, Incoming};
use switchboard_proto::resp::Frame;

const BIN: &str = env!("CARGO_BIN_EXE_switchboard");

/// A `switchboard serve` process with every port ephemeral, and the addresses it logged.
struct Proc {
    child: Child,
    ws: String,
    resp: String,
    admin: String,
    stdout: mpsc::Receiver<String>,
    _dir: std::path::PathBuf,
}

impl Proc {
    fn spawn(extra: &[&str], env: &[(&str, &str)]) -> Proc {
        let dir = temp_dir("bin");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--log-format", "json"])
            .args(["--ws-listen", "127.0.0.1:0", "--resp-listen", "127.0.0.1:0"])
            .args([
                "--admin-listen",
                "127.0.0.1:0",
                "--peer-listen",
                "127.0.0.1:0",
            ])
            .arg("--data-dir")
            .arg(&dir)
            .args(extra)
            .env_remove("SWITCHBOARD_JWT_SECRET")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let (log_tx, log_rx) = mpsc::channel::<serde_json::Value>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    let _ = log_tx.send(v);
                }
            }
        });
        let (out_tx, out_rx) = mpsc::channel::<String>();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = out_tx.send(line);
            }
        });
        let (mut ws, mut resp, mut admin) = (None, None, None);
        let deadline = std::time::Instant::now() + DEADLINE;
        while ws.is_none() || resp.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let v = log_rx
                .recv_timeout(left)
                .expect("the node logs its addresses in time");
            let message = v["fields"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let addr = v["fields"]["addr"].as_str().map(str::to_owned);
            if message.starts_with("WebSocket endpoint listening") {
                ws = addr;
            } else if message.starts_with("RESP ingest shim listening") {
                resp = addr;
            } else if message.starts_with("admin API listening") {
                admin = addr;
            }
        }
        Proc {
            child,
            ws: ws.unwrap(),
            resp: resp.unwrap(),
            admin: admin.unwrap(),
            stdout: out_rx,
            _dir: dir,
        }
    }

    fn cli(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .args(["--admin", &self.admin])
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let (ok, out, err) = self.cli(&all);
        assert!(ok, "{args:?} failed: {err}");
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    }

    /// Waits until one connection is in `group`.
    async fn wait_group(&self, group: &str) {
        wait_for(&format!("a connection in {group}"), DEADLINE, || {
            let admin = self.admin.clone();
            async move {
                let (_, body) = http_get(&admin, &format!("/v1/groups/{group}")).await;
                body.contains("\"connections\":1").then_some(())
            }
        })
        .await;
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the node did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn development_mode_prints_a_working_url() {
    let proc = Proc::spawn(&[], &[]);
    let url = (0..50)
        .find_map(|_| {
            let line = proc.stdout.recv_timeout(DEADLINE).ok()?;
            let line = line.trim().to_owned();
            line.starts_with("ws://").then_some(line)
        })
        .expect("a ws:// URL with a token on stdout");
    assert!(
        url.contains(&format!("{}/ws/notifications/?token=", proc.ws)),
        "{url}"
    );
    let mut client = Connection::connect_url(&url, None).await.unwrap();
    let mut r = Resp::connect(&proc.resp).await;
    proc.wait_group("user_1").await;
    assert_eq!(
        r.cmd(&[b"PUBLISH", b"user_1", b"hello"]).await,
        Frame::Integer(1)
    );
    assert!(
        matches!(client.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "hello")
    );
    // The generated secret is kept in the data dir, and `switchboard token` mints with it.
    let secret = std::fs::read_to_string(proc._dir.join("dev-jwt-secret")).unwrap();
    let out = Command::new(BIN)
        .args([
            "token",
            "--secret",
            secret.trim(),
            "--user",
            "42",
            "--ttl",
            "10m",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let token = String::from_utf8(out.stdout).unwrap();
    let mut c42 = Connection::connect_url(
        &format!("ws://{}/ws/notifications/", proc.ws),
        Some(token.trim()),
    )
    .await
    .unwrap();
    proc.wait_group("user_42").await;
    assert_eq!(
        r.cmd(&[b"PUBLISH", b"user_42", b"hi 42"]).await,
        Frame::Integer(1)
    );
    assert!(matches!(c42.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "hi 42"));
}

#[tokio::test]
async fn flag_beats_environment_beats_file() {
    let dir = temp_dir("cfg");
    let file = dir.join("node.toml");
    std::fs::write(
        &file,
        "node_id = 3\nuser_group = \"u{user_id}\"\njwt_secret = \"from-file\"\n",
    )
    .unwrap();
    let proc = Proc::spawn(
        &["--config", file.to_str().unwrap()],
        &[("SWITCHBOARD_NODE_ID", "4")],
    );
    assert_eq!(
        proc.cli_json(&["status"])["id"],
        4,
        "environment beats file"
    );
    drop(proc);
    let proc = Proc::spawn(
        &["--config", file.to_str().unwrap(), "--node-id", "5"],
        &[("SWITCHBOARD_NODE_ID", "4")],
    );
    assert_eq!(
        proc.cli_json(&["status"])["id"],
        5,
        "flag beats environment"
    );
    // The file's user-group template and secret took effect.
    let token = switchboard_client::mint_hs256(
        "from-file",
        &serde_json::json!({"user_id": 9, "exp": now() + 60}),
    )
    .unwrap();
    let _c = Connection::connect_url(&format!("ws://{}/ws/notifications/", proc.ws), Some(&token))
        .await
        .unwrap();
    proc.wait_group("u9").await;
}

#[tokio::test]
async fn sigterm_closes_clients_with_1012_and_exits_0() {
    let mut proc = Proc::spawn(&["--jwt-secret", SECRET], &[]);
    let mut client = Connection::connect_url(
        &format!("ws://{}/ws/notifications/", proc.ws),
        Some(&simplejwt_token(1)),
    )
    .await
    .unwrap();
    assert!(matches!(
        client
            .request(switchboard_proto::client::ClientOp::Ping { id: None })
            .await
            .unwrap(),
        switchboard_proto::client::ServerReply::Pong { .. }
    ));
    proc.signal("-TERM");
    match client.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Closed { code, .. } => assert_eq!(code, 1012),
        other => panic!("{other:?}"),
    }
    assert!(proc.wait_exit().success());
}

#[tokio::test]
async fn sigint_exits_0_too() {
    let mut proc = Proc::spawn(&["--jwt-secret", SECRET], &[]);
    proc.signal("-INT");
    assert!(proc.wait_exit().success());
}

#[tokio::test]
async fn the_admin_cli_answers_in_the_contract_shapes() {
    let proc = Proc::spawn(&["--jwt-secret", SECRET, "--node-id", "1"], &[]);
    let _c = Connection::connect_url(
        &format!("ws://{}/ws/notifications/", proc.ws),
        Some(&token_with_groups(42, &["news"])),
    )
    .await
    .unwrap();
    let presence = wait_for("presence of 42", DEADLINE, || {
        let v = proc.cli_json(&["presence", "42"]);
        async move { (v["connections"].as_array().map(Vec::len) == Some(1)).then_some(v) }
    })
    .await;
    assert_eq!(presence["user"], "42");
    assert_eq!(presence["connections"][0]["node"], 1);
    assert!(presence["connections"][0]["connection"].is_string());
    assert!(presence["connections"][0]["connected_at"].as_u64().unwrap() > 1_600_000_000_000);

    let group = proc.cli_json(&["group", "news"]);
    // The contract's keys (more may follow: who holds the group's interest).
    assert_eq!(group["group"], "news");
    assert_eq!(group["connections"], 1);
    assert_eq!(group["nodes"], serde_json::json!({"1": 1}));
    assert_eq!(
        group["interest"]["owner"], 1,
        "a lone node holds every bucket"
    );

    let status = proc.cli_json(&["status"]);
    assert_eq!(status["id"], 1);
    assert_eq!(status["role"], "leader");
    assert_eq!(status["leader"], 1);
    assert_eq!(status["ready"], true);
    assert!(status["term"].as_u64().is_some());
    assert_eq!(status["connections"], 1);

    let members = proc.cli_json(&["members"]);
    assert_eq!(members["members"][0]["id"], 1);
    assert_eq!(members["members"][0]["voter"], true);
    assert_eq!(members["members"][0]["up"], true);

    // Human output too.
    let (ok, out, _) = proc.cli(&["members"]);
    assert!(ok && out.contains("voter") && out.contains("up"), "{out}");

    // A failed command exits non-zero with the reason on stderr.
    let (ok, _, err) = proc.cli(&["remove", "9"]);
    assert!(!ok);
    assert!(err.contains("not a member"), "{err}");

    let drained = proc.cli_json(&["drain"]);
    assert_eq!(drained["draining"], true);
    assert_eq!(proc.cli_json(&["status"])["ready"], false);
}

#[test]
fn a_cli_command_against_no_node_fails_clearly() {
    let out = Command::new(BIN)
        .args(["status", "--admin", "127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the admin API"), "{err}");
}

#[test]
fn public_ports_without_a_jwt_key_are_refused() {
    let dir = temp_dir("refuse");
    let out = Command::new(BIN)
        .args(["serve", "--ws-listen", "0.0.0.0:0", "--data-dir"])
        .arg(&dir)
        .env_remove("SWITCHBOARD_JWT_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("beyond loopback without a JWT key"), "{err}");
}
