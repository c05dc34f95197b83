//! Switchboard client library: one WebSocket connection with a token ([`Connection`]),
//! JSON ops with replies matched by id, a [`ReconnectingClient`] that fails over between
//! nodes with backoff, and HS256 token minting for tests and benches.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use switchboard_proto::client::{ClientOp, ServerReply};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, http::HeaderValue};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bad URL: {0}")]
    Url(String),
    #[error("connect failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("WebSocket error: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("timed out")]
    Timeout,
    #[error("the connection is closed")]
    Closed,
    #[error("refused by the server: {0}")]
    Refused(String),
}

/// Where the token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// `?token=...` (what browsers do).
    #[default]
    Query,
    /// `Authorization: Bearer ...`.
    Bearer,
}

/// How to connect.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub url: String,
    pub token: Option<String>,
    pub token_in: TokenIn,
    pub origin: Option<String>,
    /// Bind this source address first (spreads many connections over 127.0.0.x).
    pub local_addr: Option<IpAddr>,
    /// Largest message accepted from the server.
    pub max_message_size: Option<usize>,
}

impl ConnectOptions {
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            ..ConnectOptions::default()
        }
    }

    /// The URL with the token appended as a query parameter, when it goes there.
    pub fn request_url(&self) -> String {
        match (&self.token, self.token_in) {
            (Some(token), TokenIn::Query) => {
                let sep = if self.url.contains('?') { '&' } else { '?' };
                format!("{}{sep}token={}", self.url, url_encode(token))
            }
            _ => self.url.clone(),
        }
    }
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Binary(Bytes),
    /// The server closed the connection with this code and reason (1006 if it vanished).
    Closed {
        code: u16,
        reason: String,
    },
}

/// One WebSocket connection. Nothing reads in the background: frames are read only when
/// the caller calls `recv` (so a test can play a client that never reads).
#[derive(Debug)]
pub struct Connection {
    ws: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
    buffered: VecDeque<Incoming>,
    next_id: u64,
    closed: bool,
}

impl Connection {
    /// Connects to `url` with an optional token in the query string.
    pub async fn connect_url(url: &str, token: Option<&str>) -> Result<Connection, Error> {
        let mut opts = ConnectOptions::new(url);
        opts.token = token.map(str::to_owned);
        Connection::connect(opts).await
    }

    pub async fn connect(opts: ConnectOptions) -> Result<Connection, Error> {
        let url = opts.request_url();
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Url(e.to_string()))?;
        if let (Some(token), TokenIn::Bearer) = (&opts.token, opts.token_in) {
            let value = HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| Error::Url(e.to_string()))?;
            request.headers_mut().insert("authorization", value);
        }
        if let Some(origin) = &opts.origin {
            let value = HeaderValue::from_str(origin).map_err(|e| Error::Url(e.to_string()))?;
            request.headers_mut().insert("origin", value);
        }
        let host = request
            .uri()
            .host()
            .ok_or_else(|| Error::Url(url.clone()))?
            .to_owned();
        let port = request.uri().port_u16().unwrap_or(80);
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| Error::Url(format!("{host} resolves to nothing")))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = opts.local_addr {
            socket.bind((ip, 0).into())?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let mut config = WebSocketConfig::default();
        config.read_buffer_size = 4096;
        config.write_buffer_size = 0;
        config.max_message_size = opts.max_message_size.or(Some(64 << 20));
        let (ws, _) = tokio_tungstenite::client_async_with_config(
            request,
            MaybeTlsStream::Plain(stream),
            Some(config),
        )
        .await
        .map_err(Box::new)?;
        Ok(Connection {
            ws,
            buffered: VecDeque::new(),
            next_id: 1,
            closed: false,
        })
    }

    /// The next frame from the server.
    pub async fn recv(&mut self) -> Result<Incoming, Error> {
        if let Some(frame) = self.buffered.pop_front() {
            return Ok(frame);
        }
        self.read().await
    }

    /// [`Connection::recv`] with a deadline.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Incoming, Error> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn read(&mut self) -> Result<Incoming, Error> {
        if self.closed {
            return Err(Error::Closed);
        }
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(Incoming::Text(t.to_string())),
                Some(Ok(Message::Binary(b))) => return Ok(Incoming::Binary(b)),
                Some(Ok(Message::Close(frame))) => {
                    self.closed = true;
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Ok(Incoming::Closed { code, reason });
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => {
                    self.closed = true;
                    return Ok(Incoming::Closed {
                        code: 1006,
                        reason: String::new(),
                    });
                }
            }
        }
    }

    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.ws
            .send(Message::Text(text.to_owned().into()))
            .await
            .map_err(|e| Error::Ws(Box::new(e)))
    }

    pub async fn send_binary(&mut self, bytes: Bytes) -> Result<(), Error> {
        self.ws
            .send(Message::Binary(bytes))
            .await
            .map_err(|e| Error::Ws(Box::new(e)))
    }

    pub async fn send_op(&mut self, op: &ClientOp) -> Result<(), Error> {
        let text = serde_json::to_string(op).map_err(|e| Error::Url(e.to_string()))?;
        self.send_text(&text).await
    }

    /// Sends an op with a fresh id and waits (10 s at most) for the reply with that id;
    /// other frames that arrive meanwhile are kept for `recv`, in order.
    pub async fn request(&mut self, mut op: ClientOp) -> Result<ServerReply, Error> {
        let id = self.next_id;
        self.next_id += 1;
        match &mut op {
            ClientOp::Subscribe { id: slot, .. }
            | ClientOp::Unsubscribe { id: slot, .. }
            | ClientOp::Presence { id: slot, .. }
            | ClientOp::Ping { id: slot }
            | ClientOp::Refresh { id: slot, .. } => *slot = Some(id),
        }
        self.send_op(&op).await?;
        let wait = async {
            loop {
                let frame = self.read().await?;
                if let Incoming::Text(text) = &frame
                    && let Ok(reply) = serde_json::from_str::<ServerReply>(text)
                    && reply_id(&reply) == Some(id)
                {
                    return Ok(reply);
                }
                let closed = matches!(frame, Incoming::Closed { .. });
                self.buffered.push_back(frame);
                if closed {
                    return Err(Error::Closed);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), wait)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Closes the connection normally.
    pub async fn close(mut self) -> Result<(), Error> {
        self.ws
            .close(None)
            .await
            .map_err(|e| Error::Ws(Box::new(e)))
    }
}

/// Reconnection policy: exponential backoff with jitter between `min` and `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub min: Duration,
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
    /// The delay before attempt `n` (0-based): min * 2^n capped at max, with the upper
    /// half randomised so that clients dropped together do not come back together.
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
    /// A frame from the server.
    Message(Incoming),
    /// A new connection is up (after the first, or after a drop) to this URL.
    Connected { url: String },
    /// The server closed with a code that says retrying will not help (4001, 4003): the
    /// client stops.
    Refused { code: u16, reason: String },
}

/// Keeps a connection to one of several URLs alive: on a close or error it reconnects
/// with [`Backoff`], moving to the next URL (so a draining node's 1012 sends it
/// elsewhere). Groups subscribed through it are subscribed again after a reconnect.
#[derive(Debug)]
pub struct ReconnectingClient {
    urls: Vec<String>,
    next_url: usize,
    options: ConnectOptions,
    backoff: Backoff,
    conn: Option<Connection>,
    subscriptions: Vec<String>,
    attempt: u32,
    stopped: bool,
}

impl ReconnectingClient {
    /// A client for `urls`, each connection made with `options` (its `url` is ignored).
    pub fn new(urls: Vec<String>, options: ConnectOptions, backoff: Backoff) -> Self {
        ReconnectingClient {
            urls,
            next_url: 0,
            options,
            backoff,
            conn: None,
            subscriptions: Vec::new(),
            attempt: 0,
            stopped: false,
        }
    }

    /// Replaces the token used for the next connections (after a refresh).
    pub fn set_token(&mut self, token: String) {
        self.options.token = Some(token);
    }

    /// Subscribes now (if connected) and after every reconnect. A refusal from the
    /// server is returned as [`Error::Refused`] and the group is not remembered.
    pub async fn subscribe(&mut self, group: &str) -> Result<(), Error> {
        if let Some(conn) = &mut self.conn {
            let reply = conn
                .request(ClientOp::Subscribe {
                    group: group.to_owned(),
                    id: None,
                })
                .await?;
            if let ServerReply::Error { message, .. } = reply {
                return Err(Error::Refused(message));
            }
        }
        if !self.subscriptions.iter().any(|g| g == group) {
            self.subscriptions.push(group.to_owned());
        }
        Ok(())
    }

    /// The next event; connects (and reconnects) as needed. Returns `Error::Closed` once
    /// the server has refused the client for good.
    pub async fn recv(&mut self) -> Result<Event, Error> {
        loop {
            if self.stopped {
                return Err(Error::Closed);
            }
            let Some(conn) = &mut self.conn else {
                if let Some(event) = self.connect().await {
                    return Ok(event);
                }
                continue;
            };
            match conn.recv().await {
                Ok(Incoming::Closed { code, reason }) => {
                    self.conn = None;
                    if code == 4001 || code == 4003 {
                        self.stopped = true;
                        return Ok(Event::Refused { code, reason });
                    }
                    // 1012 (draining) and everything else: try the next node.
                }
                Ok(message) => return Ok(Event::Message(message)),
                Err(_) => self.conn = None,
            }
        }
    }

    /// One connection attempt (after the backoff delay when retrying).
    async fn connect(&mut self) -> Option<Event> {
        if self.urls.is_empty() {
            self.stopped = true;
            return None;
        }
        if self.attempt > 0 {
            let jitter = f64::from(std::process::id() ^ self.attempt) % 1000.0 / 1000.0;
            tokio::time::sleep(self.backoff.delay(self.attempt - 1, jitter)).await;
        }
        let url = self.urls[self.next_url % self.urls.len()].clone();
        self.next_url += 1;
        let mut options = self.options.clone();
        options.url = url.clone();
        match Connection::connect(options).await {
            Ok(mut conn) => {
                for group in &self.subscriptions {
                    let op = ClientOp::Subscribe {
                        group: group.clone(),
                        id: None,
                    };
                    if conn.request(op).await.is_err() {
                        self.attempt += 1;
                        return None;
                    }
                }
                self.attempt = 0;
                self.conn = Some(conn);
                Some(Event::Connected { url })
            }
            Err(_) => {
                self.attempt += 1;
                None
            }
        }
    }
}

fn reply_id(reply: &ServerReply) -> Option<u64> {
    match reply {
        ServerReply::Subscribed { id, .. }
        | ServerReply::Unsubscribed { id, .. }
        | ServerReply::Presence { id, .. }
        | ServerReply::Pong { id }
        | ServerReply::Refreshed { id, .. }
        | ServerReply::Error { id, .. } => *id,
    }
}

/// Signs `claims` with HS256.
pub fn mint_hs256(
    secret: &str,
    claims: &serde_json::Value,
) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(800));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(10));
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(50));
    }

    #[test]
    fn the_token_goes_into_the_query_string_encoded() {
        let mut o = ConnectOptions::new("ws://h/ws/");
        o.token = Some("a.b+c".into());
        assert_eq!(o.request_url(), "ws://h/ws/?token=a.b%2Bc");
        o.url = "ws://h/ws/?x=1".into();
        assert_eq!(o.request_url(), "ws://h/ws/?x=1&token=a.b%2Bc");
        o.token_in = TokenIn::Bearer;
        assert_eq!(o.request_url(), "ws://h/ws/?x=1");
    }
}
