//! Dialing a peer: how a dial ended ([`DialOutcome`]) and the delay before the next
//! ([`DialBackoff`]); pure, the dial loop is `super::mesh`'s.

use std::time::{Duration, Instant};

/// How a dial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialOutcome {
    /// A session ran (and ended): redial soon.
    Session,
    /// The address did not answer or the handshake broke off.
    Unreachable,
    /// The peer refused this node, or this node refused it (secret, removed member,
    /// another incarnation): it will likely refuse again.
    Refused,
}

/// Redial delays while unreachable: from 50 ms, doubling, up to 2 s.
pub const REDIAL_MIN: Duration = Duration::from_millis(50);
pub const REDIAL_MAX: Duration = Duration::from_secs(2);
/// Redial delays after refusals: from 1 s, doubling, up to 30 s.
pub const REFUSED_MIN: Duration = Duration::from_secs(1);
pub const REFUSED_MAX: Duration = Duration::from_secs(30);

/// How long an address stays unreachable before its dialer says so (then at twice,
/// four times, ... that): the mesh already logged the peer's disconnection when it began.
pub const UNREACHABLE_TOLD_AFTER: Duration = Duration::from_secs(60);

/// One dialer's backoff, and when its streak is worth a line: a refusal on the 1st, 2nd,
/// 4th, 8th, ... in a row; an unreachable address a minute in, then two, four, eight
/// minutes in, and once when it answers again. So a peer refused or gone for good does
/// not fill the log, and each line says how many attempts it stands for.
#[derive(Debug, Clone, Copy)]
pub struct DialBackoff {
    delay: Duration,
    refusals: u32,
    unreachable: Unreachable,
}

/// A streak of unreachable dials: since when, how many, how many lines told of it.
#[derive(Debug, Clone, Copy, Default)]
struct Unreachable {
    since: Option<Instant>,
    attempts: u32,
    told: u32,
}

impl Default for DialBackoff {
    fn default() -> Self {
        DialBackoff {
            delay: REDIAL_MIN,
            refusals: 0,
            unreachable: Unreachable::default(),
        }
    }
}

impl DialBackoff {
    /// The delay before the next dial, after `outcome` at `now`.
    pub fn after(&mut self, outcome: DialOutcome, now: Instant) -> Duration {
        match outcome {
            DialOutcome::Session => {
                *self = DialBackoff::default();
                REDIAL_MIN
            }
            DialOutcome::Unreachable => {
                let streak = &mut self.unreachable;
                streak.since.get_or_insert(now);
                streak.attempts += 1;
                let now = self.delay.clamp(REDIAL_MIN, REDIAL_MAX);
                self.delay = (now * 2).min(REDIAL_MAX);
                now
            }
            DialOutcome::Refused => {
                self.refusals += 1;
                self.unreachable = Unreachable::default();
                let now = self.delay.clamp(REFUSED_MIN, REFUSED_MAX);
                self.delay = (now * 2).min(REFUSED_MAX);
                now
            }
        }
    }

    /// Whether the refusal just counted deserves a warning.
    pub fn warn(&self) -> bool {
        self.refusals.is_power_of_two()
    }

    /// The unreachable dials in a row and for how long, when a line is due at `now`
    /// (a minute in, then two, four, ...); counts the line as told.
    pub fn still_unreachable(&mut self, now: Instant) -> Option<(u32, Duration)> {
        let streak = &mut self.unreachable;
        let down = now.saturating_duration_since(streak.since?);
        let due = UNREACHABLE_TOLD_AFTER.saturating_mul(1 << streak.told.min(20));
        (down >= due).then(|| {
            streak.told += 1;
            (streak.attempts, down)
        })
    }

    /// The address answered: the unreachable dials before it, when they were told (so
    /// the end of the condition is told too); the streak starts again.
    pub fn answered(&mut self) -> Option<u32> {
        let streak = std::mem::take(&mut self.unreachable);
        (streak.told > 0).then_some(streak.attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_dials_back_off_to_half_a_minute_and_warn_less_and_less() {
        let now = Instant::now();
        let mut b = DialBackoff::default();
        assert_eq!(b.after(DialOutcome::Unreachable, now), REDIAL_MIN);
        assert_eq!(b.after(DialOutcome::Unreachable, now), REDIAL_MIN * 2);
        let mut warned = Vec::new();
        let mut last = Duration::ZERO;
        for n in 1..=20 {
            last = b.after(DialOutcome::Refused, now);
            if b.warn() {
                warned.push(n);
            }
        }
        assert_eq!(last, REFUSED_MAX);
        assert_eq!(warned, vec![1, 2, 4, 8, 16]);
        assert_eq!(
            b.after(DialOutcome::Session, now),
            REDIAL_MIN,
            "a session resets it"
        );
        assert_eq!(b.after(DialOutcome::Unreachable, now), REDIAL_MIN);
    }

    #[test]
    fn an_unreachable_peer_is_told_a_minute_in_then_ever_less_often_and_when_it_answers() {
        let start = Instant::now();
        let mut b = DialBackoff::default();
        // Ten minutes of a dead peer, a dial every 7 s (a 5 s handshake timeout, 2 s apart).
        let mut told = Vec::new();
        for n in 0..=86u32 {
            let now = start + Duration::from_secs(7 * u64::from(n));
            b.after(DialOutcome::Unreachable, now);
            if let Some((attempts, down)) = b.still_unreachable(now) {
                assert_eq!(attempts, n + 1);
                told.push(down.as_secs());
            }
        }
        // Four lines: a minute in, two, four and eight minutes in.
        assert_eq!(told, [63, 126, 245, 483]);
        assert_eq!(b.answered(), Some(87));
        assert_eq!(b.answered(), None, "the streak starts again");
        // A short outage (a restart) says nothing beyond the mesh's own lines.
        for n in 0..8 {
            let now = start + Duration::from_secs(7 * n);
            b.after(DialOutcome::Unreachable, now);
            assert_eq!(b.still_unreachable(now), None);
        }
        assert_eq!(b.answered(), None);
    }
}
