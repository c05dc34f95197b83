//! The op budget (docs/security.md "Op budgets"): what each client op costs, one
//! connection's token bucket, and the node's, shared by all its connections. Pure: the
//! time is passed in.
//!
//! A connection spends units from its bucket (`--client-ops-per-sec`, holding at most
//! `--client-ops-burst`) and from the node's (`--node-ops-per-sec`, one second's
//! worth). Past its own, an op is refused with `rate_limited`, and a client that ignores
//! [`REFUSALS_BEFORE_CLOSE`] refusals in a row is closed with 1008; past the node's, the
//! op is refused and the client is not blamed.
//!
//! A user closed that way is [`CoolDown`]: its connections are refused (1008, before
//! anything is registered) for [`COOL_DOWN`], doubled for each close that follows within
//! [`COOL_DOWN_MEMORY`], at most [`MAX_COOL_DOWN`]: reconnecting to flood again costs
//! the node a handshake and a signature check, not a registration, a presence change and
//! a burst of ops.

use std::collections::HashMap;
use std::time::Duration;

use switchboard_proto::client::ClientOp;
use tokio::time::Instant;

use crate::backend::budget::{Bucket, Verdict};
use crate::config::OpLimits;

/// A client whose ops are refused this many times in a row is closed (1008): it ignores
/// the error frames.
pub const REFUSALS_BEFORE_CLOSE: u16 = 50;

/// Units an op costs: one for what is answered from this node's tables; more for what
/// reads a shard or verifies a signature; most for what reads history or a presence
/// event ring from a position.
pub const COST_SIMPLE: u32 = 1;
pub const COST_PRESENCE_READ: u32 = 2;
pub const COST_REFRESH: u32 = 5;
pub const COST_RECOVERY: u32 = 5;
pub const COST_PRESENCE_SINCE: u32 = 10;

/// What `op` costs (a frame that is no op, or goes to the backend, costs
/// [`COST_SIMPLE`]).
pub fn cost(op: &ClientOp) -> u32 {
    match op {
        ClientOp::Subscribe { since: Some(_), .. } => COST_RECOVERY,
        ClientOp::PresenceSubscribe { since: Some(_), .. } => COST_PRESENCE_SINCE,
        ClientOp::Presence { .. } | ClientOp::PresenceSubscribe { .. } => COST_PRESENCE_READ,
        ClientOp::Refresh { .. } => COST_REFRESH,
        ClientOp::Subscribe { .. }
        | ClientOp::Unsubscribe { .. }
        | ClientOp::PresenceUnsubscribe { .. }
        | ClientOp::Ping { .. } => COST_SIMPLE,
    }
}

/// One connection's bucket. The session refills it from the time it was idle between
/// frames (`idle`), so it keeps no clock reading of its own: 12 bytes a connection.
#[derive(Debug, Clone, Copy)]
pub struct OpBudget {
    /// Units left; `None` until the first charge fills it to the burst.
    tokens: Option<f32>,
    /// Seconds passed since the last charge, not yet turned into units.
    idle: f32,
    refused_in_a_row: u16,
}

impl Default for OpBudget {
    fn default() -> Self {
        OpBudget {
            tokens: None,
            idle: 0.0,
            refused_in_a_row: 0,
        }
    }
}

impl OpBudget {
    /// Time passed with the connection (between two frames).
    pub fn idle(&mut self, elapsed: Duration) {
        self.idle += elapsed.as_secs_f32();
    }

    /// Gives back `cost` units an op spent but did not use (the node refused it): the
    /// client is not blamed for the node's load.
    pub fn refund(&mut self, cost: u32, limits: &OpLimits) {
        if let Some(tokens) = &mut self.tokens {
            *tokens = (*tokens + cost as f32).min(limits.burst as f32);
        }
    }

    /// Spends `cost` units, or says why not.
    pub fn charge(&mut self, cost: u32, limits: &OpLimits) -> Verdict {
        let burst = limits.burst as f32;
        let tokens = self.tokens.map_or(burst, |t| {
            (t + self.idle * limits.per_sec as f32).min(burst)
        });
        self.idle = 0.0;
        let cost = cost as f32;
        // An op that costs more than the burst passes on a full bucket (and empties
        // it), so that no op is refused for ever.
        if tokens >= cost || tokens >= burst {
            self.tokens = Some((tokens - cost).max(0.0));
            self.refused_in_a_row = 0;
            return Verdict::Pass;
        }
        self.tokens = Some(tokens);
        self.refused_in_a_row = self.refused_in_a_row.saturating_add(1);
        if self.refused_in_a_row >= REFUSALS_BEFORE_CLOSE {
            Verdict::Close
        } else {
            Verdict::Refuse
        }
    }
}

/// The first cool-down of a user closed for its ops.
pub const COOL_DOWN: Duration = Duration::from_secs(5);
/// The longest cool-down.
pub const MAX_COOL_DOWN: Duration = Duration::from_secs(300);
/// A user's closes are remembered this long after its cool-down ends (the next doubles).
pub const COOL_DOWN_MEMORY: Duration = Duration::from_secs(600);
/// Users remembered at once; past it those forgotten by age first, then all.
pub const MAX_COOLING: usize = 65_536;

/// Users closed for their ops, and until when their connections are refused.
#[derive(Debug, Default)]
pub struct CoolDown {
    users: HashMap<String, (Instant, u32)>,
}

impl CoolDown {
    /// `user` was closed for its ops at `now`: how long it must wait.
    pub fn strike(&mut self, user: &str, now: Instant) -> Duration {
        crate::bounded::make_room(&mut self.users, user, MAX_COOLING, |(until, _)| {
            now >= *until + COOL_DOWN_MEMORY
        });
        let (until, strikes) = self.users.entry(user.to_owned()).or_insert((now, 0));
        if now >= *until + COOL_DOWN_MEMORY {
            *strikes = 0;
        }
        let wait = COOL_DOWN
            .saturating_mul(1 << (*strikes).min(16))
            .min(MAX_COOL_DOWN);
        *strikes += 1;
        *until = now + wait;
        wait
    }

    /// How long `user` must still wait at `now`, if at all.
    pub fn waiting(&self, user: &str, now: Instant) -> Option<Duration> {
        self.users
            .get(user)
            .map(|(until, _)| until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }
}

/// The node's bucket, shared by its connections (the driver keeps it behind a lock):
/// `per_sec` units a second, one second's worth at most; an op dearer than that passes on
/// a full bucket.
#[derive(Debug)]
pub struct NodeOps {
    bucket: Bucket,
    at: Instant,
}

impl NodeOps {
    pub fn new(per_sec: u32, now: Instant) -> Self {
        NodeOps {
            bucket: Bucket::new(per_sec as f32),
            at: now,
        }
    }

    /// Takes `cost` units at `now` if it may.
    pub fn take(&mut self, cost: u32, now: Instant) -> bool {
        self.bucket
            .refill(now.saturating_duration_since(self.at).as_secs_f32());
        self.at = now;
        let fits = self.bucket.fits(cost as f32);
        if fits {
            self.bucket.take(cost as f32);
        }
        fits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: OpLimits = OpLimits {
        per_sec: 10,
        burst: 20,
        node_per_sec: 100,
    };

    #[test]
    fn a_connection_spends_its_burst_then_its_rate() {
        let mut b = OpBudget::default();
        for _ in 0..20 {
            assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        }
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
        // A tenth of a second: one unit.
        b.idle(Duration::from_millis(100));
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
        // Idle for long: never more than the burst.
        b.idle(Duration::from_secs(3600));
        for _ in 0..20 {
            assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        }
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
    }

    #[test]
    fn costly_ops_spend_more_and_one_above_the_burst_passes_on_a_full_bucket() {
        let mut b = OpBudget::default();
        assert_eq!(b.charge(COST_PRESENCE_SINCE, &LIMITS), Verdict::Pass);
        assert_eq!(b.charge(COST_PRESENCE_SINCE, &LIMITS), Verdict::Pass);
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse, "20 spent");
        b.idle(Duration::from_secs(2));
        assert_eq!(
            b.charge(100, &LIMITS),
            Verdict::Pass,
            "full: passes, empties"
        );
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
    }

    #[test]
    fn a_client_ignoring_refusals_is_closed_and_a_pass_forgives() {
        let mut b = OpBudget::default();
        for _ in 0..20 {
            b.charge(COST_SIMPLE, &LIMITS);
        }
        for _ in 1..REFUSALS_BEFORE_CLOSE - 1 {
            assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
        }
        // It slows down once: the count starts again.
        b.idle(Duration::from_millis(100));
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        for _ in 1..REFUSALS_BEFORE_CLOSE {
            assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
        }
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Close);
    }

    #[test]
    fn a_refund_gives_back_what_the_node_refused() {
        let mut b = OpBudget::default();
        for _ in 0..20 {
            assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        }
        b.refund(COST_SIMPLE, &LIMITS);
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
        // Never beyond the burst.
        b.idle(Duration::from_secs(60));
        b.refund(100, &LIMITS);
        for _ in 0..20 {
            assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Pass);
        }
        assert_eq!(b.charge(COST_SIMPLE, &LIMITS), Verdict::Refuse);
    }

    #[test]
    fn an_op_dearer_than_the_nodes_second_passes_on_a_full_bucket() {
        let t0 = Instant::now();
        let mut n = NodeOps::new(5, t0);
        assert!(n.take(COST_PRESENCE_SINCE, t0), "full: passes, empties");
        assert!(!n.take(COST_SIMPLE, t0));
        assert!(n.take(COST_PRESENCE_SINCE, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn the_node_bucket_holds_one_seconds_worth() {
        let t0 = Instant::now();
        let mut n = NodeOps::new(100, t0);
        assert!(n.take(100, t0));
        assert!(!n.take(1, t0));
        assert!(n.take(10, t0 + Duration::from_millis(100)));
        assert!(!n.take(1, t0 + Duration::from_millis(100)));
        assert!(n.take(100, t0 + Duration::from_secs(60)));
        assert!(!n.take(1, t0 + Duration::from_secs(60)));
    }

    #[test]
    fn a_user_closed_for_its_ops_waits_longer_each_time_then_is_forgiven() {
        let t0 = Instant::now();
        let mut c = CoolDown::default();
        assert_eq!(c.waiting("u", t0), None);
        assert_eq!(c.strike("u", t0), COOL_DOWN);
        assert_eq!(
            c.waiting("u", t0 + Duration::from_secs(1)),
            Some(COOL_DOWN - Duration::from_secs(1))
        );
        assert_eq!(c.waiting("other", t0), None);
        let t1 = t0 + COOL_DOWN;
        assert_eq!(c.waiting("u", t1), None, "over");
        assert_eq!(c.strike("u", t1), 2 * COOL_DOWN);
        assert_eq!(c.strike("u", t1), 4 * COOL_DOWN);
        for _ in 0..20 {
            c.strike("u", t1);
        }
        assert_eq!(c.waiting("u", t1), Some(MAX_COOL_DOWN));
        // Long after, a close starts from the first cool-down again.
        let much_later = t1 + MAX_COOL_DOWN + COOL_DOWN_MEMORY;
        assert_eq!(c.strike("u", much_later), COOL_DOWN);
    }

    #[test]
    fn the_users_kept_are_bounded() {
        let t0 = Instant::now();
        let mut c = CoolDown::default();
        for i in 0..MAX_COOLING * 2 + 1 {
            c.strike(&i.to_string(), t0);
        }
        assert!(c.users.len() <= MAX_COOLING);
    }

    #[test]
    fn costs_follow_the_work() {
        let op = |json: &str| cost(&serde_json::from_str(json).expect("op"));
        assert_eq!(op(r#"{"op":"ping"}"#), COST_SIMPLE);
        assert_eq!(op(r#"{"op":"subscribe","group":"g"}"#), COST_SIMPLE);
        assert_eq!(
            op(r#"{"op":"subscribe","group":"g","since":{"epoch":1,"offset":2}}"#),
            COST_RECOVERY
        );
        assert_eq!(op(r#"{"op":"presence"}"#), COST_PRESENCE_READ);
        assert_eq!(
            op(r#"{"op":"presence_subscribe","since":"1-0"}"#),
            COST_PRESENCE_SINCE
        );
        assert_eq!(op(r#"{"op":"refresh","token":"t"}"#), COST_REFRESH);
    }
}
