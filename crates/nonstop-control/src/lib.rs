//! nonstop's control plane: which node is the primary of each service, which nodes are its
//! backups, and in which term, agreed by a majority with Raft ([raft-rs]).
//!
//! The data itself never goes through Raft: it travels checkpoint by checkpoint from primary to
//! backups (`nonstop-net`). Raft only orders the few decisions that must never be made twice:
//! promoting a backup (a new term), adding or dropping a backup, granting a lease to a primary
//! that runs without backups.
//!
//! * [`cluster`]: the replicated state and its commands, with the safety rules.
//! * [`coordinator`]: failure detection and the leader's decisions (whom to promote, where
//!   leadership lives).
//! * [`lease`]: the holder's side of a lease (asks, grants, expiry).
//! * [`role`]: the role one node plays in one service (standby, promotion, primary duties with
//!   re-protection, deposition), as a pure state machine the agent and the simulator both drive.
//! * [`node`]: one node's Raft instance, sans I/O: ticks and messages in, messages and applied
//!   commands out.
//! * [`storage`]: the in-memory Raft log, compacted behind snapshots of the cluster state.
//! * [`log`]: the durable Raft log (a checksummed file, or memory for the simulator).
//!
//! [raft-rs]: https://github.com/tikv/raft-rs

pub mod cluster;
pub mod coordinator;
pub mod lease;
pub mod log;
pub mod node;
pub mod role;
pub mod storage;

pub use cluster::{ClusterState, Command, NodeId, PromotionReason, ServiceRecord};
pub use node::{
    ControlConfig, ControlError, ControlNode, ControlOutput, ElectionJitter, MAX_DYNAMIC_MEMBERS, Members, Membership,
    MembershipChange, RaftNode, RaftOutput, Replicated,
};
