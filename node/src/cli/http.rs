//! The admin API's client: a request to a node's admin port over HTTP/1.1 (or TLS),
//! with the token and CA of a [`Target`]; answers read up to [`MAX_ANSWER`].

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

pub(super) const TIMEOUT: Duration = Duration::from_secs(10);
/// How often a node sends a heartbeat on an event stream (`crate::admin::events`).
pub(super) const HEARTBEAT: Duration = Duration::from_secs(15);
/// The most of an answer read.
pub(super) const MAX_ANSWER: u64 = 16 * 1024 * 1024;

/// Which node to ask, and how.
#[derive(Debug, Clone, Default)]
pub struct Target {
    /// `host:port`, or `https://host:port`.
    pub admin: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// The CA that signed the admin port's certificate (`https://` only).
    pub ca: Option<PathBuf>,
}

impl Target {
    /// `admin` with the token from `SWITCHBOARD_ADMIN_TOKEN`, else the first token of
    /// `token_file`.
    pub fn new(
        admin: &str,
        token_file: Option<PathBuf>,
        ca: Option<PathBuf>,
    ) -> anyhow::Result<Target> {
        let token = match std::env::var("SWITCHBOARD_ADMIN_TOKEN") {
            Ok(token) if !token.is_empty() => Some(token),
            _ => match token_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path).with_context(|| {
                        format!("cannot read --admin-token-file {}", path.display())
                    })?;
                    let first = text
                        .lines()
                        .map(str::trim)
                        .find(|l| !l.is_empty() && !l.starts_with('#'))
                        .and_then(|l| l.split_whitespace().next())
                        .with_context(|| format!("no token in {}", path.display()))?;
                    Some(first.to_owned())
                }
                None => None,
            },
        };
        Ok(Target {
            admin: admin.to_owned(),
            token,
            ca,
        })
    }
}

/// A TLS stream to `addr` trusting `ca`.
pub(super) fn tls_stream(
    tcp: TcpStream,
    host: &str,
    ca: Option<&PathBuf>,
) -> anyhow::Result<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let ca =
        ca.context("an https:// admin address needs --admin-ca (the CA of its certificate)")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)
        .with_context(|| format!("cannot read --admin-ca {}", ca.display()))?
    {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned())
        .with_context(|| format!("'{host}' is not a server name"))?;
    let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// Connects to the admin API and sends a request (its body JSON, when not empty);
/// returns the stream to read the answer from, and whether it is TLS.
pub(super) fn send_head(
    target: &Target,
    method: &str,
    path: &str,
    version: &str,
    timeout: Duration,
    body: &[u8],
) -> anyhow::Result<(Box<dyn Read>, bool)> {
    let (tls, admin) = match target.admin.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (
            false,
            target
                .admin
                .strip_prefix("http://")
                .unwrap_or(&target.admin),
        ),
    };
    let admin = admin.trim_end_matches('/');
    let addr: SocketAddr = admin
        .to_socket_addrs()
        .with_context(|| format!("bad admin address '{admin}'"))?
        .next()
        .with_context(|| format!("admin address '{admin}' resolves to nothing"))?;
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| {
        format!("cannot reach the admin API at {addr}: is the node running (see --admin)?")
    })?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(TIMEOUT))?;
    let host = admin.rsplit_once(':').map_or(admin, |(h, _)| h);
    let auth = target
        .token
        .as_ref()
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let kind = if body.is_empty() {
        ""
    } else {
        "content-type: application/json\r\n"
    };
    let mut request = format!(
        "{method} {path} {version}\r\nhost: {admin}\r\n{auth}{kind}content-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    if tls {
        let mut stream = tls_stream(tcp, host.trim_matches(['[', ']']), target.ca.as_ref())?;
        stream.write_all(&request)?;
        Ok((Box::new(stream), true))
    } else {
        let mut stream = tcp;
        stream.write_all(&request)?;
        Ok((Box::new(stream), false))
    }
}

/// Sends one request to the admin API; returns the status and the parsed JSON body.
pub fn request(target: &Target, method: &str, path: &str) -> anyhow::Result<(u16, Value)> {
    request_with(target, method, path, &[])
}

/// Sends one request with a JSON `body` to the admin API; returns the status and the
/// parsed JSON answer.
pub fn request_with(
    target: &Target,
    method: &str,
    path: &str,
    body: &[u8],
) -> anyhow::Result<(u16, Value)> {
    let (stream, tls) = send_head(target, method, path, "HTTP/1.1", TIMEOUT, body)?;
    let mut raw = Vec::new();
    let read = stream.take(MAX_ANSWER).read_to_end(&mut raw);
    // A TLS peer that closes without close_notify ends the read with an error after the
    // whole answer; what was read is kept.
    if !tls {
        read.context("reading the admin API's answer")?;
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("the admin API sent a malformed answer")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    let body = body.as_str();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("the admin API sent no status")?;
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    Ok((status, value))
}

/// The body of a chunked answer.
pub(super) fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Runs a request and fails with the server's reason on a non-2xx status.
pub(super) fn call(admin: &Target, method: &str, path: &str) -> anyhow::Result<Value> {
    call_with(admin, method, path, None)
}

/// [`call`] with a JSON body.
pub(super) fn call_with(
    admin: &Target,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<Value> {
    let bytes = body.map(|b| b.to_string().into_bytes()).unwrap_or_default();
    let (status, body) = request_with(admin, method, path, &bytes)?;
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
