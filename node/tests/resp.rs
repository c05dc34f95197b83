//! One node, real sockets: the Redis-protocol shim, well-formed and not.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use switchboard_client::{Connection, Incoming};
use switchboard_proto::resp::Frame;

fn bulk(s: &str) -> Frame {
    Frame::Bulk(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// Waits until `PUBSUB NUMSUB group` answers `n`.
async fn wait_numsub(node: &TestNode, group: &str, n: i64) {
    wait_for(&format!("{n} connection(s) in {group}"), DEADLINE, || {
        let addr = node.resp_addr();
        async move {
            let mut r = Resp::connect(&addr).await;
            (r.cmd(&[b"PUBSUB", b"NUMSUB", group.as_bytes()]).await
                == Frame::Array(vec![bulk(group), Frame::Integer(n)]))
            .then_some(())
        }
    })
    .await;
}

fn is_error_starting(frame: &Frame, prefix: &str) -> bool {
    matches!(frame, Frame::Error(e) if e.starts_with(prefix))
}

#[tokio::test]
async fn the_connection_commands_answer_as_redis_does() {
    let node = TestNode::start(|_| {}).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert_eq!(r.cmd(&[b"PING"]).await, Frame::Simple("PONG".into()));
    assert_eq!(r.cmd(&[b"ping", b"hi"]).await, bulk("hi"));
    assert_eq!(r.cmd(&[b"ECHO", b"x y"]).await, bulk("x y"));
    assert_eq!(r.cmd(&[b"SELECT", b"0"]).await, Frame::Simple("OK".into()));
    assert!(is_error_starting(
        &r.cmd(&[b"SELECT", b"1"]).await,
        "ERR DB index"
    ));
    assert_eq!(
        r.cmd(&[b"CLIENT", b"SETINFO", b"LIB-NAME", b"redis-py"])
            .await,
        Frame::Simple("OK".into())
    );
    assert_eq!(
        r.cmd(&[b"CLIENT", b"SETNAME", b"pub1"]).await,
        Frame::Simple("OK".into())
    );
    assert_eq!(r.cmd(&[b"CLIENT", b"GETNAME"]).await, bulk("pub1"));
    assert!(matches!(
        r.cmd(&[b"CLIENT", b"ID"]).await,
        Frame::Integer(_)
    ));
    assert!(
        matches!(r.cmd(&[b"INFO"]).await, Frame::Bulk(b) if String::from_utf8_lossy(&b).contains("redis_version:"))
    );
    assert!(matches!(r.cmd(&[b"COMMAND", b"COUNT"]).await, Frame::Integer(n) if n > 5));
    assert!(matches!(
        r.cmd(&[b"COMMAND", b"DOCS"]).await,
        Frame::Array(_)
    ));
    // RESP3 after HELLO 3: a map, and RESP3 types from then on.
    match r.cmd(&[b"HELLO", b"3"]).await {
        Frame::Map(pairs) => {
            assert!(pairs.contains(&(bulk("proto"), Frame::Integer(3))));
            assert!(pairs.contains(&(bulk("server"), bulk("redis"))));
        }
        other => panic!("HELLO 3 answered {other:?}"),
    }
    assert!(matches!(r.cmd(&[b"INFO"]).await, Frame::Verbatim { .. }));
    assert_eq!(r.cmd(&[b"CLIENT", b"GETNAME"]).await, bulk("pub1"));
    assert!(is_error_starting(
        &r.cmd(&[b"HELLO", b"4"]).await,
        "NOPROTO"
    ));
    assert!(is_error_starting(
        &r.cmd(&[b"AUTH", b"pw"]).await,
        "ERR AUTH <password> called without any password configured"
    ));
    assert_eq!(r.cmd(&[b"QUIT"]).await, Frame::Simple("OK".into()));
    assert_eq!(r.reply().await, None, "QUIT closes the connection");
    node.shutdown().await;
}

#[tokio::test]
async fn unknown_commands_and_wrong_arity_get_redis_errors_and_the_connection_stays() {
    let node = TestNode::start(|_| {}).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    let reply = r.cmd(&[b"FROB", b"a", b"b"]).await;
    assert_eq!(
        reply,
        Frame::Error("ERR unknown command 'FROB', with args beginning with: 'a' 'b' ".into())
    );
    assert!(is_error_starting(
        &r.cmd(&[b"PUBLISH", b"only-one"]).await,
        "ERR wrong number of arguments for 'publish'"
    ));
    assert!(is_error_starting(
        &r.cmd(&[b"BZPOPMIN", b"k", b"1"]).await,
        "ERR BZPOPMIN is not supported"
    ));
    // A known command with the wrong arity says so, as Redis does, rather than "unknown".
    assert!(is_error_starting(
        &r.cmd(&[b"ZADD", b"k", b"1"]).await,
        "ERR wrong number of arguments for 'zadd'"
    ));
    assert_eq!(
        r.cmd(&[b"EVALSHA", b"0123456789abcdef", b"0"]).await,
        Frame::Error("NOSCRIPT No matching script. Please use EVAL.".into())
    );
    assert_eq!(
        r.cmd(&[b"SELECT", b"x"]).await,
        Frame::Error("ERR value is not an integer or out of range".into())
    );
    assert_eq!(
        r.cmd(&[b"SELECT", b"1"]).await,
        Frame::Error("ERR DB index is out of range".into())
    );
    assert_eq!(r.cmd(&[b"PING"]).await, Frame::Simple("PONG".into()));
    // Inline commands, as typed into telnet.
    r.send_raw(b"PING\r\n").await;
    assert_eq!(r.reply().await, Some(Frame::Simple("PONG".into())));
    node.shutdown().await;
}

#[tokio::test]
async fn a_malformed_stream_gets_a_protocol_error_and_is_closed() {
    let node = TestNode::start(|_| {}).await;
    for garbage in [
        &b"*2\r\n$4\r\nPING\r\n$x\r\n"[..],
        b"*-5\r\n",
        b"$3\r\nabcdef\r\n",
    ] {
        let mut r = Resp::connect(&node.resp_addr()).await;
        r.send_raw(garbage).await;
        let reply = r.reply().await.expect("an error before the close");
        assert!(
            is_error_starting(&reply, "ERR Protocol error"),
            "{garbage:?} -> {reply:?}"
        );
        assert_eq!(r.reply().await, None, "closed after a protocol error");
    }
    // The node still serves.
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert_eq!(r.cmd(&[b"PING"]).await, Frame::Simple("PONG".into()));
    node.shutdown().await;
}

#[tokio::test]
async fn an_oversized_bulk_is_refused_without_reading_it() {
    let node = TestNode::start(|c| c.max_payload = 64 * 1024).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    // Declares a 1 GiB payload; the server must refuse on the header alone.
    r.send_raw(b"*3\r\n$7\r\nPUBLISH\r\n$1\r\ng\r\n$1073741824\r\n")
        .await;
    let reply = r.reply().await.expect("an error");
    assert!(is_error_starting(&reply, "ERR Protocol error"), "{reply:?}");
    assert_eq!(r.reply().await, None);
    node.shutdown().await;
}

#[tokio::test]
async fn resp_password_requires_auth() {
    let node = TestNode::start(|c| c.credentials.resp_password = Some("s3cret".into())).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert!(is_error_starting(
        &r.cmd(&[b"PUBLISH", b"g", b"x"]).await,
        "NOAUTH"
    ));
    assert!(is_error_starting(
        &r.cmd(&[b"AUTH", b"wrong"]).await,
        "WRONGPASS"
    ));
    assert_eq!(
        r.cmd(&[b"AUTH", b"s3cret"]).await,
        Frame::Simple("OK".into())
    );
    assert_eq!(r.cmd(&[b"PUBLISH", b"g", b"x"]).await, Frame::Integer(0));
    // HELLO with AUTH, as redis-py does with protocol=3 and a password.
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert!(matches!(
        r.cmd(&[b"HELLO", b"3", b"AUTH", b"default", b"s3cret"])
            .await,
        Frame::Map(_)
    ));
    assert_eq!(r.cmd(&[b"PING"]).await, Frame::Simple("PONG".into()));
    assert!(metric(&node.admin_addr(), "switchboard_resp_auth_failures_total").await >= 2);
    node.shutdown().await;
}

#[tokio::test]
async fn pubsub_introspection_sees_the_groups() {
    let node = TestNode::start(|_| {}).await;
    let _a = Connection::connect_url(&node.ws_url(), Some(&token_with_groups(1, &["room_a"])))
        .await
        .unwrap();
    let _b = Connection::connect_url(&node.ws_url(), Some(&token_with_groups(2, &["room_a"])))
        .await
        .unwrap();
    let mut r = Resp::connect(&node.resp_addr()).await;
    wait_numsub(&node, "room_a", 2).await;
    assert_eq!(
        r.cmd(&[b"PUBSUB", b"CHANNELS", b"room_*"]).await,
        Frame::Array(vec![bulk("room_a")])
    );
    match r.cmd(&[b"PUBSUB", b"CHANNELS"]).await {
        Frame::Array(all) => assert_eq!(all.len(), 3, "room_a, user_1, user_2: {all:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.cmd(&[b"PUBSUB", b"NUMPAT"]).await, Frame::Integer(0));
    assert_eq!(
        r.cmd(&[b"SPUBLISH", b"room_a", b"s"]).await,
        Frame::Integer(2)
    );
    node.shutdown().await;
}

/// What channels_redis's core layer sends for `group_send`, byte for byte in shape:
/// ZREMRANGEBYSCORE, ZRANGE, then EVAL of its Lua script with a msgpack event behind
/// 12 random bytes. (The real package is exercised by the Python suite in tests/.)
#[tokio::test]
async fn the_channels_core_layer_protocol_reaches_the_group() {
    let node = TestNode::start(|_| {}).await;
    let mut client = Connection::connect_url(&node.ws_url(), Some(&simplejwt_token(42)))
        .await
        .unwrap();
    let mut r = Resp::connect(&node.resp_addr()).await;
    wait_numsub(&node, "user_42", 1).await;
    assert_eq!(
        r.cmd(&[
            b"ZREMRANGEBYSCORE",
            b"asgi:group:user_42",
            b"0",
            b"1700000000"
        ])
        .await,
        Frame::Integer(0)
    );
    let members = r
        .cmd(&[b"ZRANGE", b"asgi:group:user_42", b"0", b"-1"])
        .await;
    let Frame::Array(members) = members else {
        panic!("{members:?}")
    };
    assert_eq!(members.len(), 1);
    let Frame::Bulk(channel) = &members[0] else {
        panic!()
    };
    let channel = String::from_utf8(channel.to_vec()).unwrap();
    let key = format!("asgi{}", &channel[..=channel.find('!').unwrap()]);
    let mut event = vec![0xAAu8; 12];
    let value = rmpv::Value::Map(vec![
        ("type".into(), "notify".into()),
        ("message".into(), "hello from django".into()),
        (
            "__asgi_channel__".into(),
            rmpv::Value::Array(vec![channel.as_str().into()]),
        ),
    ]);
    rmpv::encode::write_value(&mut event, &value).unwrap();
    let script = b"local over_capacity = 0 ... redis.call('ZADD', KEYS[i], current_time, ARGV[i]) ... return over_capacity";
    let reply = r
        .cmd(&[
            b"EVAL",
            script,
            b"1",
            key.as_bytes(),
            &event,
            b"100",
            b"1700000000.5",
            b"60",
        ])
        .await;
    assert_eq!(reply, Frame::Integer(0));
    match client.recv_timeout(DEADLINE).await.unwrap() {
        Incoming::Text(t) => {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"type": "notify", "message": "hello from django"})
            );
        }
        other => panic!("{other:?}"),
    }
    // A group with nobody in it: ZRANGE is empty, so channels_redis sends nothing more.
    assert_eq!(
        r.cmd(&[b"ZRANGE", b"asgi:group:nobody", b"0", b"-1"]).await,
        Frame::Array(vec![])
    );
    node.shutdown().await;
}

#[tokio::test]
async fn the_channels_pubsub_layer_protocol_reaches_the_group() {
    let node = TestNode::start(|c| c.resp.channels_unwrap = Some("message".into())).await;
    let mut client = Connection::connect_url(&node.ws_url(), Some(&simplejwt_token(42)))
        .await
        .unwrap();
    let mut event = Vec::new();
    rmpv::encode::write_value(
        &mut event,
        &rmpv::Value::Map(vec![
            ("type".into(), "notify".into()),
            ("message".into(), "unwrapped".into()),
        ]),
    )
    .unwrap();
    let mut r = Resp::connect(&node.resp_addr()).await;
    wait_numsub(&node, "user_42", 1).await;
    assert_eq!(
        r.cmd(&[b"PUBLISH", b"asgi__group__user_42", &event]).await,
        Frame::Integer(1)
    );
    assert!(
        matches!(client.recv_timeout(DEADLINE).await.unwrap(), Incoming::Text(t) if t == "\"unwrapped\"")
    );
    node.shutdown().await;
}

#[tokio::test]
async fn multi_exec_queues_and_runs_commands_as_redis_py_pipelines_expect() {
    let node = TestNode::start(|_| {}).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert!(is_error_starting(
        &r.cmd(&[b"EXEC"]).await,
        "ERR EXEC without MULTI"
    ));
    assert_eq!(r.cmd(&[b"MULTI"]).await, Frame::Simple("OK".into()));
    assert!(is_error_starting(
        &r.cmd(&[b"MULTI"]).await,
        "ERR MULTI calls can not be nested"
    ));
    assert_eq!(
        r.cmd(&[b"ZREMRANGEBYSCORE", b"asgi:x", b"0", b"1"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(r.cmd(&[b"PING"]).await, Frame::Simple("QUEUED".into()));
    assert_eq!(
        r.cmd(&[b"EXEC"]).await,
        Frame::Array(vec![Frame::Integer(0), Frame::Simple("PONG".into())])
    );
    assert_eq!(r.cmd(&[b"MULTI"]).await, Frame::Simple("OK".into()));
    assert_eq!(
        r.cmd(&[b"PUBLISH", b"g", b"x"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert_eq!(r.cmd(&[b"DISCARD"]).await, Frame::Simple("OK".into()));
    assert_eq!(r.cmd(&[b"PING"]).await, Frame::Simple("PONG".into()));
    node.shutdown().await;
}

#[tokio::test]
async fn numsub_is_a_flat_array_in_resp3_too() {
    let node = TestNode::start(|_| {}).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert!(matches!(r.cmd(&[b"HELLO", b"3"]).await, Frame::Map(_)));
    assert_eq!(
        r.cmd(&[b"PUBSUB", b"NUMSUB", b"a", b"b"]).await,
        Frame::Array(vec![
            bulk("a"),
            Frame::Integer(0),
            bulk("b"),
            Frame::Integer(0)
        ])
    );
    node.shutdown().await;
}

#[tokio::test]
async fn a_refused_command_inside_multi_aborts_the_transaction() {
    let node = TestNode::start(|_| {}).await;
    let mut r = Resp::connect(&node.resp_addr()).await;
    assert_eq!(r.cmd(&[b"MULTI"]).await, Frame::Simple("OK".into()));
    assert_eq!(
        r.cmd(&[b"PUBLISH", b"g", b"a"]).await,
        Frame::Simple("QUEUED".into())
    );
    assert!(is_error_starting(
        &r.cmd(&[b"FROB", b"x"]).await,
        "ERR unknown command 'FROB'"
    ));
    assert!(is_error_starting(
        &r.cmd(&[b"PUBLISH", b"g"]).await,
        "ERR wrong number of arguments for 'publish'"
    ));
    assert_eq!(
        r.cmd(&[b"EXEC"]).await,
        Frame::Error("EXECABORT Transaction discarded because of previous errors.".into())
    );
    assert_eq!(
        metric(&node.admin_addr(), "switchboard_messages_published_total").await,
        0
    );
    assert!(is_error_starting(
        &r.cmd(&[b"EXEC"]).await,
        "ERR EXEC without MULTI"
    ));
    node.shutdown().await;
}
