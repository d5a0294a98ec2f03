//! The operator protocol: what changes or inspects the cluster (`nonstop status`,
//! `nonstop switchover`, arming fault points in tests).
//!
//! None of it travels on the client port, which anyone who reaches a node can use. An operator
//! connects to a node's control port and proves it holds the cluster key with the same
//! handshake as a peer node ([`crate::auth`]); each request and reply is then one MAC'd
//! [`FrameKind::Operator`](crate::frame::FrameKind::Operator) frame with a postcard-encoded
//! [`OperatorRequest`] or [`OperatorReply`], so it can be neither forged nor replayed.

use serde::{Deserialize, Serialize};

/// The longest operator message accepted (a status of many services fits).
pub const MAX_OPERATOR_MESSAGE: usize = 1 << 20;

// An operator message travels as one frame.
const _: () = assert!(MAX_OPERATOR_MESSAGE <= crate::frame::MAX_PAYLOAD);

/// What an operator asks a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorRequest {
    /// The node's view of the cluster, as JSON (what `nonstop status` shows).
    Status,
    /// Move the primary role of `service` to `to`, one of its backups, without losing anything.
    /// Answered by the service's primary once the move is committed.
    Switchover {
        /// The service.
        service: String,
        /// The backup to promote.
        to: u64,
    },
    /// Testing only (nodes whose config sets `fault_points = true`): kill this node when it
    /// reaches the fault point `point` for the `countdown`-th time.
    ArmFault {
        /// The fault point's name.
        point: String,
        /// Which time it is reached.
        countdown: u32,
    },
}

/// A node's answer to an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OperatorReply {
    /// The answer to [`OperatorRequest::Status`]: the node's status as JSON.
    Status {
        /// JSON text.
        json: String,
    },
    /// The answer to [`OperatorRequest::Switchover`]: the move is committed.
    SwitchedOver {
        /// The old primary.
        from: u64,
        /// The new primary.
        to: u64,
        /// The new term.
        term: u64,
        /// The last checkpoint of the old term, held by the new primary.
        checkpoint: u64,
        /// Microseconds from the request until new transactions were refused and the last
        /// checkpoint was cut.
        drained_us: u64,
        /// Microseconds from the request until the promotion was committed.
        committed_us: u64,
    },
    /// The answer to [`OperatorRequest::ArmFault`]: armed.
    Armed,
    /// This node is not the service's primary; ask `primary` (a node id), if known.
    NotPrimary {
        /// The primary the node knows.
        primary: Option<u64>,
    },
    /// The node cannot do it now (a failover in progress, shutting down); retry.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The request is wrong and retrying will not help.
    Rejected {
        /// Why.
        reason: String,
    },
}

/// Why an operator message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum OperatorProtocolError {
    /// Longer than [`MAX_OPERATOR_MESSAGE`].
    #[error("operator message of {0} bytes exceeds the {MAX_OPERATOR_MESSAGE}-byte limit")]
    TooLong(usize),
    /// Not a message of this protocol.
    #[error("undecodable operator message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Encodes a request or reply (a frame's payload).
pub fn encode<T: Serialize>(message: &T) -> Vec<u8> {
    postcard::to_stdvec(message).expect("operator messages serialize")
}

/// Encodes a node's reply: one longer than [`MAX_OPERATOR_MESSAGE`] (the most a frame or the
/// operator's decoder takes) becomes [`OperatorReply::Rejected`], saying how long it was, rather
/// than a frame no one could send or read.
///
/// ```
/// use nonstop_proto::operator::{decode, encode_reply, OperatorReply, MAX_OPERATOR_MESSAGE};
/// let huge = OperatorReply::Unavailable { reason: "x".repeat(MAX_OPERATOR_MESSAGE) };
/// let sent: OperatorReply = decode(&encode_reply(&huge)).unwrap();
/// assert!(matches!(sent, OperatorReply::Rejected { reason } if reason.contains("bytes")));
/// ```
pub fn encode_reply(reply: &OperatorReply) -> Vec<u8> {
    let encoded = encode(reply);
    if encoded.len() <= MAX_OPERATOR_MESSAGE {
        return encoded;
    }
    encode(&OperatorReply::Rejected {
        reason: format!(
            "the answer takes {} bytes, more than an operator message's {MAX_OPERATOR_MESSAGE}: the node serves too many services to report them in one answer",
            encoded.len()
        ),
    })
}

/// Decodes a request or reply from a frame's payload.
pub fn decode<T: serde::de::DeserializeOwned>(payload: &[u8]) -> Result<T, OperatorProtocolError> {
    if payload.len() > MAX_OPERATOR_MESSAGE {
        return Err(OperatorProtocolError::TooLong(payload.len()));
    }
    Ok(postcard::from_bytes(payload)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_and_garbage_is_refused() {
        let request = OperatorRequest::Switchover { service: "bank".into(), to: 2 };
        assert_eq!(decode::<OperatorRequest>(&encode(&request)).unwrap(), request);
        let reply = OperatorReply::NotPrimary { primary: Some(3) };
        assert_eq!(decode::<OperatorReply>(&encode(&reply)).unwrap(), reply);
        assert!(decode::<OperatorRequest>(&[0xff, 0xff]).is_err());
        assert!(matches!(
            decode::<OperatorRequest>(&vec![0; MAX_OPERATOR_MESSAGE + 1]),
            Err(OperatorProtocolError::TooLong(_))
        ));
    }
}
