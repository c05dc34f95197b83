//! The session's decisions with no socket and no clock: every instant is a base plus a
//! duration, every frame a value.

use bytes::Bytes;
use switchboard_proto::peer::{HistoryEntry, PublishId};
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

use super::*;
use crate::ingress::ws::tracks::HOLD_GRACE;

fn base() -> Instant {
    Instant::now()
}

fn positioned(group: &str, epoch: u64, offset: u64) -> Outbound {
    Outbound::Positioned(Arc::new(Positioned {
        group: group.into(),
        position: Some(Position { epoch, offset }),
        frame: Message::Text(format!("{group}@{offset}").into()),
    }))
}

/// A recovery page's frames as text, and how the session ends after them.
fn written(answer: Recovered) -> (Vec<String>, Option<End>) {
    let (frames, then) = answer.into_frames();
    (texts(&frames.collect::<Vec<_>>()), then)
}

fn texts(frames: &[Message]) -> Vec<String> {
    frames
        .iter()
        .map(|m| m.to_text().expect("text").to_owned())
        .collect()
}

fn code(end: &End) -> Option<CloseCode> {
    match end {
        End::Close(code, _) => Some(*code),
        End::Asked(..) | End::ClientClosed(_) | End::Gone => None,
    }
}

fn entry(offset: u64) -> HistoryEntry {
    HistoryEntry {
        position: Position { epoch: 3, offset },
        id: PublishId {
            node: 1,
            boot: 1,
            seq: offset,
        },
        payload: Bytes::from(format!("missed {offset}")),
        text: true,
        at_ms: 0,
    }
}

fn recovery(top: u64, entries: Vec<HistoryEntry>) -> Recovery {
    Recovery {
        recovered: true,
        epoch: 3,
        top,
        entries,
        more: false,
    }
}

#[test]
fn frames_from_the_client_map_to_ops_replies_and_close_codes() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    assert_eq!(
        s.handle_frame(t0, Some(Ok(Message::Text("{\"op\":\"ping\"}".into())))),
        Incoming::Op("{\"op\":\"ping\"}".into())
    );
    // Binary frames carry no op: the session refuses them, or gives them to the backend.
    assert_eq!(
        s.handle_frame(t0, Some(Ok(Message::Binary(Bytes::from_static(b"x"))))),
        Incoming::Binary(Bytes::from_static(b"x"))
    );
    assert_eq!(
        s.handle_frame(t0, Some(Ok(Message::Ping(Bytes::new())))),
        Incoming::Nothing
    );
    let too_big = WsError::Capacity(CapacityError::MessageTooLong {
        size: 70_000,
        max_size: 65_536,
    });
    let utf8 = WsError::Utf8("invalid".into());
    let protocol = WsError::Protocol(ProtocolError::NonZeroReservedBits);
    for (error, expected) in [
        (too_big, CloseCode::TooBig),
        (utf8, CloseCode::InvalidPayload),
        (protocol, CloseCode::ProtocolError),
    ] {
        match s.handle_frame(t0, Some(Err(error))) {
            Incoming::End(end) => assert_eq!(code(&end), Some(expected)),
            other => panic!("{other:?}"),
        }
    }
    for gone in [None, Some(Err(WsError::ConnectionClosed))] {
        assert_eq!(s.handle_frame(t0, gone), Incoming::End(End::Gone));
    }
    // The client's close: its code is what the backend's disconnect reports.
    let closed = s.handle_frame(t0, Some(Ok(Message::Close(None))));
    assert_eq!(closed, Incoming::End(End::ClientClosed(1005)));
    let frame = tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1001.into(),
        reason: "".into(),
    };
    let closed = s.handle_frame(t0, Some(Ok(Message::Close(Some(frame)))));
    assert_eq!(closed, Incoming::End(End::ClientClosed(1001)));
    assert_eq!(End::Gone.code(), 1006);
    assert_eq!(End::Close(CloseCode::Restart, String::new()).code(), 1012);
}

#[test]
fn a_silent_client_is_pinged_then_dropped_and_any_frame_counts_as_life() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    assert_eq!(s.poll_timeout(), t0 + KEEPALIVE);
    assert!(matches!(
        s.handle_timeout(t0 + KEEPALIVE / 2),
        Timeout::Nothing
    ));
    assert!(matches!(s.handle_timeout(t0 + KEEPALIVE), Timeout::Ping));
    assert_eq!(s.poll_timeout(), t0 + 2 * KEEPALIVE, "one more interval");
    // A pong (any frame) in time: the count starts again from it.
    let heard = t0 + KEEPALIVE + Duration::from_secs(1);
    s.handle_frame(heard, Some(Ok(Message::Pong(Bytes::new()))));
    assert_eq!(s.poll_timeout(), heard + KEEPALIVE);
    assert!(matches!(s.handle_timeout(heard + KEEPALIVE), Timeout::Ping));
    match s.handle_timeout(heard + 2 * KEEPALIVE) {
        Timeout::End(end) => assert_eq!(end, End::Gone, "silent for two intervals"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expiring_token_closes_with_4001_unless_refreshed() {
    let t0 = base();
    let exp = t0 + Duration::from_secs(4);
    let mut s = SessionState::new(t0, Some(exp), Tracks::default());
    assert_eq!(s.poll_timeout(), exp);
    match s.handle_timeout(exp) {
        Timeout::End(end) => assert_eq!(code(&end), Some(CloseCode::Unauthorized)),
        other => panic!("{other:?}"),
    }
    // Refreshed before `exp`: the timer moves to the new token's.
    let mut s = SessionState::new(t0, Some(exp), Tracks::default());
    let later = t0 + Duration::from_secs(20);
    s.set_expiry(Some(later));
    assert_eq!(s.poll_timeout(), later);
    assert!(matches!(s.handle_timeout(exp), Timeout::Nothing));
    // connect-only: no expiry at all, only the keepalive.
    s.set_expiry(None);
    assert_eq!(s.poll_timeout(), t0 + KEEPALIVE);
}

#[test]
fn held_messages_go_out_at_the_grace_and_a_gap_closes_with_4009() {
    let t0 = base();
    let mut tracks = Tracks::default();
    tracks.hold("user_1", t0 + HOLD_GRACE);
    let mut s = SessionState::new(t0, None, tracks);
    let mut batch = vec![positioned("user_1", 3, 5), positioned("user_1", 3, 6)];
    assert!(s.route_batch(&mut batch).expect("held").is_empty());
    assert!(batch.is_empty(), "the batch is drained");
    assert_eq!(
        s.poll_timeout(),
        t0 + HOLD_GRACE,
        "the hold is the first due"
    );
    match s.handle_timeout(t0 + HOLD_GRACE) {
        Timeout::Release(Ok(messages)) => {
            let frames: Vec<Message> = messages.iter().map(|m| m.frame.clone()).collect();
            assert_eq!(texts(&frames), vec!["user_1@5", "user_1@6"]);
        }
        other => panic!("{other:?}"),
    }
    // Live from now on: the next follows, a duplicate is dropped, a gap ends it.
    let mut batch = vec![positioned("user_1", 3, 7), positioned("user_1", 3, 7)];
    assert_eq!(
        texts(&s.route_batch(&mut batch).expect("follows")),
        vec!["user_1@7"]
    );
    let mut batch = vec![positioned("user_1", 3, 9)];
    let end = s.route_batch(&mut batch).expect_err("8 is missing");
    assert_eq!(code(&end), Some(CloseCode::InsufficientState));
}

#[test]
fn recoveries_go_one_at_a_time_in_the_order_asked() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    assert_eq!(s.poll_recovery(), None, "nothing asked");
    let since = Position {
        epoch: 3,
        offset: 1,
    };
    s.recovering("a");
    s.ask("a".into(), Some(since), Some(1));
    s.recovering("b");
    s.ask("b".into(), None, Some(2));
    assert_eq!(s.poll_recovery(), Some(("a".into(), Some(since))));
    assert_eq!(s.poll_recovery(), None, "one in flight");
    // Live messages of "a" arrive meanwhile: held until the answer is written.
    let mut batch = vec![positioned("a", 3, 4)];
    assert!(s.route_batch(&mut batch).expect("held").is_empty());
    let (frames, then) = written(s.handle_recovered(Ok(recovery(3, vec![entry(2), entry(3)]))));
    assert!(then.is_none());
    assert_eq!(frames.len(), 4, "{frames:?}");
    let reply: serde_json::Value = serde_json::from_str(&frames[0]).expect("json");
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["offset"], 3);
    assert_eq!(reply["id"], 1);
    assert!(frames[1].contains("missed 2") && frames[2].contains("missed 3"));
    assert_eq!(frames[3], "a@4", "what arrived meanwhile, after");
    // Then the second one, a fresh subscription: where it stands, no `recovered`.
    assert_eq!(s.poll_recovery(), Some(("b".into(), None)));
    let (frames, _) = written(s.handle_recovered(Ok(recovery(9, Vec::new()))));
    let reply: serde_json::Value = serde_json::from_str(&frames[0]).expect("json");
    assert_eq!(reply["offset"], 9);
    assert!(
        reply.get("recovered").is_none_or(|v| v.is_null()),
        "{reply}"
    );
    assert_eq!(s.poll_recovery(), None);
}

#[test]
fn a_failed_recovery_closes_with_1013_but_a_stopping_node_answers_not_recovered() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    let since = Some(Position {
        epoch: 3,
        offset: 1,
    });
    s.ask("a".into(), since, None);
    assert!(s.poll_recovery().is_some());
    let (frames, then) = written(s.handle_recovered(Err(HistoryError::OwnerUnreachable(2))));
    assert!(frames.is_empty(), "no `recovered: false` for held messages");
    assert_eq!(then.as_ref().and_then(code), Some(CloseCode::TryAgainLater));
    // The node stops: the client is told it did not recover, and stays.
    s.ask("a".into(), since, None);
    assert!(s.poll_recovery().is_some());
    let (frames, then) = written(s.handle_recovered(Err(HistoryError::Stopped)));
    assert!(then.is_none());
    let reply: serde_json::Value = serde_json::from_str(&frames[0]).expect("json");
    assert_eq!(reply["recovered"], false);
}

#[test]
fn a_gap_after_the_recovered_messages_sends_them_then_closes_with_4009() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    s.recovering("a");
    s.ask(
        "a".into(),
        Some(Position {
            epoch: 3,
            offset: 1,
        }),
        None,
    );
    assert!(s.poll_recovery().is_some());
    // Offset 6 arrives while recovering; the owner's answer stops at 3: 4 and 5 are
    // missing.
    let mut batch = vec![positioned("a", 3, 6)];
    assert!(s.route_batch(&mut batch).expect("held").is_empty());
    let (frames, then) = written(s.handle_recovered(Ok(recovery(3, vec![entry(2), entry(3)]))));
    assert_eq!(frames.len(), 3, "the reply and what was recovered");
    assert_eq!(
        then.as_ref().and_then(code),
        Some(CloseCode::InsufficientState)
    );
}

fn page(top: u64, offsets: std::ops::RangeInclusive<u64>, more: bool) -> Recovery {
    Recovery {
        more,
        ..recovery(top, offsets.map(entry).collect())
    }
}

#[test]
fn a_long_recovery_is_written_a_page_at_a_time_and_the_next_is_asked_after_the_last_written() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    s.recovering("a");
    let since = Position {
        epoch: 3,
        offset: 1,
    };
    s.ask("a".into(), Some(since), Some(7));
    assert_eq!(s.poll_recovery(), Some(("a".into(), Some(since))));
    // Offset 7 is published while the pages come: held until the last one is written.
    let mut batch = vec![positioned("a", 3, 7)];
    assert!(s.route_batch(&mut batch).expect("held").is_empty());
    let (frames, then) = written(s.handle_recovered(Ok(page(6, 2..=3, true))));
    assert!(then.is_none());
    let reply: serde_json::Value = serde_json::from_str(&frames[0]).expect("json");
    assert_eq!(
        (
            &reply["type"],
            &reply["recovered"],
            &reply["offset"],
            &reply["id"]
        ),
        (&"subscribed".into(), &true.into(), &6.into(), &7.into()),
        "the first page's answer says where the client will stand"
    );
    assert_eq!(frames.len(), 3);
    assert_eq!(s.poll_recovery(), Some(("a".into(), Some(pos(3)))));
    assert_eq!(s.poll_recovery(), None, "one page in flight");
    // The next page may reach past the top the first named: that part comes live.
    let (frames, then) = written(s.handle_recovered(Ok(page(7, 4..=5, true))));
    assert!(then.is_none());
    assert!(frames[0].contains("missed 4") && frames[1].contains("missed 5"));
    assert_eq!(s.poll_recovery(), Some(("a".into(), Some(pos(5)))));
    let (frames, then) = written(s.handle_recovered(Ok(page(7, 6..=7, false))));
    assert!(then.is_none());
    assert_eq!(frames.len(), 2, "{frames:?}");
    assert!(frames[0].contains("missed 6"));
    assert_eq!(frames[1], "a@7", "what arrived meanwhile, once, after");
    assert_eq!(s.poll_recovery(), None);
}

#[test]
fn history_lost_between_pages_closes_with_4009_and_a_failed_page_with_1013() {
    let t0 = base();
    let mut s = past_the_first_page(t0);
    let evicted = Recovery {
        recovered: false,
        ..recovery(9, Vec::new())
    };
    let (frames, then) = written(s.handle_recovered(Ok(evicted)));
    assert!(frames.is_empty());
    assert_eq!(
        then.as_ref().and_then(code),
        Some(CloseCode::InsufficientState)
    );
    // A page the owner ends before the top it named is not trusted either.
    let mut s = past_the_first_page(t0);
    let (frames, then) = written(s.handle_recovered(Ok(page(9, 4..=5, false))));
    assert_eq!(frames.len(), 2, "what it got is written");
    assert_eq!(
        then.as_ref().and_then(code),
        Some(CloseCode::InsufficientState)
    );
    // A page that fails: try again later.
    let mut s = past_the_first_page(t0);
    let (_, then) = written(s.handle_recovered(Err(HistoryError::Timeout)));
    assert_eq!(then.as_ref().and_then(code), Some(CloseCode::TryAgainLater));
}

/// A session recovering "a" from offset 1 whose first page (2 and 3 of 9) is written
/// and whose second is asked.
fn past_the_first_page(t0: Instant) -> SessionState {
    let mut s = SessionState::new(t0, None, Tracks::default());
    s.recovering("a");
    s.ask("a".into(), Some(pos(1)), None);
    s.poll_recovery();
    let (_, then) = written(s.handle_recovered(Ok(page(9, 2..=3, true))));
    assert!(then.is_none());
    assert_eq!(s.poll_recovery(), Some(("a".into(), Some(pos(3)))));
    s
}

fn pos(offset: u64) -> Position {
    Position { epoch: 3, offset }
}

#[test]
fn leaving_a_group_mid_recovery_writes_nothing_more_of_it() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    s.recovering("a");
    s.ask("a".into(), Some(pos(1)), None);
    s.ask("a".into(), Some(pos(1)), None);
    s.ask("b".into(), None, None);
    s.poll_recovery();
    written(s.handle_recovered(Ok(page(9, 2..=3, true))));
    assert_eq!(s.poll_recovery(), Some(("a".into(), Some(pos(3)))));
    s.forget("a");
    let (frames, then) = written(s.handle_recovered(Ok(page(9, 4..=5, true))));
    assert!(frames.is_empty() && then.is_none(), "{frames:?}");
    assert_eq!(
        s.poll_recovery(),
        Some(("b".into(), None)),
        "the other group's ask goes on; the second of the left group is gone"
    );
}

#[test]
fn a_takeover_between_pages_continues_in_the_new_epoch_without_a_gap() {
    let t0 = base();
    let mut s = SessionState::new(t0, None, Tracks::default());
    s.recovering("a");
    s.ask("a".into(), Some(pos(1)), None);
    s.poll_recovery();
    written(s.handle_recovered(Ok(page(5, 2..=3, true))));
    s.poll_recovery();
    // The new owner continues the offsets in epoch 7; the live message after the top
    // is of epoch 7 too.
    let mut batch = vec![positioned("a", 7, 6)];
    assert!(s.route_batch(&mut batch).expect("held").is_empty());
    let mut later = page(5, 4..=5, false);
    for e in &mut later.entries {
        e.position.epoch = 7;
    }
    later.epoch = 7;
    let (frames, then) = written(s.handle_recovered(Ok(later)));
    assert!(then.is_none(), "{then:?}");
    assert_eq!(frames.len(), 3);
    assert_eq!(frames[2], "a@6");
}
