//! A connection's budget for frames to the backend: two token buckets (frames per second
//! and bytes per second, each holding one second's worth), and the policy for a client
//! that keeps going past them. Pure: the time is passed in.

use tokio::time::Instant;

/// A client whose frames are refused this many times in a row is closed (1008): it
/// ignores the error frames.
pub const REFUSALS_BEFORE_CLOSE: u32 = 50;

/// One token bucket: `rate` tokens a second, at most one second's worth held. `f32`:
/// every bridged connection holds two, and the precision needed is a frame's. The node's
/// op budget (`ingress::ws::state::ops::NodeOps`) is one too.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    rate: f32,
    tokens: f32,
}

impl Bucket {
    /// A full bucket of `rate` tokens a second.
    pub fn new(rate: f32) -> Self {
        Bucket { rate, tokens: rate }
    }

    /// `elapsed` seconds' worth of tokens, up to one second's.
    pub fn refill(&mut self, elapsed: f32) {
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
    }

    /// Whether `n` tokens may be taken: there are that many, or the bucket is full (so
    /// that nothing larger than a second's worth is refused for ever).
    pub fn fits(&self, n: f32) -> bool {
        self.tokens >= n || self.tokens >= self.rate
    }

    /// Takes `n` tokens (after [`Bucket::fits`]): a full bucket taken past its worth is
    /// emptied.
    pub fn take(&mut self, n: f32) {
        self.tokens = (self.tokens - n).max(0.0);
    }
}

/// What the budget says of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// It goes to the backend.
    Pass,
    /// It is refused with an error frame.
    Refuse,
    /// Refused, and the client has ignored too many refusals: close it.
    Close,
}

/// See the module header.
#[derive(Debug, Clone)]
pub struct Budget {
    frames: Bucket,
    bytes: Bucket,
    /// When both buckets were last refilled.
    at: Instant,
    refused_in_a_row: u32,
}

impl Budget {
    /// A full budget of `frames_per_sec` and `bytes_per_sec`.
    pub fn new(frames_per_sec: u32, bytes_per_sec: u64, now: Instant) -> Self {
        Budget {
            frames: Bucket::new(frames_per_sec.max(1) as f32),
            bytes: Bucket::new(bytes_per_sec.max(1) as f32),
            at: now,
            refused_in_a_row: 0,
        }
    }

    /// A frame of `len` bytes at `now`. A frame larger than a second's bytes passes when
    /// the byte bucket is full (and empties it), so that no frame the size limit allows
    /// is refused for ever.
    pub fn admit(&mut self, len: usize, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f32();
        self.at = now;
        self.frames.refill(elapsed);
        self.bytes.refill(elapsed);
        let len = len as f32;
        if self.frames.fits(1.0) && self.bytes.fits(len) {
            self.frames.take(1.0);
            self.bytes.take(len);
            self.refused_in_a_row = 0;
            return Verdict::Pass;
        }
        self.refused_in_a_row += 1;
        if self.refused_in_a_row >= REFUSALS_BEFORE_CLOSE {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn frames_pass_at_the_rate_and_a_burst_of_one_seconds_worth() {
        let start = Instant::now();
        let mut budget = Budget::new(10, 1 << 20, start);
        for _ in 0..10 {
            assert_eq!(budget.admit(10, start), Verdict::Pass);
        }
        assert_eq!(budget.admit(10, start), Verdict::Refuse);
        // A tenth of a second later, one more.
        let later = start + Duration::from_millis(100);
        assert_eq!(budget.admit(10, later), Verdict::Pass);
        assert_eq!(budget.admit(10, later), Verdict::Refuse);
        // Idle for long: no more than a second's worth.
        let much_later = start + Duration::from_secs(60);
        for _ in 0..10 {
            assert_eq!(budget.admit(10, much_later), Verdict::Pass);
        }
        assert_eq!(budget.admit(10, much_later), Verdict::Refuse);
    }

    #[test]
    fn bytes_are_budgeted_and_a_large_frame_passes_on_a_full_bucket() {
        let start = Instant::now();
        let mut budget = Budget::new(1000, 100, start);
        assert_eq!(budget.admit(60, start), Verdict::Pass);
        assert_eq!(budget.admit(60, start), Verdict::Refuse, "40 bytes left");
        assert_eq!(budget.admit(40, start), Verdict::Pass);
        let refilled = start + Duration::from_secs(1);
        assert_eq!(budget.admit(500, refilled), Verdict::Pass, "full bucket");
        assert_eq!(budget.admit(1, refilled), Verdict::Refuse, "emptied");
    }

    #[test]
    fn a_client_that_ignores_refusals_is_closed() {
        let start = Instant::now();
        let mut budget = Budget::new(1, 1 << 20, start);
        assert_eq!(budget.admit(1, start), Verdict::Pass);
        for _ in 1..REFUSALS_BEFORE_CLOSE {
            assert_eq!(budget.admit(1, start), Verdict::Refuse);
        }
        assert_eq!(budget.admit(1, start), Verdict::Close);
        // One that waits is forgiven.
        let mut budget = Budget::new(1, 1 << 20, start);
        for i in 0..3 * REFUSALS_BEFORE_CLOSE {
            let now = start + Duration::from_secs(u64::from(i));
            assert_eq!(budget.admit(1, now), Verdict::Pass);
            assert_eq!(budget.admit(1, now), Verdict::Refuse);
        }
    }
}
