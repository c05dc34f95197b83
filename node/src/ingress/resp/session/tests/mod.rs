//! The RESP command layer against a fake publisher: no sockets, no clock.

use std::sync::Arc;

use bytes::Bytes;
use switchboard_proto::resp::{Frame, Version};

mod fake;

use super::{Next, Session, Shim};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::secrets::Secrets;
use fake::FakePublisher;
use switchboard_proto::peer::{ConnAction, ConnTarget};

fn session(configure: impl FnOnce(&mut Config)) -> Session {
    let dir = std::env::temp_dir().join(format!("sb-resp-session-{}", std::process::id()));
    let mut config = Config::for_tests(dir);
    config.credentials.jwt = crate::config::JwtKey::Secret("s".into());
    configure(&mut config);
    let secrets = Secrets::load(&config).expect("secrets");
    let env = Shim::new(&config, Arc::new(Metrics::default()), Arc::new(secrets));
    Session::new(7, Arc::new(env))
}

fn args(words: &[&[u8]]) -> Vec<Bytes> {
    words.iter().map(|w| Bytes::copy_from_slice(w)).collect()
}

/// Runs one command and returns its reply (asserting the connection stays open).
async fn run(s: &mut Session, publisher: &FakePublisher, words: &[&[u8]]) -> Frame {
    let (reply, next) = s.handle(args(words), publisher).await;
    assert_eq!(next, Next::Continue, "{words:?} closed the connection");
    reply
}

fn error_starts(frame: &Frame, prefix: &str) -> bool {
    matches!(frame, Frame::Error(e) if e.starts_with(prefix))
}

#[tokio::test]
async fn publish_answers_the_routed_count() {
    let p = FakePublisher::with(&[("user_1", 3)]);
    let mut s = session(|_| {});
    assert_eq!(
        run(&mut s, &p, &[b"PUBLISH", b"user_1", b"hi"]).await,
        Frame::Integer(3)
    );
    assert_eq!(
        run(&mut s, &p, &[b"spublish", b"none", b"x"]).await,
        Frame::Integer(0)
    );
    assert_eq!(
        p.published(),
        vec![
            ("user_1".to_string(), Bytes::from("hi")),
            ("none".to_string(), Bytes::from("x"))
        ]
    );
    assert!(error_starts(
        &run(&mut s, &p, &[b"PUBLISH", b"user_1"]).await,
        "ERR wrong number of arguments for 'publish'"
    ));
}

#[tokio::test]
async fn a_payload_over_the_limit_is_refused_and_not_published() {
    let p = FakePublisher::default();
    let mut s = session(|c| c.max_payload = 4);
    assert!(error_starts(
        &run(&mut s, &p, &[b"PUBLISH", b"g", b"12345"]).await,
        "ERR payload of 5 bytes exceeds --max-payload 4"
    ));
    assert!(p.published().is_empty());
}

#[tokio::test]
async fn multi_queues_and_exec_runs_in_order() {
    let p = FakePublisher::with(&[("a", 1), ("b", 2)]);
    let mut s = session(|_| {});
    assert_eq!(run(&mut s, &p, &[b"MULTI"]).await, Frame::ok());
    assert_eq!(
        run(&mut s, &p, &[b"PUBLISH", b"a", b"1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(
        run(&mut s, &p, &[b"PUBLISH", b"b", b"2"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert!(p.published().is_empty(), "nothing runs before EXEC");
    assert_eq!(
        run(&mut s, &p, &[b"EXEC"]).await,
        Frame::Array(vec![Frame::Integer(1), Frame::Integer(2)])
    );
    assert_eq!(p.published().len(), 2);
    assert!(error_starts(
        &run(&mut s, &p, &[b"EXEC"]).await,
        "ERR EXEC without MULTI"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"DISCARD"]).await,
        "ERR DISCARD without MULTI"
    ));
}

#[tokio::test]
async fn a_refused_command_inside_multi_aborts_exec() {
    let p = FakePublisher::default();
    let mut s = session(|_| {});
    run(&mut s, &p, &[b"MULTI"]).await;
    run(&mut s, &p, &[b"PUBLISH", b"a", b"1"]).await;
    assert!(error_starts(
        &run(&mut s, &p, &[b"NOPE"]).await,
        "ERR unknown command 'NOPE'"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"PUBLISH", b"a"]).await,
        "ERR wrong number of arguments"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"MULTI"]).await,
        "ERR MULTI calls can not be nested"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"EXEC"]).await,
        "EXECABORT"
    ));
    assert!(
        p.published().is_empty(),
        "the aborted transaction ran nothing"
    );
    // The next transaction starts clean.
    run(&mut s, &p, &[b"MULTI"]).await;
    run(&mut s, &p, &[b"PUBLISH", b"a", b"1"]).await;
    assert_eq!(
        run(&mut s, &p, &[b"EXEC"]).await,
        Frame::Array(vec![Frame::Integer(0)])
    );
}

#[tokio::test]
async fn discard_drops_the_queue() {
    let p = FakePublisher::default();
    let mut s = session(|_| {});
    run(&mut s, &p, &[b"MULTI"]).await;
    run(&mut s, &p, &[b"PUBLISH", b"a", b"1"]).await;
    assert_eq!(run(&mut s, &p, &[b"DISCARD"]).await, Frame::ok());
    assert!(p.published().is_empty());
}

#[tokio::test]
async fn a_password_shim_answers_noauth_until_auth() {
    let p = FakePublisher::default();
    let mut s = session(|c| c.credentials.resp_password = Some("pw".into()));
    assert!(error_starts(
        &run(&mut s, &p, &[b"PUBLISH", b"a", b"1"]).await,
        "NOAUTH"
    ));
    assert!(
        error_starts(&run(&mut s, &p, &[b"NOPE"]).await, "NOAUTH"),
        "before the unknown-command check"
    );
    assert!(error_starts(
        &run(&mut s, &p, &[b"AUTH", b"wrong"]).await,
        "WRONGPASS"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"HELLO", b"3"]).await,
        "NOAUTH HELLO"
    ));
    assert_eq!(
        run(&mut s, &p, &[b"AUTH", b"default", b"pw"]).await,
        Frame::ok()
    );
    assert_eq!(
        run(&mut s, &p, &[b"PUBLISH", b"a", b"1"]).await,
        Frame::Integer(0)
    );
    assert_eq!(s.env.metrics.resp_auth_failures.get(), 4);
    assert_eq!(s.auth_failures(), 1, "one wrong password");
    // RESET forgets the authentication.
    assert_eq!(
        run(&mut s, &p, &[b"RESET"]).await,
        Frame::Simple("RESET".into())
    );
    assert!(error_starts(&run(&mut s, &p, &[b"PING"]).await, "NOAUTH"));
    let (reply, next) = s.handle(args(&[b"QUIT"]), &p).await;
    assert_eq!(
        (reply, next),
        (Frame::ok(), Next::Close),
        "QUIT works unauthenticated"
    );
}

#[tokio::test]
async fn hello_3_switches_to_resp3_and_can_authenticate() {
    let p = FakePublisher::default();
    let mut s = session(|c| c.credentials.resp_password = Some("pw".into()));
    match run(
        &mut s,
        &p,
        &[
            b"HELLO", b"3", b"AUTH", b"default", b"pw", b"SETNAME", b"me",
        ],
    )
    .await
    {
        Frame::Map(pairs) => {
            assert!(pairs.contains(&(super::cmd::bulk("proto"), Frame::Integer(3))));
            assert!(pairs.contains(&(super::cmd::bulk("id"), Frame::Integer(7))));
        }
        other => panic!("HELLO 3 answered {other:?}"),
    }
    assert_eq!(s.version(), Version::Resp3);
    assert_eq!(
        run(&mut s, &p, &[b"CLIENT", b"GETNAME"]).await,
        Frame::Bulk(Bytes::from("me"))
    );
    assert!(error_starts(
        &run(&mut s, &p, &[b"HELLO", b"4"]).await,
        "NOPROTO"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"HELLO", b"x"]).await,
        "ERR Protocol version"
    ));
    assert_eq!(
        s.version(),
        Version::Resp3,
        "a refused HELLO changes nothing"
    );
}

fn msgpack(pairs: Vec<(&str, rmpv::Value)>) -> Vec<u8> {
    let map = rmpv::Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect());
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &map).expect("encodes");
    out
}

#[tokio::test]
async fn channels_redis_core_group_send_maps_onto_a_publish() {
    const SCRIPT: &[u8] =
        b"local over_capacity = 0 ... redis.call('ZADD', KEYS[i], t, ARGV[i]) ...";
    let p = FakePublisher::with(&[("user_42", 2)]);
    let mut s = session(|_| {});
    // ZRANGE of a group with subscribers names the synthetic channel; others are empty.
    assert_eq!(
        run(&mut s, &p, &[b"ZRANGE", b"asgi:group:user_42", b"0", b"-1"]).await,
        Frame::Array(vec![Frame::Bulk(Bytes::from("switchboard.group!user_42"))])
    );
    assert_eq!(
        run(&mut s, &p, &[b"ZRANGE", b"asgi:group:nobody", b"0", b"-1"]).await,
        Frame::Array(vec![])
    );
    // The EVAL that follows: 12 random bytes + msgpack naming the synthetic channel.
    let mut message = vec![9u8; 12];
    message.extend(msgpack(vec![
        ("type", "notify".into()),
        ("message", "hello".into()),
        (
            "__asgi_channel__",
            rmpv::Value::Array(vec!["switchboard.group!user_42".into()]),
        ),
    ]));
    let reply = run(
        &mut s,
        &p,
        &[
            b"EVAL",
            SCRIPT,
            b"1",
            b"asgi:switchboard.group",
            &message,
            b"100",
            b"1700000000",
            b"60",
        ],
    )
    .await;
    assert_eq!(reply, Frame::Integer(0));
    let published = p.published();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "user_42");
    let json: serde_json::Value = serde_json::from_slice(&published[0].1).expect("JSON");
    assert_eq!(
        json,
        serde_json::json!({"type": "notify", "message": "hello"})
    );
}

#[tokio::test]
async fn an_absurd_numkeys_is_an_error_not_a_panic() {
    let p = FakePublisher::default();
    let mut s = session(|_| {});
    for numkeys in [&b"99999999999999999"[..], b"4", b"18446744073709551615"] {
        let reply = run(
            &mut s,
            &p,
            &[b"EVAL", b"over_capacity ZADD", numkeys, b"k", b"m"],
        )
        .await;
        assert!(
            error_starts(&reply, "ERR Number of keys") || error_starts(&reply, "ERR value is not"),
            "{reply:?}"
        );
    }
    assert!(error_starts(
        &run(&mut s, &p, &[b"EVAL", b"return 1", b"0"]).await,
        "ERR EVAL of this script is not supported"
    ));
    assert!(p.published().is_empty());
}

#[tokio::test]
async fn the_pubsub_layer_channel_maps_to_its_group_and_the_event_to_json() {
    let p = FakePublisher::with(&[("room", 1)]);
    let mut s = session(|c| c.resp.channels_unwrap = Some("message".into()));
    let event = msgpack(vec![("type", "chat".into()), ("message", "hi".into())]);
    assert_eq!(
        run(&mut s, &p, &[b"PUBLISH", b"asgi__group__room", &event]).await,
        Frame::Integer(1)
    );
    // json.dumps(event["message"]): the string keeps its quotes.
    assert_eq!(
        p.published(),
        vec![("room".to_string(), Bytes::from(r#""hi""#))]
    );
}

impl FakePublisher {
    fn acts(&self) -> Vec<(ConnTarget, ConnAction)> {
        std::mem::take(&mut *self.acts.lock().expect("not poisoned"))
    }
}

#[tokio::test]
async fn channels_redis_group_add_discard_and_send_reach_a_connections_channel() {
    let p = FakePublisher::default();
    let mut s = session(|c| c.resp.channels_unwrap = Some("message".into()));
    let conn = || ConnTarget::Connection("1-a-2".into());
    // group_add(g, channel) is ZADD + EXPIRE; group_discard is ZREM.
    assert_eq!(
        run(
            &mut s,
            &p,
            &[
                b"ZADD",
                b"asgi:group:room",
                b"1700000000.5",
                b"switchboard.conn!1-a-2"
            ]
        )
        .await,
        Frame::Integer(1)
    );
    assert_eq!(
        p.acts(),
        vec![(conn(), ConnAction::Subscribe("room".into()))]
    );
    assert_eq!(
        run(&mut s, &p, &[b"EXPIRE", b"asgi:group:room", b"86400"]).await,
        Frame::Integer(1)
    );
    assert_eq!(
        run(
            &mut s,
            &p,
            &[
                b"ZREM",
                b"asgi:group:room",
                b"switchboard.conn!1-a-2",
                b"other!x"
            ]
        )
        .await,
        Frame::Integer(1)
    );
    assert_eq!(
        p.acts(),
        vec![(conn(), ConnAction::Unsubscribe("room".into()))]
    );
    // A channel that is not a connection's cannot join a group: said, not a silent OK.
    assert!(error_starts(
        &run(
            &mut s,
            &p,
            &[b"ZADD", b"asgi:group:room", b"1", b"specific.abc!def"]
        )
        .await,
        "ERR group_add of channel 'specific.abc!def' to 'room' cannot be honoured"
    ));
    // send(channel, event): ZADD of the event (12 random bytes, then msgpack naming the
    // channel) into the channel's key.
    let mut message = vec![9u8; 12];
    message.extend(msgpack(vec![
        ("type", "send_notification".into()),
        ("message", "hi".into()),
        ("__asgi_channel__", "switchboard.conn!1-a-2".into()),
    ]));
    assert_eq!(
        run(
            &mut s,
            &p,
            &[b"ZADD", b"asgiswitchboard.conn!", b"1700000000.5", &message]
        )
        .await,
        Frame::Integer(1)
    );
    let sent = ConnAction::Send {
        payload: Bytes::from_static(br#""hi""#),
        text: true,
    };
    assert_eq!(p.acts(), vec![(conn(), sent.clone())]);
    let mut elsewhere = vec![9u8; 12];
    elsewhere.extend(msgpack(vec![
        ("type", "x".into()),
        ("__asgi_channel__", "specific.abc!def".into()),
    ]));
    assert!(error_starts(
        &run(
            &mut s,
            &p,
            &[b"ZADD", b"asgispecific.abc!", b"1", &elsewhere]
        )
        .await,
        "ERR channel_layer.send to 'specific.abc!def' cannot be honoured"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"ZADD", b"somekey", b"1", b"m"]).await,
        "ERR ZADD is supported only on channels_redis's keys"
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"ZADD", b"asgi:group:room", b"1", b"a", b"2"]).await,
        "ERR syntax error"
    ));
    // The pub/sub layer's send is a PUBLISH to the channel itself.
    let event = msgpack(vec![("type", "x".into()), ("message", "hi".into())]);
    assert_eq!(
        run(&mut s, &p, &[b"PUBLISH", b"switchboard.conn!1-a-2", &event]).await,
        Frame::Integer(1)
    );
    assert_eq!(p.acts(), vec![(conn(), sent)]);
    assert!(p.published().is_empty(), "nothing went to a group");
}

#[tokio::test]
async fn pubsub_introspection_answers_from_the_publisher() {
    let p = FakePublisher::with(&[("a", 2), ("b", 1)]);
    let mut s = session(|_| {});
    assert_eq!(
        run(&mut s, &p, &[b"PUBSUB", b"NUMSUB", b"a", b"zz"]).await,
        Frame::Array(vec![
            Frame::Bulk(Bytes::from("a")),
            Frame::Integer(2),
            Frame::Bulk(Bytes::from("zz")),
            Frame::Integer(0)
        ])
    );
    assert_eq!(
        run(&mut s, &p, &[b"PUBSUB", b"CHANNELS"]).await,
        Frame::Array(vec![
            Frame::Bulk(Bytes::from("a")),
            Frame::Bulk(Bytes::from("b"))
        ])
    );
    assert_eq!(
        run(&mut s, &p, &[b"PUBSUB", b"NUMPAT"]).await,
        Frame::Integer(0)
    );
    let long = vec![b'*'; 600];
    assert!(error_starts(
        &run(&mut s, &p, &[b"PUBSUB", b"CHANNELS", &long]).await,
        "ERR pattern longer than 512 bytes"
    ));
    assert!(matches!(
        run(&mut s, &p, &[b"COMMAND", b"COUNT"]).await,
        Frame::Integer(n) if n as usize == crate::ingress::resp::command::TABLE.len()
    ));
    assert!(matches!(
        run(&mut s, &p, &[b"INFO"]).await,
        Frame::Verbatim { .. }
    ));
    assert!(error_starts(
        &run(&mut s, &p, &[b"SUBSCRIBE", b"a"]).await,
        "ERR SUBSCRIBE is not supported"
    ));
}

#[tokio::test]
async fn a_multi_queue_is_bounded_in_bytes() {
    let p = FakePublisher::default();
    let mut s = session(|_| {});
    let big = vec![b'x'; 1024 * 1024];
    run(&mut s, &p, &[b"MULTI"]).await;
    let mut refused = None;
    for i in 0..40 {
        let reply = run(&mut s, &p, &[b"PUBLISH", b"g", &big]).await;
        if reply != Frame::Simple("QUEUED".into()) {
            refused = Some((i, reply));
            break;
        }
    }
    let (at, reply) = refused.expect("the queue is bounded");
    assert_eq!(at, 15, "16 MiB hold 15 one-MiB publishes and their names");
    assert!(error_starts(&reply, "ERR more than"));
    assert!(error_starts(
        &run(&mut s, &p, &[b"EXEC"]).await,
        "ERR EXEC without MULTI"
    ));
    assert!(p.published().is_empty());
}

#[tokio::test]
async fn a_history_publish_the_owner_could_not_take_is_an_error_to_retry() {
    let p = FakePublisher::default();
    let mut s = session(|_| {});
    assert!(error_starts(
        &run(&mut s, &p, &[b"PUBLISH", b"refused", b"x"]).await,
        "ERR history: the owner of this group's history is cut off"
    ));
}
