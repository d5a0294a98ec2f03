//! nonstop's thin TCP drivers around the protocol state machines of `nonstop-proto`.
//!
//! * [`conn`]: authenticated connections (handshake, MACed frames).
//! * [`admission`]: the door of a listening port: concurrent handshakes, one deadline each,
//!   bounded in total and per source address.
//! * [`primary`]: the primary's replicator ([`Primary`]).
//! * [`backup`]: the backup's server ([`BackupServer`]).
//! * [`detections`]: what the integrity checks caught (frames, handshakes, corrupted images).
//! * [`fault`]: fault points that kill the process inside a checkpoint, for chaos tests.
//! * [`stop`]: a stop signal that wakes a thread waiting for connections.
//! * [`rtt`]: the raw round trip of the same transport, for comparison.
//! * [`told`]: conditions retried often and logged once per change.

pub mod admission;
pub mod backup;
pub mod conn;
pub mod detections;
pub mod fault;
pub mod primary;
pub mod rtt;
pub mod stop;
pub mod told;

pub use backup::{BackupServer, ConsistencyCheck};
pub use primary::{Primary, PrimaryConfig, PrimaryError, ReplicationStats};
