//! What a node reports of itself: `nonstop status`, the metrics endpoint and the test bed read
//! these, over the authenticated operator port.

use nonstop_control::cluster::Promotion;

/// What `nonstop status` shows of a node.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct NodeStatus {
    /// The node.
    pub node: u64,
    /// The control-plane leader it knows.
    pub leader: Option<u64>,
    /// The Raft term.
    pub raft_term: u64,
    /// Per passively replicated service: the record and this node's report.
    pub services: Vec<ServiceStatus>,
    /// Per actively replicated service: this node's replica.
    #[serde(default)]
    pub replicas: Vec<ReplicaStatus>,
    /// Peers believed alive.
    pub alive: Vec<u64>,
    /// What the node's integrity checks caught since it started.
    #[serde(default)]
    pub detections: nonstop_net::detections::DetectionCounts,
    /// The client port's connections.
    #[serde(default)]
    pub clients: ClientPortStatus,
}

/// One service in [`NodeStatus`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceStatus {
    /// The service.
    pub name: String,
    /// The record's term.
    pub term: u64,
    /// The record's version: it moves on with every change of the record within a term.
    #[serde(default)]
    pub version: u64,
    /// The record's primary.
    pub primary: u64,
    /// The record's backups.
    pub backups: Vec<u64>,
    /// Holders a promotion kept, being brought to the new primary's checkpoint.
    #[serde(default)]
    pub catching_up: Vec<u64>,
    /// Backups wanted.
    #[serde(default)]
    pub backups_wanted: u8,
    /// Output needs this many backups in the record.
    #[serde(default)]
    pub min_backups: u8,
    /// Fewer backups than wanted: the degraded window after a failover or a lost backup.
    #[serde(default)]
    pub degraded: bool,
    /// Fewer backups than `min_backups`: the primary holds its replies.
    #[serde(default)]
    pub holding_output: bool,
    /// Seconds this node served the service as primary while it was degraded.
    #[serde(default)]
    pub unprotected_seconds: f64,
    /// This node's role.
    pub role: String,
    /// How the primary finds what was written: "declared", "uffd" or "mprotect".
    #[serde(default)]
    pub tracking: String,
    /// This node's held (backup) or released (primary) checkpoint.
    pub held: Option<u64>,
    /// Bytes of region this node holds for the service (0: none).
    #[serde(default)]
    pub region_bytes: u64,
    /// Failovers so far.
    pub failovers: u64,
    /// The last change of primary.
    pub last_promotion: Option<Promotion>,
    /// On the primary: how far each attached backup is behind.
    pub lag: Vec<BackupLagStatus>,
}

/// This node's replica of an actively replicated service, in [`NodeStatus`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    /// The service.
    pub name: String,
    /// The replica's number in the group.
    pub replica: u16,
    /// The order group's leader this replica knows (a node id).
    pub order_leader: Option<u64>,
    /// Its member id in the order group (its node id in the node's first process; a
    /// restarted node's replica joins under a new one).
    pub member: u64,
    /// What it is in the order group.
    pub order_role: OrderRole,
    /// The order group is between two configurations (a restarted replica is being swapped in
    /// for its old incarnation): until it leaves the joint one, both the old and the new
    /// voters' majorities are needed, so the old incarnation still counts as a failed replica.
    pub order_joint: bool,
    /// The group's Raft term.
    pub order_term: u64,
    /// The last log index of the order applied here.
    pub applied_index: u64,
    /// Requests the order delivered here.
    pub delivered: u64,
    /// Requests of new clients the order refused because it remembered as many clients as it
    /// may, none idle long enough to be forgotten.
    pub turned_away: u64,
    /// Requests this replica executed itself (not those a transferred state covered).
    pub executed: u64,
    /// The point of the order its state is at: requests delivered before it.
    pub position: u64,
    /// Whether it serves.
    pub standing: ReplicaStanding,
    /// States it took from another replica, after falling behind the order's compacted log.
    pub state_transfers: u64,
    /// How long the last of those took, from the order's snapshot (or its dissent found) to
    /// serving again, its state proven.
    pub last_catch_up_ms: Option<f64>,
    /// Times a majority's digests of their outcomes contradicted this replica's own (it then
    /// took a live replica's state).
    pub dissents_found: u64,
    /// Times it saw a majority's digests contradict another replica's.
    pub dissents_reported: u64,
    /// A multithreaded service's worker threads (`None`: one request at a time, in a region).
    pub workers: Option<WorkerThreads>,
}

/// A multithreaded service's worker threads on one replica, in [`ReplicaStatus`].
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkerThreads {
    /// The scheduler that orders their mutex acquisitions (`npds`, `pds1`, `pds2`).
    pub scheduler: String,
    /// How many.
    pub threads: u16,
}

/// What a replica is in its order group, in [`ReplicaStatus`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderRole {
    /// It votes.
    #[default]
    Voter,
    /// It receives the order and votes in nothing yet (a new member catching up).
    Learner,
    /// It asked to join and is not a member yet.
    Joining,
    /// It left the group for good (until its node restarts).
    Out,
}

/// Whether a replica serves, in [`ReplicaStatus`].
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaStanding {
    /// It executes the order and answers calls.
    #[default]
    Serving,
    /// It is taking another replica's state: it fell behind the order's compacted log, or a
    /// majority's digests of their outcomes contradicted its own.
    CatchingUp,
    /// It took another replica's state and is proving it against a third replica's (it
    /// answers once one of its windows of outcomes digests alike).
    Proving,
    /// The state it took disagrees with what node `against`'s replica digested (its own node:
    /// what it digested itself before it fell behind): one of them is wrong, and it cannot tell
    /// which (two faults at once). It stays out until it takes a state again.
    Refuted {
        /// The node whose replica it disagrees with.
        against: u64,
    },
    /// It stopped for good (until its node restarts), for this reason.
    Stopped {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for ReplicaStanding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReplicaStanding::Serving => f.write_str("serving"),
            ReplicaStanding::CatchingUp => f.write_str("catching up (state transfer)"),
            ReplicaStanding::Proving => f.write_str("proving the state it took"),
            ReplicaStanding::Refuted { against } => {
                write!(f, "out: the state it took disagrees with node {against}'s replica")
            }
            ReplicaStanding::Stopped { reason } => write!(f, "stopped: {reason}"),
        }
    }
}

/// How far one backup is behind its primary, in [`ServiceStatus`].
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BackupLagStatus {
    /// The backup node.
    pub backup: u64,
    /// The last checkpoint it acknowledged.
    pub acked: Option<u64>,
    /// Checkpoints cut but not acknowledged.
    pub checkpoints: u64,
    /// Region bytes of those checkpoints.
    pub bytes: u64,
}

/// What the client port counts ([`crate::client_server::ClientCounters`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientPortStatus {
    /// Connections open now.
    pub open: u64,
    /// Connections refused because `max_clients` were open.
    pub refused_full: u64,
    /// Connections closed after sending nothing for the idle timeout.
    pub closed_idle: u64,
    /// Connections closed for not finishing a message, or not reading a reply, in time.
    pub closed_slow: u64,
}
