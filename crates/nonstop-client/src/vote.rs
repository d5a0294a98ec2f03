//! The voter: which of the replicas' replies to a request the client takes, and which replicas
//! disagreed with it. Pure: replies in, a verdict out; it lives in the client, so that it is no
//! single point of failure (each client votes on its own requests).
//!
//! ```
//! use nonstop_client::vote::{ReplicaId, ReplyMode, Verdict, Vote};
//! let mut vote = Vote::new(ReplyMode::Majority, 3, ReplicaId(0)).unwrap();
//! assert_eq!(vote.reply(ReplicaId(2), b"7".to_vec()).unwrap(), Verdict::Waiting);
//! assert_eq!(vote.reply(ReplicaId(0), b"8".to_vec()).unwrap(), Verdict::Waiting);
//! // Two of three agree: that is the answer, and replica 0 is reported.
//! assert_eq!(vote.reply(ReplicaId(1), b"7".to_vec()).unwrap(), Verdict::Decided);
//! assert_eq!(vote.decided(), Some(&b"7"[..]));
//! assert_eq!(vote.dissenters(), vec![ReplicaId(0)]);
//! ```

pub use nonstop_proto::client::ReplyMode;
use thiserror::Error;

/// A replica of an actively replicated service, numbered from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u16);

/// Where a vote stands after a reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not decided yet.
    Waiting,
    /// Decided: [`Vote::decided`] is the answer.
    Decided,
    /// No reply can win any more (every replica answered, or too few are left to agree with
    /// any reply): the request's outcome is unknown, and the replicas disagree.
    Undecidable,
}

/// A reply the voter cannot take.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum VoteError {
    /// An empty group, or a majority vote over an even number of replicas (2f+1 are needed
    /// to mask f faults; an even group masks no more than one replica fewer).
    #[error("{replicas} replicas cannot vote by {mode:?}: use an odd number, 1 or more")]
    BadGroup {
        /// The group's size.
        replicas: u16,
        /// The mode asked for.
        mode: ReplyMode,
    },
    /// A reply from a replica outside the group.
    #[error("a reply from replica {replica}, but the group has replicas 0 to {}", .replicas - 1)]
    UnknownReplica {
        /// The replica named.
        replica: u16,
        /// The group's size.
        replicas: u16,
    },
    /// A second reply from one replica to one request: it is faulty, or the reply was
    /// duplicated on the way; the first one stands.
    #[error("replica {replica} replied twice to one request{}", if *.differs { ", differently" } else { "" })]
    Twice {
        /// The replica.
        replica: u16,
        /// Whether the second reply differed from the first.
        differs: bool,
    },
}

/// The vote on one request's replies.
#[derive(Clone, Debug)]
pub struct Vote {
    mode: ReplyMode,
    leader: ReplicaId,
    replies: Vec<Option<Vec<u8>>>,
    decided: Option<Vec<u8>>,
}

impl Vote {
    /// A vote among `replicas` replicas whose leader is `leader` (used by
    /// [`ReplyMode::LeaderOnly`]).
    pub fn new(mode: ReplyMode, replicas: u16, leader: ReplicaId) -> Result<Vote, VoteError> {
        if replicas == 0 || (mode == ReplyMode::Majority && replicas.is_multiple_of(2)) {
            return Err(VoteError::BadGroup { replicas, mode });
        }
        if leader.0 >= replicas {
            return Err(VoteError::UnknownReplica { replica: leader.0, replicas });
        }
        Ok(Vote { mode, leader, replies: vec![None; usize::from(replicas)], decided: None })
    }

    /// Equal replies that decide a majority vote: f+1 of 2f+1.
    pub fn quorum(&self) -> usize {
        self.replies.len() / 2 + 1
    }

    /// Takes `reply` from `from`, and says where the vote stands.
    pub fn reply(&mut self, from: ReplicaId, reply: Vec<u8>) -> Result<Verdict, VoteError> {
        let replicas = self.replies.len() as u16;
        let slot =
            self.replies.get_mut(usize::from(from.0)).ok_or(VoteError::UnknownReplica { replica: from.0, replicas })?;
        if let Some(first) = slot {
            return Err(VoteError::Twice { replica: from.0, differs: *first != reply });
        }
        *slot = Some(reply);
        if self.decided.is_none() {
            self.decided = self.winner();
        }
        Ok(self.verdict())
    }

    /// Where the vote stands.
    pub fn verdict(&self) -> Verdict {
        if self.decided.is_some() {
            return Verdict::Decided;
        }
        let missing = self.replies.iter().filter(|reply| reply.is_none()).count();
        let possible = match self.mode {
            ReplyMode::Majority => self.most_agreeing() + missing >= self.quorum(),
            ReplyMode::LeaderOnly => self.replies[usize::from(self.leader.0)].is_none(),
            ReplyMode::PassFirst => missing > 0,
        };
        if possible { Verdict::Waiting } else { Verdict::Undecidable }
    }

    /// The answer, once decided.
    pub fn decided(&self) -> Option<&[u8]> {
        self.decided.as_deref()
    }

    /// The replicas whose reply differs from the answer (none before it is decided): the ones
    /// to report, take out and re-integrate.
    pub fn dissenters(&self) -> Vec<ReplicaId> {
        let Some(decided) = &self.decided else { return Vec::new() };
        self.replies
            .iter()
            .enumerate()
            .filter(|(_, reply)| reply.as_ref().is_some_and(|reply| reply != decided))
            .map(|(replica, _)| ReplicaId(replica as u16))
            .collect()
    }

    /// Whether every replica has replied.
    pub fn complete(&self) -> bool {
        self.replies.iter().all(Option::is_some)
    }

    fn winner(&self) -> Option<Vec<u8>> {
        match self.mode {
            ReplyMode::Majority => {
                let quorum = self.quorum();
                self.replies.iter().flatten().find(|candidate| self.agreeing(candidate) >= quorum).cloned()
            }
            ReplyMode::LeaderOnly => self.replies[usize::from(self.leader.0)].clone(),
            // The first to arrive is the only one there when it decides.
            ReplyMode::PassFirst => self.replies.iter().flatten().next().cloned(),
        }
    }

    fn agreeing(&self, candidate: &[u8]) -> usize {
        self.replies.iter().flatten().filter(|reply| reply.as_slice() == candidate).count()
    }

    fn most_agreeing(&self) -> usize {
        self.replies.iter().flatten().map(|reply| self.agreeing(reply)).max().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote(mode: ReplyMode) -> Vote {
        Vote::new(mode, 3, ReplicaId(1)).unwrap()
    }

    #[test]
    fn a_majority_outvotes_one_wrong_replica_whatever_the_arrival_order() {
        let replies = [(ReplicaId(0), b"a".to_vec()), (ReplicaId(1), b"b".to_vec()), (ReplicaId(2), b"a".to_vec())];
        for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
            let mut vote = vote(ReplyMode::Majority);
            let verdicts: Vec<Verdict> =
                order.iter().map(|&i| vote.reply(replies[i].0, replies[i].1.clone()).unwrap()).collect();
            assert_eq!(vote.decided(), Some(&b"a"[..]), "{order:?}");
            assert_eq!(vote.dissenters(), vec![ReplicaId(1)], "{order:?}");
            // Decided at the second "a", not before.
            let second_a = order.iter().filter(|&&i| i != 1).nth(1).unwrap();
            let at = order.iter().position(|i| i == second_a).unwrap();
            assert!(verdicts[..at].iter().all(|v| *v == Verdict::Waiting), "{order:?} {verdicts:?}");
            assert_eq!(verdicts[at], Verdict::Decided);
        }
    }

    #[test]
    fn a_majority_vote_waits_for_a_crashed_replica_only_while_it_could_matter() {
        let mut vote = vote(ReplyMode::Majority);
        assert_eq!(vote.reply(ReplicaId(0), b"a".to_vec()), Ok(Verdict::Waiting));
        assert_eq!(vote.reply(ReplicaId(2), b"a".to_vec()), Ok(Verdict::Decided));
        assert!(!vote.complete());
        assert!(vote.dissenters().is_empty());
    }

    #[test]
    fn three_different_replies_are_undecidable_and_say_so_as_soon_as_known() {
        let mut vote = vote(ReplyMode::Majority);
        assert_eq!(vote.reply(ReplicaId(0), b"a".to_vec()), Ok(Verdict::Waiting));
        assert_eq!(vote.reply(ReplicaId(1), b"b".to_vec()), Ok(Verdict::Waiting));
        assert_eq!(vote.reply(ReplicaId(2), b"c".to_vec()), Ok(Verdict::Undecidable));
        assert_eq!(vote.decided(), None);
        let mut five = Vote::new(ReplyMode::Majority, 5, ReplicaId(0)).unwrap();
        for (replica, reply) in [(0, "a"), (1, "b"), (2, "c")] {
            five.reply(ReplicaId(replica), reply.as_bytes().to_vec()).unwrap();
        }
        // Two replies left could still make three "a".
        assert_eq!(five.verdict(), Verdict::Waiting);
        // One left can make at most two agreeing, short of three.
        assert_eq!(five.reply(ReplicaId(3), b"d".to_vec()), Ok(Verdict::Undecidable));
    }

    #[test]
    fn leader_only_takes_the_leader_and_checks_the_followers_against_it() {
        let mut vote = vote(ReplyMode::LeaderOnly);
        assert_eq!(vote.reply(ReplicaId(0), b"x".to_vec()), Ok(Verdict::Waiting));
        assert_eq!(vote.reply(ReplicaId(1), b"y".to_vec()), Ok(Verdict::Decided));
        assert_eq!(vote.decided(), Some(&b"y"[..]));
        assert_eq!(vote.dissenters(), vec![ReplicaId(0)]);
    }

    #[test]
    fn pass_first_takes_whatever_comes_first() {
        let mut vote = vote(ReplyMode::PassFirst);
        assert_eq!(vote.reply(ReplicaId(2), b"z".to_vec()), Ok(Verdict::Decided));
        assert_eq!(vote.reply(ReplicaId(0), b"z".to_vec()), Ok(Verdict::Decided));
        assert_eq!(vote.decided(), Some(&b"z"[..]));
    }

    #[test]
    fn bad_groups_and_replies_are_refused_and_change_nothing() {
        assert!(matches!(Vote::new(ReplyMode::Majority, 4, ReplicaId(0)), Err(VoteError::BadGroup { .. })));
        assert!(matches!(Vote::new(ReplyMode::PassFirst, 0, ReplicaId(0)), Err(VoteError::BadGroup { .. })));
        assert!(matches!(Vote::new(ReplyMode::LeaderOnly, 3, ReplicaId(3)), Err(VoteError::UnknownReplica { .. })));
        let mut vote = vote(ReplyMode::Majority);
        assert_eq!(vote.reply(ReplicaId(7), b"a".to_vec()), Err(VoteError::UnknownReplica { replica: 7, replicas: 3 }));
        vote.reply(ReplicaId(0), b"a".to_vec()).unwrap();
        assert_eq!(vote.reply(ReplicaId(0), b"b".to_vec()), Err(VoteError::Twice { replica: 0, differs: true }));
        // The first reply stands: one more "a" decides.
        assert_eq!(vote.reply(ReplicaId(2), b"a".to_vec()), Ok(Verdict::Decided));
    }
}
