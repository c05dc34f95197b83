//! Django Channels, unchanged: what `channels_redis` sends, mapped onto groups and
//! connections.
//!
//! - `channels_redis.pubsub.RedisPubSubChannelLayer.group_send(g, event)` is
//!   `PUBLISH <prefix>__group__<g> <msgpack event>`: [`from_pubsub_layer`] maps the
//!   channel back to the group and the event to JSON. Its `send(channel, event)` is
//!   `PUBLISH <channel> <msgpack event>`: to a connection's channel
//!   (`switchboard.conn!<id>`), it reaches that connection alone, wherever it is.
//! - `channels_redis.core.RedisChannelLayer.group_send(g, event)` reads the group's
//!   members with `ZRANGE <prefix>:group:<g> 0 -1` and, if there are any, `EVAL`s a Lua
//!   script that `ZADD`s the event (12 random bytes + msgpack, with `__asgi_channel__`
//!   naming the target channels) into each channel's sorted set. [`run`] answers that
//!   `ZRANGE` with one synthetic channel, `switchboard.group!<g>`, when the group has
//!   subscribers anywhere, and turns the `EVAL` into a publish to every group named in
//!   `__asgi_channel__`.
//! - Its `group_add(g, channel)` is `ZADD <prefix>:group:<g> <time> <channel>` and
//!   `group_discard` a `ZREM`: for a connection's channel, the connection joins or leaves
//!   the group, on whichever node holds it. Its `send(channel, event)` is a `ZADD` of the
//!   event into `<prefix><channel up to !>`: for a connection's channel, the connection
//!   receives the event. A channel that is not a connection's cannot be in a group here,
//!   nor receive: those calls answer an error that says so, never a silent OK.
//! - The other commands of the layer answer as an empty Redis would.
//!
//! An event is delivered as Python's `json.dumps(event)` would write it (`pyjson`), or,
//! with `--channels-unwrap KEY`, as `json.dumps(event[KEY])`: the bytes a consumer's
//! `send_json(event["message"])` sent.

use bytes::Bytes;
use switchboard_proto::peer::{ConnAction, ConnTarget, connection_of_channel};
use switchboard_proto::resp::Frame;

use super::command::{Command, Name, arity};
use super::pyjson;
use crate::config::RespSettings;
use crate::router::Publish;

/// The synthetic channel-name prefix answered to `ZRANGE`; the part up to `!` is what
/// channels_redis uses as the Redis key, so every group shares one key per `EVAL`.
pub const SYNTHETIC_CHANNEL: &str = "switchboard.group!";
/// channels_redis's default `random_prefix_length` for the core layer.
const CORE_RANDOM_PREFIX: usize = 12;

/// Where a `PUBLISH` goes.
#[derive(Debug, PartialEq, Eq)]
pub enum Published<'a> {
    /// To a group (a plain channel name, or the pub/sub layer's `<prefix>__group__<g>`).
    Group(&'a str, Bytes),
    /// To one connection (the pub/sub layer's `send` to a connection's channel).
    Connection(&'a str, Bytes),
}

/// For `PUBLISH channel payload`: the group (or connection) and the payload to deliver.
/// The pub/sub layer's events (msgpack dicts) become their JSON; any other payload goes
/// as it is.
pub fn from_pubsub_layer<'a>(
    settings: &RespSettings,
    channel: &'a str,
    payload: Bytes,
) -> Published<'a> {
    let rendered = |payload: Bytes| {
        decode_event(&payload, &[0])
            .map(|event| render_event(settings, &event))
            .unwrap_or(payload)
    };
    if let Some(connection) = connection_of_channel(channel) {
        return Published::Connection(connection, rendered(payload));
    }
    let prefix = settings.channels_prefix.as_str();
    let group = channel
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("__group__"));
    match group {
        Some(group) if !group.is_empty() => Published::Group(group, rendered(payload)),
        _ => Published::Group(channel, payload),
    }
}

/// Answers the commands of `channels_redis.core.RedisChannelLayer` (every command of the
/// table that is not the shim's own; arity already checked).
pub async fn run(settings: &RespSettings, command: &Command, publish: &dyn Publish) -> Frame {
    let args = &command.args;
    let group_key = format!("{}:group:", settings.channels_prefix);
    match command.name() {
        Name::Zrange => {
            let [_, key, ..] = args.as_slice() else {
                return arity("zrange");
            };
            let key = String::from_utf8_lossy(key);
            match key.strip_prefix(group_key.as_str()) {
                Some(group) if publish.subscribers(group).await > 0 => {
                    Frame::Array(vec![Frame::Bulk(Bytes::from(format!(
                        "{SYNTHETIC_CHANNEL}{group}"
                    )))])
                }
                _ => Frame::Array(vec![]),
            }
        }
        Name::Zadd => zadd(settings, args, publish).await,
        Name::Zrem => zrem(&group_key, args, publish).await,
        Name::Eval => eval(settings, args, publish).await,
        // No script is ever loaded here (SCRIPT LOAD is not supported): as Redis answers
        // for a script it does not have.
        Name::Evalsha => Frame::Error("NOSCRIPT No matching script. Please use EVAL.".into()),
        // Channel queues live in WebSocket connections here, not in sorted sets: these
        // answer as an empty Redis would.
        Name::Zremrangebyscore
        | Name::Zcount
        | Name::Del
        | Name::Unlink
        | Name::Dbsize
        | Name::Exists => Frame::Integer(0),
        Name::Expire => Frame::Integer(1),
        Name::Keys | Name::Zpopmin => Frame::Array(vec![]),
        Name::Bzpopmin
        | Name::Subscribe
        | Name::Unsubscribe
        | Name::Psubscribe
        | Name::Ssubscribe => Frame::Error(format!(
            "ERR {} is not supported: Switchboard is a publish-only Redis shim; \
             consumers receive over WebSocket (a pub/sub layer's group_add from outside a \
             consumer cannot be honoured: use the core layer, or POST /v1/subscribe)",
            command.spec.text.to_ascii_uppercase()
        )),
        Name::Flushdb | Name::Flushall => Frame::ok(),
        _ => Frame::Error(format!(
            "ERR {} is not a channels_redis command",
            command.spec.text
        )),
    }
}

/// `ZADD key [options] score member ...`: the members, options skipped.
fn zadd_members(args: &[Bytes]) -> Result<Vec<&Bytes>, Frame> {
    let mut rest = args.get(2..).unwrap_or_default();
    while let Some(first) = rest.first() {
        let option = String::from_utf8_lossy(first).to_ascii_uppercase();
        if !matches!(option.as_str(), "NX" | "XX" | "GT" | "LT" | "CH" | "INCR") {
            break;
        }
        rest = &rest[1..];
    }
    if rest.is_empty() || rest.len() % 2 != 0 {
        return Err(Frame::Error("ERR syntax error".into()));
    }
    Ok(rest.chunks(2).map(|pair| &pair[1]).collect())
}

/// `ZADD`: channels_redis's `group_add` (a group's key: each member a channel joins the
/// group) or `send` (a channel's key: each member an event to deliver). Answers the
/// number of connections reached.
async fn zadd(settings: &RespSettings, args: &[Bytes], publish: &dyn Publish) -> Frame {
    let members = match zadd_members(args) {
        Ok(members) => members,
        Err(e) => return e,
    };
    let key = String::from_utf8_lossy(&args[1]);
    let prefix = settings.channels_prefix.as_str();
    let Some(rest) = key.strip_prefix(prefix) else {
        return Frame::Error(format!(
            "ERR ZADD is supported only on channels_redis's keys (prefix '{prefix}'): \
             Switchboard is not a general Redis"
        ));
    };
    if let Some(group) = rest.strip_prefix(":group:") {
        let mut reached = 0;
        for member in members {
            let channel = String::from_utf8_lossy(member);
            let Some(connection) = connection_of_channel(&channel) else {
                return Frame::Error(format!(
                    "ERR group_add of channel '{channel}' to '{group}' cannot be honoured: \
                     Switchboard groups hold WebSocket connections, whose channel names \
                     start with switchboard.conn! (a bridged consumer's self.channel_name)"
                ));
            };
            let target = ConnTarget::Connection(connection.to_owned());
            match publish
                .act(target, ConnAction::Subscribe(group.to_owned()))
                .await
            {
                Ok(acted) => reached += i64::from(acted.reached),
                Err(e) => {
                    return Frame::Error(format!(
                        "ERR group_add of '{channel}' to '{group}' failed: {e}"
                    ));
                }
            }
        }
        return Frame::Integer(reached);
    }
    let mut reached = 0;
    for member in members {
        let Some(mut event) = decode_event(member, &[CORE_RANDOM_PREFIX, 0]) else {
            return Frame::Error(format!(
                "ERR ZADD to '{key}' of something that is not a channels_redis message"
            ));
        };
        let channels = take_channels(&mut event);
        let connection = channels.first().and_then(|c| connection_of_channel(c));
        let (Some(connection), [_]) = (connection, channels.as_slice()) else {
            let channel = channels.first().cloned().unwrap_or_else(|| key.to_string());
            return Frame::Error(format!(
                "ERR channel_layer.send to '{channel}' cannot be honoured: Switchboard \
                 delivers only to WebSocket connections' channels (switchboard.conn!...)"
            ));
        };
        let payload = render_event(settings, &event);
        match send_to(publish, connection, payload).await {
            Ok(n) => reached += i64::from(n),
            Err(e) => return e,
        }
    }
    Frame::Integer(reached)
}

/// Delivers `payload` to one connection, wherever it is: the number reached (0 when it
/// is gone), or the error to answer.
pub async fn send_to(
    publish: &dyn Publish,
    connection: &str,
    payload: Bytes,
) -> Result<u32, Frame> {
    let text = crate::hub::is_text(&payload);
    let target = ConnTarget::Connection(connection.to_owned());
    match publish
        .act(target, ConnAction::Send { payload, text })
        .await
    {
        Ok(acted) => Ok(acted.reached),
        Err(e) => Err(Frame::Error(format!(
            "ERR send to switchboard.conn!{connection} failed: {e}"
        ))),
    }
}

/// `ZREM <prefix>:group:<g> channel...`: `group_discard` of connections' channels.
/// Other channels cannot be in a group here: nothing to remove.
async fn zrem(group_key: &str, args: &[Bytes], publish: &dyn Publish) -> Frame {
    let key = String::from_utf8_lossy(&args[1]);
    let Some(group) = key.strip_prefix(group_key) else {
        return Frame::Integer(0);
    };
    let mut removed = 0;
    for member in &args[2..] {
        let channel = String::from_utf8_lossy(member);
        let Some(connection) = connection_of_channel(&channel) else {
            continue;
        };
        let target = ConnTarget::Connection(connection.to_owned());
        match publish
            .act(target, ConnAction::Unsubscribe(group.to_owned()))
            .await
        {
            Ok(acted) => removed += i64::from(acted.reached),
            Err(e) => {
                return Frame::Error(format!(
                    "ERR group_discard of '{channel}' from '{group}' failed: {e}"
                ));
            }
        }
    }
    Frame::Integer(removed)
}

/// What an `EVAL` of channels_redis asks, parsed from its arguments.
#[derive(Debug, PartialEq)]
enum Eval<'a> {
    /// `group_send`: one message per key (the keys themselves are Redis's, not ours).
    GroupSend { messages: &'a [Bytes] },
    /// `flush` (deletes every key under the prefix) or the receive path's cleanup
    /// (restores a backup queue): both return nothing in Redis, and nothing is what they
    /// would find here.
    Nothing,
}

impl<'a> Eval<'a> {
    /// `EVAL <script> <numkeys> <key>... <arg>...` (the name first); the error is what
    /// Redis (or this shim, for a script it does not run) answers.
    fn parse(args: &'a [Bytes]) -> Result<Eval<'a>, Frame> {
        let [_, script, nkeys, rest @ ..] = args else {
            return Err(arity("eval"));
        };
        let Some(nkeys) = std::str::from_utf8(nkeys)
            .ok()
            .and_then(|n| n.parse::<usize>().ok())
        else {
            return Err(Frame::Error(
                "ERR value is not an integer or out of range".into(),
            ));
        };
        // As Redis: the keys must be among the arguments.
        if nkeys > rest.len() {
            return Err(Frame::Error(
                "ERR Number of keys can't be greater than number of args".into(),
            ));
        }
        let script = String::from_utf8_lossy(script);
        let is_flush = script.contains("redis.call('keys'") && script.contains("'del'");
        let is_cleanup = script.contains("WITHSCORES") && script.contains("redis.call('DEL'");
        if is_flush || is_cleanup {
            return Ok(Eval::Nothing);
        }
        let is_group_send = script.contains("ZADD") && script.contains("over_capacity");
        // group_send passes one message per key after the keys (then capacities and times).
        match rest.get(nkeys..2 * nkeys) {
            Some(messages) if is_group_send => Ok(Eval::GroupSend { messages }),
            _ => Err(Frame::Error(
                "ERR EVAL of this script is not supported: Switchboard runs only \
                 channels_redis's group_send, flush and cleanup scripts"
                    .into(),
            )),
        }
    }
}

/// `EVAL`: a `group_send` publishes each message to the groups its event names.
async fn eval(settings: &RespSettings, args: &[Bytes], publish: &dyn Publish) -> Frame {
    let messages = match Eval::parse(args) {
        Ok(Eval::GroupSend { messages }) => messages,
        Ok(Eval::Nothing) => return Frame::Null,
        Err(e) => return e,
    };
    // Every message decoded and every group checked before anything is published: a
    // bad name publishes nothing.
    let mut sends = Vec::with_capacity(messages.len());
    for message in messages {
        // The core layer prefixes 12 random bytes; a layer configured without them works too.
        let Some(mut event) = decode_event(message, &[CORE_RANDOM_PREFIX, 0]) else {
            continue;
        };
        let targets = take_channels(&mut event);
        for group in targets
            .iter()
            .filter_map(|c| c.strip_prefix(SYNTHETIC_CHANNEL))
        {
            if let Err(e) = crate::names::check(group, crate::broker::MAX_GROUP_NAME) {
                return Frame::Error(format!("ERR bad group name {group:?}: {e}"));
            }
        }
        sends.push((targets, render_event(settings, &event)));
    }
    for (targets, payload) in sends {
        for group in targets
            .iter()
            .filter_map(|c| c.strip_prefix(SYNTHETIC_CHANNEL))
        {
            if let Err(e) = publish.publish(group, payload.clone()).await {
                // A history group whose owner could not take it: channels_redis raises,
                // and the caller of group_send may retry.
                return Frame::Error(format!("ERR history: {e}"));
            }
        }
    }
    Frame::Integer(0)
}

/// Decodes a msgpack dict after skipping one of the given prefix lengths; the first that
/// yields a map that uses up the whole input wins.
fn decode_event(bytes: &[u8], prefixes: &[usize]) -> Option<rmpv::Value> {
    prefixes.iter().find_map(|&skip| {
        let mut rest = bytes.get(skip..)?;
        let value = rmpv::decode::read_value(&mut rest).ok()?;
        (value.is_map() && rest.is_empty()).then_some(value)
    })
}

/// Removes `__asgi_channel__` from the event and returns the channel names it held.
fn take_channels(event: &mut rmpv::Value) -> Vec<String> {
    let rmpv::Value::Map(entries) = event else {
        return Vec::new();
    };
    let Some(at) = entries
        .iter()
        .position(|(k, _)| k.as_str() == Some("__asgi_channel__"))
    else {
        return Vec::new();
    };
    let (_, channels) = entries.remove(at);
    match channels {
        rmpv::Value::Array(items) => items
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        rmpv::Value::String(s) => s.into_str().into_iter().collect(),
        _ => Vec::new(),
    }
}

/// The bytes a client receives for an event: `json.dumps(event)`, or with
/// `--channels-unwrap KEY` `json.dumps(event[KEY])` (the whole event when it has no such
/// key).
fn render_event(settings: &RespSettings, event: &rmpv::Value) -> Bytes {
    let unwrapped = settings.channels_unwrap.as_deref().and_then(|key| {
        event
            .as_map()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    });
    Bytes::from(pyjson::dumps(unwrapped.unwrap_or(event)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(pairs: Vec<(&str, rmpv::Value)>) -> Vec<u8> {
        let map = rmpv::Value::Map(pairs.into_iter().map(|(k, v)| (k.into(), v)).collect());
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, &map).expect("encodes");
        out
    }

    #[test]
    fn a_core_layer_message_decodes_after_its_random_prefix() {
        let mut bytes = vec![7u8; CORE_RANDOM_PREFIX];
        bytes.extend(event(vec![
            ("type", "notify".into()),
            ("message", "hello".into()),
            (
                "__asgi_channel__",
                rmpv::Value::Array(vec!["switchboard.group!user_42".into()]),
            ),
        ]));
        let mut value = decode_event(&bytes, &[CORE_RANDOM_PREFIX, 0]).expect("decodes");
        assert_eq!(take_channels(&mut value), vec!["switchboard.group!user_42"]);
        assert_eq!(
            pyjson::dumps(&value),
            r#"{"type": "notify", "message": "hello"}"#
        );
    }

    #[test]
    fn plain_text_is_not_mistaken_for_an_event() {
        assert!(decode_event(b"hello", &[0]).is_none());
        assert!(decode_event(b"", &[CORE_RANDOM_PREFIX, 0]).is_none());
    }

    fn settings(unwrap: Option<&str>) -> RespSettings {
        let mut config = crate::config::Config::for_tests(std::path::PathBuf::from("unused"));
        config.resp.channels_unwrap = unwrap.map(str::to_owned);
        config.resp
    }

    #[test]
    fn an_event_renders_as_json_dumps_and_unwraps_to_json_dumps_of_its_key() {
        let event = rmpv::Value::Map(vec![
            ("type".into(), "notify".into()),
            ("message".into(), "test".into()),
        ]);
        assert_eq!(
            render_event(&settings(None), &event),
            Bytes::from_static(br#"{"type": "notify", "message": "test"}"#)
        );
        assert_eq!(
            render_event(&settings(Some("message")), &event),
            Bytes::from_static(br#""test""#),
            "a string keeps its quotes, as send_json sent it"
        );
        let no_key = rmpv::Value::Map(vec![("type".into(), "ping".into())]);
        assert_eq!(
            render_event(&settings(Some("message")), &no_key),
            Bytes::from_static(br#"{"type": "ping"}"#)
        );
    }

    #[test]
    fn a_publish_to_a_connections_channel_goes_to_that_connection() {
        let event = event(vec![("type", "x".into()), ("message", "hi".into())]);
        let s = settings(Some("message"));
        assert_eq!(
            from_pubsub_layer(&s, "switchboard.conn!1-a-2", Bytes::from(event.clone())),
            Published::Connection("1-a-2", Bytes::from_static(br#""hi""#))
        );
        assert_eq!(
            from_pubsub_layer(&s, "asgi__group__g", Bytes::from(event)),
            Published::Group("g", Bytes::from_static(br#""hi""#))
        );
        assert_eq!(
            from_pubsub_layer(&s, "plain", Bytes::from_static(b"raw")),
            Published::Group("plain", Bytes::from_static(b"raw"))
        );
    }

    #[test]
    fn zadd_options_are_skipped_and_pairs_checked() {
        let args = |items: &[&str]| -> Vec<Bytes> {
            items.iter().map(|s| Bytes::from(s.to_string())).collect()
        };
        let zadd = args(&["ZADD", "k", "NX", "CH", "1", "a", "2", "b"]);
        assert_eq!(
            zadd_members(&zadd).expect("members"),
            vec![&Bytes::from("a"), &Bytes::from("b")]
        );
        assert!(zadd_members(&args(&["ZADD", "k", "1"])).is_err());
        assert!(zadd_members(&args(&["ZADD", "k", "1", "a", "2"])).is_err());
    }

    #[test]
    fn an_eval_parses_into_what_channels_redis_asks() {
        let args = |items: &[&str]| -> Vec<Bytes> {
            items.iter().map(|s| Bytes::from(s.to_string())).collect()
        };
        let group_send = "local over_capacity = 0 ... redis.call('ZADD', ...)";
        let send = args(&[
            "EVAL", group_send, "2", "k1", "k2", "m1", "m2", "100", "100", "0", "86400",
        ]);
        match Eval::parse(&send) {
            Ok(Eval::GroupSend { messages }) => assert_eq!(messages, &send[5..7]),
            other => panic!("{other:?}"),
        }
        let flush = args(&[
            "EVAL",
            "local keys = redis.call('keys', ...) redis.call('del', ...)",
            "0",
        ]);
        assert_eq!(Eval::parse(&flush), Ok(Eval::Nothing));
        let not_a_number = args(&["EVAL", group_send, "x"]);
        assert!(
            matches!(Eval::parse(&not_a_number), Err(Frame::Error(e)) if e.contains("not an integer"))
        );
        let too_many_keys = args(&["EVAL", group_send, "3", "k1", "k2"]);
        assert!(
            matches!(Eval::parse(&too_many_keys), Err(Frame::Error(e)) if e.contains("greater than"))
        );
        let missing_messages = args(&["EVAL", group_send, "2", "k1", "k2", "m1"]);
        assert!(
            matches!(Eval::parse(&missing_messages), Err(Frame::Error(e)) if e.contains("not supported"))
        );
        let other_script = args(&["EVAL", "return 1", "0"]);
        assert!(
            matches!(Eval::parse(&other_script), Err(Frame::Error(e)) if e.contains("not supported"))
        );
    }
}
