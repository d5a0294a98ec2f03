//! nonstop's replication protocol, free of sockets, threads and clocks.
//!
//! Everything here is a pure function or a state machine: bytes and events go in, frames and
//! actions come out, and time is a value passed in by the caller. The TCP driver
//! (`nonstop-net`) and the deterministic simulator (`nonstop-sim`) run the very same code.
//!
//! The pieces, in the order a checkpoint travels through them:
//!
//! * [`auth`]: the handshake that proves both ends hold the cluster key and derives the
//!   per-connection session keys that MAC every frame.
//! * [`diff`]: DU's page diff: the runs of bytes in which a dirty page differs from its twin.
//! * [`runs`]: the payload that carries runs (region offset, length, bytes) for DU and AU alike.
//! * [`frame`]: the wire format: a fixed header with term, checkpoint, sequence number and
//!   CRC32C, the payload, and a 16-byte keyed MAC; [`frame::FrameReader`] decodes a byte stream
//!   incrementally and refuses anything malformed.
//! * [`primary`]: the primary's bookkeeping: which checkpoint is open, what each backup has
//!   acknowledged, which checkpoint every backup holds (the output-commit point).
//! * [`backup`]: the backup's state machine: stage a checkpoint's runs, apply them only when its
//!   closing marker arrives intact, acknowledge.
//! * [`integrity`]: a checksum per 64-byte line of the region, kept by primary and backups alike,
//!   so that memory corrupted behind the program's back is never served, replicated or promoted.
//! * [`history`]: the checkpoints a backup's image went through, with the pages each wrote,
//!   so that after a promotion another holder is rebased with the pages that differ.
//! * [`control`]: the small control messages (attach, verify) encoded with postcard.
//! * [`client`]: the client protocol: requests, answers and redirects.
//! * [`parts`]: control-plane messages longer than one frame, sent in parts and reassembled.
//! * [`operator`]: the operator protocol (status, switchover, fault arming), which travels
//!   only on authenticated control-port connections.

pub mod auth;
pub mod backup;
pub mod client;
pub mod control;
pub mod diff;
pub mod frame;
pub mod history;
pub mod integrity;
pub mod operator;
pub mod parts;
pub mod primary;
pub mod runs;
pub mod transfer;
pub mod written;

use serde::{Deserialize, Serialize};

/// Size of a region page in bytes. Dirty tracking, twins and diffs work page by page.
pub const PAGE_SIZE: usize = 4096;

/// The number of a primary's reign. Every frame carries it; a backup refuses older terms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Term(pub u64);

/// The number of a checkpoint: a consistent cut of the region, the unit of replication.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CheckpointId(pub u64);

impl CheckpointId {
    /// The checkpoint that follows this one.
    pub fn next(self) -> CheckpointId {
        CheckpointId(self.0 + 1)
    }
}

impl std::fmt::Display for CheckpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "checkpoint {}", self.0)
    }
}

impl std::fmt::Display for Term {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "term {}", self.0)
    }
}

/// How changes travel from the primary to its backups (Zhou et al., ICS 1999).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateProtocol {
    /// Deliberate update: at a checkpoint, diff each dirty page against its twin and send the
    /// changed runs.
    Du,
    /// Automatic update: ranges are streamed as transactions commit them; a checkpoint only
    /// closes the stream.
    Au,
}

/// When a checkpoint is taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommitPolicy {
    /// Every transaction commit is a checkpoint; the committing thread waits for the backups.
    Sync,
    /// A checkpoint every `interval_us` microseconds or every `max_commits` commits, whichever
    /// comes first; the next epoch executes while the last one is in flight (Remus).
    Epoch {
        /// The epoch length in microseconds.
        interval_us: u64,
        /// Cut early once this many commits are in the epoch (0: no limit).
        max_commits: u64,
    },
}

/// Nanoseconds on the driver's monotonic clock. Protocol code never reads a clock: the driver
/// (or the simulator) passes the current time in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Nanos(pub u64);

impl Nanos {
    /// The time `us` microseconds later.
    pub fn plus_us(self, us: u64) -> Nanos {
        Nanos(self.0.saturating_add(us.saturating_mul(1000)))
    }
}
