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
use std::fmt::Write;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::select_all;
use http_body_util::BodyExt;
use hyper::body::Frame;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName, HeaderValue};
use serde_json::json;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::{NodeView, Reply, json_reply};
use crate::presence::events::{
    Cursor, Event, EventId, Origin, Read, event_json, reset_json, reset_json_in,
};
use crate::presence::shards::Shard;
use crate::raft::network::Events;
use crate::raft::shards::{Feed, Shards};

/// Event streams served at once by one node; more are answered 503.
pub const MAX_EVENT_STREAMS: usize = 64;
/// A comment line this often keeps an idle stream open through proxies.
pub const HEARTBEAT: Duration = Duration::from_secs(15);
/// A reader that takes nothing for this long is dropped (its slot is given back).
pub const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Events read from the ring per look.
const READ_BATCH: usize = 512;
/// Batches read from one shard per look (the rest at the next).
const MAX_READS_PER_SHARD: usize = 64;
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    pub since: Option<Since>,
    pub follow: bool,
}

/// A resume position as the reader gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// `<log index>-<n>`: a position in the one registry.
    Id(EventId),
    /// `<shard>:<log index>-<n>,…`: a position in each shard.
    Cursor(Cursor),
}

impl std::str::FromStr for Since {
    type Err = String;

    fn from_str(s: &str) -> Result<Since, String> {
        let s = crate::ingress::http::percent_decode(s);
        if s.contains(':') {
            Ok(Since::Cursor(s.parse()?))
        } else {
            Ok(Since::Id(s.parse()?))
        }
    }
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
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    match (&view.presence.shards, start.since) {
        (None, Some(Since::Cursor(_))) => {
            return json_reply(
                400,
                &json!({ "error": "presence is not sharded on this cluster: resume with <log index>-<n>" }),
            );
        }
        (Some(_), Some(Since::Id(_))) => {
            return json_reply(
                400,
                &json!({ "error": "presence is sharded on this cluster: resume with <shard>:<log index>-<n>,… (the id: of the last event)" }),
            );
        }
        (Some(shards), Some(Since::Cursor(cursor)))
            if cursor.0.keys().any(|shard| *shard >= shards.count()) =>
        {
            return json_reply(
                400,
                &json!({ "error": format!(
                    "the cursor names a shard this cluster does not have (shards 0 to {})",
                    shards.count().saturating_sub(1)
                ) }),
            );
        }
        (Some(shards), Some(Since::Cursor(cursor))) => {
            tokio::spawn(stream_sharded(
                view.clone(),
                shards.clone(),
                Some(cursor),
                start.follow,
                tx,
                permit,
            ));
        }
        (Some(shards), None) => {
            tokio::spawn(stream_sharded(
                view.clone(),
                shards.clone(),
                None,
                start.follow,
                tx,
                permit,
            ));
        }
        (None, since) => {
            let since = match since {
                Some(Since::Id(id)) => Some(id),
                _ => None,
            };
            // A position from another node that this one has not reached yet: wait for it
            // (as a linearizable read does) rather than answer with less than is there.
            if let Some(since) = since
                && since.index > view.replica.newest_event().index
            {
                let _ = view.consensus.caught_up(since.index).await;
            }
            // From the present means from now, not from whenever the task first runs.
            let since = since.or(start.follow.then(|| view.replica.newest_event()));
            tokio::spawn(stream(view.clone(), since, start.follow, tx, permit));
        }
    }
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
    since: Option<EventId>,
    follow: bool,
    tx: mpsc::Sender<Bytes>,
    _slot: SemaphorePermit<'static>,
) {
    let shutdown = view.lifecycle.shutdown_token().clone();
    let mut newest = view.replica.subscribe();
    let mut cursor = since.unwrap_or_default();
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
        if !follow {
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

/// One stream of a sharded registry: every shard's events, each shard followed through
/// its feed, with the reader's position in every shard as each event's `id:` (so that
/// `Last-Event-ID` resumes them all). A shard the reader has no position in starts from
/// the present when following, else from what it keeps; a shard behind which the reader
/// fell gets a `reset` of that shard (`"shard": k`: it replaces that shard's users only).
/// `follow=0` reads each shard until it has nothing more, then ends.
async fn stream_sharded(
    view: NodeView,
    shards: Arc<Shards>,
    since: Option<Cursor>,
    follow: bool,
    tx: mpsc::Sender<Bytes>,
    _slot: SemaphorePermit<'static>,
) {
    let shutdown = view.lifecycle.shutdown_token().clone();
    let mut out = String::from(": switchboard presence events (sharded)\nretry: 1000\n\n");
    let resuming = since.is_some();
    let mut cursor = since.unwrap_or_default();
    if !resuming && follow {
        // From the present: each shard's newest position.
        for shard in 0..shards.count() {
            if let Ok(Events::After(_, newest)) = shards
                .events(shard, Origin::Now, None, 0, Duration::ZERO)
                .await
            {
                cursor.0.insert(shard, newest);
            }
        }
    }
    if !follow {
        for shard in 0..shards.count() {
            for _ in 0..MAX_READS_PER_SHARD {
                let at = cursor.0.get(&shard).copied().unwrap_or_default();
                let read = shards
                    .events(shard, Origin::After(at), None, READ_BATCH, Duration::ZERO)
                    .await;
                match read {
                    Ok(Events::After(events, seen)) => {
                        let done = events.is_empty();
                        write_events(
                            &mut out,
                            &mut cursor,
                            shard,
                            events.into_iter().map(Into::into),
                            seen,
                        );
                        if done {
                            break;
                        }
                    }
                    Ok(Events::Reset(at, records)) => {
                        cursor.0.insert(shard, at);
                        push_cursor_event(
                            &mut out,
                            &cursor,
                            &reset_json_in(Some(shard), at, None, &records),
                        );
                    }
                    Err(e) => {
                        let _ = writeln!(out, ": shard {shard} unreachable: {e}\n");
                        break;
                    }
                }
                if out.len() >= CHUNK_BYTES && !send(&tx, &mut out, &shutdown).await {
                    return;
                }
            }
        }
        let _ = send(&tx, &mut out, &shutdown).await;
        return;
    }
    let mut feeds: Vec<(Shard, Arc<Feed>, watch::Receiver<EventId>)> = (0..shards.count())
        .map(|shard| {
            let feed = shards.feed(shard, cursor.0.get(&shard).copied());
            let seen = feed.subscribe();
            (shard, feed, seen)
        })
        .collect();
    loop {
        for (shard, feed, seen) in &mut feeds {
            seen.borrow_and_update();
            let shard = *shard;
            for _ in 0..MAX_READS_PER_SHARD {
                let at = cursor.0.get(&shard).copied().unwrap_or_default();
                match feed.events_after(at, READ_BATCH, |_| true) {
                    Read::Behind => {
                        let reset = shards
                            .events(shard, Origin::Reset, None, 0, Duration::ZERO)
                            .await;
                        if let Ok(Events::Reset(at, records)) = reset {
                            cursor.0.insert(shard, at);
                            push_cursor_event(
                                &mut out,
                                &cursor,
                                &reset_json_in(Some(shard), at, None, &records),
                            );
                        }
                        break;
                    }
                    Read::Events(events, upto) => {
                        let more = events.len() == READ_BATCH;
                        write_events(&mut out, &mut cursor, shard, events.into_iter(), upto);
                        if !more {
                            break;
                        }
                    }
                }
                if out.len() >= CHUNK_BYTES && !send(&tx, &mut out, &shutdown).await {
                    return;
                }
            }
        }
        if !out.is_empty() && !send(&tx, &mut out, &shutdown).await {
            return;
        }
        let changed = select_all(
            feeds
                .iter_mut()
                .map(|(_, _, seen)| Box::pin(seen.changed())),
        );
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tx.closed() => return,
            _ = changed => {}
            _ = tokio::time::sleep(HEARTBEAT) => out.push_str(": keepalive\n\n"),
        }
    }
}

/// Writes a shard's events, each with the cursor after it, and moves the cursor to `seen`.
fn write_events(
    out: &mut String,
    cursor: &mut Cursor,
    shard: Shard,
    events: impl Iterator<Item = Event>,
    seen: EventId,
) {
    for event in events {
        cursor.0.insert(shard, event.id);
        push_cursor_event(out, cursor, &event_json(&event, Some(shard)));
    }
    let at = cursor.0.entry(shard).or_default();
    *at = (*at).max(seen);
}

fn push_cursor_event(out: &mut String, cursor: &Cursor, data: &str) {
    let _ = write!(out, "id: {cursor}\ndata: {data}\n\n");
}

fn push_event(out: &mut String, id: EventId, data: &str) {
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
        let id = |index, ordinal| Some(Since::Id(EventId { index, ordinal }));
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
        let cursor = Cursor(
            [
                (
                    0,
                    EventId {
                        index: 4,
                        ordinal: 1,
                    },
                ),
                (
                    3,
                    EventId {
                        index: 9,
                        ordinal: 0,
                    },
                ),
            ]
            .into(),
        );
        assert_eq!(
            Start::parse("since=0%3A4-1%2C3%3A9-0", None).map(|s| s.since),
            Ok(Some(Since::Cursor(cursor.clone())))
        );
        assert_eq!(cursor.to_string(), "0:4-1,3:9-0");
        assert_eq!(
            Start::parse("", Some("0:4-1,3:9-0")).map(|s| s.since),
            Ok(Some(Since::Cursor(cursor)))
        );
        assert!(Start::parse("since=1:2", None).is_err());
    }
}
