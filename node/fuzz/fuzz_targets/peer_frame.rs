//! What a peer can send: the peer envelope (with its 16 MiB decode limit) and the Raft
//! RPCs inside `Raft { body }` (the Raft codec's limits). Never a panic; a decoded
//! message re-encodes and decodes to itself.
//! Run: `cargo +nightly fuzz run peer_frame` in node/.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchboard_node::raft::codec::decode_rpc;
use switchboard_node::raft::network::{Reply, Rpc};
use switchboard_proto::peer::PeerMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = PeerMessage::decode(data) {
        let bytes = message.encode().expect("a decoded message encodes");
        assert_eq!(PeerMessage::decode(&bytes).expect("and decodes"), message);
    }
    let _ = decode_rpc::<Rpc>(data);
    let _ = decode_rpc::<Reply>(data);
});
