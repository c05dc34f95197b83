//! The admin HTTP API (what the CLI talks to) and `/metrics`, on `--admin-listen`.
//!
//! It runs on a runtime of its own, on its own thread, so that it keeps answering when
//! the data path is saturated (as linkerd2-proxy does with its admin server). HTTP/1.1
//! is hyper's (server, HTTP/1 only), over TLS when `--admin-tls-cert` is set. It reads
//! the node through a [`NodeView`], and acts only through the Raft layer (drain,
//! remove). Who may call what is [`guard`]'s decision.
//!
//! | method | path | scope | answer |
//! |---|---|---|---|
//! | GET | /healthz, /readyz | open | as on the WebSocket port |
//! | GET | /, /ui/... | open | the admin page (static; what it shows needs a token) |
//! | GET | /metrics | read | Prometheus text |
//! | GET | /v1/status | read | this node |
//! | GET | /v1/members | read | every member |
//! | GET | /v1/presence/{user} | read | the user's live connections, cluster-wide, from this node's replica (`?consistency=linearizable`: after a read index from the leader) |
//! | GET | /v1/presence/events | read | presence events as Server-Sent Events (`Last-Event-ID` or `?since=ID` resumes, `?follow=0` ends after what is kept) |
//! | GET | /v1/groups/{name} | read | connections in the group, per node |
//! | POST | /v1/publish | publish | publish to one group (JSON body; `publish`) |
//! | POST | /v1/broadcast | publish | publish one payload to many groups |
//! | POST | /v1/disconnect | publish | close a user's (or one connection's) sockets, cluster-wide |
//! | POST | /v1/subscribe, /v1/unsubscribe | publish | a user's (or one connection's) live sockets join or leave a group |
//! | POST | /v1/revoke | publish | refuse a user's tokens issued before a time, and close its sockets |
//! | POST | /v1/drain | write | start draining this node |
//! | POST | /v1/members/{id}/remove | write | remove a member for good |

pub mod control;
pub mod events;
pub mod guard;
pub mod plane;
pub mod publish;
pub mod ui;
mod views;

pub use views::{group, members, metrics, status};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HOST, HeaderValue, ORIGIN};
use hyper::{Method, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::health::Health;
use crate::hub::Hub;
use crate::ingress::accept::{Listener, tls_handshake};
use crate::ingress::http::percent_decode;
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::presence::SharedReplica;
use crate::raft::Consensus;
use crate::router::Router;
use crate::secrets::{Scope, Secrets};
use crate::tls::ServerTls;
use plane::Pending;

/// Longest a client may take to send a request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the admin API reads, built once by the node's wiring.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub secrets: Arc<Secrets>,
    pub lifecycle: Arc<Lifecycle>,
    pub health: Arc<Health>,
    pub hub: Arc<Hub>,
    pub replica: Arc<SharedReplica>,
    pub router: Arc<Router>,
    pub cluster: Arc<Cluster>,
    pub consensus: Arc<Consensus>,
    /// The backend bridge, when `--backend-url` is set.
    pub backend: Option<Arc<crate::backend::Backend>>,
    /// Presence reads (the control replica, or the shards).
    pub presence: crate::raft::Presence,
}

impl NodeView {
    fn node_id(&self) -> u64 {
        self.config.node_id
    }
}

/// A response of the admin API.
pub type Reply = hyper::Response<BoxBody<Bytes, Infallible>>;

fn reply(status: u16, content_type: &'static str, body: impl Into<Bytes>) -> Reply {
    let mut response = hyper::Response::new(Full::new(body.into()).boxed());
    *response.status_mut() =
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn json_reply(status: u16, value: &serde_json::Value) -> Reply {
    let mut body = serde_json::to_vec(value).unwrap_or_default();
    body.push(b'\n');
    reply(status, "application/json", body)
}

fn text_reply(status: u16, text: &str) -> Reply {
    reply(status, "text/plain; charset=utf-8", format!("{text}\n"))
}

/// Starts the admin server on its own thread and runtime. It stops when the node's
/// shutdown token is cancelled.
pub fn spawn(
    listener: std::net::TcpListener,
    view: NodeView,
    tls: Option<ServerTls>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    listener.set_nonblocking(true)?;
    let shutdown = view.lifecycle.shutdown_token().clone();
    let view = Arc::new(view);
    std::thread::Builder::new()
        .name("switchboard-admin".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    warn!(error = %e, "admin runtime could not start");
                    return;
                }
            };
            runtime.block_on(async move {
                let listener = match TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(error = %e, "admin listener could not start");
                        return;
                    }
                };
                let slots = Arc::new(Semaphore::new(plane::MAX_ADMIN_CONNECTIONS));
                let bounds = Arc::new(plane::Plane::new(publish::body_limit(
                    view.config.max_payload,
                )));
                let listener = Listener::new(listener, shutdown, "admin");
                loop {
                    let Some(permit) = listener.slot(&slots).await else {
                        break;
                    };
                    let Some((stream, peer)) = listener.accept().await else {
                        break;
                    };
                    let (view, tls) = (view.clone(), tls.clone());
                    let pending = Arc::new(bounds.enter(peer.ip()));
                    // The time to authenticate runs from the accept, TLS handshake included.
                    let deadline = tokio::time::Instant::now() + plane::PRE_AUTH_TIMEOUT;
                    tokio::spawn(async move {
                        let _permit = permit;
                        let Some(tls) = tls else {
                            return serve_connection(stream, view, false, pending, deadline).await;
                        };
                        let evicted = pending.evicted.clone();
                        tokio::select! {
                            shaken = tls_handshake(&tls, stream) => match shaken {
                                Ok(stream) => serve_connection(stream, view, true, pending, deadline).await,
                                Err(e) => debug!(error = %e, "admin connection refused"),
                            },
                            _ = evicted.cancelled() => debug!("admin connection closed to make room: no TLS handshake yet"),
                            _ = tokio::time::sleep_until(deadline) => debug!("admin connection closed: no TLS handshake within the pre-auth timeout"),
                        }
                    });
                    // The new connection's task reads its request (already in the socket,
                    // for a client that speaks at once) before the next accept may evict it.
                    tokio::task::yield_now().await;
                }
            });
        })
}

/// Serves one connection; one that has not authenticated by `deadline` (accept +
/// [`plane::PRE_AUTH_TIMEOUT`]), or must make room for a newer one, is dropped at once:
/// it holds nothing but the open routes' answers, and a grace would let a flood of them
/// keep their slots.
async fn serve_connection<S>(
    stream: S,
    view: Arc<NodeView>,
    tls: bool,
    pending: Arc<Pending>,
    deadline: tokio::time::Instant,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let in_service = pending.clone();
    let service = hyper::service::service_fn(move |req| {
        let (view, pending) = (view.clone(), in_service.clone());
        async move { Ok::<_, Infallible>(handle(req, &view, tls, &pending).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    let pre_auth = tokio::time::sleep_until(deadline);
    tokio::pin!(pre_auth);
    let evicted = pending.evicted.clone();
    // Both stop mattering once the connection has authenticated.
    let (mut timed, mut evictable) = (true, true);
    let served = loop {
        tokio::select! {
            served = conn.as_mut() => break Some(served),
            _ = &mut pre_auth, if timed => {
                if pending.waiting() {
                    debug!("admin connection closed: no valid token within the pre-auth timeout");
                    break None;
                }
                timed = false;
            }
            _ = evicted.cancelled(), if evictable => {
                if pending.waiting() {
                    debug!("admin connection closed to make room: unauthenticated");
                    break None;
                }
                evictable = false;
            }
        }
    };
    // Dropped: closed at once.
    let Some(served) = served else {
        return;
    };
    if let Err(e) = served {
        debug!(error = %e, "admin connection ended with an error");
    }
}

/// An admin route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    /// A file of the admin page (its path under `/ui/`).
    Ui(String),
    Metrics,
    Status,
    Members,
    Presence(String),
    PresenceEvents,
    Group(String),
    Drain,
    Remove(String),
    Publish,
    Broadcast,
    /// Acting on live connections (`control`).
    Control(control::Kind),
}

impl Route {
    /// The route of `method` `path`, or the status to answer (404, 405).
    pub fn of(method: &Method, path: &str) -> Result<Route, u16> {
        let segments: Vec<String> = path
            .trim_matches('/')
            .split('/')
            .map(percent_decode)
            .collect();
        let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
        let get = *method == Method::GET;
        let post = *method == Method::POST;
        Ok(match segments.as_slice() {
            ["healthz"] if get => Route::Health,
            ["readyz"] if get => Route::Ready,
            [""] | ["ui"] if get => Route::Ui(String::new()),
            ["ui", file] if get => Route::Ui(file.to_string()),
            ["metrics"] if get => Route::Metrics,
            ["v1", "status"] if get => Route::Status,
            ["v1", "members"] if get => Route::Members,
            ["v1", "presence", "events"] if get => Route::PresenceEvents,
            ["v1", "presence", user] if get => Route::Presence(user.to_string()),
            ["v1", "groups", name] if get => Route::Group(name.to_string()),
            ["v1", "drain"] if post => Route::Drain,
            ["v1", "publish"] if post => Route::Publish,
            ["v1", "broadcast"] if post => Route::Broadcast,
            ["v1", "disconnect"] if post => Route::Control(control::Kind::Disconnect),
            ["v1", "subscribe"] if post => Route::Control(control::Kind::Subscribe),
            ["v1", "unsubscribe"] if post => Route::Control(control::Kind::Unsubscribe),
            ["v1", "revoke"] if post => Route::Control(control::Kind::Revoke),
            ["v1", "members", id, "remove"] if post => Route::Remove(id.to_string()),
            ["healthz" | "readyz" | "metrics"]
            | [
                "v1",
                "status" | "members" | "drain" | "publish" | "broadcast" | "disconnect"
                | "subscribe" | "unsubscribe" | "revoke",
            ]
            | ["v1", "presence" | "groups", _]
            | ["v1", "members", _, "remove"] => return Err(405),
            _ => return Err(404),
        })
    }

    /// The scope a token needs for this route; `None` for the open health checks.
    pub fn scope(&self) -> Option<Scope> {
        match self {
            Route::Health | Route::Ready | Route::Ui(_) => None,
            Route::Metrics
            | Route::Status
            | Route::Members
            | Route::Presence(_)
            | Route::PresenceEvents
            | Route::Group(_) => Some(Scope::Read),
            Route::Drain | Route::Remove(_) => Some(Scope::Write),
            Route::Publish | Route::Broadcast | Route::Control(_) => Some(Scope::Publish),
        }
    }
}

async fn handle(
    req: hyper::Request<Incoming>,
    view: &NodeView,
    tls: bool,
    pending: &Pending,
) -> Reply {
    view.metrics.http_requests.inc();
    let route = match Route::of(req.method(), req.uri().path()) {
        Ok(route) => route,
        Err(405) => return json_reply(405, &json!({ "error": "method not allowed" })),
        Err(status) => {
            return json_reply(
                status,
                &json!({ "error": format!("no such endpoint: {}", req.uri().path()) }),
            );
        }
    };
    let header = |name| {
        req.headers()
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = header(HOST)
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
    let head = guard::Head {
        host: host.as_deref(),
        origin: header(ORIGIN),
        authorization: header(AUTHORIZATION),
        tls,
    };
    let tokens = view.secrets.admin.get();
    if let Err(refusal) = guard::admit(
        &head,
        route.scope(),
        tokens.as_ref().as_ref(),
        &view.config.admin_hosts,
    ) {
        view.metrics.admin_refusals.inc();
        let mut response = json_reply(refusal.status, &json!({ "error": refusal.reason }));
        if refusal.status == 401 {
            response.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        return response;
    }
    if route.scope().is_some() {
        pending.authenticated();
    }
    // Admitted: with tokens set, its bearer is one of them.
    let sender = tokens
        .as_ref()
        .as_ref()
        .and(guard::bearer(&head))
        .map(plane::sender);
    let query = req.uri().query().unwrap_or_default();
    let linearizable = query
        .split('&')
        .any(|pair| pair == "consistency=linearizable");
    match route {
        // Whether the page must ask for a token before it calls the API (so that it
        // makes no request bound to fail).
        Route::Ui(name) if name == ui::AUTH => {
            json_reply(200, &json!({ "token_required": tokens.as_ref().is_some() }))
        }
        Route::Ui(name) => match ui::file(&name) {
            Some((kind, content)) => {
                let mut response = reply(200, kind, Bytes::from_static(content.as_bytes()));
                let headers = response.headers_mut();
                headers.insert(
                    "content-security-policy",
                    HeaderValue::from_static(ui::CONTENT_SECURITY_POLICY),
                );
                headers.insert("x-frame-options", HeaderValue::from_static("DENY"));
                response
            }
            None => json_reply(404, &json!({ "error": "no such file in the admin page" })),
        },
        Route::Health => text_reply(200, "ok"),
        Route::Ready if view.health.ready() => text_reply(200, "ready"),
        Route::Ready => text_reply(503, &format!("not ready: {}", view.health.reason())),
        Route::Metrics => reply(
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics(view).await,
        ),
        Route::Status => json_reply(200, &status(view)),
        Route::Members => json_reply(200, &json!({ "members": members(view) })),
        Route::Presence(user) => match view.presence.of(&user, linearizable).await {
            Ok(connections) => {
                json_reply(200, &json!({ "user": user, "connections": connections }))
            }
            Err(e) if linearizable => json_reply(
                503,
                &json!({ "error": format!("no linearizable read now: {e}") }),
            ),
            Err(e) => json_reply(
                503,
                &json!({ "error": format!("presence shard unreachable: {e}") }),
            ),
        },
        Route::PresenceEvents => {
            let last_event_id = req
                .headers()
                .get("last-event-id")
                .and_then(|v| v.to_str().ok());
            match events::Start::parse(query, last_event_id) {
                Ok(start) => events::serve(view, start).await,
                Err(reason) => json_reply(400, &json!({ "error": reason })),
            }
        }
        Route::Group(name) => json_reply(200, &group(view, &name).await),
        Route::Drain => {
            view.consensus.drain();
            json_reply(202, &json!({ "id": view.node_id(), "draining": true }))
        }
        Route::Remove(id) => remove(view, &id).await,
        Route::Publish => {
            publish::serve(view, pending.plane(), sender, req.into_body(), false).await
        }
        Route::Broadcast => {
            publish::serve(view, pending.plane(), sender, req.into_body(), true).await
        }
        Route::Control(kind) => {
            control::serve(view, pending.plane(), sender, kind, req.into_body()).await
        }
    }
}

async fn remove(view: &NodeView, id: &str) -> Reply {
    let Ok(id) = id.parse::<u64>() else {
        return json_reply(400, &json!({ "error": format!("'{id}' is not a node id") }));
    };
    let consensus = &view.consensus;
    let status = consensus.status();
    let known = status.voters.contains(&id)
        || status.learners.contains(&id)
        || view.cluster.members().iter().any(|m| m.id == id);
    if id == view.node_id() {
        return json_reply(
            409,
            &json!({ "error": format!("node {id} is this node: run remove on another member, or drain this one") }),
        );
    }
    if view.replica.is_removed(id) {
        return json_reply(200, &json!({ "id": id, "removed": true, "already": true }));
    }
    if !known {
        return json_reply(
            404,
            &json!({ "error": format!("node {id} is not a member") }),
        );
    }
    match consensus.remove(id).await {
        Ok(()) => json_reply(200, &json!({ "id": id, "removed": true })),
        Err(e) => json_reply(
            503,
            &json!({ "error": format!("node {id} not removed: {e}") }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_their_scopes() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(Route::of(&get, "/healthz"), Ok(Route::Health));
        assert_eq!(Route::of(&get, "/healthz").map(|r| r.scope()), Ok(None));
        assert_eq!(
            Route::of(&get, "/v1/presence/a%20b"),
            Ok(Route::Presence("a b".into()))
        );
        assert_eq!(
            Route::of(&post, "/v1/members/3/remove"),
            Ok(Route::Remove("3".into()))
        );
        assert_eq!(
            Route::of(&post, "/v1/drain").map(|r| r.scope()),
            Ok(Some(Scope::Write))
        );
        assert_eq!(
            Route::of(&get, "/metrics").map(|r| r.scope()),
            Ok(Some(Scope::Read))
        );
        assert_eq!(Route::of(&get, "/v1/drain"), Err(405));
        assert_eq!(
            Route::of(&post, "/v1/publish").map(|r| r.scope()),
            Ok(Some(Scope::Publish))
        );
        assert_eq!(Route::of(&get, "/v1/broadcast"), Err(405));
        assert_eq!(Route::of(&post, "/v1/status"), Err(405));
        assert_eq!(Route::of(&get, "/nope"), Err(404));
    }
}
