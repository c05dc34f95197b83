//! The decisions of one RESP connection around its [`Session`](super::Session), with no
//! socket and no clock: which decoder bounds apply (tight before `AUTH` on a password
//! node, wide after, tight again after `RESET`), when its one timer fires (the `AUTH`
//! deadline, or the idle timeout) and what that does, what a malformed stream, `QUIT`, a
//! failed `AUTH` or too many of them, or making room for a newer unauthenticated
//! connection write and how the connection then closes.
//!
//! Call order, as quinn-proto's `Connection`: the driver (`super::run`) calls
//! [`Connection::reading`] each time it reads again, reads into its buffer, takes each
//! command from
//! [`Connection::poll_command`], has the session answer it and hands the answer to
//! [`Connection::handle_reply`] (then, for a failed `AUTH`, the address's throttle wait
//! to [`Connection::throttle`]); it writes [`Connection::transmit`], closes as
//! [`Connection::closing`] says, waits [`Connection::take_wait`], and sleeps until
//! [`Connection::poll_timeout`] ([`Connection::handle_timeout`] when it fires,
//! [`Connection::handle_evicted`] when the connection must make room).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchboard_proto::resp::{Decoder, Frame, Limits, Version};
use tokio::time::Instant;

use super::Shim;
use super::session::Next;
use crate::metrics::Metrics;

/// The output buffer is given back once it has grown past this.
pub const OUT_KEEP: usize = 1024 * 1024;
/// Smallest bulk-string limit, whatever `--max-payload` says: clients send longer
/// arguments than payloads (channels_redis's scripts).
pub const MIN_BULK: usize = 64 * 1024;
/// Before `AUTH` on a password node, as Redis limits unauthenticated clients: at most
/// this many arguments...
pub const PRE_AUTH_MAX_ARGS: usize = 10;
/// ...of at most this many bytes each...
pub const PRE_AUTH_MAX_BULK: usize = 16 * 1024;
/// ...in a command of at most this many bytes.
pub const PRE_AUTH_MAX_COMMAND: usize = 64 * 1024;
/// Failed `AUTH`s after which a connection is closed.
pub const MAX_AUTH_FAILURES: u32 = 10;

/// What a connection is bound by, from the shim's settings.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// The decoder limits once authenticated.
    pub limits: Limits,
    /// How long an unauthenticated connection has to `AUTH`.
    pub auth_timeout: Duration,
    /// How long an authenticated connection may stay silent (none: for ever).
    pub idle_timeout: Option<Duration>,
}

impl Bounds {
    pub fn of(env: &Shim) -> Self {
        Bounds {
            limits: Limits {
                max_bulk_len: env.max_payload.max(MIN_BULK),
                max_frame_len: env.settings.max_command_bytes,
                ..Limits::default()
            },
            auth_timeout: env.settings.auth_timeout,
            idle_timeout: env.settings.idle_timeout,
        }
    }
}

/// The decoder limits before `AUTH`.
pub fn pre_auth_limits() -> Limits {
    Limits {
        max_bulk_len: PRE_AUTH_MAX_BULK,
        max_array_len: PRE_AUTH_MAX_ARGS,
        max_frame_len: PRE_AUTH_MAX_COMMAND,
        max_inline_len: PRE_AUTH_MAX_COMMAND,
        ..Limits::default()
    }
}

/// How the connection closes, once what is in [`Connection::transmit`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Close {
    /// Shut down, then read and drop what the client still sends for a moment: it may be
    /// in the middle of a command the node refused, and closing with unread bytes would
    /// reset the connection before it reads why.
    Linger,
    /// Shut down at once (a timeout, or room made for a newer connection).
    Now,
}

/// What [`Connection::poll_command`] found in the bytes read so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// A command's arguments, its name first (never empty).
    Command(Vec<Bytes>),
    /// Nothing complete: read more.
    NeedInput,
    /// The stream is malformed: the error is in the output, the connection closes.
    Close(Close),
}

/// What the session says of itself after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Auth {
    /// Whether it may run commands.
    pub authenticated: bool,
    /// Failed `AUTH`s on this connection so far.
    pub failures: u32,
}

/// What a reply asks of the driver.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct After {
    /// The connection just authenticated: its place among the unauthenticated
    /// connections is given back.
    pub authenticated: bool,
    /// An `AUTH` failed: the driver asks the address's throttle how long to wait and
    /// tells [`Connection::throttle`].
    pub failed: bool,
}

/// See the module header.
#[derive(Debug)]
pub struct Connection {
    bounds: Bounds,
    metrics: Arc<Metrics>,
    decoder: Decoder,
    auth: Auth,
    /// When an unauthenticated connection is closed.
    auth_deadline: Instant,
    /// When a silent authenticated connection is closed.
    idle_deadline: Option<Instant>,
    out: Vec<u8>,
    /// How long to wait before reading again (failed `AUTH`s of this read).
    wait: Duration,
    closing: Option<Close>,
}

impl Connection {
    /// A connection accepted at `now`, authenticated already when no password is set.
    pub fn new(now: Instant, authenticated: bool, bounds: Bounds, metrics: Arc<Metrics>) -> Self {
        Connection {
            decoder: Decoder::new(if authenticated {
                bounds.limits
            } else {
                pre_auth_limits()
            }),
            auth: Auth {
                authenticated,
                failures: 0,
            },
            auth_deadline: now + bounds.auth_timeout,
            idle_deadline: bounds.idle_timeout.map(|t| now + t),
            bounds,
            metrics,
            out: Vec::with_capacity(1024),
            wait: Duration::ZERO,
            closing: None,
        }
    }

    /// Whether the connection may run commands.
    pub fn authenticated(&self) -> bool {
        self.auth.authenticated
    }

    /// The driver reads again at `now`, every reply of the last read written and any
    /// throttle wait over: the idle timeout runs from here (a command that took long,
    /// a history publish retrying, say, does not count as silence).
    pub fn reading(&mut self, now: Instant) {
        self.idle_deadline = self.bounds.idle_timeout.map(|t| now + t);
    }

    /// The next command in `input` (the bytes read so far; what it takes is removed).
    /// Replies are encoded in `version`.
    pub fn poll_command(&mut self, input: &mut BytesMut, version: Version) -> Poll {
        if self.closing.is_some() {
            return Poll::NeedInput;
        }
        loop {
            let frame = match self.decoder.decode(input) {
                Ok(Some(frame)) => frame,
                Ok(None) => return Poll::NeedInput,
                Err(e) => {
                    self.metrics.resp_protocol_errors.inc();
                    return self.refuse(
                        &format!("ERR Protocol error: {e}"),
                        version,
                        Close::Linger,
                    );
                }
            };
            self.metrics.resp_commands.inc();
            match frame.into_args() {
                Ok(args) if !args.is_empty() => return Poll::Command(args),
                Ok(_) => continue, // an empty inline line: Redis ignores it
                Err(e) => {
                    self.metrics.resp_protocol_errors.inc();
                    self.metrics.resp_errors.inc();
                    return self.refuse(
                        &format!("ERR Protocol error: {e}"),
                        version,
                        Close::Linger,
                    );
                }
            }
        }
    }

    /// The session's `reply` to the last command, `next` as it says, and its `auth`
    /// after it, at `now`; `version` is the session's after the command.
    pub fn handle_reply(
        &mut self,
        now: Instant,
        reply: &Frame,
        next: Next,
        auth: Auth,
        version: Version,
    ) -> After {
        if matches!(reply, Frame::Error(_)) {
            self.metrics.resp_errors.inc();
        }
        reply.encode(version, &mut self.out);
        let before = std::mem::replace(&mut self.auth, auth);
        let mut after = After {
            failed: auth.failures > before.failures,
            ..After::default()
        };
        match (before.authenticated, auth.authenticated) {
            (false, true) => {
                self.decoder.set_limits(self.bounds.limits);
                after.authenticated = true;
            }
            (true, false) => {
                // RESET on a password node: back to the pre-AUTH bounds and deadline.
                self.decoder.set_limits(pre_auth_limits());
                self.auth_deadline = now + self.bounds.auth_timeout;
            }
            _ => {}
        }
        if next == Next::Close {
            self.closing = Some(Close::Linger);
        } else if auth.failures >= MAX_AUTH_FAILURES {
            self.refuse(
                "ERR too many failed AUTH attempts; closing",
                version,
                Close::Linger,
            );
        }
        after
    }

    /// A failed `AUTH` costs its address `wait` before the connection is read again
    /// (the longest of this read's failures).
    pub fn throttle(&mut self, wait: Duration) {
        self.wait = self.wait.max(wait);
    }

    /// How long to wait before reading again; the wait is then spent.
    pub fn take_wait(&mut self) -> Duration {
        std::mem::take(&mut self.wait)
    }

    /// When [`Connection::handle_timeout`] is due: the `AUTH` deadline while
    /// unauthenticated, else the idle deadline if there is one.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.auth.authenticated {
            self.idle_deadline
        } else {
            Some(self.auth_deadline)
        }
    }

    /// The timer fired at `now`: past the deadline, the connection closes (an
    /// unauthenticated one is told why, and it counts as a failed `AUTH`).
    pub fn handle_timeout(&mut self, now: Instant, version: Version) {
        if self.poll_timeout().is_none_or(|at| now < at) {
            return;
        }
        if self.auth.authenticated {
            self.closing = Some(Close::Now);
        } else {
            self.metrics.resp_auth_failures.inc();
            self.refuse(
                "ERR authentication timeout: send AUTH first",
                version,
                Close::Now,
            );
        }
    }

    /// The connection, still unauthenticated, must make room for a newer one (past the
    /// unauthenticated share of the slots): it is told and closed.
    pub fn handle_evicted(&mut self, version: Version) {
        if self.auth.authenticated {
            return;
        }
        self.metrics.resp_auth_failures.inc();
        self.refuse(
            "ERR too many unauthenticated connections: the oldest is closed to make room; send AUTH first",
            version,
            Close::Now,
        );
    }

    /// What is to be written, if anything.
    pub fn transmit(&self) -> Option<&[u8]> {
        (!self.out.is_empty()).then_some(&self.out[..])
    }

    /// What [`Connection::transmit`] gave is written.
    pub fn sent(&mut self) {
        self.out.clear();
        if self.out.capacity() > OUT_KEEP {
            self.out.shrink_to(1024);
        }
    }

    /// How the connection closes once the output is written, if it does.
    pub fn closing(&self) -> Option<Close> {
        self.closing
    }

    /// Writes `error` and closes as `close` says (a close already decided stands).
    fn refuse(&mut self, error: &str, version: Version, close: Close) -> Poll {
        Frame::Error(error.into()).encode(version, &mut self.out);
        Poll::Close(*self.closing.get_or_insert(close))
    }
}

#[cfg(test)]
mod tests;
