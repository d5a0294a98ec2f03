//! The client protocol: how applications talk to a service's primary.
//!
//! Each message is a 4-byte little-endian length and a postcard-encoded [`ClientRequest`] or
//! [`ClientReply`], at most [`MAX_CLIENT_MESSAGE`] bytes. A node that is not the service's
//! primary answers [`ClientReply::Redirect`]; a client retries the same request number until it
//! gets an answer, and the service answers a retry from what it remembers in the region.
//!
//! The client port carries only service requests and [`ClientRequest::Locate`]: whatever
//! changes or inspects the cluster is an operator's, and travels authenticated on the control
//! port ([`crate::operator`]).

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{Read, Write};
use thiserror::Error;

/// The longest message accepted.
pub const MAX_CLIENT_MESSAGE: usize = 64 << 10;

/// A client's request. Requests and replies of a service are its own bytes (what the
/// service's types encode to); the platform numbers calls and answers retries, and never needs
/// to know a service's verbs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientRequest {
    /// Applies a request to `service`, exactly once.
    Call {
        /// The service.
        service: String,
        /// The client's id (not 0, unique among the service's clients).
        client: u64,
        /// The request's number: 1, 2, 3, … per client and service; a retry repeats it.
        request: u64,
        /// How many requests under this number the service refused before: a refused request
        /// leaves its number to the client's next request, and this tells that request from a
        /// late copy of the refused one (an actively replicated service's order delivers each
        /// (number, refused) once). A retry repeats it.
        refused: u32,
        /// The service's request, as it encodes it.
        body: Vec<u8>,
    },
    /// Asks `service` a read-only question. Answered only once every backup holds the state
    /// read, so a failover can never take back what a query saw.
    Query {
        /// The service.
        service: String,
        /// The service's question, as it encodes it.
        body: Vec<u8>,
    },
    /// Where is the primary of `service`?
    Locate {
        /// The service.
        service: String,
    },
    /// Runs the service's consistency check and the platform's (every request applied once),
    /// reports what the platform remembers of `clients`, and answers `query` from the same
    /// state, all between two checkpoints.
    Audit {
        /// The service.
        service: String,
        /// Clients to report.
        clients: Vec<u64>,
        /// A question answered from the audited state.
        query: Option<Vec<u8>>,
    },
}

impl ClientRequest {
    /// The service it is for.
    pub fn service(&self) -> &str {
        match self {
            ClientRequest::Call { service, .. }
            | ClientRequest::Query { service, .. }
            | ClientRequest::Locate { service }
            | ClientRequest::Audit { service, .. } => service,
        }
    }
}

/// What the platform remembers of a client: its last request, how many it applied, the answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientMemory {
    /// The last request number applied.
    pub request: u64,
    /// Requests applied in all: equal to `request` unless one was lost or applied twice.
    pub applied: u64,
    /// The reply to the last request, as sent (`None`: too long to keep).
    pub reply: Option<Vec<u8>>,
}

/// How a client decides on the replies of an actively replicated service's replicas to one
/// request (the service's config chooses).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReplyMode {
    /// f+1 equal replies of 2f+1 replicas: a crashed or wrong replica is outvoted.
    Majority,
    /// Semi-active: the leader's reply; the followers execute and keep theirs unless the
    /// leader fails.
    LeaderOnly,
    /// The first reply that arrives.
    PassFirst,
}

impl ReplyMode {
    /// Every mode.
    pub const ALL: [ReplyMode; 3] = [ReplyMode::Majority, ReplyMode::LeaderOnly, ReplyMode::PassFirst];

    /// Its name in a config: `majority`, `leader-only` or `pass-first`.
    pub fn name(self) -> &'static str {
        match self {
            ReplyMode::Majority => "majority",
            ReplyMode::LeaderOnly => "leader-only",
            ReplyMode::PassFirst => "pass-first",
        }
    }

    /// The mode named `name` ([`ReplyMode::name`]).
    pub fn from_name(name: &str) -> Option<ReplyMode> {
        ReplyMode::ALL.into_iter().find(|mode| mode.name() == name)
    }
}

/// A service's answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientReply {
    /// The request is applied and its effect is held by every backup.
    Done {
        /// The request number answered.
        request: u64,
        /// The service's reply, as it encodes it.
        body: Vec<u8>,
        /// True if this answers a retry of a request applied before.
        duplicate: bool,
        /// The primary's term.
        term: u64,
    },
    /// The client already got the answer to a later request.
    Stale {
        /// The request number received.
        request: u64,
        /// The last request applied.
        last: u64,
    },
    /// The answer to [`ClientRequest::Query`].
    Answer {
        /// The service's answer, as it encodes it.
        body: Vec<u8>,
        /// The primary's term.
        term: u64,
    },
    /// This node is not the primary; try `primary` (its client address), if known.
    Redirect {
        /// The primary's client address.
        primary: Option<String>,
        /// The term this node knows.
        term: u64,
    },
    /// The service cannot answer now (no primary yet, a failover in progress); retry.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The request is wrong and retrying will not help.
    Rejected {
        /// Why.
        reason: String,
    },
    /// One replica's answer to a call of an actively replicated service: a vote, which the
    /// client counts with the other replicas' as `mode` says.
    Voted(Box<Vote>),
    /// The answer to [`ClientRequest::Audit`].
    Audit {
        /// The consistency checks' verdict.
        check: Result<String, String>,
        /// Per client asked: what the platform remembers (`None`: nothing applied).
        clients: Vec<(u64, Option<ClientMemory>)>,
        /// The answer to the audit's query, if it asked one.
        answer: Option<Result<Vec<u8>, String>>,
        /// The primary's term.
        term: u64,
    },
}

/// The most replicas an actively replicated service has (2f+1 with f = 3): a config asks for
/// no more, and a client refuses a vote that describes a larger group (it would start a link
/// per replica named).
pub const MAX_REPLICAS: usize = 7;

/// One replica's reply to a call of an actively replicated service ([`ClientReply::Voted`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vote {
    /// The request number answered.
    pub request: u64,
    /// What executing it answered: the service's reply, or why the service refused it (every
    /// correct replica refuses alike). This is what the client votes on.
    pub outcome: Result<Vec<u8>, String>,
    /// True if this answers a retry of a request the replica had executed before.
    pub duplicate: bool,
    /// The replica that answered, numbered from 0.
    pub replica: u16,
    /// The client addresses of the group's replicas, by replica number: where the client sends
    /// the call to collect the other votes.
    pub group: Vec<String>,
    /// The group's leader as the replica knows it, if it knows one.
    pub leader: Option<u16>,
    /// How the client decides.
    pub mode: ReplyMode,
}

/// A client message that could not be read or written.
#[derive(Debug, Error)]
pub enum ClientProtocolError {
    /// The connection failed or closed.
    #[error("client connection: {0}")]
    Io(#[from] std::io::Error),
    /// The length prefix exceeds [`MAX_CLIENT_MESSAGE`].
    #[error("client message of {0} bytes exceeds the {MAX_CLIENT_MESSAGE}-byte limit")]
    TooLong(usize),
    /// The message did not decode.
    #[error("undecodable client message: {0}")]
    Decode(#[from] postcard::Error),
}

/// Bytes in a message's length prefix.
pub const LENGTH_PREFIX: usize = 4;

/// Encodes one message, length prefix first.
pub fn encode_message<T: Serialize>(message: &T) -> Result<Vec<u8>, ClientProtocolError> {
    let mut bytes = postcard::to_extend(message, vec![0u8; LENGTH_PREFIX])?;
    let len = bytes.len() - LENGTH_PREFIX;
    if len > MAX_CLIENT_MESSAGE {
        return Err(ClientProtocolError::TooLong(len));
    }
    bytes[..LENGTH_PREFIX].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(bytes)
}

/// The payload length a length prefix announces, refused past [`MAX_CLIENT_MESSAGE`] before
/// anything is allocated for it.
pub fn payload_len(prefix: [u8; LENGTH_PREFIX]) -> Result<usize, ClientProtocolError> {
    let len = u32::from_le_bytes(prefix) as usize;
    if len > MAX_CLIENT_MESSAGE {
        return Err(ClientProtocolError::TooLong(len));
    }
    Ok(len)
}

/// Decodes a payload read after its length prefix.
pub fn decode_payload<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ClientProtocolError> {
    Ok(postcard::from_bytes(payload)?)
}

/// Writes one message.
pub fn write_message<T: Serialize>(writer: &mut impl Write, message: &T) -> Result<(), ClientProtocolError> {
    writer.write_all(&encode_message(message)?)?;
    Ok(())
}

/// Reads one message.
pub fn read_message<T: DeserializeOwned>(reader: &mut impl Read) -> Result<T, ClientProtocolError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    reader.read_exact(&mut prefix)?;
    let mut payload = vec![0u8; payload_len(prefix)?];
    reader.read_exact(&mut payload)?;
    decode_payload(&payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_bad_ones_are_refused() {
        let request =
            ClientRequest::Call { service: "bank".into(), client: 1, request: 2, refused: 0, body: vec![3, 4, 5] };
        let mut bytes = Vec::new();
        write_message(&mut bytes, &request).unwrap();
        assert_eq!(read_message::<ClientRequest>(&mut bytes.as_slice()).unwrap(), request);
        let mut long = (MAX_CLIENT_MESSAGE as u32 + 1).to_le_bytes().to_vec();
        long.extend_from_slice(&[0; 16]);
        assert!(matches!(read_message::<ClientRequest>(&mut long.as_slice()), Err(ClientProtocolError::TooLong(_))));
        let mut garbage = 3u32.to_le_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(read_message::<ClientRequest>(&mut garbage.as_slice()).is_err());
        assert!(read_message::<ClientRequest>(&mut &bytes[..bytes.len() - 1]).is_err(), "a cut message");
    }
}
