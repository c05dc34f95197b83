//! One WebSocket connection's life after registration: one `select!` loop over the
//! outbound queue (published messages, written in batches with one flush), frames from
//! the client (JSON ops), a close request (slow consumer, drain), and one timer for token
//! expiry and keepalive pings.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use switchboard_proto::client::{ClientOp, CloseCode, ErrorCode, ServerReply};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::{Stream, WRITE_TIMEOUT, Ws};
use crate::auth::{AuthError, Identity};
use crate::broker::Permissions;
use crate::hub::Outlet;
use crate::ingress::Ingress;

/// How often an idle connection is pinged; one that has sent nothing for two intervals
/// is dropped as dead.
const KEEPALIVE: Duration = Duration::from_secs(30);
/// Most queued messages written per flush.
const WRITE_BATCH: usize = 64;

/// How a session ended.
/// Runs its closure when dropped, however the scope ends.
struct Release<F: FnMut()>(F);

impl<F: FnMut()> Drop for Release<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

#[derive(Debug)]
pub enum End {
    /// We close with this code and reason.
    Close(CloseCode, String),
    /// The client closed, or the socket failed: nothing more to send.
    Gone,
}

#[derive(Debug)]
pub struct Session<'a, S: Stream> {
    pub ws: &'a mut Ws<S>,
    pub ingress: &'a Ingress,
    pub outlet: &'a Outlet,
    pub identity: Identity,
}

impl<S: Stream> Session<'_, S> {
    pub async fn run(mut self, mut rx: mpsc::Receiver<Message>) -> End {
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
                _ = self.ingress.lifecycle.drain_token().cancelled() => {
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
                            self.ingress.metrics.frames_too_large.inc();
                            return End::Close(CloseCode::TooBig, format!("frame too large: {e}"));
                        }
                        Some(Err(WsError::Utf8(_))) => {
                            self.ingress.metrics.protocol_violations.inc();
                            return End::Close(CloseCode::InvalidPayload, "text frame is not UTF-8".into());
                        }
                        Some(Err(WsError::Protocol(e))) => {
                            self.ingress.metrics.protocol_violations.inc();
                            return End::Close(CloseCode::ProtocolError, format!("protocol error: {e}"));
                        }
                        Some(Err(_)) => return End::Gone,
                    }
                }
                _ = tokio::time::sleep_until(wake) => {
                    let now = Instant::now();
                    if now >= expiry {
                        self.ingress.metrics.token_expiry_closes.inc();
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
        // The batch's bytes count against the queue's bound until they are written.
        let bytes: usize = batch.iter().map(Message::len).sum();
        let outlet = self.outlet;
        let _release = Release(move || outlet.written(bytes));
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
                self.ingress.metrics.slow_consumer_closes.inc();
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
            self.ingress.metrics.client_op_errors.inc();
        }
        let text = serde_json::to_string(reply).unwrap_or_default();
        self.send(Message::Text(text.into())).await
    }

    async fn on_op(&mut self, text: &str) -> Result<(), End> {
        self.ingress.metrics.client_ops.inc();
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
        let ingress = self.ingress;
        let id = op.id();
        match op {
            ClientOp::Subscribe { group, .. } => match ingress.hub.join(self.outlet, &group) {
                Ok(()) => ServerReply::Subscribed { group, id },
                Err(e @ crate::broker::JoinError::TooManyGroups(_)) => {
                    error(ErrorCode::TooManyGroups, &e.to_string(), id)
                }
                Err(e @ crate::broker::JoinError::InvalidName(_)) => {
                    error(ErrorCode::BadRequest, &e.to_string(), id)
                }
                Err(e) => error(ErrorCode::Forbidden, &e.to_string(), id),
            },
            ClientOp::Unsubscribe { group, .. } => {
                match ingress.hub.leave(self.outlet.id, &group) {
                    Ok(()) => ServerReply::Unsubscribed { group, id },
                    Err(e) => error(ErrorCode::BadRequest, &e.to_string(), id),
                }
            }
            ClientOp::Presence { user, .. } => {
                let user = user.unwrap_or_else(|| self.identity.user.clone());
                if !ingress.hub.may_query_presence(self.outlet.id, &user) {
                    return error(
                        ErrorCode::Forbidden,
                        "this token may only query its own presence",
                        id,
                    );
                }
                // Cluster-wide, from this node's replica of the registry.
                let connections = ingress.replica.presence_of(&user);
                ServerReply::Presence {
                    user,
                    connections,
                    id,
                }
            }
            ClientOp::Ping { .. } => ServerReply::Pong { id },
            ClientOp::Refresh { token, .. } => {
                match ingress.secrets.verifier.get().verify(&token) {
                    Ok(identity) if identity.user == self.identity.user => {
                        let (left, joined) = ingress.hub.refresh(
                            self.outlet,
                            Permissions::new(
                                identity.groups.iter().cloned(),
                                identity.presence_any,
                            ),
                        );
                        let exp = identity.exp;
                        self.identity = identity;
                        ServerReply::Refreshed {
                            exp: Some(exp),
                            left,
                            joined,
                            id,
                        }
                    }
                    Ok(_) => error(
                        ErrorCode::InvalidToken,
                        "the new token names another user",
                        id,
                    ),
                    Err(e) => error(ErrorCode::InvalidToken, &e.to_string(), id),
                }
            }
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
    let now = crate::clock::unix_secs();
    // Far enough to never fire, without overflowing Instant arithmetic.
    let left = exp.saturating_sub(now).min(10 * 365 * 24 * 3600);
    Instant::now() + Duration::from_secs(left)
}
