//! The trait a service implements, and what it may answer instead of a reply.

use crate::store::{Image, Store, View};
use nonstop_region::TxError;
use nonstop_region::heap::HeapError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

/// How a service keeps its state in the region.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writes {
    /// Typed values at offsets it lays out itself, through [`Store::writer`]. Runs with
    /// declared writes (each range declared, locked and undone on abort) or in transparent mode
    /// (plain writes the kernel finds).
    AtOffsets,
    /// Ordinary Rust collections on the region's heap, through [`Store::heap`]. Transparent
    /// mode only: the node's config must set `tracking = "uffd"` or `"mprotect"`. The heap
    /// owns the service's part of the region: a checkpoint looks for writes only as far as the
    /// heap has grown, so such a service may not write its part through [`Store::writer`]
    /// (which panics there, saying so).
    Collections,
}

/// A service that runs under a nonstop node: its state lives in the node's mirrored region,
/// and the platform makes every request exactly-once around it.
///
/// The platform numbers each client's requests and remembers, in the same region and the same
/// checkpoint as the service's writes, the last request applied and its reply: a retry is
/// answered from there and never reaches [`Service::execute`] again. A service keeps no
/// client table of its own.
///
/// What may live in the region: values without pointers out of it (no `String`, `Box` or
/// `HashMap` from the global allocator; the heap's `RegionVec`, `RegionHashMap`,
/// `RegionOrderedMap` instead), hash maps with fixed-seed hashers, and the same build on
/// every node. What a service must not do: read clocks, randomness or anything outside the
/// region and the request. A request that needs the time carries it.
///
/// ```
/// use nonstop_service::{Image, Service, ServiceError, Store, View, Writes};
/// use nonstop_region::RegionWrite;
///
/// /// One counter at offset 0, incremented by each request.
/// struct Counter;
///
/// impl Service for Counter {
///     type Request = u64;
///     type Reply = u64;
///     type Query = ();
///     type Answer = u64;
///     const WRITES: Writes = Writes::AtOffsets;
///
///     fn state_len(&self) -> usize {
///         8
///     }
///     fn execute(&self, store: &mut Store<'_>, by: &u64) -> Result<u64, ServiceError> {
///         let writer = store.writer();
///         let counter = writer.write::<u64>(0)?;
///         *counter += by;
///         Ok(*counter)
///     }
///     fn query(&self, view: &View<'_>, _: &()) -> Result<u64, ServiceError> {
///         Ok(view.read::<u64>(0)?)
///     }
///     fn check(&self, image: &Image<'_>) -> Result<String, String> {
///         Ok(format!("counter at {}", u64::from_le_bytes(image.state()[..8].try_into().unwrap())))
///     }
/// }
/// ```
pub trait Service: Send + Sync + 'static {
    /// What a client asks (encoded by nonstop with postcard).
    type Request: Serialize + DeserializeOwned;
    /// What [`Service::execute`] answers; the platform remembers the last one per client.
    type Reply: Serialize + DeserializeOwned;
    /// A read-only question.
    type Query: Serialize + DeserializeOwned;
    /// What [`Service::query`] answers.
    type Answer: Serialize + DeserializeOwned;

    /// How it keeps its state.
    const WRITES: Writes;

    /// The longest encoded [`Service::Reply`], in bytes: the platform keeps this much room per
    /// client to answer a retry. A longer reply is refused in declared mode (nothing is
    /// applied); in transparent mode, where nothing can be undone, it is sent but not
    /// remembered, and a retry of it is refused.
    const MAX_REPLY: usize = 256;

    /// Clients the platform remembers at once (its client table's slots).
    const MAX_CLIENTS: usize = 8192;

    /// How long a client must have been idle (no request applied) before its slot may go to a
    /// new client when the table is full, in milliseconds. Far longer than any client retries a
    /// request: an expired client's later requests are refused, never applied again.
    const CLIENT_EXPIRY_MS: u64 = 60 * 60 * 1000;

    /// Bytes of region its state needs, from offset 0 of its part of the region.
    fn state_len(&self) -> usize;

    /// Creates its state in an empty region (all zeros), when a service starts for the first
    /// time. A promoted backup resumes the state instead and never calls it.
    fn init(&self, store: &mut Store<'_>) -> Result<(), ServiceError> {
        let _ = store;
        Ok(())
    }

    /// Applies one request and answers it. Called once per request the platform has not applied
    /// yet; may be called again for the same request if a lock conflict rolled the first
    /// attempt back (declared writes), so it must depend only on the region and the request.
    ///
    /// A [`ServiceError::Refused`] changes nothing and is not remembered: the client may send
    /// another request with the same number. In transparent mode nothing can be undone, so
    /// decide every refusal before the first write.
    fn execute(&self, store: &mut Store<'_>, request: &Self::Request) -> Result<Self::Reply, ServiceError>;

    /// Answers a read-only question. Its answer leaves once the backups hold the state it read.
    fn query(&self, view: &View<'_>, query: &Self::Query) -> Result<Self::Answer, ServiceError>;

    /// A request for load tests (`nonstop chaos kill --node-binary`): what client `client`
    /// might ask next, from a random `draw`. `None` (the default): the service offers no load,
    /// and its fault tests need a load of their own. A sample may be refused (a cancel of an
    /// order long filled); the load goes on with the next draw.
    fn sample(&self, client: u64, draw: u64) -> Option<Self::Request> {
        let _ = (client, draw);
        None
    }

    /// The service's consistency check on an image (the primary's region between checkpoints,
    /// or a backup's): `Ok(summary)` or `Err(violation)`. It may also compare its state with
    /// what the platform remembers of its clients ([`Image::clients`]).
    fn check(&self, image: &Image<'_>) -> Result<String, String>;
}

/// Why a request was not applied.
#[derive(Debug, Error)]
pub enum ServiceError {
    /// The request is wrong and retrying will not help; nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// A region access failed. A lock conflict is retried by the platform; anything else is a
    /// bug of the service's layout.
    #[error(transparent)]
    Region(#[from] TxError),
    /// The state in the region is not what this service expects (another shape, or damaged):
    /// a config that differs between nodes, or corruption. Nothing was changed.
    #[error("the service's state is not what this node expects: {0}")]
    Broken(String),
    /// The region's heap could not be opened or grown.
    #[error(transparent)]
    Heap(#[from] HeapError),
    /// [`Store::heap`] was asked for with declared writes.
    #[error(
        "this service keeps collections on the region's heap, which needs transparent mode: set tracking = \"uffd\" or \"mprotect\" (and protocol = \"du\")"
    )]
    NeedsTransparent,
}

impl ServiceError {
    /// A refusal with `reason`.
    pub fn refused(reason: impl std::fmt::Display) -> ServiceError {
        ServiceError::Refused(reason.to_string())
    }
}
