//! The Redis-protocol ingest shim: existing publishers (`redis-cli`, redis-py,
//! channels_redis) connect here as if to Redis.
//!
//! One task per connection reads into a buffer, decodes every complete frame with the
//! proto crate's [`Decoder`], answers each command in order into one output buffer, and
//! writes that buffer once per read: pipelining costs one syscall per batch. Output is
//! bounded because it is flushed before more input is read.
//!
//! What the commands mean here is in docs/protocol.md; where Switchboard has no
//! equivalent, the answer is the one Redis gives, or a Redis-style error naming the
//! command, never a hang.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use switchboard_proto::resp::{Decoder, Frame, Limits, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use crate::channels;
use crate::shared::Shared;

/// The Redis version the shim reports (HELLO, INFO): clients gate features on it.
pub const REDIS_VERSION: &str = "7.2.0";
/// Most RESP connections at once.
const MAX_RESP_CONNECTIONS: usize = 10_000;
/// Most commands one MULTI may queue.
const MAX_QUEUED: usize = 10_000;
/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// Accepts RESP connections until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
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
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        next_id += 1;
        let id = next_id;
        let shared = shared.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            shared.metrics.resp_connections.inc();
            let result = RespConn::new(id, shared.clone()).run(stream, stop).await;
            shared.metrics.resp_connections.dec();
            if let Err(e) = result {
                debug!(%peer, error = %e, "RESP connection ended with an error");
            }
        });
    }
}

/// What the connection should do after a command.
enum Next {
    Continue,
    Close,
}

/// One RESP client connection.
struct RespConn {
    id: u64,
    shared: Arc<Shared>,
    version: Version,
    authenticated: bool,
    name: Option<Bytes>,
    lib_name: Option<Bytes>,
    lib_ver: Option<Bytes>,
    /// Commands queued since MULTI, if a transaction is open.
    queued: Option<Vec<Vec<Bytes>>>,
    /// A command was refused while queueing: EXEC aborts.
    multi_failed: bool,
}

impl RespConn {
    fn new(id: u64, shared: Arc<Shared>) -> Self {
        let authenticated = shared.config.resp_password.is_none();
        RespConn {
            id,
            shared,
            version: Version::Resp2,
            authenticated,
            name: None,
            lib_name: None,
            lib_ver: None,
            queued: None,
            multi_failed: false,
        }
    }

    async fn run(mut self, mut stream: TcpStream, stop: CancellationToken) -> std::io::Result<()> {
        let limits = Limits {
            max_bulk_len: self.shared.config.max_payload.max(64 * 1024),
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
                match decoder.decode(&mut input) {
                    Ok(Some(frame)) => {
                        if let Next::Close = self.command(frame, &mut out) {
                            close = true;
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.shared.metrics.resp_protocol_errors.inc();
                        Frame::Error(format!("ERR Protocol error: {e}"))
                            .encode(self.version, &mut out);
                        close = true;
                        break;
                    }
                }
            }
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
                if out.capacity() > 1024 * 1024 {
                    out.shrink_to(1024);
                }
            }
            if close {
                let _ = stream.shutdown().await;
                return Ok(());
            }
        }
    }

    fn command(&mut self, frame: Frame, out: &mut Vec<u8>) -> Next {
        let metrics = &self.shared.metrics;
        metrics.resp_commands.inc();
        let args = match frame.into_args() {
            Ok(args) if !args.is_empty() => args,
            Ok(_) => return Next::Continue, // an empty inline line: Redis ignores it
            Err(e) => {
                self.reply(Frame::Error(format!("ERR Protocol error: {e}")), out);
                metrics.resp_protocol_errors.inc();
                return Next::Close;
            }
        };
        let mut upper = [0u8; 24];
        let name = command_name(&args[0], &mut upper);
        if !self.authenticated && !matches!(name.as_ref(), "AUTH" | "HELLO" | "QUIT") {
            metrics.resp_auth_failures.inc();
            self.reply(Frame::Error("NOAUTH Authentication required.".into()), out);
            return Next::Continue;
        }
        // MULTI/EXEC: redis-py pipelines are transactions by default (channels_redis uses
        // one). Commands are queued and run together at EXEC; each is independent here,
        // so "atomic" holds trivially.
        match (name.as_ref(), self.queued.is_some()) {
            ("MULTI", true) => {
                self.reply(
                    Frame::Error("ERR MULTI calls can not be nested".into()),
                    out,
                );
                return Next::Continue;
            }
            ("MULTI", false) => {
                self.queued = Some(Vec::new());
                self.multi_failed = false;
                self.reply(Frame::ok(), out);
                return Next::Continue;
            }
            ("EXEC", true) if self.multi_failed => {
                self.queued = None;
                self.reply(
                    Frame::Error(
                        "EXECABORT Transaction discarded because of previous errors.".into(),
                    ),
                    out,
                );
                return Next::Continue;
            }
            ("EXEC", true) => {
                let queued = self.queued.take().unwrap_or_default();
                let mut replies = Vec::with_capacity(queued.len());
                let mut next = Next::Continue;
                for args in queued {
                    let (reply, after) = self.execute(args);
                    replies.push(reply);
                    if let Next::Close = after {
                        next = Next::Close;
                    }
                }
                self.reply(Frame::Array(replies), out);
                return next;
            }
            ("DISCARD", true) => {
                self.queued = None;
                self.reply(Frame::ok(), out);
                return Next::Continue;
            }
            ("EXEC", false) => {
                self.reply(Frame::Error("ERR EXEC without MULTI".into()), out);
                return Next::Continue;
            }
            ("DISCARD", false) => {
                self.reply(Frame::Error("ERR DISCARD without MULTI".into()), out);
                return Next::Continue;
            }
            ("WATCH" | "UNWATCH", _) => {
                self.reply(Frame::ok(), out);
                return Next::Continue;
            }
            (_, true) if name.as_ref() != "QUIT" => {
                // As Redis: an unknown command or a wrong arity is answered at once and
                // makes EXEC abort the whole transaction.
                if let Some(error) = queue_error(&name, &args) {
                    self.multi_failed = true;
                    self.reply(error, out);
                    return Next::Continue;
                }
                if let Some(queue) = &mut self.queued {
                    if queue.len() >= MAX_QUEUED {
                        self.queued = None;
                        self.reply(
                            Frame::Error(format!(
                                "ERR more than {MAX_QUEUED} commands in MULTI; transaction discarded"
                            )),
                            out,
                        );
                        return Next::Continue;
                    }
                    queue.push(args);
                }
                self.reply(Frame::Simple("QUEUED".into()), out);
                return Next::Continue;
            }
            _ => {}
        }
        let (reply, next) = self.execute(args);
        self.reply(reply, out);
        next
    }

    /// Runs one command; returns its reply and whether to close afterwards.
    fn execute(&mut self, args: Vec<Bytes>) -> (Frame, Next) {
        let mut upper = [0u8; 24];
        let name = command_name(&args[0], &mut upper);
        let reply = match name.as_ref() {
            "PING" => match args.len() {
                1 => Frame::Simple("PONG".into()),
                2 => Frame::Bulk(args[1].clone()),
                _ => arity("ping"),
            },
            "ECHO" if args.len() == 2 => Frame::Bulk(args[1].clone()),
            "ECHO" => arity("echo"),
            "QUIT" => return (Frame::ok(), Next::Close),
            "AUTH" => self.auth(&args[1..]),
            "HELLO" => self.hello(&args[1..]),
            "SELECT" => match args.get(1).map(|a| a.as_ref()) {
                Some(b"0") if args.len() == 2 => Frame::Simple("OK".into()),
                Some(index)
                    if args.len() == 2
                        && std::str::from_utf8(index).is_ok_and(|i| i.parse::<i64>().is_ok()) =>
                {
                    Frame::Error("ERR DB index is out of range".into())
                }
                Some(_) if args.len() == 2 => {
                    Frame::Error("ERR value is not an integer or out of range".into())
                }
                _ => arity("select"),
            },
            "CLIENT" => self.client(&args[1..]),
            "INFO" => self.info(),
            "COMMAND" => command_info(&args[1..]),
            "PUBLISH" | "SPUBLISH" if args.len() == 3 => self.publish(&args[1], args[2].clone()),
            "PUBLISH" => arity("publish"),
            "SPUBLISH" => arity("spublish"),
            "PUBSUB" => self.pubsub(&args[1..]),
            "RESET" => {
                self.version = Version::Resp2;
                self.authenticated = self.shared.config.resp_password.is_none();
                self.name = None;
                self.queued = None;
                Frame::Simple("RESET".into())
            }
            _ => match channels::core_command(&self.shared, &name, &args) {
                Some(reply) => reply,
                // A known command with the wrong arity: say so, as Redis does.
                None => queue_error(&name, &args).unwrap_or_else(|| unknown_command(&args)),
            },
        };
        (reply, Next::Continue)
    }

    fn reply(&self, frame: Frame, out: &mut Vec<u8>) {
        if matches!(frame, Frame::Error(_)) {
            self.shared.metrics.resp_errors.inc();
        }
        frame.encode(self.version, out);
    }

    fn check_password(&mut self, user: Option<&[u8]>, password: &[u8]) -> Result<(), Frame> {
        let Some(expected) = self.shared.config.resp_password.as_deref() else {
            return Err(Frame::Error(
                "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into(),
            ));
        };
        let user_ok = user.is_none_or(|u| u == b"default");
        if user_ok && constant_time_eq(password, expected.as_bytes()) {
            self.authenticated = true;
            Ok(())
        } else {
            self.shared.metrics.resp_auth_failures.inc();
            Err(Frame::Error(
                "WRONGPASS invalid username-password pair or user is disabled.".into(),
            ))
        }
    }

    fn auth(&mut self, args: &[Bytes]) -> Frame {
        let result = match args {
            [password] => self.check_password(None, password),
            [user, password] => self.check_password(Some(user), password),
            _ => return arity("auth"),
        };
        match result {
            Ok(()) => Frame::Simple("OK".into()),
            Err(e) => e,
        }
    }

    fn hello(&mut self, args: &[Bytes]) -> Frame {
        let mut version = self.version;
        let mut rest = args;
        if let Some((proto, tail)) = rest.split_first() {
            version = match proto.as_ref() {
                b"2" => Version::Resp2,
                b"3" => Version::Resp3,
                _ if std::str::from_utf8(proto)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .is_none() =>
                {
                    return Frame::Error(
                        "ERR Protocol version is not an integer or out of range".into(),
                    );
                }
                _ => return Frame::Error("NOPROTO unsupported protocol version".into()),
            };
            rest = tail;
        }
        while let Some((option, tail)) = rest.split_first() {
            match (option.to_ascii_uppercase().as_slice(), tail) {
                (b"AUTH", [user, password, more @ ..]) => {
                    if let Err(e) = self.check_password(Some(user), password) {
                        return e;
                    }
                    rest = more;
                }
                (b"SETNAME", [name, more @ ..]) => {
                    self.name = Some(name.clone());
                    rest = more;
                }
                _ => {
                    return Frame::Error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(option)
                    ));
                }
            }
        }
        if !self.authenticated {
            self.shared.metrics.resp_auth_failures.inc();
            return Frame::Error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
            );
        }
        self.version = version;
        let proto = if version == Version::Resp3 { 3 } else { 2 };
        Frame::Map(vec![
            (bulk("server"), bulk("redis")),
            (bulk("version"), bulk(REDIS_VERSION)),
            (bulk("proto"), Frame::Integer(proto)),
            (bulk("id"), Frame::Integer(self.id as i64)),
            (bulk("mode"), bulk("standalone")),
            (bulk("role"), bulk("master")),
            (bulk("modules"), Frame::Array(vec![])),
        ])
    }

    fn client(&mut self, args: &[Bytes]) -> Frame {
        let Some(sub) = args.first() else {
            return arity("client");
        };
        let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
        match (sub.as_str(), &args[1..]) {
            ("SETNAME", [name]) => {
                if name.iter().any(|b| *b == b' ' || *b == b'\n') {
                    return Frame::Error(
                        "ERR Client names cannot contain spaces, newlines or special characters."
                            .into(),
                    );
                }
                self.name = Some(name.clone());
                Frame::Simple("OK".into())
            }
            ("GETNAME", []) => self.name.clone().map(Frame::Bulk).unwrap_or(Frame::Null),
            ("ID", []) => Frame::Integer(self.id as i64),
            ("SETINFO", [attr, value]) => {
                match attr.to_ascii_uppercase().as_slice() {
                    b"LIB-NAME" => self.lib_name = Some(value.clone()),
                    b"LIB-VER" => self.lib_ver = Some(value.clone()),
                    _ => {
                        return Frame::Error(format!(
                            "ERR Unrecognized option '{}'",
                            String::from_utf8_lossy(attr)
                        ));
                    }
                }
                Frame::Simple("OK".into())
            }
            ("INFO", []) => Frame::Bulk(Bytes::from(self.client_line() + "\n")),
            ("LIST", _) => Frame::Bulk(Bytes::from(self.client_line() + "\n")),
            ("NO-EVICT" | "NO-TOUCH", [_]) | ("REPLY", [_]) => Frame::Simple("OK".into()),
            _ => Frame::Error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                sub.to_ascii_lowercase()
            )),
        }
    }

    fn client_line(&self) -> String {
        let text = |b: &Option<Bytes>| {
            b.as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default()
        };
        format!(
            "id={} name={} db=0 resp={} lib-name={} lib-ver={}",
            self.id,
            text(&self.name),
            if self.version == Version::Resp3 { 3 } else { 2 },
            text(&self.lib_name),
            text(&self.lib_ver)
        )
    }

    fn info(&self) -> Frame {
        let shared = &self.shared;
        let broker = crate::shared::read(&shared.broker);
        let text = format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nswitchboard_version:{}\r\nswitchboard_node_id:{}\r\nuptime_in_seconds:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\nwebsocket_connections:{}\r\n\r\n# Stats\r\npubsub_channels:{}\r\ntotal_commands_processed:{}\r\nmessages_published:{}\r\n\r\n# Replication\r\nrole:master\r\n\r\n# Keyspace\r\n",
            env!("CARGO_PKG_VERSION"),
            shared.node_id(),
            shared.started.elapsed().as_secs(),
            shared.metrics.resp_connections.get(),
            broker.connection_count(),
            broker.group_count(),
            shared.metrics.resp_commands.get(),
            shared.metrics.messages_published.get(),
        );
        Frame::Verbatim {
            format: "txt".into(),
            text: Bytes::from(text),
        }
    }

    fn publish(&self, channel: &Bytes, payload: Bytes) -> Frame {
        let Ok(channel) = std::str::from_utf8(channel) else {
            return Frame::Error("ERR group names must be UTF-8".into());
        };
        if payload.len() > self.shared.config.max_payload {
            return Frame::Error(format!(
                "ERR payload of {} bytes exceeds --max-payload {}",
                payload.len(),
                self.shared.config.max_payload
            ));
        }
        let (group, payload) = channels::from_pubsub_layer(&self.shared, channel, payload);
        let routed = self.shared.publish(group, payload);
        Frame::Integer(routed as i64)
    }

    fn pubsub(&self, args: &[Bytes]) -> Frame {
        let Some(sub) = args.first() else {
            return arity("pubsub");
        };
        let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
        match (sub.as_str(), &args[1..]) {
            ("CHANNELS" | "SHARDCHANNELS", rest) if rest.len() <= 1 => Frame::Array(
                self.shared
                    .all_groups(rest.first().map(|p| p.as_ref()))
                    .into_iter()
                    .map(|g| Frame::Bulk(Bytes::from(g)))
                    .collect(),
            ),
            ("NUMSUB" | "SHARDNUMSUB", groups) => {
                // A flat array of name, count, name, count... in RESP2 and RESP3 alike,
                // as redis-server answers (redis-py parses it so).
                let mut flat = Vec::with_capacity(groups.len() * 2);
                for g in groups {
                    let count: usize = std::str::from_utf8(g)
                        .map(|g| self.shared.group_counts(g).iter().map(|(_, c)| c).sum())
                        .unwrap_or(0);
                    flat.push(Frame::Bulk(g.clone()));
                    flat.push(Frame::Integer(count as i64));
                }
                Frame::Array(flat)
            }
            ("NUMPAT", []) => Frame::Integer(0),
            _ => Frame::Error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
                sub.to_ascii_lowercase()
            )),
        }
    }
}

/// The command name upper-cased into `buf` without allocating (names are short); a name
/// too long for any real command comes back as written, and matches nothing.
fn command_name<'a>(raw: &'a [u8], buf: &'a mut [u8; 24]) -> std::borrow::Cow<'a, str> {
    match buf.get_mut(..raw.len()) {
        Some(dst) => {
            dst.copy_from_slice(raw);
            dst.make_ascii_uppercase();
            String::from_utf8_lossy(dst)
        }
        None => String::from_utf8_lossy(raw),
    }
}

/// Redis arity of every command the shim knows: positive = exactly that many arguments
/// (the name included), negative = at least that many.
const ARITY: &[(&str, i64)] = &[
    ("PING", -1),
    ("ECHO", 2),
    ("QUIT", -1),
    ("AUTH", -2),
    ("HELLO", -1),
    ("SELECT", 2),
    ("CLIENT", -2),
    ("INFO", -1),
    ("COMMAND", -1),
    ("PUBLISH", 3),
    ("SPUBLISH", 3),
    ("PUBSUB", -2),
    ("RESET", 1),
    ("ZRANGE", -4),
    ("EVAL", -3),
    ("EVALSHA", -3),
    ("ZREMRANGEBYSCORE", 4),
    ("ZREM", -3),
    ("ZCOUNT", 4),
    ("DEL", -2),
    ("UNLINK", -2),
    ("ZADD", -4),
    ("EXPIRE", -3),
    ("KEYS", 2),
    ("ZPOPMIN", -2),
    ("BZPOPMIN", -3),
    ("SUBSCRIBE", -2),
    ("UNSUBSCRIBE", -1),
    ("PSUBSCRIBE", -2),
    ("SSUBSCRIBE", -2),
    ("FLUSHDB", -1),
    ("FLUSHALL", -1),
    ("DBSIZE", 1),
    ("EXISTS", -2),
    ("WATCH", -2),
    ("UNWATCH", 1),
];

/// The error Redis gives when queueing this command inside MULTI, if any.
fn queue_error(name: &str, args: &[Bytes]) -> Option<Frame> {
    let Some(&(_, expected)) = ARITY.iter().find(|(n, _)| *n == name) else {
        return Some(unknown_command(args));
    };
    let n = args.len() as i64;
    let ok = if expected >= 0 {
        n == expected
    } else {
        n >= -expected
    };
    (!ok).then(|| arity(&name.to_ascii_lowercase()))
}

fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}

fn arity(command: &str) -> Frame {
    Frame::Error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}

/// Redis's own wording, so clients and people recognise it.
pub fn unknown_command(args: &[Bytes]) -> Frame {
    let name = String::from_utf8_lossy(&args[0]);
    let mut text = format!("ERR unknown command '{name}', with args beginning with: ");
    for arg in args.iter().skip(1).take(8) {
        let arg = String::from_utf8_lossy(arg);
        let arg: String = arg.chars().take(64).collect();
        text.push_str(&format!("'{arg}' "));
    }
    Frame::Error(text)
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO`: enough for redis-cli's
/// start-up and for clients that probe what the server supports.
fn command_info(args: &[Bytes]) -> Frame {
    /// name, arity, flags, first key, last key, step
    type Entry = (&'static str, i64, &'static [&'static str], i64, i64, i64);
    const TABLE: &[Entry] = &[
        ("ping", -1, &["fast", "stale"], 0, 0, 0),
        ("echo", 2, &["fast"], 0, 0, 0),
        (
            "auth",
            -2,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            0,
            0,
            0,
        ),
        (
            "hello",
            -1,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            0,
            0,
            0,
        ),
        ("select", 2, &["loading", "stale", "fast"], 0, 0, 0),
        ("client", -2, &["noscript", "loading", "stale"], 0, 0, 0),
        ("info", -1, &["loading", "stale"], 0, 0, 0),
        ("command", -1, &["loading", "stale"], 0, 0, 0),
        (
            "quit",
            -1,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            0,
            0,
            0,
        ),
        (
            "publish",
            3,
            &["pubsub", "loading", "stale", "fast"],
            0,
            0,
            0,
        ),
        (
            "spublish",
            3,
            &["pubsub", "loading", "stale", "fast"],
            1,
            1,
            1,
        ),
        ("pubsub", -2, &["pubsub", "loading", "stale"], 0, 0, 0),
        (
            "reset",
            1,
            &["noscript", "loading", "stale", "fast", "no_auth"],
            0,
            0,
            0,
        ),
    ];
    let entry = |(name, arity, flags, first, last, step): &Entry| {
        Frame::Array(vec![
            bulk(name),
            Frame::Integer(*arity),
            Frame::Set(flags.iter().map(|f| Frame::Simple((*f).into())).collect()),
            Frame::Integer(*first),
            Frame::Integer(*last),
            Frame::Integer(*step),
        ])
    };
    let sub = args
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
    match sub.as_deref() {
        None => Frame::Array(TABLE.iter().map(entry).collect()),
        Some("COUNT") => Frame::Integer(TABLE.len() as i64),
        Some("DOCS") => Frame::Map(vec![]),
        Some("INFO") => Frame::Array(
            args[1..]
                .iter()
                .map(|name| {
                    let name = String::from_utf8_lossy(name).to_ascii_lowercase();
                    TABLE
                        .iter()
                        .find(|e| e.0 == name)
                        .map(entry)
                        .unwrap_or(Frame::Null)
                })
                .collect(),
        ),
        Some("LIST") => Frame::Array(TABLE.iter().map(|e| bulk(e.0)).collect()),
        Some(other) => Frame::Error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            other.to_ascii_lowercase()
        )),
    }
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
