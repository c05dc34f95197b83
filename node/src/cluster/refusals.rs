//! Refused peer connections, told once per source per interval: a port open to the
//! network gets junk and strangers, and one line (and one count) per datagram would
//! drown the log and the `peer_auth_failures_total` rate. Pure: the time is passed in.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// A source's refusals are told at most once per this much time.
pub const INTERVAL: Duration = Duration::from_secs(60);
/// Sources remembered; past it those whose interval is over are forgotten, and if that
/// is not enough, all.
pub const MAX_SOURCES: usize = 4096;

/// See the module header.
#[derive(Debug, Default)]
pub struct Refusals {
    /// When each source was last told, and its refusals since.
    sources: HashMap<IpAddr, (Instant, u64)>,
}

impl Refusals {
    /// A refusal of `ip` at `now`: `Some(n)` when it is to be told (logged and counted),
    /// `n` being the refusals of that source kept quiet since it was last told;
    /// `None` when it is kept quiet.
    pub fn on_refusal(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        if let Some((told, quiet)) = self.sources.get_mut(&ip) {
            if now.saturating_duration_since(*told) < INTERVAL {
                *quiet += 1;
                return None;
            }
            let was = *quiet;
            *told = now;
            *quiet = 0;
            return Some(was);
        }
        crate::bounded::make_room(&mut self.sources, &ip, MAX_SOURCES, |(told, _)| {
            now.saturating_duration_since(*told) >= INTERVAL
        });
        self.sources.insert(ip, (now, 0));
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_source_is_told_once_per_interval_with_what_was_kept_quiet() {
        let mut r = Refusals::default();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let t0 = Instant::now();
        assert_eq!(r.on_refusal(ip, t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(r.on_refusal(ip, t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(r.on_refusal(ip, t0 + INTERVAL), Some(1000));
        assert_eq!(r.on_refusal(ip, t0 + INTERVAL), None);
        // Another source has its own interval.
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(r.on_refusal(other, t0 + INTERVAL), Some(0));
    }

    #[test]
    fn memory_is_bounded_by_the_sources_kept() {
        let mut r = Refusals::default();
        let t0 = Instant::now();
        for i in 0..(MAX_SOURCES as u32 * 3) {
            r.on_refusal(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(r.sources.len() <= MAX_SOURCES);
        // Once their interval is over, old sources make room before anything is cleared.
        let later = t0 + INTERVAL;
        r.on_refusal("10.9.9.9".parse().expect("ip"), later);
        assert_eq!(r.sources.len(), 1);
    }
}
