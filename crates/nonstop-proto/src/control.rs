//! Control messages: the small, rarely sent frame payloads, encoded with postcard.

use crate::{CheckpointId, Term};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use thiserror::Error;

/// One checkpoint as some backup held it: checkpoint numbers are ordered within a term, and
/// one primary cuts each `(term, checkpoint)` once, so two images that name the same one are
/// byte for byte the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ImageState {
    /// The term of the primary that cut it.
    pub term: Term,
    /// Its number in that term.
    pub checkpoint: CheckpointId,
}

/// Primary to backup, first frame of a session: the region the primary mirrors. The backup
/// refuses a primary whose region differs from its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attach {
    /// Virtual address at which the region is mapped on every node.
    pub region_base: u64,
    /// Length of the region in bytes.
    pub region_len: u64,
    /// Page size in bytes.
    pub page_size: u32,
    /// A rebase: the primary resumed from this image (it was promoted from a backup) and asks
    /// what the backup holds, so that the first checkpoint carries only the pages that
    /// differ. The backup answers with [`Holding`] and keeps its image until that checkpoint
    /// closes.
    pub rebase: Option<ImageState>,
}

/// Backup to primary, the answer to an [`Attach`] that asks for a rebase.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    /// What the image holds (`None`: nothing the primary can build on).
    pub held: Option<ImageState>,
    /// The pages this backup wrote after the state the primary resumed from, if its image
    /// descends from it (it applied checkpoints the new primary never received): the primary
    /// sends them back as it has them. `None` if the backup did not pass through that state or
    /// no longer remembers.
    pub written_since_resumed: Option<Vec<u32>>,
}

impl Holding {
    /// Pages a holding names at most, so that it fits one frame ([`crate::frame::MAX_PAYLOAD`],
    /// at five bytes a page number at worst); a holder that wrote more sends `None` and gets
    /// a whole image, which costs about as much.
    pub const MAX_PAGES: usize = 1 << 17;
}

/// What a closed checkpoint is relative to the image the backup held before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CloseKind {
    /// The changes since the previous checkpoint of this session.
    Changes,
    /// A whole image: everything not in it is zero.
    Whole,
    /// Completes a pre-copied image: the runs are the pages written since the last pre-copy
    /// round, and the image plus them is the checkpoint.
    PreCopied,
    /// A rebase: the runs are whole pages, every page in which the primary's image at this
    /// checkpoint differs from `from`, the state the backup said it holds.
    Rebased {
        /// The state the backup held, which the runs turn into this checkpoint.
        from: ImageState,
    },
}

impl CloseKind {
    /// Whether this checkpoint can only be the first of a session (it replaces or rebases
    /// the image instead of following the previous checkpoint of the session).
    pub fn is_first(self) -> bool {
        !matches!(self, CloseKind::Changes)
    }
}

/// Primary to backup: checkpoint `n` (the frame header's checkpoint) is complete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Close {
    /// How many runs frames the checkpoint had; the backup checks it received exactly these.
    pub runs_frames: u32,
    /// How many region bytes those frames carried.
    pub run_bytes: u64,
    /// What the checkpoint is relative to the image before it.
    pub kind: CloseKind,
}

/// Backup to primary, the payload of an `Ack`: how the backup fared with the checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckInfo {
    /// Nanoseconds the backup spent applying the checkpoint to its image.
    pub apply_ns: u64,
}

/// Backup to primary: why the backup will not follow this primary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// A sentence for the operator.
    pub reason: String,
}

/// Primary to backup: report what the image holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyRequest {
    /// Digest the first `len` bytes of the image.
    pub len: u64,
    /// Also run this workload's consistency check on the image.
    pub check: Option<String>,
}

/// Backup to primary: the answer to a [`VerifyRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReply {
    /// The checkpoint the image holds, if any.
    pub checkpoint: Option<u64>,
    /// BLAKE3 of the first `len` bytes of the image.
    pub digest: [u8; 32],
    /// The consistency check's verdict: `Ok(summary)` or `Err(violation)`.
    pub check: Option<Result<String, String>>,
}

/// A control payload could not be decoded.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ControlError {
    /// The bytes are not a valid message of the expected type.
    #[error("malformed {what} message: {detail}")]
    Malformed {
        /// Which message.
        what: &'static str,
        /// The decoder's complaint.
        detail: String,
    },
}

/// Encodes a control message.
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_stdvec(message).expect("control messages always serialize")
}

/// Decodes a control message; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(what: &'static str, payload: &[u8]) -> Result<T, ControlError> {
    let malformed = |detail: String| ControlError::Malformed { what, detail };
    let (message, rest) = postcard::take_from_bytes(payload).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} trailing bytes", rest.len())));
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_trailing_bytes() {
        let close = Close { runs_frames: 3, run_bytes: 4096, kind: CloseKind::Whole };
        let mut bytes = encode(&close);
        assert_eq!(decode::<Close>("close", &bytes).unwrap(), close);
        bytes.push(0);
        assert!(decode::<Close>("close", &bytes).is_err());
        assert!(decode::<Attach>("attach", &[0xff; 3]).is_err());
    }
}
