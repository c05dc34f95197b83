//! Proving the cluster secret without sending it.
//!
//! After the QUIC (TLS 1.3) handshake each side sends `HMAC-SHA256(secret, label || role
//! || ekm || node id || incarnation)`, where `ekm` is keying material exported from this
//! TLS session and the incarnation names the node's data dir.
//! The other side recomputes it. A peer without the secret cannot make the proof; a
//! proof seen on one session is worthless on another (a relaying man in the middle has
//! two sessions with two different `ekm`s); and the secret never crosses the wire.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The exporter label and the proof's domain separator.
pub const LABEL: &[u8] = b"switchboard peer auth v1";
/// Bytes of keying material exported from the TLS session.
pub const EKM_LEN: usize = 32;

/// Which end of the connection makes the proof: the two proofs differ, so one cannot be
/// reflected back as the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Dialer,
    Acceptor,
}

fn mac(secret: &[u8], role: Role, ekm: &[u8], node: u64, incarnation: u64) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).unwrap_or_else(|_| unreachable_hmac_key());
    mac.update(LABEL);
    mac.update(match role {
        Role::Dialer => b"dialer",
        Role::Acceptor => b"accept",
    });
    mac.update(ekm);
    mac.update(&node.to_be_bytes());
    mac.update(&incarnation.to_be_bytes());
    mac
}

/// HMAC accepts keys of any length; this is never reached.
fn unreachable_hmac_key() -> Hmac<Sha256> {
    <Hmac<Sha256> as Mac>::new_from_slice(&[0u8; 32]).unwrap_or_else(|_| unreachable!())
}

/// The proof `node` (of `incarnation`) makes in `role` on the session with keying
/// material `ekm`.
pub fn prove(secret: &[u8], role: Role, ekm: &[u8], node: u64, incarnation: u64) -> Vec<u8> {
    mac(secret, role, ekm, node, incarnation)
        .finalize()
        .into_bytes()
        .to_vec()
}

/// HMAC-SHA256 of `message` with `key` (for tools and fuzz targets that sign tokens).
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable_hmac_key());
    mac.update(message);
    mac.finalize().into_bytes().to_vec()
}

/// Checks a proof in constant time.
pub fn verify(
    secret: &[u8],
    role: Role,
    ekm: &[u8],
    node: u64,
    incarnation: u64,
    proof: &[u8],
) -> bool {
    mac(secret, role, ekm, node, incarnation)
        .verify_slice(proof)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proof_verifies_only_with_the_same_secret_session_role_and_node() {
        let ekm = [7u8; EKM_LEN];
        let proof = prove(b"secret", Role::Dialer, &ekm, 3, 77);
        assert!(verify(b"secret", Role::Dialer, &ekm, 3, 77, &proof));
        assert!(
            !verify(b"other", Role::Dialer, &ekm, 3, 77, &proof),
            "wrong secret"
        );
        assert!(
            !verify(b"secret", Role::Acceptor, &ekm, 3, 77, &proof),
            "reflected"
        );
        assert!(
            !verify(b"secret", Role::Dialer, &[8u8; EKM_LEN], 3, 77, &proof),
            "replayed on another session"
        );
        assert!(
            !verify(b"secret", Role::Dialer, &ekm, 4, 77, &proof),
            "another node's id"
        );
        assert!(
            !verify(b"secret", Role::Dialer, &ekm, 3, 78, &proof),
            "another incarnation"
        );
        assert!(
            !verify(b"secret", Role::Dialer, &ekm, 3, 77, &proof[..31]),
            "truncated"
        );
    }
}
