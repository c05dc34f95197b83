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
//! | GET | /v1/presence/{user} | the user's live connections, cluster-wide, from this node's replica (`?consistency=linearizable`: after a read index from the leader) |
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
            match route_async(&req, &shared).await {
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

/// The endpoints that wait on Raft: a linearizable presence read, and `remove`.
async fn route_async(req: &Request, shared: &Arc<Shared>) -> Option<Response> {
    if req.method == "GET"
        && let Some(user) = req.path.strip_prefix("/v1/presence/")
        && !user.contains('/')
        && req.query_param("consistency").as_deref() == Some("linearizable")
    {
        let consensus = shared.consensus.get()?;
        return Some(match consensus.linearizable().await {
            Ok(()) => Response::json(200, &presence(shared, &percent_decode(user))),
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
        return Some(remove(shared, id).await);
    }
    None
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
                read(&shared.replica).presence.len(),
            );
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: {
                    let mut text = shared.metrics.render(groups, presence, shared.ready());
                    if let Some(cluster) = shared.cluster.get() {
                        cluster.render_metrics(&mut text);
                    }
                    if let Some(consensus) = shared.consensus.get() {
                        consensus.render_metrics(&mut text);
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
        (_, ["v1", ..]) | (_, ["healthz" | "readyz" | "metrics"]) => {
            Response::json(405, &json!({ "error": "method not allowed" }))
        }
        _ => Response::json(
            404,
            &json!({ "error": format!("no such endpoint: {}", req.path) }),
        ),
    }
}

/// `switchboard status`.
pub fn status(shared: &Shared) -> serde_json::Value {
    // Before taking the broker lock: `members` takes it too, and a second read lock on a
    // std RwLock can deadlock behind a waiting writer.
    // One look at Raft serves both the member list and the status fields.
    let raft = shared.consensus.get().map(|c| c.status());
    let list = members_seen(shared, raft.as_ref());
    let config = &shared.config;
    let (connections, groups) = {
        let broker = read(&shared.broker);
        (broker.connection_count(), broker.group_count())
    };
    let presence_entries = read(&shared.replica).presence.len();
    let count = list.as_array().map_or(0, Vec::len);
    let up = list
        .as_array()
        .map_or(0, |l| l.iter().filter(|m| m["up"] == true).count());
    json!({
        "id": shared.node_id(),
        "role": raft.as_ref().map_or("starting", |r| r.role),
        "term": raft.as_ref().map_or(0, |r| r.term),
        "leader": raft.as_ref().and_then(|r| r.leader),
        "ready": shared.ready(),
        "state": format!("{:?}", shared.lifecycle()).to_lowercase(),
        "members": count,
        "members_up": up,
        "connections": connections,
        "groups": groups,
        "presence_entries": presence_entries,
        "raft": raft,
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

/// `switchboard members`: the Raft membership (voters and learners) and every peer the
/// mesh knows, this node first. `role` is `voter`, `learner`, `joining` (a peer not yet
/// in the membership) or `removed`.
pub fn members(shared: &Shared) -> serde_json::Value {
    let raft = shared.consensus.get().map(|c| c.status());
    members_seen(shared, raft.as_ref())
}

/// [`members`] from a Raft status already taken.
fn members_seen(shared: &Shared, raft: Option<&crate::raft::RaftStatus>) -> serde_json::Value {
    let me = shared.node_id();
    let voters: Vec<u64> = raft.map(|r| r.voters.clone()).unwrap_or_default();
    let learners: Vec<u64> = raft.map(|r| r.learners.clone()).unwrap_or_default();
    let removed = read(&shared.replica).removed.clone();
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
        "up": shared.lifecycle() != Lifecycle::Stopping,
        "self": true,
        "last_seen_ms": 0,
        "addresses": addresses(shared),
        "connections": read(&shared.broker).connection_count(),
    })];
    let mesh = shared
        .cluster
        .get()
        .map(|c| c.members())
        .unwrap_or_default();
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
    for id in voters.iter().chain(&learners) {
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
pub fn presence(shared: &Shared, user: &str) -> serde_json::Value {
    let connections: Vec<serde_json::Value> = read(&shared.replica)
        .presence
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
    // The node leaves the mesh once its presence removal is committed (see
    // `leave_after_drain` in lib.rs).
}

async fn remove(shared: &Shared, id: &str) -> Response {
    let Ok(id) = percent_decode(id).parse::<u64>() else {
        return Response::json(400, &json!({ "error": format!("'{id}' is not a node id") }));
    };
    let Some(consensus) = shared.consensus.get() else {
        return Response::json(503, &json!({ "error": "Raft is not running" }));
    };
    let status = consensus.status();
    let known = status.voters.contains(&id)
        || status.learners.contains(&id)
        || shared
            .cluster
            .get()
            .is_some_and(|c| c.members().iter().any(|m| m.id == id));
    if id == shared.node_id() {
        return Response::json(
            409,
            &json!({ "error": format!("node {id} is this node: run remove on another member, or drain this one") }),
        );
    }
    if read(&shared.replica).removed.contains(&id) {
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
