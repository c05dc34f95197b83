//! The Redis-protocol ingest shim: existing publishers (`redis-cli`, redis-py,
//! channels_redis) connect here as if to Redis.
//!
//! Parts:
//! - [`command`]: the one table of commands (name, arity, flags) and parsing.
//! - [`session`]: a connection's state and what a command does to it (sans-IO, tested
//!   against a fake publisher).
//! - [`cmd`]: the commands by family; [`channels`]: what channels_redis sends.
//! - This module: the listener, and one task per connection that reads into a buffer,
//!   decodes every complete frame with the proto crate's [`Decoder`], answers each command
//!   in order into one output buffer, and writes that buffer once per read: pipelining
//!   costs one syscall per batch. Output is bounded because it is flushed before more
//!   input is read.
//!
//! What the commands mean here is in docs/protocol.md; where Switchboard has no
//! equivalent, the answer is the one Redis gives, or a Redis-style error naming the
//! command, never a hang.

pub mod channels;
pub mod cmd;
pub mod command;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use switchboard_proto::resp::{Decoder, Frame, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

pub use session::{Env, Next, Session};

use crate::router::Publish;

/// Most RESP connections at once.
pub const MAX_RESP_CONNECTIONS: usize = 10_000;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;
/// The output buffer is given back once it has grown past this.
const OUT_KEEP: usize = 1024 * 1024;
/// Smallest bulk-string limit, whatever `--max-payload` says: clients send longer
/// arguments than payloads (channels_redis's scripts).
const MIN_BULK: usize = 64 * 1024;
/// Pause after a failed accept (EMFILE and friends), instead of spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Accepts RESP connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    env: Arc<Env>,
    publish: Arc<dyn Publish>,
    tracker: TaskTracker,
    stop: CancellationToken,
) {
    let sockets = Arc::new(Semaphore::new(MAX_RESP_CONNECTIONS));
    let mut next_id: u64 = 0;
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = sockets.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "accept failed on the RESP port");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let session = Session::new(next_id, env.clone());
        let (publish, stop) = (publish.clone(), stop.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            let metrics = session.env.metrics.clone();
            metrics.resp_connections.inc();
            let result = run(session, stream, &*publish, stop).await;
            metrics.resp_connections.dec();
            if let Err(e) = result {
                debug!(%peer, error = %e, "RESP connection ended with an error");
            }
        });
    }
}

/// Serves one connection until it closes, `QUIT`s, sends a malformed stream, or `stop`.
async fn run(
    mut session: Session,
    mut stream: TcpStream,
    publish: &dyn Publish,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let env = session.env.clone();
    let metrics = &env.metrics;
    let limits = Limits {
        max_bulk_len: env.config.max_payload.max(MIN_BULK),
        ..Limits::default()
    };
    let mut decoder = Decoder::new(limits);
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut out = Vec::with_capacity(1024);
    loop {
        input.reserve(READ_CHUNK);
        let n = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            n = stream.read_buf(&mut input) => n?,
        };
        if n == 0 {
            return Ok(());
        }
        let mut close = false;
        loop {
            let frame = match decoder.decode(&mut input) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    metrics.resp_protocol_errors.inc();
                    Frame::Error(format!("ERR Protocol error: {e}"))
                        .encode(session.version(), &mut out);
                    close = true;
                    break;
                }
            };
            metrics.resp_commands.inc();
            let args = match frame.into_args() {
                Ok(args) if !args.is_empty() => args,
                Ok(_) => continue, // an empty inline line: Redis ignores it
                Err(e) => {
                    metrics.resp_protocol_errors.inc();
                    metrics.resp_errors.inc();
                    Frame::Error(format!("ERR Protocol error: {e}"))
                        .encode(session.version(), &mut out);
                    close = true;
                    break;
                }
            };
            let (reply, next) = session.handle(args, publish);
            if matches!(reply, Frame::Error(_)) {
                metrics.resp_errors.inc();
            }
            reply.encode(session.version(), &mut out);
            if next == Next::Close {
                close = true;
                break;
            }
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            if out.capacity() > OUT_KEEP {
                out.shrink_to(1024);
            }
        }
        if close {
            let _ = stream.shutdown().await;
            return Ok(());
        }
    }
}
