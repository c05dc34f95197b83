//! What admin connections may hold, so that no client (with a token or without) can
//! lock the admin plane or bloat the node:
//! - **Slots**: [`MAX_ADMIN_CONNECTIONS`] connections at once. Until it makes a request
//!   with a valid token, a connection is unauthenticated: those hold at most half the
//!   slots ([`MAX_UNAUTHENTICATED`]), past it the oldest is closed to make room (as on
//!   the RESP port), and each must authenticate within [`PRE_AUTH_TIMEOUT`]. Silent
//!   sockets, however many and however fast they reopen, leave the other half to the
//!   operators and the scrapers. The open routes (`/healthz`, `/readyz`, the page's
//!   files) are served meanwhile: a load balancer's checks need no token.
//! - **Bodies**: a body whose `Content-Length` is over its route's limit is refused with
//!   413 on its head, before a byte of it is read; bodies hold at most
//!   [`MAX_BODY_BYTES_IN_FLIGHT`] bytes together until their request is answered (a slow
//!   chunked body cannot pin memory per slot): a body of known length waits its turn for
//!   its whole room (408 past [`BODY_TIMEOUT`]), a chunked one takes room as its chunks
//!   come and is refused with 503 when there is none. One admin token's requests hold at
//!   most [`MAX_BODY_BYTES_PER_TOKEN`] of them (503 past it, at once): one publisher's
//!   slow bodies cannot take the room of the others.
//! - **Idempotency keys**: one admin token may claim at most [`MAX_CLAIMS_PER_TOKEN`]
//!   keys (a broadcast claims one a group) per [`IDEMPOTENCY_WINDOW_MS`] on this node,
//!   refilled evenly (429 past it, nothing published): one publisher cannot fill the
//!   cluster's table, whose keys leave only by age.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::ingress::resp::guard::Unauthenticated;
use crate::presence::claims::{IDEMPOTENCY_WINDOW_MS, MAX_CLAIMS};
use crate::sync::lock;

/// Admin connections served at once; more wait in the listen backlog.
pub const MAX_ADMIN_CONNECTIONS: usize = 256;
/// Of which unauthenticated ones may hold at most this many.
pub const MAX_UNAUTHENTICATED: usize = MAX_ADMIN_CONNECTIONS / 2;
/// Longest an admin connection may stay without a request that carries a valid token.
pub const PRE_AUTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Body bytes all admin requests being read may hold together.
pub const MAX_BODY_BYTES_IN_FLIGHT: usize = 64 * 1024 * 1024;
/// Body bytes the requests of one admin token may hold together.
pub const MAX_BODY_BYTES_PER_TOKEN: usize = MAX_BODY_BYTES_IN_FLIGHT / 4;
/// Idempotency keys one admin token may claim on this node per window (a tenth of the
/// cluster's table).
pub const MAX_CLAIMS_PER_TOKEN: usize = MAX_CLAIMS / 10;
/// Tokens whose claims are followed; past it, those back to a full share are forgotten.
const MAX_CLAIMING_TOKENS: usize = 1024;
/// Longest a client may take to send a body (and to get room for it).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// A refusal: the status and the reason.
pub type Refusal = (u16, String);

/// The admin plane's shared bounds (one per node).
#[derive(Debug)]
pub struct Plane {
    unauthenticated: Mutex<Unauthenticated<CancellationToken>>,
    bodies: Arc<Semaphore>,
    /// The most one body may hold (its bytes are taken from `bodies` as they come).
    body_budget: usize,
    /// Body bytes held by each token's requests (by a hash of the token).
    by_token: Arc<Mutex<HashMap<u64, usize>>>,
    token_budget: usize,
    /// Each claiming token's keys left (refilled evenly over the window), as of when.
    claims: Mutex<HashMap<u64, (f64, Instant)>>,
}

/// Which admin token sent a request: a hash of it (`None`: the node has no admin
/// tokens, every request is the operator's).
pub type Sender = Option<u64>;

/// The sender of a request carrying `token` (a valid admin token): its hash, so that
/// the plane keeps no copy of a secret.
pub fn sender(token: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    token.hash(&mut hasher);
    hasher.finish()
}

/// The room a body holds until its request is answered (dropped: given back).
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    _token: TokenBytes,
}

/// Bytes a request holds of its token's share.
#[derive(Debug)]
pub struct TokenBytes {
    by_token: Arc<Mutex<HashMap<u64, usize>>>,
    sender: Sender,
    bytes: usize,
    budget: usize,
}

impl TokenBytes {
    /// Takes `n` more bytes of the sender's share, or says it is full.
    fn take(&mut self, n: usize) -> Result<(), Refusal> {
        let Some(who) = self.sender else {
            return Ok(());
        };
        let mut held = lock(&self.by_token);
        let mine = held.entry(who).or_default();
        if *mine + n > self.budget {
            return Err((
                503,
                format!(
                    "this token's admin request bodies in flight hold {} bytes already: retry shortly",
                    self.budget
                ),
            ));
        }
        *mine += n;
        self.bytes += n;
        Ok(())
    }
}

impl Drop for TokenBytes {
    fn drop(&mut self) {
        let Some(who) = self.sender else {
            return;
        };
        let mut held = lock(&self.by_token);
        if let Some(mine) = held.get_mut(&who) {
            *mine = mine.saturating_sub(self.bytes);
            if *mine == 0 {
                held.remove(&who);
            }
        }
    }
}

impl Plane {
    /// Bounds for bodies of at most `largest_body` bytes (the publish limit).
    pub fn new(largest_body: usize) -> Self {
        // One body of the largest size must always fit.
        let budget = MAX_BODY_BYTES_IN_FLIGHT.max(largest_body);
        Plane {
            // One address may hold them all: loopback scrapers and a local attacker
            // share 127.0.0.1, and eviction (not refusal) keeps room for the newest.
            unauthenticated: Mutex::new(Unauthenticated::with_per_ip(
                MAX_UNAUTHENTICATED,
                usize::MAX,
            )),
            bodies: Arc::new(Semaphore::new(budget)),
            body_budget: budget,
            by_token: Arc::new(Mutex::new(HashMap::new())),
            token_budget: MAX_BODY_BYTES_PER_TOKEN.max(largest_body),
            claims: Mutex::new(HashMap::new()),
        }
    }

    /// Room for `sender` to claim `keys` idempotency keys at `now`, taken; or 429.
    pub fn claim_room(&self, sender: Sender, keys: usize, now: Instant) -> Result<(), Refusal> {
        let Some(who) = sender else {
            return Ok(());
        };
        let share = MAX_CLAIMS_PER_TOKEN as f64;
        let per_sec = share / (IDEMPOTENCY_WINDOW_MS as f64 / 1000.0);
        let refilled = |(left, at): (f64, Instant)| {
            (left + now.saturating_duration_since(at).as_secs_f64() * per_sec).min(share)
        };
        let mut claims = lock(&self.claims);
        if claims.len() >= MAX_CLAIMING_TOKENS && !claims.contains_key(&who) {
            claims.retain(|_, entry| refilled(*entry) < share);
        }
        let left = claims.get(&who).copied().map_or(share, refilled);
        if (keys as f64) > left {
            return Err((
                429,
                format!(
                    "this token claimed its {MAX_CLAIMS_PER_TOKEN} idempotency keys of the last 5 minutes on this node \
                     (a broadcast claims one a group): nothing published, retry later"
                ),
            ));
        }
        claims.insert(who, (left - keys as f64, now));
        Ok(())
    }

    /// A new connection from `ip`: its place among the unauthenticated ones, and the
    /// token that closes it if a newer one needs the room.
    pub fn enter(self: &Arc<Self>, ip: std::net::IpAddr) -> Pending {
        let evicted = CancellationToken::new();
        let entered = lock(&self.unauthenticated).enter(ip, evicted.clone());
        let ticket = match entered {
            Some((ticket, oldest)) => {
                if let Some(oldest) = oldest {
                    oldest.cancel();
                }
                Some(ticket)
            }
            // Cannot happen: no per-address cap here (eviction keeps room for the newest).
            None => {
                evicted.cancel();
                None
            }
        };
        Pending {
            plane: self.clone(),
            ticket: Mutex::new(ticket),
            evicted,
        }
    }

    /// Reads a body of at most `limit` bytes (`what` names the limit in the refusal)
    /// from `sender`. Its bytes count against the plane's bodies in flight, and its
    /// token's, until the [`InFlight`] returned is dropped.
    pub async fn read_body(
        &self,
        mut body: Incoming,
        limit: usize,
        what: &str,
        sender: Sender,
    ) -> Result<(Bytes, InFlight), Refusal> {
        let too_large = || (413, format!("request body over {limit} bytes ({what})"));
        // A Content-Length says the size on the head: refused before a byte is read.
        if body.size_hint().lower() > limit as u64 {
            return Err(too_large());
        }
        let limit = limit.min(self.body_budget);
        let full = || {
            (
                503,
                format!(
                    "admin request bodies in flight hold {} bytes already: retry shortly",
                    self.body_budget
                ),
            )
        };
        let read = async {
            // A body of known length takes its room at once (waiting its turn, never
            // holding part of the room while it waits for more); a chunked one takes it
            // as its chunks come, and is refused when there is none left.
            let known = body.size_hint().exact();
            let mut token = TokenBytes {
                by_token: self.by_token.clone(),
                sender,
                bytes: 0,
                budget: self.token_budget,
            };
            token.take(known.unwrap_or(0) as usize)?;
            let mut held = self
                .bodies
                .clone()
                .acquire_many_owned(known.unwrap_or(0) as u32)
                .await
                .map_err(|_| (503, "shutting down".to_owned()))?;
            let mut bytes = BytesMut::with_capacity(known.unwrap_or(0) as usize);
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| (400, format!("request body could not be read: {e}")))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers
                };
                if bytes.len() + data.len() > limit {
                    return Err(too_large());
                }
                if known.is_none() {
                    token.take(data.len())?;
                    let more = self
                        .bodies
                        .clone()
                        .try_acquire_many_owned(data.len() as u32)
                        .map_err(|_| full())?;
                    held.merge(more);
                }
                bytes.extend_from_slice(&data);
            }
            let in_flight = InFlight {
                _permit: held,
                _token: token,
            };
            Ok((bytes.freeze(), in_flight))
        };
        match tokio::time::timeout(BODY_TIMEOUT, read).await {
            Ok(read) => read,
            Err(_) => Err((
                408,
                "request body not received in time (or the node's admin bodies in flight \
                 were full)"
                    .into(),
            )),
        }
    }
}

/// One connection's place among the unauthenticated ones, given back when it
/// authenticates or ends.
#[derive(Debug)]
pub struct Pending {
    plane: Arc<Plane>,
    ticket: Mutex<Option<u64>>,
    /// Cancelled when a newer connection needs the room.
    pub evicted: CancellationToken,
}

impl Pending {
    /// A request with a valid token came: the connection holds an ordinary slot now.
    pub fn authenticated(&self) {
        if let Some(ticket) = lock(&self.ticket).take() {
            lock(&self.plane.unauthenticated).leave(ticket);
        }
    }

    /// The plane's bounds.
    pub fn plane(&self) -> &Plane {
        &self.plane
    }

    /// Whether it has yet to authenticate.
    pub fn waiting(&self) -> bool {
        lock(&self.ticket).is_some()
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        self.authenticated();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tokens_idempotency_keys_are_bounded_per_window_and_refill_evenly() {
        let plane = Plane::new(1024);
        let t0 = Instant::now();
        let (flooder, other) = (Some(1), Some(2));
        // Ten broadcasts of a thousand groups take the share; the eleventh is refused.
        for _ in 0..10 {
            assert_eq!(plane.claim_room(flooder, 1000, t0), Ok(()));
        }
        let refused = plane
            .claim_room(flooder, 1000, t0)
            .expect_err("over its share");
        assert_eq!(refused.0, 429);
        assert!(refused.1.contains("this token"), "{}", refused.1);
        // Other tokens, and a node without admin tokens, are not touched by it.
        assert_eq!(plane.claim_room(other, 1000, t0), Ok(()));
        assert_eq!(plane.claim_room(None, 100_000, t0), Ok(()));
        // A tenth of the window gives back a tenth of the share.
        let later = t0 + Duration::from_millis(IDEMPOTENCY_WINDOW_MS / 10);
        assert_eq!(plane.claim_room(flooder, 1000, later), Ok(()));
        assert!(plane.claim_room(flooder, 10, later).is_err());
    }

    #[test]
    fn tokens_back_to_a_full_share_are_forgotten_past_the_bound() {
        let plane = Plane::new(1024);
        let t0 = Instant::now();
        for who in 0..MAX_CLAIMING_TOKENS as u64 {
            assert_eq!(plane.claim_room(Some(who), 1, t0), Ok(()));
        }
        let refilled = t0 + Duration::from_millis(IDEMPOTENCY_WINDOW_MS);
        assert_eq!(plane.claim_room(Some(u64::MAX), 1, refilled), Ok(()));
        assert_eq!(
            lock(&plane.claims).len(),
            1,
            "the refilled ones were dropped"
        );
    }
}
