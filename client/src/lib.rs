//! Switchboard client library, for tests, benches and Rust clients.
//!
//! - [`connection`]: one WebSocket connection with a token ([`Connection`],
//!   [`ConnectOptions`]); JSON ops with replies matched by id; frames read meanwhile
//!   kept in order.
//! - [`reconnect`]: [`ReconnectingClient`], which fails over between nodes with
//!   [`Backoff`] and replays its subscriptions, stopping for good on 4001/4003.
//! - [`token`]: HS256 test tokens ([`mint_hs256`], [`Claims`]).
//! - [`resp`]: a minimal RESP2 publisher ([`RespClient`]) and reply parser.
//! - [`histogram`]: a fixed-size latency [`Histogram`], mergeable across tasks.
//! - [`load`]: many connections at once ([`connect_many`], [`close_many`]) and source
//!   address spreading, for `switchboard-bench`.
//!
//! The protocol types (ops, replies, close codes) are `switchboard_proto::client`'s,
//! re-exported here as [`proto`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), switchboard_client::Error> {
//! use std::time::Duration;
//! use switchboard_client::{Claims, Connection, Incoming, RespClient};
//!
//! let token = Claims::access(42).groups(["news"]).mint_hs256("secret").expect("signs");
//! let mut ws = Connection::connect_url("ws://127.0.0.1:8001/ws/notifications/", Some(&token)).await?;
//! let mut resp = RespClient::connect("127.0.0.1:6379").await?;
//! assert_eq!(resp.publish("news", "hello").await?, 1);
//! assert_eq!(ws.recv_timeout(Duration::from_secs(5)).await?, Incoming::Text("hello".into()));
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod connection;
mod error;
pub mod histogram;
pub mod load;
pub mod reconnect;
pub mod resp;
pub mod token;

pub use connection::{ConnectOptions, Connection, Incoming, TokenIn};
pub use error::Error;
pub use histogram::Histogram;
pub use load::{ConnectMany, close_many, connect_many};
pub use reconnect::{Backoff, Event, ReconnectingClient};
pub use resp::{RespClient, RespValue};
pub use switchboard_proto::client as proto;
pub use token::{Claims, mint_hs256};
