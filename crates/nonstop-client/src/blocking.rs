//! The blocking client.

use crate::replicas::Group;
use crate::route::{Call, Router, Step, closed};
use crate::{
    Answered, Audit, ClientError, DEFAULT_ATTEMPT_TIMEOUT, DEFAULT_DEADLINE, Numbering, answers, audit_answer,
    decode_answered, encode, io_error, query_answer,
};
use nonstop_proto::client::{ClientReply, ClientRequest, read_message, write_message};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::io::{BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

struct Connection {
    reader: BufReader<TcpStream>,
    writer: BufWriter<TcpStream>,
}

/// A client of a cluster's services, with blocking calls.
pub struct Client {
    numbering: Numbering,
    router: Router,
    /// One connection per node, kept open across redirects: a client that reconnected on
    /// every redirect would leave a socket in TIME_WAIT each time, and during a long partition
    /// run out of local ports.
    connections: BTreeMap<SocketAddr, Connection>,
    /// The actively replicated services called so far: their replicas, and a link to each.
    groups: BTreeMap<String, Group>,
    /// How long one call is retried before giving up.
    pub deadline: Duration,
    /// How long one attempt waits for an answer before trying another node.
    pub attempt_timeout: Duration,
}

impl Client {
    /// A client `id` (not 0, unique among the clients of the services it calls) of a cluster
    /// whose nodes' client addresses are `nodes`. Its first request to each service is number 1.
    pub fn new(nodes: Vec<SocketAddr>, id: u64) -> Client {
        Client {
            numbering: Numbering::new(id),
            router: Router::new(nodes),
            connections: BTreeMap::new(),
            groups: BTreeMap::new(),
            deadline: DEFAULT_DEADLINE,
            attempt_timeout: DEFAULT_ATTEMPT_TIMEOUT,
        }
    }

    /// Continues with request number `next_request` for `service` (after a restart: one more
    /// than the last request the service answered).
    pub fn resume(&mut self, service: &str, next_request: u64) {
        self.numbering.resume(service, next_request);
    }

    /// The client's id.
    pub fn id(&self) -> u64 {
        self.numbering.id
    }

    /// The number the next request to `service` will carry.
    pub fn next_request(&self, service: &str) -> u64 {
        self.numbering.next_request(service)
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
        decode_answered(service, self.call_bytes(service, body)?)
    }

    /// Applies a request the caller encoded itself, exactly once.
    ///
    /// Of an actively replicated service, the call goes to every replica and the client votes
    /// on their replies as the service's replies mode says (the answer of a majority, the
    /// leader's, or the first).
    pub fn call_bytes(&mut self, service: &str, body: Vec<u8>) -> Result<Answered<Vec<u8>>, ClientError> {
        let (number, request) = self.numbering.call(service, body);
        let started = Instant::now();
        let voted = match self.groups.contains_key(service) {
            true => self.vote(service, number, &request, None, started),
            false => {
                let (reply, attempts, by) = match self.exchange(&request) {
                    Ok(exchanged) => exchanged,
                    Err(error) => return Err(self.numbering.failed(service, error)),
                };
                let ClientReply::Voted(first) = reply else {
                    return self.numbering.answered(service, number, reply, attempts, by);
                };
                self.vote(service, number, &request, Some(*first), started)
            }
        };
        match voted {
            Ok(answered) => {
                self.numbering.voted(service, number);
                Ok(answered)
            }
            Err(error) => Err(self.numbering.failed(service, error)),
        }
    }

    /// Asks an actively replicated service's replicas `request` (number `number`, 0 for a
    /// query) and votes on their replies, from `first` if one replied already (whose group it
    /// describes is the one asked).
    fn vote(
        &mut self,
        service: &str,
        number: u64,
        request: &ClientRequest,
        first: Option<nonstop_proto::client::Vote>,
        started: Instant,
    ) -> Result<Answered<Vec<u8>>, ClientError> {
        let mut group = Group::take(&mut self.groups, service, first.as_ref(), self.attempt_timeout)?;
        let voted = group.call(service, number, request, first, started, self.deadline);
        self.groups.insert(service.to_string(), group);
        voted
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
        decode_answered(service, self.query_bytes(service, body)?)
    }

    /// A query the caller encoded itself.
    ///
    /// Of an actively replicated service, every replica answers from its state and the client
    /// votes, as for a call.
    pub fn query_bytes(&mut self, service: &str, body: Vec<u8>) -> Result<Answered<Vec<u8>>, ClientError> {
        let request = ClientRequest::Query { service: service.to_string(), body };
        let started = Instant::now();
        if self.groups.contains_key(service) {
            return self.vote(service, 0, &request, None, started);
        }
        let (reply, attempts, by) = self.exchange(&request)?;
        match reply {
            ClientReply::Voted(first) => self.vote(service, 0, &request, Some(*first), started),
            reply => Ok(query_answer(reply, attempts, by)),
        }
    }

    /// Asks the primary for the platform's and the service's consistency checks, what the
    /// platform remembers of `clients`, and `query` (encoded) answered from the same state.
    pub fn audit(&mut self, service: &str, clients: Vec<u64>, query: Option<Vec<u8>>) -> Result<Audit, ClientError> {
        let (reply, _, _) = self.exchange(&ClientRequest::Audit { service: service.to_string(), clients, query })?;
        Ok(audit_answer(reply))
    }

    /// Sends `request` until a reply answers it: the reply, the attempts and the node.
    fn exchange(&mut self, request: &ClientRequest) -> Result<(ClientReply, u32, SocketAddr), ClientError> {
        let mut call = Call::new(request.service());
        let started = Instant::now();
        while started.elapsed() < self.deadline {
            call.attempts += 1;
            let addr = self.router.target(&call)?;
            let outcome = self.attempt(addr, request);
            if outcome.is_err() {
                self.connections.remove(&addr);
            }
            match self.router.step(&mut call, addr, outcome, |reply| answers(request, reply)) {
                Step::Answer(reply) => return Ok((reply, call.attempts, addr)),
                Step::Retry(pause) => std::thread::sleep(pause),
                Step::Fail(error) => return Err(error),
            }
        }
        Err(call.timed_out(started.elapsed()))
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
