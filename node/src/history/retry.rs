//! A publisher's side of a history publish: after each attempt the owner did not take,
//! whether to ask again and after how long, or the final error. Pure: the router passes
//! the time and sleeps.
//!
//! The policy: an attempt whose outcome is unknown (it timed out, or the owner took it
//! but could not confirm it) has waited already and is asked again at once; a refusal
//! for now (no owner reachable yet, a hand-over, busy) waits [`PUBLISH_RETRY`], doubling
//! up to [`PUBLISH_RETRY_MAX`]. An error no retry can mend is final at once. When the
//! next attempt would start past the patience, the publisher is told
//! [`HistoryError::OutcomeUnknown`] if any attempt may have landed (a retry might deliver
//! twice), else [`HistoryError::NotPublished`] with the last reason (safe to retry).

use std::time::Duration;

use tokio::time::Instant;

use super::HistoryError;

/// The first wait after a refusal...
pub const PUBLISH_RETRY: Duration = Duration::from_millis(50);
/// ...doubling up to this.
pub const PUBLISH_RETRY_MAX: Duration = Duration::from_millis(500);

/// What to do after an attempt failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Retry {
    /// Ask again after this pause (zero: at once).
    After(Duration),
    /// Tell the publisher this.
    Fail(HistoryError),
}

/// One publish's attempts so far.
#[derive(Debug)]
pub struct PublishRetry {
    start: Instant,
    deadline: Instant,
    delay: Duration,
    landed: bool,
    attempt: u32,
}

impl PublishRetry {
    /// A publish started at `now`, given `patience` in all.
    pub fn new(now: Instant, patience: Duration) -> Self {
        PublishRetry {
            start: now,
            deadline: now + patience,
            delay: PUBLISH_RETRY,
            landed: false,
            attempt: 0,
        }
    }

    /// The number of the attempt to make (0 for the first).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The attempt failed with `error` at `now`: ask again (after how long), or give up.
    pub fn failed(&mut self, now: Instant, error: HistoryError) -> Retry {
        self.landed |= error.may_have_landed();
        if !error.is_retryable() {
            return Retry::Fail(error);
        }
        let pause = if error.may_have_landed() {
            Duration::ZERO
        } else {
            self.delay
        };
        if now + pause >= self.deadline {
            let waited = now - self.start;
            return Retry::Fail(if self.landed {
                HistoryError::OutcomeUnknown(waited)
            } else {
                HistoryError::NotPublished {
                    waited,
                    last: Box::new(error),
                }
            });
        }
        if !pause.is_zero() {
            self.delay = (self.delay * 2).min(PUBLISH_RETRY_MAX);
        }
        self.attempt += 1;
        Retry::After(pause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATIENCE: Duration = Duration::from_secs(15);

    #[test]
    fn refusals_for_now_wait_longer_each_time_up_to_the_cap() {
        let t0 = Instant::now();
        let mut retry = PublishRetry::new(t0, PATIENCE);
        let mut pauses = Vec::new();
        for _ in 0..6 {
            match retry.failed(t0, HistoryError::Busy) {
                Retry::After(pause) => pauses.push(pause.as_millis()),
                Retry::Fail(e) => panic!("gave up: {e}"),
            }
        }
        assert_eq!(pauses, [50, 100, 200, 400, 500, 500]);
        assert_eq!(retry.attempt(), 6);
    }

    #[test]
    fn an_unknown_outcome_is_asked_again_at_once_without_growing_the_wait() {
        let t0 = Instant::now();
        let mut retry = PublishRetry::new(t0, PATIENCE);
        assert_eq!(
            retry.failed(t0, HistoryError::Timeout),
            Retry::After(Duration::ZERO)
        );
        assert_eq!(
            retry.failed(t0, HistoryError::Unconfirmed),
            Retry::After(Duration::ZERO)
        );
        assert_eq!(
            retry.failed(t0, HistoryError::HandingOver(2)),
            Retry::After(PUBLISH_RETRY),
            "the first refusal still waits the first pause"
        );
    }

    #[test]
    fn what_no_retry_mends_is_final_at_once() {
        let t0 = Instant::now();
        for error in [HistoryError::TooLarge(9), HistoryError::Stopped] {
            let mut retry = PublishRetry::new(t0, PATIENCE);
            assert_eq!(retry.failed(t0, error.clone()), Retry::Fail(error));
        }
    }

    #[test]
    fn past_the_patience_the_publisher_learns_whether_a_retry_may_deliver_twice() {
        let t0 = Instant::now();
        let late = t0 + PATIENCE - PUBLISH_RETRY / 2;
        // Refused every time: nothing landed, safe to retry, with the last reason.
        let mut retry = PublishRetry::new(t0, PATIENCE);
        assert!(matches!(
            retry.failed(t0, HistoryError::NotAssigned),
            Retry::After(_)
        ));
        match retry.failed(late, HistoryError::OwnerUnreachable(3)) {
            Retry::Fail(HistoryError::NotPublished { waited, last }) => {
                assert_eq!(waited, late - t0);
                assert_eq!(*last, HistoryError::OwnerUnreachable(3));
            }
            other => panic!("{other:?}"),
        }
        // One attempt timed out on the way: its outcome is unknown for good.
        let mut retry = PublishRetry::new(t0, PATIENCE);
        assert_eq!(
            retry.failed(t0, HistoryError::Timeout),
            Retry::After(Duration::ZERO)
        );
        assert_eq!(
            retry.failed(late, HistoryError::Busy),
            Retry::Fail(HistoryError::OutcomeUnknown(late - t0))
        );
        // An unknown outcome right at the deadline: no time for another attempt.
        let mut retry = PublishRetry::new(t0, PATIENCE);
        assert_eq!(
            retry.failed(t0 + PATIENCE, HistoryError::Timeout),
            Retry::Fail(HistoryError::OutcomeUnknown(PATIENCE))
        );
    }
}
