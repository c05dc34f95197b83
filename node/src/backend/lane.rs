//! One connection's calls to the backend, in order: at most one in flight, a short queue
//! behind it, and the frame budget in front of both. Pure: the driver (the WebSocket
//! session) offers each client frame with the time, starts the call the lane hands out,
//! and reports when it finished; at the connection's end, [`Lane::into_rest`] gives what
//! is still owed to the backend, in order.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::time::Instant;

use super::budget::{Budget, Verdict};

/// Frames a connection may have waiting behind its call in flight.
pub const MAX_QUEUED_FRAMES: usize = 16;
/// Bytes of frames a connection may have waiting behind its call in flight.
pub const MAX_QUEUED_BYTES: usize = 256 * 1024;

/// A client frame for the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Text(String),
    Binary(Bytes),
}

impl Frame {
    pub fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.len(),
            Frame::Binary(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What became of an offered frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Offered {
    /// Call the backend with it now (nothing was in flight): its call number.
    Start(Frame, u64),
    /// It waits behind the call in flight.
    Queued,
    /// Over the budget, or the queue is full: refused with an error frame.
    Refused,
    /// Refused, and the client ignored too many refusals: close it (1008).
    Close,
}

/// See the module header.
#[derive(Debug)]
pub struct Lane {
    budget: Budget,
    queue: VecDeque<Frame>,
    queued_bytes: usize,
    busy: bool,
    /// The next call's number (0 was the connect).
    seq: u64,
}

impl Lane {
    /// The lane of a connection whose connect was call 0.
    pub fn new(budget: Budget) -> Self {
        Lane {
            budget,
            queue: VecDeque::new(),
            queued_bytes: 0,
            busy: false,
            seq: 1,
        }
    }

    /// A client frame at `now`.
    pub fn offer(&mut self, frame: Frame, now: Instant) -> Offered {
        let full = self.queue.len() >= MAX_QUEUED_FRAMES
            || self.queued_bytes + frame.len() > MAX_QUEUED_BYTES;
        match self.budget.admit(frame.len(), now) {
            Verdict::Close => return Offered::Close,
            Verdict::Refuse => return Offered::Refused,
            Verdict::Pass if self.busy && full => return Offered::Refused,
            Verdict::Pass => {}
        }
        if self.busy {
            self.queued_bytes += frame.len();
            self.queue.push_back(frame);
            return Offered::Queued;
        }
        self.busy = true;
        Offered::Start(frame, self.next_seq())
    }

    /// The call in flight finished: the next frame to call with, if one waits.
    pub fn done(&mut self) -> Option<(Frame, u64)> {
        match self.queue.pop_front() {
            Some(frame) => {
                self.queued_bytes -= frame.len();
                Some((frame, self.next_seq()))
            }
            None => {
                self.busy = false;
                None
            }
        }
    }

    /// At the connection's end: the frames still to send, in order, and the number of
    /// the call after them (the disconnect's).
    pub fn into_rest(mut self) -> (Vec<(Frame, u64)>, u64) {
        let frames: Vec<Frame> = self.queue.drain(..).collect();
        let rest = frames.into_iter().map(|f| (f, self.next_seq())).collect();
        (rest, self.seq)
    }

    /// Bytes of frames waiting.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    fn next_seq(&mut self) -> u64 {
        let seq = self.seq;
        self.seq += 1;
        seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Frame {
        Frame::Text(s.into())
    }

    #[test]
    fn one_call_at_a_time_in_order_and_the_rest_at_the_end() {
        let now = Instant::now();
        let mut lane = Lane::new(Budget::new(100, 1 << 20, now));
        assert_eq!(lane.offer(text("a"), now), Offered::Start(text("a"), 1));
        assert_eq!(lane.offer(text("b"), now), Offered::Queued);
        assert_eq!(lane.offer(text("c"), now), Offered::Queued);
        assert_eq!(lane.done(), Some((text("b"), 2)));
        assert_eq!(lane.queued_bytes(), 1);
        assert_eq!(lane.offer(text("d"), now), Offered::Queued);
        let (rest, next) = lane.into_rest();
        assert_eq!(rest, vec![(text("c"), 3), (text("d"), 4)]);
        assert_eq!(next, 5, "the disconnect comes after them");
    }

    #[test]
    fn an_idle_lane_starts_the_next_frame_at_once() {
        let now = Instant::now();
        let mut lane = Lane::new(Budget::new(100, 1 << 20, now));
        assert!(matches!(lane.offer(text("a"), now), Offered::Start(..)));
        assert_eq!(lane.done(), None);
        assert_eq!(lane.offer(text("b"), now), Offered::Start(text("b"), 2));
    }

    #[test]
    fn a_full_queue_refuses_and_the_budget_closes_a_client_that_keeps_going() {
        let now = Instant::now();
        let mut lane = Lane::new(Budget::new(1000, 1 << 30, now));
        assert!(matches!(lane.offer(text("x"), now), Offered::Start(..)));
        for _ in 0..MAX_QUEUED_FRAMES {
            assert_eq!(lane.offer(text("x"), now), Offered::Queued);
        }
        assert_eq!(lane.offer(text("x"), now), Offered::Refused);
        let big = Frame::Binary(Bytes::from(vec![0; MAX_QUEUED_BYTES]));
        let mut lane = Lane::new(Budget::new(1000, 1 << 30, now));
        assert!(matches!(lane.offer(text("x"), now), Offered::Start(..)));
        assert_eq!(
            lane.offer(big, now),
            Offered::Queued,
            "within the bytes bound"
        );
        assert_eq!(lane.offer(text("x"), now), Offered::Refused, "over it");

        let mut lane = Lane::new(Budget::new(1, 1 << 20, now));
        assert!(matches!(lane.offer(text("x"), now), Offered::Start(..)));
        let mut closed = false;
        for _ in 0..super::super::budget::REFUSALS_BEFORE_CLOSE {
            match lane.offer(text("x"), now) {
                Offered::Refused => {}
                Offered::Close => closed = true,
                other => panic!("{other:?}"),
            }
        }
        assert!(closed);
    }
}
