//! Who belongs to an active service's order group, and how a replica whose process restarted
//! comes back.
//!
//! The group's log lives in memory, so a restarted replica has forgotten what it acknowledged
//! and voted for: under its old Raft id it could help lose a committed entry or elect two
//! leaders in a term. It comes back as a new member instead, under an id that names its node
//! and the incarnation of its process ([`member_id`]), in three steps the order's leader takes
//! one at a time ([`next_change`]):
//!
//! 1. the new incarnation asks to join ([`Join`]); the leader adds it as a learner, which
//!    receives the log (or a snapshot of the order, and then another replica's state: see
//!    [`crate::feed`]) and votes in nothing, so adding it never costs the quorum;
//! 2. once it follows the order it says it is ready, and the leader swaps it for its node's old
//!    incarnation in one joint configuration change (both the old and the new voters must
//!    agree while it lasts, so no moment has fewer voters than before);
//! 3. the leader leaves the joint configuration (raft-rs does it by itself unless the
//!    leader changed meanwhile, and then the new leader does).
//!
//! Learners of an older incarnation (a join that a second restart interrupted) are removed.
//!
//! This is policy only, pure and deterministic; the node and the simulator drive it.
//!
//! ```
//! use nonstop_active::membership::{Join, member_id, next_change};
//! use nonstop_control::{Members, MembershipChange};
//! let replicas = [1, 2, 3];
//! let members = Members { voters: vec![member_id(1, 0), member_id(2, 0), member_id(3, 0)], ..Members::default() };
//! // Node 3 restarted: its incarnation 1 asks to join, and is added as a learner first.
//! let join = Join { member: member_id(3, 1), ready: false };
//! assert_eq!(next_change(&members, &[join], &replicas), Some(MembershipChange::AddLearner(member_id(3, 1))));
//! let members = Members { learners: vec![member_id(3, 1)], ..members };
//! assert_eq!(next_change(&members, &[join], &replicas), None, "not ready yet");
//! let ready = Join { ready: true, ..join };
//! let swap = MembershipChange::Promote { learner: member_id(3, 1), replacing: Some(member_id(3, 0)) };
//! assert_eq!(next_change(&members, &[ready], &replicas), Some(swap));
//! ```

use nonstop_control::{Members, MembershipChange, NodeId};
use serde::{Deserialize, Serialize};

/// Bits of a member id that name the node; the rest count its process's incarnations.
const NODE_BITS: u32 = 16;

/// The largest node id a member id can name.
pub const MAX_NODE: u64 = (1 << NODE_BITS) - 1;

/// The Raft id of `node`'s replica in the `incarnation`-th process of that node (0: the first).
/// Incarnation 0 is the node id itself.
pub fn member_id(node: u64, incarnation: u32) -> NodeId {
    debug_assert!(node <= MAX_NODE && node > 0, "node ids are 1..=65535");
    NodeId(u64::from(incarnation) << NODE_BITS | (node & MAX_NODE))
}

/// The node a member id names.
pub fn node_of(member: NodeId) -> u64 {
    member.0 & MAX_NODE
}

/// The incarnation a member id names.
pub fn incarnation_of(member: NodeId) -> u32 {
    (member.0 >> NODE_BITS) as u32
}

/// A replica's request to belong to the group: `member` is its id in this process; `ready`
/// once it follows the order (its state is the order's at some point, and it executes on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    /// Its member id.
    pub member: NodeId,
    /// Whether it follows the order.
    pub ready: bool,
}

/// The membership change the leader proposes next, if any, given the members as it applied
/// them, the joins heard (the latest per node), and the nodes that hold replicas. The caller
/// proposes it only when no change is pending.
pub fn next_change(members: &Members, joins: &[Join], replicas: &[u64]) -> Option<MembershipChange> {
    if members.is_joint() {
        return Some(MembershipChange::LeaveJoint);
    }
    let newest = |node: u64| members.all().filter(|m| node_of(*m) == node).map(incarnation_of).max();
    // A learner left behind by a newer incarnation of its node never becomes ready.
    if let Some(stale) =
        members.learners.iter().find(|l| newest(node_of(**l)).is_some_and(|newest| newest > incarnation_of(**l)))
    {
        return Some(MembershipChange::Remove(*stale));
    }
    for join in joins {
        let node = node_of(join.member);
        if !replicas.contains(&node) || members.voters.contains(&join.member) {
            continue;
        }
        // A late join of an incarnation older than one the group knows is stale.
        if newest(node).is_some_and(|newest| newest > incarnation_of(join.member)) {
            continue;
        }
        if !members.learners.contains(&join.member) {
            return Some(MembershipChange::AddLearner(join.member));
        }
        if join.ready {
            let replacing = members.voters.iter().copied().find(|v| node_of(*v) == node);
            if replacing.is_some() || members.voters.len() < replicas.len() {
                return Some(MembershipChange::Promote { learner: join.member, replacing });
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn founders() -> Members {
        Members { voters: vec![member_id(1, 0), member_id(2, 0), member_id(3, 0)], ..Members::default() }
    }

    #[test]
    fn ids_name_a_node_and_an_incarnation() {
        assert_eq!(member_id(3, 0), NodeId(3), "a first incarnation keeps its node's id");
        let id = member_id(65535, 7);
        assert_eq!((node_of(id), incarnation_of(id)), (65535, 7));
    }

    #[test]
    fn a_joint_configuration_is_left_first() {
        let joint = Members { outgoing: vec![member_id(1, 0), member_id(2, 0), member_id(3, 0)], ..founders() };
        let join = Join { member: member_id(3, 1), ready: true };
        assert_eq!(next_change(&joint, &[join], &[1, 2, 3]), Some(MembershipChange::LeaveJoint));
    }

    #[test]
    fn strangers_voters_and_stale_incarnations_change_nothing() {
        let members = Members { learners: vec![member_id(3, 2)], ..founders() };
        let joins = [
            Join { member: member_id(9, 1), ready: true }, // not a replica's node
            Join { member: member_id(1, 0), ready: true }, // a voter already
            Join { member: member_id(3, 1), ready: true }, // older than the learner of node 3
        ];
        assert_eq!(next_change(&members, &joins, &[1, 2, 3]), None);
    }

    #[test]
    fn a_learner_of_an_older_incarnation_is_removed() {
        let members = Members { learners: vec![member_id(3, 1), member_id(3, 2)], ..founders() };
        assert_eq!(next_change(&members, &[], &[1, 2, 3]), Some(MembershipChange::Remove(member_id(3, 1))));
    }

    #[test]
    fn a_ready_learner_without_an_old_voter_is_added_only_while_voters_are_short() {
        let two = Members {
            voters: vec![member_id(1, 0), member_id(2, 0)],
            learners: vec![member_id(3, 1)],
            ..Members::default()
        };
        let ready = Join { member: member_id(3, 1), ready: true };
        let promote = MembershipChange::Promote { learner: member_id(3, 1), replacing: None };
        assert_eq!(next_change(&two, &[ready], &[1, 2, 3]), Some(promote));
        let join_four = Join { member: member_id(4, 0), ready: true };
        let full = Members { learners: vec![member_id(4, 0)], ..founders() };
        assert_eq!(
            next_change(&full, &[join_four], &[1, 2, 3, 4]),
            Some(MembershipChange::Promote { learner: member_id(4, 0), replacing: None })
        );
        assert_eq!(next_change(&full, &[join_four], &[1, 2, 3]), None, "node 4 holds no replica");
    }
}
