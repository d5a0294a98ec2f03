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
//! A `Client` is one caller with one id: give each thread of a pool its own (with its own id),
//! or keep them in a pool of your own. Its calls block; from async code, run them with
//! `tokio::task::spawn_blocking`.

use nonstop_proto::client::{
    ClientMemory, ClientProtocolError, ClientReply, ClientRequest, read_message, write_message,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
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

struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

/// Consecutive attempts without an answer before the client starts to wait longer between
/// them: a failover takes a few, a partition or a cluster without a primary many.
const PATIENT_ATTEMPTS: u32 = 8;
/// The longest wait between two attempts.
const LONGEST_PAUSE: Duration = Duration::from_millis(16);

/// A client of a cluster's services.
pub struct Client {
    nodes: Vec<SocketAddr>,
    id: u64,
    /// The number of the next request, per service.
    next_requests: BTreeMap<String, u64>,
    target: usize,
    /// Where each service's primary was last found.
    primaries: BTreeMap<String, SocketAddr>,
    /// One connection per node, kept open across redirects: a client that reconnected on
    /// every redirect would leave a socket in TIME_WAIT each time, and during a long partition
    /// run out of local ports.
    connections: BTreeMap<SocketAddr, Connection>,
    /// The node that gave the last accepted answer.
    last_answered: Option<SocketAddr>,
    /// How long one call is retried before giving up.
    pub deadline: Duration,
    /// How long one attempt waits for an answer before trying another node (a little under
    /// the default failure timeout plus lease: a paused or cut-off primary is left about when
    /// the cluster replaces it).
    pub attempt_timeout: Duration,
}

impl Client {
    /// A client `id` (not 0, unique among the clients of the services it calls) of a cluster
    /// whose nodes' client addresses are `nodes`. Its first request to each service is number 1.
    pub fn new(nodes: Vec<SocketAddr>, id: u64) -> Client {
        Client {
            nodes,
            id,
            next_requests: BTreeMap::new(),
            target: 0,
            primaries: BTreeMap::new(),
            connections: BTreeMap::new(),
            last_answered: None,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_millis(500),
        }
    }

    /// Continues with request number `next_request` for `service` (after a restart: one more
    /// than the last request the service answered).
    pub fn resume(&mut self, service: &str, next_request: u64) {
        self.next_requests.insert(service.to_string(), next_request.max(1));
    }

    /// The client's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The number the next request to `service` will carry.
    pub fn next_request(&self, service: &str) -> u64 {
        self.next_requests.get(service).copied().unwrap_or(1)
    }

    /// Applies `request` to `service` exactly once and returns its reply.
    pub fn call<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        service: &str,
        request: &Req,
    ) -> Result<Rep, ClientError> {
        self.call_answered(service, request).map(|answered| answered.reply)
    }

    /// [`Client::call`], with how the answer came.
    pub fn call_answered<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        service: &str,
        request: &Req,
    ) -> Result<Answered<Rep>, ClientError> {
        let body = encode(service, request)?;
        let answered = self.call_bytes(service, body)?;
        decode_answered(service, answered)
    }

    /// Applies a request the caller encoded itself, exactly once.
    pub fn call_bytes(&mut self, service: &str, body: Vec<u8>) -> Result<Answered<Vec<u8>>, ClientError> {
        let number = self.next_request(service);
        let request = ClientRequest::Call { service: service.to_string(), client: self.id, request: number, body };
        let mut attempts = 0;
        let reply = self.exchange(&request, &mut attempts, |reply| {
            matches!(reply, ClientReply::Done { .. } | ClientReply::Stale { .. })
        })?;
        match reply {
            ClientReply::Done { request, body, duplicate, term } => {
                self.next_requests.insert(service.to_string(), number + 1);
                Ok(Answered { reply: body, request, duplicate, term, attempts, answered_by: self.answered_by() })
            }
            ClientReply::Stale { last, .. } => Err(ClientError::Rejected {
                service: service.to_string(),
                reason: format!(
                    "request {number} is older than the last applied ({last}): resume the client with {}",
                    last + 1
                ),
            }),
            _ => unreachable!("exchange returns only accepted replies"),
        }
    }

    /// Asks `service` a read-only question. The answer is held by every backup when it is
    /// returned, so no failover can take back what it saw.
    pub fn query<Q: Serialize, A: DeserializeOwned>(&mut self, service: &str, query: &Q) -> Result<A, ClientError> {
        self.query_answered(service, query).map(|answered| answered.reply)
    }

    /// [`Client::query`], with how the answer came.
    pub fn query_answered<Q: Serialize, A: DeserializeOwned>(
        &mut self,
        service: &str,
        query: &Q,
    ) -> Result<Answered<A>, ClientError> {
        let body = encode(service, query)?;
        let answered = self.query_bytes(service, body)?;
        decode_answered(service, answered)
    }

    /// A query the caller encoded itself.
    pub fn query_bytes(&mut self, service: &str, body: Vec<u8>) -> Result<Answered<Vec<u8>>, ClientError> {
        let request = ClientRequest::Query { service: service.to_string(), body };
        let mut attempts = 0;
        match self.exchange(&request, &mut attempts, |reply| matches!(reply, ClientReply::Answer { .. }))? {
            ClientReply::Answer { body, term } => Ok(Answered {
                reply: body,
                request: 0,
                duplicate: false,
                term,
                attempts,
                answered_by: self.answered_by(),
            }),
            _ => unreachable!("exchange returns only accepted replies"),
        }
    }

    /// Asks the primary for the platform's and the service's consistency checks, what the
    /// platform remembers of `clients`, and `query` (encoded) answered from the same state.
    pub fn audit(&mut self, service: &str, clients: Vec<u64>, query: Option<Vec<u8>>) -> Result<Audit, ClientError> {
        let request = ClientRequest::Audit { service: service.to_string(), clients, query };
        let mut attempts = 0;
        match self.exchange(&request, &mut attempts, |reply| matches!(reply, ClientReply::Audit { .. }))? {
            ClientReply::Audit { check, clients, answer, term } => Ok(Audit { check, clients, answer, term }),
            _ => unreachable!("exchange returns only accepted replies"),
        }
    }

    /// The node whose answer `exchange` accepted last.
    fn answered_by(&self) -> SocketAddr {
        self.last_answered.expect("an accepted answer came from a node")
    }

    fn exchange(
        &mut self,
        request: &ClientRequest,
        attempts: &mut u32,
        accept: impl Fn(&ClientReply) -> bool,
    ) -> Result<ClientReply, ClientError> {
        let service = request.service().to_string();
        let started = Instant::now();
        let mut last = String::from("no attempt yet");
        while started.elapsed() < self.deadline {
            *attempts += 1;
            // Quick retries while a failover settles; slower ones once it takes long.
            let pause = Duration::from_millis(1 << (*attempts / PATIENT_ATTEMPTS).min(4)).min(LONGEST_PAUSE);
            let addr = self.target_of(&service)?;
            match self.attempt(addr, request) {
                Ok(reply) if accept(&reply) => {
                    self.last_answered = Some(addr);
                    return Ok(reply);
                }
                Ok(ClientReply::Redirect { primary, .. }) => {
                    let primary: Option<SocketAddr> = primary.and_then(|p| p.parse().ok());
                    last = format!("redirected to {primary:?}");
                    match primary {
                        Some(primary) if primary != addr => {
                            self.primaries.insert(service.clone(), primary);
                            if *attempts >= PATIENT_ATTEMPTS {
                                // Nodes that name each other while their views settle.
                                std::thread::sleep(pause);
                            }
                        }
                        // It names itself (its view is older than its role) or nobody: ask
                        // another node.
                        _ => {
                            self.primaries.remove(&service);
                            self.next_node();
                            std::thread::sleep(pause);
                        }
                    }
                }
                Ok(ClientReply::Rejected { reason }) => return Err(ClientError::Rejected { service, reason }),
                Ok(other) => {
                    last = format!("{other:?}");
                    std::thread::sleep(pause);
                }
                Err(error) => {
                    last = format!("{addr}: {error}");
                    self.connections.remove(&addr);
                    self.primaries.remove(&service);
                    self.next_node();
                    std::thread::sleep(pause);
                }
            }
        }
        Err(ClientError::Timeout { service, waited: started.elapsed(), last })
    }

    fn next_node(&mut self) {
        self.target = (self.target + 1) % self.nodes.len().max(1);
    }

    /// Where to send a request for `service`: its primary if known, else the next node.
    fn target_of(&self, service: &str) -> Result<SocketAddr, ClientError> {
        match self.primaries.get(service) {
            Some(primary) => Ok(*primary),
            None => {
                self.nodes.get(self.target % self.nodes.len().max(1)).copied().ok_or_else(|| ClientError::Rejected {
                    service: service.to_string(),
                    reason: "the client was given no node addresses".into(),
                })
            }
        }
    }

    /// Sends `request` to `addr` and reads the reply. A kept connection the node has closed
    /// meanwhile (its idle timeout) fails at once; the request is then sent again on a new one
    /// (safe: a request carries its number, and a retry is answered, not applied again).
    fn attempt(&mut self, addr: SocketAddr, request: &ClientRequest) -> std::io::Result<ClientReply> {
        if self.connections.contains_key(&addr) {
            match self.exchange_on(addr, request) {
                Err(error) if closed(&error) => {
                    self.connections.remove(&addr);
                }
                other => return other,
            }
        }
        self.exchange_on(addr, request)
    }

    fn exchange_on(&mut self, addr: SocketAddr, request: &ClientRequest) -> std::io::Result<ClientReply> {
        if !self.connections.contains_key(&addr) {
            let stream = TcpStream::connect_timeout(&addr, self.attempt_timeout)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(self.attempt_timeout))?;
            let connection = Connection { reader: BufReader::new(stream.try_clone()?), writer: BufWriter::new(stream) };
            self.connections.insert(addr, connection);
        }
        let connection = self.connections.get_mut(&addr).expect("connected above");
        write_message(&mut connection.writer, request).map_err(io_error)?;
        connection.writer.flush()?;
        read_message(&mut connection.reader).map_err(io_error)
    }
}

fn io_error(error: ClientProtocolError) -> std::io::Error {
    match error {
        ClientProtocolError::Io(error) => error,
        other => std::io::Error::other(other),
    }
}

/// Whether `error` says the peer had closed the connection (rather than being slow or gone).
fn closed(error: &std::io::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    matches!(error.kind(), BrokenPipe | ConnectionAborted | ConnectionReset | UnexpectedEof)
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
