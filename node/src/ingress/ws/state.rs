//! The decisions of one WebSocket session, with no socket and no clock: what a frame
//! from the client means, when the session's one timer fires and what it does then
//! (release held messages, close at token expiry, ping, give up on a silent client),
//! how published messages go through the positions kept ([`Tracks`]), and what a
//! recovery's answer becomes (the `subscribed` reply, the missed messages, what arrived
//! meanwhile, or the close that says why not).
//!
//! Call order, as quinn-proto's `Connection`: the driver ([`super::session`]) feeds
//! what happened (`handle_frame`, `handle_timeout`, `handle_recovered`, `ask`), acts on
//! what each returns, sleeps until [`SessionState::poll_timeout`] and starts the
//! recovery [`SessionState::poll_recovery`] hands out.

pub mod ops;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use switchboard_proto::client::{CloseCode, ErrorCode, ServerReply};
use switchboard_proto::peer::Position;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::tracks::{Gap, Route, Tracks};
use crate::auth::AuthError;
use crate::backend::budget::Verdict;
use crate::history::{Entry, HistoryError, Recovery};
use crate::hub::{Encoded, Outbound, Positioned};

/// How often an idle connection is pinged; one that has sent nothing for two intervals
/// is dropped as dead.
pub const KEEPALIVE: Duration = Duration::from_secs(30);

/// How a session ends.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// We close with this code and reason.
    Close(CloseCode, String),
    /// We close with a code someone asked for (the consumer, an admin), and a reason.
    Asked(u16, String),
    /// The client closed with this code (1005: it gave none).
    ClientClosed(u16),
    /// The socket failed or went silent: nothing more to send.
    Gone,
}

impl End {
    /// The close code the backend's `disconnect` reports, as Daphne reports it: ours,
    /// the client's, or 1006 for a connection that broke off.
    pub fn code(&self) -> u16 {
        match self {
            End::Close(code, _) => code.code(),
            End::Asked(code, _) | End::ClientClosed(code) => *code,
            End::Gone => 1006,
        }
    }
}

/// What a frame from the client asks of the driver.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A JSON op to answer.
    Op(String),
    /// A reply to send, and nothing else.
    Reply(ServerReply),
    /// A binary frame (no op: for the backend, when there is one).
    Binary(bytes::Bytes),
    /// The session is over.
    End(End),
    /// Nothing (a ping or pong: tungstenite answers pings itself).
    Nothing,
}

/// What the timer's firing asks of the driver.
#[derive(Debug)]
pub enum Timeout {
    /// Held messages whose wait is over, to write (or the gap they found).
    Release(Result<Vec<Arc<Positioned>>, Gap>),
    /// Send a ping.
    Ping,
    /// The session is over.
    End(End),
    /// Nothing is due yet (the timer was early).
    Nothing,
}

/// A recovery the client asked for.
#[derive(Debug)]
struct Asked {
    group: String,
    /// `None`: a fresh subscription, which only learns where the group stands.
    since: Option<Position>,
    id: Option<u64>,
}

/// A recovery streamed page by page: where the first page said the group stood, and
/// the last message written.
#[derive(Debug, Clone, Copy)]
struct Streaming {
    top: Position,
    last: Position,
}

/// A page of a recovery's answer: the `subscribed` reply (with the first page), the
/// page's missed messages, then (after the last page) what arrived meanwhile; `then`
/// closes the session after them (a gap after the recovered messages: the client's
/// position still moves on).
#[derive(Debug, Default)]
pub struct Recovered {
    pub reply: Option<Message>,
    pub group: String,
    pub missed: Vec<Entry>,
    pub after: Vec<Message>,
    pub then: Option<End>,
}

impl Recovered {
    /// The frames to write, in order: a missed message is made a frame only when it is
    /// reached, so a recovering client holds its page's entries (shared with the
    /// history) and one frame, not a frame for every message missed.
    pub fn into_frames(self) -> (impl Iterator<Item = Message>, Option<End>) {
        let Recovered {
            reply,
            group,
            missed,
            after,
            then,
        } = self;
        let missed = missed.into_iter().map(move |entry| {
            let encoded = Encoded::with_position(entry.payload, entry.position);
            encoded.positioned_frame(&group).frame.clone()
        });
        (reply.into_iter().chain(missed).chain(after), then)
    }
}

/// One session's decisions. See the module header.
#[derive(Debug)]
pub struct SessionState {
    /// When the token expires and the session must close (`--token-expiry close`).
    expires: Option<Instant>,
    last_heard: Instant,
    pinged: bool,
    /// What this connection delivered of each history group (positioned connections).
    tracks: Tracks,
    /// Recoveries asked, oldest first; the first one is in flight when `in_flight`.
    asked: VecDeque<Asked>,
    in_flight: bool,
    /// The first one's pages after the first, while it has more.
    streaming: Option<Streaming>,
    /// The client left the group of the recovery in flight: its answer writes nothing.
    abandoned: bool,
    /// What the client may still spend on ops.
    ops: ops::OpBudget,
}

impl SessionState {
    /// A session that starts at `now`, closing at `expires` if given.
    pub fn new(now: Instant, expires: Option<Instant>, tracks: Tracks) -> Self {
        SessionState {
            expires,
            last_heard: now,
            pinged: false,
            tracks,
            asked: VecDeque::new(),
            in_flight: false,
            streaming: None,
            abandoned: false,
            ops: ops::OpBudget::default(),
        }
    }

    /// A refreshed token moves the expiry.
    pub fn set_expiry(&mut self, expires: Option<Instant>) {
        self.expires = expires;
    }

    /// When the driver must call [`SessionState::handle_timeout`]: the first of a held
    /// group's release, the token's expiry and the keepalive.
    pub fn poll_timeout(&self) -> Instant {
        let keepalive = self.keepalive_due();
        [self.tracks.next_due(), self.expires]
            .into_iter()
            .flatten()
            .fold(keepalive, Instant::min)
    }

    /// When the keepalive acts: a ping one interval after the last frame heard, then the
    /// end one more interval later.
    fn keepalive_due(&self) -> Instant {
        self.last_heard
            + if self.pinged {
                2 * KEEPALIVE
            } else {
                KEEPALIVE
            }
    }

    /// The timer fired at `now`.
    pub fn handle_timeout(&mut self, now: Instant) -> Timeout {
        if self.tracks.next_due().is_some_and(|due| due <= now) {
            return Timeout::Release(self.tracks.release_due(now));
        }
        if self.expires.is_some_and(|at| at <= now) {
            return Timeout::End(End::Close(
                CloseCode::Unauthorized,
                AuthError::Expired.to_string(),
            ));
        }
        let keepalive = self.keepalive_due();
        if now < keepalive {
            return Timeout::Nothing;
        }
        if self.pinged {
            return Timeout::End(End::Gone); // nothing heard for two keepalive intervals
        }
        self.pinged = true;
        Timeout::Ping
    }

    /// A frame (or the stream's end, or an error) arrived from the client at `now`.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        frame: Option<Result<Message, WsError>>,
    ) -> Incoming {
        self.ops
            .idle(now.saturating_duration_since(self.last_heard));
        self.last_heard = now;
        self.pinged = false;
        match frame {
            None => Incoming::End(End::Gone),
            Some(Ok(Message::Close(frame))) => {
                Incoming::End(End::ClientClosed(frame.map_or(1005, |f| u16::from(f.code))))
            }
            Some(Ok(Message::Text(text))) => Incoming::Op(text.as_str().to_owned()),
            Some(Ok(Message::Binary(bytes))) => Incoming::Binary(bytes),
            Some(Ok(_)) => Incoming::Nothing,
            Some(Err(WsError::Capacity(e))) => Incoming::End(End::Close(
                CloseCode::TooBig,
                format!("frame too large: {e}"),
            )),
            Some(Err(WsError::Utf8(_))) => Incoming::End(End::Close(
                CloseCode::InvalidPayload,
                "text frame is not UTF-8".into(),
            )),
            Some(Err(WsError::Protocol(e))) => Incoming::End(End::Close(
                CloseCode::ProtocolError,
                format!("protocol error: {e}"),
            )),
            Some(Err(_)) => Incoming::End(End::Gone),
        }
    }

    /// The client's op (or frame for the backend) of `cost` units, after
    /// [`SessionState::handle_frame`]: whether the connection's budget lets it through.
    pub fn charge(&mut self, cost: u32, limits: &crate::config::OpLimits) -> Verdict {
        self.ops.charge(cost, limits)
    }

    /// The node refused an op [`SessionState::charge`] let through: its units go back.
    pub fn refund(&mut self, cost: u32, limits: &crate::config::OpLimits) {
        self.ops.refund(cost, limits)
    }

    /// Published messages taken from the queue, as the frames to write: a positioned
    /// one goes through its group's track (held while it recovers, dropped when seen),
    /// and a gap ends the session.
    pub fn route_batch(&mut self, batch: &mut Vec<Outbound>) -> Result<Vec<Message>, End> {
        let mut frames = Vec::with_capacity(batch.len());
        for item in batch.drain(..) {
            match item {
                Outbound::Frame(message) => frames.push(message),
                Outbound::Positioned(p) => match self.tracks.route(p.clone()) {
                    Route::Write(p) => frames.push(p.frame.clone()),
                    Route::Held | Route::Duplicate => {}
                    Route::Gap => return Err(gap(&p.group)),
                },
            }
        }
        Ok(frames)
    }

    /// The client subscribed to `group` (the answer is written): what its track held
    /// goes out after it.
    pub fn release(&mut self, group: &str) -> Result<Vec<Arc<Positioned>>, Gap> {
        self.tracks.release(group)
    }

    /// A subscription to a history group that recovers: its messages wait for the
    /// answer.
    pub fn recovering(&mut self, group: &str) {
        self.tracks.recovering(group);
    }

    /// Asks to recover `group` after `since` (or, without, to learn where it stands);
    /// answered in the order asked.
    pub fn ask(&mut self, group: String, since: Option<Position>, id: Option<u64>) {
        self.asked.push_back(Asked { group, since, id });
    }

    /// The recovery (or its next page) to ask for now, if none is in flight: (group,
    /// since).
    pub fn poll_recovery(&mut self) -> Option<(String, Option<Position>)> {
        if self.in_flight {
            return None;
        }
        let asked = self.asked.front()?;
        self.in_flight = true;
        let since = match self.streaming {
            Some(stream) => Some(stream.last),
            None => {
                // Held from its start, whatever an earlier recovery of the group released.
                self.tracks.recovering(&asked.group);
                asked.since
            }
        };
        Some((asked.group.clone(), since))
    }

    /// The client left `group` (an unsubscribe, a refreshed token without it): its
    /// recoveries asked are dropped, the one in flight writes nothing more, and what its
    /// track held goes.
    pub fn forget(&mut self, group: &str) {
        let front = self.asked.pop_front();
        self.asked.retain(|a| a.group != group);
        if let Some(front) = front {
            if front.group != group {
                self.asked.push_front(front);
            } else if self.in_flight {
                self.abandoned = true;
                self.asked.push_front(front);
            } else {
                self.streaming = None;
            }
        }
        self.tracks.forget(group);
    }

    /// Whether the recovery in flight is past its first page.
    pub fn continuing(&self) -> bool {
        self.streaming.is_some()
    }

    /// A page of the recovery in flight. The first page's answer is the `subscribed`
    /// reply; while the owner has more before the top it named, the next page is asked
    /// for after this one is written, and what arrives meanwhile stays held. A failure
    /// other than the node stopping closes with 1013: the router asked again for as
    /// long as a takeover takes, so the client recovers later or elsewhere rather than
    /// being told `recovered: false` about messages that are still held.
    pub fn handle_recovered(&mut self, answer: Result<Recovery, HistoryError>) -> Recovered {
        self.in_flight = false;
        if std::mem::take(&mut self.abandoned) {
            self.streaming = None;
            self.asked.pop_front();
            return Recovered::default();
        }
        let Some(asked) = self.asked.front() else {
            return Recovered::default();
        };
        let group = asked.group.clone();
        if let Some(stream) = self.streaming.take() {
            return self.next_page(group, stream, answer);
        }
        let (since, id) = (asked.since, asked.id);
        if let Err(e) = &answer
            && !matches!(e, HistoryError::Stopped)
        {
            self.asked.pop_front();
            return unavailable(group, e);
        }
        let fresh = since.is_none();
        let (recovered, missed, top, more) = match answer {
            Ok(r) => (
                r.recovered,
                r.entries,
                Some(Position {
                    epoch: r.epoch,
                    offset: r.top,
                }),
                r.more,
            ),
            Err(_) => (false, Vec::new(), None, false),
        };
        let reply = |stands: Option<Position>| {
            text(&ServerReply::Subscribed {
                group: group.clone(),
                recovered: (!fresh).then_some(recovered),
                epoch: stands.map(|p| p.epoch),
                offset: stands.map(|p| p.offset),
                id,
            })
        };
        if let (Some(top), Some(last)) = (top, missed.last())
            && more
            && recovered
            && last.position.offset < top.offset
        {
            // A recovering client stands at the top once it has every page.
            self.streaming = Some(Streaming {
                top,
                last: last.position,
            });
            return Recovered {
                reply: Some(reply(Some(top))),
                group,
                missed,
                ..Recovered::default()
            };
        }
        let (stands, after, then) = self.finish(&group, top, fresh);
        Recovered {
            reply: Some(reply(stands)),
            missed,
            after,
            then,
            group,
        }
    }

    /// The recovery in flight is over: the client stands at `top` (or, `fresh`, before
    /// the first message held), and what its group's track held follows. Returns where
    /// it stands, those frames, and the close a gap among them calls for.
    fn finish(
        &mut self,
        group: &str,
        top: Option<Position>,
        fresh: bool,
    ) -> (Option<Position>, Vec<Message>, Option<End>) {
        self.asked.pop_front();
        match self.tracks.recovered(group, top, fresh) {
            Ok((stands, after)) => (
                stands,
                after.iter().map(|p| p.frame.clone()).collect(),
                None,
            ),
            Err(Gap) => (top, Vec::new(), Some(gap(group))),
        }
    }

    /// A page after the first: its messages up to the top the first named. History
    /// dropped meanwhile (evicted between pages) is a gap: the client was told
    /// `recovered: true`, so it is closed with 4009 and recovers again from where it got.
    fn next_page(
        &mut self,
        group: String,
        mut stream: Streaming,
        answer: Result<Recovery, HistoryError>,
    ) -> Recovered {
        let page = match answer {
            Ok(page) if page.recovered => page,
            Ok(_) => {
                self.asked.pop_front();
                return Recovered {
                    then: Some(gap(&group)),
                    group,
                    ..Recovered::default()
                };
            }
            Err(e) => {
                self.asked.pop_front();
                return unavailable(group, &e);
            }
        };
        let mut missed = page.entries;
        missed.retain(|e| {
            e.position.offset > stream.last.offset && e.position.offset <= stream.top.offset
        });
        if let Some(last) = missed.last() {
            stream.last = last.position;
        }
        if page.more && !missed.is_empty() && stream.last.offset < stream.top.offset {
            self.streaming = Some(stream);
            return Recovered {
                group,
                missed,
                ..Recovered::default()
            };
        }
        if stream.last.offset < stream.top.offset {
            // The owner has nothing more before the top it named: not a history to trust.
            self.asked.pop_front();
            return Recovered {
                group: group.clone(),
                missed,
                then: Some(gap(&group)),
                ..Recovered::default()
            };
        }
        // Where the client stands: the top, in the epoch its last page was written in
        // (a takeover between pages continues the offsets in a later epoch).
        let (_, after, then) = self.finish(&group, Some(stream.last), false);
        Recovered {
            group,
            missed,
            after,
            then,
            ..Recovered::default()
        }
    }
}

/// The close of a session whose recovery failed: try again later, elsewhere.
fn unavailable(group: String, e: &HistoryError) -> Recovered {
    let reason = format!("history of {group} unavailable: {e}; reconnect and recover");
    Recovered {
        group,
        then: Some(End::Close(CloseCode::TryAgainLater, reason)),
        ..Recovered::default()
    }
}

/// A reply as a text frame.
pub fn text(reply: &ServerReply) -> Message {
    Message::Text(serde_json::to_string(reply).unwrap_or_default().into())
}

/// The close of a positioned connection that cannot be given a gap-free sequence.
pub fn gap(group: &str) -> End {
    End::Close(
        CloseCode::InsufficientState,
        format!("missed messages in {group}: reconnect and recover"),
    )
}

/// An error reply.
pub fn error(code: ErrorCode, message: &str, id: Option<u64>) -> ServerReply {
    ServerReply::Error {
        code,
        message: message.to_owned(),
        id,
    }
}

/// How a connection whose queue overflowed ends.
pub fn slow_consumer(code: CloseCode) -> End {
    End::Close(code, "slow consumer: outbound queue overflowed".into())
}

#[cfg(test)]
mod tests;
