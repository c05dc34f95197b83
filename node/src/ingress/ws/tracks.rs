//! What a `?positions=1` connection has delivered of each history group, with no IO and
//! no clock (the session passes `now`).
//!
//! For each group it tracks the last position written and a mode:
//! - **live**: the next message of the group must be the next offset (an epoch may change
//!   only where its successor continues it, which keeps offsets contiguous); an older one
//!   is a duplicate and dropped; a later one is a gap: the connection closes with 4009 so
//!   the client reconnects and recovers;
//! - **held**: the groups a positioned connection joined at connect (its user group, its
//!   token's groups) wait, buffered, until the client subscribes to them (with `since` to
//!   recover, or without) or [`HOLD_GRACE`] passes, so that a recovery is never preceded
//!   by newer messages;
//! - **recovering**: messages arriving while the owner answers a recovery are buffered;
//!   once the recovered messages are written, the buffer follows (duplicates dropped).
//!
//! Buffers are bounded ([`MAX_BUFFER`] messages): past that the connection closes with
//! 4009 too.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::peer::Position;
use tokio::time::Instant;

use crate::hub::Positioned;

/// How long the history groups joined at connect wait for the client's `subscribe`.
pub const HOLD_GRACE: Duration = Duration::from_secs(2);
/// Messages buffered per group while held or recovering.
pub const MAX_BUFFER: usize = 10_000;

/// What to do with a message.
#[derive(Debug)]
pub enum Route {
    /// Write it now.
    Write(Arc<Positioned>),
    /// Buffered until the group is released or recovered.
    Held,
    /// Already delivered: drop it.
    Duplicate,
    /// A message is missing before it, or a buffer overflowed: close with 4009.
    Gap,
}

#[derive(Debug)]
enum Mode {
    Live,
    Held(Instant),
    Recovering,
}

#[derive(Debug)]
struct Track {
    last: Option<Position>,
    mode: Mode,
    buffer: VecDeque<Arc<Positioned>>,
}

impl Track {
    fn new(mode: Mode) -> Self {
        Track {
            last: None,
            mode,
            buffer: VecDeque::new(),
        }
    }
}

/// A gap: the connection must close with 4009.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

/// See the module header.
#[derive(Debug, Default)]
pub struct Tracks {
    groups: HashMap<String, Track>,
}

/// Whether `next` is the message after `last` (true), one already delivered (false), or
/// neither (a gap). Epochs are Raft log indices, so they only grow: a later epoch goes on
/// at the next offset when it continues the earlier one, and starts over at 1 when not.
fn follows(last: Option<Position>, next: Position) -> Result<bool, Gap> {
    match last {
        None => Ok(true),
        Some(l) if next.offset == l.offset + 1 && next.epoch >= l.epoch => Ok(true),
        Some(l) if next.offset <= l.offset && next.epoch <= l.epoch => Ok(false),
        Some(_) => Err(Gap),
    }
}

impl Tracks {
    /// Holds `group` until `until` (a history group joined at connect).
    pub fn hold(&mut self, group: &str, until: Instant) {
        self.groups
            .insert(group.to_owned(), Track::new(Mode::Held(until)));
    }

    /// Where a message of a positioned connection goes.
    pub fn route(&mut self, message: Arc<Positioned>) -> Route {
        let Some(position) = message.position else {
            return Route::Write(message); // a group without history: nothing to track
        };
        let track = self
            .groups
            .entry(message.group.clone())
            .or_insert_with(|| Track::new(Mode::Live));
        match track.mode {
            Mode::Held(_) | Mode::Recovering => {
                if track.buffer.len() >= MAX_BUFFER {
                    return Route::Gap;
                }
                track.buffer.push_back(message);
                Route::Held
            }
            Mode::Live => match follows(track.last, position) {
                Ok(true) => {
                    track.last = Some(position);
                    Route::Write(message)
                }
                Ok(false) => Route::Duplicate,
                Err(gap) => {
                    let _ = gap;
                    Route::Gap
                }
            },
        }
    }

    /// The client subscribed to `group` without `since`: a held group's buffer goes out.
    pub fn release(&mut self, group: &str) -> Result<Vec<Arc<Positioned>>, Gap> {
        match self.groups.get_mut(group) {
            Some(track) if !matches!(track.mode, Mode::Live) => {
                track.mode = Mode::Live;
                Self::flush(track)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// Releases every held group whose grace has passed.
    pub fn release_due(&mut self, now: Instant) -> Result<Vec<Arc<Positioned>>, Gap> {
        let mut out = Vec::new();
        for track in self.groups.values_mut() {
            if let Mode::Held(until) = track.mode
                && until <= now
            {
                track.mode = Mode::Live;
                out.extend(Self::flush(track)?);
            }
        }
        Ok(out)
    }

    /// When the next held group is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.groups
            .values()
            .filter_map(|t| match t.mode {
                Mode::Held(until) => Some(until),
                _ => None,
            })
            .min()
    }

    /// A recovery of `group` starts: its messages wait.
    pub fn recovering(&mut self, group: &str) {
        let track = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Track::new(Mode::Recovering));
        track.mode = Mode::Recovering;
    }

    /// The recovery of `group` is answered: after the recovered messages (written by the
    /// caller first), the client stands at `top`, and the buffer follows. A fresh
    /// subscription (no `since`) recovers nothing: it starts with the first message
    /// buffered, if any, else at `top`. Returns where the client stands before the
    /// messages returned (what the `subscribed` answer says), and those messages.
    pub fn recovered(
        &mut self,
        group: &str,
        top: Option<Position>,
        fresh: bool,
    ) -> Result<(Option<Position>, Vec<Arc<Positioned>>), Gap> {
        let track = self
            .groups
            .entry(group.to_owned())
            .or_insert_with(|| Track::new(Mode::Live));
        track.mode = Mode::Live;
        let first = track.buffer.iter().find_map(|m| m.position);
        let stands = match first {
            Some(p) if fresh => Some(Position {
                epoch: p.epoch,
                offset: p.offset.saturating_sub(1),
            }),
            _ => top,
        };
        track.last = stands;
        Ok((stands, Self::flush(track)?))
    }

    fn flush(track: &mut Track) -> Result<Vec<Arc<Positioned>>, Gap> {
        let mut out = Vec::new();
        while let Some(message) = track.buffer.pop_front() {
            let Some(position) = message.position else {
                out.push(message);
                continue;
            };
            if follows(track.last, position)? {
                track.last = Some(position);
                out.push(message);
            }
        }
        Ok(out)
    }

    /// The client left `group`: what it held is dropped, and a later subscription
    /// starts afresh.
    pub fn forget(&mut self, group: &str) {
        self.groups.remove(group);
    }

    /// Whether any group is tracked (only positioned connections track).
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Message;

    fn msg(group: &str, epoch: u64, offset: u64) -> Arc<Positioned> {
        Arc::new(Positioned {
            group: group.into(),
            position: Some(Position { epoch, offset }),
            frame: Message::Text(format!("{offset}").into()),
        })
    }

    fn offsets(messages: &[Arc<Positioned>]) -> Vec<u64> {
        messages
            .iter()
            .map(|m| m.position.map_or(0, |p| p.offset))
            .collect()
    }

    #[test]
    fn live_messages_must_follow_one_another() {
        let mut t = Tracks::default();
        assert!(
            matches!(t.route(msg("g", 1, 5)), Route::Write(_)),
            "the first sets the start"
        );
        assert!(matches!(t.route(msg("g", 1, 6)), Route::Write(_)));
        assert!(matches!(t.route(msg("g", 1, 6)), Route::Duplicate));
        assert!(
            matches!(t.route(msg("g", 1, 8)), Route::Gap),
            "offset 7 is missing"
        );
        assert!(
            matches!(t.route(msg("g", 3, 7)), Route::Write(_)),
            "a continuing epoch"
        );
        assert!(
            matches!(t.route(msg("g", 1, 7)), Route::Duplicate),
            "late from the old epoch"
        );
        assert!(
            matches!(t.route(msg("g", 9, 1)), Route::Gap),
            "an epoch that starts over"
        );
    }

    #[test]
    fn a_recovery_writes_nothing_twice_and_nothing_out_of_order() {
        let mut t = Tracks::default();
        let now = Instant::now();
        t.hold("user_1", now + HOLD_GRACE);
        // Live messages arrive before the client asks to recover: held.
        assert!(matches!(t.route(msg("user_1", 4, 11)), Route::Held));
        t.recovering("user_1");
        assert!(matches!(t.route(msg("user_1", 4, 12)), Route::Held));
        // The owner answers up to offset 11 (the caller writes 9..=11 itself): 11 is a
        // duplicate, 12 follows.
        let (stands, out) = t
            .recovered(
                "user_1",
                Some(Position {
                    epoch: 4,
                    offset: 11,
                }),
                false,
            )
            .expect("no gap");
        assert_eq!(
            stands,
            Some(Position {
                epoch: 4,
                offset: 11
            })
        );
        assert_eq!(offsets(&out), vec![12]);
        assert!(matches!(t.route(msg("user_1", 4, 13)), Route::Write(_)));
    }

    #[test]
    fn held_groups_are_released_by_a_subscribe_or_the_grace() {
        let mut t = Tracks::default();
        let now = Instant::now();
        t.hold("a", now + HOLD_GRACE);
        t.hold("b", now + HOLD_GRACE);
        assert!(matches!(t.route(msg("a", 1, 1)), Route::Held));
        assert!(matches!(t.route(msg("b", 1, 7)), Route::Held));
        assert_eq!(offsets(&t.release("a").expect("no gap")), vec![1]);
        assert_eq!(t.next_due(), Some(now + HOLD_GRACE));
        assert!(t.release_due(now).expect("no gap").is_empty(), "not yet");
        assert_eq!(
            offsets(&t.release_due(now + HOLD_GRACE).expect("no gap")),
            vec![7]
        );
        assert_eq!(t.next_due(), None);
    }

    #[test]
    fn a_buffer_that_overflows_or_a_gap_after_recovery_closes_with_4009() {
        let mut t = Tracks::default();
        t.recovering("g");
        for i in 0..MAX_BUFFER as u64 {
            assert!(matches!(t.route(msg("g", 1, i + 1)), Route::Held));
        }
        assert!(matches!(t.route(msg("g", 1, 99_999)), Route::Gap));
        let mut t = Tracks::default();
        t.recovering("g");
        t.route(msg("g", 1, 20));
        assert!(
            matches!(
                t.recovered(
                    "g",
                    Some(Position {
                        epoch: 1,
                        offset: 10
                    }),
                    false
                ),
                Err(Gap)
            ),
            "11..19 missing"
        );
    }

    #[test]
    fn a_fresh_subscription_starts_at_the_first_message_held_or_the_top() {
        let mut t = Tracks::default();
        t.recovering("g");
        let (stands, out) = t
            .recovered(
                "g",
                Some(Position {
                    epoch: 2,
                    offset: 9,
                }),
                true,
            )
            .expect("no gap");
        assert_eq!(
            stands,
            Some(Position {
                epoch: 2,
                offset: 9
            }),
            "nothing held: the top"
        );
        assert!(out.is_empty());
        assert!(matches!(t.route(msg("g", 2, 10)), Route::Write(_)));

        let mut t = Tracks::default();
        t.hold("u", Instant::now() + HOLD_GRACE);
        t.route(msg("u", 2, 7));
        t.route(msg("u", 2, 8));
        t.recovering("u");
        // The owner's top is already 9 (9 is on its way here): 7 and 8 are not dropped.
        let (stands, out) = t
            .recovered(
                "u",
                Some(Position {
                    epoch: 2,
                    offset: 9,
                }),
                true,
            )
            .expect("no gap");
        assert_eq!(
            stands,
            Some(Position {
                epoch: 2,
                offset: 6
            })
        );
        assert_eq!(offsets(&out), vec![7, 8]);
        assert!(matches!(t.route(msg("u", 2, 9)), Route::Write(_)));
    }
}
