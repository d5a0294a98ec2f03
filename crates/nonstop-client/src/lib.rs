//! The Rust client: finds the primary, follows redirects, and retries a request with the same
//! number until it is answered — through failovers — so that it is applied exactly once.
//!
//! ```no_run
//! use nonstop_node::client::Client;
//! let nodes = vec!["127.0.0.1:7101".parse().unwrap(), "127.0.0.2:7101".parse().unwrap()];
//! let mut client = Client::new(nodes, "bank", 42);
//! let done = client.transfer(7, 3, 1_000).unwrap();
//! println!("balance {} after request {}", done.balance, done.request);
//! ```

use nonstop_proto::client::{ClientMemory, ClientReply, ClientRequest, read_message, write_message};
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Why a request got no answer.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No node answered within the deadline.
    #[error("no answer from {service} within {0:?} (last problem: {last}); is a majority of nodes up?", .waited, service = .service, last = .last)]
    Timeout {
        /// The service.
        service: String,
        /// How long the client tried.
        waited: Duration,
        /// The last problem seen.
        last: String,
    },
    /// The service refused the request; retrying will not help.
    #[error("{service} rejected the request: {reason}")]
    Rejected {
        /// The service.
        service: String,
        /// Why.
        reason: String,
    },
}

/// A transfer's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferDone {
    /// The request's number.
    pub request: u64,
    /// The account's balance after it.
    pub balance: i64,
    /// The service had applied it before (this answers a retry).
    pub duplicate: bool,
    /// The primary's term.
    pub term: u64,
    /// Attempts it took (1 without a failure).
    pub attempts: u32,
    /// The node that answered (its client address).
    pub answered_by: SocketAddr,
}

/// A read's answer: what the service remembered, held by every backup when it was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadDone {
    /// What the service remembers of the client (`None`: nothing applied).
    pub memory: Option<ClientMemory>,
    /// The account's balance.
    pub balance: Option<i64>,
    /// The primary's term.
    pub term: u64,
    /// The node that answered (its client address).
    pub answered_by: SocketAddr,
}

/// What [`Client::audit`] returns.
#[derive(Clone, Debug)]
pub struct Audit {
    /// The service's consistency check.
    pub check: Result<String, String>,
    /// What the service remembers per client asked.
    pub clients: Vec<(u64, Option<ClientMemory>)>,
    /// Balances per account asked.
    pub balances: Vec<(u64, Option<i64>)>,
    /// The primary's term.
    pub term: u64,
}

struct Connection {
    addr: SocketAddr,
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

/// A client of one service.
pub struct Client {
    nodes: Vec<SocketAddr>,
    service: String,
    id: u64,
    next_request: u64,
    target: usize,
    preferred: Option<SocketAddr>,
    connection: Option<Connection>,
    /// How long one request is retried before giving up.
    pub deadline: Duration,
    /// How long one attempt waits for an answer before trying another node (a little under
    /// the default failure timeout plus lease: a paused or cut-off primary is left about when
    /// the cluster replaces it).
    pub attempt_timeout: Duration,
}

impl Client {
    /// A client `id` (not 0, unique among the service's clients) of `service` on a cluster
    /// whose nodes' client addresses are `nodes`. Its first request is number 1.
    pub fn new(nodes: Vec<SocketAddr>, service: &str, id: u64) -> Client {
        Client::resume(nodes, service, id, 1)
    }

    /// A client that continues with request number `next_request` (after a restart).
    pub fn resume(nodes: Vec<SocketAddr>, service: &str, id: u64, next_request: u64) -> Client {
        Client {
            nodes,
            service: service.to_string(),
            id,
            next_request,
            target: 0,
            preferred: None,
            connection: None,
            deadline: Duration::from_secs(30),
            attempt_timeout: Duration::from_millis(500),
        }
    }

    /// The number the next request will carry.
    pub fn next_request(&self) -> u64 {
        self.next_request
    }

    /// Moves `delta` cents into `account` through `teller`, exactly once.
    pub fn transfer(&mut self, account: u64, teller: u64, delta: i64) -> Result<TransferDone, ClientError> {
        let request = ClientRequest::Transfer {
            service: self.service.clone(),
            client: self.id,
            request: self.next_request,
            account,
            teller,
            delta,
        };
        let mut attempts = 0;
        let reply = self.call(&request, &mut attempts, |reply| {
            matches!(reply, ClientReply::Done { .. } | ClientReply::Stale { .. })
        })?;
        match reply {
            ClientReply::Done { request, balance, duplicate, term } => {
                self.next_request += 1;
                Ok(TransferDone { request, balance, duplicate, term, attempts, answered_by: self.answered_by() })
            }
            ClientReply::Stale { last, .. } => Err(ClientError::Rejected {
                service: self.service.clone(),
                reason: format!(
                    "request {} is older than the last applied ({last}): resume the client with {}",
                    self.next_request,
                    last + 1
                ),
            }),
            _ => unreachable!("call returns only accepted replies"),
        }
    }

    /// Reads what the service remembers of `client` and the balance of `account`; the answer
    /// is held by every backup, so no failover can take it back.
    pub fn read(&mut self, client: u64, account: u64) -> Result<ReadDone, ClientError> {
        let request = ClientRequest::Read { service: self.service.clone(), client, account };
        let mut attempts = 0;
        match self.call(&request, &mut attempts, |reply| matches!(reply, ClientReply::Read { .. }))? {
            ClientReply::Read { memory, balance, term } => {
                Ok(ReadDone { memory, balance, term, answered_by: self.answered_by() })
            }
            _ => unreachable!("call returns only accepted replies"),
        }
    }

    /// The node whose answer `call` accepted last (the connection stays open after it).
    fn answered_by(&self) -> SocketAddr {
        self.connection.as_ref().expect("an accepted answer came over a connection").addr
    }

    /// Asks the primary for the service's consistency check and what it remembers of `clients`
    /// and the balances of `accounts`.
    pub fn audit(&mut self, clients: Vec<u64>, accounts: Vec<u64>) -> Result<Audit, ClientError> {
        let request = ClientRequest::Audit { service: self.service.clone(), clients, accounts };
        let mut attempts = 0;
        match self.call(&request, &mut attempts, |reply| matches!(reply, ClientReply::Audit { .. }))? {
            ClientReply::Audit { check, clients, balances, term } => Ok(Audit { check, clients, balances, term }),
            _ => unreachable!("call returns only accepted replies"),
        }
    }

    fn call(
        &mut self,
        request: &ClientRequest,
        attempts: &mut u32,
        accept: impl Fn(&ClientReply) -> bool,
    ) -> Result<ClientReply, ClientError> {
        let started = Instant::now();
        let mut last = String::from("no attempt yet");
        while started.elapsed() < self.deadline {
            *attempts += 1;
            match self.attempt(request) {
                Ok(reply) if accept(&reply) => return Ok(reply),
                Ok(ClientReply::Redirect { primary, .. }) => {
                    let primary = primary.and_then(|p| p.parse().ok());
                    last = format!("redirected to {primary:?}");
                    if primary.is_none() || primary == self.connection.as_ref().map(|c| c.addr) {
                        self.next_node();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    self.preferred = primary;
                    self.connection = None;
                }
                Ok(ClientReply::Rejected { reason }) => {
                    return Err(ClientError::Rejected { service: self.service.clone(), reason });
                }
                Ok(other) => {
                    last = format!("{other:?}");
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(error) => {
                    last = error.to_string();
                    self.connection = None;
                    self.preferred = None;
                    self.next_node();
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Err(ClientError::Timeout { service: self.service.clone(), waited: started.elapsed(), last })
    }

    fn next_node(&mut self) {
        self.target = (self.target + 1) % self.nodes.len().max(1);
    }

    fn attempt(&mut self, request: &ClientRequest) -> std::io::Result<ClientReply> {
        if self.connection.is_none() {
            let addr = self.preferred.unwrap_or(self.nodes[self.target % self.nodes.len()]);
            let stream = TcpStream::connect_timeout(&addr, self.attempt_timeout)?;
            stream.set_nodelay(true)?;
            stream.set_read_timeout(Some(self.attempt_timeout))?;
            self.connection =
                Some(Connection { addr, reader: BufReader::new(stream.try_clone()?), writer: BufWriter::new(stream) });
        }
        let connection = self.connection.as_mut().expect("connected above");
        write_message(&mut connection.writer, request).map_err(std::io::Error::other)?;
        connection.writer.flush()?;
        read_message(&mut connection.reader).map_err(std::io::Error::other)
    }
}
