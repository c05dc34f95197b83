//! The disconnect calls a node that is gone still owed the backend: made by the leader of
//! each presence registry that holds them.
//!
//! A bridged connection's disconnect is owed in the replicated registry from the moment
//! the consumer heard of its connect until the call is made (`registry::Owed`). While
//! its node lives, that node makes the call (`super::outbox`). When the node dies, is
//! removed, or restarts (a new boot: its old connections are gone), the registry's leader
//! makes it: [`run`] looks at the owed calls of the registries this node leads every
//! [`TICK`], calls the backend for those whose node is gone ([`orphaned`], pure), at most
//! [`CONCURRENCY`] at once, each retried with backoff, and commits `Delivered` once made.
//! A leader that dies meanwhile leaves them owed: the next leader makes them, so the
//! backend hears each at least once (repeats carry the same connection and presence
//! event, and the bridge drops them).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchboard_proto::client::CloseCode;
use switchboard_proto::peer::{NodeId, PresenceOp};
use tokio::time::Instant;
use tracing::{debug, info};

use super::outbox::retry_delay;
use crate::backend::{Backend, Caller, Event};
use crate::cluster::{Cluster, MemberView};
use crate::ingress::Ingress;
use crate::presence::connection::ConnectionId;
use crate::presence::registry::Owed;
use crate::sync::lock;

/// How often the owed calls are looked at.
pub const TICK: Duration = Duration::from_millis(500);
/// Calls this node makes for gone nodes at once (at the backend's pace: see
/// `super::outbox::CONCURRENCY`).
pub const CONCURRENCY: usize = 32;

/// Whether `connection`'s owed disconnect is the registry leader's to make: its node is
/// not an up member running the process that made it. `me` and `boot`: this node (its
/// own connections are its outbox's while this process runs).
pub fn orphaned(connection: &ConnectionId, members: &[MemberView], me: NodeId, boot: u64) -> bool {
    let node = connection.node();
    let made_by = match connection {
        ConnectionId::Minted { boot, .. } => Some(*boot),
        ConnectionId::Named { .. } => None,
    };
    if node == me {
        return made_by != Some(boot);
    }
    match members.iter().find(|m| m.id == node) {
        Some(member) if member.up => made_by.is_some_and(|b| b != member.boot),
        _ => true,
    }
}

/// The close of a cut-off node's bridged connections.
pub const CUT_OFF_REASON: &str = "cut off from the cluster: reconnect elsewhere";

/// A node cut off from the majority for longer than `node_timeout` has been purged by
/// the others, whose leader makes its bridged connections' disconnect calls: it closes
/// those connections (1012: reconnect elsewhere), so that their consumer hears nothing of
/// them after their disconnect. Runs until shutdown.
pub async fn close_when_cut_off(ingress: Arc<Ingress>, node_timeout: Duration) {
    let shutdown = ingress.lifecycle.shutdown_token().clone();
    let mut cut_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if ingress.health.in_majority() {
            cut_since = None;
            continue;
        }
        let since = *cut_since.get_or_insert_with(Instant::now);
        if since.elapsed() < node_timeout {
            continue;
        }
        let closed = ingress
            .hub
            .close_bridged(CloseCode::Restart.code(), CUT_OFF_REASON);
        if closed > 0 {
            info!(
                closed,
                "cut off from the majority: closed bridged connections (their disconnects are made by the others)"
            );
        }
    }
}

/// One owed call to make: where it is owed, and what to send.
#[derive(Debug, Clone)]
struct Job {
    shard: Option<u16>,
    connection: ConnectionId,
    owed: Owed,
}

/// Attempts per connection: how many, and when the next may start.
#[derive(Debug, Default)]
struct Attempts {
    running: HashSet<ConnectionId>,
    failed: HashMap<ConnectionId, (u32, Instant)>,
}

/// Makes the calls gone nodes owe, until shutdown. See the module header.
pub async fn run(ingress: Arc<Ingress>, backend: Arc<Backend>, cluster: Arc<Cluster>, boot: u64) {
    let shutdown = ingress.lifecycle.shutdown_token().clone();
    let attempts = Arc::new(Mutex::new(Attempts::default()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        let led = ingress.presence_reads.led();
        if led.is_empty() {
            continue;
        }
        let members = cluster.members();
        let now = Instant::now();
        let mut jobs = Vec::new();
        for (shard, replica) in led {
            let state = replica.read();
            for (connection, owed) in state.presence.owed() {
                if orphaned(connection, &members, ingress.node, boot) {
                    jobs.push(Job {
                        shard,
                        connection: connection.clone(),
                        owed: owed.clone(),
                    });
                }
            }
        }
        let due: Vec<Job> = {
            let mut attempts = lock(&attempts);
            let owed: HashSet<&ConnectionId> = jobs.iter().map(|j| &j.connection).collect();
            attempts.failed.retain(|c, _| owed.contains(c));
            let free = CONCURRENCY.saturating_sub(attempts.running.len());
            let due: Vec<Job> = jobs
                .into_iter()
                .filter(|j| !attempts.running.contains(&j.connection))
                .filter(|j| {
                    attempts
                        .failed
                        .get(&j.connection)
                        .is_none_or(|(_, at)| *at <= now)
                })
                .take(free)
                .collect();
            for job in &due {
                attempts.running.insert(job.connection.clone());
            }
            due
        };
        for job in due {
            let (ingress, backend, attempts) = (ingress.clone(), backend.clone(), attempts.clone());
            tokio::spawn(async move {
                let made = deliver(&ingress, &backend, &job).await;
                let mut attempts = lock(&attempts);
                attempts.running.remove(&job.connection);
                if made {
                    attempts.failed.remove(&job.connection);
                } else {
                    let tries = attempts.failed.get(&job.connection).map_or(0, |(n, _)| *n);
                    let next = Instant::now() + retry_delay(tries);
                    attempts
                        .failed
                        .insert(job.connection.clone(), (tries + 1, next));
                }
            });
        }
    }
}

/// Makes one owed call; on success, commits that it was made.
async fn deliver(ingress: &Ingress, backend: &Backend, job: &Job) -> bool {
    let connection = job.connection.to_string();
    let caller = Caller {
        connection: connection.clone(),
        user: job.owed.user.to_string(),
        node: job.connection.node(),
        scope: job.owed.scope.clone(),
    };
    let event = job.owed.event.map(|e| match job.shard {
        Some(shard) => format!("{shard}:{e}"),
        None => e.to_string(),
    });
    let disconnect = Event::Disconnect {
        code: job.owed.code,
        reason: job.owed.reason,
        presence_event: event.as_deref(),
    };
    match backend.event(&caller, None, disconnect).await {
        Ok(_) => {
            info!(%connection, node = caller.node, reason = job.owed.reason, "made the disconnect call a gone node owed");
            ingress.presence.push(PresenceOp::Delivered {
                node: caller.node,
                connection,
                user: caller.user,
            });
            true
        }
        Err(e) => {
            backend.metrics.disconnects_retried.inc();
            debug!(%connection, error = %e, "a gone node's disconnect call failed; retrying");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: NodeId, up: bool, boot: u64) -> MemberView {
        MemberView {
            id,
            up,
            boot,
            ..MemberView::default()
        }
    }

    #[test]
    fn a_call_is_the_leaders_when_the_process_that_owed_it_is_gone() {
        let minted = |node, boot| ConnectionId::Minted { node, boot, n: 1 };
        let members = [
            member(1, true, 10),
            member(2, true, 20),
            member(3, false, 30),
        ];
        // This node (1), this process: its outbox makes it.
        assert!(!orphaned(&minted(1, 10), &members, 1, 10));
        // This node, an earlier process of it: gone.
        assert!(orphaned(&minted(1, 9), &members, 1, 10));
        // A live peer's own: its outbox.
        assert!(!orphaned(&minted(2, 20), &members, 1, 10));
        // A peer that restarted since: gone.
        assert!(orphaned(&minted(2, 19), &members, 1, 10));
        // A peer that is down, or not a member any more.
        assert!(orphaned(&minted(3, 30), &members, 1, 10));
        assert!(orphaned(&minted(4, 40), &members, 1, 10));
        // An id of another form: gone only when its node is.
        let named = |node| ConnectionId::new(node, "custom");
        assert!(!orphaned(&named(2), &members, 1, 10));
        assert!(orphaned(&named(3), &members, 1, 10));
    }
}
