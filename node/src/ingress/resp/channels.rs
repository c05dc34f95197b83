//! Django Channels publishers, unchanged: what `channels_redis` sends, mapped onto groups.
//!
//! - `channels_redis.pubsub.RedisPubSubChannelLayer.group_send(g, event)` is
//!   `PUBLISH <prefix>__group__<g> <msgpack event>`: [`from_pubsub_layer`] maps the
//!   channel back to the group and the event to JSON.
//! - `channels_redis.core.RedisChannelLayer.group_send(g, event)` reads the group's
//!   members with `ZRANGE <prefix>:group:<g> 0 -1` and, if there are any, `EVAL`s a Lua
//!   script that `ZADD`s the event (12 random bytes + msgpack, with `__asgi_channel__`
//!   naming the target channels) into each channel's sorted set. [`core_command`]
//!   answers that `ZRANGE` with one synthetic channel, `switchboard.group!<g>`, when the
//!   group has subscribers anywhere, and turns the `EVAL` into a publish to every group
//!   named in `__asgi_channel__`. The other commands of the layer answer as an empty
//!   Redis would, so the publisher carries on.
//!
//! An event is delivered as its JSON text (`{"type": "notify", "message": "hi"}`), or,
//! with `--channels-unwrap KEY`, as just `event[KEY]`.

use bytes::Bytes;
use switchboard_proto::resp::Frame;

use super::command::{Command, Name, arity};
use crate::config::RespSettings;
use crate::router::Publish;

/// The synthetic channel-name prefix answered to `ZRANGE`; the part up to `!` is what
/// channels_redis uses as the Redis key, so every group shares one key per `EVAL`.
pub const SYNTHETIC_CHANNEL: &str = "switchboard.group!";
/// channels_redis's default `random_prefix_length` for the core layer.
const CORE_RANDOM_PREFIX: usize = 12;

/// For `PUBLISH <prefix>__group__<g> payload` from the pub/sub layer: the group and the
/// payload to deliver. Any other channel is a group of that name, payload untouched.
pub fn from_pubsub_layer<'a>(
    settings: &RespSettings,
    channel: &'a str,
    payload: Bytes,
) -> (&'a str, Bytes) {
    let prefix = settings.channels_prefix.as_str();
    let group = channel
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix("__group__"));
    match group {
        Some(group) if !group.is_empty() => {
            let payload = decode_event(&payload, &[0])
                .map(|event| render_event(settings, event))
                .unwrap_or(payload);
            (group, payload)
        }
        _ => (channel, payload),
    }
}

/// Answers the commands of `channels_redis.core.RedisChannelLayer` (every command of the
/// table that is not the shim's own; arity already checked).
pub async fn run(settings: &RespSettings, command: &Command, publish: &dyn Publish) -> Frame {
    let args = &command.args;
    match command.name() {
        Name::Zrange => {
            let group_key = format!("{}:group:", settings.channels_prefix);
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
        Name::Eval => eval(settings, args, publish).await,
        // No script is ever loaded here (SCRIPT LOAD is not supported): as Redis answers
        // for a script it does not have.
        Name::Evalsha => Frame::Error("NOSCRIPT No matching script. Please use EVAL.".into()),
        // Group membership and channel queues live in WebSocket connections here, not in
        // sorted sets: these answer as an empty Redis would.
        Name::Zremrangebyscore
        | Name::Zrem
        | Name::Zcount
        | Name::Del
        | Name::Unlink
        | Name::Dbsize
        | Name::Exists => Frame::Integer(0),
        Name::Zadd | Name::Expire => Frame::Integer(1),
        Name::Keys | Name::Zpopmin => Frame::Array(vec![]),
        Name::Bzpopmin
        | Name::Subscribe
        | Name::Unsubscribe
        | Name::Psubscribe
        | Name::Ssubscribe => Frame::Error(format!(
            "ERR {} is not supported: Switchboard is a publish-only Redis shim; \
             consumers receive over WebSocket",
            command.spec.text.to_ascii_uppercase()
        )),
        Name::Flushdb | Name::Flushall => Frame::ok(),
        _ => Frame::Error(format!(
            "ERR {} is not a channels_redis command",
            command.spec.text
        )),
    }
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
    for message in messages {
        // The core layer prefixes 12 random bytes; a layer configured without them works too.
        let Some(mut event) = decode_event(message, &[CORE_RANDOM_PREFIX, 0]) else {
            continue;
        };
        let targets = take_channels(&mut event);
        let payload = render_event(settings, event);
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

/// The bytes a client receives for an event: its JSON, or one key of it.
fn render_event(settings: &RespSettings, event: rmpv::Value) -> Bytes {
    let json = to_json(event);
    if let Some(key) = &settings.channels_unwrap {
        match json.get(key) {
            Some(serde_json::Value::String(s)) => return Bytes::from(s.clone()),
            Some(other) => return Bytes::from(other.to_string()),
            None => {}
        }
    }
    Bytes::from(json.to_string())
}

/// msgpack to JSON: binary becomes a string when it is UTF-8 (else an array of bytes),
/// non-string map keys are written as their JSON text, extension types become null.
pub fn to_json(value: rmpv::Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        rmpv::Value::Nil => J::Null,
        rmpv::Value::Boolean(b) => J::Bool(b),
        rmpv::Value::Integer(i) => i
            .as_i64()
            .map(J::from)
            .or_else(|| i.as_u64().map(J::from))
            .unwrap_or(J::Null),
        rmpv::Value::F32(f) => {
            serde_json::Number::from_f64(f64::from(f)).map_or(J::Null, J::Number)
        }
        rmpv::Value::F64(f) => serde_json::Number::from_f64(f).map_or(J::Null, J::Number),
        rmpv::Value::String(s) => match s.into_str() {
            Some(s) => J::String(s),
            None => J::Null,
        },
        rmpv::Value::Binary(b) => match String::from_utf8(b) {
            Ok(s) => J::String(s),
            Err(e) => J::Array(e.into_bytes().into_iter().map(J::from).collect()),
        },
        rmpv::Value::Array(items) => J::Array(items.into_iter().map(to_json).collect()),
        rmpv::Value::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match k {
                        rmpv::Value::String(s) => s.into_str().unwrap_or_default(),
                        other => to_json(other).to_string(),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        rmpv::Value::Ext(_, _) => J::Null,
    }
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
            to_json(value),
            serde_json::json!({"type": "notify", "message": "hello"})
        );
    }

    #[test]
    fn plain_text_is_not_mistaken_for_an_event() {
        assert!(decode_event(b"hello", &[0]).is_none());
        assert!(decode_event(b"", &[CORE_RANDOM_PREFIX, 0]).is_none());
    }

    #[test]
    fn json_conversion_keeps_types() {
        let value = rmpv::Value::Map(vec![
            ("n".into(), 5.into()),
            ("f".into(), rmpv::Value::F64(1.5)),
            ("b".into(), rmpv::Value::Binary(vec![0xff])),
            (
                "l".into(),
                rmpv::Value::Array(vec![true.into(), rmpv::Value::Nil]),
            ),
        ]);
        assert_eq!(
            to_json(value),
            serde_json::json!({"n": 5, "f": 1.5, "b": [255], "l": [true, null]})
        );
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
