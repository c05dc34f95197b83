//! What keeps unauthenticated RESP clients from locking out publishers or guessing the
//! password quickly, with no IO and no clock (the driver passes `now`):
//! - [`AuthThrottle`]: failed `AUTH`s per client address, as a token bucket. A burst of
//!   [`AUTH_BURST`] failures costs nothing; after that each failure makes the connection
//!   wait until the bucket has refilled (one failure per [`AUTH_REFILL`]), at most
//!   [`MAX_AUTH_WAIT`]: about one guess a second per address, however many connections.
//! - [`Unauthenticated`]: connections not yet authenticated, per client address, at most
//!   [`MAX_UNAUTHENTICATED_PER_IP`] at once: idle connections from one address cannot
//!   take the slots of publishers from others; and in all at most a share of the RESP
//!   slots ([`UNAUTHENTICATED_SHARE`]): past it the oldest waiting connection is closed
//!   to make room, so idle connections from many addresses cannot take every slot
//!   either (a publisher authenticates within a round trip; an idle one waits for the
//!   auth timeout).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failed `AUTH`s an address may make before it is slowed down.
pub const AUTH_BURST: f64 = 20.0;
/// One failure is forgiven per this much time.
pub const AUTH_REFILL: Duration = Duration::from_secs(1);
/// The longest a connection is made to wait after a failure.
pub const MAX_AUTH_WAIT: Duration = Duration::from_secs(10);
/// Addresses the throttle remembers; beyond that, those fully refilled are forgotten
/// first, and if that is not enough, all (an attacker then gets one more burst).
pub const MAX_TRACKED: usize = 16_384;
/// Connections from one address that may be waiting to authenticate at once.
pub const MAX_UNAUTHENTICATED_PER_IP: usize = 32;
/// The share (1/this) of the RESP slots unauthenticated connections may hold in all.
pub const UNAUTHENTICATED_SHARE: usize = 2;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(&self, now: Instant) -> f64 {
        let refill =
            now.saturating_duration_since(self.at).as_secs_f64() / AUTH_REFILL.as_secs_f64();
        (self.tokens + refill).min(AUTH_BURST)
    }
}

/// See the module header.
#[derive(Debug, Default)]
pub struct AuthThrottle {
    buckets: HashMap<IpAddr, Bucket>,
}

impl AuthThrottle {
    /// A failed `AUTH` from `ip` at `now`: how long its connection waits before it is
    /// read again.
    pub fn on_failure(&mut self, ip: IpAddr, now: Instant) -> Duration {
        crate::bounded::make_room(&mut self.buckets, &ip, MAX_TRACKED, |b| {
            b.refilled(now) >= AUTH_BURST
        });
        let bucket = self.buckets.entry(ip).or_insert(Bucket {
            tokens: AUTH_BURST,
            at: now,
        });
        let floor = -MAX_AUTH_WAIT.as_secs_f64() / AUTH_REFILL.as_secs_f64();
        bucket.tokens = (bucket.refilled(now) - 1.0).max(floor);
        bucket.at = now;
        if bucket.tokens >= 0.0 {
            Duration::ZERO
        } else {
            AUTH_REFILL.mul_f64(-bucket.tokens).min(MAX_AUTH_WAIT)
        }
    }
}

/// See the module header. `T` is how the driver closes a connection (its handle).
#[derive(Debug)]
pub struct Unauthenticated<T> {
    per_ip: HashMap<IpAddr, usize>,
    /// Waiting connections, oldest first, by ticket.
    waiting: BTreeMap<u64, (IpAddr, T)>,
    max_total: usize,
    max_per_ip: usize,
    next: u64,
}

impl<T> Unauthenticated<T> {
    /// At most `max_total` unauthenticated connections at once (a share of the slots),
    /// [`MAX_UNAUTHENTICATED_PER_IP`] of them from one address.
    pub fn new(max_total: usize) -> Self {
        Self::with_per_ip(max_total, MAX_UNAUTHENTICATED_PER_IP)
    }

    /// At most `max_total` at once, `max_per_ip` from one address.
    pub fn with_per_ip(max_total: usize, max_per_ip: usize) -> Self {
        Unauthenticated {
            per_ip: HashMap::new(),
            waiting: BTreeMap::new(),
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            next: 0,
        }
    }

    /// A new unauthenticated connection from `ip`, closed through `handle` if it must
    /// make room later. `None` when that address already has its most; else its ticket, and the handle of the oldest
    /// waiting connection, which must be closed to make room, when all places are taken.
    pub fn enter(&mut self, ip: IpAddr, handle: T) -> Option<(u64, Option<T>)> {
        if self.per_ip.get(&ip).copied().unwrap_or(0) >= self.max_per_ip {
            return None;
        }
        let evicted = if self.waiting.len() >= self.max_total {
            self.waiting.pop_first().map(|(_, (old_ip, old))| {
                self.forget_ip(old_ip);
                old
            })
        } else {
            None
        };
        *self.per_ip.entry(ip).or_default() += 1;
        self.next += 1;
        self.waiting.insert(self.next, (ip, handle));
        Some((self.next, evicted))
    }

    /// Connection `ticket` authenticated or closed (or was closed to make room: then
    /// this does nothing).
    pub fn leave(&mut self, ticket: u64) {
        if let Some((ip, _)) = self.waiting.remove(&ticket) {
            self.forget_ip(ip);
        }
    }

    fn forget_ip(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Connections waiting to authenticate.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_free_then_about_one_guess_a_second() {
        let mut throttle = AuthThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..20 {
            assert_eq!(throttle.on_failure(ip, t0), Duration::ZERO);
        }
        assert_eq!(throttle.on_failure(ip, t0), Duration::from_secs(1));
        assert_eq!(throttle.on_failure(ip, t0), Duration::from_secs(2));
        // Hammering does not make it wait without bound...
        for _ in 0..100 {
            throttle.on_failure(ip, t0);
        }
        assert_eq!(throttle.on_failure(ip, t0), MAX_AUTH_WAIT);
        // ...and time forgives: a minute later the burst is back.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(throttle.on_failure(ip, later), Duration::ZERO);
        // Another address has its own bucket.
        let other: IpAddr = "10.0.0.2".parse().expect("ip");
        assert_eq!(throttle.on_failure(other, t0), Duration::ZERO);
    }

    #[test]
    fn the_throttle_forgets_refilled_addresses_first_when_full() {
        let mut throttle = AuthThrottle::default();
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED as u32 {
            throttle.on_failure(IpAddr::from(i.to_be_bytes()), t0);
        }
        let hot: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..25 {
            throttle.on_failure(hot, t0 + Duration::from_secs(30));
        }
        assert!(throttle.buckets.len() <= MAX_TRACKED);
        assert!(throttle.on_failure(hot, t0 + Duration::from_secs(30)) > Duration::ZERO);
    }

    #[test]
    fn unauthenticated_connections_are_capped_per_address() {
        let mut unauth = Unauthenticated::new(1000);
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        let mut tickets = Vec::new();
        for i in 0..MAX_UNAUTHENTICATED_PER_IP {
            let (ticket, evicted) = unauth.enter(ip, i).expect("admitted");
            assert_eq!(evicted, None);
            tickets.push(ticket);
        }
        assert!(unauth.enter(ip, 99).is_none());
        assert!(
            unauth
                .enter("127.0.0.2".parse().expect("ip"), 100)
                .is_some(),
            "another address"
        );
        unauth.leave(tickets[3]);
        assert!(unauth.enter(ip, 101).is_some());
    }

    #[test]
    fn past_their_share_of_the_slots_the_oldest_waiting_connection_makes_room() {
        let mut unauth = Unauthenticated::new(3);
        let ip = |i: u8| -> IpAddr { format!("10.0.0.{i}").parse().expect("ip") };
        let (first, _) = unauth.enter(ip(1), "a").expect("admitted");
        unauth.enter(ip(2), "b").expect("admitted");
        unauth.enter(ip(3), "c").expect("admitted");
        // A fourth, from yet another address: the oldest ("a") gives way.
        let (_, evicted) = unauth.enter(ip(4), "d").expect("admitted");
        assert_eq!(evicted, Some("a"));
        assert_eq!(unauth.len(), 3);
        // The evicted one's own leave changes nothing; its address counts no more.
        unauth.leave(first);
        assert_eq!(unauth.len(), 3);
        for _ in 0..MAX_UNAUTHENTICATED_PER_IP - 1 {
            unauth
                .enter(ip(1), "again")
                .expect("address 1 has its places back");
        }
    }
}
