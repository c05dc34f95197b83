//! Switchboard's wire types and codecs, with no IO and no runtime.
//!
//! - [`resp`]: RESP2 and RESP3 frames, decoded in two phases (check, then parse)
//!   over a byte slice with explicit limits, and encoded for either protocol version.
//! - [`client`]: the WebSocket client protocol: JSON ops, replies and close codes.
//! - [`peer`]: the node-to-node envelope carried over QUIC, and the presence records
//!   the cluster agrees on.
//! - [`bridge`]: what a node sends the backend bridge for a connection's events, and
//!   what the bridge answers.
#![forbid(unsafe_code)]

pub mod bridge;
pub mod client;
pub mod peer;
pub mod resp;
