//! nonstop: continuous availability for stateful in-memory servers.
//!
//! A service keeps its state in a mirrored [`Region`], mapped at the same address on every
//! node, and changes it through [`Transaction`]s on a [`Mirror`]. A [`Primary`] cuts the
//! mirror into checkpoints and ships them to backups ([`BackupServer`]), each of which applies
//! a checkpoint whole or not at all. A commit returns a [`Ticket`]; the reply it caused may
//! leave once [`Primary::is_held`] says every backup holds its checkpoint (output commit).
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use nonstop::{CheckpointId, ClusterKey, CommitPolicy, Mirror, Primary, PrimaryConfig, Region, Term, UpdateProtocol};
//!
//! let region = Region::map(nonstop::DEFAULT_REGION_BASE, 64 << 20)?;
//! let mirror = Arc::new(Mirror::new(region, Some(UpdateProtocol::Au), CheckpointId(1)));
//! let primary = Primary::start(mirror.clone(), PrimaryConfig {
//!     term: Term(1),
//!     policy: CommitPolicy::Epoch { interval_us: 1000, max_commits: 0 },
//!     required_backups: 1,
//!     key: ClusterKey::from_hex(&std::fs::read_to_string("cluster.key")?)?,
//! });
//! primary.attach_backup("127.0.0.2:7400".parse()?, Duration::from_secs(5))?;
//! let tx = mirror.begin();
//! *tx.write::<u64>(0)? += 1;
//! let ticket = tx.commit();
//! primary.wait_held(ticket, Duration::from_secs(1))?; // now the reply may leave
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod node;

pub use nonstop_client::{Answered, AsyncClient, Client, ClientError};
pub use nonstop_net::{BackupServer, ConsistencyCheck, Primary, PrimaryConfig, PrimaryError, ReplicationStats};
pub use nonstop_proto::auth::ClusterKey;
/// How the clients of an actively replicated service decide on its replicas' replies.
pub use nonstop_proto::client::ReplyMode;
pub use nonstop_proto::primary::Ticket;
pub use nonstop_proto::{CheckpointId, CommitPolicy, PAGE_SIZE, Term, UpdateProtocol};
pub use nonstop_region::{DEFAULT_REGION_BASE, Mirror, Region, RegionError, RegionWrite, Transaction, TxError};
pub use nonstop_region::{heap, tracking};
pub use nonstop_service::{
    Built, CallError, Caller, ClientMemory, Executed, Hosted, HostedThreads, Image, Registry, Runs, Service,
    ServiceError, Settings, Store, ThreadedService, View, Writer, Writes,
};

/// What a multithreaded service's worker threads share state with ([`ThreadedService`]):
/// mutexes taken in the order a deterministic scheduler decides, the same on every replica.
pub mod sync {
    pub use nonstop_service::threaded::{Guard, HandleError, Mutex, MutexId, ScheduleError, Scheduler, Worker};
}

/// The service kinds `nonstop node` runs: `bank`, `ledger`, `order-entry` and `kv` (Redis's
/// commands, served on a node's `redis` port). A node binary of your own starts
/// from an empty [`Registry`] (or this one) and registers its kinds.
pub fn builtins() -> Registry {
    let mut registry = Registry::new();
    nonstop_workloads::register_builtins(&mut registry);
    nonstop_kv::service::register(&mut registry);
    registry
}
