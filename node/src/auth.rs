//! JWT verification for WebSocket clients.
//!
//! A token passes when it is signed with the configured key using an algorithm of that
//! key's family (HS* for a secret; RS*/PS* for an RSA key, ES* for an EC key, EdDSA for
//! an Ed25519 key), has an unexpired `exp`, an `nbf` in the past if present, and, if it
//! has a `token_type`, that type is `access`. djangorestframework-simplejwt's access
//! tokens pass unchanged. The user is `user_id` (SimpleJWT's default) or else `sub`,
//! as a number or a string.

use std::path::Path;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::Deserialize;

use crate::clock::unix_secs as unix_now;

/// Why a token was refused. The display text is the WebSocket close reason, so it is
/// short and says which check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in the query string nor in an `Authorization: Bearer` header.
    #[error("missing token")]
    Missing,
    /// Not a JWT, or its header or claims are not well-formed.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    BadSignature,
    /// The algorithm is not one of the configured key's family (`none` included).
    #[error("algorithm not allowed")]
    AlgorithmNotAllowed,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `exp` is absent.
    #[error("token has no exp")]
    NoExpiry,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
    /// `token_type` is present and is not `access` (a SimpleJWT refresh token, say).
    #[error("not an access token")]
    NotAccessToken,
    /// Neither `user_id` nor `sub` names a user.
    #[error("token names no user")]
    NoUser,
    /// The user id is a number that is not an integer of 64 bits (it would be rounded,
    /// and two users would share one id), or text a name may not hold.
    #[error("{0}")]
    BadUser(&'static str),
    /// `aud` or `iss` does not match what the node requires.
    #[error("wrong audience or issuer")]
    WrongAudienceOrIssuer,
    /// The header lists `crit` extensions, none of which this node understands (RFC 7515
    /// 4.1.11 says to refuse the token then).
    #[error("unsupported critical header")]
    UnsupportedCritical,
}

/// Why the verifier could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the JWT public key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "{path} is not a PEM RSA, EC (P-256/P-384) or Ed25519 public key; give a PEM \
         'PUBLIC KEY' file for --jwt-public-key"
    )]
    Unrecognised { path: String },
    #[error("the JWT secret is empty")]
    EmptySecret,
}

/// A verified token's meaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user id as a string (`42` for `"user_id": 42`).
    pub user: String,
    /// Groups from the `groups` claim.
    pub groups: Vec<String>,
    /// The `presence` claim: may query any user's presence.
    pub presence_any: bool,
    /// `exp`, Unix seconds.
    pub exp: u64,
    /// `iat`, Unix seconds (0 without one): a revocation refuses tokens issued before it.
    pub iat: u64,
}

#[derive(Debug, Deserialize)]
struct Claims {
    exp: Option<u64>,
    #[serde(default, deserialize_with = "seconds")]
    iat: u64,
    user_id: Option<serde_json::Value>,
    sub: Option<serde_json::Value>,
    token_type: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    presence: bool,
}

/// Checks tokens against one configured key.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// A verifier for HS256/384/512 tokens made with `secret`.
    pub fn hmac(secret: &[u8]) -> Result<Self, KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        Ok(Self::with(
            DecodingKey::from_secret(secret),
            vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        ))
    }

    /// A verifier for tokens signed by the private half of the PEM public key at `path`.
    pub fn public_key_file(path: &Path) -> Result<Self, KeyError> {
        let pem = std::fs::read(path).map_err(|source| KeyError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::public_key_pem(&pem).ok_or_else(|| KeyError::Unrecognised {
            path: path.display().to_string(),
        })
    }

    /// As [`Verifier::public_key_file`], from the PEM bytes.
    pub fn public_key_pem(pem: &[u8]) -> Option<Self> {
        if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            use Algorithm::*;
            return Some(Self::with(
                key,
                vec![RS256, RS384, RS512, PS256, PS384, PS512],
            ));
        }
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Some(Self::with(key, vec![Algorithm::ES256, Algorithm::ES384]));
        }
        if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            return Some(Self::with(key, vec![Algorithm::EdDSA]));
        }
        None
    }

    fn with(key: DecodingKey, algorithms: Vec<Algorithm>) -> Self {
        let mut validation = Validation::new(algorithms[0]);
        validation.algorithms = algorithms;
        validation.leeway = 0;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp"]);
        Verifier { key, validation }
    }

    /// Requires `aud` to be one of `audiences`.
    pub fn require_audience(&mut self, audiences: &[String]) {
        self.validation.set_audience(audiences);
        self.validation.validate_aud = true;
    }

    /// Requires `iss` to be one of `issuers`.
    pub fn require_issuer(&mut self, issuers: &[String]) {
        self.validation.set_issuer(issuers);
    }

    /// Verifies a token and says who it names.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.check_header(token)?;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidAlgorithm
                | ErrorKind::InvalidAlgorithmName
                | ErrorKind::UnsupportedAlgorithm
                | ErrorKind::MissingAlgorithm => AuthError::AlgorithmNotAllowed,
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                ErrorKind::MissingRequiredClaim(c) if c == "exp" => AuthError::NoExpiry,
                ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                    AuthError::WrongAudienceOrIssuer
                }
                _ => AuthError::Malformed,
            },
        )?;
        let claims = data.claims;
        if claims.token_type.as_deref().is_some_and(|t| t != "access") {
            return Err(AuthError::NotAccessToken);
        }
        let user = match claims.user_id.as_ref().and_then(user_string) {
            Some(user) => user,
            None => claims
                .sub
                .as_ref()
                .and_then(user_string)
                .ok_or(AuthError::NoUser)?,
        }?;
        Ok(Identity {
            user,
            groups: claims.groups,
            presence_any: claims.presence,
            exp: claims.exp.ok_or(AuthError::NoExpiry)?,
            iat: claims.iat,
        })
    }
}

impl Verifier {
    /// The header checks jsonwebtoken does not make with the reason we want: an
    /// algorithm outside the key's family (`none` included) is "algorithm not allowed",
    /// not a malformed token; any `crit` extension is refused.
    fn check_header(&self, token: &str) -> Result<(), AuthError> {
        match jsonwebtoken::decode_header(token) {
            Ok(header) if header.crit.is_some() => Err(AuthError::UnsupportedCritical),
            Ok(header) if !self.validation.algorithms.contains(&header.alg) => {
                Err(AuthError::AlgorithmNotAllowed)
            }
            Ok(_) => Ok(()),
            // An algorithm jsonwebtoken does not know (`none`, say) fails its header
            // parse; read the raw header to tell that from garbage.
            Err(_) => {
                let raw = token.split('.').next().unwrap_or_default();
                let json = base64::Engine::decode(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                    raw.trim_end_matches('='),
                )
                .ok()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok());
                match json.as_ref().and_then(|h| h.get("alg")) {
                    Some(serde_json::Value::String(_)) => Err(AuthError::AlgorithmNotAllowed),
                    _ => Err(AuthError::Malformed),
                }
            }
        }
    }
}

/// A NumericDate (RFC 7519): a number of seconds, perhaps with a fraction (dropped);
/// anything else counts as none.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    Ok(value
        .as_u64()
        .or_else(|| value.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
        .unwrap_or(0))
}

/// A user id from a claim (see [`crate::names::user_id`]).
fn user_string(value: &serde_json::Value) -> Option<Result<String, AuthError>> {
    crate::names::user_id(value).map(|user| user.map_err(AuthError::BadUser))
}

/// Signs an HS256 access token, as `switchboard token` and development mode do.
pub fn mint_hs256(
    secret: &[u8],
    user: &str,
    ttl_secs: u64,
    groups: &[String],
) -> Result<String, jsonwebtoken::errors::Error> {
    let now = unix_now();
    // A numeric user id is written as a number, as SimpleJWT does.
    let user_id = user
        .parse::<u64>()
        .map(serde_json::Value::from)
        .unwrap_or_else(|_| serde_json::Value::from(user));
    let mut claims = serde_json::json!({
        "token_type": "access",
        "user_id": user_id,
        "iat": now,
        "exp": now + ttl_secs,
    });
    if !groups.is_empty() {
        claims["groups"] = serde_json::json!(groups);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::encode;

    const SECRET: &[u8] = b"django-insecure-secret-key";

    fn hs(alg: Algorithm, claims: serde_json::Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .expect("signs")
    }

    fn fresh() -> serde_json::Value {
        serde_json::json!({"token_type": "access", "user_id": 42, "exp": unix_now() + 600, "jti": "x"})
    }

    #[test]
    fn a_simplejwt_access_token_passes() {
        let v = Verifier::hmac(SECRET).expect("key");
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            let id = v.verify(&hs(alg, fresh())).expect("valid");
            assert_eq!(id.user, "42");
        }
    }

    /// An HS256 token whose claims are exactly `payload` (a number beyond 64 bits
    /// written as its digits, which no JSON value of ours can hold).
    fn raw_hs256(payload: &str) -> String {
        use base64::Engine as _;
        use hmac::{Hmac, Mac};
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let signed = format!(
            "{}.{}",
            b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            b64.encode(payload)
        );
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET).expect("any key");
        mac.update(signed.as_bytes());
        format!("{signed}.{}", b64.encode(mac.finalize().into_bytes()))
    }

    #[test]
    fn user_ids_beyond_64_bits_or_with_controls_are_refused_not_rounded() {
        let v = Verifier::hmac(SECRET).expect("key");
        let exp = unix_now() + 60;
        for id in [
            "18446744073709551617",
            "18446744073709551618",
            "1e3",
            "42.5",
        ] {
            let t = raw_hs256(&format!(r#"{{"user_id": {id}, "exp": {exp}}}"#));
            assert!(
                matches!(v.verify(&t), Err(AuthError::BadUser(_))),
                "{id}: {:?}",
                v.verify(&t)
            );
        }
        // The extremes of 64-bit integers keep their digits.
        for id in ["18446744073709551615", "-9223372036854775808", "0"] {
            let t = raw_hs256(&format!(r#"{{"user_id": {id}, "exp": {exp}}}"#));
            assert_eq!(v.verify(&t).expect("valid").user, id);
        }
        // Larger ids as strings are fine.
        let t = raw_hs256(&format!(
            r#"{{"user_id": "18446744073709551617", "exp": {exp}}}"#
        ));
        assert_eq!(v.verify(&t).expect("valid").user, "18446744073709551617");
        for id in [r"a\u0000b", r"x\r\ny", r"user\u202e1"] {
            let t = raw_hs256(&format!(r#"{{"sub": "{id}", "exp": {exp}}}"#));
            assert!(matches!(v.verify(&t), Err(AuthError::BadUser(_))), "{id}");
        }
    }

    #[test]
    fn sub_and_string_ids_work() {
        let v = Verifier::hmac(SECRET).expect("key");
        let t = hs(
            Algorithm::HS256,
            serde_json::json!({"sub": "alice", "exp": unix_now() + 60, "groups": ["news"]}),
        );
        let id = v.verify(&t).expect("valid");
        assert_eq!(id.user, "alice");
        assert_eq!(id.groups, vec!["news"]);
    }

    #[test]
    fn each_bad_token_says_why() {
        let v = Verifier::hmac(SECRET).expect("key");
        let now = unix_now();
        let cases = [
            (
                hs(
                    Algorithm::HS256,
                    serde_json::json!({"user_id": 1, "exp": now - 1}),
                ),
                AuthError::Expired,
            ),
            (
                hs(Algorithm::HS256, serde_json::json!({"user_id": 1})),
                AuthError::NoExpiry,
            ),
            (
                hs(
                    Algorithm::HS256,
                    serde_json::json!({"user_id": 1, "exp": now + 60, "nbf": now + 3600}),
                ),
                AuthError::NotYetValid,
            ),
            (
                hs(
                    Algorithm::HS256,
                    serde_json::json!({"user_id": 1, "exp": now + 60, "token_type": "refresh"}),
                ),
                AuthError::NotAccessToken,
            ),
            (
                hs(Algorithm::HS256, serde_json::json!({"exp": now + 60})),
                AuthError::NoUser,
            ),
            ("not.a.jwt".to_string(), AuthError::Malformed),
        ];
        for (token, expected) in cases {
            assert_eq!(v.verify(&token), Err(expected));
        }
        let other = encode(
            &Header::new(Algorithm::HS256),
            &fresh(),
            &EncodingKey::from_secret(b"another secret"),
        )
        .expect("signs");
        assert_eq!(v.verify(&other), Err(AuthError::BadSignature));
    }

    #[test]
    fn alg_none_is_refused() {
        let v = Verifier::hmac(SECRET).expect("key");
        // {"alg":"none","typ":"JWT"} . {"user_id":1,"exp":<far future>} . (empty signature)
        let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
        let claims = "eyJ1c2VyX2lkIjoxLCJleHAiOjQxMDI0NDQ4MDB9";
        let err = v
            .verify(&format!("{header}.{claims}."))
            .expect_err("refused");
        assert_eq!(err, AuthError::AlgorithmNotAllowed);
        assert_eq!(err.to_string(), "algorithm not allowed");
    }

    #[test]
    fn an_algorithm_of_another_family_or_a_crit_header_is_refused() {
        let v = Verifier::hmac(SECRET).expect("key");
        // {"alg":"RS256","typ":"JWT"}: the right shape, the wrong family for a secret.
        let header = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9";
        let claims = "eyJ1c2VyX2lkIjoxLCJleHAiOjQxMDI0NDQ4MDB9";
        assert_eq!(
            v.verify(&format!("{header}.{claims}.c2ln")),
            Err(AuthError::AlgorithmNotAllowed)
        );
        let mut with_crit = Header::new(Algorithm::HS256);
        with_crit.crit = Some(vec!["exp".into()]);
        let token = encode(&with_crit, &fresh(), &EncodingKey::from_secret(SECRET)).expect("signs");
        assert_eq!(v.verify(&token), Err(AuthError::UnsupportedCritical));
        assert_eq!(v.verify("%%%.x.y"), Err(AuthError::Malformed));
    }

    #[test]
    fn mint_round_trips() {
        let v = Verifier::hmac(SECRET).expect("key");
        let t = mint_hs256(SECRET, "42", 60, &["news".to_string()]).expect("mints");
        let id = v.verify(&t).expect("valid");
        assert_eq!(id.user, "42");
        assert_eq!(id.groups, vec!["news"]);
    }
}
