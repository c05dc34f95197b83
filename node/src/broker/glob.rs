//! Redis-style glob matching (`*`, `?`, `[abc]`, `[^a-z]`, `\x`), as `PUBSUB CHANNELS`
//! and `KEYS` use it. Iterative, with backtracking only to the last `*` (runs of `*` count
//! as one), so a pattern costs at most O(pattern * text) steps per name; and the caller
//! can cap the steps over a whole listing ([`Budget`]), so no pattern can hold a
//! connection's task for long over many names.

/// The longest pattern accepted, in bytes.
pub const MAX_PATTERN: usize = 512;

/// Steps left for matching; one step is one pattern position tried against one byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget(pub u64);

/// Steps of glob matching one listing may spend (about 10 ms of one core): the cost of a
/// pattern grows with the number of names, so it is capped rather than trusted.
pub const LISTING_BUDGET: u64 = 10_000_000;

/// How a listing ([`list_matching`]) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    /// Every name was looked at.
    Whole,
    /// It stopped at the most names asked for.
    Full,
    /// The pattern spent [`LISTING_BUDGET`] first.
    Costly,
}

/// The names of `names` that match `pattern` (every one without a pattern), at most `max`
/// of them, within [`LISTING_BUDGET`] steps of matching; and how the listing ended.
pub fn list_matching<'a>(
    names: impl IntoIterator<Item = &'a str>,
    pattern: Option<&[u8]>,
    max: usize,
) -> (Vec<String>, Listed) {
    let mut budget = Budget(LISTING_BUDGET);
    let mut listed = Vec::new();
    for name in names {
        if listed.len() >= max {
            return (listed, Listed::Full);
        }
        let keep = match pattern {
            None => true,
            Some(p) => match glob_match_within(p, name.as_bytes(), &mut budget) {
                Some(keep) => keep,
                None => return (listed, Listed::Costly),
            },
        };
        if keep {
            listed.push(name.to_owned());
        }
    }
    (listed, Listed::Whole)
}

/// Whether `text` matches the Redis glob `pattern`.
pub fn glob_match(pattern: &[u8], text: &[u8]) -> bool {
    let mut budget = Budget(u64::MAX);
    glob_match_within(pattern, text, &mut budget).unwrap_or(false)
}

/// As [`glob_match`], spending `budget`; `None` when it runs out first.
pub fn glob_match_within(pattern: &[u8], text: &[u8], budget: &mut Budget) -> Option<bool> {
    let (mut p, mut t) = (0usize, 0usize);
    // Where to resume after the last `*`: (pattern index after it, text index).
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        budget.0 = budget.0.checked_sub(1)?;
        let step = match pattern.get(p) {
            Some(b'*') => {
                while pattern.get(p + 1) == Some(&b'*') {
                    p += 1;
                }
                star = Some((p + 1, t));
                p += 1;
                continue;
            }
            Some(b'?') => Some(p + 1),
            Some(b'[') => match_class(pattern, p, text[t]),
            Some(b'\\') if p + 1 < pattern.len() => (pattern[p + 1] == text[t]).then_some(p + 2),
            Some(&c) => (c == text[t]).then_some(p + 1),
            None => None,
        };
        match step {
            Some(next) => {
                p = next;
                t += 1;
            }
            None => match star {
                Some((sp, st)) => {
                    p = sp;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return Some(false),
            },
        }
    }
    Some(pattern[p.min(pattern.len())..].iter().all(|&c| c == b'*'))
}

/// Matches `c` against the class starting at `pattern[open] == b'['`; returns the index
/// after the class on a match. An unterminated class matches literally up to the end.
fn match_class(pattern: &[u8], open: usize, c: u8) -> Option<usize> {
    let mut i = open + 1;
    let negate = pattern.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    while i < pattern.len() && pattern[i] != b']' {
        if pattern[i] == b'\\' && i + 1 < pattern.len() {
            matched |= pattern[i + 1] == c;
            i += 2;
        } else if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            let (lo, hi) = if pattern[i] <= pattern[i + 2] {
                (pattern[i], pattern[i + 2])
            } else {
                (pattern[i + 2], pattern[i])
            };
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= pattern[i] == c;
            i += 1;
        }
    }
    (matched != negate).then_some((i + 1).min(pattern.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_glob_cases() {
        let cases: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("user_*", "user_42", true),
            ("user_*", "room_1", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("h\\*llo", "h*llo", true),
            ("h\\*llo", "hello", false),
            ("*a*b*c", "xxaxxbxxc", true),
            ("*a*b*c", "xxaxxbxx", false),
            ("", "", true),
            ("", "x", false),
        ];
        for (pattern, text, expected) in cases {
            assert_eq!(
                glob_match(pattern.as_bytes(), text.as_bytes()),
                *expected,
                "{pattern} vs {text}"
            );
        }
    }

    #[test]
    fn hostile_patterns_finish() {
        let pattern = "*a".repeat(200);
        let text = "a".repeat(2000) + "b";
        assert!(!glob_match(pattern.as_bytes(), text.as_bytes()));
    }

    #[test]
    fn runs_of_stars_cost_one_and_a_budget_stops_a_costly_listing() {
        let stars = "*".repeat(500) + "\x01";
        let name = "user_".repeat(50);
        let mut budget = Budget(10_000);
        assert_eq!(
            glob_match_within(stars.as_bytes(), name.as_bytes(), &mut budget),
            Some(false)
        );
        assert!(
            10_000 - budget.0 < 2 * name.len() as u64,
            "linear in the name"
        );
        // The worst case of last-star backtracking: the whole suffix retried at every
        // position of the text.
        let costly = "*".to_string() + &"a".repeat(200) + "b";
        let text = "a".repeat(250);
        let mut budget = Budget(1_000);
        assert_eq!(
            glob_match_within(costly.as_bytes(), text.as_bytes(), &mut budget),
            None
        );
        assert_eq!(budget, Budget(0));
    }
}
