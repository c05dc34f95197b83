//! The RESP command layer whole: arbitrary bytes through the decoder (with the limits a
//! node uses before and after AUTH) and every command through a session, against a
//! publisher that records nothing. Nothing may panic, and a reply must always encode.
//! Run: `cargo +nightly fuzz run resp_session` in node/.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard_node::config::{Config, JwtKey};
use switchboard_node::ingress::resp::{Env, Session};
use switchboard_node::metrics::Metrics;
use switchboard_node::router::{PatternError, Publish};
use switchboard_node::secrets::Secrets;
use switchboard_proto::peer::NodeId;
use switchboard_proto::resp::{Decoder, Limits, Version};

struct Nobody;

impl Publish for Nobody {
    fn publish(&self, _group: &str, payload: Bytes) -> usize {
        payload.len() % 3
    }
    fn group_counts(&self, group: &str) -> Vec<(NodeId, usize)> {
        vec![(1, group.len() % 2)]
    }
    fn groups(&self, pattern: Option<&[u8]>) -> Result<Vec<String>, PatternError> {
        let names = ["user_1", "room_a", "asgi__group__x"];
        let mut budget = switchboard_node::broker::Budget(100_000);
        let mut out = Vec::new();
        for name in names {
            let keep = match pattern {
                None => true,
                Some(p) => switchboard_node::broker::glob_match_within(p, name.as_bytes(), &mut budget)
                    .ok_or(PatternError::TooCostly)?,
            };
            if keep {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
    fn local_groups(&self) -> usize {
        3
    }
}

fn env(password: bool) -> Arc<Env> {
    let dir = std::env::temp_dir().join(format!("sb-fuzz-{}-{password}", std::process::id()));
    let mut config = Config::for_tests(dir);
    config.jwt = JwtKey::Secret("fuzz".into());
    if password {
        config.resp_password = Some("pw".into());
    }
    config.max_payload = 4096;
    config.max_command_bytes = 16 * 1024;
    let secrets = Secrets::load(&config).expect("secrets");
    Arc::new(Env::new(Arc::new(config), Arc::new(Metrics::default()), Arc::new(secrets)))
}

fuzz_target!(|data: &[u8]| {
    static OPEN: OnceLock<Arc<Env>> = OnceLock::new();
    static LOCKED: OnceLock<Arc<Env>> = OnceLock::new();
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let env = if mode & 1 == 0 {
        OPEN.get_or_init(|| env(false)).clone()
    } else {
        LOCKED.get_or_init(|| env(true)).clone()
    };
    let limits = Limits {
        max_bulk_len: 4096,
        max_frame_len: 16 * 1024,
        ..Limits::default()
    };
    let mut session = Session::new(1, env);
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    let chunk = usize::from(mode >> 1).max(1);
    let mut out = Vec::new();
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => {
                    let Ok(args) = frame.into_args() else { return };
                    if args.is_empty() {
                        continue;
                    }
                    let (reply, _) = session.handle(args, &Nobody);
                    reply.encode(session.version(), &mut out);
                    reply.encode(Version::Resp2, &mut out);
                    out.clear();
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});
