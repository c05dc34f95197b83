//! The WebSocket listener: health and readiness checks, the upgrade, authentication,
//! and one task per connection that owns its socket ([`session`]).
//!
//! A connection's life: read the HTTP head (bounded in size and time) -> route
//! (`/healthz`, `/readyz`, a WebSocket path, else 404) -> complete the handshake ->
//! refuse with a close code if the node is draining (1012), not ready or full (1013),
//! the Origin is not allowed (4003) or the token does not verify (4001) -> register
//! with the hub and the presence queue -> serve -> unregister.

pub(crate) mod bridged;
pub mod caps;
pub mod follow;
pub mod outbox;
pub mod owed;
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
use crate::hub::{Act, ClientQueue, Local};
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
            if let Some(refused) = upgrade_refusal(&req) {
                refused.write(&mut stream).await?;
                return Ok(None);
            }
            return upgrade(stream, req, peer, ingress).await;
        }
        _ => {
            Response::text(404, "not found\n")
                .write(&mut stream)
                .await?
        }
    }
    Ok(None)
}

/// Why an upgrade request is refused in HTTP, before any handshake.
fn upgrade_refusal(req: &Request) -> Option<Response> {
    // RFC 6455 4.1: the opening handshake is an HTTP/1.1 (or later) GET.
    if req.method != "GET" {
        return Some(
            Response::text(405, "the WebSocket handshake is a GET\n").with_header("allow", "GET"),
        );
    }
    if req.version < 1 {
        return Some(Response::text(
            400,
            "the WebSocket handshake needs HTTP/1.1\n",
        ));
    }
    if !req.header_has_token("upgrade", "websocket") {
        return Some(Response::text(426, "this endpoint speaks WebSocket only\n"));
    }
    if req.header("sec-websocket-key").is_none() {
        return Some(Response::text(400, "missing Sec-WebSocket-Key\n"));
    }
    if req.header("sec-websocket-version") != Some("13") {
        return Some(Response::text(
            426,
            "unsupported WebSocket version; use 13\n",
        ));
    }
    None
}

/// Completes the handshake (with `subprotocol`, if the consumer chose one).
pub(super) async fn handshake<S: Stream>(
    mut stream: S,
    mut req: Request,
    subprotocol: Option<&str>,
    ingress: &Ingress,
) -> anyhow::Result<(Ws<S>, Request)> {
    let key = req.header("sec-websocket-key").unwrap_or_default();
    let accept = derive_accept_key(key.as_bytes());
    let protocol = subprotocol
        .map(|p| format!("sec-websocket-protocol: {p}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n{protocol}\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await?;
    let leftover = std::mem::take(&mut req.leftover);
    let ws = WebSocketStream::from_partially_read(
        stream,
        leftover,
        Role::Server,
        Some(ws_config(ingress.settings.max_frame_size)),
    )
    .await;
    Ok((ws, req))
}

/// The upgrade of a request on a WebSocket path: admission, the backend's connect when
/// there is a backend, the handshake, registration.
async fn upgrade<S: Stream>(
    stream: S,
    req: Request,
    peer: std::net::SocketAddr,
    ingress: Arc<Ingress>,
) -> anyhow::Result<Option<Session<S>>> {
    let admitted = match admit(&req, peer, &ingress) {
        Ok(admitted) => admitted,
        Err(refused) => {
            let (mut ws, _) = handshake(stream, req, None, &ingress).await?;
            close(&mut ws, refused.0.code(), &refused.1).await;
            return Ok(None);
        }
    };
    let (id, connection) = ingress.ids.next();
    let Some(backend) = ingress.backend.clone() else {
        let (ws, req) = handshake(stream, req, None, &ingress).await?;
        drop(req);
        return Ok(Some(register(ws, admitted, id, connection, None, ingress)));
    };
    bridged::upgrade(
        stream,
        req,
        peer,
        ingress,
        admitted,
        (id, connection),
        backend,
    )
    .await
}

/// A connection that passed admission: who it is, and the caps slot it holds.
pub(super) struct Admitted {
    identity: crate::auth::Identity,
    user_group: String,
    positions: bool,
    peer: std::net::SocketAddr,
}

impl Admitted {
    /// Gives back its caps slot (it never registered).
    pub(super) fn release(self, ingress: &Ingress) {
        lock(&ingress.caps).release(self.peer.ip(), &self.identity.user);
    }
}

/// Admits a client, or says with which close code and why not: draining (1012), not
/// ready or full (1013), a bad Origin (4003), a bad or revoked token (4001).
fn admit(
    req: &Request,
    peer: std::net::SocketAddr,
    ingress: &Ingress,
) -> Result<Admitted, (CloseCode, String)> {
    let metrics = &ingress.metrics;
    if ingress.lifecycle.drain_token().is_cancelled() {
        metrics.connections_rejected_not_ready.inc();
        return Err((CloseCode::Restart, "node draining".into()));
    }
    if !ingress.health.ready() {
        metrics.connections_rejected_not_ready.inc();
        return Err((CloseCode::TryAgainLater, "node not ready".into()));
    }
    if !origin_allowed(ingress, req) {
        metrics.origin_rejections.inc();
        return Err((CloseCode::Forbidden, "origin not allowed".into()));
    }
    let identity = match token_of(req)
        .ok_or(AuthError::Missing)
        .and_then(|t| ingress.secrets.verifier.get().verify(&t))
    {
        Ok(identity) => identity,
        Err(e) => {
            metrics.auth_failures.inc();
            return Err((CloseCode::Unauthorized, e.to_string()));
        }
    };
    if ingress
        .replica
        .read()
        .revocations
        .revoked(&identity.user, identity.iat, unix_millis())
    {
        metrics.auth_failures.inc();
        return Err((CloseCode::Unauthorized, "token revoked".into()));
    }
    if let Some(wait) =
        lock(&ingress.cool_down).waiting(&identity.user, tokio::time::Instant::now())
    {
        metrics.connections_rejected_cool_down.inc();
        return Err((
            CloseCode::PolicyViolation,
            format!(
                "closed for too many ops: reconnect in {} s",
                wait.as_secs().max(1)
            ),
        ));
    }
    // Every connection is in its user group, so the user id must make a valid group name.
    let user_group = ingress.settings.user_group_of(&identity.user);
    if user_group.len() > MAX_GROUP_NAME {
        metrics.auth_failures.inc();
        return Err((
            CloseCode::Unauthorized,
            "user id too long: its user group would exceed 256 bytes".into(),
        ));
    }
    if metrics.connections.get() as usize >= ingress.settings.max_connections {
        metrics.connections_rejected_full.inc();
        return Err((CloseCode::TryAgainLater, "node full".into()));
    }
    let admitted = lock(&ingress.caps).admit(peer.ip(), &identity.user);
    if let Err(over) = admitted {
        metrics.connections_rejected_caps.inc();
        return Err((CloseCode::TryAgainLater, over.reason().into()));
    }
    let positions = req
        .query_param("positions")
        .is_some_and(|v| v == "1" || v == "true");
    Ok(Admitted {
        identity,
        user_group,
        positions,
        peer,
    })
}

/// Registers an admitted client with the hub and the presence queue (a bridged one's
/// record is committed already), and makes its session.
pub(super) fn register<S: Stream>(
    ws: Ws<S>,
    admitted: Admitted,
    id: ConnId,
    connection: String,
    bridge: Option<Arc<[u8]>>,
    ingress: Arc<Ingress>,
) -> Session<S> {
    let Admitted {
        identity,
        user_group,
        positions,
        peer,
    } = admitted;
    let metrics = &ingress.metrics;
    let (outlet, inbox) = ClientQueue::new(
        id,
        ingress.settings.client_queue,
        ingress.settings.client_queue_bytes,
        positions,
    );
    if bridge.is_some() {
        outlet.mark_bridged();
    }
    let refused = ingress.hub.connect(
        &outlet,
        &identity.user,
        &user_group,
        Permissions::new(identity.groups.iter().cloned(), identity.presence_any)
            .issued_at(identity.iat),
    );
    for (group, reason) in refused {
        debug!(%connection, %group, %reason, "token group not joined");
    }
    if bridge.is_none() {
        ingress.presence.push(PresenceOp::Connect(ConnectionRecord {
            node: ingress.node,
            connection: connection.clone(),
            user: identity.user.clone(),
            connected_at: unix_millis(),
        }));
    }
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
    Session::new(
        ws,
        ingress,
        outlet,
        inbox,
        identity,
        tracks,
        connection,
        peer.ip(),
        bridge,
    )
}

/// Sends a close frame and waits (briefly) for the client's.
pub(crate) async fn close<S: Stream>(ws: &mut Ws<S>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: WsCloseCode::from(code),
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

/// How often a node looks for revocations it applied.
pub const REVOCATION_POLL: Duration = Duration::from_millis(200);

/// Closes (4001) the open sockets a revocation refuses, for every revocation this node
/// applies, until shutdown: also one it applies late (it was cut off when it was made).
pub async fn enforce_revocations(ingress: Arc<Ingress>) {
    let shutdown = ingress.lifecycle.shutdown_token().clone();
    let mut seen = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(REVOCATION_POLL) => {}
        }
        let fresh: Vec<(String, u64)> = {
            let replica = ingress.replica.read();
            let revocations = &replica.revocations;
            let newest = revocations.newest();
            if newest <= seen {
                continue;
            }
            let fresh = revocations
                .iter()
                .filter(|(_, r)| r.index > seen)
                .map(|(user, r)| (user.to_owned(), r.before))
                .collect();
            seen = newest;
            fresh
        };
        for (user, before) in fresh {
            let closed = ingress.hub.act(Local::User(&user), Act::Revoke { before });
            if closed > 0 {
                info!(%user, closed, "sockets of a revoked user closed");
            }
        }
    }
}

/// Logs the bound address; used by the node at start.
pub fn announce(addr: std::net::SocketAddr, paths: &[String]) {
    info!(%addr, paths = ?paths, "WebSocket endpoint listening (/healthz, /readyz on the same port)");
}
