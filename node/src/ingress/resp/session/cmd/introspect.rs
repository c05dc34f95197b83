//! `INFO` and `COMMAND`: enough for redis-cli's start-up and for clients that probe what
//! the server supports. `COMMAND` answers from the one command table.

use bytes::Bytes;
use switchboard_proto::resp::Frame;

use super::bulk;
use super::conn::REDIS_VERSION;
use crate::ingress::resp::command::{Spec, TABLE};
use crate::ingress::resp::session::Session;
use crate::router::Publish;

/// `INFO`: the sections redis-py and redis-cli read, with this node's figures.
pub fn info(session: &Session, publish: &dyn Publish) -> Frame {
    let env = &session.env;
    let metrics = &env.metrics;
    let text = format!(
        "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nswitchboard_version:{}\r\nswitchboard_node_id:{}\r\nuptime_in_seconds:{}\r\n\r\n# Clients\r\nconnected_clients:{}\r\nwebsocket_connections:{}\r\n\r\n# Stats\r\npubsub_channels:{}\r\ntotal_commands_processed:{}\r\nmessages_published:{}\r\n\r\n# Replication\r\nrole:master\r\n\r\n# Keyspace\r\n",
        env!("CARGO_PKG_VERSION"),
        env.node,
        env.started.elapsed().as_secs(),
        metrics.resp_connections.get(),
        metrics.connections.get(),
        publish.local_groups(),
        metrics.resp_commands.get(),
        metrics.messages_published.get(),
    );
    Frame::Verbatim {
        format: "txt".into(),
        text: Bytes::from(text),
    }
}

fn entry(spec: &Spec) -> Frame {
    let (first, last, step) = spec.keys;
    Frame::Array(vec![
        bulk(spec.text),
        Frame::Integer(spec.arity),
        Frame::Set(
            spec.flags
                .iter()
                .map(|f| Frame::Simple((*f).into()))
                .collect(),
        ),
        Frame::Integer(first),
        Frame::Integer(last),
        Frame::Integer(step),
    ])
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`, `COMMAND INFO`, `COMMAND LIST`.
pub fn command(args: &[Bytes]) -> Frame {
    let sub = args
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
    match sub.as_deref() {
        None => Frame::Array(TABLE.iter().map(entry).collect()),
        Some("COUNT") => Frame::Integer(TABLE.len() as i64),
        Some("DOCS") => Frame::Map(vec![]),
        Some("INFO") => Frame::Array(
            args[1..]
                .iter()
                .map(|name| {
                    crate::ingress::resp::command::lookup(name)
                        .map(entry)
                        .unwrap_or(Frame::Null)
                })
                .collect(),
        ),
        Some("LIST") => Frame::Array(TABLE.iter().map(|s| bulk(s.text)).collect()),
        Some(other) => Frame::Error(format!(
            "ERR unknown subcommand '{}'. Try COMMAND HELP.",
            other.to_ascii_lowercase()
        )),
    }
}
