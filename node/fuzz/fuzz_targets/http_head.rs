//! The HTTP head parser of the WebSocket port: arbitrary bytes, never a panic, and a
//! parsed head's query parameters and headers can be read.
//! Run: `cargo +nightly fuzz run http_head` in node/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_node::ingress::http::{parse_head, percent_decode};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = parse_head(data) {
        let _ = req.query_param("token");
        let _ = req.header_has_token("connection", "upgrade");
        let _ = req.header("sec-websocket-key");
        assert!(req.leftover.len() <= data.len());
    }
    let _ = percent_decode(&String::from_utf8_lossy(data));
});
