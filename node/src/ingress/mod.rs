//! The node's listeners: WebSocket clients ([`ws`]), Redis-protocol publishers
//! ([`resp`]), and the small HTTP layer both the WebSocket port and the admin API use
//! ([`http`]).

pub mod http;
pub mod resp;
pub mod ws;
