//! The client port: many connections on a few threads, each with bounded resources.
//!
//! Connections are tokio tasks, not threads: an idle connection costs a task and its socket,
//! nothing more (no buffer while it waits for a message). A request is executed on a small pool
//! of blocking threads (a transaction may wait for region locks or cut a checkpoint), and its
//! reply then waits for output commit — the backups holding what it decided — without a thread:
//! the primary wakes the waiting tasks whenever a checkpoint becomes held ([`Active::hold_changed`]).
//!
//! What a connection may cost is bounded by [`ClientLimits`]: a connection that sends nothing
//! for `idle` is closed; one that started a message must finish it within `message` (however
//! slowly its bytes come) and read its reply as fast; beyond `max_connections` a new connection
//! is told why and closed.

use crate::redis_port::{Port, RedisService, serve_port};
use crate::service::{Active, Serving};
use crate::status::ClientPortStatus;
use nonstop_net::primary::HoldState;
use nonstop_proto::client::{
    ClientProtocolError, ClientReply, ClientRequest, LENGTH_PREFIX, decode_payload, encode_message, payload_len,
};
use nonstop_proto::primary::Ticket;
use nonstop_service::{CallError, Caller, Executed};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, timeout, timeout_at};

/// How long an answer may wait for the backups before the client is told to retry.
const HOLD_TIMEOUT: Duration = Duration::from_secs(2);

/// How often a waiting reply looks at its hold even if nothing woke it (a safety net: every
/// change that can end a hold also wakes it).
const HOLD_RECHECK: Duration = Duration::from_millis(50);

/// Threads that execute requests: enough to keep the service's workers busy while some wait
/// for region locks; more would only contend.
const EXECUTORS: usize = 32;

/// Threads that serve the connections' I/O unless the config says otherwise: half the
/// machine's cores, at least one. The other half cuts and ships checkpoints, and executes the
/// requests that may wait; and every write holds the region alone, so I/O threads beyond that
/// only take turns at it. On two cores shared with the replicator and the load of a benchmark,
/// one I/O thread served `SET`s at 70-74 k/s where two served 61-67 k/s, with 13-14 us of CPU
/// a request against 15-17 us: fewer wake-ups between threads, more done per wake-up.
pub fn default_io_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |cores| (cores.get() / 2).max(1))
}

/// How often an I/O thread tries a quick request again, between serving other connections,
/// while the region is held, before it hands the request to an executor thread.
const INLINE_RETRIES: usize = 8;

/// What one client connection may cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientLimits {
    /// A connection that sends no byte of a new message for this long is closed.
    pub idle: Duration,
    /// A message must arrive whole this long after its first byte, and a reply be read as fast.
    pub message: Duration,
    /// Connections open at once; one more is answered that the node is full, and closed.
    pub max_connections: usize,
}

impl Default for ClientLimits {
    fn default() -> ClientLimits {
        ClientLimits { idle: Duration::from_secs(30), message: Duration::from_secs(5), max_connections: 10_000 }
    }
}

/// What the client port counts, for status and metrics.
#[derive(Debug, Default)]
pub struct ClientCounters {
    open: AtomicU64,
    refused_full: AtomicU64,
    closed_idle: AtomicU64,
    closed_slow: AtomicU64,
    /// Connections accepted in all: the next one's number (Redis's `CLIENT ID`).
    accepted: AtomicU64,
}

impl ClientCounters {
    /// Numbers a new connection: 1, 2, 3, … over the node's run.
    pub(crate) fn number_connection(&self) -> u64 {
        self.accepted.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// What was counted so far.
    pub fn snapshot(&self) -> ClientPortStatus {
        ClientPortStatus {
            open: self.open.load(Ordering::Relaxed),
            refused_full: self.refused_full.load(Ordering::Relaxed),
            closed_idle: self.closed_idle.load(Ordering::Relaxed),
            closed_slow: self.closed_slow.load(Ordering::Relaxed),
        }
    }
}

/// What the client port answers from.
pub struct Answering {
    /// Per passively replicated service.
    pub services: BTreeMap<String, Arc<Serving>>,
    /// Per actively replicated service: this node's replica.
    pub replicas: BTreeMap<String, Arc<crate::replica::Replica>>,
    /// What the port counts.
    pub counters: Arc<ClientCounters>,
    /// Its bounds.
    pub limits: ClientLimits,
    /// When the last audit began, and whether one runs.
    pub audits: Arc<AuditSpacing>,
}

/// Audits this close together are refused: an audit holds every transaction of its service off
/// while it checks the whole region, and the client port is open to anyone, so back-to-back
/// audits would stop the service. One in this long costs it a few percent at most.
pub const AUDIT_SPACING: std::time::Duration = std::time::Duration::from_millis(100);

/// When the port last began an audit, and whether one still runs: a node runs one audit at a
/// time. A client that gives up on an audit (its attempt timed out) and asks again must not
/// start a second one beside the first, or audits slower than the client's timeout pile up
/// and none finishes.
#[derive(Debug, Default)]
pub struct AuditSpacing(std::sync::Mutex<AuditState>);

#[derive(Debug, Default)]
struct AuditState {
    last: Option<std::time::Instant>,
    running: bool,
}

/// The right to run one audit, until dropped (move it into the thread that does the work).
#[derive(Debug)]
pub(crate) struct AuditSlot(Arc<AuditSpacing>);

impl Drop for AuditSlot {
    fn drop(&mut self) {
        self.0.0.lock().unwrap_or_else(|p| p.into_inner()).running = false;
    }
}

impl AuditSpacing {
    /// The slot of an audit that may begin now, if none runs and the last began long enough
    /// ago; else the reply that says why not.
    pub(crate) fn admit(self: &Arc<Self>) -> Result<AuditSlot, ClientReply> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if state.running {
            return Err(ClientReply::Unavailable { reason: "an audit runs on this node; retry".into() });
        }
        if state.last.is_some_and(|at| now.duration_since(at) < AUDIT_SPACING) {
            return Err(ClientReply::Unavailable {
                reason: format!("an audit began less than {AUDIT_SPACING:?} ago on this node; retry"),
            });
        }
        (state.last, state.running) = (Some(now), true);
        Ok(AuditSlot(self.clone()))
    }
}

/// Connections the kernel queues before the port accepts them. Connections arrive in bursts
/// (a client pool starting, every client reconnecting after a failover) while the port's
/// threads share two cores with the service: std's 128 overflows within milliseconds, and
/// each connection that overflows waits a second for its SYN to be sent again. The kernel caps
/// this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: i32 = 4096;

/// Binds the client port (before anything else starts, so that a taken port is an error at
/// once).
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(ACCEPT_BACKLOG)?;
    Ok(socket.into())
}

/// The running client port; dropping it closes every connection.
pub struct ClientPort {
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for ClientPort {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// What a listening port speaks.
#[derive(Clone, Debug)]
enum Speaks {
    /// nonstop's client protocol, for every service.
    Nonstop,
    /// RESP, for one service of kind `kv` ([`crate::redis_port`]).
    Redis(Arc<RedisService>),
    /// Redis Sentinel's discovery commands for that service ([`crate::sentinel_port`]).
    Sentinel(Arc<RedisService>),
}

/// A node's ports for Redis clients, bound.
pub struct RedisPorts {
    /// The Redis port.
    pub redis: std::net::TcpListener,
    /// The sentinel port, if the node has one.
    pub sentinel: Option<std::net::TcpListener>,
    /// The service they serve.
    pub service: RedisService,
}

/// Serves clients on `listener`, and Redis clients on `redis`'s ports if given, on
/// `io_threads` threads, until the returned port is dropped. All share the connection limit
/// and its counters.
pub fn start(
    listener: std::net::TcpListener,
    redis: Option<RedisPorts>,
    answering: Arc<Answering>,
    io_threads: usize,
) -> std::io::Result<ClientPort> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(io_threads.max(1))
        .max_blocking_threads(EXECUTORS)
        .thread_name("nonstop-clients")
        .enable_io()
        .enable_time()
        .build()?;
    let slots = Arc::new(Semaphore::new(answering.limits.max_connections));
    let mut ports = vec![(listener, Speaks::Nonstop)];
    if let Some(RedisPorts { redis, sentinel, service }) = redis {
        let service = Arc::new(service);
        ports.push((redis, Speaks::Redis(service.clone())));
        ports.extend(sentinel.map(|sentinel| (sentinel, Speaks::Sentinel(service))));
    }
    for (listener, speaks) in ports {
        listener.set_nonblocking(true)?;
        let listener = {
            let _entered = runtime.enter();
            TcpListener::from_std(listener)?
        };
        runtime.spawn(accept_loop(listener, answering.clone(), slots.clone(), speaks));
    }
    Ok(ClientPort { runtime: Some(runtime) })
}

async fn accept_loop(listener: TcpListener, answering: Arc<Answering>, slots: Arc<Semaphore>, speaks: Speaks) {
    let full = match &speaks {
        Speaks::Nonstop => refusal(answering.limits.max_connections),
        // What Redis answers past its maxclients.
        Speaks::Redis(_) | Speaks::Sentinel(_) => b"-ERR max number of clients reached\r\n".to_vec(),
    };
    // Why the port cannot accept, logged once per change rather than per attempt.
    let mut failing = nonstop_net::told::Told::default();
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or memory: the connections already open go on; wait for
                // some to close rather than spinning.
                if failing.now(error.kind()) {
                    tracing::warn!(%error, "the client port cannot accept connections; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if failing.cleared() {
            tracing::info!("the client port accepts connections again");
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // The send buffer of a fresh connection is empty: the refusal fits without waiting.
            let _ = stream.try_write(&full);
            answering.counters.refused_full.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "client connection refused: max_clients reached");
            continue;
        };
        let (answering, speaks) = (answering.clone(), speaks.clone());
        tokio::spawn(async move {
            answering.counters.open.fetch_add(1, Ordering::Relaxed);
            let served = match &speaks {
                Speaks::Nonstop => serve_connection(stream, &answering).await,
                Speaks::Redis(service) => serve_port(stream, &answering, service, Port::Redis).await,
                Speaks::Sentinel(service) => serve_port(stream, &answering, service, Port::Sentinel).await,
            };
            match served {
                Ok(()) => {}
                Err(Ended::Idle) => {
                    answering.counters.closed_idle.fetch_add(1, Ordering::Relaxed);
                }
                Err(Ended::Slow) => {
                    answering.counters.closed_slow.fetch_add(1, Ordering::Relaxed);
                }
                Err(Ended::Io(error)) => tracing::debug!(%peer, %error, "client connection ended"),
            }
            answering.counters.open.fetch_sub(1, Ordering::Relaxed);
            drop(slot);
        });
    }
}

fn refusal(max: usize) -> Vec<u8> {
    let reply = ClientReply::Unavailable {
        reason: format!(
            "this node already serves {max} client connections (its max_clients): retry later, or raise node.max_clients"
        ),
    };
    encode_message(&reply).expect("a refusal encodes")
}

/// Why a connection was closed by the node.
pub(crate) enum Ended {
    Idle,
    Slow,
    Io(std::io::Error),
}

impl From<std::io::Error> for Ended {
    fn from(error: std::io::Error) -> Ended {
        Ended::Io(error)
    }
}

async fn serve_connection(mut stream: TcpStream, answering: &Answering) -> Result<(), Ended> {
    stream.set_nodelay(true)?;
    let limits = answering.limits;
    let mut lane = None;
    loop {
        // Waiting for a message costs no buffer: peek for its first byte.
        match timeout(limits.idle, stream.peek(&mut [0u8; 1])).await {
            Err(_) => return Err(Ended::Idle),
            Ok(Ok(0)) => return Ok(()),
            Ok(read) => read.map(drop)?,
        }
        let due = Instant::now() + limits.message;
        let request = match timeout_at(due, read_request(&mut stream)).await {
            Err(_) => return Err(Ended::Slow),
            Ok(Ok(request)) => request,
            Ok(Err(ClientProtocolError::Io(error))) => return Err(Ended::Io(error)),
            Ok(Err(error)) => {
                // A message this node cannot read: say why, then close (what follows it in the
                // stream cannot be framed).
                let reply = ClientReply::Rejected { reason: error.to_string() };
                let _ = timeout(limits.message, write_reply(&mut stream, &reply)).await;
                return Ok(());
            }
        };
        let reply = answer(request, answering, &mut lane).await;
        match timeout(limits.message, write_reply(&mut stream, &reply)).await {
            Err(_) => return Err(Ended::Slow),
            Ok(written) => written?,
        }
    }
}

async fn read_request(stream: &mut TcpStream) -> Result<ClientRequest, ClientProtocolError> {
    let mut prefix = [0u8; LENGTH_PREFIX];
    stream.read_exact(&mut prefix).await?;
    let mut payload = vec![0u8; payload_len(prefix)?];
    stream.read_exact(&mut payload).await?;
    decode_payload(&payload)
}

async fn write_reply(stream: &mut TcpStream, reply: &ClientReply) -> std::io::Result<()> {
    let bytes = encode_message(reply).map_err(std::io::Error::other)?;
    stream.write_all(&bytes).await
}

/// Runs `work` on an executor thread.
async fn execute<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ClientReply> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| ClientReply::Unavailable { reason: format!("the request's executor failed: {error}") })
}

/// Answers one request of any client, as the client port does: executed on an executor
/// thread, and held until the backups hold what it answers about.
pub(crate) async fn answer(request: ClientRequest, answering: &Answering, lane: &mut Option<usize>) -> ClientReply {
    match execute_request(request, answering, lane).await {
        Answered::Now(reply) => reply,
        Answered::Held(reply, hold) => hold.wait().await.map_or_else(|refusal| refusal, |()| reply),
    }
}

/// What a port asks of a service.
pub(crate) enum Asked {
    /// A request of nonstop's client protocol.
    Client(ClientRequest),
    /// A call applied once, now, and not numbered: a Redis connection's write
    /// ([`nonstop_service::Hosted::execute_unnumbered`]).
    Unnumbered {
        /// The request, as the service decodes it.
        body: Vec<u8>,
        /// Whether it may run on the I/O thread.
        pace: Pace,
        /// When the port saw it, in milliseconds since the Unix epoch: the call's time on
        /// whichever thread it runs.
        now_ms: u64,
    },
    /// A query from a port that speaks another protocol than nonstop's (a Redis connection's
    /// read).
    Query {
        /// The query, as the service decodes it.
        body: Vec<u8>,
        /// Whether it may run on the I/O thread.
        pace: Pace,
    },
}

impl Asked {
    /// The request as the I/O thread may run it, if it is quick ([`Pace::Quick`]).
    fn quick(&self) -> Option<Quick<'_>> {
        match self {
            Asked::Query { body, pace: Pace::Quick } => Some(Quick::Query { body }),
            Asked::Unnumbered { body, pace: Pace::Quick, now_ms } => Some(Quick::Unnumbered { body, now_ms: *now_ms }),
            Asked::Query { pace: Pace::Slow, .. } | Asked::Unnumbered { pace: Pace::Slow, .. } | Asked::Client(_) => {
                None
            }
        }
    }
}

/// A quick request ([`Asked::quick`]), borrowed.
enum Quick<'a> {
    Query { body: &'a [u8] },
    Unnumbered { body: &'a [u8], now_ms: u64 },
}

/// How long a port expects a request to run, which decides the thread it runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pace {
    /// In time bounded by the request's own size (a Redis command such as `GET` or `SET`):
    /// run on the I/O thread that read it if the region is free this instant, which saves the
    /// hop to an executor thread and back; else on an executor.
    Quick,
    /// Possibly long (`KEYS`): always on an executor, so that no I/O thread stalls.
    Slow,
}

/// A request's reply, and whether it must wait for the backups before it leaves.
pub(crate) enum Answered {
    /// It may leave now.
    Now(ClientReply),
    /// It may leave once the backups hold what it answers about ([`Hold::wait`]).
    Held(ClientReply, Hold),
}

/// Output commit for one reply, or for a batch of them: the checkpoint they wait for.
#[derive(Clone)]
pub(crate) struct Hold {
    serving: Arc<Serving>,
    active: Arc<Active>,
    ticket: Ticket,
}

impl Hold {
    /// This hold and `later` as one, if the same primary gave both: the later ticket covers
    /// the earlier (checkpoints are held in order). `None` if they come from two primaries.
    pub(crate) fn merge(&self, later: &Hold) -> Option<Hold> {
        Arc::ptr_eq(&self.active, &later.active).then(|| Hold {
            ticket: Ticket { checkpoint: self.ticket.checkpoint.max(later.ticket.checkpoint) },
            ..self.clone()
        })
    }

    /// Waits, holding no thread, until every backup holds the ticket's checkpoint; the reply
    /// that replaces those waiting if this primary was deposed, lost its backups, or they did
    /// not confirm in time.
    pub(crate) async fn wait(&self) -> Result<(), ClientReply> {
        release(&self.serving, &self.active, self.ticket).await
    }
}

/// Executes one request of nonstop's client protocol, as the client port does: on the
/// service it names ([`execute_on`]), or on this node's replica of an actively replicated one.
pub(crate) async fn execute_request(
    request: ClientRequest,
    answering: &Answering,
    lane: &mut Option<usize>,
) -> Answered {
    let service = request.service();
    if let Some(replica) = answering.replicas.get(service) {
        return Answered::Now(match request {
            ClientRequest::Call { client, request, refused, body, .. } => {
                replica.call(client, request, refused, body).await
            }
            ClientRequest::Query { body, .. } => replica.query(body).await,
            ClientRequest::Audit { clients, query, .. } => match answering.audits.admit() {
                Ok(slot) => replica.audit(clients, query, slot).await,
                Err(refused) => refused,
            },
            ClientRequest::Locate { .. } => ClientReply::Rejected {
                reason: format!("{service} is actively replicated: call its replicas with nonstop::Client"),
            },
        });
    }
    let Some(serving) = answering.services.get(service) else {
        return Answered::Now(ClientReply::Rejected { reason: format!("no service {service:?} on this cluster") });
    };
    execute_on(serving, serving.active(), Asked::Client(request), &answering.audits, lane).await
}

/// Executes one request on a passively replicated service whose primary is `active` if this
/// node is it (as [`Serving::active`] found it): on an executor thread, or on this I/O thread
/// for a quick request when the region is free; the reply and, for an answer
/// about the state, the hold it must wait for. A port that serves one service finds its
/// serving once, not per request.
pub(crate) async fn execute_on(
    serving: &Arc<Serving>,
    active: Option<Arc<Active>>,
    request: Asked,
    audits: &Arc<AuditSpacing>,
    lane: &mut Option<usize>,
) -> Answered {
    let Some(active) = active else { return Answered::Now(redirect(serving)) };
    let audit_slot = match &request {
        Asked::Client(ClientRequest::Audit { .. }) => match audits.admit() {
            Ok(slot) => Some(slot),
            Err(refused) => return Answered::Now(refused),
        },
        _ => None,
    };
    let lane = *lane.get_or_insert_with(|| active.lane());
    // A request that is not quick is never tried here; one that is is tried again while the
    // region is held.
    let quick = request.quick().is_some();
    let try_inline = || match request.quick()? {
        Quick::Query { body } => {
            active.service.try_query(&active.mirror, body).map(|answered| query_decided(answered, &active))
        }
        Quick::Unnumbered { body, now_ms } => refused_while_draining(&active).or_else(|| {
            active
                .service
                .try_execute_unnumbered(&active.mirror, lane, now_ms, body)
                .map(|executed| unnumbered_decided(executed, &active))
        }),
    };
    let mut inline = try_inline();
    // The region is held for microseconds (an update on another I/O thread) to tens of them
    // (a cut): let this thread serve other connections meanwhile and try again, rather than
    // hand the request to an executor thread and back.
    for _ in 0..INLINE_RETRIES {
        if inline.is_some() || !quick {
            break;
        }
        tokio::task::yield_now().await;
        inline = try_inline();
    }
    if let Some(decided) = &inline {
        held(decided, &active);
    }
    let executed = match inline {
        Some(decided) => Ok(decided),
        None => {
            let active = active.clone();
            execute(move || {
                let decided = decide(request, &active, lane, wall_clock_ms());
                held(&decided, &active);
                // The audit is over once decided (its reply then waits like any other).
                drop(audit_slot);
                decided
            })
            .await
        }
    };
    match executed {
        Err(refused) => Answered::Now(refused),
        Ok(Decided::Now(reply)) => Answered::Now(reply),
        Ok(Decided::Redirect) => Answered::Now(redirect(serving)),
        Ok(Decided::Held(reply, ticket)) => Answered::Held(reply, Hold { serving: serving.clone(), active, ticket }),
    }
}

fn redirect(serving: &Serving) -> ClientReply {
    let (primary, term) = serving.redirect();
    ClientReply::Redirect { primary: primary.map(|p| p.to_string()), term: term.0 }
}

/// Tells the primary that a reply waits for `decided`'s ticket, if it does.
fn held(decided: &Decided, active: &Active) {
    if let Decided::Held(_, ticket) = decided {
        active.primary.request_held(*ticket);
    }
}

/// What executing a request decided.
enum Decided {
    /// An answer that may leave at once (it promises nothing the backups must hold).
    Now(ClientReply),
    /// Not the primary (any more): the client is sent where it is.
    Redirect,
    /// An answer that may leave once every backup holds the ticket's checkpoint.
    Held(ClientReply, Ticket),
}

/// The primary's clock in milliseconds since the Unix epoch: when a client table records a
/// client's last request (a clock before 1970 reads as 0).
pub(crate) fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64)
}

/// Executes a service request on the primary (on an executor thread: it may wait for locks) at
/// `now_ms` on its clock; an unnumbered call at the time its port saw it, as on an I/O thread.
fn decide(request: Asked, active: &Active, lane: usize, now_ms: u64) -> Decided {
    let term = active.term.0;
    let request = match request {
        Asked::Client(request) => request,
        Asked::Query { body, .. } => return query_decided(active.service.query(&active.mirror, &body), active),
        Asked::Unnumbered { body, now_ms, .. } => {
            if let Some(refused) = refused_while_draining(active) {
                return refused;
            }
            return unnumbered_decided(active.service.execute_unnumbered(&active.mirror, lane, now_ms, &body), active);
        }
    };
    match request {
        ClientRequest::Locate { .. } => Decided::Redirect,
        ClientRequest::Call { client, request, body, .. } => {
            if let Some(refused) = refused_while_draining(active) {
                return refused;
            }
            let executed = active.service.execute(&active.mirror, Caller { client, request, lane }, now_ms, &body);
            decided(
                executed.map(|(executed, ticket)| match executed {
                    Executed::Applied(body) => (ClientReply::Done { request, body, duplicate: false, term }, ticket),
                    Executed::Duplicate(body) => (ClientReply::Done { request, body, duplicate: true, term }, ticket),
                    Executed::Stale { last } => (ClientReply::Stale { request, last }, ticket),
                }),
                active,
            )
        }
        ClientRequest::Query { body, .. } => query_decided(active.service.query(&active.mirror, &body), active),
        ClientRequest::Audit { clients, query, .. } => {
            // The region is read with every transaction held off, after every line of it is
            // checked against its seal.
            let report =
                active.mirror.quiesced_checked(|image, _| active.service.audit(image, &clients, query.as_deref()));
            let reply =
                ClientReply::Audit { check: report.check, clients: report.clients, answer: report.answer, term };
            Decided::Held(reply, after_read(active))
        }
    }
}

/// What a query's answer (or error) decides ([`decided`]).
fn query_decided(answered: Result<(Vec<u8>, Ticket), CallError>, active: &Active) -> Decided {
    let term = active.term.0;
    decided(answered.map(|(body, ticket)| (ClientReply::Answer { body, term }, ticket)), active)
}

/// What an unnumbered call's reply (or error) decides ([`decided`]).
fn unnumbered_decided(executed: Result<(Vec<u8>, Ticket), CallError>, active: &Active) -> Decided {
    let term = active.term.0;
    let done = |body| ClientReply::Done { request: 0, body, duplicate: false, term };
    decided(executed.map(|(body, ticket)| (done(body), ticket)), active)
}

/// An answer about the state leaves only from a primary that still holds its lease and whose
/// backups hold what it was decided on: a reply waits for its ticket, and a refusal for a
/// checkpoint cut after it (a refusal is an answer too: a deposed primary that lacks the
/// client's latest requests must not refuse them for good). A failure leaves at once.
fn decided(result: Result<(ClientReply, Ticket), CallError>, active: &Active) -> Decided {
    match result {
        Ok((reply, ticket)) => Decided::Held(reply, ticket),
        Err(CallError::Failed(reason)) => Decided::Now(ClientReply::Unavailable { reason }),
        Err(refusal) => Decided::Held(ClientReply::Rejected { reason: refusal.to_string() }, after_read(active)),
    }
}

/// A call refused because a switchover drains this primary: the client retries on the next.
fn refused_while_draining(active: &Active) -> Option<Decided> {
    active
        .draining
        .load(Ordering::SeqCst)
        .then(|| Decided::Now(ClientReply::Unavailable { reason: "switchover in progress; retry".into() }))
}

/// The ticket of an answer about the state that no update gave: a checkpoint cut after it.
fn after_read(active: &Active) -> Ticket {
    Ticket { checkpoint: active.primary.checkpoint_now() }
}

/// Output commit: the reply leaves only once every backup holds `ticket`'s checkpoint, and
/// never from a deposed primary. The wait holds no thread.
async fn release(serving: &Serving, active: &Active, ticket: Ticket) -> Result<(), ClientReply> {
    // Read from the clock only once the hold turns out to be pending.
    let mut due = None;
    loop {
        // Registered before the state is read, so a change between the two still wakes it.
        let woken = active.hold_changed.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if active.deposed.load(Ordering::SeqCst) {
            return Err(redirect(serving));
        }
        match active.primary.hold_state(ticket) {
            HoldState::Held => break,
            HoldState::Unprotected { connected, required } => {
                let error = nonstop_net::primary::PrimaryError::Unprotected { connected, required };
                return Err(ClientReply::Unavailable { reason: format!("not yet held by the backups: {error}") });
            }
            HoldState::Pending => {}
        }
        let now = Instant::now();
        let due = *due.get_or_insert(now + HOLD_TIMEOUT);
        if now >= due {
            let error = nonstop_net::primary::PrimaryError::Timeout(HOLD_TIMEOUT);
            return Err(ClientReply::Unavailable { reason: format!("not yet held by the backups: {error}") });
        }
        let _ = timeout_at(due.min(now + HOLD_RECHECK), woken).await;
    }
    if active.deposed.load(Ordering::SeqCst) {
        return Err(redirect(serving));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_audit_runs_at_a_time_and_audits_are_spaced() {
        let audits = Arc::new(AuditSpacing::default());
        let slot = audits.admit().expect("the first audit");
        let running = audits.admit().expect_err("a second while the first runs");
        assert!(matches!(&running, ClientReply::Unavailable { reason } if reason.contains("runs")), "{running:?}");
        drop(slot);
        let spaced = audits.admit().expect_err("one began just now");
        assert!(matches!(&spaced, ClientReply::Unavailable { reason } if reason.contains("began")), "{spaced:?}");
        std::thread::sleep(AUDIT_SPACING);
        assert!(audits.admit().is_ok(), "the next, once the spacing passed and none runs");
    }
}
