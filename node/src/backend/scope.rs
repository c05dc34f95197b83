//! A connection's ASGI scope as the bridge rebuilds it for every call: rendered once, at
//! connect, into one JSON text the connection keeps (its only allocation for the
//! bridge) and sends as it is with each call.
//!
//! It carries what the project's middleware and router read: the path and the query
//! string as the client sent them, the request headers named by `--backend-headers`
//! (Host, Origin, Cookie, ...; the handshake's own are never needed), the client's and
//! the server's addresses, the scheme (`wss`; absent: `ws`), and the subprotocols the
//! client asked for (absent: none).

use std::net::SocketAddr;

use serde_json::json;
use serde_json::value::RawValue;

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
    pub server: SocketAddr,
    pub tls: bool,
}

/// The scope of `parts`, as JSON.
pub fn render(parts: &Parts<'_>) -> Box<RawValue> {
    let headers: Vec<[&str; 2]> = parts
        .headers
        .iter()
        .filter(|(name, _)| parts.keep.iter().any(|k| k == name))
        .map(|(name, value)| [name.as_str(), value.as_str()])
        .collect();
    let subprotocols: Vec<&str> = parts
        .headers
        .iter()
        .filter(|(name, _)| name == "sec-websocket-protocol")
        .flat_map(|(_, value)| value.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    let mut scope = json!({
        "path": parts.path,
        "query_string": parts.query,
        "headers": headers,
        "client": [parts.client.ip().to_string(), parts.client.port()],
        "server": [parts.server.ip().to_string(), parts.server.port()],
    });
    // Only when not the default (`ws`, none): every bridged connection keeps its scope,
    // on every node that holds its presence.
    if parts.tls {
        scope["scheme"] = "wss".into();
    }
    if !subprotocols.is_empty() {
        scope["subprotocols"] = subprotocols.into();
    }
    to_raw(scope.to_string())
}

/// JSON text as a raw value (the text is JSON this module wrote, or a stored scope).
pub fn to_raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| empty())
}

/// The scope of a connection nothing is known of.
pub fn empty() -> Box<RawValue> {
    #[allow(clippy::expect_used)]
    RawValue::from_string("{}".into()).expect("valid JSON")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scope_keeps_the_named_headers_and_the_subprotocols() {
        let headers = vec![
            ("host".to_owned(), "api.example.com".to_owned()),
            ("origin".to_owned(), "https://app.example.com".to_owned()),
            ("sec-websocket-key".to_owned(), "abc".to_owned()),
            ("sec-websocket-protocol".to_owned(), "v1, v2".to_owned()),
        ];
        let keep = vec!["host".to_owned(), "origin".to_owned()];
        let scope = render(&Parts {
            path: "/ws/notifications/",
            query: "token=a%20b",
            headers: &headers,
            keep: &keep,
            client: "10.0.0.5:4242".parse().expect("addr"),
            server: "127.0.0.1:8001".parse().expect("addr"),
            tls: false,
        });
        let value: serde_json::Value = serde_json::from_str(scope.get()).expect("JSON");
        assert_eq!(
            value,
            json!({
                "path": "/ws/notifications/",
                "query_string": "token=a%20b",
                "headers": [["host", "api.example.com"], ["origin", "https://app.example.com"]],
                "client": ["10.0.0.5", 4242],
                "server": ["127.0.0.1", 8001],
                "subprotocols": ["v1", "v2"],
            })
        );
    }
}
