//! The connection commands: `PING`, `ECHO`, `AUTH`, `HELLO`, `SELECT`, `CLIENT`.

use bytes::Bytes;
use switchboard_proto::resp::{Frame, Version};

use super::bulk;
use crate::ingress::resp::command::{Command, Name, arity};
use crate::ingress::resp::session::Session;
use crate::secrets::constant_time_eq;

/// The Redis version the shim reports (HELLO, INFO): clients gate features on it.
pub const REDIS_VERSION: &str = "7.2.0";

/// Runs one connection command.
pub fn run(session: &mut Session, command: &Command) -> Frame {
    let rest = command.rest();
    match command.name() {
        Name::Ping => match rest {
            [] => Frame::Simple("PONG".into()),
            [message] => Frame::Bulk(message.clone()),
            _ => arity("ping"),
        },
        Name::Echo => match rest {
            [message] => Frame::Bulk(message.clone()),
            _ => arity("echo"),
        },
        Name::Auth => auth(session, rest),
        Name::Hello => hello(session, rest),
        Name::Select => match rest {
            [index] => select(index),
            _ => arity("select"),
        },
        Name::Client => client(session, rest),
        _ => Frame::Error("ERR not a connection command".into()),
    }
}

fn select(index: &[u8]) -> Frame {
    match index {
        b"0" => Frame::ok(),
        _ if std::str::from_utf8(index).is_ok_and(|i| i.parse::<i64>().is_ok()) => {
            Frame::Error("ERR DB index is out of range".into())
        }
        _ => Frame::Error("ERR value is not an integer or out of range".into()),
    }
}

fn check_password(
    session: &mut Session,
    user: Option<&[u8]>,
    password: &[u8],
) -> Result<(), Frame> {
    let password_now = session.env.secrets.resp_password.get();
    let Some(expected) = password_now.as_deref() else {
        return Err(Frame::Error(
            "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".into(),
        ));
    };
    let user_ok = user.is_none_or(|u| u == b"default");
    if user_ok && constant_time_eq(password, expected.as_bytes()) {
        session.authenticated = true;
        Ok(())
    } else {
        session.env.metrics.resp_auth_failures.inc();
        session.auth_failures += 1;
        Err(Frame::Error(
            "WRONGPASS invalid username-password pair or user is disabled.".into(),
        ))
    }
}

fn auth(session: &mut Session, args: &[Bytes]) -> Frame {
    let result = match args {
        [password] => check_password(session, None, password),
        [user, password] => check_password(session, Some(user), password),
        _ => return arity("auth"),
    };
    match result {
        Ok(()) => Frame::ok(),
        Err(e) => e,
    }
}

fn hello(session: &mut Session, args: &[Bytes]) -> Frame {
    let mut version = session.version;
    let mut rest = args;
    if let Some((proto, tail)) = rest.split_first() {
        version = match proto.as_ref() {
            b"2" => Version::Resp2,
            b"3" => Version::Resp3,
            _ if std::str::from_utf8(proto)
                .ok()
                .and_then(|s| s.parse::<i64>().ok())
                .is_none() =>
            {
                return Frame::Error(
                    "ERR Protocol version is not an integer or out of range".into(),
                );
            }
            _ => return Frame::Error("NOPROTO unsupported protocol version".into()),
        };
        rest = tail;
    }
    while let Some((option, tail)) = rest.split_first() {
        match (option.to_ascii_uppercase().as_slice(), tail) {
            (b"AUTH", [user, password, more @ ..]) => {
                if let Err(e) = check_password(session, Some(user), password) {
                    return e;
                }
                rest = more;
            }
            (b"SETNAME", [name, more @ ..]) => {
                session.name = Some(name.clone());
                rest = more;
            }
            _ => {
                return Frame::Error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    String::from_utf8_lossy(option)
                ));
            }
        }
    }
    if !session.authenticated {
        session.env.metrics.resp_auth_failures.inc();
        return Frame::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time".into(),
        );
    }
    session.version = version;
    let proto = if version == Version::Resp3 { 3 } else { 2 };
    Frame::Map(vec![
        (bulk("server"), bulk("redis")),
        (bulk("version"), bulk(REDIS_VERSION)),
        (bulk("proto"), Frame::Integer(proto)),
        (bulk("id"), Frame::Integer(session.id as i64)),
        (bulk("mode"), bulk("standalone")),
        (bulk("role"), bulk("master")),
        (bulk("modules"), Frame::Array(vec![])),
    ])
}

fn client(session: &mut Session, args: &[Bytes]) -> Frame {
    let Some(sub) = args.first() else {
        return arity("client");
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
    match (sub.as_str(), &args[1..]) {
        ("SETNAME", [name]) => {
            if name.iter().any(|b| *b == b' ' || *b == b'\n') {
                return Frame::Error(
                    "ERR Client names cannot contain spaces, newlines or special characters."
                        .into(),
                );
            }
            session.name = Some(name.clone());
            Frame::ok()
        }
        ("GETNAME", []) => session.name.clone().map(Frame::Bulk).unwrap_or(Frame::Null),
        ("ID", []) => Frame::Integer(session.id as i64),
        ("SETINFO", [attr, value]) => {
            match attr.to_ascii_uppercase().as_slice() {
                b"LIB-NAME" => session.lib_name = Some(value.clone()),
                b"LIB-VER" => session.lib_ver = Some(value.clone()),
                _ => {
                    return Frame::Error(format!(
                        "ERR Unrecognized option '{}'",
                        String::from_utf8_lossy(attr)
                    ));
                }
            }
            Frame::ok()
        }
        ("INFO", []) | ("LIST", _) => Frame::Bulk(Bytes::from(client_line(session) + "\n")),
        ("NO-EVICT" | "NO-TOUCH", [_]) | ("REPLY", [_]) => Frame::ok(),
        _ => Frame::Error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            sub.to_ascii_lowercase()
        )),
    }
}

fn client_line(session: &Session) -> String {
    let text = |b: &Option<Bytes>| {
        b.as_ref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    format!(
        "id={} name={} db=0 resp={} lib-name={} lib-ver={}",
        session.id,
        text(&session.name),
        if session.version == Version::Resp3 {
            3
        } else {
            2
        },
        text(&session.lib_name),
        text(&session.lib_ver)
    )
}
