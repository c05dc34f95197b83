//! The WebSocket listener: health and readiness checks, the upgrade, authentication,
//! and one task per connection that owns its socket.
//!
//! A connection's life: read the HTTP head (bounded in size and time) -> route
//! (`/healthz`, `/readyz`, a WebSocket path, else 404) -> complete the handshake ->
//! refuse with a close code if the node is draining (1012), not ready or full (1013),
//! the Origin is not allowed (4003) or the token does not verify (4001) -> register
//! with the broker and the presence registry -> serve -> unregister.
//!
//! Serving is one `select!` loop over: the outbound queue (published messages, written
//! in batches with one flush), frames from the client (JSON ops), a close request
//! (slow consumer, drain), and a timer for token expiry and keepalive pings.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::client::{ClientOp, CloseCode, ErrorCode, ServerReply};
use switchboard_proto::peer::{ConnectionRecord, PresenceOp};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::auth::{AuthError, Identity};
use crate::broker::{ConnId, Permissions};
use crate::ingress::http::{self, Request, Response};
use crate::shared::{Outlet, OutletInner, Shared, read, write};

/// Sockets handled at once beyond `--max-connections`, for health checks and for
/// answering 1013 to connections over the limit.
const EXTRA_SOCKETS: usize = 1024;
/// How often an idle connection is pinged; one that has sent nothing for two intervals
/// is dropped as dead.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Longest a write to a client may take before the client counts as stuck.
const WRITE_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest we wait for the client's close frame after sending ours.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Most queued messages written per flush.
const WRITE_BATCH: usize = 64;

type Ws = WebSocketStream<TcpStream>;

/// WebSocket settings sized for 100k connections per node: a 1 KiB read buffer (clients
/// send small ops), and frames gathered into up to 8 KiB before a write, with an explicit
/// flush after each batch, so a burst costs one syscall per 8 KiB rather than per message.
/// An idle connection allocates no write buffer at all.
fn ws_config(max_frame: usize) -> WebSocketConfig {
    let mut config = WebSocketConfig::default();
    config.read_buffer_size = 1024;
    config.write_buffer_size = 8 * 1024;
    config.max_write_buffer_size = 4 * 1024 * 1024;
    config.max_frame_size = Some(max_frame);
    config.max_message_size = Some(max_frame);
    config
}

/// Accepts connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let sockets = Arc::new(Semaphore::new(
        shared.config.max_connections + EXTRA_SOCKETS,
    ));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            permit = sockets.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    warn!(error = %e, "accept failed on the WebSocket port");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let shared = shared.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            if let Err(e) = handle(stream, shared).await {
                debug!(%peer, error = %e, "WebSocket connection ended with an error");
            }
        });
    }
}

async fn handle(mut stream: TcpStream, shared: Arc<Shared>) -> anyhow::Result<()> {
    let req = match http::read_head(&mut stream).await {
        Ok(req) => req,
        Err(e) => {
            if let Some(status) = e.status() {
                let _ = Response::text(status, format!("{e}\n"))
                    .write(&mut stream)
                    .await;
            }
            return Ok(());
        }
    };
    shared.metrics.http_requests.inc();
    let is_ws_path = shared.config.ws_paths.contains(&req.path);
    match req.path.as_str() {
        "/healthz" => health(&shared).write(&mut stream).await?,
        "/readyz" => readiness(&shared).write(&mut stream).await?,
        _ if is_ws_path => {
            if !req.header_has_token("upgrade", "websocket") {
                Response::text(426, "this endpoint speaks WebSocket only\n")
                    .write(&mut stream)
                    .await?;
                return Ok(());
            }
            let Some(key) = req.header("sec-websocket-key") else {
                Response::text(400, "missing Sec-WebSocket-Key\n")
                    .write(&mut stream)
                    .await?;
                return Ok(());
            };
            if req.header("sec-websocket-version") != Some("13") {
                Response::text(426, "unsupported WebSocket version; use 13\n")
                    .write(&mut stream)
                    .await?;
                return Ok(());
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
                Some(ws_config(shared.config.max_frame_size)),
            )
            .await;
            websocket(ws, req, shared).await;
        }
        _ => {
            Response::text(404, "not found\n")
                .write(&mut stream)
                .await?
        }
    }
    Ok(())
}

/// `/healthz`: 200 while the process serves.
pub fn health(_shared: &Shared) -> Response {
    Response::text(200, "ok\n")
}

/// `/readyz`: 200 when accepting clients in a cluster with a known leader, else 503.
pub fn readiness(shared: &Shared) -> Response {
    if shared.ready() {
        Response::text(200, "ready\n")
    } else {
        Response::text(
            503,
            format!("not ready: {:?}\n", shared.lifecycle()).to_lowercase(),
        )
    }
}

/// Sends a close frame and waits (briefly) for the client's.
async fn close(ws: &mut Ws, code: CloseCode, reason: &str) {
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

fn origin_allowed(shared: &Shared, req: &Request) -> bool {
    let allowed = &shared.config.allowed_origins;
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

async fn websocket(mut ws: Ws, req: Request, shared: Arc<Shared>) {
    let metrics = &shared.metrics;
    let origin_ok = origin_allowed(&shared, &req);
    let token = token_of(&req);
    // The request head is not needed past this point; don't keep it for the connection's life.
    drop(req);
    if shared.drain.is_cancelled() {
        metrics.connections_rejected_not_ready.inc();
        return close(&mut ws, CloseCode::Restart, "node draining").await;
    }
    if !shared.ready() {
        metrics.connections_rejected_not_ready.inc();
        return close(&mut ws, CloseCode::TryAgainLater, "node not ready").await;
    }
    if !origin_ok {
        metrics.origin_rejections.inc();
        return close(&mut ws, CloseCode::Forbidden, "origin not allowed").await;
    }
    let identity = match token
        .ok_or(AuthError::Missing)
        .and_then(|t| shared.verifier.verify(&t))
    {
        Ok(identity) => identity,
        Err(e) => {
            metrics.auth_failures.inc();
            return close(&mut ws, CloseCode::Unauthorized, &e.to_string()).await;
        }
    };
    if metrics.connections.get() as usize >= shared.config.max_connections {
        metrics.connections_rejected_full.inc();
        return close(&mut ws, CloseCode::TryAgainLater, "node full").await;
    }

    let (id, connection) = shared.next_connection();
    let (outlet, rx) = OutletInner::new(id, shared.config.client_queue);
    let user_group = shared.config.user_group_of(&identity.user);
    let refused = write(&shared.broker).connect(
        id,
        outlet.clone(),
        &identity.user,
        &user_group,
        Permissions::new(identity.groups.iter().cloned(), identity.presence_any),
    );
    for (group, reason) in refused {
        debug!(%connection, %group, %reason, "token group not joined");
    }
    shared.presence_change(PresenceOp::Connect(ConnectionRecord {
        node: shared.node_id(),
        connection: connection.clone(),
        user: identity.user.clone(),
        connected_at: unix_millis(),
    }));
    metrics.connections.inc();
    metrics.connections_accepted.inc();
    debug!(%connection, user = %identity.user, "client connected");

    let outcome = Session {
        ws: &mut ws,
        shared: &shared,
        id,
        outlet: &outlet,
        identity,
    }
    .run(rx)
    .await;

    write(&shared.broker).disconnect(id);
    shared.presence_change(PresenceOp::Disconnect {
        node: shared.node_id(),
        connection: connection.clone(),
    });
    metrics.connections.dec();
    match outcome {
        End::Close(code, reason) => close(&mut ws, code, &reason).await,
        End::Gone => {}
    }
    debug!(%connection, "client disconnected");
}

/// How a session ended.
enum End {
    /// We close with this code and reason.
    Close(CloseCode, String),
    /// The client closed, or the socket failed: nothing more to send.
    Gone,
}

struct Session<'a> {
    ws: &'a mut Ws,
    shared: &'a Shared,
    id: ConnId,
    outlet: &'a Outlet,
    identity: Identity,
}

impl Session<'_> {
    async fn run(mut self, mut rx: mpsc::Receiver<Message>) -> End {
        // Grown on first use: an idle connection keeps no batch buffer.
        let mut batch = Vec::new();
        let mut last_heard = Instant::now();
        let mut pinged = false;
        loop {
            let expiry = expiry_instant(self.identity.exp);
            let keepalive = last_heard + if pinged { 2 * KEEPALIVE } else { KEEPALIVE };
            let wake = expiry.min(keepalive);
            tokio::select! {
                biased;
                code = self.outlet.close_requested() => {
                    return End::Close(code, "slow consumer: outbound queue overflowed".into());
                }
                _ = self.shared.drain.cancelled() => {
                    return End::Close(CloseCode::Restart, "node draining, reconnect elsewhere".into());
                }
                n = rx.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return End::Gone;
                    }
                    if let Err(end) = self.write_batch(&mut batch).await {
                        return end;
                    }
                }
                frame = self.ws.next() => {
                    last_heard = Instant::now();
                    pinged = false;
                    match frame {
                        None => return End::Gone,
                        Some(Ok(Message::Text(text))) => {
                            if let Err(end) = self.on_op(text.as_str()).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Binary(_))) => {
                            let reply = error(ErrorCode::BadRequest, "binary frames carry no ops; send JSON text", None);
                            if let Err(end) = self.reply(&reply).await {
                                return end;
                            }
                        }
                        Some(Ok(Message::Close(_))) => return End::Gone,
                        Some(Ok(_)) => {} // ping/pong: tungstenite answers pings itself
                        Some(Err(WsError::Capacity(e))) => {
                            self.shared.metrics.frames_too_large.inc();
                            return End::Close(CloseCode::TooBig, format!("frame too large: {e}"));
                        }
                        Some(Err(_)) => return End::Gone,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= expiry {
                        self.shared.metrics.token_expiry_closes.inc();
                        return End::Close(CloseCode::Unauthorized, AuthError::Expired.to_string());
                    }
                    if pinged {
                        return End::Gone; // nothing heard for two keepalive intervals
                    }
                    pinged = true;
                    if self.send(Message::Ping(Default::default())).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    async fn write_batch(&mut self, batch: &mut Vec<Message>) -> Result<(), End> {
        let ws = &mut *self.ws;
        let write = async {
            for message in batch.drain(..) {
                ws.feed(message).await?;
            }
            ws.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Gone),
            Err(_) => {
                self.shared.metrics.slow_consumer_closes.inc();
                Err(End::Gone)
            }
        }
    }

    async fn send(&mut self, message: Message) -> Result<(), End> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Gone),
        }
    }

    async fn reply(&mut self, reply: &ServerReply) -> Result<(), End> {
        if matches!(reply, ServerReply::Error { .. }) {
            self.shared.metrics.client_op_errors.inc();
        }
        let text = serde_json::to_string(reply).unwrap_or_default();
        self.send(Message::Text(text.into())).await
    }

    async fn on_op(&mut self, text: &str) -> Result<(), End> {
        self.shared.metrics.client_ops.inc();
        let op = match serde_json::from_str::<ClientOp>(text) {
            Ok(op) => op,
            Err(e) => {
                let reply = error(ErrorCode::BadRequest, &format!("not a known op: {e}"), None);
                return self.reply(&reply).await;
            }
        };
        let reply = self.answer(op).await;
        self.reply(&reply).await
    }

    async fn answer(&mut self, op: ClientOp) -> ServerReply {
        let shared = self.shared;
        let id = op.id();
        match op {
            ClientOp::Subscribe { group, .. } => {
                match write(&shared.broker).join(self.id, self.outlet.clone(), &group) {
                    Ok(()) => ServerReply::Subscribed { group, id },
                    Err(e @ crate::broker::JoinError::TooManyGroups(_)) => {
                        error(ErrorCode::TooManyGroups, &e.to_string(), id)
                    }
                    Err(e @ crate::broker::JoinError::InvalidName(_)) => {
                        error(ErrorCode::BadRequest, &e.to_string(), id)
                    }
                    Err(e) => error(ErrorCode::Forbidden, &e.to_string(), id),
                }
            }
            ClientOp::Unsubscribe { group, .. } => {
                match write(&shared.broker).leave(self.id, &group) {
                    Ok(()) => ServerReply::Unsubscribed { group, id },
                    Err(e) => error(ErrorCode::BadRequest, &e.to_string(), id),
                }
            }
            ClientOp::Presence { user, .. } => {
                let user = user.unwrap_or_else(|| self.identity.user.clone());
                if !read(&shared.broker).may_query_presence(self.id, &user) {
                    return error(
                        ErrorCode::Forbidden,
                        "this token may only query its own presence",
                        id,
                    );
                }
                // Cluster-wide; bounded by the 1 s per-peer limit, during which this
                // connection's outbound messages wait in its (bounded) queue.
                let connections = shared.presence_of(&user);
                ServerReply::Presence {
                    user,
                    connections,
                    id,
                }
            }
            ClientOp::Ping { .. } => ServerReply::Pong { id },
            ClientOp::Refresh { token, .. } => match shared.verifier.verify(&token) {
                Ok(identity) if identity.user == self.identity.user => {
                    write(&shared.broker).set_permissions(
                        self.id,
                        Permissions::new(identity.groups.iter().cloned(), identity.presence_any),
                    );
                    let exp = identity.exp;
                    self.identity = identity;
                    ServerReply::Refreshed { exp: Some(exp), id }
                }
                Ok(_) => error(
                    ErrorCode::InvalidToken,
                    "the new token names another user",
                    id,
                ),
                Err(e) => error(ErrorCode::InvalidToken, &e.to_string(), id),
            },
        }
    }
}

fn error(code: ErrorCode, message: &str, id: Option<u64>) -> ServerReply {
    ServerReply::Error {
        code,
        message: message.to_owned(),
        id,
    }
}

/// The monotonic instant at which a token with this `exp` (Unix seconds) expires.
fn expiry_instant(exp: u64) -> Instant {
    let now = crate::auth::unix_now();
    // Far enough to never fire, without overflowing Instant arithmetic.
    let left = exp.saturating_sub(now).min(10 * 365 * 24 * 3600);
    Instant::now() + Duration::from_secs(left)
}

fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Logs the bound address; used by the node at start.
pub fn announce(addr: std::net::SocketAddr, paths: &[String]) {
    info!(%addr, paths = ?paths, "WebSocket endpoint listening (/healthz, /readyz on the same port)");
}
