//! What keeps unauthenticated RESP clients from locking out publishers or guessing the
//! password quickly, with no IO and no clock (the driver passes `now`):
//! - [`AuthThrottle`]: failed `AUTH`s per client address, as a token bucket. A burst of
//!   [`AUTH_BURST`] failures costs nothing; after that each failure makes the connection
//!   wait until the bucket has refilled (one failure per [`AUTH_REFILL`]), at most
//!   [`MAX_AUTH_WAIT`]: about one guess a second per address, however many connections.
//! - [`Unauthenticated`]: connections not yet authenticated, per client address, at most
//!   [`MAX_UNAUTHENTICATED_PER_IP`] at once: idle connections from one address cannot
//!   take the slots of publishers from others.

use std::collections::HashMap;
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
        if self.buckets.len() >= MAX_TRACKED && !self.buckets.contains_key(&ip) {
            self.buckets.retain(|_, b| b.refilled(now) < AUTH_BURST);
            if self.buckets.len() >= MAX_TRACKED {
                self.buckets.clear();
            }
        }
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

/// See the module header.
#[derive(Debug, Default)]
pub struct Unauthenticated {
    per_ip: HashMap<IpAddr, usize>,
}

impl Unauthenticated {
    /// A new unauthenticated connection from `ip`: false when that address already has
    /// [`MAX_UNAUTHENTICATED_PER_IP`].
    pub fn enter(&mut self, ip: IpAddr) -> bool {
        let count = self.per_ip.entry(ip).or_default();
        if *count >= MAX_UNAUTHENTICATED_PER_IP {
            return false;
        }
        *count += 1;
        true
    }

    /// A connection from `ip` authenticated or closed.
    pub fn leave(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
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
        let mut unauth = Unauthenticated::default();
        let ip: IpAddr = "127.0.0.1".parse().expect("ip");
        for _ in 0..MAX_UNAUTHENTICATED_PER_IP {
            assert!(unauth.enter(ip));
        }
        assert!(!unauth.enter(ip));
        assert!(
            unauth.enter("127.0.0.2".parse().expect("ip")),
            "another address"
        );
        unauth.leave(ip);
        assert!(unauth.enter(ip));
    }
}
