//! RESP2 and RESP3 frames (lead's interim codec).

use bytes::{Bytes, BytesMut};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    #[default]
    Resp2,
    Resp3,
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bulk_len: usize,
    pub max_array_len: usize,
    pub max_depth: usize,
    pub max_inline_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bulk_len: 64 * 1024 * 1024,
            max_array_len: 1024 * 1024,
            max_depth: 32,
            max_inline_len: 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Frame>),
    Map(Vec<(Frame, Frame)>),
    Set(Vec<Frame>),
    Double(f64),
    Boolean(bool),
    BigNumber(String),
    Verbatim { format: String, text: Bytes },
    Push(Vec<Frame>),
    Attribute(Vec<(Frame, Frame)>),
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("incomplete frame")]
    Incomplete,
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    pub fn is_incomplete(&self) -> bool {
        matches!(self, Error::Incomplete)
    }
}

fn invalid(s: impl Into<String>) -> Error {
    Error::Invalid(s.into())
}

fn line(buf: &[u8], at: usize) -> Result<(&[u8], usize), Error> {
    let rest = buf.get(at..).ok_or(Error::Incomplete)?;
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok((&rest[..i], at + i + 2)),
        None => Err(Error::Incomplete),
    }
}

fn int(b: &[u8]) -> Result<i64, Error> {
    std::str::from_utf8(b)
        .ok()
        .filter(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            invalid(format!(
                "invalid length or integer '{}'",
                String::from_utf8_lossy(b)
            ))
        })
}

/// Walks one frame at `at`; returns its end.
fn walk(buf: &[u8], at: usize, limits: &Limits, depth: usize) -> Result<usize, Error> {
    if depth > limits.max_depth {
        return Err(invalid(format!(
            "nesting deeper than {} levels",
            limits.max_depth
        )));
    }
    let ty = *buf.get(at).ok_or(Error::Incomplete)?;
    let (body, next) = line(buf, at + 1)?;
    match ty {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(next),
        b'$' | b'!' | b'=' => {
            let n = int(body)?;
            if n == -1 && ty == b'$' {
                return Ok(next);
            }
            if n < 0 {
                return Err(invalid(format!("invalid bulk length {n}")));
            }
            let n = n as usize;
            if n > limits.max_bulk_len {
                return Err(invalid(format!(
                    "bulk string of {n} bytes exceeds the limit of {}",
                    limits.max_bulk_len
                )));
            }
            let end = next + n + 2;
            if buf.len() < end {
                return Err(Error::Incomplete);
            }
            if &buf[next + n..end] != b"\r\n" {
                return Err(invalid("expected CRLF after bulk string"));
            }
            Ok(end)
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int(body)?;
            if n == -1 && ty == b'*' {
                return Ok(next);
            }
            if n < 0 {
                return Err(invalid(format!("invalid aggregate length {n}")));
            }
            let n = n as usize;
            if n > limits.max_array_len {
                return Err(invalid(format!(
                    "aggregate of {n} elements exceeds the limit of {}",
                    limits.max_array_len
                )));
            }
            let count = if ty == b'%' || ty == b'|' { n * 2 } else { n };
            let mut pos = next;
            for _ in 0..count {
                pos = walk(buf, pos, limits, depth + 1)?;
            }
            Ok(pos)
        }
        other => Err(invalid(format!("unknown frame type byte 0x{other:02x}"))),
    }
}

/// Phase 1: the length of the complete frame at the start of `buf`.
pub fn check(buf: &[u8], limits: &Limits) -> Result<usize, Error> {
    walk(buf, 0, limits, 1)
}

fn build(buf: &Bytes, at: usize) -> Result<(Frame, usize), Error> {
    let ty = *buf.get(at).ok_or(Error::Incomplete)?;
    let (body, next) = line(buf, at + 1)?;
    let text = || String::from_utf8_lossy(body).into_owned();
    Ok(match ty {
        b'+' => (Frame::Simple(text()), next),
        b'-' => (Frame::Error(text()), next),
        b':' => (Frame::Integer(int(body)?), next),
        b'_' => (Frame::Null, next),
        b'#' => (Frame::Boolean(body == b"t"), next),
        b'(' => (Frame::BigNumber(text()), next),
        b',' => {
            let s = text();
            let f = match s.as_str() {
                "inf" => f64::INFINITY,
                "-inf" => f64::NEG_INFINITY,
                "nan" => f64::NAN,
                _ => s
                    .parse()
                    .map_err(|_| invalid(format!("invalid double '{s}'")))?,
            };
            (Frame::Double(f), next)
        }
        b'$' | b'!' | b'=' => {
            let n = int(body)?;
            if n < 0 {
                return Ok((Frame::Null, next));
            }
            let n = n as usize;
            let data = buf.slice(next..next + n);
            let end = next + n + 2;
            let frame = match ty {
                b'$' => Frame::Bulk(data),
                b'!' => Frame::Error(String::from_utf8_lossy(&data).into_owned()),
                _ => {
                    let format =
                        String::from_utf8_lossy(data.get(..3).unwrap_or_default()).into_owned();
                    Frame::Verbatim {
                        format,
                        text: data.slice(4.min(data.len())..),
                    }
                }
            };
            (frame, end)
        }
        _ => {
            let n = int(body)?;
            if n < 0 {
                return Ok((Frame::Null, next));
            }
            let mut pos = next;
            if ty == b'%' || ty == b'|' {
                let mut pairs = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    let (k, p) = build(buf, pos)?;
                    let (v, p) = build(buf, p)?;
                    pairs.push((k, v));
                    pos = p;
                }
                (
                    if ty == b'%' {
                        Frame::Map(pairs)
                    } else {
                        Frame::Attribute(pairs)
                    },
                    pos,
                )
            } else {
                let mut items = Vec::with_capacity((n as usize).min(1024));
                for _ in 0..n {
                    let (f, p) = build(buf, pos)?;
                    items.push(f);
                    pos = p;
                }
                (
                    match ty {
                        b'~' => Frame::Set(items),
                        b'>' => Frame::Push(items),
                        _ => Frame::Array(items),
                    },
                    pos,
                )
            }
        }
    })
}

/// Phase 2: builds the frame `check` accepted.
pub fn parse(buf: &Bytes) -> Result<Frame, Error> {
    build(buf, 0).map(|(f, _)| f)
}

#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    need: usize,
}

impl Decoder {
    pub fn new(limits: Limits) -> Self {
        Decoder { limits, need: 0 }
    }

    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        if buf.is_empty() || buf.len() < self.need {
            return Ok(None);
        }
        if !b"+-:$*_,#(!=%~>|".contains(&buf[0]) {
            return self.inline(buf);
        }
        match check(buf, &self.limits) {
            Ok(len) => {
                self.need = 0;
                let frame = buf.split_to(len).freeze();
                parse(&frame).map(Some)
            }
            Err(Error::Incomplete) => {
                self.need = buf.len() + 1;
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn inline(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, Error> {
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            if buf.len() > self.limits.max_inline_len {
                return Err(invalid("too big inline request"));
            }
            self.need = buf.len() + 1;
            return Ok(None);
        };
        self.need = 0;
        let line = buf.split_to(end + 1);
        let text = String::from_utf8_lossy(&line);
        let args = text
            .trim_end_matches(['\r', '\n'])
            .split_whitespace()
            .map(|a| Frame::Bulk(Bytes::copy_from_slice(a.as_bytes())))
            .collect();
        Ok(Some(Frame::Array(args)))
    }
}

impl Frame {
    pub fn into_args(self) -> Result<Vec<Bytes>, Error> {
        match self {
            Frame::Array(items) => items
                .into_iter()
                .map(|f| match f {
                    Frame::Bulk(b) => Ok(b),
                    Frame::Simple(s) => Ok(Bytes::from(s)),
                    _ => Err(invalid("expected an array of bulk strings")),
                })
                .collect(),
            _ => Err(invalid("expected an array of bulk strings")),
        }
    }

    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let v3 = version == Version::Resp3;
        let head = |out: &mut Vec<u8>, t: u8, n: usize| {
            out.push(t);
            out.extend_from_slice(n.to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
        };
        let bulk = |out: &mut Vec<u8>, b: &[u8]| {
            head(out, b'$', b.len());
            out.extend_from_slice(b);
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Frame::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Frame::Integer(i) => {
                out.push(b':');
                let _ = std::io::Write::write_fmt(out, format_args!("{i}"));
                out.extend_from_slice(b"\r\n");
            }
            Frame::Bulk(b) => bulk(out, b),
            Frame::Null => out.extend_from_slice(if v3 { b"_\r\n" } else { b"$-1\r\n" }),
            Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
                let t = match (self, v3) {
                    (Frame::Set(_), true) => b'~',
                    (Frame::Push(_), true) => b'>',
                    _ => b'*',
                };
                head(out, t, items.len());
                for i in items {
                    i.encode(version, out);
                }
            }
            Frame::Map(pairs) | Frame::Attribute(pairs) => {
                if v3 {
                    head(
                        out,
                        if matches!(self, Frame::Map(_)) {
                            b'%'
                        } else {
                            b'|'
                        },
                        pairs.len(),
                    );
                } else {
                    head(out, b'*', pairs.len() * 2);
                }
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
            Frame::Double(f) => {
                let s = if f.is_nan() {
                    "nan".to_string()
                } else if f.is_infinite() {
                    if *f > 0.0 {
                        "inf".into()
                    } else {
                        "-inf".into()
                    }
                } else {
                    f.to_string()
                };
                if v3 {
                    out.push(b',');
                    out.extend_from_slice(s.as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else {
                    bulk(out, s.as_bytes());
                }
            }
            Frame::Boolean(b) => {
                if v3 {
                    out.extend_from_slice(if *b { b"#t\r\n" } else { b"#f\r\n" });
                } else {
                    Frame::Integer(i64::from(*b)).encode(version, out);
                }
            }
            Frame::BigNumber(s) => {
                if v3 {
                    out.push(b'(');
                    out.extend_from_slice(s.as_bytes());
                    out.extend_from_slice(b"\r\n");
                } else {
                    bulk(out, s.as_bytes());
                }
            }
            Frame::Verbatim { format, text } => {
                if v3 {
                    head(out, b'=', text.len() + 4);
                    out.extend_from_slice(format.as_bytes());
                    out.push(b':');
                    out.extend_from_slice(text);
                    out.extend_from_slice(b"\r\n");
                } else {
                    bulk(out, text);
                }
            }
        }
    }
}
