//! Dialing a peer: how a dial ended ([`DialOutcome`]) and the delay before the next
//! ([`DialBackoff`]); pure, the dial loop is `super::mesh`'s.

use std::time::Duration;

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

/// One dialer's backoff, and when a refusal is worth a warning (the 1st, 2nd, 4th, 8th,
/// ... in a row), so a peer refused for good does not fill the log.
#[derive(Debug, Clone, Copy)]
pub struct DialBackoff {
    delay: Duration,
    refusals: u32,
}

impl Default for DialBackoff {
    fn default() -> Self {
        DialBackoff {
            delay: REDIAL_MIN,
            refusals: 0,
        }
    }
}

impl DialBackoff {
    /// The delay before the next dial, after `outcome`.
    pub fn after(&mut self, outcome: DialOutcome) -> Duration {
        match outcome {
            DialOutcome::Session => {
                *self = DialBackoff::default();
                REDIAL_MIN
            }
            DialOutcome::Unreachable => {
                let now = self.delay.clamp(REDIAL_MIN, REDIAL_MAX);
                self.delay = (now * 2).min(REDIAL_MAX);
                now
            }
            DialOutcome::Refused => {
                self.refusals += 1;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_dials_back_off_to_half_a_minute_and_warn_less_and_less() {
        let mut b = DialBackoff::default();
        assert_eq!(b.after(DialOutcome::Unreachable), REDIAL_MIN);
        assert_eq!(b.after(DialOutcome::Unreachable), REDIAL_MIN * 2);
        let mut warned = Vec::new();
        let mut last = Duration::ZERO;
        for n in 1..=20 {
            last = b.after(DialOutcome::Refused);
            if b.warn() {
                warned.push(n);
            }
        }
        assert_eq!(last, REFUSED_MAX);
        assert_eq!(warned, vec![1, 2, 4, 8, 16]);
        assert_eq!(
            b.after(DialOutcome::Session),
            REDIAL_MIN,
            "a session resets it"
        );
        assert_eq!(b.after(DialOutcome::Unreachable), REDIAL_MIN);
    }
}
