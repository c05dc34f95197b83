//! A msgpack value written as Python's `json.dumps` writes the object msgpack-python
//! decodes it into, byte for byte: what a Django Channels consumer's `send_json(value)`
//! sent to the socket.
//!
//! `json.dumps` defaults: `", "` between items and `": "` after keys, keys in the order
//! they were sent, `ensure_ascii` (every character beyond ASCII as `\uXXXX`, a surrogate
//! pair beyond the BMP), the short escapes `\" \\ \n \r \t \b \f` and `\u00XX` for the
//! other control characters, floats as Python's `repr` (the shortest digits that round
//! trip; exponent form from 1e16 and below 1e-4; `NaN`, `Infinity`), integers exact,
//! `null`/`true`/`false`. Map keys that are not strings become strings as `json.dumps`
//! makes them (`1` -> `"1"`, `true` -> `"true"`, `None` -> `"null"`).
//!
//! What Python could not encode is written as near as JSON allows: msgpack binary as a
//! string when it is UTF-8 (else an array of its bytes), extension types as `null`.

use std::fmt::Write;

/// `value` as `json.dumps(value)` writes it.
pub fn dumps(value: &rmpv::Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &rmpv::Value) {
    use rmpv::Value as V;
    match value {
        V::Nil => out.push_str("null"),
        V::Boolean(true) => out.push_str("true"),
        V::Boolean(false) => out.push_str("false"),
        V::Integer(i) => write_integer(out, i),
        V::F32(f) => write_float(out, f64::from(*f)),
        V::F64(f) => write_float(out, *f),
        V::String(s) => match s.as_str() {
            Some(s) => write_string(out, s),
            None => write_string(out, &String::from_utf8_lossy(s.as_bytes())),
        },
        V::Binary(b) => match std::str::from_utf8(b) {
            Ok(s) => write_string(out, s),
            Err(_) => {
                out.push('[');
                for (i, byte) in b.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    let _ = write!(out, "{byte}");
                }
                out.push(']');
            }
        },
        V::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        V::Map(entries) => {
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_key(out, key);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
        V::Ext(_, _) => out.push_str("null"),
    }
}

fn write_integer(out: &mut String, i: &rmpv::Integer) {
    if let Some(n) = i.as_i64() {
        let _ = write!(out, "{n}");
    } else if let Some(n) = i.as_u64() {
        let _ = write!(out, "{n}");
    }
}

/// A key as `json.dumps` turns a dict key into a string.
fn write_key(out: &mut String, key: &rmpv::Value) {
    use rmpv::Value as V;
    match key {
        V::String(_) | V::Binary(_) => write_value(out, key),
        V::Nil | V::Boolean(_) | V::Integer(_) | V::F32(_) | V::F64(_) => {
            let mut text = String::new();
            write_value(&mut text, key);
            write_string(out, &text);
        }
        // Python refuses these as keys (TypeError); their JSON text is the nearest.
        other => {
            let mut text = String::new();
            write_value(&mut text, other);
            write_string(out, &text);
        }
    }
}

/// A string with `ensure_ascii`'s escapes.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            // `ensure_ascii` escapes everything outside ' '..='~' (DEL included).
            c if !(' '..='~').contains(&c) => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A float as Python's `float.__repr__` (what `json.dumps` uses), with its names for
/// the values JSON lacks.
pub fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` gives the shortest digits that round trip, as Python's repr does:
    // `d.ddde±x`. Python writes them in fixed notation while -4 <= x < 16.
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if negative {
        out.push('-');
    }
    if (-4..16).contains(&exponent) {
        // Fixed: the point goes after exponent + 1 digits.
        let point = exponent + 1;
        if point <= 0 {
            out.push_str("0.");
            for _ in 0..-point {
                out.push('0');
            }
            out.push_str(&digits);
        } else {
            let point = point as usize;
            if digits.len() <= point {
                out.push_str(&digits);
                for _ in digits.len()..point {
                    out.push('0');
                }
                out.push_str(".0");
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let sign = if exponent < 0 { '-' } else { '+' };
        let _ = write!(out, "e{sign}{:02}", exponent.unsigned_abs());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rmpv::Value as V;

    fn float(f: f64) -> String {
        let mut out = String::new();
        write_float(&mut out, f);
        out
    }

    #[test]
    fn floats_are_written_as_python_repr_writes_them() {
        // Each pair checked against CPython 3.11's repr.
        for (f, python) in [
            (0.0, "0.0"),
            (-0.0, "-0.0"),
            (1.0, "1.0"),
            (1.5, "1.5"),
            (123.0, "123.0"),
            (0.1, "0.1"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (0.000123, "0.000123"),
            (1.5e-7, "1.5e-07"),
            (1e15, "1000000000000000.0"),
            (1e16, "1e+16"),
            (1.5e16, "1.5e+16"),
            (123456789012345680.0, "1.2345678901234568e+17"),
            (1e300, "1e+300"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (std::f64::consts::PI, "3.141592653589793"),
            (-2.5, "-2.5"),
            (f64::NAN, "NaN"),
            (f64::INFINITY, "Infinity"),
            (f64::NEG_INFINITY, "-Infinity"),
            (f64::from(0.1f32), "0.10000000149011612"),
        ] {
            assert_eq!(float(f), python, "{f:e}");
        }
    }

    #[test]
    fn strings_are_escaped_as_ensure_ascii_does() {
        let mut out = String::new();
        write_string(&mut out, "a\"b\\c\n\r\t\u{8}\u{c}\u{1}\u{7f}é€😀/");
        assert_eq!(
            out,
            r#""a\"b\\c\n\r\t\b\f\u0001\u007f\u00e9\u20ac\ud83d\ude00/""#
        );
    }

    #[test]
    fn containers_keep_their_order_and_python_separators() {
        let value = V::Map(vec![
            ("z".into(), V::from(1)),
            (
                "a".into(),
                V::Array(vec![V::Nil, true.into(), false.into()]),
            ),
            (V::from(5), V::F64(2.0)),
            (V::Nil, V::Map(vec![])),
            ("big".into(), V::from(u64::MAX)),
            ("neg".into(), V::from(i64::MIN)),
        ]);
        assert_eq!(
            dumps(&value),
            r#"{"z": 1, "a": [null, true, false], "5": 2.0, "null": {}, "big": 18446744073709551615, "neg": -9223372036854775808}"#
        );
        assert_eq!(dumps(&V::from("test")), r#""test""#);
        assert_eq!(dumps(&V::Array(vec![])), "[]");
    }
}
