//! A service as a node runs it: requests and replies as bytes, exactly once.
//!
//! [`Hosted`] wraps any [`Service`] behind one object-safe interface, so the node, its client
//! port and its backups' checks never know which service they run. It owns the part of the
//! platform a service never sees: decoding requests, the client table, retries answered from
//! it, and the transaction (or transparent-mode update) that holds the service's writes and the
//! table's together.
//!
//! Region layout: the service's state from offset 0 (`state_len` bytes), then, page aligned,
//! the client table.

use crate::service::{Service, ServiceError, Writes};
use crate::store::{Caller, Image, Store, View, Writer};
use crate::table::{ClientTable, Lookup};
use nonstop_proto::PAGE_SIZE;
use nonstop_proto::client::ClientMemory;
use nonstop_proto::primary::Ticket;
use nonstop_region::tracking::WriteExtent;
use nonstop_region::{Mirror, TxError};
use std::fmt;
use std::sync::Arc;
use thiserror::Error;

/// What became of a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Executed {
    /// Applied now; the service's reply.
    Applied(Vec<u8>),
    /// Applied before (a retry); the reply it got then.
    Duplicate(Vec<u8>),
    /// Older than the last request applied: the client already had its answer.
    Stale {
        /// The last request applied for the client.
        last: u64,
    },
}

/// Why a request was not applied. Every variant but [`CallError::Failed`] is an answer: it
/// says something about the state, so it leaves only once the backups hold that state.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum CallError {
    /// The request could not be read, or names no client or request number.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The service refused it; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// The request skips numbers.
    #[error("request {got} skips ahead: the service expects request {expected} of this client")]
    Skips {
        /// The next number the service accepts.
        expected: u64,
        /// The number received.
        got: u64,
    },
    /// No slot left for a new client: every slot it may take holds a client active within the
    /// table's expiry.
    #[error(
        "the client table is full ({slots} clients, each active within the last {expiry_ms} ms): reuse client ids, or raise the service's MAX_CLIENTS"
    )]
    Full {
        /// Clients the table keeps.
        slots: usize,
        /// How long a client must be idle to give up its slot.
        expiry_ms: u64,
    },
    /// A retry of a request whose reply was too long to keep: it was applied, and cannot be
    /// answered again.
    #[error(
        "request {request} was applied, but its reply was longer than the {room} bytes the service keeps per client, so it cannot be sent again: raise the service's MAX_REPLY"
    )]
    NotRemembered {
        /// The request.
        request: u64,
        /// The room kept per client.
        room: usize,
    },
    /// The service or its region failed (a bug, or a region that does not hold this service).
    #[error("the service failed: {0}")]
    Failed(String),
}

impl CallError {
    fn from_service(error: ServiceError) -> CallError {
        match error {
            ServiceError::Refused(reason) => CallError::Refused(reason),
            other => CallError::Failed(other.to_string()),
        }
    }
}

/// What an audit found, between two checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// The platform's check and the service's.
    pub check: Result<String, String>,
    /// What the platform remembers of each client asked.
    pub clients: Vec<(u64, Option<ClientMemory>)>,
    /// The answer to the audit's query, if it asked one.
    pub answer: Option<Result<Vec<u8>, String>>,
}

/// Whether a call goes through the platform's client table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Numbering {
    /// Numbered by its client: applied once, a retry answered from the table.
    Once,
    /// Not numbered: applied now, nothing remembered ([`Hosted::execute_unnumbered`]).
    Unnumbered,
}

/// What the node calls: [`Service`] with its types erased.
trait Run: Send + Sync {
    fn needs_transparent(&self) -> bool;
    fn init(&self, mirror: &Mirror) -> Result<(), CallError>;
    fn execute(
        &self,
        mirror: &Mirror,
        caller: Caller,
        now_ms: u64,
        body: &[u8],
        numbering: Numbering,
    ) -> Result<(Executed, Ticket), CallError>;
    fn query(&self, mirror: &Mirror, body: &[u8]) -> Result<(Vec<u8>, Ticket), CallError>;
    fn try_query(&self, mirror: &Mirror, body: &[u8]) -> Option<Result<(Vec<u8>, Ticket), CallError>>;
    fn try_execute_unnumbered(
        &self,
        mirror: &Mirror,
        lane: usize,
        now_ms: u64,
        body: &[u8],
    ) -> Option<Result<(Executed, Ticket), CallError>>;
    fn query_image(&self, image: &[u8], body: &[u8]) -> Result<Vec<u8>, CallError>;
    fn check(&self, image: &[u8]) -> Result<String, String>;
    fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>>;
}

/// A service ready to run on a node: a cheap handle, shared by the client port, the primary
/// and the backups' checks.
#[derive(Clone)]
pub struct Hosted {
    kind: String,
    layout: Layout,
    run: Arc<dyn Run>,
}

impl fmt::Debug for Hosted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hosted").field("kind", &self.kind).field("layout", &self.layout).finish()
    }
}

/// Where the state and the client table lie in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Layout {
    state_len: usize,
    table_at: usize,
    table: ClientTable,
}

impl Layout {
    fn region_len(&self) -> usize {
        self.table_at + self.table.len()
    }

    /// The state and the table in a whole image (`None` if the image is too short).
    fn split<'a>(&self, image: &'a [u8]) -> Option<(&'a [u8], &'a [u8])> {
        let state = image.get(..self.state_len)?;
        let table = image.get(self.table_at..self.region_len())?;
        Some((state, table))
    }

    fn split_mut<'a>(&self, image: &'a mut [u8]) -> Result<(&'a mut [u8], &'a mut [u8]), CallError> {
        if image.len() < self.region_len() {
            return Err(CallError::Failed(format!(
                "the region has {} bytes, the service needs {}",
                image.len(),
                self.region_len()
            )));
        }
        let (state, rest) = image.split_at_mut(self.table_at);
        Ok((&mut state[..self.state_len], &mut rest[..self.table.len()]))
    }
}

impl Hosted {
    /// `service`, hosted as kind `kind`.
    pub fn new<S: Service>(kind: &str, service: S) -> Hosted {
        let state_len = service.state_len();
        let layout = Layout {
            state_len,
            table_at: state_len.next_multiple_of(PAGE_SIZE),
            table: ClientTable::new(S::MAX_CLIENTS, S::MAX_REPLY, S::CLIENT_EXPIRY_MS),
        };
        Hosted { kind: kind.to_string(), layout, run: Arc::new(Host { service, layout }) }
    }

    /// Its kind, as the registry knows it.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// Bytes of region it needs: its state and the platform's client table.
    pub fn region_len(&self) -> usize {
        self.layout.region_len()
    }

    /// Whether it needs transparent mode (it keeps collections on the region's heap).
    pub fn needs_transparent(&self) -> bool {
        self.run.needs_transparent()
    }

    /// Where its updates write in transparent mode ([`Mirror::with_write_extent`]): a service
    /// of collections writes its state through the heap only, so only as far as the heap has
    /// grown, and the platform writes the client table; a service at offsets, anywhere.
    pub fn write_extent(&self) -> WriteExtent {
        match self.needs_transparent() {
            true => WriteExtent::Heap {
                heap_len: self.layout.state_len,
                also: std::iter::once(self.layout.table_at..self.layout.region_len()).collect(),
            },
            false => WriteExtent::Whole,
        }
    }

    /// Creates its state and an empty client table in an empty region.
    pub fn init(&self, mirror: &Mirror) -> Result<(), CallError> {
        self.run.init(mirror)
    }

    /// Applies request `caller.request` of `caller.client` once: a retry is answered from the
    /// client table, an older request is stale, one that skips numbers is refused. Returns the
    /// outcome and the ticket its answer must wait for. Lock conflicts are retried here.
    ///
    /// `now_ms` is the primary's clock (milliseconds since the Unix epoch): the table records
    /// when each client last had a request applied, so that a full table can give the slot of a
    /// client idle for [`Service::CLIENT_EXPIRY_MS`] to a new one. The service never sees it.
    pub fn execute(
        &self,
        mirror: &Mirror,
        caller: Caller,
        now_ms: u64,
        body: &[u8],
    ) -> Result<(Executed, Ticket), CallError> {
        if caller.client == 0 || caller.request == 0 {
            return Err(CallError::BadRequest("client and request numbers start at 1".into()));
        }
        self.run.execute(mirror, caller, now_ms, body, Numbering::Once)
    }

    /// Applies `body` now, once, without the client table: for a caller that never sends a
    /// request again, so has nothing for the table to answer. A Redis connection is one: it
    /// sends each request once, and a client that reconnects after a failover is a new
    /// connection either way (exactly-once across reconnects needs [`Hosted::execute`] and a
    /// client that keeps its numbers). The service sees client and request 0. Returns the
    /// reply and the ticket it waits for.
    pub fn execute_unnumbered(
        &self,
        mirror: &Mirror,
        lane: usize,
        now_ms: u64,
        body: &[u8],
    ) -> Result<(Vec<u8>, Ticket), CallError> {
        let caller = Caller { client: 0, request: 0, lane };
        unnumbered_reply(self.run.execute(mirror, caller, now_ms, body, Numbering::Unnumbered))
    }

    /// [`Hosted::execute_unnumbered`] if it can run without waiting: `None` (and nothing
    /// applied) if the region is being read, updated or cut this instant, or is written by
    /// declared transactions. For a thread that must not block, with an executor to ask
    /// otherwise; the request's own work is not bounded, so give it only quick requests.
    pub fn try_execute_unnumbered(
        &self,
        mirror: &Mirror,
        lane: usize,
        now_ms: u64,
        body: &[u8],
    ) -> Option<Result<(Vec<u8>, Ticket), CallError>> {
        Some(unnumbered_reply(self.run.try_execute_unnumbered(mirror, lane, now_ms, body)?))
    }

    /// Answers a read-only question from the primary's region, with the ticket its answer must
    /// wait for: the open checkpoint, which holds (or follows) every write the answer saw.
    pub fn query(&self, mirror: &Mirror, body: &[u8]) -> Result<(Vec<u8>, Ticket), CallError> {
        self.run.query(mirror, body)
    }

    /// [`Hosted::query`] if it can be answered without waiting: `None` if the region is being
    /// updated or cut this instant, or is written by declared transactions (whose reads may
    /// wait for locks). For a thread that must not block, with an executor to ask otherwise;
    /// the query's own work is not bounded, so give it only queries known to be quick.
    pub fn try_query(&self, mirror: &Mirror, body: &[u8]) -> Option<Result<(Vec<u8>, Ticket), CallError>> {
        self.run.try_query(mirror, body)
    }

    /// A request for load tests, encoded ([`Service::sample`]).
    pub fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>> {
        self.run.sample(client, draw)
    }

    /// The platform's check of the client table and the service's own, on a whole image.
    pub fn check(&self, image: &[u8]) -> Result<String, String> {
        self.run.check(image)
    }

    /// Audits a quiesced whole image: both checks, what the platform remembers of `clients`,
    /// and `query` answered from the same state.
    pub fn audit(&self, image: &[u8], clients: &[u64], query: Option<&[u8]>) -> AuditReport {
        let table = self.layout.split(image).map(|(_, table)| table).unwrap_or_default();
        AuditReport {
            check: self.run.check(image),
            clients: clients.iter().map(|&client| (client, self.layout.table.memory(table, client))).collect(),
            answer: query.map(|query| self.run.query_image(image, query).map_err(|error| error.to_string())),
        }
    }
}

/// An unnumbered call's reply: it is always applied, never answered from the table.
fn unnumbered_reply(executed: Result<(Executed, Ticket), CallError>) -> Result<(Vec<u8>, Ticket), CallError> {
    match executed? {
        (Executed::Applied(reply), ticket) => Ok((reply, ticket)),
        (other, _) => Err(CallError::Failed(format!("an unnumbered call was answered from the table: {other:?}"))),
    }
}

struct Host<S> {
    service: S,
    layout: Layout,
}

fn decode<T: serde::de::DeserializeOwned>(what: &str, body: &[u8]) -> Result<T, CallError> {
    postcard::from_bytes(body).map_err(|error| CallError::BadRequest(format!("the {what} does not decode: {error}")))
}

/// Encodes `reply` into one allocation of `room` bytes (the client table's reply room), where
/// growing a vector byte by byte would reallocate on the way.
fn encode<T: serde::Serialize>(reply: &T, room: usize) -> Result<Vec<u8>, CallError> {
    postcard::to_extend(reply, Vec::with_capacity(room))
        .map_err(|error| CallError::Failed(format!("the reply does not encode: {error}")))
}

impl<S: Service> Host<S> {
    /// The service's answer to `query` from a whole image of the region.
    fn answer_image(&self, image: &[u8], query: &S::Query) -> Result<S::Answer, CallError> {
        let (state, slots) = self.layout.split(image).ok_or_else(|| failed("the image is shorter than the service"))?;
        self.service.query(&View::bytes(state, slots, self.layout.table), query).map_err(CallError::from_service)
    }

    /// One attempt of a request with declared writes: refusals and conflicts abort the
    /// transaction, so nothing of them stays.
    fn execute_declared(
        &self,
        mirror: &Mirror,
        caller: Caller,
        now_ms: u64,
        request: &S::Request,
        numbering: Numbering,
    ) -> Result<(Executed, Ticket), Attempt> {
        let Layout { state_len, table_at, table } = self.layout;
        let tx = mirror.begin();
        let slots = Writer::declared(&tx, table_at, table.len());
        let slot = match numbering {
            Numbering::Unnumbered => None,
            Numbering::Once => match table.lookup(&slots, caller.client, caller.request, now_ms)? {
                Lookup::Next { at, previous } => Some((at, previous)),
                other => {
                    // A read of the table only: the commit gives the ticket of the open
                    // checkpoint, no older than the one that applied what it read.
                    let answered = answered(other, caller, table.reply_room());
                    return answered.map(|executed| (executed, tx.commit())).map_err(Attempt::Error);
                }
            },
        };
        let mut store = Store::declared(&tx, state_len, caller);
        let reply = match self.service.execute(&mut store, request) {
            Ok(reply) => encode(&reply, table.reply_room()).map_err(Attempt::Error)?,
            Err(ServiceError::Region(TxError::Conflict { .. })) => return Err(Attempt::Conflict),
            Err(error) => return Err(Attempt::Error(CallError::from_service(error))),
        };
        if let Some((at, previous)) = slot {
            if reply.len() > table.reply_room() {
                return Err(Attempt::Error(CallError::Failed(format!(
                    "a reply of {} bytes is longer than the service's MAX_REPLY ({}); nothing was applied",
                    reply.len(),
                    table.reply_room()
                ))));
            }
            table.record(&slots, at, &previous, caller.client, caller.request, now_ms, Some(&reply))?;
        }
        Ok((Executed::Applied(reply), tx.commit()))
    }

    /// A request in transparent mode: one update, with every refusal decided before the
    /// service's first write (its contract) and the table's.
    fn execute_transparent(
        &self,
        mirror: &Mirror,
        caller: Caller,
        now_ms: u64,
        request: &S::Request,
        numbering: Numbering,
    ) -> Result<(Executed, Ticket), CallError> {
        let (result, ticket) = mirror.update(|image| self.apply_transparent(image, caller, now_ms, request, numbering));
        result.map(|executed| (executed, ticket))
    }

    /// A request applied to a transparent-mode region the caller updates.
    fn apply_transparent(
        &self,
        image: &mut [u8],
        caller: Caller,
        now_ms: u64,
        request: &S::Request,
        numbering: Numbering,
    ) -> Result<Executed, CallError> {
        let (state, slots) = self.layout.split_mut(image)?;
        let table = self.layout.table;
        let slots = Writer::transparent(slots);
        let slot = match numbering {
            Numbering::Unnumbered => None,
            Numbering::Once => match table.lookup(&slots, caller.client, caller.request, now_ms).map_err(failed)? {
                Lookup::Next { at, previous } => Some((at, previous)),
                other => return answered(other, caller, table.reply_room()),
            },
        };
        let mut store = Store::transparent(state, caller, S::WRITES);
        let reply = self.service.execute(&mut store, request).map_err(CallError::from_service)?;
        // The service may have written already: the request counts as applied whatever
        // becomes of its reply (one too long is sent once, not kept for a retry; one that
        // does not encode is recorded as not kept, and the call fails).
        let encoded = encode(&reply, table.reply_room());
        if let Some((at, previous)) = slot {
            let kept = encoded.as_deref().ok();
            table.record(&slots, at, &previous, caller.client, caller.request, now_ms, kept).map_err(failed)?;
        }
        let reply = encoded?;
        Ok(Executed::Applied(reply))
    }
}

/// How one attempt at a request with declared writes ended, if not applied.
enum Attempt {
    /// A lock was held by another transaction: try again.
    Conflict,
    Error(CallError),
}

impl From<TxError> for Attempt {
    fn from(error: TxError) -> Attempt {
        match error {
            TxError::Conflict { .. } => Attempt::Conflict,
            other => Attempt::Error(failed(other)),
        }
    }
}

fn failed(error: impl fmt::Display) -> CallError {
    CallError::Failed(error.to_string())
}

/// The answer the table gives for a request it has seen, or a refusal.
fn answered(lookup: Lookup, caller: Caller, room: usize) -> Result<Executed, CallError> {
    match lookup {
        Lookup::Retry(Some(reply)) => Ok(Executed::Duplicate(reply)),
        Lookup::Retry(None) => Err(CallError::NotRemembered { request: caller.request, room }),
        Lookup::Stale { last } => Ok(Executed::Stale { last }),
        Lookup::Skips { expected } => Err(CallError::Skips { expected, got: caller.request }),
        Lookup::Full { slots, expiry_ms } => Err(CallError::Full { slots, expiry_ms }),
        Lookup::Next { .. } => unreachable!("the next request is applied, not answered"),
    }
}

impl<S: Service> Run for Host<S> {
    fn needs_transparent(&self) -> bool {
        S::WRITES == Writes::Collections
    }

    fn init(&self, mirror: &Mirror) -> Result<(), CallError> {
        let Layout { state_len, table_at, table } = self.layout;
        let caller = Caller::default();
        if mirror.is_transparent() {
            return mirror
                .update(|image| {
                    let (state, slots) = self.layout.split_mut(image)?;
                    self.service
                        .init(&mut Store::transparent(state, caller, S::WRITES))
                        .map_err(CallError::from_service)?;
                    table.format(&Writer::transparent(slots)).map_err(failed)
                })
                .0;
        }
        if self.needs_transparent() {
            return Err(CallError::Failed(ServiceError::NeedsTransparent.to_string()));
        }
        let tx = mirror.begin();
        self.service.init(&mut Store::declared(&tx, state_len, caller)).map_err(CallError::from_service)?;
        table.format(&Writer::declared(&tx, table_at, table.len())).map_err(failed)?;
        tx.commit();
        Ok(())
    }

    fn execute(
        &self,
        mirror: &Mirror,
        caller: Caller,
        now_ms: u64,
        body: &[u8],
        numbering: Numbering,
    ) -> Result<(Executed, Ticket), CallError> {
        let request: S::Request = decode("request", body)?;
        if mirror.is_transparent() {
            return self.execute_transparent(mirror, caller, now_ms, &request, numbering);
        }
        loop {
            match self.execute_declared(mirror, caller, now_ms, &request, numbering) {
                Err(Attempt::Conflict) => std::thread::yield_now(),
                Err(Attempt::Error(error)) => return Err(error),
                Ok(done) => return Ok(done),
            }
        }
    }

    fn query(&self, mirror: &Mirror, body: &[u8]) -> Result<(Vec<u8>, Ticket), CallError> {
        let query: S::Query = decode("query", body)?;
        if mirror.is_transparent() {
            // Between two updates, so it sees one state; its ticket is the checkpoint of the
            // last update, which a read among reads finds held already.
            let (answer, ticket) = mirror.read(|image| self.answer_image(image, &query));
            return Ok((encode(&answer?, self.layout.table.reply_room())?, ticket));
        }
        let Layout { state_len, table_at, table } = self.layout;
        loop {
            let tx = mirror.begin();
            let attempt = self.service.query(&View::declared(&tx, state_len, table_at, table), &query);
            match attempt {
                Err(ServiceError::Region(TxError::Conflict { .. })) => {
                    tx.abort();
                    std::thread::yield_now();
                }
                Err(error) => {
                    tx.abort();
                    return Err(CallError::from_service(error));
                }
                // A transaction that wrote nothing: its commit changes nothing and gives the
                // ticket of the open checkpoint, no older than the one that applied what it read.
                Ok(answer) => return Ok((encode(&answer, table.reply_room())?, tx.commit())),
            }
        }
    }

    fn try_execute_unnumbered(
        &self,
        mirror: &Mirror,
        lane: usize,
        now_ms: u64,
        body: &[u8],
    ) -> Option<Result<(Executed, Ticket), CallError>> {
        if !mirror.is_transparent() {
            return None;
        }
        let request: S::Request = match decode("request", body) {
            Ok(request) => request,
            Err(error) => return Some(Err(error)),
        };
        let caller = Caller { client: 0, request: 0, lane };
        let (result, ticket) = mirror
            .try_update(|image| self.apply_transparent(image, caller, now_ms, &request, Numbering::Unnumbered))?;
        Some(result.map(|executed| (executed, ticket)))
    }

    fn try_query(&self, mirror: &Mirror, body: &[u8]) -> Option<Result<(Vec<u8>, Ticket), CallError>> {
        if !mirror.is_transparent() {
            return None;
        }
        let query: S::Query = match decode("query", body) {
            Ok(query) => query,
            Err(error) => return Some(Err(error)),
        };
        let (answer, ticket) = mirror.try_read(|image| self.answer_image(image, &query))?;
        Some(answer.and_then(|answer| Ok((encode(&answer, self.layout.table.reply_room())?, ticket))))
    }

    fn query_image(&self, image: &[u8], body: &[u8]) -> Result<Vec<u8>, CallError> {
        let query: S::Query = decode("query", body)?;
        encode(&self.answer_image(image, &query)?, self.layout.table.reply_room())
    }

    fn sample(&self, client: u64, draw: u64) -> Option<Vec<u8>> {
        self.service.sample(client, draw).and_then(|request| postcard::to_allocvec(&request).ok())
    }

    fn check(&self, image: &[u8]) -> Result<String, String> {
        let (state, slots) = self.layout.split(image).ok_or_else(|| {
            format!("an image of {} bytes is shorter than the service's {}", image.len(), self.layout.region_len())
        })?;
        let clients = self.layout.table.check(slots)?;
        let own = self.service.check(&Image::new(state, self.layout.table, slots))?;
        Ok(format!("{own}; {clients}"))
    }
}
