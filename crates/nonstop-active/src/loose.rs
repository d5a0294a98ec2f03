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
//! Who leads: the replica of the order group's leader claims the lead as soon as it serves
//! (the node's driver decides that), and any replica that serves claims it when its next batch
//! has waited for acquisitions for [`CLAIM_AFTER_MS`] (times its place among the replicas):
//! the grant leader may be paused, cut off, or taking a state itself while the group's leader
//! is elsewhere, or is that very replica. [`Loose`] is that bookkeeping,
//! pure; [`crate::course::Course`] consults it for each entry it hands out.

use crate::order::Lead;
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

/// What the order's leads of one entry mean to this replica ([`Loose::delivered`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Heard {
    /// The order granted batch `batch` the acquisitions this replica made leading it: its
    /// replies may leave.
    Granted { batch: u64 },
    /// The order will never grant a batch this replica led the acquisitions it made (another
    /// member claimed the lead, or granted the batch other ones): its state is not the
    /// order's.
    Overruled { batch: u64 },
}

/// How long a replica that serves waits for a batch's acquisitions before it claims the lead
/// itself, per place among the replicas (the first waits this long, the second twice as long,
/// so that two rarely claim at once): the grant leader may be cut off, paused, or awaiting a
/// state, while the group's leader (which claims at once) is elsewhere or is that replica.
pub const CLAIM_AFTER_MS: u64 = 150;

/// See the module's documentation.
#[derive(Clone, Debug)]
pub(crate) struct Loose {
    me: NodeId,
    /// Its place among the replicas, for [`CLAIM_AFTER_MS`].
    rank: u64,
    /// The batch it waits for acquisitions for, and since when (driver's clock).
    stalled: Option<(u64, u64)>,
    /// When it last claimed the lead because a batch waited.
    claimed_ms: Option<u64>,
    /// The member that claimed the lead last, as far as this replica has heard.
    leader: Option<NodeId>,
    /// Acquisitions the order granted batches this replica has not executed yet, by batch.
    granted: BTreeMap<u64, Vec<Grant>>,
    /// Batches this replica led and executed, oldest first, with what its threads took, until
    /// the order grants them.
    led: VecDeque<(u64, Vec<Grant>)>,
    /// Acquisitions of batches it led before its state was found wrong or behind, still
    /// proposed until the order grants those batches or another member leads: while it leads,
    /// nobody else grants them, and the others cannot reach the state it must take without
    /// them. They are only an order of acquisitions; each replica executes them on its own
    /// state (one whose threads cannot follow them takes a state, [`Acquisitions::Follow`]).
    orphaned: Vec<(u64, Vec<Grant>)>,
}

impl Loose {
    pub(crate) fn new(me: NodeId, rank: usize) -> Loose {
        Loose {
            me,
            rank: rank as u64,
            stalled: None,
            claimed_ms: None,
            leader: None,
            granted: BTreeMap::new(),
            led: VecDeque::new(),
            orphaned: Vec::new(),
        }
    }

    /// The driver's clock, with the batch this replica would execute next if it holds
    /// requests (`None`: nothing waits) and whether it serves: a claim of the lead if the
    /// batch has waited for its acquisitions for [`CLAIM_AFTER_MS`] times its place, and it
    /// did not claim that long ago already.
    pub(crate) fn claim_if_stalled(&mut self, next_batch: Option<u64>, serving: bool, now_ms: u64) -> Option<Lead> {
        let waiting =
            next_batch.filter(|batch| serving && self.leader != Some(self.me) && !self.granted.contains_key(batch));
        let Some(batch) = waiting else {
            self.stalled = None;
            return None;
        };
        let since = match self.stalled {
            Some((stalled, since)) if stalled == batch => since,
            _ => {
                self.stalled = Some((batch, now_ms));
                now_ms
            }
        };
        let patience = CLAIM_AFTER_MS * (1 + self.rank);
        let due = now_ms.saturating_sub(since) >= patience
            && self.claimed_ms.is_none_or(|claimed| now_ms.saturating_sub(claimed) >= patience);
        due.then(|| {
            self.claimed_ms = Some(now_ms);
            Lead::Claim { member: self.me }
        })
    }

    /// Takes in an entry's leads, in order, and the grant leader once it is applied; `next` is
    /// the position of the next request this replica executes. What they mean here: batches
    /// granted, or one overruled (then the rest of its led batches are void too, and its state
    /// must be replaced).
    pub(crate) fn delivered(&mut self, leads: &[Lead], grant_leader: Option<NodeId>, next: u64) -> Vec<Heard> {
        let mut heard = Vec::new();
        for lead in leads {
            let Lead::Grants { batch, acquisitions, .. } = lead else { continue };
            self.orphaned.retain(|(orphan, _)| orphan != batch);
            match self.led.front() {
                Some((led, made)) if led == batch && made == acquisitions => {
                    heard.push(Heard::Granted { batch: *batch });
                    self.led.pop_front();
                }
                // The order grants the oldest batch first: once it grants this replica's oldest
                // led batch, or one after it, other acquisitions than its own, they never will
                // be.
                Some((led, _)) if led <= batch => {
                    heard.push(Heard::Overruled { batch: *led });
                    // Those granted need nothing more of it; those after, if it still leads,
                    // are proposed on as orphans ([`Loose::replaced`]).
                    self.led.retain(|(led, _)| led > batch);
                    return heard;
                }
                _ if *batch >= next => {
                    self.granted.insert(*batch, acquisitions.clone());
                }
                // A batch it executed already, or that a state it took covers.
                _ => {}
            }
        }
        // From the order's state, not from the claims seen: a claim may have come inside a
        // snapshot this replica was given instead of the entries.
        self.leader = grant_leader;
        if grant_leader != Some(self.me) {
            self.orphaned.clear();
        }
        if grant_leader != Some(self.me)
            && let Some((batch, _)) = self.led.front()
        {
            // Another member leads: the order takes no acquisitions of this replica's any more.
            heard.push(Heard::Overruled { batch: *batch });
        }
        heard
    }

    /// How to execute the batch at position `batch`: following its acquisitions if the order
    /// granted them, leading if this replica leads them and `may_lead`, else `None` (wait).
    pub(crate) fn acquisitions(&mut self, batch: u64, may_lead: bool) -> Option<Acquisitions> {
        if let Some(acquisitions) = self.granted.remove(&batch) {
            return Some(Acquisitions::Follow(acquisitions));
        }
        (may_lead && self.leader == Some(self.me)).then_some(Acquisitions::Lead)
    }

    /// This replica led batch `batch`, whose threads took `acquisitions`: to propose, and to
    /// wait for.
    pub(crate) fn led(&mut self, batch: u64, acquisitions: Vec<Grant>) -> Lead {
        self.led.push_back((batch, acquisitions.clone()));
        Lead::Grants { member: self.me, batch, acquisitions }
    }

    /// Its led batches not granted yet, orphaned ones included, as leads to propose again (a
    /// proposal lost when the group's leader changed is proposed again; the order drops a
    /// copy).
    pub(crate) fn ungranted(&self) -> Vec<Lead> {
        self.led
            .iter()
            .chain(&self.orphaned)
            .map(|(batch, acquisitions)| Lead::Grants {
                member: self.me,
                batch: *batch,
                acquisitions: acquisitions.clone(),
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
            true => self.orphaned.extend(self.led.drain(..)),
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
