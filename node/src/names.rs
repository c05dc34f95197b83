//! What a user id or a group name may hold. Every way in (a token's claims, a client's
//! op, a RESP command, the admin API) asks here, so that a name that cannot be shown,
//! logged or compared safely never reaches a table: C0 and C1 control characters (NUL,
//! CR, LF, DEL...) would split log lines and protocol frames, and bidirectional controls
//! (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) make one name look like
//! another in a dashboard.

/// Why a name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("empty")]
    Empty,
    #[error("longer than {0} bytes")]
    TooLong(usize),
    #[error("holds a control character")]
    Control,
    #[error("holds a bidirectional formatting character")]
    Bidi,
}

/// `name` is 1 to `max` bytes of text with no control or bidirectional formatting
/// character.
pub fn check(name: &str, max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > max {
        return Err(NameError::TooLong(max));
    }
    // Names are printable ASCII almost always: one pass over the bytes passes those.
    if name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    for c in name.chars() {
        if c.is_control() {
            return Err(NameError::Control);
        }
        if is_bidi_control(c) {
            return Err(NameError::Bidi);
        }
    }
    Ok(())
}

/// Longest user id, in bytes (the broker's longest group name: the connection's user
/// group, longer still, is checked where it is made).
pub const MAX_USER_ID: usize = 256;

/// A user id from JSON (a token's claim, an admin request): `None` when the value names
/// no user (absent, empty, another type), an error when it names one badly. A number
/// beyond 64-bit integers (or with a fraction) is refused rather than rounded: JSON
/// parsers read it as a float, and 18446744073709551617 and 18446744073709551618 would
/// become one user.
pub fn user_id(value: &serde_json::Value) -> Option<Result<String, &'static str>> {
    match value {
        serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => Some(Ok(n.to_string())),
        serde_json::Value::Number(_) => Some(Err(
            "bad user id: a number must be an integer of 64 bits (send larger ids as strings)",
        )),
        serde_json::Value::String(s) if !s.is_empty() => Some(match check(s, MAX_USER_ID) {
            Ok(()) => Ok(s.clone()),
            Err(NameError::TooLong(_)) => Err("user id too long: over 256 bytes"),
            Err(_) => Err("bad user id: it holds a control or bidirectional formatting character"),
        }),
        _ => None,
    }
}

/// The characters Unicode's bidirectional algorithm treats as formatting controls
/// (UAX #9, table 1: embeddings, overrides, isolates and the implicit marks).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_pass() {
        for name in [
            "user_42",
            "room:lobby",
            "événements",
            "группа",
            "群组",
            "a b",
            "😀",
        ] {
            assert_eq!(check(name, 256), Ok(()), "{name}");
        }
    }

    #[test]
    fn controls_bidi_empty_and_long_names_are_refused() {
        for (name, why) in [
            ("", NameError::Empty),
            ("a\0b", NameError::Control),
            ("a\r\nb", NameError::Control),
            ("tab\t", NameError::Control),
            ("del\x7f", NameError::Control),
            ("c1\u{85}é", NameError::Control),
            ("user_\u{202E}1", NameError::Bidi),
            ("\u{2066}x\u{2069}", NameError::Bidi),
            ("mark\u{200F}é", NameError::Bidi),
            ("arabic\u{061C}", NameError::Bidi),
        ] {
            assert_eq!(check(name, 256), Err(why), "{name:?}");
        }
        assert_eq!(check(&"g".repeat(257), 256), Err(NameError::TooLong(256)));
        assert_eq!(check(&"g".repeat(256), 256), Ok(()));
        // A multi-byte name is measured in bytes.
        assert_eq!(check(&"é".repeat(129), 256), Err(NameError::TooLong(256)));
    }
}
