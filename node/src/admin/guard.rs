//! Who may drive the admin API, decided from the request head alone (no IO):
//! - health checks (`GET /healthz`, `GET /readyz`) are open to anyone;
//! - every other route needs a `Host` that names this node (an IP literal, `localhost`,
//!   or a name in `--admin-hosts`), so DNS rebinding cannot reach it, and no `Origin`
//!   but the admin port's own, so a web page cannot drive it;
//! - with admin tokens set, an `Authorization: Bearer` token whose scopes cover the
//!   route (401 without a valid one, 403 when its scope falls short). Tokens in the query
//!   string are not looked at.

use std::net::IpAddr;

use crate::secrets::{AdminTokens, Denied, Scope};

/// Why a request was refused: its status and the reason given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub reason: String,
}

fn refuse(status: u16, reason: impl Into<String>) -> Refusal {
    Refusal {
        status,
        reason: reason.into(),
    }
}

/// The parts of a request the guard looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct Head<'a> {
    pub host: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub authorization: Option<&'a str>,
    /// Whether the admin port speaks TLS (the origin's scheme).
    pub tls: bool,
}

/// The host part of a `Host` header (`[::1]:8002` → `::1`, `node-1:8002` → `node-1`).
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `host` names this node.
pub fn host_allowed(host: &str, extra: &[String]) -> bool {
    let name = host_name(host.trim());
    name.parse::<IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || extra.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The bearer token of a request, if any.
pub fn bearer<'a>(head: &Head<'a>) -> Option<&'a str> {
    head.authorization.and_then(|value| {
        let (kind, token) = value.trim().split_once(' ')?;
        kind.eq_ignore_ascii_case("bearer").then(|| token.trim())
    })
}

/// Admits a request for a route needing `scope` (`None`: a health check), or says why
/// not.
pub fn admit(
    head: &Head<'_>,
    scope: Option<Scope>,
    tokens: Option<&AdminTokens>,
    admin_hosts: &[String],
) -> Result<(), Refusal> {
    let Some(scope) = scope else {
        return Ok(());
    };
    let host = head.host.unwrap_or_default();
    if !host_allowed(host, admin_hosts) {
        return Err(refuse(
            403,
            format!(
                "host '{host}' is not this node's: use an IP address, localhost, or a name in --admin-hosts"
            ),
        ));
    }
    if let Some(origin) = head.origin {
        let scheme = if head.tls { "https" } else { "http" };
        let own = format!("{scheme}://{host}");
        if !origin.eq_ignore_ascii_case(&own) {
            return Err(refuse(
                403,
                format!(
                    "requests from origin '{origin}' are refused: the admin API is not for web pages"
                ),
            ));
        }
    }
    let Some(tokens) = tokens else {
        return Ok(());
    };
    tokens
        .check(bearer(head), scope)
        .map_err(|denied| match denied {
            Denied::Unauthenticated => refuse(
                401,
                "a valid admin token is needed: Authorization: Bearer <token>",
            ),
            Denied::Forbidden => refuse(
                403,
                format!("this token's scope does not cover this route (needs {scope:?})")
                    .to_lowercase(),
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(host: &'a str, origin: Option<&'a str>, auth: Option<&'a str>) -> Head<'a> {
        Head {
            host: Some(host),
            origin,
            authorization: auth,
            tls: false,
        }
    }

    #[test]
    fn health_checks_are_open_to_anyone() {
        let tokens = AdminTokens::single("t".into());
        let evil = head("evil.example", Some("https://evil.example"), None);
        assert_eq!(admit(&evil, None, Some(&tokens), &[]), Ok(()));
    }

    #[test]
    fn the_host_must_name_the_node() {
        for host in [
            "127.0.0.1:8002",
            "[::1]:8002",
            "localhost:8002",
            "10.1.2.3",
            "LOCALHOST",
        ] {
            assert_eq!(
                admit(&head(host, None, None), Some(Scope::Read), None, &[]),
                Ok(()),
                "{host}"
            );
        }
        let rebinding = head("attacker.example:8002", None, None);
        assert_eq!(
            admit(&rebinding, Some(Scope::Read), None, &[]).map_err(|r| r.status),
            Err(403)
        );
        let named = ["node-1.internal".to_string()];
        assert_eq!(
            admit(
                &head("node-1.internal:8002", None, None),
                Some(Scope::Read),
                None,
                &named
            ),
            Ok(())
        );
        assert!(
            admit(&Head::default(), Some(Scope::Read), None, &[]).is_err(),
            "no Host"
        );
    }

    #[test]
    fn a_web_page_cannot_drive_the_node() {
        let from_page = head("127.0.0.1:8002", Some("https://evil.example"), None);
        let refusal = admit(&from_page, Some(Scope::Write), None, &[]).expect_err("refused");
        assert_eq!(refusal.status, 403);
        let same_origin = head("127.0.0.1:8002", Some("http://127.0.0.1:8002"), None);
        assert_eq!(admit(&same_origin, Some(Scope::Write), None, &[]), Ok(()));
        let null_origin = head("127.0.0.1:8002", Some("null"), None);
        assert!(admit(&null_origin, Some(Scope::Read), None, &[]).is_err());
    }

    #[test]
    fn tokens_are_bearer_only_with_scopes() {
        let tokens = AdminTokens::parse("root\nreader read\n").expect("parses");
        let check = |auth: Option<&str>, scope| {
            admit(
                &head("127.0.0.1", None, auth),
                Some(scope),
                Some(&tokens),
                &[],
            )
            .map_err(|r| r.status)
        };
        assert_eq!(check(None, Scope::Read), Err(401));
        assert_eq!(check(Some("Basic cm9vdA=="), Scope::Read), Err(401));
        assert_eq!(check(Some("Bearer wrong"), Scope::Read), Err(401));
        assert_eq!(check(Some("Bearer root"), Scope::Write), Ok(()));
        assert_eq!(check(Some("bearer reader"), Scope::Read), Ok(()));
        assert_eq!(check(Some("Bearer reader"), Scope::Write), Err(403));
    }
}
