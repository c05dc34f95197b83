//! A connection's start and end with the backend bridge (`--backend-url`).
//!
//! Start: the connection's record, with its scope, is committed to the presence
//! registry first (`ConnectBridged`), so that from the moment the consumer hears of the
//! connect its disconnect is owed, whatever happens to this node; then the consumer's
//! `connect` is called, before the handshake, so that a refusal is HTTP 403 as under
//! Daphne.
//!
//! End: the registry is told the connection left and its disconnect is owed
//! (`LeaveOwed`), and what it still owes the backend goes to the node's
//! [`super::outbox::Outbox`], which marks it delivered once made.

use std::sync::Arc;

use switchboard_proto::client::CloseCode;
use switchboard_proto::peer::{ConnectionRecord, PresenceOp};
use tracing::debug;

use super::outbox::ended;
use super::session::Session;
use super::{Admitted, Stream, close, handshake, register};
use crate::backend::answer::{self, Connected};
use crate::backend::{Backend, Caller, Event, scope};
use crate::broker::ConnId;
use crate::clock::unix_millis;
use crate::config::BackendUnavailable;
use crate::ingress::Ingress;
use crate::ingress::http::{Request, Response};

/// The upgrade of an admitted client, through the consumer's `connect`.
pub(super) async fn upgrade<S: Stream>(
    mut stream: S,
    req: Request,
    peer: std::net::SocketAddr,
    ingress: Arc<Ingress>,
    admitted: Admitted,
    (id, connection): (ConnId, String),
    backend: Arc<Backend>,
) -> anyhow::Result<Option<Session<S>>> {
    let scope = scope::encode(&scope::Parts {
        path: &req.path,
        query: req.query.as_deref().unwrap_or_default(),
        headers: &req.headers,
        keep: &backend.settings.headers,
        client: peer,
        tls: ingress.tls.is_some(),
    });
    let mut caller = Caller {
        connection: connection.clone(),
        user: admitted.identity.user.clone(),
        node: ingress.node,
        scope: Arc::from(scope),
    };
    let committed = committed(&ingress, &caller, backend.settings.timeout).await;
    // Where this node holds the connection's registry, the record's copy of the scope
    // is the one the session keeps: one copy per node, not two.
    if let Some(shared) = ingress
        .presence_reads
        .bridged_scope(&caller.user, &caller.connection)
        .filter(|s| **s == *caller.scope)
    {
        caller.scope = shared;
    }
    let caller = Arc::new(caller);
    if !committed {
        admitted.release(&ingress);
        let (mut ws, _) = handshake(stream, req, None, &ingress).await?;
        close(
            &mut ws,
            CloseCode::TryAgainLater.code(),
            "presence not committed, try again later",
        )
        .await;
        return Ok(None);
    }
    let metrics = &backend.metrics;
    let outcome = match backend.event(&caller, Some(0), Event::Connect).await {
        Ok(answer) => Some(answer::connected(answer)),
        Err(e) => {
            debug!(%connection, error = %e, "the backend did not answer a connect");
            metrics.connects_unavailable.inc();
            None
        }
    };
    let (subprotocol, effects) = match outcome {
        Some(Connected::Accepted {
            subprotocol,
            effects,
        }) => (subprotocol, effects),
        Some(refused @ (Connected::Rejected | Connected::Failed(_))) => {
            metrics.connects_rejected.inc();
            let response = match refused {
                Connected::Failed(why) => {
                    debug!(%connection, error = %why, "the consumer failed its connect");
                    Response::text(500, "Internal Server Error\n")
                }
                _ => Response::text(403, "Access denied\n"),
            };
            let _ = response.write(&mut stream).await;
            admitted.release(&ingress);
            // As Daphne: the consumer hears of the refused connection's end (1006).
            ended(&ingress, None, caller, Vec::new(), 1, 1006, "rejected");
            return Ok(None);
        }
        None if backend.settings.unavailable == BackendUnavailable::Refuse => {
            admitted.release(&ingress);
            ended(&ingress, None, caller, Vec::new(), 1, 1006, "unavailable");
            let (mut ws, _) = handshake(stream, req, None, &ingress).await?;
            close(
                &mut ws,
                CloseCode::TryAgainLater.code(),
                "backend unavailable, try again later",
            )
            .await;
            return Ok(None);
        }
        None => (None, Vec::new()),
    };
    let (ws, req) = match handshake(stream, req, subprotocol.as_deref(), &ingress).await {
        Ok(done) => done,
        Err(e) => {
            admitted.release(&ingress);
            ended(&ingress, None, caller, Vec::new(), 1, 1006, "closed");
            return Err(e);
        }
    };
    drop(req);
    let scope = caller.scope.clone();
    drop(caller);
    let mut session = register(ws, admitted, id, connection, Some(scope), ingress);
    session.effects_first(effects);
    Ok(Some(session))
}

/// Commits the connection's record with its scope, within `within`. When it is not
/// committed in time (no majority), the record is taken back (it cancels out if still
/// queued, or leaves) and the consumer never hears of the connection.
async fn committed(ingress: &Ingress, caller: &Caller, within: std::time::Duration) -> bool {
    let record = ConnectionRecord {
        node: caller.node,
        connection: caller.connection.clone(),
        user: caller.user.clone(),
        connected_at: unix_millis(),
    };
    let done = ingress.presence.push_committed(PresenceOp::ConnectBridged {
        record,
        scope: bytes::Bytes::copy_from_slice(&caller.scope),
    });
    if let Ok(Ok(())) = tokio::time::timeout(within, done).await {
        return true;
    }
    ingress
        .presence
        .forget_ack(&caller.user, &caller.connection);
    ingress.presence.push(PresenceOp::Leave {
        node: caller.node,
        connection: caller.connection.clone(),
        user: caller.user.clone(),
    });
    false
}
