//! The WebSocket listener: health and readiness checks, the upgrade, authentication,
//! and one task per connection that owns its socket ([`session`]).
//!
//! A connection's life: read the HTTP head (bounded in size and time) -> route
//! (`/healthz`, `/readyz`, a WebSocket path, else 404) -> complete the handshake ->
//! refuse with a close code if the node is draining (1012), not ready or full (1013),
//! the Origin is not allowed (4003) or the token does not verify (4001) -> register
//! with the hub and the presence queue -> serve -> unregister.

pub mod caps;
pub mod follow;
pub mod session;
pub mod state;
pub mod tracks;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use switchboard_proto::client::CloseCode;
use switchboard_proto::peer::{ConnectionRecord, NodeId, PresenceOp};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info};

use super::Ingress;
use super::accept::{Listener, tls_handshake};
use super::http::{self, Request, Response};
use crate::auth::AuthError;
use crate::broker::{ConnId, Permissions};
use crate::clock::unix_millis;
use crate::hub::ClientQueue;
use crate::presence::connection::ConnectionId;
use crate::sync::lock;
use session::Session;

/// Sockets handled at once beyond `--max-connections`, for health checks and for
/// answering 1013 to connections over the limit.
const EXTRA_SOCKETS: usize = crate::config::HEALTH_SOCKETS;
/// Longest group name (the broker's limit), which bounds user ids through the user group.
const MAX_GROUP_NAME: usize = crate::broker::MAX_GROUP_NAME;
/// Longest a write to a client may take before the client counts as stuck.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest we wait for the client's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// tungstenite's buffers, sized for 100k connections per node (see [`ws_config`]). The
/// read buffer is allocated, and zero-filled, for every connection's whole life: 256
/// bytes hold a typical client op in one read (a `refresh` with its token takes two or
/// three); a larger frame grows it to the frame's length.
const READ_BUFFER: usize = 256;
const WRITE_BUFFER: usize = 8 * 1024;
const MAX_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// A client's byte stream: plain TCP, or TLS over it (`--tls-cert`).
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for S {}

type Ws<S> = WebSocketStream<S>;

/// Connection ids: a local number, and its cluster-unique string form
/// `<node>-<boot hex>-<n>` (the boot time tells this process's ids from a previous run's).
#[derive(Debug)]
pub struct ConnIds {
    node: NodeId,
    boot: u64,
    next: AtomicU64,
}

impl ConnIds {
    pub fn new(node: NodeId, boot: u64) -> Self {
        ConnIds {
            node,
            boot,
            next: AtomicU64::new(1),
        }
    }

    /// A new connection id.
    pub fn next(&self) -> (ConnId, String) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let minted = ConnectionId::Minted {
            node: self.node,
            boot: self.boot,
            n: id,
        };
        (id, minted.to_string())
    }
}

/// WebSocket settings sized for 100k connections per node: a 256-byte read buffer (clients
/// send small ops), and frames gathered into up to 8 KiB before a write, with an explicit
/// flush after each batch, so a burst costs one syscall per 8 KiB rather than per message.
/// An idle connection allocates no write buffer at all.
fn ws_config(max_frame: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = READ_BUFFER;
    config.write_buffer_size = WRITE_BUFFER;
    config.max_write_buffer_size = MAX_WRITE_BUFFER;
    config.max_frame_size = Some(max_frame);
    config.max_message_size = Some(max_frame);
    config
}

/// Accepts connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    ingress: Arc<Ingress>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let sockets = Arc::new(Semaphore::new(
        ingress.settings.max_connections + EXTRA_SOCKETS,
    ));
    let listener = Listener::new(listener, stop, "WebSocket");
    loop {
        let Some(permit) = listener.slot(&sockets).await else {
            break;
        };
        let Some((stream, peer)) = listener.accept().await else {
            break;
        };
        let ingress = ingress.clone();
        let connections = tracker.clone();
        tracker.spawn(async move {
            let result = match &ingress.tls {
                None => accept(stream, peer, &ingress, permit, &connections).await,
                Some(tls) => match tls_handshake(tls, stream).await {
                    Ok(stream) => accept(stream, peer, &ingress, permit, &connections).await,
                    Err(e) => Err(e.into()),
                },
            };
            if let Err(e) = result {
                debug!(%peer, error = %e, "WebSocket connection ended with an error");
            }
        });
    }
}

/// The accepting task's part: the HTTP head, the handshake and the admission checks. A
/// client that registers gets a task of its own for its session, so what a connection
/// keeps for its whole life is the session's state alone: the head, the handshake's
/// futures and this task are freed here. (Awaiting the session in this task would keep
/// every earlier await point's state in one future several times the session's size.)
async fn accept<S: Stream>(
    stream: S,
    peer: std::net::SocketAddr,
    ingress: &Arc<Ingress>,
    permit: OwnedSemaphorePermit,
    tracker: &TaskTracker,
) -> anyhow::Result<()> {
    if let Some(session) = handle(stream, peer, ingress.clone()).await? {
        tracker.spawn(session.serve(permit));
    }
    Ok(())
}

/// Serves a plain HTTP request (health, readiness, errors) and returns `None`, or
/// completes a WebSocket handshake and returns the registered client's session.
async fn handle<S: Stream>(
    mut stream: S,
    peer: std::net::SocketAddr,
    ingress: Arc<Ingress>,
) -> anyhow::Result<Option<Session<S>>> {
    let req = match http::read_head(&mut stream).await {
        Ok(req) => req,
        Err(e) => {
            if let Some(status) = e.status() {
                let _ = Response::text(status, format!("{e}\n"))
                    .write(&mut stream)
                    .await;
            }
            return Ok(None);
        }
    };
    ingress.metrics.http_requests.inc();
    let is_ws_path = ingress.settings.paths.contains(&req.path);
    match req.path.as_str() {
        "/healthz" => http::health().write(&mut stream).await?,
        "/readyz" => http::readiness(&ingress.health).write(&mut stream).await?,
        _ if is_ws_path => {
            // RFC 6455 4.1: the opening handshake is an HTTP/1.1 (or later) GET.
            if req.method != "GET" {
                Response::text(405, "the WebSocket handshake is a GET\n")
                    .with_header("allow", "GET")
                    .write(&mut stream)
                    .await?;
                return Ok(None);
            }
            if req.version < 1 {
                Response::text(400, "the WebSocket handshake needs HTTP/1.1\n")
                    .write(&mut stream)
                    .await?;
                return Ok(None);
            }
            if !req.header_has_token("upgrade", "websocket") {
                Response::text(426, "this endpoint speaks WebSocket only\n")
                    .write(&mut stream)
                    .await?;
                return Ok(None);
            }
            let Some(key) = req.header("sec-websocket-key") else {
                Response::text(400, "missing Sec-WebSocket-Key\n")
                    .write(&mut stream)
                    .await?;
                return Ok(None);
            };
            if req.header("sec-websocket-version") != Some("13") {
                Response::text(426, "unsupported WebSocket version; use 13\n")
                    .write(&mut stream)
                    .await?;
                return Ok(None);
            }
            let accept = derive_accept_key(key.as_bytes());
            let head = format!(
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            );
            tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await?;
            let mut req = req;
            let leftover = std::mem::take(&mut req.leftover);
            let ws = WebSocketStream::from_partially_read(
                stream,
                leftover,
                Role::Server,
                Some(ws_config(ingress.settings.max_frame_size)),
            )
            .await;
            return Ok(websocket(ws, req, peer, ingress).await);
        }
        _ => {
            Response::text(404, "not found\n")
                .write(&mut stream)
                .await?
        }
    }
    Ok(None)
}

/// Sends a close frame and waits (briefly) for the client's.
async fn close<S: Stream>(ws: &mut Ws<S>, code: CloseCode, reason: &str) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code.code()),
        reason: reason.to_owned().into(),
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, ws.close(Some(frame))).await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn origin_allowed(ingress: &Ingress, req: &Request) -> bool {
    let allowed = &ingress.settings.allowed_origins;
    if allowed.is_empty() {
        return true;
    }
    // Non-browser clients send no Origin; the allow-list is a browser protection.
    match req.header("origin") {
        None => true,
        Some(origin) => allowed
            .iter()
            .any(|a| a == "*" || a.eq_ignore_ascii_case(origin.trim_end_matches('/'))),
    }
}

fn token_of(req: &Request) -> Option<String> {
    req.query_param("token")
        .filter(|t| !t.is_empty())
        .or_else(|| {
            req.header("authorization").and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            })
        })
}

/// Admits a client (or closes with the code that says why not) and registers it with
/// the hub and the presence queue.
async fn websocket<S: Stream>(
    ws: Ws<S>,
    req: Request,
    peer: std::net::SocketAddr,
    ingress: Arc<Ingress>,
) -> Option<Session<S>> {
    let metrics = &ingress.metrics;
    let origin_ok = origin_allowed(&ingress, &req);
    let token = token_of(&req);
    let positions = req
        .query_param("positions")
        .is_some_and(|v| v == "1" || v == "true");
    // The request head is not needed past this point; don't keep it for the connection's life.
    drop(req);
    if ingress.lifecycle.drain_token().is_cancelled() {
        metrics.connections_rejected_not_ready.inc();
        return refuse(ws, CloseCode::Restart, "node draining").await;
    }
    if !ingress.health.ready() {
        metrics.connections_rejected_not_ready.inc();
        return refuse(ws, CloseCode::TryAgainLater, "node not ready").await;
    }
    if !origin_ok {
        metrics.origin_rejections.inc();
        return refuse(ws, CloseCode::Forbidden, "origin not allowed").await;
    }
    let identity = match token
        .ok_or(AuthError::Missing)
        .and_then(|t| ingress.secrets.verifier.get().verify(&t))
    {
        Ok(identity) => identity,
        Err(e) => {
            metrics.auth_failures.inc();
            return refuse(ws, CloseCode::Unauthorized, &e.to_string()).await;
        }
    };
    // Every connection is in its user group, so the user id must make a valid group name.
    let user_group = ingress.settings.user_group_of(&identity.user);
    if user_group.len() > MAX_GROUP_NAME {
        metrics.auth_failures.inc();
        return refuse(
            ws,
            CloseCode::Unauthorized,
            "user id too long: its user group would exceed 256 bytes",
        )
        .await;
    }
    if metrics.connections.get() as usize >= ingress.settings.max_connections {
        metrics.connections_rejected_full.inc();
        return refuse(ws, CloseCode::TryAgainLater, "node full").await;
    }
    let admitted = lock(&ingress.caps).admit(peer.ip(), &identity.user);
    if let Err(over) = admitted {
        metrics.connections_rejected_caps.inc();
        return refuse(ws, CloseCode::TryAgainLater, over.reason()).await;
    }
    let (id, connection) = ingress.ids.next();
    let (outlet, inbox) = ClientQueue::new(
        id,
        ingress.settings.client_queue,
        ingress.settings.client_queue_bytes,
        positions,
    );
    let refused = ingress.hub.connect(
        &outlet,
        &identity.user,
        &user_group,
        Permissions::new(identity.groups.iter().cloned(), identity.presence_any),
    );
    for (group, reason) in refused {
        debug!(%connection, %group, %reason, "token group not joined");
    }
    let node = ingress.node;
    ingress.presence.push(PresenceOp::Connect(ConnectionRecord {
        node,
        connection: connection.clone(),
        user: identity.user.clone(),
        connected_at: unix_millis(),
    }));
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    debug!(%connection, user = %identity.user, "client connected");

    // A positioned connection's history groups joined at connect wait for the client's
    // `subscribe` (to recover them first), at most `tracks::HOLD_GRACE`.
    let mut tracks = tracks::Tracks::default();
    if positions {
        let until = tokio::time::Instant::now() + tracks::HOLD_GRACE;
        let joined = std::iter::once(user_group.as_str())
            .chain(identity.groups.iter().map(String::as_str))
            .filter(|g| !g.ends_with('*'));
        for group in joined {
            if ingress.router.keeps_history(group) {
                tracks.hold(group, until);
            }
        }
    }
    Some(Session::new(
        ws,
        ingress,
        outlet,
        inbox,
        identity,
        tracks,
        connection,
        peer.ip(),
    ))
}

/// Closes a connection that was not admitted.
async fn refuse<S: Stream>(mut ws: Ws<S>, code: CloseCode, reason: &str) -> Option<Session<S>> {
    close(&mut ws, code, reason).await;
    None
}

/// Logs the bound address; used by the node at start.
pub fn announce(addr: std::net::SocketAddr, paths: &[String]) {
    info!(%addr, paths = ?paths, "WebSocket endpoint listening (/healthz, /readyz on the same port)");
}
