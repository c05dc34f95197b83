//! The RESP command layer whole: arbitrary bytes through a connection's decisions (the
//! decoder with the bounds a node uses before and after AUTH, deadlines, closes) and every
//! command through a session, against a publisher that records nothing. Nothing may
//! panic, and a reply must always encode.
//! Run: `cargo +nightly fuzz run resp_session` in node/.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use libfuzzer_sys::fuzz_target;
use switchboard_node::cluster::ActError;
use switchboard_node::config::{Config, JwtKey, Secret};
use switchboard_node::history::HistoryError;
use switchboard_node::ingress::resp::{Auth, Bounds, Connection, Poll, Session, Shim};
use switchboard_node::metrics::Metrics;
use switchboard_node::router::{Acted, PatternError, Publish, Routed};
use switchboard_node::secrets::Secrets;
use switchboard_proto::peer::{ConnAction, ConnTarget, NodeId};
use switchboard_proto::resp::Version;

struct Nobody;

impl Publish for Nobody {
    fn publish<'a>(&'a self, _group: &'a str, payload: Bytes) -> BoxFuture<'a, Result<Routed, HistoryError>> {
        Box::pin(async move {
            match payload.len() % 4 {
                3 => Err(HistoryError::Timeout),
                n => Ok(Routed { routed: n, position: None }),
            }
        })
    }
    fn group_counts<'a>(&'a self, group: &'a str) -> BoxFuture<'a, Vec<(NodeId, usize)>> {
        Box::pin(async move { vec![(1, group.len() % 2)] })
    }
    fn groups<'a>(&'a self, pattern: Option<&'a [u8]>) -> BoxFuture<'a, Result<Vec<String>, PatternError>> {
        Box::pin(async move {
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
        })
    }
    fn local_groups(&self) -> usize {
        3
    }
    fn act(&self, target: ConnTarget, _action: ConnAction) -> BoxFuture<'_, Result<Acted, ActError>> {
        Box::pin(async move {
            match target {
                ConnTarget::Connection(id) => Err(ActError::NotAConnection(id)),
                ConnTarget::User(_) => Ok(Acted::default()),
            }
        })
    }
}

fn shim(password: bool) -> Arc<Shim> {
    let dir = std::env::temp_dir().join(format!("sb-fuzz-{}-{password}", std::process::id()));
    let mut config = Config::for_tests(dir);
    config.credentials.jwt = JwtKey::Secret(Secret::Value("fuzz".into()));
    if password {
        config.credentials.resp_password = Some(Secret::Value("pw".into()));
    }
    config.max_payload = 4096;
    config.resp.max_command_bytes = 16 * 1024;
    let secrets = Secrets::load(&config).expect("secrets");
    Arc::new(Shim::new(&config, Arc::new(Metrics::default()), Arc::new(secrets)))
}

fuzz_target!(|data: &[u8]| {
    static OPEN: OnceLock<Arc<Shim>> = OnceLock::new();
    static LOCKED: OnceLock<Arc<Shim>> = OnceLock::new();
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
    });
    let Some((&mode, bytes)) = data.split_first() else {
        return;
    };
    let env = if mode & 1 == 0 {
        OPEN.get_or_init(|| shim(false)).clone()
    } else {
        LOCKED.get_or_init(|| shim(true)).clone()
    };
    let mut session = Session::new(1, env.clone());
    let now = tokio::time::Instant::now();
    let metrics = env.metrics.clone();
    let mut conn = Connection::new(now, session.authenticated(), Bounds::of(&env), metrics);
    let mut buf = BytesMut::new();
    let chunk = usize::from(mode >> 1).max(1);
    for piece in bytes.chunks(chunk) {
        buf.extend_from_slice(piece);
        conn.reading(now);
        while let Poll::Command(args) = conn.poll_command(&mut buf, session.version()) {
            let (reply, next) = runtime.block_on(session.handle(args, &Nobody));
            let auth = Auth {
                authenticated: session.authenticated(),
                failures: session.auth_failures(),
            };
            let mut resp2 = Vec::new();
            reply.encode(Version::Resp2, &mut resp2);
            conn.handle_reply(now, &reply, next, auth, session.version());
            conn.sent();
        }
        if conn.closing().is_some() {
            return;
        }
    }
});
