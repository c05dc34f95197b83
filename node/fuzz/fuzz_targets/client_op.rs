//! The WebSocket client protocol: any text as a JSON op. Never a panic; an op that
//! parses serializes and parses back to itself.
//! Run: `cargo +nightly fuzz run client_op` in node/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_proto::client::ClientOp;

fuzz_target!(|data: &[u8]| {
    if let Ok(op) = serde_json::from_slice::<ClientOp>(data) {
        let text = serde_json::to_string(&op).expect("serializes");
        assert_eq!(serde_json::from_str::<ClientOp>(&text).expect("parses back"), op);
    }
});
