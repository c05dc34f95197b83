//! One RESP connection's state, and what a command does to it: the sans-IO half of the
//! shim. [`Session::handle`] takes one command's arguments and the [`Publish`] side of
//! the node and returns the reply; the connection task (`super`) only moves bytes.
//!
//! Order of checks, as Redis does them: `NOAUTH` before anything but `AUTH`, `HELLO`
//! and `QUIT`; inside `MULTI` an unknown command or a wrong arity is answered at once
//! and makes `EXEC` abort (`EXECABORT`); outside, it is just the error.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use switchboard_proto::resp::{Frame, Version};

use super::channels;
use super::command::{Command, Name, ParseError};
use super::guard::{AuthThrottle, UNAUTHENTICATED_SHARE, Unauthenticated};
use crate::config::{Config, RespSettings};
use crate::metrics::Metrics;
use crate::router::Publish;
use crate::secrets::Secrets;
use tokio_util::sync::CancellationToken;

pub mod cmd;

/// Most commands one MULTI may queue.
pub const MAX_QUEUED: usize = 10_000;
/// Most bytes (all arguments) one MULTI may queue.
pub const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;

/// The RESP shim: what every one of its sessions shares (settings, metrics, secrets, the
/// AUTH throttle and the unauthenticated connections).
#[derive(Debug)]
pub struct Shim {
    /// This node's id (`INFO`, `CLIENT`).
    pub node: u64,
    pub settings: RespSettings,
    /// The largest payload a publish may carry.
    pub max_payload: usize,
    pub metrics: Arc<Metrics>,
    pub secrets: Arc<Secrets>,
    pub started: Instant,
    /// Failed `AUTH`s per client address.
    pub throttle: Mutex<AuthThrottle>,
    /// Unauthenticated connections (per client address, and in all), each with the
    /// token that closes it when it must make room.
    pub unauthenticated: Mutex<Unauthenticated<CancellationToken>>,
}

impl Shim {
    pub fn new(config: &Config, metrics: Arc<Metrics>, secrets: Arc<Secrets>) -> Self {
        let unauthenticated = config.resp.max_connections / UNAUTHENTICATED_SHARE;
        Shim {
            node: config.node_id,
            settings: config.resp.clone(),
            max_payload: config.max_payload,
            metrics,
            secrets,
            started: Instant::now(),
            throttle: Mutex::new(AuthThrottle::default()),
            unauthenticated: Mutex::new(Unauthenticated::new(unauthenticated)),
        }
    }

    /// Whether clients must `AUTH` (a password is set now).
    pub fn needs_auth(&self) -> bool {
        self.secrets.resp_password.get().is_some()
    }
}

/// What the connection should do after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    /// Write the reply, then close (`QUIT`).
    Close,
}

/// See the module header.
#[derive(Debug)]
pub struct Session {
    pub(super) id: u64,
    pub(super) env: Arc<Shim>,
    pub(super) version: Version,
    pub(super) authenticated: bool,
    pub(super) name: Option<Bytes>,
    pub(super) lib_name: Option<Bytes>,
    pub(super) lib_ver: Option<Bytes>,
    /// Commands queued since MULTI, if a transaction is open.
    queued: Option<Vec<Command>>,
    /// Bytes of the queued commands' arguments.
    queued_bytes: usize,
    /// A command was refused while queueing: EXEC aborts.
    multi_failed: bool,
    /// Failed `AUTH`s (and `HELLO ... AUTH`s) on this connection.
    pub(super) auth_failures: u32,
}

impl Session {
    /// A new session; `id` is what `CLIENT ID` answers.
    pub fn new(id: u64, env: Arc<Shim>) -> Self {
        let authenticated = !env.needs_auth();
        Session {
            id,
            env,
            version: Version::Resp2,
            authenticated,
            name: None,
            lib_name: None,
            lib_ver: None,
            queued: None,
            queued_bytes: 0,
            multi_failed: false,
            auth_failures: 0,
        }
    }

    /// Whether the connection may run commands (authenticated, or no password is set).
    pub fn authenticated(&self) -> bool {
        self.authenticated
    }

    /// Failed `AUTH`s on this connection so far.
    pub fn auth_failures(&self) -> u32 {
        self.auth_failures
    }

    /// The protocol version replies are encoded in (after the last command).
    pub fn version(&self) -> Version {
        self.version
    }

    /// Answers one command (its arguments, the name first; not empty). It awaits only
    /// for a publish to a history group (its owner's answer).
    pub async fn handle(&mut self, args: Vec<Bytes>, publish: &dyn Publish) -> (Frame, Next) {
        let spec = args.first().and_then(|name| super::command::lookup(name));
        if !self.authenticated && !spec.is_some_and(|s| s.no_auth) {
            self.env.metrics.resp_auth_failures.inc();
            return (
                Frame::Error("NOAUTH Authentication required.".into()),
                Next::Continue,
            );
        }
        let command = Command::from_args(args);
        if self.queued.is_some() {
            return self.in_multi(command, publish).await;
        }
        match command {
            Ok(command) => self.execute(command, publish).await,
            Err(e) => (e.into_frame(), Next::Continue),
        }
    }

    /// A command while MULTI is open: queue it, or run EXEC / DISCARD.
    async fn in_multi(
        &mut self,
        command: Result<Command, ParseError>,
        publish: &dyn Publish,
    ) -> (Frame, Next) {
        let command = match command {
            Ok(command) => command,
            Err(e) => {
                self.multi_failed = true;
                return (e.into_frame(), Next::Continue);
            }
        };
        let reply = match command.name() {
            Name::Multi => Frame::Error("ERR MULTI calls can not be nested".into()),
            Name::Exec if self.multi_failed => {
                self.queued = None;
                Frame::Error("EXECABORT Transaction discarded because of previous errors.".into())
            }
            Name::Exec => {
                let queued = self.queued.take().unwrap_or_default();
                let mut replies = Vec::with_capacity(queued.len());
                let mut next = Next::Continue;
                for command in queued {
                    let (reply, after) = self.execute(command, publish).await;
                    replies.push(reply);
                    if after == Next::Close {
                        next = Next::Close;
                    }
                }
                return (Frame::Array(replies), next);
            }
            Name::Discard => {
                self.queued = None;
                Frame::ok()
            }
            Name::Watch | Name::Unwatch => Frame::ok(),
            Name::Quit => return self.execute(command, publish).await,
            _ => {
                let size: usize = command.args.iter().map(|a| a.len()).sum();
                match &mut self.queued {
                    Some(queue)
                        if queue.len() >= MAX_QUEUED
                            || self.queued_bytes + size > MAX_QUEUED_BYTES =>
                    {
                        self.queued = None;
                        Frame::Error(format!(
                            "ERR more than {MAX_QUEUED} commands or {MAX_QUEUED_BYTES} bytes \
                             in MULTI; transaction discarded"
                        ))
                    }
                    Some(queue) => {
                        queue.push(command);
                        self.queued_bytes += size;
                        Frame::Simple("QUEUED".into())
                    }
                    None => Frame::Error("ERR EXEC without MULTI".into()),
                }
            }
        };
        (reply, Next::Continue)
    }

    /// Runs one command outside MULTI (or at EXEC).
    async fn execute(&mut self, command: Command, publish: &dyn Publish) -> (Frame, Next) {
        let reply = match command.name() {
            Name::Quit => return (Frame::ok(), Next::Close),
            Name::Multi => {
                self.queued = Some(Vec::new());
                self.queued_bytes = 0;
                self.multi_failed = false;
                Frame::ok()
            }
            Name::Exec => Frame::Error("ERR EXEC without MULTI".into()),
            Name::Discard => Frame::Error("ERR DISCARD without MULTI".into()),
            Name::Watch | Name::Unwatch => Frame::ok(),
            Name::Ping | Name::Echo | Name::Auth | Name::Hello | Name::Select | Name::Client => {
                cmd::conn::run(self, &command)
            }
            Name::Reset => {
                self.version = Version::Resp2;
                self.authenticated = !self.env.needs_auth();
                self.name = None;
                self.queued = None;
                Frame::Simple("RESET".into())
            }
            Name::Info => cmd::introspect::info(self, publish),
            Name::Command => cmd::introspect::command(command.rest()),
            Name::Publish | Name::Spublish | Name::Pubsub => {
                cmd::pubsub::run(self, &command, publish).await
            }
            _ => channels::run(&self.env.settings, &command, publish).await,
        };
        (reply, Next::Continue)
    }
}

#[cfg(test)]
mod tests;
