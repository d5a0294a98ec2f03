//! The Rust client of nonstop services: calls any service by name, finds its primary, follows
//! redirects, and retries a request with the same number until it is answered — through
//! failovers — so that it is applied exactly once.
//!
//! Requests and replies are the service's own serde types, encoded with postcard (or raw
//! bytes, with [`Client::call_bytes`]).
//!
//! ```no_run
//! use nonstop_client::Client;
//! # #[derive(serde::Serialize)] struct Place { price: u64, quantity: u64 }
//! # #[derive(serde::Deserialize)] struct Placed { id: u64 }
//! let nodes = vec!["127.0.0.1:7101".parse().unwrap(), "127.0.0.2:7101".parse().unwrap()];
//! let mut client = Client::new(nodes, 42);
//! let placed: Placed = client.call("orderbook", &Place { price: 101, quantity: 5 }).unwrap();
//! println!("order {}", placed.id);
//! ```
//!
//! A `Client` is one caller with one id and blocking calls: give each thread of a pool its own
//! (with its own id). [`AsyncClient`] (feature `tokio`) is the same for async code: its calls
//! are futures, and it holds no thread while it waits.

mod blocking;
mod replicas;
mod route;
#[cfg(feature = "tokio")]
mod tokio_client;
pub mod vote;

pub use blocking::Client;
#[cfg(feature = "tokio")]
pub use tokio_client::AsyncClient;

use nonstop_proto::client::{ClientMemory, ClientReply, ClientRequest};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::time::Duration;
use thiserror::Error;

/// Why a call got no answer.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No node answered within the deadline.
    #[error("no answer from {service} within {waited:?} (last problem: {last}); is a majority of nodes up?")]
    Timeout {
        /// The service.
        service: String,
        /// How long the client tried.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
    /// The service refused the request; retrying will not help. Nothing was applied, and the
    /// next call reuses its request number.
    #[error("{service} rejected the request: {reason}")]
    Rejected {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
    /// The replicas of an actively replicated service disagree so that no reply can win the
    /// vote: the request's outcome is unknown. Report it: at least one replica is faulty.
    #[error("{service}: the replicas' replies to request {request} disagree, and none wins the vote: {replies:?}")]
    Undecided {
        /// The service.
        service: String,
        /// The request's number.
        request: u64,
        /// Each replica's reply, as received.
        replies: Vec<String>,
    },
    /// The request does not encode, or the answer does not decode as the type asked for: the
    /// client and the service disagree on the service's types.
    #[error("{service}: {what}: are the client and the service built from the same types?")]
    Types {
        /// The service.
        service: String,
        /// What failed.
        what: String,
    },
}

/// An answer, with how it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answered<T> {
    /// The service's reply.
    pub reply: T,
    /// The request's number (0 for a query).
    pub request: u64,
    /// The service had applied it before (this answers a retry).
    pub duplicate: bool,
    /// The primary's term.
    pub term: u64,
    /// Attempts it took (1 without a failure).
    pub attempts: u32,
    /// The node that answered (its client address).
    pub answered_by: SocketAddr,
}

/// What [`Client::audit`] returns.
#[derive(Clone, Debug)]
pub struct Audit {
    /// The platform's check (every request applied once) and the service's own.
    pub check: Result<String, String>,
    /// What the platform remembers per client asked.
    pub clients: Vec<(u64, Option<ClientMemory>)>,
    /// The answer to the audit's query, if one was asked.
    pub answer: Option<Result<Vec<u8>, String>>,
    /// The primary's term.
    pub term: u64,
}

/// How long one call is retried before giving up, by default.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(30);

/// How long one attempt waits for an answer before trying another node, by default (a little
/// under the default failure timeout plus lease: a paused or cut-off primary is left about
/// when the cluster replaces it).
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);

/// Which replies answer `request` (others are retried or refused).
fn answers(request: &ClientRequest, reply: &ClientReply) -> bool {
    matches!(
        (request, reply),
        (ClientRequest::Call { .. }, ClientReply::Done { .. } | ClientReply::Stale { .. } | ClientReply::Voted(_))
            | (ClientRequest::Query { .. }, ClientReply::Answer { .. } | ClientReply::Voted(_))
            | (ClientRequest::Audit { .. }, ClientReply::Audit { .. })
    )
}

/// A client's identity and request numbers, one counter per service: what both clients number
/// their calls with.
#[derive(Debug)]
struct Numbering {
    id: u64,
    /// Per service: the next call's number, and how many calls under it were refused.
    next: std::collections::BTreeMap<String, (u64, u32)>,
}

impl Numbering {
    fn new(id: u64) -> Numbering {
        Numbering { id, next: std::collections::BTreeMap::new() }
    }

    fn resume(&mut self, service: &str, next_request: u64) {
        self.next.insert(service.to_string(), (next_request.max(1), 0));
    }

    /// Call `number` of `service` is answered: the next call takes the next number.
    fn voted(&mut self, service: &str, number: u64) {
        self.next.insert(service.to_string(), (number + 1, 0));
    }

    /// The call under the next number was refused: the next call takes the number again.
    fn refused(&mut self, service: &str) {
        let next = self.next.entry(service.to_string()).or_insert((1, 0));
        next.1 = next.1.saturating_add(1);
    }

    /// A call of `service` failed with `error`: a refusal leaves its number to the next call.
    fn failed(&mut self, service: &str, error: ClientError) -> ClientError {
        if matches!(error, ClientError::Rejected { .. }) {
            self.refused(service);
        }
        error
    }

    fn next_request(&self, service: &str) -> u64 {
        self.next.get(service).map_or(1, |next| next.0)
    }

    /// The next call of `service` with `body`, and its number.
    fn call(&self, service: &str, body: Vec<u8>) -> (u64, ClientRequest) {
        let (number, refused) = self.next.get(service).copied().unwrap_or((1, 0));
        let request =
            ClientRequest::Call { service: service.to_string(), client: self.id, request: number, refused, body };
        (number, request)
    }

    /// The answer to call `number` of `service`; the next call takes the next number once it
    /// is answered (a refusal leaves the number to be used again).
    fn answered(
        &mut self,
        service: &str,
        number: u64,
        reply: ClientReply,
        attempts: u32,
        answered_by: SocketAddr,
    ) -> Result<Answered<Vec<u8>>, ClientError> {
        let answered = call_answer(service, number, reply, attempts, answered_by);
        match &answered {
            Ok(_) => self.voted(service, number),
            Err(_) => self.refused(service),
        }
        answered
    }
}

/// The answer to call `number` of `service`, from the reply that answered it.
fn call_answer(
    service: &str,
    number: u64,
    reply: ClientReply,
    attempts: u32,
    answered_by: SocketAddr,
) -> Result<Answered<Vec<u8>>, ClientError> {
    match reply {
        ClientReply::Done { request, body, duplicate, term } => {
            Ok(Answered { reply: body, request, duplicate, term, attempts, answered_by })
        }
        ClientReply::Voted(_) => unreachable!("a replica's vote is counted by its group"),
        ClientReply::Stale { last, .. } => Err(ClientError::Rejected {
            service: service.to_string(),
            reason: format!(
                "request {number} is older than the last applied ({last}): resume the client with {}",
                last + 1
            ),
        }),
        other => unreachable!("not an answer to a call: {other:?}"),
    }
}

/// The answer to a query, from the reply that answered it.
fn query_answer(reply: ClientReply, attempts: u32, answered_by: SocketAddr) -> Answered<Vec<u8>> {
    match reply {
        ClientReply::Answer { body, term } => {
            Answered { reply: body, request: 0, duplicate: false, term, attempts, answered_by }
        }
        ClientReply::Voted(_) => unreachable!("a replica's vote is counted by its group"),
        other => unreachable!("not an answer to a query: {other:?}"),
    }
}

/// The audit, from the reply that answered it.
fn audit_answer(reply: ClientReply) -> Audit {
    match reply {
        ClientReply::Audit { check, clients, answer, term } => Audit { check, clients, answer, term },
        other => unreachable!("not an answer to an audit: {other:?}"),
    }
}

fn encode<T: Serialize>(service: &str, value: &T) -> Result<Vec<u8>, ClientError> {
    postcard::to_allocvec(value).map_err(|error| ClientError::Types {
        service: service.to_string(),
        what: format!("the request does not encode: {error}"),
    })
}

fn decode_answered<T: DeserializeOwned>(
    service: &str,
    answered: Answered<Vec<u8>>,
) -> Result<Answered<T>, ClientError> {
    let reply = postcard::from_bytes(&answered.reply).map_err(|error| ClientError::Types {
        service: service.to_string(),
        what: format!("the answer does not decode: {error}"),
    })?;
    Ok(Answered {
        reply,
        request: answered.request,
        duplicate: answered.duplicate,
        term: answered.term,
        attempts: answered.attempts,
        answered_by: answered.answered_by,
    })
}

/// The I/O error inside a protocol error (a message too long or undecodable is an error too).
fn io_error(error: nonstop_proto::client::ClientProtocolError) -> std::io::Error {
    match error {
        nonstop_proto::client::ClientProtocolError::Io(error) => error,
        other => std::io::Error::other(other),
    }
}
