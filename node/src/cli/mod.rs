//! The admin commands of the `switchboard` binary: small HTTP requests to a node's admin
//! API, printed for people, or as one JSON document with `--json`.
//!
//! The token comes from `SWITCHBOARD_ADMIN_TOKEN` or `--admin-token-file` (its first
//! token); an `https://` admin address speaks TLS, trusting `--admin-ca`.
mod http;

use std::io::{BufRead, Read, Write};

use anyhow::{Context, bail};
use serde_json::Value;

use http::{HEARTBEAT, MAX_ANSWER, TIMEOUT, call, call_with, send_head};
pub use http::{Target, request, request_with, segment};

fn print(value: &Value, json: bool, human: impl FnOnce(&Value) -> String) {
    if json {
        out(&format!("{value}\n"));
    } else {
        out(&human(value));
    }
}

/// Writes to stdout; a closed pipe (`switchboard members | head -1`) is not an error
/// worth a panic, so write errors are ignored.
pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

pub fn status(admin: &Target, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "GET", "/v1/status")?;
    print(&v, json, |v| {
        let mut out = String::new();
        for key in [
            "id",
            "role",
            "term",
            "leader",
            "ready",
            "state",
            "members",
            "connections",
            "groups",
            "presence_entries",
            "uptime_secs",
            "version",
        ] {
            out.push_str(&format!("{key:<17} {}\n", field(v, key)));
        }
        for key in ["voters", "learners", "commit_index", "apply_lag"] {
            out.push_str(&format!(
                "{:<17} {}\n",
                format!("raft.{key}"),
                field(&v["raft"], key)
            ));
        }
        out
    });
    Ok(())
}

pub fn members(admin: &Target, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "GET", "/v1/members")?;
    print(&v, json, |v| {
        let mut out = format!(
            "{:<6} {:<8} {:<5} {:<22} {:<22} {:<10} {}\n",
            "ID", "ROLE", "UP", "WS", "PEER", "VERSION", "LAST SEEN"
        );
        for m in v["members"].as_array().into_iter().flatten() {
            let last_seen = match m.get("last_seen_ms").and_then(Value::as_u64) {
                Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                None => "-".into(),
            };
            out.push_str(&format!(
                "{:<6} {:<8} {:<5} {:<22} {:<22} {:<10} {}\n",
                field(m, "id"),
                m["role"].as_str().unwrap_or("-"),
                if m["up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "down"
                },
                field(&m["addresses"], "ws"),
                field(&m["addresses"], "peer"),
                field(m, "version"),
                last_seen
            ));
        }
        out
    });
    Ok(())
}

pub fn presence(admin: &Target, user: &str, linearizable: bool, json: bool) -> anyhow::Result<()> {
    let query = if linearizable {
        "?consistency=linearizable"
    } else {
        ""
    };
    let v = call(
        admin,
        "GET",
        &format!("/v1/presence/{}{query}", segment(user)),
    )?;
    print(&v, json, |v| {
        let conns = v["connections"].as_array().cloned().unwrap_or_default();
        let mut out = format!("user {user}: {} connection(s)\n", conns.len());
        for c in conns {
            out.push_str(&format!(
                "  node {:<4} {:<28} connected_at {}\n",
                field(&c, "node"),
                field(&c, "connection"),
                field(&c, "connected_at")
            ));
        }
        out
    });
    Ok(())
}

pub fn group(admin: &Target, name: &str, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "GET", &format!("/v1/groups/{}", segment(name)))?;
    print(&v, json, |v| {
        let mut out = format!("group {name}: {} connection(s)\n", field(v, "connections"));
        if let Some(nodes) = v["nodes"].as_object() {
            for (node, n) in nodes {
                out.push_str(&format!("  node {node}: {n}\n"));
            }
        }
        let h = &v["history"];
        if h.is_object() {
            out.push_str(&format!(
                "  history: bucket {}, owner {}, replica {}, epoch {}\n",
                field(h, "bucket"),
                field(h, "owner"),
                field(h, "replica"),
                field(h, "epoch")
            ));
        }
        out
    });
    Ok(())
}

/// `switchboard probe`: GET `path` on `addr`; Ok when it answers 200.
/// The address `probe` asks by default: the port of `ws_listen` (the node's
/// `SWITCHBOARD_WS_LISTEN`), on loopback when it binds every address; else the default
/// WebSocket port on loopback.
pub fn probe_addr(ws_listen: Option<&str>) -> String {
    match ws_listen.and_then(|a| a.parse::<std::net::SocketAddr>().ok()) {
        Some(a) if a.ip().is_unspecified() => {
            let ip: std::net::IpAddr = if a.is_ipv6() {
                std::net::Ipv6Addr::LOCALHOST.into()
            } else {
                std::net::Ipv4Addr::LOCALHOST.into()
            };
            std::net::SocketAddr::new(ip, a.port()).to_string()
        }
        Some(a) => a.to_string(),
        None => ws_listen
            .filter(|a| !a.is_empty())
            .unwrap_or("127.0.0.1:8001")
            .to_owned(),
    }
}

pub fn probe(addr: &str, path: &str) -> anyhow::Result<()> {
    if !matches!(path, "/readyz" | "/healthz") {
        bail!("--path is /readyz or /healthz");
    }
    let target = Target {
        admin: addr.to_owned(),
        ..Target::default()
    };
    let (status, body) = request(&target, "GET", path)?;
    if status != 200 {
        bail!(
            "{addr}{path}: {status} {}",
            body.as_str().unwrap_or_default().trim()
        );
    }
    Ok(())
}

pub fn drain(admin: &Target, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "POST", "/v1/drain")?;
    print(&v, json, |v| {
        format!(
            "node {} is draining: clients are being closed with 1012\n",
            field(v, "id")
        )
    });
    Ok(())
}

pub fn remove(admin: &Target, id: u64, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "POST", &format!("/v1/members/{id}/remove"))?;
    print(&v, json, |_| format!("node {id} removed\n"));
    Ok(())
}

/// `switchboard disconnect USER`: closes the user's sockets (or one connection's, with
/// `connection`) on every node with `code` (4000-4999) and `reason`.
pub fn disconnect(
    admin: &Target,
    user: Option<&str>,
    connection: Option<&str>,
    code: Option<u16>,
    reason: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let mut body = target_body(user, connection)?;
    if let Some(code) = code {
        body["code"] = code.into();
    }
    if let Some(reason) = reason {
        body["reason"] = reason.into();
    }
    let v = call_with(admin, "POST", "/v1/disconnect", Some(&body))?;
    print(&v, json, |v| {
        format!(
            "{} connection(s) closed{}\n",
            field(v, "disconnected"),
            unreachable(v)
        )
    });
    Ok(())
}

/// `switchboard subscribe|unsubscribe USER GROUP`: the user's live sockets (or one
/// connection) join or leave `group`, cluster-wide.
pub fn subscription(
    admin: &Target,
    subscribe: bool,
    user: Option<&str>,
    connection: Option<&str>,
    group: &str,
    json: bool,
) -> anyhow::Result<()> {
    let mut body = target_body(user, connection)?;
    body["group"] = group.into();
    let (path, key, verb) = if subscribe {
        ("/v1/subscribe", "subscribed", "joined")
    } else {
        ("/v1/unsubscribe", "unsubscribed", "left")
    };
    let v = call_with(admin, "POST", path, Some(&body))?;
    print(&v, json, |v| {
        format!(
            "{} connection(s) {verb} {group}{}\n",
            field(v, key),
            unreachable(v)
        )
    });
    Ok(())
}

/// `switchboard revoke USER`: refuses the user's tokens issued before `before` (now by
/// default) on every node, and closes its open sockets with 4001.
pub fn revoke(admin: &Target, user: &str, before: Option<u64>, json: bool) -> anyhow::Result<()> {
    let mut body = serde_json::json!({ "user": user });
    if let Some(before) = before {
        body["before"] = before.into();
    }
    let v = call_with(admin, "POST", "/v1/revoke", Some(&body))?;
    print(&v, json, |v| {
        format!(
            "tokens of user {user} issued before {} refused until {}; {} connection(s) closed{}\n",
            field(v, "before"),
            field(v, "until"),
            field(v, "disconnected"),
            unreachable(v)
        )
    });
    Ok(())
}

fn target_body(user: Option<&str>, connection: Option<&str>) -> anyhow::Result<Value> {
    match (user, connection) {
        (Some(user), None) => Ok(serde_json::json!({ "user": user })),
        (None, Some(connection)) => Ok(serde_json::json!({ "connection": connection })),
        _ => bail!("give a user id, or --connection ID"),
    }
}

fn unreachable(v: &Value) -> String {
    match v.get("unreachable") {
        Some(nodes) => format!(" (nodes {nodes} did not answer)"),
        None => String::new(),
    }
}

/// `switchboard presence-events`: the presence events the node keeps after `since` (or
/// all it keeps), then, with `follow`, every new one as it is committed. Asked over
/// HTTP/1.0 so that the stream needs no de-chunking: it ends when the connection does.
pub fn presence_events(
    admin: &Target,
    since: Option<&str>,
    follow: bool,
    json: bool,
) -> anyhow::Result<()> {
    let mut path = format!("/v1/presence/events?follow={}", u8::from(follow));
    if let Some(since) = since {
        path.push_str(&format!("&since={}", segment(since)));
    }
    // Heartbeats come every 15 s: three missed mean the node is gone.
    let timeout = if follow { 3 * HEARTBEAT } else { TIMEOUT };
    let (stream, tls) = send_head(admin, "GET", &path, "HTTP/1.0", timeout, &[])?;
    let mut reader = std::io::BufReader::new(stream.take(u64::MAX));
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the admin API sent no status")?;
    let mut length = None;
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse::<u64>().ok();
        }
    }
    if status != 200 {
        let mut body = String::new();
        let _ = reader
            .take(length.unwrap_or(MAX_ANSWER).min(MAX_ANSWER))
            .read_to_string(&mut body);
        let reason = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or(body);
        bail!("{} (HTTP {status})", reason.trim());
    }
    if follow {
        // On stderr: stdout carries the events alone (`--json` pipes stay clean).
        eprintln!("following the presence events (Ctrl-C to stop)");
    }
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            // A TLS peer may close without close_notify at the end of the stream.
            Err(e) if tls && e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                bail!(
                    "the node sent nothing for {} s, not even a heartbeat",
                    timeout.as_secs()
                )
            }
            Err(e) => return Err(e.into()),
        }
        let Some(data) = line.trim_end().strip_prefix("data: ") else {
            continue; // id:, retry:, comments and blank lines
        };
        if json {
            out(&format!("{data}\n"));
        } else if let Ok(event) = serde_json::from_str::<Value>(data) {
            out(&event_line(&event));
        }
    }
}

/// One event for people.
fn event_line(e: &Value) -> String {
    let kind = field(e, "type");
    if kind == "reset" {
        let connections = e["connections"].as_array().cloned().unwrap_or_default();
        let mut text = format!(
            "{:<12} reset    {} connections\n",
            field(e, "id"),
            connections.len()
        );
        for c in &connections {
            text.push_str(&format!(
                "{:<12}          user={} node={} connection={}\n",
                "",
                field(c, "user"),
                field(c, "node"),
                field(c, "connection")
            ));
        }
        return text;
    }
    let reason = match e.get("reason") {
        Some(Value::String(r)) => format!(" reason={r}"),
        _ => String::new(),
    };
    format!(
        "{:<12} {:<8} user={} node={} connection={}{reason}\n",
        field(e, "id"),
        kind,
        field(e, "user"),
        field(e, "node"),
        field(e, "connection"),
    )
}

/// Parses a duration such as `3600`, `90s`, `30m`, `1h` or `7d` into seconds.
pub fn parse_ttl(s: &str) -> anyhow::Result<u64> {
    let s = s.trim();
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = number
        .parse()
        .with_context(|| format!("'{s}' is not a duration like 3600, 90s, 30m, 1h or 7d"))?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => bail!("'{s}': unknown unit '{unit}'; use s, m, h or d"),
    };
    n.checked_mul(scale)
        .with_context(|| format!("'{s}' is too long"))
}

#[cfg(test)]
mod tests;
