use super::*;

const AUTH_TIMEOUT: Duration = Duration::from_secs(10);

fn bounds(idle: Option<Duration>) -> Bounds {
    Bounds {
        limits: Limits {
            max_bulk_len: MIN_BULK,
            max_frame_len: 1024 * 1024,
            ..Limits::default()
        },
        auth_timeout: AUTH_TIMEOUT,
        idle_timeout: idle,
    }
}

fn connection(now: Instant, authenticated: bool) -> (Connection, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let conn = Connection::new(now, authenticated, bounds(None), metrics.clone());
    (conn, metrics)
}

/// A command as redis-cli sends it (an array of bulks).
fn command(args: &[&str]) -> BytesMut {
    let mut out = Vec::new();
    Frame::Array(
        args.iter()
            .map(|a| Frame::Bulk(Bytes::copy_from_slice(a.as_bytes())))
            .collect(),
    )
    .encode(Version::Resp2, &mut out);
    BytesMut::from(&out[..])
}

fn written(conn: &mut Connection) -> String {
    let text = String::from_utf8_lossy(conn.transmit().unwrap_or_default()).into_owned();
    conn.sent();
    text
}

fn names(args: &[Bytes]) -> Vec<&[u8]> {
    args.iter().map(|a| &a[..]).collect()
}

const OPEN: Auth = Auth {
    authenticated: true,
    failures: 0,
};
const LOCKED: Auth = Auth {
    authenticated: false,
    failures: 0,
};

#[test]
fn pipelined_commands_come_out_in_order_and_a_partial_one_waits_for_its_bytes() {
    let now = Instant::now();
    let (mut conn, metrics) = connection(now, true);
    let mut input = command(&["PING"]);
    input.extend_from_slice(b"\r\n"); // an empty inline line: ignored
    input.extend_from_slice(&command(&["PUBLISH", "user_1", "hello"]));
    let whole = command(&["ECHO", "x"]);
    input.extend_from_slice(&whole[..5]);
    let Poll::Command(first) = conn.poll_command(&mut input, Version::Resp2) else {
        panic!("a command");
    };
    assert_eq!(names(&first), [&b"PING"[..]]);
    let Poll::Command(second) = conn.poll_command(&mut input, Version::Resp2) else {
        panic!("a command");
    };
    assert_eq!(names(&second), [&b"PUBLISH"[..], b"user_1", b"hello"]);
    assert_eq!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::NeedInput
    );
    input.extend_from_slice(&whole[5..]);
    assert!(matches!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::Command(_)
    ));
    assert_eq!(
        metrics.resp_commands.get(),
        4,
        "the empty line counts as read"
    );
    assert!(conn.transmit().is_none() && conn.closing().is_none());
}

#[test]
fn a_malformed_stream_is_answered_and_closed_and_nothing_after_it_runs() {
    let now = Instant::now();
    let (mut conn, metrics) = connection(now, true);
    let mut input = BytesMut::from(&b"*1\r\n$x\r\n"[..]);
    input.extend_from_slice(&command(&["PING"]));
    assert_eq!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::Close(Close::Linger)
    );
    assert!(written(&mut conn).starts_with("-ERR Protocol error"));
    assert_eq!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::NeedInput
    );
    assert_eq!(metrics.resp_protocol_errors.get(), 1);
    // A frame that is not a command (a bare integer) is refused the same way.
    let (mut conn, metrics) = connection(now, true);
    let mut input = BytesMut::from(&b":1\r\n"[..]);
    assert_eq!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::Close(Close::Linger)
    );
    assert_eq!(
        (
            metrics.resp_protocol_errors.get(),
            metrics.resp_errors.get()
        ),
        (1, 1)
    );
}

#[test]
fn before_auth_commands_are_small_and_after_it_as_large_as_the_node_allows() {
    let now = Instant::now();
    let (mut conn, _) = connection(now, false);
    let many: Vec<String> = (0..=PRE_AUTH_MAX_ARGS).map(|i| i.to_string()).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let mut input = command(&many);
    assert_eq!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::Close(Close::Linger),
        "more than {PRE_AUTH_MAX_ARGS} arguments before AUTH"
    );

    let (mut conn, _) = connection(now, false);
    let mut input = command(&["AUTH", "secret"]);
    assert!(matches!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::Command(_)
    ));
    let after = conn.handle_reply(now, &Frame::ok(), Next::Continue, OPEN, Version::Resp2);
    assert_eq!(
        after,
        After {
            authenticated: true,
            failed: false
        },
        "its place among the unauthenticated is given back"
    );
    assert_eq!(written(&mut conn), "+OK\r\n");
    let mut input = command(&many);
    assert!(
        matches!(conn.poll_command(&mut input, Version::Resp2), Poll::Command(a) if a.len() == many.len())
    );
}

#[test]
fn an_unauthenticated_connection_is_closed_at_its_auth_deadline_and_reset_starts_a_new_one() {
    let now = Instant::now();
    let (mut conn, metrics) = connection(now, false);
    assert_eq!(conn.poll_timeout(), Some(now + AUTH_TIMEOUT));
    conn.handle_timeout(
        now + AUTH_TIMEOUT - Duration::from_millis(1),
        Version::Resp2,
    );
    assert!(conn.closing().is_none(), "not yet");
    conn.handle_timeout(now + AUTH_TIMEOUT, Version::Resp2);
    assert_eq!(conn.closing(), Some(Close::Now));
    assert_eq!(
        written(&mut conn),
        "-ERR authentication timeout: send AUTH first\r\n"
    );
    assert_eq!(metrics.resp_auth_failures.get(), 1);

    // Authenticated, no idle timeout: no timer. RESET on a password node: a new
    // deadline from then, and the pre-AUTH bounds again.
    let (mut conn, _) = connection(now, false);
    conn.handle_reply(now, &Frame::ok(), Next::Continue, OPEN, Version::Resp2);
    assert_eq!(conn.poll_timeout(), None);
    let later = now + Duration::from_secs(60);
    let after = conn.handle_reply(
        later,
        &Frame::Simple("RESET".into()),
        Next::Continue,
        LOCKED,
        Version::Resp2,
    );
    assert_eq!(after, After::default());
    assert_eq!(conn.poll_timeout(), Some(later + AUTH_TIMEOUT));
    let many: Vec<&str> = ["x"; PRE_AUTH_MAX_ARGS + 1].to_vec();
    let mut input = command(&many);
    assert_eq!(
        conn.poll_command(&mut input, Version::Resp2),
        Poll::Close(Close::Linger)
    );
}

#[test]
fn a_silent_authenticated_connection_is_closed_at_its_idle_timeout_counted_from_when_it_is_read_again()
 {
    let now = Instant::now();
    let idle = Duration::from_secs(30);
    let mut conn = Connection::new(now, true, bounds(Some(idle)), Arc::new(Metrics::default()));
    assert_eq!(conn.poll_timeout(), Some(now + idle));
    // A read at 20 s whose command took 15 s (a history publish retrying): silence
    // counts from when the connection is read again.
    let read = now + Duration::from_secs(35);
    conn.reading(read);
    conn.handle_timeout(now + idle, Version::Resp2);
    assert!(conn.closing().is_none(), "busy, not silent");
    conn.handle_timeout(read + idle, Version::Resp2);
    assert_eq!(conn.closing(), Some(Close::Now));
    assert!(conn.transmit().is_none(), "closed without a word");
}

#[test]
fn failed_auths_ask_for_the_throttle_and_the_tenth_closes_the_connection() {
    let now = Instant::now();
    let (mut conn, _) = connection(now, false);
    let refused = Frame::Error("WRONGPASS invalid username-password pair".into());
    for failures in 1..MAX_AUTH_FAILURES {
        let auth = Auth {
            authenticated: false,
            failures,
        };
        let after = conn.handle_reply(now, &refused, Next::Continue, auth, Version::Resp2);
        assert!(after.failed && !after.authenticated);
        conn.throttle(Duration::from_millis(u64::from(failures)));
        assert!(conn.closing().is_none(), "after {failures}");
    }
    assert_eq!(
        conn.take_wait(),
        Duration::from_millis(9),
        "the longest wait of the read"
    );
    assert_eq!(conn.take_wait(), Duration::ZERO, "spent");
    // A command that is not AUTH fails nothing.
    let noauth = Frame::Error("NOAUTH Authentication required.".into());
    let same = Auth {
        authenticated: false,
        failures: MAX_AUTH_FAILURES - 1,
    };
    assert!(
        !conn
            .handle_reply(now, &noauth, Next::Continue, same, Version::Resp2)
            .failed
    );
    let last = Auth {
        authenticated: false,
        failures: MAX_AUTH_FAILURES,
    };
    conn.sent();
    assert!(
        conn.handle_reply(now, &refused, Next::Continue, last, Version::Resp2)
            .failed
    );
    assert_eq!(conn.closing(), Some(Close::Linger));
    assert_eq!(
        written(&mut conn),
        "-WRONGPASS invalid username-password pair\r\n-ERR too many failed AUTH attempts; closing\r\n"
    );
}

#[test]
fn quit_closes_after_its_reply_and_eviction_closes_only_the_unauthenticated() {
    let now = Instant::now();
    let (mut conn, _) = connection(now, true);
    conn.handle_reply(now, &Frame::ok(), Next::Close, OPEN, Version::Resp2);
    assert_eq!(conn.closing(), Some(Close::Linger));
    assert_eq!(written(&mut conn), "+OK\r\n");

    let (mut conn, _) = connection(now, true);
    conn.handle_evicted(Version::Resp2);
    assert!(
        conn.closing().is_none(),
        "an authenticated connection keeps its place"
    );

    let (mut conn, metrics) = connection(now, false);
    conn.handle_evicted(Version::Resp3);
    assert_eq!(conn.closing(), Some(Close::Now));
    assert!(written(&mut conn).starts_with("-ERR too many unauthenticated connections"));
    assert_eq!(metrics.resp_auth_failures.get(), 1);
}
