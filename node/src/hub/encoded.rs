//! A published message encoded once ([`Encoded`]), and its JSON frame for positioned
//! connections ([`Positioned`]).

use std::sync::{Arc, OnceLock};

use base64::Engine;
use bytes::Bytes;
use switchboard_proto::client::ServerReply;
use switchboard_proto::peer::Position;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// A published message framed for positioned connections.
#[derive(Debug)]
pub struct Positioned {
    pub group: String,
    pub position: Option<Position>,
    pub frame: Message,
}

/// A published message, encoded once: every plain recipient gets a clone of the same
/// frame, which shares the payload bytes; positioned recipients share one JSON frame,
/// made on first need.
#[derive(Debug)]
pub struct Encoded {
    pub(super) raw: Message,
    position: Option<Position>,
    positioned: OnceLock<Arc<Positioned>>,
}

/// Whether a payload goes out as a text frame: it is UTF-8 (else binary). The rule
/// [`Encoded::new`] applies (validating once, as it makes the frame), for the `text` flag
/// history entries carry.
pub fn is_text(payload: &[u8]) -> bool {
    std::str::from_utf8(payload).is_ok()
}

impl Encoded {
    /// A text frame when the payload is UTF-8 ([`is_text`]), a binary frame otherwise.
    pub fn new(payload: Bytes) -> Self {
        let raw = match Utf8Bytes::try_from(payload.clone()) {
            Ok(text) => Message::Text(text),
            Err(_) => Message::Binary(payload),
        };
        Encoded {
            raw,
            position: None,
            positioned: OnceLock::new(),
        }
    }

    /// A message of a history group, at `position`.
    pub fn with_position(payload: Bytes, position: Position) -> Self {
        let mut encoded = Encoded::new(payload);
        encoded.position = Some(position);
        encoded
    }

    /// Whether the frame is a text frame (the payload is UTF-8).
    pub fn is_text(&self) -> bool {
        matches!(self.raw, Message::Text(_))
    }

    /// The message's position, in a history group.
    pub fn position(&self) -> Option<Position> {
        self.position
    }

    /// The JSON `message` frame positioned connections get.
    pub fn positioned_frame(&self, group: &str) -> Arc<Positioned> {
        self.positioned
            .get_or_init(|| {
                let (data, b64data) = match &self.raw {
                    Message::Text(text) => (Some(text.as_str().to_owned()), None),
                    other => (
                        None,
                        Some(
                            base64::engine::general_purpose::STANDARD
                                .encode(other.clone().into_data()),
                        ),
                    ),
                };
                let frame = ServerReply::Message {
                    group: group.to_owned(),
                    data,
                    b64data,
                    epoch: self.position.map(|p| p.epoch),
                    offset: self.position.map(|p| p.offset),
                };
                let text = serde_json::to_string(&frame).unwrap_or_default();
                Arc::new(Positioned {
                    group: group.to_owned(),
                    position: self.position,
                    frame: Message::Text(text.into()),
                })
            })
            .clone()
    }

    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
}
