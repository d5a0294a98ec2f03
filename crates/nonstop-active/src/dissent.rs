//! How a replica finds that its own outcomes disagree with the group's, so that it takes
//! itself out of the vote and is re-integrated from a live replica's state, and how a
//! re-integrated replica proves its new state before it answers again.
//!
//! A client's voter masks a wrong reply, but a replica whose state went wrong (a flipped bit,
//! a bug that struck one process) would go on answering wrongly, and one more fault anywhere
//! would leave no majority. So the replicas compare what they executed, through the order
//! itself: the order cuts itself into windows ([`crate::order::Delivered::closes`], every
//! [`crate::order::WINDOW_MS`] of order time), each replica digests the outcomes of every
//! window it executed whole ([`Outcomes`]) and proposes the digest in the order ([`Digest`]).
//! Every replica sees every digest in the same place of the order, and a [`Judge`] compares
//! them with its own: when a majority of the group (f + 1 of 2f + 1 replicas) agree on a
//! window's digest and a replica's differs, that replica dissents. A replica that finds itself
//! dissenting stops answering and takes a live replica's state, as one that fell behind the
//! log does ([`crate::feed::Feed::restored`]); the others report it.
//!
//! A state transfer could copy a wrong state that has not shown yet: the copy would then agree
//! with its donor, and two wrong replicas outvote the right one. So a replica that took a state
//! is on probation ([`Judge::probation`]): it answers nothing and proposes no digest until its
//! digest of a whole window equals that of a replica other than its donor ([`StateVerdict::Cleared`]).
//! If they differ ([`StateVerdict::Refuted`]), or a window the donor digested differs from that
//! other replica's with no majority to settle it (seen in the order, or in the order's snapshot
//! by a replica that fell behind: [`Judge::recall`]), its donor and the other replica disagree
//! and one replica of three cannot tell which is right: it stays out, and says so. That is two
//! faults at once (a replica wrong and one behind), more than 2f + 1 replicas mask; the group
//! then stalls rather than answer wrongly. If no replica outside its donor's lineage digests
//! anything for [`PROBATION_MS`] (it is down, or took the same donor's state), the replica is
//! cleared unproven ([`Judge::clear_unproven`]): nobody is left for a copied wrong state to
//! outvote, and staying out would stall the group.
//!
//! The digest covers outcomes (the bytes a client's voter compares), not the whole state: a
//! wrong state is found once it shows in an answer, as a voter would find it.
//!
//! This is bookkeeping only, pure and deterministic; the node and the simulator drive it.
//!
//! ```
//! use nonstop_active::dissent::{Digest, Finding, Judge, Outcomes};
//! use nonstop_control::NodeId;
//! let mut digests = Vec::new();
//! for replica in 1..=3u64 {
//!     let mut outcomes = Outcomes::new();
//!     outcomes.executed(&Ok(b"7".to_vec()));
//!     // Replica 3 answered the window's second request wrongly.
//!     outcomes.executed(&Ok(if replica == 3 { b"41" } else { b"42" }.to_vec()));
//!     let (window, hash) = outcomes.closed(0).expect("window 0 was executed whole");
//!     digests.push(Digest { member: NodeId(replica), window, hash, since: 0 });
//! }
//! let mut judge = Judge::new(NodeId(3), &[1, 2, 3]);
//! assert!(judge.mine(digests[2].window, digests[2].hash, 0).is_none());
//! assert!(judge.seen(&digests[0]).is_none(), "one replica against another proves nothing");
//! let Some(Finding::Dissent(found)) = judge.seen(&digests[1]) else { panic!("two agree against it") };
//! assert_eq!((found.dissenter, found.window, found.me), (NodeId(3), 0, true));
//! ```

use crate::calls::Outcome;
use crate::membership::node_of;
use nonstop_control::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A window's digest of outcomes, 128 bits of BLAKE3.
pub type Hash = [u8; 16];

/// How long a replica stays on probation with nothing to prove its state against before it is
/// cleared unproven ([`Judge::clear_unproven`]), in milliseconds of the driver's clock. With a
/// replica outside its donor's lineage serving, proof comes within a window or two (tens of
/// milliseconds); none comes when there is none (another replica took the same donor's state,
/// or is down), and then no majority answers, no request is delivered, no window closes, and
/// staying out would stall the group for good.
pub const PROBATION_MS: u64 = 500;

/// Windows whose digests a [`Judge`] keeps: digests of older windows are dropped, and a digest
/// that arrives that late is ignored.
pub const KEPT_WINDOWS: usize = 64;

/// Windows whose digests differ with no majority to settle them (disputed) that a [`Judge`]
/// keeps besides its [`KEPT_WINDOWS`] others (and the newest, as it fills), and the order besides its recent ones
/// ([`crate::order::Order::recent_digests`]): a dispute stays known longer than the windows
/// around it, since a state taken from either side of it must be refuted however late.
pub const KEPT_DISPUTES: usize = 64;

/// Digests one entry of the order may carry ([`crate::order::Batch::digests`]): a replica
/// that knew no leader for a while proposes only its newest ones ([`propose_later`]); the
/// judges keep no older windows anyway.
pub const MAX_DIGESTS: usize = KEPT_WINDOWS;

/// Queues `digest` for the replica's next entry, keeping the newest [`MAX_DIGESTS`].
pub fn propose_later(pending: &mut Vec<Digest>, digest: Digest) {
    pending.push(digest);
    if pending.len() > MAX_DIGESTS {
        pending.drain(..pending.len() - MAX_DIGESTS);
    }
}

/// What a replica's pending digests become when it needs a live replica's state for `why`
/// ([`crate::course::Event::NeedState`]). A replica that found itself dissenting keeps them:
/// its digest of the window that shows the dissent is how the others see it and report it
/// (it found itself only because a majority's digests of that window are in the order
/// already, so the others judge it against that majority, never as a dispute). A replica
/// that fell behind, or whose LSA batch was overruled or could not be followed, drops them:
/// they describe a state it is about to replace, and nothing of it needs reporting.
pub fn keep_dissenting_digests(pending: &mut Vec<Digest>, why: &crate::course::Behind) {
    if !matches!(why, crate::course::Behind::Dissented { .. }) {
        pending.clear();
    }
}

/// One replica's digest of the outcomes of one window of the order, as proposed in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Digest {
    /// The replica's member id.
    pub member: NodeId,
    /// The window's number in the order.
    pub window: u64,
    /// The digest.
    pub hash: Hash,
    /// The first window the replica digested with the state it holds now (0: it has held
    /// it, its own or copied from one that had, since the order began): a dispute in an
    /// earlier window was about a state since replaced.
    pub since: u64,
}

/// Where a replica's digest of the open window stands.
#[derive(Clone, Debug)]
enum Digesting {
    /// Not digesting: the replica's state is being replaced.
    Off,
    /// The replica's state was replaced inside the open window: digesting starts with the next.
    FromNext,
    /// Digesting the open window from its start: what it executed of it.
    On { hasher: Box<blake3::Hasher>, requests: u64 },
}

/// A replica's digest of the outcomes it executes, window by window.
#[derive(Clone, Debug)]
pub struct Outcomes {
    digesting: Digesting,
    /// The first window digested with the state held now ([`Digest::since`]).
    since: u64,
}

impl Default for Outcomes {
    fn default() -> Self {
        Outcomes::new()
    }
}

impl Outcomes {
    /// A replica that executes the order from its start.
    pub fn new() -> Outcomes {
        Outcomes { digesting: Digesting::On { hasher: Box::default(), requests: 0 }, since: 0 }
    }

    /// The first window digested with the state held now ([`Digest::since`]).
    pub fn since(&self) -> u64 {
        self.since
    }

    /// The replica's state is being replaced (it dissents, or fell behind the log): it
    /// digests nothing until [`Outcomes::resume`].
    pub fn suspend(&mut self) {
        self.digesting = Digesting::Off;
    }

    /// The replica's state was replaced by another's, inside the open window: digesting
    /// starts again with the next window.
    pub fn resume(&mut self) {
        self.digesting = Digesting::FromNext;
    }

    /// The next request of the open window was executed with `outcome` (what the replica
    /// answers: the service's reply or its refusal).
    pub fn executed(&mut self, outcome: &Outcome) {
        if let Digesting::On { hasher, requests } = &mut self.digesting {
            let (tag, bytes) = match outcome {
                Ok(reply) => (0u8, reply.as_slice()),
                Err(refusal) => (1u8, refusal.as_bytes()),
            };
            hasher.update(&[tag]);
            hasher.update(&(bytes.len() as u64).to_le_bytes());
            hasher.update(bytes);
            *requests += 1;
        }
    }

    /// The order closed window `window` after the last request executed: its digest, if the
    /// replica executed it whole and it held a request at least.
    pub fn closed(&mut self, window: u64) -> Option<(u64, Hash)> {
        let closed = std::mem::replace(&mut self.digesting, Digesting::On { hasher: Box::default(), requests: 0 });
        match closed {
            Digesting::Off => {
                self.digesting = Digesting::Off;
                None
            }
            Digesting::FromNext => {
                self.since = window + 1;
                None
            }
            Digesting::On { requests: 0, .. } => None,
            Digesting::On { mut hasher, .. } => {
                hasher.update(&window.to_le_bytes());
                let mut hash = Hash::default();
                hash.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
                Some((window, hash))
            }
        }
    }
}

/// A replica found to dissent: a majority of the group agree on a window's digest, and its
/// differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dissent {
    /// The dissenting replica's member id.
    pub dissenter: NodeId,
    /// The window.
    pub window: u64,
    /// Whether it is the judging replica itself (which must then take a live replica's state).
    pub me: bool,
}

/// What a [`Judge`] found in a window's digests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Finding {
    /// A replica dissents from the majority.
    Dissent(Dissent),
    /// The judging replica is on probation, and this is the verdict on the state it took.
    Probation(StateVerdict),
}

/// The verdict on a state a replica took ([`Judge::probation`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateVerdict {
    /// The replica may answer and propose digests again: it digested a window as a replica
    /// other than its donor did (`proof`), or it was cleared with nobody to prove it against
    /// ([`Judge::clear_unproven`]; `proof` is `None`).
    Cleared {
        /// The window and the replica that proved it.
        proof: Option<Proof>,
    },
    /// The replica, or its donor, digested a window differently from a replica outside the
    /// donor's lineage: one of them is wrong, the replica cannot tell which, and it stays out
    /// until it takes a state again.
    Refuted {
        /// The window.
        window: u64,
        /// The replica it disagrees with.
        against: NodeId,
    },
}

/// What proved a re-integrated replica's state: a window it digested as `by` did, a replica
/// outside its donor's lineage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The window.
    pub window: u64,
    /// The replica.
    pub by: NodeId,
}

/// Compares one replica's digests with those the order carries from the others.
#[derive(Clone, Debug)]
pub struct Judge {
    me: NodeId,
    /// The nodes that hold replicas: only their digests count.
    replicas: Vec<u64>,
    windows: BTreeMap<u64, Window>,
    /// Each node's replica's newest incarnation, and the first window it digested with the
    /// state it holds now ([`Digest::since`]), as its digests tell.
    states: BTreeMap<u64, (NodeId, u64)>,
    probation: Option<Probation>,
}

/// A replica on probation: whose state it took, and who refuted it, if anyone did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Probation {
    /// The node whose replica's state it took.
    donor: u64,
    /// The replica other than its donor that digested a window differently, if one did. The
    /// replica then stays out for good: a later window it digests as that replica does shows
    /// that their states agree from then on, not that what its donor answered before was
    /// right, and those answers came with the state (clients may ask for them again: order
    /// seed 3 with two faults, where the wrong vault had healed).
    refuted: Option<NodeId>,
    /// When it is cleared unproven if nothing proved or refuted it: [`PROBATION_MS`] after it
    /// began, on the driver's clock.
    ends_ms: u64,
}

/// What a [`Judge`] holds of one window.
#[derive(Clone, Debug, Default)]
struct Window {
    /// The digest of each node's replica (its newest incarnation's), own included.
    digests: BTreeMap<u64, (NodeId, Hash)>,
    /// What was found in it already.
    found: Found,
}

/// What a [`Judge`] found in a window (each window is judged once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Found {
    #[default]
    Nothing,
    /// A verdict on the state this replica took: proven or refuted. A dispute it shows still
    /// stands for a state taken later.
    Verdict,
    /// A dissenter (this node's replica), by a majority: the window is settled.
    Dissent(u64),
}

impl Judge {
    /// The judge of replica `me`, in a group of replicas on `replicas` (node ids).
    pub fn new(me: NodeId, replicas: &[u64]) -> Judge {
        Judge { me, replicas: replicas.to_vec(), windows: BTreeMap::new(), states: BTreeMap::new(), probation: None }
    }

    /// The judging replica's member id.
    pub fn member(&self) -> NodeId {
        self.me
    }

    /// The replica took `donor`'s state: what it digested before no longer stands for it,
    /// and until [`StateVerdict::Cleared`] it must answer nothing and propose no digest.
    /// `now_ms` is the driver's clock (any monotonic milliseconds), read again by
    /// [`Judge::clear_unproven`].
    ///
    /// A window its donor and a replica outside the donor's lineage digested differently, with
    /// no majority to say which was right, refutes the state at once: the donor may have been
    /// wrong when it gave it. Waiting for a window of its own would not do: a group whose two
    /// serving replicas disagree delivers nothing a majority answers, no window with a request
    /// closes, and the replica would be cleared unproven into a majority with a wrong donor.
    pub fn probation(&mut self, donor: NodeId, now_ms: u64) -> Option<Finding> {
        let (me, donor) = (node_of(self.me), node_of(donor));
        let ends_ms = now_ms.saturating_add(PROBATION_MS);
        let mut probation = Probation { donor, refuted: None, ends_ms };
        let mut finding = None;
        for (number, window) in self.windows.iter_mut() {
            // What it digested itself before it fell behind contradicts the donor as a third
            // replica would (order seed 327 with two faults); what it digested once found wrong
            // is gone already ([`Judge::disown`]).
            let mine = window.digests.remove(&me);
            let contradicted = donor_contradicted(*number, window, (me, mine), donor, &self.states);
            if let Some(against) = contradicted.filter(|_| probation.refuted.is_none()) {
                window.found = Found::Verdict;
                probation.refuted = Some(against);
                finding = Some(Finding::Probation(StateVerdict::Refuted { window: *number, against }));
            }
        }
        self.probation = Some(probation);
        finding
    }

    /// The replica's state was found wrong (a majority against it), or holds what the order
    /// did not take (LSA): what it digested no longer says anything, and is forgotten.
    pub fn disown(&mut self) {
        let me = node_of(self.me);
        for window in self.windows.values_mut() {
            window.digests.remove(&me);
        }
    }

    /// Whether the replica's state is still to be proven ([`Judge::probation`]).
    pub fn on_probation(&self) -> bool {
        self.probation.is_some()
    }

    /// The replica whose digest refuted the state taken, while on probation ([`StateVerdict::Refuted`]).
    pub fn refuted_by(&self) -> Option<NodeId> {
        self.probation.and_then(|probation| probation.refuted)
    }

    /// Digests the order delivered while this replica missed them (it was given the order's
    /// snapshot in place of their entries: [`crate::order::Order::recent_digests`]): kept as if
    /// seen, so that a state it takes next is judged by them ([`Judge::probation`]). What
    /// they show of other replicas is theirs to report.
    pub fn recall<'a>(&mut self, digests: impl IntoIterator<Item = &'a Digest>) {
        let me = self.me;
        for digest in digests.into_iter().filter(|digest| digest.member != me) {
            let _ = self.record(*digest);
        }
    }

    /// This replica digested `window` as `hash`, with a state it has held since window
    /// `since` ([`Digest::since`]).
    pub fn mine(&mut self, window: u64, hash: Hash, since: u64) -> Option<Finding> {
        self.record(Digest { member: self.me, window, hash, since })
    }

    /// The order delivered `digest`, a replica's (this one's own too: it is then ignored, as
    /// [`Judge::mine`] told it already).
    pub fn seen(&mut self, digest: &Digest) -> Option<Finding> {
        if digest.member == self.me {
            return None;
        }
        self.record(*digest)
    }

    /// The replica has been on probation for [`PROBATION_MS`] with nothing to prove its state
    /// against: it is cleared, unless a replica outside its donor's lineage refuted it (then
    /// it stays out: its donor and that replica disagree, and it cannot tell which is right).
    /// The driver calls it now and then with its clock; it clears the replica only once
    /// [`PROBATION_MS`] have passed since [`Judge::probation`].
    pub fn clear_unproven(&mut self, now_ms: u64) -> Option<Finding> {
        match self.probation {
            Some(Probation { refuted: None, ends_ms, .. }) if now_ms >= ends_ms => {
                self.probation = None;
                Some(Finding::Probation(StateVerdict::Cleared { proof: None }))
            }
            _ => None,
        }
    }

    /// Forgets the oldest windows but `settled` undisputed and `disputed` disputed ones.
    fn forget_beyond(&mut self, settled: usize, disputed: usize) {
        let (mut undisputed, mut disputes): (Vec<u64>, Vec<u64>) = (Vec::new(), Vec::new());
        for (number, window) in &self.windows {
            match window.disputed() {
                true => disputes.push(*number),
                false => undisputed.push(*number),
            }
        }
        let old_undisputed = undisputed.len().saturating_sub(settled);
        let old_disputes = disputes.len().saturating_sub(disputed);
        for number in undisputed[..old_undisputed].iter().chain(&disputes[..old_disputes]) {
            self.windows.remove(number);
        }
    }

    fn majority(&self) -> usize {
        self.replicas.len() / 2 + 1
    }

    fn record(&mut self, digest: Digest) -> Option<Finding> {
        let node = node_of(digest.member);
        if !self.replicas.contains(&node) {
            return None;
        }
        // What it says of the replica's state holds even if its window is too old to judge.
        let state = self.states.entry(node).or_insert((digest.member, digest.since));
        if digest.member.0 > state.0.0 {
            *state = (digest.member, digest.since);
        } else if digest.member == state.0 {
            state.1 = state.1.max(digest.since);
        }
        if !self.windows.contains_key(&digest.window) {
            if self.windows.len() >= KEPT_WINDOWS
                && self.windows.keys().next().is_some_and(|&oldest| digest.window < oldest)
            {
                return None;
            }
            self.forget_beyond(KEPT_WINDOWS - 1, KEPT_DISPUTES);
        }
        let (majority, me, probation) = (self.majority(), node_of(self.me), self.probation);
        let window = self.windows.entry(digest.window).or_default();
        // A newer incarnation's digest replaces its node's older one; an older one's is late.
        if window.digests.get(&node).is_some_and(|(held, _)| held.0 > digest.member.0) {
            return None;
        }
        window.digests.insert(node, (digest.member, digest.hash));
        if window.found != Found::Nothing {
            return None;
        }
        if let Some(probation) = probation {
            if probation.refuted.is_some() {
                return None;
            }
            if let Some(against) = donor_contradicted(digest.window, window, (me, None), probation.donor, &self.states)
            {
                window.found = Found::Verdict;
                self.probation = Some(Probation { refuted: Some(against), ..probation });
                return Some(Finding::Probation(StateVerdict::Refuted { window: digest.window, against }));
            }
            // A replica outside the donor's lineage digested the window: it proves or refutes.
            let mine = window.digests.get(&me).map(|(_, hash)| *hash);
            let other = window.digests.iter().find(|(n, _)| **n != me && **n != probation.donor);
            if let (Some(mine), Some((_, (other, theirs)))) = (mine, other) {
                window.found = Found::Verdict;
                if *theirs == mine {
                    self.probation = None;
                    return Some(Finding::Probation(StateVerdict::Cleared {
                        proof: Some(Proof { window: digest.window, by: *other }),
                    }));
                }
                let against = *other;
                self.probation = Some(Probation { refuted: Some(against), ..probation });
                return Some(Finding::Probation(StateVerdict::Refuted { window: digest.window, against }));
            }
            return None;
        }
        let digests = &window.digests;
        let (_, agreed) =
            digests.values().find(|(_, hash)| digests.values().filter(|(_, h)| h == hash).count() >= majority)?;
        let (dissenter, _) = digests.values().find(|(_, hash)| hash != agreed)?;
        window.found = Found::Dissent(node_of(*dissenter));
        Some(Finding::Dissent(Dissent { dissenter: *dissenter, window: digest.window, me: *dissenter == self.me }))
    }
}

impl Window {
    /// Whether two replicas digested it differently and no majority settled it.
    fn disputed(&self) -> bool {
        let mut hashes = self.digests.values().map(|(_, hash)| hash);
        let first = hashes.next();
        !matches!(self.found, Found::Dissent(_)) && hashes.any(|hash| Some(hash) != first)
    }

    /// Whether a majority found a replica other than `node`'s dissenting in it: what `node`'s
    /// replica digested then stands.
    fn settled_against_other_than(&self, node: u64) -> bool {
        matches!(self.found, Found::Dissent(dissenter) if dissenter != node)
    }
}

/// The replica outside `donor`'s lineage whose digest of window `number` differs from the
/// donor's: another replica, or the judging one (`me`, with what it digested itself before it
/// fell behind, if that stands), unless a majority found a replica other than the donor
/// dissenting in the window, or either state was replaced after it (`states`: a replica that
/// took a state since holds one the window said nothing of).
fn donor_contradicted(
    number: u64,
    window: &Window,
    (me, mine): (u64, Option<(NodeId, Hash)>),
    donor: u64,
    states: &BTreeMap<u64, (NodeId, u64)>,
) -> Option<NodeId> {
    let replaced_since = |node: u64| states.get(&node).is_some_and(|(_, since)| *since > number);
    // A window that found the donor itself dissenting contradicts it all the more (order-lsa
    // seed 250 with two faults: the digest that made the majority was this replica's own,
    // never proposed, and the donor never learnt it was wrong).
    if window.settled_against_other_than(donor) || replaced_since(donor) {
        return None;
    }
    let (_, donors) = window.digests.get(&donor)?;
    let others =
        window.digests.iter().filter(|(node, _)| **node != me && **node != donor).map(|(node, held)| (*node, *held));
    others
        .chain(mine.map(|held| (me, held)))
        .find(|(node, (_, hash))| hash != donors && !replaced_since(*node))
        .map(|(_, (member, _))| member)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::membership::member_id;

    fn digest(ballots: &[&[u8]], window: u64) -> Option<Hash> {
        let mut outcomes = Outcomes::new();
        for ballot in ballots {
            outcomes.executed(&Ok(ballot.to_vec()));
        }
        outcomes.closed(window).map(|(_, hash)| hash)
    }

    fn of(node: u64, window: u64, hash: u8) -> Digest {
        Digest { member: member_id(node, 0), window, hash: [hash; 16], since: 0 }
    }

    #[test]
    fn equal_outcomes_give_equal_digests_and_any_difference_shows() {
        let ballots: Vec<&[u8]> = vec![b"a", b"b", b"c"];
        assert_eq!(digest(&ballots, 4), digest(&ballots, 4));
        assert_ne!(digest(&ballots, 4), digest(&[b"a", b"B", b"c"], 4));
        assert_ne!(digest(&ballots, 4), digest(&ballots, 5), "the window is part of it");
        // Where one ballot ends and the next starts is part of it.
        assert_ne!(digest(&[b"ab", b"c"], 0), digest(&[b"a", b"bc"], 0));
        assert_eq!(digest(&[], 0), None, "an empty window proves nothing");
        let refused = |reason: &str| {
            let mut outcomes = Outcomes::new();
            outcomes.executed(&Err(reason.into()));
            outcomes.closed(0).map(|(_, hash)| hash)
        };
        assert_ne!(refused("a"), digest(&[b"a"], 0), "a refusal is not a reply of the same bytes");
        assert_ne!(refused("a"), refused("b"));
    }

    #[test]
    fn only_windows_executed_whole_are_digested() {
        let mut outcomes = Outcomes::new();
        outcomes.executed(&Ok(b"x".to_vec()));
        outcomes.suspend();
        assert_eq!(outcomes.closed(0), None, "suspended");
        outcomes.executed(&Ok(b"x".to_vec()));
        assert_eq!(outcomes.closed(1), None, "still suspended");
        outcomes.resume();
        outcomes.executed(&Ok(b"y".to_vec()));
        assert_eq!(outcomes.closed(2), None, "window 2 was half another replica's");
        outcomes.executed(&Ok(b"z".to_vec()));
        assert_eq!(outcomes.closed(3).map(|(window, _)| window), Some(3));
    }

    #[test]
    fn a_majority_against_a_replica_finds_it_whoever_judges_in_any_order() {
        for judge_of in [1, 3] {
            let mut judge = Judge::new(member_id(judge_of, 0), &[1, 2, 3]);
            let mut found = Vec::new();
            for digest in [of(3, 5, 2), of(1, 5, 1)] {
                let node = node_of(digest.member);
                found.extend(if node == judge_of { judge.mine(5, digest.hash, 0) } else { judge.seen(&digest) });
            }
            assert!(found.is_empty(), "one against one");
            found.extend(judge.seen(&of(2, 5, 1)));
            found.extend(judge.seen(&of(2, 5, 1)));
            let dissent = Dissent { dissenter: member_id(3, 0), window: 5, me: judge_of == 3 };
            assert_eq!(found, vec![Finding::Dissent(dissent)]);
        }
    }

    #[test]
    fn no_majority_no_dissent_and_strangers_do_not_count() {
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert!(judge.mine(0, [1; 16], 0).is_none());
        assert!(judge.seen(&of(2, 0, 2)).is_none());
        assert!(judge.seen(&of(3, 0, 3)).is_none());
        // A node outside the group, or a second digest of a node, adds no vote.
        assert!(judge.seen(&of(9, 0, 2)).is_none());
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert!(judge.mine(0, [1; 16], 0).is_none());
        assert!(judge.seen(&of(2, 0, 2)).is_none());
        assert!(judge.seen(&of(2, 0, 2)).is_none());
    }

    #[test]
    fn a_newer_incarnation_speaks_for_its_node() {
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert!(judge.mine(0, [1; 16], 0).is_none());
        assert!(judge.seen(&Digest { member: member_id(3, 1), window: 0, hash: [1; 16], since: 0 }).is_none());
        // The old incarnation's late, different digest neither outvotes nor is reported.
        assert!(judge.seen(&of(3, 0, 3)).is_none());
        let found = judge.seen(&of(2, 0, 2));
        assert_eq!(found, Some(Finding::Dissent(Dissent { dissenter: member_id(2, 0), window: 0, me: false })));
    }

    #[test]
    fn a_state_taken_is_proven_only_against_a_replica_other_than_its_donor() {
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert!(judge.mine(0, [9; 16], 0).is_none());
        assert_eq!(judge.probation(member_id(2, 0), 0), None);
        assert!(judge.on_probation());
        // Its old digests no longer count, and its donor's agreement proves nothing.
        assert!(judge.seen(&of(2, 0, 1)).is_none());
        assert!(judge.seen(&of(3, 0, 1)).is_none(), "no dissent of its own found on what it digested before");
        assert!(judge.mine(1, [1; 16], 0).is_none());
        assert!(judge.seen(&of(2, 1, 1)).is_none(), "the donor's digest proves nothing");
        let proof = Proof { window: 1, by: member_id(3, 0) };
        assert_eq!(judge.seen(&of(3, 1, 1)), Some(Finding::Probation(StateVerdict::Cleared { proof: Some(proof) })));
        assert!(!judge.on_probation());
        // A state its donor and the third replica digest differently is refuted, and the
        // replica stays on probation.
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert_eq!(judge.probation(member_id(2, 0), 0), None);
        assert!(judge.seen(&of(3, 4, 3)).is_none());
        assert_eq!(
            judge.mine(4, [2; 16], 0),
            Some(Finding::Probation(StateVerdict::Refuted { window: 4, against: member_id(3, 0) }))
        );
        assert!(judge.on_probation());
        // Refuted once, it is not cleared unproven however long the third replica is silent,
        // nor by that replica agreeing later.
        assert!(judge.seen(&of(2, 5, 2)).is_none());
        assert!(judge.mine(5, [2; 16], 0).is_none());
        assert_eq!(judge.clear_unproven(PROBATION_MS), None);
        assert!(judge.seen(&of(3, 5, 2)).is_none());
        assert_eq!(judge.refuted_by(), Some(member_id(3, 0)));
    }

    #[test]
    fn a_donor_contradicted_by_a_replica_outside_its_lineage_refutes_the_state_taken() {
        // Replica 1 fell behind while replicas 2 and 3 digested window 4 differently (one of
        // them went wrong; with 1 silent no majority said which). It takes 2's state: refuted
        // at once, and never cleared unproven, though no window with a request closes again
        // (the group delivers nothing a majority answers).
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert!(judge.seen(&of(2, 4, 2)).is_none());
        assert!(judge.seen(&of(3, 4, 3)).is_none());
        let refuted = StateVerdict::Refuted { window: 4, against: member_id(3, 0) };
        assert_eq!(judge.probation(member_id(2, 0), 0), Some(Finding::Probation(refuted)));
        assert_eq!(judge.refuted_by(), Some(member_id(3, 0)));
        assert_eq!(judge.clear_unproven(PROBATION_MS * 10), None);
        // The same when the contradiction comes after the state was taken.
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert_eq!(judge.probation(member_id(2, 0), 0), None);
        assert!(judge.seen(&of(3, 7, 3)).is_none());
        let refuted = StateVerdict::Refuted { window: 7, against: member_id(3, 0) };
        assert_eq!(judge.seen(&of(2, 7, 2)), Some(Finding::Probation(refuted)));
        assert_eq!(judge.clear_unproven(PROBATION_MS * 10), None);
        // A window a majority settled against the donor refutes its state, until the donor's
        // digests say it took a state since; one settled against another replica refutes
        // nobody.
        let settled = || {
            let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
            assert!(judge.mine(4, [3; 16], 0).is_none());
            assert!(judge.seen(&of(3, 4, 3)).is_none());
            assert!(matches!(judge.seen(&of(2, 4, 2)), Some(Finding::Dissent(Dissent { me: false, .. }))));
            judge
        };
        let refuted = StateVerdict::Refuted { window: 4, against: member_id(3, 0) };
        assert_eq!(settled().probation(member_id(2, 0), 0), Some(Finding::Probation(refuted)));
        let mut judge = settled();
        assert!(judge.seen(&Digest { since: 6, ..of(2, 7, 3) }).is_none());
        assert_eq!(judge.probation(member_id(2, 0), 0), None, "the donor re-integrated at window 6");
        assert_eq!(judge.clear_unproven(PROBATION_MS), Some(Finding::Probation(StateVerdict::Cleared { proof: None })));
        assert_eq!(settled().probation(member_id(3, 0), 0), None, "the dissenter was not the donor");
    }

    #[test]
    fn with_nobody_outside_its_donors_lineage_a_state_is_cleared_unproven() {
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert_eq!(judge.clear_unproven(PROBATION_MS), None, "not on probation");
        assert_eq!(judge.probation(member_id(2, 0), 0), None);
        assert!(judge.seen(&of(2, 0, 2)).is_none());
        assert!(judge.mine(0, [2; 16], 0).is_none());
        assert_eq!(judge.clear_unproven(PROBATION_MS - 1), None, "not yet");
        assert_eq!(judge.clear_unproven(PROBATION_MS), Some(Finding::Probation(StateVerdict::Cleared { proof: None })));
        assert!(!judge.on_probation());
    }

    #[test]
    fn a_replica_queues_its_newest_digests_only() {
        let mut pending = Vec::new();
        for window in 0..(MAX_DIGESTS as u64 + 5) {
            propose_later(&mut pending, Digest { window, ..of(1, 0, 1) });
        }
        assert_eq!(pending.len(), MAX_DIGESTS);
        assert_eq!(pending.first().map(|d| d.window), Some(5));
    }

    #[test]
    fn memory_is_bounded_and_late_digests_are_ignored() {
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        for window in 0..(KEPT_WINDOWS as u64 * 3) {
            assert!(judge.mine(window, [1; 16], 0).is_none());
        }
        assert_eq!(judge.windows.len(), KEPT_WINDOWS);
        assert!(judge.seen(&of(2, 0, 2)).is_none());
        assert_eq!(judge.windows.len(), KEPT_WINDOWS);
        // A disputed window outlives the others, up to KEPT_DISPUTES of them, and refutes a
        // state taken from either side of it however late.
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        assert!(judge.seen(&of(2, 0, 2)).is_none());
        assert!(judge.seen(&of(3, 0, 3)).is_none());
        for window in 1..(KEPT_WINDOWS as u64 * 3) {
            assert!(judge.mine(window, [1; 16], 0).is_none());
        }
        assert_eq!(judge.windows.len(), KEPT_WINDOWS + 1);
        let refuted = StateVerdict::Refuted { window: 0, against: member_id(3, 0) };
        assert_eq!(judge.probation(member_id(2, 0), 0), Some(Finding::Probation(refuted)));
        let mut judge = Judge::new(member_id(1, 0), &[1, 2, 3]);
        for window in 0..(KEPT_DISPUTES as u64 * 3) {
            assert!(judge.seen(&of(2, window, 2)).is_none());
            assert!(judge.seen(&of(3, window, 3)).is_none());
        }
        // The disputes kept, and the newest window, judged as a dispute once its second digest came.
        assert_eq!(judge.windows.len(), KEPT_DISPUTES + 1);
    }
}
