//! The one error type of the client library.
//!
//! Every fallible call in the crate returns [`Error`]. A server that closes a WebSocket is
//! not an error: [`crate::Connection::recv`] reports it as [`crate::Incoming::Closed`], and
//! only calls made after that return [`Error::Closed`].

/// What went wrong, and where to look.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL (or a header built from the options) is not usable: not `ws://`, no host,
    /// or a token or origin with characters a header cannot carry.
    #[error("bad URL or header: {0}")]
    Url(String),
    /// A socket operation failed: connect, bind of the source address, read or write.
    /// "Too many open files" means the open-file limit (`ulimit -n`) is too low for the
    /// number of connections.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The WebSocket layer failed (handshake or framing).
    #[error("WebSocket error: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The server answered the WebSocket upgrade with an HTTP error instead of switching
    /// protocols (a proxy refusing, a wrong path, a load balancer with no backend).
    #[error("the server refused the upgrade with HTTP {status}: {body}")]
    Http {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, if any (for the reason).
        body: String,
    },
    /// A deadline passed: connect, `recv_timeout`, a request's reply, a RESP reply.
    #[error("timed out")]
    Timeout,
    /// The connection is closed: the server closed it earlier, or it was closed here.
    #[error("the connection is closed")]
    Closed,
    /// The server refused an op (an error reply, or a close code that says retrying
    /// will not help); the text is the server's reason.
    #[error("refused by the server: {0}")]
    Refused(String),
    /// An op could not be serialised, or a reply could not be understood.
    #[error("bad JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A RESP server sent bytes that are not a RESP2 reply this client understands.
    #[error("RESP protocol error: {0}")]
    Protocol(String),
    /// A RESP server answered a command with an error reply (`-ERR ...`).
    #[error("the RESP server answered with an error: {0}")]
    Server(String),
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::Error as WsError;
        match e {
            WsError::Http(response) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(|b| String::from_utf8_lossy(&b[..b.len().min(200)]).into_owned())
                    .unwrap_or_default();
                Error::Http {
                    status: response.status().as_u16(),
                    body,
                }
            }
            WsError::Io(e) => Error::Io(e),
            other => Error::Ws(Box::new(other)),
        }
    }
}
