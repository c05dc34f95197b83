//! What a token allows a connection to join.

/// Built from a token's `groups` claim (and `presence` claim).
///
/// An entry `news` joins the connection to `news` at connect and lets it re-subscribe
/// later. An entry ending in `*`, such as `room_*`, joins nothing at connect but lets the
/// connection subscribe to any group starting with `room_`. The connection's own user
/// group is always permitted and handled by the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    exact: Vec<String>,
    prefixes: Vec<String>,
    presence_any: bool,
    /// The token's `iat` (Unix seconds; 0 without one): a revocation closes the
    /// connections whose token was issued before it.
    issued_at: u64,
}

impl Permissions {
    /// Permissions from the token's `groups` entries and its `presence` flag (may query
    /// any user's presence, not only its own).
    pub fn new<I, S>(groups: I, presence_any: bool) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut permissions = Permissions {
            presence_any,
            ..Permissions::default()
        };
        for group in groups {
            let group = group.into();
            match group.strip_suffix('*') {
                Some(prefix) => permissions.prefixes.push(prefix.to_owned()),
                None if !group.is_empty() => permissions.exact.push(group),
                None => {}
            }
        }
        permissions
    }

    /// The same permissions, from a token issued at `iat` (Unix seconds).
    pub fn issued_at(mut self, iat: u64) -> Self {
        self.issued_at = iat;
        self
    }

    /// When the token was issued (Unix seconds; 0 when it did not say).
    pub fn issued(&self) -> u64 {
        self.issued_at
    }

    /// Whether a connection with these permissions may subscribe to `group`.
    pub fn permits(&self, group: &str) -> bool {
        self.exact.iter().any(|g| g == group)
            || self.prefixes.iter().any(|p| group.starts_with(p.as_str()))
    }

    /// The groups joined at connect: the exact entries.
    pub fn initial_groups(&self) -> impl Iterator<Item = &str> {
        self.exact.iter().map(String::as_str)
    }

    /// Whether the token may query any user's presence.
    pub fn presence_any(&self) -> bool {
        self.presence_any
    }
}
