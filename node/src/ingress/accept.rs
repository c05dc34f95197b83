//! What every listener of the node does the same way (the WebSocket port, the RESP port,
//! the admin port): wait for a slot, accept until stopped, back off after a failed
//! accept instead of spinning (`EMFILE` and friends), and complete a TLS handshake
//! within the time a request head is given. Each listener keeps its own policy when it
//! is full (wait for a slot, or answer and close).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::http::HEAD_TIMEOUT;
use crate::tls::ServerTls;

/// Pause after a failed accept, instead of spinning.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A listener and what stops it.
#[derive(Debug)]
pub struct Listener {
    listener: TcpListener,
    stop: CancellationToken,
    /// Which port, for the log (`WebSocket`, `RESP`, `admin`).
    port: &'static str,
}

impl Listener {
    pub fn new(listener: TcpListener, stop: CancellationToken, port: &'static str) -> Self {
        Listener {
            listener,
            stop,
            port,
        }
    }

    /// The next connection (with `TCP_NODELAY`), or `None` once stopped. A failed accept
    /// is logged and retried after [`ACCEPT_BACKOFF`].
    pub async fn accept(&self) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                _ = self.stop.cancelled() => return None,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        return Some((stream, peer));
                    }
                    Err(e) => {
                        warn!(error = %e, port = self.port, "accept failed");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                    }
                },
            }
        }
    }

    /// A slot of `slots`, waiting for one; `None` once stopped (or `slots` closed).
    pub async fn slot(&self, slots: &Arc<Semaphore>) -> Option<OwnedSemaphorePermit> {
        tokio::select! {
            _ = self.stop.cancelled() => None,
            permit = slots.clone().acquire_owned() => permit.ok(),
        }
    }
}

/// Why a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("TLS handshake failed: {0}")]
    Failed(#[from] std::io::Error),
    #[error("TLS handshake not done within {HEAD_TIMEOUT:?}")]
    TimedOut,
}

/// The server side of a TLS handshake on `stream`, within [`HEAD_TIMEOUT`] (it counts
/// against the head's time).
pub async fn tls_handshake(
    tls: &ServerTls,
    stream: TcpStream,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    match tokio::time::timeout(HEAD_TIMEOUT, tls.acceptor().accept(stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(HandshakeError::Failed(e)),
        Err(_) => Err(HandshakeError::TimedOut),
    }
}
