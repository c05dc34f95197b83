//! One WebSocket connection to a node: connect with a token, receive frames, send ops.
//!
//! - [`ConnectOptions`]: where to connect and how to present the token ([`TokenIn`]).
//! - [`Connection`]: the socket. Nothing reads in the background: frames are read only
//!   when the caller asks ([`Connection::recv`], [`Connection::request`]), so a test can
//!   play a client that never reads (a slow consumer) simply by not calling them.
//! - [`Incoming`]: what a read yields: a text or binary message, or the close.
//!
//! Only `ws://` is spoken (no TLS): tests and benches talk to a node directly.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use switchboard_proto::client::{ClientOp, ServerReply};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{WebSocketConfig, frame::coding::CloseCode};
use tokio_tungstenite::tungstenite::{self, Message};

use crate::Error;

mod options;

pub use options::{
    ConnectOptions, DEFAULT_CONNECT_TIMEOUT, DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_REQUEST_TIMEOUT,
    TokenIn, url_encode,
};

/// What the server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text frame: a published UTF-8 payload, or a JSON reply to an op.
    Text(String),
    /// A binary frame: a published payload that is not UTF-8.
    Binary(Bytes),
    /// The connection ended. `code` is the server's close code; 1005 when its close
    /// frame had none; 1006 when the connection ended without a close frame (reset, EOF
    /// or a protocol error; `reason` says which); 1009 when a message from the server was
    /// larger than [`ConnectOptions::max_message_size`] (this side then closed).
    Closed {
        /// The close code.
        code: u16,
        /// The close reason.
        reason: String,
    },
}

impl Incoming {
    /// The text, if this is a text frame.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Incoming::Text(t) => Some(t),
            _ => None,
        }
    }

    /// The close code, if this is the close.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Incoming::Closed { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// One WebSocket connection.
///
/// Call order: [`Connection::connect`], then any mix of `recv*`, `send_*` and
/// [`Connection::request`]; `recv` returns [`Incoming::Closed`] once, and [`Error::Closed`]
/// after that. [`Connection::close`] (or drop) ends it. Pings from the server are
/// answered while reading; a connection that is never read never answers them.
///
/// [`Connection::request`] reads until its reply arrives; every other frame read
/// meanwhile is kept and returned by later `recv` calls, in arrival order.
#[derive(Debug)]
pub struct Connection {
    ws: WebSocketStream<TcpStream>,
    /// Frames read by `request` while it waited for its reply, for `recv` to return.
    buffered: VecDeque<Incoming>,
    /// The next id `request` assigns; kept above every id the caller supplied.
    next_id: u64,
    /// Set once `Incoming::Closed` has been produced (read or buffered).
    closed: bool,
    request_timeout: Duration,
    local: SocketAddr,
    peer: SocketAddr,
}

impl Connection {
    /// Connects to `url` with an optional token in the query string.
    pub async fn connect_url(url: &str, token: Option<&str>) -> Result<Connection, Error> {
        let mut opts = ConnectOptions::new(url);
        opts.token = token.map(str::to_owned);
        Connection::connect(opts).await
    }

    /// Connects and completes the upgrade, within `opts.connect_timeout`. A server that
    /// accepts the upgrade and then closes (a bad token gets 4001) yields a `Connection`
    /// whose first `recv` is that [`Incoming::Closed`].
    pub async fn connect(opts: ConnectOptions) -> Result<Connection, Error> {
        let deadline = opts.connect_timeout;
        tokio::time::timeout(deadline, Connection::connect_now(opts))
            .await
            .map_err(|_| Error::Timeout)?
    }

    async fn connect_now(opts: ConnectOptions) -> Result<Connection, Error> {
        let url = opts.request_url();
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::Url(format!("{url}: {e}")))?;
        match request.uri().scheme_str() {
            Some("ws") => {}
            Some("wss") => {
                return Err(Error::Url(format!(
                    "{}: wss:// needs TLS, which this client does not speak; use the node's ws:// address",
                    opts.url
                )));
            }
            _ => return Err(Error::Url(format!("{}: not a ws:// URL", opts.url))),
        }
        let headers = request.headers_mut();
        if let (Some(token), TokenIn::Bearer) = (&opts.token, opts.token_in) {
            headers.insert("authorization", header_value(&format!("Bearer {token}"))?);
        }
        if let Some(origin) = &opts.origin {
            headers.insert("origin", header_value(origin)?);
        }
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| Error::Url(format!("header name {name:?}: {e}")))?;
            headers.append(name, header_value(value)?);
        }

        let uri = request.uri();
        let host = uri
            .host()
            .ok_or_else(|| Error::Url(format!("{}: no host", opts.url)))?;
        // `[::1]` comes with its brackets; the resolver wants them off.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(80);
        let mut addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
        let addr = match opts.local_addr {
            // A source address can only reach a destination of its own family.
            Some(local) => addrs.find(|a| a.is_ipv4() == local.is_ipv4()),
            None => addrs.next(),
        }
        .ok_or_else(|| Error::Url(format!("{host} resolves to no usable address")))?;

        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = opts.local_addr {
            socket.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        let local = stream.local_addr()?;
        let peer = stream.peer_addr()?;

        let max = opts.max_message_size.unwrap_or(DEFAULT_MAX_MESSAGE_SIZE);
        // A small read buffer: a load generator holds tens of thousands of these, and
        // tungstenite's 128 KiB default would dominate its memory.
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0)
            .max_message_size(Some(max))
            .max_frame_size(Some(max));
        let (ws, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
        Ok(Connection {
            ws,
            buffered: VecDeque::new(),
            next_id: 1,
            closed: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            local,
            peer,
        })
    }

    /// The local (source) address of the socket.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The server's address.
    pub fn peer_addr(&self) -> SocketAddr {
        self.peer
    }

    /// Whether the close has been read (further reads return [`Error::Closed`], though
    /// frames buffered by `request` are still returned first).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Removes and returns the close that `request` kept for `recv`, if any (the
    /// reconnecting client uses it to tell why a connection ended during a replay).
    pub(crate) fn take_buffered_close(&mut self) -> Option<(u16, String)> {
        let pos = self
            .buffered
            .iter()
            .position(|f| matches!(f, Incoming::Closed { .. }))?;
        match self.buffered.remove(pos) {
            Some(Incoming::Closed { code, reason }) => Some((code, reason)),
            _ => None,
        }
    }

    /// Sets how long [`Connection::request`] waits for its reply.
    pub fn set_request_timeout(&mut self, timeout: Duration) {
        self.request_timeout = timeout;
    }

    /// The next frame from the server: first any frames [`Connection::request`] buffered,
    /// then from the socket. Cancel-safe: dropping the future loses no frame.
    pub async fn recv(&mut self) -> Result<Incoming, Error> {
        if let Some(frame) = self.buffered.pop_front() {
            return Ok(frame);
        }
        self.read().await
    }

    /// [`Connection::recv`] with a deadline: [`Error::Timeout`] when nothing arrived.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Result<Incoming, Error> {
        tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// Reads one frame from the socket, skipping control frames.
    async fn read(&mut self) -> Result<Incoming, Error> {
        if self.closed {
            return Err(Error::Closed);
        }
        loop {
            // The connection's end, and what this side still owes the server.
            let (code, reason, reply) = match self.ws.next().await {
                Some(Ok(Message::Text(t))) => return Ok(Incoming::Text(t.as_str().to_owned())),
                Some(Ok(Message::Binary(b))) => return Ok(Incoming::Binary(b)),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.as_str().to_owned()))
                        .unwrap_or((1005, String::new()));
                    // tungstenite queued the close reply: flush it.
                    (code, reason, None)
                }
                Some(Err(tungstenite::Error::Capacity(e))) => {
                    let close = CloseFrame {
                        code: CloseCode::Size,
                        reason: "message too big".into(),
                    };
                    (1009, e.to_string(), Some(close))
                }
                Some(Err(e)) => return Ok(self.ended(1006, e.to_string())),
                None => {
                    let reason = "the connection ended without a close frame".to_owned();
                    return Ok(self.ended(1006, reason));
                }
            };
            let closed = self.ended(code, reason);
            // Kept in the buffer while the close handshake is finished (bounded), so that
            // a caller that drops this future still finds the close on its next `recv`.
            self.buffered.push_back(closed);
            let finish = async {
                match reply {
                    Some(frame) => self.ws.close(Some(frame)).await,
                    None => self.ws.flush().await,
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), finish).await;
            return self.buffered.pop_back().ok_or(Error::Closed);
        }
    }

    /// Marks the connection closed; the close to report.
    fn ended(&mut self, code: u16, reason: String) -> Incoming {
        self.closed = true;
        Incoming::Closed { code, reason }
    }

    /// Sends a text frame as given (it need not be an op).
    pub async fn send_text(&mut self, text: &str) -> Result<(), Error> {
        self.ws.send(Message::text(text)).await.map_err(send_error)
    }

    /// Sends a binary frame as given.
    pub async fn send_binary(&mut self, bytes: impl Into<Bytes>) -> Result<(), Error> {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(send_error)
    }

    /// Sends an op without waiting for its reply (the reply arrives through `recv`).
    pub async fn send_op(&mut self, op: &ClientOp) -> Result<(), Error> {
        let text = serde_json::to_string(op)?;
        self.send_text(&text).await
    }

    /// Sends an op and waits (see [`Connection::set_request_timeout`]) for the reply that
    /// carries its id. An op without an id gets the next free one; an op with an id keeps
    /// it (and later assigned ids stay above it). Every other frame read meanwhile is
    /// kept for `recv`, in order. An error reply is returned as `Ok(ServerReply::Error)`.
    /// If the connection closes first, the close is kept for `recv` too, and this returns
    /// [`Error::Closed`].
    pub async fn request(&mut self, mut op: ClientOp) -> Result<ServerReply, Error> {
        let id = match op.id() {
            Some(id) => id,
            None => {
                let id = self.next_id;
                *op.id_mut() = Some(id);
                id
            }
        };
        self.next_id = self.next_id.max(id.saturating_add(1));
        // A reply that arrived while an earlier request waited (an id reused by the caller).
        if let Some(pos) = self
            .buffered
            .iter()
            .position(|f| parse_reply(f).is_some_and(|r| reply_id(&r) == Some(id)))
            && let Some(frame) = self.buffered.remove(pos)
            && let Some(reply) = parse_reply(&frame)
        {
            return Ok(reply);
        }
        self.send_op(&op).await?;
        let timeout = self.request_timeout;
        let wait = async {
            loop {
                let frame = self.read().await?;
                if let Some(reply) = parse_reply(&frame)
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
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// `request(Subscribe { group })`.
    pub async fn subscribe(&mut self, group: &str) -> Result<ServerReply, Error> {
        self.request(ClientOp::Subscribe {
            group: group.to_owned(),
            since: None,
            id: None,
        })
        .await
    }

    /// `request(Unsubscribe { group })`.
    pub async fn unsubscribe(&mut self, group: &str) -> Result<ServerReply, Error> {
        self.request(ClientOp::Unsubscribe {
            group: group.to_owned(),
            id: None,
        })
        .await
    }

    /// `request(Ping)`: a round trip through the server's op handling.
    pub async fn ping(&mut self) -> Result<ServerReply, Error> {
        self.request(ClientOp::Ping { id: None }).await
    }

    /// Closes normally (1000) and waits briefly (2 s at most) for the server's close
    /// reply, so that both sides see a complete closing handshake.
    pub async fn close(self) -> Result<(), Error> {
        self.close_with(1000, "").await
    }

    /// Closes with `code` and `reason` (for tests of how the server takes a client's
    /// close), then waits as [`Connection::close`] does.
    pub async fn close_with(mut self, code: u16, reason: &str) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        match self.ws.close(Some(frame)).await.map_err(send_error) {
            Ok(()) | Err(Error::Closed) => {}
            Err(e) => return Err(e),
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        Ok(())
    }
}

fn header_value(value: &str) -> Result<HeaderValue, Error> {
    HeaderValue::from_str(value).map_err(|e| Error::Url(format!("header value {value:?}: {e}")))
}

/// A write after the close (either side's) is [`Error::Closed`], not a WebSocket error.
fn send_error(e: tungstenite::Error) -> Error {
    use tungstenite::error::ProtocolError;
    match e {
        tungstenite::Error::ConnectionClosed
        | tungstenite::Error::AlreadyClosed
        | tungstenite::Error::Protocol(ProtocolError::SendAfterClosing) => Error::Closed,
        other => other.into(),
    }
}

fn parse_reply(frame: &Incoming) -> Option<ServerReply> {
    match frame {
        Incoming::Text(text) => serde_json::from_str(text).ok(),
        _ => None,
    }
}

/// The correlation id a reply carries back, if any.
pub fn reply_id(reply: &ServerReply) -> Option<u64> {
    match reply {
        ServerReply::Subscribed { id, .. }
        | ServerReply::Unsubscribed { id, .. }
        | ServerReply::Presence { id, .. }
        | ServerReply::PresenceSubscribed { id, .. }
        | ServerReply::PresenceUnsubscribed { id, .. }
        | ServerReply::Pong { id }
        | ServerReply::Refreshed { id, .. }
        | ServerReply::Error { id, .. } => *id,
        ServerReply::Message { .. } | ServerReply::PresenceEvent { .. } => None,
    }
}

#[cfg(test)]
mod tests;
