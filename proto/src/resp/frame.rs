//! A [`Frame`]'s constructors, its arguments as a command, and its encoding for RESP2
//! or RESP3 ([`Frame::encode`]).

use bytes::Bytes;

use super::{Error, Frame, Version};

impl Frame {
    /// A client command's arguments: an array of bulk (or simple) strings.
    pub fn into_args(self) -> Result<Vec<Bytes>, Error> {
        match self {
            Frame::Array(items) => items
                .into_iter()
                .map(|f| match f {
                    Frame::Bulk(b) => Ok(b),
                    Frame::Simple(s) => Ok(Bytes::from(s)),
                    _ => Err(Error::NotACommand),
                })
                .collect(),
            _ => Err(Error::NotACommand),
        }
    }

    /// `+OK`.
    pub fn ok() -> Frame {
        Frame::Simple("OK".into())
    }

    /// An error reply; `message` starts with its code (`ERR ...`).
    pub fn error(message: impl Into<String>) -> Frame {
        Frame::Error(message.into())
    }

    /// A bulk string.
    pub fn bulk(bytes: impl Into<Bytes>) -> Frame {
        Frame::Bulk(bytes.into())
    }

    /// Appends the frame, encoded for `version`, to `out`. In RESP2, RESP3-only types are
    /// downgraded as redis-server does: map and attribute become a flat array of keys and
    /// values, set and push an array, null a null bulk, a boolean the integer 1 or 0, a
    /// double or big number a bulk string of its text, a verbatim string a bulk string of
    /// its text.
    pub fn encode(&self, version: Version, out: &mut Vec<u8>) {
        let v3 = version == Version::Resp3;
        match self {
            Frame::Simple(s) => line_frame(out, b'+', s.as_bytes()),
            Frame::Error(s) => line_frame(out, b'-', s.as_bytes()),
            Frame::Integer(i) => {
                out.push(b':');
                let _ = std::io::Write::write_fmt(out, format_args!("{i}\r\n"));
            }
            Frame::Bulk(b) => bulk_frame(out, b),
            Frame::Null => out.extend_from_slice(if v3 { b"_\r\n" } else { b"$-1\r\n" }),
            Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
                let ty = match (self, v3) {
                    (Frame::Set(_), true) => b'~',
                    (Frame::Push(_), true) => b'>',
                    _ => b'*',
                };
                header(out, ty, items.len());
                for item in items {
                    item.encode(version, out);
                }
            }
            Frame::Map(pairs) | Frame::Attribute(pairs) => {
                match (self, v3) {
                    (Frame::Map(_), true) => header(out, b'%', pairs.len()),
                    (_, true) => header(out, b'|', pairs.len()),
                    _ => header(out, b'*', pairs.len() * 2),
                }
                for (k, v) in pairs {
                    k.encode(version, out);
                    v.encode(version, out);
                }
            }
            Frame::Double(f) => {
                let text = if f.is_nan() {
                    "nan".to_owned()
                } else if f.is_infinite() {
                    if *f > 0.0 { "inf" } else { "-inf" }.to_owned()
                } else {
                    format!("{f}")
                };
                if v3 {
                    line_frame(out, b',', text.as_bytes());
                } else {
                    bulk_frame(out, text.as_bytes());
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
                    line_frame(out, b'(', s.as_bytes());
                } else {
                    bulk_frame(out, s.as_bytes());
                }
            }
            Frame::Verbatim { format, text } => {
                if v3 {
                    header(out, b'=', text.len() + 4);
                    let mut f = format.as_bytes().to_vec();
                    f.resize(3, b' ');
                    out.extend_from_slice(&f);
                    out.push(b':');
                    out.extend_from_slice(text);
                    out.extend_from_slice(b"\r\n");
                } else {
                    bulk_frame(out, text);
                }
            }
        }
    }
}

fn header(out: &mut Vec<u8>, ty: u8, len: usize) {
    out.push(ty);
    let _ = std::io::Write::write_fmt(out, format_args!("{len}\r\n"));
}

/// A one-line frame; CR and LF inside are replaced by spaces so the line stays one line.
fn line_frame(out: &mut Vec<u8>, ty: u8, text: &[u8]) {
    out.push(ty);
    out.extend(
        text.iter()
            .map(|&b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
    );
    out.extend_from_slice(b"\r\n");
}

fn bulk_frame(out: &mut Vec<u8>, bytes: &[u8]) {
    header(out, b'$', bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}
