//! Which groups keep history, and how much: `--history PATTERN=SIZE[,TTL]`, several rules
//! comma-separated (`user_*=100,10m,room_*=50`); the first rule whose glob matches a group
//! applies. A TTL follows its rule's size after a comma.

use crate::broker::glob_match;
pub use crate::config::HistoryRule as Rule;

/// Every rule, in order (as `--history` gave them; parsed in `config`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules(Vec<Rule>);

impl Rules {
    pub fn new(rules: Vec<Rule>) -> Self {
        Rules(rules)
    }

    /// The rule of `group`, if it keeps history.
    pub fn of(&self, group: &str) -> Option<&Rule> {
        self.0
            .iter()
            .find(|r| glob_match(r.pattern.as_bytes(), group.as_bytes()))
    }

    /// Whether no group keeps history.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::parse_history;
    use std::time::Duration;

    #[test]
    fn rules_parse_with_their_ttls_and_the_first_match_applies() {
        let rules = Rules::new(parse_history("user_*=100,10m,room_*=50,*=5").expect("parses"));
        assert_eq!(
            rules.of("user_42"),
            Some(&Rule {
                pattern: "user_*".into(),
                size: 100,
                ttl: Some(Duration::from_secs(600))
            })
        );
        assert_eq!(
            rules.of("room_1").map(|r| (r.size, r.ttl)),
            Some((50, None))
        );
        assert_eq!(rules.of("news").map(|r| r.size), Some(5));
        assert!(parse_history("").expect("empty").is_empty());
        assert!(parse_history("user_*").is_err());
        assert!(parse_history("user_*=0").is_err());
        assert!(parse_history("user_*=x").is_err());
        assert!(parse_history("10m").is_err(), "a TTL with no rule");
        assert!(parse_history("a=1,10m,5m").is_err(), "two TTLs");
        assert!(parse_history("a=1,10w").is_err());
        assert!(parse_history("=5").is_err());
    }
}
