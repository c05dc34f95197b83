//! The backend bridge's wire format: what a node POSTs to `--backend-url` for each event
//! of a WebSocket connection, and what the bridge (`client/python`, module
//! `switchboard_channels`, which runs the project's Django Channels consumer) answers.
//!
//! A call is one JSON [`Call`], signed: the header [`SIGNATURE_HEADER`] carries
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." followed by the body>` with the
//! shared `--backend-secret`; the bridge refuses a call that is unsigned, wrongly signed
//! or older than its window. The answer is one JSON [`Answer`]: what the consumer did,
//! in order ([`Action`]).
//!
//! Calls of one connection are made one at a time, in order: `connect` (after the node
//! checked the token), a `receive` per client frame that is not a Switchboard op, then
//! `disconnect` (at least once, also from another node when the connection's node died;
//! the bridge drops repeats by connection id).

use serde::{Deserialize, Serialize};

/// The version of this format, sent in every call (`v`).
pub const BRIDGE_VERSION: u32 = 1;

/// The header that carries a call's signature.
pub const SIGNATURE_HEADER: &str = "x-switchboard-signature";

/// Which event of a connection a call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The client opened the connection (`websocket.connect`); the answer accepts or
    /// rejects it.
    Connect,
    /// A frame from the client that is not a Switchboard op (`websocket.receive`).
    Receive,
    /// The connection ended (`websocket.disconnect`).
    Disconnect,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Receive => "receive",
            EventKind::Disconnect => "disconnect",
        }
    }
}

/// One call, as the node sends it. `scope` is the connection's scope, rendered once at
/// connect (see the node's `backend::scope`) and sent as it is with every call.
#[derive(Debug, Serialize)]
pub struct Call<'a> {
    pub v: u32,
    #[serde(rename = "type")]
    pub kind: EventKind,
    /// The connection's id, unique in the cluster.
    pub connection: &'a str,
    /// Its channel name (`switchboard.conn!<id>`): the consumer's `self.channel_name`.
    pub channel: &'a str,
    /// The node that holds (or held) it.
    pub node: u64,
    /// The WebSocket port's address of the node making the call (the scope's `server`,
    /// where the connection's scope does not say it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<(String, u16)>,
    /// The user the node verified the token of.
    pub user: &'a str,
    /// The call's number within the connection: 0 for `connect`, then one more per call;
    /// absent from a disconnect another node makes for a dead one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// path, query_string, headers, client, server, scheme, subprotocols.
    pub scope: &'a serde_json::value::RawValue,
    /// A text frame's content (`receive`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<&'a str>,
    /// A binary frame's content, base64 (`receive`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// The close code (`disconnect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Why it ended (`disconnect`): `closed` (by the client or the node), `rejected`
    /// (the consumer refused the connect), `node_down`, `drained`, `removed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'a str>,
    /// The presence event of its end, when a purge ended it (`disconnect`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub presence_event: Option<&'a str>,
}

/// The bridge's answer: what the consumer did, in order. `error`: the consumer raised
/// (its text). `duplicate`: a `disconnect` the bridge had already handled.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    #[serde(default)]
    pub actions: Vec<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate: bool,
}

/// One thing the consumer did, as the ASGI messages it sent and its channel-layer calls
/// on its own channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// `websocket.accept`.
    Accept {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        subprotocol: Option<String>,
    },
    /// `websocket.send`: a text frame, or bytes (base64) as a binary frame.
    Send {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        bytes: Option<String>,
    },
    /// `channel_layer.group_add(group, self.channel_name)`.
    GroupAdd { group: String },
    /// `channel_layer.group_discard(group, self.channel_name)`.
    GroupDiscard { group: String },
    /// `websocket.close`.
    Close {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_parses_from_the_bridges_json() {
        let answer: Answer = serde_json::from_str(
            r#"{"actions": [{"type": "group_add", "group": "user_5"}, {"type": "accept"},
                {"type": "send", "text": "{\"a\": 1}"}, {"type": "close", "code": 4000}]}"#,
        )
        .expect("parses");
        assert_eq!(
            answer.actions,
            vec![
                Action::GroupAdd {
                    group: "user_5".into()
                },
                Action::Accept { subprotocol: None },
                Action::Send {
                    text: Some(r#"{"a": 1}"#.into()),
                    bytes: None
                },
                Action::Close {
                    code: Some(4000),
                    reason: None
                },
            ]
        );
        assert!(serde_json::from_str::<Answer>(r#"{"actions": [{"type": "explode"}]}"#).is_err());
        let empty: Answer = serde_json::from_str("{}").expect("parses");
        assert_eq!(empty, Answer::default());
    }

    #[test]
    fn a_call_serializes_with_its_scope_as_sent() {
        let scope = serde_json::value::RawValue::from_string(r#"{"path":"/ws/"}"#.into())
            .expect("valid JSON");
        let call = Call {
            v: BRIDGE_VERSION,
            kind: EventKind::Receive,
            connection: "1-a-2",
            channel: "switchboard.conn!1-a-2",
            node: 1,
            server: None,
            user: "42",
            seq: Some(3),
            scope: &scope,
            text: Some("hi"),
            bytes: None,
            code: None,
            reason: None,
            presence_event: None,
        };
        assert_eq!(
            serde_json::to_string(&call).expect("serializes"),
            r#"{"v":1,"type":"receive","connection":"1-a-2","channel":"switchboard.conn!1-a-2","node":1,"user":"42","seq":3,"scope":{"path":"/ws/"},"text":"hi"}"#
        );
    }
}
