//! RESP2 and RESP3 frames: decoding in two phases over a byte slice, with limits, and
//! encoding for either protocol version.
//!
//! Parts:
//! - [`Frame`]: every RESP2 and RESP3 type.
//! - [`check`] (phase 1) walks one frame without allocating and says how long it is, or
//!   that more bytes are needed ([`Error::Incomplete`]), or what is wrong with it. The
//!   walk is iterative (an explicit stack, no recursion) and enforces [`Limits`]: a
//!   declared length over a limit is refused on the header, before the bytes arrive.
//! - [`parse`] (phase 2) builds the frame from bytes `check` accepted; bulk strings are
//!   slices of the input (`Bytes`), not copies.
//! - [`Decoder`] drives both over a connection's read buffer and remembers how far an
//!   incomplete frame was walked, so a large frame arriving in many reads is walked once,
//!   not rescanned from byte 0 after every read (mini-redis's `check` rescans). It also
//!   accepts inline commands (`PING\r\n`), as redis-server does.
//! - [`Frame::encode`] writes a frame for RESP2 or RESP3, downgrading RESP3-only types
//!   for RESP2 clients the way redis-server does.

use bytes::{Bytes, BytesMut};

/// The protocol version a connection speaks (`HELLO 3` switches to RESP3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    Resp2,
    Resp3,
}

/// What a peer may make the decoder accept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest bulk, blob error or verbatim string, in bytes.
    pub max_bulk_len: usize,
    /// Most elements in one array, set or push (pairs in a map or attribute).
    pub max_array_len: usize,
    /// Deepest nesting of aggregates; the top-level frame is depth 1. Capped at
    /// [`MAX_DEPTH`].
    pub max_depth: usize,
    /// Longest inline command line, in bytes.
    pub max_inline_len: usize,
    /// Largest whole frame, in bytes: refused as soon as a header announces more, so a
    /// peer cannot make the decoder buffer many bulks that each pass `max_bulk_len`.
    pub max_frame_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 64 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_depth: 32,
            max_inline_len: 64 * 1024,
            max_frame_len: 512 * 1024 * 1024,
        }
    }
}

/// One RESP value.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// `+OK`
    Simple(String),
    /// `-ERR ...`; RESP3 blob errors (`!`) decode to this too.
    Error(String),
    /// `:1`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Bytes),
    /// `$-1` and `*-1` in RESP2, `_` in RESP3.
    Null,
    /// `*`
    Array(Vec<Frame>),
    /// `%` (RESP3)
    Map(Vec<(Frame, Frame)>),
    /// `~` (RESP3)
    Set(Vec<Frame>),
    /// `,` (RESP3), `inf`, `-inf` and `nan` included.
    Double(f64),
    /// `#t` / `#f` (RESP3)
    Boolean(bool),
    /// `(` (RESP3), kept as its decimal text.
    BigNumber(String),
    /// `=` (RESP3): a three-letter format (`txt`, `mkd`) and the text.
    Verbatim { format: String, text: Bytes },
    /// `>` (RESP3)
    Push(Vec<Frame>),
    /// `|` (RESP3); decoded so it can be skipped.
    Attribute(Vec<(Frame, Frame)>),
}

/// Why bytes are not (yet) a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not enough bytes yet: not a protocol error.
    #[error("incomplete frame")]
    Incomplete,
    /// A length or integer field is not a number, or out of range.
    #[error("invalid {what} '{text}'")]
    InvalidNumber { what: &'static str, text: String },
    /// A bulk string declares more bytes than [`Limits::max_bulk_len`].
    #[error("bulk string of {len} bytes exceeds the limit of {max}")]
    BulkTooLong { len: u64, max: usize },
    /// An aggregate declares more elements than [`Limits::max_array_len`].
    #[error("aggregate of {len} elements exceeds the limit of {max}")]
    ArrayTooLong { len: u64, max: usize },
    /// Aggregates nest deeper than [`Limits::max_depth`].
    #[error("nesting deeper than {0} levels")]
    TooDeep(usize),
    /// The first byte of a frame is not a RESP type.
    #[error("unknown frame type byte 0x{0:02x}")]
    UnknownType(u8),
    /// A bulk string is not followed by CRLF.
    #[error("expected CRLF after a bulk string")]
    MissingCrlf,
    /// The frame announces more bytes in all than [`Limits::max_frame_len`].
    #[error("frame of at least {len} bytes exceeds the limit of {max}")]
    FrameTooLong { len: u64, max: usize },
    /// An inline command line is longer than [`Limits::max_inline_len`].
    #[error("inline command longer than {0} bytes")]
    InlineTooLong(usize),
    /// A simple string, error or header line has no CRLF within [`Limits::max_inline_len`].
    #[error("line longer than {0} bytes")]
    LineTooLong(usize),
    /// An inline command has an unbalanced quote.
    #[error("unbalanced quotes in an inline command")]
    UnbalancedQuotes,
    /// A frame that is not a command where a command was expected.
    #[error("expected a command: an array of bulk strings")]
    NotACommand,
}

impl Error {
    /// Whether more bytes may complete the frame.
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Error::Incomplete)
    }
}

const TYPE_BYTES: &[u8] = b"+-:$*_,#(!=%~>|";

/// A line ending in CRLF starting at `at`: its content and the index after the CRLF.
fn line(buf: &[u8], at: usize) -> Result<(&[u8], usize), Error> {
    let rest = buf.get(at..).ok_or(Error::Incomplete)?;
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok((&rest[..i], at + i + 2)),
        None => Err(Error::Incomplete),
    }
}

/// As [`line`], but a line still open after `max` bytes is an error, so a peer cannot
/// grow the buffer forever with a line that never ends.
fn bounded_line(buf: &[u8], at: usize, max: usize) -> Result<(&[u8], usize), Error> {
    match line(buf, at) {
        Err(Error::Incomplete) if buf.len().saturating_sub(at) > max => {
            Err(Error::LineTooLong(max))
        }
        other => other,
    }
}

fn number(text: &[u8], what: &'static str) -> Result<i64, Error> {
    std::str::from_utf8(text)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::InvalidNumber {
            what,
            text: String::from_utf8_lossy(&text[..text.len().min(32)]).into_owned(),
        })
}

/// Where a walk over a frame stands: the next element's offset and, for every open
/// aggregate, how many elements it still expects. Everything before `pos` has been
/// checked, so a walk can resume here when more bytes arrive.
#[derive(Debug, Default, Clone)]
struct Walk {
    pos: usize,
    open: Vec<u64>,
    /// A total length the frame is known to need (a bulk's end), to skip futile walks.
    need: usize,
}

impl Walk {
    /// Marks one element complete; returns true when that completes the whole frame.
    fn complete_one(&mut self) -> bool {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return false;
            }
            self.open.pop();
        }
        true
    }

    /// Walks on from `self.pos`. Ok(len) = a whole frame of `len` bytes.
    fn run(&mut self, buf: &[u8], limits: &Limits) -> Result<usize, Error> {
        // The frame needs at least `len` bytes: over the limit is an error at once.
        let within = |len: u64| {
            if len > limits.max_frame_len as u64 {
                Err(Error::FrameTooLong {
                    len,
                    max: limits.max_frame_len,
                })
            } else {
                Ok(())
            }
        };
        loop {
            let at = self.pos;
            let ty = *buf.get(at).ok_or(Error::Incomplete)?;
            if !TYPE_BYTES.contains(&ty) {
                return Err(Error::UnknownType(ty));
            }
            let (text, next) =
                bounded_line(buf, at + 1, limits.max_inline_len.min(limits.max_frame_len))?;
            within(next as u64)?;
            let done = match ty {
                b'+' | b'-' | b'_' | b',' | b'#' | b'(' => {
                    self.pos = next;
                    true
                }
                b':' => {
                    number(text, "integer")?;
                    self.pos = next;
                    true
                }
                b'$' | b'!' | b'=' => {
                    let len = number(text, "bulk length")?;
                    if len == -1 && ty == b'$' {
                        self.pos = next;
                    } else {
                        let len = u64::try_from(len).map_err(|_| Error::InvalidNumber {
                            what: "bulk length",
                            text: len.to_string(),
                        })?;
                        if len > limits.max_bulk_len as u64 {
                            return Err(Error::BulkTooLong {
                                len,
                                max: limits.max_bulk_len,
                            });
                        }
                        within(next as u64 + len + 2)?;
                        let end = next + len as usize;
                        if buf.len() < end + 2 {
                            self.need = end + 2;
                            return Err(Error::Incomplete);
                        }
                        if &buf[end..end + 2] != b"\r\n" {
                            return Err(Error::MissingCrlf);
                        }
                        self.pos = end + 2;
                    }
                    true
                }
                _ => {
                    // * ~ > % |
                    let len = number(text, "aggregate length")?;
                    if len == -1 && ty == b'*' {
                        self.pos = next;
                        true
                    } else {
                        let len = u64::try_from(len).map_err(|_| Error::InvalidNumber {
                            what: "aggregate length",
                            text: len.to_string(),
                        })?;
                        if len > limits.max_array_len as u64 {
                            return Err(Error::ArrayTooLong {
                                len,
                                max: limits.max_array_len,
                            });
                        }
                        let max_depth = limits.max_depth.min(MAX_DEPTH);
                        if self.open.len() + 1 >= max_depth && len > 0 {
                            return Err(Error::TooDeep(max_depth));
                        }
                        self.pos = next;
                        let elements = if ty == b'%' || ty == b'|' {
                            len * 2
                        } else {
                            len
                        };
                        // Every element takes three bytes at least (`_\r\n`), and the
                        // aggregates still open need theirs too.
                        let open: u64 = self.open.iter().sum();
                        within(next as u64 + 3 * (elements + open))?;
                        if elements > 0 {
                            self.open.push(elements);
                            false
                        } else {
                            true
                        }
                    }
                }
            };
            if done && self.complete_one() {
                return Ok(self.pos);
            }
        }
    }
}

/// Phase 1: walks the frame at the start of `buf` without allocating for its contents.
/// `Ok(len)`: the frame is complete and `len` bytes long.
pub fn check(buf: &[u8], limits: &Limits) -> Result<usize, Error> {
    Walk::default().run(buf, limits)
}

/// Phase 2: builds the frame at the start of `bytes`, which [`check`] accepted. Bulk
/// strings are slices of `bytes`. Never panics, whatever the input.
pub fn parse(bytes: &Bytes) -> Result<Frame, Error> {
    build(bytes, 0, 0).map(|(frame, _)| frame)
}

/// The deepest nesting [`parse`] builds (it recurses), whatever [`Limits::max_depth`]
/// says: `check` never accepts deeper frames, and `parse` refuses them even on input
/// `check` never saw.
pub const MAX_DEPTH: usize = 64;
const PARSE_DEPTH_GUARD: usize = MAX_DEPTH;

fn build(buf: &Bytes, at: usize, depth: usize) -> Result<(Frame, usize), Error> {
    if depth > PARSE_DEPTH_GUARD {
        return Err(Error::TooDeep(PARSE_DEPTH_GUARD));
    }
    let ty = *buf.get(at).ok_or(Error::Incomplete)?;
    let (text, next) = line(buf, at + 1)?;
    let string = || String::from_utf8_lossy(text).into_owned();
    let frame = match ty {
        b'+' => Frame::Simple(string()),
        b'-' => Frame::Error(string()),
        b':' => Frame::Integer(number(text, "integer")?),
        b'_' => Frame::Null,
        b'#' => Frame::Boolean(text == b"t"),
        b'(' => Frame::BigNumber(string()),
        b',' => Frame::Double(match text {
            b"inf" | b"+inf" => f64::INFINITY,
            b"-inf" => f64::NEG_INFINITY,
            b"nan" => f64::NAN,
            _ => std::str::from_utf8(text)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| Error::InvalidNumber {
                    what: "double",
                    text: string(),
                })?,
        }),
        b'$' | b'!' | b'=' => {
            let len = number(text, "bulk length")?;
            if len < 0 {
                return Ok((Frame::Null, next));
            }
            let end = next.checked_add(len as usize).ok_or(Error::Incomplete)?;
            if buf.len() < end + 2 {
                return Err(Error::Incomplete);
            }
            let data = buf.slice(next..end);
            let frame = match ty {
                b'$' => Frame::Bulk(data),
                b'!' => Frame::Error(String::from_utf8_lossy(&data).into_owned()),
                _ => match data.iter().position(|&b| b == b':') {
                    Some(3) => Frame::Verbatim {
                        format: String::from_utf8_lossy(&data[..3]).into_owned(),
                        text: data.slice(4..),
                    },
                    _ => Frame::Verbatim {
                        format: "txt".into(),
                        text: data,
                    },
                },
            };
            return Ok((frame, end + 2));
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let len = number(text, "aggregate length")?;
            if len < 0 {
                return Ok((Frame::Null, next));
            }
            let mut pos = next;
            // Capacity is bounded by what the input can hold, never by the declared length.
            let room = (buf.len() - pos.min(buf.len())) / 3;
            if ty == b'%' || ty == b'|' {
                let mut pairs = Vec::with_capacity((len as usize).min(room));
                for _ in 0..len {
                    let (k, p) = build(buf, pos, depth + 1)?;
                    let (v, p) = build(buf, p, depth + 1)?;
                    pairs.push((k, v));
                    pos = p;
                }
                let frame = if ty == b'%' {
                    Frame::Map(pairs)
                } else {
                    Frame::Attribute(pairs)
                };
                return Ok((frame, pos));
            }
            let mut items = Vec::with_capacity((len as usize).min(room));
            for _ in 0..len {
                let (item, p) = build(buf, pos, depth + 1)?;
                items.push(item);
                pos = p;
            }
            let frame = match ty {
                b'~' => Frame::Set(items),
                b'>' => Frame::Push(items),
                _ => Frame::Array(items),
            };
            return Ok((frame, pos));
        }
        other => return Err(Error::UnknownType(other)),
    };
    Ok((frame, next))
}

/// Decodes frames from a connection's read buffer. See the module header.
///
/// Call order: append what the socket read to the buffer, then call [`Decoder::decode`]
/// until it returns `Ok(None)`. After an `Err` the stream is unusable: answer the error
/// and close.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    walk: Walk,
    /// Walks started or resumed: lets tests prove that big frames are not rescanned.
    walks: u64,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder {
            limits,
            walk: Walk::default(),
            walks: 0,
        }
    }

    /// Changes the limits from the next frame on (a connection that authenticated gets
    /// larger ones).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many times the decoder has walked (or resumed walking) a frame.
    pub fn walks(&self) -> u64 {
        self.walks
    }

    /// Removes one complete frame from the front of `buf` and returns it; `Ok(None)` when
    /// more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if buf.len() < self.walk.need {
            return Ok(None);
        }
        if self.walk.pos == 0 && self.walk.open.is_empty() && !TYPE_BYTES.contains(&first) {
            return self.inline(buf);
        }
        self.walks += 1;
        match self.walk.run(buf, &self.limits) {
            Ok(len) => {
                self.walk = Walk::default();
                let bytes = buf.split_to(len).freeze();
                parse(&bytes).map(Some)
            }
            Err(Error::Incomplete) => {
                // Resume at `walk.pos` next time; wait for at least one more byte (or for
                // the whole bulk whose length is known).
                self.walk.need = self.walk.need.max(buf.len() + 1);
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// An inline command: a line of space-separated words, `"double"` or `'single'`
    /// quoted, ending in LF or CRLF.
    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let max = self.limits.max_inline_len.min(self.limits.max_frame_len);
        let Some(end) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > max {
                return Err(Error::InlineTooLong(max));
            }
            self.walk.need = buf.len() + 1;
            return Ok(None);
        };
        if end > max {
            return Err(Error::InlineTooLong(max));
        }
        self.walk = Walk::default();
        let line = buf.split_to(end + 1);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let words = split_inline(line)?;
        Ok(Some(Frame::Array(
            words
                .into_iter()
                .map(|w| Frame::Bulk(Bytes::from(w)))
                .collect(),
        )))
    }
}

/// Splits an inline command line into words, honouring quotes and `\` escapes inside
/// double quotes.
fn split_inline(line: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            break;
        }
        let mut word = Vec::new();
        match line[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                loop {
                    match line.get(i) {
                        None => return Err(Error::UnbalancedQuotes),
                        Some(&c) if c == quote => {
                            i += 1;
                            break;
                        }
                        Some(b'\\') if quote == b'"' && i + 1 < line.len() => {
                            word.push(match line[i + 1] {
                                b'n' => b'\n',
                                b'r' => b'\r',
                                b't' => b'\t',
                                other => other,
                            });
                            i += 2;
                        }
                        Some(&c) => {
                            word.push(c);
                            i += 1;
                        }
                    }
                }
                if line.get(i).is_some_and(|c| !c.is_ascii_whitespace()) {
                    return Err(Error::UnbalancedQuotes);
                }
            }
            _ => {
                while i < line.len() && !line[i].is_ascii_whitespace() {
                    word.push(line[i]);
                    i += 1;
                }
            }
        }
        words.push(word);
    }
    Ok(words)
}

mod frame;

#[cfg(test)]
mod tests;
