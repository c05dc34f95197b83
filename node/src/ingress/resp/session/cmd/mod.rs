//! What the shim's commands do, by family:
//! - [`conn`]: the connection's own state (`PING`, `ECHO`, `AUTH`, `HELLO`, `SELECT`,
//!   `CLIENT`).
//! - [`pubsub`]: `PUBLISH`, `SPUBLISH`, `PUBSUB`.
//! - [`introspect`]: `INFO`, `COMMAND`.
//!
//! channels_redis's commands are `super::channels`'.

pub mod conn;
pub mod introspect;
pub mod pubsub;

use bytes::Bytes;
use switchboard_proto::resp::Frame;

/// A bulk string from text.
pub fn bulk(s: &str) -> Frame {
    Frame::Bulk(Bytes::copy_from_slice(s.as_bytes()))
}
