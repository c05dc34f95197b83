//! Feeds arbitrary bytes to the RESP decoder in arbitrary chunk sizes: it must never
//! panic, never accept more than the limits, and every frame it returns must survive
//! an encode/decode round trip. Run: `cargo +nightly fuzz run resp_decoder` in proto/.
#![no_main]

use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use switchboard_proto::resp::{Decoder, Frame, Limits, Version, check, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, bytes)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_bulk_len: 4096,
        max_array_len: 256,
        max_depth: 8,
        max_inline_len: 1024,
        max_frame_len: 16 * 1024,
    };
    if let Ok(len) = check(bytes, &limits) {
        assert!(len <= bytes.len());
        let _ = parse(&Bytes::copy_from_slice(&bytes[..len]));
    }
    let mut decoder = Decoder::new(limits);
    let mut buf = BytesMut::new();
    for piece in bytes.chunks(usize::from(chunk).max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => round_trip(&frame),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
});

fn round_trip(frame: &Frame) {
    for version in [Version::Resp2, Version::Resp3] {
        let mut out = Vec::new();
        frame.encode(version, &mut out);
        let again = parse(&Bytes::from(out)).expect("what we encode, we decode");
        if version == Version::Resp3 && !contains_nan(frame) {
            let mut a = Vec::new();
            let mut b = Vec::new();
            frame.encode(version, &mut a);
            again.encode(version, &mut b);
            assert_eq!(a, b, "re-encoding is stable");
        }
    }
}

fn contains_nan(frame: &Frame) -> bool {
    match frame {
        Frame::Double(f) => f.is_nan(),
        Frame::Array(v) | Frame::Set(v) | Frame::Push(v) => v.iter().any(contains_nan),
        Frame::Map(p) | Frame::Attribute(p) => {
            p.iter().any(|(k, v)| contains_nan(k) || contains_nan(v))
        }
        _ => false,
    }
}
