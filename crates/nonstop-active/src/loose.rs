//! One LSA replica's view of the acquisitions the order carries: who leads them, which batches
//! have theirs, and which of its own led batches wait for theirs.
//!
//! Under LSA a replica executes a batch in one of two ways. The grant leader (the member that
//! claimed the lead last, [`crate::order::Lead::Claim`]) runs it with its threads taking
//! mutexes as they come, then proposes what they took; its replies wait until the order grants
//! the batch those very acquisitions, because a leader deposed before that has executed
//! something no other replica will follow. Every other replica waits for the batch's
//! acquisitions in the order and takes them in that order.
//!
//! Who leads: the replica of the order group's leader, once it serves ([`Claimant`]). Its
//! claim names the grant leader it saw, and stands only if that one still leads when it is
//! applied. A group leader whose replica does not serve (it takes a state) hands the group's
//! lead to another member, whose replica then claims the acquisitions': the others' next
//! batches may wait for acquisitions only a serving grant leader makes, and a replica taking a
//! state may need the others past those very batches. `Loose` is that bookkeeping,
//! pure; [`crate::course::Course`] consults it for each entry it hands out.

use crate::calls::Outcome;
use crate::order::{Lead, Request};
use crate::schedule::Grant;
use nonstop_control::NodeId;
use std::collections::{BTreeMap, VecDeque};

/// How the threads take mutexes in an entry's batch ([`crate::course::Next`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Acquisitions {
    /// The replica's own scheduler decides (NPDS, PDS-1, PDS-2, or a single-threaded service),
    /// or the entry holds no request.
    Scheduled,
    /// LSA, as grant leader: the threads take mutexes as they come. Report what they took with
    /// [`crate::course::Course::led`], and hold the replies until
    /// [`crate::course::Event::Granted`].
    Lead,
    /// LSA: the grant leader's acquisitions for this batch, to take in that order.
    Follow(Vec<Grant>),
}

/// How long an LSA leader waits for the order to grant a batch it led before it proposes the
/// batch's acquisitions again (the proposal may have been lost as the group's leader changed).
pub const LEAD_RETRY_MS: u64 = 200;

/// A request of a batch this replica led, and what executing it answered: held until the order
/// grants the batch.
pub type Answer = (Request, Outcome);

/// A batch this replica led and executed, until the order grants it.
#[derive(Clone, Debug)]
struct Led {
    /// Its first position.
    batch: u64,
    /// Which of this replica's executions as grant leader it was ([`Lead::Grants`]).
    execution: u64,
    /// What its threads took, in order.
    acquisitions: Vec<Grant>,
    /// How many of them the order accepted so far, in parts.
    accepted: u64,
    /// Its requests' outcomes, held (none once orphaned: they are not the order's).
    answers: Vec<Answer>,
}

/// The parts of a batch's acquisitions the order accepted so far, as one replica assembles
/// them.
#[derive(Clone, Debug)]
struct Assembling {
    batch: u64,
    member: NodeId,
    execution: u64,
    acquisitions: Vec<Grant>,
}

/// What the order's leads of one entry mean to this replica ([`Loose::delivered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The order granted batch `batch` the acquisitions this replica made leading it: its
    /// held `answers` may leave.
    Granted { batch: u64, answers: Vec<Answer> },
    /// The order will never grant a batch this replica led the acquisitions it made (another
    /// member claimed the lead, or granted the batch other ones): its state is not the
    /// order's.
    Overruled { batch: u64 },
}

/// See the module's documentation.
#[derive(Clone, Debug)]
pub(crate) struct Loose {
    me: NodeId,
    /// Acquisitions one proposed part carries at most ([`Lead::parts`]).
    per_part: usize,
    /// The member that claimed the lead last, as far as this replica has heard.
    leader: Option<NodeId>,
    /// Acquisitions the order granted batches this replica has not executed yet, by batch.
    granted: BTreeMap<u64, Vec<Grant>>,
    /// The batch whose acquisitions the order is accepting part by part, the parts so far.
    assembling: Option<Assembling>,
    /// Batches this replica led and executed, oldest first, until the order grants them.
    led: VecDeque<Led>,
    /// Acquisitions of batches it led before its state was found wrong or behind, still
    /// proposed until the order grants those batches or another member leads: while it leads,
    /// nobody else grants them, and the others cannot reach the state it must take without
    /// them. They are only an order of acquisitions; each replica executes them on its own
    /// state (one whose threads cannot follow them takes a state, [`Acquisitions::Follow`]).
    orphaned: Vec<Led>,
    /// Its executions as grant leader so far: each one's acquisitions are told apart by it.
    executions: u64,
    /// When it last proposed the acquisitions that await a grant (driver's clock).
    proposed_ms: u64,
}

impl Loose {
    /// The bookkeeping of member `me`, which proposes its acquisitions in parts of at most
    /// `per_part`.
    pub(crate) fn new(me: NodeId, per_part: usize) -> Loose {
        Loose {
            me,
            per_part: per_part.max(1),
            leader: None,
            granted: BTreeMap::new(),
            assembling: None,
            led: VecDeque::new(),
            orphaned: Vec::new(),
            executions: 0,
            proposed_ms: 0,
        }
    }

    /// Takes in an entry's leads, in order, and the grant leader once it is applied; `next` is
    /// the position of the next request this replica executes. What they mean here: batches
    /// granted, or one overruled (then the rest of its led batches are void too, and its state
    /// must be replaced).
    pub(crate) fn delivered(&mut self, leads: &[Lead], grant_leader: Option<NodeId>, next: u64) -> Vec<Heard> {
        let mut heard = Vec::new();
        for lead in leads {
            let Lead::Grants { member, batch, execution, from, total, acquisitions } = lead else {
                // A claim stood: the order takes the next grant leader's acquisitions afresh.
                self.assembling = None;
                self.led.iter_mut().chain(&mut self.orphaned).for_each(|led| led.accepted = 0);
                continue;
            };
            let accepted = from + acquisitions.len() as u64;
            if *member == self.me {
                let own = self.led.iter_mut().chain(&mut self.orphaned);
                own.filter(|led| (led.batch, led.execution) == (*batch, *execution))
                    .for_each(|led| led.accepted = accepted);
            }
            let whole = match self.assembling.take() {
                _ if *from == 0 => {
                    Some(Assembling { batch: *batch, member: *member, execution: *execution, acquisitions: Vec::new() })
                }
                Some(parts)
                    if (parts.batch, parts.member, parts.execution) == (*batch, *member, *execution)
                        && parts.acquisitions.len() as u64 == *from =>
                {
                    Some(parts)
                }
                // Its first parts came before a snapshot this replica was given in place of
                // the entries: a batch before any state it can take.
                _ => None,
            };
            let Some(mut whole) = whole else { continue };
            whole.acquisitions.extend_from_slice(acquisitions);
            if accepted < *total {
                self.assembling = Some(whole);
                continue;
            }
            if self.granted_batch(whole, next, &mut heard) {
                return heard;
            }
        }
        // From the order's state, not from the claims seen: a claim may have come inside a
        // snapshot this replica was given instead of the entries.
        self.leader = grant_leader;
        if grant_leader != Some(self.me) {
            // Another member leads: the order takes no acquisitions of this replica's any more.
            self.orphaned.clear();
            if let Some(led) = self.led.front() {
                heard.push(Heard::Overruled { batch: led.batch });
            }
        }
        heard
    }

    /// The order granted a batch `granted`'s acquisitions, all its parts; true if that
    /// overrules what this replica led.
    fn granted_batch(&mut self, granted: Assembling, next: u64, heard: &mut Vec<Heard>) -> bool {
        let Assembling { batch, member, execution, acquisitions } = granted;
        self.orphaned.retain(|orphan| orphan.batch != batch);
        match self.led.front() {
            Some(led) if led.batch == batch && (member, execution) == (self.me, led.execution) => {
                let answers = self.led.pop_front().map(|led| led.answers).unwrap_or_default();
                heard.push(Heard::Granted { batch, answers });
            }
            // The order grants the oldest batch first: once it grants this replica's oldest
            // led batch, or one after it, other acquisitions than its own, they never will be.
            Some(led) if led.batch <= batch => {
                heard.push(Heard::Overruled { batch: led.batch });
                // Those granted need nothing more of it; those after, if it still leads, are
                // proposed on as orphans ([`Loose::replaced`]).
                self.led.retain(|led| led.batch > batch);
                return true;
            }
            _ if batch >= next => {
                self.granted.insert(batch, acquisitions);
            }
            // A batch it executed already, or that a state it took covers.
            _ => {}
        }
        false
    }

    /// How to execute the batch at position `batch`: following its acquisitions if the order
    /// granted them, leading if this replica leads them and `may_lead`, else `None` (wait).
    pub(crate) fn acquisitions(&mut self, batch: u64, may_lead: bool) -> Option<Acquisitions> {
        if let Some(acquisitions) = self.granted.remove(&batch) {
            return Some(Acquisitions::Follow(acquisitions));
        }
        (may_lead && self.leader == Some(self.me)).then_some(Acquisitions::Lead)
    }

    /// This replica led batch `batch`, whose threads took `acquisitions` and answered
    /// `answers`: the parts to propose now (`now_ms`); the answers are held until granted.
    pub(crate) fn led(&mut self, batch: u64, acquisitions: Vec<Grant>, answers: Vec<Answer>, now_ms: u64) -> Vec<Lead> {
        self.proposed_ms = now_ms;
        self.executions += 1;
        let parts = Lead::parts(self.me, batch, self.executions, &acquisitions, 0, self.per_part);
        self.led.push_back(Led { batch, execution: self.executions, acquisitions, accepted: 0, answers });
        parts
    }

    /// The acquisitions to propose again at `now_ms`: every part the order has not accepted
    /// of those that await a grant, once [`LEAD_RETRY_MS`] passed since they were proposed
    /// last (a proposal lost when the group's leader changed is proposed again; the order
    /// drops a copy).
    pub(crate) fn due(&mut self, now_ms: u64) -> Vec<Lead> {
        if !self.awaits_grants() || now_ms.saturating_sub(self.proposed_ms) < LEAD_RETRY_MS {
            return Vec::new();
        }
        self.proposed_ms = now_ms;
        self.ungranted()
    }

    /// Its led batches not granted yet, orphaned ones included, as the parts to propose.
    fn ungranted(&self) -> Vec<Lead> {
        self.led
            .iter()
            .chain(&self.orphaned)
            .flat_map(|led| {
                Lead::parts(self.me, led.batch, led.execution, &led.acquisitions, led.accepted, self.per_part)
            })
            .collect()
    }

    /// Whether acquisitions of batches it led wait for the order to grant them: it proposes
    /// them again from time to time, and (if its own state holds them) donates no state.
    pub(crate) fn awaits_grants(&self) -> bool {
        !self.led.is_empty() || !self.orphaned.is_empty()
    }

    /// Its state is being replaced by one at position `from`: what it led no longer holds
    /// (the acquisitions are still proposed while it leads, as orphans), and the grants of
    /// batches before `from` are no longer needed. The orphans to propose now.
    pub(crate) fn replaced(&mut self, from: u64) -> Vec<Lead> {
        match self.leader == Some(self.me) {
            // Its answers are not the order's: they are dropped.
            true => self.orphaned.extend(self.led.drain(..).map(|led| Led { answers: Vec::new(), ..led })),
            // The order takes none of its acquisitions any more.
            false => self.led.clear(),
        }
        self.granted = self.granted.split_off(&from);
        self.ungranted()
    }

    /// The member that claimed the lead last, as far as this replica has heard.
    pub(crate) fn leader(&self) -> Option<NodeId> {
        self.leader
    }
}

/// How long the replica of an LSA group's leader waits for its claim, or for the group's lead
/// it handed over, to take effect before it acts again.
pub const CLAIM_RETRY_MS: u64 = 200;

/// What a member of an LSA order group does about the lead of the acquisitions
/// ([`Claimant::decide`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stewardship {
    /// Propose this claim.
    Claim(Lead),
    /// Hand the order group's lead to this member: this replica does not serve, and leads the
    /// acquisitions (or nobody does).
    HandOver(NodeId),
}

/// The part of a node's (or the simulator's) driver that keeps the lead of an LSA group's
/// acquisitions with a replica that serves, pure: what it sees of the group and its replica,
/// and its clock, in; what to do out. One per member.
#[derive(Clone, Debug, Default)]
pub struct Claimant {
    /// When it last claimed or handed over, until that took effect.
    acted_ms: Option<u64>,
}

impl Claimant {
    /// The member `me` of a group whose order is `order`, and the voters it may hand the
    /// group to (those it heard from lately: a dead one would stall the group's proposals for
    /// a while); whether it leads the group now, and whether its replica serves; the driver's
    /// clock.
    pub fn decide(
        &mut self,
        order: &crate::order::Order,
        me: NodeId,
        leads_group: bool,
        serving: bool,
        voters: &[NodeId],
        now_ms: u64,
    ) -> Option<Stewardship> {
        let grant_leader = order.grant_leader();
        let settled = !order.is_loose() || !leads_group || (serving && grant_leader == Some(me));
        // A grant leader other than this replica may lead on: its grants reach the order through
        // this one whatever this replica's state.
        let others_lead = !serving && grant_leader.is_some_and(|leader| leader != me);
        if settled || others_lead {
            self.acted_ms = None;
            return None;
        }
        if self.acted_ms.is_some_and(|acted| now_ms.saturating_sub(acted) < CLAIM_RETRY_MS) {
            return None;
        }
        if serving {
            self.acted_ms = Some(now_ms);
            return Some(Stewardship::Claim(Lead::Claim { member: me, after: grant_leader }));
        }
        // The next voter after this one, in id order, around.
        let mut sorted: Vec<NodeId> = voters.iter().copied().filter(|voter| *voter != me).collect();
        sorted.sort();
        let next = sorted.iter().find(|voter| **voter > me).or(sorted.first()).copied()?;
        self.acted_ms = Some(now_ms);
        Some(Stewardship::HandOver(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::order::{Batch, Order};
    use nonstop_control::Replicated;

    fn led_by(leader: Option<u64>) -> Order {
        let mut order = Order::loose();
        if let Some(leader) = leader {
            let claim = Lead::Claim { member: NodeId(leader), after: None };
            order.apply(1, Batch { leads: vec![claim], ..Batch::default() });
        }
        order
    }

    #[test]
    fn the_group_leaders_replica_claims_the_lead_once_it_serves_and_hands_the_group_over_else() {
        let voters = [NodeId(1), NodeId(2), NodeId(3)];
        let claim =
            |after: Option<u64>| Some(Stewardship::Claim(Lead::Claim { member: NodeId(2), after: after.map(NodeId) }));
        let mut claimant = Claimant::default();
        // Not the group's leader, or already the grant leader: nothing to do.
        assert_eq!(claimant.decide(&led_by(Some(1)), NodeId(2), false, true, &voters, 0), None);
        assert_eq!(claimant.decide(&led_by(Some(2)), NodeId(2), true, true, &voters, 0), None);
        // Leading the group and serving: it claims, naming the leader it saw, then waits.
        assert_eq!(claimant.decide(&led_by(Some(1)), NodeId(2), true, true, &voters, 0), claim(Some(1)));
        assert_eq!(claimant.decide(&led_by(Some(1)), NodeId(2), true, true, &voters, CLAIM_RETRY_MS - 1), None);
        assert_eq!(claimant.decide(&led_by(Some(1)), NodeId(2), true, true, &voters, CLAIM_RETRY_MS), claim(Some(1)));
        // Not serving while it leads the acquisitions (or nobody does): the group goes to the
        // next voter, around.
        let mut claimant = Claimant::default();
        assert_eq!(
            claimant.decide(&led_by(Some(2)), NodeId(2), true, false, &voters, 0),
            Some(Stewardship::HandOver(NodeId(3)))
        );
        let mut last = Claimant::default();
        assert_eq!(
            last.decide(&led_by(None), NodeId(3), true, false, &voters, 0),
            Some(Stewardship::HandOver(NodeId(1)))
        );
        // Not serving while another replica leads the acquisitions: that one leads on.
        assert_eq!(Claimant::default().decide(&led_by(Some(1)), NodeId(2), true, false, &voters, 0), None);
        // A service not under LSA has no acquisitions to lead.
        assert_eq!(Claimant::default().decide(&Order::default(), NodeId(2), true, true, &voters, 0), None);
    }
}
