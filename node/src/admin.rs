//! The admin HTTP API (what the CLI talks to) and `/metrics`, on `--admin-listen`.
//!
//! It runs on a runtime of its own, on its own thread, so that it keeps answering when
//! the data path is saturated (as linkerd2-proxy does with its admin server).
//!
//! | method | path | answer |
//! |---|---|---|
//! | GET | /healthz, /readyz | as on the WebSocket port |
//! | GET | /metrics | Prometheus text |
//! | GET | /v1/status | this node |
//! | GET | /v1/members | every member |
//! | GET | /v1/presence/{user} | the user's live connections, cluster-wide |
//! | GET | /v1/groups/{name} | connections in the group, per node |
//! | POST | /v1/drain | start draining this node |
//! | POST | /v1/members/{id}/remove | remove a member for good |

use std::sync::Arc;

use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn};

use crate::ingress::http::{self, Request, Response, percent_decode};
use crate::ingress::ws::{health, readiness};
use crate::shared::{Lifecycle, Shared, read};

/// Starts the admin server on its own thread and runtime. It stops when the node's
/// shutdown token is cancelled.
pub fn spawn(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
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
                        _ = shared.shutdown.cancelled() => break,
                        accepted = listener.accept() => match accepted {
                            Ok((stream, _)) => {
                                tokio::spawn(serve_one(stream, shared.clone()));
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

async fn serve_one(mut stream: TcpStream, shared: Arc<Shared>) {
    let response = match http::read_head(&mut stream).await {
        Ok(req) => {
            shared.metrics.http_requests.inc();
            match cluster_presence(&req, &shared).await {
                Some(response) => response,
                None => route(&req, &shared),
            }
        }
        Err(e) => match e.status() {
            Some(status) => Response::text(status, format!("{e}\n")),
            None => return,
        },
    };
    let _ = response.write(&mut stream).await;
}

/// `GET /v1/presence/{user}` in a cluster: this node's connections of the user plus each
/// live peer's (asked with `?scope=local`, 1 s each, all at once). Until the Raft
/// registry lands this is how presence is cluster-wide: a peer that does not answer
/// contributes nothing, and a dead node's connections are gone at once.
async fn cluster_presence(req: &Request, shared: &Arc<Shared>) -> Option<Response> {
    let user = req.path.strip_prefix("/v1/presence/")?;
    if req.method != "GET"
        || user.contains('/')
        || req.query_param("scope").as_deref() == Some("local")
    {
        return None;
    }
    let user = percent_decode(user);
    let connections = shared.presence_everywhere(&user).await;
    Some(Response::json(
        200,
        &json!({ "user": user, "connections": connections }),
    ))
}

fn route(req: &Request, shared: &Arc<Shared>) -> Response {
    let segments: Vec<String> = req
        .path
        .trim_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method.as_str(), segments.as_slice()) {
        ("GET", ["healthz"]) => health(shared),
        ("GET", ["readyz"]) => readiness(shared),
        ("GET", ["metrics"]) => {
            let (groups, presence) = (
                read(&shared.broker).group_count(),
                read(&shared.presence).len(),
            );
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: {
                    let mut text = shared.metrics.render(groups, presence, shared.ready());
                    if let Some(cluster) = shared.cluster.get() {
                        cluster.render_metrics(&mut text);
                    }
                    text.into_bytes()
                },
            }
        }
        ("GET", ["v1", "status"]) => Response::json(200, &status(shared)),
        ("GET", ["v1", "members"]) => Response::json(200, &json!({ "members": members(shared) })),
        ("GET", ["v1", "presence", user]) => Response::json(200, &presence(shared, user)),
        ("GET", ["v1", "groups", name]) => Response::json(200, &group(shared, name)),
        ("POST", ["v1", "drain"]) => {
            drain(shared);
            Response::json(202, &json!({ "id": shared.node_id(), "draining": true }))
        }
        ("POST", ["v1", "members", id, "remove"]) => remove(shared, id),
        (_, ["v1", ..]) | (_, ["healthz" | "readyz" | "metrics"]) => {
            Response::json(405, &json!({ "error": "method not allowed" }))
        }
        _ => Response::json(
            404,
            &json!({ "error": format!("no such endpoint: {}", req.path) }),
        ),
    }
}

/// This node's role and the leader's id. Until the Raft registry lands there is no
/// elected leader: the lowest id among the live members (this node included) is reported
/// as leader, which every connected node agrees on; a single node leads itself. Status
/// says `"raft": false` so nobody mistakes this for consensus.
fn role(shared: &Shared) -> (&'static str, u64) {
    let me = shared.node_id();
    let leader = shared
        .cluster
        .get()
        .map(|c| {
            c.members()
                .iter()
                .filter(|m| m.up)
                .map(|m| m.id)
                .fold(me, u64::min)
        })
        .unwrap_or(me);
    match shared.lifecycle() {
        Lifecycle::Starting => ("follower", leader),
        _ if leader == me => ("leader", leader),
        _ => ("follower", leader),
    }
}

/// `switchboard status`.
pub fn status(shared: &Shared) -> serde_json::Value {
    let broker = read(&shared.broker);
    let config = &shared.config;
    json!({
        "id": shared.node_id(),
        "role": role(shared).0,
        "term": 1,
        "leader": role(shared).1,
        "raft": false,
        "ready": shared.ready(),
        "state": format!("{:?}", shared.lifecycle()).to_lowercase(),
        "members": 1 + shared.cluster.get().map_or(0, |c| c.members().len()),
        "members_up": 1 + shared.cluster.get().map_or(0, |c| c.members().iter().filter(|m| m.up).count()),
        "connections": broker.connection_count(),
        "groups": broker.group_count(),
        "presence_entries": read(&shared.presence).len(),
        "uptime_secs": shared.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "addresses": addresses(shared),
        "seeds": config.seeds,
    })
}

fn addresses(shared: &Shared) -> serde_json::Value {
    let config = &shared.config;
    json!({
        "ws": config.ws_listen.to_string(),
        "resp": config.resp_listen.to_string(),
        "peer": config.peer_listen.to_string(),
        "admin": config.admin_listen.to_string(),
    })
}

/// `switchboard members`: this node, then every peer it has heard of.
pub fn members(shared: &Shared) -> serde_json::Value {
    let mut list = vec![json!({
        "id": shared.node_id(),
        "voter": true,
        "up": shared.lifecycle() != Lifecycle::Stopping,
        "self": true,
        "last_seen_ms": 0,
        "addresses": addresses(shared),
        "connections": read(&shared.broker).connection_count(),
    })];
    if let Some(cluster) = shared.cluster.get() {
        for m in cluster.members() {
            list.push(json!({
                "id": m.id,
                "voter": true,
                "up": m.up,
                "self": false,
                "last_seen_ms": m.last_seen_ms,
                "rtt_us": m.rtt_micros,
                "addresses": { "ws": m.ws, "resp": m.resp, "peer": m.peer, "admin": m.admin },
            }));
        }
    }
    serde_json::Value::Array(list)
}

/// `switchboard presence USER`.
pub fn presence(shared: &Shared, user: &str) -> serde_json::Value {
    let connections: Vec<serde_json::Value> = read(&shared.presence)
        .user(user)
        .into_iter()
        .map(|r| json!({ "node": r.node, "connection": r.connection, "connected_at": r.connected_at }))
        .collect();
    json!({ "user": user, "connections": connections })
}

/// `switchboard group NAME`.
pub fn group(shared: &Shared, group: &str) -> serde_json::Value {
    let counts = shared.group_counts(group);
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let nodes: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(node, n)| (node.to_string(), json!(n)))
        .collect();
    json!({ "group": group, "connections": total, "nodes": nodes })
}

/// Starts draining: not ready, clients closed with 1012, this node's presence removed.
pub fn drain(shared: &Shared) {
    if shared.lifecycle() < Lifecycle::Draining {
        info!("draining: closing clients with 1012 and leaving");
    }
    shared.advance(Lifecycle::Draining);
    shared.drain.cancel();
    shared.presence_change(switchboard_proto::peer::PresenceOp::PurgeNode {
        node: shared.node_id(),
    });
    shared.presence_flush.notify_one();
    // Leave the mesh: peers see the connections close and mark this node down at once.
    if let Some(cluster) = shared.cluster.get() {
        cluster.close();
    }
}

fn remove(shared: &Shared, id: &str) -> Response {
    let known = |id: u64| {
        shared
            .cluster
            .get()
            .is_some_and(|c| c.members().iter().any(|m| m.id == id))
    };
    match id.parse::<u64>() {
        Ok(id) if id == shared.node_id() => Response::json(
            409,
            &json!({ "error": format!("node {id} is this node: drain it (switchboard drain) and stop it instead") }),
        ),
        Ok(id) if known(id) => Response::json(
            501,
            &json!({ "error": format!("removing node {id} for good needs the Raft membership, which is not built yet; stop the node: peers mark it down after --node-timeout-ms") }),
        ),
        Ok(id) => Response::json(
            404,
            &json!({ "error": format!("node {id} is not a member") }),
        ),
        Err(_) => Response::json(400, &json!({ "error": format!("'{id}' is not a node id") })),
    }
}
