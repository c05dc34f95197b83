//! Server-side control of live connections, cluster-wide (scope `publish`):
//!
//! | route | body | answer |
//! |---|---|---|
//! | `POST /v1/disconnect` | `{"user": "42"}` or `{"connection": ID}`, `"code"` (4000-4999, default 4000), `"reason"` | `{"disconnected": N}` |
//! | `POST /v1/subscribe` | `{"user" \| "connection", "group": G}` | `{"subscribed": N}` |
//! | `POST /v1/unsubscribe` | `{"user" \| "connection", "group": G}` | `{"unsubscribed": N}` |
//! | `POST /v1/revoke` | `{"user": "42", "before": UNIX_SECONDS}` (default now: every token issued up to this second) | `{"user", "before", "until", "disconnected": N}` |
//!
//! A user's connections are acted on on every node (those that did not answer are
//! listed as `"unreachable"`); one connection on the node its id names. A revocation is
//! committed through Raft first (every node refuses the user's older tokens at connect
//! and `refresh`, for `--revocation-ttl`), then the user's open sockets are closed with
//! 4001. The body's checks are [`parse`], pure.

use serde::Deserialize;
use serde_json::{Value, json};
use switchboard_proto::peer::{ConnAction, ConnTarget};

use super::{NodeView, Reply, json_reply};
use crate::backend::answer::{MAX_CLOSE_REASON, truncate};
use crate::broker::MAX_GROUP_NAME;
use crate::cluster::ActError;
use crate::presence::revocations::MAX_REVOCATIONS;

/// The largest control body read.
pub const MAX_CONTROL_BODY: usize = 16 * 1024;
/// The close code of a disconnect that names none.
pub const DEFAULT_KICK_CODE: u16 = 4000;

/// Which control route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Disconnect,
    Subscribe,
    Unsubscribe,
    Revoke,
}

impl Kind {
    /// The key of the count in the answer.
    fn counted(self) -> &'static str {
        match self {
            Kind::Disconnect | Kind::Revoke => "disconnected",
            Kind::Subscribe => "subscribed",
            Kind::Unsubscribe => "unsubscribed",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    user: Option<Value>,
    connection: Option<String>,
    group: Option<String>,
    code: Option<u16>,
    reason: Option<String>,
    before: Option<u64>,
}

/// What a valid body asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Act(ConnTarget, ConnAction),
    /// Revoke the user's tokens issued before this time (Unix seconds).
    Revoke {
        user: String,
        before: u64,
    },
}

/// The request of a `kind` body, at `now` (Unix seconds), or why not (400).
pub fn parse(kind: Kind, body: &[u8], now: u64) -> Result<Request, String> {
    let body: Body =
        serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}"))?;
    let user = match body.user.as_ref().map(crate::names::user_id) {
        None => None,
        Some(Some(user)) => Some(user?),
        Some(None) => return Err("\"user\" is a user id: a string or a number".into()),
    };
    if kind == Kind::Revoke {
        let user = user.ok_or("give \"user\": whose tokens to revoke")?;
        if body.connection.is_some() || body.group.is_some() || body.code.is_some() {
            return Err("a revocation takes \"user\" and \"before\" only".into());
        }
        // Now by default: every token issued up to this second (a token's `iat` has
        // whole seconds, so one issued earlier in this second counts as before).
        return Ok(Request::Revoke {
            user,
            before: body.before.unwrap_or(now + 1),
        });
    }
    let target = match (user, body.connection) {
        (Some(user), None) => ConnTarget::User(user),
        (None, Some(connection)) if !connection.is_empty() => ConnTarget::Connection(
            connection
                .strip_prefix(switchboard_proto::peer::CONNECTION_CHANNEL)
                .unwrap_or(&connection)
                .to_owned(),
        ),
        _ => return Err("give exactly one of \"user\" and \"connection\"".into()),
    };
    if body.before.is_some() {
        return Err("\"before\" belongs to /v1/revoke".into());
    }
    let action = if kind == Kind::Disconnect {
        {
            if body.group.is_some() {
                return Err("a disconnect takes no \"group\"".into());
            }
            let code = body.code.unwrap_or(DEFAULT_KICK_CODE);
            if !(4000..=4999).contains(&code) {
                return Err(format!(
                    "\"code\" {code} is not an application close code (4000-4999)"
                ));
            }
            ConnAction::Close {
                code,
                reason: truncate(body.reason.unwrap_or_default(), MAX_CLOSE_REASON),
            }
        }
    } else {
        {
            if body.code.is_some() || body.reason.is_some() {
                return Err("a subscription takes \"group\", not \"code\" or \"reason\"".into());
            }
            let group = body.group.ok_or("give \"group\"")?;
            if let Err(e) = crate::names::check(&group, MAX_GROUP_NAME) {
                return Err(format!("bad group name {group:?}: {e}"));
            }
            if kind == Kind::Subscribe {
                ConnAction::Subscribe(group)
            } else {
                ConnAction::Unsubscribe(group)
            }
        }
    };
    Ok(Request::Act(target, action))
}

/// Serves a control route.
pub async fn serve(
    view: &NodeView,
    plane: &super::plane::Plane,
    sender: super::plane::Sender,
    kind: Kind,
    body: hyper::body::Incoming,
) -> Reply {
    // The body's bytes count as in flight until the request is answered.
    let (body, _in_flight) = match plane
        .read_body(body, MAX_CONTROL_BODY, "the control API's limit", sender)
        .await
    {
        Ok(read) => read,
        Err((status, reason)) => return json_reply(status, &json!({ "error": reason })),
    };
    let request = match parse(kind, &body, crate::clock::unix_secs()) {
        Ok(request) => request,
        Err(reason) => return json_reply(400, &json!({ "error": reason })),
    };
    match request {
        Request::Act(target, action) => act(view, kind, target, action).await,
        Request::Revoke { user, before } => revoke(view, user, before).await,
    }
}

async fn act(view: &NodeView, kind: Kind, target: ConnTarget, action: ConnAction) -> Reply {
    match view.router.act(target, action).await {
        Ok(acted) => {
            let mut answer = json!({ kind.counted(): acted.reached });
            if !acted.silent.is_empty() {
                answer["unreachable"] = json!(acted.silent);
            }
            json_reply(200, &answer)
        }
        Err(e @ ActError::NotAConnection(_)) => json_reply(400, &json!({ "error": e.to_string() })),
        Err(e) => json_reply(503, &json!({ "error": e.to_string() })),
    }
}

async fn revoke(view: &NodeView, user: String, before: u64) -> Reply {
    if view.replica.read().revocations.len() >= MAX_REVOCATIONS {
        return json_reply(
            507,
            &json!({ "error": format!("{MAX_REVOCATIONS} users are revoked already: wait for some to expire (--revocation-ttl)") }),
        );
    }
    let ttl = view.config.revocation_ttl;
    if let Err(e) = view.consensus.revoke(&user, before, ttl).await {
        return json_reply(503, &json!({ "error": format!("not revoked: {e}") }));
    }
    let target = ConnTarget::User(user.clone());
    let (disconnected, silent) = match view.router.act(target, ConnAction::Revoke { before }).await
    {
        Ok(acted) => (acted.reached, acted.silent),
        Err(_) => (0, Vec::new()),
    };
    let mut answer = json!({
        "user": user,
        "before": before,
        "until": before.saturating_add(ttl.as_secs()),
        "disconnected": disconnected,
    });
    if !silent.is_empty() {
        // Their sockets close when they apply the revocation.
        answer["unreachable"] = json!(silent);
    }
    json_reply(200, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(kind: Kind, body: &str) -> Request {
        parse(kind, body.as_bytes(), 1_000).expect("valid")
    }

    fn bad(kind: Kind, body: &str) -> String {
        parse(kind, body.as_bytes(), 1_000).expect_err("refused")
    }

    #[test]
    fn bodies_name_their_target_and_action() {
        assert_eq!(
            ok(Kind::Disconnect, r#"{"user": 42}"#),
            Request::Act(
                ConnTarget::User("42".into()),
                ConnAction::Close {
                    code: 4000,
                    reason: String::new()
                }
            )
        );
        assert_eq!(
            ok(
                Kind::Disconnect,
                r#"{"connection": "switchboard.conn!1-a-2", "code": 4321, "reason": "bye"}"#
            ),
            Request::Act(
                ConnTarget::Connection("1-a-2".into()),
                ConnAction::Close {
                    code: 4321,
                    reason: "bye".into()
                }
            )
        );
        assert_eq!(
            ok(Kind::Subscribe, r#"{"user": "7", "group": "room_1"}"#),
            Request::Act(
                ConnTarget::User("7".into()),
                ConnAction::Subscribe("room_1".into())
            )
        );
        assert_eq!(
            ok(
                Kind::Unsubscribe,
                r#"{"connection": "1-a-2", "group": "g"}"#
            ),
            Request::Act(
                ConnTarget::Connection("1-a-2".into()),
                ConnAction::Unsubscribe("g".into())
            )
        );
        assert_eq!(
            ok(Kind::Revoke, r#"{"user": "42"}"#),
            Request::Revoke {
                user: "42".into(),
                before: 1_001
            }
        );
        assert_eq!(
            ok(Kind::Revoke, r#"{"user": "42", "before": 5}"#),
            Request::Revoke {
                user: "42".into(),
                before: 5
            }
        );
    }

    #[test]
    fn bad_bodies_say_what_is_wrong() {
        assert!(bad(Kind::Disconnect, "{").contains("malformed"));
        assert!(bad(Kind::Disconnect, "{}").contains("exactly one"));
        assert!(
            bad(Kind::Disconnect, r#"{"user": "1", "connection": "c"}"#).contains("exactly one")
        );
        assert!(bad(Kind::Disconnect, r#"{"user": "1", "code": 1000}"#).contains("4000-4999"));
        assert!(bad(Kind::Disconnect, r#"{"user": []}"#).contains("string or a number"));
        assert!(bad(Kind::Subscribe, r#"{"user": "1"}"#).contains("group"));
        assert!(bad(Kind::Subscribe, r#"{"user": "1", "group": ""}"#).contains("bad group"));
        assert!(bad(Kind::Revoke, r#"{"connection": "c"}"#).contains("user"));
        assert!(bad(Kind::Disconnect, r#"{"user": "1", "surprise": 1}"#).contains("unknown field"));
        assert!(bad(Kind::Disconnect, r#"{"user": "1", "before": 1}"#).contains("revoke"));
    }
}
