//! Control messages longer than one frame: the parts they travel in, and their reassembly.
//!
//! A frame carries at most [`MAX_PAYLOAD`] bytes, but some control-plane messages are longer:
//! the snapshot of an active service's order remembers up to 65,536 clients (1.4 MB with
//! 64-bit client ids), and an LSA entry carries a batch's requests beside its mutex
//! acquisitions. Such a message travels as [`FrameKind::ControlPart`] frames, each holding the
//! next [`MAX_PAYLOAD`] bytes, and one [`FrameKind::Control`] frame with the rest, which ends
//! it; a message that fits one frame is that `Control` frame alone. Frames are numbered and
//! MAC'd per connection ([`crate::frame`]), so parts cannot be lost, repeated or interleaved
//! with another message's without the stream failing its checks first.
//!
//! ```
//! use nonstop_proto::frame::{FrameKind, MAX_PAYLOAD};
//! use nonstop_proto::parts::{Assembly, control_frames};
//! let message = vec![7u8; MAX_PAYLOAD + 10];
//! let mut assembly = Assembly::default();
//! let mut whole = None;
//! for (kind, part) in control_frames(&message) {
//!     whole = assembly.take(kind, part.to_vec()).unwrap();
//! }
//! assert_eq!(whole, Some(message));
//! ```

use crate::frame::{FrameKind, MAX_PAYLOAD};
use thiserror::Error;

/// Bytes a control message may have in all; a longer one is refused by its sender and by its
/// receiver, which keeps at most this much of a message it is assembling.
pub const MAX_CONTROL_MESSAGE: usize = 16 << 20;

/// Why a control message was refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PartsError {
    /// The message is longer than any control message may be.
    #[error("a control message of more than {MAX_CONTROL_MESSAGE} bytes ({len} so far): refused")]
    TooLong {
        /// Its bytes so far.
        len: usize,
    },
}

/// The frames `message` travels in: its kind and payload each, in order.
pub fn control_frames(message: &[u8]) -> impl Iterator<Item = (FrameKind, &[u8])> {
    let parts = message.len().div_ceil(MAX_PAYLOAD).max(1);
    // An empty message is one empty `Control` frame.
    let chunks = message.chunks(MAX_PAYLOAD).chain(message.is_empty().then_some(&message[..0]));
    chunks.enumerate().map(move |(n, chunk)| {
        let kind = if n + 1 == parts { FrameKind::Control } else { FrameKind::ControlPart };
        (kind, chunk)
    })
}

/// A control message's parts received so far on one connection.
#[derive(Debug, Default)]
pub struct Assembly {
    parts: Vec<u8>,
}

impl Assembly {
    /// Takes one frame's payload: the whole message once a `Control` frame ends it, `None`
    /// while parts come (or for a frame of another kind, which is no part of a message). A
    /// message of one frame is that frame's payload itself, not a copy.
    pub fn take(&mut self, kind: FrameKind, payload: Vec<u8>) -> Result<Option<Vec<u8>>, PartsError> {
        if !matches!(kind, FrameKind::Control | FrameKind::ControlPart) {
            return Ok(None);
        }
        let len = self.parts.len() + payload.len();
        if len > MAX_CONTROL_MESSAGE {
            self.parts = Vec::new();
            return Err(PartsError::TooLong { len });
        }
        match kind {
            FrameKind::ControlPart => {
                self.parts.extend_from_slice(&payload);
                Ok(None)
            }
            _ if self.parts.is_empty() => Ok(Some(payload)),
            _ => {
                self.parts.extend_from_slice(&payload);
                Ok(Some(std::mem::take(&mut self.parts)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn travel(message: &[u8]) -> (Vec<FrameKind>, Option<Vec<u8>>) {
        let mut assembly = Assembly::default();
        let mut kinds = Vec::new();
        let mut whole = None;
        for (kind, part) in control_frames(message) {
            assert!(part.len() <= MAX_PAYLOAD);
            assert!(whole.is_none(), "a part after the end");
            kinds.push(kind);
            whole = assembly.take(kind, part.to_vec()).unwrap();
        }
        (kinds, whole)
    }

    #[test]
    fn messages_of_every_length_arrive_whole_and_short_ones_in_one_frame() {
        use FrameKind::{Control, ControlPart};
        for len in [0, 1, MAX_PAYLOAD - 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 3 * MAX_PAYLOAD, 3 * MAX_PAYLOAD + 5] {
            let message: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let (kinds, whole) = travel(&message);
            assert_eq!(whole.as_deref(), Some(&message[..]), "{len} bytes");
            let parts = len.div_ceil(MAX_PAYLOAD).max(1);
            let mut expected = vec![ControlPart; parts - 1];
            expected.push(Control);
            assert_eq!(kinds, expected, "{len} bytes");
        }
    }

    #[test]
    fn a_message_longer_than_allowed_is_refused_and_forgotten() {
        let mut assembly = Assembly::default();
        let part = vec![0u8; MAX_PAYLOAD];
        for _ in 0..MAX_CONTROL_MESSAGE / MAX_PAYLOAD {
            assert_eq!(assembly.take(FrameKind::ControlPart, part.clone()), Ok(None));
        }
        assert_eq!(
            assembly.take(FrameKind::ControlPart, vec![1]),
            Err(PartsError::TooLong { len: MAX_CONTROL_MESSAGE + 1 })
        );
        // What it held is gone: the next message starts afresh.
        assert_eq!(assembly.take(FrameKind::Control, vec![9]), Ok(Some(vec![9])));
    }

    #[test]
    fn frames_of_other_kinds_are_no_part_of_a_message() {
        let mut assembly = Assembly::default();
        assert_eq!(assembly.take(FrameKind::ControlPart, vec![1, 2]), Ok(None));
        assert_eq!(assembly.take(FrameKind::Ping, vec![3]), Ok(None));
        assert_eq!(assembly.take(FrameKind::Control, vec![4]), Ok(Some(vec![1, 2, 4])));
    }
}
