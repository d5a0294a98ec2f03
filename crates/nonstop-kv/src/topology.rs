//! Where the `kv` service runs, as Redis clients are told: `ROLE` and `INFO replication` on the
//! data port, and the whole Sentinel view on the sentinel port.
//!
//! The node builds a [`Topology`] from the control plane's record of the service (its term,
//! primary and backups) and each node's configured Redis and sentinel addresses; nothing here
//! decides a role.

use std::net::SocketAddr;

/// One node as clients reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Instance {
    /// The node's number in the cluster.
    pub node: u64,
    /// Its Redis port (or, in [`Topology::sentinels`], its sentinel port).
    pub addr: SocketAddr,
    /// The reporting node's failure detector believes it down (Sentinel's `s_down`).
    pub down: bool,
}

impl Instance {
    /// Sentinel's 40-character run id for it: fixed by its node number, so every sentinel
    /// names it alike.
    pub fn run_id(&self) -> String {
        run_id(self.node)
    }
}

/// Sentinel's 40-character run id of node `node`.
pub fn run_id(node: u64) -> String {
    format!("{node:040x}")
}

/// The service's placement now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topology {
    /// The service's name: Sentinel's master name.
    pub name: String,
    /// The record's term: Sentinel's configuration epoch, which moves on with every failover.
    pub epoch: u64,
    /// The primary's Redis port; `None` until the record names one with a Redis port.
    pub primary: Option<Instance>,
    /// The backups' Redis ports.
    pub replicas: Vec<Instance>,
    /// Every node's sentinel port, the reporting node's included.
    pub sentinels: Vec<Instance>,
}

/// What the node that holds a connection is for the service when a request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    /// The primary: it runs writes and reads.
    Primary,
    /// Not the primary (a backup, a spare, or a deposed primary): it sends clients away.
    Replica,
}

impl Serves {
    /// The role as Redis names it in `HELLO` and `INFO`.
    pub fn role_name(self) -> &'static str {
        match self {
            Serves::Primary => "master",
            Serves::Replica => "slave",
        }
    }
}
