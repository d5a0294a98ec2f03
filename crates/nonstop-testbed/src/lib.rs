//! nonstop's test bed: clusters of node binaries to run and break.
//!
//! A [`cluster::LocalCluster`] runs node processes on loopback addresses; a
//! [`netns::Testbed`] gives each node a host of its own (a network namespace) with nftables
//! for network faults; [`fault_proxy`] delays, drops and cuts a TCP stream. On them, the bank
//! [`load`] records every operation for the history checker ([`nonstop_history`]), a
//! [`sampled`] load drives any service through its node binary, and [`chaos`] kills primaries,
//! cuts networks and flips bits, then judges. `nonstop demo` is [`demo::run`].
//!
//! None of this is in the `nonstop` crate: a service's own crate depends on `nonstop` alone and
//! compiles none of it.

pub mod chaos;
pub mod chart;
pub mod cluster;
pub mod demo;
pub mod fault_proxy;
pub mod load;
pub mod local;
pub mod netns;
pub mod redis_load;
pub mod sampled;
pub mod status;

pub use nonstop_history as history;
