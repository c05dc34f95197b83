//! Tests of the RESP codec: round trips, arbitrary splits, limits, hostile input.
#![allow(clippy::unwrap_used)]

use super::*;
use proptest::prelude::*;

fn decode_all(bytes: &[u8], chunk: usize) -> Result<Vec<Frame>, Error> {
    let mut decoder = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(frame) = decoder.decode(&mut buf)? {
            frames.push(frame);
        }
    }
    assert!(buf.is_empty(), "bytes left over: {buf:?}");
    Ok(frames)
}

fn encoded(frame: &Frame, version: Version) -> Vec<u8> {
    let mut out = Vec::new();
    frame.encode(version, &mut out);
    out
}

/// Frames that survive a RESP3 round trip exactly (no NaN: NaN != NaN; simple strings
/// without CR/LF; verbatim formats of three letters).
fn frame() -> impl Strategy<Value = Frame> {
    let leaf = prop_oneof![
        "[a-zA-Z0-9 ]{0,12}".prop_map(Frame::Simple),
        "[a-zA-Z0-9 ]{0,12}".prop_map(Frame::Error),
        any::<i64>().prop_map(Frame::Integer),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(|b| Frame::Bulk(Bytes::from(b))),
        Just(Frame::Null),
        any::<bool>().prop_map(Frame::Boolean),
        (-1e12f64..1e12).prop_map(Frame::Double),
        "-?[1-9][0-9]{0,30}".prop_map(Frame::BigNumber),
        ("[a-z]{3}", "[ -~]{0,20}").prop_map(|(format, text)| Frame::Verbatim {
            format,
            text: Bytes::from(text)
        }),
    ];
    leaf.prop_recursive(4, 64, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Set),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Frame::Push),
            proptest::collection::vec((inner.clone(), inner), 0..4).prop_map(Frame::Map),
        ]
    })
}

/// What a RESP2 client sees for a frame.
fn downgraded(frame: &Frame) -> Frame {
    match frame {
        Frame::Array(items) | Frame::Set(items) | Frame::Push(items) => {
            Frame::Array(items.iter().map(downgraded).collect())
        }
        Frame::Map(pairs) | Frame::Attribute(pairs) => Frame::Array(
            pairs
                .iter()
                .flat_map(|(k, v)| [downgraded(k), downgraded(v)])
                .collect(),
        ),
        Frame::Boolean(b) => Frame::Integer(i64::from(*b)),
        Frame::Double(f) => Frame::Bulk(Bytes::from(format!("{f}"))),
        Frame::BigNumber(s) => Frame::Bulk(Bytes::from(s.clone())),
        Frame::Verbatim { text, .. } => Frame::Bulk(text.clone()),
        other => other.clone(),
    }
}

proptest! {
    #[test]
    fn resp3_round_trips(frame in frame()) {
        let bytes = encoded(&frame, Version::Resp3);
        prop_assert_eq!(check(&bytes, &Limits::default()), Ok(bytes.len()));
        prop_assert_eq!(parse(&Bytes::from(bytes)).expect("parses"), frame);
    }

    #[test]
    fn resp2_gets_the_documented_downgrade(frame in frame()) {
        let bytes = encoded(&frame, Version::Resp2);
        let back = parse(&Bytes::from(bytes)).expect("parses");
        prop_assert_eq!(back, downgraded(&frame));
    }

    #[test]
    fn any_split_decodes_the_same(frames in proptest::collection::vec(frame(), 1..6), chunk in 1usize..64) {
        let mut stream = Vec::new();
        for f in &frames {
            f.encode(Version::Resp3, &mut stream);
        }
        prop_assert_eq!(decode_all(&stream, chunk).expect("decodes"), frames.clone());
        prop_assert_eq!(decode_all(&stream, stream.len()).expect("decodes"), frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256), chunk in 1usize..32) {
        let _ = check(&bytes, &Limits::default());
        let _ = parse(&Bytes::from(bytes.clone()));
        let mut decoder = Decoder::new(Limits::default());
        let mut buf = BytesMut::new();
        'feed: for piece in bytes.chunks(chunk) {
            buf.extend_from_slice(piece);
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
    }

    #[test]
    fn resp_like_garbage_never_panics(parts in proptest::collection::vec(prop_oneof![
        Just(&b"*"[..]), Just(&b"$"[..]), Just(&b"%"[..]), Just(&b"-1"[..]), Just(&b"3"[..]),
        Just(&b"\r\n"[..]), Just(&b"abc"[..]), Just(&b":"[..]), Just(&b"99999999999999999999"[..]),
    ], 0..40)) {
        let bytes: Vec<u8> = parts.concat();
        let _ = check(&bytes, &Limits::default());
        let _ = parse(&Bytes::from(bytes));
    }
}

#[test]
fn nulls_in_both_versions() {
    assert_eq!(parse(&Bytes::from_static(b"$-1\r\n")), Ok(Frame::Null));
    assert_eq!(parse(&Bytes::from_static(b"*-1\r\n")), Ok(Frame::Null));
    assert_eq!(parse(&Bytes::from_static(b"_\r\n")), Ok(Frame::Null));
    assert_eq!(encoded(&Frame::Null, Version::Resp2), b"$-1\r\n");
    assert_eq!(encoded(&Frame::Null, Version::Resp3), b"_\r\n");
}

#[test]
fn doubles_encode_as_redis_does() {
    assert_eq!(encoded(&Frame::Double(1.5), Version::Resp3), b",1.5\r\n");
    assert_eq!(
        encoded(&Frame::Double(f64::INFINITY), Version::Resp3),
        b",inf\r\n"
    );
    assert_eq!(
        encoded(&Frame::Double(f64::NEG_INFINITY), Version::Resp3),
        b",-inf\r\n"
    );
    assert_eq!(
        encoded(&Frame::Double(f64::NAN), Version::Resp3),
        b",nan\r\n"
    );
    assert!(matches!(parse(&Bytes::from_static(b",nan\r\n")), Ok(Frame::Double(f)) if f.is_nan()));
}

#[test]
fn each_limit_is_enforced_on_the_header() {
    let limits = Limits {
        max_bulk_len: 10,
        max_array_len: 3,
        max_depth: 3,
        max_inline_len: 16,
        max_frame_len: 1024,
    };
    assert_eq!(
        check(b"$11\r\n", &limits),
        Err(Error::BulkTooLong { len: 11, max: 10 })
    );
    assert_eq!(
        check(b"*4\r\n", &limits),
        Err(Error::ArrayTooLong { len: 4, max: 3 })
    );
    assert_eq!(
        check(b"%4\r\n", &limits),
        Err(Error::ArrayTooLong { len: 4, max: 3 })
    );
    assert_eq!(check(b"*1\r\n*1\r\n:1\r\n", &limits), Ok(12));
    assert_eq!(
        check(b"*1\r\n*1\r\n*1\r\n:1\r\n", &limits),
        Err(Error::TooDeep(3))
    );
    assert_eq!(
        check(b"+aaaaaaaaaaaaaaaaaaaa", &limits),
        Err(Error::LineTooLong(16))
    );
    let mut d = Decoder::new(limits);
    let mut buf = BytesMut::from(&b"PING aaaaaaaaaaaaaaaaaaaaaaaaaaa"[..]);
    assert_eq!(d.decode(&mut buf), Err(Error::InlineTooLong(16)));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    let bytes = b"*1\r\n".repeat(100_000);
    assert_eq!(check(&bytes, &Limits::default()), Err(Error::TooDeep(32)));
    // parse never saw check's verdict here and still refuses without recursing forever.
    assert!(parse(&Bytes::from(bytes)).is_err());
}

#[test]
fn malformed_frames_say_what_is_wrong() {
    let l = Limits::default();
    assert!(matches!(
        check(b"$x\r\n", &l),
        Err(Error::InvalidNumber { .. })
    ));
    assert!(matches!(
        check(b"$-2\r\n", &l),
        Err(Error::InvalidNumber { .. })
    ));
    assert!(matches!(
        check(b"*-5\r\n", &l),
        Err(Error::InvalidNumber { .. })
    ));
    assert!(matches!(
        check(b":12a\r\n", &l),
        Err(Error::InvalidNumber { .. })
    ));
    assert_eq!(check(b"$3\r\nabcdef\r\n", &l), Err(Error::MissingCrlf));
    assert_eq!(check(b"A\r\n", &l), Err(Error::UnknownType(b'A')));
    assert_eq!(check(b"*2\r\n$4\r\nPING\r\n", &l), Err(Error::Incomplete));
    assert_eq!(
        Error::BulkTooLong { len: 5, max: 4 }.to_string(),
        "bulk string of 5 bytes exceeds the limit of 4"
    );
}

#[test]
fn inline_commands_split_like_redis() {
    let mut d = Decoder::new(Limits::default());
    let mut buf = BytesMut::from(&b"PING\r\nSET a \"b c\\n\" 'd e'\nPUBLISH g x\r\n"[..]);
    let args = |f: Frame| -> Vec<Vec<u8>> {
        f.into_args()
            .expect("a command")
            .into_iter()
            .map(|b| b.to_vec())
            .collect()
    };
    assert_eq!(
        args(d.decode(&mut buf).unwrap().unwrap()),
        vec![b"PING".to_vec()]
    );
    assert_eq!(
        args(d.decode(&mut buf).unwrap().unwrap()),
        vec![
            b"SET".to_vec(),
            b"a".to_vec(),
            b"b c\n".to_vec(),
            b"d e".to_vec()
        ]
    );
    assert_eq!(args(d.decode(&mut buf).unwrap().unwrap()).len(), 3);
    assert_eq!(d.decode(&mut buf), Ok(None));
    let mut bad = BytesMut::from(&b"SET \"a\n"[..]);
    assert_eq!(d.decode(&mut bad), Err(Error::UnbalancedQuotes));
}

#[test]
fn a_big_bulk_in_small_reads_is_not_rescanned() {
    let payload = vec![b'x'; 10 * 1024 * 1024];
    let mut stream = Vec::new();
    Frame::Array(vec![
        Frame::bulk("PUBLISH"),
        Frame::bulk("g"),
        Frame::bulk(payload.clone()),
    ])
    .encode(Version::Resp2, &mut stream);
    let mut d = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut reads = 0u64;
    for piece in stream.chunks(4096) {
        reads += 1;
        buf.extend_from_slice(piece);
        while let Some(f) = d.decode(&mut buf).expect("valid") {
            frames.push(f);
        }
    }
    assert_eq!(frames.len(), 1);
    assert!(reads > 2000);
    // Once the bulk's length is known, the decoder waits for all of it: a handful of walks.
    assert!(d.walks() < 10, "{} walks for {reads} reads", d.walks());
}

#[test]
fn a_big_array_in_small_reads_is_walked_once() {
    let mut stream = Vec::new();
    Frame::Array((0..50_000).map(|i| Frame::bulk(i.to_string())).collect())
        .encode(Version::Resp2, &mut stream);
    let mut d = Decoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut got = None;
    for piece in stream.chunks(1024) {
        buf.extend_from_slice(piece);
        if let Some(f) = d.decode(&mut buf).expect("valid") {
            got = Some(f);
        }
    }
    match got {
        Some(Frame::Array(items)) => assert_eq!(items.len(), 50_000),
        other => panic!("{other:?}"),
    }
    // The walk resumed where it stopped: total work is linear in the bytes. Each resumed
    // walk starts at an element boundary, so a walk re-reads at most one element.
    assert!(d.walks() <= (stream.len() / 1024 + 2) as u64);
}

#[test]
fn into_args_wants_an_array_of_strings() {
    assert_eq!(Frame::Integer(1).into_args(), Err(Error::NotACommand));
    assert_eq!(
        Frame::Array(vec![Frame::bulk("a"), Frame::Integer(1)]).into_args(),
        Err(Error::NotACommand)
    );
    assert_eq!(
        Frame::Array(vec![Frame::bulk("a"), Frame::Simple("b".into())]).into_args(),
        Ok(vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")])
    );
}

#[test]
fn a_frame_announcing_more_than_the_frame_limit_is_refused_on_its_headers() {
    let limits = Limits {
        max_bulk_len: 100,
        max_frame_len: 250,
        ..Limits::default()
    };
    // Three bulks of 100 bytes: each passes the bulk limit, the third breaks the frame
    // limit as soon as its header arrives (before its bytes).
    let bulk = format!("$100\r\n{}\r\n", "x".repeat(100));
    let mut buf = BytesMut::from(format!("*3\r\n{bulk}{bulk}$100\r\n").as_bytes());
    let mut decoder = Decoder::new(limits);
    assert!(matches!(
        decoder.decode(&mut buf),
        Err(Error::FrameTooLong { max: 250, .. })
    ));
    // An aggregate header announcing more elements than can fit is refused at once.
    let mut buf = BytesMut::from(&b"*1000\r\n"[..]);
    assert!(matches!(
        Decoder::new(limits).decode(&mut buf),
        Err(Error::FrameTooLong { .. })
    ));
    // A frame within the limit passes.
    let mut buf = BytesMut::from(format!("*2\r\n{bulk}{bulk}").as_bytes());
    assert!(matches!(
        Decoder::new(limits).decode(&mut buf),
        Ok(Some(Frame::Array(_)))
    ));
    // Inline commands are bounded by it too.
    let tight = Limits {
        max_frame_len: 8,
        ..Limits::default()
    };
    let mut buf = BytesMut::from(&b"PING hello world"[..]);
    assert!(matches!(
        Decoder::new(tight).decode(&mut buf),
        Err(Error::InlineTooLong(8))
    ));
}
