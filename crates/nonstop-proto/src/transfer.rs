//! State transfer between an actively replicated service's replicas: how a replica that fell
//! behind its order group's compacted log takes a live replica's state.
//!
//! The receiving replica dials the donor's control port with the cluster key (the handshake of
//! [`crate::auth`]: an image holds every client's data, so only a member of the cluster may
//! ask for one) and sends one [`FrameKind::Transfer`](crate::frame::FrameKind::Transfer) frame,
//! [`TransferMessage::Ask`]. The donor answers on the same connection:
//!
//! 1. [`FrameKind::Runs`](crate::frame::FrameKind::Runs) frames: pages of its image ([`crate::runs`]),
//!    copied while it keeps executing (pre-copy rounds), then the pages written since the last
//!    round, copied between two entries of the order with execution held;
//!    A multithreaded service keeps its state in its threads' mutexes instead of a region:
//!    [`TransferMessage::State`] frames carry its snapshot, taken between two batches, in
//!    pieces;
//! 2. [`TransferMessage::Answered`] frames: what its executions answered each client last, so
//!    that the receiver answers a client asking again for a request executed before the
//!    transfer as the others do;
//! 3. [`TransferMessage::Done`]: the point of the order the state is at (requests delivered
//!    before it), from which the receiver executes on.
//!
//! A [`TransferMessage::Refused`] may come instead at any point; the receiver asks another
//! replica. Every message is checked: runs against the region's length, messages by kind and
//! order, sizes by the frame limit, [`MAX_ANSWERED`] and [`MAX_STATE_BYTES`].

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Client answers one transfer carries at most: as many as a replica remembers (one per
/// client, `nonstop_active::calls::REMEMBERED`; the node checks the two agree).
pub const MAX_ANSWERED: usize = 1 << 16;

/// The largest snapshot of a multithreaded service's state a receiver takes, in bytes: it
/// holds the whole snapshot in memory before it restores it.
pub const MAX_STATE_BYTES: usize = 1 << 30;

/// What one client's last executed request answered, on the donor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answered {
    /// The client.
    pub client: u64,
    /// Its last executed request's number.
    pub number: u64,
    /// Refusals under that number before it.
    pub refused: u32,
    /// The service's reply, or its refusal.
    pub outcome: Result<Vec<u8>, String>,
    /// The client's requests applied in all (refusals not counted).
    pub applied: u64,
}

/// One message of a state transfer, in a `Transfer` frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferMessage {
    /// Receiver to donor: send the state of `service` at position `from` of the order or later.
    Ask {
        /// The active service.
        service: String,
        /// The least position (requests delivered before it) the state may be at: where the
        /// receiver's snapshot of the order ends.
        from: u64,
    },
    /// Donor to receiver: some of the clients' last answers.
    Answered(Vec<Answered>),
    /// Donor to receiver: the next piece of a multithreaded service's snapshot.
    State(Vec<u8>),
    /// Donor to receiver: the state sent is the one at `position` of the order.
    Done {
        /// Requests delivered before the state's point.
        position: u64,
    },
    /// Donor to receiver: no state comes from this replica now.
    Refused {
        /// Why.
        reason: String,
    },
}

/// A transfer message that does not decode.
#[derive(Debug, Error)]
#[error("state transfer message: {0}")]
pub struct TransferProtocolError(#[from] postcard::Error);

/// Encodes a message for a `Transfer` frame.
pub fn encode(message: &TransferMessage) -> Vec<u8> {
    postcard::to_stdvec(message).expect("transfer messages always encode")
}

/// Decodes a `Transfer` frame's payload (at most a frame's length, so decoding is bounded).
pub fn decode(payload: &[u8]) -> Result<TransferMessage, TransferProtocolError> {
    Ok(postcard::from_bytes(payload)?)
}

/// Splits `answered` into messages that each fit a frame.
pub fn answered_messages(answered: Vec<Answered>) -> Vec<TransferMessage> {
    // Leaves room for the message's own encoding around the entries.
    const BUDGET: usize = crate::frame::MAX_PAYLOAD - 64;
    let mut messages = Vec::new();
    let mut chunk = Vec::new();
    let mut bytes = 0;
    for entry in answered {
        let size = postcard::experimental::serialized_size(&entry).expect("answers encode");
        if !chunk.is_empty() && bytes + size > BUDGET {
            messages.push(TransferMessage::Answered(std::mem::take(&mut chunk)));
            bytes = 0;
        }
        bytes += size;
        chunk.push(entry);
    }
    if !chunk.is_empty() {
        messages.push(TransferMessage::Answered(chunk));
    }
    messages
}

/// Splits a multithreaded service's snapshot into messages that each fit a frame (one, empty,
/// for an empty snapshot).
pub fn state_messages(state: &[u8]) -> Vec<TransferMessage> {
    // Leaves room for the message's own encoding around the piece.
    const PIECE: usize = crate::frame::MAX_PAYLOAD - 64;
    match state.is_empty() {
        true => vec![TransferMessage::State(Vec::new())],
        false => state.chunks(PIECE).map(|piece| TransferMessage::State(piece.to_vec())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_split_into_frames_and_decode() {
        let big = |client| Answered { client, number: 1, refused: 0, outcome: Ok(vec![7; 300 << 10]), applied: 1 };
        let messages = answered_messages((1..=7).map(big).collect());
        assert_eq!(messages.len(), 3, "three 300 KiB answers per 1 MiB frame");
        let mut clients = Vec::new();
        for message in &messages {
            let bytes = encode(message);
            assert!(bytes.len() <= crate::frame::MAX_PAYLOAD);
            let TransferMessage::Answered(entries) = decode(&bytes).unwrap() else { panic!("answers") };
            clients.extend(entries.iter().map(|e| e.client));
        }
        assert_eq!(clients, (1..=7).collect::<Vec<_>>());
        assert!(decode(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn a_state_splits_into_frames_and_joins_back() {
        let state: Vec<u8> = (0..(5usize << 19)).map(|i| i as u8).collect();
        let mut joined = Vec::new();
        for message in state_messages(&state) {
            let bytes = encode(&message);
            assert!(bytes.len() <= crate::frame::MAX_PAYLOAD);
            let TransferMessage::State(piece) = decode(&bytes).unwrap() else { panic!("a piece") };
            joined.extend(piece);
        }
        assert_eq!(joined, state);
        assert_eq!(state_messages(&[]), vec![TransferMessage::State(Vec::new())]);
    }
}
