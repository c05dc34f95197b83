//! The backend bridge's client side: the calls a node makes to `--backend-url` for each
//! event of a WebSocket connection (the wire format is `switchboard_proto::bridge`), so
//! that a Django project's own Channels consumer runs behind the cluster.
//!
//! - [`Backend::call`]: one signed POST, within `--backend-timeout-ms`, at most
//!   `--backend-max-inflight` at once from this node (a call waits for a slot within its
//!   timeout); the answer parsed, or why there is none ([`CallError`]).
//! - [`answer`]: what an answer asks of the connection (pure).
//! - [`budget`]: a connection's frames-per-second and bytes-per-second budget (pure).
//! - [`lane`]: a connection's calls, one at a time and in order, and what is left of
//!   them at its end (pure).
//! - [`scope`]: the connection's scope, encoded once at connect, written out for each call.
//! - `client`: HTTP/1.1 keep-alive connections to the backend (hyper).
//!
//! The connection's side (one call at a time, in order; what happens at its end) is the
//! WebSocket session's (`crate::ingress::ws`).

pub mod answer;
pub mod budget;
mod client;
pub mod lane;
pub mod scope;

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::value::RawValue;
use sha2::Sha256;
use switchboard_proto::bridge::{Answer, BRIDGE_VERSION, Call, EventKind, SIGNATURE_HEADER};
use switchboard_proto::peer::CONNECTION_CHANNEL;
use tokio::sync::Semaphore;

use lane::Frame;

pub use client::{ClientError, Endpoint, MAX_ANSWER_BYTES};

use crate::config::BackendSettings;
use crate::metrics::{Counter, Gauge, Histogram, Row};
use crate::secrets::Secrets;

/// Why a call got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No answer within `--backend-timeout-ms` (waiting for a slot included).
    #[error("the backend did not answer within {0:?}")]
    Timeout(Duration),
    /// The backend could not be reached, or the connection broke.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// It answered with another status than 200 (the start of its body given).
    #[error("the backend answered HTTP {status}: {body}")]
    Status { status: u16, body: String },
    /// It answered 200 with a body that is not a bridge answer.
    #[error("the backend's answer is not a bridge answer: {0}")]
    Garbage(String),
}

impl CallError {
    /// The label of its failure metric.
    fn label(&self) -> &'static str {
        match self {
            CallError::Timeout(_) => "timeout",
            CallError::Client(_) => "unreachable",
            CallError::Status { .. } => "status",
            CallError::Garbage(_) => "garbage",
        }
    }
}

/// The bridge's counters.
#[derive(Debug, Default)]
pub struct BackendMetrics {
    calls: [Counter; 3],
    failures: [Counter; 4],
    pub in_flight: Gauge,
    pub seconds: Histogram,
    /// Client frames refused by the budget (`rate_limited`) or a full queue.
    pub frames_refused: Counter,
    /// Connects the consumer rejected (HTTP 403) or failed (HTTP 500).
    pub connects_rejected: Counter,
    /// Connects made while the backend did not answer (refused with 1013, or accepted
    /// without the backend by `--backend-unavailable accept`).
    pub connects_unavailable: Counter,
    /// Connections whose disconnect call waits (or is retried).
    pub disconnects_pending: Gauge,
    /// Disconnect calls retried after a failure.
    pub disconnects_retried: Counter,
    /// Disconnect calls given up: the bound of pending ones was reached.
    pub disconnects_dropped: Counter,
}

const FAILURES: [&str; 4] = ["timeout", "unreachable", "status", "garbage"];

impl BackendMetrics {
    fn kind(kind: EventKind) -> usize {
        match kind {
            EventKind::Connect => 0,
            EventKind::Receive => 1,
            EventKind::Disconnect => 2,
        }
    }

    pub fn rows(&self) -> Vec<Row> {
        let kinds = [
            EventKind::Connect,
            EventKind::Receive,
            EventKind::Disconnect,
        ];
        vec![
            Row::counter_by(
                "backend_calls_total",
                "Calls made to the backend bridge, by event.",
                "event",
                kinds
                    .iter()
                    .map(|k| (k.as_str().to_owned(), self.calls[Self::kind(*k)].get()))
                    .collect(),
            ),
            Row::counter_by(
                "backend_call_failures_total",
                "Backend calls without a usable answer, by why.",
                "reason",
                FAILURES
                    .iter()
                    .zip(&self.failures)
                    .map(|(l, c)| ((*l).to_owned(), c.get()))
                    .collect(),
            ),
            Row::gauge(
                "backend_calls_in_flight",
                "Backend calls this node has in flight.",
                self.in_flight.get(),
            ),
            Row::histogram(
                "backend_call_seconds",
                "Backend calls, from the request to the whole answer.",
                &self.seconds,
            ),
            Row::counter(
                "backend_frames_refused_total",
                "Client frames not sent to the backend: over the connection's budget or queue.",
                self.frames_refused.get(),
            ),
            Row::counter(
                "backend_connects_rejected_total",
                "Connections the consumer rejected (HTTP 403) or failed on (HTTP 500).",
                self.connects_rejected.get(),
            ),
            Row::counter(
                "backend_connects_unavailable_total",
                "Connections opened while the backend did not answer their connect.",
                self.connects_unavailable.get(),
            ),
            Row::gauge(
                "backend_disconnects_pending",
                "Connections whose disconnect call to the backend waits or is retried.",
                self.disconnects_pending.get(),
            ),
            Row::counter(
                "backend_disconnects_retried_total",
                "Disconnect calls retried after the backend failed them.",
                self.disconnects_retried.get(),
            ),
            Row::counter(
                "backend_disconnects_dropped_total",
                "Disconnect calls given up because too many were pending.",
                self.disconnects_dropped.get(),
            ),
        ]
    }
}

/// A connection as every call names it: its id, its user, its node and its scope.
#[derive(Debug)]
pub struct Caller {
    pub connection: String,
    pub user: String,
    pub node: u64,
    /// The scope, encoded (see [`scope`]).
    pub scope: Arc<[u8]>,
}

impl Caller {
    /// Its channel name: the consumer's `self.channel_name`.
    pub fn channel(&self) -> String {
        format!("{CONNECTION_CHANNEL}{}", self.connection)
    }

    /// Bytes it holds (the bound of pending disconnects counts them).
    pub fn size(&self) -> usize {
        self.connection.len() + self.user.len() + self.scope.len()
    }
}

/// An event of a connection, with what it carries.
#[derive(Debug, Clone, Copy)]
pub enum Event<'a> {
    Connect,
    Receive(&'a Frame),
    /// Its end: the close code, why, and the presence event that ended it (a purge).
    Disconnect {
        code: u16,
        reason: &'a str,
        presence_event: Option<&'a str>,
    },
}

/// See the module header.
#[derive(Debug)]
pub struct Backend {
    pub settings: BackendSettings,
    /// This node's WebSocket address (ip, port): the scope's `server`.
    server: (String, u16),
    client: client::Client,
    secrets: Arc<Secrets>,
    slots: Semaphore,
    pub metrics: BackendMetrics,
}

impl Backend {
    /// The backend of `settings`, signing with the secret `secrets` holds.
    pub fn new(
        settings: BackendSettings,
        secrets: Arc<Secrets>,
        server: std::net::SocketAddr,
    ) -> Result<Self, String> {
        let endpoint = Endpoint::parse(&settings.url)?;
        Ok(Backend {
            server: (server.ip().to_string(), server.port()),
            slots: Semaphore::new(settings.max_inflight),
            client: client::Client::new(endpoint),
            settings,
            secrets,
            metrics: BackendMetrics::default(),
        })
    }

    /// The endpoint calls go to.
    pub fn endpoint(&self) -> &Endpoint {
        self.client.endpoint()
    }

    /// Calls the backend with `caller`'s event, its call number `seq` (none for a dead
    /// node's disconnect).
    pub async fn event(
        &self,
        caller: &Caller,
        seq: Option<u64>,
        event: Event<'_>,
    ) -> Result<Answer, CallError> {
        let scope = scope::to_json(&caller.scope);
        let scope: &RawValue = serde_json::from_str(&scope)
            .or_else(|_| serde_json::from_str("{}"))
            .map_err(|e| CallError::Garbage(e.to_string()))?;
        let channel = caller.channel();
        let mut call = Call {
            v: BRIDGE_VERSION,
            kind: EventKind::Connect,
            connection: &caller.connection,
            channel: &channel,
            node: caller.node,
            server: Some(self.server.clone()),
            user: &caller.user,
            seq,
            scope,
            text: None,
            bytes: None,
            code: None,
            reason: None,
            presence_event: None,
        };
        match event {
            Event::Connect => {}
            Event::Receive(Frame::Text(text)) => {
                call.kind = EventKind::Receive;
                call.text = Some(text);
            }
            Event::Receive(Frame::Binary(bytes)) => {
                call.kind = EventKind::Receive;
                call.bytes = Some(base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            Event::Disconnect {
                code,
                reason,
                presence_event,
            } => {
                call.kind = EventKind::Disconnect;
                call.code = Some(code);
                call.reason = Some(reason);
                call.presence_event = presence_event;
            }
        }
        self.call(&call).await
    }

    /// Makes one call: signed, within the timeout, in one of this node's slots.
    pub async fn call(&self, call: &Call<'_>) -> Result<Answer, CallError> {
        let metrics = &self.metrics;
        metrics.calls[BackendMetrics::kind(call.kind)].inc();
        let result = self.call_inner(call).await;
        if let Err(e) = &result {
            let at = FAILURES.iter().position(|l| *l == e.label()).unwrap_or(0);
            metrics.failures[at].inc();
        }
        result
    }

    async fn call_inner(&self, call: &Call<'_>) -> Result<Answer, CallError> {
        let body = serde_json::to_vec(call).map_err(|e| CallError::Garbage(e.to_string()))?;
        let timeout = self.settings.timeout;
        let exchange = async {
            let _slot = self.slots.acquire().await;
            self.metrics.in_flight.inc();
            let started = Instant::now();
            let signature = self.sign(&body);
            let result = self
                .client
                .post(Bytes::from(body), SIGNATURE_HEADER, signature)
                .await;
            self.metrics.in_flight.dec();
            self.metrics.seconds.observe(started.elapsed());
            result
        };
        let (status, body) = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| CallError::Timeout(timeout))??;
        if status != 200 {
            let head = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
            return Err(CallError::Status { status, body: head });
        }
        serde_json::from_slice(&body).map_err(|e| CallError::Garbage(e.to_string()))
    }

    /// `t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>`.
    fn sign(&self, body: &[u8]) -> String {
        let secret = self.secrets.backend.get();
        signature(
            secret.as_deref().unwrap_or_default(),
            crate::clock::unix_secs(),
            body,
        )
    }
}

/// The signature header's value for `body` sent at `t`.
pub fn signature(secret: &[u8], t: u64, body: &[u8]) -> String {
    #[allow(clippy::expect_used)]
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any size");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_an_hmac_of_the_time_and_the_body() {
        // The same as Python's
        // hmac.new(b"key", b"1700000000." + b'{"a":1}', hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"key", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=a438e398bfafc57e4396bb7fc2304422f0f768e965d073ca313cb52e22e6ad03"
        );
    }
}
