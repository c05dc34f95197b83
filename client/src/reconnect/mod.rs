//! A client that stays connected: failover between nodes with backoff.
//!
//! - [`Backoff`]: exponential delays with jitter, between a minimum and a maximum.
//! - [`ReconnectingClient`]: one live [`Connection`] at a time to one of several URLs.
//!   When it ends (any close code but 4001/4003, or an error) the client waits a backoff
//!   delay and connects to the *next* URL, so a node that drains (1012) or is full (1013)
//!   sends it elsewhere. Groups subscribed through it are subscribed again on every new
//!   connection. 4001 (authentication) and 4003 (forbidden) are final: retrying with the
//!   same token cannot help, so it reports [`Event::Refused`] and stops.
//! - [`Event`]: what `recv` yields: messages, and every (re)connection, so a test can
//!   see a failover happen.
//! - Positions ([`ReconnectingClient::with_positions`]): the client connects with
//!   `?positions=1`, keeps each history group's last position (from the `message` frames it
//!   hands out), and on every reconnect subscribes with `since`, so that the node replays
//!   what was missed; each answer is surfaced as [`Event::Recovered`] (`recovered: false`:
//!   the application should refetch).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_proto::client::{ClientOp, Position, ServerReply};

use crate::{ConnectOptions, Connection, Error, Incoming};

/// Reconnection policy: exponential backoff with jitter between `min` and `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The delay before the first retry (before jitter).
    pub min: Duration,
    /// The cap of the delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            min: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

impl Backoff {
    /// The delay before retry `attempt` (0-based): `min * 2^attempt` capped at `max`, of
    /// which the upper half is scaled by `jitter` (0.0..=1.0), so that clients dropped
    /// together (a node draining 10 000 of them) do not come back together.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let base = self
            .min
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// What a [`ReconnectingClient`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A frame from the server (never [`Incoming::Closed`]: a close leads to a
    /// reconnect, or to [`Event::Refused`]).
    Message(Incoming),
    /// A connection is up, to this URL: the first one, or a new one after a drop. The
    /// remembered subscriptions have been replayed on it.
    Connected {
        /// The URL it connected to (without the token).
        url: String,
    },
    /// The server refused the client for good: close code 4001 or 4003, or HTTP 401/403
    /// at the upgrade (reported as 4001/4003). The client stops; `recv` then returns
    /// [`Error::Closed`].
    Refused {
        /// The close code.
        code: u16,
        /// The server's reason.
        reason: String,
    },
    /// A recovery was answered (positions on, after a reconnect): `recovered` says whether
    /// every message missed in `group` follows (the `message` frames after this event);
    /// when false, some are lost and the application should refetch its state.
    Recovered {
        /// The group.
        group: String,
        /// Whether the missed messages follow, all of them.
        recovered: bool,
    },
}

/// A connection that lasted at least this long resets the backoff; a shorter one (a node
/// that accepts and closes at once, say with 1013) keeps it growing.
const STABLE_AFTER: Duration = Duration::from_secs(5);

/// Keeps a connection to one of several URLs alive.
///
/// Call order: [`ReconnectingClient::new`], then [`ReconnectingClient::recv`] in a loop
/// (it connects on the first call, and reconnects inside later calls). Ops may be sent
/// between `recv` calls. Subscriptions made with [`ReconnectingClient::subscribe`], or
/// with a `Subscribe` op through [`ReconnectingClient::request`] or
/// [`ReconnectingClient::send_op`], are replayed after every reconnect; `Unsubscribe`
/// forgets them; a successful `Refresh` replaces the token used for reconnects.
///
/// `recv` waits as long as it takes to connect (no URL may be up): wrap it in a timeout.
/// It is cancel-safe: a cancelled call loses no frame and leaves the client usable.
#[derive(Debug)]
pub struct ReconnectingClient {
    urls: Vec<String>,
    next_url: usize,
    options: ConnectOptions,
    backoff: Backoff,
    conn: Option<Connection>,
    connected_at: Option<Instant>,
    url: Option<String>,
    /// Groups to subscribe on every new connection, in the order first subscribed.
    subscriptions: Vec<String>,
    /// Consecutive failed or short-lived connections: the backoff exponent.
    attempt: u32,
    /// Whether the next connect waits a backoff delay first (not before the first one).
    delay_next: bool,
    stopped: bool,
    /// Events produced outside `recv` (a connect made by `request`), for `recv` to return.
    pending: VecDeque<Event>,
    last_close: Option<(u16, String)>,
    connects: u64,
    rng: u64,
    /// With positions on: each history group's last position delivered.
    positions: Option<HashMap<String, Position>>,
}

impl ReconnectingClient {
    /// A client for `urls`, tried in order and then round again; each connection is made
    /// with `options` (whose `url` is replaced by the URL tried).
    pub fn new(urls: Vec<String>, options: ConnectOptions, backoff: Backoff) -> Self {
        ReconnectingClient {
            urls,
            next_url: 0,
            options,
            backoff,
            conn: None,
            connected_at: None,
            url: None,
            subscriptions: Vec::new(),
            attempt: 0,
            delay_next: false,
            stopped: false,
            pending: VecDeque::new(),
            last_close: None,
            connects: 0,
            rng: seed(),
            positions: None,
        }
    }

    /// Turns positions on (see the module header): connections carry `positions=1`, so
    /// messages arrive as JSON `message` frames, and history groups are recovered after
    /// every reconnect.
    pub fn with_positions(mut self) -> Self {
        self.positions = Some(HashMap::new());
        self
    }

    /// The last position delivered in `group` (positions on, a history group).
    pub fn position(&self, group: &str) -> Option<Position> {
        self.positions.as_ref()?.get(group).copied()
    }

    /// Replaces the token used for the next connections (after a refresh made some other
    /// way than through [`ReconnectingClient::request`]).
    pub fn set_token(&mut self, token: String) {
        self.options.token = Some(token);
    }

    /// The URL of the live connection, if one is up.
    pub fn url(&self) -> Option<&str> {
        self.conn.as_ref().and(self.url.as_deref())
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// How many connections have been made (the first one included).
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// The code and reason of the last close seen (or 1006 and the error of a failed
    /// connection), to tell why a reconnect happened.
    pub fn last_close(&self) -> Option<(u16, &str)> {
        self.last_close.as_ref().map(|(c, r)| (*c, r.as_str()))
    }

    /// The groups replayed on every new connection.
    pub fn subscriptions(&self) -> &[String] {
        &self.subscriptions
    }

    /// Subscribes now (if connected) and after every reconnect. A refusal from the
    /// server is returned as [`Error::Refused`] and the group is not remembered. While
    /// disconnected the group is only remembered, and subscribed on the next connection.
    pub async fn subscribe(&mut self, group: &str) -> Result<(), Error> {
        if let Some(conn) = &mut self.conn {
            let reply = conn.subscribe(group).await?;
            if let ServerReply::Error { message, .. } = reply {
                return Err(Error::Refused(message));
            }
            self.note(&reply);
        }
        self.remember(group);
        Ok(())
    }

    /// Positions on: asks the live connection to recover every group from its position
    /// now, as after a reconnect (the answers come as [`Event::Recovered`], the missed
    /// messages after them). For when the application suspects it missed something and
    /// no newer message showed the gap yet (a message that was the last of its group).
    pub async fn recover(&mut self) -> Result<(), Error> {
        let since: Vec<(String, Position)> = self
            .subscriptions
            .iter()
            .filter_map(|g| Some((g.clone(), self.positions.as_ref()?.get(g).copied()?)))
            .collect();
        for (group, at) in since {
            let op = ClientOp::Subscribe {
                group: group.clone(),
                since: Some(at),
                id: None,
            };
            let conn = self.conn.as_mut().ok_or(Error::Closed)?;
            let reply = conn.request(op).await?;
            if let ServerReply::Subscribed {
                recovered: Some(recovered),
                ..
            } = &reply
            {
                self.pending.push_back(Event::Recovered {
                    group,
                    recovered: *recovered,
                });
            }
            self.note(&reply);
        }
        Ok(())
    }

    /// Unsubscribes now (if connected) and forgets the group.
    pub async fn unsubscribe(&mut self, group: &str) -> Result<(), Error> {
        self.subscriptions.retain(|g| g != group);
        if let Some(conn) = &mut self.conn {
            let reply = conn.unsubscribe(group).await?;
            if let ServerReply::Error { message, .. } = reply {
                return Err(Error::Refused(message));
            }
        }
        Ok(())
    }

    /// Sends an op and waits for its reply (see [`Connection::request`]), connecting first
    /// if needed (the `Connected` event is then returned by the next `recv`). A successful
    /// `Subscribe` is remembered, `Unsubscribe` forgotten, and `Refresh` replaces the token.
    pub async fn request(&mut self, op: ClientOp) -> Result<ServerReply, Error> {
        loop {
            if self.stopped {
                return Err(Error::Closed);
            }
            if self.conn.is_some() {
                break;
            }
            // `Connected` goes before the `Recovered` events the connect queued.
            let at = self.pending.len();
            if let Some(event) = self.connect().await {
                let refused = matches!(event, Event::Refused { .. });
                self.pending.insert(at, event);
                if refused {
                    return Err(Error::Closed);
                }
            }
        }
        let Some(conn) = &mut self.conn else {
            return Err(Error::Closed);
        };
        let reply = conn.request(op.clone()).await?;
        if !matches!(reply, ServerReply::Error { .. }) {
            self.track(&op);
            self.note(&reply);
        }
        Ok(reply)
    }

    /// Sends an op without waiting for its reply (it arrives through `recv` as a
    /// message). `Subscribe` and `Unsubscribe` are tracked as if they succeed.
    /// Returns [`Error::Closed`] when no connection is up.
    pub async fn send_op(&mut self, op: &ClientOp) -> Result<(), Error> {
        let conn = self.conn.as_mut().ok_or(Error::Closed)?;
        conn.send_op(op).await?;
        if !matches!(op, ClientOp::Refresh { .. }) {
            self.track(op);
        }
        Ok(())
    }

    /// The next event; connects (and reconnects) as needed. Returns [`Error::Closed`] once
    /// the client has stopped (after [`Event::Refused`]), and [`Error::Url`] when it has no
    /// URL to try.
    pub async fn recv(&mut self) -> Result<Event, Error> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Ok(event);
            }
            if self.stopped {
                return Err(Error::Closed);
            }
            if self.urls.is_empty() {
                return Err(Error::Url(
                    "a ReconnectingClient needs at least one URL".into(),
                ));
            }
            let Some(conn) = &mut self.conn else {
                if let Some(event) = self.connect().await {
                    return Ok(event);
                }
                continue;
            };
            match conn.recv().await {
                Ok(Incoming::Closed { code, reason }) => {
                    if let Some(event) = self.dropped(code, reason) {
                        return Ok(event);
                    }
                }
                Ok(message) => {
                    if let Incoming::Text(text) = &message {
                        self.note_text(text);
                    }
                    return Ok(Event::Message(message));
                }
                Err(e) => {
                    if let Some(event) = self.dropped(1006, e.to_string()) {
                        return Ok(event);
                    }
                }
            }
        }
    }

    /// Closes the live connection normally and stops the client.
    pub async fn close(mut self) -> Result<(), Error> {
        self.stopped = true;
        match self.conn.take() {
            Some(conn) => conn.close().await,
            None => Ok(()),
        }
    }

    /// With positions on: what a frame handed to the application says of a position.
    fn note_text(&mut self, text: &str) {
        // Only JSON replies and positioned messages can matter; a raw payload is skipped
        // without parsing it.
        if self.positions.is_none() || !text.starts_with("{\"type\":") {
            return;
        }
        if let Ok(reply) = serde_json::from_str::<ServerReply>(text) {
            self.note(&reply);
        }
    }

    /// With positions on: a `message` moves its group's position; a `subscribed` answer
    /// sets it (a fresh subscription, or a recovery that failed: the client starts from
    /// the top) or leaves it for the replayed messages to move.
    fn note(&mut self, reply: &ServerReply) {
        let Some(positions) = &mut self.positions else {
            return;
        };
        match reply {
            ServerReply::Message {
                group,
                epoch: Some(epoch),
                offset: Some(offset),
                ..
            } => {
                let at = Position {
                    epoch: *epoch,
                    offset: *offset,
                };
                positions.insert(group.clone(), at);
            }
            ServerReply::Subscribed {
                group,
                recovered,
                epoch: Some(epoch),
                offset: Some(offset),
                ..
            } if *recovered != Some(true) => {
                let at = Position {
                    epoch: *epoch,
                    offset: *offset,
                };
                positions.insert(group.clone(), at);
            }
            _ => {}
        }
    }

    fn remember(&mut self, group: &str) {
        if !self.subscriptions.iter().any(|g| g == group) {
            self.subscriptions.push(group.to_owned());
        }
    }

    fn track(&mut self, op: &ClientOp) {
        match op {
            ClientOp::Subscribe { group, .. } => self.remember(group),
            ClientOp::Unsubscribe { group, .. } => self.subscriptions.retain(|g| g != group),
            ClientOp::Refresh { token, .. } => self.options.token = Some(token.clone()),
            ClientOp::Presence { .. }
            | ClientOp::PresenceSubscribe { .. }
            | ClientOp::PresenceUnsubscribe { .. }
            | ClientOp::Ping { .. } => {}
        }
    }

    /// The live connection ended with `code`: stop for good, or arrange the reconnect.
    fn dropped(&mut self, code: u16, reason: String) -> Option<Event> {
        self.conn = None;
        self.last_close = Some((code, reason.clone()));
        if code == 4001 || code == 4003 {
            self.stopped = true;
            return Some(Event::Refused { code, reason });
        }
        let stable = self
            .connected_at
            .is_some_and(|t| t.elapsed() >= STABLE_AFTER);
        // 1013 means "later": it always grows the backoff, however long the connection
        // lived. Everything else (1012 included) starts again from the minimum once the
        // connection had been stable.
        if stable && code != 1013 {
            self.attempt = 0;
        } else {
            self.attempt = self.attempt.saturating_add(1);
        }
        self.delay_next = true;
        None
    }

    /// One connection attempt, after the backoff delay when retrying. `Some` with the
    /// event to report, `None` when the attempt failed (the next one will wait longer).
    async fn connect(&mut self) -> Option<Event> {
        if self.urls.is_empty() {
            return None;
        }
        if self.delay_next {
            let jitter = self.jitter();
            tokio::time::sleep(self.backoff.delay(self.attempt.saturating_sub(1), jitter)).await;
        }
        // Always move on to the next URL: after a drop, that is another node.
        let url = self.urls[self.next_url % self.urls.len()].clone();
        self.next_url = self.next_url.wrapping_add(1);
        self.delay_next = true;
        let mut options = self.options.clone();
        options.url = if self.positions.is_some() {
            with_query(&url, "positions=1")
        } else {
            url.clone()
        };
        let mut conn = match Connection::connect(options).await {
            Ok(conn) => conn,
            Err(Error::Http { status, body }) if status == 401 || status == 403 => {
                let code = if status == 401 { 4001 } else { 4003 };
                self.stopped = true;
                let reason = format!("HTTP {status}: {body}");
                self.last_close = Some((code, reason.clone()));
                return Some(Event::Refused { code, reason });
            }
            Err(e) => {
                self.last_close = Some((1006, e.to_string()));
                self.attempt = self.attempt.saturating_add(1);
                return None;
            }
        };
        let groups = self.subscriptions.clone();
        for group in &groups {
            let since = self.position(group);
            let op = ClientOp::Subscribe {
                group: group.clone(),
                since,
                id: None,
            };
            match conn.request(op).await {
                // A refusal now (the new token lacks the group) leaves the rest standing.
                Ok(reply) => {
                    if let ServerReply::Subscribed {
                        recovered: Some(recovered),
                        ..
                    } = &reply
                    {
                        self.pending.push_back(Event::Recovered {
                            group: group.clone(),
                            recovered: *recovered,
                        });
                    }
                    self.note(&reply);
                }
                Err(_) => {
                    // The connection ended during the replay: its close (kept by
                    // `request`) says whether to stop or to try again.
                    let (code, reason) = conn
                        .take_buffered_close()
                        .unwrap_or((1006, "no reply to a replayed subscribe".into()));
                    self.connected_at = None;
                    return self.dropped(code, reason);
                }
            }
        }
        self.connects += 1;
        self.connected_at = Some(Instant::now());
        self.url = Some(url.clone());
        self.conn = Some(conn);
        Some(Event::Connected { url })
    }

    /// A pseudo-random number in 0.0..1.0 (splitmix64): each client draws its own
    /// sequence, so thousands of clients in one process spread their retries.
    fn jitter(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `url` with `pair` added to its query string.
fn with_query(url: &str, pair: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{pair}")
}

/// A seed that differs between clients of one process and between processes.
fn seed() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    now ^ n.wrapping_mul(0xA24B_AED4_963E_E407) ^ u64::from(std::process::id()) << 32
}

#[cfg(test)]
mod tests;
