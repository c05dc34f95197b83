use super::*;

#[test]
fn the_token_goes_into_the_query_string_encoded() {
    let mut o = ConnectOptions::new("ws://h/ws/").token("a.b+c");
    assert_eq!(o.request_url(), "ws://h/ws/?token=a.b%2Bc");
    o.url = "ws://h/ws/?x=1".into();
    assert_eq!(o.request_url(), "ws://h/ws/?x=1&token=a.b%2Bc");
    o.token_in = TokenIn::Bearer;
    assert_eq!(o.request_url(), "ws://h/ws/?x=1");
    o.token = None;
    o.token_in = TokenIn::Query;
    assert_eq!(o.request_url(), "ws://h/ws/?x=1");
}

#[test]
fn url_encoding_keeps_unreserved_and_escapes_the_rest() {
    assert_eq!(url_encode("aZ09-_.~"), "aZ09-_.~");
    assert_eq!(url_encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
    assert_eq!(url_encode(""), "");
}

#[test]
fn a_jwt_passes_the_query_unchanged() {
    let jwt = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VyX2lkIjo0Mn0.sig-_x";
    let o = ConnectOptions::new("ws://h/").token(jwt);
    assert_eq!(o.request_url(), format!("ws://h/?token={jwt}"));
}

#[test]
fn ids_are_filled_in_only_when_missing() {
    let mut op = ClientOp::Ping { id: None };
    *op.id_mut() = Some(5);
    assert_eq!(op.id(), Some(5));
    let reply: ServerReply =
        serde_json::from_str(r#"{"type":"pong","id":5}"#).expect("pong parses");
    assert_eq!(reply_id(&reply), Some(5));
    assert_eq!(
        parse_reply(&Incoming::Text("hello".into())),
        None,
        "a published payload is not a reply"
    );
}

#[tokio::test]
async fn wss_and_other_schemes_are_refused_with_a_reason() {
    let err = Connection::connect(ConnectOptions::new("wss://example.invalid/ws/"))
        .await
        .expect_err("no TLS");
    assert!(err.to_string().contains("wss://"), "{err}");
    let err = Connection::connect(ConnectOptions::new("http://example.invalid/"))
        .await
        .expect_err("not ws");
    assert!(matches!(err, Error::Url(_)), "{err}");
}
