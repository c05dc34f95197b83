//! `PUBLISH`, `SPUBLISH` and `PUBSUB`, cluster-wide.

use bytes::Bytes;
use switchboard_proto::resp::Frame;

use crate::ingress::resp::channels;
use crate::ingress::resp::command::{Command, Name, arity};
use crate::ingress::resp::session::Session;
use crate::router::Publish;

/// Runs one pub/sub command.
pub async fn run(session: &Session, command: &Command, publish: &dyn Publish) -> Frame {
    let rest = command.rest();
    match command.name() {
        Name::Publish | Name::Spublish => match rest {
            [channel, payload] => publish_one(session, channel, payload.clone(), publish).await,
            _ => arity(command.spec.text),
        },
        _ => pubsub(rest, publish).await,
    }
}

async fn publish_one(
    session: &Session,
    channel: &Bytes,
    payload: Bytes,
    publish: &dyn Publish,
) -> Frame {
    let Ok(channel) = std::str::from_utf8(channel) else {
        return Frame::Error("ERR group names must be UTF-8".into());
    };
    let env = &session.env;
    if payload.len() > env.max_payload {
        return Frame::Error(format!(
            "ERR payload of {} bytes exceeds --max-payload {}",
            payload.len(),
            env.max_payload
        ));
    }
    let (group, payload) = match channels::from_pubsub_layer(&env.settings, channel, payload) {
        channels::Published::Group(group, payload) => (group, payload),
        channels::Published::Connection(connection, payload) => {
            return match channels::send_to(publish, connection, payload).await {
                Ok(reached) => Frame::Integer(i64::from(reached)),
                Err(e) => e,
            };
        }
    };
    if let Err(e) = crate::names::check(group, crate::broker::MAX_GROUP_NAME) {
        return Frame::Error(format!("ERR bad group name {group:?}: {e}"));
    }
    match publish.publish(group, payload).await {
        Ok(routed) => Frame::Integer(routed.routed as i64),
        // A history group whose owner could not take it: the publisher may retry.
        Err(e) => Frame::Error(format!("ERR history: {e}")),
    }
}

async fn pubsub(args: &[Bytes], publish: &dyn Publish) -> Frame {
    let Some(sub) = args.first() else {
        return arity("pubsub");
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
    match (sub.as_str(), &args[1..]) {
        ("CHANNELS" | "SHARDCHANNELS", rest) if rest.len() <= 1 => {
            match publish.groups(rest.first().map(|p| p.as_ref())).await {
                Ok(groups) => Frame::Array(
                    groups
                        .into_iter()
                        .map(|g| Frame::Bulk(Bytes::from(g)))
                        .collect(),
                ),
                Err(e) => Frame::Error(format!("ERR {e}")),
            }
        }
        ("NUMSUB" | "SHARDNUMSUB", groups) => {
            // A flat array of name, count, name, count... in RESP2 and RESP3 alike, as
            // redis-server answers (redis-py parses it so).
            let mut flat = Vec::with_capacity(groups.len() * 2);
            for g in groups {
                let count = match std::str::from_utf8(g) {
                    Ok(g) => publish.subscribers(g).await,
                    Err(_) => 0,
                };
                flat.push(Frame::Bulk(g.clone()));
                flat.push(Frame::Integer(count as i64));
            }
            Frame::Array(flat)
        }
        ("NUMPAT", []) => Frame::Integer(0),
        _ => Frame::Error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try PUBSUB HELP.",
            sub.to_ascii_lowercase()
        )),
    }
}
