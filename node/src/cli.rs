//! The admin commands of the `switchboard` binary: small HTTP requests to a node's admin
//! API, printed for people, or as one JSON document with `--json`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request to the admin API; returns the status and the parsed JSON body.
pub fn request(admin: &str, method: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    let addr: SocketAddr = admin
        .to_socket_addrs()
        .with_context(|| format!("bad admin address '{admin}'"))?
        .next()
        .with_context(|| format!("admin address '{admin}' resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| {
        format!("cannot reach the admin API at {addr}: is the node running (see --admin)?")
    })?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream
        .take(16 * 1024 * 1024)
        .read_to_end(&mut raw)
        .context("reading the admin API's answer")?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the admin API sent a malformed answer")?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the admin API sent no status")?;
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    Ok((status, value))
}

/// Runs a request and fails with the server's reason on a non-2xx status.
fn call(admin: &str, method: &str, path: &str) -> anyhow::Result<Value> {
    let (status, body) = request(admin, method, path)?;
    if !(200..300).contains(&status) {
        let reason = body
            .get("error")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| body.to_string());
        bail!("{reason} (HTTP {status})");
    }
    Ok(body)
}

/// Percent-encodes one path segment.
pub fn segment(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

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

pub fn status(admin: &str, json: bool) -> anyhow::Result<()> {
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

pub fn members(admin: &str, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "GET", "/v1/members")?;
    print(&v, json, |v| {
        let mut out = format!(
            "{:<6} {:<8} {:<5} {:<22} {:<22} {}\n",
            "ID", "ROLE", "UP", "WS", "PEER", "LAST SEEN"
        );
        for m in v["members"].as_array().into_iter().flatten() {
            let last_seen = match m.get("last_seen_ms").and_then(Value::as_u64) {
                Some(ms) => format!("{:.1}s ago", ms as f64 / 1000.0),
                None => "-".into(),
            };
            out.push_str(&format!(
                "{:<6} {:<8} {:<5} {:<22} {:<22} {}\n",
                field(m, "id"),
                m["role"].as_str().unwrap_or("-"),
                if m["up"].as_bool() == Some(true) {
                    "up"
                } else {
                    "down"
                },
                field(&m["addresses"], "ws"),
                field(&m["addresses"], "peer"),
                last_seen
            ));
        }
        out
    });
    Ok(())
}

pub fn presence(admin: &str, user: &str, linearizable: bool, json: bool) -> anyhow::Result<()> {
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

pub fn group(admin: &str, name: &str, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "GET", &format!("/v1/groups/{}", segment(name)))?;
    print(&v, json, |v| {
        let mut out = format!("group {name}: {} connection(s)\n", field(v, "connections"));
        if let Some(nodes) = v["nodes"].as_object() {
            for (node, n) in nodes {
                out.push_str(&format!("  node {node}: {n}\n"));
            }
        }
        out
    });
    Ok(())
}

pub fn drain(admin: &str, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "POST", "/v1/drain")?;
    print(&v, json, |v| {
        format!(
            "node {} is draining: clients are being closed with 1012\n",
            field(v, "id")
        )
    });
    Ok(())
}

pub fn remove(admin: &str, id: u64, json: bool) -> anyhow::Result<()> {
    let v = call(admin, "POST", &format!("/v1/members/{id}/remove"))?;
    print(&v, json, |_| format!("node {id} removed\n"));
    Ok(())
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
mod tests {
    use super::*;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("3600").expect("ok"), 3600);
        assert_eq!(parse_ttl("90s").expect("ok"), 90);
        assert_eq!(parse_ttl("30m").expect("ok"), 1800);
        assert_eq!(parse_ttl("1h").expect("ok"), 3600);
        assert_eq!(parse_ttl("7d").expect("ok"), 604_800);
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("user 42/x"), "user%2042%2Fx");
        assert_eq!(segment("user_42"), "user_42");
    }
}
