//! What a bridge answer asks of a connection, decided with no socket and no clock: the
//! outcome of a `connect` (accepted with its subprotocol, rejected, failed) and, for any
//! call, the effects in the order the consumer made them (frames for this connection
//! alone, groups joined and left, a close).
//!
//! Daphne's behaviour is the reference, measured against Daphne 4.2 with Channels 4.3: a
//! consumer that closes before accepting (whatever the code) gets the handshake refused
//! with HTTP 403; one that raises, or sends before accepting, gets HTTP 500; after
//! accepting, an exception closes the socket with 1011; `close(code)` closes with that
//! code.

use base64::Engine;
use bytes::Bytes;
use switchboard_proto::bridge::{Action, Answer};

/// The close code an exception in the consumer ends an accepted connection with.
pub const CONSUMER_ERROR: u16 = 1011;

/// One thing the answer asks of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// A text frame to this connection alone.
    Text(String),
    /// A binary frame to this connection alone.
    Binary(Bytes),
    /// Join this group (cluster-wide: the node's subscription).
    Join(String),
    /// Leave this group.
    Leave(String),
    /// Close with this code and reason; nothing after it.
    Close(u16, String),
}

/// What a `connect` call's answer decides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Connected {
    /// The consumer accepted: the handshake completes (with `subprotocol`), then the
    /// effects run, those made before the accept (group joins) first.
    Accepted {
        subprotocol: Option<String>,
        effects: Vec<Effect>,
    },
    /// It closed before accepting, or never accepted: HTTP 403.
    Rejected,
    /// It raised, or sent a frame before accepting: HTTP 500, with why.
    Failed(String),
}

/// The outcome of a `connect` call. See the module header.
pub fn connected(answer: Answer) -> Connected {
    let Answer { actions, error, .. } = answer;
    let mut effects = Vec::new();
    let mut accepted = None;
    for action in actions {
        if accepted.is_none() {
            match action {
                Action::Accept { subprotocol } => accepted = Some(subprotocol),
                Action::Close { .. } => return Connected::Rejected,
                Action::Send { .. } => {
                    return Connected::Failed(
                        "the consumer sent a frame before accepting the connection".into(),
                    );
                }
                other => effects.extend(effect(other)),
            }
            continue;
        }
        if push(&mut effects, action) {
            return Connected::Accepted {
                subprotocol: accepted.flatten(),
                effects,
            };
        }
    }
    match (accepted, error) {
        (Some(subprotocol), error) => {
            if let Some(error) = error {
                effects.push(Effect::Close(CONSUMER_ERROR, consumer_error(&error)));
            }
            Connected::Accepted {
                subprotocol,
                effects,
            }
        }
        (None, Some(error)) => Connected::Failed(error),
        (None, None) => Connected::Rejected,
    }
}

/// The effects of a `receive` (or any later) call, in order: an `accept` means nothing
/// any more, nothing follows a close, and an exception closes with 1011 after what the
/// consumer did before it.
pub fn effects(answer: Answer) -> Vec<Effect> {
    let mut effects = Vec::new();
    for action in answer.actions {
        if push(&mut effects, action) {
            return effects;
        }
    }
    if let Some(error) = answer.error {
        effects.push(Effect::Close(CONSUMER_ERROR, consumer_error(&error)));
    }
    effects
}

/// Appends what `action` asks; true when it was a close (nothing follows it).
fn push(effects: &mut Vec<Effect>, action: Action) -> bool {
    let closes = matches!(action, Action::Close { .. });
    effects.extend(effect(action));
    closes
}

fn effect(action: Action) -> Option<Effect> {
    match action {
        Action::Accept { .. } => None,
        Action::Send {
            text: Some(text), ..
        } => Some(Effect::Text(text)),
        Action::Send {
            text: None,
            bytes: Some(b64),
        } => base64::engine::general_purpose::STANDARD
            .decode(b64)
            .ok()
            .map(|b| Effect::Binary(Bytes::from(b))),
        Action::Send { .. } => None,
        Action::GroupAdd { group } => Some(Effect::Join(group)),
        Action::GroupDiscard { group } => Some(Effect::Leave(group)),
        Action::Close { code, reason } => Some(Effect::Close(
            close_code(code),
            reason
                .map(|r| truncate(r, MAX_CLOSE_REASON))
                .unwrap_or_default(),
        )),
    }
}

/// The longest close reason a close frame carries (125 bytes of payload, less the code).
pub const MAX_CLOSE_REASON: usize = 123;

/// A close code a server may send: the consumer's, or 1000 for one RFC 6455 reserves
/// (1004-1006, 1015, under 1000, 1016-2999) or none.
pub fn close_code(code: Option<u16>) -> u16 {
    code.filter(|c| matches!(c, 1000..=1003 | 1007..=1014 | 3000..=4999))
        .unwrap_or(1000)
}

fn consumer_error(error: &str) -> String {
    truncate(format!("consumer error: {error}"), MAX_CLOSE_REASON)
}

/// `text` cut to at most `max` bytes, on a character boundary.
pub fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut at = max;
        while !text.is_char_boundary(at) {
            at -= 1;
        }
        text.truncate(at);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(actions: Vec<Action>, error: Option<&str>) -> Answer {
        Answer {
            actions,
            error: error.map(str::to_owned),
            duplicate: false,
        }
    }

    fn send(text: &str) -> Action {
        Action::Send {
            text: Some(text.into()),
            bytes: None,
        }
    }

    fn close(code: Option<u16>) -> Action {
        Action::Close { code, reason: None }
    }

    #[test]
    fn a_connect_is_accepted_with_what_came_before_and_after_the_accept() {
        let outcome = connected(answer(
            vec![
                Action::GroupAdd { group: "a".into() },
                Action::Accept {
                    subprotocol: Some("v1".into()),
                },
                send("hi"),
                Action::GroupDiscard { group: "a".into() },
                close(Some(4100)),
                send("never"),
            ],
            None,
        ));
        assert_eq!(
            outcome,
            Connected::Accepted {
                subprotocol: Some("v1".into()),
                effects: vec![
                    Effect::Join("a".into()),
                    Effect::Text("hi".into()),
                    Effect::Leave("a".into()),
                    Effect::Close(4100, String::new()),
                ],
            }
        );
    }

    #[test]
    fn a_close_before_accepting_rejects_and_a_send_before_it_fails_as_daphne_does() {
        assert_eq!(
            connected(answer(vec![close(Some(4005))], None)),
            Connected::Rejected
        );
        assert_eq!(connected(answer(vec![], None)), Connected::Rejected);
        assert!(matches!(
            connected(answer(vec![send("x")], None)),
            Connected::Failed(_)
        ));
        assert_eq!(
            connected(answer(vec![], Some("RuntimeError: boom"))),
            Connected::Failed("RuntimeError: boom".into())
        );
        // Accepted, then it raised: 1011 after what it sent.
        assert_eq!(
            connected(answer(
                vec![Action::Accept { subprotocol: None }, send("x")],
                Some("boom")
            )),
            Connected::Accepted {
                subprotocol: None,
                effects: vec![
                    Effect::Text("x".into()),
                    Effect::Close(1011, "consumer error: boom".into())
                ],
            }
        );
    }

    #[test]
    fn later_calls_keep_their_order_and_stop_at_a_close() {
        let got = effects(answer(
            vec![
                send("one"),
                Action::Send {
                    text: None,
                    bytes: Some("AAEC".into()),
                },
                Action::Accept { subprotocol: None },
                close(Some(999)),
                send("after"),
            ],
            Some("ignored after a close"),
        ));
        assert_eq!(
            got,
            vec![
                Effect::Text("one".into()),
                Effect::Binary(Bytes::from_static(&[0, 1, 2])),
                Effect::Close(1000, String::new()),
            ]
        );
        assert_eq!(
            effects(answer(vec![send("a")], Some("x"))),
            vec![
                Effect::Text("a".into()),
                Effect::Close(1011, "consumer error: x".into())
            ]
        );
    }

    #[test]
    fn close_codes_a_server_may_not_send_become_1000() {
        for (given, sent) in [
            (Some(1000), 1000),
            (Some(4999), 4999),
            (Some(3000), 3000),
            (Some(1011), 1011),
            (Some(1005), 1000),
            (Some(1006), 1000),
            (Some(2000), 1000),
            (Some(5000), 1000),
            (Some(0), 1000),
            (None, 1000),
        ] {
            assert_eq!(close_code(given), sent, "{given:?}");
        }
        assert_eq!(truncate("é".repeat(100), 123).len(), 122);
    }
}
