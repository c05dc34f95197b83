use super::http::dechunk;
use super::*;

#[test]
fn probe_asks_the_port_the_node_listens_on() {
    assert_eq!(probe_addr(None), "127.0.0.1:8001");
    assert_eq!(probe_addr(Some("")), "127.0.0.1:8001");
    assert_eq!(probe_addr(Some("0.0.0.0:9001")), "127.0.0.1:9001");
    assert_eq!(probe_addr(Some("[::]:9001")), "[::1]:9001");
    assert_eq!(probe_addr(Some("127.0.0.2:8101")), "127.0.0.2:8101");
    assert_eq!(probe_addr(Some("node-1.local:8001")), "node-1.local:8001");
}

#[test]
fn ttls_parse() {
    assert_eq!(parse_ttl("3600").expect("ok"), 3600);
    assert_eq!(parse_ttl("90s").expect("ok"), 90);
    assert_eq!(parse_ttl("30m").expect("ok"), 1800);
    assert_eq!(parse_ttl("1h").expect("ok"), 3600);
    assert_eq!(parse_ttl("7d").expect("ok"), 604_800);
    assert!(parse_ttl("1w").is_err());
    assert!(parse_ttl("h").is_err());
}

#[test]
fn chunked_answers_are_joined() {
    assert_eq!(
        dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
        "hello world"
    );
}

#[test]
fn segments_are_encoded() {
    assert_eq!(segment("user 42/x"), "user%2042%2Fx");
    assert_eq!(segment("user_42"), "user_42");
}
