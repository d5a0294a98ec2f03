//! The Redis port: the `kv` service for Redis clients, one [`Session`] per connection.
//!
//! Requests are read as they arrive, pipelined, and answered in order. A data command goes to
//! the service through the same path as a request of nonstop's own client: a reply leaves once
//! the backups hold what it answers about (a pipelined batch waits for them once), and a node
//! that is not the primary answers `-READONLY`, as a Redis replica does, so that clients look
//! for the primary again.
//!
//! A write is an unnumbered call: a Redis connection sends each request once, and a client
//! that reconnects is a new connection either way, so the platform's client table would have
//! nothing to answer from. A call that gets no answer (the primary changed, or the backups did
//! not confirm in time) may or may not have been applied, as with Redis: the client gets an
//! error.

use crate::NodeId;
use crate::client_server::{Answered, Answering, Asked, Ended, Hold, Pace, execute_on, wall_clock_ms};
use crate::config::Member;
use crate::service::{Active, Placement, Serving};
use nonstop_kv::command::{Cost, Effect, Time};
use nonstop_kv::resp::{Decoder, Limits, Protocol, Reply};
use nonstop_kv::session::{Action, Context, NodeFacts, Session};
use nonstop_kv::topology::{Instance, Serves, Topology};
use nonstop_proto::client::ClientReply;
use rand::{RngCore, SeedableRng};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::timeout;

/// The `kv` service as the Redis and sentinel ports serve it.
pub struct RedisService {
    /// The service's name: Sentinel's master name.
    pub service: String,
    /// This node.
    pub node: NodeId,
    /// Every node, with its Redis and sentinel ports.
    pub members: Vec<Member>,
    /// The Redis port's address.
    pub addr: SocketAddr,
    /// When the node started, in milliseconds since the Unix epoch (`INFO`'s uptime).
    pub started_ms: u64,
    /// The password clients must give first, if any.
    pub password: Option<Arc<[u8]>>,
    /// TLS for both ports, if configured: they then speak nothing else.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// How long a connection may stay silent before it is closed; `None`: for ever, as Redis.
    pub idle: Option<std::time::Duration>,
}

impl std::fmt::Debug for RedisService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisService")
            .field("service", &self.service)
            .field("node", &self.node)
            .field("addr", &self.addr)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A connection's byte stream: plain TCP, or TLS over it.
pub(crate) trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Stream for S {}

/// Which of the two ports a connection came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Port {
    /// The Redis port: the `kv` service's commands.
    Redis,
    /// The sentinel port: discovery.
    Sentinel,
}

/// Serves one connection of `port`: over TLS if configured (the handshake within the time a
/// message may take), then as the port speaks.
pub(crate) async fn serve_port(
    stream: TcpStream,
    answering: &Answering,
    redis: &RedisService,
    port: Port,
) -> Result<(), Ended> {
    stream.set_nodelay(true)?;
    let Some(acceptor) = &redis.tls else {
        return serve_on(stream, answering, redis, port).await;
    };
    let secured = match timeout(answering.limits.message, acceptor.accept(stream)).await {
        Err(_) => return Err(Ended::Slow),
        Ok(secured) => secured?,
    };
    serve_on(secured, answering, redis, port).await
}

async fn serve_on<S: Stream>(stream: S, answering: &Answering, redis: &RedisService, port: Port) -> Result<(), Ended> {
    match port {
        Port::Redis => serve(stream, answering, redis).await,
        Port::Sentinel => crate::sentinel_port::serve(stream, answering, redis).await,
    }
}

impl RedisService {
    /// Where the service runs, in Redis's terms: the record's nodes as their Redis ports.
    pub(crate) fn topology(&self, placement: &Placement) -> Topology {
        let instance = |node: NodeId, addr: Option<SocketAddr>| {
            addr.map(|addr| Instance { node: node.0, addr, down: placement.down.contains(&node) })
        };
        let redis = |node: NodeId| instance(node, self.members.iter().find(|m| m.id == node)?.redis);
        Topology {
            name: self.service.clone(),
            epoch: placement.term.0,
            primary: placement.primary.and_then(redis),
            replicas: placement.backups.iter().filter_map(|node| redis(*node)).collect(),
            sentinels: self.members.iter().filter_map(|m| instance(m.id, m.sentinel)).collect(),
        }
    }

    /// The serving of the service on this node (the config checked that it runs here).
    pub(crate) fn serving<'a>(&self, answering: &'a Answering) -> std::io::Result<&'a Arc<Serving>> {
        answering
            .services
            .get(&self.service)
            .ok_or_else(|| std::io::Error::other(format!("service {:?} does not run on this node", self.service)))
    }
}

/// A connection's view of the topology, brought up to date when the record changes.
pub(crate) struct Watched {
    placement: watch::Receiver<Placement>,
    seen: Placement,
    /// The topology as last seen.
    pub topology: Topology,
}

impl Watched {
    pub(crate) fn new(serving: &Serving, redis: &RedisService) -> Watched {
        let placement = serving.placement();
        let seen = placement.borrow().clone();
        let topology = redis.topology(&seen);
        Watched { placement, seen, topology }
    }

    /// The topology it was before, if the record changed since it was last seen.
    pub(crate) fn refresh(&mut self, redis: &RedisService) -> Option<Topology> {
        if *self.placement.borrow() == self.seen {
            return None;
        }
        self.seen = self.placement.borrow().clone();
        Some(std::mem::replace(&mut self.topology, redis.topology(&self.seen)))
    }

    /// Waits until the record changes (for ever once the node stops); [`Watched::refresh`]
    /// then sees the change.
    pub(crate) async fn changed(&mut self) {
        if self.placement.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a client reading from a node that is not the primary is told.
const READONLY: &str = "READONLY You can't write against a read only replica.";

/// Replies waiting to be written are sent once they reach this much, so a client that
/// pipelines many large reads without reading costs at most this and one reply.
const OUTPUT_FLUSH: usize = 64 * 1024;

/// Serves one Redis connection until it closes, quits, or sends what cannot be read.
async fn serve<S: Stream>(mut stream: S, answering: &Answering, redis: &RedisService) -> Result<(), Ended> {
    let serving = redis.serving(answering)?;
    let mut watched = Watched::new(serving, redis);
    let limits = answering.limits;
    let mut decoder = Decoder::new(Limits::default());
    let mut session = Session::new(answering.counters.number_connection()).requiring(redis.password.clone());
    // The draws of SPOP and SRANDMEMBER, seeded once per connection.
    let mut draws = {
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|error| std::io::Error::other(error.to_string()))?;
        rand::rngs::SmallRng::seed_from_u64(u64::from_le_bytes(seed))
    };
    let mut lane = None;
    let mut input = vec![0u8; 16 * 1024];
    // When the request now buffered in part began to arrive.
    let mut begun: Option<tokio::time::Instant> = None;
    loop {
        // Every whole request buffered is executed, in order, before any reply is written; the
        // replies of a pipelined batch then wait for the backups once, for the last of them.
        let mut batch = Batch::default();
        let ending = loop {
            match decoder.next_request() {
                Ok(Some(request)) => {
                    watched.refresh(redis);
                    let active = serving.active();
                    let serves = if active.is_some() { Serves::Primary } else { Serves::Replica };
                    let node = NodeFacts {
                        node: redis.node.0,
                        port: redis.addr.port(),
                        started_ms: redis.started_ms,
                        connected_clients: answering.counters.snapshot().open,
                        max_clients: answering.limits.max_connections as u64,
                    };
                    let now_ms = wall_clock_ms();
                    let context =
                        Context { now_ms, serves, topology: &watched.topology, node: &node, draw: draws.next_u64() };
                    // Encoded after the session saw the request: `HELLO 3` answers in RESP3.
                    match session.handle(&request, &context) {
                        Action::Reply(reply) => batch.now(&reply, session.protocol()),
                        Action::Close(reply) => {
                            batch.now(&reply, session.protocol());
                            break Some(());
                        }
                        Action::Run { request, cost } => {
                            let asking = Asking { serving, active, now_ms };
                            let ran = run(answering, asking, &mut lane, &request, cost).await;
                            let reply = session.replied(ran.replies);
                            batch.add(&reply, session.protocol(), ran.hold);
                        }
                    }
                    if batch.len() >= OUTPUT_FLUSH {
                        break None;
                    }
                }
                Ok(None) => break None,
                Err(error) => {
                    // The stream cannot be read past this: say why, then close, as Redis does.
                    batch.now(&error.reply(), session.protocol());
                    break Some(());
                }
            }
        };
        let mut output = batch.release().await;
        if ending.is_some() {
            let _ = timeout(limits.message, stream.write_all(&output)).await;
            return Ok(());
        }
        flush(&mut stream, &mut output, limits.message).await?;
        let (patience, why) = patience(&decoder, &mut begun, redis.idle, limits.message);
        let read = tokio::select! {
            read = stream.read(&mut input) => read?,
            () = sleep_or_never(patience) => return Err(why),
        };
        if read == 0 {
            return Ok(());
        }
        decoder.push(&input[..read]);
    }
}

/// How long a connection may go on sending nothing, and why it is closed after that: between
/// requests it may idle (`idle`; for ever if none); a request begun must arrive whole within
/// `message` of its first bytes, however slowly they come. `begun` keeps when the request
/// buffered in part began.
pub(crate) fn patience(
    decoder: &Decoder,
    begun: &mut Option<tokio::time::Instant>,
    idle: Option<std::time::Duration>,
    message: std::time::Duration,
) -> (Option<std::time::Duration>, Ended) {
    if decoder.buffered() == 0 {
        *begun = None;
        return (idle, Ended::Idle);
    }
    let now = tokio::time::Instant::now();
    let begun = *begun.get_or_insert(now);
    (Some((begun + message).saturating_duration_since(now)), Ended::Slow)
}

/// Sleeps `duration`, or for ever if there is none.
pub(crate) async fn sleep_or_never(duration: Option<std::time::Duration>) {
    match duration {
        Some(duration) => tokio::time::sleep(duration).await,
        None => std::future::pending().await,
    }
}

/// Writes the replies waiting in `output`, within `deadline`.
pub(crate) async fn flush<S: Stream>(
    stream: &mut S,
    output: &mut Vec<u8>,
    deadline: std::time::Duration,
) -> Result<(), Ended> {
    if output.is_empty() {
        return Ok(());
    }
    match timeout(deadline, stream.write_all(output)).await {
        Err(_) => return Err(Ended::Slow),
        Ok(written) => written?,
    }
    output.clear();
    Ok(())
}

/// What a request run on the service gave: the replies (or the error that answers instead),
/// and the hold they wait for before they may leave.
struct Ran {
    replies: Result<Vec<Reply>, Reply>,
    hold: Option<Hold>,
}

/// Where and when a session's request runs: the service's serving on this node, its primary
/// if this node is it (looked up once per request), and the time the session saw it.
struct Asking<'a> {
    serving: &'a Arc<Serving>,
    active: Option<Arc<Active>>,
    now_ms: u64,
}

/// Runs a session's request on the service: an unnumbered call if it may write (a Redis
/// connection sends each request once, and a reconnect is a new client either way), else a
/// query, answered on this I/O thread if it is quick and the region free. Its reply is not
/// released here: the batch waits for the backups once ([`Batch::release`]).
async fn run(
    answering: &Answering,
    asking: Asking<'_>,
    lane: &mut Option<usize>,
    request: &nonstop_kv::service::KvRequest,
    cost: Cost,
) -> Ran {
    let body = match postcard::to_allocvec(request) {
        Ok(body) => body,
        Err(error) => return Ran { replies: Err(Reply::error(format!("ERR {error}"))), hold: None },
    };
    let pace = match cost.time {
        Time::Quick => Pace::Quick,
        Time::Slow => Pace::Slow,
    };
    let asked = match cost.effect {
        Effect::Writes => Asked::Unnumbered { body, pace, now_ms: asking.now_ms },
        Effect::Reads => Asked::Query { body, pace },
    };
    let executed = execute_on(asking.serving, asking.active, asked, &answering.audits, lane).await;
    let (reply, hold) = match executed {
        Answered::Now(reply) => (reply, None),
        Answered::Held(reply, hold) => (reply, Some(hold)),
    };
    let body = match reply {
        ClientReply::Done { body, .. } | ClientReply::Answer { body, .. } => body,
        other => return Ran { replies: Err(refusal(other)), hold },
    };
    let replies = postcard::from_bytes(&body)
        .map_err(|error| Reply::error(format!("ERR the service's reply does not decode: {error}")));
    Ran { replies, hold }
}

/// What a Redis client is told instead of the reply it asked for.
fn refusal(reply: ClientReply) -> Reply {
    match reply {
        ClientReply::Redirect { .. } => Reply::error(READONLY),
        ClientReply::Unavailable { reason } => Reply::error(format!("TRYAGAIN {reason}")),
        ClientReply::Rejected { reason } => Reply::error(format!("ERR {reason}")),
        other => Reply::error(format!("ERR unexpected answer from the service: {other:?}")),
    }
}

/// The replies of a pipelined batch, encoded in order into one buffer, and the holds they wait
/// for.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    /// Where each reply that waits for the backups lies in `bytes`, and its protocol: if they
    /// do not confirm, these are the replies that become the error instead.
    waiting: Vec<(std::ops::Range<usize>, Protocol)>,
    holds: Vec<Hold>,
}

impl Batch {
    /// A reply that may leave as soon as those before it.
    fn now(&mut self, reply: &Reply, protocol: Protocol) {
        self.add(reply, protocol, None);
    }

    /// A reply, waiting for `hold` if it has one.
    fn add(&mut self, reply: &Reply, protocol: Protocol, hold: Option<Hold>) {
        let start = self.bytes.len();
        reply.encode(protocol, &mut self.bytes);
        let Some(hold) = hold else { return };
        self.waiting.push((start..self.bytes.len(), protocol));
        match self.holds.last().and_then(|last| last.merge(&hold)) {
            Some(merged) => *self.holds.last_mut().expect("merged with the last") = merged,
            None => self.holds.push(hold),
        }
    }

    fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Waits until the backups hold what every reply answers about, and gives the bytes to
    /// send. If they do not (this node was deposed, lost its backups, or they did not confirm
    /// in time), every reply that waited becomes that error: a write among them may or may not
    /// have been applied, as when Redis loses a connection.
    async fn release(self) -> Vec<u8> {
        let mut refused = None;
        for hold in &self.holds {
            if let Err(reply) = hold.wait().await {
                refused = Some(refusal(reply));
                break;
            }
        }
        let Some(refused) = refused else { return self.bytes };
        let mut bytes = Vec::with_capacity(self.bytes.len());
        let mut copied = 0;
        for (range, protocol) in self.waiting {
            bytes.extend_from_slice(&self.bytes[copied..range.start]);
            refused.encode(protocol, &mut bytes);
            copied = range.end;
        }
        bytes.extend_from_slice(&self.bytes[copied..]);
        bytes
    }
}
