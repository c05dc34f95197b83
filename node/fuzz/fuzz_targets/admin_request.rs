//! The admin API's request handling before any IO, from arbitrary bytes: the route of a
//! method and path, the guard's checks of Host, Origin and the bearer token, the
//! presence events' query and `Last-Event-ID`, and the JSON bodies of publish, broadcast
//! and control requests (the bytes after the head). Never a panic.
//! Run: `cargo +nightly fuzz run admin_request` in node/.
#![no_main]

use hyper::Method;
use libfuzzer_sys::fuzz_target;
use switchboard_node::admin::control::{self, Kind};
use switchboard_node::admin::events::Start;
use switchboard_node::admin::guard::{self, Head};
use switchboard_node::admin::{Route, publish};
use switchboard_node::ingress::http::parse_head;
use switchboard_node::secrets::AdminTokens;

fuzz_target!(|data: &[u8]| {
    let _ = AdminTokens::parse(&String::from_utf8_lossy(data));
    let Ok(Some(req)) = parse_head(data) else {
        return;
    };
    let head = Head {
        host: req.header("host"),
        origin: req.header("origin"),
        authorization: req.header("authorization"),
        tls: req.header("x-tls").is_some(),
    };
    let _ = guard::bearer(&head);
    let _ = guard::host_allowed(head.host.unwrap_or_default(), &["node-1".to_owned()]);
    if let Ok(method) = Method::from_bytes(req.method.as_bytes())
        && let Ok(route) = Route::of(&method, &req.path)
    {
        let tokens = AdminTokens::parse("adm\nreader read\npub publish\n").expect("tokens");
        let _ = guard::admit(&head, route.scope(), Some(&tokens), &[]);
        let _ = guard::admit(&head, route.scope(), None, &[]);
    }
    let _ = Start::parse(req.query.as_deref().unwrap_or_default(), req.header("last-event-id"));
    let body = &req.leftover;
    let _ = publish::parse(body, false, 64 * 1024);
    let _ = publish::parse(body, true, 64 * 1024);
    for kind in [Kind::Disconnect, Kind::Subscribe, Kind::Unsubscribe, Kind::Revoke] {
        let _ = control::parse(kind, body, 1_800_000_000);
    }
});
