//! JWT handling: arbitrary token text, and arbitrary claims JSON signed with the right
//! key (so the claim handling itself is reached: user ids, groups, exp types). Never a
//! panic; a verified identity always names a user.
//! Run: `cargo +nightly fuzz run jwt` in node/.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use switchboard_node::auth::Verifier;

const SECRET: &[u8] = b"fuzz-secret";

fn b64url(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| (n << 8) | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    static VERIFIER: OnceLock<Verifier> = OnceLock::new();
    let verifier = VERIFIER.get_or_init(|| Verifier::hmac(SECRET).expect("key"));
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        // A well-signed token whose header and claims are the fuzzer's.
        let split = rest.len().min(usize::from(mode >> 1));
        let (header, claims) = rest.split_at(split);
        let header = if header.is_empty() { &br#"{"alg":"HS256","typ":"JWT"}"#[..] } else { header };
        let signing = format!("{}.{}", b64url(header), b64url(claims));
        let tag = hmac_sha256(SECRET, signing.as_bytes());
        format!("{signing}.{}", b64url(&tag))
    };
    if let Ok(identity) = verifier.verify(&token) {
        assert!(!identity.user.is_empty());
    }
});

/// HMAC-SHA256, through the node's own token minting (HS256) is not reusable with an
/// arbitrary header, so it is computed here from the `hmac`/`sha2` the node depends on.
fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    switchboard_node::cluster::auth::hmac_sha256(key, message)
}
