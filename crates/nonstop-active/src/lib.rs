//! Active replication: every replica executes the same requests in the same order and the
//! replies are voted on (docs/active.md has the whole design; most of it is not built yet).
//!
//! What is here: the deterministic mutex schedulers that let a multithreaded service run
//! actively replicated. Two replicas whose threads run at different speeds must still acquire
//! every mutex in the same order, or their states drift apart; a [`schedule::Scheduler`]
//! decides that order from the threads' requests alone, never from their timing, and
//! [`sync`] drives real threads with it.

pub mod calls;
pub mod dissent;
pub mod execute;
pub mod feed;
pub mod membership;
pub mod order;
pub mod recent;
pub mod schedule;
pub mod stream;
pub mod sync;
