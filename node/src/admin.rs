//! The admin HTTP API (what the CLI talks to) and `/metrics`, on `--admin-listen`.
//!
//! It runs on a runtime of its own, on its own thread, so that it keeps answering when
//! the data path is saturated (as linkerd2-proxy does with its admin server). It reads
//! the node through a [`NodeView`], and acts only through the lifecycle (drain, via the
//! Raft layer so the presence purge is queued with it) and the Raft layer (remove).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | /healthz, /readyz | as on the WebSocket port |
//! | GET | /metrics | Prometheus text |
//! | GET | /v1/status | this node |
//! | GET | /v1/members | every member |
//! | GET | /v1/presence/{user} | the user's live connections, cluster-wide, from this node's replica (`?consistency=linearizable`: after a read index from the leader) |
//! | GET | /v1/groups/{name} | connections in the group, per node |
//! | POST | /v1/drain | start draining this node |
//! | POST | /v1/members/{id}/remove | remove a member for good |

use std::sync::Arc;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use crate::cluster::Cluster;
use crate::config::Config;
use crate::health::Health;
use crate::hub::Hub;
use crate::ingress::http::{self, Request, Response, health, percent_decode, readiness};
use crate::lifecycle::{Lifecycle, Stage};
use crate::metrics::Metrics;
use crate::presence::SharedReplica;
use crate::raft::{Consensus, RaftStatus};
use crate::router::{Publish, Router};

/// Everything the admin API reads, built once by the node's wiring.
#[derive(Debug, Clone)]
pub struct NodeView {
    pub config: Arc<Config>,
    pub metrics: Arc<Metrics>,
    pub lifecycle: Arc<Lifecycle>,
    pub health: Arc<Health>,
    pub hub: Arc<Hub>,
    pub replica: Arc<SharedReplica>,
    pub router: Arc<Router>,
    pub cluster: Arc<Cluster>,
    pub consensus: Arc<Consensus>,
}

impl NodeView {
    fn node_id(&self) -> u64 {
        self.config.node_id
    }
}

/// Starts the admin server on its own thread and runtime. It stops when the node's
/// shutdown token is cancelled.
pub fn spawn(
    listener: std::net::TcpListener,
    view: NodeView,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let shutdown = view.lifecycle.shutdown_token().clone();
    let view = Arc::new(view);
    listener.set_nonblocking(true)?;
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
                loop {
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                tokio::spawn(serve_one(stream, view.clone()));
                            }
                            Err(e) => {
                                debug!(error = %e, "admin accept failed");
                                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            }
                        }
                    }
                }
            });
        })
}

async fn serve_one(mut stream: TcpStream, view: Arc<NodeView>) {
    let response = match http::read_head(&mut stream).await {
        Ok(req) => {
            view.metrics.http_requests.inc();
            match route_async(&req, &view).await {
                Some(response) => response,
                None => route(&req, &view),
            }
        }
        Err(e) => match e.status() {
            Some(status) => Response::text(status, format!("{e}\n")),
            None => return,
        },
    };
    let _ = response.write(&mut stream).await;
}

/// The endpoints that wait on Raft: a linearizable presence read, and `remove`.
async fn route_async(req: &Request, view: &NodeView) -> Option<Response> {
    if req.method == "GET"
        && let Some(user) = req.path.strip_prefix("/v1/presence/")
        && !user.contains('/')
        && req.query_param("consistency").as_deref() == Some("linearizable")
    {
        return Some(match view.consensus.linearizable().await {
            Ok(()) => Response::json(200, &presence(view, &percent_decode(user))),
            Err(e) => Response::json(
                503,
                &json!({ "error": format!("no linearizable read now: {e}") }),
            ),
        });
    }
    if req.method == "POST"
        && let Some(rest) = req.path.strip_prefix("/v1/members/")
        && let Some(id) = rest.strip_suffix("/remove")
    {
        return Some(remove(view, id).await);
    }
    None
}

fn route(req: &Request, view: &NodeView) -> Response {
    let segments: Vec<String> = req
        .path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["healthz"]) => health(),
        ("GET", ["readyz"]) => readiness(&view.health),
        ("GET", ["metrics"]) => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: metrics(view).into_bytes(),
        },
        ("GET", ["v1", "status"]) => Response::json(200, &status(view)),
        ("GET", ["v1", "members"]) => Response::json(200, &json!({ "members": members(view) })),
        ("GET", ["v1", "presence", user]) => Response::json(200, &presence(view, user)),
        ("GET", ["v1", "groups", name]) => Response::json(200, &group(view, name)),
        ("POST", ["v1", "drain"]) => {
            view.consensus.drain();
            Response::json(202, &json!({ "id": view.node_id(), "draining": true }))
        }
        (_, ["v1", ..]) | (_, ["healthz" | "readyz" | "metrics"]) => {
            Response::json(405, &json!({ "error": "method not allowed" }))
        }
        _ => Response::json(
            404,
            &json!({ "error": format!("no such endpoint: {}", req.path) }),
        ),
    }
}

/// `/metrics`: every layer's rows.
pub fn metrics(view: &NodeView) -> String {
    let mut rows = view.metrics.rows();
    rows.extend(view.hub.rows());
    rows.push(crate::metrics::Row::gauge(
        "ready",
        "1 when /readyz answers 200.",
        u64::from(view.health.ready()),
    ));
    rows.extend(view.cluster.rows());
    rows.extend(view.consensus.rows());
    let mut text = String::with_capacity(8192);
    crate::metrics::render(&mut text, &rows);
    text
}

/// `switchboard status`.
pub fn status(view: &NodeView) -> serde_json::Value {
    // One look at Raft serves both the member list and the status fields.
    let raft = view.consensus.status();
    let list = members_seen(view, &raft);
    let config = &view.config;
    let count = list.as_array().map_or(0, Vec::len);
    let up = list
        .as_array()
        .map_or(0, |l| l.iter().filter(|m| m["up"] == true).count());
    json!({
        "id": view.node_id(),
        "role": raft.role,
        "term": raft.term,
        "leader": raft.leader,
        "ready": view.health.ready(),
        "state": view.lifecycle.stage().name(),
        "members": count,
        "members_up": up,
        "connections": view.hub.connection_count(),
        "groups": view.hub.group_count(),
        "presence_entries": view.replica.len(),
        "raft": raft,
        "uptime_secs": view.lifecycle.started().elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "addresses": addresses(config),
        "seeds": config.seeds,
    })
}

fn addresses(config: &Config) -> serde_json::Value {
    json!({
        "ws": config.ws_listen.to_string(),
        "resp": config.resp_listen.to_string(),
        "peer": config.peer_listen.to_string(),
        "admin": config.admin_listen.to_string(),
    })
}

/// `switchboard members`: the Raft membership (voters and learners) and every peer the
/// mesh knows, this node first. `role` is `voter`, `learner`, `joining` (a peer not yet
/// in the membership) or `removed`.
pub fn members(view: &NodeView) -> serde_json::Value {
    members_seen(view, &view.consensus.status())
}

/// [`members`] from a Raft status already taken.
fn members_seen(view: &NodeView, raft: &RaftStatus) -> serde_json::Value {
    let me = view.node_id();
    let (voters, learners) = (&raft.voters, &raft.learners);
    let removed = view.replica.read().removed.clone();
    let role = |id: u64| {
        if removed.contains(&id) {
            "removed"
        } else if voters.contains(&id) {
            "voter"
        } else if learners.contains(&id) {
            "learner"
        } else {
            "joining"
        }
    };
    let mut list = vec![json!({
        "id": me,
        "voter": voters.contains(&me),
        "role": role(me),
        "up": view.lifecycle.stage() != Stage::Stopping,
        "self": true,
        "last_seen_ms": 0,
        "addresses": addresses(&view.config),
        "connections": view.hub.connection_count(),
    })];
    let mesh = view.cluster.members();
    for m in &mesh {
        list.push(json!({
            "id": m.id,
            "voter": voters.contains(&m.id),
            "role": role(m.id),
            "up": m.up,
            "self": false,
            "last_seen_ms": m.last_seen_ms,
            "rtt_us": m.rtt_micros,
            "addresses": { "ws": m.ws, "resp": m.resp, "peer": m.peer, "admin": m.admin },
        }));
    }
    // Members of the Raft membership this node has not heard from since it started.
    for id in voters.iter().chain(learners) {
        if *id != me && !mesh.iter().any(|m| m.id == *id) {
            list.push(json!({
                "id": id,
                "voter": voters.contains(id),
                "role": role(*id),
                "up": false,
                "self": false,
                "last_seen_ms": null,
                "addresses": {},
            }));
        }
    }
    list.sort_by_key(|m| m["id"].as_u64());
    serde_json::Value::Array(list)
}

/// `switchboard presence USER`.
pub fn presence(view: &NodeView, user: &str) -> serde_json::Value {
    json!({ "user": user, "connections": view.replica.presence_of(user) })
}

/// `switchboard group NAME`.
pub fn group(view: &NodeView, group: &str) -> serde_json::Value {
    let counts = view.router.group_counts(group);
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let nodes: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(node, n)| (node.to_string(), json!(n)))
        .collect();
    json!({ "group": group, "connections": total, "nodes": nodes })
}

async fn remove(view: &NodeView, id: &str) -> Response {
    let Ok(id) = percent_decode(id).parse::<u64>() else {
        return Response::json(400, &json!({ "error": format!("'{id}' is not a node id") }));
    };
    let consensus = &view.consensus;
    let status = consensus.status();
    let known = status.voters.contains(&id)
        || status.learners.contains(&id)
        || view.cluster.members().iter().any(|m| m.id == id);
    if id == view.node_id() {
        return Response::json(
            409,
            &json!({ "error": format!("node {id} is this node: run remove on another member, or drain this one") }),
        );
    }
    if view.replica.is_removed(id) {
        return Response::json(200, &json!({ "id": id, "removed": true, "already": true }));
    }
    if !known {
        return Response::json(
            404,
            &json!({ "error": format!("node {id} is not a member") }),
        );
    }
    match consensus.remove(id).await {
        Ok(()) => Response::json(200, &json!({ "id": id, "removed": true })),
        Err(e) => Response::json(
            503,
            &json!({ "error": format!("node {id} not removed: {e}") }),
        ),
    }
}
