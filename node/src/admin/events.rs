//! `GET /v1/presence/events`: the presence events as Server-Sent Events.
//!
//! Each event is `id: <event id>` and one `data:` line of JSON (no `event:` field, so a
//! browser's `EventSource.onmessage` sees every type). A reader resumes with
//! `Last-Event-ID` or `?since=ID`; one behind what this node keeps gets a `reset` (the
//! whole registry, at a position), then the events after it. Without either, the stream
//! starts at the present. `?follow=0` sends what is kept after the position and ends.
//! A comment line every [`HEARTBEAT`] keeps proxies from closing an idle stream.
//!
//! Each stream is one task on the admin runtime writing into a bounded channel: a reader
//! that does not keep up holds the task back (hyper stops polling the body), and once the
//! ring has moved past it, it gets a reset rather than unbounded buffering here; one that
//! takes nothing for [`STALL_TIMEOUT`] is dropped. A reset (the whole registry) is built
//! on a blocking thread, not on the admin runtime.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc};
use tokio_util::sync::CancellationToken;

use super::{NodeView, Reply, json_reply};
use crate::presence::events::{EventId, Read, reset_json};

/// Event streams served at once by one node; more are answered 503.
pub const MAX_EVENT_STREAMS: usize = 64;
/// A comment line this often keeps an idle stream open through proxies.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A reader that takes nothing for this long is dropped (its slot is given back).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Events read from the ring per look.
const READ_BATCH: usize = 512;
/// Chunks buffered between the stream task and the socket.
const STREAM_BUFFER: usize = 4;
/// A chunk is sent once it holds this many bytes.
const CHUNK_BYTES: usize = 64 * 1024;

static STREAMS: Semaphore = Semaphore::const_new(MAX_EVENT_STREAMS);

/// Event streams open now.
pub fn open_streams() -> usize {
    MAX_EVENT_STREAMS - STREAMS.available_permits()
}

/// Where a stream starts, from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub since: Option<EventId>,
    pub follow: bool,
}

impl Start {
    /// From the query (`since`, `follow`) and the `Last-Event-ID` header (which wins, as
    /// a browser's reconnect sends it); `Err` with the reason for a bad value.
    pub fn parse(query: &str, last_event_id: Option<&str>) -> Result<Start, String> {
        let mut start = Start {
            since: None,
            follow: true,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "since" => start.since = Some(value.parse()?),
                "follow" => {
                    start.follow = match value {
                        "1" | "true" | "" => true,
                        "0" | "false" => false,
                        other => return Err(format!("follow={other}: say 0 or 1")),
                    }
                }
                _ => {}
            }
        }
        if let Some(id) = last_event_id.filter(|id| !id.trim().is_empty()) {
            start.since = Some(id.parse()?);
        }
        Ok(start)
    }
}

/// The body of a stream: chunks from its task.
struct Chunks(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|c| c.map(|b| Ok(Frame::data(b))))
    }
}

/// Answers a `GET /v1/presence/events`.
pub async fn serve(view: &NodeView, start: Start) -> Reply {
    let Ok(permit) = STREAMS.try_acquire() else {
        return json_reply(
            503,
            &json!({ "error": format!("{MAX_EVENT_STREAMS} event streams already open on this node") }),
        );
    };
    // A position from another node that this one has not reached yet: wait for it (as
    // a linearizable read does) rather than answer with less than is there.
    if let Some(since) = start.since
        && since.index > view.replica.newest_event().index
    {
        let _ = view.consensus.caught_up(since.index).await;
    }
    // From the present means from now, not from whenever the task first runs.
    let start = Start {
        since: start
            .since
            .or(start.follow.then(|| view.replica.newest_event())),
        ..start
    };
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    tokio::spawn(stream(view.clone(), start, tx, permit));
    let mut response = hyper::Response::new(Chunks(rx).boxed());
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx would otherwise buffer the stream.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

/// One stream, until the reader leaves or the node shuts down; `_slot` is given back then.
async fn stream(
    view: NodeView,
    start: Start,
    tx: mpsc::Sender<Bytes>,
    _slot: SemaphorePermit<'static>,
) {
    let shutdown = view.lifecycle.shutdown_token().clone();
    let mut newest = view.replica.subscribe();
    let mut cursor = start.since.unwrap_or_default();
    let mut out = String::from(": switchboard presence events\nretry: 1000\n\n");
    loop {
        newest.borrow_and_update();
        loop {
            match view.replica.events_after(cursor, READ_BATCH, |_| true) {
                Read::Behind => {
                    // The whole registry: copied and encoded off the admin runtime.
                    let replica = view.replica.clone();
                    let reset = tokio::task::spawn_blocking(move || {
                        let (at, records) = replica.reset(None);
                        (at, reset_json(at, None, &records))
                    });
                    let Ok((at, json)) = reset.await else {
                        return;
                    };
                    push_event(&mut out, at, &json);
                    cursor = at;
                }
                Read::Events(events, seen) => {
                    for event in &events {
                        let data = serde_json::to_string(event).unwrap_or_default();
                        push_event(&mut out, event.id, &data);
                    }
                    cursor = seen;
                    if events.len() < READ_BATCH {
                        break;
                    }
                }
            }
            if out.len() >= CHUNK_BYTES && !send(&tx, &mut out, &shutdown).await {
                return;
            }
        }
        if !out.is_empty() && !send(&tx, &mut out, &shutdown).await {
            return;
        }
        if !start.follow {
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            changed = newest.changed() => if changed.is_err() { return },
            _ = tokio::time::sleep(HEARTBEAT) => out.push_str(": keepalive\n\n"),
        }
    }
}

fn push_event(out: &mut String, id: EventId, data: &str) {
    use std::fmt::Write;
    let _ = write!(out, "id: {id}\ndata: {data}\n\n");
}

/// Sends what `out` holds; false once the reader is gone, has read nothing for
/// [`STALL_TIMEOUT`], or the node shuts down.
async fn send(tx: &mpsc::Sender<Bytes>, out: &mut String, shutdown: &CancellationToken) -> bool {
    let chunk = Bytes::from(std::mem::take(out));
    tokio::select! {
        _ = shutdown.cancelled() => false,
        sent = tokio::time::timeout(STALL_TIMEOUT, tx.send(chunk)) => matches!(sent, Ok(Ok(()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_parse_from_the_query_and_the_header() {
        let id = |index, ordinal| Some(EventId { index, ordinal });
        assert_eq!(
            Start::parse("", None),
            Ok(Start {
                since: None,
                follow: true
            })
        );
        assert_eq!(
            Start::parse("since=12-3&follow=0", None).map(|s| (s.since, s.follow)),
            Ok((id(12, 3), false))
        );
        assert_eq!(
            Start::parse("since=1-0", Some("9-2")).map(|s| s.since),
            Ok(id(9, 2))
        );
        assert_eq!(Start::parse("x=1", Some(" ")).map(|s| s.since), Ok(None));
        assert!(Start::parse("since=12", None).is_err());
        assert!(Start::parse("follow=maybe", None).is_err());
        assert!(Start::parse("", Some("x-1")).is_err());
    }
}
