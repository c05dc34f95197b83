//! One WebSocket connection's life after registration: one `select!` loop over the
//! outbound queue (published messages, written in batches with one flush), frames from
//! the client (JSON ops), a close request (slow consumer, drain), the answer of a
//! recovery in flight, and one timer for token expiry, keepalive pings and the release of
//! held groups.
//!
//! A `?positions=1` connection gets every message as a JSON `message` frame; for history
//! groups its [`Tracks`] hold, order and check positions (gaps close with 4009), and
//! `subscribe` with `since` recovers through the group's owner: the `subscribed` answer,
//! then the missed messages, then whatever arrived meanwhile, nothing twice.

mod bridge;
mod ops;
mod presence;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use switchboard_proto::client::{ClientOp, CloseCode, ErrorCode, ServerReply};
use switchboard_proto::peer::{Position, PresenceOp};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::follow::Followed;
use super::state::ops as ops_budget;
use super::state::{End, Incoming, SessionState, Timeout, error, gap, slow_consumer, text};
use super::tracks::{Gap, Tracks};
use super::{Stream, WRITE_TIMEOUT, Ws, close};
use crate::auth::Identity;
use crate::backend::budget::Verdict;
use crate::config::TokenExpiry;
use crate::history::HistoryError;
use crate::history::Recovery;
use crate::hub::{Inbox, Outbound, Outlet, Positioned};
use crate::ingress::Ingress;
use crate::sync::lock;
use bridge::Bridged;

/// Most queued messages written per flush.
const WRITE_BATCH: usize = 64;

/// Runs its closure when dropped, however the scope ends.
struct Release<F: FnMut()>(F);

impl<F: FnMut()> Drop for Release<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

type Answer = BoxFuture<'static, Result<Recovery, HistoryError>>;

/// One registered connection: everything its task keeps for the connection's life.
pub struct Session<S: Stream> {
    ws: Ws<S>,
    ingress: Arc<Ingress>,
    outlet: Outlet,
    inbox: Inbox,
    identity: Identity,
    /// Its cluster-wide id, as the presence registry knows it.
    connection: String,
    peer_ip: IpAddr,
    /// The session's decisions: timers, positions, recoveries (no IO).
    state: SessionState,
    /// The answer of the recovery the state handed out, awaited.
    in_flight: Option<Answer>,
    /// The users whose presence events this connection follows, if any.
    follow: Option<Box<Followed>>,
    /// Its calls to the backend, when there is one (`--backend-url`).
    bridge: Option<Box<Bridged>>,
}

impl<S: Stream> std::fmt::Debug for Session<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("connection", &self.connection)
            .field("user", &self.identity.user)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<S: Stream> Session<S> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ws: Ws<S>,
        ingress: Arc<Ingress>,
        outlet: Outlet,
        inbox: Inbox,
        identity: Identity,
        tracks: Tracks,
        connection: String,
        peer_ip: IpAddr,
        bridge: Option<Arc<[u8]>>,
    ) -> Self {
        let expires = expiry(&ingress, &identity);
        Session {
            ws,
            ingress,
            outlet,
            inbox,
            identity,
            connection,
            peer_ip,
            state: SessionState::new(Instant::now(), expires, tracks),
            in_flight: None,
            follow: None,
            bridge: bridge.map(|scope| Box::new(Bridged::new(scope))),
        }
    }

    /// The connection's task: serves it until it ends, unregisters it, then closes with
    /// the code that says why (if it is ours to say). `permit` is the connection's slot
    /// under `--max-connections`, given back when the task ends.
    ///
    /// Not an `async fn`: one would keep its `self` argument twice in its state (the
    /// argument and its binding), 552 bytes more for every connection; an async block
    /// uses what it captures in place.
    pub fn serve(self, permit: OwnedSemaphorePermit) -> impl Future<Output = ()> + Send {
        let mut session = self;
        async move {
            let _permit = permit;
            let outcome = session.run().await;
            let ingress = session.ingress.clone();
            ingress.hub.disconnect(session.outlet.id);
            if session.bridge.is_some() {
                // Its disconnect is owed to the backend until made.
                session.finish_bridged(outcome.code());
            } else {
                ingress.presence.push(PresenceOp::Leave {
                    node: ingress.node,
                    connection: session.connection.clone(),
                    user: session.identity.user.clone(),
                });
            }
            lock(&ingress.caps).release(session.peer_ip, &session.identity.user);
            ingress.metrics.connections.dec();
            let ours = match outcome {
                End::Close(code, reason) => Some((code.code(), reason)),
                End::Asked(code, reason) => Some((code, reason)),
                End::ClientClosed(_) | End::Gone => None,
            };
            if let Some((code, reason)) = ours {
                // Boxed, as every cold path below: the task's future is as large as its
                // largest await point, and this one is awaited once per connection.
                Box::pin(close(&mut session.ws, code, &reason)).await;
            }
            debug!(connection = %session.connection, "client disconnected");
        }
    }

    /// The select loop. Hot paths (the queue, frames from the client, the timer) run in
    /// place; the cold ones (ops, recoveries, presence, pings, held messages) are boxed
    /// so that every idle connection does not carry their state.
    async fn run(&mut self) -> End {
        // Grown on first use: an idle connection keeps no batch buffer.
        let mut batch = Vec::new();
        // The futures that wait the connection's whole life are made once, not on every
        // turn of the loop: re-arming them for every batch (registering in the shared
        // drain token's waiter list, in the timer wheel) is what a fan-out round paid
        // per connection besides the write itself.
        let outlet = self.outlet.clone();
        let close = outlet.close_requested();
        tokio::pin!(close);
        let drained = self
            .ingress
            .lifecycle
            .drain_token()
            .clone()
            .cancelled_owned();
        tokio::pin!(drained);
        let timer = tokio::time::sleep_until(self.state.poll_timeout());
        tokio::pin!(timer);
        if let Err(end) = Box::pin(self.first_effects()).await {
            return end;
        }
        loop {
            let wake = self.state.poll_timeout();
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            tokio::select! {
                biased;
                code = &mut close => return self.asked_to_close(code),
                _ = &mut drained => {
                    return End::Close(CloseCode::Restart, "node draining, reconnect elsewhere".into());
                }
                answer = async { self.in_flight.as_mut().expect("guarded").await }, if self.in_flight.is_some() => {
                    self.in_flight = None;
                    if let Err(end) = Box::pin(self.recovered(answer)).await {
                        return end;
                    }
                    self.start_recovery();
                }
                answer = async { self.bridge.as_mut().and_then(|b| b.call.as_mut()).expect("guarded").await }, if self.bridge.as_ref().is_some_and(|b| b.call.is_some()) => {
                    if let Err(end) = Box::pin(self.answered(answer)).await {
                        return self.count(end);
                    }
                }
                alive = async { self.follow.as_mut().expect("guarded").changed().await }, if self.follow.is_some() => {
                    if !alive {
                        self.follow = None;
                        continue;
                    }
                    if let Err(end) = Box::pin(self.write_presence()).await {
                        return end;
                    }
                }
                n = self.inbox.recv_many(&mut batch, WRITE_BATCH) => {
                    if n == 0 {
                        return End::Gone;
                    }
                    if let Err(end) = self.write_batch(&mut batch).await {
                        return end;
                    }
                }
                frame = self.ws.next() => {
                    let result = match self.state.handle_frame(Instant::now(), frame) {
                        Incoming::Op(text) => Box::pin(self.on_op(&text)).await,
                        Incoming::Reply(reply) => Box::pin(self.reply(&reply)).await,
                        Incoming::Binary(bytes) => Box::pin(self.on_binary(bytes)).await,
                        Incoming::End(end) => Err(end),
                        Incoming::Nothing => Ok(()),
                    };
                    if let Err(end) = result {
                        return self.count(end);
                    }
                }
                _ = &mut timer => {
                    let result = match self.state.handle_timeout(Instant::now()) {
                        Timeout::Release(released) => Box::pin(self.write_positioned(released)).await,
                        Timeout::Ping => Box::pin(self.send(Message::Ping(Default::default()))).await,
                        Timeout::End(end) => Err(end),
                        Timeout::Nothing => Ok(()),
                    };
                    if let Err(end) = result {
                        return self.count(end);
                    }
                }
            }
        }
    }

    /// A close someone asked for (the hub's code, and the reason an admin or the
    /// backend gave, if any): a slow consumer when no reason was given.
    fn asked_to_close(&self, code: u16) -> End {
        match self.ingress.hub.take_close_reason(self.outlet.id) {
            Some(reason) => End::Asked(code, reason.into()),
            None => slow_consumer(CloseCode::from_code(code).unwrap_or(CloseCode::SlowConsumer)),
        }
    }

    /// Counts a close the state decided in its metric.
    fn count(&self, end: End) -> End {
        let metrics = &self.ingress.metrics;
        match &end {
            End::Close(CloseCode::TooBig, _) => metrics.frames_too_large.inc(),
            End::Close(CloseCode::InvalidPayload | CloseCode::ProtocolError, _) => {
                metrics.protocol_violations.inc()
            }
            End::Close(CloseCode::Unauthorized, _) => metrics.token_expiry_closes.inc(),
            _ => {}
        }
        end
    }

    async fn write_batch(&mut self, batch: &mut Vec<Outbound>) -> Result<(), End> {
        let taken = std::time::Instant::now();
        let metrics = &self.ingress.metrics;
        if let Some(since) = self.inbox.waited_since() {
            metrics
                .delivery_wait_seconds
                .observe(taken.saturating_duration_since(since));
        }
        // The batch's bytes count against the queue's bound until they are written.
        let bytes: usize = batch.iter().map(Outbound::len).sum();
        let outlet = self.outlet.clone();
        let _release = Release(move || outlet.written(bytes));
        let frames = self.state.route_batch(batch)?;
        self.write_frames(frames).await?;
        self.ingress
            .metrics
            .delivery_write_seconds
            .observe(taken.elapsed());
        Ok(())
    }

    /// Writes positioned messages the tracks released (or the gap they found).
    async fn write_positioned(
        &mut self,
        released: Result<Vec<Arc<Positioned>>, Gap>,
    ) -> Result<(), End> {
        match released {
            Ok(messages) => {
                let frames: Vec<Message> = messages.iter().map(|p| p.frame.clone()).collect();
                self.write_frames(frames).await
            }
            Err(Gap) => Err(gap("a held group")),
        }
    }

    /// Writes frames with one flush, within [`WRITE_TIMEOUT`]. A client that does not
    /// read blocks the write; when its queue overflows meanwhile, the write is abandoned
    /// and the connection closed with 4008 at once (the close frame goes out after what
    /// the socket already holds).
    async fn write_frames(&mut self, frames: impl IntoIterator<Item = Message>) -> Result<(), End> {
        let mut frames = frames.into_iter().peekable();
        if frames.peek().is_none() {
            return Ok(());
        }
        let outlet = &self.outlet;
        let ws = &mut self.ws;
        let write = async {
            for message in frames {
                ws.feed(message).await?;
            }
            ws.flush().await
        };
        tokio::select! {
            biased;
            code = outlet.close_requested() => Err(self.asked_to_close(code)),
            written = tokio::time::timeout(WRITE_TIMEOUT, write) => match written {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => Err(End::Gone),
                Err(_) => {
                    self.ingress.metrics.slow_consumer_closes.inc();
                    Err(End::Gone)
                }
            },
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
        self.send(text(reply)).await
    }

    /// Spends `cost` units of the connection's and the node's op budgets: `Ok(true)`
    /// when the op may go on, `Ok(false)` when it was refused (the client told), the end
    /// of a client that keeps going after being told.
    pub(super) async fn spend(&mut self, cost: u32, id: Option<u64>) -> Result<bool, End> {
        let limits = self.ingress.settings.ops;
        let metrics = &self.ingress.metrics;
        let message = match self.state.charge(cost, &limits) {
            Verdict::Pass => {
                let taken = lock(&self.ingress.node_ops).take(cost, Instant::now());
                if taken {
                    return Ok(true);
                }
                self.state.refund(cost, &limits);
                metrics.client_ops_refused_node.inc();
                format!(
                    "the node is busy (--node-ops-per-sec {}): retry shortly",
                    limits.node_per_sec
                )
            }
            Verdict::Refuse => {
                metrics.client_ops_refused.inc();
                format!(
                    "too many ops: this op costs {cost} of this connection's {} units a \
                     second (--client-ops-per-sec); slow down",
                    limits.per_sec
                )
            }
            Verdict::Close => {
                metrics.client_ops_refused.inc();
                metrics.client_op_budget_closes.inc();
                let wait =
                    lock(&self.ingress.cool_down).strike(&self.identity.user, Instant::now());
                return Err(End::Close(
                    CloseCode::PolicyViolation,
                    format!(
                        "too many ops after rate_limited: reconnect in {} s",
                        wait.as_secs()
                    ),
                ));
            }
        };
        self.reply(&error(ErrorCode::RateLimited, &message, id))
            .await
            .map(|()| false)
    }

    async fn on_op(&mut self, text: &str) -> Result<(), End> {
        self.ingress.metrics.client_ops.inc();
        let parsed = serde_json::from_str::<ClientOp>(text);
        let (cost, id) = match &parsed {
            Ok(op) => (ops_budget::cost(op), op.id()),
            Err(_) => (ops_budget::COST_SIMPLE, None),
        };
        if !self.spend(cost, id).await? {
            return Ok(());
        }
        let op = match parsed {
            Ok(op) => op,
            Err(_) if self.bridge.is_some() && !bridge::names_an_op(text) => {
                return self
                    .for_backend(crate::backend::lane::Frame::Text(text.to_owned()))
                    .await;
            }
            Err(e) => {
                let reply = error(ErrorCode::BadRequest, &format!("not a known op: {e}"), None);
                return self.reply(&reply).await;
            }
        };
        if let ClientOp::Subscribe {
            group,
            since: Some(since),
            id,
        } = op
        {
            return self.subscribe_since(group, Some(since), id).await;
        }
        // A positioned connection subscribing to a history group learns where it stands.
        if let ClientOp::Subscribe {
            group,
            since: None,
            id,
        } = &op
            && self.outlet.positions
            && self.ingress.router.keeps_history(group)
        {
            return self.subscribe_since(group.clone(), None, *id).await;
        }
        if let ClientOp::PresenceSubscribe { user, since, id } = op {
            return self.presence_subscribe(user, since, id).await;
        }
        let released = match &op {
            ClientOp::Subscribe { group, .. } => Some(group.clone()),
            _ => None,
        };
        let reply = self.answer(op).await;
        let ok = !matches!(reply, ServerReply::Error { .. });
        self.reply(&reply).await?;
        // A held group the client subscribed to: what waited goes out after the answer.
        match released {
            Some(group) if ok => {
                let messages = self.state.release(&group);
                self.write_positioned(messages).await
            }
            _ => Ok(()),
        }
    }

    /// `subscribe` with `since`: join, hold the group's messages, ask its owner for what
    /// came after `since`; the answer (`subscribed`, then the messages) comes when the
    /// owner's does (one recovery at a time, in the order asked).
    async fn subscribe_since(
        &mut self,
        group: String,
        since: Option<Position>,
        id: Option<u64>,
    ) -> Result<(), End> {
        if !self.outlet.positions {
            let reply = error(
                ErrorCode::BadRequest,
                "recovery needs positions: connect with ?positions=1",
                id,
            );
            return self.reply(&reply).await;
        }
        let history = self.ingress.router.keeps_history(&group);
        if history {
            self.state.recovering(&group);
        }
        if let Err(reply) = self.join(&group, id) {
            let released = self.state.release(&group);
            self.reply(&reply).await?;
            return self.write_positioned(released).await;
        }
        if !history {
            // Nothing is kept for it: completeness cannot be proved.
            let reply = ServerReply::Subscribed {
                group,
                recovered: Some(false),
                epoch: None,
                offset: None,
                id,
            };
            return self.reply(&reply).await;
        }
        self.state.ask(group, since, id);
        self.start_recovery();
        Ok(())
    }

    /// Asks the owner for the recovery the state hands out, if any.
    fn start_recovery(&mut self) {
        let Some((group, since)) = self.state.poll_recovery() else {
            return;
        };
        let first = !self.state.continuing();
        let router = self.ingress.router.clone();
        self.in_flight = Some(Box::pin(async move {
            router.recover(&group, since, first).await
        }));
    }

    /// The owner answered a page of the recovery in flight: what the state makes of it
    /// is written (`subscribed`, the page's missed messages, what arrived meanwhile),
    /// then the session closes if it says so; the next page is asked for only once this
    /// one is written, so a client that does not read holds one page.
    async fn recovered(&mut self, answer: Result<Recovery, HistoryError>) -> Result<(), End> {
        if let Err(e) = &answer {
            debug!(connection = %self.connection, error = %e, "recovery failed");
        }
        let (frames, then) = self.state.handle_recovered(answer).into_frames();
        self.write_frames(frames).await?;
        match then {
            Some(end) => Err(end),
            None => Ok(()),
        }
    }
}

/// When a session of `identity` must close: its token's `exp` under `--token-expiry
/// close`, never under connect-only.
fn expiry(ingress: &Ingress, identity: &Identity) -> Option<Instant> {
    match ingress.settings.token_expiry {
        TokenExpiry::Close => Some(expiry_instant(identity.exp)),
        TokenExpiry::ConnectOnly => None,
    }
}

/// The monotonic instant at which a token with this `exp` (Unix seconds) expires.
fn expiry_instant(exp: u64) -> Instant {
    let now = crate::clock::unix_secs();
    // Far enough to never fire, without overflowing Instant arithmetic.
    let left = exp.saturating_sub(now).min(10 * 365 * 24 * 3600);
    Instant::now() + Duration::from_secs(left)
}
