//! A minimal RESP2 publisher for tests and benches (not a general Redis client).
//!
//! - [`encode_command`]: a command as a RESP array of bulk strings.
//! - [`parse_reply`]: one RESP2 reply from the front of a byte slice, or "incomplete";
//!   with a nesting limit and a bulk size limit. RESP3 types are refused: this client
//!   never sends `HELLO 3`.
//! - [`RespClient`]: one TCP connection; `command`, `publish`, and pipelining
//!   (`send_pipeline` then `read_reply` once per command).
//!
//! It deliberately does not use the node's codec (`switchboard_proto::resp`), so that
//! tests of that codec are checked against an independent reader.

use std::io::Write as _;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, ToSocketAddrs};

use crate::Error;

/// Nesting deeper than this is refused (no Redis reply comes close).
pub const MAX_DEPTH: usize = 32;

/// A bulk string longer than this is refused (Redis's own `proto-max-bulk-len`).
pub const MAX_BULK: usize = 512 << 20;

/// How long [`RespClient`] waits for a reply by default.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`: the whole line after the `-`.
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nabc`
    Bulk(Bytes),
    /// `$-1` or `*-1`.
    Nil,
    /// `*2\r\n...`
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The integer, if this is one.
    pub fn as_integer(&self) -> Option<i64> {
        match self {
            RespValue::Integer(n) => Some(*n),
            _ => None,
        }
    }

    /// The bytes of a bulk or simple string.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            RespValue::Bulk(b) => Some(b),
            RespValue::Simple(s) => Some(s.as_bytes()),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            RespValue::Array(items) => Some(items),
            _ => None,
        }
    }

    /// `Err(Error::Server)` for an error reply, the value otherwise.
    pub fn into_result(self) -> Result<RespValue, Error> {
        match self {
            RespValue::Error(e) => Err(Error::Server(e)),
            other => Ok(other),
        }
    }
}

/// Appends `args` to `out` as one RESP command (an array of bulk strings).
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    // Writing into a Vec cannot fail.
    let _ = write!(out, "*{}\r\n", args.len());
    for arg in args {
        let _ = write!(out, "${}\r\n", arg.len());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(Some((value, bytes used)))`, or
/// `Ok(None)` when `buf` holds only part of a reply (read more, then call again from the
/// same start), or [`Error::Protocol`] when the bytes are not a RESP2 reply.
pub fn parse_reply(buf: &[u8]) -> Result<Option<(RespValue, usize)>, Error> {
    let mut pos = 0;
    Ok(parse_at(buf, &mut pos, 0)?.map(|v| (v, pos)))
}

fn parse_at(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<RespValue>, Error> {
    if depth > MAX_DEPTH {
        return Err(protocol(format!("replies nested deeper than {MAX_DEPTH}")));
    }
    let Some(&kind) = buf.get(*pos) else {
        return Ok(None);
    };
    let Some(line) = line_at(buf, *pos + 1)? else {
        return Ok(None);
    };
    let after_line = *pos + 1 + line.len() + 2;
    let value = match kind {
        b'+' => RespValue::Simple(String::from_utf8_lossy(line).into_owned()),
        b'-' => RespValue::Error(String::from_utf8_lossy(line).into_owned()),
        b':' => RespValue::Integer(integer(line)?),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                RespValue::Nil
            } else {
                let len = length(len, MAX_BULK, "bulk string")?;
                let end = after_line + len;
                if buf.len() < end + 2 {
                    return Ok(None);
                }
                if &buf[end..end + 2] != b"\r\n" {
                    return Err(protocol("a bulk string not followed by CRLF".into()));
                }
                *pos = end + 2;
                return Ok(Some(RespValue::Bulk(Bytes::copy_from_slice(
                    &buf[after_line..end],
                ))));
            }
        }
        b'*' => {
            let len = integer(line)?;
            if len == -1 {
                RespValue::Nil
            } else {
                // Each element takes at least 3 bytes: a length beyond what the stream
                // can hold is an attack or garbage, and must not reserve memory.
                let len = length(len, usize::MAX / 4, "array")?;
                let mut items = Vec::with_capacity(len.min(1024));
                *pos = after_line;
                for _ in 0..len {
                    match parse_at(buf, pos, depth + 1)? {
                        Some(item) => items.push(item),
                        None => return Ok(None),
                    }
                }
                return Ok(Some(RespValue::Array(items)));
            }
        }
        other => {
            return Err(protocol(format!(
                "unexpected reply type byte {:?} (RESP3 replies are not supported: do not send HELLO 3)",
                char::from(other)
            )));
        }
    };
    *pos = after_line;
    Ok(Some(value))
}

/// The line starting at `start`, without its CRLF; `None` when the CRLF is not there yet.
fn line_at(buf: &[u8], start: usize) -> Result<Option<&[u8]>, Error> {
    let rest = buf.get(start..).unwrap_or_default();
    match rest.iter().position(|&b| b == b'\r') {
        Some(cr) => match rest.get(cr + 1) {
            Some(b'\n') => Ok(Some(&rest[..cr])),
            Some(_) => Err(protocol("CR not followed by LF".into())),
            None => Ok(None),
        },
        // A header line is short; a long one without CR is garbage.
        None if rest.len() > 64 * 1024 => Err(protocol("a line longer than 64 KiB".into())),
        None => Ok(None),
    }
}

fn integer(line: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            protocol(format!(
                "not an integer: {:?}",
                String::from_utf8_lossy(line)
            ))
        })
}

fn length(n: i64, max: usize, what: &str) -> Result<usize, Error> {
    usize::try_from(n)
        .ok()
        .filter(|&n| n <= max)
        .ok_or_else(|| protocol(format!("{what} length {n} out of range")))
}

fn protocol(msg: String) -> Error {
    Error::Protocol(msg)
}

/// One RESP connection.
///
/// Call order: any number of `send_*`, each followed (in order, possibly much later) by
/// one `read_reply` per command sent; [`RespClient::command`] and
/// [`RespClient::publish`] do both for one command. A reply not read within the reply
/// timeout gives [`Error::Timeout`].
#[derive(Debug)]
pub struct RespClient {
    stream: TcpStream,
    /// Bytes read and not yet parsed; a reply is parsed from its first byte each time
    /// more arrive, which is cheap for the small replies of PUBLISH and friends.
    buf: BytesMut,
    /// Reused encoding buffer.
    out: Vec<u8>,
    timeout: Duration,
}

impl RespClient {
    /// Connects (within [`DEFAULT_REPLY_TIMEOUT`]) to `addr`, `host:port`.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<RespClient, Error> {
        let stream = tokio::time::timeout(DEFAULT_REPLY_TIMEOUT, TcpStream::connect(addr))
            .await
            .map_err(|_| Error::Timeout)??;
        stream.set_nodelay(true)?;
        Ok(RespClient {
            stream,
            buf: BytesMut::with_capacity(16 * 1024),
            out: Vec::with_capacity(1024),
            timeout: DEFAULT_REPLY_TIMEOUT,
        })
    }

    /// Sets how long a reply may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// `AUTH password`; an error reply is [`Error::Server`].
    pub async fn auth(&mut self, password: &str) -> Result<(), Error> {
        self.command(&[b"AUTH", password.as_bytes()])
            .await?
            .into_result()
            .map(drop)
    }

    /// Sends one command and reads its reply (an error reply is a value here, not an
    /// `Err`: tests assert on it).
    pub async fn command(&mut self, args: &[&[u8]]) -> Result<RespValue, Error> {
        self.send_pipeline(&[args]).await?;
        self.read_reply().await
    }

    /// `PUBLISH group payload`: the number of connections the message was routed to.
    pub async fn publish(
        &mut self,
        group: impl AsRef<[u8]>,
        payload: impl AsRef<[u8]>,
    ) -> Result<i64, Error> {
        match self
            .command(&[b"PUBLISH", group.as_ref(), payload.as_ref()])
            .await?
        {
            RespValue::Integer(n) => Ok(n),
            RespValue::Error(e) => Err(Error::Server(e)),
            other => Err(protocol(format!("PUBLISH answered {other:?}"))),
        }
    }

    /// Writes every command in one write; read their replies with `read_reply`.
    pub async fn send_pipeline(&mut self, commands: &[&[&[u8]]]) -> Result<(), Error> {
        let mut out = std::mem::take(&mut self.out);
        out.clear();
        for args in commands {
            encode_command(&mut out, args);
        }
        let sent = self.send_raw(&out).await;
        self.out = out;
        sent
    }

    /// Writes bytes as given (pre-encoded commands, or garbage for a protocol test).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// Reads the next reply. [`Error::Closed`] when the server closed the connection
    /// (cleanly between replies or in the middle of one).
    pub async fn read_reply(&mut self) -> Result<RespValue, Error> {
        loop {
            if let Some((value, used)) = parse_reply(&self.buf)? {
                self.buf.advance(used);
                return Ok(value);
            }
            self.buf.reserve(16 * 1024);
            let n = tokio::time::timeout(self.timeout, self.stream.read_buf(&mut self.buf))
                .await
                .map_err(|_| Error::Timeout)??;
            if n == 0 {
                return Err(Error::Closed);
            }
        }
    }

    /// Reads `n` replies.
    pub async fn read_replies(&mut self, n: usize) -> Result<Vec<RespValue>, Error> {
        let mut replies = Vec::with_capacity(n);
        for _ in 0..n {
            replies.push(self.read_reply().await?);
        }
        Ok(replies)
    }

    /// Reads `n` integer replies and returns their sum (the routed counts of pipelined
    /// PUBLISHes); an error reply is [`Error::Server`].
    pub async fn read_integers(&mut self, n: usize) -> Result<i64, Error> {
        let mut sum = 0i64;
        for _ in 0..n {
            match self.read_reply().await? {
                RespValue::Integer(k) => sum = sum.saturating_add(k),
                RespValue::Error(e) => return Err(Error::Server(e)),
                other => return Err(protocol(format!("expected an integer, got {other:?}"))),
            }
        }
        Ok(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(mut buf: &[u8]) -> Vec<RespValue> {
        let mut out = Vec::new();
        while let Some((v, used)) = parse_reply(buf).expect("valid") {
            out.push(v);
            buf = &buf[used..];
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn every_resp2_type_parses() {
        let wire = b"+OK\r\n-ERR unknown command 'X'\r\n:42\r\n:-7\r\n$5\r\nhe\r\no\r\n$0\r\n\r\n\
                     $-1\r\n*-1\r\n*0\r\n*2\r\n$7\r\nmessage\r\n*1\r\n:1\r\n";
        assert_eq!(
            parse_all(wire),
            vec![
                RespValue::Simple("OK".into()),
                RespValue::Error("ERR unknown command 'X'".into()),
                RespValue::Integer(42),
                RespValue::Integer(-7),
                RespValue::Bulk(Bytes::from_static(b"he\r\no")),
                RespValue::Bulk(Bytes::new()),
                RespValue::Nil,
                RespValue::Nil,
                RespValue::Array(vec![]),
                RespValue::Array(vec![
                    RespValue::Bulk(Bytes::from_static(b"message")),
                    RespValue::Array(vec![RespValue::Integer(1)]),
                ]),
            ]
        );
    }

    #[test]
    fn every_prefix_of_a_reply_is_incomplete() {
        let wire = b"*3\r\n$7\r\nmessage\r\n$4\r\nroom\r\n:12\r\n";
        for cut in 0..wire.len() {
            assert_eq!(
                parse_reply(&wire[..cut]).expect("valid prefix"),
                None,
                "{cut}"
            );
        }
        let (v, used) = parse_reply(wire).expect("valid").expect("complete");
        assert_eq!(used, wire.len());
        assert_eq!(v.as_array().map(<[_]>::len), Some(3));
    }

    #[test]
    fn garbage_is_a_protocol_error() {
        for bad in [
            &b"?what\r\n"[..],
            b":12x\r\n",
            b":\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\rX",
            b"%1\r\n",
            b"$99999999999\r\n",
        ] {
            assert!(
                matches!(parse_reply(bad), Err(Error::Protocol(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(matches!(
            parse_reply(deep.as_bytes()),
            Err(Error::Protocol(_))
        ));
        let ok = "*1\r\n".repeat(MAX_DEPTH) + ":1\r\n";
        assert!(matches!(parse_reply(ok.as_bytes()), Ok(Some(_))));
    }

    #[test]
    fn a_huge_array_length_reserves_nothing_up_front() {
        assert_eq!(parse_reply(b"*1000000000\r\n:1\r\n").expect("prefix"), None);
    }

    #[test]
    fn commands_encode_as_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&mut out, &[b"PUBLISH", b"room", b"hi\r\n"]);
        assert_eq!(
            out,
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nroom\r\n$4\r\nhi\r\n\r\n".to_vec()
        );
    }

    #[test]
    fn pipelines_type_check_with_literals() {
        // Compile-time check that the slice-of-commands shape is usable with literals.
        let cmds: &[&[&[u8]]] = &[&[b"PING"], &[b"PUBLISH", b"g", b"p"]];
        let mut out = Vec::new();
        for c in cmds {
            encode_command(&mut out, c);
        }
        assert!(out.starts_with(b"*1\r\n$4\r\nPING\r\n*3\r\n"));
    }
}
