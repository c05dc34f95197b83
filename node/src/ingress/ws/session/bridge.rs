//! A bridged session's side of the backend (`--backend-url`): client frames that are
//! not Switchboard ops go to the project's consumer, one call at a time and in order
//! (`backend::lane`), and what the consumer did comes back as effects on this connection
//! (`backend::answer`): frames for it alone, groups joined and left, a close. At the end,
//! what is still owed (the call in flight, queued frames, the disconnect) goes to the
//! node's outbox.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_proto::bridge::Answer;
use switchboard_proto::client::{CloseCode, ErrorCode};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use super::Session;
use crate::backend::answer::{self, Effect};
use crate::backend::budget::Budget;
use crate::backend::lane::{Frame, Lane, Offered};
use crate::backend::{CallError, Caller, Event};
use crate::hub::{Act, Local};
use crate::ingress::ws::Stream;
use crate::ingress::ws::outbox::{InFlight, ended};
use crate::ingress::ws::state::{End, error};

/// The ops a client frame may name: a frame that names one (`{"op": "ping", ...}`) is
/// Switchboard's, even when malformed; any other frame is the consumer's.
const OPS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "presence",
    "presence_subscribe",
    "presence_unsubscribe",
    "ping",
    "refresh",
];

/// Whether a text frame that is not a valid op still names one.
pub(super) fn names_an_op(text: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Tagged<'a> {
        #[serde(borrow)]
        op: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Tagged<'_>>(text).is_ok_and(|t| OPS.contains(&t.op.as_ref()))
}

/// A session's bridge: its scope, its lane (made at its first frame: most connections
/// send none), the call in flight, and the effects of its accepted connect, applied
/// before anything else. Kept small: every bridged connection holds one.
pub(super) struct Bridged {
    scope: Arc<[u8]>,
    lane: Option<Box<Lane>>,
    pub(super) call: Option<InFlight>,
    first: Option<Box<[Effect]>>,
}

impl std::fmt::Debug for Bridged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridged")
            .field("lane", &self.lane)
            .field("scope", &self.scope.len())
            .field("in_flight", &self.call.is_some())
            .finish_non_exhaustive()
    }
}

impl Bridged {
    pub(super) fn new(scope: Arc<[u8]>) -> Self {
        Bridged {
            scope,
            lane: None,
            call: None,
            first: None,
        }
    }
}

impl<S: Stream> Session<S> {
    /// Who this connection is to the backend.
    fn caller(&self, scope: &Arc<[u8]>) -> Arc<Caller> {
        Arc::new(Caller {
            connection: self.connection.clone(),
            user: self.identity.user.clone(),
            node: self.ingress.node,
            scope: scope.clone(),
        })
    }

    /// The connection ended with `code`: its disconnect is owed, and what it still owes
    /// the backend goes to the outbox.
    pub(super) fn finish_bridged(&mut self, code: u16) {
        let Some(bridged) = self.bridge.take() else {
            return;
        };
        let ingress = self.ingress.clone();
        let (frames, seq) = match bridged.lane {
            Some(lane) => lane.into_rest(),
            None => (Vec::new(), 1),
        };
        let caller = self.caller(&bridged.scope);
        ended(&ingress, bridged.call, caller, frames, seq, code, "closed");
    }
}

impl<S: Stream> Session<S> {
    /// The effects of the accepted connect (frames, groups, a close), applied when the
    /// session starts.
    pub(crate) fn effects_first(&mut self, effects: Vec<Effect>) {
        if let Some(bridged) = &mut self.bridge
            && !effects.is_empty()
        {
            bridged.first = Some(effects.into_boxed_slice());
        }
    }

    pub(super) async fn first_effects(&mut self) -> Result<(), End> {
        let effects = match self.bridge.as_mut().and_then(|b| b.first.take()) {
            Some(effects) => effects.into_vec(),
            None => return Ok(()),
        };
        self.apply(effects).await
    }

    /// A binary frame: the consumer's, on a bridged connection; else refused.
    pub(super) async fn on_binary(&mut self, bytes: Bytes) -> Result<(), End> {
        if !self.spend(super::ops_budget::COST_SIMPLE, None).await? {
            return Ok(());
        }
        if self.bridge.is_some() {
            return self.for_backend(Frame::Binary(bytes)).await;
        }
        let reply = error(
            ErrorCode::BadRequest,
            "binary frames carry no ops; send JSON text",
            None,
        );
        self.reply(&reply).await
    }

    /// A client frame for the consumer: called at once, queued behind the call in flight,
    /// or refused (over the budget or the queue).
    pub(super) async fn for_backend(&mut self, frame: Frame) -> Result<(), End> {
        let (Some(bridged), Some(backend)) = (&mut self.bridge, &self.ingress.backend) else {
            return Ok(());
        };
        let now = Instant::now();
        let lane = bridged.lane.get_or_insert_with(|| {
            let settings = &backend.settings;
            Box::new(Lane::new(Budget::new(
                settings.frames_per_sec,
                settings.bytes_per_sec,
                now,
            )))
        });
        match lane.offer(frame, now) {
            Offered::Start(frame, seq) => {
                self.start_call(frame, seq);
                Ok(())
            }
            Offered::Queued => Ok(()),
            Offered::Refused => {
                self.backend_refused();
                let reply = error(
                    ErrorCode::RateLimited,
                    "too many frames for the backend: slow down (--backend-frames-per-sec, \
                     --backend-bytes-per-sec)",
                    None,
                );
                self.reply(&reply).await
            }
            Offered::Close => {
                self.backend_refused();
                Err(End::Close(
                    CloseCode::PolicyViolation,
                    "kept sending past the frame budget".into(),
                ))
            }
        }
    }

    fn backend_refused(&self) {
        if let Some(backend) = &self.ingress.backend {
            backend.metrics.frames_refused.inc();
        }
    }

    /// Starts the call of `frame` (call number `seq`).
    fn start_call(&mut self, frame: Frame, seq: u64) {
        let Some(backend) = self.ingress.backend.clone() else {
            return;
        };
        let Some(scope) = self.bridge.as_ref().map(|b| b.scope.clone()) else {
            return;
        };
        let caller = self.caller(&scope);
        let Some(bridged) = &mut self.bridge else {
            return;
        };
        bridged.call = Some(Box::pin(async move {
            backend
                .event(&caller, Some(seq), Event::Receive(&frame))
                .await
        }));
    }

    /// The call in flight was answered: its effects, then the next queued frame's call.
    pub(super) async fn answered(&mut self, answer: Result<Answer, CallError>) -> Result<(), End> {
        let next = match &mut self.bridge {
            Some(bridged) => {
                bridged.call = None;
                bridged.lane.as_mut().and_then(|lane| lane.done())
            }
            None => None,
        };
        if let Some((frame, seq)) = next {
            self.start_call(frame, seq);
        }
        match answer {
            Ok(answer) => self.apply(answer::effects(answer)).await,
            Err(e) => {
                debug!(connection = %self.connection, error = %e, "a frame's call failed");
                let reply = error(
                    ErrorCode::Unavailable,
                    &format!("the backend did not take this frame: {e}"),
                    None,
                );
                self.reply(&reply).await
            }
        }
    }

    /// Carries out a call's effects in order.
    async fn apply(&mut self, effects: Vec<Effect>) -> Result<(), End> {
        let mut frames = Vec::new();
        let here = Local::Connection(self.outlet.id);
        for effect in effects {
            match effect {
                Effect::Text(text) => frames.push(Message::Text(text.into())),
                Effect::Binary(bytes) => frames.push(Message::Binary(bytes)),
                Effect::Join(group) => {
                    self.ingress.hub.act(here, Act::Join(&group));
                }
                Effect::Leave(group) => {
                    self.ingress.hub.act(here, Act::Leave(&group));
                }
                Effect::Close(code, reason) => {
                    self.write_frames(frames).await?;
                    return Err(End::Asked(code, reason));
                }
            }
        }
        self.write_frames(frames).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_that_names_an_op_is_switchboards() {
        assert!(names_an_op(r#"{"op": "subscribe"}"#));
        assert!(names_an_op(r#"{"op":"ping","extra":1}"#));
        assert!(!names_an_op(r#"{"action": "mark_read", "id": 5}"#));
        assert!(!names_an_op(r#"{"op": "mark_read"}"#));
        assert!(!names_an_op("hello"));
        assert!(!names_an_op(r#"["op"]"#));
    }
}
