//! The answers to a client's simple ops: subscribe and unsubscribe, presence, ping,
//! refresh (those that recover or follow presence are the session's own).

use switchboard_proto::client::{ClientOp, ErrorCode, ServerReply};

use super::super::state::error;
use super::{Session, expiry};
use crate::broker::Permissions;
use crate::ingress::ws::Stream;

impl<S: Stream> Session<S> {
    /// Joins `group`, or the error reply.
    pub(super) fn join(&self, group: &str, id: Option<u64>) -> Result<(), ServerReply> {
        match self.ingress.hub.join(&self.outlet, group) {
            Ok(()) => Ok(()),
            Err(e @ crate::broker::JoinError::TooManyGroups(_)) => {
                Err(error(ErrorCode::TooManyGroups, &e.to_string(), id))
            }
            Err(e @ crate::broker::JoinError::InvalidName(_)) => {
                Err(error(ErrorCode::BadRequest, &e.to_string(), id))
            }
            Err(e) => Err(error(ErrorCode::Forbidden, &e.to_string(), id)),
        }
    }

    pub(super) async fn answer(&mut self, op: ClientOp) -> ServerReply {
        let ingress = self.ingress.clone();
        let id = op.id();
        match op {
            ClientOp::Subscribe { group, .. } => match self.join(&group, id) {
                Ok(()) => ServerReply::Subscribed {
                    group,
                    recovered: None,
                    epoch: None,
                    offset: None,
                    id,
                },
                Err(reply) => reply,
            },
            ClientOp::Unsubscribe { group, .. } => {
                match ingress.hub.leave(self.outlet.id, &group) {
                    Ok(()) => {
                        self.state.forget(&group);
                        ServerReply::Unsubscribed { group, id }
                    }
                    Err(e) => error(ErrorCode::BadRequest, &e.to_string(), id),
                }
            }
            ClientOp::Presence { user, .. } => {
                let user = user.unwrap_or_else(|| self.identity.user.clone());
                if !ingress.hub.may_query_presence(self.outlet.id, &user) {
                    return error(
                        ErrorCode::Forbidden,
                        "this token may only query its own presence",
                        id,
                    );
                }
                // Cluster-wide: this node's replica of the registry, or the user's shard.
                match ingress.presence_reads.of(&user, false).await {
                    Ok(connections) => ServerReply::Presence {
                        user,
                        connections,
                        id,
                    },
                    Err(e) => error(
                        ErrorCode::Unavailable,
                        &format!("presence unavailable now: {e}"),
                        id,
                    ),
                }
            }
            ClientOp::PresenceUnsubscribe { user, .. } => {
                let user = user.unwrap_or_else(|| self.identity.user.clone());
                if let Some(follow) = &mut self.follow {
                    follow.remove(&user);
                    if follow.is_empty() {
                        self.follow = None;
                    }
                }
                ServerReply::PresenceUnsubscribed { user, id }
            }
            ClientOp::PresenceSubscribe { id, .. } => error(
                ErrorCode::BadRequest,
                "presence_subscribe is answered above",
                id,
            ),
            ClientOp::Ping { .. } => ServerReply::Pong { id },
            ClientOp::Refresh { token, .. } => {
                let verified = ingress.secrets.verifier.get().verify(&token);
                let revoked = verified.as_ref().is_ok_and(|identity| {
                    ingress.replica.read().revocations.revoked(
                        &identity.user,
                        identity.iat,
                        crate::clock::unix_millis(),
                    )
                });
                match verified {
                    Ok(_) if revoked => error(ErrorCode::InvalidToken, "token revoked", id),
                    Ok(identity) if identity.user == self.identity.user => {
                        let (left, joined) = ingress.hub.refresh(
                            &self.outlet,
                            Permissions::new(
                                identity.groups.iter().cloned(),
                                identity.presence_any,
                            )
                            .issued_at(identity.iat),
                        );
                        for group in &left {
                            self.state.forget(group);
                        }
                        let exp = identity.exp;
                        self.state.set_expiry(expiry(&ingress, &identity));
                        // Without the `presence` claim now, only the own user is followed.
                        if !identity.presence_any
                            && let Some(follow) = &mut self.follow
                        {
                            follow.retain_only(&identity.user);
                            if follow.is_empty() {
                                self.follow = None;
                            }
                        }
                        self.identity = identity;
                        ServerReply::Refreshed {
                            exp: Some(exp),
                            left,
                            joined,
                            id,
                        }
                    }
                    Ok(_) => error(
                        ErrorCode::InvalidToken,
                        "the new token names another user",
                        id,
                    ),
                    Err(e) => error(ErrorCode::InvalidToken, &e.to_string(), id),
                }
            }
        }
    }
}
