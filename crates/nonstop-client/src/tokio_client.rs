//! The async client, for tokio: the blocking client's calls as futures.

use crate::replicas::Group;
use crate::route::{Call, Router, Step, closed};
use crate::{
    Answered, Audit, ClientError, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, Numbering, answers, audit_answer,
    decode_answered, encode, io_error, query_answer,
};
use nonstop_proto::client::{ClientReply, ClientRequest, LENGTH_PREFIX, decode_payload, encode_message, payload_len};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

/// A client of a cluster's services, for async code: what [`crate::Client`] is, with calls
/// that are futures. One `AsyncClient` makes one call at a time (`&mut self`); run many
/// clients, each with its own id, for calls at once.
///
/// Calls of an actively replicated service are voted on as [`crate::Client`] votes, with the
/// same link threads to the replicas; a call then waits on tokio's blocking pool while the
/// votes come.
///
/// ```no_run
/// # async fn run() -> Result<(), nonstop_client::ClientError> {
/// let nodes = vec!["127.0.0.1:7101".parse().unwrap()];
/// let mut client = nonstop_client::AsyncClient::new(nodes, 7);
/// let balance: i64 = client.call("bank", &(3u64, 1u64, 100i64)).await?;
/// # Ok(()) }
/// ```
pub struct AsyncClient {
    numbering: Numbering,
    router: Router,
    /// One connection per node, kept open across redirects (see [`crate::Client`]).
    connections: BTreeMap<SocketAddr, TcpStream>,
    /// The actively replicated services called so far: their replicas, and a link to each.
    groups: BTreeMap<String, Group>,
    /// How long one call is retried before giving up.
    pub deadline: Duration,
    /// How long one attempt waits for an answer before trying another node.
    pub attempt_timeout: Duration,
}

impl AsyncClient {
    /// A client `id` (not 0, unique among the clients of the services it calls) of a cluster
    /// whose nodes' client addresses are `nodes`.
    pub fn new(nodes: Vec<SocketAddr>, id: u64) -> AsyncClient {
        AsyncClient {
            numbering: Numbering::new(id),
            router: Router::new(nodes),
            connections: BTreeMap::new(),
            groups: BTreeMap::new(),
            deadline: DEFAULT_DEADLINE,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// Continues with request number `next_request` for `service`.
    pub fn resume(&mut self, service: &str, next_request: u64) {
        self.numbering.resume(service, next_request);
    }

    /// The number the next request to `service` will carry.
    pub fn next_request(&self, service: &str) -> u64 {
        self.numbering.next_request(service)
    }

    /// Applies `request` to `service` exactly once and returns its reply.
    pub async fn call<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        service: &str,
        request: &Req,
    ) -> Result<Rep, ClientError> {
        self.call_answered(service, request).await.map(|answered| answered.reply)
    }

    /// [`AsyncClient::call`], with how the answer came.
    pub async fn call_answered<Req: Serialize, Rep: DeserializeOwned>(
        &mut self,
        service: &str,
        request: &Req,
    ) -> Result<Answered<Rep>, ClientError> {
        let body = encode(service, request)?;
        decode_answered(service, self.call_bytes(service, body).await?)
    }

    /// Applies a request the caller encoded itself, exactly once.
    pub async fn call_bytes(&mut self, service: &str, body: Vec<u8>) -> Result<Answered<Vec<u8>>, ClientError> {
        let (number, request) = self.numbering.call(service, body);
        let started = std::time::Instant::now();
        let voted = match self.groups.contains_key(service) {
            true => self.vote(service, number, request, None, started).await,
            false => match self.exchange(&request).await {
                Ok((ClientReply::Voted(first), _, _)) => {
                    self.vote(service, number, request, Some(*first), started).await
                }
                Ok((reply, attempts, by)) => return self.numbering.answered(service, number, reply, attempts, by),
                Err(error) => Err(error),
            },
        };
        match voted {
            Ok(answered) => {
                self.numbering.voted(service, number);
                Ok(answered)
            }
            Err(error) => Err(self.numbering.failed(service, error)),
        }
    }

    /// Asks an actively replicated service's replicas `request` and votes on their replies
    /// ([`Group::call`]), on the blocking pool.
    async fn vote(
        &mut self,
        service: &str,
        number: u64,
        request: ClientRequest,
        first: Option<nonstop_proto::client::Vote>,
        started: std::time::Instant,
    ) -> Result<Answered<Vec<u8>>, ClientError> {
        let mut group = Group::take(&mut self.groups, service, first.as_ref(), self.attempt_timeout)?;
        let (name, deadline) = (service.to_string(), self.deadline);
        let voting = tokio::task::spawn_blocking(move || {
            let voted = group.call(&name, number, &request, first, started, deadline);
            (group, voted)
        });
        let (group, voted) = voting.await.map_err(|error| ClientError::Rejected {
            service: service.to_string(),
            reason: format!("the vote's thread failed: {error}"),
        })?;
        self.groups.insert(service.to_string(), group);
        voted
    }

    /// Asks `service` a read-only question; the answer is held by every backup.
    pub async fn query<Q: Serialize, A: DeserializeOwned>(
        &mut self,
        service: &str,
        query: &Q,
    ) -> Result<A, ClientError> {
        let body = encode(service, query)?;
        let request = ClientRequest::Query { service: service.to_string(), body };
        let started = std::time::Instant::now();
        let answered = match self.groups.contains_key(service) {
            true => self.vote(service, 0, request, None, started).await?,
            false => match self.exchange(&request).await? {
                (ClientReply::Voted(first), _, _) => self.vote(service, 0, request, Some(*first), started).await?,
                (reply, attempts, by) => query_answer(reply, attempts, by),
            },
        };
        decode_answered(service, answered).map(|answered| answered.reply)
    }

    /// The platform's and the service's checks, what the platform remembers of `clients`, and
    /// `query` answered from the same state.
    pub async fn audit(
        &mut self,
        service: &str,
        clients: Vec<u64>,
        query: Option<Vec<u8>>,
    ) -> Result<Audit, ClientError> {
        let request = ClientRequest::Audit { service: service.to_string(), clients, query };
        let (reply, _, _) = self.exchange(&request).await?;
        Ok(audit_answer(reply))
    }

    async fn exchange(&mut self, request: &ClientRequest) -> Result<(ClientReply, u32, SocketAddr), ClientError> {
        let mut call = Call::new(request.service());
        let started = Instant::now();
        let bytes = encode_message(request).map_err(|error| ClientError::Types {
            service: request.service().to_string(),
            what: format!("the request does not fit a message: {error}"),
        })?;
        while started.elapsed() < self.deadline {
            call.attempts += 1;
            let addr = self.router.target(&call)?;
            let outcome = self.attempt(addr, &bytes).await;
            if outcome.is_err() {
                self.connections.remove(&addr);
            }
            match self.router.step(&mut call, addr, outcome, |reply| answers(request, reply)) {
                Step::Answer(reply) => return Ok((reply, call.attempts, addr)),
                Step::Retry(pause) => tokio::time::sleep(pause).await,
                Step::Fail(error) => return Err(error),
            }
        }
        Err(call.timed_out(started.elapsed()))
    }

    /// Sends `bytes` to `addr` and reads the reply, on a new connection once more if a kept one
    /// was closed by the node meanwhile (as the blocking client does).
    async fn attempt(&mut self, addr: SocketAddr, bytes: &[u8]) -> std::io::Result<ClientReply> {
        if self.connections.contains_key(&addr) {
            match self.exchange_on(addr, bytes).await {
                Err(error) if closed(&error) => {
                    self.connections.remove(&addr);
                }
                other => return other,
            }
        }
        self.exchange_on(addr, bytes).await
    }

    async fn exchange_on(&mut self, addr: SocketAddr, bytes: &[u8]) -> std::io::Result<ClientReply> {
        let limit = self.attempt_timeout;
        let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {limit:?}"));
        let stream = match self.connections.entry(addr) {
            std::collections::btree_map::Entry::Occupied(kept) => kept.into_mut(),
            std::collections::btree_map::Entry::Vacant(slot) => {
                let stream = timeout(limit, TcpStream::connect(addr)).await.map_err(|_| timed_out())??;
                stream.set_nodelay(true)?;
                slot.insert(stream)
            }
        };
        let exchange = async {
            stream.write_all(bytes).await?;
            let mut prefix = [0u8; LENGTH_PREFIX];
            stream.read_exact(&mut prefix).await?;
            let mut payload = vec![0u8; payload_len(prefix).map_err(io_error)?];
            stream.read_exact(&mut payload).await?;
            decode_payload(&payload).map_err(io_error)
        };
        timeout(limit, exchange).await.map_err(|_| timed_out())?
    }
}
