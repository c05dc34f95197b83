//! The Redis-protocol ingest shim: existing publishers (`redis-cli`, redis-py,
//! channels_redis) connect here as if to Redis.
//!
//! Parts:
//! - [`command`]: the one table of commands (name, arity, flags) and parsing.
//! - [`session`]: a connection's state and what a command does to it (sans-IO, tested
//!   against a fake publisher).
//! - [`session::cmd`]: the commands by family; [`channels`]: what channels_redis sends.
//! - [`guard`]: the throttle on failed `AUTH`s and the cap on unauthenticated
//!   connections per address.
//! - [`connection`]: a connection's decisions around its session (decoder bounds by
//!   `AUTH` state, the `AUTH` and idle deadlines, the failure limit, how it closes),
//!   sans-IO and tested without a socket or a clock.
//! - This module: the listener, and one task per connection that reads into a buffer,
//!   has its [`Connection`] decode every complete frame (the proto crate's decoder),
//!   answers each command in order into one output buffer, and writes that buffer once
//!   per read: pipelining
//!   costs one syscall per batch. Output is bounded because it is flushed before more
//!   input is read.
//!
//! What a connection can make the node hold is bounded in bytes: a command is at most
//! `--max-command-bytes` (refused on its headers, before the bytes arrive), and before
//! `AUTH` on a password node at most [`PRE_AUTH_MAX_COMMAND`] bytes in at most
//! [`PRE_AUTH_MAX_ARGS`] arguments; a MULTI queue at most `session::MAX_QUEUED_BYTES`.
//! A connection that has not authenticated within `--resp-auth-timeout` is closed, and
//! so is one silent for `--resp-idle-timeout` when set.
//!
//! What the commands mean here is in docs/protocol.md; where Switchboard has no
//! equivalent, the answer is the one Redis gives, or a Redis-style error naming the
//! command, never a hang.

pub mod channels;
pub mod command;
pub mod connection;
pub mod guard;
pub mod pyjson;
pub mod session;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

pub use connection::{
    Auth, Bounds, Close, Connection, MAX_AUTH_FAILURES, PRE_AUTH_MAX_ARGS, PRE_AUTH_MAX_BULK,
    PRE_AUTH_MAX_COMMAND, Poll,
};
pub use session::{Next, Session, Shim};

use super::accept::Listener;
use crate::metrics::Metrics;
use crate::router::Publish;
use crate::sync::lock;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// How long, and how many bytes, a closing connection reads and drops (see `linger`).
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024 * 1024;

/// Keeps `switchboard_resp_connections` right however the task ends.
struct Open(Arc<Metrics>);

impl Open {
    fn new(metrics: Arc<Metrics>) -> Self {
        metrics.resp_connections.inc();
        Open(metrics)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.resp_connections.dec();
    }
}

/// A connection's place among the unauthenticated ones, given back when it
/// authenticates or closes.
struct Waiting<'a> {
    env: &'a Shim,
    ticket: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.env.unauthenticated).leave(self.ticket);
    }
}

/// Accepts RESP connections until `stop` is cancelled. Over `max_resp_connections`, a
/// client is answered Redis's `max number of clients reached` and closed.
pub async fn serve(
    listener: TcpListener,
    env: Arc<Shim>,
    publish: Arc<dyn Publish>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let sockets = Arc::new(Semaphore::new(env.settings.max_connections));
    let mut next_id: u64 = 0;
    let listener = Listener::new(listener, stop.clone(), "RESP");
    while let Some((mut stream, peer)) = listener.accept().await {
        let Ok(permit) = sockets.clone().try_acquire_owned() else {
            tokio::spawn(async move {
                let _ = stream
                    .write_all(b"-ERR max number of clients reached\r\n")
                    .await;
            });
            continue;
        };
        next_id += 1;
        let session = Session::new(next_id, env.clone());
        let (publish, stop) = (publish.clone(), stop.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let _open = Open::new(session.env.metrics.clone());
            if let Err(e) = run(session, stream, peer.ip(), &*publish, stop).await {
                debug!(%peer, error = %e, "RESP connection ended with an error");
            }
        });
    }
}

/// Serves one connection until it closes, `QUIT`s, sends a malformed stream, fails to
/// authenticate in time, or `stop`. The decisions are [`Connection`]'s; this moves the
/// bytes, keeps the connection's place among the unauthenticated ones and asks the
/// address's `AUTH` throttle.
async fn run(
    mut session: Session,
    mut stream: TcpStream,
    ip: IpAddr,
    publish: &dyn Publish,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let env = session.env.clone();
    let mut conn = Connection::new(
        Instant::now(),
        session.authenticated(),
        Bounds::of(&env),
        env.metrics.clone(),
    );
    // Held while unauthenticated: the place is given back when the connection
    // authenticates (set to `None` below) or ends.
    let mut _waiting = None;
    // Cancelled when this connection, still unauthenticated, must make room for a newer
    // one (past the unauthenticated share of the slots).
    let evicted = CancellationToken::new();
    if !conn.authenticated() {
        let entered = lock(&env.unauthenticated).enter(ip, evicted.clone());
        let Some((ticket, oldest)) = entered else {
            env.metrics.resp_auth_failures.inc();
            stream
                .write_all(b"-ERR too many unauthenticated connections from this address\r\n")
                .await?;
            return Ok(());
        };
        if let Some(oldest) = oldest {
            oldest.cancel();
        }
        _waiting = Some(Waiting { env: &env, ticket });
    }
    let multi_threaded = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    loop {
        conn.reading(Instant::now());
        input.reserve(READ_CHUNK);
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            _ = evicted.cancelled(), if !conn.authenticated() => conn.handle_evicted(session.version()),
            n = stream.read_buf(&mut input) => {
                if n? == 0 {
                    return Ok(());
                }
            }
            _ = sleep_until(conn.poll_timeout()) => conn.handle_timeout(Instant::now(), session.version()),
        }
        while let Poll::Command(args) = conn.poll_command(&mut input, session.version()) {
            let slow = command::lookup(&args[0]).is_some_and(|s| s.slow);
            let (reply, next) = if slow && multi_threaded {
                // Introspection whose cost grows with the groups: this worker hands its
                // other tasks over while it runs.
                tokio::task::block_in_place(|| {
                    tokio::runtime::Handle::current().block_on(session.handle(args, publish))
                })
            } else {
                session.handle(args, publish).await
            };
            let auth = Auth {
                authenticated: session.authenticated(),
                failures: session.auth_failures(),
            };
            let after = conn.handle_reply(Instant::now(), &reply, next, auth, session.version());
            if after.authenticated {
                _waiting = None;
            }
            if after.failed {
                let now = std::time::Instant::now();
                conn.throttle(lock(&env.throttle).on_failure(ip, now));
            }
        }
        if let Some(out) = conn.transmit() {
            stream.write_all(out).await?;
            conn.sent();
        }
        if let Some(close) = conn.closing() {
            let _ = stream.shutdown().await;
            if close == Close::Linger {
                linger(&mut stream, &mut input).await;
            }
            return Ok(());
        }
        // Each failed AUTH costs its address time: the connection waits this long before
        // it is read again (see `guard::AuthThrottle`).
        let wait = conn.take_wait();
        if !wait.is_zero() {
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// After closing its side, reads and drops what the client still sends (a command it was
/// sending when the node refused it: an oversized payload, say) until the client closes,
/// within [`LINGER`] and [`LINGER_BYTES`]: closing with unread bytes would reset the
/// connection, and the client, still writing, would get a broken pipe instead of the
/// error written to it.
async fn linger(stream: &mut TcpStream, buf: &mut BytesMut) {
    let deadline = Instant::now() + LINGER;
    let mut read = 0;
    while read < LINGER_BYTES {
        buf.clear();
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => read += n,
            _ => return,
        }
    }
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
