//! The mirrored region of a nonstop service.
//!
//! * [`Region`]: memory mapped at the same virtual address on every node.
//! * [`Mirror`]: the primary's view: [`Transaction`]s write through declared ranges, and
//!   [`Mirror::cut`] turns what they committed into a checkpoint for the chosen update protocol
//!   (DU twins and diffs, or the AU stream).
//!
//! A backup needs only the [`Region`]: it applies checkpoints with
//! [`nonstop_proto::backup::Backup`].

mod capture;
pub mod heap;
pub use capture::TWIN_BLOCK;
pub mod locks;
mod mapping;
mod mirror;
pub mod tracking;
mod transaction;
mod update;

pub use mapping::{DEFAULT_REGION_BASE, MAX_REGION_LEN, Region, RegionError, advise_huge_pages};
pub use mirror::{CheckpointContent, CorruptionHandler, FirstImages, Mirror, STREAM_CHUNK, STREAM_LIMIT};
pub use transaction::{Transaction, TxError};
pub use update::{RegionWrite, Update};
