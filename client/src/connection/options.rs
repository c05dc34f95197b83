//! Where and how to connect: [`ConnectOptions`], the token's place ([`TokenIn`]) and
//! the defaults.

use std::net::IpAddr;
use std::time::Duration;

/// The largest message accepted from the server unless [`ConnectOptions::max_message_size`]
/// says otherwise (tungstenite's own default).
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 20;

/// How long [`Connection::connect`] may take (TCP connect plus upgrade) by default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long [`Connection::request`] waits for its reply by default.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the token goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TokenIn {
    /// `?token=...` appended to the URL, URL-encoded (what browsers do: they cannot set
    /// headers on a WebSocket).
    #[default]
    Query,
    /// An `Authorization: Bearer ...` header (mobile apps, server-side clients).
    Bearer,
}

/// How to connect. Build it with struct update syntax over `Default`, or with
/// [`ConnectOptions::new`] and the builder methods:
///
/// ```
/// use switchboard_client::{ConnectOptions, TokenIn};
/// let opts = ConnectOptions::new("ws://127.0.0.1:8001/ws/notifications/")
///     .token("eyJ...")
///     .token_in(TokenIn::Bearer)
///     .origin("https://app.example");
/// assert_eq!(opts.request_url(), "ws://127.0.0.1:8001/ws/notifications/");
/// ```
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// `ws://host:port/path`, with or without a query string of its own.
    pub url: String,
    /// The JWT, if any (without one the node closes with 4001).
    pub token: Option<String>,
    /// Where the token goes.
    pub token_in: TokenIn,
    /// An `Origin` header, as a browser would send.
    pub origin: Option<String>,
    /// Bind this source address before connecting. One source address has about 28 000
    /// ephemeral ports; spreading a load over 127.0.0.1..127.0.0.N allows N times more.
    pub local_addr: Option<IpAddr>,
    /// Largest message (and frame) accepted from the server; `None` means
    /// [`DEFAULT_MAX_MESSAGE_SIZE`]. A larger one ends the connection with 1009.
    pub max_message_size: Option<usize>,
    /// Deadline for the TCP connect plus the upgrade.
    pub connect_timeout: Duration,
    /// More request headers (name, value), sent as given.
    pub headers: Vec<(String, String)>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            url: String::new(),
            token: None,
            token_in: TokenIn::Query,
            origin: None,
            local_addr: None,
            max_message_size: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            headers: Vec::new(),
        }
    }
}

impl ConnectOptions {
    /// Options for `url` with no token and every other setting at its default.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectOptions {
            url: url.into(),
            ..ConnectOptions::default()
        }
    }

    /// Sets the token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets where the token goes.
    pub fn token_in(mut self, token_in: TokenIn) -> Self {
        self.token_in = token_in;
        self
    }

    /// Sets the `Origin` header.
    pub fn origin(mut self, origin: impl Into<String>) -> Self {
        self.origin = Some(origin.into());
        self
    }

    /// Sets the source address to bind.
    pub fn local_addr(mut self, addr: IpAddr) -> Self {
        self.local_addr = Some(addr);
        self
    }

    /// Sets the largest message accepted from the server.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = Some(bytes);
        self
    }

    /// Sets the deadline for connect plus upgrade.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Adds a request header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The URL actually requested: with `token=` appended (after `?`, or `&` when the URL
    /// already has a query), URL-encoded, when the token goes in the query.
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

/// Percent-encodes everything but RFC 3986's unreserved characters (JWTs are already
/// base64url with dots, so they pass unchanged; anything else is made safe).
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 15)]));
            }
        }
    }
    out
}
