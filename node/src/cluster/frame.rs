//! Peer messages on a QUIC stream: each is a big-endian `u32` length, then the
//! bincode-encoded [`PeerMessage`] (see `switchboard_proto::peer`). A reader says how
//! large a message it accepts, so a peer that has not proved the cluster secret cannot
//! make the node buffer more than a handshake frame.

use switchboard_proto::peer::{MAX_PEER_MESSAGE, PeerCodecError, PeerMessage};

/// The largest frame read before a peer has proved the cluster secret: an `Auth` (a node
/// id and a 32-byte proof) or a `Hello` (four addresses) fits many times over.
pub const MAX_HANDSHAKE_FRAME: usize = 4 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The stream ended or failed before a whole frame.
    #[error("peer stream ended: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream could not be written.
    #[error("peer stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// The declared length is over what this reader accepts.
    #[error("peer frame of {len} bytes exceeds the {max}-byte limit here")]
    TooLarge { len: usize, max: usize },
    /// The bytes are not a peer message of this protocol.
    #[error(transparent)]
    Codec(#[from] PeerCodecError),
}

/// Appends one frame holding `message` to `out`.
pub fn encode_into(out: &mut Vec<u8>, message: &PeerMessage) -> Result<(), PeerCodecError> {
    let body = message.encode()?;
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(())
}

/// Writes one frame.
pub async fn write_frame(
    send: &mut quinn::SendStream,
    message: &PeerMessage,
) -> Result<(), FrameError> {
    let mut frame = Vec::new();
    encode_into(&mut frame, message)?;
    send.write_all(&frame).await?;
    Ok(())
}

/// Reads one frame of at most `max` bytes ([`MAX_PEER_MESSAGE`] once the peer is
/// authenticated, [`MAX_HANDSHAKE_FRAME`] before).
pub async fn read_frame(
    recv: &mut quinn::RecvStream,
    max: usize,
) -> Result<PeerMessage, FrameError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    let max = max.min(MAX_PEER_MESSAGE);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await?;
    Ok(PeerMessage::decode(&body)?)
}
