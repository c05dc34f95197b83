//! The one encoding of everything the Raft layer stores or sends: bincode 2 (serde
//! mode, standard config), with a limit on what decoding may allocate, as the peer
//! envelope has.

use serde::Serialize;
use serde::de::DeserializeOwned;
use switchboard_proto::peer::MAX_PEER_MESSAGE;

/// The most a decoded RPC may claim: what one peer message can carry.
pub const MAX_RPC: usize = MAX_PEER_MESSAGE;
/// The most a decoded stored value (a log entry, the snapshot file) may claim. Stored
/// values are this node's own, so the bound is generous: it only stops a corrupt length
/// field from asking for an absurd allocation.
pub const MAX_STORED: usize = 1024 * 1024 * 1024;

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value could not be encoded (should not happen for well-formed values).
    #[error("cannot encode a Raft value: {0}")]
    Encode(#[from] bincode::error::EncodeError),
    /// The bytes are not a value of the expected type, or claim more than the limit.
    #[error("malformed Raft value: {0}")]
    Decode(#[from] bincode::error::DecodeError),
    /// Bytes were left over after the value.
    #[error("{0} trailing bytes after a Raft value")]
    Trailing(usize),
}

/// Encodes `value`.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(bincode::serde::encode_to_vec(
        value,
        bincode::config::standard(),
    )?)
}

/// Decodes an RPC or its reply from a peer: at most [`MAX_RPC`], nothing left over.
pub fn decode_rpc<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<MAX_RPC>();
    finish(
        bincode::serde::decode_from_slice(bytes, config)?,
        bytes.len(),
    )
}

/// Decodes a value this node stored: at most [`MAX_STORED`], nothing left over.
pub fn decode_stored<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let config = bincode::config::standard().with_limit::<MAX_STORED>();
    finish(
        bincode::serde::decode_from_slice(bytes, config)?,
        bytes.len(),
    )
}

fn finish<T>((value, used): (T, usize), len: usize) -> Result<T, CodecError> {
    if used != len {
        return Err(CodecError::Trailing(len - used));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_leftovers_are_refused() {
        let bytes = encode(&(7u64, "seven".to_string())).expect("encodes");
        let back: (u64, String) = decode_rpc(&bytes).expect("decodes");
        assert_eq!(back, (7, "seven".to_string()));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_stored::<(u64, String)>(&longer),
            Err(CodecError::Trailing(1))
        ));
    }

    #[test]
    fn a_huge_claimed_length_is_refused_without_allocating() {
        // A Vec<u64> claiming u64::MAX elements (varint 253 + 8 bytes).
        let bytes = [253u8, 255, 255, 255, 255, 255, 255, 255, 255];
        assert!(matches!(
            decode_rpc::<Vec<u64>>(&bytes),
            Err(CodecError::Decode(_))
        ));
    }
}
