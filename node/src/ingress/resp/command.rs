//! Every command the shim knows, in one table: its name, its Redis arity, its flags as
//! `COMMAND` reports them, and whether it may run before `AUTH`. Parsing a command is a
//! lookup in that table ([`Command::from_args`]); the session decides what to do with an
//! unknown name or a wrong arity (Redis answers those differently inside `MULTI`).

use bytes::Bytes;
use switchboard_proto::resp::Frame;

/// A command the shim knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Name {
    Ping,
    Echo,
    Quit,
    Auth,
    Hello,
    Select,
    Client,
    Info,
    Command,
    Reset,
    Publish,
    Spublish,
    Pubsub,
    Multi,
    Exec,
    Discard,
    Watch,
    Unwatch,
    // What channels_redis's core layer sends (see `super::channels`).
    Zrange,
    Eval,
    Evalsha,
    Zremrangebyscore,
    Zrem,
    Zcount,
    Del,
    Unlink,
    Zadd,
    Expire,
    Keys,
    Zpopmin,
    Bzpopmin,
    Subscribe,
    Unsubscribe,
    Psubscribe,
    Ssubscribe,
    Flushdb,
    Flushall,
    Dbsize,
    Exists,
}

/// One row of the table.
#[derive(Debug)]
pub struct Spec {
    pub name: Name,
    /// Lower-case, as `COMMAND` shows it.
    pub text: &'static str,
    /// Redis arity: positive = exactly that many arguments (the name included),
    /// negative = at least that many.
    pub arity: i64,
    /// May run before `AUTH` on a password-protected shim.
    pub no_auth: bool,
    /// Its cost grows with the number of groups (introspection): the connection runs it
    /// off the async workers, so it never stalls other connections.
    pub slow: bool,
    /// Flags as `COMMAND INFO` reports them.
    pub flags: &'static [&'static str],
    /// First key, last key, step, as `COMMAND INFO` reports them.
    pub keys: (i64, i64, i64),
}

const fn spec(
    name: Name,
    text: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
) -> Spec {
    Spec {
        name,
        text,
        arity,
        no_auth: false,
        slow: false,
        flags,
        keys,
    }
}

const fn no_auth(mut s: Spec) -> Spec {
    s.no_auth = true;
    s
}

const fn slow(mut s: Spec) -> Spec {
    s.slow = true;
    s
}

const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const AUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];
const PUBSUB: &[&str] = &["pubsub", "loading", "stale", "fast"];
const READ: &[&str] = &["readonly", "fast"];
const WRITE: &[&str] = &["write", "fast"];
const NONE: (i64, i64, i64) = (0, 0, 0);
const KEY: (i64, i64, i64) = (1, 1, 1);
const KEYS: (i64, i64, i64) = (1, -1, 1);

/// The table. See the module header.
pub static TABLE: &[Spec] = &[
    spec(Name::Ping, "ping", -1, &["fast", "stale"], NONE),
    spec(Name::Echo, "echo", 2, &["fast"], NONE),
    no_auth(spec(Name::Quit, "quit", -1, AUTH, NONE)),
    no_auth(spec(Name::Auth, "auth", -2, AUTH, NONE)),
    no_auth(spec(Name::Hello, "hello", -1, AUTH, NONE)),
    spec(
        Name::Select,
        "select",
        2,
        &["loading", "stale", "fast"],
        NONE,
    ),
    spec(
        Name::Client,
        "client",
        -2,
        &["noscript", "loading", "stale"],
        NONE,
    ),
    spec(Name::Info, "info", -1, &["loading", "stale"], NONE),
    spec(Name::Command, "command", -1, &["loading", "stale"], NONE),
    spec(Name::Reset, "reset", 1, AUTH, NONE),
    spec(Name::Publish, "publish", 3, PUBSUB, NONE),
    spec(Name::Spublish, "spublish", 3, PUBSUB, KEY),
    spec(
        Name::Pubsub,
        "pubsub",
        -2,
        &["pubsub", "loading", "stale"],
        NONE,
    ),
    spec(Name::Multi, "multi", 1, CONN, NONE),
    spec(
        Name::Exec,
        "exec",
        1,
        &["noscript", "loading", "stale"],
        NONE,
    ),
    spec(Name::Discard, "discard", 1, CONN, NONE),
    spec(Name::Watch, "watch", -2, CONN, KEYS),
    spec(Name::Unwatch, "unwatch", 1, CONN, NONE),
    spec(Name::Zrange, "zrange", -4, &["readonly"], KEY),
    spec(
        Name::Eval,
        "eval",
        -3,
        &["noscript", "stale", "movablekeys"],
        NONE,
    ),
    spec(
        Name::Evalsha,
        "evalsha",
        -3,
        &["noscript", "stale", "movablekeys"],
        NONE,
    ),
    spec(
        Name::Zremrangebyscore,
        "zremrangebyscore",
        4,
        &["write"],
        KEY,
    ),
    spec(Name::Zrem, "zrem", -3, WRITE, KEY),
    spec(Name::Zcount, "zcount", 4, READ, KEY),
    spec(Name::Del, "del", -2, &["write"], KEYS),
    spec(Name::Unlink, "unlink", -2, WRITE, KEYS),
    spec(Name::Zadd, "zadd", -4, &["write", "denyoom", "fast"], KEY),
    spec(Name::Expire, "expire", -3, WRITE, KEY),
    slow(spec(Name::Keys, "keys", 2, &["readonly"], NONE)),
    spec(Name::Zpopmin, "zpopmin", -2, WRITE, KEY),
    spec(
        Name::Bzpopmin,
        "bzpopmin",
        -3,
        &["write", "noscript", "blocking"],
        (1, -2, 1),
    ),
    spec(Name::Subscribe, "subscribe", -2, PUBSUB, NONE),
    spec(Name::Unsubscribe, "unsubscribe", -1, PUBSUB, NONE),
    spec(Name::Psubscribe, "psubscribe", -2, PUBSUB, NONE),
    spec(Name::Ssubscribe, "ssubscribe", -2, PUBSUB, KEYS),
    spec(Name::Flushdb, "flushdb", -1, &["write"], NONE),
    spec(Name::Flushall, "flushall", -1, &["write"], NONE),
    spec(Name::Dbsize, "dbsize", 1, READ, NONE),
    spec(Name::Exists, "exists", -2, READ, KEYS),
];

/// The table row of a command name, case-insensitively.
pub fn lookup(name: &[u8]) -> Option<&'static Spec> {
    TABLE
        .iter()
        .find(|s| s.text.as_bytes().eq_ignore_ascii_case(name))
}

impl Spec {
    /// Whether `n` arguments (the name included) fit this command's arity.
    pub fn arity_ok(&self, n: usize) -> bool {
        let n = n as i64;
        if self.arity >= 0 {
            n == self.arity
        } else {
            n >= -self.arity
        }
    }
}

/// A command whose name and arity checked out. `args[0]` is the name as sent.
#[derive(Debug, Clone)]
pub struct Command {
    pub spec: &'static Spec,
    pub args: Vec<Bytes>,
}

/// Why a command could not be parsed: the error Redis answers.
#[derive(Debug, Clone, PartialEq)]
pub enum ParseError {
    Unknown(Frame),
    Arity(Frame),
}

impl ParseError {
    pub fn into_frame(self) -> Frame {
        match self {
            ParseError::Unknown(f) | ParseError::Arity(f) => f,
        }
    }
}

impl Command {
    /// Looks the command up and checks its arity. `args` must not be empty.
    pub fn from_args(args: Vec<Bytes>) -> Result<Command, ParseError> {
        let Some(spec) = args.first().and_then(|name| lookup(name)) else {
            return Err(ParseError::Unknown(unknown_command(&args)));
        };
        if !spec.arity_ok(args.len()) {
            return Err(ParseError::Arity(arity(spec.text)));
        }
        Ok(Command { spec, args })
    }

    pub fn name(&self) -> Name {
        self.spec.name
    }

    /// The arguments after the name.
    pub fn rest(&self) -> &[Bytes] {
        &self.args[1..]
    }
}

/// `ERR wrong number of arguments for '<command>' command`, as Redis says it.
pub fn arity(command: &str) -> Frame {
    Frame::Error(format!(
        "ERR wrong number of arguments for '{command}' command"
    ))
}

/// Redis's own wording, so clients and people recognise it.
pub fn unknown_command(args: &[Bytes]) -> Frame {
    let name = args
        .first()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .unwrap_or_default();
    let mut text = format!("ERR unknown command '{name}', with args beginning with: ");
    for arg in args.iter().skip(1).take(8) {
        let arg = String::from_utf8_lossy(arg);
        let arg: String = arg.chars().take(64).collect();
        text.push_str(&format!("'{arg}' "));
    }
    Frame::Error(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<Bytes> {
        words
            .iter()
            .map(|w| Bytes::copy_from_slice(w.as_bytes()))
            .collect()
    }

    #[test]
    fn names_are_case_insensitive_and_arity_is_checked() {
        let cmd = Command::from_args(args(&["publish", "g", "x"])).expect("parses");
        assert_eq!(cmd.name(), Name::Publish);
        assert_eq!(cmd.rest().len(), 2);
        assert_eq!(
            Command::from_args(args(&["PUBLISH", "g"])).expect_err("arity"),
            ParseError::Arity(Frame::Error(
                "ERR wrong number of arguments for 'publish' command".into()
            ))
        );
        assert!(Command::from_args(args(&["zadd", "k", "1"])).is_err());
        assert!(Command::from_args(args(&["ZADD", "k", "1", "m"])).is_ok());
    }

    #[test]
    fn an_unknown_command_says_so_as_redis_does() {
        let err = Command::from_args(args(&["FOO", "a", "b"])).expect_err("unknown");
        assert_eq!(
            err.into_frame(),
            Frame::Error("ERR unknown command 'FOO', with args beginning with: 'a' 'b' ".into())
        );
    }

    #[test]
    fn every_name_has_one_row() {
        for spec in TABLE {
            assert_eq!(
                lookup(spec.text.as_bytes()).map(|s| s.name),
                Some(spec.name)
            );
            assert_eq!(spec.text, spec.text.to_ascii_lowercase());
        }
        let no_auth: Vec<&str> = TABLE.iter().filter(|s| s.no_auth).map(|s| s.text).collect();
        assert_eq!(no_auth, vec!["quit", "auth", "hello"]);
    }
}
