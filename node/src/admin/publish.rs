//! `POST /v1/publish` and `POST /v1/broadcast`: publishing over HTTP.
//!
//! Bodies are JSON, read whole but bounded ([`body_limit`]: about twice `--max-payload`,
//! whether sent with `Content-Length` or chunked; see [`Plane::read_body`]). The
//! decisions (what a body asks, what is wrong with it) are pure functions, tested
//! without sockets; [`serve`] does the IO.
//!
//! With an `idempotency_key`, each `(key, group)` pair is claimed through Raft before
//! anything is published (`crate::presence::claims`): a retry with the same key on any
//! node within 5 minutes publishes nothing to the groups already claimed, and answers
//! `"duplicate": true` for them. A publish that fails gives its claims back. A key the
//! cluster's table has no room for is not published (`503`, retry later), and one
//! token's keys are bounded per node and window (`Plane::claim_room`).

use std::time::Instant;

use base64::Engine;
use bytes::Bytes;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{Value, json};

use super::plane::{Plane, Sender};
use super::{NodeView, Reply, json_reply};
use crate::broker::MAX_GROUP_NAME;
use crate::history::HistoryError;
use crate::presence::claims::{Claimed, MAX_CLAIM_KEY};
use crate::router::Publish;

/// Bytes a body may have beyond twice the payload (the JSON around it, the groups).
pub const BODY_SLACK: usize = 64 * 1024;
/// Groups one broadcast may name.
pub const MAX_BROADCAST_GROUPS: usize = 1000;
/// Longest idempotency key.
pub const MAX_IDEMPOTENCY_KEY: usize = MAX_CLAIM_KEY - MAX_GROUP_NAME - 1;

/// The largest body taken with `--max-payload` `max_payload`: a payload escaped in JSON
/// or in base64 fits in twice its size, unless most of it is control characters.
pub fn body_limit(max_payload: usize) -> usize {
    max_payload.saturating_mul(2).saturating_add(BODY_SLACK)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    group: Option<String>,
    groups: Option<Vec<String>>,
    data: Option<String>,
    b64data: Option<String>,
    idempotency_key: Option<String>,
}

/// What a valid body asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub groups: Vec<String>,
    pub payload: Bytes,
    pub idempotency_key: Option<String>,
}

/// Why a body is refused: the status and the reason.
pub type Refusal = (u16, String);

fn bad(reason: impl Into<String>) -> Refusal {
    (400, reason.into())
}

/// Reads a body of `/v1/publish` (`broadcast`: of `/v1/broadcast`).
pub fn parse(body: &[u8], broadcast: bool, max_payload: usize) -> Result<Request, Refusal> {
    let body: Body =
        serde_json::from_slice(body).map_err(|e| bad(format!("malformed JSON body: {e}")))?;
    let groups = match (broadcast, body.group, body.groups) {
        (false, Some(group), None) => vec![group],
        (true, None, Some(groups)) => groups,
        (false, _, _) => return Err(bad("give \"group\": the group to publish to")),
        (true, _, _) => return Err(bad("give \"groups\": the groups to publish to")),
    };
    if groups.is_empty() {
        return Err(bad("\"groups\" is empty"));
    }
    if groups.len() > MAX_BROADCAST_GROUPS {
        return Err(bad(format!(
            "more than {MAX_BROADCAST_GROUPS} groups in one broadcast"
        )));
    }
    for group in &groups {
        if let Err(e) = crate::names::check(group, MAX_GROUP_NAME) {
            return Err(bad(format!("bad group name {group:?}: {e}")));
        }
    }
    let payload = match (body.data, body.b64data) {
        (Some(text), None) => Bytes::from(text),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map(Bytes::from)
            .map_err(|e| bad(format!("\"b64data\" is not base64: {e}")))?,
        _ => return Err(bad("give exactly one of \"data\" (text) and \"b64data\"")),
    };
    if payload.len() > max_payload {
        return Err((
            413,
            format!(
                "payload of {} bytes is over --max-payload ({max_payload})",
                payload.len()
            ),
        ));
    }
    if let Some(key) = &body.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY)
    {
        return Err(bad(format!(
            "\"idempotency_key\" must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
        )));
    }
    Ok(Request {
        groups,
        payload,
        idempotency_key: body.idempotency_key,
    })
}

/// The claim key of one group of a keyed publish.
pub fn claim_key(key: &str, group: &str) -> String {
    format!("{key}\n{group}")
}

fn refused((status, reason): Refusal) -> Reply {
    json_reply(status, &json!({ "error": reason }))
}

/// What one group's publish answered.
fn outcome(group: &str, result: &Result<crate::router::Routed, HistoryError>) -> Value {
    match result {
        Ok(routed) => {
            let mut v = json!({ "group": group, "routed": routed.routed });
            if let Some(p) = routed.position {
                v["epoch"] = json!(p.epoch);
                v["offset"] = json!(p.offset);
            }
            v
        }
        Err(e) => json!({ "group": group, "error": e.to_string() }),
    }
}

/// Serves `/v1/publish` (`broadcast` false) or `/v1/broadcast`.
pub async fn serve(
    view: &NodeView,
    plane: &Plane,
    sender: Sender,
    body: Incoming,
    broadcast: bool,
) -> Reply {
    let max_payload = view.config.max_payload;
    let read = plane
        .read_body(
            body,
            body_limit(max_payload),
            "twice --max-payload, plus 64 KiB",
            sender,
        )
        .await;
    // The body's bytes count as in flight until the publish is done.
    let (bytes, _in_flight) = match read {
        Ok(read) => read,
        Err(refusal) => return refused(refusal),
    };
    let request = match parse(&bytes, broadcast, max_payload) {
        Ok(r) => r,
        Err(refusal) => return refused(refusal),
    };
    // Keyed: claim every (key, group) first; publish only what this request holds.
    let mut claimer = None;
    let mut held = vec![Claimed::Held; request.groups.len()];
    if let Some(key) = &request.idempotency_key {
        if let Err(refusal) = plane.claim_room(sender, request.groups.len(), Instant::now()) {
            return refused(refusal);
        }
        let keys: Vec<String> = request.groups.iter().map(|g| claim_key(key, g)).collect();
        match view.consensus.claim(keys).await {
            Ok((c, got)) => {
                claimer = Some(c);
                held = got;
            }
            Err(e) => {
                return json_reply(
                    503,
                    &json!({ "error": format!("idempotency key not recorded, nothing published: {e}") }),
                );
            }
        }
    }
    let mut outcomes = Vec::with_capacity(request.groups.len());
    let mut failed = Vec::new();
    // Failed surely (nothing delivered): their claims go back, so that a retry delivers.
    let mut not_landed = Vec::new();
    let mut routed_total = 0;
    for (group, claimed) in request.groups.iter().zip(&held) {
        match claimed {
            Claimed::Held => {}
            Claimed::Duplicate => {
                outcomes.push(json!({ "group": group, "routed": 0, "duplicate": true }));
                continue;
            }
            Claimed::Full => {
                failed.push(group.clone());
                let error = "the cluster's idempotency keys are full (keys leave after 5 minutes): nothing published, retry later";
                outcomes.push(json!({ "group": group, "error": error }));
                continue;
            }
        }
        let result = view.router.publish(group, request.payload.clone()).await;
        match &result {
            Ok(r) => routed_total += r.routed,
            Err(e) => {
                failed.push(group.clone());
                if !e.may_have_landed() {
                    not_landed.push(group.clone());
                }
            }
        }
        outcomes.push(outcome(group, &result));
    }
    if let (Some(key), Some(claimer)) = (&request.idempotency_key, claimer)
        && !not_landed.is_empty()
    {
        // A publish whose outcome is unknown keeps its claim: a retry with the key is
        // then answered `duplicate` rather than risk delivering it twice.
        let keys = not_landed.iter().map(|g| claim_key(key, g)).collect();
        if let Err(e) = view.consensus.release(keys, claimer).await {
            tracing::warn!(error = %e, "claims of a failed publish not released; a retry within 5 minutes will not deliver it");
        }
    }
    let status = if failed.is_empty() { 200 } else { 503 };
    if broadcast {
        let mut answer = json!({ "routed": routed_total, "groups": outcomes });
        if !failed.is_empty() {
            answer["error"] = json!(format!("{} of the groups failed; retry them", failed.len()));
        }
        return json_reply(status, &answer);
    }
    let mut answer = outcomes.pop().unwrap_or_default();
    if let Some(map) = answer.as_object_mut() {
        map.remove("group");
    }
    json_reply(status, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_their_refusals() {
        let ok = parse(br#"{"group":"user_1","data":"hi"}"#, false, 10).expect("valid");
        assert_eq!(ok.groups, vec!["user_1"]);
        assert_eq!(&ok.payload[..], b"hi");
        let b = parse(
            br#"{"groups":["a","b"],"b64data":"/w==","idempotency_key":"k"}"#,
            true,
            10,
        )
        .expect("valid");
        assert_eq!((b.groups.len(), &b.payload[..]), (2, &[0xff][..]));
        assert_eq!(b.idempotency_key.as_deref(), Some("k"));

        let status = |body: &[u8], broadcast| parse(body, broadcast, 10).map_err(|r| r.0);
        assert_eq!(status(b"{", false), Err(400));
        assert_eq!(status(br#"{"group":"g"}"#, false), Err(400), "no data");
        assert_eq!(
            status(br#"{"group":"g","data":"a","b64data":"YQ=="}"#, false),
            Err(400)
        );
        assert_eq!(status(br#"{"groups":["g"],"data":"a"}"#, false), Err(400));
        assert_eq!(status(br#"{"group":"g","data":"a"}"#, true), Err(400));
        assert_eq!(status(br#"{"groups":[],"data":"a"}"#, true), Err(400));
        assert_eq!(status(br#"{"group":"","data":"a"}"#, false), Err(400));
        assert_eq!(status(br#"{"group":"g","b64data":"!!"}"#, false), Err(400));
        assert_eq!(
            status(br#"{"group":"g","data":"a","x":1}"#, false),
            Err(400)
        );
        assert_eq!(
            status(br#"{"group":"g","data":"a","idempotency_key":""}"#, false),
            Err(400)
        );
        assert_eq!(
            status(br#"{"group":"g","data":"12345678901"}"#, false),
            Err(413)
        );
        let long = format!(
            r#"{{"group":"{}","data":"a"}}"#,
            "g".repeat(MAX_GROUP_NAME + 1)
        );
        assert_eq!(status(long.as_bytes(), false), Err(400));
        assert!(body_limit(1024 * 1024) >= 2 * 1024 * 1024);
        const { assert!(MAX_IDEMPOTENCY_KEY >= 128) };
    }
}
