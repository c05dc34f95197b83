//! What the admin API's read endpoints answer: `/metrics`, `/v1/status`,
//! `/v1/members`, `/v1/presence/{user}`, `/v1/groups/{name}`, each built from the
//! node's [`NodeView`].

use serde_json::json;

use super::{NodeView, events};
use crate::config::Config;
use crate::lifecycle::Stage;
use crate::raft::RaftStatus;
use crate::router::Publish;

/// `/metrics`: every layer's rows.
pub async fn metrics(view: &NodeView) -> String {
    let historian = view.router.historian();
    let mut rows = view.metrics.rows();
    rows.extend(view.hub.rows());
    if let Some(backend) = &view.backend {
        rows.extend(backend.metrics.rows());
        rows.push(crate::metrics::Row::gauge(
            "backend_disconnects_owed",
            "Disconnect calls owed to the backend in the presence registries this node holds (made by the connection's node, or by the registry's leader once that node is gone).",
            view.presence.owed() as u64,
        ));
    }
    rows.push(crate::metrics::Row::gauge_by(
        "build_info",
        "1, labelled with the version of the switchboard binary this node runs.",
        "version",
        vec![(env!("CARGO_PKG_VERSION").to_owned(), 1)],
    ));
    rows.push(crate::metrics::Row::gauge(
        "ready",
        "1 when /readyz answers 200.",
        u64::from(view.health.ready()),
    ));
    rows.push(crate::metrics::Row::gauge(
        "raft_leader_known",
        "1 when a Raft leader that can commit is known (0: an election, or no quorum).",
        u64::from(view.health.leader_known()),
    ));
    rows.push(crate::metrics::Row::gauge(
        "in_majority",
        "1 when this node is in touch with a majority of the members it knows.",
        u64::from(view.health.in_majority()),
    ));
    rows.push(crate::metrics::Row::gauge(
        "max_connections",
        "WebSocket connections this node takes at most (--max-connections, or derived).",
        view.config.ws.max_connections as u64,
    ));
    let (derived, kept, bytes) = view.presence.event_stats();
    rows.push(crate::metrics::Row::counter(
        "presence_events_total",
        "Presence events derived from committed entries (the same on every node holding the same registry or shards).",
        derived,
    ));
    rows.push(crate::metrics::Row::gauge(
        "presence_events_kept",
        "Presence events kept for readers that resume (--presence-events).",
        kept as u64,
    ));
    rows.push(crate::metrics::Row::gauge(
        "presence_events_kept_bytes",
        "Bytes of the presence events kept.",
        bytes as u64,
    ));
    rows.push(crate::metrics::Row::gauge(
        "presence_event_streams",
        "Presence event streams (GET /v1/presence/events) open.",
        events::open_streams() as u64,
    ));
    rows.extend(view.cluster.rows());
    rows.extend(view.consensus.rows(view.presence.entries()));
    if let Some(shards) = &view.presence.shards {
        rows.extend(shards.rows());
    }
    rows.extend(historian.rows());
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
        "presence_entries": view.presence.entries(),
        "backend": view.backend.as_ref().map(|b| json!({
            "url": b.settings.url,
            "owed": view.presence.owed(),
            "in_flight": b.metrics.in_flight.get(),
            "pending": b.metrics.disconnects_pending.get(),
        })),
        "presence_shards": view.presence.shards.as_ref().map(|s| s.status()),
        "presence_events": presence_events(view),
        "raft": raft,
        "uptime_secs": view.lifecycle.started().elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "addresses": addresses(config),
        "seeds": config.cluster.seeds,
        "limits": {
            "max_connections": config.ws.max_connections,
            "max_resp_connections": config.resp.max_connections,
            "open_files": crate::config::open_file_limit(),
        },
        "tls": { "ws": config.tls.ws.is_some(), "admin": config.tls.admin.is_some() },
        "admin_tokens": config.credentials.admin_tokens.is_some(),
        "history": {
            "rules": config.history.rules.iter().map(|r| json!({
                "pattern": r.pattern,
                "size": r.size,
                "ttl_secs": r.ttl.map(|t| t.as_secs()),
            })).collect::<Vec<_>>(),
            "max_bytes": config.history.max_bytes,
            "buckets_moving": view.consensus.history_moving(),
        },
    })
}

/// What this node keeps of the presence events.
fn presence_events(view: &NodeView) -> serde_json::Value {
    if view.presence.shards.is_some() {
        // Per shard: each hosted shard's newest event is in `presence_shards`.
        let (_, kept, bytes) = view.presence.event_stats();
        return json!({
            "kept": kept,
            "bytes": bytes,
            "capacity": view.config.presence_events,
            "streams": events::open_streams(),
        });
    }
    let (kept, bytes, after) = view.replica.ring_stats();
    json!({
        "kept": kept,
        "bytes": bytes,
        "after": after.to_string(),
        "newest": view.replica.newest_event().to_string(),
        "capacity": view.config.presence_events,
        "streams": events::open_streams(),
    })
}

fn addresses(config: &Config) -> serde_json::Value {
    // As peers know them.
    json!({
        "ws": config.listen.advertised(config.listen.ws),
        "resp": config.listen.advertised(config.listen.resp),
        "peer": config.listen.advertised(config.listen.peer),
        "admin": config.listen.advertised(config.listen.admin),
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
    let (removed, bound, buckets) = {
        let replica = view.replica.read();
        // History buckets (and the interest of their groups) each member owns and
        // replicates.
        let mut buckets: std::collections::BTreeMap<u64, (u32, u32)> = Default::default();
        for (_, a) in replica.assignments.iter() {
            buckets.entry(a.owner).or_default().0 += 1;
            if let Some(r) = a.replica {
                buckets.entry(r).or_default().1 += 1;
            }
        }
        (
            replica.removed.clone(),
            replica.incarnations.clone(),
            buckets,
        )
    };
    let held = |id: u64| {
        let (owner, replica) = buckets.get(&id).copied().unwrap_or_default();
        json!({ "owner": owner, "replica": replica })
    };
    let incarnation = |id: u64| bound.get(&id).map(|i| format!("{i:016x}"));
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
        "incarnation": incarnation(me),
        "leaving": view.lifecycle.draining(),
        "version": env!("CARGO_PKG_VERSION"),
        "last_seen_ms": 0,
        "addresses": addresses(&view.config),
        "connections": view.hub.connection_count(),
        "groups": view.hub.group_count(),
        "buckets": held(me),
    })];
    let mesh = view.cluster.members();
    for m in &mesh {
        list.push(json!({
            "id": m.id,
            "voter": voters.contains(&m.id),
            "role": role(m.id),
            "up": m.up,
            "self": false,
            "incarnation": incarnation(m.id),
            "leaving": m.leaving,
            "version": m.version,
            "last_seen_ms": m.last_seen_ms,
            "rtt_us": m.rtt_micros,
            "addresses": { "ws": m.ws, "resp": m.resp, "peer": m.peer, "admin": m.admin },
            "connections": m.connections,
            "groups": m.groups,
            "buckets": held(m.id),
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

/// `switchboard group NAME`.
pub async fn group(view: &NodeView, group: &str) -> serde_json::Value {
    let counts = view.router.group_counts(group).await;
    let total: usize = counts.iter().map(|(_, n)| n).sum();
    let nodes: serde_json::Map<String, serde_json::Value> = counts
        .into_iter()
        .map(|(node, n)| (node.to_string(), json!(n)))
        .collect();
    let mut value = json!({ "group": group, "connections": total, "nodes": nodes });
    let bucket = crate::history::bucket_of(group);
    let assignment = view.replica.read().assignments.get(bucket).copied();
    // Who holds the group's interest (docs/cluster.md, "What is gossiped, and why").
    value["interest"] = match assignment {
        Some(a) => json!({ "bucket": bucket, "owner": a.owner, "replica": a.replica }),
        None => json!({ "bucket": bucket, "owner": null }),
    };
    if view.router.keeps_history(group) {
        value["history"] = match assignment {
            Some(a) => json!({
                "bucket": bucket,
                "owner": a.owner,
                "replica": a.replica,
                "epoch": a.epoch,
                "continues": a.continues,
            }),
            None => json!({ "bucket": bucket, "owner": null }),
        };
    }
    value
}
