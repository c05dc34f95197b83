//! A connection's ASGI scope as the bridge rebuilds it for every call: encoded once, at
//! connect, into a few bytes the connection keeps (and its presence record, on every node
//! that holds it, so that another node can make its disconnect call), and written out as
//! JSON for each call.
//!
//! It carries what the project's middleware and router read: the path and the query
//! string as the client sent them, the request headers named by `--backend-headers`
//! (Host, Origin, Cookie, ...; the handshake's own are never needed), the client's
//! address, whether the port is TLS (`wss`), and the subprotocols the client asked for.
//! The server's address is the calling node's, sent with each call.
//!
//! The encoding ([`encode`], [`to_json`]) is compact because every bridged connection
//! keeps it: a version byte, then each part length-prefixed, header names that are known
//! as one byte, the client's address in binary (about a hundred bytes less than its JSON).

use std::net::{IpAddr, SocketAddr};

use serde_json::json;

/// What the scope is made of.
#[derive(Debug)]
pub struct Parts<'a> {
    pub path: &'a str,
    pub query: &'a str,
    /// Every request header, names in lower case.
    pub headers: &'a [(String, String)],
    /// The names to keep (`--backend-headers`, lower case).
    pub keep: &'a [String],
    pub client: SocketAddr,
    pub tls: bool,
}

/// The version of the encoding (its first byte).
const VERSION: u8 = 1;
/// Header names written as one byte: their index here. Not derived from
/// `config::DEFAULT_BACKEND_HEADERS` (whose names it starts with): scopes are replicated
/// in the presence registry, so these indices are a format of version [`VERSION`] and
/// never change, whatever the default becomes. Append only.
const KNOWN: &[&str] = &[
    "host",
    "origin",
    "cookie",
    "user-agent",
    "authorization",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-real-ip",
    "accept-language",
    "sec-websocket-protocol",
];
/// A header name written out (after this byte, its length and bytes).
const LITERAL: u8 = 0xff;

/// The scope of `parts`, encoded.
pub fn encode(parts: &Parts<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + parts.path.len() + parts.query.len());
    out.push(VERSION);
    out.push(u8::from(parts.tls));
    put(&mut out, parts.path.as_bytes());
    put(&mut out, parts.query.as_bytes());
    let kept: Vec<&(String, String)> = parts
        .headers
        .iter()
        .filter(|(name, _)| {
            name == "sec-websocket-protocol" || parts.keep.iter().any(|k| k == name)
        })
        .take(usize::from(u8::MAX))
        .collect();
    out.push(kept.len() as u8);
    for (name, value) in kept {
        match KNOWN.iter().position(|k| k == name) {
            Some(i) => out.push(i as u8),
            None => {
                out.push(LITERAL);
                put(&mut out, name.as_bytes());
            }
        }
        put(&mut out, value.as_bytes());
    }
    match parts.client.ip() {
        IpAddr::V4(ip) => {
            out.push(4);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(6);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&parts.client.port().to_be_bytes());
    out
}

/// A length (u16, big-endian; longer parts are cut, which a request head of at most
/// 8 KiB never needs) and the bytes.
fn put(out: &mut Vec<u8>, bytes: &[u8]) {
    let len = bytes.len().min(usize::from(u16::MAX));
    out.extend_from_slice(&(len as u16).to_be_bytes());
    out.extend_from_slice(&bytes[..len]);
}

/// Reads what [`encode`] wrote.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (first, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*first)
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (taken, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(taken)
    }

    fn part(&mut self) -> Option<&'a str> {
        let len = self.take(2)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// The scope's JSON, as each call carries it (`{}` for bytes that are not a scope).
pub fn to_json(scope: &[u8]) -> String {
    decode(scope).unwrap_or_else(|| "{}".to_owned())
}

fn decode(scope: &[u8]) -> Option<String> {
    let mut r = Reader(scope);
    if r.byte()? != VERSION {
        return None;
    }
    let tls = r.byte()? != 0;
    let path = r.part()?;
    let query = r.part()?;
    let mut headers = Vec::new();
    let mut subprotocols = Vec::new();
    for _ in 0..r.byte()? {
        let name = match r.byte()? {
            LITERAL => r.part()?,
            i => KNOWN.get(usize::from(i))?,
        };
        let value = r.part()?;
        if name == "sec-websocket-protocol" {
            subprotocols.extend(value.split(',').map(str::trim).filter(|p| !p.is_empty()));
        } else {
            headers.push([name, value]);
        }
    }
    let ip: IpAddr = match r.byte()? {
        4 => <[u8; 4]>::try_from(r.take(4)?).ok()?.into(),
        6 => <[u8; 16]>::try_from(r.take(16)?).ok()?.into(),
        _ => return None,
    };
    let port = r.take(2)?;
    let port = u16::from_be_bytes([port[0], port[1]]);
    let mut scope = json!({
        "path": path,
        "query_string": query,
        "headers": headers,
        "client": [ip.to_string(), port],
    });
    if tls {
        scope["scheme"] = "wss".into();
    }
    if !subprotocols.is_empty() {
        scope["subprotocols"] = subprotocols.into();
    }
    Some(scope.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_keeps_the_named_headers_and_the_subprotocols() {
        let headers = vec![
            ("host".to_owned(), "api.example.com".to_owned()),
            ("origin".to_owned(), "https://app.example.com".to_owned()),
            ("x-custom".to_owned(), "kept".to_owned()),
            ("sec-websocket-key".to_owned(), "abc".to_owned()),
            ("sec-websocket-protocol".to_owned(), "v1, v2".to_owned()),
        ];
        let keep = vec![
            "host".to_owned(),
            "origin".to_owned(),
            "x-custom".to_owned(),
        ];
        let scope = encode(&Parts {
            path: "/ws/notifications/",
            query: "token=a%20b",
            headers: &headers,
            keep: &keep,
            client: "10.0.0.5:4242".parse().expect("addr"),
            tls: false,
        });
        let value: serde_json::Value = serde_json::from_str(&to_json(&scope)).expect("JSON");
        assert_eq!(
            value,
            json!({
                "path": "/ws/notifications/",
                "query_string": "token=a%20b",
                "headers": [["host", "api.example.com"], ["origin", "https://app.example.com"], ["x-custom", "kept"]],
                "client": ["10.0.0.5", 4242],
                "subprotocols": ["v1", "v2"],
            })
        );
        // An IPv6 client on a TLS port; nothing else.
        let scope = encode(&Parts {
            path: "/",
            query: "",
            headers: &[],
            keep: &[],
            client: "[::1]:9".parse().expect("addr"),
            tls: true,
        });
        let value: serde_json::Value = serde_json::from_str(&to_json(&scope)).expect("JSON");
        assert_eq!(
            value,
            json!({"path": "/", "query_string": "", "headers": [], "client": ["::1", 9], "scheme": "wss"})
        );
        // Not a scope: an empty one, never a panic.
        assert_eq!(to_json(&[]), "{}");
        assert_eq!(to_json(&[1, 0, 0, 9]), "{}");
        assert_eq!(to_json(&scope[..scope.len() - 1]), "{}");
    }
}
