//! The service interface of nonstop: what a service implements to run under a node, and the
//! exactly-once request handling the platform gives it.
//!
//! * [`Service`]: the trait a team implements in its own crate: its region size, how it
//!   creates its state, executes a request, answers a query and checks an image.
//! * [`Store`], [`View`], [`Image`]: what a service sees of the region for one request, one
//!   query, one check.
//! * [`Hosted`]: a service as the node runs it (bytes in, bytes out, exactly once), with the
//!   platform's [`table`] of clients beside the service's state in the same checkpoint.
//! * [`ThreadedService`]: a multithreaded service, whose worker threads share state under
//!   nonstop's mutexes; it runs actively replicated, each replica's threads scheduled
//!   deterministically ([`threaded`]), and [`HostedThreads`] is how the node runs it.
//! * [`Registry`]: the kinds a node binary can run, built from each service's settings.

mod hosted;
mod registry;
mod service;
mod store;
pub mod table;
pub mod threaded;

pub use hosted::{AuditReport, CallError, Executed, Hosted};
pub use nonstop_proto::client::ClientMemory;
pub use registry::{Built, Registry, RegistryError, Runs, Settings};
pub use service::{Service, ServiceError, Writes};
pub use store::{Caller, Image, Store, View, Writer};
pub use table::ClientRecord;
pub use threaded::{HostedThreads, ThreadedService};
