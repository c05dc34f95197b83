//! Test tokens: HS256 signing ([`mint_hs256`]) and a claims builder ([`Claims`]) shaped
//! like djangorestframework-simplejwt's access tokens (`user_id`, `token_type`, `exp`),
//! plus the `groups` claim the node reads for extra groups.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

/// Signs `claims` with HS256 and `secret` (used as raw bytes, as Django's SECRET_KEY is).
pub fn mint_hs256(secret: &str, claims: &Value) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
}

/// Unix time now, in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JWT claims set, built field by field.
///
/// ```
/// use std::time::Duration;
/// use switchboard_client::Claims;
/// let token = Claims::access(42)
///     .groups(["room_1", "room_2"])
///     .ttl(Duration::from_secs(60))
///     .mint_hs256("secret")
///     .expect("signs");
/// assert_eq!(token.split('.').count(), 3);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    map: Map<String, Value>,
}

impl Claims {
    /// Only `user_id` (a number or a string: both are accepted by the node).
    pub fn new(user_id: impl Into<Value>) -> Self {
        let mut map = Map::new();
        map.insert("user_id".into(), user_id.into());
        Claims { map }
    }

    /// What SimpleJWT issues: `user_id`, `token_type: "access"` and `exp` one hour ahead.
    pub fn access(user_id: impl Into<Value>) -> Self {
        Claims::new(user_id)
            .token_type("access")
            .ttl(Duration::from_secs(3600))
    }

    /// Sets `exp` (Unix seconds).
    pub fn exp(self, unix_secs: u64) -> Self {
        self.claim("exp", unix_secs)
    }

    /// Sets `exp` to now plus `ttl`.
    pub fn ttl(self, ttl: Duration) -> Self {
        self.exp(unix_now().saturating_add(ttl.as_secs()))
    }

    /// Sets `exp` `ago` in the past (an expired token).
    pub fn expired(self, ago: Duration) -> Self {
        self.exp(unix_now().saturating_sub(ago.as_secs().max(1)))
    }

    /// Sets `nbf` (Unix seconds).
    pub fn nbf(self, unix_secs: u64) -> Self {
        self.claim("nbf", unix_secs)
    }

    /// Sets `token_type` (`access` passes; `refresh` is refused by the node).
    pub fn token_type(self, token_type: &str) -> Self {
        self.claim("token_type", token_type)
    }

    /// Sets the `groups` claim: the groups the connection joins at connect and may
    /// subscribe to.
    pub fn groups<I, S>(self, groups: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let list: Vec<Value> = groups
            .into_iter()
            .map(|g| Value::String(g.into()))
            .collect();
        self.claim("groups", list)
    }

    /// Sets any claim.
    pub fn claim(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.map.insert(name.to_owned(), value.into());
        self
    }

    /// Removes a claim (to test a token without `exp`, say).
    pub fn without(mut self, name: &str) -> Self {
        self.map.remove(name);
        self
    }

    /// The claims as JSON.
    pub fn to_value(&self) -> Value {
        Value::Object(self.map.clone())
    }

    /// Signs the claims with HS256.
    pub fn mint_hs256(&self, secret: &str) -> Result<String, jsonwebtoken::errors::Error> {
        mint_hs256(secret, &self.to_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_claims_look_like_simplejwt() {
        let v = Claims::access(42).groups(["a", "b"]).to_value();
        assert_eq!(v["user_id"], 42);
        assert_eq!(v["token_type"], "access");
        assert_eq!(v["groups"], serde_json::json!(["a", "b"]));
        let exp = v["exp"].as_u64().expect("exp is a number");
        assert!(exp > unix_now() + 3500 && exp <= unix_now() + 3600);
        let v = Claims::new("alice")
            .without("user_id")
            .claim("sub", "alice");
        assert_eq!(v.to_value(), serde_json::json!({"sub": "alice"}));
        assert!(
            Claims::new(1).expired(Duration::ZERO).to_value()["exp"].as_u64() < Some(unix_now())
        );
    }

    #[test]
    fn minted_tokens_verify_with_the_same_secret_only() {
        let token = Claims::access(7).mint_hs256("s3cret").expect("signs");
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims.clear();
        let ok = jsonwebtoken::decode::<Value>(
            &token,
            &jsonwebtoken::DecodingKey::from_secret(b"s3cret"),
            &validation,
        )
        .expect("verifies");
        assert_eq!(ok.claims["user_id"], 7);
        assert!(
            jsonwebtoken::decode::<Value>(
                &token,
                &jsonwebtoken::DecodingKey::from_secret(b"other"),
                &validation,
            )
            .is_err()
        );
    }
}
